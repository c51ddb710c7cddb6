//! Crash loop: the real binary (`fsync = "always"`, 64 KiB journal segments, so segments
//! rotate under load) under concurrent load from several client tasks, SIGKILLed at seeded
//! random moments (sometimes SIGSTOPped first for a short pause, then SIGCONTed or killed
//! while stopped), restarted on the same data directory, and audited after every restart and
//! at the end against the clients' log of answers and the journal. In about a third of the
//! cycles the restart is itself killed, once or twice, at a seeded moment between 0 and 1.3
//! times the last start's duration (spawn to `/readyz` 200) after the spawn: mostly while it
//! recovers (before its listening line, or while `/readyz` says 503), sometimes just after.
//! The start after that must pass the full audit.
//!
//! The load: new orders on a few hot SKUs with small stock and a `per_user_limit` (so
//! `sold_out` and `purchase_limit` refusals happen) and on one SKU whose payment timer is 2 s
//! (so `payment_reminder` and `expired` records happen, across restarts too), retries of
//! earlier orders (same body), retries with different content (must be 422
//! `idempotency_conflict`), `pay`/`cancel` on orders it created and now and then any other
//! action (refusals, replays), walks of orders along their life (payment, `verify` … `ship`,
//! sometimes `deliver` and `complete`, then up to two `exchange`s), exchanges on shipped,
//! delivered and completed orders (`{"sku": X}`, one unit of another run SKU: the hot ones run
//! out, so `sold_out` happens), restocks (`PUT /v1/skus/{sku}`) and consumer offset commits at
//! seqs it read from `GET /v1/journal`. Admission control's refusals (`overloaded`, 429 or
//! 503) are allowed everywhere and must decide nothing.
//!
//! Every answer is judged when it arrives (a wrong answer is a violation, a lost one makes
//! the request *uncertain*), and each audit checks:
//! 1. every order answered 201 (or 200 replayed) is in the journal exactly once with that
//!    seq, and every journaled order was sent by a client and was either acknowledged or had
//!    a lost answer (nothing is taken while the client was told it was not);
//! 2. no order id is journaled twice; the journal is contiguous, and every record read before
//!    a kill (by an audit or a client) is still there, unchanged, after it (with retention:
//!    those retention kept);
//! 3. for every SKU, at every point of the journal sold + reserved ≤ stock_total, and the
//!    engine's `GET /v1/skus/{sku}` equals the journal's fold (stock_total, available,
//!    reserved, sold, settings) with available + reserved + sold = stock_total; an exchange
//!    record sells one unit of the SKU it names and leaves the order's own SKU and the buyer's
//!    purchase count alone;
//! 4. per (user, SKU), the units held (accepted, not given back) never pass `per_user_limit`
//!    at any point of the journal;
//! 5. every action answered 200 has its record in the journal, every action record is a move
//!    the order's state allows (with the right `status` and `prev_seq`; only an exchange names
//!    a `sku`), and `GET /v1/orders/{id}` shows the status, history and exchange SKUs the
//!    journal's records say; exchanges repeat, so they are counted: per order and SKU, the
//!    exchange records are at least the exchanges answered 200 and at most those plus the
//!    ones whose answer was lost (journaled exactly when answered 200, refusals take nothing);
//! 6. every consumer group's offset is ≤ the journal's last seq and is the last committed
//!    value (or one whose commit was uncertain); every restock answered 200 is journaled;
//! 7. retries after a restart of orders answered 201 get 200, `Idempotent-Replayed: true`,
//!    and the original body (seq included);
//! 8. the lagging group (`crash-loop-lag`, committed by each audit where the previous audit's
//!    reading ended) is where it was committed, every record after its offset is served, and
//!    the oldest record kept is at most its offset + 1 (with retention off: seq 1); a start
//!    with checkpoint files on disk starts from one.
//!
//! An uncertain order may or may not be in the journal, but at most once; the audit after the
//! next restart resolves it from the journal, and retries resolve it for the engine.
//!
//! **Checkpoints and retention** run in their own test (fewer kills, longer phases), because
//! they change what can be checked: the engine keeps only the segments some group or the last
//! checkpoint still needs (`retain_s = 1`, a pass every second, a checkpoint before deleting),
//! so old records answer 410 and old orders show `history_complete: false`. The audit reads
//! the journal once, in order, and keeps what it read (the fold); it reads on from where it
//! left off, and the lagging group pins everything it has not read yet, so a 410 for any of
//! it (or for a page a client reads, always from the lagging offset on) is a violation. Order
//! views are compared on the records kept (those left out must be older than the oldest kept;
//! without the acceptance `user_id` and `payment` are null). Most phases are held open 0.6 to
//! 2.5 s so that passes run under load (past 1500 operations the clients are paced to one per
//! 3 to 10 ms each); at the end the lagging group moves to the journal's end and retention
//! must delete every segment that was closed for a second and that no group needs within 6 s,
//! before the last audits (one after a graceful restart from the checkpoint). The default run
//! keeps retention off, so its audits still compare the whole journal from seq 1.
//!
//! Default `cargo test`: 25 kills, and 10 with retention. Long runs: `CRASH_LOOP_KILLS=500
//! cargo test --release --test crash_loop -- --nocapture` (the retention test then makes a
//! third as many; `CRASH_LOOP_RETENTION_KILLS` sets its own) or `scripts/crash_loop.sh [KILLS]
//! [SEED]`. `CRASH_LOOP_SEED` replays a run's decisions (operations, kill and pause moments,
//! pause lengths, kills during starts); thread timing still varies between runs. The seed is
//! printed at the start and in every failure. `CRASH_LOOP_VERBOSE=1` prints one line per
//! kill. The summary (with `--nocapture`) gives kills (during starts too, by where they
//! landed), pauses, orders, exchanges, checkpoints written, starts from one and segments
//! deleted (counted from the engine's log), answers by class, the journal's records and
//! segments, and what the audits compared.
//!
//! Every wait is bounded (client requests 1 s, audit requests 10 s, a load phase 20 s, the
//! clients' return after a kill 10 s, a restart the harness's 15 s, a start to be killed its
//! drawn moment plus a 250 ms probe, the wait for retention 6 s); everything runs on
//! loopback; the engine is killed when the `Server` drops, a panic included.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::power_cut::{CutReport, CutRng, PowerCut};
use common::{Opts, Server};
use serde_json::{Value, json};

/// Kills in the default `cargo test` run.
const DEFAULT_KILLS: u64 = 25;
/// Kills in the default run with checkpoints and retention (its phases are longer).
const DEFAULT_RETENTION_KILLS: u64 = 10;
/// Power cuts in each default power-cut run (one per fsync policy, with and without
/// checkpoints and retention).
const DEFAULT_POWER_CUTS: u64 = 10;
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
/// Operations a phase held open for retention passes runs at full speed (the load under
/// which a pass meets the most requests); past them the clients are paced, so that the
/// optimized build's clients' log stays small.
const HELD_OPEN_OPS: u64 = 1500;
/// Longest the end of a run with retention waits for retention to delete what no group
/// needs (a pass runs every second).
const RETENTION_WAIT: Duration = Duration::from_secs(6);
/// Consumer groups the clients commit for.
const GROUPS: usize = 4;
/// The group the audit commits for, one audit behind: retention must keep every record
/// after its offset.
const LAG_GROUP: &str = "crash-loop-lag";
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
// The order state machine, the part this run exercises: pay, cancel, the payment timer, the
// fulfilment stages up to `complete`, and `exchange`.

/// Each fulfilment stage and the action that reaches it, in order: `verify` from paid or
/// confirmed, then each from the one before.
const STAGES: [(&str, &str); 9] = [
    ("verify", "verified"),
    ("print", "printed"),
    ("pick", "picked"),
    ("check", "checked"),
    ("pack", "packed"),
    ("weigh", "weighed"),
    ("ship", "shipped"),
    ("deliver", "delivered"),
    ("complete", "completed"),
];

/// Every client action the run sends.
const CLIENT_ACTIONS: [&str; 12] = [
    "pay", "cancel", "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver",
    "complete", "exchange",
];

/// Every state an order of this run can reach.
const STATES: [&str; 14] = [
    PENDING,
    "confirmed",
    "paid",
    "verified",
    "printed",
    "picked",
    "checked",
    "packed",
    "weighed",
    "shipped",
    "delivered",
    "completed",
    "cancelled",
    "expired",
];

/// Exchanges the clients send per order at most (an order has at most 64 records).
const EXCHANGES_PER_ORDER: usize = 4;

/// The state after `action` from `status`, or `None` for a refused move.
fn transition(status: &str, action: &str) -> Option<&'static str> {
    match (status, action) {
        (PENDING, "pay") => Some("paid"),
        (PENDING | "confirmed" | "paid", "cancel") => Some("cancelled"),
        (PENDING, "payment_reminder") => Some(PENDING),
        (PENDING, "expired") => Some("expired"),
        ("confirmed" | "paid", "verify") => Some("verified"),
        ("shipped" | "delivered" | "completed", "exchange") => Some("shipped"),
        _ => {
            let stage = STAGES.iter().position(|&(name, _)| name == action)?;
            (stage > 0 && STAGES[stage - 1].1 == status).then_some(STAGES[stage].1)
        }
    }
}

/// The state every `action` answered 200 leaves the order in.
fn target(action: &str) -> &'static str {
    STATES
        .iter()
        .find_map(|&from| transition(from, action))
        .expect("every client action has a target")
}

