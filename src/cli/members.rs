//! `cohort members`, `monitor`, `join`, `leave` and `event`: the membership
//! commands, all through the node's API.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::bail;

use super::client::Client;
use super::{MemberStatusArg, MembersArgs, OutputFormat};
use crate::api::{ApiEvent, Done, MemberInfo, Members};

pub fn list(api: SocketAddr, format: OutputFormat, args: &MembersArgs) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let deadline = Instant::now() + args.timeout.0;
    let view: Members = loop {
        let view: Members = client.get("/v1/members")?;
        let Some(wanted) = args.wait_alive else {
            break view;
        };
        let alive = view.members.iter().filter(|m| m.status == "alive").count();
        if alive >= wanted {
            break view;
        }
        if Instant::now() >= deadline {
            bail!(
                "only {alive} of {wanted} members alive after {}",
                args.timeout
            );
        }
        // Polling the local API: membership has no "wait for N" to block on.
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let shown: Vec<&MemberInfo> = view
        .members
        .iter()
        .filter(|m| {
            args.status.is_empty() || args.status.iter().any(|s| status_name(*s) == m.status)
        })
        .collect();
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        OutputFormat::Text => {
            print!("{}", render_table(&shown));
            for warning in &view.gossip.warnings {
                eprintln!("warning: {warning}");
            }
        }
    }
    Ok(())
}

fn status_name(status: MemberStatusArg) -> &'static str {
    match status {
        MemberStatusArg::Alive => "alive",
        MemberStatusArg::Suspect => "suspect",
        MemberStatusArg::Dead => "dead",
        MemberStatusArg::Left => "left",
    }
}

/// An aligned table; the last change as an age ("12s ago").
pub fn render_table(members: &[&MemberInfo]) -> String {
    let now = crate::api::unix_ms(std::time::SystemTime::now());
    let rows: Vec<[String; 7]> = members
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.address.clone(),
                m.status.clone(),
                format!("{}.{}", m.generation, m.version),
                m.replicaset.clone().unwrap_or_else(|| "-".into()),
                if m.roles.is_empty() {
                    "-".into()
                } else {
                    m.roles.join(",")
                },
                format!(
                    "{} ago",
                    crate::config::HumanDuration::from_secs(now.saturating_sub(m.since_ms) / 1000)
                ),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "ADDRESS",
        "STATUS",
        "INCARNATION",
        "REPLICASET",
        "ROLES",
        "SINCE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut out: String = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}  "))
            .collect();
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}

pub fn monitor(api: SocketAddr, format: OutputFormat) -> anyhow::Result<()> {
    Client::new(api)?.follow("/v1/events", |data| {
        match format {
            OutputFormat::Json => println!("{data}"),
            OutputFormat::Text => {
                let event: ApiEvent = serde_json::from_str(data)?;
                let payload = match (&event.payload, &event.payload_base64) {
                    (Some(text), _) => format!(": {text}"),
                    (None, Some(encoded)) => format!(": base64 {encoded}"),
                    (None, None) => String::new(),
                };
                println!(
                    "{:<20} {:<12} {}{payload}",
                    event.kind, event.subject, event.detail
                );
            }
        }
        Ok(())
    })
}

pub fn write(api: SocketAddr, path: &str, body: &impl serde::Serialize) -> anyhow::Result<()> {
    let done: Done = Client::new(api)?.post(path, body)?;
    println!("{}", done.message);
    Ok(())
}

/// `cohort event NAME [PAYLOAD|-]`.
pub fn send_event(api: SocketAddr, name: String, payload: Option<String>) -> anyhow::Result<()> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut request = crate::api::UserEventRequest {
        name,
        ..Default::default()
    };
    match payload.as_deref() {
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| anyhow::anyhow!("cannot read the payload from stdin: {e}"))?;
            request.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        Some(text) => request.payload = Some(text.to_string()),
        None => {}
    }
    write(api, "/v1/events", &request)
}
