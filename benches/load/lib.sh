# Shared by benches/load/run.sh (the measured run) and benches/load/profile.sh (callgrind and
# perf profiles): settings, PKI, ports, the upstream, the proxies' equivalent configurations
# (Portcullis, nginx, HAProxy, Caddy, pingap) and the measurement of one run. Sourced, not executed.
# shellcheck shell=bash
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
WORK=${BENCH_WORK:-$ROOT/target/bench-load}
DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-1}
REPEATS=${BENCH_REPEATS:-3}
SCENARIOS=${BENCH_SCENARIOS:-"s1 s2 s3 s4 s4pq s5bulk s5conn s6 s1accesslog s1keyauth s1jwt s1traffic s1log s7 mem"}
CCPU=${BENCH_CLIENT_CPU:-0}
SCPU=${BENCH_SERVER_CPU:-1}
MAX_LOAD=${BENCH_MAX_LOAD-0.7}
LOAD_WAIT_MIN=${BENCH_LOAD_WAIT_MIN:-40}
# Idle keep-alive connections held open for the memory figure (HTTP and TLS).
MEM_CONNS=${BENCH_MEM_CONNS:-10000}
# Where a missing pingap is installed (cargo install --root); its bin/ is searched too.
BENCH_TOOLS=${BENCH_TOOLS:-$ROOT/target/bench-tools}
# Unset: the working tree's release build, brought up to date below (a no-op when it is).
BUILD_PORTCULLIS=${PORTCULLIS_BIN:+no}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
PCLOAD=$ROOT/benches/load/client/target/release/pcload
read -r -a SYSTEMS <<<"${BENCH_SYSTEMS:-direct portcullis nginx haproxy caddy pingap}"
# Every proxy the harness knows, in the order they are started and reported.
PROXIES=(portcullis nginx haproxy caddy pingap)
HZ=$(getconf CLK_TCK)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in nginx haproxy openssl taskset python3; do
    command -v "$tool" >/dev/null || die "$tool not found (bash scripts/setup.sh installs it)"
done
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$NGINX_STREAM_MODULE" ] || die "nginx stream module missing (apt-get install libnginx-mod-stream)"

ulimit -n "$(ulimit -Hn)"
# The proxies' connection limits, above MEM_CONNS but within the open-files limit (a hard limit
# that even root cannot raise on some machines: 20,000 on the benchmark VM), leaving room for
# the upstream side and the process' own files.
NOFILE=$(ulimit -n)
MAXCONN=$((NOFILE - 1000 < 30000 ? NOFILE - 1000 : 30000))
[ "$MAXCONN" -gt "$MEM_CONNS" ] || die "open-files limit $NOFILE too low for BENCH_MEM_CONNS=$MEM_CONNS"

has() { # word list...
    local w=$1
    shift
    [[ " $* " == *" $w "* ]]
}
# Systems that cannot run at all on this machine, with the reason (recorded in the results).
declare -A SYSTEM_SKIP=()
skip_system() { # system reason
    SYSTEM_SKIP[$1]=$2
    log "$1: skipped: $2"
}
# --- processes we start, and only those, are stopped on exit ---------------------------------
PIDS=()
stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ----------------------------------------------------------------------------------
if [ ! -x "$PCLOAD" ]; then
    log "building the load client (benches/load/client)"
    cargo build --release --quiet --manifest-path benches/load/client/Cargo.toml
fi
if has portcullis "${SYSTEMS[@]}"; then
    if [ "${BUILD_PORTCULLIS:-yes}" = yes ]; then
        # Never benchmark a stale binary: cargo rebuilds only what changed.
        log "cargo build --release --bin portcullis"
        cargo build --release --quiet --bin portcullis
    fi
    [ -x "$PORTCULLIS_BIN" ] || die "no Portcullis binary at $PORTCULLIS_BIN"
fi
mkdir -p "$WORK"

# Caddy: Debian's package (2.6 here), run as it is.
if has caddy "${SYSTEMS[@]}" && ! command -v caddy >/dev/null; then
    skip_system caddy "caddy not installed (apt-get install caddy)"
fi

