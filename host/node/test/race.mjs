// A Node.js host in a process of its own, for the multi-process single-flight test
// (tests/src/lib.rs, single_flight_across_processes), with the protocol of the Rust host's
// `vault_worker`: opens the vault, reads the connection once, says `ready`, waits for a line
// on stdin, fires GETS concurrent `get`s and prints each outcome on a line (the access
// token, or `error KIND`).
//
//   node race.mjs DATA_DIR STORAGE_URL ALLOWED_ORIGIN TENANT USER PROVIDER GETS

import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { openVault } from 'tokenvault';

const [dataDir, storage, origin, tenant, user, provider, gets] = process.argv.slice(2);
const vault = await openVault({
  storage,
  masterKeyFile: join(dataDir, 'master.key'),
  allowedOrigins: [origin],
});
const key = { tenant, user, provider };
await vault.get(key);

console.log('ready');
const lines = createInterface({ input: process.stdin });
await once(lines, 'line');
lines.close();

const outcomes = await Promise.allSettled(Array.from({ length: Number(gets) }, () => vault.get(key)));
for (const outcome of outcomes) {
  console.log(outcome.status === 'fulfilled' ? outcome.value.accessToken : `error ${outcome.reason.kind}`);
}
await vault.close();
