//! Trace context headers, read and written as Kong's extractors and injectors do
//! (kong/observability/tracing/propagation/{extractors,injectors}/*.lua).

use portcullis_plugin_api::http::{HeaderMap, HeaderName};

/// The names injectors write, made at compile time (a const `from_static` with a bad name does
/// not build).
mod names {
    use super::HeaderName;
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub const B3: HeaderName = HeaderName::from_static("b3");
    pub const B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
    pub const B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
    pub const B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
    pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
    pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
    pub const UBER_TRACE_ID: HeaderName = HeaderName::from_static("uber-trace-id");
    pub const OT_TRACEID: HeaderName = HeaderName::from_static("ot-tracer-traceid");
    pub const OT_SPANID: HeaderName = HeaderName::from_static("ot-tracer-spanid");
    pub const OT_SAMPLED: HeaderName = HeaderName::from_static("ot-tracer-sampled");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3,
    B3Single,
    Jaeger,
    Ot,
    Datadog,
    Aws,
    Gcp,
    Instana,
}

impl Format {
    pub const INJECTOR_NAMES: &'static [&'static str] = &[
        "w3c",
        "b3",
        "b3-single",
        "jaeger",
        "ot",
        "datadog",
        "aws",
        "gcp",
        "instana",
    ];
    pub const EXTRACTOR_NAMES: &'static [&'static str] = &[
        "w3c", "b3", "jaeger", "ot", "datadog", "aws", "gcp", "instana",
    ];

    pub fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "w3c" => Format::W3c,
            "b3" => Format::B3,
            "b3-single" => Format::B3Single,
            "jaeger" => Format::Jaeger,
            "ot" => Format::Ot,
            "datadog" => Format::Datadog,
            "aws" => Format::Aws,
            "gcp" => Format::Gcp,
            "instana" => Format::Instana,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::W3c => "w3c",
            Format::B3 => "b3",
            Format::B3Single => "b3-single",
            Format::Jaeger => "jaeger",
            Format::Ot => "ot",
            Format::Datadog => "datadog",
            Format::Aws => "aws",
            Format::Gcp => "gcp",
            Format::Instana => "instana",
        }
    }

    /// Kong's `reuse_span_id`: the format's span is shared by caller and receiver (B3's span
    /// id, with `parent_id` above it), rather than being the receiver's parent.
    pub fn reuses_span_id(self) -> bool {
        matches!(self, Format::B3 | Format::B3Single | Format::Jaeger)
    }

    /// The formats implemented here; the others are accepted in the config and skipped.
    pub fn supported(self) -> bool {
        matches!(
            self,
            Format::W3c | Format::B3 | Format::B3Single | Format::Jaeger | Format::Ot
        )
    }
}

/// A trace context read from request headers. Ids are padded on the left to 16 and 8 bytes as
/// Kong's `to_kong_trace_id`/`to_kong_span_id` do; `trace_id_len` keeps the size received (8
/// for 64-bit B3/Jaeger ids), which B3 and Jaeger injection preserve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    pub trace_id: Option<[u8; 16]>,
    pub trace_id_len: Option<usize>,
    /// The caller's span: our root span's parent.
    pub span_id: Option<[u8; 8]>,
    pub parent_id: Option<[u8; 8]>,
    pub sampled: Option<bool>,
    /// B3's debug flag (`x-b3-flags: 1`, `d` in a single header).
    pub b3_debug: bool,
    /// The context came in B3's single header (so `preserve` answers in `b3-single`).
    pub single_header: bool,
}

impl Extracted {
    /// Whether an extractor found anything (Kong stops at the first that did).
    fn found(&self) -> bool {
        self.trace_id.is_some() || self.sampled.is_some()
    }
}

/// Hex to bytes, right-aligned in `N` bytes (an odd length gets a leading 0, as Kong's
/// `from_hex`); longer ids keep their last `N` bytes.
fn from_hex<const N: usize>(hex: &str) -> Option<([u8; N], usize)> {
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded;
    let hex = if hex.len() % 2 == 1 {
        padded = format!("0{hex}");
        padded.as_str()
    } else {
        hex
    };
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    let len = bytes.len();
    let mut out = [0u8; N];
    let take = len.min(N);
    out[N - take..].copy_from_slice(&bytes[len - take..]);
    Some((out, len))
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// `bytes` as hex into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
}

