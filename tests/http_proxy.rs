//! Black-box tests of the HTTP proxy (issue 2): routing priority, path and host rewriting,
//! forwarded headers, request ids, error bodies, keep-alive, bad input, status and logs.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Name of the echo that answered.
fn served_by(r: &Response) -> String {
    assert_eq!(r.status, 200, "expected 200: {r:#?} body={}", r.text());
    r.json()["server"].as_str().unwrap_or("<none>").to_string()
}

fn get(gw: &Gateway, host: &str, path: &str) -> Response {
    Curl::at("http", host, gw.http_port(), path).run()
}

#[test]
fn hosts_exact_beats_wildcard_and_suffix_wildcard() {
    let exact = HttpEcho::start("exact");
    let wild = HttpEcho::start("wild");
    let suffix = HttpEcho::start("suffix");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: exact
  url: {exact}
  routes:
  - name: exact
    hosts: [api.example.com]
- name: wild
  url: {wild}
  routes:
  - name: wild
    hosts: ["*.example.com"]
- name: suffix
  url: {suffix}
  routes:
  - name: suffix
    hosts: ["shop.*"]
"#,
        exact = exact.url(),
        wild = wild.url(),
        suffix = suffix.url(),
    ));
    assert_eq!(served_by(&get(&gw, "api.example.com", "/")), "exact");
    assert_eq!(served_by(&get(&gw, "web.example.com", "/x")), "wild");
    assert_eq!(served_by(&get(&gw, "shop.test", "/")), "suffix");
    assert_eq!(served_by(&get(&gw, "shop.example.org", "/")), "suffix");
    // Host matching ignores case, as DNS does.
    assert_eq!(served_by(&get(&gw, "API.Example.COM", "/")), "exact");
    let r = get(&gw, "example.org", "/");
    assert_error_body(&r, 404, "no Route matched with those values");
}

#[test]
fn more_attributes_win_over_fewer() {
    let path_only = HttpEcho::start("path-only");
    let host_and_path = HttpEcho::start("host-and-path");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: path-only
  url: {a}
  routes:
  - name: path-only
    paths: [/both]
- name: host-and-path
  url: {b}
  routes:
  - name: host-and-path
    hosts: [api.example.com]
    paths: [/both]
"#,
        a = path_only.url(),
        b = host_and_path.url(),
    ));
    assert_eq!(
        served_by(&get(&gw, "api.example.com", "/both")),
        "host-and-path"
    );
    assert_eq!(
        served_by(&get(&gw, "other.example.com", "/both")),
        "path-only"
    );
}

#[test]
fn longest_prefix_wins_regardless_of_order() {
    let short = HttpEcho::start("short");
    let long = HttpEcho::start("long");
    let root = HttpEcho::start("root");
    // The longer prefix is declared last on purpose: order in the file must not matter.
    let gw = Gateway::start(&format!(
        r#"
services:
- name: root
  url: {root}
  routes:
  - name: root
    paths: [/]
    strip_path: false
- name: short
  url: {short}
  routes:
  - name: short
    paths: [/v1]
    strip_path: false
- name: long
  url: {long}
  routes:
  - name: long
    paths: [/v1/users]
    strip_path: false
"#,
        root = root.url(),
        short = short.url(),
        long = long.url(),
    ));
    assert_eq!(served_by(&get(&gw, "h.test", "/v1/users/7")), "long");
    assert_eq!(served_by(&get(&gw, "h.test", "/v1/users")), "long");
    assert_eq!(served_by(&get(&gw, "h.test", "/v1/other")), "short");
    assert_eq!(served_by(&get(&gw, "h.test", "/v1")), "short");
    assert_eq!(served_by(&get(&gw, "h.test", "/v2")), "root");
    assert_eq!(served_by(&get(&gw, "h.test", "/")), "root");
}

