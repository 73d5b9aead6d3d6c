//! TLS for the proxy's own listeners (data and admin): a certificate and key from PEM files,
//! reloaded when the files change, and optionally client certificates checked against a CA.
//!
//! A client certificate is verified when presented, not demanded by the handshake: a client
//! without one still connects, and the routes decide (the admin listener refuses `/admin/*`
//! without one and keeps `/healthz`, `/readyz`, `/metrics` open for the kubelet and
//! Prometheus, which present none). [`crate::server`] marks each request of a connection whose
//! client presented a verified certificate with [`crate::server::VerifiedClientCert`].
//!
//! Reloading: [`ServerTls::watch`] looks at the files' modification times on an interval and
//! swaps in the new pair once it parses and the key matches the certificate; a half-written
//! or broken pair is logged and the old one stays. New handshakes use the new pair; open
//! connections keep theirs.

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// Where a listener's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, a client certificate must be signed by one of these CAs (PEM); a client with
    /// none connects unmarked (see the module's doc).
    pub client_ca: Option<PathBuf>,
}

impl From<&shift_config::TlsConfig> for TlsFiles {
    fn from(config: &shift_config::TlsConfig) -> TlsFiles {
        TlsFiles {
            cert: config.cert.clone(),
            key: config.key.clone(),
            client_ca: config.client_ca.clone(),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// A listener's TLS: the rustls config to accept with, and the certificate it reloads.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    cert: Arc<ReloadingCert>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.cert.files)
            .finish()
    }
}

impl ServerTls {
    /// Loads the files and builds the config; `alpn` lists the protocols offered, in order of
    /// preference (e.g. `h2`, `http/1.1`).
    pub fn load(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let cert = Arc::new(ReloadingCert::load(files.clone())?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(path)? {
                    roots.add(ca)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            config: Arc::new(config),
            cert,
        })
    }

    /// The acceptor for incoming connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Reloads the certificate and key whenever their files change, checking every `every`,
    /// until the returned task is aborted.
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let cert = self.cert.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let cert = cert.clone();
                // File reads and parsing off the runtime's worker threads.
                let _ = tokio::task::spawn_blocking(move || cert.reload_if_changed()).await;
            }
        })
    }

    /// Reloads now if the files changed; true when a new pair was taken.
    pub fn reload_if_changed(&self) -> bool {
        self.cert.reload_if_changed()
    }

    /// The leaf certificate served now.
    pub fn current_leaf(&self) -> CertificateDer<'static> {
        self.cert.current.load().cert[0].clone()
    }
}

/// The served certificate, swapped when its files change.
struct ReloadingCert {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    /// The modification times the current pair was read at.
    stamp: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish()
    }
}

impl ReloadingCert {
    fn load(files: TlsFiles) -> Result<ReloadingCert, TlsError> {
        let stamp = stamps(&files);
        let key = certified_key(&files)?;
        Ok(ReloadingCert {
            files,
            current: ArcSwap::from_pointee(key),
            stamp: Mutex::new(stamp),
        })
    }

    fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.files);
        let mut stamp = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *stamp == now {
            return false;
        }
        match certified_key(&self.files) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                *stamp = now;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                // Maybe half written: keep the old pair, try again at the next change.
                *stamp = now;
                tracing::error!(%error, "TLS certificate not reloaded; the previous one stays");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn stamps(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (modified(&files.cert), modified(&files.key))
}

fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(CertifiedKey::from_der(certs, key, &provider)?)
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Empty {
            path: path.to_owned(),
            what: "private key",
        })
}

