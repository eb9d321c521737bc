#!/usr/bin/env bash
# The load benchmark of BENCHMARKS.md: Portcullis, nginx, HAProxy, Caddy and pingap side by side,
# plus the direct client → upstream connection, on loopback, one worker each.
#
#   bash benches/load/run.sh                 # every scenario, 3 interleaved repeats, ~12 minutes
#   BENCH_SCENARIOS="s1 s3" BENCH_REPEATS=1 bash benches/load/run.sh   # a quick look
#
# Scenarios: s1 HTTP/1.1 keep-alive; s2 HTTPS termination → HTTP upstream; s3 mTLS (mtls-auth +
# acl) → HTTPS upstream verified by a private CA at depth 1, pooled; s4 a new TLS handshake per
# request; s4pq the same with the post-quantum hybrid X25519MLKEM768 (Portcullis only: Debian's
# OpenSSL 3.0 in nginx and HAProxy has no ML-KEM); s5bulk / s5conn TLS passthrough by SNI (bulk
# download, new connections); plugin scenarios on S1's route, Portcullis only, priced against S1:
# s1keyauth (key-auth), s1jwt (jwt, HS256), s1traffic (cors + rate-limiting local, never reached +
# request-transformer adding a header), s1log (http-log batching 200 entries + opentelemetry with
# its defaults, both shipping to the upstream nginx), s7 (key-auth + rate-limiting + cors +
# request-transformer), s1redis / s1redissync (rate-limiting with the redis policy against a
# local redis-server: a round trip per request, or batched by sync_rate 0.1 s); s7 runs on pingap
# too, with its equivalent plugins (key_auth, limit, cors, request_headers). s6 HTTP/2 over TLS
# (h2load: 4 connections × 100 concurrent streams). Plus memory: idle, and with 10,000 idle
# keep-alive connections over HTTP and over TLS (a handshake and one request each), per system;
# Portcullis with 10,000 routes + 1,000 certificates. A system or scenario that cannot run is
# skipped with its reason, recorded in the results and the report.
#
# Layout (2 cores): the load client on CPU $BENCH_CLIENT_CPU, proxy and upstream on CPU
# $BENCH_SERVER_CPU. Everything is started here, on 127.0.0.1 ephemeral ports, with config files
# in $BENCH_WORK, and killed on exit. Results: $BENCH_WORK/results.jsonl and report.md.
#
# Environment:
#   BENCH_WORK (target/bench-load)  BENCH_DURATION (5 s measured)  BENCH_WARMUP (1 s)
#   BENCH_REPEATS (3)  BENCH_SCENARIOS ("s1 s2 s3 s4 s4pq s5bulk s5conn s6 s1keyauth s1jwt s1traffic s1log s7 mem")
#   BENCH_SYSTEMS ("direct portcullis nginx haproxy caddy pingap")  BENCH_MEM_CONNS (10000)
#   BENCH_TOOLS (target/bench-tools: where a missing pingap is installed with cargo +nightly;
#   BENCH_INSTALL_PINGAP=no skips pingap instead)
#   BENCH_MAX_LOAD (0.7: wait until the 1-minute load average is below it, polling every 60 s,
#   at most BENCH_LOAD_WAIT_MIN=40 minutes; empty: do not wait)
#   PORTCULLIS_BIN (default: target/release/portcullis, rebuilt first with `cargo build --release`;
#   when set, that binary is used as is)
set -euo pipefail

# shellcheck source=benches/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rm -f "$WORK/report.md"
: >"$RESULTS"

