//! Events for the changes no protocol reports as one: the agent hands each
//! new Raft view and apply state to these, and publishes what changed
//! (`leader-changed`, `master-changed`, `apply-committed`,
//! `apply-aborted`). The web page lives on them instead of refetching.

use std::collections::BTreeSet;

use crate::api::{ApiEvent, ApplyState, Leaders, MasterInfo};

/// Remembers the last Raft view, and turns the next into events.
#[derive(Default)]
pub struct RaftChanges {
    last: Option<Leaders>,
}

impl RaftChanges {
    /// What changed since the last view: the leader or the term, and each
    /// replica set whose master or fencing generation moved. The first
    /// view is the start, not a change: nothing.
    pub fn next(&mut self, now: &Leaders) -> Vec<ApiEvent> {
        let Some(before) = self.last.replace(now.clone()) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        // The name too: a leader first known by id gets its name later.
        let leader = |l: &Leaders| l.leader.as_ref().map(|p| (p.id, p.name.clone()));
        if leader(&before) != leader(now) || before.term != now.term {
            let (subject, detail) = match &now.leader {
                Some(p) => (p.name.clone(), format!("term {}", now.term)),
                None => (String::new(), format!("term {}, no leader", now.term)),
            };
            let id = now.leader.as_ref().map(|p| p.id);
            events.push(with_raft(
                ApiEvent::now("leader-changed", subject, id, detail),
                now,
            ));
        }
        let sets: BTreeSet<&String> = before.masters.keys().chain(now.masters.keys()).collect();
        for set in sets {
            let key = |m: Option<&MasterInfo>| m.map(|m| (m.node.clone(), m.generation));
            let new = now.masters.get(set);
            if key(before.masters.get(set)) == key(new) {
                continue;
            }
            let detail = match new {
                Some(m) => format!("{}, generation {}", m.node, m.generation),
                None => "no master".to_string(),
            };
            events.push(with_raft(
                ApiEvent::now("master-changed", set.clone(), None, detail),
                now,
            ));
        }
        events
    }
}

fn with_raft(event: ApiEvent, view: &Leaders) -> ApiEvent {
    ApiEvent {
        raft: Some(Box::new(view.clone())),
        ..event
    }
}

/// Remembers the last apply state, and turns the next into events.
#[derive(Default)]
pub struct ApplyChanges {
    /// The committed version and the txn holding the 2PC lock, last seen.
    last: Option<(u64, Option<String>)>,
    /// The last txn reported aborted (a coordinator sees its abort twice:
    /// the decision, and its lock released).
    aborted: Option<String>,
}

impl ApplyChanges {
    /// What changed since the last state: a new committed version, or a
    /// txn that ended here without one. `lock_txn` holds this node's 2PC
    /// lock now; `txn` committed the current version. A lock released
    /// with the version unchanged is an abort (a commit moves the version
    /// in the same update). The first state is the start: nothing.
    pub fn next(
        &mut self,
        now: &ApplyState,
        lock_txn: Option<String>,
        txn: Option<String>,
    ) -> Vec<ApiEvent> {
        let Some((version, locked)) = self.last.replace((now.version, lock_txn.clone())) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if now.version != version {
            let detail = match &txn {
                Some(txn) => format!("hash {}, {txn}", now.hash),
                None => format!("hash {}", now.hash),
            };
            events.push(with_apply(
                ApiEvent::now("apply-committed", now.version.to_string(), None, detail),
                now,
            ));
        }
        // The decision of a txn this node coordinated, with its reasons.
        if let Some(last) = &now.last {
            if let (Some(txn), None) = (&last.txn, last.committed) {
                if self.aborted.as_ref() != Some(txn) {
                    self.aborted = Some(txn.clone());
                    events.push(with_apply(
                        ApiEvent::now("apply-aborted", txn.clone(), None, last.summary.clone()),
                        now,
                    ));
                }
            }
        }
        // A txn this node took part in, released without a commit.
        if let Some(held) = locked {
            if lock_txn.as_ref() != Some(&held)
                && now.version == version
                && self.aborted.as_ref() != Some(&held)
            {
                let detail = format!("released on this node; version {} stays", now.version);
                self.aborted = Some(held.clone());
                events.push(with_apply(
                    ApiEvent::now("apply-aborted", held, None, detail),
                    now,
                ));
            }
        }
        events
    }
}

