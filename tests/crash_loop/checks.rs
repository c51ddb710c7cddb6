//! The audit's checks: the engine's SKU and order views against the fold, everything the
//! clients were told since the last audit against the journal (then the model is reset to
//! what the journal says), consumer offsets, and retries of acknowledged orders after a
//! restart.

use super::*;

impl Auditor {
    /// The SKUs as the engine shows them, compared with the fold; retried while timers move
    /// the journal.
    pub(crate) async fn check_skus(&mut self, base: &str) -> Vec<String> {
        let mut wrong = Vec::new();
        for attempt in 0..20 {
            self.pull(base).await;
            let last = self.fold.last_seq();
            wrong.clear();
            for (name, sku) in &self.fold.skus {
                let view = self.get(base, &format!("/v1/skus/{name}")).await;
                let field = |f: &str| view.json[f].as_u64().unwrap_or(u64::MAX);
                let engine = SkuFold {
                    stock_total: field("stock_total"),
                    per_user_limit: field("per_user_limit"),
                    max_per_order: field("max_per_order"),
                    payment_timeout_s: field("payment_timeout_s"),
                    reserved: field("reserved"),
                    sold: field("sold"),
                };
                let balanced = field("available")
                    .checked_add(engine.reserved)
                    .and_then(|sum| sum.checked_add(engine.sold))
                    == Some(engine.stock_total);
                if view.status != 200 || engine != *sku || !balanced {
                    wrong.push(format!(
                        "SKU {name}: the engine shows {} {}, the journal (to seq {last}) says \
                         {sku:?}",
                        view.status, view.text
                    ));
                }
            }
            if wrong.is_empty() {
                return wrong;
            }
            self.pull(base).await;
            if self.fold.last_seq() == last && attempt >= 3 {
                // A stable journal that still disagrees: wait a little for a commit in
                // flight, then give up after the last attempt.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        wrong
    }

    /// `GET /v1/orders/{id}` of `ids`, compared with the fold; retried while timers move the
    /// journal.
    pub(crate) async fn check_orders(&mut self, base: &str, ids: Vec<String>) -> Vec<String> {
        let mut pending = ids;
        let mut wrong = Vec::new();
        for attempt in 0..10 {
            wrong.clear();
            let mut mismatched = Vec::new();
            for chunk in pending.chunks(16) {
                let mut set = tokio::task::JoinSet::new();
                for id in chunk {
                    let (http, url, id) = (
                        self.http.clone(),
                        format!("{base}/v1/orders/{id}"),
                        id.clone(),
                    );
                    set.spawn(async move { (id, send(http.get(url)).await) });
                }
                let mut answers = Vec::new();
                while let Some(joined) = set.join_next().await {
                    let (id, answer) = joined.expect("order read task");
                    let answer = answer
                        .unwrap_or_else(|class| self.fail(format!("GET order {id}: {class}")));
                    answers.push((id, answer));
                }
                // Retention may delete while the orders are read: the oldest record kept
                // after the reads bounds what each view may leave out.
                let first_kept = if self.retention {
                    match self.first_kept(base).await {
                        Ok(first) => first,
                        Err(problem) => {
                            wrong.push(problem);
                            self.figures.first_kept
                        }
                    }
                } else {
                    1
                };
                for (id, answer) in answers {
                    self.figures.orders_read_back += 1;
                    if let Some(problem) = self.order_mismatch(&id, &answer, first_kept) {
                        mismatched.push(id);
                        wrong.push(problem);
                    }
                }
            }
            if mismatched.is_empty() {
                break;
            }
            let before = self.fold.last_seq();
            self.pull(base).await;
            if self.fold.last_seq() == before && attempt >= 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pending = mismatched;
        }
        wrong
    }

    /// The order as `GET` shows it against the fold. With retention its first records may
    /// be gone (`history_complete: false`): the history is then the chain's newest records,
    /// those before it are older than `first_kept`, and without the acceptance `user_id`
    /// and `payment` are null and no address is shown.
    pub(crate) fn order_mismatch(
        &self,
        id: &str,
        answer: &Answer,
        first_kept: u64,
    ) -> Option<String> {
        let Some(order) = self.fold.orders.get(id) else {
            return (!(answer.status == 404 && answer.code() == "unknown_order")).then(|| {
                format!(
                    "order {id} is not in the journal, GET says {} {}",
                    answer.status, answer.text
                )
            });
        };
        let view = &answer.json;
        let items = view["history"].as_array().cloned().unwrap_or_default();
        let history: Vec<(String, u64)> = items
            .iter()
            .map(|item| {
                (
                    item["event"].as_str().unwrap_or("").to_string(),
                    item["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let exchanges: Vec<(u64, String)> = items
            .iter()
            .filter(|item| item["event"] == "exchange")
            .map(|item| {
                (
                    item["seq"].as_u64().unwrap_or(0),
                    item["sku"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let complete = view["history_complete"] != false;
        let cut = order.chain.len().saturating_sub(history.len());
        let kept = &order.chain[cut..];
        let accepted_kept = cut == 0;
        let (user, payment, address) = if accepted_kept {
            (
                json!(order.user),
                json!(order.payment),
                order.address.clone(),
            )
        } else {
            (Value::Null, Value::Null, Value::Null)
        };
        let same = answer.status == 200
            && view["status"] == order.status.as_str()
            && view["user_id"] == user
            && view["sku"] == order.sku.as_str()
            && view["qty"] == order.qty
            && view["payment"] == payment
            && view.get("address").unwrap_or(&Value::Null) == &address
            && history == kept
            && complete == accepted_kept
            && (accepted_kept || order.chain[cut - 1].1 < first_kept)
            && exchanges
                == order
                    .exchanges
                    .iter()
                    .filter(|(seq, _)| kept.iter().any(|(_, s)| s == seq))
                    .cloned()
                    .collect::<Vec<_>>();
        (!same).then(|| {
            format!(
                "order {id}: GET says {} {}, the journal (oldest kept seq {first_kept}) says \
                 {order:?}",
                answer.status, answer.text
            )
        })
    }

    /// Everything the clients were told since the last audit, against the journal; then the
    /// model is reset to what the journal says. Returns the violations.
    pub(crate) fn check_model(&mut self, model: &mut Model) -> Vec<String> {
        let mut wrong = Vec::new();
        let by_id: HashMap<String, usize> = model
            .orders
            .iter()
            .enumerate()
            .map(|(index, order)| (order.id.clone(), index))
            .collect();
        for id in self.fold.orders.keys() {
            if !by_id.contains_key(id) {
                wrong.push(format!(
                    "the journal holds order {id}, which no client sent"
                ));
            }
        }
        for order in &mut model.orders {
            let journaled = self.fold.orders.get(&order.id);
            match (order.seq, journaled) {
                (Some(seq), None) => wrong.push(format!(
                    "order {} was acknowledged with seq {seq} and is not in the journal",
                    order.id
                )),
                (Some(seq), Some(record)) if record.seq != seq => wrong.push(format!(
                    "order {} was acknowledged with seq {seq}, the journal has it at seq {}",
                    order.id, record.seq
                )),
                (None, Some(record)) if !order.doubt => wrong.push(format!(
                    "order {} is in the journal (seq {}) though every answer was a refusal",
                    order.id, record.seq
                )),
                (None, Some(record)) => {
                    self.figures.doubt_journaled += 1;
                    order.seq = Some(record.seq);
                }
                (None, None) if order.doubt => self.figures.doubt_not_journaled += 1,
                _ => {}
            }
            if let Some(record) = journaled {
                let body = &order.body;
                if body["user_id"] != record.user.as_str()
                    || body["sku"] != record.sku.as_str()
                    || body["qty"] != record.qty
                    || body["payment"] != record.payment.as_str()
                    || body.get("address").unwrap_or(&Value::Null) != &record.address
                {
                    wrong.push(format!(
                        "order {} was sent as {body}, the journal has {record:?}",
                        order.id
                    ));
                }
                if !order.doubt
                    && let Some(known) = &order.known
                {
                    let timer_expiry = known == PENDING
                        && record.status == "expired"
                        && SKUS[order.sku].has_timer();
                    if *known != record.status && !timer_expiry {
                        wrong.push(format!(
                            "order {}: the answers say {known}, the journal says {}",
                            order.id, record.status
                        ));
                    }
                }
            }
            // Each exchange answered 200 is journaled, each lost one may be, nothing else is
            // (refusals take no unit): per SKU, 200s ≤ records ≤ 200s + lost.
            if !order.exchanges.is_empty() || journaled.is_some_and(|r| !r.exchanges.is_empty()) {
                self.figures.exchanges_verified += 1;
                for spec in &SKUS {
                    let answered = |certain: bool| {
                        order
                            .exchanges
                            .iter()
                            .filter(|&&(sku, c)| sku == spec.name && (c || !certain))
                            .count()
                    };
                    let (done, sent) = (answered(true), answered(false));
                    let records = journaled.map_or(0, |r| {
                        r.exchanges
                            .iter()
                            .filter(|(_, sku)| sku == spec.name)
                            .count()
                    });
                    if records < done || records > sent {
                        wrong.push(format!(
                            "order {}: {records} exchange records for {} in the journal; \
                             {done} exchanges were answered 200 and {} lost their answer",
                            order.id,
                            spec.name,
                            sent - done
                        ));
                    }
                }
            }
            order.known = journaled.map(|record| record.status.clone());
            order.last = journaled
                .and_then(|record| record.chain.last())
                .map(|(kind, _)| type_static(kind));
            order.doubt = false;
        }
        for ActionAck { index, action, .. } in std::mem::take(&mut model.actions_done) {
            let order = &model.orders[index];
            self.figures.actions_verified += 1;
            let found = self
                .fold
                .orders
                .get(&order.id)
                .is_some_and(|record| record.chain.iter().any(|(kind, _)| kind == action));
            if !found {
                wrong.push(format!(
                    "{action} of {} was answered 200 and is not in the journal",
                    order.id
                ));
            }
        }
        for (sku, stock, _) in model.restocks_done.drain(..) {
            let name = SKUS[sku].name;
            let found = self
                .fold
                .records
                .iter()
                .rev()
                .any(|r| r["type"] == "sku" && r["sku"] == name && r["stock_total"] == stock);
            if !found {
                wrong.push(format!(
                    "restock of {name} to {stock} was answered 200 and is not in the journal"
                ));
            }
        }
        for (seq, record) in std::mem::take(&mut model.seen) {
            self.figures.records_compared += 1;
            match self.fold.records.get(seq as usize - 1) {
                Some(journaled) if *journaled == record => {}
                other => wrong.push(format!(
                    "a client read journal seq {seq} as {record}; after the restart it is {other:?}"
                )),
            }
        }
        for (index, sku) in SKUS.iter().enumerate().take(3) {
            let now = self.fold.skus.get(sku.name).map(|s| s.stock_total);
            let register = &mut model.stock[index];
            if !register.allows(now) {
                wrong.push(format!(
                    "{}: stock_total {now:?}; the last restock answered 200 set {:?}, \
                     uncertain ones {:?}",
                    sku.name, register.certain, register.maybe
                ));
            }
            register.certain = now;
            register.maybe.clear();
            register.base = now;
            register.acked.clear();
        }
        wrong
    }

    /// Consumer offsets against the model and the journal's end.
    pub(crate) async fn check_offsets(&mut self, base: &str, model: &Mutex<Model>) -> Vec<String> {
        let mut wrong = Vec::new();
        // After a power cut, the end that survived it: an offset is never ahead of it (the
        // engine syncs the journal before it commits one, and clamps at start).
        let last = self.journal_end.unwrap_or_else(|| self.fold.last_seq());
        for group in 0..GROUPS {
            let name = format!("crash-loop-{group}");
            let answer = self
                .get(base, &format!("/v1/consumers/{name}/offset"))
                .await;
            let now = match (answer.status, answer.code()) {
                (200, _) => answer.json["seq"].as_u64(),
                (404, "unknown_group") => None,
                _ => {
                    wrong.push(format!(
                        "offset of {name}: {} {}",
                        answer.status, answer.text
                    ));
                    continue;
                }
            };
            self.figures.offsets_verified += 1;
            if now.is_some_and(|seq| seq > last) {
                wrong.push(format!(
                    "group {name} is at seq {now:?}, past the journal's last seq {last}"
                ));
            }
            let mut model = model.lock().unwrap();
            let register = &mut model.groups[group];
            if !register.allows(now) {
                wrong.push(format!(
                    "group {name} is at {now:?}; the last commit answered 200 was {:?}, \
                     uncertain ones {:?}",
                    register.certain, register.maybe
                ));
            }
            register.certain = now;
            register.maybe.clear();
        }
        wrong
    }

    /// Retries of acknowledged orders after a restart: 200, replayed, the original body.
    pub(crate) async fn check_retries(
        &mut self,
        base: &str,
        retries: Vec<(String, Value, Value)>,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        for chunk in retries.chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for (id, body, expected) in chunk.iter().cloned() {
                let http = self.http.clone();
                let url = format!("{base}/v1/orders");
                set.spawn(async move { (id, expected, send(http.post(url).json(&body)).await) });
            }
            while let Some(joined) = set.join_next().await {
                let (id, expected, answer) = joined.expect("retry task");
                let answer =
                    answer.unwrap_or_else(|class| self.fail(format!("retry of {id}: {class}")));
                self.figures.retries_after_restart += 1;
                if answer.status != 200 || !answer.replayed || answer.json != expected {
                    wrong.push(format!(
                        "retry of {id} after a restart: {} (replayed {}) {}, want 200 {expected}",
                        answer.status, answer.replayed, answer.text
                    ));
                }
            }
        }
        wrong
    }
}
