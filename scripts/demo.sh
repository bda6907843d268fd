#!/usr/bin/env bash
# The README's first command: installs PostgreSQL server binaries if none are found (see install-pg.sh),
# then runs `walwitness demo` (a throwaway server, a Django-style cache table, a capture, a culprit).
# The demo's capture uses --attribution trigger,activity (exact); `walwitness capture` defaults to
# --attribution activity (sampled and inferred). The demo says so when it starts and at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-pg.sh
exec cargo run --release --quiet -- demo "$@"
