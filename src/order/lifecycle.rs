//! The order state machine of the contract: the states an order reports, the actions that
//! move it, and [`transition`], the one function that decides every move, live and on replay.
//!
//! ```text
//!                pay                verify  print  pick  check  pack  weigh   ship
//! pending_payment ──► paid ──────────► verified ─► ... ─► weighed ─────► shipped ─► delivered ─► completed
//!   │  (prepaid,       ▲ confirmed ─┘ (cod)                               │ ▲         │             │
//!   │   escrow)        │                                                  │ └─ reship / exchange ───┘
//!   ├─ cancel ─► cancelled ◄─ cancel (confirmed, paid)                    └─ return ─► returned
//!   ├─ expired (timer)       refund (confirmed, paid .. weighed) ─► refunded
//!   └─ payment_reminder (timer, no state change)      modify: any state before delivered
//!
//! held ─ approve ─► pending_payment (prepaid, escrow) or confirmed (cod: reserved → sold)
//!   └─ reject (a reviewer, or the review timer) ─► rejected          held: order review
//! delivered ─ complete (the buyer, or the auto-completion timer, reason "auto")
//! ```
//!
//! Stock: an order's units are `reserved` while it awaits payment and `sold` from payment (or
//! cash-on-delivery confirmation) on. `cancel`, `refund`, `expired` and `return` with restock
//! give them back to `available` and free the buyer's purchase-limit count; `exchange` takes
//! one unit of another SKU as sold. An order gives its units back at most once: every action
//! that does leads to a state with no way out (cancelled, refunded, expired, returned,
//! rejected). A held order's units are reserved whatever its payment.
//!
//! The match arms list every state by name, never `_`: a new state or action does not
//! compile until each arm says what it does with it.

/// The state an order reports to clients (contract: `status`). The discriminants are stored
/// in the order index and the journal: append new states, never renumber.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum OrderStatus {
    PendingPayment = 0,
    Confirmed = 1,
    Paid = 2,
    Verified = 3,
    Printed = 4,
    Picked = 5,
    Checked = 6,
    Packed = 7,
    Weighed = 8,
    Shipped = 9,
    Delivered = 10,
    Completed = 11,
    Cancelled = 12,
    Refunded = 13,
    Returned = 14,
    Expired = 15,
    /// Held for review (order review): units reserved, no payment clock; `approve` leads
    /// to `pending_payment` (prepaid, escrow).
    Held = 16,
    /// Held for review, cash on delivery: `approve` leads to `confirmed`. Reported as
    /// `held` like [`OrderStatus::Held`]; a state of its own because the order index keeps
    /// no payment type and the approval's target depends on it.
    HeldCod = 17,
    /// Refused by a reviewer or the review timeout; units returned.
    Rejected = 18,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 19] = [
        Self::PendingPayment,
        Self::Confirmed,
        Self::Paid,
        Self::Verified,
        Self::Printed,
        Self::Picked,
        Self::Checked,
        Self::Packed,
        Self::Weighed,
        Self::Shipped,
        Self::Delivered,
        Self::Completed,
        Self::Cancelled,
        Self::Refunded,
        Self::Returned,
        Self::Expired,
        Self::Held,
        Self::HeldCod,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Confirmed => "confirmed",
            Self::Paid => "paid",
            Self::Verified => "verified",
            Self::Printed => "printed",
            Self::Picked => "picked",
            Self::Checked => "checked",
            Self::Packed => "packed",
            Self::Weighed => "weighed",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
            Self::Returned => "returned",
            Self::Expired => "expired",
            Self::Held | Self::HeldCod => "held",
            Self::Rejected => "rejected",
        }
    }

    /// True while the order waits for a reviewer (`held`).
    pub fn is_held(self) -> bool {
        matches!(self, Self::Held | Self::HeldCod)
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value)).copied()
    }

    /// Where the order's units are counted in its SKU's slot: `reserved` while it awaits
    /// payment, `sold` from then on (given back or not, the order no longer holds any once
    /// it is in a state that gave them back; callers never ask then).
    pub fn holds_reserved(self) -> bool {
        matches!(self, Self::PendingPayment | Self::Held | Self::HeldCod)
    }
}

