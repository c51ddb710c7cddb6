//! The event console's HTTP surface, black-box against the real binary: `GET /console`,
//! `GET /v1/events` (Server-Sent Events) and pause/resume of a SKU
//! (`POST /v1/skus/{sku}/pause`, `/resume`, new orders 409 `paused`). The page itself, in a
//! real browser, is tested in `console_browser.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Opts, Server, order};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Bound on reading the events a test waits for.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(15);

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

async fn pause(server: &Server, sku: &str, verb: &str, token: &str) -> common::Reply {
    server
        .send(
            server
                .client()
                .post(server.url(&format!("/v1/skus/{sku}/{verb}")))
                .header("authorization", format!("Bearer {token}")),
        )
        .await
}

/// An open `GET /v1/events` stream and the bytes read from it so far.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(server: &Server) -> Events {
        let response = common::new_client()
            .get(server.url("/v1/events"))
            .header("authorization", bearer())
            .send()
            .await
            .expect("events stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's `data` as JSON; `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        let deadline = Instant::now() + EVENTS_TIMEOUT;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|line| line.strip_prefix("data: ")) {
                    return Some(serde_json::from_str(data).expect("event data is JSON"));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .expect("an event within the timeout")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }
}

fn sku_of<'a>(snapshot: &'a Value, sku: &str) -> Option<&'a Value> {
    snapshot["skus"]
        .as_array()
        .expect("skus is an array")
        .iter()
        .find(|entry| entry["sku"] == sku)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sku_refuses_new_orders_taking_nothing_and_a_restart_keeps_it() {
    let mut server = Server::start(Opts::default()).await;
    server.create_sku("PAUSE-1", 10, 0, 5).await;
    let before = server
        .place(&order("p-before", "u1", "PAUSE-1", 1, "prepaid"))
        .await;

    // A wrong token changes nothing.
    pause(&server, "PAUSE-1", "pause", "not-the-token")
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(server.sku("PAUSE-1").await["paused"], false);
    pause(&server, "NO-SUCH", "pause", ADMIN_TOKEN)
        .await
        .assert_error(404, "unknown_sku");

    let paused = pause(&server, "PAUSE-1", "pause", ADMIN_TOKEN).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    assert_eq!(paused.json["paused"], true);
    assert_eq!(paused.json["available"], 9);

    server
        .post_order(&order("p-new", "u2", "PAUSE-1", 1, "cod"))
        .await
        .assert_error(409, "paused");
    let view = server.sku("PAUSE-1").await;
    assert_eq!(
        (view["available"].as_u64(), view["paused"].as_bool()),
        (Some(9), Some(true))
    );
    // A retry of an accepted order is still its original answer, and actions go on.
    let retry = server
        .post_order(&order("p-before", "u1", "PAUSE-1", 1, "prepaid"))
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    assert_eq!(retry.json["seq"], before["seq"]);
    server.act("p-before", "pay", None).await;

    let journal = server.journal().await;
    let pause_record = journal
        .iter()
        .find(|record| record["type"] == "pause")
        .expect("the pause is journaled");
    assert_eq!(pause_record["sku"], "PAUSE-1");
    assert_eq!(pause_record["paused"], true);
    assert!(pause_record["order_id"].is_null());

    // The journal brings the pause back after a restart.
    assert!(server.terminate().await.success());
    server.restart().await;
    assert_eq!(server.sku("PAUSE-1").await["paused"], true);
    server
        .post_order(&order("p-new", "u2", "PAUSE-1", 1, "cod"))
        .await
        .assert_error(409, "paused");

    let resumed = pause(&server, "PAUSE-1", "resume", ADMIN_TOKEN).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    assert_eq!(resumed.json["paused"], false);
    server
        .place(&order("p-new", "u2", "PAUSE-1", 1, "cod"))
        .await;
    assert_eq!(server.sku("PAUSE-1").await["sold"], 2);
    let types: Vec<Value> = server
        .journal()
        .await
        .into_iter()
        .filter(|record| record["sku"] == "PAUSE-1" && record["order_id"].is_null())
        .map(|record| record["type"].clone())
        .collect();
    assert_eq!(types, vec![json!("sku"), json!("pause"), json!("resume")]);
    let other = server
        .send(server.client().get(server.url("/v1/skus/PAUSE-1/pause")))
        .await;
    assert_eq!(other.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_carries_moving_figures_and_ends_when_the_server_drains() {
    let mut server = Server::start(Opts::default()).await;
    server.create_sku("EV-1", 100, 0, 5).await;

    // The page is served without a token; the stream needs the admin token.
    let page = server.get("/console").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text.contains("sessionStorage"));
    let anonymous = server.get("/v1/events").await;
    anonymous.assert_error(401, "unauthorized");

    let mut events = Events::open(&server).await;
    let first = events.next().await.expect("a first snapshot");
    assert_eq!(first["status"], "ready");
    for field in [
        "created",
        "replayed",
        "sold_out",
        "purchase_limit",
        "shed",
        "errors",
    ] {
        assert!(first["orders"][field].is_u64(), "orders.{field} in {first}");
    }
    let created_before = first["orders"]["created"].as_u64().unwrap();
    assert_eq!(
        sku_of(&first, "EV-1").expect("EV-1 listed")["available"],
        100
    );

    for index in 0..3 {
        server
            .place(&order(
                &format!("ev-{index}"),
                &format!("u{index}"),
                "EV-1",
                2,
                "prepaid",
            ))
            .await;
    }
    server
        .post_order(&order("ev-big", "u9", "EV-1", 1000, "prepaid"))
        .await
        .assert_error(422, "invalid");
    // Every order is counted by the time its answer is sent, so a later snapshot has them.
    let mut seen = None;
    for _ in 0..10 {
        let snapshot = events.next().await.expect("more snapshots");
        let ev = sku_of(&snapshot, "EV-1").expect("EV-1 listed").clone();
        if snapshot["orders"]["created"].as_u64().unwrap() >= created_before + 3
            && ev["reserved"] == 6
        {
            seen = Some((snapshot, ev));
            break;
        }
    }
    let (snapshot, ev) = seen.expect("a snapshot with the three orders");
    assert_eq!(ev["available"], 94);
    assert!(
        snapshot["orders"]["errors"].as_u64().unwrap() >= 1,
        "{snapshot}"
    );
    assert!(ev["rate_per_s"].as_f64().unwrap() > 0.0, "EV-1 sells: {ev}");

    // Draining ends the stream (the server then exits 0).
    server.send_sigterm();
    let mut ended = false;
    for _ in 0..40 {
        if events.next().await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the event stream ends on drain");
    let status = server
        .wait_exit(common::TERMINATE_TIMEOUT)
        .await
        .expect("the server exits after the drain");
    assert!(status.success(), "{status:?}");
}
