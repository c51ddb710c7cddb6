//! Journal consumers end to end (docs/API.md, "Journal"): the Rust reader in the engine's
//! process, the `follow=true` stream, retention with consumer groups, and a slow follower's
//! memory.
//!
//! - In process: a [`JournalReader`] bounded by the durable watermark returns exactly the
//!   acknowledged records, in order, each once.
//! - Black box (the real binary on loopback, `tests/common`): a follower gets a new record
//!   promptly and its stream ends on SIGTERM; retention deletes only what no group and no
//!   recovery needs, and state survives restarts; a follower that reads nothing does not
//!   make the server buffer the journal.
//!
//! Every wait is bounded; every server is stopped (the harness kills it on drop).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::in_process::{self, NewOrder};
use common::{Api, Opts, Reply, Server, metric, new_client, order, post_order_with, read_reply};
use reqwest::StatusCode;
use serde_json::{Value, json};
use stampede::config::Config;
use stampede::engine::Engine;
use stampede::journal::record::ArchivedEvent;
use stampede::journal::{JournalReader, ReadLimit};
use stampede::order::Payment;
use stampede::shard::{OrderOutcome, SkuUpdate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How soon a follower must receive a record posted while it waits.
const FOLLOW_PROMPT: Duration = Duration::from_secs(2);
/// The server sends a blank line after this much idle time (`FOLLOW_KEEPALIVE_S`), plus slack.
const KEEPALIVE_WAIT: Duration = Duration::from_secs(14);
/// Bound on any wait for retention to act (passes run every second here).
const RETENTION_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A client without the harness's whole-request timeout (a stream outlives it); every read
/// on it is bounded by the caller.
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("build reqwest client")
}

/// An address object of about `bytes` bytes of JSON text (at most 1 KiB is accepted).
fn address(bytes: usize, tag: &str) -> Value {
    let filler = bytes.saturating_sub(40 + tag.len()).max(1);
    json!({"city": "Oslo", "tag": tag, "line": "x".repeat(filler)})
}

fn order_with_address(id: &str, sku: &str, payment: &str, address_bytes: usize) -> Value {
    let mut body = order(id, &format!("user-{id}"), sku, 1, payment);
    body["address"] = address(address_bytes, id);
    body
}

/// Posts the orders `{prefix}-{n}` for `n` in `range` over `connections` clients at once
/// (each its own keep-alive connection); asserts 201 for each and returns id → seq.
async fn post_orders(
    server: &Server,
    prefix: &str,
    range: std::ops::Range<usize>,
    sku: &str,
    payment: &'static str,
    address_bytes: usize,
    connections: usize,
) -> HashMap<String, u64> {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..connections {
        let client = new_client();
        let base = server.base_url.clone();
        let ids: Vec<String> = range
            .clone()
            .filter(|n| n % connections == lane)
            .map(|n| format!("{prefix}-{n}"))
            .collect();
        let sku = sku.to_owned();
        tasks.spawn(async move {
            let mut seqs = Vec::with_capacity(ids.len());
            for id in ids {
                let body = order_with_address(&id, &sku, payment, address_bytes);
                let reply = post_order_with(&client, &base, &body)
                    .await
                    .unwrap_or_else(|e| panic!("POST order {id}: {e}"));
                assert_eq!(reply.status, StatusCode::CREATED, "{id}: {}", reply.text);
                let seq = reply.json["seq"].as_u64().expect("seq in 201");
                seqs.push((id, seq));
            }
            seqs
        });
    }
    let mut all = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("posting task"));
    }
    all
}

/// A client on a fresh connection pool. The harness's shared client pools its connections, and
/// after the waits in these tests (retention, keep-alives) a pooled one may have been idle
/// for the server's 10 s bound and be closing just as it is reused.
fn api(server: &Server) -> Api {
    Api::fresh(server)
}

/// Parses an NDJSON page, skipping blank lines.
fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("line {line:?}: {e}")))
        .collect()
}

fn seq_of(record: &Value) -> u64 {
    record["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {record}"))
}

/// Every record with `seq > from`, paging to the end; asserts 200 on each page.
async fn journal_after(server: &Server, from: u64) -> Vec<Value> {
    let mut records = Vec::new();
    let mut from = from;
    for _ in 0..10_000 {
        let reply = api(server)
            .get(&format!("/v1/journal?from={from}&limit=10000"))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "page from {from}: {}",
            reply.text
        );
        let page = ndjson(&reply.text);
        let Some(last) = page.last() else {
            return records;
        };
        from = seq_of(last);
        records.extend(page);
    }
    panic!("journal paging did not end");
}

/// Asserts the records' seqs are `first, first + 1, ...` with no gap and no repeat.
#[track_caller]
fn assert_consecutive(records: &[Value], first: u64) {
    for (n, record) in records.iter().enumerate() {
        assert_eq!(
            seq_of(record),
            first + n as u64,
            "record {n} after {first}: {record}"
        );
    }
}

