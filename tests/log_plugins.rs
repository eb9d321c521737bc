//! Kong's logging plugins through the real binary with real receivers: file-log (read back and
//! rotated with `reopen`), http-log (batches, headers, retries after 500s, a dead receiver that
//! never slows requests, SIGTERM flushing the queue), tcp-log and udp-log — every record in Kong's
//! log format with secrets redacted.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The JSON lines file-log wrote to `path` so far.
fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records at `path` once there are `n` of them.
fn wait_records(path: &std::path::Path, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} records"), Duration::from_secs(10), || {
        records(path).len() == n
    });
    records(path)
}

fn bodies(r: &HttpReceiver, from: usize) -> Vec<Value> {
    r.received()[from..]
        .iter()
        .flat_map(|x| match serde_json::from_str::<Value>(&x.body).unwrap() {
            Value::Array(a) => a,
            v => vec![v],
        })
        .collect()
}

fn gateway(echo: &HttpEcho, plugins: &str) -> Gateway {
    Gateway::start(&format!(
        "services:\n- name: echo-svc\n  url: {}\n  routes:\n  - name: logged\n    paths: [/logged]\n    plugins:\n{plugins}",
        echo.url()
    ))
}

fn assert_kong_record(rec: &Value, path_prefix: &str) {
    assert_eq!(rec["request"]["method"], "GET", "{rec}");
    assert!(
        rec["request"]["uri"]
            .as_str()
            .unwrap()
            .starts_with(path_prefix),
        "{rec}"
    );
    assert_eq!(rec["response"]["status"], 200, "{rec}");
    assert_eq!(rec["route"]["name"], "logged", "{rec}");
    assert_eq!(rec["service"]["name"], "echo-svc", "{rec}");
    assert_eq!(rec["client_ip"], "127.0.0.1", "{rec}");
    assert!(
        rec["started_at"].as_u64().unwrap() > 1_600_000_000_000,
        "{rec}"
    );
    assert!(rec["latencies"]["request"].is_number(), "{rec}");
    assert!(rec["latencies"]["proxy"].as_i64().unwrap() >= 0, "{rec}");
    assert!(
        rec["upstream_uri"].as_str().unwrap().starts_with('/'),
        "{rec}"
    );
    assert_eq!(rec["tries"].as_array().unwrap().len(), 1, "{rec}");
    assert!(
        rec["tries"][0]["balancer_start"].as_u64().unwrap() >= rec["started_at"].as_u64().unwrap(),
        "{rec}"
    );
    assert_eq!(rec["upstream_status"], "200", "{rec}");
    let lat = &rec["latencies"];
    assert!(lat["receive"].as_i64().unwrap() >= 0, "{rec}");
    assert!(
        lat["kong"].as_i64().unwrap() + lat["proxy"].as_i64().unwrap()
            <= lat["request"].as_i64().unwrap() + 1,
        "{rec}"
    );
    // Plain HTTP: no `tls` object.
    assert_eq!(rec["request"].get("tls"), None, "{rec}");
    assert!(
        rec["response"]["headers"]["x-request-id"].is_string(),
        "{rec}"
    );
}

#[test]
fn file_log_writes_kong_records_and_reopens_after_rotation() {
    let echo = HttpEcho::start("echo");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = gateway(
        &echo,
        &format!(
            "    - name: file-log\n      config:\n        path: {}\n        reopen: true\n",
            path.display()
        ),
    );
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = at(&format!("/logged/{i}?q={i}"))
            .header("Authorization: Bearer top-secret")
            .header("Host: Example.COM")
            .run();
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").unwrap().to_string());
    }
    wait_until("3 lines", Duration::from_secs(10), || {
        records(&path).len() == 3
    });
    let lines = records(&path);
    for (i, rec) in lines.iter().enumerate() {
        assert_kong_record(rec, &format!("/logged/{i}"));
        assert_eq!(rec["request"]["querystring"]["q"], i.to_string());
        assert_eq!(rec["request"]["headers"]["authorization"], "REDACTED");
        assert_eq!(rec["request"]["id"], ids[i], "{rec}");
        // Kong's url: nginx's $host (lower case, no port) and the port the client connected to.
        assert_eq!(
            rec["request"]["url"],
            format!("http://example.com:{}/logged/{i}?q={i}", gw.http_port()),
            "{rec}"
        );
    }
    assert!(!std::fs::read_to_string(&path)
        .unwrap()
        .contains("top-secret"));

    // logrotate: rename away, the next record recreates the file at `path`.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    assert_eq!(at("/logged/after").run().status, 200);
    wait_until("the reopened file", Duration::from_secs(10), || {
        records(&path).len() == 1
    });
    assert_eq!(records(&rotated).len(), 3);
    assert!(records(&path)[0]["request"]["uri"]
        .as_str()
        .unwrap()
        .starts_with("/logged/after"));
}

