//! The safety net during apply: per-scope counters kept exact as records change, admission of every
//! transition (levels, checker-version spikes, quotas), proposals, latching into manual drive, agent
//! liveness per scope, operator commands (levels, decisions, config) and the alert/audit log. Runs inside
//! `MasterFsm::apply_entry`, so it is deterministic and sees only replicated state and the entry's time.

use redb::ReadableTableMetadata;

use super::*;

impl Apply<'_, '_> {
    // ---- counters -------------------------------------------------------------------------------------

    pub(super) fn scope_mut(&mut self, name: &str) -> Result<&mut ScopeRecord, StoreError> {
        if !self.scopes.contains_key(name) {
            let rec: ScopeRecord = match self.t.scopes.get(name)? {
                Some(g) => store::decode("fsm_scopes", g.value())?,
                None => ScopeRecord::default(),
            };
            self.scopes.insert(name.to_string(), rec);
        }
        Ok(self.scopes.entry(name.to_string()).or_default())
    }

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
        let now = self.now;
        for s in scopes.iter().filter(|s| !s.starts_with(safety::CHECKER_SCOPE)) {
            let k = self.scope_mut(s)?.kinds.entry(kind.as_str().to_string()).or_default();
            k.entries.push(now);
            safety::prune(&mut k.entries, now, window);
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
    ) -> Result<Decision, StoreError> {
        let kind = rec.id.kind();
        let mut scopes = self.cfg.scopes_of(&rec.labels);
        let version_scope = match &t.cause {
            Cause::Finding { checker, version, .. } => Some(safety::checker_scope(checker, version)),
            _ => None,
        };
        scopes.extend(version_scope.clone());
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
            return Ok(Decision::Hold { proposal: 0, reason, new });
        }
        if mode != Mode::Auto {
            if entering || reboot {
                self.count_entry(&scopes, kind)?;
            }
            return Ok(Decision::Admit);
        }
        let existing = self.latest_proposal(&rec.id)?.filter(|p| p.status == ProposalStatus::Pending);
        if level == Level::Manual && safety::takes_action(t.to) {
            let manual: Vec<String> =
                levels.iter().filter(|(_, l)| *l == Level::Manual).map(|(s, _)| s.clone()).collect();
            let reason = format!("{} in manual drive ({})", manual.join(", "), self.level_reasons(&manual));
            return self.propose(rec, t, input, &scopes, manual, reason, existing);
        }
        if out.removes_capacity() && (entering || reboot) {
            if entering
                && let Some(vs) = &version_scope
                && let Some(reason) = self.spike(vs, kind, &rec.id)?
            {
                return self.propose(rec, t, input, &scopes, vec![vs.clone()], reason, existing);
            }
            let mut violations = Vec::new();
            for s in scopes.iter().filter(|s| !s.starts_with(safety::CHECKER_SCOPE)) {
                let r = self.scope_mut(s)?.clone();
                violations.extend(safety::check_quotas(&self.cfg, s, &r, kind, self.now, entering));
            }
            if !violations.is_empty() {
                let mut held_by: Vec<String> = Vec::new();
                for v in &violations {
                    self.latch(&v.scope, &v.message, &rec.id.to_string())?;
                    if !held_by.contains(&v.scope) {
                        held_by.push(v.scope.clone());
                    }
                }
                let reason = violations.iter().map(|v| v.message.as_str()).collect::<Vec<_>>().join("; ");
                return self.propose(rec, t, input, &scopes, held_by, reason, existing);
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
        Ok(Decision::Admit)
    }

    fn level_reasons(&mut self, scopes: &[String]) -> String {
        let mut out = Vec::new();
        for s in scopes {
            if let Some(r) = self.scopes.get(s).filter(|r| !r.reason.is_empty()) {
                out.push(format!("{s}: {}", r.reason));
            }
        }
        out.join("; ")
    }

    fn blocked(&mut self, scopes: &[String], reason: &str) -> Result<(), StoreError> {
        let now = self.now;
        for s in scopes {
            let r = self.scope_mut(s)?;
            r.last_blocked = safety_text(reason);
            r.last_blocked_ms = now;
        }
        Ok(())
    }

    /// Count a would-be removal by a checker version; latch its scope when the version's removals in the
    /// window reach the spike threshold. Returns the reason when the transition must be held.
    fn spike(&mut self, scope: &str, kind: Kind, object: &ObjectId) -> Result<Option<String>, StoreError> {
        let population =
            self.scope_mut(safety::CLUSTER)?.kinds.get(kind.as_str()).map_or(0, |k| k.population);
        let rule = self.cfg.spike.clone();
        let now = self.now;
        let id = object.to_string();
        let r = self.scope_mut(scope)?;
        let from = now.saturating_sub(rule.window_ms);
        r.spike.retain(|(t, _)| *t >= from);
        if !r.spike.iter().any(|(_, o)| *o == id) {
            r.spike.push((now, id.clone()));
            let excess = r.spike.len().saturating_sub(safety::MAX_WINDOW_ENTRIES);
            r.spike.drain(..excess);
        }
        let count = r.spike.len() as u64;
        let threshold = rule.min.max(rule.share.of(population));
        if count < threshold {
            return Ok(None);
        }
        let reason = format!(
            "checker version spike: {count} {kind}s would leave service within {} by {scope} (threshold {threshold})",
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
        r.reason = safety_text(reason);
        r.set_by = "master".into();
        r.since_ms = now;
        let message = format!("{scope} switched to manual drive: {reason}");
        self.audit_row("alert", scope, object, "master", &message)?;
        self.global_event("level", message);
        Ok(())
    }

    /// Record (or repeat) a proposal for a held transition.
    #[allow(clippy::too_many_arguments)]
    fn propose(
        &mut self,
        rec: &ObjectRecord,
        t: &Transition,
        input: &Input,
        scopes: &[String],
        held_by: Vec<String>,
        reason: String,
        existing: Option<Proposal>,
    ) -> Result<Decision, StoreError> {
        self.blocked(&held_by, &reason)?;
        let signature = match &t.cause {
            Cause::Finding { checker, version, rule, .. } => format!("{checker}@{version} {rule}"),
            c => c.name().to_string(),
        };
        if let Some(mut p) = existing {
            p.repeats += 1;
            p.updated_ms = self.now;
            let new_target = p.to_state != t.to;
            p.to_state = t.to;
            p.input = input.clone();
            p.cause = machine::cause_text(&t.cause);
            p.signature = signature;
            self.put_proposal(&p)?;
            return Ok(Decision::Hold { proposal: p.id, reason, new: new_target });
        }
        if let Some(mut p) = self.latest_proposal(&rec.id)?
            && p.status == ProposalStatus::Rejected
            && p.to_state == t.to
            && p.signature == signature
            && self.now < p.decided_ms.saturating_add(self.cfg.reject_suppress_ms)
        {
            p.repeats += 1;
            p.updated_ms = self.now;
            self.put_proposal(&p)?;
            let why = format!("{reason}; the same proposal #{} was rejected by {}", p.id, p.decided_by);
            return Ok(Decision::Hold { proposal: p.id, reason: why, new: false });
        }
        let id = self.t.meta.get(META_PROPOSAL_NEXT)?.map(|g| g.value()).unwrap_or(0) + 1;
        self.t.meta.insert(META_PROPOSAL_NEXT, id)?;
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
            cause: machine::cause_text(&t.cause),
            signature,
            evidence,
            scopes: scopes.to_vec(),
            held_by,
            reason: safety_text(&reason),
            created_ms: self.now,
            updated_ms: self.now,
            repeats: 0,
            status: ProposalStatus::Pending,
            decided_by: String::new(),
            decided_reason: String::new(),
            decided_ms: 0,
        };
        self.put_proposal(&p)?;
        let oid = rec.id.to_string();
        self.t.proposal_obj.insert(oid.as_str(), id.to_be_bytes().as_slice())?;
        self.t.pending.insert(id, oid.as_bytes())?;
        for s in scopes {
            self.scope_mut(s)?.pending += 1;
        }
        self.evict_decided()?;
        Ok(Decision::Hold { proposal: id, reason: format!("proposal #{id}: {reason}"), new: true })
    }

    fn put_proposal(&mut self, p: &Proposal) -> Result<(), StoreError> {
        self.t.proposals.insert(p.id, store::encode(p).as_slice())?;
        Ok(())
    }

    fn proposal(&self, id: u64) -> Result<Option<Proposal>, StoreError> {
        self.t.proposals.get(id)?.map(|g| store::decode("fsm_proposals", g.value())).transpose()
    }

    fn latest_proposal(&self, object: &ObjectId) -> Result<Option<Proposal>, StoreError> {
        let Some(id) = self.t.proposal_obj.get(object.to_string().as_str())?.map(|g| be_u64(g.value()))
        else {
            return Ok(None);
        };
        self.proposal(id?)
    }

    /// Store a decided proposal and take it out of the pending index and counts.
    fn close_proposal(&mut self, p: &Proposal) -> Result<(), StoreError> {
        self.put_proposal(p)?;
        if self.t.pending.remove(p.id)?.is_some() {
            for s in &p.scopes {
                let r = self.scope_mut(s)?;
                r.pending = r.pending.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Keep at most [`safety::MAX_DECIDED_PROPOSALS`] decided proposals (oldest go first; pending stay).
    fn evict_decided(&mut self) -> Result<(), StoreError> {
        let total = self.t.proposals.len()?;
        let pending = self.t.pending.len()?;
        let mut excess = (total - pending.min(total)).saturating_sub(safety::MAX_DECIDED_PROPOSALS);
        // Bounded: each proposal adds one row, so this removes at most one or two per call.
        let mut victims = Vec::new();
        if excess > 0 {
            for row in self.t.proposals.iter()? {
                let (k, _) = row?;
                let id = k.value();
                if self.t.pending.get(id)?.is_none() {
                    victims.push(id);
                    excess -= 1;
                    if excess == 0 {
                        break;
                    }
                }
            }
        }
        for id in victims {
            self.t.proposals.remove(id)?;
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
            return Ok(CmdResult { error: Some((proto::error::Code::InvalidArgument, e)), ..self.result() });
        }
        let now = self.now;
        let r = self.scope_mut(scope)?;
        let before = (r.level, r.latched);
        r.level = level;
        r.latched = false;
        r.reason = safety_text(reason);
        r.set_by = safety_text(by);
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
            return Ok(CmdResult { error: Some((proto::error::Code::InvalidArgument, e)), ..self.result() });
        }
        self.flush()?;
        self.t.settings.insert(SETTING_SAFETY, store::encode(&config).as_slice())?;
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
            return Ok(CmdResult { error: Some((proto::error::Code::InvalidArgument, e)), ..self.result() });
        }
        let before = self.min_version;
        self.min_version = u64::from(version);
        self.t.meta.insert(META_MIN_COMMAND_VERSION, self.min_version)?;
        let message = format!("min_command_version {before} -> {version} by {by}: {reason}");
        self.audit_row("audit", safety::CLUSTER, "", by, &message)?;
        self.global_event("config", message);
        Ok(CmdResult { applied: 1, revision: self.revision, ..self.result() })
    }

    /// Recount populations and agents per scope from scratch (after the scope keys may have changed).
    /// Levels, windows, proposals and blocked reasons stay. O(objects + agents), once per config change.
    fn rebuild_counts(&mut self) -> Result<(), StoreError> {
        let mut names = Vec::new();
        for row in self.t.scopes.iter()? {
            names.push(row?.0.value().to_string());
        }
        for n in &names {
            let r = self.scope_mut(n)?;
            for k in r.kinds.values_mut() {
                k.population = 0;
                k.removed = 0;
            }
            r.agents = 0;
            r.agents_alive = 0;
        }
        let mut objects = Vec::new();
        for row in self.t.objects.iter()? {
            let (_, v) = row?;
            objects.push(store::decode::<ObjectRecord>("fsm_objects", v.value())?);
        }
        for rec in &objects {
            self.account(None, Some(rec))?;
        }
        let mut agents = Vec::new();
        for row in self.t.agents.iter()? {
            let (k, v) = row?;
            agents.push((k.value().to_string(), store::decode::<AgentRecord>("fsm_agents", v.value())?));
        }
        for (id, mut a) in agents {
            a.scopes.clear();
            let counted = AgentRecord { alive: false, ..a.clone() };
            // Count as new (no previous scopes) without treating it as going silent.
            self.put_agent(&id, Some(&counted), a, false)?;
        }
        Ok(())
    }

    pub(super) fn decide(
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
            let mut pending = Vec::new();
            for row in self.t.pending.iter()? {
                pending.push(row?.0.value());
            }
            for id in pending {
                if let Some(p) = self.proposal(id)?
                    && filter.matches(&p)
                {
                    out.push(id);
                    if out.len() >= safety::MAX_DECIDE {
                        break;
                    }
                }
            }
            out
        } else {
            ids.into_iter().take(safety::MAX_DECIDE).collect()
        };
        for id in targets {
            match self.decide_one(id, approve, by, reason)? {
                Ok(()) => res.decided.push(id),
                Err(e) => res.failed.push((id, e)),
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
    ) -> Result<Result<(), String>, StoreError> {
        let Some(mut p) = self.proposal(id)? else { return Ok(Err(format!("no proposal #{id}"))) };
        if p.status != ProposalStatus::Pending {
            return Ok(Err(format!("proposal #{id} is {}", p.status.as_str())));
        }
        let oid = p.object.to_string();
        let Some(mut rec) = self.load(&oid)? else {
            return Ok(Err(format!("proposal #{id}: object {oid} no longer exists")));
        };
        p.decided_by = safety_text(by);
        p.decided_reason = safety_text(reason);
        p.decided_ms = self.now;
        if !approve {
            p.status = ProposalStatus::Rejected;
            self.close_proposal(&p)?;
            let detail =
                format!("proposal #{id} ({} -> {}) rejected by {by}: {reason}", p.from_state, p.to_state);
            let rev = self.change(&mut rec, "proposal", "", detail.clone());
            self.push_history(
                &mut rec,
                history("proposal", rev, self.now, format!("operator {by}"), detail),
            )?;
            self.save(&rec)?;
            return Ok(Ok(()));
        }
        // Re-apply the held input; if the object moved on since, an operator's approval still means "make
        // that transition", taken as a force along a legal edge.
        let mut attempt = machine::step(&rec.sm, &p.input, self.now, self.policy)
            .ok()
            .filter(|o| o.transition.as_ref().is_some_and(|t| t.to == p.to_state));
        let mut input = p.input.clone();
        if attempt.is_none() {
            input = Input::Operator {
                operator: safety_text(by),
                command: state_machines::OperatorCommand::Force {
                    to: p.to_state,
                    reason: safety_text(&format!("approved proposal #{id}: {reason}")),
                },
            };
            attempt =
                machine::step(&rec.sm, &input, self.now, self.policy).ok().filter(|o| o.transition.is_some());
        }
        let Some(out) = attempt else {
            p.status = ProposalStatus::Stale;
            self.close_proposal(&p)?;
            return Ok(Err(format!(
                "proposal #{id}: {oid} is {} now; {} -> {} no longer applies (marked stale)",
                rec.sm.state, p.from_state, p.to_state
            )));
        };
        self.held = None;
        let detail = format!("approved proposal #{id} by {by}: {reason}");
        self.store_outcome(&mut rec, out, &input, "approve", detail, true, Mode::Approved(id))?;
        if let Some((_, why)) = self.held.take() {
            self.save(&rec)?;
            return Ok(Err(format!("proposal #{id}: {why}")));
        }
        self.save(&rec)?;
        p.status = ProposalStatus::Approved;
        self.close_proposal(&p)?;
        Ok(Ok(()))
    }

    /// An alert about one object from the leader's integrations (tickets): history + alert log.
    pub(super) fn alert_object(&mut self, object: &ObjectId, message: &str) -> Result<CmdResult, StoreError> {
        let id = object.to_string();
        let Some(mut rec) = self.load(&id)? else {
            return Ok(CmdResult {
                error: Some((proto::error::Code::NotFound, format!("no object {id}"))),
                ..self.result()
            });
        };
        let message = safety_text(message);
        let rev = self.change(&mut rec, "alert", "", message.clone());
        self.push_history(&mut rec, history("alert", rev, self.now, "alert".into(), message.clone()))?;
        self.save(&rec)?;
        self.audit_row("alert", "", &id, "master", &message)?;
        Ok(CmdResult { applied: 1, ..self.result() })
    }

    // ---- agents ---------------------------------------------------------------------------------------

    /// The scopes of the agent on `host`: those of its machine object.
    fn agent_scopes(&mut self, host: &str) -> Result<Vec<String>, StoreError> {
        let labels = match ObjectId::machine(host) {
            Ok(id) => self.load(&id.to_string())?.map(|r| r.labels).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(self.cfg.scopes_of(&labels))
    }

    /// Write an agent record, keeping per-scope agent counts exact; an agent going silent counts toward
    /// the scope's liveness rule and may latch it (when `liveness` is set).
    pub(super) fn put_agent(
        &mut self,
        id: &str,
        prev: Option<&AgentRecord>,
        mut next: AgentRecord,
        liveness: bool,
    ) -> Result<(), StoreError> {
        next.scopes = self.agent_scopes(&next.host)?;
        let (old_scopes, old_alive) = prev.map_or((Vec::new(), false), |p| (p.scopes.clone(), p.alive));
        if old_scopes != next.scopes || old_alive != next.alive {
            for s in &old_scopes {
                let r = self.scope_mut(s)?;
                r.agents = r.agents.saturating_sub(1);
                if old_alive {
                    r.agents_alive = r.agents_alive.saturating_sub(1);
                }
            }
            for s in &next.scopes {
                let r = self.scope_mut(s)?;
                r.agents += 1;
                if next.alive {
                    r.agents_alive += 1;
                }
            }
        }
        if liveness && old_alive && !next.alive {
            let rule = self.cfg.liveness.clone();
            let now = self.now;
            for s in next.scopes.clone() {
                let r = self.scope_mut(&s)?;
                r.silent.push(now);
                safety::prune(&mut r.silent, now, rule.window_ms);
                let silent = r.silent.len() as u64;
                let threshold = rule.min_silent.max(rule.silent_share.of(r.agents));
                let agents = r.agents;
                if silent >= threshold {
                    let reason = format!(
                        "{silent} of {agents} agents went silent within {} (threshold {threshold})",
                        safety::human_ms(rule.window_ms)
                    );
                    self.latch(&s, &reason, "")?;
                }
            }
        }
        self.t.agents.insert(id, store::encode(&next).as_slice())?;
        Ok(())
    }

    // ---- log ------------------------------------------------------------------------------------------

    pub(super) fn audit_row(
        &mut self,
        kind: &str,
        scope: &str,
        object: &str,
        by: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let id = self.t.meta.get(META_AUDIT_NEXT)?.map(|g| g.value()).unwrap_or(0) + 1;
        self.t.meta.insert(META_AUDIT_NEXT, id)?;
        let row = AuditEntry {
            id,
            time_ms: self.now,
            kind: kind.into(),
            scope: scope.into(),
            object: object.into(),
            by: safety_text(by),
            message: safety_text(message),
        };
        self.t.audit.insert(id, store::encode(&row).as_slice())?;
        if id > safety::MAX_AUDIT_ROWS {
            self.t.audit.remove(id - safety::MAX_AUDIT_ROWS)?;
        }
        if kind == "alert" {
            self.global_event("alert", row.message);
        }
        Ok(())
    }

    /// A change that is about no single object (levels, alerts, config): an event with an empty object.
    fn global_event(&mut self, what: &str, detail: String) {
        let revision = self.next_revision();
        self.events.push(Event {
            revision,
            time_ms: self.now,
            object: String::new(),
            what: what.into(),
            state: String::new(),
            grade: String::new(),
            from_state: String::new(),
            detail,
        });
    }
}

fn history(what: &str, revision: u64, time_ms: u64, cause: String, detail: String) -> HistoryEntry {
    HistoryEntry {
        revision,
        time_ms,
        what: what.into(),
        from_state: String::new(),
        to_state: String::new(),
        cause,
        detail,
    }
}

fn be_u64(b: &[u8]) -> Result<u64, StoreError> {
    b.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt { table: "fsm_proposal_obj", message: "bad id".into() })
}

/// Operator- and rule-made text, bounded like other replicated text.
fn safety_text(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn short_list(ids: &[u64]) -> String {
    const SHOWN: usize = 20;
    let mut s: Vec<String> = ids.iter().take(SHOWN).map(|i| format!("#{i}")).collect();
    if ids.len() > SHOWN {
        s.push(format!("and {} more", ids.len() - SHOWN));
    }
    s.join(", ")
}
