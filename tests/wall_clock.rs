//! A wall clock that steps backward and forward again (an NTP correction, an operator's
//! `date -s`) must not leave an unpaid order reserved past its deadline. Deadlines are
//! wall-clock milliseconds (they survive restarts); the shard's sleep until the next timer
//! is capped, so that it re-reads the clock within a bounded time whatever the clock did
//! while it slept.
//!
//! The manual clock drives the shard's real wait: it is never ticked here, and no other
//! command reaches the shard after the clock moves.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::in_process::{self, NewOrder, place_accepted};
use stampede::config::Config;
use stampede::engine::Engine;
use stampede::limits;
use stampede::order::Payment;
use stampede::shard::{Clock, SkuUpdate};

const SKU: &str = "WC-1";
const START_MS: u64 = 1_800_000_000_000;
const TIMEOUT_S: u32 = 60;
const HOUR_MS: u64 = 3_600_000;

fn config(data_dir: &std::path::Path) -> Config {
    in_process::config(
        data_dir,
        &[("STAMPEDE_JOURNAL_FSYNC", "none"), ("STAMPEDE_SHARDS", "1")],
    )
}

async fn place(engine: &Arc<Engine>, id: &str) {
    place_accepted(engine, NewOrder::new(id, "u", SKU, Payment::Prepaid)).await;
}

fn status(engine: &Engine, id: &str) -> &'static str {
    engine
        .order_view(id)
        .expect("history readable")
        .expect("order known")
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_expires_after_the_wall_clock_steps_back_and_forward_without_other_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let clock = Clock::manual(START_MS);
    let (engine, _) = Engine::start_with_clock(&config, clock.clone()).unwrap();
    let update = SkuUpdate {
        stock: Some(10),
        per_user_limit: Some(0),
        max_per_order: Some(1),
        payment_timeout_s: Some(TIMEOUT_S),
    };
    engine.put_sku(SKU, update).await.unwrap();
    place(&engine, "unpaid").await;
    assert_eq!(engine.sku_view(SKU).unwrap().reserved, 1);

    // The clock steps back an hour; one wake-up lets the shard go to sleep reading it (its
    // reminder is now an hour and thirty seconds away on that clock).
    clock.set_ms(START_MS - HOUR_MS);
    engine.tick();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The clock steps forward again, past the deadline. Nothing else is sent to the shard.
    clock.set_ms(START_MS + u64::from(TIMEOUT_S) * 1000 + 1);

    // The reminder and then the expiry fire within two capped sleeps (and some slack).
    let bound = 2 * Duration::from_millis(limits::TIMER_SLEEP_MS_MAX) + Duration::from_secs(2);
    let started = Instant::now();
    while engine.sku_view(SKU).unwrap().reserved != 0 {
        assert!(
            started.elapsed() < bound,
            "the unpaid order is still reserved {:?} after its deadline passed",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sku = engine.sku_view(SKU).unwrap();
    assert_eq!(
        (sku.available, sku.reserved, sku.sold),
        (10, 0, 0),
        "{sku:?}"
    );
    assert_eq!(status(&engine, "unpaid"), "expired");
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap()
        .unwrap();
}
