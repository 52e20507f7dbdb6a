//! AMD's Key Distribution Service as a [`CertSource`]: online, off by
//! default (`[attestation.kds] enabled = true` turns it on).
//!
//! When neither the guest's table, the offline directory nor the cache holds
//! the VCEK of a report, this source fetches
//! `GET {url}/vcek/v1/{Milan|Genoa|Turin}/{hwid}?[fmcSPL=..&]blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
//! (hwID in lower-case hex: 64 bytes, or 8 on Turin; SPLs in decimal, two
//! digits at least, from REPORTED_TCB; `fmcSPL` on Turin only), and, once per
//! generation, `.../cert_chain` (ASK and ARK) and `.../crl` (the ARK's
//! CRL, fetched again when past its nextUpdate). Everything fetched is
//! verified against the pinned ARK before it is stored in the certificate
//! cache, keyed by generation, hwID and TCB, so the next report of that chip
//! and TCB is served from the cache without a request. VLEKs are issued to
//! cloud providers and are not on the public KDS: this source never asks for
//! one.
//!
//! The verifier runs synchronously in the request path, so a fetch is
//! bounded by `timeout_secs` (the first report of a new chip or TCB pays
//! for it). Requests to the host are spaced by `min_interval_ms`; a request
//! that would have to wait longer than the timeout is not sent. On HTTP 429
//! the source backs off for `max(Retry-After, exponential)` capped by
//! `max_backoff_secs` (other failures back off exponentially too), and
//! while it backs off every verification that needs KDS fails at once with
//! `EVIDENCE_CERT_UNAVAILABLE` instead of waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::cache::{candidate_generations, hwid_of, vek_tcb_key, CertCache};
use super::http::{self, Limits, Url};
use super::import::validate_crl;
use super::Counter;
use crate::verify::{
    certs_from_pem_or_der, decode_tcb, verify_chain, CertQuery, CertRole, CertSet, CertSource,
    CertificatesRejected, EvidenceRejected, Generation, SignerKind, TrustStore, VekInfo,
};

/// AMD KDS's public address.
pub const DEFAULT_KDS_URL: &str = "https://kdsintf.amd.com";
/// Default overall deadline of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default spacing of requests to the host.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Default cap of the backoff.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a failed (or absent) cert_chain or CRL is not asked for again.
pub const AUX_RETRY: Duration = Duration::from_secs(3600);

/// How the KDS source talks to KDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdsSettings {
    /// Base URL, `https://kdsintf.amd.com` by default.
    pub url: String,
    /// Overall deadline of one request (connect, TLS, response).
    pub timeout: Duration,
    /// Least time between two requests to the host.
    pub min_interval: Duration,
    /// Longest backoff after failures or HTTP 429.
    pub max_backoff: Duration,
}

