//! The per-order work of a shard's decision path, without any I/O.
//!
//! This is the CPU cost every accepted order pays between the mailbox and the journal; with
//! one shard per core it bounds how many orders a core can decide per second, however the
//! disk keeps up. What it measures, per order:
//! - `keys`: [`KeyHasher::order_key`] + [`KeyHasher::content_fingerprint`] +
//!   [`KeyHasher::purchase_key`] (three SipHash-1-3 runs; done on the HTTP task in the
//!   engine, included because every order pays it).
//! - `dedup_insert`: [`OrderIndex::check_or_insert`] of a never-seen key, then
//!   [`OrderIndex::commit_accepted`] as the commit does: two `DashMap` shard locks per order.
//! - `purchases`: [`PurchaseCounts::units`] + [`PurchaseCounts::add`] for a new buyer (the
//!   common case in a stampede: each buyer orders once), so every add inserts.
//! - `slot`: [`Slot::values`] + [`SlotValues::take`] + [`Slot::write`] (the seqlock write) on
//!   an [`Inventory`] mapped from a file in a temporary directory.
//! - `frame_push`: [`FrameBatch::push`] of one accepted-order record into a batch that is
//!   cleared every 256 records, the default `shard.batch_max`.
//! - `composed`: all of the above in the order [`ShardWriter::decide`] runs them, with the
//!   batch's `set_seq` calls done at the end of each batch of 256.
//! - `decide`: [`ShardWriter::decide`] itself, on a writer that has no journal. `decide`
//!   only queues frames, undo entries and deferred replies (the journal is touched in
//!   `finish_batch`), so each iteration is one batch of 256 orders decided by a fresh writer;
//!   building the writer and the commands (strings, oneshot channels, keys hashed as the HTTP
//!   task does) is outside the timing.
//!
//! Every order has a distinct order id (so dedup inserts are real inserts) and a distinct
//! buyer. The dedup index and the purchase counts grow as a sale would; they are replaced by
//! empty ones (outside the timing) every 2^20 orders, so a long run measures tables of up to
//! a million entries, resizes included, rather than an ever-larger table. Throughput is in
//! orders (elements). The allocator is mimalloc, as in the `stampede` binary.
//!
//! Run: `cargo bench --bench reserve_path` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stampede::inventory::{
    ContentFingerprint, DedupCheck, Inventory, KeyHasher, OrderIndex, OrderKey, PurchaseCounts,
    PurchaseKey, Slot, SlotValues,
};
use stampede::journal::{Event, FrameBatch, OrderAccepted, Record};
use stampede::order::Payment;
use stampede::shard::{OrderCommand, ShardWriter};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Orders a table takes before it is replaced by an empty one (outside the timing).
const TABLE_RESET: u64 = 1 << 20;
/// Orders per batch: the default `shard.batch_max`.
const BATCH: usize = 256;
const SKU: &str = "SKU-PS5-SLIM-DE";
const ADDRESS: &str = r#"{"name":"Ada Lovelace","street":"12 Example Road","city":"Oslo","postcode":"0150","country":"NO"}"#;

/// A uniform 64-bit key for order `n`, as a SipHash output would be (splitmix64).
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn order_id(n: u64) -> String {
    format!("ord-2024-11-11-{n:010}")
}

fn user_id(n: u64) -> String {
    format!("user-{n:010}")
}

fn accepted(n: u64) -> OrderAccepted {
    OrderAccepted {
        order_id: order_id(n),
        user_id: user_id(n),
        sku: SKU.into(),
        qty: 1,
        payment: Payment::Prepaid,
        address: Some(ADDRESS.into()),
    }
}

/// A stock slot with (practically) endless stock, a per-user limit so the purchase check
/// runs, and the default `max_per_order`.
fn inventory(dir: &tempfile::TempDir) -> Arc<Inventory> {
    let inventory =
        Inventory::create(&dir.path().join("inventory.slots"), 16).expect("create slot file");
    let stock = stampede::limits::STOCK_MAX;
    inventory.init_slot(
        0,
        SKU,
        SlotValues {
            stock_total: stock,
            available: stock,
            reserved: 0,
            sold: 0,
            per_user_limit: 2,
            max_per_order: 10,
            payment_timeout_s: 900,
        },
    );
    Arc::new(inventory)
}

