//! The broker's configuration file (`broker.toml`), parsed without I/O and
//! then resolved against the directory that holds it.
//!
//! Secure by default: the guest port is TLS only, administration is on a
//! Unix socket (0600, peer uids checked) unless `[admin] tcp_listen` adds a
//! mutual-TLS listener (refused without `client_ca`), never on the guest
//! port, and a simulated SEV-SNP platform is trusted only
//! when `[attestation.simulated]` names its root certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::verify::Generation;

/// Largest gRPC message accepted by default (a report plus a certificate
/// table is about 5 KiB; 64 KiB leaves room for long volume lists).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default time a guest has to confirm a pending key after the Attest
/// that released it.
pub const DEFAULT_ROTATION_SESSION_TTL_SECS: u32 = 900;
/// Default lifetime of a challenge nonce.
pub const DEFAULT_NONCE_TTL_SECS: u32 = 60;
/// Default time a retired key version is kept before `purge_retired` may
/// destroy it (old snapshots and backups may still need it).
pub const DEFAULT_RETIRED_RETENTION_DAYS: u32 = 30;

/// The file as written (relative paths, optional fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    store: RawStore,
    keys: RawKeys,
    #[serde(default)]
    attestation: RawAttestation,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    idle_timeout_secs: Option<u64>,
    max_streams_per_connection: Option<u32>,
    requests_per_sec_per_address: Option<u32>,
    request_burst_per_address: Option<u32>,
    max_policy_bytes: Option<usize>,
    max_description_bytes: Option<usize>,
}

/// What a stranger may use of the broker (`[limits]`); every field has a
/// documented default (`docs/operations.md`, "Limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Guest connections open at once (TLS handshakes included); at the
    /// cap the broker stops accepting until one closes. Lowered at start
    /// to what RLIMIT_NOFILE allows, with descriptors kept for the admin
    /// socket, metrics and the database.
    pub max_connections: usize,
    /// Guest connections open at once from one source address; more are
    /// closed as soon as they are accepted.
    pub max_connections_per_address: usize,
    /// A connection with no bytes in either direction for this long after
    /// its handshake is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams (requests) in flight on one connection.
    pub max_streams_per_connection: u32,
    /// Challenge and Attest requests per second from one source address
    /// (token bucket), answered RESOURCE_EXHAUSTED beyond it; 0 turns the
    /// limit off.
    pub requests_per_sec_per_address: u32,
    /// The bucket's size: requests one address may send at once.
    pub request_burst_per_address: u32,
    /// Largest policy text accepted by `policy set`.
    pub max_policy_bytes: usize,
    /// Largest volume description accepted by `volume add`.
    pub max_description_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_address: 256,
            idle_timeout: Duration::from_secs(30),
            max_streams_per_connection: 8,
            requests_per_sec_per_address: 100,
            request_burst_per_address: 200,
            max_policy_bytes: 64 * 1024,
            max_description_bytes: 1024,
        }
    }
}

fn resolve_limits(raw: RawLimits) -> Result<Limits, (&'static str, &'static str)> {
    let d = Limits::default();
    let l = Limits {
        max_connections: raw.max_connections.unwrap_or(d.max_connections),
        max_connections_per_address: raw
            .max_connections_per_address
            .unwrap_or(d.max_connections_per_address),
        idle_timeout: raw
            .idle_timeout_secs
            .map_or(d.idle_timeout, Duration::from_secs),
        max_streams_per_connection: raw
            .max_streams_per_connection
            .unwrap_or(d.max_streams_per_connection),
        requests_per_sec_per_address: raw
            .requests_per_sec_per_address
            .unwrap_or(d.requests_per_sec_per_address),
        request_burst_per_address: raw
            .request_burst_per_address
            .unwrap_or(d.request_burst_per_address),
        max_policy_bytes: raw.max_policy_bytes.unwrap_or(d.max_policy_bytes),
        max_description_bytes: raw.max_description_bytes.unwrap_or(d.max_description_bytes),
    };
    if !(1..=1_000_000).contains(&l.max_connections) {
        return Err(("limits.max_connections", "must be between 1 and 1000000"));
    }
    if !(1..=l.max_connections).contains(&l.max_connections_per_address) {
        return Err((
            "limits.max_connections_per_address",
            "must be between 1 and limits.max_connections",
        ));
    }
    if !(1..=3600).contains(&l.idle_timeout.as_secs()) {
        return Err((
            "limits.idle_timeout_secs",
            "must be between 1 and 3600 seconds (0 would close every connection)",
        ));
    }
    if !(1..=1024).contains(&l.max_streams_per_connection) {
        return Err((
            "limits.max_streams_per_connection",
            "must be between 1 and 1024",
        ));
    }
    if l.requests_per_sec_per_address > 0
        && l.request_burst_per_address < l.requests_per_sec_per_address
    {
        return Err((
            "limits.request_burst_per_address",
            "must be at least limits.requests_per_sec_per_address",
        ));
    }
    if !(1024..=16 * 1024 * 1024).contains(&l.max_policy_bytes) {
        return Err((
            "limits.max_policy_bytes",
            "must be between 1024 and 16777216",
        ));
    }
    if l.max_description_bytes > 64 * 1024 {
        return Err(("limits.max_description_bytes", "must be at most 65536"));
    }
    Ok(l)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: SocketAddr,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    max_message_bytes: Option<usize>,
    nonce_ttl_secs: Option<u32>,
    rotation_session_ttl_secs: Option<u32>,
    request_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    threads: Option<usize>,
}

