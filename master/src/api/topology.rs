//! The replicated fabric topology's API (issue 16), shared by gRPC (`SetNetTopology`, `NetTopology`), REST
//! (`POST`/`GET /api/v1/net/topology`) and the CLI (`huatuo net topology set|show|clear`). A set is
//! validated once, here, before anything is proposed: the operator, the size (the catalog's
//! [`MAX_ARTIFACT_BYTES`]), and the bytes parsed exactly as the leader will (`net::fabric::parse`); then
//! the bytes are stored as a catalog artifact of type `topology` (chunked like any artifact) and
//! `Command::SetTopology` activates it. A refused set changes nothing.

use proto::error::{ApiError, Code};
use serde::Serialize;

use super::{Service, store_err, validate};
use crate::catalog::{
    ArtifactRecord, ArtifactType, MAX_ARTIFACT_BYTES, check_name, check_version, sha256_hex,
};
use crate::model::Command;
use crate::net::fabric;

/// The name a topology gets when the operator gives none.
pub const DEFAULT_NAME: &str = "fabric";
/// Hex digits of the sha256 a defaulted version takes (`sha-` and 12 digits: the same bytes get the same
/// version, so setting a file again is a no-op).
pub const VERSION_SHA_DIGITS: usize = 12;

/// A set, as every front end delivers it.
#[derive(Debug, Clone, Default)]
pub struct SetRequest {
    pub content: Vec<u8>,
    /// Empty: [`DEFAULT_NAME`].
    pub name: String,
    /// Empty: `sha-` and the first [`VERSION_SHA_DIGITS`] hex digits of the bytes' sha256.
    pub version: String,
    /// Clear the replicated topology instead (content, name and version empty).
    pub clear: bool,
    pub by: String,
    pub reason: String,
}

/// What `net topology show` answers (and a set or clear, after the change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopologyView {
    /// `replicated`, `file`, `labels`, or `none` (no labels learned yet).
    pub source: String,
    /// The replicated topology (set whether or not it is in use: see `error`).
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub set_by: String,
    pub set_ms: u64,
    /// The `[topology] file` in use (source `file`).
    pub path: String,
    pub hosts: u64,
    pub switches: u64,
    /// Switch-to-switch links (each host adds its host-ToR link).
    pub links: u64,
    /// Why the replicated topology is not in use (its bytes did not verify or parse).
    pub error: String,
    /// This member's `[topology] file` and its sha256, when it has one (it differs from the replicated
    /// topology when the sha256s differ; the replicated one wins).
    pub file_path: String,
    pub file_sha256: String,
    pub revision: u64,
    /// A set of what was already active, or a clear with nothing set.
    pub duplicate: bool,
}

/// Every check of a set that needs no state: the artifact record to store and the command to propose.
pub fn validate_set(req: &SetRequest) -> Result<(ArtifactRecord, Command), ApiError> {
    validate::operator(&req.by, &req.reason)?;
    if req.content.is_empty() {
        return Err(ApiError::invalid("the topology is empty"));
    }
    if req.content.len() as u64 > MAX_ARTIFACT_BYTES {
        return Err(ApiError::invalid(format!(
            "the topology is {} bytes, over the limit of {MAX_ARTIFACT_BYTES} bytes",
            req.content.len()
        )));
    }
    let sha256 = sha256_hex(&req.content);
    let name = if req.name.is_empty() { DEFAULT_NAME.to_string() } else { req.name.clone() };
    let version = if req.version.is_empty() {
        format!("sha-{}", &sha256[..VERSION_SHA_DIGITS])
    } else {
        req.version.clone()
    };
    check_name(&name).map_err(ApiError::invalid)?;
    check_version(&version).map_err(ApiError::invalid)?;
    fabric::parse(&req.content, None)
        .map_err(|e| ApiError::invalid(format!("topology {name}@{version} refused: {e}")))?;
    let rec = ArtifactRecord {
        name: name.clone(),
        version: version.clone(),
        kind: ArtifactType::Topology,
        sha256,
        size: req.content.len() as u64,
        pushed_by: req.by.clone(),
        pushed_ms: 0,
        description: req.reason.chars().take(crate::catalog::MAX_DESCRIPTION_LEN / 4).collect(),
        spec: Default::default(),
    };
    let cmd = Command::SetTopology { name, version, by: req.by.clone(), reason: req.reason.clone() };
    Ok((rec, cmd))
}

