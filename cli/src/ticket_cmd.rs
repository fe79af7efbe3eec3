//! `huatuo ticket`: repair tickets. `list` shows every object in REPAIR with its ticket (or that the filing
//! is still outstanding); `update OBJECT TICKET STATUS` records what the repair system says (filed,
//! accepted, part-replaced, closed) — a manual filing is `update ... filed`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use proto::api;

use crate::ops_cmd::{MasterAddr, api_err, runtime, utc};

#[derive(Subcommand, Debug)]
pub enum TicketCmd {
    /// Objects in REPAIR and their tickets.
    List(ListArgs),
    /// Record a ticket update: filed, accepted, part-replaced or closed.
    Update(UpdateArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    json: bool,
    /// Show the first N objects in REPAIR (0: all of them, read a page at a time).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[command(flatten)]
    master: MasterAddr,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The object in REPAIR, e.g. disk/host-017/sdb.
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
    let r = runtime()?.block_on(crate::pages::objects(&mut client, req, a.limit)).map_err(api_err)?;
    for o in &r.objects {
        let ticket = o.attributes.get("ticket").cloned().unwrap_or_default();
        let status = o.attributes.get("ticket-status").cloned().unwrap_or_else(|| "not filed yet".into());
        if a.json {
            let v = serde_json::json!({"object": o.id, "ticket": ticket, "status": status,
                "repair_since_ms": o.state_since_ms, "labels": o.labels});
            println!("{v}");
        } else {
            let t = if ticket.is_empty() { "-".to_string() } else { ticket };
            println!("{:<36} {:<16} {:<14} since {}", o.id, t, status, utc(o.state_since_ms));
        }
    }
    if r.objects.is_empty() && !a.json {
        println!("no object is in REPAIR");
    }
    if r.more && !a.json {
        println!("(the first {} objects in REPAIR: more match)", r.objects.len());
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
