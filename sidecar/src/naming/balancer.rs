//! Round-robin over an app's instances, putting instances that failed recently last.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long a failed instance is tried only after all others.
pub const FAILURE_QUARANTINE: Duration = Duration::from_secs(10);
/// Bounds the bookkeeping maps; past it they are cleared (only fairness is lost).
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Default)]
pub struct Balancer {
    next: Mutex<HashMap<String, usize>>,
    failed: Mutex<HashMap<String, Instant>>,
}

impl Balancer {
    /// The order in which to try `instances` of `app_id`: rotated one further on every call,
    /// recently failed instances moved to the end.
    pub fn order(&self, app_id: &str, mut instances: Vec<String>) -> Vec<String> {
        if instances.len() > 1 {
            // Sort first so the rotation does not depend on the resolver's listing order.
            instances.sort();
            let start = {
                let mut next = self.next.lock();
                if next.len() > MAX_TRACKED {
                    next.clear();
                }
                let counter = next.entry(app_id.to_string()).or_insert(0);
                let start = *counter % instances.len();
                *counter = counter.wrapping_add(1);
                start
            };
            instances.rotate_left(start);
            let failed = self.failed.lock();
            let now = Instant::now();
            instances.sort_by_key(|i| {
                failed
                    .get(i)
                    .is_some_and(|at| now.duration_since(*at) < FAILURE_QUARANTINE)
            });
        }
        instances
    }

    pub fn report_failure(&self, instance: &str) {
        let mut failed = self.failed.lock();
        if failed.len() > MAX_TRACKED {
            failed.clear();
        }
        failed.insert(instance.to_string(), Instant::now());
    }

    pub fn report_success(&self, instance: &str) {
        let mut failed = self.failed.lock();
        if !failed.is_empty() {
            failed.remove(instance);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Vec<String> {
        vec!["b:2".to_string(), "a:1".to_string()]
    }

    #[test]
    fn rotates_and_demotes_failures() {
        let b = Balancer::default();
        assert_eq!(b.order("x", list()), ["a:1", "b:2"]);
        assert_eq!(b.order("x", list()), ["b:2", "a:1"]);
        assert_eq!(b.order("x", list()), ["a:1", "b:2"]);
        b.report_failure("a:1");
        assert_eq!(b.order("x", list()), ["b:2", "a:1"]);
        assert_eq!(b.order("x", list()), ["b:2", "a:1"]);
        b.report_success("a:1");
        assert_eq!(b.order("x", list()), ["b:2", "a:1"]);
        assert_eq!(b.order("x", list()), ["a:1", "b:2"]);
    }
}