/// The segment files' first seqs (from their names `<first_seq:020>.seg`), in order.
fn segment_firsts(segments: &[PathBuf]) -> Vec<u64> {
    segments
        .iter()
        .map(|path| {
            path.file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse().ok())
                .unwrap_or_else(|| panic!("segment name {}", path.display()))
        })
        .collect()
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `timeout`.
async fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The checkpoint files in `<data_dir>/checkpoints`: their seqs.
fn checkpoint_seqs(data_dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut seqs: Vec<u64> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_suffix(".ckpt")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// A line of a `follow=true` stream.
#[derive(Debug)]
enum Line {
    Record(Value),
    /// A keep-alive: an empty line, not a record.
    Blank,
    /// The response completed (the server ended the stream).
    End,
    TimedOut,
}

/// A `follow=true` response read line by line.
struct Follow {
    response: reqwest::Response,
    pending: Vec<u8>,
    ended: bool,
}

impl Follow {
    async fn open(server: &Server, from: u64) -> Follow {
        let response = streaming_client()
            .get(server.url(&format!("/v1/journal?follow=true&from={from}")))
            .send()
            .await
            .expect("open follow stream");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("application/x-ndjson"),
            "content-type {content_type:?}"
        );
        Follow {
            response,
            pending: Vec::new(),
            ended: false,
        }
    }

    /// The next line, waiting at most until `deadline`.
    async fn next_line(&mut self, deadline: Instant) -> Line {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = std::str::from_utf8(&line).expect("utf-8 line");
                if text.trim().is_empty() {
                    return Line::Blank;
                }
                let record = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("stream line {text:?}: {e}"));
                return Line::Record(record);
            }
            if self.ended {
                assert!(
                    self.pending.is_empty(),
                    "stream ended inside a line: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                return Line::End;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => return Line::TimedOut,
                Ok(Ok(Some(chunk))) => self.pending.extend_from_slice(&chunk),
                Ok(Ok(None)) => self.ended = true,
                Ok(Err(error)) => panic!("follow stream failed (not a clean end): {error:?}"),
            }
        }
    }

    /// The next record, skipping keep-alive lines (counted in `blanks`); panics on a timeout
    /// or the end of the stream.
    async fn next_record(&mut self, timeout: Duration, blanks: &mut usize) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_line(deadline).await {
                Line::Record(record) => return record,
                Line::Blank => *blanks += 1,
                other => panic!("expected a record within {timeout:?}, got {other:?}"),
            }
        }
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

// ---------------------------------------------------------------------------------------------
// (a) In process: the durable reader sees exactly the acknowledged records
// ---------------------------------------------------------------------------------------------

fn in_process_config(data_dir: &Path) -> Config {
    in_process::config(
        data_dir,
        &[
            // Acknowledged = fdatasync'ed: the durable watermark trails the writes.
            ("STAMPEDE_JOURNAL_FSYNC", "always"),
            ("STAMPEDE_SHARDS", "2"),
            ("STAMPEDE_ADMIN_TOKEN", "in-process-admin-token-0123456789"),
        ],
    )
}

/// What a reader returned of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Sku(String),
    Accepted(String),
    Other(String),
}

#[derive(Debug)]
enum Placed {
    Accepted(u64),
    Replayed(u64),
    Refused,
}

