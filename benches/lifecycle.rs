//! The order lifecycle: actions through a running engine, and the payment timers.
//!
//! What it measures:
//! - `transitions_{none,always}/{pay,cancel}`: actions per second through the shard that owns
//!   the orders. An in-process engine ([`Engine::start`], a config built as the tests build
//!   it, in a temporary directory; 2 shards, one SKU, so every order and action lands on one
//!   shard) takes prepaid orders (placed outside the timing, 256 in flight), then 64 tokio
//!   tasks drive `pay` (or `cancel`) on them with [`Engine::order_action`], 64 actions in
//!   flight: lookup in the order index, the shard's mailbox, [`transition`], the stock
//!   effect, the journal frame, group commit, the index update, the reply. One iteration is
//!   one action (throughput in elements); each action is on an order placed for it, so every
//!   one is a real transition (`pending_payment` -> `paid` / `cancelled`), and the outcome is
//!   checked. Journal fsync `none` (the disk does not dominate) and `always` (each reply
//!   waits for the `fdatasync` of its batch, shared by the actions in flight). Each bench
//!   starts its own engine and shuts it down (journal and directory removed) at its end; the
//!   orders placed for it (warm-up and samples, ~2M with `none` on a 2-core machine) stay in
//!   its order index, which outgrows its default pre-sizing of 1M during the placing.
//! - `timers/push_pop_at_1m`: one [`TimerHeap::push`] + one [`TimerHeap::pop_due`] on a
//!   heap of 1,000,000 pending timers, as a shard does in a steady state: a new order's timer
//!   (due later than every other) goes in and the earliest comes out, so the heap stays at
//!   1M. The timers are built (order id boxed) and the popped ones dropped outside the
//!   timing: this is the heap's own cost.
//! - `timers/pop_all_1m`: popping all 1,000,000 due timers, earliest first, out of a full
//!   heap (a shard catching up after a long stall, or at start-up with every deadline
//!   passed). One iteration is the whole heap (1M elements); divide the time by 10^6 for the
//!   cost per timer. The heap is built and the popped timers dropped outside the timing.
//!
//! The timer heaps are filled as a one-SKU sale fills them: 1M orders accepted over 100 s
//! (10 per millisecond, so due times tie and break ties on the order key), 900 s to pay,
//! order ids of 12 bytes (`ord-00000001`). Before the timer benches the run prints the heap
//! memory of 1M pending timers, per timer: the heap's buffer (40-byte entries, capacity
//! doubled as it grew) plus the boxed order id, both as requested from the allocator and as
//! the allocator's usable size (mimalloc rounds 12 bytes up to its 16-byte size class).
//!
//! The journal directory is `std::env::temp_dir()`, or `$STAMPEDE_BENCH_DIR` when set: point
//! it at the file system the journal will live on, since `always` measures that device.
//! The allocator is mimalloc, as in the `stampede` binary.
//!
//! Run: `cargo bench --bench lifecycle` (about a minute after the build; pass a filter such
//! as `timers` or `transitions_none` to run a part; the timer memory is printed either way).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use stampede::config::{Config, Overrides};
use stampede::engine::{ActionRequest, Engine};
use stampede::inventory::OrderKey;
use stampede::journal::OrderAccepted;
use stampede::order::{Action, OrderStatus, Payment};
use stampede::shard::{
    ActionOutcome, OrderCommand, OrderOutcome, PaymentTimer, SkuUpdate, TimerHeap,
};

/// mimalloc, counting live bytes (requested and usable) while [`COUNTING`] is on. The count
/// is on only while the timer heap's memory is measured, with nothing else running; the
/// rest of the run pays one relaxed load per allocation.
struct CountingMiMalloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static USABLE: AtomicIsize = AtomicIsize::new(0);

unsafe extern "C" {
    /// mimalloc's usable size of a block it allocated (part of its C API; the `mimalloc`
    /// crate exposes it only with its `extended` feature).
    fn mi_usable_size(ptr: *const std::ffi::c_void) -> usize;
}

