//! Checkpoints taken while the engine is busy: a restart from the newest checkpoint plus the
//! records after it must rebuild exactly the live state, whatever was in flight when the
//! shards paused (orders, payments, cross-shard exchanges with their holds).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::in_process::{self, NewOrder, act, action_request, place_accepted, runtime};
use stampede::config::Config;
use stampede::engine::{ActionRequest, Engine, SkuView};
use stampede::order::{Action, Payment};
use stampede::shard::{ActionOutcome, Clock, SkuUpdate};

const ORDERS: usize = 120;

fn config(data_dir: &std::path::Path) -> Config {
    in_process::config(
        data_dir,
        &[("STAMPEDE_JOURNAL_FSYNC", "none"), ("STAMPEDE_SHARDS", "2")],
    )
}

async fn place(engine: &Arc<Engine>, id: &str, sku: &str, payment: Payment) {
    place_accepted(engine, NewOrder::new(id, "u", sku, payment)).await;
}

async fn act_keyed(engine: &Arc<Engine>, id: &str, action: Action, key: &str) -> ActionOutcome {
    let request = ActionRequest {
        reason: Some(format!("{action:?} under {key}")),
        idempotency_key: Some(key.into()),
        ..action_request(id, action)
    };
    engine.order_action(request).await.expect("action decided")
}

fn stock(engine: &Engine) -> Vec<SkuView> {
    let views = ["CK-A", "CK-B"].map(|sku| engine.sku_view(sku).unwrap());
    for view in &views {
        assert_eq!(
            view.available + view.reserved + view.sold,
            view.stock_total,
            "{view:?}"
        );
    }
    views.to_vec()
}

