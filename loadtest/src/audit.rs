//! The end-of-run audit: what the generator was told, checked against what the target kept.
//!
//! Inputs, gathered after the last request has finished:
//! - the generator's [`OrderLog`]: every order answered 201 (with its `seq`), every 200 replay
//!   (with the `seq` it carried), and every order whose fate is unknown (transport error);
//! - the SKUs' stock figures (`GET /v1/skus/{sku}`), one [`SkuState`] per scenario SKU;
//! - the journal from before the run's first write to its end ([`JournalScan`], fed line by
//!   line from `GET /v1/journal`).
//!
//! Checks (each one is a line in the report):
//! 1. `stock_conserved`: for every SKU, available + reserved + sold = stock_total, and
//!    stock_total is the stock the scenario set.
//! 2. `no_oversell`: units journaled for a SKU (accepted minus returned) are at most its stock,
//!    equal sold + reserved, and the units the generator saw answered 201 are at most its stock.
//! 3. `created_orders_journaled`: every order answered 201 is journaled exactly once, with the
//!    `seq` of the answer, the same SKU and the same qty.
//! 4. `no_duplicate_journal_orders`: no order id is journaled as accepted twice.
//! 5. `no_double_acceptance`: no order id was answered 201 twice.
//! 6. `replays_match_originals`: every 200 replay carries the journaled `seq` of its order.
//! 7. `nothing_taken_without_201`: every order of this run in the journal was answered 201 at
//!    least once, or had a transport error (its answer was lost); an order that was answered
//!    409/422/429/503 yet journaled means the engine took stock while saying it did not.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::scenario::SkuSpec;
use crate::workload::{OrderKey, parse_order_id};

/// Violations listed per check in the report; the count is always exact.
const VIOLATIONS_SHOWN_MAX: usize = 10;

/// Journal record types that give an order's stock back (and `return` with `restock: true`).
const RETURNING_TYPES: &[&str] = &["cancel", "refund", "expired"];

/// An order the generator saw answered 201.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub key: OrderKey,
    pub seq: u64,
    pub sku_index: u32,
    pub qty: u32,
}

/// What the generator was told, for the audit (warm-up included: the audit covers the whole
/// run). 24 bytes per accepted order.
#[derive(Debug, Clone, Default)]
pub struct OrderLog {
    pub created: Vec<Created>,
    /// (order, seq carried by the 200 replay).
    pub replayed: Vec<(OrderKey, u64)>,
    /// Orders with a request that got no answer: accepted or not, nobody knows.
    pub uncertain: Vec<OrderKey>,
}

impl OrderLog {
    pub fn merge(&mut self, other: OrderLog) {
        self.created.extend(other.created);
        self.replayed.extend(other.replayed);
        self.uncertain.extend(other.uncertain);
    }
}

/// One SKU's stock figures as the target reports them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SkuState {
    pub sku: String,
    pub stock_total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

/// An accepted order of this run, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JournaledOrder {
    key: OrderKey,
    seq: u64,
    sku_index: Option<u32>,
    qty: u64,
}

#[derive(Debug, Deserialize)]
struct JournalLine<'a> {
    seq: u64,
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    order_id: Option<&'a str>,
    #[serde(default, borrow)]
    sku: Option<&'a str>,
    #[serde(default)]
    qty: Option<u64>,
    #[serde(default)]
    restock: Option<bool>,
}

/// The journal range of a run, reduced line by line to what the audit needs: this run's
/// accepted orders (24 bytes each), units per scenario SKU, and duplicate ids.
#[derive(Debug)]
pub struct JournalScan {
    run_id: String,
    sku_indexes: HashMap<String, u32>,
    pub records: u64,
    /// Records that touch this run: one of its order ids or one of its SKUs. Other clients'
    /// records on other SKUs do not count, so a busy engine does not look like a moving run.
    pub run_records: u64,
    pub last_seq: u64,
    ours: Vec<JournaledOrder>,
    /// Accepted units on each scenario SKU, whoever ordered.
    accepted_units: Vec<u64>,
    /// Orders of this run whose stock came back (cancel, refund, expiry).
    returned: Vec<OrderKey>,
    /// Accepted ids of other clients, to find duplicates among them too.
    other_ids: HashSet<String>,
    other_duplicates: Vec<String>,
}

