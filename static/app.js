// The demo SPA. It never sees a token: it calls bff with its cookie (sent by the browser) and the
// anti-forgery header, and learns only when the current access token expires.
"use strict";

const $ = (id) => document.getElementById(id);
const EXPIRY_HEADER = "x-bff-access-token-expires-at";

// Where bff serves this app: "" at the origin's root, "/shop" for a frontend under a path. The
// page loads this script relative to itself (./app.js), so the script's own URL names it; every
// call below is made under it (bff's routes and the APIs of a frontend live under its path).
const BASE = new URL(".", document.currentScript.src).pathname.replace(/\/$/, "");
const under = (path) => `${BASE}${path}`;

const state = {
  tokenExpiresAt: null,
  tokenIssuedAt: null,
  refreshes: 0,
  stream: null,
  socket: null,
};

function showView(name) {
  for (const view of ["loading", "signed-out", "signed-in"]) {
    $(view).hidden = view !== name;
  }
  $("whoami").hidden = name !== "signed-in";
}

function now() {
  return Math.floor(Date.now() / 1000);
}

function clock() {
  return new Date().toLocaleTimeString();
}

function log(call, status, ms, note, refresh) {
  const row = document.createElement("tr");
  if (refresh) row.className = "refresh";
  const cells = [clock(), call, status === null ? "" : String(status), ms === null ? "" : ms.toFixed(0), note || ""];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 2 && status !== null) td.className = status < 400 ? "status-ok" : "status-bad";
    row.appendChild(td);
  });
  $("log").prepend(row);
  while ($("log").children.length > 200) $("log").lastChild.remove();
}

// A new expiry time means bff refreshed the access token since the last call.
function noteExpiry(expiresAt, source) {
  if (!Number.isFinite(expiresAt)) return;
  if (state.tokenExpiresAt !== null && expiresAt > state.tokenExpiresAt) {
    state.refreshes += 1;
    $("refresh-count").textContent = state.refreshes === 1 ? "1 refresh" : `${state.refreshes} refreshes`;
    log("token", null, null, `bff refreshed the access token (seen via ${source}); it now expires at ${new Date(expiresAt * 1000).toLocaleTimeString()}`, true);
    state.tokenIssuedAt = now();
  }
  if (state.tokenIssuedAt === null) state.tokenIssuedAt = now();
  state.tokenExpiresAt = expiresAt;
  renderCountdown();
}

function renderCountdown() {
  if (state.tokenExpiresAt === null) return;
  const left = state.tokenExpiresAt - now();
  $("countdown").textContent = left > 0 ? `${left} s` : "expired — the next call refreshes it";
  const total = Math.max(1, state.tokenExpiresAt - (state.tokenIssuedAt || now()));
  $("bar-fill").style.width = `${Math.max(0, Math.min(100, (left / total) * 100))}%`;
}

