//! Unit tests: the factory and `access` driven directly, with a PKI generated per test, a CRL
//! served over HTTP on loopback and a real `openssl ocsp` responder.

mod pki;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_plugin_api::{
    BuildContext, CaCertificate, ClientCertificate, Consumer, Flow, MtlsCredential, Plugin,
    PluginFactory, RequestCtx, RequestView,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use pki::{Ca, Client, Leaf};

fn consumer(id: &str, username: Option<&str>, custom_id: Option<&str>) -> Arc<Consumer> {
    Arc::new(Consumer {
        id: id.into(),
        username: username.map(Into::into),
        custom_id: custom_id.map(Into::into),
        groups: Vec::new(),
        tags: Vec::new(),
    })
}

/// The CAs, consumers and conf directory most tests share.
struct World {
    root: Ca,
    other: Ca,
    inter: Ca,
    dir: tempfile::TempDir,
    consumers: Vec<Arc<Consumer>>,
    credentials: Vec<MtlsCredential>,
}

impl World {
    fn new() -> World {
        let root = Ca::root("Client Root CA");
        let inter = root.intermediate("Client Issuing CA");
        World {
            other: Ca::root("Unrelated CA"),
            root,
            inter,
            dir: tempfile::tempdir().unwrap(),
            consumers: vec![
                consumer("c-alice", Some("alice"), Some("alice@example.com")),
                consumer("c-bob", Some("bob"), None),
                consumer("c-default", Some("fallback"), None),
                consumer("c-anon", Some("anonymous"), Some("anon-1")),
                consumer("c-dave", Some("dave"), None),
            ],
            credentials: Vec::new(),
        }
    }

    fn credential(&mut self, subject: &str, ca: Option<&str>, consumer: &str) {
        let n = self.credentials.len();
        self.credentials.push(MtlsCredential {
            id: format!("cred-{n}"),
            subject_name: subject.into(),
            ca_certificate: ca.map(Into::into),
            consumer_id: consumer.into(),
        });
    }

    fn ctx(&self) -> BuildContext {
        let ca = |id: &str, name: &str, c: &Ca| {
            Arc::new(CaCertificate {
                id: id.into(),
                name: Some(name.into()),
                pem: c.pem(),
            })
        };
        BuildContext {
            consumers: self.consumers.clone(),
            credentials: self.credentials.clone(),
            ca_certificates: vec![
                ca("ca-root", "clients", &self.root),
                ca("ca-other", "unrelated", &self.other),
                ca("ca-inter", "issuing", &self.inter),
            ],
            conf_dir: self.dir.path().to_path_buf(),
            ..BuildContext::default()
        }
    }

    fn plugin(&self, config: Value) -> MtlsAuth {
        match MtlsAuth::from_config(&config, &self.ctx()) {
            Ok(p) => p,
            Err(e) => panic!("config {config} rejected: {e:?}"),
        }
    }

