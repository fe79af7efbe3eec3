//! Runs the master's action orders on this host through the [`Worker`] and queues their results for the
//! reporter to send back (Command kind "result"). Orders come with every heartbeat while pending, so the
//! executor remembers which (object, requested_ms) it started or finished and runs each once; a restart of
//! the agent forgets, gets the order again and re-runs it, which is safe because every action is
//! idempotent. Results wait in a bounded queue until the master acknowledges them. Every running action is
//! a task the executor owns (a `JoinSet`): the daemon awaits them on shutdown until its deadline and aborts
//! the rest, so no action task outlives the agent unobserved.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use proto::api;
use state_machines::{Action, ObjectId};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::worker::{ActionReport, ActionRequest, Worker};

/// Orders remembered as started/finished (a host has a few dozen objects; this covers days of actions).
pub const MAX_REMEMBERED: usize = 1024;
/// Results waiting for delivery; beyond it the oldest is dropped (the master re-orders it after its
/// deadline alert, and the action is idempotent).
pub const MAX_RESULTS: usize = 256;
/// Orders started per heartbeat (one heartbeat carries at most the master's `MAX_ORDERS`).
pub const MAX_START_PER_BEAT: usize = 64;
/// Actions running at once; orders beyond it wait for the next heartbeat (they are re-sent while pending).
/// A host has a few dozen objects, and each action holds a blocking thread of the agent's small pool.
pub const MAX_RUNNING: usize = 16;

/// Why an order cannot run.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("order for {object:?}: {err}")]
    Object { object: String, err: state_machines::IdError },
    #[error("order for {object:?}: {err}")]
    Action { object: String, err: state_machines::model::UnknownAction },
}

/// A finished action waiting for the master's acknowledgement.
#[derive(Debug, Clone)]
pub struct Finished {
    pub key: (String, u64),
    pub report: ActionReport,
}

#[derive(Default)]
struct State {
    /// Orders started or finished, oldest first (bounded).
    seen: VecDeque<(String, u64)>,
    seen_set: BTreeSet<(String, u64)>,
    results: VecDeque<Finished>,
    rejected: u64,
}

pub struct Executor {
    worker: Worker,
    state: Mutex<State>,
    /// The running actions (finished ones are reaped on every `accept`).
    running: Mutex<JoinSet<()>>,
    /// At most this many running at once ([`MAX_RUNNING`] unless a test says otherwise).
    max_running: usize,
    /// Notified when a result is ready, so the reporter sends it without waiting for the next beat.
    pub ready: Arc<Notify>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turn a wire order into a worker request; a malformed order is a clear error (and runs nothing).
pub fn request_of(o: &api::ActionOrder, now_ms: u64) -> Result<ActionRequest, OrderError> {
    let object: ObjectId =
        o.object.parse().map_err(|err| OrderError::Object { object: o.object.clone(), err })?;
    // `Action`'s parser (state-machines) names what it refused; it is wrapped here with the order.
    let action: Action =
        o.action.parse().map_err(|err| OrderError::Action { object: o.object.clone(), err })?;
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(ActionRequest {
        object,
        action,
        old_serial: opt(&o.old_serial),
        new_serial: opt(&o.new_serial),
        params: o.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>(),
        dry_run: false,
        now_ms,
    })
}

impl Executor {
    pub fn new(worker: Worker) -> Arc<Executor> {
        Executor::with_limit(worker, MAX_RUNNING)
    }

    /// An executor running at most `max_running` actions at once.
    pub fn with_limit(worker: Worker, max_running: usize) -> Arc<Executor> {
        Arc::new(Executor {
            worker,
            state: Mutex::new(State::default()),
            running: Mutex::new(JoinSet::new()),
            max_running: max_running.max(1),
            ready: Arc::new(Notify::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Actions still running.
    pub fn running_count(&self) -> usize {
        let mut set = self.running();
        while set.try_join_next().is_some() {}
        set.len()
    }

    /// Wait for the running actions until `deadline`, then abort the rest. Returns how many ended in time.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) -> usize {
        let mut set = std::mem::take(&mut *self.running());
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, set.join_next()).await {
            n += 1;
        }
        if !set.is_empty() {
            tracing::warn!(actions = set.len(), "actions still running at shutdown; aborting them");
        }
        set.abort_all();
        while set.join_next().await.is_some() {}
        n
    }

    /// Start the orders not seen before. Returns how many were started.
    pub fn accept(self: &Arc<Self>, orders: &[api::ActionOrder], now_ms: u64) -> usize {
        let mut started = 0;
        for o in orders.iter().take(MAX_START_PER_BEAT) {
            if self.running_count() >= self.max_running {
                tracing::warn!(
                    running = self.max_running,
                    "action limit reached; the rest waits for the next beat"
                );
                break;
            }
            let key = (o.object.clone(), o.requested_ms);
            {
                let mut st = lock(&self.state);
                if st.seen_set.contains(&key) {
                    continue;
                }
                st.seen_set.insert(key.clone());
                st.seen.push_back(key.clone());
                while st.seen.len() > MAX_REMEMBERED {
                    if let Some(old) = st.seen.pop_front() {
                        st.seen_set.remove(&old);
                    }
                }
            }
            let req = match request_of(o, now_ms) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(order = ?o.object, action = o.action, error = %e, "refusing a malformed order");
                    lock(&self.state).rejected += 1;
                    continue;
                }
            };
            tracing::info!(object = %req.object, action = %req.action, "running action");
            let me = Arc::clone(self);
            started += 1;
            self.running().spawn(async move {
                let report = me.worker.run(req).await;
                tracing::info!(object = %report.object, action = %report.action, success = report.success,
                    outcome = ?report.outcome, detail = report.detail, "action finished");
                let mut st = lock(&me.state);
                st.results.push_back(Finished { key, report });
                while st.results.len() > MAX_RESULTS {
                    st.results.pop_front();
                }
                drop(st);
                me.ready.notify_one();
            });
        }
        started
    }

