//! Crash loop: the real binary (`fsync = "always"`, 64 KiB journal segments, so segments
//! rotate under load) under concurrent load from several client tasks, SIGKILLed at seeded
//! random moments (sometimes SIGSTOPped first for a short pause, then SIGCONTed or killed
//! while stopped), restarted on the same data directory, and audited after every restart and
//! at the end against the clients' log of answers and the journal.
//!
//! The load: new orders on a few hot SKUs with small stock and a `per_user_limit` (so
//! `sold_out` and `purchase_limit` refusals happen) and on one SKU whose payment timer is 2 s
//! (so `payment_reminder` and `expired` records happen, across restarts too), retries of
//! earlier orders (same body), retries with different content (must be 422
//! `idempotency_conflict`), `pay`/`cancel` on orders it created, restocks (`PUT
//! /v1/skus/{sku}`) and consumer offset commits at seqs it read from `GET /v1/journal`.
//!
//! Every answer is judged when it arrives (a wrong answer is a violation, a lost one makes
//! the request *uncertain*), and each audit checks:
//! 1. every order answered 201 (or 200 replayed) is in the journal exactly once with that
//!    seq, and every journaled order was sent by a client and was either acknowledged or had
//!    a lost answer (nothing is taken while the client was told it was not);
//! 2. no order id is journaled twice; the journal is contiguous from seq 1, and every record
//!    read before a kill (by an audit or a client) is still there, unchanged, after it;
//! 3. for every SKU, at every point of the journal sold + reserved ≤ stock_total, and the
//!    engine's `GET /v1/skus/{sku}` equals the journal's fold (stock_total, available,
//!    reserved, sold, settings) with available + reserved + sold = stock_total;
//! 4. per (user, SKU), the units held (accepted, not given back) never pass `per_user_limit`
//!    at any point of the journal;
//! 5. every action answered 200 has its record in the journal, every action record is a move
//!    the order's state allows (with the right `status` and `prev_seq`), and `GET
//!    /v1/orders/{id}` shows the status and history the journal's records say;
//! 6. every consumer group's offset is ≤ the journal's last seq and is the last committed
//!    value (or one whose commit was uncertain); every restock answered 200 is journaled;
//! 7. retries after a restart of orders answered 201 get 200, `Idempotent-Replayed: true`,
//!    and the original body (seq included).
//!
//! An uncertain order may or may not be in the journal, but at most once; the audit after the
//! next restart resolves it from the journal, and retries resolve it for the engine.
//!
//! Default `cargo test`: 25 kills. Long runs: `CRASH_LOOP_KILLS=500 cargo test --release
//! --test crash_loop -- --nocapture` or `scripts/crash_loop.sh [KILLS] [SEED]`.
//! `CRASH_LOOP_SEED` replays a run's decisions (operations, kill and pause moments, pause
//! lengths); thread timing still varies between runs. The seed is printed at the start and in
//! every failure. `CRASH_LOOP_VERBOSE=1` prints one line per kill. The summary (with
//! `--nocapture`) gives kills, pauses, orders, answers by class, the journal's records and
//! segments, and what the audits compared.
//!
//! Every wait is bounded (client requests 1 s, audit requests 10 s, a load phase 20 s, the
//! clients' return after a kill 10 s, a restart the harness's 15 s); everything runs on
//! loopback; the engine is killed when the `Server` drops, a panic included.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Opts, Server};
use serde_json::{Value, json};

/// Kills in the default `cargo test` run.
const DEFAULT_KILLS: u64 = 25;
/// Concurrent client tasks.
const CLIENTS: usize = 6;
/// Timeout of the clients' requests: a request to a stopped engine gives up after this.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Timeout of the audit's requests (the engine is quiet then).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one load phase may wait for its kill moment.
const PHASE_MAX: Duration = Duration::from_secs(20);
/// Longest the clients may take to notice a kill and return.
const JOIN_MAX: Duration = Duration::from_secs(10);
/// Consumer groups the clients commit for.
const GROUPS: usize = 4;
/// Users a cycle draws from; the window slides by `USER_STEP` each cycle, so old users sit at
/// their limits and new ones keep buying.
const USER_WINDOW: u64 = 30;
const USER_STEP: u64 = 2;

#[derive(Debug)]
struct SkuSpec {
    name: &'static str,
    stock: u64,
    per_user_limit: u64,
    max_per_order: u64,
    payment_timeout_s: u64,
    /// Relative share of new orders.
    weight: u64,
}

impl SkuSpec {
    /// Pending orders of this SKU may expire during the run.
    fn has_timer(&self) -> bool {
        self.payment_timeout_s < 60
    }
}

const SKUS: [SkuSpec; 4] = [
    SkuSpec {
        name: "CL-HOT-1",
        stock: 24,
        per_user_limit: 2,
        max_per_order: 2,
        payment_timeout_s: 86_400,
        weight: 3,
    },
    SkuSpec {
        name: "CL-HOT-2",
        stock: 12,
        per_user_limit: 1,
        max_per_order: 1,
        payment_timeout_s: 86_400,
        weight: 3,
    },
    SkuSpec {
        name: "CL-TIMER",
        stock: 20,
        per_user_limit: 2,
        max_per_order: 2,
        payment_timeout_s: 2,
        weight: 2,
    },
    SkuSpec {
        name: "CL-ROOMY",
        stock: 100_000,
        per_user_limit: 4,
        max_per_order: 3,
        payment_timeout_s: 86_400,
        weight: 4,
    },
];

const PENDING: &str = "pending_payment";

/// SplitMix64: small, seedable, good enough to pick operations and moments.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        rng.next_u64();
        rng
    }

    /// An independent stream for (`a`, `b`), e.g. (cycle, task).
    fn derive(seed: u64, a: u64, b: u64) -> Self {
        Rng::new(
            seed ^ a.wrapping_mul(0xA076_1D64_78BD_642F) ^ b.wrapping_mul(0xE703_7ED1_A0B4_28DB),
        )
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

// ---------------------------------------------------------------------------------------------
// The order state machine, the part this run exercises (pay, cancel and the payment timer).

/// The state after `action` from `status`, or `None` for a refused move.
fn transition(status: &str, action: &str) -> Option<&'static str> {
    match (status, action) {
        (PENDING, "pay") => Some("paid"),
        (PENDING | "confirmed" | "paid", "cancel") => Some("cancelled"),
        (PENDING, "payment_reminder") => Some(PENDING),
        (PENDING, "expired") => Some("expired"),
        _ => None,
    }
}

/// Whether `action` repeats the latest action of an order in `status` (a replay). In this
/// run `paid` is only reached by `pay` and `cancelled` only by `cancel`.
fn is_replay(status: &str, action: &str) -> bool {
    matches!((status, action), ("paid", "pay") | ("cancelled", "cancel"))
}

fn initial_status(payment: &str) -> &'static str {
    if payment == "cod" {
        "confirmed"
    } else {
        PENDING
    }
}

// ---------------------------------------------------------------------------------------------
// What the clients were told.

#[derive(Debug)]
struct OrderModel {
    id: String,
    /// The exact body every attempt sends.
    body: Value,
    sku: usize,
    payment: &'static str,
    /// The seq an answer (201, or 200 replayed) gave.
    seq: Option<u64>,
    /// Some request on this order lost its answer since the last audit: it may still be
    /// decided (by an engine that was stopped, not killed), so its state is unknown until
    /// the next restart's audit.
    doubt: bool,
    /// The order's status as the answers tell it (`None`: unknown or not journaled).
    known: Option<String>,
    /// A client is working on this order (one request at a time per order).
    busy: bool,
    /// Answers lost, ever (figures).
    lost: u64,
}

impl OrderModel {
    fn expected_replay(&self, seq: u64) -> Value {
        json!({"order_id": self.id, "status": initial_status(self.payment), "seq": seq})
    }

    /// The states the order may be in now, as far as the answers tell.
    fn candidates(&self) -> Vec<&'static str> {
        let timer = SKUS[self.sku].has_timer();
        if !self.doubt
            && let Some(known) = &self.known
        {
            let known = status_static(known);
            return if known == PENDING && timer {
                vec![PENDING, "expired"]
            } else {
                vec![known]
            };
        }
        if self.payment == "cod" {
            vec!["confirmed", "cancelled"]
        } else if timer {
            vec![PENDING, "paid", "cancelled", "expired"]
        } else {
            vec![PENDING, "paid", "cancelled"]
        }
    }
}

fn status_static(status: &str) -> &'static str {
    for known in [PENDING, "confirmed", "paid", "cancelled", "expired"] {
        if known == status {
            return known;
        }
    }
    "unknown"
}