#[test]
fn a_durable_reader_returns_exactly_the_acknowledged_records_in_order() {
    const SKUS: [(&str, u64, u32); 2] = [("RD-A", 100_000, 0), ("RD-B", 150, 1)];
    const TASKS: usize = 16;
    const PER_TASK: usize = 100;

    let dir = tempfile::tempdir().unwrap();
    let config = in_process_config(&dir.path().join("data"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (engine, _report) = Engine::start(&config).expect("engine starts");
    runtime.block_on(async {
        for (sku, stock, per_user_limit) in SKUS {
            let update = SkuUpdate {
                stock: Some(stock),
                per_user_limit: Some(per_user_limit),
                max_per_order: Some(2),
                payment_timeout_s: None,
            };
            engine.put_sku(sku, update).await.expect("sku created");
        }
    });
    // Slots 0 and 1: one SKU on each of the two shards.
    assert_ne!(engine.slot_of("RD-A"), engine.slot_of("RD-B"));

    // A follower in another thread reads while the orders are placed.
    let finished = Arc::new(AtomicBool::new(false));
    let last_seq = Arc::new(AtomicU64::new(u64::MAX));
    let follower = {
        let journal = engine.journal().clone();
        let dir = engine.journal_dir().to_owned();
        let (finished, last_seq) = (finished.clone(), last_seq.clone());
        std::thread::spawn(move || {
            let mut reader = JournalReader::open(&dir, 0, ReadLimit::Durable(journal.clone()));
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                while let Some((seq, record)) = reader.next_record().expect("read") {
                    assert!(
                        seq <= journal.durable_seq(),
                        "seq {seq} returned before it was durable"
                    );
                    seen.push((seq, summary(record)));
                }
                if finished.load(Ordering::Acquire)
                    && reader.next_seq() > last_seq.load(Ordering::Acquire)
                {
                    return seen;
                }
                assert!(Instant::now() < deadline, "follower did not catch up");
                reader.wait(Duration::from_millis(50));
            }
        })
    };

    // Orders from 16 tasks at once: RD-A takes everything; RD-B (150 units, 1 per user) sells
    // out and refuses repeat buyers; every 10th order is sent twice (a replay).
    let outcomes: Vec<(String, Placed)> = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let engine = engine.clone();
            tasks.spawn(async move {
                let mut placed = Vec::new();
                for n in 0..PER_TASK {
                    let id = format!("rd-{task}-{n}");
                    let (sku, user) = if n % 3 == 0 {
                        ("RD-B", format!("u-{}", n % 40))
                    } else {
                        ("RD-A", format!("u-{task}-{n}"))
                    };
                    let payment = if n % 2 == 0 {
                        Payment::Cod
                    } else {
                        Payment::Prepaid
                    };
                    let times = if n % 10 == 0 { 2 } else { 1 };
                    for _ in 0..times {
                        let outcome = place(&engine, &id, &user, sku, payment).await;
                        placed.push((id.clone(), outcome));
                    }
                }
                placed
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.expect("placing task"));
        }
        all
    });
    let durable = engine.journal().durable_seq();
    last_seq.store(durable, Ordering::Release);
    finished.store(true, Ordering::Release);

    let mut accepted: HashMap<u64, String> = HashMap::new();
    let mut first_seq_of: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    for (id, outcome) in &outcomes {
        match outcome {
            Placed::Accepted(seq) => {
                assert!(
                    accepted.insert(*seq, id.clone()).is_none(),
                    "seq {seq} twice"
                );
                assert!(
                    first_seq_of.insert(id.clone(), *seq).is_none(),
                    "{id} twice"
                );
            }
            Placed::Replayed(_) | Placed::Refused => {}
        }
        if matches!(outcome, Placed::Refused) {
            refused += 1;
        }
    }
    for (id, outcome) in &outcomes {
        if let Placed::Replayed(seq) = outcome {
            assert_eq!(first_seq_of.get(id), Some(seq), "replay of {id}");
        }
    }
    assert!(refused > 0, "RD-B should refuse some orders");
    assert!(
        accepted.len() > TASKS * PER_TASK / 2,
        "{} accepted",
        accepted.len()
    );

    // The journal is the two SKU records, then exactly the accepted orders.
    let expected_len = SKUS.len() + accepted.len();
    assert_eq!(durable, expected_len as u64, "durable seq");
    let check = |seen: &[(u64, Seen)], who: &str| {
        assert_eq!(seen.len(), expected_len, "{who}: records read");
        let mut skus = Vec::new();
        for (n, (seq, record)) in seen.iter().enumerate() {
            assert_eq!(*seq, n as u64 + 1, "{who}: seqs are consecutive from 1");
            match record {
                Seen::Sku(name) => skus.push(name.clone()),
                Seen::Accepted(id) => assert_eq!(
                    accepted.get(seq),
                    Some(id),
                    "{who}: seq {seq} holds {id}, not the order answered with it"
                ),
                Seen::Other(kind) => panic!("{who}: unexpected {kind} record at {seq}"),
            }
        }
        assert_eq!(skus, ["RD-A", "RD-B"], "{who}: SKU records");
    };
    let followed = follower.join().expect("follower thread");
    check(&followed, "follower");
    let mut reader = JournalReader::open(
        engine.journal_dir(),
        0,
        ReadLimit::Durable(engine.journal().clone()),
    );
    let mut again = Vec::new();
    while let Some((seq, record)) = reader.next_record().expect("read") {
        again.push((seq, summary(record)));
    }
    check(&again, "reader after the run");
    // From the middle: the rest, no more.
    let middle = durable / 2;
    let mut reader = JournalReader::open(
        engine.journal_dir(),
        middle,
        ReadLimit::Durable(engine.journal().clone()),
    );
    let mut rest = Vec::new();
    while let Some((seq, _)) = reader.next_record().expect("read") {
        rest.push(seq);
    }
    assert_eq!(rest, (middle + 1..=durable).collect::<Vec<_>>());

    engine.shutdown().expect("clean shutdown");
}

fn summary(record: &stampede::journal::ArchivedRecord) -> Seen {
    match &record.event {
        ArchivedEvent::Sku(sku) => Seen::Sku(sku.sku.as_str().to_owned()),
        ArchivedEvent::Accepted(order) => Seen::Accepted(order.order_id.as_str().to_owned()),
        ArchivedEvent::Held(held) => Seen::Accepted(held.order.order_id.as_str().to_owned()),
        ArchivedEvent::Action(_)
        | ArchivedEvent::KeyedAction(_)
        | ArchivedEvent::ReviewRules(_)
        | ArchivedEvent::Shipment(_)
        | ArchivedEvent::SkuPause(_) => Seen::Other(record.type_name().to_owned()),
    }
}

