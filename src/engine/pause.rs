//! Pause and resume of new orders for one SKU (`POST /v1/skus/{sku}/pause`, `/resume`): the
//! engine's side sends the SKU's shard one [`Command::Pause`] and waits for it to be durable.
//!
//! Invariant: the flag a reader sees ([`Engine::sku_paused`], the SKU's view) is set only
//! after its journal record is durable, so what was answered 200 survives a restart.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{ActionError, Engine, SkuView};
use crate::shard::{self, Command, PauseCommand, SkuOutcome};

/// Why a pause or resume was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseError {
    UnknownSku,
    Overloaded,
    Unavailable(String),
}

impl Engine {
    /// Whether new orders for `sku` are paused (`false` for an unknown SKU).
    pub fn sku_paused(&self, sku: &str) -> bool {
        self.slot_of(sku)
            .is_some_and(|slot_index| self.inventory.slot(slot_index).paused())
    }

    /// Pauses (`paused = true`) or resumes new orders for `sku`, journaled; answers the SKU's
    /// view once the record is durable. Pausing a paused SKU journals it again (an operator's
    /// act is recorded as made) and changes nothing else.
    pub async fn pause_sku(
        self: &Arc<Self>,
        sku: &str,
        paused: bool,
    ) -> Result<SkuView, PauseError> {
        let slot_index = self.slot_of(sku).ok_or(PauseError::UnknownSku)?;
        let shard = shard::shard_of(slot_index, self.mailboxes.len());
        let (reply, outcome) = oneshot::channel();
        let command = Command::Pause(PauseCommand {
            sku: sku.to_owned(),
            slot_index,
            paused,
            reply,
        });
        self.send_patiently(shard, command)
            .await
            .map_err(|error| match error {
                ActionError::Overloaded => PauseError::Overloaded,
                _ => PauseError::Unavailable("engine is stopping".into()),
            })?;
        match outcome.await {
            Ok(SkuOutcome::Applied { .. }) => self
                .sku_view(sku)
                .ok_or_else(|| PauseError::Unavailable("sku vanished".into())),
            Ok(SkuOutcome::Unavailable { reason }) => Err(PauseError::Unavailable(reason)),
            Ok(SkuOutcome::StockConflict { .. }) => {
                Err(PauseError::Unavailable("unexpected answer".into()))
            }
            Err(_) => Err(PauseError::Unavailable("shard stopped".into())),
        }
    }
}
