// tokenvault for Node.js: the tokenvault component (transpiled by jco, inside this package)
// run in worker threads, with this thread supplying its storage, keyring and audit trail
// on the same formats as the Rust host, so hosts of every kind can share one store.

import { availableParallelism, userInfo } from 'node:os';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { MessageChannel, Worker } from 'node:worker_threads';

import { parseOrigins } from './egress.js';
import { ConfigError, IntegrityError, Keys, masterKeySource } from './keys.js';
import { capMemory } from './memory-cap.js';
import { SqliteStorage, StorageConflict, openStorage, writesOf } from './storage.js';
import { Trail, auditRecord } from './trail.js';
import { compact } from './transfer.js';

const COMPONENT_DIR = new URL('../dist/component/', import.meta.url);

/** A failed call. `kind` is one the tokenvault CLI names: `not-found`, `invalid-input`,
 * `reconnect-required`, `provider-error`, `storage`, `integrity`, `egress-denied`,
 * `sandbox` (the call hit the memory cap or its deadline, or trapped) or `config`. */
export class TokenvaultError extends Error {
  constructor(kind, message, detail) {
    super(`${kind}: ${message}`);
    this.name = 'TokenvaultError';
    this.kind = kind;
    /** For `provider-error`: `{ status, code, message, timedOut }` as the provider failed. */
    if (detail !== undefined) this.detail = detail;
  }
}

/** The component's error variant as a `TokenvaultError`. */
function vaultError({ tag, val }) {
  return typeof val === 'object' && val !== null
    ? new TokenvaultError(tag, val.message, plain(val))
    : new TokenvaultError(tag, String(val));
}

