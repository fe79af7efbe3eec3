//! Huatuo subscriber SDK: what schedulers and storage masters embed to list and watch object states and to
//! acknowledge the transitions that need their consent ("machine drained", "disk data evacuated").
//!
//! ```no_run
//! # async fn demo() -> Result<(), huatuo_sdk::Error> {
//! use huatuo_sdk::{Filter, Subscriber, WatchItem};
//! use state_machines::{AckKind, Kind};
//! let mut sub = Subscriber::connect(["10.0.0.1:7700", "10.0.0.2:7700"], "storage").await?;
//! let disks = Filter::kind(Kind::Disk);
//! // Every disk (read a page at a time), then every change after the listing, each exactly once.
//! let (listing, mut watch) = sub.list_and_watch(&disks).await?;
//! println!("{} disks at revision {}", listing.objects.len(), listing.revision);
//! while let Some(item) = watch.next().await {
//!     if let WatchItem::Events { events, .. } = item? {
//!         for e in events.iter().filter(|e| e.state == Some(state_machines::State::Error)) {
//!             let Some(id) = &e.object else { continue };
//!             // ... move the data off the disk, then:
//!             sub.ack(id, AckKind::DataEvacuated).await?;
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Map: [`subscriber`] (connection, calls, the watch task), [`resume`] (revision bookkeeping and backoff,
//! sans-IO), [`filter`] (filters and the label cache), [`types`] (typed objects and changes), [`error`].

pub mod error;
pub mod filter;
pub mod resume;
pub mod subscriber;
pub mod types;

pub use error::Error;
pub use filter::{Filter, LabelCache};
pub use resume::{Backoff, Cursor, Floors};
pub use subscriber::{Config, Security, Subscriber, Watch, WatchItem};
pub use types::{Acked, Change, Held, Listing, Object, ObjectDetail, WaitingAck, parse_ack};
