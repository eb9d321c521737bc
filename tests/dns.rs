//! Host names of services without an upstream entity are resolved again in the background and
//! on SIGHUP, and every address is used in turn. The name lives in /etc/hosts for the test (a
//! name unique to this process; its lines are removed again when the test ends).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(30);
const HOSTS: &str = "/etc/hosts";

/// Lines for one name in /etc/hosts; removed on drop, whatever else changed the file.
struct HostsEntry {
    name: String,
}

impl HostsEntry {
    fn new(name: &str) -> HostsEntry {
        HostsEntry {
            name: name.to_string(),
        }
    }

    /// Points the name at `addrs` (replacing what this entry wrote before).
    fn set(&self, addrs: &[&str]) {
        // Tests here run in parallel threads: one read-modify-write at a time.
        static EDIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _edit = EDIT.lock().unwrap_or_else(|e| e.into_inner());
        let mut text: String = std::fs::read_to_string(HOSTS)
            .unwrap()
            .lines()
            .filter(|l| !self.owns(l))
            .map(|l| format!("{l}\n"))
            .collect();
        for a in addrs {
            text.push_str(&format!("{a} {}\n", self.name));
        }
        // In place: /etc/hosts is often a bind mount that a rename would not replace.
        std::fs::write(HOSTS, text).unwrap();
    }

    fn owns(&self, line: &str) -> bool {
        line.split_whitespace().nth(1) == Some(self.name.as_str())
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        self.set(&[]);
    }
}

/// An HTTP server on `127.0.0.2:port` answering every request with `{"server":"b"}`.
fn server_b(port: u16) {
    let listener = TcpListener::bind(("127.0.0.2", port)).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = r#"{"server":"b"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

fn served_by(gw: &Gateway) -> String {
    served_by_on(gw, gw.http_port())
}

fn served_by_on(gw: &Gateway, port: u16) -> String {
    let r = Curl::at("http", "h.test", port, "/dns").run();
    assert_eq!(r.status, 200, "{r:#?}\n{}", gw.log());
    r.json()["server"].as_str().unwrap_or_default().to_string()
}

/// Sends SIGHUP until `want` (a set of servers) is what a run of requests reaches.
#[track_caller]
fn after_sighup_reaches(gw: &Gateway, want: &[&str]) {
    gw.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut seen: Vec<String> = (0..6).map(|_| served_by(gw)).collect();
        seen.sort();
        seen.dedup();
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still served by {seen:?}, want {want:?}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn service_host_names_follow_dns_changes_on_sighup_and_use_every_address() {
    let a = HttpEcho::start("a");
    server_b(a.port());
    let name = format!("portcullis-dns-{}.test", std::process::id());
    let hosts = HostsEntry::new(&name);
    hosts.set(&["127.0.0.1"]);
    let gw = Gateway::start(&format!(
        r#"
services:
- name: by-name
  url: http://{name}:{port}
  retries: 0
  routes:
  - name: dns
    paths: [/dns]
"#,
        port = a.port()
    ));
    assert_eq!(served_by(&gw), "a");

    // The record moves: without re-resolution the gateway would keep the first address.
    hosts.set(&["127.0.0.2"]);
    after_sighup_reaches(&gw, &["b"]);

    // Two records: both addresses take requests in turn.
    hosts.set(&["127.0.0.1", "127.0.0.2"]);
    after_sighup_reaches(&gw, &["a", "b"]);
    assert!(gw.log().contains("DNS answer changed"), "{}", gw.log());
}

#[test]
fn service_host_names_are_resolved_again_on_the_refresh_interval() {
    let a = HttpEcho::start("a");
    server_b(a.port());
    let name = format!("portcullis-dns-interval-{}.test", std::process::id());
    let hosts = HostsEntry::new(&name);
    hosts.set(&["127.0.0.1"]);
    let b = Gateway::builder().no_settings();
    let p = b.ports();
    let gw = b
        .file(
            "gateway.yaml",
            format!(
                r#"
listeners:
  proxy:
    - address: 127.0.0.1:{http}
  status:
    address: 127.0.0.1:{status}
server:
  threads: 1
  dns_refresh_interval: 500ms
services:
- name: by-name
  url: http://{name}:{port}
  retries: 0
  routes:
  - name: dns
    paths: [/dns]
"#,
                http = p.http,
                status = p.status,
                port = a.port()
            ),
        )
        .try_start_on(p.status)
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    assert_eq!(served_by_on(&gw, p.http), "a");
    hosts.set(&["127.0.0.2"]);
    let deadline = Instant::now() + DEADLINE;
    while served_by_on(&gw, p.http) != "b" {
        assert!(Instant::now() < deadline, "never re-resolved\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}