# pingap (a Pingora-based gateway) is not packaged: built from crates.io with cargo. pingap 0.16.1
# needs rustc >= 1.96 (newer than the stable toolchain here, hence nightly) and protoc
# (Debian's protobuf-compiler) for its build; the build takes 30+ minutes on 2 cores, once.
PINGAP_VERSION=0.16.1
find_pingap() {
    PINGAP_BIN=$(command -v pingap || true)
    if [ -z "$PINGAP_BIN" ] && [ -x "$BENCH_TOOLS/bin/pingap" ]; then PINGAP_BIN=$BENCH_TOOLS/bin/pingap; fi
    [ -n "$PINGAP_BIN" ]
}
rustc_is_new_enough() { # rustc --version output; pingap 0.16.1 has rust-version 1.96
    python3 -c 'import re,sys; m=re.search(r"rustc (\d+)\.(\d+)", sys.argv[1]); sys.exit(0 if m and (int(m[1]), int(m[2])) >= (1, 96) else 1)' "$1"
}
install_pingap() {
    local toolchain=""
    if rustc_is_new_enough "$(rustc --version 2>/dev/null)"; then
        toolchain=""
    elif rustc_is_new_enough "$(rustc +nightly --version 2>/dev/null)"; then
        toolchain=+nightly
    else
        skip_system pingap "not installed, and no rustc >= 1.96 to build it (rustup toolchain install nightly)"
        return
    fi
    if ! command -v protoc >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing protobuf-compiler (apt), needed to build pingap"
        apt-get install -y -q protobuf-compiler >"$WORK/apt-protobuf.log" 2>&1 || true
    fi
    if ! command -v protoc >/dev/null; then
        skip_system pingap "not installed, and protoc is missing to build it (apt-get install protobuf-compiler)"
        return
    fi
    log "installing pingap $PINGAP_VERSION into $BENCH_TOOLS: cargo $toolchain install (30+ minutes; log $WORK/pingap-install.log)"
    # shellcheck disable=SC2086 # the toolchain is one word or none
    if ! CARGO_INCREMENTAL=0 cargo $toolchain install pingap --version "$PINGAP_VERSION" --locked \
        --root "$BENCH_TOOLS" -j 1 >"$WORK/pingap-install.log" 2>&1; then
        skip_system pingap "cargo install pingap $PINGAP_VERSION failed (see $WORK/pingap-install.log)"
    fi
}
if has pingap "${SYSTEMS[@]}" && ! find_pingap; then
    if [ "${BENCH_INSTALL_PINGAP:-yes}" = yes ]; then
        install_pingap
        [ -n "${SYSTEM_SKIP[pingap]:-}" ] || find_pingap || skip_system pingap "no pingap binary after the install"
    else
        skip_system pingap "not installed (BENCH_INSTALL_PINGAP=no; cargo +nightly install pingap --version $PINGAP_VERSION --locked --root $BENCH_TOOLS)"
    fi
fi

# The systems of $SYSTEMS that can run here.
read -r -a SYSTEMS <<<"$(for sys in "${SYSTEMS[@]}"; do [ -z "${SYSTEM_SKIP[$sys]:-}" ] && echo -n "$sys "; done)"

RUN=${RUN:-$WORK/run}
rm -rf "$RUN"
mkdir -p "$RUN" "$WORK/pki"
RESULTS=${RESULTS:-$WORK/results.jsonl}

# --- PKI: ECDSA P-256 everywhere -------------------------------------------------------------
PKI=$WORK/pki
ext() { printf '%s\n' "$@" >"$PKI/ext.cnf"; }
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$1.key" 2>/dev/null; }
selfsigned_ca() { # name CN
    key "$1"
    openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 30 -out "$PKI/$1.crt" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
issue() { # name CN issuer extensions...
    local name=$1 cn=$2 issuer=$3
    shift 3
    key "$name"
    openssl req -new -key "$PKI/$name.key" -subj "/CN=$cn" -out "$PKI/$name.csr"
    ext "$@"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$issuer.crt" -CAkey "$PKI/$issuer.key" \
        -CAcreateserial -days 30 -sha256 -extfile "$PKI/ext.cnf" -out "$PKI/$name.crt" 2>/dev/null
}
if [ ! -f "$PKI/done" ] || [ -n "$(find "$PKI/done" -mtime +20)" ]; then
    log "generating the PKI (ECDSA P-256)"
    selfsigned_ca root "Bench Root CA"
    issue inter "Bench Intermediate CA" root basicConstraints=critical,CA:TRUE,pathlen:0 \
        keyUsage=critical,keyCertSign,cRLSign
    issue upstream upstream.bench.test inter basicConstraints=CA:FALSE extendedKeyUsage=serverAuth \
        subjectAltName=DNS:upstream.bench.test,DNS:bulk.bench.test
    issue proxy proxy.bench.test inter basicConstraints=CA:FALSE extendedKeyUsage=serverAuth \
        subjectAltName=DNS:proxy.bench.test
    selfsigned_ca clientca "Bench Client CA"
    issue alice alice clientca basicConstraints=CA:FALSE extendedKeyUsage=clientAuth
    cat "$PKI/upstream.crt" "$PKI/inter.crt" >"$PKI/upstream.chain.crt"
    cat "$PKI/proxy.crt" "$PKI/inter.crt" >"$PKI/proxy.chain.crt"
    cat "$PKI/proxy.chain.crt" "$PKI/proxy.key" >"$PKI/proxy.haproxy.pem"
    touch "$PKI/done"
fi
[ -f "$WORK/big.bin" ] || head -c $((32 * 1024 * 1024)) /dev/urandom >"$WORK/big.bin"

# --- ports -----------------------------------------------------------------------------------
read -r UP_HTTP UP_HTTPS UP_STATUS P_PORT N_PORT H_PORT REDIS_PORT C_PORT G_PORT <<<"$("$PCLOAD" ports 9)"
declare -A PORT=([portcullis]=$P_PORT [nginx]=$N_PORT [haproxy]=$H_PORT [caddy]=$C_PORT [pingap]=$G_PORT)

wait_port() { # port pid name
    for _ in $(seq "${WAIT_PORT_TRIES:-200}"); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited while starting (see $RUN/$3.log)"
        sleep 0.05
    done
    die "$3 did not listen on $1 (see $RUN/$3.log)"
}

# --- /proc figures ---------------------------------------------------------------------------
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
ctx_switches() { # voluntary + involuntary, over every thread
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'
}
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
upstream_accepts() {
    # nginx stub_status: "Active connections: N\nserver accepts handled requests\n A H R"
    exec 3<>"/dev/tcp/127.0.0.1/$UP_STATUS"
    printf 'GET /status HTTP/1.0\r\nHost: x\r\n\r\n' >&3
    awk 'f {print $1; exit} /accepts/ {f=1}' <&3
    exec 3<&-
}

# --- the upstream: nginx, one process, `return 200` and a 32 MiB file --------------------------
start_upstream() {
    local d=$RUN/upstream
    mkdir -p "$d/html"
    ln -sf "$WORK/big.bin" "$d/html/big"
    cat >"$d/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $MAXCONN; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $d/tmp; proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp;
    uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$UP_HTTP;
        listen 127.0.0.1:$UP_HTTPS ssl;
        ssl_certificate $PKI/upstream.chain.crt;
        ssl_certificate_key $PKI/upstream.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $d/html;
        location = /big { }
        location / { return 200 "hello, world\n"; }
    }
    server {
        listen 127.0.0.1:$UP_STATUS;
        location = /status { stub_status; }
    }
}
EOF
    mkdir -p "$d/tmp"
    taskset -c "$SCPU" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$RUN/upstream.log" 2>&1 &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    wait_port "$UP_HTTP" "$UPSTREAM_PID" upstream
    wait_port "$UP_HTTPS" "$UPSTREAM_PID" upstream
}

