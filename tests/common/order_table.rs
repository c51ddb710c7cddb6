//! The order state machine as the contract states it, for tests to check the engine
//! against: state × action → next state, with the action's effect on stock.
//!
//! Written from `shared/spec/http-api.md` ("Orders": the action table and the payment
//! timer) and docs/API.md (the timer's `payment_reminder` and `expired` records), not from
//! `src/order/lifecycle.rs`: it is the independent oracle, so it names states and actions
//! as the API does (strings) and uses none of the engine's types.
//!
//! - [`next`]`(state, action, restock)`: `Some(`[`Move`]`)` (the state after it and the
//!   [`Stock`] effect) when `action` is allowed from `state`, `None` when the contract
//!   refuses it (409 `invalid_transition`);
//! - [`allowed`], [`allowed_from`]: the same, as a yes/no and as the list of states;
//! - [`STATES`], [`CLIENT_ACTIONS`], [`TIMER_ACTIONS`], [`FULFILMENT`], [`is_final`].

/// Every `status` of the contract (without order review's `held` and `rejected`).
pub const STATES: [&str; 16] = [
    "pending_payment",
    "confirmed",
    "paid",
    "verified",
    "printed",
    "picked",
    "checked",
    "packed",
    "weighed",
    "shipped",
    "delivered",
    "completed",
    "cancelled",
    "refunded",
    "returned",
    "expired",
];

/// Every client action (`POST /v1/orders/{id}/{action}`).
pub const CLIENT_ACTIONS: [&str; 16] = [
    "pay", "cancel", "modify", "refund", "verify", "print", "pick", "check", "pack", "weigh",
    "ship", "deliver", "complete", "return", "reship", "exchange",
];

/// What the payment timer journals on an unpaid prepaid/escrow order: a reminder at half
/// the SKU's `payment_timeout`, the expiry at its end.
pub const TIMER_ACTIONS: [&str; 2] = ["payment_reminder", "expired"];

/// The fulfilment stages, each allowed only from the one before it (`verify` from `paid`,
/// or `confirmed` for cod).
pub const FULFILMENT: [&str; 7] = ["verify", "print", "pick", "check", "pack", "weigh", "ship"];

/// What a move does to the SKUs' stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stock {
    /// Nothing moves.
    None,
    /// `pay`: the order's units go from `reserved` to `sold`.
    ReservedToSold,
    /// The order's units go back to `available`: from `reserved` when the order was
    /// `pending_payment`, else from `sold`.
    GiveBack { from_reserved: bool },
    /// `exchange`: one unit of the body's SKU goes from `available` to `sold`.
    TakeExchangeUnit,
}

/// An allowed move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The state after the action.
    pub to: &'static str,
    pub stock: Stock,
}

/// The stock column of a row, before it is resolved against the state and the body.
#[derive(Clone, Copy)]
enum Effect {
    None,
    ReservedToSold,
    /// Units back to `available` from wherever the order holds them.
    GiveBack,
    /// `return`: units back only with `{"restock": true}`.
    GiveBackOnRestock,
    TakeExchangeUnit,
}

/// Before `deliver`: where `modify` is allowed (after `ship` it is a redirect).
const BEFORE_DELIVER: &[&str] = &[
    "pending_payment",
    "confirmed",
    "paid",
    "verified",
    "printed",
    "picked",
    "checked",
    "packed",
    "weighed",
    "shipped",
];

/// Paid or confirmed and not yet shipped: where `refund` is allowed.
const PAID_BEFORE_SHIP: &[&str] = &[
    "confirmed",
    "paid",
    "verified",
    "printed",
    "picked",
    "checked",
    "packed",
    "weighed",
];

/// After `ship`: where a new parcel may go out.
const AFTER_SHIP: &[&str] = &["shipped", "delivered", "completed"];

