//! The SKU catalogue: the name → slot map, the stock views (`GET /v1/skus`), and every SKU
//! change (`PUT /v1/skus/{sku}`, `POST /v1/skus:bulk`).
//!
//! Invariants: slots are handed out only under the `sku_admin` lock, one per SKU, never
//! reused; a change is applied to a slot only by the shard that owns it, once its record is
//! durable; the catalogue learns a new SKU only after its record is durable, and always
//! does (the change runs in its own task, so a client that hangs up cannot cut it short).

use super::{ActionError, Engine, PutSkuError, SkuView};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::shard::{self, Command, SkuOutcome, SkuUpdate};

impl Engine {
    /// The slot of a SKU, if the engine knows it.
    pub fn slot_of(&self, sku: &str) -> Option<u32> {
        self.catalog.get(sku).map(|entry| *entry)
    }

    /// The units of a SKU available now: a read of its slot, with no view built (for callers
    /// on the order path).
    pub fn available(&self, sku: &str) -> Option<u64> {
        let slot_index = self.slot_of(sku)?;
        Some(self.inventory.slot(slot_index).available())
    }

    pub fn sku_view(&self, sku: &str) -> Option<SkuView> {
        let slot_index = self.slot_of(sku)?;
        Some(SkuView::of_slot(sku, self.inventory.slot(slot_index)))
    }

    /// Every SKU with its current stock, sorted by name.
    pub fn sku_views(&self) -> Vec<SkuView> {
        self.sku_page("", usize::MAX)
    }

    /// Up to `limit` SKUs whose names sort after `after`, by name, with their stock.
    pub fn sku_page(&self, after: &str, limit: usize) -> Vec<SkuView> {
        let mut names: Vec<(String, u32)> = self
            .catalog
            .iter()
            .filter(|entry| entry.key().as_str() > after)
            .map(|entry| (entry.key().clone(), *entry.value()))
            .collect();
        names.sort_unstable();
        names
            .into_iter()
            .take(limit)
            .map(|(name, slot)| SkuView::of_slot(&name, self.inventory.slot(slot)))
            .collect()
    }

    /// Creates or updates a SKU through its shard and the journal: a bulk change of one
    /// ([`Engine::put_skus`]), so one journal record, one append + commit, and the same checks
    /// and answers. The work runs in its own task: if the caller goes away (a client
    /// disconnects mid-PUT) the change still completes and the catalogue learns of it, so
    /// memory never disagrees with the journal.
    pub async fn put_sku(
        self: &Arc<Self>,
        sku: &str,
        update: SkuUpdate,
    ) -> Result<SkuView, PutSkuError> {
        let mut results = self.put_skus(vec![(sku.to_owned(), update)]).await;
        debug_assert_eq!(results.len(), 1);
        let paused = self.sku_paused(sku);
        results
            .pop()
            .unwrap_or_else(|| Err(PutSkuError::Unavailable("no answer".into())))
            .map(|view| SkuView { paused, ..view })
    }

    /// Creates or updates many SKUs at once (`POST /v1/skus:bulk`), one result per item in
    /// the items' order. Like [`Engine::put_sku`] the work runs in its own task, so a client
    /// that goes away mid-bulk cannot leave the catalogue behind the journal.
    ///
    /// The path: under the `sku_admin` lock, each new SKU gets the next free slot (a SKU
    /// named twice keeps its first slot; the later change updates it, in order); the changes
    /// are grouped by the shard that owns each slot and every shard gets one
    /// [`Command::SkuBatch`] (sent to all before any answer is awaited, so their commits can
    /// share a group write). Each shard checks each change on its own, journals the valid ones
    /// in one append + commit and applies them once durable; the catalogue then learns the
    /// new SKUs that were applied. A slot handed out for a change that was then refused stays
    /// unused (a gap in the slot file, never a slot with two names).
    pub async fn put_skus(
        self: &Arc<Self>,
        items: Vec<(String, SkuUpdate)>,
    ) -> Vec<Result<SkuView, PutSkuError>> {
        let engine = self.clone();
        let count = items.len();
        tokio::spawn(async move { engine.put_skus_to_completion(items).await })
            .await
            .unwrap_or_else(|error| {
                vec![
                    Err(PutSkuError::Unavailable(format!(
                        "sku task failed: {error}"
                    )));
                    count
                ]
            })
    }

