// A sandbox worker: runs calls into the component, one at a time, in instances never shared
// between tenants (see `kept` below). The component calls its imports synchronously: storage
// and keyring calls go to the thread that opened the vault, which this worker waits for on a
// shared flag; audit events and results go to it on the same ordered channel without waiting.
// Outgoing HTTP goes through preview2-shim behind the origin allow-list. The thread that
// opened the vault ends this worker when a call runs past its deadline.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';

import * as cli from '@bytecodealliance/preview2-shim/cli';
import * as clocks from '@bytecodealliance/preview2-shim/clocks';
import * as filesystem from '@bytecodealliance/preview2-shim/filesystem';
import * as http from '@bytecodealliance/preview2-shim/http';
import * as io from '@bytecodealliance/preview2-shim/io';
import * as random from '@bytecodealliance/preview2-shim/random';
import * as sockets from '@bytecodealliance/preview2-shim/sockets';

import { allowListedHandler } from './egress.js';
import { POLL_INTERVAL_MS, SqliteConnection, StorageConflict, writesOf } from './storage.js';
import { compact } from './transfer.js';

const { componentUrl, coreModules, hostPort, flag, allowedOrigins, httpTimeoutsMs, memoryBytes, sqlitePath } =
  workerData;
const signal = new Int32Array(flag);

// The tokenvault component imports neither files nor sockets; a component that does (the
// tests' misbehaving one) is linked to the shim's, with no directory and no network granted.
filesystem._clearPreopens();
sockets._denyTcp();
sockets._denyUdp();
sockets._denyDnsLookup();

/** Ask the vault's thread, and wait for its answer: `{ ok }` or `{ err }` (an import's error case). */
function host(op, ...args) {
  Atomics.store(signal, 0, 0);
  hostPort.postMessage({ op, args: compact(args) });
  Atomics.wait(signal, 0, 0);
  const { message } = receiveMessageOnPort(hostPort);
  if (message.fatal !== undefined) throw new Error(message.fatal); // traps the call
  if ('err' in message) throw { payload: message.err }; // jco: the import's result is err
  return message.ok;
}

/** The storage import, answered by the vault's thread. */
function storageOfTheVaultThread() {
  return {
    get: (key) => host('get', key),
    put: (key, value, expected) => host('put', key, value, expected),
    delete: (key, expected) => host('delete', key, expected),
    list: (prefix, cursor, limit) => host('list', prefix, cursor, limit),
    commit: (writes) => host('commit', writes),
    waitForChange: (key, seen, timeoutMs) => host('waitForChange', key, seen, timeoutMs),
  };
}

/** The storage import over this worker's own connection to the SQLite file. */
async function storageInThisWorker() {
  const { default: Database } = await import('better-sqlite3');
  const file = new SqliteConnection(Database, sqlitePath);
  const run = (f) => {
    try {
      return f();
    } catch (e) {
      throw { payload: e instanceof StorageConflict ? { tag: 'conflict' } : { tag: 'unavailable', val: e.message } };
    }
  };
  const pause = new Int32Array(new SharedArrayBuffer(4));
  return {
    get: (key) => run(() => file.get(key)),
    put: (key, value, expected) => run(() => file.commit([{ key, value, expected }])[0]),
    delete: (key, expected) => run(() => void file.commit([{ key, delete: true, expected }])),
    list: (prefix, cursor, limit) => run(() => file.list(prefix, cursor, limit)),
    commit: (writes) => run(() => file.commit(writesOf(writes))),
    // Reads the record every POLL_INTERVAL_MS, sleeping in between.
    waitForChange: (key, seen, timeoutMs) =>
      run(() => {
        const deadline = performance.now() + timeoutMs;
        while (file.get(key)?.version === seen) {
          const left = deadline - performance.now();
          if (left <= 0) return;
          Atomics.wait(pause, 0, 0, Math.min(POLL_INTERVAL_MS, left));
        }
      }),
  };
}

// Keys the vault's thread gave, kept a second: a rotation still reaches every worker within
// the vault's own reload interval plus this, well inside the time a key must stay inactive
// before it may be retired (keys.rs, RETIRE_AFTER: 15 s).
const KEY_MEMORY_MS = 1_000;
const keyMemory = new Map();
function remembered(name, ask) {
  const kept = keyMemory.get(name);
  if (kept && performance.now() - kept.at < KEY_MEMORY_MS) return kept.value;
  const value = ask();
  // A key not found is asked for again: it may be another host's new one.
  if (value !== undefined) keyMemory.set(name, { value, at: performance.now() });
  return value;
}

