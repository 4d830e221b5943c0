// Upstream API for bff's interop tests: accepts a request when its bearer access token is active
// according to the provider's token introspection endpoint (RFC 7662).
//
// Environment:
//   API_PORT           port to listen on, on 127.0.0.1 (0 = any free port)
//   ISSUER             issuer of the provider; the introspection endpoint comes from its discovery document
//   API_CLIENT_ID      client authenticating to the introspection endpoint (default "api")
//   API_CLIENT_SECRET  its secret, sent with client_secret_basic (default "api-secret")
//
// Prints `READY url=http://127.0.0.1:<port>` once listening. GET /__stats (no authentication) answers
// {"requests": n, "ok": n, "unauthorized": n}; every other request counts in `requests`.
// POST /__reject_next?n=<n> makes the next n requests answer 401 whatever their token, as an API
// that has just revoked a token would: the test of bff's refresh-and-retry.

import { createHash } from 'node:crypto';
import * as http from 'node:http';

import { EmbeddedJWK, calculateJwkThumbprint, jwtVerify } from 'jose';

const HOST = '127.0.0.1';

const env = (name, fallback) => process.env[name] ?? fallback;

const issuer = process.env.ISSUER;
if (!issuer) {
  throw new Error('ISSUER is required');
}
const clientId = env('API_CLIENT_ID', 'api');
const clientSecret = env('API_CLIENT_SECRET', 'api-secret');

const discoveryResponse = await fetch(`${issuer}/.well-known/openid-configuration`);
if (!discoveryResponse.ok) {
  throw new Error(`discovery document: HTTP ${discoveryResponse.status}`);
}
const { introspection_endpoint: introspectionEndpoint } = await discoveryResponse.json();
if (!introspectionEndpoint) {
  throw new Error('the provider advertises no introspection_endpoint');
}

// client_secret_basic: id and secret are form-urlencoded before base64 (RFC 6749, section 2.3.1).
const basicCredentials = Buffer.from(
  `${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`,
).toString('base64');

const stats = { requests: 0, ok: 0, unauthorized: 0, dpop_ok: 0, dpop_refused: 0 };
// DPoP proof jtis seen (RFC 9449 §11.1: a replayed proof is refused).
const seenProofs = new Set();
let rejectNext = 0;

async function introspect(token) {
  const response = await fetch(introspectionEndpoint, {
    method: 'POST',
    headers: {
      authorization: `Basic ${basicCredentials}`,
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    },
    body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
  });
  if (!response.ok) {
    throw new Error(`introspection: HTTP ${response.status} ${await response.text()}`);
  }
  return response.json();
}

function credentials(req) {
  const match = /^(Bearer|DPoP) +([^ ]+) *$/i.exec(req.headers.authorization ?? '');
  return match ? { scheme: match[1].toLowerCase(), token: match[2] } : undefined;
}

// A token is used as it is bound (RFC 9449 §7): one whose introspection names `cnf.jkt` only as
// `DPoP`, with a proof for this very request (method, URL, token) signed by that key.
async function usedAsBound(req, { scheme, token }, introspection) {
  const jkt = introspection.cnf?.jkt;
  if (!jkt) return scheme === 'bearer';
  if (scheme !== 'dpop' || typeof req.headers.dpop !== 'string') return false;
  try {
    const { payload, protectedHeader } = await jwtVerify(req.headers.dpop, EmbeddedJWK, {
      typ: 'dpop+jwt',
      algorithms: ['ES256', 'PS256', 'EdDSA'],
    });
    const htu = `http://${HOST}:${server.address().port}${req.url.split('?')[0]}`;
    const fresh = Math.abs(Date.now() / 1000 - payload.iat) <= 60 && !seenProofs.has(payload.jti);
    seenProofs.add(payload.jti);
    return fresh
      && payload.htm === req.method
      && payload.htu === htu
      && payload.ath === createHash('sha256').update(token).digest('base64url')
      && (await calculateJwkThumbprint(protectedHeader.jwk)) === jkt;
  } catch {
    return false;
  }
}

function sendJson(res, status, body, headers = {}) {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

// Resolves once the request body has been read to its end (and thrown away).
function drain(req) {
  return new Promise((resolve, reject) => {
    req.on('end', resolve);
    req.on('error', reject);
    req.resume();
  });
}

async function handle(req, res) {
  await drain(req);

  if (req.method === 'GET' && req.url === '/__stats') {
    sendJson(res, 200, stats);
    return;
  }
  if (req.method === 'POST' && req.url.startsWith('/__reject_next')) {
    rejectNext = Number(new URL(req.url, 'http://x').searchParams.get('n') ?? '1');
    sendJson(res, 200, { reject_next: rejectNext });
    return;
  }

  stats.requests += 1;
  const presented = credentials(req);
  const token = presented?.token;
  const forced = rejectNext > 0;
  if (forced) rejectNext -= 1;
  const introspection = token === undefined || forced ? undefined : await introspect(token);
  const bound = introspection?.active === true ? await usedAsBound(req, presented, introspection) : false;
  if (introspection?.cnf?.jkt) {
    if (bound) stats.dpop_ok += 1; else stats.dpop_refused += 1;
  }
  // Refresh tokens introspect as active too, but without a token_type: only access tokens pass.
  if (introspection?.active === true && introspection.token_type !== undefined) {
    stats.ok += 1;
    sendJson(res, 200, {
      ok: true,
      sub: introspection.sub,
      client_id: introspection.client_id,
      aud: introspection.aud,
      dpop: Boolean(introspection.cnf?.jkt),
      scope: introspection.scope,
      path: req.url,
      method: req.method,
    });
  } else {
    stats.unauthorized += 1;
    sendJson(res, 401, { error: 'invalid_token' }, {
      'www-authenticate': 'Bearer error="invalid_token"',
    });
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(`${req.method} ${req.url}:`, err);
    if (!res.headersSent) {
      sendJson(res, 502, { error: 'introspection_failed' });
    }
  });
});
// Keep idle keep-alive connections open longer than client pools do (Node's default is 5 s), so a
// client never reuses a connection the server is just closing.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

server.listen(Number.parseInt(env('API_PORT', '0'), 10), HOST, () => {
  process.stdout.write(`READY url=http://${HOST}:${server.address().port}\n`);
});

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
