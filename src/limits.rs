//! Every fixed capacity, size and timeout of the engine, each stated once with the failure
//! it prevents. Values that operators tune per event live in `config.rs` and are bounded
//! here (`*_MAX`); the `const` assertions at the bottom keep the limits consistent with one
//! another, so that a change to one that breaks another fails the build, not production.

use std::time::Duration;

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

/// Longest a shard sleeps before it reads the wall clock again, in ms. Payment deadlines are
/// wall-clock times (from the acceptance record, so they survive restarts), and the wait
/// until the next one is computed from the clock when the shard goes to sleep: after the
/// clock steps back an hour that wait is an hour too long. Capped, a clock step is noticed
/// within this long; the cost is one empty turn a second per shard holding timers.
pub const TIMER_SLEEP_MS_MAX: u64 = 1000;

/// Exchanges between their hold and their settle at once (the exchange gate's readers; more
/// wait for the gate, holding nothing). Each holds one unit and owes one settle to the SKU's
/// shard, sent on that shard's control lane (unbounded by type, never shed): this is the
/// bound of every lane together. Exchanges are after-sales actions, rare beside orders: a
/// thousand at once is far more than a sale sees, and a queued settle is ~24 bytes.
pub const EXCHANGES_IN_FLIGHT_MAX: usize = 1024;

/// A checkpoint is written only where the file system has room for it this many times over
/// (the file, and as much again left for the journal): on a nearly full disk a checkpoint
/// must not take the journal's last room, since the records are the data and a checkpoint
/// only a shortcut over them.
pub const CHECKPOINT_ROOM_FACTOR: u64 = 2;
/// Retention's back-off after a checkpoint it could not take (a full disk, too little room,
/// or a journal stopped for lack of room): it takes none for this long, doubled after each
/// further failure up to the cap, and reset by a success. Without it, every pass rewrote a
/// checkpoint as large as the room an operator had just freed, and the journal, stopped for
/// lack of that room, could not resume. Segments an older checkpoint covers are still
/// deleted meanwhile (that gives room back).
pub const CHECKPOINT_BACKOFF_MIN_MS: u64 = 10_000;
pub const CHECKPOINT_BACKOFF_MAX_MS: u64 = 10 * 60 * 1000;

/// Number of single-writer shards allowed. More shards than cores only adds hand-offs.
pub const SHARDS_MAX: usize = 256;

/// Inventory slots in the memory-mapped file (one per SKU, 128 bytes each): 8 MiB at the
/// default, all reserved on disk at start (a full disk is then a start-up error, not a
/// SIGBUS when a page is first touched). A PUT of one SKU too many is refused, not a resize.
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
/// invents group names from filling the directory (creating a group needs the consumer or
/// the admin token, so an anonymous client cannot reach the cap at all).
pub const CONSUMER_GROUPS_MAX: usize = 1024;

/// Random bytes of a bearer token the engine generates (`admin.token`, `consumer.token`),
/// written as hex: 192 bits, beyond guessing online.
pub const GENERATED_TOKEN_BYTES: usize = 24;

/// `GET /v1/journal?follow=true`: streams open at once, the chunks one stream may have
/// queued (each at most `FOLLOW_CHUNK_BYTES`), and the keep-alive newline's interval. A slow
/// follower holds at most 4 × 64 KiB here (plus the socket's buffer); the reader waits.
pub const FOLLOWERS_MAX: usize = 64;
pub const FOLLOW_QUEUE_CHUNKS: usize = 4;
pub const FOLLOW_CHUNK_BYTES: usize = 64 * 1024;
pub const FOLLOW_KEEPALIVE_S: u64 = 10;

/// `GET /v1/events` (the event console): streams open at once (each is an operator's page;
/// a handful per sale), the snapshot interval (the contract asks for at least one event a
/// second), the snapshots one stream may have queued (a slower page skips to the newest
/// rather than hold older ones), the SKUs one snapshot carries (the fastest sellers: a
/// snapshot of 65k SKUs twice a second would cost more than the page is worth), the
/// held orders it lists, and the ticks its latency and rate windows span (5 s).
pub const EVENT_STREAMS_MAX: usize = 16;
pub const EVENT_INTERVAL_MS: u64 = 500;
pub const EVENT_QUEUE_SNAPSHOTS: usize = 4;
pub const EVENT_SKUS_MAX: usize = 100;
pub const EVENT_HELD_MAX: usize = 100;
pub const EVENT_WINDOW_TICKS: usize = 10;
const _: () = assert!(EVENT_INTERVAL_MS <= 1000);

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

// Order review (`[review]`, `PUT /v1/review/rules`; see `order::review` for each rule's
// full-table behaviour).

