//! key-auth, basic-auth and jwt through the real binary: identification and Kong's headers,
//! every failure message, anonymous fallback, hide_credentials (the upstream never sees the
//! credential), Kong's logical OR between auth plugins, ACL after each, consumer-scoped plugins
//! taking over after identification, credentials nested and at top level, and located load
//! errors. JWTs are signed in the test with the `openssl` command line.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

const HOST: &str = "api.example.com";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(data: &[u8]) -> String {
    openssl::base64::encode_block(data)
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string()
}

fn b64(data: &str) -> String {
    openssl::base64::encode_block(data.as_bytes())
}

fn openssl_cli(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Keys made with the openssl CLI for each asymmetric algorithm.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, args) in [
            (
                "rsa",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "rsa2",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "ec",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            ),
            ("ed", &["-algorithm", "ed25519"][..]),
        ] {
            let key = format!("{name}.key");
            let mut a = vec!["genpkey"];
            a.extend_from_slice(args);
            a.extend_from_slice(&["-out", &key]);
            openssl_cli(&a, d);
            openssl_cli(
                &[
                    "pkey",
                    "-in",
                    &key,
                    "-pubout",
                    "-out",
                    &format!("{name}.pub"),
                ],
                d,
            );
        }
        Keys { dir }
    }

    fn public(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.pub"))).unwrap()
    }

    /// A JWS over `header.claims`, signed by the openssl CLI.
    fn token(&self, alg: &str, claims: &serde_json::Value, key: Signer) -> String {
        self.token_with_header(&serde_json::json!({"typ": "JWT", "alg": alg}), claims, key)
    }

    fn token_with_header(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
        key: Signer,
    ) -> String {
        let d = self.dir.path();
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        std::fs::write(d.join("input"), &input).unwrap();
        let sig = match key {
            Signer::Hmac(md, secret) => openssl_cli(
                &[
                    "dgst",
                    md,
                    "-mac",
                    "HMAC",
                    "-macopt",
                    &format!("key:{secret}"),
                    "-binary",
                    "input",
                ],
                d,
            ),
            Signer::Rsa(md, name) => openssl_cli(
                &[
                    "dgst",
                    md,
                    "-sign",
                    &format!("{name}.key"),
                    "-binary",
                    "input",
                ],
                d,
            ),
            Signer::Pss(md, name) => openssl_cli(
                &[
                    "dgst",
                    md,
                    "-sign",
                    &format!("{name}.key"),
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                    "-binary",
                    "input",
                ],
                d,
            ),
            Signer::Ec(md, name) => {
                let der = openssl_cli(
                    &[
                        "dgst",
                        md,
                        "-sign",
                        &format!("{name}.key"),
                        "-binary",
                        "input",
                    ],
                    d,
                );
                // JWS wants r || s, each padded to the curve size; openssl writes DER.
                let sig = openssl::ecdsa::EcdsaSig::from_der(&der).unwrap();
                let mut raw = sig.r().to_vec_padded(32).unwrap();
                raw.extend(sig.s().to_vec_padded(32).unwrap());
                raw
            }
            Signer::Ed(name) => openssl_cli(
                &[
                    "pkeyutl",
                    "-sign",
                    "-inkey",
                    &format!("{name}.key"),
                    "-rawin",
                    "-in",
                    "input",
                ],
                d,
            ),
            Signer::None => Vec::new(),
        };
        format!("{input}.{}", b64url(&sig))
    }
}

#[derive(Clone, Copy)]
enum Signer<'a> {
    Hmac(&'a str, &'a str),
    Rsa(&'a str, &'a str),
    Pss(&'a str, &'a str),
    Ec(&'a str, &'a str),
    Ed(&'a str),
    None,
}

