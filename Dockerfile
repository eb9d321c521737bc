# syntax=docker/dockerfile:1
# Portcullis container image.
#
#   docker build -t portcullis .
#   docker run --rm -p 8000:8000 -p 8443:8443 -p 9443:9443 -p 8100:8100 \
#       -v "$PWD/conf:/etc/portcullis:ro" portcullis
#
# The image carries the example conf/ at /etc/portcullis as a default; mount your own conf directory
# over it. The gateway watches that directory and reloads on change, so a mounted volume (or a
# Kubernetes ConfigMap/Secret) can be updated without restarting the container.

# --- build: the Rust toolchain image ---------------------------------------------------------
FROM rust:1-bookworm AS build
# Pingora needs cmake; the openssl feature builds OpenSSL from source with perl, make and gcc,
# which the toolchain image already has.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and compiled dependencies between builds, so a source
# change recompiles only the workspace's own crates. The binary is copied out of the cached target
# directory because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portcullis \
 && install -D -m 0755 target/release/portcullis /out/portcullis

# --- runtime: slim Debian, non-root ----------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the system trust store for HTTPS upstreams without their own ca_certificates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin portcullis
COPY --from=build /out/portcullis /usr/local/bin/portcullis
# Owned by root and only readable by the gateway: it never writes to its conf directory.
COPY --chown=root:root conf/ /etc/portcullis/
ENV PORTCULLIS_CONF=/etc/portcullis
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# proxy HTTP, proxy HTTPS, stream (TLS passthrough), status (/status, /metrics)
EXPOSE 8000 8443 9443 8100
# SIGTERM drains in-flight requests within server.graceful_shutdown_seconds, then exits.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["portcullis", "healthcheck"]
ENTRYPOINT ["portcullis"]
CMD ["run"]
