//! Broken config files get every problem reported as `FILE:LINE:COLUMN:
//! message`, pointing at the offending key; good files validate.

use std::path::Path;

use cohort::config::{self, FileKind, NodeConfig, Topology};

/// One broken file and the exact report it must produce.
struct Case {
    name: &'static str,
    kind: FileKind,
    text: &'static str,
    expected: &'static [&'static str],
}

const fn topology(
    name: &'static str,
    text: &'static str,
    expected: &'static [&'static str],
) -> Case {
    Case {
        name,
        kind: FileKind::Topology,
        text,
        expected,
    }
}

const fn node(name: &'static str, text: &'static str, expected: &'static [&'static str]) -> Case {
    Case {
        name,
        kind: FileKind::Node,
        text,
        expected,
    }
}

const CASES: &[Case] = &[
    topology(
        "tab indentation",
        "cluster: orders\nreplicasets:\n\ts1:\n\t\tnodes: {}\n",
        &["topology.yaml:3:1: tab character in indentation; YAML indents with spaces"],
    ),
    topology(
        "duplicate key (the same node twice in one set)",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n      a: { address: 127.0.0.1:3302 }\n",
        &["topology.yaml:6:7: duplicate key `a` (first at line 5)"],
    ),
    topology(
        "duplicate top-level key",
        "cluster: orders\ncluster: billing\nreplicasets: {}\n",
        &["topology.yaml:2:1: duplicate key `cluster` (first at line 1)"],
    ),
    topology(
        "node in two replica sets",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n  s2:\n    nodes:\n      a: { address: 127.0.0.1:3302 }\n",
        &["topology.yaml:8:7: node `a` is already in replica set `s1`; a node belongs to exactly one replica set"],
    ),
    topology(
        "duplicate address",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n      b: { address: 127.0.0.1:3301 }\n",
        &["topology.yaml:6:21: address 127.0.0.1:3301 is already used by node `a`"],
    ),
    topology(
        "unknown field",
        "cluster: orders\nreplicasets:\n  s1:\n    rolez: [storage]\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n",
        &["topology.yaml:4:5: unknown field `rolez`, did you mean `roles`?"],
    ),
    topology(
        "unknown field far from any",
        "cluster: orders\nweather: sunny\nreplicasets: {}\n",
        &["topology.yaml:2:1: unknown field `weather`, expected one of: cluster, failover, replicasets, expelled, roles, cluster_up_at"],
    ),
    topology(
        "unknown role",
        "cluster: orders\nreplicasets:\n  s1:\n    roles: [storage, htp]\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n",
        &["topology.yaml:4:22: unknown role `htp`: not built in (http, router, storage) and not defined under `roles:` with an `exec` path, did you mean `http`?"],
    ),
    topology(
        "external role without exec",
        "cluster: orders\nreplicasets:\n  s1:\n    roles: [billing]\n    nodes:\n      a: { address: 127.0.0.1:3301 }\nroles:\n  billing: { depends: [storage] }\n",
        &["topology.yaml:8:3: role `billing` is not built in (http, router, storage), so it needs `exec: /path/to/executable`"],
    ),
    topology(
        "dependency on an unknown role",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301 }\nroles:\n  billing: { exec: /usr/lib/billing, depends: [storag] }\n",
        &["topology.yaml:7:48: role `billing` depends on unknown role `storag`, did you mean `storage`?"],
    ),
    topology(
        "dependency cycle",
        "cluster: orders\nreplicasets:\n  s1:\n    roles: [a]\n    nodes:\n      n: { address: 127.0.0.1:3301 }\nroles:\n  a: { exec: /bin/a, depends: [b] }\n  b: { exec: /bin/b, depends: [c] }\n  c: { exec: /bin/c, depends: [a] }\n",
        &["topology.yaml:8:3: role dependency cycle: a -> b -> c -> a"],
    ),
    topology(
        "bad duration",
        "cluster: orders\nfailover: { mode: disabled, election_timeout: 1sec }\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n",
        &["topology.yaml:2:47: invalid duration `1sec`: expected a number with a unit, like `1s`, `500ms`, `2m` or `1m30s` (units: ms, s, m, h)"],
    ),
    topology(
        "address port out of range",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:70000 }\n",
        &["topology.yaml:5:21: address `127.0.0.1:70000`: port 70000 is out of range 1-65535"],
    ),
    topology(
        "address without a port",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: localhost }\n",
        &["topology.yaml:5:21: address `localhost` is not an address: write `ip:port`, like `10.0.0.1:3301`"],
    ),
    topology(
        "http port out of range",
        "cluster: orders\nreplicasets:\n  s1:\n    roles: [http]\n    nodes:\n      a: { address: 127.0.0.1:3301 }\nroles:\n  http: { listen: { a: 0 } }\n",
        &["topology.yaml:8:24: port 0 is out of range 1-65535"],
    ),
    topology(
        "two nodes of one host on one http port",
        "cluster: orders\nreplicasets:\n  s1:\n    roles: [http]\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n      b: { address: 127.0.0.1:3302 }\nroles:\n  http:\n    listen: { a: 8080, b: 8080 }\n",
        &["topology.yaml:10:27: roles.http.listen: port 8080 on host 127.0.0.1 is already taken by node `a`"],
    ),
    topology(
        "failover_priority names a non-member",
        "cluster: orders\nreplicasets:\n  s1:\n    failover_priority: [a, bb]\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n      b: { address: 127.0.0.1:3302 }\n",
        &["topology.yaml:4:28: failover_priority: `bb` is not a node of replica set `s1`, did you mean `b`?"],
    ),
    topology(
        "raft without a candidate",
        "cluster: orders\nfailover:\n  mode: raft\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301, election: voter }\n",
        &["topology.yaml:3:9: failover mode `raft` needs at least one node with `election: candidate`"],
    ),
    topology(
        "unknown election value",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301, election: leader }\n",
        &["topology.yaml:5:47: unknown value `leader`, expected one of: candidate, voter, off"],
    ),
    topology(
        "expelled node still listed",
        "cluster: orders\nreplicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n      old: { address: 127.0.0.1:3302 }\nexpelled: [old]\n",
        &["topology.yaml:6:7: node `old` is expelled but still listed in replica set `s1`; remove it from one of them"],
    ),
    topology("empty file", "", &["topology.yaml:1:1: the file is empty; expected a mapping of settings"]),
    topology(
        "only comments",
        "# nothing here yet\n\n",
        &["topology.yaml:1:1: the file is empty; expected a mapping of settings"],
    ),
    topology("not a mapping", "- a\n- b\n", &["topology.yaml:1:1: expected a mapping (`key: value` lines)"]),
    topology(
        "wrong type for cluster",
        "cluster: [orders, billing]\nreplicasets: {}\n",
        &["topology.yaml:1:10: expected a text value, not a list or mapping"],
    ),
    topology("missing replicasets", "cluster: orders\n", &["topology.yaml:1:1: missing field `replicasets`"]),
    topology(
        "no replica sets",
        "cluster: orders\nreplicasets: {}\n",
        &["topology.yaml:2:14: replicasets: at least one replica set with one node is needed"],
    ),
    topology(
        "unclosed flow mapping",
        "cluster: orders\nreplicasets: {\n",
        &["topology.yaml:2:14: unclosed bracket '{'"],
    ),
    topology(
        "invalid names",
        "cluster: my cluster\nreplicasets:\n  s1:\n    nodes:\n      -bad: { address: 127.0.0.1:3301 }\n",
        &[
            "topology.yaml:1:10: cluster name `my cluster` is invalid: use 1 to 63 letters, digits, `-`, `_` or `.`, starting with a letter or digit",
            "topology.yaml:5:7: node name `-bad` is invalid: use 1 to 63 letters, digits, `-`, `_` or `.`, starting with a letter or digit",
        ],
    ),
    topology(
        "every problem, not just the first",
        "cluster: orders\nfailover: { mode: raft }\nreplicasets:\n  s1:\n    roles: [storage, htp]\n    failover_priority: [zz]\n    nodes:\n      a: { address: 127.0.0.1:3301 }\n      b: { address: 127.0.0.1:3301 }\n",
        &[
            "topology.yaml:2:19: failover mode `raft` needs at least one node with `election: candidate`",
            "topology.yaml:5:22: unknown role `htp`: not built in (http, router, storage) and not defined under `roles:` with an `exec` path, did you mean `http`?",
            "topology.yaml:6:25: failover_priority: `zz` is not a node of replica set `s1`",
            "topology.yaml:9:21: address 127.0.0.1:3301 is already used by node `a`",
        ],
    ),
    node(
        "node: unknown field",
        "node: a\nclster: orders\n",
        &["cohort.yaml:2:1: unknown field `clster`, did you mean `cluster`?"],
    ),
    node(
        "node: bind port out of range",
        "bind: 0.0.0.0:99999\n",
        &["cohort.yaml:1:7: bind: `0.0.0.0:99999`: port 99999 is out of range 1-65535"],
    ),
    node(
        "node: duration without a unit",
        "gossip:\n  protocol_period: 1\n",
        &["cohort.yaml:2:20: invalid duration `1`: expected a number with a unit, like `1s`, `500ms`, `2m` or `1m30s` (units: ms, s, m, h)"],
    ),
    node(
        "node: ack timeout not shorter than the period",
        "gossip:\n  protocol_period: 1s\n  ack_timeout: 2s\n",
        &["cohort.yaml:3:16: gossip.ack_timeout (2s) must be shorter than gossip.protocol_period (1s)"],
    ),
    node(
        "node: a period not longer than the default ack timeout",
        "gossip:\n  protocol_period: 500ms\n",
        &["cohort.yaml:2:20: gossip.protocol_period (500ms) must be longer than gossip.ack_timeout (500ms, its default): set gossip.ack_timeout shorter, e.g. 250ms"],
    ),
    node(
        "node: a zero ack timeout",
        "gossip:\n  ack_timeout: 0s\n",
        &["cohort.yaml:2:16: gossip.ack_timeout must be greater than 0s"],
    ),
    node(
        "node: unspecified advertise address",
        "advertise: 0.0.0.0:3301\n",
        &["cohort.yaml:1:12: advertise: `0.0.0.0:3301` cannot be dialled by peers; give this node's reachable IP"],
    ),
    node(
        "node: relative data dir",
        "data_dir: var/lib/cohort\n",
        &["cohort.yaml:1:11: data_dir: `var/lib/cohort` must be an absolute path"],
    ),
    node(
        "node: bad join seeds, all reported",
        "join: [\"10.0.0.1\", \"dns:cohort.internal:3301\", \"h:0\"]\n",
        &[
            "cohort.yaml:1:8: join: `10.0.0.1` needs a port: write `host:port` or `dns:name:port`",
            "cohort.yaml:1:48: join: `h:0`: port 0 is out of range 1-65535",
        ],
    ),
    node(
        "node: unknown log format",
        "log: { format: xml }\n",
        &["cohort.yaml:1:16: unknown value `xml`, expected one of: auto, text, json, journald"],
    ),
    node(
        "node: bad log filter",
        "log: { level: \"info,,=x\" }\n",
        &["cohort.yaml:1:15: log.level: `info,,=x` is not a log filter (invalid filter directive); use error, warn, info, debug or trace"],
    ),
    node(
        "node: reclaim time neither a duration nor never",
        "gossip:\n  reclaim_after: sometimes\n",
        &["cohort.yaml:2:18: invalid duration `sometimes`: expected a number with a unit, like `1s`, `500ms`, `2m` or `1m30s` (units: ms, s, m, h), or `never`"],
    ),
    node(
        "node: packet size out of range",
        "gossip: { max_packet_size: 100 }\n",
        &["cohort.yaml:1:28: gossip.max_packet_size 100 is out of range 512-65507"],
    ),
    node(
        "node: event handler with a relative path",
        "events:\n  handlers:\n    - { event: deploy, exec: bin/deploy }\n",
        &["cohort.yaml:3:30: events.handlers.exec: `bin/deploy` must be an absolute path"],
    ),
    node(
        "node: multicast group that is not a multicast address",
        "discovery:\n  multicast:\n    enabled: true\n    group: 10.0.0.1:3300\n",
        &["cohort.yaml:4:12: discovery.multicast.group: `10.0.0.1:3300` is not an IPv4 multicast address (224.0.0.0-239.255.255.255); use one like `239.255.43.1:3300`"],
    ),
    node(
        "node: IPv6 multicast group",
        "discovery: { multicast: { group: \"[ff02::1]:3300\" } }\n",
        &["cohort.yaml:1:34: discovery.multicast.group: `[ff02::1]:3300` is not an IPv4 multicast address (224.0.0.0-239.255.255.255); use one like `239.255.43.1:3300`"],
    ),
    node(
        "node: multicast group without a port",
        "discovery: { multicast: { group: 239.255.43.1 } }\n",
        &["cohort.yaml:1:34: discovery.multicast.group: `239.255.43.1` is not an address: write `ip:port`, like `10.0.0.1:3301`"],
    ),
    node(
        "node: multicast interval too short",
        "discovery:\n  multicast:\n    interval: 10ms\n",
        &["cohort.yaml:3:15: discovery.multicast.interval 10ms is below the minimum of 100ms"],
    ),
    node(
        "node: multicast interval without a unit",
        "discovery:\n  multicast:\n    interval: 5\n",
        &["cohort.yaml:3:15: invalid duration `5`: expected a number with a unit, like `1s`, `500ms`, `2m` or `1m30s` (units: ms, s, m, h)"],
    ),
    node(
        "node: multicast interface given by name",
        "discovery:\n  multicast:\n    interface: eth0\n",
        &["cohort.yaml:3:16: discovery.multicast.interface: `eth0` is not an IPv4 address; give a local IPv4 address of the interface (like 10.0.0.11), or 0.0.0.0 to let the routing table choose"],
    ),
    node(
        "node: unknown multicast field",
        "discovery:\n  multicast:\n    enable: true\n",
        &["cohort.yaml:3:5: unknown field `enable`, did you mean `enabled`?"],
    ),
    node(
        "node: unknown discovery section",
        "discovery:\n  multicst: {}\n",
        &["cohort.yaml:2:3: unknown field `multicst`, did you mean `multicast`?"],
    ),
    node("node: not a mapping", "just words\n", &["cohort.yaml:1:1: expected a mapping (`key: value` lines)"]),
];

