//! A core's slab of live sessions, indexed by slot with a generation per slot.
//!
//! Owns the slots and their free list. A stale key (kept by a timer entry or an epoll token after
//! its session ended and the slot was reused) never reaches the newer session. Never shared across
//! threads; knows nothing of what it holds.

/// Where an entry lives in its registry; stale keys (after the slot was reused) never match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub slot: u32,
    pub generation: u32,
}

impl Key {
    /// The key as one number (an epoll token).
    pub fn token(self) -> u64 {
        (u64::from(self.slot) << 32) | u64::from(self.generation)
    }

    pub fn from_token(token: u64) -> Key {
        Key {
            slot: (token >> 32) as u32,
            generation: token as u32,
        }
    }
}

struct Slot<T> {
    generation: u32,
    entry: Option<T>,
}

pub struct Registry<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T: Clone> Registry<T> {
    /// Stores the entry `make` builds for its key, and returns the key and (a clone of) the entry.
    pub fn insert_with(&mut self, make: impl FnOnce(Key) -> T) -> (Key, T) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                entry: None,
            });
            (self.slots.len() - 1) as u32
        });
        let generation = match self.slots.get_mut(slot as usize) {
            Some(s) => {
                s.generation = s.generation.wrapping_add(1);
                s.generation
            }
            None => 0,
        };
        let key = Key { slot, generation };
        let entry = make(key);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.entry = Some(entry.clone());
            self.live += 1;
        }
        (key, entry)
    }

    /// Removes the entry under `key`; false if it was not there (already removed, or stale).
    pub fn remove(&mut self, key: Key) -> bool {
        let Some(s) = self.slots.get_mut(key.slot as usize) else {
            return false;
        };
        if s.generation != key.generation || s.entry.take().is_none() {
            return false;
        }
        self.free.push(key.slot);
        self.live -= 1;
        true
    }

    pub fn get(&self, key: Key) -> Option<T> {
        let s = self.slots.get(key.slot as usize)?;
        if s.generation != key.generation {
            return None;
        }
        s.entry.clone()
    }

    pub fn live(&self) -> usize {
        self.live
    }

    pub fn all(&self) -> Vec<T> {
        self.slots.iter().filter_map(|s| s.entry.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(r: &mut Registry<u32>, v: u32) -> Key {
        r.insert_with(|_| v).0
    }

    #[test]
    fn a_stale_key_never_reaches_the_slots_next_entry() {
        let mut r = Registry::default();
        let a = add(&mut r, 1);
        assert_eq!(r.get(a), Some(1));
        assert!(r.remove(a));
        assert!(!r.remove(a), "removed twice");
        let b = add(&mut r, 2);
        assert_eq!(b.slot, a.slot, "the slot was not reused");
        assert_eq!(r.get(a), None, "a stale key reached the new entry");
        assert_eq!(r.get(b), Some(2));
        assert!(!r.remove(a));
        assert_eq!(r.live(), 1);
    }

    #[test]
    fn entries_are_counted_and_listed() {
        let mut r = Registry::default();
        let keys: Vec<Key> = (0..5).map(|v| add(&mut r, v)).collect();
        r.remove(keys[1]);
        r.remove(keys[3]);
        let mut all = r.all();
        all.sort();
        assert_eq!(all, vec![0, 2, 4]);
        assert_eq!(r.live(), 3);
    }

    #[test]
    fn tokens_carry_slot_and_generation() {
        let k = Key {
            slot: 0xdead_beef,
            generation: 7,
        };
        assert_eq!(Key::from_token(k.token()), k);
    }
}
