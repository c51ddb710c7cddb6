//! Concurrency models of three hand-offs of the engine, run under `shuttle`'s randomized
//! schedulers (and, for the seqlock, `loom`'s exhaustive weak-memory checker). They are
//! models of the *protocols*, written here with shuttle's (or loom's) primitives in place
//! of std's, crossbeam's and tokio's; they do not run the production code itself, so a
//! change to the code below must be mirrored here by hand.
//!
//! # What each model mirrors
//!
//! (a) `src/inventory/slots.rs`, `Slot::write` / `Slot::read` / `Slot::available` /
//!     `Slot::max_per_order`: the per-slot seqlock, line for line and with the same
//!     orderings. Writer: `version` loaded Relaxed, stored odd Relaxed, `fence(Release)`,
//!     the fields stored Relaxed (`stock_total`, `reserved`, `sold`, the three u32
//!     settings), `available` stored Release, `version` stored even Release. Reader:
//!     `version` loaded Acquire (spin while odd), the fields loaded Relaxed,
//!     `fence(Acquire)`, `version` reloaded Relaxed and compared. One writer (the owning
//!     shard) publishes a sequence of balanced values (takes, payments, cancellations, a
//!     restock that changes `stock_total`); two readers read repeatedly, and a fast-path
//!     reader loads `available` and `max_per_order` alone. Checked: every snapshot is
//!     balanced (`available + reserved + sold == stock_total`) and is exactly one of the
//!     values the writer published (no torn mix, settings included), a reader never sees
//!     an older snapshot after a newer one, the fast path sees only published values, and
//!     no reader spins forever (shuttle fails an execution past `MaxSteps`).
//!     Not covered: the memory map and other processes reading the file; `init_slot`'s
//!     `sku_len` publication; `Inventory::slot`'s `unsafe` pointer cast.
//!
//! (b) `src/shard/turn.rs`, `ShardWriter::run`, and `src/engine/orders.rs`, `Engine::submit_order`
//!     / the patient send / `Engine::shutdown`: the bounded mailbox from many HTTP tasks to
//!     one shard. Producers `try_send`; on `Full` the command comes back whole (the model
//!     checks it is the same command) and is either shed (429) or retried (the patient
//!     send). The shard blocks for one command, then `try_recv`s until empty or
//!     `batch_max`, decides the batch in order; `Stop` ends the loop after its batch.
//!     Checked: every admitted command is decided exactly once, in per-producer order;
//!     a shed command is never decided; nothing is lost. A second variant races the
//!     producers against shutdown (`stopping` flag, blocking `send(Stop)`, join, drain of
//!     the leftovers) and checks that every admitted command ends exactly one way: decided
//!     once, or dropped by the drain (its reply channel closes: 503), or still queued at
//!     the end, which the model allows only for a command that got in after the drain had
//!     begun (after the HTTP drain timeout, see `http::serve`; it is answered when the
//!     engine is dropped).
//!     Not covered: crossbeam's own implementation (shuttle's `sync_channel` stands in for
//!     `crossbeam_channel::bounded`, same `try_send`/`try_recv`/`recv` contract, capacity
//!     >= 1); timers, `Tick`, `Hold`, the control lane's `Settle`, `Checkpoint`; several
//!     shards.
//!
//! (c) `src/shard/mod.rs`, `ShardWriter::decide` / `finish_batch` and the journal's group
//!     commit: the reply hand-off. The shard takes stock for each order of its batch at once
//!     (the slot and the order index show it as pending), appends the batch and waits for
//!     the commit, which a separate journal thread (the group-commit leader) completes or
//!     fails; on success it publishes the orders (`commit_accepted`) and only then sends
//!     each reply through a real `tokio::sync::oneshot` (polled with shuttle's `block_on`);
//!     on failure it undoes the batch in reverse, the journal is poisoned, and each order
//!     is answered `Unavailable`. Checked: a client that gets `Accepted { seq }` finds its
//!     record durable at that seq at the moment it gets the reply, and it stays so; no
//!     client ever gets `Accepted` for an undone order; an `Unavailable` order is in no
//!     durable record and holds no stock; at the end stock equals the initial stock less
//!     the accepted quantities. Not covered: the real `Journal` (files, fsync, segment
//!     rotation), actions and timers, the sold-out fast path.
//!
//! Each model also has a deliberately broken variant that must fail (`#[should_panic]`),
//! so a model that silently stopped checking would be noticed.
//!
//! # Budget
//!
//! In the default suite: seqlock 2,000 random + 1,000 PCT (depth 3) schedules; mailbox
//! 1,500 random + 500 PCT for each of the two variants; reply 1,500 random + 500 PCT; each
//! broken variant as many (it stops at its first failing schedule). Every schedule is
//! bounded by 20,000 shuttle steps. The loom model of the seqlock explores every schedule
//! of one write against one read with a preemption bound of 2. About 1.5 s in all (debug
//! build, 2 cores). More: `STAMPEDE_SHUTTLE_ITERATIONS=N` multiplies every shuttle count by
//! N (`STAMPEDE_SHUTTLE_ITERATIONS=50 cargo test --release --test shuttle_models`);
//! `STAMPEDE_LOOM_WRITES=2` has loom check two writes against the read (~20 s) and
//! `LOOM_MAX_PREEMPTIONS=3` widens it. Runs done when this was written: the default (1.4 s
//! debug); 500x in release (1.5 M seqlock, 1 M per mailbox variant and 1 M reply schedules,
//! 53 s); loom with two writes and a preemption bound of 3 (8 s release). All passed.
//!
//! Shuttle runs atomics as sequentially consistent (it explores interleavings, not
//! reorderings; its fences are no-ops); the orderings of (a) are checked by the loom model,
//! which models Acquire/Release, fences and stale Relaxed loads (not load buffering), on the
//! four stock fields (see `loom_slot`). Each shuttle test also asserts that its schedules
//! reached the cases it claims to cover (a reader retrying, a full queue, a failed commit,
//! ...), so a model that stopped exercising them fails.

