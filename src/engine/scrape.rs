//! The engine's side of `GET /metrics`: the series it registers at start-up and the gauges
//! it sets from its state at each scrape (mailbox depths, stock of the SKUs shown, consumer
//! lag, the journal's counters). Reading changes nothing.

use super::Engine;
use std::sync::atomic::Ordering;

use crate::config::Config;
use crate::journal::Journal;
use crate::shard::ShardWriter;

/// The engine's metrics: registry, and the gauges set at each scrape.
pub(super) struct EngineMetrics {
    registry: prometheus::Registry,
    gauges: crate::metrics::ScrapeGauges,
    skus: Vec<String>,
    sku_top: usize,
}

impl EngineMetrics {
    /// Registers the engine's series and hands each shard its batch-size histogram and
    /// timer gauge.
    pub(super) fn register(
        config: &Config,
        journal: &Journal,
        writers: &mut [ShardWriter],
    ) -> Self {
        let shard_count = writers.len();
        let registry = prometheus::Registry::new();
        let batch_sizes = crate::metrics::batch_size_histograms(&registry, shard_count);
        let gauges = crate::metrics::ScrapeGauges::register(&registry);
        let policy = match journal.policy() {
            crate::config::FsyncPolicy::Always => "always",
            crate::config::FsyncPolicy::Interval => "interval",
            crate::config::FsyncPolicy::None => "none",
        };
        gauges.fsync_policy.with_label_values(&[policy]).set(1);
        let fsync = crate::metrics::fsync_histogram();
        registry
            .register(Box::new(fsync.clone()))
            .expect("fsync histogram registers once");
        let _ = journal.stats().fsync_seconds.set(fsync);
        for (writer, batch_size) in writers.iter_mut().zip(batch_sizes) {
            writer.batch_size = Some(batch_size);
            writer.timers_held = Some(
                gauges
                    .payment_timers
                    .with_label_values(&[&writer.index.to_string()]),
            );
        }
        EngineMetrics {
            registry,
            gauges,
            skus: config.metrics.skus.clone(),
            sku_top: config.metrics.sku_top,
        }
    }
}

impl Engine {
    /// Sets the scrape-time gauges and returns the engine's registry for `/metrics` (`None`
    /// when metrics are off). Reads what is there; changes nothing.
    pub fn scrape_metrics(&self) -> Option<prometheus::Registry> {
        let metrics = self.metrics.as_ref()?;
        let gauges = &metrics.gauges;
        for (shard, mailbox) in self.mailboxes.iter().enumerate() {
            gauges
                .queue_depth
                .with_label_values(&[&shard.to_string()])
                .set(mailbox.len() as i64);
        }
        let stats = self.journal.stats();
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed) as i64;
        gauges.journal_bytes.set(load(&stats.bytes));
        gauges.journal_records.set(load(&stats.records));
        gauges.journal_writes.set(load(&stats.writes));
        gauges.journal_fsyncs.set(load(&stats.fsyncs));
        let durable = self.journal.durable_seq();
        gauges.durable_seq.set(durable as i64);
        gauges.orders_indexed.set(self.orders.len() as i64);
        // Per-SKU stock: the configured SKUs, else the busiest (most sold + reserved).
        let views = if metrics.skus.is_empty() {
            let mut all = self.sku_views();
            all.sort_by_key(|view| std::cmp::Reverse(view.sold + view.reserved));
            all.truncate(metrics.sku_top);
            all
        } else {
            metrics
                .skus
                .iter()
                .filter_map(|sku| self.sku_view(sku))
                .collect()
        };
        gauges.sku_stock.reset();
        for view in views {
            for (state, units) in [
                ("available", view.available),
                ("reserved", view.reserved),
                ("sold", view.sold),
                ("total", view.stock_total),
            ] {
                gauges
                    .sku_stock
                    .with_label_values(&[&view.sku, state])
                    .set(units as i64);
            }
        }
        gauges.consumer_offset.reset();
        gauges.consumer_lag.reset();
        match self.consumers.list() {
            Ok(groups) => {
                for (group, seq) in groups {
                    gauges
                        .consumer_offset
                        .with_label_values(&[&group])
                        .set(seq as i64);
                    gauges
                        .consumer_lag
                        .with_label_values(&[&group])
                        .set(durable.saturating_sub(seq) as i64);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list consumer groups for /metrics"),
        }
        Some(metrics.registry.clone())
    }
}