/// A value several clients may write (a consumer offset, a SKU's stock): the last value
/// answered 200 and the values whose answer was lost since the last audit (any of them may
/// have landed, even after a later 200, when the engine was only stopped).
#[derive(Debug, Default)]
struct Register {
    certain: Option<u64>,
    maybe: Vec<u64>,
    busy: bool,
    /// Highest value ever sent (restocks only grow).
    sent_max: u64,
}

impl Register {
    fn allows(&self, value: Option<u64>) -> bool {
        value == self.certain || value.is_some_and(|v| self.maybe.contains(&v))
    }
}

#[derive(Debug, Default)]
struct Model {
    seed: u64,
    cycle: u64,
    orders: Vec<OrderModel>,
    /// Order ids touched since the last audit (read back at the audit).
    touched: HashSet<usize>,
    /// Orders answered 201 or 200 since the last audit.
    acked_recently: Vec<usize>,
    /// (order, action) answered 200 since the last audit.
    actions_done: Vec<(usize, &'static str)>,
    /// (sku index, stock_total) answered 200 since the last audit.
    restocks_done: Vec<(usize, u64)>,
    groups: Vec<Register>,
    stock: Vec<Register>,
    /// Records the clients read from `GET /v1/journal` and the audit has not yet compared.
    seen: BTreeMap<u64, Value>,
    max_seq_seen: u64,
    violations: Vec<String>,
    /// Answers by class, e.g. `order.new 201`, `action.pay 409 invalid_transition`.
    answers: BTreeMap<String, u64>,
}

impl Model {
    fn violation(&mut self, message: String) {
        eprintln!(
            "crash_loop: VIOLATION (cycle {}, seed {}): {message}",
            self.cycle, self.seed
        );
        self.violations
            .push(format!("cycle {}: {message}", self.cycle));
    }

    fn count(&mut self, class: String) {
        *self.answers.entry(class).or_default() += 1;
    }
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    replayed: bool,
    json: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    fn class(&self) -> String {
        if self.code().is_empty() {
            if self.replayed {
                format!("{} replayed", self.status)
            } else {
                self.status.to_string()
            }
        } else {
            format!("{} {}", self.status, self.code())
        }
    }
}

/// Sends a request; a lost answer is `Err(class)`: `timeout`, `connect` or `reset`.
async fn send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    let classify = |error: reqwest::Error| {
        if error.is_timeout() {
            "timeout".to_string()
        } else if error.is_connect() {
            "connect".to_string()
        } else {
            "reset".to_string()
        }
    };
    let response = request.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    let text = response.text().await.map_err(classify)?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        replayed,
        json,
        text,
    })
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("build reqwest client")
}

// ---------------------------------------------------------------------------------------------
// The clients.

