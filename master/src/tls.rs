//! A throwaway public-key infrastructure for `huatuo dev` and the tests: a CA, server certificates (for
//! masters: server and client use, since masters dial each other) and client certificates (agents, CLI),
//! written as PEM files next to each other, plus random bearer tokens. Production clusters bring their own
//! CA; nothing here is used by a running master except through the files it writes.

use std::path::{Path, PathBuf};

use proto::tls::{TlsFiles, Token};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Bytes of randomness in a generated token (256 bits, printed as 64 hex characters).
pub const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("writing {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// A new random token (from the OS-seeded thread RNG; not a decision, so determinism does not apply).
pub fn new_token() -> Token {
    let mut b = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut b);
    Token::new(hex::encode(b))
}

/// A CA that can issue certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A master: serves TLS and dials its peers (server + client auth).
    Server,
    /// An agent or an operator's CLI (client auth only).
    Client,
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |err| PkiError::Io { path: path.into(), err };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

impl DevCa {
    /// A new self-signed CA named `name` (ECDSA P-256).
    pub fn new(name: &str) -> Result<DevCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key)?;
        Ok(DevCa { pem: cert.pem(), issuer: Issuer::new(p, key) })
    }

    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// Issue a certificate for `name` with subject alternative names `sans` (IP addresses or DNS names);
    /// returns (certificate PEM, private key PEM).
    pub fn issue(&self, name: &str, sans: &[&str], usage: Usage) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Write `dir/ca.pem` (if missing) and `dir/NAME.pem` + `dir/NAME.key` (0600); returns the three paths
    /// as a `[tls]` section.
    pub fn write_issued(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        usage: Usage,
    ) -> Result<TlsFiles, PkiError> {
        std::fs::create_dir_all(dir).map_err(|err| PkiError::Io { path: dir.into(), err })?;
        let ca = dir.join("ca.pem");
        if !ca.exists() {
            write(&ca, &self.pem, false)?;
        }
        let (cert_pem, key_pem) = self.issue(name, sans, usage)?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write(&cert, &cert_pem, false)?;
        write(&key, &key_pem, true)?;
        Ok(TlsFiles { ca, cert, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_files_load_as_tls_material() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = DevCa::new("test CA").expect("ca");
        let server =
            ca.write_issued(dir.path(), "master", &["127.0.0.1", "localhost"], Usage::Server).expect("s");
        let client = ca.write_issued(dir.path(), "agent", &[], Usage::Client).expect("client");
        let m = server.load().expect("server material");
        m.https_config().expect("https config builds");
        client.load().expect("client material");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&client.key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "keys are private");
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.expose().len(), 2 * TOKEN_BYTES);
        assert_ne!(a, b);
    }
}