/// `[store]`: `url` (`sqlite:PATH`, a bare path, or `postgres://...`), or
/// the older `kind = "sqlite"` with `path`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    path: Option<PathBuf>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    pool_size: Option<usize>,
    timeout_ms: Option<u64>,
}

impl std::fmt::Debug for RawStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawStore")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("password_file", &self.password_file)
            .field("ca_cert", &self.ca_cert)
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    master_key: PathBuf,
    retired_retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    certs_dir: Option<PathBuf>,
    cert_cache: Option<PathBuf>,
    kds: Option<RawKds>,
    simulated: Option<RawSimulated>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKds {
    enabled: Option<bool>,
    url: Option<String>,
    timeout_secs: Option<u64>,
    min_interval_ms: Option<u64>,
    max_backoff_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    allowed_uids: Option<Vec<u32>>,
    tcp_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulated {
    ark: PathBuf,
    generation: Generation,
}

/// A resolved configuration: absolute paths, defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Guest-facing gRPC/TLS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain of the guest-facing TLS listener.
    pub tls_cert: PathBuf,
    /// PEM private key of the guest-facing TLS listener (mode 0600).
    pub tls_key: PathBuf,
    /// Largest accepted request message.
    pub max_message_bytes: usize,
    /// Challenge nonce lifetime.
    pub nonce_ttl: Duration,
    /// How long a guest may confirm a pending key after the Attest that
    /// released it (`ConfirmRotation`).
    pub rotation_session_ttl: Duration,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Serving threads (one single-threaded runtime each); default: one per CPU.
    pub threads: usize,
    /// Store location.
    pub store: StoreConfig,
    /// Master key file (mode 0600, never in the database).
    pub master_key: PathBuf,
    /// How long a retired key version is kept before it may be purged.
    pub retired_retention: Duration,
    /// Offline certificate directory (VCEK/VLEK, ASK, ASVK, ARK, CRL).
    pub certs_dir: Option<PathBuf>,
    /// The certificate cache (`broker certs import`, AMD KDS), laid out by
    /// generation, hwID and TCB; default `cert-cache` beside the config.
    pub cert_cache: PathBuf,
    /// AMD KDS as an online certificate source; `None` (the default) when
    /// `[attestation.kds] enabled` is not `true`.
    pub kds: Option<crate::certsource::KdsSettings>,
    /// A simulated SEV-SNP platform root, trusted only when named here.
    pub simulated: Option<SimulatedRoot>,
    /// The admin listeners (`[admin]`).
    pub admin: AdminConfig,
    /// Where Prometheus metrics are served (`[metrics] listen`); off when
    /// `None`, the default.
    pub metrics_listen: Option<SocketAddr>,
    /// `[limits]`.
    pub limits: Limits,
}

/// Default path of the admin socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/keybroker/admin.sock";

/// The admin plane: a Unix socket checked by peer credentials, and
/// optionally a TCP listener with mutual TLS. Never the guest port.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The Unix socket (created mode 0600, parent directory 0700).
    pub socket: PathBuf,
    /// Peer uids admitted on the socket; `None`: root and the broker's own uid.
    pub allowed_uids: Option<Vec<u32>>,
    /// Optional TCP listener with mutual TLS.
    pub tcp: Option<AdminTcp>,
}

/// The optional mutual-TLS admin listener.
#[derive(Debug, Clone)]
pub struct AdminTcp {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain of the listener.
    pub tls_cert: PathBuf,
    /// PEM private key of the listener (mode 0600).
    pub tls_key: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// Which store backs the broker.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Embedded SQLite database file.
    Sqlite {
        /// Database file.
        path: PathBuf,
    },
    /// A PostgreSQL database, shared by the broker's replicas.
    Postgres(PostgresConfig),
}

/// Default number of PostgreSQL connections per broker.
pub const DEFAULT_PG_POOL_SIZE: usize = 8;
/// Default longest wait of one store call on PostgreSQL.
pub const DEFAULT_PG_TIMEOUT_MS: u64 = 3000;

