// Embeds the tokenvault component in Node.js: jco transpiles it to JavaScript, and this
// module supplies its imports. The standard WASI ones come from
// @bytecodealliance/preview2-shim, with outgoing HTTP wrapped by an allow-list; the
// custom ones (storage, keyring, audit) are plain JavaScript objects.
//
//   const vault = await openVault({ component: 'tokenvault.wasm', storage,
//     keyring: Keyring.open(storage, 'tokenvault-data/master.key'), allowedOrigins: ['https://github.com'] });
//   const token = vault.tokens.get({ tenant, user, provider, name: 'default' });

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { transpile } from '@bytecodealliance/jco';
import { gcmsiv } from '@noble/ciphers/aes.js';
import * as cli from '@bytecodealliance/preview2-shim/cli';
import * as clocks from '@bytecodealliance/preview2-shim/clocks';
import * as http from '@bytecodealliance/preview2-shim/http';
import * as io from '@bytecodealliance/preview2-shim/io';
import * as random from '@bytecodealliance/preview2-shim/random';
import { waitForChange } from './storage.mjs';

/** The record under which the Rust host keeps the keyring in storage. */
export const KEYRING_KEY = 'keyring';

/** The data keys records are sealed with, by id, and the active one. */
export class Keyring {
  /**
   * The Rust host's keyring as it keeps it in storage: `{ format: 1, master_key, active,
   * keys: [{ id, wrapped }] }`, each live data key wrapped (AES-256-GCM-SIV: a 12-byte
   * nonce, then ciphertext, bound to "tokenvault keyring", the format byte and the key's
   * id) by the master key in `masterKeyPath` (base64 of 32 bytes).
   */
  static open(storage, masterKeyPath) {
    const master = Buffer.from(readFileSync(masterKeyPath, 'utf8').trim(), 'base64');
    if (master.length !== 32) throw new Error(`keyring: ${masterKeyPath} is not a master key`);
    const entry = storage.get(KEYRING_KEY);
    if (!entry) throw new Error('keyring: the storage holds no keyring');
    const record = JSON.parse(Buffer.from(entry.value).toString('utf8'));
    if (record.format !== 1) throw new Error(`keyring: unknown format ${record.format}`);
    const keys = {};
    for (const { id, wrapped } of record.keys) {
      if (!wrapped) continue; // retired
      const bytes = Buffer.from(wrapped, 'base64');
      const aad = Buffer.concat([Buffer.from('tokenvault keyring'), Buffer.from([record.format]), Buffer.from(id)]);
      const key = gcmsiv(master, bytes.subarray(0, 12), aad).decrypt(bytes.subarray(12));
      keys[id] = Buffer.from(key).toString('base64');
    }
    const keyring = new Keyring(record.active, keys);
    keyring.record = entry.value;
    return keyring;
  }

  /** A new keyring with one random key, written to `path` (mode 0600) when given. */
  static create(path) {
    const id = `k-${randomBytes(4).toString('hex')}`;
    const keyring = new Keyring(id, { [id]: randomBytes(32).toString('base64') });
    if (path) writeFileSync(path, JSON.stringify({ active: id, keys: keyring.keys }, null, 2), { mode: 0o600 });
    return keyring;
  }

  constructor(active, keys) {
    for (const [id, b64] of Object.entries(keys)) {
      if (Buffer.from(b64, 'base64').length !== 32) throw new Error(`keyring: key ${id} is not 32 bytes`);
    }
    if (!(active in keys)) throw new Error(`keyring: the active key ${active} is not in it`);
    this.active = active;
    this.keys = keys;
  }

