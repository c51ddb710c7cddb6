//! Replay: the one place that turns records back into state, used by recovery for every
//! record after the checkpoint ([`replay_record`]) and for the checkpoint itself
//! ([`restore_checkpoint`]).
//!
//! Invariant: replaying a record has exactly the effects the live path had when it decided
//! it (stock, the order index, purchase counts, payment timers, idempotency keys); a record
//! the state machine does not allow is damage, and recovery refuses to start on it.

use dashmap::DashMap;

use crate::checkpoint;
use crate::inventory::{
    AcceptedOrder, ActionContent, BoundKey, Inventory, KeyHasher, OrderIndex, OrderState,
    SlotValues,
};
use crate::journal::ArchivedRecord;
use crate::journal::record::ArchivedEvent;
use crate::journal::record::{ArchivedOrderAccepted, ArchivedSkuChanged, ArchivedSkuPaused};
use crate::order::{Action, Payment, StockEffect, transition};
use crate::shard::{self, PaymentTimer, ShardWriter, SkuUpdate, TimerKind};

/// The state recovery rebuilds, borrowed for the replay: the one replayer of the journal's
/// records ([`Replayer::record`]) and of a checkpoint ([`Replayer::checkpoint`]).
pub(super) struct Replayer<'a> {
    pub inventory: &'a Inventory,
    pub orders: &'a OrderIndex,
    pub keys: &'a KeyHasher,
    pub catalog: &'a DashMap<String, u32>,
    /// The next slot to hand out: one past the highest slot claimed so far.
    pub next_slot: u32,
    pub writers: &'a mut [ShardWriter],
    /// The order-review rules of the latest `review_rules` record (or checkpoint), if any.
    pub review_rules: Option<crate::journal::ReviewRulesChanged>,
}

impl Replayer<'_> {
    /// Applies one journal record during recovery: exactly the effects the live path had.
    pub fn record(&mut self, seq: u64, record: &ArchivedRecord) -> Result<(), String> {
        match &record.event {
            ArchivedEvent::Sku(change) => self.sku(change),
            ArchivedEvent::Accepted(order) => {
                self.accepted(seq, order, record.at_ms.to_native(), false)
            }
            ArchivedEvent::Held(held) => {
                self.accepted(seq, &held.order, record.at_ms.to_native(), true)
            }
            ArchivedEvent::ReviewRules(rules) => {
                self.review_rules = Some(
                    rkyv::deserialize::<_, rkyv::rancor::Error>(&**rules)
                        .map_err(|error| format!("review rules do not decode: {error}"))?,
                );
                Ok(())
            }
            event @ (ArchivedEvent::Action(_)
            | ArchivedEvent::KeyedAction(_)
            | ArchivedEvent::Shipment(_)) => self.action(seq, event, record.at_ms.to_native()),
            ArchivedEvent::SkuPause(pause) => self.pause(pause),
        }
    }

    /// A pause or resume: the SKU's slot flag, as the shard set it once the record was durable.
    fn pause(&mut self, pause: &ArchivedSkuPaused) -> Result<(), String> {
        let name = pause.sku.as_str();
        let slot_index = pause.slot_index.to_native();
        match self.catalog.get(name).map(|entry| *entry) {
            Some(existing) if existing == slot_index => {
                self.inventory.slot(slot_index).set_paused(pause.paused);
                Ok(())
            }
            _ => Err(format!(
                "pause of sku {name} on slot {slot_index}, which is not its slot"
            )),
        }
    }

    fn sku(&mut self, change: &ArchivedSkuChanged) -> Result<(), String> {
        let (inventory, catalog) = (self.inventory, self.catalog);
        let slot_index = change.slot_index.to_native();
        if slot_index >= inventory.slots_max() {
            return Err(format!(
                "slot {slot_index} is beyond inventory.skus_max = {}; raise it to start",
                inventory.slots_max()
            ));
        }
        let update = SkuUpdate {
            stock: Some(change.stock_total.to_native()),
            per_user_limit: Some(change.per_user_limit.to_native()),
            max_per_order: Some(change.max_per_order.to_native()),
            payment_timeout_s: Some(change.payment_timeout_s.to_native()),
        };
        let name = change.sku.as_str();
        match catalog.get(name).map(|entry| *entry) {
            Some(existing) if existing != slot_index => {
                return Err(format!(
                    "sku {name} moved from slot {existing} to {slot_index}"
                ));
            }
            Some(_) => {
                let slot = inventory.slot(slot_index);
                let values = shard::updated_sku_values(slot.values(), &update)
                    .map_err(|committed| format!("stock below the {committed} units committed"))?;
                slot.write(values);
            }
            None => {
                if inventory.slot(slot_index).sku_name().is_some() {
                    return Err(format!("slot {slot_index} claimed twice"));
                }
                inventory.init_slot(slot_index, name, shard::new_sku_values(&update));
                catalog.insert(name.to_owned(), slot_index);
                self.next_slot = self.next_slot.max(slot_index + 1);
            }
        }
        Ok(())
    }

    fn accepted(
        &mut self,
        seq: u64,
        order: &ArchivedOrderAccepted,
        at_ms: u64,
        held: bool,
    ) -> Result<(), String> {
        let (inventory, keys) = (self.inventory, self.keys);
        let sku = order.sku.as_str();
        let Some(slot_index) = self.catalog.get(sku).map(|entry| *entry) else {
            return Err(format!("order for unknown sku {sku}"));
        };
        let qty = order.qty.to_native();
        let payment = order.payment.to_native();
        let address = order.address.as_ref().map(|a| a.as_str());
        let user_id = order.user_id.as_str();
        let key = keys.order_key(order.order_id.as_str());
        let fingerprint = keys.content_fingerprint(user_id, sku, qty, payment, address);
        let purchase_key = keys.purchase_key(user_id, sku);
        let status = payment.first_status(held);
        let accepted = AcceptedOrder {
            seq,
            status,
            purchase_key,
            slot_index,
            qty,
        };
        if !self.orders.insert_durable(key, fingerprint, accepted) {
            // Two ids share this process's 64-bit key (or one id was journaled twice). The
            // journal is the truth: the order took its stock, so it is applied; only its
            // index entry is shadowed by the first one (see inventory::keys).
            tracing::warn!(
                seq,
                order_id = order.order_id.as_str(),
                "order key collides with an earlier order; replays of it answer as that one"
            );
        }
        let slot_values = inventory.slot(slot_index).values();
        if slot_values.available < u64::from(qty) {
            return Err(format!(
                "order takes {qty} units of {sku} but only {} left",
                slot_values.available
            ));
        }
        let shards = self.writers.len();
        let writer = &mut self.writers[shard::shard_of(slot_index, shards)];
        let order_id = order.order_id.as_str();
        let review_timeout_s = writer.deadlines.review_timeout_s;
        // As live (`src/shard/orders.rs`): a held order's units are reserved, its timer is
        // the review's.
        let (stock_payment, timer) = if held {
            let timer = (review_timeout_s > 0).then(|| {
                PaymentTimer::one_shot(TimerKind::Review, key, order_id, at_ms, review_timeout_s)
            });
            (Payment::Prepaid, timer)
        } else {
            let timer = status.holds_reserved().then(|| {
                PaymentTimer::for_order(key, order_id, at_ms, slot_values.payment_timeout_s)
            });
            (payment, timer)
        };
        writer.replay_accepted(slot_index, qty, stock_payment, purchase_key, timer);
        Ok(())
    }
}

