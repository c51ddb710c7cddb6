//! The load clients: each task runs seeded operations (new orders, retries, conflicting
//! retries, actions, walks along an order's life, exchanges, journal reads with offset
//! commits, restocks) and has each answer judged as it arrives (`judge`).
//!
//! Invariants: one request at a time per order (`busy`); every request's wait is bounded by
//! the client's timeout; the model is locked only between requests, never across one.

use super::*;

pub(crate) struct Client {
    pub(crate) task: u64,
    pub(crate) cycle: u64,
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) http: reqwest::Client,
    pub(crate) model: Arc<Mutex<Model>>,
    pub(crate) rng: Rng,
    pub(crate) made: u64,
}

impl Client {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Runs operations until `stop`; while `pace` is set, one every 3 to 10 ms (a phase
    /// held open for retention passes, past `HELD_OPEN_OPS`: enough to grow the journal,
    /// not so much that the clients' log balloons).
    pub(crate) async fn run(
        mut self,
        stop: Arc<AtomicBool>,
        pace: Arc<AtomicBool>,
        ops: Arc<AtomicU64>,
    ) {
        while !stop.load(Ordering::SeqCst) {
            if pace.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(self.rng.range(3, 10))).await;
            }
            let roll = self.rng.below(100);
            let done = match roll {
                0..=44 => {
                    self.new_order().await;
                    true
                }
                45..=57 => self.retry().await,
                58..=60 => self.conflicting_retry().await,
                61..=77 => self.action().await,
                78..=85 => self.walk(&stop).await,
                86..=89 => self.exchange().await,
                90..=96 => self.consume().await,
                _ => self.restock().await,
            };
            if !done {
                self.new_order().await;
            }
            ops.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn pick_sku(&mut self) -> usize {
        let total: u64 = SKUS.iter().map(|s| s.weight).sum();
        let mut roll = self.rng.below(total);
        for (index, sku) in SKUS.iter().enumerate() {
            if roll < sku.weight {
                return index;
            }
            roll -= sku.weight;
        }
        0
    }

    /// A random order that is not busy and passes `fit`, marked busy.
    pub(crate) fn pick_order(
        &mut self,
        fit: impl Fn(&OrderModel) -> bool,
    ) -> Option<(usize, Value)> {
        let mut model = self.model.lock().unwrap();
        let len = model.orders.len() as u64;
        if len == 0 {
            return None;
        }
        for _ in 0..12 {
            // Half the picks among the latest orders, where pending ones still are.
            let index = if self.rng.percent(50) {
                len - 1 - self.rng.below(len.min(60))
            } else {
                self.rng.below(len)
            } as usize;
            let order = &mut model.orders[index];
            if !order.busy && fit(order) {
                order.busy = true;
                return Some((index, order.body.clone()));
            }
        }
        None
    }

    pub(crate) async fn new_order(&mut self) {
        let sku = self.pick_sku();
        let spec = &SKUS[sku];
        let id = format!("o{}-{}-{}", self.cycle, self.task, self.made);
        self.made += 1;
        let user = format!("u{}", self.cycle * USER_STEP + self.rng.below(USER_WINDOW));
        let qty = self.rng.range(1, spec.max_per_order);
        let payment = ["prepaid", "escrow", "cod"][self.rng.below(3) as usize];
        let mut body = json!({"order_id": id, "user_id": user, "sku": spec.name, "qty": qty,
            "payment": payment});
        if self.rng.percent(75) {
            // Bigger records (the address may be 1 KiB) fill the 64 KiB segments sooner.
            let line = "x".repeat(self.rng.range(200, 950) as usize);
            body["address"] = json!({"city": "Oslo", "line": line});
        }
        let index = {
            let mut model = self.model.lock().unwrap();
            model.orders.push(OrderModel {
                id,
                body: body.clone(),
                sku,
                payment,
                seq: None,
                doubt: false,
                known: None,
                last: None,
                exchanges: Vec::new(),
                exchanges_sent: 0,
                busy: true,
                lost: 0,
                acked_at: None,
            });
            model.orders.len() - 1
        };
        let answer = send(self.http.post(self.url("/v1/orders")).json(&body)).await;
        let mut model = self.model.lock().unwrap();
        judge_order_answer(&mut model, index, answer, "order.new");
    }

    pub(crate) async fn retry(&mut self) -> bool {
        let Some((index, body)) = self.pick_order(|_| true) else {
            return false;
        };
        let answer = send(self.http.post(self.url("/v1/orders")).json(&body)).await;
        let mut model = self.model.lock().unwrap();
        judge_order_answer(&mut model, index, answer, "order.retry");
        true
    }

    /// The id of a durable order with other content: always 422 `idempotency_conflict`.
    pub(crate) async fn conflicting_retry(&mut self) -> bool {
        let Some((index, mut body)) = self.pick_order(|o| o.seq.is_some()) else {
            return false;
        };
        body["payment"] = if body["payment"] == "cod" {
            json!("prepaid")
        } else {
            json!("cod")
        };
        let answer = send(self.http.post(self.url("/v1/orders")).json(&body)).await;
        let mut model = self.model.lock().unwrap();
        model.orders[index].busy = false;
        let id = model.orders[index].id.clone();
        match answer {
            Err(class) => model.count(format!("order.conflict error {class}")),
            Ok(answer) => {
                model.count(format!("order.conflict {}", answer.class()));
                if !(answer.status == 422 && answer.code() == "idempotency_conflict"
                    || answer.shed())
                {
                    model.violation(format!(
                        "retry of durable order {id} with other content: {} {} (want 422 \
                         idempotency_conflict)",
                        answer.status, answer.text
                    ));
                }
            }
        }
        true
    }

    /// One action on any order: mostly `pay` or `cancel`, now and then any other (refusals,
    /// replays, and actions on orders whose state a lost answer left unknown).
    pub(crate) async fn action(&mut self) -> bool {
        let Some((index, _)) = self.pick_order(|o| o.seq.is_some() || o.doubt) else {
            return false;
        };
        let action = match self.rng.below(10) {
            0..=4 => "pay",
            5..=7 => "cancel",
            _ => CLIENT_ACTIONS[self.rng.below(CLIENT_ACTIONS.len() as u64) as usize],
        };
        let sku = (action == "exchange").then(|| self.exchange_sku(index));
        self.send_action(index, action, sku, false).await;
        true
    }

    /// A SKU other than the order's own, for an exchange.
    pub(crate) fn exchange_sku(&mut self, index: usize) -> &'static str {
        let own = self.model.lock().unwrap().orders[index].sku;
        let other = (own + 1 + self.rng.below(SKUS.len() as u64 - 1) as usize) % SKUS.len();
        SKUS[other].name
    }

