//! The transformation plugins through the real binary with curl: cors (preflight answers and
//! response headers compared with what Kong's handler sends), request-transformer (headers,
//! query, JSON and form bodies, method, uri with regex captures), response-transformer (JSON
//! bodies rewritten, everything else untouched, chunked upstreams), correlation-id, and bad
//! configuration of each located at file:line:col.

mod common;

use common::*;
use serde_json::{json, Value};

const DEFAULT_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT";

fn names(r: &Response) -> Vec<&str> {
    r.headers.iter().map(|(n, _)| n.as_str()).collect()
}

/// The `access-control-*` and `vary` headers of a response, sorted: what CORS decides.
fn cors_headers(r: &Response) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("access-control-") || n == "vary")
        .cloned()
        .collect();
    v.sort();
    v
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn preflight(gw: &Gateway, path: &str, origin: &str) -> Curl {
    Curl::at("http", "example.com", gw.http_port(), path)
        .method("OPTIONS")
        .header(&format!("Origin: {origin}"))
        .header("Access-Control-Request-Method: POST")
}

#[test]
fn cors_preflights_are_answered_like_kong() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: any
    paths: [/any]
    plugins:
    - name: cors
  - name: exact
    paths: [/exact]
    plugins:
    - name: cors
      config: {{origins: ["http://a.test"]}}
  - name: list
    paths: [/list]
    plugins:
    - name: cors
      config:
        origins: ["http://a.test:80", "https://.*\\.b\\.test"]
        credentials: true
        max_age: 3600
        headers: [X-A, X-B]
        exposed_headers: [X-E]
        methods: [GET, POST]
  - name: star-credentials
    paths: [/star]
    plugins:
    - name: cors
      config: {{origins: ["*"], credentials: true, private_network: true}}
  - name: continue
    paths: [/continue]
    plugins:
    - name: cors
      config: {{preflight_continue: true}}
"#,
        url = echo.url()
    ));
    let before = echo.requests();

    // Defaults: every origin, Kong's method list, no Vary, an empty 200 without Content-Type.
    let r = preflight(&gw, "/any", "http://x.test")
        .header("Access-Control-Request-Headers: X-Custom")
        .run();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", DEFAULT_METHODS),
            ("access-control-allow-headers", "X-Custom"),
        ])
    );
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(r.header("content-type"), None, "{:?}", names(&r));
    assert!(r.body.is_empty());

    // One flat origin is sent as configured, whatever the request's origin, with Vary.
    let r = preflight(&gw, "/exact", "http://other.test").run();
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", "http://a.test"),
            ("access-control-allow-methods", DEFAULT_METHODS),
            ("vary", "Origin"),
        ])
    );

    // A list: exact (default port normalised away) and regex entries; credentials.
    let full = |origin: &str| {
        pairs(&[
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-headers", "X-A,X-B"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-max-age", "3600"),
            ("vary", "Origin"),
        ])
    };
    let r = preflight(&gw, "/list", "http://a.test").run();
    assert_eq!(cors_headers(&r), full("http://a.test"));
    let r = preflight(&gw, "/list", "http://a.test:80").run();
    assert_eq!(cors_headers(&r), full("http://a.test"));
    let r = preflight(&gw, "/list", "https://api.b.test").run();
    assert_eq!(cors_headers(&r), full("https://api.b.test"));
    // No match: no Allow-Origin, the rest as Kong sends it.
    let r = preflight(&gw, "/list", "https://b.test.evil.test").run();
    assert_eq!(r.status, 200);
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-headers", "X-A,X-B"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-max-age", "3600"),
            ("vary", "Origin"),
        ])
    );

    // `*` with credentials never goes out as `*`: the origin is echoed.
    let r = preflight(&gw, "/star", "http://c.test")
        .header("Access-Control-Request-Private-Network: true")
        .run();
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", "http://c.test"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", DEFAULT_METHODS),
            ("access-control-allow-private-network", "true"),
            ("vary", "Origin"),
        ])
    );
    assert_eq!(echo.requests(), before, "a preflight reached the upstream");

    // preflight_continue: the upstream answers, without CORS headers from the gateway.
    let r = preflight(&gw, "/continue", "http://x.test").run();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "OPTIONS");
    assert_eq!(cors_headers(&r), vec![]);
    assert_eq!(echo.requests(), before + 1);

    // OPTIONS without Access-Control-Request-Method is no preflight: proxied.
    let r = Curl::at("http", "example.com", gw.http_port(), "/any")
        .method("OPTIONS")
        .header("Origin: http://x.test")
        .run();
    assert_eq!(r.json()["method"], "OPTIONS");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn cors_headers_on_proxied_and_gateway_made_responses() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: list
    paths: [/list]
    plugins:
    - name: cors
      config:
        origins: ["http://a.test", "https://.*\\.b\\.test"]
        credentials: true
        exposed_headers: [X-E, X-F]
  - name: any
    paths: [/any]
    plugins:
    - name: cors
  - name: origin-required
    paths: [/required]
    plugins:
    - name: cors
      config: {{allow_origin_absent: false}}
  - name: locked
    paths: [/locked]
    plugins:
    - name: cors
    - name: request-termination
      config: {{status_code: 401, message: Unauthorized}}
