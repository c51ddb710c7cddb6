//! The engine: what `serve` starts after the socket is bound. It owns the data directory
//! (exclusively, by lock), runs recovery, starts the shards, seeds the demo catalogue, and is
//! the one handle the HTTP layer talks to.
//!
//! Start-up order, each step before the next:
//! 1. lock `<data_dir>/LOCK` (two engines on one journal would interleave sequence numbers);
//! 2. recreate the inventory map and replay the journal into it, the order index and the
//!    shards' purchase counts (torn tail truncated; damage refuses to start);
//! 3. open the journal writer at the recovered tail and start one thread per shard;
//!    (and lower any consumer group's offset above the recovered journal's end to it: a
//!    power cut under `fsync = "interval"`/`"none"` may have taken records it was past);
//! 4. resolve the admin token and the consumer token;
//! 5. create the configured catalogue's SKUs that the journal does not know yet
//!    ([`Engine::seed_catalogue`], async). Only then does `/readyz` turn 200.
//!
//! SKU changes (creation, stock, limits) all pass the `sku_admin` lock, which hands out
//! slots: one at a time ([`Engine::put_sku`], one journal record and fsync each) or a bulk
//! load at once ([`Engine::put_skus`]: one [`shard::Command::SkuBatch`] per shard, one
//! append + commit per shard for the whole bulk). Either runs in its own task, so the
//! catalogue learns each new SKU that was journaled even if the client has gone.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::checkpoint;
use crate::config::Config;
use crate::durable;
use crate::inventory::{
    AcceptedOrder, Inventory, KeyHasher, OrderIndex, OrderState, PurchaseCounts, SlotValues,
};
use crate::journal::record::ArchivedEvent;
use crate::journal::storage::{FsStorage, Storage};
use crate::journal::{self, ArchivedRecord, ConsumerOffsets, Journal, RecoveryError};
use crate::limits;
use crate::order::{Action, StockEffect, transition};
use crate::shard::{
    self, ActionCommand, ActionOutcome, Clock, Command, OrderCommand, PaymentTimer, ShardWriter,
    SkuCommand, SkuOutcome, SkuUpdate,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("data directory {0} is locked by another running engine (only one may use a journal)")]
    Locked(PathBuf),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("cannot open the journal for writing: {0}")]
    JournalOpen(io::Error),
    #[error("cannot create catalogue SKU {sku}: {reason}")]
    Catalogue { sku: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("hash keys file {path}: {reason}")]
    HashKeys { path: PathBuf, reason: String },
    #[error("token file {path}: {source}")]
    Token { path: PathBuf, source: io::Error },
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

/// `GET /v1/orders/{id}`: the order as its journal records tell it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OrderView {
    pub order_id: String,
    /// `None` (null) only when retention deleted the order's acceptance record.
    pub user_id: Option<String>,
    pub sku: String,
    pub qty: u32,
    pub payment: Option<&'static str>,
    pub status: &'static str,
    /// The latest address: the last `modify`'s, or the one given with the order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<serde_json::Value>,
    /// Every record of the order, oldest first: `{"event","seq","at",...}`.
    pub history: Vec<serde_json::Value>,
    /// False when retention deleted the segments holding the order's first records: the
    /// history then starts at the oldest record still kept.
    pub history_complete: bool,
}

/// Commands per second the shards have been deciding, measured over the last interval of at
/// least 100 ms and smoothed (half the new sample, half the old).
#[derive(Debug, Default)]
struct DrainRate {
    at: Option<std::time::Instant>,
    decided: u64,
    per_s: f64,
}

/// The engine's metrics: registry, and the gauges set at each scrape.
struct EngineMetrics {
    registry: prometheus::Registry,
    gauges: crate::metrics::ScrapeGauges,
    skus: Vec<String>,
    sku_top: usize,
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
    pub keys: KeyHasher,
    pub inventory: Arc<Inventory>,
    /// Every accepted order: idempotency, state, and the head of its history chain.
    pub orders: Arc<OrderIndex>,
    /// The time the shards decide by (the system clock, except in tests).
    pub clock: Clock,
    /// Consumer groups' committed offsets (`<data_dir>/consumers`).
    pub consumers: ConsumerOffsets,
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
    /// Held shared by every exchange from its hold to its settle, and exclusively by a
    /// checkpoint: a hold is in no journal record, so no checkpoint may see one.
    exchange_gate: tokio::sync::RwLock<()>,
    data_dir: PathBuf,
    pub journal: Journal,
    journal_dir: PathBuf,
    admin_token: String,
    /// Lets fulfilment workers commit and delete consumer groups (so does the admin token).
    consumer_token: String,
    /// Serialises SKU creation (slot allocation) and updates; never held on the order path.
    sku_admin: tokio::sync::Mutex<()>,
    _lock: File,
}

/// Folder of the journal's segments inside the data directory.
pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

impl Engine {
    /// Runs start-up steps 1 to 4 (blocking: call it off the async runtime).
    pub fn start(config: &Config) -> Result<(Arc<Engine>, StartReport), StartError> {
        Self::start_with_clock(config, Clock::system())
    }

    /// [`Engine::start`] on a given clock: tests move a manual clock to fire payment timers.
    pub fn start_with_clock(
        config: &Config,
        clock: Clock,
    ) -> Result<(Arc<Engine>, StartReport), StartError> {
        Self::start_with(config, clock, Arc::new(FsStorage))
    }

    /// [`Engine::start`] on a given clock, writing the journal through `storage` (tests put a
    /// slow or failing disk under a real engine; recovery still reads the files directly).
    pub fn start_with(
        config: &Config,
        clock: Clock,
        storage: Arc<dyn Storage>,
    ) -> Result<(Arc<Engine>, StartReport), StartError> {
        let data_dir = &config.data_dir;
        let dir_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StartError::DataDir { path, source }
        };
        let journal_dir = journal_dir(data_dir);
        durable::create_dir_all(&journal_dir).map_err(dir_err(&journal_dir))?;
        let lock = lock_data_dir(data_dir)?;
        let consumers = ConsumerOffsets::open(data_dir).map_err(dir_err(data_dir))?;

