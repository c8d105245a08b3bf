// The vault's storage: versioned records with compare-and-swap, on the same layouts as the
// Rust host's backends (the SQL and Lua come from its source, copied into `dist/` when the
// package is built), so processes of every host can share one store.
//
// Every backend has the same async interface: get, put, delete, list, commit (all of a
// list of writes or none), waitForChange, describe, close. Versions are BigInts; a write
// whose expected version does not hold throws `StorageConflict`, a failing backend
// `StorageUnavailable`.

import { EventEmitter } from 'node:events';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = (name) => fileURLToPath(new URL(`../dist/${name}`, import.meta.url));

/** How often a caller waiting for a record's change reads it (as the Rust host polls). */
export const POLL_INTERVAL_MS = 20;
/** Keys under this prefix (the audit trail) are never cached by the Rust hosts. */
export const UNCACHED_PREFIX = 'audit';

export class StorageConflict extends Error {
  constructor() {
    super('version conflict');
  }
}

export class StorageUnavailable extends Error {}

/** Open the store a storage URL names: `memory:`, `sqlite://PATH`, `postgres://…`, `redis://…`. */
export async function openStorage(url) {
  if (typeof url !== 'string') throw new TypeError('storage must be a storage URL');
  if (url === 'memory:' || url === 'memory://') return new MemoryStorage();
  if (url.startsWith('sqlite://')) return SqliteStorage.open(url.slice('sqlite://'.length));
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) return PostgresStorage.connect(url);
  if (url.startsWith('redis://') || url.startsWith('rediss://')) return RedisStorage.connect(url);
  throw new TypeError('storage: the URL must start with memory:, sqlite://, postgres:// or redis:// (rediss:// for TLS)');
}

/** Whether every write holds its expectation against `current(key)` (a version or undefined). */
function expectationsHold(writes, current) {
  return writes.every((w) => (w.expected === undefined ? current(w.key) === undefined : current(w.key) === w.expected));
}

function byteOrder(a, b) {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** A page of keys, and the cursor for the next when the page is full. */
function page(keys, limit) {
  return { keys, cursor: keys.length === limit && limit > 0 ? keys.at(-1) : undefined };
}

/** What all backends share: waking waiters on this process's own writes, polling for others'. */
class Base {
  #changed = new EventEmitter().setMaxListeners(0);

  /** Wake this process's waiters on `keys` (after a write, whatever its outcome). */
  wrote(keys) {
    for (const key of keys) this.#changed.emit(key);
  }

  /** Resolve once `key`'s version is no longer `seen`, or after `timeoutMs`. */
  async waitForChange(key, seen, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const entry = await this.get(key);
      if ((entry?.version ?? undefined) !== (seen ?? undefined)) return;
      await new Promise((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.#changed.off(key, wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(POLL_INTERVAL_MS, Math.max(0, deadline - Date.now())));
        this.#changed.on(key, wake);
      });
    }
  }

  async put(key, value, expected) {
    const [version] = await this.commit([{ key, value, expected }]);
    return version;
  }

  async delete(key, expected) {
    await this.commit([{ key, delete: true, expected }]);
  }

  async close() {}
}

/** Records in a Map: for tests and short-lived processes. */
export class MemoryStorage extends Base {
  #records = new Map();
  #last = 0n;

  async get(key) {
    const entry = this.#records.get(key);
    return entry && { value: entry.value, version: entry.version };
  }

