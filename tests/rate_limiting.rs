//! rate-limiting through the real binary: Kong's headers and 429, every `limit_by` that needs no
//! authentication plugin, counters that survive a reload, two gateways sharing one Redis (with
//! the 3.x `redis` block and the 2.x flat names), and Redis going away with `fault_tolerant` on
//! and off. Redis is a real `redis-server` on an ephemeral port, killed when the test ends.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A throwaway `redis-server`: no persistence, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server (scripts/setup.sh installs it): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child: Some(child),
            port,
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn get(gw: &Gateway, path: &str) -> Curl {
    Curl::at("http", "example.com", gw.http_port(), path)
}

fn assert_limited(r: &Response) {
    assert_eq!(r.status, 429, "{r:#?} {}", r.text());
    assert_eq!(r.json()["message"], "API rate limit exceeded");
    assert_error_body(r, 429, "API rate limit exceeded");
}

/// `X-RateLimit-*` and `RateLimit-*` names a response carries (lower case).
fn ratelimit_headers(r: &Response) -> Vec<String> {
    let mut names: Vec<String> = r
        .headers
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| k.contains("ratelimit") || k == "retry-after")
        .collect();
    names.sort();
    names.dedup();
    names
}

fn num(r: &Response, name: &str) -> i64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name}: {r:#?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {r:#?}"))
}

/// Runs `attempt` (with a fresh key each time) until one run stays inside one window: the
/// windows are wall-clock aligned, so a run may straddle a boundary.
fn in_one_window(mut attempt: impl FnMut(&str) -> bool) {
    for i in 0..5 {
        if attempt(&format!("k{i}-{}", std::process::id())) {
            return;
        }
    }
    panic!("five attempts straddled a window boundary");
}

#[test]
fn kongs_headers_and_429_per_window() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: limited
    paths: [/limited]
    plugins:
    - name: rate-limiting
      config: {{minute: 3, hour: 100, limit_by: header, header_name: x-key}}
  - name: hidden
    paths: [/hidden]
    plugins:
    - name: rate-limiting
      config: {{day: 1, hide_client_headers: true, error_code: 503, error_message: Come back tomorrow, limit_by: header, header_name: x-key}}
  - name: persecond
    paths: [/second]
    plugins:
    - name: rate-limiting
      config: {{second: 2, limit_by: header, header_name: x-key}}
