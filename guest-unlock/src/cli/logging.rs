//! Log lines on standard error. As text (the default) they are prefixed
//! like the other diagnostics: `guest-unlock: LEVEL: message key=value`;
//! with `--log-format json` every log line and diagnostic is one JSON
//! object (`timestamp`, `level`, `message`, the fields), while the event
//! lines ([`super::events`]) keep their documented text form. `-v` shows
//! progress (retries, brokers tried); `GUEST_UNLOCK_LOG` takes a `tracing`
//! filter.

use std::sync::OnceLock;

use clap::ValueEnum;

/// How log lines and diagnostics are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `guest-unlock: ...` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format chosen at start-up (text until then).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Installs the subscriber (a second call, in tests, is harmless).
pub fn init(verbose: bool, format: LogFormat) {
    let _ = FORMAT.set(format);
    let level = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUEST_UNLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.event_format(Prefixed).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_target(false)
            .try_init(),
    };
}

/// A diagnostic as one JSON line: `warning: ...` messages at level WARN,
/// the others at ERROR.
pub fn json_line(msg: &str) -> String {
    let (level, message) = match msg.strip_prefix("warning: ") {
        Some(rest) => ("WARN", rest),
        None => ("ERROR", msg),
    };
    use tracing_subscriber::fmt::time::FormatTime as _;
    // The same clock and format as the log lines'.
    let mut timestamp = String::new();
    let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
        &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
    );
    let mut line = serde_json::json!({
        "timestamp": timestamp,
        "level": level,
        "message": message,
    })
    .to_string();
    line.push('\n');
    line
}

/// Log lines as `guest-unlock: LEVEL: message key=value`.
struct Prefixed;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Prefixed
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        write!(writer, "guest-unlock: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::json_line;

    #[test]
    fn diagnostics_in_json_are_one_object_per_line() {
        let l = json_line("warning: cannot read /etc/crypttab: \"x\"\nsecond line");
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(
            v["message"],
            "cannot read /etc/crypttab: \"x\"\nsecond line"
        );
        let v: serde_json::Value = serde_json::from_str(&json_line("no broker answered")).unwrap();
        assert_eq!(v["level"], "ERROR");
    }
}
