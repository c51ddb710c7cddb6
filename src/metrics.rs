//! What operators watch during the sale: `GET /metrics` in the Prometheus text format, through
//! the `prometheus` crate (its registry and text encoder; nothing is formatted by hand).
//!
//! Two kinds of figures:
//! - **counted on the way** (hot path): requests by route with their latency, orders by
//!   outcome, actions by result, shed requests by reason, open connections, shard batch
//!   sizes, journal fsync latency. Each is an atomic add into a child resolved once at
//!   start-up (no label lookup, no lock, no allocation per request);
//! - **read at scrape time** (cold path): queue depth per shard, stock per SKU, journal
//!   bytes/records/writes/fsyncs, durable seq, orders in the index, consumer lag per group,
//!   in-flight requests. They cost nothing between scrapes. (Payment timers per shard are set
//!   by the shard once a turn; they include paid orders' timers until those come due.)
//!
//! Cardinality is bounded: routes, outcomes, actions and shed reasons are fixed sets; shards
//! are at most `SHARDS_MAX`; per-SKU stock is exported for the configured SKUs, else the
//! `metrics.sku_top` SKUs with the most units sold and reserved; consumer groups are at most
//! `CONSUMER_GROUPS_MAX`.
//!
//! Turning metrics off (`metrics.enabled = false`) removes the hot-path work entirely (the
//! handles are `None`); BENCHMARKS.md has the cost of leaving them on.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error_code::ErrorCode;
use crate::order::Action;

/// Routes with their own latency series. Everything else is `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    CreateOrder,
    OrderAction,
    GetOrder,
    Skus,
    Journal,
    Consumers,
    Health,
    Metrics,
    Other,
}

impl Route {
    pub const ALL: [Route; 9] = [
        Self::CreateOrder,
        Self::OrderAction,
        Self::GetOrder,
        Self::Skus,
        Self::Journal,
        Self::Consumers,
        Self::Health,
        Self::Metrics,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateOrder => "create_order",
            Self::OrderAction => "order_action",
            Self::GetOrder => "get_order",
            Self::Skus => "skus",
            Self::Journal => "journal",
            Self::Consumers => "consumers",
            Self::Health => "health",
            Self::Metrics => "metrics",
            Self::Other => "other",
        }
    }
}

/// Why a request was shed before any work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The owning shard's mailbox was full.
    ShardQueueFull,
    /// The global in-flight bound was reached.
    InFlight,
    /// The client's (address) rate limit.
    ClientRate,
    /// The buyer's (`user_id`) rate limit.
    UserRate,
    /// The queue-delay gate (the server is CPU-bound or the shards are behind).
    QueueDelay,
}

impl ShedReason {
    pub const ALL: [ShedReason; 5] = [
        Self::ShardQueueFull,
        Self::InFlight,
        Self::ClientRate,
        Self::UserRate,
        Self::QueueDelay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShardQueueFull => "shard_queue_full",
            Self::InFlight => "in_flight",
            Self::ClientRate => "client_rate",
            Self::UserRate => "user_rate",
            Self::QueueDelay => "queue_delay",
        }
    }
}

/// Latency buckets in seconds: 50 µs to 10 s, dense where a flash sale lives (sub-ms to tens
/// of ms: an fdatasync is 0.2-2 ms on SSDs).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
/// Commands per shard batch: 1 to the `SHARD_BATCH_MAX`.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
];

/// Metrics counted on the HTTP path (owned by the server's state; exist before the engine).
/// What became of one `POST /v1/orders`, for `stampede_orders_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcomeLabel {
    Accepted,
    Replayed,
    /// Answered with this error code (sold out, limit, conflict, invalid, ...).
    Refused(ErrorCode),
    /// Shed by admission control (`overloaded`: 503 from the queue-delay gate, 429 from the
    /// other gates), and why.
    Shed(ShedReason),
    /// Cluster mode: sent to the node that owns the buyer, which counts its outcome.
    Forwarded,
}

