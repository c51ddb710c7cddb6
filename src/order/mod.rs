//! The order's vocabulary: identifier rules, payment types, the validation of SKU settings,
//! (in [`lifecycle`]) the states an order moves through and the one transition function, and
//! (in [`rules`]) the sale's rules for a new order and the outcomes an order can have.
//! Pure functions and plain types, no I/O: the HTTP layer
//! decodes into these, the shards decide on them, the journal stores them.

use crate::limits;

pub mod lifecycle;
pub mod review;
pub mod rules;

pub use lifecycle::{Action, OrderStatus, StockEffect, Transition, transition};
pub use rules::OrderOutcome;

/// How a buyer pays; decides the order's first state and whether stock is reserved (awaiting
/// payment) or sold (cash on delivery is confirmed at once).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum Payment {
    /// Pay before shipping (the default).
    Prepaid,
    /// A third-party platform holds the money until delivery.
    Escrow,
    /// Cash on delivery.
    Cod,
}

impl Payment {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "prepaid" => Some(Self::Prepaid),
            "escrow" => Some(Self::Escrow),
            "cod" => Some(Self::Cod),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepaid => "prepaid",
            Self::Escrow => "escrow",
            Self::Cod => "cod",
        }
    }

    /// The state a freshly accepted order is in.
    pub fn initial_status(self) -> OrderStatus {
        match self {
            Self::Prepaid | Self::Escrow => OrderStatus::PendingPayment,
            Self::Cod => OrderStatus::Confirmed,
        }
    }

    /// The state of a new order that review holds: `approve` leads from it to
    /// [`Payment::initial_status`].
    pub fn held_status(self) -> OrderStatus {
        match self {
            Self::Prepaid | Self::Escrow => OrderStatus::Held,
            Self::Cod => OrderStatus::HeldCod,
        }
    }

    /// The first state of a new order, held for review or not.
    pub fn first_status(self, held: bool) -> OrderStatus {
        if held {
            self.held_status()
        } else {
            self.initial_status()
        }
    }
}

impl ArchivedPayment {
    pub fn to_native(&self) -> Payment {
        match self {
            Self::Prepaid => Payment::Prepaid,
            Self::Escrow => Payment::Escrow,
            Self::Cod => Payment::Cod,
        }
    }
}

/// True for the bytes the contract allows in ids and SKUs: `[A-Za-z0-9_.:-]`.
pub fn is_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-')
}

/// Checks an identifier against the contract: 1..=`max_bytes` bytes of `[A-Za-z0-9_.:-]`.
/// The error names the field, for the `detail` of a 422.
pub fn validate_id(field: &str, value: &str, max_bytes: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > max_bytes {
        return Err(format!(
            "{field} is {} bytes, at most {max_bytes} allowed",
            value.len()
        ));
    }
    if let Some(bad) = value.bytes().find(|b| !is_id_byte(*b)) {
        return Err(format!(
            "{field} contains {:?}; only A-Z a-z 0-9 _ . : - are allowed",
            bad as char
        ));
    }
    Ok(())
}

/// [`validate_id`] for the ids that are also a path segment (`order_id` in
/// `/v1/orders/{order_id}`, and `user_id` alike): an id made only of dots (`.`, `..`) is
/// refused, since a proxy or client library normalises such a segment away.
pub fn validate_path_id(field: &str, value: &str, max_bytes: usize) -> Result<(), String> {
    validate_id(field, value, max_bytes)?;
    if value.bytes().all(|b| b == b'.') {
        return Err(format!("{field} must not be made only of dots"));
    }
    Ok(())
}

/// Checks the settings of a SKU (admin PUT, catalogue) against the limits.
pub fn validate_sku_settings(
    sku: &str,
    stock: u64,
    per_user_limit: u32,
    max_per_order: u32,
    payment_timeout_s: u32,
) -> Result<(), String> {
    validate_id("sku", sku, limits::SKU_BYTES_MAX)?;
    if stock > limits::STOCK_MAX {
        return Err(format!(
            "stock must be at most {}, got {stock}",
            limits::STOCK_MAX
        ));
    }
    if per_user_limit > limits::PER_ORDER_MAX {
        return Err(format!(
            "per_user_limit must be at most {}",
            limits::PER_ORDER_MAX
        ));
    }
    if !(1..=limits::PER_ORDER_MAX).contains(&max_per_order) {
        return Err(format!(
            "max_per_order must be 1..={}",
            limits::PER_ORDER_MAX
        ));
    }
    if !(1..=limits::PAYMENT_TIMEOUT_S_MAX).contains(&payment_timeout_s) {
        return Err(format!(
            "payment_timeout_s must be 1..={}",
            limits::PAYMENT_TIMEOUT_S_MAX
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract_alphabet_and_length() {
        assert!(validate_id("order_id", "u42-1", 64).is_ok());
        assert!(validate_id("order_id", "A.b:c_d-9", 64).is_ok());
        assert!(validate_id("order_id", "", 64).is_err());
        assert!(validate_id("order_id", &"x".repeat(64), 64).is_ok());
        assert!(validate_id("order_id", &"x".repeat(65), 64).is_err());
        assert!(validate_id("order_id", "a b", 64).is_err());
        assert!(validate_id("order_id", "é", 64).is_err());
        assert!(
            validate_id("order_id", "a/b", 64)
                .unwrap_err()
                .contains("'/'")
        );
    }

    #[test]
    fn path_ids_made_only_of_dots_are_refused() {
        for dots in [".", "..", "...."] {
            assert!(validate_path_id("order_id", dots, 64).is_err(), "{dots}");
        }
        for fine in ["a.", ".a", "..a", "a..b"] {
            assert!(validate_path_id("order_id", fine, 64).is_ok(), "{fine}");
        }
        assert!(validate_path_id("order_id", "a/b", 64).is_err());
    }

    #[test]
    fn payment_decides_the_first_state() {
        assert_eq!(
            Payment::parse("cod").unwrap().initial_status(),
            OrderStatus::Confirmed
        );
        assert_eq!(
            Payment::parse("escrow").unwrap().initial_status(),
            OrderStatus::PendingPayment
        );
        assert_eq!(Payment::parse("prepaid").unwrap().as_str(), "prepaid");
        assert!(Payment::parse("card").is_none());
    }
}
