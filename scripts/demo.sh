#!/usr/bin/env bash
# The README's first command: installs PostgreSQL server binaries if none are found (see install-pg.sh),
# then runs `walwitness demo` (a throwaway server, a Django-style cache table, a capture, a culprit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-pg.sh
exec cargo run --release --quiet -- demo "$@"