fn indent_pem(pem: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    pem.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Setup {
    echo: HttpEcho,
    gw: Gateway,
    keys: Keys,
}

/// alice (group users, nested credentials), bob (group users, top-level credentials), carol
/// (blocked by a consumer-scoped request-termination), guest (the anonymous consumer).
fn setup() -> Setup {
    let keys = Keys::new();
    let echo = HttpEcho::start("echo");
    let yaml = format!(
        r#"consumers:
- username: alice
  id: 11111111-1111-4111-8111-111111111111
  custom_id: alice-custom
  acls: [{{group: users}}]
  keyauth_credentials:
  - id: alice-key-id
    key: alice-key
  basicauth_credentials:
  - username: alice
    password: "alice:pass word"
  jwt_secrets:
  - key: alice-hs
    secret: alice-hmac-secret
  - key: alice-rs
    algorithm: RS256
    rsa_public_key: |
{rsa}
  - key: alice-es
    algorithm: ES256
    rsa_public_key: |
{ec}
  - key: alice-ps
    algorithm: PS256
    rsa_public_key: |
{rsa}
  - key: alice-ed
    algorithm: EdDSA
    rsa_public_key: |
{ed}
  - key: alice-b64
    secret: c2VjcmV0LWJ5dGVz
  hmacauth_credentials:
  - username: alice-hmac
    secret: alice-hmac-key
- username: bob
  acls: [{{group: users}}]
- username: carol
  plugins:
  - name: request-termination
    config: {{status_code: 418, message: carol is blocked}}
- username: guest
keyauth_credentials:
- consumer: bob
  id: bob-key-id
  key: bob-key
  ttl: 3600
- consumer: carol
  key: carol-key
basicauth_credentials:
- consumer: {{username: bob}}
  username: bob
  password: bob-pw
- consumer: carol
  username: carol
  password: carol-pw
jwt_secrets:
- consumer: bob
  key: bob-hs
  algorithm: HS384
  secret: bob-hmac-secret
- consumer: carol
  key: carol-hs
  secret: carol-secret
hmacauth_credentials:
- consumer: bob
  username: bob-hmac
  secret: bob-hmac-key
services:
- name: echo
  url: {url}
  routes:
  - name: hmac
    paths: [/hmac]
    plugins:
    - name: hmac-auth
  - name: hmac-strict
    paths: [/hmac-strict]
    plugins:
    - name: hmac-auth
      config:
        enforce_headers: [date, request-line]
        algorithms: [hmac-sha256, hmac-sha512]
        validate_request_body: true
        hide_credentials: true
        clock_skew: 60
        realm: signed
  - name: key
    paths: [/key]
    plugins:
    - name: key-auth
  - name: key-hide
    paths: [/key-hide]
    plugins:
    - name: key-auth
      config: {{key_names: [x-api-key, apikey], hide_credentials: true, key_in_body: true, realm: kong}}
  - name: key-nohdr
    paths: [/key-nohdr]
    plugins:
    - name: key-auth
      config: {{key_in_header: false, run_on_preflight: false}}
  - name: key-anon
    paths: [/key-anon]
    plugins:
    - name: key-auth
      config: {{anonymous: guest}}
  - name: key-acl
    paths: [/key-acl]
    plugins:
    - name: key-auth
    - name: acl
      config: {{allow: [users]}}
  - name: basic
    paths: [/basic]
    plugins:
    - name: basic-auth
  - name: basic-hide
    paths: [/basic-hide]
    plugins:
    - name: basic-auth
      config: {{hide_credentials: true, realm: staff, anonymous: guest}}
  - name: basic-acl
    paths: [/basic-acl]
    plugins:
    - name: basic-auth
    - name: acl
      config: {{deny: [users]}}
  - name: either
    paths: [/either]
    plugins:
    - name: key-auth
      config: {{anonymous: guest, hide_credentials: true}}
    - name: basic-auth
      config: {{anonymous: guest, hide_credentials: true}}
    - name: jwt
      config: {{anonymous: guest}}
    - name: acl
      config: {{allow: [users]}}
  - name: jwt
    paths: [/jwt]
    plugins:
    - name: jwt
      config: {{claims_to_verify: [exp, nbf]}}
  - name: jwt-opts
    paths: [/jwt-opts]
    plugins:
    - name: jwt
      config:
        cookie_names: [session]
        header_names: [x-token]
        uri_param_names: []
        key_claim_name: kid
        claims_to_verify: [exp]
        maximum_expiration: 600
        realm: api
        run_on_preflight: false
  - name: jwt-b64
    paths: [/jwt-b64]
    plugins:
    - name: jwt
      config: {{secret_is_base64: true}}
  - name: jwt-acl
    paths: [/jwt-acl]
    plugins:
    - name: jwt
    - name: acl
      config: {{allow: [users]}}
"#,
        url = echo.url(),
        rsa = indent_pem(&keys.public("rsa"), 6),
        ec = indent_pem(&keys.public("ec"), 6),
        ed = indent_pem(&keys.public("ed"), 6),
    );
    let gw = Gateway::builder().file("gateway.yaml", yaml).start();
    Setup { echo, gw, keys }
}

impl Setup {
    fn at(&self, path: &str) -> Curl {
        Curl::at("http", HOST, self.gw.http_port(), path)
    }
}

/// The consumer headers Kong sets upstream after a successful authentication.
fn assert_identified(r: &Response, username: &str, credential: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["server"], "echo");
    assert_eq!(
        r.echo_header("x-consumer-username").as_deref(),
        Some(username),
        "{}",
        r.text()
    );
    assert_eq!(
        r.echo_header("x-credential-identifier").as_deref(),
        Some(credential),
        "{}",
        r.text()
    );
    assert_eq!(r.echo_header("x-anonymous-consumer"), None);
}