use std::collections::HashMap;

use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::{Config, MaxSteps, Runner};

std::thread_local! {
    /// What the schedules of one test exercised (shuttle runs every task of an execution on
    /// the test's own thread), so that each test can check its model reached the cases it
    /// claims to cover.
    static COVERED: std::cell::RefCell<HashMap<&'static str, usize>> =
        std::cell::RefCell::new(HashMap::new());
}

fn covered(what: &'static str) {
    COVERED.with(|covered| *covered.borrow_mut().entry(what).or_default() += 1);
}

/// Asserts that every one of `cases` happened in some schedule of this test.
fn assert_covered(cases: &[&str]) {
    COVERED.with(|covered| {
        let covered = covered.borrow();
        for case in cases {
            assert!(
                covered.get(case).copied().unwrap_or(0) > 0,
                "no schedule reached {case:?}: {covered:?}"
            );
        }
    });
}

/// Schedules to explore: the default times `STAMPEDE_SHUTTLE_ITERATIONS` (default 1).
fn iterations(default: usize) -> usize {
    let factor = std::env::var("STAMPEDE_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    default * factor
}

fn config() -> Config {
    let mut config = Config::new();
    // A reader that spins forever, or a producer stuck on a full queue, fails the schedule.
    config.max_steps = MaxSteps::FailAfter(20_000);
    config.silence_warnings = true;
    config
}

/// Runs `model` under the random scheduler, then the PCT scheduler (depth 3), from fixed
/// seeds so that a failure reproduces (shuttle also prints the failing schedule).
fn explore(model: fn(), random: usize, pct: usize) {
    Runner::new(
        RandomScheduler::new_from_seed(0x5EED_0001, iterations(random)),
        config(),
    )
    .run(model);
    Runner::new(
        PctScheduler::new_from_seed(0x5EED_0002, 3, iterations(pct)),
        config(),
    )
    .run(model);
}

// ---------------------------------------------------------------------------------------
// (a) The stock slot seqlock
// ---------------------------------------------------------------------------------------

/// The values of one slot, as `slots::SlotValues`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotValues {
    stock_total: u64,
    available: u64,
    reserved: u64,
    sold: u64,
    per_user_limit: u32,
    max_per_order: u32,
    payment_timeout_s: u32,
}

impl SlotValues {
    fn is_balanced(&self) -> bool {
        self.available + self.reserved + self.sold == self.stock_total
    }
}

/// What the single writer publishes, in order: a new SKU, two orders taking stock (one
/// reserved, one sold at once), a payment, a cancellation, a restock with new settings.
fn published() -> Vec<SlotValues> {
    let start = SlotValues {
        stock_total: 10,
        available: 10,
        reserved: 0,
        sold: 0,
        per_user_limit: 2,
        max_per_order: 5,
        payment_timeout_s: 900,
    };
    let mut values = vec![start];
    let mut next = |f: &dyn Fn(&mut SlotValues)| {
        let mut v = *values.last().unwrap();
        f(&mut v);
        assert!(v.is_balanced());
        values.push(v);
    };
    next(&|v| {
        v.available -= 3;
        v.reserved += 3;
    });
    next(&|v| {
        v.available -= 1;
        v.sold += 1;
    });
    next(&|v| {
        v.reserved -= 2;
        v.sold += 2;
    });
    next(&|v| {
        v.reserved -= 1;
        v.available += 1;
    });
    next(&|v| {
        v.stock_total += 7;
        v.available += 7;
        v.per_user_limit = 4;
        v.max_per_order = 9;
        v.payment_timeout_s = 60;
    });
    values
}