"#,
        url = echo.url()
    ));

    in_one_window(|key| {
        let h = format!("X-Key: {key}");
        let rs: Vec<Response> = (0..5)
            .map(|_| get(&gw, "/limited").header(&h).run())
            .collect();
        let resets: Vec<i64> = rs.iter().map(|r| num(r, "ratelimit-reset")).collect();
        if resets.windows(2).any(|w| w[1] > w[0]) {
            return false; // a new minute began
        }
        let r = &rs[0];
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            ratelimit_headers(r),
            [
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
                "x-ratelimit-limit-hour",
                "x-ratelimit-limit-minute",
                "x-ratelimit-remaining-hour",
                "x-ratelimit-remaining-minute",
            ]
        );
        assert_eq!(r.header("x-ratelimit-limit-minute"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining-minute"), Some("2"));
        assert_eq!(r.header("x-ratelimit-limit-hour"), Some("100"));
        assert_eq!(r.header("x-ratelimit-remaining-hour"), Some("99"));
        // RateLimit-*: the period with the fewest requests left.
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(r.header("ratelimit-remaining"), Some("2"));
        assert!((1..=60).contains(&resets[0]), "{resets:?}");

        assert_eq!(rs[1].header("ratelimit-remaining"), Some("1"));
        let r = &rs[2];
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining-minute"), Some("0"));
        assert_eq!(r.header("x-ratelimit-remaining-hour"), Some("97"));
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));

        let r = &rs[3];
        assert_limited(r);
        assert_eq!(r.header("x-ratelimit-remaining-minute"), Some("0"));
        // Only the exceeded period's count is shown as used by this request.
        assert_eq!(r.header("x-ratelimit-remaining-hour"), Some("97"));
        assert_eq!(r.header("retry-after"), r.header("ratelimit-reset"));
        // Refused requests are not counted (Kong increments only what it lets through): the
        // hour is not used up by a client hammering the minute.
        assert_limited(&rs[4]);
        assert_eq!(rs[4].header("x-ratelimit-remaining-hour"), Some("97"));
        true
    });

    // Other keys have their own counters.
    let r = get(&gw, "/limited").header("X-Key: another").run();
    assert_eq!(r.header("x-ratelimit-remaining-hour"), Some("99"));

    // hide_client_headers, error_code, error_message.
    in_one_window(|key| {
        let h = format!("X-Key: {key}");
        let r = get(&gw, "/hidden").header(&h).run();
        assert_eq!(r.status, 200);
        assert!(ratelimit_headers(&r).is_empty(), "{r:#?}");
        let r = get(&gw, "/hidden").header(&h).run();
        if r.status == 200 {
            return false; // midnight UTC passed
        }
        assert_error_body(&r, 503, "Come back tomorrow");
        assert!(ratelimit_headers(&r).is_empty(), "{r:#?}");
        true
    });

    // Per second: refused within a second, let through again in the next.
    let mut refused = false;
    for i in 0..20 {
        let h = format!("X-Key: sec-{i}");
        let statuses: Vec<u16> = (0..3)
            .map(|_| get(&gw, "/second").header(&h).run().status)
            .collect();
        if statuses == [200, 200, 429] {
            refused = true;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let r = get(&gw, "/second").header(&h).run();
                if r.status == 200 {
                    assert_eq!(r.header("x-ratelimit-limit-second"), Some("2"));
                    break;
                }
                assert_limited(&r);
                assert_eq!(r.header("retry-after"), Some("1"));
                assert!(Instant::now() < deadline, "the next second never came");
                std::thread::sleep(Duration::from_millis(100));
            }
            break;
        }
    }
    assert!(refused, "never saw three requests in one second");
}

#[test]
fn limit_by_ip_path_and_header_fallback() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: byip
    paths: [/ip]
    plugins:
    - name: rate-limiting
      config: {{hour: 1, limit_by: ip}}
  - name: bypath
    paths: [/p]
    plugins:
    - name: rate-limiting
      config: {{hour: 1, limit_by: path, path: /p/one}}
  - name: byheader
    paths: [/h]
    plugins:
    - name: rate-limiting
      config: {{hour: 1, limit_by: header, header_name: x-team}}
  - name: byconsumer
    paths: [/c]
    plugins:
    - name: rate-limiting
      config: {{hour: 1}}
"#,
        url = echo.url()
    ));
    let from = |ip: &str, path: &str| get(&gw, path).arg("--interface").arg(ip);

    // Each source address has its own hour.
    assert_eq!(from("127.0.0.2", "/ip").run().status, 200);
    assert_limited(&from("127.0.0.2", "/ip").run());
    assert_eq!(from("127.0.0.3", "/ip").run().status, 200);
    assert_limited(&from("127.0.0.3", "/ip").run());

    // path: the configured path is one counter for everyone; other paths count per address.
    assert_eq!(from("127.0.0.2", "/p/one").run().status, 200);
    assert_limited(&from("127.0.0.3", "/p/one").run());
    assert_eq!(from("127.0.0.2", "/p/two").run().status, 200);
    assert_eq!(from("127.0.0.3", "/p/two").run().status, 200);
    assert_limited(&from("127.0.0.3", "/p/three").run());

    // header: per value, shared between addresses; without it, per address.
    assert_eq!(
        from("127.0.0.2", "/h").header("X-Team: red").run().status,
        200
    );
    assert_limited(&from("127.0.0.3", "/h").header("X-Team: red").run());
    assert_eq!(
        from("127.0.0.3", "/h").header("X-Team: blue").run().status,
        200
    );
    assert_eq!(from("127.0.0.4", "/h").run().status, 200);
    assert_limited(&from("127.0.0.4", "/h").run());
    assert_eq!(from("127.0.0.5", "/h").run().status, 200);

    // consumer (the default) without an authenticated consumer: per address, as Kong.
    assert_eq!(from("127.0.0.2", "/c").run().status, 200);
    assert_limited(&from("127.0.0.2", "/c").run());
    assert_eq!(from("127.0.0.3", "/c").run().status, 200);
}

