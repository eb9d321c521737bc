//! The session plugin through the real binary with curl and a cookie jar: a session set after
//! key-auth identifies later requests without the key (Kong's headers upstream, ACL groups,
//! consumer-scoped plugins), tampered and expired cookies identify nobody, logout by method and
//! query or body argument clears the cookie as Kong answers it, cookie attributes as Kong writes
//! them, a new secret (reload) ends every session, and bad configuration is located.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const HOST: &str = "api.example.com";
const SECRET: &str = "first-secret-0123456789abcdefghij";

fn conf(url: &str, secret: &str) -> String {
    format!(
        r#"consumers:
- username: alice
  id: 11111111-1111-4111-8111-111111111111
  custom_id: alice-custom
  acls: [{{group: users}}]
  keyauth_credentials:
  - id: alice-key-id
    key: alice-key
- username: carol
  keyauth_credentials:
  - id: carol-key-id
    key: carol-key
  plugins:
  - name: request-termination
    config: {{status_code: 418, message: carol is blocked}}
- username: guest
services:
- name: echo
  url: {url}
  plugins:
  - name: session
    config:
      secret: {secret}
      cookie_secure: false
      read_body_for_logout: true
  routes:
  - name: s
    paths: [/s]
    plugins:
    - name: key-auth
      config: {{anonymous: guest}}
  - name: strict
    paths: [/strict]
    plugins:
    - name: key-auth
  - name: acl
    paths: [/acl]
    plugins:
    - name: key-auth
      config: {{anonymous: guest}}
    - name: acl
      config: {{allow: [users]}}
  - name: admins
    paths: [/admins]
    plugins:
    - name: key-auth
      config: {{anonymous: guest}}
    - name: acl
      config: {{allow: [admins]}}
  - name: attrs
    paths: [/attrs]
    plugins:
    - name: key-auth
    - name: session
      config:
        secret: {secret}
        cookie_name: sid
        cookie_domain: example.com
        cookie_path: /attrs
        cookie_same_site: Lax
        response_headers: [audience, subject]
  - name: defaults
    paths: [/defaults]
    plugins:
    - name: key-auth
    - name: session
      config:
        secret: {secret}
  - name: idle
    paths: [/idle]
    plugins:
    - name: key-auth
      config: {{anonymous: guest}}
    - name: session
      config:
        secret: {secret}
        cookie_name: idle
        cookie_secure: false
        idling_timeout: 2
  - name: remember
    paths: [/remember]
    plugins:
    - name: key-auth
      config: {{anonymous: guest}}
    - name: session
      config:
        secret: {secret}
        cookie_name: rsession
        cookie_path: /remember
        cookie_secure: false
        idling_timeout: 1
        remember: true
        remember_cookie_name: rremember
  - name: rolling
    paths: [/rolling]
    plugins:
    - name: key-auth
      config: {{anonymous: guest}}
    - name: session
      config:
        secret: {secret}
        cookie_name: rolling
        cookie_secure: false
        rolling_timeout: 4
        idling_timeout: 0
"#
    )
}

struct Setup {
    echo: HttpEcho,
    gw: Gateway,
    jar: tempfile::TempDir,
}

fn setup() -> Setup {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .file("gateway.yaml", conf(&echo.url(), SECRET))
        .start();
    Setup {
        echo,
        gw,
        jar: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn at(&self, path: &str) -> Curl {
        Curl::at("http", HOST, self.gw.http_port(), path)
    }

    fn jar_path(&self) -> PathBuf {
        self.jar.path().join("cookies")
    }

    /// A request that sends and keeps the jar's cookies, as a browser would.
    fn with_jar(&self, path: &str) -> Curl {
        let jar = self.jar_path().display().to_string();
        self.at(path).arg("-b").arg(jar.clone()).arg("-c").arg(jar)
    }
}

/// The `name=value` of a Set-Cookie, and its attributes.
fn split(set_cookie: &str) -> (&str, &str) {
    set_cookie.split_at(set_cookie.find(';').unwrap_or(set_cookie.len()))
}

fn session_cookie<'a>(r: &'a Response, name: &str) -> &'a str {
    r.header_all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie set: {r:#?}"))
}

