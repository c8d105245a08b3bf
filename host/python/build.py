"""Builds the wheel: the tokenvault component, the egress component and the Rust host's
storage formats (SQLite and PostgreSQL schemas, the Redis commit script) copied into
``src/tokenvault/data/``, then ``pip wheel``.

    python build.py [--component FILE] [--egress FILE] [--out DIR] [--data-only]

The components: the options, else $TOKENVAULT_COMPONENT and $TOKENVAULT_EGRESS_COMPONENT,
else built here with cargo (the workspace's wasm32-wasip2 `guest` profile). The wheel goes to
DIR (default ``dist/``). With --data-only, no wheel: the package then runs from ``src/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent
DATA = HERE / "src" / "tokenvault" / "data"
STORAGE = WORKSPACE / "host" / "lib" / "src" / "storage"


def built_component(package: str) -> Path:
    """Build a component crate of the workspace as its build scripts do, and name its file."""
    target = WORKSPACE / "target" / "guest-component" / package
    command = ["cargo", "build", "--package", package, "--target", "wasm32-wasip2", "--profile", "guest"]
    subprocess.run([*command, "--target-dir", str(target)], cwd=WORKSPACE, check=True)
    return target / "wasm32-wasip2" / "guest" / f"{package.replace('-', '_')}.wasm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--component", default=os.environ.get("TOKENVAULT_COMPONENT"), help="the tokenvault component")
    parser.add_argument("--egress", default=os.environ.get("TOKENVAULT_EGRESS_COMPONENT"), help="the egress component")
    parser.add_argument("--out", default=str(HERE / "dist"), help="where the wheel goes")
    parser.add_argument("--data-only", action="store_true", help="fill src/tokenvault/data/ only")
    args = parser.parse_args()

    component = Path(args.component) if args.component else built_component("tokenvault-guest")
    egress = Path(args.egress) if args.egress else built_component("tokenvault-egress")
    for path in (component, egress):
        if not path.is_file():
            sys.exit(f"build.py: no component at {path}")
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    shutil.copyfile(component, DATA / "tokenvault.wasm")
    shutil.copyfile(egress, DATA / "egress.wasm")
    shutil.copyfile(STORAGE / "sqlite.sql", DATA / "sqlite.sql")
    shutil.copyfile(STORAGE / "postgres.sql", DATA / "postgres.sql")
    shutil.copyfile(STORAGE / "redis" / "commit.lua", DATA / "redis-commit.lua")
    if args.data_only:
        return
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", args.out, str(HERE)]
    subprocess.run(command, check=True)
    print(f"build.py: the wheel is in {args.out}")


if __name__ == "__main__":
    main()