/// `[store]` for PostgreSQL. `Debug` never shows a password.
#[derive(Clone)]
pub struct PostgresConfig {
    /// The connection URL (a password in it is accepted, never printed;
    /// prefer `password_file` or a Unix-socket peer login).
    pub url: String,
    /// A file (mode 0600) holding the password.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) for TLS to the server.
    pub ca_cert: Option<PathBuf>,
    /// Most connections open at once.
    pub pool_size: usize,
    /// Longest wait of one store call (also the server's statement and
    /// lock timeouts): past it the request fails with UNAVAILABLE.
    pub timeout: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &crate::store::redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("ca_cert", &self.ca_cert)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn resolve_store(
    raw: RawStore,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<StoreConfig, (&'static str, String)> {
    use crate::store::StoreUrl;
    let url = match (raw.url, raw.kind.as_deref(), raw.path) {
        (Some(url), None, None) => StoreUrl::parse(&url).map_err(|m| ("store.url", m))?,
        (None, Some("sqlite") | None, Some(path)) => StoreUrl::Sqlite(path),
        (Some(_), _, _) => {
            return Err((
                "store.url",
                "write either url or the older kind and path, not both".into(),
            ))
        }
        (None, Some(kind), _) if kind != "sqlite" => {
            return Err((
                "store.kind",
                format!("{kind:?} is not a store kind; write url = \"postgres://USER@HOST/DB\" for PostgreSQL"),
            ))
        }
        (None, _, _) => {
            return Err((
                "store.url",
                "is missing; write url = \"sqlite:broker.db\" or url = \"postgres://USER@HOST/DB\"".into(),
            ))
        }
    };
    match url {
        StoreUrl::Sqlite(path) => {
            for (field, set) in [
                ("store.password_file", raw.password_file.is_some()),
                ("store.ca_cert", raw.ca_cert.is_some()),
                ("store.pool_size", raw.pool_size.is_some()),
                ("store.timeout_ms", raw.timeout_ms.is_some()),
            ] {
                if set {
                    return Err((
                        field,
                        "applies to PostgreSQL only, not to an SQLite store".into(),
                    ));
                }
            }
            Ok(StoreConfig::Sqlite {
                path: resolve(path),
            })
        }
        StoreUrl::Postgres(url) => {
            let pool_size = raw.pool_size.unwrap_or(DEFAULT_PG_POOL_SIZE);
            if !(1..=256).contains(&pool_size) {
                return Err(("store.pool_size", "must be between 1 and 256".into()));
            }
            let ms = raw.timeout_ms.unwrap_or(DEFAULT_PG_TIMEOUT_MS);
            if !(100..=60_000).contains(&ms) {
                return Err((
                    "store.timeout_ms",
                    "must be between 100 and 60000 ms (a guest waits for the reply)".into(),
                ));
            }
            Ok(StoreConfig::Postgres(PostgresConfig {
                url,
                password_file: raw.password_file.map(resolve),
                ca_cert: raw.ca_cert.map(resolve),
                pool_size,
                timeout: Duration::from_millis(ms),
            }))
        }
    }
}

/// The explicitly configured root of a simulated platform.
#[derive(Debug, Clone)]
pub struct SimulatedRoot {
    /// PEM or DER ARK certificate of the simulated platform.
    pub ark: PathBuf,
    /// Generation the simulated platform claims to be.
    pub generation: Generation,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {cause}; pass --config with the file `broker init` wrote")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause (kept in the message, not as an error source, so that
        /// `{:#}` chains do not print it twice).
        cause: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/missing fields.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said: line and column, the line with a caret under
        /// the problem, and what is wrong (several lines).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config {path}: {field}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// Field name.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Config {
    /// Reads and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // Several lines: toml's caret diagram points at the field.
            message: e.to_string().trim_end().to_owned(),
        })?;
        let value_err = |field, message: &str| ConfigError::Value {
            path: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        let max_message_bytes = raw
            .server
            .max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if !(4096..=16 * 1024 * 1024).contains(&max_message_bytes) {
            return Err(value_err(
                "server.max_message_bytes",
                "must be between 4096 and 16777216 (a report with its certificates needs about 5 KiB)",
            ));
        }
        let ttl = raw.server.nonce_ttl_secs.unwrap_or(DEFAULT_NONCE_TTL_SECS);
        if !(1..=600).contains(&ttl) {
            return Err(value_err(
                "server.nonce_ttl_secs",
                "must be between 1 and 600 seconds; a long-lived nonce weakens replay protection",
            ));
        }
        let rotation_ttl = raw
            .server
            .rotation_session_ttl_secs
            .unwrap_or(DEFAULT_ROTATION_SESSION_TTL_SECS);
        if !(1..=86_400).contains(&rotation_ttl) {
            return Err(value_err(
                "server.rotation_session_ttl_secs",
                "must be between 1 and 86400 seconds (a guest enrolling keys on many devices \
                 confirms only after all of them, about 0.8 s per device)",
            ));
        }
        let request_timeout = raw.server.request_timeout_secs.unwrap_or(10);
        if !(1..=300).contains(&request_timeout) {
            return Err(value_err(
                "server.request_timeout_secs",
                "must be between 1 and 300 seconds (an Attest takes milliseconds; 0 would \
                 refuse every request)",
            ));
        }
        let handshake_timeout = raw.server.handshake_timeout_secs.unwrap_or(5);
        if !(1..=60).contains(&handshake_timeout) {
            return Err(value_err(
                "server.handshake_timeout_secs",
                "must be between 1 and 60 seconds (0 would refuse every connection; a long one \
                 lets idle strangers hold connections)",
            ));
        }
        let threads = match raw.server.threads {
            Some(0) | Some(257..) => {
                return Err(value_err("server.threads", "must be between 1 and 256"))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let retention_days = raw
            .keys
            .retired_retention_days
            .unwrap_or(DEFAULT_RETIRED_RETENTION_DAYS);
        if !(1..=36_500).contains(&retention_days) {
            return Err(value_err(
                "keys.retired_retention_days",
                "must be between 1 and 36500 days; a retired key may still open old snapshots and backups",
            ));
        }
        let limits = resolve_limits(raw.limits).map_err(|(field, m)| value_err(field, m))?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let store =
            resolve_store(raw.store, &resolve).map_err(|(field, m)| value_err(field, &m))?;
        let kds = resolve_kds(raw.attestation.kds.unwrap_or_default())
            .map_err(|(field, m)| value_err(field, m))?;
        let admin =
            resolve_admin(raw.admin, &resolve).map_err(|(field, m)| value_err(field, &m))?;
        if let Some(tcp) = &admin.tcp {
            let same_port = tcp.listen.port() == raw.server.listen.port() && tcp.listen.port() != 0;
            let same_ip = tcp.listen.ip() == raw.server.listen.ip()
                || tcp.listen.ip().is_unspecified()
                || raw.server.listen.ip().is_unspecified();
            if same_port && same_ip {
                return Err(value_err(
                    "admin.tcp_listen",
                    "must not be the guest port (server.listen): administration is never served \
                     to guests; choose another port",
                ));
            }
        }
        if let Some(m) = raw.metrics.listen {
            let guest = raw.server.listen;
            let admin_port = admin.tcp.as_ref().map(|t| t.listen.port());
            if m.port() != 0 && (m.port() == guest.port() || Some(m.port()) == admin_port) {
                return Err(value_err(
                    "metrics.listen",
                    "must be a port of its own, not the guest or admin port; choose another port",
                ));
            }
        }
        Ok(Config {
            listen: raw.server.listen,
            tls_cert: resolve(raw.server.tls_cert),
            tls_key: resolve(raw.server.tls_key),
            max_message_bytes,
            nonce_ttl: Duration::from_secs(ttl.into()),
            rotation_session_ttl: Duration::from_secs(rotation_ttl.into()),
            request_timeout: Duration::from_secs(request_timeout),
            handshake_timeout: Duration::from_secs(handshake_timeout),
            threads,
            store,
            master_key: resolve(raw.keys.master_key),
            retired_retention: Duration::from_secs(u64::from(retention_days) * 86_400),
            certs_dir: raw.attestation.certs_dir.map(resolve),
            cert_cache: resolve(
                raw.attestation
                    .cert_cache
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CERT_CACHE)),
            ),
            kds,
            simulated: raw.attestation.simulated.map(|s| SimulatedRoot {
                ark: resolve(s.ark),
                generation: s.generation,
            }),
            admin,
            metrics_listen: raw.metrics.listen,
            limits,
        })
    }
}

