//! A throwaway PKI generated at test time: roots, an intermediate, server and client leaves, a CRL.
//!
//! Everything is ECDSA P-256 (fast to generate) and written as PEM into a temp dir, so tests can hand
//! paths to the gateway (`cert_file:`) or paste the PEM inline (`cert:`). Serial numbers come from one
//! counter per `Pki`, so every certificate a test sees is distinguishable by serial.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{
    CrlNumber, X509Builder, X509Crl, X509CrlBuilder, X509Name, X509NameBuilder, X509NameRef,
    X509Ref, X509RevokedBuilder, X509,
};
use tempfile::TempDir;

/// Organisation put into every subject, so tests can tell our certificates from generated ones.
pub const ORG: &str = "Portcullis Tests";

/// A certificate authority: its certificate, key and where they were written.
#[allow(dead_code)]
pub struct Ca {
    pub name: String,
    pub cert: X509,
    pub key: PKey<Private>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    /// Upper-case hex, as `openssl x509 -serial` prints it (without leading zeros).
    pub serial: String,
    /// `O=..., CN=...` in certificate order (see [`dn_string`]).
    pub subject: String,
    /// The chain from this CA up to (excluding) its root, for issuing leaves with a full chain.
    chain_above: Vec<X509>,
}

/// A leaf certificate (server or client) with its key and chain files.
#[allow(dead_code)]
#[derive(Clone)]
pub struct Leaf {
    pub name: String,
    pub cert: X509,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Leaf followed by every intermediate up to (excluding) the root: what a server sends.
    pub chain_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    pub chain_pem: String,
    pub serial: String,
    pub subject: String,
}

/// Validity of an issued certificate.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired,
    NotYetValid,
}

/// Intended use, which decides the extended key usage.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    Both,
}

/// The whole test PKI. Field names say what each certificate is for.
#[allow(dead_code)]
pub struct Pki {
    dir: TempDir,
    next_serial: AtomicU64,
    /// Root CA (trust anchor of the "right CA" cases).
    pub root: Ca,
    /// Intermediate CA signed by `root` (pathlen 0).
    pub intermediate: Ca,
    /// A second root that has nothing to do with `root` (the "wrong CA" cases).
    pub other_root: Ca,
    /// Server leaf from `intermediate`: CN localhost, SANs DNS localhost, kong.example, IP 127.0.0.1.
    pub server: Leaf,
    /// Server leaf signed directly by `root` (passes `tls_verify_depth: 0`).
    pub server_direct: Leaf,
    /// Server leaf from `other_root`, same names as `server`.
    pub server_other_ca: Leaf,
    /// Expired server leaf from `intermediate`, same names as `server`.
    pub server_expired: Leaf,
    /// Server leaf from `intermediate` valid only for `wrong.example` (no IP SAN).
    pub server_wrong_name: Leaf,
    /// Client leaf from `root`: CN alice, SANs email alice@example.com and DNS alice.example.com.
    pub alice: Leaf,
    /// Client leaf from `root`: CN bob, no SAN.
    pub bob: Leaf,
    /// Expired client leaf from `root`: CN expired-client.
    pub client_expired: Leaf,
    /// Client leaf from `root`: CN revoked-client, listed in `crl_path`.
    pub client_revoked: Leaf,
    /// Client leaf from `intermediate`: CN carol (chain file holds carol + intermediate).
    pub client_intermediate: Leaf,
    /// Client leaf from `other_root`: CN mallory.
    pub client_other_ca: Leaf,
    /// CRL of `root` revoking `client_revoked` (PEM).
    pub crl_path: PathBuf,
    pub crl_pem: String,
    /// CRL of `intermediate`, revoking nothing (PEM).
    pub intermediate_crl_path: PathBuf,
    pub intermediate_crl_pem: String,
    /// Both CRLs concatenated, for checkers that want one file for the whole chain.
    pub crl_bundle_path: PathBuf,
}

#[allow(dead_code)]
impl Pki {
    /// Generates the whole PKI. Takes a few milliseconds with P-256.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pki-")
            .tempdir()
            .expect("create PKI temp dir");
        // Start serials at a random point so two PKIs in one process (or two runs) never share one.
        let mut base = BigNum::new().expect("bignum");
        base.rand(40, MsbOption::MAYBE_ZERO, false)
            .expect("random serial base");
        let base: u64 = u64::from_str_radix(&base.to_hex_str().expect("hex"), 16).unwrap_or(1) + 1;
        let serial = AtomicU64::new(base << 8);

        let root = make_ca(dir.path(), &serial, "root", "Portcullis Test Root CA", None);
        let intermediate = make_ca(
            dir.path(),
            &serial,
            "intermediate",
            "Portcullis Test Intermediate CA",
            Some(&root),
        );
        let other_root = make_ca(
            dir.path(),
            &serial,
            "other-root",
            "Unrelated Test Root CA",
            None,
        );

