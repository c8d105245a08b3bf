// A real OAuth 2.0 / OpenID provider (oidc-provider) on 127.0.0.1 for tokenvault's tests.
//
// Started by the test harness (tests/src/lib.rs); prints one JSON line {issuer, port}
// when ready and exits when its stdin closes. Besides the provider's own endpoints it
// serves a few test controls under /__test/:
//   POST /__test/grant   {client_id}            run a real authorization-code + PKCE flow
//                                               (logging in on the login page, consent given)
//                                               and return the token endpoint's response
//   POST /__test/authorize {url, deny}          act as the user's browser: follow an
//                                               authorization URL through the login page
//                                               (or cancel there, with deny) and return the
//                                               redirect it ends at: {location}
//   POST /__test/device  {user_code, deny}      act as the user on the device verification
//                                               page: enter the code, log in and consent
//                                               (or abort, with deny)
//   GET  /__test/jwks                           the key set backend JWTs are signed with
//   POST /__test/jwt     {claims, ttl}          a JWT with those claims (ES256), for ttl seconds
//   POST /__test/fault   {status, body, content_type, delay_ms, reset, count}
//                                               the next `count` token requests get this
//   GET  /__test/stats                          counts of refresh-token grants by outcome,
//                                               of device-code grants the provider
//                                               answered, and of faults served
//   GET  /__test/issued                         every secret value this server handed
//                                               out (tokens, device codes, authorization
//                                               codes, JWTs): the suite's canaries
//
// The device authorization response names an interval of DEVICE_INTERVAL seconds
// (oidc-provider names none, which means 5), so tests need not wait long.
//
// Logging in: the provider's login page (/interaction/{uid}) is a form a browser fills
// in: login `test-user`, password `test-password` (an account whose `tenant` claim is
// acme); Cancel refuses (access_denied). Consent is given without a page.
//
// Client `console` (secret CONSOLE_SECRET) is an operator's OpenID Connect login for
// tokenvault's console; its ID tokens carry the `tenant` claim.
//
// Environment: ACCESS_TTL (seconds, default 4), BASIC_SECRET, POST_SECRET,
// CONSOLE_SECRET, DEVICE_INTERVAL (default 1).

import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';
// oidc-provider's own JOSE library: signs the JWTs a company IdP would give its backends.
import { SignJWT, exportJWK, generateKeyPair } from 'jose';

// stdout carries the ready line only: the harness stops reading after it, and a later
// write there (oidc-provider's notices) would hit a closed pipe.
console.log = console.error;
console.info = console.error;
console.warn = console.error;

const ACCESS_TTL = Number(process.env.ACCESS_TTL ?? 4);
const DEVICE_INTERVAL = Number(process.env.DEVICE_INTERVAL ?? 1);
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const REDIRECT_URI = 'http://127.0.0.1/callback';
// The redirect URI of `tokenvault serve` on loopback (any port, as above).
const SERVE_REDIRECT_URI = 'http://127.0.0.1/oauth/callback';
const ACCOUNT = 'test-user';
const PASSWORD = 'test-password';
// The redirect URI of tokenvault's console sign-in on loopback.
const CONSOLE_REDIRECT_URI = 'http://127.0.0.1/console/oidc/callback';

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

// Native clients (RFC 8252): any port on the loopback redirect URI is accepted.
const clients = [
  ['vault-basic', process.env.BASIC_SECRET ?? 'basic-secret', 'client_secret_basic'],
  ['vault-post', process.env.POST_SECRET ?? 'post-secret', 'client_secret_post'],
  ['vault-public', undefined, 'none'],
].map(([client_id, client_secret, token_endpoint_auth_method]) => ({
  client_id,
  ...(client_secret ? { client_secret } : {}),
  token_endpoint_auth_method,
  application_type: 'native',
  grant_types: ['authorization_code', 'refresh_token', DEVICE_GRANT, ...(client_secret ? ['client_credentials'] : [])],
  response_types: ['code'],
  redirect_uris: [REDIRECT_URI, SERVE_REDIRECT_URI],
}));
// The API server's own client: a resource server that only introspects tokens.
const API_SECRET = randomBytes(16).toString('hex');
clients.push({
  client_id: 'api',
  client_secret: API_SECRET,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: [],
  response_types: [],
  redirect_uris: [],
});
clients.push({
  client_id: 'console',
  client_secret: process.env.CONSOLE_SECRET ?? 'console-secret',
  token_endpoint_auth_method: 'client_secret_basic',
  application_type: 'native',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: [CONSOLE_REDIRECT_URI],
});

