use super::*;
use portcullis_plugin_api::HeaderEdit;

fn alice() -> Arc<Consumer> {
    Arc::new(Consumer {
        id: "c-alice".into(),
        username: Some("alice".into()),
        ..Default::default()
    })
}

fn build(config: serde_json::Value) -> Result<Session, Vec<ConfigError>> {
    let ctx = BuildContext {
        consumers: vec![alice()],
        ..Default::default()
    };
    Session::from_config(&config, &ctx)
}

fn plugin(config: serde_json::Value) -> Session {
    build(config).unwrap()
}

fn headers(cookie: Option<&str>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Some(c) = cookie {
        h.insert(http::header::COOKIE, c.parse().unwrap());
    }
    h
}

fn data() -> Data {
    Data {
        c: "c-alice".into(),
        k: "cred-1".into(),
        g: None,
        a: "default".into(),
        s: Some("alice".into()),
    }
}

/// The `name=value` part of a Set-Cookie.
fn pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

#[test]
fn sealed_values_open_only_with_the_same_secret_kind_and_bytes() {
    let keys = Keys::new(b"s3cret").unwrap();
    let meta = Meta {
        creation: 100,
        rolling_offset: 5,
        idling_offset: 2,
        sid: cookie::new_sid().unwrap(),
    };
    let v = keys.seal(Kind::Session, &meta, b"payload").unwrap();
    let (m, p) = keys.open(Kind::Session, &v).unwrap();
    assert_eq!((m, p.as_slice()), (meta.clone(), &b"payload"[..]));
    assert!(keys.open(Kind::Remember, &v).is_err());
    assert!(Keys::new(b"other")
        .unwrap()
        .open(Kind::Session, &v)
        .is_err());
    // Every byte is covered: flipping any one (timestamps included) breaks the value.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.as_bytes())
        .unwrap();
    use base64::Engine;
    for i in 0..raw.len() {
        let mut t = raw.clone();
        t[i] ^= 1;
        let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
        assert!(keys.open(Kind::Session, &t).is_err(), "byte {i}");
    }
    assert!(keys.open(Kind::Session, "not base64!").is_err());
    assert!(keys.open(Kind::Session, "").is_err());
}

#[test]
fn timeouts_as_lua_resty_session_checks_them() {
    let p = plugin(
        serde_json::json!({"secret": "x", "idling_timeout": 10, "rolling_timeout": 100, "absolute_timeout": 1000}),
    );
    let (_, c) = p.save(Kind::Session, data(), None, 5000).unwrap();
    let h = headers(Some(pair(&c)));
    assert!(p.open(&h, Kind::Session, 5010).is_ok());
    assert_eq!(
        p.open(&h, Kind::Session, 5011).unwrap_err(),
        "session idling timeout exceeded"
    );
    // Renewed long ago: the rolling timeout ends it even when touched.
    let (_, c) = p.save(Kind::Session, data(), Some(4000), 4500).unwrap();
    let mut o = p
        .open(&headers(Some(pair(&c))), Kind::Session, 4505)
        .unwrap();
    o.meta.idling_offset = 95;
    let touched = p.seal(Kind::Session, &o).unwrap();
    assert_eq!(
        p.open(&headers(Some(pair(&touched))), Kind::Session, 4601)
            .unwrap_err(),
        "session rolling timeout exceeded"
    );
    let (_, c) = p.save(Kind::Session, data(), Some(4000), 4999).unwrap();
    assert_eq!(
        p.open(&headers(Some(pair(&c))), Kind::Session, 5001)
            .unwrap_err(),
        "session absolute timeout exceeded"
    );
    // Another audience's cookie is no session here.
    let other = plugin(serde_json::json!({"secret": "x", "audience": "other"}));
    let (_, c) = other
        .save(
            Kind::Session,
            {
                let mut d = data();
                d.a = "other".into();
                d
            },
            None,
            5000,
        )
        .unwrap();
    assert_eq!(
        p.open(&headers(Some(pair(&c))), Kind::Session, 5000)
            .unwrap_err(),
        "missing session audience"
    );
}

