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
/// systemd handed us its journal stream, else text.
pub fn init(level: &str, format: LogFormat) -> Result<LogControl, String> {
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("log level `{level}`: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut format = match format {
        LogFormat::Auto if under_systemd => LogFormat::Journald,
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
