//! Kong's `acme` plugin: certificates from an ACME CA (RFC 8555), obtained on the first
//! handshake for an allowed name (and ahead of time for configured `domains`), renewed in the
//! background, shared by replicas through the configured storage.
//!
//! The plugin is rebuilt on every reload, so what must outlive a configuration — issued
//! certificates, challenges being answered, running orders, the renewal timer — lives in one
//! process-wide [`Global`]. Storage (shm, redis, file) holds the account, the certificates, the
//! per-domain order lock and back-off, and the challenge answers, so any replica can answer a
//! validation for an order another replica placed.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod config;
mod file_store;

use config::{CertType, Challenge, Settings, Storage};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use openssl::asn1::{Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509Extension, X509NameBuilder, X509ReqBuilder, X509};
use portcullis_plugin_api::state::Store;
use portcullis_plugin_api::tls::{CertificateProvider, ProvidedCertificate};
use portcullis_plugin_api::{
    async_trait, BuildContext, ConfigError, Flow, Phases, Plugin, PluginFactory, PluginResponse,
    RequestCtx, RequestView,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one replica holds a domain's order lock (an order takes seconds; a crashed holder
/// must not block the domain for long).
const LOCK_TTL: Duration = Duration::from_secs(120);
/// The longest an order may take before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(100);
/// Challenge answers are kept this long in storage.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// After looking in storage for a name without a certificate, handshakes for that name do not
/// look again for this long (Kong's negative cache TTL).
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Checks remembered before finished ones are dropped.
const MAX_CHECKS: usize = 10_000;
/// How often certificates are checked for renewal (also right after every reload).
const RENEW_INTERVAL: Duration = Duration::from_secs(3600);

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "acme"
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let settings = config::parse(config, ctx)?;
        let store: Arc<dyn Store> = match &settings.storage {
            Storage::Shm => portcullis_plugin_api::state::local(),
            Storage::Redis(r) => portcullis_plugin_api::state::redis(r),
            Storage::File(dir) => Arc::new(file_store::FileStore::new(dir.clone())),
        };
        let http = client::OpensslHttp::new(&settings.api_ca_pem)
            .map_err(|e| vec![ConfigError::new("api_ca_certificates", e)])?;
        if settings.preferred_chain.is_some() {
            ctx.warn(
                "preferred_chain",
                "preferred_chain is not honoured: the CA's default chain is served",
            );
        }
        // Adopted when the gateway applies this configuration (`certificates`), not here:
        // `portcullis check` and refused reloads build instances too.
        let inner = Arc::new(Inner {
            settings,
            store,
            http,
        });
        Ok(Arc::new(Acme { inner }))
    }
}

struct Acme {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    store: Arc<dyn Store>,
    http: client::OpensslHttp,
}

/// A certificate the plugin serves.
struct Issued {
    cert: Arc<ProvidedCertificate>,
    not_after: i64,
    subject: String,
}

#[derive(Clone, Copy)]
enum Check {
    Running,
    Done(Instant),
}

/// What outlives a configuration (see the module documentation).
struct Global {
    certs: RwLock<HashMap<String, Arc<Issued>>>,
    checks: Mutex<HashMap<String, Check>>,
    /// token → key authorization, for orders this process placed.
    http01: Mutex<HashMap<String, String>>,
    /// domain → (key authorization, challenge certificate).
    tls_alpn: Mutex<HashMap<String, (String, Arc<ProvidedCertificate>)>>,
    /// Applied configurations, newest last; the newest still alive is the live one (a reload
    /// refused after `certificates` was asked leaves the previous one in charge).
    current: Mutex<Vec<Weak<Inner>>>,
    identity: Mutex<String>,
    wake: tokio::sync::Notify,
}

