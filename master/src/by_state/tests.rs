use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use state_machines::{Input, OperatorCommand, State};

use super::*;
use crate::fsm::MasterFsm;
use crate::model::{Command, Envelope, Registration};

/// A state machine applied entry by entry on a real redb file, and the followed index of the deadlines
/// and states over it.
struct Store {
    _dir: tempfile::TempDir,
    db: Arc<redb::Database>,
    fsm: MasterFsm,
    index: u64,
    ix: DeadlineIndex,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(redb::Database::create(dir.path().join("db.redb")).expect("db"));
        let (fsm, _) = MasterFsm::new(state_machines::Policy::default());
        let ix = crate::deadlines::index(state_machines::Policy::default());
        Store { _dir: dir, db, fsm, index: 0, ix }
    }

    fn apply(&mut self, cmds: Vec<Command>) {
        let txn = self.db.begin_write().expect("txn");
        self.fsm.apply_entry(&txn, self.index + 1, &Envelope::new(1, cmds).encode()).expect("apply");
        txn.commit().expect("commit");
        self.index += 1;
        self.fsm.committed();
    }

    /// `hosts` hosts of `disks` disks and a machine each, racks r0..r2.
    fn register(&mut self, hosts: usize, disks: usize) {
        for h in 0..hosts {
            let host = format!("h{h:02}");
            let labels = BTreeMap::from([("rack".to_string(), format!("r{}", h % 3))]);
            let mut objects = vec![Registration {
                id: format!("machine/{host}").parse().expect("id"),
                attributes: BTreeMap::new(),
                labels: labels.clone(),
            }];
            objects.extend((0..disks).map(|d| Registration {
                id: format!("disk/{host}/d{d:02}").parse().expect("id"),
                attributes: BTreeMap::from([("serial".to_string(), format!("s-{host}-{d}"))]),
                labels: labels.clone(),
            }));
            self.apply(vec![Command::Register { agent: format!("agent-{host}"), host, objects }]);
        }
    }

    fn force(&mut self, object: &str, to: State) {
        self.apply(vec![Command::Object {
            object: object.parse().expect("id"),
            input: Input::Operator {
                operator: "alice".into(),
                command: OperatorCommand::Force { to, reason: "test".into() },
            },
        }]);
    }

    fn reader(&self) -> Reader {
        Reader::new(&self.db).expect("reader")
    }
}

/// Force `n` random objects of `s` into random states (a force the state machine refuses changes nothing).
fn shuffle(s: &mut Store, rng: &mut StdRng, hosts: usize, disks: usize, n: usize) {
    for _ in 0..n {
        let host = format!("h{:02}", rng.random_range(0..hosts));
        let d = rng.random_range(0..=disks);
        let id = if d == disks { format!("machine/{host}") } else { format!("disk/{host}/d{d:02}") };
        let to = State::ALL[rng.random_range(0..State::ALL.len())];
        s.force(&id, to);
    }
}

fn served(s: Result<Served, StoreError>) -> Page {
    match s.expect("list") {
        Served::Page(p) => p,
        other => panic!("not served by the index: {other:?}"),
    }
}

