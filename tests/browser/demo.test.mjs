// The demo in a real browser: Debian's Chromium driven by playwright-core. Signs in through the
// demo provider's login page, calls the API, waits past the access token's expiry, watches the
// refresh, streams events, echoes on a WebSocket, signs out — and checks that the page never holds a token.
//
//   BFF_BIN=target/debug/bff node tests/browser/demo.test.mjs
//
// Saves a screenshot to target/screenshot.png, or to $SCREENSHOT (the README's picture is made
// with SCREENSHOT=docs/screenshot.png). Exits non-zero on the first failure.

import path from "node:path";
import assert from "node:assert/strict";
import { launchChromium, root, run, startDemo, step, watchProblems } from "./harness.mjs";

const screenshot = path.resolve(root, process.env.SCREENSHOT || "target/screenshot.png");
const TOKEN_TTL = 5;


async function main() {
  const { url, startedMs } = await startDemo(["--access-token-ttl", String(TOKEN_TTL)]);
  step(`bff demo ready at ${url} (${startedMs} ms from spawn to banner)`);

  const browser = await launchChromium();
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  watchProblems(page, problems);

  step("the SPA shows the signed-out view");
  await page.goto(`${url}/`);
  await page.locator("#signed-out").waitFor({ state: "visible" });

  step("Sign in → the provider's login page → pick a user");
  await page.click("#sign-in");
  await page.waitForURL(/\/authorize\?/);
  await page.fill("#username", "alice");
  await page.click("button[type=submit]");
  await page.waitForURL(`${url}/`);
  await page.locator("#signed-in").waitFor({ state: "visible" });
  assert.equal(await page.textContent("#user-name"), "Alice");
  assert.equal(await page.textContent("#user-email"), "alice@example.com");

  step("call the API through bff");
  await page.click("[data-call='GET /api/hello']");
  await page.waitForFunction(() => document.querySelector("#result").textContent.includes("Hello, Alice"));
  await page.click("[data-call='GET /api/items']");
  await page.waitForFunction(() => document.querySelector("#result").textContent.includes("HttpOnly cookie"));

  step(`wait past the access token's expiry (${TOKEN_TTL} s) and call again`);
  await page.waitForTimeout((TOKEN_TTL - 1) * 1000);
  await page.click("[data-call='GET /api/hello']");
  await page.waitForFunction(() => [...document.querySelectorAll("#log tr.refresh")].length > 0, null, { timeout: 10_000 });
  assert.equal(await page.textContent("#refresh-count"), "1 refresh");

  step("open the event stream");
  await page.click("#stream-start");
  await page.waitForFunction(() => document.querySelectorAll("#ticks li").length >= 2, null, { timeout: 10_000 });

  step("open a WebSocket, send, see the echo");
  await page.click("#ws-connect");
  await page.waitForFunction(() => document.querySelector("#ws-status").textContent.startsWith("Open"), null, { timeout: 10_000 });
  await page.fill("#ws-input", "echo me through bff");
  await page.click("#ws-send");
  await page.waitForFunction(() => document.querySelector("#ws-echoes").textContent.includes("← echo me through bff"), null, { timeout: 10_000 });
  await page.click("#ws-close");
  await page.waitForFunction(() => document.querySelector("#ws-status").textContent.startsWith("Closed: 1000"), null, { timeout: 10_000 });

  step("nothing secret in the page");
  assert.equal(await page.evaluate(() => document.cookie), "", "the session cookie is HttpOnly");
  const storage = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length }));
  assert.deepEqual(storage, { local: 0, session: 0 });
  const html = await page.content();
  assert.ok(!/eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\./.test(html), "no JWT in the DOM");

  await page.screenshot({ path: screenshot, fullPage: true });
  step(`screenshot written to ${path.relative(root, screenshot)}`);
  await page.click("#stream-stop");

  step("sign out");
  const backHome = page.waitForResponse((r) => r.url().includes("/end_session"));
  await page.click("#sign-out");
  await backHome;
  await page.waitForURL(`${url}/`);
  await page.locator("#signed-out").waitFor({ state: "visible", timeout: 10_000 }).catch((e) => {
    throw new Error(`${e.message}\nurl: ${page.url()}\nproblems: ${problems.join("; ")}`);
  });
  const after = await page.evaluate(async () => (await fetch("/auth/user", { headers: { "X-CSRF": "1" } })).status);
  assert.equal(after, 401);

  step("phone width");
  await page.setViewportSize({ width: 390, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling at phone width (overflow ${overflow}px)`);

  assert.deepEqual(problems, [], "no console errors");
  console.log("browser test passed");
}

run(main, 120);