/// The next step of an order in `status` on its way to `completed`.
fn next_step(status: &str) -> Option<&'static str> {
    match status {
        PENDING => Some("pay"),
        "confirmed" | "paid" => Some("verify"),
        _ => {
            let stage = STAGES.iter().position(|&(_, to)| to == status)?;
            STAGES.get(stage + 1).map(|&(action, _)| action)
        }
    }
}

/// Whether `action` may repeat the latest action of an order in `status` (a replay, answered
/// 200 with `Idempotent-Replayed: true`). `exchange` never is (a repeat is new work). A
/// shipped order's latest action is `ship` or an `exchange`: `last` (the latest record's
/// type, when known) tells which.
fn may_replay(status: &str, action: &str, last: Option<&str>) -> bool {
    action != "exchange"
        && target(action) == status
        && (status != "shipped" || last.is_none_or(|last| last == "ship"))
}

/// Whether `action` may be refused (409 `invalid_transition`) for an order in `status`.
fn may_refuse(status: &str, action: &str, last: Option<&str>) -> bool {
    transition(status, action).is_none()
        && (!may_replay(status, action, last) || (status == "shipped" && last.is_none()))
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
    /// The type of the order's latest record, when `known` is set and it is known (it tells
    /// a shipped order's `ship` from an `exchange`, which decides whether a `ship` is a retry).
    last: Option<&'static str>,
    /// Every exchange whose answer was 200 (`true`) or lost (`false`), with the SKU it asked
    /// a unit of, ever: the journal must hold each 200 and may hold each lost one, and no
    /// other.
    exchanges: Vec<(&'static str, bool)>,
    /// Exchanges sent, whatever their answer (the clients stop at `EXCHANGES_PER_ORDER`).
    exchanges_sent: usize,
    /// A client is working on this order (one request at a time per order).
    busy: bool,
    /// Answers lost, ever (figures), and records of it a power cut took.
    lost: u64,
    /// When a client was told `seq` (cycle, moment): a power cut under `interval` or `none`
    /// may take it within the policy's window. `None` when the audit found it journaled.
    acked_at: Option<(u64, Instant)>,
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
        // Every state the order's payment and timer allow: a lost request may have taken
        // it anywhere a client walks orders.
        STATES
            .into_iter()
            .filter(|&status| match status {
                PENDING | "paid" => self.payment != "cod",
                "confirmed" => self.payment == "cod",
                "expired" => self.payment != "cod" && timer,
                _ => true,
            })
            .collect()
    }

    /// The latest record's type when the order's state is known, else `None`.
    fn last_known(&self) -> Option<&'static str> {
        if self.doubt { None } else { self.last }
    }
}

/// A record type of an order as a `&'static str` (`unknown` for others).
fn type_static(kind: &str) -> &'static str {
    ["accepted", "payment_reminder", "expired"]
        .into_iter()
        .chain(CLIENT_ACTIONS)
        .find(|&known| known == kind)
        .unwrap_or("unknown")
}

fn status_static(status: &str) -> &'static str {
    STATES
        .into_iter()
        .find(|&known| known == status)
        .unwrap_or("unknown")
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
    /// The value at the last audit, and the values answered 200 since: after a power cut
    /// that took a restock's record, any of them may be the engine's.
    base: Option<u64>,
    acked: Vec<u64>,
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
    /// Actions answered 200 since the last audit.
    actions_done: Vec<ActionAck>,
    /// (sku index, stock_total, (cycle, moment)) answered 200 since the last audit.
    restocks_done: Vec<(usize, u64, (u64, Instant))>,
    groups: Vec<Register>,
    stock: Vec<Register>,
    /// Records the clients read from `GET /v1/journal` and the audit has not yet compared.
    seen: BTreeMap<u64, Value>,
    max_seq_seen: u64,
    /// The lagging group's offset (see `LAG_GROUP`): with retention on, the clients read
    /// from it on, and every record after it must be there.
    lag_floor: u64,
    /// The engine runs with checkpoints and retention.
    retention: bool,
    violations: Vec<String>,
    /// Answers by class, e.g. `order.new 201`, `action.pay 409 invalid_transition`.
    answers: BTreeMap<String, u64>,
}

/// An action answered 200: its record's seq (from the answer's history) and when it came.
#[derive(Debug)]
struct ActionAck {
    index: usize,
    action: &'static str,
    /// An exchange's SKU.
    sku: Option<&'static str>,
    seq: Option<u64>,
    cycle: u64,
    at: Instant,
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

    /// Refused by admission control before anything was decided: 429 `overloaded` (a full
    /// queue, the in-flight bound) or 503 `overloaded` (shedding by queueing delay).
    fn shed(&self) -> bool {
        matches!(self.status, 429 | 503) && self.code() == "overloaded"
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

    /// Runs operations until `stop`; while `pace` is set, one every 3 to 10 ms (a phase
    /// held open for retention passes, past `HELD_OPEN_OPS`: enough to grow the journal,
    /// not so much that the clients' log balloons).
    async fn run(mut self, stop: Arc<AtomicBool>, pace: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
        while !stop.load(Ordering::SeqCst) {
            if pace.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(self.rng.range(3, 10))).await;
            }
            let roll = self.rng.below(100);
            let done = match roll {
                0..=44 => {
                    self.new_order().await;
                    true
                }
                45..=57 => self.retry().await,
                58..=60 => self.conflicting_retry().await,
                61..=77 => self.action().await,
                78..=85 => self.walk(&stop).await,
                86..=89 => self.exchange().await,
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
                last: None,
                exchanges: Vec::new(),
                exchanges_sent: 0,
                busy: true,
                lost: 0,
                acked_at: None,
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
                    || answer.shed())
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

    /// One action on any order: mostly `pay` or `cancel`, now and then any other (refusals,
    /// replays, and actions on orders whose state a lost answer left unknown).
    async fn action(&mut self) -> bool {
        let Some((index, _)) = self.pick_order(|o| o.seq.is_some() || o.doubt) else {
            return false;
        };
        let action = match self.rng.below(10) {
            0..=4 => "pay",
            5..=7 => "cancel",
            _ => CLIENT_ACTIONS[self.rng.below(CLIENT_ACTIONS.len() as u64) as usize],
        };
        let sku = (action == "exchange").then(|| self.exchange_sku(index));
        self.send_action(index, action, sku, false).await;
        true
    }

    /// A SKU other than the order's own, for an exchange.
    fn exchange_sku(&mut self, index: usize) -> &'static str {
        let own = self.model.lock().unwrap().orders[index].sku;
        let other = (own + 1 + self.rng.below(SKUS.len() as u64 - 1) as usize) % SKUS.len();
        SKUS[other].name
    }

    /// Sends one action (an exchange with the SKU `sku`) and judges the answer. The order is
    /// free again afterwards, unless `keep` and the answer was 200 (a walk goes on with it).
    /// Returns whether it was answered 200.
    async fn send_action(
        &mut self,
        index: usize,
        action: &'static str,
        sku: Option<&'static str>,
        keep: bool,
    ) -> bool {
        let id = {
            let mut model = self.model.lock().unwrap();
            let order = &mut model.orders[index];
            if action == "exchange" {
                order.exchanges_sent += 1;
            }
            order.id.clone()
        };
        let mut request = self
            .http
            .post(self.url(&format!("/v1/orders/{id}/{action}")));
        if let Some(sku) = sku {
            request = request.json(&json!({"sku": sku}));
        }
        let answer = send(request).await;
        let done = answer.as_ref().is_ok_and(|a| a.status == 200);
        let mut model = self.model.lock().unwrap();
        judge_action_answer(&mut model, index, action, sku, answer);
        if keep && done {
            model.orders[index].busy = true;
        }
        done
    }

