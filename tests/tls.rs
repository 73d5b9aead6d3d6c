//! TLS on both listeners, with certificates made here (a CA, the proxy's certificate, an
//! operator's client certificate): the official Python client over https to the data port,
//! `chroma-shift ctl` over https to an admin port that requires client certificates, and a
//! certificate replaced on disk served to the next handshake without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use shift_testkit::collection::{collection_id, count};
use shift_testkit::python::run_script;
use shift_testkit::stores::two_stores;
use shift_testkit::wait::wait_until;
use shift_testkit::{Proxy, ADMIN_TOKEN};

/// A certificate authority writing PEM files into a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = name("chroma-shift test CA");
        let key = rcgen::KeyPair::generate()?;
        let dir = tempfile::Builder::new()
            .prefix("chroma-shift-tls-")
            .tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), params.self_signed(&key)?.pem())?;
        Ok(Pki { dir, params, key })
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for `names` into `file.pem` / `file.key`; its DER.
    fn issue(&self, file: &str, names: &[&str]) -> anyhow::Result<Vec<u8>> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let mut params = rcgen::CertificateParams::new(names.clone())?;
        // Not rcgen's default name, which is the CA's too: OpenSSL would call the leaf
        // self-signed.
        params.distinguished_name = name(&names[0]);
        let cert = params.signed_by(&key, &issuer)?;
        // The key first: the proxy's watcher then sees a changed pair once the cert lands.
        std::fs::write(
            self.dir.path().join(format!("{file}.key")),
            key.serialize_pem(),
        )?;
        std::fs::write(self.dir.path().join(format!("{file}.pem")), cert.pem())?;
        Ok(cert.der().to_vec())
    }

    fn pair(&self, file: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        )
    }
}

fn name(common_name: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    name
}

/// The `[server.tls]` and `[admin.tls]` sections for the proxy's pair `server`.
fn tls_toml(pki: &Pki, client_ca: bool) -> String {
    let (cert, key) = pki.pair("server");
    let files = format!(
        "cert = \"{}\"\nkey = \"{}\"\nreload_interval = \"200ms\"\n",
        cert.display(),
        key.display()
    );
    let client_ca = if client_ca {
        format!("client_ca = \"{}\"\n", pki.ca().display())
    } else {
        String::new()
    };
    format!("[server.tls]\n{files}\n[admin.tls]\n{files}{client_ca}")
}

fn https(url: &str) -> String {
    url.replacen("http://", "https://", 1)
}

