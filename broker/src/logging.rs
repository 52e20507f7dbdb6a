//! Log set-up. Logs are safe to archive: no code path logs key material,
//! and secret types implement neither `Debug` nor `Display`.

use clap::ValueEnum;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message` and the
    /// event's fields), for journald or a log collector.
    Json,
}

/// Initialises `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The line `main` prints for an error that ended the command: text, or
/// in JSON mode an object like the log lines' (`level` `ERROR`).
pub fn fatal_line(format: LogFormat, error: &anyhow::Error) -> String {
    match format {
        LogFormat::Text => format!("broker: error: {error:#}"),
        LogFormat::Json => serde_json::json!({
            "timestamp": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "level": "ERROR",
            "message": format!("{error:#}"),
        })
        .to_string(),
    }
}