/// Default certificate cache directory, relative to the config file.
pub const DEFAULT_CERT_CACHE: &str = "cert-cache";

/// Resolves `[attestation.kds]`: `None` unless `enabled = true`.
fn resolve_kds(
    raw: RawKds,
) -> Result<Option<crate::certsource::KdsSettings>, (&'static str, &'static str)> {
    use crate::certsource::kds;
    let timeout = raw.timeout_secs.unwrap_or(kds::DEFAULT_TIMEOUT.as_secs());
    if !(1..=60).contains(&timeout) {
        return Err((
            "attestation.kds.timeout_secs",
            "must be between 1 and 60 seconds; a fetch runs inside a guest's request",
        ));
    }
    let interval = raw
        .min_interval_ms
        .unwrap_or(kds::DEFAULT_MIN_INTERVAL.as_millis() as u64);
    if interval > 60_000 {
        return Err((
            "attestation.kds.min_interval_ms",
            "must be at most 60000 ms",
        ));
    }
    let backoff = raw
        .max_backoff_secs
        .unwrap_or(kds::DEFAULT_MAX_BACKOFF.as_secs());
    if !(1..=86_400).contains(&backoff) {
        return Err((
            "attestation.kds.max_backoff_secs",
            "must be between 1 and 86400 seconds",
        ));
    }
    let url = raw.url.unwrap_or_else(|| kds::DEFAULT_KDS_URL.to_owned());
    if crate::certsource::http::Url::parse(&url).is_err() {
        return Err((
            "attestation.kds.url",
            "must be http(s)://host[:port][/path] without user info, query or fragment",
        ));
    }
    if raw.enabled != Some(true) {
        return Ok(None);
    }
    Ok(Some(crate::certsource::KdsSettings {
        url,
        timeout: Duration::from_secs(timeout),
        min_interval: Duration::from_millis(interval),
        max_backoff: Duration::from_secs(backoff),
    }))
}