#[test]
fn http_log_batches_sends_headers_and_retries_after_errors() {
    let echo = HttpEcho::start("echo");
    let recv = HttpReceiver::start(2);
    let gw = gateway(
        &echo,
        &format!(
            "    - name: http-log\n      config:\n        http_endpoint: {}\n        method: PUT\n        headers:\n          X-Log-Token: abc\n        queue:\n          max_batch_size: 3\n          max_coalescing_delay: 0.5\n          initial_retry_delay: 0.05\n",
            recv.url("/logs")
        ),
    );
    for i in 0..3 {
        let r = Curl::at(
            "http",
            "example.com",
            gw.http_port(),
            &format!("/logged/{i}"),
        )
        .run();
        assert_eq!(r.status, 200);
    }
    // Two 500s, then the same batch is accepted.
    wait_until("a delivered batch", Duration::from_secs(15), || {
        recv.received().len() >= 3
    });
    let got = recv.received();
    assert_eq!(
        got[0].body, got[2].body,
        "the failed batch is retried as it was"
    );
    let last = &got[2];
    assert_eq!(last.method, "PUT");
    assert_eq!(last.path, "/logs");
    assert_eq!(last.header("x-log-token"), Some("abc"));
    assert_eq!(last.header("content-type"), Some("application/json"));
    let batch: Value = serde_json::from_str(&last.body).unwrap();
    let arr = batch.as_array().expect("a batch is a JSON array");
    assert_eq!(arr.len(), 3);
    for rec in arr {
        assert_kong_record(rec, "/logged/");
    }
}

#[test]
fn http_log_single_entries_are_objects_and_sigterm_flushes_the_queue() {
    let echo = HttpEcho::start("echo");
    let recv = HttpReceiver::start(0);
    let mut gw = gateway(
        &echo,
        &format!(
            "    - name: http-log\n      config:\n        http_endpoint: {}\n",
            recv.url("/logs")
        ),
    );
    assert_eq!(
        Curl::at("http", "example.com", gw.http_port(), "/logged/one")
            .run()
            .status,
        200
    );
    wait_until("one record", Duration::from_secs(10), || {
        recv.received().len() == 1
    });
    let rec: Value = serde_json::from_str(&recv.received()[0].body).unwrap();
    assert!(rec.is_object(), "max_batch_size 1 sends the object itself");
    assert_kong_record(&rec, "/logged/one");
    drop(gw);

    // A long coalescing delay holds records back; SIGTERM sends them.
    let recv = HttpReceiver::start(0);
    gw = gateway(
        &echo,
        &format!(
            "    - name: http-log\n      config:\n        http_endpoint: {}\n        queue:\n          max_batch_size: 100\n          max_coalescing_delay: 3600\n",
            recv.url("/logs")
        ),
    );
    for i in 0..4 {
        assert_eq!(
            Curl::at(
                "http",
                "example.com",
                gw.http_port(),
                &format!("/logged/{i}")
            )
            .run()
            .status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        recv.received().is_empty(),
        "held back by the coalescing delay"
    );
    gw.signal("TERM");
    wait_until(
        "records flushed on SIGTERM",
        Duration::from_secs(20),
        || bodies(&recv, 0).len() == 4,
    );
    gw.wait_exit(Duration::from_secs(30));
}

#[test]
fn a_dead_log_receiver_never_harms_traffic_and_drops_are_counted() {
    let echo = HttpEcho::start("echo");
    let dead = closed_port();
    let gw = gateway(
        &echo,
        &format!(
            "    - name: http-log\n      config:\n        http_endpoint: http://127.0.0.1:{dead}/logs\n        timeout: 200\n        queue:\n          max_entries: 5\n          max_retry_time: 30\n          initial_retry_delay: 1\n"
        ),
    );
    for i in 0..40 {
        let r = Curl::at(
            "http",
            "example.com",
            gw.http_port(),
            &format!("/logged/{i}"),
        )
        .run();
        assert_eq!(r.status, 200, "request {i}");
    }
    wait_until("drops counted", Duration::from_secs(10), || {
        gw.metrics().lines().any(|l| {
            l.starts_with("portcullis_plugin_queue_dropped_total{plugin=\"http-log\"}")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    >= 30.0
        })
    });
}

#[test]
fn tcp_and_udp_log_send_one_record_per_request() {
    let echo = HttpEcho::start("echo");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let gw = gateway(
        &echo,
        &format!(
            "    - name: tcp-log\n      config:\n        host: 127.0.0.1\n        port: {}\n    - name: udp-log\n      config:\n        host: 127.0.0.1\n        port: {}\n",
            tcp.local_addr().unwrap().port(),
            udp.local_addr().unwrap().port()
        ),
    );
    for i in 0..2 {
        let r = Curl::at(
            "http",
            "example.com",
            gw.http_port(),
            &format!("/logged/{i}"),
        )
        .run();
        assert_eq!(r.status, 200);
    }
    let mut dgrams = Vec::new();
    let mut buf = vec![0u8; 65536];
    while dgrams.len() < 2 {
        let n = udp.recv(&mut buf).expect("a udp-log datagram");
        dgrams.push(serde_json::from_slice::<Value>(&buf[..n]).unwrap());
    }
    for rec in &dgrams {
        assert_kong_record(rec, "/logged/");
    }
    let (conn, _) = tcp.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = BufReader::new(conn).lines();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        assert_kong_record(&serde_json::from_str(&line).unwrap(), "/logged/");
    }
}