fn assert_anonymous(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.echo_header("x-consumer-username").as_deref(),
        Some("guest")
    );
    assert_eq!(
        r.echo_header("x-anonymous-consumer").as_deref(),
        Some("true")
    );
    assert_eq!(r.echo_header("x-credential-identifier"), None);
}

fn assert_401(r: &Response, message: &str, www_authenticate: &str) {
    assert_error_body(r, 401, message);
    assert_eq!(
        r.header("www-authenticate"),
        Some(www_authenticate),
        "{r:#?}"
    );
}

#[test]
fn key_auth_identifies_by_header_query_and_body_with_kong_messages() {
    let s = setup();
    let before = s.echo.requests();

    let r = s.at("/key").header("apikey: alice-key").run();
    assert_identified(&r, "alice", "alice-key-id");
    assert_eq!(
        r.echo_header("x-consumer-id").as_deref(),
        Some("11111111-1111-4111-8111-111111111111")
    );
    assert_eq!(
        r.echo_header("x-consumer-custom-id").as_deref(),
        Some("alice-custom")
    );
    assert_eq!(
        r.echo_header("apikey").as_deref(),
        Some("alice-key"),
        "not hidden by default"
    );
    // Header names are case-insensitive; a top-level credential works like a nested one.
    assert_identified(
        &s.at("/key").header("ApiKey: bob-key").run(),
        "bob",
        "bob-key-id",
    );
    let r = s.at("/key?a=1&apikey=bob-key").run();
    assert_identified(&r, "bob", "bob-key-id");
    assert_eq!(r.json()["query"], "a=1&apikey=bob-key");
    // A client cannot claim an identity with the headers the plugin sets.
    let r = s
        .at("/key")
        .header("apikey: bob-key")
        .header("X-Consumer-Username: alice")
        .run();
    assert_identified(&r, "bob", "bob-key-id");

    assert_401(&s.at("/key").run(), "No API key found in request", "Key");
    assert_401(
        &s.at("/key?apikey=").run(),
        "No API key found in request",
        "Key",
    );
    assert_401(
        &s.at("/key?apikey").run(),
        "No API key found in request",
        "Key",
    );
    assert_401(
        &s.at("/key").header("apikey: nope").run(),
        "Unauthorized",
        "Key",
    );
    assert_401(
        &s.at("/key").header("apikey: alice-ke").run(),
        "Unauthorized",
        "Key",
    );
    assert_401(
        &s.at("/key")
            .header("apikey: alice-key")
            .header("apikey: bob-key")
            .run(),
        "Duplicate API key found",
        "Key",
    );
    assert_401(
        &s.at("/key?apikey=a&apikey=b").run(),
        "Duplicate API key found",
        "Key",
    );
    assert_eq!(
        s.echo.requests(),
        before + 4,
        "a refused request reached the upstream"
    );

    // key_in_header: false ignores the header; run_on_preflight: false lets OPTIONS through.
    assert_401(
        &s.at("/key-nohdr").header("apikey: alice-key").run(),
        "No API key found in request",
        "Key",
    );
    assert_identified(
        &s.at("/key-nohdr?apikey=alice-key").run(),
        "alice",
        "alice-key-id",
    );
    let r = s.at("/key-nohdr").method("OPTIONS").run();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo_header("x-consumer-username"), None);

    // The failure is counted by plugin and reason.
    let metrics = s.gw.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_auth_failures_total{")
                && l.contains("plugin=\"key-auth\"")
                && l.contains("reason=\"no_credentials\"")),
        "{metrics}"
    );
    let log = s.gw.log();
    assert!(
        !metrics.contains("alice-key") && !log.contains("alice-key"),
        "a key was logged"
    );
    // bob's credential has a `ttl`: accepted, and the operator is told where it is ignored.
    let out = check(s.gw.conf());
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.all().lines().any(|l| l.contains("conf/gateway.yaml:")
            && l.contains("keyauth_credentials[0].ttl: warning: ttl is accepted and ignored")),
        "{}",
        out.all()
    );
}

