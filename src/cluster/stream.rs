//! The fulfilment stream: every durable record of this node's journal, appended to the
//! cluster's Redis Stream in journal order, exactly once per `(node, seq)`.
//!
//! Exactly once comes from Redis, not from this process: the node's position lives in Redis
//! beside the stream (same slot) and one script appends a batch and moves the position
//! together ([`Store::publish`]). After any failure — a crash of this node, a lost answer, a
//! failover that lost the last appends together with the position — the publisher reads the
//! position again and resends from there, and the script skips what it already has.
//!
//! The publisher also commits its position as the consumer group [`STREAM_GROUP`], so that
//! retention keeps every segment it has not published yet.

use std::sync::Arc;
use std::time::Duration;

use super::store::{Store, StreamRecord};
use crate::engine::Engine;
use crate::journal::{JournalReader, ReadLimit};
use crate::limits;

/// The consumer group that pins the journal's unpublished records against retention.
pub const STREAM_GROUP: &str = "cluster-stream";

/// How long one read waits for new durable records before it returns what it has.
const READ_WAIT: Duration = Duration::from_millis(200);

pub struct Publisher {
    engine: Arc<Engine>,
    store: Arc<Store>,
    stream: String,
    node: String,
}

impl Publisher {
    pub fn new(engine: Arc<Engine>, store: Arc<Store>, stream: &str, node: &str) -> Self {
        Self {
            engine,
            store,
            stream: stream.to_owned(),
            node: node.to_owned(),
        }
    }

    /// Publishes until `stopping` turns true; every failure is retried with a backoff.
    pub async fn run(self, mut stopping: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = limits::CLUSTER_RETRY_MIN;
        loop {
            if *stopping.borrow() {
                return;
            }
            let error = match self.publish_from_position(&mut stopping).await {
                Ok(()) => return,
                Err(error) => error,
            };
            tracing::warn!(%error, stream = %self.stream, "publishing the journal to the stream failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stopping.changed() => return,
            }
            backoff = (backoff * 2).min(limits::CLUSTER_RETRY_MAX);
        }
    }

    /// Reads the position from Redis, then follows the journal from there. Returns `Ok` only
    /// when stopping.
    async fn publish_from_position(
        &self,
        stopping: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut position = self.store.stream_position(&self.stream, &self.node).await?;
        let mut reader = JournalReader::open(
            self.engine.journal_dir(),
            position,
            ReadLimit::Durable(self.engine.journal().clone()),
        );
        loop {
            if *stopping.borrow() {
                return Ok(());
            }
            let (back, batch) = tokio::task::spawn_blocking(move || {
                let batch = read_batch(&mut reader);
                (reader, batch)
            })
            .await?;
            reader = back;
            let batch = batch?;
            if batch.is_empty() {
                continue;
            }
            let last = batch.last().map_or(position, |record| record.seq);
            let after = self.store.publish(&self.stream, &self.node, &batch).await?;
            if after != last {
                anyhow::bail!(
                    "the stream's position for this node is {after}, not {last}: reading again from there"
                );
            }
            position = after;
            if let Err(error) = self.engine.commit_offset(STREAM_GROUP, position) {
                tracing::warn!(%error, "cannot record the stream's position as a consumer group");
            }
        }
    }
}

/// Up to [`limits::STREAM_BATCH_MAX`] durable records, waiting up to [`READ_WAIT`] for the
/// first one.
fn read_batch(reader: &mut JournalReader) -> anyhow::Result<Vec<StreamRecord>> {
    let mut batch = Vec::new();
    let mut waited = false;
    while batch.len() < limits::STREAM_BATCH_MAX {
        match reader.next_record()? {
            Some((seq, record)) => {
                let json = record.to_json(seq);
                let order_id = json
                    .get("order_id")
                    .and_then(|id| id.as_str())
                    .unwrap_or("")
                    .to_owned();
                batch.push(StreamRecord {
                    seq,
                    kind: record.type_name(),
                    order_id,
                    line: json.to_string(),
                });
            }
            None if batch.is_empty() && !waited => {
                waited = true;
                reader.wait(READ_WAIT);
            }
            None => break,
        }
    }
    Ok(batch)
}
