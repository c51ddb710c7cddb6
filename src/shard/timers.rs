//! Payment deadlines: one min-heap of timers per shard, and the clock they run on.
//!
//! A prepaid or escrow order gets one timer when it is accepted (due at half its payment
//! timeout, for the reminder); when the reminder fires the same timer goes back in, due at
//! the deadline. Paying or cancelling removes nothing: a timer whose order is no longer
//! `pending_payment` is dropped when it comes up (lazy deletion), so a state change costs no
//! heap work. Cost: O(log n) per push and pop, one 40-byte entry plus the order id's bytes
//! per order accepted within the last payment timeout (the heap never holds an order twice).
//!
//! Deadlines are wall-clock milliseconds computed from the acceptance record's `at`, so they
//! survive restarts: recovery pushes the same timers, and an order whose deadline passed
//! while the engine was down expires on the shard's first turn.
//!
//! The wall clock may step (back an hour and forward again) while a shard sleeps until its
//! next timer: the shard never sleeps longer than [`crate::limits::TIMER_SLEEP_MS_MAX`]
//! before it reads the clock again, so a deadline that a step brought nearer is met within
//! that bound. A manual clock moved by hand is met the same way.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::inventory::OrderKey;

/// Where the shards read the time. `Manual` lets tests move time by hand (the property test
/// advances it by minutes in microseconds, the clock-step test sets it back and forward);
/// nothing else changes.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual_ms: Option<Arc<AtomicU64>>,
}

impl Clock {
    pub fn system() -> Self {
        Self { manual_ms: None }
    }

    pub fn manual(start_ms: u64) -> Self {
        Self {
            manual_ms: Some(Arc::new(AtomicU64::new(start_ms))),
        }
    }

    /// Wall-clock milliseconds since the Unix epoch (or the manual time).
    pub fn now_ms(&self) -> u64 {
        match &self.manual_ms {
            Some(manual) => manual.load(Ordering::Acquire),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Moves a manual clock forward; a system clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        let manual = self
            .manual_ms
            .as_ref()
            .expect("only a manual clock can be advanced");
        manual.fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }

    /// Sets a manual clock to `ms`, backward or forward: the step a wall clock takes when
    /// NTP or an operator corrects it. A system clock cannot be set.
    pub fn set_ms(&self, ms: u64) {
        let manual = self
            .manual_ms
            .as_ref()
            .expect("only a manual clock can be set");
        manual.store(ms, Ordering::Release);
    }
}

/// What a timer does when it comes up, and the state its order must be in for it to do
/// anything (any other state: the timer is stale and dropped). The discriminants are stored
/// in checkpoints: append, never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum TimerKind {
    /// `pending_payment`: the reminder at half time, `expired` at the deadline.
    #[default]
    Payment = 0,
    /// `held`: `reject` with reason `review_timeout` at the deadline (order review).
    Review = 1,
    /// `delivered`: `complete` with reason `auto` at the deadline.
    AutoComplete = 2,
}

impl TimerKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        [Self::Payment, Self::Review, Self::AutoComplete]
            .get(usize::from(value))
            .copied()
    }

    /// True when an order in `status` is what this kind of timer waits on.
    pub fn applies_to(self, status: crate::order::OrderStatus) -> bool {
        use crate::order::OrderStatus;
        match self {
            Self::Payment => status == OrderStatus::PendingPayment,
            Self::Review => status.is_held(),
            Self::AutoComplete => status == OrderStatus::Delivered,
        }
    }
}

/// One order's timer: its payment deadline, or (by `kind`) its review or auto-completion
/// deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentTimer {
    /// When the timer fires next: the reminder's time, then the deadline.
    pub due_ms: u64,
    /// The payment deadline: acceptance time + the SKU's `payment_timeout_s`.
    pub deadline_ms: u64,
    pub key: OrderKey,
    /// The journal records of the reminder and the expiry name the order.
    pub order_id: Box<str>,
    pub kind: TimerKind,
    /// An auto-completion's: the order's record count once its `deliver` was journaled. A
    /// reship and a second delivery arm a new timer; the first one, finding more records,
    /// is stale and does nothing. 0 for the other kinds (their states are entered once).
    pub epoch: u32,
}

impl PaymentTimer {
    /// The timer of an order accepted at `accepted_ms` with `timeout_s` to pay.
    pub fn for_order(key: OrderKey, order_id: &str, accepted_ms: u64, timeout_s: u32) -> Self {
        let timeout_ms = u64::from(timeout_s) * 1000;
        Self {
            due_ms: accepted_ms.saturating_add(timeout_ms / 2),
            deadline_ms: accepted_ms.saturating_add(timeout_ms),
            key,
            order_id: order_id.into(),
            kind: TimerKind::Payment,
            epoch: 0,
        }
    }

    /// A one-shot timer of `kind` (review, auto-completion), due `after_s` after `from_ms`.
    pub fn one_shot(
        kind: TimerKind,
        key: OrderKey,
        order_id: &str,
        from_ms: u64,
        after_s: u32,
    ) -> Self {
        let deadline_ms = from_ms.saturating_add(u64::from(after_s) * 1000);
        Self {
            due_ms: deadline_ms,
            deadline_ms,
            key,
            order_id: order_id.into(),
            kind,
            epoch: 0,
        }
    }
}

impl Ord for PaymentTimer {
    /// Reversed on `due_ms`, so that `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .due_ms
            .cmp(&self.due_ms)
            .then_with(|| other.key.0.cmp(&self.key.0))
    }
}

impl PartialOrd for PaymentTimer {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// A shard's timers, earliest first.
#[derive(Debug, Default)]
pub struct TimerHeap {
    heap: BinaryHeap<PaymentTimer>,
}

impl TimerHeap {
    pub fn push(&mut self, timer: PaymentTimer) {
        self.heap.push(timer);
    }

    /// The earliest timer if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<PaymentTimer> {
        if self.heap.peek()?.due_ms <= now_ms {
            self.heap.pop()
        } else {
            None
        }
    }

    /// When the earliest timer is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.heap.peek().map(|timer| timer.due_ms)
    }

    /// Drops timers whose order no longer waits for payment (after recovery, which pushes a
    /// timer for every prepaid order it replays).
    pub fn retain(&mut self, keep: impl FnMut(&PaymentTimer) -> bool) {
        self.heap.retain(keep);
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// A copy of every timer (a checkpoint).
    pub fn snapshot(&self) -> Vec<PaymentTimer> {
        self.heap.iter().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_come_out_earliest_first_and_only_when_due() {
        let mut heap = TimerHeap::default();
        for (n, accepted) in [5_000u64, 1_000, 3_000].into_iter().enumerate() {
            heap.push(PaymentTimer::for_order(
                OrderKey(n as u64),
                "o",
                accepted,
                10,
            ));
        }
        assert_eq!(heap.next_due_ms(), Some(6_000));
        assert!(heap.pop_due(5_999).is_none());
        let first = heap.pop_due(6_000).unwrap();
        assert_eq!((first.due_ms, first.deadline_ms), (6_000, 11_000));
        assert_eq!(heap.pop_due(u64::MAX).unwrap().due_ms, 8_000);
        assert_eq!(heap.pop_due(u64::MAX).unwrap().due_ms, 10_000);
        assert!(heap.is_empty());
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        assert!(Clock::system().now_ms() > 1_600_000_000_000);
    }
}
