//! RAM cost per accepted order of the two tables that grow with every order: the shared
//! order index ([`OrderIndex`]: order key -> a 32-byte [`OrderEntry`] holding the idempotency
//! fingerprint and first seq, the order's state and the seq of its latest record, its slot,
//! quantity and purchase key) and the per-shard purchase-limit counts ([`PurchaseCounts`]).
//! Everything else the engine keeps per order is either bounded by the payment timeout (the
//! shards' payment timers, measured by `cargo bench --bench lifecycle`) or fixed-size (slots,
//! buffers), so these two decide how many orders a sale can take before memory runs out, and
//! neither is ever pruned while the process runs.
//!
//! For 1,000,000 orders (distinct order ids, distinct buyers) it inserts, as the engine
//! does, each order into the order index (`check_or_insert`, then `commit_accepted` as the
//! batch's commit does) and into the purchase counts of the shard that owns the order's SKU
//! (`add`), and reports for each table:
//! - live heap bytes (a counting global allocator around `System`: bytes requested and not
//!   yet freed, so allocator slack is not included), and the peak while the table grew
//!   (a resize holds the old and the new buckets at once);
//! - the table's own `allocated_bytes()` estimate;
//! - the change of the process's resident set (`/proc/self/statm`), which includes what the
//!   allocator keeps around.
//!
//! Two catalogue shapes: one SKU (every count lands in one shard's table) and 100 SKUs
//! (slots 0..99, spread over the shards by `slot % shards`, as the engine does). The order
//! index is keyed by order id alone, so it is the same in both. The shard count is the
//! engine's default (one per core) unless `--shards N` is given. The engine pre-sizes both
//! tables for `inventory.orders_expected` (default 1M) so they never rehash mid-sale; the
//! growing tables (`new()`) are measured too, since an event can outgrow its estimate.
//!
//! The 64 bytes per order printed beside the total is the target set for the two tables when
//! the index held a 16-byte dedup value per order; with the 32-byte order entry the index
//! alone costs 47 to 94 bytes per order (see `src/inventory/order_index.rs`), so the output
//! says how far over it the total is. Both tables cost the most per order just after they
//! double (when `orders` passes 7/8 of a power of two), so the last section prints the cost
//! at ten points on the way to `orders`; pass `--orders` to look at another point of the
//! cycle (e.g. `--orders 930000`, just past a doubling).
//!
//! Run: `cargo run --release --example order_memory [-- --shards N] [--orders N]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use stampede::inventory::{
    AcceptedOrder, DedupCheck, KeyHasher, OrderEntry, OrderIndex, PurchaseCounts, PurchaseKey,
};
use stampede::order::{OrderStatus, Payment};

/// `System`, counting the bytes currently allocated and the highest that count reached.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counters are atomics and
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract (non-zero size).
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `realloc`'s
        // contract for `new_size`.
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        new_ptr
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Restarts the peak count from what is live now.
fn reset_peak() -> usize {
    let live = live_bytes();
    PEAK.store(live, Ordering::Relaxed);
    live
}

fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from `/proc/self/statm` (second field, in pages).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: `sysconf` only reads a system constant; `_SC_PAGESIZE` is a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).expect("page size is positive")
}

struct Measured {
    live: usize,
    peak: usize,
    estimate: usize,
    rss: isize,
}

fn per_order(bytes: usize, orders: usize) -> f64 {
    bytes as f64 / orders as f64
}

fn print_row(table: &str, m: &Measured, orders: usize) {
    println!(
        "  {table:<34} live {:>11} B = {:>6.2} B/order | peak {:>6.2} B/order | \
         allocated_bytes() {:>6.2} B/order | RSS delta {:>6.2} B/order",
        m.live,
        per_order(m.live, orders),
        per_order(m.peak, orders),
        per_order(m.estimate, orders),
        m.rss as f64 / orders as f64,
    );
}

/// Runs `insert` and measures what it added to the heap and the resident set.
fn measure(insert: impl FnOnce() -> usize) -> Measured {
    let rss_before = rss_bytes();
    let before = reset_peak();
    let estimate = insert();
    Measured {
        live: live_bytes() - before,
        peak: peak_bytes() - before,
        estimate,
        rss: rss_bytes() as isize - rss_before as isize,
    }
}

struct Args {
    orders: usize,
    shards: usize,
}

fn args() -> Args {
    let mut parsed = Args {
        orders: 1_000_000,
        shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a positive integer"));
        match flag.as_str() {
            "--orders" => parsed.orders = value,
            "--shards" => parsed.shards = value.max(1),
            other => panic!("unknown flag {other}; use --orders N and --shards N"),
        }
    }
    parsed
}