/// Why a journal that resumes at `resumes_at` cannot continue the state up to
/// `checkpoint_seq` (0: an empty engine).
pub(super) fn records_missing(resumes_at: u64, checkpoint_seq: u64) -> String {
    format!(
        "the journal resumes at seq {resumes_at}, but {} (the state up to seq \
         {checkpoint_seq}) needs seq {} next: records are missing",
        if checkpoint_seq == 0 {
            "an empty engine"
        } else {
            "the checkpoint"
        },
        checkpoint_seq + 1
    )
}

/// Replays one order action (keyed or not): checks it against the state machine, applies its
/// stock effect and the order's new state, and binds its idempotency key, if it has one.
impl Replayer<'_> {
    fn action(&mut self, seq: u64, event: &ArchivedEvent, at_ms: u64) -> Result<(), String> {
        let (orders, keys, catalog) = (self.orders, self.keys, self.catalog);
        let writers = &mut *self.writers;
        let change = event.order_action().expect("an action record");
        let order_id = change.order_id.as_str();
        let key = keys.order_key(order_id);
        let Some(entry) = orders.get(key) else {
            return Err(format!(
                "{} of unknown order {order_id}",
                change.action.to_native().as_str()
            ));
        };
        let state = entry.state();
        let action = change.action.to_native();
        // The live path decided this with the same function on the same state.
        let moved = transition(state.status, action, change.restock).ok_or_else(|| {
            format!(
                "{} of order {order_id} in state {} is not a valid transition",
                action.as_str(),
                state.status.as_str()
            )
        })?;
        let recorded = change.status.to_native();
        if moved.to != recorded || change.prev_seq.to_native() != state.last_seq {
            return Err(format!(
                "{} of order {order_id} records state {} after seq {}, replay says {} after seq {}",
                action.as_str(),
                recorded.as_str(),
                change.prev_seq.to_native(),
                moved.to.as_str(),
                state.last_seq
            ));
        }
        if moved.stock == StockEffect::TakeExchangeUnit {
            let Some(sku) = change.exchange_sku.as_ref().map(|s| s.as_str()) else {
                return Err(format!("exchange of order {order_id} names no sku"));
            };
            let Some(slot_index) = catalog.get(sku).map(|entry| *entry) else {
                return Err(format!("exchange of order {order_id} to unknown sku {sku}"));
            };
            let owner = &mut writers[shard::shard_of(slot_index, writers.len())];
            if owner.replay_exchange_unit(slot_index).is_err() {
                return Err(format!(
                    "exchange of order {order_id} takes a unit of {sku} but none is left"
                ));
            }
        }
        let writer = &mut writers[shard::shard_of(entry.slot_index, writers.len())];
        writer.replay_action(&entry, moved.stock);
        if action == Action::Exchange && change.restock && entry.qty > 0 {
            writer.restock_exchanged(&entry);
            orders.take_one_unit(key);
        }
        let armed = shard::Armed {
            records: state.records + 1,
            slot_index: entry.slot_index,
            at_ms,
        };
        let timer = writer.timer_after(action, moved.to, key, order_id, armed);
        if let Some(timer) = timer {
            writer.timers.push(timer);
        }
        orders.set_state(
            key,
            OrderState {
                status: moved.to,
                last_seq: seq,
                last_action: Some(action),
                records: state.records + 1,
                reminded: state.reminded || action == Action::PaymentReminder,
                released: state.released || matches!(moved.stock, StockEffect::GiveBack { .. }),
            },
        );
        if let Some(given) = event.idempotency_key() {
            writer.keys.bind(BoundKey {
                order: key,
                key: keys.idempotency_key(key, given),
                seq,
                fingerprint: keys.action_fingerprint(ActionContent {
                    action,
                    reason: change.reason.as_ref().map(|r| r.as_str()),
                    address: change.address.as_ref().map(|a| a.as_str()),
                    restock: change.restock,
                    exchange_sku: change.exchange_sku.as_ref().map(|s| s.as_str()),
                    shipment: event.shipment(),
                }),
                status: moved.to,
            });
        }
        Ok(())
    }
}

