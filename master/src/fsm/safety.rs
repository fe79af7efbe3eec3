//! The safety net's decisions: per-scope counters kept exact as records change, admission of every
//! transition (levels, checker-version spikes, quotas), proposals, latching into manual drive, and the
//! operator commands (levels, decisions on proposals, the safety config, `min_command_version`). Part of the
//! pure `decide`: it sees only the view, the entry's writes and the entry's time.

use state_machines::{Cause, Effect, Kind, ObjectId, State, Transition};

use super::decide::{Decider, bounded_text, first_line, history};
use super::objects::{Mode, StepRecord};
use crate::model::*;
use crate::safety::{self, Level, Proposal, ProposalFilter, ProposalStatus, SafetyConfig};
use crate::sm_seam::{self, Input, Outcome};
use crate::store::{META_MIN_COMMAND_VERSION, META_PROPOSAL_NEXT, StoreError};

/// What admission decided about a transition.
pub(super) enum Admission {
    Admit,
    /// Not applied. `new`: first time (history and an event); repeats only bump the proposal.
    Hold {
        proposal: u64,
        reason: String,
        new: bool,
    },
}

/// Why an operator's decision about one proposal could not be carried out (reported per id in the result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NotDecided {
    #[error("no proposal #{0}")]
    Unknown(u64),
    #[error("proposal #{id} is {}", status.as_str())]
    AlreadyDecided { id: u64, status: ProposalStatus },
    #[error("proposal #{0}: object {1} no longer exists")]
    ObjectGone(u64, String),
    #[error("proposal #{id}: {object} is {now} now; {from} -> {to} no longer applies (marked stale)")]
    Stale {
        id: u64,
        object: String,
        now: state_machines::State,
        from: state_machines::State,
        to: state_machines::State,
    },
    /// Approved, but the safety net still refuses it (a blind scope).
    #[error("proposal #{0}: {1}")]
    Held(u64, String),
}

/// Why and where a transition is held (the arguments of [`Decider::propose`]).
struct Hold<'a> {
    /// The object's scopes (filters and per-scope counts).
    scopes: &'a [String],
    /// The scopes whose level or quota held it.
    held_by: Vec<String>,
    reason: String,
    /// The object's pending proposal, if any.
    existing: Option<Proposal>,
}