    /// Sends one action (an exchange with the SKU `sku`) and judges the answer. The order is
    /// free again afterwards, unless `keep` and the answer was 200 (a walk goes on with it).
    /// Returns whether it was answered 200.
    pub(crate) async fn send_action(
        &mut self,
        index: usize,
        action: &'static str,
        sku: Option<&'static str>,
        keep: bool,
    ) -> bool {
        let id = {
            let mut model = self.model.lock().unwrap();
            let order = &mut model.orders[index];
            if action == "exchange" {
                order.exchanges_sent += 1;
            }
            order.id.clone()
        };
        let mut request = self
            .http
            .post(self.url(&format!("/v1/orders/{id}/{action}")));
        if let Some(sku) = sku {
            request = request.json(&json!({"sku": sku}));
        }
        let answer = send(request).await;
        let done = answer.as_ref().is_ok_and(|a| a.status == 200);
        let mut model = self.model.lock().unwrap();
        judge_action_answer(&mut model, index, action, sku, answer);
        if keep && done {
            model.orders[index].busy = true;
        }
        done
    }

    /// Walks an order whose state is known along its life: payment if it is due, the
    /// fulfilment stages up to shipped, delivered or completed, then up to two exchanges.
    /// Each step is one request, judged as it comes; the walk ends at the first answer that
    /// is not 200 or when the load phase ends.
    pub(crate) async fn walk(&mut self, stop: &AtomicBool) -> bool {
        let end = ["shipped", "shipped", "delivered", "completed"][self.rng.below(4) as usize];
        let exchanges = self.rng.below(3) as usize;
        let Some((index, _)) = self.pick_order(|o| {
            !o.doubt
                && o.seq.is_some()
                && o.known.as_deref().is_some_and(|known| {
                    next_step(known).is_some() || transition(known, "exchange").is_some()
                })
                && o.exchanges_sent + exchanges <= EXCHANGES_PER_ORDER
        }) else {
            return false;
        };
        self.model.lock().unwrap().count("walk".to_string());
        let mut exchanged = 0;
        loop {
            let step = {
                let model = self.model.lock().unwrap();
                let order = &model.orders[index];
                let known = order.known.as_deref().filter(|_| !order.doubt);
                match known {
                    Some(known) if known == end || next_step(known).is_none() => {
                        (exchanged < exchanges && transition(known, "exchange").is_some())
                            .then_some("exchange")
                    }
                    Some(known) => next_step(known),
                    None => None,
                }
            };
            let Some(action) = step else {
                break;
            };
            let sku = (action == "exchange").then(|| self.exchange_sku(index));
            exchanged += usize::from(action == "exchange");
            if !self.send_action(index, action, sku, true).await {
                // Freed by the judge.
                return true;
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        self.model.lock().unwrap().orders[index].busy = false;
        true
    }

    /// An exchange on an order known to be shipped, delivered or completed.
    pub(crate) async fn exchange(&mut self) -> bool {
        let Some((index, _)) = self.pick_order(|o| {
            !o.doubt
                && o.exchanges_sent < EXCHANGES_PER_ORDER
                && o.known
                    .as_deref()
                    .is_some_and(|known| transition(known, "exchange").is_some())
        }) else {
            return false;
        };
        let sku = self.exchange_sku(index);
        self.send_action(index, "exchange", Some(sku), false).await;
        true
    }

    /// Reads a page of the journal as a consumer would and commits an offset it saw.
    pub(crate) async fn consume(&mut self) -> bool {
        let (group, from) = {
            let mut model = self.model.lock().unwrap();
            let free: Vec<usize> = (0..GROUPS).filter(|&g| !model.groups[g].busy).collect();
            if free.is_empty() {
                return false;
            }
            let group = free[self.rng.below(free.len() as u64) as usize];
            model.groups[group].busy = true;
            // With retention, only after the lagging group's offset: records before it may
            // be gone, those after it must not be (a 410 there is a violation).
            let floor = if model.retention {
                model.lag_floor.min(model.max_seq_seen)
            } else {
                0
            };
            let from = floor + self.rng.below(model.max_seq_seen - floor + 1);
            (group, from)
        };
        let page = send(
            self.http
                .get(self.url(&format!("/v1/journal?from={from}&limit=20"))),
        )
        .await;
        let mut commit = None;
        {
            let mut model = self.model.lock().unwrap();
            match page {
                Err(class) => model.count(format!("journal.page error {class}")),
                Ok(page) => {
                    model.count(format!("journal.page {}", page.class()));
                    if page.status == 200 {
                        let lines = page.text.lines().filter(|l| !l.trim().is_empty());
                        for (expected, line) in (from + 1..).zip(lines) {
                            let Ok(record) = serde_json::from_str::<Value>(line) else {
                                model.violation(format!("journal line is not JSON: {line:?}"));
                                break;
                            };
                            let seq = record["seq"].as_u64().unwrap_or(0);
                            if seq != expected {
                                model.violation(format!(
                                    "journal page from {from}: seq {seq} where {expected} was due"
                                ));
                                break;
                            }
                            model.max_seq_seen = model.max_seq_seen.max(seq);
                            if let Some(earlier) = model.seen.get(&seq).cloned()
                                && earlier != record
                            {
                                model.violation(format!(
                                    "journal seq {seq} served as {earlier} and later as {record}"
                                ));
                            }
                            model.seen.insert(seq, record);
                            commit = Some(seq);
                        }
                    } else if page.status != 429 {
                        model.violation(format!(
                            "GET /v1/journal?from={from}: {} {}",
                            page.status, page.text
                        ));
                    }
                }
            }
            if commit.is_none() {
                model.groups[group].busy = false;
                return true;
            }
        }
        let seq = commit.expect("a seq to commit");
        let name = format!("crash-loop-{group}");
        let answer = send(
            self.http
                .put(self.url(&format!("/v1/consumers/{name}/offset")))
                .bearer_auth(&self.token)
                .json(&json!({"seq": seq})),
        )
        .await;
        let mut model = self.model.lock().unwrap();
        model.groups[group].busy = false;
        match answer {
            Err(class) => {
                model.count(format!("offset.commit error {class}"));
                model.groups[group].maybe.push(seq);
            }
            Ok(answer) => {
                model.count(format!("offset.commit {}", answer.class()));
                let durable = answer.json["durable_seq"].as_u64().unwrap_or(0);
                if answer.status == 200
                    && answer.json["group"] == name.as_str()
                    && answer.json["seq"] == seq
                    && durable >= seq
                    && answer.json["lag"] == durable - seq
                {
                    model.groups[group].certain = Some(seq);
                } else {
                    model.violation(format!(
                        "commit of group {name} at seq {seq} (read from the journal): {} {}",
                        answer.status, answer.text
                    ));
                }
            }
        }
        true
    }

    /// Raises a hot SKU's stock by a few units (`PUT /v1/skus/{sku}`).
    pub(crate) async fn restock(&mut self) -> bool {
        let sku = self.rng.below(3) as usize;
        let stock = {
            let mut model = self.model.lock().unwrap();
            let register = &mut model.stock[sku];
            if register.busy {
                return false;
            }
            register.busy = true;
            register.sent_max += self.rng.range(1, 4);
            register.sent_max
        };
        let name = SKUS[sku].name;
        let answer = send(
            self.http
                .put(self.url(&format!("/v1/skus/{name}")))
                .bearer_auth(&self.token)
                .json(&json!({"stock": stock})),
        )
        .await;
        let mut model = self.model.lock().unwrap();
        model.stock[sku].busy = false;
        match answer {
            Err(class) => {
                model.count(format!("sku.restock error {class}"));
                model.stock[sku].maybe.push(stock);
            }
            Ok(answer) => {
                model.count(format!("sku.restock {}", answer.class()));
                if answer.status == 200 && answer.json["stock_total"] == stock {
                    model.stock[sku].certain = Some(stock);
                    model.stock[sku].acked.push(stock);
                    let acked = (model.cycle, Instant::now());
                    model.restocks_done.push((sku, stock, acked));
                } else {
                    model.violation(format!(
                        "restock of {name} to {stock}: {} {}",
                        answer.status, answer.text
                    ));
                }
            }
        }
        true
    }
}
