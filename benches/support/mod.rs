//! Shared by the criterion benches (`router`, `sni`, `plugins`, `kong_plugins`): ECDSA P-256 certificates made
//! with the openssl crate, and conf dirs written to a temporary directory and loaded through
//! `portcullis::config::load` — the same path a running gateway takes.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};

use portcullis::config::Config;

pub fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
}

pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Issued {
    pub fn cert_pem(&self) -> String {
        String::from_utf8(self.cert.to_pem().expect("pem")).expect("utf8")
    }
    pub fn key_pem(&self) -> String {
        String::from_utf8(self.key.private_key_to_pem_pkcs8().expect("pem")).expect("utf8")
    }
}

/// A certificate for `cn` with DNS `sans`, self-signed when `issuer` is `None`; `ca` makes it a
/// CA, `client` gives it the clientAuth usage.
pub fn issue(cn: &str, sans: &[&str], issuer: Option<&Issued>, ca: bool, client: bool) -> Issued {
    let key = key();
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("CN");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    let mut serial = BigNum::new().expect("bn");
    serial.rand(64, MsbOption::MAYBE_ZERO, false).expect("rand");
    b.set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(issuer.map_or(&name, |i| i.cert.subject_name()))
        .expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::days_from_now(365).expect("time"))
        .expect("not after");
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
    }
    if client {
        b.append_extension(ExtendedKeyUsage::new().client_auth().build().expect("eku"))
            .expect("eku");
    }
    if !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            san.dns(s);
        }
        let ext = san
            .build(&b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None))
            .expect("san");
        b.append_extension(ext).expect("san");
    }
    let signer = issuer.map_or(&key, |i| &i.key);
    b.sign(signer, MessageDigest::sha256()).expect("sign");
    Issued {
        cert: b.build(),
        key,
    }
}

/// Writes `files` (path relative to the dir, content) and loads the dir as the gateway would.
pub fn load(files: &[(String, String)]) -> (tempfile::TempDir, Arc<Config>) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write");
    }
    let config = load_dir(dir.path());
    (dir, config)
}

pub fn load_dir(dir: &Path) -> Arc<Config> {
    match portcullis::config::load(dir, portcullis::plugin::registry()) {
        Ok((config, _warnings)) => config,
        Err(e) => panic!("bench configuration does not load:\n{e}"),
    }
}

/// Drives a plugin phase's future: ready at the first poll on the paths the benches measure (no
/// I/O), so the figures are the plugins' and not an executor's; otherwise the runtime finishes it.
pub fn drive<F: std::future::Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => rt.block_on(f),
    }
}