impl Decider<'_> {
    // ---- counters -------------------------------------------------------------------------------------

    fn scope_level(&mut self, name: &str) -> Result<Level, StoreError> {
        Ok(self.scope_mut(name)?.level)
    }

    /// (scope, kind, removed) of one record; objects without a state machine count nowhere.
    fn contributions(&self, rec: &ObjectRecord) -> Vec<(String, &'static str, bool)> {
        let kind = rec.id.kind();
        if kind == Kind::Checker {
            return Vec::new();
        }
        let removed = safety::is_removed(rec.sm.state);
        self.cfg.scopes_of(&rec.labels).into_iter().map(|s| (s, kind.as_str(), removed)).collect()
    }

    /// Move a record's contribution to the per-scope population/removed counters from `prev` to `next`.
    pub(super) fn account(
        &mut self,
        prev: Option<&ObjectRecord>,
        next: Option<&ObjectRecord>,
    ) -> Result<(), StoreError> {
        // The hot path (a finding that changes no state): the same object with the same labels and the
        // same removed-or-not contributes the same, and building its scopes twice to compare them was a
        // twentieth of a member's apply under load (issue 17's profile).
        if let (Some(p), Some(n)) = (prev, next)
            && p.id == n.id
            && p.labels == n.labels
            && safety::is_removed(p.sm.state) == safety::is_removed(n.sm.state)
        {
            return Ok(());
        }
        let before = prev.map(|r| self.contributions(r)).unwrap_or_default();
        let after = next.map(|r| self.contributions(r)).unwrap_or_default();
        if before == after {
            return Ok(());
        }
        for (scope, kind, removed) in before {
            let k = self.scope_mut(&scope)?.kinds.entry(kind.to_string()).or_default();
            k.population = k.population.saturating_sub(1);
            if removed {
                k.removed = k.removed.saturating_sub(1);
            }
        }
        for (scope, kind, removed) in after {
            let k = self.scope_mut(&scope)?.kinds.entry(kind.to_string()).or_default();
            k.population += 1;
            if removed {
                k.removed += 1;
            }
        }
        Ok(())
    }

    /// Remember an admitted entry into ERROR/FIX/REPAIR in every scope's sliding window.
    fn count_entry(&mut self, scopes: &[String], kind: Kind) -> Result<(), StoreError> {
        let window = safety::longest_window(&self.cfg, kind);
        if window == 0 {
            return Ok(());
        }
        for s in scopes.iter().filter(|s| !s.starts_with(safety::CHECKER_SCOPE)) {
            self.add_entry(s, kind.as_str(), window)?;
        }
        Ok(())
    }

    // ---- admission ------------------------------------------------------------------------------------

    /// The gate every transition passes. Blind scopes refuse it; operators' own commands pass elsewhere;
    /// in manual drive transitions that take action become proposals; automatic entries into
    /// ERROR/FIX/REPAIR must fit the spike detector and every quota of the object's scopes, and a breach
    /// latches the breached scope into manual drive.
    pub(super) fn admit(
        &mut self,
        rec: &ObjectRecord,
        out: &Outcome,
        t: &Transition,
        input: &Input,
        mode: Mode,
    ) -> Result<Admission, StoreError> {
        let kind = rec.id.kind();
        let mut scopes = self.cfg.scopes_of(&rec.labels);
        let version_scope = match &t.cause {
            Cause::Finding { checker, version, .. } => Some(safety::checker_scope(checker, version)),
            _ => None,
        };
        scopes.extend(version_scope.clone());
        // A predicted failure (issue 20) removes no capacity, but a bad model flags many disks at once: it is
        // counted and held in its model's own scope (below).
        let prediction = match input {
            Input::Finding(f) if t.to == State::Warning && t.from.in_service() => safety::prediction_scope(f),
            _ => None,
        };
        scopes.extend(prediction.clone());
        let mut levels = Vec::with_capacity(scopes.len());
        for s in &scopes {
            levels.push((s.clone(), self.scope_level(s)?));
        }
        let level = levels.iter().map(|(_, l)| *l).max().unwrap_or(Level::Auto);
        // Capacity leaves service only from an in-service state; NEWBIE/TEST -> REPAIR removes nothing.
        let entering = t.from.in_service() && safety::is_removed(t.to);
        // A reboot (the FIX ladder's last rung before REPAIR) counts against the window like an entry.
        let reboot = out.effects.iter().any(|e| {
            matches!(
                e,
                Effect::RunAction {
                    action: state_machines::Action::Fix { fix: state_machines::FixAction::Reboot },
                    ..
                }
            )
        });
        if level == Level::Blind {
            let blind: Vec<String> =
                levels.iter().filter(|(_, l)| *l == Level::Blind).map(|(s, _)| s.clone()).collect();
            let reason =
                format!("{} is blind: no state changes ({})", blind.join(", "), self.level_reasons(&blind));
            self.blocked(&blind, &reason)?;
            // Commands (operator, acks, results) are refused with an error and leave no trace; what the
            // checkers saw is recorded so nothing is hidden while the scope is blind (ticks are not: they
            // would repeat every few seconds).
            let new = matches!(input, Input::Finding(_) | Input::Replacement { .. });
            return Ok(Admission::Hold { proposal: 0, reason, new });
        }
        if mode != Mode::Auto {
            if entering || reboot {
                self.count_entry(&scopes, kind)?;
            }
            return Ok(Admission::Admit);
        }
        let existing = self.latest_proposal(&rec.id)?.filter(|p| p.status == ProposalStatus::Pending);
        if level == Level::Manual && safety::takes_action(t.to) {
            let manual: Vec<String> =
                levels.iter().filter(|(_, l)| *l == Level::Manual).map(|(s, _)| s.clone()).collect();
            let reason = format!("{} in manual drive ({})", manual.join(", "), self.level_reasons(&manual));
            return self.propose(rec, t, input, Hold { scopes: &scopes, held_by: manual, reason, existing });
        }
        if let Some(ps) = &prediction {
            if self.scope_level(ps)? == Level::Manual {
                let reason =
                    format!("{ps} in manual drive ({})", self.level_reasons(std::slice::from_ref(ps)));
                let hold = Hold { scopes: &scopes, held_by: vec![ps.clone()], reason, existing };
                return self.propose(rec, t, input, hold);
            }
            if let Some(reason) = self.spike(ps, kind, &rec.id, "be predicted to fail")? {
                let hold = Hold { scopes: &scopes, held_by: vec![ps.clone()], reason, existing };
                return self.propose(rec, t, input, hold);
            }
        }
        if out.removes_capacity() && (entering || reboot) {
            if entering
                && let Some(vs) = &version_scope
                && let Some(reason) = self.spike(vs, kind, &rec.id, "leave service")?
            {
                let hold = Hold { scopes: &scopes, held_by: vec![vs.clone()], reason, existing };
                return self.propose(rec, t, input, hold);
            }
            let mut violations = Vec::new();
            let longest = safety::longest_window(&self.cfg, kind);
            for s in scopes.iter().filter(|s| !s.starts_with(safety::CHECKER_SCOPE)) {
                let mut windows: Vec<u64> =
                    self.cfg.quotas.iter().filter(|q| q.applies_to(kind, s)).map(|q| q.window_ms).collect();
                windows.sort_unstable();
                windows.dedup();
                let used = self.entries_used(s, kind.as_str(), &windows, longest)?;
                let r = self.scope_mut(s)?.clone();
                let used = |w: u64| used.iter().find(|(x, _)| *x == w).map_or(0, |(_, n)| *n);
                violations.extend(safety::check_quotas_with(&self.cfg, s, &r, kind, entering, &used));
            }
            if !violations.is_empty() {
                let mut held_by: Vec<String> = Vec::new();
                for v in &violations {
                    self.latch(&v.scope, &v.message, rec.id.as_str())?;
                    if !held_by.contains(&v.scope) {
                        held_by.push(v.scope.clone());
                    }
                }
                let reason = violations.iter().map(|v| v.message.as_str()).collect::<Vec<_>>().join("; ");
                // A canary version whose finding tripped a quota is paused too (issue 15): with the
                // default quotas the cluster's latches before the version's own spike detector would.
                if let Some(vs) = &version_scope {
                    let why =
                        format!("{} latched on a transition from this version: {reason}", held_by.join(", "));
                    self.pause_canary(vs, &why)?;
                }
                return self.propose(rec, t, input, Hold { scopes: &scopes, held_by, reason, existing });
            }
            self.count_entry(&scopes, kind)?;
        }
        if let Some(mut p) = existing {
            // Back in automatic drive and within quota: the held transition happened after all.
            p.status = ProposalStatus::Applied;
            p.decided_by = "master".into();
            p.decided_reason = "applied automatically within quota".into();
            p.decided_ms = self.now;
            self.close_proposal(&p)?;
        }
        Ok(Admission::Admit)
    }

    fn level_reasons(&mut self, scopes: &[String]) -> String {
        let mut out = Vec::new();
        for s in scopes {
            if let Some(r) = self.w.scopes.get(s).filter(|r| !r.reason.is_empty()) {
                out.push(format!("{s}: {}", r.reason));
            }
        }
        out.join("; ")
    }

    fn blocked(&mut self, scopes: &[String], reason: &str) -> Result<(), StoreError> {
        let now = self.now;
        for s in scopes {
            let r = self.scope_mut(s)?;
            r.last_blocked = bounded_text(reason);
            r.last_blocked_ms = now;
        }
        Ok(())
    }

    /// Count a would-be removal by a checker version; latch its scope when the version's removals in the
    /// window reach the spike threshold. Returns the reason when the transition must be held.
    fn spike(
        &mut self,
        scope: &str,
        kind: Kind,
        object: &ObjectId,
        what: &str,
    ) -> Result<Option<String>, StoreError> {
        let population =
            self.scope_mut(safety::CLUSTER)?.kinds.get(kind.as_str()).map_or(0, |k| k.population);
        let rule = self.cfg.spike.clone();
        let id = object.to_string();
        let count = self.add_spike(scope, &id, rule.window_ms)?;
        let threshold = rule.min.max(rule.share.of(population));
        if count < threshold {
            return Ok(None);
        }
        let reason = format!(
            "checker version spike: {count} {kind}s would {what} within {} by {scope} (threshold {threshold})",
            safety::human_ms(rule.window_ms)
        );
        self.latch(scope, &reason, &id)?;
        Ok(Some(reason))
    }

    /// Switch a scope in automatic drive to latched manual drive and raise an alert.
    pub(super) fn latch(&mut self, scope: &str, reason: &str, object: &str) -> Result<(), StoreError> {
        let now = self.now;
        let r = self.scope_mut(scope)?;
        if r.level != Level::Auto {
            return Ok(());
        }
        r.level = Level::Manual;
        r.latched = true;
        r.reason = bounded_text(reason);
        r.set_by = "master".into();
        r.since_ms = now;
        let message = format!("{scope} switched to manual drive: {reason}");
        self.audit_row("alert", scope, object, "master", &message)?;
        self.global_event("level", message);
        // A checker version's latch also pauses its rollout (issue 15).
        self.pause_for_latch(scope, reason)?;
        Ok(())
    }

    /// Record (or repeat) a proposal for a held transition.
    fn propose(
        &mut self,
        rec: &ObjectRecord,
        t: &Transition,
        input: &Input,
        hold: Hold<'_>,
    ) -> Result<Admission, StoreError> {
        let Hold { scopes, held_by, reason, existing } = hold;
        self.blocked(&held_by, &reason)?;
        let mut signature = match &t.cause {
            Cause::Finding { checker, version, rule, .. } => format!("{checker}@{version} {rule}"),
            c => c.name().to_string(),
        };
        // A prediction's signature names its model: rejecting a bad model's proposal does not suppress the
        // same transition proposed on the evidence of another model.
        if let Input::Finding(f) = input
            && let Some(ms) = safety::prediction_scope(f)
        {
            signature = format!("{signature} {}", &ms[safety::CHECKER_SCOPE.len()..]);
        }
        if let Some(mut p) = existing {
            p.repeats += 1;
            p.updated_ms = self.now;
            let new_target = p.to_state != t.to;
            p.to_state = t.to;
            p.input = input.clone();
            p.cause = sm_seam::cause_text(&t.cause);
            p.signature = signature;
            self.put_proposal(&p);
            return Ok(Admission::Hold { proposal: p.id, reason, new: new_target });
        }
        if let Some(mut p) = self.latest_proposal(&rec.id)?
            && p.status == ProposalStatus::Rejected
            && p.to_state == t.to
            && p.signature == signature
            && self.now < p.decided_ms.saturating_add(self.cfg.reject_suppress_ms)
        {
            p.repeats += 1;
            p.updated_ms = self.now;
            self.put_proposal(&p);
            let why = format!("{reason}; the same proposal #{} was rejected by {}", p.id, p.decided_by);
            return Ok(Admission::Hold { proposal: p.id, reason: why, new: false });
        }
        let id = self.meta(META_PROPOSAL_NEXT)? + 1;
        self.w.meta.insert(META_PROPOSAL_NEXT, id);
        let evidence = t
            .evidence
            .as_ref()
            .map(|e| format!("{} {} {}: {}", e.checker, e.rule, e.severity, first_line(&e.evidence)))
            .unwrap_or_default();
        let p = Proposal {
            id,
            object: rec.id.clone(),
            from_state: t.from,
            to_state: t.to,
            input: input.clone(),
            cause: sm_seam::cause_text(&t.cause),
            signature,
            evidence,
            scopes: scopes.to_vec(),
            held_by,
            reason: bounded_text(&reason),
            created_ms: self.now,
            updated_ms: self.now,
            repeats: 0,
            status: ProposalStatus::Pending,
            decided_by: String::new(),
            decided_reason: String::new(),
            decided_ms: 0,
        };
        self.put_proposal(&p);
        let oid = rec.id.as_str().to_owned();
        self.w.proposal_obj.insert(oid.clone(), id);
        self.w.pending.insert(id, Some(oid));
        for s in scopes {
            self.scope_mut(s)?.pending += 1;
        }
        self.evict_decided()?;
        Ok(Admission::Hold { proposal: id, reason: format!("proposal #{id}: {reason}"), new: true })
    }

    fn put_proposal(&mut self, p: &Proposal) {
        self.w.proposals.insert(p.id, Some(p.clone()));
    }

    /// Store a decided proposal and take it out of the pending index and counts.
    fn close_proposal(&mut self, p: &Proposal) -> Result<(), StoreError> {
        self.put_proposal(p);
        if self.is_pending(p.id)? {
            self.w.pending.insert(p.id, None);
            for s in &p.scopes {
                let r = self.scope_mut(s)?;
                r.pending = r.pending.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Keep at most [`safety::MAX_DECIDED_PROPOSALS`] decided proposals (oldest go first; pending stay).
    fn evict_decided(&mut self) -> Result<(), StoreError> {
        let total = self.proposal_count()?;
        let pending = self.pending_count()?;
        let mut excess = (total - pending.min(total)).saturating_sub(safety::MAX_DECIDED_PROPOSALS);
        // Bounded: each proposal adds one row, so this removes at most one or two per call.
        let mut victims = Vec::new();
        if excess > 0 {
            self.walk_proposals(&mut |id| {
                if !self.is_pending(id)? {
                    victims.push(id);
                    excess -= 1;
                }
                Ok(excess > 0)
            })?;
        }
        for id in victims {
            self.w.proposals.insert(id, None);
        }
        Ok(())
    }

    // ---- operator commands ----------------------------------------------------------------------------

    pub(super) fn set_level(
        &mut self,
        scope: &str,
        level: Level,
        by: &str,
        reason: &str,
    ) -> Result<CmdResult, StoreError> {
        if let Err(e) = safety::validate_scope(scope) {
            return Ok(self.refuse(proto::error::Code::InvalidArgument, e.to_string()));
        }
        let now = self.now;
        let r = self.scope_mut(scope)?;
        let before = (r.level, r.latched);
        r.level = level;
        r.latched = false;
        r.reason = bounded_text(reason);
        r.set_by = bounded_text(by);
        r.since_ms = now;
        let message = format!(
            "{scope}: level {}{} -> {level} by {by}: {reason}",
            before.0,
            if before.1 { " (latched)" } else { "" }
        );
        self.audit_row("audit", scope, "", by, &message)?;
        self.global_event("level", message);
        Ok(CmdResult { applied: 1, revision: self.revision, ..self.result() })
    }

    pub(super) fn set_safety(
        &mut self,
        config: SafetyConfig,
        by: &str,
        reason: &str,
    ) -> Result<CmdResult, StoreError> {
        if let Err(e) = config.validate() {
            return Ok(self.refuse(proto::error::Code::InvalidArgument, e.to_string()));
        }
        self.drop_empty_scopes()?;
        self.w.safety = Some(config.clone());
        self.cfg = config;
        self.rebuild_counts()?;
        let message = format!("safety config replaced by {by}: {reason}");
        self.audit_row("audit", safety::CLUSTER, "", by, &message)?;
        self.global_event("config", message);
        Ok(CmdResult { applied: 1, revision: self.revision, ..self.result() })
    }

    /// Enable command versions up to `version` cluster-wide. Deterministic on every node: the proposer's gate
    /// ([`crate::model::check_proposable`]) refuses versions its binary does not know; here any version >= 1
    /// is stored, so members of different binaries store the same value (a member that does not know the
    /// version stops at the first entry that uses it).
    pub(super) fn set_min_command_version(
        &mut self,
        version: u32,
        by: &str,
        reason: &str,
    ) -> Result<CmdResult, StoreError> {
        if version == 0 {
            let e = "min_command_version must be at least 1".to_string();
            return Ok(self.refuse(proto::error::Code::InvalidArgument, e));
        }
        let before = self.min_version;
        self.min_version = u64::from(version);
        self.w.meta.insert(META_MIN_COMMAND_VERSION, self.min_version);
        let rows = u64::from(crate::model::WINDOW_ROWS_VERSION);
        if (before < rows) != (self.min_version < rows) {
            self.window_from.clear();
            self.move_windows(self.min_version >= rows)?;
        }
        let message = format!("min_command_version {before} -> {version} by {by}: {reason}");
        self.audit_row("audit", safety::CLUSTER, "", by, &message)?;
        self.global_event("config", message);
        Ok(CmdResult { applied: 1, revision: self.revision, ..self.result() })
    }

    /// Recount populations and agents per scope from scratch (after the scope keys may have changed).
    /// Levels, windows, proposals and blocked reasons stay. O(objects + agents), once per config change.
    fn rebuild_counts(&mut self) -> Result<(), StoreError> {
        let names = self.scope_names()?;
        for n in &names {
            let r = self.scope_mut(n)?;
            for k in r.kinds.values_mut() {
                k.population = 0;
                k.removed = 0;
            }
            r.agents = 0;
            r.agents_alive = 0;
        }
        self.clear_scope_counts()?;
        for rec in &self.all_objects()? {
            self.account(None, Some(rec))?;
            self.count_scopes(rec)?;
        }
        for (id, mut a) in self.all_agents()? {
            a.scopes.clear();
            let counted = AgentRecord { alive: false, ..a.clone() };
            // Count as new (no previous scopes) without treating it as going silent.
            self.put_agent(&id, Some(&counted), a, false)?;
        }
        Ok(())
    }

    /// Approve or reject proposals: the listed ids, or every pending one matching `filter` (bounded).
    pub(super) fn decide_proposals(
        &mut self,
        ids: Vec<u64>,
        filter: &ProposalFilter,
        approve: bool,
        by: &str,
        reason: &str,
    ) -> Result<CmdResult, StoreError> {
        let mut res = self.result();
        let targets: Vec<u64> = if ids.is_empty() {
            let mut out = Vec::new();
            self.walk_pending(&mut |id| {
                if let Some(p) = self.proposal(id)?
                    && filter.matches(&p)
                {
                    out.push(id);
                }
                Ok(out.len() < safety::MAX_DECIDE)
            })?;
            out
        } else {
            ids.into_iter().take(safety::MAX_DECIDE).collect()
        };
        for id in targets {
            match self.decide_one(id, approve, by, reason)? {
                Ok(()) => res.decided.push(id),
                Err(e) => res.failed.push((id, e.to_string())),
            }
        }
        if !res.decided.is_empty() {
            let message = format!(
                "{} {} proposal(s) {}: {reason}",
                by,
                if approve { "approved" } else { "rejected" },
                short_list(&res.decided)
            );
            self.audit_row("audit", "", "", by, &message)?;
        }
        res.applied = res.decided.len() as u32;
        res.revision = self.revision;
        Ok(res)
    }

    fn decide_one(
        &mut self,
        id: u64,
        approve: bool,
        by: &str,
        reason: &str,
    ) -> Result<Result<(), NotDecided>, StoreError> {
        let Some(mut p) = self.proposal(id)? else { return Ok(Err(NotDecided::Unknown(id))) };
        if p.status != ProposalStatus::Pending {
            return Ok(Err(NotDecided::AlreadyDecided { id, status: p.status }));
        }
        let oid = p.object.to_string();
        let Some(mut rec) = self.load(&oid)? else {
            return Ok(Err(NotDecided::ObjectGone(id, oid)));
        };
        p.decided_by = bounded_text(by);
        p.decided_reason = bounded_text(reason);
        p.decided_ms = self.now;
        if !approve {
            p.status = ProposalStatus::Rejected;
            self.close_proposal(&p)?;
            let detail =
                format!("proposal #{id} ({} -> {}) rejected by {by}: {reason}", p.from_state, p.to_state);
            let rev = self.change(&mut rec, "proposal", "", detail.clone());
            self.push_history(&mut rec, history("proposal", rev, self.now, format!("operator {by}"), detail));
            self.save(rec)?;
            return Ok(Ok(()));
        }
        // Re-apply the held input; if the object moved on since, an operator's approval still means "make
        // that transition", taken as a force along a legal edge.
        let mut attempt = sm_seam::step(&rec.sm, &p.input, self.now, self.policy, self.rules())
            .ok()
            .filter(|o| o.transition.as_ref().is_some_and(|t| t.to == p.to_state));
        let mut input = p.input.clone();
        if attempt.is_none() {
            input = Input::Operator {
                operator: bounded_text(by),
                command: state_machines::OperatorCommand::Force {
                    to: p.to_state,
                    reason: bounded_text(&format!("approved proposal #{id}: {reason}")),
                },
            };
            attempt = sm_seam::step(&rec.sm, &input, self.now, self.policy, self.rules())
                .ok()
                .filter(|o| o.transition.is_some());
        }
        let Some(out) = attempt else {
            p.status = ProposalStatus::Stale;
            self.close_proposal(&p)?;
            return Ok(Err(NotDecided::Stale {
                id,
                object: oid,
                now: rec.sm.state,
                from: p.from_state,
                to: p.to_state,
            }));
        };
        self.held = None;
        let detail = format!("approved proposal #{id} by {by}: {reason}");
        let step = StepRecord {
            input: &input,
            what: "approve",
            detail,
            always_history: true,
            mode: Mode::Approved(id),
        };
        self.store_outcome(&mut rec, out, step)?;
        if let Some((_, why)) = self.held.take() {
            self.save(rec)?;
            return Ok(Err(NotDecided::Held(id, why)));
        }
        self.save(rec)?;
        p.status = ProposalStatus::Approved;
        self.close_proposal(&p)?;
        Ok(Ok(()))
    }
}

fn short_list(ids: &[u64]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = ids.iter().take(SHOWN).map(|i| format!("#{i}")).collect();
    if ids.len() > SHOWN {
        s.push(format!("and {} more", ids.len() - SHOWN));
    }
    s.join(", ")
}