async fn place(engine: &Arc<Engine>, id: &str, user: &str, sku: &str, payment: Payment) -> Placed {
    match in_process::place(engine, NewOrder::new(id, user, sku, payment)).await {
        OrderOutcome::Accepted { seq, .. } => Placed::Accepted(seq),
        OrderOutcome::Replayed { seq, .. } => Placed::Replayed(seq),
        OrderOutcome::SoldOut { .. } | OrderOutcome::PurchaseLimit { .. } => Placed::Refused,
        other => panic!("order {id}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// (b) follow=true: prompt delivery, keep-alives, end on SIGTERM
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_new_records_promptly_skips_keepalives_and_ends_on_sigterm() {
    let mut server = Server::start(Opts::default()).await;
    let before = journal_after(&server, 0).await;
    let last = before.last().map_or(0, seq_of);
    let mut stream = Follow::open(&server, last).await;
    let mut blanks = 0;

    // A record posted after the stream opened arrives within the bound.
    let posted_at = Instant::now();
    let reply = server
        .post_order(&order("f-1", "u-f-1", "SKU-3", 1, "cod"))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let record = stream.next_record(FOLLOW_PROMPT, &mut blanks).await;
    let waited = posted_at.elapsed();
    assert_eq!(
        seq_of(&record),
        last + 1,
        "the first record after from={last}"
    );
    assert_eq!(record["order_id"], "f-1");
    assert_eq!(record["seq"], reply.json["seq"]);
    assert!(waited <= FOLLOW_PROMPT, "record took {waited:?}");

    // Idle: only keep-alive lines come, and they are not records.
    let deadline = Instant::now() + KEEPALIVE_WAIT;
    match stream.next_line(deadline).await {
        Line::Blank => blanks += 1,
        other => {
            panic!("expected a blank keep-alive line within {KEEPALIVE_WAIT:?}, got {other:?}")
        }
    }

    // The stream goes on after a keep-alive, and what comes is the next record. (A fresh
    // client: the shared one's pooled connection has been idle for ~10 s, the server's idle
    // bound, and may be closing just as it is reused.)
    let reply = post_order_with(
        &new_client(),
        &server.base_url,
        &order("f-2", "u-f-2", "SKU-3", 1, "cod"),
    )
    .await
    .expect("POST f-2");
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let record = stream.next_record(FOLLOW_PROMPT, &mut blanks).await;
    assert_eq!(seq_of(&record), last + 2);
    assert_eq!(record["order_id"], "f-2");

    // SIGTERM: the response completes (a clean end of the chunked body) and the server exits 0.
    server.send_sigterm();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match stream.next_line(deadline).await {
            Line::Blank => blanks += 1,
            Line::End => break,
            Line::Record(record) => panic!("no record was posted, got {record}"),
            Line::TimedOut => panic!("the stream did not end within 15 s of SIGTERM"),
        }
    }
    let status = server
        .wait_exit(common::TERMINATE_TIMEOUT)
        .await
        .expect("server exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(blanks >= 1, "the keep-alive was seen and skipped");
}

// ---------------------------------------------------------------------------------------------
// (c) Retention with consumer groups
// ---------------------------------------------------------------------------------------------

fn retention_opts() -> Opts {
    let env = [
        ("STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX", "65536"),
        ("STAMPEDE_JOURNAL_RETAIN_S", "1"),
        ("STAMPEDE_JOURNAL_RETENTION_CHECK_S", "1"),
    ];
    Opts {
        env: env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ..Opts::default()
    }
}

/// Posts orders in rounds until the journal has had at least `segments` segment files
/// (counting those retention may delete meanwhile).
async fn fill_segments(
    server: &Server,
    prefix: &str,
    sku: &str,
    segments: usize,
) -> HashMap<String, u64> {
    let mut placed = HashMap::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut next = 0;
    for _ in 0..200 {
        seen.extend(server.segments());
        if seen.len() >= segments {
            return placed;
        }
        placed.extend(post_orders(server, prefix, next..next + 100, sku, "prepaid", 300, 4).await);
        next += 100;
    }
    panic!("{segments} segments not reached");
}

/// The state a restart must keep: the SKU, and the orders' views.
async fn snapshot(server: &Server, sku: &str, ids: &[&str]) -> (Value, Vec<Value>) {
    let mut views = Vec::new();
    for id in ids {
        views.push(api(server).order(id).await);
    }
    (server.sku(sku).await, views)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_groups_need_and_state_survives_restarts() {
    let mut server = Server::start(retention_opts()).await;
    // Pin the journal before it grows: with groups at 0 nothing may be deleted.
    api(&server).commit_offset_ok("slow", 0).await;
    api(&server).commit_offset_ok("fast", 0).await;
    server.create_sku("RET-1", 1_000_000, 0, 10).await;

    let placed = fill_segments(&server, "r", "RET-1", 7).await;
    let mut by_seq: Vec<(u64, String)> = placed.iter().map(|(id, s)| (*s, id.clone())).collect();
    by_seq.sort_unstable();
    let segments = server.segments();
    let firsts = segment_firsts(&segments);
    assert!(firsts.len() >= 7, "{firsts:?}");
    let in_segment = |index: usize| -> Vec<&str> {
        by_seq
            .iter()
            .filter(|(seq, _)| *seq >= firsts[index] && *seq < firsts[index + 1])
            .map(|(_, id)| id.as_str())
            .collect()
    };
    // Paid later (their `pay` records land in the active segment).
    let early_paid = in_segment(0)[0].to_owned();
    let early_unpaid = in_segment(0)[1].to_owned();
    let late_paid = in_segment(4)[0].to_owned();
    let late_unpaid = in_segment(4)[1].to_owned();
    for id in [&early_paid, &late_paid] {
        api(&server).act(id, "pay", None).await;
    }
    let everything = journal_after(&server, 0).await;
    assert_consecutive(&everything, 1);
    let end = seq_of(everything.last().unwrap());

    // Older than retain_s and closed, but the groups sit at 0: two passes delete nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        server.segments(),
        segments,
        "nothing below every group's offset"
    );

    // slow: in the middle of segment 3; fast: at the end.
    let slow = (firsts[2] + firsts[3]) / 2;
    api(&server).commit_offset_ok("slow", slow).await;
    api(&server).commit_offset_ok("fast", end).await;
    wait_until(RETENTION_WAIT, "segments 1 and 2 deleted", || {
        !segments[0].exists() && !segments[1].exists()
    })
    .await;
    // Two more passes: segment 3 (it holds slow's next record) and the rest stay.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        server.segments(),
        segments[2..].to_vec(),
        "kept: the segment holding seq {} and all later",
        slow + 1
    );
    let checkpoints = checkpoint_seqs(&server.data_dir());
    assert!(
        checkpoints.iter().any(|seq| *seq >= firsts[2] - 1),
        "a checkpoint covers the deleted segments: {checkpoints:?}"
    );

    // Pages that start before the oldest kept record are gone; the detail names it. (`from=0`
    // answers 503 instead: see `a_page_from_zero_after_retention_is_gone`.)
    for from in [1, firsts[2] - 2] {
        let reply = api(&server).get(&format!("/v1/journal?from={from}")).await;
        reply.assert_error(410, "gone");
        let detail = reply.json["detail"].as_str().unwrap();
        assert!(detail.contains(&firsts[2].to_string()), "{detail}");
    }
    let first_kept = journal_after(&server, firsts[2] - 1).await;
    assert_eq!(first_kept.first().map(seq_of), Some(firsts[2]));
    // The slow group reads everything after its offset, without a gap, as it was.
    let after_slow = journal_after(&server, slow).await;
    assert_consecutive(&after_slow, slow + 1);
    assert_eq!(after_slow, everything[slow as usize..].to_vec());

    // Orders whose acceptance is gone show what is kept.
    let view = api(&server).order(&early_paid).await;
    assert_eq!(view["history_complete"], false, "{view}");
    assert_eq!(view["status"], "paid", "{view}");
    assert_eq!(view["user_id"], Value::Null, "{view}");
    assert_eq!(view["payment"], Value::Null, "{view}");
    assert_eq!(view["sku"], "RET-1", "{view}");
    let events: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["pay"], "{view}");
    let view = api(&server).order(&early_unpaid).await;
    assert_eq!(view["history_complete"], false, "{view}");
    assert_eq!(view["status"], "pending_payment", "{view}");
    assert_eq!(view["history"], json!([]), "{view}");
    // Orders accepted after the deleted part are whole.
    for id in [&late_paid, &late_unpaid] {
        let view = api(&server).order(id).await;
        assert_eq!(view["history_complete"], true, "{view}");
        assert_eq!(view["user_id"], format!("user-{id}"), "{view}");
    }

    let ids = [
        early_paid.as_str(),
        early_unpaid.as_str(),
        late_paid.as_str(),
        late_unpaid.as_str(),
    ];
    let mut expected = snapshot(&server, "RET-1", &ids).await;
    let mut last = end;
    for (round, how) in ["sigterm", "sigkill"].into_iter().enumerate() {
        match how {
            "sigterm" => {
                let status = server.terminate().await;
                assert!(status.success(), "exit status {status}");
            }
            _ => server.kill9(),
        }
        server.restart().await;
        assert_eq!(
            snapshot(&server, "RET-1", &ids).await,
            expected,
            "state after restart ({how})"
        );
        let reply = api(&server).get("/v1/journal?from=1").await;
        reply.assert_error(410, "gone");
        let after_slow = journal_after(&server, slow).await;
        assert_consecutive(&after_slow, slow + 1);
        assert_eq!(seq_of(after_slow.last().unwrap()), last);
        // New work goes on after the kept records (and gives the next restart some records
        // to replay after the checkpoint).
        let new = post_orders(
            &server,
            &format!("new{round}"),
            0..5,
            "RET-1",
            "prepaid",
            100,
            1,
        )
        .await;
        let mut seqs: Vec<u64> = new.values().copied().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (last + 1..=last + 5).collect::<Vec<_>>());
        api(&server)
            .act(&format!("new{round}-0"), "pay", None)
            .await;
        api(&server)
            .act(
                &late_unpaid,
                if round == 0 { "pay" } else { "verify" },
                None,
            )
            .await;
        last += 7;
        expected = snapshot(&server, "RET-1", &ids).await;
    }
    let view = api(&server).order(&late_unpaid).await;
    assert_eq!(view["status"], "verified", "{view}");
    assert_eq!(view["history_complete"], true, "{view}");
    assert_eq!(server.segments()[0], segments[2], "oldest kept segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_without_groups_never_deletes_the_last_segment() {
    let mut server = Server::start(retention_opts()).await;
    server.create_sku("RET-2", 1_000_000, 0, 10).await;
    fill_segments(&server, "g", "RET-2", 3).await;
    // No group: every closed segment older than a second goes, the active one stays.
    wait_until(RETENTION_WAIT, "all closed segments deleted", || {
        server.segments().len() == 1
    })
    .await;
    let kept = server.segments();
    // Idle for longer than retain_s (the active segment is old now) and two more passes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.segments(), kept, "the last segment is never deleted");
    let first_kept = segment_firsts(&kept)[0];
    let records = journal_after(&server, first_kept - 1).await;
    assert!(!records.is_empty());
    assert_consecutive(&records, first_kept);
    let last = seq_of(records.last().unwrap());
    api(&server)
        .get(&format!("/v1/journal?from={}", first_kept - 2))
        .await
        .assert_error(410, "gone");

    let stock = server.sku("RET-2").await;
    server.kill9();
    server.restart().await;
    assert_eq!(server.sku("RET-2").await, stock, "stock after SIGKILL");
    let new = post_orders(&server, "g-after", 0..1, "RET-2", "cod", 100, 1).await;
    assert_eq!(new.values().copied().collect::<Vec<_>>(), [last + 1]);
    assert!(server.segments().iter().any(|path| path == &kept[0]));
}

/// A server whose closed segments retention has deleted (no consumer group).
async fn server_after_retention(prefix: &str) -> Server {
    let server = Server::start(retention_opts()).await;
    server.create_sku("RET-3", 1_000_000, 0, 10).await;
    fill_segments(&server, prefix, "RET-3", 3).await;
    wait_until(RETENTION_WAIT, "closed segments deleted", || {
        server.segments().len() == 1
    })
    .await;
    api(&server)
        .get("/v1/journal?from=1")
        .await
        .assert_error(410, "gone");
    server
}

/// docs/API.md: "A page ... that starts before the oldest kept record answers 410 `gone`",
/// `from=0` (the default, "from the beginning") included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_from_zero_after_retention_is_gone() {
    let server = server_after_retention("z").await;
    api(&server)
        .get("/v1/journal?from=0")
        .await
        .assert_error(410, "gone");
    api(&server)
        .get("/v1/journal")
        .await
        .assert_error(410, "gone");
}

