#!/usr/bin/env python3
"""Reads `callgrind_annotate --inclusive=yes --threshold=100` output on stdin and prints, per
request, the inclusive instruction count of the gateway's own hooks and of the shared costs
(allocator, memcpy, TLS, the Pingora request loop) — the table behind BENCHMARKS.md "Profiles".
Usage: callgrind_annotate ... | hooks.py REQUESTS"""

import re
import sys

PATTERNS = [
    ("whole request loop (Pingora process_new_http)", r"HttpServerApp>::process_new_http::\{\{closure\}\}$"),
    ("Pingora proxy_to_upstream", r"pingora_proxy::HttpProxy<SV,C>::proxy_to_upstream::\{\{closure\}\}$"),
    ("portcullis request_filter (routing, request id, plugins)", r"GatewayProxy as pingora_proxy::proxy_trait::ProxyHttp>::request_filter::\{\{closure\}\}$"),
    ("  of which Router::route", r"portcullis::routing::Router::route$"),
    ("  of which uuid (request id)", r"uuid::v4::<impl uuid::Uuid>::new_v4$"),
    ("  of which plugin access (mtls-auth)", r"MtlsAuth as portcullis_plugin_api::Plugin>::access::\{\{closure\}\}$"),
    ("  of which plugin access (acl)", r"Acl as portcullis_plugin_api::Plugin>::access::\{\{closure\}\}$"),
    ("portcullis upstream_peer", r"GatewayProxy as pingora_proxy::proxy_trait::ProxyHttp>::upstream_peer::\{\{closure\}\}$"),
    ("portcullis upstream_request_filter (X-Forwarded-*, Host, X-Request-Id)", r"GatewayProxy as pingora_proxy::proxy_trait::ProxyHttp>::upstream_request_filter::\{\{closure\}\}$"),
    ("portcullis response_filter", r"GatewayProxy as pingora_proxy::proxy_trait::ProxyHttp>::response_filter::\{\{closure\}\}$"),
    ("portcullis logging (metrics, access log)", r"GatewayProxy as pingora_proxy::proxy_trait::ProxyHttp>::logging::\{\{closure\}\}$"),
    ("portcullis new_ctx", r"GatewayProxy as pingora_proxy::proxy_trait::ProxyHttp>::new_ctx$"),
    ("portcullis TLS certificate_callback", r"portcullis::tls::Acceptor as pingora_core::listeners::tls::boringssl_openssl::TlsAccept>::certificate_callback|Acceptor as .*TlsAccept>::certificate_callback"),
    ("portcullis TLS handshake_complete_callback", r"Acceptor as .*TlsAccept>::handshake_complete_callback"),
    ("upstream TLS handshake hook (verify depth)", r"portcullis::tls::upstream::handshake_hook"),
    ("stream passthrough: whole connection (StreamApp::process_new)", r"StreamApp as pingora_core::apps::ServerApp>::process_new::\{\{closure\}\}$"),
    ("  of which relay buffers (relay::Pipe::new, 2 x 32 KiB zeroed)", r"portcullis::stream::relay::Pipe::new$"),
    ("  of which ClientHello parse", r"portcullis::stream::clienthello::parse$"),
    ("  of which log line + metrics (ConnectionLog::finish)", r"portcullis::stream::ConnectionLog::finish$"),
    ("  of which peer address to_string", r"pingora_core::protocols::l4::socket::SocketAddr as core::fmt::Display>::fmt$"),
    ("Pingora Stream::set_buffer (64 KiB read buffer, zeroed, per connection)", r"pingora_core::protocols::l4::stream::Stream::set_buffer$"),
    ("calloc + memset (zeroed allocations)", r"^calloc$"),
    ("malloc", r"^malloc$"),
    ("free", r"^free$"),
    ("realloc", r"^realloc$"),
    ("memcpy", r"__memcpy_avx_unaligned_erms$"),
    ("OpenSSL SSL_do_handshake", r"^SSL_do_handshake$"),
    ("OpenSSL SSL_read", r"^SSL_read$"),
    ("OpenSSL SSL_write", r"^SSL_write$"),
    ("OpenSSL X509_verify_cert", r"^X509_verify_cert$"),
    ("tokio scheduler (everything run by tasks)", r"tokio::runtime::scheduler::multi_thread::worker::Context::run$"),
    ("pingora fast timeout timer thread", r"pingora_timeout::timer::TimerManager::clock_thread|pingora_timeout::fast_timeout::check_clock_thread"),
]

requests = int(sys.argv[1]) if len(sys.argv) > 1 else 1
line_re = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*?)(?:\s+\[[^\]]*\])?$")
rows = []
for line in sys.stdin:
    m = line_re.match(line.rstrip("\n"))
    if not m:
        continue
    ir = int(m.group(1).replace(",", ""))
    fn = m.group(2)
    fn = fn.split(":", 1)[1] if fn.startswith(("???:", "./", "/")) and ":" in fn else fn
    rows.append((ir, fn))

print(f"{'instructions/request':>22}  what (inclusive, {requests} requests)")
for label, pat in PATTERNS:
    r = re.compile(pat)
    hits = [ir for ir, fn in rows if r.search(fn)]
    if hits:
        # The same function can appear once per monomorphisation; they are distinct code.
        print(f"{sum(hits) / requests:>22,.0f}  {label}")
