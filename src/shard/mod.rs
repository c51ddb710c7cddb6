//! Shards: the single writers. Every SKU belongs to exactly one shard (`slot_index % shards`);
//! that shard's thread is the only one that changes the SKU's stock slot and purchase counts,
//! so deciding an order needs no lock on stock at all.
//!
//! The loop of one shard:
//! 1. block on the bounded mailbox for one command (or on the control lane for a settle, or
//!    at most until the next timer, capped so a wall-clock step is noticed), apply every
//!    settle queued, then take up to `batch_max` more commands without waiting (a batch is
//!    whatever arrived while the previous batch was on the disk);
//! 2. decide each order in arrival order: idempotency check, `max_per_order`, stock, purchase
//!    limit; an accepted order takes stock in the slot at once (so later orders in the same
//!    batch see it) and becomes a journal frame, with an undo entry;
//! 3. append the batch's frames to the journal and commit (group commit across shards);
//! 4. on success give each accepted order its `seq` in the order index and reply; on failure
//!    undo the batch in reverse order and answer 503 `unavailable`: nothing was taken.
//!
//! Order actions (`pay`, `cancel`, the fulfilment stages, ...) and the payment timers go the
//! same way: the shard that owns the order's SKU decides them with [`transition`] against the
//! order's durable state in the [`OrderIndex`], applies their stock effect at once (undone if
//! the batch fails), journals them in the batch, and publishes the new state to the index
//! only once the record is durable. An order has at most one undecided record at a time: a
//! second action on an order already changed in the open batch first finishes that batch, so
//! each record's `prev_seq` (the history chain) is known when it is encoded. Before deciding
//! the commands of a turn the shard fires the payment timers that are due, so a payment that
//! arrives after its deadline meets an expired order.
//!
//! An action may carry an idempotency key ([`ActionKey`]). The shard owns the key table of
//! its orders ([`IdempotencyKeys`]): a keyed action whose key is bound on that order is
//! answered from the binding (a retry of the same action and body: the seq and status of the
//! original; another action or body: a conflict) before anything else is decided, and a new
//! key is journaled with its action (`Event::KeyedAction`) and bound only once the record is
//! durable, so a binding always names a record in the journal and a refused action binds
//! nothing. Without a key, a repeat of the order's latest non-repeatable action is a retry.
//!
//! An `exchange` takes a unit of a SKU that another shard may own. Stock slots keep one
//! writer: the engine first asks the SKU's shard to *hold* a unit ([`Command::Hold`]: that
//! shard finishes its open batch, then moves one unit from available to reserved), then sends
//! the exchange to the order's shard, then *settles* the hold (sold if the exchange was
//! journaled, available again if not). The hold is never journaled: after a crash the
//! exchange record alone says a unit was taken, and recovery replays exactly that. The
//! settle ([`Settle`]) finishes something already decided, so it is never shed: it goes on
//! the shard's control lane, not the bounded mailbox, and the shard applies it on its next
//! turn however full its mailbox is (a unit left held would be reserved in memory and sold
//! in the journal, and would block every checkpoint).
//!
//! Rejections (sold out, purchase limit, conflict, replay of a durable order) are answered at
//! once, without waiting for the batch's fsync. One may rest on a decision of the same batch
//! that is not durable yet (stock an earlier order took, a pending id); if that batch fails,
//! the journal stops admission, until a restart or (a full disk) until a write succeeds
//! again: after that such an answer may not hold any more, as it describes a moment, not a
//! durable fact. SKU changes
//! are rare: a SKU command first finishes the current batch, then goes through the journal
//! alone, and is applied only after it is durable. A bulk load (`POST /v1/skus:bulk`) sends
//! each shard one [`Command::SkuBatch`] with all of its SKUs' changes: the shard finishes its
//! batch, checks each change on its own exactly as for a single one (slot name first, stock
//! not below sold + reserved, later changes of a SKU seeing the earlier ones), journals the
//! valid ones in one append and one commit (one fsync for the lot), applies them in order
//! once durable, and answers each change; a refused change journals and applies nothing.

mod stock;
pub mod timers;

pub use stock::Stock;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Select, TryRecvError};
use tokio::sync::oneshot;

use crate::inventory::{
    AcceptedOrder, ActionFingerprint, BoundKey, ContentFingerprint, DedupCheck, IdempotencyKeyHash,
    IdempotencyKeys, Inventory, KeyCheck, OrderEntry, OrderIndex, OrderKey, OrderState,
    PurchaseCounts, PurchaseKey, SlotValues,
};
use crate::journal::{
    Event, FrameBatch, Journal, KeyedOrderAction, OrderAccepted, OrderAction, Record, SkuChanged,
};
use crate::limits;
use crate::order::{Action, OrderStatus, Payment, StockEffect, rules, transition};
pub use timers::{Clock, PaymentTimer, TimerHeap};

/// A decoded, validated order on its way to the shard that owns its SKU. The strings move
/// into the journal record; the keys were computed by the HTTP task, off the shard thread.
pub struct OrderCommand {
    pub order: OrderAccepted,
    pub slot_index: u32,
    pub key: OrderKey,
    pub fingerprint: ContentFingerprint,
    pub purchase_key: PurchaseKey,
    pub reply: oneshot::Sender<OrderOutcome>,
}