/// The seqlock of `slots::Slot`, on shuttle's or loom's atomics. `BROKEN` selects a
/// deliberately wrong reader (no odd-version check, no recheck) for the teeth tests.
macro_rules! seqlock_slot {
    ($atomic:path, $hint:path) => {
        use $atomic::{AtomicU32, AtomicU64, Ordering, fence};

        pub struct Slot {
            version: AtomicU64,
            stock_total: AtomicU64,
            available: AtomicU64,
            reserved: AtomicU64,
            sold: AtomicU64,
            per_user_limit: AtomicU32,
            max_per_order: AtomicU32,
            payment_timeout_s: AtomicU32,
        }

        impl Slot {
            pub fn new(values: super::SlotValues) -> Self {
                Self {
                    version: AtomicU64::new(0),
                    stock_total: AtomicU64::new(values.stock_total),
                    available: AtomicU64::new(values.available),
                    reserved: AtomicU64::new(values.reserved),
                    sold: AtomicU64::new(values.sold),
                    per_user_limit: AtomicU32::new(values.per_user_limit),
                    max_per_order: AtomicU32::new(values.max_per_order),
                    payment_timeout_s: AtomicU32::new(values.payment_timeout_s),
                }
            }

            /// `Slot::read`.
            pub fn read(&self) -> super::SlotValues {
                loop {
                    let before = self.version.load(Ordering::Acquire);
                    if before & 1 == 1 {
                        super::covered("reader saw an odd version");
                        $hint();
                        continue;
                    }
                    let values = self.load_relaxed();
                    fence(Ordering::Acquire);
                    if self.version.load(Ordering::Relaxed) == before {
                        return values;
                    }
                    super::covered("reader retried on a changed version");
                }
            }

            /// A broken reader: takes whatever the fields hold.
            pub fn read_unchecked(&self) -> super::SlotValues {
                self.load_relaxed()
            }

            fn load_relaxed(&self) -> super::SlotValues {
                super::SlotValues {
                    stock_total: self.stock_total.load(Ordering::Relaxed),
                    available: self.available.load(Ordering::Relaxed),
                    reserved: self.reserved.load(Ordering::Relaxed),
                    sold: self.sold.load(Ordering::Relaxed),
                    per_user_limit: self.per_user_limit.load(Ordering::Relaxed),
                    max_per_order: self.max_per_order.load(Ordering::Relaxed),
                    payment_timeout_s: self.payment_timeout_s.load(Ordering::Relaxed),
                }
            }

            /// `Slot::available` (the sold-out fast path).
            pub fn available(&self) -> u64 {
                self.available.load(Ordering::Acquire)
            }

            /// `Slot::max_per_order` (the fast path).
            pub fn max_per_order(&self) -> u32 {
                self.max_per_order.load(Ordering::Acquire)
            }

            /// `Slot::write`: the single writer. `release_fence: false` drops the fence
            /// after the odd version (a broken writer, for the loom teeth test).
            pub fn write_with(&self, values: super::SlotValues, release_fence: bool) {
                assert!(values.is_balanced(), "unbalanced stock slot: {values:?}");
                let version = self.version.load(Ordering::Relaxed);
                debug_assert_eq!(version & 1, 0, "two writers on one slot");
                self.version.store(version + 1, Ordering::Relaxed);
                if release_fence {
                    fence(Ordering::Release);
                }
                self.stock_total
                    .store(values.stock_total, Ordering::Relaxed);
                self.reserved.store(values.reserved, Ordering::Relaxed);
                self.sold.store(values.sold, Ordering::Relaxed);
                self.per_user_limit
                    .store(values.per_user_limit, Ordering::Relaxed);
                self.max_per_order
                    .store(values.max_per_order, Ordering::Relaxed);
                self.payment_timeout_s
                    .store(values.payment_timeout_s, Ordering::Relaxed);
                self.available.store(values.available, Ordering::Release);
                self.version.store(version + 2, Ordering::Release);
            }

            pub fn write(&self, values: super::SlotValues) {
                self.write_with(values, true);
            }

            /// A broken writer that never makes the version even again.
            pub fn write_leaving_odd(&self, values: super::SlotValues) {
                let version = self.version.load(Ordering::Relaxed);
                self.version.store(version + 1, Ordering::Relaxed);
                self.available.store(values.available, Ordering::Release);
            }
        }
    };
}

