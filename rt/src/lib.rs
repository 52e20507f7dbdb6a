//! What the broker and `guest-unlock` do the same way at run time, written
//! once:
//!
//! - [`hardening`]: no core dumps, not dumpable, memory locked where that
//!   cannot make allocations fail: for any process that holds keys;
//! - [`channel`]: a tonic channel over a TCP connection this crate opens and
//!   a rustls handshake it does itself, so that tonic's own TLS (and its CA
//!   handling) never runs; the caller's `ClientConfig` decides trust;
//! - [`error_chain`]: an error and its sources in one line;
//! - [`docs`]: man pages and shell completions from a clap definition.
#![forbid(unsafe_code)]

pub mod channel;
pub mod docs;
pub mod hardening;

/// An error and its sources, `outer: inner: innermost`, each cause written
/// once (libraries often repeat their source in their own message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    with_sources(e.to_string(), e)
}

/// `text` followed by the sources of `e` (not `e` itself), as
/// [`error_chain`] writes them: for errors whose own `Display` is not the
/// message to show (a gRPC status: its message, then its causes).
pub fn with_sources(mut text: String, e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_sources_once() {
        let inner = std::io::Error::other("inner cause");
        let outer = std::io::Error::other(inner);
        // io::Error shows its inner error in its own message: not twice.
        assert_eq!(error_chain(&outer), "inner cause");

        #[derive(Debug, thiserror::Error)]
        #[error("connecting failed")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(error_chain(&e), "connecting failed: refused");
        assert_eq!(
            with_sources("status text".into(), &e),
            "status text: refused"
        );
    }
}
