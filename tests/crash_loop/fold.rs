//! The journal, folded with the same rules the engine promises: per SKU the units taken, per
//! order its chain of records, per (user, SKU) the units held. Every rule the engine must keep
//! at every point of the journal (no oversell, per-user limits, no order twice, only moves the
//! order's state allows, contiguous seqs) is checked as each record is folded.
//!
//! Invariant: `records[i]` is the record with seq `i + 1`; the fold only grows, except that a
//! power cut under a lossy fsync policy may `rewind` it to the journal's surviving end.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SkuFold {
    pub(crate) stock_total: u64,
    pub(crate) per_user_limit: u64,
    pub(crate) max_per_order: u64,
    pub(crate) payment_timeout_s: u64,
    pub(crate) reserved: u64,
    pub(crate) sold: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct OrderFold {
    pub(crate) user: String,
    pub(crate) sku: String,
    pub(crate) qty: u64,
    pub(crate) payment: String,
    pub(crate) address: Value,
    pub(crate) seq: u64,
    pub(crate) status: String,
    /// (type, seq) of each record, oldest first.
    pub(crate) chain: Vec<(String, u64)>,
    /// (seq, SKU) of each exchange.
    pub(crate) exchanges: Vec<(u64, String)>,
}

#[derive(Debug, Default)]
pub(crate) struct Fold {
    pub(crate) records: Vec<Value>,
    pub(crate) skus: BTreeMap<String, SkuFold>,
    pub(crate) orders: HashMap<String, OrderFold>,
    /// Units held per (user, sku): accepted and not given back.
    pub(crate) held: HashMap<(String, String), u64>,
    pub(crate) types: BTreeMap<String, u64>,
    pub(crate) violations: Vec<String>,
    /// Orders with records folded since the last `take_changed`.
    pub(crate) changed: HashSet<String>,
}

impl Fold {
    pub(crate) fn last_seq(&self) -> u64 {
        self.records.len() as u64
    }

    /// Forgets the records after `seq` (a power cut took them): folds the rest again. The
    /// orders of the forgotten records count as changed, so that the audit reads them back.
    pub(crate) fn rewind(&mut self, seq: u64) {
        let records = std::mem::take(&mut self.records);
        let mut changed = std::mem::take(&mut self.changed);
        for record in &records[seq as usize..] {
            if let Some(id) = record["order_id"].as_str() {
                changed.insert(id.to_string());
            }
        }
        let violations = std::mem::take(&mut self.violations);
        *self = Fold::default();
        for record in records.into_iter().take(seq as usize) {
            self.apply(record);
        }
        self.changed = changed;
        self.violations.splice(0..0, violations);
    }

    pub(crate) fn violation(&mut self, message: String) {
        self.violations.push(message);
    }

    pub(crate) fn apply(&mut self, record: Value) {
        let seq = record["seq"].as_u64().unwrap_or(0);
        let expected = self.last_seq() + 1;
        if seq != expected {
            self.violation(format!(
                "journal seq {seq} where {expected} was due: {record}"
            ));
        }
        let kind = record["type"].as_str().unwrap_or("").to_string();
        *self.types.entry(kind.clone()).or_default() += 1;
        match kind.as_str() {
            "sku" => self.apply_sku(seq, &record),
            "accepted" => self.apply_accepted(seq, &record),
            "payment_reminder" | "expired" => self.apply_action(seq, &kind, &record),
            _ if CLIENT_ACTIONS.contains(&kind.as_str()) => {
                self.apply_action(seq, &kind, &record);
            }
            _ => self.violation(format!(
                "seq {seq}: a record type this run never causes: {record}"
            )),
        }
        self.records.push(record);
    }

    pub(crate) fn apply_sku(&mut self, seq: u64, record: &Value) {
        let name = record["sku"].as_str().unwrap_or("").to_string();
        let field = |name: &str| record[name].as_u64().unwrap_or(0);
        let settings = SkuFold {
            stock_total: field("stock_total"),
            per_user_limit: field("per_user_limit"),
            max_per_order: field("max_per_order"),
            payment_timeout_s: field("payment_timeout_s"),
            reserved: 0,
            sold: 0,
        };
        let stock_total = settings.stock_total;
        if let Some(spec) = SKUS.iter().find(|spec| spec.name == name)
            && (
                settings.per_user_limit,
                settings.max_per_order,
                settings.payment_timeout_s,
            ) != (
                spec.per_user_limit,
                spec.max_per_order,
                spec.payment_timeout_s,
            )
        {
            self.violation(format!(
                "seq {seq}: {name} has settings {settings:?}; this run only ever sets {spec:?}"
            ));
        }
        let sku = self.skus.entry(name.clone()).or_insert(settings.clone());
        let taken = sku.reserved + sku.sold;
        sku.stock_total = stock_total;
        sku.per_user_limit = settings.per_user_limit;
        sku.max_per_order = settings.max_per_order;
        sku.payment_timeout_s = settings.payment_timeout_s;
        if taken > stock_total {
            self.violation(format!(
                "seq {seq}: {name} set to stock {stock_total} below the {taken} units taken"
            ));
        }
    }