fn report(kind: FileKind, text: &str) -> Vec<String> {
    let result = match kind {
        FileKind::Topology => Topology::parse(text, Path::new("topology.yaml")).map(drop),
        FileKind::Node => {
            NodeConfig::parse(text, Path::new("cohort.yaml"), NodeConfig::defaults()).map(drop)
        }
    };
    match result {
        Ok(()) => Vec::new(),
        Err(diagnostics) => diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn broken_files_are_reported_at_the_offending_key() {
    assert!(CASES.len() >= 15);
    let mut failures = Vec::new();
    for case in CASES {
        let got = report(case.kind, case.text);
        if got != case.expected {
            failures.push(format!(
                "case `{}`:\n  expected: {:#?}\n  got:      {:#?}",
                case.name, case.expected, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_example_files_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    config::validate_file(FileKind::Node, &root.join("packaging/cohort.yaml"))
        .expect("the packaged node config is valid");
    config::validate_file(
        FileKind::Topology,
        &root.join("packaging/topology.example.yaml"),
    )
    .expect("the example topology is valid");
}

#[test]
fn a_good_topology_keeps_file_order_and_positions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("packaging/topology.example.yaml");
    let topology = Topology::load(&path).expect("valid");
    let names: Vec<&str> = topology.nodes().map(|n| n.name).collect();
    assert_eq!(names, ["s1-a", "s1-b", "s1-c", "r1"]);
    let r1 = topology.node("r1").expect("r1 is listed");
    assert_eq!(r1.replicaset, "router-1");
    assert_eq!(r1.spec.election, config::Election::Off);
    assert_eq!(r1.spec.address.value.0.to_string(), "10.0.0.21:3301");
    // Every listed node is found where it is listed, and nothing else.
    for n in topology.nodes() {
        let found = topology.node(n.name).expect("listed");
        assert_eq!((found.name, found.replicaset), (n.name, n.replicaset));
    }
    assert!(topology.node("r2").is_none());
    assert!(topology.node("").is_none());
    assert_eq!(
        topology.election_timeout(),
        std::time::Duration::from_secs(1)
    );
    assert_eq!(topology.failover.mode.value, config::FailoverMode::Raft);
}

#[test]
fn node_config_fills_defaults_and_keeps_what_the_file_says() {
    let text = "node: s1-a\ncluster: orders\nbind: 0.0.0.0:3301\nadvertise: 10.0.0.11:3301\njoin: [10.0.0.12:3301, \"dns:cohort.internal:3301\", seed.example:3301]\ngossip: { protocol_period: 500ms, ack_timeout: 200ms, reclaim_after: never }\napi: { http: null }\nevents: { handlers: [{ event: \"*\", exec: /usr/bin/logger }] }\n";
    let config =
        NodeConfig::parse(text, Path::new("cohort.yaml"), NodeConfig::defaults()).expect("valid");
    assert_eq!(config.node, "s1-a");
    assert_eq!(config.advertise_addr().to_string(), "10.0.0.11:3301");
    let seeds: Vec<String> = config.join.iter().map(|j| j.to_string()).collect();
    assert_eq!(
        seeds,
        [
            "10.0.0.12:3301",
            "dns:cohort.internal:3301",
            "seed.example:3301"
        ]
    );
    assert_eq!(
        config.gossip.protocol_period,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(config.api.http, None, "`http: null` switches the API off");
    assert_eq!(
        config.gossip.reclaim_after, None,
        "`never` keeps dead members"
    );
    assert_eq!(config.event_handlers[0].event, "*");
    // Unset fields keep the defaults.
    assert_eq!(config.data_dir, NodeConfig::defaults().data_dir);
    assert_eq!(
        config.gossip.key_file,
        NodeConfig::defaults().gossip.key_file
    );
}

#[test]
fn multicast_discovery_is_off_by_default_and_reads_every_setting() {
    let defaults = NodeConfig::defaults().discovery.multicast;
    assert!(!defaults.enabled, "multicast discovery is off by default");
    assert_eq!(defaults.group.to_string(), "239.255.43.1:3300");
    assert_eq!(defaults.interval, std::time::Duration::from_secs(5));
    assert!(defaults.interface.is_unspecified());
    assert!(!NodeConfig::dev_defaults().discovery.multicast.enabled);

    let text = "discovery:\n  multicast:\n    enabled: true\n    group: 239.1.2.3:4000\n    interval: 1s500ms\n    interface: 10.0.0.11\n";
    let config =
        NodeConfig::parse(text, Path::new("cohort.yaml"), NodeConfig::defaults()).expect("valid");
    let multicast = config.discovery.multicast;
    assert!(multicast.enabled);
    assert_eq!(multicast.group.to_string(), "239.1.2.3:4000");
    assert_eq!(multicast.interval, std::time::Duration::from_millis(1500));
    assert_eq!(multicast.interface.to_string(), "10.0.0.11");

    let only_enabled = NodeConfig::parse(
        "discovery: { multicast: { enabled: true } }\n",
        Path::new("cohort.yaml"),
        NodeConfig::defaults(),
    )
    .expect("valid");
    assert_eq!(
        only_enabled.discovery.multicast.group, defaults.group,
        "unset settings keep their defaults"
    );
}

#[test]
fn an_empty_node_config_means_all_defaults() {
    let config = NodeConfig::parse(
        "# all defaults\n",
        Path::new("cohort.yaml"),
        NodeConfig::defaults(),
    )
    .expect("a file of comments is valid");
    assert_eq!(config, NodeConfig::defaults());
}

#[test]
fn validate_file_names_an_unreadable_file() {
    let err = config::validate_file(FileKind::Topology, Path::new("/nonexistent/topology.yaml"))
        .expect_err("missing file");
    assert_eq!(
        err.to_string(),
        "cannot read /nonexistent/topology.yaml: No such file or directory"
    );
}