        let mut pki_parts = Parts {
            dir: dir.path().to_path_buf(),
            serial: &serial,
        };
        let server_sans = ["DNS:localhost", "DNS:kong.example", "IP:127.0.0.1"];
        let server = pki_parts.issue(
            LeafSpec::new("server", "localhost")
                .sans(&server_sans)
                .usage(Usage::Server),
            &intermediate,
        );
        let server_direct = pki_parts.issue(
            LeafSpec::new("server-direct", "localhost")
                .sans(&server_sans)
                .usage(Usage::Server),
            &root,
        );
        let server_other_ca = pki_parts.issue(
            LeafSpec::new("server-other-ca", "localhost")
                .sans(&server_sans)
                .usage(Usage::Server),
            &other_root,
        );
        let server_expired = pki_parts.issue(
            LeafSpec::new("server-expired", "localhost")
                .sans(&server_sans)
                .usage(Usage::Server)
                .validity(Validity::Expired),
            &intermediate,
        );
        let server_wrong_name = pki_parts.issue(
            LeafSpec::new("server-wrong-name", "wrong.example")
                .sans(&["DNS:wrong.example"])
                .usage(Usage::Server),
            &intermediate,
        );
        let alice = pki_parts.issue(
            LeafSpec::new("alice", "alice")
                .sans(&["email:alice@example.com", "DNS:alice.example.com"])
                .usage(Usage::Client),
            &root,
        );
        let bob = pki_parts.issue(LeafSpec::new("bob", "bob").usage(Usage::Client), &root);
        let client_expired = pki_parts.issue(
            LeafSpec::new("client-expired", "expired-client")
                .usage(Usage::Client)
                .validity(Validity::Expired),
            &root,
        );
        let client_revoked = pki_parts.issue(
            LeafSpec::new("client-revoked", "revoked-client").usage(Usage::Client),
            &root,
        );
        let client_intermediate = pki_parts.issue(
            LeafSpec::new("carol", "carol")
                .sans(&["email:carol@example.com"])
                .usage(Usage::Client),
            &intermediate,
        );
        let client_other_ca = pki_parts.issue(
            LeafSpec::new("mallory", "mallory").usage(Usage::Client),
            &other_root,
        );

        let crl_pem = make_crl(&root, &[&client_revoked.cert]);
        let crl_path = dir.path().join("root.crl.pem");
        write(&crl_path, &crl_pem);
        let intermediate_crl_pem = make_crl(&intermediate, &[]);
        let intermediate_crl_path = dir.path().join("intermediate.crl.pem");
        write(&intermediate_crl_path, &intermediate_crl_pem);
        let crl_bundle_path = dir.path().join("all.crl.pem");
        write(
            &crl_bundle_path,
            &format!("{crl_pem}{intermediate_crl_pem}"),
        );

        Pki {
            dir,
            next_serial: serial,
            root,
            intermediate,
            other_root,
            server,
            server_direct,
            server_other_ca,
            server_expired,
            server_wrong_name,
            alice,
            bob,
            client_expired,
            client_revoked,
            client_intermediate,
            client_other_ca,
            crl_path,
            crl_pem,
            intermediate_crl_path,
            intermediate_crl_pem,
            crl_bundle_path,
        }
    }

    /// Directory holding every PEM file of this PKI.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate from the intermediate for the given SANs (`DNS:x`, `IP:x`).
    /// The CN is the first SAN's value. `name` names the files.
    pub fn server_leaf(&self, name: &str, sans: &[&str]) -> Leaf {
        let cn = sans
            .first()
            .and_then(|s| s.split_once(':'))
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| name.to_string());
        self.issue(
            LeafSpec::new(name, &cn).sans(sans).usage(Usage::Server),
            &self.intermediate,
        )
    }

    /// Issues any leaf from any CA of this PKI.
    pub fn issue(&self, spec: LeafSpec, issuer: &Ca) -> Leaf {
        Parts {
            dir: self.dir.path().to_path_buf(),
            serial: &self.next_serial,
        }
        .issue(spec, issuer)
    }

    /// Writes `contents` to a new file in the PKI dir (bundles, bad keys...).
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        write(&path, contents);
        path
    }
}

/// What to put into a leaf.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct LeafSpec {
    name: String,
    cn: String,
    sans: Vec<String>,
    usage: Usage,
    validity: Validity,
    extra_subject: Vec<(String, String)>,
}

