//! A small JSON text writer for the log records every request produces: strings escaped eight
//! bytes at a time, integers through `itoa`. serde_json's writer escapes byte by byte through a
//! table and goes through the `Serializer` machinery for every field, which made the Kong log
//! record the largest per-request cost of the logging plugins. The output is the same text
//! serde_json writes (same escapes), checked by the tests below.

use std::io::Write;

const HEX: &[u8; 16] = b"0123456789abcdef";
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes needs an escape: a control character (< 0x20), `"` or `\`.
/// Each test is exact for "is there one" (a borrow starts only at a byte that matches).
#[inline]
fn needs_escape(x: u64) -> bool {
    let control = x.wrapping_sub(ONES * 0x20) & !x;
    let q = x ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = x ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (control | quote | backslash) & HIGHS != 0
}

fn escape_byte(out: &mut Vec<u8>, c: u8) {
    match c {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(c >> 4)],
            HEX[usize::from(c & 15)],
        ]),
    }
}

#[inline]
fn push_escaped(out: &mut Vec<u8>, c: u8) {
    if c < 0x20 || c == b'"' || c == b'\\' {
        escape_byte(out, c);
    } else {
        out.push(c);
    }
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_le_bytes(w)
}

/// Whether `b` needs work beyond a copy: a byte to escape, or (`non_ascii`) one above 0x7f.
/// Word at a time; the last word overlaps the one before rather than being copied out.
#[inline]
fn needs_work(b: &[u8], non_ascii: bool) -> bool {
    let high = if non_ascii { HIGHS } else { 0 };
    let test = |x: u64| needs_escape(x) || x & high != 0;
    if b.len() < 8 {
        return b
            .iter()
            .any(|&c| c < 0x20 || c == b'"' || c == b'\\' || (non_ascii && c >= 0x80));
    }
    let mut i = 0;
    while i + 8 <= b.len() {
        if test(word(&b[i..i + 8])) {
            return true;
        }
        i += 8;
    }
    i < b.len() && test(word(&b[b.len() - 8..]))
}

/// The contents of a JSON string (no quotes) for `s`.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    // Most strings of a log record need no escape: one scan, one copy.
    if !needs_work(s.as_bytes(), false) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.reserve(s.len() + 8);
    for &c in s.as_bytes() {
        push_escaped(out, c);
    }
}

/// Bytes as the contents of a JSON string: escaped when ASCII (the common case for header
/// values), else decoded as UTF-8 with invalid sequences replaced by U+FFFD.
pub fn escape_lossy(out: &mut Vec<u8>, b: &[u8]) {
    if !needs_work(b, true) {
        out.extend_from_slice(b);
    } else {
        escape_into(out, &String::from_utf8_lossy(b));
    }
}

/// `s` as a JSON string, quotes included.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(out, s);
    out.push(b'"');
}

/// `"key":` for a key that needs no escaping (the record's own field names).
#[inline]
pub fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

pub fn uint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub fn int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// An IP address as a JSON string.
pub fn ip(out: &mut Vec<u8>, addr: std::net::IpAddr) {
    out.push(b'"');
    ip_text(out, addr);
    out.push(b'"');
}

/// An IP address as text, IPv4 without the formatting machinery.
pub fn ip_text(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    let mut buf = [0u8; IP_TEXT_MAX];
    out.extend_from_slice(ip_bytes(ip, &mut buf));
}

/// Room for the text of any IP address (std writes at most 39 characters for IPv6).
pub const IP_TEXT_MAX: usize = 48;

/// An IP address as text in `buf`, returned; ASCII.
pub fn ip_bytes(ip: std::net::IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> &[u8] {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + (o / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            &buf[..n]
        }
        std::net::IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // 48 bytes hold any IPv6 text; a failed write leaves what fit.
            let _ = write!(cursor, "{v6}");
            let n = cursor.position() as usize;
            &buf[..n]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_exactly_as_serde_json_does() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain ascii text that is longer than eight bytes".into(),
            "quote \" and backslash \\ inside".into(),
            "\"\\\"\\\"\\\"\\".into(),
            "tab\there\nnewline\r\u{8}\u{c}\u{1}\u{1f}\u{7f}".into(),
            "ünïcödé → 🦀 and \u{2028}".into(),
            "0123456\"".into(),
            "01234567\"".into(),
            "012345678\\".into(),
        ];
        // Every byte value below 0x80 at every offset of a 17-byte string.
        for c in 0u8..0x80 {
            for at in 0..17 {
                let mut s: Vec<u8> = b"abcdefghijklmnopq".to_vec();
                s[at] = c;
                cases.push(String::from_utf8(s).unwrap());
            }
        }
        for s in &cases {
            assert_eq!(ours(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn lossy_bytes_match_serde_json_of_the_lossy_string() {
        let mut cases: Vec<Vec<u8>> = vec![b"caf\xe9".to_vec(), "ünï\"x\"".as_bytes().to_vec()];
        for at in 0..17 {
            for c in [0x80u8, 0xff, b'"', b'\t', b'a'] {
                let mut v = b"abcdefghijklmnopq".to_vec();
                v[at] = c;
                cases.push(v);
            }
        }
        for b in &cases {
            let mut out = Vec::new();
            escape_lossy(&mut out, b);
            let expected = serde_json::to_string(&String::from_utf8_lossy(b)).unwrap();
            assert_eq!(
                format!("\"{}\"", String::from_utf8(out).unwrap()),
                expected,
                "{b:?}"
            );
        }
    }

    #[test]
    fn the_word_test_has_no_false_negatives() {
        for c in 0u8..=255 {
            for at in 0..8 {
                let mut w = [b'a'; 8];
                w[at] = c;
                let special = c < 0x20 || c == b'"' || c == b'\\';
                assert_eq!(
                    needs_escape(u64::from_le_bytes(w)),
                    special,
                    "{c:#x} at {at}"
                );
            }
        }
    }

    #[test]
    fn numbers_and_addresses() {
        let mut out = Vec::new();
        uint(&mut out, 18_446_744_073_709_551_615);
        out.push(b' ');
        int(&mut out, -1);
        out.push(b' ');
        ip(&mut out, "127.0.0.1".parse().unwrap());
        ip(&mut out, "255.10.0.200".parse().unwrap());
        ip(&mut out, "::1".parse().unwrap());
        ip(&mut out, "0.9.10.99".parse().unwrap());
        ip(
            &mut out,
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "18446744073709551615 -1 \"127.0.0.1\"\"255.10.0.200\"\"::1\"\"0.9.10.99\"\"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\""
        );
    }
}