mod shuttle_slot {
    seqlock_slot!(shuttle::sync::atomic, shuttle::hint::spin_loop);
}

/// The seqlock for loom: `Slot::write` and `Slot::read` with the same orderings, on the
/// four stock fields only. The three u32 settings are left out to keep loom's state space
/// small (every Relaxed load may read any store it has not been ordered after); they are
/// Relaxed stores and loads in the same place as `stock_total`, `reserved` and `sold`, so
/// the orderings checked are the same.
mod loom_slot {
    use loom::sync::atomic::{AtomicU64, Ordering, fence};

    pub struct Slot {
        version: AtomicU64,
        stock_total: AtomicU64,
        available: AtomicU64,
        reserved: AtomicU64,
        sold: AtomicU64,
    }

    /// (stock_total, available, reserved, sold)
    pub type Stock = (u64, u64, u64, u64);

    impl Slot {
        pub fn new((stock_total, available, reserved, sold): Stock) -> Self {
            Self {
                version: AtomicU64::new(0),
                stock_total: AtomicU64::new(stock_total),
                available: AtomicU64::new(available),
                reserved: AtomicU64::new(reserved),
                sold: AtomicU64::new(sold),
            }
        }

        pub fn read(&self) -> Stock {
            loop {
                let before = self.version.load(Ordering::Acquire);
                if before & 1 == 1 {
                    loom::hint::spin_loop();
                    continue;
                }
                let values = (
                    self.stock_total.load(Ordering::Relaxed),
                    self.available.load(Ordering::Relaxed),
                    self.reserved.load(Ordering::Relaxed),
                    self.sold.load(Ordering::Relaxed),
                );
                fence(Ordering::Acquire);
                if self.version.load(Ordering::Relaxed) == before {
                    return values;
                }
            }
        }

        pub fn write(&self, (stock_total, available, reserved, sold): Stock, release_fence: bool) {
            let version = self.version.load(Ordering::Relaxed);
            self.version.store(version + 1, Ordering::Relaxed);
            if release_fence {
                fence(Ordering::Release);
            }
            self.stock_total.store(stock_total, Ordering::Relaxed);
            self.reserved.store(reserved, Ordering::Relaxed);
            self.sold.store(sold, Ordering::Relaxed);
            self.available.store(available, Ordering::Release);
            self.version.store(version + 2, Ordering::Release);
        }
    }
}

/// How a seqlock model's reader reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    Seqlock,
    Unchecked,
}

fn seqlock_model(reader: Reader) {
    use shuttle::sync::Arc;
    let values = published();
    let slot = Arc::new(shuttle_slot::Slot::new(values[0]));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let slot = slot.clone();
        let values = values.clone();
        readers.push(shuttle::thread::spawn(move || {
            let mut last_index = 0;
            for _ in 0..3 {
                let seen = match reader {
                    Reader::Seqlock => slot.read(),
                    Reader::Unchecked => slot.read_unchecked(),
                };
                assert!(seen.is_balanced(), "torn read: {seen:?}");
                let index = values
                    .iter()
                    .position(|v| *v == seen)
                    .unwrap_or_else(|| panic!("read a value never published: {seen:?}"));
                assert!(
                    index >= last_index,
                    "went back from {last_index} to {index}"
                );
                last_index = index;
            }
        }));
    }
    let fast_path = {
        let slot = slot.clone();
        let values = values.clone();
        shuttle::thread::spawn(move || {
            for _ in 0..3 {
                let available = slot.available();
                let max = slot.max_per_order();
                assert!(values.iter().any(|v| v.available == available));
                assert!(values.iter().any(|v| v.max_per_order == max));
            }
        })
    };
    for value in &values[1..] {
        slot.write(*value);
    }
    for reader in readers {
        reader.join().unwrap();
    }
    fast_path.join().unwrap();
    assert_eq!(slot.read(), *values.last().unwrap());
}

#[test]
fn seqlock_readers_never_see_a_torn_or_unpublished_slot() {
    explore(|| seqlock_model(Reader::Seqlock), 2000, 1000);
    assert_covered(&[
        "reader saw an odd version",
        "reader retried on a changed version",
    ]);
}

#[test]
#[should_panic(expected = "torn read")]
fn seqlock_model_catches_a_reader_without_the_version_check() {
    explore(|| seqlock_model(Reader::Unchecked), 2000, 1000);
}

