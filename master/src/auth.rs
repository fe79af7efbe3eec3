//! Who may call what: bearer tokens (stored only as sha256 hex in the master config, compared in constant
//! time, never logged) carry roles, and one table maps every gRPC method path and REST method+path to what
//! it needs. The gRPC port checks it in a tower layer in front of tonic's router ([`GrpcAuthLayer`]), the
//! HTTP port in an axum middleware (`http::rest_auth`, which calls [`Authenticator::authorize`] with
//! [`rest_need`]); both run before any handler, so a refused call changes nothing. The caller found is put in
//! the request extensions, where the Command handlers read it: what a command needs depends on its kind
//! (see [`command_need`]).
//!
//! Without a [`Caller`] in the extensions (a master started with `--insecure`, or a service built
//! in-process by a test) every call is allowed: the layers are the only place that grants or refuses.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{self, Method};
use proto::error::ApiError;
use proto::tls::{MAX_TOKEN_LEN, constant_time_eq, sha256_hex};
use serde::Deserialize;

/// Most tokens a config may list: a handful of people and services per cluster; the check walks all of
/// them on every call (constant time), so the list must stay short.
pub const MAX_TOKENS: usize = 256;

/// A role a token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List, get, watch, cluster info, safety state, metrics.
    Read,
    /// Everything `read` may, plus level changes, approvals, quotas, forced transitions, manual reports.
    Operator,
    /// `read` plus acknowledging transitions (drained, data-evacuated).
    Subscriber,
    /// What an agent sends: findings, heartbeats, registrations, action results and ticket updates.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
            Role::Subscriber => "subscriber",
            Role::Agent => "agent",
        }
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing (`/healthz`, the portal's static files).
    Open,
    Read,
    Operate,
    /// Acknowledge a transition: subscriber or operator.
    Ack,
    /// Agent traffic only (heartbeat, register).
    Agent,
    /// Findings and action results / ticket updates: agent or operator (operators report by hand).
    AgentOrOperator,
    /// The Command call: any of operator, subscriber, agent gets through the layer; the handler then
    /// checks [`command_need`] for the command's kind.
    Command,
}

impl Need {
    fn label(self) -> &'static str {
        match self {
            Need::Open => "nothing",
            Need::Read => "role read (or operator/subscriber)",
            Need::Operate => "role operator",
            Need::Ack => "role subscriber or operator",
            Need::Agent => "role agent",
            Need::AgentOrOperator => "role agent or operator",
            Need::Command => "role operator, subscriber or agent",
        }
    }
}

/// The role table: whether `roles` allow a call that needs `need`.
pub fn allows(roles: &BTreeSet<Role>, need: Need) -> bool {
    let has = |r| roles.contains(&r);
    match need {
        Need::Open => true,
        Need::Read => has(Role::Read) || has(Role::Operator) || has(Role::Subscriber),
        Need::Operate => has(Role::Operator),
        Need::Ack => has(Role::Subscriber) || has(Role::Operator),
        Need::Agent => has(Role::Agent),
        Need::AgentOrOperator => has(Role::Agent) || has(Role::Operator),
        Need::Command => has(Role::Operator) || has(Role::Subscriber) || has(Role::Agent),
    }
}

/// The gRPC path prefix of the master API service.
const API_PREFIX: &str = "/huatuo.api.v1.Master/";

/// What a gRPC method (by its HTTP/2 path) needs. Unknown methods need operator: a new write RPC is never
/// open by accident.
pub fn grpc_need(path: &str) -> Need {
    let Some(method) = path.strip_prefix(API_PREFIX) else { return Need::Operate };
    match method {
        "ListObjects" | "GetObject" | "Watch" | "ClusterInfo" | "GetSafety" | "ListProposals"
        | "ListAgents" | "ListCatalog" | "RolloutStatus" | "Summary" | "NetSuspects" | "NetMatrix"
        | "NetPath" | "NetTopology" => Need::Read,
        "Ingest" | "IngestStream" => Need::AgentOrOperator,
        "Heartbeat" | "HeartbeatStream" | "Register" | "FetchArtifact" => Need::Agent,
        "Command" => Need::Command,
        "SetLevel"
        | "Release"
        | "DecideProposals"
        | "SetQuotas"
        | "SetMinCommandVersion"
        | "PushArtifact"
        | "Rollout"
        | "SetNetTopology" => Need::Operate,
        _ => Need::Operate,
    }
}

