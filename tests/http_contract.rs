//! Black-box tests of the HTTP contract (`shared/spec/http-api.md`): the real binary on
//! loopback, real HTTP, one data directory per test.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Opts, Server, new_client, order, post_order_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stampede_of_buyers_sells_exactly_the_stock() {
    const STOCK: u64 = 50;
    const BUYERS: usize = 32;
    const ORDERS_PER_BUYER: usize = 19; // 608 orders for 50 units
    let server = Server::start(Opts::default()).await;
    server.create_sku("DROP-1", STOCK, 0, 1).await;

    let mut tasks = Vec::new();
    for buyer in 0..BUYERS {
        let base_url = server.base_url.clone();
        tasks.push(tokio::spawn(async move {
            // Each buyer has its own client, so its own connections.
            let client = new_client();
            let mut replies = Vec::new();
            for n in 0..ORDERS_PER_BUYER {
                let id = format!("b{buyer}-o{n}");
                let body = order(&id, &format!("user-{buyer}-{n}"), "DROP-1", 1, "prepaid");
                let reply = post_order_with(&client, &base_url, &body)
                    .await
                    .unwrap_or_else(|e| panic!("order {id}: {e}"));
                replies.push((id, reply));
            }
            replies
        }));
    }
    let mut accepted: HashMap<String, u64> = HashMap::new();
    let mut sold_out = 0;
    for task in tasks {
        for (id, reply) in task.await.expect("buyer task") {
            match reply.status {
                StatusCode::CREATED => {
                    assert_eq!(reply.json["order_id"], id.as_str(), "{}", reply.text);
                    assert_eq!(reply.json["status"], "pending_payment", "{}", reply.text);
                    let seq = reply.json["seq"].as_u64().expect("seq");
                    accepted.insert(id, seq);
                }
                StatusCode::CONFLICT => {
                    reply.assert_error(409, "sold_out");
                    sold_out += 1;
                }
                other => panic!("order {id}: unexpected {other}: {}", reply.text),
            }
        }
    }
    assert_eq!(accepted.len() as u64, STOCK, "exactly the stock is sold");
    assert_eq!(sold_out, BUYERS * ORDERS_PER_BUYER - STOCK as usize);
    let distinct_seqs: HashSet<u64> = accepted.values().copied().collect();
    assert_eq!(
        distinct_seqs.len(),
        accepted.len(),
        "every 201 has its own seq"
    );

    let view = server.sku("DROP-1").await;
    assert_eq!(view["available"], 0, "{view}");
    assert_eq!(view["reserved"], STOCK, "{view}");
    assert_eq!(view["sold"], 0, "{view}");
    assert_eq!(view["stock_total"], STOCK, "{view}");

    // The list shows the same numbers.
    let list = server.get("/v1/skus").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let listed = list.json["skus"]
        .as_array()
        .expect("skus array")
        .iter()
        .find(|sku| sku["sku"] == "DROP-1")
        .cloned()
        .expect("DROP-1 listed");
    for field in ["stock_total", "available", "reserved", "sold"] {
        assert_eq!(listed[field], view[field], "{field}: {listed} vs {view}");
    }

    // The list pages by name: every SKU exactly once, in order, then an empty page.
    let mut names = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let page = server.get(&format!("/v1/skus?limit=2&after={after}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let skus = page.json["skus"].as_array().expect("skus array").clone();
        assert!(skus.len() <= 2, "{}", page.text);
        names.extend(
            skus.iter()
                .map(|sku| sku["sku"].as_str().unwrap().to_string()),
        );
        match page.json["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    let all: Vec<String> = list.json["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sku| sku["sku"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, all, "paged names equal the full list, in order");
    assert!(names.windows(2).all(|pair| pair[0] < pair[1]));

    // The journal: strictly increasing seqs, exactly the 50 accepted orders, with the seqs
    // their 201s announced.
    let journal = server.journal().await;
    let seqs: Vec<u64> = journal.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "seqs strictly increase: {seqs:?}"
    );
    let orders: Vec<&Value> = journal
        .iter()
        .filter(|r| r["type"] == "accepted" && r["sku"] == "DROP-1")
        .collect();
    assert_eq!(orders.len() as u64, STOCK, "accepted records for DROP-1");
    let journaled: HashMap<String, u64> = orders
        .iter()
        .map(|r| {
            (
                r["order_id"].as_str().unwrap().to_string(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(journaled.len() as u64, STOCK, "distinct order ids");
    assert_eq!(
        journaled, accepted,
        "journal = the 201 answers, seq for seq"
    );
    for record in orders {
        assert_eq!(record["qty"], 1);
        assert_eq!(record["payment"], "prepaid");
        assert!(record["at"].is_string(), "{record}");
        assert!(record["user_id"].is_string(), "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_order_is_replayed_not_sold_twice() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("REPLAY-1", 2, 0, 2).await;

    let original = order("r-1", "alice", "REPLAY-1", 1, "prepaid");
    let first = server.post_order(&original).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    let seq = first.json["seq"].as_u64().expect("seq");
    assert_eq!(
        first.json,
        json!({"order_id": "r-1", "status": "pending_payment", "seq": seq})
    );

    let again = server.post_order(&original).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json, first.json, "a replay answers the original body");
    let view = server.sku("REPLAY-1").await;
    assert_eq!(
        (view["available"].as_u64(), view["reserved"].as_u64()),
        (Some(1), Some(1))
    );

    // Unknown fields do not change the content: still a replay.
    let mut with_extra = original.clone();
    with_extra["coupon"] = json!("SPRING");
    let extra = server.post_order(&with_extra).await;
    assert_eq!(extra.status, StatusCode::OK, "{}", extra.text);
    assert_eq!(extra.json, first.json);

    // The same id with different content is a conflict, whatever differs.
    for changed in [
        order("r-1", "alice", "REPLAY-1", 2, "prepaid"),
        order("r-1", "bob", "REPLAY-1", 1, "prepaid"),
        order("r-1", "alice", "REPLAY-1", 1, "cod"),
    ] {
        let reply = server.post_order(&changed).await;
        reply.assert_error(422, "idempotency_conflict");
    }
    let view = server.sku("REPLAY-1").await;
    assert_eq!(view["available"], 1, "conflicts took nothing: {view}");

    // An order id is unique across SKUs (and shards).
    server.create_sku("REPLAY-2", 5, 0, 2).await;
    server
        .post_order(&order("r-1", "alice", "REPLAY-2", 1, "prepaid"))
        .await
        .assert_error(422, "idempotency_conflict");
    assert_eq!(server.sku("REPLAY-2").await["available"], 5);

    // Sell the last unit; the SKU is sold out.
    let last = server
        .post_order(&order("r-2", "carol", "REPLAY-1", 1, "prepaid"))
        .await;
    assert_eq!(last.status, StatusCode::CREATED, "{}", last.text);
    server
        .post_order(&order("r-3", "dave", "REPLAY-1", 1, "prepaid"))
        .await
        .assert_error(409, "sold_out");

    // The sold-out fast path must not hide a replay, nor a conflict.
    let replay = server.post_order(&original).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json, first.json);
    let replay_last = server
        .post_order(&order("r-2", "carol", "REPLAY-1", 1, "prepaid"))
        .await;
    assert_eq!(replay_last.status, StatusCode::OK, "{}", replay_last.text);
    assert_eq!(replay_last.json, last.json);
    server
        .post_order(&order("r-1", "alice", "REPLAY-1", 2, "prepaid"))
        .await
        .assert_error(422, "idempotency_conflict");

    let view = server.sku("REPLAY-1").await;
    assert_eq!(
        (
            view["available"].as_u64(),
            view["reserved"].as_u64(),
            view["sold"].as_u64()
        ),
        (Some(0), Some(2), Some(0)),
        "{view}"
    );
    let orders = server.accepted_orders().await;
    assert_eq!(orders.len(), 2, "journal holds each order once: {orders:?}");
    assert_eq!(orders["r-1"]["seq"], seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_of_one_order_take_stock_once() {
    const RETRIES: usize = 12;
    let server = Server::start(Opts::default()).await;
    server.create_sku("RETRY-1", 100, 0, 5).await;
    let body = order("retry-me", "erin", "RETRY-1", 3, "escrow");
    let mut tasks = Vec::new();
    for _ in 0..RETRIES {
        let (base_url, body) = (server.base_url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_order_with(&new_client(), &base_url, &body)
                .await
                .expect("retry answered")
        }));
    }
    let mut created = 0;
    let mut bodies = HashSet::new();
    for task in tasks {
        let reply = task.await.expect("task");
        match reply.status {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => assert_eq!(reply.header("idempotent-replayed"), Some("true")),
            other => panic!("unexpected {other}: {}", reply.text),
        }
        bodies.insert(reply.json.to_string());
    }
    assert_eq!(created, 1, "exactly one retry creates the order");
    assert_eq!(
        bodies.len(),
        1,
        "all answers carry the same body: {bodies:?}"
    );
    let view = server.sku("RETRY-1").await;
    assert_eq!(view["reserved"], 3, "{view}");
    assert_eq!(view["available"], 97, "{view}");
    assert_eq!(server.accepted_orders().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_order_gets_the_contract_error() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("BAD-1", 100, 0, 2).await;
    let ok = |id: &str| order(id, "u1", "BAD-1", 1, "prepaid");

    // 400 bad_request: not JSON, wrong types, missing fields.
    let not_json: &[&[u8]] = &[
        b"",
        b"not json",
        b"{\"order_id\": \"x\"",
        b"\xff\xfe",
        b"null",
        b"42",
        b"\"a string\"",
    ];
    for body in not_json {
        server
            .post_order_raw(body.to_vec())
            .await
            .assert_error(400, "bad_request");
    }
    let wrong: Vec<Value> = vec![
        json!({"order_id": "w1", "user_id": "u1", "sku": "BAD-1", "qty": "1"}),
        json!({"order_id": "w2", "user_id": "u1", "sku": "BAD-1", "qty": 1.5}),
        json!({"order_id": "w3", "user_id": "u1", "sku": "BAD-1", "qty": true}),
        json!({"order_id": "w4", "user_id": "u1", "sku": "BAD-1", "qty": null}),
        json!({"order_id": 4, "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "w6", "user_id": ["u1"], "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "w7", "user_id": "u1", "sku": {"id": "BAD-1"}, "qty": 1}),
        json!({"order_id": "w8", "user_id": "u1", "sku": "BAD-1", "qty": 1, "payment": 3}),
        json!({"order_id": "w9", "user_id": "u1", "sku": "BAD-1", "qty": 1, "address": "Main St 1"}),
        json!({"order_id": "w10", "user_id": "u1", "sku": "BAD-1", "qty": 1, "address": ["Main St"]}),
        json!({"order_id": "w11", "user_id": "u1", "sku": "BAD-1", "qty": 1, "address": 7}),
        json!({"user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "m2", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "m3", "user_id": "u1", "qty": 1}),
        json!({"order_id": "m4", "user_id": "u1", "sku": "BAD-1"}),
        json!({}),
    ];
    for body in &wrong {
        let reply = server.post_order(body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body} -> {}",
            reply.text
        );
        reply.assert_error(400, "bad_request");
    }

    // 422 invalid: well-formed but out of range.
    let long_id = "x".repeat(65);
    let long_sku = "S".repeat(33);
    let big_address = json!({"street": "y".repeat(1100)});
    let invalid: Vec<Value> = vec![
        json!({"order_id": "i1", "user_id": "u1", "sku": "BAD-1", "qty": 0}),
        json!({"order_id": "i2", "user_id": "u1", "sku": "BAD-1", "qty": -1}),
        json!({"order_id": "i3", "user_id": "u1", "sku": "BAD-1", "qty": 3}), // max_per_order 2
        json!({"order_id": "i4", "user_id": "u1", "sku": "BAD-1", "qty": 4_294_967_296u64}),
        json!({"order_id": long_id, "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "", "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "has space", "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "slash/id", "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "ünïcode", "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "i10", "user_id": "", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "i11", "user_id": "x".repeat(65), "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "i12", "user_id": "u 1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "i13", "user_id": "u1", "sku": long_sku, "qty": 1}),
        json!({"order_id": "i14", "user_id": "u1", "sku": "", "qty": 1}),
        json!({"order_id": "i15", "user_id": "u1", "sku": "BAD 1", "qty": 1}),
        json!({"order_id": "i16", "user_id": "u1", "sku": "BAD-1", "qty": 1, "payment": "card"}),
        json!({"order_id": "i17", "user_id": "u1", "sku": "BAD-1", "qty": 1, "payment": "COD"}),
        json!({"order_id": "i18", "user_id": "u1", "sku": "BAD-1", "qty": 1, "address": big_address}),
        // Ids made only of dots are path segments a proxy normalises away.
        json!({"order_id": ".", "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "..", "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "...", "user_id": "u1", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "i22", "user_id": ".", "sku": "BAD-1", "qty": 1}),
        json!({"order_id": "i23", "user_id": "..", "sku": "BAD-1", "qty": 1}),
    ];
    for body in &invalid {
        let reply = server.post_order(body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {}",
            reply.text
        );
        reply.assert_error(422, "invalid");
    }
    // Exactly at the limits is fine: 64-byte ids, 32-byte SKU name, every allowed byte.
    let edge_sku = format!("E{}", "_.:-".repeat(7)) + "Z9z";
    assert_eq!(edge_sku.len(), 32);
    server.create_sku(&edge_sku, 5, 0, 10).await;
    let edge_id = format!("A-z_0.9:{}", "q".repeat(56));
    assert_eq!(edge_id.len(), 64);
    let edge = server
        .post_order(
            &json!({"order_id": edge_id, "user_id": "u".repeat(64), "sku": edge_sku,
            "qty": 1, "address": {"line": "z".repeat(900)}}),
        )
        .await;
    assert_eq!(edge.status, StatusCode::CREATED, "{}", edge.text);

    // 404 unknown_sku.
    server
        .post_order(&order("n1", "u1", "NO-SUCH-SKU", 1, "prepaid"))
        .await
        .assert_error(404, "unknown_sku");
    server
        .get_sku("NO-SUCH-SKU")
        .await
        .assert_error(404, "unknown_sku");

    // 413 too_large: a body over 16 KiB, even a well-formed one.
    let mut huge = ok("big-1");
    huge["padding"] = json!("p".repeat(17 * 1024));
    server
        .post_order(&huge)
        .await
        .assert_error(413, "too_large");
    // Just under the cap is read (and then judged on its content).
    let mut fits = ok("fits-1");
    fits["padding"] = json!("p".repeat(15 * 1024));
    let reply = server.post_order(&fits).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);

    // Nothing above took stock except the two good orders.
    let view = server.sku("BAD-1").await;
    assert_eq!(view["reserved"], 1, "{view}");
    let orders = server.accepted_orders().await;
    assert_eq!(
        orders.len(),
        2,
        "only the good orders are journaled: {:?}",
        orders.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_is_answered_408_and_takes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(Opts {
        env: vec![(
            "STAMPEDE_HTTP_BODY_READ_TIMEOUT_MS".to_string(),
            "300".to_string(),
        )],
        ..Opts::default()
    })
    .await;
    server.create_sku("SLOW-1", 10, 0, 1).await;
    let mut stream = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    let body = order("slow-1", "u1", "SLOW-1", 1, "prepaid").to_string();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // Half the body, then silence: a slow or hostile sender.
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .expect("half a body");
    let started = std::time::Instant::now();
    let mut response = vec![0u8; 4096];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read(&mut response),
    )
    .await
    .expect("answered long before the client gives up")
    .expect("read");
    let text = String::from_utf8_lossy(&response[..read]).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(
        server.sku("SLOW-1").await["available"],
        10,
        "nothing was taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_too_large() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(Opts::default()).await;
    let mut stream = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.addr
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 4096];
    for _ in 0..5 {
        // 20 KiB in all, no Content-Length: the cap must apply while reading.
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break; // the server may answer and close before reading it all
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("response in time");
    if let Err(error) = read {
        // A reset after the answer was sent still leaves the answer in `response`.
        assert!(!response.is_empty(), "no response: {error}");
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"too_large\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_limits_stock_conflicts_and_admin_auth_follow_the_contract() {
    let server = Server::start(Opts::default()).await;

    // 401 unauthorized: no token, a wrong token, another scheme, an empty bearer.
    let body = json!({"stock": 5});
    let url = server.url("/v1/skus/AUTH-1");
    let client = server.client();
    let attempts = [
        client.put(&url).json(&body),
        client
            .put(&url)
            .bearer_auth("not-the-admin-token-at-all-000000")
            .json(&body),
        client
            .put(&url)
            .bearer_auth(&server.admin_token[..31])
            .json(&body),
        client
            .put(&url)
            .bearer_auth(format!("{}x", server.admin_token))
            .json(&body),
        client
            .put(&url)
            .basic_auth("admin", Some(&server.admin_token))
            .json(&body),
        client
            .put(&url)
            .header("authorization", "Bearer ")
            .json(&body),
        client
            .put(&url)
            .header("authorization", server.admin_token.as_str())
            .json(&body),
    ];
    for request in attempts {
        server.send(request).await.assert_error(401, "unauthorized");
    }
    server
        .get_sku("AUTH-1")
        .await
        .assert_error(404, "unknown_sku");

    // A new SKU gets the documented defaults for omitted fields.
    let created = server.put_sku("AUTH-1", &json!({"stock": 5})).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    for (field, value) in [
        ("sku", json!("AUTH-1")),
        ("stock_total", json!(5)),
        ("available", json!(5)),
        ("reserved", json!(0)),
        ("sold", json!(0)),
        ("per_user_limit", json!(0)),
        ("max_per_order", json!(10)),
    ] {
        assert_eq!(created.json[field], value, "{field} in {}", created.text);
    }
    assert_eq!(server.get_sku("AUTH-1").await.json, created.json);

    // Bad SKU updates.
    for (body, status, code) in [
        (json!({"stock": "5"}), 400, "bad_request"),
        (json!({"stock": 1.5}), 400, "bad_request"),
        (json!({"stock": -1}), 422, "invalid"),
        (json!({"max_per_order": 0}), 422, "invalid"),
    ] {
        server
            .put_sku("AUTH-1", &body)
            .await
            .assert_error(status, code);
    }
    let raw = client
        .put(&url)
        .bearer_auth(&server.admin_token)
        .body("stock=5");
    server.send(raw).await.assert_error(400, "bad_request");
    server
        .put_sku("bad!sku", &json!({"stock": 1}))
        .await
        .assert_error(422, "invalid");

    // 409 purchase_limit: per_user_limit 1, the same user's second order.
    server.create_sku("LIMIT-1", 10, 1, 1).await;
    let first = server
        .post_order(&order("l-1", "frank", "LIMIT-1", 1, "prepaid"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    server
        .post_order(&order("l-2", "frank", "LIMIT-1", 1, "cod"))
        .await
        .assert_error(409, "purchase_limit");
    let other = server
        .post_order(&order("l-3", "grace", "LIMIT-1", 1, "prepaid"))
        .await;
    assert_eq!(
        other.status,
        StatusCode::CREATED,
        "another user may buy: {}",
        other.text
    );
    let view = server.sku("LIMIT-1").await;
    assert_eq!(view["reserved"], 2, "{view}");

    // 409 stock_conflict: stock below sold + reserved; at exactly that it is fine.
    server
        .put_sku("LIMIT-1", &json!({"stock": 1}))
        .await
        .assert_error(409, "stock_conflict");
    assert_eq!(server.sku("LIMIT-1").await["stock_total"], 10);
    let shrunk = server.put_sku("LIMIT-1", &json!({"stock": 2})).await;
    assert_eq!(shrunk.status, StatusCode::OK, "{}", shrunk.text);
    assert_eq!(shrunk.json["available"], 0, "{}", shrunk.text);
    assert_eq!(
        shrunk.json["per_user_limit"], 1,
        "omitted fields keep their value"
    );
    server
        .post_order(&order("l-4", "heidi", "LIMIT-1", 1, "prepaid"))
        .await
        .assert_error(409, "sold_out");
    let grown = server.put_sku("LIMIT-1", &json!({"stock": 3})).await;
    assert_eq!(grown.json["available"], 1, "{}", grown.text);
    let after = server
        .post_order(&order("l-4", "heidi", "LIMIT-1", 1, "prepaid"))
        .await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text);

    // 404 / 405 for unknown routes and methods, in the error shape.
    for path in [
        "/nope",
        "/",
        "/v1",
        "/v1/order",
        "/v1/skus/A/B/C",
        "/v1/skus/A/B/C/D/E/F/G",
        "/v2/orders",
        "/healthz/",
    ] {
        server.get(path).await.assert_error(404, "not_found");
    }
    // Each 405 names what the resource allows (RFC 9110): a client can correct itself.
    let not_allowed = [
        (client.get(server.url("/v1/orders")), "POST"),
        (client.delete(server.url("/v1/orders")), "POST"),
        (client.put(server.url("/v1/orders")), "POST"),
        (client.post(server.url("/healthz")), "GET"),
        (client.post(server.url("/readyz")), "GET"),
        (client.delete(server.url("/v1/skus/LIMIT-1")), "GET, PUT"),
        (client.post(server.url("/v1/skus/LIMIT-1")), "GET, PUT"),
        (client.post(server.url("/v1/journal")), "GET"),
        (client.get(server.url("/v1/orders/l-1/pay")), "POST"),
        (client.get(server.url("/v1/consumers/picking")), "DELETE"),
        (
            client.delete(server.url("/v1/consumers/picking/offset")),
            "GET, PUT",
        ),
    ];
    for (request, allow) in not_allowed {
        let reply = server.send(request).await;
        reply.assert_error(405, "method_not_allowed");
        assert_eq!(reply.header("allow"), Some(allow), "{}", reply.text);
    }
    // The journal's query is checked.
    server
        .get("/v1/journal?from=abc")
        .await
        .assert_error(400, "bad_request");
    server
        .get("/v1/journal?limit=0")
        .await
        .assert_error(422, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_on_delivery_is_sold_and_prepaid_or_escrow_is_reserved() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("PAY-1", 20, 0, 5).await;
    let cases = [
        (order("p-cod", "u1", "PAY-1", 2, "cod"), "confirmed"),
        (
            order("p-pre", "u2", "PAY-1", 3, "prepaid"),
            "pending_payment",
        ),
        (
            order("p-esc", "u3", "PAY-1", 4, "escrow"),
            "pending_payment",
        ),
        (
            json!({"order_id": "p-default", "user_id": "u4", "sku": "PAY-1", "qty": 1}),
            "pending_payment",
        ),
        (order("p-cod-2", "u5", "PAY-1", 5, "cod"), "confirmed"),
    ];
    for (body, status) in &cases {
        let reply = server.post_order(body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{body}: {}", reply.text);
        assert_eq!(reply.json["status"], *status, "{body}: {}", reply.text);
        // A replay repeats the status.
        let again = server.post_order(body).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        assert_eq!(again.json, reply.json);
    }
    let view = server.sku("PAY-1").await;
    assert_eq!(view["sold"], 7, "cod units are sold: {view}");
    assert_eq!(
        view["reserved"], 8,
        "prepaid/escrow units are reserved: {view}"
    );
    assert_eq!(view["available"], 5, "{view}");

    // An order bigger than what is left is sold out and takes nothing, whatever the payment.
    let big = server
        .post_order(&order("p-big", "u6", "PAY-1", 4, "cod"))
        .await;
    assert_eq!(big.status, StatusCode::CREATED, "{}", big.text);
    server
        .post_order(&order("p-two", "u7", "PAY-1", 2, "escrow"))
        .await
        .assert_error(409, "sold_out");
    let one = server
        .post_order(&order("p-one", "u8", "PAY-1", 1, "prepaid"))
        .await;
    assert_eq!(one.status, StatusCode::CREATED, "{}", one.text);
    server
        .post_order(&order("p-late", "u9", "PAY-1", 1, "cod"))
        .await
        .assert_error(409, "sold_out");
    let view = server.sku("PAY-1").await;
    assert_eq!(
        (
            view["available"].as_u64(),
            view["reserved"].as_u64(),
            view["sold"].as_u64()
        ),
        (Some(0), Some(9), Some(11)),
        "{view}"
    );

    let orders = server.accepted_orders().await;
    assert_eq!(orders["p-default"]["payment"], "prepaid");
    assert_eq!(orders["p-cod"]["payment"], "cod");
    assert_eq!(orders["p-esc"]["payment"], "escrow");
    assert_eq!(orders["p-esc"]["qty"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_is_journaled_as_given() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("ADDR-1", 5, 0, 1).await;
    let address = json!({"name": "Åsa Öberg", "lines": ["Storgatan 1", "2 tr"], "zip": "11122",
        "geo": {"lat": 59.33, "lon": 18.06}, "gift": true});
    let body = json!({"order_id": "a-1", "user_id": "asa", "sku": "ADDR-1", "qty": 1,
        "payment": "prepaid", "address": address});
    let reply = server.post_order(&body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    // A different address is different content.
    let mut moved = body.clone();
    moved["address"]["zip"] = json!("99999");
    server
        .post_order(&moved)
        .await
        .assert_error(422, "idempotency_conflict");
    let orders = server.accepted_orders().await;
    assert_eq!(orders["a-1"]["address"], address);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_once_started() {
    let server = Server::start(Opts::default()).await;
    let health = server.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    // The demo catalogue is there at once, so a new user can post an order.
    let demo = server.sku("SKU-1").await;
    assert_eq!(demo["stock_total"], 1000, "{demo}");
    let reply = server
        .post_order(&order("demo-1", "newbie", "SKU-1", 1, "prepaid"))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    // The listening line names the port we talk to.
    assert!(
        server
            .output()
            .contains(&format!("stampede listening on http://{}", server.addr)),
        "{}",
        server.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_one_is_generated_in_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let mut server = Server::start(Opts {
        admin_token: None,
        ..Opts::default()
    })
    .await;
    let path = server.data_dir().join("admin.token");
    let metadata = std::fs::metadata(&path).expect("admin.token exists");
    assert_eq!(
        metadata.permissions().mode() & 0o777,
        0o600,
        "mode of {path:?}"
    );
    let token = std::fs::read_to_string(&path).expect("read token");
    let token = token.trim().to_string();
    assert!(token.len() >= 16, "token {token:?}");
    assert!(
        !server.output().contains(&token),
        "the token must not be logged"
    );

    server
        .put_sku("GEN-1", &json!({"stock": 1}))
        .await
        .assert_error(401, "unauthorized");
    server.admin_token = token.clone();
    server.create_sku("GEN-1", 1, 0, 1).await;

    // The same token after a restart.
    let status = server.terminate().await;
    assert!(status.success(), "{status}");
    server.restart().await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        token,
        "token kept across restarts"
    );
    server.create_sku("GEN-1", 2, 0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_cap_is_exactly_sixteen_kib() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("CAP-1", 10, 0, 1).await;
    let sized = |id: &str, size: usize| {
        let mut body = order(id, "u1", "CAP-1", 1, "prepaid");
        body["padding"] = json!("");
        let bare = serde_json::to_vec(&body).unwrap().len();
        body["padding"] = json!("p".repeat(size - bare));
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(bytes.len(), size);
        bytes
    };
    let at_cap = server.post_order_raw(sized("cap-at", 16 * 1024)).await;
    assert_eq!(at_cap.status, StatusCode::CREATED, "{}", at_cap.text);
    server
        .post_order_raw(sized("cap-over", 16 * 1024 + 1))
        .await
        .assert_error(413, "too_large");
    // The connection pool keeps working after a 413.
    let after = server
        .post_order(&order("cap-after", "u2", "CAP-1", 1, "prepaid"))
        .await;
    assert_eq!(after.status, StatusCode::CREATED, "{}", after.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_flags_and_environment_layer_in_the_documented_order() {
    let config = r#"
listen = "127.0.0.1:1"
data_dir = "/proc/stampede-must-not-write-here"
admin_token = "token-from-the-config-file-0000"

[http]
body_bytes_max = 2048

[[catalogue]]
sku = "CFG-1"
stock = 7
per_user_limit = 1
max_per_order = 1
"#;
    let server = Server::start(Opts {
        config_toml: Some(config.to_string()),
        env: vec![(
            "STAMPEDE_HTTP_BODY_BYTES_MAX".to_string(),
            "4096".to_string(),
        )],
        ..Opts::default()
    })
    .await;
    // Flags beat the file: the listen address and the data dir.
    assert!(!server.addr.ends_with(":1"), "listening on {}", server.addr);
    assert!(
        server.journal_dir().is_dir(),
        "journal in the flag's data dir"
    );
    // The environment beats the file: the admin token and the body cap.
    let file_token = server
        .client()
        .put(server.url("/v1/skus/CFG-2"))
        .bearer_auth("token-from-the-config-file-0000")
        .json(&json!({"stock": 1}));
    server
        .send(file_token)
        .await
        .assert_error(401, "unauthorized");
    server.create_sku("CFG-2", 1, 0, 1).await;
    let sized = |id: &str, size: usize| {
        let mut body = order(id, "u1", "CFG-1", 1, "prepaid");
        body["padding"] = json!("");
        let bare = serde_json::to_vec(&body).unwrap().len();
        body["padding"] = json!("p".repeat(size - bare));
        serde_json::to_vec(&body).unwrap()
    };
    let fits = server.post_order_raw(sized("cfg-1", 3000)).await;
    assert_eq!(
        fits.status,
        StatusCode::CREATED,
        "env cap 4096 > 3000: {}",
        fits.text
    );
    server
        .post_order_raw(sized("cfg-2", 5000))
        .await
        .assert_error(413, "too_large");
    // The file's catalogue replaces the demo catalogue.
    server
        .get_sku("SKU-1")
        .await
        .assert_error(404, "unknown_sku");
    let view = server.sku("CFG-1").await;
    assert_eq!(view["stock_total"], 7, "{view}");
    assert_eq!(view["per_user_limit"], 1, "{view}");
    assert_eq!(view["reserved"], 1, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("LOCK-1", 5, 0, 1).await;
    let data_dir = server.data_dir();
    let (status, output) = common::run_to_exit(
        &[
            "serve".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ],
        &[("STAMPEDE_ADMIN_TOKEN", common::ADMIN_TOKEN)],
        common::START_TIMEOUT,
    );
    let status = status.unwrap_or_else(|| panic!("second server did not exit:\n{output}"));
    assert!(
        !status.success(),
        "second server must fail: {status}\n{output}"
    );
    assert!(output.to_lowercase().contains("lock"), "{output}");
    // The first one is unharmed.
    let reply = server
        .post_order(&order("lock-1", "u1", "LOCK-1", 1, "prepaid"))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(server.accepted_orders().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_shard_mailbox_sheds_with_429_and_takes_nothing() {
    let server = Server::start(Opts {
        env: vec![
            ("STAMPEDE_SHARD_QUEUE_CAPACITY".to_string(), "1".to_string()),
            ("STAMPEDE_SHARD_BATCH_MAX".to_string(), "1".to_string()),
            // The mailbox's own bound is under test: the queue-delay gate (which would see
            // this standing queue and answer 503) is off.
            (
                "STAMPEDE_ADMISSION_QUEUE_DELAY_TARGET_MS".to_string(),
                "0".to_string(),
            ),
        ],
        ..Opts::default().shards(1).fsync("always")
    })
    .await;
    server.create_sku("SHED-1", 100_000, 0, 1).await;
    let mut tasks = Vec::new();
    for task in 0..24 {
        let base_url = server.base_url.clone();
        tasks.push(tokio::spawn(async move {
            let client = new_client();
            let mut replies = Vec::new();
            for n in 0..12 {
                let body = order(&format!("sh{task}-{n}"), "u", "SHED-1", 1, "prepaid");
                let reply = post_order_with(&client, &base_url, &body).await.unwrap();
                replies.push((body, reply));
            }
            replies
        }));
    }
    let mut created = HashSet::new();
    let mut shed = Vec::new();
    for task in tasks {
        for (body, reply) in task.await.unwrap() {
            let id = body["order_id"].as_str().unwrap().to_string();
            match reply.status.as_u16() {
                201 => {
                    created.insert(id);
                }
                429 => {
                    reply.assert_error(429, "overloaded");
                    let retry_after = reply.header("retry-after").unwrap_or_default();
                    assert!(
                        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
                        "Retry-After {retry_after:?}"
                    );
                    shed.push(body);
                }
                _ => panic!("{id}: unexpected {} {}", reply.status, reply.text),
            }
        }
    }
    eprintln!("{} created, {} shed", created.len(), shed.len());
    assert!(
        !shed.is_empty(),
        "a one-slot mailbox under 24 clients must shed"
    );
    assert!(!created.is_empty(), "some orders get through");
    let view = server.sku("SHED-1").await;
    assert_eq!(view["reserved"], created.len(), "{view}");
    let journaled: HashSet<String> = server.accepted_orders().await.into_keys().collect();
    assert_eq!(journaled, created, "exactly the 201 orders are journaled");
    // A shed order took nothing, not even its id: a retry creates it.
    for body in shed.iter().take(5) {
        let retry = server.post_order(body).await;
        assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    }
}

/// The sold-out fast path answers before `max_per_order` is checked, so an order with
/// `qty > max_per_order` gets 409 sold_out (instead of 422 invalid) whenever `qty` is also
/// above the available stock. `src/http/orders.rs` documents 422 before 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qty_over_max_per_order_is_invalid_even_when_it_is_also_over_the_stock() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("MAXQ-1", 3, 0, 2).await;
    server
        .post_order(&order("mq-1", "u1", "MAXQ-1", 4, "prepaid"))
        .await
        .assert_error(422, "invalid");
}

/// serde's derived `Deserialize` also accepts a JSON array for a struct (fields by position),
/// so an order body `["id","user","SKU",1,"prepaid",null]` is accepted as an order, and a SKU
/// body `[5,0,1,900]` as a SKU update; the contract's bodies are JSON objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_json_arrays_are_bad_requests() {
    let server = Server::start(Opts::default()).await;
    server.create_sku("ARR-1", 3, 0, 2).await;
    let order_reply = server
        .post_order(&json!(["arr-1", "u1", "ARR-1", 1, "prepaid", null]))
        .await;
    let sku_reply = server.put_sku("ARR-1", &json!([5, 0, 1, 900])).await;
    let view = server.sku("ARR-1").await;
    assert!(
        order_reply.status == StatusCode::BAD_REQUEST
            && sku_reply.status == StatusCode::BAD_REQUEST,
        "array order body -> {} {}; array sku body -> {} {}; sku now {view}",
        order_reply.status,
        order_reply.text,
        sku_reply.status,
        sku_reply.text
    );
    order_reply.assert_error(400, "bad_request");
    sku_reply.assert_error(400, "bad_request");
}
