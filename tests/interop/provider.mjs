// OpenID Provider for bff's interop tests, built on oidc-provider 9 (see ./package.json).
//
// Environment:
//   PROVIDER_PORT      port of the provider (0 = any free port); issuer is http://127.0.0.1:<port>
//   STATS_PORT         port of the statistics server (0 = any free port)
//   ACCESS_TOKEN_TTL   access token lifetime in seconds (default 5)
//   CLIENTS            JSON array of client metadata objects, registered as given
//   API_CLIENT_SECRET  secret of the built-in `api` client that may introspect any token (default "api-secret")
//   RESOURCES          JSON array of resource indicators (RFC 8707) the provider serves, each with
//                      the scope `api:read` and opaque access tokens whose `aud` is the indicator
//   EXCHANGE_AUDIENCES JSON array of audiences a token exchange (RFC 8693) may ask for; each gets an
//                      opaque access token with `aud` = the audience and the scope `api:read`
//
// stdout carries one JSON object per line for events of interest, and exactly one
// `READY issuer=<issuer> stats=<stats url>` line once both servers listen. Diagnostics go to stderr.

import { randomBytes } from 'node:crypto';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its development notices ("default ... function called") with console.info,
// i.e. on stdout; send them to stderr so stdout only carries the READY line and JSON events.
console.info = console.error;

const HOST = '127.0.0.1';
const LOOPBACK_HOSTNAMES = new Set(['127.0.0.1', 'localhost', '[::1]']);
// Error detail of the InvalidGrant thrown by lib/actions/grants/refresh_token.js when an already
// consumed (rotated) refresh token is presented; the library then destroys it and revokes the grant.
const REFRESH_TOKEN_REUSE_DETAIL = 'refresh token already used';

const env = (name, fallback) => process.env[name] ?? fallback;

const accessTokenTtl = Number.parseInt(env('ACCESS_TOKEN_TTL', '5'), 10);
const clients = JSON.parse(env('CLIENTS', '[]'));
const resources = new Set(JSON.parse(env('RESOURCES', '[]')));
const exchangeAudiences = new Set(JSON.parse(env('EXCHANGE_AUDIENCES', '[]')));
if (!Array.isArray(clients)) {
  throw new TypeError('CLIENTS must be a JSON array of client metadata objects');
}

// Served as GET /stats on the statistics server.
const stats = {
  reuse_detected: 0, // refresh token grants refused because the presented token was already rotated
  grants_revoked: 0, // `grant.revoked` events (reuse detection, revocation endpoint, logout)
  backchannel_ok: 0, // logout tokens the RP acknowledged with 200/204
  backchannel_errors: 0, // logout token deliveries that failed
  refresh_tokens_issued: 0,
  refresh_token_grants: 0, // successful refresh_token grants
  client_credentials_grants: 0, // successful client_credentials grants
  token_exchange_grants: 0, // successful token exchanges (RFC 8693)
  introspections: 0, // requests to the introspection endpoint, whatever their outcome
};

// Every refresh token value the provider handed out, in issuance order (values never leave memory
// except through GET /refresh_tokens on the stats server).
const issuedRefreshTokens = [];