        let inventory = Arc::new(
            Inventory::create(&data_dir.join("inventory.slots"), config.inventory.skus_max)
                .map_err(dir_err(data_dir))?,
        );
        let orders_expected = config.inventory.orders_expected;
        let orders = Arc::new(OrderIndex::with_capacity(orders_expected));
        let keys = load_or_create_hash_keys(data_dir)?;
        let shard_count = config.shard_count();
        let mut writers: Vec<ShardWriter> = (0..shard_count)
            .map(|index| {
                let mut writer = ShardWriter::new(
                    index,
                    shard_count,
                    inventory.clone(),
                    orders.clone(),
                    clock.clone(),
                    config.shard.batch_max,
                );
                writer.purchases = PurchaseCounts::with_capacity(orders_expected);
                writer
            })
            .collect();
        let catalog: DashMap<String, u32> = DashMap::new();
        let mut next_slot = 0u32;

        // A checkpoint, if there is one, stands for the records up to its seq.
        let checkpoints_dir = checkpoint::checkpoints_dir(data_dir);
        let loaded =
            checkpoint::load_latest(&checkpoints_dir).map_err(dir_err(&checkpoints_dir))?;
        let checkpoint_seq = match loaded {
            Some((path, state)) => {
                restore_checkpoint(
                    &state,
                    &inventory,
                    &orders,
                    &catalog,
                    &mut next_slot,
                    &mut writers,
                )
                .map_err(|reason| StartError::Checkpoint {
                    path: path.clone(),
                    reason,
                })?;
                tracing::info!(path = %path.display(), seq = state.seq, orders = state.orders.len(),
                    "starting from a checkpoint");
                state.seq
            }
            None => 0,
        };
        let mut first_replayed: Option<u64> = None;
        let report = journal::recover(&journal_dir, &mut |seq, record: &ArchivedRecord| {
            if seq <= checkpoint_seq {
                return Ok(());
            }
            if first_replayed.is_none() {
                first_replayed = Some(seq);
                if seq != checkpoint_seq + 1 {
                    return Err(records_missing(seq, checkpoint_seq));
                }
            }
            replay(
                seq,
                record,
                &inventory,
                &orders,
                &keys,
                &catalog,
                &mut next_slot,
                &mut writers,
            )
        })?;
        for writer in &mut writers {
            writer.drop_stale_timers();
        }
        // With no record after the checkpoint, nothing above checked that the journal
        // resumes where the state needs it: an empty last segment (a crash right after a
        // rotation) names the next seq, and it must be the one after the checkpoint, or
        // records between them are missing.
        if first_replayed.is_none() && report.tail.next_seq > checkpoint_seq + 1 {
            return Err(StartError::Checkpoint {
                path: checkpoints_dir,
                reason: records_missing(report.tail.next_seq, checkpoint_seq),
            });
        }
        if report.tail.next_seq <= checkpoint_seq {
            return Err(StartError::Checkpoint {
                path: checkpoints_dir,
                reason: format!(
                    "the checkpoint covers seq {checkpoint_seq} but the journal ends at seq {}",
                    report.tail.next_seq - 1
                ),
            });
        }

        // An offset past the journal's end would skip the records that reuse those seqs.
        let journal_end = report.tail.next_seq - 1;
        let clamped_groups = consumers
            .clamp_to(journal_end)
            .map_err(dir_err(&journal::consumers::consumers_dir(data_dir)))?;
        for (group, offset) in &clamped_groups {
            tracing::warn!(group = %group, old_offset = offset, new_offset = journal_end,
                "consumer group offset was past the journal's end (records lost to a power \
                 cut?); lowered to the end");
        }

        let journal = Journal::open_with(
            storage,
            &journal_dir,
            config.journal.fsync,
            config.journal.segment_bytes_max,
            report.tail.clone(),
        )
        .map_err(StartError::JournalOpen)?;

        let metrics = config.metrics.enabled.then(|| {
            let registry = prometheus::Registry::new();
            let batch_sizes = crate::metrics::batch_size_histograms(&registry, shard_count);
            let gauges = crate::metrics::ScrapeGauges::register(&registry);
            let fsync = crate::metrics::fsync_histogram();
            registry
                .register(Box::new(fsync.clone()))
                .expect("fsync histogram registers once");
            let _ = journal.stats().fsync_seconds.set(fsync);
            for (writer, batch_size) in writers.iter_mut().zip(batch_sizes) {
                writer.batch_size = Some(batch_size);
                writer.timers_held = Some(
                    gauges
                        .payment_timers
                        .with_label_values(&[&writer.index.to_string()]),
                );
            }
            EngineMetrics {
                registry,
                gauges,
                skus: config.metrics.skus.clone(),
                sku_top: config.metrics.sku_top,
            }
        });
        let decided: Vec<_> = writers.iter().map(|w| w.decided.clone()).collect();
        let mailbox_waits: Vec<_> = writers
            .iter()
            .map(|w| w.mailbox_wait_max_us.clone())
            .collect();
        let mut mailboxes = Vec::with_capacity(shard_count);
        let mut mailbox_leftovers = Vec::with_capacity(shard_count);
        let mut shard_threads = Vec::with_capacity(shard_count);
        for writer in writers {
            let (sender, receiver) = crossbeam_channel::bounded(config.shard.queue_capacity);
            mailboxes.push(sender);
            mailbox_leftovers.push(receiver.clone());
            shard_threads.push(writer.spawn(journal.clone(), receiver));
        }
        let mut journal_threads: Vec<JoinHandle<()>> = Vec::new();
        journal_threads.extend(
            journal.spawn_interval_sync(Duration::from_millis(config.journal.fsync_interval_ms)),
        );
        if config.journal.preallocate {
            journal_threads.extend(journal.spawn_preallocator());
        }