fn assert_alice(r: &Response) {
    assert_eq!(r.status, 200, "{r:#?} {}", r.text());
    assert_eq!(
        r.echo_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        r.echo_header("x-consumer-id").as_deref(),
        Some("11111111-1111-4111-8111-111111111111")
    );
    assert_eq!(
        r.echo_header("x-consumer-custom-id").as_deref(),
        Some("alice-custom")
    );
    assert_eq!(
        r.echo_header("x-credential-identifier").as_deref(),
        Some("alice-key-id")
    );
    assert_eq!(r.echo_header("x-anonymous-consumer"), None);
}

fn assert_guest(r: &Response) {
    assert_eq!(r.status, 200, "{r:#?} {}", r.text());
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

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn jar_has(path: &Path, name: &str) -> bool {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') || l.starts_with("#HttpOnly_"))
        .any(|l| l.split('\t').nth(5) == Some(name))
}

#[test]
fn a_session_set_after_key_auth_identifies_later_requests_without_the_key() {
    let s = setup();
    // Neither cookie nor key: key-auth's anonymous decides (or its 401 without anonymous).
    assert_guest(&s.at("/s").run());
    assert_error_body(&s.at("/strict").run(), 401, "No API key found in request");

    let r = s.with_jar("/s").header("apikey: alice-key").run();
    assert_alice(&r);
    let (_, attrs) = split(session_cookie(&r, "session"));
    assert_eq!(attrs, "; Path=/; SameSite=Strict; HttpOnly");
    assert!(jar_has(&s.jar_path(), "session"));

    // The cookie alone: alice again, Kong's headers upstream; no new cookie needed yet.
    let r = s.with_jar("/s").run();
    assert_alice(&r);
    assert!(r.header_all("set-cookie").is_empty(), "{r:#?}");
    // As in Kong, the cookie itself is forwarded upstream with the request.
    let forwarded = r.echo_header("cookie").unwrap_or_default();
    assert!(forwarded.starts_with("session="), "{forwarded}");

    // ACL sees the session's consumer and its groups.
    assert_alice(&s.with_jar("/acl").run());
    assert_error_body(
        &s.with_jar("/admins").run(),
        403,
        "You cannot consume this service",
    );

    // A tampered cookie identifies nobody: the request continues as the anonymous consumer.
    let jar = std::fs::read_to_string(s.jar_path()).unwrap();
    let value = jar
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 7 && f[5] == "session").then(|| f[6].to_string())
        })
        .unwrap();
    let mut bytes = value.clone().into_bytes();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_guest(
        &s.at("/s")
            .header(&format!("Cookie: session={tampered}"))
            .run(),
    );
    assert_guest(&s.at("/s").header("Cookie: session=garbage").run());
    // The untouched value still works when sent by hand.
    assert_alice(&s.at("/s").header(&format!("Cookie: session={value}")).run());

    // Neither the secret nor a cookie value is ever logged.
    let log = s.gw.log();
    assert!(!log.contains(SECRET), "secret logged");
    assert!(!log.contains(&value), "cookie logged");
}

#[test]
fn a_session_of_a_consumer_with_scoped_plugins_runs_them() {
    let s = setup();
    // carol's consumer-scoped request-termination answers once she is identified, be it by the
    // key or by the session the key's response set (Kong's header phase runs on that answer).
    let r = s.with_jar("/s").header("apikey: carol-key").run();
    assert_error_body(&r, 418, "carol is blocked");
    session_cookie(&r, "session");
    let before = s.echo.requests();
    assert_error_body(&s.with_jar("/s").run(), 418, "carol is blocked");
    assert_eq!(s.echo.requests(), before);
}

