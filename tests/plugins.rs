//! Plugins through the real binary (issue 5; SPEC §3 plugins, §8): the "Write a plugin" walkthrough
//! of plugins/hello-header/README.md checked against the `hello-header` crate the suite
//! builds, then run exactly as the walkthrough configures it; request-termination; and Kong's
//! plugin precedence with real requests, consumers identified by client certificates (mtls-auth).

// Without `example-plugins` the hello-header tests are compiled out, leaving their helpers unused.
#![cfg_attr(not(feature = "example-plugins"), allow(dead_code))]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// The README that carries the walkthrough, relative to the repository root.
const WALKTHROUGH: &str = "plugins/hello-header/README.md";
const CRATE_DIR: &str = "plugins/hello-header";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One fenced code block of the walkthrough, dedented, with the prose written before it.
#[derive(Debug)]
struct Block {
    lang: String,
    text: String,
    prose: String,
}

/// The fenced blocks of the README's "## Write a plugin" section, in order.
fn walkthrough_blocks() -> Vec<Block> {
    let readme = read(&repo_root().join(WALKTHROUGH));
    let start = readme
        .find("\n## Write a plugin\n")
        .unwrap_or_else(|| panic!("{WALKTHROUGH} has no '## Write a plugin' section"));
    let section = &readme[start + 1..];
    let end = section[1..]
        .find("\n## ")
        .map(|i| i + 1)
        .unwrap_or(section.len());
    let mut blocks = Vec::new();
    let mut prose = String::new();
    let mut open: Option<(usize, String, String)> = None;
    for line in section[..end].lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None if trimmed.starts_with("```") => {
                open = Some((indent, trimmed[3..].trim().to_string(), String::new()));
            }
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
            Some((_, lang, text)) if trimmed == "```" => {
                blocks.push(Block {
                    lang,
                    text,
                    prose: std::mem::take(&mut prose),
                });
            }
            Some((fence_indent, lang, mut text)) => {
                // Code inside a list item is indented like its fence; that is markdown, not code.
                let cut = indent.min(fence_indent);
                text.push_str(&line[cut..]);
                text.push('\n');
                open = Some((fence_indent, lang, text));
            }
        }
    }
    assert!(open.is_none(), "unterminated code block in {WALKTHROUGH}");
    blocks
}