/// Inserts orders `from..to` (distinct ids and buyers) into `index` as a shard does: check
/// (a pending entry), then the batch's commit (seq and first state). Ids are formatted into
/// reused buffers, so nothing else stays on the heap.
fn fill_index(index: &OrderIndex, hasher: &KeyHasher, from: usize, to: usize) {
    let mut order_id = String::with_capacity(64);
    let mut user_id = String::with_capacity(64);
    for n in from..to {
        order_id.clear();
        user_id.clear();
        write!(order_id, "ord-2024-11-11-{n:010}").expect("write to String");
        write!(user_id, "user-{n:010}").expect("write to String");
        let key = hasher.order_key(&order_id);
        let fingerprint =
            hasher.content_fingerprint(&user_id, "SKU-000", 1, Payment::Prepaid, None);
        assert_eq!(index.check_or_insert(key, fingerprint), DedupCheck::New);
        index.commit_accepted(
            key,
            AcceptedOrder {
                seq: n as u64 + 1,
                status: OrderStatus::PendingPayment,
                purchase_key: PurchaseKey(n as u64),
                slot_index: 0,
                qty: 1,
            },
        );
    }
}

/// Adds one unit for each buyer of orders `from..to` to the counts of the shard that owns
/// the order's SKU (orders go round-robin over `skus`, SKU `i` in slot `i`).
fn fill_purchases(
    shards: &mut [PurchaseCounts],
    hasher: &KeyHasher,
    from: usize,
    to: usize,
    skus: &[String],
) {
    let mut user_id = String::with_capacity(64);
    for n in from..to {
        user_id.clear();
        write!(user_id, "user-{n:010}").expect("write to String");
        let slot = n % skus.len();
        let shard = stampede::shard::shard_of(slot as u32, shards.len());
        shards[shard].add(hasher.purchase_key(&user_id, &skus[slot]), 1);
    }
}

fn main() {
    let Args { orders, shards } = args();
    let hasher = KeyHasher::with_keys(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
    println!(
        "{orders} orders (distinct order ids, distinct buyers), {shards} shards, \
         counting allocator over System"
    );
    println!(
        "order index: DashMap<u64, OrderEntry>, {} B per entry ({} B per bucket + 1 control \
         byte); purchase counts: packed 12-byte entries",
        std::mem::size_of::<OrderEntry>(),
        std::mem::size_of::<(u64, OrderEntry)>(),
    );

    for sku_count in [1usize, 100] {
        let skus: Vec<String> = (0..sku_count).map(|i| format!("SKU-{i:03}")).collect();
        println!("\n{sku_count} SKU(s):");

        let mut index = None;
        let order_index = measure(|| {
            let built = OrderIndex::new();
            fill_index(&built, &hasher, 0, orders);
            let estimate = built.allocated_bytes();
            assert_eq!(built.len(), orders);
            index = Some(built);
            estimate
        });
        print_row("OrderIndex::new()", &order_index, orders);

        let mut counts = None;
        let purchases = measure(|| {
            let mut tables: Vec<PurchaseCounts> =
                (0..shards).map(|_| PurchaseCounts::new()).collect();
            fill_purchases(&mut tables, &hasher, 0, orders, &skus);
            assert_eq!(
                tables.iter().map(PurchaseCounts::len).sum::<usize>(),
                orders
            );
            let estimate = tables.iter().map(PurchaseCounts::allocated_bytes).sum();
            counts = Some(tables);
            estimate
        });
        let used = counts
            .as_ref()
            .map_or(0, |tables| tables.iter().filter(|t| !t.is_empty()).count());
        print_row(
            &format!("PurchaseCounts ({used} of {shards} shards)"),
            &purchases,
            orders,
        );

        let total = Measured {
            live: order_index.live + purchases.live,
            peak: (order_index.live + purchases.peak).max(order_index.peak),
            estimate: order_index.estimate + purchases.estimate,
            rss: order_index.rss + purchases.rss,
        };
        print_row("total", &total, orders);
        let live = per_order(total.live, orders);
        if live <= 64.0 {
            println!("  -> {live:.2} B/order live: within the 64 B/order target");
        } else {
            println!(
                "  -> {live:.2} B/order live: OVER the 64 B/order target (set for the 16-byte \
                 dedup value) by {:.2}",
                live - 64.0
            );
        }

        // Free both before the next variant so its RSS delta starts from the same place.
        drop(index);
        drop(counts);
    }

    println!(
        "\nPre-sized index, as the engine builds it (inventory.orders_expected = 1M by default):"
    );
    let mut kept = None;
    let presized = measure(|| {
        let built = OrderIndex::with_capacity(orders);
        fill_index(&built, &hasher, 0, orders);
        let estimate = built.allocated_bytes();
        kept = Some(built);
        estimate
    });
    print_row(
        &format!("OrderIndex::with_capacity({orders})"),
        &presized,
        orders,
    );
    drop(kept);

    println!(
        "\nDoubling cycle, 1 SKU: live B/order of both tables together after n orders \
         (a table doubles when it passes 7/8 of a power of two buckets)"
    );
    let index = OrderIndex::new();
    let skus = ["SKU-000".to_owned()];
    let mut counts = [PurchaseCounts::new()];
    let base = live_bytes();
    let step = (orders / 10).max(1);
    let mut done = 0;
    let mut line = String::new();
    for checkpoint in (step..=orders).step_by(step) {
        fill_index(&index, &hasher, done, checkpoint);
        fill_purchases(&mut counts, &hasher, done, checkpoint, &skus);
        done = checkpoint;
        write!(
            line,
            " {}k: {:.1}",
            checkpoint / 1000,
            per_order(live_bytes() - base, checkpoint)
        )
        .expect("write to String");
    }
    println!(" {line}");
}