#[test]
fn logout_clears_the_session_as_kong_answers_it() {
    let s = setup();
    let logged_in = |s: &Setup| assert_alice(&s.with_jar("/s").header("apikey: alice-key").run());
    let cleared = "session=; Path=/; SameSite=Strict; HttpOnly; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0";

    // GET is not a logout method: the request is proxied, the session stays.
    logged_in(&s);
    assert_alice(&s.with_jar("/s?session_logout").run());

    for method in ["DELETE", "POST"] {
        let before = s.echo.requests();
        let r = s.with_jar("/s?session_logout=true").method(method).run();
        assert_eq!(r.status, 200, "{r:#?}");
        assert!(r.body.is_empty(), "{}", r.text());
        assert_eq!(r.header_all("set-cookie"), [cleared]);
        assert_eq!(
            s.echo.requests(),
            before,
            "a logout is answered by the gateway"
        );
        assert!(!jar_has(&s.jar_path(), "session"));
        assert_guest(&s.with_jar("/s").run());
        logged_in(&s);
    }

    // The body argument (read_body_for_logout).
    let r = s
        .with_jar("/s")
        .header("Content-Type: application/x-www-form-urlencoded")
        .data("a=1&session_logout=1")
        .run();
    assert_eq!((r.status, r.header_all("set-cookie")), (200, vec![cleared]));
    assert_guest(&s.with_jar("/s").run());

    // Without a session a logout request is an ordinary request.
    let r = s.with_jar("/s?session_logout").method("DELETE").run();
    assert_guest(&r);
}

#[test]
fn cookie_attributes_are_those_kong_sends() {
    let s = setup();
    let r = s.at("/attrs").header("apikey: alice-key").run();
    assert_alice(&r);
    let (pair, attrs) = split(session_cookie(&r, "sid"));
    assert_eq!(
        attrs,
        "; Domain=example.com; Path=/attrs; SameSite=Lax; Secure; HttpOnly"
    );
    assert!(pair.len() > "sid=".len() + 100, "{pair}");
    assert_eq!(r.header("session-audience"), Some("default"));
    assert_eq!(r.header("session-subject"), Some("alice"));

    let r = s.at("/defaults").header("apikey: alice-key").run();
    let (_, attrs) = split(session_cookie(&r, "session"));
    assert_eq!(attrs, "; Path=/; SameSite=Strict; Secure; HttpOnly");
}

#[test]
fn an_idle_session_expires() {
    let s = setup();
    let r = s.at("/idle").header("apikey: alice-key").run();
    assert_alice(&r);
    let (pair, _) = split(session_cookie(&r, "idle"));
    let cookie = format!("Cookie: {pair}");
    assert_alice(&s.at("/idle").header(&cookie).run());
    // The same cookie, never touched again, stops identifying once idle for 2 s.
    wait_until("idle session expiry", Duration::from_secs(15), || {
        let r = s.at("/idle").header(&cookie).run();
        r.echo_header("x-anonymous-consumer").as_deref() == Some("true")
    });
}

#[test]
fn a_session_is_renewed_after_three_quarters_of_its_rolling_timeout() {
    let s = setup();
    let r = s.at("/rolling").header("apikey: alice-key").run();
    let (first, _) = split(session_cookie(&r, "rolling"));
    let first = first.to_string();
    let mut renewed = None;
    wait_until("rolling renewal", Duration::from_secs(15), || {
        let r = s.at("/rolling").header(&format!("Cookie: {first}")).run();
        assert_alice(&r);
        renewed = r
            .header_all("set-cookie")
            .first()
            .map(|c| split(c).0.to_string());
        renewed.is_some()
    });
    let renewed = renewed.unwrap();
    assert_ne!(renewed, first);
    assert_alice(&s.at("/rolling").header(&format!("Cookie: {renewed}")).run());
}

