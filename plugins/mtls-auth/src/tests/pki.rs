//! A PKI generated per test run: CAs, client certificates with the extensions revocation needs,
//! and CRLs.

use std::sync::Arc;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, CrlNumber, ExtendedKeyUsage, KeyUsage,
    SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{
    X509Builder, X509Crl, X509CrlBuilder, X509Extension, X509Name, X509NameRef, X509RevokedBuilder,
    X509,
};
use portcullis_plugin_api::ClientCertificate;

pub fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: Option<&str>, org: &str) -> X509Name {
    let mut b = X509Name::builder().unwrap();
    b.append_entry_by_text("O", org).unwrap();
    if let Some(cn) = cn {
        b.append_entry_by_text("CN", cn).unwrap();
    }
    b.build()
}

fn serial(n: u32) -> Asn1Integer {
    BigNum::from_u32(n).unwrap().to_asn1_integer().unwrap()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub struct Ca {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Ca {
    pub fn root(cn: &str) -> Ca {
        Self::make(cn, None)
    }

    pub fn intermediate(&self, cn: &str) -> Ca {
        Self::make(cn, Some(self))
    }

    fn make(cn: &str, parent: Option<&Ca>) -> Ca {
        let key = key();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial(rand_serial())).unwrap();
        let subject = name(Some(cn), "Portcullis Test");
        b.set_subject_name(&subject).unwrap();
        b.set_issuer_name(parent.map_or(subject.as_ref(), |p| p.cert.subject_name()))
            .unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(now_unix() - 3600).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(3650).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .digital_signature()
                .build()
                .unwrap(),
        )
        .unwrap();
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(parent.map(|p| p.cert.as_ref()), None))
            .unwrap();
        b.append_extension(ski).unwrap();
        if let Some(p) = parent {
            let aki = AuthorityKeyIdentifier::new()
                .keyid(true)
                .build(&b.x509v3_context(Some(&p.cert), None))
                .unwrap();
            b.append_extension(aki).unwrap();
        }
        let signer = parent.map_or(&key, |p| &p.key);
        b.sign(signer, MessageDigest::sha256()).unwrap();
        Ca {
            cert: b.build(),
            key,
        }
    }

    pub fn pem(&self) -> String {
        String::from_utf8(self.cert.to_pem().unwrap()).unwrap()
    }

    /// A client certificate issued by this CA.
    pub fn issue(&self, spec: &Leaf) -> Client {
        let key = key();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial(spec.serial)).unwrap();
        b.set_subject_name(&name(spec.cn.as_deref(), "Clients"))
            .unwrap();
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = now_unix();
        b.set_not_before(&Asn1Time::from_unix(now + spec.not_before_days * 86_400 - 60).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + spec.not_after_days * 86_400).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        let mut eku = ExtendedKeyUsage::new();
        if spec.ocsp_signing {
            eku.other("OCSPSigning");
        } else if spec.server_only {
            eku.server_auth();
        } else {
            eku.client_auth();
        }
        b.append_extension(eku.build().unwrap()).unwrap();
        if !spec.sans.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for s in &spec.sans {
                if let Some(v) = s.strip_prefix("email:") {
                    san.email(v);
                } else if let Some(v) = s.strip_prefix("URI:") {
                    san.uri(v);
                } else if let Some(v) = s.strip_prefix("DNS:") {
                    san.dns(v);
                } else if let Some(v) = s.strip_prefix("dirCN:") {
                    san.dir_name2(name(Some(v), "Directory"));
                }
            }
            let ext = san
                .build(&b.x509v3_context(Some(&self.cert), None))
                .unwrap();
            b.append_extension(ext).unwrap();
        }
        #[allow(deprecated)]
        {
            if let Some(url) = &spec.ocsp_url {
                let ctx = b.x509v3_context(Some(&self.cert), None);
                let ext = X509Extension::new_nid(
                    None,
                    Some(&ctx),
                    Nid::INFO_ACCESS,
                    &format!("OCSP;URI:{url}"),
                )
                .unwrap();
                b.append_extension(ext).unwrap();
            }
            if let Some(url) = &spec.crl_url {
                let ctx = b.x509v3_context(Some(&self.cert), None);
                let ext = X509Extension::new_nid(
                    None,
                    Some(&ctx),
                    Nid::CRL_DISTRIBUTION_POINTS,
                    &format!("URI:{url}"),
                )
                .unwrap();
                b.append_extension(ext).unwrap();
            }
        }
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        Client {
            cert: b.build(),
            key,
            chain: Vec::new(),
        }
    }

    /// A CRL listing `revoked` serials, valid for a day.
    pub fn crl(&self, revoked: &[u32]) -> X509Crl {
        let mut b = X509CrlBuilder::new().unwrap();
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_last_update(&Asn1Time::from_unix(now_unix() - 60).unwrap())
            .unwrap();
        b.set_next_update(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let mut dummy = X509Builder::new().unwrap();
        dummy.set_issuer_name(self.cert.subject_name()).unwrap();
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&dummy.x509v3_context(Some(&self.cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
        b.append_extension(
            CrlNumber::new(BigNum::from_u32(1).unwrap())
                .unwrap()
                .build()
                .unwrap(),
        )
        .unwrap();
        for s in revoked {
            let mut r = X509RevokedBuilder::new().unwrap();
            r.set_serial_number(&serial(*s)).unwrap();
            r.set_revocation_date(&Asn1Time::from_unix(now_unix() - 30).unwrap())
                .unwrap();
            b.add_revoked(r.build()).unwrap();
        }
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        b.build().unwrap()
    }
}

fn rand_serial() -> u32 {
    let mut buf = [0u8; 4];
    openssl::rand::rand_bytes(&mut buf).unwrap();
    u32::from_be_bytes(buf) >> 1 | 0x1000_0000
}

/// What a client certificate should look like.
#[derive(Clone)]
pub struct Leaf {
    pub cn: Option<String>,
    pub sans: Vec<String>,
    pub serial: u32,
    pub not_before_days: i64,
    pub not_after_days: i64,
    pub ocsp_url: Option<String>,
    pub crl_url: Option<String>,
    pub server_only: bool,
    /// EKU OCSPSigning alone: a delegated OCSP responder.
    pub ocsp_signing: bool,
}

impl Leaf {
    pub fn new(cn: &str, serial: u32) -> Leaf {
        Leaf {
            cn: Some(cn.to_string()),
            sans: Vec::new(),
            serial,
            not_before_days: 0,
            not_after_days: 30,
            ocsp_url: None,
            crl_url: None,
            server_only: false,
            ocsp_signing: false,
        }
    }

    pub fn san(mut self, s: &str) -> Leaf {
        self.sans.push(s.to_string());
        self
    }
}

pub struct Client {
    pub cert: X509,
    #[allow(dead_code)]
    pub key: PKey<Private>,
    /// Intermediates the client sends after its leaf.
    pub chain: Vec<X509>,
}

fn rfc2253(name: &X509NameRef) -> String {
    let mut parts: Vec<String> = name
        .entries()
        .map(|e| {
            format!(
                "{}={}",
                e.object().nid().short_name().unwrap_or("?"),
                e.data().to_string().unwrap_or_default()
            )
        })
        .collect();
    parts.reverse();
    parts.join(",")
}

impl Client {
    pub fn with_chain(mut self, chain: &[&X509]) -> Client {
        self.chain = chain.iter().map(|c| (*c).clone()).collect();
        self
    }

    /// What the gateway would capture in the handshake.
    pub fn presented(&self) -> Arc<ClientCertificate> {
        let leaf = &self.cert;
        let mut chain_der = vec![leaf.to_der().unwrap()];
        chain_der.extend(self.chain.iter().map(|c| c.to_der().unwrap()));
        let sans = leaf
            .subject_alt_names()
            .map(|s| {
                s.iter()
                    .filter_map(|g| {
                        g.dnsname()
                            .or_else(|| g.email())
                            .or_else(|| g.uri())
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let common_name = leaf
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok());
        let serial = leaf
            .serial_number()
            .to_bn()
            .unwrap()
            .to_hex_str()
            .unwrap()
            .to_string();
        let fingerprint = crate::revocation::hex(&leaf.digest(MessageDigest::sha256()).unwrap());
        Arc::new(ClientCertificate {
            chain_der,
            subject_dn: rfc2253(leaf.subject_name()),
            issuer_dn: rfc2253(leaf.issuer_name()),
            common_name,
            sans,
            serial,
            fingerprint_sha256: fingerprint,
            chain_sha256: None,
        })
    }
}