impl Service {
    /// Validate, store and activate a topology, or clear it (`req.clear`); leader only. A set is refused
    /// before anything is stored when the cluster has not enabled command version
    /// [`crate::model::TOPOLOGY_COMMAND_VERSION`]. Answers the topology in use after the change.
    pub async fn set_topology(&self, req: SetRequest, key: Option<String>) -> Result<TopologyView, ApiError> {
        let res = if req.clear {
            if !req.content.is_empty() || !req.name.is_empty() || !req.version.is_empty() {
                return Err(ApiError::invalid("clear takes no content, name or version"));
            }
            validate::operator(&req.by, &req.reason)?;
            let cmd = Command::SetTopology {
                name: String::new(),
                version: String::new(),
                by: req.by.clone(),
                reason: req.reason.clone(),
            };
            self.submit_keyed(cmd, key).await?
        } else {
            let (rec, cmd) = validate_set(&req)?;
            self.leader_gate()?;
            crate::model::check_proposable(&cmd, self.stats.min_command_version())
                .map_err(|e| ApiError::new(Code::Conflict, e.to_string()))?;
            self.store_artifact(rec, &req.content, None).await?;
            self.submit_keyed(cmd, key).await?
        };
        let mut v = self.topology_view().await?;
        v.revision = v.revision.max(res.revision);
        v.duplicate = res.duplicate;
        Ok(v)
    }

    /// The topology the leader uses now and where it came from (leader only: the topology in use is the
    /// leader's; the replicated pointer is read after a read-index barrier).
    pub async fn topology_view(&self) -> Result<TopologyView, ApiError> {
        self.leader_gate()?;
        let r = self.read_view(false).await?;
        let active = r.active_topology().map_err(store_err)?;
        let revision = r.revision().map_err(store_err)?;
        drop(r);
        self.refresh_fabric().await;
        let net = self.net();
        let mut v = TopologyView {
            revision,
            file_path: net.cfg.topology_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            file_sha256: net.cfg.topology_sha256.clone(),
            ..Default::default()
        };
        if let Some(a) = &active {
            v.name = a.name.clone();
            v.version = a.version.clone();
            v.sha256 = a.sha256.clone();
            v.size = a.size;
            v.set_by = a.set_by.clone();
            v.set_ms = a.set_ms;
        }
        let topo = match net.fabric() {
            Some(f) => {
                match f.source {
                    fabric::Source::Replicated { .. } => v.source = "replicated".into(),
                    fabric::Source::File { path } => {
                        v.source = "file".into();
                        v.path = path;
                    }
                }
                Some(f.topology)
            }
            None => {
                if active.is_some() {
                    v.error = "the replicated topology's bytes did not verify or parse on this leader (see its log \
                               and huatuo_master_net_topology_load_failures_total): localising as with no topology"
                        .into();
                }
                let t = self.net_topology_from_labels();
                v.source = if t.is_some() { "labels".into() } else { "none".into() };
                t
            }
        };
        if let Some(t) = topo {
            v.hosts = t.host_count() as u64;
            v.switches = t.switches().len() as u64;
            v.links = t.link_count() as u64;
        }
        Ok(v)
    }
}

/// The checks a set makes, without the service (for the REST and gRPC adapters' tests).
#[cfg(test)]
mod tests {
    use super::*;

    fn req(content: &[u8]) -> SetRequest {
        SetRequest {
            content: content.to_vec(),
            by: "ops".into(),
            reason: "new fabric".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_set_is_checked_before_anything_is_proposed() {
        let toml = b"[[tor]]\nname = \"t1\"\nhosts = [\"a\"]\n";
        let (rec, cmd) = validate_set(&req(toml)).expect("valid");
        assert_eq!((rec.name.as_str(), rec.kind), (DEFAULT_NAME, ArtifactType::Topology));
        assert_eq!(
            rec.version,
            format!("sha-{}", &sha256_hex(toml)[..12]),
            "the same bytes, the same version"
        );
        assert!(matches!(&cmd, Command::SetTopology { name, .. } if name == DEFAULT_NAME));
        assert_eq!(cmd.version(), crate::model::TOPOLOGY_COMMAND_VERSION);
        let mut named = req(toml);
        named.name = "dc1".into();
        named.version = "2026-12-03".into();
        assert!(validate_set(&named).is_ok_and(|(r, _)| r.name == "dc1" && r.version == "2026-12-03"));
        for (bad, says) in [
            (req(b""), "empty"),
            (req(b"[[tor]]\nname = \"t1\"\nhosts = [\"a\"\n"), "refused: toml topology"),
            (req(b"h1,t1\nh2\n"), "line 2"),
            (SetRequest { by: String::new(), ..req(toml) }, "by"),
            (SetRequest { name: "bad name".into(), ..req(toml) }, "not allowed"),
        ] {
            let e = validate_set(&bad).expect_err(says);
            assert!(e.message.contains(says), "{says}: {}", e.message);
        }
        let over = vec![b'#'; MAX_ARTIFACT_BYTES as usize + 1];
        let e = validate_set(&req(&over)).expect_err("over the limit");
        assert!(e.message.contains("over the limit of 8388608 bytes"), "{}", e.message);
    }
}
