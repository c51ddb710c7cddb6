//! SKU changes: a new SKU's defaults, an update's checks, and a shard's batch of changes
//! ([`SkuBatchCommand`]) journaled in one append and one commit, applied once durable. A
//! single `PUT /v1/skus/{sku}` is a batch of one.

use std::collections::HashMap;

use super::{ShardWriter, SkuBatchCommand, SkuBatchItem, SkuOutcome, SkuUpdate};
use crate::inventory::SlotValues;
use crate::journal::{Event, FrameBatch, Record, SkuChanged};

/// The defaults of a new SKU (contract): no per-user limit, 10 per order, 900 s to pay.
pub fn new_sku_values(update: &SkuUpdate) -> SlotValues {
    let stock = update.stock.unwrap_or(0);
    SlotValues {
        stock_total: stock,
        available: stock,
        reserved: 0,
        sold: 0,
        per_user_limit: update.per_user_limit.unwrap_or(0),
        max_per_order: update
            .max_per_order
            .unwrap_or(crate::config::default_max_per_order()),
        payment_timeout_s: update
            .payment_timeout_s
            .unwrap_or(crate::config::default_payment_timeout_s()),
    }
}

/// Applies an update to an existing SKU; `Err(committed)` when stock would drop below what is
/// sold and reserved.
pub fn updated_sku_values(current: SlotValues, update: &SkuUpdate) -> Result<SlotValues, u64> {
    let committed = current.reserved + current.sold;
    let stock_total = update.stock.unwrap_or(current.stock_total);
    if stock_total < committed {
        return Err(committed);
    }
    Ok(SlotValues {
        stock_total,
        available: stock_total - committed,
        reserved: current.reserved,
        sold: current.sold,
        per_user_limit: update.per_user_limit.unwrap_or(current.per_user_limit),
        max_per_order: update.max_per_order.unwrap_or(current.max_per_order),
        payment_timeout_s: update
            .payment_timeout_s
            .unwrap_or(current.payment_timeout_s),
    })
}

/// A change that passed its checks, journaled as one frame of the batch.
struct PlannedChange {
    /// The item's index in the command.
    index: usize,
    is_new: bool,
    values: SlotValues,
}

/// Checks one change against its slot as the batch's earlier changes leave it (`slot_name`,
/// `current`): the slot must be what the engine thinks it is (free for a new SKU, this SKU's
/// otherwise), checked before anything is journaled (a record that could not be applied
/// would make the journal unreplayable); stock must not drop below sold + reserved.
fn check_change(
    item: &SkuBatchItem,
    slot_name: Option<String>,
    current: SlotValues,
) -> Result<SlotValues, SkuOutcome> {
    let slot_matches = if item.is_new {
        slot_name.is_none()
    } else {
        slot_name.as_deref() == Some(item.sku.as_str())
    };
    if !slot_matches {
        let reason = format!(
            "slot {} holds {slot_name:?}, not what {} expects",
            item.slot_index, item.sku
        );
        tracing::error!(%reason, "sku change refused");
        return Err(SkuOutcome::Unavailable { reason });
    }
    if item.is_new {
        Ok(new_sku_values(&item.update))
    } else {
        updated_sku_values(current, &item.update)
            .map_err(|committed| SkuOutcome::StockConflict { committed })
    }
}

impl ShardWriter {
    /// Journals a batch of SKU changes for this shard in one append and one commit, applies
    /// them once durable, and answers one outcome per item (see [`SkuBatchCommand`]).
    pub(super) fn apply_sku_batch(&mut self, command: SkuBatchCommand, at_ms: u64) {
        let SkuBatchCommand { items, reply } = command;
        let mut outcomes: Vec<Option<SkuOutcome>> = vec![None; items.len()];
        let mut frames = FrameBatch::default();
        let planned = self.plan_sku_changes(&items, at_ms, &mut frames, &mut outcomes);
        if !frames.is_empty() {
            self.commit_sku_changes(&items, &frames, planned, &mut outcomes);
        }
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every item has an outcome"))
            .collect();
        let _ = reply.send(outcomes);
    }

    /// Checks each change on its own, later changes of a slot seeing the earlier ones, and
    /// encodes the valid ones into `frames` (in order); a refused change gets its outcome now.
    fn plan_sku_changes(
        &self,
        items: &[SkuBatchItem],
        at_ms: u64,
        frames: &mut FrameBatch,
        outcomes: &mut [Option<SkuOutcome>],
    ) -> Vec<PlannedChange> {
        // Each slot as the earlier changes of this batch leave it (name, values).
        let mut planned_slots: HashMap<u32, (String, SlotValues)> = HashMap::new();
        let mut planned = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let (slot_name, current) = match planned_slots.get(&item.slot_index) {
                Some((name, values)) => (Some(name.clone()), *values),
                None => {
                    let slot = self.inventory.slot(item.slot_index);
                    (slot.sku_name(), slot.values())
                }
            };
            let values = match check_change(item, slot_name, current) {
                Ok(values) => values,
                Err(refused) => {
                    outcomes[index] = Some(refused);
                    continue;
                }
            };
            let record = Record {
                at_ms,
                event: Event::Sku(SkuChanged {
                    sku: item.sku.clone(),
                    slot_index: item.slot_index,
                    stock_total: values.stock_total,
                    per_user_limit: values.per_user_limit,
                    max_per_order: values.max_per_order,
                    payment_timeout_s: values.payment_timeout_s,
                }),
            };
            if let Err(error) = frames.push(&record) {
                tracing::error!(%error, "cannot encode a sku change");
                outcomes[index] = Some(SkuOutcome::Unavailable {
                    reason: error.to_string(),
                });
                continue;
            }
            planned_slots.insert(item.slot_index, (item.sku.clone(), values));
            planned.push(PlannedChange {
                index,
                is_new: item.is_new,
                values,
            });
        }
        planned
    }

    /// Appends and commits the planned changes' frames; once durable applies each to its
    /// slot, in order, and answers it with its seq (or answers each 503 if the journal failed).
    fn commit_sku_changes(
        &mut self,
        items: &[SkuBatchItem],
        frames: &FrameBatch,
        planned: Vec<PlannedChange>,
        outcomes: &mut [Option<SkuOutcome>],
    ) {
        let journal = self
            .journal
            .as_ref()
            .expect("a running shard has a journal");
        let committed = journal.append(frames).and_then(|range| {
            journal.commit(range.last)?;
            Ok(range)
        });
        match committed {
            Ok(range) => {
                for (frame_index, change) in planned.into_iter().enumerate() {
                    let item = &items[change.index];
                    if change.is_new {
                        self.inventory
                            .init_slot(item.slot_index, &item.sku, change.values);
                    } else {
                        self.inventory.slot(item.slot_index).write(change.values);
                    }
                    outcomes[change.index] = Some(SkuOutcome::Applied {
                        seq: range.first + frame_index as u64,
                        values: change.values,
                    });
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for change in planned {
                    outcomes[change.index] = Some(SkuOutcome::Unavailable {
                        reason: reason.clone(),
                    });
                }
            }
        }
    }
}
