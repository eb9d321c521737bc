#!/usr/bin/env python3
"""Turns the results.jsonl of benches/load/run.sh into the Markdown tables of BENCHMARKS.md.

Per scenario and system: the median of the repeats and their spread (min-max); ratios are
computed from the medians of this one run: Portcullis against the better of nginx and HAProxy
and against the better of pingap and Caddy (each "better" by throughput), and against the direct
client -> upstream connection. Memory: RSS idle and with N idle keep-alive connections (HTTP and
TLS), KiB per connection and its ratio to nginx's. What was not measured is listed with why.
"""

import json
import statistics
import sys

TITLES = {
    "s1": "S1 HTTP/1.1 keep-alive proxy (64 connections)",
    "s2": "S2 HTTPS termination (TLS 1.3, ECDSA P-256) -> HTTP upstream (64 connections)",
    "s3": "S3 mTLS downstream (mtls-auth + acl) -> HTTPS upstream verified at depth 1, pooled (64 connections)",
    "s4": "S4 new TLS handshakes per second (one request per connection, no resumption, 32 concurrent)",
    "s4pq": "S4 with the post-quantum hybrid X25519MLKEM768",
    "s1accesslog": "S1 with the access log on (level info, text lines to a file; Portcullis only)",
    "s1keyauth": "S1 route + key-auth (Portcullis only)",
    "s1jwt": "S1 route + jwt, HS256 (Portcullis only)",
    "s1traffic": "S1 route + cors + rate-limiting (local, never reached) + request-transformer (Portcullis only)",
    "s1log": "S1 route + http-log (batches of 200) + opentelemetry, both shipping to a live receiver (Portcullis only)",
    "s1redis": "S1 route + rate-limiting, policy redis, one round trip per request (Portcullis only)",
    "s1redissync": "S1 route + rate-limiting, policy redis, sync_rate 0.1 s (Portcullis only)",
    "s7": "S7 programmable route: key-auth + rate-limiting + cors + request-transformer (pingap with its equivalent plugins, nginx with the closest stock configuration)",
    "s5bulk": "S5 passthrough by SNI: bulk download (4 connections, 32 MiB responses over end-to-end TLS)",
    "s5conn": "S5 passthrough by SNI: new connections per second (full TLS handshake with the upstream, 32 concurrent)",
    "s6": "S6 HTTP/2 over TLS (h2load: 4 connections x 100 concurrent streams, 13-byte responses)",
}
ORDER = ["direct", "portcullis", "nginx", "haproxy", "caddy", "pingap"]
PEERS = ["nginx", "haproxy"]
# Gateways of the same kind as Portcullis: pingap (Pingora too) and Caddy (Go).
NEW_PEERS = ["pingap", "caddy"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def times(x):
    return "–" if x is None else f"{x:,.2f}×"


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    meta = {}
    for r in rows:
        if r.get("kind") == "meta":
            meta.update({k: v for k, v in r.items() if k != "kind"})
    load = [r for r in rows if r.get("kind") == "load"]
    mem = [r for r in rows if r.get("kind") == "mem"]
    skips = [r for r in rows if r.get("kind") == "skip"]
    notes = [r for r in rows if r.get("kind") == "note"]
    out = []
    p = out.append
    p(f"Run {meta.get('start', '?')} (git {meta.get('git', '?')}); machine: {meta.get('machine', '?')}")
    p(f"Versions: {meta.get('versions', '?')}")
    if "binary" in meta:
        p(f"Portcullis binary: {meta['binary']}")
    st = meta.get("settings", {})
    p(
        f"Settings: {st.get('duration')} s measured after {st.get('warmup')} s warm-up, "
        f"{st.get('repeats')} interleaved repeats; client on CPU {st.get('client_cpu')}, "
        f"proxy + upstream on CPU {st.get('server_cpu')}"
    )
    loads = {k: v for k, v in meta.items() if k.startswith("loadavg")}
    p("Load average (1/5/15 min): " + ", ".join(f"{k[8:]} {v}" for k, v in loads.items()))
    p("")

    summary = []
    for s in TITLES:
        rs = [r for r in load if r["scenario"] == s]
        if not rs:
            continue
        bulk = s == "s5bulk"
        unit = "Gbit/s" if bulk else "req/s"
        key = "gbps" if bulk else "rps"
        p(f"### {TITLES[s]}")
        p("")
        extra = {"s3": " | upstream conns", "s6": " | h2load request time mean ± sd (max) ms"}.get(s, "")
        per = "proxy CPU ms/GiB" if bulk else "proxy CPU µs/req"
        p(
            f"| system | {unit} median (min–max) | p50 ms | p99 ms | proxy CPU s | {per} "
            f"| ctx switches/req | upstream CPU s | peak RSS MiB | client CPU | errors{extra} |"
        )
        p("|---|---|---|---|---|---|---|---|---|---|---" + ("|---" if extra else "") + "|")
        agg = {}
        for sys_ in ORDER:
            x = [r for r in rs if r["system"] == sys_]
            if not x:
                continue
            thr = [r[key] for r in x]
            cpu = [r["proxy_cpu_s"] for r in x]
            if bulk:
                # Per GiB moved: the bulk responses are 32 MiB each.
                per_req = [
                    r["proxy_cpu_s"] / (r["bytes"] / 2**30) * 1e3
                    for r in x
                    if r["proxy_cpu_s"] is not None and r["bytes"]
                ]
            else:
                per_req = [
                    r["proxy_cpu_s"] / r["requests"] * 1e6
                    for r in x
                    if r["proxy_cpu_s"] is not None and r["requests"]
                ]
            rss = [r["peak_rss_kib"] / 1024 for r in x if r["peak_rss_kib"]]
            cs = [
                r["ctx_switches"] / r["requests"]
                for r in x
                if r.get("ctx_switches") is not None and r["requests"]
            ]
            a = {
                "thr": med(thr),
                "p50": med([r["p50_ms"] for r in x]),
                "p99": med([r["p99_ms"] for r in x]),
                "cpu": med(per_req),
            }
            agg[sys_] = a
            lo, hi = spread(thr)
            nd = 2 if bulk else 0
            errors = sum(r["errors"] for r in x)
            up = ""
            if s == "s3":
                up = f" | {fmt(med([r['upstream_conns'] for r in x]))}"
            elif s == "s6":
                up = (
                    f" | {fmt(med([r.get('h2_mean_ms') for r in x]), 2)} ± "
                    f"{fmt(med([r.get('h2_sd_ms') for r in x]), 2)} "
                    f"({fmt(med([r.get('h2_max_ms') for r in x]), 2)})"
                )
            p(
                f"| {sys_} | {fmt(a['thr'], nd)} ({fmt(lo, nd)}–{fmt(hi, nd)}) | {fmt(a['p50'], 2)} "
                f"| {fmt(a['p99'], 2)} | {fmt(med(cpu), 2)} | {fmt(med(per_req), 1)} "
                f"| {fmt(med(cs), 2)} | {fmt(med([r['upstream_cpu_s'] for r in x]), 2)} | {fmt(med(rss), 1)} "
                f"| {fmt(med([r['client_util'] * 100 for r in x]))} % | {errors}{up} |"
            )
        tls = sorted({f"{r['system']}: {r['tls']}" for r in rs if r.get("tls")})
        if tls:
            offered = "X25519MLKEM768" if s == "s4pq" else "X25519"
            p(f"Negotiated (client offers only the {offered} group): " + "; ".join(tls))
        if s == "s6":
            p(
                "h2load reports only min/max/mean/sd of the request time; p50 and p99 are computed "
                "from its per-request log (--log-file) over the requests started after the warm-up."
            )
        differ = [r for r in notes if r.get("scenario") == s]
        if differ:
            p("Differences: " + "; ".join(f"{r['system']}: {r['note']}" for r in differ))
        not_run = [r for r in skips if r.get("scenario") == s]
        if not_run:
            p("Not run: " + "; ".join(f"{r['system']} ({r['reason']})" for r in not_run))
        p("")
        pc = agg.get("portcullis")
        d = agg.get("direct")

        def ratios(group):
            peers = [(agg[k]["thr"], k) for k in group if k in agg and agg[k]["thr"] is not None]
            if not (pc and peers):
                return None
            best_thr, best = max(peers)
            b = agg[best]
            return (
                best,
                pc["thr"] / best_thr if best_thr else None,
                pc["cpu"] / b["cpu"] if pc["cpu"] and b["cpu"] else None,
                pc["p99"] / b["p99"] if b["p99"] else None,
                pc["thr"] / d["thr"] if d and d["thr"] else None,
                b["thr"] / d["thr"] if d and d["thr"] else None,
            )

        classic, new = ratios(PEERS), ratios(NEW_PEERS)
        if classic or new:
            summary.append((s, classic, new))
    pq = [
        [r for r in load if r["scenario"] == s and r["system"] == "portcullis"]
        for s in ("s4", "s4pq")
    ]
    if all(pq):
        classic, hybrid = (med([r["rps"] for r in x]) for x in pq)
        cpu = [
            med([r["proxy_cpu_s"] / r["requests"] * 1e6 for r in x if r["requests"]])
            for x in pq
        ]
        p("### Post-quantum handshake cost (Portcullis, S4pq against S4)")
        p("")
        p("| group | handshakes/s | proxy CPU µs/handshake |")
        p("|---|---|---|")
        p(f"| X25519 | {fmt(classic)} | {fmt(cpu[0], 1)} |")
        p(f"| X25519MLKEM768 | {fmt(hybrid)} | {fmt(cpu[1], 1)} |")
        p(
            f"| ratio | {fmt(hybrid / classic if classic else None, 2)}× "
            f"| {fmt(cpu[1] / cpu[0] if cpu[0] else None, 2)}× |"
        )
        p("")
    plugin_scenarios = ["s1keyauth", "s1jwt", "s1traffic", "s1log", "s7", "s1redis", "s1redissync"]
    base = [r for r in load if r["scenario"] == "s1" and r["system"] == "portcullis"]
    priced = [
        (s, [r for r in load if r["scenario"] == s and r["system"] == "portcullis"])
        for s in plugin_scenarios
    ]
    priced = [(s, x) for s, x in priced if x]
    if base and priced:

        def cpu_per_req(x):
            return med([r["proxy_cpu_s"] / r["requests"] * 1e6 for r in x if r["requests"]])

        b_cpu, b_thr = cpu_per_req(base), med([r["rps"] for r in base])
        p("### Plugin cost on the S1 route (Portcullis, against S1 in this run)")
        p("")
        p("| scenario | req/s | proxy CPU µs/req | CPU / S1 | req/s / S1 |")
        p("|---|---|---|---|---|")
        p(f"| s1 (no plugin) | {fmt(b_thr)} | {fmt(b_cpu, 1)} | 1.00× | 1.00× |")
        for s, x in priced:
            c, t = cpu_per_req(x), med([r["rps"] for r in x])
            p(
                f"| {s} | {fmt(t)} | {fmt(c, 1)} | {fmt(c / b_cpu if b_cpu else None, 2)}× "
                f"| {fmt(t / b_thr if b_thr else None, 2)}× |"
            )
        p("")
    if summary:
        for title, idx, peers_name in (
            ("Ratios against the better of nginx and HAProxy (medians of this run)", 1, "nginx/HAProxy"),
            ("Ratios against the better of pingap and Caddy (medians of this run)", 2, "pingap/Caddy"),
        ):
            rows_ = [(x[0], x[idx]) for x in summary if x[idx]]
            if not rows_:
                continue
            p(f"### {title}")
            p("")
            p(
                f"| scenario | better of {peers_name} | Portcullis / peer throughput "
                "| Portcullis / peer proxy CPU per request | Portcullis / peer p99 "
                "| Portcullis / direct | peer / direct |"
            )
            p("|---|---|---|---|---|---|---|")
            for s, (best, thr, cpu, p99, direct, peer_direct) in rows_:
                p(
                    f"| {s} | {best} | {times(thr)} | {times(cpu)} | {times(p99)} "
                    f"| {times(direct)} | {times(peer_direct)} |"
                )
            p("")
        p("Proxy CPU per request: per GiB in s5bulk; below 1× is less CPU than the peer.")
        p("")
    old_mem = [m for m in mem if "conns_1000_rss_kib" in m]
    new_mem = [m for m in mem if "held_rss_kib" in m]
    big = [m for m in mem if "peak_rss_kib" in m]
    if old_mem:
        p("### Memory (VmRSS)")
        p("")
        p("| system | idle MiB | 1,000 keep-alive connections MiB | notes |")
        p("|---|---|---|---|")
        for m in old_mem:
            p(
                f"| {m['system']} | {fmt(m['idle_rss_kib'] / 1024, 1)} "
                f"| {fmt(m['conns_1000_rss_kib'] / 1024, 1)} | {m['conns_open']} connections open |"
            )
        p("")
    if new_mem:
        n = max(m["conns"] for m in new_mem)

        def per_conn(m):
            opened = m["conns_open"] or m["conns"]
            return (m["held_rss_kib"] - m["idle_rss_kib"]) / opened if opened else None

        by = {(m["system"], m["proto"]): m for m in new_mem}
        p(f"### Memory per idle keep-alive connection (VmRSS, {n:,} connections)")
        p("")
        p(
            "HTTP: S1's configuration, one request per connection; TLS: S2's, a full handshake and "
            "one request per connection. KiB per connection = (RSS with the connections − RSS idle) "
            "/ connections open; × nginx = that figure over nginx's."
        )
        p("")
        p(
            f"| system | idle MiB (HTTP / TLS) | HTTP: {n:,} conns MiB | HTTP KiB/conn | HTTP × nginx "
            f"| TLS: {n:,} conns MiB | TLS KiB/conn | TLS × nginx | connections open (HTTP / TLS) |"
        )
        p("|---|---|---|---|---|---|---|---|---|")
        systems = [x for x in ORDER if any(k[0] == x for k in by)]
        for sys_ in systems:
            h, t = by.get((sys_, "http")), by.get((sys_, "tls"))
            cells = []
            for m in (h, t):
                base = by.get(("nginx", m["proto"])) if m else None
                pc = per_conn(m) if m else None
                bc = per_conn(base) if base else None
                cells.append(
                    (
                        fmt(m["held_rss_kib"] / 1024, 1) if m else "–",
                        fmt(pc, 1),
                        times(pc / bc if pc is not None and bc else None),
                    )
                )
            idle = " / ".join(fmt(m["idle_rss_kib"] / 1024, 1) if m else "–" for m in (h, t))
            opened = " / ".join(
                (f"{m['conns_open']:,}" + (f" ({m['conns_failed']} failed)" if m.get("conns_failed") else ""))
                if m
                else "–"
                for m in (h, t)
            )
            p(
                f"| {sys_} | {idle} | {cells[0][0]} | {cells[0][1]} | {cells[0][2]} "
                f"| {cells[1][0]} | {cells[1][1]} | {cells[1][2]} | {opened} |"
            )
        p("")
    if big:
        p("### Memory with a large configuration (VmRSS)")
        p("")
        p("| system | idle MiB | notes |")
        p("|---|---|---|")
        for m in big:
            p(
                f"| {m['system']} | {fmt(m['idle_rss_kib'] / 1024, 1)} | peak "
                f"{fmt(m['peak_rss_kib'] / 1024, 1)} MiB; listening {m['startup_s']} s after start; "
                f"probe request → {m['probe_status']} |"
            )
        p("")
    if skips:
        p("### Not measured, and why")
        p("")
        p("| system | scenario | reason |")
        p("|---|---|---|")
        for r in sorted(skips, key=lambda r: (r["scenario"] != "*", ORDER.index(r["system"]) if r["system"] in ORDER else 99, r["scenario"])):
            p(f"| {r['system']} | {'all' if r['scenario'] == '*' else r['scenario']} | {r['reason']} |")
        p("")
    print("\n".join(out))


def line(text):
    r = json.loads(text)
    cpu = r["proxy_cpu_s"]
    print(
        f"{r['rps']:,.0f} req/s {r['gbps']:.2f} Gbit/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms "
        f"errors {r['errors']} client CPU {r['client_util']:.0%} "
        f"proxy CPU {'-' if cpu is None else f'{cpu:.2f} s'}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--line":
        line(sys.argv[2])
        sys.exit(0)
    main(sys.argv[1] if len(sys.argv) > 1 else "target/bench-load/results.jsonl")
