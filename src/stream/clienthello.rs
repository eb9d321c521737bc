//! TLS ClientHello reader: finds the SNI and ALPN in the first flight of a TLS client without
//! terminating TLS, across any split into TCP segments and TLS records.
//!
//! The parser is a pure function over the bytes received so far ([`parse`]) so it can be fuzzed
//! and unit-tested without sockets; [`read_client_hello`] drives it from an async reader. Every
//! length is checked before use: no input can make it panic, allocate more than
//! [`MAX_CLIENT_HELLO_BYTES`], or loop.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Upper bound on the bytes buffered while looking for the end of the ClientHello, record headers
/// included. Real ClientHellos are under 2 KiB (about 1.8 KiB with a post-quantum key share); the
/// bound keeps a hostile client from making the gateway buffer without limit.
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record fragment is at most 2^14 bytes.
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;

/// What the gateway needs from a ClientHello to route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` host name, lowercased and without a trailing dot; `None` when absent.
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order (PostgreSQL direct SSL sends `postgresql`).
    pub alpn: Vec<Vec<u8>>,
    /// Protocol version of the first record header, echoed in alerts sent back.
    pub record_version: u16,
    /// Bytes of the input up to the last byte of the ClientHello message (record headers
    /// included); bytes after it, if any, were sent by the client after its ClientHello.
    pub len: usize,
}

/// Why the bytes received cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The first bytes are not a TLS handshake record: not TLS at all, so no alert is sent.
    NotTls,
    /// TLS records, but not a well-formed ClientHello; the reason is for logs.
    Malformed(&'static str),
    /// The ClientHello does not fit in [`MAX_CLIENT_HELLO_BYTES`].
    TooLarge,
}

impl Reject {
    /// Short reason used in logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::NotTls => "not a TLS handshake record",
            Reject::Malformed(why) => why,
            Reject::TooLarge => "ClientHello larger than 16 KiB",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Outcome of parsing the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    Incomplete,
    /// The whole ClientHello was received.
    Done(ClientHello),
}

