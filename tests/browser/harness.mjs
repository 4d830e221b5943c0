// What every browser test shares: `bff demo` started on free ports (its URL read from its
// banner), Debian's Chromium launched with the flags the project uses, a deadline, and clean-up
// on success, failure or timeout.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.BFF_BIN || path.join(root, "target/debug/bff");

const demos = [];
const browsers = [];
const closers = [];

export const step = (name) => console.log(`• ${name}`);

/// `bff demo` with `args` (ports chosen by the system); resolves to the banner's URL without a
/// trailing slash and how long the demo took to print it.
export function startDemo(args = []) {
  return new Promise((resolve, reject) => {
    const demo = spawn(bin, ["demo", "--port", "0", "--idp-port", "0", "--api-port", "0", ...args], {
      cwd: root,
      env: { ...process.env, BFF_SESSION__REDIS_URL: "" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    demos.push(demo);
    const started = Date.now();
    demo.on("error", reject);
    demo.on("exit", (code) => reject(new Error(`bff demo exited early (${code})`)));
    createInterface({ input: demo.stdout }).on("line", (line) => {
      const m = line.match(/bff demo is running — open (\S+)/);
      if (m) resolve({ url: m[1].replace(/\/$/, ""), startedMs: Date.now() - started });
    });
  });
}

/// The flags every browser test launches Debian's Chromium with.
export const CHROMIUM_FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run",
];

/// `bff demo --tls` with `args`: its URL and the SPKI hash of its certificate (for Chromium's
/// `--ignore-certificate-errors-spki-list`), from the banner.
export function startTlsDemo(args = []) {
  return new Promise((resolve, reject) => {
    const demo = spawn(bin, ["demo", "--tls", "--port", "0", "--idp-port", "0", "--api-port", "0", ...args], {
      cwd: root,
      env: { ...process.env, BFF_SESSION__REDIS_URL: "" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    demos.push(demo);
    demo.on("error", reject);
    demo.on("exit", (code) => reject(new Error(`bff demo --tls exited early (${code})`)));
    let url;
    createInterface({ input: demo.stdout }).on("line", (line) => {
      const open = line.match(/bff demo is running — open (\S+)/);
      if (open) url = open[1].replace(/\/$/, "");
      const spki = line.match(/TLS certificate SPKI sha256 \(base64\): (\S+)/);
      if (spki && url) resolve({ url, spki: spki[1] });
    });
  });
}

/// Debian's Chromium, headless, closed at the end.
export async function launchChromium() {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_FLAGS });
  browsers.push(browser);
  return browser;
}

/// Collects into `problems` the page's errors and console errors, but the documented 401 of a
/// signed-out page's `/auth/user` (Chromium reports every 4xx answer to fetch as a console error).
export function watchProblems(page, problems, label = "") {
  const prefix = label ? `${label}: ` : "";
  page.on("pageerror", (e) => problems.push(`${prefix}page error: ${e.message}`));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const expected401 = msg.text().includes("status of 401") && (msg.location().url || "").endsWith("/auth/user");
    if (!expected401) problems.push(`${prefix}console error: ${msg.text()} (${msg.location().url})`);
  });
}

/// Something else to close at the end (a server the test started).
export function closeAtEnd(close) {
  closers.push(close);
}

async function cleanup() {
  for (const browser of browsers) await browser.close().catch(() => {});
  for (const demo of demos) demo.kill("SIGTERM");
  for (const close of closers) close();
}

/// Runs `main`, failing (exit 1) on its first error or after `seconds`.
export function run(main, seconds) {
  const fail = (err) => {
    console.error(`browser test FAILED: ${err.stack || err}`);
    cleanup().finally(() => process.exit(1));
  };
  const deadline = setTimeout(() => fail(new Error(`the browser test took longer than ${seconds} s`)), seconds * 1000);
  main().then(
    () => {
      clearTimeout(deadline);
      return cleanup();
    },
    (err) => {
      clearTimeout(deadline);
      fail(err);
    },
  );
}