# --- run -------------------------------------------------------------------------------------
wait_for_quiet
meta start "\"$(date -u +%FT%TZ)\""
meta loadavg_start "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
meta machine "\"$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)\""
versions="$(nginx -v 2>&1 | sed 's/.*: //'); $(haproxy -v | head -1 | cut -d' ' -f1-3); $(openssl version | cut -d' ' -f1-2) (system)"
has portcullis "${SYSTEMS[@]}" && versions="$("$PORTCULLIS_BIN" version 2>&1 | head -1); $versions"
has caddy "${SYSTEMS[@]}" && versions="$versions; Caddy $(caddy version 2>&1 | head -1)"
has pingap "${SYSTEMS[@]}" && versions="$versions; $("$PINGAP_BIN" --version 2>&1 | head -1)"
command -v h2load >/dev/null && versions="$versions; $(h2load --version 2>&1 | head -1)"
meta versions "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$versions")"
meta settings "{\"duration\": $DURATION, \"warmup\": $WARMUP, \"repeats\": $REPEATS, \"client_cpu\": $CCPU, \"server_cpu\": $SCPU, \"mem_conns\": $MEM_CONNS, \"maxconn\": $MAXCONN}"
meta git "\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\""
has portcullis "${SYSTEMS[@]}" && meta binary "\"$PORTCULLIS_BIN, built $(date -u -r "$PORTCULLIS_BIN" +%FT%TZ)\""

# Why something is not measured: one line per system that cannot run, and per scenario and system.
skip() { # scenario system reason
    python3 -c 'import json,sys; print(json.dumps({"kind": "skip", "scenario": sys.argv[1], "system": sys.argv[2], "reason": sys.argv[3]}))' "$@" >>"$RESULTS"
}
for sys in "${!SYSTEM_SKIP[@]}"; do skip "*" "$sys" "${SYSTEM_SKIP[$sys]}"; done
note() { # scenario system text
    python3 -c 'import json,sys; print(json.dumps({"kind": "note", "scenario": sys.argv[1], "system": sys.argv[2], "note": sys.argv[3]}))' "$@" >>"$RESULTS"
}
for s in $SCENARIOS; do
    [ "$s" = mem ] && continue
    for sys in "${SYSTEMS[@]}"; do
        reason=$(skip_reason "$s" "$sys")
        if [ -n "$reason" ]; then
            skip "$s" "$sys" "$reason"
        else
            text=$(scenario_note "$s" "$sys")
            [ -n "$text" ] && note "$s" "$sys" "$text"
        fi
    done
done

start_upstream
[[ " $SCENARIOS " == *" s1redis"* ]] && start_redis
log "upstream nginx on :$UP_HTTP (http) :$UP_HTTPS (https); proxies: portcullis :$P_PORT nginx :$N_PORT haproxy :$H_PORT caddy :$C_PORT pingap :$G_PORT"

