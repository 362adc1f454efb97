//! Rate limits for log lines that a guest can cause.

use std::time::{Duration, Instant};

/// At most `max` lines per `window`; the rest are counted and summed up
/// in the next line allowed.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    max: u32,
    started: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            window,
            max,
            started: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` if a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .started
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            self.started = Some(now);
            self.used = 0;
        }
        if self.used < self.max {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_counts_what_it_drops() {
        let mut l = LogLimiter::new(2, Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t), None);
        assert_eq!(l.allow(t), None);
        assert_eq!(l.allow(t + Duration::from_secs(61)), Some(2));
    }
}
