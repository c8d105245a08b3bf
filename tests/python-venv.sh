#!/bin/sh
# Creates DIR/.venv with the packages DIR/requirements.txt pins (with hashes). Used by
# test.sh and, on first use, by the test harness (python-host) and the benchmarks.
#   tests/python-venv.sh DIR
set -eu
cd "$1"
rm -rf .venv
python3 -m venv .venv
.venv/bin/pip install -q --require-hashes -r requirements.txt
touch .venv/installed
