#!/usr/bin/env bash
# The project's single test command (also what CI runs):
#
#   bash scripts/test.sh              # cargo test --all-targets -- --test-threads=2
#   bash scripts/test.sh <cargo args> # cargo test <cargo args>
#
# Installs PostgreSQL server binaries first if none are found (see install-pg.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-pg.sh

if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; } \
            >/dev/null </dev/null
    else
        echo "walwitness: the openssl command is needed for the TLS tests: install it (Debian/Ubuntu: sudo apt-get install openssl)" >&2
        exit 1
    fi
fi

# Headless Chromium renders the `report --html` page in the integration tests.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null </dev/null \
        || echo "walwitness: could not install chromium; the HTML report test will say it skipped" >&2
fi

if [ "$#" -eq 0 ]; then
    exec cargo test --all-targets -- --test-threads=2
else
    exec cargo test "$@"
fi