/// Resolves `[admin]`; refuses a TCP listener without client authentication.
fn resolve_admin(
    raw: RawAdmin,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<AdminConfig, (&'static str, String)> {
    let tcp = match (raw.tcp_listen, raw.tls_cert, raw.tls_key, raw.client_ca) {
        (None, None, None, None) => None,
        (None, ..) => {
            return Err((
                "admin.tcp_listen",
                "tls_cert, tls_key and client_ca apply only to a TCP admin listener; add \
                 tcp_listen = \"ADDR:PORT\" or remove them"
                    .into(),
            ))
        }
        (Some(_), _, _, None) => {
            return Err((
                "admin.client_ca",
                "tcp_listen is set without client_ca: the broker refuses to serve \
                 administration without client authentication; add client_ca = \"FILE\" (the \
                 PEM CA that signs admin client certificates) with tls_cert and tls_key, or \
                 remove tcp_listen and use the Unix socket"
                    .into(),
            ))
        }
        (Some(_), None, _, Some(_)) | (Some(_), _, None, Some(_)) => {
            return Err((
                "admin.tls_cert",
                "tcp_listen needs tls_cert and tls_key (the listener's certificate and key) \
                 beside client_ca"
                    .into(),
            ))
        }
        (Some(listen), Some(cert), Some(key), Some(ca)) => Some(AdminTcp {
            listen,
            tls_cert: resolve(cert),
            tls_key: resolve(key),
            client_ca: resolve(ca),
        }),
    };
    Ok(AdminConfig {
        socket: resolve(
            raw.socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
        ),
        allowed_uids: raw.allowed_uids,
        tcp,
    })
}

/// The config file `broker init` writes, with the default admin socket.
pub fn default_config_text(listen: SocketAddr) -> String {
    config_text(listen, Path::new(DEFAULT_ADMIN_SOCKET))
}

/// The config file `broker init` writes, with `admin_socket` in `[admin]`
/// and the broker's files beside it (relative paths), on the SQLite store
/// `broker.db`.
pub fn config_text(listen: SocketAddr, admin_socket: &Path) -> String {
    config_text_in(listen, admin_socket, None, "sqlite:broker.db")
}

/// The config file `broker init [--store-url URL]` writes, with
/// `admin_socket` in `[admin]` and `store_url` in `[store]`.
/// With `data_dir`, the broker's files (keys, SQLite database, certificate
/// cache) are named by absolute paths in that directory: the config then
/// lives elsewhere (the packaged layout: `/etc/keybroker/config.toml`,
/// files in `/var/lib/keybroker`, where the sandboxed service may write).
pub fn config_text_in(
    listen: SocketAddr,
    admin_socket: &Path,
    data_dir: Option<&Path>,
    store_url: &str,
) -> String {
    let admin_socket = toml_string(&admin_socket.display().to_string());
    let file = |name: &str| match data_dir {
        Some(d) => toml_string(&d.join(name).display().to_string()),
        None => toml_string(name),
    };
    let store_url = toml_string(
        &match (data_dir, crate::store::StoreUrl::parse(store_url)) {
            (Some(d), Ok(crate::store::StoreUrl::Sqlite(path))) if path.is_relative() => {
                format!("sqlite:{}", d.join(path).display())
            }
            _ => store_url.to_owned(),
        },
    );
    let (paths_note, tls_cert, tls_key, master_key) = (
        match data_dir {
            Some(d) => format!("# The broker's files are in {}.", d.display()),
            None => "# Paths are relative to this file.".to_owned(),
        },
        file("tls/cert.pem"),
        file("tls/key.pem"),
        file("master.key"),
    );
    let cert_cache = match data_dir {
        Some(_) => format!("cert_cache = {}", file(DEFAULT_CERT_CACHE)),
        None => format!("# cert_cache = \"{DEFAULT_CERT_CACHE}\""),
    };
    format!(
        r#"# keybroker configuration, written by `broker init`.
{paths_note}

[server]
# Guest-facing gRPC over TLS. Administration is never served here.
listen = "{listen}"
tls_cert = {tls_cert}
tls_key = {tls_key}
max_message_bytes = {DEFAULT_MAX_MESSAGE_BYTES}
nonce_ttl_secs = {DEFAULT_NONCE_TTL_SECS}
# How long a guest may confirm a rotated key (ConfirmRotation) after the
# Attest that released it; a guest rotating many devices needs ~0.8 s each.
rotation_session_ttl_secs = {DEFAULT_ROTATION_SESSION_TTL_SECS}

[store]
# sqlite:PATH (or a bare path) is the embedded SQLite database; a
# postgres://USER@HOST/DB URL is PostgreSQL, shared by several replicas
# (password_file, ca_cert, pool_size, timeout_ms: docs/operations.md).
url = {store_url}

[keys]
# 32 random bytes, mode 0600. Back it up offline: without it no key can be unsealed.
master_key = {master_key}
# Retired key versions (replaced by a rotation) are kept this long for old
# snapshots and backups, then `purge_retired` may destroy them.
retired_retention_days = {DEFAULT_RETIRED_RETENTION_DAYS}

[attestation]
# Offline AMD certificates (vcek.der/vlek.der, ask.pem, asvk.pem, ark.pem, crl.der).
# certs_dir = "certs"
# The certificate cache, keyed by generation, hwID and TCB: filled by
# `broker certs import` and, when enabled, by AMD KDS.
{cert_cache}

# AMD KDS as an online certificate source: OFF by default, so that the broker
# makes no outbound connection unless told to. When on, a guest whose VCEK is
# held nowhere waits for one fetch (at most timeout_secs).
# [attestation.kds]
# enabled = true
# url = "https://kdsintf.amd.com"
# timeout_secs = 5
# min_interval_ms = 100
# max_backoff_secs = 300

# A simulated SEV-SNP platform is trusted ONLY when named here (tests, demos).
# [attestation.simulated]
# ark = "sim/ark.pem"
# generation = "milan"

[admin]
# Administration (the `broker volume/policy/audit/...` commands) is served
# only here, never on the guest port: a Unix socket, created mode 0600,
# admitting only the peer uids below (default: root and the broker's uid).
socket = {admin_socket}
# allowed_uids = [0]
# Optional TCP listener for remote administration, mutual TLS only; the
# broker refuses to start with tcp_listen but no client_ca.
# tcp_listen = "127.0.0.1:9443"
# tls_cert = "admin/cert.pem"
# tls_key = "admin/key.pem"
# client_ca = "admin/client-ca.pem"

[metrics]
# Prometheus text (GET /metrics) on a listener of its own: decisions by
# verdict and reason code, release latency, certificate cache, store errors.
# No secrets and no volume names; off unless an address is given. Keep it on
# loopback or a monitoring network: it has no authentication.
# listen = "127.0.0.1:9464"
"#
    )
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/kb/broker.toml"), Path::new("/etc/kb"))
    }

    fn with_store(store: &str) -> Result<Config, ConfigError> {
        let text = default_config_text("127.0.0.1:8443".parse().unwrap());
        let start = text.find("[store]").unwrap();
        let end = text.find("[keys]").unwrap();
        parse(&format!(
            "{}[store]\n{store}\n\n{}",
            &text[..start],
            &text[end..]
        ))
    }

    #[test]
    fn store_url_forms() {
        let sqlite = |store: &str| match with_store(store).unwrap().store {
            StoreConfig::Sqlite { path } => path,
            other => panic!("{store}: {other:?}"),
        };
        let default = parse(&default_config_text("127.0.0.1:8443".parse().unwrap())).unwrap();
        assert!(
            matches!(&default.store, StoreConfig::Sqlite { path } if path == Path::new("/etc/kb/broker.db"))
        );
        assert_eq!(sqlite(r#"url = "sqlite:b.db""#), Path::new("/etc/kb/b.db"));
        assert_eq!(sqlite(r#"url = "/var/b.db""#), Path::new("/var/b.db"));
        // The form of earlier releases keeps working.
        assert_eq!(
            sqlite("kind = \"sqlite\"\npath = \"old.db\""),
            Path::new("/etc/kb/old.db")
        );
        let pg = match with_store(
            "url = \"postgres://kb:hunter2@db:5432/kb\"\npassword_file = \"pg.pass\"\npool_size = 4\ntimeout_ms = 1500",
        )
        .unwrap()
        .store
        {
            StoreConfig::Postgres(pg) => pg,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            pg.password_file.as_deref(),
            Some(Path::new("/etc/kb/pg.pass"))
        );
        assert_eq!((pg.pool_size, pg.timeout), (4, Duration::from_millis(1500)));
        assert!(!format!("{pg:?}").contains("hunter2"), "{pg:?}");
    }

    #[test]
    fn bad_store_sections_are_refused() {
        for (store, field) in [
            (r#"url = "mysql://a@b/c""#, "store.url"),
            (r#"url = """#, "store.url"),
            ("", "store.url"),
            ("kind = \"postgres\"\npath = \"x\"", "store.kind"),
            ("url = \"b.db\"\npath = \"b.db\"", "store.url"),
            ("url = \"b.db\"\npool_size = 3", "store.pool_size"),
            (
                "url = \"postgres://a@b/c\"\npool_size = 0",
                "store.pool_size",
            ),
            (
                "url = \"postgres://a@b/c\"\ntimeout_ms = 0",
                "store.timeout_ms",
            ),
        ] {
            let err = with_store(store).unwrap_err().to_string();
            assert!(err.contains(field), "{store}: {err}");
        }
        let err = with_store("url = \"b.db\"\nfile = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn packaged_layout_names_every_file_in_the_data_dir() {
        let text = config_text_in(
            "127.0.0.1:8443".parse().unwrap(),
            Path::new(DEFAULT_ADMIN_SOCKET),
            Some(Path::new("/var/lib/keybroker")),
            "sqlite:broker.db",
        );
        // The config sits in /etc/kb, its files do not.
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.tls_cert, Path::new("/var/lib/keybroker/tls/cert.pem"));
        assert_eq!(cfg.tls_key, Path::new("/var/lib/keybroker/tls/key.pem"));
        assert_eq!(cfg.master_key, Path::new("/var/lib/keybroker/master.key"));
        assert_eq!(cfg.cert_cache, Path::new("/var/lib/keybroker/cert-cache"));
        assert!(
            matches!(&cfg.store, StoreConfig::Sqlite { path } if path == Path::new("/var/lib/keybroker/broker.db")),
            "{:?}",
            cfg.store
        );
        assert!(!text.contains("/etc/kb"), "{text}");
    }

    #[test]
    fn default_config_parses_and_resolves_paths() {
        let cfg = parse(&default_config_text("127.0.0.1:8443".parse().unwrap())).unwrap();
        assert_eq!(cfg.tls_key, Path::new("/etc/kb/tls/key.pem"));
        assert_eq!(cfg.master_key, Path::new("/etc/kb/master.key"));
        assert_eq!(cfg.nonce_ttl, Duration::from_secs(60));
        assert_eq!(cfg.rotation_session_ttl, Duration::from_secs(900));
        let short = default_config_text("127.0.0.1:8443".parse().unwrap()).replace(
            "rotation_session_ttl_secs = 900",
            "rotation_session_ttl_secs = 0",
        );
        let err = parse(&short).unwrap_err().to_string();
        assert!(err.contains("server.rotation_session_ttl_secs"), "{err}");
        assert_eq!(cfg.retired_retention, Duration::from_secs(30 * 86_400));
        assert!(
            cfg.simulated.is_none(),
            "simulated platform must be off by default"
        );
        assert!(cfg.certs_dir.is_none());
        assert!(cfg.kds.is_none(), "AMD KDS must be off by default");
        assert_eq!(cfg.cert_cache, Path::new("/etc/kb/cert-cache"));
    }

    #[test]
    fn metrics_listener_is_off_by_default_and_never_shares_a_port() {
        let text = default_config_text("127.0.0.1:8443".parse().unwrap());
        assert!(parse(&text).unwrap().metrics_listen.is_none());
        let on = text.replace(
            "# listen = \"127.0.0.1:9464\"",
            "listen = \"127.0.0.1:9464\"",
        );
        assert_eq!(
            parse(&on).unwrap().metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let clash = text.replace(
            "# listen = \"127.0.0.1:9464\"",
            "listen = \"127.0.0.1:8443\"",
        );
        let err = parse(&clash).unwrap_err().to_string();
        assert!(
            err.contains("metrics.listen") && err.contains("port of its own"),
            "{err}"
        );
        let bad = text.replace("# listen = \"127.0.0.1:9464\"", "listen = \"nowhere\"");
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn zero_or_absurd_timeouts_are_refused() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        for (key, bad) in [
            ("handshake_timeout_secs", "0"),
            ("handshake_timeout_secs", "3600"),
            ("request_timeout_secs", "0"),
            ("request_timeout_secs", "86400"),
        ] {
            let text = base.replace("[server]", &format!("[server]\n{key} = {bad}"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("server.{key}")) && err.contains("must be between"),
                "{key} = {bad}: {err}"
            );
        }
        let ok = base.replace("[server]", "[server]\nhandshake_timeout_secs = 2");
        assert_eq!(
            parse(&ok).unwrap().handshake_timeout,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let text = default_config_text("127.0.0.1:1".parse().unwrap())
            .replace("[keys]", "[keys]\nmaster_key_inline = \"00\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("master_key_inline"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        let err = parse(&base.replace("nonce_ttl_secs = 60", "nonce_ttl_secs = 86400"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.nonce_ttl_secs"), "{err}");
        let err = parse(&base.replace("max_message_bytes = 65536", "max_message_bytes = 10"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.max_message_bytes"), "{err}");
    }

    #[test]
    fn retired_retention_is_read_and_bounded() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        let cfg = parse(&base.replace("retired_retention_days = 30", "retired_retention_days = 7"))
            .unwrap();
        assert_eq!(cfg.retired_retention, Duration::from_secs(7 * 86_400));
        let cfg = parse(&base.replace("retired_retention_days = 30\n", "")).unwrap();
        assert_eq!(cfg.retired_retention, Duration::from_secs(30 * 86_400));
        let err = parse(&base.replace("retired_retention_days = 30", "retired_retention_days = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys.retired_retention_days"), "{err}");
    }

    #[test]
    fn malformed_toml_and_bad_addresses_are_refused() {
        assert!(matches!(parse("[server"), Err(ConfigError::Parse { .. })));
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        assert!(matches!(
            parse(&base.replace("127.0.0.1:1", "not-an-address")),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse(&base.replace("url = \"sqlite:broker.db\"", "url = \"oracle://x\"")),
            Err(ConfigError::Value {
                field: "store.url",
                ..
            })
        ));
    }

    #[test]
    fn admin_defaults_to_the_run_socket_and_no_tcp() {
        let cfg = parse(&default_config_text("127.0.0.1:1".parse().unwrap())).unwrap();
        assert_eq!(cfg.admin.socket, Path::new(DEFAULT_ADMIN_SOCKET));
        assert!(cfg.admin.allowed_uids.is_none());
        assert!(cfg.admin.tcp.is_none());
        let text = config_text(
            "127.0.0.1:1".parse().unwrap(),
            Path::new("/tmp/a \"b\".sock"),
        );
        assert_eq!(
            parse(&text).unwrap().admin.socket,
            Path::new("/tmp/a \"b\".sock")
        );
    }

    #[test]
    fn admin_tcp_listener_needs_client_authentication() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        let tcp = |lines: &str| base.replace("# tcp_listen = \"127.0.0.1:9443\"", lines);
        let err = parse(&tcp(
            "tcp_listen = \"127.0.0.1:9443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("admin.client_ca")
                && err.contains("refuses to serve administration without client authentication")
                && err.contains("add client_ca"),
            "{err}"
        );
        let err = parse(&tcp(
            "tcp_listen = \"127.0.0.1:9443\"\nclient_ca = \"ca.pem\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs tls_cert and tls_key"), "{err}");
        let err = parse(&tcp("client_ca = \"ca.pem\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.tcp_listen"), "{err}");
        let cfg = parse(&tcp(
            "tcp_listen = \"127.0.0.1:9443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nclient_ca = \"ca.pem\"\nallowed_uids = [0, 1000]",
        ))
        .unwrap();
        let t = cfg.admin.tcp.unwrap();
        assert_eq!(t.client_ca, Path::new("/etc/kb/ca.pem"));
        let err = parse(&tcp(
            "tcp_listen = \"0.0.0.0:1\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nclient_ca = \"ca.pem\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("must not be the guest port"), "{err}");
        assert_eq!(cfg.admin.allowed_uids, Some(vec![0, 1000]));
    }

    #[test]
    fn simulated_root_needs_generation() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        let with_sim = base.replace(
            "# [attestation.simulated]\n# ark = \"sim/ark.pem\"\n# generation = \"milan\"",
            "[attestation.simulated]\nark = \"sim/ark.pem\"\ngeneration = \"milan\"",
        );
        let cfg = parse(&with_sim).unwrap();
        let sim = cfg.simulated.unwrap();
        assert_eq!(sim.generation, Generation::Milan);
        assert_eq!(sim.ark, Path::new("/etc/kb/sim/ark.pem"));
        let no_gen = with_sim.replace("generation = \"milan\"", "");
        assert!(parse(&no_gen).is_err());
    }

    #[test]
    fn kds_is_off_unless_enabled_and_checked() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        let on = base.replace(
            "# [attestation.kds]\n# enabled = true",
            "[attestation.kds]\nenabled = true",
        );
        let cfg = parse(&on).unwrap();
        let kds = cfg.kds.unwrap();
        assert_eq!(kds.url, "https://kdsintf.amd.com");
        assert_eq!(kds.timeout, Duration::from_secs(5));
        let off = base.replace(
            "# [attestation.kds]\n# enabled = true",
            "[attestation.kds]\nenabled = false\ntimeout_secs = 2",
        );
        assert!(parse(&off).unwrap().kds.is_none());
        for (bad, field) in [
            ("timeout_secs = 0", "attestation.kds.timeout_secs"),
            ("max_backoff_secs = 0", "attestation.kds.max_backoff_secs"),
            ("url = \"ftp://x\"", "attestation.kds.url"),
        ] {
            let text = on.replace("enabled = true", &format!("enabled = true\n{bad}"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
