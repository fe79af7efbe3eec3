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
/// Entries in flight beyond which a small entry waits to fill (see [`FULL_ENTRY_BYTES`]).
pub const SMALL_INFLIGHT_ENTRIES: usize = 4;
/// An entry of at least these many bytes of commands goes out as soon as a permit allows (up to
/// [`MAX_INFLIGHT_ENTRIES`]); a smaller one goes out only while at most [`SMALL_INFLIGHT_ENTRIES`] entries
/// are in flight, and otherwise takes in the commands that arrive meanwhile until it is full or an entry
/// in flight commits. Every member pays for every entry (its decode, apply, change-log row and archive
/// row), so many clients with one small command each are better served by fewer, fuller entries; big
/// commands (agent batches) are pipelined as before.
pub const FULL_ENTRY_BYTES: usize = 64 << 10;
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
    // Signalled when an entry in flight ends (its permit is given back).
    let ended = Arc::new(tokio::sync::Notify::new());
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
        let in_flight = || MAX_INFLIGHT_ENTRIES - inflight.available_permits();
        let batch = tokio::select! {
            _ = &mut stop => return,
            b = gather(first, &mut rx, &mut carry, in_flight, &ended) => b,
        };
        let Some(s) = svc.upgrade() else { return };
        let group = &s.duties;
        let s2 = Arc::clone(&s);
        let ended = Arc::clone(&ended);
        group.spawn(async move {
            propose_entry(&s2, batch).await;
            drop(permit);
            ended.notify_one();
        });
    }
}

/// The commands of one entry, `first` and those queued after it (at most [`MAX_CMDS_PER_ENTRY`] and the
/// raft layer's command size). While more than [`SMALL_INFLIGHT_ENTRIES`] entries are in flight
/// (`in_flight`, this entry's counted), an entry smaller than [`FULL_ENTRY_BYTES`] waits for commands to
/// arrive or for an entry in flight to end (`ended`), whichever comes first, so the wait is bounded by one
/// commit. A command that cannot join (another format, or too big for what is left) is left in `carry` for
/// the next entry and closes this one.
async fn gather(
    first: Pending,
    rx: &mut mpsc::Receiver<Pending>,
    carry: &mut Option<Pending>,
    in_flight: impl Fn() -> usize,
    ended: &tokio::sync::Notify,
) -> Vec<Pending> {
    let limit = crate::raft::MAX_COMMAND_BYTES - ENVELOPE_OVERHEAD;
    let (binary, mut size) = (first.binary, first.cost);
    let mut batch = vec![first];
    // Takes `p` in, or leaves it for the next entry (false: this entry is closed).
    let take = |p: Pending, batch: &mut Vec<Pending>, size: &mut usize, carry: &mut Option<Pending>| {
        if p.binary == binary && *size + p.cost <= limit {
            *size += p.cost;
            batch.push(p);
            true
        } else {
            *carry = Some(p);
            false
        }
    };
    loop {
        while batch.len() < MAX_CMDS_PER_ENTRY {
            match rx.try_recv() {
                Ok(p) => {
                    if !take(p, &mut batch, &mut size, carry) {
                        return batch;
                    }
                }
                Err(_) => break,
            }
        }
        if batch.len() >= MAX_CMDS_PER_ENTRY
            || size >= FULL_ENTRY_BYTES
            || in_flight() <= SMALL_INFLIGHT_ENTRIES
        {
            return batch;
        }
        // Registered before the queue is looked at again: an entry ending meanwhile is not missed.
        let ended = ended.notified();
        tokio::select! {
            _ = ended => return batch,
            p = rx.recv() => match p {
                Some(p) => {
                    if !take(p, &mut batch, &mut size, carry) {
                        // A command for the next entry: this one goes as it is.
                        return batch;
                    }
                }
                // Closed (the service stops): this one goes as it is.
                None => return batch,
            },
        }
    }
}

