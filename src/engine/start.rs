//! Start-up: from a data directory to a running engine, in the order the module doc of
//! [`crate::engine`] gives. Each step is one function, so that the order (and what each step
//! needs from the one before) reads from [`Engine::start_with`] alone:
//!
//! 1. [`open_data_dir`]: the lock, the consumer offsets, the inventory map, the hash keys;
//! 2. [`recover`]: the newest checkpoint that checks, then every journal record after it,
//!    replayed through [`super::replay`]; the journal must resume exactly after the state;
//! 3. the journal writer at the recovered tail, and consumer offsets lowered to its end;
//! 4. [`spawn_shards`]: one thread per shard with its mailbox and control lane, and the
//!    journal's background threads;
//! 5. the tokens, the engine handle, and the retention thread ([`spawn_retention`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use parking_lot::Mutex;

use super::replay::{Replayer, records_missing};
use super::retention::Backoff;
use super::scrape::EngineMetrics;
use super::signals::DrainRate;
use super::{Engine, StartError, StartReport};
use crate::checkpoint;
use crate::config::Config;
use crate::data_dir::{
    DataDirError, journal_dir, load_or_create_hash_keys, lock_data_dir, resolve_token,
};
use crate::durable;
use crate::inventory::{Inventory, KeyHasher, OrderIndex, PurchaseCounts};
use crate::journal::storage::{FsStorage, Storage};
use crate::journal::{self, ArchivedRecord, ConsumerOffsets, Journal, RecoveryReport};
use crate::limits;
use crate::shard::{Clock, Command, Settle, ShardWriter, SkuUpdate};

/// What step 1 opened in the data directory.
struct DataDir {
    lock: std::fs::File,
    journal_dir: PathBuf,
    consumers: ConsumerOffsets,
    inventory: Arc<Inventory>,
    keys: KeyHasher,
}

/// What recovery rebuilt besides the shards' own state.
struct Recovered {
    report: RecoveryReport,
    checkpoint_seq: u64,
    catalog: DashMap<String, u32>,
    next_slot: u32,
    /// The journaled order-review rules, if a `review_rules` record (or checkpoint) has them.
    review_rules: Option<crate::journal::ReviewRulesChanged>,
}

/// The running shards: their mailboxes, control lanes and threads, and the counters the
/// engine reads their load from.
struct Shards {
    mailboxes: Vec<Sender<Command>>,
    control_lanes: Vec<Sender<Settle>>,
    leftovers: Vec<Receiver<Command>>,
    threads: Vec<JoinHandle<()>>,
    decided: Vec<Arc<AtomicU64>>,
    mailbox_waits: Vec<Arc<AtomicU64>>,
}

fn dir_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + use<> {
    let path = path.to_owned();
    move |source| StartError::DataDir(DataDirError::Io { path, source })
}

impl Engine {
    /// Runs start-up steps 1 to 5 (blocking: call it off the async runtime). The demo
    /// catalogue is [`Engine::seed_catalogue`], after.
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
        let opened = open_data_dir(config)?;
        let orders = Arc::new(OrderIndex::with_capacity(config.inventory.orders_expected));
        let mut writers = build_writers(config, &opened.inventory, &orders, &clock);
        let recovered = recover(&opened, &orders, &mut writers, data_dir)?;

        let clamped_groups = clamp_offsets(&opened, &recovered, data_dir)?;
        let journal = Journal::open_with(
            storage,
            &opened.journal_dir,
            config.journal.fsync,
            config.journal.segment_bytes_max,
            recovered.report.tail.clone(),
        )
        .map_err(StartError::JournalOpen)?;
        let metrics = config
            .metrics
            .enabled
            .then(|| EngineMetrics::register(config, &journal, &mut writers));
        let shards = spawn_shards(writers, &journal, config);
        let mut journal_threads: Vec<JoinHandle<()>> = Vec::new();
        journal_threads.extend(
            journal.spawn_interval_sync(Duration::from_millis(config.journal.fsync_interval_ms)),
        );
        if config.journal.preallocate {
            journal_threads.extend(journal.spawn_preallocator());
        }