pub use crate::order::OrderOutcome;

/// New settings for a SKU; `None` keeps the current value (or the default for a new SKU).
#[derive(Debug, Clone, Default)]
pub struct SkuUpdate {
    pub stock: Option<u64>,
    pub per_user_limit: Option<u32>,
    pub max_per_order: Option<u32>,
    pub payment_timeout_s: Option<u32>,
}

pub struct SkuCommand {
    pub sku: String,
    pub slot_index: u32,
    /// True when the slot is being claimed for a SKU the engine has never seen.
    pub is_new: bool,
    pub update: SkuUpdate,
    pub reply: oneshot::Sender<SkuOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkuOutcome {
    Applied {
        seq: u64,
        values: SlotValues,
    },
    /// `stock` below what is already sold and reserved.
    StockConflict {
        committed: u64,
    },
    Unavailable {
        reason: String,
    },
}

/// One SKU change of a bulk load ([`SkuBatchCommand`]).
#[derive(Debug, Clone)]
pub struct SkuBatchItem {
    pub sku: String,
    pub slot_index: u32,
    /// True when the slot is being claimed for a SKU the engine has never seen (only the
    /// first change of a new SKU; a later one in the same batch updates it).
    pub is_new: bool,
    pub update: SkuUpdate,
}

/// A bulk load's changes for the SKUs of one shard: each is checked on its own (slot name,
/// stock against sold + reserved, after the batch's earlier changes), the valid ones are
/// journaled in one append and one commit, applied once durable, in order, and answered one
/// [`SkuOutcome`] per item, in the items' order.
pub struct SkuBatchCommand {
    pub items: Vec<SkuBatchItem>,
    pub reply: oneshot::Sender<Vec<SkuOutcome>>,
}

/// An action on an accepted order, on its way to the shard that owns the order's SKU.
#[derive(Debug)]
pub struct ActionCommand {
    pub order_id: String,
    pub key: OrderKey,
    pub action: Action,
    pub reason: Option<String>,
    /// `modify`: the new address object as raw JSON text.
    pub address: Option<String>,
    /// `return`: the goods are back and go on sale again.
    pub restock: bool,
    /// `exchange`: the SKU a unit is taken from (already held on its shard).
    pub exchange_sku: Option<String>,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency: Option<ActionKey>,
    /// `exchange` with a key whose unit could not be held (`Some(available)`): sent anyway,
    /// so that a retry is still answered from its key; new work is answered sold out.
    pub exchange_sold_out: Option<u64>,
    pub reply: oneshot::Sender<ActionOutcome>,
}

/// An action's `Idempotency-Key` with its hashes (computed by the HTTP task).
#[derive(Debug, Clone)]
pub struct ActionKey {
    /// As the client sent it; journaled with the action.
    pub key: String,
    pub hash: IdempotencyKeyHash,
    /// The action's name and decoded body ([`crate::inventory::ActionContent`]).
    pub fingerprint: ActionFingerprint,
}

/// What happened to an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// Journaled (durable); the order is now in `status`.
    Done {
        seq: u64,
        status: OrderStatus,
    },
    /// A retry, nothing done again: the action's idempotency key is bound to the record at
    /// `seq`, which left the order in `status` (the answer is the order as of that record),
    /// or, without a key, the order's latest record is already this action (`seq` is `None`,
    /// `status` the order's now: the answer is the order now).
    Replayed {
        status: OrderStatus,
        seq: Option<u64>,
    },
    /// The idempotency key is bound to another action or body on this order (422).
    IdempotencyConflict,
    /// A keyed `exchange` that is new work, but no unit of the new SKU could be held.
    ExchangeSoldOut {
        available: u64,
    },
    /// Not allowed from the order's state (409 `invalid_transition`).
    Refused {
        status: OrderStatus,
    },
    /// A repeatable action (`modify`, `reship`, `exchange`) on an order that has used its
    /// share of `RECORDS_PER_ORDER_MAX` records; the rest are kept for its life's end.
    TooManyRecords {
        status: OrderStatus,
    },
    UnknownOrder,
    Unavailable {
        reason: String,
    },
}

pub enum Command {
    /// An order, and when it was put in the mailbox (its wait there is the shard's queue
    /// delay, which admission control watches).
    Order(OrderCommand, std::time::Instant),
    /// An action, and when it was put in the mailbox.
    Action(ActionCommand, std::time::Instant),
    Sku(SkuCommand),
    /// A bulk load's SKU changes for this shard, journaled together (one fsync).
    SkuBatch(SkuBatchCommand),
    /// Finish the open batch, then move one unit of the slot from available to reserved for
    /// an exchange. Replies `Err(available)` when there is none.
    Hold {
        slot_index: u32,
        reply: oneshot::Sender<Result<(), u64>>,
    },
    /// Wakes the shard to fire timers (a manual clock moved).
    Tick,
    /// Finish the open batch, send what only this shard knows (its timers, its exchange
    /// holds), then pause until `resume` disconnects: while every shard is paused, nothing
    /// changes and the engine copies a consistent checkpoint.
    Checkpoint {
        reply: oneshot::Sender<ShardSnapshot>,
        resume: Receiver<()>,
    },
    /// Finish everything before this command, then exit the thread.
    Stop,
}