impl JournalScan {
    pub fn new(run_id: &str, skus: &[SkuSpec]) -> Self {
        Self {
            run_id: run_id.to_owned(),
            sku_indexes: skus
                .iter()
                .enumerate()
                .map(|(index, sku)| (sku.name.clone(), index as u32))
                .collect(),
            records: 0,
            run_records: 0,
            last_seq: 0,
            ours: Vec::new(),
            accepted_units: vec![0; skus.len()],
            returned: Vec::new(),
            other_ids: HashSet::new(),
            other_duplicates: Vec::new(),
        }
    }

    /// Takes one NDJSON line of `GET /v1/journal`; returns its `seq`.
    pub fn add_line(&mut self, line: &str) -> Result<u64, String> {
        let record: JournalLine<'_> = serde_json::from_str(line)
            .map_err(|error| format!("unreadable journal line {line:?}: {error}"))?;
        if record.seq <= self.last_seq && self.records > 0 {
            return Err(format!(
                "journal seq went from {} to {}: not strictly increasing",
                self.last_seq, record.seq
            ));
        }
        self.records += 1;
        self.last_seq = record.seq;
        let our_sku = record
            .sku
            .is_some_and(|sku| self.sku_indexes.contains_key(sku));
        let key = record
            .order_id
            .and_then(|order_id| parse_order_id(&self.run_id, order_id));
        if our_sku || key.is_some() {
            self.run_records += 1;
        }
        let Some(order_id) = record.order_id else {
            return Ok(record.seq);
        };
        if record.kind == "accepted" {
            let sku_index = record
                .sku
                .and_then(|sku| self.sku_indexes.get(sku).copied());
            let qty = record.qty.unwrap_or(0);
            if let Some(index) = sku_index {
                self.accepted_units[index as usize] += qty;
            }
            match key {
                Some(key) => self.ours.push(JournaledOrder {
                    key,
                    seq: record.seq,
                    sku_index,
                    qty,
                }),
                None => {
                    if !self.other_ids.insert(order_id.to_owned()) {
                        self.other_duplicates.push(order_id.to_owned());
                    }
                }
            }
        } else if record.kind == "exchange" {
            // One unit of the record's `sku` went out in place of the order's.
            if let Some(index) = record.sku.and_then(|sku| self.sku_indexes.get(sku)) {
                self.accepted_units[*index as usize] += 1;
            }
        } else if (RETURNING_TYPES.contains(&record.kind)
            || (record.kind == "return" && record.restock == Some(true)))
            && let Some(key) = key
        {
            self.returned.push(key);
        }
        Ok(record.seq)
    }

    /// Adds the orders of a target without a JSON journal (the Redis stream).
    pub fn add_accepted(&mut self, seq: u64, order_id: &str, sku: &str, qty: u64) {
        let line = serde_json::json!({
            "seq": seq, "type": "accepted", "order_id": order_id, "sku": sku, "qty": qty
        });
        self.add_line(&line.to_string())
            .expect("a line built here is well-formed");
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditCheck {
    pub name: &'static str,
    pub passed: bool,
    /// What was checked, with the numbers.
    pub detail: String,
    pub violation_count: u64,
    /// The first few violations, each one sentence.
    pub violations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub passed: bool,
    pub checks: Vec<AuditCheck>,
    pub journal_records: u64,
    pub orders_journaled: u64,
    pub orders_created_seen: u64,
    /// Journaled orders of this run whose 201 never reached the generator (transport errors).
    pub orders_answer_lost: u64,
}

impl AuditReport {
    /// A report for an audit that could not gather its inputs.
    pub fn unreadable(reason: String) -> Self {
        Self {
            passed: false,
            checks: vec![AuditCheck {
                name: "audit_inputs_readable",
                passed: false,
                detail: reason,
                violation_count: 1,
                violations: Vec::new(),
            }],
            journal_records: 0,
            orders_journaled: 0,
            orders_created_seen: 0,
            orders_answer_lost: 0,
        }
    }
}

#[derive(Debug)]
struct CheckBuilder {
    name: &'static str,
    count: u64,
    shown: Vec<String>,
}

impl CheckBuilder {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            count: 0,
            shown: Vec::new(),
        }
    }

    fn violation(&mut self, text: impl FnOnce() -> String) {
        self.count += 1;
        if self.shown.len() < VIOLATIONS_SHOWN_MAX {
            self.shown.push(text());
        }
    }

    fn finish(self, detail: String) -> AuditCheck {
        AuditCheck {
            name: self.name,
            passed: self.count == 0,
            detail,
            violation_count: self.count,
            violations: self.shown,
        }
    }
}

