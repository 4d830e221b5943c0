// The session cookie as RFC 10017 §6.1 recommends, in a real browser. For each
// `session.cookie_prefix` (`__Host-Http-`, `__Host-`, none), `bff demo --cookie-prefix` serves on
// http://localhost (an origin Chromium keeps prefixed cookies for); the test signs in through the
// demo provider (another site: 127.0.0.1) and checks the cookie Chromium kept (its name, Secure,
// HttpOnly, Path=/, SameSite=Strict) and that it is sent with the SPA's calls. Then, SameSite=Strict
// against a deep link from another site: the SPA opened from a link on a page of 127.0.0.1 is
// signed in (its documents need no cookie, its calls are same-site).
//
//   BFF_BIN=target/debug/bff node tests/browser/cookies.test.mjs
//
// Exits non-zero on the first failure; gives up after 120 s.

import { createServer } from "node:http";
import assert from "node:assert/strict";
import { closeAtEnd, launchChromium, run, startDemo, step } from "./harness.mjs";

const TIMEOUT = 15_000;


async function newPage(context, problems) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    // The signed-out SPA's 401 from /auth/user is the documented answer.
    if (msg.text().includes("status of 401")) return;
    problems.push(`console error: ${msg.text()} (${msg.location().url})`);
  });
  return page;
}

async function signIn(page, origin) {
  await page.goto(`${origin}/`);
  await page.locator("#signed-out").waitFor({ state: "visible" });
  await page.click("#sign-in");
  await page.waitForURL(/\/authorize\?/);
  await page.fill("#username", "alice");
  await page.click("button[type=submit]");
  await page.waitForURL(`${origin}/`);
  await page.locator("#signed-in").waitFor({ state: "visible" });
}

async function apiStatus(page) {
  return page.evaluate(async () => (await fetch("api/hello", { headers: { "X-CSRF": "1" } })).status);
}

async function main() {
  const browser = await launchChromium();
  const problems = [];
  let strictOrigin;
  let strictContext;

  for (const [prefix, name] of [["__Host-Http-", "__Host-Http-bff"], ["__Host-", "__Host-bff"], ["", "bff"]]) {
    const origin = (await startDemo(["--cookie-prefix", prefix])).url;
    step(`cookie_prefix = ${JSON.stringify(prefix)}: sign in at ${origin}`);
    const context = await browser.newContext();
    const page = await newPage(context, problems);
    await signIn(page, origin);
    const cookies = await context.cookies(origin);
    const session = cookies.find((c) => c.name === name);
    assert.ok(session, `Chromium kept ${name} (it has ${cookies.map((c) => c.name).join(", ")})`);
    assert.equal(session.path, "/");
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, "Strict", "strict by default");
    assert.equal(session.secure, prefix !== "", "a prefixed cookie is Secure");
    assert.equal(await page.evaluate(() => document.cookie), "", "no script sees it");
    step(`${name} is sent with the SPA's calls`);
    assert.equal(await apiStatus(page), 200);
    if (prefix === "__Host-Http-") {
      strictOrigin = origin;
      strictContext = context;
    }
  }

  step("a deep link from another site (127.0.0.1 links to localhost)");
  const linkServer = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><a id="spa" href="${strictOrigin}/?from=elsewhere">the app</a>`);
  });
  await new Promise((resolve) => linkServer.listen(0, "127.0.0.1", resolve));
  closeAtEnd(() => linkServer.close());
  const elsewhere = `http://127.0.0.1:${linkServer.address().port}/`;
  const page = await newPage(strictContext, problems);
  await page.goto(elsewhere);
  await page.click("#spa");
  await page.waitForURL(`${strictOrigin}/?from=elsewhere`);
  await page.locator("#signed-in").waitFor({ state: "visible" });
  assert.equal(await apiStatus(page), 200, "the SPA reached from another site is signed in");

  assert.deepEqual(problems, [], "no unexpected console errors");
  console.log("browser test passed");
}

run(main, 120);
