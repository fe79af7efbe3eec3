//! `huatuo upgrade`: the operator's side of a rolling master upgrade (ARCHITECTURE.md "Upgrading masters").
//! Without `--min-command-version` it shows the cluster's `min_command_version` and the newest command
//! version each member's binary knows; with it, it enables command versions up to N cluster-wide (needs a
//! reason, recorded in the audit log; the master refuses N above what any member knows and names it).

use std::process::ExitCode;

use clap::Args;
use proto::api;

use crate::ops_cmd::{MasterAddr, api_err, runtime};
use crate::safety_cmd::Operator;

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Enable command versions up to N on every member (after all of them run a binary that knows N).
    /// Lowering it (to roll back) is allowed too.
    #[arg(long)]
    min_command_version: Option<u32>,
    #[command(flatten)]
    op: Operator,
    /// Print the members' versions as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    master: MasterAddr,
}

/// A member's known command versions for people (0: it did not answer, or its binary cannot say).
pub(crate) fn knows_text(v: u32) -> String {
    if v == 0 { "unknown (not answering, or an older binary)".to_string() } else { format!("1..={v}") }
}

fn print(i: &api::ClusterInfoResponse, json: bool) -> anyhow::Result<()> {
    if json {
        let members: Vec<serde_json::Value> = i
            .members
            .iter()
            .map(|m| serde_json::json!({"id": m.id, "knows_command_version": m.knows_command_version}))
            .collect();
        let v = serde_json::json!({"min_command_version": i.min_command_version, "members": members});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("min_command_version {}", i.min_command_version);
    for m in &i.members {
        println!("member {}  knows {}", m.id, knows_text(m.knows_command_version));
    }
    // The newest version every member knows: what the cluster may be raised to.
    let every = i.members.iter().map(|m| m.knows_command_version).min().unwrap_or(0);
    if every > i.min_command_version {
        println!("every member knows {every}: `huatuo upgrade --min-command-version {every} --reason ...`");
    }
    Ok(())
}

pub fn run(a: UpgradeArgs) -> anyhow::Result<ExitCode> {
    let mut client = a.master.client();
    let rt = runtime()?;
    let Some(version) = a.min_command_version else {
        let i = rt
            .block_on(
                client.call(api::ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }),
            )
            .map_err(api_err)?;
        print(&i, a.json)?;
        return Ok(ExitCode::SUCCESS);
    };
    a.op.require_reason()?;
    let req = api::SetMinCommandVersionRequest { version, by: a.op.by, reason: a.op.reason };
    // One idempotency key for every try of this write (the client retries through failovers).
    let key = proto::client::request_key("cli").map_err(api_err)?;
    let r = rt
        .block_on(client.call(req, |mut c, r| {
            let r = proto::client::keyed(r, &key);
            async move { c.set_min_command_version(r).await }
        }))
        .map_err(api_err)?;
    if !a.json {
        println!("min_command_version set to {version} at revision {}", r.revision);
    }
    if let Some(i) = &r.cluster {
        print(i, a.json)?;
    }
    Ok(ExitCode::SUCCESS)
}