#[test]
fn regex_paths_by_regex_priority_then_prefix() {
    let lo = HttpEcho::start("regex-lo");
    let hi = HttpEcho::start("regex-hi");
    let prefix = HttpEcho::start("prefix");
    // Low priority first in the file: regex_priority, not order, decides.
    let gw = Gateway::start(&format!(
        r#"
services:
- name: lo
  url: {lo}
  routes:
  - name: lo
    paths: ["~/items/[a-z0-9]+$"]
    strip_path: false
- name: hi
  url: {hi}
  routes:
  - name: hi
    paths: ['~/items/\d+$']
    regex_priority: 10
    strip_path: false
- name: prefix
  url: {prefix}
  routes:
  - name: prefix
    paths: [/items/]
    strip_path: false
"#,
        lo = lo.url(),
        hi = hi.url(),
        prefix = prefix.url(),
    ));
    assert_eq!(served_by(&get(&gw, "h.test", "/items/42")), "regex-hi");
    assert_eq!(served_by(&get(&gw, "h.test", "/items/abc")), "regex-lo");
    // Regex paths are evaluated before prefix paths (Kong's router, SPEC §3).
    assert_eq!(served_by(&get(&gw, "h.test", "/items/a1")), "regex-lo");
    // No regex matches (the `$` anchors): the prefix route takes it.
    assert_eq!(served_by(&get(&gw, "h.test", "/items/42/parts")), "prefix");
    assert_eq!(served_by(&get(&gw, "h.test", "/items/")), "prefix");
}

#[test]
fn methods_and_headers_select_routes() {
    let getter = HttpEcho::start("get");
    let poster = HttpEcho::start("post");
    let v2 = HttpEcho::start("v2");
    let any = HttpEcho::start("any");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: get
  url: {g}
  routes:
  - name: m-get
    paths: [/m]
    methods: [GET]
- name: post
  url: {p}
  routes:
  - name: m-post
    paths: [/m]
    methods: [POST, PUT]
- name: v2
  url: {v2}
  routes:
  - name: h-v2
    paths: [/h]
    headers:
      x-version: [v2, v2beta]
- name: any
  url: {any}
  routes:
  - name: h-any
    paths: [/h]
"#,
        g = getter.url(),
        p = poster.url(),
        v2 = v2.url(),
        any = any.url(),
    ));
    let port = gw.http_port();
    assert_eq!(
        served_by(&Curl::at("http", "h.test", port, "/m").run()),
        "get"
    );
    assert_eq!(
        served_by(&Curl::at("http", "h.test", port, "/m").data("x").run()),
        "post"
    );
    assert_eq!(
        served_by(&Curl::at("http", "h.test", port, "/m").method("PUT").run()),
        "post"
    );
    let r = Curl::at("http", "h.test", port, "/m")
        .method("DELETE")
        .run();
    assert_error_body(&r, 404, "no Route matched with those values");

    let h = |v: Option<&str>| {
        let mut c = Curl::at("http", "h.test", port, "/h");
        if let Some(v) = v {
            c = c.header(&format!("X-Version: {v}"));
        }
        served_by(&c.run())
    };
    assert_eq!(h(Some("v2")), "v2");
    assert_eq!(h(Some("v2beta")), "v2");
    assert_eq!(h(Some("v3")), "any");
    assert_eq!(h(None), "any");
}

#[test]
fn strip_path_service_path_and_preserve_host() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: plain
  url: {u}
  routes:
  - name: strip
    paths: [/strip]
  - name: keep
    paths: [/keep]
    strip_path: false
  - name: regex-strip
    paths: ['~/re/\d+']
  - name: preserve
    paths: [/preserve]
    preserve_host: true
- name: based
  url: {u}/base
  routes:
  - name: based
    paths: [/based]
"#,
        u = echo.url(),
    ));
    let j = get(&gw, "h.test", "/strip/a/b?x=1&y=2").json();
    assert_eq!(j["path"], "/a/b");
    assert_eq!(j["query"], "x=1&y=2");
    assert_eq!(get(&gw, "h.test", "/strip").json()["path"], "/");
    assert_eq!(get(&gw, "h.test", "/keep/a").json()["path"], "/keep/a");
    assert_eq!(get(&gw, "h.test", "/re/12/tail").json()["path"], "/tail");
    assert_eq!(get(&gw, "h.test", "/based/a").json()["path"], "/base/a");

    // preserve_host false: the upstream sees the service's host (with its non-default port).
    let j = get(&gw, "h.test", "/strip/x").json();
    assert_eq!(j["headers"]["host"], echo.addr());
    // preserve_host true: exactly the Host the client sent.
    let r = get(&gw, "keep.example.com", "/preserve/x");
    assert_eq!(
        r.json()["headers"]["host"],
        format!("keep.example.com:{}", gw.http_port())
    );
}

