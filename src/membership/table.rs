//! The member table: records kept in a Vec for O(1) random picks (probe
//! helpers, anti-entropy, push-pull peers) and indexed by id in a BTreeMap
//! so that iteration order never depends on a hasher (seeded replay).

use std::collections::BTreeMap;

use super::member::{Member, MemberStatus, NodeId};
use super::suspicion::Suspicion;

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub member: Member,
    pub suspicion: Option<Suspicion>,
    /// Who accuses it (sent along with a suspect record).
    pub suspecter: Option<NodeId>,
    /// The encoded record, cached until the member changes.
    pub encoded: Option<std::sync::Arc<[u8]>>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct MemberTable {
    entries: Vec<Entry>,
    index: BTreeMap<NodeId, usize>,
    counts: [usize; 4],
}

fn slot(status: MemberStatus) -> usize {
    match status {
        MemberStatus::Alive => 0,
        MemberStatus::Suspect => 1,
        MemberStatus::Dead => 2,
        MemberStatus::Left => 3,
    }
}

impl MemberTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn count(&self, status: MemberStatus) -> usize {
        self.counts[slot(status)]
    }

    /// Alive and suspect members.
    pub fn active(&self) -> usize {
        self.count(MemberStatus::Alive) + self.count(MemberStatus::Suspect)
    }

    pub fn get(&self, id: NodeId) -> Option<&Entry> {
        self.index.get(&id).and_then(|&i| self.entries.get(i))
    }

    /// For everything but the status, which goes through `set_status`.
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Entry> {
        let i = *self.index.get(&id)?;
        self.entries.get_mut(i)
    }

    pub fn at(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn insert(&mut self, entry: Entry) {
        let id = entry.member.id;
        if self.index.contains_key(&id) {
            return;
        }
        self.counts[slot(entry.member.status)] += 1;
        self.index.insert(id, self.entries.len());
        self.entries.push(entry);
    }

    pub fn remove(&mut self, id: NodeId) -> Option<Entry> {
        let i = self.index.remove(&id)?;
        let entry = self.entries.swap_remove(i);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.member.id, i);
        }
        self.counts[slot(entry.member.status)] -= 1;
        Some(entry)
    }

    /// Returns the previous status.
    pub fn set_status(&mut self, id: NodeId, status: MemberStatus) -> Option<MemberStatus> {
        let i = *self.index.get(&id)?;
        let entry = self.entries.get_mut(i)?;
        let old = entry.member.status;
        entry.member.status = status;
        entry.encoded = None;
        self.counts[slot(old)] -= 1;
        self.counts[slot(status)] += 1;
        Some(old)
    }
}
