//! Prometheus metrics: counters and a latency histogram kept in process,
//! rendered in the text exposition format (0.0.4) on a listener of their
//! own (`[metrics] listen`), never on the guest or admin ports.
//!
//! Metrics carry no secrets and no volume names (a volume name can be
//! sensitive and would make the label set unbounded); reason codes are a
//! closed set ([`crate::error::ALL_REASON_CODES`] and the verifier's codes).
//!
//! The HTTP side is deliberately tiny: one `GET /metrics` per connection,
//! request head at most 8 KiB, answered and closed. Anything else gets 404,
//! 405 or 400; it never reads a body.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the release latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Largest request head the metrics listener reads.
const MAX_HEAD: usize = 8 * 1024;

/// The broker's metrics. One instance per process: [`global`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// (kind, verdict, reason) → count; reason "" when allowed.
    decisions: Mutex<BTreeMap<(&'static str, &'static str, String), u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    store_errors: AtomicU64,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

/// Decision kinds counted: the audit kinds of the guest-facing service.
/// Anything else (a bug) is counted as "other".
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "challenge" => "challenge",
        "attest" => "attest",
        "rotation" => "rotation",
        _ => "other",
    }
}

/// A verdict as audited: "allow", "deny" or "error".
fn verdict_str(v: &str) -> &'static str {
    match v {
        "allow" => "allow",
        "deny" => "deny",
        _ => "error",
    }
}

/// Reason codes are upper-case words; anything else is folded into
/// "OTHER" so a bug cannot make the label set unbounded or inject text.
fn reason_label(code: &str) -> String {
    if !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        code.to_owned()
    } else {
        "OTHER".to_owned()
    }
}

impl Metrics {
    /// Counts one decision: once per reason code, or once with an empty
    /// reason when there is none.
    pub fn decision(&self, kind: &str, verdict: &str, reasons: &[String]) {
        let mut d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        let (k, v) = (kind_label(kind), verdict_str(verdict));
        if reasons.is_empty() {
            *d.entry((k, v, String::new())).or_default() += 1;
        }
        for r in reasons {
            *d.entry((k, v, reason_label(r))).or_default() += 1;
        }
    }

