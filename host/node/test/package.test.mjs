// The `tokenvault` npm package as a user gets it: `cargo test -p tokenvault-tests --test
// packages` packs it, installs the tarball into a new project, copies this file there and
// runs it with the environment below, against the real OAuth server of the Rust tests.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { TokenvaultError, openVault } from 'tokenvault';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through \`cargo test --test packages\``);
  return value;
}

const issuer = required('OAUTH_ISSUER');
const basicSecret = required('OAUTH_BASIC_SECRET');
/** Storage URLs naming a schema and a namespace of this run's own. */
const postgres = required('TOKENVAULT_TEST_POSTGRES_STORAGE');
const redis = required('TOKENVAULT_TEST_REDIS_STORAGE');
const sandboxComponent = required('TOKENVAULT_SANDBOX_COMPONENT_DIR');
const shared = required('TOKENVAULT_SHARED_DIR');
/** The Rust host's data directory: `rust.db`, its `master.key`, and `plan.json`. */
const interopDir = required('TOKENVAULT_INTEROP_DIR');
/** The Rust host's CLI. */
const cli = required('TOKENVAULT_CLI');

/** Every value this run handed out or made up: none may appear where a value must not. */
const canaries = [basicSecret];
const key = (user) => ({ tenant: 'acme', user, provider: 'idp', name: 'default' });

