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

# Real Django 4.2 processes drive the issue-12 workload test (tests/integration/django.rs): pip
# installs Django and psycopg2-binary into a cache folder (not the system's Python). In CI the test
# fails if they are missing.
django_dir="${WALWITNESS_DJANGO_PATH:-${XDG_CACHE_HOME:-$HOME/.cache}/walwitness/django-4.2}"
if ! PYTHONPATH="$django_dir" python3 -c 'import django, psycopg2; assert django.VERSION[:2] == (4, 2)' >/dev/null 2>&1; then
    if ! command -v python3 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip; } >/dev/null </dev/null || true
    fi
    mkdir -p "$django_dir"
    python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$django_dir" 'django==4.2.*' psycopg2-binary </dev/null \
        || echo "walwitness: could not install Django 4.2 with pip; the Django workload test will fail in CI and skip elsewhere" >&2
fi

if [ "$#" -eq 0 ]; then
    exec cargo test --all-targets -- --test-threads=2
else
    exec cargo test "$@"
fi
