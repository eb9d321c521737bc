//! Black-box tests of the gateway's other windows (issue 6): `GET /status` across a reload,
//! `portcullis healthcheck` (by URL and derived from the conf dir), JSON access and error logs
//! carrying the request id, and no private key or certificate PEM in any log or `check` output,
//! even when a configuration with inline keys is rejected.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::BIN;
use common::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(10);

/// Writes `rel` in the conf dir atomically (dot-file, then rename): the watcher never sees half.
fn replace(conf: &ConfDir, rel: &str, contents: &str) {
    let dir = conf.dir();
    let tmp = dir.join(format!(".{}.tmp", rel.replace('/', "_")));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, dir.join(rel)).expect("rename into place");
}

fn reloads(gw: &Gateway, result: &str) -> f64 {
    common::metrics::value(
        &gw.metrics(),
        "portcullis_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

#[track_caller]
fn wait_reloads(gw: &Gateway, result: &str, at_least: f64) {
    let deadline = Instant::now() + DEADLINE;
    while reloads(gw, result) < at_least {
        assert!(
            Instant::now() < deadline,
            "no {result} reload counted within {DEADLINE:?} (want {at_least}); conf:\n{}",
            std::fs::read_to_string(gw.conf().dir().join("gateway.yaml")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// /status
// ---------------------------------------------------------------------------------------------

#[test]
fn status_reports_the_loaded_config_and_follows_a_reload() {
    let echo = HttpEcho::start("echo");
    let base = format!(
        "services:\n- name: echo\n  url: {}\n  routes:\n  - name: one\n    paths: [/one]\n",
        echo.url()
    );
    let gw = Gateway::start(&base);
    let s = gw.status();
    assert_eq!(s["status"], "ready", "{s}");
    let hash = s["config_hash"].as_str().unwrap_or_default().to_string();
    assert!(!hash.is_empty(), "{s}");
    let loaded_at = s["loaded_at"].as_str().unwrap_or_default().to_string();
    assert!(is_rfc3339(&loaded_at), "loaded_at not RFC 3339: {s}");
    assert_eq!(s["counts"]["services"], 1, "{s}");
    assert_eq!(s["counts"]["routes"], 1, "{s}");
    assert_eq!(s["counts"]["certificates"], 0, "{s}");
    let listeners = s["listeners"].to_string();
    assert!(
        listeners.contains(&format!("127.0.0.1:{}", gw.http_port())),
        "listener addresses in /status: {s}"
    );

    // loaded_at has one-second resolution: make the reload land in a later second.
    let deadline = Instant::now() + Duration::from_millis(1100);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    replace(
        gw.conf(),
        "gateway.yaml",
        &format!("{base}  - name: two\n    paths: [/two]\n"),
    );
    wait_reloads(&gw, "success", 1.0);
    let s = gw.status();
    assert_eq!(s["counts"]["routes"], 2, "{s}");
    assert_ne!(s["config_hash"], hash.as_str(), "{s}");
    let reloaded_at = s["loaded_at"].as_str().unwrap_or_default();
    assert!(is_rfc3339(reloaded_at), "{s}");
    assert!(
        reloaded_at > loaded_at.as_str(),
        "loaded_at must move forward on reload: {loaded_at} then {reloaded_at}"
    );
}

/// `2024-01-02T03:04:05Z` (fraction and offset allowed).
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
}

// ---------------------------------------------------------------------------------------------
// portcullis healthcheck
// ---------------------------------------------------------------------------------------------

struct Exit {
    code: i32,
    output: String,
    took: Duration,
}

fn healthcheck(args: &[&str], cwd: &Path) -> Exit {
    let started = Instant::now();
    let out = Command::new(BIN)
        .current_dir(cwd)
        .arg("healthcheck")
        .args(args)
        .env_remove("PORTCULLIS_CONF")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {BIN} healthcheck: {e}"));
    Exit {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took: started.elapsed(),
    }
}

#[test]
fn healthcheck_by_url_exits_0_when_ready_and_1_when_nothing_listens() {
    let mut gw = Gateway::start("services: []\n");
    let url = format!("http://127.0.0.1:{}/status", gw.status_port());
    let tmp = tempfile::tempdir().expect("temp dir");

    let e = healthcheck(&["--url", &url], tmp.path());
    assert_eq!(e.code, 0, "{}", e.output);
    assert!(e.took < Duration::from_secs(3), "took {:?}", e.took);

    let nobody = format!("http://127.0.0.1:{}/status", closed_port());
    let e = healthcheck(&["--url", &nobody], tmp.path());
    assert_eq!(e.code, 1, "{}", e.output);
    assert!(e.took < Duration::from_secs(5), "took {:?}", e.took);

    // A listener that answers something else than a ready status is not healthy either.
    let wrong = format!("http://127.0.0.1:{}/nope", gw.status_port());
    let e = healthcheck(&["--url", &wrong], tmp.path());
    assert_eq!(e.code, 1, "{}", e.output);

    gw.signal("TERM");
    assert!(gw.wait_exit(DEADLINE).is_some(), "gateway did not stop");
    let e = healthcheck(&["--url", &url], tmp.path());
    assert_eq!(e.code, 1, "after the gateway stopped: {}", e.output);
}

#[test]
fn healthcheck_derives_the_url_from_the_conf_dir() {
    let echo = HttpEcho::start("echo");
    let base = format!(
        "services:\n- name: echo\n  url: {}\n  routes:\n  - name: one\n    paths: [/one]\n",
        echo.url()
    );
    let mut gw = Gateway::start(&base);
    let root = gw.conf().root().to_path_buf();
    let e = healthcheck(&["--conf", "conf"], &root);
    assert_eq!(e.code, 0, "{}", e.output);
    assert!(
        e.output
            .contains(&format!("127.0.0.1:{}", gw.status_port())),
        "derived URL printed: {}",
        e.output
    );

    // A broken edit the gateway refused must not make the health check probe another port: the
    // gateway still serves the previous config.
    replace(
        gw.conf(),
        "gateway.yaml",
        &format!("{base}    service: nowhere\n"),
    );
    wait_reloads(&gw, "error", 1.0);
    let e = healthcheck(&["--conf", "conf"], &root);
    assert_eq!(
        e.code, 0,
        "conf with an entity error, gateway still up: {}",
        e.output
    );

    gw.signal("TERM");
    assert!(gw.wait_exit(DEADLINE).is_some(), "gateway did not stop");
    let e = healthcheck(&["--conf", "conf"], &root);
    assert_eq!(e.code, 1, "after the gateway stopped: {}", e.output);
}

/// A status listener bound to every address (`0.0.0.0:PORT`) is probed through loopback. A
/// one-shot fake status server on 127.0.0.1 stands in for the gateway (tests bind loopback only).
#[test]
fn healthcheck_reaches_a_wildcard_status_address_through_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let body = r#"{"status":"ready"}"#;
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        head
    });
    let conf = ConfDir::new().with(
        "gateway.yaml",
        format!("listeners:\n  status:\n    address: 0.0.0.0:{port}\nservices: []\n"),
    );
    let e = healthcheck(&["--conf", "conf"], conf.root());
    assert_eq!(e.code, 0, "{}", e.output);
    let head = server.join().expect("fake status server");
    assert!(head.starts_with("GET /status HTTP/1.1\r\n"), "{head:?}");
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// Every log line as JSON; panics on a line that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("log line is not JSON ({e}): {l}\n----- log -----\n{log}")
            })
        })
        .collect()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    // tracing-subscriber's JSON puts event fields at the top level (flattened) or under "fields".
    if v.get(name).is_some() {
        &v[name]
    } else {
        &v["fields"][name]
    }
}

