//! The journal's view: the records folded into per-SKU figures with the engine's own
//! transition rules (see the module above for what each record does).

use std::collections::HashMap;
use std::path::Path;

use crate::journal::record::{ArchivedEvent, ArchivedOrderAccepted, ArchivedOrderAction};
use crate::journal::{JournalReader, ReadError, ReadLimit};
use crate::order::{OrderStatus, StockEffect, transition};

use super::{ReconcileError, View};

/// What the fold remembers of one order: enough to apply its actions' stock effects.
pub(super) struct TrackedOrder {
    sku: u32,
    qty: u32,
    status: OrderStatus,
}

/// The journal folded into per-SKU figures, read on incrementally.
pub(super) struct JournalFold {
    pub(super) reader: JournalReader,
    pub(super) folded: Folded,
}

/// What the records read so far add up to.
#[derive(Default)]
pub(super) struct Folded {
    pub(super) view: View,
    /// SKU names by number (orders keep a number, not a copy of the name).
    names: Vec<String>,
    numbers: HashMap<String, u32>,
    pub(super) orders: HashMap<Box<str>, TrackedOrder>,
}

impl JournalFold {
    pub(super) fn open(data_dir: &Path) -> Result<Self, ReconcileError> {
        let dir = data_dir.join("journal");
        if !dir.is_dir() {
            return Err(ReconcileError::Journal(format!(
                "no journal at {} (is it the engine's data directory?)",
                dir.display()
            )));
        }
        Ok(Self {
            reader: JournalReader::open(&dir, 0, ReadLimit::Written),
            folded: Folded::default(),
        })
    }

    /// Reads every record written since the last call.
    pub(super) fn read_on(&mut self) -> Result<(), ReconcileError> {
        loop {
            let (seq, record) = match self.reader.next_record() {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(()),
                Err(ReadError::Deleted {
                    first_available, ..
                }) => {
                    return Err(ReconcileError::Journal(format!(
                        "retention deleted the records before seq {first_available}; the \
                         journal view needs the whole journal (compare with --url only)"
                    )));
                }
                Err(error) => return Err(ReconcileError::Journal(error.to_string())),
            };
            match &record.event {
                ArchivedEvent::Sku(change) => {
                    self.folded
                        .sku(change.sku.as_str(), change.stock_total.to_native());
                }
                ArchivedEvent::Accepted(accepted) => self.folded.accepted(seq, accepted, false)?,
                ArchivedEvent::Held(held) => self.folded.accepted(seq, &held.order, true)?,
                ArchivedEvent::ReviewRules(_) => {}
                // A pause moves no unit.
                ArchivedEvent::SkuPause(_) => {}
                event @ (ArchivedEvent::Action(_)
                | ArchivedEvent::KeyedAction(_)
                | ArchivedEvent::Shipment(_)) => {
                    self.folded
                        .action(seq, event.order_action().expect("an action record"))?;
                }
            }
        }
    }
}

impl Folded {
    /// A `sku` record: the SKU's `stock_total` (numbered the first time it is seen).
    fn sku(&mut self, name: &str, stock_total: u64) {
        if !self.numbers.contains_key(name) {
            self.numbers
                .insert(name.to_owned(), self.names.len() as u32);
            self.names.push(name.to_owned());
        }
        self.view.entry(name.to_owned()).or_default().stock_total = stock_total;
    }

    /// An `accepted` record: its `qty` reserved (prepaid, escrow, or held for review) or sold
    /// (cod).
    fn accepted(
        &mut self,
        seq: u64,
        accepted: &ArchivedOrderAccepted,
        held: bool,
    ) -> Result<(), ReconcileError> {
        let name = accepted.sku.as_str();
        let sku = *self
            .numbers
            .get(name)
            .ok_or_else(|| damaged(seq, format!("an order for unknown sku {name}")))?;
        let qty = accepted.qty.to_native();
        let status = accepted.payment.to_native().first_status(held);
        let counts = self.view.get_mut(name).expect("numbered skus have counts");
        if status.holds_reserved() {
            counts.reserved += u64::from(qty);
        } else {
            counts.sold += u64::from(qty);
        }
        self.orders.insert(
            accepted.order_id.as_str().into(),
            TrackedOrder { sku, qty, status },
        );
        Ok(())
    }

    /// An action record: the order's next status by [`transition`], and its stock effect.
    fn action(&mut self, seq: u64, change: &ArchivedOrderAction) -> Result<(), ReconcileError> {
        let order_id = change.order_id.as_str();
        let action = change.action.to_native();
        let order = self.orders.get_mut(order_id).ok_or_else(|| {
            damaged(
                seq,
                format!("{} of unknown order {order_id}", action.as_str()),
            )
        })?;
        let moved = transition(order.status, action, change.restock).ok_or_else(|| {
            damaged(
                seq,
                format!(
                    "{} of order {order_id} in state {} is not a valid transition",
                    action.as_str(),
                    order.status.as_str()
                ),
            )
        })?;
        order.status = moved.to;
        let qty = u64::from(order.qty);
        // A restocked exchange: the unit sent back is available again, the order holds one
        // unit fewer (as the engine does).
        let restock_one =
            action == crate::order::Action::Exchange && change.restock && order.qty > 0;
        if restock_one {
            order.qty -= 1;
        }
        let name = &self.names[order.sku as usize];
        let counts = self.view.get_mut(name).expect("numbered skus have counts");
        let underflow = || {
            damaged(
                seq,
                format!(
                    "{} of order {order_id} gives back more than {name} holds",
                    action.as_str()
                ),
            )
        };
        match moved.stock {
            StockEffect::None => {}
            StockEffect::ReservedToSold => {
                counts.reserved = counts.reserved.checked_sub(qty).ok_or_else(underflow)?;
                counts.sold += qty;
            }
            StockEffect::GiveBack {
                from_reserved: true,
            } => {
                counts.reserved = counts.reserved.checked_sub(qty).ok_or_else(underflow)?;
            }
            StockEffect::GiveBack {
                from_reserved: false,
            } => {
                counts.sold = counts.sold.checked_sub(qty).ok_or_else(underflow)?;
            }
            StockEffect::TakeExchangeUnit => {
                let exchanged = change
                    .exchange_sku
                    .as_ref()
                    .map(|sku| sku.as_str())
                    .ok_or_else(|| {
                        damaged(seq, format!("exchange of order {order_id} names no sku"))
                    })?;
                self.view
                    .get_mut(exchanged)
                    .ok_or_else(|| damaged(seq, format!("exchange to unknown sku {exchanged}")))?
                    .sold += 1;
            }
        }
        if restock_one {
            let counts = self.view.get_mut(name).expect("numbered skus have counts");
            counts.sold = counts.sold.checked_sub(1).ok_or_else(underflow)?;
        }
        Ok(())
    }
}

/// A record the fold cannot apply: the journal is damaged (or not this engine's).
pub(super) fn damaged(seq: u64, what: String) -> ReconcileError {
    ReconcileError::Journal(format!("seq {seq}: {what}"))
}
