//! Turns `join:` seeds into addresses to probe. Names are looked up at
//! every attempt, so a seed list behind DNS follows the records; a name
//! that does not resolve is reported, never fatal.

use std::net::SocketAddr;

use crate::config::JoinTarget;

/// The addresses found for the seeds, and what could not be resolved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Unique, in seed order; never contains `own`.
    pub addrs: Vec<SocketAddr>,
    /// `(seed, why)` for each seed that gave no address.
    pub failed: Vec<(String, String)>,
}

/// Resolves every seed; `own` (this node's advertised address) is skipped
/// so a node listed in its own seeds does not probe itself.
pub async fn resolve_seeds(seeds: &[JoinTarget], own: SocketAddr) -> Resolved {
    let mut resolved = Resolved::default();
    for seed in seeds {
        let found: Result<Vec<SocketAddr>, String> = match seed {
            JoinTarget::Addr(addr) => Ok(vec![*addr]),
            JoinTarget::Host { host: name, port } | JoinTarget::Dns { name, port } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(addrs) => Ok(addrs.collect()),
                    Err(e) => Err(crate::storage::describe(&e)),
                }
            }
        };
        match found {
            Ok(addrs) if addrs.is_empty() => resolved
                .failed
                .push((seed.to_string(), "no addresses".into())),
            Ok(addrs) => {
                for addr in addrs {
                    if addr != own && !resolved.addrs.contains(&addr) {
                        resolved.addrs.push(addr);
                    }
                }
            }
            Err(why) => resolved.failed.push((seed.to_string(), why)),
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(text: &str) -> JoinTarget {
        JoinTarget::parse(text).expect("valid seed")
    }

    #[tokio::test]
    async fn addresses_names_and_dns_seeds_resolve_without_duplicates_or_self() {
        let own: SocketAddr = "127.0.0.1:3301".parse().unwrap();
        let seeds = [
            seed("127.0.0.1:3301"),
            seed("127.0.0.2:3301"),
            seed("localhost:3302"),
            seed("dns:localhost:3302"),
            seed("no-such-host.invalid:3301"),
        ];
        let r = resolve_seeds(&seeds, own).await;
        assert_eq!(r.addrs[0], "127.0.0.2:3301".parse().unwrap());
        assert!(
            r.addrs.contains(&"127.0.0.1:3302".parse().unwrap()),
            "{r:?}"
        );
        let unique: std::collections::BTreeSet<_> = r.addrs.iter().collect();
        assert_eq!(unique.len(), r.addrs.len(), "no duplicates: {r:?}");
        assert!(!r.addrs.contains(&own), "never itself");
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert_eq!(r.failed[0].0, "no-such-host.invalid:3301");
    }
}