fn is_access(v: &Value) -> bool {
    v["target"] == "access"
}

#[test]
fn json_logs_one_access_line_per_request_and_errors_carry_the_request_id() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .file(
            "gateway.yaml",
            format!(
                r#"
services:
- name: echo-service
  url: {echo}
  routes:
  - name: ok-route
    paths: [/ok]
- name: down-service
  url: http://127.0.0.1:{closed}
  retries: 0
  routes:
  - name: down-route
    paths: [/down]
"#,
                echo = echo.url(),
                closed = closed_port()
            ),
        )
        .start();
    let cases = [
        ("obs-ok-1", "/ok/a", 200, "ok-route", "echo-service"),
        ("obs-ok-2", "/ok/b", 200, "ok-route", "echo-service"),
        ("obs-404", "/elsewhere", 404, "-", "-"),
        ("obs-502", "/down", 502, "down-route", "down-service"),
    ];
    for (rid, path, status, _, _) in cases {
        let r = Curl::at("http", "h.test", gw.http_port(), path)
            .header(&format!("X-Request-Id: {rid}"))
            .run();
        assert_eq!(r.status, status, "{rid}: {r:#?}");
        assert_eq!(r.header("x-request-id"), Some(rid));
    }
    let deadline = Instant::now() + DEADLINE;
    let lines = loop {
        let lines = json_lines(&gw.log());
        let logged = cases
            .iter()
            .filter(|(rid, ..)| {
                lines
                    .iter()
                    .any(|l| is_access(l) && field(l, "request_id") == *rid)
            })
            .count();
        if logged == cases.len() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "access lines missing:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    for (rid, path, status, route, service) in cases {
        let access: Vec<&Value> = lines
            .iter()
            .filter(|l| is_access(l) && field(l, "request_id") == rid)
            .collect();
        assert_eq!(access.len(), 1, "one access line for {rid}: {access:#?}");
        let a = access[0];
        assert_eq!(field(a, "status"), status, "{a}");
        assert_eq!(field(a, "route"), route, "{a}");
        assert_eq!(field(a, "service"), service, "{a}");
        assert_eq!(field(a, "path"), path, "{a}");
        assert_eq!(field(a, "method"), "GET", "{a}");
        assert_eq!(a["level"], "INFO", "{a}");
        assert!(a["timestamp"].is_string(), "{a}");
    }

    // The failure itself is logged (warn or error) with the request id and the reason.
    let errors: Vec<&Value> = lines
        .iter()
        .filter(|l| !is_access(l) && field(l, "request_id") == "obs-502")
        .collect();
    assert!(
        !errors.is_empty(),
        "no error line carries the request id of the 502:\n{}",
        gw.log()
    );
    assert!(
        errors
            .iter()
            .any(|l| l["level"] == "WARN" || l["level"] == "ERROR"),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|l| field(l, "route") == "down-route" && field(l, "error").is_string()),
        "the error line names the route and the error: {errors:#?}"
    );
    // Successful requests produce no warning or error.
    for l in &lines {
        if field(l, "request_id") == "obs-ok-1" || field(l, "request_id") == "obs-ok-2" {
            assert_eq!(l["level"], "INFO", "{l}");
        }
    }
}