for s in $SCENARIOS; do
    [ "$s" = mem ] && continue
    mode=$(scenario_mode "$s")
    meta "loadavg_$s" "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    read -r -a systems <<<"$(scenario_systems "$s")"
    [ "${#systems[@]}" -eq 0 ] && { log "$s: none of the systems asked for can run it: skipped"; continue; }
    for sys in "${PROXIES[@]}"; do
        has "$sys" "${systems[@]}" && start_system "$sys" "$mode"
    done
    # Smoke: every system answers 2xx before anything is measured.
    for sys in "${systems[@]}"; do
        # shellcheck disable=SC2046
        smoke=$(taskset -c "$CCPU" $(client_cmd "$s" "$sys" 0.3 0 2))
        python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["requests"]>0 and r["errors"]==0 else 1)' "$smoke" ||
            die "$s: $sys does not answer 2xx: $smoke"
    done
    for round in $(seq "$REPEATS"); do
        # Interleaved, and rotated each round so no system always runs first.
        n=${#systems[@]}
        for i in $(seq 0 $((n - 1))); do
            measure "$s" "${systems[$(((i + round - 1) % n))]}" "$round"
        done
    done
    stop_systems
done

# Memory: RSS idle, then with MEM_CONNS idle keep-alive connections, each having made one request
# (HTTP: S1's configuration; TLS: S2's, a full handshake per connection), sampled 1 s after the
# last one is open.
mem_held() { # system proto
    local sys=$1 proto=$2 mode=http tls="" pid idle held opened failed hpid
    [ "$proto" = tls ] && mode=https tls="--tls --sni proxy.bench.test"
    start_system "$sys" "$mode"
    pid=${SYS_PID[$sys]}
    sleep 1
    idle=$(status_kb "$pid" VmRSS)
    # shellcheck disable=SC2086
    taskset -c "$CCPU" "$PCLOAD" hold --addr "127.0.0.1:${PORT[$sys]}" $tls --conns "$MEM_CONNS" --hold 3 \
        >"$RUN/hold-$sys-$proto.out" 2>&1 &
    hpid=$!
    for _ in $(seq 1800); do
        grep -q '^ready' "$RUN/hold-$sys-$proto.out" && break
        kill -0 "$hpid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
    held=$(status_kb "$pid" VmRSS)
    opened=$(sed -n 's/^ready open=\([0-9]*\).*/\1/p' "$RUN/hold-$sys-$proto.out")
    failed=$(sed -n 's/^ready open=[0-9]* failed=\([0-9]*\).*/\1/p' "$RUN/hold-$sys-$proto.out")
    wait "$hpid" || true
    echo "{\"kind\":\"mem\",\"system\":\"$sys\",\"proto\":\"$proto\",\"conns\":$MEM_CONNS,\"idle_rss_kib\":$idle,\"held_rss_kib\":$held,\"conns_open\":${opened:-0},\"conns_failed\":${failed:-0}}" >>"$RESULTS"
    log "memory $sys $proto: idle $((idle / 1024)) MiB, $MEM_CONNS keep-alive connections (${opened:-0} open, ${failed:-0} failed) $((held / 1024)) MiB: $(((held - idle) * 1024 / MEM_CONNS)) bytes per connection"
    stop_pid "$pid"
    SYS_PID[$sys]=""
}
if [[ " $SCENARIOS " == *" mem "* ]]; then
    meta loadavg_mem "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    for sys in "${PROXIES[@]}"; do
        has "$sys" "${SYSTEMS[@]}" || continue
        mem_held "$sys" http
        mem_held "$sys" tls
    done
fi
if [[ " $SCENARIOS " == *" mem "* ]] && has portcullis "${SYSTEMS[@]}"; then
    # Portcullis with 10,000 routes and 1,000 certificates.
    big=$RUN/portcullis-big
    read -r BIG_HTTP BIG_HTTPS <<<"$("$PCLOAD" ports 2)"
    "$PCLOAD" bigconf --dir "$big" --routes 10000 --certs 1000 --upstream "127.0.0.1:$UP_HTTP" \
        --listen "127.0.0.1:$BIG_HTTP" --tls-listen "127.0.0.1:$BIG_HTTPS" >/dev/null
    t0=$(date +%s.%N)
    PORTCULLIS_LOG=warn taskset -c "$SCPU" "$PORTCULLIS_BIN" run --conf "$big" >"$RUN/portcullis-big.log" 2>&1 &
    bpid=$!
    PIDS+=("$bpid")
    wait_port "$BIG_HTTPS" "$bpid" portcullis-big
    t1=$(date +%s.%N)
    sleep 1
    bigrss=$(status_kb "$bpid" VmRSS)
    bighwm=$(status_kb "$bpid" VmHWM)
    # One routed request per kind of entry, to prove the configuration is live.
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: s777.bench.test' "http://127.0.0.1:$BIG_HTTP/r3" || true)
    echo "{\"kind\":\"mem\",\"system\":\"portcullis-10k-routes-1k-certs\",\"idle_rss_kib\":$bigrss,\"peak_rss_kib\":$bighwm,\"startup_s\":$(python3 -c "print(round($t1-$t0,2))"),\"probe_status\":\"$code\"}" >>"$RESULTS"
    log "memory portcullis with 10,000 routes + 1,000 certificates: $((bigrss / 1024)) MiB (peak $((bighwm / 1024)) MiB), listening after $(python3 -c "print(round($t1-$t0,2))") s, probe $code"
    stop_pid "$bpid"
fi

meta loadavg_end "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
python3 "$ROOT/benches/load/report.py" "$RESULTS" >"$WORK/report.md"
log "report: $WORK/report.md"
cat "$WORK/report.md"
