//! `cohort route KEY`: the replica set a key belongs to and its master's
//! address, through the node's API (`GET /v1/route`).

use std::process::ExitCode;

use super::client::{Client, Target};
use super::exit::{exit_status, Exit};
use super::output::{self, key_values, Style};
use super::OutputFormat;
use crate::api::Route;

pub const ROUTE_HELP: &str = concat!(
    "\
The set is chosen by weighted rendezvous hashing over the committed topology's \
replica sets (`weight:` per set, 1 by default): every node maps a key to the \
same set, and adding a set moves only the keys it takes. The master is the \
one the answering node runs now (Raft's appointment in failover mode `raft`). \
--format json prints the agent's answer.

",
    exit_status!(
        "0  the key's set has a master",
        "1  it has none now (the set is still printed), or no topology is committed"
    )
);

pub fn route(api: &Target, format: OutputFormat, key: &str) -> anyhow::Result<ExitCode> {
    let client = Client::new(api)?;
    let path = format!("/v1/route?key={}", percent_encode(key));
    let route: Route = match format {
        OutputFormat::Json => {
            let value: serde_json::Value = client.get(&path)?;
            output::print_json(&value)?;
            serde_json::from_value(value)?
        }
        OutputFormat::Text => {
            let route: Route = client.get(&path)?;
            print!("{}", render(&route, Style::current()));
            route
        }
    };
    Ok(if route.master.is_some() {
        Exit::Ok
    } else {
        Exit::No
    }
    .into())
}

fn render(route: &Route, style: Style) -> String {
    let master = match (&route.master, &route.note) {
        (Some(m), _) => format!(
            "{} at {} ({}, generation {})",
            m.name,
            m.address,
            style.status(&m.status),
            m.generation
        ),
        (None, Some(note)) => format!("none: {note}"),
        (None, None) => "none".to_string(),
    };
    let rows = [
        ("key", route.key.clone()),
        (
            "replicaset",
            format!("{} (weight {})", route.replicaset, route.weight),
        ),
        ("master", master),
        ("config", format!("version {}", route.config_version)),
    ];
    key_values(&rows)
}

/// Everything but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RouteMaster;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(percent_encode("user:42"), "user%3A42");
        assert_eq!(percent_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn the_answer_is_aligned_rows() {
        let mut route = Route {
            key: "user:42".into(),
            replicaset: "s2".into(),
            weight: 0.5,
            master: Some(RouteMaster {
                name: "b1".into(),
                address: "10.0.0.21:3301".into(),
                status: "alive".into(),
                generation: 3,
            }),
            config_version: 7,
            note: None,
        };
        assert_eq!(
            render(&route, Style::PLAIN),
            "key         user:42\n\
             replicaset  s2 (weight 0.5)\n\
             master      b1 at 10.0.0.21:3301 (alive, generation 3)\n\
             config      version 7\n"
        );
        route.master = None;
        route.weight = 1.0;
        route.note = Some("replica set `s2` has no master now".into());
        let text = render(&route, Style::PLAIN);
        assert!(text.contains("replicaset  s2 (weight 1)\n"), "{text}");
        assert!(
            text.contains("master      none: replica set `s2` has no master now\n"),
            "{text}"
        );
    }
}
