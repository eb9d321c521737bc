//! OTLP protobuf written field by field with prost's wire-format primitives, for the spans every
//! request produces. Building `Span` messages (an owned `String` per attribute, a `Vec` per id)
//! and then encoding them (prost computes nested lengths again at every level) cost more than
//! the rest of the plugin together; here each span is one buffer written once, in the bytes
//! prost itself would write (the tests re-encode with prost and compare).
//!
//! The queue holds encoded `Span` (or `LogRecord`) messages; [`export_request`] frames a batch
//! as an `ExportTraceServiceRequest` (or `ExportLogsServiceRequest`: the same field numbers).

use prost::encoding::{encoded_len_varint, WireType};

/// prost's `encode_varint` is generic over `BufMut` and not inlined; these fields are mostly one
/// byte long.
#[inline]
fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn encode_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), out);
}

#[inline]
fn len_prefixed_len(n: usize) -> usize {
    encoded_len_varint(n as u64) + n
}

/// Field `tag` holding `len` bytes that the caller writes next.
#[inline]
fn len_field(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// A bytes or string field, skipped when empty (proto3 default).
#[inline]
pub fn bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        len_field(out, tag, b.len());
        out.extend_from_slice(b);
    }
}

/// A varint field (enums, uint32), skipped when 0.
#[inline]
pub fn varint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

