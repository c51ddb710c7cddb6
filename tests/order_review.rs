//! Black-box tests of order review (`shared/spec/http-api.md`, "Order review (审单) and
//! shipping details"): each rule holds the orders it should and no other, the deny list takes
//! nothing, approve and reject from every state they can meet, the reviewers' page, held
//! orders across SIGKILL and a restart from a checkpoint, and the review timeout. The real
//! binary on loopback; every wait is a poll with a deadline.

mod common;

use std::time::{Duration, Instant};

use common::{Api, Opts, Reply, Server, order};
use reqwest::StatusCode;
use serde_json::{Value, json};

const POLL: Duration = Duration::from_millis(50);
/// Orders placed before the held ones in the checkpoint test: more than two 64 KiB segments
/// of records, so that retention has a segment to delete (and a checkpoint to take) below
/// the held orders, which it keeps.
const FILLER_BEFORE: u64 = 1200;
const FILLER_AFTER: u64 = 400;

async fn put_rules(api: &Api, rules: &Value) -> Reply {
    let request = api
        .client
        .put(api.url("/v1/review/rules"))
        .bearer_auth(&api.admin_token)
        .json(rules);
    api.send(request).await
}

async fn admin_get(api: &Api, path: &str) -> Reply {
    api.send(api.client.get(api.url(path)).bearer_auth(&api.admin_token))
        .await
}

async fn admin_action(api: &Api, id: &str, action: &str, body: Option<&Value>) -> Reply {
    let mut request = api
        .client
        .post(api.url(&format!("/v1/orders/{id}/{action}")))
        .bearer_auth(&api.admin_token);
    if let Some(body) = body {
        request = request.json(body);
    }
    api.send(request).await
}

fn with_address(mut body: Value, line: &str) -> Value {
    body["address"] = json!({ "line": line, "city": "Springfield" });
    body
}

async fn sku(api: &Api, sku: &str) -> Value {
    api.get(&format!("/v1/skus/{sku}")).await.json
}