#[test]
fn counters_survive_a_reload() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .file(
            "limited.yaml",
            format!(
                r#"services:
- name: echo
  url: {url}
  routes:
  - name: limited
    paths: [/limited]
    plugins:
    - name: rate-limiting
      config: {{hour: 3, limit_by: ip}}
"#,
                url = echo.url()
            ),
        )
        .file(
            "other.yaml",
            "routes:\n- name: other\n  service: echo\n  paths: [/other]\n",
        )
        .start();
    let r = get(&gw, "/limited").run();
    assert_eq!(r.header("x-ratelimit-remaining-hour"), Some("2"));
    assert_eq!(get(&gw, "/limited").run().status, 200);

    // An unrelated change: the new route proves the reload happened.
    gw.conf().write(
        "other.yaml",
        "routes:\n- name: other\n  service: echo\n  paths: [/other]\n- name: newer\n  service: echo\n  paths: [/newer]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&gw, "/newer").run().status != 200 {
        assert!(
            Instant::now() < deadline,
            "reload not applied: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let r = get(&gw, "/limited").run();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ratelimit-remaining-hour"),
        Some("0"),
        "counter restarted"
    );
    assert_limited(&get(&gw, "/limited").run());
}

fn redis_gateway(echo: &HttpEcho, redis_conf: &str) -> Gateway {
    Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: shared
    paths: [/shared]
    plugins:
    - name: rate-limiting
      config:
        hour: 4
        limit_by: header
        header_name: x-key
        policy: redis
{redis_conf}
  - name: open
    paths: [/open]
    plugins:
    - name: rate-limiting
      config:
        hour: 1000
        policy: redis
        fault_tolerant: true
{redis_conf}
  - name: closed
    paths: [/closed]
    plugins:
    - name: rate-limiting
      config:
        hour: 1000
        policy: redis
        fault_tolerant: false
{redis_conf}
"#,
        url = echo.url()
    ))
}

#[test]
fn two_gateways_share_one_redis_and_redis_failures_follow_fault_tolerant() {
    let mut redis = Redis::start();
    let echo = HttpEcho::start("echo");
    // Kong 3.x's block on one, the 2.x flat names on the other: the same counters.
    let a = redis_gateway(
        &echo,
        &format!(
            "        redis:\n          host: 127.0.0.1\n          port: {}\n          timeout: 500",
            redis.port
        ),
    );
    let b = redis_gateway(
        &echo,
        &format!("        redis_host: 127.0.0.1\n        redis_port: {}\n        redis_timeout: 500\n        redis_database: 0", redis.port),
    );

    in_one_window(|key| {
        let h = format!("X-Key: {key}");
        let seen: Vec<Option<String>> = [&a, &b, &a, &b]
            .iter()
            .map(|gw| {
                let r = get(gw, "/shared").header(&h).run();
                assert_eq!(r.status, 200, "{}", r.text());
                r.header("x-ratelimit-remaining-hour").map(str::to_string)
            })
            .collect();
        if seen.iter().map(|s| s.as_deref()).collect::<Vec<_>>()
            != [Some("3"), Some("2"), Some("1"), Some("0")]
        {
            return false;
        }
        assert_limited(&get(&b, "/shared").header(&h).run());
        assert_limited(&get(&a, "/shared").header(&h).run());
        true
    });

    for gw in [&a, &b] {
        let r = get(gw, "/open").run();
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-remaining-hour").is_some());
        assert_eq!(get(gw, "/closed").run().status, 200);
    }

    redis.stop();

    for gw in [&a, &b] {
        // fault_tolerant: the traffic passes, without headers, and the error is logged.
        let r = get(gw, "/open").run();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(ratelimit_headers(&r).is_empty(), "{r:#?}");
        // Not fault tolerant: Kong's 500.
        let r = get(gw, "/closed").run();
        assert_error_body(&r, 500, "An unexpected error occurred");
        assert!(
            gw.wait_for_log("failed to get usage", Duration::from_secs(5)),
            "{}",
            gw.log()
        );
    }
}