    fn errors(&self, config: Value) -> Vec<(String, String)> {
        match Factory.build(&config, &self.ctx()) {
            Ok(_) => panic!("config {config} accepted"),
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    fn alice(&self) -> Client {
        self.root
            .issue(&Leaf::new("Alice Smith", 0x100).san("email:alice@example.com"))
    }

    fn bob(&self) -> Client {
        self.root.issue(&Leaf::new("bob", 0x101))
    }

    fn carol(&self) -> Client {
        self.root.issue(&Leaf::new("carol", 0x102))
    }
}

async fn run(plugin: &dyn Plugin, cert: Option<Arc<ClientCertificate>>) -> (Flow, RequestCtx) {
    let mut ctx = RequestCtx {
        request_id: "req-1".into(),
        tls: true,
        client_certificate: cert,
        ..Default::default()
    };
    let flow = call(plugin, &mut ctx).await;
    (flow, ctx)
}

async fn call(plugin: &dyn Plugin, ctx: &mut RequestCtx) -> Flow {
    let method = ::http::Method::GET;
    let uri: ::http::Uri = "/anything".parse().unwrap();
    let headers = ::http::HeaderMap::new();
    let req = RequestView {
        method: &method,
        uri: &uri,
        headers: &headers,
    };
    plugin.access(&req, ctx).await
}

fn header(ctx: &RequestCtx, name: &str) -> Option<String> {
    ctx.upstream_headers
        .iter()
        .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_str().unwrap().to_string())
}

#[track_caller]
fn assert_401(flow: &Flow, ctx: &RequestCtx, message: &str, reason: &str) {
    match flow {
        Flow::Respond(r) => {
            assert_eq!(r.status, 401);
            assert_eq!(r.message.as_deref(), Some(message));
        }
        Flow::Continue => panic!("expected 401 {message}, request continued"),
    }
    assert_eq!(ctx.auth_failure, Some(("mtls-auth", reason)));
    assert!(ctx.consumer.is_none());
    assert!(ctx.upstream_headers.is_empty());
    let verify = match reason {
        "no_certificate" => None,
        "no_consumer" => Some("SUCCESS".to_string()),
        r => Some(format!("FAILED:{r}")),
    };
    assert_eq!(ctx.client_verify.as_deref(), verify.as_deref());
}

#[track_caller]
fn assert_consumer(flow: &Flow, ctx: &RequestCtx, id: &str) {
    assert!(
        matches!(flow, Flow::Continue),
        "expected to continue, got {flow:?}"
    );
    assert_eq!(ctx.consumer.as_ref().map(|c| c.id.as_str()), Some(id));
    assert_eq!(header(ctx, "x-consumer-id").as_deref(), Some(id));
    assert!(ctx.auth_failure.is_none());
}

fn base(extra: Value) -> Value {
    let mut v = json!({"ca_certificates": ["clients"]});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

#[tokio::test]
async fn no_certificate_or_plain_http_is_401() {
    let w = World::new();
    let p = w.plugin(base(json!({})));
    let (flow, ctx) = run(&p, None).await;
    assert_401(
        &flow,
        &ctx,
        "No required TLS certificate was sent",
        "no_certificate",
    );

    let mut ctx = RequestCtx {
        tls: false,
        client_certificate: Some(w.alice().presented()),
        ..Default::default()
    };
    let flow = call(&p, &mut ctx).await;
    assert_401(
        &flow,
        &ctx,
        "No required TLS certificate was sent",
        "no_certificate",
    );

    let empty = Arc::new(ClientCertificate::default());
    let (flow, ctx) = run(&p, Some(empty)).await;
    assert_401(
        &flow,
        &ctx,
        "No required TLS certificate was sent",
        "no_certificate",
    );
}

#[tokio::test]
async fn untrusted_expired_and_server_only_certificates_are_401() {
    let w = World::new();
    let p = w.plugin(base(json!({})));
    let stranger = w.other.issue(&Leaf::new("alice", 0x200));
    let (flow, ctx) = run(&p, Some(stranger.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );

    let mut spec = Leaf::new("bob", 0x201);
    spec.not_before_days = -30;
    spec.not_after_days = -1;
    let expired = w.root.issue(&spec);
    let (flow, ctx) = run(&p, Some(expired.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "expired",
    );

    let mut spec = Leaf::new("bob", 0x202);
    spec.server_only = true;
    let server = w.root.issue(&spec);
    let (flow, ctx) = run(&p, Some(server.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );

    // Garbage where a certificate should be.
    let junk = Arc::new(ClientCertificate {
        chain_der: vec![b"not a certificate".to_vec()],
        ..Default::default()
    });
    let (flow, ctx) = run(&p, Some(junk)).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );

    // A trusted CA of another plugin instance means nothing here.
    let p_other = w.plugin(json!({"ca_certificates": ["ca-other"]}));
    let (flow, ctx) = run(&p_other, Some(w.bob().presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );
}

#[tokio::test]
async fn alice_maps_by_san_and_bob_by_cn() {
    let w = World::new();
    let p = w.plugin(base(json!({})));
    let (flow, ctx) = run(&p, Some(w.alice().presented())).await;
    assert_consumer(&flow, &ctx, "c-alice");
    assert_eq!(
        header(&ctx, "x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        header(&ctx, "x-consumer-custom-id").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        header(&ctx, "x-credential-identifier").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        ctx.credential_identifier.as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(header(&ctx, "x-anonymous-consumer"), None);
    assert!(!ctx.anonymous);

    let (flow, ctx) = run(&p, Some(w.bob().presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    assert_eq!(header(&ctx, "x-consumer-username").as_deref(), Some("bob"));
    assert_eq!(header(&ctx, "x-consumer-custom-id"), None);
    assert_eq!(
        header(&ctx, "x-credential-identifier").as_deref(),
        Some("bob")
    );

    let (flow, ctx) = run(&p, Some(w.carol().presented())).await;
    assert_401(&flow, &ctx, "Unauthorized", "no_consumer");
}

#[tokio::test]
async fn consumer_by_limits_matching() {
    let w = World::new();
    // Only usernames: alice's SAN is her custom_id and her CN is nobody's username.
    let p = w.plugin(base(json!({"consumer_by": ["username"]})));
    let (flow, ctx) = run(&p, Some(w.alice().presented())).await;
    assert_401(&flow, &ctx, "Unauthorized", "no_consumer");
    let (flow, ctx) = run(&p, Some(w.bob().presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");

    for off in [json!([]), Value::Null] {
        let p = w.plugin(base(json!({ "consumer_by": off })));
        let (flow, ctx) = run(&p, Some(w.bob().presented())).await;
        assert_401(&flow, &ctx, "Unauthorized", "no_consumer");
    }
}

#[tokio::test]
async fn credentials_for_the_issuing_ca_win_then_any_ca() {
    let mut w = World::new();
    w.credential("carol", None, "c-bob");
    w.credential("carol", Some("ca-root"), "c-alice");
    w.credential("erin", Some("ca-other"), "c-alice");
    w.credential("erin@example.com", None, "c-dave");
    let p = w.plugin(base(json!({})));

    let (flow, ctx) = run(&p, Some(w.carol().presented())).await;
    assert_consumer(&flow, &ctx, "c-alice");
    assert_eq!(
        header(&ctx, "x-credential-identifier").as_deref(),
        Some("carol")
    );

    // Mapped for another CA only: must not match; the any-CA mapping on the SAN does.
    let erin = w
        .root
        .issue(&Leaf::new("erin", 0x300).san("email:erin@example.com"));
    let (flow, ctx) = run(&p, Some(erin.presented())).await;
    assert_consumer(&flow, &ctx, "c-dave");

    let p_other = w.plugin(json!({"ca_certificates": ["ca-other"]}));
    let erin2 = w.other.issue(&Leaf::new("erin", 0x301));
    let (flow, ctx) = run(&p_other, Some(erin2.presented())).await;
    assert_consumer(&flow, &ctx, "c-alice");

    // Mappings come before consumer_by: bob's certificate mapped to dave.
    w.credential("bob", None, "c-dave");
    let p = w.plugin(base(json!({})));
    let (flow, ctx) = run(&p, Some(w.bob().presented())).await;
    assert_consumer(&flow, &ctx, "c-dave");

    // A mapping for the intermediate matches a certificate it issued under the root's plugin.
    w.credential("ivy", Some("issuing"), "c-alice");
    let p = w.plugin(base(json!({})));
    let ivy = w
        .inter
        .issue(&Leaf::new("ivy", 0x302))
        .with_chain(&[&w.inter.cert]);
    let (flow, ctx) = run(&p, Some(ivy.presented())).await;
    assert_consumer(&flow, &ctx, "c-alice");
}

#[tokio::test]
async fn san_directory_names_take_part_in_lookup() {
    let w = World::new();
    let dave = w.root.issue(&Leaf::new("someone", 0x310).san("dirCN:dave"));
    let p = w.plugin(base(json!({})));
    let (flow, ctx) = run(&p, Some(dave.presented())).await;
    assert_consumer(&flow, &ctx, "c-dave");
    let p = w.plugin(base(json!({"san_dirname_matcher": ["commonName"]})));
    let (flow, ctx) = run(&p, Some(dave.presented())).await;
    assert_consumer(&flow, &ctx, "c-dave");
    let p = w.plugin(base(json!({"san_dirname_matcher": ["O"]})));
    let (flow, ctx) = run(&p, Some(dave.presented())).await;
    assert_401(&flow, &ctx, "Unauthorized", "no_consumer");
}

#[tokio::test]
async fn default_consumer_when_nothing_matches() {
    let w = World::new();
    let p = w.plugin(base(json!({"default_consumer": "fallback"})));
    let (flow, ctx) = run(&p, Some(w.carol().presented())).await;
    assert_consumer(&flow, &ctx, "c-default");
    assert_eq!(
        header(&ctx, "x-consumer-username").as_deref(),
        Some("fallback")
    );
    assert_eq!(
        header(&ctx, "x-credential-identifier").as_deref(),
        Some("carol")
    );
    // A matching consumer still wins, and verification still applies.
    let (flow, ctx) = run(&p, Some(w.bob().presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    assert_eq!(ctx.client_verify.as_deref(), Some("SUCCESS"));
    let stranger = w.other.issue(&Leaf::new("carol", 0x320));
    let (flow, ctx) = run(&p, Some(stranger.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );
}

#[tokio::test]
async fn anonymous_replaces_each_401() {
    let w = World::new();
    let p = w.plugin(base(json!({"anonymous": "c-anon"})));
    let stranger = w.other.issue(&Leaf::new("bob", 0x330));
    for cert in [
        None,
        Some(stranger.presented()),
        Some(w.carol().presented()),
    ] {
        let (flow, ctx) = run(&p, cert).await;
        assert_consumer(&flow, &ctx, "c-anon");
        assert!(ctx.anonymous);
        assert_eq!(
            header(&ctx, "x-anonymous-consumer").as_deref(),
            Some("true")
        );
        assert_eq!(
            header(&ctx, "x-consumer-username").as_deref(),
            Some("anonymous")
        );
        assert_eq!(
            header(&ctx, "x-consumer-custom-id").as_deref(),
            Some("anon-1")
        );
        assert_eq!(header(&ctx, "x-credential-identifier"), None);
        assert!(ctx.credential_identifier.is_none());
    }
    // A good certificate is still authenticated normally.
    let (flow, ctx) = run(&p, Some(w.alice().presented())).await;
    assert_consumer(&flow, &ctx, "c-alice");
    assert!(!ctx.anonymous);
    assert_eq!(header(&ctx, "x-anonymous-consumer"), None);

    // Referenced by username works too.
    let p = w.plugin(base(json!({"anonymous": "anonymous"})));
    let (flow, ctx) = run(&p, None).await;
    assert_consumer(&flow, &ctx, "c-anon");

    // Already authenticated by a higher-priority plugin: left alone (Kong's logical OR).
    let p = w.plugin(base(json!({"anonymous": "c-anon"})));
    let mut ctx = RequestCtx {
        tls: true,
        consumer: Some(w.consumers[1].clone()),
        credential_identifier: Some("key-1".into()),
        ..Default::default()
    };
    assert!(matches!(call(&p, &mut ctx).await, Flow::Continue));
    assert_eq!(ctx.consumer.as_ref().map(|c| c.id.as_str()), Some("c-bob"));
    assert!(ctx.upstream_headers.is_empty());
}

#[tokio::test]
async fn skip_consumer_lookup_hands_cn_or_dn_groups() {
    let w = World::new();
    let p = w.plugin(base(json!({"skip_consumer_lookup": true})));
    let alice = w.alice();
    let (flow, ctx) = run(&p, Some(alice.presented())).await;
    assert!(matches!(flow, Flow::Continue));
    assert!(ctx.consumer.is_none());
    assert_eq!(
        ctx.authenticated_groups,
        Some(vec!["Alice Smith".to_string()])
    );
    assert_eq!(
        header(&ctx, "x-client-cert-dn").as_deref(),
        Some("CN=Alice Smith,O=Clients")
    );
    assert_eq!(
        header(&ctx, "x-client-cert-san").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(header(&ctx, "x-consumer-id"), None);

    let p = w.plugin(base(
        json!({"skip_consumer_lookup": true, "authenticated_group_by": "DN"}),
    ));
    let (flow, ctx) = run(&p, Some(w.carol().presented())).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(
        ctx.authenticated_groups,
        Some(vec!["CN=carol,O=Clients".to_string()])
    );
    assert_eq!(header(&ctx, "x-client-cert-san"), None);

    // Verification still applies.
    let stranger = w.other.issue(&Leaf::new("carol", 0x340));
    let (flow, ctx) = run(&p, Some(stranger.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );
    assert!(ctx.authenticated_groups.is_none());
}

#[tokio::test]
async fn partial_chain_needs_allow_partial_chain() {
    let w = World::new();
    let bob = w.inter.issue(&Leaf::new("bob", 0x350));
    let bob_with_chain = w
        .inter
        .issue(&Leaf::new("bob", 0x351))
        .with_chain(&[&w.inter.cert]);

    // Root trusted, intermediate sent by the client: full chain.
    let p = w.plugin(base(json!({})));
    let (flow, ctx) = run(&p, Some(bob_with_chain.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    // Root trusted, intermediate missing: no path.
    let (flow, ctx) = run(&p, Some(bob.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );

    // Only the intermediate trusted.
    let strict = w.plugin(json!({"ca_certificates": ["issuing"]}));
    let (flow, ctx) = run(&strict, Some(bob.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );
    let partial = w.plugin(json!({"ca_certificates": ["issuing"], "allow_partial_chain": true}));
    let (flow, ctx) = run(&partial, Some(bob.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    let (flow, ctx) = run(&partial, Some(bob_with_chain.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    // Partial chain does not mean trusting the unrelated root's clients.
    let stranger = w.other.issue(&Leaf::new("bob", 0x352));
    let (flow, ctx) = run(&partial, Some(stranger.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "verification_failed",
    );
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}

#[tokio::test]
async fn crl_file_under_each_mode() {
    let w = World::new();
    let crl = w.root.crl(&[0x666]);
    write(w.dir.path(), "clients.crl.pem", &crl.to_pem().unwrap());
    write(w.dir.path(), "clients.crl", &crl.to_der().unwrap());
    let revoked = w.root.issue(&Leaf::new("bob", 0x666));

    for file in ["clients.crl.pem", "clients.crl"] {
        let p = w.plugin(base(json!({"crl_file": file})));
        let (flow, ctx) = run(&p, Some(revoked.presented())).await;
        assert_401(
            &flow,
            &ctx,
            "TLS certificate failed verification",
            "revoked",
        );
        let p = w.plugin(base(
            json!({"crl_file": file, "revocation_check_mode": "STRICT"}),
        ));
        let (flow, ctx) = run(&p, Some(revoked.presented())).await;
        assert_401(
            &flow,
            &ctx,
            "TLS certificate failed verification",
            "revoked",
        );
        // The CRL covers the issuer, so STRICT has its answer for everyone else.
        let (flow, ctx) = run(&p, Some(w.alice().presented())).await;
        assert_consumer(&flow, &ctx, "c-alice");
        let p = w.plugin(base(
            json!({"crl_file": file, "revocation_check_mode": "SKIP"}),
        ));
        let (flow, ctx) = run(&p, Some(revoked.presented())).await;
        assert_consumer(&flow, &ctx, "c-bob");
    }

    // No revocation source at all: IGNORE_CA_ERROR lets through, STRICT refuses.
    let p = w.plugin(base(json!({})));
    let (flow, ctx) = run(&p, Some(revoked.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    let p = w.plugin(base(json!({"revocation_check_mode": "STRICT"})));
    let (flow, ctx) = run(&p, Some(revoked.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revocation_unknown",
    );

    // A CRL signed by another CA under the same name is ignored, not trusted.
    let impostor = Ca::root("Client Root CA");
    write(
        w.dir.path(),
        "forged.crl",
        &impostor.crl(&[0x101]).to_pem().unwrap(),
    );
    let p = w.plugin(base(json!({"crl_file": "forged.crl"})));
    let (flow, ctx) = run(&p, Some(w.bob().presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
}

/// Serves `body` to every GET, counting requests.
struct CrlServer {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CrlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn crl_server(body: Vec<u8>) -> CrlServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/clients.crl", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    CrlServer { url, hits, task }
}

fn closed_port_url(path: &str) -> String {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_distribution_point_over_http() {
    let w = World::new();
    let server = crl_server(w.root.crl(&[0x777]).to_der().unwrap()).await;
    let issue = |cn: &str, serial: u32, url: &str| {
        let mut spec = Leaf::new(cn, serial);
        spec.crl_url = Some(url.to_string());
        w.root.issue(&spec)
    };
    let revoked = issue("bob", 0x777, &server.url);
    let good = issue("bob", 0x778, &server.url);

    let p = w.plugin(base(json!({"revocation_check_mode": "STRICT"})));
    let (flow, ctx) = run(&p, Some(revoked.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revoked",
    );
    let (flow, ctx) = run(&p, Some(good.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "CRL cached by URL");

    let p = w.plugin(base(json!({})));
    let (flow, ctx) = run(&p, Some(revoked.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revoked",
    );

    // Distribution point down: IGNORE_CA_ERROR passes, STRICT refuses.
    let down = issue("bob", 0x779, &closed_port_url("/clients.crl"));
    let (flow, ctx) = run(&p, Some(down.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    let strict = w.plugin(base(json!({"revocation_check_mode": "STRICT"})));
    let (flow, ctx) = run(&strict, Some(down.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revocation_unknown",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_distribution_point_is_bounded_by_http_timeout() {
    let w = World::new();
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow.crl", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut spec = Leaf::new("bob", 0x780);
    spec.crl_url = Some(url);
    let bob = w.root.issue(&spec);
    let p = w.plugin(base(
        json!({"revocation_check_mode": "STRICT", "http_timeout": 200}),
    ));
    let started = Instant::now();
    let (flow, ctx) = run(&p, Some(bob.presented())).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revocation_unknown",
    );
    let p = w.plugin(base(json!({"http_timeout": 200})));
    let (flow, ctx) = run(&p, Some(bob.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    hold.abort();
}

/// A real `openssl ocsp` responder for `ca`, killed on drop.
struct Ocsp {
    url: String,
    child: Child,
}

impl Drop for Ocsp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `entries`: (serial, revoked) pairs; serials not listed are unknown to the responder.
fn ocsp_responder(ca: &Ca, dir: &Path, entries: &[(u32, bool)]) -> Ocsp {
    ocsp_responder_signed_by(ca, (&ca.cert, &ca.key), dir, entries)
}

/// A responder for `ca` whose answers `signer` signs (`openssl ocsp -rsigner`): the CA itself or
/// a delegated responder certificate it issued.
fn ocsp_responder_signed_by(
    ca: &Ca,
    signer: (&X509, &openssl::pkey::PKey<openssl::pkey::Private>),
    dir: &Path,
    entries: &[(u32, bool)],
) -> Ocsp {
    write(dir, "ocsp-ca.pem", &ca.cert.to_pem().unwrap());
    write(dir, "ocsp-signer.pem", &signer.0.to_pem().unwrap());
    write(
        dir,
        "ocsp-signer.key",
        &signer.1.private_key_to_pem_pkcs8().unwrap(),
    );
    let index: String = entries
        .iter()
        .map(|(serial, revoked)| {
            let (flag, when) = if *revoked {
                ("R", "240101000000Z")
            } else {
                ("V", "")
            };
            format!("{flag}\t491231235959Z\t{when}\t{serial:X}\tunknown\t/O=Clients/CN=x\n")
        })
        .collect();
    write(dir, "index.txt", index.as_bytes());
    // openssl ocsp takes a fixed port: borrow a free one from the kernel.
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let log = std::fs::File::create(dir.join("ocsp.log")).unwrap();
    let child = Command::new("openssl")
        .args(["ocsp", "-index", "index.txt", "-port"])
        .arg(port.to_string())
        .args([
            "-rsigner",
            "ocsp-signer.pem",
            "-rkey",
            "ocsp-signer.key",
            "-CA",
            "ocsp-ca.pem",
            "-ndays",
            "1",
            "-ignore_err",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("openssl binary");
    // Not a probe connection: the responder serves one connection at a time and an empty one
    // wedges it. It announces itself once listening.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.join("ocsp.log"))
        .unwrap_or_default()
        .contains("waiting for OCSP client connections")
    {
        assert!(Instant::now() < deadline, "OCSP responder did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ocsp {
        url: format!("http://127.0.0.1:{port}/"),
        child,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_responder_answers_good_revoked_unknown() {
    let w = World::new();
    let ocsp = ocsp_responder(&w.root, w.dir.path(), &[(0x900, false), (0x901, true)]);
    let issue = |serial: u32| {
        let mut spec = Leaf::new("bob", serial);
        spec.ocsp_url = Some(ocsp.url.clone());
        w.root.issue(&spec)
    };
    let (good, revoked, unknown) = (issue(0x900), issue(0x901), issue(0x902));

    let strict = w.plugin(base(json!({"revocation_check_mode": "STRICT"})));
    let (flow, ctx) = run(&strict, Some(good.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
    let (flow, ctx) = run(&strict, Some(revoked.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revoked",
    );
    let (flow, ctx) = run(&strict, Some(unknown.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revocation_unknown",
    );

    let lenient = w.plugin(base(json!({})));
    let (flow, ctx) = run(&lenient, Some(revoked.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revoked",
    );
    let (flow, ctx) = run(&lenient, Some(unknown.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");

    // With the responder gone, a new instance cannot learn the status; the old one decided
    // already and keeps its cached decision.
    drop(ocsp);
    let again = w.plugin(base(json!({"revocation_check_mode": "STRICT"})));
    let (flow, ctx) = run(&again, Some(good.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revocation_unknown",
    );
    let (flow, ctx) = run(&strict, Some(good.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_answers_of_a_delegated_responder_and_of_the_ca_both_count() {
    let w = World::new();
    let mut responder = Leaf::new("OCSP responder", 0x920);
    responder.ocsp_signing = true;
    let responder = w.root.issue(&responder);
    let signers = [
        ("delegated", (&responder.cert, &responder.key)),
        ("CA", (&w.root.cert, &w.root.key)),
    ];
    for (n, (who, signer)) in signers.into_iter().enumerate() {
        let (good_serial, revoked_serial) = (0x930 + 2 * n as u32, 0x931 + 2 * n as u32);
        let ocsp = ocsp_responder_signed_by(
            &w.root,
            signer,
            w.dir.path(),
            &[(good_serial, false), (revoked_serial, true)],
        );
        let issue = |serial: u32| {
            let mut spec = Leaf::new("bob", serial);
            spec.ocsp_url = Some(ocsp.url.clone());
            w.root.issue(&spec)
        };
        let (good, revoked) = (issue(good_serial), issue(revoked_serial));
        for mode in ["STRICT", "IGNORE_CA_ERROR"] {
            let p = w.plugin(base(json!({ "revocation_check_mode": mode })));
            let (flow, ctx) = run(&p, Some(good.presented())).await;
            assert_consumer(&flow, &ctx, "c-bob");
            let (flow, ctx) = run(&p, Some(revoked.presented())).await;
            assert!(
                matches!(flow, Flow::Respond(_)),
                "{who}-signed OCSP, {mode}: a revoked certificate was let in"
            );
            assert_401(
                &flow,
                &ctx,
                "TLS certificate failed verification",
                "revoked",
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_response_from_another_ca_is_rejected() {
    let w = World::new();
    // The responder signs with the unrelated CA's key.
    let ocsp = ocsp_responder(&w.other, w.dir.path(), &[(0x910, false)]);
    let mut spec = Leaf::new("bob", 0x910);
    spec.ocsp_url = Some(ocsp.url.clone());
    let bob = w.root.issue(&spec);
    let strict = w.plugin(base(json!({"revocation_check_mode": "STRICT"})));
    let (flow, ctx) = run(&strict, Some(bob.presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revocation_unknown",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_distribution_point_backs_up_an_unreachable_ocsp() {
    let w = World::new();
    let server = crl_server(w.root.crl(&[0x920]).to_pem().unwrap()).await;
    let issue = |serial: u32| {
        let mut spec = Leaf::new("bob", serial);
        spec.ocsp_url = Some(closed_port_url("/"));
        spec.crl_url = Some(server.url.clone());
        w.root.issue(&spec)
    };
    let strict = w.plugin(base(json!({"revocation_check_mode": "STRICT"})));
    let (flow, ctx) = run(&strict, Some(issue(0x920).presented())).await;
    assert_401(
        &flow,
        &ctx,
        "TLS certificate failed verification",
        "revoked",
    );
    let (flow, ctx) = run(&strict, Some(issue(0x921).presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_cached_per_chain() {
    let w = World::new();
    let server = crl_server(w.root.crl(&[0x1]).to_der().unwrap()).await;
    let mut spec = Leaf::new("bob", 0x930);
    spec.crl_url = Some(server.url.clone());
    let bob = w.root.issue(&spec);
    let p = w.plugin(base(
        json!({"revocation_check_mode": "STRICT", "cert_cache_ttl": 0}),
    ));
    for _ in 0..5 {
        let (flow, ctx) = run(&p, Some(bob.presented())).await;
        assert_consumer(&flow, &ctx, "c-bob");
    }
    // Revocation answers are not cached (cert_cache_ttl 0), so one fetch means one evaluation.
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert_eq!(p.decisions.len(), 1);

    let p = w.plugin(base(
        json!({"revocation_check_mode": "STRICT", "cert_cache_ttl": 0, "cache_ttl": 0}),
    ));
    for _ in 0..3 {
        let (flow, ctx) = run(&p, Some(bob.presented())).await;
        assert_consumer(&flow, &ctx, "c-bob");
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 4);
    assert_eq!(p.decisions.len(), 0);
}

#[test]
fn bad_config_is_reported_with_paths() {
    let w = World::new();
    let errs = w.errors(json!({
        "ca_certificates": ["clients", "nope", "ca-other"],
        "anonymous": "ghost",
        "default_consumer": "nobody",
        "crl_file": "missing.crl",
        "san_dirname_matcher": ["CN", "not an oid"],
        "http_proxy_host": "proxy.internal"
    }));
    let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "http_proxy_host",
            "ca_certificates[1]",
            "anonymous",
            "default_consumer",
            "crl_file",
            "san_dirname_matcher[1]"
        ]
    );
    assert!(errs[1].1.contains("nope"), "{}", errs[1].1);

    write(w.dir.path(), "junk.crl", b"junk");
    let errs = w.errors(base(json!({"crl_file": "junk.crl"})));
    assert_eq!(errs[0].0, "crl_file");

    let errs = w.errors(base(json!({"cache_tll": 5})));
    assert_eq!(errs[0].0, "cache_tll");
    assert!(errs[0].1.contains("cache_tll"));
    let errs = w.errors(base(json!({"authenticated_group_by": "OU"})));
    assert_eq!(errs[0].0, "authenticated_group_by");
    let errs = w.errors(base(json!({"revocation_check_mode": "LAX"})));
    assert_eq!(errs[0].0, "revocation_check_mode");
    let errs = w.errors(json!({"ca_certificates": []}));
    assert_eq!(errs[0].0, "ca_certificates");
    let errs = w.errors(json!({"ca_certificates": "clients"}));
    assert_eq!(errs[0].0, "ca_certificates");
    let errs = w.errors(Value::Null);
    assert!(errs[0].1.contains("ca_certificates"));
}

#[test]
fn kong_export_loads_unchanged() {
    let w = World::new();
    // What `deck` writes for a default Kong mtls-auth instance.
    let p = w.plugin(json!({
        "allow_partial_chain": false, "anonymous": null, "authenticated_group_by": "CN",
        "ca_certificates": ["ca-root"], "cache_ttl": 60, "cert_cache_ttl": 60000,
        "consumer_by": ["username", "custom_id"], "default_consumer": null,
        "http_proxy_host": null, "http_proxy_port": null, "http_timeout": 30000,
        "https_proxy_host": null, "https_proxy_port": null,
        "revocation_check_mode": "IGNORE_CA_ERROR", "san_dirname_matcher": [],
        "send_ca_dn": false, "skip_consumer_lookup": false, "ssl_verify": true
    }));
    assert_eq!(
        p.consumer_by,
        [ConsumerField::Username, ConsumerField::CustomId]
    );
}

#[test]
fn factory_and_client_cert_request() {
    let w = World::new();
    assert_eq!(Factory.name(), "mtls-auth");
    let p = Factory.build(&base(json!({})), &w.ctx()).unwrap();
    assert_eq!((p.name(), p.priority()), ("mtls-auth", 1600));
    let req = p.client_cert_request().expect("asks for a certificate");
    assert!(req.ca_names_der.is_empty());

    let p = Factory
        .build(
            &json!({"ca_certificates": ["clients", "issuing"], "send_ca_dn": true}),
            &w.ctx(),
        )
        .unwrap();
    let names = p.client_cert_request().unwrap().ca_names_der;
    assert_eq!(
        names,
        [
            w.root.cert.subject_name().to_der().unwrap(),
            w.inter.cert.subject_name().to_der().unwrap()
        ]
    );
}

#[tokio::test]
async fn consumer_by_never_maps_a_name_its_credential_pins_to_another_ca() {
    let mut w = World::new();
    // bob may log in with certificates of the unrelated CA only.
    w.credential("bob", Some("ca-other"), "c-bob");
    let p = w.plugin(json!({"ca_certificates": ["clients", "unrelated"]}));

    // CN bob from the root: the username `bob` must not stand in for the pinned credential.
    let (flow, ctx) = run(&p, Some(w.bob().presented())).await;
    assert_401(&flow, &ctx, "Unauthorized", "no_consumer");

    let bob_other = w.other.issue(&Leaf::new("bob", 0x3a0));
    let (flow, ctx) = run(&p, Some(bob_other.presented())).await;
    assert_consumer(&flow, &ctx, "c-bob");

    // Without a pinning credential, consumer_by still matches the username.
    let open = w.plugin(base(json!({})));
    let dave = w.root.issue(&Leaf::new("dave", 0x3a1));
    let (flow, ctx) = run(&open, Some(dave.presented())).await;
    assert_consumer(&flow, &ctx, "c-dave");
}

#[tokio::test]
async fn a_common_name_with_a_comma_stays_one_group() {
    let w = World::new();
    let p = w.plugin(base(json!({"skip_consumer_lookup": true})));
    let cert = w.root.issue(&Leaf::new("admins, ops", 0x3b0));
    let (flow, ctx) = run(&p, Some(cert.presented())).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(
        ctx.authenticated_groups,
        Some(vec!["admins, ops".to_string()])
    );
    // Written as a header list, the name reads back as one item, not `admins` and `ops`.
    let groups = ctx.authenticated_groups.unwrap_or_default();
    assert_eq!(
        portcullis_plugin_api::header_list(&groups),
        r#""admins, ops""#
    );
}
