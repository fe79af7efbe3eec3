//! Huatuo agent: the per-host daemon. Runs checkers on a schedule, keeps findings in a durable outbox until
//! the master acknowledges them, reports them, and runs the actions the master sends.

pub mod outbox;
pub mod config;
pub mod inventory;
pub mod local;
pub mod reporter;
pub mod run;
pub mod scheduler;
#[cfg(feature = "sled")]
pub mod outbox_sled;