  async commit(writes) {
    if (!expectationsHold(writes, (key) => this.#records.get(key)?.version)) throw new StorageConflict();
    const versions = writes.map((w) => {
      if (w.delete) {
        this.#records.delete(w.key);
        return undefined;
      }
      this.#last += 1n;
      this.#records.set(w.key, { value: Uint8Array.from(w.value), version: this.#last });
      return this.#last;
    });
    this.wrote(writes.map((w) => w.key));
    return versions;
  }

  async list(prefix, cursor, limit) {
    const keys = [...this.#records.keys()]
      .filter((k) => k.startsWith(prefix) && (cursor === undefined || byteOrder(k, cursor) > 0))
      .sort(byteOrder)
      .slice(0, limit);
    return page(keys, limit);
  }

  describe() {
    return 'memory';
  }
}

/**
 * A connection to one SQLite file, shared with other connections and processes (of any
 * host) as the Rust host shares it: WAL, writes in `BEGIN IMMEDIATE` transactions, versions
 * from one counter row. Synchronous: the vault's thread wraps it in `SqliteStorage`, and each
 * worker opens one of its own, so a worker reads and writes the file without a round trip to
 * the vault's thread.
 */
export class SqliteConnection {
  /** Open `path` (its schema already made) with `Database` (better-sqlite3's class). */
  constructor(Database, path) {
    const db = new Database(path, { timeout: 10_000 });
    db.pragma('synchronous = NORMAL');
    this.db = db;
    const statement = (sql) => db.prepare(sql).safeIntegers(true);
    this.statements = {
      get: statement('SELECT value, version FROM tokenvault_records WHERE key = ?'),
      next: statement('UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last'),
      insert: statement('INSERT INTO tokenvault_records (key, value, version) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING'),
      update: statement('UPDATE tokenvault_records SET value = ?, version = ? WHERE key = ? AND version = ?'),
      delete: statement('DELETE FROM tokenvault_records WHERE key = ? AND version = ?'),
      list: statement(
        `SELECT key FROM tokenvault_records
         WHERE key >= ? AND substr(key, 1, length(?)) = ? AND (? IS NULL OR key > ?) ORDER BY key LIMIT ?`,
      ),
    };
    // BEGIN IMMEDIATE: the file's write lock first, so two processes never deadlock upgrading.
    this.writeAll = db.transaction((writes) =>
      writes.map((w) => {
        const s = this.statements;
        let version;
        let changed;
        if (w.delete) {
          changed = s.delete.run(w.key, w.expected).changes;
        } else {
          version = s.next.get().last;
          changed = (
            w.expected === undefined
              ? s.insert.run(w.key, Buffer.from(w.value), version)
              : s.update.run(Buffer.from(w.value), version, w.key, w.expected)
          ).changes;
        }
        if (changed !== 1) throw new StorageConflict();
        return version;
      }),
    ).immediate;
  }

  #run(f) {
    try {
      return f();
    } catch (e) {
      if (e instanceof StorageConflict) throw e;
      throw new StorageUnavailable(`sqlite: ${e.message}`);
    }
  }

  get(key) {
    const row = this.#run(() => this.statements.get.get(key));
    return row && { value: new Uint8Array(row.value), version: row.version };
  }

  commit(writes) {
    return this.#run(() => this.writeAll(writes));
  }

  list(prefix, cursor, limit) {
    const rows = this.#run(() =>
      this.statements.list.all(prefix, prefix, prefix, cursor ?? null, cursor ?? null, BigInt(limit)),
    );
    return page(
      rows.map((r) => r.key),
      limit,
    );
  }

  close() {
    this.db.close();
  }
}

/** The SQLite file, for the vault's thread. */
export class SqliteStorage extends Base {
  static async open(path) {
    if (!path) throw new StorageUnavailable('sqlite: the URL names no file (sqlite://PATH)');
    const { default: Database } = await import('better-sqlite3');
    let setup;
    try {
      mkdirSync(dirname(path), { recursive: true });
      // Made private before SQLite opens it: SQLite gives the log and its index its mode.
      closeSync(openSync(path, 'a', 0o600));
      setup = new Database(path, { timeout: 10_000 });
      setup.pragma('journal_mode = WAL');
      setup.exec(readFileSync(dist('sqlite.sql'), 'utf8'));
      setup.close();
      return new SqliteStorage(new SqliteConnection(Database, path), path);
    } catch (e) {
      if (setup?.open) setup.close();
      throw new StorageUnavailable(`sqlite: ${path}: ${e.message}`);
    }
  }

  constructor(connection, path) {
    super();
    this.connection = connection;
    this.path = path;
  }

  async get(key) {
    return this.connection.get(key);
  }

  async commit(writes) {
    try {
      return this.connection.commit(writes);
    } finally {
      this.wrote(writes.map((w) => w.key));
    }
  }

  async list(prefix, cursor, limit) {
    return this.connection.list(prefix, cursor, limit);
  }

  describe() {
    return `sqlite (${this.path})`;
  }

