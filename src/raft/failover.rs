//! What the Raft leader should write, computed from the topology, the
//! gossip member table and the replicated state. Pure logic: no I/O, no
//! clock, no openraft types; the driver carries the answers out.
//!
//! Two questions are answered here:
//! - who is master of each replica set, in each failover mode
//!   ([`configured_masters`], [`eventual_masters`], [`appointments`],
//!   [`promote`]);
//! - which nodes are voters and learners of the Raft group
//!   ([`membership_step`], [`may_lead`], [`in_group`]).
//!
//! One reading of SWIM runs through both: only `Alive` earns something (to
//! be appointed master, to join the group, to become a voter), and only
//! SWIM's verdicts `Dead` and `Left` (or no record at all) lose something (a
//! master its place, an old voter its seat). `Suspect` is not a verdict: a
//! suspicion is refutable, and acting on it would move masters and voters
//! on every network hiccup; the suspicion timeout, tuned by Lifeguard, *is*
//! the failover delay. Nor is a suspect node a good pick: it may be the one
//! about to be declared dead. And a leader's own `Dead` may be stale (it
//! was cut off): [`replaces_dead`] names the master the driver must fail
//! to reach before it replaces it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::{ClusterState, Command, NodeId, Peer};
use crate::config::{Election, ReplicaSet, Topology};
pub use crate::membership::by_name;
use crate::membership::{MemberStatus, NamedMember};

/// One member as failover sees it, built by the caller from the gossip
/// member table (the local node included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// The node's name in the topology (empty until its payload arrived).
    pub name: String,
    pub id: NodeId,
    pub addr: SocketAddr,
    pub status: MemberStatus,
}

impl MemberView {
    fn is_alive(&self) -> bool {
        self.status == MemberStatus::Alive
    }
}

impl NamedMember for MemberView {
    fn name(&self) -> &str {
        &self.name
    }
    fn id(&self) -> NodeId {
        self.id
    }
    fn status(&self) -> MemberStatus {
        self.status
    }
}

/// The set's nodes in the order failover tries them: `failover_priority`
/// first, then the set's other nodes in the topology's order. (Validation
/// rejects unknown and repeated priority entries; they are skipped here
/// all the same.)
pub fn priority(set: &ReplicaSet) -> Vec<String> {
    let nodes = &set.nodes.value;
    let mut order: Vec<String> = Vec::with_capacity(nodes.len());
    let listed = set.failover_priority.iter().map(|n| n.value.as_str());
    for name in listed.chain(nodes.keys()) {
        if nodes.contains_key(name) && !order.iter().any(|n| n == name) {
            order.push(name.to_string());
        }
    }
    order
}

fn sets(topology: &Topology) -> impl Iterator<Item = (&str, &ReplicaSet)> {
    topology
        .replicasets
        .value
        .iter()
        .map(|(name, set)| (name.value.as_str(), set))
}

/// Mode `disabled`: each set's master is the first by priority, whatever
/// gossip says; it never moves.
pub fn configured_masters(topology: &Topology) -> BTreeMap<String, String> {
    sets(topology)
        .filter_map(|(name, set)| Some((name.to_string(), priority(set).into_iter().next()?)))
        .collect()
}

/// Mode `eventual`: each set's master is its first alive node by priority
/// in *this node's* gossip view, `None` when none is alive.
///
/// There is no consensus: every node decides from its own member table, so
/// while views differ (during a partition, or for the few protocol periods
/// a death takes to spread) two nodes can name two different masters of
/// one set: split-brain. It heals when gossip converges, and a returning
/// higher-priority node takes the master back. Use mode `raft` when two
/// masters at once are not acceptable.
pub fn eventual_masters(
    topology: &Topology,
    members: &[MemberView],
) -> BTreeMap<String, Option<String>> {
    let index = by_name(members);
    sets(topology)
        .map(|(name, set)| {
            let master = priority(set)
                .into_iter()
                .find(|n| index.get(n.as_str()).is_some_and(|m| m.is_alive()));
            (name.to_string(), master)
        })
        .collect()
}

/// Why the master `node` of `set` must be replaced, or None while it holds.
fn master_gone(
    set: &ReplicaSet,
    index: &BTreeMap<&str, &MemberView>,
    node: &str,
) -> Option<String> {
    if !set.nodes.value.contains_key(node) {
        return Some(format!("{node} left the replica set"));
    }
    match index.get(node).map(|m| m.status) {
        // A leader that has never heard of the master cannot tell that it
        // is up; the compare-and-set on the generation fences the old one.
        None => Some(format!("{node} is unknown to gossip")),
        Some(MemberStatus::Dead) => Some(format!("{node} is dead")),
        Some(MemberStatus::Left) => Some(format!("{node} left the cluster")),
        Some(MemberStatus::Alive | MemberStatus::Suspect) => None,
    }
}

