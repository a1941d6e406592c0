//! Names this mount removed lately (unlink, rmdir, the old name of a rename, a name a
//! newer answer found gone), with when: a listing page or HEAD asked for before the
//! removal but answered after it must not bring the name back, or a `stat` right after
//! an `unlink` returned could find the file again until the metadata TTL ended.
//!
//! A name is remembered for the metadata TTL: an entry recorded from an answer older than
//! that is stale at once and asked for again before anything trusts it. At most
//! [`MAX_REMEMBERED`] names are kept (the oldest are forgotten first), so memory stays
//! bounded however fast a tree is removed under a long TTL.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on the names remembered (about 100 bytes each).
pub const MAX_REMEMBERED: usize = 65_536;

pub struct RemovedNames {
    /// When each name was last removed.
    at: HashMap<(u64, Arc<str>), Instant>,
    /// The same removals, oldest first, for forgetting them in order.
    order: VecDeque<(Instant, u64, Arc<str>)>,
    remember_for: Duration,
}

impl RemovedNames {
    pub fn new(remember_for: Duration) -> RemovedNames {
        RemovedNames {
            at: HashMap::new(),
            order: VecDeque::new(),
            remember_for,
        }
    }

    /// `name` under `parent` was removed at `at`.
    pub fn note(&mut self, parent: u64, name: Arc<str>, at: Instant) {
        self.forget_old(at);
        if self.remember_for.is_zero() {
            return;
        }
        self.at.insert((parent, name.clone()), at);
        self.order.push_back((at, parent, name));
        while self.order.len() > MAX_REMEMBERED {
            self.pop_oldest();
        }
    }

    /// Whether `name` under `parent` was removed here after `asked_at`, when an answer
    /// that shows it was asked for.
    pub fn removed_after(&mut self, parent: u64, name: &str, asked_at: Instant) -> bool {
        if self.order.is_empty() {
            return false; // (the usual case: a listing of 100,000 names costs nothing here)
        }
        self.forget_old(Instant::now());
        self.at
            .get(&(parent, Arc::from(name)))
            .is_some_and(|removed| *removed > asked_at)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.at.len()
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if now.saturating_duration_since(*at) <= self.remember_for {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, parent, name)) = self.order.pop_front() {
            let key = (parent, name);
            // A name removed again later keeps its newer time.
            if self.at.get(&key) == Some(&at) {
                self.at.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_asked_before_the_removal_is_refused_and_one_asked_after_is_not() {
        let mut removed = RemovedNames::new(Duration::from_secs(60));
        let asked_before = Instant::now();
        let at = asked_before + Duration::from_millis(5);
        removed.note(1, Arc::from("f"), at);
        assert!(removed.removed_after(1, "f", asked_before));
        assert!(!removed.removed_after(1, "f", at + Duration::from_millis(1)));
        assert!(!removed.removed_after(1, "g", asked_before));
        assert!(!removed.removed_after(2, "f", asked_before));
    }

    #[test]
    fn names_are_forgotten_after_the_ttl_and_beyond_the_bound() {
        let mut removed = RemovedNames::new(Duration::from_millis(50));
        let long_ago = Instant::now() - Duration::from_secs(1);
        removed.note(1, Arc::from("old"), long_ago);
        removed.note(1, Arc::from("new"), Instant::now());
        assert!(!removed.removed_after(1, "old", long_ago - Duration::from_secs(1)));
        assert_eq!(removed.len(), 1);

        let mut removed = RemovedNames::new(Duration::from_secs(60));
        let asked = Instant::now();
        let at = asked + Duration::from_millis(1);
        for i in 0..MAX_REMEMBERED + 10 {
            removed.note(1, Arc::from(format!("f{i}")), at);
        }
        assert_eq!(removed.len(), MAX_REMEMBERED);
        assert!(!removed.removed_after(1, "f0", asked));
        assert!(removed.removed_after(1, &format!("f{}", MAX_REMEMBERED + 9), asked));
    }

    #[test]
    fn a_name_removed_twice_keeps_its_last_removal() {
        let mut removed = RemovedNames::new(Duration::from_secs(60));
        let t0 = Instant::now();
        removed.note(1, Arc::from("f"), t0);
        removed.note(1, Arc::from("f"), t0 + Duration::from_millis(10));
        assert!(removed.removed_after(1, "f", t0 + Duration::from_millis(5)));
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let mut removed = RemovedNames::new(Duration::ZERO);
        let asked = Instant::now();
        removed.note(1, Arc::from("f"), asked + Duration::from_millis(1));
        assert_eq!(removed.len(), 0);
    }
}