function logEvent(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

function capitalise(word) {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

// Binds to 127.0.0.1 and resolves with the port actually chosen.
function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

// Node's default keep-alive timeout (5 s) is shorter than the idle timeout of typical client pools,
// which makes clients occasionally reuse a connection the server is just closing. Keep idle
// connections open longer than any client pool will.
function keepAliveServer() {
  const server = http.createServer();
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 125_000;
  return server;
}

// The issuer contains the port, so the provider server must listen before the provider exists.
const providerServer = keepAliveServer();
const providerPort = await listen(providerServer, Number.parseInt(env('PROVIDER_PORT', '0'), 10));
const issuer = `http://${HOST}:${providerPort}`;

const provider = new Provider(issuer, {
  clients: [
    ...clients,
    {
      // Resource server credentials for api.mjs: it only calls the introspection endpoint.
      client_id: 'api',
      client_secret: env('API_CLIENT_SECRET', 'api-secret'),
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  claims: {
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Any login name is an account whose `sub` is that name.
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: capitalise(sub),
          preferred_username: sub,
          email: `${sub}@example.com`,
          email_verified: true,
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: {
      enabled: true,
      // The api client may introspect any token; every other client only its own tokens.
      async allowedPolicy(ctx, client, token) {
        return client.clientId === 'api' || token.clientId === client.clientId;
      },
    },
    // Logout ends the provider session and notifies every client of the session with a back-channel
    // logout token (carrying `sid` for clients registered with backchannel_logout_session_required,
    // which are also the clients whose ID tokens carry `sid`). Grants that include offline_access
    // survive the logout (library semantics): their refresh tokens stay valid until revoked.
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    // RFC 8707: a refresh (or client-credentials) request with `resource` gets a token for that
    // audience only, and only for a resource the grant names (the authorization request's
    // `resource` parameters); any other indicator is `invalid_target`. Opaque, so the API
    // introspects them like the default tokens.
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      async getResourceServerInfo(ctx, resourceIndicator) {
        if (!resources.has(resourceIndicator)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'api:read',
          audience: resourceIndicator,
          accessTokenFormat: 'opaque',
          accessTokenTTL: accessTokenTtl,
        };
      },
    },
    clientCredentials: { enabled: true },
    // RFC 9449. Server nonces are always required, so a client must handle `use_dpop_nonce`
    // (only clients that send proofs are concerned; `dpop_bound_access_tokens` clients must).
    dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
  },
  pkce: { required: () => true },
  // Refresh tokens are issued by the default issueRefreshToken policy: the client has the
  // refresh_token grant type and the grant holds offline_access, which the authorization endpoint
  // keeps only together with prompt=consent and which the dev consent form then grants.
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: accessTokenTtl,
    IdToken: 60 * 60,
    RefreshToken: 24 * 60 * 60,
  },
  // Outgoing requests (back-channel logout) go through an SSRF-protecting dispatcher that refuses
  // special-use addresses such as 127.0.0.1, where all test relying parties live.
  fetch(url, options) {
    if (LOOPBACK_HOSTNAMES.has(new URL(url).hostname)) {
      const { dispatcher, ...direct } = options;
      return globalThis.fetch(url, direct);
    }
    return globalThis.fetch(url, options);
  },
});
// RFC 8693 token exchange, which oidc-provider leaves to a custom grant type: an active access
// token the provider issued to the same client (`subject_token`) is exchanged for an opaque access
// token for one of EXCHANGE_AUDIENCES (`audience`, else `resource`), for the same account and
// grant, so revoking the grant ends it too. Any other audience is `invalid_target`.
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be an access token');
  }
  if (params.requested_token_type !== undefined && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are issued');
  }
  const subject = await provider.AccessToken.find(params.subject_token);
  if (!subject?.isValid || subject.clientId !== client.clientId) {
    throw new errors.InvalidGrant('subject_token is not an active access token of this client');
  }
  const grant = await provider.Grant.find(subject.grantId);
  if (!grant || grant.isExpired) {
    throw new errors.InvalidGrant('the grant of subject_token is gone');
  }
  const audience = params.audience ?? params.resource;
  if (!exchangeAudiences.has(audience)) {
    throw new errors.InvalidTarget('no exchange for this audience');
  }
  const token = new provider.AccessToken({
    accountId: subject.accountId,
    client,
    grantId: subject.grantId,
    gty: 'token_exchange',
    sessionUid: subject.sessionUid,
    sid: subject.sid,
  });
  token.resourceServer = new provider.ResourceServer(audience, {
    scope: 'api:read', audience, accessTokenFormat: 'opaque', accessTokenTTL: accessTokenTtl,
  });
  const asked = (params.scope ?? 'api:read').split(' ');
  token.scope = asked.filter((s) => token.resourceServer.scopes.has(s)).join(' ') || undefined;
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'resource', 'scope']);

// `provider.proxy` stays false: requests arrive over plain http, so ctx.secure is false and the
// session/interaction cookies are set without the Secure attribute, which keeps them usable on
// http://127.0.0.1.

provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/token/introspection') {
    stats.introspections += 1;
  }
  await next();
});

const clientIdOf = (ctx) => ctx?.oidc?.client?.clientId;