fn global() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| Global {
        certs: RwLock::new(HashMap::new()),
        checks: Mutex::new(HashMap::new()),
        http01: Mutex::new(HashMap::new()),
        tls_alpn: Mutex::new(HashMap::new()),
        current: Mutex::new(Vec::new()),
        identity: Mutex::new(String::new()),
        wake: tokio::sync::Notify::new(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Global {
    /// Makes `inner` the live configuration. Certificates of another CA, account or storage are
    /// forgotten (they are in that storage, not this one).
    fn adopt(&self, inner: &Arc<Inner>) {
        let identity = inner.settings.identity();
        {
            let mut current = lock(&self.identity);
            if *current != identity {
                if let Ok(mut certs) = self.certs.write() {
                    for (host, issued) in certs.drain() {
                        forget_metric(&host, &issued);
                    }
                }
                lock(&self.checks).clear();
                *current = identity;
            }
        }
        {
            let mut current = lock(&self.current);
            current.retain(|w| w.strong_count() > 0);
            current.push(Arc::downgrade(inner));
        }
        static RENEWAL: std::sync::Once = std::sync::Once::new();
        RENEWAL.call_once(|| {
            portcullis_plugin_api::background::spawn(renew_loop());
        });
        // Configured domains are ordered ahead of time and due certificates renewed now.
        self.wake.notify_one();
    }

    fn live(&self) -> Option<Arc<Inner>> {
        lock(&self.current).iter().rev().find_map(Weak::upgrade)
    }

    fn cert(&self, host: &str) -> Option<Arc<Issued>> {
        self.certs.read().ok()?.get(host).cloned()
    }

    fn install(&self, host: &str, issued: Arc<Issued>) {
        portcullis_plugin_api::tls::certificate_expiry()
            .with_label_values(&["acme", host, &issued.subject])
            .set(issued.not_after);
        if let Ok(mut certs) = self.certs.write() {
            if let Some(old) = certs.insert(host.to_string(), issued.clone()) {
                if old.subject != issued.subject {
                    forget_metric(host, &old);
                }
            }
        }
    }

    /// Starts a check of `host` unless one is running, or (unless `force`) one ended less than
    /// [`NEGATIVE_TTL`] ago.
    fn begin_check(&self, host: &str, force: bool) -> bool {
        let mut checks = lock(&self.checks);
        // Names clients made up (`allow_any_domain`, wildcard `domains`) must not grow this map
        // without bound: finished checks past the negative cache carry no information.
        if checks.len() >= MAX_CHECKS {
            checks.retain(|_, c| match c {
                Check::Running => true,
                Check::Done(at) => at.elapsed() < NEGATIVE_TTL,
            });
        }
        match checks.get(host) {
            Some(Check::Running) => false,
            Some(Check::Done(at)) if !force && at.elapsed() < NEGATIVE_TTL => false,
            _ => {
                checks.insert(host.to_string(), Check::Running);
                true
            }
        }
    }

    fn end_check(&self, host: &str) {
        lock(&self.checks).insert(host.to_string(), Check::Done(Instant::now()));
    }
}

fn forget_metric(host: &str, issued: &Issued) {
    let _ = portcullis_plugin_api::tls::certificate_expiry().remove_label_values(&[
        "acme",
        host,
        &issued.subject,
    ]);
}

fn orders_total() -> &'static prometheus::IntCounterVec {
    static C: OnceLock<prometheus::IntCounterVec> = OnceLock::new();
    C.get_or_init(|| {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "portcullis_acme_orders_total",
                "ACME orders this process placed, by result (success, failure)",
            ),
            &["result"],
        )
        .unwrap_or_else(|_| invalid_metric());
        let _ = prometheus::default_registry().register(Box::new(c.clone()));
        for r in ["success", "failure"] {
            c.with_label_values(&[r]);
        }
        c
    })
}

