//! Shared black-box test harness: a generated PKI, in-process upstreams, the real gateway binary
//! on ephemeral ports, and clients (curl, raw HTTP, a TLS probe).
//!
//! Each integration test file starts with `mod common;` and uses the part it needs, hence the
//! `#[allow(dead_code)]` on public items.

#![allow(dead_code)]

pub mod client;
pub mod gateway;
pub mod metrics;
pub mod pki;
pub mod receiver;
pub mod upstream;

#[allow(unused_imports)]
pub use client::{http_get, raw_exchange, raw_request, s_client, Curl, Response, Served, TlsProbe};
#[allow(unused_imports)]
pub use gateway::{check, check_dir, CheckOutput, ConfDir, Gateway, GatewayBuilder, Ports};
#[allow(unused_imports)]
pub use pki::{dn_string, indent, serial_hex, Leaf, LeafSpec, Pki, Usage, Validity};
#[allow(unused_imports)]
pub use receiver::{wait_until, HttpReceiver, Received};
#[allow(unused_imports)]
pub use upstream::{closed_port, ClientAuth, HttpEcho, HttpsEcho, TlsBackend};

use std::net::TcpListener;
use std::path::PathBuf;

/// A listener on 127.0.0.1 at a port below the kernel's ephemeral range (32768–60999 here), for
/// ports handed to a process that binds them a moment later. A port from `127.0.0.1:0` comes from
/// the ephemeral range, where any outgoing connection of a parallel test may take it as its
/// source port in that moment ("Address already in use" under a suite that opens hundreds of
/// connections); below the range only another listener can.
///
/// Each port is also claimed for the whole run with a marker file shared by every test process
/// (nextest runs each test in its own): a port one test reserved, released and handed to its
/// gateway is never reserved again by another test in the moment before that gateway binds it.
/// Without the claim, the second test's gateway could win the port and the first test's requests
/// reach the wrong gateway (seen as one 502-instead-of-200 and one empty reply in full runs).
pub fn reserve_listener() -> TcpListener {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..2000 {
        let mut h = state.build_hasher();
        h.write_u64(attempt);
        let port = 10_000 + (h.finish() % 22_000) as u16;
        if !claim_port(port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l;
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// Claims `port` for this run: creates its marker file exclusively. A marker older than the
/// longest a test run takes is from an earlier run and is taken over.
fn claim_port(port: u16) -> bool {
    const STALE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
    let dir = std::env::temp_dir().join("portcullis-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let marker = dir.join(port.to_string());
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
    };
    if create() {
        return true;
    }
    let stale = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE);
    // Two processes taking over the same stale marker at once can both succeed; that only
    // reopens, for that port and moment, the race the markers close.
    stale && std::fs::remove_file(&marker).is_ok() && create()
}

/// A port on 127.0.0.1 that was free a moment ago (the listener is dropped before returning).
pub fn free_port() -> u16 {
    reserve_listener()
        .local_addr()
        .map(|a| a.port())
        .expect("local addr")
}

/// `N` distinct free ports: the listeners are held together until all are known, so the kernel
/// cannot hand the same ephemeral port out twice, and none equals a port in `taken`.
pub fn free_ports<const N: usize>(taken: &[u16]) -> [u16; N] {
    let mut held = Vec::new();
    let mut out = [0u16; N];
    let mut n = 0;
    while n < N {
        let l = reserve_listener();
        let port = l.local_addr().expect("local addr").port();
        held.push(l);
        if !taken.contains(&port) {
            out[n] = port;
            n += 1;
        }
    }
    out
}

/// The repository root (for the example `conf/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Asserts an error body is exactly `{"message": message, "request_id": <the X-Request-Id header>}`.
pub fn assert_error_body(resp: &Response, status: u16, message: &str) {
    assert_eq!(
        resp.status,
        status,
        "status; response: {resp:#?} body={}",
        resp.text()
    );
    let body = resp.json();
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {}", resp.text()));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["message", "request_id"],
        "error body keys: {}",
        resp.text()
    );
    assert_eq!(body["message"], message, "error message: {}", resp.text());
    let rid = resp
        .header("x-request-id")
        .unwrap_or_else(|| panic!("error response without X-Request-Id: {resp:#?}"));
    assert!(!rid.is_empty(), "empty X-Request-Id");
    assert_eq!(
        body["request_id"], rid,
        "request_id must equal X-Request-Id"
    );
}

pub mod keepalive;
#[allow(unused_imports)]
pub use keepalive::{KaError, KaResponse, KeepAlive};
