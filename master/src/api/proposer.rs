//! The proposer: coalesces queued commands into Raft entries. While entries are in flight, new commands pile
//! up in the queue and go out together in the next entry (many commands per entry, many entries per fsync).

use std::sync::{Arc, Weak};

use proto::error::ApiError;
use tokio::sync::{mpsc, oneshot};

use super::{Service, now_ms};
use crate::model::{ApplyResult, CmdResult, DEFAULT_MIN_COMMAND_VERSION, entry_bytes};

/// Commands waiting for the proposer; callers beyond it wait (backpressure), bounded.
pub const PROPOSAL_QUEUE: usize = 8192;
/// Most commands coalesced into one Raft entry.
pub const MAX_CMDS_PER_ENTRY: usize = 256;
/// Entries in flight at once from this node; the raft layer batches them into one fsync per turn.
pub const MAX_INFLIGHT_ENTRIES: usize = 64;
/// Bytes the entry envelope (`{"v":..,"now_ms":..,"cmds":[...]}`) adds around the commands.
pub const ENVELOPE_OVERHEAD: usize = 64;

/// One command waiting for an entry, and where its result goes.
pub(super) struct Pending {
    pub(super) cmd: Vec<u8>,
    /// The command version the command needs (the entry is stamped with the highest of its commands).
    pub(super) version: u32,
    pub(super) tx: oneshot::Sender<Result<CmdResult, ApiError>>,
}

/// The proposer loop. Ends when told to stop, when the queue closes, or when the service is gone; the
/// entries it sent run as their own tasks in the same group until their commit answers.
pub(super) async fn run(
    svc: Weak<Service>,
    mut rx: mpsc::Receiver<Pending>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    let inflight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_ENTRIES));
    let limit = crate::raft::MAX_COMMAND_BYTES - ENVELOPE_OVERHEAD;
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                _ = &mut stop => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            },
        };
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = inflight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let mut size = batch[0].cmd.len();
        while batch.len() < MAX_CMDS_PER_ENTRY {
            match rx.try_recv() {
                Ok(p) if size + p.cmd.len() < limit => {
                    size += p.cmd.len() + 1;
                    batch.push(p);
                }
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        let Some(s) = svc.upgrade() else { return };
        let group = &s.duties;
        let s2 = Arc::clone(&s);
        group.spawn(async move {
            let _permit = permit;
            propose_entry(&s2, batch).await;
        });
    }
}

/// Propose one entry made of `batch` and hand each command its result (or the entry's error).
async fn propose_entry(s: &Service, batch: Vec<Pending>) {
    let v = batch.iter().map(|p| p.version).max().unwrap_or(DEFAULT_MIN_COMMAND_VERSION);
    let entry = entry_bytes(now_ms(), v, batch.iter().map(|p| p.cmd.as_slice()));
    let out = match s.raft.propose(entry).await {
        Ok(bytes) => serde_json::from_slice::<ApplyResult>(&bytes)
            .map_err(|e| ApiError::internal(format!("bad apply result: {e}")))
            .and_then(|r| {
                if r.results.len() == batch.len() {
                    Ok(r.results)
                } else {
                    Err(ApiError::internal("apply result does not match the entry"))
                }
            }),
        Err(e) => Err(s.map_propose_error(e)),
    };
    // A caller that gave up (its request was cancelled) no longer needs its answer.
    match out {
        Ok(results) => {
            for (p, r) in batch.into_iter().zip(results) {
                p.tx.send(Ok(r)).ok();
            }
        }
        Err(e) => {
            for p in batch {
                p.tx.send(Err(e.clone())).ok();
            }
        }
    }
}
