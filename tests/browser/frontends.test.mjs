// Two SPAs on two path frontends of one origin, in a real browser: `bff demo --frontends` serves
// the demo SPA at /shop/ and at /admin/, each with its own client at the demo provider, its own
// cookie (Path=/shop, Path=/admin) and its own API routes. Signs in at /shop/, finds /admin/ signed
// out in the same browser, signs in there as someone else, signs out at /shop/ and finds /admin/
// still signed in; checks the cookies the browser holds.
//
//   BFF_BIN=target/debug/bff node tests/browser/frontends.test.mjs
//
// Exits non-zero on the first failure; gives up after 90 s.

import assert from "node:assert/strict";
import { launchChromium, run, startDemo, step, watchProblems } from "./harness.mjs";

const TIMEOUT = 15_000;


// A page of the context, its errors collected (the signed-out SPA's 401 from /auth/user is the
// documented answer, which Chromium reports as a console error; nothing else is expected).
async function openPage(context, problems, label) {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  watchProblems(page, problems, label);
  return page;
}

async function signIn(page, origin, base, username, name) {
  await page.click("#sign-in");
  await page.waitForURL(/\/authorize\?/);
  const authorize = new URL(page.url());
  assert.equal(authorize.searchParams.get("client_id"), `bff-demo${base.replace("/", "-")}`, "the frontend's own client");
  assert.equal(authorize.searchParams.get("redirect_uri"), `${origin}${base}/auth/callback`);
  await page.fill("#username", username);
  await page.click("button[type=submit]");
  await page.waitForURL(`${origin}${base}/`);
  await page.locator("#signed-in").waitFor({ state: "visible" });
  assert.equal(await page.textContent("#user-name"), name);
}

async function callApi(page, origin, base, name) {
  const answered = page.waitForResponse((r) => r.url() === `${origin}${base}/api/hello`);
  await page.click("[data-call='GET /api/hello']");
  assert.equal((await answered).status(), 200, `GET ${base}/api/hello`);
  await page.waitForFunction((who) => document.querySelector("#result").textContent.includes(`Hello, ${who}`), name);
  assert.match(await page.textContent("#result"), /^200 /);
}

async function userStatus(page, base) {
  return page.evaluate(async (b) => (await fetch(`${b}/auth/user`, { headers: { "X-CSRF": "1" } })).status, base);
}

async function main() {
  const origin = (await startDemo(["--frontends"])).url.replace(/\/shop$/, "");
  step(`bff demo --frontends ready at ${origin}/shop/ and ${origin}/admin/`);

  const browser = await launchChromium();
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  const shop = await openPage(context, problems, "/shop/");

  step("/shop/ shows the signed-out view; sign in as alice through the provider");
  await shop.goto(`${origin}/shop/`);
  await shop.locator("#signed-out").waitFor({ state: "visible" });
  await signIn(shop, origin, "/shop", "alice", "Alice");
  assert.equal(await shop.textContent("#user-email"), "alice@example.com");

  step("/shop/ calls its API through bff (/shop/api/hello)");
  await callApi(shop, origin, "/shop", "Alice");

  step("/admin/ in the same browser is not signed in: its own cookie and session");
  const admin = await openPage(context, problems, "/admin/");
  await admin.goto(`${origin}/admin`);
  await admin.waitForURL(`${origin}/admin/`);
  await admin.locator("#signed-out").waitFor({ state: "visible" });
  assert.equal(await userStatus(admin, "/admin"), 401);

  step("sign in at /admin/ as bob and call its API");
  await signIn(admin, origin, "/admin", "bob", "Bob");
  await callApi(admin, origin, "/admin", "Bob");

  step("each frontend still knows its own user");
  await shop.reload();
  await shop.locator("#signed-in").waitFor({ state: "visible" });
  assert.equal(await shop.textContent("#user-name"), "Alice");

  step("two HttpOnly session cookies, one per frontend path");
  // All of the context's (cookies(origin) would leave out those of other paths than "/"). Each
  // frontend also keeps its sign-in's browser binding (<cookie>-login) until it signs out.
  // The demo provider's own sign-in session (same host, another port) is not bff's.
  const ours = (list) => list.filter((c) => c.name !== "demo_idp_session");
  const cookies = ours(await context.cookies());
  for (const c of cookies) {
    assert.ok(c.httpOnly, `${c.name} is HttpOnly`);
    assert.ok(["/shop", "/admin"].includes(c.path), `${c.name} is limited to its frontend's path (${c.path})`);
  }
  const sessions = cookies.filter((c) => !c.name.endsWith("-login")).map((c) => `${c.name} ${c.path}`).sort();
  assert.deepEqual(sessions, ["bff-admin /admin", "bff-shop /shop"]);
  for (const page of [shop, admin]) assert.equal(await page.evaluate(() => document.cookie), "", "the pages see no cookie");

  step("sign out at /shop/");
  const backHome = shop.waitForResponse((r) => r.url().includes("/end_session"));
  await shop.click("#sign-out");
  await backHome;
  await shop.waitForURL(`${origin}/shop/`);
  await shop.locator("#signed-out").waitFor({ state: "visible" });
  assert.equal(await userStatus(shop, "/shop"), 401);

  step("/admin/ is still signed in");
  await admin.reload();
  await admin.locator("#signed-in").waitFor({ state: "visible" });
  assert.equal(await admin.textContent("#user-name"), "Bob");
  await callApi(admin, origin, "/admin", "Bob");
  const left = ours(await context.cookies()).map((c) => `${c.name} ${c.path}`).sort();
  assert.deepEqual(left, ["bff-admin /admin", "bff-admin-login /admin"], "only /admin's cookies are left");

  assert.deepEqual(problems, [], "no console errors");
  console.log("browser test passed");
}

run(main, 90);