/// PEM blocks in `text`: a `-----BEGIN X-----` armour line followed by base64 (after a real or a
/// JSON-escaped newline). A bare armour line in a help message ("expected -----BEGIN
/// CERTIFICATE-----") is not material.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("-----BEGIN ") {
        let after = &rest[i + 11..];
        let Some(j) = after.find("-----") else { break };
        let label = &after[..j];
        let mut body = &after[j + 5..];
        loop {
            let trimmed = body
                .trim_start_matches([' ', '\t', '\r', '\n'])
                .trim_start_matches("\\n")
                .trim_start_matches("\\r");
            if trimmed.len() == body.len() {
                break;
            }
            body = trimmed;
        }
        let base64 = body
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
            .count();
        if base64 >= 16 {
            found.push(format!("{label}: {}", &body[..base64]));
        }
        rest = after;
    }
    found
}

/// Fails if `text` holds a PEM block or any 40-character run of a secret key's base64 body (a
/// leak even without the armour).
#[track_caller]
fn assert_no_pem(what: &str, text: &str, secrets: &[&str]) {
    let blocks = pem_blocks(text);
    assert!(
        blocks.is_empty(),
        "{what} contains PEM material {blocks:#?}:\n{text}"
    );
    for secret in secrets {
        let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
        for chunk in body.as_bytes().chunks(40).filter(|c| c.len() == 40) {
            let chunk = std::str::from_utf8(chunk).expect("base64 is ASCII");
            assert!(
                !text.contains(chunk),
                "{what} contains key material {chunk:?}:\n{text}"
            );
        }
    }
}