/// Parses the ClientHello at the start of `buf`, which holds every byte received so far.
///
/// Cost is proportional to the number of records until the handshake message is complete, so
/// calling it again after each read stays cheap even for a client sending one byte at a time.
pub fn parse(buf: &[u8]) -> Result<Progress, Reject> {
    let Some(&first) = buf.first() else {
        return Ok(Progress::Incomplete);
    };
    if first != CONTENT_TYPE_HANDSHAKE {
        return Err(Reject::NotTls);
    }
    if let Some(&major) = buf.get(1) {
        if major != 3 {
            return Err(Reject::NotTls);
        }
    }
    let record_version = match (buf.get(1), buf.get(2)) {
        (Some(&major), Some(&minor)) => u16::from_be_bytes([major, minor]),
        _ => 0x0301,
    };

    // Walk the record headers, gathering the 4-byte handshake header as it arrives, until the
    // records hold the whole handshake message. Nothing is copied on this path.
    let mut offset = 0usize;
    let mut payload_total = 0usize;
    let mut hs_header = [0u8; HANDSHAKE_HEADER_LEN];
    let mut hs_header_len = 0usize;
    let mut message_len: Option<usize> = None;
    let mut records: Vec<(usize, usize)> = Vec::new();
    loop {
        let Some(header) = buf.get(offset..offset + RECORD_HEADER_LEN) else {
            return incomplete(buf.len());
        };
        if header[0] != CONTENT_TYPE_HANDSHAKE {
            return Err(Reject::Malformed(
                "non-handshake record inside the ClientHello",
            ));
        }
        if header[1] != 3 {
            return Err(Reject::Malformed("record version is not TLS"));
        }
        let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if record_len == 0 {
            return Err(Reject::Malformed("empty handshake record"));
        }
        if record_len > MAX_RECORD_PAYLOAD {
            return Err(Reject::Malformed("record longer than 2^14 bytes"));
        }
        let start = offset + RECORD_HEADER_LEN;
        let end = start + record_len;
        if end > MAX_CLIENT_HELLO_BYTES {
            return Err(Reject::TooLarge);
        }
        let available = &buf[start..buf.len().min(end)];
        // The handshake header is the start of the handshake byte stream, so whatever part of
        // it is still missing begins at this record's first payload byte.
        for &b in available
            .iter()
            .take(HANDSHAKE_HEADER_LEN.saturating_sub(hs_header_len))
        {
            hs_header[hs_header_len] = b;
            hs_header_len += 1;
        }
        if message_len.is_none() && hs_header_len == HANDSHAKE_HEADER_LEN {
            if hs_header[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(Reject::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            let body = usize::from(hs_header[1]) << 16
                | usize::from(hs_header[2]) << 8
                | usize::from(hs_header[3]);
            // Each record adds a header: the message alone must already fit.
            if body + HANDSHAKE_HEADER_LEN + RECORD_HEADER_LEN > MAX_CLIENT_HELLO_BYTES {
                return Err(Reject::TooLarge);
            }
            message_len = Some(body + HANDSHAKE_HEADER_LEN);
        }
        records.push((start, end.min(buf.len())));
        let payload_before = payload_total;
        payload_total += available.len();
        if let Some(needed) = message_len {
            if payload_total >= needed {
                let message = gather(buf, &records, needed);
                let mut hello =
                    parse_client_hello(message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default())?;
                hello.record_version = record_version;
                hello.len = start + (needed - payload_before);
                return Ok(Progress::Done(hello));
            }
        }
        if end > buf.len() {
            return incomplete(buf.len());
        }
        offset = end;
    }
}

/// Reports that more bytes are needed, unless the buffer is already at its bound.
fn incomplete(received: usize) -> Result<Progress, Reject> {
    if received >= MAX_CLIENT_HELLO_BYTES {
        Err(Reject::TooLarge)
    } else {
        Ok(Progress::Incomplete)
    }
}

/// Copies the first `needed` handshake bytes out of the record payloads.
fn gather(buf: &[u8], records: &[(usize, usize)], needed: usize) -> Vec<u8> {
    let mut message = Vec::with_capacity(needed);
    for &(start, end) in records {
        let want = needed - message.len();
        let chunk = buf.get(start..end).unwrap_or_default();
        message.extend_from_slice(&chunk[..chunk.len().min(want)]);
        if message.len() == needed {
            break;
        }
    }
    message
}

/// A bounds-checked reader over a byte slice: every accessor fails instead of panicking.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Cursor { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Reject> {
        if n > self.rest.len() {
            return Err(Reject::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Reject> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Reject> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], Reject> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], Reject> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
}

/// Parses a ClientHello body (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2), keeping SNI and ALPN.
fn parse_client_hello(body: &[u8]) -> Result<ClientHello, Reject> {
    let mut c = Cursor::new(body);
    let version = c.u16("truncated ClientHello version")?;
    if version >> 8 != 3 {
        return Err(Reject::Malformed("ClientHello version is not TLS"));
    }
    c.take(32, "truncated ClientHello random")?;
    let session_id = c.vec8("truncated session id")?;
    if session_id.len() > 32 {
        return Err(Reject::Malformed("session id longer than 32 bytes"));
    }
    let suites = c.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Reject::Malformed("bad cipher suite list"));
    }
    let compression = c.vec8("truncated compression methods")?;
    if compression.is_empty() {
        return Err(Reject::Malformed("no compression method"));
    }
    let mut hello = ClientHello {
        sni: None,
        alpn: Vec::new(),
        record_version: 0,
        len: 0,
    };
    // Extensions are optional in TLS 1.2 ClientHellos (and then there is no SNI).
    if c.is_empty() {
        return Ok(hello);
    }
    let extensions = c.vec16("truncated extensions")?;
    if !c.is_empty() {
        return Err(Reject::Malformed("bytes after the extensions"));
    }
    let mut exts = Cursor::new(extensions);
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let kind = exts.u16("truncated extension type")?;
        let data = exts.vec16("truncated extension")?;
        match kind {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(Reject::Malformed("duplicate server_name extension"));
                }
                hello.sni = parse_server_name(data)?;
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(Reject::Malformed("duplicate ALPN extension"));
                }
                hello.alpn = parse_alpn(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// RFC 6066 §3: a list of (name_type, name); only `host_name` exists, at most once.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, Reject> {
    // A server echoes an empty server_name extension; from a client it is simply "no name".
    if data.is_empty() {
        return Ok(None);
    }
    let mut outer = Cursor::new(data);
    let list = outer.vec16("truncated server name list")?;
    if !outer.is_empty() {
        return Err(Reject::Malformed("bytes after the server name list"));
    }
    let mut names = Cursor::new(list);
    let mut host = None;
    while !names.is_empty() {
        let kind = names.u8("truncated server name type")?;
        let name = names.vec16("truncated server name")?;
        if kind != SNI_HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err(Reject::Malformed("more than one host_name in server_name"));
        }
        host = Some(normalize_host(name)?);
    }
    Ok(host)
}

