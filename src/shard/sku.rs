//! SKU changes: a new SKU's defaults, an update's checks, and a shard's bulk change
//! journaled in one append and one commit, applied once durable.

use super::{ShardWriter, SkuBatchCommand, SkuCommand, SkuOutcome, SkuUpdate};
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

impl ShardWriter {
    /// Journals a SKU change on its own and applies it once durable.
    pub(super) fn apply_sku(&mut self, command: SkuCommand, at_ms: u64) {
        let SkuCommand {
            sku,
            slot_index,
            is_new,
            update,
            reply,
        } = command;
        let slot = self.inventory.slot(slot_index);
        // The slot must be what the engine thinks it is, checked before anything is journaled
        // (a record that could not be applied would make the journal unreplayable).
        let slot_name = slot.sku_name();
        let slot_matches = if is_new {
            slot_name.is_none()
        } else {
            slot_name.as_deref() == Some(sku.as_str())
        };
        if !slot_matches {
            let reason = format!("slot {slot_index} holds {slot_name:?}, not what {sku} expects");
            tracing::error!(%reason, "sku change refused");
            let _ = reply.send(SkuOutcome::Unavailable { reason });
            return;
        }
        let values = if is_new {
            new_sku_values(&update)
        } else {
            match updated_sku_values(slot.values(), &update) {
                Ok(values) => values,
                Err(committed) => {
                    let _ = reply.send(SkuOutcome::StockConflict { committed });
                    return;
                }
            }
        };
        let record = Record {
            at_ms,
            event: Event::Sku(SkuChanged {
                sku: sku.clone(),
                slot_index,
                stock_total: values.stock_total,
                per_user_limit: values.per_user_limit,
                max_per_order: values.max_per_order,
                payment_timeout_s: values.payment_timeout_s,
            }),
        };
        let journal = self
            .journal
            .as_ref()
            .expect("a running shard has a journal");
        let mut frames = FrameBatch::default();
        let result = frames
            .push(&record)
            .map_err(|e| e.to_string())
            .and_then(|()| journal.append(&frames).map_err(|e| e.to_string()))
            .and_then(|range| {
                journal
                    .commit(range.last)
                    .map(|()| range)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(range) => {
                if is_new {
                    self.inventory.init_slot(slot_index, &sku, values);
                } else {
                    slot.write(values);
                }
                let _ = reply.send(SkuOutcome::Applied {
                    seq: range.first,
                    values,
                });
            }
            Err(reason) => {
                let _ = reply.send(SkuOutcome::Unavailable { reason });
            }
        }
    }

    /// Journals a bulk load's changes for this shard in one append and one commit, applies
    /// them once durable, and answers one outcome per item (see [`SkuBatchCommand`]).
    pub(super) fn apply_sku_batch(&mut self, command: SkuBatchCommand, at_ms: u64) {
        let SkuBatchCommand { items, reply } = command;
        let mut outcomes: Vec<Option<SkuOutcome>> = vec![None; items.len()];
        // Each slot as the earlier changes of this batch leave it (name, values).
        let mut planned_slots: std::collections::HashMap<u32, (String, SlotValues)> =
            std::collections::HashMap::new();
        // (item index, new slot?, values), one per frame, in frame order.
        let mut planned: Vec<(usize, bool, SlotValues)> = Vec::new();
        let mut frames = FrameBatch::default();
        for (index, item) in items.iter().enumerate() {
            let (slot_name, current) = match planned_slots.get(&item.slot_index) {
                Some((name, values)) => (Some(name.clone()), *values),
                None => {
                    let slot = self.inventory.slot(item.slot_index);
                    (slot.sku_name(), slot.values())
                }
            };
            // The same check as `apply_sku`, before anything is journaled.
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
                outcomes[index] = Some(SkuOutcome::Unavailable { reason });
                continue;
            }
            let values = if item.is_new {
                new_sku_values(&item.update)
            } else {
                match updated_sku_values(current, &item.update) {
                    Ok(values) => values,
                    Err(committed) => {
                        outcomes[index] = Some(SkuOutcome::StockConflict { committed });
                        continue;
                    }
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
            planned.push((index, item.is_new, values));
        }
        if !frames.is_empty() {
            let journal = self
                .journal
                .as_ref()
                .expect("a running shard has a journal");
            let committed = journal.append(&frames).and_then(|range| {
                journal.commit(range.last)?;
                Ok(range)
            });
            match committed {
                Ok(range) => {
                    for (frame_index, (index, is_new, values)) in planned.into_iter().enumerate() {
                        let item = &items[index];
                        if is_new {
                            self.inventory.init_slot(item.slot_index, &item.sku, values);
                        } else {
                            self.inventory.slot(item.slot_index).write(values);
                        }
                        outcomes[index] = Some(SkuOutcome::Applied {
                            seq: range.first + frame_index as u64,
                            values,
                        });
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    for (index, _, _) in planned {
                        outcomes[index] = Some(SkuOutcome::Unavailable {
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every item has an outcome"))
            .collect();
        let _ = reply.send(outcomes);
    }
}
