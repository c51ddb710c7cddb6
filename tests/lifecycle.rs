//! Black-box tests of the order lifecycle (`shared/spec/http-api.md`, "Orders"): the action
//! table tried from every state, the happy paths of the three payment types, every
//! after-sales path, the payment timer, and restarts (SIGTERM and SIGKILL) in the middle of
//! orders' lives. The real binary on loopback, one data directory per server.
//!
//! Every wait is a poll with a deadline; every test stops its servers with SIGTERM and
//! checks the exit.

mod common;

use std::time::{Duration, Instant};

use common::order_table::{self, CLIENT_ACTIONS, STATES};
use common::{Api, Opts, Reply, Server, order};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------------------
// The contract: its action table is tests/common/order_table.rs; the routes are here
// ---------------------------------------------------------------------------------------

/// Whether the contract allows `action` from `state` ([`order_table`]).
fn allowed(action: &str, state: &str) -> bool {
    order_table::allowed(state, action)
}

/// The state `action` leads to from `state` (which must allow it).
fn target(action: &str, state: &'static str) -> &'static str {
    order_table::next(state, action, false)
        .unwrap_or_else(|| panic!("{action} from {state}"))
        .to
}

/// The fulfilment stages after acceptance, in order (`pay` only for prepaid and escrow).
static FULFIL: [&str; 10] = [
    "pay", "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver", "complete",
];

/// How an order reaches `state` through the API: its payment type and its actions. The
/// routes mix the payment types, so the stages are tried from `paid` and from `confirmed`.
fn route(state: &str) -> (&'static str, &'static [&'static str]) {
    match state {
        "pending_payment" => ("prepaid", &[]),
        "confirmed" => ("cod", &[]),
        "paid" => ("prepaid", &FULFIL[..1]),
        "verified" => ("escrow", &FULFIL[..2]),
        "printed" => ("cod", &FULFIL[1..3]),
        "picked" => ("prepaid", &FULFIL[..4]),
        "checked" => ("cod", &FULFIL[1..5]),
        "packed" => ("escrow", &FULFIL[..6]),
        "weighed" => ("cod", &FULFIL[1..7]),
        "shipped" => ("prepaid", &FULFIL[..8]),
        "delivered" => ("cod", &FULFIL[1..9]),
        "completed" => ("escrow", &FULFIL[..10]),
        "cancelled" => ("escrow", &["cancel"]),
        "refunded" => ("cod", &["verify", "refund"]),
        "returned" => (
            "escrow",
            &[
                "pay", "verify", "print", "pick", "check", "pack", "weigh", "ship", "return",
            ],
        ),
        other => panic!("no route to {other}: it is reached by waiting"),
    }
}

/// The SKU that `exchange` bodies name (each test makes it on its own server when needed).
const SWAP_SKU: &str = "SWAP";

/// The body a test sends with an action. `return+restock` is `return` with
/// `{"restock": true}`.
fn step_parts(step: &str) -> (&str, Option<Value>) {
    match step {
        "modify" => ("modify", Some(json!({"address": {"line": "2 New Street"}}))),
        "exchange" => ("exchange", Some(json!({"sku": SWAP_SKU}))),
        "return+restock" => (
            "return",
            Some(json!({"restock": true, "reason": "back on the shelf"})),
        ),
        "cancel" | "refund" | "return" => (step, Some(json!({"reason": "black-box test"}))),
        _ => (step, None),
    }
}

fn body_for(action: &str) -> Option<Value> {
    step_parts(action).1
}

// ---------------------------------------------------------------------------------------
// A small client (cloneable into tasks; rebuilt after a restart, whose port is new)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stock {
    available: u64,
    reserved: u64,
    sold: u64,
    total: u64,
}

/// The test's own requests, on the harness's [`Api`].
impl Api {
    /// Places an order and asserts 201 with the status its payment type starts in.
    async fn place_order(&self, id: &str, user: &str, sku: &str, qty: u32, payment: &str) -> Value {
        let reply = self.post_order(&order(id, user, sku, qty, payment)).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "order {id}: {}",
            reply.text
        );
        let status = if payment == "cod" {
            "confirmed"
        } else {
            "pending_payment"
        };
        assert_eq!(reply.json["status"], status, "order {id}: {}", reply.text);
        reply.json
    }

    /// An action that must be new work: 200 without `Idempotent-Replayed`, the answer is
    /// the order as `GET` then shows it, and its history grew by exactly this action's
    /// record, after the ones it had. Returns the view.
    async fn step(&self, id: &str, action: &str, body: Option<&Value>) -> Value {
        let before = self.order(id).await;
        let reply = self.post_action(id, action, body).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{action} on {id} (was {}): {}",
            before["status"],
            reply.text
        );
        assert_eq!(
            reply.header("idempotent-replayed"),
            None,
            "{action} on {id} is new work, not a replay"
        );
        let after = self.order(id).await;
        assert_eq!(
            reply.json, after,
            "the answer to {action} on {id} is the order as GET shows it"
        );
        let (old, new) = (history(&before), history(&after));
        assert_eq!(
            new.len(),
            old.len() + 1,
            "{action} journals one record: {after}"
        );
        assert_eq!(&new[..old.len()], old, "{action} keeps the earlier history");
        let item = new.last().unwrap();
        assert_eq!(item["event"], action, "{item}");
        assert_eq!(item["status"], after["status"], "{item}");
        assert!(seq(item) > seq(old.last().unwrap()), "seq grows: {after}");
        assert!(item["at"].is_string(), "history item has `at`: {item}");
        after
    }

    /// [`Api::step`] for a step name of [`step_parts`], asserting the state it leads to.
    async fn step_to(&self, id: &str, step: &str, status: &str) -> Value {
        let (action, body) = step_parts(step);
        let view = self.step(id, action, body.as_ref()).await;
        assert_eq!(view["status"], status, "{step} on {id}: {view}");
        view
    }

    /// Runs the steps in order (each must be allowed by the table); returns the last view.
    async fn drive(&self, id: &str, steps: &[&str]) -> Value {
        let mut view = self.order(id).await;
        for step in steps {
            let (action, body) = step_parts(step);
            let from = STATES
                .into_iter()
                .find(|state| view["status"] == *state)
                .unwrap_or_else(|| panic!("unknown status in {view}"));
            view = self.step(id, action, body.as_ref()).await;
            assert_eq!(view["status"], target(action, from), "{step} on {id}");
        }
        view
    }

    /// `GET /v1/skus/{sku}` asserting 200 and `available + reserved + sold = stock_total`.
    async fn stock(&self, sku: &str) -> Stock {
        let reply = self.get(&format!("/v1/skus/{sku}")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET sku {sku}: {}",
            reply.text
        );
        let field = |name: &str| {
            reply.json[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} in {}", reply.text))
        };
        let stock = Stock {
            available: field("available"),
            reserved: field("reserved"),
            sold: field("sold"),
            total: field("stock_total"),
        };
        assert_eq!(
            stock.available + stock.reserved + stock.sold,
            stock.total,
            "available + reserved + sold = stock_total: {}",
            reply.text
        );
        stock
    }

    /// Asserts `(available, reserved, sold)` of a SKU.
    async fn expect_stock(&self, sku: &str, expected: (u64, u64, u64), when: &str) {
        let stock = self.stock(sku).await;
        assert_eq!(
            (stock.available, stock.reserved, stock.sold),
            expected,
            "{sku} (available, reserved, sold) {when}: {stock:?}"
        );
    }

    /// Every journal record, paging on the last `seq`.
    async fn journal(&self) -> Vec<Value> {
        let mut records = Vec::new();
        let mut from = 0;
        for _ in 0..1000 {
            let reply = self
                .get(&format!("/v1/journal?from={from}&limit=500"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "journal: {}", reply.text);
            let page: Vec<Value> = reply
                .text
                .lines()
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_str(line).expect("journal line is JSON"))
                .collect();
            let Some(last) = page.last() else {
                return records;
            };
            from = seq(last);
            records.extend(page);
        }
        panic!("journal paging did not end");
    }

    /// The journal records of one order, in order.
    async fn journal_of(&self, id: &str) -> Vec<Value> {
        self.journal()
            .await
            .into_iter()
            .filter(|record| record["order_id"] == id)
            .collect()
    }
}