/// Gives the slot its stock back when a long run has used a noticeable part of it, so
/// `take` never meets an empty slot. Outside the timing.
fn refill(slot: &Slot) {
    let values = slot.values();
    if values.available < stampede::limits::STOCK_MAX / 2 {
        slot.write(SlotValues {
            available: values.stock_total,
            reserved: 0,
            sold: 0,
            ..values
        });
    }
}

/// Each step of the path on its own.
fn steps(c: &mut Criterion, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    let hasher = KeyHasher::with_keys(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
    let orders: Vec<OrderAccepted> = (0..4096).map(accepted).collect();

    group.bench_function("keys", |b| {
        let mut next = 0usize;
        b.iter(|| {
            let order = &orders[next % orders.len()];
            next += 1;
            let key = hasher.order_key(black_box(&order.order_id));
            let fingerprint = hasher.content_fingerprint(
                black_box(&order.user_id),
                black_box(&order.sku),
                order.qty,
                order.payment,
                order.address.as_deref(),
            );
            let purchase_key = hasher.purchase_key(&order.user_id, &order.sku);
            black_box((key, fingerprint, purchase_key))
        });
    });

    group.bench_function("dedup_insert", |b| {
        let mut index = OrderIndex::new();
        let mut next = 0u64;
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if index.len() as u64 >= TABLE_RESET {
                    index = OrderIndex::new();
                }
                let chunk = left.min(TABLE_RESET - index.len() as u64);
                let started = Instant::now();
                for _ in 0..chunk {
                    next += 1;
                    let key = OrderKey(mix(next));
                    let fingerprint = ContentFingerprint(next as u32 & 0xff_ffff);
                    let check = index.check_or_insert(black_box(key), fingerprint);
                    debug_assert_eq!(check, DedupCheck::New);
                    black_box(check);
                    index
                        .commit_accepted(key, committed((next & stampede::limits::SEQ_MAX).max(1)));
                }
                elapsed += started.elapsed();
                left -= chunk;
            }
            elapsed
        });
    });

    group.bench_function("purchases", |b| {
        let mut counts = PurchaseCounts::new();
        let mut next = 0u64;
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if counts.len() as u64 >= TABLE_RESET {
                    counts = PurchaseCounts::new();
                }
                let chunk = left.min(TABLE_RESET - counts.len() as u64);
                let started = Instant::now();
                for _ in 0..chunk {
                    next += 1;
                    let key = PurchaseKey(mix(next ^ 0x5555));
                    let bought = counts.units(black_box(key));
                    black_box(bought);
                    counts.add(key, 1);
                }
                elapsed += started.elapsed();
                left -= chunk;
            }
            elapsed
        });
    });

    group.bench_function("slot", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let inventory = inventory(&dir);
        let slot = inventory.slot(0);
        b.iter_custom(|iters| {
            refill(slot);
            let started = Instant::now();
            for _ in 0..iters {
                let mut values = slot.values();
                values.take(black_box(1), Payment::Prepaid);
                slot.write(values);
            }
            started.elapsed()
        });
    });

    group.bench_function("frame_push", |b| {
        let record = Record {
            at_ms: 1_700_000_000_123,
            event: Event::Accepted(accepted(42)),
        };
        let mut frames = FrameBatch::with_capacity(BATCH * 256);
        b.iter(|| {
            if frames.len() == BATCH {
                frames.clear();
            }
            frames.push(black_box(&record)).expect("record encodes");
        });
    });

    group.finish();
}

