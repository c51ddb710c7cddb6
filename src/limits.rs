//! Every fixed capacity, size and timeout of the engine, each stated once with the failure
//! it prevents. Values that operators tune per event live in `config.rs` and are bounded
//! here (`*_MAX`); the `const` assertions at the bottom keep the limits consistent with one
//! another, so that a change to one that breaks another fails the build, not production.

/// Longest `order_id` and `user_id`, in bytes (contract). Bounds the journal record and the
/// work of hashing a key on the hot path.
pub const ORDER_ID_BYTES_MAX: usize = 64;
/// Longest `sku`, in bytes (contract). A SKU name fits its fixed inventory slot.
pub const SKU_BYTES_MAX: usize = 32;
/// Largest stored `address`, in bytes of raw JSON (contract: 1 KiB). Bounds a record.
pub const ADDRESS_BYTES_MAX: usize = 1024;

/// Default cap on a request body (contract: 16 KiB). A buyer's order is ~150 bytes; the cap
/// keeps a hostile client from making the server buffer megabytes per connection.
pub const BODY_BYTES_DEFAULT: usize = 16 * 1024;
/// Hard ceiling for `http.body_bytes_max`; bulk SKU loads have their own cap
/// ([`BULK_BODY_BYTES_MAX`]).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// `POST /v1/skus:bulk`: largest body, in bytes (4 MiB), read with its own cap instead of
/// `http.body_bytes_max` (413 `too_large` past it). A catalogue line is ~60-100 bytes, so this
/// is room for the line cap below; the body is held in memory once, with its report.
pub const BULK_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// `POST /v1/skus:bulk`: most SKU lines in one body (blank lines and a CSV header do not
/// count); more are 413 `too_large` before any line is applied. A bulk goes to each shard as
/// one command journaled in one append + commit: this bounds how long that shard's orders
/// wait behind it (~50k records encoded and one group write of ~5 MiB, tens of
/// milliseconds), the size of that group write (it must fit one segment), and the report
/// (~250 bytes a line, ~12 MiB). It also stays under `SKUS_DEFAULT`.
pub const BULK_LINES_MAX: usize = 50_000;
/// Upper bound of one `sku` journal frame (frame header, rkyv payload with a 32-byte name,
/// padding): 104 bytes with every field at its maximum (a unit test in `http::bulk` checks
/// it), rounded up. Used to check that a whole bulk fits a segment.
pub const SKU_FRAME_BYTES_MAX: usize = 160;

/// Largest journal record payload (rkyv bytes). An accepted order with every field at its
/// maximum is < 1.5 KiB; anything bigger on disk is damage, not data, and recovery says so.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 4 * 1024;

/// Default and bounds of a journal segment. Records never span segments, so a segment may
/// exceed the target by at most one group commit; the cap keeps a single file mappable.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Zeros kept written and synced ahead of the journal writer (policies that fsync), and the
/// size of one preallocation write. Overwriting existing blocks lets `fdatasync` skip the
/// file-size metadata commit; 8 MiB is ~60k orders of room, refilled 1 MiB at a time so the
/// segment lock is held only for one short write.
pub const PREALLOCATE_AHEAD_BYTES: u64 = 8 * 1024 * 1024;
pub const PREALLOCATE_CHUNK_BYTES: u64 = 1024 * 1024;

/// Commands a shard takes from its mailbox per batch (one journal append, one commit). Larger
/// batches amortise the fdatasync further but hold the replies of the first order longer.
pub const SHARD_BATCH_DEFAULT: usize = 256;
pub const SHARD_BATCH_MAX: usize = 4096;

/// Capacity of one shard's mailbox. A full mailbox sheds with 429 instead of queueing
/// without bound: at ~1 µs per order this is ~4 ms of backlog per shard by default, far
/// below a load balancer's timeout, so a shed client can retry elsewhere at once.
pub const SHARD_QUEUE_DEFAULT: usize = 4096;
pub const SHARD_QUEUE_MAX: usize = 1 << 20;

/// Tries, 1 ms apart, to queue a command that must not be shed (a SKU change, the steps of
/// an exchange) into a full mailbox: a second of patience, then 429.
pub const PATIENT_SEND_ATTEMPTS: usize = 1000;

/// Number of single-writer shards allowed. More shards than cores only adds hand-offs.
pub const SHARDS_MAX: usize = 256;

