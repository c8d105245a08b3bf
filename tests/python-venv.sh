#!/bin/sh
# Creates DIR/.venv with the packages DIR/requirements.txt pins (with hashes). Used by
# the benchmarks on first use.
#   tests/python-venv.sh DIR
set -eu
cd "$1"
rm -rf .venv
python3 -m venv .venv
.venv/bin/pip install -q --require-hashes -r requirements.txt
touch .venv/installed