/// Through a stack buffer: `String::push` per character costs a UTF-8 encoding step each.
fn push_hex(s: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(32) {
        let mut buf = [0u8; 64];
        let hex = &mut buf[..2 * chunk.len()];
        hex_into(hex, chunk);
        s.push_str(std::str::from_utf8(hex).unwrap_or_default());
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every header an extractor reads.
fn is_context_header(name: &str) -> bool {
    matches!(
        name,
        "traceparent"
            | "tracestate"
            | "b3"
            | "x-b3-traceid"
            | "x-b3-spanid"
            | "x-b3-parentspanid"
            | "x-b3-sampled"
            | "x-b3-flags"
            | "uber-trace-id"
            | "ot-tracer-traceid"
            | "ot-tracer-spanid"
            | "ot-tracer-sampled"
    )
}

/// The first of `formats` that finds a context, and what it found.
pub fn extract(formats: &[Format], headers: &HeaderMap) -> Option<(Format, Extracted)> {
    // Most requests carry no context: one pass over the names they have is cheaper than
    // looking up each name every extractor reads.
    if !headers.keys().any(|k| is_context_header(k.as_str())) {
        return None;
    }
    formats.iter().find_map(|&f| {
        let found = match f {
            Format::W3c => w3c(headers),
            Format::B3 | Format::B3Single => b3(headers),
            Format::Jaeger => jaeger(headers),
            Format::Ot => ot(headers),
            _ => None,
        }?;
        found.found().then_some((f, found))
    })
}

fn w3c(headers: &HeaderMap) -> Option<Extracted> {
    let tp = header(headers, "traceparent")?;
    let parts: Vec<&str> = tp.split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        tracing::warn!("invalid W3C traceparent header; ignoring.");
        return None;
    };
    if *version != "00" {
        tracing::warn!("invalid W3C Trace Context version; ignoring.");
        return None;
    }
    let trace = from_hex::<16>(trace).filter(|(t, _)| trace.len() == 32 && !is_zero(t));
    let Some((trace_id, _)) = trace else {
        tracing::warn!("invalid W3C trace context trace ID; ignoring.");
        return None;
    };
    let parent = from_hex::<8>(parent).filter(|(p, _)| parent.len() == 16 && !is_zero(p));
    let Some((span_id, _)) = parent else {
        tracing::warn!("invalid W3C trace context parent ID; ignoring.");
        return None;
    };
    let Some(flags) = (flags.len() == 2)
        .then(|| u8::from_str_radix(flags, 16).ok())
        .flatten()
    else {
        tracing::warn!("invalid W3C trace context flags; ignoring.");
        return None;
    };
    Some(Extracted {
        trace_id: Some(trace_id),
        trace_id_len: Some(16),
        span_id: Some(span_id),
        parent_id: None,
        sampled: Some(flags & 1 == 1),
        ..Default::default()
    })
}

/// B3's single header (or a `tracestate` that is `b3=…`), then the multi headers fill what
/// it did not give.
fn b3(headers: &HeaderMap) -> Option<Extracted> {
    const ANY: &[&str] = &[
        "b3",
        "tracestate",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ];
    if !ANY.iter().any(|h| headers.contains_key(*h)) {
        return None;
    }
    let mut out = Extracted::default();
    let (mut trace, mut span, mut parent): (Option<&str>, Option<&str>, Option<&str>) =
        (None, None, None);
    let single = header(headers, "b3").or_else(|| {
        headers
            .get_all("tracestate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("b3="))
    });
    if let Some(single) = single {
        out.single_header = true;
        match single {
            "1" => out.sampled = Some(true),
            "d" => {
                out.sampled = Some(true);
                out.b3_debug = true;
            }
            "0" => out.sampled = Some(false),
            _ => {
                let parts: Vec<&str> = single.split('-').collect();
                let (t, s, rest) = match parts.as_slice() {
                    [t, s, rest @ ..] => (*t, *s, rest),
                    _ => ("", "", &[][..]),
                };
                let (sampled, p) = match rest {
                    [] => (None, None),
                    [x] if x.len() <= 1 => (Some(*x), None),
                    [x] => (None, Some(*x)),
                    [x, p] => (Some(*x), Some(*p)),
                    _ => (Some("?"), None),
                };
                let hex = |v: &str| v.bytes().all(|b| b.is_ascii_hexdigit());
                let valid = (t.len() == 16 || t.len() == 32)
                    && hex(t)
                    && s.len() == 16
                    && hex(s)
                    && p.is_none_or(|p| p.len() == 16 && hex(p))
                    && matches!(sampled, None | Some("" | "0" | "1" | "d"));
                if valid {
                    match sampled {
                        Some("1") => out.sampled = Some(true),
                        Some("d") => {
                            out.sampled = Some(true);
                            out.b3_debug = true;
                        }
                        Some("0") => out.sampled = Some(false),
                        _ => {}
                    }
                    (trace, span, parent) = (Some(t), Some(s), p);
                } else {
                    tracing::warn!("b3 single header invalid; ignoring.");
                }
            }
        }
    }
    // The multi headers.
    let mut sampled = match header(headers, "x-b3-sampled") {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => {
            tracing::warn!("x-b3-sampled header invalid; ignoring.");
            None
        }
        None => None,
    };
    match header(headers, "x-b3-flags") {
        Some("1") => {
            sampled = Some(true);
            out.b3_debug = true;
        }
        Some(_) => tracing::warn!("x-b3-flags header invalid; ignoring."),
        None => {}
    }
    if out.sampled.is_none() {
        out.sampled = sampled;
    }
    let hex_of = |name: &str, lens: &[usize]| -> Result<Option<&str>, ()> {
        match header(headers, name) {
            None => Ok(None),
            Some(v) if lens.contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Some(v))
            }
            Some(_) => {
                tracing::warn!("{name} header invalid; ignoring.");
                Err(())
            }
        }
    };
    let multi = (
        hex_of("x-b3-traceid", &[16, 32]),
        hex_of("x-b3-spanid", &[16]),
        hex_of("x-b3-parentspanid", &[16]),
    );
    if let (Ok(t), Ok(s), Ok(p)) = multi {
        trace = trace.or(t);
        span = span.or(s);
        parent = parent.or(p);
    }
    if let Some((t, len)) = trace.and_then(from_hex::<16>) {
        out.trace_id = Some(t);
        out.trace_id_len = Some(len);
        out.span_id = span.and_then(from_hex::<8>).map(|x| x.0);
        out.parent_id = parent.and_then(from_hex::<8>).map(|x| x.0);
    }
    Some(out)
}