struct Client {
    task: u64,
    cycle: u64,
    base: String,
    token: String,
    http: reqwest::Client,
    model: Arc<Mutex<Model>>,
    rng: Rng,
    made: u64,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn run(mut self, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
        while !stop.load(Ordering::SeqCst) {
            let roll = self.rng.below(100);
            let done = match roll {
                0..=49 => {
                    self.new_order().await;
                    true
                }
                50..=64 => self.retry().await,
                65..=67 => self.conflicting_retry().await,
                68..=89 => self.action().await,
                90..=96 => self.consume().await,
                _ => self.restock().await,
            };
            if !done {
                self.new_order().await;
            }
            ops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn pick_sku(&mut self) -> usize {
        let total: u64 = SKUS.iter().map(|s| s.weight).sum();
        let mut roll = self.rng.below(total);
        for (index, sku) in SKUS.iter().enumerate() {
            if roll < sku.weight {
                return index;
            }
            roll -= sku.weight;
        }
        0
    }

    /// A random order that is not busy and passes `fit`, marked busy.
    fn pick_order(&mut self, fit: impl Fn(&OrderModel) -> bool) -> Option<(usize, Value)> {
        let mut model = self.model.lock().unwrap();
        let len = model.orders.len() as u64;
        if len == 0 {
            return None;
        }
        for _ in 0..12 {
            // Half the picks among the latest orders, where pending ones still are.
            let index = if self.rng.percent(50) {
                len - 1 - self.rng.below(len.min(60))
            } else {
                self.rng.below(len)
            } as usize;
            let order = &mut model.orders[index];
            if !order.busy && fit(order) {
                order.busy = true;
                return Some((index, order.body.clone()));
            }
        }
        None
    }

    async fn new_order(&mut self) {
        let sku = self.pick_sku();
        let spec = &SKUS[sku];
        let id = format!("o{}-{}-{}", self.cycle, self.task, self.made);
        self.made += 1;
        let user = format!("u{}", self.cycle * USER_STEP + self.rng.below(USER_WINDOW));
        let qty = self.rng.range(1, spec.max_per_order);
        let payment = ["prepaid", "escrow", "cod"][self.rng.below(3) as usize];
        let mut body = json!({"order_id": id, "user_id": user, "sku": spec.name, "qty": qty,
            "payment": payment});
        if self.rng.percent(75) {
            // Bigger records (the address may be 1 KiB) fill the 64 KiB segments sooner.
            let line = "x".repeat(self.rng.range(200, 950) as usize);
            body["address"] = json!({"city": "Oslo", "line": line});
        }
        let index = {
            let mut model = self.model.lock().unwrap();
            model.orders.push(OrderModel {
                id,
                body: body.clone(),
                sku,
                payment,
                seq: None,
                doubt: false,
                known: None,
                busy: true,
                lost: 0,
            });
            model.orders.len() - 1
        };
        let answer = send(self.http.post(self.url("/v1/orders")).json(&body)).await;
        let mut model = self.model.lock().unwrap();
        judge_order_answer(&mut model, index, answer, "order.new");
    }

    async fn retry(&mut self) -> bool {
        let Some((index, body)) = self.pick_order(|_| true) else {
            return false;
        };
        let answer = send(self.http.post(self.url("/v1/orders")).json(&body)).await;
        let mut model = self.model.lock().unwrap();
        judge_order_answer(&mut model, index, answer, "order.retry");
        true
    }

    /// The id of a durable order with other content: always 422 `idempotency_conflict`.
    async fn conflicting_retry(&mut self) -> bool {
        let Some((index, mut body)) = self.pick_order(|o| o.seq.is_some()) else {
            return false;
        };
        body["payment"] = if body["payment"] == "cod" {
            json!("prepaid")
        } else {
            json!("cod")
        };
        let answer = send(self.http.post(self.url("/v1/orders")).json(&body)).await;
        let mut model = self.model.lock().unwrap();
        model.orders[index].busy = false;
        let id = model.orders[index].id.clone();
        match answer {
            Err(class) => model.count(format!("order.conflict error {class}")),
            Ok(answer) => {
                model.count(format!("order.conflict {}", answer.class()));
                if !(answer.status == 422 && answer.code() == "idempotency_conflict"
                    || answer.status == 429)
                {
                    model.violation(format!(
                        "retry of durable order {id} with other content: {} {} (want 422 \
                         idempotency_conflict)",
                        answer.status, answer.text
                    ));
                }
            }
        }
        true
    }

    async fn action(&mut self) -> bool {
        let Some((index, _)) = self.pick_order(|o| o.seq.is_some() || o.doubt) else {
            return false;
        };
        let action = if self.rng.percent(60) {
            "pay"
        } else {
            "cancel"
        };
        let id = self.model.lock().unwrap().orders[index].id.clone();
        let answer = send(
            self.http
                .post(self.url(&format!("/v1/orders/{id}/{action}"))),
        )
        .await;
        let mut model = self.model.lock().unwrap();
        judge_action_answer(&mut model, index, action, answer);
        true
    }

    /// Reads a page of the journal as a consumer would and commits an offset it saw.
    async fn consume(&mut self) -> bool {
        let (group, from) = {
            let mut model = self.model.lock().unwrap();
            let free: Vec<usize> = (0..GROUPS).filter(|&g| !model.groups[g].busy).collect();
            if free.is_empty() {
                return false;
            }
            let group = free[self.rng.below(free.len() as u64) as usize];
            model.groups[group].busy = true;
            let from = self.rng.below(model.max_seq_seen + 1);
            (group, from)
        };
        let page = send(
            self.http
                .get(self.url(&format!("/v1/journal?from={from}&limit=20"))),
        )
        .await;
        let mut commit = None;
        {
            let mut model = self.model.lock().unwrap();
            match page {
                Err(class) => model.count(format!("journal.page error {class}")),
                Ok(page) => {
                    model.count(format!("journal.page {}", page.class()));
                    if page.status == 200 {
                        let lines = page.text.lines().filter(|l| !l.trim().is_empty());
                        for (expected, line) in (from + 1..).zip(lines) {
                            let Ok(record) = serde_json::from_str::<Value>(line) else {
                                model.violation(format!("journal line is not JSON: {line:?}"));
                                break;
                            };
                            let seq = record["seq"].as_u64().unwrap_or(0);
                            if seq != expected {
                                model.violation(format!(
                                    "journal page from {from}: seq {seq} where {expected} was due"
                                ));
                                break;
                            }
                            model.max_seq_seen = model.max_seq_seen.max(seq);
                            if let Some(earlier) = model.seen.get(&seq).cloned()
                                && earlier != record
                            {
                                model.violation(format!(
                                    "journal seq {seq} served as {earlier} and later as {record}"
                                ));
                            }
                            model.seen.insert(seq, record);
                            commit = Some(seq);
                        }
                    } else if page.status != 429 {
                        model.violation(format!(
                            "GET /v1/journal?from={from}: {} {}",
                            page.status, page.text
                        ));
                    }
                }
            }
            if commit.is_none() {
                model.groups[group].busy = false;
                return true;
            }
        }
        let seq = commit.expect("a seq to commit");
        let name = format!("crash-loop-{group}");
        let answer = send(
            self.http
                .put(self.url(&format!("/v1/consumers/{name}/offset")))
                .json(&json!({"seq": seq})),
        )
        .await;
        let mut model = self.model.lock().unwrap();
        model.groups[group].busy = false;
        match answer {
            Err(class) => {
                model.count(format!("offset.commit error {class}"));
                model.groups[group].maybe.push(seq);
            }
            Ok(answer) => {
                model.count(format!("offset.commit {}", answer.class()));
                let durable = answer.json["durable_seq"].as_u64().unwrap_or(0);
                if answer.status == 200
                    && answer.json["group"] == name.as_str()
                    && answer.json["seq"] == seq
                    && durable >= seq
                    && answer.json["lag"] == durable - seq
                {
                    model.groups[group].certain = Some(seq);
                } else {
                    model.violation(format!(
                        "commit of group {name} at seq {seq} (read from the journal): {} {}",
                        answer.status, answer.text
                    ));
                }
            }
        }
        true
    }

    /// Raises a hot SKU's stock by a few units (`PUT /v1/skus/{sku}`).
    async fn restock(&mut self) -> bool {
        let sku = self.rng.below(3) as usize;
        let stock = {
            let mut model = self.model.lock().unwrap();
            let register = &mut model.stock[sku];
            if register.busy {
                return false;
            }
            register.busy = true;
            register.sent_max += self.rng.range(1, 4);
            register.sent_max
        };
        let name = SKUS[sku].name;
        let answer = send(
            self.http
                .put(self.url(&format!("/v1/skus/{name}")))
                .bearer_auth(&self.token)
                .json(&json!({"stock": stock})),
        )
        .await;
        let mut model = self.model.lock().unwrap();
        model.stock[sku].busy = false;
        match answer {
            Err(class) => {
                model.count(format!("sku.restock error {class}"));
                model.stock[sku].maybe.push(stock);
            }
            Ok(answer) => {
                model.count(format!("sku.restock {}", answer.class()));
                if answer.status == 200 && answer.json["stock_total"] == stock {
                    model.stock[sku].certain = Some(stock);
                    model.restocks_done.push((sku, stock));
                } else {
                    model.violation(format!(
                        "restock of {name} to {stock}: {} {}",
                        answer.status, answer.text
                    ));
                }
            }
        }
        true
    }
}

/// Judges the answer to `POST /v1/orders` with the order's own body.
fn judge_order_answer(model: &mut Model, index: usize, answer: Result<Answer, String>, op: &str) {
    model.touched.insert(index);
    let answer = match answer {
        Err(class) => {
            model.count(format!("{op} error {class}"));
            let order = &mut model.orders[index];
            order.busy = false;
            order.lost += 1;
            if order.seq.is_none() {
                // Accepted or not, nobody knows; a stopped engine may still decide it.
                order.doubt = true;
                order.known = None;
            }
            return;
        }
        Ok(answer) => answer,
    };
    model.count(format!("{op} {}", answer.class()));
    let order = &mut model.orders[index];
    order.busy = false;
    let id = order.id.clone();
    let mut wrong = None;
    match (answer.status, answer.code()) {
        (201, _) => {
            let seq = answer.json["seq"].as_u64();
            if let Some(earlier) = order.seq {
                wrong = Some(format!(
                    "order {id} answered 201 again ({}), it had seq {earlier}",
                    answer.text
                ));
            } else if answer.replayed
                || seq.is_none_or(|seq| answer.json != order.expected_replay(seq))
            {
                wrong = Some(format!("201 body of {id}: {}", answer.text));
            } else {
                order.seq = seq;
                if !order.doubt {
                    order.known = Some(initial_status(order.payment).to_string());
                }
            }
            if let Some(seq) = seq {
                model.max_seq_seen = model.max_seq_seen.max(seq);
                model.acked_recently.push(index);
            }
        }
        (200, _) => {
            let seq = answer.json["seq"].as_u64();
            match (order.seq, seq) {
                _ if !answer.replayed => {
                    wrong = Some(format!("200 for {id} without Idempotent-Replayed"));
                }
                (_, None) => wrong = Some(format!("200 replay of {id}: {}", answer.text)),
                (Some(known), Some(seq)) => {
                    if answer.json != order.expected_replay(known) {
                        wrong = Some(format!(
                            "replay of {id} (seq {known}) answered {} (seq {seq})",
                            answer.text
                        ));
                    }
                }
                (None, Some(seq)) if order.doubt => {
                    if answer.json == order.expected_replay(seq) {
                        // An attempt whose answer was lost was accepted: resolved.
                        order.seq = Some(seq);
                        model.acked_recently.push(index);
                    } else {
                        wrong = Some(format!("200 replay of {id}: {}", answer.text));
                    }
                }
                (None, Some(_)) => {
                    wrong = Some(format!(
                        "order {id} replayed ({}) though it was never accepted: every answer \
                         since the last audit was a refusal",
                        answer.text
                    ));
                }
            }
        }
        (409, "sold_out" | "purchase_limit") => {
            if let Some(seq) = order.seq {
                wrong = Some(format!(
                    "retry of durable order {id} (seq {seq}) refused: {}",
                    answer.text
                ));
            }
        }
        (429, "overloaded") => {}
        _ => {
            wrong = Some(format!(
                "order {id} ({}): unexpected {} {}",
                order.body, answer.status, answer.text
            ));
        }
    }
    if let Some(message) = wrong {
        model.violation(message);
    }
}

/// The status named by an `invalid_transition` detail: "order o1 is paid; ship is not ...".
fn refused_status<'a>(detail: &'a str, id: &str) -> Option<&'a str> {
    detail
        .strip_prefix(&format!("order {id} is "))?
        .split(';')
        .next()
}

/// Judges the answer to `POST /v1/orders/{id}/{action}`.
fn judge_action_answer(
    model: &mut Model,
    index: usize,
    action: &'static str,
    answer: Result<Answer, String>,
) {
    model.touched.insert(index);
    let answer = match answer {
        Err(class) => {
            model.count(format!("action.{action} error {class}"));
            let order = &mut model.orders[index];
            order.busy = false;
            order.lost += 1;
            order.doubt = true;
            order.known = None;
            return;
        }
        Ok(answer) => answer,
    };
    model.count(format!("action.{action} {}", answer.class()));
    let order = &mut model.orders[index];
    order.busy = false;
    let id = order.id.clone();
    let candidates = order.candidates();
    let mut wrong = None;
    match (answer.status, answer.code()) {
        (200, _) => {
            let target = transition(PENDING, action)
                .or(transition("confirmed", action))
                .expect("pay and cancel have a target");
            let allowed = candidates.iter().any(|&from| {
                if answer.replayed {
                    is_replay(from, action)
                } else {
                    transition(from, action).is_some()
                }
            });
            let history = answer.json["history"].as_array();
            let last_event = history.and_then(|h| h.last()).map(|e| e["event"].clone());
            let first_seq = history
                .and_then(|h| h.first())
                .and_then(|e| e["seq"].as_u64());
            if !allowed
                || answer.json["order_id"] != id.as_str()
                || (!order.doubt && answer.json["status"] != target)
                || (!order.doubt && last_event != Some(json!(action)))
                || order.seq.is_some_and(|seq| first_seq != Some(seq))
            {
                wrong = Some(format!(
                    "{action} of {id} (could be {candidates:?}, replayed {}) answered 200 {}",
                    answer.replayed, answer.text
                ));
            } else {
                if !order.doubt {
                    order.known = Some(target.to_string());
                }
                model.actions_done.push((index, action));
            }
        }
        (409, "invalid_transition") => {
            let detail = answer.json["detail"].as_str().unwrap_or("");
            match refused_status(detail, &id).map(status_static) {
                Some(from)
                    if candidates.contains(&from)
                        && transition(from, action).is_none()
                        && !is_replay(from, action) =>
                {
                    if !order.doubt {
                        order.known = Some(from.to_string());
                    }
                }
                _ => {
                    wrong = Some(format!(
                        "{action} of {id} (could be {candidates:?}) refused: {}",
                        answer.text
                    ));
                }
            }
        }
        (404, "unknown_order") => {
            if let Some(seq) = order.seq {
                wrong = Some(format!(
                    "{action} of {id} (accepted at seq {seq}): 404 {}",
                    answer.text
                ));
            }
        }
        (429, "overloaded") => {}
        _ => {
            wrong = Some(format!(
                "{action} of {id}: unexpected {} {}",
                answer.status, answer.text
            ));
        }
    }
    if let Some(message) = wrong {
        model.violation(message);
    }
}