#[test]
#[should_panic(expected = "exceeded max_steps")]
fn seqlock_model_catches_a_writer_that_leaves_the_version_odd() {
    explore(
        || {
            use shuttle::sync::Arc;
            let values = published();
            let slot = Arc::new(shuttle_slot::Slot::new(values[0]));
            let reader = {
                let slot = slot.clone();
                shuttle::thread::spawn(move || slot.read())
            };
            slot.write_leaving_odd(values[1]);
            // The reader spins until shuttle's step bound fails the schedule.
            reader.join().unwrap();
        },
        50,
        0,
    );
}

/// The seqlock under loom: every interleaving (preemption bound 2 unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise), with Acquire/Release, fences and stale Relaxed
/// loads modelled. The writer publishes a restock (every field changes), then with
/// `STAMPEDE_LOOM_WRITES=2` a sale; one reader reads once and must see a published value,
/// never a mix.
fn loom_seqlock(release_fence: bool) {
    // One write explores in ~0.1 s; two (`STAMPEDE_LOOM_WRITES=2`) in ~20 s.
    let writes = std::env::var("STAMPEDE_LOOM_WRITES")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 2);
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(move || {
        use loom::sync::Arc;
        let published = [(10, 6, 3, 1), (17, 11, 4, 2), (17, 10, 4, 3)];
        let slot = Arc::new(loom_slot::Slot::new(published[0]));
        let reader = {
            let slot = slot.clone();
            loom::thread::spawn(move || {
                let seen = slot.read();
                assert!(published.contains(&seen), "torn read: {seen:?}");
            })
        };
        for values in &published[1..=writes] {
            slot.write(*values, release_fence);
        }
        reader.join().unwrap();
    });
}

#[test]
fn loom_seqlock_orderings_hold() {
    loom_seqlock(true);
}

#[test]
#[should_panic(expected = "torn read")]
fn loom_catches_a_writer_without_the_release_fence() {
    loom_seqlock(false);
}

// ---------------------------------------------------------------------------------------
// (b) The mailbox hand-off
// ---------------------------------------------------------------------------------------

const PRODUCERS: usize = 2;
const PER_PRODUCER: usize = 3;
const QUEUE_CAPACITY: usize = 2;
const BATCH_MAX: usize = 2;

/// A command in the mailbox: `shard::Command::Order` (with a payload that must arrive
/// intact) or `Command::Stop`.
#[derive(Debug)]
enum Command {
    Order {
        producer: usize,
        index: usize,
        payload: String,
        /// The order's reply channel (`OrderCommand::reply`): dropping it answers 503.
        reply: shuttle::sync::mpsc::SyncSender<usize>,
    },
    Stop,
}

/// What happened to each order, kept by the shard thread.
#[derive(Default)]
struct Decided {
    /// (producer, index) in the order the shard decided them.
    log: Vec<(usize, usize)>,
}

/// `ShardWriter::run`'s loop: block for one command, `try_recv` up to `batch_max`, decide in
/// order, stop after the batch that holds `Stop`. `broken_batch` takes the batch last to
/// first (for the teeth test). Returns the receiver (the engine keeps a clone to drain).
fn shard_loop(
    mailbox: shuttle::sync::mpsc::Receiver<Command>,
    broken_batch: bool,
) -> (Decided, shuttle::sync::mpsc::Receiver<Command>) {
    use shuttle::sync::mpsc::TryRecvError;
    let mut decided = Decided::default();
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        match mailbox.recv() {
            Ok(command) => batch.push(command),
            Err(_) => break,
        }
        while batch.len() < BATCH_MAX {
            match mailbox.try_recv() {
                Ok(command) => batch.push(command),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if batch.len() > 1 {
            covered("a batch of several commands");
        }
        if broken_batch {
            batch.reverse();
        }
        let mut stop = false;
        for command in batch.drain(..) {
            match command {
                Command::Order {
                    producer,
                    index,
                    payload,
                    reply,
                } => {
                    assert_eq!(payload, format!("order {producer}-{index}"));
                    decided.log.push((producer, index));
                    let _ = reply.send(decided.log.len());
                }
                Command::Stop => stop = true,
            }
            if stop {
                covered("a command after Stop in its batch");
            }
        }
        if stop {
            break;
        }
    }
    (decided, mailbox)
}

/// What one producer did with each of its commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Submitted {
    /// In the mailbox (`Ok(())`); `late` when the shutdown's drain had begun by then.
    Admitted { late: bool },
    /// `Full`: answered 429 (the command came back and was dropped by the producer).
    Shed,
    /// `stopping` was set: answered 503 at once.
    Refused,
}

