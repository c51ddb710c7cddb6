//! The engine: what `serve` starts after the socket is bound. It owns the data directory
//! (exclusively, by lock), runs recovery, starts the shards, seeds the demo catalogue, and is
//! the one handle the HTTP layer talks to.
//!
//! | file | owns |
//! |------|------|
//! | `mod.rs` | the [`Engine`] handle, its errors and views, routing to shards, shutdown |
//! | `start.rs` | start-up, one step a function: data dir, recovery, journal, shards, retention |
//! | `replay.rs` | the one replayer of records and checkpoints into state |
//! | `catalogue.rs` | SKU slots, stock views, single and bulk SKU changes |
//! | `actions.rs` | actions on orders; the exchange's hold and settle across shards |
//! | `history.rs` | an order's history read back from the journal |
//! | `review.rs` | order review: the rule book, journaled rule changes, the held orders' page |
//! | `retention.rs` | checkpoints and the deletion of segments no one needs |
//! | `signals.rs` | mailbox depth and wait, drain rate, `Retry-After` for admission |
//! | `scrape.rs` | the engine's side of `GET /metrics` |
//!
//! Start-up order, each step before the next:
//! 1. lock `<data_dir>/LOCK` (two engines on one journal would interleave sequence numbers);
//! 2. recreate the inventory map and replay the newest checkpoint and the journal after it
//!    into it, the order index and the shards' purchase counts (torn tail truncated; damage
//!    refuses to start);
//! 3. open the journal writer at the recovered tail, and lower any consumer group's offset
//!    above the recovered journal's end to it (a power cut under `fsync = "interval"` or
//!    `"none"` may have taken records it was past);
//! 4. start one thread per shard;
//! 5. resolve the admin token and the consumer token, start retention;
//! 6. create the configured catalogue's SKUs that the journal does not know yet
//!    ([`Engine::seed_catalogue`], async). Only then does `/readyz` turn 200.
//!
//! SKU changes (creation, stock, limits) all pass the `sku_admin` lock, which hands out slots,
//! and take one road: [`Engine::put_skus`] sends one [`crate::shard::Command::SkuBatch`] per
//! shard, one append + commit per shard for the whole bulk; [`Engine::put_sku`] is a bulk
//! change of one (one journal record and fsync). Either runs in its own task, so the catalogue
//! learns each new SKU that was journaled even if the client has gone.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use parking_lot::Mutex;

mod actions;
mod catalogue;
mod console;
mod history;
mod orders;
mod pause;
mod replay;
mod retention;
mod review;
mod scrape;
mod signals;
mod start;

pub use console::EngineFigures;
pub use history::OrderView;
pub use orders::{NewOrder, Route};
pub use pause::PauseError;
use retention::Backoff;
pub use review::{ReviewPage, ReviewRulesError};
use scrape::EngineMetrics;
use signals::DrainRate;

use crate::data_dir::{DataDirError, token_matches};

use crate::inventory::{Inventory, KeyHasher, OrderIndex, SlotValues};
use crate::journal::{self, ConsumerOffsets, Journal, RecoveryError};
use crate::order::Action;
use crate::shard::{Clock, Command, Settle};

/// Why the engine did not start. Every variant names what it could not use.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory's folders, lock, hash keys or tokens ([`crate::data_dir`]).
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The inventory slot file cannot be created with its room (a full disk: ENOSPC).
    #[error("inventory file {path}: {source}")]
    Inventory { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("cannot open the journal for writing: {0}")]
    JournalOpen(io::Error),
    #[error("cannot create catalogue SKU {sku}: {reason}")]
    Catalogue { sku: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
}

/// Why an order could not be handed to its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The shard's mailbox is full: shed with 429 and `Retry-After`.
    Overloaded,
    /// The engine is stopping.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutSkuError {
    StockConflict { committed: u64 },
    CatalogueFull { slots_max: u32 },
    Overloaded,
    Unavailable(String),
}

/// Why a consumer group's offset was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitOffsetError {
    /// The seq is past the journal's last durable record.
    #[error("the seq is past the journal's last durable record {durable_seq}")]
    AheadOfJournal { durable_seq: u64 },
    /// A new group past `CONSUMER_GROUPS_MAX`.
    #[error("{0}")]
    TooManyGroups(String),
    /// The journal could not be synced, or the offset file not written.
    #[error("{0}")]
    Io(io::Error),
}

/// What `GET /v1/skus/{sku}` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkuView {
    pub sku: String,
    pub stock_total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub per_user_limit: u32,
    pub max_per_order: u32,
    pub payment_timeout_s: u32,
    /// New orders refused with 409 `paused` (`POST /v1/skus/{sku}/pause`).
    pub paused: bool,
}

