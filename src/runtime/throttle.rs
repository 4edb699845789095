//! A warning logged at most once per interval, with the count of those it held back.
//!
//! Owns only its clock and count. For conditions that can repeat per connection (a full core, no
//! descriptors, a failing wait): the log must not become the load.

use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    /// Calls `log` with the number of calls held back since the last one, if the interval passed.
    pub fn warn(&mut self, log: impl FnOnce(u64)) {
        if self.last.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            log(self.suppressed);
            self.last = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}