/// Ends an exchange's hold: the unit is sold (the exchange is durable) or available again.
/// It is the second half of something already decided, so it never goes through the
/// bounded, shed-able mailbox: it has the shard's control lane (see [`ShardWriter::spawn`]).
/// `done` is answered once the slot shows it, so the exchange's reply never runs ahead of it.
pub struct Settle {
    pub slot_index: u32,
    pub sold: bool,
    pub done: oneshot::Sender<()>,
}

/// A paused shard's part of a checkpoint.
#[derive(Debug)]
pub struct ShardSnapshot {
    pub timers: Vec<PaymentTimer>,
    /// The idempotency keys bound to this shard's orders' actions.
    pub keys: Vec<BoundKey>,
    /// Units held for exchanges not yet settled, per slot: in the slots' `reserved` but in
    /// no journal record. The engine's exchange gate keeps this empty at a checkpoint; the
    /// engine refuses to write one if it is not.
    pub holds: Vec<(u32, u64)>,
}

/// Which shard owns a slot.
pub fn shard_of(slot_index: u32, shard_count: usize) -> usize {
    slot_index as usize % shard_count
}

/// The defaults of a new SKU (contract): no per-user limit, 10 per order, 900 s to pay.
pub fn new_sku_values(update: &SkuUpdate) -> SlotValues {
    let stock = update.stock.unwrap_or(0);
    SlotValues {
        stock_total: stock,
        available: stock,
        reserved: 0,
        sold: 0,
        per_user_limit: update.per_user_limit.unwrap_or(0),
        max_per_order: update
            .max_per_order
            .unwrap_or(crate::config::default_max_per_order()),
        payment_timeout_s: update
            .payment_timeout_s
            .unwrap_or(crate::config::default_payment_timeout_s()),
    }
}

/// Applies an update to an existing SKU; `Err(committed)` when stock would drop below what is
/// sold and reserved.
pub fn updated_sku_values(current: SlotValues, update: &SkuUpdate) -> Result<SlotValues, u64> {
    let committed = current.reserved + current.sold;
    let stock_total = update.stock.unwrap_or(current.stock_total);
    if stock_total < committed {
        return Err(committed);
    }
    Ok(SlotValues {
        stock_total,
        available: stock_total - committed,
        reserved: current.reserved,
        sold: current.sold,
        per_user_limit: update.per_user_limit.unwrap_or(current.per_user_limit),
        max_per_order: update.max_per_order.unwrap_or(current.max_per_order),
        payment_timeout_s: update
            .payment_timeout_s
            .unwrap_or(current.payment_timeout_s),
    })
}

/// How to take back one decision of a failed batch.
enum Undo {
    Accepted {
        slot_index: u32,
        qty: u32,
        payment: Payment,
        key: OrderKey,
        purchase_key: PurchaseKey,
    },
    Action {
        entry: OrderEntry,
        effect: StockEffect,
    },
}

/// What a frame of the open batch is, to publish once it is durable.
enum FrameOwner {
    Accepted {
        key: OrderKey,
        order: AcceptedOrder,
        /// The payment timer of a prepaid or escrow order.
        timer: Option<PaymentTimer>,
    },
    Action {
        key: OrderKey,
        /// The state after the record; `last_seq` is filled in at commit.
        state: OrderState,
        /// A reminder's timer, back in the heap for the deadline.
        timer: Option<PaymentTimer>,
        /// The idempotency key to bind to the record's seq once it is durable.
        bind: Option<(IdempotencyKeyHash, ActionFingerprint)>,
    },
}

/// A reply that waits for the batch's commit.
enum DeferredReply {
    /// The order of frame `frame_index` of this batch.
    Accepted {
        reply: oneshot::Sender<OrderOutcome>,
        frame_index: usize,
        status: OrderStatus,
    },
    /// A retry of an order accepted earlier in this same batch.
    Replayed {
        reply: oneshot::Sender<OrderOutcome>,
        frame_index: usize,
        status: OrderStatus,
    },
    /// An action journaled as frame `frame_index`.
    Action {
        reply: oneshot::Sender<ActionOutcome>,
        frame_index: usize,
        status: OrderStatus,
    },
}

/// An action to decide: a client's, or the payment timer's.
struct ActionRequest {
    order_id: String,
    key: OrderKey,
    action: Action,
    reason: Option<String>,
    address: Option<String>,
    restock: bool,
    exchange_sku: Option<String>,
    idempotency: Option<ActionKey>,
    exchange_sold_out: Option<u64>,
}

