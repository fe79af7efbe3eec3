//! Forwards raft-rs's slog records to `tracing` (raft-rs 0.7 takes an `slog::Logger`).

use slog::{Drain, Level, OwnedKVList, Record};

/// An slog drain that re-emits each record as a tracing event (target `raft`).
struct TracingDrain {
    node: u64,
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), slog::Never> {
        let node = self.node;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", node, "{}", record.msg()),
            Level::Warning => tracing::warn!(target: "raft", node, "{}", record.msg()),
            Level::Info => tracing::debug!(target: "raft", node, "{}", record.msg()),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", node, "{}", record.msg()),
        }
        Ok(())
    }
}

/// The logger handed to `RawNode::new`.
pub fn logger(node: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain { node }.fuse(), slog::o!())
}