/// Runs every check. `states[i]` is the state of `skus[i]` (`None`: it could not be read).
pub fn audit(
    run_id: &str,
    skus: &[SkuSpec],
    states: &[Option<SkuState>],
    scan: &JournalScan,
    log: &OrderLog,
) -> AuditReport {
    let name_of = |key: OrderKey| crate::workload::order_id(run_id, key);
    let mut checks = Vec::new();

    // Journaled orders of this run, by key; returned units per SKU.
    let mut journaled: HashMap<OrderKey, Vec<JournaledOrder>> =
        HashMap::with_capacity(scan.ours.len());
    for order in &scan.ours {
        journaled.entry(order.key).or_default().push(*order);
    }
    let mut returned_units = vec![0u64; skus.len()];
    for key in &scan.returned {
        if let Some(order) = journaled.get(key).and_then(|orders| orders.first())
            && let Some(index) = order.sku_index
        {
            returned_units[index as usize] += order.qty;
        }
    }

    // 1. Stock conserved.
    let mut check = CheckBuilder::new("stock_conserved");
    for (sku, state) in skus.iter().zip(states) {
        match state {
            None => check.violation(|| format!("{}: stock figures could not be read", sku.name)),
            Some(state) => {
                let sum = state.available + state.reserved + state.sold;
                if sum != state.stock_total {
                    check.violation(|| {
                        format!(
                            "{}: available {} + reserved {} + sold {} = {sum}, but stock_total is {}",
                            sku.name, state.available, state.reserved, state.sold, state.stock_total
                        )
                    });
                }
                if state.stock_total != sku.stock {
                    check.violation(|| {
                        format!(
                            "{}: stock_total is {}, the scenario set {}",
                            sku.name, state.stock_total, sku.stock
                        )
                    });
                }
            }
        }
    }
    checks.push(check.finish(format!(
        "available + reserved + sold = stock_total for each of {} SKUs",
        skus.len()
    )));

    // 2. No oversell.
    let mut check = CheckBuilder::new("no_oversell");
    let mut created_units = vec![0u64; skus.len()];
    for created in &log.created {
        if let Some(units) = created_units.get_mut(created.sku_index as usize) {
            *units += u64::from(created.qty);
        }
    }
    for (index, (sku, state)) in skus.iter().zip(states).enumerate() {
        let taken = scan.accepted_units[index].saturating_sub(returned_units[index]);
        if taken > sku.stock {
            check.violation(|| {
                format!(
                    "{}: {taken} units journaled, stock is {}",
                    sku.name, sku.stock
                )
            });
        }
        if created_units[index] > sku.stock {
            check.violation(|| {
                format!(
                    "{}: {} units answered 201, stock is {}",
                    sku.name, created_units[index], sku.stock
                )
            });
        }
        if let Some(state) = state
            && state.sold + state.reserved != taken
        {
            check.violation(|| {
                format!(
                    "{}: sold {} + reserved {} = {}, but the journal holds {taken} units",
                    sku.name,
                    state.sold,
                    state.reserved,
                    state.sold + state.reserved
                )
            });
        }
    }
    checks.push(check.finish(format!(
        "journaled units <= stock and = sold + reserved; {} units answered 201 in all",
        created_units.iter().sum::<u64>()
    )));

    // 3. Every 201 journaled exactly once with its seq.
    let mut check = CheckBuilder::new("created_orders_journaled");
    for created in &log.created {
        match journaled.get(&created.key).map(Vec::as_slice) {
            None | Some([]) => check.violation(|| {
                format!(
                    "{} was answered 201 (seq {}) but is not in the journal",
                    name_of(created.key),
                    created.seq
                )
            }),
            Some([order]) => {
                if order.seq != created.seq {
                    check.violation(|| {
                        format!(
                            "{} was answered 201 with seq {} but is journaled at seq {}",
                            name_of(created.key),
                            created.seq,
                            order.seq
                        )
                    });
                } else if order.sku_index != Some(created.sku_index) {
                    check.violation(|| {
                        format!("{} is journaled for another SKU", name_of(created.key))
                    });
                } else if order.qty != u64::from(created.qty) {
                    check.violation(|| {
                        format!(
                            "{} was ordered with qty {} but is journaled with qty {}",
                            name_of(created.key),
                            created.qty,
                            order.qty
                        )
                    });
                }
            }
            Some(orders) => check.violation(|| {
                format!(
                    "{} was answered 201 and is journaled {} times",
                    name_of(created.key),
                    orders.len()
                )
            }),
        }
    }
    checks.push(check.finish(format!(
        "{} orders answered 201, each looked up in {} journal records",
        log.created.len(),
        scan.records
    )));

    // 4. No order id journaled twice.
    let mut check = CheckBuilder::new("no_duplicate_journal_orders");
    for (key, orders) in &journaled {
        if orders.len() > 1 {
            let seqs: Vec<u64> = orders.iter().map(|o| o.seq).collect();
            check.violation(|| format!("{} is journaled at seqs {seqs:?}", name_of(*key)));
        }
    }
    for order_id in &scan.other_duplicates {
        check.violation(|| format!("{order_id} (another client's) is journaled twice"));
    }
    checks.push(check.finish(format!(
        "{} accepted records of this run, {} of other clients",
        scan.ours.len(),
        scan.other_ids.len()
    )));

    // 5. No order answered 201 twice.
    let mut check = CheckBuilder::new("no_double_acceptance");
    let mut created_keys: Vec<OrderKey> = log.created.iter().map(|c| c.key).collect();
    created_keys.sort_unstable();
    for pair in created_keys.windows(2) {
        if pair[0] == pair[1] {
            check.violation(|| format!("{} was answered 201 more than once", name_of(pair[0])));
        }
    }
    checks.push(check.finish("each order id answered 201 at most once".into()));

    // 6. Replays carry the original seq.
    let mut check = CheckBuilder::new("replays_match_originals");
    for &(key, seq) in &log.replayed {
        match journaled.get(&key).and_then(|orders| orders.first()) {
            Some(order) if order.seq == seq => {}
            Some(order) => check.violation(|| {
                format!(
                    "{} was replayed with seq {seq} but is journaled at seq {}",
                    name_of(key),
                    order.seq
                )
            }),
            None => check.violation(|| {
                format!(
                    "{} was replayed (seq {seq}) but is not in the journal",
                    name_of(key)
                )
            }),
        }
    }
    checks.push(check.finish(format!("{} replays compared", log.replayed.len())));

    // 7. Nothing taken without a 201 (or a lost answer).
    let mut check = CheckBuilder::new("nothing_taken_without_201");
    let created_set: HashSet<OrderKey> = created_keys.iter().copied().collect();
    let uncertain: HashSet<OrderKey> = log.uncertain.iter().copied().collect();
    let mut answer_lost = 0u64;
    for order in &scan.ours {
        if created_set.contains(&order.key) {
            continue;
        }
        if uncertain.contains(&order.key) {
            answer_lost += 1;
        } else {
            check.violation(|| {
                format!(
                    "{} is journaled (seq {}) but was never answered 201",
                    name_of(order.key),
                    order.seq
                )
            });
        }
    }
    checks.push(check.finish(format!(
        "{} journaled orders of this run; {answer_lost} of them had their answer lost in transport",
        scan.ours.len()
    )));

    AuditReport {
        passed: checks.iter().all(|c| c.passed),
        checks,
        journal_records: scan.records,
        orders_journaled: scan.ours.len() as u64,
        orders_created_seen: log.created.len() as u64,
        orders_answer_lost: answer_lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::order_key;

    const RUN: &str = "r1";

    fn skus() -> Vec<SkuSpec> {
        vec![SkuSpec {
            name: "S-r1-0".into(),
            stock: 3,
            per_user_limit: 0,
            max_per_order: 1,
            payment_timeout_s: 900,
        }]
    }

    fn state(available: u64, reserved: u64) -> Vec<Option<SkuState>> {
        vec![Some(SkuState {
            sku: "S-r1-0".into(),
            stock_total: 3,
            available,
            reserved,
            sold: 0,
        })]
    }

    fn accepted(seq: u64, key: OrderKey) -> String {
        format!(
            r#"{{"seq":{seq},"at":"2026-11-26T21:51:19.786Z","at_ms":1,"type":"accepted","order_id":"{}","user_id":"u1","sku":"S-r1-0","qty":1,"payment":"prepaid"}}"#,
            crate::workload::order_id(RUN, key)
        )
    }

    fn scan(lines: &[String]) -> JournalScan {
        let mut scan = JournalScan::new(RUN, &skus());
        scan.add_line(r#"{"seq":1,"at":"x","at_ms":1,"type":"sku","sku":"S-r1-0","stock_total":3,"per_user_limit":0,"max_per_order":1,"payment_timeout_s":900}"#).unwrap();
        for line in lines {
            scan.add_line(line).unwrap();
        }
        scan
    }

    fn created(key: OrderKey, seq: u64) -> Created {
        Created {
            key,
            seq,
            sku_index: 0,
            qty: 1,
        }
    }

    fn failed(report: &AuditReport) -> Vec<&'static str> {
        report
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        let (a, b) = (order_key(0, 0), order_key(1, 0));
        let log = OrderLog {
            created: vec![created(a, 2), created(b, 3)],
            replayed: vec![(a, 2)],
            uncertain: vec![],
        };
        let report = audit(
            RUN,
            &skus(),
            &state(1, 2),
            &scan(&[accepted(2, a), accepted(3, b)]),
            &log,
        );
        assert!(report.passed, "{:#?}", report.checks);
        assert_eq!(report.orders_journaled, 2);
    }

    #[test]
    fn the_audit_detects_an_oversell() {
        let keys: Vec<OrderKey> = (0..4).map(|n| order_key(0, n)).collect();
        let lines: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| accepted(i as u64 + 2, *k))
            .collect();
        let log = OrderLog {
            created: keys
                .iter()
                .enumerate()
                .map(|(i, k)| created(*k, i as u64 + 2))
                .collect(),
            ..OrderLog::default()
        };
        // The engine claims 4 reserved of 3: the figures no longer add up either.
        let report = audit(RUN, &skus(), &state(0, 4), &scan(&lines), &log);
        assert_eq!(failed(&report), vec!["stock_conserved", "no_oversell"]);
        let oversell = &report.checks[1];
        assert!(
            oversell.violations[0].contains("4 units journaled, stock is 3"),
            "{oversell:?}"
        );
    }

    #[test]
    fn the_audit_detects_a_lost_201_order() {
        let (a, b) = (order_key(0, 0), order_key(0, 1));
        let log = OrderLog {
            created: vec![created(a, 2), created(b, 3)],
            ..OrderLog::default()
        };
        // b was answered 201 but never reached the journal (and stock says 1 taken).
        let report = audit(RUN, &skus(), &state(2, 1), &scan(&[accepted(2, a)]), &log);
        assert_eq!(failed(&report), vec!["created_orders_journaled"]);
        assert!(report.checks[2].violations[0].contains("r1-0-1 was answered 201 (seq 3)"));
    }

    #[test]
    fn the_audit_detects_a_201_journaled_with_another_qty() {
        let a = order_key(0, 0);
        let mut ordered = created(a, 2);
        ordered.qty = 2;
        let log = OrderLog {
            created: vec![ordered],
            ..OrderLog::default()
        };
        // Journaled (and taken) with qty 1, though the generator ordered 2.
        let report = audit(RUN, &skus(), &state(2, 1), &scan(&[accepted(2, a)]), &log);
        assert_eq!(failed(&report), vec!["created_orders_journaled"]);
        assert!(
            report.checks[2].violations[0].contains("qty 2 but is journaled with qty 1"),
            "{:?}",
            report.checks[2]
        );
    }

    #[test]
    fn only_this_runs_records_count_as_the_run_moving() {
        let mut scan = JournalScan::new(RUN, &skus());
        scan.add_line(r#"{"seq":1,"type":"accepted","order_id":"x-1","sku":"ELSE","qty":1}"#)
            .unwrap();
        assert_eq!((scan.records, scan.run_records), (1, 0));
        scan.add_line(&accepted(2, order_key(0, 0))).unwrap();
        scan.add_line(r#"{"seq":3,"type":"accepted","order_id":"x-2","sku":"S-r1-0","qty":1}"#)
            .unwrap();
        assert_eq!((scan.records, scan.run_records), (3, 2));
    }

    #[test]
    fn the_audit_detects_a_duplicate_journal_order() {
        let a = order_key(2, 7);
        let log = OrderLog {
            created: vec![created(a, 2)],
            ..OrderLog::default()
        };
        let report = audit(
            RUN,
            &skus(),
            &state(1, 2),
            &scan(&[accepted(2, a), accepted(3, a)]),
            &log,
        );
        let failed = failed(&report);
        assert!(
            failed.contains(&"no_duplicate_journal_orders"),
            "{failed:?}"
        );
        assert!(failed.contains(&"created_orders_journaled"), "{failed:?}");
        assert!(report.checks[3].violations[0].contains("seqs [2, 3]"));
    }

    #[test]
    fn the_audit_detects_duplicates_of_other_clients_orders() {
        let other = r#"{"seq":5,"type":"accepted","order_id":"x-1","sku":"ELSE","qty":1}"#;
        let again = r#"{"seq":6,"type":"accepted","order_id":"x-1","sku":"ELSE","qty":1}"#;
        let scan = scan(&[other.into(), again.into()]);
        let report = audit(RUN, &skus(), &state(3, 0), &scan, &OrderLog::default());
        assert_eq!(failed(&report), vec!["no_duplicate_journal_orders"]);
    }

    #[test]
    fn the_audit_detects_a_wrong_seq_a_double_201_and_a_bad_replay() {
        let a = order_key(0, 0);
        let log = OrderLog {
            created: vec![created(a, 9), created(a, 2)],
            replayed: vec![(a, 4)],
            uncertain: vec![],
        };
        let report = audit(RUN, &skus(), &state(2, 1), &scan(&[accepted(2, a)]), &log);
        assert_eq!(
            failed(&report),
            vec![
                "created_orders_journaled",
                "no_double_acceptance",
                "replays_match_originals"
            ]
        );
    }

    #[test]
    fn an_order_journaled_without_a_201_fails_unless_its_answer_was_lost() {
        let a = order_key(0, 0);
        let lines = [accepted(2, a)];
        let report = audit(
            RUN,
            &skus(),
            &state(2, 1),
            &scan(&lines),
            &OrderLog::default(),
        );
        assert_eq!(failed(&report), vec!["nothing_taken_without_201"]);
        let lost = OrderLog {
            uncertain: vec![a],
            ..OrderLog::default()
        };
        let report = audit(RUN, &skus(), &state(2, 1), &scan(&lines), &lost);
        assert!(report.passed, "{:#?}", report.checks);
        assert_eq!(report.orders_answer_lost, 1);
    }

    #[test]
    fn returned_stock_is_subtracted_from_the_journaled_units() {
        let a = order_key(0, 0);
        let cancel = format!(
            r#"{{"seq":3,"type":"cancel","order_id":"{}"}}"#,
            crate::workload::order_id(RUN, a)
        );
        let log = OrderLog {
            created: vec![created(a, 2)],
            ..OrderLog::default()
        };
        let report = audit(
            RUN,
            &skus(),
            &state(3, 0),
            &scan(&[accepted(2, a), cancel]),
            &log,
        );
        assert!(report.passed, "{:#?}", report.checks);
    }

    #[test]
    fn only_a_restocked_return_gives_units_back_and_an_exchange_takes_one() {
        let a = order_key(0, 0);
        let id = crate::workload::order_id(RUN, a);
        let log = OrderLog {
            created: vec![created(a, 2)],
            ..OrderLog::default()
        };
        let kept = format!(r#"{{"seq":3,"type":"return","order_id":"{id}","restock":false}}"#);
        let back = format!(r#"{{"seq":3,"type":"return","order_id":"{id}","restock":true}}"#);
        let audit_of = |line: &String, available| {
            audit(
                RUN,
                &skus(),
                &state(available, 0),
                &scan(&[accepted(2, a), line.clone()]),
                &log,
            )
        };
        // Kept by the buyer: one unit still taken; restocked: none.
        assert!(!audit_of(&kept, 3).passed);
        assert!(audit_of(&back, 3).passed);
        // An exchange to this SKU takes one more unit.
        let exchange =
            r#"{"seq":4,"type":"exchange","order_id":"x-other","sku":"S-r1-0","status":"shipped"}"#
                .to_string();
        let scan = scan(&[accepted(2, a), back.clone(), exchange]);
        assert_eq!(scan.accepted_units, vec![2]);
    }

    #[test]
    fn unreadable_sku_figures_fail_the_audit() {
        let report = audit(RUN, &skus(), &[None], &scan(&[]), &OrderLog::default());
        assert_eq!(failed(&report), vec!["stock_conserved"]);
    }

    #[test]
    fn journal_lines_must_be_json_with_increasing_seqs() {
        let mut scan = JournalScan::new(RUN, &skus());
        assert!(scan.add_line("not json").is_err());
        scan.add_line(r#"{"seq":5,"type":"sku","sku":"S"}"#)
            .unwrap();
        assert!(
            scan.add_line(r#"{"seq":5,"type":"sku","sku":"S"}"#)
                .unwrap_err()
                .contains("strictly")
        );
    }
}