#[test]
fn bad_logger_config_is_located() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: http-log\n    config:\n      http_endpoint: not-a-url\n      method: GET\n",
    );
    let out = check(&conf);
    let all = out.all();
    assert!(
        all.contains("conf/gateway.yaml:7:22: services[0].plugins[0].config.http_endpoint: missing host in url"),
        "{all}"
    );
    assert!(
        all.contains("conf/gateway.yaml:8:15: services[0].plugins[0].config.method: expected one of: POST, PUT, PATCH"),
        "{all}"
    );
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: file-log\n    config:\n      path: /tmp/x.log\n      custom_fields:\n        team: $(kong.request.get_header('x'))\n",
    );
    let out = check(&conf);
    let all = out.all();
    assert_eq!(out.code, 1, "{all}");
    assert!(
        all.contains("conf/gateway.yaml:9:15: services[0].plugins[0].config.custom_fields.team: template '$(kong.request.get_header('x'))' is not supported"),
        "{all}"
    );
}

#[test]
fn custom_fields_add_template_and_remove_record_fields() {
    let echo = HttpEcho::start("echo");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = gateway(
        &echo,
        &format!(
            r#"    - name: file-log
      config:
        path: {}
        custom_fields_by_lua: {{team: "return kong.request.get_header('x-team')"}}
        custom_fields:
          env: production
          team: $(headers.x_team or 'none')
          request.headers.user-agent: null
          meta.shard: 7
"#,
            path.display()
        ),
    );
    let at = |team: Option<&str>| {
        let c = Curl::at("http", "example.com", gw.http_port(), "/logged");
        match team {
            Some(t) => c.header(&format!("X-Team: {t}")).run(),
            None => c.run(),
        }
    };
    assert_eq!(at(Some("payments")).status, 200);
    assert_eq!(at(None).status, 200);
    let recs = wait_records(&path, 2);
    for rec in &recs {
        assert_kong_record(rec, "/logged");
        assert_eq!(rec["env"], "production", "{rec}");
        assert_eq!(rec["meta"]["shard"], 7, "{rec}");
        assert_eq!(rec["request"]["headers"].get("user-agent"), None, "{rec}");
    }
    assert_eq!(recs[0]["team"], "payments");
    assert_eq!(recs[1]["team"], "none");
    let out = check(gw.conf());
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.all().contains(".config.custom_fields_by_lua: warning: custom_fields_by_lua is accepted and ignored: Portcullis runs no Lua"),
        "{}",
        out.all()
    );
}