#[test]
fn forwarded_headers_replaced_not_appended() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ));
    let r = Curl::at("http", "fwd.example.com", gw.http_port(), "/x")
        .header("X-Forwarded-For: 6.6.6.6")
        .header("X-Forwarded-Proto: https")
        .header("X-Forwarded-Host: evil.example")
        .header("X-Forwarded-Port: 1")
        .run();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "fwd.example.com", "{h}");
    assert_eq!(h["x-forwarded-port"], gw.http_port().to_string(), "{h}");

    // Without client-sent values they are still set.
    let h = get(&gw, "fwd.example.com", "/y").json()["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[test]
fn request_id_kept_or_generated_and_in_error_bodies() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/ok]\n",
        echo.url()
    ));
    // Generated: returned to the client and passed upstream, same value.
    let r = get(&gw, "h.test", "/ok");
    let rid = r
        .header("x-request-id")
        .expect("X-Request-Id on a proxied response")
        .to_string();
    assert!(!rid.is_empty());
    assert_eq!(r.echo_header("x-request-id").as_deref(), Some(rid.as_str()));
    // Two requests never share a generated id.
    let r2 = get(&gw, "h.test", "/ok");
    assert_ne!(r2.header("x-request-id"), Some(rid.as_str()));

    // Sent by the client: kept, both ways.
    let r = Curl::at("http", "h.test", gw.http_port(), "/ok")
        .header("X-Request-Id: client-chosen-42")
        .run();
    assert_eq!(r.header("x-request-id"), Some("client-chosen-42"));
    assert_eq!(
        r.echo_header("x-request-id").as_deref(),
        Some("client-chosen-42")
    );

    // Error bodies carry the same id as the header.
    let r = Curl::at("http", "h.test", gw.http_port(), "/nothing-here")
        .header("X-Request-Id: client-chosen-404")
        .run();
    assert_error_body(&r, 404, "no Route matched with those values");
    assert_eq!(r.json()["request_id"], "client-chosen-404");
    let r = get(&gw, "h.test", "/nothing-here");
    assert_error_body(&r, 404, "no Route matched with those values");
}

#[test]
fn error_bodies_404_426_502_504() {
    let slow = HttpEcho::start_with_delay("slow", Duration::from_secs(5));
    let echo = HttpEcho::start("echo");
    let closed = closed_port();
    let gw = Gateway::start(&format!(
        r#"
services:
- name: down
  url: http://127.0.0.1:{closed}
  retries: 0
  connect_timeout: 1000
  routes:
  - name: down
    paths: [/down]
- name: slow
  url: {slow}
  read_timeout: 500
  retries: 0
  routes:
  - name: slow
    paths: [/slow]
- name: secure-only
  url: {echo}
  routes:
  - name: secure-only
    paths: [/secure]
    protocols: [https]
"#,
        slow = slow.url(),
        echo = echo.url(),
    ));
    let r = get(&gw, "h.test", "/nope");
    assert_error_body(&r, 404, "no Route matched with those values");
    assert_eq!(
        r.header("content-type")
            .map(|c| c.starts_with("application/json")),
        Some(true)
    );

    let r = get(&gw, "h.test", "/secure");
    assert_error_body(&r, 426, "Please use HTTPS protocol");
    assert_eq!(echo.requests(), 0, "a 426 must not reach the upstream");

    let r = get(&gw, "h.test", "/down");
    assert_error_body(
        &r,
        502,
        "An invalid response was received from the upstream server",
    );

    let t = Instant::now();
    let r = get(&gw, "h.test", "/slow");
    assert_error_body(&r, 504, "The upstream server is timing out");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "read_timeout 500 ms must answer well before the upstream's 5 s: {:?}",
        t.elapsed()
    );
}

#[test]
fn upstream_keepalive_reuses_connections() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ));
    // Ten separate client connections, one after the other.
    for _ in 0..10 {
        assert_eq!(get(&gw, "h.test", "/").status, 200);
    }
    assert_eq!(echo.requests(), 10);
    assert!(
        echo.connections() <= 3,
        "upstream connections must be pooled: {} connections for 10 requests",
        echo.connections()
    );
}

#[test]
fn request_body_and_method_pass_through() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ));
    let body = "x".repeat(200_000);
    let j = Curl::at("http", "h.test", gw.http_port(), "/upload")
        .method("PUT")
        .data(&body)
        .run()
        .json();
    assert_eq!(j["method"], "PUT");
    assert_eq!(j["body_len"], 200_000);
    // Chunked upload.
    let j = Curl::at("http", "h.test", gw.http_port(), "/upload")
        .header("Transfer-Encoding: chunked")
        .data("0123456789")
        .run()
        .json();
    assert_eq!(j["body_len"], 10);
}

