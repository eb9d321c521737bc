#!/usr/bin/env bash
# Where the proxies spend their work, for BENCHMARKS.md "Profiles".
#
#   bash benches/load/profile.sh                       # s1 s2 s3 s4 s5conn mem
#   PROFILE_SCENARIOS="s1" bash benches/load/profile.sh
#
# 1. callgrind (hardware counters are not available on this VM, so `perf stat -e instructions`
#    does not work): each proxy runs under `valgrind --tool=callgrind` with instrumentation off
#    until a warm-up has filled its connection pools, on for PROFILE_DURATION seconds of load
#    (8 connections), then dumped. Instructions per request are comparable across systems and
#    insensitive to other work on the machine. Portcullis' top functions (inclusive and
#    self) are written next to the dumps.
# 2. massif ("mem"): Portcullis' heap with 1,000 idle keep-alive connections, by allocation site.
# 3. perf (software cpu-clock sampling, which does work here): Portcullis without valgrind under
#    the scenario's normal load, flat profile by symbol, kernel included — where the time goes,
#    syscalls and copies included, which instruction counts understate.
#
# Output: $BENCH_WORK/profile/ (callgrind.*, *.annotate.txt, *.perf.txt, profile.md).
set -euo pipefail

export BENCH_MAX_LOAD=""
# Profiles cover Portcullis, nginx and HAProxy: no Caddy or pingap (nor pingap's install) here.
export BENCH_SYSTEMS=${BENCH_SYSTEMS:-"portcullis nginx haproxy"}
RUN=${BENCH_WORK:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/bench-load}/profile-run
RESULTS=/dev/null
# shellcheck source=benches/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCEN=${PROFILE_SCENARIOS:-"s1 s2 s3 s4 s5conn mem"}
PDUR=${PROFILE_DURATION:-10}
PROF=$WORK/profile
mkdir -p "$PROF"
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"

start_upstream

client() { # scenario system duration conns
    # shellcheck disable=SC2046
    taskset -c "$CCPU" "$PCLOAD" run --addr "127.0.0.1:$(target_port "$1" "$2")" --duration "$3" \
        --warmup 0 $(client_args "$1" "$2" | sed "s/--conns [0-9]*/--conns $4/")
}

for s in $SCEN; do
    [ "$s" = mem ] && continue
    mode=$(scenario_mode "$s")
    rm -f "$PROF/callgrind.$s."* "$PROF/$s."*
    summary=$PROF/$s.summary.tsv
    read -r -a psystems <<<"${PROFILE_SYSTEMS:-$(scenario_systems "$s")}"
    for sys in "${psystems[@]}"; do
        [ "$sys" = direct ] && continue
        out=$PROF/callgrind.$s.$sys
        WRAP=(valgrind --tool=callgrind --instr-atstart=no --dump-instr=no "--callgrind-out-file=$out")
        WAIT_PORT_TRIES=1200 start_system "$sys" "$mode"
        pid=${SYS_PID[$sys]}
        client "$s" "$sys" 3 8 >/dev/null
        callgrind_control -i on "$pid" >/dev/null 2>&1
        r=$(client "$s" "$sys" "$PDUR" 8)
        callgrind_control -i off "$pid" >/dev/null 2>&1
        callgrind_control -d "$pid" >/dev/null 2>&1
        stop_pid "$pid"
        SYS_PID[$sys]=""
        requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$r")
        # The explicit dump holds the measured window (instrumentation was off otherwise).
        ir=0
        for f in "$out".*; do
            [ -f "$f" ] || continue
            n=$(grep -m1 '^totals:' "$f" | awk '{print $2}' || true)
            ir=$((ir + ${n:-0}))
        done
        per=$((requests > 0 ? ir / requests : 0))
        printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$sys" "$requests" "$ir" "$per" >>"$summary"
        log "callgrind $s $sys: $requests requests, $ir instructions, $per per request"
        if [ "$sys" = portcullis ]; then
            f=$(find "$PROF" -name "callgrind.$s.$sys.*" | sort | head -1)
            { callgrind_annotate --inclusive=yes "$f" 2>/dev/null || true; } | sed -n 1,90p >"$PROF/$s.portcullis.inclusive.txt"
            { callgrind_annotate "$f" 2>/dev/null || true; } | sed -n 1,90p >"$PROF/$s.portcullis.self.txt"
            { callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null || true; } |
                python3 "$ROOT/benches/load/hooks.py" "$requests" >"$PROF/$s.portcullis.hooks.txt"
            # Heap allocations: calls into the Rust allocator, counted by callgrind.
            allocs=$({ callgrind_annotate --tree=calling "$f" 2>/dev/null || true; } |
                sed -n 's/.*>   ???:__rustc::__rdl_alloc\(_zeroed\)\? (\([0-9,]*\)x).*/\2/p' | tr -d , |
                awk '{n += $1} END {print n + 0}')
            printf '%22s  Rust heap allocations per request (calls)\n' "$((allocs / (requests > 0 ? requests : 1)))" \
                >>"$PROF/$s.portcullis.hooks.txt"
        fi
    done