        let (admin_token, generated_token_file) =
            resolve_token(config.admin_token.as_deref(), data_dir, "admin.token")?;
        let (consumer_token, generated_consumer_token_file) =
            resolve_token(config.consumer_token.as_deref(), data_dir, "consumer.token")?;
        let order_count = orders.len();
        let DataDir {
            lock,
            journal_dir,
            consumers,
            inventory,
            keys,
        } = opened;
        let engine = Arc::new(Engine {
            keys,
            inventory,
            orders,
            clock,
            consumers,
            metrics,
            decided: shards.decided,
            mailbox_waits: shards.mailbox_waits,
            last_mailbox_wait_us: AtomicU64::new(0),
            drain: Mutex::new(DrainRate::default()),
            catalog: recovered.catalog,
            next_slot: AtomicU32::new(recovered.next_slot),
            mailboxes: shards.mailboxes,
            control_lanes: shards.control_lanes,
            mailbox_leftovers: shards.leftovers,
            stopping: AtomicBool::new(false),
            shard_threads: Mutex::new(shards.threads),
            journal_threads: Mutex::new(journal_threads),
            journal,
            journal_dir,
            admin_token,
            consumer_token,
            sku_admin: tokio::sync::Mutex::new(()),
            retention: Mutex::new(None),
            checkpointing: Mutex::new(()),
            checkpoint_backoff: Mutex::new(Backoff::default()),
            exchange_gate: tokio::sync::RwLock::with_max_readers(
                (),
                limits::EXCHANGES_IN_FLIGHT_MAX as u32,
            ),
            data_dir: data_dir.clone(),
            review: super::review::ReviewState::new(
                config.review.rules(),
                recovered.review_rules.clone(),
            ),
            _lock: lock,
        });
        spawn_retention(&engine, config)?;

        let report = recovered.report;
        let checkpoint_seq = recovered.checkpoint_seq;
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

    /// Start-up step 6: creates each catalogue SKU that the journal does not know yet.
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
}

/// Step 1: the data directory's folders (durably created), its lock, the consumer offsets,
/// the inventory map (recreated empty, its blocks reserved) and the hash keys.
fn open_data_dir(config: &Config) -> Result<DataDir, StartError> {
    let data_dir = &config.data_dir;
    let journal_dir = journal_dir(data_dir);
    durable::create_dir_all(&journal_dir).map_err(dir_err(&journal_dir))?;
    let lock = lock_data_dir(data_dir)?;
    let consumers = ConsumerOffsets::open(data_dir).map_err(dir_err(data_dir))?;
    let inventory_path = data_dir.join("inventory.slots");
    let inventory =
        Inventory::create(&inventory_path, config.inventory.skus_max).map_err(|source| {
            StartError::Inventory {
                path: inventory_path.clone(),
                source,
            }
        })?;
    let keys = load_or_create_hash_keys(data_dir)?;
    Ok(DataDir {
        lock,
        journal_dir,
        consumers,
        inventory: Arc::new(inventory),
        keys,
    })
}

fn build_writers(
    config: &Config,
    inventory: &Arc<Inventory>,
    orders: &Arc<OrderIndex>,
    clock: &Clock,
) -> Vec<ShardWriter> {
    let shard_count = config.shard_count();
    (0..shard_count)
        .map(|index| {
            let mut writer = ShardWriter::new(
                index,
                shard_count,
                inventory.clone(),
                orders.clone(),
                clock.clone(),
                config.shard.batch_max,
            );
            writer.purchases = PurchaseCounts::with_capacity(config.inventory.orders_expected);
            writer.deadlines = crate::shard::Deadlines {
                review_timeout_s: config.review.timeout_s,
                auto_complete_s: config.orders.auto_complete_s,
            };
            writer
        })
        .collect()
}