/// The only block of `lang` in the walkthrough.
fn only_block(lang: &str) -> String {
    let mut found: Vec<String> = walkthrough_blocks()
        .into_iter()
        .filter(|b| b.lang == lang)
        .map(|b| b.text)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one ```{lang} block in {WALKTHROUGH}"
    );
    found.remove(0)
}

/// The file a block belongs to: the last `path.rs` / `path.toml` code span in the prose before it.
fn target_of(prose: &str) -> Option<String> {
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.ends_with(".rs") || span.ends_with(".toml"))
        .last()
        .map(str::to_string)
}

/// Whitespace-insensitive comparison: indentation and line breaks are presentation.
fn tokens(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// The lines of TOML table `header` (`[dependencies]`) up to the next table.
fn toml_table<'a>(toml: &'a str, header: &str) -> Vec<&'a str> {
    toml.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect()
}

/// The lines of the body of `registry()` in src/plugin/mod.rs.
fn registry_body(source: &str) -> Vec<&str> {
    source
        .lines()
        .skip_while(|l| !l.contains("pub fn registry()"))
        .skip(1)
        .take_while(|l| *l != "}")
        .collect()
}

/// Every file under `dir` (relative, sorted), skipping a build directory.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else {
                let rel = path.strip_prefix(dir).expect("under dir");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// (a) The walkthrough is the crate.

#[test]
fn walkthrough_code_blocks_are_the_hello_header_crate() {
    let root = repo_root();
    let blocks = walkthrough_blocks();
    let mut covered = BTreeSet::new();
    for b in blocks
        .iter()
        .filter(|b| b.lang == "rust" || b.lang == "toml")
    {
        let target = target_of(&b.prose).unwrap_or_else(|| {
            panic!(
                "a ```{} block in {WALKTHROUGH} names no file before it:\n{}",
                b.lang, b.text
            )
        });
        match target.as_str() {
            "plugins/hello-header/Cargo.toml" | "plugins/hello-header/src/lib.rs" => {
                let file = read(&root.join(&target));
                assert_eq!(
                    tokens(&b.text),
                    tokens(&file),
                    "{WALKTHROUGH} drifted from {target}\n--- README ---\n{}--- file ---\n{file}",
                    b.text
                );
            }
            "Cargo.toml" => {
                let manifest = read(&root.join("Cargo.toml"));
                let deps = toml_table(&manifest, "[dependencies]");
                for line in b.text.lines().filter(|l| !l.trim().is_empty()) {
                    // The repository's copy of the example is optional (the `example-plugins`
                    // feature, which the walkthrough explains); otherwise the line is the same.
                    let optional = line.replacen(" }", ", optional = true }", 1);
                    assert!(
                        deps.iter()
                            .any(|d| tokens(d) == tokens(line) || tokens(d) == tokens(&optional)),
                        "root Cargo.toml [dependencies] lacks the walkthrough's `{line}`"
                    );
                }
            }
            "src/plugin/mod.rs" => {
                let source = read(&root.join("src/plugin/mod.rs"));
                let body = registry_body(&source);
                for line in b.text.lines().filter(|l| !l.trim().is_empty()) {
                    assert!(
                        body.iter().any(|r| tokens(r) == tokens(line)),
                        "registry() in src/plugin/mod.rs lacks the walkthrough's `{line}`:\n{}",
                        body.join("\n")
                    );
                }
            }
            other => panic!("{WALKTHROUGH}: a code block for unexpected file `{other}`"),
        }
        covered.insert(target);
    }
    let expected: BTreeSet<String> = [
        "Cargo.toml",
        "plugins/hello-header/Cargo.toml",
        "plugins/hello-header/src/lib.rs",
        "src/plugin/mod.rs",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(covered, expected, "walkthrough steps with code");

    // The README shows the whole crate: nothing the user would have to guess.
    assert_eq!(
        files_under(&root.join(CRATE_DIR)),
        ["Cargo.toml", "README.md", "src/lib.rs"],
        "{CRATE_DIR} has files the walkthrough does not show"
    );

    // Step 1 is `cargo new`, which names the package after the folder and joins the workspace.
    let sh: Vec<&Block> = blocks.iter().filter(|b| b.lang == "sh").collect();
    assert_eq!(
        sh.first().map(|b| tokens(&b.text)),
        Some(tokens("cargo new --lib plugins/hello-header"))
    );
    let crate_manifest = read(&root.join(CRATE_DIR).join("Cargo.toml"));
    assert!(
        crate_manifest
            .lines()
            .any(|l| tokens(l) == tokens(r#"name = "hello-header""#)),
        "package name is not the folder name cargo new gives"
    );
    let manifest = read(&root.join("Cargo.toml"));
    let members = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .unwrap_or_default();
    assert!(
        members.contains(r#""plugins/hello-header""#),
        "workspace members lack plugins/hello-header: {members}"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) hello-header through the binary, configured with the walkthrough's own YAML.

// hello-header is registered only with the `example-plugins` feature (the test command
// enables every feature).
#[cfg(feature = "example-plugins")]
#[test]
fn hello_header_runs_as_the_walkthrough_configures_it() {
    let conf_yaml = only_block("yaml");
    let readme = read(&repo_root().join(WALKTHROUGH));
    assert!(
        readme.contains("The upstream now sees `X-Hello: world`"),
        "the walkthrough's promise changed; update this test"
    );
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .file(
            "gateway.yaml",
            format!(
                "services:
- name: echo
  url: {url}
  routes:
  - name: all
    paths: [/]
  - name: scoped
    paths: [/scoped]
    plugins:
    - name: hello-header
      config:
        greeting: from the route
",
                url = echo.url()
            ),
        )
        .file("hello.yaml", &conf_yaml)
        .start();
    for path in ["/", "/any/path?q=1"] {
        let r = Curl::at("http", "example.com", gw.http_port(), path)
            .header("X-Hello: spoofed by the client")
            .run();
        assert_eq!(r.status, 200, "{r:#?} {}", r.text());
        // Replaced, not appended: the echo joins repeated headers with ", ".
        assert_eq!(r.echo_header("x-hello").as_deref(), Some("world"), "{path}");
    }
    // One instance per name: the route's instance wins over the global one.
    let r = Curl::at("http", "example.com", gw.http_port(), "/scoped").run();
    assert_eq!(
        r.echo_header("x-hello").as_deref(),
        Some("from the route"),
        "{}",
        r.text()
    );
}

// hello-header is registered only with the `example-plugins` feature (the test command
// enables every feature).
#[cfg(feature = "example-plugins")]
#[test]
fn hello_header_typo_is_reported_where_the_walkthrough_says() {
    let good = only_block("yaml");
    let bad = good.replace("greeting:", "greting:");
    assert_ne!(
        good, bad,
        "the walkthrough's YAML has no `greeting:` to misspell"
    );
    let expected = only_block("text");
    let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();

    let conf = ConfDir::new().with("hello.yaml", &bad);
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    let all = out.all();
    let got: Vec<&str> = all.lines().map(str::trim_end).collect();
    assert_eq!(
        got, expected,
        "`portcullis check` output differs from the walkthrough"
    );

    // Independently of the README: the line of `greting`, the path of the field.
    let line = bad
        .lines()
        .position(|l| l.contains("greting:"))
        .expect("typo line")
        + 1;
    let first = expected.first().copied().unwrap_or_default();
    assert!(
        first.starts_with(&format!("conf/hello.yaml:{line}:"))
            && first.contains(": plugins[0].config.greting: unknown field `greting`"),
        "{first}"
    );
    let col: usize = first
        .split(':')
        .nth(2)
        .and_then(|c| c.parse().ok())
        .expect("column");
    let text_line = bad.lines().nth(line - 1).unwrap_or_default();
    assert!(
        text_line[col - 1..].starts_with("greting") || text_line[col - 1..].starts_with("world"),
        "column {col} points at neither the key nor its value in {text_line:?}"
    );

    // `run` refuses the same configuration with the same message.
    let err = match Gateway::builder().file("hello.yaml", &bad).try_start() {
        Ok(_) => panic!("the gateway started with a misspelt plugin field"),
        Err(e) => e,
    };
    assert!(err.exit_code.is_some_and(|c| c != 0), "{err}");
    assert!(err.log.contains(first), "{err}");

    // A value the factory rejects is located at the value.
    let empty = good.replace("greeting: world", r#"greeting: """#);
    let conf = ConfDir::new().with("hello.yaml", &empty);
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    let value_line = empty
        .lines()
        .position(|l| l.contains("greeting:"))
        .expect("greeting line");
    let value_col = empty
        .lines()
        .nth(value_line)
        .and_then(|l| l.find(r#""""#))
        .expect("value column");
    let want = format!(
        "conf/hello.yaml:{}:{}: plugins[0].config.greeting: must not be empty",
        value_line + 1,
        value_col + 1
    );
    assert!(
        out.all().lines().any(|l| l == want),
        "want {want:?} in:\n{}",
        out.all()
    );
}

// ---------------------------------------------------------------------------------------------
// (c) request-termination through the binary.

#[test]
fn request_termination_answers_instead_of_proxying() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: retired
    paths: [/retired]
    plugins:
    - name: request-termination
      config:
        status_code: 410
        message: This API was retired; use /v2
  - name: maintenance
    paths: [/maintenance]
    plugins:
    - name: request-termination
  - name: stub
    paths: [/stub]
    plugins:
    - name: request-termination
      config:
        status_code: 200
        body: '{{"stubbed": true}}'
        content_type: application/json
  - name: plain
    paths: [/plain]
    plugins:
    - name: request-termination
      config: {{status_code: 202, body: accepted}}
  - name: kill-switch
    paths: [/kill]
    plugins:
    - name: request-termination
      config:
        status_code: 418
        message: switched off
        trigger: x-kill
  - name: debug
    paths: [/debug]
    plugins:
    - name: request-termination
      config: {{status_code: 200, echo: true}}
"#,
        url = echo.url()
    ));
    let at = |path: &str| Curl::at("http", "example.com", gw.http_port(), path);
    let before = echo.requests();

    let r = at("/retired/v1/users").run();
    assert_error_body(&r, 410, "This API was retired; use /v2");
    // The client's request id is the one the JSON carries.
    let r = at("/retired").header("X-Request-Id: trace-42").run();
    assert_error_body(&r, 410, "This API was retired; use /v2");
    assert_eq!(r.json()["request_id"], "trace-42");

    // No config at all: Kong's defaults, 503 and Kong's message for it.
    let r = at("/maintenance").run();
    assert_error_body(&r, 503, "The upstream server is currently unavailable");

    let r = at("/stub").run();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"stubbed": true}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));

    let r = at("/plain").run();
    assert_eq!(r.status, 202);
    assert_eq!(r.text(), "accepted");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    let r = at("/debug/x?a=1").header("X-Probe: yes").run();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["request"]["path"], "/debug/x");
    assert_eq!(j["request"]["query"], "a=1");
    assert_eq!(j["request"]["headers"]["x-probe"], "yes");
    assert_eq!(j["matched_route"], "debug");
    assert_eq!(j["matched_service"], "echo");
    assert_eq!(
        j["request_id"],
        r.header("x-request-id").unwrap_or_default()
    );

    assert_eq!(
        echo.requests(),
        before,
        "a terminated request reached the upstream"
    );

    // trigger: only requests carrying the header or the query parameter are terminated.
    for (path, header) in [
        ("/kill", Some("X-Kill: 1")),
        ("/kill?x-kill", None),
        ("/kill?a=b&x-kill=yes", None),
    ] {
        let mut c = at(path);
        if let Some(h) = header {
            c = c.header(h);
        }
        assert_error_body(&c.run(), 418, "switched off");
    }
    assert_eq!(echo.requests(), before);
    for path in ["/kill", "/kill?a=x-kill", "/kill?x-killer=1"] {
        let r = at(path).header("X-Killer: 1").run();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["server"], "echo", "{path} was not proxied");
    }
    assert_eq!(echo.requests(), before + 3);
}