/** A value from the component with its u64s as numbers (seconds and versions fit). */
function plain(value) {
  if (typeof value === 'bigint') return Number(value);
  if (value instanceof Uint8Array || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(plain);
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
}

const defaults = {
  allowedOrigins: [],
  memoryLimitMib: 64,
  callDeadlineMs: 30_000,
  connectTimeoutMs: 5_000,
  responseTimeoutMs: 15_000,
};

/**
 * Open a vault. `storage`: `sqlite://PATH` (default `DATA_DIR/vault.db`), `postgres://…`,
 * `redis://…` or `memory:`. The master key: `masterKey`, `TOKENVAULT_MASTER_KEY`,
 * `masterKeyFile`, or `DATA_DIR/master.key` (made on first use over SQLite or memory).
 */
export async function openVault(options = {}) {
  const o = { ...defaults, ...options };
  const allowedOrigins = parseOrigins(o.allowedOrigins);
  for (const name of ['memoryLimitMib', 'callDeadlineMs', 'connectTimeoutMs', 'responseTimeoutMs']) {
    if (!Number.isFinite(o[name]) || o[name] <= 0) throw new TypeError(`${name} must be a positive number`);
  }
  if (o.workers !== undefined && !(Number.isInteger(o.workers) && o.workers > 0)) {
    throw new TypeError('workers must be a positive integer');
  }
  if (!o.storage && !o.dataDir) throw new TypeError('give storage (a storage URL) or dataDir');
  const url = o.storage ?? `sqlite://${o.dataDir}/vault.db`;
  const storage = await openStorage(url).catch(rethrow);
  try {
    const embedded = url.startsWith('sqlite:') || url.startsWith('memory:');
    const keys = await Keys.open(storage, masterKeySource({ ...o, embedded }));
    const sandbox = await Sandbox.start({
      storage,
      keys,
      trail: new Trail(storage),
      actor: o.actor ?? `node:${userInfo().username}`,
      allowedOrigins,
      memoryBytes: o.memoryLimitMib * 2 ** 20,
      deadlineMs: o.callDeadlineMs,
      httpTimeoutsMs: { connect: o.connectTimeoutMs, response: o.responseTimeoutMs },
      workers: o.workers ?? Math.min(4, availableParallelism()),
      componentDir: o.componentDir ? pathToFileURL(`${o.componentDir}/`) : COMPONENT_DIR,
    });
    return new Vault(sandbox, storage);
  } catch (e) {
    await storage.close().catch(() => {});
    rethrow(e);
  }
}

function rethrow(e) {
  if (e instanceof TokenvaultError || e instanceof TypeError || e instanceof RangeError) throw e;
  if (e instanceof ConfigError) throw new TokenvaultError('config', e.message);
  if (e instanceof IntegrityError) throw new TokenvaultError('integrity', e.message);
  throw new TokenvaultError('storage', e.message);
}

/** Workers that run calls, and this thread's answers to their imports. */
class Sandbox {
  static async start(settings) {
    const dir = settings.componentDir;
    const names = JSON.parse(readFileSync(new URL('core-modules.json', dir), 'utf8'));
    const coreModules = {};
    for (const name of names) {
      const bytes = readFileSync(new URL(name, dir));
      coreModules[name] = await WebAssembly.compile(capMemory(bytes, settings.memoryBytes)).catch((e) => {
        throw e instanceof RangeError ? e : new TokenvaultError('config', `the component: ${e.message}`);
      });
    }
    const sandbox = new Sandbox(settings, { componentUrl: new URL('tokenvault.js', dir).href, coreModules });
    await Promise.all(sandbox.idle.map((w) => w.ready));
    return sandbox;
  }

  constructor(settings, component) {
    this.settings = settings;
    this.component = component;
    this.queue = [];
    this.running = new Set();
    /** Calls started, which numbers each. */
    this.calls = 0;
    this.closed = false;
    this.idle = Array.from({ length: settings.workers }, () => this.#spawn());
  }

  #spawn() {
    const { port1, port2 } = new MessageChannel();
    const flag = new SharedArrayBuffer(4);
    const signal = new Int32Array(flag);
    const worker = new Worker(new URL('./worker.js', import.meta.url), {
      workerData: {
        ...this.component,
        hostPort: port2,
        flag,
        allowedOrigins: this.settings.allowedOrigins,
        httpTimeoutsMs: this.settings.httpTimeoutsMs,
        memoryBytes: this.settings.memoryBytes,
        // A worker opens the SQLite file itself rather than ask this thread for each record.
        sqlitePath: this.settings.storage instanceof SqliteStorage ? this.settings.storage.path : undefined,
      },
      transferList: [port2],
      // What the component writes to stdout and stderr is dropped, as the Rust host drops it.
      stdout: true,
      stderr: true,
    });
    worker.stdout.resume();
    worker.stderr.resume();
    // `audits`: the current call's audit entries being written; `onResult`: its end.
    const entry = { worker, port: port1, audits: [], onResult: undefined };
    entry.ready = new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', (e) => reject(new TokenvaultError('sandbox', `a worker failed to start: ${e.message}`)));
    });
    // One ordered channel carries the worker's import calls, its audit events and its
    // results, so a call's events are always seen before its result.
    port1.on('message', async (message) => {
      if (message.op === 'emit') {
        const written = this.settings.trail.record(auditRecord(message.args[0], this.settings.actor));
        written.catch(() => {}); // its failure is the call's, reported when the call ends
        entry.audits.push(written);
        return;
      }
      if (message.result !== undefined) {
        entry.onResult?.(message);
        return;
      }
      const reply = await this.#answer(message.op, message.args);
      port1.postMessage(compact(reply));
      Atomics.store(signal, 0, 1);
      Atomics.notify(signal, 0);
    });
    port1.unref();
    return entry;
  }

  /** One import call of the component: `{ ok }`, `{ err }` (its error case) or `{ fatal }`. */
  async #answer(op, args) {
    const { storage, keys } = this.settings;
    try {
      switch (op) {
        case 'get':
          return { ok: await storage.get(args[0]) };
        case 'put':
          return { ok: await storage.put(args[0], args[1], args[2]) };
        case 'delete':
          return { ok: await storage.delete(args[0], args[1]) };
        case 'list':
          return { ok: await storage.list(args[0], args[1], args[2]) };
        case 'commit':
          return { ok: await storage.commit(writesOf(args[0])) };
        case 'waitForChange':
          return { ok: await storage.waitForChange(args[0], args[1], args[2]) };
        case 'activeKey':
          return { ok: await keys.active() };
        case 'keyById':
          return { ok: await keys.byId(args[0]) };
        default:
          return { fatal: `unknown host call ${op}` };
      }
    } catch (e) {
      if (op === 'activeKey' || op === 'keyById') return { err: e.message };
      if (e instanceof StorageConflict) return { err: { tag: 'conflict' } };
      return { err: { tag: 'unavailable', val: e.message } };
    }
  }

  /** Run `iface.fn(...args)` in a worker, within the deadline. */
  call(iface, fn, args) {
    if (this.closed) return Promise.reject(new TokenvaultError('config', 'the vault is closed'));
    const call = new Promise((resolve, reject) => {
      this.queue.push({ iface, fn, args, resolve, reject });
      this.#next();
    });
    const settled = call.then(
      () => {},
      () => {},
    );
    this.running.add(settled);
    settled.then(() => this.running.delete(settled));
    return call;
  }

  #next() {
    while (this.queue.length > 0 && this.idle.length > 0) {
      const job = this.queue.shift();
      const entry = this.idle.pop();
      this.#run(entry, job);
    }
  }

  async #run(entry, job) {
    try {
      await entry.ready;
    } catch (e) {
      job.reject(e);
      this.idle.push(this.#spawn());
      this.#next();
      return;
    }
    const { worker } = entry;
    const id = (this.calls += 1);
    let finished = false;
    const finish = (replace) => {
      finished = true;
      clearTimeout(timer);
      entry.onResult = undefined;
      worker.off('error', onError);
      if (replace) {
        worker.terminate();
        entry.port.close();
      }
      this.idle.push(replace ? this.#spawn() : entry); // close() stops it once calls are done
      this.#next();
    };
    entry.onResult = async (message) => {
      if (message.result !== id || finished) return;
      const audits = entry.audits.splice(0);
      finish(false);
      // Nothing is handed out unaudited: the call's events must be in the trail first.
      const unwritten = (await Promise.allSettled(audits)).find((a) => a.status === 'rejected');
      if (unwritten) job.reject(new TokenvaultError('storage', unwritten.reason.message));
      else if ('ok' in message) job.resolve(message.ok);
      else if ('err' in message) job.reject(vaultError(message.err));
      else job.reject(new TokenvaultError('sandbox', `the call was stopped: ${message.trap}`));
    };
    const onError = (e) => {
      if (finished) return;
      entry.audits.length = 0;
      finish(true);
      job.reject(new TokenvaultError('sandbox', `the call failed: ${e.message}`));
    };
    const timer = setTimeout(() => {
      if (finished) return;
      entry.audits.length = 0;
      finish(true);
      job.reject(new TokenvaultError('sandbox', `the call ran past its deadline of ${this.settings.deadlineMs} ms`));
    }, this.settings.deadlineMs);
    worker.on('error', onError);
    worker.postMessage({ id, iface: job.iface, fn: job.fn, args: job.args });
  }

  /** Refuse new calls, let those running finish, then stop the workers. */
  async close() {
    this.closed = true;
    await Promise.all(this.running);
    await Promise.all(this.idle.splice(0).map(({ worker }) => worker.terminate()));
  }
}

