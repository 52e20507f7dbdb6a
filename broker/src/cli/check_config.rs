//! `broker check-config`: reads a config file as `broker serve` would,
//! and the TLS certificate, TLS key and master key it names, without
//! starting anything. Exit 0 when `serve` could use it; 1 naming the line
//! and the field of the first problem; 2 for usage errors.

use std::path::Path;

use anyhow::bail;
use toml::de::{DeTable, DeValue};

use super::{ConfigArg, Outcome};
use broker::config::{Config, ConfigError};
use broker::tls::TlsError;

/// Checks the config; prints `config ok: FILE` on success.
pub fn run(args: ConfigArg) -> anyhow::Result<Outcome> {
    let path = &args.config;
    let text = read_config_text(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let config = match Config::parse(&text, path, base) {
        Ok(c) => c,
        // toml's message has the line, the column and a caret under the field.
        Err(e @ ConfigError::Parse { .. }) => return Err(e.into()),
        Err(ConfigError::Value { field, message, .. }) => {
            bail!("{}: {field}: {message}", at(path, &text, field))
        }
        Err(e) => return Err(e.into()),
    };
    // The files it names, as `serve` opens them (the key and master key
    // are readable by root or the broker's user only).
    if let Err(e) = broker::tls::load(&config.tls_cert, &config.tls_key) {
        let field = match &e {
            TlsError::Read { what, .. }
            | TlsError::NotPem { what, .. }
            | TlsError::Empty { what, .. }
                if what.contains("certificate") =>
            {
                "server.tls_cert"
            }
            TlsError::Certificate(_) => "server.tls_cert",
            _ => "server.tls_key",
        };
        bail!(
            "{}: {field}: {:#}",
            at(path, &text, field),
            anyhow::Error::from(e)
        );
    }
    if let Err(e) = std::fs::metadata(&config.master_key) {
        bail!(
            "{}: keys.master_key: cannot read {}: {e}",
            at(path, &text, "keys.master_key"),
            config.master_key.display()
        );
    }
    if let Some(sim) = &config.simulated {
        if let Err(e) = std::fs::metadata(&sim.ark) {
            bail!(
                "{}: attestation.simulated.ark: cannot read {}: {e}",
                at(path, &text, "attestation.simulated.ark"),
                sim.ark.display()
            );
        }
    }
    println!("config ok: {}", path.display());
    Ok(Outcome::Success)
}

/// The text of a config file. A file this user may not read is named as
/// such: the broker's files belong to root or the broker's user.
pub(super) fn read_config_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|cause| {
        if cause.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow::anyhow!(
                "cannot read config {}: {cause}; run this as root or as the broker's user",
                path.display()
            )
        } else {
            ConfigError::Read {
                path: path.to_owned(),
                cause,
            }
            .into()
        }
    })
}

/// `FILE:LINE` of a field, or `FILE` when the field is not written (a
/// default that does not fit the fields beside it).
fn at(path: &Path, text: &str, field: &str) -> String {
    match field_line(text, field) {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

/// The 1-based line of a dotted field (`server.nonce_ttl_secs`) in TOML
/// text; the line of the nearest table written when the field is not.
pub fn field_line(text: &str, field: &str) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for key in field.split('.') {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
        found = Some(k.span().start);
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|offset| text[..offset].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::field_line;

    #[test]
    fn fields_are_found_on_their_line() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n\n[attestation.kds]\ntimeout_secs = 99\n";
        assert_eq!(field_line(text, "server.listen"), Some(2));
        assert_eq!(field_line(text, "attestation.kds.timeout_secs"), Some(5));
        assert_eq!(field_line(text, "server"), Some(1));
        // Not written: no line.
        assert_eq!(field_line(text, "server.threads"), None);
        assert_eq!(field_line(text, "metrics.listen"), None);
        // Not TOML: no line.
        assert_eq!(field_line("[server", "server"), None);
    }
}