#[allow(clippy::panic)]
fn invalid_metric() -> prometheus::IntCounterVec {
    // Constant name and labels: `new` fails only for an invalid definition.
    panic!("invalid metric definition")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Background task: renews due certificates and orders configured domains, every
/// [`RENEW_INTERVAL`] and after every reload.
async fn renew_loop() {
    let g = global();
    loop {
        let live = g.live();
        if let Some(inner) = live {
            let mut hosts: BTreeSet<String> = inner.settings.domains.iter().cloned().collect();
            if let Ok(certs) = g.certs.read() {
                hosts.extend(certs.keys().filter(|h| inner.settings.allowed(h)).cloned());
            }
            for host in hosts {
                if g.cert(&host).is_some_and(|i| !inner.due(&i)) {
                    continue;
                }
                if g.begin_check(&host, true) {
                    inner.ensure(&host).await;
                    g.end_check(&host);
                }
            }
        }
        let _ = tokio::time::timeout(RENEW_INTERVAL, g.wake.notified()).await;
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCert {
    /// PEM chain, leaf first.
    cert: String,
    /// PEM private key.
    key: String,
}

fn parse_issued(stored: &StoredCert) -> Result<Issued, String> {
    let chain = X509::stack_from_pem(stored.cert.as_bytes()).map_err(|e| e.to_string())?;
    let key = PKey::private_key_from_pem(stored.key.as_bytes()).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("empty certificate chain")?;
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let diff = epoch.diff(leaf.not_after()).map_err(|e| e.to_string())?;
    let not_after = diff.days as i64 * 86400 + diff.secs as i64;
    let subject = leaf
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .map(|cn| format!("CN={cn}"))
        .unwrap_or_default();
    Ok(Issued {
        cert: Arc::new(ProvidedCertificate { chain, key }),
        not_after,
        subject,
    })
}

impl Inner {
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}portcullis_acme:{kind}:{name}", self.settings.namespace)
    }

    fn due(&self, issued: &Issued) -> bool {
        issued.not_after - (self.settings.renew_threshold.as_secs() as i64) <= unix_now()
    }

    /// Gets `host` a certificate: from storage when there is a fresh one (another replica, or
    /// an earlier run, got it), else by ordering one.
    async fn ensure(&self, host: &str) {
        let g = global();
        match self.store.get(&self.key("cert", host)).await {
            Ok(Some(bytes)) => {
                match serde_json::from_slice::<StoredCert>(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|s| parse_issued(&s))
                {
                    Ok(issued) => {
                        let due = self.due(&issued);
                        // Served while its renewal runs.
                        g.install(host, Arc::new(issued));
                        if !due {
                            return;
                        }
                        tracing::info!(domain = host, "acme: renewing certificate");
                    }
                    Err(e) => {
                        tracing::warn!(domain = host, error = %e, "acme: stored certificate unreadable, ordering a new one")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(domain = host, error = %e, "acme: cannot read storage");
                return;
            }
        }
        self.order(host).await;
    }

    /// One order for `host`, unless backed off after a failure or placed by another process.
    async fn order(&self, host: &str) {
        let backoff_key = self.key("fail_backoff", host);
        match self.store.get(&backoff_key).await {
            Ok(Some(until)) => {
                let until = String::from_utf8_lossy(&until).parse::<i64>().unwrap_or(0);
                tracing::info!(
                    domain = host,
                    retry_in_seconds = until - unix_now(),
                    "acme: not ordering because of a previous failure; this is configurable with config.fail_backoff_minutes"
                );
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(domain = host, error = %e, "acme: cannot read storage");
                return;
            }
        }
        let lock_key = self.key("update_lock", host);
        match self.store.set_nx(&lock_key, b"locked", LOCK_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(
                    domain = host,
                    "acme: an order for this domain is already running"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(domain = host, error = %e, "acme: cannot take the order lock");
                return;
            }
        }
        tracing::info!(domain = host, directory = %self.settings.directory_url, "acme: ordering a certificate");
        let result = match tokio::time::timeout(ORDER_TIMEOUT, self.place_order(host)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no certificate within {ORDER_TIMEOUT:?}")),
        };
        let result = match result {
            Ok(stored) => match serde_json::to_vec(&stored) {
                Ok(bytes) => match self.store.set(&self.key("cert", host), &bytes, None).await {
                    Ok(()) => parse_issued(&stored),
                    Err(e) => Err(format!("storing the certificate: {e}")),
                },
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(issued) => {
                orders_total().with_label_values(&["success"]).inc();
                tracing::info!(
                    domain = host,
                    not_after = issued.not_after,
                    "acme: certificate issued"
                );
                global().install(host, Arc::new(issued));
            }
            Err(e) => {
                orders_total().with_label_values(&["failure"]).inc();
                let wait = self.settings.fail_backoff;
                tracing::error!(
                    domain = host,
                    error = %e,
                    backoff_seconds = wait.as_secs(),
                    "acme: order failed; next attempt after the back-off (config.fail_backoff_minutes)"
                );
                if !wait.is_zero() {
                    let until = (unix_now() + wait.as_secs() as i64).to_string();
                    if let Err(e) = self
                        .store
                        .set(&backoff_key, until.as_bytes(), Some(wait))
                        .await
                    {
                        tracing::warn!(domain = host, error = %e, "acme: cannot store the back-off");
                    }
                }
            }
        }
        if let Err(e) = self.store.delete(&lock_key).await {
            tracing::warn!(domain = host, error = %e, "acme: cannot release the order lock");
        }
    }

    async fn account(&self) -> Result<Account, String> {
        use base64::Engine;
        let s = &self.settings;
        let name = format!(
            "{}:{}",
            s.api_uri,
            base64::engine::general_purpose::STANDARD.encode(&s.account_email)
        );
        let key = self.key("account", &name);
        let lock_key = self.key("account_lock", &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(bytes) = self.store.get(&key).await.map_err(|e| e.to_string())? {
                let creds: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|e| format!("stored account: {e}"))?;
                return Account::builder_with_http(Box::new(self.http.clone()))
                    .from_credentials(creds)
                    .await
                    .map_err(|e| e.to_string());
            }
            // One replica registers the account; the others wait for it in storage.
            if self
                .store
                .set_nx(&lock_key, b"locked", Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?
            {
                break;
            }
            if Instant::now() > deadline {
                return Err("another process is registering the ACME account".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let contact = format!("mailto:{}", s.account_email);
        let eab = s
            .eab
            .as_ref()
            .map(|(kid, k)| ExternalAccountKey::new(kid.clone(), k));
        let mut created = Err(String::new());
        for url in s.directory_candidates() {
            created = Account::builder_with_http(Box::new(self.http.clone()))
                .create(
                    &NewAccount {
                        contact: &[contact.as_str()],
                        terms_of_service_agreed: s.tos_accepted,
                        only_return_existing: false,
                    },
                    url.clone(),
                    eab.as_ref(),
                )
                .await
                .map_err(|e| format!("{url}: {e}"));
            match &created {
                Ok(_) => break,
                Err(e) => tracing::info!(error = %e, "acme: registering the account failed"),
            }
        }
        let result = match created {
            Ok((account, creds)) => match serde_json::to_vec(&creds) {
                Ok(bytes) => self
                    .store
                    .set(&key, &bytes, None)
                    .await
                    .map(|_| account)
                    .map_err(|e| format!("storing the account: {e}")),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(format!("registering the account: {e}")),
        };
        let _ = self.store.delete(&lock_key).await;
        result
    }

    async fn place_order(&self, host: &str) -> Result<StoredCert, String> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut published = Published::default();
        let ready = self
            .answer_challenges(&mut order, host, &mut published)
            .await;
        let status = match ready {
            Ok(()) => order
                .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(60)))
                .await
                .map_err(|e| format!("waiting for validation: {e}")),
            Err(e) => Err(e),
        };
        published.withdraw(self).await;
        let status = status?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default();
            return Err(format!("order is {status:?}{why}"));
        }
        let key = match self.settings.cert_type {
            CertType::Ecc => EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)
                .and_then(|g| EcKey::generate(&g))
                .and_then(PKey::from_ec_key),
            CertType::Rsa(bits) => openssl::rsa::Rsa::generate(bits).and_then(PKey::from_rsa),
        }
        .map_err(|e| e.to_string())?;
        let csr = csr_der(host, &key).map_err(|e| e.to_string())?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let cert = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
            .await
            .map_err(|e| format!("downloading the certificate: {e}"))?;
        let key_pem = key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?;
        Ok(StoredCert {
            cert,
            key: String::from_utf8_lossy(&key_pem).into_owned(),
        })
    }

    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        host: &str,
        published: &mut Published,
    ) -> Result<(), String> {
        let g = global();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let kind = match self.settings.challenge {
                Challenge::Http01 => ChallengeType::Http01,
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the ACME server offered no {kind:?} challenge"))?;
            let key_auth = challenge.key_authorization();
            match self.settings.challenge {
                Challenge::Http01 => {
                    let token = challenge.token.clone();
                    lock(&g.http01).insert(token.clone(), key_auth.as_str().to_string());
                    self.store
                        .set(
                            &self.key("http01", &token),
                            key_auth.as_str().as_bytes(),
                            Some(CHALLENGE_TTL),
                        )
                        .await
                        .map_err(|e| format!("storing the challenge: {e}"))?;
                    published.http01.push(token);
                }
                Challenge::TlsAlpn01 => {
                    let cert = tls_alpn_certificate(host, key_auth.digest().as_ref())
                        .map_err(|e| e.to_string())?;
                    lock(&g.tls_alpn).insert(
                        host.to_string(),
                        (key_auth.as_str().to_string(), Arc::new(cert)),
                    );
                    self.store
                        .set(
                            &self.key("tls_alpn01", host),
                            key_auth.as_str().as_bytes(),
                            Some(CHALLENGE_TTL),
                        )
                        .await
                        .map_err(|e| format!("storing the challenge: {e}"))?;
                    published.tls_alpn.push(host.to_string());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        Ok(())
    }

    /// The TLS-ALPN-01 certificate for `host`: this process's, else built from the key
    /// authorization another replica stored.
    async fn tls_alpn(&self, host: &str) -> Option<Arc<ProvidedCertificate>> {
        let g = global();
        if let Some((_, c)) = lock(&g.tls_alpn).get(host) {
            return Some(c.clone());
        }
        let ka = self.store.get(&self.key("tls_alpn01", host)).await.ok()??;
        let digest = openssl::sha::sha256(&ka);
        tls_alpn_certificate(host, &digest).ok().map(Arc::new)
    }
}

/// Challenge answers published for one order, withdrawn when it is over.
#[derive(Default)]
struct Published {
    http01: Vec<String>,
    tls_alpn: Vec<String>,
}

impl Published {
    async fn withdraw(self, inner: &Inner) {
        let g = global();
        for t in self.http01 {
            lock(&g.http01).remove(&t);
            let _ = inner.store.delete(&inner.key("http01", &t)).await;
        }
        for h in self.tls_alpn {
            lock(&g.tls_alpn).remove(&h);
            let _ = inner.store.delete(&inner.key("tls_alpn01", &h)).await;
        }
    }
}

fn csr_der(host: &str, key: &PKey<Private>) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, host)?;
    let name = name.build();
    let mut req = X509ReqBuilder::new()?;
    req.set_subject_name(&name)?;
    req.set_pubkey(key)?;
    let san = SubjectAlternativeName::new()
        .dns(host)
        .build(&req.x509v3_context(None))?;
    let mut exts = openssl::stack::Stack::new()?;
    exts.push(san)?;
    req.add_extensions(&exts)?;
    req.sign(key, MessageDigest::sha256())?;
    req.build().to_der()
}

/// RFC 8737 §3: a self-signed certificate for `host` carrying the critical `acmeIdentifier`
/// extension (the SHA-256 of the key authorization). P-256, like the gateway's own default
/// certificate, so TLS 1.2 signature choices made before ALPN still hold.
fn tls_alpn_certificate(
    host: &str,
    digest: &[u8],
) -> Result<ProvidedCertificate, openssl::error::ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, host)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(&*serial.to_asn1_integer()?)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(7)?)?;
    let san = SubjectAlternativeName::new()
        .dns(host)
        .build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    // extnValue is the DER of an OCTET STRING holding the 32-byte digest.
    let mut value = vec![0x04, digest.len() as u8];
    value.extend_from_slice(digest);
    let oid = Asn1Object::from_str("1.3.6.1.5.5.7.1.31")?;
    let contents = Asn1OctetString::new_from_bytes(&value)?;
    b.append_extension(X509Extension::new_from_der(&oid, true, &contents)?)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok(ProvidedCertificate {
        chain: vec![b.build()],
        key,
    })
}

