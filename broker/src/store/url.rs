//! Where the store is: `[store] url` and `broker init --store-url`.
//!
//! `sqlite:PATH` or a bare PATH is the embedded SQLite database;
//! `postgres://USER@HOST/DB` (or `postgresql://`) is PostgreSQL. A password
//! in a URL is accepted but never printed: [`redact_url`] replaces it, and
//! `[store] password_file` keeps it out of the config altogether.

use std::path::PathBuf;

/// A parsed store location.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (may hold a password: print it with
    /// [`redact_url`]).
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
            StoreUrl::Postgres(u) => write!(f, "Postgres({})", redact_url(u)),
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreUrl::Postgres(u) => f.write_str(&redact_url(u)),
        }
    }
}

impl StoreUrl {
    /// Parses a store URL. Errors say what is expected.
    pub fn parse(s: &str) -> Result<StoreUrl, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(
                "the store URL is empty; write sqlite:PATH or postgres://USER@HOST/DB".into(),
            );
        }
        if let Some(rest) = s.strip_prefix("sqlite:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest.is_empty() {
                return Err("sqlite: needs a file path, e.g. sqlite:broker.db".into());
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(rest)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unknown store URL scheme {scheme:?}; write sqlite:PATH or postgres://USER@HOST/DB"
            ));
        }
        Ok(StoreUrl::Sqlite(PathBuf::from(s)))
    }
}

/// `url` with the password of its user info and any `password=` query
/// parameter replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form() {
        assert_eq!(
            StoreUrl::parse("broker.db").unwrap(),
            StoreUrl::Sqlite("broker.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:/var/lib/kb/broker.db").unwrap(),
            StoreUrl::Sqlite("/var/lib/kb/broker.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///var/b.db").unwrap(),
            StoreUrl::Sqlite("/var/b.db".into())
        );
        assert!(matches!(
            StoreUrl::parse("postgres://kb@db/kb").unwrap(),
            StoreUrl::Postgres(_)
        ));
        assert!(matches!(
            StoreUrl::parse("postgresql://kb@db/kb").unwrap(),
            StoreUrl::Postgres(_)
        ));
    }

    #[test]
    fn malformed_urls_are_refused() {
        for bad in ["", "  ", "sqlite:", "mysql://x@y/z", "http://a"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_never_print() {
        let u = "postgres://kb:s3cret@db.example:5432/kb?sslmode=require&password=s3cret";
        let r = redact_url(u);
        assert!(!r.contains("s3cret"), "{r}");
        assert_eq!(
            r,
            "postgres://kb:***@db.example:5432/kb?sslmode=require&password=***"
        );
        let parsed = StoreUrl::parse(u).unwrap();
        assert!(!format!("{parsed} {parsed:?}").contains("s3cret"));
        assert_eq!(redact_url("postgres://kb@db/kb"), "postgres://kb@db/kb");
        assert_eq!(redact_url("postgres://a:b@c"), "postgres://a:***@c");
    }
}
