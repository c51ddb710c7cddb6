//! The `sale-day` scenario: the order's whole life, not only its intake.
//!
//! `--connections` buyers (closed model) each place orders one after another on a hot SKU or
//! a Zipf catalogue and then act on them as a shop's customers and warehouse would:
//!
//! | share | what happens |
//! |---|---|
//! | [`COD_SHARE`] of orders | cash on delivery: `confirmed` at once |
//! | [`PAY_SHARE`] of prepaid | paid within the timeout |
//! | [`CANCEL_UNPAID_SHARE`] of prepaid | cancelled before paying |
//! | the rest of prepaid | left to expire (the run's SKUs have a short `payment_timeout_s`) |
//! | [`PAID_CANCEL_SHARE`] / [`PAID_REFUND_SHARE`] of paid or cod | cancelled / refunded |
//! | [`FULFIL_SHARE`] of paid or cod | verify, print, pick, check, pack, weigh, ship, deliver, complete |
//! | [`DUPLICATE_CLICK_SHARE`] of new orders | sent again: 200, same seq |
//! | [`ACTION_RETRY_SHARE`] of actions | sent again with the same `Idempotency-Key`: 200 replayed |
//!
//! Meanwhile one consumer per URL tails `GET /v1/journal` and commits its group's offset
//! with the consumer token. With several `--url`s, requests go round robin over them (an
//! order's actions go to the node that holds it when its 201 names none). After the load the
//! audit waits for the expiries, reads every node's journal and checks the lifecycle:
//! stock after cancels, refunds and expiries, every 200 action journaled, statuses equal to
//! the last record, replays, and the consumer's committed offset.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use hyper::header::HeaderValue;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::audit::SkuState;
use crate::recorder::{full_range_histogram, record_micros};
use crate::scenario::SkuSpec;
use crate::target::http::{AdminClient, Connection, Endpoint, HttpAnswer, admin_request};
use crate::zipf::Zipf;

/// The scenario's name on the command line.
pub const NAME: &str = "sale-day";
pub const DESCRIPTION: &str = "the order's life: pay, cancel, expire, cod, fulfilment, \
     retries and double clicks, with a journal consumer group; lifecycle audit";

/// Share of new orders on the hot SKU; the rest go to the catalogue by Zipf rank.
pub const HOT_SHARE: f64 = 0.3;
pub const CATALOGUE_ZIPF_EXPONENT: f64 = 1.0;
pub const COD_SHARE: f64 = 0.25;
pub const PAY_SHARE: f64 = 0.70;
pub const CANCEL_UNPAID_SHARE: f64 = 0.10;
pub const PAID_CANCEL_SHARE: f64 = 0.05;
pub const PAID_REFUND_SHARE: f64 = 0.05;
pub const FULFIL_SHARE: f64 = 0.40;
pub const DUPLICATE_CLICK_SHARE: f64 = 0.05;
pub const ACTION_RETRY_SHARE: f64 = 0.05;
/// The fulfilment actions, in the contract's order.
pub const FULFILMENT: [&str; 9] = [
    "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver", "complete",
];
/// Records asked for per journal page (the engine may cap it lower).
const JOURNAL_PAGE: usize = 1000;
/// The consumer's pause when it has caught up.
const CONSUMER_IDLE: Duration = Duration::from_millis(20);
/// Bound on the orders one buyer keeps for the audit (about 100 bytes each): a buyer stops
/// placing new orders beyond it, so a long run cannot exhaust the generator's memory.
const ORDERS_PER_BUYER_MAX: usize = 200_000;
/// Orders whose `GET /v1/orders/{id}` is compared with the journal (each is one request).
const STATUS_SAMPLE: usize = 200;

#[derive(Debug, Clone)]
pub struct SaleDaySettings {
    pub urls: Vec<String>,
    pub admin_token: String,
    pub consumer_token: String,
    pub run_id: String,
    pub seed: u64,
    pub duration: Duration,
    pub connections: usize,
    pub timeout: Duration,
    pub payment_timeout_s: u32,
    pub hot_stock: u64,
    pub catalogue_skus: u64,
    pub catalogue_stock: u64,
    /// Longest wait, after the load and the payment timeout, for the journal to hold what
    /// the answers imply.
    pub audit_wait: Duration,
}

impl SaleDaySettings {
    pub fn skus(&self) -> Vec<SkuSpec> {
        let mut skus = vec![SkuSpec {
            name: format!("HOT-{}-0", self.run_id),
            stock: self.hot_stock,
            per_user_limit: 0,
            max_per_order: 1,
            payment_timeout_s: self.payment_timeout_s,
        }];
        for index in 0..self.catalogue_skus {
            skus.push(SkuSpec {
                name: format!("CAT-{}-{index}", self.run_id),
                stock: self.catalogue_stock,
                per_user_limit: 0,
                max_per_order: 2,
                payment_timeout_s: self.payment_timeout_s,
            });
        }
        skus
    }
}

/// Requests spread over the URLs in turn, as a round-robin load balancer does.
#[derive(Debug)]
pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(len: usize) -> Self {
        Self {
            len: len.max(1),
            next: AtomicUsize::new(0),
        }
    }
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.len
    }
}

/// How long a cluster is left quiet before its global stock figures are read (the
/// contract's promise holds after 2 s of quiet).
const CLUSTER_QUIET: Duration = Duration::from_millis(2500);

/// Where an order lives: the node its 201 named (cluster mode), or else the URL that
/// answered it (independent engines).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeRef {
    Named(String),
    Url(usize),
}

/// One order of the run, as its answers describe it.
#[derive(Debug, Clone)]
pub struct OrderEntry {
    pub order_id: String,
    pub sku: usize,
    pub qty: u64,
    pub cod: bool,
    pub node: NodeRef,
    pub seq: u64,
    /// Actions answered 200 (first time), in order.
    pub actions: Vec<&'static str>,
    /// Left unpaid, or an action was refused because the order had already expired.
    pub expect_expiry: bool,
    /// An action's outcome is unknown (timeout, 5xx): the journal decides its status. With
    /// `seq` 0 the order itself was never answered.
    pub uncertain: bool,
}

impl OrderEntry {
    /// The status the answers imply once every expiry is due.
    pub fn expected_status(&self) -> &'static str {
        match self.actions.last() {
            Some(action) => status_after(action),
            None if self.expect_expiry => "expired",
            None if self.cod => "confirmed",
            None => "pending_payment",
        }
    }
}