fn mailbox_model(concurrent_shutdown: bool, broken_batch: bool) {
    use shuttle::sync::atomic::{AtomicBool, Ordering};
    use shuttle::sync::mpsc::{TryRecvError, TrySendError, sync_channel};
    use shuttle::sync::{Arc, Mutex};

    let (sender, receiver) = sync_channel::<Command>(QUEUE_CAPACITY);
    let stopping = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let shard = shuttle::thread::spawn(move || shard_loop(receiver, broken_batch));
    let replies = Arc::new(Mutex::new(HashMap::new()));
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let sender = sender.clone();
        let stopping = stopping.clone();
        let draining = draining.clone();
        let replies = replies.clone();
        producers.push(shuttle::thread::spawn(move || {
            let mut outcomes = Vec::new();
            for index in 0..PER_PRODUCER {
                // `Engine::submit_order`: refuse once stopping, else `try_send`.
                if stopping.load(Ordering::Acquire) {
                    covered("refused: stopping");
                    outcomes.push(Submitted::Refused);
                    continue;
                }
                let (reply, reply_receiver) = sync_channel(1);
                let mut command = Command::Order {
                    producer,
                    index,
                    payload: format!("order {producer}-{index}"),
                    reply,
                };
                // Producer 0 sheds on a full queue; producer 1 retries (the patient send).
                let patient = producer == 1;
                let outcome = loop {
                    match sender.try_send(command) {
                        Ok(()) => {
                            break Submitted::Admitted {
                                late: draining.load(Ordering::SeqCst),
                            };
                        }
                        Err(TrySendError::Full(back)) => {
                            // Nothing lost: the very command comes back.
                            match &back {
                                Command::Order {
                                    producer: p,
                                    index: i,
                                    payload,
                                    ..
                                } => {
                                    assert_eq!((*p, *i), (producer, index));
                                    assert_eq!(payload, &format!("order {producer}-{index}"));
                                }
                                Command::Stop => panic!("a Stop came back to a producer"),
                            }
                            if !patient || stopping.load(Ordering::Acquire) {
                                covered("shed on a full queue");
                                break Submitted::Shed;
                            }
                            covered("retried on a full queue");
                            command = back;
                            shuttle::thread::yield_now();
                        }
                        Err(TrySendError::Disconnected(_)) => break Submitted::Refused,
                    }
                };
                if let Submitted::Admitted { .. } = outcome {
                    replies
                        .lock()
                        .unwrap()
                        .insert((producer, index), reply_receiver);
                }
                outcomes.push(outcome);
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    if !concurrent_shutdown {
        for producer in producers.drain(..) {
            outcomes.push(producer.join().unwrap());
        }
    }
    // `Engine::shutdown`: stopping, a blocking Stop behind what is queued, join, drain.
    stopping.store(true, Ordering::Release);
    sender.send(Command::Stop).expect("the shard is running");
    let (decided, leftovers) = shard.join().unwrap();
    draining.store(true, Ordering::SeqCst);
    let mut dropped = Vec::new();
    while let Ok(command) = leftovers.try_recv() {
        if let Command::Order {
            producer, index, ..
        } = command
        {
            covered("dropped by the drain");
            dropped.push((producer, index));
        }
    }
    for producer in producers.drain(..) {
        outcomes.push(producer.join().unwrap());
    }
    // What is still queued now got in after the drain.
    let mut stranded = Vec::new();
    loop {
        match leftovers.try_recv() {
            Ok(Command::Order {
                producer, index, ..
            }) => {
                covered("queued after the drain");
                stranded.push((producer, index));
            }
            Ok(Command::Stop) => panic!("a second Stop"),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }

    // Exactly once, and in each producer's order.
    let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
    for id in &decided.log {
        *seen.entry(*id).or_default() += 1;
    }
    assert!(
        seen.values().all(|count| *count == 1),
        "decided twice: {:?}",
        decided.log
    );
    for producer in 0..PRODUCERS {
        let indexes: Vec<usize> = decided
            .log
            .iter()
            .filter(|(p, _)| *p == producer)
            .map(|(_, i)| *i)
            .collect();
        assert!(
            indexes.windows(2).all(|w| w[0] < w[1]),
            "producer {producer} decided out of order: {indexes:?}"
        );
    }
    let replies = replies.lock().unwrap();
    for (producer, outcomes) in outcomes.iter().enumerate() {
        for (index, outcome) in outcomes.iter().enumerate() {
            let id = (producer, index);
            let was_decided = seen.contains_key(&id);
            match outcome {
                Submitted::Admitted { late } => {
                    let reply = replies[&id].try_recv();
                    if was_decided {
                        assert!(reply.is_ok(), "{id:?} decided but not answered");
                    } else if dropped.contains(&id) {
                        assert!(reply.is_err(), "{id:?} dropped but answered");
                    } else {
                        assert!(stranded.contains(&id), "{id:?} admitted, then lost");
                        assert!(concurrent_shutdown && *late, "{id:?} stranded though early");
                    }
                    if !concurrent_shutdown {
                        assert!(was_decided, "{id:?} admitted before shutdown, not decided");
                    }
                }
                Submitted::Shed | Submitted::Refused => {
                    assert!(!was_decided, "{id:?} refused, yet decided");
                }
            }
        }
    }
}

#[test]
fn mailbox_decides_every_admitted_command_once_in_order() {
    explore(|| mailbox_model(false, false), 1500, 500);
    assert_covered(&[
        "a batch of several commands",
        "shed on a full queue",
        "retried on a full queue",
    ]);
}

#[test]
fn mailbox_shutdown_racing_producers_loses_no_command() {
    explore(|| mailbox_model(true, false), 1500, 500);
    assert_covered(&[
        "refused: stopping",
        "a command after Stop in its batch",
        "dropped by the drain",
        "queued after the drain",
    ]);
}

#[test]
#[should_panic(expected = "decided out of order")]
fn mailbox_model_catches_a_shard_that_reorders_its_batch() {
    explore(|| mailbox_model(false, true), 1500, 500);
}

// ---------------------------------------------------------------------------------------
// (c) The reply hand-off
// ---------------------------------------------------------------------------------------

/// The shard's answer to an order (`shard::OrderOutcome`, the cases that matter here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted { seq: u64 },
    SoldOut,
    Unavailable,
}

/// The journal as the shard sees it: `append` + `commit`, completed by a group-commit
/// leader on another thread, which may fail (and then the journal is poisoned).
struct Journal {
    state: shuttle::sync::Mutex<JournalState>,
    changed: shuttle::sync::Condvar,
}

#[derive(Default)]
struct JournalState {
    /// Appended, not yet committed: (seq, order id).
    pending: Vec<(u64, usize)>,
    /// Durable records: (seq, order id).
    durable: Vec<(u64, usize)>,
    next_seq: u64,
    /// Commits the leader has finished (ok or not) and the last one's result.
    commits_done: u64,
    last_ok: bool,
    poisoned: bool,
    closed: bool,
}

impl Journal {
    /// `Journal::append`: seqs assigned, frames pending; `None` once poisoned. Returns the
    /// batch's first seq and the commit to wait for.
    fn append(&self, orders: &[usize]) -> Option<(u64, u64)> {
        let mut state = self.state.lock().unwrap();
        if state.poisoned {
            return None;
        }
        let first = state.next_seq;
        for (i, order) in orders.iter().enumerate() {
            state.pending.push((first + i as u64, *order));
        }
        state.next_seq += orders.len() as u64;
        let ticket = state.commits_done + 1;
        self.changed.notify_all();
        Some((first, ticket))
    }

    /// `Journal::commit`: waits for the leader's commit; false when it failed.
    fn commit(&self, ticket: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        while state.commits_done < ticket {
            state = self.changed.wait(state).unwrap();
        }
        state.last_ok
    }

    /// The group-commit leader: writes and "fsyncs" what is pending; the disk fails when
    /// shuttle's random source says so.
    fn leader(&self) {
        use shuttle::rand::Rng;
        let mut state = self.state.lock().unwrap();
        loop {
            while state.pending.is_empty() && !state.closed {
                state = self.changed.wait(state).unwrap();
            }
            if state.pending.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut state.pending);
            drop(state);
            let ok = shuttle::rand::thread_rng().gen_range(0..4) != 0;
            state = self.state.lock().unwrap();
            if ok {
                state.durable.extend(batch);
            } else {
                covered("a failed commit");
                state.poisoned = true;
            }
            state.last_ok = ok;
            state.commits_done += 1;
            self.changed.notify_all();
        }
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.changed.notify_all();
    }

    fn durable_seq_of(&self, order: usize) -> Option<u64> {
        let state = self.state.lock().unwrap();
        state
            .durable
            .iter()
            .find(|(_, o)| *o == order)
            .map(|(seq, _)| *seq)
    }
}

/// The slot and the order index as the shard's decisions change them.
#[derive(Default)]
struct Shared {
    available: u64,
    /// Orders taken and not undone: pending until published.
    index: HashMap<usize, Option<u64>>,
}

const STOCK: u64 = 3;
const CLIENTS: usize = 4;

/// `finish_batch`'s reply discipline. `reply_before_commit` is the broken variant.
fn reply_model(reply_before_commit: bool) {
    use shuttle::sync::mpsc::sync_channel;
    use shuttle::sync::{Arc, Condvar, Mutex};
    use tokio::sync::oneshot;

    let journal = Arc::new(Journal {
        state: Mutex::new(JournalState {
            next_seq: 1,
            ..JournalState::default()
        }),
        changed: Condvar::new(),
    });
    let shared = Arc::new(Mutex::new(Shared {
        available: STOCK,
        index: HashMap::new(),
    }));
    let leader = {
        let journal = journal.clone();
        shuttle::thread::spawn(move || journal.leader())
    };
    let (mailbox, commands) = sync_channel::<(usize, oneshot::Sender<Outcome>)>(CLIENTS);
    let shard = {
        let journal = journal.clone();
        let shared = shared.clone();
        shuttle::thread::spawn(move || {
            // One batch per turn: what arrived (up to 2), as `run` takes it.
            while let Ok(first) = commands.recv() {
                let mut batch = vec![first];
                if let Ok(more) = commands.try_recv() {
                    covered("a batch of two orders");
                    batch.push(more);
                }
                // Decide: take stock at once; sold out is answered at once.
                let mut taken = Vec::new();
                let mut deferred = Vec::new();
                for (order, reply) in batch {
                    let mut shared = shared.lock().unwrap();
                    if shared.available == 0 {
                        covered("sold out");
                        let _ = reply.send(Outcome::SoldOut);
                        continue;
                    }
                    shared.available -= 1;
                    shared.index.insert(order, None);
                    taken.push(order);
                    deferred.push((order, reply));
                }
                if taken.is_empty() {
                    continue;
                }
                let committed = match journal.append(&taken) {
                    Some((first, ticket)) => {
                        if reply_before_commit {
                            // Broken: the reply runs ahead of the commit (right seq, though).
                            for (i, (_, reply)) in deferred.drain(..).enumerate() {
                                let _ = reply.send(Outcome::Accepted {
                                    seq: first + i as u64,
                                });
                            }
                        }
                        journal.commit(ticket).then_some(first)
                    }
                    None => None,
                };
                match committed {
                    Some(first) => {
                        let mut shared = shared.lock().unwrap();
                        for (i, order) in taken.iter().enumerate() {
                            shared.index.insert(*order, Some(first + i as u64));
                        }
                        drop(shared);
                        for (i, (_, reply)) in deferred.into_iter().enumerate() {
                            let _ = reply.send(Outcome::Accepted {
                                seq: first + i as u64,
                            });
                        }
                    }
                    None => {
                        let mut shared = shared.lock().unwrap();
                        covered("a batch undone");
                        for order in taken.iter().rev() {
                            shared.available += 1;
                            shared.index.remove(order);
                        }
                        drop(shared);
                        for (_, reply) in deferred {
                            let _ = reply.send(Outcome::Unavailable);
                        }
                    }
                }
            }
        })
    };
    let mut clients = Vec::new();
    for order in 0..CLIENTS {
        let mailbox = mailbox.clone();
        let journal = journal.clone();
        clients.push(shuttle::thread::spawn(move || {
            let (reply, answer) = oneshot::channel();
            mailbox.send((order, reply)).unwrap();
            let outcome = shuttle::future::block_on(answer).expect("the shard answers");
            if let Outcome::Accepted { seq } = outcome {
                // Durable at that seq the moment the reply arrives.
                assert_eq!(
                    journal.durable_seq_of(order),
                    Some(seq),
                    "order {order} answered accepted before it was durable"
                );
            }
            (order, outcome)
        }));
    }
    drop(mailbox);
    let outcomes: Vec<(usize, Outcome)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    shard.join().unwrap();
    journal.close();
    leader.join().unwrap();

    let shared = shared.lock().unwrap();
    let mut accepted = 0;
    for (order, outcome) in &outcomes {
        let durable = journal.durable_seq_of(*order);
        match outcome {
            Outcome::Accepted { seq } => {
                accepted += 1;
                assert_eq!(durable, Some(*seq), "accepted order {order} not durable");
                assert_eq!(shared.index.get(order), Some(&Some(*seq)));
            }
            Outcome::Unavailable | Outcome::SoldOut => {
                assert_eq!(durable, None, "refused order {order} is durable");
                assert!(
                    !shared.index.contains_key(order),
                    "refused order {order} holds stock"
                );
            }
        }
    }
    assert_eq!(shared.available, STOCK - accepted);
}

#[test]
fn replies_are_sent_only_for_durable_orders() {
    explore(|| reply_model(false), 1500, 500);
    assert_covered(&[
        "a failed commit",
        "a batch undone",
        "sold out",
        "a batch of two orders",
    ]);
}

#[test]
#[should_panic(expected = "before it was durable")]
fn reply_model_catches_a_reply_sent_before_the_commit() {
    explore(|| reply_model(true), 1500, 500);
}
