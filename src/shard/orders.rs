//! The decision on a new order: deduplication, then the order rules
//! ([`crate::order::rules`]) against the slot's stock and the buyer's purchases.

use super::turn::{DeferredReply, FrameOwner, Undo};
use super::{OrderCommand, OrderOutcome, PaymentTimer, ShardWriter, TimerKind};
use crate::inventory::{AcceptedOrder, DedupCheck};
use crate::journal::{Event, HeldOrder, Record};
use crate::order::{Payment, rules};

impl ShardWriter {
    /// Decides one order (step 2 of the module doc).
    pub fn decide(&mut self, command: OrderCommand, at_ms: u64) {
        let OrderCommand {
            order,
            slot_index,
            key,
            fingerprint,
            purchase_key,
            review,
            reply,
        } = command;
        let held = !review.is_empty();
        let status = order.payment.first_status(held);
        match self.orders.check_or_insert(key, fingerprint) {
            DedupCheck::New => {}
            DedupCheck::Conflict => {
                let _ = reply.send(OrderOutcome::IdempotencyConflict);
                return;
            }
            DedupCheck::Retry { seq: Some(seq) } => {
                let _ = reply.send(OrderOutcome::Replayed { seq, status });
                return;
            }
            DedupCheck::Retry { seq: None } => {
                // Pending: in this batch (a true retry), or another shard's pending order
                // whose 24-bit fingerprint happens to match (a reuse of the id): conflict.
                let in_batch = self.frame_owners.iter().position(
                    |owner| matches!(owner, FrameOwner::Accepted { key: k, .. } if *k == key),
                );
                match in_batch {
                    Some(frame_index) => self.deferred.push(DeferredReply::Replayed {
                        reply,
                        frame_index,
                        status,
                    }),
                    None => {
                        let _ = reply.send(OrderOutcome::IdempotencyConflict);
                    }
                }
                return;
            }
        }
        let values = self.stock.figures(slot_index);
        let qty = order.qty;
        let paused = self.inventory.slot(slot_index).paused();
        let verdict = rules::check_open(paused)
            .and_then(|()| rules::check_stock(qty, values.max_per_order, values.available))
            .and_then(|()| {
                let bought = self.purchases.units(purchase_key);
                rules::check_purchase_limit(qty, bought, values.per_user_limit)
            });
        if let Err(rejection) = verdict {
            self.orders.remove_pending(key);
            let _ = reply.send(rejection);
            return;
        }
        // A held order's units are reserved whatever its payment (cash on delivery too): its
        // stock moves as a prepaid order's until a reviewer approves it.
        let payment = if held {
            Payment::Prepaid
        } else {
            order.payment
        };
        let timer = self.first_timer(key, &order.order_id, held, status, at_ms, &values);
        let event = if held {
            let review = review.names().into_iter().map(String::from).collect();
            Event::Held(Box::new(HeldOrder { order, review }))
        } else {
            Event::Accepted(order)
        };
        let record = Record { at_ms, event };
        if let Err(error) = self.frames.push(&record) {
            // Validation bounds every field, so this is a bug; refuse the order, keep going.
            tracing::error!(%error, "cannot encode an accepted order");
            self.orders.remove_pending(key);
            let _ = reply.send(OrderOutcome::Unavailable {
                reason: error.to_string(),
            });
            return;
        }
        self.stock.take_for_order(slot_index, qty, payment);
        self.purchases.add(purchase_key, qty);
        self.undo.push(Undo::Accepted {
            slot_index,
            qty,
            payment,
            key,
            purchase_key,
        });
        self.deferred.push(DeferredReply::Accepted {
            reply,
            frame_index: self.frame_owners.len(),
            status,
            review,
        });
        self.frame_owners.push(FrameOwner::Accepted {
            key,
            order: AcceptedOrder {
                seq: 0,
                status,
                purchase_key,
                slot_index,
                qty,
            },
            timer,
        });
    }

    /// The timer a new order starts with. Only an order that waits (for payment, or a
    /// reviewer) needs its id again, for the timer's records; the payment clock of a held
    /// order starts at its approval, so a held order gets the review timer (when
    /// `review.timeout_s` is on) instead.
    fn first_timer(
        &self,
        key: crate::inventory::OrderKey,
        order_id: &str,
        held: bool,
        status: crate::order::OrderStatus,
        at_ms: u64,
        values: &crate::inventory::SlotValues,
    ) -> Option<PaymentTimer> {
        let review_timeout_s = self.deadlines.review_timeout_s;
        if held {
            return (review_timeout_s > 0).then(|| {
                PaymentTimer::one_shot(TimerKind::Review, key, order_id, at_ms, review_timeout_s)
            });
        }
        status
            .holds_reserved()
            .then(|| PaymentTimer::for_order(key, order_id, at_ms, values.payment_timeout_s))
    }
}