// DBSC: a call refused for the device binding is tried once more. Right after sign-in the
// browser may still be registering (bff says how long to wait); a bound cookie that expired
// was cleared by bff's answer, so the browser renews it before sending the call again.
const DEVICE_BINDING_ERRORS = ["dbsc_registration_required", "dbsc_bound_cookie_required"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(method, path, body, retried = false) {
  const started = performance.now();
  const init = { method, headers: { "X-CSRF": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(under(path), init);
  } catch (e) {
    log(`${method} ${path}`, null, performance.now() - started, `network error: ${e.message}`);
    throw e;
  }
  const ms = performance.now() - started;
  const expiry = Number(res.headers.get(EXPIRY_HEADER));
  if (res.headers.has(EXPIRY_HEADER)) noteExpiry(expiry, path);
  let payload = null;
  const type = res.headers.get("content-type") || "";
  if (type.includes("json")) payload = await res.json().catch(() => null);
  const note = payload && payload.error ? payload.error : "";
  if (path !== "/auth/user") log(`${method} ${path}`, res.status, ms, note);
  if (res.status === 401 && !retried && payload && DEVICE_BINDING_ERRORS.includes(payload.error)) {
    await sleep(1000 * Number(res.headers.get("Retry-After") || 0));
    return call(method, path, body, true);
  }
  if (res.status === 401 && payload && payload.error === "login_required") {
    stopStream();
    showView("signed-out");
  }
  if (res.status === 401 && payload && payload.error === "step_up_required") stepUp(payload);
  return { res, payload };
}

// RFC 9470 step-up: sign in again with what the API asked for, then come back to this page.
function stepUp(payload) {
  const params = new URLSearchParams({ return_to: window.location.pathname + window.location.search });
  if (payload.acr_values) params.set("acr_values", payload.acr_values);
  if (payload.max_age !== undefined) params.set("max_age", String(payload.max_age));
  window.location.assign(`${under("/auth/login")}?${params}`);
}

function renderUser(user) {
  $("whoami-name").textContent = user.name || user.sub;
  $("user-name").textContent = user.name || "—";
  $("user-email").textContent = user.email || "—";
  $("user-sub").textContent = user.sub;
  $("session-sid").textContent = user.session.sid;
  $("session-ends").textContent = new Date(user.session.expires_at * 1000).toLocaleString();
  $("claims").textContent = JSON.stringify(user.claims, null, 2);
  noteExpiry(user.access_token_expires_at, "/auth/user");
  $("token-type").textContent =
    user.access_token_type === "DPoP" ? "DPoP (bound to bff's key, a proof on every call)" : "Bearer";
  $("session-bound").textContent = user.device_bound
    ? "yes — bound to this device's key (DBSC): a copy of the cookies stops working within minutes"
    : user.device_binding === "off" || !user.device_binding
      ? "no (session.dbsc is off)"
      : "not (yet): this browser has not registered a device key";
  $("session-bound").dataset.bound = String(Boolean(user.device_bound));
}

// The signed-in user's sessions (`GET /auth/sessions`): each can be ended but this one, which
// signs out with the button at the top.
async function loadSessions() {
  const { res, payload } = await call("GET", "/auth/sessions");
  if (!res.ok || !payload) return;
  const items = payload.sessions.map((s) => {
    const li = document.createElement("li");
    li.dataset.session = s.id;
    const when = s.last_used_at ? new Date(s.last_used_at * 1000).toLocaleString() : "—";
    const text = document.createElement("span");
    text.textContent = `${s.user_agent || "unknown browser"} · ${s.address || "unknown address"} · last used ${when}`;
    li.appendChild(text);
    if (s.current) {
      const mark = document.createElement("strong");
      mark.textContent = " (this one)";
      li.appendChild(mark);
    } else {
      const end = document.createElement("button");
      end.type = "button";
      end.className = "secondary small";
      end.textContent = "Sign out";
      end.addEventListener("click", async () => {
        await call("DELETE", `/auth/sessions/${encodeURIComponent(s.id)}`);
        loadSessions();
      });
      li.appendChild(end);
    }
    return li;
  });
  $("sessions").replaceChildren(...items);
}

async function endOtherSessions() {
  await call("DELETE", "/auth/sessions");
  loadSessions();
}

// The browser registers its device key (DBSC) while this page loads: a session not bound yet
// is looked at again a few times.
async function loadUser(checksLeft = 3) {
  const { res, payload } = await call("GET", "/auth/user");
  if (res.ok && payload) {
    renderUser(payload);
    showView("signed-in");
    loadSessions();
    const offered = payload.device_binding && payload.device_binding !== "off";
    if (offered && !payload.device_bound && checksLeft > 0) setTimeout(() => loadUser(checksLeft - 1), 2000);
  } else if (res.status === 401) {
    showView("signed-out");
  } else {
    $("loading").textContent = `bff answered ${res.status} ${payload && payload.error ? payload.error : ""}; try reloading.`;
  }
}

async function onCall(event) {
  const [method, path] = event.currentTarget.dataset.call.split(" ");
  const body = method === "POST" ? { name: `created at ${clock()}` } : undefined;
  const { res, payload } = await call(method, path, body);
  $("result").textContent = `${res.status} ${res.statusText}\n\n${payload ? JSON.stringify(payload, null, 2) : ""}`;
}

async function startStream() {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  $("stream-start").disabled = true;
  $("stream-stop").disabled = false;
  $("ticks").replaceChildren();
  const started = performance.now();
  try {
    // fetch, not EventSource: EventSource cannot send the anti-forgery header.
    const res = await fetch(under("/api/events"), { headers: { "X-CSRF": "1", Accept: "text/event-stream" }, signal: controller.signal });
    log("GET /api/events", res.status, performance.now() - started, res.ok ? "stream open" : "");
    if (res.headers.has(EXPIRY_HEADER)) noteExpiry(Number(res.headers.get(EXPIRY_HEADER)), "/api/events");
    if (!res.ok) {
      if (res.status === 401) showView("signed-out");
      return;
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const event = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) {
          const li = document.createElement("li");
          li.textContent = `${clock()}  ${data}`;
          $("ticks").prepend(li);
        }
      }
    }
    log("GET /api/events", null, null, "stream ended");
  } catch (e) {
    if (e.name !== "AbortError") log("GET /api/events", null, null, `stream error: ${e.message}`);
  } finally {
    if (state.stream === controller) stopStream();
  }
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  $("stream-start").disabled = false;
  $("stream-stop").disabled = true;
}

