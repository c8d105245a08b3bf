// The component under Node.js (jco), with JavaScript storage, keyring and audit, against
// the real OAuth server the Rust tests use. `cargo test -p tokenvault-tests --test
// other_hosts` runs this file with the environment below set; see README, Other hosts.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { MemoryStorage, SqliteStorage } from '../storage.mjs';
import { KEYRING_KEY, Keyring, openVault, origin } from '../tokenvault.mjs';

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through \`cargo test --test other_hosts\``);
  return value;
}

const component = required('TOKENVAULT_COMPONENT');
const issuer = required('OAUTH_ISSUER');
const basicSecret = required('OAUTH_BASIC_SECRET');
const interopDir = required('TOKENVAULT_INTEROP_DIR');

const key = (user, provider = 'idp') => ({ tenant: 'acme', user, provider, name: 'default' });

/** The err value of a failed export call (jco throws it as `payload`). */
function failure(call) {
  try {
    call();
  } catch (e) {
    assert.ok(e.payload, `not a component error: ${e}`);
    return e.payload;
  }
  assert.fail('the call succeeded');
}

async function post(path, body) {
  const response = await fetch(`${issuer}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.ok(response.ok, `${path} answered ${response.status}`);
  return response.json();
}

async function refreshesSeen() {
  return (await (await fetch(`${issuer}/__test/stats`)).json()).refresh_ok;
}

function registerProvider(vault) {
  return vault.providers.put(undefined, {
    name: 'idp',
    template: undefined,
    issuer: undefined,
    authorizationUrl: `${issuer}/auth`,
    tokenUrl: `${issuer}/token`,
    revocationUrl: undefined,
    deviceAuthorizationUrl: undefined,
    clientId: 'vault-basic',
    clientSecret: basicSecret,
    clientAuth: 'client-secret-basic',
    scopes: ['openid', 'offline_access'],
    authorizationParams: [],
    refreshBufferSecs: undefined,
    apiBaseUrl: undefined,
  });
}

/** A real token response, as the component's `token-grant`. */
async function realGrant() {
  const g = await post('/__test/grant', { client_id: 'vault-basic' });
  assert.ok(g.refresh_token, 'the server issues a refresh token');
  return {
    grant: {
      accessToken: g.access_token,
      tokenType: g.token_type,
      expiresIn: BigInt(g.expires_in),
      refreshToken: g.refresh_token,
      scope: g.scope,
    },
    response: g,
  };
}

test('store, get, list and remove through JavaScript storage', async () => {
  const storage = new MemoryStorage();
  const vault = await openVault({ component, storage, keyring: Keyring.create() });
  registerProvider(vault);
  const { grant } = await realGrant();

  const info = vault.tokens.store(key('alice'), grant);
  assert.equal(info.provider, 'idp');
  assert.equal(info.hasRefreshToken, true);
  assert.equal(info.status, 'active');

  const token = vault.tokens.get(key('alice'));
  assert.equal(token.accessToken, grant.accessToken);
  assert.equal(token.refreshToken, grant.refreshToken);

  const listed = vault.tokens.list('acme', 'alice');
  assert.deepEqual(listed.map((c) => [c.provider, c.name]), [['idp', 'default']]);
  assert.equal(JSON.stringify(listed, (_, v) => (typeof v === 'bigint' ? `${v}` : v)).includes(grant.accessToken), false);

  // What JavaScript storage holds is sealed: neither token appears in any record.
  const { keys } = storage.list('', undefined, 1000);
  assert.ok(keys.length >= 2, `records: ${keys}`);
  for (const k of keys) {
    const bytes = Buffer.from(storage.get(k).value);
    for (const secret of [grant.accessToken, grant.refreshToken, basicSecret]) {
      assert.equal(bytes.includes(secret), false, `${k} holds a value in the clear`);
    }
  }

  const receipt = vault.tokens.remove(key('alice'));
  assert.deepEqual(receipt.upstream, { tag: 'unsupported' }, 'no revocation endpoint registered');
  assert.equal(failure(() => vault.tokens.get(key('alice'))).tag, 'not-found');
  assert.deepEqual(
    vault.audit.map((e) => `${e.action}:${e.outcome}`),
    ['provider-put:ok', 'token-store:ok', 'token-get:ok', 'token-remove:ok', 'token-get:not-found'],
  );
});

test("a tenant's webhook: its events committed with each change, in both storages", async () => {
  for (const storage of [new MemoryStorage(), await SqliteStorage.open(join(interopDir, 'node-events.db'))]) {
    const vault = await openVault({ component, storage, keyring: Keyring.create() });
    registerProvider(vault);
    const secret = vault.webhooks.put('acme', { url: 'https://hooks.example/in', events: [], rotateSecret: false });
    assert.match(secret, /^whsec_/);
    const { grant } = await realGrant();
    vault.tokens.store(key('alice'), grant);
    vault.tokens.remove(key('alice'));
    const events = storage
      .list('outbox/', undefined, 100)
      .keys.map((k) => JSON.parse(Buffer.from(storage.get(k).value).toString('utf8')));
    assert.deepEqual(events.map((e) => e.type), ['connection.created', 'connection.removed']);
    assert.equal(events[1].revocation.upstream, 'unsupported');
    // The component signs a delivery as Standard Webhooks says (checked against node:crypto).
    const signed = vault.webhooks.sign('acme', 'ping', 'evt_1', 1700000000n, Buffer.from('{}'));
    const { createHmac } = await import('node:crypto');
    const mac = createHmac('sha256', Buffer.from(secret.slice(6), 'base64')).update('evt_1.1700000000.{}').digest('base64');
    assert.deepEqual(signed, { url: 'https://hooks.example/in', signature: `v1,${mac}` });
  }
});

test('a version conflict reaches the component, which retries', async () => {
  // Another writer creates the token record just before the component's first write (a
  // put, or a commit with the token's due-index entry).
  const storage = new MemoryStorage();
  let raced = false;
  const [put, commit] = [storage.put.bind(storage), storage.commit.bind(storage)];
  const race = (k) => {
    if (k.startsWith('tok/') && !raced) {
      raced = true;
      put(k, new TextEncoder().encode("another writer's record"), undefined);
    }
  };
  storage.put = (k, value, expected) => {
    race(k);
    return put(k, value, expected);
  };
  storage.commit = (writes) => {
    for (const { val } of writes) race(val[0]);
    return commit(writes);
  };
  const vault = await openVault({ component, storage, keyring: Keyring.create() });
  registerProvider(vault);
  const { grant } = await realGrant();
  vault.tokens.store(key('dora'), grant);
  assert.ok(raced);
  assert.equal(vault.tokens.get(key('dora')).accessToken, grant.accessToken);
});

test('refresh goes to the real token endpoint through the allow-listed HTTP shim', async () => {
  const vault = await openVault({
    component,
    storage: new MemoryStorage(),
    keyring: Keyring.create(),
    allowedOrigins: [issuer],
  });
  registerProvider(vault);
  const { grant } = await realGrant();
  vault.tokens.store(key('bob'), grant);

  const before = await refreshesSeen();
  const refreshed = vault.tokens.refresh(key('bob'));
  assert.equal(await refreshesSeen(), before + 1, 'one refresh grant reached the server');
  assert.notEqual(refreshed.accessToken, grant.accessToken);
  assert.notEqual(refreshed.refreshToken, grant.refreshToken, 'the server rotates refresh tokens');
  assert.ok(refreshed.expiresAt > BigInt(Math.floor(Date.now() / 1000)));

  // The rotated refresh token was kept: it works again, and the old one is spent.
  const again = vault.tokens.refresh(key('bob'));
  assert.notEqual(again.accessToken, refreshed.accessToken);
  assert.equal(vault.tokens.get(key('bob')).accessToken, again.accessToken);
  assert.deepEqual(vault.deniedRequests, []);
});

test("a refresh waits on another holder's lease and takes it once released", async () => {
  const storage = new MemoryStorage();
  const vault = await openVault({ component, storage, keyring: Keyring.create(), allowedOrigins: [issuer] });
  registerProvider(vault);
  const { grant } = await realGrant();
  vault.tokens.store(key('erin'), grant);
  // Another process holds the lease, then gives up without a result: its lease vanishes
  // on the third read, while the component waits in wait-for-change.
  const leaseKey = 'lease/acme/erin/idp/default';
  const lease = JSON.stringify({ holder: 'another-process', expires_at_ms: Date.now() + 40_000 });
  const leaseVersion = storage.put(leaseKey, new TextEncoder().encode(lease), undefined);
  let leaseReads = 0;
  const get = storage.get.bind(storage);
  storage.get = (k) => {
    if (k === leaseKey && ++leaseReads === 3) storage.delete(leaseKey, leaseVersion);
    return get(k);
  };

  const before = await refreshesSeen();
  const refreshed = vault.tokens.refresh(key('erin'));
  assert.ok(leaseReads > 3, `the caller waited on the lease, then took it (${leaseReads} reads)`);
  assert.equal(await refreshesSeen(), before + 1, 'it refreshed once itself');
  assert.notEqual(refreshed.accessToken, grant.accessToken);
  assert.equal(get(leaseKey), undefined, 'and released its own lease');
});

test('a request to an origin the host does not allow is refused before it leaves', async () => {
  const vault = await openVault({
    component,
    storage: new MemoryStorage(),
    keyring: Keyring.create(),
    allowedOrigins: ['https://allowed.example'],
  });
  registerProvider(vault);
  const { grant } = await realGrant();
  vault.tokens.store(key('carol'), grant);

  const before = await refreshesSeen();
  const error = failure(() => vault.tokens.refresh(key('carol')));
  assert.equal(error.tag, 'egress-denied', JSON.stringify(error));
  assert.deepEqual(vault.deniedRequests, [origin(issuer)]);
  assert.equal(await refreshesSeen(), before, 'nothing reached the server');
  assert.equal(vault.tokens.get(key('carol')).accessToken, grant.accessToken, 'the stored token is intact');
});

// The Rust host wrote `rust.db`, its keyring in it wrapped by `master.key` (see
// tests/tests/other_hosts.rs); this host reads its record, then writes `node.db`, with the
// same keyring record, for the Rust host to read back.
test('records are interchangeable with the Rust host: same keyring, same storage bytes', async () => {
  const plan = JSON.parse(readFileSync(join(interopDir, 'plan.json'), 'utf8'));
  const rustDb = await SqliteStorage.open(join(interopDir, 'rust.db'));
  const keyring = Keyring.open(rustDb, join(interopDir, 'master.key'));

  const fromRust = await openVault({ component, storage: rustDb, keyring });
  const token = fromRust.tokens.get(plan.rust_wrote.key);
  assert.equal(token.accessToken, plan.rust_wrote.access_token);
  assert.equal(token.refreshToken, plan.rust_wrote.refresh_token);
  assert.deepEqual(fromRust.tokens.list(plan.rust_wrote.key.tenant, plan.rust_wrote.key.user).map((c) => c.provider), [
    plan.rust_wrote.key.provider,
  ]);

  const nodeDb = await SqliteStorage.open(join(interopDir, 'node.db'));
  nodeDb.put(KEYRING_KEY, keyring.record, undefined);
  const forRust = await openVault({ component, storage: nodeDb, keyring });
  registerProvider(forRust);
  const w = plan.node_writes;
  forRust.tokens.store(w.key, {
    accessToken: w.access_token,
    tokenType: 'Bearer',
    expiresIn: 3600n,
    refreshToken: w.refresh_token,
    scope: undefined,
  });
});
