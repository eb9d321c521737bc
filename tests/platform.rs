//! The plugin platform through the real binary, with the `platform-probe` plugin (the
//! `test-plugins` feature, which the test command enables): every phase, a panic turned into a
//! 500, a plugin-declared credential kind with located errors, a counter that survives a reload,
//! and a Redis counter shared by two gateway processes.
#![cfg(feature = "test-plugins")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// An upstream that answers `body=<request body>;x-upper=<..>;x-probe-upstream=<..>` with an
/// `X-Remove-Me` header the probe strips.
struct Upstream {
    port: u16,
}

impl Upstream {
    fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let (mut len, mut upper, mut up) = (0usize, String::new(), String::new());
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end().to_string();
                            if h.is_empty() {
                                break;
                            }
                            let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                            match k.to_ascii_lowercase().as_str() {
                                "content-length" => len = v.trim().parse().unwrap_or(0),
                                "x-upper" => upper = v.trim().into(),
                                "x-probe-upstream" => up = v.trim().into(),
                                _ => {}
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let out = format!(
                            "body={};x-upper={upper};x-probe-upstream={up}",
                            String::from_utf8_lossy(&body)
                        );
                        let _ = w.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nx-remove-me: 1\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{out}",
                                out.len()
                            )
                            .as_bytes(),
                        );
                    }
                });
            }
        });
        Upstream { port }
    }
}

fn conf(up: &Upstream, probe_config: &str) -> String {
    format!(
        "consumers:\n- username: alice\n  probe_tokens:\n  - token: t-alice\n- username: bob\n  id: bob-id\nprobe_tokens:\n- consumer: bob\n  token: t-bob\nservices:\n- name: s\n  url: http://127.0.0.1:{}\n  routes:\n  - name: r\n    paths: [/]\nplugins:\n- name: platform-probe\n  config: {probe_config}\n",
        up.port
    )
}

#[test]
fn every_phase_runs_and_edits_what_it_should() {
    let up = Upstream::start();
    let gw = Gateway::start(&conf(&up, "{counter: phases-demo}"));
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);

    // rewrite: answered before routing.
    let r = at("/probe-rewrite").run();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "rewritten before routing");

    // access (header in any case), upstream_request (the chosen peer), response_headers (set and
    // remove upstream headers).
    let r = at("/x").run();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        format!("body=;x-upper=yes;x-probe-upstream={}", up.port)
    );
    assert_eq!(r.header("x-remove-me"), None, "removed by the plugin");
    assert_eq!(r.header("x-probe-from-gateway"), Some("false"));
    let first: i64 = r.header("x-probe-count").unwrap().parse().unwrap();

    // A plugin-declared credential, nested and top level, identifies the consumer.
    let r = at("/x").header("X-Probe-Token: t-bob").run();
    assert_eq!(r.status, 200);
    let r = at("/x").header("X-Probe-Token: nope").run();
    assert_error_body(&r, 401, "Invalid authentication credentials");
    assert_eq!(
        r.header("x-probe-from-gateway"),
        Some("true"),
        "header phase on the gateway's own answer"
    );
    assert!(gw.metrics().contains(
        "portcullis_auth_failures_total{plugin=\"platform-probe\",reason=\"invalid_token\",route=\"r\"} 1"
    ));

    // The counter lives in the process-wide store: an unrelated reload does not reset it.
    let before = gw.status()["config_hash"].clone();
    gw.conf().write(
        "extra.yaml",
        "services:\n- name: other\n  url: http://127.0.0.1:9\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gw.status()["config_hash"] == before {
        assert!(
            std::time::Instant::now() < deadline,
            "reload did not happen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = at("/x").run();
    let after: i64 = r.header("x-probe-count").unwrap().parse().unwrap();
    assert_eq!(
        after,
        first + 2,
        "counted across the reload (the 401 stopped before counting)"
    );
}

#[test]
fn body_phases_replace_request_and_response_bodies_and_refuse_large_ones() {
    let up = Upstream::start();
    let gw = Gateway::start(&conf(
        &up,
        "{upper_request_body: true, reverse_response_body: true, max_body: 8}",
    ));
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);
    let r = at("/x").method("POST").data("hello").run();
    assert_eq!(r.status, 200);
    let expected: String = format!("body=HELLO;x-upper=yes;x-probe-upstream={}", up.port)
        .chars()
        .rev()
        .collect();
    assert_eq!(
        r.text(),
        expected,
        "request body upper-cased upstream, response reversed"
    );

    // A body over the request-body phase's limit.
    let r = at("/x").method("POST").data("0123456789abcdef").run();
    assert_error_body(&r, 413, "Request size limit exceeded");

    // Beyond the 64 KiB buffer a body-buffering route answers 413 too.
    let big = vec![b'a'; 70 * 1024];
    let r = at("/x").method("POST").data(big).run();
    assert_error_body(&r, 413, "Request size limit exceeded");
}

#[test]
fn a_panicking_plugin_gets_500_and_a_log_line_and_others_are_served() {
    let up = Upstream::start();
    let gw = Gateway::start(&conf(&up, "{panic_in: access}"));
    let r = Curl::at("http", "example.com", gw.http_port(), "/x").run();
    assert_error_body(&r, 500, "An unexpected error occurred");
    assert!(
        gw.wait_for_log("plugin panicked", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    assert!(gw
        .metrics()
        .contains("portcullis_plugin_panics_total{phase=\"access\",plugin=\"platform-probe\"} 1"));
    // The gateway keeps serving.
    assert_eq!(
        Curl::at("http", "example.com", gw.http_port(), "/probe-rewrite")
            .run()
            .status,
        200
    );

    let gw = Gateway::start(&conf(&up, "{panic_in: log}"));
    let r = Curl::at("http", "example.com", gw.http_port(), "/x").run();
    assert_eq!(
        r.status, 200,
        "a panic in the log phase does not touch the response"
    );
    assert!(gw.wait_for_log("plugin panicked", Duration::from_secs(5)));
}

#[test]
fn plugin_credentials_errors_are_located() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "consumers:\n- username: alice\n  probe_tokens:\n  - token: same\n  - tokn: x\nprobe_tokens:\n- consumer: alice\n  token: same\n- consumer: nobody\n  token: other\nplugins:\n- name: platform-probe\n",
    );
    let out = check(&conf);
    let all = out.all();
    assert!(
        all.contains(
            "conf/gateway.yaml:5:5: consumers[0].probe_tokens[1].tokn: unknown field `tokn`"
        ),
        "{all}"
    );
    assert!(all.contains("conf/gateway.yaml:8:10: probe_tokens[0].token: duplicate token in probe_tokens (first at conf/gateway.yaml:4:12)"), "{all}");
    assert!(
        all.contains("conf/gateway.yaml:9:13: probe_tokens[1].consumer:"),
        "{all}"
    );
    assert!(
        !all.contains("same\""),
        "secret values are not echoed: {all}"
    );
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Redis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup.sh installs it)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Redis(child, port)
}

#[test]
fn a_redis_counter_is_shared_by_two_gateway_processes() {
    let r = redis();
    let up = Upstream::start();
    let cfg = format!("{{counter: shared-demo, redis_port: {}}}", r.1);
    let a = Gateway::start(&conf(&up, &cfg));
    let b = Gateway::start(&conf(&up, &cfg));
    let mut seen = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let resp = Curl::at("http", "example.com", gw.http_port(), "/x").run();
        assert_eq!(resp.status, 200);
        seen.push(
            resp.header("x-probe-count")
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        vec![1, 2, 3, 4, 5, 6],
        "one counter for both processes"
    );
}
