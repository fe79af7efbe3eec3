//! Pages of the object and agent tables (`store::Reader::list_page`, `agents_page`, issue 17): id order,
//! strictly after the continuation key, a full last page ends the listing, filters and the scan budget.

use super::*;

/// Objects `disk/h{h}/sd{d}` for h in 0..hosts, d in 0..disks (one finding each creates them).
fn populate(h: &mut Harness, hosts: usize, disks: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for host in 0..hosts {
        let findings: Vec<Finding> = (0..disks)
            .map(|d| {
                let id = format!("disk/h{host:02}/sd{d:02}");
                ids.push(id.clone());
                finding(&id, Severity::Good, 1)
            })
            .collect();
        h.apply(1, vec![ingest("", 0, findings)]);
    }
    ids.sort();
    ids
}

/// Every page of a listing, following the continuation keys: (ids, page sizes).
fn follow(r: &Reader, f: &Filter, limit: usize, scan: usize) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes, mut after) = (Vec::new(), Vec::new(), None::<String>);
    for _ in 0..10_000 {
        let (page, next) = r.list_page(f, after.as_deref(), limit, scan).expect("page");
        assert!(page.len() <= limit, "a page holds at most its limit");
        sizes.push(page.len());
        ids.extend(page.iter().map(|o| o.id.to_string()));
        match next {
            None => return (ids, sizes),
            Some(n) => {
                assert!(after.as_ref().is_none_or(|a| n > *a), "the continuation key moves forward");
                after = Some(n);
            }
        }
    }
    panic!("the listing never ended");
}

#[test]
fn pages_cover_every_object_once_in_id_order() {
    let mut h = Harness::new();
    let ids = populate(&mut h, 5, 10);
    let r = h.reader();
    for limit in [1, 7, 49, 50, 51, 1_000] {
        let (got, sizes) = follow(&r, &Filter::default(), limit, usize::MAX);
        assert_eq!(got, ids, "limit {limit}");
        assert_eq!(sizes.len(), ids.len().div_ceil(limit), "limit {limit}: {sizes:?}");
    }
    // A listing of exactly one full page ends with that page (no empty page, no token).
    let (page, next) = r.list_page(&Filter::default(), None, ids.len(), usize::MAX).expect("page");
    assert_eq!((page.len(), next), (ids.len(), None));
    // Limit 0 is served as 1 (the API layer turns 0 into the default page before this).
    let (page, next) = r.list_page(&Filter::default(), None, 0, usize::MAX).expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(next.as_deref(), Some(ids[0].as_str()));
}

#[test]
fn filtered_pages_and_the_scan_budget() {
    let mut h = Harness::new();
    let ids = populate(&mut h, 5, 10);
    // Two disks of h03 go to ERROR: a selective state filter.
    h.apply(2, vec![force("disk/h03/sd04", State::Error), force("disk/h01/sd09", State::Error)]);
    let r = h.reader();
    for id in ["disk/h03/sd04", "disk/h01/sd09"] {
        assert_eq!(r.object(id).expect("read").expect("exists").sm.state, State::Error, "{id}");
    }
    let errors = Filter { state: Some("ERROR".into()), ..Filter::default() };
    let want = vec!["disk/h01/sd09".to_string(), "disk/h03/sd04".to_string()];
    assert_eq!(follow(&r, &errors, 1, usize::MAX).0, want);
    // A scan budget of 4 rows: many short (mostly empty) pages, the same objects, never one twice.
    let (got, sizes) = follow(&r, &errors, 10, 4);
    assert_eq!(got, want);
    assert_eq!(sizes.len(), ids.len().div_ceil(4), "{sizes:?}");
    // Host + kind prefix: only that host's rows, paged.
    let host =
        Filter { kind: Some(state_machines::Kind::Disk), host: Some("h02".into()), ..Filter::default() };
    let (got, _) = follow(&r, &host, 3, usize::MAX);
    assert_eq!(got, ids.iter().filter(|i| i.starts_with("disk/h02/")).cloned().collect::<Vec<_>>());
    // A continuation key outside the prefix (before it) starts at the prefix; after it, nothing is left.
    let (page, _) = r.list_page(&host, Some("a"), 100, usize::MAX).expect("page");
    assert_eq!(page.len(), 10);
    let (page, next) = r.list_page(&host, Some("zzz"), 100, usize::MAX).expect("page");
    assert!(page.is_empty() && next.is_none());
}