    /// Walks an order whose state is known along its life: payment if it is due, the
    /// fulfilment stages up to shipped, delivered or completed, then up to two exchanges.
    /// Each step is one request, judged as it comes; the walk ends at the first answer that
    /// is not 200 or when the load phase ends.
    async fn walk(&mut self, stop: &AtomicBool) -> bool {
        let end = ["shipped", "shipped", "delivered", "completed"][self.rng.below(4) as usize];
        let exchanges = self.rng.below(3) as usize;
        let Some((index, _)) = self.pick_order(|o| {
            !o.doubt
                && o.seq.is_some()
                && o.known.as_deref().is_some_and(|known| {
                    next_step(known).is_some() || transition(known, "exchange").is_some()
                })
                && o.exchanges_sent + exchanges <= EXCHANGES_PER_ORDER
        }) else {
            return false;
        };
        self.model.lock().unwrap().count("walk".to_string());
        let mut exchanged = 0;
        loop {
            let step = {
                let model = self.model.lock().unwrap();
                let order = &model.orders[index];
                let known = order.known.as_deref().filter(|_| !order.doubt);
                match known {
                    Some(known) if known == end || next_step(known).is_none() => {
                        (exchanged < exchanges && transition(known, "exchange").is_some())
                            .then_some("exchange")
                    }
                    Some(known) => next_step(known),
                    None => None,
                }
            };
            let Some(action) = step else {
                break;
            };
            let sku = (action == "exchange").then(|| self.exchange_sku(index));
            exchanged += usize::from(action == "exchange");
            if !self.send_action(index, action, sku, true).await {
                // Freed by the judge.
                return true;
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        self.model.lock().unwrap().orders[index].busy = false;
        true
    }

    /// An exchange on an order known to be shipped, delivered or completed.
    async fn exchange(&mut self) -> bool {
        let Some((index, _)) = self.pick_order(|o| {
            !o.doubt
                && o.exchanges_sent < EXCHANGES_PER_ORDER
                && o.known
                    .as_deref()
                    .is_some_and(|known| transition(known, "exchange").is_some())
        }) else {
            return false;
        };
        let sku = self.exchange_sku(index);
        self.send_action(index, "exchange", Some(sku), false).await;
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
            // With retention, only after the lagging group's offset: records before it may
            // be gone, those after it must not be (a 410 there is a violation).
            let floor = if model.retention {
                model.lag_floor.min(model.max_seq_seen)
            } else {
                0
            };
            let from = floor + self.rng.below(model.max_seq_seen - floor + 1);
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
                .bearer_auth(&self.token)
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
                    model.stock[sku].acked.push(stock);
                    let acked = (model.cycle, Instant::now());
                    model.restocks_done.push((sku, stock, acked));
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
                order.last = None;
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
                order.acked_at = Some((model.cycle, Instant::now()));
                if !order.doubt {
                    order.known = Some(initial_status(order.payment).to_string());
                    order.last = Some("accepted");
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
                        order.acked_at = Some((model.cycle, Instant::now()));
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
        _ if answer.shed() => {}
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

/// Judges the answer to `POST /v1/orders/{id}/{action}` (`sku`: an exchange's SKU).
fn judge_action_answer(
    model: &mut Model,
    index: usize,
    action: &'static str,
    sku: Option<&'static str>,
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
            order.last = None;
            if let Some(sku) = sku {
                order.exchanges.push((sku, false));
            }
            return;
        }
        Ok(answer) => answer,
    };
    model.count(format!("action.{action} {}", answer.class()));
    let order = &mut model.orders[index];
    order.busy = false;
    let id = order.id.clone();
    let candidates = order.candidates();
    let last = order.last_known();
    let mut wrong = None;
    match (answer.status, answer.code()) {
        (200, _) => {
            let target = target(action);
            let allowed = candidates.iter().any(|&from| {
                if answer.replayed {
                    may_replay(from, action, last)
                } else {
                    transition(from, action).is_some()
                }
            });
            let history = answer.json["history"].as_array();
            // With retention the history may start after the acceptance, or (a replay of an
            // old action) hold nothing at all.
            let complete = answer.json["history_complete"] != false;
            let newest_gone = !complete && history.is_none_or(|h| h.is_empty());
            let newest = history.and_then(|h| h.last());
            let last_event = newest.map(|e| e["event"].clone());
            let first_seq = history
                .and_then(|h| h.first())
                .and_then(|e| e["seq"].as_u64());
            // An exchange's record names its SKU; nothing else happens to a shipped order
            // while its client waits, so the newest record is this exchange.
            let exchange_seen = sku.is_none_or(|sku| {
                newest.is_some_and(|e| e["event"] == "exchange" && e["sku"] == sku)
                    && !answer.replayed
            });
            // A replay's newest record may be gone (retention).
            let newest_known = !(order.doubt || answer.replayed && newest_gone);
            if !allowed
                || answer.json["order_id"] != id.as_str()
                || (!order.doubt && answer.json["status"] != target)
                || (newest_known && last_event != Some(json!(action)))
                || !exchange_seen
                || (complete && order.seq.is_some_and(|seq| first_seq != Some(seq)))
            {
                wrong = Some(format!(
                    "{action} of {id} (could be {candidates:?}, latest {last:?}, replayed {}) \
                     answered 200 {}",
                    answer.replayed, answer.text
                ));
                // Judge what follows as after a lost answer.
                order.doubt = true;
                order.known = None;
                order.last = None;
                if let Some(sku) = sku {
                    order.exchanges.push((sku, false));
                }
            } else {
                if !order.doubt {
                    order.known = Some(target.to_string());
                    order.last = Some(action);
                }
                if let Some(sku) = sku {
                    order.exchanges.push((sku, true));
                }
                // The record's seq: the newest of the history, or (a replay) the latest
                // record of this action.
                let seq = if answer.replayed {
                    history.and_then(|h| h.iter().rev().find(|e| e["event"] == action))
                } else {
                    newest
                }
                .and_then(|e| e["seq"].as_u64());
                let cycle = model.cycle;
                model.actions_done.push(ActionAck {
                    index,
                    action,
                    sku,
                    seq,
                    cycle,
                    at: Instant::now(),
                });
            }
        }
        (409, "invalid_transition") => {
            let detail = answer.json["detail"].as_str().unwrap_or("");
            match refused_status(detail, &id).map(status_static) {
                Some(from) if candidates.contains(&from) && may_refuse(from, action, last) => {
                    if !order.doubt && order.known.as_deref() != Some(from) {
                        // The payment timer moved it (pending to expired).
                        order.known = Some(from.to_string());
                        order.last = None;
                    }
                }
                _ => {
                    wrong = Some(format!(
                        "{action} of {id} (could be {candidates:?}, latest {last:?}) refused: {}",
                        answer.text
                    ));
                }
            }
        }
        // The state is judged before the stock: only an order that may take an exchange
        // hears that its SKU has no unit left.
        (409, "sold_out")
            if sku.is_some()
                && candidates
                    .iter()
                    .any(|&from| transition(from, action).is_some()) => {}
        (404, "unknown_order") => {
            if let Some(seq) = order.seq {
                wrong = Some(format!(
                    "{action} of {id} (accepted at seq {seq}): 404 {}",
                    answer.text
                ));
            }
        }
        _ if answer.shed() => {}
        _ => {
            wrong = Some(format!(
                "{action} of {id} (could be {candidates:?}): unexpected {} {}",
                answer.status, answer.text
            ));
            // Nothing is known of what it did: judge what follows as after a lost answer.
            order.doubt = true;
            order.known = None;
            order.last = None;
            if let Some(sku) = sku {
                order.exchanges.push((sku, false));
            }
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
    /// (seq, SKU) of each exchange.
    exchanges: Vec<(u64, String)>,
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

    /// Forgets the records after `seq` (a power cut took them): folds the rest again. The
    /// orders of the forgotten records count as changed, so that the audit reads them back.
    fn rewind(&mut self, seq: u64) {
        let records = std::mem::take(&mut self.records);
        let mut changed = std::mem::take(&mut self.changed);
        for record in &records[seq as usize..] {
            if let Some(id) = record["order_id"].as_str() {
                changed.insert(id.to_string());
            }
        }
        let violations = std::mem::take(&mut self.violations);
        *self = Fold::default();
        for record in records.into_iter().take(seq as usize) {
            self.apply(record);
        }
        self.changed = changed;
        self.violations.splice(0..0, violations);
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
            "payment_reminder" | "expired" => self.apply_action(seq, &kind, &record),
            _ if CLIENT_ACTIONS.contains(&kind.as_str()) => {
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
                exchanges: Vec::new(),
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
        // Only an exchange names a SKU (the one a unit was taken from).
        let exchange_sku = record["sku"].as_str().map(str::to_string);
        if (kind == "exchange") != exchange_sku.is_some() {
            wrong.push(format!(
                "seq {seq}: {kind} of {id} with sku {}",
                record["sku"]
            ));
        }
        let before = std::mem::replace(&mut order.status, next.to_string());
        order.chain.push((kind.to_string(), seq));
        let (qty, user, sku_name) = (order.qty, order.user.clone(), order.sku.clone());
        let from_reserved = before == PENDING;
        match kind {
            "pay" => {
                let sku = self.skus.get_mut(&sku_name).expect("the order's SKU");
                sku.reserved -= qty;
                sku.sold += qty;
            }
            "cancel" | "expired" => {
                let sku = self.skus.get_mut(&sku_name).expect("the order's SKU");
                if from_reserved {
                    sku.reserved -= qty;
                } else {
                    sku.sold -= qty;
                }
                let held = self.held.entry((user, sku_name)).or_default();
                *held = held.saturating_sub(qty);
            }
            "exchange" => {
                // One unit of the exchange SKU is sold; the order's own units stay sold and
                // the buyer's purchase count does not change.
                let other = exchange_sku.unwrap_or_default();
                order.exchanges.push((seq, other.clone()));
                match self.skus.get_mut(&other) {
                    Some(sku) => {
                        sku.sold += 1;
                        let (taken, total) = (sku.reserved + sku.sold, sku.stock_total);
                        if taken > total {
                            wrong.push(format!(
                                "seq {seq}: {other} oversold by the exchange of order {id}: \
                                 {taken} units taken of {total}"
                            ));
                        }
                    }
                    None => wrong.push(format!(
                        "seq {seq}: exchange of order {id} took a unit of unknown SKU {other:?}"
                    )),
                }
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
    /// Kills while the engine recovered (after its spawn, before `/readyz` said 200 to the
    /// harness), by where they landed: before the listening line, while `/readyz` said 503,
    /// and after `/readyz` said 200 (the drawn moment came after recovery).
    recovery_kills_before_listening: u64,
    recovery_kills_not_ready: u64,
    recovery_kills_after_ready: u64,
    /// How long the last start took, spawn to `/readyz` 200 (recovery kills draw their
    /// moment from it).
    last_start: Duration,
    /// From the engine's log, every incarnation: checkpoints written, starts from a
    /// checkpoint, segments deleted by retention, retention passes that failed.
    checkpoints: u64,
    checkpoint_starts: u64,
    segments_deleted: u64,
    retention_failures: u64,
    /// Orders whose exchange records were counted against the answers, summed over audits.
    exchanges_verified: u64,
    /// Checks that the records after the lagging group's offset are still there.
    lag_checks: u64,
    /// The oldest record still kept, as last seen.
    first_kept: u64,
    /// The engine's WARN and ERROR lines, by text with digits masked (every incarnation).
    log_lines: BTreeMap<String, u64>,
    violations: u64,
    /// Power cuts (`Settings::power_cut`), and what they undid, summed.
    power_cuts: u64,
    power_cut: CutReport,
}

impl Figures {
    fn note_cut(&mut self, cut: &CutReport) {
        self.power_cuts += 1;
        self.power_cut.files_cut += cut.files_cut;
        self.power_cut.bytes_dropped += cut.bytes_dropped;
        self.power_cut.torn_writes += cut.torn_writes;
        self.power_cut.names_undone += cut.names_undone;
    }
}

struct Auditor {
    seed: u64,
    http: reqwest::Client,
    fold: Fold,
    figures: Figures,
    /// The engine runs with checkpoints and retention.
    retention: bool,
    /// The lagging group's offset, as last committed (every commit is answered: the engine
    /// is quiet then).
    lag: u64,
    /// The journal's last seq at the previous audit: the lagging group's next offset.
    lag_next: u64,
    /// The fsync policy of a power-cut run (`None`: SIGKILLs only).
    policy: Option<&'static str>,
    /// The journal's end after the last cycle's cuts: durable from then on.
    durable_end: u64,
    /// After a cut, the end of the journal that survived it (offsets must be at or below).
    journal_end: Option<u64>,
    losses: Losses,
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
            let figures = &mut self.figures;
            for (text, count) in [
                ("checkpoint written", &mut figures.checkpoints),
                ("starting from a checkpoint", &mut figures.checkpoint_starts),
                (
                    "retention deleted a journal segment",
                    &mut figures.segments_deleted,
                ),
                ("retention pass failed", &mut figures.retention_failures),
            ] {
                *count += u64::from(line.contains(text));
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
            if page.status == 410 {
                self.fail(format!(
                    "GET /v1/journal?from={from}: {}; the lagging group's offset is {}: \
                     retention deleted records a consumer group still needed",
                    page.text, self.lag
                ));
            }
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

    /// The seq of the oldest record the journal still has (a page from 0 answers 410 naming
    /// it once retention deleted the first segment). The lagging group's records must all
    /// be there: the oldest kept is at most its offset + 1.
    async fn first_kept(&mut self, base: &str) -> Result<u64, String> {
        let page = self.get(base, "/v1/journal?from=0&limit=1").await;
        let first = match (page.status, page.code()) {
            (200, _) => 1,
            (410, "gone") => page.json["detail"]
                .as_str()
                .and_then(|d| d.split("the oldest kept is ").nth(1))
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok())
                .ok_or_else(|| format!("410 without the oldest kept seq: {}", page.text))?,
            _ => {
                return Err(format!(
                    "GET /v1/journal?from=0: {} {}",
                    page.status, page.text
                ));
            }
        };
        if first > 1 && !self.retention {
            return Err(format!(
                "records before seq {first} are gone and retention is off: {}",
                page.text
            ));
        }
        if first > self.lag + 1 {
            return Err(format!(
                "the oldest record kept is seq {first}; the lagging group (offset {}) needs \
                 every record after its offset",
                self.lag
            ));
        }
        if first < self.figures.first_kept {
            return Err(format!(
                "the oldest record kept is seq {first}; seq {} was the oldest before",
                self.figures.first_kept
            ));
        }
        self.figures.first_kept = first;
        Ok(first)
    }

    /// The records after the lagging group's offset are there (200, from its next seq).
    async fn check_lag_group(&mut self, base: &str) -> Vec<String> {
        let mut wrong = Vec::new();
        let answer = self
            .get(base, &format!("/v1/consumers/{LAG_GROUP}/offset"))
            .await;
        if answer.status != 200 || answer.json["seq"] != self.lag {
            wrong.push(format!(
                "{LAG_GROUP} was committed at {}; the engine says {} {}",
                self.lag, answer.status, answer.text
            ));
        }
        let page = self
            .get(base, &format!("/v1/journal?from={}&limit=1", self.lag))
            .await;
        let first = page.text.lines().next().and_then(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|r| r["seq"].as_u64())
        });
        self.figures.lag_checks += 1;
        if page.status != 200 || (self.lag < self.fold.last_seq() && first != Some(self.lag + 1)) {
            wrong.push(format!(
                "the records after {LAG_GROUP}'s offset {} are not all there: {} {}",
                self.lag, page.status, page.text
            ));
        }
        wrong
    }

    /// Commits the lagging group's offset (answered: the engine is quiet).
    async fn commit_lag(&mut self, base: &str, model: &Mutex<Model>, seq: u64) {
        let answer = send(
            self.http
                .put(format!("{base}/v1/consumers/{LAG_GROUP}/offset"))
                .bearer_auth(common::CONSUMER_TOKEN)
                .json(&json!({"seq": seq})),
        )
        .await
        .unwrap_or_else(|class| self.fail(format!("commit of {LAG_GROUP}: {class}")));
        if answer.status != 200 || answer.json["seq"] != seq {
            self.fail(format!(
                "commit of {LAG_GROUP} at {seq}: {} {}",
                answer.status, answer.text
            ));
        }
        self.lag = seq;
        let mut model = model.lock().unwrap();
        model.lag_floor = seq;
        model.max_seq_seen = model.max_seq_seen.max(self.fold.last_seq());
    }

    /// Waits (at most `RETENTION_WAIT`) until retention deleted every closed segment that
    /// was more than a second old and wholly at or before the lagging group's offset when
    /// the wait began.
    async fn await_retention(&mut self, server: &Server, model: &Mutex<Model>) -> Vec<String> {
        let started = Instant::now();
        // Every group's offset holds the records after it: the clients' groups too.
        let floor = model
            .lock()
            .unwrap()
            .groups
            .iter()
            .filter_map(|group| group.certain)
            .fold(self.lag, u64::min);
        let segments: Vec<(u64, std::time::SystemTime)> = server
            .segments()
            .iter()
            .filter_map(|path| {
                let first = path.file_stem()?.to_str()?.parse().ok()?;
                let modified = std::fs::metadata(path).ok()?.modified().ok()?;
                Some((first, modified))
            })
            .collect();
        let now = std::time::SystemTime::now();
        // The first seq of the segment after the last deletable one.
        let due = segments
            .windows(2)
            .take_while(|pair| {
                let old = now
                    .duration_since(pair[0].1)
                    .is_ok_and(|age| age >= Duration::from_secs(1));
                old && pair[1].0 - 1 <= floor
            })
            .last()
            .map(|pair| pair[1].0);
        let Some(due) = due else {
            return Vec::new();
        };
        loop {
            match self.first_kept(&server.base_url).await {
                Ok(first) if first >= due => return Vec::new(),
                Ok(_) => {}
                Err(problem) => return vec![problem],
            }
            if started.elapsed() >= RETENTION_WAIT {
                return vec![format!(
                    "retention kept the segments before seq {due} for {RETENTION_WAIT:?} \
                     (passes every second; the oldest kept is seq {}, every group is at or \
                     past {floor})",
                    self.figures.first_kept
                )];
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything read before is still there, unchanged (`full`: the whole journal, else the
    /// last 200 records), as far as retention kept it (`first_kept` on).
    async fn compare_prefix(&mut self, base: &str, full: bool, first_kept: u64) -> Vec<String> {
        let known = self.fold.last_seq();
        let from = if full { 0 } else { known.saturating_sub(200) };
        let from = from.max(first_kept - 1).min(known);
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
                let mut answers = Vec::new();
                while let Some(joined) = set.join_next().await {
                    let (id, answer) = joined.expect("order read task");
                    let answer = answer
                        .unwrap_or_else(|class| self.fail(format!("GET order {id}: {class}")));
                    answers.push((id, answer));
                }
                // Retention may delete while the orders are read: the oldest record kept
                // after the reads bounds what each view may leave out.
                let first_kept = if self.retention {
                    match self.first_kept(base).await {
                        Ok(first) => first,
                        Err(problem) => {
                            wrong.push(problem);
                            self.figures.first_kept
                        }
                    }
                } else {
                    1
                };
                for (id, answer) in answers {
                    self.figures.orders_read_back += 1;
                    if let Some(problem) = self.order_mismatch(&id, &answer, first_kept) {
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

    /// The order as `GET` shows it against the fold. With retention its first records may
    /// be gone (`history_complete: false`): the history is then the chain's newest records,
    /// those before it are older than `first_kept`, and without the acceptance `user_id`
    /// and `payment` are null and no address is shown.
    fn order_mismatch(&self, id: &str, answer: &Answer, first_kept: u64) -> Option<String> {
        let Some(order) = self.fold.orders.get(id) else {
            return (!(answer.status == 404 && answer.code() == "unknown_order")).then(|| {
                format!(
                    "order {id} is not in the journal, GET says {} {}",
                    answer.status, answer.text
                )
            });
        };
        let view = &answer.json;
        let items = view["history"].as_array().cloned().unwrap_or_default();
        let history: Vec<(String, u64)> = items
            .iter()
            .map(|item| {
                (
                    item["event"].as_str().unwrap_or("").to_string(),
                    item["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let exchanges: Vec<(u64, String)> = items
            .iter()
            .filter(|item| item["event"] == "exchange")
            .map(|item| {
                (
                    item["seq"].as_u64().unwrap_or(0),
                    item["sku"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let complete = view["history_complete"] != false;
        let cut = order.chain.len().saturating_sub(history.len());
        let kept = &order.chain[cut..];
        let accepted_kept = cut == 0;
        let (user, payment, address) = if accepted_kept {
            (
                json!(order.user),
                json!(order.payment),
                order.address.clone(),
            )
        } else {
            (Value::Null, Value::Null, Value::Null)
        };
        let same = answer.status == 200
            && view["status"] == order.status.as_str()
            && view["user_id"] == user
            && view["sku"] == order.sku.as_str()
            && view["qty"] == order.qty
            && view["payment"] == payment
            && view.get("address").unwrap_or(&Value::Null) == &address
            && history == kept
            && complete == accepted_kept
            && (accepted_kept || order.chain[cut - 1].1 < first_kept)
            && exchanges
                == order
                    .exchanges
                    .iter()
                    .filter(|(seq, _)| kept.iter().any(|(_, s)| s == seq))
                    .cloned()
                    .collect::<Vec<_>>();
        (!same).then(|| {
            format!(
                "order {id}: GET says {} {}, the journal (oldest kept seq {first_kept}) says \
                 {order:?}",
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
            // Each exchange answered 200 is journaled, each lost one may be, nothing else is
            // (refusals take no unit): per SKU, 200s ≤ records ≤ 200s + lost.
            if !order.exchanges.is_empty() || journaled.is_some_and(|r| !r.exchanges.is_empty()) {
                self.figures.exchanges_verified += 1;
                for spec in &SKUS {
                    let answered = |certain: bool| {
                        order
                            .exchanges
                            .iter()
                            .filter(|&&(sku, c)| sku == spec.name && (c || !certain))
                            .count()
                    };
                    let (done, sent) = (answered(true), answered(false));
                    let records = journaled.map_or(0, |r| {
                        r.exchanges
                            .iter()
                            .filter(|(_, sku)| sku == spec.name)
                            .count()
                    });
                    if records < done || records > sent {
                        wrong.push(format!(
                            "order {}: {records} exchange records for {} in the journal; \
                             {done} exchanges were answered 200 and {} lost their answer",
                            order.id,
                            spec.name,
                            sent - done
                        ));
                    }
                }
            }
            order.known = journaled.map(|record| record.status.clone());
            order.last = journaled
                .and_then(|record| record.chain.last())
                .map(|(kind, _)| type_static(kind));
            order.doubt = false;
        }
        for ActionAck { index, action, .. } in std::mem::take(&mut model.actions_done) {
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
        for (sku, stock, _) in model.restocks_done.drain(..) {
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
            register.base = now;
            register.acked.clear();
        }
        wrong
    }

    /// Consumer offsets against the model and the journal's end.
    async fn check_offsets(&mut self, base: &str, model: &Mutex<Model>) -> Vec<String> {
        let mut wrong = Vec::new();
        // After a power cut, the end that survived it: an offset is never ahead of it (the
        // engine syncs the journal before it commits one, and clamps at start).
        let last = self.journal_end.unwrap_or_else(|| self.fold.last_seq());
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
        let mut wrong = Vec::new();
        let first_kept = self.first_kept(&base).await.unwrap_or_else(|problem| {
            wrong.push(problem);
            self.figures.first_kept
        });
        wrong.extend(self.check_lag_group(&base).await);
        wrong.extend(self.compare_prefix(&base, full_compare, first_kept).await);
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
        // The lagging group moves to where the previous audit ended: the records after it
        // (read by this audit) must stay until the next one; those before it may go.
        let lag = self.lag_next.max(self.lag);
        self.commit_lag(&base, model, lag).await;
        self.lag_next = self.fold.last_seq();
        wrong.extend(std::mem::take(&mut self.fold.violations));
        let mut model = model.lock().unwrap();
        wrong.extend(std::mem::take(&mut model.violations));
        wrong
    }
}

// ---------------------------------------------------------------------------------------------
// Power cuts: what a cut took, and what the model makes of it.

/// `journal.fsync_interval_ms` of the `interval` runs (the engine's default, set explicitly).
const FSYNC_INTERVAL_MS: u64 = 100;
/// How much longer than the interval an acknowledged record may stay unsynced: the sync
/// thread's wake-up, the `fdatasync` itself under load, and the client's side of the answer.
const LOSS_SLACK: Duration = Duration::from_millis(400);

/// The journal as the files held it at a SIGKILL (the page cache: before the cut), from the
/// last seq known durable on: what a cut may take.
#[derive(Debug, Default)]
struct AtKill {
    at: Option<Instant>,
    /// When the engine was SIGSTOPped in the phase, and until when (its sync thread did not
    /// run then).
    paused: Option<(Instant, Instant)>,
    /// The first seq of the newest segment file.
    newest_first: u64,
    /// Every record after the last durable seq, by seq, as `GET /v1/journal` shows it.
    records: BTreeMap<u64, Value>,
}

impl AtKill {
    /// Engine time from `acked` to the kill: the SIGSTOP pause does not count.
    fn age(&self, acked: Instant) -> Duration {
        let Some(at) = self.at else {
            return Duration::ZERO;
        };
        let mut age = at.saturating_duration_since(acked);
        if let Some((from, to)) = self.paused {
            let (from, to) = (from.max(acked), to.min(at));
            age = age.saturating_sub(to.saturating_duration_since(from));
        }
        age
    }
}

/// The segments of `dir` that may hold a record after `after`, oldest first.
fn tail_segments(dir: &std::path::Path, after: u64) -> Vec<(u64, std::path::PathBuf)> {
    let segments = stampede::journal::scan::list_segments(dir).expect("list journal segments");
    let start = segments
        .iter()
        .rposition(|(first, _)| *first <= after + 1)
        .unwrap_or(0);
    segments[start..].to_vec()
}

/// The journal's records after `after`, read from its files as they are now (valid frames,
/// in order, up to the first that is not), and the first seq of the newest segment.
fn journal_after(dir: &std::path::Path, after: u64) -> (u64, BTreeMap<u64, Value>) {
    use stampede::journal::record::{self, FrameCheck, SEGMENT_HEADER_BYTES};
    let segments = tail_segments(dir, after);
    let newest_first = segments.last().map_or(0, |(first, _)| *first);
    let mut records = BTreeMap::new();
    for (_, path) in segments {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        // Frames are 8-aligned in the file; an aligned buffer keeps their payloads so.
        let mut buffer = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        buffer.extend_from_slice(&bytes);
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset < buffer.len() {
            let FrameCheck::Valid {
                seq,
                payload,
                next_offset,
            } = record::check_frame(&buffer, offset)
            else {
                break;
            };
            if seq > after
                && let Ok(archived) = record::access_record(payload)
            {
                records.insert(seq, archived.to_json(seq));
            }
            offset = next_offset;
        }
    }
    (newest_first, records)
}

/// The last seq that survived a cut, by the engine's own recovery scan, run on a copy of
/// the segments that may hold a record after `after` (the scan cuts a torn tail off).
fn surviving_end(dir: &std::path::Path, after: u64) -> Result<u64, String> {
    let copy = tempfile::Builder::new()
        .prefix("stampede-survived")
        .tempdir()
        .map_err(|e| e.to_string())?;
    for (_, path) in tail_segments(dir, after) {
        let name = path.file_name().expect("segment file name");
        std::fs::copy(&path, copy.path().join(name)).map_err(|e| e.to_string())?;
    }
    let report = stampede::journal::recover(copy.path(), &mut |_, _| Ok(()))
        .map_err(|e| format!("the recovery scan refuses the cut journal: {e}"))?;
    Ok(report.tail.next_seq - 1)
}

/// Losses a power cut caused, over the whole run.
#[derive(Debug, Default)]
struct Losses {
    /// Cuts that took at least one record, and the records they took.
    cuts_with_loss: u64,
    records: u64,
    /// Acknowledged operations whose records a cut took (each within its window).
    orders: u64,
    actions: u64,
    restocks: u64,
    /// Records the audit or the clients had read that a cut took (the fold rewound).
    forgotten: u64,
    /// The largest engine time from an acknowledgement to the kill that took its record.
    max_age: Duration,
    /// The largest number of records one cut took.
    max_records: u64,
}

impl Auditor {
    /// After a cut (and every cut of the starts killed after it), before the audit: checks
    /// that what survived an earlier cut is still there; with a policy that may lose
    /// acknowledged records (`interval`, `none`), checks that each acknowledged record the
    /// cut took is within the policy's window and makes it uncertain, and rewinds the fold
    /// to the surviving end. `survived`: the journal's end after the first cut. With
    /// `always` the model is left as it is: the strict audit must hold.
    fn after_cut(&mut self, model: &Mutex<Model>, kill: &AtKill, survived: u64) -> Vec<String> {
        let mut wrong = Vec::new();
        if survived < self.durable_end {
            wrong.push(format!(
                "the journal ends at seq {survived} after a cut; seq {} had survived an \
                 earlier cut (the files were durable then)",
                self.durable_end
            ));
        }
        let lost: Vec<(u64, Value)> = kill
            .records
            .range(survived + 1..)
            .map(|(seq, record)| (*seq, record.clone()))
            .collect();
        if !lost.is_empty() {
            self.losses.cuts_with_loss += 1;
            self.losses.records += lost.len() as u64;
            self.losses.max_records = self.losses.max_records.max(lost.len() as u64);
        }
        if self.policy == Some("always") || self.policy.is_none() {
            return wrong;
        }
        // Rotation syncs the closed segment under every policy: only the current one's
        // unsynced tail can go.
        if !lost.is_empty() && survived + 1 < kill.newest_first {
            wrong.push(format!(
                "a cut took seq {} on, before the newest segment (from seq {}): rotation \
                 syncs every closed segment",
                survived + 1,
                kill.newest_first
            ));
        }
        if self.fold.last_seq() > survived {
            self.losses.forgotten += self.fold.last_seq() - survived;
            self.fold.rewind(survived);
        }
        self.lag_next = self.lag_next.min(survived);
        let mut model = model.lock().unwrap();
        let cycle = model.cycle;
        let before = model.seen.len();
        model.seen.retain(|&seq, _| seq <= survived);
        self.losses.forgotten += (before - model.seen.len()) as u64;
        model.max_seq_seen = model.max_seq_seen.min(survived);
        let by_id: HashMap<String, usize> = model
            .orders
            .iter()
            .enumerate()
            .map(|(index, order)| (order.id.clone(), index))
            .collect();
        let policy = self.policy.unwrap_or("");
        // Whether an acknowledgement (`acked`, in `acked_cycle`) of the record `seq` may be
        // lost by this cut.
        let mut within = |what: String, seq: u64, acked_cycle: u64, acked: Instant| {
            let age = kill.age(acked);
            self.losses.max_age = self.losses.max_age.max(age);
            let window = Duration::from_millis(FSYNC_INTERVAL_MS) + LOSS_SLACK;
            if acked_cycle != cycle {
                Some(format!(
                    "{what} (seq {seq}) was acknowledged in cycle {acked_cycle}, before the \
                     last restart (whose cut left it durable), and a cut took it"
                ))
            } else if policy == "interval" && age > window {
                Some(format!(
                    "{what} (seq {seq}) was acknowledged {age:?} before the kill and a cut \
                     took it: fsync interval promises at most {FSYNC_INTERVAL_MS} ms (+ \
                     {LOSS_SLACK:?} slack)"
                ))
            } else if policy == "none" && seq < kill.newest_first {
                Some(format!(
                    "{what} (seq {seq}) was in a closed segment (the newest began at seq {}) \
                     and a cut took it",
                    kill.newest_first
                ))
            } else {
                None
            }
        };
        for (seq, record) in lost {
            let kind = type_static(record["type"].as_str().unwrap_or(""));
            if record["type"] == "sku" {
                let name = record["sku"].as_str().unwrap_or("");
                let stock = record["stock_total"].as_u64().unwrap_or(0);
                let Some(sku) = SKUS.iter().position(|spec| spec.name == name) else {
                    continue;
                };
                if let Some(at) = model
                    .restocks_done
                    .iter()
                    .position(|&(s, v, _)| s == sku && v == stock)
                {
                    let (_, _, (acked_cycle, acked)) = model.restocks_done.remove(at);
                    self.losses.restocks += 1;
                    wrong.extend(within(
                        format!("restock of {name} to {stock}"),
                        seq,
                        acked_cycle,
                        acked,
                    ));
                }
                // The stock is now any value of this cycle, or the one before it.
                let register = &mut model.stock[sku];
                let earlier: Vec<u64> = register
                    .base
                    .into_iter()
                    .chain(register.acked.clone())
                    .collect();
                register.maybe.extend(earlier);
                continue;
            }
            let id = record["order_id"].as_str().unwrap_or("");
            let Some(&index) = by_id.get(id) else {
                continue;
            };
            model.touched.insert(index);
            let order = &mut model.orders[index];
            order.doubt = true;
            order.known = None;
            order.last = None;
            if kind == "accepted" {
                if order.seq == Some(seq) {
                    if let Some((acked_cycle, acked)) = order.acked_at.take() {
                        self.losses.orders += 1;
                        wrong.extend(within(format!("order {id}"), seq, acked_cycle, acked));
                    }
                    order.seq = None;
                }
                // Uncertain, as after a lost answer: the final retries resolve it.
                order.lost += 1;
                continue;
            }
            // Every answer that stood for this record (a replay repeats the first's seq).
            let (taken, kept): (Vec<ActionAck>, Vec<ActionAck>) =
                std::mem::take(&mut model.actions_done)
                    .into_iter()
                    .partition(|ack| ack.index == index && ack.seq == Some(seq));
            model.actions_done = kept;
            if !taken.is_empty() {
                self.losses.actions += 1;
            }
            for ack in taken {
                wrong.extend(within(
                    format!("{} of {id}", ack.action),
                    seq,
                    ack.cycle,
                    ack.at,
                ));
                if let Some(sku) = ack.sku {
                    let order = &mut model.orders[index];
                    if let Some(exchange) = order
                        .exchanges
                        .iter_mut()
                        .rev()
                        .find(|(s, certain)| *s == sku && *certain)
                    {
                        exchange.1 = false;
                    }
                }
            }
        }
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
    /// Run the engine with checkpoints and retention (`retain_s = 1`, a pass every second),
    /// and load phases long enough for passes to run.
    retention: bool,
    /// Power cuts: the engine runs with this fsync policy and its power-cut trace on, and
    /// after every SIGKILL its files are cut back to what a power cut could leave
    /// (`common::power_cut`) before the restart.
    power_cut: Option<&'static str>,
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
            retention: false,
            power_cut: None,
        }
    }

    /// The run with checkpoints and retention: `CRASH_LOOP_RETENTION_KILLS` kills, else
    /// `CRASH_LOOP_KILLS` / 3, else `DEFAULT_RETENTION_KILLS` (its phases are longer).
    fn retention_from_env() -> Self {
        let mut settings = Settings::from_env();
        settings.retention = true;
        settings.kills = match std::env::var("CRASH_LOOP_RETENTION_KILLS") {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("CRASH_LOOP_RETENTION_KILLS={text:?}: {e}")),
            Err(_) if std::env::var("CRASH_LOOP_KILLS").is_ok() => (settings.kills / 3).max(1),
            Err(_) => DEFAULT_RETENTION_KILLS,
        };
        settings
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

/// How one cycle ends: after `kill_after` client operations (and, with retention, not
/// before `min_phase` has passed), SIGKILL; with a pause, SIGSTOP after `stop_at` operations
/// for `pause`, then (unless killed while stopped) SIGCONT and `after_cont` more operations
/// before the kill. Then one start per entry of `recovery_kills`, each SIGKILLed that many
/// thousandths of the last start's duration (spawn to `/readyz` 200) after its spawn, before
/// the start that must pass the audit.
#[derive(Debug)]
struct Plan {
    kill_after: u64,
    stop: Option<(u64, Duration, bool, u64)>,
    min_phase: Duration,
    recovery_kills: Vec<u64>,
}

impl Plan {
    fn draw(rng: &mut Rng, retention: bool) -> Plan {
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
        // Retention passes run every second of an engine's life: most phases outlast one.
        let min_phase = if retention && rng.percent(70) {
            Duration::from_millis(rng.range(600, 2500))
        } else {
            Duration::ZERO
        };
        // Up to 1.3 times the last start: most land in recovery, some just after it.
        let mut recovery_kills = Vec::new();
        if rng.percent(35) {
            recovery_kills.push(rng.range(0, 1300));
            if rng.percent(25) {
                recovery_kills.push(rng.range(0, 1300));
            }
        }
        Plan {
            kill_after,
            stop,
            min_phase,
            recovery_kills,
        }
    }
}

/// Where a kill during a start landed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Landed {
    BeforeListening,
    NotReady,
    AfterReady,
}

/// Starts the engine on its data directory and SIGKILLs it `delay` after the spawn, whatever
/// it is doing then: starting up, recovering (`/readyz` 503) or, when recovery was quicker,
/// running. Fails the run when the start fails by itself.
async fn kill_during_start(auditor: &Auditor, server: &mut Server, delay: Duration) -> Landed {
    let spawned = Instant::now();
    match tokio::time::timeout(delay, server.try_restart_listening()).await {
        Err(_) => {
            // The listening line had not come: the port was not open yet.
            server.kill9();
            return Landed::BeforeListening;
        }
        Ok(Err(failure)) => auditor.fail(format!(
            "a start (to be killed during recovery) failed: {} (status {:?})\n{}",
            failure.reason, failure.status, failure.output
        )),
        Ok(Ok(())) => {}
    }
    let probe = http_client(Duration::from_millis(250));
    let mut landed = Landed::NotReady;
    loop {
        if let Some(status) = server.wait_exit(Duration::ZERO).await {
            auditor.fail(format!(
                "the engine exited by itself during recovery: {status}\n{}",
                server.output()
            ));
        }
        if spawned.elapsed() >= delay {
            break;
        }
        if landed == Landed::NotReady {
            let ready = send(probe.get(server.url("/readyz")))
                .await
                .is_ok_and(|answer| answer.status == 200);
            if ready {
                landed = Landed::AfterReady;
            }
        }
        let left = delay.saturating_sub(spawned.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(2))).await;
    }
    server.send_sigkill();
    server.kill9();
    landed
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

/// The checkpoint files in the data directory.
fn checkpoint_files(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir().join("checkpoints")).map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".ckpt"))
            .count()
    })
}

/// A start with checkpoints on disk starts from one (and says so).
fn started_from_checkpoint(server: &Server, checkpoints: usize) -> Vec<String> {
    let said = server.output().contains("starting from a checkpoint");
    if checkpoints > 0 && !said {
        vec![format!(
            "{checkpoints} checkpoint(s) on disk, and the start did not start from one"
        )]
    } else {
        Vec::new()
    }
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
    let mut env = vec![(
        "STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX".to_string(),
        "65536".to_string(),
    )];
    if settings.retention {
        // A pass every second deletes the closed segments older than a second that every
        // group is past, after a checkpoint covering them.
        env.push(("STAMPEDE_JOURNAL_RETAIN_S".to_string(), "1".to_string()));
        env.push((
            "STAMPEDE_JOURNAL_RETENTION_CHECK_S".to_string(),
            "1".to_string(),
        ));
    }
    let mut power_cut = settings.power_cut.map(|_| PowerCut::new());
    let mut cut_rng = CutRng(seed ^ 0x5eed_c0de);
    if let Some(cut) = &power_cut {
        env.extend(cut.env());
    }
    if settings.power_cut == Some("interval") {
        env.push((
            "STAMPEDE_JOURNAL_FSYNC_INTERVAL_MS".to_string(),
            FSYNC_INTERVAL_MS.to_string(),
        ));
    }
    let opts = Opts {
        env,
        ..Opts::default()
            .fsync(settings.power_cut.unwrap_or("always"))
            .shards(2)
    };
    let first_start = Instant::now();
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
                base: Some(s.stock),
                sent_max: s.stock,
                ..Register::default()
            })
            .collect(),
        retention: settings.retention,
        ..Model::default()
    }));
    let mut auditor = Auditor {
        seed,
        http: http_client(AUDIT_TIMEOUT),
        fold: Fold::default(),
        figures: Figures {
            last_start: first_start.elapsed(),
            first_kept: 1,
            ..Figures::default()
        },
        retention: settings.retention,
        lag: 0,
        lag_next: 0,
        policy: settings.power_cut,
        durable_end: 0,
        journal_end: None,
        losses: Losses::default(),
    };
    auditor.pull(&server.base_url).await;
    // From the start a group is at 0, so nothing is deleted before the audit has read it.
    // With power cuts, at the SKUs' records: a commit syncs the journal first, so the setup
    // (which no client's answer stands for) is durable before the first cut.
    let start_lag = if settings.power_cut.is_some() {
        auditor.fold.last_seq()
    } else {
        0
    };
    auditor
        .commit_lag(&server.base_url, &model, start_lag)
        .await;

    for cycle in 0..settings.kills {
        model.lock().unwrap().cycle = cycle;
        let plan = Plan::draw(&mut rng, settings.retention);
        let stop = Arc::new(AtomicBool::new(false));
        let pace = Arc::new(AtomicBool::new(false));
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
            tasks.push(tokio::spawn(client.run(
                stop.clone(),
                pace.clone(),
                ops.clone(),
            )));
        }

        let deadline = Instant::now() + PHASE_MAX;
        let mut in_time = true;
        let mut at_kill = AtKill::default();
        if let Some((stop_at, pause, kill_while_stopped, after_cont)) = plan.stop {
            in_time &= wait_ops(&ops, stop_at, deadline).await;
            signal(&server, libc::SIGSTOP);
            let stopped = Instant::now();
            auditor.figures.stops += 1;
            tokio::time::sleep(pause).await;
            // Killed while stopped: the pause lasts to the kill (`AtKill::age` clips it).
            at_kill.paused = Some((stopped, Instant::now() + JOIN_MAX));
            if kill_while_stopped {
                auditor.figures.killed_while_stopped += 1;
            } else {
                at_kill.paused = Some((stopped, Instant::now()));
                signal(&server, libc::SIGCONT);
                let target = ops.load(Ordering::SeqCst) + after_cont;
                in_time &= wait_ops(&ops, target, deadline).await;
            }
        } else {
            in_time &= wait_ops(&ops, plan.kill_after, deadline).await;
        }
        if !plan
            .stop
            .is_some_and(|(.., killed_while_stopped, _)| killed_while_stopped)
        {
            let phase_end = (deadline - PHASE_MAX + plan.min_phase).min(deadline);
            while Instant::now() < phase_end {
                if ops.load(Ordering::SeqCst) >= plan.kill_after + HELD_OPEN_OPS {
                    pace.store(true, Ordering::SeqCst);
                }
                let left = phase_end.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(5))).await;
            }
        }
        if !in_time {
            auditor.figures.phase_timeouts += 1;
        }
        server.send_sigkill();
        stop.store(true, Ordering::SeqCst);
        let killed_at = Instant::now();
        at_kill.at = Some(killed_at);
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
        let mut survived = None;
        if let Some(cut) = &mut power_cut {
            // What the files held at the kill, from the last durable seq on: what the cut
            // may take.
            let journal = server.journal_dir();
            (at_kill.newest_first, at_kill.records) = journal_after(&journal, auditor.durable_end);
            auditor
                .figures
                .note_cut(&cut.cut(&server.data_dir(), &mut cut_rng));
        }
        let mut engine_wrong = auditor.scan_log(&server);
        if settings.sabotage_after_kill == Some(cycle + 1) {
            // With power cuts: the newest order acknowledged before the last restart, which
            // survived a cut (durable); without: the last record the previous audit read.
            let seq = if power_cut.is_some() {
                let model = model.lock().unwrap();
                model
                    .orders
                    .iter()
                    .filter(|o| o.acked_at.is_some_and(|(c, _)| c < cycle))
                    .filter_map(|o| o.seq)
                    .filter(|&seq| seq <= auditor.durable_end)
                    .max()
                    .expect("an order acknowledged before the last restart")
            } else {
                auditor.fold.last_seq()
            };
            cut_journal_at(&server, seq);
        }
        if power_cut.is_some() {
            match surviving_end(&server.journal_dir(), auditor.durable_end) {
                Ok(end) => survived = Some(end),
                Err(problem) => engine_wrong.push(problem),
            }
        }
        for &thousandths in &plan.recovery_kills {
            let delay = auditor
                .figures
                .last_start
                .mul_f64(thousandths as f64 / 1000.0);
            match kill_during_start(&auditor, &mut server, delay).await {
                Landed::BeforeListening => auditor.figures.recovery_kills_before_listening += 1,
                Landed::NotReady => auditor.figures.recovery_kills_not_ready += 1,
                Landed::AfterReady => auditor.figures.recovery_kills_after_ready += 1,
            }
            if let Some(cut) = &mut power_cut {
                auditor
                    .figures
                    .note_cut(&cut.cut(&server.data_dir(), &mut cut_rng));
            }
            engine_wrong.extend(auditor.scan_log(&server));
        }
        // The starts killed after the first cut were cut too: the journal's end the start
        // below recovers to.
        let mut end_final = survived;
        if let Some(first) = survived
            && !plan.recovery_kills.is_empty()
        {
            end_final = None;
            match surviving_end(&server.journal_dir(), auditor.durable_end) {
                Ok(end) if end < first => engine_wrong.push(format!(
                    "the journal ended at seq {first} after the cut and at seq {end} after \
                     the starts killed since (their cuts must keep what the first left)"
                )),
                Ok(end) => end_final = Some(end),
                Err(problem) => engine_wrong.push(problem),
            }
        }
        let checkpoints = checkpoint_files(&server);
        let restarted = Instant::now();
        let restart = server.try_restart().await;
        auditor.figures.last_start = restarted.elapsed();
        if let Err(failure) = restart {
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
        wrong.extend(started_from_checkpoint(&server, checkpoints));
        if let Some(survived) = survived {
            wrong.extend(auditor.after_cut(&model, &at_kill, survived));
            auditor.journal_end = end_final;
            auditor.durable_end = end_final.unwrap_or(survived);
            if server
                .output()
                .contains("consumer group offset was past the journal's end")
            {
                wrong.push(
                    "the start lowered a consumer group's offset to the journal's end: an \
                     offset was committed ahead of the synced journal"
                        .to_string(),
                );
            }
        }
        wrong.extend(auditor.audit(&server, &model, &mut rng, false).await);
        auditor.journal_end = None;
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
    let mut wrong = auditor.audit(&server, &model, &mut rng, true).await;
    if settings.retention {
        // Retention deletes what no group needs: with the lagging group at the end of the
        // journal, every closed segment older than a second goes within a few passes, and
        // the audits after it (one after a graceful restart from the checkpoint) see the
        // orders whose first records are gone.
        let last = auditor.fold.last_seq();
        auditor.commit_lag(&server.base_url, &model, last).await;
        wrong.extend(auditor.await_retention(&server, &model).await);
        wrong.extend(auditor.audit(&server, &model, &mut rng, true).await);
    }
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
    let checkpoints = checkpoint_files(&server);
    server.restart().await;
    auditor.figures.restarts += 1;
    wrong.extend(started_from_checkpoint(&server, checkpoints));
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
    if figures.power_cuts > 0 {
        let cut = &figures.power_cut;
        eprintln!(
            "crash_loop: power cuts {} (files cut {}, unsynced bytes dropped {}, writes kept \
             torn {}, directory changes undone {})",
            figures.power_cuts, cut.files_cut, cut.bytes_dropped, cut.torn_writes, cut.names_undone
        );
        let losses = &auditor.losses;
        eprintln!(
            "crash_loop: fsync {}: cuts that took records {} ({} records, at most {} in one \
             cut); acknowledged and taken: orders {}, actions {}, restocks {}; records read \
             and then taken {}; largest age of a taken acknowledgement at the kill {:?} \
             (window {}); torn tails repaired {}",
            auditor.policy.unwrap_or("-"),
            losses.cuts_with_loss,
            losses.records,
            losses.max_records,
            losses.orders,
            losses.actions,
            losses.restocks,
            losses.forgotten,
            losses.max_age,
            match auditor.policy {
                Some("interval") => format!("{FSYNC_INTERVAL_MS} ms + {LOSS_SLACK:?}"),
                Some("none") => "the current segment".to_string(),
                _ => "none: nothing acknowledged may be lost".to_string(),
            },
            figures.torn_tails
        );
    }
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
        "crash_loop: kills during a start {} (before the listening line {}, while /readyz \
         was not 200 {}, after recovery {})",
        figures.recovery_kills_before_listening
            + figures.recovery_kills_not_ready
            + figures.recovery_kills_after_ready,
        figures.recovery_kills_before_listening,
        figures.recovery_kills_not_ready,
        figures.recovery_kills_after_ready
    );
    eprintln!(
        "crash_loop: retention {}: checkpoints written {}, starts from a checkpoint {}, \
         segments deleted {}, failed passes {}, oldest record kept {}, {LAG_GROUP} at {} \
         (records after it checked {} times)",
        if auditor.retention { "on" } else { "off" },
        figures.checkpoints,
        figures.checkpoint_starts,
        figures.segments_deleted,
        figures.retention_failures,
        figures.first_kept,
        auditor.lag,
        figures.lag_checks
    );
    eprintln!(
        "crash_loop: exchanges: answered 200 {}, sold out {}, refused {}, lost {}; in the \
         journal {}; orders walked {}, exchange tallies checked {}",
        count("action.exchange 200"),
        count("action.exchange 409 sold_out"),
        count("action.exchange 409 invalid_transition"),
        count("action.exchange error"),
        fold.types.get("exchange").copied().unwrap_or(0),
        count("walk"),
        figures.exchanges_verified
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

/// The same with checkpoints and retention: recovery starts from a checkpoint, and what the
/// audits have read may be deleted, but nothing a consumer group still needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_with_checkpoints_and_retention_keeps_every_answer_true() {
    run(Settings::retention_from_env()).await;
}

/// Power cuts: after every SIGKILL the data directory is cut back to what a power cut could
/// leave (`common::power_cut`). `POWER_CUT_KILLS` sets the number of cuts of each such test
/// (default `DEFAULT_POWER_CUTS`).
fn power_cut_settings(policy: &'static str, retention: bool) -> Settings {
    let mut settings = Settings::from_env();
    settings.power_cut = Some(policy);
    settings.retention = retention;
    settings.kills = std::env::var("POWER_CUT_KILLS")
        .ok()
        .map_or(DEFAULT_POWER_CUTS, |text| {
            text.trim().parse().expect("POWER_CUT_KILLS")
        });
    settings
}

/// With `fsync = "always"` the full audit must pass after every cut: nothing acknowledged is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_always_lose_nothing_acknowledged() {
    run(power_cut_settings("always", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_always_and_retention_lose_nothing_acknowledged() {
    run(power_cut_settings("always", true)).await;
}

/// With `fsync = "interval"` a cut may take what was acknowledged in the last interval (and
/// the slack), nothing older; the audit makes each such loss uncertain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_interval_lose_only_the_last_interval() {
    run(power_cut_settings("interval", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_interval_and_retention_lose_only_the_last_interval() {
    run(power_cut_settings("interval", true)).await;
}

/// With `fsync = "none"` a cut may take the current segment's unsynced tail, nothing in a
/// closed segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_none_lose_only_the_current_segment() {
    run(power_cut_settings("none", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_none_and_retention_lose_only_the_current_segment() {
    run(power_cut_settings("none", true)).await;
}

/// Runs `settings` (which must fail) on its own thread and runtime, so that the run's panic
/// (and the server's drop) happen there; returns the failure's message.
fn failing_run(settings: Settings) -> String {
    let failure = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(settings));
    })
    .join()
    .expect_err("a sabotaged run must fail");
    failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default()
}

/// The relaxed audit is not vacuous: with `interval` (losses allowed in the window) and with
/// `always`, a journal that lost an order acknowledged before the last restart (cut back
/// behind the engine's back after a power cut) fails the run.
#[test]
fn the_power_cut_audit_catches_a_lost_durable_order() {
    for policy in ["interval", "always"] {
        let mut settings = power_cut_settings(policy, false);
        settings.kills = 4;
        settings.seed = 11;
        settings.sabotage_after_kill = Some(3);
        let message = failing_run(settings);
        assert!(
            message.contains("violation(s) after kill 3") && message.contains("seed 11"),
            "{policy}: {message}"
        );
        let named = if policy == "always" {
            message.contains("is not in the journal") || message.contains("the journal ends at")
        } else {
            message.contains("had survived an earlier cut")
                && message.contains("is not in the journal")
        };
        assert!(named, "{policy}: the loss is named: {message}");
    }
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
        retention: false,
        power_cut: None,
    };
    let message = failing_run(settings);
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
        last: None,
        exchanges: Vec::new(),
        exchanges_sent: 0,
        busy: true,
        lost: 0,
        acked_at: None,
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
        None,
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
    judge_action_answer(
        &mut model,
        0,
        "cancel",
        None,
        answer(200, false, view.clone()),
    );
    assert_eq!(model.violations.len(), 4, "{:?}", model.violations);
    judge_action_answer(
        &mut model,
        0,
        "cancel",
        None,
        answer(200, false, view.clone()),
    );
    assert_eq!(
        model.violations.len(),
        5,
        "a second cancel must be a replay"
    );
    judge_action_answer(&mut model, 0, "cancel", None, answer(200, true, view));
    assert_eq!(model.violations.len(), 5, "{:?}", model.violations);
}

#[test]
fn the_fold_takes_an_exchange_unit_from_the_other_sku() {
    let mut fold = Fold::default();
    fold.apply(sku_record(1, "S", 3, 0));
    fold.apply(sku_record(2, "T", 1, 0));
    fold.apply(accepted(3, "a", "u1", "S", 1, "cod"));
    let exchange = |seq: u64, prev: u64, sku: Value| {
        record(
            seq,
            json!({"type": "exchange", "order_id": "a", "status": "shipped", "prev_seq": prev,
                "sku": sku}),
        )
    };
    fold.apply(exchange(4, 3, json!("T")));
    assert!(
        fold.violations[0].contains("while it was confirmed"),
        "{:?}",
        fold.violations
    );
    let mut seq = 4;
    for (action, status) in STAGES.iter().take(7) {
        seq += 1;
        fold.apply(record(
            seq,
            json!({"type": action, "order_id": "a", "status": status, "prev_seq": seq - 1
                - u64::from(seq == 5)}),
        ));
    }
    assert_eq!(fold.violations.len(), 1, "{:?}", fold.violations);
    assert_eq!(fold.orders["a"].status, "shipped");
    fold.apply(exchange(12, 11, json!("T")));
    assert_eq!(fold.violations.len(), 1, "{:?}", fold.violations);
    assert_eq!((fold.skus["T"].sold, fold.skus["S"].sold), (1, 1));
    fold.apply(exchange(13, 12, json!("T")));
    assert!(
        fold.violations[1].contains("oversold by the exchange"),
        "{:?}",
        fold.violations
    );
    fold.apply(exchange(14, 13, Value::Null));
    assert!(
        fold.violations[2].contains("exchange of a with sku null"),
        "{:?}",
        fold.violations
    );
    // The exchanges took no unit of the order's own SKU and left the buyer's count alone.
    assert_eq!(fold.skus["S"].sold, 1);
    assert_eq!(fold.held[&("u1".to_string(), "S".to_string())], 1);
    assert_eq!(
        fold.orders["a"].exchanges,
        vec![
            (12, "T".to_string()),
            (13, "T".to_string()),
            (14, String::new())
        ]
    );
}

#[test]
fn exchange_answers_are_judged_by_state_and_journal() {
    let mut model = Model {
        groups: (0..GROUPS).map(|_| Register::default()).collect(),
        ..Model::default()
    };
    let body = json!({"order_id": "x", "user_id": "u", "sku": "CL-ROOMY", "qty": 1,
        "payment": "cod"});
    model.orders.push(OrderModel {
        id: "x".into(),
        body,
        sku: 3,
        payment: "cod",
        seq: Some(7),
        doubt: false,
        known: Some("confirmed".into()),
        last: Some("accepted"),
        exchanges: Vec::new(),
        exchanges_sent: 0,
        busy: true,
        lost: 0,
        acked_at: None,
    });
    let answer = |status: u16, json: Value| {
        Ok(Answer {
            status,
            replayed: false,
            text: json.to_string(),
            json,
        })
    };
    // A confirmed order takes no exchange: sold out is a lie (the state is judged first).
    let sold_out = json!({"error": "sold_out", "detail": "no unit of CL-HOT-2 left"});
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-2"),
        answer(409, sold_out.clone()),
    );
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert!(
        model.orders[0].doubt,
        "a wrong answer leaves the state unknown"
    );
    model.orders[0].doubt = false;
    model.orders[0].known = Some("completed".into());
    model.orders[0].last = Some("complete");
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-2"),
        answer(409, sold_out),
    );
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    // Done: shipped, and the newest record is this exchange, of this SKU.
    let view = |sku: &str| {
        json!({"order_id": "x", "status": "shipped", "history": [{"event": "accepted", "seq": 7},
            {"event": "exchange", "seq": 20, "sku": sku}]})
    };
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-1"),
        answer(200, view("CL-HOT-2")),
    );
    assert_eq!(model.violations.len(), 2, "{:?}", model.violations);
    model.orders[0].doubt = false;
    model.orders[0].known = Some("completed".into());
    model.orders[0].last = Some("complete");
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-1"),
        answer(200, view("CL-HOT-1")),
    );
    assert_eq!(model.violations.len(), 2, "{:?}", model.violations);
    assert_eq!(model.orders[0].known.as_deref(), Some("shipped"));
    // A shipped order whose latest record is an exchange: a `ship` is refused, not replayed.
    let refused = json!({"error": "invalid_transition",
        "detail": "order x is shipped; ship is not allowed from it"});
    judge_action_answer(&mut model, 0, "ship", None, answer(409, refused.clone()));
    assert_eq!(model.violations.len(), 2, "{:?}", model.violations);
    model.orders[0].last = Some("ship");
    judge_action_answer(&mut model, 0, "ship", None, answer(409, refused));
    assert_eq!(model.violations.len(), 3, "{:?}", model.violations);
    // The journal may hold the exchanges wrongly answered, and must hold the one done.
    assert_eq!(
        model.orders[0].exchanges,
        vec![("CL-HOT-2", false), ("CL-HOT-1", false), ("CL-HOT-1", true)]
    );
}
