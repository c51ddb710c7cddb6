//! What each request says: a per-connection generator of order requests, following the
//! scenario's traffic mix.
//!
//! Every order a run invents has an id `RUNID-TASK-N` (the task that invented it, and its
//! count there), packed into a 64-bit [`OrderKey`] so the audit can hold millions of them in
//! a plain vector. A request is a small `Copy` value; the wire form (JSON for the engine,
//! RESP arguments for Redis) is written from it by the target, so a retry is byte-for-byte the
//! same order and a conflict differs in exactly one field.
//!
//! Kinds of request, drawn per request from the scenario's shares:
//! - new order: a buyer (ordinary, or one of the abusers), a SKU (Zipf), a qty, a payment;
//! - retry: an earlier order of this connection, unchanged (expect 200 replay);
//! - conflict: an earlier *accepted* order's id with another qty or payment (expect 422);
//! - duplicate click: a new order that is also queued for the next free connection, so the
//!   two copies travel on different connections at nearly the same moment.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::outcome::OutcomeClass;
use crate::scenario::{SkuSpec, Traffic};
use crate::zipf::Zipf;

/// `task << TASK_SHIFT | n`: 2^40 orders per task, 2^24 tasks.
pub type OrderKey = u64;
const TASK_SHIFT: u32 = 40;
const ORDER_N_MAX: u64 = (1 << TASK_SHIFT) - 1;
/// Marks an abuser account in [`OrderRequest::user`].
const ABUSER_BIT: u64 = 1 << 63;
/// Earlier orders a connection remembers for retries and conflicts.
const RECENT_ORDERS_MAX: usize = 64;
/// Second clicks waiting for a free connection; past it a click is simply not doubled.
const DOUBLE_CLICKS_MAX: usize = 4096;

pub fn order_key(task: u32, n: u64) -> OrderKey {
    assert!(n <= ORDER_N_MAX, "order counter overflow");
    (u64::from(task) << TASK_SHIFT) | n
}

/// The order id of `key` in run `run_id`.
pub fn order_id(run_id: &str, key: OrderKey) -> String {
    format!("{run_id}-{}-{}", key >> TASK_SHIFT, key & ORDER_N_MAX)
}

/// The key of an order id of run `run_id`; `None` for anyone else's order.
pub fn parse_order_id(run_id: &str, order_id: &str) -> Option<OrderKey> {
    let rest = order_id.strip_prefix(run_id)?.strip_prefix('-')?;
    let (task, n) = rest.split_once('-')?;
    let task: u32 = task.parse().ok()?;
    let n: u64 = n.parse().ok()?;
    (task < (1 << 24) && n <= ORDER_N_MAX).then(|| order_key(task, n))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payment {
    Prepaid,
    Escrow,
    Cod,
}

impl Payment {
    pub fn as_str(self) -> &'static str {
        match self {
            Payment::Prepaid => "prepaid",
            Payment::Escrow => "escrow",
            Payment::Cod => "cod",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    New,
    Retry,
    Conflict,
    DuplicateClick,
}

/// One order request, before it is written in a target's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRequest {
    pub key: OrderKey,
    pub sku_index: u32,
    pub qty: u32,
    /// Buyer number; the top bit is set for the abuser accounts.
    pub user: u64,
    pub payment: Payment,
    pub kind: RequestKind,
}

impl OrderRequest {
    pub fn user_id(&self) -> String {
        let mut text = String::new();
        self.write_user_id(&mut text);
        text
    }

    fn write_user_id(&self, out: &mut String) {
        if self.user & ABUSER_BIT != 0 {
            out.push_str("abuser");
            push_decimal(out, self.user & !ABUSER_BIT);
        } else {
            out.push('u');
            push_decimal(out, self.user);
        }
    }

    /// The `POST /v1/orders` body. Written piece by piece rather than through `format!`: it
    /// is built for every request.
    pub fn write_json(&self, run_id: &str, skus: &[SkuSpec], out: &mut String) {
        out.clear();
        out.push_str("{\"order_id\":\"");
        out.push_str(run_id);
        out.push('-');
        push_decimal(out, self.key >> TASK_SHIFT);
        out.push('-');
        push_decimal(out, self.key & ORDER_N_MAX);
        out.push_str("\",\"user_id\":\"");
        self.write_user_id(out);
        out.push_str("\",\"sku\":\"");
        out.push_str(&skus[self.sku_index as usize].name);
        out.push_str("\",\"qty\":");
        push_decimal(out, u64::from(self.qty));
        out.push_str(",\"payment\":\"");
        out.push_str(self.payment.as_str());
        out.push_str("\"}");
    }

    pub fn is_abuser(&self) -> bool {
        self.user & ABUSER_BIT != 0
    }
}

/// Appends `value` in decimal.
fn push_decimal(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// Second clicks handed from the connection that made them to the next free one.
#[derive(Debug, Default)]
pub struct DoubleClicks {
    queue: Mutex<VecDeque<OrderRequest>>,
    /// Read without the lock, so connections skip it when nothing waits.
    len: AtomicUsize,
}

impl DoubleClicks {
    fn push(&self, request: OrderRequest) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() < DOUBLE_CLICKS_MAX {
            queue.push_back(request);
            self.len.store(queue.len(), Ordering::Release);
        }
    }

    fn pop(&self) -> Option<OrderRequest> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let request = queue.pop_front();
        self.len.store(queue.len(), Ordering::Release);
        request
    }
}