"#,
        url = echo.url()
    ));
    let at = |path: &str| Curl::at("http", "example.com", gw.http_port(), path);

    let r = at("/list").header("Origin: https://x.b.test").run();
    assert_eq!(r.status, 200);
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", "https://x.b.test"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "X-E,X-F"),
            ("vary", "Origin"),
        ])
    );
    // Vary is added to what the upstream varies on.
    let r = at("/list")
        .header("Origin: http://a.test")
        .header("X-Echo-Header: Vary: Accept-Encoding")
        .run();
    assert_eq!(r.header_all("vary"), ["Accept-Encoding", "Origin"]);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://a.test")
    );
    // An upstream's own Allow-Origin for a refused origin is cleared.
    let r = at("/list")
        .header("Origin: http://evil.test")
        .header("X-Echo-Header: Access-Control-Allow-Origin: *")
        .run();
    assert_eq!(r.header("access-control-allow-origin"), None);

    // Without Origin: Kong's allow_origin_absent (true) still sends the headers ...
    let r = at("/any").run();
    assert_eq!(
        cors_headers(&r),
        pairs(&[("access-control-allow-origin", "*")])
    );
    // ... unless switched off.
    let r = at("/required").run();
    assert_eq!(cors_headers(&r), vec![]);
    let r = at("/required").header("Origin: http://x.test").run();
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // A gateway-made 401 carries them too (Kong runs header_filter on kong.response.exit).
    let r = at("/locked").header("Origin: http://x.test").run();
    assert_error_body(&r, 401, "Unauthorized");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // While a preflight on the same route is answered by cors (priority 2000) first.
    let r = preflight(&gw, "/locked", "http://x.test").run();
    assert_eq!(r.status, 200);
}

#[test]
fn request_transformer_rewrites_headers_query_and_bodies() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: users
    paths: ["~/users/(?<id>\\d+)/(\\w+)$"]
    strip_path: false
    plugins:
    - name: request-transformer
      config:
        remove:
          headers: [x-drop]
          querystring: [drop]
          body: [secret]
        rename:
          headers: ["x-old:x-new"]
          querystring: ["old:new"]
          body: ["old:new"]
        replace:
          headers: ["x-rep:replaced", "x-absent:never"]
          querystring: ["rep:$(headers.x_rep_source)"]
          body: ["rep:R"]
        add:
          headers: ["x-user:$(uri_captures.id)", "x-rep:not-added", "x-tab:$(uri_captures[2])"]
          querystring: ["from:$(query_params.rep)"]
          body: ["added:$(uri_captures.id)"]
        append:
          headers: ["x-multi:two"]
          querystring: ["m:2"]
          body: ["list:2"]
