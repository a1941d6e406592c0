//! Spacing of the writes to one key, so that a server stamping versions by the
//! millisecond orders them as they were made.
//!
//! Garage 2.5 stamps the version a CopyObject makes with the current millisecond, without
//! ordering it after the key's last version as its PUT and DELETE do; two versions of one
//! millisecond are ordered by their random ids. A copy sent right after another write of
//! the same key then loses to it half of the time: `cp -a` changes a symlink's owner and
//! then its times, each a copy onto itself, and S3 kept the owner change instead of the
//! times for about 1 symlink in 4; a rename onto a name deleted the same millisecond could
//! leave the name deleted.
//!
//! Invariants:
//! - A copy onto a key is sent at least [`GAP`] after the last write of that key through
//!   this store returned, so the server's clock has moved on by a whole millisecond
//!   (whatever the clock offset to ours: only its own rate matters). Writes of other keys,
//!   and copies long after the last write, never wait.
//! - Memory is bounded by the writes of the last [`GAP`]: older ones are forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long after a write of a key a copy onto it waits at least: one millisecond of the
/// server's clock, and a margin for clock reads and timer granularity.
pub const GAP: Duration = Duration::from_micros(1500);

/// Writes remembered before the old ones are swept out.
const SWEEP_AT: usize = 64;

/// When each key recently written through the store was last written.
#[derive(Default)]
pub struct WriteSpacing {
    last_write: Mutex<HashMap<String, Instant>>,
}

impl WriteSpacing {
    /// Waits until a copy onto `key` may be sent.
    pub async fn before_copy(&self, key: &str) {
        let wait = {
            let last = self.last_write.lock().unwrap();
            last.get(key)
                .and_then(|at| GAP.checked_sub(at.elapsed()))
                .filter(|w| !w.is_zero())
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }

    /// Notes that a write of `key` (PUT, completion, copy or DELETE) just returned,
    /// whether it succeeded or not (a failed one may still have been applied).
    pub fn written(&self, key: &str) {
        let mut last = self.last_write.lock().unwrap();
        if last.len() >= SWEEP_AT {
            last.retain(|_, at| at.elapsed() < GAP);
        }
        last.insert(key.to_string(), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The clock is tokio's, paused: it moves only when every task waits.

    #[tokio::test(start_paused = true)]
    async fn a_copy_right_after_a_write_of_its_key_waits_and_others_do_not() {
        let spacing = WriteSpacing::default();
        let start = Instant::now();
        spacing.before_copy("a").await;
        assert_eq!(start.elapsed(), Duration::ZERO, "a key never written");

        spacing.written("a");
        tokio::time::advance(Duration::from_micros(400)).await;
        let asked = Instant::now();
        spacing.before_copy("b").await;
        assert_eq!(asked.elapsed(), Duration::ZERO, "another key");
        spacing.before_copy("a").await;
        assert!(
            asked.elapsed() >= GAP - Duration::from_micros(400),
            "the copy waited for the rest of the gap"
        );

        tokio::time::advance(GAP).await;
        let later = Instant::now();
        spacing.before_copy("a").await;
        assert_eq!(later.elapsed(), Duration::ZERO, "long after the write");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_writes_of_the_last_gap_are_kept() {
        let spacing = WriteSpacing::default();
        for i in 0..SWEEP_AT {
            spacing.written(&format!("k{i}"));
        }
        tokio::time::advance(GAP).await;
        spacing.written("new");
        let kept = spacing.last_write.lock().unwrap();
        assert_eq!(kept.len(), 1, "the old writes were swept out");
        assert!(kept.contains_key("new"));
    }
}