fn jaeger(headers: &HeaderMap) -> Option<Extracted> {
    let v = header(headers, "uber-trace-id").filter(|v| !v.is_empty())?;
    let parts: Vec<&str> = v.split(':').collect();
    let [trace, span, _parent, flags] = parts.as_slice() else {
        tracing::warn!("invalid jaeger uber-trace-id header; ignoring.");
        return None;
    };
    let parent = parts[2];
    let Some((trace_id, len)) =
        from_hex::<16>(trace).filter(|(t, _)| trace.len() <= 32 && !is_zero(t))
    else {
        tracing::warn!("invalid jaeger trace ID; ignoring.");
        return None;
    };
    let Some((span_id, _)) = from_hex::<8>(span).filter(|(s, _)| span.len() <= 16 && !is_zero(s))
    else {
        tracing::warn!("invalid jaeger span ID; ignoring.");
        return None;
    };
    let Some(flags) = (flags.len() == 1 || flags.len() == 2)
        .then(|| u8::from_str_radix(flags, 16).ok())
        .flatten()
    else {
        tracing::warn!("invalid jaeger flags; ignoring.");
        return None;
    };
    Some(Extracted {
        trace_id: Some(trace_id),
        trace_id_len: Some(len),
        span_id: Some(span_id),
        parent_id: from_hex::<8>(parent).map(|x| x.0).filter(|p| !is_zero(p)),
        sampled: Some(flags & 1 == 1),
        ..Default::default()
    })
}