"#,
        url = echo.url()
    ));
    let at = |path: &str| Curl::at("http", "example.com", gw.http_port(), path);

    let r = at("/users/42/profile?drop=1&old=o&rep=0&m=1")
        .header("X-Drop: 1")
        .header("X-Old: o")
        .header("X-Rep: 1")
        .header("X-Multi: one")
        .header("X-Rep-Source: src")
        .run();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(h.get("x-drop"), None);
    assert_eq!(h.get("x-old"), None);
    assert_eq!(h["x-new"], "o");
    assert_eq!(h["x-rep"], "replaced");
    assert_eq!(h.get("x-absent"), None);
    assert_eq!(h["x-user"], "42");
    assert_eq!(h["x-tab"], "profile");
    assert_eq!(h["x-multi"], "one, two");
    // Kong's set_query: every argument encoded, sorted; templates read the client's query.
    assert_eq!(j["query"], "from=0&m=1&m=2&new=o&rep=src");
    assert_eq!(j["path"], "/users/42/profile");

    // JSON body, with Content-Length and chunked.
    let body = r#"{"secret":"s","old":"o","rep":1,"list":"1","keep":{"a":[1,2]}}"#;
    let want = json!({"new":"o","rep":"R","list":["1","2"],"keep":{"a":[1,2]},"added":"42"});
    for chunked in [false, true] {
        let mut c = at("/users/42/x")
            .header("Content-Type: application/json")
            .data(body);
        if chunked {
            c = c.header("Transfer-Encoding: chunked");
        }
        let r = c.run();
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        let sent: Value = serde_json::from_str(j["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent, want, "chunked={chunked}");
        assert_eq!(
            j["headers"]["content-length"],
            j["body_len"].to_string(),
            "chunked={chunked}"
        );
        assert_eq!(j["headers"].get("transfer-encoding"), None);
    }

    // Form body.
    let r = at("/users/7/x")
        .header("Content-Type: application/x-www-form-urlencoded")
        .data("secret=s&old=o&rep=1&list=1&keep=a%20b")
        .run();
    let j = r.json();
    assert_eq!(j["body"], "rep=R&list=1&list=2&keep=a%20b&new=o&added=7");

    // Multipart passes through untouched.
    let multipart =
        "--XyZ\r\nContent-Disposition: form-data; name=\"secret\"\r\n\r\ns\r\n--XyZ--\r\n";
    let r = at("/users/7/x")
        .header("Content-Type: multipart/form-data; boundary=XyZ")
        .data(multipart)
        .run();
    let j = r.json();
    assert_eq!(j["body"], multipart);
    assert_eq!(j["headers"]["content-length"], multipart.len().to_string());
}

#[test]
fn request_transformer_method_and_uri() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: v1
    # The captures come from the path that matched, not the route's first one.
    paths: [/unrelated-prefix, "~/v1/(?<thing>[a-z]+)"]
    plugins:
    - name: request-transformer
      config:
        http_method: GET
        replace:
          uri: /v2/$(uri_captures.thing)/$(query_params.id or 'none')
"#,
        url = echo.url()
    ));
    let at = |path: &str| Curl::at("http", "example.com", gw.http_port(), path);
    let r = at("/v1/books?id=3")
        .header("Content-Type: application/x-www-form-urlencoded")
        .data("a=1&id=4")
        .run();
    let j = r.json();
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/v2/books/3");
    // A form body becomes query arguments on GET (Kong), the query kept.
    assert_eq!(j["query"], "a=1&id=3&id=4");
    let r = at("/v1/pens").run();
    assert_eq!(r.json()["path"], "/v2/pens/none");
}

#[test]
fn response_transformer_rewrites_json_and_leaves_the_rest() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: api
    paths: [/api]
    plugins:
    - name: response-transformer
      config:
        remove:
          headers: [x-echo-server]
          json: [server, tls, sni, client_subject, headers, conn_requests, body]
        rename:
          headers: ["x-up:x-renamed"]
          json: ["method:verb"]
        replace:
          headers: ["x-rep:replaced"]
          json: ["path:/hidden", "body_len:1"]
          json_types: [string, number]
        add:
          headers: ["x-added:yes"]
          json: ["added:true", "verb:not-added"]
          json_types: [boolean]
        append:
          headers: ["x-multi:two"]
          json: ["query:more"]
