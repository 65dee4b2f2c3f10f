//! Log output: text on a terminal, JSON for log shippers, journald (with
//! structured fields) under systemd. The level filter can be swapped at run
//! time, which is how SIGHUP changes it.
//!
//! Journal entries are written with journald's native protocol. Each one
//! carries, besides `MESSAGE` and `PRIORITY`:
//! - the node's identity once it is known (`NODE`, `CLUSTER`, `NODE_UUID`;
//!   see [`LogControl::identify`]), so `journalctl NODE=s1-a` works on an
//!   aggregated journal too;
//! - every field of the event and of its spans, upper-cased with no prefix
//!   (`txn = %t` becomes `TXN=...`, `peer` becomes `PEER`, `error` `ERROR`);
//!   a field whose name is already taken with another value (an event's
//!   `node` naming a peer) is written as `F_NODE`;
//! - `SYSLOG_IDENTIFIER=cohort`, `TARGET` (the Rust module), `CODE_FILE`,
//!   `CODE_LINE`.
//!
//! `MESSAGE` also ends with the fields as `key=value`, as the text format
//! shows them, so a plain `journalctl -u cohort` reads like the text log.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Changes the level filter of the running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    pub format: LogFormat,
    identity: Identity,
}

impl LogControl {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }

    /// From now on every journal entry carries `NODE`, `CLUSTER` and, once
    /// known, `NODE_UUID`. (The text and JSON formats are unchanged: one
    /// process logs for one node, and its files or streams say which.)
    pub fn identify(&self, node: &str, cluster: &str, uuid: Option<&str>) {
        let mut fields = vec![
            ("NODE".to_string(), node.to_string()),
            ("CLUSTER".to_string(), cluster.to_string()),
        ];
        if let Some(uuid) = uuid {
            fields.push(("NODE_UUID".to_string(), uuid.to_string()));
        }
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = fields;
    }
}

/// The fields every journal entry carries, set once the node is known.
type Identity = Arc<RwLock<Vec<(String, String)>>>;

/// Installs the process-wide subscriber. `format: Auto` means journald when
/// our stderr is systemd's journal stream, else text.
pub fn init(level: &str, format: LogFormat) -> Result<LogControl, String> {
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("log level `{level}`: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let mut format = match format {
        LogFormat::Auto if stderr_is_the_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let identity = Identity::default();
    let journald = if format == LogFormat::Journald {
        match JournalLayer::connect(Arc::clone(&identity)) {
            Ok(layer) => Some(layer),
            Err(_) => {
                format = LogFormat::Text;
                None
            }
        }
    } else {
        None
    };
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .flatten_event(true)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(journald)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(LogControl {
        handle,
        format,
        identity,
    })
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for the stderr it connects to
/// the journal. Children inherit the variable even when their stderr goes
/// elsewhere (a file, a pipe), so it counts only if it names our stderr
/// (as systemd.exec(5) advises).
fn stderr_is_the_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    names_stream(&value.to_string_lossy(), stat.st_dev, stat.st_ino)
}

fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Values are cut to these sizes so that an entry always fits in one
/// datagram (journald's socket takes far more; the sender's buffer is the
/// limit, ~200 KiB by default).
const MAX_MESSAGE: usize = 48 * 1024;
const MAX_VALUE: usize = 8 * 1024;

/// Where entries go: journald's socket, or a buffer in tests.
enum Sink {
    Journal(UnixDatagram),
    #[cfg(test)]
    Capture(Arc<std::sync::Mutex<Vec<Vec<u8>>>>),
}

/// A tracing layer that writes each event as one journal entry.
struct JournalLayer {
    sink: Sink,
    identity: Identity,
}

impl JournalLayer {
    fn connect(identity: Identity) -> std::io::Result<JournalLayer> {
        let socket = UnixDatagram::unbound()?;
        // An empty datagram, which journald discards: fails at once when
        // nobody listens.
        socket.send_to(&[], JOURNAL_SOCKET)?;
        Ok(JournalLayer {
            sink: Sink::Journal(socket),
            identity,
        })
    }

    fn send(&self, entry: &[u8], message: &str) {
        match &self.sink {
            Sink::Journal(socket) => {
                if socket.send_to(entry, JOURNAL_SOCKET).is_err() {
                    // journald is gone or the entry was refused: our stderr
                    // is the journal's stream, so the text still gets there.
                    eprintln!("{message}");
                }
            }
            #[cfg(test)]
            Sink::Capture(entries) => entries.lock().unwrap().push(entry.to_vec()),
        }
    }
}

/// A span's fields, kept in its extensions for the events inside it.
struct SpanFields(Vec<(String, String)>);

impl<S> Layer<S> for JournalLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(SpanFields(known)) => known.extend(fields.fields),
            None => extensions.insert(SpanFields(fields.fields)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut span_fields = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                    span_fields.extend(f.iter().cloned());
                }
            }
        }
        let meta = event.metadata();
        let identity = self
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let entry = Entry {
            level: *meta.level(),
            target: meta.target(),
            file: meta.file(),
            line: meta.line(),
            identity: &identity,
            span_fields: &span_fields,
            message: &fields.message,
            fields: &fields.fields,
        };
        let (bytes, message) = entry.encode();
        self.send(&bytes, &message);
    }
}

