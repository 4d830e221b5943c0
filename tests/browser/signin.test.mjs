// Sign-in options from the demo SPA, in a real browser: a silent sign-in (`prompt=none`) that
// the provider declines comes back to the SPA with `?error=login_required` (no error page, no
// loop); with the provider's session alive it signs in without a page; after signing out (which
// ends the provider's session too) it is declined again. Step-up (RFC 9470): the demo API's
// `/strong` route wants the second factor; the SPA's call is answered `step_up_required`, the SPA
// signs in again with the `acr_values` asked for, and the call then succeeds. Sessions: a second
// browser signs in as the same user; the first lists the sessions and signs the others out.
//
//   BFF_BIN=target/debug/bff node tests/browser/signin.test.mjs
//
// Exits non-zero on the first failure; gives up after 90 s.

import assert from "node:assert/strict";
import { launchChromium, run, startDemo, step } from "./harness.mjs";

const TIMEOUT = 15_000;


// Clicks "Silent sign-in"; the provider's answer to the authorization request (a 302 either
// way: a code, or `error=login_required`; never its login page).
async function silentSignIn(page) {
  const authorize = page.waitForResponse((r) => r.url().includes("/authorize?"));
  await page.click("#silent-sign-in");
  const answer = await authorize;
  assert.equal(answer.status(), 302, "the provider answers without a page");
  assert.equal(new URL(answer.url()).searchParams.get("prompt"), "none");
  return answer;
}

async function main() {
  const origin = (await startDemo()).url;
  step(`bff demo ready at ${origin}`);
  const browser = await launchChromium();
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (msg) => {
    // The signed-out SPA's 401 from /auth/user, and the step-up's 401, are documented answers.
    if (msg.type() === "error" && !msg.text().includes("status of 401")) problems.push(msg.text());
  });

  step("a silent sign-in without a provider session comes back with login_required");
  await page.goto(`${origin}/`);
  await page.locator("#signed-out").waitFor({ state: "visible" });
  await silentSignIn(page);
  await page.locator("#silent-result").waitFor({ state: "visible" });
  assert.match(await page.textContent("#silent-result"), /login_required/);
  assert.equal(new URL(page.url()).searchParams.get("error"), null, "taken out of the address: a reload does not repeat it");
  await page.locator("#signed-out").waitFor({ state: "visible" });

  step("sign in with the provider's page");
  await page.click("#sign-in");
  await page.waitForURL(/\/authorize\?/);
  await page.fill("#username", "alice");
  await page.click("button[type=submit]");
  await page.locator("#signed-in").waitFor({ state: "visible" });
  const firstSession = await page.textContent("#session-sid");

  step("bff's cookie gone (the provider's session kept): a silent sign-in signs in without a page");
  const ours = (await context.cookies(origin)).filter((c) => c.name === "bff" || c.name === "bff-login");
  assert.ok(ours.some((c) => c.name === "bff"));
  await context.clearCookies({ name: "bff" });
  await page.reload();
  await page.locator("#signed-out").waitFor({ state: "visible" });
  await silentSignIn(page);
  await page.locator("#signed-in").waitFor({ state: "visible" });
  assert.equal(await page.textContent("#user-name"), "Alice");
  assert.notEqual(await page.textContent("#session-sid"), firstSession, "a new session");

  step("step-up: GET /api/strong needs the second factor; the SPA signs in again for it");
  const answer = await page.evaluate(async () => {
    const res = await fetch("api/strong", { headers: { "X-CSRF": "1" } });
    return { status: res.status, body: await res.json() };
  });
  assert.deepEqual(answer, { status: 401, body: { error: "step_up_required", acr_values: "urn:bff:demo:mfa" } });
  // The SPA's own handling: it signs in again with what the answer asked for.
  await page.click("[data-call='GET /api/strong']");
  await page.waitForURL(/\/authorize\?/);
  assert.equal(new URL(page.url()).searchParams.get("acr_values"), "urn:bff:demo:mfa", "asked of the provider");
  await page.fill("#username", "alice");
  await page.check("input[name=second_factor]");
  await page.click("button[type=submit]");
  await page.locator("#signed-in").waitFor({ state: "visible" });
  assert.match(await page.textContent("#claims"), /urn:bff:demo:mfa/, "the ID token says so");
  const strong = page.waitForResponse((r) => r.url() === `${origin}/api/strong`);
  await page.click("[data-call='GET /api/strong']");
  assert.equal((await strong).status(), 200, "the call goes through after the step-up");

  step("your sessions: a second browser signs in; this one lists them and signs the others out");
  const other = await browser.newContext();
  const phone = await other.newPage();
  phone.setDefaultTimeout(TIMEOUT);
  await phone.goto(`${origin}/`);
  await phone.click("#sign-in");
  await phone.waitForURL(/\/authorize\?/);
  await phone.fill("#username", "alice");
  await phone.click("button[type=submit]");
  await phone.locator("#signed-in").waitFor({ state: "visible" });
  await page.click("#sessions-refresh");
  // Three: this one, the phone's, and the one whose cookie this browser lost before its silent
  // sign-in (it lives on until its idle timeout: another "device" as far as bff can tell).
  await page.waitForFunction(() => document.querySelectorAll("#sessions li").length === 3);
  const listed = await page.$$eval("#sessions li", (items) => items.map((li) => li.textContent));
  console.log(`  the demo's session list:\n${listed.map((l) => `    ${l}`).join("\n")}`);
  assert.equal(listed.filter((l) => l.includes("(this one)")).length, 1);
  assert.ok(listed.every((l) => l.includes("Chrom")), "each summarised by its browser");
  await page.click("#sessions-end-others");
  await page.waitForFunction(() => document.querySelectorAll("#sessions li").length === 1);
  await phone.reload();
  await phone.locator("#signed-out").waitFor({ state: "visible" });
  await page.reload();
  await page.locator("#signed-in").waitFor({ state: "visible" });

  step("signed out (of the provider too): a silent sign-in is declined again");
  const backHome = page.waitForResponse((r) => r.url().includes("/end_session"));
  await page.click("#sign-out");
  await backHome;
  await page.locator("#signed-out").waitFor({ state: "visible" });
  await silentSignIn(page);
  await page.locator("#silent-result").waitFor({ state: "visible" });
  assert.match(await page.textContent("#silent-result"), /login_required/);

  assert.deepEqual(problems, [], "no unexpected console errors");
  console.log("browser test passed");
}

run(main, 90);
