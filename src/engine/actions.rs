//! Actions on accepted orders (`POST /v1/orders/{id}/{action}`): routed to the shard that
//! owns the order, which decides them with [`crate::order::transition`]. An `exchange` takes
//! one unit of another SKU, which may live on another shard: the engine first asks that
//! shard for a *hold* (the unit leaves `available` but is in no record yet), then the order's
//! shard journals the exchange, then the hold is *settled* (sold) or released on that shard's
//! control lane, which never sheds.
//!
//! Invariants: a hold is always settled or released, exactly once; it lives under a shared
//! `exchange_gate` guard from hold to settle, so no checkpoint (which takes the gate
//! exclusively) can see one; at most [`crate::limits::EXCHANGES_IN_FLIGHT_MAX`] exchanges
//! hold the gate, which bounds every control lane.

use super::{ActionError, ActionRequest, Engine};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::TrySendError;
use tokio::sync::oneshot;

use crate::inventory::ActionContent;
use crate::limits;
use crate::order::{Action, transition};
use crate::shard::{self, ActionCommand, ActionKey, ActionOutcome, Command, Settle, ShardAction};

impl Engine {
    /// Decides a client's action on an order: routes it to the shard that owns the order
    /// (and, for `exchange`, holds a unit on the new SKU's shard first; see [`crate::shard`]).
    pub async fn order_action(
        self: &Arc<Self>,
        request: ActionRequest,
    ) -> Result<ActionOutcome, ActionError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(ActionError::Stopped);
        }
        let key = self.keys.order_key(&request.order_id);
        let Some(entry) = self.orders.get(key) else {
            return Ok(ActionOutcome::UnknownOrder);
        };
        let order_shard = shard::shard_of(entry.slot_index, self.mailboxes.len());
        let exchange_slot = match (request.action, &request.exchange_sku) {
            (Action::Exchange, Some(sku)) => Some(
                self.slot_of(sku)
                    .ok_or_else(|| ActionError::UnknownSku(sku.clone()))?,
            ),
            _ => None,
        };
        let idempotency = request.idempotency_key.as_ref().map(|given| ActionKey {
            key: given.clone(),
            hash: self.keys.idempotency_key(key, given),
            fingerprint: self.keys.action_fingerprint(ActionContent {
                action: request.action,
                reason: request.reason.as_deref(),
                address: request.address.as_deref(),
                // As the record stores it (replay fingerprints the record): only `return`
                // has the flag.
                restock: request.action.takes_restock() && request.restock,
                exchange_sku: request.exchange_sku.as_deref(),
                shipment: request
                    .shipment
                    .as_ref()
                    .map(|s| (s.carrier.as_str(), s.tracking_no.as_str())),
            }),
        });
        let keyed = idempotency.is_some();
        let (reply, outcome) = oneshot::channel();
        let command = Command::Action(
            ActionCommand {
                action: ShardAction {
                    order_id: request.order_id,
                    key,
                    action: request.action,
                    reason: request.reason,
                    address: request.address,
                    restock: request.restock,
                    exchange_sku: request.exchange_sku,
                    idempotency,
                    exchange_sold_out: None,
                    shipment: request.shipment.map(Box::new),
                },
                reply,
            },
            std::time::Instant::now(),
        );
        let Some(exchange_slot) = exchange_slot else {
            match self.mailboxes[order_shard].try_send(command) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(ActionError::Overloaded),
                Err(TrySendError::Disconnected(_)) => return Err(ActionError::Stopped),
            }
            return outcome.await.map_err(|_| ActionError::Stopped);
        };
        // Refuse early what the order's state refuses, before a unit is held for nothing
        // (the order's shard decides again; this only spares the hold). Not with a key: a
        // retry of an exchange is answered by the shard from its key, whatever the state.
        let state = entry.state();
        if !keyed && transition(state.status, Action::Exchange, false).is_none() {
            return Ok(ActionOutcome::Refused {
                status: state.status,
            });
        }
        // The hold, the exchange and the settle run in their own task: once a unit is held,
        // a client that goes away must not leave it held.
        let engine = self.clone();
        tokio::spawn(async move {
            engine
                .exchange_to_completion(order_shard, exchange_slot, command, outcome)
                .await
        })
        .await
        .unwrap_or(Err(ActionError::Stopped))
    }

    async fn exchange_to_completion(
        &self,
        order_shard: usize,
        exchange_slot: u32,
        mut command: Command,
        outcome: oneshot::Receiver<ActionOutcome>,
    ) -> Result<ActionOutcome, ActionError> {
        let exchange_shard = shard::shard_of(exchange_slot, self.mailboxes.len());
        let _no_checkpoint_until_settled = self.exchange_gate.read().await;
        let (hold_reply, held) = oneshot::channel();
        let hold = Command::Hold {
            slot_index: exchange_slot,
            reply: hold_reply,
        };
        self.send_patiently(exchange_shard, hold).await?;
        match held.await {
            Ok(Ok(())) => {}
            Ok(Err(available)) => {
                let Command::Action(action, _) = &mut command else {
                    unreachable!("an exchange is an action command")
                };
                if action.action.idempotency.is_none() {
                    return Err(ActionError::SoldOut { available });
                }
                // Nothing is held: the order's shard answers a retry from its key, and new
                // work as sold out; there is nothing to settle.
                action.action.exchange_sold_out = Some(available);
                self.send_patiently(order_shard, command).await?;
                return match outcome.await.map_err(|_| ActionError::Stopped)? {
                    ActionOutcome::ExchangeSoldOut { available } => {
                        Err(ActionError::SoldOut { available })
                    }
                    other => Ok(other),
                };
            }
            Err(_) => return Err(ActionError::Stopped),
        }
        let result = match self.send_patiently(order_shard, command).await {
            Ok(()) => outcome.await.map_err(|_| ActionError::Stopped),
            Err(error) => Err(error),
        };
        let sold = matches!(result, Ok(ActionOutcome::Done { .. }));
        let (done, settled) = oneshot::channel();
        let settle = Settle {
            slot_index: exchange_slot,
            sold,
            done,
        };
        // Never shed and never behind a full mailbox: the control lane takes it at once
        // (only a stopped shard refuses it; the engine's memory is then rebuilt from the
        // journal, which has the exchange or not).
        let _ = self.control_lanes[exchange_shard].send(settle);
        // The client is answered once the slot shows the settle.
        let _ = settled.await;
        result
    }

    /// Sends a command that must not be shed (an admin change, an exchange's steps), waiting
    /// up to a second for room in a busy mailbox.
    pub(super) async fn send_patiently(
        &self,
        shard: usize,
        mut command: Command,
    ) -> Result<(), ActionError> {
        let mailbox = &self.mailboxes[shard];
        for _ in 0..limits::PATIENT_SEND_ATTEMPTS {
            match mailbox.try_send(command) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    command = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(ActionError::Stopped),
            }
        }
        Err(ActionError::Overloaded)
    }
}
