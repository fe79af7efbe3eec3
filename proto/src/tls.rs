//! Transport security shared by the master, the agent and the CLI: bearer tokens that never print (a
//! redacting newtype, sha256 hashing, constant-time comparison) and TLS from PEM files (a CA, a certificate
//! and its key) turned into tonic client/server configs and a rustls server config for HTTPS. Everything uses
//! rustls with the ring provider (no OpenSSL, no aws-lc); tonic picks ring on its own, the HTTPS server gets
//! it explicitly here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake may take on a master's ports (gRPC, peer, HTTPS) before the connection is
/// closed: a client that connects and sends nothing (slowloris, or a peer gone mid-handshake) would
/// otherwise hold a descriptor and a task for ever.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest PEM file read: certificates and keys are a few KiB; anything bigger is the wrong file.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// Longest token accepted: real tokens are 64 hex characters; the limit keeps hostile headers cheap.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A bearer token in clear. `Debug` and `Display` print `<redacted>`, so it cannot leak through logs or
/// `{:?}` of a config; the only way to the text is [`Token::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }
    /// The clear text, for the `authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The sha256 hex digest a master config stores.
    pub fn sha256_hex(&self) -> String {
        sha256_hex(self.0.as_bytes())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compare two byte strings in time that depends only on their lengths (not on where they differ), so a
/// caller cannot find a stored hash byte by byte by timing refusals.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} {path}: {err}")]
    Read { what: &'static str, path: PathBuf, err: std::io::Error },
    #[error("TLS {what} {path}: larger than {MAX_PEM_BYTES} bytes")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("TLS {what} {path}: {msg}")]
    Pem { what: &'static str, path: PathBuf, msg: String },
    #[error("TLS setup: {0}")]
    Config(String),
}

/// `[tls]` in the master and agent configs and in a client context: PEM files.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signs every master, agent and client certificate of this cluster.
    pub ca: PathBuf,
    /// This process's certificate (server certificate on a master, client certificate on an agent/CLI).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|err| TlsError::Read { what, path: path.into(), err })?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { what, path: path.into() });
    }
    std::fs::read(path).map_err(|err| TlsError::Read { what, path: path.into(), err })
}

/// The loaded, checked PEM material.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    ca: Vec<CertificateDer<'static>>,
    certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsMaterial({} CA cert(s), {} cert(s), key <redacted>)", self.ca.len(), self.certs.len())
    }
}

fn certs(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, path: path.into(), msg: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what, path: path.into(), msg: "no CERTIFICATE block".into() });
    }
    Ok(certs)
}

impl TlsFiles {
    /// Read and check the three files (each must hold what its name says).
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let ca_pem = read_pem("CA", &self.ca)?;
        let cert_pem = read_pem("certificate", &self.cert)?;
        let key_pem = read_pem("key", &self.key)?;
        let ca = certs("CA", &self.ca, &ca_pem)?;
        let certs = certs("certificate", &self.cert, &cert_pem)?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            what: "key",
            path: self.key.clone(),
            msg: format!("no usable private key ({e})"),
        })?;
        Ok(TlsMaterial { ca_pem, cert_pem, key_pem, ca, certs })
    }
}

impl TlsMaterial {
    /// Client side (agent, CLI, master->master): trust only our CA, present our certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// Server side of a gRPC port: our certificate, and client certificates signed by our CA are required
    /// (mutual TLS) unless `client_cert_optional`.
    pub fn server_config(&self, client_cert_optional: bool) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(client_cert_optional)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// A rustls server config for HTTPS (the master's HTTP port): client certificates are verified when
    /// offered but optional, since browsers authenticate with a token.
    pub fn https_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), key)
            .map_err(|e| TlsError::Config(format!("certificate/key: {e}")))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A rustls client config for HTTPS to a master's HTTP port (`huatuo export`): trust only our CA,
    /// present our certificate, HTTP/1.1.
    pub fn https_client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.certs.clone(), key)
            .map_err(|e| TlsError::Config(format!("certificate/key: {e}")))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted_and_hashed() {
        let t = Token::new("s3cret-token-value");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(format!("{t}"), "<redacted>");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Token,
        }
        assert!(!format!("{:?}", Holder { token: t.clone() }).contains("s3cret"));
        // sha256("abc") from FIPS 180-2.
        assert_eq!(
            Token::new("abc").sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(t.expose(), "s3cret-token-value");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bad_pem_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"\x00\x01 not a pem").expect("write");
        let files = TlsFiles { ca: junk.clone(), cert: junk.clone(), key: junk.clone() };
        let e = files.load().expect_err("junk");
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_PEM_BYTES as usize + 1]).expect("write");
        let e = TlsFiles { ca: big, cert: junk.clone(), key: junk.clone() }.load().expect_err("too large");
        assert!(e.to_string().contains("larger than"), "{e}");
        let missing = TlsFiles { ca: dir.path().join("nope.pem"), cert: junk.clone(), key: junk };
        let e = missing.load().expect_err("missing");
        assert!(e.to_string().contains("TLS CA") && e.to_string().contains("nope.pem"), "{e}");
    }
}
