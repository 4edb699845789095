//! The groups a game server keeps on one link (protocol version 2, docs/protocol.md "Fan-out"):
//! which sessions are in which named group, with the slow-member policy each joined with.
//!
//! Owns the membership tables of one link. A name on one link is unrelated to the same name on
//! another, so nothing here is shared between links or cores. Never delivers anything: a publish
//! becomes the list of its members, which the driver queues. Never keeps a slice of the link's
//! read buffer: a group's name is copied when the group is created, and a member records only the
//! group's number, so a long-lived group neither pins a buffer nor repeats its name per member.

use rustc_hash::FxHashMap;

use crate::protocol::Policy;

/// A group's number on its link, unique for the life of the link: tags a member's queued message
/// for the `latest` policy (a session's messages all come from its one link).
pub type GroupId = u32;

struct Group<S> {
    name: Box<[u8]>,
    members: FxHashMap<u64, (S, Policy)>,
}

pub struct Groups<S> {
    ids: FxHashMap<Box<[u8]>, GroupId>,
    groups: FxHashMap<GroupId, Group<S>>,
    /// The groups each member is in, to leave them all when it closes.
    member_of: FxHashMap<u64, Vec<GroupId>>,
    next_id: GroupId,
}

impl<S> Default for Groups<S> {
    fn default() -> Self {
        Groups {
            ids: FxHashMap::default(),
            groups: FxHashMap::default(),
            member_of: FxHashMap::default(),
            next_id: 1,
        }
    }
}

impl<S: Clone> Groups<S> {
    /// Adds `session` to `name` with `policy`; a second join updates the policy.
    pub fn join(&mut self, session: u64, handle: S, policy: Policy, name: &[u8]) {
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(1);
                self.ids.insert(name.into(), id);
                self.groups.insert(
                    id,
                    Group {
                        name: name.into(),
                        members: FxHashMap::default(),
                    },
                );
                id
            }
        };
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        if group.members.insert(session, (handle, policy)).is_none() {
            self.member_of.entry(session).or_default().push(id);
        }
    }

    /// Takes `session` out of `name`; nothing if it was not in it.
    pub fn leave(&mut self, session: u64, name: &[u8]) {
        let Some(&id) = self.ids.get(name) else {
            return;
        };
        if !self.remove_member(session, id) {
            return;
        }
        if let Some(ids) = self.member_of.get_mut(&session) {
            ids.retain(|&g| g != id);
            if ids.is_empty() {
                self.member_of.remove(&session);
            }
        }
    }

    /// The session is gone: it leaves every group it was in.
    pub fn leave_all(&mut self, session: u64) {
        for id in self.member_of.remove(&session).unwrap_or_default() {
            self.remove_member(session, id);
        }
    }

    fn remove_member(&mut self, session: u64, id: GroupId) -> bool {
        let Some(group) = self.groups.get_mut(&id) else {
            return false;
        };
        let was = group.members.remove(&session).is_some();
        if group.members.is_empty() {
            if let Some(group) = self.groups.remove(&id) {
                self.ids.remove(&group.name);
            }
        }
        was
    }

    /// The members of `name` but `except` (0: none), with their policies, and the group's id;
    /// `None` for a group with no members.
    pub fn members(&self, name: &[u8], except: u64) -> Option<(GroupId, Vec<(S, Policy)>)> {
        let id = *self.ids.get(name)?;
        let group = self.groups.get(&id)?;
        let members = group
            .members
            .iter()
            .filter(|(session, _)| **session != except)
            .map(|(_, m)| m.clone())
            .collect();
        Some((id, members))
    }

    /// How many groups `session` is in.
    pub fn count_of(&self, session: u64) -> usize {
        self.member_of.get(&session).map_or(0, Vec::len)
    }

    /// How many groups have members.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn clear(&mut self) {
        self.ids.clear();
        self.groups.clear();
        self.member_of.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(g: &Groups<u64>, name: &[u8], except: u64) -> Vec<u64> {
        let mut v: Vec<u64> = g
            .members(name, except)
            .map(|(_, m)| m.into_iter().map(|(s, _)| s).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    #[test]
    fn join_leave_and_publish_targets() {
        let mut g = Groups::default();
        g.join(1, 1, Policy::Close, b"red");
        g.join(2, 2, Policy::Drop, b"red");
        g.join(2, 2, Policy::Latest, b"blue");
        assert_eq!(ids(&g, b"red", 0), vec![1, 2]);
        assert_eq!(ids(&g, b"red", 2), vec![1], "the sender left out");
        assert_eq!(ids(&g, b"green", 0), Vec::<u64>::new());
        assert_eq!(g.count_of(2), 2);
        g.leave(1, b"red");
        assert_eq!(ids(&g, b"red", 0), vec![2]);
        g.leave(1, b"red");
        g.leave(9, b"nowhere");
        assert_eq!(g.count_of(1), 0);
    }

    #[test]
    fn a_second_join_updates_the_policy_only() {
        let mut g = Groups::default();
        g.join(1, 1, Policy::Close, b"red");
        g.join(1, 1, Policy::Latest, b"red");
        let (_, m) = g.members(b"red", 0).unwrap();
        assert_eq!(m, vec![(1, Policy::Latest)]);
        assert_eq!(g.count_of(1), 1);
    }

    #[test]
    fn a_closed_session_leaves_every_group_and_empty_groups_go() {
        let mut g = Groups::default();
        g.join(1, 1, Policy::Close, b"red");
        g.join(1, 1, Policy::Close, b"blue");
        g.join(2, 2, Policy::Close, b"blue");
        g.leave_all(1);
        assert_eq!(g.len(), 1, "red had only session 1");
        assert_eq!(ids(&g, b"blue", 0), vec![2]);
        g.leave_all(2);
        assert!(g.is_empty());
    }

    #[test]
    fn group_ids_differ_and_a_recreated_group_gets_a_new_one() {
        let mut g = Groups::default();
        g.join(1, 1, Policy::Latest, b"a");
        g.join(1, 1, Policy::Latest, b"b");
        let a = g.members(b"a", 0).unwrap().0;
        let b = g.members(b"b", 0).unwrap().0;
        assert_ne!(a, b);
        assert_ne!(a, 0);
        g.leave(1, b"a");
        g.join(1, 1, Policy::Latest, b"a");
        assert_ne!(g.members(b"a", 0).unwrap().0, a);
    }
}