/// A fixed64 field, skipped when 0.
#[inline]
pub fn fixed64(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// An attribute value.
pub enum Value<'a> {
    /// A string made of consecutive parts (`http.url` is scheme, host and target).
    Str(&'a [&'a str]),
    /// A string given as its UTF-8 bytes (an address written into a stack buffer).
    Text(&'a [u8]),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Value<'_> {
    /// `AnyValue`'s length: its one oneof field (written even when it is the default).
    #[inline(always)]
    fn any_len(&self) -> usize {
        1 + match self {
            Value::Str(parts) => len_prefixed_len(parts.iter().map(|p| p.len()).sum()),
            Value::Text(b) => len_prefixed_len(b.len()),
            Value::Int(i) => encoded_len_varint(*i as u64),
            Value::Double(_) => 8,
            Value::Bool(_) => 1,
        }
    }

    #[inline(always)]
    fn write_any(&self, out: &mut Vec<u8>) {
        match self {
            Value::Str(parts) => {
                len_field(out, 1, parts.iter().map(|p| p.len()).sum());
                for p in *parts {
                    out.extend_from_slice(p.as_bytes());
                }
            }
            Value::Text(b) => {
                len_field(out, 1, b.len());
                out.extend_from_slice(b);
            }
            Value::Bool(b) => {
                encode_key(2, WireType::Varint, out);
                out.push(u8::from(*b));
            }
            Value::Int(i) => {
                encode_key(3, WireType::Varint, out);
                encode_varint(*i as u64, out);
            }
            Value::Double(d) => {
                encode_key(4, WireType::SixtyFourBit, out);
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
    }
}

/// A `KeyValue` in repeated field `tag` (`attributes`: 9 in `Span`, 6 in `LogRecord`, 1 in
/// `Resource`).
// Inlined at each call so the literal key's length is known: its copy becomes a few moves
// rather than a `memcpy` call, and the value's kind is known too.
#[inline(always)]
pub fn attribute(out: &mut Vec<u8>, tag: u32, key: &str, value: Value<'_>) {
    let any = value.any_len();
    let key_len = if key.is_empty() {
        0
    } else {
        1 + len_prefixed_len(key.len())
    };
    let len = key_len + 1 + len_prefixed_len(any);
    // The common case, every length one byte: the framing is two fixed-size stores around
    // the key rather than a push per byte.
    if tag < 16 && !key.is_empty() && len < 0x80 {
        out.reserve(2 + len);
        out.extend_from_slice(&[
            (tag << 3) as u8 | WireType::LengthDelimited as u8,
            len as u8,
            (1 << 3) | WireType::LengthDelimited as u8,
            key.len() as u8,
        ]);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&[(2 << 3) | WireType::LengthDelimited as u8, any as u8]);
    } else {
        out.reserve(1 + encoded_len_varint(len as u64) + len);
        len_field(out, tag, len);
        bytes(out, 1, key.as_bytes());
        len_field(out, 2, any);
    }
    value.write_any(out);
}

/// `Span.status` with only a code (Kong sets no message).
pub fn status_code(out: &mut Vec<u8>, code: i32) {
    let len = 1 + encoded_len_varint(code as u64);
    len_field(out, 15, len);
    varint(out, 3, code as u64);
}

/// A sub-message, already encoded, as field `tag`.
pub fn message(out: &mut Vec<u8>, tag: u32, body: &[u8]) {
    len_field(out, tag, body.len());
    out.extend_from_slice(body);
}

/// `Export{Trace,Logs}ServiceRequest { resource_{spans,logs}: [{ resource, scope_{spans,logs}:
/// [{ scope, {spans,log_records}: items }] }] }`; `resource` and `scope` are encoded messages.
pub fn export_request(resource: &[u8], scope: &[u8], items: &[Vec<u8>]) -> Vec<u8> {
    let items_len: usize = items.iter().map(|i| 1 + len_prefixed_len(i.len())).sum();
    let scoped = 1 + len_prefixed_len(scope.len()) + items_len;
    let resourced = 1 + len_prefixed_len(resource.len()) + 1 + len_prefixed_len(scoped);
    let mut out = Vec::with_capacity(1 + len_prefixed_len(resourced));
    len_field(&mut out, 1, resourced);
    message(&mut out, 1, resource);
    len_field(&mut out, 2, scoped);
    message(&mut out, 1, scope);
    for i in items {
        message(&mut out, 2, i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    /// Attributes of every kind, including empty strings, negative numbers and long values
    /// (multi-byte lengths), written as prost writes them.
    #[test]
    fn attributes_are_byte_identical_to_prost() {
        let long = "x".repeat(300);
        let long_parts = [long.as_str()];
        let cases: Vec<(&str, Value, any_value::Value)> = vec![
            (
                "a",
                Value::Str(&["hello"]),
                any_value::Value::StringValue("hello".into()),
            ),
            (
                "",
                Value::Str(&[""]),
                any_value::Value::StringValue(String::new()),
            ),
            (
                "http.url",
                Value::Str(&["http", "://", "h", "/p?q"]),
                any_value::Value::StringValue("http://h/p?q".into()),
            ),
            (
                "long",
                Value::Str(&long_parts),
                any_value::Value::StringValue(long.clone()),
            ),
            ("i", Value::Int(200), any_value::Value::IntValue(200)),
            ("z", Value::Int(0), any_value::Value::IntValue(0)),
            ("neg", Value::Int(-5), any_value::Value::IntValue(-5)),
            ("d", Value::Double(1.5), any_value::Value::DoubleValue(1.5)),
            ("d0", Value::Double(0.0), any_value::Value::DoubleValue(0.0)),
            (
                "ip",
                Value::Text(b"127.0.0.1"),
                any_value::Value::StringValue("127.0.0.1".into()),
            ),
            ("t", Value::Bool(true), any_value::Value::BoolValue(true)),
            ("f", Value::Bool(false), any_value::Value::BoolValue(false)),
        ];
        for (key, ours, theirs) in cases {
            let mut out = Vec::new();
            attribute(&mut out, 9, key, ours);
            let mut expected = Vec::new();
            prost::encoding::message::encode(9, &kv(key, theirs), &mut expected);
            assert_eq!(out, expected, "{key}");
        }
    }

    /// The framing of a batch is prost's `ExportTraceServiceRequest`, byte for byte, also with
    /// lengths that need several varint bytes.
    #[test]
    fn export_request_is_prosts() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        use prost::Message;
        let resource = Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue("kong".into()),
            )],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "kong-internal".into(),
            version: "0.1.0".into(),
            ..Default::default()
        };
        let spans: Vec<Span> = (0..40)
            .map(|i| Span {
                trace_id: vec![i; 16],
                span_id: vec![i; 8],
                name: format!("span {i}"),
                ..Default::default()
            })
            .collect();
        let items: Vec<Vec<u8>> = spans.iter().map(|s| s.encode_to_vec()).collect();
        let ours = export_request(&resource.encode_to_vec(), &scope.encode_to_vec(), &items);
        let theirs = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(ours, theirs.encode_to_vec());
    }
}
