//! An exchange's settle is the second half of something already journaled: it must reach the
//! SKU's shard however long that shard's mailbox stays full. Here a slow disk (every
//! fdatasync takes [`SLOW_SYNC`]) keeps the exchange SKU's shard in one commit while its
//! one-command mailbox is full, longer than the patience of a shed-able send (1 s): the
//! exchange must still be settled before its client is answered, a checkpoint must then be
//! possible (no hold outstanding), and the SKU's figures must be what the journal says after
//! a restart.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::in_process::{self, NewOrder, act};
use common::stalling_disk::StallingDisk;
use stampede::config::Config;
use stampede::engine::{Engine, SkuView};
use stampede::order::{Action, Payment};
use stampede::shard::{ActionOutcome, Clock, OrderOutcome, SkuUpdate};

/// The order's SKU (slot 0: shard 0) and the exchange's SKU (slot 1: shard 1).
const ORDER_SKU: &str = "EX-A";
const EXCHANGE_SKU: &str = "EX-B";
/// Longer than a patient send lasts (1000 tries 1 ms apart: 1 to 2 s with the timer's
/// rounding), so a full mailbox outlasts it.
const SLOW_SYNC: Duration = Duration::from_millis(4000);

fn config(data_dir: &Path) -> Config {
    in_process::config(
        data_dir,
        &[
            ("STAMPEDE_JOURNAL_FSYNC", "always"),
            ("STAMPEDE_JOURNAL_PREALLOCATE", "false"),
            ("STAMPEDE_SHARDS", "2"),
            ("STAMPEDE_SHARD_QUEUE_CAPACITY", "1"),
        ],
    )
}

/// Puts an order in its shard's mailbox; `None` when the mailbox is full.
fn submit(
    engine: &Engine,
    id: &str,
    sku: &str,
) -> Option<tokio::sync::oneshot::Receiver<OrderOutcome>> {
    in_process::submit(engine, NewOrder::new(id, id, sku, Payment::Cod))
}

fn figures(engine: &Engine) -> SkuView {
    engine.sku_view(EXCHANGE_SKU).expect("SKU exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_is_settled_even_when_the_other_shards_mailbox_stays_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let disk = Arc::new(StallingDisk::new(SLOW_SYNC));
    let slow = disk.stalling.clone();
    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::start_with(&config, Clock::system(), disk))
            .await
            .unwrap()
            .expect("engine starts")
            .0
    };
    for sku in [ORDER_SKU, EXCHANGE_SKU] {
        let update = SkuUpdate {
            stock: Some(100),
            per_user_limit: Some(0),
            max_per_order: Some(1),
            payment_timeout_s: Some(900),
        };
        engine.put_sku(sku, update).await.unwrap();
    }
    assert_eq!(engine.slot_of(ORDER_SKU).map(|s| s % 2), Some(0));
    assert_eq!(engine.slot_of(EXCHANGE_SKU).map(|s| s % 2), Some(1));
    // A shipped order on the first SKU, ready to be exchanged to the second.
    let placed = submit(&engine, "x", ORDER_SKU).expect("room");
    assert!(matches!(
        placed.await.unwrap(),
        OrderOutcome::Accepted { .. }
    ));
    for stage in [
        Action::Verify,
        Action::Print,
        Action::Pick,
        Action::Check,
        Action::Pack,
        Action::Weigh,
        Action::Ship,
    ] {
        let outcome = act(&engine, "x", stage, None).await;
        assert!(matches!(outcome, ActionOutcome::Done { .. }), "{outcome:?}");
    }

    // The disk turns slow. The exchange holds a unit on shard 1 at once (its mailbox is
    // empty) and its record goes into a group commit that takes SLOW_SYNC.
    slow.store(true, Ordering::Relaxed);
    let exchange = {
        let engine = engine.clone();
        tokio::spawn(async move { act(&engine, "x", Action::Exchange, Some(EXCHANGE_SKU)).await })
    };
    while figures(&engine).reserved == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Orders for the exchange SKU now wait for the *next* group commit (another SLOW_SYNC
    // after the exchange's): shard 1 sits in that commit with its mailbox full, so when the
    // exchange is durable its settle finds no room for well over a second.
    let mut fillers = Vec::new();
    for round in 0..3 {
        let mut n = 0;
        while let Some(outcome) = submit(&engine, &format!("f{round}-{n}"), EXCHANGE_SKU) {
            fillers.push(outcome);
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!fillers.is_empty());

    let outcome = exchange.await.unwrap();
    assert!(matches!(outcome, ActionOutcome::Done { .. }), "{outcome:?}");
    // Answered only once settled: the held unit is sold, not reserved.
    let after_exchange = figures(&engine);
    assert_eq!(after_exchange.reserved, 0, "{after_exchange:?}");
    let filled = fillers.len() as u64;
    for filler in fillers {
        assert!(matches!(
            filler.await.unwrap(),
            OrderOutcome::Accepted { .. }
        ));
    }
    slow.store(false, Ordering::Relaxed);

    // No hold outstanding: a checkpoint is taken.
    let live = figures(&engine);
    assert_eq!(live.sold, 1 + filled, "{live:?}");
    assert_eq!(live.reserved, 0, "{live:?}");
    let checkpointing = engine.clone();
    tokio::task::spawn_blocking(move || checkpointing.checkpoint())
        .await
        .unwrap()
        .expect("a checkpoint is taken once the exchange is settled");

    // The journal says the same after a restart.
    tokio::task::spawn_blocking(move || {
        engine.shutdown().unwrap();
        drop(engine);
        let (engine, _) = Engine::start_with_clock(&config, Clock::system()).unwrap();
        assert_eq!(figures(&engine), live, "restarted");
        engine.shutdown().unwrap();
    })
    .await
    .unwrap();
}
