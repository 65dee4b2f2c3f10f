//! Log output: text on a terminal, JSON for log shippers, journald (with
//! structured fields) under systemd. The level filter can be swapped at run
//! time, which is how SIGHUP changes it.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// Changes the level filter of the running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    pub format: LogFormat,
}

impl LogControl {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

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
    let journald = if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => Some(layer.with_syslog_identifier("cohort".into())),
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
    Ok(LogControl { handle, format })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 99), "another stream: inherited");
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("", 0, 0));
        assert!(!names_stream("x:y", 0, 0));
    }
}