/// Inventory slots in the memory-mapped file (one per SKU, 128 bytes each): 8 MiB at the
/// default, sparse on disk until used. A PUT of one SKU too many is refused, not a resize.
pub const SKUS_DEFAULT: u32 = 65_536;
pub const SKUS_MAX: u32 = 1 << 22;

/// Ceiling for `inventory.orders_expected`, the size the hot tables are built with: 10^8
/// orders is ~11 GiB of tables (~113 B each), past what one engine of this design should
/// be asked to hold.
pub const ORDERS_EXPECTED_MAX: usize = 100_000_000;

/// Largest stock of one SKU. Keeps `sold + reserved + available` far from u64 overflow and
/// inside what a JSON client parses exactly (2^53).
pub const STOCK_MAX: u64 = 1 << 40;
/// Largest `max_per_order` and `per_user_limit`: the purchase counter is a u32.
pub const PER_ORDER_MAX: u32 = 1_000_000;
/// Largest `payment_timeout_s` (30 days); bounds timer horizons for the lifecycle.
pub const PAYMENT_TIMEOUT_S_MAX: u32 = 30 * 24 * 3600;

/// `GET /v1/journal`: records per response when the client gives no `limit`, and the cap.
/// A client pages on with the last `seq`, so the cap bounds one response's memory.
pub const JOURNAL_PAGE_DEFAULT: usize = 100;
pub const JOURNAL_PAGE_MAX: usize = 10_000;

/// Consumer groups with a committed offset. Each is a file and a row of lag; a few per
/// warehouse process is the norm, so a thousand is room, and the cap stops a client that
/// invents group names from filling the directory.
pub const CONSUMER_GROUPS_MAX: usize = 1024;

/// `GET /v1/journal?follow=true`: streams open at once, the chunks one stream may have
/// queued (each at most `FOLLOW_CHUNK_BYTES`), and the keep-alive newline's interval. A slow
/// follower holds at most 4 × 64 KiB here (plus the socket's buffer); the reader waits.
pub const FOLLOWERS_MAX: usize = 64;
pub const FOLLOW_QUEUE_CHUNKS: usize = 4;
pub const FOLLOW_CHUNK_BYTES: usize = 64 * 1024;
pub const FOLLOW_KEEPALIVE_S: u64 = 10;

/// `admission.queue_delay_target_ms` ceiling: past 10 s of queueing a load balancer or a
/// buyer has long given up, so a larger target means the gate is off by mistake (use 0).
pub const QUEUE_DELAY_TARGET_MS_MAX: u64 = 10_000;

/// Order and action requests admitted and not yet answered (`admission.in_flight_max`).
/// Each pins a task, a decoded body and a reply channel (~2 KiB); 16k is ~32 MiB and far
/// more than the shards' mailboxes hold, so it binds only when requests pile up elsewhere
/// (slow bodies, a stalled disk). The ceiling keeps a typo from disabling the bound.
pub const IN_FLIGHT_DEFAULT: usize = 16_384;
pub const IN_FLIGHT_MAX: usize = 1 << 20;
/// Keys the rate limiters track at once (`admission.rate_table_max`): ~64 bytes each, so the
/// default million is ~64 MiB at worst; past it new keys go untracked (fail open).
pub const RATE_TABLE_MAX: usize = 10_000_000;

/// SKUs whose stock `/metrics` exports (configured or top): each is 4 series, and a scrape
/// of thousands of series per SKU list would cost more than the sale it watches.
pub const METRICS_SKUS_MAX: usize = 1000;

/// How long a draining server waits for open requests before it stops serving them. The
/// orders already admitted are still journaled; only idle or slow connections are cut.
pub const DRAIN_TIMEOUT_MS: u64 = 10_000;

/// `Retry-After` (seconds) on a shed request: one second is the smallest value the header
/// can say, and a mailbox drains in milliseconds.
pub const RETRY_AFTER_S: u32 = 1;

/// Journal records one order may have (acceptance, payment, the fulfilment stages, a few
/// after-sales steps). `modify`, `reship` and `exchange` can repeat; the cap bounds the
/// history `GET /v1/orders/{id}` reads back from the journal. A normal life is ~14 records.
pub const RECORDS_PER_ORDER_MAX: u32 = 64;
/// Records a life needs without any repeatable action: acceptance, reminder, payment, the
/// seven stages, deliver, complete, and an ending (11 + 3, rounded up). Repeatable actions
/// are refused once an order has `RECORDS_PER_ORDER_MAX - LIFE_RECORDS_RESERVED` records, so
/// the cap never stops an order from being delivered, returned, refunded or cancelled.
pub const LIFE_RECORDS_RESERVED: u32 = 16;

