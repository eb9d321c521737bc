use super::*;
use portcullis_plugin_api::{EntityInfo, HeaderEdit};
use serde_json::json;

fn plugin(config: Value) -> ProxyCache {
    let config = Config::parse(&config).unwrap();
    let store = Arc::new(Store::new(config.max_size));
    ProxyCache { config, store }
}

fn ctx(route: &str) -> RequestCtx {
    RequestCtx {
        route_info: Some(Arc::new(EntityInfo {
            id: route.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn key(p: &ProxyCache, method: &str, uri: &str, h: &[(&str, &str)], c: &RequestCtx) -> String {
    hex(&openssl::sha::sha256(text(p, method, uri, h, c).as_bytes()))
}

fn text(
    p: &ProxyCache,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    c: &RequestCtx,
) -> String {
    let method: http::Method = method.parse().unwrap();
    let uri: http::Uri = uri.parse().unwrap();
    let mut h = http::HeaderMap::new();
    for (n, v) in headers {
        h.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let req = RequestView {
        method: &method,
        uri: &uri,
        headers: &h,
    };
    p.key_text(&req, c)
}

#[test]
fn key_components_read_as_kongs_cache_key_spec() {
    let c = ctx("r1");
    let all = plugin(json!({"strategy": "memory"}));
    assert_eq!(
        text(&all, "GET", "/a?b=2&a=1", &[], &c),
        "r1|GET|/a|a=1:b=2|"
    );
    assert_eq!(text(&all, "GET", "/a", &[], &c), "r1|GET|/a||");
    let some = plugin(
        json!({"strategy": "memory", "vary_query_params": ["a", "b", "c"],
        "vary_headers": ["a", "b", "c"]}),
    );
    assert_eq!(
        text(
            &some,
            "GET",
            "/a?a=2&b=2&a=1&d=4",
            &[("a", "2"), ("a", "1"), ("b", "2")],
            &c
        ),
        "r1|GET|/a|a=1,2:b=2|a=1,2:b=2"
    );
    assert_eq!(text(&some, "GET", "/a?a", &[], &c), "r1|GET|/a|a|");
}

#[test]
fn the_key_follows_kongs_components() {
    let p = plugin(json!({"strategy": "memory"}));
    let c = ctx("r1");
    let k = |uri: &str| key(&p, "GET", uri, &[], &c);
    assert_eq!(
        k("/a?x=1&y=2"),
        k("/a?y=2&x=1"),
        "query order is irrelevant"
    );
    assert_ne!(k("/a?x=1"), k("/a?x=2"));
    assert_ne!(k("/a"), k("/A"));
    assert_eq!(k("/a?x=1&x=2"), k("/a?x=2&x=1"), "repeated values sorted");
    assert_ne!(k("/a?flag"), k("/a?flag="));
    assert_ne!(k("/a"), key(&p, "HEAD", "/a", &[], &c));
    assert_ne!(k("/a"), key(&p, "GET", "/a", &[], &ctx("r2")), "per route");
    let mut alice = ctx("r1");
    alice.consumer = Some(Arc::new(portcullis_plugin_api::Consumer {
        id: "alice-id".into(),
        ..Default::default()
    }));
    assert_ne!(k("/a"), key(&p, "GET", "/a", &[], &alice), "per consumer");
    assert_eq!(k("/a"), key(&p, "GET", "/a", &[("accept", "x")], &c));
    assert_eq!(k("/a").len(), 64);
}

#[test]
fn vary_settings_narrow_and_widen_the_key() {
    let p = plugin(json!({"strategy": "memory", "vary_query_params": ["x"],
        "vary_headers": ["X-Team"], "ignore_uri_case": true}));
    let c = ctx("r1");
    let k = |uri: &str, h: &[(&str, &str)]| key(&p, "GET", uri, h, &c);
    assert_eq!(k("/a?x=1&other=2", &[]), k("/A?x=1", &[]));
    assert_ne!(k("/a?x=1", &[]), k("/a?x=2", &[]));
    assert_ne!(
        k("/a", &[("x-team", "red")]),
        k("/a", &[("x-team", "blue")])
    );
    assert_eq!(
        k("/a", &[("x-team", "a"), ("x-team", "b")]),
        k("/a", &[("x-team", "b"), ("x-team", "a")])
    );
    assert_ne!(k("/a", &[("x-team", "red")]), k("/a", &[]));
}

#[test]
fn cache_control_directives_and_ttls() {
    let parse = |s: &str| {
        let v = http::HeaderValue::from_str(s).unwrap();
        Directives::parse(std::iter::once(&v))
    };
    let cc = parse("public, Max-Age=60, s-maxage=30");
    assert_eq!(cc.number("max-age"), Some(60.0));
    assert_eq!(resource_ttl(&cc, None), 30.0);
    assert_eq!(resource_ttl(&parse("no-cache"), None), 0.0);
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(100));
    let exp = http::HeaderValue::from_str(&later).unwrap();
    let ttl = resource_ttl(&parse(""), Some(&exp));
    assert!((98.0..=100.0).contains(&ttl), "{ttl}");
    assert_eq!(resource_ttl(&parse("max-age=-5"), None), 0.0);
}

struct Map(http::HeaderMap);
impl HeaderEdit for Map {
    fn get(&self, name: &str) -> Option<&http::HeaderValue> {
        self.0.get(name)
    }
    fn get_all(&self, name: &str) -> Vec<&http::HeaderValue> {
        self.0.get_all(name).iter().collect()
    }
    fn names(&self) -> Vec<http::HeaderName> {
        self.0.keys().cloned().collect()
    }
    fn set(&mut self, name: &str, value: &str) {
        self.0.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    fn append(&mut self, name: &str, value: &str) {
        self.0.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }
}

fn cacheable(p: &ProxyCache, status: u16, headers: &[(&str, &str)]) -> Option<f64> {
    let mut m = Map(http::HeaderMap::new());
    for (n, v) in headers {
        m.append(n, v);
    }
    let head = ResponseHead {
        status,
        headers: &mut m,
        from_gateway: false,
    };
    p.cacheable_response(&head)
}

#[test]
fn responses_are_cacheable_as_kong_decides() {
    let p = plugin(json!({"strategy": "memory"}));
    let json = ("content-type", "application/json");
    assert_eq!(cacheable(&p, 200, &[json]), Some(300.0));
    assert_eq!(cacheable(&p, 404, &[json]), Some(300.0));
    assert_eq!(cacheable(&p, 500, &[json]), None);
    assert_eq!(cacheable(&p, 200, &[("content-type", "text/html")]), None);
    assert_eq!(cacheable(&p, 200, &[]), None);
    assert_eq!(cacheable(&p, 200, &[json, json]), None, "two content types");
    // Without cache_control, the upstream's Cache-Control is not consulted.
    assert_eq!(
        cacheable(&p, 200, &[json, ("cache-control", "no-store")]),
        Some(300.0)
    );

    let p = plugin(json!({"strategy": "memory", "cache_control": true}));
    assert_eq!(cacheable(&p, 200, &[json]), None, "no lifetime given");
    assert_eq!(
        cacheable(&p, 200, &[json, ("cache-control", "max-age=5")]),
        Some(5.0)
    );
    for cc in [
        "private, max-age=5",
        "no-store, max-age=5",
        "no-cache, max-age=5",
    ] {
        assert_eq!(cacheable(&p, 200, &[json, ("cache-control", cc)]), None);
    }
}

#[test]
fn freshness_as_kong_checks_it() {
    let entry = |age: u64, ttl: f64| Entry {
        key: [0; 32],
        status: 200,
        headers: Vec::new(),
        body: Bytes::new(),
        timestamp: 1000 - age,
        ttl,
        expires: None,
    };
    let none = Directives::default();
    let p = plugin(json!({"strategy": "memory", "cache_ttl": 10}));
    assert!(p.fresh_enough(&entry(10, 10.0), &none, 1000));
    assert!(!p.fresh_enough(&entry(11, 10.0), &none, 1000));

    let p = plugin(json!({"strategy": "memory", "cache_control": true}));
    let parse = |s: &str| {
        let v = http::HeaderValue::from_str(s).unwrap();
        Directives::parse(std::iter::once(&v))
    };
    assert!(p.fresh_enough(&entry(0, 60.0), &parse("max-age=0"), 1000));
    assert!(!p.fresh_enough(&entry(1, 60.0), &parse("max-age=0"), 1000));
    assert!(!p.fresh_enough(&entry(50, 60.0), &parse("min-fresh=20"), 1000));
    assert!(p.fresh_enough(&entry(70, 60.0), &parse("max-stale=20"), 1000));
    assert!(!p.fresh_enough(&entry(90, 60.0), &parse("max-stale=20"), 1000));
}