# --- proxy configurations, per scenario ------------------------------------------------------
# Equivalent on purpose: one worker, access logs off, HTTP/1.1 keep-alive both sides (60 s, no
# request limit), pooled upstream connections, the same headers added (X-Forwarded-For replaced,
# X-Real-IP, X-Forwarded-Proto/Host/Port, a generated X-Request-Id up and down, upstream Host),
# TLS 1.2–1.3 with the same ECDSA P-256 certificate, each product's defaults otherwise.
# mode: http (s1), https (s2, s4), mtls (s3), stream (s5*)

# Plugin scenarios (Portcullis only; each is S1's route with plugins, priced against S1): the
# route's plugins per set, and the request headers the load client sends for it.
plugin_set_yaml() { # set
    local keyauth="          - name: key-auth" jwt="          - name: jwt"
    local traffic="          - name: cors
            config: {origins: [\"https://app.bench.test\"]}
          - name: rate-limiting
            config: {second: 1000000000, policy: local}
          - name: request-transformer
            config: {add: {headers: [\"x-bench:1\"]}}"
    local logging="          - name: http-log
            config: {http_endpoint: \"http://127.0.0.1:$UP_HTTP/logs\", queue: {max_batch_size: 200, max_coalescing_delay: 1}}
          - name: opentelemetry
            config: {traces_endpoint: \"http://127.0.0.1:$UP_HTTP/v1/traces\"}"
    local redis="          - name: rate-limiting
            config: {second: 1000000000, policy: redis, redis: {host: 127.0.0.1, port: $REDIS_PORT}}"
    local redis_sync="          - name: rate-limiting
            config: {second: 1000000000, policy: redis, sync_rate: 0.1, redis: {host: 127.0.0.1, port: $REDIS_PORT}}"
    case $1 in
        redis) echo "$redis" ;;
        redissync) echo "$redis_sync" ;;
        keyauth) echo "$keyauth" ;;
        jwt) echo "$jwt" ;;
        traffic) echo "$traffic" ;;
        log) echo "$logging" ;;
        s7) printf '%s\n%s\n' "$keyauth" "$traffic" ;;
    esac
}
write_plugin_headers() {
    local token
    # An HS256 token for the jwt credential below, valid for a day.
    token=$(python3 -c '
import base64, hashlib, hmac, json, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
c = b(json.dumps({"iss": "bench-iss", "exp": int(time.time()) + 86400}).encode())
s = b(hmac.new(b"bench-jwt-secret-0123456789abcdef", f"{h}.{c}".encode(), hashlib.sha256).digest())
print(f"{h}.{c}.{s}")')
    printf 'apikey: bench-api-key-0123456789\n' >"$PKI/h-keyauth.txt"
    printf 'Authorization: Bearer %s\n' "$token" >"$PKI/h-jwt.txt"
    printf 'Origin: https://app.bench.test\n' >"$PKI/h-traffic.txt"
    : >"$PKI/h-log.txt"
    : >"$PKI/h-redis.txt"
    : >"$PKI/h-redissync.txt"
    cat "$PKI/h-keyauth.txt" "$PKI/h-traffic.txt" >"$PKI/h-s7.txt"
}

portcullis_conf() { # mode dir
    local mode=$1 d=$2 listen svc
    mkdir -p "$d"
    case $mode in
        http | http-*) listen="    - address: 127.0.0.1:$P_PORT
      max_connections: $MAXCONN" ;;
        # ALPN h2 is on by default on TLS listeners: h2 is https.
        https | mtls | h2) listen="    - address: 127.0.0.1:$P_PORT
      tls: true
      max_connections: $MAXCONN" ;;
        stream) listen="    []
  stream:
    - address: 127.0.0.1:$P_PORT" ;;
    esac
    svc="services:
  - name: up
    url: http://127.0.0.1:$UP_HTTP
    routes:
      - name: all
        paths: [/]"
    case $mode in
        http-accesslog) ;;
        http-*) svc="consumers:
  - username: alice
    keyauth_credentials: [{key: bench-api-key-0123456789}]
    jwt_secrets: [{key: bench-iss, secret: bench-jwt-secret-0123456789abcdef, algorithm: HS256}]
