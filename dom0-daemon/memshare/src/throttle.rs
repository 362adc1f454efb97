//! KSM-like pacing: a page rate and a CPU budget, whichever is stricter.
//!
//! The scanner calls [`Throttle::pace`] after each batch with the pages it
//! touched; the throttle sleeps long enough that (a) pages per second stay
//! under the limit and (b) the fraction of wall time spent working stays
//! under the CPU budget.

use std::time::{Duration, Instant};

/// Time source, injectable for tests.
pub trait Clock {
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// The real clock: monotonic time since creation and `thread::sleep`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Limits; `0` pages per second means no rate limit, a budget of `1.0` none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub pages_per_sec: u64,
    /// Fraction of one core, in `(0, 1]`.
    pub cpu_budget: f64,
}

#[derive(Debug)]
pub struct Throttle<C: Clock> {
    limits: Limits,
    clock: C,
    /// End of the last pace call: work since then is the batch just done.
    mark: Duration,
    /// Total time slept, for reports.
    slept: Duration,
}

impl<C: Clock> Throttle<C> {
    pub fn new(limits: Limits, clock: C) -> Self {
        let mark = clock.now();
        Self {
            limits,
            clock,
            mark,
            slept: Duration::ZERO,
        }
    }

    /// Start measuring anew (after an idle pause between rounds).
    pub fn reset(&mut self) {
        self.mark = self.clock.now();
    }

    /// Account `pages` done since the last call and sleep as needed.
    pub fn pace(&mut self, pages: u64) {
        let now = self.clock.now();
        let busy = now.saturating_sub(self.mark);
        let mut wait = Duration::ZERO;
        if self.limits.pages_per_sec > 0 {
            let due = Duration::from_secs_f64(pages as f64 / self.limits.pages_per_sec as f64);
            wait = wait.max(due.saturating_sub(busy));
        }
        let budget = self.limits.cpu_budget;
        if budget > 0.0 && budget < 1.0 {
            wait = wait.max(busy.mul_f64((1.0 - budget) / budget));
        }
        if !wait.is_zero() {
            self.clock.sleep(wait);
            self.slept += wait;
        }
        self.mark = self.clock.now();
    }

    pub fn slept(&self) -> Duration {
        self.slept
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A clock that advances only when told to, recording sleeps.
    #[derive(Debug, Default)]
    pub struct FakeClock {
        pub now: Cell<Duration>,
        pub sleeps: RefCell<Vec<Duration>>,
    }

    impl Clock for &FakeClock {
        fn now(&self) -> Duration {
            self.now.get()
        }
        fn sleep(&self, d: Duration) {
            self.sleeps.borrow_mut().push(d);
            self.now.set(self.now.get() + d);
        }
    }

    #[test]
    fn page_rate_spreads_batches() {
        let clock = FakeClock::default();
        let mut t = Throttle::new(
            Limits {
                pages_per_sec: 1000,
                cpu_budget: 1.0,
            },
            &clock,
        );
        // 100 pages took 10 ms of work: at 1000 pages/s they are due in 100 ms.
        clock.now.set(clock.now.get() + Duration::from_millis(10));
        t.pace(100);
        assert_eq!(*clock.sleeps.borrow(), [Duration::from_millis(90)]);
    }

    #[test]
    fn cpu_budget_sleeps_in_proportion_to_work() {
        let clock = FakeClock::default();
        let mut t = Throttle::new(
            Limits {
                pages_per_sec: 0,
                cpu_budget: 0.25,
            },
            &clock,
        );
        clock.now.set(Duration::from_millis(30));
        t.pace(1);
        // 30 ms busy at a quarter of a core: 90 ms asleep.
        assert_eq!(*clock.sleeps.borrow(), [Duration::from_millis(90)]);
        assert_eq!(t.slept(), Duration::from_millis(90));
    }

    #[test]
    fn no_limits_never_sleep() {
        let clock = FakeClock::default();
        let mut t = Throttle::new(
            Limits {
                pages_per_sec: 0,
                cpu_budget: 1.0,
            },
            &clock,
        );
        clock.now.set(Duration::from_secs(5));
        t.pace(1_000_000);
        assert!(clock.sleeps.borrow().is_empty());
    }
}
