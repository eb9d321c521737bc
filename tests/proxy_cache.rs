//! proxy-cache through the real binary with curl: Miss then Hit (same body and headers, the
//! upstream asked once), Age, expiry, Bypass cases, the key (query order, vary_query_params,
//! vary_headers), Cache-Control from both sides, chunked upstreams, the entry size cap, eviction
//! under the memory bound, entries across a reload, and bad configuration located at
//! file:line:col.

mod common;

use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(15);

fn get(gw: &Gateway, path: &str) -> Curl {
    Curl::at("http", "example.com", gw.http_port(), path)
}

fn status(r: &Response) -> &str {
    r.header("x-cache-status").unwrap_or("<none>")
}

/// Sends `curl` until `cond` holds (a deadline, not a sleep), returning that response.
fn until(curl: &Curl, what: &str, cond: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = curl.run();
        if cond(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: last response {r:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gateway(echo: &HttpEcho, routes: &str) -> Gateway {
    Gateway::start(&format!(
        "services:\n- name: echo\n  url: {}\n  routes:\n{routes}",
        echo.url()
    ))
}

/// Headers a replay may differ in: the request id, the cache's diagnostics, the gateway's Server.
fn replayable(r: &Response) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| {
            !["x-request-id", "x-cache-status", "age", "server", "date"].contains(&n.as_str())
        })
        .cloned()
        .collect()
}

#[test]
fn a_miss_is_stored_and_replayed_with_the_same_body_and_headers() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(
        &echo,
        "  - name: cached\n    paths: [/c]\n    plugins:\n    - name: proxy-cache\n      config: {strategy: memory}\n",
    );
    let req = get(&gw, "/c/item")
        .header("x-echo-header: Set-Cookie: a=1")
        .header("x-echo-header: Set-Cookie: b=2")
        .header("x-echo-header: X-Upstream: yes");
    let miss = req.run();
    assert_eq!(miss.status, 200, "{miss:#?}");
    assert_eq!(status(&miss), "Miss");
    let key = miss.header("x-cache-key").expect("X-Cache-Key").to_string();
    assert_eq!(key.len(), 64, "sha256 hex: {key}");
    assert_eq!(echo.requests(), 1);

    let hit = req.run();
    assert_eq!(hit.status, 200);
    assert_eq!(status(&hit), "Hit");
    assert_eq!(hit.header("x-cache-key"), Some(key.as_str()));
    assert_eq!(hit.body, miss.body, "the stored body");
    assert_eq!(echo.requests(), 1, "a hit never reaches the upstream");
    assert_eq!(replayable(&hit), replayable(&miss));
    assert_eq!(hit.header_all("set-cookie"), ["a=1", "b=2"]);
    assert_ne!(hit.header("x-request-id"), miss.header("x-request-id"));

    // Age counts whole seconds since the response was stored.
    let first_age: u64 = hit.header("age").expect("Age").parse().unwrap();
    assert!(first_age <= 1, "{first_age}");
    let older = until(&req, "Age grows", |r| {
        r.header("age").and_then(|a| a.parse::<u64>().ok()) > Some(first_age)
    });
    assert_eq!(status(&older), "Hit");
    assert_eq!(echo.requests(), 1);

    // HEAD is cached apart from GET, as Kong keys by method.
    let head = get(&gw, "/c/item").arg("-I").run();
    assert_eq!(status(&head), "Miss");
    assert_eq!(status(&get(&gw, "/c/item").arg("-I").run()), "Hit");
}

#[test]
fn entries_expire_after_cache_ttl_and_diagnostic_headers_can_be_hidden() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(
        &echo,
        r#"  - name: short
    paths: [/short]
    plugins:
    - name: proxy-cache
      config: {strategy: memory, cache_ttl: 1}
  - name: quiet
    paths: [/quiet]
    plugins:
    - name: proxy-cache
      config:
        strategy: memory
        response_headers: {age: false, X-Cache-Status: false, X-Cache-Key: false}
"#,
    );
    let req = get(&gw, "/short");
    assert_eq!(status(&req.run()), "Miss");
    // Deadlines, not timing: a slow machine may see the one-second entry expire before the
    // second request, so wait for a hit, then for the expiry.
    until(&req, "a hit", |r| status(r) == "Hit");
    until(&req, "expiry after cache_ttl", |r| status(r) == "Miss");

    let quiet = get(&gw, "/quiet");
    let before = echo.requests();
    let r = quiet.run();
    assert_eq!(r.header("x-cache-status"), None);
    assert_eq!(r.header("x-cache-key"), None);
    let hit = quiet.run();
    assert_eq!(echo.requests(), before + 1, "the second /quiet was a hit");
    assert_eq!(hit.header("age"), None);
    assert_eq!(hit.header("x-cache-status"), None);
    // Kong-Debug shows them anyway.
    let debug = quiet.clone().header("Kong-Debug: 1").run();
    assert_eq!(debug.header("x-cache-status"), Some("Hit"));
    assert!(debug.header("age").is_some() && debug.header("x-cache-key").is_some());
}