/// docs/API.md: "A page or stream that starts before the oldest kept record answers 410
/// `gone`": a `follow=true` stream is refused before its 200, not cut short after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_starts_before_the_oldest_kept_record_is_gone() {
    let server = server_after_retention("s").await;
    for from in [1, 0] {
        let reply = read_reply(
            streaming_client()
                .get(server.url(&format!("/v1/journal?follow=true&from={from}")))
                .timeout(Duration::from_secs(10))
                .send()
                .await,
        )
        .await;
        reply.assert_error(410, "gone");
    }
}

// ---------------------------------------------------------------------------------------------
// (d) A follower that reads nothing does not make the server buffer the journal
// ---------------------------------------------------------------------------------------------

/// Reads a chunked HTTP/1.1 response's body lines from a raw socket.
struct RawChunked {
    stream: tokio::net::TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    headers_done: bool,
}

impl RawChunked {
    /// Moves whole chunks from `raw` into `body`; returns false when the last chunk came.
    fn decode(&mut self) -> bool {
        if !self.headers_done {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return true;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
                "{head}"
            );
            self.raw.drain(..end + 4);
            self.headers_done = true;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
            if size == 0 {
                return false;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return true;
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            assert_eq!(&self.raw[start + size..start + size + 2], b"\r\n");
            self.raw.drain(..start + size + 2);
        }
    }