impl SkuView {
    fn new(sku: &str, values: SlotValues) -> Self {
        Self {
            sku: sku.to_owned(),
            stock_total: values.stock_total,
            available: values.available,
            reserved: values.reserved,
            sold: values.sold,
            per_user_limit: values.per_user_limit,
            max_per_order: values.max_per_order,
            payment_timeout_s: values.payment_timeout_s,
            paused: false,
        }
    }

    /// The view of a slot as it is now, its pause flag included.
    fn of_slot(sku: &str, slot: &crate::inventory::Slot) -> Self {
        Self {
            paused: slot.paused(),
            ..Self::new(sku, slot.read())
        }
    }
}

/// A client's action on an order, as the HTTP layer decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRequest {
    pub order_id: String,
    pub action: Action,
    pub reason: Option<String>,
    /// `modify`: the new address object as raw JSON text.
    pub address: Option<String>,
    /// `return`: the goods are back and go on sale again.
    pub restock: bool,
    /// `exchange`: the SKU to take a unit of.
    pub exchange_sku: Option<String>,
    /// The `Idempotency-Key` header (validated), if the client sent one.
    pub idempotency_key: Option<String>,
    /// `ship`, `reship`, `exchange`: the parcel's carrier and tracking number.
    pub shipment: Option<crate::shard::Shipment>,
}

/// Why an action could not be decided by the order's shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// `exchange` to a SKU the engine does not know.
    UnknownSku(String),
    /// `exchange`: no unit of the new SKU is left.
    SoldOut {
        available: u64,
    },
    Overloaded,
    Stopped,
}

/// What recovery did, for the start-up log line.
#[derive(Debug, Clone)]
pub struct StartReport {
    /// Records scanned and checked (all of them; those after the checkpoint were applied).
    pub records_replayed: u64,
    /// The seq of the checkpoint recovery started from, if any.
    pub checkpoint_seq: Option<u64>,
    pub segments: usize,
    pub truncated: Option<(PathBuf, u64, u64)>,
    pub skus: usize,
    pub orders: usize,
    pub generated_token_file: Option<PathBuf>,
    /// `<data_dir>/consumer.token`, when this start created it.
    pub generated_consumer_token_file: Option<PathBuf>,
    /// Groups whose offset was above the journal's end, with the offset they had; each was
    /// lowered to the end.
    pub clamped_groups: Vec<(String, u64)>,
}

pub struct Engine {
    keys: KeyHasher,
    inventory: Arc<Inventory>,
    /// Every accepted order: idempotency, state, and the head of its history chain.
    orders: Arc<OrderIndex>,
    /// The time the shards decide by (the system clock, except in tests).
    clock: Clock,
    /// Consumer groups' committed offsets (`<data_dir>/consumers`).
    consumers: ConsumerOffsets,
    /// The engine's side of `/metrics`, when `metrics.enabled`.
    metrics: Option<EngineMetrics>,
    /// Commands each shard has decided, and the drain rate measured from them.
    decided: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// Each shard's longest mailbox wait since the last read (see [`Engine::mailbox_wait`]).
    mailbox_waits: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// What [`Engine::mailbox_wait`] last answered, µs.
    last_mailbox_wait_us: std::sync::atomic::AtomicU64,
    drain: Mutex<DrainRate>,
    /// SKU name → slot index. Written only under `sku_admin` (or before start).
    catalog: DashMap<String, u32>,
    next_slot: AtomicU32,
    mailboxes: Vec<Sender<Command>>,
    /// Each shard's control lane: the settles of exchanges, never shed (see
    /// [`crate::shard::ShardWriter::spawn`] for its bound).
    control_lanes: Vec<Sender<Settle>>,
    /// The mailboxes' receiving ends, kept to drop what arrives after the shards stopped
    /// (each dropped command's reply channel closes, so its HTTP request answers 503).
    mailbox_leftovers: Vec<Receiver<Command>>,
    stopping: AtomicBool,
    shard_threads: Mutex<Vec<JoinHandle<()>>>,
    /// The journal's interval-sync and preallocator threads; stopped by `Journal::close`.
    journal_threads: Mutex<Vec<JoinHandle<()>>>,
    /// The retention thread and the sender whose drop stops it.
    retention: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    /// One checkpoint at a time (retention and any caller).
    checkpointing: Mutex<()>,
    /// Retention's back-off after a checkpoint it could not take.
    checkpoint_backoff: Mutex<Backoff>,
    /// Held shared by every exchange from its hold to its settle, and exclusively by a
    /// checkpoint: a hold is in no journal record, so no checkpoint may see one. At most
    /// [`limits::EXCHANGES_IN_FLIGHT_MAX`] share it, which bounds the control lanes.
    exchange_gate: tokio::sync::RwLock<()>,
    data_dir: PathBuf,
    journal: Journal,
    journal_dir: PathBuf,
    admin_token: String,
    /// Lets fulfilment workers commit and delete consumer groups (so does the admin token).
    consumer_token: String,
    /// Serialises SKU creation (slot allocation) and updates; never held on the order path.
    sku_admin: tokio::sync::Mutex<()>,
    /// Order review: the rules in force and their tables ([`review`]).
    review: review::ReviewState,
    _lock: File,
}