// The component's std imports these; this host grants no environment and no arguments.
const imports = {
  'wasi:cli/environment': { getEnvironment: () => [], getArguments: () => [], initialCwd: () => undefined },
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
  'wasi:http/outgoing-handler': allowListedHandler(http, allowedOrigins, httpTimeoutsMs),
  'wasi:http/types': http.types,
  'wasi:io/error': io.error,
  'wasi:io/poll': io.poll,
  'wasi:io/streams': io.streams,
  'wasi:filesystem/preopens': filesystem.preopens,
  'wasi:filesystem/types': filesystem.types,
  'wasi:sockets/instance-network': sockets.instanceNetwork,
  'wasi:sockets/ip-name-lookup': sockets.ipNameLookup,
  'wasi:sockets/network': sockets.network,
  'wasi:sockets/tcp': sockets.tcp,
  'wasi:sockets/tcp-create-socket': sockets.tcpCreateSocket,
  'wasi:sockets/udp': sockets.udp,
  'wasi:sockets/udp-create-socket': sockets.udpCreateSocket,
  'wasi:random/insecure-seed': random.insecureSeed,
  'wasi:random/random': random.random,
  'tokenvault:vault/storage': sqlitePath === undefined ? storageOfTheVaultThread() : await storageInThisWorker(),
  'tokenvault:vault/keyring': {
    activeKey: () => remembered('active', () => host('activeKey')),
    keyById: (id) => remembered(`id:${id}`, () => host('keyById', id)),
  },
  // An event is sent without waiting: the vault's thread writes it to the trail and holds
  // the call's result until it is written (the component emits once its work is done).
  'tokenvault:vault/audit': { emit: (event) => hostPort.postMessage({ op: 'emit', args: [compact(event)] }) },
};

// jco's glue reads process.env.JCO_DEBUG on every lift and lower, about a hundred times a
// call; a plain copy of this thread's environment makes those reads cheap (190 ns each
// through the environment's accessor, 26 ns here).
process.env = { ...process.env };

// jco's instantiation tries `WebAssembly.promising` (JS promise integration) for values this
// host never uses; where Node lacks it, each try throws, and those throws made an instance
// cost about 400 ms instead of 1 ms. A stand-in that is never called from Wasm avoids them.
WebAssembly.promising ??= (f) => f;

const { instantiate } = await import(componentUrl);
const compiled = new Map(Object.entries(coreModules));

const mib = (bytes) => (bytes / 2 ** 20).toFixed(1);

/** A fresh instance, and the memories of its core instances (for a trap's report). */
async function fresh() {
  const memories = [];
  const instance = await instantiate(
    (name) => compiled.get(name),
    imports,
    async (module, moduleImports) => {
      const core = await WebAssembly.instantiate(module, moduleImports);
      memories.push(...Object.values(core.exports).filter((e) => e instanceof WebAssembly.Memory));
      return core;
    },
  );
  return { instance, memories };
}

// `tokens.get`, the hot path, reuses an instance per tenant, as the Rust host's sessions do
// (never across tenants; dropped when a call traps); every other call gets a fresh one.
const KEPT_PER_WORKER = 16;
const kept = new Map();

parentPort.on('message', async ({ id, iface, fn, args }) => {
  const tenant = iface === 'tokens' && fn === 'get' ? args[0].tenant : undefined;
  let entry;
  try {
    entry = kept.get(tenant) ?? (await fresh());
    kept.delete(tenant);
    const value = entry.instance[iface][fn](...args);
    hostPort.postMessage({ result: id, ok: compact(value) });
  } catch (e) {
    if (e?.payload !== undefined && !(e instanceof WebAssembly.RuntimeError)) {
      hostPort.postMessage({ result: id, err: e.payload }); // the export's error case
    } else {
      // A trap (memory exhausted, stack, unreachable) or a host failure that trapped the call.
      const used = Math.max(0, ...(entry?.memories ?? []).map((m) => m.buffer.byteLength));
      const memory = `memory in use: ${mib(used)} MiB of its ${mib(memoryBytes)} MiB cap`;
      hostPort.postMessage({ result: id, trap: `${e?.message ?? e} (${memory})` });
      return;
    }
  }
  if (tenant !== undefined) {
    kept.set(tenant, entry);
    if (kept.size > KEPT_PER_WORKER) kept.delete(kept.keys().next().value); // the least recently used
  }
});
parentPort.postMessage({ ready: true });
