//! `GET /v1/events`: the event console's live figures as Server-Sent Events.
//!
//! One snapshot task builds a snapshot every `EVENT_INTERVAL_MS` and broadcasts it to every
//! open stream. It runs only while at least one stream is open: the first subscriber starts
//! it, and it ends on the first tick that finds nobody listening, so a sale that nobody
//! watches pays nothing for the console. Each stream forwards the newest snapshots through a
//! bounded queue; a page that reads slower skips snapshots (each one is whole: nothing is
//! lost that the next one does not carry). Streams are bounded in number
//! (`EVENT_STREAMS_MAX`) and end when the server drains, like the journal's follow.
//!
//! A snapshot is one JSON object (the contract's `skus` and `orders`, then the rest):
//!
//! ```text
//! { at_ms, status: "ready" | why not, sku_count,
//!   skus: [{sku, stock_total, available, reserved, sold, paused, rate_per_s, sellout_s}],
//!   orders: {created, replayed, sold_out, purchase_limit, paused, shed, errors},
//!   latency_ms: {p50, p99, count} | null,   fsync_ms: {p50, p99, count} | null,
//!   journal: {durable_seq, records, fsyncs, records_per_fsync | null},
//!   consumers: [{group, seq, lag}],
//!   admission: {in_flight, queued, queue_delay_ms, shed_probability} }
//! ```
//!
//! Rates and quantiles are over the last `EVENT_WINDOW_TICKS` ticks; the counts are since
//! the engine started, and the page derives its per-second chart from them. `skus` holds the
//! `EVENT_SKUS_MAX` fastest-selling SKUs (units sold and reserved per second), fastest first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, broadcast, mpsc};

use super::AppState;
use super::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::engine::EngineFigures;
use crate::limits;
use crate::metrics::{Route, histogram_buckets};

const EVENT_STREAM: &str = "text/event-stream";
/// Weight of the newest tick in a SKU's smoothed sell rate.
const RATE_SMOOTHING: f64 = 0.3;

/// The snapshot broadcast and the one task that feeds it.
pub struct EventHub {
    sender: broadcast::Sender<Bytes>,
    /// True while the snapshot task runs.
    running: AtomicBool,
    streams: Arc<Semaphore>,
}

impl EventHub {
    pub fn new() -> Self {
        Self {
            sender: broadcast::Sender::new(limits::EVENT_QUEUE_SNAPSHOTS),
            running: AtomicBool::new(false),
            streams: Arc::new(Semaphore::new(limits::EVENT_STREAMS_MAX)),
        }
    }