provider.on('refresh_token.saved', (token) => {
  // Refresh tokens are opaque: the value the client receives is the token's jti.
  issuedRefreshTokens.push(token.jti);
  stats.refresh_tokens_issued += 1;
  logEvent('refresh_token.saved', {
    client_id: token.clientId, grant_id: token.grantId, rotations: token.rotations ?? 0,
  });
});
provider.on('refresh_token.consumed', (token) => {
  logEvent('refresh_token.consumed', { client_id: token.clientId, grant_id: token.grantId });
});
provider.on('grant.success', (ctx) => {
  const grantType = ctx.oidc.params.grant_type;
  if (grantType === 'refresh_token') {
    stats.refresh_token_grants += 1;
  }
  if (grantType === 'client_credentials') {
    stats.client_credentials_grants += 1;
  }
  if (grantType === TOKEN_EXCHANGE) {
    stats.token_exchange_grants += 1;
  }
  logEvent('grant.success', { grant_type: grantType, client_id: clientIdOf(ctx) });
});
provider.on('grant.error', (ctx, err) => {
  const grantType = ctx.oidc.params?.grant_type;
  const reuse = grantType === 'refresh_token' && err.error_detail === REFRESH_TOKEN_REUSE_DETAIL;
  if (reuse) {
    stats.reuse_detected += 1;
  }
  logEvent('grant.error', {
    grant_type: grantType,
    client_id: clientIdOf(ctx),
    error: err.error,
    detail: err.error_detail,
    reuse_detected: reuse,
  });
});
provider.on('grant.revoked', (ctx, grantId) => {
  stats.grants_revoked += 1;
  logEvent('grant.revoked', { grant_id: grantId, client_id: clientIdOf(ctx), route: ctx?.oidc?.route });
});
provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  stats.backchannel_ok += 1;
  logEvent('backchannel.success', { client_id: client.clientId, sub: accountId, sid });
});
provider.on('backchannel.error', (ctx, err, client, accountId, sid) => {
  stats.backchannel_errors += 1;
  logEvent('backchannel.error', {
    client_id: client.clientId, sub: accountId, sid, message: err.message, cause: err.cause?.message,
  });
});
provider.on('authorization.success', (ctx) => {
  logEvent('authorization.success', { client_id: clientIdOf(ctx) });
});
provider.on('end_session.success', (ctx) => {
  logEvent('end_session.success', { client_id: clientIdOf(ctx) });
});
for (const event of [
  'authorization.error',
  'end_session.error',
  'end_session_confirm.error',
  'introspection.error',
  'revocation.error',
  'userinfo.error',
]) {
  provider.on(event, (ctx, err) => {
    logEvent(event, { client_id: clientIdOf(ctx), error: err.error, detail: err.error_detail });
  });
}
provider.on('server_error', (ctx, err) => {
  console.error(`server_error on ${ctx.method} ${ctx.path}:`, err);
});

// Whether the provider would accept this refresh token at the token endpoint right now: it still
// exists (not destroyed by reuse detection or grant revocation), is neither consumed nor expired,
// and its grant still exists and is unexpired.
async function refreshTokenActive(value) {
  const token = await provider.RefreshToken.find(value);
  if (!token?.isValid) {
    return false;
  }
  const grant = await provider.Grant.find(token.grantId);
  return Boolean(grant) && !grant.isExpired && grant.clientId === token.clientId;
}

function sendJson(res, status, body) {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(payload),
    'cache-control': 'no-store',
  });
  res.end(payload);
}

const statsServer = keepAliveServer();
statsServer.on('request', async (req, res) => {
  req.resume();
  try {
    if (req.method === 'GET' && req.url === '/stats') {
      sendJson(res, 200, stats);
    } else if (req.method === 'GET' && req.url === '/refresh_tokens') {
      sendJson(res, 200, await Promise.all(issuedRefreshTokens.map(async (value) => ({
        value,
        active: await refreshTokenActive(value),
      }))));
    } else {
      sendJson(res, 404, { error: 'not_found' });
    }
  } catch (err) {
    console.error('stats server error:', err);
    sendJson(res, 500, { error: 'server_error' });
  }
});

providerServer.on('request', provider.callback());
const statsPort = await listen(statsServer, Number.parseInt(env('STATS_PORT', '0'), 10));

process.stdout.write(`READY issuer=${issuer} stats=http://${HOST}:${statsPort}\n`);

function shutdown() {
  for (const server of [providerServer, statsServer]) {
    server.close();
    server.closeAllConnections();
  }
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
