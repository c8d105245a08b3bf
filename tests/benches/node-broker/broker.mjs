// The reference the `serve` bench suite measures tokenvault against: a token broker as teams
// write one by hand. Fastify and node-postgres in two worker processes (node:cluster) on one
// PostgreSQL, each token sealed with AES-256-GCM. A request looks the API key's digest up,
// then reads the connection's row and opens it: two database round trips.
//
//   DATABASE_URL=postgres://… BROKER_SCHEMA=name BROKER_API_KEY=secret BROKER_PORT=8080 node broker.mjs
//
// The primary makes the schema, one API key (tenant acme) and one sealed token (acme / alice /
// idp / default), starts the workers, and prints `broker listening on http://127.0.0.1:PORT`.
import cluster from 'node:cluster';
import crypto from 'node:crypto';
import Fastify from 'fastify';
import pg from 'pg';

const { DATABASE_URL, BROKER_SCHEMA, BROKER_API_KEY, BROKER_PORT } = process.env;
const WORKERS = Number(process.env.BROKER_WORKERS ?? 2);
if (!DATABASE_URL || !BROKER_API_KEY || !BROKER_PORT) {
  throw new Error('set DATABASE_URL, BROKER_SCHEMA, BROKER_API_KEY and BROKER_PORT');
}
if (!/^[a-z0-9_]+$/.test(BROKER_SCHEMA ?? '')) {
  throw new Error('BROKER_SCHEMA: lowercase letters, digits and _');
}
const schema = BROKER_SCHEMA;
const digest = (text) => crypto.createHash('sha256').update(text).digest();

function seal(key, plaintext) {
  const iv = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', key, iv);
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([iv, body, cipher.getAuthTag()]);
}

function open(key, sealed) {
  const decipher = crypto.createDecipheriv('aes-256-gcm', key, sealed.subarray(0, 12));
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([decipher.update(sealed.subarray(12, sealed.length - 16)), decipher.final()]);
}

if (cluster.isPrimary) {
  const dataKey = crypto.randomBytes(32);
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  await client.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
  await client.query(`CREATE TABLE IF NOT EXISTS ${schema}.api_keys (digest bytea PRIMARY KEY, tenant text NOT NULL)`);
  await client.query(`CREATE TABLE IF NOT EXISTS ${schema}.tokens (
    tenant text, user_id text, provider text, name text, sealed bytea NOT NULL,
    PRIMARY KEY (tenant, user_id, provider, name))`);
  await client.query(`INSERT INTO ${schema}.api_keys VALUES ($1, 'acme') ON CONFLICT DO NOTHING`, [digest(BROKER_API_KEY)]);
  const token = JSON.stringify({
    access_token: 'at-bench', token_type: 'Bearer', refresh_token: 'rt-bench',
    expires_at: Math.floor(Date.now() / 1000) + 86400,
  });
  await client.query(
    `INSERT INTO ${schema}.tokens VALUES ('acme', 'alice', 'idp', 'default', $1)
     ON CONFLICT (tenant, user_id, provider, name) DO UPDATE SET sealed = EXCLUDED.sealed`,
    [seal(dataKey, token)],
  );
  await client.end();
  let listening = 0;
  for (let i = 0; i < WORKERS; i++) {
    const worker = cluster.fork({ BROKER_DATA_KEY: dataKey.toString('base64') });
    worker.on('message', (message) => {
      if (message === 'listening' && ++listening === WORKERS) {
        console.log(`broker listening on http://127.0.0.1:${BROKER_PORT}`);
      }
    });
  }
  cluster.on('exit', (_, code) => {
    console.error(`a broker worker exited (${code})`);
    process.exit(1);
  });
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      for (const worker of Object.values(cluster.workers)) worker.process.kill();
      process.exit(0);
    });
  }
} else {
  const dataKey = Buffer.from(process.env.BROKER_DATA_KEY, 'base64');
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 10 });
  const app = Fastify({ logger: false });
  app.get('/v1/tenants/:tenant/users/:user/connections/:provider/:name/token', async (request, reply) => {
    const authorization = request.headers.authorization ?? '';
    if (!authorization.startsWith('Bearer ')) return reply.code(401).send({ error: 'unauthorized' });
    const { tenant, user, provider, name } = request.params;
    const key = await pool.query(`SELECT tenant FROM ${schema}.api_keys WHERE digest = $1`, [
      digest(authorization.slice(7)),
    ]);
    if (key.rowCount === 0 || key.rows[0].tenant !== tenant) return reply.code(401).send({ error: 'unauthorized' });
    const row = await pool.query(
      `SELECT sealed FROM ${schema}.tokens WHERE tenant = $1 AND user_id = $2 AND provider = $3 AND name = $4`,
      [tenant, user, provider, name],
    );
    if (row.rowCount === 0) return reply.code(404).send({ error: 'not-found' });
    const token = JSON.parse(open(dataKey, row.rows[0].sealed));
    return { access_token: token.access_token, token_type: token.token_type, expires_at: token.expires_at };
  });
  await app.listen({ host: '127.0.0.1', port: Number(BROKER_PORT) });
  process.send('listening');
}
