//! A warehouse worker for a whole cluster: it reads the cluster's fulfilment stream (every
//! node's journal, published to one Redis Stream, see "Cluster mode" in `docs/API.md`) with a
//! Redis consumer group, and prints one line per order that is ready to pick: paid (a `pay`
//! record) or confirmed at acceptance (an `accepted` record with payment `cod`).
//!
//! ```sh
//! cargo run --release --example stream_worker -- --redis 127.0.0.1:7000 --group picking
//! ```
//!
//! Each ready order is printed as one JSON line `{"node","seq","order_id","sku","qty",
//! "ready_by"}`; the entries are acknowledged (`XACK`) only after their lines are written, so
//! a worker killed at any moment reads the unacknowledged entries again when it comes back
//! (it first reads its own pending entries, then new ones): at-least-once, and the `(node,
//! seq)` of each line lets the next stage drop a repeat. Several workers of one group share
//! the stream; each entry goes to one of them.
//!
//! With `--idle-exit-ms N` it exits 0 once no entry came for N ms (for scripts and tests).

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;
use redis::Value;
use redis::streams::{StreamReadOptions, StreamReadReply};

#[derive(Parser)]
#[command(about = "Reads the cluster's fulfilment stream as a consumer group")]
struct Args {
    /// Seed address of the Redis Cluster (repeat it or separate with commas).
    #[arg(long, value_delimiter = ',', required = true)]
    redis: Vec<String>,
    /// The stream the nodes publish to (the engines' `cluster.stream`).
    #[arg(long, default_value = "{stampede}:journal")]
    stream: String,
    /// The consumer group; created at the stream's start when it does not exist.
    #[arg(long, default_value = "picking")]
    group: String,
    /// This worker's name within the group.
    #[arg(long, default_value = "worker-1")]
    consumer: String,
    /// Entries read at once.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Exit 0 after this many milliseconds without an entry (0: run until killed).
    #[arg(long, default_value_t = 0)]
    idle_exit_ms: u64,
}

/// How long one `XREADGROUP` blocks waiting for entries.
const BLOCK_MS: usize = 500;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let urls: Vec<String> = args
        .redis
        .iter()
        .map(|seed| format!("redis://{seed}"))
        .collect();
    let client = redis::cluster::ClusterClient::new(urls)?;
    let mut redis = client.get_async_connection().await?;
    create_group(&mut redis, &args).await?;
    let mut out = std::io::stdout().lock();
    // First the entries this consumer was given and did not acknowledge (a restart), then
    // new ones.
    let mut cursor = "0".to_owned();
    let mut last_entry = Instant::now();
    let mut orders = OrderBook::default();
    loop {
        let options = StreamReadOptions::default()
            .group(&args.group, &args.consumer)
            .count(args.count)
            .block(BLOCK_MS);
        let reply: StreamReadReply =
            redis::AsyncCommands::xread_options(&mut redis, &[&args.stream], &[&cursor], &options)
                .await?;
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|key| key.ids).collect();
        if entries.is_empty() {
            if cursor == "0" {
                cursor = ">".to_owned();
                continue;
            }
            if args.idle_exit_ms > 0
                && last_entry.elapsed() >= Duration::from_millis(args.idle_exit_ms)
            {
                return Ok(());
            }
            continue;
        }
        last_entry = Instant::now();
        let mut done = Vec::with_capacity(entries.len());
        for entry in &entries {
            if let Some(line) = ready_line(&entry.map, &mut orders) {
                writeln!(out, "{line}")?;
            }
            done.push(entry.id.clone());
        }
        out.flush()?;
        let _: i64 =
            redis::AsyncCommands::xack(&mut redis, &args.stream, &args.group, &done).await?;
    }
}

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM`, where a group that exists already is fine.
async fn create_group(
    redis: &mut redis::cluster_async::ClusterConnection,
    args: &Args,
) -> anyhow::Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&args.stream)
        .arg(&args.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(redis)
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The SKU and quantity of the orders whose `accepted` entry this worker read, so that a
/// `pay` line can name them. Bounded: emptied when it reaches [`ORDER_BOOK_MAX`] (a `pay` of
/// an order accepted before then prints `null` for both; the order is in `GET
/// /v1/orders/{id}` on any node).
#[derive(Default)]
struct OrderBook(std::collections::HashMap<String, (serde_json::Value, serde_json::Value)>);

const ORDER_BOOK_MAX: usize = 100_000;

/// The JSON line for an entry that makes an order ready to pick, else `None`.
fn ready_line(
    fields: &std::collections::HashMap<String, Value>,
    orders: &mut OrderBook,
) -> Option<String> {
    let text =
        |name: &str| -> Option<String> { redis::from_redis_value(fields.get(name)?.clone()).ok() };
    let kind = text("type")?;
    let record: serde_json::Value = serde_json::from_str(&text("record")?).ok()?;
    if kind == "accepted" {
        if orders.0.len() >= ORDER_BOOK_MAX {
            orders.0.clear();
        }
        let id = record["order_id"].as_str().unwrap_or_default().to_owned();
        orders
            .0
            .insert(id, (record["sku"].clone(), record["qty"].clone()));
    }
    let (sku, qty) = orders
        .0
        .get(record["order_id"].as_str().unwrap_or_default())
        .cloned()
        .unwrap_or_default();
    let ready = match kind.as_str() {
        "accepted" => record["payment"] == "cod",
        "pay" => true,
        _ => false,
    };
    if !ready {
        return None;
    }
    Some(
        serde_json::json!({
            "node": text("node")?,
            "seq": record["seq"],
            "order_id": record["order_id"],
            "sku": sku,
            "qty": qty,
            "ready_by": kind,
        })
        .to_string(),
    )
}