        let (admin_token, generated_token_file) = resolve_token(
            config.admin_token.as_deref(),
            &config.data_dir,
            "admin.token",
        )?;
        let (consumer_token, generated_consumer_token_file) = resolve_token(
            config.consumer_token.as_deref(),
            &config.data_dir,
            "consumer.token",
        )?;
        let order_count = orders.len();
        let engine = Arc::new(Engine {
            keys,
            inventory,
            orders,
            clock,
            consumers,
            metrics,
            decided,
            mailbox_waits,
            last_mailbox_wait_us: std::sync::atomic::AtomicU64::new(0),
            drain: Mutex::new(DrainRate::default()),
            catalog,
            next_slot: AtomicU32::new(next_slot),
            mailboxes,
            mailbox_leftovers,
            stopping: AtomicBool::new(false),
            shard_threads: Mutex::new(shard_threads),
            journal_threads: Mutex::new(journal_threads),
            journal,
            journal_dir,
            admin_token,
            consumer_token,
            sku_admin: tokio::sync::Mutex::new(()),
            retention: Mutex::new(None),
            checkpointing: Mutex::new(()),
            exchange_gate: tokio::sync::RwLock::new(()),
            data_dir: data_dir.clone(),
            _lock: lock,
        });
        if config.journal.retain_s > 0 {
            let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
            let worker = engine.clone();
            let retain = Duration::from_secs(config.journal.retain_s);
            let every = Duration::from_secs(config.journal.retention_check_s);
            let thread = std::thread::Builder::new()
                .name("journal-retention".into())
                .spawn(move || {
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(every)
                    {
                        if let Err(error) = worker.retention_pass(retain) {
                            tracing::error!(%error, "retention pass failed; nothing deleted");
                        }
                    }
                })
                .map_err(|e| StartError::DataDir {
                    path: data_dir.clone(),
                    source: e,
                })?;
            *engine.retention.lock() = Some((stop, thread));
        }

