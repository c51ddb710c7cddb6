//! New orders: the one entry point that takes a validated order and returns its outcome
//! ([`Engine::place_order`]). HTTP decodes and maps outcomes to status codes; everything in
//! between — routing, the fast paths, the shard's decision — is here and in the shard, with
//! the sale's rules written once in [`crate::order::rules`].
//!
//! The road of one order:
//! 1. the SKU's slot from the catalogue (else `UnknownSku`); the order's fixed-width keys
//!    ([`crate::inventory::KeyHasher`]) are hashed here, on the caller's task, off the shard;
//! 2. **replay fast path**: a retry of an order already durable is answered from the order
//!    index, with no shard trip (it needs no write, so it is served even while the journal
//!    has stopped admission or the mailbox is full); other content under its id conflicts;
//! 3. a journal stopped for lack of room refuses new orders (`Unavailable`);
//! 4. **sold-out fast path**: what the stock rules refuse is refused here, unless the order
//!    may be a retry of one that got in (the shard answers that one);
//! 5. order review ([`crate::order::review`], when a rule is on): a denied buyer is refused
//!    (`Denied`), a flagged order goes on marked to be held;
//! 6. [`Engine::route`] names the shard that owns the SKU, and the order goes to its bounded
//!    mailbox (full: `Overloaded` with a `Retry-After` from the drain rate);
//! 7. the shard decides it ([`crate::shard::ShardWriter::decide`]) and answers once the
//!    journal holds it as durably as the fsync policy promises.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::{Engine, SubmitError};
use crate::inventory::{ContentFingerprint, DedupCheck, OrderKey};
use crate::journal::OrderAccepted;
use crate::order::{OrderOutcome, OrderStatus, rules};
use crate::shard::{self, Command, OrderCommand};

/// A new order that passed every check needing no engine state (ids, qty range, payment,
/// address size): what [`Engine::place_order`] takes. It is the acceptance record's content,
/// so an accepted order moves into its record whole.
pub type NewOrder = OrderAccepted;

/// Where an order is decided. One variant today; a node of a cluster adds the node that
/// owns the buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The shard of this engine that owns the SKU's slot.
    Shard(usize),
}

impl Engine {
    /// Decides a new order (see the module doc for the road it takes), with no client
    /// address (the review rule on client bursts does not see it).
    pub async fn place_order(&self, order: NewOrder) -> OrderOutcome {
        self.place_order_from(order, None).await
    }

    /// [`Engine::place_order`] for an order from `client` (the HTTP layer's buyer address).
    pub async fn place_order_from(&self, order: NewOrder, client: Option<IpAddr>) -> OrderOutcome {
        let Some(slot_index) = self.slot_of(&order.sku) else {
            return OrderOutcome::UnknownSku;
        };
        let keys = &self.keys;
        let key = keys.order_key(&order.order_id);
        let fingerprint = keys.content_fingerprint(
            &order.user_id,
            &order.sku,
            order.qty,
            order.payment,
            order.address.as_deref(),
        );
        let status = order.payment.initial_status();
        // A durable original answers at once; a pending one is the shard's to answer.
        let mut known = match self.known_order(key, fingerprint, status) {
            Ok(known) => known,
            Err(answer) => return answer,
        };
        if self.journal.is_stopped() {
            return OrderOutcome::Unavailable {
                reason: "journal cannot be written; admission stopped".into(),
            };
        }
        let slot = self.inventory.slot(slot_index);
        let refusal = rules::check_stock(order.qty, slot.max_per_order(), slot.available()).err();
        if let Some(refusal) = refusal {
            // The index was read before the stock: an original still in the mailbox then
            // may have taken the last unit since. The shard inserts an order's index entry
            // before it publishes the stock (`available` is stored with Release, read with
            // Acquire), so a stock read that saw the take sees the entry now: look again
            // before refusing what may be a retry of an order that got in.
            known = known
                || match self.known_order(key, fingerprint, status) {
                    Ok(known) => known,
                    Err(answer) => return answer,
                };
            if !known {
                return refusal;
            }
        }
        // Order review, once the order is known to be new and stock is left.
        let Ok(review) =
            self.review_order(&order.user_id, order.qty, order.address.as_deref(), client)
        else {
            return OrderOutcome::Denied;
        };
        let purchase_key = keys.purchase_key(&order.user_id, &order.sku);
        let (reply, outcome) = oneshot::channel();
        let command = OrderCommand {
            order,
            slot_index,
            key,
            fingerprint,
            purchase_key,
            review,
            reply,
        };
        match self.submit_order(command) {
            Ok(()) => {}
            Err(SubmitError::Overloaded) => {
                let Route::Shard(shard) = self.route(slot_index);
                return OrderOutcome::Overloaded {
                    retry_after_s: self.retry_after_s(Some(shard), 0),
                };
            }
            Err(SubmitError::Stopped) => {
                return OrderOutcome::Unavailable {
                    reason: "engine is stopping".into(),
                };
            }
        }
        outcome.await.unwrap_or_else(|_| OrderOutcome::Unavailable {
            reason: "shard stopped before answering".into(),
        })
    }

    /// What the order index says of an order id: `Ok(false)` unknown, `Ok(true)` known but
    /// not durable yet (its shard will answer), `Err` the answer itself (a durable original's
    /// replay, or a conflict with other content).
    fn known_order(
        &self,
        key: OrderKey,
        fingerprint: ContentFingerprint,
        status: OrderStatus,
    ) -> Result<bool, OrderOutcome> {
        match self.orders.lookup(key, fingerprint) {
            DedupCheck::New => Ok(false),
            DedupCheck::Retry { seq: None } => Ok(true),
            DedupCheck::Retry { seq: Some(seq) } => {
                // An order review still holds answers `held`, as its first answer did.
                let held = self
                    .orders
                    .get(key)
                    .is_some_and(|entry| entry.state().status.is_held());
                let status = if held { OrderStatus::Held } else { status };
                Err(OrderOutcome::Replayed { seq, status })
            }
            DedupCheck::Conflict => Err(OrderOutcome::IdempotencyConflict),
        }
    }

    /// Where the order for a SKU's slot is decided: the routing seam.
    pub fn route(&self, slot_index: u32) -> Route {
        Route::Shard(shard::shard_of(slot_index, self.mailboxes.len()))
    }

    /// Hands an order to its shard's mailbox without waiting (never blocks the caller): the
    /// shard answers on the command's reply channel. [`Engine::place_order`] is the whole
    /// road; this is its last step, for callers that built the command themselves.
    pub fn submit_order(&self, command: OrderCommand) -> Result<(), SubmitError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped);
        }
        let Route::Shard(shard) = self.route(command.slot_index);
        // Stamped for the queue-delay gate's mailbox wait.
        let queued_at = std::time::Instant::now();
        match self.mailboxes[shard].try_send(Command::Order(command, queued_at)) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(SubmitError::Overloaded),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }
}
