//! What the clients were told: the order state machine as far as this run exercises it, each
//! order's model (`OrderModel`: its exact body, the seq an answer gave, whether an answer was
//! lost, the state the answers say, its exchanges), the registers of values several clients
//! write (consumer offsets, stock), the whole model (`Model`) and one HTTP answer.
//!
//! Invariants: an order's `seq` is set only by an answer (201, or a 200 replay resolving a
//! lost answer) or by the audit finding it journaled; `doubt` is set by every lost answer and
//! cleared only by the audit, which resets `known`/`last` from the journal.

use super::*;

/// Each fulfilment stage and the action that reaches it, in order: `verify` from paid or
/// confirmed, then each from the one before.
pub(crate) const STAGES: [(&str, &str); 9] = [
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
pub(crate) const CLIENT_ACTIONS: [&str; 12] = [
    "pay", "cancel", "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver",
    "complete", "exchange",
];

/// Every state an order of this run can reach.
pub(crate) const STATES: [&str; 14] = [
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
pub(crate) const EXCHANGES_PER_ORDER: usize = 4;

/// The state after `action` from `status`, or `None` for a refused move.
pub(crate) fn transition(status: &str, action: &str) -> Option<&'static str> {
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
pub(crate) fn target(action: &str) -> &'static str {
    STATES
        .iter()
        .find_map(|&from| transition(from, action))
        .expect("every client action has a target")
}

/// The next step of an order in `status` on its way to `completed`.
pub(crate) fn next_step(status: &str) -> Option<&'static str> {
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
pub(crate) fn may_replay(status: &str, action: &str, last: Option<&str>) -> bool {
    action != "exchange"
        && target(action) == status
        && (status != "shipped" || last.is_none_or(|last| last == "ship"))
}

/// Whether `action` may be refused (409 `invalid_transition`) for an order in `status`.
pub(crate) fn may_refuse(status: &str, action: &str, last: Option<&str>) -> bool {
    transition(status, action).is_none()
        && (!may_replay(status, action, last) || (status == "shipped" && last.is_none()))
}

pub(crate) fn initial_status(payment: &str) -> &'static str {
    if payment == "cod" {
        "confirmed"
    } else {
        PENDING
    }
}

// ---------------------------------------------------------------------------------------------
// What the clients were told.

#[derive(Debug)]
pub(crate) struct OrderModel {
    pub(crate) id: String,
    /// The exact body every attempt sends.
    pub(crate) body: Value,
    pub(crate) sku: usize,
    pub(crate) payment: &'static str,
    /// The seq an answer (201, or 200 replayed) gave.
    pub(crate) seq: Option<u64>,
    /// Some request on this order lost its answer since the last audit: it may still be
    /// decided (by an engine that was stopped, not killed), so its state is unknown until
    /// the next restart's audit.
    pub(crate) doubt: bool,
    /// The order's status as the answers tell it (`None`: unknown or not journaled).
    pub(crate) known: Option<String>,
    /// The type of the order's latest record, when `known` is set and it is known (it tells
    /// a shipped order's `ship` from an `exchange`, which decides whether a `ship` is a retry).
    pub(crate) last: Option<&'static str>,
    /// Every exchange whose answer was 200 (`true`) or lost (`false`), with the SKU it asked
    /// a unit of, ever: the journal must hold each 200 and may hold each lost one, and no
    /// other.
    pub(crate) exchanges: Vec<(&'static str, bool)>,
    /// Exchanges sent, whatever their answer (the clients stop at `EXCHANGES_PER_ORDER`).
    pub(crate) exchanges_sent: usize,
    /// A client is working on this order (one request at a time per order).
    pub(crate) busy: bool,
    /// Answers lost, ever (figures), and records of it a power cut took.
    pub(crate) lost: u64,
    /// When a client was told `seq` (cycle, moment): a power cut under `interval` or `none`
    /// may take it within the policy's window. `None` when the audit found it journaled.
    pub(crate) acked_at: Option<(u64, Instant)>,
}

impl OrderModel {
    pub(crate) fn expected_replay(&self, seq: u64) -> Value {
        json!({"order_id": self.id, "status": initial_status(self.payment), "seq": seq})
    }