    /// Results not yet acknowledged by the master (oldest first).
    pub fn pending(&self) -> Vec<Finished> {
        lock(&self.state).results.iter().cloned().collect()
    }

    /// The master took (or finally refused) this result: forget it.
    pub fn delivered(&self, key: &(String, u64)) {
        lock(&self.state).results.retain(|f| &f.key != key);
    }

    /// Malformed orders refused so far.
    pub fn rejected(&self) -> u64 {
        lock(&self.state).rejected
    }
}

/// The Command request that reports a result.
pub fn result_request(f: &Finished) -> api::CommandRequest {
    let mut detail = f.report.detail.clone();
    if !f.report.figures.is_empty() {
        let figs: Vec<String> = f.report.figures.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
        detail = format!("{detail} [{}]", figs.join(" "));
    }
    api::CommandRequest {
        object: f.key.0.clone(),
        kind: "result".into(),
        name: f.report.action.to_string(),
        value: String::new(),
        by: "agent".into(),
        reason: detail,
        success: f.report.success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(object: &str, action: &str, t: u64) -> api::ActionOrder {
        api::ActionOrder {
            object: object.into(),
            action: action.into(),
            requested_ms: t,
            ..Default::default()
        }
    }

    #[test]
    fn malformed_orders_are_refused() {
        assert!(request_of(&order("nonsense", "test", 1), 0).is_err());
        assert!(request_of(&order("disk/h1/sda", "format-everything", 1), 0).is_err());
        let r = request_of(&order("machine/h1", "fix:restart-service", 1), 5).expect("valid");
        assert_eq!(r.action.to_string(), "fix:restart-service");
    }

    /// A worker whose machine provision runs one slow environment check.
    fn slow_worker(secs: u64) -> Worker {
        let mut cfg = crate::worker::WorkerConfig { dry_run: true, ..Default::default() };
        cfg.machine.checks = vec![crate::worker::config::EnvCheck {
            name: "slow".into(),
            command: vec!["sleep".into(), secs.to_string()],
            timeout_s: 120,
            stages: vec!["provision".into()],
        }];
        Worker::new("h1", cfg).expect("worker")
    }

    #[tokio::test]
    async fn at_the_running_limit_new_orders_wait_for_a_later_beat() {
        let ex = Executor::with_limit(slow_worker(3), 1);
        assert_eq!(ex.accept(&[order("machine/h1", "provision", 1)], 0), 1);
        // At the limit: not started, and not remembered, so the next heartbeat's copy starts it.
        assert_eq!(ex.accept(&[order("machine/h1", "provision", 2)], 0), 0);
        assert_eq!(ex.running_count(), 1);
        // Shutdown waits for the running action until the deadline, then aborts it: bounded, nothing left.
        let t = std::time::Instant::now();
        let ended = ex.shutdown(tokio::time::Instant::now() + std::time::Duration::from_millis(200)).await;
        assert_eq!(ended, 0, "the 3 s action did not end within 200 ms");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(ex.running_count(), 0);
    }

    #[tokio::test]
    async fn an_order_runs_once_and_its_result_waits_for_delivery() {
        let cfg = crate::worker::WorkerConfig { dry_run: true, ..Default::default() };
        let worker = Worker::new("h1", cfg).expect("worker");
        let ex = Executor::new(worker);
        let o = order("machine/h1", "fix:reboot", 7);
        assert_eq!(ex.accept(std::slice::from_ref(&o), 0), 1);
        assert_eq!(ex.accept(std::slice::from_ref(&o), 0), 0, "the same order is not run twice");
        assert_eq!(ex.accept(&[order("bad", "x", 1)], 0), 0);
        assert_eq!(ex.rejected(), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while ex.pending().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let p = ex.pending();
        assert_eq!(p.len(), 1);
        let req = result_request(&p[0]);
        assert_eq!(
            (req.kind.as_str(), req.name.as_str(), req.object.as_str()),
            ("result", "fix:reboot", "machine/h1")
        );
        ex.delivered(&p[0].key);
        assert!(ex.pending().is_empty());
    }
}
