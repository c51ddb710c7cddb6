//! # Stampede
//!
//! A flash-sale order ingestion engine: it takes every order over HTTP, decides at once
//! whether stock is left, never sells a unit twice or loses one, answers retries of the same
//! order idempotently, and writes each accepted order to an append-only journal that
//! fulfilment workers tail.
//!
//! # Layout
//!
//! The modules, in the order an order meets them:
//!
//! | module        | owns |
//! |---------------|------|
//! | [`config`]    | the TOML file, flags and `STAMPEDE_*` overrides, validated once |
//! | [`limits`]    | every capacity, size and timeout, each with its reason |
//! | [`error_code`] | the contract's error codes and their statuses |
//! | [`metrics`]   | `GET /metrics`: what is counted on the way (and its labels) and what is read at scrape |
//! | [`http`]      | the accept loop, admission, the route table, body cap, decoding, status codes; the event console (`/console`, `/v1/events`); cluster forwarding (`http::cluster`) |
//! | [`order`]     | identifier rules, payment types, the state machine, the sale's rules and outcomes, order review's rules |
//! | [`engine`]    | the handle HTTP talks to: the one decision for a new order, routing, start-up, replay, catalogue, actions, history, checkpoints |
//! | [`shard`]     | the single writers: the turn loop, order, action and SKU decisions, the stock seam, timers |
//! | [`inventory`] | the memory-mapped stock slots, the order index, purchase counts, idempotency keys |
//! | [`journal`]   | record → storage → segment → cursor → index → recovery → writer → reader; consumer offsets |
//! | [`checkpoint`] | the replay state at one seq: recovery starts there, retention deletes before it |
//! | [`cluster`]   | cluster mode: shares of a global stock in Redis Cluster, buyer ownership, forwarding, the fulfilment stream, `stampede cluster` |
//! | [`data_dir`]  | the data directory's layout, its lock, hash keys and tokens |
//! | [`durable`]   | every write a power cut could undo, made durable in order; the test-only power-cut trace |
//! | [`api_client`] | the HTTP client of the engine's own API (tail, reconcile) |
//! | [`tail`]      | `stampede tail`: the journal as NDJSON on stdout, consumer-group commits |
//! | [`reconcile`] | `stampede stock reconcile`: expected stock vs the engine vs the journal |
//! | [`preflight`] | `stampede preflight`: the big-event readiness checks and the journal's room |
//!
//! # Data path
//!
//! One `POST /v1/orders`, from the socket to the fsync and back:
//!
//! 1. [`http::serve`] accepts the connection (bounded by a semaphore) and hyper parses the
//!    request; [`http`] reads the body under the size cap (413 past it).
//! 2. [`http::orders::decode_order`] decodes and validates it (400 / 422); from here the HTTP
//!    layer only awaits [`engine::Engine::place_order`] and maps its [`order::OrderOutcome`]
//!    to a status code.
//! 3. [`engine::Engine::place_order`] looks the SKU up (404) and hashes the order's
//!    fixed-width keys ([`inventory::KeyHasher`]) on the caller's task, off the shard thread.
//!    Fast paths: a retry of an order already durable is answered 200 from the order index
//!    (422 if its content differs); what the sale's stock rules ([`order::rules`]) refuse is
//!    answered at once (409 `sold_out`) unless the order id is known. A stampede on a
//!    sold-out item, or of retries, never queues.
//! 4. [`engine::Engine::route`] names the SKU's shard and the order goes to its bounded
//!    mailbox; a full mailbox sheds with 429 and `Retry-After`.
//! 5. The shard thread ([`shard::ShardWriter`], its loop in `src/shard/turn.rs`) takes a
//!    batch, and for each order ([`shard::ShardWriter::decide`], `src/shard/orders.rs`)
//!    checks the order index ([`inventory::OrderIndex`]) and the same rules (`max_per_order`,
//!    stock, the buyer's purchase count); an accepted order takes its units through the stock
//!    seam ([`shard::Stock`], over the memory-mapped [`inventory::Slot`]) and becomes a
//!    checksummed rkyv frame
//!    ([`journal::record::FrameBatch`]).
//! 6. The batch is appended to the journal ([`journal::Journal::append`]: `seq` assigned) and
//!    committed ([`journal::Journal::commit`]): one leader writes every shard's pending frames
//!    and runs one `fdatasync` for all of them (`fsync = "always"`).
//! 7. Only then does the shard record each order's `seq` in the order index and reply through
//!    the order's oneshot; the HTTP task answers 201 `{"order_id","status","seq"}`. If the
//!    journal failed, the shard undoes the batch and the answer is 503: nothing was taken.
//!
//! After acceptance, an action (`POST /v1/orders/{id}/{action}`) takes the same road from
//! step 4: [`engine::Engine::order_action`] routes it to the shard that owns the order, which
//! decides it with [`order::transition`] (`src/shard/actions.rs`), journals it in its batch,
//! and publishes the new state to the order index once it is durable; the payment timers
//! ([`shard::timers`]) journal reminders and expiries the same way. `GET /v1/orders/{id}` reads
//! the order's history back from the journal ([`engine::Engine::order_view`]).
//!
//! Inventory changes take another road, one for a single SKU and a bulk load alike.
//! `POST /v1/skus:bulk` ([`http::bulk`]) decodes and validates every line on its own, then
//! [`engine::Engine::put_skus`] (`src/engine/catalogue.rs`) hands out slots for the new SKUs
//! under the admin lock, groups the changes by shard and sends each shard one
//! [`shard::Command::SkuBatch`]: the shard (`src/shard/sku.rs`) checks each change, journals
//! the valid ones in one append + commit (one fsync per shard for the whole bulk), applies
//! them once durable and answers each; the catalogue then learns the new SKUs. A line is
//! applied whole or refused. `PUT /v1/skus/{sku}` ([`engine::Engine::put_sku`]) is a bulk
//! change of one: one record, one append + commit.
//!
//! At start-up, [`engine::Engine::start`] rebuilds the slots, the order index, the purchase
//! counts, the idempotency keys and the payment timers from the newest checkpoint and the
//! journal records after it (one replayer, `src/engine/replay.rs`; [`journal::recover`]
//! truncates a torn tail and refuses to start on damage anywhere else, and start-up refuses a
//! journal that does not resume right after the checkpoint).

pub mod api_client;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod data_dir;
pub mod durable;
pub mod engine;
pub mod error_code;
pub mod http;
pub mod inventory;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod order;
pub mod preflight;
pub mod reconcile;
pub mod shard;
pub mod tail;