services:
  - name: up
    url: http://127.0.0.1:$UP_HTTP
    routes:
      - name: all
        paths: [/]
        plugins:
$(plugin_set_yaml "${mode#http-}")" ;;
        mtls) svc="consumers:
  - username: alice
    acls:
      - group: bench
services:
  - name: up
    url: https://127.0.0.1:$UP_HTTPS
    tls_server_name: upstream.bench.test
    tls_verify_depth: 1
    ca_certificates: [upstream-ca]
    routes:
      - name: all
        paths: [/]
        plugins:
          - name: mtls-auth
            config:
              ca_certificates: [client-ca]
          - name: acl
            config:
              allow: [bench]" ;;
        stream) svc="services:
  - name: up
    protocol: tcp
    host: 127.0.0.1
    port: $UP_HTTPS
    routes:
      - name: pass
        protocols: [tls_passthrough]
        snis: [bulk.bench.test]" ;;
    esac
    cat >"$d/gateway.yaml" <<EOF
_format_version: "3.0"
listeners:
  proxy:
$listen
server:
  threads: 1
  pid_file: $d/portcullis.pid
  upgrade_sock: $d/upgrade.sock
tls:
  default_certificate: proxy
certificates:
  - name: proxy
    cert_file: $PKI/proxy.chain.crt
    key_file: $PKI/proxy.key
    snis: [proxy.bench.test]
ca_certificates:
  - name: client-ca
    cert_file: $PKI/clientca.crt
  - name: upstream-ca
    cert_file: $PKI/root.crt
$svc
EOF
}

nginx_conf() { # mode dir
    local mode=$1 d=$2 body h2=""
    [ "$mode" = h2 ] && h2=yes
    mkdir -p "$d/tmp"
    local common_http="
    access_log off;
    client_body_temp_path $d/tmp; proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp;
    uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
    keepalive_timeout 60s;
    keepalive_requests 10000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream up_http { server 127.0.0.1:$UP_HTTP; keepalive 512; keepalive_requests 10000000; }
    upstream up_https { server 127.0.0.1:$UP_HTTPS; keepalive 512; keepalive_requests 10000000; }
    map \$ssl_client_s_dn \$client_cn { ~(^|,)CN=(?<cn>[^,]+) \$cn; default \"\"; }"
    local headers="
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Port \$server_port;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;"
    local tls="
        ssl_certificate $PKI/proxy.chain.crt;
        ssl_certificate_key $PKI/proxy.key;"
    case $mode in
        http) body="http {$common_http
    server {
        listen 127.0.0.1:$N_PORT;
        location / {$headers
            proxy_pass http://up_http;
        }
    }
}" ;;
        # S7's nearest stock-nginx equivalent: the API key checked against a map (key-auth),
        # limit_req at a rate never reached (rate-limiting, without its headers), the allowed
        # Origin echoed with Vary (cors), one header added upstream (request-transformer).
        http-s7) body="http {$common_http
    map \$http_apikey \$bench_key_ok { default 0; \"bench-api-key-0123456789\" 1; }
    map \$http_origin \$bench_cors_origin { default \"\"; \"https://app.bench.test\" \$http_origin; }
    limit_req_zone \$binary_remote_addr zone=bench:1m rate=1000000r/s;
    server {
        listen 127.0.0.1:$N_PORT;
        location / {
            if (\$bench_key_ok = 0) { return 401; }
            limit_req zone=bench burst=1000000 nodelay;$headers
            add_header Access-Control-Allow-Origin \$bench_cors_origin always;
            add_header Vary Origin always;
            proxy_set_header x-bench 1;
            proxy_pass http://up_http;
        }
    }
}" ;;
        https | h2) body="http {$common_http
    server {
        listen 127.0.0.1:$N_PORT ssl${h2:+ http2};$tls
        location / {$headers
            proxy_pass http://up_http;
        }
    }
}" ;;
        mtls) body="http {$common_http
    server {
        listen 127.0.0.1:$N_PORT ssl;$tls
        ssl_client_certificate $PKI/clientca.crt;
        ssl_verify_client on;
        location / {
            if (\$client_cn != \"alice\") { return 403; }$headers
            proxy_set_header X-Consumer-Username \$client_cn;
            proxy_set_header X-Consumer-Groups bench;
            proxy_pass https://up_https;
            proxy_ssl_server_name on;
            proxy_ssl_name upstream.bench.test;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 1;
            proxy_ssl_trusted_certificate $PKI/root.crt;
            proxy_ssl_session_reuse on;
        }
    }
}" ;;
        stream) body="stream {
    map \$ssl_preread_server_name \$backend {
        bulk.bench.test 127.0.0.1:$UP_HTTPS;
        default 127.0.0.1:1;
    }
    server {
        listen 127.0.0.1:$N_PORT;
        ssl_preread on;
        proxy_pass \$backend;
        proxy_connect_timeout 5s;
    }
}" ;;
    esac
    cat >"$d/nginx.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
