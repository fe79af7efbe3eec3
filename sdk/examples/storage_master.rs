//! A toy storage master built on the SDK: it lists the disks that wait for its "data evacuated"
//! acknowledgement, watches for disks entering ERROR, "evacuates" each one (a bounded, simulated copy that
//! prints its progress) and acknowledges it, after which the master moves the disk to REPAIR. Disks already
//! waiting when it starts are handled first; a resync after compaction is handled like a start.
//!
//! ```text
//! cargo run -p huatuo-sdk --example storage_master -- --master 127.0.0.1:7700 --evacuate-ms 500 --once
//! ```
//!
//! Output (stdout, one line each, for people and tests): `ready revision=N`, `evacuating ID P%`,
//! `acked ID state=S revision=N`, `skipped ID: why`. Exits 0 after `--max-acks` acknowledgements (`--once`
//! is `--max-acks 1`; 0 runs forever), 1 on an unrecoverable error.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use huatuo_sdk::{Error, Filter, Object, Subscriber, WatchItem};
use state_machines::{AckKind, Kind, ObjectId, State};

/// Longest simulated evacuation (a real one takes hours; a demo should not).
const MAX_EVACUATE_MS: u64 = 600_000;
/// Progress lines per evacuation.
const PROGRESS_STEPS: u64 = 4;
/// Attempts at one acknowledgement when the master is unavailable (each already retried by the SDK).
const ACK_ATTEMPTS: u32 = 5;
const ACK_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(about = "Simulated storage master: evacuate disks in ERROR and acknowledge them")]
struct Args {
    /// Master gRPC addresses, comma-separated; the leader is found automatically.
    #[arg(long, env = "HUATUO_MASTER", default_value = "127.0.0.1:7700", value_delimiter = ',')]
    master: Vec<String>,
    /// The subscriber role the master's policy names for "data-evacuated" acknowledgements.
    #[arg(long, default_value = "storage")]
    role: String,
    /// How long one simulated evacuation takes.
    #[arg(long, default_value_t = 2000)]
    evacuate_ms: u64,
    /// Exit after this many acknowledgements (0: run until killed).
    #[arg(long, default_value_t = 0)]
    max_acks: u64,
    /// Same as --max-acks 1.
    #[arg(long, conflicts_with = "max_acks")]
    once: bool,
    /// Only disks on this host.
    #[arg(long)]
    host: Option<String>,
    /// Only disks with this label (KEY=VALUE; repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// File holding the bearer token (role `subscriber`) of a secured cluster.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// The cluster CA and this subscriber's client certificate and key (mutual TLS), all three or none.
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<std::path::PathBuf>,
    #[arg(long, requires = "ca")]
    cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "ca")]
    key: Option<std::path::PathBuf>,
}

/// TLS and token from the flags (none: an `--insecure` cluster).
fn security(a: &Args) -> anyhow::Result<huatuo_sdk::Security> {
    let mut s = proto::client::ClientSecurity::default();
    if let (Some(ca), Some(cert), Some(key)) = (&a.ca, &a.cert, &a.key) {
        let files = proto::tls::TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
        s.tls = Some(files.load().context("loading the TLS files")?.client_config());
    }
    if let Some(path) = &a.token_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        s.token = Some(proto::tls::Token::new(text.trim()));
    }
    Ok(huatuo_sdk::Security(s))
}

struct StorageMaster {
    sub: Subscriber,
    evacuate: Duration,
    max_acks: u64,
    acked: u64,
}

impl StorageMaster {
    /// Whether we are done.
    fn done(&self) -> bool {
        self.max_acks > 0 && self.acked >= self.max_acks
    }