/// What every connection's generator shares.
#[derive(Debug)]
pub struct WorkloadPlan {
    pub run_id: String,
    pub skus: Vec<SkuSpec>,
    pub traffic: Traffic,
    pub seed: u64,
    zipf: Zipf,
    /// Cumulative weights of prepaid, escrow, cod.
    payment_cumulative: [f64; 3],
    double_clicks: DoubleClicks,
}

impl WorkloadPlan {
    pub fn new(
        run_id: String,
        skus: Vec<SkuSpec>,
        traffic: Traffic,
        seed: u64,
    ) -> Result<Self, String> {
        let zipf = Zipf::new(skus.len(), traffic.sku_zipf_exponent)?;
        let p = &traffic.payment;
        let total = p.prepaid + p.escrow + p.cod;
        let payment_cumulative = [p.prepaid / total, (p.prepaid + p.escrow) / total, 1.0];
        Ok(Self {
            run_id,
            skus,
            traffic,
            seed,
            zipf,
            payment_cumulative,
            double_clicks: DoubleClicks::default(),
        })
    }

    pub fn waiting_double_clicks(&self) -> usize {
        self.double_clicks.len.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    request: OrderRequest,
    created: bool,
}

/// One connection's generator.
#[derive(Debug)]
pub struct Workload<'a> {
    plan: &'a WorkloadPlan,
    task: u32,
    rng: SmallRng,
    next_n: u64,
    recent: VecDeque<Remembered>,
}

impl<'a> Workload<'a> {
    pub fn new(plan: &'a WorkloadPlan, task: u32) -> Self {
        // Seeded per task: a run with the same seed and connection count asks the same things.
        let seed = plan.seed ^ (u64::from(task) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            plan,
            task,
            rng: SmallRng::seed_from_u64(seed),
            next_n: 0,
            recent: VecDeque::with_capacity(RECENT_ORDERS_MAX),
        }
    }

    /// The next request this connection sends.
    pub fn next_request(&mut self) -> OrderRequest {
        if let Some(second_click) = self.plan.double_clicks.pop() {
            return second_click;
        }
        let traffic = &self.plan.traffic;
        let draw: f64 = self.rng.random();
        if draw < traffic.retry_rate {
            if let Some(earlier) = self.pick_recent(false) {
                return OrderRequest {
                    kind: RequestKind::Retry,
                    ..earlier
                };
            }
        } else if draw < traffic.retry_rate + traffic.conflict_rate {
            if let Some(earlier) = self.pick_recent(true) {
                return self.conflicting(earlier);
            }
        } else if draw < traffic.retry_rate + traffic.conflict_rate + traffic.duplicate_click_rate {
            let request = self.new_order();
            self.plan.double_clicks.push(OrderRequest {
                kind: RequestKind::DuplicateClick,
                ..request
            });
            return request;
        }
        self.new_order()
    }

    /// Tells the generator how a request ended, so retries and conflicts pick real orders.
    pub fn answered(&mut self, request: &OrderRequest, class: OutcomeClass) {
        if request.kind != RequestKind::New {
            return;
        }
        if self.recent.len() == RECENT_ORDERS_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(Remembered {
            request: *request,
            created: class == OutcomeClass::Created,
        });
    }

    fn pick_recent(&mut self, created_only: bool) -> Option<OrderRequest> {
        if self.recent.is_empty() {
            return None;
        }
        let remembered = self.recent[self.rng.random_range(0..self.recent.len())];
        (!created_only || remembered.created).then_some(remembered.request)
    }

    /// The same order id with different content: another qty when the SKU allows one, else
    /// another payment type.
    fn conflicting(&self, earlier: OrderRequest) -> OrderRequest {
        let max_per_order = self.plan.skus[earlier.sku_index as usize].max_per_order;
        let mut request = OrderRequest {
            kind: RequestKind::Conflict,
            ..earlier
        };
        if max_per_order > 1 {
            request.qty = earlier.qty % max_per_order + 1;
        } else {
            request.payment = match earlier.payment {
                Payment::Cod => Payment::Prepaid,
                Payment::Prepaid | Payment::Escrow => Payment::Cod,
            };
        }
        request
    }

