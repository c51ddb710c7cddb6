//! The checker checks itself: a fold of bad journals must report what is wrong, and answers
//! are judged against what the client knows.

use super::*;

fn record(seq: u64, fields: Value) -> Value {
    let mut record = json!({"seq": seq});
    for (key, value) in fields.as_object().expect("object") {
        record[key] = value.clone();
    }
    record
}

fn sku_record(seq: u64, sku: &str, stock: u64, limit: u64) -> Value {
    record(
        seq,
        json!({"type": "sku", "sku": sku, "stock_total": stock, "per_user_limit": limit,
            "max_per_order": 2}),
    )
}

fn accepted(seq: u64, id: &str, user: &str, sku: &str, qty: u64, payment: &str) -> Value {
    record(
        seq,
        json!({"type": "accepted", "order_id": id, "user_id": user, "sku": sku, "qty": qty,
            "payment": payment}),
    )
}

#[test]
fn the_fold_reports_oversell_limits_double_orders_and_bad_moves() {
    let mut fold = Fold::default();
    fold.apply(sku_record(1, "S", 3, 2));
    fold.apply(accepted(2, "a", "u1", "S", 2, "prepaid"));
    fold.apply(accepted(3, "b", "u1", "S", 1, "cod"));
    assert!(
        fold.violations[0].contains("holds 3 units"),
        "{:?}",
        fold.violations
    );
    fold.apply(accepted(4, "c", "u2", "S", 1, "cod"));
    assert!(
        fold.violations[1].contains("oversold"),
        "{:?}",
        fold.violations
    );
    fold.apply(accepted(5, "a", "u3", "S", 1, "cod"));
    assert!(fold.violations[2].contains("journaled twice"));
    fold.apply(record(
        6,
        json!({"type": "pay", "order_id": "b", "status": "paid", "prev_seq": 3}),
    ));
    assert!(fold.violations[3].contains("while it was confirmed"));
    fold.apply(record(
        8,
        json!({"type": "cancel", "order_id": "a", "status": "cancelled", "prev_seq": 2}),
    ));
    assert!(fold.violations[4].contains("where 7 was due"));
    assert_eq!(fold.violations.len(), 5, "{:?}", fold.violations);
    // The cancel gave a's two reserved units back and freed u1's count.
    assert_eq!(fold.skus["S"].reserved, 0);
    assert_eq!(fold.skus["S"].sold, 2);
    assert_eq!(fold.held[&("u1".to_string(), "S".to_string())], 1);
}