#[test]
fn uncacheable_requests_and_responses_are_bypassed() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(
        &echo,
        "  - name: cached\n    paths: [/c]\n    plugins:\n    - name: proxy-cache\n      config: {strategy: memory}\n",
    );
    let post = get(&gw, "/c/post").data("x");
    for _ in 0..2 {
        let r = post.run();
        assert_eq!(status(&r), "Bypass");
        assert_eq!(r.header("x-cache-key"), None, "not keyed at all");
    }
    let html = get(&gw, "/c/html").header("x-echo-content-type: text/html");
    let json_utf8 =
        get(&gw, "/c/utf8").header("x-echo-content-type: application/json; charset=utf-8");
    let error = get(&gw, "/c/error").header("x-echo-status: 500");
    for req in [&html, &json_utf8, &error] {
        for _ in 0..2 {
            let r = req.run();
            assert_eq!(status(&r), "Bypass", "{r:#?}");
            assert!(r.header("x-cache-key").is_some());
        }
    }
    // A cacheable 404 (Kong's default codes are 200, 301, 404).
    let missing = get(&gw, "/c/missing").header("x-echo-status: 404");
    assert_eq!(status(&missing.run()), "Miss");
    let r = missing.run();
    assert_eq!((r.status, status(&r)), (404, "Hit"));
    assert_eq!(echo.requests(), 2 + 6 + 1);
}

#[test]
fn the_key_ignores_query_order_and_follows_vary_settings() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(
        &echo,
        r#"  - name: all
    paths: [/all]
    plugins:
    - name: proxy-cache
      config: {strategy: memory}
  - name: some
    paths: [/some]
    plugins:
    - name: proxy-cache
      config: {strategy: memory, vary_query_params: [page], vary_headers: [X-Team]}
"#,
    );
    assert_eq!(status(&get(&gw, "/all?a=1&b=2").run()), "Miss");
    assert_eq!(status(&get(&gw, "/all?b=2&a=1").run()), "Hit");
    assert_eq!(status(&get(&gw, "/all?a=1&b=3").run()), "Miss");
    // Without vary_headers, request headers are not part of the key.
    assert_eq!(
        status(&get(&gw, "/all?a=1&b=2").header("X-Team: red").run()),
        "Hit"
    );

    let red = |q: &str| get(&gw, &format!("/some{q}")).header("X-Team: red");
    assert_eq!(status(&red("?page=1&x=1").run()), "Miss");
    assert_eq!(
        status(&red("?x=2&page=1").run()),
        "Hit",
        "x is not in vary_query_params"
    );
    assert_eq!(status(&red("?page=2").run()), "Miss");
    let blue = get(&gw, "/some?page=1").header("X-Team: blue");
    assert_eq!(
        status(&blue.run()),
        "Miss",
        "another X-Team value, another entry"
    );
    assert_eq!(status(&blue.run()), "Hit");
    assert_eq!(status(&red("?page=1").run()), "Hit");
    assert_eq!(echo.requests(), 5);
}