impl OrderOutcomeLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Replayed => "replayed",
            Self::Refused(code) => code.as_str(),
            Self::Shed(_) => ErrorCode::Overloaded.as_str(),
            Self::Forwarded => "forwarded",
        }
    }
}

pub struct HttpMetrics {
    pub registry: Registry,
    requests: Vec<Histogram>,
    /// By [`ErrorCode::index`]; `None` for the codes an order is never refused with.
    orders: Vec<Option<IntCounter>>,
    orders_accepted: IntCounter,
    orders_replayed: IntCounter,
    orders_forwarded: IntCounter,
    /// Indexed by `Action as usize`; `None` for the timer's records (not client actions).
    /// By [`ActionResult`], then [`Action`]; `None` for the timer's actions.
    actions: [Vec<Option<IntCounter>>; 3],
    shed: Vec<IntCounter>,
    pub connections: IntGauge,
    pub in_flight: IntGauge,
    /// The queue-delay gate's last measured delay, seconds, and its shed probability (set at
    /// scrape; stay 0 when the gate is off).
    pub queue_delay: prometheus::Gauge,
    pub shed_probability: prometheus::Gauge,
    /// Keys each rate limiter admitted untracked (its table full), set at scrape.
    pub rate_untracked: prometheus::IntGaugeVec,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Metric names and labels are constants: an error here is a bug caught by the tests.
    result.expect("metric definitions are valid")
}

/// Registers a new collector with `registry` and returns it (a handle on the same series).
fn registered<C>(registry: &Registry, collector: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let collector = must(collector);
    must(registry.register(Box::new(collector.clone())));
    collector
}

