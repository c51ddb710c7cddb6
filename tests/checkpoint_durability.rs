//! Checkpoints and the journal they stand for, under the weaker fsync policies and after
//! damage: a checkpoint never covers records a power cut could take back, start-up refuses a
//! journal that does not resume right after the state it starts from, and retention keeps
//! what the older checkpoint needs, so a damaged newest one is survivable.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::in_process::{self, NewOrder, place_accepted};
use stampede::config::Config;
use stampede::engine::Engine;
use stampede::order::Payment;
use stampede::shard::{Clock, SkuUpdate};

const SKU: &str = "CD-A";

fn config(data_dir: &Path, fsync: &'static str) -> Config {
    in_process::config(
        data_dir,
        &[
            ("STAMPEDE_JOURNAL_FSYNC", fsync),
            // Long enough that the interval thread never syncs during a test.
            ("STAMPEDE_JOURNAL_FSYNC_INTERVAL_MS", "60000"),
            ("STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX", "65536"),
            ("STAMPEDE_SHARDS", "2"),
        ],
    )
}

fn runtime() -> tokio::runtime::Runtime {
    in_process::runtime(2)
}

async fn place(engine: &Arc<Engine>, id: &str) -> u64 {
    place_accepted(engine, NewOrder::new(id, id, SKU, Payment::Cod)).await
}

/// Starts an engine with one SKU and `orders` accepted orders named `{prefix}{n}`.
fn start_with_orders(config: &Config, prefix: &str, orders: usize) -> Arc<Engine> {
    let (engine, _) = Engine::start_with_clock(config, Clock::system()).unwrap();
    runtime().block_on(async {
        if engine.slot_of(SKU).is_none() {
            let update = SkuUpdate {
                stock: Some(100_000),
                per_user_limit: Some(0),
                max_per_order: Some(1),
                payment_timeout_s: Some(900),
            };
            engine.put_sku(SKU, update).await.unwrap();
        }
        for n in 0..orders {
            place(&engine, &format!("{prefix}{n}")).await;
        }
    });
    engine
}

#[test]
fn a_checkpoint_never_covers_records_that_are_not_synced() {
    for fsync in ["interval", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir.path().join("data"), fsync);
        let engine = start_with_orders(&config, "o", 50);
        let seq = engine.checkpoint().expect("checkpoint written");
        assert!(seq >= 51, "{fsync}: checkpoint at seq {seq}");
        // A power cut now keeps exactly what is synced: the checkpoint must not be ahead.
        assert!(
            engine.journal().synced_seq() >= seq,
            "{fsync}: checkpoint covers seq {seq} but the journal is synced through {}",
            engine.journal().synced_seq()
        );
        engine.shutdown().unwrap();
    }
}

#[test]
fn start_up_refuses_a_journal_that_resumes_past_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config(&data, "always");
    let engine = start_with_orders(&config, "o", 30);
    let checkpoint_seq = engine.checkpoint().unwrap();
    drop(start_more(engine, "p", 30));
    // The records after the checkpoint are gone and an empty segment names a later seq
    // (what a crash right after a rotation leaves, once the segments before it are lost).
    let journal = data.join("journal");
    for entry in std::fs::read_dir(&journal).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let later = checkpoint_seq + 20;
    let mut header = b"STMPJRN1".to_vec();
    header.extend_from_slice(&later.to_le_bytes());
    std::fs::write(journal.join(format!("{later:020}.seg")), header).unwrap();
    let error = match Engine::start_with_clock(&config, Clock::system()) {
        Ok(_) => panic!("an engine started with records missing after its checkpoint"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("records are missing"), "{error}");
    assert!(
        error.contains(&format!("needs seq {} next", checkpoint_seq + 1)),
        "{error}"
    );
}

/// Places `orders` more orders and shuts the engine down.
fn start_more(engine: Arc<Engine>, prefix: &str, orders: usize) -> Arc<Engine> {
    runtime().block_on(async {
        for n in 0..orders {
            place(&engine, &format!("{prefix}{n}")).await;
        }
    });
    engine.shutdown().unwrap();
    engine
}

#[test]
fn a_damaged_newest_checkpoint_is_refused_when_retention_took_what_the_older_needs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config(&data, "always");
    let engine = start_with_orders(&config, "a", 1500);
    // Two passes with orders between them: two checkpoints, segments deleted behind the
    // newest.
    let mut deleted = engine.retention_pass(Duration::ZERO).unwrap();
    runtime().block_on(async {
        for n in 0..1500 {
            place(&engine, &format!("b{n}")).await;
        }
    });
    deleted += engine.retention_pass(Duration::ZERO).unwrap();
    assert!(deleted > 0, "retention deleted nothing");
    engine.shutdown().unwrap();
    drop(engine);

    // The newest checkpoint is damaged (a flipped bit, not a power cut: checkpoints are
    // written whole or not at all). The older one no longer has the records after it, so
    // recovery must refuse rather than start without the orders in between.
    let checkpoints = stampede::checkpoint::list(&data.join("checkpoints")).unwrap();
    assert_eq!(checkpoints.len(), 2, "{checkpoints:?}");
    let newest = &checkpoints[0].1;
    let mut bytes = std::fs::read(newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(newest, bytes).unwrap();
    let error = match Engine::start_with_clock(&config, Clock::system()) {
        Ok(_) => panic!("started from the older checkpoint with its records deleted"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("records are missing"), "{error}");
}