# One process that serves (no master): CPU and RSS are read from one PID, as for the others.
master_process off;
daemon off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $MAXCONN; }
$body
EOF
}

haproxy_conf() { # mode dir
    local mode=$1 d=$2 front
    mkdir -p "$d"
    local headers="
    option forwardfor
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    unique-id-format %{+X}o%ci%cp%fi%fp%Ts%rt%pid
    unique-id-header X-Request-Id
    http-response set-header X-Request-Id %[unique-id]"
    local alpn=http/1.1
    [ "$mode" = h2 ] && alpn=h2,http/1.1
    local bindtls="ssl crt $PKI/proxy.haproxy.pem alpn $alpn"
    case $mode in
        http) front="frontend fe
    bind 127.0.0.1:$H_PORT$headers
    http-request set-header X-Forwarded-Proto http
    http-request set-header Host 127.0.0.1:$UP_HTTP
    default_backend up_http" ;;
        https | h2) front="frontend fe
    bind 127.0.0.1:$H_PORT $bindtls$headers
    http-request set-header X-Forwarded-Proto https
    http-request set-header Host 127.0.0.1:$UP_HTTP
    default_backend up_http" ;;
        mtls) front="frontend fe
    bind 127.0.0.1:$H_PORT $bindtls ca-file $PKI/clientca.crt verify required$headers
    http-request deny deny_status 403 unless { ssl_c_s_dn(cn) -m str alice }
    http-request set-header X-Consumer-Username %[ssl_c_s_dn(cn)]
    http-request set-header X-Consumer-Groups bench
    http-request set-header X-Forwarded-Proto https
    http-request set-header Host upstream.bench.test:$UP_HTTPS
    default_backend up_https" ;;
        stream) front="frontend fe
    mode tcp
    bind 127.0.0.1:$H_PORT
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend pass if { req.ssl_sni -i bulk.bench.test }
backend pass
    mode tcp
    server u 127.0.0.1:$UP_HTTPS" ;;
    esac
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
    # HAProxy sizes its open-files need at 2 per connection (maxsock), above the limit here, and
    # by default refuses to start when it cannot raise it; idle client connections need one each.
    no strict-limits
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-server-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
$front
backend up_http
    server u 127.0.0.1:$UP_HTTP
backend up_https
    server u 127.0.0.1:$UP_HTTPS ssl verify required ca-file $PKI/root.crt sni str(upstream.bench.test) verifyhost upstream.bench.test
EOF
}

