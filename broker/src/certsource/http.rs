//! A minimal, blocking HTTP/1.1 GET client for AMD KDS: one request per
//! connection (`Connection: close`), an overall deadline covering connect,
//! TLS handshake, request and response, and hard limits on what it reads.
//!
//! Why not a general client: KDS needs three GETs of a few KiB whose content
//! is verified against the pinned ARKs anyway; rustls (already in the tree)
//! provides TLS and `webpki-roots` the roots, so a small parser is less code
//! to trust than a client stack. The parser ([`read_response`]) refuses
//! what it does not understand: a bad status line, headers over
//! [`Limits::max_header_bytes`], a malformed or conflicting Content-Length,
//! `Transfer-Encoding` other than `chunked`, a malformed chunk, and a body
//! cut short or over [`Limits::max_body_bytes`].
//!
//! Name resolution uses the system resolver (`getaddrinfo`), which the
//! deadline does not bound; configure a numeric `url` or a local resolver
//! where that matters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the parser accepts at most.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Status line and headers together.
    pub max_header_bytes: usize,
    /// Body (after de-chunking).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http(s)://host[:port][/path]`.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting, TLS or I/O failed, or the deadline passed.
    #[error("{0}")]
    Io(String),
    /// The response is not acceptable HTTP/1.1.
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
}

/// A parsed `http://` or `https://` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// TLS or not.
    pub https: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix without a trailing `/` (may be empty).
    pub prefix: String,
}

