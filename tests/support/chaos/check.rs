//! The invariants checked after each schedule, over what the client and
//! the observers recorded during it and what every node says once healed
//! and settled. Pure functions of the records, so each can be shown to
//! catch what it is meant to (the unit tests plant violations).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// One status read of one node (`GET /v1/status`).
#[derive(Clone, Debug, Default)]
pub struct Obs {
    /// Milliseconds after the schedule started.
    pub at_ms: u64,
    pub node: String,
    /// The committed topology version and hash the node reports.
    pub version: Option<u64>,
    pub hash: Option<String>,
    pub term: Option<u64>,
    pub leader: Option<String>,
    /// Each replica set's master and fencing generation.
    pub masters: BTreeMap<String, (String, u64)>,
}

/// How one `cohort apply --wait` ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        version: u64,
        hash: String,
    },
    /// The coordinator answered `aborted`: the text must never commit.
    Aborted(String),
    /// No answer, a timeout, or an answer without a decision: the text
    /// may or may not commit.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Apply {
    pub at_ms: u64,
    /// The node it was sent to.
    pub via: String,
    /// The text's number among the texts the client made (the initial
    /// topology is 0); every text is different.
    pub text: usize,
    pub outcome: Outcome,
}

/// What every node says after the heal and the settle deadline.
#[derive(Clone, Debug, Default)]
pub struct Final {
    /// Each node's committed version and hash, None if it did not answer.
    pub versions: BTreeMap<String, Option<(u64, String)>>,
    /// Each node's Raft view: term, leader, masters.
    pub raft: BTreeMap<String, Option<RaftView>>,
    /// Each node's 2PC lock in words, with how long it has waited for a
    /// decision when it has.
    pub locks: BTreeMap<String, Option<String>>,
    /// Each node's committed text (`GET /v1/topology`).
    pub texts: BTreeMap<String, Option<String>>,
    /// Each node's view of every member's status.
    pub members: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// Log lines that say an agent panicked, by node.
    pub panics: BTreeMap<String, Vec<String>>,
    /// Agents that exited by themselves, with how.
    pub exited: BTreeMap<String, String>,
    /// Whether everything above was agreed before the settle deadline.
    pub settled: bool,
    /// The applies tried after the heal, until one committed.
    pub after_heal: Vec<Outcome>,
}

/// What a node says of the Raft group: term, leader, masters.
pub type RaftView = (u64, Option<String>, BTreeMap<String, (String, u64)>);

/// Everything one schedule recorded.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The texts the client made, by number (0: the initial topology).
    pub texts: Vec<String>,
    pub applies: Vec<Apply>,
    pub observations: Vec<Obs>,
    pub last: Final,
}

