//! The checker catalog's rules in the pure `decide` (issue 15): storing artifacts (chunks, pushes, the
//! seed), rollout changes, canary windows (findings of checkers in a shadow rollout are counted per
//! window), the leader's canary checks, and the link from a latched `checker=NAME@VERSION` scope to the
//! rollout of that version. Every refusal changes nothing; every change bumps [`META_CATALOG_REV`], gets a
//! change event and, for operator changes, an audit row (automatic pauses an alert).

use base64::Engine;
use state_machines::{Finding, Severity};

use super::decide::{Decider, bounded_text};
use crate::catalog::{self, *};
use crate::model::*;
use crate::store::{
    META_CATALOG_BYTES, META_CATALOG_CHECKERS, META_CATALOG_REV, META_CATALOG_SEEDED, META_TOPOLOGY_REV,
    StoreError,
};
use proto::error::Code;

fn b64(data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("artifact data is not base64: {e}"))
}

/// What storing an artifact did.
enum Stored {
    New,
    Duplicate,
}

impl Decider<'_> {
    /// The catalog record as this entry sees it.
    pub(super) fn catalog_get(&mut self, name: &str) -> Result<Option<CheckerRecord>, StoreError> {
        if let Some(c) = self.w.catalog.get(name) {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = self.catalog_seen.get(name) {
            return Ok(c.clone());
        }
        let c = self.view.catalog(name)?;
        self.catalog_seen.insert(name.to_string(), c.clone());
        Ok(c)
    }

    fn catalog_put(&mut self, c: CheckerRecord) {
        let rev = self.meta(META_CATALOG_REV).unwrap_or(0);
        self.w.meta.insert(META_CATALOG_REV, rev + 1);
        self.w.catalog.insert(c.name.clone(), c);
    }

    fn has_chunk(&self, sha: &str, idx: u64) -> Result<bool, StoreError> {
        Ok(self.w.blobs.contains_key(&(sha.to_string(), idx)) || self.view.has_blob(sha, idx)?)
    }

    fn chunk(&self, sha: &str, idx: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.w.blobs.get(&(sha.to_string(), idx)) {
            Some(b) => Ok(Some(b.clone())),
            None => self.view.blob(sha, idx),
        }
    }

    /// Write one chunk unless stored; refused over the catalog's total.
    fn put_chunk(&mut self, sha: &str, idx: u64, bytes: Vec<u8>) -> Result<Result<bool, String>, StoreError> {
        if self.has_chunk(sha, idx)? {
            return Ok(Ok(false));
        }
        let total = self.meta(META_CATALOG_BYTES)?;
        if total + bytes.len() as u64 > MAX_CATALOG_BYTES {
            return Ok(Err(format!(
                "the catalog holds {total} bytes; {} more would pass its limit of {MAX_CATALOG_BYTES} bytes",
                bytes.len()
            )));
        }
        self.w.meta.insert(META_CATALOG_BYTES, total + bytes.len() as u64);
        self.w.blobs.insert((sha.to_string(), idx), bytes);
        Ok(Ok(true))
    }

    pub(super) fn catalog_chunk(
        &mut self,
        sha: &str,
        index: u64,
        data: &str,
    ) -> Result<CmdResult, StoreError> {
        if !is_sha256_hex(sha) {
            return Ok(self.refuse(Code::InvalidArgument, format!("bad sha256 {sha:?}")));
        }
        if index >= chunk_count(MAX_ARTIFACT_BYTES) {
            return Ok(
                self.refuse(Code::InvalidArgument, format!("chunk {index} is past the artifact size limit"))
            );
        }
        let bytes = match b64(data) {
            Ok(b) if !b.is_empty() && b.len() <= CHUNK_BYTES => b,
            Ok(b) => {
                return Ok(self.refuse(
                    Code::InvalidArgument,
                    format!("chunk of {} bytes (1..={CHUNK_BYTES})", b.len()),
                ));
            }
            Err(e) => return Ok(self.refuse(Code::InvalidArgument, e)),
        };
        match self.put_chunk(sha, index, bytes)? {
            Ok(true) => Ok(CmdResult { applied: 1, ..self.result() }),
            Ok(false) => Ok(CmdResult { duplicate: true, ..self.result() }),
            Err(e) => Ok(self.refuse(Code::Conflict, e)),
        }
    }

    /// Store `a` (bytes inline in `data`, or staged by chunks): the checks every path shares.
    fn store_artifact(
        &mut self,
        mut a: ArtifactRecord,
        data: &str,
    ) -> Result<Result<Stored, (Code, String)>, StoreError> {
        if let Err(e) = check_name(&a.name).and_then(|()| check_version(&a.version)) {
            return Ok(Err((Code::InvalidArgument, e)));
        }
        if !is_sha256_hex(&a.sha256) || a.size == 0 || a.size > MAX_ARTIFACT_BYTES {
            return Ok(Err((
                Code::InvalidArgument,
                format!("artifact of {} bytes (1..={MAX_ARTIFACT_BYTES}) with sha256 {:?}", a.size, a.sha256),
            )));
        }
        let at = format!("{}@{}", a.name, a.version);
        let existing = self.catalog_get(&a.name)?;
        if let Some(c) = &existing {
            if c.kind != a.kind {
                return Ok(Err((
                    Code::Conflict,
                    format!("checker {} is of type {}, not {}", a.name, c.kind.as_str(), a.kind.as_str()),
                )));
            }
            if let Some(v) = c.versions.get(&a.version) {
                if v.sha256 == a.sha256 {
                    return Ok(Ok(Stored::Duplicate));
                }
                return Ok(Err((
                    Code::Conflict,
                    format!("{at} is already stored with sha256 {}; push a new version", v.sha256),
                )));
            }
            if c.versions.len() >= MAX_VERSIONS_PER_CHECKER {
                return Ok(Err((
                    Code::Conflict,
                    format!("{} holds {MAX_VERSIONS_PER_CHECKER} versions (the limit)", a.name),
                )));
            }
        } else if self.meta(META_CATALOG_CHECKERS)? >= MAX_CATALOG_CHECKERS as u64 {
            return Ok(Err((
                Code::Conflict,
                format!("the catalog holds {MAX_CATALOG_CHECKERS} checkers (the limit)"),
            )));
        }
        // Inline bytes: verified before anything is written.
        let mut inline = None;
        if !data.is_empty() {
            let bytes = match b64(data) {
                Ok(b) => b,
                Err(e) => return Ok(Err((Code::InvalidArgument, e))),
            };
            if bytes.len() as u64 != a.size || bytes.len() > CHUNK_BYTES || sha256_hex(&bytes) != a.sha256 {
                return Ok(Err((
                    Code::InvalidArgument,
                    format!("{at}: the bytes do not match size and sha256"),
                )));
            }
            inline = Some(bytes);
        }
        // Staged bytes: every chunk present with its size, and the whole hashing to the sha256.
        if inline.is_none() {
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            let n = a.chunks();
            for idx in 0..n {
                let want = if idx + 1 == n { a.size - idx * CHUNK_BYTES as u64 } else { CHUNK_BYTES as u64 };
                match self.chunk(&a.sha256, idx)? {
                    Some(b) if b.len() as u64 == want => sha2::Digest::update(&mut h, &b),
                    _ => {
                        return Ok(Err((
                            Code::InvalidArgument,
                            format!("{at}: chunk {idx} of {n} is missing or has the wrong size"),
                        )));
                    }
                }
            }
            if hex::encode(sha2::Digest::finalize(h)) != a.sha256 {
                return Ok(Err((
                    Code::InvalidArgument,
                    format!("{at}: the staged bytes do not match the sha256"),
                )));
            }
        }
        if let Some(bytes) = inline
            && let Err(e) = self.put_chunk(&a.sha256.clone(), 0, bytes)?
        {
            return Ok(Err((Code::Conflict, e)));
        }
        a.pushed_ms = self.now;
        a.pushed_by = bounded_text(&a.pushed_by);
        a.description = bounded_text(&a.description);
        let mut c = match existing {
            Some(c) => c,
            None => {
                let n = self.meta(META_CATALOG_CHECKERS)?;
                self.w.meta.insert(META_CATALOG_CHECKERS, n + 1);
                CheckerRecord {
                    name: a.name.clone(),
                    kind: a.kind,
                    stable: String::new(),
                    versions: Default::default(),
                    rollouts: Vec::new(),
                    done: Vec::new(),
                }
            }
        };
        c.versions.insert(a.version.clone(), a);
        self.catalog_put(c);
        Ok(Ok(Stored::New))
    }

    pub(super) fn catalog_push(&mut self, a: ArtifactRecord, data: &str) -> Result<CmdResult, StoreError> {
        let (at, by, sha, size) =
            (format!("{}@{}", a.name, a.version), a.pushed_by.clone(), a.sha256.clone(), a.size);
        match self.store_artifact(a, data)? {
            Err((code, e)) => {
                self.tally.rejected += 1;
                Ok(self.refuse(code, e))
            }
            Ok(Stored::Duplicate) => Ok(CmdResult { duplicate: true, applied: 1, ..self.result() }),
            Ok(Stored::New) => {
                let msg = format!("pushed {at} ({size} bytes, sha256 {sha})");
                self.audit_row("audit", "catalog", &at, &by, &msg)?;
                self.global_event("catalog", msg);
                Ok(CmdResult { applied: 1, created: 1, ..self.result() })
            }
        }
    }

    pub(super) fn catalog_seed(&mut self, items: Vec<SeedItem>) -> Result<CmdResult, StoreError> {
        if self.meta(META_CATALOG_SEEDED)? != 0 {
            return Ok(CmdResult { duplicate: true, applied: 1, ..self.result() });
        }
        self.w.meta.insert(META_CATALOG_SEEDED, 1);
        let mut created = 0;
        let mut seeded = Vec::new();
        for item in items {
            let (name, version) = (item.artifact.name.clone(), item.artifact.version.clone());
            let fresh = self.catalog_get(&name)?.is_none();
            if let Ok(Stored::New) = self.store_artifact(item.artifact, &item.data)? {
                created += 1;
                seeded.push(format!("{name}@{version}"));
                if fresh && let Some(mut c) = self.catalog_get(&name)? {
                    c.stable = version;
                    self.catalog_put(c);
                }
            }
        }
        if !seeded.is_empty() {
            let msg = format!("seeded the catalog: {}", seeded.join(", "));
            self.audit_row("audit", "catalog", "", "master", &msg)?;
            self.global_event("catalog", msg);
        }
        Ok(CmdResult { applied: 1, created, ..self.result() })
    }

    /// The labels of `host`'s machine object (label selectors match them).
    fn machine_labels(
        &mut self,
        host: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, StoreError> {
        Ok(self.load(&format!("machine/{host}"))?.map(|r| r.labels))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn rollout(
        &mut self,
        action: RolloutAction,
        name: &str,
        version: &str,
        target: Target,
        shadow: bool,
        by: &str,
        reason: &str,
    ) -> Result<CmdResult, StoreError> {
        match self.rollout_change(action, name, version, target, shadow, by, reason)? {
            Ok(detail) => {
                let at = format!("{name}@{version}");
                let msg = format!("rollout {} {at}: {detail}; reason: {reason}", action.as_str());
                self.audit_row("audit", "catalog", &at, by, &msg)?;
                self.global_event("rollout", msg);
                Ok(CmdResult { applied: 1, updated: 1, ..self.result() })
            }
            Err((code, e)) => {
                self.tally.rejected += 1;
                Ok(self.refuse(code, e))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rollout_change(
        &mut self,
        action: RolloutAction,
        name: &str,
        version: &str,
        target: Target,
        shadow: bool,
        by: &str,
        reason: &str,
    ) -> Result<Result<String, (Code, String)>, StoreError> {
        let at = format!("{name}@{version}");
        let Some(mut c) = self.catalog_get(name)? else {
            return Ok(Err((Code::NotFound, format!("no checker {name:?} in the catalog"))));
        };
        if !c.kind.assignable() {
            return Ok(Err((Code::InvalidArgument, topology_not_rolled_out(name))));
        }
        if !c.versions.contains_key(version) {
            let known: Vec<&str> = c.versions.keys().map(String::as_str).collect();
            return Ok(Err((
                Code::NotFound,
                format!("{name} has no version {version:?} (known: {})", known.join(", ")),
            )));
        }
        let now = self.now;
        let pos = c.rollouts.iter().position(|r| r.version == version);
        let detail = match action {
            RolloutAction::Start => {
                if pos.is_some() {
                    return Ok(Err((
                        Code::Conflict,
                        format!("{at} is already in a rollout (widen, pause or resume it)"),
                    )));
                }
                if c.stable == version {
                    return Ok(Err((Code::Conflict, format!("{at} is already the stable version"))));
                }
                if c.rollouts.len() >= MAX_ACTIVE_ROLLOUTS {
                    return Ok(Err((
                        Code::Conflict,
                        format!("{name} has {MAX_ACTIVE_ROLLOUTS} rollouts in progress (the limit)"),
                    )));
                }
                let mut t = target;
                if t.is_empty() {
                    return Ok(Err((
                        Code::InvalidArgument,
                        "a rollout needs hosts, a percentage or labels".into(),
                    )));
                }
                if t.bp > 0 {
                    t.from_bp = c
                        .rollouts
                        .iter()
                        .filter(|r| r.target.bp > 0)
                        .map(|r| r.target.from_bp + r.target.bp)
                        .max()
                        .unwrap_or(0);
                    if t.from_bp + t.bp > FULL_BP {
                        return Ok(Err((
                            Code::Conflict,
                            format!(
                                "{name}: only {}% of hosts are outside its other percentage rollouts",
                                f64::from(FULL_BP - t.from_bp) / 100.0
                            ),
                        )));
                    }
                }
                if let Some(why) = self.overlap_with(&c, &t, None)? {
                    return Ok(Err((Code::Conflict, why)));
                }
                c.rollouts.push(RolloutRecord {
                    version: version.to_string(),
                    state: RolloutState::Gray,
                    shadow,
                    target: t,
                    by: bounded_text(by),
                    reason: bounded_text(reason),
                    started_ms: now,
                    updated_ms: now,
                    auto_paused: false,
                    paused_reason: String::new(),
                    deviation: None,
                    previous_version: c.stable.clone(),
                    window: Window { start_ms: now, ..Window::default() },
                });
                let r = c.rollouts.last().map(|r| r.view(name)).unwrap_or_default();
                format!(
                    "started{} on hosts [{}] percent {} labels [{}]",
                    if shadow { " as a shadow run" } else { "" },
                    r.hosts.join(","),
                    r.percent,
                    r.labels.join(",")
                )
            }
            RolloutAction::Widen => {
                let Some(i) = pos else {
                    return Ok(Err((Code::NotFound, format!("{at} has no rollout in progress"))));
                };
                if c.rollouts[i].state != RolloutState::Gray {
                    return Ok(Err((Code::Conflict, format!("{at} is paused: resume it before widening"))));
                }
                if !target.labels.is_empty() {
                    return Ok(Err((
                        Code::InvalidArgument,
                        "widen takes hosts or a percentage, not labels".into(),
                    )));
                }
                let mut t = c.rollouts[i].target.clone();
                if target.bp > 0 {
                    if target.bp < t.bp {
                        return Ok(Err((
                            Code::Conflict,
                            format!("widen only grows a rollout: {at} is at {}%", f64::from(t.bp) / 100.0),
                        )));
                    }
                    if t.bp == 0 {
                        t.from_bp = c
                            .rollouts
                            .iter()
                            .filter(|r| r.target.bp > 0)
                            .map(|r| r.target.from_bp + r.target.bp)
                            .max()
                            .unwrap_or(0);
                    }
                    t.bp = target.bp;
                    if t.from_bp + t.bp > FULL_BP {
                        return Ok(Err((
                            Code::Conflict,
                            format!("{at}: the widened range would pass 100% of hosts"),
                        )));
                    }
                }
                for h in target.hosts {
                    if !t.hosts.contains(&h) {
                        t.hosts.push(h);
                    }
                }
                if t.hosts.len() > MAX_ROLLOUT_HOSTS {
                    return Ok(Err((Code::InvalidArgument, format!("more than {MAX_ROLLOUT_HOSTS} hosts"))));
                }
                if let Some(why) = self.overlap_with(&c, &t, Some(version))? {
                    return Ok(Err((Code::Conflict, why)));
                }
                c.rollouts[i].target = t;
                c.rollouts[i].updated_ms = now;
                let r = c.rollouts[i].view(name);
                format!("widened to hosts [{}] percent {}", r.hosts.join(","), r.percent)
            }
            RolloutAction::Pause | RolloutAction::Resume => {
                let Some(i) = pos else {
                    return Ok(Err((Code::NotFound, format!("{at} has no rollout in progress"))));
                };
                let r = &mut c.rollouts[i];
                let pause = action == RolloutAction::Pause;
                let want = if pause { RolloutState::Gray } else { RolloutState::Paused };
                if r.state != want {
                    return Ok(Err((Code::Conflict, format!("{at} is {}", r.state.as_str()))));
                }
                r.updated_ms = now;
                if pause {
                    r.state = RolloutState::Paused;
                    r.auto_paused = false;
                    r.paused_reason = bounded_text(&format!("paused by {by}: {reason}"));
                    "paused".to_string()
                } else {
                    r.state = RolloutState::Gray;
                    r.auto_paused = false;
                    r.paused_reason = String::new();
                    r.window = Window { start_ms: now, ..Window::default() };
                    "resumed".to_string()
                }
            }
            RolloutAction::Retire => {
                if c.stable != version {
                    return Ok(Err((
                        Code::Conflict,
                        if c.stable.is_empty() {
                            format!("{name} has no stable version to retire")
                        } else {
                            format!("{at} is not the stable version ({name}@{} is)", c.stable)
                        },
                    )));
                }
                if let Some(r) = c.rollouts.first() {
                    return Ok(Err((
                        Code::Conflict,
                        format!(
                            "{name}@{} is in a {} rollout: promote or roll it back before retiring {at}",
                            r.version,
                            r.state.as_str()
                        ),
                    )));
                }
                c.stable = String::new();
                format!("retired: the stable version {version} is unassigned, {name} runs on no host")
            }
            RolloutAction::Promote | RolloutAction::Rollback => {
                let promote = action == RolloutAction::Promote;
                let prev = c.stable.clone();
                let mut r = match pos {
                    Some(i) => c.rollouts.remove(i),
                    None if promote => {
                        if c.stable == version {
                            return Ok(Err((Code::Conflict, format!("{at} is already the stable version"))));
                        }
                        // A promotion without a rollout: the version becomes stable everywhere at once.
                        RolloutRecord {
                            version: version.to_string(),
                            state: RolloutState::Gray,
                            shadow: false,
                            target: Target::default(),
                            by: bounded_text(by),
                            reason: bounded_text(reason),
                            started_ms: now,
                            updated_ms: now,
                            auto_paused: false,
                            paused_reason: String::new(),
                            deviation: None,
                            previous_version: prev.clone(),
                            window: Window::default(),
                        }
                    }
                    None => return Ok(Err((Code::NotFound, format!("{at} has no rollout in progress")))),
                };
                r.updated_ms = now;
                r.window = Window::default();
                r.state = if promote { RolloutState::Promoted } else { RolloutState::RolledBack };
                if promote {
                    c.stable = version.to_string();
                }
                c.done.push(r);
                let excess = c.done.len().saturating_sub(MAX_DONE_ROLLOUTS);
                c.done.drain(..excess);
                if promote {
                    format!(
                        "promoted: stable version {} -> {version}",
                        if prev.is_empty() { "none" } else { &prev }
                    )
                } else {
                    format!(
                        "rolled back: its hosts return to {}",
                        if prev.is_empty() { "no version" } else { &prev }
                    )
                }
            }
        };
        self.catalog_put(c);
        Ok(Ok(detail))
    }

    /// Why `t` may share hosts with another active rollout of `c` (`skip`: the rollout being widened).
    fn overlap_with(
        &mut self,
        c: &CheckerRecord,
        t: &Target,
        skip: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        // Machine labels of the exact hosts involved, read once (bounded by MAX_ROLLOUT_HOSTS per rollout).
        let mut labels = std::collections::BTreeMap::new();
        let needs_labels = !t.labels.is_empty() || c.rollouts.iter().any(|r| !r.target.labels.is_empty());
        if needs_labels {
            let hosts: Vec<String> = t
                .hosts
                .iter()
                .chain(c.rollouts.iter().flat_map(|r| r.target.hosts.iter()))
                .cloned()
                .collect();
            for h in hosts {
                if let std::collections::btree_map::Entry::Vacant(e) = labels.entry(h) {
                    let l = self.machine_labels(e.key())?;
                    e.insert(l);
                }
            }
        }
        let labels_of = |h: &str| labels.get(h).cloned().flatten();
        for r in c.rollouts.iter().filter(|r| Some(r.version.as_str()) != skip) {
            if let Some(why) = catalog::overlap(t, &r.target, &c.name, &labels_of) {
                return Ok(Some(format!(
                    "overlaps the rollout of {}@{} ({why}): gray host sets of one checker must be disjoint",
                    c.name, r.version
                )));
            }
        }
        Ok(None)
    }

    pub(super) fn canary_check(
        &mut self,
        name: &str,
        version: &str,
        deviation: proto::view::DeviationView,
        pause: bool,
    ) -> Result<CmdResult, StoreError> {
        let Some(mut c) = self.catalog_get(name)? else { return Ok(self.result()) };
        let Some(r) = c.rollouts.iter_mut().find(|r| r.version == version && r.state == RolloutState::Gray)
        else {
            // The rollout moved on since the leader looked: nothing to record.
            return Ok(self.result());
        };
        let now = self.now;
        r.deviation = Some(deviation.clone());
        r.window = Window { start_ms: now, ..Window::default() };
        let mut alert = None;
        if pause {
            let why = pause_reason(&deviation);
            r.state = RolloutState::Paused;
            r.auto_paused = true;
            r.paused_reason = bounded_text(&why);
            r.updated_ms = now;
            alert = Some(why);
        }
        self.catalog_put(c);
        let at = format!("{name}@{version}");
        match alert {
            Some(why) => {
                self.audit_row("alert", "catalog", &at, "master", &format!("rollout of {at} paused: {why}"))?
            }
            None => self.global_event("rollout", format!("canary window of {at}: {}", deviation.verdict)),
        }
        Ok(CmdResult { applied: 1, updated: 1, ..self.result() })
    }

    /// A latched `checker=NAME@VERSION` scope pauses the gray rollout of that version (deterministically, in
    /// the same entry as the latch).
    pub(super) fn pause_for_latch(&mut self, scope: &str, reason: &str) -> Result<(), StoreError> {
        self.pause_canary(scope, &format!("{scope} latched: {reason}"))
    }

    /// Pause the gray rollout of the version a `checker=NAME@VERSION` scope names, if there is one, with
    /// `why` as its reason (an alert row says it too).
    pub(super) fn pause_canary(&mut self, scope: &str, why: &str) -> Result<(), StoreError> {
        let Some(at) = scope.strip_prefix(crate::safety::CHECKER_SCOPE) else { return Ok(()) };
        let Some((name, version)) = at.split_once('@') else { return Ok(()) };
        let Some(mut c) = self.catalog_get(name)? else { return Ok(()) };
        let now = self.now;
        let Some(r) = c.rollouts.iter_mut().find(|r| r.version == version && r.state == RolloutState::Gray)
        else {
            return Ok(());
        };
        r.state = RolloutState::Paused;
        r.auto_paused = true;
        r.paused_reason = bounded_text(why);
        r.updated_ms = now;
        self.catalog_put(c);
        self.audit_row("alert", "catalog", at, "master", &format!("rollout of {at} paused: {why}"))?;
        Ok(())
    }

    /// Count a finding in the canary windows of its checker's shadow rollouts: a shadow finding of the gray
    /// version counts for the new side, a finding of the current version on a canary host for the current
    /// side (objects flagged WARNING or worse, each object once per window).
    pub(super) fn canary_note(&mut self, f: &Finding) -> Result<(), StoreError> {
        if f.severity < Severity::Warning {
            return Ok(());
        }
        let Some(c) = self.catalog_get(&f.checker)? else { return Ok(()) };
        if !c.rollouts.iter().any(|r| r.shadow && r.state == RolloutState::Gray) {
            return Ok(());
        }
        // A network device (issue 16) is on no host, so it is in no rollout's canary.
        let Some(host) = f.object.host_name().map(str::to_string) else { return Ok(()) };
        let labels = if c.rollouts.iter().any(|r| !r.target.labels.is_empty()) {
            self.machine_labels(&host)?
        } else {
            None
        };
        let mut c = c;
        let mut changed = false;
        let oid = f.object.as_str().to_owned();
        for r in c.rollouts.iter_mut().filter(|r| r.shadow && r.state == RolloutState::Gray) {
            if !in_target(&r.target, &c.name, &host, labels.as_ref()) {
                continue;
            }
            let (set, overflow) = if f.shadow {
                if f.version != r.version {
                    continue;
                }
                (&mut r.window.new_flagged, &mut r.window.new_overflow)
            } else {
                (&mut r.window.current_flagged, &mut r.window.current_overflow)
            };
            if set.contains(&oid) {
                continue;
            }
            if set.len() < MAX_WINDOW_OBJECTS {
                set.insert(oid.clone());
            } else {
                *overflow += 1;
            }
            changed = true;
        }
        if changed {
            // Window counts are not an assignment change: the record is written without bumping the
            // catalog counter the leader's assignment cache follows.
            self.w.catalog.insert(c.name.clone(), c);
        }
        Ok(())
    }
}

/// Why a topology artifact takes no rollout (the same words on every front end).
pub fn topology_not_rolled_out(name: &str) -> String {
    format!(
        "{name} is a topology: it is never assigned to agents or rolled out; activate it with `huatuo net \
         topology set` (SetNetTopology, PUT /api/v1/net/topology)"
    )
}

impl Decider<'_> {
    /// The active topology as this entry sees it.
    fn topology_get(&self) -> Result<Option<ActiveTopology>, StoreError> {
        match &self.w.topology {
            Some(t) => Ok(t.clone()),
            None => self.view.topology(),
        }
    }

    /// Make the catalog's topology artifact `name@version` the active fabric (`name` empty: clear it).
    /// Refused, changing nothing, unless it is stored, of type topology and every chunk is present. Setting the active one again (or clearing when none is set) is a duplicate.
    pub(super) fn set_topology(
        &mut self,
        name: &str,
        version: &str,
        by: &str,
        reason: &str,
    ) -> Result<CmdResult, StoreError> {
        match self.topology_change(name, version, by, reason)? {
            Ok(None) => Ok(CmdResult { duplicate: true, applied: 1, ..self.result() }),
            Ok(Some(msg)) => {
                let rev = self.meta(META_TOPOLOGY_REV)?;
                self.w.meta.insert(META_TOPOLOGY_REV, rev + 1);
                let at = if name.is_empty() { String::new() } else { format!("{name}@{version}") };
                self.audit_row("audit", "topology", &at, by, &format!("{msg}; reason: {reason}"))?;
                self.global_event("topology", msg);
                Ok(CmdResult { applied: 1, updated: 1, ..self.result() })
            }
            Err((code, e)) => {
                self.tally.rejected += 1;
                Ok(self.refuse(code, e))
            }
        }
    }

    fn topology_change(
        &mut self,
        name: &str,
        version: &str,
        by: &str,
        reason: &str,
    ) -> Result<Result<Option<String>, (Code, String)>, StoreError> {
        let current = self.topology_get()?;
        if name.is_empty() {
            if current.is_none() {
                return Ok(Ok(None));
            }
            self.w.topology = Some(None);
            let was = current.map(|c| format!("{}@{}", c.name, c.version)).unwrap_or_default();
            return Ok(Ok(Some(format!(
                "topology {was} cleared: leaders use their [topology] file or labels"
            ))));
        }
        if let Err(e) = check_name(name).and_then(|()| check_version(version)) {
            return Ok(Err((Code::InvalidArgument, e)));
        }
        let at = format!("{name}@{version}");
        let Some(c) = self.catalog_get(name)? else {
            return Ok(Err((Code::NotFound, format!("no topology {name:?} in the catalog (push it first)"))));
        };
        if c.kind != ArtifactType::Topology {
            return Ok(Err((
                Code::InvalidArgument,
                format!("{name} is of type {}, not topology", c.kind.as_str()),
            )));
        }
        let Some(a) = c.versions.get(version) else {
            return Ok(Err((Code::NotFound, format!("{name} has no version {version:?}"))));
        };
        // Presence of every chunk (their sizes and the whole's sha256 were verified when the version was
        // stored): apply reads no artifact bytes; the leader verifies them again when it loads them.
        let n = a.chunks();
        for idx in 0..n {
            if !self.has_chunk(&a.sha256, idx)? {
                return Ok(Err((Code::Conflict, format!("{at}: chunk {idx} of {n} is missing"))));
            }
        }
        if current.as_ref().is_some_and(|t| t.name == name && t.version == version && t.sha256 == a.sha256) {
            return Ok(Ok(None));
        }
        let msg = format!("topology {at} active (sha256 {}, {} bytes)", a.sha256, a.size);
        self.w.topology = Some(Some(ActiveTopology {
            name: name.to_string(),
            version: version.to_string(),
            sha256: a.sha256.clone(),
            size: a.size,
            set_by: bounded_text(by),
            set_ms: self.now,
            reason: bounded_text(reason),
        }));
        Ok(Ok(Some(msg)))
    }
}

impl Decider<'_> {
    /// A shadow finding (a canary version's shadow run): recorded in the object's history and the change log
    /// when it reports a fault, never fed to a state machine (no transition, no quota use, no evidence
    /// replaced). An object nobody registered is not created by a shadow run.
    pub(super) fn shadow_finding(&mut self, f: Finding) -> Result<Result<bool, (Code, String)>, StoreError> {
        let id = f.object.as_str().to_owned();
        let Some(mut rec) = self.load(&id)? else { return Ok(Ok(false)) };
        if !f.severity.is_fault() {
            return Ok(Ok(false));
        }
        let detail = format!(
            "shadow {}@{} {} {}: {}",
            f.checker,
            f.version,
            f.rule,
            f.severity,
            super::decide::first_line(&f.evidence)
        );
        let rev = self.change(&mut rec, "shadow", "", detail.clone());
        let cause = format!("shadow run of {}@{}", f.checker, f.version);
        self.push_history(&mut rec, super::decide::history("shadow", rev, self.now, cause, detail));
        self.save(rec)?;
        Ok(Ok(false))
    }
}