/// The journal event of a decided action on an order in `state`, leading to `to`: keyed when
/// the client sent an idempotency key.
fn action_event(request: ActionRequest, state: &OrderState, to: OrderStatus) -> Event {
    let action = request.action;
    let change = OrderAction {
        order_id: request.order_id,
        action,
        status: to,
        prev_seq: state.last_seq,
        reason: request.reason,
        redirect: action == Action::Modify && state.status == OrderStatus::Shipped,
        address: request.address,
        restock: action == Action::Return && request.restock,
        exchange_sku: request.exchange_sku,
    };
    match request.idempotency {
        Some(idempotency) => Event::KeyedAction(Box::new(KeyedOrderAction {
            action: change,
            idempotency_key: idempotency.key,
        })),
        None => Event::Action(Box::new(change)),
    }
}

/// What ended a shard's wait.
enum Wake {
    Command(Command),
    /// A settle arrived on the control lane (and was applied).
    Control,
    /// The earliest timer is due, or the capped sleep ended: read the clock again.
    TimedOut,
    /// The engine is gone.
    Closed,
}

/// One shard's state and loop. Built (and filled by recovery) before its thread starts.
pub struct ShardWriter {
    pub index: usize,
    shard_count: usize,
    /// The slots' figures for SKU changes (claiming a slot, its settings).
    inventory: Arc<Inventory>,
    /// Where every unit this shard sells or takes back moves (the stock seam).
    stock: Stock,
    orders: Arc<OrderIndex>,
    pub purchases: PurchaseCounts,
    pub timers: TimerHeap,
    /// The idempotency keys of this shard's orders' actions.
    pub keys: IdempotencyKeys,
    clock: Clock,
    journal: Option<Journal>,
    batch_max: usize,
    frames: FrameBatch,
    /// One entry per frame of the open batch (SKU changes are journaled on their own).
    frame_owners: Vec<FrameOwner>,
    undo: Vec<Undo>,
    deferred: Vec<DeferredReply>,
    /// Exchange holds not yet settled, per slot.
    holds: std::collections::HashMap<u32, u64>,
    /// Commands decided since start: the engine measures the drain rate from it.
    pub decided: Arc<std::sync::atomic::AtomicU64>,
    /// The longest an order or action taken by a turn had waited in the mailbox before the
    /// turn ahead of it began (its wait beyond one turn: a standing queue), µs plus one (0:
    /// no turn took one), since the engine last read (and reset) it.
    pub mailbox_wait_max_us: Arc<std::sync::atomic::AtomicU64>,
    /// Commands per turn, and timers held, when metrics are on.
    pub batch_size: Option<prometheus::Histogram>,
    pub timers_held: Option<prometheus::IntGauge>,
}

impl ShardWriter {
    pub fn new(
        index: usize,
        shard_count: usize,
        inventory: Arc<Inventory>,
        orders: Arc<OrderIndex>,
        clock: Clock,
        batch_max: usize,
    ) -> Self {
        Self {
            index,
            shard_count,
            stock: Stock::new(inventory.clone()),
            inventory,
            orders,
            purchases: PurchaseCounts::new(),
            timers: TimerHeap::default(),
            keys: IdempotencyKeys::default(),
            clock,
            journal: None,
            batch_max,
            frames: FrameBatch::with_capacity(batch_max * 256),
            frame_owners: Vec::with_capacity(batch_max),
            undo: Vec::with_capacity(batch_max),
            deferred: Vec::with_capacity(batch_max),
            holds: std::collections::HashMap::new(),
            decided: Arc::default(),
            mailbox_wait_max_us: Arc::default(),
            batch_size: None,
            timers_held: None,
        }
    }

    /// Replays one accepted order during recovery: the same effects as live, no decisions.
    pub fn replay_accepted(
        &mut self,
        slot_index: u32,
        qty: u32,
        payment: Payment,
        purchase_key: PurchaseKey,
        timer: Option<PaymentTimer>,
    ) {
        self.stock.take_for_order(slot_index, qty, payment);
        self.purchases.add(purchase_key, qty);
        if let Some(timer) = timer {
            self.timers.push(timer);
        }
    }

    /// Replays the stock effect of one order action during recovery (an exchange's unit is
    /// taken by the caller, from the exchange SKU's slot).
    pub fn replay_action(&mut self, entry: &OrderEntry, effect: StockEffect) {
        self.apply_effect(entry, effect);
    }

    /// Replays the unit an exchange record sold from this shard's SKU (the exchange SKU,
    /// which may be another shard's than the order's). `Err` with what is available when no
    /// unit is: the record is damage.
    pub fn replay_exchange_unit(&mut self, slot_index: u32) -> Result<(), u64> {
        let available = self.stock.figures(slot_index).available;
        if available < 1 {
            return Err(available);
        }
        self.stock.take_exchange_unit(slot_index);
        Ok(())
    }

    /// After recovery: forgets the timers of orders that no longer wait for payment.
    pub fn drop_stale_timers(&mut self) {
        let orders = &self.orders;
        self.timers.retain(|timer| {
            orders
                .get(timer.key)
                .is_some_and(|entry| entry.state().status == OrderStatus::PendingPayment)
        });
    }

