use super::*;
use portcullis_plugin_api::{Consumer, EntityInfo};
use serde_json::json;

fn ctx(route: &str) -> RequestCtx {
    RequestCtx {
        client_ip: Some("192.0.2.7".parse().unwrap()),
        route_info: Some(Arc::new(EntityInfo {
            id: route.into(),
            ..Default::default()
        })),
        service_info: Some(Arc::new(EntityInfo {
            id: "svc".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn header<'a>(ctx: &'a RequestCtx, name: &str) -> Option<&'a str> {
    ctx.response_headers
        .iter()
        .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.to_str().ok())
}

async fn call(p: &RateLimiting, c: &mut RequestCtx, headers: &http::HeaderMap) -> Flow {
    let uri: http::Uri = "/p".parse().unwrap();
    let view = RequestView {
        method: &http::Method::GET,
        uri: &uri,
        headers,
    };
    p.access(&view, c).await
}

#[tokio::test]
async fn consumer_limits_fall_back_to_the_client_address() {
    let p = RateLimiting::from_config(
        &json!({"hour": 2, "limit_by": "consumer"}),
        Some("unit-consumer"),
        None,
    )
    .unwrap();
    let h = http::HeaderMap::new();
    let route = "unit-consumer-fallback";
    // Two different consumers each get their own two requests.
    for id in ["alice", "bob"] {
        for _ in 0..2 {
            let mut c = ctx(route);
            c.consumer = Some(Arc::new(Consumer {
                id: id.into(),
                ..Default::default()
            }));
            assert!(matches!(call(&p, &mut c, &h).await, Flow::Continue));
        }
    }
    // Without a consumer the address counts, separately from both.
    for _ in 0..2 {
        assert!(matches!(
            call(&p, &mut ctx(route), &h).await,
            Flow::Continue
        ));
    }
    let mut c = ctx(route);
    match call(&p, &mut c, &h).await {
        Flow::Respond(r) => {
            assert_eq!(r.status, 429);
            assert_eq!(r.message.as_deref(), Some("API rate limit exceeded"));
            assert!(r.headers.iter().any(|(n, _)| n == "Retry-After"));
        }
        Flow::Continue => panic!("third request from the address passed"),
    }
    assert_eq!(header(&c, "X-RateLimit-Remaining-Hour"), Some("0"));
}

#[tokio::test]
async fn ratelimit_headers_follow_the_tightest_period() {
    let p = RateLimiting::from_config(
        &json!({"minute": 3, "hour": 10}),
        Some("unit-headers"),
        None,
    )
    .unwrap();
    let h = http::HeaderMap::new();
    let mut c = ctx("unit-headers");
    assert!(matches!(call(&p, &mut c, &h).await, Flow::Continue));
    assert_eq!(header(&c, "X-RateLimit-Limit-Minute"), Some("3"));
    assert_eq!(header(&c, "X-RateLimit-Remaining-Minute"), Some("2"));
    assert_eq!(header(&c, "X-RateLimit-Limit-Hour"), Some("10"));
    assert_eq!(header(&c, "X-RateLimit-Remaining-Hour"), Some("9"));
    assert_eq!(header(&c, "RateLimit-Limit"), Some("3"));
    assert_eq!(header(&c, "RateLimit-Remaining"), Some("2"));
    let reset: i64 = header(&c, "RateLimit-Reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
}

#[tokio::test]
async fn hidden_headers_and_custom_error() {
    let p = RateLimiting::from_config(&json!({
        "second": 1, "hide_client_headers": true, "error_code": 503, "error_message": "slow down",
        "limit_by": "header", "header_name": "x-key"
    }), Some("unit-hidden"), None)
    .unwrap();
    let mut h = http::HeaderMap::new();
    h.insert("x-key", "k1".parse().unwrap());
    let route = "unit-hidden";
    let mut last = Flow::Continue;
    // Within one second window the second request is refused; retry across a boundary.
    for _ in 0..3 {
        let mut c = ctx(route);
        last = call(&p, &mut c, &h).await;
        assert!(c.response_headers.is_empty());
        if matches!(last, Flow::Respond(_)) {
            break;
        }
    }
    match last {
        Flow::Respond(r) => {
            assert_eq!(r.status, 503);
            assert_eq!(r.message.as_deref(), Some("slow down"));
            assert!(
                r.headers.is_empty(),
                "Kong sends no Retry-After when headers are hidden"
            );
        }
        Flow::Continue => panic!("never limited"),
    }
}

#[tokio::test]
async fn unreachable_redis_fails_open_or_closed() {
    let dead = |ft: bool| {
        RateLimiting::from_config(
            &json!({
                "minute": 5, "policy": "redis", "fault_tolerant": ft,
                "redis": {"host": "127.0.0.1", "port": 1, "timeout": 200}
            }),
            Some("unit-redis"),
            None,
        )
        .unwrap()
    };
    let h = http::HeaderMap::new();
    let mut c = ctx("unit-redis-down");
    assert!(matches!(
        call(&dead(true), &mut c, &h).await,
        Flow::Continue
    ));
    assert!(c.response_headers.is_empty());
    match call(&dead(false), &mut ctx("unit-redis-down"), &h).await {
        Flow::Respond(r) => {
            assert_eq!(r.status, 500);
            assert_eq!(r.message.as_deref(), Some("An unexpected error occurred"));
        }
        Flow::Continue => panic!("passed with Redis down and fault_tolerant false"),
    }
}

#[test]
fn keys_are_kongs() {
    assert_eq!(
        counter_key("ratelimit:r1:s1:", "10.0.0.1", 1_700_000_000_000, "minute"),
        "ratelimit:r1:s1:10.0.0.1:1700000000000:minute"
    );
}

#[tokio::test]
async fn a_tie_in_remaining_reports_the_longer_window() {
    let p = RateLimiting::from_config(
        &json!({"minute": 5, "hour": 5, "limit_by": "service"}),
        Some("unit-tie"),
        None,
    )
    .unwrap();
    let hour = window::PERIODS[2];
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = window::reset_secs(&hour, now());
    let mut c = ctx("unit-tie");
    assert!(matches!(
        call(&p, &mut c, &http::HeaderMap::new()).await,
        Flow::Continue
    ));
    let after = window::reset_secs(&hour, now());
    let reset: i64 = header(&c, "RateLimit-Reset").unwrap().parse().unwrap();
    assert!(
        (after..=before).contains(&reset),
        "{reset} not the hour's ({after}..={before})"
    );
    assert_eq!(header(&c, "RateLimit-Remaining"), Some("4"));
}
