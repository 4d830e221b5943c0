// `bff demo --tls` in a real browser: Debian's Chromium trusts the demo's self-signed
// certificate by the SPKI hash the banner prints (--ignore-certificate-errors-spki-list), signs
// in through the demo provider (plain http) back to https bff, and checks that pages and API
// calls go over HTTP/2, that the event stream works there, that the WebSocket still opens
// (over HTTP/1.1: actix-web has no RFC 8441), and that the session cookie is `__Host-Http-`.
//
//   BFF_BIN=target/debug/bff node tests/browser/tls.test.mjs

import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { CHROMIUM_FLAGS, closeAtEnd, run, startTlsDemo, step, watchProblems } from "./harness.mjs";

async function main() {
  const { url, spki } = await startTlsDemo();
  assert.match(url, /^https:\/\/localhost:\d+$/);
  step(`bff demo --tls ready at ${url}; SPKI ${spki}`);

  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [...CHROMIUM_FLAGS, `--ignore-certificate-errors-spki-list=${spki}`],
  });
  closeAtEnd(() => browser.close().catch(() => {}));
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  watchProblems(page, problems);

  step("the SPA over https, HTTP/2");
  const first = await page.goto(`${url}/`);
  assert.equal(first.status(), 200);
  assert.equal(await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol), "h2");
  const security = await first.securityDetails();
  assert.ok(security && /TLS 1\.[23]/.test(security.protocol), `TLS 1.2 or 1.3: ${security && security.protocol}`);
  await page.locator("#signed-out").waitFor({ state: "visible" });

  step("sign in at the provider (http) and come back to https bff");
  await page.click("#sign-in");
  await page.waitForURL(/\/authorize\?/);
  await page.fill("#username", "alice");
  await page.click("button[type=submit]");
  await page.waitForURL(`${url}/`);
  await page.locator("#signed-in").waitFor({ state: "visible" });
  assert.equal(await page.textContent("#user-name"), "Alice");
  const cookies = await context.cookies(url);
  const session = cookies.find((c) => c.name === "__Host-Http-bff");
  assert.ok(session, `the session cookie is __Host-Http-bff: ${cookies.map((c) => c.name).join(", ")}`);
  assert.equal(session.secure, true);
  assert.equal(session.httpOnly, true);

  step("an API call over HTTP/2");
  await page.click("[data-call='GET /api/hello']");
  await page.waitForFunction(() => document.querySelector("#result").textContent.includes("Hello, Alice"));
  const protocols = await page.evaluate(() =>
    performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/")).map((e) => e.nextHopProtocol),
  );
  assert.ok(protocols.length > 0 && protocols.every((p) => p === "h2"), `API calls over h2: ${protocols}`);

  step("the event stream over HTTP/2");
  await page.click("#stream-start");
  await page.waitForFunction(() => document.querySelectorAll("#ticks li").length >= 2, null, { timeout: 10_000 });
  await page.click("#stream-stop");

  step("a WebSocket (wss://, HTTP/1.1)");
  await page.click("#ws-connect");
  await page.waitForFunction(() => document.querySelector("#ws-status").textContent.startsWith("Open"), null, { timeout: 10_000 });
  await page.fill("#ws-input", "echo over tls");
  await page.click("#ws-send");
  await page.waitForFunction(() => document.querySelector("#ws-echoes").textContent.includes("← echo over tls"), null, { timeout: 10_000 });
  await page.click("#ws-close");

  step("sign out");
  await page.click("#sign-out");
  await page.waitForURL(`${url}/`);
  await page.locator("#signed-out").waitFor({ state: "visible", timeout: 10_000 });

  assert.deepEqual(problems, [], "no console errors");
  console.log("browser test passed");
}

run(main, 90);