#[test]
fn cache_control_is_honoured_when_enabled() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(
        &echo,
        r#"  - name: cc
    paths: [/cc]
    plugins:
    - name: proxy-cache
      config: {strategy: memory, cache_control: true, cache_ttl: 300}
  - name: plain
    paths: [/plain]
    plugins:
    - name: proxy-cache
      config: {strategy: memory}
"#,
    );
    // A response that forbids storing it.
    let no_store =
        get(&gw, "/cc/no-store").header("x-echo-header: Cache-Control: no-store, max-age=60");
    assert_eq!(status(&no_store.run()), "Bypass");
    assert_eq!(status(&no_store.run()), "Bypass");
    // Without a lifetime, nothing is stored (Kong needs max-age, s-maxage or Expires).
    assert_eq!(status(&get(&gw, "/cc/none").run()), "Bypass");
    // Without cache_control, the upstream's no-store is not consulted (Kong's default).
    let plain = get(&gw, "/plain").header("x-echo-header: Cache-Control: no-store");
    assert_eq!(status(&plain.run()), "Miss");
    assert_eq!(status(&plain.run()), "Hit");

    // max-age shorter than cache_ttl: stored for max-age only.
    let short = get(&gw, "/cc/short").header("x-echo-header: Cache-Control: public, max-age=1");
    assert_eq!(status(&short.run()), "Miss");
    until(&short, "a hit", |r| status(r) == "Hit");
    until(&short, "expiry after the response's max-age", |r| {
        status(r) == "Miss"
    });

    // The client's no-cache bypasses the cache (Kong's cacheable_request), the client's max-age
    // refreshes an entry older than it, and the refreshed entry is served afterwards.
    let long = || get(&gw, "/cc/long").header("x-echo-header: Cache-Control: max-age=300");
    assert_eq!(status(&long().run()), "Miss");
    assert_eq!(
        status(&long().header("Cache-Control: no-cache").run()),
        "Bypass"
    );
    assert_eq!(status(&long().run()), "Hit");
    let before = echo.requests();
    until(&long().header("Cache-Control: max-age=0"), "Refresh", |r| {
        status(r) == "Refresh"
    });
    assert_eq!(echo.requests(), before + 1);
    let r = long().run();
    assert_eq!(status(&r), "Hit");
    assert!(r.header("age").is_some());
    // only-if-cached with nothing stored: 504, no upstream request.
    let before = echo.requests();
    let r = get(&gw, "/cc/never")
        .header("Cache-Control: only-if-cached")
        .run();
    assert_eq!(r.status, 504);
    assert_eq!(echo.requests(), before);
}

#[test]
fn chunked_responses_are_cached_and_large_ones_pass_through_uncached() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(
        &echo,
        "  - name: capped\n    paths: [/capped]\n    plugins:\n    - name: proxy-cache\n      config: {strategy: memory, memory: {max_entry_size: 2k}}\n",
    );
    let chunked = get(&gw, "/capped/chunked").header("x-echo-chunked: 1");
    let miss = chunked.run();
    assert_eq!(status(&miss), "Miss");
    assert_eq!(miss.header("transfer-encoding"), Some("chunked"));
    let hit = chunked.run();
    assert_eq!(status(&hit), "Hit");
    assert_eq!(hit.body, miss.body);
    assert_eq!(
        hit.header("content-length"),
        Some(miss.body.len().to_string().as_str())
    );

    // The echo reports request headers: a 3 KB header makes a 3 KB body, above the 2 KiB cap.
    let pad = "p".repeat(3000);
    let big = get(&gw, "/capped/big")
        .header(&format!("x-pad: {pad}"))
        .header("x-echo-chunked: 1");
    let first = big.run();
    assert_eq!(status(&first), "Miss");
    assert!(first.body.len() > 3000);
    assert!(first.text().contains(&pad), "the client gets every byte");
    let second = big.run();
    assert_eq!(status(&second), "Miss", "not stored");
    assert_eq!(second.body.len(), first.body.len());
    assert_eq!(echo.requests(), 3);
}

#[test]
fn the_memory_bound_evicts_older_entries() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(
        &echo,
        "  - name: small\n    paths: [/small]\n    plugins:\n    - name: proxy-cache\n      config: {strategy: memory, memory: {max_size: 64k}}\n",
    );
    assert_eq!(status(&get(&gw, "/small/0").run()), "Miss");
    // Each entry is about 1 KiB: 300 of them are several times the bound.
    for i in 1..300 {
        let (code, _) = http_get(gw.http_port(), &format!("/small/{i}")).unwrap();
        assert_eq!(code, 200);
    }
    assert_eq!(echo.requests(), 300);
    assert_eq!(
        status(&get(&gw, "/small/299").run()),
        "Hit",
        "the newest stays"
    );
    assert_eq!(
        status(&get(&gw, "/small/0").run()),
        "Miss",
        "the oldest was evicted"
    );
    assert_eq!(status(&get(&gw, "/small/1").run()), "Miss");
    let hits = (150..300)
        .filter(|i| status(&get(&gw, &format!("/small/{i}")).run()) == "Hit")
        .count();
    assert!(hits < 100, "{hits} of 150 entries held in 64 KiB");
}

