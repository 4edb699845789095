//! Client payload masking (RFC 6455 sec. 5.3).
//!
//! Owns the XOR transform, word-wide for throughput plus a bytewise
//! reference. Must never assume the buffer is aligned, and must never need
//! `unsafe`: the safe `chunks_exact` form below compiles to unaligned vector
//! loads and measured as fast as an `align_to::<u64>` version (faster on short
//! payloads, where the aligned version pays for its prologue; the `unmask`
//! criterion bench in benches/codec.rs), so the unsafe variant did not pay for
//! itself.

/// The mask rotated so that index 0 applies to the byte at `phase`.
fn rotated(mask: [u8; 4], phase: usize) -> [u8; 4] {
    let mut out = mask;
    out.rotate_left(phase % 4);
    out
}

/// XORs `buf` with `mask` in place. `phase` is how many bytes of the same
/// payload were unmasked before `buf[0]`, so masking a payload in several
/// pieces gives the same result as masking it whole.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], phase: usize) {
    let m = rotated(mask, phase);
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // Always Ok for an 8-byte chunk; the `if let` keeps it panic-free and
        // the optimiser removes the check.
        if let Ok(bytes) = <[u8; 8]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    // Chunks are a multiple of 8 (hence of 4) long, so the tail starts at
    // mask index 0 of the rotated mask.
    for (byte, key) in chunks.into_remainder().iter_mut().zip(m.iter().cycle()) {
        *byte ^= key;
    }
}

/// The obvious loop: the reference `apply_mask` is tested and benchmarked
/// against.
pub fn apply_mask_bytewise(buf: &mut [u8], mask: [u8; 4], phase: usize) {
    let m = rotated(mask, phase);
    for (byte, key) in buf.iter_mut().zip(m.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn word_wide_matches_bytewise_all_lengths_phases_offsets() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for offset in 0..8 {
            for len in 0..=100 {
                for phase in 0..=3 {
                    let mut backing = pattern(offset + len + 8);
                    let mut reference = backing.clone();
                    apply_mask(&mut backing[offset..offset + len], mask, phase);
                    apply_mask_bytewise(&mut reference[offset..offset + len], mask, phase);
                    assert_eq!(
                        backing, reference,
                        "offset {offset} len {len} phase {phase}"
                    );
                }
            }
        }
    }

    #[test]
    fn bytewise_follows_rfc_definition() {
        let mask = [1, 2, 4, 8];
        let mut buf = vec![0u8; 10];
        apply_mask_bytewise(&mut buf, mask, 3);
        let expected: Vec<u8> = (0..10).map(|i| mask[(i + 3) % 4]).collect();
        assert_eq!(buf, expected);
    }

    #[test]
    fn piecewise_with_phase_equals_whole() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let original = pattern(97);
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        for split in 0..=original.len() {
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    #[test]
    fn masking_twice_restores() {
        let original = pattern(1000);
        let mut buf = original.clone();
        apply_mask(&mut buf, [9, 8, 7, 6], 5);
        assert_ne!(buf, original);
        apply_mask(&mut buf, [9, 8, 7, 6], 5);
        assert_eq!(buf, original);
    }

    #[test]
    fn phase_beyond_four_wraps() {
        let mut a = pattern(20);
        let mut b = a.clone();
        apply_mask(&mut a, [1, 2, 3, 4], 6);
        apply_mask(&mut b, [1, 2, 3, 4], 2);
        assert_eq!(a, b);
        apply_mask(&mut a, [1, 2, 3, 4], usize::MAX);
        apply_mask_bytewise(&mut b, [1, 2, 3, 4], usize::MAX);
        assert_eq!(a, b);
    }
}
