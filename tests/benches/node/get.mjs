// The Node.js side of the `node` bench suite: a warm `get` through the `tokenvault` package
// (host/node, run from its source folder) on Redis, against the approach it replaces in
// Node.js: each token as AES-256-GCM-encrypted JSON (node:crypto) in Redis (ioredis). Prints
// the per-call times in nanoseconds as JSON on stdout.
//
//   node get.mjs REDIS_URL ITERATIONS

import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const packageDir = fileURLToPath(new URL('../../../host/node/', import.meta.url));
const { openVault } = await import(`${packageDir}src/index.js`);
const { Redis } = createRequire(packageDir)('ioredis');

const [url, iterations] = [process.argv[2], Number(process.argv[3])];
const namespace = `node-bench-${process.pid}`;
const token = {
  access_token: randomBytes(32).toString('base64url'),
  token_type: 'Bearer',
  expires_in: 3600,
  scope: 'openid offline_access',
  refresh_token: randomBytes(32).toString('base64url'),
};

async function time(f) {
  const times = [];
  for (let i = 0; i < iterations; i += 1) {
    const start = process.hrtime.bigint();
    await f();
    times.push(Number(process.hrtime.bigint() - start));
  }
  return times;
}

// tokenvault: one worker, so every call is served alike.
const vault = await openVault({
  storage: `${url}?namespace=${namespace}`,
  masterKey: randomBytes(32).toString('base64'),
  workers: 1,
});
const key = { tenant: 'acme', user: 'floor', provider: 'idp' };
await vault.providers.put({ name: 'idp', tokenUrl: 'http://127.0.0.1:9/token', clientId: 'bench', clientSecret: 'bench-secret' });
await vault.store(key, token);

// The hand-written alternative.
const client = new Redis(url);
const aesKey = randomBytes(32);
const handKey = `aesgcm-bench:${process.pid}:acme:floor:idp:default`;
const iv = randomBytes(12);
const cipher = createCipheriv('aes-256-gcm', aesKey, iv);
const sealed = Buffer.concat([iv, cipher.update(JSON.stringify(token)), cipher.final(), cipher.getAuthTag()]);
await client.set(handKey, sealed);
const handGet = async () => {
  const bytes = await client.getBuffer(handKey);
  const decipher = createDecipheriv('aes-256-gcm', aesKey, bytes.subarray(0, 12));
  decipher.setAuthTag(bytes.subarray(bytes.length - 16));
  const got = JSON.parse(Buffer.concat([decipher.update(bytes.subarray(12, bytes.length - 16)), decipher.final()]));
  if (got.access_token !== token.access_token) throw new Error('wrong token');
};

try {
  for (let i = 0; i < 200; i += 1) await vault.get(key); // warm: the JIT's tiers, the pool
  const result = { tokenvault_get: [], aes_gcm_redis_get: [], redis_get_only: [] };
  for (let round = 0; round < 3; round += 1) {
    result.tokenvault_get.push(...(await time(async () => {
      if ((await vault.get(key)).accessToken !== token.access_token) throw new Error('wrong token');
    })));
    result.aes_gcm_redis_get.push(...(await time(handGet)));
    result.redis_get_only.push(...(await time(() => client.getBuffer(handKey))));
  }
  console.log(JSON.stringify(result));
} finally {
  await vault.remove(key).catch(() => {});
  await client.del(handKey);
  const leftover = await client.keys(`${namespace}:*`);
  if (leftover.length > 0) await client.del(...leftover);
  client.disconnect();
  await vault.close();
}
