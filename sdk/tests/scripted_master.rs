//! The SDK against a scripted in-process gRPC master (real tonic server on a loopback port, port 0): streams
//! that break after a few responses and replay old events when resumed, a compacted change log, label and
//! state filtering that needs GetObject, and acknowledgement refusals. Deterministic where the real cluster
//! test (tests/tests/sdk_consent.rs) cannot be: it drives exactly the cases the resume bookkeeping exists for.

// Wire structs are built with `..Default::default()` even where every field is set today: api.proto grows
// (additively) and the fake must keep compiling.
#![allow(clippy::needless_update)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use huatuo_sdk::{Config, Error, Filter, Subscriber, WatchItem};
use proto::api::{self, master_server::Master};
use proto::error::{ApiError, Code};
use state_machines::{AckKind, Kind, State};
use tonic::{Request, Response, Status};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Script {
    /// Revision i + 1 is `events[i]`.
    events: Vec<api::Event>,
    objects: BTreeMap<String, api::Object>,
    /// A watch from below this revision is answered COMPACTED.
    compacted_below: u64,
    /// Each watch stream breaks (UNAVAILABLE) after this many responses (0: never).
    break_after: usize,
    /// A resumed watch starts this many revisions early (a replay the SDK must drop).
    replay: u64,
    /// Events per response.
    chunk: usize,
    watch_calls: Vec<u64>,
    get_calls: Vec<String>,
    /// The first watch is served by a "partitioned follower": progress at `from - 1`, every 10 ms, forever.
    stall_first: bool,
    /// Listings: objects per page (0: the request's limit), the revision every page answers (0: the last
    /// event's), and two ways to misbehave on pages after the first: answer the same token again, or
    /// another revision.
    page_size: usize,
    list_revision: u64,
    repeat_token: bool,
    shift_revision: bool,
    list_calls: usize,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().expect("lock"))
    }
}

fn status(code: Code, msg: &str) -> Status {
    ApiError::new(code, msg).into()
}

fn event(revision: u64, object: &str, what: &str, state: &str, from: &str) -> api::Event {
    api::Event {
        revision,
        object: object.into(),
        what: what.into(),
        state: state.into(),
        from_state: from.into(),
        ..Default::default()
    }
}

