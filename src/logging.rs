//! Structured logs through `tracing`: plain text by default, JSON with
//! `PORTCULLIS_LOG_FORMAT=json` (or `server.log_format: json`); level from `PORTCULLIS_LOG`
//! (an env-filter directive such as `info` or `portcullis=debug`) or `server.log_level`.
//! Pingora logs through the `log` crate; those records are bridged into the same output.
//!
//! Text logs escape every control character in messages and field values (`\n`, `\r`, `\t`,
//! others as `\u{1b}`): client-controlled strings — certificate subjects, SNIs, headers — must
//! never start a forged log line or drive a terminal. JSON logs escape them by the format.

pub mod access;

use crate::config::model::ServerSettings;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

pub fn init(settings: &ServerSettings) {
    let level = std::env::var("PORTCULLIS_LOG")
        .ok()
        .or_else(|| settings.log_level.clone())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("PORTCULLIS_LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => settings.log_json.unwrap_or(false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.fmt_fields(EscapedFields::default()).try_init()
    };
    if let Err(e) = result {
        eprintln!("portcullis: logging already initialised: {e}");
        return;
    }
    access::init(json);
}

/// The text formatter's fields with control characters escaped. `DefaultFields` writes
/// `Display` values (`field = %value`) and the message as they are, newlines included.
#[derive(Debug, Default)]
pub struct EscapedFields(DefaultFields);

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut text = String::new();
        self.0.format_fields(Writer::new(&mut text), fields)?;
        write_escaped(&mut writer, &text)
    }
}

/// Writes `text` with every control character (C0, DEL, C1) escaped.
pub(crate) fn write_escaped(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    let mut rest = text;
    while let Some(i) = rest.find(char::is_control) {
        out.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or_default();
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.write_str(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_escape_every_control_character() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .fmt_fields(EscapedFields::default())
            .finish();
        let subject = "CN=mallory\n2026-01-01T00:00:00Z  INFO forged: admin logged in\r";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", sni = %"a\nb");
            let _g = span.enter();
            tracing::info!(
                subject = %subject,
                debug = ?"tab\there",
                bell = %"\u{7}\u{1b}[2J\u{7f}\u{85}",
                "message with\na newline"
            );
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "one event, one line: {out:?}");
        assert!(out.ends_with('\n'));
        let line = out.trim_end_matches('\n');
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains(
                r"subject=CN=mallory\n2026-01-01T00:00:00Z  INFO forged: admin logged in\r"
            ),
            "{line}"
        );
        assert!(line.contains(r"message with\na newline"), "{line}");
        assert!(line.contains(r"bell=\u{7}\u{1b}[2J\u{7f}\u{85}"), "{line}");
        assert!(line.contains(r#"debug="tab\there""#), "{line}");
        assert!(line.contains(r"sni=a\nb"), "{line}");
    }

    #[test]
    fn plain_text_is_written_unchanged() {
        let mut s = String::new();
        write_escaped(&mut s, "path=/a b=\"c\" ünïcode ✓").unwrap();
        assert_eq!(s, "path=/a b=\"c\" ünïcode ✓");
    }
}
