//! Shards: the single writers. Every SKU belongs to exactly one shard (`slot_index % shards`);
//! that shard's thread is the only one that changes the SKU's stock slot and purchase counts,
//! so deciding an order needs no lock on stock at all.
//!
//! The loop of one shard:
//! 1. block on the bounded mailbox for one command, then take up to `batch_max` more without
//!    waiting (a batch is whatever arrived while the previous batch was on the disk);
//! 2. decide each order in arrival order: idempotency check, `max_per_order`, stock, purchase
//!    limit; an accepted order takes stock in the slot at once (so later orders in the same
//!    batch see it) and becomes a journal frame, with an undo entry;
//! 3. append the batch's frames to the journal and commit (group commit across shards);
//! 4. on success give each accepted order its `seq` in the dedup index and reply; on failure
//!    undo the batch in reverse order and answer 503 `unavailable`: nothing was taken.
//!
//! Rejections (sold out, purchase limit, conflict, replay of a durable order) are answered at
//! once, without waiting for the batch's fsync. One may rest on a decision of the same batch
//! that is not durable yet (stock an earlier order took, a pending id); if that batch fails,
//! the journal is poisoned and nothing is admitted again before a restart, so no later
//! answer contradicts it. SKU changes
//! are rare: a SKU command first finishes the current batch, then goes through the journal
//! alone, and is applied only after it is durable.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, TryRecvError};
use tokio::sync::oneshot;

use crate::inventory::{
    ContentFingerprint, DedupCheck, DedupIndex, Inventory, OrderKey, PurchaseCounts, PurchaseKey,
    SlotValues,
};
use crate::journal::{Event, FrameBatch, Journal, OrderAccepted, Record, SkuChanged};
use crate::order::{OrderStatus, Payment};

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

/// What happened to an order. Expected outcomes are values, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    Accepted { seq: u64, status: OrderStatus },
    Replayed { seq: u64, status: OrderStatus },
    SoldOut { available: u64 },
    PurchaseLimit { limit: u32, bought: u32 },
    IdempotencyConflict,
    QtyOverMax { max_per_order: u32 },
    Unavailable { reason: String },
}

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

pub enum Command {
    Order(OrderCommand),
    Sku(SkuCommand),
    /// Finish everything before this command, then exit the thread.
    Stop,
}

/// Which shard owns a slot.
pub fn shard_of(slot_index: u32, shard_count: usize) -> usize {
    slot_index as usize % shard_count
}

/// Wall-clock milliseconds, for the record's `at`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// How to take back one accepted order of a failed batch.
struct Undo {
    slot_index: u32,
    qty: u32,
    payment: Payment,
    key: OrderKey,
    purchase_key: PurchaseKey,
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
}

/// One shard's state and loop. Built (and filled by recovery) before its thread starts.
pub struct ShardWriter {
    pub index: usize,
    inventory: Arc<Inventory>,
    dedup: Arc<DedupIndex>,
    pub purchases: PurchaseCounts,
    journal: Option<Journal>,
    batch_max: usize,
    frames: FrameBatch,
    /// Order key of each frame of the current batch (`None` for non-order frames).
    frame_keys: Vec<Option<OrderKey>>,
    undo: Vec<Undo>,
    deferred: Vec<DeferredReply>,
}

impl ShardWriter {
    pub fn new(
        index: usize,
        inventory: Arc<Inventory>,
        dedup: Arc<DedupIndex>,
        batch_max: usize,
    ) -> Self {
        Self {
            index,
            inventory,
            dedup,
            purchases: PurchaseCounts::new(),
            journal: None,
            batch_max,
            frames: FrameBatch::with_capacity(batch_max * 256),
            frame_keys: Vec::with_capacity(batch_max),
            undo: Vec::with_capacity(batch_max),
            deferred: Vec::with_capacity(batch_max),
        }
    }

    /// Replays one accepted order during recovery: the same effects as live, no decisions.
    pub fn replay_accepted(
        &mut self,
        slot_index: u32,
        qty: u32,
        payment: Payment,
        purchase_key: PurchaseKey,
    ) {
        let slot = self.inventory.slot(slot_index);
        let mut values = slot.values();
        values.take(u64::from(qty), payment);
        slot.write(values);
        self.purchases.add(purchase_key, qty);
    }

