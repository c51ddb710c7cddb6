//! The idempotency index: order key → (journal seq, content fingerprint), shared by all
//! shards because an `order_id` is unique across SKUs while shards own SKUs.
//!
//! Memory per order: one `u64 → u64` entry in a `DashMap` (hashbrown buckets of 16 bytes plus
//! one control byte, at most 7/8 full): 17 bytes per bucket, 19 to 39 bytes per order
//! depending on where the table is in its doubling cycle. No order strings are stored.
//!
//! Entry value layout: `fingerprint (24 bits) << 40 | seq (40 bits)`. `seq == 0` means the
//! order was decided but its batch is not yet durable ("pending"); only the owning shard
//! ever sees its own pending entries as replays, because a true retry has the same SKU and
//! so reaches the same shard, which finishes one batch before it reads the next.
//!
//! Invariants: an entry is inserted by the shard that decided the order, before that shard
//! publishes the stock change (so the sold-out fast path, which reads stock first, never
//! misses it); it gets its seq once the batch is durable, or is removed when the batch fails.

use std::hash::{BuildHasherDefault, Hasher};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::inventory::keys::{ContentFingerprint, FINGERPRINT_BITS, OrderKey};
use crate::limits::SEQ_MAX;

const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const _: () = assert!(SEQ_BITS + FINGERPRINT_BITS == 64);
const _: () = assert!(SEQ_MAX == SEQ_MASK);

/// The keys are already uniform SipHash outputs: hashing them again would only cost time.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in rather than panic.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

pub type PassThrough = BuildHasherDefault<PassThroughHasher>;

/// What the index says about an incoming order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupCheck {
    /// First time this key is seen: an entry (pending) now holds it.
    New,
    /// Same key, same content: a retry. `seq` is `None` while the original is pending.
    Retry { seq: Option<u64> },
    /// Same key, different content.
    Conflict,
}

pub struct DedupIndex {
    entries: DashMap<u64, u64, PassThrough>,
}

fn pack(seq: u64, fingerprint: ContentFingerprint) -> u64 {
    debug_assert!(seq <= SEQ_MAX);
    (u64::from(fingerprint.0) << SEQ_BITS) | seq
}

impl DedupIndex {
    pub fn new() -> Self {
        Self {
            entries: DashMap::with_hasher(PassThrough::default()),
        }
    }

    pub fn with_capacity(orders: usize) -> Self {
        Self {
            entries: DashMap::with_capacity_and_hasher(orders, PassThrough::default()),
        }
    }

    /// Looks the order up and, if it is new, inserts it as pending, atomically.
    pub fn check_or_insert(&self, key: OrderKey, fingerprint: ContentFingerprint) -> DedupCheck {
        match self.entries.entry(key.0) {
            Entry::Vacant(vacant) => {
                vacant.insert(pack(0, fingerprint));
                DedupCheck::New
            }
            Entry::Occupied(occupied) => {
                let value = *occupied.get();
                if (value >> SEQ_BITS) as u32 != fingerprint.0 {
                    return DedupCheck::Conflict;
                }
                let seq = value & SEQ_MASK;
                DedupCheck::Retry {
                    seq: (seq != 0).then_some(seq),
                }
            }
        }
    }

    /// Records the journal seq of a pending entry once its batch is durable.
    pub fn set_seq(&self, key: OrderKey, seq: u64) {
        assert!(
            (1..=SEQ_MAX).contains(&seq),
            "seq {seq} out of range for the dedup index"
        );
        let mut value = self
            .entries
            .get_mut(&key.0)
            .expect("pending dedup entry exists");
        debug_assert_eq!(*value & SEQ_MASK, 0, "dedup entry already had a seq");
        *value = (*value & !SEQ_MASK) | seq;
    }

    /// Removes a pending entry whose batch failed to become durable.
    pub fn remove_pending(&self, key: OrderKey) {
        let removed = self
            .entries
            .remove_if(&key.0, |_, value| value & SEQ_MASK == 0);
        debug_assert!(
            removed.is_some(),
            "rolled back an entry that was not pending"
        );
    }

    /// Inserts a durable entry during recovery. Returns false if the key was already there.
    pub fn insert_durable(&self, key: OrderKey, fingerprint: ContentFingerprint, seq: u64) -> bool {
        self.entries.insert(key.0, pack(seq, fingerprint)).is_none()
    }