#[test]
fn refresh_renews_after_three_quarters_and_touches_after_the_threshold() {
    let p =
        plugin(serde_json::json!({"secret": "x", "rolling_timeout": 100, "idling_timeout": 900}));
    let (mut o, _) = p.save(Kind::Session, data(), None, 1000).unwrap();
    let sid = o.meta.sid;
    let mut st = State::default();
    o.at = 1060;
    p.refresh(&mut o, &mut st);
    assert!(st.cookies.is_empty(), "nothing to do before 60 s or 75 s");
    o.at = 1076;
    p.refresh(&mut o, &mut st);
    assert_eq!(st.cookies.len(), 1);
    assert_ne!(o.meta.sid, sid, "a renewal is a new session id");
    assert_eq!((o.meta.creation, o.meta.rolling_offset), (1000, 76));

    let p = plugin(serde_json::json!({"secret": "x", "rolling_timeout": 0, "idling_timeout": 4}));
    let (mut o, _) = p.save(Kind::Session, data(), None, 1000).unwrap();
    let sid = o.meta.sid;
    let mut st = State::default();
    o.at = 1003;
    p.refresh(&mut o, &mut st);
    assert_eq!(
        st.cookies.len(),
        1,
        "a short idling timeout touches at its half"
    );
    assert_eq!((o.meta.sid, o.meta.idling_offset), (sid, 3));
}

#[test]
fn cookie_attributes_as_kong_writes_them() {
    let p = plugin(serde_json::json!({"secret": "x"}));
    assert_eq!(
        p.cookie_flags,
        "; Path=/; SameSite=Strict; Secure; HttpOnly"
    );
    assert_eq!(
        p.clear(Kind::Session),
        "session=; Path=/; SameSite=Strict; Secure; HttpOnly; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0"
    );
    let p = plugin(
        serde_json::json!({"secret": "x", "cookie_domain": "example.com", "cookie_path": "/app",
        "cookie_same_site": "None", "cookie_secure": false, "cookie_http_only": false, "cookie_name": "sid"}),
    );
    assert_eq!(
        p.cookie_flags,
        "; Domain=example.com; Path=/app; SameSite=None; Secure"
    );
    let p = plugin(
        serde_json::json!({"secret": "x", "cookie_domain": "localhost", "cookie_samesite": "off", "cookie_httponly": false, "cookie_secure": false}),
    );
    assert_eq!(p.cookie_flags, "; Path=/; SameSite=Lax");
    let p = plugin(
        serde_json::json!({"secret": "x", "remember": true, "remember_rolling_timeout": 60}),
    );
    let (_, c) = p.save(Kind::Remember, data(), Some(0), 10).unwrap();
    assert!(c.starts_with("remember="), "{c}");
    assert!(
        c.ends_with("; Path=/; SameSite=Strict; Secure; HttpOnly; Expires=Thu, 01 Jan 1970 00:01:00 GMT; Max-Age=60"),
        "{c}"
    );
}

#[test]
fn kong_2_names_still_configure_the_session() {
    let p = plugin(
        serde_json::json!({"secret": "x", "cookie_lifetime": 50, "cookie_idletime": null,
        "cookie_renew": 600, "cookie_discard": 3, "cookie_persistent": true}),
    );
    assert_eq!((p.session.rolling, p.session.idling), (50.0, 0.0));
    assert!(p.remember.is_some());
}

#[test]
fn bad_configuration_is_refused_with_the_field() {
    let paths = |v: serde_json::Value| -> Vec<String> {
        build(v)
            .err()
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    assert_eq!(paths(serde_json::json!({"storage": "kong"})), ["storage"]);
    assert_eq!(
        paths(serde_json::json!({"cookie_same_site": "Sometimes"})),
        ["cookie_same_site"]
    );
    assert_eq!(
        paths(serde_json::json!({"cookie_samesite": "nope"})),
        ["cookie_samesite"]
    );
    assert_eq!(
        paths(serde_json::json!({"logout_methods": ["PUT"]})),
        ["logout_methods[0]"]
    );
    assert_eq!(
        paths(serde_json::json!({"response_headers": ["id", "cookie"]})),
        ["response_headers[1]"]
    );
    assert_eq!(
        paths(
            serde_json::json!({"secret": "", "idling_timeout": -1, "cookie_name": "a b", "cookie_path": "/;x"})
        ),
        ["idling_timeout", "cookie_name", "cookie_path", "secret"]
    );
    assert_eq!(paths(serde_json::json!({"secrt": "x"})), ["secrt"]);
    assert_eq!(
        paths(serde_json::json!({"secret": "{vault://env/session-secret}"})),
        ["secret"]
    );
}

fn view<'a>(
    method: &'a http::Method,
    uri: &'a http::Uri,
    h: &'a http::HeaderMap,
) -> RequestView<'a> {
    RequestView {
        method,
        uri,
        headers: h,
    }
}