#[test]
fn answers_are_judged_against_what_the_client_knows() {
    let mut model = Model {
        groups: (0..GROUPS).map(|_| Register::default()).collect(),
        ..Model::default()
    };
    let body = json!({"order_id": "x", "user_id": "u", "sku": "CL-HOT-1", "qty": 1,
        "payment": "prepaid"});
    model.orders.push(OrderModel {
        id: "x".into(),
        body,
        sku: 0,
        payment: "prepaid",
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
    let answer = |status: u16, replayed: bool, json: Value| {
        Ok(Answer {
            status,
            replayed,
            text: json.to_string(),
            json,
        })
    };
    // A replay of an order nobody was told about is a lie.
    judge_order_answer(
        &mut model,
        0,
        answer(
            200,
            true,
            json!({"order_id": "x", "status": PENDING, "seq": 7}),
        ),
        "t",
    );
    assert_eq!(model.violations.len(), 1);
    judge_order_answer(
        &mut model,
        0,
        answer(
            201,
            false,
            json!({"order_id": "x", "status": PENDING, "seq": 7}),
        ),
        "t",
    );
    assert_eq!(model.orders[0].seq, Some(7));
    // Durable: a refusal of a retry, or another seq, is wrong.
    judge_order_answer(
        &mut model,
        0,
        answer(
            409,
            false,
            json!({"error": "sold_out", "detail": "no stock"}),
        ),
        "t",
    );
    judge_order_answer(
        &mut model,
        0,
        answer(
            200,
            true,
            json!({"order_id": "x", "status": PENDING, "seq": 8}),
        ),
        "t",
    );
    assert_eq!(model.violations.len(), 3);
    // pending_payment: cancel is done, not refused, and not a replay.
    judge_action_answer(
        &mut model,
        0,
        "cancel",
        None,
        answer(
            409,
            false,
            json!({"error": "invalid_transition",
            "detail": "order x is pending_payment; cancel is not allowed from it"}),
        ),
    );
    assert_eq!(model.violations.len(), 4);
    let view = json!({"order_id": "x", "status": "cancelled",
        "history": [{"event": "accepted", "seq": 7}, {"event": "cancel", "seq": 9}]});
    judge_action_answer(
        &mut model,
        0,
        "cancel",
        None,
        answer(200, false, view.clone()),
    );
    assert_eq!(model.violations.len(), 4, "{:?}", model.violations);
    judge_action_answer(
        &mut model,
        0,
        "cancel",
        None,
        answer(200, false, view.clone()),
    );
    assert_eq!(
        model.violations.len(),
        5,
        "a second cancel must be a replay"
    );
    judge_action_answer(&mut model, 0, "cancel", None, answer(200, true, view));
    assert_eq!(model.violations.len(), 5, "{:?}", model.violations);
}

#[test]
fn the_fold_takes_an_exchange_unit_from_the_other_sku() {
    let mut fold = Fold::default();
    fold.apply(sku_record(1, "S", 3, 0));
    fold.apply(sku_record(2, "T", 1, 0));
    fold.apply(accepted(3, "a", "u1", "S", 1, "cod"));
    let exchange = |seq: u64, prev: u64, sku: Value| {
        record(
            seq,
            json!({"type": "exchange", "order_id": "a", "status": "shipped", "prev_seq": prev,
                "sku": sku}),
        )
    };
    fold.apply(exchange(4, 3, json!("T")));
    assert!(
        fold.violations[0].contains("while it was confirmed"),
        "{:?}",
        fold.violations
    );
    let mut seq = 4;
    for (action, status) in STAGES.iter().take(7) {
        seq += 1;
        fold.apply(record(
            seq,
            json!({"type": action, "order_id": "a", "status": status, "prev_seq": seq - 1
                - u64::from(seq == 5)}),
        ));
    }
    assert_eq!(fold.violations.len(), 1, "{:?}", fold.violations);
    assert_eq!(fold.orders["a"].status, "shipped");
    fold.apply(exchange(12, 11, json!("T")));
    assert_eq!(fold.violations.len(), 1, "{:?}", fold.violations);
    assert_eq!((fold.skus["T"].sold, fold.skus["S"].sold), (1, 1));
    fold.apply(exchange(13, 12, json!("T")));
    assert!(
        fold.violations[1].contains("oversold by the exchange"),
        "{:?}",
        fold.violations
    );
    fold.apply(exchange(14, 13, Value::Null));
    assert!(
        fold.violations[2].contains("exchange of a with sku null"),
        "{:?}",
        fold.violations
    );
    // The exchanges took no unit of the order's own SKU and left the buyer's count alone.
    assert_eq!(fold.skus["S"].sold, 1);
    assert_eq!(fold.held[&("u1".to_string(), "S".to_string())], 1);
    assert_eq!(
        fold.orders["a"].exchanges,
        vec![
            (12, "T".to_string()),
            (13, "T".to_string()),
            (14, String::new())
        ]
    );
}

#[test]
fn exchange_answers_are_judged_by_state_and_journal() {
    let mut model = Model {
        groups: (0..GROUPS).map(|_| Register::default()).collect(),
        ..Model::default()
    };
    let body = json!({"order_id": "x", "user_id": "u", "sku": "CL-ROOMY", "qty": 1,
        "payment": "cod"});
    model.orders.push(OrderModel {
        id: "x".into(),
        body,
        sku: 3,
        payment: "cod",
        seq: Some(7),
        doubt: false,
        known: Some("confirmed".into()),
        last: Some("accepted"),
        exchanges: Vec::new(),
        exchanges_sent: 0,
        busy: true,
        lost: 0,
        acked_at: None,
    });
    let answer = |status: u16, json: Value| {
        Ok(Answer {
            status,
            replayed: false,
            text: json.to_string(),
            json,
        })
    };
    // A confirmed order takes no exchange: sold out is a lie (the state is judged first).
    let sold_out = json!({"error": "sold_out", "detail": "no unit of CL-HOT-2 left"});
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-2"),
        answer(409, sold_out.clone()),
    );
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    assert!(
        model.orders[0].doubt,
        "a wrong answer leaves the state unknown"
    );
    model.orders[0].doubt = false;
    model.orders[0].known = Some("completed".into());
    model.orders[0].last = Some("complete");
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-2"),
        answer(409, sold_out),
    );
    assert_eq!(model.violations.len(), 1, "{:?}", model.violations);
    // Done: shipped, and the newest record is this exchange, of this SKU.
    let view = |sku: &str| {
        json!({"order_id": "x", "status": "shipped", "history": [{"event": "accepted", "seq": 7},
            {"event": "exchange", "seq": 20, "sku": sku}]})
    };
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-1"),
        answer(200, view("CL-HOT-2")),
    );
    assert_eq!(model.violations.len(), 2, "{:?}", model.violations);
    model.orders[0].doubt = false;
    model.orders[0].known = Some("completed".into());
    model.orders[0].last = Some("complete");
    judge_action_answer(
        &mut model,
        0,
        "exchange",
        Some("CL-HOT-1"),
        answer(200, view("CL-HOT-1")),
    );
    assert_eq!(model.violations.len(), 2, "{:?}", model.violations);
    assert_eq!(model.orders[0].known.as_deref(), Some("shipped"));
    // A shipped order whose latest record is an exchange: a `ship` is refused, not replayed.
    let refused = json!({"error": "invalid_transition",
        "detail": "order x is shipped; ship is not allowed from it"});
    judge_action_answer(&mut model, 0, "ship", None, answer(409, refused.clone()));
    assert_eq!(model.violations.len(), 2, "{:?}", model.violations);
    model.orders[0].last = Some("ship");
    judge_action_answer(&mut model, 0, "ship", None, answer(409, refused));
    assert_eq!(model.violations.len(), 3, "{:?}", model.violations);
    // The journal may hold the exchanges wrongly answered, and must hold the one done.
    assert_eq!(
        model.orders[0].exchanges,
        vec![("CL-HOT-2", false), ("CL-HOT-1", false), ("CL-HOT-1", true)]
    );
}
