//! Order review on the engine's side: the rule book every new order is judged by (when a
//! rule is on), the journaled rule changes (`PUT /v1/review/rules`), and the page of held
//! orders (`GET /v1/reviews`). Approve and reject are order actions
//! ([`Engine::order_action`]); the review timeout is a shard timer.
//!
//! Invariants: the rules in force are the config's `[review]` until the first
//! `review_rules` record, then that record's (replayed and checkpointed like any state); a
//! rule change is in the journal, durable, before it applies or is answered. Changes and
//! checkpoints pass the same lock, so a checkpoint's rules are those of its seq.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::{Engine, OrderView};
use crate::journal::{Event, FrameBatch, Record, ReviewRulesChanged};
use crate::order::review::{ReviewBook, ReviewFlags, Verdict, validate_rules};

/// Why a rule change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReviewRulesError {
    /// A rule or list past its bound (422 `invalid`).
    #[error("{0}")]
    Invalid(String),
    /// The journal could not take the record (503 `unavailable`).
    #[error("{0}")]
    Unavailable(String),
}

/// One page of `GET /v1/reviews`.
#[derive(Debug)]
pub struct ReviewPage {
    pub orders: Vec<OrderView>,
    /// The last order of the page when more are held after it.
    pub next_after: Option<String>,
}

/// The engine's review book and whether any rule is on (read without the lock on the order
/// path, so that an engine with no rule pays one atomic load per order).
pub(super) struct ReviewState {
    pub book: parking_lot::Mutex<ReviewBook>,
    pub active: std::sync::atomic::AtomicBool,
    /// True once a `review_rules` record is in force (checkpoints then carry the rules).
    pub journaled: std::sync::atomic::AtomicBool,
}

impl ReviewState {
    pub fn new(config_rules: ReviewRulesChanged, journaled: Option<ReviewRulesChanged>) -> Self {
        let is_journaled = journaled.is_some();
        let book = ReviewBook::new(journaled.unwrap_or(config_rules));
        Self {
            active: book.is_active().into(),
            book: parking_lot::Mutex::new(book),
            journaled: is_journaled.into(),
        }
    }
}

impl Engine {
    /// Judges a new order by the review rules: `Err(())` when its buyer is denied, else the
    /// rules that hold it (empty: not held). `client` is the buyer's address as the HTTP
    /// layer resolved it (trusted proxies honoured).
    pub(super) fn review_order(
        &self,
        user_id: &str,
        qty: u32,
        address: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<ReviewFlags, ()> {
        if !self.review.active.load(Ordering::Acquire) {
            return Ok(ReviewFlags::default());
        }
        let now_ms = self.clock.now_ms();
        match self
            .review
            .book
            .lock()
            .judge(user_id, qty, address, client, now_ms)
        {
            Verdict::Pass => Ok(ReviewFlags::default()),
            Verdict::Hold(flags) => Ok(flags),
            Verdict::Deny => Err(()),
        }
    }

    /// The rules in force (`GET /v1/review/rules`).
    pub fn review_rules(&self) -> ReviewRulesChanged {
        self.review.book.lock().rules().clone()
    }

    /// The rules for a checkpoint: `None` until a change was journaled.
    pub(super) fn review_rules_journaled(&self) -> Option<ReviewRulesChanged> {
        self.review
            .journaled
            .load(Ordering::Acquire)
            .then(|| self.review_rules())
    }

    /// Replaces the rules (`PUT /v1/review/rules`): journals one `review_rules` record,
    /// waits until it is durable, then applies it. Blocking: call it off the async runtime.
    pub fn put_review_rules(&self, rules: ReviewRulesChanged) -> Result<u64, ReviewRulesError> {
        validate_rules(&rules).map_err(ReviewRulesError::Invalid)?;
        // One change at a time, and never inside a checkpoint (see the module doc).
        let _checkpointing = self.checkpointing.lock();
        let mut frames = FrameBatch::with_capacity(crate::limits::RECORD_PAYLOAD_BYTES_MAX);
        frames
            .push(&Record {
                at_ms: self.clock.now_ms(),
                event: Event::ReviewRules(Box::new(rules.clone())),
            })
            .map_err(|error| ReviewRulesError::Invalid(error.to_string()))?;
        let unavailable = |error: crate::journal::JournalError| {
            ReviewRulesError::Unavailable(format!("the rules were not changed: {error}"))
        };
        let range = self.journal.append(&frames).map_err(unavailable)?;
        self.journal.commit(range.last).map_err(unavailable)?;
        let mut book = self.review.book.lock();
        book.replace(rules);
        self.review
            .active
            .store(book.is_active(), Ordering::Release);
        self.review.journaled.store(true, Ordering::Release);
        Ok(range.last)
    }

    /// A page of held orders, oldest first (`GET /v1/reviews`): those accepted after the
    /// order `after` (from the start when `None`; an unknown `after` is `Ok(None)`).
    /// Blocking (journal reads).
    pub fn held_orders(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> std::io::Result<Option<ReviewPage>> {
        let after_seq = match after {
            None => 0,
            Some(order_id) => match self.orders.get(self.keys.order_key(order_id)) {
                Some(entry) => entry.accepted_seq(),
                None => return Ok(None),
            },
        };
        let (held, more) = self.orders.held_after(after_seq, limit);
        let mut orders = Vec::with_capacity(held.len());
        for (seq, _) in held {
            let mut order_id = None;
            self.journal.read_with(seq, &mut |record| {
                order_id = record
                    .event
                    .accepted_order()
                    .map(|order| order.order_id.to_string());
            })?;
            // An order whose acceptance retention deleted (held past `journal.retain_s`)
            // cannot be shown whole; it is left out of the page, not reported as damage.
            if let Some(order_id) = order_id
                && let Some(view) = self.order_view(&order_id)?
            {
                orders.push(view);
            }
        }
        let next_after = more
            .then(|| orders.last().map(|view| view.order_id.clone()))
            .flatten();
        Ok(Some(ReviewPage { orders, next_after }))
    }
}
