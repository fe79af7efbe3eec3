//! `huatuo ticket`: repair tickets. `list` shows every object in REPAIR, and every network device (switch,
//! link) with an open incident (it entered ERROR; it files one ticket per incident), with its ticket (or
//! that the filing is still outstanding); `update OBJECT TICKET STATUS` records what the repair system says (filed,
//! accepted, part-replaced, closed) — a manual filing is `update ... filed`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use proto::api;

use crate::ops_cmd::{MasterAddr, api_err, runtime, utc};

#[derive(Subcommand, Debug)]
pub enum TicketCmd {
    /// Objects in REPAIR, and switches/links with an open incident, with their tickets.
    List(ListArgs),
    /// Record a ticket update: filed, accepted, part-replaced or closed.
    Update(UpdateArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// -o json|yaml: one document; --json (older scripts): one JSON object per line.
    #[command(flatten)]
    out: crate::output::OutputArgs,
    /// Show the first N objects in REPAIR, and N network devices of each kind and state (0: all of them, read
    /// a page at a time).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The object in REPAIR, e.g. disk/host-017/sdb, or a switch/link with an open incident.
    object: String,
    /// The ticket id in the repair system.
    ticket: String,
    /// filed, accepted, part-replaced or closed.
    status: String,
    #[command(flatten)]
    master: MasterAddr,
}

pub fn run(cmd: TicketCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TicketCmd::List(a) => list(a),
        TicketCmd::Update(a) => update(a),
    }
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = a.master.client();
    let req = api::ListObjectsRequest { state: "REPAIR".into(), ..Default::default() };
    let rt = runtime()?;
    let mut r = rt.block_on(crate::pages::objects(&mut client, req, a.limit)).map_err(api_err)?;
    // Network devices are never in REPAIR: theirs is the incident from entering ERROR until GOOD again
    // (WARNING in between), marked by its filing key.
    for kind in ["switch", "link"] {
        for state in ["ERROR", "WARNING"] {
            let req =
                api::ListObjectsRequest { kind: kind.into(), state: state.into(), ..Default::default() };
            let n = rt.block_on(crate::pages::objects(&mut client, req, a.limit)).map_err(api_err)?;
            r.more |= n.more;
            r.objects.extend(
                n.objects
                    .into_iter()
                    .filter(|o| o.attributes.contains_key(state_machines::step::TICKET_KEY_ATTR)),
            );
        }
    }
    let f = a.out.format();
    let row = |o: &api::Object| {
        let ticket = o.attributes.get("ticket").cloned().unwrap_or_default();
        let status = o.attributes.get("ticket-status").cloned().unwrap_or_else(|| "not filed yet".into());
        serde_json::json!({"object": o.id, "ticket": ticket, "status": status,
            "repair_since_ms": o.state_since_ms,
            "labels": o.labels.iter().collect::<std::collections::BTreeMap<_, _>>()})
    };
    if f.is_document() && !a.out.json {
        let v = serde_json::json!({"tickets": r.objects.iter().map(row).collect::<Vec<_>>(), "more": r.more,
            "revision": r.revision});
        crate::output::print_document(&v, f)?;
        return Ok(ExitCode::SUCCESS);
    }
    for o in &r.objects {
        let v = row(o);
        if a.out.json {
            println!("{v}");
            continue;
        }
        let ticket = v["ticket"].as_str().unwrap_or_default();
        let t = if ticket.is_empty() { "-" } else { ticket };
        let status = v["status"].as_str().unwrap_or_default();
        print!("{:<36} {:<16} {:<14} since {}", o.id, t, status, utc(o.state_since_ms));
        if f == crate::output::Format::Wide {
            let mut labels: Vec<String> = o.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            print!("  {}", labels.join(","));
        }
        println!();
    }
    if r.objects.is_empty() && !a.out.json {
        println!("no object is in REPAIR and no switch or link has an open incident");
    }
    if r.more && !a.out.json {
        println!("(the first {} objects: more match; --limit 0 lists them all)", r.objects.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn update(a: UpdateArgs) -> anyhow::Result<ExitCode> {
    proto::convert::object_id(&a.object).map_err(api_err)?;
    let req = api::CommandRequest {
        object: a.object.clone(),
        kind: "ticket".into(),
        name: a.ticket,
        value: a.status,
        ..Default::default()
    };
    // One idempotency key for every try of this write (the client retries through failovers).
    let key = proto::client::request_key("cli").map_err(api_err)?;
    let mut client = a.master.client();
    let r = runtime()?
        .block_on(client.call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.command(r).await }
        }))
        .map_err(api_err)?;
    println!("{} is {} (revision {})", a.object, r.state, r.revision);
    Ok(ExitCode::SUCCESS)
}
