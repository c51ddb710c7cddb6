//! The queue-delay gate, end to end: a real engine and the real HTTP server in this process,
//! the journal written through a disk whose `fdatasync` stalls on demand (the overload a
//! flash sale meets most often is a disk that stops keeping up, not a lack of CPU).
//!
//! With `fsync = "always"` a shard waits for each group's fdatasync, so a stalled disk with
//! more orders arriving than one turn takes makes them queue in the shard's mailbox, turn
//! after turn. The gate must see that standing queue, refuse a share of new
//! orders with 503 `overloaded` and a `Retry-After` within its bound, take nothing for them,
//! spare actions on existing orders until more than half the new orders are refused, count
//! them in `/metrics`, and stop shedding once the disk is fast again. Functional checks only
//! (no latency figures): `tests/overload.rs` and `scripts/overload.sh` measure.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::in_process;
use common::metric;
use common::stalling_disk::StallingDisk;
use stampede::config::Config;
use stampede::engine::Engine;
use stampede::http::{self, AppState};
use stampede::shard::{Clock, SkuUpdate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SKU: &str = "QD-1";
/// How long each fdatasync takes while the disk stalls: well over the gate's target.
const STALL: Duration = Duration::from_millis(60);
/// The gate's target in this test.
const TARGET_MS: &str = "10";
/// Orders a shard takes per turn in this test.
const SHARD_BATCH: &str = "8";

fn config(data_dir: &Path) -> Config {
    in_process::config(
        data_dir,
        &[
            ("STAMPEDE_JOURNAL_FSYNC", "always"),
            ("STAMPEDE_SHARDS", "2"),
            ("STAMPEDE_ADMISSION_QUEUE_DELAY_TARGET_MS", TARGET_MS),
            // Small turns, so that 64 clients are several turns of work: a stall then builds a
            // standing queue in the mailbox (with 256-order turns one turn takes them all, and
            // they wait only for the fdatasync, which no refusal shortens).
            ("STAMPEDE_SHARD_BATCH_MAX", SHARD_BATCH),
            ("STAMPEDE_ADMIN_TOKEN", "queue-delay-test-token-0123456789"),
        ],
    )
}

/// One request on a fresh connection; the status, `Retry-After` and body.
async fn request(addr: SocketAddr, head: &str, body: &str) -> (u16, Option<u32>, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{head} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        String::from_utf8(answer).expect("UTF-8 answer")
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    let status = head[9..12].parse().expect("status");
    let retry_after = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    (status, retry_after, body.to_string())
}

fn order_body(id: &str) -> String {
    format!(r#"{{"order_id":"{id}","user_id":"{id}-u","sku":"{SKU}","qty":1,"payment":"prepaid"}}"#)
}

#[derive(Default)]
struct Counts {
    created: AtomicU64,
    shed: AtomicU64,
    other: AtomicU64,
    bad_retry_after: AtomicU64,
}

/// `clients` tasks post new orders back to back until `until`.
async fn hammer(addr: SocketAddr, tag: &str, clients: usize, until: Instant, counts: Arc<Counts>) {
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let counts = counts.clone();
        let tag = tag.to_string();
        tasks.spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                let id = format!("{tag}-{client}-{n}");
                n += 1;
                let (status, retry_after, body) =
                    request(addr, "POST /v1/orders", &order_body(&id)).await;
                match status {
                    201 => counts.created.fetch_add(1, Ordering::Relaxed),
                    503 if body.contains("\"overloaded\"") => {
                        if !retry_after.is_some_and(|s| (1..=10).contains(&s)) {
                            counts.bad_retry_after.fetch_add(1, Ordering::Relaxed);
                        }
                        counts.shed.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => counts.other.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_disk_sheds_new_orders_with_retry_after_takes_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let disk = Arc::new(StallingDisk::new(STALL));
    let stalling = disk.stalling.clone();
    let engine = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::start_with(&config, Clock::system(), disk))
            .await
            .unwrap()
            .expect("engine starts")
            .0
    };
    engine
        .put_sku(
            SKU,
            SkuUpdate {
                stock: Some(1 << 30),
                per_user_limit: Some(0),
                max_per_order: Some(1),
                payment_timeout_s: Some(3600),
            },
        )
        .await
        .unwrap();
    let state = Arc::new(
        AppState::new(16 * 1024, Duration::from_secs(10))
            .with_admission(&config.admission)
            .with_metrics(true),
    );
    state.set_engine(engine.clone());
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));

    // An order placed before the stall, to act on during it.
    let (status, _, _) = request(addr, "POST /v1/orders", &order_body("before-1")).await;
    assert_eq!(status, 201);

    // A fast disk under the same load: nothing is shed.
    let calm = Arc::new(Counts::default());
    hammer(
        addr,
        "calm",
        16,
        Instant::now() + Duration::from_secs(1),
        calm.clone(),
    )
    .await;
    assert_eq!(
        calm.shed.load(Ordering::Relaxed),
        0,
        "shed with a fast disk"
    );
    assert!(calm.created.load(Ordering::Relaxed) > 0);

    // The disk stalls: every group commit takes 60 ms, the shards fall behind, and past the
    // burst allowance (0.5 s) the gate sheds.
    stalling.store(true, Ordering::Relaxed);
    let storm = Arc::new(Counts::default());
    let storm_until = Instant::now() + Duration::from_secs(4);
    let hammering = tokio::spawn(hammer(addr, "storm", 64, storm_until, storm.clone()));
    // While it sheds, a payment for an order accepted earlier is still taken when fewer than
    // half the new orders are refused, and answered either way (200, or 503 with Retry-After).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let probability = state_probability(addr).await;
    let (pay_status, pay_retry, _) = request(addr, "POST /v1/orders/before-1/pay", "{}").await;
    if probability < 0.5 {
        assert_eq!(
            pay_status, 200,
            "a payment refused at shed share {probability}"
        );
    } else {
        assert!(
            pay_status == 200 || (pay_status == 503 && pay_retry.is_some()),
            "payment answered {pay_status}"
        );
    }
    hammering.await.unwrap();
    let shed = storm.shed.load(Ordering::Relaxed);
    let created = storm.created.load(Ordering::Relaxed);
    println!(
        "stalled disk ({STALL:?} per fdatasync), target {TARGET_MS} ms, 64 clients for 4 s: \
         201 {created}, 503 overloaded {shed}, other {}, shed share at 2.5 s {probability:.2}",
        storm.other.load(Ordering::Relaxed)
    );
    assert!(
        shed > 0,
        "nothing shed while the disk stalled ({created} created)"
    );
    assert!(created > 0, "nothing admitted: the sale must keep moving");
    assert_eq!(
        storm.other.load(Ordering::Relaxed),
        0,
        "answers other than 201/503"
    );
    assert_eq!(storm.bad_retry_after.load(Ordering::Relaxed), 0);

    // Nothing shed was taken: the units sold and reserved are exactly the 201s.
    let sku = engine.sku_view(SKU).expect("sku exists");
    let accepted = 1 + calm.created.load(Ordering::Relaxed) + created;
    assert_eq!(sku.reserved + sku.sold, accepted, "{sku:?}");
    let metrics = request(addr, "GET /metrics", "").await.2;
    assert_eq!(
        metric(&metrics, "stampede_shed_total{reason=\"queue_delay\"}") as u64,
        shed + u64::from(pay_status == 503)
    );

    // The disk is fast again: within a second nothing is shed, and orders are taken.
    stalling.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = Arc::new(Counts::default());
        hammer(
            addr,
            "after",
            4,
            Instant::now() + Duration::from_millis(300),
            after.clone(),
        )
        .await;
        if after.shed.load(Ordering::Relaxed) == 0 && after.created.load(Ordering::Relaxed) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still shedding 5 s after the disk recovered"
        );
    }
    let metrics = request(addr, "GET /metrics", "").await.2;
    assert_eq!(metric(&metrics, "stampede_shed_probability"), 0.0);

    let _ = stop.send(());
    server.await.unwrap();
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap()
        .unwrap();
}

/// The gate's shed share for new orders now, from `/metrics`.
async fn state_probability(addr: SocketAddr) -> f64 {
    let metrics = request(addr, "GET /metrics", "").await.2;
    metric(&metrics, "stampede_shed_probability")
}