pub fn status_after(action: &str) -> &'static str {
    match action {
        "pay" => "paid",
        "cancel" => "cancelled",
        "refund" => "refunded",
        "verify" => "verified",
        "print" => "printed",
        "pick" => "picked",
        "check" => "checked",
        "pack" => "packed",
        "weigh" => "weighed",
        "ship" => "shipped",
        "deliver" => "delivered",
        "complete" => "completed",
        _ => "unknown",
    }
}

/// Statuses whose units are back in stock.
fn returns_stock(status: &str) -> bool {
    matches!(status, "cancelled" | "refunded" | "expired" | "rejected")
}

/// Latency and answers of one action class.
#[derive(Debug)]
struct ClassStats {
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl ClassStats {
    fn new() -> Self {
        Self {
            latency: full_range_histogram(3),
            statuses: BTreeMap::new(),
            errors: 0,
        }
    }
    fn merge(&mut self, other: &ClassStats) {
        let _ = self.latency.add(&other.latency);
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.errors += other.errors;
    }
}

#[derive(Debug, Default)]
struct Stats {
    classes: BTreeMap<&'static str, ClassStats>,
}

impl Stats {
    fn record(&mut self, class: &'static str, started: Instant, status: Option<u16>) {
        let stats = self.classes.entry(class).or_insert_with(ClassStats::new);
        record_micros(
            &mut stats.latency,
            started.elapsed().as_micros().try_into().unwrap_or(u64::MAX),
        );
        match status {
            Some(status) => *stats.statuses.entry(status).or_default() += 1,
            None => stats.errors += 1,
        }
    }
    fn merge(&mut self, other: Stats) {
        for (class, stats) in other.classes {
            self.classes
                .entry(class)
                .or_insert_with(ClassStats::new)
                .merge(&stats);
        }
    }
}

/// Counts kept by the buyers for the replay checks.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplayCounts {
    pub duplicate_clicks: u64,
    pub duplicate_clicks_mismatched: u64,
    pub action_retries: u64,
    pub action_retries_mismatched: u64,
    pub sold_out: u64,
    pub unexpected_answers: u64,
}

impl ReplayCounts {
    fn merge(&mut self, other: &ReplayCounts) {
        self.duplicate_clicks += other.duplicate_clicks;
        self.duplicate_clicks_mismatched += other.duplicate_clicks_mismatched;
        self.action_retries += other.action_retries;
        self.action_retries_mismatched += other.action_retries_mismatched;
        self.sold_out += other.sold_out;
        self.unexpected_answers += other.unexpected_answers;
    }
}

/// The URLs, each with its own connection per buyer.
struct Nodes {
    endpoints: Vec<Endpoint>,
    round_robin: RoundRobin,
}

impl Nodes {
    fn route(&self, node: &NodeRef) -> usize {
        match node {
            NodeRef::Url(index) => *index,
            NodeRef::Named(_) => self.round_robin.pick(),
        }
    }
}

struct Buyer {
    index: usize,
    nodes: Arc<Nodes>,
    connections: Vec<Option<Connection>>,
    timeout: Duration,
    rng: SmallRng,
    stats: Stats,
    counts: ReplayCounts,
    orders: Vec<OrderEntry>,
}

#[derive(Deserialize)]
struct Accepted {
    seq: u64,
    #[serde(default)]
    node: Option<String>,
}

impl Buyer {
    /// One request on node `node`; `None` when it timed out or the connection failed.
    async fn send(
        &mut self,
        node: usize,
        method: Method,
        path: &str,
        body: String,
        idempotency_key: Option<&str>,
    ) -> Option<HttpAnswer> {
        for _attempt in 0..2 {
            if self.connections[node].is_none() {
                let opened = tokio::time::timeout(
                    self.timeout,
                    Connection::open(&self.nodes.endpoints[node]),
                )
                .await;
                match opened {
                    Ok(Ok(connection)) => self.connections[node] = Some(connection),
                    _ => return None,
                }
            }
            let mut request = admin_request(
                &self.nodes.endpoints[node],
                None,
                method.clone(),
                path,
                Bytes::from(body.clone()),
            )
            .ok()?;
            if let Some(key) = idempotency_key {
                request
                    .headers_mut()
                    .insert("idempotency-key", HeaderValue::from_str(key).ok()?);
            }
            let connection = self.connections[node].as_mut()?;
            match tokio::time::timeout(self.timeout, connection.send(request)).await {
                Ok(Ok(answer)) => return Some(answer),
                // Not sent at all: a keep-alive connection the server had closed; once more.
                Ok(Err(crate::target::SendError::NotSent(_))) => self.connections[node] = None,
                _ => {
                    self.connections[node] = None;
                    return None;
                }
            }
        }
        None
    }

    fn draw(&mut self, share: f64) -> bool {
        self.rng.random_bool(share)
    }

    async fn one_order(&mut self, number: u64, run_id: &str, skus: &[SkuSpec], zipf: &Zipf) {
        let sku = if self.draw(HOT_SHARE) {
            0
        } else {
            1 + zipf.sample(&mut self.rng)
        };
        let spec = &skus[sku];
        let qty = self.rng.random_range(1..=u64::from(spec.max_per_order));
        let cod = self.draw(COD_SHARE);
        let order_id = format!("{run_id}-{}-{number}", self.index);
        let user = self.rng.random_range(0..1_000_000u32);
        let body = format!(
            r#"{{"order_id":"{order_id}","user_id":"u{user}","sku":"{}","qty":{qty},"payment":"{}"}}"#,
            spec.name,
            if cod { "cod" } else { "prepaid" }
        );
        let node = self.nodes.round_robin.pick();
        let started = Instant::now();
        let answer = self
            .send(node, Method::POST, "/v1/orders", body.clone(), None)
            .await;
        self.stats
            .record("new_order", started, answer.as_ref().map(|a| a.status));
        let Some(answer) = answer else {
            // Unanswered: the engine may have taken it. Kept with seq 0 so the audit counts
            // its units by the journal, wherever it is found (or nowhere).
            self.orders.push(OrderEntry {
                order_id,
                sku,
                qty,
                cod,
                node: NodeRef::Url(node),
                seq: 0,
                actions: Vec::new(),
                expect_expiry: false,
                uncertain: true,
            });
            return;
        };
        let accepted = match answer.status {
            201 => serde_json::from_slice::<Accepted>(&answer.body).ok(),
            409 => {
                self.counts.sold_out += 1;
                return;
            }
            _ => None,
        };
        let Some(accepted) = accepted else {
            self.counts.unexpected_answers += 1;
            return;
        };
        let mut order = OrderEntry {
            order_id,
            sku,
            qty,
            cod,
            node: match accepted.node.clone() {
                Some(name) => NodeRef::Named(name),
                None => NodeRef::Url(node),
            },
            seq: accepted.seq,
            actions: Vec::new(),
            expect_expiry: false,
            uncertain: false,
        };
        if self.draw(DUPLICATE_CLICK_SHARE) {
            let target = self.nodes.route(&order.node);
            let started = Instant::now();
            let again = self
                .send(target, Method::POST, "/v1/orders", body, None)
                .await;
            self.stats
                .record("duplicate_click", started, again.as_ref().map(|a| a.status));
            self.counts.duplicate_clicks += 1;
            let same = again.as_ref().is_some_and(|a| {
                a.status == 200
                    && a.replayed
                    && serde_json::from_slice::<Accepted>(&a.body)
                        .is_ok_and(|b| b.seq == accepted.seq && b.node == accepted.node)
            });
            if !same {
                self.counts.duplicate_clicks_mismatched += 1;
            }
        }
        self.life(&mut order).await;
        self.orders.push(order);
    }

