//! How the admin commands reach `broker serve`: the connection flags
//! (`--socket`, `--config`, `--admin-url` with its certificates), and one
//! helper that runs a call and turns a refusal into a message and exit 1.

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use keybroker_proto::admin_pb::admin_client::AdminClient;
use tonic::transport::Channel;

use broker::admin::connect::{self, Target};
use broker::config::{Config, DEFAULT_ADMIN_SOCKET};

/// Where the broker's admin API is. The first of: `--admin-url` (mutual
/// TLS), `--socket` / `KEYBROKER_ADMIN_SOCKET`, the `[admin] socket` of
/// `--config` / `KEYBROKER_CONFIG`, `/run/keybroker/admin.sock`.
#[derive(Debug, Clone, Args)]
pub struct AdminConn {
    /// The broker's admin socket [default: the `[admin] socket` of
    /// --config, else /run/keybroker/admin.sock].
    #[arg(long, env = "KEYBROKER_ADMIN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The broker's config file: its `[admin] socket` is used when
    /// --socket is not given.
    #[arg(long, short = 'c', env = "KEYBROKER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A remote admin API over mutual TLS (`https://HOST:PORT`, the
    /// broker's `[admin] tcp_listen`); needs --admin-cert, --admin-key and
    /// --admin-ca.
    #[arg(long, value_name = "URL", requires_all = ["admin_cert", "admin_key", "admin_ca"])]
    pub admin_url: Option<String>,
    /// Client certificate (PEM) for --admin-url.
    #[arg(long, value_name = "FILE", requires = "admin_url")]
    pub admin_cert: Option<PathBuf>,
    /// Client private key (PEM) for --admin-url.
    #[arg(long, value_name = "FILE", requires = "admin_url")]
    pub admin_key: Option<PathBuf>,
    /// CA certificate (PEM) that the admin server's certificate chains to.
    #[arg(long, value_name = "FILE", requires = "admin_url")]
    pub admin_ca: Option<PathBuf>,
}

impl AdminConn {
    /// Resolves the flags to a target (reads `--config` if needed).
    pub fn target(&self) -> anyhow::Result<Target> {
        if let Some(url) = &self.admin_url {
            let (host, port) = connect::parse_url(url)?;
            let need = |p: &Option<PathBuf>, flag: &str| {
                p.clone()
                    .with_context(|| format!("--admin-url needs {flag}"))
            };
            return Ok(Target::Tls {
                host,
                port,
                cert: need(&self.admin_cert, "--admin-cert FILE")?,
                key: need(&self.admin_key, "--admin-key FILE")?,
                ca: need(&self.admin_ca, "--admin-ca FILE")?,
            });
        }
        if let Some(s) = &self.socket {
            return Ok(Target::Socket(s.clone()));
        }
        if let Some(c) = &self.config {
            return Ok(Target::Socket(Config::load(c)?.admin.socket));
        }
        Ok(Target::Socket(PathBuf::from(DEFAULT_ADMIN_SOCKET)))
    }

    /// Connects.
    pub fn connect(&self) -> anyhow::Result<Session> {
        let target = self.target()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime")?;
        let client = rt.block_on(connect::connect(&target))?;
        Ok(Session { rt, client, target })
    }
}

/// A connection to the admin API.
pub struct Session {
    rt: tokio::runtime::Runtime,
    client: AdminClient<Channel>,
    target: Target,
}

impl Session {
    /// A client handle for one call.
    pub fn client(&self) -> AdminClient<Channel> {
        self.client.clone()
    }

    /// Runs one call. A refusal (not found, exists, wrong state, invalid
    /// argument, permission denied) is printed as `broker: MESSAGE` and
    /// gives `None` (exit 1); transport failures are errors.
    pub fn run<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> anyhow::Result<Option<T>> {
        match self.rt.block_on(call) {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) => self.refusal(s),
        }
    }

    /// Runs a server-streaming call, handing each message to `each` as it
    /// arrives. A refusal, at the start or in the stream, is printed and
    /// gives `None` (exit 1), as with [`Session::run`]; transport failures
    /// are errors.
    pub fn stream<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
        mut each: impl FnMut(T),
    ) -> anyhow::Result<Option<()>> {
        let mut stream = match self.rt.block_on(call) {
            Ok(r) => r.into_inner(),
            Err(s) => return self.refusal(s),
        };
        loop {
            match self.rt.block_on(stream.message()) {
                Ok(Some(m)) => each(m),
                Ok(None) => return Ok(Some(())),
                Err(s) => return self.refusal(s),
            }
        }
    }

    /// A refusal is printed (`None`, exit 1); anything else is an error.
    fn refusal<T>(&self, s: tonic::Status) -> anyhow::Result<Option<T>> {
        match s.code() {
            tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::FailedPrecondition
            | tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied => {
                eprintln!("broker: {}", s.message());
                Ok(None)
            }
            tonic::Code::Unimplemented => anyhow::bail!(
                "the broker does not serve this admin call ({}); is it an older version?",
                s.message()
            ),
            code => {
                let why = keybroker_rt::with_sources(s.message().to_owned(), &s);
                let hint = match &self.target {
                    Target::Tls { .. } => {
                        "; the broker may have refused the client certificate: --admin-cert \
                         and --admin-key must be a client certificate issued by the broker's \
                         [admin] client_ca"
                    }
                    Target::Socket(_) => "; the broker's log may say more",
                };
                anyhow::bail!(
                    "admin call to {} failed: {code:?}: {why}{hint}",
                    self.target
                )
            }
        }
    }
}
