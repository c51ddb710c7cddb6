//! How many share grants a Redis Cluster gives per second: the ceiling of cluster mode is
//! this rate times `cluster.lease_units` (units a node can take from the global stock per
//! second, summed over the nodes).
//!
//! It runs the engine's own grant call (the Lua script plus `WAIT 1`, see
//! `src/cluster/store.rs`) from `--tasks` concurrent callers, each a node of its own, for
//! `--seconds`, on `--skus` SKUs (one SKU is one Redis slot, so one master; several spread
//! over the masters), and prints grants per second with the latency percentiles.
//!
//! ```sh
//! scripts/redis_cluster.sh start /tmp/rc 17000
//! cargo run --release --example cluster_grants -- --redis 127.0.0.1:17000 --skus 1
//! ```
//!
//! It writes SKUs named `GRANT-BENCH-<n>` with a huge stock into the cluster: use a cluster
//! made for measuring, not a sale's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use stampede::cluster::store::{GlobalSkuUpdate, Store};

#[derive(Parser)]
struct Args {
    /// Seed address of the Redis Cluster (repeat or separate with commas).
    #[arg(long, value_delimiter = ',', required = true)]
    redis: Vec<String>,
    /// Concurrent callers (each acts as a node of its own).
    #[arg(long, default_value_t = 32)]
    tasks: usize,
    /// SKUs the callers spread over.
    #[arg(long, default_value_t = 1)]
    skus: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = Arc::new(Store::new(&args.redis));
    for sku in 0..args.skus {
        let update = GlobalSkuUpdate {
            stock: Some(1 << 50),
            ..GlobalSkuUpdate::default()
        };
        if let Err(held) = store
            .put_sku(&format!("GRANT-BENCH-{sku}"), &update)
            .await?
        {
            anyhow::bail!("GRANT-BENCH-{sku}: {held} units held; use a fresh cluster");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for task in 0..args.tasks {
        let store = store.clone();
        let sku = format!("GRANT-BENCH-{}", task % args.skus);
        let node = format!("bench-{task}-{}", std::process::id());
        tasks.push(tokio::spawn(async move {
            let mut share = 0;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let answer = store.grant(&sku, &node, share, 1).await?;
                latencies.push(started.elapsed());
                share = answer.share;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "grants/s {:.0}  ({} grants in {} s, {} callers, {} skus)  p50 {:.2} ms  p99 {:.2} ms",
        latencies.len() as f64 / args.seconds as f64,
        latencies.len(),
        args.seconds,
        args.tasks,
        args.skus,
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}