        let start_report = StartReport {
            records_replayed: report.records,
            checkpoint_seq: (checkpoint_seq > 0).then_some(checkpoint_seq),
            segments: report.segments,
            truncated: report.truncated,
            skus: engine.catalog.len(),
            orders: order_count,
            generated_token_file,
            generated_consumer_token_file,
            clamped_groups,
        };
        Ok((engine, start_report))
    }

    /// Start-up step 5: creates each catalogue SKU that the journal does not know yet.
    pub async fn seed_catalogue(self: &Arc<Self>, config: &Config) -> Result<usize, StartError> {
        let mut created = 0;
        for item in &config.catalogue {
            if self.slot_of(&item.sku).is_some() {
                continue;
            }
            let update = SkuUpdate {
                stock: Some(item.stock),
                per_user_limit: Some(item.per_user_limit),
                max_per_order: Some(item.max_per_order),
                payment_timeout_s: Some(item.payment_timeout_s),
            };
            self.put_sku(&item.sku, update)
                .await
                .map_err(|e| StartError::Catalogue {
                    sku: item.sku.clone(),
                    reason: format!("{e:?}"),
                })?;
            created += 1;
        }
        Ok(created)
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

    /// The slot of a SKU, if the engine knows it.
    pub fn slot_of(&self, sku: &str) -> Option<u32> {
        self.catalog.get(sku).map(|entry| *entry)
    }

    pub fn sku_view(&self, sku: &str) -> Option<SkuView> {
        let slot_index = self.slot_of(sku)?;
        Some(SkuView::new(sku, self.inventory.slot(slot_index).read()))
    }

    /// Every SKU with its current stock, sorted by name.
    pub fn sku_views(&self) -> Vec<SkuView> {
        self.sku_page("", usize::MAX)
    }

    /// Up to `limit` SKUs whose names sort after `after`, by name, with their stock.
    pub fn sku_page(&self, after: &str, limit: usize) -> Vec<SkuView> {
        let mut names: Vec<(String, u32)> = self
            .catalog
            .iter()
            .filter(|entry| entry.key().as_str() > after)
            .map(|entry| (entry.key().clone(), *entry.value()))
            .collect();
        names.sort_unstable();
        names
            .into_iter()
            .take(limit)
            .map(|(name, slot)| SkuView::new(&name, self.inventory.slot(slot).read()))
            .collect()
    }

    /// Hands an order to the shard that owns its SKU, without waiting.
    pub fn submit_order(&self, command: OrderCommand) -> Result<(), SubmitError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped);
        }
        let shard = shard::shard_of(command.slot_index, self.mailboxes.len());
        match self.mailboxes[shard].try_send(Command::Order(command, std::time::Instant::now())) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Decides a client's action on an order: routes it to the shard that owns the order
    /// (and, for `exchange`, holds a unit on the new SKU's shard first; see [`crate::shard`]).
    pub async fn order_action(
        self: &Arc<Self>,
        request: ActionRequest,
    ) -> Result<ActionOutcome, ActionError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(ActionError::Stopped);
        }
        let key = self.keys.order_key(&request.order_id);
        let Some(entry) = self.orders.get(key) else {
            return Ok(ActionOutcome::UnknownOrder);
        };
        let order_shard = shard::shard_of(entry.slot_index, self.mailboxes.len());
        let exchange_slot = match (request.action, &request.exchange_sku) {
            (Action::Exchange, Some(sku)) => Some(
                self.slot_of(sku)
                    .ok_or_else(|| ActionError::UnknownSku(sku.clone()))?,
            ),
            _ => None,
        };
        let (reply, outcome) = oneshot::channel();
        let command = Command::Action(
            ActionCommand {
                order_id: request.order_id,
                key,
                action: request.action,
                reason: request.reason,
                address: request.address,
                restock: request.restock,
                exchange_sku: request.exchange_sku,
                reply,
            },
            std::time::Instant::now(),
        );
        let Some(exchange_slot) = exchange_slot else {
            match self.mailboxes[order_shard].try_send(command) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(ActionError::Overloaded),
                Err(TrySendError::Disconnected(_)) => return Err(ActionError::Stopped),
            }
            return outcome.await.map_err(|_| ActionError::Stopped);
        };
        // Refuse early what the order's state refuses, before a unit is held for nothing
        // (the order's shard decides again; this only spares the hold).
        let state = entry.state();
        if transition(state.status, Action::Exchange, false).is_none() {
            return Ok(ActionOutcome::Refused {
                status: state.status,
            });
        }
        // The hold, the exchange and the settle run in their own task: once a unit is held,
        // a client that goes away must not leave it held.
        let engine = self.clone();
        tokio::spawn(async move {
            engine
                .exchange_to_completion(order_shard, exchange_slot, command, outcome)
                .await
        })
        .await
        .unwrap_or(Err(ActionError::Stopped))
    }

    async fn exchange_to_completion(
        &self,
        order_shard: usize,
        exchange_slot: u32,
        command: Command,
        outcome: oneshot::Receiver<ActionOutcome>,
    ) -> Result<ActionOutcome, ActionError> {
        let exchange_shard = shard::shard_of(exchange_slot, self.mailboxes.len());
        let _no_checkpoint_until_settled = self.exchange_gate.read().await;
        let (hold_reply, held) = oneshot::channel();
        let hold = Command::Hold {
            slot_index: exchange_slot,
            reply: hold_reply,
        };
        self.send_patiently(exchange_shard, hold).await?;
        match held.await {
            Ok(Ok(())) => {}
            Ok(Err(available)) => return Err(ActionError::SoldOut { available }),
            Err(_) => return Err(ActionError::Stopped),
        }
        let result = match self.send_patiently(order_shard, command).await {
            Ok(()) => outcome.await.map_err(|_| ActionError::Stopped),
            Err(error) => Err(error),
        };
        let sold = matches!(result, Ok(ActionOutcome::Done { .. }));
        let (done, settled) = oneshot::channel();
        let settle = Command::Settle {
            slot_index: exchange_slot,
            sold,
            done,
        };
        // Only a stopping engine refuses this; its memory is then rebuilt from the journal.
        if self.send_patiently(exchange_shard, settle).await.is_ok() {
            let _ = settled.await;
        }
        result
    }

    /// Sends a command that must not be shed (an admin change, an exchange's steps), waiting
    /// up to a second for room in a busy mailbox.
    async fn send_patiently(&self, shard: usize, mut command: Command) -> Result<(), ActionError> {
        let mailbox = &self.mailboxes[shard];
        for _ in 0..limits::PATIENT_SEND_ATTEMPTS {
            match mailbox.try_send(command) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    command = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(ActionError::Stopped),
            }
        }
        Err(ActionError::Overloaded)
    }

    /// Writes a checkpoint of the engine's state at the current durable seq (blocking: call it
    /// off the async runtime). Every shard finishes its batch and pauses while the state is
    /// copied (tens of milliseconds per million orders), then the copy is written while the
    /// engine runs on. Returns the checkpoint's seq.
    pub fn checkpoint(&self) -> io::Result<u64> {
        let _one_at_a_time = self.checkpointing.lock();
        if self.stopping.load(Ordering::Acquire) {
            return Err(io::Error::other("engine is stopping"));
        }
        // Waits for exchanges in flight to settle and keeps new ones out until the copy is
        // taken (an exchange waits at most this long: tens of milliseconds).
        let _no_exchange_in_flight = self.exchange_gate.blocking_write();
        let (resume, paused) = crossbeam_channel::bounded::<()>(0);
        let mut snapshots = Vec::with_capacity(self.mailboxes.len());
        for mailbox in &self.mailboxes {
            let (reply, snapshot) = oneshot::channel();
            let command = Command::Checkpoint {
                reply,
                resume: paused.clone(),
            };
            // Blocking: the barrier must reach every shard, behind what is queued.
            mailbox
                .send(command)
                .map_err(|_| io::Error::other("a shard has stopped"))?;
            snapshots.push(snapshot);
        }
        let mut timers = Vec::new();
        let mut holds = 0;
        for snapshot in snapshots {
            let snapshot = snapshot
                .blocking_recv()
                .map_err(|_| io::Error::other("a shard stopped during the checkpoint"))?;
            timers.extend(snapshot.timers);
            holds += snapshot.holds.len();
        }
        if holds > 0 {
            // The exchange gate makes this unreachable; a hold would be a unit in no record.
            return Err(io::Error::other(format!(
                "{holds} exchange holds outstanding; checkpoint not taken"
            )));
        }
        // Every shard is paused with its batch durable: memory is exactly records 1..=seq.
        let seq = self.journal.durable_seq();
        let mut skus = Vec::new();
        for slot_index in 0..self.inventory.slots_max() {
            let slot = self.inventory.slot(slot_index);
            let Some(name) = slot.sku_name() else {
                continue;
            };
            let values = slot.values();
            skus.push(checkpoint::SkuState {
                name,
                slot_index,
                stock_total: values.stock_total,
                available: values.available,
                reserved: values.reserved,
                sold: values.sold,
                per_user_limit: values.per_user_limit,
                max_per_order: values.max_per_order,
                payment_timeout_s: values.payment_timeout_s,
            });
        }
        let orders: Vec<checkpoint::OrderState> = self
            .orders
            .snapshot()
            .into_iter()
            .map(|(key, entry)| checkpoint::OrderState {
                key: key.0,
                words: entry.to_words(),
            })
            .collect();
        let timers: Vec<checkpoint::TimerState> = timers
            .into_iter()
            .filter(|timer| {
                self.orders.get(timer.key).is_some_and(|entry| {
                    entry.state().status == crate::order::OrderStatus::PendingPayment
                })
            })
            .map(|timer| checkpoint::TimerState {
                key: timer.key.0,
                due_ms: timer.due_ms,
                deadline_ms: timer.deadline_ms,
                order_id: timer.order_id.to_string(),
            })
            .collect();
        drop(resume);
        // The checkpoint stands for records 1..=seq: with `interval` and `none` they may
        // still be only in the page cache. Were the checkpoint durable before them, a power
        // cut would leave a journal that ends below it (and retention may already have
        // deleted what an older checkpoint needs), so the journal is synced first.
        self.journal
            .sync_through(seq)
            .map_err(|error| io::Error::other(format!("checkpoint at seq {seq}: {error}")))?;
        let state = checkpoint::Checkpoint {
            seq,
            created_ms: self.clock.now_ms(),
            skus,
            orders,
            timers,
        };
        let path = checkpoint::write(&checkpoint::checkpoints_dir(&self.data_dir), &state)?;
        tracing::info!(path = %path.display(), seq, orders = state.orders.len(), "checkpoint written");
        Ok(seq)
    }

    /// One retention pass: the closed segments at the head of the journal that are older than
    /// `retain`, wholly below every consumer group's offset and covered by a checkpoint (one
    /// is taken if needed) are deleted. Never the last segment, never one a group or recovery
    /// still needs. Returns the number of segments deleted.
    pub fn retention_pass(&self, retain: Duration) -> io::Result<usize> {
        let segments = journal::list_segments(&self.journal_dir)?;
        let group_floor = self
            .consumers
            .list()?
            .into_iter()
            .map(|(_, seq)| seq)
            .min()
            .unwrap_or(u64::MAX);
        let now = std::time::SystemTime::now();
        let mut deletable = Vec::new();
        for pair in segments.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            let last_seq = next_first - 1;
            let age = std::fs::metadata(path)?
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .unwrap_or_default();
            if age < retain || last_seq > group_floor {
                break; // only a prefix: the journal stays contiguous
            }
            deletable.push((last_seq, path.clone()));
        }
        let Some((needed, _)) = deletable.last() else {
            return Ok(0);
        };
        let covered = checkpoint::list(&checkpoint::checkpoints_dir(&self.data_dir))?
            .first()
            .map_or(0, |(seq, _)| *seq);
        let covered = if covered >= *needed {
            covered
        } else {
            self.checkpoint()?
        };
        let mut deleted = 0;
        for (last_seq, path) in deletable {
            if last_seq > covered {
                break;
            }
            durable::remove_file(&path)?;
            tracing::info!(path = %path.display(), last_seq, "retention deleted a journal segment");
            deleted += 1;
        }
        if deleted > 0 {
            durable::sync_dir(&self.journal_dir)?;
        }
        Ok(deleted)
    }

    /// Sets the scrape-time gauges and returns the engine's registry for `/metrics` (`None`
    /// when metrics are off). Reads what is there; changes nothing.
    pub fn scrape_metrics(&self) -> Option<prometheus::Registry> {
        let metrics = self.metrics.as_ref()?;
        let gauges = &metrics.gauges;
        for (shard, mailbox) in self.mailboxes.iter().enumerate() {
            gauges
                .queue_depth
                .with_label_values(&[&shard.to_string()])
                .set(mailbox.len() as i64);
        }
        let stats = self.journal.stats();
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed) as i64;
        gauges.journal_bytes.set(load(&stats.bytes));
        gauges.journal_records.set(load(&stats.records));
        gauges.journal_writes.set(load(&stats.writes));
        gauges.journal_fsyncs.set(load(&stats.fsyncs));
        let durable = self.journal.durable_seq();
        gauges.durable_seq.set(durable as i64);
        gauges.orders_indexed.set(self.orders.len() as i64);
        // Per-SKU stock: the configured SKUs, else the busiest (most sold + reserved).
        let views = if metrics.skus.is_empty() {
            let mut all = self.sku_views();
            all.sort_by_key(|view| std::cmp::Reverse(view.sold + view.reserved));
            all.truncate(metrics.sku_top);
            all
        } else {
            metrics
                .skus
                .iter()
                .filter_map(|sku| self.sku_view(sku))
                .collect()
        };
        gauges.sku_stock.reset();
        for view in views {
            for (state, units) in [
                ("available", view.available),
                ("reserved", view.reserved),
                ("sold", view.sold),
                ("total", view.stock_total),
            ] {
                gauges
                    .sku_stock
                    .with_label_values(&[&view.sku, state])
                    .set(units as i64);
            }
        }
        gauges.consumer_offset.reset();
        gauges.consumer_lag.reset();
        match self.consumers.list() {
            Ok(groups) => {
                for (group, seq) in groups {
                    gauges
                        .consumer_offset
                        .with_label_values(&[&group])
                        .set(seq as i64);
                    gauges
                        .consumer_lag
                        .with_label_values(&[&group])
                        .set(durable.saturating_sub(seq) as i64);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list consumer groups for /metrics"),
        }
        Some(metrics.registry.clone())
    }

    /// Commands waiting in all shards' mailboxes.
    pub fn queued(&self) -> usize {
        self.mailboxes.iter().map(|mailbox| mailbox.len()).sum()
    }

    /// How long orders are queueing in the shards' mailboxes beyond the turn in progress
    /// (see `ShardWriter::mailbox_wait_max_us`): the most any turn since the last call saw
    /// or, when no turn took an order since but commands are queued (a shard inside a slow
    /// fdatasync), what the last call saw; zero when nothing is queued. The queue-delay
    /// gate's second signal. Reading resets it, so one reader (the gate's probe) owns it.
    pub fn mailbox_wait(&self) -> Duration {
        let taken = self
            .mailbox_waits
            .iter()
            .map(|wait| wait.swap(0, Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let waited_us = if taken > 0 {
            taken - 1
        } else if self.queued() > 0 {
            self.last_mailbox_wait_us.load(Ordering::Relaxed)
        } else {
            0
        };
        self.last_mailbox_wait_us
            .store(waited_us, Ordering::Relaxed);
        Duration::from_micros(waited_us)
    }

    /// Commands per second all shards are deciding (an estimate for `Retry-After`).
    pub fn drain_rate_per_s(&self) -> f64 {
        let decided: u64 = self
            .decided
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum();
        let now = std::time::Instant::now();
        let mut drain = self.drain.lock();
        match drain.at {
            // Measured only when something is shed, so the last window may have begun long
            // before this burst: averaging a quiet hour in would make the first sheds of a
            // sale say "come back in 60 s". A window over a second old starts afresh (the
            // rate last measured stands until the new one is in).
            Some(at) if now.duration_since(at) > Duration::from_secs(1) => {
                drain.at = Some(now);
                drain.decided = decided;
            }
            Some(at) if now.duration_since(at) >= Duration::from_millis(100) => {
                let sample =
                    (decided - drain.decided) as f64 / now.duration_since(at).as_secs_f64();
                drain.per_s = if drain.per_s == 0.0 {
                    sample
                } else {
                    (drain.per_s + sample) / 2.0
                };
                drain.at = Some(now);
                drain.decided = decided;
            }
            Some(_) => {}
            None => {
                drain.at = Some(now);
                drain.decided = decided;
            }
        }
        drain.per_s
    }

    /// `Retry-After` seconds for a request shed at `shard`'s full mailbox (or, `None`, at the
    /// global in-flight bound with `in_flight` waiting): the backlog over the drain rate.
    pub fn retry_after_s(&self, shard: Option<usize>, in_flight: usize) -> u32 {
        let shards = self.mailboxes.len().max(1) as f64;
        let rate = self.drain_rate_per_s();
        let (queued, per_s) = match shard {
            Some(shard) => (self.mailboxes[shard].len(), rate / shards),
            None => (in_flight, rate),
        };
        crate::http::admission::retry_after_for_backlog(queued, per_s).0
    }

    /// Wakes every shard to fire the timers a moved manual clock made due.
    pub fn tick(&self) {
        for mailbox in &self.mailboxes {
            // A full mailbox means the shard has a turn coming anyway.
            let _ = mailbox.try_send(Command::Tick);
        }
    }

    /// The order as `GET /v1/orders/{id}` shows it, read back from the journal along the
    /// order's history chain (blocking file reads: call it off the async runtime). `None`
    /// when the order is unknown or not yet durable.
    pub fn order_view(&self, order_id: &str) -> io::Result<Option<OrderView>> {
        let key = self.keys.order_key(order_id);
        let Some(entry) = self.orders.get(key) else {
            return Ok(None);
        };
        let state = entry.state();
        let mut history = Vec::with_capacity(state.records as usize);
        let mut view = None;
        let mut latest_address: Option<serde_json::Value> = None;
        let mut seq = state.last_seq;
        let mut first_retained = self.first_retained_seq()?;
        while view.is_none() {
            if history.len() > limits::RECORDS_PER_ORDER_MAX as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("history of order {order_id} does not end"),
                ));
            }
            let mut prev_seq = None;
            let mut broken = None;
            if seq < first_retained {
                // Retention deleted the rest of the chain: what is kept is the history.
                let sku = self
                    .inventory
                    .slot(entry.slot_index)
                    .sku_name()
                    .unwrap_or_default();
                view = Some(OrderView {
                    order_id: order_id.to_owned(),
                    user_id: None,
                    sku,
                    qty: entry.qty,
                    payment: None,
                    status: state.status.as_str(),
                    address: None,
                    history: Vec::new(),
                    history_complete: false,
                });
                break;
            }
            let found = self.journal.read_with(seq, &mut |record| {
                let mut item = record.to_json(seq);
                let object = item.as_object_mut().expect("records are objects");
                let event = object.remove("type").unwrap_or_default();
                object.insert("event".into(), event);
                object.remove("order_id");
                match &record.event {
                    ArchivedEvent::Accepted(order) => {
                        for field in ["user_id", "sku", "qty", "payment", "address"] {
                            object.remove(field);
                        }
                        let payment = order.payment.to_native();
                        object.insert("status".into(), payment.initial_status().as_str().into());
                        if latest_address.is_none() {
                            latest_address = order
                                .address
                                .as_ref()
                                .map(|a| journal::record::json_object_text(a.as_str()));
                        }
                        view = Some(OrderView {
                            order_id: order.order_id.to_string(),
                            user_id: Some(order.user_id.to_string()),
                            sku: order.sku.to_string(),
                            qty: order.qty.to_native(),
                            payment: Some(payment.as_str()),
                            status: state.status.as_str(),
                            address: None,
                            history: Vec::new(),
                            history_complete: true,
                        });
                    }
                    ArchivedEvent::Action(action) => {
                        object.remove("prev_seq");
                        if latest_address.is_none() {
                            latest_address = object.get("address").cloned();
                        }
                        prev_seq = Some(action.prev_seq.to_native());
                    }
                    ArchivedEvent::Sku(_) => broken = Some("a stock change"),
                }
                history.push(item);
            });
            let found = match found {
                Ok(found) => found,
                // Retention may delete the segment between the listing above and this read:
                // look again, and if the record is now before the oldest kept one, the
                // history ends here as it does for any retained-away record.
                Err(error) if error.kind() == io::ErrorKind::NotFound => false,
                Err(error) => return Err(error),
            };
            if !found && broken.is_none() {
                first_retained = self.first_retained_seq()?;
                if seq < first_retained {
                    continue;
                }
            }
            if !found || broken.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "history of order {order_id} leads to seq {seq}, which is {}",
                        broken.unwrap_or("not in the journal")
                    ),
                ));
            }
            if let Some(prev) = prev_seq {
                seq = prev;
            }
        }
        let mut view = view.expect("the loop ends on the acceptance");
        if view.order_id != order_id {
            // Another id with the same 64-bit key (see inventory::keys): not this order.
            return Ok(None);
        }
        history.reverse();
        view.history = history;
        view.address = latest_address;
        Ok(Some(view))
    }

    /// The seq of the oldest record still in the journal (retention deletes older ones).
    pub fn first_retained_seq(&self) -> io::Result<u64> {
        Ok(journal::list_segments(&self.journal_dir)?
            .first()
            .map_or(1, |(first_seq, _)| *first_seq))
    }

    /// Creates or updates a SKU through its shard and the journal. The work runs in its own
    /// task: if the caller goes away (a client disconnects mid-PUT) the change still
    /// completes and the catalogue learns of it, so memory never disagrees with the journal.
    pub async fn put_sku(
        self: &Arc<Self>,
        sku: &str,
        update: SkuUpdate,
    ) -> Result<SkuView, PutSkuError> {
        let engine = self.clone();
        let sku = sku.to_owned();
        tokio::spawn(async move { engine.put_sku_to_completion(&sku, update).await })
            .await
            .unwrap_or_else(|error| {
                Err(PutSkuError::Unavailable(format!(
                    "sku task failed: {error}"
                )))
            })
    }

    async fn put_sku_to_completion(
        &self,
        sku: &str,
        update: SkuUpdate,
    ) -> Result<SkuView, PutSkuError> {
        let _admin = self.sku_admin.lock().await;
        let (slot_index, is_new) = match self.slot_of(sku) {
            Some(slot_index) => (slot_index, false),
            None => {
                let slot_index = self.next_slot.load(Ordering::Acquire);
                if slot_index >= self.inventory.slots_max() {
                    return Err(PutSkuError::CatalogueFull {
                        slots_max: self.inventory.slots_max(),
                    });
                }
                (slot_index, true)
            }
        };
        let (reply, outcome) = oneshot::channel();
        let command = Command::Sku(SkuCommand {
            sku: sku.to_owned(),
            slot_index,
            is_new,
            update,
            reply,
        });
        let shard = shard::shard_of(slot_index, self.mailboxes.len());
        match self.send_patiently(shard, command).await {
            Ok(()) => {}
            Err(ActionError::Overloaded) => return Err(PutSkuError::Overloaded),
            Err(_) => return Err(PutSkuError::Unavailable("engine is stopping".into())),
        }
        match outcome.await {
            Ok(SkuOutcome::Applied { values, .. }) => {
                if is_new {
                    self.catalog.insert(sku.to_owned(), slot_index);
                    self.next_slot.store(slot_index + 1, Ordering::Release);
                }
                Ok(SkuView::new(sku, values))
            }
            Ok(SkuOutcome::StockConflict { committed }) => {
                Err(PutSkuError::StockConflict { committed })
            }
            Ok(SkuOutcome::Unavailable { reason }) => Err(PutSkuError::Unavailable(reason)),
            Err(_) => Err(PutSkuError::Unavailable("shard stopped".into())),
        }
    }

    /// Creates or updates many SKUs at once (`POST /v1/skus:bulk`), one result per item in
    /// the items' order. Like [`Engine::put_sku`] the work runs in its own task, so a client
    /// that goes away mid-bulk cannot leave the catalogue behind the journal.
    ///
    /// The path: under the `sku_admin` lock, each new SKU gets the next free slot (a SKU
    /// named twice keeps its first slot; the later change updates it, in order); the changes
    /// are grouped by the shard that owns each slot and every shard gets one
    /// [`Command::SkuBatch`] (sent to all before any answer is awaited, so their commits can
    /// share a group write). Each shard checks each change on its own, journals the valid ones
    /// in one append + commit and applies them once durable; the catalogue then learns the
    /// new SKUs that were applied. A slot handed out for a change that was then refused stays
    /// unused (a gap in the slot file, never a slot with two names).
    pub async fn put_skus(
        self: &Arc<Self>,
        items: Vec<(String, SkuUpdate)>,
    ) -> Vec<Result<SkuView, PutSkuError>> {
        let engine = self.clone();
        let count = items.len();
        tokio::spawn(async move { engine.put_skus_to_completion(items).await })
            .await
            .unwrap_or_else(|error| {
                vec![
                    Err(PutSkuError::Unavailable(format!(
                        "sku task failed: {error}"
                    )));
                    count
                ]
            })
    }

    async fn put_skus_to_completion(
        &self,
        items: Vec<(String, SkuUpdate)>,
    ) -> Vec<Result<SkuView, PutSkuError>> {
        let _admin = self.sku_admin.lock().await;
        let shard_count = self.mailboxes.len();
        let slots_max = self.inventory.slots_max();
        let mut results: Vec<Option<Result<SkuView, PutSkuError>>> = vec![None; items.len()];
        let mut next_slot = self.next_slot.load(Ordering::Acquire);
        let mut new_slots: std::collections::HashMap<String, u32> =
            std::collections::HashMap::new();
        let mut per_shard: Vec<Vec<(usize, shard::SkuBatchItem)>> =
            (0..shard_count).map(|_| Vec::new()).collect();
        for (index, (sku, update)) in items.into_iter().enumerate() {
            let (slot_index, is_new) = match self.slot_of(&sku).or(new_slots.get(&sku).copied()) {
                Some(slot_index) => (slot_index, false),
                None if next_slot >= slots_max => {
                    results[index] = Some(Err(PutSkuError::CatalogueFull { slots_max }));
                    continue;
                }
                None => {
                    let slot_index = next_slot;
                    next_slot += 1;
                    new_slots.insert(sku.clone(), slot_index);
                    (slot_index, true)
                }
            };
            per_shard[shard::shard_of(slot_index, shard_count)].push((
                index,
                shard::SkuBatchItem {
                    sku,
                    slot_index,
                    is_new,
                    update,
                },
            ));
        }
        // (item indices, (name, slot, new?) per item, the shard's answer)
        type Waiting = (
            Vec<usize>,
            Vec<(String, u32, bool)>,
            oneshot::Receiver<Vec<SkuOutcome>>,
        );
        let mut waiting: Vec<Waiting> = Vec::new();
        for (shard, batch) in per_shard.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let (indices, items): (Vec<usize>, Vec<shard::SkuBatchItem>) =
                batch.into_iter().unzip();
            let names = items
                .iter()
                .map(|item| (item.sku.clone(), item.slot_index, item.is_new))
                .collect();
            let (reply, outcome) = oneshot::channel();
            let command = Command::SkuBatch(shard::SkuBatchCommand { items, reply });
            match self.send_patiently(shard, command).await {
                Ok(()) => waiting.push((indices, names, outcome)),
                Err(error) => {
                    let error = match error {
                        ActionError::Overloaded => PutSkuError::Overloaded,
                        _ => PutSkuError::Unavailable("engine is stopping".into()),
                    };
                    for index in indices {
                        results[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        // The new SKUs join the catalogue (become visible) together, once every shard has
        // answered; each was journaled and applied by then.
        let mut learned: Vec<(String, u32)> = Vec::new();
        for (indices, names, outcome) in waiting {
            let Ok(outcomes) = outcome.await else {
                for index in indices {
                    results[index] = Some(Err(PutSkuError::Unavailable("shard stopped".into())));
                }
                continue;
            };
            for ((index, (sku, slot_index, is_new)), outcome) in
                indices.into_iter().zip(names).zip(outcomes)
            {
                results[index] = Some(match outcome {
                    SkuOutcome::Applied { values, .. } => {
                        let view = SkuView::new(&sku, values);
                        if is_new {
                            learned.push((sku, slot_index));
                        }
                        Ok(view)
                    }
                    SkuOutcome::StockConflict { committed } => {
                        Err(PutSkuError::StockConflict { committed })
                    }
                    SkuOutcome::Unavailable { reason } => Err(PutSkuError::Unavailable(reason)),
                });
            }
        }
        if let Some(highest) = learned.iter().map(|(_, slot_index)| *slot_index).max() {
            self.next_slot.fetch_max(highest + 1, Ordering::AcqRel);
        }
        for (sku, slot_index) in learned {
            self.catalog.insert(sku, slot_index);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| Err(PutSkuError::Unavailable("no answer".into())))
            })
            .collect()
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

/// Applies one journal record during recovery: exactly the effects the live path had.
#[allow(clippy::too_many_arguments)]
fn replay(
    seq: u64,
    record: &ArchivedRecord,
    inventory: &Inventory,
    orders: &OrderIndex,
    keys: &KeyHasher,
    catalog: &DashMap<String, u32>,
    next_slot: &mut u32,
    writers: &mut [ShardWriter],
) -> Result<(), String> {
    match &record.event {
        ArchivedEvent::Sku(change) => {
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
                    let values =
                        shard::updated_sku_values(slot.values(), &update).map_err(|committed| {
                            format!("stock below the {committed} units committed")
                        })?;
                    slot.write(values);
                }
                None => {
                    if inventory.slot(slot_index).sku_name().is_some() {
                        return Err(format!("slot {slot_index} claimed twice"));
                    }
                    inventory.init_slot(slot_index, name, shard::new_sku_values(&update));
                    catalog.insert(name.to_owned(), slot_index);
                    *next_slot = (*next_slot).max(slot_index + 1);
                }
            }
        }
        ArchivedEvent::Accepted(order) => {
            let sku = order.sku.as_str();
            let Some(slot_index) = catalog.get(sku).map(|entry| *entry) else {
                return Err(format!("order for unknown sku {sku}"));
            };
            let qty = order.qty.to_native();
            let payment = order.payment.to_native();
            let address = order.address.as_ref().map(|a| a.as_str());
            let user_id = order.user_id.as_str();
            let key = keys.order_key(order.order_id.as_str());
            let fingerprint = keys.content_fingerprint(user_id, sku, qty, payment, address);
            let purchase_key = keys.purchase_key(user_id, sku);
            let status = payment.initial_status();
            let accepted = AcceptedOrder {
                seq,
                status,
                purchase_key,
                slot_index,
                qty,
            };
            if !orders.insert_durable(key, fingerprint, accepted) {
                // Two ids share this process's 64-bit key (or one id was journaled twice).
                // The journal is the truth: the order took its stock, so it is applied; only
                // its index entry is shadowed by the first one (see inventory::keys).
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
            let timer = status.holds_reserved().then(|| {
                PaymentTimer::for_order(
                    key,
                    order.order_id.as_str(),
                    record.at_ms.to_native(),
                    slot_values.payment_timeout_s,
                )
            });
            let writer = &mut writers[shard::shard_of(slot_index, writers.len())];
            writer.replay_accepted(slot_index, qty, payment, purchase_key, timer);
        }
        ArchivedEvent::Action(change) => {
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
                let slot = inventory.slot(slot_index);
                let mut values = slot.values();
                if values.available < 1 {
                    return Err(format!(
                        "exchange of order {order_id} takes a unit of {sku} but none is left"
                    ));
                }
                values.take_into(1, false);
                slot.write(values);
            }
            let writer = &mut writers[shard::shard_of(entry.slot_index, writers.len())];
            writer.replay_action(&entry, moved.stock);
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
        }
    }
    Ok(())
}

/// Why a journal that resumes at `resumes_at` cannot continue the state up to
/// `checkpoint_seq` (0: an empty engine).
fn records_missing(resumes_at: u64, checkpoint_seq: u64) -> String {
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

fn lock_data_dir(data_dir: &Path) -> Result<File, StartError> {
    match try_lock_data_dir(data_dir) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(StartError::Locked(data_dir.to_owned())),
        Err(source) => Err(StartError::DataDir {
            path: data_dir.join("LOCK"),
            source,
        }),
    }
}

/// Takes `<data_dir>/LOCK` (flock, exclusive, non-blocking) for as long as the returned file
/// stays open: `Ok(None)` when another process holds it (an engine, or a preflight for a
/// moment). The engine holds it while it runs; preflight takes it to tell whether one does.
pub fn try_lock_data_dir(data_dir: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("LOCK"))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if locked != 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(file))
}

