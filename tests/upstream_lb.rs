//! Black-box tests of upstreams and targets (issue 3): weighted round-robin, least-connections,
//! consistent hashing on a header and on the client IP, active health checks (http on plain
//! targets, https with the service's TLS profile), passive checks from proxied traffic, retries of
//! connect failures on another target, 503 when no target is healthy, targets given as host
//! names, and `portcullis_upstream_target_health{upstream,target,state}`.
//!
//! Everything runs against the real binary and real upstreams on 127.0.0.1; waits are deadline
//! loops on an observable condition (a metric, a counter), never fixed sleeps.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const HEALTH: &str = "portcullis_upstream_target_health";
const STATES: [&str; 4] = ["healthy", "unhealthy", "dns_error", "healthchecks_off"];
const NO_PEER: &str = "failure to get a peer from the ring-balancer";

/// How long a health transition may take with 0.2 s probe intervals (generous for a loaded CI).
const TRANSITION: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A keep-alive HTTP/1.1 client: hundreds of requests without a curl process each.

/// One answer seen by the client.
#[derive(Debug, Clone)]
struct Hit {
    status: u16,
    /// `x-echo-server` of the answer: which target served it (None for gateway answers).
    server: Option<String>,
    body: String,
}

/// Sends requests on one connection, reconnecting only when the gateway closed it.
struct Client {
    port: u16,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn new(port: u16) -> Client {
        Client {
            port,
            conn: None,
            buf: Vec::new(),
        }
    }

    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Hit {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        // A pooled connection the gateway closed between requests is retried once on a new one.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            match self.exchange(req.as_bytes()) {
                Ok(hit) => return hit,
                Err(e) if reused && attempt == 0 => {
                    let _ = e;
                    self.conn = None;
                }
                Err(e) => panic!("GET {path} on 127.0.0.1:{}: {e}", self.port),
            }
        }
        unreachable!()
    }

    fn exchange(&mut self, req: &[u8]) -> std::io::Result<Hit> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            self.conn = Some(s);
            self.buf.clear();
        }
        let conn = self.conn.as_mut().expect("connected");
        conn.write_all(req)?;
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (resp.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(std::io::Error::other(format!("bad response: {e}"))),
            }
            let mut chunk = [0u8; 16384];
            let n = conn.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed before a response"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        self.buf.drain(..head_len);
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    self.fill()?;
                };
                let size_line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|e| {
                            std::io::Error::other(format!("chunk size {size_line:?}: {e}"))
                        })?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill()?;
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let len = header("content-length")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect()
        };
        if header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.conn = None;
        }
        Ok(Hit {
            status,
            server: header("x-echo-server"),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let conn = self.conn.as_mut().expect("connected");
        let mut chunk = [0u8; 16384];
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed mid-response"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// `n` requests; panics on any answer that is not 200; returns how many each target served.
#[track_caller]
fn all_ok(c: &mut Client, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for i in 0..n {
        let hit = c.get(path, &[]);
        assert_eq!(hit.status, 200, "request {i} to {path}: {hit:?}");
        let server = hit.server.expect("echo answers name their server");
        *tally.entry(server).or_insert(0) += 1;
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// Health state from /metrics.

/// The states whose gauge is 1 for this target (exactly one when the export is right).
fn states(gw: &Gateway, upstream: &str, target: &str) -> Vec<String> {
    let text = gw.metrics();
    STATES
        .iter()
        .filter(|s| {
            metrics::value(
                &text,
                HEALTH,
                &[("upstream", upstream), ("target", target), ("state", s)],
            ) == Some(1.0)
        })
        .map(|s| s.to_string())
        .collect()
}

/// Asserts every state of the target is exported and exactly `state` is 1.
#[track_caller]
fn assert_state(gw: &Gateway, upstream: &str, target: &str, state: &str) {
    let text = gw.metrics();
    for s in STATES {
        let v = metrics::value(
            &text,
            HEALTH,
            &[("upstream", upstream), ("target", target), ("state", s)],
        );
        let want = if s == state { 1.0 } else { 0.0 };
        assert_eq!(
            v,
            Some(want),
            "{HEALTH}{{upstream={upstream:?},target={target:?},state={s:?}}}; have {:#?}",
            metrics::samples(&text, HEALTH)
        );
    }
}

/// Waits until exactly `state` is 1 for the target, running `each` between polls (traffic that
/// must keep succeeding meanwhile).
#[track_caller]
fn wait_state_with(
    gw: &Gateway,
    upstream: &str,
    target: &str,
    state: &str,
    mut each: impl FnMut(),
) {
    let deadline = Instant::now() + TRANSITION;
    loop {
        if states(gw, upstream, target) == [state] {
            assert_state(gw, upstream, target, state);
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{upstream}/{target} not {state} after {TRANSITION:?}: {:?}; {:#?}",
                states(gw, upstream, target),
                metrics::samples(&gw.metrics(), HEALTH)
            );
        }
        each();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[track_caller]
fn wait_state(gw: &Gateway, upstream: &str, target: &str, state: &str) {
    wait_state_with(gw, upstream, target, state, || {});
}

/// A route `/<name>` to a service named `name` whose host is the upstream `upstream`.
fn service(name: &str, scheme: &str, upstream: &str, extra: &str) -> String {
    let mut y = format!("- name: {name}\n  url: {scheme}://{upstream}\n");
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("  {}\n", line.trim()));
    }
    y.push_str(&format!(
        "  routes:\n  - name: {name}\n    paths: [/{name}]\n"
    ));
    y
}

fn target(addr: &str, weight: u32) -> String {
    format!("  - target: {addr}\n    weight: {weight}\n")
}

/// Active http checks every 0.2 s with thresholds of `n`, on `path`.
fn active_http(path: &str, n: u32) -> String {
    format!(
        "  healthchecks:
    active:
      type: http
      http_path: {path}
      timeout: 1
      healthy:
        interval: 0.2
        successes: {n}
      unhealthy:
        interval: 0.2
        tcp_failures: {n}
        http_failures: {n}
        timeouts: {n}
"
    )
}

// ---------------------------------------------------------------------------------------------

#[test]
fn weighted_round_robin_follows_the_weights() {
    let light = HttpEcho::start("light");
    let heavy = HttpEcho::start("heavy");
    let off = HttpEcho::start("off");
    let yaml = format!(
        "upstreams:\n- name: weighted\n  targets:\n{}{}{}services:\n{}",
        target(&light.addr(), 100),
        target(&heavy.addr(), 300),
        target(&off.addr(), 0),
        service("w", "http", "weighted", ""),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::new(gw.http_port());
    let tally = all_ok(&mut c, "/w", 400);
    let light_n = tally.get("light").copied().unwrap_or(0);
    let heavy_n = tally.get("heavy").copied().unwrap_or(0);
    assert_eq!(light_n + heavy_n, 400, "{tally:?}");
    // Expected 100/300; ±15 % of the light share leaves room for another algorithm that is
    // still weighted, and none for an unweighted one (200/200).
    assert!(
        (85..=115).contains(&light_n),
        "weights 100/300 over 400 requests gave {tally:?}"
    );
    assert!(
        !tally.contains_key("off"),
        "a weight 0 target must get no traffic: {tally:?}"
    );
    assert_eq!(off.requests(), 0);
}

#[test]
fn least_connections_prefers_the_idle_target() {
    let a = HttpEcho::start("a");
    let b = HttpEcho::start("b");
    let yaml = format!(
        "upstreams:\n- name: lc\n  algorithm: least-connections\n  targets:\n{}{}services:\n{}",
        target(&a.addr(), 100),
        target(&b.addr(), 100),
        service("lc", "http", "lc", "read_timeout: 20000"),
    );
    let gw = Gateway::start(&yaml);
    let port = gw.http_port();

    // One slow request keeps a target busy...
    let slow = std::thread::spawn(move || {
        Curl::at("http", "lb.test", port, "/lc")
            .header("x-echo-delay-ms: 3000")
            .run()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.requests() + b.requests() < 1 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (busy, idle) = if a.requests() == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };

    // ...so every request meanwhile goes to the other one (round-robin would alternate).
    let mut c = Client::new(port);
    let tally = all_ok(&mut c, "/lc", 10);
    assert_eq!(
        tally.get(idle).copied(),
        Some(10),
        "with {busy} busy, the idle {idle} must take every request: {tally:?}"
    );
    let slow = slow.join().expect("slow request thread");
    assert_eq!(slow.status, 200, "slow request: {slow:?}");
    assert_eq!(slow.json()["server"], busy);

    // Nothing in flight any more: ties again, both targets serve (the count went back to 0).
    let tally = all_ok(&mut c, "/lc", 10);
    assert!(
        tally.get("a").copied().unwrap_or(0) >= 3 && tally.get("b").copied().unwrap_or(0) >= 3,
        "idle targets must share the load again: {tally:?}"
    );
}

#[test]
fn consistent_hashing_on_a_header_is_sticky_and_moves_only_the_keys_of_a_lost_target() {
    let echoes: Vec<HttpEcho> = ["h0", "h1", "h2"]
        .iter()
        .map(|n| HttpEcho::start(n))
        .collect();
    let targets: String = echoes.iter().map(|e| target(&e.addr(), 100)).collect();
    let yaml = format!(
        "upstreams:
- name: by-header
  algorithm: consistent-hashing
  hash_on: header
  hash_on_header: X-Tenant
  healthchecks:
    passive:
      unhealthy:
        http_failures: 1
  targets:
{targets}services:
{}",
        service("hh", "http", "by-header", ""),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::new(gw.http_port());
    let tenants: Vec<String> = (0..48).map(|t| format!("tenant-{t}")).collect();
    let mut placement: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        for tenant in &tenants {
            let hit = c.get("/hh", &[("x-tenant", tenant)]);
            assert_eq!(hit.status, 200, "{hit:?}");
            let server = hit.server.expect("server");
            match placement.get(tenant) {
                Some(first) => assert_eq!(
                    first, &server,
                    "{tenant} moved from {first} to {server} in round {round}"
                ),
                None => {
                    placement.insert(tenant.clone(), server);
                }
            }
        }
    }
    let used: BTreeSet<&String> = placement.values().collect();
    assert_eq!(
        used.len(),
        3,
        "48 keys over 3 equal targets must reach all of them: {placement:?}"
    );
    // Without the header the request is still served (Kong falls back to round-robin).
    assert_eq!(c.get("/hh", &[]).status, 200);

    // h0 fails once and is ejected: its keys move, every other key stays where it was.
    echoes[0].set_status(Some(500));
    let victim = placement
        .iter()
        .find(|(_, s)| *s == "h0")
        .map(|(t, _)| t.clone())
        .expect("a key on h0");
    let hit = c.get("/hh", &[("x-tenant", &victim)]);
    assert_eq!(
        (hit.status, hit.server.as_deref()),
        (500, Some("h0")),
        "{hit:?}"
    );
    wait_state(&gw, "by-header", &echoes[0].addr(), "unhealthy");
    for tenant in &tenants {
        let hit = c.get("/hh", &[("x-tenant", tenant)]);
        assert_eq!(hit.status, 200, "{tenant}: {hit:?}");
        let server = hit.server.expect("server");
        if placement[tenant] == "h0" {
            assert_ne!(server, "h0", "{tenant} still on the ejected target");
        } else {
            assert_eq!(
                server, placement[tenant],
                "{tenant} moved although its target is healthy"
            );
        }
    }
}

#[test]
fn consistent_hashing_on_the_client_ip_is_sticky() {
    let echoes: Vec<HttpEcho> = ["i0", "i1", "i2"]
        .iter()
        .map(|n| HttpEcho::start(n))
        .collect();
    let targets: String = echoes.iter().map(|e| target(&e.addr(), 100)).collect();
    let yaml = format!(
        "upstreams:\n- name: by-ip\n  algorithm: consistent-hashing\n  hash_on: ip\n  targets:\n{targets}services:\n{}",
        service("ip", "http", "by-ip", ""),
    );
    let gw = Gateway::start(&yaml);
    // Every 127.0.0.0/8 address is local on Linux: curl --interface gives distinct client IPs.
    let mut placement: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..2 {
        for last in 2..18 {
            let ip = format!("127.0.0.{last}");
            let r = Curl::at("http", "lb.test", gw.http_port(), "/ip")
                .arg("--interface")
                .arg(&ip)
                .run();
            assert_eq!(r.status, 200, "from {ip}: {r:?} {}", r.text());
            assert_eq!(
                r.echo_header("x-real-ip").as_deref(),
                Some(ip.as_str()),
                "the gateway must see the client address"
            );
            let server = r.json()["server"].as_str().expect("server").to_string();
            match placement.get(&ip) {
                Some(first) => assert_eq!(
                    first, &server,
                    "client {ip} moved from {first} to {server} in round {round}"
                ),
                None => {
                    placement.insert(ip, server);
                }
            }
        }
    }
    let used: BTreeSet<&String> = placement.values().collect();
    assert!(
        used.len() >= 2,
        "16 client addresses over 3 targets all landed on one: {placement:?}"
    );
}

/// SPEC §3 spells the probe interval `healthchecks.active.interval` (Kong: one per state under
/// `healthy` / `unhealthy`): it probes in both states.
#[test]
fn active_interval_at_the_active_level_probes_in_both_states() {
    let mut a = HttpEcho::start("a");
    let yaml = format!(
        "upstreams:
- name: flat
  healthchecks:
    active:
      type: tcp
      interval: 0.2
      healthy:
        successes: 1
      unhealthy:
        tcp_failures: 1
  targets:
{}services:
{}",
        target(&a.addr(), 100),
        service("flat", "http", "flat", ""),
    );
    let gw = Gateway::start(&yaml);
    let ta = a.addr();
    wait_state(&gw, "flat", &ta, "healthy");
    a.stop();
    wait_state(&gw, "flat", &ta, "unhealthy");
    a.restart();
    wait_state(&gw, "flat", &ta, "healthy");
}

#[test]
fn active_http_checks_eject_a_dead_or_sick_target_and_restore_it() {
    let a = HttpEcho::start("a");
    let mut b = HttpEcho::start("b");
    let yaml = format!(
        "upstreams:\n- name: act\n{}  targets:\n{}{}services:\n{}",
        active_http("/healthz", 2),
        target(&a.addr(), 100),
        target(&b.addr(), 100),
        service("act", "http", "act", "retries: 2"),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::new(gw.http_port());
    let (ta, tb) = (a.addr(), b.addr());
    wait_state(&gw, "act", &ta, "healthy");
    wait_state(&gw, "act", &tb, "healthy");
    let tally = all_ok(&mut c, "/act", 10);
    assert_eq!(
        tally.len(),
        2,
        "both targets serve while healthy: {tally:?}"
    );

    // The probes keep coming (proxied requests are over).
    let seen = b.requests();
    let deadline = Instant::now() + TRANSITION;
    while b.requests() < seen + 2 {
        assert!(Instant::now() < deadline, "no active probe reached b");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Sick: b answers 500 (probes included) while still up; two failed probes eject it.
    b.set_status(Some(500));
    wait_state(&gw, "act", &tb, "unhealthy");
    assert_state(&gw, "act", &ta, "healthy");
    let tally = all_ok(&mut c, "/act", 20);
    assert_eq!(
        tally.get("a"),
        Some(&20),
        "an ejected target gets no traffic: {tally:?}"
    );
    b.set_status(None);
    wait_state(&gw, "act", &tb, "healthy");
    let deadline = Instant::now() + TRANSITION;
    while !all_ok(&mut c, "/act", 4).contains_key("b") {
        assert!(
            Instant::now() < deadline,
            "b never served again after recovering"
        );
    }

    // Dead: b stops listening. Clients never see an error: before the probes notice, a refused
    // connection is retried on a; afterwards b is not even tried.
    b.stop();
    wait_state_with(&gw, "act", &tb, "unhealthy", || {
        let hit = c.get("/act", &[]);
        assert_eq!(
            hit.status, 200,
            "a request while b was being ejected failed: {hit:?}"
        );
    });
    let tally = all_ok(&mut c, "/act", 20);
    assert_eq!(tally.get("a"), Some(&20), "{tally:?}");

    // Back: probes see it answer again and traffic returns.
    b.restart();
    wait_state(&gw, "act", &tb, "healthy");
    let deadline = Instant::now() + TRANSITION;
    while !all_ok(&mut c, "/act", 4).contains_key("b") {
        assert!(
            Instant::now() < deadline,
            "b never served again after restart"
        );
    }
}

#[test]
fn passive_checks_eject_on_tcp_and_http_failures_and_active_probes_restore() {
    let a = HttpEcho::start("a");
    let mut b = HttpEcho::start("b");
    // Healthy targets are never probed (healthy.interval 0): only proxied traffic can eject.
    // Unhealthy ones are probed, which is how they come back (Kong: passive checks alone
    // never re-enable a target).
    let yaml = format!(
        "upstreams:
- name: pas
  healthchecks:
    active:
      type: http
      http_path: /
      healthy:
        interval: 0
        successes: 1
      unhealthy:
        interval: 0.2
    passive:
      unhealthy:
        tcp_failures: 1
        http_failures: 2
  targets:
{}{}services:
{}",
        target(&a.addr(), 100),
        target(&b.addr(), 100),
        service("pas", "http", "pas", "retries: 1"),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::new(gw.http_port());
    let (ta, tb) = (a.addr(), b.addr());
    assert_state(&gw, "pas", &ta, "healthy");
    assert_state(&gw, "pas", &tb, "healthy");
    let tally = all_ok(&mut c, "/pas", 10);
    assert_eq!(tally.len(), 2, "{tally:?}");
    let probes_before = b.requests() - tally["b"];
    assert_eq!(
        probes_before, 0,
        "healthy targets must not be probed with interval 0"
    );

    // TCP failure: the first request that picks b is retried on a; b is ejected at once.
    b.stop();
    let tally = all_ok(&mut c, "/pas", 10);
    assert_eq!(tally.get("a"), Some(&10), "{tally:?}");
    assert_state(&gw, "pas", &tb, "unhealthy");
    assert_state(&gw, "pas", &ta, "healthy");
    b.restart();
    wait_state(&gw, "pas", &tb, "healthy");
    let deadline = Instant::now() + TRANSITION;
    while !all_ok(&mut c, "/pas", 4).contains_key("b") {
        assert!(
            Instant::now() < deadline,
            "b never served again after restart"
        );
    }

    // HTTP failures: b answers 500. Passive checks learn only from real answers, so clients see
    // the two 500s that cross the threshold, then b is out.
    b.set_status(Some(500));
    let mut failures = 0;
    let deadline = Instant::now() + TRANSITION;
    while failures < 2 {
        assert!(Instant::now() < deadline, "b's 500s never came through");
        let hit = c.get("/pas", &[]);
        match hit.server.as_deref() {
            Some("b") => {
                assert_eq!(hit.status, 500, "{hit:?}");
                failures += 1;
            }
            _ => assert_eq!(hit.status, 200, "{hit:?}"),
        }
    }
    assert_state(&gw, "pas", &tb, "unhealthy");
    let tally = all_ok(&mut c, "/pas", 20);
    assert_eq!(tally.get("a"), Some(&20), "{tally:?}");
    b.set_status(None);
    wait_state(&gw, "pas", &tb, "healthy");
    let deadline = Instant::now() + TRANSITION;
    while !all_ok(&mut c, "/pas", 4).contains_key("b") {
        assert!(
            Instant::now() < deadline,
            "b never served again after recovering"
        );
    }
}

#[test]
fn connect_failures_are_retried_on_another_target_up_to_retries() {
    let a = HttpEcho::start("a");
    let dead = format!("127.0.0.1:{}", closed_port());
    let targets = format!("{}{}", target(&a.addr(), 100), target(&dead, 100));
    let yaml = format!(
        "upstreams:\n- name: r0\n  targets:\n{targets}- name: r1\n  targets:\n{targets}services:\n{}{}",
        service("r0", "http", "r0", "retries: 0"),
        service("r1", "http", "r1", "retries: 1"),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::new(gw.http_port());

    // No health checks: the dead target stays in rotation. With one retry nobody notices.
    let tally = all_ok(&mut c, "/r1", 20);
    assert_eq!(tally.get("a"), Some(&20), "{tally:?}");

    // Without retries every request that picks the dead target fails with Kong's 502.
    let mut codes = BTreeMap::new();
    for _ in 0..10 {
        let hit = c.get("/r0", &[]);
        *codes.entry(hit.status).or_insert(0) += 1;
        if hit.status == 502 {
            assert!(
                hit.body
                    .contains("An invalid response was received from the upstream server"),
                "{hit:?}"
            );
        }
    }
    assert_eq!(
        codes,
        BTreeMap::from([(200, 5), (502, 5)]),
        "round-robin over one live and one dead target without retries"
    );
    assert_state(&gw, "r0", &dead, "healthchecks_off");
}

#[test]
fn no_healthy_target_answers_503_with_kongs_message() {
    let dead1 = format!("127.0.0.1:{}", closed_port());
    let dead2 = format!("127.0.0.1:{}", closed_port());
    let targets = format!("{}{}", target(&dead1, 100), target(&dead2, 100));
    let yaml = format!(
        "upstreams:
- name: probed
  healthchecks:
    active:
      type: tcp
      healthy:
        interval: 0.2
        successes: 1
      unhealthy:
        interval: 0.2
        tcp_failures: 1
  targets:
{targets}- name: passive
  healthchecks:
    passive:
      unhealthy:
        tcp_failures: 1
  targets:
{targets}- name: unchecked
  targets:
{targets}services:
{}{}{}",
        service("probed", "http", "probed", ""),
        service("passive", "http", "passive", ""),
        service("unchecked", "http", "unchecked", ""),
    );
    let gw = Gateway::start(&yaml);

    // Active tcp probes eject both; then there is no peer at all.
    wait_state(&gw, "probed", &dead1, "unhealthy");
    wait_state(&gw, "probed", &dead2, "unhealthy");
    let r = Curl::at("http", "lb.test", gw.http_port(), "/probed").run();
    assert_error_body(&r, 503, NO_PEER);

    // Passive only: the first request ejects each target as its connection is refused, and
    // ends with no peer left.
    let r = Curl::at("http", "lb.test", gw.http_port(), "/passive").run();
    assert_error_body(&r, 503, NO_PEER);
    assert_state(&gw, "passive", &dead1, "unhealthy");
    assert_state(&gw, "passive", &dead2, "unhealthy");
    let r = Curl::at("http", "lb.test", gw.http_port(), "/passive").run();
    assert_error_body(&r, 503, NO_PEER);

    // Without health checks the targets are never ejected: the connect failure is a 502.
    let r = Curl::at("http", "lb.test", gw.http_port(), "/unchecked").run();
    assert_error_body(
        &r,
        502,
        "An invalid response was received from the upstream server",
    );
}

#[test]
fn target_health_metric_exports_one_state_per_target() {
    let a = HttpEcho::start("a");
    let dead = format!("127.0.0.1:{}", closed_port());
    let unresolvable = "no-such-host.invalid:8080";
    let yaml = format!(
        "upstreams:\n- name: checked\n{}  targets:\n{}{}{}- name: plain\n  targets:\n{}services:\n{}{}",
        active_http("/", 1),
        target(&a.addr(), 100),
        target(&dead, 100),
        target(unresolvable, 100),
        target(&a.addr(), 100),
        service("checked", "http", "checked", ""),
        service("plain", "http", "plain", ""),
    );
    let gw = Gateway::start(&yaml);
    wait_state(&gw, "checked", &dead, "unhealthy");
    assert_state(&gw, "checked", &a.addr(), "healthy");
    assert_state(&gw, "checked", unresolvable, "dns_error");
    assert_state(&gw, "plain", &a.addr(), "healthchecks_off");
    // The unresolvable target is skipped, the dead one ejected: a alone serves.
    let mut c = Client::new(gw.http_port());
    assert_eq!(all_ok(&mut c, "/checked", 6).get("a"), Some(&6));
}

#[test]
fn targets_given_as_host_names_are_resolved() {
    let a = HttpEcho::start("a");
    let b = HttpEcho::start("b");
    let (ta, tb) = (
        format!("localhost:{}", a.port()),
        format!("localhost:{}", b.port()),
    );
    let yaml = format!(
        "upstreams:\n- name: named\n{}  targets:\n{}{}services:\n{}",
        active_http("/", 1),
        target(&ta, 100),
        target(&tb, 100),
        service("named", "http", "named", ""),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::new(gw.http_port());
    let tally = all_ok(&mut c, "/named", 10);
    assert_eq!(
        (tally.get("a"), tally.get("b")),
        (Some(&5), Some(&5)),
        "{tally:?}"
    );
    // Kong sends the target's host name upstream.
    let r = Curl::at("http", "lb.test", gw.http_port(), "/named").run();
    let host = r.echo_header("host").expect("host header");
    assert!(host == ta || host == tb, "Host sent upstream: {host}");
    wait_state(&gw, "named", &ta, "healthy");
    assert_state(&gw, "named", &tb, "healthy");
}

#[test]
fn https_active_checks_use_the_service_tls_profile() {
    let pki = Pki::new();
    // Requires a client certificate from `root`; serves root → intermediate → leaf.
    let mtls = HttpsEcho::start_with(
        "mtls",
        &pki.server.chain_path,
        &pki.server.key_path,
        ClientAuth::Required(pki.root.cert_path.clone()),
    );
    let plain = HttpsEcho::start("plain", &pki.server.chain_path, &pki.server.key_path);
    let t_mtls = mtls.addr();
    let t_plain = plain.addr();
    let https_check = |verify: bool| {
        format!(
            "  healthchecks:
    active:
      type: https
      http_path: /
      https_verify_certificate: {verify}
      healthy:
        interval: 0.2
        successes: 1
      unhealthy:
        interval: 0.2
        tcp_failures: 1
        http_failures: 1
"
        )
    };
    let up = |name: &str, t: &str, verify: bool| {
        format!(
            "- name: {name}\n{}  targets:\n{}",
            https_check(verify),
            target(t, 100)
        )
    };
    let yaml = format!(
        "ca_certificates:
- name: root
  cert_file: certs/root.crt
- name: other-root
  cert_file: certs/other-root.crt
certificates:
- name: alice
  cert_file: certs/alice.crt
  key_file: certs/alice.key
upstreams:
{}{}{}{}{}{}services:
{}{}{}{}{}{}",
        up("mtls-up", &t_mtls, true),
        up("nocert-up", &t_mtls, true),
        up("wrongca-up", &t_plain, true),
        up("noverify-up", &t_plain, false),
        up("lenient-up", &t_plain, true),
        up("depth-up", &t_plain, true),
        service(
            "mtls",
            "https",
            "mtls-up",
            "ca_certificates: [root]\nclient_certificate: alice\ntls_server_name: localhost"
        ),
        service(
            "nocert",
            "https",
            "nocert-up",
            "ca_certificates: [root]\ntls_server_name: localhost"
        ),
        service(
            "wrongca",
            "https",
            "wrongca-up",
            "ca_certificates: [other-root]\ntls_server_name: localhost"
        ),
        service(
            "noverify",
            "https",
            "noverify-up",
            "ca_certificates: [other-root]\ntls_server_name: localhost"
        ),
        // Proxied traffic unverified, probes verified: against the service's own CAs.
        service(
            "lenient",
            "https",
            "lenient-up",
            "tls_verify: false\nca_certificates: [root]\ntls_server_name: localhost"
        ),
        service(
            "depth",
            "https",
            "depth-up",
            "ca_certificates: [root]\ntls_server_name: localhost\ntls_verify_depth: 0"
        ),
    );
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/other-root.crt", &pki.other_root.cert_pem)
        .file("certs/alice.crt", &pki.alice.cert_pem)
        .file("certs/alice.key", &pki.alice.key_pem)
        .file("gateway.yaml", yaml)
        .start();

    // Probes without the client certificate are refused by the upstream; with a CA that did not
    // issue the chain, or a depth it exceeds, they fail verification.
    wait_state(&gw, "nocert-up", &t_mtls, "unhealthy");
    wait_state(&gw, "wrongca-up", &t_plain, "unhealthy");
    wait_state(&gw, "depth-up", &t_plain, "unhealthy");

    // Probes that succeed keep their targets healthy: wait until each upstream has been probed
    // several times, then look.
    let deadline = Instant::now() + TRANSITION;
    while mtls.requests() < 3 || plain.requests() < 6 {
        assert!(
            Instant::now() < deadline,
            "probes did not reach the upstreams: mtls {} plain {}",
            mtls.requests(),
            plain.requests()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_state(&gw, "mtls-up", &t_mtls, "healthy");
    assert_state(&gw, "noverify-up", &t_plain, "healthy");
    assert_state(&gw, "lenient-up", &t_plain, "healthy");

    // Proxied traffic agrees with the probes.
    let r = Curl::at("http", "lb.test", gw.http_port(), "/mtls").run();
    assert_eq!(r.status, 200, "{r:?} {}", r.text());
    assert!(
        r.json()["client_subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=alice")),
        "{}",
        r.text()
    );
    let r = Curl::at("http", "lb.test", gw.http_port(), "/nocert").run();
    assert_error_body(&r, 503, NO_PEER);
    let r = Curl::at("http", "lb.test", gw.http_port(), "/lenient").run();
    assert_eq!(r.status, 200, "{r:?} {}", r.text());
}

#[test]
fn a_reload_applies_new_probe_trust_and_drops_removed_targets_from_the_metric() {
    let pki = Pki::new();
    let tls = HttpsEcho::start("tls", &pki.server.chain_path, &pki.server.key_path);
    let a = HttpEcho::start("a");
    let b = HttpEcho::start("b");
    let t_tls = tls.addr();
    let conf = |ca: &str, with_b: bool| {
        format!(
            "ca_certificates:
- name: root
  cert_file: certs/root.crt
- name: other-root
  cert_file: certs/other-root.crt
upstreams:
- name: tls-up
  healthchecks:
    active:
      type: https
      http_path: /
      healthy:
        interval: 0.2
        successes: 1
      unhealthy:
        interval: 0.2
        tcp_failures: 1
  targets:
{}- name: plain-up
  targets:
{}{}services:
{}{}",
            target(&t_tls, 100),
            target(&a.addr(), 100),
            if with_b {
                target(&b.addr(), 100)
            } else {
                String::new()
            },
            service(
                "tls",
                "https",
                "tls-up",
                &format!("ca_certificates: [{ca}]\ntls_server_name: localhost"),
            ),
            service("plain", "http", "plain-up", ""),
        )
    };
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/other-root.crt", &pki.other_root.cert_pem)
        .file("gateway.yaml", conf("other-root", true))
        .start();
    wait_state(&gw, "tls-up", &t_tls, "unhealthy");
    assert_state(&gw, "plain-up", &b.addr(), "healthchecks_off");

    // The service now trusts the right CA; the upstream entity itself is unchanged.
    gw.conf().write("gateway.yaml", conf("root", false));
    gw.signal("HUP");
    wait_state(&gw, "tls-up", &t_tls, "healthy");
    let deadline = Instant::now() + TRANSITION;
    while !metrics::samples(&gw.metrics(), HEALTH)
        .iter()
        .all(|s| s.labels.get("target") != Some(&b.addr()))
    {
        assert!(
            Instant::now() < deadline,
            "a removed target still exported: {:#?}",
            metrics::samples(&gw.metrics(), HEALTH)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_state(&gw, "plain-up", &a.addr(), "healthchecks_off");
    let r = Curl::at("http", "lb.test", gw.http_port(), "/tls").run();
    assert_eq!(r.status, 200, "{r:?} {}", r.text());
}

#[test]
fn timeouts_eject_a_slow_target_passively_and_actively() {
    let a = HttpEcho::start("a");
    let b = HttpEcho::start("b");
    let c_echo = HttpEcho::start("c");
    let d = HttpEcho::start("d");
    let yaml = format!(
        "upstreams:
- name: slow-passive
  healthchecks:
    passive:
      unhealthy:
        timeouts: 1
  targets:
{}{}- name: slow-active
  healthchecks:
    active:
      type: http
      http_path: /
      timeout: 0.3
      healthy:
        interval: 0.2
        successes: 1
      unhealthy:
        interval: 0.2
        timeouts: 2
  targets:
{}{}services:
{}{}",
        target(&a.addr(), 100),
        target(&b.addr(), 100),
        target(&c_echo.addr(), 100),
        target(&d.addr(), 100),
        service("sp", "http", "slow-passive", "read_timeout: 300"),
        service("sa", "http", "slow-active", "read_timeout: 300"),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::new(gw.http_port());

    // Passive: the one request that times out on b gets Kong's 504; b is out after it.
    b.set_delay(Duration::from_secs(2));
    let mut timed_out = 0;
    for _ in 0..4 {
        let hit = c.get("/sp", &[]);
        match hit.status {
            200 => assert_eq!(hit.server.as_deref(), Some("a"), "{hit:?}"),
            504 => {
                assert!(
                    hit.body.contains("The upstream server is timing out"),
                    "{hit:?}"
                );
                timed_out += 1;
            }
            _ => panic!("{hit:?}"),
        }
    }
    assert_eq!(timed_out, 1, "only the first request to b may time out");
    assert_state(&gw, "slow-passive", &b.addr(), "unhealthy");
    assert_eq!(all_ok(&mut c, "/sp", 10).get("a"), Some(&10));

    // Active: probes that get no answer within `timeout` count as timeouts.
    d.set_delay(Duration::from_secs(2));
    wait_state(&gw, "slow-active", &d.addr(), "unhealthy");
    assert_state(&gw, "slow-active", &c_echo.addr(), "healthy");
    assert_eq!(all_ok(&mut c, "/sa", 10).get("c"), Some(&10));
    d.set_delay(Duration::ZERO);
    wait_state(&gw, "slow-active", &d.addr(), "healthy");
}