/// A test certificate authority: issues server and client certificates into a temp dir.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::Certificate,
        ca_params: rcgen::CertificateParams,
        ca_key: rcgen::KeyPair,
    }

    impl Pki {
        pub(crate) fn new() -> Pki {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let ca = params.self_signed(&ca_key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            Pki {
                dir,
                ca,
                ca_params: params,
                ca_key,
            }
        }

        /// Writes a certificate for `name` signed by the CA to `name.pem` / `name.key`.
        pub(crate) fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            let (cert_path, key_path) = (
                self.path(&format!("{name}.pem")),
                self.path(&format!("{name}.key")),
            );
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        }

        pub(crate) fn path(&self, file: &str) -> PathBuf {
            self.dir.path().join(file)
        }

        pub(crate) fn client(&self, identity: Option<&str>) -> tokio_rustls::TlsConnector {
            tokio_rustls::TlsConnector::from(Arc::new(self.client_config(identity)))
        }

        /// A client trusting this CA, presenting a certificate for `identity` when given.
        pub(crate) fn client_config(&self, identity: Option<&str>) -> rustls::ClientConfig {
            self.client_config_issued_by(identity.map(|name| (name, self)))
        }

        /// A client trusting this CA, presenting a certificate for a name issued by a CA.
        pub(crate) fn client_config_issued_by(
            &self,
            identity: Option<(&str, &Pki)>,
        ) -> rustls::ClientConfig {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            match identity {
                None => builder.with_no_client_auth(),
                Some((name, issuer)) => {
                    let (cert, key) = issuer.issue(name);
                    builder
                        .with_client_auth_cert(read_certs(&cert).unwrap(), read_key(&key).unwrap())
                        .unwrap()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Pki;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves each connection: reads a line, answers "ok\n", or "id\n" to a client that
    /// presented a verified certificate.
    async fn serve(tls: ServerTls) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 3];
                        let answer: &[u8] = match stream.get_ref().1.peer_certificates() {
                            Some(_) => b"id\n",
                            None => b"ok\n",
                        };
                        if stream.read_exact(&mut buf).await.is_ok() {
                            let _ = stream.write_all(answer).await;
                            let _ = stream.shutdown().await;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Connects, says hello, returns the answer and the server's leaf certificate.
    async fn call(
        addr: std::net::SocketAddr,
        connector: &tokio_rustls::TlsConnector,
    ) -> std::io::Result<(Vec<u8>, CertificateDer<'static>)> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(b"hi\n").await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let leaf = stream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned();
        Ok((answer, leaf))
    }

    #[tokio::test]
    async fn serves_reloads_and_keeps_the_old_pair_when_the_new_is_broken() {
        let pki = Pki::new();
        let (cert, key) = pki.issue("localhost");
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        };
        let tls = ServerTls::load(&files, &[b"http/1.1"]).unwrap();
        let addr = serve(tls.clone()).await;
        // A fresh client each time: a resumed session would report the first certificate.
        let (answer, first) = call(addr, &pki.client(None)).await.unwrap();
        assert_eq!(answer, b"ok\n");
        assert_eq!(first, tls.current_leaf());

        // A new pair, written over the old files.
        let (cert_again, _) = pki.issue("localhost");
        assert_eq!(cert_again, cert);
        bump_mtime(&cert);
        assert!(tls.reload_if_changed(), "changed files are reloaded");
        let (_, second) = call(addr, &pki.client(None)).await.unwrap();
        assert_ne!(second, first, "new handshakes get the new certificate");
        assert_eq!(second, tls.current_leaf());
        assert!(
            !tls.reload_if_changed(),
            "unchanged files are not reloaded again"
        );

        // A half-written certificate: refused, the served one stays.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        bump_mtime(&cert);
        assert!(!tls.reload_if_changed());
        let (answer, third) = call(addr, &pki.client(None)).await.unwrap();
        assert_eq!((answer.as_slice(), &third), (&b"ok\n"[..], &second));
    }

    #[tokio::test]
    async fn client_certificates_are_verified_when_a_client_ca_is_set() {
        let pki = Pki::new();
        let (cert, key) = pki.issue("localhost");
        let files = TlsFiles {
            cert,
            key,
            client_ca: Some(pki.path("ca.pem")),
        };
        let addr = serve(ServerTls::load(&files, &[]).unwrap()).await;
        let (answer, _) = call(addr, &pki.client(Some("ops"))).await.unwrap();
        assert_eq!(answer, b"id\n", "a certificate from the CA is taken");
        let (answer, _) = call(addr, &pki.client(None)).await.unwrap();
        assert_eq!(answer, b"ok\n", "a client without one connects, unmarked");
        // A certificate from another CA fails the handshake (TLS 1.3: at the first read).
        let stranger = Pki::new();
        let config = pki.client_config_issued_by(Some(("ops", &stranger)));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        assert!(
            call(addr, &connector).await.is_err(),
            "a certificate from another CA is refused"
        );
    }

    #[test]
    fn missing_and_empty_files_say_which() {
        let pki = Pki::new();
        let files = TlsFiles {
            cert: pki.path("nope.pem"),
            key: pki.path("nope.key"),
            client_ca: None,
        };
        let error = ServerTls::load(&files, &[]).unwrap_err().to_string();
        assert!(error.contains("nope.pem"), "{error}");
        std::fs::write(pki.path("empty.pem"), "").unwrap();
        let (_, key) = pki.issue("localhost");
        let files = TlsFiles {
            cert: pki.path("empty.pem"),
            key,
            client_ca: None,
        };
        let error = ServerTls::load(&files, &[]).unwrap_err().to_string();
        assert!(error.contains("no certificate"), "{error}");
    }

    /// Moves a file's modification time forward, so a rewrite within the file system's time
    /// granularity still counts as a change.
    fn bump_mtime(path: &Path) {
        let file = std::fs::File::options().append(true).open(path).unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        file.set_modified(later).unwrap();
    }
}
