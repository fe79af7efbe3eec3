//! Network fault localisation by voting (PRODUCT.md section 8, issue 16). Pure: input + parameters -> value;
//! no IO, no clocks, no tokio. Used by the agent (the local vote rule), the master's leader (per-window
//! aggregation and localisation) and `huatuo bench netvote` (a seeded simulation of a Clos fabric).
//!
//! The contract the other crates build on (types below, functions in the modules):
//! * `local::votes(&[PeerResult], own_host, &LocalRules) -> Vec<String>`: the hosts an agent votes bad in one window
//!   (loss above a threshold, RTT a robust outlier against the agent's own median over its peers by MAD),
//!   plus the agent's own host whenever the list is not empty.
//! * `Topology`: parsed from the master config's `[topology]` (TOML, or a CSV of host,tor,agg,spine rows),
//!   or built from `switch=`/`rack=` labels, or generated (`Topology::clos`) for the bench. Knows each
//!   host's ToR and every equal-cost route between two hosts (`routes(a, b)`).
//! * `Window`: the leader's in-memory aggregate of the `Report`s of one window, bounded, counting each
//!   (reporter, started_ms, window_seq) once (`add` says whether the report was new).
//! * `localise(Option<&Topology>, &Window, &Params) -> Verdict`: ranked suspects with score, evidence and a
//!   decision, plus the rack-to-rack matrix.
//!
//! Modules: [`local`] (the agent's vote rule), [`topology`] (hosts, switches, equal-cost routes), [`window`]
//! (the leader's bounded per-window aggregate) and [`localise`] (the blame algorithm, documented there).

mod fxhash;
mod judged;
pub mod local;
pub mod localise;
pub mod topology;
pub mod window;

pub use judged::fitting;
pub use local::{LocalRules, votes};
pub use localise::{MatrixCell, Nearest, Params, Verdict, localise, localise_windows};
pub use topology::{ClosSpec, Route, Tier, Topology, TopologyError, link_id};
pub use window::{Flow, MAX_PATH_HOPS, UNKNOWN_HOP, Window, WindowError, WindowLimits};

/// One peer's results in one window, as an agent measured them (`PeerResult` on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerResult {
    pub host: String,
    pub sent: u32,
    pub lost: u32,
    pub connect_failures: u32,
    pub rtt_p50_us: u32,
    pub rtt_p99_us: u32,
    /// Path evidence: the switches this flow's probes crossed, in order from the reporter's ToR to the
    /// peer's (empty: not traced, every equal-cost route is possible). The agent traces a lossy flow's
    /// 5-tuple and fills the hops' addresses (`*` for a hop that did not answer); the master maps them to
    /// switch names with the topology before the window sees them, and a path that is not one of the
    /// topology's routes between the two hosts is ignored (the flow counts as not traced).
    pub path: Vec<String>,
}

/// One agent's report for one closed window (`NetReport` on the wire, with the reporter's identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub reporter: String,
    /// The agent process's start time: with `window_seq`, a report's identity across agent restarts.
    pub started_ms: u64,
    pub window_seq: u64,
    pub iface: String,
    pub peers: Vec<PeerResult>,
    pub votes: Vec<String>,
    pub tcp_retrans_segs: u64,
    pub tcp_out_segs: u64,
}

/// What a suspect is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// The host's own NIC or its link to the ToR (object `nic/HOST/IFACE`, machine `machine/HOST`).
    Host { host: String, iface: String },
    /// A link between two network devices, or a host and its ToR (object `link/A--B`, A < B).
    Link { a: String, b: String },
    /// A whole switch (object `switch/NAME`).
    Switch(String),
}

impl Target {
    /// The object id the master files findings against: `switch/NAME`, `link/A--B` (A < B) or
    /// `nic/HOST/IFACE`.
    pub fn object_id(&self) -> String {
        match self {
            Target::Host { host, iface } => format!("nic/{host}/{iface}"),
            Target::Link { a, b } => format!("link/{}", link_id(a, b)),
            Target::Switch(name) => format!("switch/{name}"),
        }
    }

    /// A link target with its ends ordered (a < b), so the same link always compares equal.
    pub fn link(x: &str, y: &str) -> Target {
        if x <= y {
            Target::Link { a: x.to_string(), b: y.to_string() }
        } else {
            Target::Link { a: y.to_string(), b: x.to_string() }
        }
    }
}

/// What the leader does about a suspect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Ranked and shown, nothing proposed.
    #[default]
    Rank,
    /// A WARNING finding is proposed for the target.
    Warning,
    /// An ERROR finding is proposed for the target (for a host: only when the host itself is the common
    /// factor; a switch-wide or link problem never moves its hosts to ERROR).
    Error,
}

/// One ranked suspect.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    pub target: Target,
    /// Blame in [0, 1].
    pub score: f64,
    pub voters: u32,
    pub bad_flows: u32,
    pub flows: u32,
    /// lost / sent over the flows through it.
    pub loss: f64,
    /// One line an operator reads.
    pub why: String,
    /// A few example flows, at most 10.
    pub evidence: Vec<String>,
    pub decision: Decision,
}