/// Distinct normalised addresses the `address_shared` rule tracks: one hash and at most
/// `REVIEW_ADDRESS_BUYERS_MAX` buyer hashes each (~200 bytes at worst, ~200 MiB for the
/// whole table). Past it an order with a new address is held (fails closed): a ring that
/// floods the table with addresses must not slip through.
pub const REVIEW_ADDRESSES_MAX: usize = 1 << 20;
/// Highest `address_buyers_max`: the buyer list per address holds that many hashes, and a
/// household is a handful of buyers, not hundreds.
pub const REVIEW_ADDRESS_BUYERS_MAX: u32 = 16;
/// Clients (peer or forwarded addresses) the `client_burst` rule tracks: 128 bytes each
/// (60 one-second counters), ~32 MiB in all. Idle clients are swept when it is full; past it
/// a new client is not tracked (fails open: a sale has many honest clients).
pub const REVIEW_CLIENTS_MAX: usize = 1 << 18;
/// Highest `client_orders_per_min`: the per-second counters are u16.
pub const REVIEW_CLIENT_ORDERS_PER_MIN_MAX: u32 = 60_000;
/// Users on each of `review_users` and `deny_users`. The rule set is one journal record
/// (at most `RECORD_PAYLOAD_BYTES_MAX`), and both lists at their maximum of maximal ids fit it.
pub const REVIEW_USERS_MAX: usize = 24;
/// Held orders one `GET /v1/reviews` page returns at most (default 100), like a journal page.
pub const REVIEW_PAGE_MAX: usize = 1000;
/// Longest `review.timeout_s`: a held order's units are reserved until a reviewer acts, so
/// the wait is bounded like a payment timeout.
pub const REVIEW_TIMEOUT_S_MAX: u32 = PAYMENT_TIMEOUT_S_MAX;
/// Longest `orders.auto_complete_s`.
pub const AUTO_COMPLETE_S_MAX: u32 = 90 * 24 * 3600;
/// Bytes of a shipment's `carrier` and `tracking_no` each (contract: 1..=64).
pub const SHIPMENT_FIELD_BYTES_MAX: usize = 64;
/// Trusted proxy addresses (`http.trusted_proxies`): the load balancers of one site.
pub const TRUSTED_PROXIES_MAX: usize = 64;

// HTTP: connections, request heads, journal readers, readiness.

/// A group write (with its fsync) running this long means the disk is not keeping up or has
/// hung: `/readyz` says `journal_stalled` so load balancers move traffic away before clients
/// time out. Normal fsyncs take well under a millisecond to tens of milliseconds.
pub const JOURNAL_STALL: Duration = Duration::from_secs(2);
/// `GET /v1/journal` pages read at once (each on the blocking pool, up to a page of
/// `JOURNAL_PAGE_MAX` records); more are shed with 429. Fulfilment workers are few.
pub const JOURNAL_READERS_MAX: usize = 8;
/// Longest time a client may take to send its request headers (slowloris bound).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the kernel queues for accept (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;
/// Bytes hyper may buffer for one connection's request head (and its read buffer): a
/// request's headers past this are refused with 431, so a client cannot make the server hold
/// hyper's default ~400 KiB per connection. Browsers and load balancers send a few KiB.
pub const HEAD_BUFFER_BYTES: usize = 32 * 1024;
/// Open connections at once; past it new connections wait in the kernel's accept backlog.
/// Each costs a task and ~16 KiB of buffers, so 10k is ~160 MiB at worst.
pub const CONNECTIONS_MAX: usize = 10_000;

// Admission's queue-delay gate (the control law's gains stay in its module).

/// How often the probe measures the runtime's scheduling delay. Each sample is one timer
/// wake-up and one yield (a few µs of CPU); 200 a second is noise even on 2 cores.
pub const QUEUE_DELAY_PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// How often the shed probability is updated (RFC 8033's `T_UPDATE`): three samples.
pub const QUEUE_DELAY_UPDATE_INTERVAL: Duration = Duration::from_millis(15);
/// The largest share of new orders ever refused: the sale keeps moving whatever the load.
pub const QUEUE_DELAY_SHED_MAX: f64 = 0.95;
/// How long a queue may stand over half the target before anything is shed (RFC 8033's
/// `MAX_BURST` is 150 ms). The opening second of a flash sale is a burst by design; one that
/// the server works off within half a second is queued and served, never shed.
pub const QUEUE_DELAY_BURST_ALLOWANCE: Duration = Duration::from_millis(500);
/// `Retry-After` spread ceiling, seconds.
pub const QUEUE_DELAY_RETRY_AFTER_MAX_S: u32 = 10;

// Clients of the engine's HTTP API (stampede tail, stock reconcile, the example worker).