// ---------------------------------------------------------------------------------------------
// (d) Kong's precedence, with real requests.

const HOST: &str = "api.example.com";

struct Precedence {
    pki: Pki,
    echo: HttpEcho,
    gw: Gateway,
}

/// Who calls: no certificate (mtls-auth's `anonymous` consumer `guest`), alice or bob.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Guest,
    Alice,
    Bob,
}

/// One request-termination instance per scope below, each with its own status and message, so
/// the answer says which instance ran. `svc-a`: routes a1, a2, a3; `svc-b`: b1; `svc-c`: c1, c2.
fn precedence_setup() -> Precedence {
    let pki = Pki::new();
    let server = pki.server_leaf("api", &["DNS:api.example.com"]);
    let echo = HttpEcho::start("echo");
    let rt = |status: u16, message: &str| {
        format!(
            "name: request-termination\n  config: {{status_code: {status}, message: \"{message}\"}}"
        )
    };
    let yaml = format!(
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
  plugins:
  - {consumer_alice}
- username: bob
  plugins:
  - {consumer_bob_disabled}
    enabled: false
- username: guest
services:
- name: svc-a
  url: {url}
  plugins:
  - {service_a}
  routes:
  - name: a1
    paths: [/a1]
    plugins:
    - {route_a1}
  - name: a2
    paths: [/a2]
  - name: a3
    paths: [/a3]
    plugins:
    - {route_a3}
- name: svc-b
  url: {url}
  routes:
  - name: b1
    paths: [/b1]
    plugins:
    - {route_b1}
- name: svc-c
  url: {url}
  routes:
  - name: c1
    paths: [/c1]
    plugins:
    - {route_c1_disabled}
      enabled: false
  - name: c2
    paths: [/c2]
    plugins:
    - name: request-termination
      config: {{status_code: 422, message: "route c2 triggered", trigger: x-stop}}
    - name: hello-header
      config: {{greeting: route c2}}
plugins:
- name: mtls-auth
  config:
    ca_certificates: [clients]
    anonymous: guest
- name: hello-header
  config: {{greeting: global}}
- {global}
- {svc_a_bob}
  service: svc-a
  consumer: bob
- {a1_bob}
  route: a1
  consumer: bob
- {a2_alice}
  route: a2
  consumer: alice
- {svc_b_alice}
  service: svc-b
  consumer: alice
- {mismatch}
  service: svc-b
  route: a1
- {svc_a_a3}
  service: svc-a
  route: a3
- {a3_bob}
  route: a3
  consumer: bob
- {svc_a_a3_bob}
  service: svc-a
  route: a3
  consumer: bob
"#,
        url = echo.url(),
        consumer_alice = rt(423, "consumer alice").replace('\n', "\n  "),
        consumer_bob_disabled = rt(424, "disabled consumer bob").replace('\n', "\n  "),
        service_a = rt(402, "service svc-a").replace('\n', "\n  "),
        route_a1 = rt(409, "route a1").replace('\n', "\n    "),
        route_a3 = rt(415, "route a3").replace('\n', "\n    "),
        route_b1 = rt(410, "route b1").replace('\n', "\n    "),
        route_c1_disabled = rt(412, "disabled route c1").replace('\n', "\n    "),
        global = rt(451, "global"),
        svc_a_bob = rt(406, "svc-a + bob"),
        a1_bob = rt(417, "a1 + bob"),
        a2_alice = rt(418, "a2 + alice"),
        svc_b_alice = rt(411, "svc-b + alice"),
        mismatch = rt(414, "svc-b + a1: never applies"),
        svc_a_a3 = rt(416, "svc-a + a3"),
        a3_bob = rt(425, "a3 + bob"),
        svc_a_a3_bob = rt(428, "svc-a + a3 + bob"),
    );
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/api.chain.crt", &server.chain_pem)
        .file("certs/api.key", &server.key_pem)
        .file("gateway.yaml", yaml)
        .start();
    Precedence { pki, echo, gw }
}

