// The keyring, as the Rust host keeps it: data keys in the vault's storage (the record
// `keyring`), each wrapped by the master key only hosts hold. A host reads the keyring again
// when its copy is older than two seconds, or when a record names a key it lacks, so another
// host's rotation reaches it within seconds. No message here quotes key material.

import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

import { gcmsiv } from '@noble/ciphers/aes.js';

import { StorageConflict } from './storage.js';

export const KEYRING_KEY = 'keyring';
export const MASTER_KEY_ENV = 'TOKENVAULT_MASTER_KEY';
export const MASTER_KEY_FILE = 'master.key';
const FORMAT = 1;
const RELOAD_AFTER_MS = 2_000;
const MISS_RELOAD_GAP_MS = 100;

export class ConfigError extends Error {}
export class IntegrityError extends Error {}

export class MasterKey {
  /** Base64 of 32 bytes; `what` names where the text came from (never the text). */
  static fromBase64(text, what) {
    const material = Buffer.from(String(text).trim(), 'base64');
    if (material.length !== 32 || material.toString('base64') !== String(text).trim()) {
      throw new ConfigError(`${what} is not a master key (base64 of 32 bytes)`);
    }
    return new MasterKey(material);
  }

  static readFile(path) {
    let text;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read the master key file ${path}: ${e.code ?? e.message}`);
    }
    return MasterKey.fromBase64(text, `the master key file ${path}`);
  }

  constructor(material) {
    this.material = material;
    const digest = createHash('sha256').update('tokenvault master key id\0').update(material).digest('hex');
    this.id = `m-${digest.slice(0, 16)}`;
  }

  wrap(id, dataKey) {
    const nonce = randomBytes(12);
    const sealed = gcmsiv(this.material, nonce, wrapContext(id)).encrypt(dataKey);
    return Buffer.concat([nonce, sealed]).toString('base64');
  }

  unwrap(id, wrapped) {
    const bytes = Buffer.from(wrapped, 'base64');
    try {
      const key = gcmsiv(this.material, bytes.subarray(0, 12), wrapContext(id)).decrypt(bytes.subarray(12));
      return key.length === 32 ? key : undefined;
    } catch {
      return undefined;
    }
  }
}

/** A wrapped key is bound to its id and the record's format. */
function wrapContext(id) {
  return Buffer.concat([Buffer.from('tokenvault keyring'), Buffer.from([FORMAT]), Buffer.from(id)]);
}

/**
 * Where the master key comes from: `masterKey` (base64), else `TOKENVAULT_MASTER_KEY`, else
 * `masterKeyFile`, else `DATA_DIR/master.key`, which is made on first use over an embedded
 * store (SQLite or memory) only: hosts sharing a store must all be given one key.
 */
export function masterKeySource({ masterKey, masterKeyFile, dataDir, embedded }) {
  if (masterKey) return { load: () => MasterKey.fromBase64(masterKey, 'masterKey') };
  if (process.env[MASTER_KEY_ENV]) {
    return { load: () => MasterKey.fromBase64(process.env[MASTER_KEY_ENV], MASTER_KEY_ENV) };
  }
  if (masterKeyFile) return { load: () => MasterKey.readFile(masterKeyFile) };
  if (!dataDir) {
    throw new ConfigError(`no master key: give masterKey, masterKeyFile or dataDir, or set ${MASTER_KEY_ENV}`);
  }
  const path = `${dataDir}/${MASTER_KEY_FILE}`;
  return {
    load: () => {
      if (!existsSync(path)) {
        throw new ConfigError(
          `the vault's keyring is wrapped by a master key, but ${path} is missing and neither ${MASTER_KEY_ENV} ` +
            'nor masterKeyFile is set: restore that file, or give the key',
        );
      }
      return MasterKey.readFile(path);
    },
    create: () => {
      if (!embedded) {
        throw new ConfigError(
          `a shared store needs the same master key on every host: set ${MASTER_KEY_ENV} (base64 of 32 bytes) ` +
            'or masterKeyFile (`tokenvault master-key new FILE` makes one)',
        );
      }
      if (existsSync(path)) return MasterKey.readFile(path);
      const key = new MasterKey(randomBytes(32));
      mkdirSync(dirname(path), { recursive: true });
      try {
        writeFileSync(path, `${key.material.toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
        return key;
      } catch (e) {
        if (e.code === 'EEXIST') return MasterKey.readFile(path); // another process made it first
        throw new ConfigError(`cannot write the master key file ${path}: ${e.code ?? e.message}`);
      }
    },
  };
}

/** The keyring record opened: its version, the active key's id and the live keys by id. */
function openRecord(value, version, master) {
  let record;
  try {
    record = JSON.parse(Buffer.from(value).toString('utf8'));
  } catch {
    record = undefined;
  }
  if (record?.format !== FORMAT) throw new IntegrityError('the keyring record in storage is not one this host can read');
  if (record.master_key !== master.id) {
    throw new ConfigError(
      `the master key ${master.id} does not open this vault's keyring: its keys are wrapped by ${record.master_key}`,
    );
  }
  const keys = new Map();
  for (const entry of record.keys) {
    if (!entry.wrapped) continue; // retired
    const key = master.unwrap(entry.id, entry.wrapped);
    if (!key) {
      throw new IntegrityError(
        `data key ${JSON.stringify(entry.id)} in the keyring does not unwrap under master key ${master.id}: the keyring was altered`,
      );
    }
    keys.set(entry.id, key);
  }
  if (!keys.has(record.active)) {
    throw new IntegrityError(`the keyring's active key ${JSON.stringify(record.active)} is not in it`);
  }
  return { version, active: record.active, keys };
}

