//! Checkpoints and retention: the engine's state at one durable seq written to
//! `<data_dir>/checkpoints` ([`crate::checkpoint`] owns the format), and the deletion of the
//! closed journal segments that no consumer group and no recovery needs any more.
//!
//! Invariants: a checkpoint is taken with every shard paused at a batch boundary and no
//! exchange hold outstanding, and only once the journal is synced through its seq (a power
//! cut must never leave a checkpoint ahead of the journal); a segment is deleted only when a
//! checkpoint covers it and every group's offset is past it, and only as a prefix of the
//! journal; on a full disk retention backs off instead of rewriting checkpoints.

use super::Engine;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::checkpoint;
use crate::durable;
use crate::journal::{self};
use crate::limits;
use crate::shard::Command;

/// A doubling back-off between [`limits::CHECKPOINT_BACKOFF_MIN_MS`] and
/// [`limits::CHECKPOINT_BACKOFF_MAX_MS`].
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// The delay the last failure set (zero: none since the last success).
    delay: Duration,
    until: Option<std::time::Instant>,
}

impl Backoff {
    /// Records a failure at `now`: the next try waits twice as long as the last (at least
    /// the minimum, at most the cap). Returns the delay.
    fn fail(&mut self, now: std::time::Instant) -> Duration {
        let min = Duration::from_millis(limits::CHECKPOINT_BACKOFF_MIN_MS);
        let max = Duration::from_millis(limits::CHECKPOINT_BACKOFF_MAX_MS);
        self.delay = (self.delay * 2).clamp(min, max);
        self.until = Some(now + self.delay);
        self.delay
    }

    /// Keeps the back-off running from `now` without doubling it (a journal stopped for
    /// lack of room: no checkpoint was tried, none failed), starting it if none runs.
    fn hold(&mut self, now: std::time::Instant) -> Duration {
        if self.delay.is_zero() {
            return self.fail(now);
        }
        self.until = Some(now + self.delay);
        self.delay
    }

    fn waiting(&self, now: std::time::Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}

impl Engine {
    /// Writes a checkpoint of the engine's state at the current durable seq (blocking: call it
    /// off the async runtime). Every shard finishes its batch and pauses while the state is
    /// copied (tens of milliseconds per million orders), then the copy is written while the
    /// engine runs on. Returns the checkpoint's seq.
    pub fn checkpoint(&self) -> io::Result<u64> {
        let _one_at_a_time = self.checkpointing.lock();
        if self.stopping.load(Ordering::Acquire) {
            return Err(io::Error::other("engine is stopping"));
        }
        // Waits for exchanges in flight to settle and keeps new ones out until the copy is
        // taken (an exchange waits at most this long: tens of milliseconds).
        let _no_exchange_in_flight = self.exchange_gate.blocking_write();
        let (resume, paused) = crossbeam_channel::bounded::<()>(0);
        let mut snapshots = Vec::with_capacity(self.mailboxes.len());
        for mailbox in &self.mailboxes {
            let (reply, snapshot) = oneshot::channel();
            let command = Command::Checkpoint {
                reply,
                resume: paused.clone(),
            };
            // Blocking: the barrier must reach every shard, behind what is queued.
            mailbox
                .send(command)
                .map_err(|_| io::Error::other("a shard has stopped"))?;
            snapshots.push(snapshot);
        }
        let mut timers = Vec::new();
        let mut bound_keys = Vec::new();
        let mut holds = 0;
        for snapshot in snapshots {
            let snapshot = snapshot
                .blocking_recv()
                .map_err(|_| io::Error::other("a shard stopped during the checkpoint"))?;
            timers.extend(snapshot.timers);
            bound_keys.extend(snapshot.keys);
            holds += snapshot.holds.len();
        }
        if holds > 0 {
            // The exchange gate makes this unreachable; a hold would be a unit in no record.
            return Err(io::Error::other(format!(
                "{holds} exchange holds outstanding; checkpoint not taken"
            )));
        }
        // Every shard is paused with its batch durable: memory is exactly records 1..=seq.
        let seq = self.journal.durable_seq();
        let skus = self.sku_states();
        let orders: Vec<checkpoint::OrderState> = self
            .orders
            .snapshot()
            .into_iter()
            .map(|(key, entry)| checkpoint::OrderState {
                key: key.0,
                words: entry.to_words(),
            })
            .collect();
        let timers: Vec<checkpoint::TimerState> = timers
            .into_iter()
            .filter(|timer| {
                self.orders
                    .get(timer.key)
                    .is_some_and(|entry| timer.kind.applies_to(entry.state().status))
            })
            .map(|timer| checkpoint::TimerState {
                key: timer.key.0,
                due_ms: timer.due_ms,
                deadline_ms: timer.deadline_ms,
                order_id: timer.order_id.to_string(),
                kind: timer.kind as u8,
                epoch: timer.epoch,
            })
            .collect();
        drop(resume);
        // The checkpoint stands for records 1..=seq: with `interval` and `none` they may
        // still be only in the page cache. Were the checkpoint durable before them, a power
        // cut would leave a journal that ends below it (and retention may already have
        // deleted what an older checkpoint needs), so the journal is synced first.
        self.journal
            .sync_through(seq)
            .map_err(|error| io::Error::other(format!("checkpoint at seq {seq}: {error}")))?;
        let state = checkpoint::Checkpoint {
            seq,
            created_ms: self.clock.now_ms(),
            skus,
            orders,
            timers,
            idempotency_keys: bound_keys.iter().map(checkpoint::KeyState::of).collect(),
            review_rules: self.review_rules_journaled(),
            paused_slots: self.paused_slots(),
        };
        let path = checkpoint::write_if_room(&checkpoint::checkpoints_dir(&self.data_dir), &state)?;
        tracing::info!(path = %path.display(), seq, orders = state.orders.len(), "checkpoint written");
        Ok(seq)
    }