fn object(id: &str, state: &str, rack: &str, waiting: bool) -> api::Object {
    api::Object {
        id: id.into(),
        state: state.into(),
        labels: [("rack".to_string(), rack.to_string())].into(),
        waiting_ack: if waiting { "data-evacuated".into() } else { String::new() },
        waiting_role: if waiting { "storage".into() } else { String::new() },
        ..Default::default()
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<api::WatchResponse, Status>> + Send + 'static>>;
type BeatStream = Pin<Box<dyn Stream<Item = Result<api::HeartbeatResponse, Status>> + Send + 'static>>;
type IngestStream = Pin<Box<dyn Stream<Item = Result<api::IngestResponse, Status>> + Send + 'static>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not scripted"))
}

#[tonic::async_trait]
impl Master for Fake {
    type WatchStream = WatchStream;
    type HeartbeatStreamStream = BeatStream;
    type IngestStreamStream = IngestStream;

    async fn watch(&self, req: Request<api::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let req = req.into_inner();
        let responses = self.with(|s| {
            let resumed = !s.watch_calls.is_empty();
            s.watch_calls.push(req.from_revision);
            if req.from_revision < s.compacted_below {
                return Err(status(Code::Compacted, "compacted"));
            }
            if s.stall_first && !resumed {
                return Ok(None);
            }
            let start =
                if resumed { req.from_revision.saturating_sub(s.replay).max(1) } else { req.from_revision };
            let wanted = |e: &api::Event| {
                (req.kind.is_empty() || e.object.starts_with(&format!("{}/", req.kind)))
                    && (req.host.is_empty() || e.object.split('/').nth(1) == Some(req.host.as_str()))
            };
            let mut out: Vec<Result<api::WatchResponse, Status>> = Vec::new();
            for batch in s.events.iter().skip(start as usize - 1).collect::<Vec<_>>().chunks(s.chunk.max(1)) {
                let revision = batch.last().map(|e| e.revision).unwrap_or(0);
                let events = batch.iter().filter(|e| wanted(e)).map(|e| (*e).clone()).collect();
                out.push(Ok(api::WatchResponse { events, revision, ..Default::default() }));
            }
            if s.break_after > 0 && out.len() > s.break_after {
                out.truncate(s.break_after);
                out.push(Err(status(Code::Unavailable, "scripted break")));
            }
            Ok(Some(out))
        })?;
        let Some(responses) = responses else {
            let stuck = req.from_revision.saturating_sub(1);
            let progress = futures::stream::unfold((), move |()| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok(api::WatchResponse { events: Vec::new(), revision: stuck, ..Default::default() }),
                    (),
                ))
            });
            return Ok(Response::new(Box::pin(progress) as WatchStream));
        };
        let broke = responses.last().is_some_and(Result::is_err);
        let s = futures::stream::iter(responses);
        let s: WatchStream = if broke {
            Box::pin(s)
        } else {
            Box::pin(futures::StreamExt::chain(s, futures::stream::pending()))
        };
        Ok(Response::new(s))
    }

    async fn list_objects(
        &self,
        req: Request<api::ListObjectsRequest>,
    ) -> Result<Response<api::ListObjectsResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.with(|s| {
            s.list_calls += 1;
            let size = match (s.page_size, req.limit) {
                (0, 0) => usize::MAX,
                (0, l) => l as usize,
                (p, _) => p,
            };
            // The token of this fake is the last id served (the real master's is opaque).
            let matching: Vec<api::Object> = s
                .objects
                .values()
                .filter(|o| req.kind.is_empty() || o.id.starts_with(&format!("{}/", req.kind)))
                .filter(|o| req.page_token.is_empty() || o.id > req.page_token)
                .cloned()
                .collect();
            let more = matching.len() > size;
            let objects: Vec<api::Object> = matching.into_iter().take(size).collect();
            let later = !req.page_token.is_empty();
            let mut next_page_token =
                if more { objects.last().map(|o| o.id.clone()).unwrap_or_default() } else { String::new() };
            if more && later && s.repeat_token {
                next_page_token = req.page_token.clone();
            }
            let mut revision = if s.list_revision > 0 { s.list_revision } else { s.events.len() as u64 };
            if later && s.shift_revision {
                revision += 1;
            }
            api::ListObjectsResponse { objects, revision, next_page_token }
        })))
    }

    async fn get_object(
        &self,
        req: Request<api::GetObjectRequest>,
    ) -> Result<Response<api::GetObjectResponse>, Status> {
        let id = req.into_inner().id;
        self.with(|s| {
            s.get_calls.push(id.clone());
            let o = s
                .objects
                .get(&id)
                .cloned()
                .ok_or_else(|| status(Code::NotFound, &format!("no object {id}")))?;
            Ok(Response::new(api::GetObjectResponse {
                object: Some(o),
                history: Vec::new(),
                revision: s.events.len() as u64,
                ..Default::default()
            }))
        })
    }

    async fn command(
        &self,
        req: Request<api::CommandRequest>,
    ) -> Result<Response<api::CommandResponse>, Status> {
        let r = req.into_inner();
        self.with(|s| {
            let o = s.objects.get_mut(&r.object).ok_or_else(|| status(Code::NotFound, "no object"))?;
            if o.waiting_ack != r.name || o.waiting_role != r.by {
                return Err(status(Code::Conflict, &format!("{} waits for something else", r.object)));
            }
            o.state = "REPAIR".into();
            o.waiting_ack.clear();
            o.waiting_role.clear();
            let revision = s.events.len() as u64 + 1;
            s.events.push(event(revision, &r.object, "transition", "REPAIR", "ERROR"));
            Ok(Response::new(api::CommandResponse {
                revision,
                state: "REPAIR".into(),
                transitioned: true,
                ..Default::default()
            }))
        })
    }

    async fn cluster_info(
        &self,
        _: Request<api::ClusterInfoRequest>,
    ) -> Result<Response<api::ClusterInfoResponse>, Status> {
        Ok(Response::new(api::ClusterInfoResponse::default()))
    }

    async fn ingest(&self, _: Request<api::IngestRequest>) -> Result<Response<api::IngestResponse>, Status> {
        unimplemented()
    }
    async fn heartbeat(
        &self,
        _: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        unimplemented()
    }
    async fn ingest_stream(
        &self,
        _: Request<tonic::Streaming<api::IngestRequest>>,
    ) -> Result<Response<IngestStream>, Status> {
        unimplemented()
    }
    async fn heartbeat_stream(
        &self,
        _: Request<tonic::Streaming<api::HeartbeatRequest>>,
    ) -> Result<Response<BeatStream>, Status> {
        unimplemented()
    }
    async fn register(
        &self,
        _: Request<api::RegisterRequest>,
    ) -> Result<Response<api::RegisterResponse>, Status> {
        unimplemented()
    }
    async fn get_safety(
        &self,
        _: Request<api::GetSafetyRequest>,
    ) -> Result<Response<api::GetSafetyResponse>, Status> {
        unimplemented()
    }
    async fn set_level(
        &self,
        _: Request<api::SetLevelRequest>,
    ) -> Result<Response<api::ScopeResponse>, Status> {
        unimplemented()
    }
    async fn release(&self, _: Request<api::ReleaseRequest>) -> Result<Response<api::ScopeResponse>, Status> {
        unimplemented()
    }
    async fn list_proposals(
        &self,
        _: Request<api::ListProposalsRequest>,
    ) -> Result<Response<api::ListProposalsResponse>, Status> {
        unimplemented()
    }
    async fn decide_proposals(
        &self,
        _: Request<api::DecideProposalsRequest>,
    ) -> Result<Response<api::DecideProposalsResponse>, Status> {
        unimplemented()
    }
    async fn set_quotas(
        &self,
        _: Request<api::SetQuotasRequest>,
    ) -> Result<Response<api::GetSafetyResponse>, Status> {
        unimplemented()
    }

    async fn list_agents(
        &self,
        _: Request<api::ListAgentsRequest>,
    ) -> Result<Response<api::ListAgentsResponse>, Status> {
        unimplemented()
    }

    async fn set_min_command_version(
        &self,
        _: Request<api::SetMinCommandVersionRequest>,
    ) -> Result<Response<api::SetMinCommandVersionResponse>, Status> {
        unimplemented()
    }

    async fn push_artifact(
        &self,
        _: Request<api::PushArtifactRequest>,
    ) -> Result<Response<api::PushArtifactResponse>, Status> {
        unimplemented()
    }

    async fn list_catalog(
        &self,
        _: Request<api::ListCatalogRequest>,
    ) -> Result<Response<api::ListCatalogResponse>, Status> {
        unimplemented()
    }

    async fn fetch_artifact(
        &self,
        _: Request<api::FetchArtifactRequest>,
    ) -> Result<Response<api::FetchArtifactResponse>, Status> {
        unimplemented()
    }

    async fn rollout(
        &self,
        _: Request<api::RolloutRequest>,
    ) -> Result<Response<api::RolloutResponse>, Status> {
        unimplemented()
    }

    async fn summary(
        &self,
        _: Request<api::SummaryRequest>,
    ) -> Result<Response<api::SummaryResponse>, Status> {
        unimplemented()
    }

    async fn rollout_status(
        &self,
        _: Request<api::RolloutStatusRequest>,
    ) -> Result<Response<api::RolloutStatusResponse>, Status> {
        unimplemented()
    }
    async fn net_suspects(
        &self,
        _: Request<api::NetSuspectsRequest>,
    ) -> Result<Response<api::NetSuspectsResponse>, Status> {
        unimplemented()
    }
    async fn net_matrix(
        &self,
        _: Request<api::NetMatrixRequest>,
    ) -> Result<Response<api::NetMatrixResponse>, Status> {
        unimplemented()
    }
    async fn net_path(
        &self,
        _: Request<api::NetPathRequest>,
    ) -> Result<Response<api::NetPathResponse>, Status> {
        unimplemented()
    }
    async fn net_topology(
        &self,
        _: Request<api::NetTopologyRequest>,
    ) -> Result<Response<api::NetTopologyResponse>, Status> {
        unimplemented()
    }
    async fn set_net_topology(
        &self,
        _: Request<api::SetNetTopologyRequest>,
    ) -> Result<Response<api::NetTopologyResponse>, Status> {
        unimplemented()
    }
}

