//! What the event console (`GET /v1/events`) reads from the engine: every SKU's stock, the
//! consumer groups and their lag, the journal's counters and its fsync histogram. Reading
//! changes nothing; it is called once a tick by the one snapshot task, and only while a
//! console is open.

use std::sync::atomic::Ordering;

use super::{Engine, SkuView};

/// The engine's side of one console snapshot.
#[derive(Debug, Clone)]
pub struct EngineFigures {
    pub skus: Vec<SkuView>,
    /// (group, committed seq, durable records after it), by name.
    pub consumers: Vec<(String, u64, u64)>,
    pub durable_seq: u64,
    pub journal_records: u64,
    pub journal_fsyncs: u64,
    /// The fsync histogram's buckets and count (`None` when metrics are off).
    pub fsync_buckets: Option<(Vec<(f64, u64)>, u64)>,
    /// Orders waiting in the shards' mailboxes.
    pub queued: usize,
}

impl Engine {
    /// Reads the figures (a directory listing for the consumer groups: call it off the async
    /// workers).
    pub fn console_figures(&self) -> EngineFigures {
        let durable_seq = self.journal.durable_seq();
        let consumers = match self.consumers.list() {
            Ok(groups) => groups
                .into_iter()
                .map(|(group, seq)| (group, seq, durable_seq.saturating_sub(seq)))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list consumer groups for the console");
                Vec::new()
            }
        };
        let stats = self.journal.stats();
        EngineFigures {
            skus: self.sku_views(),
            consumers,
            durable_seq,
            journal_records: stats.records.load(Ordering::Relaxed),
            journal_fsyncs: stats.fsyncs.load(Ordering::Relaxed),
            fsync_buckets: stats
                .fsync_seconds
                .get()
                .map(crate::metrics::histogram_buckets),
            queued: self.mailboxes.iter().map(|mailbox| mailbox.len()).sum(),
        }
    }
}