#[test]
fn a_valid_cookie_identifies_and_a_logout_clears_it() {
    let p = plugin(serde_json::json!({"secret": "x", "request_headers": ["subject", "audience"]}));
    let (_, c) = p.save(Kind::Session, data(), None, now()).unwrap();
    let h = headers(Some(&format!("other=1; {}", pair(&c))));
    let uri: http::Uri = "/".parse().unwrap();
    let mut ctx = RequestCtx::default();
    let (st, flow) = p.access_inner(&view(&http::Method::GET, &uri, &h), &mut ctx);
    assert!(flow.is_none());
    assert_eq!(ctx.consumer.as_ref().unwrap().id, "c-alice");
    assert_eq!(ctx.credential_identifier.as_deref(), Some("cred-1"));
    let up: Vec<_> = ctx
        .upstream_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert!(up.contains(&("session-subject", "alice")), "{up:?}");
    assert!(up.contains(&("session-audience", "default")), "{up:?}");
    assert!(st.cookies.is_empty());

    // Same consumer and credential: no new cookie.
    let mut st = st;
    p.issue(&ctx, &mut st, &h);
    assert!(st.cookies.is_empty());

    let uri: http::Uri = "/?session_logout".parse().unwrap();
    let mut ctx = RequestCtx::default();
    let (st, flow) = p.access_inner(&view(&http::Method::DELETE, &uri, &h), &mut ctx);
    assert!(matches!(flow, Some(Flow::Respond(ref r)) if r.status == 200 && r.message.is_none()));
    assert!(st.logged_out && ctx.consumer.is_none());
    assert_eq!(st.cookies, [p.clear(Kind::Session)]);
    // GET is not a logout method by default: the session just identifies.
    let mut ctx = RequestCtx::default();
    let (_, flow) = p.access_inner(&view(&http::Method::GET, &uri, &h), &mut ctx);
    assert!(flow.is_none() && ctx.consumer.is_some());
}