/// Runs `chroma-shift ctl ARGS --json`: its exit success and stdout (and stderr on failure).
async fn ctl(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let bin = tokio::task::spawn_blocking(shift_testkit::process::chroma_shift_bin).await??;
    let output = tokio::process::Command::new(bin)
        .arg("ctl")
        .args(args)
        .arg("--json")
        .env("CHROMA_SHIFT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("CHROMA_SHIFT_ADMIN_CA")
        .env_remove("CHROMA_SHIFT_ADMIN_CLIENT_CERT")
        .env_remove("CHROMA_SHIFT_ADMIN_CLIENT_KEY")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .context("ctl hung")??;
    // With --json an API error is printed on stdout; other failures go to stderr.
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        text.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    Ok((output.status.success(), text))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

#[tokio::test]
async fn python_over_https_and_ctl_over_mutual_tls() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    pki.issue("server", &["localhost", "127.0.0.1"])?;
    pki.issue("ops", &["ops"])?;
    let stranger = Pki::new()?;
    let (old, new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .toml(&tls_toml(&pki, true))
        .spawn()
        .await?;
    let data = https(&proxy.url());
    let ca = pki.ca();

    // (a) The official client over https with the CA file: writes reach both stores.
    let out = run_script(
        "tls_client.py",
        &["--url", &data, "--ca", path(&ca), "--collection", "secure"],
        Duration::from_secs(120),
    )
    .await?;
    let answer: Value = serde_json::from_str(out.stdout.trim())?;
    assert_eq!(answer["count"], 3, "{answer}");
    assert_eq!(answer["nearest"], "a", "{answer}");
    // Plain http to the TLS port, and a CA that did not sign the certificate: refused.
    for (url, ca) in [(proxy.url(), ca.clone()), (data.clone(), stranger.ca())] {
        run_script(
            "tls_client.py",
            &[
                "--url",
                &url,
                "--ca",
                path(&ca),
                "--collection",
                "never",
                "--expect-refused",
            ],
            Duration::from_secs(120),
        )
        .await?;
    }

    // (b) ctl over https: the CA alone is not enough where client certificates are required.
    let admin = https(&proxy.admin_url());
    let (ok, text) = ctl(&["--admin-url", &admin, "--ca-file", path(&ca), "status"]).await?;
    assert!(
        !ok && text.contains("AuthError") && text.contains("client certificate"),
        "status without a client certificate: {text}"
    );
    // Probes and Prometheus present no certificate, and still reach the open routes.
    let admin_addr: std::net::SocketAddr =
        proxy.admin_url().trim_start_matches("http://").parse()?;
    for (route, expected) in [("/healthz", 200), ("/metrics", 200), ("/admin/status", 401)] {
        let status = https_get(admin_addr, &ca, route).await?;
        assert_eq!(status, expected, "{route} without a client certificate");
    }
    let (ops_cert, ops_key) = pki.pair("ops");
    let with_cert = [
        "--admin-url",
        &admin,
        "--ca-file",
        path(&ca),
        "--client-cert",
        path(&ops_cert),
        "--client-key",
        path(&ops_key),
    ];
    let (ok, text) = ctl(&[&with_cert[..], &["status"]].concat()).await?;
    assert!(ok, "status with a client certificate: {text}");
    let status: Value = serde_json::from_str(&text)?;
    assert_eq!(status["topology"]["primary"], "old", "{status}");
    let (ok, text) = ctl(&[&with_cert[..], &["cutover", "--timeout", "30s"]].concat()).await?;
    assert!(ok, "cutover: {text}");
    let (ok, text) = ctl(&[&with_cert[..], &["status"]].concat()).await?;
    assert!(ok, "{text}");
    let status: Value = serde_json::from_str(&text)?;
    assert_eq!(status["topology"]["primary"], "new", "{status}");
    // The cutover drained the journal: both stores hold what the Python client wrote.
    for store in [&old, &new] {
        let id = collection_id(&store.url(), "secure").await?;
        assert_eq!(count(&store.url(), &id).await?, 3, "{}", store.url());
    }
    proxy.shutdown().await?;
    Ok(())
}

/// A fresh TLS connection to `addr` trusting `ca` (no session resumption), with no client
/// certificate.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(ca)?)) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(connector.connect(name, tcp).await?)
}

/// `GET route` over https without a client certificate: the status.
async fn https_get(addr: std::net::SocketAddr, ca: &Path, route: &str) -> anyhow::Result<u16> {
    let io = hyper_util::rt::TokioIo::new(tls_connect(addr, ca).await?);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let request = http::Request::get(route)
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    Ok(sender.send_request(request).await?.status().as_u16())
}

/// The leaf certificate a fresh TLS handshake with `addr` gets.
async fn served_leaf(addr: std::net::SocketAddr, ca: &Path) -> anyhow::Result<Vec<u8>> {
    let stream = tls_connect(addr, ca).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("no certificate served")?;
    Ok(leaf.to_vec())
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let first = pki.issue("server", &["localhost", "127.0.0.1"])?;
    // No backend is needed to shake hands.
    let proxy = Proxy::builder()
        .toml(&tls_toml(&pki, false))
        .spawn()
        .await?;
    assert_eq!(served_leaf(proxy.addr(), &pki.ca()).await?, first);

    let second = pki.issue("server", &["localhost", "127.0.0.1"])?;
    assert_ne!(first, second);
    let addr = proxy.addr();
    let ca = pki.ca();
    wait_until(
        "the new certificate is served",
        Duration::from_secs(30),
        || {
            let (ca, second) = (ca.clone(), second.clone());
            async move { Ok(served_leaf(addr, &ca).await? == second) }
        },
    )
    .await?;
    proxy.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_that_does_not_parse_stops_the_start_with_its_name() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    pki.issue("server", &["localhost"])?;
    let (cert, _) = pki.pair("server");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA")?;
    let error = Proxy::builder()
        .toml(&tls_toml(&pki, false))
        .spawn()
        .await
        .expect_err("a broken certificate is refused at start");
    let text = format!("{error:#}");
    assert!(
        text.contains("server.tls") && text.contains(path(&cert)),
        "{text}"
    );
    Ok(())
}
