//! Routing keys to replica sets (issue 9, item 6): weighted rendezvous
//! hashing spreads keys by weight and moves the fewest keys when a set
//! comes or goes; the topology's `weight` field; and `cohort route` / `GET
//! /v1/route` on real agents, answering with the set's current master.

mod cluster;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cluster::{node, Cluster};
use cohort::config::Topology;
use cohort::routing::pick;
use proptest::prelude::*;

const KEYS: usize = 100_000;

fn keys() -> impl Iterator<Item = String> {
    (0..KEYS).map(|i| format!("user:{i}"))
}

fn spread(sets: &[(&str, f64)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for key in keys() {
        let set = pick(key.as_bytes(), sets.iter().copied()).expect("a set");
        *counts.entry(set.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Every set's share is within ±5 % of its weight's share.
fn assert_within_5_percent(sets: &[(&str, f64)], counts: &BTreeMap<String, usize>) {
    let total: f64 = sets.iter().map(|(_, w)| w).sum();
    for (name, weight) in sets {
        let expected = KEYS as f64 * weight / total;
        let got = counts.get(*name).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() <= 0.05 * expected,
            "set {name} (weight {weight}) got {got} keys, expected {expected} ± 5 %: {counts:?}"
        );
    }
}

#[test]
fn a_hundred_thousand_keys_spread_over_four_equal_sets_within_5_percent() {
    let sets = [("s1", 1.0), ("s2", 1.0), ("s3", 1.0), ("s4", 1.0)];
    assert_within_5_percent(&sets, &spread(&sets));
}

#[test]
fn a_hundred_thousand_keys_spread_over_four_weighted_sets_within_5_percent() {
    let sets = [("s1", 1.0), ("s2", 2.0), ("s3", 3.0), ("s4", 4.0)];
    assert_within_5_percent(&sets, &spread(&sets));
    let sets = [("a", 0.5), ("b", 1.0), ("c", 1.0), ("d", 2.5)];
    assert_within_5_percent(&sets, &spread(&sets));
}

/// Adding a set moves the keys it wins, and only those: none moves
/// between the old sets.
fn moves_when_adding(old: &[(&str, f64)], added: (&str, f64)) -> usize {
    let mut new = old.to_vec();
    new.push(added);
    let mut moved = 0;
    for key in keys() {
        let before = pick(key.as_bytes(), old.iter().copied()).expect("a set");
        let after = pick(key.as_bytes(), new.iter().copied()).expect("a set");
        if before != after {
            assert_eq!(
                after, added.0,
                "key {key} moved from {before} to {after}, an old set"
            );
            moved += 1;
        }
    }
    moved
}

#[test]
fn adding_a_fifth_set_moves_about_a_fifth_of_the_keys_and_none_between_old_sets() {
    let old = [("s1", 1.0), ("s2", 1.0), ("s3", 1.0), ("s4", 1.0)];
    let moved = moves_when_adding(&old, ("s5", 1.0));
    let fifth = KEYS as f64 / 5.0;
    assert!(
        (moved as f64 - fifth).abs() <= 0.05 * fifth,
        "{moved} keys moved, expected about {fifth}"
    );
}

#[test]
fn adding_a_weighted_set_moves_its_weights_share() {
    let old = [("s1", 1.0), ("s2", 2.0), ("s3", 3.0), ("s4", 4.0)];
    let moved = moves_when_adding(&old, ("s5", 2.5));
    let share = KEYS as f64 * 2.5 / 12.5;
    assert!(
        (moved as f64 - share).abs() <= 0.05 * share,
        "{moved} keys moved, expected about {share}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Removing a set moves only its own keys; adding one moves keys only
    /// to it; raising one set's weight moves keys only to that set.
    #[test]
    fn keys_move_only_where_they_must(
        weights in prop::collection::vec(0.05f64..20.0, 1..8),
        added in 0.05f64..20.0,
        raise in 1.0f64..5.0,
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..200),
    ) {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("set-{i}")).collect();
        let old: Vec<(&str, f64)> = names.iter().map(String::as_str).zip(weights.iter().copied()).collect();
        let mut grown = old.clone();
        grown.push(("new", added));
        let mut raised = old.clone();
        raised[0].1 *= raise;
        for key in &keys {
            let before = pick(key, old.iter().copied()).unwrap();
            let after = pick(key, grown.iter().copied()).unwrap();
            prop_assert!(after == before || after == "new");
            // Removing `new` again is the same as never having added it.
            let without: Vec<(&str, f64)> = grown.iter().copied().filter(|(n, _)| *n != after || after != "new").collect();
            prop_assert_eq!(pick(key, without.iter().copied()).unwrap(), before);
            let now = pick(key, raised.iter().copied()).unwrap();
            prop_assert!(now == before || now == old[0].0);
        }
    }

    /// A set of weight 0 gets nothing, and a key always finds a set while
    /// one has a positive weight.
    #[test]
    fn a_drained_set_gets_no_key(
        weights in prop::collection::vec(0.0f64..5.0, 1..6),
        key in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("s{i}")).collect();
        let mut sets: Vec<(&str, f64)> = names.iter().map(String::as_str).zip(weights.iter().copied()).collect();
        sets.push(("drained", 0.0));
        let got = pick(&key, sets.iter().copied());
        prop_assert_ne!(got, Some("drained"));
        prop_assert_eq!(got.is_some(), weights.iter().any(|w| *w > 0.0));
    }
}

// ---- the topology's `weight` ------------------------------------------

const TWO_SETS: &str = "cluster: orders
replicasets:
  s1:
    nodes:
      a: { address: 127.0.0.1:3301 }
  s2:
    WEIGHT
    nodes:
      b: { address: 127.0.0.1:3302 }
";

fn parse_with_weight(weight_line: &str) -> Result<Topology, Vec<String>> {
    let text = TWO_SETS.replace("WEIGHT", weight_line);
    Topology::parse(&text, Path::new("topology.yaml"))
        .map_err(|d| d.to_string().lines().map(str::to_string).collect())
}

fn weights(topology: &Topology) -> Vec<(String, f64)> {
    topology
        .replicasets
        .value
        .iter()
        .map(|(name, set)| (name.value.clone(), set.weight()))
        .collect()
}

#[test]
fn weight_defaults_to_1_and_takes_numbers_from_0_up() {
    let t = parse_with_weight("roles: []").unwrap();
    assert_eq!(weights(&t), [("s1".into(), 1.0), ("s2".into(), 1.0)]);
    for (line, expected) in [
        ("weight: 3", 3.0),
        ("weight: 0.25", 0.25),
        ("weight: 0", 0.0),
        ("weight: 1e3", 1000.0),
    ] {
        let t = parse_with_weight(line).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        assert_eq!(weights(&t)[1].1, expected, "{line}");
    }
}

#[test]
fn a_bad_weight_is_reported_at_its_value() {
    let cases = [
        (
            "weight: -1",
            "topology.yaml:7:13: weight -1 is invalid: use a number from 0 up (1 when absent; 0 takes the set out of routing)",
        ),
        (
            "weight: heavy",
            "topology.yaml:7:13: weight must be a number from 0 up (1 when absent; 0 takes the set out of routing)",
        ),
        (
            "weight: .inf",
            "topology.yaml:7:13: weight inf is invalid: use a number from 0 up (1 when absent; 0 takes the set out of routing)",
        ),
        (
            "weight: [1]",
            "topology.yaml:7:13: weight must be a number from 0 up (1 when absent; 0 takes the set out of routing)",
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(parse_with_weight(line).unwrap_err(), [expected], "{line}");
    }
}

#[test]
fn every_set_drained_is_an_error_at_the_first_weight() {
    let text = "cluster: orders
replicasets:
  s1:
    weight: 0
    nodes:
      a: { address: 127.0.0.1:3301 }
  s2:
    nodes:
      b: { address: 127.0.0.1:3302 }
    weight: 0.0
";
    let problems = Topology::parse(text, Path::new("topology.yaml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        problems,
        "topology.yaml:4:13: every replica set has weight 0: routing would have no set for any key; give at least one a weight above 0"
    );
}

#[test]
fn the_packaged_example_topology_still_validates_with_weights_1() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/topology.example.yaml");
    let t = Topology::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(weights(&t).iter().all(|(_, w)| *w == 1.0));
}

// ---- real agents ---------------------------------------------------------

/// Everything but RFC 3986's unreserved characters as `%XX`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Cluster {
    /// `GET /v1/route?key=KEY` on node `i`, as JSON.
    fn route(&self, i: usize, key: &str) -> serde_json::Value {
        let (code, body) = self.get_raw(i, &format!("/v1/route?key={}", encode(key)));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Four agents in two replica sets of weights 1 and 3, failover `raft`:
/// `cohort route` and `GET /v1/route` answer on every node with the set
/// the pure function picks and the master Raft appointed, at its topology
/// address, and follow the master when an operator promotes another node.
#[test]
fn route_answers_with_the_set_and_its_current_master() {
    let started = std::time::Instant::now();
    let cluster = Cluster::start(
        &[
            node("a1", "s1", "candidate"),
            node("a2", "s1", "candidate"),
            node("b1", "s2", "candidate"),
            node("b2", "s2", "off"),
        ],
        &[("s1", 1.0), ("s2", 3.0)],
    );
    cluster.wait_masters(&["s1", "s2"]);
    eprintln!("cluster up after {:?}", started.elapsed());

    let sets = [("s1", 1.0), ("s2", 3.0)];
    let mut seen = BTreeMap::new();
    for i in 0..40 {
        let key = format!("order/{i} ü&=?+");
        let expected = pick(key.as_bytes(), sets).unwrap();
        let answer = cluster.route(i % 4, &key);
        assert_eq!(answer["key"], key.as_str(), "{answer}");
        assert_eq!(answer["replicaset"], expected, "{key}: {answer}");
        assert_eq!(answer["config_version"], 1, "{answer}");
        let master = answer["master"]["name"].as_str().expect("a master");
        let members: &[&str] = if expected == "s1" {
            &["a1", "a2"]
        } else {
            &["b1", "b2"]
        };
        assert!(members.contains(&master), "{answer}");
        assert_eq!(
            answer["master"]["address"],
            cluster.gossip_addr(master).to_string()
        );
        assert_eq!(answer["master"]["status"], "alive", "{answer}");
        seen.insert(expected.to_string(), master.to_string());
    }
    assert_eq!(seen.len(), 2, "40 keys all went to one set: {seen:?}");

    // The CLI, in text and JSON.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| pick(k.as_bytes(), sets) == Some("s1"))
        .unwrap();
    let master = cluster.route(1, &key)["master"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cluster.cli(1, &["route", &key]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("replicaset  s1 (weight 1)\n"), "{text}");
    assert!(
        text.contains(&format!(
            "master      {master} at {} (alive, generation ",
            cluster.gossip_addr(&master)
        )),
        "{text}"
    );
    let out = cluster.cli(2, &["--format", "json", "route", &key]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["master"]["name"], master.as_str());
    assert_eq!(json["replicaset"], "s1");

    // Promote the other node of s1: every node's route follows.
    let other = if master == "a1" { "a2" } else { "a1" };
    let out = cluster.cli(0, &["failover", "promote", "s1", other]);
    assert!(out.status.success(), "{out:?}");
    for i in 0..4 {
        support::wait_until(
            Duration::from_secs(30),
            "every node's route names the promoted master",
            || (cluster.route(i, &key)["master"]["name"] == other).then_some(()),
        );
    }

    // No key: 400 with a code.
    let (code, body) = cluster.get_raw(0, "/v1/route");
    assert_eq!(code, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "rejected", "{body}");
    eprintln!("route test took {:?}", started.elapsed());
}

/// An agent whose topology file is broken commits nothing: it says so
/// (503 `unavailable`), and `cohort route` fails with that message.
#[test]
fn route_without_a_committed_topology_says_so() {
    let root = tempfile::tempdir().unwrap();
    let mut agent = support::agents::Agent::new(root.path(), "lonely");
    agent.write_config(&support::agents::Config::default());
    std::fs::write(&agent.topology, "cluster: test\nreplicasets: {}\n").unwrap();
    agent.start(cluster::WAIT);
    let (code, body) = support::http(agent.api(), "GET", "/v1/route?key=x").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"code\":\"unavailable\""), "{body}");
    assert!(body.contains("no topology is committed yet"), "{body}");
    let out = support::cohort()
        .args(["--api", &agent.api().to_string(), "route", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no topology is committed yet"), "{stderr}");
    agent.stop(Duration::from_secs(10));
}