#[test]
fn bad_input_gets_4xx_or_close_and_gateway_keeps_serving() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ));
    let port = gw.http_port();
    let status_of = |raw: &[u8]| -> Option<u16> {
        let text = String::from_utf8_lossy(raw);
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
    };
    let timeout = Duration::from_secs(10);

    // Garbage instead of a request line: answered 4xx or closed, promptly (not left hanging).
    match raw_exchange(port, b"THIS IS NOT HTTP\r\n\r\n", Duration::from_secs(5)) {
        Ok(out) => {
            if let Some(code) = status_of(&out) {
                assert!((400..500).contains(&code), "garbage answered {code}");
            }
        }
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "garbage request neither answered nor closed within 5 s"
        ),
    }
    // Host: missing on HTTP/1.1, or not a host[:port] → 400 with Kong's JSON body and an
    // X-Request-Id; HTTP/1.0 may omit it.
    for req in [
        &b"GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /sp HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n",
        b"GET /slash HTTP/1.1\r\nHost: a/../b\r\nConnection: close\r\n\r\n",
        b"GET /hi HTTP/1.1\r\nHost: h\xfftest\r\nConnection: close\r\n\r\n",
    ] {
        let out = raw_exchange(port, req, timeout).expect("answered");
        let text = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&out), Some(400), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("\r\nx-request-id: "),
            "{text}"
        );
        assert!(text.contains("\"message\":\"Bad request\""), "{text}");
    }
    let out = raw_exchange(port, b"GET /old HTTP/1.0\r\n\r\n", timeout).expect("answered");
    assert_eq!(
        status_of(&out),
        Some(200),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(echo.requests(), 1, "only the HTTP/1.0 request is proxied");
    // A header block far beyond any sane limit (2 MB): refused, never forwarded.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: h.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 * 1024 * 1024)
    );
    let out = raw_exchange(port, big.as_bytes(), timeout).unwrap_or_default();
    if let Some(code) = status_of(&out) {
        assert!(
            (400..500).contains(&code),
            "oversized headers answered {code}"
        );
    }
    assert_eq!(
        echo.requests(),
        1,
        "oversized or malformed requests reached the upstream"
    );
    // A client that vanishes mid-request (headers and body cut short).
    for partial in [
        &b"GET / HTTP/1.1\r\nHost: h.te"[..],
        &b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 100\r\n\r\nabc"[..],
    ] {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = s.write_all(partial);
        }
    }
    let mut gw = gw;
    assert!(gw.is_running(), "gateway died on bad input");
    assert_eq!(served_by(&get(&gw, "h.test", "/after")), "echo");
}

#[test]
fn status_endpoint_reports_ready_and_counts() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: a
  url: {u}
  routes:
  - name: a1
    paths: [/a1]
  - name: a2
    paths: [/a2]
- name: b
  url: {u}
  routes:
  - name: b1
    paths: [/b1]
"#,
        u = echo.url()
    ));
    let s = gw.status();
    assert_eq!(s["status"], "ready", "{s}");
    assert!(
        s["config_hash"].as_str().is_some_and(|h| !h.is_empty()),
        "{s}"
    );
    let loaded_at = s["loaded_at"].as_str().unwrap_or("");
    // RFC 3339: 2024-01-02T03:04:05...
    assert!(
        loaded_at.len() >= 20
            && loaded_at.as_bytes()[4] == b'-'
            && loaded_at.as_bytes()[10] == b'T',
        "loaded_at not RFC 3339: {s}"
    );
    assert_eq!(s["counts"]["services"], 2, "{s}");
    assert_eq!(s["counts"]["routes"], 3, "{s}");
    assert_eq!(s["counts"]["certificates"], 0, "{s}");
}

/// Every string and number in a JSON value, flattened.
fn json_leaves(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => m.values().for_each(|x| json_leaves(x, out)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_leaves(x, out)),
        serde_json::Value::String(s) => out.push(s.clone()),
        other => out.push(other.to_string()),
    }
}