impl Default for KdsSettings {
    fn default() -> Self {
        KdsSettings {
            url: DEFAULT_KDS_URL.into(),
            timeout: DEFAULT_TIMEOUT,
            min_interval: DEFAULT_MIN_INTERVAL,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// KDS's name of a generation in its URLs.
pub fn kds_product(g: Generation) -> &'static str {
    match g {
        Generation::Milan => "Milan",
        Generation::Genoa => "Genoa",
        Generation::Turin => "Turin",
    }
}

/// The path and query of a VCEK request (after the base URL).
pub fn vcek_path(g: Generation, chip_id: &[u8; 64], reported_tcb: [u8; 8]) -> String {
    let t = decode_tcb(reported_tcb, g);
    let fmc = match g {
        Generation::Turin => format!("fmcSPL={:02}&", t.fmc.unwrap_or(0)),
        _ => String::new(),
    };
    format!(
        "/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
        kds_product(g),
        hex::encode(hwid_of(g, chip_id)),
        t.bootloader,
        t.tee,
        t.snp,
        t.microcode
    )
}

#[derive(Debug)]
struct HostState {
    next_slot: Instant,
    backoff_until: Option<Instant>,
    backoff: Duration,
    last_reason: String,
    aux_attempts: HashMap<String, Instant>,
}

/// Why a request was not answered with 200 or 404.
#[derive(Debug)]
enum Fail {
    /// Not sent: backing off or rate limited (already counted).
    NotSent(String),
    /// Sent, and it failed.
    Failed(String),
}

impl Fail {
    fn detail(&self) -> &str {
        match self {
            Fail::NotSent(s) | Fail::Failed(s) => s,
        }
    }
}

/// Fetches VCEKs (and, once per generation, the ASK chain and the ARK's
/// CRL) from AMD KDS into the certificate cache.
#[derive(Debug)]
pub struct KdsSource {
    base: Url,
    settings: KdsSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    cache: Arc<CertCache>,
    store: TrustStore,
    state: Mutex<HostState>,
    /// Held while a VCEK is fetched, so that concurrent reports of one new
    /// chip make one request: the others find it in the cache after it.
    fetching: Mutex<()>,
}

impl KdsSource {
    /// A source fetching from `settings.url` into `cache`, verifying what it
    /// fetches against `store`.
    pub fn new(
        settings: KdsSettings,
        cache: Arc<CertCache>,
        store: TrustStore,
    ) -> Result<Self, http::HttpError> {
        let base = Url::parse(&settings.url)?;
        let tls = if base.https {
            Some(http::tls_config()?)
        } else {
            None
        };
        Ok(KdsSource {
            base,
            settings,
            tls,
            cache,
            store,
            state: Mutex::new(HostState {
                next_slot: Instant::now(),
                backoff_until: None,
                backoff: Duration::ZERO,
                last_reason: String::new(),
                aux_attempts: HashMap::new(),
            }),
            fetching: Mutex::new(()),
        })
    }

    /// The cache this source stores into.
    pub fn cache(&self) -> &Arc<CertCache> {
        &self.cache
    }

    /// Time left in the current backoff, if any.
    pub fn backing_off(&self) -> Option<Duration> {
        let st = self.state.lock().ok()?;
        st.backoff_until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Takes the next request slot for the host, waiting at most the
    /// timeout; refuses at once while backing off.
    fn reserve(&self) -> Result<(), Fail> {
        let now = Instant::now();
        let wait = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| Fail::NotSent("KDS state poisoned".into()))?;
            if let Some(until) = st.backoff_until.filter(|u| *u > now) {
                let left = until - now;
                return Err(Fail::NotSent(format!(
                    "AMD KDS ({}) is being backed off for another {} s after {}",
                    self.base.authority(),
                    left.as_secs() + u64::from(left.subsec_nanos() > 0),
                    st.last_reason
                )));
            }
            let slot = st.next_slot.max(now);
            let wait = slot - now;
            if wait > self.settings.timeout {
                return Err(Fail::NotSent(format!(
                    "the rate limit for AMD KDS ({}) is exhausted: the next request slot is {} ms away",
                    self.base.authority(),
                    wait.as_millis()
                )));
            }
            st.next_slot = slot + self.settings.min_interval;
            wait
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        Ok(())
    }

    fn back_off(&self, retry_after: Option<Duration>, reason: String) {
        if let Ok(mut st) = self.state.lock() {
            let next = if st.backoff.is_zero() {
                Duration::from_secs(1)
            } else {
                st.backoff.saturating_mul(2)
            };
            let cap = self.settings.max_backoff;
            st.backoff = next.min(cap);
            let delay = next.max(retry_after.unwrap_or_default()).min(cap);
            st.backoff_until = Some(Instant::now() + delay);
            st.last_reason = reason;
        }
    }

    fn succeeded(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.backoff = Duration::ZERO;
            st.backoff_until = None;
        }
    }

    /// One GET: `Ok(Some(body))` on 200, `Ok(None)` on 404.
    fn request(&self, path: &str) -> Result<Option<Vec<u8>>, Fail> {
        if let Err(f) = self.reserve() {
            self.cache.bump(Counter::KdsBackoffRefusal);
            return Err(f);
        }
        self.cache.bump(Counter::KdsRequest);
        let fail = |reason: String, retry_after: Option<Duration>| {
            self.cache.bump(Counter::KdsFailure);
            tracing::warn!(url = %format!("{}{path}", self.settings.url), reason = %reason, "AMD KDS request failed; backing off");
            self.back_off(retry_after, reason.clone());
            Fail::Failed(reason)
        };
        match http::get(
            &self.base,
            path,
            self.settings.timeout,
            self.tls.as_ref(),
            Limits::default(),
        ) {
            Ok(r) if r.status == 200 => {
                self.succeeded();
                Ok(Some(r.body))
            }
            Ok(r) if r.status == 404 => {
                self.succeeded();
                Ok(None)
            }
            Ok(r) if r.status == 429 => {
                let retry_after = r
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Err(fail(
                    format!(
                        "HTTP 429 Too Many Requests (Retry-After: {})",
                        r.header("retry-after").unwrap_or("none")
                    ),
                    retry_after,
                ))
            }
            Ok(r) => Err(fail(format!("HTTP status {}", r.status), None)),
            Err(e) => Err(fail(e.to_string(), None)),
        }
    }

    /// Whether the auxiliary `what` (cert_chain, crl) of `g` may be asked
    /// for now; records the attempt.
    fn aux_due(&self, key: String) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        match st.aux_attempts.get(&key) {
            Some(t) if now.duration_since(*t) < AUX_RETRY => false,
            _ => {
                st.aux_attempts.insert(key, now);
                true
            }
        }
    }