#[test]
fn key_auth_hide_credentials_strips_header_query_and_body() {
    let s = setup();
    let r = s
        .at("/key-hide")
        .header("X-API-Key: alice-key")
        .header("apikey: other")
        .run();
    assert_identified(&r, "alice", "alice-key-id");
    assert_eq!(r.echo_header("x-api-key"), None, "header hidden");
    assert_eq!(
        r.echo_header("apikey").as_deref(),
        Some("other"),
        "only the name that matched"
    );

    let r = s.at("/key-hide/p?a=1&apikey=bob-key&b=%20x").run();
    assert_identified(&r, "bob", "bob-key-id");
    assert_eq!(r.json()["query"], "a=1&b=%20x");
    assert_eq!(r.json()["path"], "/p", "strip_path");
    let r = s.at("/key-hide?apikey=bob-key").run();
    assert_identified(&r, "bob", "bob-key-id");
    assert!(
        r.json()["query"].as_str().unwrap_or_default().is_empty(),
        "{}",
        r.text()
    );

    // Form, JSON and multipart bodies: the field is found and removed before proxying.
    let form = "a=1&apikey=alice-key&b=2";
    let r = s
        .at("/key-hide")
        .method("POST")
        .header("Content-Type: application/x-www-form-urlencoded")
        .data(form)
        .run();
    assert_identified(&r, "alice", "alice-key-id");
    assert_eq!(r.json()["body_len"], "a=1&b=2".len(), "{}", r.text());

    let json = r#"{"apikey":"alice-key","keep":true}"#;
    let r = s
        .at("/key-hide")
        .method("POST")
        .header("Content-Type: application/json")
        .data(json)
        .run();
    assert_identified(&r, "alice", "alice-key-id");
    assert_eq!(r.json()["body_len"], r#"{"keep":true}"#.len());

    let part = |name: &str, v: &str| {
        format!("--BND\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{v}\r\n")
    };
    let mp = format!(
        "{}{}--BND--\r\n",
        part("x-api-key", "bob-key"),
        part("note", "hi")
    );
    let r = s
        .at("/key-hide")
        .method("POST")
        .header("Content-Type: multipart/form-data; boundary=BND")
        .data(&mp)
        .run();
    assert_identified(&r, "bob", "bob-key-id");
    assert_eq!(
        r.json()["body_len"],
        format!("{}--BND--\r\n", part("note", "hi")).len()
    );

    // A body without the key is forwarded untouched; realm shows in WWW-Authenticate.
    let r = s
        .at("/key-hide")
        .method("POST")
        .header("Content-Type: application/json")
        .data(r#"{"apikey": 5}"#)
        .run();
    assert_401(&r, "No API key found in request", "Key realm=\"kong\"");
    assert_401(
        &s.at("/key-hide").header("x-api-key: wrong").run(),
        "Unauthorized",
        "Key realm=\"kong\"",
    );
}

#[test]
fn basic_auth_verifies_hashed_passwords_with_kong_messages() {
    let s = setup();
    let before = s.echo.requests();
    let alice = format!("Authorization: Basic {}", b64("alice:alice:pass word"));
    let r = s.at("/basic").header(&alice).run();
    assert_identified(&r, "alice", "alice");
    assert!(
        r.echo_header("authorization").is_some(),
        "not hidden by default"
    );
    // A remembered verification answers the same.
    assert_identified(&s.at("/basic").header(&alice).run(), "alice", "alice");
    let r = s
        .at("/basic")
        .header(&format!("Proxy-Authorization: basic {}", b64("bob:bob-pw")))
        .run();
    assert_identified(&r, "bob", "bob");

    let basic = "Basic realm=\"service\"";
    assert_401(&s.at("/basic").run(), "Unauthorized", basic);
    for bad in [
        "alice:alice:pass wor",
        "alice:",
        "mallory:bob-pw",
        "bob:alice:pass word",
        "nocolon",
    ] {
        let r = s
            .at("/basic")
            .header(&format!("Authorization: Basic {}", b64(bad)))
            .run();
        assert_401(&r, "Unauthorized", basic);
    }
    assert_401(
        &s.at("/basic").header("Authorization: Bearer x").run(),
        "Unauthorized",
        basic,
    );
    assert_eq!(s.echo.requests(), before + 3);

    // hide_credentials; realm; anonymous on failure.
    let r = s
        .at("/basic-hide")
        .header(&format!("Authorization: Basic {}", b64("bob:bob-pw")))
        .run();
    assert_identified(&r, "bob", "bob");
    assert_eq!(
        r.echo_header("authorization"),
        None,
        "Authorization reached the upstream"
    );
    let r = s
        .at("/basic-hide")
        .header(&format!("Authorization: Basic {}", b64("bob:nope")))
        .run();
    assert_anonymous(&r);
    assert_eq!(r.echo_header("authorization"), None);
    assert!(!s.gw.log().contains("bob-pw"), "a password was logged");

    // ACL after basic-auth: users are denied on /basic-acl, carol is not in the group but is
    // answered by her consumer-scoped request-termination.
    let r = s.at("/basic-acl").header(&alice).run();
    assert_error_body(&r, 403, "You cannot consume this service");
    let carol = format!("Authorization: Basic {}", b64("carol:carol-pw"));
    assert_error_body(
        &s.at("/basic-acl").header(&carol).run(),
        418,
        "carol is blocked",
    );
}

#[test]
fn auth_plugins_are_or_ed_with_anonymous_then_acl_decides() {
    let s = setup();
    let r = s.at("/either").header("apikey: alice-key").run();
    assert_identified(&r, "alice", "alice-key-id");
    assert_eq!(r.echo_header("apikey"), None);
    let r = s
        .at("/either")
        .header(&format!("Authorization: Basic {}", b64("bob:bob-pw")))
        .run();
    assert_identified(&r, "bob", "bob");
    assert_eq!(r.echo_header("authorization"), None);
    let t = s.keys.token(
        "HS256",
        &serde_json::json!({"iss": "alice-hs"}),
        Signer::Hmac("-sha256", "alice-hmac-secret"),
    );
    assert_identified(
        &s.at(&format!("/either?jwt={t}")).run(),
        "alice",
        "alice-hs",
    );
    // A failed key does not undo the basic-auth identity (jwt runs first, key-auth next, then
    // basic-auth identifies): Kong's OR.
    let r = s
        .at("/either")
        .header("apikey: wrong")
        .header(&format!("Authorization: Basic {}", b64("bob:bob-pw")))
        .run();
    assert_identified(&r, "bob", "bob");
    // Nobody identified: the anonymous consumer, whom the ACL refuses.
    assert_error_body(
        &s.at("/either").run(),
        403,
        "You cannot consume this service",
    );
    assert_error_body(
        &s.at("/either").header("apikey: wrong").run(),
        403,
        "You cannot consume this service",
    );

    // ACL after key-auth (carol is in no group); a consumer-scoped plugin applies once
    // key-auth identified carol.
    assert_identified(
        &s.at("/key-acl").header("apikey: bob-key").run(),
        "bob",
        "bob-key-id",
    );
    assert_error_body(
        &s.at("/key-acl").header("apikey: carol-key").run(),
        403,
        "You cannot consume this service",
    );
    assert_error_body(
        &s.at("/key").header("apikey: carol-key").run(),
        418,
        "carol is blocked",
    );
    assert_anonymous(&s.at("/key-anon").header("apikey: nope").run());
    assert_anonymous(&s.at("/key-anon").run());
    assert_identified(
        &s.at("/key-anon").header("apikey: alice-key").run(),
        "alice",
        "alice-key-id",
    );
}

#[test]
fn jwt_verifies_every_algorithm_and_answers_as_kong() {
    let s = setup();
    let k = &s.keys;
    let exp = now() + 300;
    let claims = |iss: &str| serde_json::json!({"iss": iss, "exp": exp, "nbf": now() - 10});
    let cases = [
        (
            "HS256",
            "alice-hs",
            Signer::Hmac("-sha256", "alice-hmac-secret"),
            "alice",
        ),
        (
            "HS384",
            "bob-hs",
            Signer::Hmac("-sha384", "bob-hmac-secret"),
            "bob",
        ),
        ("RS256", "alice-rs", Signer::Rsa("-sha256", "rsa"), "alice"),
        ("ES256", "alice-es", Signer::Ec("-sha256", "ec"), "alice"),
        ("PS256", "alice-ps", Signer::Pss("-sha256", "rsa"), "alice"),
        ("EdDSA", "alice-ed", Signer::Ed("ed"), "alice"),
    ];
    for (alg, iss, signer, user) in cases {
        let t = k.token(alg, &claims(iss), signer);
        let r = s
            .at("/jwt")
            .header(&format!("Authorization: Bearer {t}"))
            .run();
        assert_identified(&r, user, iss);
        // Again, now from the verification cache, and by query argument.
        assert_identified(&s.at(&format!("/jwt?jwt={t}")).run(), user, iss);
    }

    let err = "Bearer error=\"invalid_token\"";
    let bearer = |t: &str| {
        s.at("/jwt")
            .header(&format!("Authorization: Bearer {t}"))
            .run()
    };
    assert_401(&s.at("/jwt").run(), "Unauthorized", "Bearer");
    assert_401(&bearer("abc"), "Bad token; invalid JSON", err);
    assert_401(&bearer("a.b.c"), "Bad token; invalid JSON", err);
    let hs =
        |c: serde_json::Value| k.token("HS256", &c, Signer::Hmac("-sha256", "alice-hmac-secret"));
    assert_401(
        &bearer(&hs(serde_json::json!({"exp": exp}))),
        "No mandatory 'iss' in claims",
        err,
    );
    assert_401(
        &bearer(&hs(serde_json::json!({"iss": ""}))),
        "Invalid 'iss' in claims",
        err,
    );
    assert_401(
        &bearer(&hs(serde_json::json!({"iss": "nobody"}))),
        "No credentials found for given 'iss'",
        err,
    );
    // Wrong secret, and a signature from another RSA key.
    let t = k.token(
        "HS256",
        &claims("alice-hs"),
        Signer::Hmac("-sha256", "not-the-secret"),
    );
    assert_401(&bearer(&t), "Invalid signature", err);
    let t = k.token("RS256", &claims("alice-rs"), Signer::Rsa("-sha256", "rsa2"));
    assert_401(&bearer(&t), "Invalid signature", err);
    // alg none: unsigned tokens are not tokens.
    let t = k.token("none", &claims("alice-hs"), Signer::None);
    assert_401(&bearer(&t), "Bad token; invalid alg", err);
    // Algorithm confusion: an HS256 token "signed" with the RSA public key as HMAC secret
    // against the RSA credential, and an RS256 token against an HMAC credential.
    let pem = k.public("rsa");
    let t = k.token("HS256", &claims("alice-rs"), Signer::Hmac("-sha256", &pem));
    assert_401(&bearer(&t), "Invalid algorithm", err);
    let t = k.token("RS256", &claims("alice-hs"), Signer::Rsa("-sha256", "rsa"));
    assert_401(&bearer(&t), "Invalid algorithm", err);
    // The registered claims: Kong answers with the errors object itself.
    for (c, body) in [
        (
            serde_json::json!({"iss": "alice-hs", "exp": now() - 1, "nbf": 0}),
            r#"{"exp":"token expired"}"#,
        ),
        (
            serde_json::json!({"iss": "alice-hs", "exp": now() - 1}),
            r#"{"exp":"token expired","nbf":"must be a number"}"#,
        ),
        (
            serde_json::json!({"iss": "alice-hs", "exp": exp, "nbf": now() + 600}),
            r#"{"nbf":"token not valid yet"}"#,
        ),
        (
            serde_json::json!({"iss": "alice-hs", "exp": "soon", "nbf": 0}),
            r#"{"exp":"must be a number"}"#,
        ),
    ] {
        let r = bearer(&hs(c));
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(
            r.json(),
            serde_json::from_str::<serde_json::Value>(body).unwrap()
        );
        assert_eq!(r.header("www-authenticate"), Some(err));
    }
    // Two different tokens; a bare ?jwt.
    let a = hs(serde_json::json!({"iss": "alice-hs"}));
    let b = hs(serde_json::json!({"iss": "alice-hs", "x": 1}));
    let r = s
        .at(&format!("/jwt?jwt={a}"))
        .header(&format!("Authorization: Bearer {b}"))
        .run();
    assert_401(&r, "Multiple tokens provided", err);
    let r = s
        .at(&format!("/jwt?jwt={a}"))
        .header(&format!("Authorization: Bearer {a}"))
        .run();
    assert_eq!(r.status, 401, "claims_to_verify needs exp: {}", r.text());
    assert_401(&s.at("/jwt?jwt").run(), "Unrecognizable token", err);

    // Cookies, custom header, key claim in the header (kid), maximum_expiration, realm.
    let kid = |c: serde_json::Value| {
        k.token_with_header(
            &serde_json::json!({"alg": "HS256", "kid": "bob-hs"}),
            &c,
            Signer::Hmac("-sha256", "bob-hmac-secret"),
        )
    };
    let t = k.token_with_header(
        &serde_json::json!({"alg": "HS384", "kid": "bob-hs"}),
        &serde_json::json!({"exp": now() + 60}),
        Signer::Hmac("-sha384", "bob-hmac-secret"),
    );
    assert_identified(
        &s.at("/jwt-opts")
            .header(&format!("Cookie: a=b; session={t}"))
            .run(),
        "bob",
        "bob-hs",
    );
    assert_identified(
        &s.at("/jwt-opts")
            .header(&format!("X-Token: bearer {t}"))
            .run(),
        "bob",
        "bob-hs",
    );
    assert_401(
        &s.at(&format!("/jwt-opts?jwt={t}")).run(),
        "Unauthorized",
        "Bearer realm=\"api\"",
    );
    let r = s
        .at("/jwt-opts")
        .header(&format!(
            "X-Token: Bearer {}",
            kid(serde_json::json!({"exp": now() + 60}))
        ))
        .run();
    assert_401(
        &r,
        "Invalid algorithm",
        "Bearer realm=\"api\", error=\"invalid_token\"",
    );
    let far = k.token_with_header(
        &serde_json::json!({"alg": "HS384", "kid": "bob-hs"}),
        &serde_json::json!({"exp": now() + 3600}),
        Signer::Hmac("-sha384", "bob-hmac-secret"),
    );
    let r = s
        .at("/jwt-opts")
        .header(&format!("Cookie: session={far}"))
        .run();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        serde_json::json!({"exp": "exceeds maximum allowed expiration"})
    );
    assert_eq!(s.at("/jwt-opts").method("OPTIONS").run().status, 200);

    // secret_is_base64: the credential's secret is the base64url of the signing key.
    let t = k.token(
        "HS256",
        &serde_json::json!({"iss": "alice-b64"}),
        Signer::Hmac("-sha256", "secret-bytes"),
    );
    assert_identified(
        &s.at(&format!("/jwt-b64?jwt={t}")).run(),
        "alice",
        "alice-b64",
    );
    assert_401(
        &s.at(&format!("/jwt?jwt={t}")).run(),
        "Invalid signature",
        err,
    );

    // ACL and consumer-scoped plugins after jwt.
    let t = k.token(
        "HS256",
        &serde_json::json!({"iss": "carol-hs"}),
        Signer::Hmac("-sha256", "carol-secret"),
    );
    assert_error_body(
        &s.at(&format!("/jwt-acl?jwt={t}")).run(),
        403,
        "You cannot consume this service",
    );
    let t = k.token(
        "HS256",
        &claims("carol-hs"),
        Signer::Hmac("-sha256", "carol-secret"),
    );
    assert_error_body(
        &s.at(&format!("/jwt?jwt={t}")).run(),
        418,
        "carol is blocked",
    );
    let t = k.token(
        "HS256",
        &serde_json::json!({"iss": "alice-hs"}),
        Signer::Hmac("-sha256", "alice-hmac-secret"),
    );
    assert_identified(
        &s.at(&format!("/jwt-acl?jwt={t}")).run(),
        "alice",
        "alice-hs",
    );
}

#[test]
fn bad_credentials_are_located_load_errors() {
    let yaml = r#"consumers:
- username: a
  keyauth_credentials:
  - key: same
  - key: 42
  basicauth_credentials:
  - username: a
  jwt_secrets:
  - key: j
    algorithm: RS256
  - key: j2
    algorithm: HS256
    secret: s
    extra: 1
keyauth_credentials:
- consumer: a
  key: same
- key: orphan
services:
- name: s
  url: http://127.0.0.1:9
  routes:
  - name: r
    paths: [/]
    plugins:
    - name: key-auth
      config: {key_names: ["bad name"], anonymous: nobody}
"#;
    let conf = ConfDir::new().with("gateway.yaml", yaml);
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    let all = out.all();
    for want in [
        "conf/gateway.yaml:5:10: consumers[0].keyauth_credentials[1].key: invalid type: integer `42`, expected a string",
        "conf/gateway.yaml:7:5: consumers[0].basicauth_credentials[0]: missing field `password`",
        "conf/gateway.yaml:9:5: consumers[0].jwt_secrets[0].rsa_public_key: required for RS256",
        "conf/gateway.yaml:14:5: consumers[0].jwt_secrets[1].extra: unknown field `extra`, expected one of `key`, `secret`, `rsa_public_key`, `algorithm`",
        "conf/gateway.yaml:27:28: services[0].routes[0].plugins[0].config.key_names[0]: bad header name 'bad name', allowed characters are A-Z, a-z, 0-9, '_', and '-'",
        "conf/gateway.yaml:27:52: services[0].routes[0].plugins[0].config.anonymous: anonymous consumer \"nobody\" is not configured (no consumer has this id or username)",
        "conf/gateway.yaml:17:8: keyauth_credentials[0].key: duplicate key in keyauth_credentials (first at conf/gateway.yaml:4:10); each must be unique",
        "conf/gateway.yaml:18:3: keyauth_credentials[1]: a top-level credential needs `consumer`",
    ] {
        assert!(all.lines().any(|l| l == want), "want {want:?} in:\n{all}");
    }
    assert!(
        !all.contains("orphan") && !all.contains(": same"),
        "a key value was printed:\n{all}"
    );
}

/// An HMAC computed by Python's `hmac` module, base64.
fn python_hmac(alg: &str, secret: &str, data: &str) -> String {
    let script = format!(
        "import sys,hmac,hashlib,base64;sys.stdout.write(base64.b64encode(hmac.new({secret:?}.encode(),sys.stdin.buffer.read(),hashlib.{alg}).digest()).decode())"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn hmac_header(user: &str, alg: &str, headers: &str, signature: &str) -> String {
    format!(
        r#"hmac username="{user}", algorithm="{alg}", headers="{headers}", signature="{signature}""#
    )
}

#[test]
fn hmac_auth_checks_signature_date_enforced_headers_and_digest() {
    let s = setup();
    let date = httpdate::fmt_http_date(SystemTime::now());
    let sign = |alg: &str, secret: &str, data: &str| python_hmac(alg, secret, data);

    let signing = format!("date: {date}\nGET /hmac/x?a=1 HTTP/1.1");
    let auth = hmac_header(
        "alice-hmac",
        "hmac-sha256",
        "date request-line",
        &sign("sha256", "alice-hmac-key", &signing),
    );
    let r = s
        .at("/hmac/x?a=1")
        .header(&format!("Date: {date}"))
        .header(&format!("Authorization: {auth}"))
        .run();
    assert_identified(&r, "alice", "alice-hmac");
    assert!(
        r.echo_header("authorization").is_some(),
        "not hidden by default"
    );

    // A top-level credential, Proxy-Authorization, X-Date, hmac-sha1 and @request-target.
    let signing = format!("x-date: {date}\n@request-target: get /hmac");
    let auth = hmac_header(
        "bob-hmac",
        "hmac-sha1",
        "x-date @request-target",
        &sign("sha1", "bob-hmac-key", &signing),
    );
    let r = s
        .at("/hmac")
        .header(&format!("X-Date: {date}"))
        .header(&format!("Proxy-Authorization: {auth}"))
        .run();
    assert_identified(&r, "bob", "bob-hmac");

    let hmac = "hmac";
    assert_401(&s.at("/hmac").run(), "Unauthorized", hmac);
    let no_date = "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication";
    let signing = format!("date: {date}");
    let good = hmac_header(
        "alice-hmac",
        "hmac-sha256",
        "date",
        &sign("sha256", "alice-hmac-key", &signing),
    );
    assert_401(
        &s.at("/hmac")
            .header(&format!("Authorization: {good}"))
            .run(),
        no_date,
        hmac,
    );
    let old = httpdate::fmt_http_date(SystemTime::now() - std::time::Duration::from_secs(1000));
    assert_401(
        &s.at("/hmac")
            .header(&format!("Date: {old}"))
            .header(&format!("Authorization: {good}"))
            .run(),
        no_date,
        hmac,
    );
    let with = |auth: &str| {
        s.at("/hmac")
            .header(&format!("Date: {date}"))
            .header(&format!("Authorization: {auth}"))
            .run()
    };
    assert_identified(&with(&good), "alice", "alice-hmac");
    let wrong = hmac_header(
        "alice-hmac",
        "hmac-sha256",
        "date",
        &sign("sha256", "not-the-key", &signing),
    );
    assert_401(&with(&wrong), "HMAC signature does not match", hmac);
    let unknown = hmac_header(
        "mallory",
        "hmac-sha256",
        "date",
        &sign("sha256", "alice-hmac-key", &signing),
    );
    assert_401(&with(&unknown), "HMAC signature cannot be verified", hmac);
    assert_401(
        &with("hmac garbage"),
        "HMAC signature cannot be verified",
        hmac,
    );

    // enforce_headers, algorithms, body digest, hide_credentials, realm.
    let strict = "hmac realm=\"signed\"";
    let body = r#"{"order":42}"#;
    let digest = format!(
        "SHA-256={}",
        openssl::base64::encode_block(&openssl::sha::sha256(body.as_bytes()))
    );
    let signing = format!("date: {date}\nPOST /hmac-strict HTTP/1.1\ndigest: {digest}");
    let post = |auth: &str, digest: &str| {
        s.at("/hmac-strict")
            .method("POST")
            .header("Content-Type: application/json")
            .header(&format!("Date: {date}"))
            .header(&format!("Digest: {digest}"))
            .header(&format!("Authorization: {auth}"))
            .data(body)
            .run()
    };
    let auth = hmac_header(
        "alice-hmac",
        "hmac-sha512",
        "date request-line digest",
        &sign("sha512", "alice-hmac-key", &signing),
    );
    let r = post(&auth, &digest);
    assert_identified(&r, "alice", "alice-hmac");
    assert_eq!(
        r.echo_header("authorization"),
        None,
        "Authorization reached the upstream"
    );
    assert_eq!(r.json()["body_len"], body.len());
    // The digest header is signed but does not match the body.
    let bad_digest = format!("SHA-256={}", openssl::base64::encode_block(&[0u8; 32]));
    let signing_bad = format!("date: {date}\nPOST /hmac-strict HTTP/1.1\ndigest: {bad_digest}");
    let auth_bad = hmac_header(
        "alice-hmac",
        "hmac-sha512",
        "date request-line digest",
        &sign("sha512", "alice-hmac-key", &signing_bad),
    );
    assert_401(
        &post(&auth_bad, &bad_digest),
        "HMAC signature does not match",
        strict,
    );
    let sha1 = hmac_header(
        "alice-hmac",
        "hmac-sha1",
        "date request-line digest",
        &sign("sha1", "alice-hmac-key", &signing),
    );
    assert_401(
        &post(&sha1, &digest),
        "HMAC signature cannot be verified",
        strict,
    );
    let signing_date = format!("date: {date}");
    let partial = hmac_header(
        "alice-hmac",
        "hmac-sha256",
        "date",
        &sign("sha256", "alice-hmac-key", &signing_date),
    );
    assert_401(
        &post(&partial, &digest),
        "HMAC signature cannot be verified",
        strict,
    );
}
