// Storage for the component's `tokenvault:vault/storage` import: versioned records with
// compare-and-swap. Versions are never reused for a key, as the interface requires.
//
// The import's errors are thrown: jco turns a thrown `{ payload }` into the result's
// `err` case.

import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import initSqlJs from 'sql.js';

export class StorageConflict extends Error {
  constructor() {
    super('version conflict');
    this.payload = { tag: 'conflict' };
  }
}

function byteOrder(a, b) {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Records in a Map: for tests and short-lived processes. */
export class MemoryStorage {
  #records = new Map();
  #lastVersion = 0n;

  get(key) {
    const entry = this.#records.get(key);
    return entry && { value: entry.value, version: entry.version };
  }

  put(key, value, expected) {
    const current = this.#records.get(key);
    if (expected === undefined ? current !== undefined : current?.version !== expected) {
      throw new StorageConflict();
    }
    this.#lastVersion += 1n;
    this.#records.set(key, { value: Uint8Array.from(value), version: this.#lastVersion });
    return this.#lastVersion;
  }

  delete(key, expected) {
    if (this.#records.get(key)?.version !== expected) throw new StorageConflict();
    this.#records.delete(key);
  }

  /** All of `writes` or none (`{tag: 'put', val: [key, value, expected]}`, `{tag: 'delete', val: [key, expected]}`). */
  commit(writes) {
    for (const { tag, val } of writes) {
      const current = this.#records.get(val[0])?.version;
      if (!expectationHolds(tag, val, current)) throw new StorageConflict();
    }
    return writes.map(({ tag, val }) => {
      if (tag === 'delete') {
        this.#records.delete(val[0]);
        return undefined;
      }
      this.#lastVersion += 1n;
      this.#records.set(val[0], { value: Uint8Array.from(val[1]), version: this.#lastVersion });
      return this.#lastVersion;
    });
  }

  list(prefix, cursor, limit) {
    const keys = [...this.#records.keys()]
      .filter((k) => k.startsWith(prefix) && (cursor === undefined || byteOrder(k, cursor) > 0))
      .sort(byteOrder)
      .slice(0, limit);
    return { keys, cursor: keys.length === limit ? keys.at(-1) : undefined };
  }
}

/** Whether a commit's write finds the version it expects (`undefined`: absent). */
function expectationHolds(tag, val, current) {
  const expected = tag === 'put' ? val[2] : val[1];
  return expected === undefined ? current === undefined : current === expected;
}

const WAIT_POLL_MS = 10;
const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * The storage import's `wait-for-change`. jco calls imports synchronously, so nothing in
 * this thread writes meanwhile: the record is read every 10 ms for other writers, and the
 * thread blocks in between.
 */
export function waitForChange(storage, key, seen, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (storage.get(key)?.version === seen) {
    const left = deadline - Date.now();
    if (left <= 0) return;
    Atomics.wait(pause, 0, 0, Math.min(WAIT_POLL_MS, left));
  }
}

// The Rust host's SQLite format (one file for all three hosts): a file either host wrote,
// the other reads.
const SCHEMA = readFileSync(new URL('../../host/lib/src/storage/sqlite.sql', import.meta.url), 'utf8');

/**
 * A SQLite file in the Rust host's format, through sql.js (SQLite compiled to
 * WebAssembly: no native build). sql.js works on a copy in memory, so every write saves
 * the whole file (atomically, by rename): one process at a time, unlike the Rust host.
 */
export class SqliteStorage {
  static async open(path) {
    const SQL = await initSqlJs();
    let bytes;
    try {
      bytes = readFileSync(path);
    } catch (e) {
      if (e.code !== 'ENOENT') throw e;
    }
    const db = new SQL.Database(bytes);
    db.exec(SCHEMA);
    return new SqliteStorage(db, path);
  }

  constructor(db, path) {
    this.db = db;
    this.path = path;
  }

  #rows(sql, params) {
    const stmt = this.db.prepare(sql);
    try {
      stmt.bind(params);
      const rows = [];
      while (stmt.step()) rows.push(stmt.get(null, { useBigInt: true }));
      return rows;
    } finally {
      stmt.free();
    }
  }

  #save() {
    const tmp = `${this.path}.tmp${process.pid}`;
    writeFileSync(tmp, this.db.export());
    renameSync(tmp, this.path);
  }

  /** Run `write` in a transaction; save the file if it commits. */
  #write(write) {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const result = write();
      this.db.exec('COMMIT');
      this.#save();
      return result;
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    }
  }

  #version(key) {
    return this.#rows('SELECT version FROM tokenvault_records WHERE key = ?', [key])[0]?.[0];
  }

  get(key) {
    const [row] = this.#rows('SELECT value, version FROM tokenvault_records WHERE key = ?', [key]);
    return row && { value: row[0], version: row[1] };
  }

  put(key, value, expected) {
    return this.#write(() => {
      const current = this.#version(key);
      if (expected === undefined ? current !== undefined : current !== expected) throw new StorageConflict();
      const [[version]] = this.#rows(
        'UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last',
        [],
      );
      this.db.run(
        'INSERT INTO tokenvault_records (key, value, version) VALUES (?, ?, ?) ' +
          'ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version',
        [key, Uint8Array.from(value), version],
      );
      return version;
    });
  }

  delete(key, expected) {
    this.#write(() => {
      if (this.#version(key) !== expected) throw new StorageConflict();
      this.db.run('DELETE FROM tokenvault_records WHERE key = ?', [key]);
    });
  }

  /** All of `writes` or none, in one transaction. */
  commit(writes) {
    return this.#write(() => {
      for (const { tag, val } of writes) {
        if (!expectationHolds(tag, val, this.#version(val[0]))) throw new StorageConflict();
      }
      return writes.map(({ tag, val }) => {
        if (tag === 'delete') {
          this.db.run('DELETE FROM tokenvault_records WHERE key = ?', [val[0]]);
          return undefined;
        }
        const [[version]] = this.#rows(
          'UPDATE tokenvault_version_counter SET last = last + 1 WHERE id = 1 RETURNING last',
          [],
        );
        this.db.run(
          'INSERT INTO tokenvault_records (key, value, version) VALUES (?, ?, ?) ' +
            'ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version',
          [val[0], Uint8Array.from(val[1]), version],
        );
        return version;
      });
    });
  }

  list(prefix, cursor, limit) {
    // Byte order, as in the Rust host: SQLite compares TEXT with memcmp by default.
    const rows = this.#rows(
      'SELECT key FROM tokenvault_records WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 ' +
        'AND (?2 IS NULL OR key > ?2) ORDER BY key LIMIT ?3',
      [prefix, cursor ?? null, limit],
    );
    const keys = rows.map((r) => r[0]);
    return { keys, cursor: keys.length === limit ? keys.at(-1) : undefined };
  }
}
