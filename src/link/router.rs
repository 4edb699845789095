//! Rendezvous (highest random weight) routing of sessions to game servers.
//!
//! Owns the choice of upstream for a routing key. Pure: the same key and the same set of candidates
//! always give the same answer, on every core and every instance, and removing a candidate moves only
//! the keys that were on it.

use crate::shard::user_hash;

/// The weight of `key` on the upstream whose name hashes to `upstream`.
pub fn weight(upstream: u64, key: u64) -> u64 {
    // splitmix64 finalizer over the pair: independent-looking weights per (upstream, key).
    let mut h = upstream ^ key.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The winner among `candidates` (name hash, id) for `key`, or None when there are none.
pub fn choose<I>(key: &[u8], candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (u64, usize)>,
{
    let k = user_hash(key);
    candidates
        .into_iter()
        .max_by_key(|&(name, id)| (weight(name, k), std::cmp::Reverse(id)))
        .map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<(u64, usize)> {
        (0..n)
            .map(|i| (user_hash(format!("10.0.0.{i}:9000").as_bytes()), i))
            .collect()
    }

    #[test]
    fn spreads_evenly() {
        let ups = names(4);
        let mut counts = [0u32; 4];
        for i in 0..20_000 {
            counts[choose(format!("u{i}").as_bytes(), ups.clone()).unwrap()] += 1;
        }
        for c in counts {
            assert!(c.abs_diff(5000) < 500, "{counts:?}");
        }
    }

    #[test]
    fn removing_one_moves_only_its_keys() {
        let all = names(5);
        let without: Vec<_> = all.iter().copied().filter(|&(_, id)| id != 2).collect();
        let mut moved = 0;
        for i in 0..10_000 {
            let key = format!("u{i}");
            let before = choose(key.as_bytes(), all.clone()).unwrap();
            let after = choose(key.as_bytes(), without.clone()).unwrap();
            if before != 2 {
                assert_eq!(
                    before, after,
                    "key {key} moved although its upstream stayed"
                );
            } else {
                moved += 1;
            }
        }
        assert!(moved > 1000, "upstream 2 held only {moved} keys");
    }

    #[test]
    fn adding_one_moves_keys_only_to_it() {
        let before_set = names(3);
        let after_set = names(4);
        for i in 0..10_000 {
            let key = format!("u{i}");
            let before = choose(key.as_bytes(), before_set.clone()).unwrap();
            let after = choose(key.as_bytes(), after_set.clone()).unwrap();
            assert!(after == before || after == 3);
        }
    }

    #[test]
    fn no_candidates() {
        assert_eq!(choose(b"u", Vec::new()), None);
    }
}
