//! SIGHUP: the node config is read again. What can change at run time
//! (the log level, the gossip keyring) changes; every other changed setting
//! is named in the log as waiting for a restart. Membership is never
//! dropped. The topology file needs no reload: its watcher follows every
//! change and keeps the status (state, problems, whether it matches the
//! committed version) up to date.

use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::membership::PacketSecurity;

use super::logging::LogControl;
use super::options::AgentOptions;

/// Returns the config that now runs: `running` when the file is bad.
pub fn reload(
    options: &AgentOptions,
    running: NodeConfig,
    log: &LogControl,
    security: &PacketSecurity,
) -> NodeConfig {
    let fresh = match options.load_config() {
        Ok(fresh) => fresh,
        Err(e) => {
            // Diagnostics may span lines; each becomes its own log line.
            for line in e.to_string().lines() {
                warn!("reload failed; keeping the running config: {line}");
            }
            return running;
        }
    };
    let mut now = running.clone();
    if fresh.log.level != running.log.level {
        match log.set_level(&fresh.log.level) {
            Ok(()) => {
                info!(from = %running.log.level, to = %fresh.log.level, "log level changed");
                now.log.level = fresh.log.level.clone();
            }
            Err(e) => warn!(error = %e, "cannot change the log level"),
        }
    }
    // Logged after the level changed, so it shows whether debug is now on.
    debug!(
        file = %options.config_file().map_or("none (--dev)".into(), |p| p.display().to_string()),
        "node config read again"
    );
    if reload_keyring(security, &running, &fresh) {
        now.gossip.key_file = fresh.gossip.key_file.clone();
    }

    let waiting = needs_restart(&running, &fresh);
    if !waiting.is_empty() {
        warn!(
            settings = %waiting.join(", "),
            "changed settings take effect at the next restart; until then the running values stay"
        );
    }
    info!("reloaded");
    now
}

/// The keyring file is read again (a key rotation is one edit of it and a
/// reload per step on every node: add the new key, make it first, remove
/// the old one). Gossip, rpc and discovery take the keys at once; a file
/// that does not parse leaves the running keys. Returns whether the keys
/// were taken.
fn reload_keyring(security: &PacketSecurity, running: &NodeConfig, fresh: &NodeConfig) -> bool {
    let PacketSecurity::Encrypted(keyring) = security else {
        if fresh.gossip.key_file != running.gossip.key_file {
            warn!("gossip runs without encryption: turning it on takes a restart");
        }
        return false;
    };
    match super::membership::packet_security(fresh) {
        Ok(PacketSecurity::Encrypted(keys)) => {
            keyring.replace(&keys);
            info!(keys = keyring.len(), "gossip keyring reloaded");
            true
        }
        Ok(PacketSecurity::Plaintext) => {
            warn!("the reloaded config has no gossip key: the running keyring stays (turning encryption off takes a restart)");
            false
        }
        Err(e) => {
            warn!("reload: the running gossip keyring stays: {e}");
            false
        }
    }
}

/// The settings that differ and are bound at start. The running config
/// keeps its values for them, so `status` tells what really runs.
fn needs_restart(running: &NodeConfig, fresh: &NodeConfig) -> Vec<&'static str> {
    [
        ("node", running.node != fresh.node),
        ("cluster", running.cluster != fresh.cluster),
        ("bind", running.bind != fresh.bind),
        ("advertise", running.advertise != fresh.advertise),
        ("data_dir", running.data_dir != fresh.data_dir),
        // The watcher and the apply follower hold the path from the start.
        ("topology", running.topology != fresh.topology),
        ("join", running.join != fresh.join),
        // SWIM timings are handed to membership at start (the keyring is
        // reloaded, see `reload_keyring`).
        ("gossip", {
            let mut timings = fresh.gossip.clone();
            timings.key_file = running.gossip.key_file.clone();
            timings != running.gossip
        }),
        ("api", running.api != fresh.api),
        ("log.format", running.log.format != fresh.log.format),
        ("events", running.event_handlers != fresh.event_handlers),
        ("discovery", running.discovery != fresh.discovery),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_the_changed_settings_bound_at_start() {
        let running = NodeConfig::dev_defaults();
        let mut fresh = running.clone();
        assert!(needs_restart(&running, &fresh).is_empty());
        fresh.log.level = "debug".into();
        assert!(needs_restart(&running, &fresh).is_empty(), "taken live");
        fresh.bind = "127.0.0.1:1".parse().unwrap();
        fresh.topology = "/elsewhere.yaml".into();
        fresh.gossip.protocol_period = std::time::Duration::from_secs(2);
        fresh.api.http = None;
        assert_eq!(
            needs_restart(&running, &fresh),
            ["bind", "topology", "gossip", "api"]
        );
    }
}
