//! Property test of the order lifecycle against a simple model: random sequences of orders,
//! actions, clock advances and restarts, run on the real engine (in process, real journal
//! files, a manual clock so payment timers fire on command). After every step:
//! - every SKU's stock equals the model's and `sold + reserved + available = stock_total`;
//! - every order's state equals the model's;
//! - every outcome (accepted, sold out, purchase limit, refused, ...) is the one the model
//!   predicts, so per-user limits hold exactly;
//! - an action with an `Idempotency-Key` the order already used is a replay (answered with
//!   the order's status right after the original action) when the action and body are the
//!   same, and a conflict when not, across restarts and checkpoints.
//!
//! And after every restart (from the journal alone, or from a checkpoint and the records
//! after it) the replayed state equals the live state before it.
//!
//! Order review is in the model: some orders are placed held (as a review rule would hold
//! them), `approve` and `reject` are among the actions, the review timeout rejects what
//! nobody reviewed, an approval starts the payment clock, and a delivered order completes
//! itself after the auto-completion timeout.
//!
//! The model decides transitions with the contract's table in `tests/common/order_table.rs`
//! (written from the contract, not from the engine's `transition`); everything else, stock,
//! limits, timers and idempotency, it computes by itself. More cases: `PROPTEST_CASES=500 cargo test --test lifecycle_model`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::in_process::{self, NewOrder, action_request};
use common::order_table;
use proptest::prelude::*;
use stampede::config::Config;
use stampede::engine::{ActionError, ActionRequest, Engine};
use stampede::order::{Action, OrderStatus, Payment};
use stampede::shard::{ActionOutcome, Clock, OrderOutcome, SkuUpdate};