#[test]
fn logout_by_body_argument_needs_read_body_for_logout() {
    let p = plugin(serde_json::json!({"secret": "x", "read_body_for_logout": true}));
    assert!(p.phases().contains(Phases::BUFFER_REQUEST_BODY));
    let uri: http::Uri = "/".parse().unwrap();
    let mut h = headers(None);
    h.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let mut ctx = RequestCtx {
        request_body: Some(bytes("a=1&session_logout=")),
        ..Default::default()
    };
    assert!(p.wants_logout(&view(&http::Method::POST, &uri, &h), &ctx));
    ctx.request_body = Some(bytes("a=1"));
    assert!(!p.wants_logout(&view(&http::Method::POST, &uri, &h), &ctx));
    h.insert("content-type", "application/json".parse().unwrap());
    ctx.request_body = Some(bytes(r#"{"session_logout": true}"#));
    assert!(p.wants_logout(&view(&http::Method::POST, &uri, &h), &ctx));
    ctx.request_body = Some(bytes(r#"{"session_logout": false}"#));
    assert!(!p.wants_logout(&view(&http::Method::POST, &uri, &h), &ctx));
    let off = plugin(serde_json::json!({"secret": "x"}));
    ctx.request_body = Some(bytes(r#"{"session_logout": true}"#));
    assert!(!off.wants_logout(&view(&http::Method::POST, &uri, &h), &ctx));
}

fn bytes(s: &str) -> portcullis_plugin_api::bytes::Bytes {
    portcullis_plugin_api::bytes::Bytes::from(s.to_string())
}

#[test]
fn a_session_for_a_removed_consumer_is_destroyed() {
    let p = plugin(serde_json::json!({"secret": "x"}));
    let mut d = data();
    d.c = "gone".into();
    let (_, c) = p.save(Kind::Session, d, None, now()).unwrap();
    let h = headers(Some(pair(&c)));
    let uri: http::Uri = "/".parse().unwrap();
    let mut ctx = RequestCtx::default();
    let (st, flow) = p.access_inner(&view(&http::Method::GET, &uri, &h), &mut ctx);
    assert!(flow.is_none() && ctx.consumer.is_none());
    assert_eq!(st.cookies, [p.clear(Kind::Session)]);
}

#[test]
fn a_remember_cookie_restarts_an_expired_session() {
    let p = plugin(serde_json::json!({"secret": "x", "remember": true, "idling_timeout": 5}));
    let t = now();
    let (_, rc) = p.save(Kind::Remember, data(), None, t - 100).unwrap();
    let (_, sc) = p.save(Kind::Session, data(), None, t - 100).unwrap();
    let h = headers(Some(&format!("{}; {}", pair(&sc), pair(&rc))));
    let uri: http::Uri = "/".parse().unwrap();
    let mut ctx = RequestCtx::default();
    let (st, _) = p.access_inner(&view(&http::Method::GET, &uri, &h), &mut ctx);
    assert_eq!(ctx.consumer.as_ref().unwrap().id, "c-alice");
    let names: Vec<_> = st
        .cookies
        .iter()
        .map(|c| cookie::set_cookie_name(c))
        .collect();
    assert_eq!(names, ["remember", "session"]);
}

#[test]
fn without_a_secret_instances_of_one_process_share_a_random_one() {
    let a = plugin(serde_json::json!({}));
    let b = plugin(serde_json::json!({}));
    let (_, c) = a.save(Kind::Session, data(), None, now()).unwrap();
    assert!(b
        .open(&headers(Some(pair(&c))), Kind::Session, now())
        .is_ok());
    let other = plugin(serde_json::json!({"secret": "x"}));
    assert!(other
        .open(&headers(Some(pair(&c))), Kind::Session, now())
        .is_err());
}

/// A response head over a plain header map.
struct Head(http::HeaderMap);

impl HeaderEdit for Head {
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

#[test]
fn the_session_cookie_replaces_an_upstream_cookie_of_its_name_and_keeps_the_others() {
    let p = plugin(serde_json::json!({"secret": "x", "response_headers": ["subject"]}));
    let mut head = Head(http::HeaderMap::new());
    head.append("set-cookie", "theme=dark; Path=/");
    head.append("set-cookie", "session=upstream; Path=/");
    let mut ctx = RequestCtx::default();
    auth::authenticated(&mut ctx, &alice(), "cred-1");
    let mut resp = ResponseHead {
        status: 200,
        headers: &mut head,
        from_gateway: false,
    };
    p.response_headers(&mut resp, &mut ctx);
    let cookies: Vec<&str> = head
        .0
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert_eq!(cookies[0], "theme=dark; Path=/");
    assert!(cookies[1].starts_with("session=") && cookies[1] != "session=upstream; Path=/");
    assert_eq!(head.0.get("session-subject").unwrap(), "alice");

    // The anonymous consumer gets no session.
    let mut head = Head(http::HeaderMap::new());
    let mut ctx = RequestCtx::default();
    let guest = alice();
    let response = PluginResponse::message(401, "Unauthorized");
    auth::failed(
        &mut ctx,
        "key-auth",
        Some(&guest),
        "no_credentials",
        response,
    );
    let mut resp = ResponseHead {
        status: 200,
        headers: &mut head,
        from_gateway: false,
    };
    p.response_headers(&mut resp, &mut ctx);
    assert!(head.0.get("set-cookie").is_none());
}

#[test]
fn a_persistent_cookie_expiry_never_overflows_the_http_date() {
    assert_eq!(
        cookie::persistent_flags(u64::MAX, 1),
        "; Expires=Fri, 31 Dec 9999 23:59:59 GMT; Max-Age=1"
    );
}