    fn new_order(&mut self) -> OrderRequest {
        let plan = self.plan;
        let traffic = &plan.traffic;
        let key = order_key(self.task, self.next_n);
        self.next_n += 1;
        let sku_index = plan.zipf.sample(&mut self.rng);
        let qty_max = traffic
            .qty_max
            .min(plan.skus[sku_index].max_per_order)
            .max(1);
        let qty = self.rng.random_range(1..=qty_max);
        let user = if traffic.abuser_share > 0.0 && self.rng.random_bool(traffic.abuser_share) {
            ABUSER_BIT | self.rng.random_range(0..traffic.abusers)
        } else {
            self.rng.random_range(0..traffic.users)
        };
        let draw: f64 = self.rng.random();
        let payment = if draw < plan.payment_cumulative[0] {
            Payment::Prepaid
        } else if draw < plan.payment_cumulative[1] {
            Payment::Escrow
        } else {
            Payment::Cod
        };
        OrderRequest {
            key,
            sku_index: u32::try_from(sku_index).expect("scenarios have at most 65536 SKUs"),
            qty,
            user,
            payment,
            kind: RequestKind::New,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn plan(traffic: &str) -> WorkloadPlan {
        let scenario = Scenario::parse(
            &format!(
                "name = \"t\"\n[[skus]]\nprefix = \"A\"\ncount = 3\nstock = 100\nmax_per_order = 2\n[traffic]\n{traffic}"
            ),
            "t",
        )
        .unwrap();
        WorkloadPlan::new(
            "run1".into(),
            scenario.sku_specs("run1"),
            scenario.traffic,
            42,
        )
        .unwrap()
    }

    #[test]
    fn order_ids_round_trip_through_their_keys() {
        let key = order_key(17, 123_456);
        let id = order_id("run1", key);
        assert_eq!(id, "run1-17-123456");
        assert_eq!(parse_order_id("run1", &id), Some(key));
        assert_eq!(parse_order_id("run2", &id), None);
        assert_eq!(parse_order_id("run1", "run1-x-1"), None);
        assert_eq!(parse_order_id("run", "run1-1-1"), None);
    }

    #[test]
    fn the_json_body_is_what_the_contract_asks_for() {
        let plan = plan("qty_max = 2");
        let mut workload = Workload::new(&plan, 3);
        let request = workload.next_request();
        let mut body = String::new();
        request.write_json("run1", &plan.skus, &mut body);
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["order_id"], "run1-3-0");
        assert!(parsed["user_id"].as_str().unwrap().starts_with('u'));
        assert!(parsed["sku"].as_str().unwrap().starts_with("A-run1-"));
        assert!((1..=2).contains(&parsed["qty"].as_u64().unwrap()));
        assert_eq!(parsed["payment"], "prepaid");
    }

    #[test]
    fn decimals_are_written_like_display() {
        for value in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut out = String::from("x");
            push_decimal(&mut out, value);
            assert_eq!(out, format!("x{value}"));
        }
    }

    #[test]
    fn retries_resend_an_earlier_order_unchanged_and_conflicts_change_one_field() {
        let plan = plan("retry_rate = 0.5\nconflict_rate = 0.5\nqty_max = 2");
        let mut workload = Workload::new(&plan, 0);
        let first = workload.next_request();
        assert_eq!(first.kind, RequestKind::New, "nothing to retry yet");
        workload.answered(&first, OutcomeClass::Created);
        let (mut retries, mut conflicts) = (0, 0);
        for _ in 0..200 {
            let request = workload.next_request();
            match request.kind {
                RequestKind::Retry => {
                    assert_eq!(
                        request,
                        OrderRequest {
                            kind: RequestKind::Retry,
                            ..first
                        }
                    );
                    retries += 1;
                }
                RequestKind::Conflict => {
                    assert_eq!(request.key, first.key);
                    assert_ne!(request.qty, first.qty);
                    conflicts += 1;
                }
                RequestKind::New | RequestKind::DuplicateClick => panic!("{request:?}"),
            }
        }
        assert!(retries > 60 && conflicts > 60, "{retries} {conflicts}");
    }

    #[test]
    fn conflicts_only_reuse_orders_that_were_accepted() {
        let plan = plan("conflict_rate = 1.0");
        let mut workload = Workload::new(&plan, 0);
        let first = workload.next_request();
        workload.answered(&first, OutcomeClass::Refused);
        for _ in 0..50 {
            assert_eq!(workload.next_request().kind, RequestKind::New);
        }
    }

    #[test]
    fn a_duplicate_click_goes_to_the_next_connection() {
        let plan = plan("duplicate_click_rate = 1.0");
        let mut first = Workload::new(&plan, 0);
        let mut second = Workload::new(&plan, 1);
        let original = first.next_request();
        assert_eq!(plan.waiting_double_clicks(), 1);
        let copy = second.next_request();
        assert_eq!(copy.kind, RequestKind::DuplicateClick);
        assert_eq!(
            OrderRequest {
                kind: RequestKind::New,
                ..copy
            },
            original
        );
    }

    #[test]
    fn abusers_get_their_own_small_set_of_accounts() {
        let plan = plan("abuser_share = 1.0\nabusers = 3");
        let mut workload = Workload::new(&plan, 0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let request = workload.next_request();
            assert!(request.is_abuser());
            seen.insert(request.user_id());
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }
}
