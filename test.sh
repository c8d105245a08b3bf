#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what is missing (the wasm target,
# Chromium, the pinned npm packages; the packages' test makes its virtualenv from PyPI itself),
# starts this machine's PostgreSQL and Redis when they are installed but down, then runs
# `cargo test --workspace`, or `cargo test ARGS…`.
#   ./test.sh                            everything
#   ./test.sh -p tokenvault-tests --test serve    one test binary
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\033[1mtest.sh:\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# The component's target (rustup does not fetch it by itself where RUSTUP_AUTO_INSTALL=0).
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    say "installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

# The console's browser test drives Chromium (Debian's package, or TOKENVAULT_TEST_CHROMIUM).
if [ -z "${TOKENVAULT_TEST_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
    if command -v apt-get >/dev/null; then
        say "installing Chromium with apt-get"
        as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
            || { say "could not install Chromium: install it, or set TOKENVAULT_TEST_CHROMIUM=PATH"; exit 1; }
    else
        say "no Chromium: install it, or set TOKENVAULT_TEST_CHROMIUM=PATH"; exit 1
    fi
fi

# npm packages, exactly as each lock file pins them (npm ci refuses a lock out of step). The
# Node.js package's own folder needs only its build tools: its install scripts are not run.
for dir in tests/oauth-server tests/browser host/node; do
    if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        say "npm ci in $dir"
        npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error
    fi
done
# The shared-storage tests use this machine's PostgreSQL and Redis (README, Testing).
export TOKENVAULT_TEST_POSTGRES="${TOKENVAULT_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
export TOKENVAULT_TEST_REDIS="${TOKENVAULT_TEST_REDIS:-redis://127.0.0.1:6379}"
if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -q && [ -d /etc/postgresql ]; then
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
fi

if [ $# -eq 0 ]; then set -- --workspace; fi
exec cargo test "$@"
