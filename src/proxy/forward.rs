//! What the gateway tells the upstream about the client: the client address behind trusted
//! proxies, `X-Forwarded-*` values, the upstream `Host`.

use std::net::IpAddr;

/// The client address as a header value (IPv4 formatted by hand: `Display` went through
/// `core::fmt` for each octet, a measurable share of the header hook).
pub(super) fn ip_header_value(ip: std::net::IpAddr) -> http::HeaderValue {
    let mut buf = [0u8; portcullis_plugin_api::json::IP_TEXT_MAX];
    http::HeaderValue::from_bytes(portcullis_plugin_api::json::ip_bytes(ip, &mut buf))
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// `example.com:8000` → `example.com`; `[::1]:8000` → `[::1]`.
pub(super) fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host.ends_with(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &host[..i]
        }
        _ => host,
    }
}

/// Used by `respond` to build bodies without allocation-heavy JSON machinery.
/// The client address behind a trusted proxy: `X-Forwarded-For` read from the right, skipping
/// trusted proxies, the first untrusted address being the client (nginx's `real_ip_recursive`).
/// The peer itself when it is not trusted or the header has no usable address — a client can
/// never choose its own address by sending the header.
pub(super) fn forwarded_client(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[crate::config::model::IpNet],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Later header lines come after earlier ones in the chain.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        let entry = entry.trim();
        let Ok(ip) = entry.parse::<IpAddr>() else {
            // Garbage ends the walk: nothing left of it was vouched for.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::ip_header_value;

    #[test]
    fn forwarded_client_trusts_only_configured_proxies() {
        use super::forwarded_client;
        use crate::config::model::IpNet;
        use std::net::IpAddr;
        let net = |a: &str, prefix| IpNet {
            addr: a.parse().unwrap(),
            prefix,
        };
        let trusted = [net("10.0.0.0", 8), net("::1", 128)];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = |v: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in v {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        // An untrusted peer's header is ignored.
        assert_eq!(
            forwarded_client(ip("192.0.2.1"), &xff(&["203.0.113.5"]), &trusted),
            ip("192.0.2.1")
        );
        // A trusted peer: the rightmost untrusted address, over several hops and lines.
        assert_eq!(
            forwarded_client(
                ip("10.0.0.2"),
                &xff(&["198.51.100.1, 203.0.113.5", "10.0.0.9"]),
                &trusted
            ),
            ip("203.0.113.5")
        );
        assert_eq!(
            forwarded_client(ip("::1"), &xff(&["2001:db8::7"]), &trusted),
            ip("2001:db8::7")
        );
        // No header, or garbage right away: the peer.
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), &xff(&[]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), &xff(&["198.51.100.1, junk"]), &trusted),
            ip("10.0.0.2")
        );
        // Nothing trusted configured: always the peer.
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), &xff(&["203.0.113.5"]), &[]),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ip_header_value_matches_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "192.168.1.20",
            "1.10.100.200",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(parsed).to_str().unwrap(), ip);
        }
        for n in [
            0u32,
            1,
            9,
            10,
            99,
            100,
            199,
            200,
            255,
            256,
            65_535,
            16_777_216,
            u32::MAX,
        ] {
            let v4 = std::net::Ipv4Addr::from(n);
            assert_eq!(ip_header_value(v4.into()).to_str().unwrap(), v4.to_string());
        }
    }
}
