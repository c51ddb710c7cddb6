//! Request helpers: one function per endpoint the black-box tests call.
//!
//! They live on [`Api`] (a client, the base URL and the tokens; cheap to clone into tasks,
//! and rebuilt after a restart, whose port is new). [`Server`] has the same methods on its
//! shared client; [`Api::fresh`] gives a new connection pool for tests whose waits may let a
//! pooled connection idle out. Helpers named for an outcome (`place`, `act`, `order`,
//! `create_sku`, `commit_offset_ok`) assert it; the others return the [`Reply`].

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Reply, Server, new_client, read_reply};

/// An order body.
pub fn order(order_id: &str, user_id: &str, sku: &str, qty: u32, payment: &str) -> Value {
    json!({"order_id": order_id, "user_id": user_id, "sku": sku, "qty": qty, "payment": payment})
}

/// `POST /v1/orders` with the given client; transport errors are returned (a crash test
/// expects some).
pub async fn post_order_with(
    client: &reqwest::Client,
    base_url: &str,
    body: &Value,
) -> reqwest::Result<Reply> {
    let response = client
        .post(format!("{base_url}/v1/orders"))
        .json(body)
        .send()
        .await?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        headers,
        text,
        json,
    })
}

/// A client for one server: what a test task needs to talk to it.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base_url: String,
    pub admin_token: String,
    pub consumer_token: String,
}

impl Api {
    /// The server's shared client (its connection pool).
    pub fn of(server: &Server) -> Api {
        Api::with_client(server, server.client().clone())
    }

    /// A new client (its own connection pool) for the server.
    pub fn fresh(server: &Server) -> Api {
        Api::with_client(server, new_client())
    }

    fn with_client(server: &Server, client: reqwest::Client) -> Api {
        Api {
            client,
            base_url: server.base_url.clone(),
            admin_token: server.admin_token.clone(),
            consumer_token: server.consumer_token.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Any request; panics on a transport error.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        read_reply(request.send().await).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// `POST /v1/orders` with a JSON body.
    pub async fn post_order(&self, body: &Value) -> Reply {
        post_order_with(&self.client, &self.base_url, body)
            .await
            .unwrap_or_else(|error| panic!("POST /v1/orders failed: {error}"))
    }

    /// `POST /v1/orders` asserting 201; the body.
    pub async fn place(&self, body: &Value) -> Value {
        let reply = self.post_order(body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{body}: {}", reply.text);
        reply.json
    }

    /// `GET /v1/orders/{id}`.
    pub async fn get_order(&self, id: &str) -> Reply {
        self.get(&format!("/v1/orders/{id}")).await
    }

    /// `GET /v1/orders/{id}` asserting 200; the view.
    pub async fn order(&self, id: &str) -> Value {
        let reply = self.get_order(id).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET order {id}: {}",
            reply.text
        );
        reply.json
    }

    /// `POST /v1/orders/{id}/{action}`, with a JSON body when one is given.
    pub async fn post_action(&self, id: &str, action: &str, body: Option<&Value>) -> Reply {
        self.send(self.action_request(id, action, body)).await
    }

    /// An action with an `Idempotency-Key` header (sent as raw bytes).
    pub async fn post_action_keyed(
        &self,
        id: &str,
        action: &str,
        key: &[u8],
        body: Option<&Value>,
    ) -> Reply {
        let request = self.action_request(id, action, body).header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(key).expect("a header value"),
        );
        self.send(request).await
    }

    fn action_request(
        &self,
        id: &str,
        action: &str,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let request = self
            .client
            .post(self.url(&format!("/v1/orders/{id}/{action}")));
        match body {
            Some(body) => request.json(body),
            None => request,
        }
    }

    /// An action asserting 200; the order as the answer shows it.
    pub async fn act(&self, id: &str, action: &str, body: Option<&Value>) -> Value {
        let reply = self.post_action(id, action, body).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{action} {id}: {}",
            reply.text
        );
        reply.json
    }

    /// `PUT /v1/skus/{sku}` with the admin token.
    pub async fn put_sku(&self, sku: &str, body: &Value) -> Reply {
        let request = self
            .client
            .put(self.url(&format!("/v1/skus/{sku}")))
            .bearer_auth(&self.admin_token)
            .json(body);
        self.send(request).await
    }

    /// `PUT /v1/skus/{sku}` asserting 200.
    pub async fn put_sku_ok(&self, sku: &str, body: &Value) {
        let reply = self.put_sku(sku, body).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "PUT sku {sku}: {}",
            reply.text
        );
    }

    /// `GET /v1/consumers/{group}/offset`.
    pub async fn get_offset(&self, group: &str) -> Reply {
        self.get(&format!("/v1/consumers/{group}/offset")).await
    }

    /// `PUT /v1/consumers/{group}/offset` with `{"seq": seq}` and the consumer token.
    pub async fn commit_offset(&self, group: &str, seq: u64) -> Reply {
        let request = self
            .client
            .put(self.url(&format!("/v1/consumers/{group}/offset")))
            .bearer_auth(&self.consumer_token)
            .json(&json!({ "seq": seq }));
        self.send(request).await
    }

    /// A commit asserting 200 and that the answer names `seq`.
    pub async fn commit_offset_ok(&self, group: &str, seq: u64) {
        let reply = self.commit_offset(group, seq).await;
        assert_eq!(reply.status, StatusCode::OK, "PUT {group}: {}", reply.text);
        assert_eq!(reply.json["seq"], seq, "{}", reply.text);
    }

    /// `GET /metrics` asserting 200; the text.
    pub async fn metrics_text(&self) -> String {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text);
        reply.text
    }
}

