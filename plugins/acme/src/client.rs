//! instant-acme's HTTP client plugged into the gateway's own stack: hyper (portcullis-http-client)
//! over the gateway's OpenSSL, verifying the ACME server against the system store plus
//! `api_ca_certificates`. Verification is never disabled: a private CA is trusted by naming it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Certificate chains and directory documents are a few KiB.
const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct OpensslHttp {
    connector: SslConnector,
}

impl OpensslHttp {
    /// A client trusting the system store and every certificate in `extra_pem`.
    pub fn new(extra_pem: &[String]) -> Result<OpensslHttp, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        for pem in extra_pem {
            for cert in X509::stack_from_pem(pem.as_bytes()).map_err(|e| e.to_string())? {
                // The same CA named twice is not an error.
                let _ = b.cert_store_mut().add_cert(cert);
            }
        }
        Ok(OpensslHttp {
            connector: b.build(),
        })
    }
}

fn error(msg: impl Into<String>) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(std::io::Error::other(msg.into())))
}

impl HttpClient for OpensslHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let connector = self.connector.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            };
            let uri = parts.uri;
            if uri.scheme_str() != Some("https") {
                return Err(error(format!("{uri}: the ACME server must use https")));
            }
            let host = uri
                .host()
                .ok_or_else(|| error(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| error(format!("connecting to {host}:{port}: timed out")))?
            .map_err(|e| error(format!("connecting to {host}:{port}: {e}")))?;
            // `into_ssl` sets SNI and verifies the name (or the IP address) against the
            // certificate, on top of the chain verification the connector does.
            let ssl = connector
                .configure()
                .and_then(|c| c.into_ssl(&host))
                .map_err(|e| error(e.to_string()))?;
            let mut tls =
                tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| error(e.to_string()))?;
            tokio::time::timeout(CONNECT_TIMEOUT, Pin::new(&mut tls).connect())
                .await
                .map_err(|_| error(format!("TLS to {host}:{port}: timed out")))?
                .map_err(|e| error(format!("TLS to {host}:{port}: {e}")))?;
            let authority = match uri.port_u16() {
                Some(p) => format!("{}:{p}", uri.host().unwrap_or_default()),
                None => uri.host().unwrap_or_default().to_string(),
            };
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut out = http::Request::builder().method(parts.method).uri(path);
            for (name, value) in &parts.headers {
                out = out.header(name, value);
            }
            let out = out
                .header(http::header::HOST, authority)
                .header(http::header::CONNECTION, "close")
                .body(body)
                .map_err(|e| error(e.to_string()))?;
            let limits = portcullis_http_client::Limits {
                timeout: EXCHANGE_TIMEOUT,
                max_body: Some(MAX_BODY),
            };
            let resp = portcullis_http_client::send(tls, out, limits)
                .await
                .map_err(|e| error(format!("{host}:{port}: {e}")))?;
            let mut r = http::Response::new(Full::new(resp.body));
            *r.status_mut() = resp.status;
            *r.headers_mut() = resp.headers;
            Ok(BytesResponse::from(r))
        })
    }
}