"#,
        url = echo.url()
    ));
    let at = |path: &str| Curl::at("http", "example.com", gw.http_port(), path);
    let want = json!({
        "verb": "GET", "path": "/hidden", "query": ["q=1", "more"], "body_len": 1, "added": true
    });
    for chunked in [false, true] {
        let mut c = at("/api?q=1")
            .header("X-Echo-Header: X-Up: u")
            .header("X-Echo-Header: X-Rep: r")
            .header("X-Echo-Header: X-Multi: one");
        if chunked {
            c = c.header("X-Echo-Chunked: 1");
        }
        let r = c.run();
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), want, "chunked={chunked}");
        assert_eq!(r.header("content-length"), None, "chunked={chunked}");
        assert_eq!(r.header("x-echo-server"), None);
        assert_eq!(r.header("x-up"), None);
        assert_eq!(r.header("x-renamed"), Some("u"));
        assert_eq!(r.header("x-rep"), Some("replaced"));
        assert_eq!(r.header("x-added"), Some("yes"));
        assert_eq!(r.header_all("x-multi"), ["one", "two"]);
    }

    // Not JSON: the body streams untouched (length kept); headers still change.
    for chunked in [false, true] {
        let mut c = at("/api?q=1").header("X-Echo-Content-Type: text/plain");
        if chunked {
            c = c.header("X-Echo-Chunked: 1");
        }
        let r = c.run();
        let j = r.json();
        assert_eq!(j["server"], "echo");
        assert_eq!(j["method"], "GET");
        assert_eq!(r.header("x-added"), Some("yes"));
        if !chunked {
            assert_eq!(
                r.header("content-length"),
                Some(r.body.len().to_string().as_str())
            );
        }
    }
}

#[test]
fn correlation_id_generators_and_echo() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: counter
    paths: [/counter]
    plugins:
    - name: correlation-id
      config: {{echo_downstream: true}}
  - name: uuid
    paths: [/uuid]
    plugins:
    - name: correlation-id
      config: {{header_name: X-Correlation-ID, generator: uuid}}
  - name: tracker
    paths: [/tracker]
    plugins:
    - name: correlation-id
      config: {{generator: tracker, echo_downstream: true}}
  - name: closed
    paths: [/closed]
    plugins:
    - name: correlation-id
      config: {{echo_downstream: true}}
    - name: request-termination
"#,
        url = echo.url()
    ));
    let at = |path: &str| Curl::at("http", "example.com", gw.http_port(), path);

    // Default: Kong-Request-ID, uuid#counter, echoed to the client.
    let a = at("/counter").run();
    let b = at("/counter").run();
    let ida = a.echo_header("kong-request-id").unwrap();
    let idb = b.echo_header("kong-request-id").unwrap();
    assert_eq!(a.header("kong-request-id"), Some(ida.as_str()));
    let (ua, na) = ida.split_once('#').unwrap();
    let (ub, nb) = idb.split_once('#').unwrap();
    assert_eq!(ua, ub, "one uuid per process");
    assert_eq!(ua.len(), 36);
    assert!(nb.parse::<u64>().unwrap() > na.parse::<u64>().unwrap());
    // The client's id is kept and echoed.
    let r = at("/counter").header("Kong-Request-ID: mine").run();
    assert_eq!(r.echo_header("kong-request-id").as_deref(), Some("mine"));
    assert_eq!(r.header("kong-request-id"), Some("mine"));

    // uuid, not echoed.
    let r = at("/uuid").run();
    let id = r.echo_header("x-correlation-id").unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id.matches('-').count(), 4);
    assert_eq!(r.header("x-correlation-id"), None);

    // tracker: server address and port first.
    let r = at("/tracker").run();
    let id = r.echo_header("kong-request-id").unwrap();
    assert!(
        id.starts_with(&format!("127.0.0.1-{}-", gw.http_port())),
        "{id}"
    );
    assert_eq!(r.header("kong-request-id"), Some(id.as_str()));

    // Echoed on the gateway's own answers too.
    let r = at("/closed").header("Kong-Request-ID: on-503").run();
    assert_error_body(&r, 503, "The upstream server is currently unavailable");
    assert_eq!(r.header("kong-request-id"), Some("on-503"));
    let r = at("/closed").run();
    assert!(r.header("kong-request-id").is_some_and(|v| v.contains('#')));
}