const provider = new Provider(issuer, {
  clients,
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub, tenant: 'acme' }) }),
  // The tenant claim comes with the openid scope, and goes in the ID token of a code flow.
  claims: { openid: ['sub', 'tenant'] },
  conformIdTokenClaims: false,
  // Every refresh rotates the refresh token, as Slack and GitHub Apps do; reuse of a
  // rotated token is refused (invalid_grant) and revokes the grant (RFC 9700).
  rotateRefreshToken: true,
  ttl: { AccessToken: ACCESS_TTL, RefreshToken: 24 * 3600, Grant: 24 * 3600, Session: 3600, Interaction: 600, AuthorizationCode: 60, ClientCredentials: ACCESS_TTL, DeviceCode: 600 },
});

const stats = { refresh_ok: 0, refresh_error: 0, invalid_grant: 0, device_polls: 0, faults_served: 0 };
provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params?.grant_type === 'refresh_token') stats.refresh_ok += 1;
  if (ctx.oidc.params?.grant_type === DEVICE_GRANT) stats.device_polls += 1;
});
provider.on('grant.error', (ctx, err) => {
  if (ctx.oidc?.params?.grant_type === DEVICE_GRANT) stats.device_polls += 1;
  if (ctx.oidc?.params?.grant_type === 'refresh_token') {
    stats.refresh_error += 1;
    if (err.error === 'invalid_grant') stats.invalid_grant += 1;
  }
});

const faults = [];

// An ES256 key for backend JWTs (POST /__test/jwt), published at GET /__test/jwks.
const jwtKeys = await generateKeyPair('ES256');
const jwks = { keys: [{ ...(await exportJWK(jwtKeys.publicKey)), kid: 'backend-1', alg: 'ES256', use: 'sig' }] };

// Every secret value handed out, for the harness's scan of what tokenvault shows.
const issued = new Set();
const SECRET_FIELDS = ['access_token', 'refresh_token', 'id_token', 'device_code', 'jwt'];

// Test controls and fault injection, ahead of the provider's own routes.
provider.use(async (ctx, next) => {
  await next();
  for (const field of SECRET_FIELDS) {
    if (typeof ctx.body?.[field] === 'string') issued.add(ctx.body[field]);
  }
  const location = ctx.response.get('location');
  const code = location && URL.canParse(location) && new URL(location).searchParams.get('code');
  if (code) issued.add(code);
});

provider.use(async (ctx, next) => {
  if (ctx.path === '/__test/issued') {
    ctx.body = [...issued];
    return;
  }
  if (ctx.path === '/__test/api/seen') {
    ctx.body = apiSeen;
    return;
  }
  if (ctx.path === '/__test/api/connections') {
    ctx.body = { connections: apiConnections };
    return;
  }
  if (ctx.path === '/__test/api/fault' && ctx.method === 'POST') {
    const fault = await readJson(ctx.req);
    for (let i = 0; i < (fault.count ?? 1); i += 1) apiFaults.push(fault);
    ctx.body = { queued: apiFaults.length };
    return;
  }
  if (ctx.path === '/__test/stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/__test/jwks') {
    ctx.body = jwks;
    return;
  }
  if (ctx.path === '/__test/jwt' && ctx.method === 'POST') {
    // {claims, ttl}: a JWT with these claims, issued now, expiring after ttl seconds.
    const { claims, ttl } = await readJson(ctx.req);
    const now = Math.floor(Date.now() / 1000);
    const jwt = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid: 'backend-1' })
      .setIssuedAt(now)
      .setExpirationTime(now + ttl)
      .sign(jwtKeys.privateKey);
    ctx.body = { jwt };
    return;
  }
  if (ctx.path === '/__test/fault' && ctx.method === 'POST') {
    const fault = await readJson(ctx.req);
    for (let i = 0; i < (fault.count ?? 1); i += 1) faults.push(fault);
    ctx.body = { queued: faults.length };
    return;
  }
  if (ctx.path === '/__test/authorize' && ctx.method === 'POST') {
    const { url, deny } = await readJson(ctx.req);
    ctx.body = { location: await browse(url, Boolean(deny)) };
    return;
  }
  if (ctx.path === '/__test/device' && ctx.method === 'POST') {
    const { user_code: userCode, deny } = await readJson(ctx.req);
    ctx.body = await enterUserCode(userCode, Boolean(deny));
    return;
  }
  if (ctx.path === '/device/auth' && ctx.method === 'POST') {
    await next();
    if (ctx.status === 200 && ctx.body?.device_code) ctx.body = { ...ctx.body, interval: DEVICE_INTERVAL };
    return;
  }
  if (ctx.path === '/__test/grant' && ctx.method === 'POST') {
    const { client_id: clientId } = await readJson(ctx.req);
    ctx.body = await codeFlow(clients.find((c) => c.client_id === clientId));
    return;
  }
  if (ctx.path === '/token' && ctx.method === 'POST' && faults.length > 0) {
    const fault = faults.shift();
    stats.faults_served += 1;
    if (fault.delay_ms) await new Promise((r) => setTimeout(r, fault.delay_ms));
    if (fault.reset) {
      ctx.req.socket.destroy();
      ctx.respond = false;
      return;
    }
    if (fault.status) {
      ctx.status = fault.status;
      ctx.type = fault.content_type ?? 'text/plain';
      ctx.body = fault.body ?? '';
      return;
    }
  }
  // The login page, a form to fill in; consent is given without a page.
  const interaction = ctx.path.match(/^\/interaction\/([\w-]+)(\/login|\/abort)?$/);
  if (interaction) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params, session } = details;
    let result;
    if (interaction[2] === '/abort' && ctx.method === 'POST') {
      result = { error: 'access_denied', error_description: 'the user said no' };
    } else if (interaction[2] === '/login' && ctx.method === 'POST') {
      const form = new URLSearchParams(await readText(ctx.req));
      if (form.get('login') !== ACCOUNT || form.get('password') !== PASSWORD) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = loginPage(details.uid, 'Wrong login or password.');
        return;
      }
      result = { login: { accountId: ACCOUNT } };
    } else if (ctx.method === 'GET' && prompt.name === 'login') {
      ctx.type = 'html';
      ctx.body = loginPage(details.uid);
      return;
    } else if (ctx.method === 'GET' && prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      result = { consent: { grantId: await grant.save() } };
    } else {
      ctx.status = 405;
      return;
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    ctx.status = 303;
    ctx.redirect(to);
    return;
  }
  await next();
});

