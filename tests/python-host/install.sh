#!/bin/sh
# Creates .venv here with the Python host's packages, pinned with hashes by
# requirements.txt. Used by .ci/run and, on first use, by the test harness.
set -eu
cd "$(dirname "$0")"
rm -rf .venv
python3 -m venv .venv
.venv/bin/pip install -q --require-hashes -r requirements.txt
touch .venv/installed