    /// The actions of one order after its 201.
    async fn life(&mut self, order: &mut OrderEntry) {
        if !order.cod {
            if self.draw(CANCEL_UNPAID_SHARE) {
                self.act(order, "cancel").await;
                return;
            }
            if !self.draw(PAY_SHARE / (1.0 - CANCEL_UNPAID_SHARE)) {
                order.expect_expiry = true;
                return;
            }
            if !self.act(order, "pay").await {
                return;
            }
        }
        if self.draw(PAID_CANCEL_SHARE) {
            self.act(order, "cancel").await;
        } else if self.draw(PAID_REFUND_SHARE) {
            self.act(order, "refund").await;
        } else if self.draw(FULFIL_SHARE) {
            for action in FULFILMENT {
                if !self.act(order, action).await {
                    return;
                }
            }
        }
    }

    /// One action, maybe retried with its key; true when it was answered 200.
    async fn act(&mut self, order: &mut OrderEntry, action: &'static str) -> bool {
        let key = format!("{}.{action}", order.order_id);
        let path = format!("/v1/orders/{}/{action}", order.order_id);
        let node = self.nodes.route(&order.node);
        let started = Instant::now();
        let answer = self
            .send(node, Method::POST, &path, String::new(), Some(&key))
            .await;
        self.stats
            .record(action, started, answer.as_ref().map(|a| a.status));
        match answer.as_ref().map(|a| a.status) {
            Some(200) => order.actions.push(action),
            // The order expired before the buyer acted: the timer's doing, checked as such.
            Some(409) if order.actions.is_empty() && !order.cod => {
                order.expect_expiry = true;
                return false;
            }
            Some(status) if status < 500 => {
                self.counts.unexpected_answers += 1;
                return false;
            }
            _ => {
                order.uncertain = true;
                return false;
            }
        }
        if self.draw(ACTION_RETRY_SHARE) {
            let node = self.nodes.route(&order.node);
            let started = Instant::now();
            let again = self
                .send(node, Method::POST, &path, String::new(), Some(&key))
                .await;
            self.stats
                .record("action_retry", started, again.as_ref().map(|a| a.status));
            self.counts.action_retries += 1;
            if !again.is_some_and(|a| a.status == 200 && a.replayed) {
                self.counts.action_retries_mismatched += 1;
            }
        }
        true
    }
}

/// One URL's journal as read by the consumer group.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConsumerReport {
    pub url: String,
    pub records: u64,
    pub commits: u64,
    pub commit_failures: u64,
    pub last_committed: u64,
    pub read_back: Option<u64>,
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Tails `url`'s journal from `from` and commits each page, until `stop` is set and a page
/// comes back empty.
async fn consume(
    mut reader: AdminClient,
    mut committer: AdminClient,
    url: String,
    group: String,
    from: u64,
    stop: Arc<AtomicBool>,
) -> (ConsumerReport, Stats) {
    let mut stats = Stats::default();
    let mut report = ConsumerReport {
        url,
        last_committed: from,
        ..ConsumerReport::default()
    };
    let mut offset = from;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let started = Instant::now();
        let page = reader
            .call(
                Method::GET,
                &format!("/v1/journal?from={offset}&limit={JOURNAL_PAGE}"),
                Bytes::new(),
            )
            .await;
        stats.record(
            "journal_page",
            started,
            page.as_ref().ok().map(|a| a.status),
        );
        let mut last = offset;
        let mut count = 0;
        if let Ok(answer) = &page
            && answer.status == 200
        {
            for line in String::from_utf8_lossy(&answer.body).lines() {
                if let Ok(record) = serde_json::from_str::<SeqOnly>(line) {
                    last = last.max(record.seq);
                    count += 1;
                }
            }
        }
        if count == 0 {
            if stopping {
                break;
            }
            tokio::time::sleep(CONSUMER_IDLE).await;
            continue;
        }
        report.records += count;
        offset = last;
        let started = Instant::now();
        let committed = committer
            .call(
                Method::PUT,
                &format!("/v1/consumers/{group}/offset"),
                Bytes::from(format!(r#"{{"seq":{last}}}"#)),
            )
            .await;
        let status = committed.as_ref().ok().map(|a| a.status);
        stats.record("offset_commit", started, status);
        if matches!(status, Some(200 | 204)) {
            report.commits += 1;
            report.last_committed = last;
        } else {
            report.commit_failures += 1;
        }
    }
    #[derive(Deserialize)]
    struct Offset {
        seq: u64,
    }
    report.read_back = reader
        .call(
            Method::GET,
            &format!("/v1/consumers/{group}/offset"),
            Bytes::new(),
        )
        .await
        .ok()
        .filter(|a| a.status == 200)
        .and_then(|a| serde_json::from_slice::<Offset>(&a.body).ok())
        .map(|o| o.seq);
    (report, stats)
}

/// What one URL's journal says about this run's orders.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournaledOrder {
    pub accepted: u32,
    pub accepted_seq: u64,
    /// Action records (not the timer's), in journal order.
    pub actions: Vec<String>,
    pub last_status: String,
}

