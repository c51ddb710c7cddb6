//! Actions on accepted orders: a client's or a payment timer's, decided against the order's
//! durable state, with idempotency keys; and the exchange holds and their settles.

use tokio::sync::oneshot;

use super::turn::{DeferredReply, FrameOwner, Undo};
use super::{ActionOutcome, PaymentTimer, Settle, ShardAction, ShardWriter, TimerKind, shard_of};
use crate::inventory::{KeyCheck, OrderState};
use crate::journal::{Event, KeyedOrderAction, OrderAction, Record, ShipmentAction};
use crate::limits;
use crate::order::{Action, OrderStatus, StockEffect, transition};

/// The journal event of a decided action on an order in `state`, leading to `to`: keyed when
/// the client sent an idempotency key.
fn action_event(request: ShardAction, state: &OrderState, to: OrderStatus) -> Event {
    let action = request.action;
    let change = OrderAction {
        order_id: request.order_id,
        action,
        status: to,
        prev_seq: state.last_seq,
        reason: request.reason,
        redirect: action == Action::Modify && state.status == OrderStatus::Shipped,
        address: request.address,
        restock: action.takes_restock() && request.restock,
        exchange_sku: request.exchange_sku,
    };
    match (request.shipment, request.idempotency) {
        (Some(shipment), idempotency) => Event::Shipment(Box::new(ShipmentAction {
            action: change,
            idempotency_key: idempotency.map(|i| i.key),
            carrier: shipment.carrier,
            tracking_no: shipment.tracking_no,
        })),
        (None, Some(idempotency)) => Event::KeyedAction(Box::new(KeyedOrderAction {
            action: change,
            idempotency_key: idempotency.key,
        })),
        (None, None) => Event::Action(Box::new(change)),
    }
}

/// The order's state after an action's record (`last_seq` is filled in at commit).
fn state_after(state: &OrderState, action: Action, moved: crate::order::Transition) -> OrderState {
    OrderState {
        status: moved.to,
        last_seq: 0,
        last_action: Some(action),
        records: state.records + 1,
        reminded: state.reminded || action == Action::PaymentReminder,
        released: state.released || matches!(moved.stock, StockEffect::GiveBack { .. }),
    }
}

/// Where and when an action that may start a timer happened ([`ShardWriter::timer_after`]).
#[derive(Debug, Clone, Copy)]
pub struct Armed {
    /// The order's record count with the action's record.
    pub records: u32,
    pub slot_index: u32,
    pub at_ms: u64,
}

impl ShardWriter {
    /// Journals the reminders and expiries that are due (at most one batch of them per turn;
    /// the rest fire on the next turn, which comes at once).
    pub fn fire_timers(&mut self, now_ms: u64) {
        let mut fired = 0;
        let mut later = Vec::new();
        while fired < self.batch_max {
            let Some(mut timer) = self.timers.pop_due(now_ms) else {
                break;
            };
            let Some(entry) = self.orders.get(timer.key) else {
                continue;
            };
            let state = entry.state();
            if !timer.kind.applies_to(state.status)
                || (timer.epoch != 0 && timer.epoch != state.records)
            {
                continue;
            }
            if self.has_open_record(timer.key) {
                // A client's action on this order is in the open batch (a payment, perhaps):
                // decide the timer again once that is durable.
                later.push(timer);
                continue;
            }
            let (action, reason) = match timer.kind {
                TimerKind::Payment if now_ms >= timer.deadline_ms => (Action::Expire, None),
                TimerKind::Payment if !state.reminded => (Action::PaymentReminder, None),
                TimerKind::Payment => {
                    // Reminded before a restart: wait for the deadline.
                    timer.due_ms = timer.deadline_ms;
                    self.timers.push(timer);
                    continue;
                }
                TimerKind::Review => (Action::Reject, Some("review_timeout".to_owned())),
                TimerKind::AutoComplete => (Action::Complete, Some("auto".to_owned())),
            };
            let key = timer.key;
            let order_id = timer.order_id.to_string();
            let next = (action == Action::PaymentReminder).then_some(PaymentTimer {
                due_ms: timer.deadline_ms,
                ..timer
            });
            let request = ShardAction {
                order_id,
                key,
                action,
                reason,
                address: None,
                restock: false,
                exchange_sku: None,
                idempotency: None,
                exchange_sold_out: None,
                shipment: None,
            };
            self.decide_action(request, None, next, now_ms);
            fired += 1;
        }
        for timer in later {
            self.timers.push(timer);
        }
    }