    /// The slots of the SKUs whose new orders are paused (the shards are stopped for the
    /// checkpoint, so no flag changes meanwhile).
    fn paused_slots(&self) -> Vec<u32> {
        (0..self.inventory.slots_max())
            .filter(|&slot_index| {
                let slot = self.inventory.slot(slot_index);
                slot.sku_name().is_some() && slot.paused()
            })
            .collect()
    }

    /// Every SKU's slot as a checkpoint keeps it (the shards are paused).
    fn sku_states(&self) -> Vec<checkpoint::SkuState> {
        let mut skus = Vec::new();
        for slot_index in 0..self.inventory.slots_max() {
            let slot = self.inventory.slot(slot_index);
            let Some(name) = slot.sku_name() else {
                continue;
            };
            let values = slot.values();
            skus.push(checkpoint::SkuState {
                name,
                slot_index,
                stock_total: values.stock_total,
                available: values.available,
                reserved: values.reserved,
                sold: values.sold,
                per_user_limit: values.per_user_limit,
                max_per_order: values.max_per_order,
                payment_timeout_s: values.payment_timeout_s,
            });
        }
        skus
    }

    /// One retention pass: the closed segments at the head of the journal that are older than
    /// `retain`, wholly below every consumer group's offset and covered by a checkpoint (one
    /// is taken if needed) are deleted. Never the last segment, never one a group or recovery
    /// still needs, never one holding the acceptance of an order held for review. Returns the number of segments deleted.
    pub fn retention_pass(&self, retain: Duration) -> io::Result<usize> {
        let segments = journal::list_segments(&self.journal_dir)?;
        let group_floor = self
            .consumers
            .list()?
            .into_iter()
            .map(|(_, seq)| seq)
            .min()
            .unwrap_or(u64::MAX);
        // An order held for review keeps its acceptance record (the reviewers' page names
        // it from there): the oldest held order is a floor like a consumer group's offset.
        let held_floor = match self.orders.held_after(0, 1).0.first() {
            Some((accepted_seq, _)) => accepted_seq - 1,
            None => u64::MAX,
        };
        let group_floor = group_floor.min(held_floor);
        let now = std::time::SystemTime::now();
        let mut deletable = Vec::new();
        for pair in segments.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            let last_seq = next_first - 1;
            let age = std::fs::metadata(path)?
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .unwrap_or_default();
            if age < retain || last_seq > group_floor {
                break; // only a prefix: the journal stays contiguous
            }
            deletable.push((last_seq, path.clone()));
        }
        let Some((needed, _)) = deletable.last() else {
            return Ok(0);
        };
        let covered = checkpoint::list(&checkpoint::checkpoints_dir(&self.data_dir))?
            .first()
            .map_or(0, |(seq, _)| *seq);
        let covered = if covered >= *needed {
            covered
        } else {
            // While backing off, only what an older checkpoint covers is deleted.
            self.checkpoint_unless_backing_off()?.unwrap_or(covered)
        };
        let mut deleted = 0;
        for (last_seq, path) in deletable {
            if last_seq > covered {
                break;
            }
            durable::remove_file(&path)?;
            tracing::info!(path = %path.display(), last_seq, "retention deleted a journal segment");
            deleted += 1;
        }
        if deleted > 0 {
            durable::sync_dir(&self.journal_dir)?;
        }
        Ok(deleted)
    }

    /// Retention's checkpoint, unless it is backing off after a failed one (see
    /// [`limits::CHECKPOINT_BACKOFF_MIN_MS`]) or the journal is stopped for lack of room: a
    /// checkpoint then would only take the room the journal waits for. A failure, or a
    /// stopped journal, starts the back-off (a failure doubles it); a checkpoint taken resets
    /// it.
    fn checkpoint_unless_backing_off(&self) -> io::Result<Option<u64>> {
        let now = std::time::Instant::now();
        if self.journal.is_stopped() {
            let delay = self.checkpoint_backoff.lock().hold(now);
            tracing::warn!(
                backoff_ms = delay.as_millis() as u64,
                "journal stopped; retention takes no checkpoint until it runs again"
            );
            return Ok(None);
        }
        if self.checkpoint_backoff.lock().waiting(now) {
            return Ok(None);
        }
        match self.checkpoint() {
            Ok(seq) => {
                self.checkpoint_backoff.lock().reset();
                Ok(Some(seq))
            }
            Err(error) => {
                let delay = self.checkpoint_backoff.lock().fail(now);
                tracing::warn!(%error, backoff_ms = delay.as_millis() as u64,
                    "checkpoint failed; retention backs off");
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_backoff_doubles_to_its_cap_holds_without_doubling_and_resets() {
        let min = Duration::from_millis(limits::CHECKPOINT_BACKOFF_MIN_MS);
        let max = Duration::from_millis(limits::CHECKPOINT_BACKOFF_MAX_MS);
        let now = std::time::Instant::now();
        let mut backoff = Backoff::default();
        assert!(!backoff.waiting(now));
        assert_eq!(backoff.hold(now), min, "a stopped journal starts it");
        assert_eq!(backoff.hold(now), min, "and keeps it without doubling");
        assert_eq!(backoff.fail(now), min * 2);
        assert!(backoff.waiting(now + min));
        assert!(!backoff.waiting(now + min * 2));
        for _ in 0..64 {
            backoff.fail(now);
        }
        assert_eq!(backoff.fail(now), max);
        backoff.reset();
        assert!(!backoff.waiting(now));
        assert_eq!(backoff.fail(now), min);
    }
}