/// This run's orders found in each URL's journal (bounded by the orders the buyers placed,
/// themselves bounded by [`ORDERS_PER_BUYER_MAX`]; other runs' records are not kept).
#[derive(Debug, Default)]
pub struct JournalIndex {
    /// Per URL: order id → what its records say.
    pub nodes: Vec<HashMap<String, JournaledOrder>>,
    /// Per URL: the last seq read.
    pub last_seq: Vec<u64>,
}

impl JournalIndex {
    pub fn new(heads: &[u64]) -> Self {
        Self {
            nodes: vec![HashMap::new(); heads.len()],
            last_seq: heads.to_vec(),
        }
    }

    /// Adds one NDJSON record read from URL `node`; records of other runs are skipped.
    pub fn add_line(&mut self, node: usize, prefix: &str, line: &str) -> Result<(), String> {
        let record: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("unreadable record {line:?}: {e}"))?;
        let seq = record["seq"].as_u64().ok_or("a record without seq")?;
        self.last_seq[node] = self.last_seq[node].max(seq);
        let Some(order_id) = record["order_id"].as_str() else {
            return Ok(());
        };
        if !order_id.starts_with(prefix) {
            return Ok(());
        }
        let kind = record["type"].as_str().unwrap_or("");
        let entry = self.nodes[node].entry(order_id.to_owned()).or_default();
        match kind {
            "accepted" => {
                entry.accepted += 1;
                entry.accepted_seq = seq;
                entry.last_status = if record["payment"] == "cod" {
                    "confirmed".into()
                } else {
                    "pending_payment".into()
                };
            }
            "payment_reminder" | "expired" => {}
            action => entry.actions.push(action.to_owned()),
        }
        if let Some(status) = record["status"].as_str() {
            entry.last_status = status.to_owned();
        }
        if kind == "expired" {
            entry.last_status = "expired".into();
        }
        Ok(())
    }
}

/// Finds each order in the journals: an order naming no node must be in the journal of the
/// URL that answered it, and only there; orders naming a node must all be in one URL's
/// journal per node name. Returns, per order, the URL whose journal holds it (`None` when
/// that failed), and the problems.
pub fn locate_orders(
    orders: &[OrderEntry],
    index: &JournalIndex,
) -> (Vec<Option<usize>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut node_urls: HashMap<&str, usize> = HashMap::new();
    let mut located = Vec::with_capacity(orders.len());
    for order in orders {
        let holders: Vec<usize> = (0..index.nodes.len())
            .filter(|&n| index.nodes[n].contains_key(&order.order_id))
            .collect();
        let unanswered = order.uncertain && order.seq == 0;
        let found = match (holders.as_slice(), &order.node) {
            ([], _) if unanswered => None,
            ([one], _) if unanswered => Some(*one),
            ([], _) => {
                problems.push(format!("{} is in no node's journal", order.order_id));
                None
            }
            ([one], NodeRef::Url(url)) if one == url => Some(*one),
            ([one], NodeRef::Url(url)) => {
                problems.push(format!(
                    "{} was answered by URL {url} but is in URL {one}'s journal",
                    order.order_id
                ));
                None
            }
            ([one], NodeRef::Named(name)) => match node_urls.get(name.as_str()) {
                Some(url) if url != one => {
                    problems.push(format!(
                        "{} names node {name}, whose other orders are in URL {url}'s journal, \
                         but is in URL {one}'s",
                        order.order_id
                    ));
                    None
                }
                _ => {
                    node_urls.insert(name, *one);
                    Some(*one)
                }
            },
            (several, _) => {
                problems.push(format!(
                    "{} is in the journals of URLs {several:?}",
                    order.order_id
                ));
                None
            }
        };
        located.push(found);
    }
    (located, problems)
}

/// One check of the lifecycle audit.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &'static str, problems: &[String], ok_detail: String) -> Check {
    Check {
        name,
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            ok_detail
        } else {
            let mut text = format!("{} problem(s): ", problems.len());
            text.push_str(&problems[..problems.len().min(5)].join("; "));
            text
        },
    }
}

/// The final SKU figures as the audit compares them.
#[derive(Debug, Clone, Serialize)]
pub struct SkuFigures {
    pub sku: String,
    pub stock_total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub expected_reserved: u64,
    pub expected_sold: u64,
}