  #material(id) {
    return new Uint8Array(Buffer.from(this.keys[id], 'base64'));
  }

  /** The `tokenvault:vault/keyring` import. */
  get import() {
    return {
      activeKey: () => ({ id: this.active, material: this.#material(this.active) }),
      keyById: (id) => (id in this.keys ? this.#material(id) : undefined),
    };
  }
}

/** `scheme://host[:port]` with the port spelled out, as the Rust host compares origins. */
export function origin(url) {
  const u = new URL(url);
  const port = u.port || (u.protocol === 'https:' ? '443' : u.protocol === 'http:' ? '80' : '');
  return `${u.protocol}//${u.hostname}:${port}`;
}

/**
 * `wasi:http/outgoing-handler` that lets a request leave only for an allowed origin;
 * any other is refused with `HTTP-request-denied` before a connection opens.
 */
export function allowListedHandler(allowedOrigins, denied = []) {
  const allowed = new Set(allowedOrigins.map(origin));
  return {
    handle(request, options) {
      const scheme = request.scheme();
      const schemeName = scheme?.tag === 'other' ? scheme.val : scheme?.tag?.toLowerCase();
      const target = `${schemeName}://${request.authority()}`;
      let requested;
      try {
        requested = origin(target);
      } catch {
        requested = target;
      }
      if (!allowed.has(requested)) {
        denied.push(requested);
        throw { payload: { tag: 'HTTP-request-denied' } };
      }
      return http.outgoingHandler.handle(request, options);
    },
  };
}

const transpiled = new Map();

/** Transpile the component once per process (jco's output depends only on its bytes). */
async function transpiledModule(componentPath) {
  const bytes = readFileSync(componentPath);
  const digest = createHash('sha256').update(bytes).digest('hex').slice(0, 16);
  if (!transpiled.has(digest)) {
    const outDir = join(tmpdir(), `tokenvault-jco-${digest}-${process.pid}`);
    const { files } = await transpile(bytes, { name: 'tokenvault', instantiation: 'async', noTypescript: true });
    for (const [name, contents] of Object.entries(files)) {
      mkdirSync(dirname(join(outDir, name)), { recursive: true });
      writeFileSync(join(outDir, name), contents);
    }
    const module = await import(pathToFileURL(join(outDir, 'tokenvault.js')).href);
    transpiled.set(digest, { module, outDir });
  }
  return transpiled.get(digest);
}

/**
 * Instantiate the component with these capabilities. Returns its exports
 * (`tokens`, `providers`, `connect`) plus `audit` (the events it emitted) and
 * `deniedRequests` (origins the allow-list refused).
 */
export async function openVault({ component, storage, keyring, allowedOrigins = [] }) {
  const { module, outDir } = await transpiledModule(component);
  const audit = [];
  const deniedRequests = [];
  // The component's std imports these; this host grants no environment and no arguments.
  const nothing = {
    environment: { getEnvironment: () => [], getArguments: () => [], initialCwd: () => undefined },
  };
  const imports = {
    'wasi:cli/environment': nothing.environment,
    'wasi:cli/exit': cli.exit,
    'wasi:cli/stdin': cli.stdin,
    'wasi:cli/stdout': cli.stdout,
    'wasi:cli/stderr': cli.stderr,
    'wasi:cli/terminal-input': cli.terminalInput,
    'wasi:cli/terminal-output': cli.terminalOutput,
    'wasi:cli/terminal-stdin': cli.terminalStdin,
    'wasi:cli/terminal-stdout': cli.terminalStdout,
    'wasi:cli/terminal-stderr': cli.terminalStderr,
    'wasi:clocks/monotonic-clock': clocks.monotonicClock,
    'wasi:clocks/wall-clock': clocks.wallClock,
    'wasi:http/outgoing-handler': allowListedHandler(allowedOrigins, deniedRequests),
    'wasi:http/types': http.types,
    'wasi:io/error': io.error,
    'wasi:io/poll': io.poll,
    'wasi:io/streams': io.streams,
    'wasi:random/insecure-seed': random.insecureSeed,
    'wasi:random/random': random.random,
    // jco calls imports as plain functions, so the storage's methods are bound here.
    'tokenvault:vault/storage': {
      get: (key) => storage.get(key),
      put: (key, value, expected) => storage.put(key, value, expected),
      delete: (key, expected) => storage.delete(key, expected),
      list: (prefix, cursor, limit) => storage.list(prefix, cursor, limit),
      commit: (writes) => storage.commit(writes),
      waitForChange: (key, seen, timeoutMs) => waitForChange(storage, key, seen, timeoutMs),
    },
    'tokenvault:vault/keyring': keyring.import,
    'tokenvault:vault/audit': { emit: (event) => audit.push(event) },
  };
  const instance = await module.instantiate(
    (path) => WebAssembly.compile(readFileSync(join(outDir, path))),
    imports,
  );
  const { tokens, providers, connect, webhooks } = instance;
  return { tokens, providers, connect, webhooks, audit, deniedRequests };
}