# Caddy (Debian's 2.6): GOMAXPROCS=1 (set where it is started), admin endpoint and automatic
# HTTPS off, no access log (Caddy logs requests only with a `log` directive), the same
# certificate files. reverse_proxy sets X-Forwarded-For/-Proto/-Host itself (replacing what a
# client sent that is not a trusted proxy); the rest are set as nginx does. X-Forwarded-Port is
# written as the listener's port: Caddy 2.6 has no placeholder for the local port.
# modes: http, https, h2 (= https: Caddy offers h2 on TLS by default), mtls
caddy_conf() { # mode dir
    local mode=$1 d=$2 site tls="" guard="" up="127.0.0.1:$UP_HTTP" transport="" extra="" client_auth="" strict=""
    mkdir -p "$d"
    [ "$mode" = mtls ] && client_auth="
		client_auth {
			mode require_and_verify
			trusted_ca_cert_file $PKI/clientca.crt
		}"
    case $mode in
        http) site="http://:$C_PORT" ;;
        https | h2 | mtls) site="https://:$C_PORT"
            tls="
	tls $PKI/proxy.chain.crt $PKI/proxy.key {
		protocols tls1.2 tls1.3$client_auth
	}" ;;
    esac
    if [ "$mode" = mtls ]; then
        # With client authentication Caddy answers 421 to a Host that is not the TLS server name
        # (a guard against bypassing per-host client auth); the load client's Host is not, and
        # nginx and HAProxy do not compare them.
        strict="
		strict_sni_host insecure_off"
        # Go renders the subject as an RFC 2253 string: CN=alice for the bench's client.
        guard="
	@notalice not expression \`{http.request.tls.client.subject} == \"CN=alice\"\`
	respond @notalice 403"
        up="https://127.0.0.1:$UP_HTTPS"
        # Caddy has no verify-depth setting: the chain is verified to the root, as HAProxy does.
        transport="
			tls_trusted_ca_certs $PKI/root.crt
			tls_server_name upstream.bench.test"
        extra="
		header_up X-Consumer-Username {http.request.tls.client.subject}
		header_up X-Consumer-Groups bench"
    fi
    cat >"$d/Caddyfile" <<EOF
{
	admin off
	auto_https off
	default_sni proxy.bench.test
	log {
		level ERROR
	}
	servers {
		# No HTTP/3 (it would open a UDP listener the others do not have).
		protocols h1 h2$strict
		timeouts {
			idle 60s
		}
	}
}
$site {
	bind 127.0.0.1$tls$guard
	header X-Request-Id {http.request.uuid}
	reverse_proxy $up {
		header_up X-Real-IP {remote_host}
		header_up X-Forwarded-Port $C_PORT
		header_up X-Request-Id {http.request.uuid}
		header_up Host {upstream_hostport}$extra
		transport http {$transport
			keepalive 60s
			keepalive_idle_conns 256
			keepalive_idle_conns_per_host 256
		}
	}
}
EOF
}

# pingap 0.16 (Pingora 0.8-based): one worker thread without work stealing, no access log
# (none unless `access_log` is set), 512 pooled upstream connections, the same certificate.
# `enable_reverse_proxy_headers` adds X-Real-IP, X-Forwarded-For/-Proto/-Host/-Port; the
# request_id plugin sets X-Request-Id upstream and response_headers copies it to the response.
# S3: `tls_client_ca` verifies the client certificate (require), but pingap has no way to refuse
# a verified certificate by its subject (no CN=alice check; the bench's client CA issues only
# alice's certificate, so the check would always pass). modes: http, https, h2, mtls, http-s7
pingap_conf() { # mode dir
    local mode=$1 d=$2 server_tls="" upstream=up plugins='"benchRequestId", "benchResponseId"'
    local set_headers="\"Host:127.0.0.1:$UP_HTTP\""
    mkdir -p "$d"
    case $mode in
        https | h2 | mtls) server_tls="
global_certificates = true
tls_min_version = \"tlsv1.2\"" ;;
    esac
    [ "$mode" = h2 ] && server_tls="$server_tls
enabled_h2 = true"
    if [ "$mode" = mtls ]; then
        server_tls="$server_tls
tls_client_ca = \"$PKI/clientca.crt\"
tls_client_auth = \"require\""
        upstream=up_tls
        set_headers="\"Host:upstream.bench.test:$UP_HTTPS\", \"X-Consumer-Username:\$tls_client_subject\", \"X-Consumer-Groups:bench\""
    fi
    [ "$mode" = http-s7 ] && plugins='"benchKeyAuth", "benchLimit", "benchCors", "benchAddHeader", '"$plugins"
    cat >"$d/pingap.toml" <<EOF
[basic]
pid_file = "$d/pingap.pid"
upgrade_sock = "$d/upgrade.sock"
threads = 1
work_stealing = false
log_level = "warn"
upstream_keepalive_pool_size = 512
# Stopped between scenarios with SIGTERM: no graceful drain of 5 minutes.
grace_period = "0s"
graceful_shutdown_timeout = "1s"

[servers.bench]
addr = "127.0.0.1:$G_PORT"
locations = ["all"]
threads = 1$server_tls

[locations.all]
upstream = "$upstream"
path = "/"
enable_reverse_proxy_headers = true
proxy_set_headers = [$set_headers]
plugins = [$plugins]

[upstreams.up]
addrs = ["127.0.0.1:$UP_HTTP"]
idle_timeout = "60s"

[upstreams.up_tls]
addrs = ["127.0.0.1:$UP_HTTPS"]
sni = "upstream.bench.test"
ca = "$PKI/root.crt"
verify_cert = true
idle_timeout = "60s"

[certificates.proxy]
domains = "proxy.bench.test"
tls_cert = "$PKI/proxy.chain.crt"
tls_key = "$PKI/proxy.key"
is_default = true

[plugins.benchRequestId]
category = "request_id"
algorithm = "uuid"

[plugins.benchResponseId]
category = "response_headers"
set_headers = ["X-Request-Id:\$http_x_request_id"]

# S7: key-auth + rate limit (never reached) + cors + an added upstream header.
[plugins.benchKeyAuth]
category = "key_auth"
header = "apikey"
keys = ["bench-api-key-0123456789"]

[plugins.benchLimit]
category = "limit"
type = "rate"
tag = "ip"
max = 1000000000
interval = "1s"
headers = true

[plugins.benchCors]
category = "cors"
allow_origin = "https://app.bench.test"

[plugins.benchAddHeader]
category = "request_headers"
add_headers = ["x-bench:1"]
EOF
}

declare -A SYS_PID=()
# A command prefix for the proxies (profile.sh runs them under valgrind); `env` when none.
WRAP=(env)
start_system() { # system mode
    local sys=$1 mode=$2 d=$RUN/$1-$2
    case $sys in
        portcullis)
            portcullis_conf "$mode" "$d"
            # s1accesslog: S1 with the access log on, as users run it (info, text, to a file).
            local level=warn
            [ "$mode" = http-accesslog ] && level=info
            PORTCULLIS_LOG=$level taskset -c "$SCPU" "${WRAP[@]}" "$PORTCULLIS_BIN" run --conf "$d" >"$RUN/$sys.log" 2>&1 &
            ;;
        nginx)
            nginx_conf "$mode" "$d"
            taskset -c "$SCPU" "${WRAP[@]}" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$RUN/$sys.log" 2>&1 &
            ;;
        haproxy)
            haproxy_conf "$mode" "$d"
            taskset -c "$SCPU" "${WRAP[@]}" haproxy -db -f "$d/haproxy.cfg" >"$RUN/$sys.log" 2>&1 &
            ;;
        caddy)
            caddy_conf "$mode" "$d"
            # One OS thread running Go code, as the others have one worker; Caddy's data and
            # config directories (unused with automatic HTTPS off) kept in the run directory.
            GOMAXPROCS=1 XDG_DATA_HOME=$d/data XDG_CONFIG_HOME=$d/config taskset -c "$SCPU" "${WRAP[@]}" \
                caddy run --config "$d/Caddyfile" --adapter caddyfile >"$RUN/$sys.log" 2>&1 &
            ;;
        pingap)
            pingap_conf "$mode" "$d"
            taskset -c "$SCPU" "${WRAP[@]}" "$PINGAP_BIN" -c "$d/pingap.toml" >"$RUN/$sys.log" 2>&1 &
            ;;
    esac
    SYS_PID[$sys]=$!
    PIDS+=("$!")
    wait_port "${PORT[$sys]}" "$!" "$sys"
}
stop_systems() {
    for sys in "${PROXIES[@]}"; do
        [ -n "${SYS_PID[$sys]:-}" ] && stop_pid "${SYS_PID[$sys]}"
        SYS_PID[$sys]=""
    done
    return 0
}

# --- one measured run --------------------------------------------------------------------------
# scenario → mode and client arguments (the port is appended per system)
scenario_mode() {
    case $1 in s1) echo http ;; s1accesslog) echo http-accesslog ;; s1keyauth) echo http-keyauth ;; s1jwt) echo http-jwt ;;
        s1traffic) echo http-traffic ;; s1log) echo http-log ;; s7) echo http-s7 ;;
        s1redis) echo http-redis ;; s1redissync) echo http-redissync ;; s2 | s4 | s4pq) echo https ;; s3) echo mtls ;; s5*) echo stream ;;
        s6) echo h2 ;; esac
}
client_args() { # scenario system
    local s=$1 sys=$2
    case $s in
        s1) echo "--conns 64" ;;
        s1accesslog) echo "--conns 64" ;;
        s1keyauth | s1jwt | s1traffic | s1log | s7 | s1redis | s1redissync) echo "--conns 64 --header-file $PKI/h-${s#s1}.txt" ;;
        s2) echo "--conns 64 --tls --sni proxy.bench.test" ;;
        s3) echo "--conns 64 --tls --sni proxy.bench.test --cert $PKI/alice.crt --key $PKI/alice.key" ;;
        s4) echo "--conns 32 --close --tls --sni proxy.bench.test" ;;
        s4pq) echo "--conns 32 --close --tls --sni proxy.bench.test --groups X25519MLKEM768" ;;
        s5bulk) echo "--conns 4 --tls --sni bulk.bench.test --path /big" ;;
        s5conn) echo "--conns 32 --close --tls --sni bulk.bench.test" ;;
        # h2load.py: HTTP/2 over TLS, 4 connections of 100 concurrent streams each.
        s6) echo "--conns 4 --streams 100" ;;
    esac
}
# The load client of a scenario, with its arguments: pcload, or h2load (through h2load.py, which
# prints pcload's JSON) for HTTP/2.
client_cmd() { # scenario system duration warmup [conns]
    local s=$1 sys=$2 dur=$3 warm=$4 conns=${5:-} args
    args=$(client_args "$s" "$sys")
    # Every scenario's arguments start with --conns N.
    [ -n "$conns" ] && args="--conns $conns ${args#--conns * }"
    if [ "$s" = s6 ]; then
        echo "python3 $ROOT/benches/load/h2load.py --port $(target_port "$s" "$sys") --duration $dur --warmup $warm $args"
    else
        echo "$PCLOAD run --addr 127.0.0.1:$(target_port "$s" "$sys") --duration $dur --warmup $warm $args"
    fi
}
PLUGIN_SCENARIOS=(s1accesslog s1keyauth s1jwt s1traffic s1log s1redis s1redissync)
# Why a system does not run a scenario (nothing when it does); recorded with the results.
skip_reason() { # scenario system
    local s=$1 sys=$2
    if [ "$s" = s6 ] && ! command -v h2load >/dev/null; then
        echo "h2load not installed (apt-get install nghttp2-client)"
        return
    fi
    if has "$s" "${PLUGIN_SCENARIOS[@]}"; then
        [ "$sys" != portcullis ] && echo "Portcullis-only plugin scenario (Kong plugins, priced against S1)"
        return 0
    fi
    case $sys:$s in
        direct:s4pq) echo "the upstream nginx links Debian's OpenSSL 3.0: no ML-KEM" ;;
        direct:s6) echo "the upstream nginx's TLS port speaks HTTP/1.1 only" ;;
        direct:s7) echo "a plugin scenario: proxies only" ;;
        nginx:s4pq | haproxy:s4pq) echo "Debian's OpenSSL 3.0: no ML-KEM (X25519MLKEM768 needs OpenSSL >= 3.5)" ;;
        haproxy:s7) echo "not configured: the closest stock configuration is measured with nginx" ;;
        caddy:s4pq) echo "Debian's Caddy 2.6 is built with Go 1.19: no ML-KEM in its crypto/tls" ;;
        caddy:s5*) echo "TLS passthrough by SNI needs the caddy-l4 plugin, not in Debian's build" ;;
        caddy:s7) echo "no key-auth or rate-limiting in the stock Caddy build (third-party plugins)" ;;
        pingap:s4pq) [ -n "$(pingap_mlkem)" ] || echo "this pingap build links the system OpenSSL 3.0: no ML-KEM" ;;
        pingap:s5*) echo "pingap 0.16 proxies HTTP only: no TCP/TLS passthrough" ;;
    esac
}
# Where a system runs a scenario with less than the others do; recorded with the results.
scenario_note() { # scenario system
    case $2:$1 in
        haproxy:s3 | caddy:s3) echo "no upstream verify-depth setting: the chain is verified to the root" ;;
        nginx:s7) echo "the closest stock configuration: a map-based API key check, limit_req at a rate never reached (no rate-limit headers), the allowed Origin echoed with Vary, one header added upstream" ;;
        pingap:s3) echo "the client certificate is verified (required), but not checked for CN=alice: pingap cannot refuse a verified certificate by its subject; no upstream verify-depth setting" ;;
    esac
    return 0
}
# pingap's default build links a vendored OpenSSL 3.6, which has ML-KEM; prints "yes" then.
pingap_mlkem() {
    [ -n "${PINGAP_BIN:-}" ] && ! ldd "$PINGAP_BIN" 2>/dev/null | grep -q libssl && echo yes
}
# The systems of $SYSTEMS that can run a scenario.
scenario_systems() { # scenario
    local sys
    for sys in "${SYSTEMS[@]}"; do
        [ -z "$(skip_reason "$1" "$sys")" ] && echo -n "$sys "
    done
    return 0
}
target_port() { # scenario system
    if [ "$2" = direct ]; then
        case $1 in s1) echo "$UP_HTTP" ;; *) echo "$UP_HTTPS" ;; esac
    else
        echo "${PORT[$2]}"
    fi
}

measure() { # scenario system round
    local s=$1 sys=$2 round=$3 pid="" out
    [ "$sys" != direct ] && pid=${SYS_PID[$sys]}
    out=$RUN/$s-$sys-$round.json
    [ -n "$pid" ] && reset_hwm "$pid"
    local acc0 acc1 up0 up1 c0=0 c1=0 cs0=0 cs1=0
    acc0=$(upstream_accepts)
    # shellcheck disable=SC2046
    taskset -c "$CCPU" $(client_cmd "$s" "$sys" "$DURATION" "$WARMUP") >"$out" 2>>"$RUN/pcload.log" &
    local cpid=$!
    # CPU is read over the client's measurement window only.
    sleep "$WARMUP"
    [ -n "$pid" ] && c0=$(cpu_ticks "$pid") && cs0=$(ctx_switches "$pid")
    up0=$(cpu_ticks "$UPSTREAM_PID")
    sleep "$DURATION"
    [ -n "$pid" ] && c1=$(cpu_ticks "$pid") && cs1=$(ctx_switches "$pid")
    up1=$(cpu_ticks "$UPSTREAM_PID")
    wait "$cpid" || die "pcload failed for $s/$sys (see $RUN/pcload.log)"
    acc1=$(upstream_accepts)
    local hwm=0 threads=0
    if [ -n "$pid" ]; then
        hwm=$(status_kb "$pid" VmHWM)
        threads=$(status_kb "$pid" Threads)
    fi
    python3 - "$out" "$s" "$sys" "$round" "$(((c1 - c0)))" "$((up1 - up0))" "$hwm" \
        "$((acc1 - acc0))" "$threads" "$HZ" "$((cs1 - cs0))" >>"$RESULTS" <<'EOF'
import json, sys
out, s, sys_, rnd, cpu, upcpu, hwm, acc, threads, hz, cs = sys.argv[1:]
r = json.load(open(out))
hz = float(hz)
r.update(kind="load", scenario=s, system=sys_, round=int(rnd),
         proxy_cpu_s=int(cpu) / hz if sys_ != "direct" else None,
         upstream_cpu_s=int(upcpu) / hz, peak_rss_kib=int(hwm) if sys_ != "direct" else None,
         upstream_conns=int(acc) - 1, threads=int(threads),
         ctx_switches=int(cs) if sys_ != "direct" else None)
print(json.dumps(r))
EOF
    local line
    line=$(tail -n 1 "$RESULTS")
    log "$s $sys #$round: $(python3 "$ROOT/benches/load/report.py" --line "$line")"
}

wait_for_quiet() {
    [ -z "$MAX_LOAD" ] && return 0
    local deadline=$((SECONDS + LOAD_WAIT_MIN * 60)) l
    while :; do
        l=$(cut -d' ' -f1 /proc/loadavg)
        if python3 -c "import sys; sys.exit(0 if float('$l') < float('$MAX_LOAD') else 1)"; then
            log "load average $l < $MAX_LOAD: starting"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "load average still $l after $LOAD_WAIT_MIN minutes: running anyway (recorded)"
            return 0
        fi
        log "load average $l ≥ $MAX_LOAD (other work on this machine): waiting 60 s"
        sleep 60
    done
}

meta() { # key value-json
    python3 -c 'import json,sys; print(json.dumps({"kind":"meta", sys.argv[1]: json.loads(sys.argv[2])}))' "$1" "$2" >>"$RESULTS"
}

# The plugin scenarios' request headers (a JWT valid for a day: made at every run).
write_plugin_headers

# A local Redis for the rate-limiting `redis` policy scenarios, on the proxy's CPU like the
# upstream (a replica's Redis is another machine; here it shares the core it would not).
start_redis() {
    command -v redis-server >/dev/null || die "redis-server not found (bash scripts/setup.sh installs it)"
    taskset -c "$SCPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        >"$RUN/redis.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$REDIS_PORT" "$!" redis
}