/// What a REST call needs. Reads (GET/HEAD) under `/api/v1` and `/metrics` need read; writes need operator
/// unless listed; the portal's static files and `/healthz` are open (the page asks for a token and sends it
/// with its API calls).
pub fn rest_need(method: &Method, path: &str) -> Need {
    let read_only = method == Method::GET || method == Method::HEAD;
    if read_only && (path == "/healthz" || path == "/" || path == "/portal" || path.starts_with("/portal/")) {
        return Need::Open;
    }
    if read_only {
        return Need::Read;
    }
    match path {
        "/api/v1/findings" => Need::AgentOrOperator,
        "/api/v1/register" | "/api/v1/heartbeat" => Need::Agent,
        "/api/v1/commands" => Need::Command,
        _ => Need::Operate,
    }
}

/// What an object command needs, by its kind: acks from subscribers (or operators), force/approve from
/// operators, action results and ticket updates from agents (or operators). Unknown kinds need operator
/// (the command handler then refuses them as invalid).
pub fn command_need(kind: &str) -> Need {
    match kind {
        "ack" => Need::Ack,
        "result" | "ticket" => Need::AgentOrOperator,
        _ => Need::Operate,
    }
}

/// The authenticated caller, put into the request extensions by the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name from the config (safe to log; the token is not).
    pub name: String,
    pub roles: BTreeSet<Role>,
}

/// For the Command handlers: refuse a command the caller's roles do not allow. No caller in the extensions
/// means no auth layer (insecure mode or an in-process test): allowed.
pub fn check_command(caller: Option<&Caller>, kind: &str) -> Result<(), ApiError> {
    let Some(c) = caller else { return Ok(()) };
    let need = command_need(kind);
    if allows(&c.roles, need) {
        return Ok(());
    }
    Err(ApiError::permission_denied(format!(
        "token {:?} may not send a {kind:?} command: it needs {}",
        c.name,
        need.label()
    )))
}

/// `[[auth.tokens]]` in the master config.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds the token (appears in logs and errors).
    pub name: String,
    /// sha256 of the token, lower-case hex (`echo -n TOKEN | sha256sum`).
    pub sha256: String,
    pub roles: Vec<Role>,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not the token, but it is still nobody's business in a log.
        f.debug_struct("TokenEntry").field("name", &self.name).field("roles", &self.roles).finish()
    }
}

/// `[auth]` in the master config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// Why an `[auth]` section is refused (the master does not start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("[auth] lists {0} tokens; at most {MAX_TOKENS}")]
    TooManyTokens(usize),
    #[error("[auth] token with an empty name")]
    EmptyName,
    #[error("[auth] token name {0:?} appears twice")]
    DuplicateName(String),
    #[error("[auth] token {0:?}: sha256 must be 64 hex characters")]
    BadHash(String),
    #[error("[auth] token {0:?}: the same hash appears twice")]
    DuplicateHash(String),
    #[error("[auth] token {0:?} has no roles")]
    NoRoles(String),
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if self.tokens.len() > MAX_TOKENS {
            return Err(AuthConfigError::TooManyTokens(self.tokens.len()));
        }
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        for t in &self.tokens {
            if t.name.is_empty() {
                return Err(AuthConfigError::EmptyName);
            }
            if !names.insert(t.name.as_str()) {
                return Err(AuthConfigError::DuplicateName(t.name.clone()));
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(AuthConfigError::BadHash(t.name.clone()));
            }
            if !hashes.insert(t.sha256.to_ascii_lowercase()) {
                return Err(AuthConfigError::DuplicateHash(t.name.clone()));
            }
            if t.roles.is_empty() {
                return Err(AuthConfigError::NoRoles(t.name.clone()));
            }
        }
        Ok(())
    }
}