  async close() {
    this.connection.close();
  }
}

/** The component's `commit` writes (`{ tag: 'put' | 'delete', val }`) as the backends take them. */
export function writesOf(witWrites) {
  return witWrites.map(({ tag, val }) =>
    tag === 'put' ? { key: val[0], value: val[1], expected: val[2] } : { key: val[0], delete: true, expected: val[1] },
  );
}

/** Take `name=value` out of a URL's query: the URL without it, and the value. */
function splitParam(url, name) {
  const [base, query = ''] = url.split('?', 2);
  const kept = [];
  let value;
  for (const pair of query.split('&').filter(Boolean)) {
    const [k, v = ''] = pair.split('=', 2);
    if (k === name) value = decodeURIComponent(v);
    else kept.push(pair);
  }
  return [kept.length ? `${base}?${kept.join('&')}` : base, value];
}

/** The longest schema name: its notification channel must fit PostgreSQL's 63-byte names. */
const MAX_SCHEMA = 48;
/** The SQLSTATE postgres.sql's tokenvault_commit raises when a write's condition fails. */
const CONFLICT_SQLSTATE = 'TV409';

/** PostgreSQL, on the Rust host's table, sequence and change trigger. */
export class PostgresStorage extends Base {
  static async connect(url) {
    const { default: pg } = await import('pg');
    let [rest, schema = 'public'] = splitParam(url, 'schema');
    [rest] = splitParam(rest, 'cache'); // this host keeps no record cache
    let sslmode;
    let rootcert;
    [rest, sslmode] = splitParam(rest, 'sslmode');
    [rest, rootcert] = splitParam(rest, 'sslrootcert');
    if (!/^[a-z0-9_]+$/.test(schema) || schema.length > MAX_SCHEMA) {
      throw new StorageUnavailable(`postgres: schema must be 1 to ${MAX_SCHEMA} lowercase letters, digits and _`);
    }
    let ssl = false;
    if (sslmode === 'require' || sslmode === 'verify-full') {
      ssl = { rejectUnauthorized: true };
      if (rootcert) {
        try {
          ssl.ca = readFileSync(rootcert, 'utf8');
        } catch (e) {
          throw new StorageUnavailable(`postgres: CA file ${rootcert}: ${e.code ?? e.message}`);
        }
      }
    } else if (sslmode !== undefined && sslmode !== 'disable') {
      throw new StorageUnavailable(
        `postgres: sslmode=${sslmode} is not supported: use require (TLS, the server's certificate and name verified) or disable`,
      );
    }
    const pool = new pg.Pool({ connectionString: rest, ssl, max: 8, connectionTimeoutMillis: 5_000 });
    pool.on('error', () => {}); // an idle client lost; the next query opens another
    const storage = new PostgresStorage(pool, schema, url);
    try {
      await pool.query(
        readFileSync(dist('postgres.sql'), 'utf8')
          .replaceAll('{schema}', schema)
          .replaceAll('{channel}', `tokenvault_${schema}`)
          .replaceAll('{uncached}', UNCACHED_PREFIX),
      );
    } catch (e) {
      await pool.end().catch(() => {});
      throw new StorageUnavailable(`postgres: ${e.code ?? e.message}`);
    }
    return storage;
  }

  constructor(pool, schema, url) {
    super();
    this.pool = pool;
    this.schema = schema;
    this.host = new URL(url.replace(/^postgres(ql)?:/, 'http:')).host;
    const table = `"${schema}".tokenvault_records`;
    this.sql = {
      get: `SELECT value, version FROM ${table} WHERE key = $1`,
      list: `SELECT key FROM ${table} WHERE key >= $1 AND starts_with(key, $1) AND ($2::text IS NULL OR key > $2) ORDER BY key LIMIT $3`,
      commit: `SELECT "${schema}".tokenvault_commit($1::text[], $2::bytea[], $3::bigint[]) AS versions`,
    };
  }

  async #query(client, text, values) {
    try {
      return await client.query({ text, values });
    } catch (e) {
      if (e.code === CONFLICT_SQLSTATE) throw new StorageConflict(); // tokenvault_commit's refusal
      throw new StorageUnavailable(`postgres: ${e.code ?? e.message}`);
    }
  }

  async get(key) {
    const { rows } = await this.#query(this.pool, this.sql.get, [key]);
    return rows[0] && { value: new Uint8Array(rows[0].value), version: BigInt(rows[0].version) };
  }

