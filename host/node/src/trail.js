// The audit trail, appended as the Rust host appends it: one hash chain in the vault's
// storage, shared by every host on the store, which `tokenvault audit verify` checks.
//
// Each entry is `HASH\nJSON`, JSON holding its position, the previous entry's hash and the
// event; HASH is the hex SHA-256 of the JSON bytes. An append's entries are one row, joined
// by `\n`, at `audit/{2^64-1 - last}` (20 digits, so listing reads newest first), and the
// row is listed under each of its tenants as an empty record. The head record
// (`audit-head`) names the last entry; an append is one commit that moves the head with
// compare-and-swap and creates the row. Events that arrive while an append is in flight go
// together in the next one.

import { createHash } from 'node:crypto';

import { StorageConflict } from './storage.js';

const HEAD_KEY = 'audit-head';
const GENESIS = '0'.repeat(64);
const MAX_SEQ = 2n ** 64n - 1n;
const BATCH = 256;
const ATTEMPTS = 100;

export class AuditUnavailable extends Error {}

const entryKey = (seq) => `audit/${(MAX_SEQ - seq).toString().padStart(20, '0')}`;
const escapeKeyPart = (id) => id.replaceAll('%', '%25').replaceAll('/', '%2F');
const tenantKey = (tenant, seq) => `audit-tenant/${escapeKeyPart(tenant)}/${(MAX_SEQ - seq).toString().padStart(20, '0')}`;

/** The component's event, as the trail keeps it: identifiers and an outcome, and who asked. */
export function auditRecord(event, actor) {
  const record = { at_ms: Number(event.at), action: event.action, outcome: event.outcome };
  for (const field of ['tenant', 'user', 'provider', 'name']) {
    if (event[field] !== undefined) record[field] = event[field];
  }
  if (actor) record.actor = actor;
  return record;
}

export class Trail {
  #pending = [];
  #appending = false;
  /** The head as this host last wrote it, and its version. */
  #head;

  constructor(storage) {
    this.storage = storage;
  }

  /** Append `record`; resolves once it is in storage, rejects with `AuditUnavailable`. */
  record(record) {
    return new Promise((resolve, reject) => {
      this.#pending.push({ record, resolve, reject });
      this.#drain();
    });
  }

  async #drain() {
    if (this.#appending) return;
    this.#appending = true;
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending.splice(0, BATCH);
        try {
          await this.#append(batch.map((p) => p.record));
          batch.forEach((p) => p.resolve());
        } catch (e) {
          const error = e instanceof AuditUnavailable ? e : new AuditUnavailable(`the audit trail: ${e.message}`);
          batch.forEach((p) => p.reject(error));
        }
      }
    } finally {
      this.#appending = false;
    }
  }

  async #loadHead() {
    const entry = await this.storage.get(HEAD_KEY);
    if (!entry) return { head: { last: 0, hash: GENESIS, first: 1, first_prev: GENESIS }, version: undefined };
    try {
      return { head: JSON.parse(Buffer.from(entry.value).toString('utf8')), version: entry.version };
    } catch {
      throw new AuditUnavailable("the audit trail: its head record cannot be read");
    }
  }

  async #append(records) {
    for (let attempt = 0; attempt < ATTEMPTS; attempt += 1) {
      const { head, version } = this.#head ?? (await this.#loadHead());
      this.#head = undefined;
      const next = { ...head };
      const entries = [];
      const tenants = new Set();
      for (const record of records) {
        next.last += 1;
        const json = JSON.stringify({ seq: next.last, prev: next.hash, ...record });
        const hash = createHash('sha256').update(json).digest('hex');
        entries.push(`${hash}\n${json}`);
        if (record.tenant !== undefined) tenants.add(record.tenant);
        next.hash = hash;
      }
      const last = BigInt(next.last);
      const writes = [
        { key: HEAD_KEY, value: Buffer.from(JSON.stringify(next)), expected: version },
        { key: entryKey(last), value: Buffer.from(entries.join('\n')), expected: undefined },
        ...[...tenants].map((tenant) => ({ key: tenantKey(tenant, last), value: Buffer.alloc(0) })),
      ];
      try {
        const [headVersion] = await this.storage.commit(writes);
        this.#head = { head: next, version: headVersion };
        return;
      } catch (e) {
        if (!(e instanceof StorageConflict)) throw new AuditUnavailable(`the audit trail: ${e.message}`);
        // another host appended: take its head
      }
    }
    throw new AuditUnavailable("the audit trail: its head kept moving under other hosts' appends");
  }
}