/// A group's offset is committed at least this often while records are handled.
pub const TAIL_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// ... or after this many records, if that comes first.
pub const TAIL_COMMIT_RECORDS: u64 = 1000;
/// Records asked for per `GET /v1/journal` page (the server caps a page at 10 000).
pub const TAIL_PAGE_RECORDS: usize = 1000;
/// How often an idle follower checks whether stdout's reader is gone and a commit is due.
pub const TAIL_IDLE_CHECK: Duration = Duration::from_millis(100);
/// Bound on connecting to the engine.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one request: its answer's head and whole body (a page is at most a few MiB).
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A follow stream that sent nothing, not even its keep-alive newline (every
/// `FOLLOW_KEEPALIVE_S`), for this long is taken as dead and reopened.
pub const FOLLOW_SILENCE_MAX: Duration = Duration::from_secs(3 * FOLLOW_KEEPALIVE_S);
/// Longest line accepted from a follow stream (a record is a few KiB at most).
pub const FOLLOW_LINE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Backoff between tries after a transient HTTP failure: first wait, longest wait, and how
/// many failures in a row end the run (about 25 s of retries while following, 3 s otherwise).
pub const CLIENT_RETRY_FIRST: Duration = Duration::from_millis(100);
pub const CLIENT_RETRY_WAIT_MAX: Duration = Duration::from_secs(5);
pub const CLIENT_RETRIES_FOLLOW: u32 = 10;
pub const CLIENT_RETRIES_ONCE: u32 = 5;

// stampede stock reconcile.

/// Largest page body read (10 000 SKUs are ~2 MiB).
pub const RECONCILE_PAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Tries per page when the engine sheds (429/503) or a connection fails, 500 ms apart.
pub const RECONCILE_TRIES: u32 = 3;
/// Largest expected-stock file read (a catalogue line is < 100 bytes).
pub const RECONCILE_EXPECTED_BYTES_MAX: u64 = 256 * 1024 * 1024;

// Cluster mode (src/cluster).

/// Longest node id (contract: 1..=32 bytes of `[A-Za-z0-9_-]`).
pub const NODE_ID_BYTES_MAX: usize = 32;
/// Most nodes in `cluster.nodes`: every node keeps a pooled connection to each other node and
/// a share of every SKU, and rendezvous hashing scores every node per request.
pub const CLUSTER_NODES_MAX: usize = 64;
/// Largest `cluster.lease_units`: a node that dies strands at most this many units per SKU
/// until it is reclaimed, so a block stays a small part of any real sale.
pub const LEASE_UNITS_MAX: u64 = 1_000_000;
/// How long a call to Redis may take (a grant with its `WAIT`, a stream append, a catalogue
/// read) before the node treats Redis as unreachable for that call.
pub const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections to the Redis Cluster for calls confirmed by `WAIT` (grants, give-backs, SKU
/// changes, stream appends): Redis blocks a connection for the whole `WAIT`, so this is how
/// many such calls of one node can be in flight at once.
pub const REDIS_CONFIRMED_CONNECTIONS: usize = 16;
/// How long `WAIT` gives a replica to confirm a grant; a grant no replica confirmed is not
/// sold from (a failover could hand the same units out again).
pub const REDIS_WAIT_REPLICA_MS: u64 = 1000;
/// How long an order that found its node's share empty waits for a new block from the global
/// stock before it is answered 503 with `Retry-After`.
pub const SHARE_TOP_UP_WAIT: Duration = Duration::from_secs(3);
/// How often a node reads the cluster's catalogue version (so a `PUT /v1/skus` on any node
/// reaches every node within the contract's 2 s) and publishes its per-SKU figures.
pub const CLUSTER_SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// A request forwarded to the node that owns its buyer (or asked of every node for an order
/// this one does not hold): the most it may take before the answer is 503 with `Retry-After`.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle keep-alive connections kept per peer node by the forwarder's pool.
pub const FORWARD_IDLE_PER_NODE: usize = 64;
/// Records published to the cluster's stream in one atomic script call (one Redis round trip
/// and one `WAIT` per batch).
pub const STREAM_BATCH_MAX: usize = 256;
/// Approximate length at which the cluster's stream is trimmed (`XADD MAXLEN ~`): Redis keeps
/// the stream in memory, so it is bounded; fulfilment workers that fall further behind than
/// this read the rest from the node's own journal (`GET /v1/journal`).
pub const STREAM_ENTRIES_MAX: u64 = 10_000_000;
/// Backoff of the background Redis loops (grants, stream, catalogue) after a failure.
pub const CLUSTER_RETRY_MIN: Duration = Duration::from_millis(100);
pub const CLUSTER_RETRY_MAX: Duration = Duration::from_secs(2);

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
// The review rule set is one record: both user lists of maximal ids, with rkyv's pointers.
const _: () =
    assert!(2 * REVIEW_USERS_MAX * (ORDER_ID_BYTES_MAX + 16) + 256 <= RECORD_PAYLOAD_BYTES_MAX);
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
const _: () = assert!(CHECKPOINT_BACKOFF_MIN_MS <= CHECKPOINT_BACKOFF_MAX_MS);
const _: () = assert!(STOCK_MAX < (1 << 53));
const _: () = assert!(JOURNAL_PAGE_DEFAULT <= JOURNAL_PAGE_MAX);
// One bulk's records for one shard are a single group write, and a group never spans two
// segment files: the largest bulk must fit the largest segment (a smaller configured segment
// is exceeded by at most that one group, as the writer documents).
const _: () = assert!((BULK_LINES_MAX * SKU_FRAME_BYTES_MAX) as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(BULK_LINES_MAX <= SKUS_DEFAULT as usize);
const _: () = assert!(BODY_BYTES_MAX <= BULK_BODY_BYTES_MAX);