/// `stampede_request_duration_seconds`, one histogram per [`Route`] (by `Route as usize`).
fn request_histograms(registry: &Registry) -> Vec<Histogram> {
    let requests_vec = registered(
        registry,
        prometheus::HistogramVec::new(
            HistogramOpts::new(
                "stampede_request_duration_seconds",
                "Time from the request's headers to its response, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        ),
    );
    Route::ALL
        .iter()
        .map(|route| requests_vec.with_label_values(&[route.as_str()]))
        .collect()
}

/// `stampede_orders_total`: by [`ErrorCode::index`] (the refusals), then accepted and
/// replayed.
type OrderCounters = (Vec<Option<IntCounter>>, IntCounter, IntCounter, IntCounter);

fn order_counters(registry: &Registry) -> OrderCounters {
    let orders_vec = registered(
        registry,
        IntCounterVec::new(
            Opts::new(
                "stampede_orders_total",
                "POST /v1/orders answered, by outcome (accepted, replayed, or the error code).",
            ),
            &["outcome"],
        ),
    );
    // Only the refusals `POST /v1/orders` can give: a series that can never move would
    // read, to an operator, as "this never happened" rather than "this cannot happen".
    let refused = ErrorCode::ALL
        .iter()
        .map(|code| {
            ErrorCode::ORDER_REFUSALS
                .contains(code)
                .then(|| orders_vec.with_label_values(&[code.as_str()]))
        })
        .collect();
    let accepted = orders_vec.with_label_values(&["accepted"]);
    let replayed = orders_vec.with_label_values(&["replayed"]);
    // Cluster mode: orders sent on to the node that owns the buyer (which counts them).
    let forwarded = orders_vec.with_label_values(&["forwarded"]);
    (refused, accepted, replayed, forwarded)
}

/// `stampede_order_actions_total`: by [`ActionResult`], then [`Action`] (`None` for the
/// timer's actions, which are not client actions).
fn action_counters(registry: &Registry) -> [Vec<Option<IntCounter>>; 3] {
    let actions_vec = registered(
        registry,
        IntCounterVec::new(
            Opts::new(
                "stampede_order_actions_total",
                "POST /v1/orders/{id}/{action} answered, by action and result (done, replayed: \
                 a retry answered with the original result, refused).",
            ),
            &["action", "result"],
        ),
    );
    let per_action = |result: &str| -> Vec<Option<IntCounter>> {
        Action::ALL
            .iter()
            .map(|action| {
                action
                    .is_client_action()
                    .then(|| actions_vec.with_label_values(&[action.as_str(), result]))
            })
            .collect()
    };
    [
        per_action(ActionResult::Done.as_str()),
        per_action(ActionResult::Replayed.as_str()),
        per_action(ActionResult::Refused.as_str()),
    ]
}

/// `stampede_shed_total`, one counter per [`ShedReason`].
fn shed_counters(registry: &Registry) -> Vec<IntCounter> {
    let shed_vec = registered(
        registry,
        IntCounterVec::new(
            Opts::new(
                "stampede_shed_total",
                "Requests shed by admission control with 429/503 and Retry-After, by reason.",
            ),
            &["reason"],
        ),
    );
    ShedReason::ALL
        .iter()
        .map(|reason| shed_vec.with_label_values(&[reason.as_str()]))
        .collect()
}

impl HttpMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = request_histograms(&registry);
        let (orders, orders_accepted, orders_replayed, orders_forwarded) =
            order_counters(&registry);
        let actions = action_counters(&registry);
        let shed = shed_counters(&registry);
        let connections = registered(
            &registry,
            IntGauge::new("stampede_http_connections", "HTTP connections open now."),
        );
        let in_flight = registered(
            &registry,
            IntGauge::new(
                "stampede_in_flight_requests",
                "Order and action requests admitted and not yet answered.",
            ),
        );
        let queue_delay = registered(
            &registry,
            prometheus::Gauge::new(
                "stampede_queue_delay_seconds",
                "Queueing delay the admission gate last measured: the larger of the runtime's \
                 scheduling delay and how long orders queue in the shards' mailboxes beyond one turn.",
            ),
        );
        let shed_probability = registered(
            &registry,
            prometheus::Gauge::new(
                "stampede_shed_probability",
                "Share of new orders the queue-delay gate refuses now (0 to 0.95).",
            ),
        );
        let rate_untracked = registered(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "stampede_rate_limit_untracked",
                    "Requests a rate limit let through untracked because its table was full \
                     (fail open), since start.",
                ),
                &["limit"],
            ),
        );
        #[cfg(target_os = "linux")]
        must(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        Self {
            registry,
            requests,
            orders,
            orders_accepted,
            orders_replayed,
            orders_forwarded,
            actions,
            shed,
            connections,
            in_flight,
            queue_delay,
            shed_probability,
            rate_untracked,
        }
    }

    pub fn observe_request(&self, route: Route, elapsed: Duration) {
        self.requests[route as usize].observe(elapsed.as_secs_f64());
    }

    pub fn count_order(&self, outcome: OrderOutcomeLabel) {
        match outcome {
            OrderOutcomeLabel::Accepted => self.orders_accepted.inc(),
            OrderOutcomeLabel::Replayed => self.orders_replayed.inc(),
            OrderOutcomeLabel::Forwarded => self.orders_forwarded.inc(),
            OrderOutcomeLabel::Refused(code) => {
                debug_assert!(
                    ErrorCode::ORDER_REFUSALS.contains(&code),
                    "{code:?} is not an order refusal"
                );
                if let Some(counter) = &self.orders[code.index()] {
                    counter.inc();
                }
            }
            OrderOutcomeLabel::Shed(reason) => {
                if let Some(counter) = &self.orders[ErrorCode::Overloaded.index()] {
                    counter.inc();
                }
                self.count_shed(reason);
            }
        }
    }

    pub fn count_action(&self, action: Action, result: ActionResult) {
        if let Some(counter) = &self.actions[result as usize][action as usize] {
            counter.inc();
        }
    }

    pub fn count_shed(&self, reason: ShedReason) {
        self.shed[reason as usize].inc();
    }

    /// `POST /v1/orders` answers since start, grouped as the event console shows them.
    pub fn order_counts(&self) -> OrderCounts {
        let refused = |code: ErrorCode| self.orders[code.index()].as_ref().map_or(0, |c| c.get());
        let mut counts = OrderCounts {
            created: self.orders_accepted.get(),
            replayed: self.orders_replayed.get(),
            sold_out: refused(ErrorCode::SoldOut),
            purchase_limit: refused(ErrorCode::PurchaseLimit),
            paused: refused(ErrorCode::Paused),
            shed: refused(ErrorCode::Overloaded),
            errors: 0,
        };
        for code in ErrorCode::ORDER_REFUSALS {
            if !matches!(
                code,
                ErrorCode::SoldOut
                    | ErrorCode::PurchaseLimit
                    | ErrorCode::Paused
                    | ErrorCode::Overloaded
            ) {
                counts.errors += refused(code);
            }
        }
        counts
    }

    /// The latency histogram of one route (the event console reads its buckets).
    pub fn request_histogram(&self, route: Route) -> &Histogram {
        &self.requests[route as usize]
    }
}