impl Precedence {
    fn curl(&self, who: Caller, path: &str) -> Curl {
        let c =
            Curl::at("https", HOST, self.gw.https_port(), path).cacert(&self.pki.root.cert_path);
        match who {
            Caller::Guest => c,
            Caller::Alice => c.cert(&self.pki.alice.cert_path, &self.pki.alice.key_path),
            Caller::Bob => c.cert(&self.pki.bob.cert_path, &self.pki.bob.key_path),
        }
    }

    /// Asserts that `who` on `path` is answered by the instance with `status` and `message`.
    fn expect(&self, who: Caller, path: &str, status: u16, message: &str, why: &str) {
        for h2 in [false, true] {
            let c = self.curl(who, path);
            let r = if h2 { c.http2() } else { c.http1() }.run();
            assert_eq!(
                (r.status, r.json()["message"].as_str().unwrap_or_default()),
                (status, message),
                "{who:?} {path} (HTTP/{}): {why}; body {}",
                if h2 { "2" } else { "1.1" },
                r.text()
            );
            assert_error_body(&r, status, message);
        }
    }
}

// hello-header is registered only with the `example-plugins` feature (the test command
// enables every feature).
#[cfg(feature = "example-plugins")]
#[test]
fn precedence_one_instance_per_name_by_kong_rules() {
    use Caller::*;
    let s = precedence_setup();
    let before = s.echo.requests();

    // Without a consumer of its own (anonymous guest): route+service > route > service > global.
    s.expect(Guest, "/a1", 409, "route a1", "route > service > global");
    s.expect(Guest, "/a2", 402, "service svc-a", "service > global");
    s.expect(Guest, "/a3", 416, "svc-a + a3", "route+service > route");
    s.expect(Guest, "/b1", 410, "route b1", "route > global");
    s.expect(
        Guest,
        "/c1",
        451,
        "global",
        "a disabled route instance does not apply",
    );

    // alice: consumer > route; consumer+route > consumer; consumer+service > route;
    // route+service > consumer (Kong's order).
    s.expect(Alice, "/a1", 423, "consumer alice", "consumer > route");
    s.expect(Alice, "/a2", 418, "a2 + alice", "consumer+route > consumer");
    s.expect(Alice, "/a3", 416, "svc-a + a3", "route+service > consumer");
    s.expect(
        Alice,
        "/b1",
        411,
        "svc-b + alice",
        "consumer+service > route",
    );
    s.expect(Alice, "/c1", 423, "consumer alice", "consumer > global");
    s.expect(
        Alice,
        "/c2",
        423,
        "consumer alice",
        "consumer > untriggered route",
    );

    // bob: consumer+route > consumer+service > service; consumer+route+service > consumer+route;
    // his svc-a instances never apply on svc-b; his disabled consumer instance never applies.
    s.expect(
        Bob,
        "/a1",
        417,
        "a1 + bob",
        "consumer+route > consumer+service",
    );
    s.expect(Bob, "/a2", 406, "svc-a + bob", "consumer+service > service");
    s.expect(
        Bob,
        "/a3",
        428,
        "svc-a + a3 + bob",
        "consumer+route+service > consumer+route (listed first) > consumer+service",
    );
    s.expect(
        Bob,
        "/b1",
        410,
        "route b1",
        "svc-a's consumer instances stay on svc-a",
    );
    s.expect(
        Bob,
        "/c1",
        451,
        "global",
        "disabled consumer and route instances",
    );
    assert_eq!(
        s.echo.requests(),
        before,
        "a terminated request reached the upstream"
    );

    // One instance per name: c2's own request-termination (untriggered) shadows the global one,
    // so the request is proxied; hello-header's route instance shadows its global one.
    for who in [Guest, Bob] {
        let r = s.curl(who, "/c2").run();
        assert_eq!(r.status, 200, "{who:?} /c2: {}", r.text());
        assert_eq!(r.echo_header("x-hello").as_deref(), Some("route c2"));
        let user = if matches!(who, Bob) { "bob" } else { "guest" };
        assert_eq!(r.echo_header("x-consumer-username").as_deref(), Some(user));
        s.expect(
            who,
            "/c2?x-stop",
            422,
            "route c2 triggered",
            "triggered route",
        );
    }
    assert_eq!(s.echo.requests(), before + 2);
}

