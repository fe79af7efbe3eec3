//! The client context: like a kubeconfig, one small TOML file that tells every operator command where the
//! masters are and how to prove who it is (the cluster CA, a client certificate and key, a bearer token).
//! `huatuo dev` writes one; commands read it from `--context`, `$HUATUO_CONTEXT` or
//! `~/.config/huatuo/context.toml`, and flags (`--master`, `--token`, `--insecure`) override it.
//! The token is kept in clear here (the file is written 0600), never printed: `Token` redacts itself.

use std::path::{Path, PathBuf};

use proto::client::ClientSecurity;
use proto::tls::{TlsFiles, Token};
use serde::{Deserialize, Serialize};

/// The context format version this build reads and writes.
pub const CONTEXT_VERSION: u32 = 1;
/// Largest context file read: a context is a few hundred bytes; anything bigger is the wrong file.
pub const MAX_CONTEXT_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub version: u32,
    /// Master gRPC addresses (any member; the client finds the leader).
    pub masters: Vec<String>,
    /// The portal / REST base URL, for people (printed by `huatuo dev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Bearer token in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Token>,
    /// CA, client certificate and key; relative paths are relative to the context file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("context file {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("context file {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// `$XDG_CONFIG_HOME/huatuo/context.toml`, else `$HOME/.config/huatuo/context.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base =
        std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("huatuo").join("context.toml"))
}

impl Context {
    /// Parse and check a context; `path` names the file in errors and anchors relative TLS paths.
    pub fn parse(text: &str, path: &Path) -> Result<Context, ContextError> {
        let invalid = |msg: String| ContextError::Invalid { path: path.into(), msg };
        let mut c: Context = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if c.version != CONTEXT_VERSION {
            return Err(invalid(format!("version {} (this build reads {CONTEXT_VERSION})", c.version)));
        }
        if c.masters.is_empty() {
            return Err(invalid("masters: at least one master address is needed".into()));
        }
        for m in &c.masters {
            if m.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(invalid(format!("masters: {m:?} is not HOST:PORT")));
            }
        }
        if let Some(t) = &c.token
            && (t.is_empty() || t.expose().chars().any(|ch| ch.is_whitespace() || ch.is_control()))
        {
            return Err(invalid("token: empty or contains whitespace".into()));
        }
        if let Some(tls) = &mut c.tls {
            let dir = path.parent().unwrap_or(Path::new("."));
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Context, ContextError> {
        let io = |err| ContextError::Io { path: path.into(), err };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_CONTEXT_BYTES {
            return Err(ContextError::Invalid {
                path: path.into(),
                msg: format!("larger than {MAX_CONTEXT_BYTES} bytes"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ContextError::Invalid { path: path.into(), msg: "not UTF-8 text".into() })?;
        Context::parse(&text, path)
    }

    /// Write the context readable by its owner only (it holds a token), creating parent directories.
    pub fn write(&self, path: &Path) -> Result<(), ContextError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |err| ContextError::Io { path: path.into(), err };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string(self)
            .map_err(|e| ContextError::Invalid { path: path.into(), msg: e.to_string() })?;
        let header = "# huatuo client context (like a kubeconfig): masters, CA, client certificate, token.\n\
                      # Holds a token in clear: keep it private (mode 0600).\n";
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(header.as_bytes()).and_then(|_| f.write_all(text.as_bytes())).map_err(io)?;
        Ok(())
    }

    /// TLS (files loaded and checked) and token for the gRPC client.
    pub fn security(&self) -> Result<ClientSecurity, proto::tls::TlsError> {
        let tls = match &self.tls {
            Some(files) => Some(files.load()?.client_config()),
            None => None,
        };
        Ok(ClientSecurity { tls, token: self.token.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, want_err: Option<&str>) {
        let r = Context::parse(text, Path::new("/home/u/.config/huatuo/context.toml"));
        match (r, want_err) {
            (Ok(_), None) => {}
            (Err(e), Some(w)) => {
                let e = e.to_string();
                assert!(e.contains(w) && e.contains("context.toml"), "{text:?}: {e}");
            }
            (r, w) => panic!("{text:?}: got {r:?}, wanted error {w:?}"),
        }
    }

    #[test]
    fn context_files_parse_or_are_clear_errors() {
        let good = "version = 1\nmasters = [\"127.0.0.1:7700\"]\ntoken = \"abc\"\n\
                    [tls]\nca = \"ca.pem\"\ncert = \"/abs/client.pem\"\nkey = \"client.key\"\n";
        check(good, None);
        let c = Context::parse(good, Path::new("/etc/h/context.toml")).expect("good");
        let tls = c.tls.as_ref().expect("tls");
        assert_eq!(tls.ca, PathBuf::from("/etc/h/ca.pem"), "relative paths are next to the file");
        assert_eq!(tls.cert, PathBuf::from("/abs/client.pem"));
        assert!(!format!("{c:?}").contains("abc"), "Debug never shows the token");
        check("version = 2\nmasters = [\"a:1\"]\n", Some("version 2"));
        check("version = 1\nmasters = []\n", Some("at least one master"));
        check("version = 1\nmasters = [\"nohost\"]\n", Some("HOST:PORT"));
        check("version = 1\nmasters = [\"a:1\"]\nbogus = 1\n", Some("unknown field"));
        check("version = 1\nmasters = [\"a:1\"]\ntoken = \"a b\"\n", Some("whitespace"));
        check("version = 1\nmasters = [\"a:1\"]\n[tls]\nca = \"x\"\n", Some("missing field"));
        check("\u{0}\u{1}garbage", Some("context.toml"));
        check("", Some("missing field"));
    }

    #[test]
    fn written_contexts_read_back_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/context.toml");
        let c = Context {
            version: CONTEXT_VERSION,
            masters: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            http: Some("https://127.0.0.1:3".into()),
            token: Some(Token::new("t0k")),
            tls: Some(TlsFiles {
                ca: dir.path().join("ca.pem"),
                cert: dir.path().join("c.pem"),
                key: dir.path().join("c.key"),
            }),
        };
        c.write(&path).expect("write");
        assert_eq!(Context::load(&path).expect("load"), c);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, vec![0xffu8; 10]).expect("write junk");
        assert!(Context::load(&path).expect_err("binary").to_string().contains("UTF-8"));
        std::fs::write(&path, vec![b'#'; (MAX_CONTEXT_BYTES + 1) as usize]).expect("write big");
        assert!(Context::load(&path).expect_err("big").to_string().contains("larger than"));
        let e = Context::load(&dir.path().join("none.toml")).expect_err("missing");
        assert!(e.to_string().contains("none.toml"), "{e}");
    }
}