#[test]
fn no_key_or_certificate_pem_in_logs_even_for_rejected_configs() {
    let pki = Pki::new();
    let server = pki.server_leaf("api", &["DNS:api.example.com"]);
    let other = pki.server_leaf("other", &["DNS:other.example.com"]);
    let echo = HttpEcho::start("echo");
    let good = |key: &str, extra: &str| {
        format!(
            "certificates:\n- name: api\n  snis: [api.example.com]\n  cert: |\n{cert}  key: |\n{key}{extra}services:\n- name: echo\n  url: {echo}\n  routes:\n  - name: r\n    paths: [/]\n",
            cert = indent(&server.chain_pem, 4),
            key = indent(key, 4),
            echo = echo.url(),
        )
    };
    let gw = Gateway::builder()
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .env("PORTCULLIS_LOG", "debug")
        .file("gateway.yaml", good(&server.key_pem, ""))
        .start();
    let r = Curl::at("https", "api.example.com", gw.https_port(), "/x")
        .cacert(&pki.root.cert_path)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");

    // Rejected configurations, each with key material where an error message might quote it.
    let corrupt_key = server.key_pem.replacen("\n", "\n!!", 2);
    let key_block = indent(&server.key_pem, 4);
    let bad: Vec<(&str, String)> = vec![
        // The key of another certificate: mismatch.
        ("mismatched key", good(&other.key_pem, "")),
        // Garbage inside the PEM armour.
        ("corrupt key", good(&corrupt_key, "")),
        // The key pasted into the cert field.
        (
            "key as cert",
            format!(
                "certificates:\n- name: api\n  cert: |\n{key_block}  key: |\n{key_block}"
            ),
        ),
        // The key in a regex path that does not compile (regex errors quote their pattern).
        (
            "key in a regex",
            format!(
                "{}  - name: leaky\n    paths: [\"~(({}\"]\n",
                good(&server.key_pem, ""),
                server.key_pem.replace('\n', "\\n")
            ),
        ),
        // An unknown field holding the key.
        (
            "unknown field",
            good(&server.key_pem, &format!("  private_key: |\n{key_block}")),
        ),
        // YAML that does not parse, in the middle of the key.
        (
            "yaml syntax",
            format!(
                "certificates:\n- name: api\n  key: \"{}\n  cert: [\n",
                server.key_pem.replace('\n', "\\n")
            ),
        ),
        // A single-line key (quoted scalar) that does not match.
        (
            "flow key",
            format!(
                "certificates:\n- name: api\n  cert: \"{}\"\n  key: \"{}\"\n  snis: [api.example.com]\n",
                server.chain_pem.replace('\n', "\\n"),
                other.key_pem.replace('\n', "\\n")
            ),
        ),
    ];
    // The checker itself finds a key, armoured or JSON-escaped.
    assert!(!pem_blocks(&server.key_pem).is_empty());
    assert!(!pem_blocks(&serde_json::to_string(&server.key_pem).expect("json")).is_empty());
    assert!(!pem_blocks(&server.chain_pem).is_empty());

    let mut errors = reloads(&gw, "error");
    for (what, yaml) in &bad {
        replace(gw.conf(), "gateway.yaml", yaml);
        wait_reloads(&gw, "error", errors + 1.0);
        errors = reloads(&gw, "error");
        // The previous config still serves.
        let r = Curl::at("https", "api.example.com", gw.https_port(), "/x")
            .cacert(&pki.root.cert_path)
            .run();
        assert_eq!(r.status, 200, "after {what}: {r:#?}");
        assert_no_pem(
            &format!("gateway log after {what}"),
            &gw.log(),
            &[&server.key_pem, &other.key_pem],
        );

        // The same configuration through `check` and through a `run` that refuses to start.
        let conf = ConfDir::new().with("gateway.yaml", yaml);
        let out = check(&conf);
        assert_eq!(out.code, 1, "{what}: {}", out.all());
        assert_no_pem(
            &format!("check output for {what}"),
            &out.all(),
            &[&server.key_pem, &other.key_pem],
        );
        let refused = Gateway::builder()
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .file("gateway.yaml", yaml)
            .try_start();
        match refused {
            Ok(_) => panic!("{what}: the gateway started with a bad config"),
            Err(e) => {
                assert_eq!(e.exit_code, Some(1), "{what}: {e}");
                assert_no_pem(
                    &format!("refused start for {what}"),
                    &e.log,
                    &[&server.key_pem, &other.key_pem],
                );
            }
        }
    }
    // The log says why each one was rejected.
    let log = gw.log();
    let rejected = json_lines(&log)
        .iter()
        .filter(|l| l["level"] == "ERROR")
        .count();
    assert!(rejected >= bad.len(), "{log}");
}

/// Text access lines (the default format) for every request, none lost when SIGTERM follows
/// right behind the last one: the buffered writer hands over to direct writes on shutdown.
#[test]
fn text_access_lines_survive_a_sigterm_right_after_the_requests() {
    let echo = HttpEcho::start("echo");
    let mut gw = Gateway::builder()
        .file(
            "gateway.yaml",
            format!(
                "services:\n- name: echo-service\n  url: {}\n  routes:\n  - name: ok-route\n    paths: [/ok]\n",
                echo.url()
            ),
        )
        .start();
    let ids: Vec<String> = (0..20).map(|i| format!("sigterm-{i}")).collect();
    for id in &ids {
        let r = Curl::at("http", "h.test", gw.http_port(), "/ok/x")
            .header(&format!("X-Request-Id: {id}"))
            .run();
        assert_eq!(r.status, 200, "{r:#?}");
    }
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(30)).is_some(),
        "the gateway exits on SIGTERM"
    );
    let log = gw.log();
    for id in &ids {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!(" INFO access: request request_id={id} ")))
            .collect();
        assert_eq!(lines.len(), 1, "one access line for {id}:\n{log}");
        let l = lines[0];
        for part in [
            "client=127.0.0.1 ",
            "method=GET ",
            "path=/ok/x ",
            "host=\"h.test:",
            "route=\"ok-route\" ",
            "service=\"echo-service\" ",
            "status=200 ",
            "upstream=127.0.0.1:",
        ] {
            assert!(l.contains(part), "{part:?} in {l}");
        }
    }
}