#[test]
fn a_remember_cookie_outlives_the_session_cookie_until_logout() {
    let s = setup();
    let r = s.at("/remember").header("apikey: alice-key").run();
    assert_alice(&r);
    let (session, _) = split(session_cookie(&r, "rsession"));
    let (_, remember_attrs) = split(session_cookie(&r, "rremember"));
    assert!(
        remember_attrs.starts_with("; Path=/remember; SameSite=Strict; HttpOnly; Expires=")
            && remember_attrs.ends_with("; Max-Age=604800"),
        "{remember_attrs}"
    );
    let session = format!("Cookie: {session}");
    wait_until("idle session expiry", Duration::from_secs(15), || {
        let r = s.at("/remember").header(&session).run();
        r.echo_header("x-anonymous-consumer").as_deref() == Some("true")
    });
    // The jar holds both: the remember cookie starts a new session.
    let r = s.at("/remember").header("apikey: alice-key").run();
    let both = format!(
        "Cookie: {}; {}",
        split(session_cookie(&r, "rsession")).0,
        split(session_cookie(&r, "rremember")).0
    );
    let remember_only = format!("Cookie: {}", split(session_cookie(&r, "rremember")).0);
    let r = s.at("/remember").header(&remember_only).run();
    assert_alice(&r);
    session_cookie(&r, "rsession");
    session_cookie(&r, "rremember");
    // Logout clears both.
    let r = s
        .at("/remember?session_logout")
        .method("POST")
        .header(&both)
        .run();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header_all("set-cookie"),
        [
            "rsession=; Path=/remember; SameSite=Strict; HttpOnly; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0",
            "rremember=; Path=/remember; SameSite=Strict; HttpOnly; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0",
        ]
    );
}

#[test]
fn a_new_secret_ends_every_session() {
    let s = setup();
    assert_alice(&s.with_jar("/s").header("apikey: alice-key").run());
    assert_alice(&s.with_jar("/s").run());
    // A reload that keeps the secret keeps the sessions.
    let reloads = || {
        common::metrics::value(
            &s.gw.metrics(),
            "portcullis_config_reloads_total",
            &[("result", "success")],
        )
        .unwrap_or(0.0)
    };
    let before = reloads();
    s.gw.signal("HUP");
    wait_until("reload", Duration::from_secs(15), || reloads() > before);
    assert_alice(&s.with_jar("/s").run());

    s.gw.conf().write(
        "gateway.yaml",
        conf(&s.echo.url(), "second-secret-0123456789abcdefghij"),
    );
    s.gw.signal("HUP");
    wait_until(
        "reload with the new secret",
        Duration::from_secs(15),
        || {
            let r = s.with_jar("/s").run();
            r.echo_header("x-anonymous-consumer").as_deref() == Some("true")
        },
    );
    // A new login gets a session under the new secret.
    assert_alice(&s.with_jar("/s").header("apikey: alice-key").run());
    assert_alice(&s.with_jar("/s").run());
}

#[test]
fn bad_session_config_is_a_located_load_error() {
    let yaml = r#"services:
- name: s
  url: http://127.0.0.1:9
  plugins:
  - name: session
    config:
      storage: kong
  routes:
  - name: r
    paths: [/]
    plugins:
    - name: session
      config: {secret: s, cookie_same_site: Sometimes}
"#;
    let conf = ConfDir::new().with("gateway.yaml", yaml);
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    let all = out.all();
    for want in [
        "conf/gateway.yaml:7:16: services[0].plugins[0].config.storage: `kong` storage keeps sessions in Kong's database, which DB-less Portcullis does not have; use `cookie`",
        "conf/gateway.yaml:13:45: services[0].routes[0].plugins[0].config.cookie_same_site: unknown variant `Sometimes`, expected one of `Strict`, `Lax`, `None`, `Default`",
    ] {
        assert!(all.lines().any(|l| l == want), "want {want:?} in:\n{all}");
    }
}
