//! Load signals for admission control: how many commands wait in the shards' mailboxes, how
//! long they wait, how fast the shards drain them, and the `Retry-After` a shed request gets
//! from that drain rate.

use super::Engine;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::shard::Command;

/// Commands per second the shards have been deciding, measured over the last interval of at
/// least 100 ms and smoothed (half the new sample, half the old).
#[derive(Debug, Default)]
pub(super) struct DrainRate {
    at: Option<std::time::Instant>,
    decided: u64,
    per_s: f64,
}

impl Engine {
    /// Commands waiting in all shards' mailboxes.
    pub fn queued(&self) -> usize {
        self.mailboxes.iter().map(|mailbox| mailbox.len()).sum()
    }

    /// How long orders are queueing in the shards' mailboxes beyond the turn in progress
    /// (see `ShardWriter::mailbox_wait_max_us`): the most any turn since the last call saw
    /// or, when no turn took an order since but commands are queued (a shard inside a slow
    /// fdatasync), what the last call saw; zero when nothing is queued. The queue-delay
    /// gate's second signal. Reading resets it, so one reader (the gate's probe) owns it.
    pub fn mailbox_wait(&self) -> Duration {
        let taken = self
            .mailbox_waits
            .iter()
            .map(|wait| wait.swap(0, Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let waited_us = if taken > 0 {
            taken - 1
        } else if self.queued() > 0 {
            self.last_mailbox_wait_us.load(Ordering::Relaxed)
        } else {
            0
        };
        self.last_mailbox_wait_us
            .store(waited_us, Ordering::Relaxed);
        Duration::from_micros(waited_us)
    }

    /// Commands per second all shards are deciding (an estimate for `Retry-After`).
    pub fn drain_rate_per_s(&self) -> f64 {
        let decided: u64 = self
            .decided
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum();
        let now = std::time::Instant::now();
        let mut drain = self.drain.lock();
        match drain.at {
            // Measured only when something is shed, so the last window may have begun long
            // before this burst: averaging a quiet hour in would make the first sheds of a
            // sale say "come back in 60 s". A window over a second old starts afresh (the
            // rate last measured stands until the new one is in).
            Some(at) if now.duration_since(at) > Duration::from_secs(1) => {
                drain.at = Some(now);
                drain.decided = decided;
            }
            Some(at) if now.duration_since(at) >= Duration::from_millis(100) => {
                let sample =
                    (decided - drain.decided) as f64 / now.duration_since(at).as_secs_f64();
                drain.per_s = if drain.per_s == 0.0 {
                    sample
                } else {
                    (drain.per_s + sample) / 2.0
                };
                drain.at = Some(now);
                drain.decided = decided;
            }
            Some(_) => {}
            None => {
                drain.at = Some(now);
                drain.decided = decided;
            }
        }
        drain.per_s
    }

    /// `Retry-After` seconds for a request shed at `shard`'s full mailbox (or, `None`, at the
    /// global in-flight bound with `in_flight` waiting): the backlog over the drain rate.
    pub fn retry_after_s(&self, shard: Option<usize>, in_flight: usize) -> u32 {
        let shards = self.mailboxes.len().max(1) as f64;
        let rate = self.drain_rate_per_s();
        let (queued, per_s) = match shard {
            Some(shard) => (self.mailboxes[shard].len(), rate / shards),
            None => (in_flight, rate),
        };
        retry_after_for_backlog(queued, per_s)
    }

    /// Wakes every shard to fire the timers a moved manual clock made due.
    pub fn tick(&self) {
        for mailbox in &self.mailboxes {
            // A full mailbox means the shard has a turn coming anyway.
            let _ = mailbox.try_send(Command::Tick);
        }
    }
}

/// `Retry-After` seconds for a backlog of `queued` commands drained at `per_s` per second:
/// how long until what is queued now is gone, rounded up, between 1 and 60 seconds.
pub(super) fn retry_after_for_backlog(queued: usize, per_s: f64) -> u32 {
    if per_s <= 0.0 {
        return 1;
    }
    let seconds = (queued as f64 / per_s).ceil();
    seconds.clamp(1.0, 60.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_drain_rate() {
        assert_eq!(retry_after_for_backlog(100, 1000.0), 1);
        assert_eq!(retry_after_for_backlog(5000, 1000.0), 5);
        assert_eq!(retry_after_for_backlog(1_000_000, 10.0), 60);
        assert_eq!(retry_after_for_backlog(10, 0.0), 1);
    }
}