/// Mode `raft`: the commands the leader should write now, in set-name
/// order, then one [`Command::ForgetSets`] for sets that left the topology.
///
/// Per set: with no master yet, the first alive node by priority is
/// appointed; a master that SWIM declares dead or left, that left the set
/// in the topology, or that gossip does not know is replaced by the first
/// alive node by priority other than it. An alive (or merely suspect)
/// master is kept: a returning old master stays a replica, masters never
/// move back on their own. With no alive candidate nothing is written (the
/// dead master stays recorded until one appears). Every appointment expects
/// the set's current generation, so one computed from a stale view is
/// refused by the state machine rather than applied twice.
pub fn appointments(
    topology: &Topology,
    members: &[MemberView],
    state: &ClusterState,
) -> Vec<Command> {
    let index = by_name(members);
    let sets: BTreeMap<&str, &ReplicaSet> = sets(topology).collect();
    let mut commands = Vec::new();
    for (&name, &set) in &sets {
        let current = state.master(name);
        let (replaced, reason) = match current {
            None => (None, "no master yet".to_string()),
            Some(master) => match master_gone(set, &index, &master.node) {
                None => continue,
                Some(reason) => (Some(master.node.as_str()), reason),
            },
        };
        let next = priority(set).into_iter().find(|n| {
            Some(n.as_str()) != replaced && index.get(n.as_str()).is_some_and(|m| m.is_alive())
        });
        if let Some(node) = next {
            commands.push(Command::AppointMaster {
                set: name.to_string(),
                node,
                expect: current.map_or(0, |m| m.generation),
                reason,
            });
        }
    }
    let forgotten: Vec<String> = state
        .masters
        .keys()
        .filter(|set| !sets.contains_key(set.as_str()))
        .cloned()
        .collect();
    if !forgotten.is_empty() {
        commands.push(Command::ForgetSets { sets: forgotten });
    }
    commands
}

/// The master that `command` (one of [`appointments`]) replaces because
/// gossip declares it dead, if that is why. Gossip can be stale on the
/// leader: a node cut off from the others declares them all dead, and
/// after the partition heals it holds those verdicts until each member
/// hears of its own and refutes it. So before such an appointment the
/// driver asks the master directly and keeps it when it answers; only
/// `Dead` is asked about (`Left` is the node's own word, the other
/// reasons are the topology's).
pub fn replaces_dead<'a>(
    command: &Command,
    members: &'a [MemberView],
    state: &ClusterState,
) -> Option<&'a MemberView> {
    let Command::AppointMaster { set, .. } = command else {
        return None;
    };
    let master = state.master(set)?;
    by_name(members)
        .get(master.node.as_str())
        .copied()
        .filter(|m| m.status == MemberStatus::Dead)
}

/// Why `cohort failover promote SET NODE` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    #[error("replica set `{set}` is not in the topology (replica sets: {known})")]
    UnknownSet { set: String, known: String },
    #[error("node `{node}` is in replica set `{actual}`, not `{set}`: a master is chosen among its own set's nodes")]
    OtherSet {
        set: String,
        node: String,
        actual: String,
    },
    #[error("node `{node}` is not in the topology (nodes of `{set}`: {nodes})")]
    UnknownNode {
        set: String,
        node: String,
        nodes: String,
    },
    #[error("node `{node}` is not known to gossip (not started, or not joined yet): only an alive node can be promoted")]
    UnknownToGossip { node: String },
    #[error("node `{node}` is {status}: only an alive node can be promoted")]
    NotAlive { node: String, status: MemberStatus },
    #[error("node `{node}` is already the master of `{set}` (generation {generation})")]
    AlreadyMaster {
        set: String,
        node: String,
        generation: u64,
    },
}