// ---------------------------------------------------------------------------------------------
// The journal, folded with the same rules the engine promises.

#[derive(Debug, Clone, PartialEq)]
struct SkuFold {
    stock_total: u64,
    per_user_limit: u64,
    max_per_order: u64,
    payment_timeout_s: u64,
    reserved: u64,
    sold: u64,
}

#[derive(Debug, Clone)]
struct OrderFold {
    user: String,
    sku: String,
    qty: u64,
    payment: String,
    address: Value,
    seq: u64,
    status: String,
    /// (type, seq) of each record, oldest first.
    chain: Vec<(String, u64)>,
}

#[derive(Debug, Default)]
struct Fold {
    records: Vec<Value>,
    skus: BTreeMap<String, SkuFold>,
    orders: HashMap<String, OrderFold>,
    /// Units held per (user, sku): accepted and not given back.
    held: HashMap<(String, String), u64>,
    types: BTreeMap<String, u64>,
    violations: Vec<String>,
    /// Orders with records folded since the last `take_changed`.
    changed: HashSet<String>,
}

impl Fold {
    fn last_seq(&self) -> u64 {
        self.records.len() as u64
    }

    fn violation(&mut self, message: String) {
        self.violations.push(message);
    }

    fn apply(&mut self, record: Value) {
        let seq = record["seq"].as_u64().unwrap_or(0);
        let expected = self.last_seq() + 1;
        if seq != expected {
            self.violation(format!(
                "journal seq {seq} where {expected} was due: {record}"
            ));
        }
        let kind = record["type"].as_str().unwrap_or("").to_string();
        *self.types.entry(kind.clone()).or_default() += 1;
        match kind.as_str() {
            "sku" => self.apply_sku(seq, &record),
            "accepted" => self.apply_accepted(seq, &record),
            "pay" | "cancel" | "payment_reminder" | "expired" => {
                self.apply_action(seq, &kind, &record);
            }
            _ => self.violation(format!(
                "seq {seq}: a record type this run never causes: {record}"
            )),
        }
        self.records.push(record);
    }

    fn apply_sku(&mut self, seq: u64, record: &Value) {
        let name = record["sku"].as_str().unwrap_or("").to_string();
        let field = |name: &str| record[name].as_u64().unwrap_or(0);
        let settings = SkuFold {
            stock_total: field("stock_total"),
            per_user_limit: field("per_user_limit"),
            max_per_order: field("max_per_order"),
            payment_timeout_s: field("payment_timeout_s"),
            reserved: 0,
            sold: 0,
        };
        let stock_total = settings.stock_total;
        if let Some(spec) = SKUS.iter().find(|spec| spec.name == name)
            && (
                settings.per_user_limit,
                settings.max_per_order,
                settings.payment_timeout_s,
            ) != (
                spec.per_user_limit,
                spec.max_per_order,
                spec.payment_timeout_s,
            )
        {
            self.violation(format!(
                "seq {seq}: {name} has settings {settings:?}; this run only ever sets {spec:?}"
            ));
        }
        let sku = self.skus.entry(name.clone()).or_insert(settings.clone());
        let taken = sku.reserved + sku.sold;
        sku.stock_total = stock_total;
        sku.per_user_limit = settings.per_user_limit;
        sku.max_per_order = settings.max_per_order;
        sku.payment_timeout_s = settings.payment_timeout_s;
        if taken > stock_total {
            self.violation(format!(
                "seq {seq}: {name} set to stock {stock_total} below the {taken} units taken"
            ));
        }
    }

    fn apply_accepted(&mut self, seq: u64, record: &Value) {
        let id = record["order_id"].as_str().unwrap_or("").to_string();
        let user = record["user_id"].as_str().unwrap_or("").to_string();
        let sku_name = record["sku"].as_str().unwrap_or("").to_string();
        let qty = record["qty"].as_u64().unwrap_or(0);
        let payment = record["payment"].as_str().unwrap_or("").to_string();
        if let Some(first) = self.orders.get(&id) {
            let first = first.seq;
            self.violation(format!(
                "order {id} journaled twice: seq {first} and seq {seq}"
            ));
            return;
        }
        let Some(sku) = self.skus.get_mut(&sku_name) else {
            self.violation(format!("seq {seq}: order {id} of unknown SKU {sku_name}"));
            return;
        };
        let status = initial_status(&payment);
        if status == PENDING {
            sku.reserved += qty;
        } else {
            sku.sold += qty;
        }
        let (taken, total) = (sku.reserved + sku.sold, sku.stock_total);
        let (limit, max_per_order) = (sku.per_user_limit, sku.max_per_order);
        let held = self
            .held
            .entry((user.clone(), sku_name.clone()))
            .or_default();
        *held += qty;
        let held = *held;
        if taken > total {
            self.violation(format!(
                "seq {seq}: {sku_name} oversold by order {id}: {taken} units taken of {total}"
            ));
        }
        if limit > 0 && held > limit {
            self.violation(format!(
                "seq {seq}: user {user} holds {held} units of {sku_name} (limit {limit}) \
                 after order {id}"
            ));
        }
        if qty == 0 || qty > max_per_order {
            self.violation(format!(
                "seq {seq}: order {id} of {qty} units (max_per_order {max_per_order})"
            ));
        }
        self.changed.insert(id.clone());
        self.orders.insert(
            id,
            OrderFold {
                user,
                sku: sku_name,
                qty,
                payment,
                address: record.get("address").cloned().unwrap_or(Value::Null),
                seq,
                status: status.to_string(),
                chain: vec![("accepted".to_string(), seq)],
            },
        );
    }

