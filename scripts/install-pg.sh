#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (postgres, initdb, pg_ctl) are available
# for walwitness's throwaway test clusters. Idempotent and quiet on success.
#
#   scripts/install-pg.sh [--with-wal2json]
#
# Lookup order matches walwitness::cluster::Cluster::find_bin_dir:
# $WALWITNESS_PG_BIN, `pg_config --bindir`, /usr/lib/postgresql/*/bin.
# If none is found and we are root with apt-get, installs postgresql-15
# (PG_MAJOR=NN overrides). The Debian package creates and starts a default
# cluster on port 5432; we stop it and set it to manual start, since our tests
# never use it.
set -euo pipefail

with_wal2json=0
for arg in "$@"; do
    case "$arg" in
        --with-wal2json) with_wal2json=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-pg.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

PG_MAJOR="${PG_MAJOR:-15}"

has_server_bins() {
    [ -x "$1/postgres" ] && [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ]
}

# An explicit setting that is wrong is an error, not a reason to install.
if [ -n "${WALWITNESS_PG_BIN:-}" ] && ! has_server_bins "$WALWITNESS_PG_BIN"; then
    echo "walwitness: WALWITNESS_PG_BIN=$WALWITNESS_PG_BIN does not contain postgres, initdb and pg_ctl: fix or unset it" >&2
    exit 1
fi

find_bin_dir() {
    if [ -n "${WALWITNESS_PG_BIN:-}" ]; then
        echo "$WALWITNESS_PG_BIN"; return 0
    fi
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir 2>/dev/null || true)"
        if [ -n "$d" ] && has_server_bins "$d"; then echo "$d"; return 0; fi
    fi
    # Highest version first.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -V -r); do
        if has_server_bins "$d"; then echo "$d"; return 0; fi
    done
    return 1
}

# Major version of an installed bin dir, e.g. /usr/lib/postgresql/15/bin -> 15.
major_of() {
    "$1/postgres" --version 2>/dev/null | sed -n 's/.*(PostgreSQL) \([0-9]*\).*/\1/p'
}

wal2json_present() {
    local libdir
    libdir="$("$1/pg_config" --pkglibdir 2>/dev/null || true)"
    [ -n "$libdir" ] && [ -e "$libdir/wal2json.so" ] && return 0
    ls /usr/lib/postgresql/"$2"/lib/wal2json.so >/dev/null 2>&1
}

need_pg=0
packages=()
if bin_dir="$(find_bin_dir)"; then
    major="$(major_of "$bin_dir")"
    major="${major:-$PG_MAJOR}"
else
    need_pg=1
    major="$PG_MAJOR"
    packages+=("postgresql-$major" "postgresql-client-$major" openssl)
fi
if [ "$with_wal2json" = 1 ] && { [ "$need_pg" = 1 ] || ! wal2json_present "$bin_dir" "$major"; }; then
    packages+=("postgresql-$major-wal2json")
fi

[ "${#packages[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if [ "$need_pg" = 1 ]; then
        echo "walwitness: no PostgreSQL server binaries found: install them (Debian/Ubuntu: sudo apt-get install ${packages[*]}) or set WALWITNESS_PG_BIN to a bin dir containing postgres, initdb and pg_ctl" >&2
    else
        echo "walwitness: the wal2json output plugin is not installed: install it (Debian/Ubuntu: sudo apt-get install ${packages[*]})" >&2
    fi
    exit 1
fi

log="$(mktemp -t walwitness-install-pg.XXXXXX)"
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"; } \
       >"$log" 2>&1 </dev/null; then
    cat "$log" >&2
    echo "install-pg.sh: apt-get install ${packages[*]} failed (output above)" >&2
    exit 1
fi

# The Debian package may have created and started a default cluster on 5432:
# stop it and keep it from auto-starting. Our tests create their own clusters.
if [ "$need_pg" = 1 ]; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d "/etc/postgresql/$major/main" ]; then
        pg_ctlcluster "$major" main stop >/dev/null 2>&1 || true
        echo manual > "/etc/postgresql/$major/main/start.conf" 2>/dev/null || true
    fi
    service postgresql stop >/dev/null 2>&1 || true
fi

if ! find_bin_dir >/dev/null; then
    echo "install-pg.sh: installed ${packages[*]} but still no PostgreSQL server binaries under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
