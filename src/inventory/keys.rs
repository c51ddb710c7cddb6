//! Fixed-width keys for the hot-path tables, so no table stores an order's strings.
//!
//! All three are SipHash-1-3 with a key drawn at random when the process starts. The tables
//! are rebuilt from the journal at every start, so the key never needs to persist, and a
//! client that chooses order ids cannot aim at collisions it cannot compute (hash flooding).
//! Each hash gets its own domain byte so an order id and a user+SKU pair never alias.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::order::Payment;

/// 64-bit key of an `order_id`. Two different ids share a key with probability 2^-64 per
/// pair: about 2.7e-8 that any pair collides among a million orders. A collision makes the
/// second order look like a retry of the first (answered 422 `idempotency_conflict`, or a
/// replay when the 24-bit content fingerprints also match); it never takes stock twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderKey(pub u64);

/// 64-bit key of a (user, SKU) pair for purchase-limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PurchaseKey(pub u64);

/// 24-bit fingerprint of everything an order says besides its id, to tell a retry (same
/// content: replay) from a reuse of the id (different content: conflict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentFingerprint(pub u32);

pub const FINGERPRINT_BITS: u32 = 24;

/// 64-bit hash of an action's `Idempotency-Key`, within one order (the order's key is
/// hashed in; the table is indexed by both, so two orders never share a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKeyHash(pub u64);

/// 64-bit fingerprint of what an action asks for (its name and decoded body), to tell a
/// retry under the same idempotency key from another request reusing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionFingerprint(pub u64);

/// The fields of an action that its fingerprint covers: the body as decoded, so that key
/// order, white space and ignored fields do not make a retry look different.
#[derive(Debug, Clone, Copy)]
pub struct ActionContent<'a> {
    pub action: crate::order::Action,
    pub reason: Option<&'a str>,
    pub address: Option<&'a str>,
    pub restock: bool,
    pub exchange_sku: Option<&'a str>,
    /// `ship`, `reship`, `exchange`: the parcel's carrier and tracking number.
    pub shipment: Option<(&'a str, &'a str)>,
}

/// The per-process hash keys.
#[derive(Clone)]
pub struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl KeyHasher {
    /// A hasher with fresh random keys.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        Self::with_keys(
            u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
        )
    }

    /// A hasher with fixed keys (tests, benches: reproducible tables).
    pub fn with_keys(k0: u64, k1: u64) -> Self {
        Self { k0, k1 }
    }

    fn hasher(&self, domain: u8) -> SipHasher13 {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write_u8(domain);
        hasher
    }

    pub fn order_key(&self, order_id: &str) -> OrderKey {
        let mut hasher = self.hasher(1);
        hasher.write(order_id.as_bytes());
        OrderKey(hasher.finish())
    }

    pub fn purchase_key(&self, user_id: &str, sku: &str) -> PurchaseKey {
        let mut hasher = self.hasher(2);
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        hasher.write_u8(user_id.len() as u8);
        hasher.write(user_id.as_bytes());
        hasher.write(sku.as_bytes());
        PurchaseKey(hasher.finish())
    }

    pub fn idempotency_key(&self, order: OrderKey, key: &str) -> IdempotencyKeyHash {
        let mut hasher = self.hasher(4);
        hasher.write_u64(order.0);
        hasher.write(key.as_bytes());
        IdempotencyKeyHash(hasher.finish())
    }

    pub fn action_fingerprint(&self, content: ActionContent<'_>) -> ActionFingerprint {
        let mut hasher = self.hasher(5);
        hasher.write_u8(content.action as u8);
        // Each optional text with a presence byte and a length prefix: no two bodies share
        // a byte stream.
        for part in [content.reason, content.address, content.exchange_sku] {
            match part {
                Some(text) => {
                    hasher.write_u8(1);
                    hasher.write_u32(text.len() as u32);
                    hasher.write(text.as_bytes());
                }
                None => hasher.write_u8(0),
            }
        }
        hasher.write_u8(u8::from(content.restock));
        // Only a parcel adds bytes: every fingerprint made before parcels existed (bound in
        // checkpoints) stays the same.
        if let Some((carrier, tracking_no)) = content.shipment {
            for text in [carrier, tracking_no] {
                hasher.write_u32(text.len() as u32);
                hasher.write(text.as_bytes());
            }
        }
        ActionFingerprint(hasher.finish())
    }

    pub fn content_fingerprint(
        &self,
        user_id: &str,
        sku: &str,
        qty: u32,
        payment: Payment,
        address: Option<&str>,
    ) -> ContentFingerprint {
        let mut hasher = self.hasher(3);
        for part in [user_id, sku] {
            hasher.write_u16(part.len() as u16);
            hasher.write(part.as_bytes());
        }
        hasher.write_u32(qty);
        hasher.write_u8(payment as u8);
        match address {
            Some(address) => {
                hasher.write_u8(1);
                hasher.write(address.as_bytes());
            }
            None => hasher.write_u8(0),
        }
        ContentFingerprint((hasher.finish() >> (64 - FINGERPRINT_BITS)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_domains_and_field_boundaries() {
        let hasher = KeyHasher::with_keys(1, 2);
        assert_ne!(hasher.order_key("a").0, hasher.purchase_key("a", "").0);
        assert_ne!(
            hasher.purchase_key("ab", "c"),
            hasher.purchase_key("a", "bc")
        );
        let fp = |user, sku, qty, payment, address| {
            hasher.content_fingerprint(user, sku, qty, payment, address)
        };
        let base = fp("u", "S", 1, Payment::Prepaid, None);
        assert_eq!(base, fp("u", "S", 1, Payment::Prepaid, None));
        assert_ne!(base, fp("u", "S", 2, Payment::Prepaid, None));
        assert_ne!(base, fp("u", "S", 1, Payment::Cod, None));
        assert_ne!(base, fp("u", "S", 1, Payment::Prepaid, Some("{}")));
        assert!(base.0 < 1 << FINGERPRINT_BITS);
    }

    #[test]
    fn different_processes_get_different_keys() {
        assert_ne!(
            KeyHasher::random().order_key("x"),
            KeyHasher::random().order_key("x")
        );
    }
}