/// Checks a host name's characters and returns it lowercased without a trailing dot.
fn normalize_host(name: &[u8]) -> Result<String, Reject> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(Reject::Malformed(
            "server name empty or longer than 253 bytes",
        ));
    }
    // Host names are ASCII letters, digits, '-', '_' and dots (RFC 6066: no IP literals, no
    // U-labels); anything else cannot match a route and would only pollute logs.
    if !name
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Reject::Malformed(
            "server name has characters not allowed in a host name",
        ));
    }
    Ok(name
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// RFC 7301 §3.1: a list of non-empty protocol names with one-byte lengths.
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Reject> {
    let mut outer = Cursor::new(data);
    let list = outer.vec16("truncated ALPN list")?;
    if !outer.is_empty() || list.is_empty() {
        return Err(Reject::Malformed("bad ALPN extension"));
    }
    let mut protocols = Cursor::new(list);
    let mut alpn = Vec::new();
    while !protocols.is_empty() {
        let name = protocols.vec8("truncated ALPN protocol")?;
        if name.is_empty() {
            return Err(Reject::Malformed("empty ALPN protocol name"));
        }
        alpn.push(name.to_vec());
    }
    Ok(alpn)
}

/// Why [`read_client_hello`] stopped without a ClientHello.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes cannot be routed.
    Reject(Reject),
    /// The client closed before sending a whole ClientHello.
    Eof,
    /// Reading from the client failed.
    Io(io::Error),
}

/// Reads from `io`, appending to `buf` (which may already hold bytes), until `buf` starts with a
/// whole ClientHello. Bytes read past it stay in `buf`: the caller replays all of `buf`.
///
/// No time limit here: the caller wraps this in its `client_hello_timeout`.
pub async fn read_client_hello<R>(io: &mut R, buf: &mut Vec<u8>) -> Result<ClientHello, ReadError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    loop {
        match parse(buf) {
            Ok(Progress::Done(hello)) => return Ok(hello),
            Err(reject) => return Err(ReadError::Reject(reject)),
            Ok(Progress::Incomplete) => {}
        }
        read_more(io, buf).await?;
    }
}

/// Reads once more into `buf`, never letting it grow past [`MAX_CLIENT_HELLO_BYTES`].
pub(crate) async fn read_more<R>(io: &mut R, buf: &mut Vec<u8>) -> Result<(), ReadError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let room = MAX_CLIENT_HELLO_BYTES.saturating_sub(buf.len());
    if room == 0 {
        return Err(ReadError::Reject(Reject::TooLarge));
    }
    // A whole ClientHello usually arrives in one segment: read it in one call.
    buf.reserve(room.min(4096));
    let mut limited = (&mut *io).take(room as u64);
    match limited.read_buf(buf).await {
        Ok(0) => Err(ReadError::Eof),
        Ok(_) => Ok(()),
        Err(e) => Err(ReadError::Io(e)),
    }
}

#[cfg(test)]
#[path = "clienthello_tests.rs"]
mod tests;
