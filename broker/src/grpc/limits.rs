//! What one stranger, or many, may hold of the guest port (`[limits]`):
//!
//! - [`ConnLimits`]: a cap on connections open at once across every shard
//!   (the accept loops wait for a free slot before they accept: backpressure
//!   into the kernel's listen queue, never a descriptor the broker does not
//!   have), a cap per source address (more are closed as soon as they are
//!   accepted), and an idle timeout after the handshake ([`Guarded`]).
//! - [`RateLimiter`]: Challenge and Attest requests per second per source
//!   address, a token bucket; beyond it RESOURCE_EXHAUSTED.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

use crate::config::Limits;

/// Connection caps shared by every shard of one broker.
#[derive(Debug)]
pub struct ConnLimits {
    slots: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
    /// Closes a connection idle this long after its handshake.
    pub idle_timeout: Duration,
    /// HTTP/2 streams in flight per connection.
    pub max_streams: u32,
}

impl ConnLimits {
    /// From `[limits]`, with `max_connections` lowered to `fd_budget` when
    /// the process may not open more descriptors than that.
    pub fn new(limits: &Limits, fd_budget: Option<usize>) -> Arc<ConnLimits> {
        let max = fd_budget.map_or(limits.max_connections, |b| limits.max_connections.min(b));
        Arc::new(ConnLimits {
            slots: Arc::new(Semaphore::new(max.max(1))),
            per_address: Mutex::new(HashMap::new()),
            max_per_address: limits.max_connections_per_address,
            idle_timeout: limits.idle_timeout,
            max_streams: limits.max_streams_per_connection,
        })
    }

    /// Waits for a free connection slot (call before accepting).
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("connection semaphore closed")
    }

    /// Admits a connection from `ip` holding `slot`, unless `ip` has its
    /// maximum open already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, slot: OwnedSemaphorePermit) -> Option<ConnGuard> {
        let mut m = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_per_address {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            limits: self.clone(),
            ip,
            _slot: slot,
        })
    }
}

/// One admitted connection: frees its slot and its address's count when
/// dropped.
#[derive(Debug)]
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    _slot: OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut m = self
            .limits
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A connection after its handshake: holds its [`ConnGuard`] and fails
/// with `TimedOut` once no byte moved either way for the idle timeout.
pub struct Guarded<S> {
    inner: S,
    _guard: ConnGuard,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, guard: ConnGuard) -> Self {
        let idle = guard.limits.idle_timeout;
        Guarded {
            inner,
            _guard: guard,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn touch(&mut self) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "guest connection idle")
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Requests per second per source address, a token bucket each.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Addresses tracked before full buckets are forgotten.
const MAX_TRACKED: usize = 65_536;

impl RateLimiter {
    /// `per_sec` requests a second, `burst` at once; `None` when
    /// `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32, burst: u32) -> Option<RateLimiter> {
        (per_sec > 0).then(|| RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(per_sec)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The configured rate.
    pub fn per_sec(&self) -> u32 {
        self.per_sec as u32
    }

    /// Takes one token of `ip`'s bucket; false when it is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_TRACKED && !m.contains_key(&ip) {
            // Forget addresses whose bucket has refilled: they lose nothing.
            let (per_sec, burst) = (self.per_sec, self.burst);
            m.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = m.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let r = RateLimiter::new(10, 20).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!((0..30).filter(|_| r.allow_at(ip, t0)).count(), 20);
        assert!(r.allow_at(other, t0), "another address has its own bucket");
        // A second later, ten more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..30).filter(|_| r.allow_at(ip, t1)).count(), 10);
        assert!(RateLimiter::new(0, 0).is_none());
    }

    #[tokio::test]
    async fn per_address_cap_and_slots_are_given_back() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..Limits::default()
        };
        let c = ConnLimits::new(&limits, None);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = c.admit(a, c.slot().await).unwrap();
        let _g2 = c.admit(a, c.slot().await).unwrap();
        assert!(
            c.admit(a, c.slot().await).is_none(),
            "third from one address"
        );
        let _g3 = c.admit(b, c.slot().await).unwrap();
        // Every slot is taken: the next waits until one is given back.
        let waiting = tokio::time::timeout(Duration::from_millis(50), c.slot()).await;
        assert!(waiting.is_err());
        drop(g1);
        let slot = tokio::time::timeout(Duration::from_secs(1), c.slot())
            .await
            .unwrap();
        assert!(c.admit(a, slot).is_some());
        // The fd budget lowers the cap.
        let small = ConnLimits::new(&Limits::default(), Some(5));
        assert_eq!(small.slots.available_permits(), 5);
    }
}