done

# massif: where 1,000 idle keep-alive connections live in Portcullis' heap.
if [[ " $SCEN " == *" mem "* ]]; then
    rm -f "$PROF"/mem.*
    WRAP=(valgrind --tool=massif --threshold=1 "--massif-out-file=$PROF/mem.massif")
    WAIT_PORT_TRIES=1200 start_system portcullis http
    pid=${SYS_PID[portcullis]}
    taskset -c "$CCPU" "$PCLOAD" hold --addr "127.0.0.1:${PORT[portcullis]}" --conns 1000 --hold 20 >"$PROF/mem.hold.out" 2>&1 &
    hpid=$!
    for _ in $(seq 600); do grep -q '^ready' "$PROF/mem.hold.out" && break; sleep 0.1; done
    sleep 2
    vgdb --pid="$pid" detailed_snapshot "$PROF/mem.snapshot" >/dev/null 2>&1 || true
    kill "$hpid" 2>/dev/null || true
    wait "$hpid" 2>/dev/null || true
    stop_pid "$pid"
    SYS_PID[portcullis]=""
    { ms_print "$PROF/mem.snapshot" 2>/dev/null || true; } | sed -n 1,200p >"$PROF/mem.massif.txt"
    log "massif: $PROF/mem.massif.txt ($(head -1 "$PROF/mem.hold.out"))"
fi

# perf: Portcullis at full speed.
if perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1; then
    WRAP=(env)
    for s in $SCEN; do
        [ "$s" = mem ] && continue
        mode=$(scenario_mode "$s")
        start_system portcullis "$mode"
        pid=${SYS_PID[portcullis]}
        client "$s" portcullis 1 64 >/dev/null
        client "$s" portcullis 6 "$(client_args "$s" portcullis | sed -n 's/.*--conns \([0-9]*\).*/\1/p')" >/dev/null &
        cpid=$!
        sleep 1
        perf record -e cpu-clock -F 4000 -p "$pid" -o "$PROF/$s.perf.data" -- sleep 4 >/dev/null 2>&1 || true
        wait "$cpid" || true
        perf report -i "$PROF/$s.perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -60 >"$PROF/$s.perf.txt" || true
        stop_pid "$pid"
        SYS_PID[portcullis]=""
        log "perf $s: $PROF/$s.perf.txt"
    done
fi

{
    echo "| scenario | system | requests | instructions | instructions/request |"
    echo "|---|---|---|---|---|"
    cat "$PROF"/*.summary.tsv 2>/dev/null | while IFS=$'\t' read -r s sys req ir per; do
        printf '| %s | %s | %s | %s | %s |\n' "$s" "$sys" "$req" "$(printf "%'d" "$ir")" "$(printf "%'d" "$per")"
    done
} >"$PROF/profile.md"
cat "$PROF/profile.md"
log "profiles in $PROF"
