//! Idempotent writes ([`Command::Keyed`], command version 3): the replicated state remembers each key's
//! first result for a bounded window ([`MAX_REQUEST_KEYS`] keys, [`REQUEST_KEY_WINDOW_MS`] of entry time), so
//! a client's retry (after a timeout or a leader change) is answered with that result and `duplicate: true`
//! instead of being applied again. Eviction is part of the decision (oldest key sequence first, at most
//! [`MAX_REQUEST_EVICT_PER_COMMAND`] per keyed command), so every member keeps the same keys; the keys travel
//! in snapshots. A retry after its key was evicted is applied again (documented behaviour). A key reused with a
//! different command (another [`command_digest`]) is refused with CONFLICT and changes nothing.

use super::decide::Decider;
use super::view::walk_ids;
use crate::model::*;
use crate::store::{META_REQUEST_COUNT, META_REQUEST_NEXT, StoreError};

impl Decider<'_> {
    pub(super) fn keyed(&mut self, key: String, cmd: Command) -> Result<CmdResult, StoreError> {
        if let Err(e) = validate_request_key(&key) {
            self.tally.rejected += 1;
            return Ok(self.refuse(proto::error::Code::InvalidArgument, e.to_string()));
        }
        if matches!(cmd, Command::Keyed { .. }) {
            self.tally.rejected += 1;
            return Ok(self.refuse(
                proto::error::Code::InvalidArgument,
                "a keyed command inside a keyed command".into(),
            ));
        }
        let digest = command_digest(&cmd);
        let known = self.request(&key)?;
        if let Some(rec) = &known
            && !self.expired(rec)
        {
            if rec.digest.is_some_and(|d| d != digest) {
                // Not a retry: the client reused the key for another request. Applying it would lose it
                // silently (answered as the first one); refusing changes nothing and says why.
                self.tally.rejected += 1;
                return Ok(self.refuse(
                    proto::error::Code::Conflict,
                    format!(
                        "idempotency key {key:?} was already used for a different request (applied at \
                         revision {}): use a fresh key for each write",
                        rec.result.revision
                    ),
                ));
            }
            self.tally.duplicates += 1;
            return Ok(CmdResult { duplicate: true, ..rec.result.clone() });
        }
        let result = self.command(cmd)?;
        let mut count = self.meta(META_REQUEST_COUNT)?;
        if let Some(old) = known {
            // An expired key used again: its old place in the eviction order goes.
            self.w.request_order.insert(old.seq, None);
            count = count.saturating_sub(1);
        }
        let seq = self.meta(META_REQUEST_NEXT)?;
        self.w.meta.insert(META_REQUEST_NEXT, seq + 1);
        self.w.meta.insert(META_REQUEST_COUNT, count + 1);
        self.w.request_order.insert(seq, Some(key.clone()));
        self.w.requests.insert(
            key,
            Some(RequestRecord { seq, at_ms: self.now, result: result.clone(), digest: Some(digest) }),
        );
        self.evict_requests()?;
        Ok(result)
    }

    fn expired(&self, rec: &RequestRecord) -> bool {
        rec.at_ms.saturating_add(REQUEST_KEY_WINDOW_MS) <= self.now
    }

    /// The key as this entry sees it.
    fn request(&self, key: &str) -> Result<Option<RequestRecord>, StoreError> {
        match self.w.requests.get(key) {
            Some(r) => Ok(r.clone()),
            None => self.view.request(key),
        }
    }

    /// The oldest key sequence still remembered, as this entry sees it.
    fn oldest_request(&self) -> Result<Option<u64>, StoreError> {
        let view = self.view;
        let list = |from: u64, limit: usize| view.request_seqs(from, limit);
        let mut first = None;
        walk_ids(&list, &self.w.request_order, &mut |seq| {
            first = Some(seq);
            Ok(false)
        })?;
        Ok(first)
    }

    /// Drop the oldest keys while there are more than [`MAX_REQUEST_KEYS`] or the oldest has expired.
    fn evict_requests(&mut self) -> Result<(), StoreError> {
        for _ in 0..MAX_REQUEST_EVICT_PER_COMMAND {
            let Some(seq) = self.oldest_request()? else { return Ok(()) };
            let key = match self.w.request_order.get(&seq) {
                Some(k) => k.clone(),
                None => self.view.request_at(seq)?,
            };
            let rec = match &key {
                Some(k) => self.request(k)?,
                None => None,
            };
            let count = self.meta(META_REQUEST_COUNT)?;
            let expired = rec.as_ref().is_none_or(|r| self.expired(r));
            if count <= self.request_keys && !expired {
                return Ok(());
            }
            self.w.request_order.insert(seq, None);
            if let (Some(k), Some(r)) = (key, rec)
                && r.seq == seq
            {
                self.w.requests.insert(k, None);
            }
            self.w.meta.insert(META_REQUEST_COUNT, count.saturating_sub(1));
        }
        Ok(())
    }
}