    /// Reads until the body holds the record with `last_seq` (or the deadline); returns the
    /// records in order, blank lines skipped.
    async fn read_through(&mut self, last_seq: u64, deadline: Instant) -> Vec<Value> {
        let mut records = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            while let Some(end) = self.body.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.body.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let record: Value = serde_json::from_slice(&line).expect("stream line");
                let seq = seq_of(&record);
                records.push(record);
                if seq == last_seq {
                    return records;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let read = tokio::time::timeout(left, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "stream stalled: {} records, last {:?}",
                        records.len(),
                        records.last().map(seq_of)
                    )
                })
                .expect("read stream");
            assert!(read > 0, "the server closed the stream early");
            self.raw.extend_from_slice(&buf[..read]);
            assert!(self.decode(), "the stream ended early");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_reads_nothing_does_not_grow_the_servers_memory() {
    const ORDERS: usize = 20_000;
    const ADDRESS_BYTES: usize = 1000;
    const CONNECTIONS: usize = 4;

    let server = Server::start(Opts::default().fsync("none")).await;
    let pid = server.pid().expect("running");
    server.create_sku("MEM-1", 10_000_000, 0, 10).await;
    // Warm the server up (connection buffers, allocator arenas, the blocking pool) so the
    // measurement sees growth, not first use.
    post_orders(
        &server,
        "warm",
        0..500,
        "MEM-1",
        "cod",
        ADDRESS_BYTES,
        CONNECTIONS,
    )
    .await;

    // The follower: a raw socket with a small receive buffer that sends its request and then
    // reads nothing until the end of the test.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut follower = RawChunked {
        stream: socket.connect(server.addr.parse().unwrap()).await.unwrap(),
        raw: Vec::new(),
        body: Vec::new(),
        headers_done: false,
    };
    let request = format!(
        "GET /v1/journal?follow=true&from=0 HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    );
    follower.stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid, "VmRSS:");
    let journal_before: u64 = server
        .segments()
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();

    let started = Instant::now();
    let placed = post_orders(
        &server,
        "m",
        0..ORDERS,
        "MEM-1",
        "cod",
        ADDRESS_BYTES,
        CONNECTIONS,
    )
    .await;
    let posting = started.elapsed();
    let rss_after = rss_kib(pid, "VmRSS:");
    let journal_after_bytes: u64 = server
        .segments()
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    let written = journal_after_bytes - journal_before;
    let grown = rss_after.saturating_sub(rss_before) * 1024;
    eprintln!(
        "slow follower: {ORDERS} orders in {posting:?}, journal +{written} bytes, server \
         VmRSS {rss_before} -> {rss_after} KiB (+{grown} bytes), VmHWM {} KiB",
        rss_kib(pid, "VmHWM:")
    );
    // The follower had read nothing but its first records, so nearly all of the `written`
    // bytes (more as NDJSON) were still to be sent to it. A server that queued them for the
    // stream would hold at least that much beyond what the kernel's socket buffers take (a
    // few MiB at most on loopback, not counted in RSS). The bound is 4 chunks of 64 KiB, plus
    // the growth of the order tables (pre-sized for 1M orders, touched as used) and of
    // allocator caches: far below half the journal.
    assert!(written > 20_000_000, "journal grew by only {written} bytes");
    assert!(
        grown < written / 2,
        "server RSS grew by {grown} bytes while {written} bytes were written to the journal"
    );

