//! request-size-limiting through the real binary: a declared Content-Length over the limit is
//! refused before anything is proxied, a chunked body is cut off as it streams, and
//! `require_content_length` answers 411 — each with Kong's message.

mod common;

use common::*;

fn gateway(echo: &HttpEcho) -> Gateway {
    Gateway::start(&format!(
        r#"services:
- name: echo
  url: {url}
  routes:
  - name: small
    paths: [/small]
    plugins:
    - name: request-size-limiting
      config: {{allowed_payload_size: 16, size_unit: kilobytes}}
  - name: strict
    paths: [/strict]
    plugins:
    - name: request-size-limiting
      config: {{allowed_payload_size: 100, size_unit: bytes, require_content_length: true}}
"#,
        url = echo.url()
    ))
}

fn post(gw: &Gateway, path: &str, body: &[u8]) -> Curl {
    Curl::at("http", "example.com", gw.http_port(), path)
        .data(body)
        .header("Content-Type: application/octet-stream")
}

#[test]
fn declared_lengths_over_the_limit_are_refused_before_proxying() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(&echo);
    let r = post(&gw, "/small", &vec![b'a'; 16 * 1024]).run();
    assert_eq!(r.status, 200, "{}", r.text());

    let before = echo.requests();
    let r = post(&gw, "/small", &vec![b'a'; 16 * 1024 + 1]).run();
    assert_error_body(&r, 413, "Request size limit exceeded");
    assert_eq!(
        echo.requests(),
        before,
        "the refused request reached the upstream"
    );
}

#[test]
fn chunked_bodies_are_cut_off_as_they_stream() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(&echo);
    let chunked =
        |len: usize| post(&gw, "/small", &vec![b'b'; len]).header("Transfer-Encoding: chunked");
    let r = chunked(8 * 1024).run();
    assert_eq!(r.status, 200, "{}", r.text());

    let r = chunked(1024 * 1024).run();
    assert_error_body(&r, 413, "Request size limit exceeded");
}

#[test]
fn content_length_can_be_required() {
    let echo = HttpEcho::start("echo");
    let gw = gateway(&echo);
    let r = post(&gw, "/strict", b"tiny")
        .header("Transfer-Encoding: chunked")
        .run();
    assert_error_body(&r, 411, "A valid Content-Length header is required");
    let r = Curl::at("http", "example.com", gw.http_port(), "/strict").run();
    assert_error_body(&r, 411, "A valid Content-Length header is required");
    let r = post(&gw, "/strict", b"tiny").run();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&gw, "/strict", &[b'c'; 101]).run();
    assert_error_body(&r, 413, "Request size limit exceeded");
}