struct Provider(Arc<Inner>);

#[async_trait]
impl CertificateProvider for Provider {
    fn certificate(&self, sni: &str) -> Option<Arc<ProvidedCertificate>> {
        if !self.0.settings.allowed(sni) {
            return None;
        }
        global().cert(sni).map(|i| i.cert.clone())
    }

    fn missing(&self, sni: &str) {
        if !self.0.settings.allowed(sni) || !global().begin_check(sni, false) {
            return;
        }
        let inner = self.0.clone();
        let host = sni.to_string();
        portcullis_plugin_api::background::spawn(async move {
            inner.ensure(&host).await;
            global().end_check(&host);
        });
    }

    fn answers_tls_alpn(&self, sni: &str) -> bool {
        self.0.settings.challenge == Challenge::TlsAlpn01 && self.0.settings.allowed(sni)
    }

    async fn tls_alpn_certificate(&self, sni: &str) -> Option<Arc<ProvidedCertificate>> {
        if !self.answers_tls_alpn(sni) {
            return None;
        }
        self.0.tls_alpn(sni).await
    }
}

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

#[async_trait]
impl Plugin for Acme {
    fn name(&self) -> &'static str {
        "acme"
    }

    fn priority(&self) -> i32 {
        // Kong 3.x: above the auth plugins, so they never block a validation.
        1705
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn certificates(&self) -> Option<Arc<dyn CertificateProvider>> {
        // Asked once, when the gateway applies this configuration.
        global().adopt(&self.inner);
        Some(Arc::new(Provider(self.inner.clone())))
    }

    async fn rewrite(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        // http-01 validations come over plain HTTP only (Kong checks the same).
        if ctx.tls {
            return Flow::Continue;
        }
        let Some(token) = req.uri.path().strip_prefix(CHALLENGE_PREFIX) else {
            return Flow::Continue;
        };
        let host = req
            .header("host")
            .or_else(|| req.uri.host())
            .unwrap_or_default();
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        if token.is_empty() || !self.inner.settings.allowed(&host) {
            return Flow::Continue;
        }
        let local = lock(&global().http01).get(token).cloned();
        let answer = match local {
            Some(a) => Some(a),
            None => self
                .inner
                .store
                .get(&self.inner.key("http01", token))
                .await
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
        };
        Flow::Respond(match answer {
            Some(a) => PluginResponse::raw(200, a).with_header("Content-Type", "text/plain"),
            None => {
                PluginResponse::raw(404, "Not found\n").with_header("Content-Type", "text/plain")
            }
        })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_certificate_carries_the_critical_acme_identifier() {
        let digest = openssl::sha::sha256(b"token.thumbprint");
        let c = tls_alpn_certificate("a.acme.test", &digest).unwrap();
        let text = String::from_utf8(c.chain[0].to_text().unwrap()).unwrap();
        assert!(text.contains("1.3.6.1.5.5.7.1.31: critical"), "{text}");
        assert!(text.contains("DNS:a.acme.test"), "{text}");
        let der = c.chain[0].to_der().unwrap();
        let mut expected = vec![0x04, 0x20];
        expected.extend_from_slice(&digest);
        assert!(der.windows(34).any(|w| w == expected.as_slice()));
    }

    #[test]
    fn csr_names_the_domain() {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let der = csr_der("a.acme.test", &key).unwrap();
        let req = openssl::x509::X509Req::from_der(&der).unwrap();
        assert!(req.verify(&key).unwrap());
        let text = String::from_utf8(req.to_text().unwrap()).unwrap();
        assert!(text.contains("DNS:a.acme.test"), "{text}");
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("a.test:8080"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]:80"), "[::1]:80");
    }
}
