//! `floor-server`: the least a key-release server can do per guest, for
//! `loadgen` to measure beside the broker (see `keybroker_tests::floor`).
//!
//! It serves on loopback with the broker's own TLS configuration and its
//! threading (one single-threaded runtime per shard, SO_REUSEPORT sockets,
//! from `broker::grpc`), and prints `listening on ADDR` as `broker serve`
//! does. Each connection: TLS 1.3 handshake, one SNP report in, one P-384
//! verification of its signature, one byte out.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use keybroker_tests::floor;

/// Minimal TLS + one P-384 verify server (loopback measurements only).
#[derive(Debug, Parser)]
struct Args {
    /// The broker's TLS certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The broker's TLS key (PEM, mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// The VCEK certificate (DER) whose key signs the reports.
    #[arg(long)]
    vcek: PathBuf,
    /// Serving threads; default: one per CPU, as the broker.
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (certs, key) = broker::tls::load(&args.cert, &args.key)?;
    let tls = broker::grpc::tls_server_config(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let vcek = Arc::new(floor::vcek_key(
        &std::fs::read(&args.vcek).with_context(|| args.vcek.display().to_string())?,
    )?);
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let listeners = broker::grpc::bind_shards("127.0.0.1:0".parse()?, threads)?;
    println!("listening on {}", listeners[0].local_addr()?);
    let mut shards = Vec::new();
    for listener in listeners {
        let (acceptor, vcek) = (acceptor.clone(), vcek.clone());
        shards.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                loop {
                    let (tcp, _) = listener.accept().await?;
                    let (acceptor, vcek) = (acceptor.clone(), vcek.clone());
                    tokio::spawn(async move {
                        let _ = floor::serve_connection(tcp, acceptor, vcek).await;
                    });
                }
            })
        }));
    }
    for s in shards {
        s.join()
            .map_err(|_| anyhow::anyhow!("a serving thread panicked"))??;
    }
    Ok(())
}