/// `POST /v1/orders` answers by outcome, as the event console groups them: every refusal
/// other than sold out, the purchase limit, a pause and shedding is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OrderCounts {
    pub created: u64,
    pub replayed: u64,
    pub sold_out: u64,
    pub purchase_limit: u64,
    pub paused: u64,
    pub shed: u64,
    pub errors: u64,
}

/// A histogram's buckets as (upper bound in seconds, cumulative count), and its sample count.
pub fn histogram_buckets(histogram: &Histogram) -> (Vec<(f64, u64)>, u64) {
    use prometheus::core::Metric;
    let metric = histogram.metric();
    let proto = metric.get_histogram();
    let buckets = proto
        .get_bucket()
        .iter()
        .map(|bucket| (bucket.upper_bound(), bucket.cumulative_count()))
        .collect();
    (buckets, proto.get_sample_count())
}

/// How an action request was answered, for `stampede_order_actions_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResult {
    /// 200: the action was journaled.
    Done,
    /// 200 with `Idempotent-Replayed: true`: a retry, nothing changed.
    Replayed,
    /// Any other answer.
    Refused,
}

impl ActionResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Replayed => "replayed",
            Self::Refused => "refused",
        }
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram of shard batch sizes, one child per shard (handed to each shard at start-up).
pub fn batch_size_histograms(registry: &Registry, shards: usize) -> Vec<Histogram> {
    let vec = must(prometheus::HistogramVec::new(
        HistogramOpts::new(
            "stampede_shard_batch_size",
            "Commands a shard decided in one turn (one journal append and commit).",
        )
        .buckets(BATCH_BUCKETS.to_vec()),
        &["shard"],
    ));
    must(registry.register(Box::new(vec.clone())));
    (0..shards)
        .map(|shard| vec.with_label_values(&[&shard.to_string()]))
        .collect()
}

