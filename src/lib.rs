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
//! | [`metrics`]   | `GET /metrics`: what is counted on the way and what is read at scrape |
//! | [`http`]      | the accept loop, body cap, decoding, status codes |
//! | [`order`]     | identifier rules, payment types, the order state machine |
//! | [`engine`]    | start-up (lock, recovery, shards, catalogue), the handle HTTP talks to |
//! | [`shard`]     | the single writers: the turn loop, order, action and SKU decisions, timers |
//! | [`inventory`] | the memory-mapped stock slots, the order index, purchase counts |
//! | [`journal`]   | frames and records, segments, group-commit writer, recovery scan, readers |
//! | [`checkpoint`] | the replay state at one seq: recovery starts there, retention deletes before it |
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
//! 2. [`http::orders::decode_order`] decodes and validates it (400 / 422), the SKU is looked
//!    up in the catalogue (404), and the order's fixed-width keys are hashed
//!    ([`inventory::KeyHasher`]) on the HTTP task, off the shard thread.
//! 3. Fast paths on the HTTP task: a retry of an order already durable in the journal is
//!    answered 200 from the order index (422 if its content differs); if the SKU's slot shows
//!    less stock than asked and the order id is not known, the answer is 409 `sold_out` at
//!    once. A stampede on a sold-out item, or of retries, never queues.
//! 4. [`engine::Engine::submit_order`] routes by the SKU's slot to its shard's bounded
//!    mailbox; a full mailbox sheds with 429 and `Retry-After`.
//! 5. The shard thread ([`shard::ShardWriter`], its loop in `src/shard/turn.rs`) takes a
//!    batch, and for each order ([`shard::ShardWriter::decide`], `src/shard/orders.rs`)
//!    checks the order index ([`inventory::OrderIndex`]), `max_per_order`, stock and the buyer's
//!    purchase count; an accepted order takes stock in its memory-mapped slot
//!    ([`inventory::Slot`]) and becomes a checksummed rkyv frame
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
//! counts and the payment timers by replaying the journal ([`journal::recover`]), which
//! truncates a torn tail and refuses to start on damage anywhere else.

pub mod api_client;
pub mod checkpoint;
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