fn history(view: &Value) -> &Vec<Value> {
    view["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history array in {view}"))
}

fn events(view: &Value) -> Vec<&str> {
    history(view)
        .iter()
        .map(|item| item["event"].as_str().expect("event"))
        .collect()
}

fn seq(item: &Value) -> u64 {
    item["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq in {item}"))
}

fn at_ms(item: &Value) -> u64 {
    item["at_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("at_ms in {item}"))
}

/// Polls `GET /v1/orders/{id}` until `done` holds; panics at `deadline`.
async fn wait_for(
    api: &Api,
    id: &str,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let view = api.order(id).await;
        if done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "order {id}: {what} did not happen in time: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 409 `invalid_transition` whose detail names the state and the action.
#[track_caller]
fn assert_refused(reply: &Reply, state: &str, action: &str) {
    reply.assert_error(409, "invalid_transition");
    let detail = reply.json["detail"].as_str().unwrap();
    let words: Vec<&str> = detail
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    assert!(
        words.contains(&state) && words.contains(&action),
        "{action} from {state}: the detail must name both: {detail:?}"
    );
}

/// 200 with `Idempotent-Replayed: true` and the order exactly as it was.
#[track_caller]
fn assert_replayed(reply: &Reply, view: &Value, action: &str) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "retry of {action}: {}",
        reply.text
    );
    assert_eq!(
        reply.header("idempotent-replayed"),
        Some("true"),
        "retry of {action} is a replay"
    );
    assert_eq!(
        &reply.json, view,
        "a replay of {action} answers the order unchanged and journals nothing"
    );
}

/// Checks that an order's history is its journal records: same seqs, types, times and
/// statuses, in the same order.
fn assert_history_is_journal(view: &Value, records: &[Value]) {
    let items = history(view);
    assert_eq!(
        items.len(),
        records.len(),
        "history {view}\njournal {records:?}"
    );
    for (item, record) in items.iter().zip(records) {
        assert_eq!(item["seq"], record["seq"], "{item} vs {record}");
        assert_eq!(item["event"], record["type"], "{item} vs {record}");
        assert_eq!(item["at"], record["at"], "{item} vs {record}");
        if record["type"] != "accepted" {
            assert_eq!(item["status"], record["status"], "{item} vs {record}");
        }
    }
}

async fn join_all<T: 'static>(mut tasks: JoinSet<T>) -> Vec<T> {
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(value) => results.push(value),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("task failed: {error}"),
        }
    }
    results
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM: drain, sync, exit 0.
    Term,
    /// SIGKILL (the default `fsync = "always"` makes every acknowledged record durable).
    Kill,
}

async fn stop(server: &mut Server, how: Stop) {
    match how {
        Stop::Term => {
            let status = server.terminate().await;
            assert!(
                status.success(),
                "SIGTERM exit: {status}\n{}",
                server.output()
            );
        }
        Stop::Kill => server.kill9(),
    }
}

// ---------------------------------------------------------------------------------------
// 1. The action table, every action from every state
// ---------------------------------------------------------------------------------------

const TABLE_SKU: &str = "TBL";
const TABLE_EXPIRING_SKU: &str = "TBL-EXP";

/// Places an order (buyer = its id) and drives it to `state` along [`route`]; returns the
/// action that led there, if any.
async fn reach(api: &Api, id: &str, state: &str) -> Option<&'static str> {
    let (payment, path) = route(state);
    api.place_order(id, id, TABLE_SKU, 1, payment).await;
    let view = api.drive(id, path).await;
    assert_eq!(view["status"], state, "{id}: {view}");
    path.last().copied()
}

/// On one order in `state` (reached by `last`): a retry of `last` is a replay; `modify`,
/// where allowed, is new work that keeps the state; every action the table does not allow
/// is 409 `invalid_transition` (or a replay, for the action that led here), and none of it
/// journals anything.
async fn refusals(api: &Api, id: &str, state: &str, mut last: Option<&'static str>) {
    let mut view = api.order(id).await;
    if let Some(action) = last {
        let reply = api.post_action(id, action, body_for(action).as_ref()).await;
        assert_replayed(&reply, &view, action);
    }
    if allowed("modify", state) {
        let address = json!({"line": format!("probe of {id}")});
        view = api
            .step(id, "modify", Some(&json!({"address": address})))
            .await;
        assert_eq!(view["status"], state, "modify keeps the state: {view}");
        assert_eq!(view["address"], address, "{view}");
        let item = history(&view).last().unwrap();
        assert_eq!(item["redirect"], state == "shipped", "{item}");
        last = Some("modify");
    }
    for action in CLIENT_ACTIONS {
        if allowed(action, state) {
            continue;
        }
        let reply = api.post_action(id, action, body_for(action).as_ref()).await;
        if last == Some(action) {
            assert_replayed(&reply, &view, action);
        } else {
            assert_refused(&reply, state, action);
        }
    }
    assert_eq!(
        api.order(id).await,
        view,
        "refused and replayed actions change nothing and journal nothing"
    );
}

async fn probe_state(api: Api, state_index: usize) -> String {
    let state = STATES[state_index];
    // Ids and buyers never contain a state's or an action's name: the detail check looks
    // for those as words.
    let id = format!("p{state_index}");
    let last = reach(&api, &id, state).await;
    refusals(&api, &id, state, last).await;
    id
}