    // Now read: the follower catches up with everything, in order.
    let last = placed.values().copied().max().unwrap();
    let records = follower
        .read_through(last, Instant::now() + Duration::from_secs(40))
        .await;
    assert_consecutive(&records, 1);
    let ids: HashSet<&str> = records
        .iter()
        .filter(|r| r["type"] == "accepted" && r["sku"] == "MEM-1")
        .filter_map(|r| r["order_id"].as_str())
        .filter(|id| id.starts_with("m-"))
        .collect();
    assert_eq!(ids.len(), ORDERS, "every order reached the follower");
    for (id, seq) in placed.iter().take(50) {
        let record = &records[*seq as usize - 1];
        assert_eq!(record["order_id"], id.as_str(), "{record}");
    }
}

// ---------------------------------------------------------------------------------------------
// (e) Who may move a group, and offsets never ahead of the journal
// ---------------------------------------------------------------------------------------------

/// A request to a consumer route with an optional bearer token.
async fn consumer_call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = new_client().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    read_reply(request.send().await).await
}

fn offset_files(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.data_dir().join("consumers"))
        .expect("consumers dir")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `shared/spec/http-api.md`, Journal: committing and deleting need the consumer or the
/// admin token (401 otherwise, the admin routes' error body); reading an offset stays open.
/// Anonymous clients can neither move a group nor create one, however many they try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_and_deleting_a_group_need_the_consumer_or_the_admin_token() {
    use reqwest::Method;
    let server = Server::start(Opts::default()).await;
    server.create_sku("AUTH-1", 100, 0, 1).await;
    let offset = "/v1/consumers/picking/offset";
    let consumer = server.consumer_token.clone();
    let admin = server.admin_token.clone();
    api(&server).commit_offset_ok("picking", 1).await;

    // No token, a wrong one, another scheme: 401, nothing moves.
    for token in [None, Some("wrong-token"), Some("")] {
        let reply =
            consumer_call(&server, Method::PUT, offset, token, Some(json!({"seq": 0}))).await;
        reply.assert_error(401, "unauthorized");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer"),
            "{token:?}"
        );
        assert!(
            !reply.text.contains(&consumer),
            "the token is in the answer"
        );
    }
    let basic = read_reply(
        new_client()
            .put(server.url(offset))
            .header("authorization", format!("Basic {consumer}"))
            .json(&json!({"seq": 0}))
            .send()
            .await,
    )
    .await;
    basic.assert_error(401, "unauthorized");
    let read = api(&server).get(offset).await;
    assert_eq!(read.status, StatusCode::OK, "GET stays open: {}", read.text);
    assert_eq!(read.json["seq"], 1, "{}", read.text);

    // An anonymous flood creates no group (the table stays far from its cap).
    let before = offset_files(&server);
    for n in 0..50 {
        consumer_call(
            &server,
            Method::PUT,
            &format!("/v1/consumers/flood-{n}/offset"),
            None,
            Some(json!({"seq": 0})),
        )
        .await
        .assert_error(401, "unauthorized");
    }
    assert_eq!(offset_files(&server), before, "no offset file was created");

    // Both tokens commit (case-insensitive scheme included).
    let reply = consumer_call(
        &server,
        Method::PUT,
        offset,
        Some(&admin),
        Some(json!({"seq": 0})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "admin token: {}", reply.text);
    let lower = read_reply(
        new_client()
            .put(server.url(offset))
            .header("authorization", format!("bearer {consumer}"))
            .json(&json!({"seq": 1}))
            .send()
            .await,
    )
    .await;
    assert_eq!(
        lower.status,
        StatusCode::OK,
        "consumer token: {}",
        lower.text
    );
    assert_eq!(api(&server).get(offset).await.json["seq"], 1);

    // DELETE: 401 without a token, then gone from GET, then 404 `unknown_group`.
    let group = "/v1/consumers/picking";
    consumer_call(&server, Method::DELETE, group, None, None)
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(api(&server).get(offset).await.status, StatusCode::OK);
    let deleted = consumer_call(&server, Method::DELETE, group, Some(&consumer), None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert_eq!(deleted.json["group"], "picking", "{}", deleted.text);
    api(&server)
        .get(offset)
        .await
        .assert_error(404, "unknown_group");
    consumer_call(&server, Method::DELETE, group, Some(&consumer), None)
        .await
        .assert_error(404, "unknown_group");
    assert!(!offset_files(&server).contains(&"picking.offset".to_owned()));
    api(&server).commit_offset_ok("packing", 1).await;
    let deleted = consumer_call(
        &server,
        Method::DELETE,
        "/v1/consumers/packing",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        deleted.status,
        StatusCode::OK,
        "admin deletes: {}",
        deleted.text
    );
    consumer_call(
        &server,
        Method::DELETE,
        "/v1/consumers/.hidden",
        Some(&admin),
        None,
    )
    .await
    .assert_error(422, "invalid");
    // Other methods on the consumer paths: 405.
    consumer_call(&server, Method::POST, offset, Some(&consumer), None)
        .await
        .assert_error(405, "method_not_allowed");
    consumer_call(&server, Method::GET, group, None, None)
        .await
        .assert_error(405, "method_not_allowed");
}

/// Without a configured consumer token the engine writes one to `<data-dir>/consumer.token`
/// (mode 0600) at its first start and reuses it on later starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_consumer_token_is_private_and_kept_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let mut server = Server::start(Opts {
        consumer_token: None,
        ..Opts::default()
    })
    .await;
    let path = server.data_dir().join("consumer.token");
    let mode = std::fs::metadata(&path)
        .expect("consumer.token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert!(token.len() >= 32, "{token:?}");
    assert_ne!(token, server.admin_token);
    let commit = |server: &Server, token: String| {
        let url = server.url("/v1/consumers/gen/offset");
        async move {
            read_reply(
                new_client()
                    .put(url)
                    .bearer_auth(token)
                    .json(&json!({"seq": 0}))
                    .send()
                    .await,
            )
            .await
        }
    };
    assert_eq!(commit(&server, token.clone()).await.status, StatusCode::OK);
    server.terminate().await;
    server.restart().await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        token,
        "the same token after a restart"
    );
    assert_eq!(commit(&server, token.clone()).await.status, StatusCode::OK);
    commit(&server, format!("{token}x"))
        .await
        .assert_error(401, "unauthorized");
}