    /// Evacuate and acknowledge one disk that waits for us.
    async fn handle(&mut self, disk: &Object) -> anyhow::Result<()> {
        let id = &disk.id;
        for step in 0..=PROGRESS_STEPS {
            if step > 0 {
                tokio::time::sleep(self.evacuate / PROGRESS_STEPS as u32).await;
            }
            println!("evacuating {id} {}%", step * 100 / PROGRESS_STEPS);
        }
        for attempt in 1..=ACK_ATTEMPTS {
            match self.sub.ack(id, AckKind::DataEvacuated).await {
                Ok(a) => {
                    println!("acked {id} state={} revision={}", a.state, a.revision);
                    if let Some(h) = &a.held {
                        println!("held {id}: proposal {} waits for an operator ({})", h.proposal, h.reason);
                    }
                    self.acked += 1;
                    return Ok(());
                }
                Err(Error::Refused { message, current }) => {
                    // Someone (an operator, or our own ack whose answer was lost in a failover) moved it on.
                    let still = current
                        .as_ref()
                        .is_some_and(|o| o.waits_for(self.sub.role(), AckKind::DataEvacuated));
                    if still {
                        bail!("ack of {id} refused although it waits for us: {message}");
                    }
                    println!("skipped {id}: {message}");
                    return Ok(());
                }
                Err(e) if e.is_retryable() && attempt < ACK_ATTEMPTS => {
                    eprintln!("ack of {id} failed (attempt {attempt}/{ACK_ATTEMPTS}): {e}");
                    tokio::time::sleep(ACK_RETRY_DELAY).await;
                }
                Err(e) => return Err(e).with_context(|| format!("acknowledging {id}")),
            }
        }
        Ok(())
    }

    /// Handle every disk of a listing that waits for us (at start and after a resync).
    async fn handle_waiting(&mut self, objects: &[Object]) -> anyhow::Result<()> {
        for o in objects {
            if self.done() {
                return Ok(());
            }
            if o.waits_for(self.sub.role(), AckKind::DataEvacuated) {
                self.handle(o).await?;
            }
        }
        Ok(())
    }

    /// A disk just entered ERROR: read it (the event carries no consent fields) and handle it if it waits.
    async fn on_error(&mut self, id: &ObjectId) -> anyhow::Result<()> {
        match self.sub.get(id).await {
            Ok(d) if d.object.waits_for(self.sub.role(), AckKind::DataEvacuated) => {
                self.handle(&d.object).await
            }
            Ok(d) => {
                let why = match &d.object.waiting {
                    Some(w) => format!("waits for {} from {}", w.ack, w.role),
                    None => format!("is {} and waits for nothing", d.object.state),
                };
                println!("skipped {id}: {why}");
                Ok(())
            }
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("reading {id}")),
        }
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    if a.evacuate_ms > MAX_EVACUATE_MS {
        bail!("--evacuate-ms {} is above the limit {MAX_EVACUATE_MS}", a.evacuate_ms);
    }
    let mut filter = Filter::kind(Kind::Disk).with_selectors(a.labels.iter().map(String::as_str))?;
    filter.host = a.host.clone();
    let mut cfg = huatuo_sdk::Config::new(a.master.clone(), &a.role);
    cfg.security = security(&a)?;
    let sub = Subscriber::connect_with(cfg).await.context("connecting to the master")?;
    let mut sm = StorageMaster {
        sub,
        evacuate: Duration::from_millis(a.evacuate_ms),
        max_acks: if a.once { 1 } else { a.max_acks },
        acked: 0,
    };
    let waiting = filter.clone().with_state(State::Error);
    let listing = sm.sub.list(&waiting).await.context("listing disks in ERROR")?;
    println!("ready revision={} waiting={}", listing.revision, listing.objects.len());
    sm.handle_waiting(&listing.objects).await?;
    // Watch every disk change after the listing (the listing is paged: the watch drops what its later pages
    // already showed); only entries into ERROR matter to us.
    let mut watch = sm.sub.watch_listing(&waiting, &listing)?;
    while !sm.done() {
        let Some(item) = watch.next().await else { bail!("watch ended") };
        match item.context("watching disks")? {
            WatchItem::Events { events, .. } => {
                for e in events {
                    let entered =
                        e.state == Some(State::Error) && e.from_state.is_some_and(|f| f != State::Error);
                    if let (true, Some(id)) = (entered, &e.object)
                        && !sm.done()
                    {
                        sm.on_error(id).await?;
                    }
                }
            }
            WatchItem::Resync { listing } => sm.handle_waiting(&listing.objects).await?,
            WatchItem::Reconnecting { attempt, error, resume_from } => {
                eprintln!("watch reconnecting (attempt {attempt}, from revision {resume_from}): {error}");
            }
            WatchItem::Progress { .. } => {}
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("storage_master: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storage_master: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
