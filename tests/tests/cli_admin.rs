//! The admin plane (`keybroker.admin.v1`) through the real executables:
//! it is not reachable on the guest port, the Unix socket admits only the
//! allowed peer uids, the TCP listener only clients with a certificate from
//! its client CA, and the broker refuses to start an unauthenticated TCP
//! admin listener.

use std::path::Path;
use std::sync::Arc;

use keybroker_tests::ca::TestCa;
use keybroker_tests::exe::{self, init, init_and_serve, mode, run_in, tempdir, Server};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn write_key(dir: &Path, name: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    write(dir, name, text);
    std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Replaces `from` by `to` in `kb/config.toml`.
fn edit_config(d: &Path, from: &str, to: &str) {
    let p = d.join("kb/config.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(&p, text.replace(from, to)).unwrap();
}

#[test]
fn admin_api_is_not_served_on_the_guest_port() {
    let tmp = tempdir();
    let d = tmp.path();
    let server = init_and_serve(d, "kb");
    // A client certificate the guest port never asks for, and the guest
    // port's own self-signed certificate as the CA.
    let ca = TestCa::new("someone");
    let (c, k) = ca.issue("admin", &[], true);
    write(d, "c.pem", &c);
    write_key(d, "k.pem", &k);
    let url = format!("https://{}", server.guest_addr);
    for args in [
        &["policy", "list"][..],
        &["volume", "add", "data", "--policy", "prod"],
        &["audit"],
    ] {
        let r = run_in(
            d,
            &[
                args,
                &[
                    "--admin-url",
                    &url,
                    "--admin-cert",
                    "c.pem",
                    "--admin-key",
                    "k.pem",
                    "--admin-ca",
                    "kb/tls/cert.pem",
                ],
            ]
            .concat(),
        );
        r.expect_code(1);
        assert_eq!(r.stdout, "", "{args:?}");
        assert!(
            r.stderr
                .starts_with("broker: error: the broker does not serve this admin call"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // The same calls on the admin socket work.
    run_in(d, &["policy", "list", "--config", "kb/config.toml"]).expect_code(0);
}

#[test]
fn socket_is_private_and_a_stale_one_is_replaced() {
    let tmp = tempdir();
    let d = tmp.path();
    init(d, "kb", "127.0.0.1:0");
    // A socket left behind by a crashed broker: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(d.join("kb/admin.sock")).unwrap());
    assert!(d.join("kb/admin.sock").exists());
    let _server = Server::start(d, "kb/config.toml");
    assert_eq!(mode(&d.join("kb/admin.sock")), 0o600);
    run_in(d, &["volume", "list", "--config", "kb/config.toml"]).expect_code(0);
    // A second broker on the same socket is refused while the first serves.
    let r = run_in(d, &["serve", "--config", "kb/config.toml"]);
    r.expect_code(1);
    assert!(
        r.stderr
            .contains("another process is serving the admin socket"),
        "{}",
        r.stderr
    );
    // A missing parent directory is created 0700.
    let tmp2 = tempdir();
    init(tmp2.path(), "kb", "127.0.0.1:0");
    let d2 = tmp2.path();
    edit_config(
        d2,
        &format!("socket = \"{}\"", d2.join("kb/admin.sock").display()),
        &format!("socket = \"{}\"", d2.join("run/sub/admin.sock").display()),
    );
    let _server2 = Server::start(d2, "kb/config.toml");
    assert_eq!(mode(&d2.join("run/sub")), 0o700);
    assert_eq!(mode(&d2.join("run/sub/admin.sock")), 0o600);
}

#[test]
fn peer_uid_not_allowed_is_refused() {
    let tmp = tempdir();
    let d = tmp.path();
    init(d, "kb", "127.0.0.1:0");
    edit_config(d, "# allowed_uids = [0]", "allowed_uids = [4242]");
    let server = Server::start(d, "kb/config.toml");
    let me = rustix::process::geteuid().as_raw();
    let want = format!(
        "broker: uid {me} may not administer this broker; run the command as root or as the \
         broker's user, or add {me} to [admin] allowed_uids in the broker's config\n"
    );
    for args in [
        &["policy", "list"][..],
        &["volume", "add", "data", "--policy", "prod"],
        &["volume", "delete", "data", "--yes"],
        &["audit", "verify"],
        &["platforms"],
    ] {
        let r = run_in(d, &[args, &["--config", "kb/config.toml"][..]].concat());
        r.expect_code(1);
        assert_eq!(r.stdout, "", "{args:?}");
        assert_eq!(r.stderr, want, "{args:?}");
    }
    assert!(server.log().contains("uid not allowed"), "{}", server.log());
}

#[test]
fn tcp_listener_without_client_ca_is_refused_at_start() {
    let tmp = tempdir();
    let d = tmp.path();
    init(d, "kb", "127.0.0.1:0");
    edit_config(
        d,
        "# tcp_listen = \"127.0.0.1:9443\"",
        "tcp_listen = \"127.0.0.1:0\"\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"",
    );
    let r = run_in(d, &["serve", "--config", "kb/config.toml"]);
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr.contains(
            "invalid config kb/config.toml: admin.client_ca: tcp_listen is set without client_ca: \
             the broker refuses to serve administration without client authentication; add \
             client_ca = \"FILE\""
        ),
        "{}",
        r.stderr
    );
    assert!(!d.join("kb/admin.sock").exists());
}

#[test]
fn mutual_tls_admits_only_certificates_of_the_client_ca() {
    let tmp = tempdir();
    let d = tmp.path();
    init(d, "kb", "127.0.0.1:0");
    let ca = TestCa::new("keybroker admin CA");
    let other = TestCa::new("another CA");
    std::fs::create_dir(d.join("kb/admin")).unwrap();
    let a = d.join("kb/admin");
    write(&a, "ca.pem", &ca.pem());
    let (c, k) = ca.issue("broker", &["127.0.0.1", "localhost"], false);
    write(&a, "cert.pem", &c);
    write_key(&a, "key.pem", &k);
    let (c, k) = ca.issue("alice", &[], true);
    write(d, "alice.pem", &c);
    write_key(d, "alice.key", &k);
    let (c, k) = other.issue("mallory", &[], true);
    write(d, "mallory.pem", &c);
    write_key(d, "mallory.key", &k);
    edit_config(
        d,
        "# tcp_listen = \"127.0.0.1:9443\"\n# tls_cert = \"admin/cert.pem\"\n# tls_key = \"admin/key.pem\"\n# client_ca = \"admin/client-ca.pem\"",
        "tcp_listen = \"127.0.0.1:0\"\ntls_cert = \"admin/cert.pem\"\ntls_key = \"admin/key.pem\"\nclient_ca = \"admin/ca.pem\"",
    );
    let server = Server::start(d, "kb/config.toml");
    let addr = server
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("admin tls on "))
        .expect("admin tls line")
        .to_owned();
    let url = format!("https://{addr}");
    let tls = |who: &str, args: &[&str]| {
        run_in(
            d,
            &[
                args,
                &[
                    "--admin-url",
                    &url,
                    "--admin-cert",
                    &format!("{who}.pem"),
                    "--admin-key",
                    &format!("{who}.key"),
                    "--admin-ca",
                    "kb/admin/ca.pem",
                ],
            ]
            .concat(),
        )
    };

    // A certificate of the client CA works, and the audit log names it.
    write(d, "p.toml", &util_policy());
    tls("alice", &["policy", "set", "prod", "p.toml"]).expect_code(0);
    let r = tls("alice", &["policy", "list"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "prod\trevision=1\n");
    let r = run_in(
        d,
        &[
            "audit",
            "--kind",
            "admin",
            "--json",
            "--config",
            "kb/config.toml",
        ],
    );
    r.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["client"], "cert=CN=alice", "{v}");
    assert_eq!(v[0]["details"]["action"], "policy.set");

    // A certificate of another CA is refused by the TLS layer.
    let r = tls("mallory", &["policy", "list"]);
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr
            .starts_with(&format!("broker: error: admin call to {url} failed: "))
            && r.stderr
                .contains("issued by the broker's [admin] client_ca"),
        "{}",
        r.stderr
    );
    assert!(
        server.log().contains("admin TLS handshake refused"),
        "{}",
        server.log()
    );

    // No client certificate at all: the handshake fails.
    let ca_pem = std::fs::read(a.join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut s = match connector.connect(name, tcp).await {
            Err(_) => return true,
            Ok(s) => s,
        };
        // TLS 1.3: the server's refusal arrives after the client's Finished.
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
    });
    assert!(refused, "a client without a certificate was served");
}

/// A valid policy (any measurement).
fn util_policy() -> String {
    format!(
        "version = 1\nmeasurements = [\"{}\"]\n\n[min_tcb.milan]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n",
        "ab".repeat(48)
    )
}

#[test]
fn another_user_is_refused_by_mode_and_by_peer_credentials() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to run the client as uid 65534");
        return;
    }
    let tmp = tempdir();
    let d = tmp.path();
    let _server = init_and_serve(d, "kb");
    let sock = d.join("kb/admin.sock");
    let as_nobody = || {
        let mut c = exe::broker_cmd();
        c.current_dir("/")
            .uid(65534)
            .gid(65534)
            .args(["policy", "list", "--socket"])
            .arg(&sock);
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Let uid 65534 reach the socket's directory.
    for dir in [d, &d.join("kb")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    // The socket's mode (0600) stops it first.
    let (code, stderr) = as_nobody();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "broker: error: cannot open the admin socket {}: permission denied; run the command \
             as root or as the broker's user\n",
            sock.display()
        )
    );
    // With the socket opened to everyone, the peer credentials still do.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, stderr) = as_nobody();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "broker: uid 65534 may not administer this broker; run the command as root or as the \
         broker's user, or add 65534 to [admin] allowed_uids in the broker's config\n"
    );
}
