use super::*;
use portcullis_plugin_api::credentials::Credential;

fn ctx_with_keys(keys: &[&str]) -> BuildContext {
    let alice = Arc::new(Consumer {
        id: "c-alice".into(),
        username: Some("alice".into()),
        ..Default::default()
    });
    let creds = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Arc::new(Credential {
                id: format!("cred-{i}"),
                consumer: alice.clone(),
                fields: serde_json::json!({ "key": k }),
                tags: Vec::new(),
            })
        })
        .collect();
    let mut ctx = BuildContext {
        consumers: vec![alice],
        ..Default::default()
    };
    ctx.plugin_credentials.insert(COLLECTION, creds);
    ctx
}

fn run(plugin: &KeyAuth, uri: &str, headers: &[(&str, &str)]) -> (Flow, RequestCtx) {
    let uri: http::Uri = uri.parse().unwrap();
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let view = RequestView {
        method: &http::Method::GET,
        uri: &uri,
        headers: &map,
    };
    let mut ctx = RequestCtx::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let flow = rt.block_on(plugin.access(&view, &mut ctx));
    (flow, ctx)
}

fn message(flow: &Flow) -> Option<&str> {
    match flow {
        Flow::Respond(r) => r.message.as_deref(),
        Flow::Continue => None,
    }
}

#[test]
fn key_lookup_by_digest_and_kong_messages() {
    let ctx = ctx_with_keys(&["k1", "k2"]);
    let p = KeyAuth::from_config(&serde_json::json!({}), &ctx).unwrap();
    let (flow, ctx1) = run(&p, "/?apikey=k2", &[]);
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(ctx1.credential_identifier.as_deref(), Some("cred-1"));
    let (flow, _) = run(&p, "/", &[("apikey", "k3")]);
    assert_eq!(message(&flow), Some("Unauthorized"));
    let (flow, _) = run(&p, "/", &[("apikey", "k1"), ("apikey", "k2")]);
    assert_eq!(message(&flow), Some("Duplicate API key found"));
    let (flow, _) = run(&p, "/?apikey", &[]);
    assert_eq!(message(&flow), Some("No API key found in request"));
    let (flow, _) = run(&p, "/?apikey=", &[]);
    assert_eq!(message(&flow), Some("No API key found in request"));
}

#[test]
fn bad_key_names_and_realm_are_refused() {
    let ctx = ctx_with_keys(&[]);
    let e = KeyAuth::from_config(&serde_json::json!({"key_names": ["ok", "no space"]}), &ctx)
        .err()
        .unwrap();
    assert_eq!(e[0].path, "key_names[1]");
    let e = KeyAuth::from_config(&serde_json::json!({"realm": "a\"b"}), &ctx)
        .err()
        .unwrap();
    assert_eq!(e[0].path, "realm");
    let e = KeyAuth::from_config(&serde_json::json!({"anonymous": "nobody"}), &ctx)
        .err()
        .unwrap();
    assert_eq!(e[0].path, "anonymous");
}