#[test]
fn sync_rate_counts_locally_and_shares_through_redis() {
    let redis = Redis::start();
    let echo = HttpEcho::start("echo");
    let conf = format!(
        "        sync_rate: 0.1\n        redis:\n          host: 127.0.0.1\n          port: {}",
        redis.port
    );
    let a = redis_gateway(&echo, &conf);
    let b = redis_gateway(&echo, &conf);
    in_one_window(|key| {
        let h = format!("X-Key: {key}");
        for _ in 0..4 {
            if get(&a, "/shared").header(&h).run().status != 200 {
                return false;
            }
        }
        // `a` knows its own count at once; `b` learns it from Redis after a sync.
        assert_limited(&get(&a, "/shared").header(&h).run());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(&b, "/shared").header(&h).run();
            if r.status == 429 {
                break;
            }
            assert!(Instant::now() < deadline, "b never saw a's requests");
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    });
}

#[test]
fn unusable_policies_are_refused_with_their_location() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        r#"services:
- name: echo
  url: http://127.0.0.1:1
  routes:
  - name: r
    paths: [/]
    plugins:
    - name: rate-limiting
      config:
        minute: 5
        policy: cluster
"#,
    );
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("conf/gateway.yaml:11:17: services[0].routes[0].plugins[0].config.policy: the cluster policy keeps counters in Kong's database"),
        "{}",
        out.all()
    );
}

#[test]
fn limit_by_consumer_counts_each_authenticated_consumer() {
    let pki = Pki::new();
    let server = pki.server_leaf("api", &["DNS:api.example.com"]);
    let echo = HttpEcho::start("echo");
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
- username: bob
services:
- name: echo
  url: {url}
  routes:
  - name: byconsumer
    paths: [/c]
    plugins:
    - name: mtls-auth
      config: {{ca_certificates: [clients]}}
    - name: rate-limiting
      config: {{hour: 1}}
plugins:
- name: rate-limiting
  route: byconsumer
  consumer: alice
  config: {{hour: 2}}
"#,
                url = echo.url()
            ),
        )
        .start();
    let call = |who: &Leaf| {
        Curl::at("https", "api.example.com", gw.https_port(), "/c")
            .cacert(&pki.root.cert_path)
            .cert(&who.cert_path, &who.key_path)
            .run()
    };
    // Same address, different consumers: separate counters; alice's own instance allows two.
    let r = call(&pki.bob);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-hour"), Some("1"));
    assert_limited(&call(&pki.bob));
    let r = call(&pki.alice);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-hour"), Some("2"));
    assert_eq!(call(&pki.alice).status, 200);
    assert_limited(&call(&pki.alice));
}

#[test]
fn an_instance_counts_across_its_whole_scope() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"services:
- name: wide
  url: {url}
  plugins:
  - name: rate-limiting
    config: {{hour: 2, limit_by: ip}}
  routes:
  - name: w1
    paths: [/w1]
  - name: w2
    paths: [/w2]
- name: narrow
  url: {url}
  routes:
  - name: n1
    paths: [/n1]
    plugins:
    - name: rate-limiting
      config: {{hour: 1, limit_by: ip}}
  - name: n2
    paths: [/n2]
    plugins:
    - name: rate-limiting
      config: {{hour: 1, limit_by: ip}}
"#,
        url = echo.url()
    ));
    // A service's instance: one counter for all its routes (Kong keys by the plugin's scope).
    assert_eq!(get(&gw, "/w1").run().status, 200);
    assert_eq!(get(&gw, "/w2").run().status, 200);
    assert_limited(&get(&gw, "/w1").run());
    // Each route's own instance: its own counter.
    assert_eq!(get(&gw, "/n1").run().status, 200);
    assert_eq!(get(&gw, "/n2").run().status, 200);
    assert_limited(&get(&gw, "/n1").run());
}