fn count(ptr: *mut u8, requested: isize, sign: isize) {
    if COUNTING.load(Ordering::Relaxed) && !ptr.is_null() {
        // SAFETY: `ptr` is a live block from mimalloc (just allocated, or about to be freed).
        let usable = unsafe { mi_usable_size(ptr.cast()) } as isize;
        REQUESTED.fetch_add(sign * requested, Ordering::Relaxed);
        USABLE.fetch_add(sign * usable, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `MiMalloc`; the counters are atomics
// and never allocate.
unsafe impl GlobalAlloc for CountingMiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let ptr = unsafe { mimalloc::MiMalloc.alloc(layout) };
        count(ptr, layout.size() as isize, 1);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        let ptr = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        count(ptr, layout.size() as isize, 1);
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(ptr, layout.size() as isize, -1);
        // SAFETY: `ptr` came from this allocator, i.e. from `MiMalloc`, with this `layout`.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(ptr, layout.size() as isize, -1);
        // SAFETY: `ptr` came from `MiMalloc` with `layout`; the caller upholds `realloc`'s
        // contract for `new_size`.
        let new_ptr = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if new_ptr.is_null() {
            // The old block is still there.
            count(ptr, layout.size() as isize, 1);
        } else {
            count(new_ptr, new_size as isize, 1);
        }
        new_ptr
    }
}

#[global_allocator]
static GLOBAL: CountingMiMalloc = CountingMiMalloc;

const SKU: &str = "SKU-LIFECYCLE";
/// Actions (and order placements) in flight at once.
const IN_FLIGHT: usize = 64;
/// Orders in flight while placing them, outside the timing: enough for full batches.
const PLACING_IN_FLIGHT: usize = 256;
/// Long enough that no reminder or expiry fires during a run.
const PAYMENT_TIMEOUT_S: u32 = 24 * 3600;
const ADMIN_TOKEN: &str = "lifecycle-bench-token";

const TIMERS: u64 = 1_000_000;
/// Orders accepted per millisecond while the timer heap fills (1M over 100 s).
const ORDERS_PER_MS: u64 = 10;
const TIMER_ACCEPTED_MS: u64 = 1_700_000_000_000;
const TIMER_TIMEOUT_S: u32 = 900;
/// Timers built ahead (outside the timing) per chunk of `push_pop_at_1m`.
const TIMER_CHUNK: u64 = 16_384;

fn bench_dir() -> PathBuf {
    std::env::var_os("STAMPEDE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A running engine in a temporary directory, with one SKU of endless stock.
struct Running {
    runtime: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    /// Orders placed so far: the next order id.
    placed: u64,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(fsync: &str) -> Self {
        let dir = tempfile::tempdir_in(bench_dir()).expect("temporary data directory");
        let overrides = Overrides {
            config_file: None,
            listen: None,
            data_dir: Some(dir.path().join("data")),
        };
        let config = Config::load_with_env(&overrides, |name| match name {
            "STAMPEDE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
            "STAMPEDE_JOURNAL_FSYNC" => Some(fsync.into()),
            "STAMPEDE_SHARDS" => Some("2".into()),
            _ => None,
        })
        .expect("bench config is valid");
        // Two workers, as on the 2-core machine the figures come from.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (engine, _report) = Engine::start(&config).expect("engine starts");
        runtime.block_on(async {
            let update = SkuUpdate {
                stock: Some(stampede::limits::STOCK_MAX),
                per_user_limit: Some(0),
                max_per_order: Some(10),
                payment_timeout_s: Some(PAYMENT_TIMEOUT_S),
            };
            engine.put_sku(SKU, update).await.expect("sku created");
        });
        Self {
            runtime,
            engine,
            placed: 0,
            _dir: dir,
        }
    }

    /// Places `count` new prepaid orders (each `pending_payment`) and returns their ids.
    fn place(&mut self, count: u64) -> Vec<String> {
        let ids: Vec<String> = (self.placed..self.placed + count)
            .map(|n| format!("ord-{n:010}"))
            .collect();
        self.placed += count;
        let engine = &self.engine;
        let slot_index = engine.slot_of(SKU).expect("sku exists");
        let chunks = split(ids.clone(), PLACING_IN_FLIGHT);
        self.runtime.block_on(async {
            let tasks: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        for order_id in chunk {
                            let user_id = format!("user-{order_id}");
                            let keys = &engine.keys();
                            let (reply, outcome) = tokio::sync::oneshot::channel();
                            let command = OrderCommand {
                                slot_index,
                                key: keys.order_key(&order_id),
                                fingerprint: keys.content_fingerprint(
                                    &user_id,
                                    SKU,
                                    1,
                                    Payment::Prepaid,
                                    None,
                                ),
                                purchase_key: keys.purchase_key(&user_id, SKU),
                                review: Default::default(),
                                order: OrderAccepted {
                                    order_id,
                                    user_id,
                                    sku: SKU.into(),
                                    qty: 1,
                                    payment: Payment::Prepaid,
                                    address: None,
                                },
                                reply,
                            };
                            engine.submit_order(command).expect("mailbox has room");
                            match outcome.await.expect("shard replies") {
                                OrderOutcome::Accepted { .. } => {}
                                other => panic!("order not accepted: {other:?}"),
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("placing task");
            }
        });
        ids
    }

    /// Drives `action` on every order of `ids` with [`IN_FLIGHT`] tasks; returns the time
    /// from the first request to the last reply.
    fn drive(&self, ids: Vec<String>, action: Action, expect: OrderStatus) -> Duration {
        let requests = split(
            ids.into_iter()
                .map(|order_id| ActionRequest {
                    order_id,
                    action,
                    reason: None,
                    address: None,
                    restock: false,
                    exchange_sku: None,
                    idempotency_key: None,
                    shipment: None,
                })
                .collect(),
            IN_FLIGHT,
        );
        let engine = &self.engine;
        self.runtime.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = requests
                .into_iter()
                .map(|chunk| {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        for request in chunk {
                            match engine.order_action(request).await {
                                Ok(ActionOutcome::Done { status, .. }) if status == expect => {}
                                other => panic!("{action:?} not done: {other:?}"),
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("action task");
            }
            start.elapsed()
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.engine.shutdown().expect("clean shutdown");
    }
}

/// Deals `items` round-robin into `parts` lists.
fn split<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let mut lists: Vec<Vec<T>> = (0..parts)
        .map(|_| Vec::with_capacity(items.len() / parts + 1))
        .collect();
    for (n, item) in items.into_iter().enumerate() {
        lists[n % parts].push(item);
    }
    lists.retain(|list| !list.is_empty());
    lists
}

fn transitions(c: &mut Criterion) {
    for (fsync, measurement_s) in [("none", 3), ("always", 3)] {
        let mut group = c.benchmark_group(format!("transitions_{fsync}"));
        group.throughput(Throughput::Elements(1));
        group.sampling_mode(SamplingMode::Flat);
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(measurement_s));
        for (name, action, expect) in [
            ("pay", Action::Pay, OrderStatus::Paid),
            ("cancel", Action::Cancel, OrderStatus::Cancelled),
        ] {
            let mut running = Running::start(fsync);
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let ids = running.place(iters);
                    running.drive(ids, action, expect)
                });
            });
            drop(running);
        }
        group.finish();
    }
}

/// The timer of the `n`th order of a sale that accepts [`ORDERS_PER_MS`] orders a
/// millisecond, with a 12-byte order id.
fn timer(n: u64) -> PaymentTimer {
    let order_id = format!("ord-{n:08}");
    PaymentTimer::for_order(
        OrderKey(splitmix(n)),
        &order_id,
        TIMER_ACCEPTED_MS + n / ORDERS_PER_MS,
        TIMER_TIMEOUT_S,
    )
}

/// A uniform 64-bit key for order `n`, as a SipHash output would be.
fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn full_heap() -> TimerHeap {
    let mut heap = TimerHeap::default();
    for n in 0..TIMERS {
        heap.push(timer(n));
    }
    heap
}

/// Prints the heap memory of 1M pending timers, once.
fn print_timer_memory() {
    let requested = REQUESTED.load(Ordering::Relaxed);
    let usable = USABLE.load(Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    let heap = full_heap();
    COUNTING.store(false, Ordering::SeqCst);
    let requested = (REQUESTED.load(Ordering::Relaxed) - requested) as f64 / TIMERS as f64;
    let usable = (USABLE.load(Ordering::Relaxed) - usable) as f64 / TIMERS as f64;
    let entry = std::mem::size_of::<PaymentTimer>();
    println!(
        "timers: {} pending timers (12-byte order ids) hold {requested:.2} B per timer of heap \
         as requested ({usable:.2} B usable in mimalloc's size classes): a {entry}-byte entry \
         in the heap's buffer (capacity doubled while it grew) + the boxed id",
        heap.len()
    );
    drop(black_box(heap));
}

fn timers(c: &mut Criterion) {
    print_timer_memory();
    let mut group = c.benchmark_group("timers");

    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let mut heap = full_heap();
    let mut next = TIMERS;
    group.bench_function("push_pop_at_1m", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(TIMER_CHUNK);
                left -= chunk;
                let fresh: Vec<PaymentTimer> = (next..next + chunk).map(timer).collect();
                next += chunk;
                let mut popped = Vec::with_capacity(chunk as usize);
                let start = Instant::now();
                for timer in fresh {
                    let now = timer.due_ms;
                    heap.push(timer);
                    popped.push(heap.pop_due(now).expect("the earliest timer is due"));
                }
                elapsed += start.elapsed();
                drop(black_box(popped));
            }
            elapsed
        });
    });
    assert_eq!(heap.len() as u64, TIMERS);
    drop(heap);

    group.throughput(Throughput::Elements(TIMERS));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("pop_all_1m", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let mut heap = full_heap();
                let now = heap_last_due();
                let mut popped = Vec::with_capacity(TIMERS as usize);
                let start = Instant::now();
                while let Some(timer) = heap.pop_due(now) {
                    popped.push(timer);
                }
                elapsed += start.elapsed();
                assert_eq!(popped.len() as u64, TIMERS);
                drop(black_box(popped));
            }
            elapsed
        });
    });
    group.finish();
}

/// The due time of the last timer [`full_heap`] holds: every timer is due then.
fn heap_last_due() -> u64 {
    timer(TIMERS - 1).due_ms
}

criterion_group!(benches, timers, transitions);
criterion_main!(benches);
