//! The idempotency-key table of order actions: for every journaled action that carried an
//! `Idempotency-Key`, (order key, key hash) → (the action's seq, its fingerprint, the status
//! it left: the original answer's status even once retention has deleted the record).
//!
//! Owned by the shard that owns the order (its single writer): the shard checks a keyed
//! action here before deciding it and binds the key once the action's record is durable, so
//! the table only ever names records that are in the journal. Recovery rebuilds it from the
//! `KeyedAction` records (and checkpoints save it). Refused actions are never journaled and
//! so never bound: a key is remembered only for an action that succeeded.
//!
//! Invariants: at most one entry per (order, key); an entry's seq is the record of the
//! first action that used the key on that order; entries are never removed (an order's
//! records are bounded, `limits::RECORDS_PER_ORDER_MAX`, so its keys are too).

use std::collections::HashMap;

use super::keys::{ActionFingerprint, IdempotencyKeyHash, OrderKey};
use crate::order::OrderStatus;

/// What the table says about a keyed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key was never used on this order: decide the action.
    New,
    /// The same key with the same action and body: a retry of the action journaled at `seq`,
    /// which left the order in `status`.
    Retry { seq: u64, status: OrderStatus },
    /// The same key with another action or body (422 `idempotency_conflict`).
    Conflict { seq: u64 },
}

/// One bound key, as a checkpoint stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundKey {
    pub order: OrderKey,
    pub key: IdempotencyKeyHash,
    pub seq: u64,
    pub fingerprint: ActionFingerprint,
    pub status: OrderStatus,
}

/// What a bound key remembers of its action.
#[derive(Debug, Clone, Copy)]
struct Bound {
    seq: u64,
    fingerprint: ActionFingerprint,
    status: OrderStatus,
}

#[derive(Debug, Default)]
pub struct IdempotencyKeys {
    map: HashMap<(OrderKey, IdempotencyKeyHash), Bound>,
}

impl IdempotencyKeys {
    pub fn check(
        &self,
        order: OrderKey,
        key: IdempotencyKeyHash,
        fingerprint: ActionFingerprint,
    ) -> KeyCheck {
        match self.map.get(&(order, key)) {
            None => KeyCheck::New,
            Some(bound) if bound.fingerprint == fingerprint => KeyCheck::Retry {
                seq: bound.seq,
                status: bound.status,
            },
            Some(bound) => KeyCheck::Conflict { seq: bound.seq },
        }
    }

    /// Binds a key to the durable record at `seq`. A key already bound keeps its first
    /// record (the live path checks first, so this only happens on a replay of a journal
    /// that used a key twice, which the live path never writes).
    pub fn bind(&mut self, bound: BoundKey) {
        self.map.entry((bound.order, bound.key)).or_insert(Bound {
            seq: bound.seq,
            fingerprint: bound.fingerprint,
            status: bound.status,
        });
    }

    pub fn snapshot(&self) -> Vec<BoundKey> {
        self.map
            .iter()
            .map(|(&(order, key), bound)| BoundKey {
                order,
                key,
                seq: bound.seq,
                fingerprint: bound.fingerprint,
                status: bound.status,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(order: u64, key: u64, seq: u64, fingerprint: u64) -> BoundKey {
        BoundKey {
            order: OrderKey(order),
            key: IdempotencyKeyHash(key),
            seq,
            fingerprint: ActionFingerprint(fingerprint),
            status: OrderStatus::Paid,
        }
    }

    #[test]
    fn a_key_is_new_then_a_retry_or_a_conflict_and_scoped_per_order() {
        let mut keys = IdempotencyKeys::default();
        let (order, key, fp) = (OrderKey(1), IdempotencyKeyHash(7), ActionFingerprint(9));
        assert_eq!(keys.check(order, key, fp), KeyCheck::New);
        keys.bind(bound(1, 7, 42, 9));
        let retry = KeyCheck::Retry {
            seq: 42,
            status: OrderStatus::Paid,
        };
        assert_eq!(keys.check(order, key, fp), retry);
        assert_eq!(
            keys.check(order, key, ActionFingerprint(10)),
            KeyCheck::Conflict { seq: 42 }
        );
        assert_eq!(keys.check(OrderKey(2), key, fp), KeyCheck::New);
        // A second bind keeps the first record.
        keys.bind(bound(1, 7, 50, 10));
        assert_eq!(keys.check(order, key, fp), retry);
        assert_eq!(keys.snapshot(), vec![bound(1, 7, 42, 9)]);
        assert_eq!(keys.len(), 1);
    }
}
