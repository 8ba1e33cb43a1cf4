//! Offset tracking for one assigned partition.
//!
//! Kafka remembers a consumer group's progress as one offset per partition: "everything before
//! this is done". Messages are handled concurrently and settle in any order, so the ledger keeps
//! every delivered-but-uncommitted offset and lets the commit position advance only over a
//! contiguous run of settled ones. Offsets are tracked as delivered (not assumed to be `n+1`)
//! because compaction and transaction markers leave gaps.

use std::collections::BTreeMap;

/// Per-partition state; the owner wraps it in a mutex.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Delivered offsets at or above the commit position → settled (acked)?
    entries: BTreeMap<i64, bool>,
    /// The highest offset that left `entries` because it and everything before it settled.
    last_settled: Option<i64>,
    /// The last position handed to Kafka (offset of the next message to consume).
    committed: Option<i64>,
}

impl Ledger {
    /// Records a delivered message. Offsets arrive in the partition's order.
    pub fn track(&mut self, offset: i64) {
        if self.last_settled.is_some_and(|s| offset <= s) {
            return;
        }
        self.entries.entry(offset).or_insert(false);
    }

    /// Marks `offset` acked. Returns whether the commit position moved.
    pub fn ack(&mut self, offset: i64) -> bool {
        match self.entries.get_mut(&offset) {
            Some(done) => *done = true,
            None => return false,
        }
        let mut moved = false;
        while let Some(entry) = self.entries.first_entry() {
            if !*entry.get() {
                break;
            }
            self.last_settled = Some(*entry.key());
            entry.remove();
            moved = true;
        }
        moved
    }

    /// Offsets delivered and not yet folded into the commit position.
    pub fn uncommitted(&self) -> usize {
        self.entries.len()
    }

    /// The position to commit (Kafka convention: the offset of the next message to read), if it
    /// moved since the last call to [`Ledger::mark_committed`].
    pub fn pending_commit(&self) -> Option<i64> {
        let position = self.last_settled? + 1;
        (self.committed < Some(position)).then_some(position)
    }

    /// The position everything settled so far allows, whether or not it was committed already.
    pub fn settled_position(&self) -> Option<i64> {
        self.last_settled.map(|s| s + 1)
    }

    pub fn mark_committed(&mut self, position: i64) {
        self.committed = Some(position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_a_contiguous_settled_prefix() {
        let mut l = Ledger::default();
        for o in 0..4 {
            l.track(o);
        }
        assert!(l.ack(0));
        assert!(!l.ack(2));
        assert_eq!(l.pending_commit(), Some(1));
        l.mark_committed(1);
        assert_eq!(l.pending_commit(), None);
        assert_eq!(l.settled_position(), Some(1));
        assert!(l.ack(1));
        assert_eq!(l.pending_commit(), Some(3));
        assert_eq!(l.uncommitted(), 1);
        assert!(l.ack(3));
        assert_eq!(l.pending_commit(), Some(4));
        assert_eq!(l.uncommitted(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_block() {
        let mut l = Ledger::default();
        l.track(10);
        l.track(13);
        l.ack(13);
        assert_eq!(l.pending_commit(), None);
        l.ack(10);
        assert_eq!(l.pending_commit(), Some(14));
    }

    #[test]
    fn unknown_and_repeated_acks_are_ignored() {
        let mut l = Ledger::default();
        l.track(5);
        assert!(!l.ack(4));
        assert!(l.ack(5));
        assert!(!l.ack(5));
        l.track(5);
        assert_eq!(l.uncommitted(), 0);
        assert_eq!(l.pending_commit(), Some(6));
    }
}
