//! A hashed timer wheel of one-second ticks: the one timer structure of a core.
//!
//! Owns the entries (a key and the second it is due). Each live session has one for its next
//! heartbeat and, while closing, one for its close deadline; there is no timer per connection.
//! Entries of sessions that ended are not removed: they are skipped when their slot comes round
//! (their key no longer matches), so the wheel holds at most the connection rate times the longest
//! interval of such leftovers.

use crate::runtime::registry::Key;

const SLOTS: usize = 128;

pub struct Wheel {
    slots: Vec<Vec<(Key, u32)>>,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
        }
    }
}

impl Wheel {
    pub fn insert(&mut self, key: Key, due: u32) {
        if let Some(slot) = self.slots.get_mut(due as usize % SLOTS) {
            slot.push((key, due));
        }
    }

    /// Takes the entries of second `t` that are due by `now`; entries of the same slot due in a
    /// later turn of the wheel go back in.
    pub fn take_due(&mut self, t: u32, now: u32) -> Vec<Key> {
        let Some(slot) = self.slots.get_mut(t as usize % SLOTS) else {
            return Vec::new();
        };
        let entries = std::mem::take(slot);
        let mut due = Vec::with_capacity(entries.len());
        for (key, at) in entries {
            if at > now {
                self.insert(key, at);
            } else {
                due.push(key);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32) -> Key {
        Key {
            slot,
            generation: 1,
        }
    }

    #[test]
    fn entries_come_due_in_their_second_and_not_a_turn_early() {
        let mut w = Wheel::default();
        w.insert(key(1), 5);
        w.insert(key(2), 5 + SLOTS as u32);
        assert!(w.take_due(4, 4).is_empty());
        assert_eq!(w.take_due(5, 5), vec![key(1)]);
        assert!(w
            .take_due(5 + SLOTS as u32 - 1, 5 + SLOTS as u32 - 1)
            .is_empty());
        assert_eq!(w.take_due(5 + SLOTS as u32, 5 + SLOTS as u32), vec![key(2)]);
    }
}