/// An event's message and fields as text.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

/// One journal entry before encoding.
struct Entry<'a> {
    level: Level,
    target: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
    identity: &'a [(String, String)],
    span_fields: &'a [(String, String)],
    message: &'a str,
    fields: &'a [(String, String)],
}

impl Entry<'_> {
    /// The native protocol's bytes, and the text line (the message with
    /// its fields) for the fallback to stderr.
    fn encode(&self) -> (Vec<u8>, String) {
        let mut text = self.message.to_string();
        for (name, value) in self.span_fields.iter().chain(self.fields) {
            let _ = write!(text, " {name}={value}");
        }
        let mut fields: Vec<(String, &str)> = vec![
            ("MESSAGE".into(), truncate(&text, MAX_MESSAGE)),
            ("PRIORITY".into(), priority(self.level)),
            ("SYSLOG_IDENTIFIER".into(), "cohort"),
            ("TARGET".into(), self.target),
        ];
        let line = self.line.map(|l| l.to_string());
        if let Some(file) = self.file {
            fields.push(("CODE_FILE".into(), file));
        }
        if let Some(line) = line.as_deref() {
            fields.push(("CODE_LINE".into(), line));
        }
        for (name, value) in self.identity {
            fields.push((name.clone(), value));
        }
        // Names journald or this layer set: an event may not replace them.
        let reserved = fields.len();
        for (name, value) in self.span_fields.iter().chain(self.fields) {
            let Some(name) = journal_name(name) else {
                continue;
            };
            let value = truncate(value, MAX_VALUE);
            let set = &fields[..reserved];
            if set.iter().any(|(n, _)| *n == name) {
                if !set.iter().any(|(n, v)| *n == name && *v == value) {
                    fields.push((format!("F_{name}"), value));
                }
            } else {
                fields.push((name, value));
            }
        }
        let mut out = Vec::with_capacity(256 + text.len());
        for (name, value) in &fields {
            put_field(&mut out, name, value);
        }
        (out, text)
    }
}

fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    }
}

/// A journal field name: upper-case ASCII letters, digits and `_`, not
/// starting with `_` (those are journald's trusted fields) or a digit, at
/// most 64 characters. None when nothing is left.
fn journal_name(name: &str) -> Option<String> {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    let start = out.find(|c: char| c != '_' && !c.is_ascii_digit())?;
    out.drain(..start);
    out.truncate(64);
    Some(out)
}

