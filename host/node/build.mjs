// Builds what the package ships in dist/: the tokenvault component transpiled by jco, and the
// Rust host's storage formats (SQLite and PostgreSQL schemas, the Redis commit script),
// copied from its source so that every host writes the same layout.
//
//   node build.mjs [COMPONENT.wasm] [--out DIR]
// The component: the argument, else $TOKENVAULT_COMPONENT, else the workspace's guest build
// (`cargo build -p tokenvault` makes it). With --out, only the component is transpiled, into
// DIR (for `openVault({ componentDir })`).

import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { transpile } from '@bytecodealliance/jco';

const here = dirname(fileURLToPath(import.meta.url));
const workspace = join(here, '..', '..');
const args = process.argv.slice(2);
const outAt = args.indexOf('--out');
const outDir = outAt >= 0 ? args.splice(outAt, 2)[1] : undefined;
const component =
  args[0] ??
  process.env.TOKENVAULT_COMPONENT ??
  join(workspace, 'target/guest-component/tokenvault-guest/wasm32-wasip2/guest/tokenvault_guest.wasm');
if (!existsSync(component)) {
  console.error(`build.mjs: no component at ${component}: build it (cargo build -p tokenvault) or name it`);
  process.exit(1);
}

const dist = join(here, 'dist');
const out = outDir ?? join(dist, 'component');
rmSync(outDir ?? dist, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const { files } = await transpile(readFileSync(component), {
  name: 'tokenvault',
  instantiation: 'async',
  noTypescript: true,
});
const coreModules = [];
for (const [name, contents] of Object.entries(files)) {
  if (name.endsWith('.d.ts')) continue; // the package's own types describe its API
  mkdirSync(dirname(join(out, name)), { recursive: true });
  writeFileSync(join(out, name), contents);
  if (name.endsWith('.wasm')) coreModules.push(name);
}
writeFileSync(join(out, 'core-modules.json'), JSON.stringify(coreModules));
if (outDir) process.exit(0);

const storage = join(workspace, 'host/lib/src/storage');
copyFileSync(join(storage, 'sqlite.sql'), join(dist, 'sqlite.sql'));
copyFileSync(join(storage, 'postgres.sql'), join(dist, 'postgres.sql'));
copyFileSync(join(storage, 'redis/commit.lua'), join(dist, 'redis-commit.lua'));
console.log(`build.mjs: dist/ holds ${readdirSync(out).length} component files and the storage formats`);