// hello-header is registered only with the `example-plugins` feature (the test command
// enables every feature).
#[cfg(feature = "example-plugins")]
#[test]
fn one_instance_per_scope_is_a_load_error() {
    // Nested under the route and top-level with `route:` are the same scope.
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: a\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [/]\n    plugins:\n    - name: request-termination\nplugins:\n- name: hello-header\n  config: {greeting: x}\n- name: request-termination\n  route: r\n  config: {status_code: 410}\n",
    );
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .lines()
            .any(|l| l.starts_with("conf/gateway.yaml:12:")
                && l.contains("configured twice for the same scope")
                && l.contains("conf/gateway.yaml:8:")),
        "{}",
        out.all()
    );
    // A disabled duplicate is not an instance.
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: a\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [/]\n    plugins:\n    - name: request-termination\nplugins:\n- name: request-termination\n  route: r\n  enabled: false\n",
    );
    let out = check(&conf);
    assert_eq!(out.code, 0, "{}", out.all());
}

/// Warnings a plugin raises while its instance is built (deprecated fields, an ignored setting,
/// a risky default) carry the file, line and column of the field, in `portcullis check` and in
/// the log at startup — the plugins are built before logging is set up, so they must not go
/// through `tracing`.
#[test]
fn plugin_build_warnings_are_located_and_logged_at_startup() {
    let echo = HttpEcho::start("echo");
    let yaml = format!(
        r#"services:
- name: s
  url: {url}
  routes:
  - name: r
    paths: [/]
    plugins:
    - name: session
    - name: opentelemetry
      config:
        endpoint: http://127.0.0.1:9/v1/traces
        propagation:
          extract: [w3c, aws]
"#,
        url = echo.url()
    );
    let gw = Gateway::start(&yaml);
    let out = check(gw.conf());
    let all = out.all();
    assert_eq!(out.code, 0, "{all}");
    for expected in [
        "conf/gateway.yaml:8:7: services[0].routes[0].plugins[0].config: warning: no secret configured: a random one is used",
        "conf/gateway.yaml:11:19: services[0].routes[0].plugins[1].config.endpoint: warning: endpoint is deprecated, please use traces_endpoint instead",
        "services[0].routes[0].plugins[1].config.propagation: warning: the aws propagation format is not implemented",
    ] {
        assert!(all.contains(expected), "{expected}\n{all}");
    }
    assert_eq!(
        Curl::at("http", "example.com", gw.http_port(), "/")
            .run()
            .status,
        200
    );
    let log = gw.log();
    assert!(
        log.contains("configuration warning")
            && log.contains("no secret configured: a random one is used"),
        "{log}"
    );
}