#[allow(dead_code)]
impl LeafSpec {
    /// `name` names the files (`<name>.crt`, `.key`, `.chain.crt`); `cn` is the subject CN.
    pub fn new(name: &str, cn: &str) -> LeafSpec {
        LeafSpec {
            name: name.to_string(),
            cn: cn.to_string(),
            sans: Vec::new(),
            usage: Usage::Server,
            validity: Validity::Valid,
            extra_subject: Vec::new(),
        }
    }
    /// SANs as `DNS:name`, `IP:addr`, `email:addr`, `URI:uri`.
    pub fn sans(mut self, sans: &[&str]) -> LeafSpec {
        self.sans = sans.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn usage(mut self, usage: Usage) -> LeafSpec {
        self.usage = usage;
        self
    }
    pub fn validity(mut self, validity: Validity) -> LeafSpec {
        self.validity = validity;
        self
    }
    /// Adds a subject entry (e.g. `OU`, `L`) before the CN.
    pub fn subject_entry(mut self, field: &str, value: &str) -> LeafSpec {
        self.extra_subject
            .push((field.to_string(), value.to_string()));
        self
    }
}

/// `O=Portcullis Tests, CN=alice`: short names in certificate order, joined by `, `.
#[allow(dead_code)]
pub fn dn_string(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?").to_string();
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upper-case hex serial of a certificate, as `openssl x509 -serial` prints it.
#[allow(dead_code)]
pub fn serial_hex(cert: &X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .expect("serial to hex")
}

/// Indents every line of `pem` by `spaces`, for pasting into a YAML block scalar (`cert: |`).
#[allow(dead_code)]
pub fn indent(pem: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    pem.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

struct Parts<'a> {
    dir: PathBuf,
    serial: &'a AtomicU64,
}

impl Parts<'_> {
    fn issue(&mut self, spec: LeafSpec, issuer: &Ca) -> Leaf {
        let key = new_key();
        let mut name = X509NameBuilder::new().expect("name builder");
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, ORG)
            .expect("O");
        for (field, value) in &spec.extra_subject {
            name.append_entry_by_text(field, value)
                .expect("subject entry");
        }
        name.append_entry_by_nid(Nid::COMMONNAME, &spec.cn)
            .expect("CN");
        let name = name.build();

        let mut b = base_builder(
            self.serial,
            &name,
            issuer.cert.subject_name(),
            &key,
            spec.validity,
        );
        b.append_extension(BasicConstraints::new().critical().build().expect("bc"))
            .expect("bc");
        let mut ku = KeyUsage::new();
        ku.critical().digital_signature();
        b.append_extension(ku.build().expect("ku")).expect("ku");
        let mut eku = ExtendedKeyUsage::new();
        match spec.usage {
            Usage::Server => eku.server_auth(),
            Usage::Client => eku.client_auth(),
            Usage::Both => eku.server_auth().client_auth(),
        };
        b.append_extension(eku.build().expect("eku")).expect("eku");
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(Some(&*issuer.cert), None))
            .expect("ski");
        b.append_extension(ski).expect("ski");
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&*issuer.cert), None))
            .expect("aki");
        b.append_extension(aki).expect("aki");
        if !spec.sans.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for s in &spec.sans {
                match s.split_once(':') {
                    Some(("DNS", v)) => san.dns(v),
                    Some(("IP", v)) => san.ip(v),
                    Some(("email", v)) => san.email(v),
                    Some(("URI", v)) => san.uri(v),
                    _ => panic!("bad SAN spec {s:?} (use DNS:, IP:, email:, URI:)"),
                };
            }
            let ext = san
                .build(&b.x509v3_context(Some(&*issuer.cert), None))
                .expect("san");
            b.append_extension(ext).expect("san");
        }
        b.sign(&issuer.key, MessageDigest::sha256())
            .expect("sign leaf");
        let cert = b.build();

        let cert_pem = pem(&cert);
        let key_pem = key_pem(&key);
        let mut chain_pem = cert_pem.clone();
        // Roots are never sent: a leaf issued by a root has a chain of one.
        if !is_root(issuer) {
            chain_pem.push_str(&issuer.cert_pem);
            for c in &issuer.chain_above {
                chain_pem.push_str(&pem(c));
            }
        }
        let cert_path = self.dir.join(format!("{}.crt", spec.name));
        let key_path = self.dir.join(format!("{}.key", spec.name));
        let chain_path = self.dir.join(format!("{}.chain.crt", spec.name));
        write(&cert_path, &cert_pem);
        write(&key_path, &key_pem);
        write(&chain_path, &chain_pem);
        Leaf {
            name: spec.name,
            serial: serial_hex(&cert),
            subject: dn_string(cert.subject_name()),
            cert,
            cert_path,
            key_path,
            chain_path,
            cert_pem,
            key_pem,
            chain_pem,
        }
    }
}

fn is_root(ca: &Ca) -> bool {
    ca.cert.subject_name().to_der().ok() == ca.cert.issuer_name().to_der().ok()
}