/** The keyring of one vault, as this host sees it. */
export class Keys {
  /**
   * Open the keyring in `storage`, making it (with one new key) on a store that has none
   * and holds no records at all: a store with records but no keyring lost it, and a new
   * key could not open them.
   */
  static async open(storage, source) {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const entry = await storage.get(KEYRING_KEY);
      if (entry) {
        const master = source.load();
        return new Keys(storage, master, openRecord(entry.value, entry.version, master));
      }
      const { keys } = await storage.list('', undefined, 1);
      if (keys.length > 0) {
        throw new ConfigError(
          "the vault's keyring is missing, but the storage holds records; a new key could not open the sealed " +
            'ones, so none is made. Restore the keyring record',
        );
      }
      const master = source.create ? source.create() : source.load();
      const id = `k-${randomBytes(4).toString('hex')}`;
      const dataKey = randomBytes(32);
      const record = {
        format: FORMAT,
        master_key: master.id,
        active: id,
        keys: [{ id, created_at_ms: Date.now(), wrapped: master.wrap(id, dataKey) }],
      };
      try {
        const version = await storage.put(KEYRING_KEY, Buffer.from(JSON.stringify(record)), undefined);
        return new Keys(storage, master, { version, active: id, keys: new Map([[id, dataKey]]) });
      } catch (e) {
        if (!(e instanceof StorageConflict)) throw e; // another host made it first: open theirs
      }
    }
    throw new ConfigError('the keyring record kept changing while it was being made');
  }

  constructor(storage, master, keyring) {
    this.storage = storage;
    this.master = master;
    this.keyring = keyring;
    this.checked = Date.now();
    this.lastMissReload = 0;
  }

  async #reload() {
    const entry = await this.storage.get(KEYRING_KEY);
    if (!entry) throw new IntegrityError('the keyring record is gone from storage');
    if (entry.version !== this.keyring.version) this.keyring = openRecord(entry.value, entry.version, this.master);
    this.checked = Date.now();
    return this.keyring;
  }

  async #current() {
    return Date.now() - this.checked < RELOAD_AFTER_MS ? this.keyring : this.#reload();
  }

  /** The key new records are sealed with: `{ id, material }`. */
  async active() {
    const keyring = await this.#current();
    return { id: keyring.active, material: keyring.keys.get(keyring.active) };
  }

  /** A key by id (reading the keyring again when this copy lacks it), or undefined. */
  async byId(id) {
    let keyring = await this.#current();
    if (!keyring.keys.has(id) && Date.now() - this.lastMissReload >= MISS_RELOAD_GAP_MS) {
      this.lastMissReload = Date.now();
      keyring = await this.#reload();
    }
    return keyring.keys.get(id);
  }
}