impl ArchivedOrderStatus {
    pub fn to_native(&self) -> OrderStatus {
        match self {
            Self::PendingPayment => OrderStatus::PendingPayment,
            Self::Confirmed => OrderStatus::Confirmed,
            Self::Paid => OrderStatus::Paid,
            Self::Verified => OrderStatus::Verified,
            Self::Printed => OrderStatus::Printed,
            Self::Picked => OrderStatus::Picked,
            Self::Checked => OrderStatus::Checked,
            Self::Packed => OrderStatus::Packed,
            Self::Weighed => OrderStatus::Weighed,
            Self::Shipped => OrderStatus::Shipped,
            Self::Delivered => OrderStatus::Delivered,
            Self::Completed => OrderStatus::Completed,
            Self::Cancelled => OrderStatus::Cancelled,
            Self::Refunded => OrderStatus::Refunded,
            Self::Returned => OrderStatus::Returned,
            Self::Expired => OrderStatus::Expired,
            Self::Held => OrderStatus::Held,
            Self::HeldCod => OrderStatus::HeldCod,
            Self::Rejected => OrderStatus::Rejected,
        }
    }
}

/// What can happen to an accepted order: the contract's actions (`POST
/// /v1/orders/{id}/{action}`) and the payment timer's two records. The discriminants are
/// stored in the journal: append, never renumber.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum Action {
    Pay = 0,
    Cancel = 1,
    Modify = 2,
    Refund = 3,
    Verify = 4,
    Print = 5,
    Pick = 6,
    Check = 7,
    Pack = 8,
    Weigh = 9,
    Ship = 10,
    Deliver = 11,
    Complete = 12,
    Return = 13,
    Reship = 14,
    Exchange = 15,
    /// Timer: half the payment timeout has passed (journal type `payment_reminder`).
    PaymentReminder = 16,
    /// Timer: the payment timeout has passed (journal type `expired`).
    Expire = 17,
    /// A reviewer lets a held order go on (admin).
    Approve = 18,
    /// A reviewer, or the review timeout (reason `review_timeout`), refuses a held order.
    Reject = 19,
}

impl Action {
    pub const ALL: [Action; 20] = [
        Self::Pay,
        Self::Cancel,
        Self::Modify,
        Self::Refund,
        Self::Verify,
        Self::Print,
        Self::Pick,
        Self::Check,
        Self::Pack,
        Self::Weigh,
        Self::Ship,
        Self::Deliver,
        Self::Complete,
        Self::Return,
        Self::Reship,
        Self::Exchange,
        Self::PaymentReminder,
        Self::Expire,
        Self::Approve,
        Self::Reject,
    ];

    /// The name in the URL and the journal's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pay => "pay",
            Self::Cancel => "cancel",
            Self::Modify => "modify",
            Self::Refund => "refund",
            Self::Verify => "verify",
            Self::Print => "print",
            Self::Pick => "pick",
            Self::Check => "check",
            Self::Pack => "pack",
            Self::Weigh => "weigh",
            Self::Ship => "ship",
            Self::Deliver => "deliver",
            Self::Complete => "complete",
            Self::Return => "return",
            Self::Reship => "reship",
            Self::Exchange => "exchange",
            Self::PaymentReminder => "payment_reminder",
            Self::Expire => "expired",
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }

    /// True for the actions whose `{"restock": true}` puts goods back on sale: `return` (the
    /// order's units) and `exchange` (the one unit the buyer sent back).
    pub fn takes_restock(self) -> bool {
        matches!(self, Self::Return | Self::Exchange)
    }

    /// The review actions, which only an operator (the admin token) may take.
    pub fn needs_admin(self) -> bool {
        matches!(self, Self::Approve | Self::Reject)
    }

    /// An action a client may ask for by name; the timer's records are not among them.
    pub fn parse_client(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|action| action.is_client_action() && action.as_str() == name)
    }

    pub fn is_client_action(self) -> bool {
        !matches!(self, Self::PaymentReminder | Self::Expire)
    }

    /// True for actions that may legitimately follow themselves (`modify` twice, a second
    /// `reship`): a repeat of one of these is new work, never a retry to answer from history.
    pub fn repeats(self) -> bool {
        matches!(
            self,
            Self::Modify | Self::Reship | Self::Exchange | Self::PaymentReminder
        )
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value)).copied()
    }
}

