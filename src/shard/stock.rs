//! The stock seam: every unit a shard takes from a SKU or gives back moves through [`Stock`],
//! so that where units come from can change without touching the decision code. A single
//! engine sells from the memory-mapped slots ([`crate::inventory::Inventory`]); a node of a
//! cluster would sell from its share of a global stock behind the same methods, taking
//! blocks of units ahead of need and returning what comes back.
//!
//! Invariants: only the shard that owns a slot calls these for it (one writer per slot,
//! published by the slot's seqlock); each method keeps `available + reserved + sold =
//! stock_total`; a take is never asked for more than is available (the caller checked with
//! [`Stock::figures`] under the same single writer).

use std::sync::Arc;

use crate::inventory::{Inventory, SlotValues};
use crate::order::{Payment, StockEffect};

/// Units of the slots this shard owns.
pub struct Stock {
    inventory: Arc<Inventory>,
}

impl Stock {
    pub fn new(inventory: Arc<Inventory>) -> Self {
        Self { inventory }
    }

    /// The SKU's figures and settings now.
    pub fn figures(&self, slot_index: u32) -> SlotValues {
        self.inventory.slot(slot_index).values()
    }

    /// A new order takes `qty` units: reserved while it awaits payment, sold at once for
    /// cash on delivery.
    pub fn take_for_order(&self, slot_index: u32, qty: u32, payment: Payment) {
        self.change(slot_index, |values| values.take(u64::from(qty), payment));
    }

    /// Undoes [`Stock::take_for_order`] (the batch did not become durable).
    pub fn untake_order(&self, slot_index: u32, qty: u32, payment: Payment) {
        self.change(slot_index, |values| values.untake(u64::from(qty), payment));
    }

    /// An action's effect on the order's own units (payment, cancellation, refund, expiry,
    /// restocked return). The unit an exchange takes from another SKU is [`Stock::hold`]'s.
    pub fn apply(&self, slot_index: u32, qty: u32, effect: StockEffect) {
        let qty = u64::from(qty);
        match effect {
            StockEffect::None | StockEffect::TakeExchangeUnit => {}
            StockEffect::ReservedToSold => {
                self.change(slot_index, |values| values.settle_reserved(qty));
            }
            StockEffect::GiveBack { from_reserved } => {
                self.change(slot_index, |values| values.give_back(qty, from_reserved));
            }
        }
    }

    /// Undoes [`Stock::apply`].
    pub fn revert(&self, slot_index: u32, qty: u32, effect: StockEffect) {
        let qty = u64::from(qty);
        match effect {
            StockEffect::None | StockEffect::TakeExchangeUnit => {}
            StockEffect::ReservedToSold => {
                self.change(slot_index, |values| values.unsettle_reserved(qty));
            }
            StockEffect::GiveBack { from_reserved } => {
                self.change(slot_index, |values| values.take_into(qty, from_reserved));
            }
        }
    }

    /// Holds one unit for an exchange (available → reserved, in no record yet). `Err` with
    /// what is available when none is.
    pub fn hold(&self, slot_index: u32) -> Result<(), u64> {
        let slot = self.inventory.slot(slot_index);
        let mut values = slot.values();
        if values.available < 1 {
            return Err(values.available);
        }
        values.take_into(1, true);
        slot.write(values);
        Ok(())
    }

    /// Ends a hold: the unit is sold (the exchange was journaled) or comes back.
    pub fn settle_hold(&self, slot_index: u32, sold: bool) {
        self.change(slot_index, |values| {
            if sold {
                values.settle_reserved(1);
            } else {
                values.give_back(1, true);
            }
        });
    }

    /// Replay of an exchange record: the unit it sold, taken from the exchange SKU.
    pub fn take_exchange_unit(&self, slot_index: u32) {
        self.change(slot_index, |values| values.take_into(1, false));
    }

    fn change(&self, slot_index: u32, change: impl FnOnce(&mut SlotValues)) {
        let slot = self.inventory.slot(slot_index);
        let mut values = slot.values();
        change(&mut values);
        slot.write(values);
    }
}