/// The lifecycle checks, from the orders, the journals and the SKU figures (summed over the
/// URLs for independent engines, or one node's for a cluster).
pub fn lifecycle_checks(
    orders: &[OrderEntry],
    index: &JournalIndex,
    skus: &[SkuSpec],
    states: &[Option<SkuState>],
    counts: &ReplayCounts,
) -> (Vec<Check>, Vec<SkuFigures>) {
    let mut checks = Vec::new();
    let (located, mut problems) = locate_orders(orders, index);
    let mut journaled: Vec<Option<&JournaledOrder>> = Vec::with_capacity(orders.len());
    for (order, node) in orders.iter().zip(&located) {
        let record = node.and_then(|n| index.nodes[n].get(&order.order_id));
        let unanswered = order.uncertain && order.seq == 0;
        if let Some(record) = record
            && (record.accepted != 1 || (record.accepted_seq != order.seq && !unanswered))
        {
            problems.push(format!(
                "{}: {} accepted record(s), seq {} (answered {})",
                order.order_id, record.accepted, record.accepted_seq, order.seq
            ));
        }
        journaled.push(record);
    }
    checks.push(check(
        "orders_in_their_nodes_journal",
        &problems,
        format!(
            "{} orders answered 201, each accepted once in its node's journal ({} journal(s))",
            orders.iter().filter(|o| o.seq != 0).count(),
            index.nodes.len()
        ),
    ));

    let mut action_problems = Vec::new();
    let mut status_problems = Vec::new();
    let mut expiry_problems = Vec::new();
    let (mut actions, mut uncertain, mut expiries) = (0u64, 0u64, 0u64);
    for (order, record) in orders.iter().zip(&journaled) {
        let Some(record) = record else { continue };
        if order.uncertain {
            uncertain += 1;
            continue;
        }
        actions += order.actions.len() as u64;
        if record
            .actions
            .iter()
            .map(String::as_str)
            .ne(order.actions.iter().copied())
        {
            action_problems.push(format!(
                "{}: answered 200 {:?}, journaled {:?}",
                order.order_id, order.actions, record.actions
            ));
        }
        let expected = order.expected_status();
        if expected == "expired" {
            expiries += 1;
            if record.last_status != "expired" {
                expiry_problems.push(format!(
                    "{} left unpaid, its last record says {}",
                    order.order_id, record.last_status
                ));
            }
        } else if record.last_status != expected {
            status_problems.push(format!(
                "{}: the answers imply {expected}, the last record says {}",
                order.order_id, record.last_status
            ));
        }
    }
    checks.push(check(
        "every_200_action_journaled",
        &action_problems,
        format!(
            "{actions} actions answered 200, each journaled once in order \
             ({uncertain} orders with an unanswered action left to the journal)"
        ),
    ));
    checks.push(check(
        "status_equals_last_record",
        &status_problems,
        "every order's last record carries the status its answers imply".into(),
    ));
    checks.push(check(
        "unpaid_orders_expired",
        &expiry_problems,
        format!("{expiries} orders left unpaid, each journaled expired"),
    ));

    let mut replay_problems = Vec::new();
    if counts.duplicate_clicks_mismatched > 0 {
        replay_problems.push(format!(
            "{} of {} duplicate clicks not answered 200 replayed with the first seq and node",
            counts.duplicate_clicks_mismatched, counts.duplicate_clicks
        ));
    }
    if counts.action_retries_mismatched > 0 {
        replay_problems.push(format!(
            "{} of {} action retries not answered 200 replayed",
            counts.action_retries_mismatched, counts.action_retries
        ));
    }
    checks.push(check(
        "retries_replayed",
        &replay_problems,
        format!(
            "{} duplicate clicks and {} action retries answered 200 replayed",
            counts.duplicate_clicks, counts.action_retries
        ),
    ));

    // Stock: the units still held by each SKU's orders, by the answers (or, for an order with
    // an unanswered action, by its last record).
    let mut expected = vec![(0u64, 0u64); skus.len()];
    for (order, record) in orders.iter().zip(&journaled) {
        let status = if order.uncertain {
            match record {
                Some(record) => record.last_status.as_str(),
                None => continue,
            }
        } else {
            order.expected_status()
        };
        if returns_stock(status) {
            continue;
        }
        if status == "pending_payment" {
            expected[order.sku].0 += order.qty;
        } else {
            expected[order.sku].1 += order.qty;
        }
    }
    let mut stock_problems = Vec::new();
    let mut figures = Vec::new();
    for ((spec, state), (reserved, sold)) in skus.iter().zip(states).zip(&expected) {
        let Some(state) = state else {
            stock_problems.push(format!("{}: its figures could not be read", spec.name));
            continue;
        };
        if state.available + state.reserved + state.sold != state.stock_total {
            stock_problems.push(format!(
                "{}: available {} + reserved {} + sold {} != stock_total {}",
                spec.name, state.available, state.reserved, state.sold, state.stock_total
            ));
        }
        if state.reserved != *reserved || state.sold != *sold {
            stock_problems.push(format!(
                "{}: reserved {} sold {}, the answers imply reserved {reserved} sold {sold}",
                spec.name, state.reserved, state.sold
            ));
        }
        figures.push(SkuFigures {
            sku: spec.name.clone(),
            stock_total: state.stock_total,
            available: state.available,
            reserved: state.reserved,
            sold: state.sold,
            expected_reserved: *reserved,
            expected_sold: *sold,
        });
    }
    checks.push(check(
        "stock_after_cancels_refunds_expiries",
        &stock_problems,
        format!(
            "{} SKUs: reserved and sold equal what the answers imply, and add up",
            skus.len()
        ),
    ));
    (checks, figures)
}

/// Latency of one class, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct ClassSummary {
    pub class: String,
    pub count: u64,
    pub errors: u64,
    pub statuses: BTreeMap<String, u64>,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaleDaySummary {
    pub tool: &'static str,
    pub scenario: &'static str,
    pub run_id: String,
    pub urls: Vec<String>,
    pub connections: usize,
    pub duration_s: f64,
    pub payment_timeout_s: u32,
    pub seed: u64,
    pub orders_created: u64,
    pub orders_by_expected_status: BTreeMap<String, u64>,
    pub requests: u64,
    pub requests_per_s: f64,
    pub classes: Vec<ClassSummary>,
    pub counts: ReplayCounts,
    pub consumers: Vec<ConsumerReport>,
    pub skus: Vec<SkuFigures>,
    pub audit_passed: bool,
    pub checks: Vec<Check>,
    pub exit_code: u8,
}