impl Engine {
    /// The journal: its durable watermark, readers, and whether admission is stopped.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The order-key hash keys of this data directory (callers that build an
    /// [`crate::shard::OrderCommand`] themselves hash with them).
    pub fn keys(&self) -> &KeyHasher {
        &self.keys
    }

    /// An accepted order's status, from the order index (no journal read); `None` for an
    /// order the engine does not know or that is not durable yet.
    pub fn order_status(&self, order_id: &str) -> Option<crate::order::OrderStatus> {
        // `get` returns durable entries only.
        let entry = self.orders.get(self.keys.order_key(order_id))?;
        Some(entry.state().status)
    }

    /// A consumer group's committed offset; `None` if it never committed. Blocking (a file
    /// read).
    pub fn group_offset(&self, group: &str) -> io::Result<Option<u64>> {
        self.consumers.get(group)
    }

    /// Forgets a consumer group (`DELETE /v1/consumers/{group}`); `Ok(false)` if it had no
    /// offset. Blocking (a file removal and a directory sync).
    pub fn delete_group(&self, group: &str) -> io::Result<bool> {
        self.consumers.delete(group)
    }

    pub fn shard_count(&self) -> usize {
        self.mailboxes.len()
    }

    pub fn journal_dir(&self) -> &Path {
        &self.journal_dir
    }

    /// Constant-time comparison of a presented bearer token with the admin token.
    pub fn admin_token_matches(&self, presented: &str) -> bool {
        token_matches(&self.admin_token, presented)
    }

    /// Whether a presented bearer token may commit or delete a consumer group: the consumer
    /// token or the admin token (both compared in constant time, always both).
    pub fn consumer_token_matches(&self, presented: &str) -> bool {
        token_matches(&self.consumer_token, presented) | token_matches(&self.admin_token, presented)
    }

    /// Commits a consumer group's offset (blocking: call it off the async runtime). The seq
    /// must not be past the durable watermark; under `fsync = "interval"` or `"none"` the
    /// journal is synced up to it first, so the offset is never ahead of the disk, also after
    /// a power cut (for `always`, durable is synced and nothing more happens).
    pub fn commit_offset(&self, group: &str, seq: u64) -> Result<(), CommitOffsetError> {
        let durable_seq = self.journal.durable_seq();
        if seq > durable_seq {
            return Err(CommitOffsetError::AheadOfJournal { durable_seq });
        }
        self.journal
            .sync_through(seq)
            .map_err(|error| CommitOffsetError::Io(io::Error::other(error.to_string())))?;
        self.consumers.commit(group, seq).map_err(|error| {
            if error.kind() == io::ErrorKind::QuotaExceeded {
                CommitOffsetError::TooManyGroups(error.to_string())
            } else {
                CommitOffsetError::Io(error)
            }
        })
    }

    /// Stops the shards after they finish what is in their mailboxes, joins them, and syncs
    /// the journal. Blocking; idempotent.
    pub fn shutdown(&self) -> Result<(), journal::JournalError> {
        self.stopping.store(true, Ordering::Release);
        // Retention first: a checkpoint it may be taking needs the shards running.
        if let Some((stop, thread)) = self.retention.lock().take() {
            drop(stop);
            let _ = thread.join();
        }
        for mailbox in &self.mailboxes {
            // A blocking send: the stop must queue behind the orders already admitted.
            let _ = mailbox.send(Command::Stop);
        }
        // Every shard has journaled its last batch once it exits; only then is the final
        // sync guaranteed to cover everything that was acknowledged.
        for thread in self.shard_threads.lock().drain(..) {
            let _ = thread.join();
        }
        // Whatever slipped in behind the stop was never decided: dropping it answers 503.
        for leftovers in &self.mailbox_leftovers {
            while leftovers.try_recv().is_ok() {}
        }
        let result = self.journal.close();
        for thread in self.journal_threads.lock().drain(..) {
            let _ = thread.join();
        }
        result
    }
}
