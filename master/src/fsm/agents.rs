//! Decisions about agents: batches of findings (deduplicated by the agent's batch sequence, which must move
//! forward by a bounded step), liveness as the leader sees heartbeats, and the per-scope agent counts (an
//! avalanche of agents going silent latches their scope into manual drive).

use std::collections::BTreeMap;

use state_machines::{Finding, ObjectId};

use super::decide::Decider;
use crate::model::*;
use crate::safety;
use crate::store::StoreError;

impl Decider<'_> {
    pub(super) fn ingest(
        &mut self,
        agent: &str,
        seq: u64,
        epoch: u64,
        findings: Vec<Finding>,
    ) -> Result<CmdResult, StoreError> {
        if !agent.is_empty() {
            let prev = self.agent(agent)?;
            let mut last = prev.as_ref().map_or(0, |p| p.last_seq);
            let mut current = prev.as_ref().map_or(0, |p| p.epoch);
            let mut retired = prev.as_ref().map(|p| p.retired_epochs.clone()).unwrap_or_default();
            if epoch != 0 && epoch != current {
                if retired.contains(&epoch) {
                    self.tally.rejected += 1;
                    let e = format!(
                        "agent {agent}: batch {seq} of epoch {epoch:#x}, which the newer epoch {current:#x} \
                         replaced; refused (two agents under one id, or a data dir restored from a backup?)"
                    );
                    return Ok(self.refuse(proto::error::Code::Conflict, e));
                }
                if current != 0 {
                    // A new epoch: the agent's outbox was created again (a wiped or new data dir), so its
                    // sequences start over; without this every batch below the old sequence would be
                    // answered `duplicate` and lost.
                    retired.insert(0, current);
                    retired.truncate(MAX_RETIRED_EPOCHS);
                    last = 0;
                }
                // From no epoch (an agent upgraded in place, same outbox): adopt it, keep the sequence.
                current = epoch;
            }
            if prev.is_some() && seq <= last {
                self.tally.duplicates += 1;
                return Ok(CmdResult { duplicate: true, ..self.result() });
            }
            if seq - last > MAX_SEQ_STEP {
                self.tally.rejected += 1;
                let e = format!(
                    "agent {agent}: batch sequence {seq} jumps more than {MAX_SEQ_STEP} past the last applied \
                     {last}; refused (sequences move forward by a bounded step)"
                );
                return Ok(self.refuse(proto::error::Code::InvalidArgument, e));
            }
            let host = findings.first().map(|f| f.object.host().to_string()).unwrap_or_default();
            let rec = match &prev {
                Some(p) => {
                    AgentRecord { last_seq: seq, epoch: current, retired_epochs: retired, ..p.clone() }
                }
                None => AgentRecord {
                    host,
                    last_seq: seq,
                    alive: false,
                    since_ms: self.now,
                    scopes: Vec::new(),
                    epoch: current,
                    retired_epochs: retired,
                },
            };
            self.put_agent(agent, prev.as_ref(), rec, false)?;
        }
        let mut res = self.result();
        for f in findings {
            match self.finding(f)? {
                Ok(transitioned) => {
                    res.applied += 1;
                    res.transitioned |= transitioned;
                }
                Err(e) => {
                    self.tally.rejected += 1;
                    // Keep the first refusal: the batch's other findings still apply.
                    res.error.get_or_insert(e);
                }
            }
        }
        self.tally.findings += u64::from(res.applied);
        res.revision = self.revision;
        Ok(res)
    }

    pub(super) fn liveness(&mut self, agent: &str, host: &str, alive: bool) -> Result<CmdResult, StoreError> {
        let prev = self.agent(agent)?;
        if prev.as_ref().is_some_and(|p| p.alive == alive && p.host == host) {
            return Ok(self.result());
        }
        let rec = AgentRecord {
            host: host.to_string(),
            last_seq: prev.as_ref().map(|p| p.last_seq).unwrap_or(0),
            alive,
            since_ms: self.now,
            scopes: Vec::new(),
            epoch: prev.as_ref().map_or(0, |p| p.epoch),
            retired_epochs: prev.as_ref().map(|p| p.retired_epochs.clone()).unwrap_or_default(),
        };
        self.put_agent(agent, prev.as_ref(), rec, true)?;
        let revision = self.next_revision();
        let object = ObjectId::machine(host).map(|m| m.to_string()).unwrap_or_default();
        self.events.push(ChangeEvent {
            revision,
            time_ms: self.now,
            object,
            what: "agent".into(),
            state: String::new(),
            grade: String::new(),
            from_state: String::new(),
            detail: format!("agent {agent} {}", if alive { "alive" } else { "silent" }),
        });
        Ok(CmdResult { applied: 1, ..self.result() })
    }

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
            for s in next.scopes.clone() {
                let silent = self.add_silent(&s, rule.window_ms)?;
                let agents = self.scope_mut(&s)?.agents;
                let threshold = rule.min_silent.max(rule.silent_share.of(agents));
                if silent >= threshold {
                    let reason = format!(
                        "{silent} of {agents} agents went silent within {} (threshold {threshold})",
                        safety::human_ms(rule.window_ms)
                    );
                    self.latch(&s, &reason, "")?;
                }
            }
        }
        self.w.agents.insert(id.to_string(), next);
        Ok(())
    }
}
