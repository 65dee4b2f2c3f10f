//! How the agent was asked to start: a config file or the dev defaults,
//! then command-line settings that win over both. Read again on SIGHUP, so
//! a reload sees the same precedence as the start.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, LogFormat, NodeConfig, DEFAULT_CONFIG_PATH};

use super::AgentError;

#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub node: Option<String>,
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub topology: Option<PathBuf>,
    pub api_http: Option<SocketAddr>,
    /// The API's unix socket (cohort@NAME gives each instance its own).
    pub api_socket: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
}

impl AgentOptions {
    /// The file the node config comes from: `--config`, else the packaged
    /// path, except with `--dev`, which needs none.
    pub fn config_file(&self) -> Option<&Path> {
        match (&self.config, self.dev) {
            (Some(path), _) => Some(path),
            (None, true) => None,
            (None, false) => Some(Path::new(DEFAULT_CONFIG_PATH)),
        }
    }

    /// The node config these options describe, read afresh.
    pub fn load_config(&self) -> Result<NodeConfig, AgentError> {
        let base = if self.dev {
            NodeConfig::dev_defaults()
        } else {
            NodeConfig::defaults()
        };
        let mut config = match self.config_file() {
            Some(path) => load_file(path, base, self.dev)?,
            None => base,
        };
        if let Some(node) = &self.node {
            config.node = node.clone();
        }
        if let Some(bind) = self.bind {
            config.bind = bind;
        }
        if let Some(dir) = &self.data_dir {
            // The dev topology lives with the dev state; a file says where
            // its own topology is.
            if self.dev && self.config.is_none() {
                config.topology = dir.join("topology.yaml");
            }
            config.data_dir = dir.clone();
        }
        if let Some(topology) = &self.topology {
            config.topology = topology.clone();
        }
        if let Some(api) = self.api_http {
            config.api.http = Some(api);
        }
        if let Some(path) = &self.api_socket {
            config.api.socket = Some(crate::config::ApiSocket {
                path: path.clone(),
                explicit: true,
            });
        }
        // A dev node's default socket lives with its state, wherever that is.
        if self.dev {
            if let Some(socket) = config.api.socket.as_mut().filter(|s| !s.explicit) {
                socket.path = config.data_dir.join("api.sock");
            }
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        Ok(config)
    }
}

/// A missing file gets advice; other problems are reported as they are.
fn load_file(path: &Path, base: NodeConfig, dev: bool) -> Result<NodeConfig, AgentError> {
    NodeConfig::load(path, base).map_err(|e| match e {
        ConfigError::Read { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
            AgentError::NoConfigFile {
                path: path.to_path_buf(),
                dev,
            }
        }
        e => AgentError::Config(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_settings_win_over_the_dev_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let options = AgentOptions {
            dev: true,
            data_dir: Some(dir.path().to_path_buf()),
            bind: Some("127.0.0.1:4000".parse().unwrap()),
            log_level: Some("debug".into()),
            ..AgentOptions::default()
        };
        let config = options.load_config().unwrap();
        assert_eq!(config.data_dir, dir.path());
        assert_eq!(config.topology, dir.path().join("topology.yaml"));
        let elsewhere = AgentOptions {
            topology: Some("/etc/cohort/a/topology.yaml".into()),
            ..options.clone()
        };
        let config = elsewhere.load_config().unwrap();
        assert_eq!(
            config.topology,
            Path::new("/etc/cohort/a/topology.yaml"),
            "--topology wins"
        );
        assert_eq!(config.bind.port(), 4000);
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.node, "dev");
    }

    #[test]
    fn a_missing_file_suggests_dev_only_when_dev_is_not_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.yaml");
        let mut options = AgentOptions {
            config: Some(path.clone()),
            ..AgentOptions::default()
        };
        let plain = options.load_config().unwrap_err().to_string();
        assert!(
            plain.ends_with("or --dev to run a local node without one"),
            "{plain}"
        );
        options.dev = true;
        let dev = options.load_config().unwrap_err().to_string();
        assert_eq!(dev, format!("cannot read {}: no such file", path.display()));
    }
}