fn make_ca(dir: &Path, serial: &AtomicU64, file: &str, cn: &str, parent: Option<&Ca>) -> Ca {
    let key = new_key();
    let mut name = X509NameBuilder::new().expect("name builder");
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, ORG)
        .expect("O");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("CN");
    let name = name.build();
    let issuer_name = parent.map(|p| p.cert.subject_name()).unwrap_or(&name);
    let mut b = base_builder(serial, &name, issuer_name, &key, Validity::Valid);
    let mut bc = BasicConstraints::new();
    bc.critical().ca();
    if parent.is_some() {
        bc.pathlen(0);
    }
    b.append_extension(bc.build().expect("bc")).expect("bc");
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .expect("ku"),
    )
    .expect("ku");
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(parent.map(|p| &*p.cert), None))
        .expect("ski");
    b.append_extension(ski).expect("ski");
    if let Some(p) = parent {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&*p.cert), None))
            .expect("aki");
        b.append_extension(aki).expect("aki");
    }
    let signer = parent.map(|p| &p.key).unwrap_or(&key);
    b.sign(signer, MessageDigest::sha256()).expect("sign CA");
    let cert = b.build();
    let cert_pem = pem(&cert);
    let key_pem = key_pem(&key);
    let cert_path = dir.join(format!("{file}.crt"));
    let key_path = dir.join(format!("{file}.key"));
    write(&cert_path, &cert_pem);
    write(&key_path, &key_pem);
    // What a server must send above this CA: its parent and the parent's own chain, up to
    // (excluding) the root.
    let chain_above = match parent {
        Some(p) if !is_root(p) => {
            let mut v = vec![p.cert.clone()];
            v.extend(p.chain_above.iter().cloned());
            v
        }
        _ => Vec::new(),
    };
    Ca {
        name: file.to_string(),
        serial: serial_hex(&cert),
        subject: dn_string(cert.subject_name()),
        cert,
        key,
        cert_path,
        key_path,
        cert_pem,
        key_pem,
        chain_above,
    }
}

fn base_builder(
    serial: &AtomicU64,
    subject: &X509Name,
    issuer: &X509NameRef,
    key: &PKey<Private>,
    validity: Validity,
) -> X509Builder {
    let mut b = X509Builder::new().expect("x509 builder");
    b.set_version(2).expect("version");
    let n = serial.fetch_add(1, Ordering::Relaxed);
    let bn = BigNum::from_dec_str(&n.to_string()).expect("serial bn");
    b.set_serial_number(&bn.to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(subject).expect("subject");
    b.set_issuer_name(issuer).expect("issuer");
    b.set_pubkey(key).expect("pubkey");
    let now = unix_now();
    let day = 86_400;
    let (from, to) = match validity {
        Validity::Valid => (now - day, now + 365 * day),
        Validity::Expired => (now - 30 * day, now - day),
        Validity::NotYetValid => (now + day, now + 30 * day),
    };
    b.set_not_before(&Asn1Time::from_unix(from).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::from_unix(to).expect("time"))
        .expect("not after");
    b
}

fn make_crl(ca: &Ca, revoked: &[&X509]) -> String {
    let mut b = X509CrlBuilder::new().expect("crl builder");
    b.set_issuer_name(ca.cert.subject_name()).expect("issuer");
    let now = unix_now();
    b.set_last_update(&Asn1Time::from_unix(now - 3600).expect("time"))
        .expect("last update");
    b.set_next_update(&Asn1Time::from_unix(now + 30 * 86_400).expect("time"))
        .expect("next update");
    let dummy = X509Builder::new().expect("builder");
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&dummy.x509v3_context(Some(&*ca.cert), None))
        .expect("aki");
    b.append_extension(aki).expect("aki");
    b.append_extension(
        CrlNumber::new(BigNum::from_u32(1).expect("bn"))
            .and_then(|n| n.build())
            .expect("crl number"),
    )
    .expect("crl number");
    for cert in revoked {
        let mut r = X509RevokedBuilder::new().expect("revoked");
        r.set_serial_number(cert.serial_number()).expect("serial");
        r.set_revocation_date(&Asn1Time::from_unix(now - 600).expect("time"))
            .expect("date");
        b.add_revoked(r.build()).expect("add revoked");
    }
    b.sign(&ca.key, MessageDigest::sha256()).expect("sign crl");
    let crl: X509Crl = b.build().expect("build crl");
    String::from_utf8(crl.to_pem().expect("crl pem")).expect("utf8")
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let ec = EcKey::generate(&group).expect("ec key");
    PKey::from_ec_key(ec).expect("pkey")
}

fn pem(cert: &X509Ref) -> String {
    String::from_utf8(cert.to_pem().expect("pem")).expect("utf8")
}

fn key_pem(key: &PKey<Private>) -> String {
    String::from_utf8(key.private_key_to_pem_pkcs8().expect("key pem")).expect("utf8")
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
