//! Which core owns a user: the one rule every core applies the same way.
//!
//! Owns the user → core mapping. It must stay a pure function of the user id and the worker count,
//! stable across builds and Rust versions (std's hashers promise neither), so that a restart with the
//! same worker count places every user where it was.

/// FNV-1a over the bytes, then the splitmix64 finalizer so that ids that differ only in their last
/// character still spread over all cores.
pub fn user_hash(user: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in user {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The core that owns `user` among `workers` cores.
pub fn owner_core(user: &[u8], workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    // workers ≤ 1024 (config), so the remainder always fits in usize.
    (user_hash(user) % workers as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned so that a change of the function (which would move every user on restart) is deliberate.
        assert_eq!(user_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(owner_core(b"alice", 1), 0);
    }

    #[test]
    fn spreads_sequential_ids_evenly() {
        for workers in [2usize, 3, 8] {
            let mut counts = vec![0u32; workers];
            for i in 0..10_000 {
                counts[owner_core(format!("user{i}").as_bytes(), workers)] += 1;
            }
            let expect = 10_000 / workers as u32;
            for c in counts {
                assert!(
                    c.abs_diff(expect) < expect / 10,
                    "uneven: {c} vs {expect} over {workers}"
                );
            }
        }
    }
}