impl ArchivedAction {
    pub fn to_native(&self) -> Action {
        match self {
            Self::Pay => Action::Pay,
            Self::Cancel => Action::Cancel,
            Self::Modify => Action::Modify,
            Self::Refund => Action::Refund,
            Self::Verify => Action::Verify,
            Self::Print => Action::Print,
            Self::Pick => Action::Pick,
            Self::Check => Action::Check,
            Self::Pack => Action::Pack,
            Self::Weigh => Action::Weigh,
            Self::Ship => Action::Ship,
            Self::Deliver => Action::Deliver,
            Self::Complete => Action::Complete,
            Self::Return => Action::Return,
            Self::Reship => Action::Reship,
            Self::Exchange => Action::Exchange,
            Self::PaymentReminder => Action::PaymentReminder,
            Self::Expire => Action::Expire,
            Self::Approve => Action::Approve,
            Self::Reject => Action::Reject,
        }
    }
}

/// What a transition does to stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockEffect {
    None,
    /// Payment: the order's units move from `reserved` to `sold`.
    ReservedToSold,
    /// The order's units go back to `available` (from `reserved` or `sold`, as the order
    /// held them) and the buyer's purchase-limit count is freed.
    GiveBack {
        from_reserved: bool,
    },
    /// One unit of the exchange SKU goes from `available` to `sold`.
    TakeExchangeUnit,
}

/// An allowed move: the state after it and its effect on stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: OrderStatus,
    pub stock: StockEffect,
}

