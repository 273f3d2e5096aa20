//! TLS for the listeners (`-tls-cert`/`-tls-key`): the certificate chain and private key read from
//! PEM files at startup and checked against each other, and the rustls server configuration that
//! every listener then uses, offering HTTP/2 and HTTP/1.1 by ALPN.
//!
//! The crypto provider is `ring`, the one kube and sqlx use in this build, and it is given to
//! rustls explicitly: nothing here relies on a process-wide default provider, so a second provider
//! linked in by some other crate can never make rustls panic.
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// ALPN protocol ids, in order of preference.
pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The provider every TLS configuration of fnlb uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listeners' TLS identity, loaded and checked.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    config: Arc<ServerConfig>,
}

/// Which of the two files a problem is about, so that the error can name its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFile {
    Cert,
    Key,
}

impl ServerTls {
    /// Reads both PEM files and builds the server configuration; the error names the file at
    /// fault. The certificate file is read first.
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<ServerTls, (TlsFile, String)> {
        let chain = read_cert_chain(cert_path).map_err(|e| (TlsFile::Cert, e))?;
        let key = read_private_key(key_path).map_err(|e| (TlsFile::Key, e))?;
        ServerTls::new(cert_path, key_path, chain, key)
    }

    /// Builds the server configuration from a chain and key already read.
    pub(crate) fn new(
        cert_path: &Path,
        key_path: &Path,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerTls, (TlsFile, String)> {
        let provider = provider();
        // Loading the key on its own first tells a bad key from a bad certificate.
        provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| (TlsFile::Key, format!("unusable private key: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| (TlsFile::Cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => {
                    (TlsFile::Key, "does not match the certificate of -tls-cert".to_owned())
                }
                e => (TlsFile::Cert, format!("unusable certificate: {e}")),
            })?;
        let mut config = config;
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(ServerTls { cert_path: cert_path.to_owned(), key_path: key_path.to_owned(), config: Arc::new(config) })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// Only the paths: the key stays out of logs.
impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

/// The same files; what they held was checked when they were read.
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path && self.key_path == other.key_path
    }
}

/// Every `CERTIFICATE` block of a PEM file, the server's own first.
pub(crate) fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain =
        CertificateDer::pem_file_iter(path).map_err(pem_error)?.collect::<Result<Vec<_>, _>>().map_err(pem_error)?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block in the PEM file".to_owned());
    }
    Ok(chain)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => "no PRIVATE KEY block (PKCS#8, RSA or EC) in the PEM file".to_owned(),
        e => pem_error(e),
    })
}

fn pem_error(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => io_error(&e),
        e => format!("not a valid PEM file: {e}"),
    }
}

fn io_error(e: &io::Error) -> String {
    // Without the "(os error N)" suffix: one short line.
    let mut msg = e.to_string();
    if let Some(at) = msg.find(" (os error") {
        msg.truncate(at);
    }
    format!("cannot read the file: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files { dir: tempfile::tempdir().unwrap() }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }

        /// A fresh self-signed certificate and its key.
        fn pair(&self, tag: &str) -> (PathBuf, PathBuf) {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            (
                self.write(&format!("{tag}.crt"), &ck.cert.pem()),
                self.write(&format!("{tag}.key"), &ck.signing_key.serialize_pem()),
            )
        }
    }

    #[test]
    fn loads_a_matching_pair_and_offers_h2_then_http11() {
        let f = Files::new();
        let (cert, key) = f.pair("a");
        let tls = ServerTls::load(&cert, &key).unwrap();
        assert_eq!(tls.config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn names_the_file_at_fault() {
        let f = Files::new();
        let (cert, key) = f.pair("a");
        let (_, other_key) = f.pair("b");
        let missing = f.dir.path().join("missing.pem");
        let garbage = f.write("garbage.pem", "hello\n");
        let broken = f.write("broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let bad_der = f.write("bad.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

        let err = |c: &Path, k: &Path| ServerTls::load(c, k).unwrap_err();
        let (file, msg) = err(&missing, &key);
        assert_eq!(file, TlsFile::Cert);
        assert_eq!(msg, "cannot read the file: No such file or directory");
        assert_eq!(err(&cert, &missing).0, TlsFile::Key);
        assert_eq!(err(&garbage, &key), (TlsFile::Cert, "no CERTIFICATE block in the PEM file".to_owned()));
        let (file, msg) = err(&broken, &key);
        assert_eq!(file, TlsFile::Cert);
        assert!(msg.starts_with("not a valid PEM file"), "{msg}");
        assert_eq!(err(&bad_der, &key).0, TlsFile::Cert);
        // A certificate is not a key, and a key is not a certificate.
        let (file, msg) = err(&cert, &cert);
        assert_eq!(file, TlsFile::Key);
        assert!(msg.starts_with("no PRIVATE KEY block"), "{msg}");
        assert_eq!(err(&key, &key).0, TlsFile::Cert);
        assert_eq!(err(&cert, &other_key), (TlsFile::Key, "does not match the certificate of -tls-cert".to_owned()));
        for (_, msg) in [err(&missing, &key), err(&broken, &key), err(&cert, &other_key)] {
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn a_directory_is_not_a_file() {
        let f = Files::new();
        let (_, key) = f.pair("a");
        let (file, msg) = ServerTls::load(f.dir.path(), &key).unwrap_err();
        assert_eq!(file, TlsFile::Cert);
        assert!(msg.starts_with("cannot read the file"), "{msg}");
    }
}