/// Full hex SHA-256 of a topology text, as the agents report it.
pub fn hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn at(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Every invariant broken by `record`, each with its evidence; empty when
/// all hold.
pub fn violations(record: &Record) -> Vec<String> {
    let mut found = Vec::new();
    found.extend(agreement(&record.last));
    found.extend(one_group(&record.last));
    found.extend(nothing_lost(record));
    found.extend(one_master_per_generation(&record.observations));
    found.extend(one_leader_per_term(&record.observations));
    found.extend(alive_everywhere(&record.last));
    found.extend(no_panics(&record.last));
    found.extend(locks_released(&record.last));
    found.extend(takes_changes(&record.last));
    found
}

/// (a) Every node reports the same committed version, hash and text.
pub fn agreement(last: &Final) -> Vec<String> {
    let distinct: BTreeSet<&Option<(u64, String)>> = last.versions.values().collect();
    let texts: BTreeSet<&Option<String>> = last.texts.values().collect();
    let mut found = Vec::new();
    if distinct.len() != 1 || distinct.iter().any(|v| v.is_none()) {
        found.push(format!(
            "(a) the nodes do not agree on one committed version: {:?}",
            last.versions
        ));
    }
    if texts.len() != 1 || texts.iter().any(|t| t.is_none()) {
        let hashes: BTreeMap<&String, Option<String>> = last
            .texts
            .iter()
            .map(|(n, t)| (n, t.as_deref().map(hash)))
            .collect();
        found.push(format!(
            "(a) the nodes do not serve one committed text (their hashes: {hashes:?})"
        ));
    }
    found
}

/// (a) Every node follows one leader in one term and names the same
/// masters: a node whose Raft stopped would keep an old view.
pub fn one_group(last: &Final) -> Vec<String> {
    let distinct: BTreeSet<&Option<RaftView>> = last.raft.values().collect();
    let led = distinct
        .iter()
        .all(|v| v.as_ref().is_some_and(|(_, leader, _)| leader.is_some()));
    if distinct.len() == 1 && led {
        return Vec::new();
    }
    vec![format!(
        "(a) the nodes do not follow one leader with the same masters (term, leader, masters): {:?}",
        last.raft
    )]
}

/// (b) No committed version was lost or replaced: one text per version and
/// one version per text; texts commit in the order the client sent them
/// (it sends one at a time, each on what was committed); no aborted text
/// commits, nor any text the client did not write; no node's version goes
/// back; and the final version is the newest anyone saw committed, with
/// its text.
pub fn nothing_lost(record: &Record) -> Vec<String> {
    let mut found = Vec::new();
    let by_hash: BTreeMap<String, usize> = record
        .texts
        .iter()
        .enumerate()
        .map(|(i, t)| (hash(t), i))
        .collect();
    // version -> (hash, where it was first seen)
    let mut committed: BTreeMap<u64, (String, String)> = BTreeMap::new();
    let mut see =
        |version: u64, hash: &str, source: String, found: &mut Vec<String>| match committed
            .get(&version)
        {
            Some((h, first)) if h != hash => found.push(format!(
                "(b) version {version} has two texts: {h} ({first}) and {hash} ({source})"
            )),
            Some(_) => {}
            None => {
                committed.insert(version, (hash.to_string(), source));
            }
        };
    for apply in &record.applies {
        if let Outcome::Committed { version, hash } = &apply.outcome {
            let source = format!(
                "apply of text {} via {} at {}",
                apply.text,
                apply.via,
                at(apply.at_ms)
            );
            see(*version, hash, source, &mut found);
        }
    }
    let mut last_seen: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for obs in &record.observations {
        let (Some(version), Some(h)) = (obs.version, obs.hash.as_deref()) else {
            continue;
        };
        see(
            version,
            h,
            format!("{} at {}", obs.node, at(obs.at_ms)),
            &mut found,
        );
        if let Some((before, when)) = last_seen.get(obs.node.as_str()) {
            if version < *before {
                found.push(format!(
                    "(b) {} went back from version {before} (at {}) to {version} (at {})",
                    obs.node,
                    at(*when),
                    at(obs.at_ms)
                ));
            }
        }
        last_seen.insert(&obs.node, (version, obs.at_ms));
    }
    for (node, v) in &record.last.versions {
        if let Some((version, h)) = v {
            see(*version, h, format!("{node} at the end"), &mut found);
        }
    }
    // Which text each committed version is, in version order.
    let mut order: Vec<(u64, usize)> = Vec::new();
    let mut versions_of: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (version, (h, source)) in &committed {
        versions_of.entry(h).or_default().push(*version);
        match by_hash.get(h) {
            Some(text) => order.push((*version, *text)),
            None => found.push(format!(
                "(b) version {version} ({source}) is a text the client never wrote: {h}"
            )),
        }
    }
    for (h, versions) in versions_of {
        if versions.len() > 1 {
            found.push(format!(
                "(b) one text committed as several versions {versions:?}: {h}"
            ));
        }
    }
    for pair in order.windows(2) {
        if pair[1].1 <= pair[0].1 {
            found.push(format!(
                "(b) text {} committed as version {} after text {} as version {}: texts commit in the order sent",
                pair[1].1, pair[1].0, pair[0].1, pair[0].0
            ));
        }
    }
    let committed_texts: BTreeSet<usize> = order.iter().map(|(_, t)| *t).collect();
    for apply in &record.applies {
        if let Outcome::Aborted(why) = &apply.outcome {
            if committed_texts.contains(&apply.text) {
                found.push(format!(
                    "(b) text {} was answered `aborted` ({why}) via {} at {}, yet committed",
                    apply.text,
                    apply.via,
                    at(apply.at_ms)
                ));
            }
        }
    }
    let newest = committed.iter().next_back();
    let finals: BTreeSet<&(u64, String)> = record.last.versions.values().flatten().collect();
    if let Some((version, (h, source))) = newest {
        for (final_version, final_hash) in finals {
            if final_version < version {
                found.push(format!(
                    "(b) a node ends on version {final_version}, but version {version} was committed ({source})"
                ));
            } else if final_version == version && final_hash != h {
                found.push(format!(
                    "(b) a node ends on version {version} with text {final_hash}, committed as {h} ({source})"
                ));
            }
        }
    }
    for (node, text) in &record.last.texts {
        let Some(text) = text else { continue };
        let h = hash(text);
        let reported = record.last.versions.get(node).cloned().flatten();
        if reported.as_ref().is_some_and(|(_, r)| *r != h) {
            found.push(format!(
                "(b) {node} serves a text whose hash {h} is not the one it reports ({reported:?})"
            ));
        }
        if !by_hash.contains_key(&h) {
            found.push(format!(
                "(b) {node} serves a text the client never wrote ({h}):\n{text}"
            ));
        }
    }
    found
}

/// The first pair of observations that give one key two values, once per
/// key: `(key, value, who saw it)` in observation order, and `say` words
/// a conflict from the key, the first value and its observation, then the
/// other value and its observation.
fn one_value_per_key<'a, K: Ord + Clone, V: PartialEq>(
    seen_as: impl Iterator<Item = (K, V, &'a Obs)>,
    say: impl Fn(&K, &V, &Obs, &V, &Obs) -> String,
) -> Vec<String> {
    let mut first: BTreeMap<K, (V, &Obs)> = BTreeMap::new();
    let mut told = BTreeSet::new();
    let mut found = Vec::new();
    for (key, value, obs) in seen_as {
        match first.get(&key) {
            Some((v, o)) if *v != value => {
                if told.insert(key.clone()) {
                    found.push(say(&key, v, o, &value, obs));
                }
            }
            Some(_) => {}
            None => {
                first.insert(key, (value, obs));
            }
        }
    }
    found
}

/// (c) Never two masters of one replica set in one fencing generation.
pub fn one_master_per_generation(observations: &[Obs]) -> Vec<String> {
    let seen_as = observations.iter().flat_map(|obs| {
        obs.masters
            .iter()
            .map(move |(set, (master, generation))| ((set.as_str(), *generation), master, obs))
    });
    one_value_per_key(seen_as, |(set, generation), other, first, master, obs| {
        format!(
            "(c) two masters of {set} in fencing generation {generation}: {other} (seen by {} at {}) and {master} (seen by {} at {})",
            first.node,
            at(first.at_ms),
            obs.node,
            at(obs.at_ms)
        )
    })
}

/// Never two leaders in one Raft term (what makes (c) hold).
pub fn one_leader_per_term(observations: &[Obs]) -> Vec<String> {
    let seen_as = observations.iter().filter_map(|obs| {
        let (Some(term), Some(leader)) = (obs.term, obs.leader.as_deref()) else {
            return None;
        };
        Some((term, leader, obs))
    });
    one_value_per_key(seen_as, |term, first_leader, first, leader, obs| {
        format!(
            "two leaders in term {term}: {first_leader:?} (seen by {} at {}) and {leader} (seen by {} at {})",
            first.node,
            at(first.at_ms),
            obs.node,
            at(obs.at_ms)
        )
    })
}

/// (d) Every node is `alive` in every node's membership.
pub fn alive_everywhere(last: &Final) -> Vec<String> {
    let nodes: BTreeSet<&String> = last.versions.keys().collect();
    let mut found = Vec::new();
    for (observer, members) in &last.members {
        let Some(members) = members else {
            found.push(format!("(d) {observer} does not answer /v1/members"));
            continue;
        };
        let not_alive: Vec<String> = nodes
            .iter()
            .filter(|n| members.get(**n).map(String::as_str) != Some("alive"))
            .map(|n| format!("{n}: {}", members.get(*n).map_or("unknown", |s| s)))
            .collect();
        if !not_alive.is_empty() {
            found.push(format!(
                "(d) {observer} does not see every node alive: {}",
                not_alive.join(", ")
            ));
        }
    }
    found
}

/// (e) No agent panicked, none exited by itself.
pub fn no_panics(last: &Final) -> Vec<String> {
    let mut found = Vec::new();
    for (node, lines) in &last.panics {
        if !lines.is_empty() {
            found.push(format!("(e) {node} panicked:\n{}", lines.join("\n")));
        }
    }
    for (node, how) in &last.exited {
        found.push(format!("(e) {node}'s agent exited by itself: {how}"));
    }
    found
}

/// The words of a free 2PC lock in `GET /v1/status`.
pub const FREE: &str = "no apply in progress";

/// (f) Healed, no 2PC lock stays held (a lock has a lease, and with the
/// decisions in Raft a participant past it never waits for long).
pub fn locks_released(last: &Final) -> Vec<String> {
    let held: Vec<String> = last
        .locks
        .iter()
        .filter(|(_, lock)| lock.as_deref() != Some(FREE))
        .map(|(node, lock)| format!("{node}: {}", lock.as_deref().unwrap_or("no answer")))
        .collect();
    if held.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "(f) 2PC locks still held after the heal and the settle deadline: {}",
        held.join("; ")
    )]
}