/** `{ tenant, user, provider, name }`, `name` "default" when not given. */
function connectionKey(key) {
  if (typeof key !== 'object' || key === null) throw new TypeError('a key is { tenant, user, provider, name }');
  const { tenant, user, provider, name = 'default' } = key;
  for (const [field, value] of Object.entries({ tenant, user, provider, name })) {
    if (typeof value !== 'string') throw new TypeError(`key.${field} must be a string`);
  }
  return { tenant, user, provider, name };
}

/** A provider's token response as it arrives (RFC 6749 §5.1) as the component's token-grant. */
function tokenGrant(grant) {
  if (typeof grant?.access_token !== 'string') throw new TypeError('a grant needs access_token (RFC 6749 §5.1)');
  const optional = (name, kind) => {
    const value = grant[name];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== kind) throw new TypeError(`grant.${name} must be a ${kind}`);
    return value;
  };
  const expiresIn = optional('expires_in', 'number');
  return {
    accessToken: grant.access_token,
    tokenType: optional('token_type', 'string') ?? 'Bearer',
    expiresIn: expiresIn === undefined ? undefined : BigInt(Math.max(0, Math.floor(expiresIn))),
    refreshToken: optional('refresh_token', 'string'),
    scope: optional('scope', 'string'),
  };
}