/// The checker built from [`AuthConfig`].
pub struct Authenticator {
    entries: Vec<(Caller, Vec<u8>)>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|(c, _)| c.name.as_str()).collect();
        f.debug_struct("Authenticator").field("tokens", &names).finish()
    }
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, AuthConfigError> {
        cfg.validate()?;
        let entries = cfg
            .tokens
            .iter()
            .map(|t| {
                let caller = Caller { name: t.name.clone(), roles: t.roles.iter().copied().collect() };
                (caller, t.sha256.to_ascii_lowercase().into_bytes())
            })
            .collect();
        Ok(Authenticator { entries })
    }

    /// The caller a token belongs to. Every entry is compared (no early exit), each in constant time.
    pub fn identify(&self, token: &str) -> Option<&Caller> {
        let hash = sha256_hex(token.as_bytes()).into_bytes();
        let mut found = None;
        for (caller, h) in &self.entries {
            if constant_time_eq(h, &hash) && found.is_none() {
                found = Some(caller);
            }
        }
        found
    }

    /// Decide a call from its `authorization` header value. Errors never contain the token.
    pub fn authorize(
        &self,
        need: Need,
        header: Option<&[u8]>,
        what: &str,
    ) -> Result<Option<Caller>, ApiError> {
        if need == Need::Open {
            return Ok(None);
        }
        let Some(raw) = header else {
            return Err(ApiError::unauthenticated(format!(
                "{what} needs a bearer token (authorization: Bearer TOKEN)"
            )));
        };
        let token = std::str::from_utf8(raw)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
            .ok_or_else(|| {
                ApiError::unauthenticated(format!("{what}: the authorization header is not `Bearer TOKEN`"))
            })?;
        let Some(caller) = self.identify(token) else {
            return Err(ApiError::unauthenticated(format!("{what}: unknown token")));
        };
        if !allows(&caller.roles, need) {
            let roles: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
            return Err(ApiError::permission_denied(format!(
                "{what}: token {:?} has roles [{}]; this needs {}",
                caller.name,
                roles.join(", "),
                need.label()
            )));
        }
        Ok(Some(caller.clone()))
    }
}

/// Tower layer for the tonic server of the gRPC API port; `None` (insecure mode) passes every call.
#[derive(Clone)]
pub struct GrpcAuthLayer(pub Option<Arc<Authenticator>>);

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth { inner, auth: self.0.clone() }
    }
}