/// `cohort failover promote SET NODE`: the appointment to write, checked
/// first (the set exists, the node is in it and alive, and not already its
/// master: re-appointing would only bump the generation).
pub fn promote(
    topology: &Topology,
    members: &[MemberView],
    state: &ClusterState,
    set: &str,
    node: &str,
) -> Result<Command, PromoteError> {
    let Some(replica_set) = topology.replicasets.value.get(set) else {
        return Err(PromoteError::UnknownSet {
            set: set.into(),
            known: topology
                .replicasets
                .value
                .keys()
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if !replica_set.nodes.value.contains_key(node) {
        return Err(match topology.node(node) {
            Some(other) => PromoteError::OtherSet {
                set: set.into(),
                node: node.into(),
                actual: other.replicaset.into(),
            },
            None => PromoteError::UnknownNode {
                set: set.into(),
                node: node.into(),
                nodes: priority(replica_set).join(", "),
            },
        });
    }
    match by_name(members).get(node).map(|m| m.status) {
        None => return Err(PromoteError::UnknownToGossip { node: node.into() }),
        Some(MemberStatus::Alive) => {}
        Some(status) => {
            return Err(PromoteError::NotAlive {
                node: node.into(),
                status,
            })
        }
    }
    let current = state.master(set);
    if let Some(master) = current.filter(|m| m.node == node) {
        return Err(PromoteError::AlreadyMaster {
            set: set.into(),
            node: node.into(),
            generation: master.generation,
        });
    }
    Ok(Command::AppointMaster {
        set: set.into(),
        node: node.into(),
        expect: current.map_or(0, |m| m.generation),
        reason: "promoted by the operator".into(),
    })
}

/// Whether the topology lets `name` become the cluster leader.
pub fn may_lead(topology: &Topology, name: &str) -> bool {
    topology
        .node(name)
        .is_some_and(|n| n.spec.election == Election::Candidate)
}

/// Whether `name` belongs to the Raft group (it may lead or it votes).
pub fn in_group(topology: &Topology, name: &str) -> bool {
    topology
        .node(name)
        .is_some_and(|n| matches!(n.spec.election, Election::Candidate | Election::Voter))
}

/// The next change of the group's membership, one at a time: the driver
/// calls openraft's `add_learner` or `change_membership` with it and asks
/// again next round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    Nothing,
    /// Add a node as a learner: it catches up the log before it votes.
    AddLearner {
        id: NodeId,
        peer: Peer,
    },
    /// Make these the voters (never empty).
    ChangeVoters {
        voters: BTreeSet<NodeId>,
        why: String,
    },
    /// Drop learners the topology no longer wants.
    RemoveLearners {
        ids: BTreeSet<NodeId>,
    },
}

/// What the group's membership should do next.
///
/// The wanted members are the topology's nodes whose election is
/// `candidate` or `voter`, each standing for the member record of its name
/// (names gossip does not know yet are skipped until they appear). In this
/// order:
/// 1. a wanted node that is alive and neither voter nor learner is added as
///    a learner;
/// 2. the voters become the current voters that keep their seat plus the
///    wanted learners that are alive: this promotes learners and removes
///    voters whose name left the topology (or whose election is now `off`)
///    and old ids of a name that came back with a new one (a wiped data
///    dir; only once the old id is dead or left);
/// 3. learners that are no longer wanted are removed.
///
/// openraft changes voters through joint consensus, so any change of the
/// set is safe; adding a node as a learner first keeps a new voter from
/// slowing commits while it catches up the log. A wanted voter that is down
/// keeps its seat (Raft tolerates a minority down; shrinking the group on
/// a failure detector's word would not). A voter gossip does not know is
/// kept until every wanted name is known (a fresh leader's member table may
/// just be incomplete), then removed: it is then no wanted node's id, e.g.
/// the reclaimed record of a wiped node's old life. The new voter set is
/// never empty and must have a majority of members that gossip sees up, or
/// the change could never commit and the group would stall in it.
pub fn membership_step(
    topology: &Topology,
    members: &[MemberView],
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
) -> MembershipStep {
    let group = Group::new(topology, members, voters, learners);
    group
        .add_learner()
        .or_else(|| group.change_voters())
        .or_else(|| group.remove_learners())
        .unwrap_or(MembershipStep::Nothing)
}

/// The inputs of [`membership_step`], indexed.
struct Group<'a> {
    topology: &'a Topology,
    voters: &'a BTreeSet<NodeId>,
    learners: &'a BTreeSet<NodeId>,
    /// Wanted names in topology order.
    wanted: Vec<&'a str>,
    /// The record each wanted name known to gossip stands for.
    chosen: BTreeMap<&'a str, &'a MemberView>,
    /// Their ids.
    wanted_ids: BTreeSet<NodeId>,
    by_id: BTreeMap<NodeId, &'a MemberView>,
}

impl<'a> Group<'a> {
    fn new(
        topology: &'a Topology,
        members: &'a [MemberView],
        voters: &'a BTreeSet<NodeId>,
        learners: &'a BTreeSet<NodeId>,
    ) -> Group<'a> {
        let wanted: Vec<&str> = topology
            .nodes()
            .filter(|n| matches!(n.spec.election, Election::Candidate | Election::Voter))
            .map(|n| n.name)
            .collect();
        // Like `by_name`, except that a voter that is still up keeps
        // standing for its name (its seat is not handed to another record
        // of the name on a suspicion), and a record already in the group
        // wins a tie (no churn between two live records).
        let in_group = |id: &NodeId| voters.contains(id) || learners.contains(id);
        let mut chosen: BTreeMap<&str, &MemberView> = BTreeMap::new();
        for member in members.iter().filter(|m| wanted.contains(&m.name.as_str())) {
            let key = |m: &MemberView| {
                (
                    m.status.is_active() && voters.contains(&m.id),
                    Reverse(m.status),
                    in_group(&m.id),
                    Reverse(m.id),
                )
            };
            match chosen.get(member.name.as_str()) {
                Some(have) if key(have) >= key(member) => {}
                _ => {
                    chosen.insert(&member.name, member);
                }
            }
        }
        Group {
            topology,
            voters,
            learners,
            wanted_ids: chosen.values().map(|m| m.id).collect(),
            chosen,
            wanted,
            by_id: members.iter().map(|m| (m.id, m)).collect(),
        }
    }

    fn named(&self, id: &NodeId) -> Option<&'a MemberView> {
        self.by_id.get(id).copied().filter(|m| !m.name.is_empty())
    }

    fn is(&self, id: &NodeId, alive: fn(MemberStatus) -> bool) -> bool {
        self.by_id.get(id).is_some_and(|m| alive(m.status))
    }

    /// Whether a voter or learner stays in the group.
    fn keeps_seat(&self, id: &NodeId) -> bool {
        if self.wanted_ids.contains(id) {
            return true;
        }
        match self.named(id) {
            // Another live record of a wanted name (two agents given one
            // name): kept, as the old id of a name is kept until it is
            // declared dead.
            Some(m) => self.wanted.contains(&m.name.as_str()) && m.status.is_active(),
            None => self.chosen.len() < self.wanted.len(),
        }
    }

    fn add_learner(&self) -> Option<MembershipStep> {
        self.wanted.iter().find_map(|name| {
            let m = self.chosen.get(name)?;
            let new =
                m.is_alive() && !self.voters.contains(&m.id) && !self.learners.contains(&m.id);
            new.then(|| MembershipStep::AddLearner {
                id: m.id,
                peer: Peer {
                    name: m.name.clone(),
                    addr: m.addr,
                },
            })
        })
    }

    fn change_voters(&self) -> Option<MembershipStep> {
        let kept = self.voters.iter().filter(|id| self.keeps_seat(id));
        let promoted = self
            .learners
            .iter()
            .filter(|id| self.wanted_ids.contains(id) && self.is(id, |s| s == MemberStatus::Alive));
        let target: BTreeSet<NodeId> = kept.chain(promoted).copied().collect();
        if target == *self.voters {
            return None;
        }
        let up = target
            .iter()
            .filter(|id| self.is(id, MemberStatus::is_active))
            .count();
        if up * 2 <= target.len() {
            return None;
        }
        let mut why = Vec::new();
        for id in target.difference(self.voters) {
            why.push(format!("promote learner {}", self.label(id)));
        }
        for id in self.voters.difference(&target) {
            why.push(self.removal(id));
        }
        Some(MembershipStep::ChangeVoters {
            voters: target,
            why: why.join("; "),
        })
    }

    fn remove_learners(&self) -> Option<MembershipStep> {
        let ids: BTreeSet<NodeId> = self
            .learners
            .iter()
            .filter(|id| !self.keeps_seat(id))
            .copied()
            .collect();
        (!ids.is_empty()).then_some(MembershipStep::RemoveLearners { ids })
    }

    fn label(&self, id: &NodeId) -> String {
        match self.named(id) {
            Some(m) => format!("{} ({id})", m.name),
            None => id.to_string(),
        }
    }

    /// Why a voter is removed, for the log.
    fn removal(&self, id: &NodeId) -> String {
        let Some(m) = self.named(id) else {
            return format!("remove {id}: unknown to gossip and no wanted node's id");
        };
        let name = &m.name;
        match self.topology.node(name) {
            None => format!("remove {name} ({id}): it left the topology"),
            Some(n) if n.spec.election == Election::Off => {
                format!("remove {name} ({id}): its election is now off")
            }
            Some(_) => format!(
                "remove {name}'s old id {id} ({}): {name} is back with a new id",
                m.status
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::raft::{Master, Response};
    use MemberStatus::{Alive, Dead, Left, Suspect};

    const TOPOLOGY: &str = "\
cluster: test
failover: { mode: raft }
replicasets:
  s2:
    nodes:
      s2-a: { address: 127.0.0.1:3311 }
      s2-b: { address: 127.0.0.1:3312, election: voter }
  s1:
    failover_priority: [s1-b, s1-a]
    nodes:
      s1-a: { address: 127.0.0.1:3301, election: candidate }
      s1-b: { address: 127.0.0.1:3302, election: candidate }
      s1-c: { address: 127.0.0.1:3303, election: voter }
";

    fn topology(text: &str) -> Topology {
        Topology::parse(text, Path::new("topology.yaml")).expect("valid topology")
    }

    fn base() -> Topology {
        topology(TOPOLOGY)
    }

    /// TOPOLOGY with each `(from, to)` replaced.
    fn edited(edits: &[(&str, &str)]) -> Topology {
        let text = edits.iter().fold(TOPOLOGY.to_string(), |text, (from, to)| {
            assert!(text.contains(from), "{from:?} is not in the text");
            text.replacen(from, to, 1)
        });
        topology(&text)
    }

    fn id(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    fn member(name: &str, n: u128, status: MemberStatus) -> MemberView {
        MemberView {
            name: name.into(),
            id: id(n),
            addr: SocketAddr::from(([127, 0, 0, 1], 4000 + n as u16)),
            status,
        }
    }

    /// One record per node of TOPOLOGY, ids 1.., all alive but `except`.
    fn everyone(except: &[(&str, MemberStatus)]) -> Vec<MemberView> {
        ["s1-a", "s1-b", "s1-c", "s2-a", "s2-b"]
            .iter()
            .zip(1..)
            .map(|(name, n)| {
                let status = except
                    .iter()
                    .find(|(e, _)| e == name)
                    .map_or(Alive, |(_, s)| *s);
                member(name, n, status)
            })
            .collect()
    }

    fn state(masters: &[(&str, &str, u64)]) -> ClusterState {
        let mut state = ClusterState::default();
        for (set, node, generation) in masters {
            state.masters.insert(
                set.to_string(),
                Master {
                    node: node.to_string(),
                    generation: *generation,
                    reason: "test".into(),
                },
            );
        }
        state
    }

    fn appoint(set: &str, node: &str, expect: u64, reason: &str) -> Command {
        Command::AppointMaster {
            set: set.into(),
            node: node.into(),
            expect,
            reason: reason.into(),
        }
    }

    fn ids(ns: &[u128]) -> BTreeSet<NodeId> {
        ns.iter().map(|n| id(*n)).collect()
    }

    #[test]
    fn priority_lists_failover_priority_then_the_other_nodes_in_file_order() {
        let t = base();
        let set = |name: &str| t.replicasets.value.get(name).unwrap();
        assert_eq!(priority(set("s1")), ["s1-b", "s1-a", "s1-c"]);
        assert_eq!(priority(set("s2")), ["s2-a", "s2-b"]);
    }

    #[test]
    fn configured_masters_are_the_first_by_priority_whatever_gossip_says() {
        let expected = BTreeMap::from([
            ("s1".to_string(), "s1-b".to_string()),
            ("s2".to_string(), "s2-a".to_string()),
        ]);
        assert_eq!(configured_masters(&base()), expected);
    }

    #[test]
    fn eventual_masters_are_the_first_alive_by_priority() {
        let members = everyone(&[("s1-b", Dead), ("s2-a", Suspect), ("s2-b", Left)]);
        let masters = eventual_masters(&base(), &members);
        assert_eq!(masters["s1"].as_deref(), Some("s1-a"));
        // Suspect is not alive; none alive is None.
        assert_eq!(masters["s2"], None);
        assert_eq!(
            eventual_masters(&base(), &everyone(&[]))["s1"].as_deref(),
            Some("s1-b")
        );
    }

    #[test]
    fn by_name_prefers_the_live_record_of_a_reused_name() {
        // s1-a came back with a wiped data dir: a new id next to the old.
        let members = vec![
            member("s1-a", 1, Dead),
            member("s1-a", 9, Alive),
            member("", 3, Alive),
            member("s1-b", 5, Suspect),
            member("s1-b", 4, Suspect),
        ];
        let index = by_name(&members);
        assert_eq!(index["s1-a"].id, id(9));
        // A tie goes to the smaller id, whatever the order of the table.
        assert_eq!(index["s1-b"].id, id(4));
        assert_eq!(index.len(), 2, "nameless records are left out");
    }

    #[test]
    fn a_set_without_a_master_gets_the_first_alive_by_priority() {
        let members = everyone(&[("s1-b", Suspect)]);
        assert_eq!(
            appointments(&base(), &members, &ClusterState::default()),
            [
                appoint("s1", "s1-a", 0, "no master yet"),
                appoint("s2", "s2-a", 0, "no master yet"),
            ]
        );
    }

    #[test]
    fn a_dead_or_departed_master_is_replaced_by_the_next_alive_one() {
        let s = state(&[("s1", "s1-b", 4), ("s2", "s2-a", 2)]);
        let cases: [(Vec<MemberView>, &str); 3] = [
            (everyone(&[("s1-b", Dead)]), "s1-b is dead"),
            (everyone(&[("s1-b", Left)]), "s1-b left the cluster"),
            (
                everyone(&[])
                    .into_iter()
                    .filter(|m| m.name != "s1-b")
                    .collect(),
                "s1-b is unknown to gossip",
            ),
        ];
        for (members, reason) in cases {
            assert_eq!(
                appointments(&base(), &members, &s),
                [appoint("s1", "s1-a", 4, reason)],
                "{reason}"
            );
        }
        // The next by priority is skipped when it is not alive.
        let members = everyone(&[("s1-b", Dead), ("s1-a", Suspect)]);
        assert_eq!(
            appointments(&base(), &members, &s),
            [appoint("s1", "s1-c", 4, "s1-b is dead")]
        );
    }

    #[test]
    fn only_an_appointment_over_a_master_declared_dead_asks_it_first() {
        let s = state(&[("s1", "s1-b", 4), ("s2", "s2-a", 2)]);
        let members = everyone(&[("s1-b", Dead), ("s2-a", Left)]);
        let commands = appointments(&base(), &members, &s);
        let asked: Vec<Option<&str>> = commands
            .iter()
            .map(|c| replaces_dead(c, &members, &s).map(|m| m.name.as_str()))
            .collect();
        assert_eq!(asked, [Some("s1-b"), None], "{commands:?}");
        // A set with no master yet, or one whose master is unknown to
        // gossip, has nobody to ask.
        let commands = appointments(&base(), &members, &ClusterState::default());
        assert!(commands
            .iter()
            .all(|c| replaces_dead(c, &members, &ClusterState::default()).is_none()));
        let unknown: Vec<MemberView> = members
            .iter()
            .filter(|m| m.name != "s1-b")
            .cloned()
            .collect();
        let commands = appointments(&base(), &unknown, &s);
        assert!(!commands.is_empty());
        assert!(commands
            .iter()
            .all(|c| replaces_dead(c, &unknown, &s).is_none()));
    }

    #[test]
    fn a_master_removed_from_its_set_is_replaced_even_when_alive() {
        let t = edited(&[
            ("s1-b, s1-a]", "s1-a]"),
            (
                "      s1-b: { address: 127.0.0.1:3302, election: candidate }\n",
                "",
            ),
        ]);
        let s = state(&[("s1", "s1-b", 1), ("s2", "s2-a", 1)]);
        assert_eq!(
            appointments(&t, &everyone(&[]), &s),
            [appoint("s1", "s1-a", 1, "s1-b left the replica set")]
        );
    }

    #[test]
    fn an_alive_or_suspect_master_stays_and_a_returning_one_stays_a_replica() {
        // s1-a took over from s1-b, which is back: nothing moves.
        let s = state(&[("s1", "s1-a", 2), ("s2", "s2-b", 7)]);
        assert_eq!(appointments(&base(), &everyone(&[]), &s), []);
        let members = everyone(&[("s1-a", Suspect), ("s2-b", Suspect)]);
        assert_eq!(appointments(&base(), &members, &s), []);
    }

    #[test]
    fn with_no_alive_candidate_the_dead_master_stays_recorded() {
        let s = state(&[("s1", "s1-b", 3)]);
        let members = everyone(&[
            ("s1-a", Dead),
            ("s1-b", Dead),
            ("s1-c", Suspect),
            ("s2-a", Left),
            ("s2-b", Dead),
        ]);
        assert_eq!(appointments(&base(), &members, &s), []);
    }

    #[test]
    fn sets_gone_from_the_topology_are_forgotten_last_in_one_command() {
        let s = state(&[
            ("s1", "s1-b", 1),
            ("s2", "s2-a", 1),
            ("zz", "z-1", 3),
            ("old", "o-1", 1),
        ]);
        let members = everyone(&[("s2-a", Dead)]);
        assert_eq!(
            appointments(&base(), &members, &s),
            [
                appoint("s2", "s2-b", 1, "s2-a is dead"),
                Command::ForgetSets {
                    sets: vec!["old".into(), "zz".into()]
                },
            ]
        );
    }

    #[test]
    fn promote_checks_the_set_the_node_and_its_status() {
        let t = base();
        let s = state(&[("s1", "s1-b", 5)]);
        let members = everyone(&[("s1-a", Suspect), ("s2-a", Dead)]);
        let promote = |set: &str, node: &str| promote(&t, &members, &s, set, node);
        assert_eq!(
            promote("s1", "s1-c"),
            Ok(appoint("s1", "s1-c", 5, "promoted by the operator"))
        );
        assert_eq!(
            promote("s2", "s2-b"),
            Ok(appoint("s2", "s2-b", 0, "promoted by the operator"))
        );
        let error = |set: &str, node: &str| promote(set, node).unwrap_err().to_string();
        assert_eq!(
            error("s3", "s1-a"),
            "replica set `s3` is not in the topology (replica sets: s2, s1)"
        );
        assert_eq!(
            error("s1", "s2-b"),
            "node `s2-b` is in replica set `s2`, not `s1`: a master is chosen among its own set's nodes"
        );
        assert_eq!(
            error("s1", "s9"),
            "node `s9` is not in the topology (nodes of `s1`: s1-b, s1-a, s1-c)"
        );
        assert_eq!(
            error("s1", "s1-a"),
            "node `s1-a` is suspect: only an alive node can be promoted"
        );
        assert_eq!(
            error("s2", "s2-a"),
            "node `s2-a` is dead: only an alive node can be promoted"
        );
        assert_eq!(
            error("s1", "s1-b"),
            "node `s1-b` is already the master of `s1` (generation 5)"
        );
        let members: Vec<MemberView> = vec![];
        assert_eq!(
            super::promote(&t, &members, &s, "s1", "s1-c")
                .unwrap_err()
                .to_string(),
            "node `s1-c` is not known to gossip (not started, or not joined yet): only an alive node can be promoted"
        );
    }

    #[test]
    fn election_decides_who_may_lead_and_who_is_in_the_group() {
        let t = base();
        let check = |name: &str| (may_lead(&t, name), in_group(&t, name));
        assert_eq!(check("s1-a"), (true, true));
        assert_eq!(check("s1-c"), (false, true));
        assert_eq!(check("s2-a"), (false, false));
        assert_eq!(check("nobody"), (false, false));
    }

    fn learner(name: &str, n: u128) -> MembershipStep {
        MembershipStep::AddLearner {
            id: id(n),
            peer: Peer {
                name: name.into(),
                addr: SocketAddr::from(([127, 0, 0, 1], 4000 + n as u16)),
            },
        }
    }

    fn voters_of(step: MembershipStep) -> BTreeSet<NodeId> {
        match step {
            MembershipStep::ChangeVoters { voters, .. } => voters,
            other => panic!("expected a voter change, got {other:?}"),
        }
    }

    #[test]
    fn an_alive_wanted_node_joins_as_a_learner_first() {
        // Group: s1-a alone. s1-b is suspect, s1-c is alive, s2-a is off.
        let members = everyone(&[("s1-b", Suspect)]);
        // One at a time, in the topology's order (s2 is written first).
        let step = membership_step(&base(), &members, &ids(&[1]), &ids(&[]));
        assert_eq!(step, learner("s2-b", 5));
        let step = membership_step(&base(), &members, &ids(&[1]), &ids(&[5]));
        assert_eq!(step, learner("s1-c", 3));
        // Names gossip does not know are skipped until they appear.
        let members = vec![member("s1-a", 1, Alive)];
        assert_eq!(
            membership_step(&base(), &members, &ids(&[1]), &ids(&[])),
            MembershipStep::Nothing
        );
    }

    #[test]
    fn alive_learners_become_voters_dead_ones_wait() {
        let members = everyone(&[("s1-c", Dead)]);
        let step = membership_step(&base(), &members, &ids(&[1]), &ids(&[2, 3, 5]));
        let MembershipStep::ChangeVoters { voters, why } = step else {
            panic!("expected a voter change, got {step:?}");
        };
        assert_eq!(voters, ids(&[1, 2, 5]));
        assert!(why.contains("promote learner s1-b"), "{why}");
        // All in: nothing left to do.
        assert_eq!(
            membership_step(&base(), &members, &ids(&[1, 2, 5]), &ids(&[3])),
            MembershipStep::Nothing
        );
        // A dead voter keeps its seat.
        assert_eq!(
            membership_step(&base(), &members, &ids(&[1, 2, 3, 5]), &ids(&[])),
            MembershipStep::Nothing
        );
    }

    #[test]
    fn voters_leaving_the_topology_or_turned_off_are_removed() {
        let t = edited(&[(
            "s2-b: { address: 127.0.0.1:3312, election: voter }",
            "s2-b: { address: 127.0.0.1:3312 }",
        )]);
        let mut members = everyone(&[]);
        members.push(member("gone", 7, Alive));
        let step = membership_step(&t, &members, &ids(&[1, 2, 3, 5, 7]), &ids(&[]));
        let MembershipStep::ChangeVoters { voters, why } = step else {
            panic!("expected a voter change, got {step:?}");
        };
        assert_eq!(voters, ids(&[1, 2, 3]));
        assert!(
            why.contains("s2-b") && why.contains("election is now off"),
            "{why}"
        );
        assert!(
            why.contains("gone") && why.contains("left the topology"),
            "{why}"
        );
    }

    #[test]
    fn a_wiped_node_replaces_its_old_id_once_the_old_one_is_dead() {
        let voters = ids(&[1, 2, 3]);
        // s1-c restarted with a wiped data dir as id 9; its old id 3 is
        // only suspect yet: it keeps its seat, the new id waits.
        let mut members = everyone(&[("s1-c", Suspect), ("s2-b", Dead)]);
        members.push(member("s1-c", 9, Alive));
        assert_eq!(
            membership_step(&base(), &members, &voters, &ids(&[])),
            MembershipStep::Nothing
        );
        // Declared dead: the new id joins as a learner, then takes the seat.
        members[2].status = Dead;
        assert_eq!(
            membership_step(&base(), &members, &voters, &ids(&[])),
            learner("s1-c", 9)
        );
        let step = membership_step(&base(), &members, &voters, &ids(&[9]));
        let MembershipStep::ChangeVoters { voters, why } = step else {
            panic!("expected a voter change, got {step:?}");
        };
        assert_eq!(voters, ids(&[1, 2, 9]));
        assert!(why.contains("s1-c's old id"), "{why}");
    }

    #[test]
    fn the_voters_are_never_emptied_nor_left_without_a_live_majority() {
        // The only voter's name left the topology, and no wanted node is
        // alive to take over.
        let members = vec![
            member("gone", 7, Alive),
            member("s1-a", 1, Dead),
            member("s1-b", 2, Suspect),
        ];
        assert_eq!(
            membership_step(&base(), &members, &ids(&[7]), &ids(&[1])),
            MembershipStep::Nothing
        );
        // Removing `gone` would leave {s1-a (alive), s1-b (dead)}: 1 of 2.
        let members = everyone(&[("s1-b", Dead)]);
        let mut with_gone = members.clone();
        with_gone.push(member("gone", 7, Alive));
        let voters = ids(&[1, 2, 7]);
        let t = edited(&[
            ("election: voter }\n", "}\n"),
            (
                "s1-c: { address: 127.0.0.1:3303, election: voter }",
                "s1-c: { address: 127.0.0.1:3303 }",
            ),
        ]);
        assert_eq!(
            membership_step(&t, &with_gone, &voters, &ids(&[])),
            MembershipStep::Nothing
        );
        // With s1-b back it goes through.
        with_gone[1].status = Alive;
        assert_eq!(
            voters_of(membership_step(&t, &with_gone, &voters, &ids(&[]))),
            ids(&[1, 2])
        );
    }

    #[test]
    fn unwanted_learners_are_removed() {
        let mut members = everyone(&[]);
        members.push(member("gone", 7, Alive));
        let voters = ids(&[1, 2, 3, 5]);
        assert_eq!(
            membership_step(&base(), &members, &voters, &ids(&[4, 7])),
            MembershipStep::RemoveLearners { ids: ids(&[4, 7]) }
        );
    }

    #[test]
    fn a_voter_unknown_to_gossip_stays_until_every_wanted_name_is_known() {
        let voters = ids(&[1, 2, 3, 5, 42]);
        // s2-b is not known yet: 42 might be it.
        let members: Vec<MemberView> = everyone(&[]).into_iter().take(4).collect();
        assert_eq!(
            membership_step(&base(), &members, &voters, &ids(&[])),
            MembershipStep::Nothing
        );
        let members = everyone(&[]);
        assert_eq!(
            voters_of(membership_step(&base(), &members, &voters, &ids(&[]))),
            ids(&[1, 2, 3, 5])
        );
    }

    // ---- properties ----

    const NAMES: [&str; 5] = ["s1-a", "s1-b", "s1-c", "s2-a", "s2-b"];

    fn status() -> impl Strategy<Value = MemberStatus> {
        prop_oneof![Just(Alive), Just(Suspect), Just(Dead), Just(Left)]
    }

    /// Per topology name: no record, one, or two (a wiped data dir); plus
    /// records of names outside the topology. Ids are unique.
    fn members() -> impl Strategy<Value = Vec<MemberView>> {
        let names: Vec<&str> = NAMES.iter().copied().chain(["gone", "other"]).collect();
        proptest::collection::vec(proptest::collection::vec(status(), 0..3), names.len()).prop_map(
            move |records| {
                let mut members = Vec::new();
                let mut next = 1u128;
                for (name, statuses) in names.iter().zip(records) {
                    for status in statuses {
                        members.push(member(name, next, status));
                        next += 1;
                    }
                }
                members
            },
        )
    }

    /// Masters of s1, s2 and a set outside the topology, on any name.
    fn cluster_state() -> impl Strategy<Value = ClusterState> {
        let node = prop_oneof![
            Just("s1-a"),
            Just("s1-b"),
            Just("s1-c"),
            Just("s2-a"),
            Just("s2-b"),
            Just("ghost"),
        ];
        proptest::collection::vec(proptest::option::of((node, 1..6u64)), 3).prop_map(|masters| {
            let mut s = ClusterState::default();
            for (set, master) in ["s1", "s2", "old"].iter().zip(masters) {
                if let Some((node, generation)) = master {
                    s.masters.insert(
                        set.to_string(),
                        Master {
                            node: node.into(),
                            generation,
                            reason: String::new(),
                        },
                    );
                }
            }
            s
        })
    }

    /// Voters and learners, disjoint, among the members' ids and two ids
    /// gossip does not know; at least one voter.
    fn group(
        members: &[MemberView],
    ) -> impl Strategy<Value = (BTreeSet<NodeId>, BTreeSet<NodeId>)> {
        let all: Vec<NodeId> = members
            .iter()
            .map(|m| m.id)
            .chain([id(900), id(901)])
            .collect();
        proptest::collection::vec(0..3u8, all.len())
            .prop_filter("a group has a voter", |roles| roles.contains(&1))
            .prop_map(move |roles| {
                let pick = |r: u8| {
                    all.iter()
                        .zip(&roles)
                        .filter(|(_, role)| **role == r)
                        .map(|(id, _)| *id)
                        .collect::<BTreeSet<_>>()
                };
                (pick(1), pick(2))
            })
    }

    proptest! {
        #[test]
        fn appointments_name_only_alive_nodes_of_the_set_and_never_go_stale(
            members in members(),
            state in cluster_state(),
        ) {
            let t = base();
            let index = by_name(&members);
            let commands = appointments(&t, &members, &state);
            let mut applied = state.clone();
            let mut sets_seen = Vec::new();
            for command in &commands {
                if let Command::AppointMaster { set, node, expect, .. } = command {
                    let rs = t.replicasets.value.get(set).expect("a set of the topology");
                    prop_assert!(rs.nodes.value.contains_key(node), "{node} is not in {set}");
                    prop_assert_eq!(index.get(node.as_str()).map(|m| m.status), Some(Alive));
                    prop_assert_eq!(*expect, state.master(set).map_or(0, |m| m.generation));
                    // An alive master in its set is never moved.
                    if let Some(m) = state.master(set) {
                        let up = index.get(m.node.as_str()).is_some_and(|r| r.status.is_active());
                        prop_assert!(!(up && rs.nodes.value.contains_key(&m.node)));
                        prop_assert_ne!(&m.node, node);
                    }
                    sets_seen.push(set.clone());
                }
                let response = applied.apply(command);
                prop_assert!(!matches!(response, Response::Stale { .. }), "{command:?}");
            }
            let mut sorted = sets_seen.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted, sets_seen, "one appointment per set, by name");
            prop_assert!(!applied.masters.contains_key("old"));
            // One round reaches a fixed point.
            prop_assert_eq!(appointments(&t, &members, &applied), vec![]);
        }

        #[test]
        fn membership_steps_keep_a_voter_and_only_wanted_names(
            (members, (voters, learners)) in members().prop_flat_map(|m| {
                let g = group(&m);
                (Just(m), g)
            }),
        ) {
            let t = base();
            let name_of = |id: &NodeId| members.iter().find(|m| m.id == *id).map(|m| m.name.clone());
            let (mut voters, mut learners) = (voters, learners);
            // Carry the steps out as the driver would, until nothing is left.
            for _ in 0..20 {
                match membership_step(&t, &members, &voters, &learners) {
                    MembershipStep::Nothing => return Ok(()),
                    MembershipStep::AddLearner { id, peer } => {
                        let m = members.iter().find(|m| m.id == id).expect("a known id");
                        prop_assert_eq!(m.status, Alive);
                        prop_assert!(in_group(&t, &peer.name));
                        prop_assert_eq!(&peer.name, &m.name);
                        prop_assert!(!voters.contains(&id) && !learners.contains(&id));
                        learners.insert(id);
                    }
                    MembershipStep::ChangeVoters { voters: new, .. } => {
                        prop_assert!(!new.is_empty());
                        for id in &new {
                            match name_of(id) {
                                Some(name) => prop_assert!(in_group(&t, &name), "{name} is not wanted"),
                                None => prop_assert!(voters.contains(id), "an unknown id is never added"),
                            }
                            if !voters.contains(id) {
                                prop_assert!(learners.contains(id), "voters were learners first");
                            }
                        }
                        learners.retain(|id| !new.contains(id));
                        voters = new;
                    }
                    MembershipStep::RemoveLearners { ids } => {
                        prop_assert!(!ids.is_empty() && ids.is_subset(&learners));
                        learners.retain(|id| !ids.contains(id));
                    }
                }
            }
            prop_assert!(false, "no fixed point after 20 steps");
        }
    }
}