impl Url {
    /// Parses `http(s)://host[:port][/prefix]`; no user info, query or
    /// fragment. The host is a DNS name or IPv4 address (letters, digits,
    /// `.`, `-`, `_`) or an IPv6 address in brackets, the port 1 to 65535
    /// in decimal, the path printable ASCII: each goes into the request
    /// as it is, so nothing that could end a header line gets through.
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let err = |reason: &str| HttpError::Url {
            url: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(err("must start with https:// or http://"));
        };
        if rest.contains(['?', '#', '@', ' ']) {
            return Err(err("no user info, query, fragment or spaces"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err("the path must be printable ASCII"));
        }
        let default_port = if https { 443 } else { 80 };
        let port = |p: &str| -> Result<u16, HttpError> {
            match p.parse() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
                _ => Err(err("bad port (1 to 65535)")),
            }
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| err("unclosed '['"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(err("not an IPv6 address in '[…]'"));
            }
            let port = match after.strip_prefix(':') {
                Some(p) => port(p)?,
                None if after.is_empty() => default_port,
                None => return Err(err("junk after ']'")),
            };
            (h.to_owned(), port)
        } else {
            let (h, p) = match authority.split_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (authority, default_port),
            };
            let name_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
            if !h.bytes().all(name_byte) {
                return Err(err(
                    "the host must be a DNS name, an IPv4 address or an IPv6 address in '[…]'",
                ));
            }
            (h.to_owned(), p)
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        Ok(Url {
            https,
            host,
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port` for messages and the rate limiter.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The TLS client configuration for KDS: rustls with the aws-lc-rs
/// provider, TLS 1.2 and 1.3, the Mozilla roots from `webpki-roots`.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Io(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A socket whose every read and write is bounded by one deadline.
struct Deadlined {
    sock: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    fn remaining(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "deadline passed",
            ))
        } else {
            Ok(left)
        }
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.remaining()?;
        self.sock.set_read_timeout(Some(left))?;
        self.sock.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.remaining()?;
        self.sock.set_write_timeout(Some(left))?;
        self.sock.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

/// `GET {url.prefix}{path_and_query}` with an overall `timeout`. `tls` is
/// required for `https` URLs.
pub fn get(
    url: &Url,
    path_and_query: &str,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
    limits: Limits,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let io =
        |what: &str, e: std::io::Error| HttpError::Io(format!("{what} {}: {e}", url.authority()));
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| io("cannot resolve", e))?
        .collect();
    let mut last = None;
    let mut sock = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let sock = sock.ok_or_else(|| {
        io(
            "cannot connect to",
            last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no address answered in time")
            }),
        )
    })?;
    let _ = sock.set_nodelay(true);
    let stream = Deadlined { sock, deadline };
    let host_header = if url.port == if url.https { 443 } else { 80 } {
        url.authority()
            .rsplit_once(':')
            .map_or_else(|| url.host.clone(), |(h, _)| h.to_owned())
    } else {
        url.authority()
    };
    let request = format!(
        "GET {}{} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: keybroker/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.prefix,
        path_and_query,
        env!("CARGO_PKG_VERSION")
    );
    if url.https {
        let cfg =
            tls.ok_or_else(|| HttpError::Io("https URL without a TLS configuration".into()))?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| HttpError::Io(format!("invalid TLS server name {:?}: {e}", url.host)))?;
        let conn = rustls::ClientConnection::new(cfg.clone(), name)
            .map_err(|e| HttpError::Io(format!("TLS: {e}")))?;
        let mut tls_stream = rustls::StreamOwned::new(conn, stream);
        tls_stream
            .write_all(request.as_bytes())
            .and_then(|()| tls_stream.flush())
            .map_err(|e| io("cannot send the request to", e))?;
        read_response(&mut BufReader::new(tls_stream), limits)
    } else {
        let mut stream = stream;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| io("cannot send the request to", e))?;
        read_response(&mut BufReader::new(stream), limits)
    }
}

fn malformed(s: impl Into<String>) -> HttpError {
    HttpError::Malformed(s.into())
}

fn io_err(e: std::io::Error) -> HttpError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        malformed("connection closed early")
    } else {
        HttpError::Io(format!("reading the response: {e}"))
    }
}

/// Reads one CRLF-terminated line of at most `budget` bytes (CRLF included),
/// decrementing the budget.
fn read_line(r: &mut impl BufRead, budget: &mut usize, what: &str) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let mut limited = (&mut *r).take(*budget as u64 + 1);
    limited.read_until(b'\n', &mut line).map_err(io_err)?;
    if line.len() > *budget {
        return Err(malformed(format!("{what} too long")));
    }
    *budget -= line.len();
    if line.is_empty() || !line.ends_with(b"\n") {
        return Err(malformed(format!("connection closed inside the {what}")));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| malformed(format!("{what} is not UTF-8")))
}

/// Reads and parses one HTTP/1.x response (status line, headers, body).
pub fn read_response(r: &mut impl BufRead, limits: Limits) -> Result<Response, HttpError> {
    let mut budget = limits.max_header_bytes;
    let status_line = read_line(r, &mut budget, "status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(malformed(format!("bad status line {status_line:?}")));
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!("bad status code in {status_line:?}")));
    }
    let status: u16 = code.parse().map_err(|_| malformed("bad status code"))?;
    if !(100..=599).contains(&status) {
        return Err(malformed(format!("status {status} out of range")));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut budget, "header section")?;
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return Err(malformed("obsolete header line folding"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("header line without ':' ({line:?})")))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed(format!("bad header name {name:?}")));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let find_all = |n: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let te = find_all("transfer-encoding");
    let cl = find_all("content-length");
    let body = if !te.is_empty() {
        if !cl.is_empty() {
            return Err(malformed("both Transfer-Encoding and Content-Length"));
        }
        if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
            return Err(malformed(format!("unsupported Transfer-Encoding {te:?}")));
        }
        read_chunked(r, limits)?
    } else if !cl.is_empty() {
        let mut len: Option<usize> = None;
        for v in cl.iter().flat_map(|v| v.split(',')) {
            let v = v.trim();
            if v.is_empty() || v.len() > 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed(format!("bad Content-Length {v:?}")));
            }
            let n: usize = v.parse().map_err(|_| malformed("bad Content-Length"))?;
            if len.is_some_and(|l| l != n) {
                return Err(malformed("conflicting Content-Length values"));
            }
            len = Some(n);
        }
        let len = len.unwrap_or(0);
        if len > limits.max_body_bytes {
            return Err(malformed(format!(
                "body of {len} bytes exceeds the {}-byte limit",
                limits.max_body_bytes
            )));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                malformed(format!("body shorter than its Content-Length {len}"))
            } else {
                io_err(e)
            }
        })?;
        body
    } else if status == 204 || status == 304 || status < 200 {
        Vec::new()
    } else {
        let mut body = Vec::new();
        (&mut *r)
            .take(limits.max_body_bytes as u64 + 1)
            .read_to_end(&mut body)
            .map_err(io_err)?;
        if body.len() > limits.max_body_bytes {
            return Err(malformed(format!(
                "body exceeds the {}-byte limit",
                limits.max_body_bytes
            )));
        }
        body
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_chunked(r: &mut impl BufRead, limits: Limits) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    // Chunk-size lines and trailers share one budget with the headers' limit.
    let mut budget = limits.max_header_bytes;
    loop {
        let line = read_line(r, &mut budget, "chunk size line")?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        if size_hex.is_empty()
            || size_hex.len() > 8
            || !size_hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(malformed(format!("bad chunk size {line:?}")));
        }
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| malformed("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if read_line(r, &mut budget, "trailer section")?.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > limits.max_body_bytes {
            return Err(malformed(format!(
                "chunked body exceeds the {}-byte limit",
                limits.max_body_bytes
            )));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                malformed("connection closed inside a chunk")
            } else {
                io_err(e)
            }
        })?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)
            .map_err(|_| malformed("connection closed after a chunk"))?;
        if &crlf != b"\r\n" {
            return Err(malformed("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Response, HttpError> {
        read_response(&mut &raw[..], Limits::default())
    }

    fn small(raw: &[u8]) -> Result<Response, HttpError> {
        read_response(
            &mut &raw[..],
            Limits {
                max_header_bytes: 64,
                max_body_bytes: 16,
            },
        )
    }

    #[test]
    fn content_length_body() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcEXTRA").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abc");
        assert_eq!(r.header("x-a"), Some("b"));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn body_to_eof_and_status_without_reason() {
        let r = parse(b"HTTP/1.0 404\r\n\r\nnot found").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"not found"[..]));
        let r = parse(b"HTTP/1.1 429 Too Many Requests\nRetry-After: 7\n\n").unwrap();
        assert_eq!(r.header("retry-after"), Some("7"));
    }

    fn is_malformed(r: Result<Response, HttpError>) -> String {
        match r {
            Err(HttpError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn truncation_is_refused() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
        for cut in [0, 5, 16, 30, 40, full.len() - 1] {
            let m = is_malformed(parse(&full[..cut]));
            assert!(
                m.contains("closed") || m.contains("shorter"),
                "cut {cut}: {m}"
            );
        }
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n";
        for cut in [50, 53, 56, 58, chunked.len() - 1] {
            is_malformed(parse(&chunked[..cut]));
        }
    }

    #[test]
    fn bad_status_lines_are_refused() {
        for raw in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 099 x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"\r\n",
            b"HTTP/1.1 200 \xff\r\n\r\n",
        ] {
            is_malformed(parse(raw));
        }
    }

    #[test]
    fn huge_and_malformed_headers_are_refused() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 100));
        raw.extend(b": b\r\n\r\n");
        assert!(is_malformed(small(&raw)).contains("too long"));
        // Many small headers add up.
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..10 {
            raw.extend(b"A: b\r\n");
        }
        raw.extend(b"\r\n");
        assert!(is_malformed(small(&raw)).contains("too long"));
        is_malformed(parse(b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n"));
        is_malformed(parse(b"HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\n\r\n"));
        is_malformed(parse(b"HTTP/1.1 200 OK\r\nBad Name: b\r\n\r\n"));
    }

    #[test]
    fn bad_content_length_is_refused() {
        for cl in ["-1", "abc", "1 2", "", "0x10", "99999999999999999999", "+5"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nabcdef");
            is_malformed(parse(raw.as_bytes()));
        }
        is_malformed(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ));
        // Equal duplicates are one value (RFC 9110 8.6).
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab")
                .unwrap()
                .body,
            b"ab"
        );
        is_malformed(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        ));
        is_malformed(small(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n"));
        is_malformed(small(
            &[&b"HTTP/1.1 200 OK\r\n\r\n"[..], &[b'x'; 17]].concat(),
        ));
    }

    #[test]
    fn bad_chunking_is_refused() {
        for body in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"2\r\nabc\r\n0\r\n\r\n",
            b"123456789\r\n",
            b"-1\r\n",
        ] {
            let raw = [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                body,
            ]
            .concat();
            is_malformed(parse(&raw));
        }
        is_malformed(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"));
        is_malformed(parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ));
        // Chunks over the body limit.
        is_malformed(small(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n",
        ));
    }

    #[test]
    fn tls_configuration_builds() {
        assert!(tls_config().is_ok());
    }

    #[test]
    fn plain_get_over_loopback() {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            first
        });
        let url = Url::parse(&format!("http://{addr}/base")).unwrap();
        let r = get(
            &url,
            "/x?y=1",
            Duration::from_secs(5),
            None,
            Limits::default(),
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(server.join().unwrap(), "GET /base/x?y=1 HTTP/1.1\r\n");
    }

    #[test]
    fn a_silent_server_hits_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let started = Instant::now();
        let e = get(
            &url,
            "/",
            Duration::from_millis(300),
            None,
            Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(e, HttpError::Io(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://kdsintf.amd.com").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.prefix.as_str()),
            (true, "kdsintf.amd.com", 443, "")
        );
        let u = Url::parse("http://127.0.0.1:8080/kds/").unwrap();
        assert_eq!((u.https, u.port, u.prefix.as_str()), (false, 8080, "/kds"));
        let u = Url::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        assert_eq!(u.authority(), "[::1]:81");
        for bad in [
            "ftp://x",
            "https://",
            "https://h:x",
            "https://u@h",
            "http://h/?q",
            "kdsintf.amd.com",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    /// Found by the `kds_http` fuzz target: hosts and paths with control
    /// characters, which went into the request line and the Host header as
    /// they were, and ports and addresses that are not ones.
    #[test]
    fn urls_with_junk_are_refused() {
        for bad in [
            "http://h/a\r\nX-Injected: 1",
            "http://h/\u{7f}",
            "http://h/caf\u{e9}",
            "http://h\r\nX: y/",
            "http://h\u{0}ost",
            "http://h\tost",
            "http://ho%st",
            "http://h:1:2",
            "http://h:+80",
            "http://h:0",
            "http://h:65536",
            "http://[not-v6]:80",
            "http://[::1\n]",
            "http://[fe80::1%eth0]",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad:?}");
        }
        for good in [
            "http://kds_proxy.internal:8080/a-b/c.d~e",
            "https://10.0.0.1",
            "https://[fd00::1]:8443",
        ] {
            assert!(Url::parse(good).is_ok(), "{good}");
        }
    }
}