/// A deleted group no longer holds retention back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_no_longer_pins_retention() {
    let server = Server::start(retention_opts()).await;
    api(&server).commit_offset_ok("pin", 0).await;
    server.create_sku("RET-D", 1_000_000, 0, 10).await;
    fill_segments(&server, "d", "RET-D", 3).await;
    let segments = server.segments();
    // Two passes: the group at 0 keeps every segment.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(segments[0].exists(), "the group pins the first segment");
    let deleted = consumer_call(
        &server,
        reqwest::Method::DELETE,
        "/v1/consumers/pin",
        Some(&server.consumer_token),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    wait_until(RETENTION_WAIT, "the first segment deleted", || {
        !segments[0].exists()
    })
    .await;
}

/// An offset above the journal's end (what a power cut under `interval`/`none` can leave, or
/// a hand edit) is lowered to the end at start, with a warning naming the group; an offset
/// within the journal is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_past_the_journals_end_is_lowered_at_start() {
    let mut server = Server::start(Opts::default()).await;
    server.create_sku("CLAMP-1", 100, 0, 1).await;
    let placed = post_orders(&server, "clamp", 0..3, "CLAMP-1", "cod", 0, 1).await;
    let last = *placed.values().max().unwrap();
    api(&server).commit_offset_ok("behind", 1).await;
    api(&server).commit_offset_ok("ahead", last).await;
    server.terminate().await;
    let file = server.data_dir().join("consumers/ahead.offset");
    std::fs::write(&file, format!("{}\n", last + 1000)).unwrap();
    server.restart().await;
    let ahead = api(&server).get("/v1/consumers/ahead/offset").await;
    assert_eq!(ahead.json["seq"], last, "{}", ahead.text);
    assert_eq!(ahead.json["lag"], 0, "{}", ahead.text);
    assert_eq!(
        api(&server).get("/v1/consumers/behind/offset").await.json["seq"],
        1
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        last.to_string()
    );
    let output = server.output();
    let warning = output
        .lines()
        .find(|line| line.contains("past the journal's end"))
        .unwrap_or_else(|| panic!("no warning in:\n{output}"));
    assert!(warning.contains("ahead"), "{warning}");
    assert!(warning.contains(&(last + 1000).to_string()), "{warning}");
    assert!(!output.contains("group=behind"), "{output}");
    // The next order reuses no seq the group claims to have seen.
    let next = post_orders(&server, "clamp-after", 0..1, "CLAMP-1", "cod", 0, 1).await;
    assert_eq!(next.values().copied().collect::<Vec<_>>(), [last + 1]);
}

/// The fsync count from `/metrics`.
async fn fsyncs(server: &Server) -> f64 {
    let text = api(server).get("/metrics").await.text;
    metric(&text, "stampede_journal_fsync_duration_seconds_count ")
}

/// Under `fsync = "interval"` a commit above what the journal has synced syncs it first (the
/// interval here is a minute, so nothing else syncs meanwhile); a commit of a synced seq
/// syncs nothing. Under `always` every durable seq is synced: a commit syncs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_above_the_synced_journal_syncs_it_first() {
    for policy in ["interval", "always"] {
        let mut opts = Opts::default().fsync(policy);
        opts.env
            .push(("STAMPEDE_JOURNAL_FSYNC_INTERVAL_MS".into(), "60000".into()));
        let server = Server::start(opts).await;
        server.create_sku("SYNC-1", 100, 0, 1).await;
        let placed = post_orders(&server, "sync", 0..3, "SYNC-1", "cod", 0, 1).await;
        let last = *placed.values().max().unwrap();
        let before = fsyncs(&server).await;
        api(&server).commit_offset_ok("picking", last).await;
        let after = fsyncs(&server).await;
        if policy == "interval" {
            assert!(
                after > before,
                "{policy}: no fsync for the commit ({before} -> {after})"
            );
        } else {
            assert_eq!(after, before, "{policy}: the journal was synced already");
        }
        api(&server).commit_offset_ok("packing", last - 1).await;
        assert_eq!(fsyncs(&server).await, after, "{policy}: synced already");
    }
}