/// The table: action, the states it is allowed from, the state it leads to (`None`: it
/// stays), its stock effect.
const ROWS: [(&str, &[&str], Option<&str>, Effect); 18] = [
    (
        "pay",
        &["pending_payment"],
        Some("paid"),
        Effect::ReservedToSold,
    ),
    (
        "cancel",
        &["pending_payment", "confirmed", "paid"],
        Some("cancelled"),
        Effect::GiveBack,
    ),
    ("modify", BEFORE_DELIVER, None, Effect::None),
    (
        "refund",
        PAID_BEFORE_SHIP,
        Some("refunded"),
        Effect::GiveBack,
    ),
    (
        "verify",
        &["confirmed", "paid"],
        Some("verified"),
        Effect::None,
    ),
    ("print", &["verified"], Some("printed"), Effect::None),
    ("pick", &["printed"], Some("picked"), Effect::None),
    ("check", &["picked"], Some("checked"), Effect::None),
    ("pack", &["checked"], Some("packed"), Effect::None),
    ("weigh", &["packed"], Some("weighed"), Effect::None),
    ("ship", &["weighed"], Some("shipped"), Effect::None),
    ("deliver", &["shipped"], Some("delivered"), Effect::None),
    ("complete", &["delivered"], Some("completed"), Effect::None),
    (
        "return",
        &["shipped", "delivered"],
        Some("returned"),
        Effect::GiveBackOnRestock,
    ),
    ("reship", AFTER_SHIP, Some("shipped"), Effect::None),
    (
        "exchange",
        AFTER_SHIP,
        Some("shipped"),
        Effect::TakeExchangeUnit,
    ),
    ("payment_reminder", &["pending_payment"], None, Effect::None),
    (
        "expired",
        &["pending_payment"],
        Some("expired"),
        Effect::GiveBack,
    ),
];

fn row(
    action: &str,
) -> &'static (
    &'static str,
    &'static [&'static str],
    Option<&'static str>,
    Effect,
) {
    ROWS.iter()
        .find(|(name, ..)| *name == action)
        .unwrap_or_else(|| panic!("{action:?} is not an action of the contract"))
}

fn known_state(state: &str) -> &'static str {
    STATES
        .into_iter()
        .find(|known| *known == state)
        .unwrap_or_else(|| panic!("{state:?} is not a state of the contract"))
}

/// The move `action` makes from `state`; `None` when the contract refuses it. `restock` is
/// the `return` body's flag (other actions ignore it). Panics on a state or an action the
/// contract does not have.
pub fn next(state: &str, action: &str, restock: bool) -> Option<Move> {
    let state = known_state(state);
    let (_, from, to, effect) = row(action);
    if !from.contains(&state) {
        return None;
    }
    let stock = match effect {
        Effect::None => Stock::None,
        Effect::ReservedToSold => Stock::ReservedToSold,
        Effect::GiveBack => Stock::GiveBack {
            from_reserved: state == "pending_payment",
        },
        Effect::GiveBackOnRestock if restock => Stock::GiveBack {
            from_reserved: false,
        },
        Effect::GiveBackOnRestock => Stock::None,
        Effect::TakeExchangeUnit => Stock::TakeExchangeUnit,
    };
    Some(Move {
        to: to.unwrap_or(state),
        stock,
    })
}

/// Whether the contract allows `action` from `state`.
pub fn allowed(state: &str, action: &str) -> bool {
    next(state, action, false).is_some()
}

/// The states `action` is allowed from, in [`STATES`] order.
pub fn allowed_from(action: &str) -> Vec<&'static str> {
    STATES
        .into_iter()
        .filter(|state| allowed(state, action))
        .collect()
}

/// A state no action leaves (cancelled, refunded, returned, expired).
pub fn is_final(state: &str) -> bool {
    CLIENT_ACTIONS
        .iter()
        .chain(&TIMER_ACTIONS)
        .all(|action| !allowed(state, action))
}

/// Order review's states (the contract's "Order review" section), apart from [`STATES`]:
/// an order is `held` at acceptance when a review rule matches it, and `rejected` when a
/// reviewer (or the review timeout) refuses it.
pub const REVIEW_STATES: [&str; 2] = ["held", "rejected"];

/// Order review's actions (admin only), apart from [`CLIENT_ACTIONS`].
pub const REVIEW_ACTIONS: [&str; 2] = ["approve", "reject"];

/// [`next`] for every state and action, order review's included. A held order's units are
/// reserved whatever its payment; `approve` leads to `pending_payment` (prepaid, escrow: the
/// units stay reserved) or `confirmed` (cod: they are sold), so it needs the `payment`.
/// `reject` gives the units back; `modify` is allowed while held ("any state before
/// deliver"); nothing else moves a held or rejected order.
pub fn next_reviewed(state: &str, action: &str, restock: bool, payment: &str) -> Option<Move> {
    match (state, action) {
        ("held", "approve") if payment == "cod" => Some(Move {
            to: "confirmed",
            stock: Stock::ReservedToSold,
        }),
        ("held", "approve") => Some(Move {
            to: "pending_payment",
            stock: Stock::None,
        }),
        ("held", "reject") => Some(Move {
            to: "rejected",
            stock: Stock::GiveBack {
                from_reserved: true,
            },
        }),
        ("held", "modify") => Some(Move {
            to: "held",
            stock: Stock::None,
        }),
        ("held" | "rejected", _) | (_, "approve" | "reject") => None,
        _ => next(state, action, restock),
    }
}