/** A provider config in the component's field names (camelCase), optional fields filled in. */
function providerConfig(config) {
  if (typeof config?.name !== 'string' || typeof config?.clientId !== 'string') {
    throw new TypeError('a provider config needs name and clientId');
  }
  const known = [
    'name', 'template', 'issuer', 'authorizationUrl', 'tokenUrl', 'revocationUrl', 'deviceAuthorizationUrl',
    'clientId', 'clientSecret', 'clientAuth', 'scopes', 'authorizationParams', 'refreshBufferSecs', 'apiBaseUrl',
  ];
  const unknown = Object.keys(config).filter((k) => !known.includes(k));
  if (unknown.length > 0) throw new TypeError(`unknown provider config fields: ${unknown.join(', ')}`);
  return {
    ...config,
    template: config.template && { name: config.template.name, tenant: config.template.tenant },
    scopes: config.scopes ?? [],
    authorizationParams: Object.entries(config.authorizationParams ?? {}).map(([k, v]) =>
      Array.isArray(v) ? v : [k, v],
    ),
  };
}

/** A vault: methods mirror the Rust host's `Vault`. Close it when done. */
export class Vault {
  #sandbox;
  #storage;

  constructor(sandbox, storage) {
    this.#sandbox = sandbox;
    this.#storage = storage;
    const tenantOf = (options) => options?.tenant;
    /** The provider registry: the vault's, or a tenant's own with `{ tenant }`. */
    this.providers = {
      put: async (config, options) => this.#call('providers', 'put', tenantOf(options), providerConfig(config)),
      get: async (name, options) => this.#call('providers', 'get', tenantOf(options), name),
      list: async (options) => this.#call('providers', 'list', tenantOf(options)),
      remove: async (name, options) => this.#call('providers', 'remove', tenantOf(options), name),
    };
  }

  async #call(iface, fn, ...args) {
    return plain(await this.#sandbox.call(iface, fn, args));
  }

  /** Keep a provider's token response for `key`. */
  async store(key, grant) {
    return this.#call('tokens', 'store', connectionKey(key), tokenGrant(grant));
  }

  /** A token fresh enough to use, refreshed first when about to expire. */
  async get(key) {
    return this.#call('tokens', 'get', connectionKey(key));
  }

  /** Refresh now, whatever the expiry. */
  async refresh(key) {
    return this.#call('tokens', 'refresh', connectionKey(key));
  }

  /** `{ tag: 'token', val }`, or `{ tag: 'link', val: { code, expiresAt } }` to connect the account. */
  async getOrLink(key, scopes) {
    return this.#call('tokens', 'getOrLink', connectionKey(key), scopes);
  }

  /** A user's connections: metadata only. */
  async list(tenant, user) {
    return this.#call('tokens', 'list', tenant, user);
  }

  /** Revoke at the provider (RFC 7009) and delete; the receipt says what the provider did. */
  async remove(key) {
    return this.#call('tokens', 'remove', connectionKey(key));
  }

  async revokeAll(tenant, user) {
    return this.#call('tokens', 'revokeAll', tenant, user);
  }

  /** Start connecting `key`: `{ url, state, expiresAt }`; send the user's browser to `url`. */
  async begin(key, redirectUri, scopes, browser) {
    return this.#call('connect', 'begin', connectionKey(key), redirectUri, scopes, browser);
  }

  /** Finish a flow with the query string the provider sent to the redirect URI. */
  async complete(callbackQuery, browser) {
    return this.#call('connect', 'complete', String(callbackQuery).replace(/^\?/, ''), browser);
  }

  /** What the vault's storage is, for logs (never a credential). */
  describe() {
    return this.#storage.describe();
  }

  async close() {
    await this.#sandbox.close();
    await this.#storage.close();
  }
}