/// The journal's fsync latency histogram (unregistered; the engine registers it).
pub fn fsync_histogram() -> Histogram {
    must(Histogram::with_opts(
        HistogramOpts::new(
            "stampede_journal_fsync_duration_seconds",
            "Time of one journal fdatasync (a group commit's, or the interval sync's).",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    ))
}

/// Gauges the engine sets right before each scrape.
pub struct ScrapeGauges {
    pub queue_depth: IntGaugeVec,
    pub sku_stock: IntGaugeVec,
    pub journal_bytes: IntGauge,
    pub journal_records: IntGauge,
    pub journal_writes: IntGauge,
    pub journal_fsyncs: IntGauge,
    pub durable_seq: IntGauge,
    pub orders_indexed: IntGauge,
    pub payment_timers: IntGaugeVec,
    pub consumer_offset: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    /// 1 for the journal's fsync policy in force (load reports and dashboards say which
    /// durability a figure was measured with).
    pub fsync_policy: IntGaugeVec,
}

impl ScrapeGauges {
    pub fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let gauge = must(IntGauge::new(name, help));
            must(registry.register(Box::new(gauge.clone())));
            gauge
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let vec = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(vec.clone())));
            vec
        };
        // Totals since start are exported as gauges of monotonic counts: they restart at 0
        // with the process, which `rate()` handles like a counter reset.
        Self {
            queue_depth: gauges(
                "stampede_shard_queue_depth",
                "Commands waiting in a shard's mailbox.",
                &["shard"],
            ),
            sku_stock: gauges(
                "stampede_sku_units",
                "Units of a SKU by state (available, reserved, sold, total); configured or top SKUs only.",
                &["sku", "state"],
            ),
            journal_bytes: gauge(
                "stampede_journal_written_bytes",
                "Journal bytes written since start.",
            ),
            journal_records: gauge(
                "stampede_journal_written_records",
                "Journal records written since start.",
            ),
            journal_writes: gauge(
                "stampede_journal_group_writes",
                "Group-commit writes since start (each one pwrite of every shard's pending frames).",
            ),
            journal_fsyncs: gauge("stampede_journal_fsyncs", "Journal fdatasyncs since start."),
            durable_seq: gauge(
                "stampede_journal_durable_seq",
                "Highest seq as durable as the fsync policy promises.",
            ),
            orders_indexed: gauge(
                "stampede_orders_indexed",
                "Orders in the order index (accepted since the journal began).",
            ),
            payment_timers: gauges(
                "stampede_payment_timers",
                "Payment timers held by a shard: prepaid and escrow orders within their timeout (a paid order's timer stays until it comes due).",
                &["shard"],
            ),
            consumer_offset: gauges(
                "stampede_consumer_offset",
                "A consumer group's committed offset (seq).",
                &["group"],
            ),
            consumer_lag: gauges(
                "stampede_consumer_lag_records",
                "Durable records after a consumer group's committed offset.",
                &["group"],
            ),
            fsync_policy: gauges(
                "stampede_journal_fsync_policy",
                "1 for the journal's fsync policy in force (always, interval, none).",
                &["policy"],
            ),
        }
    }
}

/// Encodes the registries' metrics in the Prometheus text format (version 0.0.4).
pub fn render(registries: &[&Registry]) -> Vec<u8> {
    let families: Vec<_> = registries.iter().flat_map(|r| r.gather()).collect();
    let mut out = Vec::with_capacity(16 * 1024);
    must(TextEncoder::new().encode(&families, &mut out));
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let http = HttpMetrics::new();
        http.observe_request(Route::CreateOrder, Duration::from_micros(300));
        http.count_order(OrderOutcomeLabel::Accepted);
        http.count_order(OrderOutcomeLabel::Refused(ErrorCode::SoldOut));
        http.count_action(Action::Pay, ActionResult::Done);
        http.count_shed(ShedReason::InFlight);
        let engine = Registry::new();
        let batches = batch_size_histograms(&engine, 2);
        batches[1].observe(17.0);
        let gauges = ScrapeGauges::register(&engine);
        gauges.queue_depth.with_label_values(&["0"]).set(3);
        let text = String::from_utf8(render(&[&http.registry, &engine])).unwrap();
        for needle in [
            "stampede_request_duration_seconds_bucket{route=\"create_order\",le=\"0.0005\"} 1",
            "stampede_orders_total{outcome=\"accepted\"} 1",
            "stampede_orders_total{outcome=\"sold_out\"} 1",
            "stampede_order_actions_total{action=\"pay\",result=\"done\"} 1",
            "stampede_shed_total{reason=\"in_flight\"} 1",
            "stampede_shard_batch_size_sum{shard=\"1\"} 17",
            "stampede_shard_queue_depth{shard=\"0\"} 3",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
