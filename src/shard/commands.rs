//! The commands a shard takes from its mailbox and control lane, and what it answers.

use crossbeam_channel::Receiver;
use tokio::sync::oneshot;

use super::timers::PaymentTimer;
use crate::inventory::{
    ActionFingerprint, BoundKey, ContentFingerprint, IdempotencyKeyHash, OrderKey, PurchaseKey,
    SlotValues,
};
use crate::journal::OrderAccepted;
use crate::order::{Action, OrderOutcome, OrderStatus};

/// A decoded, validated order on its way to the shard that owns its SKU. The strings move
/// into the journal record; the keys were computed by the HTTP task, off the shard thread.
pub struct OrderCommand {
    pub order: OrderAccepted,
    pub slot_index: u32,
    pub key: OrderKey,
    pub fingerprint: ContentFingerprint,
    pub purchase_key: PurchaseKey,
    /// The review rules that hold the order (empty: it is not held).
    pub review: crate::order::review::ReviewFlags,
    pub reply: oneshot::Sender<OrderOutcome>,
}

/// New settings for a SKU; `None` keeps the current value (or the default for a new SKU).
#[derive(Debug, Clone, Default)]
pub struct SkuUpdate {
    pub stock: Option<u64>,
    pub per_user_limit: Option<u32>,
    pub max_per_order: Option<u32>,
    pub payment_timeout_s: Option<u32>,
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

/// One SKU change of a [`SkuBatchCommand`] (an item of a bulk load, or a single `PUT`).
#[derive(Debug, Clone)]
pub struct SkuBatchItem {
    pub sku: String,
    pub slot_index: u32,
    /// True when the slot is being claimed for a SKU the engine has never seen (only the
    /// first change of a new SKU; a later one in the same batch updates it).
    pub is_new: bool,
    pub update: SkuUpdate,
}

/// The SKU changes for one shard (a bulk load's for its SKUs, or a single `PUT`'s one): each
/// is checked on its own (slot name, stock against sold + reserved, after the batch's earlier
/// changes), the valid ones are journaled in one append and one commit, applied once
/// durable, in order, and answered one [`SkuOutcome`] per item, in the items' order.
pub struct SkuBatchCommand {
    pub items: Vec<SkuBatchItem>,
    pub reply: oneshot::Sender<Vec<SkuOutcome>>,
}

/// Pause (or resume) new orders for one SKU: journaled alone (one record, one commit), the
/// slot's flag set once durable, answered with the record's seq and the slot's figures.
pub struct PauseCommand {
    pub sku: String,
    pub slot_index: u32,
    pub paused: bool,
    pub reply: oneshot::Sender<SkuOutcome>,
}

/// An action on an accepted order, on its way to the shard that owns the order's SKU.
#[derive(Debug)]
pub struct ActionCommand {
    pub action: ShardAction,
    pub reply: oneshot::Sender<ActionOutcome>,
}

/// What the shard decides for one action: a client's (from [`ActionCommand`]) or the payment
/// timer's (`payment_reminder`, `expired`).
#[derive(Debug)]
pub struct ShardAction {
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
    /// `ship`, `reship`, `exchange`: the parcel, journaled with the action. Boxed: most
    /// actions carry none, and every mailbox slot is as large as the largest command.
    pub shipment: Option<Box<Shipment>>,
}

/// A parcel's carrier and tracking number (1..=64 bytes each, validated by HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    pub carrier: String,
    pub tracking_no: String,
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
    /// SKU changes for this shard (a bulk load's, or a single `PUT`'s as a batch of one),
    /// journaled together (one fsync).
    SkuBatch(SkuBatchCommand),
    /// Finish the open batch, then pause or resume new orders for a SKU (journaled).
    Pause(PauseCommand),
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
/// bounded, shed-able mailbox: it has the shard's control lane (see [`super::ShardWriter::spawn`]).
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