    /// Whether the snapshot task runs now (for tests of "costs nothing when nobody watches").
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

/// Opens one stream (the caller checked the admin token): 429 past `EVENT_STREAMS_MAX`.
pub fn subscribe(state: &Arc<AppState>) -> HttpResponse {
    let hub = &state.events;
    let Ok(permit) = hub.streams.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "{} event streams are open; retry",
                limits::EVENT_STREAMS_MAX
            ),
        )
        .into_response();
    };
    let mut snapshots = hub.sender.subscribe();
    if !hub.running.swap(true, Ordering::AcqRel) {
        tokio::spawn(run_snapshots(state.clone()));
    }
    let mut stopping = state.stopping.subscribe();
    let (chunks, body) = mpsc::channel::<Bytes>(limits::FOLLOW_QUEUE_CHUNKS);
    tokio::spawn(async move {
        let _permit = permit;
        // The page's EventSource reconnects after this long if the stream breaks.
        if chunks
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            if *stopping.borrow() {
                break;
            }
            let snapshot = tokio::select! {
                received = snapshots.recv() => match received {
                    Ok(snapshot) => snapshot,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = stopping.changed() => continue,
                // The page went away: let go of the broadcast at once, not at the next send.
                () = chunks.closed() => break,
            };
            if chunks.send(snapshot).await.is_err() {
                break;
            }
        }
    });
    let mut response = reply::stream(StatusCode::OK, EVENT_STREAM, body);
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The snapshot task: a snapshot a tick while anyone listens, then it ends.
async fn run_snapshots(state: Arc<AppState>) {
    let hub = &state.events;
    let mut window = Window::default();
    let mut ticks = tokio::time::interval(Duration::from_millis(limits::EVENT_INTERVAL_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = state.stopping.subscribe();
    loop {
        ticks.tick().await;
        if hub.sender.receiver_count() == 0 || *stopping.borrow() {
            hub.running.store(false, Ordering::Release);
            // A subscriber that came after the count and found the task running started
            // none: look again, and go on if one is there and no other task took over.
            if hub.sender.receiver_count() == 0
                || *stopping.borrow()
                || hub.running.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
        let Some(engine) = state.engine().cloned() else {
            continue;
        };
        // A directory listing (consumer groups) and a walk of the slots: off the workers.
        let Ok(figures) = tokio::task::spawn_blocking(move || engine.console_figures()).await
        else {
            continue;
        };
        let snapshot = window.snapshot(&state, figures);
        let mut event = Vec::with_capacity(4096);
        event.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut event, &snapshot).expect("a snapshot serializes");
        event.extend_from_slice(b"\n\n");
        let _ = hub.sender.send(Bytes::from(event));
    }
}

/// One tick's cumulative figures, kept for the window's differences.
struct Tick {
    at: Instant,
    latency: (Vec<(f64, u64)>, u64),
    fsync: Option<(Vec<(f64, u64)>, u64)>,
    records: u64,
    fsyncs: u64,
}

/// What the snapshot task remembers between ticks: the last ticks' cumulative figures and
/// each SKU's smoothed sell rate (bounded by the catalogue, `inventory.skus_max`).
#[derive(Default)]
struct Window {
    ticks: VecDeque<Tick>,
    /// SKU → (units sold + reserved at the last tick, smoothed units per second).
    rates: HashMap<String, (u64, f64)>,
}

impl Window {
    fn snapshot(&mut self, state: &AppState, figures: EngineFigures) -> Value {
        let now = Instant::now();
        let latency = state.metrics.as_ref().map_or((Vec::new(), 0), |metrics| {
            histogram_buckets(metrics.request_histogram(Route::CreateOrder))
        });
        let tick = Tick {
            at: now,
            latency,
            fsync: figures.fsync_buckets.clone(),
            records: figures.journal_records,
            fsyncs: figures.journal_fsyncs,
        };
        let elapsed_s = self
            .ticks
            .back()
            .map(|last| now.duration_since(last.at).as_secs_f64());
        let skus = self.rank_skus(&figures, elapsed_s);
        let oldest = self.ticks.front();
        let latency_ms = oldest.and_then(|old| quantiles_ms(&old.latency, &tick.latency));
        let fsync_ms = oldest.and_then(|old| match (&old.fsync, &tick.fsync) {
            (Some(old), Some(new)) => quantiles_ms(old, new),
            _ => None,
        });
        let records_per_fsync = oldest.and_then(|old| {
            let fsyncs = tick.fsyncs.saturating_sub(old.fsyncs);
            (fsyncs > 0).then(|| tick.records.saturating_sub(old.records) as f64 / fsyncs as f64)
        });
        self.ticks.push_back(tick);
        while self.ticks.len() > limits::EVENT_WINDOW_TICKS + 1 {
            self.ticks.pop_front();
        }
        let orders = state
            .metrics
            .as_ref()
            .map(|metrics| metrics.order_counts())
            .unwrap_or_default();
        let consumers: Vec<Value> = figures
            .consumers
            .iter()
            .map(|(group, seq, lag)| json!({"group": group, "seq": seq, "lag": lag}))
            .collect();
        let gate = state.admission.queue_delay.as_ref();
        json!({
            "at_ms": crate::shard::Clock::system().now_ms(),
            "status": state.not_ready_reason().unwrap_or("ready"),
            "sku_count": figures.skus.len(),
            "skus": skus,
            "orders": orders,
            "latency_ms": latency_ms,
            "fsync_ms": fsync_ms,
            "journal": {
                "durable_seq": figures.durable_seq,
                "records": figures.journal_records,
                "fsyncs": figures.journal_fsyncs,
                "records_per_fsync": records_per_fsync,
            },
            "consumers": consumers,
            "admission": {
                "in_flight": state.admission.in_flight.current(),
                "queued": figures.queued,
                "queue_delay_ms": gate.map(|gate| gate.delay().as_secs_f64() * 1000.0),
                "shed_probability": gate.map(|gate| gate.probability()),
            },
        })
    }

    /// Updates each SKU's smoothed sell rate and returns the fastest `EVENT_SKUS_MAX` as
    /// the snapshot shows them, with the time to sell out at that rate.
    fn rank_skus(&mut self, figures: &EngineFigures, elapsed_s: Option<f64>) -> Vec<Value> {
        let mut ranked: Vec<(f64, u64, &crate::engine::SkuView)> = Vec::new();
        for view in &figures.skus {
            let committed = view.sold + view.reserved;
            let rate = match (self.rates.get(&view.sku), elapsed_s) {
                (Some(&(before, rate)), Some(seconds)) if seconds > 0.0 => {
                    // Cancellations give units back: a sell rate is never below zero.
                    let now = committed.saturating_sub(before) as f64 / seconds;
                    rate + RATE_SMOOTHING * (now - rate)
                }
                (Some(&(_, rate)), _) => rate,
                (None, _) => 0.0,
            };
            self.rates.insert(view.sku.clone(), (committed, rate));
            ranked.push((rate, committed, view));
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        ranked.truncate(limits::EVENT_SKUS_MAX);
        ranked
            .into_iter()
            .map(|(rate, _, view)| {
                let sellout_s = (rate > 0.01).then(|| view.available as f64 / rate);
                json!({
                    "sku": view.sku,
                    "stock_total": view.stock_total,
                    "available": view.available,
                    "reserved": view.reserved,
                    "sold": view.sold,
                    "paused": view.paused,
                    "rate_per_s": rate,
                    "sellout_s": sellout_s,
                })
            })
            .collect()
    }
}

/// p50 and p99 in milliseconds of the samples between two cumulative histograms (older,
/// newer), interpolated within a bucket; `None` when there were none.
fn quantiles_ms(older: &(Vec<(f64, u64)>, u64), newer: &(Vec<(f64, u64)>, u64)) -> Option<Value> {
    let count = newer.1.saturating_sub(older.1);
    if count == 0 || older.0.len() != newer.0.len() {
        return None;
    }
    let deltas: Vec<(f64, u64)> = newer
        .0
        .iter()
        .zip(&older.0)
        .map(|(&(bound, new), &(_, old))| (bound, new.saturating_sub(old)))
        .collect();
    let quantile = |q: f64| -> f64 {
        let target = q * count as f64;
        let (mut lower_bound, mut lower_count) = (0.0, 0u64);
        for &(bound, cumulative) in &deltas {
            if cumulative as f64 >= target {
                let in_bucket = (cumulative - lower_count).max(1) as f64;
                let share = (target - lower_count as f64) / in_bucket;
                return (lower_bound + (bound - lower_bound) * share) * 1000.0;
            }
            (lower_bound, lower_count) = (bound, cumulative);
        }
        // Past the last bucket: its bound is all that is known.
        lower_bound * 1000.0
    };
    Some(json!({"p50": quantile(0.5), "p99": quantile(0.99), "count": count}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_snapshot_task_runs_only_while_a_stream_is_open() {
        let state = Arc::new(AppState::new(1024, Duration::from_secs(1)));
        assert!(!state.events.is_running(), "nobody watches: no task");
        let stream = subscribe(&state);
        assert!(state.events.is_running());
        let second = subscribe(&state);
        drop(stream);
        tokio::time::sleep(Duration::from_millis(3 * limits::EVENT_INTERVAL_MS)).await;
        assert!(state.events.is_running(), "one stream is still open");
        drop(second);
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.events.is_running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !state.events.is_running(),
            "the last stream closed: the task ended"
        );
        // A new stream starts it again.
        let again = subscribe(&state);
        assert!(state.events.is_running());
        drop(again);
    }

    #[test]
    fn quantiles_come_from_the_samples_between_the_two_histograms_only() {
        let older = (vec![(0.001, 100), (0.01, 100), (0.1, 100)], 100);
        // 100 new samples: 50 under 1 ms, 49 between 1 and 10 ms, 1 between 10 and 100 ms.
        let newer = (vec![(0.001, 150), (0.01, 199), (0.1, 200)], 200);
        let figures = quantiles_ms(&older, &newer).unwrap();
        assert_eq!(figures["count"], 100);
        let p50 = figures["p50"].as_f64().unwrap();
        let p99 = figures["p99"].as_f64().unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        assert!((p99 - 10.0).abs() < 1e-9, "{p99}");
        assert!(quantiles_ms(&newer, &newer).is_none(), "no new samples");
    }

    #[test]
    fn a_stream_past_the_last_bucket_reports_the_last_bound() {
        let older = (vec![(0.001, 0), (0.01, 0)], 0);
        let newer = (vec![(0.001, 0), (0.01, 0)], 3);
        let figures = quantiles_ms(&older, &newer).unwrap();
        assert_eq!(figures["p99"].as_f64().unwrap(), 10.0);
    }
}
