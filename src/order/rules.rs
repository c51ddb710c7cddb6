//! The sale's rules for one new order, written once: the shard applies them when it decides
//! the order, and the engine's fast path applies the stock rules early to refuse what the
//! shard would refuse (a stampede on a sold-out item never queues). Changing a rule of the
//! sale means changing this file alone.
//!
//! Precedence, first match wins: a paused SKU, then `max_per_order`, then stock, then the
//! buyer's `per_user_limit`. The fast path checks only `max_per_order` and stock (it has no
//! purchase counts); the shard checks all four.

use super::OrderStatus;

/// What became of an order: the storefront is told exactly one of these. Expected outcomes
/// are values, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    /// Stock taken and the order journaled as durably as the fsync policy promises.
    Accepted { seq: u64, status: OrderStatus },
    /// The same order again (same id, same content): the original answer, nothing taken.
    Replayed { seq: u64, status: OrderStatus },
    /// No stock left for that quantity.
    SoldOut { available: u64 },
    /// An operator paused new orders for the SKU (`POST /v1/skus/{sku}/pause`).
    Paused,
    /// The buyer would pass the SKU's `per_user_limit`.
    PurchaseLimit { limit: u32, bought: u32 },
    /// The id is taken by an order with other content.
    IdempotencyConflict,
    /// More units than the SKU's `max_per_order`.
    QtyOverMax { max_per_order: u32 },
    /// The SKU is not in the catalogue.
    UnknownSku,
    /// The order's shard has no room in its mailbox: retry after this many seconds.
    Overloaded { retry_after_s: u32 },
    /// Nothing was taken: the journal cannot be written, or the engine is stopping.
    Unavailable { reason: String },
    /// Stock taken and the order journaled, held for review by the rules named in `review`.
    Held {
        seq: u64,
        review: super::review::ReviewFlags,
    },
    /// The buyer is on the review deny list: 403 `denied`, nothing taken.
    Denied,
}

/// A paused SKU takes no new order (retries of accepted ones are answered before this, and
/// actions on existing orders go on).
pub fn check_open(paused: bool) -> Result<(), OrderOutcome> {
    if paused {
        return Err(OrderOutcome::Paused);
    }
    Ok(())
}

/// The rules that need only the SKU's figures: `max_per_order`, then stock.
pub fn check_stock(qty: u32, max_per_order: u32, available: u64) -> Result<(), OrderOutcome> {
    if qty > max_per_order {
        return Err(OrderOutcome::QtyOverMax { max_per_order });
    }
    if available < u64::from(qty) {
        return Err(OrderOutcome::SoldOut { available });
    }
    Ok(())
}

/// The buyer's limit: `bought` units held now plus `qty` may not pass `per_user_limit` (0:
/// no limit). Counts are u32 for every SKU, limited or not: past u32::MAX units per buyer the
/// counter is the limit (about 4 billion units; far past any real purchase).
pub fn check_purchase_limit(
    qty: u32,
    bought: u32,
    per_user_limit: u32,
) -> Result<(), OrderOutcome> {
    let limit = if per_user_limit > 0 {
        per_user_limit
    } else {
        u32::MAX
    };
    if u64::from(bought) + u64::from(qty) > u64::from(limit) {
        return Err(OrderOutcome::PurchaseLimit { limit, bought });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_per_order_comes_before_stock_and_stock_before_the_limit() {
        assert_eq!(
            check_stock(3, 2, 0),
            Err(OrderOutcome::QtyOverMax { max_per_order: 2 })
        );
        assert_eq!(
            check_stock(2, 2, 1),
            Err(OrderOutcome::SoldOut { available: 1 })
        );
        assert_eq!(check_stock(2, 2, 2), Ok(()));
        assert_eq!(check_open(true), Err(OrderOutcome::Paused));
        assert_eq!(check_open(false), Ok(()));
        assert_eq!(
            check_purchase_limit(2, 1, 2),
            Err(OrderOutcome::PurchaseLimit {
                limit: 2,
                bought: 1
            })
        );
        assert_eq!(check_purchase_limit(1, 1, 2), Ok(()));
        assert_eq!(check_purchase_limit(1, u32::MAX - 1, 0), Ok(()));
        assert!(check_purchase_limit(1, u32::MAX, 0).is_err());
    }
}