    fn apply_action(&mut self, seq: u64, kind: &str, record: &Value) {
        let id = record["order_id"].as_str().unwrap_or("").to_string();
        let Some(order) = self.orders.get_mut(&id) else {
            self.violation(format!("seq {seq}: {kind} of unknown order {id}"));
            return;
        };
        self.changed.insert(id.clone());
        let last = order.chain.last().map_or(0, |(_, s)| *s);
        let mut wrong = Vec::new();
        if record["prev_seq"].as_u64() != Some(last) {
            wrong.push(format!(
                "seq {seq}: {kind} of {id} has prev_seq {} where {last} was due",
                record["prev_seq"]
            ));
        }
        let Some(next) = transition(&order.status, kind) else {
            let status = order.status.clone();
            self.violation(format!(
                "seq {seq}: {kind} of {id} journaled while it was {status}"
            ));
            return;
        };
        if record["status"] != next {
            wrong.push(format!(
                "seq {seq}: {kind} of {id} says status {} where {next} was due",
                record["status"]
            ));
        }
        let before = std::mem::replace(&mut order.status, next.to_string());
        order.chain.push((kind.to_string(), seq));
        let (qty, user, sku_name) = (order.qty, order.user.clone(), order.sku.clone());
        let sku = self.skus.get_mut(&sku_name).expect("the order's SKU");
        let from_reserved = before == PENDING;
        match kind {
            "pay" => {
                sku.reserved -= qty;
                sku.sold += qty;
            }
            "cancel" | "expired" => {
                if from_reserved {
                    sku.reserved -= qty;
                } else {
                    sku.sold -= qty;
                }
                let held = self.held.entry((user, sku_name)).or_default();
                *held = held.saturating_sub(qty);
            }
            _ => {}
        }
        for message in wrong {
            self.violation(message);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The audit.

/// Figures of the whole run.
#[derive(Debug, Default)]
struct Figures {
    kills: u64,
    stops: u64,
    killed_while_stopped: u64,
    restarts: u64,
    torn_tails: u64,
    audits: u64,
    orders_read_back: u64,
    retries_after_restart: u64,
    doubt_journaled: u64,
    doubt_not_journaled: u64,
    actions_verified: u64,
    offsets_verified: u64,
    records_compared: u64,
    phase_timeouts: u64,
    /// The engine's WARN and ERROR lines, by text with digits masked (every incarnation).
    log_lines: BTreeMap<String, u64>,
    violations: u64,
}

struct Auditor {
    seed: u64,
    http: reqwest::Client,
    fold: Fold,
    figures: Figures,
}

impl Auditor {
    /// Counts the WARN and ERROR lines of the incarnation that just ended; a panic in the
    /// engine is a violation whatever the clients saw.
    fn scan_log(&mut self, server: &Server) -> Vec<String> {
        let mut wrong = Vec::new();
        for line in server.lines() {
            if line.contains("panicked") {
                wrong.push(format!("the engine panicked: {line}"));
            }
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                let masked: String = line
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                let text = masked
                    .split_once(" WARN ")
                    .or_else(|| masked.split_once(" ERROR "))
                    .map_or(masked.as_str(), |(_, rest)| rest);
                *self.figures.log_lines.entry(text.to_string()).or_default() += 1;
            }
        }
        wrong
    }

    fn fail(&self, message: String) -> ! {
        panic!(
            "crash_loop failed (seed {seed}; replay with CRASH_LOOP_SEED={seed}): {message}",
            seed = self.seed
        );
    }

    async fn get(&self, base: &str, path: &str) -> Answer {
        match send(self.http.get(format!("{base}{path}"))).await {
            Ok(answer) => answer,
            Err(class) => self.fail(format!("audit GET {path}: {class}")),
        }
    }

    /// `GET /v1/journal` pages from `from` to the end.
    async fn read_journal(&self, base: &str, from: u64) -> Vec<Value> {
        let mut records = Vec::new();
        let mut from = from;
        loop {
            let page = self
                .get(base, &format!("/v1/journal?from={from}&limit=2000"))
                .await;
            if page.status != 200 {
                self.fail(format!(
                    "GET /v1/journal?from={from}: {} {}",
                    page.status, page.text
                ));
            }
            let mut count = 0;
            for line in page.text.lines().filter(|l| !l.trim().is_empty()) {
                let record: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| self.fail(format!("journal line {line:?}: {e}")));
                from = record["seq"].as_u64().unwrap_or(from);
                records.push(record);
                count += 1;
            }
            if count < 2000 {
                return records;
            }
        }
    }

    /// Folds what the journal gained since the last read.
    async fn pull(&mut self, base: &str) {
        for record in self.read_journal(base, self.fold.last_seq()).await {
            self.fold.apply(record);
        }
    }

    /// Everything read before is still there, unchanged (`full`: the whole journal, else the
    /// last 200 records).
    async fn compare_prefix(&mut self, base: &str, full: bool) -> Vec<String> {
        let known = self.fold.last_seq();
        let from = if full { 0 } else { known.saturating_sub(200) };
        let again = self.read_journal(base, from).await;
        let mut wrong = Vec::new();
        if (again.len() as u64) < known - from {
            wrong.push(format!(
                "the journal ends at seq {} after the restart; {known} records were read before",
                from + again.len() as u64
            ));
        }
        for (offset, record) in again.iter().enumerate() {
            let seq = from + offset as u64 + 1;
            if seq > known {
                break;
            }
            self.figures.records_compared += 1;
            if *record != self.fold.records[seq as usize - 1] {
                wrong.push(format!(
                    "journal seq {seq} changed across a restart: was {}, now {record}",
                    self.fold.records[seq as usize - 1]
                ));
                if wrong.len() > 5 {
                    break;
                }
            }
        }
        wrong
    }

    /// The SKUs as the engine shows them, compared with the fold; retried while timers move
    /// the journal.
    async fn check_skus(&mut self, base: &str) -> Vec<String> {
        let mut wrong = Vec::new();
        for attempt in 0..20 {
            self.pull(base).await;
            let last = self.fold.last_seq();
            wrong.clear();
            for (name, sku) in &self.fold.skus {
                let view = self.get(base, &format!("/v1/skus/{name}")).await;
                let field = |f: &str| view.json[f].as_u64().unwrap_or(u64::MAX);
                let engine = SkuFold {
                    stock_total: field("stock_total"),
                    per_user_limit: field("per_user_limit"),
                    max_per_order: field("max_per_order"),
                    payment_timeout_s: field("payment_timeout_s"),
                    reserved: field("reserved"),
                    sold: field("sold"),
                };
                let balanced = field("available")
                    .checked_add(engine.reserved)
                    .and_then(|sum| sum.checked_add(engine.sold))
                    == Some(engine.stock_total);
                if view.status != 200 || engine != *sku || !balanced {
                    wrong.push(format!(
                        "SKU {name}: the engine shows {} {}, the journal (to seq {last}) says \
                         {sku:?}",
                        view.status, view.text
                    ));
                }
            }
            if wrong.is_empty() {
                return wrong;
            }
            self.pull(base).await;
            if self.fold.last_seq() == last && attempt >= 3 {
                // A stable journal that still disagrees: wait a little for a commit in
                // flight, then give up after the last attempt.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        wrong
    }

    /// `GET /v1/orders/{id}` of `ids`, compared with the fold; retried while timers move the
    /// journal.
    async fn check_orders(&mut self, base: &str, ids: Vec<String>) -> Vec<String> {
        let mut pending = ids;
        let mut wrong = Vec::new();
        for attempt in 0..10 {
            wrong.clear();
            let mut mismatched = Vec::new();
            for chunk in pending.chunks(16) {
                let mut set = tokio::task::JoinSet::new();
                for id in chunk {
                    let (http, url, id) = (
                        self.http.clone(),
                        format!("{base}/v1/orders/{id}"),
                        id.clone(),
                    );
                    set.spawn(async move { (id, send(http.get(url)).await) });
                }
                while let Some(joined) = set.join_next().await {
                    let (id, answer) = joined.expect("order read task");
                    let answer = answer
                        .unwrap_or_else(|class| self.fail(format!("GET order {id}: {class}")));
                    self.figures.orders_read_back += 1;
                    if let Some(problem) = self.order_mismatch(&id, &answer) {
                        mismatched.push(id);
                        wrong.push(problem);
                    }
                }
            }
            if mismatched.is_empty() {
                break;
            }
            let before = self.fold.last_seq();
            self.pull(base).await;
            if self.fold.last_seq() == before && attempt >= 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pending = mismatched;
        }
        wrong
    }

    fn order_mismatch(&self, id: &str, answer: &Answer) -> Option<String> {
        let Some(order) = self.fold.orders.get(id) else {
            return (!(answer.status == 404 && answer.code() == "unknown_order")).then(|| {
                format!(
                    "order {id} is not in the journal, GET says {} {}",
                    answer.status, answer.text
                )
            });
        };
        let view = &answer.json;
        let history: Vec<(String, u64)> = view["history"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        (
                            item["event"].as_str().unwrap_or("").to_string(),
                            item["seq"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let same = answer.status == 200
            && view["status"] == order.status.as_str()
            && view["user_id"] == order.user.as_str()
            && view["sku"] == order.sku.as_str()
            && view["qty"] == order.qty
            && view["payment"] == order.payment.as_str()
            && view.get("address").unwrap_or(&Value::Null) == &order.address
            && history == order.chain;
        (!same).then(|| {
            format!(
                "order {id}: GET says {} {}, the journal says {order:?}",
                answer.status, answer.text
            )
        })
    }

    /// Everything the clients were told since the last audit, against the journal; then the
    /// model is reset to what the journal says. Returns the violations.
    fn check_model(&mut self, model: &mut Model) -> Vec<String> {
        let mut wrong = Vec::new();
        let by_id: HashMap<String, usize> = model
            .orders
            .iter()
            .enumerate()
            .map(|(index, order)| (order.id.clone(), index))
            .collect();
        for id in self.fold.orders.keys() {
            if !by_id.contains_key(id) {
                wrong.push(format!(
                    "the journal holds order {id}, which no client sent"
                ));
            }
        }
        for order in &mut model.orders {
            let journaled = self.fold.orders.get(&order.id);
            match (order.seq, journaled) {
                (Some(seq), None) => wrong.push(format!(
                    "order {} was acknowledged with seq {seq} and is not in the journal",
                    order.id
                )),
                (Some(seq), Some(record)) if record.seq != seq => wrong.push(format!(
                    "order {} was acknowledged with seq {seq}, the journal has it at seq {}",
                    order.id, record.seq
                )),
                (None, Some(record)) if !order.doubt => wrong.push(format!(
                    "order {} is in the journal (seq {}) though every answer was a refusal",
                    order.id, record.seq
                )),
                (None, Some(record)) => {
                    self.figures.doubt_journaled += 1;
                    order.seq = Some(record.seq);
                }
                (None, None) if order.doubt => self.figures.doubt_not_journaled += 1,
                _ => {}
            }
            if let Some(record) = journaled {
                let body = &order.body;
                if body["user_id"] != record.user.as_str()
                    || body["sku"] != record.sku.as_str()
                    || body["qty"] != record.qty
                    || body["payment"] != record.payment.as_str()
                    || body.get("address").unwrap_or(&Value::Null) != &record.address
                {
                    wrong.push(format!(
                        "order {} was sent as {body}, the journal has {record:?}",
                        order.id
                    ));
                }
                if !order.doubt
                    && let Some(known) = &order.known
                {
                    let timer_expiry = known == PENDING
                        && record.status == "expired"
                        && SKUS[order.sku].has_timer();
                    if *known != record.status && !timer_expiry {
                        wrong.push(format!(
                            "order {}: the answers say {known}, the journal says {}",
                            order.id, record.status
                        ));
                    }
                }
            }
            order.known = journaled.map(|record| record.status.clone());
            order.doubt = false;
        }
        for (index, action) in model.actions_done.drain(..) {
            let order = &model.orders[index];
            self.figures.actions_verified += 1;
            let found = self
                .fold
                .orders
                .get(&order.id)
                .is_some_and(|record| record.chain.iter().any(|(kind, _)| kind == action));
            if !found {
                wrong.push(format!(
                    "{action} of {} was answered 200 and is not in the journal",
                    order.id
                ));
            }
        }
        for (sku, stock) in model.restocks_done.drain(..) {
            let name = SKUS[sku].name;
            let found = self
                .fold
                .records
                .iter()
                .rev()
                .any(|r| r["type"] == "sku" && r["sku"] == name && r["stock_total"] == stock);
            if !found {
                wrong.push(format!(
                    "restock of {name} to {stock} was answered 200 and is not in the journal"
                ));
            }
        }
        for (seq, record) in std::mem::take(&mut model.seen) {
            self.figures.records_compared += 1;
            match self.fold.records.get(seq as usize - 1) {
                Some(journaled) if *journaled == record => {}
                other => wrong.push(format!(
                    "a client read journal seq {seq} as {record}; after the restart it is {other:?}"
                )),
            }
        }
        for (index, sku) in SKUS.iter().enumerate().take(3) {
            let now = self.fold.skus.get(sku.name).map(|s| s.stock_total);
            let register = &mut model.stock[index];
            if !register.allows(now) {
                wrong.push(format!(
                    "{}: stock_total {now:?}; the last restock answered 200 set {:?}, \
                     uncertain ones {:?}",
                    sku.name, register.certain, register.maybe
                ));
            }
            register.certain = now;
            register.maybe.clear();
        }
        wrong
    }

    /// Consumer offsets against the model and the journal's end.
    async fn check_offsets(&mut self, base: &str, model: &Mutex<Model>) -> Vec<String> {
        let mut wrong = Vec::new();
        let last = self.fold.last_seq();
        for group in 0..GROUPS {
            let name = format!("crash-loop-{group}");
            let answer = self
                .get(base, &format!("/v1/consumers/{name}/offset"))
                .await;
            let now = match (answer.status, answer.code()) {
                (200, _) => answer.json["seq"].as_u64(),
                (404, "unknown_group") => None,
                _ => {
                    wrong.push(format!(
                        "offset of {name}: {} {}",
                        answer.status, answer.text
                    ));
                    continue;
                }
            };
            self.figures.offsets_verified += 1;
            if now.is_some_and(|seq| seq > last) {
                wrong.push(format!(
                    "group {name} is at seq {now:?}, past the journal's last seq {last}"
                ));
            }
            let mut model = model.lock().unwrap();
            let register = &mut model.groups[group];
            if !register.allows(now) {
                wrong.push(format!(
                    "group {name} is at {now:?}; the last commit answered 200 was {:?}, \
                     uncertain ones {:?}",
                    register.certain, register.maybe
                ));
            }
            register.certain = now;
            register.maybe.clear();
        }
        wrong
    }

    /// Retries of acknowledged orders after a restart: 200, replayed, the original body.
    async fn check_retries(
        &mut self,
        base: &str,
        retries: Vec<(String, Value, Value)>,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        for chunk in retries.chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for (id, body, expected) in chunk.iter().cloned() {
                let http = self.http.clone();
                let url = format!("{base}/v1/orders");
                set.spawn(async move { (id, expected, send(http.post(url).json(&body)).await) });
            }
            while let Some(joined) = set.join_next().await {
                let (id, expected, answer) = joined.expect("retry task");
                let answer =
                    answer.unwrap_or_else(|class| self.fail(format!("retry of {id}: {class}")));
                self.figures.retries_after_restart += 1;
                if answer.status != 200 || !answer.replayed || answer.json != expected {
                    wrong.push(format!(
                        "retry of {id} after a restart: {} (replayed {}) {}, want 200 {expected}",
                        answer.status, answer.replayed, answer.text
                    ));
                }
            }
        }
        wrong
    }

    /// The audit after a restart (or at the end, `full`).
    async fn audit(
        &mut self,
        server: &Server,
        model: &Mutex<Model>,
        rng: &mut Rng,
        full: bool,
    ) -> Vec<String> {
        self.figures.audits += 1;
        let base = server.base_url.clone();
        let full_compare = full || self.figures.audits % 10 == 1 || self.fold.last_seq() < 3000;
        let mut wrong = self.compare_prefix(&base, full_compare).await;
        self.pull(&base).await;
        wrong.extend(self.check_skus(&base).await);

        // Orders to read back: those the clients touched, those the journal changed, a
        // sample of the rest (all at the end).
        let ids: Vec<String> = {
            let model = model.lock().unwrap();
            let mut ids: HashSet<String> = model
                .touched
                .iter()
                .map(|&i| model.orders[i].id.clone())
                .collect();
            ids.extend(std::mem::take(&mut self.fold.changed));
            if full {
                ids.extend(model.orders.iter().map(|o| o.id.clone()));
            } else if !model.orders.is_empty() {
                for _ in 0..20 {
                    let index = rng.below(model.orders.len() as u64) as usize;
                    ids.insert(model.orders[index].id.clone());
                }
            }
            let mut ids: Vec<String> = ids.into_iter().collect();
            ids.sort();
            ids
        };
        wrong.extend(self.check_orders(&base, ids).await);
        // Timers may have moved the journal during the reads above.
        self.pull(&base).await;
        let retries = {
            let mut model = model.lock().unwrap();
            wrong.extend(self.check_model(&mut model));
            let mut picked: Vec<usize> = std::mem::take(&mut model.acked_recently);
            if full {
                picked = (0..model.orders.len()).collect();
            } else if !model.orders.is_empty() {
                for _ in 0..10 {
                    picked.push(rng.below(model.orders.len() as u64) as usize);
                }
            }
            picked.sort_unstable();
            picked.dedup();
            model.touched.clear();
            picked
                .into_iter()
                .filter_map(|index| {
                    let order = &model.orders[index];
                    order.seq.map(|seq| {
                        (
                            order.id.clone(),
                            order.body.clone(),
                            order.expected_replay(seq),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        wrong.extend(self.check_retries(&base, retries).await);
        wrong.extend(self.check_offsets(&base, model).await);
        wrong.extend(std::mem::take(&mut self.fold.violations));
        let mut model = model.lock().unwrap();
        wrong.extend(std::mem::take(&mut model.violations));
        wrong
    }
}

// ---------------------------------------------------------------------------------------------
// The loop.

#[derive(Debug)]
struct Settings {
    kills: u64,
    seed: u64,
    /// `CRASH_LOOP_VERBOSE=1`: one line per cycle.
    verbose: bool,
    /// Self-test only: after this kill, cut the journal back before the last record the
    /// previous audit read (a lost tail, as a broken engine would leave it).
    sabotage_after_kill: Option<u64>,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str| {
            std::env::var(name).ok().map(|text| {
                text.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("{name}={text:?}: {e}"))
            })
        };
        let seed = number("CRASH_LOOP_SEED").unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        Settings {
            kills: number("CRASH_LOOP_KILLS").unwrap_or(DEFAULT_KILLS),
            seed,
            verbose: number("CRASH_LOOP_VERBOSE").is_some_and(|v| v > 0),
            sabotage_after_kill: None,
        }
    }
}

/// Prints the seed when the run panics, whatever panicked (the harness included).
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash_loop: FAILED with seed {seed}; replay with CRASH_LOOP_SEED={seed}",
                seed = self.0
            );
        }
    }
}

/// How one cycle ends: after `kill_after` client operations, SIGKILL; with a pause, SIGSTOP
/// after `stop_at` operations for `pause`, then (unless killed while stopped) SIGCONT and
/// `after_cont` more operations before the kill.
#[derive(Debug)]
struct Plan {
    kill_after: u64,
    stop: Option<(u64, Duration, bool, u64)>,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        // Now and then at once: the clients' first requests meet the kill, and so do the
        // payment timers that recovery found overdue and fires on each shard's first turn.
        let kill_after = if rng.percent(6) {
            0
        } else {
            rng.range(10, 120)
        };
        let stop = (kill_after > 0 && rng.percent(35)).then(|| {
            (
                rng.range(1, kill_after),
                Duration::from_millis(rng.range(50, 1500)),
                rng.percent(30),
                rng.range(0, 25),
            )
        });
        Plan { kill_after, stop }
    }
}

/// The first violations, one a line, each cut to a readable length (records with 1 KiB
/// addresses are long).
fn listing(wrong: &[String]) -> String {
    const LINE_MAX: usize = 700;
    wrong
        .iter()
        .take(30)
        .map(|line| match line.char_indices().nth(LINE_MAX) {
            Some((cut, _)) => format!("{} ...", &line[..cut]),
            None => line.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Removes the record `seq` and everything after it from the journal files.
fn cut_journal_at(server: &Server, seq: u64) {
    let mut cut = false;
    for segment in server.segments() {
        if cut {
            std::fs::remove_file(&segment).expect("remove segment");
            continue;
        }
        let bytes = std::fs::read(&segment).expect("read segment");
        if let Some(&(offset, ..)) = common::segment_frames(&bytes)
            .iter()
            .find(|&&(.., frame_seq)| frame_seq == seq)
        {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .expect("open segment");
            file.set_len(offset as u64).expect("cut segment");
            cut = true;
        }
    }
    assert!(cut, "no frame with seq {seq}");
}

fn signal(server: &Server, signal: libc::c_int) {
    if let Some(pid) = server.pid() {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// Waits until `ops` reaches `target` (or the phase's deadline passes: `false`).
async fn wait_ops(ops: &AtomicU64, target: u64, deadline: Instant) -> bool {
    while ops.load(Ordering::SeqCst) < target {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

async fn run(settings: Settings) {
    let seed = settings.seed;
    let _seed_guard = SeedOnPanic(seed);
    eprintln!(
        "crash_loop: seed {seed} kills {} (replay with CRASH_LOOP_SEED={seed})",
        settings.kills
    );
    let started = Instant::now();
    let mut rng = Rng::derive(seed, u64::MAX, 0);
    let opts = Opts {
        env: vec![(
            "STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX".to_string(),
            "65536".to_string(),
        )],
        ..Opts::default().fsync("always").shards(2)
    };
    let mut server = Server::start(opts).await;
    for spec in &SKUS {
        let reply = server
            .put_sku(
                spec.name,
                &json!({"stock": spec.stock, "per_user_limit": spec.per_user_limit,
                    "max_per_order": spec.max_per_order, "payment_timeout_s": spec.payment_timeout_s}),
            )
            .await;
        assert_eq!(reply.status, 200, "PUT {}: {}", spec.name, reply.text);
    }
    let model = Arc::new(Mutex::new(Model {
        seed,
        groups: (0..GROUPS).map(|_| Register::default()).collect(),
        stock: SKUS
            .iter()
            .map(|s| Register {
                certain: Some(s.stock),
                sent_max: s.stock,
                ..Register::default()
            })
            .collect(),
        ..Model::default()
    }));
    let mut auditor = Auditor {
        seed,
        http: http_client(AUDIT_TIMEOUT),
        fold: Fold::default(),
        figures: Figures::default(),
    };
    auditor.pull(&server.base_url).await;

    for cycle in 0..settings.kills {
        model.lock().unwrap().cycle = cycle;
        let plan = Plan::draw(&mut rng);
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for task in 0..CLIENTS as u64 {
            let client = Client {
                task,
                cycle,
                base: server.base_url.clone(),
                token: server.admin_token.clone(),
                http: http_client(CLIENT_TIMEOUT),
                model: model.clone(),
                rng: Rng::derive(seed, cycle, task),
                made: 0,
            };
            tasks.push(tokio::spawn(client.run(stop.clone(), ops.clone())));
        }

        let deadline = Instant::now() + PHASE_MAX;
        let mut in_time = true;
        if let Some((stop_at, pause, kill_while_stopped, after_cont)) = plan.stop {
            in_time &= wait_ops(&ops, stop_at, deadline).await;
            signal(&server, libc::SIGSTOP);
            auditor.figures.stops += 1;
            tokio::time::sleep(pause).await;
            if kill_while_stopped {
                auditor.figures.killed_while_stopped += 1;
            } else {
                signal(&server, libc::SIGCONT);
                let target = ops.load(Ordering::SeqCst) + after_cont;
                in_time &= wait_ops(&ops, target, deadline).await;
            }
        } else {
            in_time &= wait_ops(&ops, plan.kill_after, deadline).await;
        }
        if !in_time {
            auditor.figures.phase_timeouts += 1;
        }
        server.send_sigkill();
        stop.store(true, Ordering::SeqCst);
        let killed_at = Instant::now();
        auditor.figures.kills += 1;
        for task in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout(JOIN_MAX, task).await {
                Ok(joined) => joined.expect("client task"),
                Err(_) => {
                    abort.abort();
                    auditor.fail(format!("a client did not return within {JOIN_MAX:?}"));
                }
            }
        }
        server.kill9();
        let engine_wrong = auditor.scan_log(&server);
        if settings.sabotage_after_kill == Some(cycle + 1) {
            cut_journal_at(&server, auditor.fold.last_seq());
        }
        if let Err(failure) = server.try_restart().await {
            auditor.fail(format!(
                "restart after kill {} failed: {} (status {:?})\n{}",
                cycle + 1,
                failure.reason,
                failure.status,
                failure.output
            ));
        }
        auditor.figures.restarts += 1;
        if server.output().contains("torn") {
            auditor.figures.torn_tails += 1;
        }
        let mut wrong = engine_wrong;
        wrong.extend(auditor.audit(&server, &model, &mut rng, false).await);
        auditor.figures.violations += wrong.len() as u64;
        if !wrong.is_empty() {
            report(&auditor, &model, &server, started, settings.kills);
            auditor.fail(format!(
                "{} violation(s) after kill {} (plan {plan:?}):\n  {}",
                wrong.len(),
                cycle + 1,
                listing(&wrong)
            ));
        }
        if settings.verbose {
            eprintln!(
                "crash_loop: kill {} plan {plan:?}: {} client operations, journal at seq {}, \
                 {} segments, restart + audit {:.0} ms",
                cycle + 1,
                ops.load(Ordering::SeqCst),
                auditor.fold.last_seq(),
                server.segments().len(),
                killed_at.elapsed().as_secs_f64() * 1000.0
            );
        }
        if (cycle + 1) % 25 == 0 {
            eprintln!(
                "crash_loop: progress {} kills, {} orders, journal at seq {}, {:.1}s",
                cycle + 1,
                model.lock().unwrap().orders.len(),
                auditor.fold.last_seq(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    // The end: resolve every order still unanswered by retrying it, audit everything, stop
    // gracefully, restart, and audit everything once more.
    let unresolved: Vec<(usize, Value)> = {
        let model = model.lock().unwrap();
        model
            .orders
            .iter()
            .enumerate()
            .filter(|(_, o)| o.seq.is_none() && o.lost > 0)
            .map(|(i, o)| (i, o.body.clone()))
            .collect()
    };
    for (index, body) in unresolved {
        let answer = send(
            auditor
                .http
                .post(format!("{}/v1/orders", server.base_url))
                .json(&body),
        )
        .await;
        let mut model = model.lock().unwrap();
        judge_order_answer(&mut model, index, answer, "order.final_retry");
    }
    let wrong = auditor.audit(&server, &model, &mut rng, true).await;
    auditor.figures.violations += wrong.len() as u64;
    if !wrong.is_empty() {
        report(&auditor, &model, &server, started, settings.kills);
        auditor.fail(format!(
            "{} violation(s) at the end:\n  {}",
            wrong.len(),
            listing(&wrong)
        ));
    }
    let status = server.terminate().await;
    if status.code() != Some(0) {
        auditor.fail(format!("SIGTERM at the end: exit {status}"));
    }
    let mut wrong = auditor.scan_log(&server);
    server.restart().await;
    auditor.figures.restarts += 1;
    wrong.extend(auditor.audit(&server, &model, &mut rng, true).await);
    wrong.extend(auditor.scan_log(&server));
    auditor.figures.violations += wrong.len() as u64;
    report(&auditor, &model, &server, started, settings.kills);
    if !wrong.is_empty() {
        auditor.fail(format!(
            "{} violation(s) after the final graceful restart:\n  {}",
            wrong.len(),
            listing(&wrong)
        ));
    }
}

fn report(auditor: &Auditor, model: &Mutex<Model>, server: &Server, started: Instant, kills: u64) {
    let model = model.lock().unwrap();
    let figures = &auditor.figures;
    let fold = &auditor.fold;
    let count = |prefix: &str| -> u64 {
        model
            .answers
            .iter()
            .filter(|(class, _)| class.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    };
    let lost_orders = model.orders.iter().filter(|o| o.lost > 0).count();
    let accepted = model.orders.iter().filter(|o| o.seq.is_some()).count();
    let segments = server.segments().len();
    // Offset commits cut short by a kill leave their temporary files behind.
    let consumer_files = std::fs::read_dir(server.data_dir().join("consumers"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let temporaries = consumer_files
        .iter()
        .filter(|name| name.ends_with(".tmp"))
        .count();
    eprintln!("crash_loop: ---- summary ----");
    eprintln!(
        "crash_loop: seed {} (CRASH_LOOP_SEED={})",
        auditor.seed, auditor.seed
    );
    eprintln!(
        "crash_loop: kills {} of {kills} (SIGSTOP first {}, killed while stopped {}), restarts {}, \
         torn tails repaired at start {}, load phases past their deadline {}",
        figures.kills,
        figures.stops,
        figures.killed_while_stopped,
        figures.restarts,
        figures.torn_tails,
        figures.phase_timeouts
    );
    eprintln!(
        "crash_loop: orders placed {}, accepted {accepted} (in the journal {}), with a lost \
         answer {lost_orders} (then found journaled {}, not journaled {})",
        model.orders.len(),
        fold.orders.len(),
        figures.doubt_journaled,
        figures.doubt_not_journaled
    );
    eprintln!(
        "crash_loop: requests: orders {}, retries {}, conflicting retries {}, actions {}, \
         journal pages {}, offset commits {}, restocks {}",
        count("order.new"),
        count("order.retry"),
        count("order.conflict"),
        count("action."),
        count("journal.page"),
        count("offset.commit"),
        count("sku.restock")
    );
    eprintln!("crash_loop: answers by class:");
    for (class, n) in &model.answers {
        eprintln!("crash_loop:   {class:<42} {n}");
    }
    eprintln!(
        "crash_loop: journal: {} records in {segments} segments, by type {:?}",
        fold.last_seq(),
        fold.types
    );
    eprintln!(
        "crash_loop: data dir: consumers/ holds {} files, {temporaries} of them temporary \
         files of offset commits a kill cut short",
        consumer_files.len()
    );
    eprintln!(
        "crash_loop: audits {}: orders read back {}, retries after restart {}, actions verified \
         {}, offsets verified {}, records compared across restarts {}",
        figures.audits,
        figures.orders_read_back,
        figures.retries_after_restart,
        figures.actions_verified,
        figures.offsets_verified,
        figures.records_compared
    );
    let stock: Vec<String> = fold
        .skus
        .iter()
        .filter(|(name, _)| name.starts_with("CL-"))
        .map(|(name, s)| {
            format!(
                "{name} total {} reserved {} sold {}",
                s.stock_total, s.reserved, s.sold
            )
        })
        .collect();
    eprintln!("crash_loop: stock at the end: {}", stock.join("; "));
    eprintln!("crash_loop: engine WARN/ERROR lines (digits masked):");
    for (line, n) in &figures.log_lines {
        eprintln!("crash_loop:   {n:>5} × {line}");
    }
    eprintln!(
        "crash_loop: violations {}; time {:.1}s",
        figures.violations,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_under_load_keeps_every_answer_true() {
    run(Settings::from_env()).await;
}

/// The audit is not vacuous: a journal that lost records it had served (cut back behind the
/// engine's back between a kill and the restart) fails the run, naming what was lost.
#[test]
fn the_audit_catches_a_journal_that_lost_its_tail() {
    let settings = Settings {
        kills: 4,
        seed: 7,
        verbose: false,
        sabotage_after_kill: Some(3),
    };
    // Its own thread and runtime, so the run's panic (and the server's drop) happen there.
    let failure = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(settings));
    })
    .join()
    .expect_err("a run with a cut journal must fail");
    let payload = failure;
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("violation(s) after kill 3") && message.contains("seed 7"),
        "{message}"
    );
    assert!(
        message.contains("changed across a restart") || message.contains("the journal ends at"),
        "the lost records are named: {message}"
    );
}

// ---------------------------------------------------------------------------------------------
// The checker checks itself: a fold of bad journals must report what is wrong.

fn record(seq: u64, fields: Value) -> Value {
    let mut record = json!({"seq": seq});
    for (key, value) in fields.as_object().expect("object") {
        record[key] = value.clone();
    }
    record
}

fn sku_record(seq: u64, sku: &str, stock: u64, limit: u64) -> Value {
    record(
        seq,
        json!({"type": "sku", "sku": sku, "stock_total": stock, "per_user_limit": limit,
            "max_per_order": 2}),
    )
}

fn accepted(seq: u64, id: &str, user: &str, sku: &str, qty: u64, payment: &str) -> Value {
    record(
        seq,
        json!({"type": "accepted", "order_id": id, "user_id": user, "sku": sku, "qty": qty,
            "payment": payment}),
    )
}

#[test]
fn the_fold_reports_oversell_limits_double_orders_and_bad_moves() {
    let mut fold = Fold::default();
    fold.apply(sku_record(1, "S", 3, 2));
    fold.apply(accepted(2, "a", "u1", "S", 2, "prepaid"));
    fold.apply(accepted(3, "b", "u1", "S", 1, "cod"));
    assert!(
        fold.violations[0].contains("holds 3 units"),
        "{:?}",
        fold.violations
    );
    fold.apply(accepted(4, "c", "u2", "S", 1, "cod"));
    assert!(
        fold.violations[1].contains("oversold"),
        "{:?}",
        fold.violations
    );
    fold.apply(accepted(5, "a", "u3", "S", 1, "cod"));
    assert!(fold.violations[2].contains("journaled twice"));
    fold.apply(record(
        6,
        json!({"type": "pay", "order_id": "b", "status": "paid", "prev_seq": 3}),
    ));
    assert!(fold.violations[3].contains("while it was confirmed"));
    fold.apply(record(
        8,
        json!({"type": "cancel", "order_id": "a", "status": "cancelled", "prev_seq": 2}),
    ));
    assert!(fold.violations[4].contains("where 7 was due"));
    assert_eq!(fold.violations.len(), 5, "{:?}", fold.violations);
    // The cancel gave a's two reserved units back and freed u1's count.
    assert_eq!(fold.skus["S"].reserved, 0);
    assert_eq!(fold.skus["S"].sold, 2);
    assert_eq!(fold.held[&("u1".to_string(), "S".to_string())], 1);
}

#[test]
fn answers_are_judged_against_what_the_client_knows() {
    let mut model = Model {
        groups: (0..GROUPS).map(|_| Register::default()).collect(),
        ..Model::default()
    };
    let body = json!({"order_id": "x", "user_id": "u", "sku": "CL-HOT-1", "qty": 1,
        "payment": "prepaid"});
    model.orders.push(OrderModel {
        id: "x".into(),
        body,
        sku: 0,
        payment: "prepaid",
        seq: None,
        doubt: false,
        known: None,
        busy: true,
        lost: 0,
    });
    let answer = |status: u16, replayed: bool, json: Value| {
        Ok(Answer {
            status,
            replayed,
            text: json.to_string(),
            json,
        })
    };
    // A replay of an order nobody was told about is a lie.
    judge_order_answer(
        &mut model,
        0,
        answer(
            200,
            true,
            json!({"order_id": "x", "status": PENDING, "seq": 7}),
        ),
        "t",
    );
    assert_eq!(model.violations.len(), 1);
    judge_order_answer(
        &mut model,
        0,
        answer(
            201,
            false,
            json!({"order_id": "x", "status": PENDING, "seq": 7}),
        ),
        "t",
    );
    assert_eq!(model.orders[0].seq, Some(7));
    // Durable: a refusal of a retry, or another seq, is wrong.
    judge_order_answer(
        &mut model,
        0,
        answer(
            409,
            false,
            json!({"error": "sold_out", "detail": "no stock"}),
        ),
        "t",
    );
    judge_order_answer(
        &mut model,
        0,
        answer(
            200,
            true,
            json!({"order_id": "x", "status": PENDING, "seq": 8}),
        ),
        "t",
    );
    assert_eq!(model.violations.len(), 3);
    // pending_payment: cancel is done, not refused, and not a replay.
    judge_action_answer(
        &mut model,
        0,
        "cancel",
        answer(
            409,
            false,
            json!({"error": "invalid_transition",
            "detail": "order x is pending_payment; cancel is not allowed from it"}),
        ),
    );
    assert_eq!(model.violations.len(), 4);
    let view = json!({"order_id": "x", "status": "cancelled",
        "history": [{"event": "accepted", "seq": 7}, {"event": "cancel", "seq": 9}]});
    judge_action_answer(&mut model, 0, "cancel", answer(200, false, view.clone()));
    assert_eq!(model.violations.len(), 4, "{:?}", model.violations);
    judge_action_answer(&mut model, 0, "cancel", answer(200, false, view.clone()));
    assert_eq!(
        model.violations.len(),
        5,
        "a second cancel must be a replay"
    );
    judge_action_answer(&mut model, 0, "cancel", answer(200, true, view));
    assert_eq!(model.violations.len(), 5, "{:?}", model.violations);
}