/// Decides one action on an order in `status`. `restock` is the `return` body's flag (goods
/// back on the shelf); other actions ignore it. `None` when the state does not allow it: the
/// caller names the state and the action (409 `invalid_transition`).
pub fn transition(status: OrderStatus, action: Action, restock: bool) -> Option<Transition> {
    use OrderStatus::*;
    let to = |to: OrderStatus| {
        Some(Transition {
            to,
            stock: StockEffect::None,
        })
    };
    let give_back = |to: OrderStatus| {
        Some(Transition {
            to,
            stock: StockEffect::GiveBack {
                from_reserved: status.holds_reserved(),
            },
        })
    };
    // The fulfilment stages: each from the one before it.
    let stage = |from: OrderStatus, next: OrderStatus| if status == from { to(next) } else { None };
    match action {
        Action::Pay => match status {
            PendingPayment => Some(Transition {
                to: Paid,
                stock: StockEffect::ReservedToSold,
            }),
            Confirmed | Paid | Verified | Printed | Picked | Checked | Packed | Weighed
            | Shipped | Delivered | Completed | Cancelled | Refunded | Returned | Expired
            | Held | HeldCod | Rejected => None,
        },
        Action::Cancel => match status {
            PendingPayment | Confirmed | Paid => give_back(Cancelled),
            Verified | Printed | Picked | Checked | Packed | Weighed | Shipped | Delivered
            | Completed | Cancelled | Refunded | Returned | Expired | Held | HeldCod | Rejected => {
                None
            }
        },
        Action::Modify => match status {
            PendingPayment | Confirmed | Paid | Verified | Printed | Picked | Checked | Packed
            | Weighed | Shipped | Held | HeldCod => to(status),
            Delivered | Completed | Cancelled | Refunded | Returned | Expired | Rejected => None,
        },
        Action::Refund => match status {
            Confirmed | Paid | Verified | Printed | Picked | Checked | Packed | Weighed => {
                give_back(Refunded)
            }
            PendingPayment | Shipped | Delivered | Completed | Cancelled | Refunded | Returned
            | Expired | Held | HeldCod | Rejected => None,
        },
        Action::Verify => match status {
            Confirmed | Paid => to(Verified),
            PendingPayment | Verified | Printed | Picked | Checked | Packed | Weighed | Shipped
            | Delivered | Completed | Cancelled | Refunded | Returned | Expired | Held
            | HeldCod | Rejected => None,
        },
        Action::Print => stage(Verified, Printed),
        Action::Pick => stage(Printed, Picked),
        Action::Check => stage(Picked, Checked),
        Action::Pack => stage(Checked, Packed),
        Action::Weigh => stage(Packed, Weighed),
        Action::Ship => stage(Weighed, Shipped),
        Action::Deliver => stage(Shipped, Delivered),
        Action::Complete => stage(Delivered, Completed),
        Action::Return => match status {
            Shipped | Delivered if restock => give_back(Returned),
            Shipped | Delivered => to(Returned),
            PendingPayment | Confirmed | Paid | Verified | Printed | Picked | Checked | Packed
            | Weighed | Completed | Cancelled | Refunded | Returned | Expired | Held | HeldCod
            | Rejected => None,
        },
        Action::Reship | Action::Exchange => match status {
            Shipped | Delivered | Completed => Some(Transition {
                to: Shipped,
                stock: if action == Action::Exchange {
                    StockEffect::TakeExchangeUnit
                } else {
                    StockEffect::None
                },
            }),
            PendingPayment | Confirmed | Paid | Verified | Printed | Picked | Checked | Packed
            | Weighed | Cancelled | Refunded | Returned | Expired | Held | HeldCod | Rejected => {
                None
            }
        },
        Action::PaymentReminder => match status {
            PendingPayment => to(PendingPayment),
            Confirmed | Paid | Verified | Printed | Picked | Checked | Packed | Weighed
            | Shipped | Delivered | Completed | Cancelled | Refunded | Returned | Expired
            | Held | HeldCod | Rejected => None,
        },
        Action::Expire => match status {
            PendingPayment => give_back(Expired),
            Confirmed | Paid | Verified | Printed | Picked | Checked | Packed | Weighed
            | Shipped | Delivered | Completed | Cancelled | Refunded | Returned | Expired
            | Held | HeldCod | Rejected => None,
        },
        Action::Approve => match status {
            Held => to(PendingPayment),
            HeldCod => Some(Transition {
                to: Confirmed,
                stock: StockEffect::ReservedToSold,
            }),
            PendingPayment | Confirmed | Paid | Verified | Printed | Picked | Checked | Packed
            | Weighed | Shipped | Delivered | Completed | Cancelled | Refunded | Returned
            | Expired | Rejected => None,
        },
        Action::Reject => match status {
            Held | HeldCod => give_back(Rejected),
            PendingPayment | Confirmed | Paid | Verified | Printed | Picked | Checked | Packed
            | Weighed | Shipped | Delivered | Completed | Cancelled | Refunded | Returned
            | Expired | Rejected => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    /// The contract's action table, written out independently of [`transition`]: for each
    /// client action, the states it is allowed from and the state it leads to.
    fn contract_table(action: Action) -> (&'static [OrderStatus], Option<OrderStatus>) {
        const PRE_SHIP: &[OrderStatus] = &[
            Confirmed, Paid, Verified, Printed, Picked, Checked, Packed, Weighed,
        ];
        match action {
            Action::Pay => (&[PendingPayment], Some(Paid)),
            Action::Cancel => (&[PendingPayment, Confirmed, Paid], Some(Cancelled)),
            Action::Modify => (
                &[
                    PendingPayment,
                    Confirmed,
                    Paid,
                    Verified,
                    Printed,
                    Picked,
                    Checked,
                    Packed,
                    Weighed,
                    Shipped,
                    Held,
                    HeldCod,
                ],
                None,
            ),
            Action::Refund => (PRE_SHIP, Some(Refunded)),
            Action::Verify => (&[Paid, Confirmed], Some(Verified)),
            Action::Print => (&[Verified], Some(Printed)),
            Action::Pick => (&[Printed], Some(Picked)),
            Action::Check => (&[Picked], Some(Checked)),
            Action::Pack => (&[Checked], Some(Packed)),
            Action::Weigh => (&[Packed], Some(Weighed)),
            Action::Ship => (&[Weighed], Some(Shipped)),
            Action::Deliver => (&[Shipped], Some(Delivered)),
            Action::Complete => (&[Delivered], Some(Completed)),
            Action::Return => (&[Shipped, Delivered], Some(Returned)),
            Action::Reship | Action::Exchange => (&[Shipped, Delivered, Completed], Some(Shipped)),
            Action::PaymentReminder => (&[PendingPayment], None),
            Action::Expire => (&[PendingPayment], Some(Expired)),
            Action::Approve => (&[Held, HeldCod], None),
            Action::Reject => (&[Held, HeldCod], Some(Rejected)),
        }
    }

    #[test]
    fn every_action_from_every_state_follows_the_contract_table() {
        for action in Action::ALL {
            let (allowed, target) = contract_table(action);
            for status in OrderStatus::ALL {
                for restock in [false, true] {
                    let result = transition(status, action, restock);
                    if allowed.contains(&status) {
                        let moved = result.unwrap_or_else(|| panic!("{action:?} from {status:?}"));
                        let expected = match (action, status) {
                            (Action::Approve, Held) => PendingPayment,
                            (Action::Approve, _) => Confirmed,
                            _ => target.unwrap_or(status),
                        };
                        assert_eq!(moved.to, expected, "{action:?} from {status:?}");
                    } else {
                        assert!(
                            result.is_none(),
                            "{action:?} must be refused from {status:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stock_comes_back_exactly_where_the_table_says() {
        for action in Action::ALL {
            for status in OrderStatus::ALL {
                for restock in [false, true] {
                    let Some(moved) = transition(status, action, restock) else {
                        continue;
                    };
                    let gives_back = matches!(
                        action,
                        Action::Cancel | Action::Refund | Action::Expire | Action::Reject
                    ) || (action == Action::Return && restock);
                    assert_eq!(
                        matches!(moved.stock, StockEffect::GiveBack { .. }),
                        gives_back,
                        "{action:?} from {status:?} restock={restock}"
                    );
                    if let StockEffect::GiveBack { from_reserved } = moved.stock {
                        assert_eq!(from_reserved, status.holds_reserved());
                    }
                    assert_eq!(
                        moved.stock == StockEffect::TakeExchangeUnit,
                        action == Action::Exchange
                    );
                    assert_eq!(
                        moved.stock == StockEffect::ReservedToSold,
                        action == Action::Pay || (action == Action::Approve && status == HeldCod)
                    );
                }
            }
        }
    }

    #[test]
    fn an_order_gives_its_units_back_at_most_once() {
        // Every state reached by giving stock back has no transition that gives it back again
        // (or takes the order anywhere but itself).
        for action in Action::ALL {
            for status in OrderStatus::ALL {
                for restock in [false, true] {
                    let Some(moved) = transition(status, action, restock) else {
                        continue;
                    };
                    if let StockEffect::GiveBack { .. } = moved.stock {
                        for next in Action::ALL {
                            for again in [false, true] {
                                assert!(
                                    transition(moved.to, next, again).is_none(),
                                    "{:?} after {action:?} must be refused",
                                    next
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn names_and_numbers_round_trip() {
        for action in Action::ALL {
            assert_eq!(Action::from_u8(action as u8), Some(action));
            if action.is_client_action() {
                assert_eq!(Action::parse_client(action.as_str()), Some(action));
            } else {
                assert_eq!(Action::parse_client(action.as_str()), None);
            }
        }
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::from_u8(status as u8), Some(status));
        }
        assert_eq!(OrderStatus::from_u8(19), None);
        assert_eq!(Action::parse_client("expired"), None);
        assert_eq!(Action::parse_client("teleport"), None);
    }
}