#[test]
fn log_records_never_show_api_keys_or_tokens() {
    let echo = HttpEcho::start("echo");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        "consumers:\n- username: alice\n  keyauth_credentials:\n  - key: s3cret-key-value\nservices:\n- name: echo-svc\n  url: {}\n  routes:\n  - name: logged\n    paths: [/logged]\n    plugins:\n    - name: key-auth\n    - name: file-log\n      config:\n        path: {}\n",
        echo.url(),
        path.display()
    ));
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);
    assert_eq!(
        at("/logged/h")
            .header("apikey: s3cret-key-value")
            .run()
            .status,
        200
    );
    assert_eq!(
        at("/logged/q?apikey=s3cret-key-value&x=1").run().status,
        200
    );
    assert_eq!(
        at("/logged/bad")
            .header("apikey: s3cret-wrong")
            .run()
            .status,
        401
    );
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    wait_until("3 records", Duration::from_secs(10), || {
        read().lines().count() == 3
    });
    let text = read();
    assert!(!text.contains("s3cret"), "a key reached the log: {text}");
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs[0]["request"]["headers"]["apikey"], "REDACTED");
    assert_eq!(recs[1]["request"]["querystring"]["apikey"], "REDACTED");
    assert_eq!(recs[1]["request"]["querystring"]["x"], "1");
    assert_eq!(recs[0]["consumer"]["username"], "alice");
    assert_eq!(recs[2]["response"]["status"], 401);
}

#[test]
fn a_failed_connection_attempt_is_listed_in_tries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let dead = closed_port();
    let gw = Gateway::start(&format!(
        "services:\n- name: dead-svc\n  url: http://127.0.0.1:{dead}\n  retries: 0\n  routes:\n  - name: logged\n    paths: [/logged]\n    plugins:\n    - name: file-log\n      config:\n        path: {}\n",
        path.display()
    ));
    let r = Curl::at("http", "example.com", gw.http_port(), "/logged").run();
    assert_eq!(r.status, 502);
    let rec = wait_records(&path, 1).remove(0);
    let tries = rec["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 1, "{rec}");
    assert_eq!(tries[0]["ip"], "127.0.0.1");
    assert_eq!(tries[0]["port"], dead);
    // The only try: Kong records `state`/`code` on a try only when another followed it.
    assert_eq!(tries[0].get("state"), None, "{rec}");
    assert_eq!(rec["upstream_status"], "502", "{rec}");
    assert_eq!(rec["latencies"]["proxy"], -1, "{rec}");
}

#[test]
fn tls_records_carry_the_cipher_and_client_verification() {
    let pki = Pki::new();
    let server = pki.server_leaf("api", &["DNS:api.example.com"]);
    let echo = HttpEcho::start("echo");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/api.chain.crt", &server.chain_pem)
        .file("certs/api.key", &server.key_pem)
        .file(
            "gateway.yaml",
            format!(
                r#"ca_certificates:
- name: clients
  cert_file: certs/root.crt
certificates:
- name: api
  cert_file: certs/api.chain.crt
  key_file: certs/api.key
  snis: [api.example.com]
consumers:
- username: alice
services:
- name: echo-svc
  url: {url}
  routes:
  - name: logged
    paths: [/logged]
    plugins:
    - name: mtls-auth
      config: {{ca_certificates: [clients]}}
    - name: file-log
      config: {{path: {path}}}
"#,
                url = echo.url(),
                path = path.display()
            ),
        )
        .start();
    let call = |cert: bool| {
        let c = Curl::at("https", "api.example.com", gw.https_port(), "/logged")
            .cacert(&pki.root.cert_path)
            .arg("--tlsv1.3");
        if cert {
            c.cert(&pki.alice.cert_path, &pki.alice.key_path).run()
        } else {
            c.run()
        }
    };
    assert_eq!(call(true).status, 200);
    assert_eq!(call(false).status, 401);
    let recs = wait_records(&path, 2);
    let tls = &recs[0]["request"]["tls"];
    assert_eq!(tls["version"], "TLSv1.3", "{}", recs[0]);
    assert!(
        tls["cipher"].as_str().unwrap().starts_with("TLS_AES_"),
        "{}",
        recs[0]
    );
    assert_eq!(tls["client_verify"], "SUCCESS", "{}", recs[0]);
    assert_eq!(
        recs[0]["request"]["url"],
        format!("https://api.example.com:{}/logged", gw.https_port())
    );
    assert_eq!(recs[1]["response"]["status"], 401, "{}", recs[1]);
    assert_eq!(
        recs[1]["request"]["tls"]["client_verify"], "NONE",
        "{}",
        recs[1]
    );
    assert_eq!(recs[1]["upstream_status"], "", "{}", recs[1]);
    assert_eq!(recs[1]["latencies"]["proxy"], -1, "{}", recs[1]);
}
