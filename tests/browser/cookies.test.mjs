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

import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.BFF_BIN || path.join(root, "target/debug/bff");
const deadline = setTimeout(() => fail(new Error("the browser test took longer than 120 s")), 120_000);
const TIMEOUT = 15_000;

const demos = [];
let browser;
let linkServer;

function fail(err) {
  console.error(`browser test FAILED: ${err.stack || err}`);
  cleanup().finally(() => process.exit(1));
}

async function cleanup() {
  clearTimeout(deadline);
  if (browser) await browser.close().catch(() => {});
  for (const demo of demos) demo.kill("SIGTERM");
  if (linkServer) linkServer.close();
}

function startDemo(prefix) {
  return new Promise((resolve, reject) => {
    const demo = spawn(bin, ["demo", "--cookie-prefix", prefix, "--port", "0", "--idp-port", "0", "--api-port", "0"], {
      cwd: root,
      env: { ...process.env, BFF_SESSION__REDIS_URL: "" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    demos.push(demo);
    demo.on("error", reject);
    demo.on("exit", (code) => reject(new Error(`bff demo exited early (${code})`)));
    createInterface({ input: demo.stdout }).on("line", (line) => {
      const m = line.match(/bff demo is running — open (\S+?)\/?$/);
      if (m) resolve(m[1]);
    });
  });
}

const step = (name) => console.log(`• ${name}`);

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
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const problems = [];
  let strictOrigin;
  let strictContext;

  for (const [prefix, name] of [["__Host-Http-", "__Host-Http-bff"], ["__Host-", "__Host-bff"], ["", "bff"]]) {
    const origin = await startDemo(prefix);
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
  linkServer = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><a id="spa" href="${strictOrigin}/?from=elsewhere">the app</a>`);
  });
  await new Promise((resolve) => linkServer.listen(0, "127.0.0.1", resolve));
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

main().then(cleanup, fail);