#[test]
fn checkpoints_taken_under_exchanges_and_payments_restart_to_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir.path().join("data"));
    let runtime = runtime(2);
    let (engine, _) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    runtime.block_on(async {
        for sku in ["CK-A", "CK-B"] {
            let update = SkuUpdate {
                stock: Some(ORDERS as u64 * 2),
                per_user_limit: Some(0),
                max_per_order: Some(1),
                payment_timeout_s: Some(900),
            };
            engine.put_sku(sku, update).await.unwrap();
        }
        // Orders on A, shipped (cash on delivery), ready to be exchanged to B.
        for n in 0..ORDERS {
            let id = format!("x{n}");
            place(&engine, &id, "CK-A", Payment::Cod).await;
            for stage in [
                Action::Verify,
                Action::Print,
                Action::Pick,
                Action::Check,
                Action::Pack,
                Action::Weigh,
                Action::Ship,
            ] {
                assert!(matches!(
                    act(&engine, &id, stage, None).await,
                    ActionOutcome::Done { .. }
                ));
            }
        }
    });
    // Checkpoints in a loop on their own thread while exchanges, new orders and payments run.
    let checkpointer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for _ in 0..25 {
                engine.checkpoint().expect("checkpoint written");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..ORDERS {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("x{n}");
                let outcome = act(&engine, &id, Action::Exchange, Some("CK-B")).await;
                assert!(matches!(outcome, ActionOutcome::Done { .. }), "{outcome:?}");
                let paid = format!("p{n}");
                place(&engine, &paid, "CK-B", Payment::Prepaid).await;
                if n % 2 == 0 {
                    let outcome = act(&engine, &paid, Action::Pay, None).await;
                    assert!(matches!(outcome, ActionOutcome::Done { .. }), "{outcome:?}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    checkpointer.join().unwrap();
    let live = stock(&engine);
    let live_orders = order_statuses(&engine);
    assert_eq!(live[1].sold, ORDERS as u64 + ORDERS as u64 / 2, "{live:?}");
    engine.shutdown().unwrap();
    drop(engine);
    let (engine, report) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    assert!(
        report.checkpoint_seq.is_some(),
        "recovery started from a checkpoint, not seq 1"
    );
    assert_eq!(stock(&engine), live, "restarted from a checkpoint");
    assert_eq!(
        order_statuses(&engine),
        live_orders,
        "orders restarted from a checkpoint"
    );
    engine.shutdown().unwrap();
}

/// Every order's id and status, as `GET /v1/orders/{id}` shows them.
fn order_statuses(engine: &Arc<Engine>) -> Vec<(String, &'static str)> {
    (0..ORDERS)
        .flat_map(|n| [format!("x{n}"), format!("p{n}")])
        .map(|id| {
            let view = engine
                .order_view(&id)
                .expect("history readable")
                .unwrap_or_else(|| panic!("order {id} is known"));
            (id, view.status)
        })
        .collect()
}

/// Idempotency keys bound before a checkpoint come back from it (the records before its seq
/// are not replayed), those bound after it from the journal.
#[test]
fn idempotency_keys_survive_a_restart_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir.path().join("data"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (engine, _) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    let done_seq = |outcome: ActionOutcome| match outcome {
        ActionOutcome::Done { seq, .. } => seq,
        other => panic!("not done: {other:?}"),
    };
    let paid_seq = runtime.block_on(async {
        for sku in ["CK-A", "CK-B"] {
            let update = SkuUpdate {
                stock: Some(10),
                ..SkuUpdate::default()
            };
            engine.put_sku(sku, update).await.unwrap();
        }
        place(&engine, "key-a", "CK-A", Payment::Prepaid).await;
        place(&engine, "key-b", "CK-B", Payment::Prepaid).await;
        let paid = done_seq(act_keyed(&engine, "key-a", Action::Pay, "pay-1").await);
        done_seq(act_keyed(&engine, "key-b", Action::Pay, "pay-1").await);
        paid
    });
    let checkpoint_seq = engine.checkpoint().expect("checkpoint written");
    let verified_seq = runtime.block_on(async {
        done_seq(act_keyed(&engine, "key-a", Action::Verify, "verify-1").await)
    });
    assert!(paid_seq <= checkpoint_seq && verified_seq > checkpoint_seq);
    engine.shutdown().unwrap();
    drop(engine);

    let (engine, report) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    assert_eq!(report.checkpoint_seq, Some(checkpoint_seq));
    runtime.block_on(async {
        for (id, action, key, seq) in [
            ("key-a", Action::Pay, "pay-1", paid_seq),
            ("key-a", Action::Verify, "verify-1", verified_seq),
        ] {
            let outcome = act_keyed(&engine, id, action, key).await;
            assert!(
                matches!(outcome, ActionOutcome::Replayed { seq: Some(s), .. } if s == seq),
                "{id} {action:?} under {key}: {outcome:?}"
            );
        }
        let paid_then = engine.order_view_as_of("key-a", paid_seq).unwrap().unwrap();
        assert_eq!(paid_then.status, "paid");
        assert_eq!(paid_then.history.len(), 2, "{paid_then:?}");
        // Another action under a bound key is a conflict; another order's key is its own.
        let outcome = act_keyed(&engine, "key-a", Action::Print, "pay-1").await;
        assert_eq!(outcome, ActionOutcome::IdempotencyConflict);
        let outcome = act_keyed(&engine, "key-b", Action::Verify, "verify-1").await;
        assert!(matches!(outcome, ActionOutcome::Done { .. }), "{outcome:?}");
    });
    engine.shutdown().unwrap();
}

/// A pause taken before a checkpoint comes back from it (its record is not replayed), a
/// resume after it from the journal; a paused SKU refuses new orders after the restart.
#[test]
fn a_pause_before_a_checkpoint_and_a_resume_after_it_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir.path().join("data"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (engine, _) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    runtime.block_on(async {
        for sku in ["CK-A", "CK-B"] {
            let update = SkuUpdate {
                stock: Some(10),
                ..SkuUpdate::default()
            };
            engine.put_sku(sku, update).await.unwrap();
            assert!(engine.pause_sku(sku, true).await.unwrap().paused);
        }
    });
    let checkpoint_seq = engine.checkpoint().expect("checkpoint written");
    runtime.block_on(async {
        assert!(!engine.pause_sku("CK-B", false).await.unwrap().paused);
    });
    engine.shutdown().unwrap();
    drop(engine);

    let (engine, report) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    assert_eq!(report.checkpoint_seq, Some(checkpoint_seq));
    assert!(engine.sku_paused("CK-A"), "the checkpoint's pause is kept");
    assert!(!engine.sku_paused("CK-B"), "the journal's resume is kept");
    runtime.block_on(async {
        let refused =
            in_process::place(&engine, NewOrder::new("p-1", "u", "CK-A", Payment::Cod)).await;
        assert_eq!(refused, stampede::order::OrderOutcome::Paused);
        assert_eq!(
            engine.sku_view("CK-A").unwrap().available,
            10,
            "nothing taken"
        );
        place(&engine, "p-2", "CK-B", Payment::Cod).await;
    });
    engine.shutdown().unwrap();
}