/// Everything `decide` does for an accepted order, step by step, plus the batch's `set_seq`.
fn composed(c: &mut Criterion, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    group.bench_function("composed", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let inventory = inventory(&dir);
        let hasher = KeyHasher::with_keys(1, 2);
        let mut index = OrderIndex::new();
        let mut counts = PurchaseCounts::new();
        let mut frames = FrameBatch::with_capacity(BATCH * 256);
        let mut frame_keys: Vec<OrderKey> = Vec::with_capacity(BATCH);
        let mut seq = 0u64;
        // Ids are formatted outside the timing; the record is encoded from a fixed order
        // (the encoding cost does not depend on which digits the id has).
        let mut next = 0u64;
        let record = Record {
            at_ms: 1_700_000_000_123,
            event: Event::Accepted(accepted(42)),
        };
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                refill(inventory.slot(0));
                if index.len() as u64 >= TABLE_RESET {
                    index = OrderIndex::new();
                    counts = PurchaseCounts::new();
                }
                let chunk = left
                    .min(BATCH as u64 - frame_keys.len() as u64)
                    .min(TABLE_RESET - index.len() as u64);
                let ids: Vec<(String, String)> = (0..chunk)
                    .map(|i| (order_id(next + i), user_id(next + i)))
                    .collect();
                next += chunk;
                let started = Instant::now();
                for (order_id, user_id) in &ids {
                    let key = hasher.order_key(order_id);
                    let fingerprint = hasher.content_fingerprint(
                        user_id,
                        SKU,
                        1,
                        Payment::Prepaid,
                        Some(ADDRESS),
                    );
                    let purchase_key = hasher.purchase_key(user_id, SKU);
                    if index.check_or_insert(key, fingerprint) != DedupCheck::New {
                        panic!("order ids are distinct");
                    }
                    let slot = inventory.slot(0);
                    let mut values = slot.values();
                    let bought = counts.units(purchase_key);
                    assert!(1 <= values.max_per_order && values.available >= 1);
                    assert!(bought < values.per_user_limit);
                    frames.push(black_box(&record)).expect("record encodes");
                    values.take(1, Payment::Prepaid);
                    slot.write(values);
                    counts.add(purchase_key, 1);
                    frame_keys.push(key);
                }
                if frame_keys.len() == BATCH {
                    // The commit's side: each order of the durable batch gets its seq.
                    for key in frame_keys.drain(..) {
                        seq += 1;
                        index.commit_accepted(key, committed(seq));
                    }
                    frames.clear();
                }
                elapsed += started.elapsed();
                left -= chunk;
            }
            elapsed
        });
    });
    group.finish();
}

/// `ShardWriter::decide` on a journal-less writer, one batch of 256 orders per iteration.
fn decide(c: &mut Criterion, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decide_batch_256", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let inventory = inventory(&dir);
        let hasher = KeyHasher::with_keys(3, 4);
        let mut dedup = Arc::new(OrderIndex::new());
        let mut next = 0u64;
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                refill(inventory.slot(0));
                if dedup.len() as u64 >= TABLE_RESET {
                    dedup = Arc::new(OrderIndex::new());
                }
                // A fresh writer each batch: without a journal `finish_batch` cannot run, and
                // it is the only thing that empties the batch.
                let mut writer = ShardWriter::new(
                    0,
                    1,
                    inventory.clone(),
                    dedup.clone(),
                    stampede::shard::Clock::system(),
                    BATCH,
                );
                let mut replies = Vec::with_capacity(BATCH);
                let commands: Vec<OrderCommand> = (0..BATCH)
                    .map(|_| {
                        next += 1;
                        let order = accepted(next);
                        let key = hasher.order_key(&order.order_id);
                        let fingerprint = hasher.content_fingerprint(
                            &order.user_id,
                            &order.sku,
                            order.qty,
                            order.payment,
                            order.address.as_deref(),
                        );
                        let purchase_key = hasher.purchase_key(&order.user_id, &order.sku);
                        let (reply, receiver) = tokio::sync::oneshot::channel();
                        replies.push(receiver);
                        OrderCommand {
                            order,
                            slot_index: 0,
                            key,
                            fingerprint,
                            purchase_key,
                            review: Default::default(),
                            reply,
                        }
                    })
                    .collect();
                let at_ms = stampede::shard::Clock::system().now_ms();
                let started = Instant::now();
                for command in commands {
                    writer.decide(command, at_ms);
                }
                elapsed += started.elapsed();
                // Every order was accepted: nothing was answered yet (replies wait for the
                // commit), so a reply here means a rejection.
                debug_assert!(replies.iter_mut().all(|r| r.try_recv().is_err()));
                drop(writer);
            }
            elapsed
        });
    });
    group.finish();
}

fn reserve_path(c: &mut Criterion) {
    steps(c, "reserve_path");
    composed(c, "reserve_path");
    decide(c, "reserve_path");
}

criterion_group!(benches, reserve_path);
criterion_main!(benches);

/// What the commit publishes for an accepted order (a prepaid order of slot 0).
fn committed(seq: u64) -> stampede::inventory::AcceptedOrder {
    stampede::inventory::AcceptedOrder {
        seq,
        status: stampede::order::OrderStatus::PendingPayment,
        purchase_key: stampede::inventory::PurchaseKey(seq),
        slot_index: 0,
        qty: 1,
    }
}
