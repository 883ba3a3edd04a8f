//! Warnings for events that come in floods (descriptors running out fail
//! every accept; thousands of vanished clients fill their queues at once):
//! one line per period with a count, not one per event.

use std::time::{Duration, Instant};

/// A warning that may fire often: logged at most once per `every`, with
/// how many were held back since the last time.
pub struct QuietWarning {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl QuietWarning {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Calls `log` with the number held back, unless it was called less
    /// than `every` ago.
    pub fn warn(&mut self, log: impl FnOnce(u64)) {
        self.warn_at(Instant::now(), log);
    }

    fn warn_at(&mut self, now: Instant, log: impl FnOnce(u64)) {
        if self.last.is_some_and(|last| now < last + self.every) {
            self.suppressed += 1;
            return;
        }
        log(std::mem::take(&mut self.suppressed));
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_that_fires_often_is_logged_once_per_period() {
        let mut warning = QuietWarning::new(Duration::from_secs(10));
        let start = Instant::now();
        let mut logged = Vec::new();
        for i in 0..100 {
            let now = start + Duration::from_millis(200 * i);
            warning.warn_at(now, |suppressed| logged.push(suppressed));
        }
        // 20 s of failures: logged at 0 s and 10 s, with what was held back.
        assert_eq!(logged, vec![0, 49]);
    }
}