/// Propose one entry made of `batch` and hand each command its result (or the entry's error).
async fn propose_entry(s: &Service, batch: Vec<Pending>) {
    // Stamped with at least the cluster's min_command_version: some versions change only how existing
    // commands are decided (10: network incidents), so a member too old for the version in force (one
    // downgraded after the raise) stops at the entry instead of deciding it under older rules.
    let v = batch.iter().map(|p| p.version).max().unwrap_or(DEFAULT_MIN_COMMAND_VERSION);
    let v = v.max(s.stats.min_command_version());
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use tokio::sync::Notify;

    use super::*;

    fn cmd(cost: usize, binary: bool) -> Pending {
        let (tx, _) = oneshot::channel();
        Pending { cmd: vec![b'x'; cost], binary, cost, version: 1, tx }
    }

    /// Poll `f` once: `Some` with its output when it is ready.
    async fn poll_once<T>(f: &mut Pin<&mut impl Future<Output = T>>) -> Option<T> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match f.as_mut().poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }

    const MANY: usize = SMALL_INFLIGHT_ENTRIES + 1;

    #[tokio::test]
    async fn with_few_entries_in_flight_an_entry_goes_at_once_with_what_is_queued() {
        let (tx, mut rx) = mpsc::channel(16);
        for _ in 0..2 {
            tx.send(cmd(100, true)).await.expect("send");
        }
        let (mut carry, ended) = (None, Notify::new());
        let b = gather(cmd(100, true), &mut rx, &mut carry, || SMALL_INFLIGHT_ENTRIES, &ended).await;
        assert_eq!(b.len(), 3);
        assert!(carry.is_none());
    }

    #[tokio::test]
    async fn with_many_in_flight_a_small_entry_takes_in_commands_until_an_entry_ends() {
        let (tx, mut rx) = mpsc::channel(16);
        let (mut carry, ended) = (None, Notify::new());
        {
            let f = gather(cmd(100, true), &mut rx, &mut carry, || MANY, &ended);
            tokio::pin!(f);
            assert!(poll_once(&mut f).await.is_none(), "waits");
            tx.send(cmd(100, true)).await.expect("send");
            assert!(poll_once(&mut f).await.is_none(), "took the command in, still waits");
            ended.notify_one();
            let b = poll_once(&mut f).await.expect("an entry ended: it goes");
            assert_eq!(b.len(), 2);
        }
        // An entry that ended before the wait began is not missed (the notification is kept).
        let (mut carry, ended) = (None, Notify::new());
        ended.notify_one();
        let b = gather(cmd(100, true), &mut rx, &mut carry, || MANY, &ended).await;
        assert_eq!(b.len(), 1);
    }

    #[tokio::test]
    async fn with_many_in_flight_a_full_entry_goes_at_once() {
        let ended = Notify::new();
        // Enough bytes.
        let (tx, mut rx) = mpsc::channel(MAX_CMDS_PER_ENTRY + 8);
        let mut carry = None;
        let b = gather(cmd(FULL_ENTRY_BYTES, true), &mut rx, &mut carry, || MANY, &ended).await;
        assert_eq!(b.len(), 1);
        // Enough commands: the entry takes MAX_CMDS_PER_ENTRY, the rest stays queued.
        for _ in 0..MAX_CMDS_PER_ENTRY + 4 {
            tx.send(cmd(10, true)).await.expect("send");
        }
        let b = gather(cmd(10, true), &mut rx, &mut carry, || MANY, &ended).await;
        assert_eq!(b.len(), MAX_CMDS_PER_ENTRY);
        assert_eq!(rx.len(), 5);
        // Bytes up to the raft layer's command size: the command that does not fit waits for the next.
        let big = crate::raft::MAX_COMMAND_BYTES / 2;
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(cmd(big, true)).await.expect("send");
        let b = gather(cmd(big, true), &mut rx, &mut carry, || MANY, &ended).await;
        assert_eq!(b.len(), 1);
        assert_eq!(carry.take().map(|p| p.cost), Some(big));
    }

    #[tokio::test]
    async fn a_command_of_the_other_format_or_a_closed_queue_sends_the_entry_as_it_is() {
        let ended = Notify::new();
        let (tx, mut rx) = mpsc::channel(4);
        let mut carry = None;
        tx.send(cmd(10, false)).await.expect("send");
        let b = gather(cmd(10, true), &mut rx, &mut carry, || MANY, &ended).await;
        assert_eq!(b.len(), 1);
        assert!(carry.take().is_some_and(|p| !p.binary), "left for the next entry");
        // The same while waiting.
        {
            let f = gather(cmd(10, true), &mut rx, &mut carry, || MANY, &ended);
            tokio::pin!(f);
            assert!(poll_once(&mut f).await.is_none());
            tx.send(cmd(10, false)).await.expect("send");
            assert_eq!(poll_once(&mut f).await.map(|b| b.len()), Some(1));
        }
        assert!(carry.take().is_some());
        // The queue closes (the service stops) while an entry waits: it goes.
        let f = gather(cmd(10, true), &mut rx, &mut carry, || MANY, &ended);
        tokio::pin!(f);
        assert!(poll_once(&mut f).await.is_none());
        drop(tx);
        assert_eq!(poll_once(&mut f).await.map(|b| b.len()), Some(1));
    }
}