    /// Fetches `.../cert_chain` of `g` when the cache has none.
    fn refresh_chain(&self, g: Generation, now: OffsetDateTime) {
        if self.cache.intermediate(g, false, CertRole::Ask).is_some()
            || self.cache.intermediate(g, true, CertRole::Ask).is_some()
            || !self.aux_due(format!("{g}/cert_chain"))
        {
            return;
        }
        let path = format!("/vcek/v1/{}/cert_chain", kds_product(g));
        let Ok(Some(pem)) = self.request(&path) else {
            return;
        };
        let certs = certs_from_pem_or_der(&pem);
        let result = (|| {
            let [ask, ark] = certs.as_slice() else {
                return Err(format!(
                    "expected ASK and ARK, got {} certificates",
                    certs.len()
                ));
            };
            let root = self
                .store
                .verify_intermediate(ask, CertRole::Ask, &[], now)
                .map_err(|e| e.to_string())?;
            if root.ark != *ark || root.generation != g {
                return Err("its ARK is not the pinned ARK of this generation".into());
            }
            let mut out = super::pem_encode("CERTIFICATE", ask);
            out.push_str(&super::pem_encode("CERTIFICATE", ark));
            self.cache
                .write(
                    &self.cache.chain_path(g, root.simulated, CertRole::Ask),
                    out.as_bytes(),
                )
                .map_err(|e| format!("cannot store it: {e}"))
        })();
        if let Err(e) = result {
            self.cache.bump(Counter::KdsFailure);
            tracing::warn!(generation = %g, error = %e, "AMD KDS cert_chain refused");
        }
    }

    /// Fetches `.../crl` of `g` when the cache has none or it is stale.
    fn refresh_crl(&self, g: Generation, now: OffsetDateTime) {
        let fresh = |sim: bool| {
            self.cache
                .read(&self.cache.crl_path(g, sim, CertRole::Ark))
                .and_then(|der| {
                    crate::verify::parse_crl(&der)
                        .ok()
                        .map(|c| c.next_update().is_none_or(|n| n.to_datetime() > now))
                })
                .unwrap_or(false)
        };
        if fresh(false) || fresh(true) || !self.aux_due(format!("{g}/crl")) {
            return;
        }
        let path = format!("/vcek/v1/{}/crl", kds_product(g));
        let Ok(Some(body)) = self.request(&path) else {
            return;
        };
        let der = if body.starts_with(b"-----") {
            crate::verify::pem_blocks(&body, "X509 CRL")
                .into_iter()
                .next()
                .unwrap_or_default()
        } else {
            body
        };
        let result = validate_crl(&self.store, &self.cache, &der, &[], now)
            .map_err(|e| e.to_string())
            .and_then(|(root, issuer, _)| {
                self.cache
                    .write(&self.cache.crl_path(g, root.simulated, issuer), &der)
                    .map_err(|e| format!("cannot store it: {e}"))
            });
        if let Err(e) = result {
            self.cache.bump(Counter::KdsFailure);
            tracing::warn!(generation = %g, error = %e, "AMD KDS CRL refused");
        }
    }