async function call(method, path, body) {
  const response = await fetch(`${issuer}${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  assert.ok(response.ok, `${path} answered ${response.status}`);
  return response.json();
}

const refreshesSeen = async () => (await call('GET', '/__test/stats')).refresh_ok;

/** A real token response from the test server, as a provider sends it. */
async function realGrant() {
  const grant = await call('POST', '/__test/grant', { client_id: 'vault-basic' });
  assert.ok(grant.refresh_token, 'the server issues a refresh token');
  canaries.push(grant.access_token, grant.refresh_token);
  return grant;
}

const provider = {
  name: 'idp',
  authorizationUrl: `${issuer}/auth`,
  tokenUrl: `${issuer}/token`,
  revocationUrl: `${issuer}/token/revocation`,
  clientId: 'vault-basic',
  clientSecret: basicSecret,
  clientAuth: 'client-secret-basic',
  scopes: ['openid', 'offline_access'],
  authorizationParams: { prompt: 'consent' },
};

/** The error a call rejects with, checked to be a `TokenvaultError`. */
async function failure(promise) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof TokenvaultError, `not a TokenvaultError: ${e}`);
    return e;
  }
  assert.fail('the call succeeded');
}

/** What the package showed where no value may be: checked again at the end against every
 * secret the OAuth server issued. */
const shown = [];

/** No canary in `text`. */
function assertClean(text, what) {
  shown.push(String(text));
  for (const canary of canaries) assert.equal(String(text).includes(canary), false, `${what} holds a value`);
}

function temporaryDir() {
  return mkdtempSync(join(tmpdir(), 'tokenvault-node-'));
}

test('store, get, refresh with rotation, list and remove on the embedded SQLite default', async () => {
  const dataDir = temporaryDir();
  const vault = await openVault({ dataDir, allowedOrigins: [issuer] });
  try {
    await vault.providers.put(provider);
    const grant = await realGrant();

    const info = await vault.store(key('alice'), grant);
    assertClean(JSON.stringify(info), 'store');
    assert.equal(info.provider, 'idp');
    assert.equal(info.hasRefreshToken, true);
    assert.equal(info.status, 'active');
    assert.equal(typeof info.updatedAt, 'number');

    const token = await vault.get(key('alice'));
    assert.equal(token.accessToken, grant.access_token);
    assert.equal(token.refreshToken, grant.refresh_token);

    const before = await refreshesSeen();
    const refreshed = await vault.refresh(key('alice'));
    assert.equal(await refreshesSeen(), before + 1, 'one refresh reached the server');
    canaries.push(refreshed.accessToken, refreshed.refreshToken);
    assert.notEqual(refreshed.refreshToken, grant.refresh_token, 'the server rotates refresh tokens');
    assert.ok(refreshed.expiresAt > Date.now() / 1000);
    // The rotated refresh token was kept: it works, and `get` returns what it gave.
    const again = await vault.refresh(key('alice'));
    canaries.push(again.accessToken, again.refreshToken);
    assert.equal((await vault.get(key('alice'))).accessToken, again.accessToken);

    const listed = await vault.list('acme', 'alice');
    assert.deepEqual(
      listed.map((c) => [c.provider, c.name]),
      [['idp', 'default']],
    );
    assertClean(JSON.stringify(listed), 'list');
    assertClean(JSON.stringify(await vault.providers.list()), 'the provider list');

    const linked = await vault.getOrLink(key('alice'));
    assert.equal(linked.tag, 'token');
    assert.equal(linked.val.accessToken, again.accessToken);

    const receipt = await vault.remove(key('alice'));
    assertClean(JSON.stringify(receipt), 'the removal receipt');
    assert.deepEqual(receipt.upstream, { tag: 'revoked' }, JSON.stringify(receipt));
    const gone = await failure(vault.get(key('alice')));
    assert.equal(gone.kind, 'not-found');
    assertClean(gone.message, 'an error');
    const link = await vault.getOrLink(key('alice'));
    assert.equal(link.tag, 'link');
    assert.ok(link.val.expiresAt > Date.now() / 1000);

    await vault.store(key('alice'), await realGrant());
    const receipts = await vault.revokeAll('acme', 'alice');
    assert.deepEqual(
      receipts.map((r) => [r.provider, r.upstream.tag]),
      [['idp', 'revoked']],
    );
    assert.deepEqual(await vault.list('acme', 'alice'), []);

    // What the file holds is sealed: no value in the database or its log.
    for (const name of readdirSync(dataDir)) assertClean(readFileSync(join(dataDir, name)).toString('latin1'), name);
  } finally {
    await vault.close();
  }
});

test('a token is not handed out when its audit entry cannot be written', async () => {
  const dataDir = temporaryDir();
  let vault = await openVault({ dataDir });
  await vault.providers.put(provider);
  const grant = await realGrant();
  await vault.store(key('ines'), grant);
  await vault.close();
  // The trail's head record, garbled: no entry can be appended after it.
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(join(dataDir, 'vault.db'));
  db.prepare("UPDATE tokenvault_records SET value = x'7b' WHERE key = 'audit-head'").run();
  db.close();
  vault = await openVault({ dataDir });
  try {
    const refused = await failure(vault.get(key('ines')));
    assert.equal(refused.kind, 'storage', refused.message);
    assert.match(refused.message, /audit trail/);
    assertClean(refused.message, 'the audit error');
  } finally {
    await vault.close();
  }
});

test('a connect flow: begin, the user at the provider, complete', async () => {
  const vault = await openVault({ storage: 'memory:', dataDir: temporaryDir(), allowedOrigins: [issuer] });
  try {
    await vault.providers.put(provider);
    const started = await vault.begin(key('bob'), 'http://127.0.0.1/callback', undefined);
    assert.ok(started.url.startsWith(`${issuer}/auth?`), started.url);
    assert.match(started.url, /code_challenge_method=S256/);
    const { location } = await call('POST', '/__test/authorize', { url: started.url });
    const query = new URL(location).search;
    const connected = await vault.complete(query);
    assertClean(JSON.stringify(connected), 'complete');
    assert.deepEqual(connected.key, key('bob'));
    assert.equal(connected.info.hasRefreshToken, true);
    const token = await vault.get(key('bob'));
    canaries.push(token.accessToken, token.refreshToken);
    // A flow completes once.
    const replayed = await failure(vault.complete(query));
    assert.equal(replayed.kind, 'invalid-input');
    assertClean(replayed.message, 'the replay error');
  } finally {
    await vault.close();
  }
});

test('a request to an origin not allowed is refused before it leaves', async () => {
  const vault = await openVault({ storage: 'memory:', dataDir: temporaryDir(), allowedOrigins: ['https://github.com'] });
  try {
    await vault.providers.put(provider);
    const grant = await realGrant();
    await vault.store(key('carol'), grant);
    const before = await refreshesSeen();
    const denied = await failure(vault.refresh(key('carol')));
    assert.equal(denied.kind, 'egress-denied', denied.message);
    assertClean(denied.message, 'the egress error');
    assert.equal(await refreshesSeen(), before, 'nothing reached the server');
    assert.equal((await vault.get(key('carol'))).accessToken, grant.access_token, 'the stored token is intact');
  } finally {
    await vault.close();
  }
});

test('the memory cap and the deadline stop a call, and the vault goes on serving', async () => {
  const vault = await openVault({
    storage: 'memory:',
    dataDir: temporaryDir(),
    componentDir: sandboxComponent,
    memoryLimitMib: 32,
    callDeadlineMs: 2_000,
    workers: 1,
  });
  try {
    const hog = await failure(vault.get({ tenant: 't', user: 'hog', provider: 'p' }));
    assert.equal(hog.kind, 'sandbox', hog.message);
    // It ran out at the cap: without one it would have grown to Wasm's 4 GiB.
    const [, used] = hog.message.match(/memory in use: ([\d.]+) MiB of its 32.0 MiB cap/) ?? [];
    assert.ok(Number(used) > 16 && Number(used) <= 32, hog.message);
    const started = Date.now();
    const spin = await failure(vault.get({ tenant: 't', user: 'spin', provider: 'p' }));
    assert.equal(spin.kind, 'sandbox', spin.message);
    assert.match(spin.message, /deadline/);
    assert.ok(Date.now() - started < 10_000, 'stopped near its deadline');
    await vault.store({ tenant: 't', user: 'u', provider: 'p' }, { access_token: 'after' });
    assert.equal((await vault.get({ tenant: 't', user: 'u', provider: 'p' })).accessToken, 'after');
  } finally {
    await vault.close();
  }
});

test('instances are never shared between tenants', async () => {
  // `remember` reports the marks earlier calls left in its instance's memory, then leaves
  // one naming its tenant. One worker, so every call goes to the same thread.
  const vault = await openVault({ storage: 'memory:', dataDir: temporaryDir(), componentDir: sandboxComponent, workers: 1 });
  const remember = (tenant) => vault.get({ tenant, user: 'remember', provider: 'p' });
  try {
    assert.equal((await remember('acme')).accessToken, 'residue: []');
    assert.equal((await remember('acme')).accessToken, 'residue: [acme]', 'a tenant keeps its instance for get');
    assert.equal((await remember('globex')).accessToken, 'residue: []', "another tenant's instance is fresh");
    assert.equal((await remember('acme')).accessToken, 'residue: [acme,acme]');
  } finally {
    await vault.close();
  }
});

test('bad input is refused with a clear error', async () => {
  await assert.rejects(openVault({ storage: 'mysql://x' }), (e) => e instanceof TypeError && /sqlite:\/\//.test(e.message));
  await assert.rejects(
    openVault({ storage: 'postgres://nobody@127.0.0.1:1/none', masterKey: Buffer.alloc(32).toString('base64') }),
    (e) => e.kind === 'storage',
  );
  await assert.rejects(openVault({ dataDir: temporaryDir(), allowedOrigins: ['github.com'] }), TypeError);
  await assert.rejects(openVault({ dataDir: temporaryDir(), memoryLimitMib: 0 }), TypeError);
  // A shared store needs the master key every host is given.
  await assert.rejects(
    openVault({ storage: postgres, dataDir: temporaryDir() }),
    (e) => e.kind === 'config' && /TOKENVAULT_MASTER_KEY/.test(e.message),
  );
  const vault = await openVault({ storage: 'memory:', dataDir: temporaryDir() });
  try {
    await assert.rejects(vault.get({ tenant: 'acme' }), TypeError);
    await assert.rejects(vault.store(key('x'), { token: 'no' }), TypeError);
    const missing = await failure(vault.get(key('nobody')));
    assert.equal(missing.kind, 'not-found');
  } finally {
    await vault.close();
  }
});

for (const [backend, storage] of [
  ['PostgreSQL', postgres],
  ['Redis', redis],
]) {
  test(`store, get and refresh on ${backend}, with the master key given`, async () => {
    const masterKey = readFileSync(join(shared, 'master.key'), 'utf8').trim();
    const vault = await openVault({ storage, masterKey, allowedOrigins: [issuer] });
    try {
      await vault.providers.put(provider);
      const grant = await realGrant();
      await vault.store(key('dave'), grant);
      assert.equal((await vault.get(key('dave'))).accessToken, grant.access_token);
      const refreshed = await vault.refresh(key('dave'));
      canaries.push(refreshed.accessToken, refreshed.refreshToken);
      assert.equal((await vault.get(key('dave'))).refreshToken, refreshed.refreshToken);
      assert.deepEqual((await vault.remove(key('dave'))).upstream, { tag: 'revoked' });
    } finally {
      await vault.close();
    }
  });
}

// The Rust host wrote a connection into `rust.db` (see tests/src/lib.rs, interop_dir); this
// host opens the same file with the same master key, reads it, and stores one for the Rust
// host to read back.
test("one SQLite file with the Rust host: each reads what the other stored", async () => {
  const plan = JSON.parse(readFileSync(join(interopDir, 'plan.json'), 'utf8'));
  canaries.push(plan.rust_wrote.access_token, plan.rust_wrote.refresh_token);
  const vault = await openVault({
    storage: `sqlite://${join(interopDir, 'rust.db')}`,
    masterKeyFile: join(interopDir, 'master.key'),
  });
  try {
    const token = await vault.get(plan.rust_wrote.key);
    assert.equal(token.accessToken, plan.rust_wrote.access_token);
    assert.equal(token.refreshToken, plan.rust_wrote.refresh_token);
    const { key, access_token: accessToken, refresh_token: refreshToken } = plan.other_writes;
    await vault.store(key, { access_token: accessToken, token_type: 'Bearer', expires_in: 3600, refresh_token: refreshToken });
    assert.deepEqual(
      (await vault.list(key.tenant, key.user)).map((c) => c.provider),
      [key.provider],
    );
  } finally {
    await vault.close();
  }
});