/// Serve `fake` on a free loopback port; returns a subscriber config pointing at it (fast backoff).
async fn serve(fake: Fake) -> Config {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api::master_server::MasterServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut cfg = Config::new(vec![addr], "storage");
    cfg.backoff_start = Duration::from_millis(1);
    cfg.backoff_max = Duration::from_millis(5);
    cfg.max_attempts = 3;
    cfg
}

async fn next(w: &mut huatuo_sdk::Watch) -> WatchItem {
    match tokio::time::timeout(WAIT, w.next()).await.expect("an item within the bound") {
        Some(Ok(item)) => item,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn breaks_and_replays_deliver_every_revision_exactly_once() {
    let fake = Fake::default();
    fake.with(|s| {
        s.events =
            (1..=20).map(|r| event(r, &format!("disk/h{}/sda", r % 3), "finding", "GOOD", "")).collect();
        s.chunk = 3;
        s.break_after = 2;
        s.replay = 4;
    });
    let sub = Subscriber::connect_with(serve(fake.clone()).await).await.expect("connect");
    let mut w = sub.watch(&Filter::default(), 1).expect("watch");
    let (mut revs, mut reconnects) = (Vec::new(), 0);
    while revs.last() != Some(&20) {
        match next(&mut w).await {
            WatchItem::Events { events, revision } => {
                revs.extend(events.iter().map(|e| e.revision));
                assert_eq!(revs.last(), Some(&revision), "covered = last delivered here (no filter)");
            }
            WatchItem::Reconnecting { resume_from, .. } => {
                reconnects += 1;
                assert_eq!(resume_from, revs.last().map_or(1, |r| r + 1), "resumes right after the last one");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(revs, (1..=20).collect::<Vec<_>>(), "no gap, no duplicate despite replays");
    let calls = fake.with(|s| s.watch_calls.clone());
    // The first stream covers 1..=6; every resumed one replays 4 old revisions (dropped) and covers 2 new.
    assert_eq!(calls, vec![1, 7, 9, 11, 13, 15, 17, 19]);
    assert_eq!(reconnects, 7);
}

#[tokio::test]
async fn a_compacted_start_resyncs_from_a_listing_and_continues_after_it() {
    let fake = Fake::default();
    fake.with(|s| {
        s.events = (1..=10).map(|r| event(r, "disk/h1/sda", "finding", "GOOD", "")).collect();
        s.objects.insert("disk/h1/sda".into(), object("disk/h1/sda", "GOOD", "r1", false));
        s.compacted_below = 5;
        s.chunk = 10;
    });
    let sub = Subscriber::connect_with(serve(fake.clone()).await).await.expect("connect");
    let mut w = sub.watch(&Filter::kind(Kind::Disk), 2).expect("watch");
    match next(&mut w).await {
        WatchItem::Resync { listing } => {
            assert_eq!(listing.revision, 10);
            assert_eq!(listing.objects.len(), 1);
            assert_eq!(listing.objects[0].state, State::Good);
        }
        other => panic!("{other:?}"),
    }
    // A new event after the listing arrives next, nothing before it.
    let mut sub2 = Subscriber::connect_with(serve(fake.clone()).await).await.expect("connect");
    fake.with(|s| {
        s.objects.insert("disk/h1/sda".into(), object("disk/h1/sda", "ERROR", "r1", true));
    });
    let acked = sub2.ack(&"disk/h1/sda".parse().expect("id"), AckKind::DataEvacuated).await.expect("ack");
    assert_eq!((acked.revision, acked.state), (11, State::Repair));
    // The first stream (from 11) is pending forever in this script; a fresh watch from 11 sees the ack.
    let mut w2 = sub.watch(&Filter::kind(Kind::Disk), 11).expect("watch");
    match next(&mut w2).await {
        WatchItem::Events { events, .. } => {
            assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), [11])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.with(|s| s.watch_calls[..2].to_vec()), vec![2, 11], "resync, then from listing + 1");
}

#[tokio::test]
async fn state_and_label_filters_apply_client_side_with_a_label_cache() {
    let fake = Fake::default();
    fake.with(|s| {
        s.objects.insert("disk/h1/a".into(), object("disk/h1/a", "REPAIR", "r1", false));
        s.objects.insert("disk/h1/b".into(), object("disk/h1/b", "ERROR", "r2", true));
        s.events = vec![
            event(1, "disk/h1/a", "transition", "ERROR", "GOOD"),
            event(2, "disk/h1/b", "transition", "ERROR", "GOOD"),
            event(3, "disk/h1/a", "finding", "ERROR", ""),
            event(4, "machine/h1", "transition", "ERROR", "GOOD"),
            event(5, "disk/h1/a", "transition", "REPAIR", "ERROR"),
            event(6, "disk/h1/a", "finding", "REPAIR", ""),
            event(7, "disk/h1/a", "register", "REPAIR", ""),
            event(8, "disk/h1/gone", "transition", "ERROR", "GOOD"),
        ];
        s.chunk = 8;
    });
    let sub = Subscriber::connect_with(serve(fake.clone()).await).await.expect("connect");
    let f = Filter::kind(Kind::Disk).with_state(State::Error).with_label("rack", "r1");
    let mut w = sub.watch(&f, 1).expect("watch");
    match next(&mut w).await {
        WatchItem::Events { events, revision } => {
            let got: Vec<u64> = events.iter().map(|e| e.revision).collect();
            // a entering ERROR, a's finding while in ERROR, a leaving ERROR; not b (rack r2), not the
            // machine (kind), not a in REPAIR, not an unknown object.
            assert_eq!(got, vec![1, 3, 5]);
            assert_eq!(revision, 8, "covered past the filtered-out tail");
        }
        other => panic!("{other:?}"),
    }
    // a's labels were fetched once and cached; b and the unknown object once each. (The register event is
    // for a REPAIR state, so it does not reach the label step.)
    let gets = fake.with(|s| s.get_calls.clone());
    assert_eq!(gets, vec!["disk/h1/a", "disk/h1/b", "disk/h1/gone"]);
    // Without a state filter an inventory event refreshes the labels.
    fake.with(|s| s.get_calls.clear());
    let mut w = sub.watch(&Filter::default().with_label("rack", "r1"), 6).expect("watch");
    match next(&mut w).await {
        WatchItem::Events { events, .. } => {
            assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![6, 7]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fake.with(|s| s.get_calls.clone()),
        vec!["disk/h1/a", "disk/h1/gone"],
        "refetch after register"
    );
}

#[tokio::test]
async fn refused_acks_carry_the_current_object() {
    let fake = Fake::default();
    fake.with(|s| {
        s.objects.insert("disk/h1/a".into(), object("disk/h1/a", "GOOD", "r1", false));
    });
    let mut sub = Subscriber::connect_with(serve(fake.clone()).await).await.expect("connect");
    match sub.ack(&"disk/h1/a".parse().expect("id"), AckKind::DataEvacuated).await {
        Err(Error::Refused { message, current: Some(o) }) => {
            assert!(message.contains("waits for something else"), "{message}");
            assert_eq!((o.state, o.waiting), (State::Good, None));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        sub.ack(&"disk/h9/x".parse().expect("id"), AckKind::Drained).await,
        Err(Error::NotFound(_))
    ));
    assert!(fake.with(|s| s.events.is_empty()), "refusals changed nothing");
}

#[tokio::test]
async fn a_stream_stuck_behind_the_leader_is_abandoned() {
    // A partitioned follower keeps the stream alive with progress messages but never advances; the leader
    // (the listing) is at revision 3. The SDK notices after `stall_check`, reconnects, and delivers 1..=3.
    let fake = Fake::default();
    fake.with(|s| {
        s.events = (1..=3).map(|r| event(r, "disk/h1/sda", "finding", "GOOD", "")).collect();
        s.chunk = 3;
        s.stall_first = true;
    });
    let mut cfg = serve(fake.clone()).await;
    cfg.stall_check = Duration::from_millis(100);
    let sub = Subscriber::connect_with(cfg).await.expect("connect");
    let mut w = sub.watch(&Filter::default(), 1).expect("watch");
    match next(&mut w).await {
        WatchItem::Reconnecting { error, resume_from, .. } => {
            assert_eq!(resume_from, 1);
            assert!(error.to_string().contains("while the leader is at 3"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    match next(&mut w).await {
        WatchItem::Events { events, .. } => {
            assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), [1, 2, 3])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.with(|s| s.watch_calls.clone()), vec![1, 1]);
}

/// Objects `disk/h1/a`..`e` listed in pages of 2 at revision 8; `c` (changed at 9 and 10) and `e` (11, 12)
/// sit on later pages that were read after those changes, so they carry revisions 10 and 12.
fn paged_script(s: &mut Script) {
    let revs = [("a", 3), ("b", 5), ("c", 10), ("d", 8), ("e", 12)];
    for (name, rev) in revs {
        let id = format!("disk/h1/{name}");
        s.objects.insert(id.clone(), api::Object { revision: rev, ..object(&id, "GOOD", "r1", false) });
    }
    let order = ["a", "b", "a", "d", "b", "d", "a", "d", "c", "c", "e", "e", "a", "c"];
    s.events = order
        .iter()
        .enumerate()
        .map(|(i, o)| event(i as u64 + 1, &format!("disk/h1/{o}"), "finding", "GOOD", ""))
        .collect();
    s.page_size = 2;
    s.list_revision = 8;
    s.chunk = 20;
}

#[tokio::test]
async fn a_paged_listing_and_its_watch_see_each_change_once() {
    let fake = Fake::default();
    fake.with(paged_script);
    let mut cfg = serve(fake.clone()).await;
    cfg.list_limit = 2;
    let mut sub = Subscriber::connect_with(cfg).await.expect("connect");
    let (listing, mut w) = sub.list_and_watch(&Filter::kind(Kind::Disk)).await.expect("list and watch");
    assert_eq!((listing.revision, listing.pages, listing.objects.len()), (8, 3, 5));
    assert_eq!(listing.floors().len(), 2, "only c and e were listed past the listing's revision");
    // The watch starts at 9; 9..=12 are already in the listing (c at 10, e at 12): only 13 and 14 come.
    match next(&mut w).await {
        WatchItem::Events { events, revision } => {
            assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), [13, 14]);
            assert_eq!(revision, 14);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.with(|s| s.watch_calls.clone()), vec![9]);
}

#[tokio::test]
async fn a_resync_lists_every_page_and_drops_what_the_listing_shows() {
    let fake = Fake::default();
    fake.with(|s| {
        paged_script(s);
        s.compacted_below = 5;
    });
    let mut cfg = serve(fake.clone()).await;
    cfg.list_limit = 2;
    let sub = Subscriber::connect_with(cfg).await.expect("connect");
    let mut w = sub.watch(&Filter::kind(Kind::Disk), 2).expect("watch");
    match next(&mut w).await {
        WatchItem::Resync { listing } => assert_eq!((listing.revision, listing.pages), (8, 3)),
        other => panic!("{other:?}"),
    }
    match next(&mut w).await {
        WatchItem::Events { events, .. } => {
            assert_eq!(events.iter().map(|e| e.revision).collect::<Vec<_>>(), [13, 14])
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_master_that_misbehaves_while_paging_is_a_protocol_error() {
    for (what, setup) in [
        ("same token", (|s: &mut Script| s.repeat_token = true) as fn(&mut Script)),
        ("revision", |s: &mut Script| s.shift_revision = true),
        ("pages", |_: &mut Script| {}),
    ] {
        let fake = Fake::default();
        fake.with(|s| {
            paged_script(s);
            setup(s);
        });
        let mut cfg = serve(fake.clone()).await;
        cfg.list_limit = 2;
        if what == "pages" {
            cfg.max_list_pages = 2; // 3 pages needed: one more than allowed
        }
        let mut sub = Subscriber::connect_with(cfg).await.expect("connect");
        match sub.list(&Filter::default()).await {
            Err(Error::Protocol(m)) => assert!(
                m.contains(match what {
                    "same token" => "same page token",
                    "revision" => "answered revision 9",
                    _ => "after 2 pages",
                }),
                "{what}: {m}"
            ),
            other => panic!("{what}: {:?}", other.map(|l| l.pages)),
        }
        assert!(fake.with(|s| s.list_calls) <= 3, "{what}: stopped at once");
    }
    // At the page bound exactly (3 pages allowed, 3 needed) the listing completes.
    let fake = Fake::default();
    fake.with(paged_script);
    let mut cfg = serve(fake.clone()).await;
    cfg.list_limit = 2;
    cfg.max_list_pages = 3;
    let mut sub = Subscriber::connect_with(cfg).await.expect("connect");
    assert_eq!(sub.list(&Filter::default()).await.expect("list").objects.len(), 5);
}