    pub(crate) fn apply_accepted(&mut self, seq: u64, record: &Value) {
        let id = record["order_id"].as_str().unwrap_or("").to_string();
        let user = record["user_id"].as_str().unwrap_or("").to_string();
        let sku_name = record["sku"].as_str().unwrap_or("").to_string();
        let qty = record["qty"].as_u64().unwrap_or(0);
        let payment = record["payment"].as_str().unwrap_or("").to_string();
        if let Some(first) = self.orders.get(&id) {
            let first = first.seq;
            self.violation(format!(
                "order {id} journaled twice: seq {first} and seq {seq}"
            ));
            return;
        }
        let Some(sku) = self.skus.get_mut(&sku_name) else {
            self.violation(format!("seq {seq}: order {id} of unknown SKU {sku_name}"));
            return;
        };
        let status = initial_status(&payment);
        if status == PENDING {
            sku.reserved += qty;
        } else {
            sku.sold += qty;
        }
        let (taken, total) = (sku.reserved + sku.sold, sku.stock_total);
        let (limit, max_per_order) = (sku.per_user_limit, sku.max_per_order);
        let held = self
            .held
            .entry((user.clone(), sku_name.clone()))
            .or_default();
        *held += qty;
        let held = *held;
        if taken > total {
            self.violation(format!(
                "seq {seq}: {sku_name} oversold by order {id}: {taken} units taken of {total}"
            ));
        }
        if limit > 0 && held > limit {
            self.violation(format!(
                "seq {seq}: user {user} holds {held} units of {sku_name} (limit {limit}) \
                 after order {id}"
            ));
        }
        if qty == 0 || qty > max_per_order {
            self.violation(format!(
                "seq {seq}: order {id} of {qty} units (max_per_order {max_per_order})"
            ));
        }
        self.changed.insert(id.clone());
        self.orders.insert(
            id,
            OrderFold {
                user,
                sku: sku_name,
                qty,
                payment,
                address: record.get("address").cloned().unwrap_or(Value::Null),
                seq,
                status: status.to_string(),
                chain: vec![("accepted".to_string(), seq)],
                exchanges: Vec::new(),
            },
        );
    }

    pub(crate) fn apply_action(&mut self, seq: u64, kind: &str, record: &Value) {
        let id = record["order_id"].as_str().unwrap_or("").to_string();
        let Some(order) = self.orders.get_mut(&id) else {
            self.violation(format!("seq {seq}: {kind} of unknown order {id}"));
            return;
        };
        self.changed.insert(id.clone());
        let last = order.chain.last().map_or(0, |(_, s)| *s);
        let mut wrong = Vec::new();
        if record["prev_seq"].as_u64() != Some(last) {
            wrong.push(format!(
                "seq {seq}: {kind} of {id} has prev_seq {} where {last} was due",
                record["prev_seq"]
            ));
        }
        let Some(next) = transition(&order.status, kind) else {
            let status = order.status.clone();
            self.violation(format!(
                "seq {seq}: {kind} of {id} journaled while it was {status}"
            ));
            return;
        };
        if record["status"] != next {
            wrong.push(format!(
                "seq {seq}: {kind} of {id} says status {} where {next} was due",
                record["status"]
            ));
        }
        // Only an exchange names a SKU (the one a unit was taken from).
        let exchange_sku = record["sku"].as_str().map(str::to_string);
        if (kind == "exchange") != exchange_sku.is_some() {
            wrong.push(format!(
                "seq {seq}: {kind} of {id} with sku {}",
                record["sku"]
            ));
        }
        let before = std::mem::replace(&mut order.status, next.to_string());
        order.chain.push((kind.to_string(), seq));
        let (qty, user, sku_name) = (order.qty, order.user.clone(), order.sku.clone());
        let from_reserved = before == PENDING;
        match kind {
            "pay" => {
                let sku = self.skus.get_mut(&sku_name).expect("the order's SKU");
                sku.reserved -= qty;
                sku.sold += qty;
            }
            "cancel" | "expired" => {
                let sku = self.skus.get_mut(&sku_name).expect("the order's SKU");
                if from_reserved {
                    sku.reserved -= qty;
                } else {
                    sku.sold -= qty;
                }
                let held = self.held.entry((user, sku_name)).or_default();
                *held = held.saturating_sub(qty);
            }
            "exchange" => {
                // One unit of the exchange SKU is sold; the order's own units stay sold and
                // the buyer's purchase count does not change.
                let other = exchange_sku.unwrap_or_default();
                order.exchanges.push((seq, other.clone()));
                match self.skus.get_mut(&other) {
                    Some(sku) => {
                        sku.sold += 1;
                        let (taken, total) = (sku.reserved + sku.sold, sku.stock_total);
                        if taken > total {
                            wrong.push(format!(
                                "seq {seq}: {other} oversold by the exchange of order {id}: \
                                 {taken} units taken of {total}"
                            ));
                        }
                    }
                    None => wrong.push(format!(
                        "seq {seq}: exchange of order {id} took a unit of unknown SKU {other:?}"
                    )),
                }
            }
            _ => {}
        }
        for message in wrong {
            self.violation(message);
        }
    }
}