/// Longest `reason` text an action may carry, in bytes: a note, not a document.
pub const REASON_BYTES_MAX: usize = 256;

/// Longest `Idempotency-Key` header of an action, in bytes (contract: 1..=64 id
/// characters). It is journaled with the action, so it bounds that record.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 64;

/// Highest journal sequence number the order index can store (40 bits: a trillion records).
pub const SEQ_MAX: u64 = (1 << 40) - 1;

// Tables that grow with traffic, and what bounds them:
// - the order index holds one entry per *accepted* order (rejections leave nothing behind).
//   An order takes at least one unit when accepted, and a unit comes back only through a
//   cancel, refund, expiry or restocked return (each a journal record), so the index holds
//   at most the units of stock loaded plus the units given back. That is a bound an operator
//   sets per event (the catalogue), not a constant: the table is sized by
//   `inventory.orders_expected` and costs one 41-byte bucket per order at ≤ 7/8 load (see
//   BENCHMARKS.md for the measured bytes per order);
// - the payment timers hold at most one entry per prepaid or escrow order accepted within
//   the longest `payment_timeout_s` (an entry leaves when it comes due, paid or not);
// - the purchase counts hold at most one entry per accepted order (~27 bytes per order);
// - an order's history read (`GET /v1/orders/{id}`) is bounded by `RECORDS_PER_ORDER_MAX`;
// - the journal's pending buffer holds at most `shards * batch_max` frames of at most
//   `RECORD_PAYLOAD_BYTES_MAX + 24` bytes (one batch per shard waits for each commit), or,
//   while a bulk SKU load is committing, up to `BULK_LINES_MAX` SKU frames more;
// - the catalogue holds at most `inventory.skus_max` SKUs (the slot file's size);
// - the idempotency-key table holds one entry per journaled action that carried a key
//   (refused and unkeyed actions leave nothing), so at most `RECORDS_PER_ORDER_MAX - 1` per
//   order: one 40-byte bucket and a control byte per keyed action (≥ 47 bytes at the table's
//   7/8 maximum load, up to twice that just after it grows), nothing for orders whose actions
//   carry no key.

const _: () = assert!(LIFE_RECORDS_RESERVED < RECORDS_PER_ORDER_MAX);
const _: () = assert!(BODY_BYTES_DEFAULT <= BODY_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(PREALLOCATE_CHUNK_BYTES <= PREALLOCATE_AHEAD_BYTES);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
// A record with every string field at its maximum must fit the record bound with room for
// rkyv's relative pointers and padding (well under 2 bytes per field).
const _: () = assert!(
    2 * ORDER_ID_BYTES_MAX + SKU_BYTES_MAX + ADDRESS_BYTES_MAX + 256 <= RECORD_PAYLOAD_BYTES_MAX
);
// An action record with every string at its maximum (order id, reason, address, exchange
// SKU, idempotency key) fits the record bound the same way.
const _: () = assert!(
    ORDER_ID_BYTES_MAX
        + REASON_BYTES_MAX
        + ADDRESS_BYTES_MAX
        + SKU_BYTES_MAX
        + IDEMPOTENCY_KEY_BYTES_MAX
        + 256
        <= RECORD_PAYLOAD_BYTES_MAX
);
// A segment must hold at least one whole group commit of maximal records.
const _: () =
    assert!((SHARD_BATCH_DEFAULT * (RECORD_PAYLOAD_BYTES_MAX + 24)) as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(SHARD_BATCH_DEFAULT <= SHARD_BATCH_MAX);
const _: () = assert!(SHARD_QUEUE_DEFAULT <= SHARD_QUEUE_MAX);
const _: () = assert!(SKUS_DEFAULT <= SKUS_MAX);
const _: () = assert!(STOCK_MAX < (1 << 53));
const _: () = assert!(JOURNAL_PAGE_DEFAULT <= JOURNAL_PAGE_MAX);
// One bulk's records for one shard are a single group write, and a group never spans two
// segment files: the largest bulk must fit the largest segment (a smaller configured segment
// is exceeded by at most that one group, as the writer documents).
const _: () = assert!((BULK_LINES_MAX * SKU_FRAME_BYTES_MAX) as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(BULK_LINES_MAX <= SKUS_DEFAULT as usize);
const _: () = assert!(BODY_BYTES_MAX <= BULK_BODY_BYTES_MAX);