/// Loads a checkpoint into the empty engine: slots, catalogue, order entries, timers, and
/// the purchase counts (the quantities of the orders that have not given their units back).
impl Replayer<'_> {
    pub fn checkpoint(&mut self, state: &checkpoint::Checkpoint) -> Result<(), String> {
        let (inventory, orders, catalog) = (self.inventory, self.orders, self.catalog);
        let next_slot = &mut self.next_slot;
        let writers = &mut *self.writers;
        for sku in &state.skus {
            if sku.slot_index >= inventory.slots_max() {
                return Err(format!(
                    "slot {} of {} is beyond inventory.skus_max = {}; raise it to start",
                    sku.slot_index,
                    sku.name,
                    inventory.slots_max()
                ));
            }
            let values = SlotValues {
                stock_total: sku.stock_total,
                available: sku.available,
                reserved: sku.reserved,
                sold: sku.sold,
                per_user_limit: sku.per_user_limit,
                max_per_order: sku.max_per_order,
                payment_timeout_s: sku.payment_timeout_s,
            };
            if !values.is_balanced() || catalog.contains_key(&sku.name) {
                return Err(format!("sku {} is inconsistent: {values:?}", sku.name));
            }
            inventory.init_slot(sku.slot_index, &sku.name, values);
            catalog.insert(sku.name.clone(), sku.slot_index);
            *next_slot = (*next_slot).max(sku.slot_index + 1);
        }
        for &slot_index in &state.paused_slots {
            if slot_index >= *next_slot || inventory.slot(slot_index).sku_name().is_none() {
                return Err(format!("slot {slot_index} is paused but holds no sku"));
            }
            inventory.slot(slot_index).set_paused(true);
        }
        let shard_count = writers.len();
        for order in &state.orders {
            let entry = crate::inventory::OrderEntry::from_words(order.words)
                .ok_or_else(|| format!("order entry {:?} is not valid", order.words))?;
            if entry.slot_index >= *next_slot {
                return Err(format!(
                    "an order is on slot {}, which has no sku",
                    entry.slot_index
                ));
            }
            orders.restore(crate::inventory::OrderKey(order.key), entry);
            if !entry.state().released {
                writers[shard::shard_of(entry.slot_index, shard_count)]
                    .purchases
                    .add(entry.purchase_key, entry.qty);
            }
        }
        for saved in &state.idempotency_keys {
            let bound = saved
                .to_bound()
                .ok_or_else(|| format!("an idempotency key with status {}", saved.status))?;
            let Some(entry) = orders.get(bound.order) else {
                return Err(format!(
                    "an idempotency key of order key {:?} that has no entry",
                    bound.order
                ));
            };
            writers[shard::shard_of(entry.slot_index, shard_count)]
                .keys
                .bind(bound);
        }
        for timer in &state.timers {
            let key = crate::inventory::OrderKey(timer.key);
            let Some(entry) = orders.get(key) else {
                return Err(format!(
                    "a timer for order {} that has no entry",
                    timer.order_id
                ));
            };
            writers[shard::shard_of(entry.slot_index, shard_count)]
                .timers
                .push(PaymentTimer {
                    due_ms: timer.due_ms,
                    deadline_ms: timer.deadline_ms,
                    key,
                    order_id: timer.order_id.as_str().into(),
                    kind: TimerKind::from_u8(timer.kind)
                        .ok_or_else(|| format!("a timer of kind {}", timer.kind))?,
                    epoch: timer.epoch,
                });
        }
        if state.review_rules.is_some() {
            self.review_rules = state.review_rules.clone();
        }
        Ok(())
    }
}