    /// Starts the shard's thread on its mailbox.
    pub fn spawn(mut self, journal: Journal, mailbox: Receiver<Command>) -> JoinHandle<()> {
        self.journal = Some(journal.clone());
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                // A shard that dies would leave its SKUs unanswerable while `/readyz` said 200.
                // Poisoning the journal stops admission everywhere, turns `/readyz` to 503 and
                // makes the exit code say so; a restart recovers from the journal.
                let run = std::panic::AssertUnwindSafe(move || self.run(mailbox));
                if std::panic::catch_unwind(run).is_err() {
                    journal.poison(format!("shard {index} panicked"));
                }
            })
            .expect("spawn shard thread")
    }

    fn run(mut self, mailbox: Receiver<Command>) {
        let mut batch: Vec<Command> = Vec::with_capacity(self.batch_max);
        loop {
            let Ok(first) = mailbox.recv() else { break };
            batch.push(first);
            while batch.len() < self.batch_max {
                match mailbox.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let at_ms = now_ms();
            let mut stop = false;
            for command in batch.drain(..) {
                match command {
                    Command::Order(order) => self.decide(order, at_ms),
                    Command::Sku(sku) => {
                        self.finish_batch();
                        self.apply_sku(sku, at_ms);
                    }
                    Command::Stop => stop = true,
                }
            }
            self.finish_batch();
            if stop {
                break;
            }
        }
        tracing::debug!(shard = self.index, "shard stopped");
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
        match self.dedup.check_or_insert(key, fingerprint) {
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
                match self.frame_keys.iter().position(|k| *k == Some(key)) {
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
        let slot = self.inventory.slot(slot_index);
        let mut values = slot.values();
        let qty = order.qty;
        let rejection = if qty > values.max_per_order {
            Some(OrderOutcome::QtyOverMax {
                max_per_order: values.max_per_order,
            })
        } else if values.available < u64::from(qty) {
            Some(OrderOutcome::SoldOut {
                available: values.available,
            })
        } else {
            let bought = self.purchases.units(purchase_key);
            let limit = values.per_user_limit;
            let after = u64::from(bought) + u64::from(qty);
            // Counts are u32 for every SKU, limited or not: past u32::MAX units per buyer the
            // counter is the limit (about 4 billion units; far past any real purchase).
            let effective_limit = if limit > 0 { limit } else { u32::MAX };
            (after > u64::from(effective_limit)).then_some(OrderOutcome::PurchaseLimit {
                limit: effective_limit,
                bought,
            })
        };
        if let Some(rejection) = rejection {
            self.dedup.remove_pending(key);
            let _ = reply.send(rejection);
            return;
        }
        let payment = order.payment;
        let record = Record {
            at_ms,
            event: Event::Accepted(order),
        };
        if let Err(error) = self.frames.push(&record) {
            // Validation bounds every field, so this is a bug; refuse the order, keep going.
            tracing::error!(%error, "cannot encode an accepted order");
            self.dedup.remove_pending(key);
            let _ = reply.send(OrderOutcome::Unavailable {
                reason: error.to_string(),
            });
            return;
        }
        values.take(u64::from(qty), payment);
        slot.write(values);
        self.purchases.add(purchase_key, qty);
        self.undo.push(Undo {
            slot_index,
            qty,
            payment,
            key,
            purchase_key,
        });
        self.deferred.push(DeferredReply::Accepted {
            reply,
            frame_index: self.frame_keys.len(),
            status,
        });
        self.frame_keys.push(Some(key));
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
                for (frame_index, key) in self.frame_keys.iter().enumerate() {
                    if let Some(key) = key {
                        self.dedup.set_seq(*key, range.first + frame_index as u64);
                    }
                }
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
                    }
                }
                self.undo.clear();
            }
            Err(error) => {
                for undo in self.undo.drain(..).rev() {
                    let slot = self.inventory.slot(undo.slot_index);
                    let mut values = slot.values();
                    values.untake(u64::from(undo.qty), undo.payment);
                    slot.write(values);
                    self.purchases.subtract(undo.purchase_key, undo.qty);
                    self.dedup.remove_pending(undo.key);
                }
                let reason = error.to_string();
                for deferred in self.deferred.drain(..) {
                    let (DeferredReply::Accepted { reply, .. }
                    | DeferredReply::Replayed { reply, .. }) = deferred;
                    let _ = reply.send(OrderOutcome::Unavailable {
                        reason: reason.clone(),
                    });
                }
            }
        }
        self.frames.clear();
        self.frame_keys.clear();
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