#[test]
fn bad_configuration_is_located() {
    let cases = [
        (
            "cors",
            "origins: ['http://ok.test', '(unclosed']",
            "plugins[0].config.origins[1]: '(unclosed' is not a valid regex",
            "'(unclosed",
        ),
        (
            "cors",
            "methods: [GET, FETCH]",
            "plugins[0].config.methods[1]: expected one of: GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS, TRACE, CONNECT",
            "FETCH",
        ),
        (
            "request-transformer",
            "add: {headers: ['bad header:x']}",
            "plugins[0].config.add.headers[0]: 'bad header' is not a valid header",
            "'bad header",
        ),
        (
            "request-transformer",
            "http_method: get",
            "plugins[0].config.http_method: invalid value: get",
            "get",
        ),
        (
            "response-transformer",
            "add: {json_types: [int]}",
            "plugins[0].config.add.json_types[0]: expected one of: boolean, number, string",
            "int",
        ),
        (
            "correlation-id",
            "generator: ulid",
            "plugins[0].config.generator: expected one of: uuid, uuid#counter, tracker",
            "ulid",
        ),
    ];
    for (plugin, config, message, at_text) in cases {
        let yaml = format!(
            "services:\n- name: s\n  url: http://127.0.0.1:1\nplugins:\n- name: {plugin}\n  config:\n    {config}\n"
        );
        let conf = ConfDir::new().with("p.yaml", &yaml);
        let out = check(&conf);
        assert_eq!(out.code, 1, "{plugin}: {}", out.all());
        let col = config.find(at_text).unwrap() + 5;
        let want = format!("conf/p.yaml:7:{col}: {message}");
        assert!(
            out.all().lines().any(|l| l == want),
            "want {want:?} in:\n{}",
            out.all()
        );
    }
}

#[test]
fn cors_headers_on_an_authentication_plugins_401() {
    let pki = Pki::new();
    let echo = HttpEcho::start("echo");
    let yaml = format!(
        r#"ca_certificates:
- name: clients
  cert_file: certs/root.crt
services:
- name: echo
  url: {url}
  routes:
  - name: private
    paths: [/private]
    plugins:
    - name: cors
      config: {{origins: ["http://app.test"], credentials: true}}
    - name: mtls-auth
      config: {{ca_certificates: [clients]}}
"#,
        url = echo.url()
    );
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("gateway.yaml", yaml)
        .start();
    // No client certificate: mtls-auth answers 401, and cors's header phase still runs.
    let r = Curl::at("http", "example.com", gw.http_port(), "/private")
        .header("Origin: http://app.test")
        .run();
    assert_error_body(&r, 401, "No required TLS certificate was sent");
    assert_eq!(
        cors_headers(&r),
        pairs(&[
            ("access-control-allow-origin", "http://app.test"),
            ("access-control-allow-credentials", "true"),
            ("vary", "Origin"),
        ])
    );
    // A preflight needs no certificate: cors (2000) answers before mtls-auth (1600).
    let r = preflight(&gw, "/private", "http://app.test").run();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    assert_eq!(echo.requests(), 0);
}

#[test]
fn correlation_id_appears_in_log_records() {
    let echo = HttpEcho::start("echo");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: logged
    paths: [/logged]
    plugins:
    - name: correlation-id
      config: {{generator: uuid}}
    - name: file-log
      config: {{path: {path}}}
"#,
        url = echo.url(),
        path = path.display()
    ));
    let r = Curl::at("http", "example.com", gw.http_port(), "/logged").run();
    let id = r.echo_header("kong-request-id").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let record: Value = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str(line).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no log record");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(record["correlation_id"], id.as_str(), "{record}");
}