/// Every page of a listing, concatenated, by the index (`Some` pages only) or by a scan.
fn pages(s: &Store, r: &Reader, f: &Filter, limit: usize, by_index: bool) -> Vec<String> {
    let (mut out, mut after): (Vec<String>, Option<String>) = (Vec::new(), None);
    for _ in 0..10_000 {
        let (objs, next) = if by_index {
            served(list_page(&s.ix, r, f, after.as_deref(), limit))
        } else {
            r.list_page(f, after.as_deref(), limit, usize::MAX).expect("scan")
        };
        assert!(objs.len() <= limit.max(1), "a page holds at most its limit");
        out.extend(objs.iter().map(|o| o.id.to_string()));
        match next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
    panic!("listing did not end");
}

fn filters(state: State) -> Vec<Filter> {
    let st = Some(state.as_str().to_string());
    vec![
        Filter { state: st.clone(), ..Filter::default() },
        Filter { state: st.clone(), kind: Some(state_machines::Kind::Disk), ..Filter::default() },
        Filter { state: st.clone(), kind: Some(state_machines::Kind::Machine), ..Filter::default() },
        Filter {
            state: st.clone(),
            kind: Some(state_machines::Kind::Disk),
            host: Some("h03".into()),
            ..Filter::default()
        },
        Filter { state: st, labels: vec![("rack".into(), "r1".into())], ..Filter::default() },
    ]
}

#[test]
fn states_keep_the_objects_out_of_good_in_id_order() {
    let mut s = Store::new();
    s.register(3, 4);
    s.force("disk/h01/d02", State::Error);
    s.force("disk/h00/d03", State::Error);
    s.force("machine/h02", State::Error);
    s.force("disk/h02/d00", State::Warning);
    s.ix.build_now(&s.db).expect("build");
    let got = s.ix.peek(|d, _| {
        let st = d.states();
        (
            st.len(),
            st.ids(State::Error, "", None, 10),
            st.ids(State::Error, "disk/", None, 1),
            st.ids(State::Error, "disk/", Some("disk/h00/d03"), 10),
            st.ids(State::Error, "disk/h01", None, 10),
            st.ids(State::Warning, "", Some("a"), 10),
            st.ids(State::Repair, "", None, 10),
        )
    });
    let (n, all, first, after, host, warn, none) = got.expect("built");
    assert_eq!(n, 4);
    assert_eq!(all, (vec!["disk/h00/d03".into(), "disk/h01/d02".into(), "machine/h02".into()], false));
    assert_eq!(first, (vec!["disk/h00/d03".to_string()], true), "one more follows");
    assert_eq!(after, (vec!["disk/h01/d02".to_string()], false), "strictly after");
    assert_eq!(host, (vec!["disk/h01/d02".to_string()], false));
    assert_eq!(warn, (vec!["disk/h02/d00".to_string()], false));
    assert_eq!(none, (Vec::<String>::new(), false));
    // Back to GOOD leaves the index; a state change moves the object.
    let mut st = States::default();
    let core = |state: State| {
        let mut c: ObjectCore = s.reader().object_core("disk/h01/d02").expect("read").expect("exists");
        c.sm.state = state;
        c
    };
    st.put("disk/h01/d02", Some(&core(State::Error)));
    st.put("disk/h01/d02", Some(&core(State::Repair)));
    assert_eq!(st.ids(State::Error, "", None, 9).0, Vec::<String>::new());
    assert_eq!(st.ids(State::Repair, "", None, 9).0, vec!["disk/h01/d02".to_string()]);
    st.put("disk/h01/d02", Some(&core(State::Good)));
    assert!(st.is_empty());
    st.put("disk/h01/d02", Some(&core(State::Test)));
    st.put("disk/h01/d02", None);
    assert_eq!(st, States::default(), "a removed object leaves nothing behind");
}

#[test]
fn a_listing_by_state_is_the_scan_at_the_readers_state_whatever_the_index_missed() {
    let seed = std::env::var("HUATUO_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_2026_u64);
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (hosts, disks) = (8, 6);
    let mut s = Store::new();
    s.register(hosts, disks);
    shuffle(&mut s, &mut rng, hosts, disks, 60);
    s.ix.build_now(&s.db).expect("build");
    for round in 0..4 {
        // Changes the index has not seen: objects entering and leaving states after its revision.
        shuffle(&mut s, &mut rng, hosts, disks, 25);
        let r = s.reader();
        let behind = r.revision().expect("rev") - s.ix.revision().expect("built");
        let mut matched = 0usize;
        assert!(behind > 0, "round {round}: the index is behind the reader");
        for state in State::ALL.into_iter().filter(|st| *st != State::Good) {
            for f in filters(state) {
                for limit in [1, 2, 5, 1000] {
                    let scan = pages(&s, &r, &f, limit, false);
                    matched += scan.len();
                    let indexed = pages(&s, &r, &f, limit, true);
                    assert_eq!(indexed, scan, "seed {seed} round {round} {f:?} limit {limit}");
                }
            }
        }
        println!("round {round}: index {behind} revisions behind, {matched} objects listed");
        assert!(matched > 100, "round {round}: the states are populated");
        if round % 2 == 1 {
            s.ix.warm(&s.db).expect("warm");
        }
    }
    // GOOD is not indexed, nor is a listing without a state: they scan.
    let r = s.reader();
    let good = Filter { state: Some("GOOD".into()), ..Filter::default() };
    assert!(matches!(list_page(&s.ix, &r, &good, None, 10).expect("list"), Served::No));
    assert!(matches!(list_page(&s.ix, &r, &Filter::default(), None, 10).expect("list"), Served::No));
}

#[test]
fn an_index_it_cannot_trust_leaves_the_listing_to_the_scan() {
    let mut s = Store::new();
    s.register(2, 3);
    let f = Filter { state: Some("ERROR".into()), ..Filter::default() };
    assert!(matches!(list_page(&s.ix, &s.reader(), &f, None, 10).expect("list"), Served::No), "not built");
    s.force("disk/h00/d01", State::Error);
    let old = s.reader();
    s.force("disk/h00/d01", State::Good);
    s.ix.build_now(&s.db).expect("build");
    // The index is past this reader: it no longer knows what left the state in between.
    assert!(
        matches!(list_page(&s.ix, &old, &f, None, 10).expect("list"), Served::No),
        "index ahead of the reader"
    );
    let (objs, next) = old.list_page(&f, None, 10, usize::MAX).expect("scan");
    assert_eq!((objs.len(), next), (1, None), "the scan answers the reader's state");
    // Further behind the reader than a listing reads itself: it says how far the index must get.
    s.force("disk/h01/d00", State::Error);
    s.force("disk/h01/d01", State::Error);
    let r = s.reader();
    let rev = r.revision().expect("rev");
    let behind = list_page_within(&s.ix, &r, &f, None, 10, 1).expect("list");
    assert!(matches!(behind, Served::Behind(n) if n == rev), "{behind:?}");
    let (objs, _) = served(list_page_within(&s.ix, &r, &f, None, 10, 2));
    assert_eq!(objs.len(), 2, "within the gap it reads the changes itself");
}

#[test]
fn a_listing_by_state_reads_the_objects_in_that_state_not_every_object() {
    // 121 objects, 3 in ERROR: a scan with a budget of 10 rows stops early with a token; the index serves
    // the whole listing at once.
    let mut s = Store::new();
    s.register(11, 10);
    for id in ["disk/h02/d05", "disk/h07/d01", "machine/h09"] {
        s.force(id, State::Error);
    }
    s.ix.build_now(&s.db).expect("build");
    let r = s.reader();
    let f = Filter { state: Some("ERROR".into()), ..Filter::default() };
    let (scanned, token) = r.list_page(&f, None, 100, 10).expect("scan");
    assert!(scanned.is_empty() && token.is_some(), "the scan's first 10 rows hold none of them");
    let (objs, next) = served(list_page(&s.ix, &r, &f, None, 100));
    let ids: Vec<String> = objs.iter().map(|o| o.id.to_string()).collect();
    assert_eq!(ids, ["disk/h02/d05", "disk/h07/d01", "machine/h09"]);
    assert_eq!(next, None, "complete in one page");
}

#[test]
fn candidates_cut_short_continue_on_the_next_page() {
    // More objects in ERROR than one page takes from the index, most of which left it since the index's
    // revision: pages end where the candidates end and the listing goes on from there.
    let mut s = Store::new();
    s.register(12, 10);
    let ids: Vec<String> =
        (0..12).flat_map(|h| (0..10).map(move |d| format!("disk/h{h:02}/d{d:02}"))).collect();
    for id in &ids[..100] {
        s.force(id, State::Error);
    }
    s.ix.build_now(&s.db).expect("build");
    for id in &ids[..80] {
        s.force(id, State::Good);
    }
    s.force(&ids[110], State::Error);
    let r = s.reader();
    let f = Filter { state: Some("ERROR".into()), ..Filter::default() };
    let (first, next) = served(list_page(&s.ix, &r, &f, None, 5));
    assert!(first.is_empty(), "the first {} candidates all left ERROR", 5 + 1 + CANDIDATE_SLACK);
    assert_eq!(
        next.as_deref(),
        Some(ids[5 + CANDIDATE_SLACK].as_str()),
        "continued after the last candidate"
    );
    let scan = pages(&s, &r, &f, 5, false);
    assert_eq!(scan.len(), 21);
    assert_eq!(pages(&s, &r, &f, 5, true), scan);
}

#[test]
fn a_page_reads_at_most_so_many_changed_objects() {
    // 5,000 disks registered after the index's revision (each a change the index has not seen), two of them
    // forced into ERROR: the first page reads MAX_CANDIDATE_READS of them and continues after the last.
    let mut s = Store::new();
    s.register(1, 1);
    s.ix.build_now(&s.db).expect("build");
    let regs: Vec<Command> = (0..5)
        .map(|c| Command::Register {
            agent: "agent-big".into(),
            host: "big".into(),
            objects: (0..1000)
                .map(|d| Registration {
                    id: format!("disk/big/d{:04}", c * 1000 + d).parse().expect("id"),
                    attributes: BTreeMap::new(),
                    labels: BTreeMap::new(),
                })
                .collect(),
        })
        .collect();
    s.apply(regs);
    s.force("disk/big/d0010", State::Error);
    s.force("disk/big/d4990", State::Error);
    let r = s.reader();
    let f = Filter { state: Some("ERROR".into()), ..Filter::default() };
    let (first, next) = served(list_page(&s.ix, &r, &f, None, 10));
    let ids: Vec<String> = first.iter().map(|o| o.id.to_string()).collect();
    assert_eq!(ids, ["disk/big/d0010"]);
    assert_eq!(next.as_deref(), Some(format!("disk/big/d{:04}", MAX_CANDIDATE_READS - 1).as_str()));
    assert_eq!(pages(&s, &r, &f, 10, true), ["disk/big/d0010", "disk/big/d4990"]);
}