    /// Decides one action on an order: a client's (with `reply`) or a timer's.
    pub(super) fn decide_action(
        &mut self,
        request: ShardAction,
        reply: Option<oneshot::Sender<ActionOutcome>>,
        timer: Option<PaymentTimer>,
        at_ms: u64,
    ) {
        let respond = |reply: Option<oneshot::Sender<ActionOutcome>>, outcome| {
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        };
        let key = request.key;
        if self.has_open_record(key) {
            // The record's `prev_seq` must be the seq of the open one: make it durable first.
            self.finish_batch();
        }
        let Some(entry) = self.orders.get(key) else {
            return respond(reply, ActionOutcome::UnknownOrder);
        };
        debug_assert_eq!(
            shard_of(entry.slot_index, self.shard_count),
            self.index,
            "action routed to a shard that does not own the order"
        );
        let state = entry.state();
        let action = request.action;
        if let Some(outcome) = self.retry_outcome(&request, &state) {
            return respond(reply, outcome);
        }
        let Some(moved) = transition(state.status, action, request.restock) else {
            return respond(
                reply,
                ActionOutcome::Refused {
                    status: state.status,
                },
            );
        };
        if let Some(available) = request.exchange_sold_out {
            return respond(reply, ActionOutcome::ExchangeSoldOut { available });
        }
        if action.repeats()
            && action.is_client_action()
            && state.records >= limits::RECORDS_PER_ORDER_MAX - limits::LIFE_RECORDS_RESERVED
        {
            return respond(
                reply,
                ActionOutcome::TooManyRecords {
                    status: state.status,
                },
            );
        }
        debug_assert!(state.records < limits::RECORDS_PER_ORDER_MAX);
        let timer = timer.or_else(|| {
            let armed = Armed {
                records: state.records + 1,
                slot_index: entry.slot_index,
                at_ms,
            };
            self.timer_after(action, moved.to, key, &request.order_id, armed)
        });
        // An exchange with `{"restock": true}`: the unit the buyer sent back is on sale again.
        let restock_one = action == Action::Exchange && request.restock && entry.qty > 0;
        let bind = request
            .idempotency
            .as_ref()
            .map(|idempotency| (idempotency.hash, idempotency.fingerprint));
        let record = Record {
            at_ms,
            event: action_event(request, &state, moved.to),
        };
        if let Err(error) = self.frames.push(&record) {
            tracing::error!(%error, "cannot encode an order action");
            return respond(
                reply,
                ActionOutcome::Unavailable {
                    reason: error.to_string(),
                },
            );
        }
        self.apply_action_effects(entry, moved.stock, restock_one);
        let frame_index = self.frame_owners.len();
        if let Some(reply) = reply {
            self.deferred.push(DeferredReply::Action {
                reply,
                frame_index,
                status: moved.to,
            });
        }
        self.frame_owners.push(FrameOwner::Action {
            key,
            state: state_after(&state, action, moved),
            timer,
            bind,
            restock_one,
        });
    }

    /// An action's stock effects, each with its undo entry: the transition's, and the
    /// returned unit of a restocked exchange.
    fn apply_action_effects(
        &mut self,
        entry: crate::inventory::OrderEntry,
        effect: StockEffect,
        restock_one: bool,
    ) {
        self.apply_effect(&entry, effect);
        self.undo.push(Undo::Action { entry, effect });
        if restock_one {
            self.restock_exchanged(&entry);
            self.undo.push(Undo::ExchangeRestock { entry });
        }
    }