/// Places an order and returns `(status, review rules)` of its 201.
async fn placed(api: &Api, body: &Value) -> (String, Vec<String>) {
    let reply = api.place(body).await;
    let review = reply["review"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (reply["status"].as_str().unwrap().to_owned(), review)
}

#[tokio::test]
async fn each_rule_holds_only_its_orders_and_a_denied_buyer_takes_nothing() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("RV-1", &json!({"stock": 100, "max_per_order": 5}))
        .await;
    let rules = json!({
        "address_buyers_max": 1,
        "qty_at_least": 3,
        "review_users": ["watch"],
        "deny_users": ["bad"],
    });
    let reply = put_rules(&api, &rules).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let got = admin_get(&api, "/v1/review/rules").await;
    assert_eq!(got.json["address_buyers_max"], 1, "{}", got.text);
    assert_eq!(got.json["client_orders_per_min"], 0);
    assert_eq!(got.json["deny_users"], json!(["bad"]));
    // Without the admin token the rules are neither read nor changed.
    api.get("/v1/review/rules")
        .await
        .assert_error(401, "unauthorized");
    let anonymous = api
        .send(api.client.put(api.url("/v1/review/rules")).json(&json!({})))
        .await;
    anonymous.assert_error(401, "unauthorized");

    let plain = |id: &str, user: &str, qty: u32| order(id, user, "RV-1", qty, "prepaid");
    // The address rule: one buyer per address is fine, however often they order.
    let a = with_address(plain("a1", "u1", 1), "12 Main St.");
    assert_eq!(placed(&api, &a).await.0, "pending_payment");
    let a = with_address(plain("a2", "u1", 1), "12 main st");
    assert_eq!(placed(&api, &a).await.0, "pending_payment");
    // A second buyer at the same address (after normalising) is held, and only for it.
    let a = with_address(plain("a3", "u2", 1), "12  MAIN ST");
    assert_eq!(
        placed(&api, &a).await,
        ("held".into(), vec!["address_shared".into()])
    );
    let b = with_address(plain("b1", "u3", 1), "13 Main St");
    assert_eq!(placed(&api, &b).await.0, "pending_payment");
    // Quantity: at the threshold held, below it not.
    assert_eq!(
        placed(&api, &plain("q1", "u4", 2)).await.0,
        "pending_payment"
    );
    assert_eq!(
        placed(&api, &plain("q2", "u5", 3)).await,
        ("held".into(), vec!["large_qty".into()])
    );
    // The review list holds its users' orders (with every rule they match), no one else's.
    assert_eq!(
        placed(&api, &plain("w1", "watch", 4)).await,
        (
            "held".into(),
            vec!["large_qty".into(), "review_user".into()]
        )
    );
    assert_eq!(
        placed(&api, &plain("w2", "watcher", 1)).await.0,
        "pending_payment"
    );
    // Cash on delivery is held too, its units reserved (not sold) while held.
    let cod = order("c1", "watch", "RV-1", 1, "cod");
    assert_eq!(placed(&api, &cod).await.0, "held");

    // A denied buyer: 403, nothing taken, nothing journaled, and the same after the others.
    let before = sku(&api, "RV-1").await;
    let denied = api.post_order(&plain("d1", "bad", 1)).await;
    denied.assert_error(403, "denied");
    assert_eq!(sku(&api, "RV-1").await, before);
    api.get_order("d1").await.assert_error(404, "unknown_order");

    // Held orders count like any other: 3 + 4 + 1 units reserved among the pending ones.
    let figures = sku(&api, "RV-1").await;
    assert_eq!(
        figures["reserved"],
        1 + 1 + 1 + 1 + 2 + 3 + 4 + 1 + 1,
        "{figures}"
    );
    assert_eq!(figures["sold"], 0, "{figures}");
    let view = api.order("a3").await;
    assert_eq!(view["status"], "held");
    assert_eq!(view["review"], json!(["address_shared"]));
    assert_eq!(view["history"][0]["status"], "held");
    assert!(api.order("a1").await.get("review").is_none());
    // A retry of a held order is the same order, still held.
    let retry = api.post_order(&a).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    assert_eq!(retry.json["status"], "held");
    // The journal says it was held, and with what.
    let journal = api.get("/v1/journal?from=0&limit=1000").await;
    let held_line = journal
        .text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|record| record["order_id"] == "a3")
        .expect("a3 is journaled");
    assert_eq!(held_line["type"], "accepted");
    assert_eq!(held_line["status"], "held");
    assert_eq!(held_line["review"], json!(["address_shared"]));
    assert!(journal.text.contains("\"type\":\"review_rules\""));

    // Rules off: nothing is held or denied any more.
    let reply = put_rules(&api, &json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        placed(&api, &plain("d2", "bad", 3)).await.0,
        "pending_payment"
    );
    // A rule set past its bounds is refused and changes nothing.
    let too_many: Vec<String> = (0..25).map(|n| format!("u{n}")).collect();
    put_rules(&api, &json!({"deny_users": too_many}))
        .await
        .assert_error(422, "invalid");
    put_rules(&api, &json!({"qty_at_least": "many"}))
        .await
        .assert_error(400, "bad_request");
    assert_eq!(
        admin_get(&api, "/v1/review/rules").await.json["qty_at_least"],
        0
    );
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_client_is_held_past_its_orders_per_minute_and_the_page_lists_held_orders() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("RV-2", &json!({"stock": 50})).await;
    let reply = put_rules(&api, &json!({"client_orders_per_min": 2})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // Two orders in the minute pass; from the third on this client's orders are held.
    for n in 0..2 {
        let body = order(&format!("k{n}"), &format!("u{n}"), "RV-2", 1, "prepaid");
        assert_eq!(placed(&api, &body).await.0, "pending_payment");
    }
    for n in 2..5 {
        let body = order(&format!("k{n}"), &format!("u{n}"), "RV-2", 1, "escrow");
        assert_eq!(
            placed(&api, &body).await,
            ("held".into(), vec!["client_burst".into()])
        );
    }
    // The reviewers' page: oldest first, in pages, with a cursor.
    api.get("/v1/reviews")
        .await
        .assert_error(401, "unauthorized");
    let first = admin_get(&api, "/v1/reviews?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let ids = |page: &Value| -> Vec<String> {
        page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&first.json), ["k2", "k3"]);
    assert_eq!(first.json["next_after"], "k3");
    assert_eq!(first.json["orders"][0]["review"], json!(["client_burst"]));
    assert_eq!(first.json["orders"][0]["status"], "held");
    let rest = admin_get(&api, "/v1/reviews?after=k3&limit=2").await;
    assert_eq!(ids(&rest.json), ["k4"]);
    assert_eq!(rest.json["next_after"], Value::Null);
    // Approved and rejected orders leave the page.
    admin_action(&api, "k2", "approve", None).await;
    admin_action(&api, "k3", "reject", None).await;
    let all = admin_get(&api, "/v1/reviews").await;
    assert_eq!(ids(&all.json), ["k4"]);
    admin_get(&api, "/v1/reviews?after=nope")
        .await
        .assert_error(404, "unknown_order");
    admin_get(&api, "/v1/reviews?limit=0")
        .await
        .assert_error(422, "invalid");
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn approve_and_reject_from_every_state_they_meet() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("RV-3", &json!({"stock": 20, "per_user_limit": 0}))
        .await;
    let reply = put_rules(&api, &json!({"review_users": ["r"]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let held = |id: &str, payment: &str| order(id, "r", "RV-3", 2, payment);
    for (id, payment) in [
        ("p", "prepaid"),
        ("e", "escrow"),
        ("c", "cod"),
        ("x", "cod"),
    ] {
        assert_eq!(placed(&api, &held(id, payment)).await.0, "held");
    }
    assert_eq!(sku(&api, "RV-3").await["reserved"], 8);
    // Only an operator reviews; a buyer cannot cancel or pay a held order.
    api.post_action("p", "approve", None)
        .await
        .assert_error(401, "unauthorized");
    api.post_action("p", "pay", None)
        .await
        .assert_error(409, "invalid_transition");
    api.post_action("p", "cancel", None)
        .await
        .assert_error(409, "invalid_transition");
    // Approve: prepaid and escrow to pending_payment (still reserved), cod to confirmed (sold).
    let approved = admin_action(&api, "p", "approve", None).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    assert_eq!(approved.json["status"], "pending_payment");
    assert_eq!(
        admin_action(&api, "e", "approve", None).await.json["status"],
        "pending_payment"
    );
    let cod = admin_action(&api, "c", "approve", None).await;
    assert_eq!(cod.json["status"], "confirmed", "{}", cod.text);
    let figures = sku(&api, "RV-3").await;
    assert_eq!(
        (figures["reserved"].clone(), figures["sold"].clone()),
        (json!(6), json!(2))
    );
    // Reject: units back to available, with the reviewer's reason in the history.
    let rejected = admin_action(&api, "x", "reject", Some(&json!({"reason": "ring"}))).await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    assert_eq!(rejected.json["status"], "rejected");
    let last = rejected.json["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["event"].clone(), last["reason"].clone()),
        (json!("reject"), json!("ring"))
    );
    let figures = sku(&api, "RV-3").await;
    assert_eq!(figures["available"], 20 - 6, "{figures}");
    // From every other state they meet, both are refused and nothing moves; the order's
    // latest action asked again is a retry (200, the order as it is).
    api.act("p", "pay", None).await;
    let figures = sku(&api, "RV-3").await;
    let states = [
        ("p", "paid"),
        ("e", "pending_payment"),
        ("c", "confirmed"),
        ("x", "rejected"),
    ];
    for (id, state) in states {
        for action in ["approve", "reject"] {
            let reply = admin_action(&api, id, action, None).await;
            let retry = matches!((id, action), ("e" | "c", "approve") | ("x", "reject"));
            if retry {
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
                assert_eq!(reply.json["status"], state);
                continue;
            }
            reply.assert_error(409, "invalid_transition");
            let detail = reply.json["detail"].as_str().unwrap();
            assert!(detail.contains(state), "{}", reply.text);
        }
    }
    assert_eq!(sku(&api, "RV-3").await, figures);
    admin_action(&api, "nobody", "approve", None)
        .await
        .assert_error(404, "unknown_order");
    // A rejected order is final: no buyer action moves it.
    api.post_action("x", "modify", Some(&json!({"address": {"line": "1"}})))
        .await
        .assert_error(409, "invalid_transition");
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn held_orders_and_rules_survive_sigkill_and_a_restart_from_a_checkpoint() {
    let opts = Opts {
        env: vec![
            ("STAMPEDE_JOURNAL_RETAIN_S".into(), "1".into()),
            ("STAMPEDE_JOURNAL_RETENTION_CHECK_S".into(), "1".into()),
            ("STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX".into(), "65536".into()),
        ],
        ..Opts::default().fsync("none")
    };
    let mut server = Server::start(opts).await;
    let api = Api::of(&server);
    api.put_sku_ok("RV-4", &json!({"stock": 5000, "max_per_order": 10}))
        .await;
    // Records before the held orders, so that a segment retention may delete lies before them.
    for n in 0..FILLER_BEFORE {
        api.place(&order(&format!("f{n}"), &format!("f{n}"), "RV-4", 1, "cod"))
            .await;
    }
    let reply = put_rules(&api, &json!({"qty_at_least": 5, "deny_users": ["bad"]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    for (id, payment) in [("h1", "prepaid"), ("h2", "cod")] {
        let body = order(id, &format!("user-{id}"), "RV-4", 5, payment);
        assert_eq!(placed(&api, &body).await.0, "held");
    }
    // More records after them, and wait for retention's checkpoint.
    for n in FILLER_BEFORE..FILLER_BEFORE + FILLER_AFTER {
        api.place(&order(&format!("f{n}"), &format!("f{n}"), "RV-4", 1, "cod"))
            .await;
    }
    let checkpoints = server.data_dir().join("checkpoints");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&checkpoints).map_or(0, |dir| dir.count()) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint was taken");
        tokio::time::sleep(POLL).await;
    }
    let before = sku(&api, "RV-4").await;

    server.kill9();
    server.restart().await;
    let api = Api::of(&server);
    assert!(
        server.all_output().contains("starting from a checkpoint"),
        "the restart did not use the checkpoint"
    );
    assert_eq!(sku(&api, "RV-4").await, before);
    let rules = admin_get(&api, "/v1/review/rules").await.json;
    assert_eq!(
        (rules["qty_at_least"].clone(), rules["deny_users"].clone()),
        (json!(5), json!(["bad"]))
    );
    api.post_order(&order("d1", "bad", "RV-4", 1, "cod"))
        .await
        .assert_error(403, "denied");
    let page = admin_get(&api, "/v1/reviews").await.json;
    let ids: Vec<&str> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h1", "h2"], "{page}");
    assert_eq!(api.order("h1").await["review"], json!(["large_qty"]));
    // Reviewing goes on after the restart, and the cod order still approves to confirmed.
    assert_eq!(
        admin_action(&api, "h2", "approve", None).await.json["status"],
        "confirmed"
    );
    assert_eq!(
        admin_action(&api, "h1", "reject", None).await.json["status"],
        "rejected"
    );
    let after = sku(&api, "RV-4").await;
    assert_eq!(after["reserved"], 0, "{after}");
    assert_eq!(after["sold"], FILLER_BEFORE + FILLER_AFTER + 5, "{after}");
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn an_order_nobody_reviews_is_rejected_at_the_timeout_also_after_a_restart() {
    let opts = Opts {
        env: vec![("STAMPEDE_REVIEW_TIMEOUT_S".into(), "2".into())],
        ..Opts::default()
    };
    let mut server = Server::start(opts).await;
    let api = Api::of(&server);
    api.put_sku_ok("RV-5", &json!({"stock": 10})).await;
    let reply = put_rules(&api, &json!({"review_users": ["slow"]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    for id in ["t1", "t2"] {
        assert_eq!(
            placed(&api, &order(id, "slow", "RV-5", 1, "prepaid"))
                .await
                .0,
            "held"
        );
    }
    // One is approved in time: its payment clock starts then, and the review timer of it
    // does nothing. The other restarts with the engine and times out.
    admin_action(&api, "t1", "approve", None).await;
    server.kill9();
    server.restart().await;
    let api = Api::of(&server);
    let deadline = Instant::now() + Duration::from_secs(15);
    let view = loop {
        let view = api.order("t2").await;
        if view["status"] == "rejected" {
            break view;
        }
        assert!(Instant::now() < deadline, "not rejected: {view}");
        tokio::time::sleep(POLL).await;
    };
    let last = view["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "reject");
    assert_eq!(last["reason"], "review_timeout");
    assert_eq!(api.order("t1").await["status"], "pending_payment");
    let figures = sku(&api, "RV-5").await;
    assert_eq!(
        (figures["available"].clone(), figures["reserved"].clone()),
        (json!(9), json!(1))
    );
    assert!(server.terminate().await.success());
}

/// `POST /v1/orders` with an `X-Forwarded-For` header.
async fn post_forwarded(api: &Api, body: &Value, forwarded_for: &str) -> Reply {
    let request = api
        .client
        .post(api.url("/v1/orders"))
        .header("x-forwarded-for", forwarded_for)
        .json(body);
    api.send(request).await
}

/// Places `count` orders with the same forwarded-for address; the statuses answered.
async fn burst(api: &Api, prefix: &str, forwarded_for: &str, count: usize) -> Vec<String> {
    let mut statuses = Vec::new();
    for n in 0..count {
        let body = order(
            &format!("{prefix}{n}"),
            &format!("{prefix}{n}"),
            "RV-6",
            1,
            "cod",
        );
        let reply = post_forwarded(api, &body, forwarded_for).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        statuses.push(reply.json["status"].as_str().unwrap().to_owned());
    }
    statuses
}

async fn forwarded_server(trusted: &str) -> Server {
    let config = format!("[http]\ntrusted_proxies = [{trusted}]\n");
    let server = Server::start(Opts {
        config_toml: Some(config),
        ..Opts::default()
    })
    .await;
    let api = Api::of(&server);
    api.put_sku_ok("RV-6", &json!({"stock": 100})).await;
    let reply = put_rules(&api, &json!({"client_orders_per_min": 2})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    server
}

#[tokio::test]
async fn a_forwarded_for_header_names_the_client_only_from_a_trusted_proxy() {
    // Loopback is the trusted load balancer: each forwarded buyer is its own client.
    let mut server = forwarded_server(r#""127.0.0.1", "::1""#).await;
    let api = Api::of(&server);
    assert_eq!(burst(&api, "a", "198.51.100.1", 2).await, ["confirmed"; 2]);
    assert_eq!(burst(&api, "b", "198.51.100.2", 2).await, ["confirmed"; 2]);
    // A client's own header in front of the chain does not make it someone else.
    let spoofed = burst(&api, "c", "203.0.113.9, 198.51.100.1", 1).await;
    assert_eq!(spoofed, ["held"]);
    assert!(server.terminate().await.success());

    // The same requests from a peer that is not a trusted proxy: the header is ignored, and
    // every order is the one loopback client's.
    let mut server = forwarded_server(r#""10.99.0.0/16""#).await;
    let api = Api::of(&server);
    assert_eq!(burst(&api, "a", "198.51.100.1", 2).await, ["confirmed"; 2]);
    assert_eq!(burst(&api, "b", "198.51.100.2", 2).await, ["held"; 2]);
    assert!(server.terminate().await.success());
}