#[test]
fn one_json_log_line_per_request() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .file(
            "gateway.yaml",
            format!(
                "services:\n- name: logged-service\n  url: {}\n  routes:\n  - name: logged-route\n    paths: [/]\n",
                echo.url()
            ),
        )
        .start();
    let r = Curl::at("http", "h.test", gw.http_port(), "/x")
        .header("X-Request-Id: log-line-test-1")
        .run();
    assert_eq!(r.status, 200);
    assert!(
        gw.wait_for_log("log-line-test-1", Duration::from_secs(5)),
        "no log line with the request id"
    );
    let log = gw.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("log-line-test-1"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one log line per request: {lines:#?}"
    );
    let v: serde_json::Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {}", lines[0]));
    let mut leaves = Vec::new();
    json_leaves(&v, &mut leaves);
    for want in ["logged-route", "logged-service", "200"] {
        assert!(
            leaves.iter().any(|l| l == want),
            "log line lacks {want:?}: {}",
            lines[0]
        );
    }
    assert!(
        leaves.iter().any(|l| l.contains(&echo.addr())),
        "log line lacks the upstream address {}: {}",
        echo.addr(),
        lines[0]
    );
}

#[test]
fn upstream_errors_pass_through_unchanged() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ));
    for code in [404u16, 500, 502, 503] {
        let r = Curl::at("http", "h.test", gw.http_port(), "/x")
            .header(&format!("x-echo-status: {code}"))
            .run();
        assert_eq!(r.status, code);
        // The upstream's own body, not a gateway error body.
        assert_eq!(r.json()["server"], "echo", "status {code}: {}", r.text());
        assert!(r.header("x-request-id").is_some());
    }
}

#[test]
fn dot_segments_cannot_escape_the_matched_route() {
    // Routes decide which plugins (authentication, ACL) guard a request. If `/api/public/../private`
    // matched the public route and went upstream as sent, every upstream that resolves dot
    // segments (most do) would serve /api/private without the private route's protection.
    // Kong normalises the path (RFC 3986: percent-decoded unreserved characters, dot segments
    // removed) before matching; whatever the gateway does, the public route must not take these.
    let public = HttpEcho::start("public");
    let private = HttpEcho::start("private");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: public
  url: {public}
  routes:
  - name: public
    paths: [/api/public]
    strip_path: false
- name: private
  url: {private}
  routes:
  - name: private
    paths: [/api/private]
    strip_path: false
"#,
        public = public.url(),
        private = private.url(),
    ));
    for path in [
        "/api/public/../private/secret",
        "/api/public/./../private/secret",
        "/api/public/%2e%2e/private/secret",
        "/api/public/%2E%2E/private/secret",
        "/api/public/.%2e/private/secret",
    ] {
        let r = Curl::at("http", "h.test", gw.http_port(), path)
            .arg("--path-as-is")
            .run();
        let by = if r.status == 200 {
            r.json()["server"].as_str().unwrap_or("").to_string()
        } else {
            String::new()
        };
        assert!(
            (400..500).contains(&r.status) || by == "private",
            "{path}: answered {} by {by:?} (upstream saw {}); must be refused or routed as /api/private/secret",
            r.status,
            r.text()
        );
    }
    assert_eq!(
        public.requests(),
        0,
        "the public route took a path outside its prefix"
    );
}

#[test]
fn encoded_paths_match_like_their_decoded_form() {
    // A catch-all route next to a guarded prefix: `/%61dmin` and `/x/../admin` are `/admin` to
    // the upstream, so they must not be matched by the catch-all.
    let open = HttpEcho::start("open");
    let guarded = HttpEcho::start("guarded");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: open
  url: {open}
  routes:
  - name: open
    paths: [/]
    strip_path: false
- name: guarded
  url: {guarded}
  routes:
  - name: guarded
    paths: [/admin]
    strip_path: false
"#,
        open = open.url(),
        guarded = guarded.url(),
    ));
    assert_eq!(served_by(&get(&gw, "h.test", "/admin/x")), "guarded");
    for path in [
        "/%61dmin/x",
        "/%61%64%6d%69%6e/x",
        "/x/../admin/x",
        "/./admin/x",
    ] {
        let r = Curl::at("http", "h.test", gw.http_port(), path)
            .arg("--path-as-is")
            .run();
        let by = if r.status == 200 {
            r.json()["server"].as_str().unwrap_or("").to_string()
        } else {
            String::new()
        };
        assert!(
            (400..500).contains(&r.status) || by == "guarded",
            "{path}: answered {} by {by:?}; the catch-all must not take a path that means /admin",
            r.status
        );
    }
    assert_eq!(open.requests(), 0);
}

