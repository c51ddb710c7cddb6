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
//! same way: the shard that owns the order's SKU decides them with
//! [`transition`](crate::order::transition) against the order's durable state in the
//! [`OrderIndex`], applies their stock effect at once (undone if the batch fails), journals
//! them in the batch, and publishes the new state to the index only once the record is durable.
//! An order has at most one undecided record at a time: a second action on an order already
//! changed in the open batch first finishes that batch, so each record's `prev_seq` (the
//! history chain) is known when it is encoded. Before deciding the commands of a turn the shard
//! fires the payment timers that are due, so a payment that arrives after its deadline meets an
//! expired order.
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
//! durable fact.
//!
//! SKU changes are rare and take one road: [`Command::SkuBatch`], with all of a bulk load's
//! (`POST /v1/skus:bulk`) changes for this shard's SKUs, or the one change of a
//! `PUT /v1/skus/{sku}`. The shard finishes its open batch, checks each change on its own
//! (slot name first, stock not below sold + reserved, later changes of a SKU seeing the
//! earlier ones), journals the valid ones in one append and one commit of their own (one
//! fsync for the lot), applies them in order only once durable, and answers each change; a
//! refused change journals and applies nothing. A pause or resume of a SKU
//! ([`Command::Pause`]) goes the same way with one record of its own; the slot's flag is
//! set once it is durable, and [`ShardWriter::decide`] refuses new orders while it is set.
//!
//! The files, by concern:
//!
//! - `mod.rs`: [`ShardWriter`] and its state, recovery's replay hooks,
//!   [`ShardWriter::spawn`], [`shard_of`];
//! - `commands.rs`: [`Command`] and its payloads ([`OrderCommand`], [`ActionCommand`],
//!   [`SkuBatchCommand`], [`Settle`]), and the outcomes they answer;
//! - `turn.rs`: the loop: waiting, a turn's batch, its one append + commit, the deferred
//!   replies, the undo of a failed batch;
//! - `orders.rs`: [`ShardWriter::decide`], a new order (dedup, then [`crate::order::rules`]);
//! - `actions.rs`: order actions and the payment timers ([`ShardWriter::fire_timers`]),
//!   idempotency keys, exchange holds and settles;
//! - `sku.rs`: SKU changes: a new SKU's defaults, an update's checks, a
//!   [`Command::SkuBatch`] in one commit;
//! - `pause.rs`: [`Command::Pause`], an operator's pause or resume of one SKU;
//! - `stock.rs`: [`Stock`], the seam every unit moves through;
//! - `timers.rs`: [`TimerHeap`], [`PaymentTimer`], [`Clock`].

mod actions;
mod commands;
mod orders;
mod pause;
mod sku;
mod stock;
pub mod timers;
mod turn;

pub use crate::order::OrderOutcome;
pub use actions::Armed;
pub use commands::{
    ActionCommand, ActionKey, ActionOutcome, Command, OrderCommand, PauseCommand, Settle,
    ShardAction, ShardSnapshot, Shipment, SkuBatchCommand, SkuBatchItem, SkuOutcome, SkuUpdate,
};
pub use sku::{new_sku_values, updated_sku_values};
pub use stock::Stock;
pub use timers::{Clock, PaymentTimer, TimerHeap, TimerKind};

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::inventory::{
    IdempotencyKeys, Inventory, OrderEntry, OrderIndex, PurchaseCounts, PurchaseKey,
};
use crate::journal::{FrameBatch, Journal};
use crate::order::{Payment, StockEffect};
use turn::{DeferredReply, FrameOwner, Undo};

/// Which shard owns a slot.
pub fn shard_of(slot_index: u32, shard_count: usize) -> usize {
    slot_index as usize % shard_count
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
    /// `review.timeout_s` and `orders.auto_complete_s` (0: no such timer).
    pub deadlines: Deadlines,
}

/// The engine-wide deadlines of the one-shot timers ([`timers::TimerKind`]), in seconds; 0
/// turns the timer off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadlines {
    pub review_timeout_s: u32,
    pub auto_complete_s: u32,
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
            deadlines: Deadlines::default(),
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
                .is_some_and(|entry| timer.kind.applies_to(entry.state().status))
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
    /// [`crate::limits::EXCHANGES_IN_FLIGHT_MAX`] at once.
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
}