fn ot(headers: &HeaderMap) -> Option<Extracted> {
    let t = header(headers, "ot-tracer-traceid");
    let s = header(headers, "ot-tracer-spanid");
    let sampled = header(headers, "ot-tracer-sampled");
    if t.is_none() && s.is_none() && sampled.is_none() {
        return None;
    }
    let mut out = Extracted {
        sampled: match sampled {
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            _ => None,
        },
        ..Default::default()
    };
    let hex = |v: &str| v.bytes().all(|b| b.is_ascii_hexdigit());
    let t = t.filter(|t| (t.len() == 16 || t.len() == 32) && hex(t));
    let s = s.filter(|s| s.len() == 16 && hex(s));
    if let Some((trace_id, len)) = t.and_then(from_hex::<16>) {
        out.trace_id = Some(trace_id);
        out.trace_id_len = Some(len);
        out.span_id = s.and_then(from_hex::<8>).map(|x| x.0);
    }
    Some(out)
}

/// What is injected: Kong's `get_inject_ctx` result.
#[derive(Debug, Clone)]
pub struct InjectCtx {
    pub trace_id: [u8; 16],
    /// The size the trace id came in with, when it was extracted.
    pub trace_id_len: Option<usize>,
    /// The span the upstream sees as its parent (our balancer span).
    pub span_id: [u8; 8],
    /// That span's parent (our root span).
    pub parent_id: [u8; 8],
    pub sampled: bool,
    pub b3_debug: bool,
}

impl InjectCtx {
    /// The trace id in the first allowed size unless the received size is allowed too (Kong's
    /// `_INJECTOR:inject`).
    fn trace_hex(&self, allowed: &[usize]) -> String {
        let size = match self.trace_id_len {
            Some(n) if allowed.contains(&n) => n,
            _ => allowed[0],
        };
        to_hex(&self.trace_id[16 - size..])
    }
}

/// The headers `format` writes for `ctx` (none for the formats not implemented here), each
/// handed to `emit` (no list built per request).
pub fn inject_each(format: Format, ctx: &InjectCtx, mut emit: impl FnMut(HeaderName, String)) {
    let sampled = if ctx.sampled { "1" } else { "0" };
    let headers = match format {
        // Every request that has a trace gets this one: written without the formatting
        // machinery or intermediate strings.
        Format::W3c => {
            let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
            hex_into(&mut v[3..35], &ctx.trace_id);
            hex_into(&mut v[36..52], &ctx.span_id);
            if ctx.sampled {
                v[54] = b'1';
            }
            emit(
                names::TRACEPARENT,
                String::from_utf8(v.to_vec()).unwrap_or_default(),
            );
            return;
        }
        Format::B3 => {
            let mut h = vec![
                (names::B3_TRACEID, ctx.trace_hex(&[16, 8])),
                (names::B3_SPANID, to_hex(&ctx.span_id)),
                (names::B3_PARENTSPANID, to_hex(&ctx.parent_id)),
            ];
            if ctx.b3_debug {
                h.push((names::B3_FLAGS, "1".into()));
            } else {
                h.push((names::B3_SAMPLED, sampled.into()));
            }
            h
        }
        Format::B3Single => {
            let s = if ctx.b3_debug { "d" } else { sampled };
            vec![(
                names::B3,
                format!(
                    "{}-{}-{s}-{}",
                    ctx.trace_hex(&[16, 8]),
                    to_hex(&ctx.span_id),
                    to_hex(&ctx.parent_id)
                ),
            )]
        }
        Format::Jaeger => vec![(
            names::UBER_TRACE_ID,
            format!(
                "{}:{}:{}:{}",
                ctx.trace_hex(&[16, 8]),
                to_hex(&ctx.span_id),
                to_hex(&ctx.parent_id),
                if ctx.sampled { "01" } else { "00" }
            ),
        )],
        Format::Ot => vec![
            (names::OT_TRACEID, ctx.trace_hex(&[8, 16])),
            (names::OT_SPANID, to_hex(&ctx.span_id)),
            (names::OT_SAMPLED, sampled.into()),
        ],
        Format::Datadog | Format::Aws | Format::Gcp | Format::Instana => Vec::new(),
    };
    for (name, value) in headers {
        emit(name, value);
    }
}