#[test]
fn https_redirect_status_codes() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: s
  url: {u}
  routes:
  - name: moved
    paths: [/moved]
    protocols: [https]
    https_redirect_status_code: 301
  - name: temporary
    paths: [/temporary]
    protocols: [https]
    https_redirect_status_code: 307
"#,
        u = echo.url()
    ));
    for (path, code) in [("/moved/a?q=1", 301u16), ("/temporary/a?q=1", 307)] {
        let r = get(&gw, "redirect.example.com", path);
        assert_eq!(r.status, code, "{r:#?}");
        let loc = r.header("location").unwrap_or("");
        let rest = loc
            .strip_prefix("https://redirect.example.com")
            .unwrap_or_else(|| panic!("Location {loc:?} is not https on the same host"));
        let rest = match rest.strip_prefix(':') {
            Some(p) => p.trim_start_matches(|c: char| c.is_ascii_digit()),
            None => rest,
        };
        assert_eq!(rest, path, "Location {loc:?} must keep the path and query");
        assert!(r.header("x-request-id").is_some());
    }
    assert_eq!(echo.requests(), 0);
}

#[test]
fn https_only_426_carries_upgrade_header() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: upgrade\n    paths: [/upgrade]\n    protocols: [https]\n",
        echo.url()
    ));
    let r = get(&gw, "redirect.example.com", "/upgrade");
    assert_error_body(&r, 426, "Please use HTTPS protocol");
    // RFC 9110 §15.5.22: a server sending 426 MUST send an Upgrade header (Kong sends
    // `Upgrade: TLS/1.2, HTTP/1.1` with `Connection: Upgrade`).
    assert!(
        r.header("upgrade").is_some_and(|u| u.contains("TLS")),
        "426 without an Upgrade header: {:?}",
        r.headers
    );
}

#[test]
fn large_upload_with_expect_continue() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ));
    let body = vec![b'z'; 3 * 1024 * 1024];
    let t = Instant::now();
    let r = Curl::at("http", "h.test", gw.http_port(), "/big")
        .header("Expect: 100-continue")
        .data(&body)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(r.json()["body_len"], 3 * 1024 * 1024);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn oversized_headers_are_refused_with_431_and_never_forwarded() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ));
    let big = "a".repeat(20 * 1024);
    let r = Curl::at("http", "h.test", gw.http_port(), "/x")
        .header(&format!("x-big: {big}"))
        .run();
    assert_error_body(&r, 431, "Request header fields too large");
    // Many medium headers adding up past the total limit.
    let mut c = Curl::at("http", "h.test", gw.http_port(), "/x");
    let medium = "b".repeat(8 * 1024);
    for i in 0..9 {
        c = c.header(&format!("x-m{i}: {medium}"));
    }
    assert_eq!(c.run().status, 431);
    assert_eq!(
        echo.requests(),
        0,
        "an oversized request reached the upstream"
    );
    // Ordinary requests still pass.
    let ok = Curl::at("http", "h.test", gw.http_port(), "/x")
        .header(&format!("x-fine: {}", "c".repeat(4 * 1024)))
        .run();
    assert_eq!(ok.status, 200);
}

/// Kong's default `upstream_keepalive_pool_size` (512), not Pingora's 128: a burst of 300
/// concurrent requests after another reuses the first burst's upstream connections instead of
/// opening ~170 new ones (each a connect and, over TLS, a handshake).
#[test]
fn upstream_pool_keeps_a_burst_of_300_connections() {
    use std::io::{Read, Write};
    let echo = HttpEcho::start_with_delay("pool", Duration::from_millis(400));
    let gw = Gateway::start(&format!(
        r#"
services:
- name: pool
  url: {echo}
  routes:
  - name: pool
    paths: [/pool]
"#,
        echo = echo.url(),
    ));
    let port = gw.http_port();
    let burst = || {
        let threads: Vec<_> = (0..300)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(20)))
                        .expect("timeout");
                    c.write_all(b"GET /pool HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
                        .expect("write");
                    let mut out = Vec::new();
                    c.read_to_end(&mut out).expect("read");
                    String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .filter(|ok| *ok)
            .count()
    };
    assert_eq!(burst(), 300, "first burst");
    let first = echo.connections();
    assert!(
        first >= 250,
        "the first burst should need ~300 upstream connections, got {first}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(burst(), 300, "second burst");
    let new = echo.connections() - first;
    assert!(
        new <= 30,
        "the second burst opened {new} new upstream connections: the pool did not keep the first burst's {first}"
    );
}