    /// An exchange's returned unit back on sale: one unit of the order's SKU from sold to
    /// available and off the buyer's purchase count. The order then holds one unit fewer
    /// (its entry's `qty`, at publish), so a later restocked `return` never gives it back
    /// twice. Live and on replay.
    pub fn restock_exchanged(&mut self, entry: &crate::inventory::OrderEntry) {
        let one = StockEffect::GiveBack {
            from_reserved: false,
        };
        self.stock.apply(entry.slot_index, 1, one);
        self.purchases.subtract(entry.purchase_key, 1);
    }

    /// Undoes [`ShardWriter::restock_exchanged`] (the batch did not become durable).
    pub(super) fn unrestock_exchanged(&mut self, entry: &crate::inventory::OrderEntry) {
        let one = StockEffect::GiveBack {
            from_reserved: false,
        };
        self.stock.revert(entry.slot_index, 1, one);
        self.purchases.add(entry.purchase_key, 1);
    }

    /// The timer an action starts, live and on replay: an approval starts the payment clock
    /// of a prepaid or escrow order, a delivery the auto-completion's (when it is on).
    pub fn timer_after(
        &self,
        action: Action,
        to: OrderStatus,
        key: crate::inventory::OrderKey,
        order_id: &str,
        armed: Armed,
    ) -> Option<PaymentTimer> {
        match (action, to) {
            (Action::Approve, OrderStatus::PendingPayment) => {
                let timeout_s = self.stock.figures(armed.slot_index).payment_timeout_s;
                Some(PaymentTimer::for_order(
                    key,
                    order_id,
                    armed.at_ms,
                    timeout_s,
                ))
            }
            (_, OrderStatus::Delivered) if self.deadlines.auto_complete_s > 0 => {
                let timer = PaymentTimer::one_shot(
                    TimerKind::AutoComplete,
                    key,
                    order_id,
                    armed.at_ms,
                    self.deadlines.auto_complete_s,
                );
                Some(PaymentTimer {
                    epoch: armed.records,
                    ..timer
                })
            }
            _ => None,
        }
    }

    /// The answer to an action that is a retry, if it is one. With a key, the key alone
    /// tells a retry (or a conflict) from new work; without one, a repeat of the order's
    /// latest (non-repeatable) action is taken for a retry.
    fn retry_outcome(&self, request: &ShardAction, state: &OrderState) -> Option<ActionOutcome> {
        let Some(idempotency) = &request.idempotency else {
            let action = request.action;
            return (!action.repeats() && state.last_action == Some(action)).then_some(
                ActionOutcome::Replayed {
                    status: state.status,
                    seq: None,
                },
            );
        };
        match self
            .keys
            .check(request.key, idempotency.hash, idempotency.fingerprint)
        {
            KeyCheck::New => None,
            KeyCheck::Retry { seq, status } => Some(ActionOutcome::Replayed {
                status,
                seq: Some(seq),
            }),
            KeyCheck::Conflict { .. } => Some(ActionOutcome::IdempotencyConflict),
        }
    }

    /// Moves one unit of the slot from available to reserved for an exchange.
    pub(super) fn hold(&mut self, slot_index: u32) -> Result<(), u64> {
        self.stock.hold(slot_index)?;
        *self.holds.entry(slot_index).or_default() += 1;
        Ok(())
    }

    /// Ends a hold and tells the exchange so (it answers its client only then).
    pub(super) fn apply_settle(&mut self, settle: Settle) {
        self.settle(settle.slot_index, settle.sold);
        let _ = settle.done.send(());
    }

    fn settle(&mut self, slot_index: u32, sold: bool) {
        self.stock.settle_hold(slot_index, sold);
        if let Some(held) = self.holds.get_mut(&slot_index) {
            *held -= 1;
            if *held == 0 {
                self.holds.remove(&slot_index);
            }
        }
    }
}