/// Kong's trace-id-ratio sampler: the first 8 bytes of the trace id, read as the machine's
/// native integer (LuaJIT's FFI cast), under `rate · 2⁶⁴`.
pub fn sample(trace_id: &[u8; 16], rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 || rate.is_nan() {
        return false;
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&trace_id[..8]);
    (u64::from_ne_bytes(first) as f64) < rate * 18_446_744_073_709_551_616.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`inject_each`]'s headers as a list.
    fn inject(format: Format, ctx: &InjectCtx) -> Vec<(HeaderName, String)> {
        let mut out = Vec::new();
        inject_each(format, ctx, |name, value| out.push((name, value)));
        out
    }
    use portcullis_plugin_api::http::{HeaderName, HeaderValue};

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const ALL: &[Format] = &[Format::B3, Format::W3c, Format::Jaeger, Format::Ot];

    #[test]
    fn w3c_traceparent_is_read_and_bad_ones_ignored() {
        let h = headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        let (f, e) = extract(ALL, &h).unwrap();
        assert_eq!(f, Format::W3c);
        assert_eq!(
            to_hex(&e.trace_id.unwrap()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(to_hex(&e.span_id.unwrap()), "b7ad6b7169203331");
        assert_eq!(e.sampled, Some(true));
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "garbage",
        ] {
            assert_eq!(
                extract(ALL, &headers(&[("traceparent", bad)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn b3_single_and_multi_headers() {
        let h = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let (f, e) = extract(ALL, &h).unwrap();
        assert_eq!(f, Format::B3);
        assert!(e.single_header);
        assert_eq!(
            to_hex(&e.trace_id.unwrap()),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(to_hex(&e.span_id.unwrap()), "e457b5a2e4d86bd1");
        assert_eq!(to_hex(&e.parent_id.unwrap()), "05e3ac9a4f6e3b90");
        assert_eq!(e.sampled, Some(true));

        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]);
        let (_, e) = extract(ALL, &h).unwrap();
        assert!(!e.single_header);
        assert_eq!(e.trace_id_len, Some(8));
        assert_eq!(
            to_hex(&e.trace_id.unwrap()),
            "0000000000000000463ac35c9f6413ad"
        );
        assert_eq!(e.sampled, Some(false));

        let (_, e) = extract(ALL, &headers(&[("b3", "0")])).unwrap();
        assert_eq!((e.trace_id, e.sampled), (None, Some(false)));
        let (_, e) = extract(ALL, &headers(&[("x-b3-flags", "1")])).unwrap();
        assert!(e.b3_debug && e.sampled == Some(true));
    }

    /// The pass over header names that skips extraction must know every header an extractor
    /// reads on its own, among others of any kind.
    #[test]
    fn lone_context_headers_are_seen_among_others() {
        let with_noise = |extra: &[(&str, &str)]| {
            let mut list = vec![
                ("host", "h"),
                ("user-agent", "curl"),
                ("x-b3", "no"),
                ("traceparentx", "no"),
            ];
            list.extend_from_slice(extra);
            headers(&list)
        };
        assert_eq!(extract(ALL, &with_noise(&[])), None);
        let (_, e) = extract(ALL, &with_noise(&[("x-b3-sampled", "1")])).unwrap();
        assert_eq!(e.sampled, Some(true));
        let (f, e) = extract(
            ALL,
            &with_noise(&[(
                "tracestate",
                "b3=80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
            )]),
        )
        .unwrap();
        assert_eq!(f, Format::B3);
        assert!(e.trace_id.is_some());
        let (f, _) = extract(
            ALL,
            &with_noise(&[(
                "Traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )]),
        )
        .unwrap();
        assert_eq!(f, Format::W3c);
    }

    #[test]
    fn jaeger_uber_trace_id() {
        let h = headers(&[(
            "uber-trace-id",
            "463ac35c9f6413ad48485a3953bb6124:a2fb4a1d1a96d312:0:1",
        )]);
        let (f, e) = extract(ALL, &h).unwrap();
        assert_eq!(f, Format::Jaeger);
        assert_eq!(
            to_hex(&e.trace_id.unwrap()),
            "463ac35c9f6413ad48485a3953bb6124"
        );
        assert_eq!(to_hex(&e.span_id.unwrap()), "a2fb4a1d1a96d312");
        assert_eq!(e.parent_id, None);
        assert_eq!(e.sampled, Some(true));
        for bad in [
            "a:b:c",
            "0:a2fb4a1d1a96d312:0:1",
            "1:a2fb4a1d1a96d312:0:123",
        ] {
            assert_eq!(extract(ALL, &headers(&[("uber-trace-id", bad)])), None);
        }
    }

    #[test]
    fn the_first_listed_format_wins() {
        let h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            (
                "uber-trace-id",
                "463ac35c9f6413ad48485a3953bb6124:a2fb4a1d1a96d312:0:1",
            ),
        ]);
        assert_eq!(
            extract(&[Format::Jaeger, Format::W3c], &h).unwrap().0,
            Format::Jaeger
        );
        assert_eq!(
            extract(&[Format::W3c, Format::Jaeger], &h).unwrap().0,
            Format::W3c
        );
        assert_eq!(extract(&[Format::B3], &h), None);
    }

    #[test]
    fn injected_headers() {
        let inj = |f, ctx: &InjectCtx| -> Vec<(&'static str, String)> {
            inject(f, ctx)
                .into_iter()
                .map(|(n, v)| {
                    let name = [
                        "traceparent",
                        "b3",
                        "x-b3-traceid",
                        "x-b3-spanid",
                        "x-b3-parentspanid",
                        "x-b3-sampled",
                        "x-b3-flags",
                        "uber-trace-id",
                        "ot-tracer-traceid",
                        "ot-tracer-spanid",
                        "ot-tracer-sampled",
                    ]
                    .into_iter()
                    .find(|k| *k == n.as_str())
                    .unwrap();
                    (name, v)
                })
                .collect()
        };
        let mut ctx = InjectCtx {
            trace_id: [0xab; 16],
            trace_id_len: None,
            span_id: [0x11; 8],
            parent_id: [0x22; 8],
            sampled: true,
            b3_debug: false,
        };
        assert_eq!(
            inj(Format::W3c, &ctx),
            vec![(
                "traceparent",
                format!("00-{}-1111111111111111-01", "ab".repeat(16))
            )]
        );
        assert_eq!(
            inj(Format::B3Single, &ctx),
            vec![(
                "b3",
                format!("{}-1111111111111111-1-2222222222222222", "ab".repeat(16))
            )]
        );
        // 64-bit ids stay 64-bit where the format allows it; OT defaults to 64 bits.
        ctx.trace_id_len = Some(8);
        ctx.sampled = false;
        assert_eq!(
            inj(Format::Jaeger, &ctx),
            vec![(
                "uber-trace-id",
                format!("{}:1111111111111111:2222222222222222:00", "ab".repeat(8))
            )]
        );
        assert_eq!(inj(Format::W3c, &ctx)[0].1.len(), 55);
        ctx.trace_id_len = None;
        assert_eq!(inj(Format::Ot, &ctx)[0].1, "ab".repeat(8));
        assert_eq!(inj(Format::B3, &ctx)[3], ("x-b3-sampled", "0".to_string()));
    }

    #[test]
    fn hex_of_any_length() {
        let bytes: Vec<u8> = (0..=255).collect();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(to_hex(&bytes), expected);
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn sampler_bounds() {
        let id = [0u8; 16];
        assert!(sample(&id, 1.0));
        assert!(!sample(&id, 0.0));
        assert!(sample(&id, 0.5));
        assert!(!sample(&[0xff; 16], 0.5));
    }
}
