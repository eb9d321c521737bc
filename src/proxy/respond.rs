//! The one place where failures become responses: every error the gateway answers itself (no
//! route, HTTPS required, plugin rejections, upstream failures) is rendered here with Kong's
//! status codes and messages, as `{"message": ..., "request_id": ...}`.

use super::{Ctx, NO_HEALTHY_TARGET, UPSTREAM_TLS_REJECTED};
use crate::plugin::headers::ResponseEdit;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
use portcullis_plugin_api::{Phases, PluginResponse, ResponseHead};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NoRoute,
    UseHttps,
    BadGateway,
    NoHealthyTarget,
    Timeout,
    BadRequest,
    HeadersTooLarge,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::NoRoute => 404,
            ErrorKind::UseHttps => 426,
            ErrorKind::BadGateway => 502,
            ErrorKind::NoHealthyTarget => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::BadRequest => 400,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::Internal => 500,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no Route matched with those values",
            ErrorKind::UseHttps => "Please use HTTPS protocol",
            ErrorKind::BadGateway => "An invalid response was received from the upstream server",
            ErrorKind::NoHealthyTarget => "failure to get a peer from the ring-balancer",
            ErrorKind::Timeout => "The upstream server is timing out",
            ErrorKind::BadRequest => "Bad request",
            ErrorKind::HeadersTooLarge => "Request header fields too large",
            ErrorKind::Internal => "An unexpected error occurred",
        }
    }
}

pub enum ResponseSpec {
    Error(ErrorKind),
    Redirect(u16, String),
    Plugin(PluginResponse),
}

/// Which response a proxy failure deserves; `None` when the client is gone.
pub fn classify(e: &Error, ctx: &Ctx) -> Option<ErrorKind> {
    let t = e.etype();
    if *t == NO_HEALTHY_TARGET {
        return Some(ErrorKind::NoHealthyTarget);
    }
    if *t == UPSTREAM_TLS_REJECTED || ctx.tls_failure.is_some() {
        return Some(ErrorKind::BadGateway);
    }
    match t {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Some(ErrorKind::Timeout)
        }
        ErrorType::HTTPStatus(code) if *code == 400 => Some(ErrorKind::BadRequest),
        _ => match e.esource() {
            ErrorSource::Upstream => Some(ErrorKind::BadGateway),
            ErrorSource::Downstream => match t {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
                _ => Some(ErrorKind::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                // Connection-phase errors carry no source: they are upstream problems.
                match t {
                    ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
                    | ErrorType::ConnectProxyFailure
                    | ErrorType::TLSHandshakeFailure
                    | ErrorType::InvalidCert
                    | ErrorType::SocketError
                    | ErrorType::BindError => Some(ErrorKind::BadGateway),
                    _ => Some(ErrorKind::Internal),
                }
            }
        },
    }
}

/// OpenSSL's reason for a failed upstream handshake, short and label-safe.
pub fn tls_reason(e: &Error) -> String {
    let text = e.to_string();
    const KNOWN: &[&str] = &[
        "certificate chain too long",
        "unable to get local issuer certificate",
        "self-signed certificate in certificate chain",
        "self signed certificate in certificate chain",
        "self-signed certificate",
        "self signed certificate",
        "certificate has expired",
        "certificate is not yet valid",
        "hostname mismatch",
        "IP address mismatch",
        "unable to verify the first certificate",
        "certificate revoked",
        "certificate required",
        "unknown ca",
        "bad certificate",
        "handshake failure",
        "wrong version number",
    ];
    for k in KNOWN {
        if text.contains(k) {
            return (*k).to_string();
        }
    }
    "handshake failed".to_string()
}

pub async fn send(session: &mut Session, ctx: &mut Ctx, spec: ResponseSpec) -> Result<()> {
    let rid = ctx.plugin.request_id.clone();
    let (status, body, content_type, extra): (u16, bytes::Bytes, String, Vec<(String, String)>) =
        match spec {
            ResponseSpec::Error(k) => (
                k.status(),
                super::json_body(k.message(), &rid),
                "application/json; charset=utf-8".into(),
                // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to (Kong sends these).
                if k == ErrorKind::UseHttps {
                    vec![
                        ("upgrade".into(), "TLS/1.2, HTTP/1.1".into()),
                        ("connection".into(), "Upgrade".into()),
                    ]
                } else {
                    Vec::new()
                },
            ),
            ResponseSpec::Redirect(code, location) => (
                code,
                super::json_body("Please use HTTPS protocol", &rid),
                "application/json; charset=utf-8".into(),
                vec![("location".into(), location)],
            ),
            ResponseSpec::Plugin(p) => {
                let (body, ct) = match (p.body, &p.message) {
                    (Some(b), _) => (
                        bytes::Bytes::from(b),
                        p.content_type
                            .clone()
                            .unwrap_or_else(|| "application/octet-stream".into()),
                    ),
                    (None, Some(m)) => (
                        super::json_body(m, &rid),
                        "application/json; charset=utf-8".into(),
                    ),
                    // Kong's `kong.response.exit(status)` without a body sends no Content-Type
                    // (its proxy's `default_type` is empty): a CORS preflight answer has none.
                    (None, None) => (bytes::Bytes::new(), String::new()),
                };
                (p.status, body, ct, p.headers)
            }
        };
    ctx.responded = Some(status);
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    if !content_type.is_empty() {
        resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header("x-request-id", rid.as_str())?;
    resp.insert_header(http::header::SERVER, "portcullis")?;
    let mut given: Vec<http::HeaderName> = Vec::new();
    for (k, v) in extra {
        // Plugin-provided headers that do not parse are dropped rather than failing the response.
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(&v),
        ) {
            // The first value of a name replaces the gateway's default; later ones of the same
            // name are kept beside it (a replayed response's two Set-Cookie headers).
            if given.contains(&n) {
                resp.append_header(n, v)?;
            } else {
                given.push(n.clone());
                resp.insert_header(n, v)?;
            }
        }
    }
    for (n, v) in std::mem::take(&mut ctx.plugin.response_headers) {
        resp.insert_header(n, v)?;
    }
    // Kong runs the header phase on responses the gateway or a plugin answers itself too (CORS
    // headers on a 401, a correlation id on a 404).
    if let Some(chain) = ctx.chain.clone() {
        if chain.has(Phases::RESPONSE_HEADERS) {
            let mut edit = ResponseEdit(&mut resp);
            let mut head = ResponseHead {
                status,
                headers: &mut edit,
                from_gateway: true,
            };
            crate::plugin::chain::response_headers(&chain, &mut head, &mut ctx.plugin);
            for (n, v) in std::mem::take(&mut ctx.plugin.response_headers) {
                resp.insert_header(n, v)?;
            }
        }
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