async fn read_journals(
    readers: &mut [AdminClient],
    index: &mut JournalIndex,
    prefix: &str,
) -> anyhow::Result<()> {
    for (node, reader) in readers.iter_mut().enumerate() {
        loop {
            let from = index.last_seq[node];
            let answer = reader
                .call(
                    Method::GET,
                    &format!("/v1/journal?from={from}&limit={JOURNAL_PAGE}"),
                    Bytes::new(),
                )
                .await?;
            if answer.status != 200 {
                bail!("GET /v1/journal answered {}", answer.status);
            }
            let text = String::from_utf8_lossy(&answer.body);
            let mut lines = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                index
                    .add_line(node, prefix, line)
                    .map_err(anyhow::Error::msg)?;
                lines += 1;
            }
            if lines == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// True once the journals hold every order and every expiry the answers imply.
fn journals_complete(orders: &[OrderEntry], index: &JournalIndex) -> bool {
    orders.iter().all(|order| {
        let found = index
            .nodes
            .iter()
            .find_map(|node| node.get(&order.order_id));
        match found {
            None => order.uncertain && order.seq == 0,
            Some(record) => {
                order.uncertain
                    || (record.actions.len() >= order.actions.len()
                        && (order.expected_status() != "expired"
                            || record.last_status == "expired"))
            }
        }
    })
}

/// Runs the sale day against every URL and audits it.
pub async fn run(settings: SaleDaySettings) -> anyhow::Result<SaleDaySummary> {
    if settings.urls.is_empty() {
        bail!("no --url given");
    }
    let skus = settings.skus();
    let mut endpoints = Vec::new();
    let mut admins = Vec::new();
    let mut heads = Vec::new();
    for url in &settings.urls {
        let endpoint = Endpoint::resolve(url).await?;
        let mut admin = AdminClient::new(endpoint.clone(), Some(&settings.admin_token))?;
        admin.check_ready().await?;
        heads.push(
            admin
                .journal_head()
                .await
                .with_context(|| format!("cannot read {url}'s journal head"))?,
        );
        admin.check_run_id_unused(&settings.run_id, &skus).await?;
        endpoints.push(endpoint);
        admins.push(admin);
    }
    // Every node gets the SKUs: a cluster sets the same global figures again (the 200 is
    // idempotent); independent engines each get their own stock.
    for admin in &admins {
        crate::target::http::create_skus(admin, &skus)
            .await
            .context("creating the sale-day SKUs")?;
    }

    let group = format!("stampede-load-{}", settings.run_id);
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = tokio::task::JoinSet::new();
    for (node, endpoint) in endpoints.iter().enumerate() {
        let reader = AdminClient::new(endpoint.clone(), None)?;
        let committer = AdminClient::new(endpoint.clone(), Some(&settings.consumer_token))?;
        consumers.spawn(consume(
            reader,
            committer,
            settings.urls[node].clone(),
            group.clone(),
            heads[node],
            stop.clone(),
        ));
    }

    let nodes = Arc::new(Nodes {
        endpoints: endpoints.clone(),
        round_robin: RoundRobin::new(endpoints.len()),
    });
    let zipf = Arc::new(
        Zipf::new(
            usize::try_from(settings.catalogue_skus.max(1)).unwrap_or(usize::MAX),
            CATALOGUE_ZIPF_EXPONENT,
        )
        .map_err(anyhow::Error::msg)?,
    );
    let skus = Arc::new(skus);
    let started = Instant::now();
    let deadline = started + settings.duration;
    let mut buyers = tokio::task::JoinSet::new();
    for index in 0..settings.connections {
        let mut buyer = Buyer {
            index,
            nodes: nodes.clone(),
            connections: (0..endpoints.len()).map(|_| None).collect(),
            timeout: settings.timeout,
            rng: SmallRng::seed_from_u64(settings.seed ^ (index as u64).wrapping_mul(0x9E37_79B9)),
            stats: Stats::default(),
            counts: ReplayCounts::default(),
            orders: Vec::new(),
        };
        let run_id = settings.run_id.clone();
        let skus = skus.clone();
        let zipf = zipf.clone();
        buyers.spawn(async move {
            let mut number = 0;
            while Instant::now() < deadline && buyer.orders.len() < ORDERS_PER_BUYER_MAX {
                buyer.one_order(number, &run_id, &skus, &zipf).await;
                number += 1;
            }
            buyer
        });
    }
    let mut stats = Stats::default();
    let mut counts = ReplayCounts::default();
    let mut orders = Vec::new();
    while let Some(done) = buyers.join_next().await {
        let buyer = done.context("a buyer task panicked")?;
        stats.merge(buyer.stats);
        counts.merge(&buyer.counts);
        orders.extend(buyer.orders);
    }
    let elapsed = started.elapsed();

    // The audit: wait for the expiries and the journals, bounded.
    let prefix = format!("{}-", settings.run_id);
    let mut index = JournalIndex::new(&heads);
    let wait = Duration::from_secs(u64::from(settings.payment_timeout_s)) + settings.audit_wait;
    let audit_deadline = Instant::now() + wait;
    loop {
        read_journals(&mut admins, &mut index, &prefix).await?;
        if journals_complete(&orders, &index) || Instant::now() >= audit_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster = orders
        .iter()
        .any(|order| matches!(order.node, NodeRef::Named(_)));
    if cluster {
        // The contract promises a cluster's global figures once it has been quiet for 2 s
        // (each node publishes its own every 250 ms).
        tokio::time::sleep(CLUSTER_QUIET).await;
    }
    let mut states: Vec<Option<SkuState>> = Vec::new();
    for spec in skus.iter() {
        let mut total: Option<SkuState> = None;
        let readers = if cluster {
            &mut admins[..1]
        } else {
            &mut admins[..]
        };
        let mut readable = true;
        for admin in readers.iter_mut() {
            match admin.read_sku(&spec.name).await {
                Ok(state) => {
                    total = Some(match total {
                        None => state,
                        Some(sum) => SkuState {
                            sku: sum.sku,
                            stock_total: sum.stock_total + state.stock_total,
                            available: sum.available + state.available,
                            reserved: sum.reserved + state.reserved,
                            sold: sum.sold + state.sold,
                        },
                    });
                }
                Err(_) => readable = false,
            }
        }
        states.push(total.filter(|_| readable));
    }
    let (mut checks, figures) = lifecycle_checks(&orders, &index, &skus, &states, &counts);

    // A sample of orders read back: GET /v1/orders/{id} on the node that holds it.
    let mut sample_problems = Vec::new();
    let (located, _) = locate_orders(&orders, &index);
    let step = (orders.len() / STATUS_SAMPLE).max(1);
    let mut sampled = 0;
    for (order, node) in orders.iter().zip(&located).step_by(step) {
        let (Some(node), Some(record)) =
            (node, node.and_then(|n| index.nodes[n].get(&order.order_id)))
        else {
            continue;
        };
        sampled += 1;
        let answer = match admins[*node]
            .call(
                Method::GET,
                &format!("/v1/orders/{}", order.order_id),
                Bytes::new(),
            )
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                sample_problems.push(format!("{}: {error:#}", order.order_id));
                continue;
            }
        };
        let status = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_owned));
        if answer.status != 200 || status.as_deref() != Some(record.last_status.as_str()) {
            sample_problems.push(format!(
                "{}: GET answered {} status {status:?}, the last record says {}",
                order.order_id, answer.status, record.last_status
            ));
        }
    }
    checks.push(check(
        "sampled_orders_read_back",
        &sample_problems,
        format!("{sampled} orders read with GET /v1/orders/{{id}}: status = last record"),
    ));

    // The consumers drain what is left, then say what they committed.
    stop.store(true, Ordering::Relaxed);
    let mut consumer_reports = Vec::new();
    while let Some(done) = consumers.join_next().await {
        let (report, consumer_stats) = done.context("a consumer task panicked")?;
        stats.merge(consumer_stats);
        consumer_reports.push(report);
    }
    consumer_reports.sort_by(|a, b| a.url.cmp(&b.url));
    let mut consumer_problems = Vec::new();
    for (node, url) in settings.urls.iter().enumerate() {
        let Some(report) = consumer_reports.iter().find(|r| &r.url == url) else {
            continue;
        };
        if report.commit_failures > 0 {
            consumer_problems.push(format!(
                "{url}: {} commits refused (is the consumer token right?)",
                report.commit_failures
            ));
        }
        if report.last_committed < index.last_seq[node] {
            consumer_problems.push(format!(
                "{url}: committed up to {}, the journal reaches {}",
                report.last_committed, index.last_seq[node]
            ));
        }
        if report.read_back != Some(report.last_committed) {
            consumer_problems.push(format!(
                "{url}: GET offset answered {:?}, committed {}",
                report.read_back, report.last_committed
            ));
        }
    }
    checks.push(check(
        "consumer_group_caught_up",
        &consumer_problems,
        format!("group {group} read every node's journal to its end and its offset reads back"),
    ));
    for admin in &mut admins {
        let _ = admin
            .call(
                Method::DELETE,
                &format!("/v1/consumers/{group}"),
                Bytes::new(),
            )
            .await;
    }

    let mut by_status = BTreeMap::new();
    for order in &orders {
        let status = if order.uncertain {
            "uncertain"
        } else {
            order.expected_status()
        };
        *by_status.entry(status.to_owned()).or_default() += 1;
    }
    let classes: Vec<ClassSummary> = stats
        .classes
        .iter()
        .map(|(class, stats)| {
            let h = &stats.latency;
            ClassSummary {
                class: (*class).to_owned(),
                count: stats.statuses.values().sum::<u64>() + stats.errors,
                errors: stats.errors,
                statuses: stats
                    .statuses
                    .iter()
                    .map(|(s, c)| (s.to_string(), *c))
                    .collect(),
                p50_us: h.value_at_quantile(0.5),
                p90_us: h.value_at_quantile(0.9),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
            }
        })
        .collect();
    let requests = classes
        .iter()
        .filter(|c| !matches!(c.class.as_str(), "journal_page" | "offset_commit"))
        .map(|c| c.count)
        .sum();
    let audit_passed = checks.iter().all(|c| c.passed);
    Ok(SaleDaySummary {
        tool: "stampede-load",
        scenario: NAME,
        run_id: settings.run_id.clone(),
        urls: settings.urls.clone(),
        connections: settings.connections,
        duration_s: elapsed.as_secs_f64(),
        payment_timeout_s: settings.payment_timeout_s,
        seed: settings.seed,
        orders_created: orders.iter().filter(|o| o.seq != 0).count() as u64,
        orders_by_expected_status: by_status,
        requests,
        requests_per_s: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        classes,
        counts,
        consumers: consumer_reports,
        skus: figures,
        audit_passed,
        checks,
        exit_code: if audit_passed {
            crate::report::exit::OK
        } else {
            crate::report::exit::AUDIT_FAILED
        },
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The text report.
pub fn render_text(summary: &SaleDaySummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stampede-load sale-day  run {}  {} URL(s): {}",
        summary.run_id,
        summary.urls.len(),
        summary.urls.join(" ")
    );
    let _ = writeln!(
        out,
        "{} buyers, {:.1} s, payment timeout {} s, seed {}: {} requests ({:.0}/s), {} orders",
        summary.connections,
        summary.duration_s,
        summary.payment_timeout_s,
        summary.seed,
        summary.requests,
        summary.requests_per_s,
        summary.orders_created
    );
    let statuses: Vec<String> = summary
        .orders_by_expected_status
        .iter()
        .map(|(s, c)| format!("{s} {c}"))
        .collect();
    let _ = writeln!(out, "orders by final status: {}", statuses.join(", "));
    let _ = writeln!(
        out,
        "\n{:<16} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}  answers",
        "action class", "count", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for class in &summary.classes {
        let answers: Vec<String> = class
            .statuses
            .iter()
            .map(|(s, c)| format!("{s}:{c}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {}",
            class.class,
            class.count,
            class.errors,
            ms(class.p50_us),
            ms(class.p90_us),
            ms(class.p99_us),
            ms(class.p999_us),
            ms(class.max_us),
            answers.join(" ")
        );
    }
    for consumer in &summary.consumers {
        let _ = writeln!(
            out,
            "consumer on {}: {} records, {} commits, offset {}",
            consumer.url, consumer.records, consumer.commits, consumer.last_committed
        );
    }
    let _ = writeln!(
        out,
        "\naudit: {}",
        if summary.audit_passed {
            "PASSED"
        } else {
            "FAILED"
        }
    );
    for check in &summary.checks {
        let _ = writeln!(
            out,
            "  [{}] {}: {}",
            if check.passed { "ok" } else { "FAIL" },
            check.name,
            check.detail
        );
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page: the run, one row per action class, the audit.
pub fn render_html(summary: &SaleDaySummary) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>stampede-load sale-day</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}\
         .fail{color:#b00}.ok{color:#070}.bar{background:#69c;height:10px}</style></head><body>\n",
    );
    let _ = writeln!(
        out,
        "<h1>sale-day run {}</h1><p>{} buyers over {} URL(s), {:.1} s, payment timeout {} s, \
         seed {}: {} requests ({:.0}/s), {} orders.</p>",
        escape(&summary.run_id),
        summary.connections,
        summary.urls.len(),
        summary.duration_s,
        summary.payment_timeout_s,
        summary.seed,
        summary.requests,
        summary.requests_per_s,
        summary.orders_created
    );
    let _ = writeln!(
        out,
        "<h2>Latency per action class</h2><table><tr><th>class</th><th>count</th><th>errors</th>\
         <th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th>\
         <th>answers</th><th>p99</th></tr>"
    );
    let widest = summary
        .classes
        .iter()
        .map(|c| c.p99_us)
        .max()
        .unwrap_or(1)
        .max(1);
    for class in &summary.classes {
        let answers: Vec<String> = class
            .statuses
            .iter()
            .map(|(s, c)| format!("{s}:{c}"))
            .collect();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td>\
             <td>{:.2}</td><td>{:.2}</td><td>{}</td><td style=\"width:200px;text-align:left\">\
             <div class=\"bar\" style=\"width:{}px\"></div></td></tr>",
            escape(&class.class),
            class.count,
            class.errors,
            ms(class.p50_us),
            ms(class.p90_us),
            ms(class.p99_us),
            ms(class.p999_us),
            ms(class.max_us),
            escape(&answers.join(" ")),
            class.p99_us * 200 / widest
        );
    }
    out.push_str("</table>\n<h2>Audit</h2><ul>\n");
    for check in &summary.checks {
        let _ = writeln!(
            out,
            "<li class=\"{}\">{} {}: {}</li>",
            if check.passed { "ok" } else { "fail" },
            if check.passed { "ok" } else { "FAIL" },
            check.name,
            escape(&check.detail)
        );
    }
    out.push_str("</ul></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, node: NodeRef, actions: &[&'static str]) -> OrderEntry {
        OrderEntry {
            order_id: id.into(),
            sku: 0,
            qty: 1,
            cod: false,
            node,
            seq: 1,
            actions: actions.to_vec(),
            expect_expiry: false,
            uncertain: false,
        }
    }

    #[test]
    fn round_robin_takes_each_url_in_turn() {
        let rr = RoundRobin::new(3);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        let one = RoundRobin::new(1);
        assert!((0..5).all(|_| one.pick() == 0));
    }

    fn index_with(lines: &[(usize, &str)], urls: usize) -> JournalIndex {
        let mut index = JournalIndex::new(&vec![0; urls]);
        for (node, line) in lines {
            index.add_line(*node, "r1-", line).unwrap();
        }
        index
    }

    #[test]
    fn each_order_is_found_in_its_own_nodes_journal() {
        let accepted = |seq: u64, id: &str| {
            format!(r#"{{"seq":{seq},"type":"accepted","order_id":"{id}","payment":"prepaid"}}"#)
        };
        let lines = [
            (0, accepted(1, "r1-a")),
            (1, accepted(1, "r1-b")),
            (1, accepted(2, "r1-c")),
            (0, accepted(2, "r1-d")),
            (1, accepted(3, "r1-d")),
            (0, accepted(3, "other-run")),
        ];
        let lines: Vec<(usize, &str)> = lines.iter().map(|(n, l)| (*n, l.as_str())).collect();
        let index = index_with(&lines, 2);
        // Independent engines: the answering URL holds the order.
        let (found, problems) = locate_orders(
            &[
                order("r1-a", NodeRef::Url(0), &[]),
                order("r1-b", NodeRef::Url(1), &[]),
            ],
            &index,
        );
        assert_eq!(found, [Some(0), Some(1)]);
        assert!(problems.is_empty());
        // Answered by URL 0 but journaled by URL 1; in both journals; in none.
        let (found, problems) = locate_orders(
            &[
                order("r1-b", NodeRef::Url(0), &[]),
                order("r1-d", NodeRef::Url(0), &[]),
                order("r1-z", NodeRef::Url(0), &[]),
            ],
            &index,
        );
        assert_eq!(found, [None, None, None]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        // A timed-out POST (seq 0): in no journal, or in another URL's, is no problem.
        let mut lost = order("r1-z", NodeRef::Url(0), &[]);
        lost.seq = 0;
        lost.uncertain = true;
        let mut late = order("r1-b", NodeRef::Url(0), &[]);
        late.seq = 0;
        late.uncertain = true;
        let (found, problems) = locate_orders(&[lost, late], &index);
        assert_eq!(found, [None, Some(1)]);
        assert!(problems.is_empty(), "{problems:?}");
        // Cluster: a node name maps to one journal, whichever URL answered.
        let (found, problems) = locate_orders(
            &[
                order("r1-b", NodeRef::Named("n2".into()), &[]),
                order("r1-c", NodeRef::Named("n2".into()), &[]),
                order("r1-a", NodeRef::Named("n1".into()), &[]),
            ],
            &index,
        );
        assert_eq!(found, [Some(1), Some(1), Some(0)]);
        assert!(problems.is_empty());
        let (_, problems) = locate_orders(
            &[
                order("r1-b", NodeRef::Named("n2".into()), &[]),
                order("r1-a", NodeRef::Named("n2".into()), &[]),
            ],
            &index,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn the_lifecycle_audit_compares_answers_journal_and_stock() {
        let lines = [
            r#"{"seq":1,"type":"accepted","order_id":"r1-paid","payment":"prepaid"}"#,
            r#"{"seq":2,"type":"pay","order_id":"r1-paid","status":"paid"}"#,
            r#"{"seq":3,"type":"accepted","order_id":"r1-exp","payment":"prepaid"}"#,
            r#"{"seq":4,"type":"payment_reminder","order_id":"r1-exp","status":"pending_payment"}"#,
            r#"{"seq":5,"type":"expired","order_id":"r1-exp","status":"expired"}"#,
            r#"{"seq":6,"type":"accepted","order_id":"r1-cod","payment":"cod"}"#,
            r#"{"seq":7,"type":"sku","order_id":null,"sku":"HOT-r1-0"}"#,
        ];
        let lines: Vec<(usize, &str)> = lines.iter().map(|l| (0, *l)).collect();
        let index = index_with(&lines, 1);
        let mut paid = order("r1-paid", NodeRef::Url(0), &["pay"]);
        paid.seq = 1;
        let mut expired = order("r1-exp", NodeRef::Url(0), &[]);
        expired.seq = 3;
        expired.expect_expiry = true;
        let mut cod = order("r1-cod", NodeRef::Url(0), &[]);
        cod.seq = 6;
        cod.cod = true;
        let orders = vec![paid, expired, cod];
        let skus = vec![SkuSpec {
            name: "HOT-r1-0".into(),
            stock: 10,
            per_user_limit: 0,
            max_per_order: 1,
            payment_timeout_s: 2,
        }];
        let state = |available, reserved, sold| {
            vec![Some(SkuState {
                sku: "HOT-r1-0".into(),
                stock_total: 10,
                available,
                reserved,
                sold,
            })]
        };
        let counts = ReplayCounts::default();
        let (checks, _) = lifecycle_checks(&orders, &index, &skus, &state(8, 0, 2), &counts);
        assert!(checks.iter().all(|c| c.passed), "{checks:?}");

        // The expired order's unit not returned: the stock check fails, and only it.
        let (checks, _) = lifecycle_checks(&orders, &index, &skus, &state(7, 1, 2), &counts);
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, ["stock_after_cancels_refunds_expiries"]);

        // A 200 `ship` that is not in the journal.
        let mut orders = orders;
        orders[0].actions.push("verify");
        let (checks, _) = lifecycle_checks(&orders, &index, &skus, &state(8, 0, 2), &counts);
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            failed,
            ["every_200_action_journaled", "status_equals_last_record"]
        );
    }
}