// A WebSocket through bff: the browser sends the cookie and its Origin, bff checks both and
// attaches the token upstream. bff closes it with 4401 when the session ends, 4408 when idle.
function socketUi(status, open) {
  $("ws-status").textContent = status;
  $("ws-connect").disabled = open !== null;
  $("ws-close").disabled = open !== true;
  $("ws-input").disabled = open !== true;
  $("ws-send").disabled = open !== true;
}

function echoLine(text) {
  const li = document.createElement("li");
  li.textContent = `${clock()}  ${text}`;
  $("ws-echoes").prepend(li);
  while ($("ws-echoes").children.length > 50) $("ws-echoes").lastChild.remove();
}

function connectSocket() {
  closeSocket();
  const url = new URL(under("/api/ws"), window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url);
  state.socket = socket;
  socketUi("Connecting…", false);
  const started = performance.now();
  socket.addEventListener("open", () => {
    log("WS /api/ws", 101, performance.now() - started, "socket open");
    socketUi("Open: messages sent come back from the demo API.", true);
  });
  socket.addEventListener("message", (e) => echoLine(`← ${e.data}`));
  socket.addEventListener("close", (e) => {
    const why = { 4401: "the session ended", 4408: "idle for too long" }[e.code] || e.reason || "closed";
    log("WS /api/ws", null, null, `socket closed: ${e.code} (${why})`);
    if (state.socket !== socket) return;
    state.socket = null;
    socketUi(`Closed: ${e.code} (${why}).`, null);
    if (e.code === 4401) loadUser();
  });
}

function sendOnSocket(event) {
  event.preventDefault();
  const text = $("ws-input").value;
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN || text === "") return;
  state.socket.send(text);
  echoLine(`→ ${text}`);
}

function closeSocket() {
  if (state.socket) state.socket.close(1000, "closed by the page");
}

// A silent sign-in (`prompt=none`) comes back here either signed in or with `?error=<code>`
// (the provider needs the user): shown once, and taken out of the address so that a reload does
// not repeat it and the page never loops.
function silentAnswer() {
  const url = new URL(window.location.href);
  const error = url.searchParams.get("error");
  if (!error) return;
  url.searchParams.delete("error");
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  $("silent-result").textContent = `The provider did not sign you in without a page (${error}): sign in above.`;
  $("silent-result").hidden = false;
}

function init() {
  silentAnswer();
  const here = window.location.pathname + window.location.search;
  $("sign-in").href = `${under("/auth/login")}?return_to=${encodeURIComponent(here)}`;
  $("silent-sign-in").href = `${under("/auth/login")}?prompt=none&return_to=${encodeURIComponent(here)}`;
  $("sign-out-form").action = under("/auth/logout");
  document.querySelectorAll("[data-call]").forEach((b) => b.addEventListener("click", onCall));
  $("stream-start").addEventListener("click", startStream);
  $("sessions-refresh").addEventListener("click", loadSessions);
  $("sessions-end-others").addEventListener("click", endOtherSessions);
  $("stream-stop").addEventListener("click", stopStream);
  $("ws-connect").addEventListener("click", connectSocket);
  $("ws-close").addEventListener("click", closeSocket);
  $("ws-form").addEventListener("submit", sendOnSocket);
  $("doc-cookie").textContent = JSON.stringify(document.cookie);
  setInterval(renderCountdown, 1000);
  loadUser().catch((e) => {
    $("loading").textContent = `Could not reach bff: ${e.message}`;
  });
}

document.addEventListener("DOMContentLoaded", init);