/// The order-key hash keys of this data directory: random, drawn when the directory is first
/// used and kept in `<data_dir>/hash.keys` (mode 0600), because checkpoints store order keys.
/// Secret like the admin token: knowing them, a client could aim key collisions.
fn load_or_create_hash_keys(data_dir: &Path) -> Result<KeyHasher, StartError> {
    let path = data_dir.join("hash.keys");
    let fail = |reason: String| StartError::HashKeys {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut words = text.split_whitespace().map(|w| u64::from_str_radix(w, 16));
            match (words.next(), words.next(), words.next()) {
                (Some(Ok(k0)), Some(Ok(k1)), None) => Ok(KeyHasher::with_keys(k0, k1)),
                _ => Err(fail("expected two 64-bit hex keys".into())),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if !checkpoint::list(&checkpoint::checkpoints_dir(data_dir))
                .map_err(|e| fail(e.to_string()))?
                .is_empty()
            {
                return Err(fail(
                    "missing, but checkpoints exist that need it; restore it or remove the \
                     checkpoints (recovery then replays the whole journal, if it is complete)"
                        .into(),
                ));
            }
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| fail(e.to_string()))?;
            let k0 = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            let k1 = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
            durable::write_file_atomically(
                &path,
                format!("{k0:016x} {k1:016x}\n").as_bytes(),
                0o600,
            )
            .map_err(|e| fail(e.to_string()))?;
            Ok(KeyHasher::with_keys(k0, k1))
        }
        Err(error) => Err(fail(error.to_string())),
    }
}

