//! The proposer: coalesces queued commands into Raft entries. While entries are in flight, new commands pile
//! up in the queue and go out together in the next entry (many commands per entry, many entries per fsync).

use std::sync::{Arc, Weak};

use proto::error::ApiError;
use tokio::sync::{mpsc, oneshot};

use super::{Service, now_ms};
use crate::model::{
    ApplyResult, BINARY_ENTRY_VERSION, CmdResult, DEFAULT_MIN_COMMAND_VERSION, binary_entry_bytes,
    entry_bytes,
};

/// Commands waiting for the proposer; callers beyond it wait (backpressure), bounded.
pub const PROPOSAL_QUEUE: usize = 8192;
/// Most commands coalesced into one Raft entry.
pub const MAX_CMDS_PER_ENTRY: usize = 256;
/// Entries in flight at once from this node; the raft layer batches them into one fsync per turn.
pub const MAX_INFLIGHT_ENTRIES: usize = 64;
/// Bytes the entry envelope (`{"v":..,"now_ms":..,"cmds":[...]}`, or `{"v":..,"pb":"..."}` around the binary
/// entry's time) adds around the commands.
pub const ENVELOPE_OVERHEAD: usize = 64;

/// One command waiting for an entry, and where its result goes.
pub(super) struct Pending {
    /// The command encoded for the entry: JSON, or the binary format when `binary`.
    pub(super) cmd: Vec<u8>,
    /// Encoded with [`crate::model::encode_command_binary`] (the cluster enabled binary entries). An entry
    /// holds commands of one format: the batcher closes an entry at a change of format (only around the
    /// moment the cluster enables the binary format).
    pub(super) binary: bool,
    /// The bytes this command adds to its entry ([`crate::model::entry_cost`]).
    pub(super) cost: usize,
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
        let mut size = first.cost;
        let binary = first.binary;
        let mut batch = vec![first];
        while batch.len() < MAX_CMDS_PER_ENTRY {
            match rx.try_recv() {
                Ok(p) if p.binary == binary && size + p.cost <= limit => {
                    size += p.cost;
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
    let cmds = batch.iter().map(|p| p.cmd.as_slice());
    let entry = if batch.first().is_some_and(|p| p.binary) {
        binary_entry_bytes(now_ms(), v.max(BINARY_ENTRY_VERSION), cmds)
    } else {
        entry_bytes(now_ms(), v, cmds)
    };
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
