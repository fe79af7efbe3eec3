//! Huatuo agent: the per-host daemon. Runs checkers on a schedule, keeps findings in a durable outbox until
//! the master acknowledges them, reports them, and runs the actions the master sends.

pub mod catalog;
pub mod config;
pub mod executor;
pub mod inventory;
pub mod local;
pub mod memtrim;
pub mod netprobe;
pub mod outbox;
#[cfg(feature = "sled")]
pub mod outbox_sled;
pub mod reporter;
pub mod run;
pub mod scheduler;
pub mod screen;
pub mod topology;
pub mod worker;