/// Loads a checkpoint into the empty engine: slots, catalogue, order entries, timers, and
/// the purchase counts (the quantities of the orders that have not given their units back).
fn restore_checkpoint(
    state: &checkpoint::Checkpoint,
    inventory: &Inventory,
    orders: &OrderIndex,
    catalog: &DashMap<String, u32>,
    next_slot: &mut u32,
    writers: &mut [ShardWriter],
) -> Result<(), String> {
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
            });
    }
    Ok(())
}

/// A bearer token (the admin token, the consumer token): the configured one (file or env),
/// else `<data_dir>/<file_name>`, made with a random value and mode 0600 on first start and
/// reused on later starts. Returns the token and the file it created.
fn resolve_token(
    configured: Option<&str>,
    data_dir: &Path,
    file_name: &str,
) -> Result<(String, Option<PathBuf>), StartError> {
    if let Some(token) = configured {
        return Ok((token.to_owned(), None));
    }
    let path = data_dir.join(file_name);
    let token_err = |source| StartError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(token_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "token file is empty",
                )));
            }
            // Keep the secret private even if someone loosened the mode.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(token_err)?;
            Ok((token, None))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut bytes = [0u8; limits::GENERATED_TOKEN_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| token_err(io::Error::other(e.to_string())))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Durable (file and directory entry) before anyone is told the token: a power
            // cut must not make the engine draw another one.
            durable::write_file_atomically(&path, format!("{token}\n").as_bytes(), 0o600)
                .map_err(token_err)?;
            Ok((token, Some(path)))
        }
        Err(error) => Err(token_err(error)),
    }
}

/// Constant-time comparison of a presented bearer token with an expected one: the time
/// depends on the lengths only, never on where the first difference is.
fn token_matches(expected: &str, presented: &str) -> bool {
    let expected = expected.as_bytes();
    let presented = presented.as_bytes();
    let mut difference = expected.len() ^ presented.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ presented.get(index).copied().unwrap_or(0));
    }
    difference == 0
}
