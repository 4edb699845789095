//! Shared by the decoder targets: the same stream decoded with three cuttings into reads (one read,
//! one byte per read, random read sizes with random buffer moves) must give the same result.

/// xorshift32: reproducible read sizes from two seed bytes of the input.
pub struct Rng(pub u32);

impl Rng {
    pub fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// `data` is `[max/8, seed0, seed1, stream...]`. `drive(stream, max, read_size, move_buffer)`
/// decodes the stream with reads of the sizes `read_size` gives, moving the unconsumed bytes into a
/// fresh buffer whenever `move_buffer` says so.
pub fn check<T, D>(data: &[u8], drive: D)
where
    T: PartialEq + std::fmt::Debug,
    D: Fn(&[u8], usize, &mut dyn FnMut() -> usize, &mut dyn FnMut() -> bool) -> T,
{
    let Some((&[m, s0, s1], stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = usize::from(m) * 8;

    let whole = drive(stream, max, &mut || usize::MAX, &mut || false);
    let bytewise = drive(stream, max, &mut || 1, &mut || false);
    assert_eq!(bytewise, whole, "one byte per read differs from one read");

    let mut rng = Rng(u32::from(s0) << 8 | u32::from(s1) | 0x1_0000);
    let mut rng2 = Rng(u32::from(s1) << 16 | u32::from(s0) | 0x100);
    let random = drive(
        stream,
        max,
        &mut || match rng.next() % 4 {
            0 => 1,
            1 => 1 + (rng.next() % 16) as usize,
            2 => 1 + (rng.next() % 256) as usize,
            _ => 1 + (rng.next() % 4096) as usize,
        },
        &mut || rng2.next() % 3 == 0,
    );
    assert_eq!(random, whole, "random reads differ from one read");
}

/// Feeds `stream` in reads of `size()` bytes. After each read, `decode` is called until it yields
/// nothing more or fails, and before each call the buffered bytes are sometimes moved into a fresh
/// buffer (as the proxy's drivers do). Returns what was decoded and the error, if any.
pub fn feed<T, E>(
    stream: &[u8],
    size: &mut dyn FnMut() -> usize,
    migrate: &mut dyn FnMut() -> bool,
    mut decode: impl FnMut(&mut bytes::BytesMut) -> Result<Option<T>, E>,
) -> (Vec<T>, Option<E>) {
    let mut buf = bytes::BytesMut::new();
    let mut items = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = size().clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            if migrate() {
                buf = bytes::BytesMut::from(&buf[..]);
            }
            match decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(err) => return (items, Some(err)),
            }
        }
    }
    (items, None)
}
