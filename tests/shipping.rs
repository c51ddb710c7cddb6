//! Black-box tests of shipping details and auto-completion (`shared/spec/http-api.md`, "Order
//! review (审单) and shipping details"): the parcel of `ship`, `reship` and `exchange` in
//! `GET /v1/orders/{id}` and the journal, its validation, and a delivered order completed by
//! the engine after `orders.auto_complete_s`, also across SIGKILL and a restart. The real
//! binary on loopback; every wait is a poll with a deadline.

mod common;

use std::time::{Duration, Instant};

use common::{Api, Opts, Server, order};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TO_WEIGHED: [&str; 6] = ["verify", "print", "pick", "check", "pack", "weigh"];

async fn to_weighed(api: &Api, id: &str, sku: &str) {
    api.place(&order(id, &format!("user-{id}"), sku, 1, "cod"))
        .await;
    for action in TO_WEIGHED {
        api.act(id, action, None).await;
    }
}

fn parcel(carrier: &str, tracking_no: &str) -> Value {
    json!({ "carrier": carrier, "tracking_no": tracking_no })
}

#[tokio::test]
async fn the_latest_parcel_of_ship_reship_and_exchange_is_shown_and_journaled() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("SH-1", &json!({"stock": 10})).await;
    api.put_sku_ok("SH-2", &json!({"stock": 10})).await;
    to_weighed(&api, "s1", "SH-1").await;
    // A parcel must name both, each 1..=64 bytes; a bad one changes nothing.
    for body in [
        json!({"carrier": "post"}),
        json!({"tracking_no": "T1"}),
        parcel("", "T1"),
        parcel("post", &"9".repeat(65)),
    ] {
        let reply = api.post_action("s1", "ship", Some(&body)).await;
        reply.assert_error(422, "invalid");
    }
    assert_eq!(api.order("s1").await["status"], "weighed");
    let shipped = api.act("s1", "ship", Some(&parcel("post", "T1"))).await;
    let shipment = &shipped["shipment"];
    assert_eq!(
        (shipment["carrier"].clone(), shipment["tracking_no"].clone()),
        (json!("post"), json!("T1"))
    );
    assert!(shipment["at"].is_string(), "{shipped}");
    api.act("s1", "deliver", None).await;
    // A new parcel replaces it as the latest; one without a parcel leaves it as it was.
    let reshipped = api
        .act("s1", "reship", Some(&parcel("fast", &"7".repeat(64))))
        .await;
    assert_eq!(reshipped["shipment"]["carrier"], "fast");
    assert_eq!(reshipped["status"], "shipped");
    api.act("s1", "deliver", None).await;
    let bare = api.act("s1", "reship", None).await;
    assert_eq!(bare["shipment"]["carrier"], "fast");
    api.act("s1", "deliver", None).await;
    let mut exchange = parcel("swap", "X9");
    exchange["sku"] = json!("SH-2");
    let exchanged = api.act("s1", "exchange", Some(&exchange)).await;
    assert_eq!(exchanged["shipment"]["tracking_no"], "X9");
    assert_eq!(api.order("s1").await["shipment"]["carrier"], "swap");
    // Never shipped: no shipment.
    api.place(&order("s2", "u2", "SH-1", 1, "cod")).await;
    assert!(api.order("s2").await.get("shipment").is_none());
    // A keyed retry with another parcel is another body.
    to_weighed(&api, "s3", "SH-1").await;
    let first = api
        .post_action_keyed("s3", "ship", b"ship-s3", Some(&parcel("post", "A")))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let again = api
        .post_action_keyed("s3", "ship", b"ship-s3", Some(&parcel("post", "A")))
        .await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    api.post_action_keyed("s3", "ship", b"ship-s3", Some(&parcel("post", "B")))
        .await
        .assert_error(422, "idempotency_conflict");
    // The journal carries each parcel with its action.
    let journal = api.get("/v1/journal?from=0&limit=1000").await;
    let records: Vec<Value> = journal
        .text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|record: &Value| record["order_id"] == "s1" && record.get("carrier").is_some())
        .collect();
    let kinds: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["type"].as_str().unwrap(), r["carrier"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("ship", "post"), ("reship", "fast"), ("exchange", "swap")]
    );
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_delivered_order_completes_itself_after_the_timeout_also_across_a_restart() {
    let opts = Opts {
        env: vec![("STAMPEDE_ORDERS_AUTO_COMPLETE_S".into(), "2".into())],
        ..Opts::default()
    };
    let mut server = Server::start(opts).await;
    let api = Api::of(&server);
    api.put_sku_ok("AC-1", &json!({"stock": 10})).await;
    for id in ["auto", "buyer"] {
        to_weighed(&api, id, "AC-1").await;
        api.act(id, "ship", None).await;
        api.act(id, "deliver", None).await;
    }
    // The buyer completes one in time; the engine must not complete it again.
    api.act("buyer", "complete", None).await;
    server.kill9();
    server.restart().await;
    let api = Api::of(&server);
    let deadline = Instant::now() + Duration::from_secs(15);
    let view = loop {
        let view = api.order("auto").await;
        if view["status"] == "completed" {
            break view;
        }
        assert!(Instant::now() < deadline, "not completed: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = view["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["event"].clone(), last["reason"].clone()),
        (json!("complete"), json!("auto"))
    );
    let buyer = api.order("buyer").await;
    let completes = buyer["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|record| record["event"] == "complete")
        .count();
    assert_eq!(completes, 1, "{buyer}");
    assert!(
        buyer["history"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .get("reason")
            .is_none()
    );
    // A completed order can still be reshipped; its second delivery waits its own time.
    let reply = api.post_action("auto", "reship", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_restocked_exchange_puts_the_returned_unit_on_sale_once() {
    let mut server = Server::start(Opts::default()).await;
    let api = Api::of(&server);
    api.put_sku_ok("EX-A", &json!({"stock": 10, "per_user_limit": 2}))
        .await;
    api.put_sku_ok("EX-B", &json!({"stock": 10})).await;
    let figures = |view: Value| {
        (
            view["available"].as_u64().unwrap(),
            view["reserved"].as_u64().unwrap(),
            view["sold"].as_u64().unwrap(),
        )
    };
    let sku = |name: &'static str| {
        let api = api.clone();
        async move { figures(api.get(&format!("/v1/skus/{name}")).await.json) }
    };
    api.place(&order("e1", "buyer", "EX-A", 2, "cod")).await;
    for action in TO_WEIGHED.into_iter().chain(["ship"]) {
        api.act("e1", action, None).await;
    }
    // Without restock the unit sent back stays sold, as before.
    api.act("e1", "exchange", Some(&json!({"sku": "EX-B"})))
        .await;
    assert_eq!(sku("EX-A").await, (8, 0, 2));
    // With restock it is on sale again, and off the buyer's purchase count.
    let body = json!({"sku": "EX-B", "restock": true});
    let view = api.act("e1", "exchange", Some(&body)).await;
    let last = view["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["restock"], true, "{view}");
    assert_eq!(sku("EX-A").await, (9, 0, 1));
    assert_eq!(sku("EX-B").await, (8, 0, 2));
    api.place(&order("e2", "buyer", "EX-A", 1, "cod")).await;
    api.act("e2", "cancel", None).await;
    // A restocked return then gives back the one unit the order still holds, not two.
    api.act("e1", "deliver", None).await;
    api.act("e1", "return", Some(&json!({"restock": true})))
        .await;
    assert_eq!(sku("EX-A").await, (10, 0, 0));
    // The same after a restart: replay agrees.
    server.kill9();
    server.restart().await;
    let api = Api::of(&server);
    assert_eq!(figures(api.get("/v1/skus/EX-A").await.json), (10, 0, 0));
    assert_eq!(figures(api.get("/v1/skus/EX-B").await.json), (8, 0, 2));
    assert!(server.terminate().await.success());
}