const SKUS: [&str; 3] = ["P-A", "P-B", "P-C"];
const STOCK: [u64; 3] = [3, 2, 4];
const PER_USER_LIMIT: u32 = 2;
const MAX_PER_ORDER: u32 = 2;
const TIMEOUT_S: u32 = 60;
/// `review.timeout_s` and `orders.auto_complete_s` of the harness's engine.
const REVIEW_TIMEOUT_S: u64 = 90;
const AUTO_COMPLETE_S: u64 = 100;
const ORDER_IDS: usize = 10;
const USERS: usize = 3;
const START_MS: u64 = 1_800_000_000_000;
/// Idempotency keys an action may carry: few, so that keys are reused on an order often.
const KEYS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Place {
        order: usize,
        user: usize,
        sku: usize,
        qty: u32,
        payment: Payment,
        /// Held for review at acceptance.
        held: bool,
    },
    Act {
        order: usize,
        action: Action,
        restock: bool,
        exchange_sku: usize,
        /// One of a few `Idempotency-Key`s (`k0`, `k1`, ...), or none.
        key: Option<usize>,
    },
    Advance {
        seconds: u64,
    },
    /// A checkpoint: the next restart starts from it and replays only what follows.
    Checkpoint,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let payment = prop_oneof![
        Just(Payment::Prepaid),
        Just(Payment::Escrow),
        Just(Payment::Cod)
    ];
    // Every client action, the ones that move money and stock three times over, so that
    // short sequences reach cancellations, refunds and re-purchases often.
    let client_actions: Vec<Action> = Action::ALL
        .into_iter()
        .filter(|a| a.is_client_action())
        .chain([Action::Pay, Action::Cancel, Action::Refund, Action::Return].repeat(2))
        .chain([Action::Approve, Action::Reject, Action::Approve])
        .collect();
    prop_oneof![
        4 => (0..ORDER_IDS, 0..USERS, 0..SKUS.len(), 1..=MAX_PER_ORDER + 1, payment,
              proptest::bool::weighted(0.3))
            .prop_map(|(order, user, sku, qty, payment, held)| Op::Place { order, user, sku, qty, payment, held }),
        6 => (0..ORDER_IDS, proptest::sample::select(client_actions), any::<bool>(), 0..SKUS.len(),
              proptest::option::of(0..KEYS))
            .prop_map(|(order, action, restock, exchange_sku, key)| Op::Act { order, action, restock, exchange_sku, key }),
        1 => (1u64..=45).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stock {
    total: u64,
    available: u64,
    reserved: u64,
    sold: u64,
}

#[derive(Debug, Clone)]
struct ModelOrder {
    user: usize,
    sku: usize,
    qty: u32,
    /// Units the order holds: its `qty`, less one per restocked exchange.
    units: u32,
    payment: Payment,
    status: OrderStatus,
    /// When the order's timer started: its acceptance (payment, review), its approval
    /// (payment), its latest delivery (auto-completion).
    clock_ms: u64,
    last_action: Option<Action>,
    /// The payment timer's reminder was journaled: it is then the order's last record, so
    /// a repeat of the action before it is no longer a retry of the latest record.
    reminded: bool,
    records: u32,
}

#[derive(Debug, Default)]
struct Model {
    now_ms: u64,
    stock: [Stock; 3],
    bought: HashMap<(usize, usize), u32>,
    orders: HashMap<usize, ModelOrder>,
    /// (order, key) → what the action asked for ([`request_of`]) and the status it left.
    keys: HashMap<(usize, usize), (Request, OrderStatus)>,
}

/// What an action asks for, as far as its idempotency fingerprint goes (the harness sends
/// the same address for every `modify` and no reason).
type Request = (Action, bool, Option<usize>);

fn request_of(action: Action, restock: bool, exchange_sku: usize) -> Request {
    (
        action,
        matches!(action, Action::Return | Action::Exchange) && restock,
        (action == Action::Exchange).then_some(exchange_sku),
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Accepted,
    Held,
    Replayed,
    Conflict,
    QtyOverMax,
    SoldOut,
    PurchaseLimit,
    Done(OrderStatus),
    /// A retry; with a key, the status the original action left.
    ActionReplayed(Option<OrderStatus>),
    ActionConflict,
    Refused,
    UnknownOrder,
    TooManyRecords,
}

/// The contract's move for `action` from `status` ([`order_table::next_reviewed`]), in the
/// engine's types (named as the API names them; `held` is the engine's held state for the
/// order's payment).
fn table_move(
    status: OrderStatus,
    action: Action,
    restock: bool,
    payment: Payment,
) -> Option<(OrderStatus, order_table::Stock)> {
    let moved =
        order_table::next_reviewed(status.as_str(), action.as_str(), restock, payment.as_str())?;
    Some((status_named(moved.to, payment), moved.stock))
}

fn status_named(name: &str, payment: Payment) -> OrderStatus {
    if name == "held" {
        return payment.held_status();
    }
    OrderStatus::ALL
        .into_iter()
        .find(|state| state.as_str() == name)
        .unwrap_or_else(|| panic!("the engine has no state {name:?}"))
}

impl Model {
    fn give_back(&mut self, id: usize, from_reserved: bool) {
        let order = self.orders[&id].clone();
        let stock = &mut self.stock[order.sku];
        let qty = u64::from(order.units);
        if from_reserved {
            stock.reserved -= qty;
        } else {
            stock.sold -= qty;
        }
        stock.available += qty;
        *self.bought.get_mut(&(order.user, order.sku)).unwrap() -= order.units;
    }

    fn place(
        &mut self,
        id: usize,
        user: usize,
        sku: usize,
        qty: u32,
        payment: Payment,
        held: bool,
    ) -> Expect {
        if let Some(existing) = self.orders.get(&id) {
            let same = (existing.user, existing.sku, existing.qty, existing.payment)
                == (user, sku, qty, payment);
            return if same {
                Expect::Replayed
            } else {
                Expect::Conflict
            };
        }
        let bought = self.bought.get(&(user, sku)).copied().unwrap_or(0);
        if qty > MAX_PER_ORDER {
            return Expect::QtyOverMax;
        }
        if self.stock[sku].available < u64::from(qty) {
            return Expect::SoldOut;
        }
        if bought + qty > PER_USER_LIMIT {
            return Expect::PurchaseLimit;
        }
        let status = if held {
            status_named("held", payment)
        } else {
            payment.initial_status()
        };
        let stock = &mut self.stock[sku];
        stock.available -= u64::from(qty);
        if held || status == OrderStatus::PendingPayment {
            stock.reserved += u64::from(qty);
        } else {
            stock.sold += u64::from(qty);
        }
        *self.bought.entry((user, sku)).or_default() += qty;
        self.orders.insert(
            id,
            ModelOrder {
                user,
                sku,
                qty,
                units: qty,
                payment,
                status,
                clock_ms: self.now_ms,
                last_action: None,
                reminded: false,
                records: 1,
            },
        );
        if held { Expect::Held } else { Expect::Accepted }
    }

    fn act(
        &mut self,
        id: usize,
        action: Action,
        restock: bool,
        exchange_sku: usize,
        key: Option<usize>,
    ) -> Expect {
        let Some(order) = self.orders.get(&id).cloned() else {
            return Expect::UnknownOrder;
        };
        if let Some(key) = key {
            if let Some((request, status)) = self.keys.get(&(id, key)) {
                return if *request == request_of(action, restock, exchange_sku) {
                    Expect::ActionReplayed(Some(*status))
                } else {
                    Expect::ActionConflict
                };
            }
        } else if !action.repeats() && order.last_action == Some(action) {
            return Expect::ActionReplayed(None);
        }
        let Some((to, stock)) = table_move(order.status, action, restock, order.payment) else {
            return Expect::Refused;
        };
        if action == Action::Exchange && self.stock[exchange_sku].available < 1 {
            return Expect::SoldOut;
        }
        let limits = (
            stampede::limits::RECORDS_PER_ORDER_MAX,
            stampede::limits::LIFE_RECORDS_RESERVED,
        );
        if action.repeats() && order.records >= limits.0 - limits.1 {
            return Expect::TooManyRecords;
        }
        self.apply(id, stock, exchange_sku);
        // The contract: an exchange with `{"restock": true}` puts the unit the buyer sent back
        // on sale again (one unit of the order's SKU, off the buyer's count).
        if action == Action::Exchange && restock && order.units > 0 {
            let stock = &mut self.stock[order.sku];
            stock.sold -= 1;
            stock.available += 1;
            *self.bought.get_mut(&(order.user, order.sku)).unwrap() -= 1;
            self.orders.get_mut(&id).unwrap().units -= 1;
        }
        let now_ms = self.now_ms;
        let order = self.orders.get_mut(&id).unwrap();
        order.status = to;
        order.last_action = Some(action);
        order.records += 1;
        // An approval starts the payment clock; a delivery the auto-completion's.
        if matches!(action, Action::Approve | Action::Deliver) {
            order.clock_ms = now_ms;
        }
        if let Some(key) = key {
            self.keys
                .insert((id, key), (request_of(action, restock, exchange_sku), to));
        }
        Expect::Done(to)
    }

    /// What a move of the table does to the model's stock.
    fn apply(&mut self, id: usize, stock: order_table::Stock, exchange_sku: usize) {
        let order = self.orders[&id].clone();
        match stock {
            order_table::Stock::None => {}
            order_table::Stock::ReservedToSold => {
                let stock = &mut self.stock[order.sku];
                stock.reserved -= u64::from(order.units);
                stock.sold += u64::from(order.units);
            }
            order_table::Stock::GiveBack { from_reserved } => self.give_back(id, from_reserved),
            order_table::Stock::TakeExchangeUnit => {
                let stock = &mut self.stock[exchange_sku];
                stock.available -= 1;
                stock.sold += 1;
            }
        }
    }

    /// Moves time on and runs what the timers run: the payment timer expires an unpaid
    /// order (the reminder changes no state the model compares), the review timeout rejects
    /// a held one, auto-completion completes a delivered one.
    fn advance(&mut self, seconds: u64) {
        self.now_ms += seconds * 1000;
        let now_ms = self.now_ms;
        // The reminder at half the payment timeout becomes an unpaid order's last record.
        for order in self.orders.values_mut() {
            let half_ms = u64::from(TIMEOUT_S) * 1000 / 2;
            if order.status == OrderStatus::PendingPayment
                && !order.reminded
                && now_ms >= order.clock_ms + half_ms
            {
                order.reminded = true;
                order.last_action = None;
            }
        }
        let due: Vec<(usize, Action)> = self
            .orders
            .iter()
            .filter_map(|(id, order)| {
                let (timeout_s, action) = match order.status {
                    OrderStatus::PendingPayment => (u64::from(TIMEOUT_S), Action::Expire),
                    OrderStatus::Held | OrderStatus::HeldCod => (REVIEW_TIMEOUT_S, Action::Reject),
                    OrderStatus::Delivered => (AUTO_COMPLETE_S, Action::Complete),
                    _ => return None,
                };
                (now_ms >= order.clock_ms + timeout_s * 1000).then_some((*id, action))
            })
            .collect();
        for (id, action) in due {
            let order = &self.orders[&id];
            let (to, stock) = table_move(order.status, action, false, order.payment)
                .expect("the table allows what the timer does");
            self.apply(id, stock, 0);
            let order = self.orders.get_mut(&id).unwrap();
            order.status = to;
            order.last_action = Some(action);
        }
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    config: Config,
    clock: Clock,
    engine: Option<Arc<Engine>>,
}

impl Harness {
    fn new(data_dir: &Path) -> Self {
        let config = in_process::config(
            data_dir,
            &[
                ("STAMPEDE_JOURNAL_FSYNC", "none"),
                ("STAMPEDE_SHARDS", "2"),
                ("STAMPEDE_REVIEW_TIMEOUT_S", &REVIEW_TIMEOUT_S.to_string()),
                (
                    "STAMPEDE_ORDERS_AUTO_COMPLETE_S",
                    &AUTO_COMPLETE_S.to_string(),
                ),
            ],
        );
        let runtime = in_process::runtime(1);
        let mut harness = Self {
            runtime,
            config,
            clock: Clock::manual(START_MS),
            engine: None,
        };
        harness.start();
        let engine = harness.engine().clone();
        harness.runtime.block_on(async {
            for (sku, stock) in SKUS.iter().zip(STOCK) {
                let update = SkuUpdate {
                    stock: Some(stock),
                    per_user_limit: Some(PER_USER_LIMIT),
                    max_per_order: Some(MAX_PER_ORDER),
                    payment_timeout_s: Some(TIMEOUT_S),
                };
                engine.put_sku(sku, update).await.expect("sku created");
            }
        });
        harness
    }

    fn engine(&self) -> &Arc<Engine> {
        self.engine.as_ref().expect("engine running")
    }

    fn start(&mut self) {
        let (engine, _report) =
            Engine::start_with_clock(&self.config, self.clock.clone()).expect("engine starts");
        self.engine = Some(engine);
    }

    fn restart(&mut self) {
        let engine = self.engine.take().expect("engine running");
        engine.shutdown().expect("clean shutdown");
        drop(engine);
        self.start();
    }

    fn place(&self, op: &Op) -> Expect {
        let Op::Place {
            order: id,
            user,
            sku,
            qty,
            payment,
            held,
        } = *op
        else {
            unreachable!("a place op")
        };
        let engine = self.engine().clone();
        let (id, user) = (format!("o{id}"), format!("u{user}"));
        let order = NewOrder::new(&id, &user, SKUS[sku], payment)
            .qty(qty)
            .held(held);
        match self.runtime.block_on(in_process::place(&engine, order)) {
            OrderOutcome::Accepted { .. } => Expect::Accepted,
            OrderOutcome::Held { .. } => Expect::Held,
            OrderOutcome::Replayed { .. } => Expect::Replayed,
            OrderOutcome::IdempotencyConflict => Expect::Conflict,
            OrderOutcome::QtyOverMax { .. } => Expect::QtyOverMax,
            OrderOutcome::SoldOut { .. } => Expect::SoldOut,
            OrderOutcome::PurchaseLimit { .. } => Expect::PurchaseLimit,
            other @ (OrderOutcome::Unavailable { .. }
            | OrderOutcome::UnknownSku
            | OrderOutcome::Denied
            | OrderOutcome::Paused
            | OrderOutcome::Overloaded { .. }) => panic!("the shard answered {other:?}"),
        }
    }

    fn act(
        &self,
        id: usize,
        action: Action,
        restock: bool,
        exchange_sku: usize,
        key: Option<usize>,
    ) -> Expect {
        let engine = self.engine().clone();
        let order_id = format!("o{id}");
        let request = ActionRequest {
            address: (action == Action::Modify).then(|| r#"{"city":"X"}"#.to_owned()),
            restock,
            exchange_sku: (action == Action::Exchange).then(|| SKUS[exchange_sku].to_owned()),
            idempotency_key: key.map(|key| format!("k{key}")),
            ..action_request(&order_id, action)
        };
        match self.runtime.block_on(engine.order_action(request)) {
            Ok(ActionOutcome::Done { status, .. }) => Expect::Done(status),
            Ok(ActionOutcome::Replayed { seq: None, .. }) => Expect::ActionReplayed(None),
            Ok(ActionOutcome::Replayed {
                seq: Some(seq),
                status,
            }) => {
                // The original answer: the order as of the action's record, whose status is
                // the one the key remembers.
                let view = engine
                    .order_view_as_of(&order_id, seq)
                    .expect("history reads")
                    .expect("the order is known");
                assert_eq!(view.status, status.as_str(), "o{id} as of seq {seq}");
                assert_eq!(view.history.last().unwrap()["seq"], seq, "o{id}");
                Expect::ActionReplayed(Some(status))
            }
            Ok(ActionOutcome::IdempotencyConflict) => Expect::ActionConflict,
            Ok(ActionOutcome::ExchangeSoldOut { .. }) => {
                panic!("the engine answers a keyed exchange's missing unit as SoldOut")
            }
            Ok(ActionOutcome::Refused { .. }) => Expect::Refused,
            Ok(ActionOutcome::UnknownOrder) => Expect::UnknownOrder,
            Ok(ActionOutcome::TooManyRecords { .. }) => Expect::TooManyRecords,
            Ok(ActionOutcome::Unavailable { reason }) => panic!("unavailable: {reason}"),
            Err(ActionError::SoldOut { .. }) => Expect::SoldOut,
            Err(error) => panic!("action failed: {error:?}"),
        }
    }

    /// What the engine shows: every SKU's stock and every order's status.
    fn snapshot(&self) -> ([Stock; 3], HashMap<usize, OrderStatus>) {
        let engine = self.engine();
        let stock = SKUS.map(|sku| {
            let view = engine.sku_view(sku).unwrap();
            assert_eq!(
                view.available + view.reserved + view.sold,
                view.stock_total,
                "{view:?} does not balance"
            );
            Stock {
                total: view.stock_total,
                available: view.available,
                reserved: view.reserved,
                sold: view.sold,
            }
        });
        let statuses = (0..ORDER_IDS)
            .filter_map(|id| {
                engine
                    .order_status(&format!("o{id}"))
                    .map(|status| (id, status))
            })
            .collect();
        (stock, statuses)
    }
}

fn model_snapshot(model: &Model) -> ([Stock; 3], HashMap<usize, OrderStatus>) {
    let statuses = model
        .orders
        .iter()
        .map(|(id, order)| (*id, order.status))
        .collect();
    (model.stock, statuses)
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(&dir.path().join("data"));
    let mut model = Model {
        now_ms: START_MS,
        ..Model::default()
    };
    for (n, stock) in STOCK.iter().enumerate() {
        model.stock[n] = Stock {
            total: *stock,
            available: *stock,
            ..Stock::default()
        };
    }
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Place {
                order,
                user,
                sku,
                qty,
                payment,
                held,
            } => {
                let expected = model.place(*order, *user, *sku, *qty, *payment, *held);
                let got = harness.place(op);
                prop_assert_eq!(got, expected, "step {}: {:?}", step, op);
            }
            Op::Act {
                order,
                action,
                restock,
                exchange_sku,
                key,
            } => {
                let expected = model.act(*order, *action, *restock, *exchange_sku, *key);
                let got = harness.act(*order, *action, *restock, *exchange_sku, *key);
                prop_assert_eq!(got, expected, "step {}: {:?}", step, op);
            }
            Op::Advance { seconds } => {
                model.advance(*seconds);
                harness.clock.advance(Duration::from_secs(*seconds));
                harness.engine().tick();
                // The shards fire timers on their next turn: wait (bounded) until they have.
                let deadline = Instant::now() + Duration::from_secs(5);
                while harness.snapshot() != model_snapshot(&model) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Op::Checkpoint => {
                harness.engine().checkpoint().expect("checkpoint written");
            }
            Op::Restart => {
                let before = harness.snapshot();
                harness.restart();
                prop_assert_eq!(harness.snapshot(), before, "step {}: replay differs", step);
            }
        }
        prop_assert_eq!(
            harness.snapshot(),
            model_snapshot(&model),
            "step {}: {:?}",
            step,
            op
        );
    }
    // A last restart: what the journal replays is what was live.
    let before = harness.snapshot();
    harness.restart();
    prop_assert_eq!(harness.snapshot(), before, "final replay differs");
    harness.engine().shutdown().expect("clean shutdown");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}

fn act(order: usize, action: Action) -> Op {
    Op::Act {
        order,
        action,
        restock: false,
        exchange_sku: 0,
        key: None,
    }
}

/// Order review by hand: held orders of each payment, approved, rejected, timed out across a
/// checkpoint and a restart, the payment clock from the approval, auto-completion.
#[test]
fn a_known_review_sequence_matches_the_model() {
    let place = |order, payment, held| Op::Place {
        order,
        user: order % USERS,
        sku: 0,
        qty: 1,
        payment,
        held,
    };
    let ops = vec![
        place(0, Payment::Cod, true),
        place(1, Payment::Prepaid, true),
        place(2, Payment::Escrow, true),
        act(0, Action::Pay),
        act(0, Action::Cancel),
        act(0, Action::Approve),
        act(0, Action::Approve),
        act(2, Action::Reject),
        act(2, Action::Approve),
        Op::Advance { seconds: 45 },
        act(1, Action::Approve),
        Op::Checkpoint,
        Op::Advance { seconds: 40 },
        Op::Restart,
        // Order 1's payment clock started at its approval: not expired yet.
        Op::Advance { seconds: 10 },
        place(3, Payment::Prepaid, true),
        Op::Advance { seconds: 45 },
        Op::Restart,
        Op::Advance { seconds: 45 },
        act(3, Action::Approve),
        place(4, Payment::Cod, false),
    ]
    .into_iter()
    .chain(
        [
            "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver",
        ]
        .map(|name| act(4, Action::parse_client(name).unwrap())),
    )
    .chain([
        Op::Checkpoint,
        Op::Advance { seconds: 45 },
        Op::Restart,
        Op::Advance { seconds: 45 },
        Op::Advance { seconds: 45 },
        act(4, Action::Complete),
    ])
    .collect::<Vec<_>>();
    run(&ops).unwrap();
}

/// One hand-written sequence through every money path, as a readable example of the model.
#[test]
fn a_known_sequence_matches_the_model() {
    let ops = vec![
        Op::Place {
            order: 0,
            user: 0,
            sku: 0,
            qty: 2,
            payment: Payment::Prepaid,
            held: false,
        },
        Op::Place {
            order: 1,
            user: 0,
            sku: 0,
            qty: 1,
            payment: Payment::Cod,
            held: false,
        },
        Op::Place {
            order: 2,
            user: 1,
            sku: 0,
            qty: 1,
            payment: Payment::Escrow,
            held: false,
        },
        Op::Act {
            order: 2,
            action: Action::Pay,
            restock: false,
            exchange_sku: 0,
            key: Some(0),
        },
        Op::Advance { seconds: 31 },
        Op::Checkpoint,
        Op::Restart,
        Op::Act {
            order: 2,
            action: Action::Pay,
            restock: false,
            exchange_sku: 0,
            key: Some(0),
        },
        Op::Act {
            order: 2,
            action: Action::Verify,
            restock: false,
            exchange_sku: 0,
            key: Some(0),
        },
        Op::Advance { seconds: 30 },
        Op::Place {
            order: 1,
            user: 0,
            sku: 0,
            qty: 1,
            payment: Payment::Cod,
            held: false,
        },
        Op::Place {
            order: 3,
            user: 0,
            sku: 0,
            qty: 1,
            payment: Payment::Cod,
            held: false,
        },
        Op::Act {
            order: 3,
            action: Action::Cancel,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Verify,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Restart,
        Op::Act {
            order: 2,
            action: Action::Pay,
            restock: false,
            exchange_sku: 0,
            key: Some(0),
        },
        Op::Act {
            order: 2,
            action: Action::Print,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Pick,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Check,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Pack,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Weigh,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Ship,
            restock: false,
            exchange_sku: 0,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Exchange,
            restock: false,
            exchange_sku: 1,
            key: None,
        },
        Op::Act {
            order: 2,
            action: Action::Return,
            restock: true,
            exchange_sku: 0,
            key: None,
        },
        Op::Restart,
    ];
    run(&ops).unwrap();
}