    async fn put_skus_to_completion(
        &self,
        items: Vec<(String, SkuUpdate)>,
    ) -> Vec<Result<SkuView, PutSkuError>> {
        let _admin = self.sku_admin.lock().await;
        let mut results: Vec<Option<Result<SkuView, PutSkuError>>> = vec![None; items.len()];
        let per_shard = self.assign_slots(items, &mut results);
        let waiting = self.send_sku_batches(per_shard, &mut results).await;
        let learned = Self::collect_sku_answers(waiting, &mut results).await;
        // The new SKUs join the catalogue (become visible) together, once every shard has
        // answered; each was journaled and applied by then.
        if let Some(highest) = learned.iter().map(|(_, slot_index)| *slot_index).max() {
            self.next_slot.fetch_max(highest + 1, Ordering::AcqRel);
        }
        for (sku, slot_index) in learned {
            self.catalog.insert(sku, slot_index);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| Err(PutSkuError::Unavailable("no answer".into())))
            })
            .collect()
    }

    /// Gives each change its slot (a new SKU the next free one; a SKU named twice keeps its
    /// first) and groups the changes by the shard that owns it, with each item's index. A new
    /// SKU with no slot left is answered `CatalogueFull` in `results`. Under `sku_admin`.
    fn assign_slots(
        &self,
        items: Vec<(String, SkuUpdate)>,
        results: &mut [Option<Result<SkuView, PutSkuError>>],
    ) -> Vec<Vec<(usize, shard::SkuBatchItem)>> {
        let shard_count = self.mailboxes.len();
        let slots_max = self.inventory.slots_max();
        let mut next_slot = self.next_slot.load(Ordering::Acquire);
        let mut new_slots: HashMap<String, u32> = HashMap::new();
        let mut per_shard: Vec<Vec<(usize, shard::SkuBatchItem)>> =
            (0..shard_count).map(|_| Vec::new()).collect();
        for (index, (sku, update)) in items.into_iter().enumerate() {
            let (slot_index, is_new) = match self.slot_of(&sku).or(new_slots.get(&sku).copied()) {
                Some(slot_index) => (slot_index, false),
                None if next_slot >= slots_max => {
                    results[index] = Some(Err(PutSkuError::CatalogueFull { slots_max }));
                    continue;
                }
                None => {
                    let slot_index = next_slot;
                    next_slot += 1;
                    new_slots.insert(sku.clone(), slot_index);
                    (slot_index, true)
                }
            };
            per_shard[shard::shard_of(slot_index, shard_count)].push((
                index,
                shard::SkuBatchItem {
                    sku,
                    slot_index,
                    is_new,
                    update,
                },
            ));
        }
        per_shard
    }

    /// Sends every shard with changes its one [`Command::SkuBatch`], all before any answer is
    /// awaited (so their commits can share a group write). A shard that cannot take it has
    /// its items answered in `results` (overloaded, or the engine is stopping).
    async fn send_sku_batches(
        &self,
        per_shard: Vec<Vec<(usize, shard::SkuBatchItem)>>,
        results: &mut [Option<Result<SkuView, PutSkuError>>],
    ) -> Vec<Waiting> {
        let mut waiting: Vec<Waiting> = Vec::new();
        for (shard, batch) in per_shard.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let (indices, items): (Vec<usize>, Vec<shard::SkuBatchItem>) =
                batch.into_iter().unzip();
            let names = items
                .iter()
                .map(|item| (item.sku.clone(), item.slot_index, item.is_new))
                .collect();
            let (reply, outcome) = oneshot::channel();
            let command = Command::SkuBatch(shard::SkuBatchCommand { items, reply });
            match self.send_patiently(shard, command).await {
                Ok(()) => waiting.push((indices, names, outcome)),
                Err(error) => {
                    let error = match error {
                        ActionError::Overloaded => PutSkuError::Overloaded,
                        _ => PutSkuError::Unavailable("engine is stopping".into()),
                    };
                    for index in indices {
                        results[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        waiting
    }

    /// Awaits each shard's answers and puts them in `results`; returns the new SKUs that
    /// were applied (name, slot), for the catalogue to learn.
    async fn collect_sku_answers(
        waiting: Vec<Waiting>,
        results: &mut [Option<Result<SkuView, PutSkuError>>],
    ) -> Vec<(String, u32)> {
        let mut learned: Vec<(String, u32)> = Vec::new();
        for (indices, names, outcome) in waiting {
            let Ok(outcomes) = outcome.await else {
                for index in indices {
                    results[index] = Some(Err(PutSkuError::Unavailable("shard stopped".into())));
                }
                continue;
            };
            for ((index, (sku, slot_index, is_new)), outcome) in
                indices.into_iter().zip(names).zip(outcomes)
            {
                results[index] = Some(match outcome {
                    SkuOutcome::Applied { values, .. } => {
                        let view = SkuView::new(&sku, values);
                        if is_new {
                            learned.push((sku, slot_index));
                        }
                        Ok(view)
                    }
                    SkuOutcome::StockConflict { committed } => {
                        Err(PutSkuError::StockConflict { committed })
                    }
                    SkuOutcome::Unavailable { reason } => Err(PutSkuError::Unavailable(reason)),
                });
            }
        }
        learned
    }
}

/// A shard's SKU batch awaiting its answer: the items' indices, (name, slot, new?) per item,
/// and the shard's answer.
type Waiting = (
    Vec<usize>,
    Vec<(String, u32, bool)>,
    oneshot::Receiver<Vec<SkuOutcome>>,
);