/// The service [`GrpcAuthLayer`] wraps around tonic's routes.
#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(auth) = &self.auth else { return Box::pin(self.inner.call(req)) };
        let path = req.uri().path().to_string();
        let header = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        match auth.authorize(grpc_need(&path), header, &path) {
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                Box::pin(self.inner.call(req))
            }
            Err(e) => {
                tracing::info!(path = %path, code = %e.code, "gRPC call refused");
                let status: tonic::Status = e.into();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::error::Code;

    fn entry(name: &str, token: &str, roles: &[Role]) -> TokenEntry {
        TokenEntry { name: name.into(), sha256: sha256_hex(token.as_bytes()), roles: roles.to_vec() }
    }

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            tokens: vec![
                entry("ops", "op-token", &[Role::Operator]),
                entry("viewer", "read-token", &[Role::Read]),
                entry("sched", "sub-token", &[Role::Subscriber]),
                entry("agent", "agent-token", &[Role::Agent]),
            ],
        })
        .expect("valid")
    }

    fn roles(r: &[Role]) -> BTreeSet<Role> {
        r.iter().copied().collect()
    }

    #[test]
    fn role_table() {
        use Need::*;
        // (roles, needs allowed) — everything else must be refused.
        let table: [(&[Role], &[Need]); 5] = [
            (&[Role::Read], &[Open, Read]),
            (&[Role::Operator], &[Open, Read, Operate, Ack, AgentOrOperator, Command]),
            (&[Role::Subscriber], &[Open, Read, Ack, Command]),
            (&[Role::Agent], &[Open, Agent, AgentOrOperator, Command]),
            (&[], &[Open]),
        ];
        for (r, ok) in table {
            for need in [Open, Read, Operate, Ack, Agent, AgentOrOperator, Command] {
                assert_eq!(allows(&roles(r), need), ok.contains(&need), "{r:?} {need:?}");
            }
        }
        assert_eq!(grpc_need("/huatuo.api.v1.Master/ListObjects"), Read);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/Summary"), Read, "the summary is a read, like the lists");
        assert_eq!(rest_need(&Method::GET, "/api/v1/summary"), Read);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/Ingest"), AgentOrOperator);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/Heartbeat"), Agent);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/HeartbeatStream"), Agent, "a stream of heartbeats");
        assert_eq!(grpc_need("/huatuo.api.v1.Master/IngestStream"), AgentOrOperator, "a stream of batches");
        assert_eq!(grpc_need("/huatuo.api.v1.Master/SetLevel"), Operate);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/SomethingNew"), Operate, "unknown methods need operator");
        assert_eq!(grpc_need("/other.Service/ListObjects"), Operate);
        assert_eq!(rest_need(&Method::GET, "/healthz"), Open);
        assert_eq!(rest_need(&Method::GET, "/portal/app.js"), Open);
        assert_eq!(rest_need(&Method::GET, "/metrics"), Read);
        assert_eq!(rest_need(&Method::GET, "/api/v1/objects/disk/h/sda"), Read);
        assert_eq!(rest_need(&Method::POST, "/api/v1/levels"), Operate);
        assert_eq!(rest_need(&Method::POST, "/api/v1/min-command-version"), Operate);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/SetMinCommandVersion"), Operate);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/PushArtifact"), Operate);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/Rollout"), Operate);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/FetchArtifact"), Agent);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/ListCatalog"), Read);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/RolloutStatus"), Read);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/NetSuspects"), Read);
        assert_eq!(grpc_need("/huatuo.api.v1.Master/NetPath"), Read);
        assert_eq!(rest_need(&Method::POST, "/api/v1/catalog"), Operate);
        assert_eq!(rest_need(&Method::POST, "/api/v1/rollouts"), Operate);
        assert_eq!(rest_need(&Method::GET, "/api/v1/rollouts"), Read);
        assert_eq!(rest_need(&Method::POST, "/healthz"), Operate);
        assert_eq!(rest_need(&Method::POST, "/api/v1/commands"), Command);
        assert_eq!(command_need("ack"), Ack);
        assert_eq!(command_need("force"), Operate);
        assert_eq!(command_need("approve"), Operate);
        assert_eq!(command_need("result"), AgentOrOperator);
        assert_eq!(command_need("ticket"), AgentOrOperator);
        assert_eq!(command_need("bogus"), Operate);
    }

    #[test]
    fn tokens_are_checked_by_hash() {
        let a = auth();
        let hdr = |t: &str| format!("Bearer {t}").into_bytes();
        let ok = a.authorize(Need::Operate, Some(&hdr("op-token")), "x").expect("operator");
        assert_eq!(ok.map(|c| c.name), Some("ops".to_string()));
        let e = a.authorize(Need::Read, None, "GET /api/v1/objects").expect_err("missing");
        assert_eq!(e.code, Code::Unauthenticated);
        let e = a.authorize(Need::Read, Some(&hdr("op-tokeN")), "x").expect_err("wrong");
        assert_eq!(e.code, Code::Unauthenticated);
        assert!(!e.message.contains("op-tokeN"), "errors never echo the token: {e}");
        let e = a.authorize(Need::Read, Some(b"Basic b3A6dG9rZW4="), "x").expect_err("scheme");
        assert_eq!(e.code, Code::Unauthenticated);
        let e = a.authorize(Need::Read, Some(&[0xff, 0xfe, 0x00]), "x").expect_err("binary garbage");
        assert_eq!(e.code, Code::Unauthenticated);
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        let e = a.authorize(Need::Read, Some(long.as_bytes()), "x").expect_err("too long");
        assert_eq!(e.code, Code::Unauthenticated);
        let e = a.authorize(Need::Operate, Some(&hdr("read-token")), "x").expect_err("too low");
        assert_eq!(e.code, Code::PermissionDenied);
        assert!(e.message.contains("viewer") && e.message.contains("operator"), "{e}");
        assert!(a.authorize(Need::Open, None, "x").expect("open").is_none());
        // The stored hash is case-insensitive hex.
        let upper = Authenticator::new(&AuthConfig {
            tokens: vec![TokenEntry {
                name: "u".into(),
                sha256: sha256_hex(b"t").to_ascii_uppercase(),
                roles: vec![Role::Read],
            }],
        })
        .expect("valid");
        assert!(upper.identify("t").is_some());
    }

    #[test]
    fn commands_need_a_role_by_kind() {
        let c = |r: &[Role]| Caller { name: "c".into(), roles: roles(r) };
        assert!(check_command(Some(&c(&[Role::Subscriber])), "ack").is_ok());
        assert!(check_command(Some(&c(&[Role::Operator])), "ack").is_ok());
        assert!(check_command(Some(&c(&[Role::Agent])), "result").is_ok());
        assert!(check_command(Some(&c(&[Role::Agent])), "ticket").is_ok());
        let e = check_command(Some(&c(&[Role::Subscriber])), "force").expect_err("force");
        assert_eq!(e.code, Code::PermissionDenied);
        assert!(check_command(Some(&c(&[Role::Agent])), "ack").is_err());
        assert!(check_command(Some(&c(&[Role::Subscriber])), "result").is_err());
        assert!(check_command(None, "force").is_ok(), "no layer, no check");
    }

    #[test]
    fn bad_auth_configs_are_refused_and_hashes_not_printed() {
        let good = entry("a", "t", &[Role::Read]);
        for (tokens, want) in [
            (vec![TokenEntry { sha256: "abc".into(), ..good.clone() }], "64 hex"),
            (vec![TokenEntry { roles: vec![], ..good.clone() }], "no roles"),
            (vec![good.clone(), TokenEntry { sha256: sha256_hex(b"u"), ..good.clone() }], "twice"),
            (vec![good.clone(), TokenEntry { name: "b".into(), ..good.clone() }], "same hash"),
            (vec![TokenEntry { name: String::new(), ..good.clone() }], "empty name"),
        ] {
            let e = Authenticator::new(&AuthConfig { tokens }).expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
        let many: Vec<TokenEntry> =
            (0..=MAX_TOKENS).map(|i| entry(&format!("t{i}"), &format!("token-{i}"), &[Role::Read])).collect();
        assert!(
            AuthConfig { tokens: many[..MAX_TOKENS].to_vec() }.validate().is_ok(),
            "the limit itself is fine"
        );
        let e = Authenticator::new(&AuthConfig { tokens: many }).expect_err("one past the limit");
        assert_eq!(e, AuthConfigError::TooManyTokens(MAX_TOKENS + 1));
        let text = "[[tokens]]\nname = \"x\"\nsha256 = \"00\"\nroles = [\"root\"]\n";
        assert!(toml::from_str::<AuthConfig>(text).is_err(), "unknown roles are refused");
        assert!(!format!("{good:?}").contains(&good.sha256));
        assert!(!format!("{:?}", auth()).contains(&sha256_hex(b"op-token")));
    }
}
