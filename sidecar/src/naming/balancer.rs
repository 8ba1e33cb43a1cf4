//! Round-robin over an app's instances, putting instances that failed recently last.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Instances;

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
    pub fn order(&self, app_id: &str, instances: Instances) -> Instances {
        if instances.len() <= 1 {
            return instances;
        }
        let mut order = instances.to_vec();
        // Sort first so the rotation does not depend on the resolver's listing order.
        order.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let start = {
            let mut next = self.next.lock();
            if next.len() > MAX_TRACKED {
                next.clear();
            }
            let counter = next.entry(app_id.to_string()).or_insert(0);
            let start = *counter % order.len();
            *counter = counter.wrapping_add(1);
            start
        };
        order.rotate_left(start);
        let failed = self.failed.lock();
        let now = Instant::now();
        order.sort_by_key(|i| {
            failed
                .get(i.as_str())
                .is_some_and(|at| now.duration_since(*at) < FAILURE_QUARANTINE)
        });
        order.into()
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

    fn list() -> Instances {
        Instances::from(["b:2".parse().unwrap(), "a:1".parse().unwrap()])
    }

    #[test]
    fn rotates_and_demotes_failures() {
        let b = Balancer::default();
        assert_eq!(*b.order("x", list()), ["a:1", "b:2"]);
        assert_eq!(*b.order("x", list()), ["b:2", "a:1"]);
        assert_eq!(*b.order("x", list()), ["a:1", "b:2"]);
        b.report_failure("a:1");
        assert_eq!(*b.order("x", list()), ["b:2", "a:1"]);
        assert_eq!(*b.order("x", list()), ["b:2", "a:1"]);
        b.report_success("a:1");
        assert_eq!(*b.order("x", list()), ["b:2", "a:1"]);
        assert_eq!(*b.order("x", list()), ["a:1", "b:2"]);
    }
}