/// `NAME=value\n`, or the binary form when the value has a newline.
fn put_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 99), "another stream: inherited");
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("", 0, 0));
        assert!(!names_stream("x:y", 0, 0));
    }

    /// Decodes the native protocol: each field with all its values.
    fn decode(mut bytes: &[u8]) -> BTreeMap<String, Vec<String>> {
        let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n').unwrap();
            let line = &bytes[..end];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                let name = String::from_utf8(line[..eq].to_vec()).unwrap();
                let value = String::from_utf8(line[eq + 1..].to_vec()).unwrap();
                fields.entry(name).or_default().push(value);
                bytes = &bytes[end + 1..];
            } else {
                let name = String::from_utf8(line.to_vec()).unwrap();
                let rest = &bytes[end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = String::from_utf8(rest[8..8 + len].to_vec()).unwrap();
                assert_eq!(rest[8 + len], b'\n');
                fields.entry(name).or_default().push(value);
                bytes = &rest[8 + len + 1..];
            }
        }
        fields
    }

    fn capture(run: impl FnOnce(&Identity)) -> Vec<BTreeMap<String, Vec<String>>> {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let identity = Identity::default();
        let layer = JournalLayer {
            sink: Sink::Capture(Arc::clone(&entries)),
            identity: Arc::clone(&identity),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || run(&identity));
        let entries = entries.lock().unwrap();
        entries.iter().map(|e| decode(e)).collect()
    }

    fn one(entry: &BTreeMap<String, Vec<String>>, name: &str) -> String {
        let values = entry
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {entry:?}"));
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        values[0].clone()
    }

    #[test]
    fn entries_carry_the_node_and_every_field_unprefixed() {
        let entries = capture(|identity| {
            tracing::info!("before the node is known");
            *identity.write().unwrap() = vec![
                ("NODE".into(), "s1-a".into()),
                ("CLUSTER".into(), "orders".into()),
                ("NODE_UUID".into(), "u-1".into()),
            ];
            let span = tracing::info_span!("apply", txn = "t-9");
            let _in = span.enter();
            tracing::warn!(peer = %"10.0.0.2:3301", "peer slow");
            tracing::info!(node = "s1-a", "same node: written once");
            tracing::info!(node = "s1-b", "another node: kept apart");
            tracing::error!(error = "two\nlines", "multi-line value");
        });
        assert_eq!(entries.len(), 5);
        assert_eq!(one(&entries[0], "MESSAGE"), "before the node is known");
        assert!(!entries[0].contains_key("NODE"));
        assert_eq!(one(&entries[0], "PRIORITY"), "6");
        assert_eq!(one(&entries[0], "SYSLOG_IDENTIFIER"), "cohort");
        assert!(one(&entries[0], "CODE_FILE").ends_with("logging.rs"));

        let slow = &entries[1];
        assert_eq!(one(slow, "NODE"), "s1-a");
        assert_eq!(one(slow, "CLUSTER"), "orders");
        assert_eq!(one(slow, "NODE_UUID"), "u-1");
        assert_eq!(one(slow, "TXN"), "t-9");
        assert_eq!(one(slow, "PEER"), "10.0.0.2:3301");
        assert_eq!(one(slow, "PRIORITY"), "4");
        assert_eq!(one(slow, "MESSAGE"), "peer slow txn=t-9 peer=10.0.0.2:3301");

        assert_eq!(one(&entries[2], "NODE"), "s1-a");
        assert!(!entries[2].contains_key("F_NODE"));
        assert_eq!(one(&entries[3], "NODE"), "s1-a");
        assert_eq!(one(&entries[3], "F_NODE"), "s1-b");

        assert_eq!(one(&entries[4], "ERROR"), "two\nlines");
        assert_eq!(one(&entries[4], "PRIORITY"), "3");
    }

    #[test]
    fn field_names_follow_journald_rules() {
        assert_eq!(journal_name("txn").as_deref(), Some("TXN"));
        assert_eq!(journal_name("s.last").as_deref(), Some("S_LAST"));
        assert_eq!(journal_name("_pid").as_deref(), Some("PID"));
        assert_eq!(journal_name("9lives").as_deref(), Some("LIVES"));
        assert_eq!(journal_name("__"), None);
        assert_eq!(journal_name(&"x".repeat(100)).map(|n| n.len()), Some(64));
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let text = "é".repeat(10);
        assert_eq!(truncate(&text, 5), "éé");
        assert_eq!(truncate("short", 100), "short");
    }
}
