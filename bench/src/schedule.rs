//! The open-loop schedule: request `i` is due at `start + i / rate`, whatever happened to the
//! requests before it. Latency is measured from that intended time, so a stall of the system under
//! test shows up in every request it delayed (no coordinated omission), not just in the one that
//! happened to be in flight.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct OpenLoopSchedule {
    start: Instant,
    rate: f64,
    total: u64,
}

impl OpenLoopSchedule {
    /// `rate` requests per second for `duration`, starting at `start`. At least one request.
    pub fn new(start: Instant, rate: f64, duration: Duration) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let total = ((duration.as_secs_f64() * rate).round() as u64).max(1);
        OpenLoopSchedule { start, rate, total }
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// When request `i` is meant to be sent.
    pub fn intended(&self, i: u64) -> Instant {
        // Computed from the rate each time (not a rounded interval times i, nor accumulated), so
        // rounding never drifts over a long run.
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests are due at `now` (all of `0..n` have intended times <= now).
    pub fn due_at(&self, now: Instant) -> u64 {
        if now < self.start {
            return 0;
        }
        let elapsed = now - self.start;
        let due = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        due.min(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_evenly_spaced_from_the_start() {
        let start = Instant::now();
        let s = OpenLoopSchedule::new(start, 1000.0, Duration::from_secs(2));
        assert_eq!(s.len(), 2000);
        assert_eq!(s.intended(0), start);
        assert_eq!(s.intended(1) - start, Duration::from_millis(1));
        assert_eq!(s.intended(1999) - start, Duration::from_millis(1999));
    }

    #[test]
    fn long_runs_do_not_drift() {
        let start = Instant::now();
        let s = OpenLoopSchedule::new(start, 3000.0, Duration::from_secs(600));
        let last = s.intended(s.len() - 1) - start;
        let expected = Duration::from_secs_f64((s.len() - 1) as f64 / 3000.0);
        let error = last.abs_diff(expected);
        assert!(error < Duration::from_micros(1), "drifted by {error:?}");
    }

    #[test]
    fn due_counts_include_the_request_at_now() {
        let start = Instant::now();
        let s = OpenLoopSchedule::new(start, 100.0, Duration::from_secs(1));
        assert_eq!(s.due_at(start - Duration::from_millis(1)), 0);
        assert_eq!(s.due_at(start), 1);
        assert_eq!(s.due_at(start + Duration::from_millis(9)), 1);
        assert_eq!(s.due_at(start + Duration::from_millis(10)), 2);
        assert_eq!(s.due_at(start + Duration::from_secs(60)), 100);
    }

    #[test]
    fn degenerate_rates_still_schedule_one_request() {
        let start = Instant::now();
        assert_eq!(OpenLoopSchedule::new(start, 0.0, Duration::ZERO).len(), 1);
        assert_eq!(
            OpenLoopSchedule::new(start, f64::NAN, Duration::ZERO).len(),
            1
        );
    }
}