#[test]
fn entries_survive_an_unrelated_reload() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .file(
            "cached.yaml",
            format!(
                "services:\n- name: echo\n  url: {}\n  routes:\n  - name: cached\n    paths: [/c]\n    plugins:\n    - name: proxy-cache\n      config: {{strategy: memory}}\n",
                echo.url()
            ),
        )
        .file("other.yaml", "routes:\n- name: other\n  service: echo\n  paths: [/other]\n")
        .start();
    let before = get(&gw, "/c").run();
    assert_eq!(status(&before), "Miss");
    gw.conf().write(
        "other.yaml",
        "routes:\n- name: other\n  service: echo\n  paths: [/other]\n- name: newer\n  service: echo\n  paths: [/newer]\n",
    );
    until(&get(&gw, "/newer"), "reload applied", |r| r.status == 200);
    let after = get(&gw, "/c").run();
    assert_eq!(status(&after), "Hit", "{}", gw.log());
    assert_eq!(after.body, before.body);
}

#[test]
fn bad_configuration_is_located() {
    let cases = [
        ("{strategy: redis}", "plugins[0].config.strategy: expected one of: memory", "redis"),
        (
            "{strategy: memory, request_method: [GET, DELETE]}",
            "plugins[0].config.request_method[1]: expected one of: HEAD, GET, POST, PATCH, PUT",
            "DELETE",
        ),
        (
            "{strategy: memory, response_code: [200, 99]}",
            "plugins[0].config.response_code[1]: value should be between 100 and 900",
            "99",
        ),
        (
            "{strategy: memory, cache_ttl: 0}",
            "plugins[0].config.cache_ttl: value must be greater than 0",
            "0}",
        ),
        (
            "{strategy: memory, memory: {max_size: lots}}",
            "plugins[0].config.memory.max_size: expected a size in bytes or with a k, m or g suffix",
            "lots",
        ),
    ];
    for (config, message, at_text) in cases {
        let yaml = format!(
            "services:\n- name: s\n  url: http://127.0.0.1:1\nplugins:\n- name: proxy-cache\n  config: {config}\n"
        );
        let conf = ConfDir::new().with("p.yaml", &yaml);
        let out = check(&conf);
        assert_eq!(out.code, 1, "{config}: {}", out.all());
        let col = config.find(at_text).unwrap() + 11;
        let want = format!("conf/p.yaml:6:{col}: {message}");
        assert!(
            out.all().lines().any(|l| l == want),
            "want {want:?} in:\n{}",
            out.all()
        );
    }
    // No strategy at all: Kong requires one.
    let yaml = "services:\n- name: s\n  url: http://127.0.0.1:1\nplugins:\n- name: proxy-cache\n  config: {cache_ttl: 5}\n";
    let out = check(&ConfDir::new().with("p.yaml", yaml));
    assert_eq!(out.code, 1);
    assert!(
        out.all().lines().any(|l| l.starts_with("conf/p.yaml:6:")
            && l.ends_with("plugins[0].config.strategy: required field missing")),
        "{}",
        out.all()
    );
}

#[test]
fn each_consumer_has_its_own_entries() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"consumers:
- username: alice
  keyauth_credentials: [{{key: alice-key}}]
- username: bob
  keyauth_credentials: [{{key: bob-key}}]
services:
- name: echo
  url: {}
  routes:
  - name: private
    paths: [/private]
    plugins:
    - name: key-auth
    - name: proxy-cache
      config: {{strategy: memory}}
"#,
        echo.url()
    ));
    let as_user = |key: &str| get(&gw, "/private").header(&format!("apikey: {key}"));
    let alice = as_user("alice-key").run();
    assert_eq!(status(&alice), "Miss");
    let bob = as_user("bob-key").run();
    assert_eq!(status(&bob), "Miss", "another consumer, another entry");
    assert_ne!(alice.header("x-cache-key"), bob.header("x-cache-key"));
    let again = as_user("alice-key").run();
    assert_eq!(status(&again), "Hit");
    assert_eq!(
        again.echo_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(as_user("wrong").run().status, 401);
    assert_eq!(echo.requests(), 2);
}