/// The value of `series` in a `/metrics` text; a series that is not there fails the test
/// (a renamed metric must not read as zero).
pub fn metric(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
}

/// The value of the first line of a `/metrics` text that starts with `series` and has a
/// number after it; `None` when there is none.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The same requests on the server's shared client.
impl Server {
    /// The server's shared client as an [`Api`].
    pub fn api(&self) -> Api {
        Api::of(self)
    }

    pub async fn get(&self, path: &str) -> Reply {
        read_reply(self.client().get(self.url(path)).send().await).await
    }

    /// Any request with the shared client.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        read_reply(request.send().await).await
    }

    /// `POST /v1/orders` with a JSON body.
    pub async fn post_order(&self, body: &Value) -> Reply {
        self.api().post_order(body).await
    }

    /// `POST /v1/orders` asserting 201; the body.
    pub async fn place(&self, body: &Value) -> Value {
        self.api().place(body).await
    }

    /// `POST /v1/orders` with raw bytes.
    pub async fn post_order_raw(&self, body: impl Into<Vec<u8>>) -> Reply {
        let request = self
            .client()
            .post(self.url("/v1/orders"))
            .header("content-type", "application/json")
            .body(body.into());
        read_reply(request.send().await).await
    }

    /// `GET /v1/orders/{id}`.
    pub async fn get_order(&self, id: &str) -> Reply {
        self.api().get_order(id).await
    }

    /// `GET /v1/orders/{id}` asserting 200; the view.
    pub async fn order(&self, id: &str) -> Value {
        self.api().order(id).await
    }

    /// `POST /v1/orders/{id}/{action}`, with a JSON body when one is given.
    pub async fn post_action(&self, id: &str, action: &str, body: Option<&Value>) -> Reply {
        self.api().post_action(id, action, body).await
    }

    /// An action with an `Idempotency-Key` header.
    pub async fn post_action_keyed(
        &self,
        id: &str,
        action: &str,
        key: &[u8],
        body: Option<&Value>,
    ) -> Reply {
        self.api().post_action_keyed(id, action, key, body).await
    }

    /// An action asserting 200; the order as the answer shows it.
    pub async fn act(&self, id: &str, action: &str, body: Option<&Value>) -> Value {
        self.api().act(id, action, body).await
    }

    /// `PUT /v1/skus/{sku}` with the admin token.
    pub async fn put_sku(&self, sku: &str, body: &Value) -> Reply {
        self.api().put_sku(sku, body).await
    }

    /// Creates (or updates) a SKU and asserts 200.
    pub async fn create_sku(&self, sku: &str, stock: u64, per_user_limit: u32, max_per_order: u32) {
        let reply = self
            .put_sku(
                sku,
                &json!({"stock": stock, "per_user_limit": per_user_limit, "max_per_order": max_per_order}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "PUT sku {sku}: {}",
            reply.text
        );
    }

    /// `GET /v1/skus/{sku}`.
    pub async fn get_sku(&self, sku: &str) -> Reply {
        self.get(&format!("/v1/skus/{sku}")).await
    }

    /// `GET /v1/skus/{sku}` asserting 200 and the balance invariant; the body.
    pub async fn sku(&self, sku: &str) -> Value {
        let reply = self.get_sku(sku).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET sku {sku}: {}",
            reply.text
        );
        let view = reply.json;
        let field = |name: &str| {
            view[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} in {view}"))
        };
        assert_eq!(
            field("available") + field("reserved") + field("sold"),
            field("stock_total"),
            "sold + reserved + available = stock_total: {view}"
        );
        view
    }

    /// `GET /v1/consumers/{group}/offset`.
    pub async fn get_offset(&self, group: &str) -> Reply {
        self.api().get_offset(group).await
    }

    /// `PUT /v1/consumers/{group}/offset` with the consumer token.
    pub async fn commit_offset(&self, group: &str, seq: u64) -> Reply {
        self.api().commit_offset(group, seq).await
    }

    /// `GET /metrics` asserting 200; the text.
    pub async fn metrics_text(&self) -> String {
        self.api().metrics_text().await
    }

    /// Every journal record, paging with `from=<last seq>` until a page is empty.
    pub async fn journal(&self) -> Vec<Value> {
        let mut records = Vec::new();
        let mut from = 0u64;
        for _ in 0..10_000 {
            let reply = self
                .get(&format!("/v1/journal?from={from}&limit=500"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "journal page: {}", reply.text);
            assert!(
                reply
                    .header("content-type")
                    .is_some_and(|ct| ct.starts_with("application/x-ndjson")),
                "journal content-type {:?}",
                reply.header("content-type")
            );
            let page: Vec<Value> = reply
                .text
                .lines()
                .filter(|line| !line.is_empty())
                .map(|line| {
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("journal line {line:?}: {e}"))
                })
                .collect();
            let Some(last) = page.last() else {
                return records;
            };
            let last_seq = last["seq"].as_u64().expect("seq");
            assert!(last_seq > from, "journal page did not advance past {from}");
            from = last_seq;
            records.extend(page);
        }
        panic!("journal paging did not end");
    }

    /// The journal's `accepted` records, by order id.
    pub async fn accepted_orders(&self) -> std::collections::HashMap<String, Value> {
        let mut orders = std::collections::HashMap::new();
        for record in self.journal().await {
            if record["type"] == "accepted" {
                let id = record["order_id"].as_str().expect("order_id").to_string();
                assert!(
                    orders.insert(id.clone(), record).is_none(),
                    "order {id} journaled twice"
                );
            }
        }
        orders
    }
}