#[test]
fn agent_pages_are_in_id_order() {
    let mut h = Harness::new();
    let agents: Vec<String> = (0..23).map(|i| format!("agent-{i:03}")).collect();
    let cmds = agents
        .iter()
        .map(|a| Command::AgentLiveness { agent: a.clone(), host: format!("h{a}"), alive: true })
        .collect();
    h.apply(1, cmds);
    let r = h.reader();
    for limit in [1, 5, 23, 100] {
        let (mut got, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let (page, next) = r.agents_page(after.as_deref(), limit).expect("page");
            pages += 1;
            got.extend(page.into_iter().map(|(id, _)| id));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
            assert!(pages <= agents.len(), "never ends");
        }
        assert_eq!(got, agents, "limit {limit}");
        assert_eq!(pages, agents.len().div_ceil(limit), "limit {limit}");
    }
}

/// A host filter reads that host's rows only, with or without a kind: never the hosts whose names start
/// with its name (`h1` is not `h10`, `h1-a` or `h1.b`, and '-' and '.' sort before '/'), and without a
/// kind, every host object kind in id order. With a scan budget of one row a page, the listing of `h1`
/// takes one page per row of `h1` (plus the last): before, a host without a kind read the whole table
/// (at 1.5 M objects the portal's host page stopped at the first page's scan budget and showed nothing).
#[test]
fn a_host_listing_reads_that_hosts_rows_only() {
    let mut h = Harness::new();
    let hosts = ["h1", "h10", "h1-a", "h1.b", "h0", "h2"];
    let mut all = Vec::new();
    for host in hosts {
        let ids = [
            format!("machine/{host}"),
            format!("disk/{host}/sda"),
            format!("disk/{host}/sdb"),
            format!("nic/{host}/eth0"),
            format!("dimm/{host}/A1"),
        ];
        h.apply(1, vec![ingest("", 0, ids.iter().map(|id| finding(id, Severity::Good, 1)).collect())]);
        all.extend(ids);
    }
    all.sort();
    let r = h.reader();
    let of = |host: &str, kind: Option<&str>| -> Vec<String> {
        all.iter()
            .filter(|id| {
                let o: state_machines::ObjectId = id.parse().expect("id");
                o.host_name() == Some(host) && kind.is_none_or(|k| o.kind().as_str() == k)
            })
            .cloned()
            .collect()
    };
    let host = |name: &str| Filter { host: Some(name.into()), ..Filter::default() };
    for name in hosts {
        let want = of(name, None);
        assert_eq!(want.len(), 5, "{name}");
        for limit in [1, 2, 100] {
            assert_eq!(follow(&r, &host(name), limit, usize::MAX).0, want, "{name} limit {limit}");
        }
        // One row a page: exactly its rows are read.
        let (got, sizes) = follow(&r, &host(name), 100, 1);
        assert_eq!(got, want, "{name}");
        assert!(sizes.len() <= want.len() + 1, "{name}: {} pages for {} rows", sizes.len(), want.len());
        // With a kind: that kind's rows of that host only.
        let disks = Filter { kind: Some(state_machines::Kind::Disk), ..host(name) };
        let (got, sizes) = follow(&r, &disks, 100, 1);
        assert_eq!(got, of(name, Some("disk")), "{name}");
        assert!(sizes.len() <= 3, "{name}: {sizes:?}");
    }
    // The non-paged listing reads the same.
    let listed: Vec<String> =
        r.list(&host("h1"), usize::MAX).expect("list").iter().map(|o| o.id.to_string()).collect();
    assert_eq!(listed, of("h1", None));
    // Network devices have no host: a host filter matches none of them, with or without their kind.
    let switch = Filter { kind: Some(state_machines::Kind::Switch), ..host("h1") };
    assert_eq!(follow(&r, &switch, 10, usize::MAX).0, Vec::<String>::new());
    // The whole table is still listed in id order.
    assert_eq!(follow(&r, &Filter::default(), 7, usize::MAX).0, all);
}