async fn allowed_move(api: Api, state_index: usize, action_index: usize) -> String {
    let (state, action) = (STATES[state_index], CLIENT_ACTIONS[action_index]);
    let id = format!("m{state_index}x{action_index}");
    reach(&api, &id, state).await;
    let view = api.step(&id, action, body_for(action).as_ref()).await;
    assert_eq!(
        view["status"],
        target(action, state),
        "{action} from {state}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_action_follows_the_contract_table_from_every_state() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok(TABLE_SKU, &json!({"stock": 200, "max_per_order": 1}))
        .await;
    api.put_sku_ok(SWAP_SKU, &json!({"stock": 10})).await;
    api.put_sku_ok(
        TABLE_EXPIRING_SKU,
        &json!({"stock": 5, "max_per_order": 1, "payment_timeout_s": 1}),
    )
    .await;
    // `expired` is reached by waiting: its order goes first and is probed last.
    let expired_index = STATES.iter().position(|s| *s == "expired").unwrap();
    let expired_id = format!("p{expired_index}");
    let placed_at = Instant::now();
    api.place_order(&expired_id, &expired_id, TABLE_EXPIRING_SKU, 1, "prepaid")
        .await;

    let mut tasks = JoinSet::new();
    let mut moves = 0;
    for (state_index, state) in STATES.iter().enumerate() {
        if *state == "expired" {
            continue;
        }
        tasks.spawn(probe_state(api.clone(), state_index));
        for (action_index, action) in CLIENT_ACTIONS.iter().enumerate() {
            // `modify` keeps the state: the probe of each state tries it.
            if *action != "modify" && allowed(action, state) {
                tasks.spawn(allowed_move(api.clone(), state_index, action_index));
                moves += 1;
            }
        }
    }
    assert_eq!(
        moves, 30,
        "the table has 40 allowed pairs, 10 of them modify"
    );
    let ids = join_all(tasks).await;

    wait_for(
        &api,
        &expired_id,
        placed_at + Duration::from_secs(10),
        "expiry",
        |view| view["status"] == "expired",
    )
    .await;
    refusals(&api, &expired_id, "expired", None).await;

    // Stock: each order holds its unit where its final state says.
    let (mut reserved, mut sold) = (0, 0);
    for id in &ids {
        let view = api.order(id).await;
        match view["status"].as_str().unwrap() {
            "pending_payment" => reserved += 1,
            "cancelled" | "refunded" | "expired" => {}
            // `return` without `restock` keeps the unit sold.
            _ => sold += 1,
        }
    }
    api.expect_stock(
        TABLE_SKU,
        (200 - reserved - sold, reserved, sold),
        "after the table",
    )
    .await;
    api.expect_stock(SWAP_SKU, (7, 0, 3), "after three exchanges")
        .await;
    api.expect_stock(TABLE_EXPIRING_SKU, (5, 0, 0), "after the expiry")
        .await;
    stop(&mut server, Stop::Term).await;
}

// ---------------------------------------------------------------------------------------
// 2. Happy paths
// ---------------------------------------------------------------------------------------

async fn happy_path(api: &Api, payment: &'static str) {
    let sku = format!("HAPPY-{payment}");
    api.put_sku_ok(&sku, &json!({"stock": 10, "max_per_order": 5}))
        .await;
    let id = format!("happy-{payment}");
    let placed = api.place_order(&id, "buyer", &sku, 2, payment).await;
    let cod = payment == "cod";
    let first_status = if cod { "confirmed" } else { "pending_payment" };

    let view = api.order(&id).await;
    assert_eq!(view["order_id"], id.as_str(), "{view}");
    assert_eq!(view["user_id"], "buyer", "{view}");
    assert_eq!(view["sku"], sku.as_str(), "{view}");
    assert_eq!(view["qty"], 2, "{view}");
    assert_eq!(view["payment"], payment, "{view}");
    assert_eq!(view["status"], first_status, "{view}");
    let accepted = &history(&view)[0];
    assert_eq!(history(&view).len(), 1, "{view}");
    assert_eq!(accepted["event"], "accepted", "{view}");
    assert_eq!(accepted["seq"], placed["seq"], "{view}");
    assert_eq!(accepted["status"], first_status, "{view}");
    assert!(accepted["at"].is_string(), "{view}");

    let mut expected = vec![("accepted", first_status)];
    if cod {
        api.expect_stock(&sku, (8, 0, 2), "cod is sold at once")
            .await;
    } else {
        api.expect_stock(&sku, (8, 2, 0), "reserved while awaiting payment")
            .await;
        api.step_to(&id, "pay", "paid").await;
        expected.push(("pay", "paid"));
        api.expect_stock(&sku, (8, 0, 2), "sold once paid").await;
    }
    for (action, status) in [
        ("verify", "verified"),
        ("print", "printed"),
        ("pick", "picked"),
        ("check", "checked"),
        ("pack", "packed"),
        ("weigh", "weighed"),
        ("ship", "shipped"),
        ("deliver", "delivered"),
        ("complete", "completed"),
    ] {
        api.step_to(&id, action, status).await;
        expected.push((action, status));
        api.expect_stock(&sku, (8, 0, 2), &format!("after {action}"))
            .await;
    }
    let view = api.order(&id).await;
    let got: Vec<(&str, &str)> = history(&view)
        .iter()
        .map(|item| {
            (
                item["event"].as_str().unwrap(),
                item["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected, "{payment} history");
    assert_history_is_journal(&view, &api.journal_of(&id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepaid_escrow_and_cod_orders_go_from_acceptance_to_completion() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    tokio::join!(
        happy_path(&api, "prepaid"),
        happy_path(&api, "escrow"),
        happy_path(&api, "cod"),
    );
    stop(&mut server, Stop::Term).await;
}

// ---------------------------------------------------------------------------------------
// 3. After-sales paths
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_verify_gives_the_stock_back_and_frees_the_purchase_limit() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok(
        "LIM",
        &json!({"stock": 10, "per_user_limit": 1, "max_per_order": 1}),
    )
    .await;

    api.place_order("c1", "alice", "LIM", 1, "prepaid").await;
    api.expect_stock("LIM", (9, 1, 0), "after c1").await;
    api.post_order(&order("c2", "alice", "LIM", 1, "prepaid"))
        .await
        .assert_error(409, "purchase_limit");
    let view = api
        .step("c1", "cancel", Some(&json!({"reason": "changed my mind"})))
        .await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(
        history(&view).last().unwrap()["reason"],
        "changed my mind",
        "{view}"
    );
    api.expect_stock("LIM", (10, 0, 0), "c1 cancelled while pending")
        .await;

    // Her count is free again: she buys, pays, and cancels from paid.
    api.place_order("c2", "alice", "LIM", 1, "prepaid").await;
    api.step_to("c2", "pay", "paid").await;
    api.expect_stock("LIM", (9, 0, 1), "c2 paid").await;
    api.step_to("c2", "cancel", "cancelled").await;
    api.expect_stock("LIM", (10, 0, 0), "c2 cancelled once paid")
        .await;

    // Cash on delivery, cancelled from confirmed.
    api.place_order("c3", "alice", "LIM", 1, "cod").await;
    api.expect_stock("LIM", (9, 0, 1), "c3 confirmed").await;
    api.step_to("c3", "cancel", "cancelled").await;
    api.expect_stock("LIM", (10, 0, 0), "c3 cancelled").await;

    // After verify it is too late; the unit stays sold and her count stays taken.
    api.place_order("c4", "alice", "LIM", 1, "escrow").await;
    api.drive("c4", &["pay", "verify"]).await;
    let reply = api
        .post_action("c4", "cancel", body_for("cancel").as_ref())
        .await;
    assert_refused(&reply, "verified", "cancel");
    assert_eq!(api.order("c4").await["status"], "verified");
    api.expect_stock("LIM", (9, 0, 1), "c4 verified, cancel refused")
        .await;
    api.post_order(&order("c5", "alice", "LIM", 1, "prepaid"))
        .await
        .assert_error(409, "purchase_limit");

    // A retried cancel is answered from history; nothing else moves a cancelled order.
    let view = api.order("c1").await;
    let reply = api.post_action("c1", "cancel", None).await;
    assert_replayed(&reply, &view, "cancel");
    assert_refused(
        &api.post_action("c1", "pay", None).await,
        "cancelled",
        "pay",
    );
    api.expect_stock("LIM", (9, 0, 1), "at the end").await;
    let journal = api.journal_of("c1").await;
    let types: Vec<&str> = journal
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["accepted", "cancel"], "cancel journaled once");
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_before_ship_gives_the_stock_back() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok(
        "REF",
        &json!({"stock": 10, "per_user_limit": 2, "max_per_order": 5}),
    )
    .await;

    api.place_order("r1", "u1", "REF", 2, "prepaid").await;
    api.step_to("r1", "pay", "paid").await;
    api.expect_stock("REF", (8, 0, 2), "r1 paid").await;
    let view = api
        .step(
            "r1",
            "refund",
            Some(&json!({"reason": "warehouse lost it"})),
        )
        .await;
    assert_eq!(view["status"], "refunded", "{view}");
    assert_eq!(
        history(&view).last().unwrap()["reason"],
        "warehouse lost it"
    );
    api.expect_stock("REF", (10, 0, 0), "r1 refunded").await;

    // Cash on delivery, refunded at the last stage before ship.
    api.place_order("r2", "u2", "REF", 1, "cod").await;
    api.drive("r2", &FULFIL[1..7]).await;
    api.expect_stock("REF", (9, 0, 1), "r2 weighed").await;
    api.step_to("r2", "refund", "refunded").await;
    api.expect_stock("REF", (10, 0, 0), "r2 refunded").await;

    // After ship, and before payment, refund is refused and nothing moves.
    api.place_order("r3", "u3", "REF", 1, "prepaid").await;
    api.drive("r3", &FULFIL[..8]).await;
    assert_refused(
        &api.post_action("r3", "refund", None).await,
        "shipped",
        "refund",
    );
    api.place_order("r4", "u4", "REF", 1, "prepaid").await;
    assert_refused(
        &api.post_action("r4", "refund", None).await,
        "pending_payment",
        "refund",
    );
    api.expect_stock("REF", (8, 1, 1), "refunds refused").await;
    // The refund freed u1's purchase-limit count (2 units).
    api.place_order("r5", "u1", "REF", 2, "cod").await;
    api.post_order(&order("r6", "u3", "REF", 2, "prepaid"))
        .await
        .assert_error(409, "purchase_limit");
    // A refunded order is final.
    assert_refused(
        &api.post_action("r1", "cancel", None).await,
        "refunded",
        "cancel",
    );
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_before_ship_changes_the_address_and_after_ship_is_a_redirect() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("MOD", &json!({"stock": 5})).await;

    let first = json!({"city": "Oslo", "street": "Karl Johans gate 1"});
    let mut body = order("d1", "u1", "MOD", 1, "prepaid");
    body["address"] = first.clone();
    let reply = api.post_order(&body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(api.order("d1").await["address"], first);

    let modify = |address: &Value| json!({"address": address});
    let bergen = json!({"city": "Bergen"});
    let view = api.step("d1", "modify", Some(&modify(&bergen))).await;
    assert_eq!(view["status"], "pending_payment", "{view}");
    assert_eq!(view["address"], bergen, "{view}");
    let item = history(&view).last().unwrap();
    assert_eq!(item["address"], bergen, "{item}");
    assert_eq!(item["redirect"], false, "{item}");

    api.drive("d1", &FULFIL[..7]).await;
    let trondheim = json!({"city": "Trondheim"});
    let view = api.step("d1", "modify", Some(&modify(&trondheim))).await;
    assert_eq!(view["status"], "weighed", "{view}");
    assert_eq!(history(&view).last().unwrap()["redirect"], false, "{view}");

    api.step_to("d1", "ship", "shipped").await;
    let tromso = json!({"city": "Tromsø", "note": "redirect"});
    let view = api.step("d1", "modify", Some(&modify(&tromso))).await;
    assert_eq!(view["status"], "shipped", "{view}");
    assert_eq!(view["address"], tromso, "{view}");
    let item = history(&view).last().unwrap();
    assert_eq!(
        item["redirect"], true,
        "after ship the history says redirect: {item}"
    );
    assert_eq!(item["address"], tromso, "{item}");
    assert_eq!(api.order("d1").await["address"], tromso);

    // modify may repeat: a second one is new work, journaled.
    let bodo = json!({"city": "Bodø"});
    let view = api.step("d1", "modify", Some(&modify(&bodo))).await;
    assert_eq!(history(&view).last().unwrap()["redirect"], true, "{view}");

    // After delivery it is refused and the address stays.
    api.step_to("d1", "deliver", "delivered").await;
    assert_refused(
        &api.post_action("d1", "modify", Some(&modify(&first))).await,
        "delivered",
        "modify",
    );
    let view = api.order("d1").await;
    assert_eq!(view["address"], bodo, "{view}");
    assert_eq!(
        events(&view).iter().filter(|e| **e == "modify").count(),
        4,
        "{view}"
    );
    api.expect_stock("MOD", (4, 0, 1), "modify moves no stock")
        .await;
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_gives_the_stock_back_only_with_restock() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("RET", &json!({"stock": 10, "max_per_order": 5}))
        .await;

    api.place_order("t1", "u1", "RET", 2, "prepaid").await;
    api.drive("t1", &FULFIL[..8]).await;
    api.expect_stock("RET", (8, 0, 2), "t1 shipped").await;
    let view = api
        .step(
            "t1",
            "return",
            Some(&json!({"restock": true, "reason": "damaged"})),
        )
        .await;
    assert_eq!(view["status"], "returned", "{view}");
    assert_eq!(history(&view).last().unwrap()["restock"], true, "{view}");
    api.expect_stock("RET", (10, 0, 0), "t1 returned with restock")
        .await;

    api.place_order("t2", "u2", "RET", 2, "cod").await;
    api.drive("t2", &FULFIL[1..9]).await;
    let view = api.step("t2", "return", Some(&json!({}))).await;
    assert_eq!(view["status"], "returned", "{view}");
    assert_eq!(history(&view).last().unwrap()["restock"], false, "{view}");
    api.expect_stock("RET", (8, 0, 2), "t2 returned without restock")
        .await;

    // Not from completed, not before ship.
    api.place_order("t3", "u3", "RET", 1, "cod").await;
    api.drive("t3", &FULFIL[1..10]).await;
    assert_refused(
        &api.post_action("t3", "return", None).await,
        "completed",
        "return",
    );
    api.place_order("t4", "u4", "RET", 1, "prepaid").await;
    api.step_to("t4", "pay", "paid").await;
    assert_refused(
        &api.post_action("t4", "return", None).await,
        "paid",
        "return",
    );
    api.expect_stock("RET", (6, 0, 4), "refused returns").await;

    // A retry is a replay (the stock does not come back twice); returned is final.
    let view = api.order("t1").await;
    let reply = api
        .post_action("t1", "return", Some(&json!({"restock": true})))
        .await;
    assert_replayed(&reply, &view, "return");
    assert_refused(
        &api.post_action("t1", "reship", None).await,
        "returned",
        "reship",
    );
    api.expect_stock("RET", (6, 0, 4), "after the retry").await;
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reship_sends_the_order_out_again_from_shipped_delivered_and_completed() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("RSH", &json!({"stock": 5})).await;

    api.place_order("s1", "u1", "RSH", 1, "cod").await;
    api.drive("s1", &FULFIL[1..9]).await;
    let view = api
        .step("s1", "reship", Some(&json!({"reason": "parcel lost"})))
        .await;
    assert_eq!(view["status"], "shipped", "{view}");
    // reship may repeat: a second one is new work.
    api.step_to("s1", "reship", "shipped").await;
    api.drive("s1", &["reship", "deliver", "complete"]).await;
    api.step_to("s1", "reship", "shipped").await;
    let view = api.step_to("s1", "deliver", "delivered").await;
    assert_eq!(
        events(&view),
        [
            "accepted", "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver",
            "reship", "reship", "reship", "deliver", "complete", "reship", "deliver",
        ],
        "{view}"
    );
    api.expect_stock("RSH", (4, 0, 1), "reship moves no stock")
        .await;
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_takes_one_unit_of_the_new_sku() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("EXA", &json!({"stock": 5})).await;
    api.put_sku_ok("EXB", &json!({"stock": 3})).await;
    api.put_sku_ok("EXC", &json!({"stock": 0})).await;

    api.place_order("e1", "u1", "EXA", 1, "prepaid").await;
    api.drive("e1", &FULFIL[..8]).await;
    let view = api
        .step("e1", "exchange", Some(&json!({"sku": "EXB"})))
        .await;
    assert_eq!(view["status"], "shipped", "{view}");
    assert_eq!(history(&view).last().unwrap()["sku"], "EXB", "{view}");
    assert_eq!(view["sku"], "EXA", "the order keeps its sku: {view}");
    api.expect_stock("EXB", (2, 0, 1), "one unit exchanged")
        .await;
    api.expect_stock("EXA", (4, 0, 1), "the order's own unit stays sold")
        .await;

    // Sold out, unknown SKU, missing SKU: refused, nothing journaled, nothing held.
    let before = api.order("e1").await;
    api.post_action("e1", "exchange", Some(&json!({"sku": "EXC"})))
        .await
        .assert_error(409, "sold_out");
    api.post_action("e1", "exchange", Some(&json!({"sku": "NOPE"})))
        .await
        .assert_error(404, "unknown_sku");
    api.post_action("e1", "exchange", Some(&json!({})))
        .await
        .assert_error(422, "invalid");
    assert_eq!(api.order("e1").await, before, "refusals journal nothing");
    api.expect_stock("EXC", (0, 0, 0), "after sold_out").await;
    api.expect_stock("EXB", (2, 0, 1), "after the refusals")
        .await;

    // From delivered and from completed; exchange may repeat.
    api.step_to("e1", "deliver", "delivered").await;
    let view = api
        .step("e1", "exchange", Some(&json!({"sku": "EXB"})))
        .await;
    assert_eq!(view["status"], "shipped", "{view}");
    api.drive("e1", &["deliver", "complete"]).await;
    let view = api
        .step("e1", "exchange", Some(&json!({"sku": "EXB"})))
        .await;
    assert_eq!(view["status"], "shipped", "{view}");
    api.expect_stock("EXB", (0, 0, 3), "three units exchanged")
        .await;
    // EXB is now sold out itself.
    let before = api.order("e1").await;
    api.post_action("e1", "exchange", Some(&json!({"sku": "EXB"})))
        .await
        .assert_error(409, "sold_out");
    assert_eq!(api.order("e1").await, before);

    // Not before ship: refused, and no unit of the new SKU is held for it.
    api.place_order("e2", "u2", "EXA", 1, "prepaid").await;
    api.step_to("e2", "pay", "paid").await;
    assert_refused(
        &api.post_action("e2", "exchange", Some(&json!({"sku": "EXA"})))
            .await,
        "paid",
        "exchange",
    );
    // Precedence: unknown_sku, then invalid_transition, then sold_out.
    api.post_action("e2", "exchange", Some(&json!({"sku": "NOPE"})))
        .await
        .assert_error(404, "unknown_sku");
    assert_refused(
        &api.post_action("e2", "exchange", Some(&json!({"sku": "EXC"})))
            .await,
        "paid",
        "exchange",
    );
    api.expect_stock("EXA", (3, 0, 2), "a refused exchange holds nothing")
        .await;
    api.expect_stock("EXB", (0, 0, 3), "at the end").await;
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_action_is_answered_from_history_and_journaled_once() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("IDEM", &json!({"stock": 5})).await;

    api.place_order("i1", "u1", "IDEM", 1, "prepaid").await;
    let first = api.post_action("i1", "pay", None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(first.json["status"], "paid", "{}", first.text);
    for _ in 0..2 {
        let retry = api.post_action("i1", "pay", None).await;
        assert_replayed(&retry, &first.json, "pay");
    }
    api.expect_stock("IDEM", (4, 0, 1), "paid once").await;
    // The same for a stage.
    let view = api.step_to("i1", "verify", "verified").await;
    assert_replayed(
        &api.post_action("i1", "verify", None).await,
        &view,
        "verify",
    );
    let journal = api.journal_of("i1").await;
    let types: Vec<&str> = journal
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["accepted", "pay", "verify"],
        "nothing journaled twice"
    );
    assert_history_is_journal(&api.order("i1").await, &journal);

    // Unknown orders and actions.
    api.get_order("nope")
        .await
        .assert_error(404, "unknown_order");
    api.post_action("nope", "pay", None)
        .await
        .assert_error(404, "unknown_order");
    api.post_action("i1", "teleport", None)
        .await
        .assert_error(404, "not_found");
    stop(&mut server, Stop::Term).await;
}

/// A keyed action that must be new work: 200, not a replay, the order as `GET` shows it.
async fn keyed_step(api: &Api, id: &str, action: &str, key: &str, body: Option<&Value>) -> Value {
    let reply = api
        .post_action_keyed(id, action, key.as_bytes(), body)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{action} on {id}: {}",
        reply.text
    );
    assert_eq!(
        reply.header("idempotent-replayed"),
        None,
        "{action} is new work"
    );
    assert_eq!(
        reply.json,
        api.order(id).await,
        "{action} answers the order as GET shows it"
    );
    reply.json
}

/// Retries each keyed action of `originals` (action, key, body, the original answer) and
/// requires the original answer back, marked as a replay.
async fn retries_answer_the_originals(
    api: &Api,
    id: &str,
    originals: &[(&str, &str, Option<Value>, Value)],
    when: &str,
) {
    for (action, key, body, original) in originals {
        let reply = api
            .post_action_keyed(id, action, key.as_bytes(), body.as_ref())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "retry of {action} {when}: {}",
            reply.text
        );
        assert_eq!(
            reply.header("idempotent-replayed"),
            Some("true"),
            "retry of {action} {when} is a replay"
        );
        assert_eq!(
            &reply.json, original,
            "retry of {action} {when} answers the original result"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_action_is_answered_with_its_original_result_after_later_actions_and_restarts() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("KEYED", &json!({"stock": 5})).await;
    api.place_order("k1", "u1", "KEYED", 1, "prepaid").await;

    let new_address = json!({"address": {"city": "Bergen"}});
    let paid = keyed_step(&api, "k1", "pay", "pay-1", None).await;
    assert_eq!(paid["status"], "paid");
    let modified = keyed_step(&api, "k1", "modify", "mod-1", Some(&new_address)).await;
    let verified = keyed_step(&api, "k1", "verify", "ver-1", None).await;
    // Later actions, with and without keys.
    api.step_to("k1", "print", "printed").await;
    let originals = vec![
        ("pay", "pay-1", None, paid.clone()),
        (
            "modify",
            "mod-1",
            Some(new_address.clone()),
            modified.clone(),
        ),
        ("verify", "ver-1", None, verified),
    ];
    retries_answer_the_originals(&api, "k1", &originals, "after later actions").await;
    assert_eq!(
        paid["status"], "paid",
        "the original answer, not the order now"
    );
    assert_eq!(events(&paid), ["accepted", "pay"]);
    let now = api.order("k1").await;
    assert_eq!(now["status"], "printed", "retries changed nothing: {now}");
    assert_eq!(
        events(&now),
        ["accepted", "pay", "modify", "verify", "print"]
    );
    api.expect_stock("KEYED", (4, 0, 1), "paid once").await;

    // The journal shows each key on its action's line; the unkeyed action has none.
    let journal = api.journal_of("k1").await;
    let keys: Vec<Option<&str>> = journal
        .iter()
        .map(|record| record["idempotency_key"].as_str())
        .collect();
    assert_eq!(
        keys,
        [None, Some("pay-1"), Some("mod-1"), Some("ver-1"), None]
    );
    assert_history_is_journal(&now, &journal);

    // The same key with another action or another body: 422, nothing journaled.
    api.post_action_keyed("k1", "pick", b"pay-1", None)
        .await
        .assert_error(422, "idempotency_conflict");
    let other_address = json!({"address": {"city": "Oslo"}});
    api.post_action_keyed("k1", "modify", b"mod-1", Some(&other_address))
        .await
        .assert_error(422, "idempotency_conflict");
    api.post_action_keyed("k1", "cancel", b"ver-1", Some(&json!({"reason": "x"})))
        .await
        .assert_error(422, "idempotency_conflict");
    // A refused action binds nothing: the key is free for an allowed one afterwards.
    let refused = api.post_action_keyed("k1", "pay", b"late-1", None).await;
    assert_refused(&refused, "printed", "pay");
    keyed_step(&api, "k1", "pick", "late-1", None).await;

    // SIGKILL and a restart: the journal rebuilds every key.
    let journal_before = api.journal().await;
    stop(&mut server, Stop::Kill).await;
    server.restart().await;
    let api = Api::of(&server);
    assert_eq!(api.journal().await, journal_before, "journal after SIGKILL");
    retries_answer_the_originals(&api, "k1", &originals, "after SIGKILL and restart").await;
    api.post_action_keyed("k1", "pick", b"pay-1", None)
        .await
        .assert_error(422, "idempotency_conflict");
    api.post_action_keyed("k1", "modify", b"mod-1", Some(&other_address))
        .await
        .assert_error(422, "idempotency_conflict");
    assert_eq!(
        api.journal().await,
        journal_before,
        "retries journal nothing"
    );
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_per_order_and_invalid_keys_are_refused() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("KEYED", &json!({"stock": 5})).await;
    api.place_order("k1", "u1", "KEYED", 1, "prepaid").await;
    let paid = keyed_step(&api, "k1", "pay", "pay-1", None).await;
    // Keys are scoped per order: the same key on another order is new work there, and each
    // order's retry answers its own original.
    api.place_order("k2", "u2", "KEYED", 1, "prepaid").await;
    let other = keyed_step(&api, "k2", "pay", "pay-1", None).await;
    assert_eq!(events(&other), ["accepted", "pay"]);
    retries_answer_the_originals(&api, "k1", &[("pay", "pay-1", None, paid)], "on k1").await;
    retries_answer_the_originals(&api, "k2", &[("pay", "pay-1", None, other)], "on k2").await;

    // Invalid keys are refused before anything is decided.
    let too_long = "k".repeat(65);
    for bad in [
        &b""[..],
        too_long.as_bytes(),
        b"has space",
        b"slash/key",
        b"semi;colon",
        "k\u{e9}y".as_bytes(),
    ] {
        api.post_action_keyed("k2", "verify", bad, None)
            .await
            .assert_error(422, "invalid");
    }
    assert_eq!(
        api.order("k2").await["status"],
        "paid",
        "invalid keys changed nothing"
    );
    let longest = "k".repeat(64);
    keyed_step(&api, "k2", "verify", &longest, None).await;

    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_exchange_retry_is_answered_after_its_sku_sold_out_and_a_restart() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("KEYED", &json!({"stock": 5})).await;
    // A keyed exchange that took the last unit of its SKU: its retry is still the original
    // answer, while new work under another key is sold out.
    api.put_sku_ok("KEYED-SWAP", &json!({"stock": 1})).await;
    api.place_order("k3", "u3", "KEYED", 1, "cod").await;
    api.drive(
        "k3",
        &["verify", "print", "pick", "check", "pack", "weigh", "ship"],
    )
    .await;
    let swap = json!({"sku": "KEYED-SWAP"});
    let exchanged = keyed_step(&api, "k3", "exchange", "ex-1", Some(&swap)).await;
    api.expect_stock("KEYED-SWAP", (0, 0, 1), "exchanged").await;
    let exchange_originals = vec![("exchange", "ex-1", Some(swap.clone()), exchanged)];
    retries_answer_the_originals(&api, "k3", &exchange_originals, "when sold out").await;
    api.post_action_keyed("k3", "exchange", b"ex-2", Some(&swap))
        .await
        .assert_error(409, "sold_out");
    api.expect_stock("KEYED-SWAP", (0, 0, 1), "one unit, once")
        .await;

    stop(&mut server, Stop::Kill).await;
    server.restart().await;
    let api = Api::of(&server);
    retries_answer_the_originals(&api, "k3", &exchange_originals, "after SIGKILL").await;
    api.expect_stock("KEYED-SWAP", (0, 0, 1), "after SIGKILL")
        .await;
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_and_exchanges_decide_once() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    // With 2 shards, slots 0 and 2 share shard 0; slot 1 is on shard 1.
    api.put_sku_ok("RACE", &json!({"stock": 10})).await;
    api.put_sku_ok("LAST", &json!({"stock": 1})).await;
    api.put_sku_ok("SAME", &json!({"stock": 2})).await;

    // Eight copies of one `pay` at once: one is decided, the others are replays.
    api.place_order("k1", "u1", "RACE", 1, "prepaid").await;
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let api = api.clone();
        tasks.spawn(async move { api.post_action("k1", "pay", None).await });
    }
    let replies = join_all(tasks).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.json["status"], "paid", "{}", reply.text);
    }
    let fresh = replies
        .iter()
        .filter(|reply| reply.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1, "exactly one of the copies is new work");
    let types: Vec<String> = api
        .journal_of("k1")
        .await
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["accepted", "pay"], "journaled once");
    api.expect_stock("RACE", (9, 0, 1), "k1 paid once").await;

    // Two orders race for the last unit of another shard's SKU: one gets it.
    for id in ["k2", "k3"] {
        api.place_order(id, id, "RACE", 1, "cod").await;
        api.drive(id, &FULFIL[1..8]).await;
    }
    let body = json!({"sku": "LAST"});
    let (k2, k3) = tokio::join!(
        api.post_action("k2", "exchange", Some(&body)),
        api.post_action("k3", "exchange", Some(&body)),
    );
    let (won, lost) = if k2.status == StatusCode::OK {
        (k2, k3)
    } else {
        (k3, k2)
    };
    assert_eq!(won.status, StatusCode::OK, "{}", won.text);
    assert_eq!(won.json["status"], "shipped", "{}", won.text);
    lost.assert_error(409, "sold_out");
    api.expect_stock("LAST", (0, 0, 1), "the last unit exchanged once")
        .await;

    // An exchange to a SKU on the order's own shard, and to the order's own SKU.
    let view = api
        .step("k2", "exchange", Some(&json!({"sku": "SAME"})))
        .await;
    assert_eq!(view["status"], "shipped", "{view}");
    let view = api
        .step("k3", "exchange", Some(&json!({"sku": "RACE"})))
        .await;
    assert_eq!(view["status"], "shipped", "{view}");
    api.expect_stock("SAME", (1, 0, 1), "same-shard exchange")
        .await;
    api.expect_stock("RACE", (6, 0, 4), "k1, k2, k3 and one exchanged unit")
        .await;

    // ... and all of it as it was after a SIGKILL and a restart.
    let before = (
        api.order("k2").await,
        api.order("k3").await,
        api.stock("RACE").await,
        api.stock("LAST").await,
        api.stock("SAME").await,
    );
    stop(&mut server, Stop::Kill).await;
    server.restart().await;
    let api = Api::of(&server);
    let after = (
        api.order("k2").await,
        api.order("k3").await,
        api.stock("RACE").await,
        api.stock("LAST").await,
        api.stock("SAME").await,
    );
    assert_eq!(before, after, "exchanges after SIGKILL and restart");
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_stops_at_its_record_bound_and_its_long_history_reads_back() {
    // docs/API.md: repeated actions stop at 48 records; the last 16 are kept for the rest of
    // the order's life, so a long-lived order can still be delivered and completed.
    const REPEATS_MAX: usize = 48;
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("LONG", &json!({"stock": 1})).await;
    api.place_order("l1", "u1", "LONG", 1, "cod").await;
    let view = api.drive("l1", &FULFIL[1..8]).await;
    for _ in history(&view).len()..REPEATS_MAX {
        let reply = api.post_action("l1", "reship", None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let view = api.order("l1").await;
    assert_eq!(history(&view).len(), REPEATS_MAX, "{view}");
    let reply = api.post_action("l1", "reship", None).await;
    reply.assert_error(409, "invalid_transition");
    let detail = reply.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("reship") && detail.contains("shipped"),
        "{}",
        reply.text
    );
    assert_eq!(
        api.order("l1").await,
        view,
        "nothing journaled past the bound"
    );
    // The life goes on: deliver and complete are never refused for the bound.
    for action in ["deliver", "complete"] {
        let reply = api.post_action("l1", action, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let view = api.order("l1").await;
    assert_eq!(view["status"], "completed");
    let seqs: Vec<u64> = history(&view).iter().map(seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    assert_history_is_journal(&view, &api.journal_of("l1").await);
    stop(&mut server, Stop::Kill).await;
    server.restart().await;
    let api = Api::of(&server);
    assert_eq!(
        api.order("l1").await,
        view,
        "the long history after a restart"
    );
    stop(&mut server, Stop::Term).await;
}

// ---------------------------------------------------------------------------------------
// 4. The payment timer
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_is_reminded_at_half_time_and_expires_with_its_stock_back() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok(
        "EXP",
        &json!({"stock": 3, "per_user_limit": 1, "max_per_order": 1, "payment_timeout_s": 2}),
    )
    .await;
    let start = Instant::now();
    api.place_order("x1", "late", "EXP", 1, "prepaid").await;
    // A paid order on the same SKU: the timer leaves it alone.
    api.place_order("x2", "prompt", "EXP", 1, "escrow").await;
    api.step_to("x2", "pay", "paid").await;
    // Cash on delivery awaits no payment: no timer either.
    api.place_order("x4", "cash", "EXP", 1, "cod").await;
    api.expect_stock("EXP", (0, 1, 2), "x1 pending, x2 paid, x4 confirmed")
        .await;

    let view = wait_for(
        &api,
        "x1",
        start + Duration::from_secs(6),
        "payment_reminder",
        |view| events(view).contains(&"payment_reminder"),
    )
    .await;
    if start.elapsed() < Duration::from_millis(1900) {
        assert_eq!(view["status"], "pending_payment", "{view}");
    }
    let view = wait_for(
        &api,
        "x1",
        start + Duration::from_secs(8),
        "expiry",
        |view| view["status"] == "expired",
    )
    .await;
    let items: Vec<(&str, &str)> = history(&view)
        .iter()
        .map(|i| (i["event"].as_str().unwrap(), i["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        items,
        [
            ("accepted", "pending_payment"),
            ("payment_reminder", "pending_payment"),
            ("expired", "expired"),
        ],
        "{view}"
    );
    api.expect_stock("EXP", (1, 0, 2), "x1 expired").await;
    assert_refused(&api.post_action("x1", "pay", None).await, "expired", "pay");
    assert_refused(
        &api.post_action("x1", "cancel", None).await,
        "expired",
        "cancel",
    );

    // The journal has the timer's records, at half time and at the end.
    let records = api.journal_of("x1").await;
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["accepted", "payment_reminder", "expired"]);
    let accepted_ms = at_ms(&records[0]);
    assert!(
        at_ms(&records[1]) >= accepted_ms + 1000,
        "reminder at half of 2 s: {records:?}"
    );
    assert!(
        at_ms(&records[2]) >= accepted_ms + 2000,
        "expiry at 2 s: {records:?}"
    );
    assert_history_is_journal(&view, &records);
    let paid = api.journal_of("x2").await;
    let types: Vec<&str> = paid.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["accepted", "pay"],
        "no timer record for a paid order"
    );
    assert_eq!(api.order("x2").await["status"], "paid");
    let cod = api.journal_of("x4").await;
    assert_eq!(cod.len(), 1, "no timer record for a cod order: {cod:?}");
    assert_eq!(api.order("x4").await["status"], "confirmed");

    // The expiry freed the late buyer's purchase-limit count.
    api.place_order("x3", "late", "EXP", 1, "prepaid").await;
    api.expect_stock("EXP", (0, 1, 2), "at the end").await;
    stop(&mut server, Stop::Term).await;
}

// ---------------------------------------------------------------------------------------
// 5. Restarts
// ---------------------------------------------------------------------------------------

/// One order's life across two restarts: its payment type, then its steps before the
/// SIGTERM, between the SIGTERM and the SIGKILL, and after the SIGKILL.
struct Life {
    id: &'static str,
    payment: &'static str,
    before: &'static [&'static str],
    after_term: &'static [&'static str],
    after_kill: &'static [&'static str],
}

const LIFE_SKU: &str = "LIFE";

const LIVES: [Life; 8] = [
    Life {
        id: "life-a",
        payment: "prepaid",
        before: &["pay", "verify", "print"],
        after_term: &["pick"],
        after_kill: &["check"],
    },
    Life {
        id: "life-b",
        payment: "cod",
        before: &[
            "verify", "print", "pick", "check", "pack", "weigh", "ship", "modify",
        ],
        after_term: &["deliver"],
        after_kill: &["complete"],
    },
    Life {
        id: "life-c",
        payment: "escrow",
        before: &[
            "pay", "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver",
            "exchange",
        ],
        after_term: &["deliver"],
        after_kill: &["complete", "reship"],
    },
    Life {
        id: "life-d",
        payment: "prepaid",
        before: &[],
        after_term: &["pay"],
        after_kill: &["verify"],
    },
    Life {
        id: "life-e",
        payment: "prepaid",
        before: &["pay", "cancel"],
        after_term: &[],
        after_kill: &[],
    },
    Life {
        id: "life-f",
        payment: "prepaid",
        before: &[
            "pay",
            "verify",
            "print",
            "pick",
            "check",
            "pack",
            "weigh",
            "ship",
            "return+restock",
        ],
        after_term: &[],
        after_kill: &[],
    },
    Life {
        id: "life-g",
        payment: "cod",
        before: &[
            "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver", "return",
        ],
        after_term: &[],
        after_kill: &[],
    },
    Life {
        id: "life-h",
        payment: "cod",
        before: &[
            "verify", "print", "pick", "check", "pack", "weigh", "ship", "deliver", "complete",
            "reship",
        ],
        after_term: &["deliver"],
        after_kill: &["complete"],
    },
];

fn user_of(id: &str) -> String {
    format!("user-{id}")
}

/// Everything a restart must keep: every order as `GET` shows it, both SKUs, the journal.
async fn snapshot(api: &Api) -> (Vec<Value>, Stock, Stock, Vec<Value>) {
    let mut orders = Vec::new();
    for life in &LIVES {
        orders.push(api.order(life.id).await);
    }
    for extra in ["life-e2", "life-f2"] {
        let reply = api.get_order(extra).await;
        if reply.status == StatusCode::OK {
            orders.push(reply.json);
        }
    }
    (
        orders,
        api.stock(LIFE_SKU).await,
        api.stock(SWAP_SKU).await,
        api.journal().await,
    )
}

/// Stops the server, restarts it on the same data directory, and checks that it kept every
/// order, the stock and the journal, and that a retry of each order's latest action is
/// still answered from history.
async fn restart_and_compare(server: &mut Server, how: Stop) -> Api {
    let before = snapshot(&Api::of(server)).await;
    stop(server, how).await;
    server.restart().await;
    let api = Api::of(server);
    let after = snapshot(&api).await;
    for (old, new) in before.0.iter().zip(&after.0) {
        assert_eq!(old, new, "order after {how:?} and restart");
    }
    assert_eq!(before.0.len(), after.0.len());
    assert_eq!(before.1, after.1, "{LIFE_SKU} after {how:?} and restart");
    assert_eq!(before.2, after.2, "{SWAP_SKU} after {how:?} and restart");
    assert_eq!(before.3, after.3, "journal after {how:?} and restart");
    for view in &after.0 {
        let id = view["order_id"].as_str().unwrap();
        let last = history(view).last().unwrap()["event"].as_str().unwrap();
        if !["accepted", "modify", "reship", "exchange"].contains(&last) {
            let body = if last == "return" {
                Some(json!({}))
            } else {
                None
            };
            let reply = api.post_action(id, last, body.as_ref()).await;
            assert_replayed(&reply, view, last);
        }
    }
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_lives_survive_sigterm_and_sigkill_and_go_on() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok(
        LIFE_SKU,
        &json!({"stock": 20, "per_user_limit": 1, "max_per_order": 1}),
    )
    .await;
    api.put_sku_ok(SWAP_SKU, &json!({"stock": 5})).await;
    for life in &LIVES {
        api.place_order(life.id, &user_of(life.id), LIFE_SKU, 1, life.payment)
            .await;
        api.drive(life.id, life.before).await;
    }
    // Sold: a, b, c, g (returned, not restocked), h; reserved: d; e cancelled, f restocked.
    api.expect_stock(LIFE_SKU, (14, 1, 5), "before the stops")
        .await;
    api.expect_stock(SWAP_SKU, (4, 0, 1), "before the stops")
        .await;

    let api = restart_and_compare(&mut server, Stop::Term).await;
    for life in &LIVES {
        api.drive(life.id, life.after_term).await;
    }
    // Purchase-limit counts came back from the journal: freed by the cancel, held by a
    // live order.
    api.place_order("life-e2", &user_of("life-e"), LIFE_SKU, 1, "prepaid")
        .await;
    api.post_order(&order(
        "life-a2",
        &user_of("life-a"),
        LIFE_SKU,
        1,
        "prepaid",
    ))
    .await
    .assert_error(409, "purchase_limit");
    api.expect_stock(LIFE_SKU, (13, 1, 6), "after the SIGTERM restart")
        .await;

    let api = restart_and_compare(&mut server, Stop::Kill).await;
    for life in &LIVES {
        api.drive(life.id, life.after_kill).await;
    }
    // Freed by a return with restock; held after a return without.
    api.place_order("life-f2", &user_of("life-f"), LIFE_SKU, 1, "prepaid")
        .await;
    api.post_order(&order(
        "life-g2",
        &user_of("life-g"),
        LIFE_SKU,
        1,
        "prepaid",
    ))
    .await
    .assert_error(409, "purchase_limit");
    api.post_order(&order(
        "life-e3",
        &user_of("life-e"),
        LIFE_SKU,
        1,
        "prepaid",
    ))
    .await
    .assert_error(409, "purchase_limit");
    let finals = [
        ("life-a", "checked"),
        ("life-b", "completed"),
        ("life-c", "shipped"),
        ("life-d", "verified"),
        ("life-e", "cancelled"),
        ("life-f", "returned"),
        ("life-g", "returned"),
        ("life-h", "completed"),
    ];
    for (id, status) in finals {
        assert_eq!(api.order(id).await["status"], status, "{id}");
    }
    assert_eq!(
        history(&api.order("life-b").await)
            .iter()
            .find(|item| item["event"] == "modify")
            .map(|item| item["redirect"].clone()),
        Some(json!(true)),
        "the redirect survived the restarts"
    );
    api.expect_stock(LIFE_SKU, (12, 2, 6), "after the SIGKILL restart")
        .await;
    api.expect_stock(SWAP_SKU, (4, 0, 1), "at the end").await;
    stop(&mut server, Stop::Term).await;
}

/// An order whose payment deadline passes while the engine is down expires at start-up.
async fn expires_while_down(how: Stop) {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok(
        "DOWN",
        &json!({"stock": 3, "max_per_order": 1, "payment_timeout_s": 2}),
    )
    .await;
    api.place_order("w1", "u1", "DOWN", 1, "escrow").await;
    let placed = Instant::now();
    api.expect_stock("DOWN", (2, 1, 0), "w1 pending").await;
    stop(&mut server, how).await;
    tokio::time::sleep((placed + Duration::from_secs(3)).saturating_duration_since(Instant::now()))
        .await;
    server.restart().await;
    let ready = Instant::now();
    let api = Api::of(&server);
    match how {
        // The first request after the start: a payment decided after the deadline is
        // refused (the shard fires due timers before it decides new commands).
        Stop::Kill => assert_refused(&api.post_action("w1", "pay", None).await, "expired", "pay"),
        Stop::Term => {}
    }
    let view = wait_for(
        &api,
        "w1",
        ready + Duration::from_secs(2),
        "expiry at start-up",
        |view| view["status"] == "expired",
    )
    .await;
    let seen = events(&view);
    assert_eq!(seen.first(), Some(&"accepted"), "{view}");
    assert_eq!(seen.last(), Some(&"expired"), "{view}");
    assert_eq!(
        seen.iter().filter(|e| **e == "expired").count(),
        1,
        "{view}"
    );
    api.expect_stock(
        "DOWN",
        (3, 0, 0),
        &format!("w1 expired at start-up after {how:?}"),
    )
    .await;
    assert_refused(&api.post_action("w1", "pay", None).await, "expired", "pay");
    let records = api.journal_of("w1").await;
    assert_history_is_journal(&view, &records);
    assert!(
        at_ms(records.last().unwrap()) >= at_ms(&records[0]) + 2000,
        "{records:?}"
    );
    stop(&mut server, Stop::Term).await;
}

/// An order reminded before a restart is not reminded again and expires at its deadline.
async fn reminded_before_a_restart() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok(
        "REM",
        &json!({"stock": 2, "max_per_order": 1, "payment_timeout_s": 2}),
    )
    .await;
    let start = Instant::now();
    api.place_order("v1", "u1", "REM", 1, "prepaid").await;
    wait_for(
        &api,
        "v1",
        start + Duration::from_secs(6),
        "payment_reminder",
        |view| events(view).contains(&"payment_reminder"),
    )
    .await;
    stop(&mut server, Stop::Term).await;
    server.restart().await;
    let api = Api::of(&server);
    let view = wait_for(
        &api,
        "v1",
        Instant::now() + Duration::from_secs(4),
        "expiry after the restart",
        |view| view["status"] == "expired",
    )
    .await;
    assert_eq!(
        events(&view),
        ["accepted", "payment_reminder", "expired"],
        "{view}"
    );
    let records = api.journal_of("v1").await;
    assert!(
        at_ms(&records[2]) >= at_ms(&records[0]) + 2000,
        "{records:?}"
    );
    api.expect_stock("REM", (2, 0, 0), "v1 expired").await;
    stop(&mut server, Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_deadlines_survive_restarts() {
    tokio::join!(
        expires_while_down(Stop::Term),
        expires_while_down(Stop::Kill),
        reminded_before_a_restart(),
    );
}
