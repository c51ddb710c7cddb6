//! An operator's pause or resume of new orders for one SKU ([`Command::Pause`]): one journal
//! record (`Event::SkuPause`) in an append and a commit of its own, the slot's flag set only
//! once it is durable, so a restart (replay or checkpoint) rebuilds exactly the flag that was
//! answered. Orders already accepted and their actions are not affected.
//!
//! [`Command::Pause`]: super::Command::Pause

use super::{PauseCommand, ShardWriter, SkuOutcome};
use crate::journal::{Event, FrameBatch, Record, SkuPaused};

impl ShardWriter {
    /// Journals the pause (or resume) and, once durable, sets the slot's flag. The slot must
    /// be this SKU's (checked before anything is journaled, as for a SKU change).
    pub(super) fn apply_pause(&mut self, command: PauseCommand, at_ms: u64) {
        let PauseCommand {
            sku,
            slot_index,
            paused,
            reply,
        } = command;
        let slot = self.inventory.slot(slot_index);
        if slot.sku_name().as_deref() != Some(sku.as_str()) {
            let reason = format!("slot {slot_index} does not hold {sku}");
            tracing::error!(%reason, "pause refused");
            let _ = reply.send(SkuOutcome::Unavailable { reason });
            return;
        }
        let record = Record {
            at_ms,
            event: Event::SkuPause(Box::new(SkuPaused {
                sku,
                slot_index,
                paused,
            })),
        };
        let mut frames = FrameBatch::default();
        if let Err(error) = frames.push(&record) {
            let _ = reply.send(SkuOutcome::Unavailable {
                reason: error.to_string(),
            });
            return;
        }
        let journal = self
            .journal
            .as_ref()
            .expect("a running shard has a journal");
        let committed = journal.append(&frames).and_then(|range| {
            journal.commit(range.last)?;
            Ok(range)
        });
        let outcome = match committed {
            Ok(range) => {
                let slot = self.inventory.slot(slot_index);
                slot.set_paused(paused);
                SkuOutcome::Applied {
                    seq: range.first,
                    values: slot.values(),
                }
            }
            Err(error) => SkuOutcome::Unavailable {
                reason: error.to_string(),
            },
        };
        let _ = reply.send(outcome);
    }
}