server.on('request', provider.callback());

async function readText(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text;
}

async function readJson(req) {
  const text = await readText(req);
  return text ? JSON.parse(text) : {};
}

function loginPage(uid, error) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · test provider</title></head>
<body><h1>Sign in to the test provider</h1>${error ? `<p role="alert">${error}</p>` : ''}
<form method="post" action="/interaction/${uid}/login">
<label>Login <input name="login" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button id="sign-in" type="submit">Sign in</button></form>
<form method="post" action="/interaction/${uid}/abort"><button id="cancel" type="submit">Cancel</button></form>
</body></html>`;
}

// A browser with cookies, following redirects by hand. On the login page it signs in as
// the test account, or cancels when `deny`; `done(url)` says where to stop.
function userAgent(deny = false) {
  const cookies = new Map();
  const send = async (url, init = {}) => {
    const res = await fetch(url, {
      ...init,
      redirect: 'manual',
      headers: { ...init.headers, cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const cookie of res.headers.getSetCookie()) {
      const pair = cookie.split(';')[0];
      const eq = pair.indexOf('=');
      cookies.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    return res;
  };
  // Follow from `res` (the response to `url`) until a redirect leaves this server or a
  // page other than the login page is shown; returns {location} or {status}.
  const follow = async (url, res) => {
    for (let hop = 0; hop < 12; hop += 1) {
      const location = res.headers.get('location');
      if (location) {
        const next = new URL(location, url);
        if (next.origin !== issuer) return { location: next.href };
        url = next.href;
        res = await send(url);
        continue;
      }
      const path = new URL(url).pathname;
      if (res.status === 200 && path.startsWith('/interaction/')) {
        url = `${issuer}${path}/${deny ? 'abort' : 'login'}`;
        res = await send(url, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ login: ACCOUNT, password: PASSWORD }),
        });
        continue;
      }
      return { status: res.status, path };
    }
    throw new Error('too many redirects');
  };
  return { send, follow };
}

const base64url = (buf) => buf.toString('base64url');

// The user's browser: from an authorization URL through the login page until a redirect
// leaves this server (the client's redirect URI), and returns that location.
async function browse(start, deny = false) {
  const agent = userAgent(deny);
  const end = await agent.follow(start, await agent.send(start));
  if (!end.location) throw new Error(`authorization stopped at ${end.path} with HTTP ${end.status}`);
  return end.location;
}

// The user on the device verification page (RFC 8628 §3.3): open it with the code
// (oidc-provider answers with a self-posting form holding its CSRF token), confirm or
// abort, then log in and consent through the redirects until a page is shown.
async function enterUserCode(userCode, deny) {
  const { send, follow } = userAgent();
  const form = await (await send(`${issuer}/device?${new URLSearchParams({ user_code: userCode })}`)).text();
  const xsrf = form.match(/name="xsrf" value="([^"]+)"/)?.[1];
  if (!xsrf) throw new Error('the device page has no xsrf field');
  const res = await send(`${issuer}/device`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ xsrf, user_code: userCode, ...(deny ? { abort: 'yes' } : { confirm: 'yes' }) }),
  });
  const end = await follow(`${issuer}/device`, res);
  return { status: end.status };
}

// A complete authorization-code flow with PKCE against this provider, as a browser and
// a client would run it.
async function codeFlow(client) {
  if (!client) throw new Error('unknown client');
  const verifier = base64url(randomBytes(32));
  const challenge = base64url(createHash('sha256').update(verifier).digest());
  const url = `${issuer}/auth?${new URLSearchParams({
    client_id: client.client_id,
    response_type: 'code',
    redirect_uri: REDIRECT_URI,
    scope: 'openid offline_access',
    prompt: 'consent',
    state: base64url(randomBytes(8)),
    code_challenge: challenge,
    code_challenge_method: 'S256',
  })}`;
  const code = new URL(await browse(url)).searchParams.get('code');
  if (!code) throw new Error('authorization did not return a code');

  const form = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier });
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (client.token_endpoint_auth_method === 'client_secret_basic') {
    headers.authorization = `Basic ${Buffer.from(`${client.client_id}:${client.client_secret}`).toString('base64')}`;
  } else {
    form.set('client_id', client.client_id);
    form.set('client_secret', client.client_secret);
  }
  const res = await fetch(`${issuer}/token`, { method: 'POST', headers, body: form });
  const body = await res.json();
  if (!res.ok) throw new Error(`code exchange failed: ${body.error}`);
  return body;
}

// ---- a provider API on its own port (its own origin) -------------------------------
// It accepts only bearer tokens this provider issued and still holds as active, asked by
// RFC 7662 introspection, so an answer proves which token the caller's request carried.
// What it was sent is kept for the tests (`/__test/api/seen` on the provider, never on
// the API itself, which is what a proxy reaches).
const apiSeen = [];
const apiFaults = [];
let apiConnections = 0;

async function introspect(token) {
  const res = await fetch(`${issuer}/token/introspection`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`api:${API_SECRET}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token }),
  });
  return res.json();
}

