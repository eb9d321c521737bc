#!/usr/bin/env python3
"""Runs h2load (nghttp2) for scenario S6 of benches/load/run.sh and prints one JSON object with
the fields pcload's `run` prints, so that lib.sh's measure() and report.py treat both alike.

    h2load.py --port P [--duration 5] [--warmup 1] [--conns 4] [--streams 100] [--log FILE]

h2load connects to 127.0.0.1:P (--connect-to) for https://proxy.bench.test:P/, so the TLS SNI and
:authority name the proxy's certificate as pcload's --sni does; it offers only X25519, as pcload.
Throughput, request counts, statuses and traffic come from h2load's summary. Latency: h2load's
summary has min/max/mean/sd of "time for request" only (recorded as h2_*_ms); p50 and p99 are
computed from its per-request --log-file (start time, status, microseconds to the end of the
response), over the requests started after the warm-up. Client CPU is h2load's own (rusage).
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m[1]) * UNITS[m[2]] if m else None


def duration_arg(seconds):
    # h2load takes an integer with a unit.
    return f"{max(1, round(seconds * 1000))}ms"


def percentile(sorted_us, p):
    if not sorted_us:
        return 0.0
    i = round((len(sorted_us) - 1) * p)
    return sorted_us[min(i, len(sorted_us) - 1)] / 1000.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="proxy.bench.test")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--log", default=None)
    a = ap.parse_args()
    log = a.log or f"/tmp/h2load-{os.getpid()}.log"
    cmd = [
        "h2load",
        "-c", str(a.conns),
        "-m", str(a.streams),
        "-t", "1",
        "--groups", "X25519",
        "--connect-to", f"127.0.0.1:{a.port}",
        "--log-file", log,
        "-D", duration_arg(a.duration),
    ]
    if a.warmup > 0:
        cmd += ["--warm-up-time", duration_arg(a.warmup)]
    cmd.append(f"https://{a.host}:{a.port}/")
    start = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - start
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru.ru_utime + ru.ru_stime
    out = p.stdout
    if p.returncode != 0 or "requests:" not in out:
        sys.stderr.write(out + p.stderr)
        print(json.dumps({"requests": 0, "errors": 1, "first_error": f"h2load exited {p.returncode}: {p.stderr.strip()[:300]}"}))
        return 1

    def grab(pattern, cast=float, default=None):
        m = re.search(pattern, out, re.M)
        return cast(m[1]) if m else default

    rps = grab(r"^finished in [\d.]+\w*, ([\d.]+) req/s")
    done = grab(r"^requests: .*?(\d+) done", int, 0)
    ok = grab(r"^requests: .*?(\d+) succeeded", int, 0)
    failed = grab(r"^requests: .*?(\d+) failed", int, 0)
    errored = grab(r"^requests: .*?(\d+) errored", int, 0)
    timeouts = grab(r"^requests: .*?(\d+) timeout", int, 0)
    statuses = {}
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    if m:
        statuses = {f"{k}xx": int(v) for k, v in zip("2345", m.groups()) if int(v)}
    non2xx = sum(v for k, v in statuses.items() if k != "2xx")
    traffic = grab(r"^traffic: .*?\((\d+)\) total", int, 0)
    req = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    h2 = {}
    if req:
        h2 = {
            "h2_min_ms": ms(req[1]),
            "h2_max_ms": ms(req[2]),
            "h2_mean_ms": ms(req[3]),
            "h2_sd_ms": ms(req[4]),
        }
    tls = " ".join(
        x
        for x in (
            grab(r"^TLS Protocol: (\S+)", str, ""),
            grab(r"^Cipher: (\S+)", str, ""),
            grab(r"^Server Temp Key: (\S+)", str, ""),
            grab(r"^Application protocol: (\S+)", str, ""),
        )
        if x
    )
    # Per-request log: start (µs since the epoch), status, µs to the end of the response.
    window_start_us = (start + a.warmup) * 1e6
    lat = []
    try:
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] != "-1" and float(parts[0]) >= window_start_us:
                    lat.append(int(parts[2]))
    finally:
        if not a.log:
            os.unlink(log)
    lat.sort()
    result = {
        "requests": done,
        "errors": failed + errored + timeouts + non2xx,
        "duration": a.duration,
        "rps": rps if rps is not None else ok / a.duration,
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "latency_samples": len(lat),
        "gbps": traffic * 8 / a.duration / 1e9,
        "bytes": traffic,
        "handshakes": a.conns,
        "resumed": 0,
        "reconnects": 0,
        "client_cpu": round(cpu, 2),
        "client_util": round(cpu / wall, 2) if wall else 0,
        "statuses": statuses,
        "tls": tls,
        "first_error": None if failed + errored + timeouts + non2xx == 0 else out.strip()[-300:],
        "client": "h2load",
        "h2_conns": a.conns,
        "h2_streams": a.streams,
    }
    result.update(h2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