  async commit(writes) {
    // One statement: postgres.sql's tokenvault_commit, which raises TV409 on a conflict.
    const arrays = [
      writes.map((w) => w.key),
      writes.map((w) => (w.delete ? null : Buffer.from(w.value))),
      writes.map((w) => (w.expected === undefined ? null : String(w.expected))),
    ];
    try {
      const { rows } = await this.#query(this.pool, this.sql.commit, arrays);
      return rows[0].versions.map((v) => (v === null ? undefined : BigInt(v)));
    } finally {
      this.wrote(writes.map((w) => w.key));
    }
  }

  async list(prefix, cursor, limit) {
    const { rows } = await this.#query(this.pool, this.sql.list, [prefix, cursor ?? null, limit]);
    return page(
      rows.map((r) => r.key),
      limit,
    );
  }

  describe() {
    return `postgres (host ${this.host}, schema ${this.schema})`;
  }

  async close() {
    await this.pool.end();
  }
}

/** Redis, on the Rust host's layout and Lua scripts. */
export class RedisStorage extends Base {
  static async connect(url) {
    const { Redis } = await import('ioredis');
    let [rest, namespace = 'tokenvault'] = splitParam(url, 'namespace');
    let rootcert;
    [rest] = splitParam(rest, 'cache'); // this host keeps no record cache
    [rest, rootcert] = splitParam(rest, 'sslrootcert');
    if (!namespace || /\s/.test(namespace)) throw new StorageUnavailable('redis: namespace must be a non-empty word');
    if (rootcert && !rest.startsWith('rediss://')) throw new StorageUnavailable('redis: sslrootcert needs a rediss:// URL');
    const options = { lazyConnect: true, maxRetriesPerRequest: 2, connectTimeout: 1_000, commandTimeout: 5_000 };
    if (rootcert) {
      try {
        options.tls = { ca: readFileSync(rootcert, 'utf8') };
      } catch (e) {
        throw new StorageUnavailable(`redis: CA file ${rootcert}: ${e.code ?? e.message}`);
      }
    }
    const client = new Redis(rest, options);
    client.on('error', () => {}); // reported by the command that fails
    client.defineCommand('tokenvaultCommit', { lua: readFileSync(dist('redis-commit.lua'), 'utf8') });
    try {
      await client.connect();
    } catch (e) {
      client.disconnect();
      throw new StorageUnavailable(`redis: ${e.code ?? e.message}`);
    }
    return new RedisStorage(client, namespace);
  }

  constructor(client, namespace) {
    super();
    this.client = client;
    this.namespace = namespace;
  }

  #record(key) {
    return `${this.namespace}:r:${key}`;
  }

  async #run(f) {
    try {
      return await f(this.client);
    } catch (e) {
      throw new StorageUnavailable(`redis: ${e.code ?? e.name}`);
    }
  }

  async get(key) {
    const [value, version] = await this.#run((c) => c.hmgetBuffer(this.#record(key), 'd', 'v'));
    return value && version ? { value: new Uint8Array(value), version: BigInt(version.toString()) } : undefined;
  }

  async commit(writes) {
    const keys = [`${this.namespace}:version`, `${this.namespace}:index`, ...writes.map((w) => this.#record(w.key))];
    const args = writes.flatMap((w) => [
      w.delete ? 'd' : 'p',
      w.expected === undefined ? '' : String(w.expected),
      w.delete ? '' : Buffer.from(w.value),
      w.key,
    ]);
    try {
      const versions = await this.#run((c) => c.tokenvaultCommit(keys.length, ...keys, ...args));
      if (versions === null) throw new StorageConflict();
      return writes.map((w, i) => (w.delete ? undefined : BigInt(versions[i])));
    } finally {
      this.wrote(writes.map((w) => w.key));
    }
  }

  async list(prefix, cursor, limit) {
    const min = cursor === undefined ? `[${prefix}` : `(${cursor}`;
    const max = Buffer.concat([Buffer.from(`(${prefix}`), Buffer.from([0xff])]);
    const keys = await this.#run((c) => c.zrangebylex(`${this.namespace}:index`, min, max, 'LIMIT', 0, limit));
    return page(
      keys.filter((k) => k.startsWith(prefix)),
      limit,
    );
  }

  describe() {
    return `redis (namespace ${this.namespace})`;
  }

  async close() {
    this.client.disconnect();
  }
}