    /// The states the order may be in now, as far as the answers tell.
    pub(crate) fn candidates(&self) -> Vec<&'static str> {
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
    pub(crate) fn last_known(&self) -> Option<&'static str> {
        if self.doubt { None } else { self.last }
    }
}

/// A record type of an order as a `&'static str` (`unknown` for others).
pub(crate) fn type_static(kind: &str) -> &'static str {
    ["accepted", "payment_reminder", "expired"]
        .into_iter()
        .chain(CLIENT_ACTIONS)
        .find(|&known| known == kind)
        .unwrap_or("unknown")
}

pub(crate) fn status_static(status: &str) -> &'static str {
    STATES
        .into_iter()
        .find(|&known| known == status)
        .unwrap_or("unknown")
}

/// A value several clients may write (a consumer offset, a SKU's stock): the last value
/// answered 200 and the values whose answer was lost since the last audit (any of them may
/// have landed, even after a later 200, when the engine was only stopped).
#[derive(Debug, Default)]
pub(crate) struct Register {
    pub(crate) certain: Option<u64>,
    pub(crate) maybe: Vec<u64>,
    pub(crate) busy: bool,
    /// Highest value ever sent (restocks only grow).
    pub(crate) sent_max: u64,
    /// The value at the last audit, and the values answered 200 since: after a power cut
    /// that took a restock's record, any of them may be the engine's.
    pub(crate) base: Option<u64>,
    pub(crate) acked: Vec<u64>,
}

impl Register {
    pub(crate) fn allows(&self, value: Option<u64>) -> bool {
        value == self.certain || value.is_some_and(|v| self.maybe.contains(&v))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    pub(crate) seed: u64,
    pub(crate) cycle: u64,
    pub(crate) orders: Vec<OrderModel>,
    /// Order ids touched since the last audit (read back at the audit).
    pub(crate) touched: HashSet<usize>,
    /// Orders answered 201 or 200 since the last audit.
    pub(crate) acked_recently: Vec<usize>,
    /// Actions answered 200 since the last audit.
    pub(crate) actions_done: Vec<ActionAck>,
    /// (sku index, stock_total, (cycle, moment)) answered 200 since the last audit.
    pub(crate) restocks_done: Vec<(usize, u64, (u64, Instant))>,
    pub(crate) groups: Vec<Register>,
    pub(crate) stock: Vec<Register>,
    /// Records the clients read from `GET /v1/journal` and the audit has not yet compared.
    pub(crate) seen: BTreeMap<u64, Value>,
    pub(crate) max_seq_seen: u64,
    /// The lagging group's offset (see `LAG_GROUP`): with retention on, the clients read
    /// from it on, and every record after it must be there.
    pub(crate) lag_floor: u64,
    /// The engine runs with checkpoints and retention.
    pub(crate) retention: bool,
    pub(crate) violations: Vec<String>,
    /// Answers by class, e.g. `order.new 201`, `action.pay 409 invalid_transition`.
    pub(crate) answers: BTreeMap<String, u64>,
}

/// An action answered 200: its record's seq (from the answer's history) and when it came.
#[derive(Debug)]
pub(crate) struct ActionAck {
    pub(crate) index: usize,
    pub(crate) action: &'static str,
    /// An exchange's SKU.
    pub(crate) sku: Option<&'static str>,
    pub(crate) seq: Option<u64>,
    pub(crate) cycle: u64,
    pub(crate) at: Instant,
}

impl Model {
    pub(crate) fn violation(&mut self, message: String) {
        eprintln!(
            "crash_loop: VIOLATION (cycle {}, seed {}): {message}",
            self.cycle, self.seed
        );
        self.violations
            .push(format!("cycle {}: {message}", self.cycle));
    }

    pub(crate) fn count(&mut self, class: String) {
        *self.answers.entry(class).or_default() += 1;
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) replayed: bool,
    pub(crate) json: Value,
    pub(crate) text: String,
}

impl Answer {
    pub(crate) fn code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }

    /// Refused by admission control before anything was decided: 429 `overloaded` (a full
    /// queue, the in-flight bound) or 503 `overloaded` (shedding by queueing delay).
    pub(crate) fn shed(&self) -> bool {
        matches!(self.status, 429 | 503) && self.code() == "overloaded"
    }

    pub(crate) fn class(&self) -> String {
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
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
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

pub(crate) fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("build reqwest client")
}