    /// Fetches, verifies and stores the VCEK of `q` for generation `g`.
    fn fetch_vcek(
        &self,
        g: Generation,
        q: &CertQuery<'_>,
        certs: &mut CertSet,
    ) -> Result<bool, EvidenceRejected> {
        let hwid = hwid_of(g, q.chip_id);
        let want_tcb = super::cache::tcb_key(g, &decode_tcb(q.reported_tcb, g));
        let _one_at_a_time = self.fetching.lock();
        // Another report of this chip and TCB may have fetched it meanwhile.
        for sim in [false, true] {
            if let Some(der) = self
                .cache
                .read(&self.cache.vcek_path(g, sim, hwid, want_tcb))
            {
                certs.vcek = Some(der.as_ref().clone());
                if certs.ask.is_none() {
                    certs.ask = self.cache.intermediate(g, sim, CertRole::Ask);
                }
                certs.fill_from(CertSet {
                    crls: self.cache.crls(g, sim),
                    ..CertSet::default()
                });
                return Ok(true);
            }
        }
        let path = vcek_path(g, q.chip_id, q.reported_tcb);
        let der = match self.request(&path) {
            Ok(Some(der)) => der,
            Ok(None) => return Ok(false),
            Err(f) => {
                if matches!(f, Fail::NotSent(_)) {
                    tracing::info!(reason = %f.detail(), "VCEK not fetched from AMD KDS");
                }
                return Err(CertificatesRejected::Unavailable {
                    role: CertRole::Vcek,
                    detail: format!(
                        "not in the certificate cache, and AMD KDS could not be asked: {}",
                        f.detail()
                    ),
                }
                .into());
            }
        };
        self.refresh_chain(g, q.now);
        self.refresh_crl(g, q.now);
        let refuse = |e: EvidenceRejected| {
            self.cache.bump(Counter::KdsFailure);
            tracing::warn!(error = %e, "VCEK from AMD KDS refused");
            e
        };
        let info = VekInfo::from_der(&der, CertRole::Vcek).map_err(refuse)?;
        if info.hwid.as_deref() != Some(hwid) || vek_tcb_key(g, &info) != want_tcb {
            return Err(refuse(
                crate::verify::BindingRejected::HwidMismatch {
                    expected: hex::encode(info.hwid.unwrap_or_default()),
                    actual: format!(
                        "{} (AMD KDS answered with the VCEK of another chip or TCB)",
                        hex::encode(hwid)
                    ),
                }
                .into(),
            ));
        }
        let mut set = CertSet {
            vcek: Some(der.clone()),
            ..CertSet::default()
        };
        for sim in [false, true] {
            if set.ask.is_none() {
                set.ask = self.cache.intermediate(g, sim, CertRole::Ask);
            }
            set.fill_from(CertSet {
                crls: self.cache.crls(g, sim),
                ..CertSet::default()
            });
        }
        let chain = verify_chain(&self.store, g, SignerKind::Vcek, &set, q.now).map_err(refuse)?;
        let dest = self
            .cache
            .vcek_path(g, chain.simulated, hwid, vek_tcb_key(g, &info));
        if let Err(e) = self.cache.write(&dest, &der) {
            tracing::warn!(path = %dest.display(), error = %e, "cannot store a VCEK in the certificate cache");
        }
        self.cache.bump(Counter::KdsFetched);
        tracing::info!(generation = %g, hwid = %hex::encode(hwid), "VCEK fetched from AMD KDS and cached");
        certs.fill_from(set);
        Ok(true)
    }
}

impl CertSource for KdsSource {
    fn fill(&self, q: &CertQuery<'_>, certs: &mut CertSet) -> Result<(), EvidenceRejected> {
        if q.signer != SignerKind::Vcek {
            // VLEKs are issued to cloud providers, not served by public KDS.
            return Ok(());
        }
        if certs.vcek.is_some() {
            if let Some(g) = q.generation {
                self.refresh_crl(g, q.now);
                for sim in [false, true] {
                    certs.fill_from(CertSet {
                        crls: self.cache.crls(g, sim),
                        ..CertSet::default()
                    });
                }
            }
            return Ok(());
        }
        if q.chip_id.iter().all(|&b| b == 0) {
            // MASK_CHIP_ID: KDS cannot be asked without the hwID.
            return Ok(());
        }
        for g in candidate_generations(q.generation) {
            if self.fetch_vcek(g, q, certs)? {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcek_urls_follow_kds() {
        let mut chip = [0u8; 64];
        chip[..8].copy_from_slice(&[0x3b, 0x42, 0x09, 0x2f, 0x69, 0xc6, 0x56, 0xd3]);
        assert_eq!(
            vcek_path(Generation::Turin, &chip, [0, 1, 0, 2, 0, 0, 0, 0x47]),
            "/vcek/v1/Turin/3b42092f69c656d3?fmcSPL=00&blSPL=01&teeSPL=00&snpSPL=02&ucodeSPL=71"
        );
        let p = vcek_path(Generation::Milan, &[0xd4; 64], [3, 0, 0, 0, 0, 0, 8, 115]);
        assert!(p.starts_with("/vcek/v1/Milan/d4d4"), "{p}");
        assert!(
            p.ends_with("?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"),
            "{p}"
        );
        assert_eq!(
            p.len(),
            "/vcek/v1/Milan/".len() + 128 + "?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115".len()
        );
    }
}