fn with_apply(event: ApiEvent, state: &ApplyState) -> ApiEvent {
    ApiEvent {
        apply: Some(Box::new(state.clone())),
        ..event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LastApplyInfo, RaftPeer};

    fn view(leader: Option<&str>, term: u64, masters: &[(&str, &str, u64)]) -> Leaders {
        Leaders {
            term,
            leader: leader.map(|name| RaftPeer {
                name: name.into(),
                id: uuid::Uuid::from_u128(name.len() as u128),
                addr: String::new(),
            }),
            masters: masters
                .iter()
                .map(|(set, node, generation)| {
                    (
                        set.to_string(),
                        MasterInfo {
                            node: node.to_string(),
                            generation: *generation,
                            reason: String::new(),
                        },
                    )
                })
                .collect(),
            ..Leaders::default()
        }
    }

    fn kinds(events: &[ApiEvent]) -> Vec<(String, String, String)> {
        events
            .iter()
            .map(|e| (e.kind.clone(), e.subject.clone(), e.detail.clone()))
            .collect()
    }

    fn triple(kind: &str, subject: &str, detail: &str) -> (String, String, String) {
        (kind.into(), subject.into(), detail.into())
    }

    #[test]
    fn raft_views_publish_only_what_moved() {
        let mut changes = RaftChanges::default();
        assert!(changes.next(&view(None, 1, &[("s1", "a", 1)])).is_empty());
        // Other fields moving (applied index) are not changes.
        let mut same = view(None, 1, &[("s1", "a", 1)]);
        same.applied_index = Some(7);
        assert!(changes.next(&same).is_empty());
        let events = changes.next(&view(Some("a"), 2, &[("s1", "a", 1), ("s2", "b", 1)]));
        assert_eq!(
            kinds(&events),
            vec![
                triple("leader-changed", "a", "term 2"),
                triple("master-changed", "s2", "b, generation 1"),
            ]
        );
        assert_eq!(events[0].raft.as_ref().map(|r| r.term), Some(2));
        let events = changes.next(&view(None, 3, &[("s2", "c", 2)]));
        assert_eq!(
            kinds(&events),
            vec![
                triple("leader-changed", "", "term 3, no leader"),
                triple("master-changed", "s1", "no master"),
                triple("master-changed", "s2", "c, generation 2"),
            ]
        );
    }

    fn state(version: u64, last: Option<(&str, Option<u64>, &str)>) -> ApplyState {
        ApplyState {
            version,
            hash: format!("h{version}"),
            last: last.map(|(txn, committed, summary)| LastApplyInfo {
                at_ms: 0,
                txn: Some(txn.into()),
                committed,
                took_ms: None,
                summary: summary.into(),
            }),
            ..ApplyState::default()
        }
    }

    #[test]
    fn applies_publish_commits_and_aborts_once() {
        let mut changes = ApplyChanges::default();
        let t = |s: &str| Some(s.to_string());
        assert!(changes.next(&state(1, None), None, t("t1")).is_empty());
        assert!(changes.next(&state(1, None), t("t2"), t("t1")).is_empty());
        // Released with the version moved: a commit.
        let events = changes.next(&state(2, None), None, t("t2"));
        assert_eq!(
            kinds(&events),
            vec![triple("apply-committed", "2", "hash h2, t2")]
        );
        assert_eq!(events[0].apply.as_ref().map(|a| a.version), Some(2));
        // Released with the version unchanged: an abort.
        changes.next(&state(2, None), t("t3"), t("t2"));
        let events = changes.next(&state(2, None), None, t("t2"));
        assert_eq!(
            kinds(&events),
            vec![triple(
                "apply-aborted",
                "t3",
                "released on this node; version 2 stays"
            )]
        );
        // The coordinator's decision, then its lock released: one event.
        changes.next(&state(2, None), t("t4"), t("t2"));
        let events = changes.next(
            &state(2, Some(("t4", None, "aborted: n2 said no"))),
            t("t4"),
            t("t2"),
        );
        assert_eq!(
            kinds(&events),
            vec![triple("apply-aborted", "t4", "aborted: n2 said no")]
        );
        let events = changes.next(
            &state(2, Some(("t4", None, "aborted: n2 said no"))),
            None,
            t("t2"),
        );
        assert!(events.is_empty(), "{events:?}");
    }
}