    /// True if the key is known (durable or pending).
    pub fn contains(&self, key: OrderKey) -> bool {
        self.entries.contains_key(&key.0)
    }

    /// Reads what the index says about an order without changing anything: lets the HTTP
    /// task answer a retry of a durable order (or a reuse of its id) without a shard trip.
    pub fn lookup(&self, key: OrderKey, fingerprint: ContentFingerprint) -> DedupCheck {
        match self.entries.get(&key.0).map(|entry| *entry) {
            None => DedupCheck::New,
            Some(value) if (value >> SEQ_BITS) as u32 != fingerprint.0 => DedupCheck::Conflict,
            Some(value) => {
                let seq = value & SEQ_MASK;
                DedupCheck::Retry {
                    seq: (seq != 0).then_some(seq),
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the table holds in buckets right now (capacity, not length: what RAM costs).
    pub fn allocated_bytes(&self) -> usize {
        // hashbrown: (key + value) per bucket plus one control byte; buckets = capacity * 8/7.
        self.entries.capacity() * 8 / 7 * (16 + 1)
    }
}

impl Default for DedupIndex {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn an_order_is_new_then_a_pending_retry_then_a_durable_retry() {
        let index = DedupIndex::new();
        let key = OrderKey(42);
        let fp = ContentFingerprint(7);
        assert_eq!(index.lookup(key, fp), DedupCheck::New);
        assert_eq!(index.check_or_insert(key, fp), DedupCheck::New);
        assert_eq!(index.lookup(key, fp), DedupCheck::Retry { seq: None });
        assert_eq!(
            index.lookup(key, ContentFingerprint(8)),
            DedupCheck::Conflict
        );
        assert_eq!(
            index.check_or_insert(key, fp),
            DedupCheck::Retry { seq: None }
        );
        index.set_seq(key, 1234);
        assert_eq!(
            index.check_or_insert(key, fp),
            DedupCheck::Retry { seq: Some(1234) }
        );
        assert_eq!(
            index.check_or_insert(key, ContentFingerprint(8)),
            DedupCheck::Conflict
        );
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_failed_batch_removes_only_pending_entries() {
        let index = DedupIndex::new();
        index.check_or_insert(OrderKey(1), ContentFingerprint(1));
        index.remove_pending(OrderKey(1));
        assert!(!index.contains(OrderKey(1)));
        assert!(index.insert_durable(OrderKey(2), ContentFingerprint(1), 9));
        assert!(!index.insert_durable(OrderKey(2), ContentFingerprint(1), 9));
    }

    #[test]
    fn the_largest_seq_and_fingerprint_round_trip() {
        let index = DedupIndex::new();
        let fp = ContentFingerprint((1 << FINGERPRINT_BITS) - 1);
        index.check_or_insert(OrderKey(5), fp);
        index.set_seq(OrderKey(5), SEQ_MAX);
        assert_eq!(
            index.check_or_insert(OrderKey(5), fp),
            DedupCheck::Retry { seq: Some(SEQ_MAX) }
        );
    }

    proptest! {
        /// The index agrees with a plain map of (key -> (fingerprint, seq)) on any sequence of
        /// inserts, commits and rollbacks.
        #[test]
        fn index_matches_a_model(ops in proptest::collection::vec((0u64..64, 0u32..4, 0u8..3), 1..400)) {
            let index = DedupIndex::new();
            let mut model: HashMap<u64, (u32, u64)> = HashMap::new();
            let mut next_seq = 1;
            for (key, fp, op) in ops {
                let fp = ContentFingerprint(fp);
                let expected = match model.get(&key) {
                    None => DedupCheck::New,
                    Some((mfp, _)) if *mfp != fp.0 => DedupCheck::Conflict,
                    Some((_, seq)) => DedupCheck::Retry { seq: (*seq != 0).then_some(*seq) },
                };
                prop_assert_eq!(index.check_or_insert(OrderKey(key), fp), expected);
                if expected == DedupCheck::New {
                    model.insert(key, (fp.0, 0));
                    match op {
                        0 => { index.remove_pending(OrderKey(key)); model.remove(&key); }
                        _ => { index.set_seq(OrderKey(key), next_seq); model.get_mut(&key).unwrap().1 = next_seq; next_seq += 1; }
                    }
                }
            }
            prop_assert_eq!(index.len(), model.len());
        }
    }
}