    /// Records how long one Attest took to answer.
    pub fn release_latency(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a failed store operation.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric (certificate cache
    /// counters come from [`crate::certsource::stats`]).
    pub fn render(&self) -> String {
        self.render_with(&crate::certsource::stats())
    }

    fn render_with(&self, certs: &crate::certsource::CacheStats) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP keybroker_decisions_total Challenge, Attest and ConfirmRotation decisions by verdict and reason code.\n\
             # TYPE keybroker_decisions_total counter\n",
        );
        {
            let d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
            for ((kind, verdict, reason), n) in d.iter() {
                let _ = writeln!(
                    out,
                    "keybroker_decisions_total{{kind=\"{kind}\",verdict=\"{verdict}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP keybroker_release_duration_seconds Time to answer an Attest, verification included.\n\
             # TYPE keybroker_release_duration_seconds histogram\n",
        );
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "keybroker_release_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "keybroker_release_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "keybroker_release_duration_seconds_sum {}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "keybroker_release_duration_seconds_count {count}");
        for (name, help, v) in [
            (
                "keybroker_cert_cache_hits_total",
                "VEK lookups (not sent by the guest) served from the certificate cache.",
                certs.hits,
            ),
            (
                "keybroker_cert_cache_misses_total",
                "VEK lookups (not sent by the guest) the certificate cache could not serve.",
                certs.misses,
            ),
            (
                "keybroker_kds_requests_total",
                "HTTP requests sent to AMD KDS.",
                certs.kds_requests,
            ),
            (
                "keybroker_kds_fetched_total",
                "VEKs fetched from AMD KDS, verified and stored in the cache.",
                certs.kds_fetched,
            ),
            (
                "keybroker_kds_failures_total",
                "AMD KDS requests that failed or whose answer did not verify.",
                certs.kds_failures,
            ),
            (
                "keybroker_kds_backoff_refusals_total",
                "AMD KDS lookups refused at once (backing off after a failure or 429, or rate limit).",
                certs.kds_backoff_refusals,
            ),
            (
                "keybroker_store_errors_total",
                "Store operations that failed.",
                self.store_errors.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

/// What the metrics listener answers to one request head.
fn respond(head: &[u8], body: impl FnOnce() -> String) -> (u16, &'static str, String) {
    let Some(line_end) = head.windows(2).position(|w| w == b"\r\n") else {
        return (400, "Bad Request", "bad request\n".into());
    };
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return (400, "Bad Request", "bad request\n".into());
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(proto), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (400, "Bad Request", "bad request\n".into());
    };
    if !matches!(proto, "HTTP/1.0" | "HTTP/1.1") {
        return (400, "Bad Request", "bad request\n".into());
    }
    if method != "GET" {
        return (405, "Method Not Allowed", "only GET /metrics\n".into());
    }
    if target != "/metrics" {
        return (404, "Not Found", "only GET /metrics\n".into());
    }
    (200, "OK", body())
}

async fn serve_one(mut conn: tokio::net::TcpStream, metrics: &'static Metrics) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() <= MAX_HEAD {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    let complete = matches!(
        tokio::time::timeout(Duration::from_secs(5), read).await,
        Ok(true)
    );
    let (code, text, body) = if !complete || head.len() > MAX_HEAD {
        (400, "Bad Request", "bad request\n".to_owned())
    } else {
        respond(&head, || metrics.render())
    };
    let reply = format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves [`global`] metrics on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(serve_one(conn, global()));
            }
            Err(e) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_in_prometheus_format() {
        let m = Metrics::default();
        m.decision("attest", "allow", &[]);
        m.decision(
            "attest",
            "deny",
            &[
                "POLICY_DEBUG_ALLOWED".into(),
                "POLICY_TCB_BELOW_MINIMUM".into(),
            ],
        );
        m.decision("attest", "deny", &["POLICY_DEBUG_ALLOWED".into()]);
        m.decision("challenge", "weird", &["bad label\"}".into()]);
        m.decision("nonsense", "deny", &[]);
        m.release_latency(Duration::from_micros(800));
        m.release_latency(Duration::from_millis(30));
        m.store_error();
        let certs = crate::certsource::CacheStats {
            hits: 2,
            misses: 1,
            kds_fetched: 4,
            ..Default::default()
        };
        let text = m.render_with(&certs);
        for line in [
            "keybroker_decisions_total{kind=\"attest\",verdict=\"allow\",reason=\"\"} 1",
            "keybroker_decisions_total{kind=\"attest\",verdict=\"deny\",reason=\"POLICY_DEBUG_ALLOWED\"} 2",
            "keybroker_decisions_total{kind=\"attest\",verdict=\"deny\",reason=\"POLICY_TCB_BELOW_MINIMUM\"} 1",
            "keybroker_decisions_total{kind=\"challenge\",verdict=\"error\",reason=\"OTHER\"} 1",
            "keybroker_decisions_total{kind=\"other\",verdict=\"deny\",reason=\"\"} 1",
            "keybroker_release_duration_seconds_bucket{le=\"0.0005\"} 0",
            "keybroker_release_duration_seconds_bucket{le=\"0.001\"} 1",
            "keybroker_release_duration_seconds_bucket{le=\"0.02\"} 1",
            "keybroker_release_duration_seconds_bucket{le=\"0.05\"} 2",
            "keybroker_release_duration_seconds_bucket{le=\"+Inf\"} 2",
            "keybroker_release_duration_seconds_count 2",
            "keybroker_release_duration_seconds_sum 0.0308",
            "keybroker_cert_cache_hits_total 2",
            "keybroker_cert_cache_misses_total 1",
            "keybroker_kds_fetched_total 4",
            "keybroker_store_errors_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let ok = || "x".to_owned();
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", ok).0,
            200
        );
        assert_eq!(respond(b"GET /metrics HTTP/1.0\r\n\r\n", ok).0, 200);
        assert_eq!(respond(b"POST /metrics HTTP/1.1\r\n\r\n", ok).0, 405);
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", ok).0, 404);
        assert_eq!(respond(b"GET /metrics?x HTTP/1.1\r\n\r\n", ok).0, 404);
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1",
        ] {
            assert_eq!(
                respond(bad, ok).0,
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn listener_serves_metrics_and_refuses_oversized_heads() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        global().store_error();
        let task = tokio::spawn(serve(l));
        let get = |req: Vec<u8>| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            // The server may answer and close before reading everything.
            let _ = c.write_all(&req).await;
            let mut out = Vec::new();
            c.read_to_end(&mut out)
                .await
                .map(|_| String::from_utf8_lossy(&out).into_owned())
        };
        let ok = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
            .await
            .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\nkeybroker_store_errors_total "), "{ok}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        // Refused: a 400, or a reset because the rest was never read.
        match get(huge).await {
            Ok(bad) => assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        task.abort();
    }
}