function send(res, status, headers, body) {
  res.writeHead(status, headers);
  res.end(body);
}

const api = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  const url = new URL(req.url, 'http://api.invalid');
  apiSeen.push({ method: req.method, url: req.url, headers: req.headers, body_bytes: body.length });
  const fault = apiFaults.shift();
  if (fault?.delay_ms) await new Promise((r) => setTimeout(r, fault.delay_ms));
  if (fault?.status) {
    send(res, fault.status, { 'content-type': 'application/json', 'www-authenticate': 'Bearer error="invalid_token"' },
      JSON.stringify({ error: 'fault', status: fault.status }));
    return;
  }
  const bearer = req.headers.authorization?.match(/^Bearer (.+)$/)?.[1];
  const answer = bearer ? await introspect(bearer) : { active: false };
  if (!answer.active) {
    send(res, 401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer error="invalid_token"' },
      JSON.stringify({ error: 'invalid_token' }));
    return;
  }
  const hopByHop = { connection: 'x-hop', 'x-hop': 'dropped', 'keep-alive': 'timeout=5', 'set-cookie': 'session=api-cookie' };
  const status = Number(url.pathname.match(/^\/status\/(\d{3})$/)?.[1] ?? 200);
  if (url.searchParams.get('type') === 'text') {
    send(res, status, { 'content-type': 'text/plain' }, `plain ${status}`);
    return;
  }
  if (url.pathname === '/big') {
    send(res, 200, { 'content-type': 'application/octet-stream' }, Buffer.alloc(Number(url.searchParams.get('bytes')), 97));
    return;
  }
  if (url.pathname === '/slow') {
    await new Promise((r) => setTimeout(r, Number(url.searchParams.get('ms'))));
  }
  if (url.pathname === '/leak') {
    // A careless API that sends the caller's credentials back.
    send(res, 200, { 'content-type': 'text/plain', 'x-leak': req.headers.authorization }, `you sent ${req.headers.authorization}`);
    return;
  }
  const { authorization: _, ...headers } = req.headers;
  send(res, status, { 'content-type': 'application/json', 'x-api': 'yes', ...hopByHop }, JSON.stringify({
    method: req.method,
    path: url.pathname,
    query: url.search,
    headers,
    body: body.toString('utf8'),
    sub: answer.sub,
    client_id: answer.client_id,
  }));
});
// Idle connections are kept as long as the vault's pool keeps them (Node's default is 5 s).
api.keepAliveTimeout = 60_000;
api.on('connection', () => {
  apiConnections += 1;
});
await new Promise((resolve) => api.listen(0, '127.0.0.1', resolve));
const apiOrigin = `http://127.0.0.1:${api.address().port}`;

process.stdout.write(`${JSON.stringify({ issuer, port, api: apiOrigin })}\n`);
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