    fn apply_effect(&mut self, entry: &OrderEntry, effect: StockEffect) {
        self.stock.apply(entry.slot_index, entry.qty, effect);
        if let StockEffect::GiveBack { .. } = effect {
            self.purchases.subtract(entry.purchase_key, entry.qty);
        }
    }

    fn revert_effect(&mut self, entry: &OrderEntry, effect: StockEffect) {
        self.stock.revert(entry.slot_index, entry.qty, effect);
        if let StockEffect::GiveBack { .. } = effect {
            self.purchases.add(entry.purchase_key, entry.qty);
        }
    }

    /// Starts the shard's thread on its mailbox and its control lane. The lane carries only
    /// [`Settle`]s, which must never be shed or wait behind a full mailbox; the shard waits
    /// on both and applies every queued settle at the start of each turn. The lane is an
    /// unbounded channel (a send never waits or fails for room), bounded by construction:
    /// one settle per exchange holding the engine's exchange gate, which admits at most
    /// [`limits::EXCHANGES_IN_FLIGHT_MAX`] at once.
    pub fn spawn(
        mut self,
        journal: Journal,
        mailbox: Receiver<Command>,
        control: Receiver<Settle>,
    ) -> JoinHandle<()> {
        self.journal = Some(journal.clone());
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                // A shard that dies would leave its SKUs unanswerable while `/readyz` said 200.
                // Poisoning the journal stops admission everywhere, turns `/readyz` to 503 and
                // makes the exit code say so; a restart recovers from the journal.
                let run = std::panic::AssertUnwindSafe(move || self.run(mailbox, control));
                if std::panic::catch_unwind(run).is_err() {
                    journal.poison(format!("shard {index} panicked"));
                }
            })
            .expect("spawn shard thread")
    }

    fn run(mut self, mailbox: Receiver<Command>, control: Receiver<Settle>) {
        let mut batch: Vec<Command> = Vec::with_capacity(self.batch_max);
        let mut previous_turn_started = std::time::Instant::now();
        loop {
            let first = match self.wait(&mailbox, &control) {
                Wake::Command(command) => Some(command),
                Wake::Control | Wake::TimedOut => None,
                Wake::Closed => break,
            };
            while let Ok(settle) = control.try_recv() {
                self.apply_settle(settle);
            }
            if let Some(first) = first {
                batch.push(first);
                while batch.len() < self.batch_max {
                    match mailbox.try_recv() {
                        Ok(command) => batch.push(command),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
            }
            let turn_started = std::time::Instant::now();
            self.note_queue_delay(&batch, previous_turn_started);
            previous_turn_started = turn_started;
            let at_ms = self.clock.now_ms();
            self.fire_timers(at_ms);
            if let Some(histogram) = &self.batch_size {
                histogram.observe(batch.len() as f64);
            }
            self.decided
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let mut stop = false;
            for command in batch.drain(..) {
                match command {
                    Command::Order(order, _) => self.decide(order, at_ms),
                    Command::Action(action, _) => {
                        let ActionCommand {
                            order_id,
                            key,
                            action,
                            reason,
                            address,
                            restock,
                            exchange_sku,
                            idempotency,
                            exchange_sold_out,
                            reply,
                        } = action;
                        let request = ActionRequest {
                            order_id,
                            key,
                            action,
                            reason,
                            address,
                            restock,
                            exchange_sku,
                            idempotency,
                            exchange_sold_out,
                        };
                        self.decide_action(request, Some(reply), None, at_ms);
                    }
                    Command::Sku(sku) => {
                        self.finish_batch();
                        self.apply_sku(sku, at_ms);
                    }
                    Command::SkuBatch(batch) => {
                        self.finish_batch();
                        self.apply_sku_batch(batch, at_ms);
                    }
                    Command::Hold { slot_index, reply } => {
                        self.finish_batch();
                        let _ = reply.send(self.hold(slot_index));
                    }
                    Command::Tick => {}
                    Command::Checkpoint { reply, resume } => {
                        self.finish_batch();
                        let snapshot = ShardSnapshot {
                            timers: self.timers.snapshot(),
                            keys: self.keys.snapshot(),
                            holds: self.holds.iter().map(|(s, n)| (*s, *n)).collect(),
                        };
                        if reply.send(snapshot).is_ok() {
                            // Blocks until the engine has copied its checkpoint.
                            let _ = resume.recv();
                        }
                    }
                    Command::Stop => stop = true,
                }
            }
            self.finish_batch();
            if let Some(gauge) = &self.timers_held {
                gauge.set(self.timers.len() as i64);
            }
            if stop {
                break;
            }
        }
        tracing::debug!(shard = self.index, "shard stopped");
    }

    /// The queue delay of this mailbox: how long the oldest order taken (the mailbox is
    /// FIFO) had waited before the previous turn even began. One that arrived while that
    /// turn ran waited for its fdatasync, which is the group commit's service time, not a
    /// queue: only what a full turn left behind (a standing queue) counts.
    fn note_queue_delay(&self, batch: &[Command], previous_turn_started: std::time::Instant) {
        let oldest_queued_at = batch.iter().find_map(|command| match command {
            Command::Order(_, queued_at) | Command::Action(_, queued_at) => Some(*queued_at),
            _ => None,
        });
        if let Some(queued_at) = oldest_queued_at {
            let beyond_one_turn = previous_turn_started.saturating_duration_since(queued_at);
            self.mailbox_wait_max_us.fetch_max(
                beyond_one_turn.as_micros() as u64 + 1,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Blocks for the next command or settle, or until the earliest timer is due (a settle
    /// is applied here; the turn that follows applies any others queued behind it).
    fn wait(&mut self, mailbox: &Receiver<Command>, control: &Receiver<Settle>) -> Wake {
        let mut select = Select::new();
        let from_mailbox = select.recv(mailbox);
        let from_control = select.recv(control);
        let ready = match self.until_next_timer() {
            None => select.select(),
            Some(wait) => match select.select_timeout(wait) {
                Ok(ready) => ready,
                Err(_) => return Wake::TimedOut,
            },
        };
        // Either channel disconnected means the engine is gone (it holds both senders).
        match ready.index() {
            index if index == from_mailbox => match ready.recv(mailbox) {
                Ok(command) => Wake::Command(command),
                Err(_) => Wake::Closed,
            },
            index => {
                debug_assert_eq!(index, from_control);
                match ready.recv(control) {
                    Ok(settle) => {
                        self.apply_settle(settle);
                        Wake::Control
                    }
                    Err(_) => Wake::Closed,
                }
            }
        }
    }

    /// How long the loop may block before a timer is due (`None`: no timer, block for a
    /// command). The deadline is wall-clock time, and the wall clock can step while the
    /// shard sleeps (back an hour and forward again): the wait is never longer than
    /// [`limits::TIMER_SLEEP_MS_MAX`], so the shard re-reads the clock and fires what has
    /// come due within that bound, with no other command to wake it. A manual clock is
    /// slept on the same way (a `Tick` only wakes the shard sooner).
    fn until_next_timer(&self) -> Option<Duration> {
        let due = self.timers.next_due_ms()?;
        let wait_ms = due.saturating_sub(self.clock.now_ms());
        Some(Duration::from_millis(
            wait_ms.min(limits::TIMER_SLEEP_MS_MAX),
        ))
    }

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
            if state.status != OrderStatus::PendingPayment {
                continue;
            }
            if self.has_open_record(timer.key) {
                // A client's action on this order is in the open batch (a payment, perhaps):
                // decide the timer again once that is durable.
                later.push(timer);
                continue;
            }
            let action = if now_ms >= timer.deadline_ms {
                Action::Expire
            } else if !state.reminded {
                Action::PaymentReminder
            } else {
                // Reminded before a restart: wait for the deadline.
                timer.due_ms = timer.deadline_ms;
                self.timers.push(timer);
                continue;
            };
            let key = timer.key;
            let order_id = timer.order_id.to_string();
            let next = (action == Action::PaymentReminder).then_some(PaymentTimer {
                due_ms: timer.deadline_ms,
                ..timer
            });
            let request = ActionRequest {
                order_id,
                key,
                action,
                reason: None,
                address: None,
                restock: false,
                exchange_sku: None,
                idempotency: None,
                exchange_sold_out: None,
            };
            self.decide_action(request, None, next, now_ms);
            fired += 1;
        }
        for timer in later {
            self.timers.push(timer);
        }
    }

    /// True when a record of this order is in the open batch.
    fn has_open_record(&self, key: OrderKey) -> bool {
        self.frame_owners.iter().any(|owner| {
            matches!(owner, FrameOwner::Action { key: k, .. } | FrameOwner::Accepted { key: k, .. } if *k == key)
        })
    }

    /// Decides one action on an order: a client's (with `reply`) or a timer's.
    fn decide_action(
        &mut self,
        request: ActionRequest,
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
        self.apply_effect(&entry, moved.stock);
        self.undo.push(Undo::Action {
            entry,
            effect: moved.stock,
        });
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
            state: OrderState {
                status: moved.to,
                last_seq: 0,
                last_action: Some(action),
                records: state.records + 1,
                reminded: state.reminded || action == Action::PaymentReminder,
                released: state.released || matches!(moved.stock, StockEffect::GiveBack { .. }),
            },
            timer,
            bind,
        });
    }

    /// The answer to an action that is a retry, if it is one. With a key, the key alone
    /// tells a retry (or a conflict) from new work; without one, a repeat of the order's
    /// latest (non-repeatable) action is taken for a retry.
    fn retry_outcome(&self, request: &ActionRequest, state: &OrderState) -> Option<ActionOutcome> {
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
    fn hold(&mut self, slot_index: u32) -> Result<(), u64> {
        self.stock.hold(slot_index)?;
        *self.holds.entry(slot_index).or_default() += 1;
        Ok(())
    }

    /// Ends a hold and tells the exchange so (it answers its client only then).
    fn apply_settle(&mut self, settle: Settle) {
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

    /// Decides one order (step 2 of the module doc).
    pub fn decide(&mut self, command: OrderCommand, at_ms: u64) {
        let OrderCommand {
            order,
            slot_index,
            key,
            fingerprint,
            purchase_key,
            reply,
        } = command;
        let status = order.payment.initial_status();
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
        let verdict =
            rules::check_stock(qty, values.max_per_order, values.available).and_then(|()| {
                let bought = self.purchases.units(purchase_key);
                rules::check_purchase_limit(qty, bought, values.per_user_limit)
            });
        if let Err(rejection) = verdict {
            self.orders.remove_pending(key);
            let _ = reply.send(rejection);
            return;
        }
        let payment = order.payment;
        // Only an order that waits for payment needs its id again (for the timer's records).
        let timer = status.holds_reserved().then(|| {
            PaymentTimer::for_order(key, &order.order_id, at_ms, values.payment_timeout_s)
        });
        let record = Record {
            at_ms,
            event: Event::Accepted(order),
        };
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

    /// After a commit: makes each frame's owner durable in the tables (the order index, the
    /// timers, the idempotency keys), the batch's frames numbered from `first_seq`.
    fn publish(&mut self, first_seq: u64) {
        for (frame_index, owner) in self.frame_owners.drain(..).enumerate() {
            let seq = first_seq + frame_index as u64;
            match owner {
                FrameOwner::Accepted {
                    key,
                    mut order,
                    timer,
                } => {
                    order.seq = seq;
                    self.orders.commit_accepted(key, order);
                    if let Some(timer) = timer {
                        self.timers.push(timer);
                    }
                }
                FrameOwner::Action {
                    key,
                    mut state,
                    timer,
                    bind,
                } => {
                    state.last_seq = seq;
                    self.orders.set_state(key, state);
                    if let Some((hash, fingerprint)) = bind {
                        self.keys.bind(BoundKey {
                            order: key,
                            key: hash,
                            seq,
                            fingerprint,
                            status: state.status,
                        });
                    }
                    if let Some(timer) = timer {
                        self.timers.push(timer);
                    }
                }
            }
        }
    }

    /// Journals the current batch and replies (steps 3 and 4 of the module doc).
    pub fn finish_batch(&mut self) {
        if self.frames.is_empty() {
            debug_assert!(self.deferred.is_empty());
            return;
        }
        let journal = self
            .journal
            .as_ref()
            .expect("a running shard has a journal");
        let committed = journal.append(&self.frames).and_then(|range| {
            journal.commit(range.last)?;
            Ok(range)
        });
        match committed {
            Ok(range) => {
                self.publish(range.first);
                for deferred in self.deferred.drain(..) {
                    match deferred {
                        DeferredReply::Accepted {
                            reply,
                            frame_index,
                            status,
                        } => {
                            let seq = range.first + frame_index as u64;
                            let _ = reply.send(OrderOutcome::Accepted { seq, status });
                        }
                        DeferredReply::Replayed {
                            reply,
                            frame_index,
                            status,
                        } => {
                            let seq = range.first + frame_index as u64;
                            let _ = reply.send(OrderOutcome::Replayed { seq, status });
                        }
                        DeferredReply::Action {
                            reply,
                            frame_index,
                            status,
                        } => {
                            let seq = range.first + frame_index as u64;
                            let _ = reply.send(ActionOutcome::Done { seq, status });
                        }
                    }
                }
                self.undo.clear();
            }
            Err(error) => {
                let mut undo = std::mem::take(&mut self.undo);
                for undo in undo.drain(..).rev() {
                    match undo {
                        Undo::Accepted {
                            slot_index,
                            qty,
                            payment,
                            key,
                            purchase_key,
                        } => {
                            self.stock.untake_order(slot_index, qty, payment);
                            self.purchases.subtract(purchase_key, qty);
                            self.orders.remove_pending(key);
                        }
                        Undo::Action { entry, effect } => self.revert_effect(&entry, effect),
                    }
                }
                self.undo = undo;
                let reason = error.to_string();
                for deferred in self.deferred.drain(..) {
                    match deferred {
                        DeferredReply::Accepted { reply, .. }
                        | DeferredReply::Replayed { reply, .. } => {
                            let _ = reply.send(OrderOutcome::Unavailable {
                                reason: reason.clone(),
                            });
                        }
                        DeferredReply::Action { reply, .. } => {
                            let _ = reply.send(ActionOutcome::Unavailable {
                                reason: reason.clone(),
                            });
                        }
                    }
                }
                self.frame_owners.clear();
            }
        }
        self.frames.clear();
    }

    /// Journals a SKU change on its own and applies it once durable.
    fn apply_sku(&mut self, command: SkuCommand, at_ms: u64) {
        let SkuCommand {
            sku,
            slot_index,
            is_new,
            update,
            reply,
        } = command;
        let slot = self.inventory.slot(slot_index);
        // The slot must be what the engine thinks it is, checked before anything is journaled
        // (a record that could not be applied would make the journal unreplayable).
        let slot_name = slot.sku_name();
        let slot_matches = if is_new {
            slot_name.is_none()
        } else {
            slot_name.as_deref() == Some(sku.as_str())
        };
        if !slot_matches {
            let reason = format!("slot {slot_index} holds {slot_name:?}, not what {sku} expects");
            tracing::error!(%reason, "sku change refused");
            let _ = reply.send(SkuOutcome::Unavailable { reason });
            return;
        }
        let values = if is_new {
            new_sku_values(&update)
        } else {
            match updated_sku_values(slot.values(), &update) {
                Ok(values) => values,
                Err(committed) => {
                    let _ = reply.send(SkuOutcome::StockConflict { committed });
                    return;
                }
            }
        };
        let record = Record {
            at_ms,
            event: Event::Sku(SkuChanged {
                sku: sku.clone(),
                slot_index,
                stock_total: values.stock_total,
                per_user_limit: values.per_user_limit,
                max_per_order: values.max_per_order,
                payment_timeout_s: values.payment_timeout_s,
            }),
        };
        let journal = self
            .journal
            .as_ref()
            .expect("a running shard has a journal");
        let mut frames = FrameBatch::default();
        let result = frames
            .push(&record)
            .map_err(|e| e.to_string())
            .and_then(|()| journal.append(&frames).map_err(|e| e.to_string()))
            .and_then(|range| {
                journal
                    .commit(range.last)
                    .map(|()| range)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(range) => {
                if is_new {
                    self.inventory.init_slot(slot_index, &sku, values);
                } else {
                    slot.write(values);
                }
                let _ = reply.send(SkuOutcome::Applied {
                    seq: range.first,
                    values,
                });
            }
            Err(reason) => {
                let _ = reply.send(SkuOutcome::Unavailable { reason });
            }
        }
    }
}

impl ShardWriter {
    /// Journals a bulk load's changes for this shard in one append and one commit, applies
    /// them once durable, and answers one outcome per item (see [`SkuBatchCommand`]).
    fn apply_sku_batch(&mut self, command: SkuBatchCommand, at_ms: u64) {
        let SkuBatchCommand { items, reply } = command;
        let mut outcomes: Vec<Option<SkuOutcome>> = vec![None; items.len()];
        // Each slot as the earlier changes of this batch leave it (name, values).
        let mut planned_slots: std::collections::HashMap<u32, (String, SlotValues)> =
            std::collections::HashMap::new();
        // (item index, new slot?, values), one per frame, in frame order.
        let mut planned: Vec<(usize, bool, SlotValues)> = Vec::new();
        let mut frames = FrameBatch::default();
        for (index, item) in items.iter().enumerate() {
            let (slot_name, current) = match planned_slots.get(&item.slot_index) {
                Some((name, values)) => (Some(name.clone()), *values),
                None => {
                    let slot = self.inventory.slot(item.slot_index);
                    (slot.sku_name(), slot.values())
                }
            };
            // The same check as `apply_sku`, before anything is journaled.
            let slot_matches = if item.is_new {
                slot_name.is_none()
            } else {
                slot_name.as_deref() == Some(item.sku.as_str())
            };
            if !slot_matches {
                let reason = format!(
                    "slot {} holds {slot_name:?}, not what {} expects",
                    item.slot_index, item.sku
                );
                tracing::error!(%reason, "sku change refused");
                outcomes[index] = Some(SkuOutcome::Unavailable { reason });
                continue;
            }
            let values = if item.is_new {
                new_sku_values(&item.update)
            } else {
                match updated_sku_values(current, &item.update) {
                    Ok(values) => values,
                    Err(committed) => {
                        outcomes[index] = Some(SkuOutcome::StockConflict { committed });
                        continue;
                    }
                }
            };
            let record = Record {
                at_ms,
                event: Event::Sku(SkuChanged {
                    sku: item.sku.clone(),
                    slot_index: item.slot_index,
                    stock_total: values.stock_total,
                    per_user_limit: values.per_user_limit,
                    max_per_order: values.max_per_order,
                    payment_timeout_s: values.payment_timeout_s,
                }),
            };
            if let Err(error) = frames.push(&record) {
                tracing::error!(%error, "cannot encode a sku change");
                outcomes[index] = Some(SkuOutcome::Unavailable {
                    reason: error.to_string(),
                });
                continue;
            }
            planned_slots.insert(item.slot_index, (item.sku.clone(), values));
            planned.push((index, item.is_new, values));
        }
        if !frames.is_empty() {
            let journal = self
                .journal
                .as_ref()
                .expect("a running shard has a journal");
            let committed = journal.append(&frames).and_then(|range| {
                journal.commit(range.last)?;
                Ok(range)
            });
            match committed {
                Ok(range) => {
                    for (frame_index, (index, is_new, values)) in planned.into_iter().enumerate() {
                        let item = &items[index];
                        if is_new {
                            self.inventory.init_slot(item.slot_index, &item.sku, values);
                        } else {
                            self.inventory.slot(item.slot_index).write(values);
                        }
                        outcomes[index] = Some(SkuOutcome::Applied {
                            seq: range.first + frame_index as u64,
                            values,
                        });
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    for (index, _, _) in planned {
                        outcomes[index] = Some(SkuOutcome::Unavailable {
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every item has an outcome"))
            .collect();
        let _ = reply.send(outcomes);
    }
}