test('a key rotation by the Rust host reaches an open vault', async () => {
  const dataDir = temporaryDir();
  const tokenvault = (...args) => JSON.parse(execFileSync(cli, ['--data-dir', dataDir, ...args], { encoding: 'utf8' }));
  const vault = await openVault({ dataDir });
  try {
    await vault.providers.put(provider);
    await vault.store(key('kim'), { access_token: 'sealed-before' });
    const rotated = tokenvault('keys', 'rotate');
    await vault.store(key('lou'), { access_token: 'sealed-at-once' }); // under either key: both are live
    await new Promise((resolve) => setTimeout(resolve, 3_500)); // the keyring is read again after 2 s (+ a worker's 1 s)
    await vault.store(key('max'), { access_token: 'sealed-after' });
    let counts = Object.fromEntries(tokenvault('keys', 'ls').map((k) => [k.id, k.records]));
    assert.ok(counts[rotated.id] >= 1, `nothing was sealed with the new key: ${JSON.stringify(counts)}`);
    assert.equal(tokenvault('keys', 'reencrypt').failed, 0);
    counts = Object.fromEntries(tokenvault('keys', 'ls').map((k) => [k.id, k.records]));
    assert.deepEqual(
      Object.entries(counts).filter(([id]) => id !== rotated.id).map(([, n]) => n),
      [0],
    );
    for (const [user, token] of [['kim', 'sealed-before'], ['lou', 'sealed-at-once'], ['max', 'sealed-after']]) {
      assert.equal((await vault.get(key(user))).accessToken, token);
    }
  } finally {
    await vault.close();
  }
});

// Last: nothing shown above holds any value the OAuth server handed out (tokens,
// authorization codes), including those this file never saw itself.
test('no output or error holds a value the provider issued', async () => {
  const issued = await call('GET', '/__test/issued');
  assert.ok(issued.length > 10, `the server issued ${issued.length} values`);
  const everything = shown.join('\n');
  assert.ok(shown.length >= 10, `${shown.length} outputs recorded`);
  for (const value of issued) assert.equal(everything.includes(value), false, 'an output holds an issued value');
});
