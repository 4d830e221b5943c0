// Device Bound Session Credentials in a real browser: Debian's Chromium, with DBSC switched on
// and its software keys (Linux has no TPM path; the flag exists for this), against
// `bff demo --tls --dbsc required` with a 10-second bound cookie. It proves that Chromium
// registers a key at sign-in, that its API calls carry the bound cookie, that it renews the
// cookie by itself once it expired (403, the signed challenge, the new cookie) and retries the
// call, and that the same cookies copied into a second browser, which has no key, stop working
// once the copied bound cookie expires.
//
// Chromium acts on DBSC only over a TLS connection it trusts: the demo's certificate is pinned
// by its SPKI hash (`--ignore-certificate-errors` is not enough; plain http is ignored). What
// the browser did is read from bff's metrics and from Chromium's DevTools events.
//
//   BFF_BIN=target/debug/bff node tests/browser/dbsc.test.mjs

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM_FLAGS, closeAtEnd, run, startTlsDemo, step } from "./harness.mjs";

const TTL_SECS = 10;
const DBSC_FEATURES =
  "DeviceBoundSessions:RequireOriginTrialTokens/false/RefreshQuota/false," +
  "EnableBoundSessionCredentialsSoftwareKeysForManualTesting,DeviceBoundSessionsDevTools";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/// A metric's value from the demo's `/metrics`, read by `page` (which trusts the demo's
/// certificate); 0 when the series is not there yet.
async function metric(page, series) {
  const text = await page.evaluate(async () => (await fetch("/metrics")).text());
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(" ").pop()) : 0;
}

/// Polls `check` until it is truthy, or fails after `ms` with `what`.
async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/// The status and body of `GET path` from the page, as the SPA calls it (one try, no retry).
const fetchFromPage = (page, path) =>
  page.evaluate(async (p) => {
    const res = await fetch(p, { headers: { "X-CSRF": "1" }, credentials: "same-origin" });
    return { status: res.status, body: await res.text() };
  }, path);

async function main() {
  const { url, spki } = await startTlsDemo(["--dbsc", "required", "--dbsc-cookie-ttl", String(TTL_SECS)]);
  const node = (name) => `bff_dbsc_${name}`;
  step(`bff demo --tls --dbsc required at ${url}`);

  // A persistent profile: the browser's own, as a user's (DBSC keeps its sessions with it).
  const profile = mkdtempSync(path.join(tmpdir(), "bff-dbsc-"));
  // On a failure the harness closes the browser without waiting, so Chromium may still be
  // writing its profile: its removal is best effort there (a leftover temporary directory is
  // no test failure). On success it is removed after the browser has closed.
  const removeProfile = () => rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  closeAtEnd(() => {
    try {
      removeProfile();
    } catch {}
  });
  const args = [...CHROMIUM_FLAGS, `--ignore-certificate-errors-spki-list=${spki}`, `--enable-features=${DBSC_FEATURES}`];
  const context = await chromium.launchPersistentContext(profile, { executablePath: "/usr/bin/chromium", args });
  closeAtEnd(() => context.close().catch(() => {}));
  const page = context.pages()[0] || (await context.newPage());
  const events = [];
  const cdp = await context.newCDPSession(page);
  cdp.on("Network.deviceBoundSessionEventOccurred", (e) => events.push(e));
  await cdp.send("Network.enable");
  await cdp.send("Network.enableDeviceBoundSessions", { enable: true }).catch((e) => step(`(no DBSC DevTools events: ${e.message})`));

  step("sign in: Chromium registers a device key (offered with the SPA's first /auth/user: the provider is cross-site)");
  await page.goto(`${url}/`);
  await page.locator("#signed-out").waitFor({ state: "visible" });
  await page.click("#sign-in");
  await page.waitForURL(/\/authorize\?/);
  await page.fill("#username", "alice");
  await page.click("button[type=submit]");
  await page.waitForURL(`${url}/`);
  await until("the registration", async () => (await metric(page, `${node("registrations_total")}{alg="ES256",frontend="default"}`)) === 1);
  await until("the page to show a device-bound session", async () =>
    (await page.getAttribute("#session-bound", "data-bound")) === "true",
  );
  const bound = (await context.cookies(url)).find((c) => c.name === "__Host-bff-bound");
  assert.ok(bound, "the bound cookie is set");
  assert.ok(bound.httpOnly && bound.secure && bound.path === "/", JSON.stringify(bound));

  step("an API call carries the bound cookie");
  let call = await fetchFromPage(page, "/api/hello");
  assert.equal(call.status, 200, call.body);

  step("the bound cookie expires: Chromium renews it by signing bff's challenge, then sends the call");
  const refreshesBefore = await metric(page, `${node("refreshes_total")}{frontend="default"}`);
  const first = bound.value;
  await sleep((TTL_SECS + 1) * 1000);
  call = await fetchFromPage(page, "/api/hello");
  assert.equal(call.status, 200, `held back, renewed, sent: ${call.body}; DevTools: ${JSON.stringify(events)}`);
  assert.ok((await metric(page, `${node("refreshes_total")}{frontend="default"}`)) > refreshesBefore, "renewed at bff");
  const renewed = (await context.cookies(url)).find((c) => c.name === "__Host-bff-bound");
  assert.ok(renewed && renewed.value !== first, "a new bound cookie");
  const refreshEvents = events.filter((e) => e.refreshEventDetails);
  if (events.length > 0) {
    assert.ok(refreshEvents.some((e) => e.refreshEventDetails.refreshResult === "Refreshed"), JSON.stringify(events));
  }
  step(`DevTools saw ${events.length} DBSC events (${refreshEvents.length} refreshes)`);

  step("a copy of the cookies in a second browser, without the key, stops working when its bound cookie expires");
  const cookies = (await context.cookies(url)).filter((c) => ["__Host-Http-bff", "__Host-bff-bound"].includes(c.name));
  const thiefBrowser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: [...CHROMIUM_FLAGS, `--ignore-certificate-errors-spki-list=${spki}`, `--enable-features=${DBSC_FEATURES}`] });
  closeAtEnd(() => thiefBrowser.close().catch(() => {}));
  const thief = await thiefBrowser.newContext();
  await thief.addCookies(cookies);
  const stolen = await thief.newPage();
  await stolen.goto(`${url}/favicon.svg`);
  const early = await fetchFromPage(stolen, "/api/hello");
  assert.equal(early.status, 200, "the copied bound cookie still lives");
  await sleep((TTL_SECS + 6) * 1000);
  const late = await fetchFromPage(stolen, "/api/hello");
  assert.equal(late.status, 401, late.body);
  assert.equal(JSON.parse(late.body).error, "dbsc_bound_cookie_required");

  step("while the browser with the key goes on");
  call = await fetchFromPage(page, "/api/hello");
  assert.equal(call.status, 200, call.body);
  await thiefBrowser.close();
  await context.close();
  removeProfile();
  console.log("browser test passed");
}

run(main, 120);