/// (f) Healed, the cluster commits a change again.
pub fn takes_changes(last: &Final) -> Vec<String> {
    let committed = last
        .after_heal
        .iter()
        .any(|o| matches!(o, Outcome::Committed { .. }));
    if committed {
        return Vec::new();
    }
    vec![format!(
        "(f) after the heal no apply committed: {:?}",
        last.after_heal
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at_ms: u64, node: &str, version: u64, text: &str) -> Obs {
        Obs {
            at_ms,
            node: node.into(),
            version: Some(version),
            hash: Some(hash(text)),
            ..Obs::default()
        }
    }

    /// Three texts, 1 and 2 committed in order, all nodes on version 3
    /// (text 2) with the same text and everyone alive.
    fn healthy() -> Record {
        let texts: Vec<String> = (0..3).map(|i| format!("text {i}\n")).collect();
        let mut last = Final::default();
        for n in ["n1", "n2"] {
            last.versions.insert(n.into(), Some((3, hash(&texts[2]))));
            last.texts.insert(n.into(), Some(texts[2].clone()));
            last.raft
                .insert(n.into(), Some((2, Some("n1".into()), BTreeMap::new())));
            last.locks.insert(n.into(), Some(FREE.into()));
            last.members.insert(
                n.into(),
                Some([("n1".into(), "alive".into()), ("n2".into(), "alive".into())].into()),
            );
        }
        last.after_heal = vec![Outcome::Committed {
            version: 3,
            hash: hash(&texts[2]),
        }];
        Record {
            applies: vec![
                Apply {
                    at_ms: 10,
                    via: "n1".into(),
                    text: 1,
                    outcome: Outcome::Committed {
                        version: 2,
                        hash: hash(&texts[1]),
                    },
                },
                Apply {
                    at_ms: 20,
                    via: "n2".into(),
                    text: 2,
                    outcome: Outcome::Unknown("timed out".into()),
                },
            ],
            observations: vec![
                obs(0, "n1", 1, &texts[0]),
                obs(5, "n2", 1, &texts[0]),
                obs(15, "n1", 2, &texts[1]),
                obs(25, "n2", 3, &texts[2]),
            ],
            texts,
            last,
        }
    }

    #[test]
    fn a_healthy_record_breaks_nothing() {
        assert_eq!(violations(&healthy()), Vec::<String>::new());
    }

    #[test]
    fn disagreement_at_the_end_is_caught() {
        let mut r = healthy();
        r.last
            .versions
            .insert("n2".into(), Some((2, hash(&r.texts[1]))));
        let v = violations(&r);
        assert!(v.iter().any(|v| v.starts_with("(a)")), "{v:?}");
        // n2 ends behind what was committed, and serves a text not its own.
        assert!(v.iter().any(|v| v.contains("ends on version 2")), "{v:?}");
    }

    #[test]
    fn a_node_with_another_raft_view_is_caught() {
        let mut r = healthy();
        r.last
            .raft
            .insert("n2".into(), Some((1, Some("n2".into()), BTreeMap::new())));
        assert_eq!(one_group(&r.last).len(), 1);
        let mut r = healthy();
        r.last.raft.insert("n2".into(), None);
        assert_eq!(one_group(&r.last).len(), 1);
    }

    #[test]
    fn a_lost_or_replaced_commit_is_caught() {
        // Version 2 reported with another text by a node.
        let mut r = healthy();
        r.observations.push(obs(30, "n2", 2, "other\n"));
        let v = nothing_lost(&r);
        assert!(
            v.iter().any(|v| v.contains("version 2 has two texts")),
            "{v:?}"
        );
        assert!(v.iter().any(|v| v.contains("went back")), "{v:?}");
        // The final version older than one committed.
        let mut r = healthy();
        r.applies.push(Apply {
            at_ms: 40,
            via: "n1".into(),
            text: 2,
            outcome: Outcome::Committed {
                version: 4,
                hash: hash(&r.texts[2]),
            },
        });
        let v = nothing_lost(&r);
        assert!(
            v.iter().any(|v| v.contains("version 4 was committed")),
            "{v:?}"
        );
        assert!(v.iter().any(|v| v.contains("several versions")), "{v:?}");
        // An aborted text that commits.
        let mut r = healthy();
        r.applies[1].outcome = Outcome::Aborted("locked".into());
        let v = nothing_lost(&r);
        assert!(v.iter().any(|v| v.contains("yet committed")), "{v:?}");
        // Texts out of order: text 2 as version 2, then text 1 as 3.
        let mut r = healthy();
        let (t1, t2) = (r.texts[1].clone(), r.texts[2].clone());
        r.applies.clear();
        r.observations = vec![
            obs(0, "n1", 1, &r.texts[0]),
            obs(15, "n1", 2, &t2),
            obs(25, "n2", 3, &t1),
        ];
        for n in ["n1", "n2"] {
            r.last.versions.insert(n.into(), Some((3, hash(&t1))));
            r.last.texts.insert(n.into(), Some(t1.clone()));
        }
        let v = nothing_lost(&r);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("in the order sent"), "{v:?}");
        // A text nobody wrote.
        let mut r = healthy();
        r.last.texts.insert("n1".into(), Some("forged\n".into()));
        let v = nothing_lost(&r);
        assert!(v.iter().any(|v| v.contains("never wrote")), "{v:?}");
    }

    #[test]
    fn two_masters_in_one_generation_and_two_leaders_in_one_term_are_caught() {
        let a = Obs {
            node: "n1".into(),
            masters: [("s1".into(), ("n1".into(), 3))].into(),
            term: Some(4),
            leader: Some("n1".into()),
            ..Obs::default()
        };
        let mut b = a.clone();
        b.node = "n2".into();
        assert!(one_master_per_generation(&[a.clone(), b.clone()]).is_empty());
        assert!(one_leader_per_term(&[a.clone(), b.clone()]).is_empty());
        b.masters.insert("s1".into(), ("n2".into(), 3));
        b.leader = Some("n2".into());
        assert_eq!(one_master_per_generation(&[a.clone(), b.clone()]).len(), 1);
        assert_eq!(one_leader_per_term(&[a.clone(), b.clone()]).len(), 1);
        // The next generation may have another master.
        b.masters.insert("s1".into(), ("n2".into(), 4));
        assert!(one_master_per_generation(&[a, b]).is_empty());
    }

    #[test]
    fn a_node_not_alive_somewhere_and_a_panic_are_caught() {
        let mut r = healthy();
        r.last.members.insert(
            "n1".into(),
            Some(
                [
                    ("n1".into(), "alive".into()),
                    ("n2".into(), "suspect".into()),
                ]
                .into(),
            ),
        );
        assert_eq!(alive_everywhere(&r.last).len(), 1);
        r.last.members.insert("n2".into(), None);
        assert_eq!(alive_everywhere(&r.last).len(), 2);
        r.last.panics.insert(
            "n1".into(),
            vec!["thread 'x' panicked at src/a.rs:1".into()],
        );
        r.last.exited.insert("n2".into(), "exit status: 1".into());
        assert_eq!(no_panics(&r.last).len(), 2);
    }

    #[test]
    fn a_cluster_that_takes_no_change_after_the_heal_is_caught() {
        let mut r = healthy();
        r.last.after_heal = vec![
            Outcome::Aborted("no answer from n4".into()),
            Outcome::Unknown("timed out".into()),
        ];
        assert_eq!(takes_changes(&r.last).len(), 1);
        r.last.after_heal.clear();
        assert_eq!(takes_changes(&r.last).len(), 1);
        r.last.locks.insert(
            "n1".into(),
            Some("waiting for the decision of txn 3 from node n2 (61 s)".into()),
        );
        assert_eq!(locks_released(&r.last).len(), 1);
    }
}