/// Step 2: the newest checkpoint that checks, then every record after it. The journal must
/// continue exactly after the state: a gap, or a journal that ends below the checkpoint,
/// refuses to start (records are missing; nothing would be sure any more).
fn recover(
    opened: &DataDir,
    orders: &OrderIndex,
    writers: &mut [ShardWriter],
    data_dir: &Path,
) -> Result<Recovered, StartError> {
    let catalog: DashMap<String, u32> = DashMap::new();
    let mut replayer = Replayer {
        inventory: &opened.inventory,
        orders,
        keys: &opened.keys,
        catalog: &catalog,
        next_slot: 0,
        writers,
        review_rules: None,
    };
    let checkpoints_dir = checkpoint::checkpoints_dir(data_dir);
    let loaded = checkpoint::load_latest(&checkpoints_dir).map_err(dir_err(&checkpoints_dir))?;
    let checkpoint_seq = match loaded {
        Some((path, state)) => {
            replayer
                .checkpoint(&state)
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
    let report = journal::recover(&opened.journal_dir, &mut |seq, record: &ArchivedRecord| {
        if seq <= checkpoint_seq {
            return Ok(());
        }
        if first_replayed.is_none() {
            first_replayed = Some(seq);
            if seq != checkpoint_seq + 1 {
                return Err(records_missing(seq, checkpoint_seq));
            }
        }
        replayer.record(seq, record)
    })?;
    let next_slot = replayer.next_slot;
    let review_rules = replayer.review_rules.take();
    for writer in writers.iter_mut() {
        writer.drop_stale_timers();
    }
    // With no record after the checkpoint, nothing above checked that the journal resumes
    // where the state needs it: an empty last segment (a crash right after a rotation) names
    // the next seq, and it must be the one after the checkpoint, or records between them are
    // missing.
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
    Ok(Recovered {
        report,
        checkpoint_seq,
        catalog,
        next_slot,
        review_rules,
    })
}

/// Step 3's guard: an offset past the recovered journal's end would skip the records that
/// reuse those seqs, so it is lowered to the end (a power cut under `interval` or `none` may
/// have taken records a group was past).
fn clamp_offsets(
    opened: &DataDir,
    recovered: &Recovered,
    data_dir: &Path,
) -> Result<Vec<(String, u64)>, StartError> {
    let journal_end = recovered.report.tail.next_seq - 1;
    let clamped = opened
        .consumers
        .clamp_to(journal_end)
        .map_err(dir_err(&journal::consumers::consumers_dir(data_dir)))?;
    for (group, offset) in &clamped {
        tracing::warn!(group = %group, old_offset = offset, new_offset = journal_end,
            "consumer group offset was past the journal's end (records lost to a power cut?); \
             lowered to the end");
    }
    Ok(clamped)
}

/// Step 4: one thread per shard, each with its bounded mailbox and its control lane.
fn spawn_shards(writers: Vec<ShardWriter>, journal: &Journal, config: &Config) -> Shards {
    let shard_count = writers.len();
    let mut shards = Shards {
        mailboxes: Vec::with_capacity(shard_count),
        control_lanes: Vec::with_capacity(shard_count),
        leftovers: Vec::with_capacity(shard_count),
        threads: Vec::with_capacity(shard_count),
        decided: writers.iter().map(|w| w.decided.clone()).collect(),
        mailbox_waits: writers
            .iter()
            .map(|w| w.mailbox_wait_max_us.clone())
            .collect(),
    };
    for writer in writers {
        let (sender, receiver) = crossbeam_channel::bounded(config.shard.queue_capacity);
        // Unbounded by type, bounded by the exchange gate (see `ShardWriter::spawn`); and a
        // stopped shard's unread settles are dropped with it, so no exchange waits on one.
        let (control, control_receiver) = crossbeam_channel::unbounded();
        shards.mailboxes.push(sender);
        shards.control_lanes.push(control);
        shards.leftovers.push(receiver.clone());
        shards
            .threads
            .push(writer.spawn(journal.clone(), receiver, control_receiver));
    }
    shards
}

/// Step 5: with `journal.retain_s`, a thread that runs a retention pass every
/// `journal.retention_check_s` until the engine stops.
fn spawn_retention(engine: &Arc<Engine>, config: &Config) -> Result<(), StartError> {
    if config.journal.retain_s == 0 {
        return Ok(());
    }
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
        .map_err(dir_err(&config.data_dir))?;
    *engine.retention.lock() = Some((stop, thread));
    Ok(())
}
