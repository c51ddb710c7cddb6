//! The order index: order key → what the engine must know about an accepted order without
//! reading the journal: its idempotency fingerprint and first seq, its state, the seq of its
//! latest record (the head of its history chain in the journal), its SKU slot, quantity and
//! purchase key. Shared by all shards because an `order_id` is unique across SKUs while
//! shards own SKUs; every entry is written only by the shard that owns the order's SKU.
//!
//! Memory per order: one `u64 → OrderEntry` (32 bytes) entry in a `DashMap`: hashbrown
//! buckets of 40 bytes plus one control byte, at most 7/8 full, so 47 to 94 bytes per order
//! depending on where the table is in its doubling cycle. No strings are stored: the order's
//! ids, address and history are read back from the journal when a client asks
//! (`GET /v1/orders/{id}`), following each record's `prev_seq` from `last_seq`.
//!
//! `accepted` layout: `fingerprint (24 bits) << 40 | seq (40 bits)`. `seq == 0` means the
//! order was decided but its batch is not yet durable ("pending"); only the owning shard
//! ever sees its own pending entries as replays, because a true retry has the same SKU and
//! so reaches the same shard, which finishes one batch before it reads the next.
//!
//! Invariants: an entry is inserted by the shard that decided the order, before that shard
//! publishes the stock change (so the sold-out fast path, which looks the order up again
//! after a stock read that would refuse it, never misses it); it becomes durable (seq, state) once the batch is, or is removed when the
//! batch fails. A state change is published only after its record is durable, so every
//! reader sees a state the journal already holds.

use std::hash::{BuildHasherDefault, Hasher};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::inventory::keys::{ContentFingerprint, FINGERPRINT_BITS, OrderKey, PurchaseKey};
use crate::limits::{self, SEQ_MAX};
use crate::order::{Action, OrderStatus};

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

/// Where an accepted order stands, as the latest durable record of it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderState {
    pub status: OrderStatus,
    /// Seq of the order's latest journal record: the head of its history chain.
    pub last_seq: u64,
    /// The action of that record; `None` when it is the acceptance itself.
    pub last_action: Option<Action>,
    /// Journal records of the order so far, acceptance included.
    pub records: u32,
    /// True once the payment reminder is journaled.
    pub reminded: bool,
    /// True once the order gave its units back (cancel, refund, expiry, restocked return):
    /// it no longer counts toward the buyer's purchase limit.
    pub released: bool,
}

const STATUS_SHIFT: u32 = 40;
const REMINDED_BIT: u32 = 45;
const ACTION_SHIFT: u32 = 46;
const ACTION_NONE: u64 = 31;
const RECORDS_SHIFT: u32 = 51;
const RELEASED_BIT: u32 = 63;
const RECORDS_BITS_MAX: u64 = (1 << (RELEASED_BIT - RECORDS_SHIFT)) - 1;
const _: () = assert!(OrderStatus::ALL.len() <= 1 << (REMINDED_BIT - STATUS_SHIFT));
const _: () = assert!((Action::ALL.len() as u64) < ACTION_NONE);
const _: () = assert!(limits::RECORDS_PER_ORDER_MAX as u64 <= RECORDS_BITS_MAX);

/// One order's entry: 32 bytes, packed because a flash sale holds millions of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderEntry {
    /// `fingerprint << 40 | accepted seq` (seq 0: pending).
    accepted: u64,
    /// `released << 63 | records << 51 | last_action << 46 | reminded << 45 | status << 40 |
    /// last_seq`.
    chain: u64,
    pub purchase_key: PurchaseKey,
    pub slot_index: u32,
    pub qty: u32,
}

impl OrderEntry {
    fn pending(fingerprint: ContentFingerprint) -> Self {
        Self {
            accepted: pack(0, fingerprint),
            chain: 0,
            purchase_key: PurchaseKey(0),
            slot_index: 0,
            qty: 0,
        }
    }

    /// The seq of the order's acceptance record (0 while it is pending).
    pub fn accepted_seq(&self) -> u64 {
        self.accepted & SEQ_MASK
    }

    fn fingerprint(&self) -> u32 {
        (self.accepted >> SEQ_BITS) as u32
    }

    pub fn state(&self) -> OrderState {
        let chain = self.chain;
        let action = (chain >> ACTION_SHIFT) & 31;
        OrderState {
            status: OrderStatus::from_u8(((chain >> STATUS_SHIFT) & 31) as u8)
                .expect("stored status is valid"),
            last_seq: chain & SEQ_MASK,
            last_action: (action != ACTION_NONE)
                .then(|| Action::from_u8(action as u8).expect("stored action is valid")),
            records: ((chain >> RECORDS_SHIFT) & RECORDS_BITS_MAX) as u32,
            reminded: (chain >> REMINDED_BIT) & 1 == 1,
            released: (chain >> RELEASED_BIT) & 1 == 1,
        }
    }

    pub fn set_state(&mut self, state: OrderState) {
        assert!(
            (1..=SEQ_MAX).contains(&state.last_seq),
            "seq out of range for the order index"
        );
        assert!(u64::from(state.records) <= RECORDS_BITS_MAX);
        self.chain = state.last_seq
            | (state.status as u64) << STATUS_SHIFT
            | u64::from(state.reminded) << REMINDED_BIT
            | state.last_action.map_or(ACTION_NONE, |a| a as u64) << ACTION_SHIFT
            | u64::from(state.records) << RECORDS_SHIFT
            | u64::from(state.released) << RELEASED_BIT;
    }

    /// The entry as four words (checkpoints store it so).
    pub fn to_words(&self) -> [u64; 4] {
        [
            self.accepted,
            self.chain,
            self.purchase_key.0,
            u64::from(self.slot_index) << 32 | u64::from(self.qty),
        ]
    }

    /// The entry from [`OrderEntry::to_words`]; `None` if the words cannot be an entry.
    pub fn from_words(words: [u64; 4]) -> Option<Self> {
        let entry = Self {
            accepted: words[0],
            chain: words[1],
            purchase_key: PurchaseKey(words[2]),
            slot_index: (words[3] >> 32) as u32,
            qty: words[3] as u32,
        };
        let chain = words[1];
        let valid = entry.accepted_seq() != 0
            && chain & SEQ_MASK != 0
            && OrderStatus::from_u8(((chain >> STATUS_SHIFT) & 31) as u8).is_some()
            && {
                let action = (chain >> ACTION_SHIFT) & 31;
                action == ACTION_NONE || Action::from_u8(action as u8).is_some()
            };
        valid.then_some(entry)
    }
}

/// What the engine knows of an accepted order when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedOrder {
    pub seq: u64,
    pub status: OrderStatus,
    pub purchase_key: PurchaseKey,
    pub slot_index: u32,
    pub qty: u32,
}

pub struct OrderIndex {
    entries: DashMap<u64, OrderEntry, PassThrough>,
}

fn pack(seq: u64, fingerprint: ContentFingerprint) -> u64 {
    debug_assert!(seq <= SEQ_MAX);
    (u64::from(fingerprint.0) << SEQ_BITS) | seq
}

fn durable_entry(fingerprint: ContentFingerprint, order: AcceptedOrder) -> OrderEntry {
    let mut entry = OrderEntry {
        accepted: pack(order.seq, fingerprint),
        chain: 0,
        purchase_key: order.purchase_key,
        slot_index: order.slot_index,
        qty: order.qty,
    };
    entry.set_state(OrderState {
        status: order.status,
        last_seq: order.seq,
        last_action: None,
        records: 1,
        reminded: false,
        released: false,
    });
    entry
}

impl OrderIndex {
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
                vacant.insert(OrderEntry::pending(fingerprint));
                DedupCheck::New
            }
            Entry::Occupied(occupied) => check(occupied.get(), fingerprint),
        }
    }

    /// Makes a pending entry durable once its batch is: its seq and first state.
    pub fn commit_accepted(&self, key: OrderKey, order: AcceptedOrder) {
        let mut entry = self
            .entries
            .get_mut(&key.0)
            .expect("pending order entry exists");
        debug_assert_eq!(entry.accepted_seq(), 0, "order entry already durable");
        let fingerprint = ContentFingerprint(entry.fingerprint());
        *entry = durable_entry(fingerprint, order);
    }

    /// Removes a pending entry whose batch failed to become durable.
    pub fn remove_pending(&self, key: OrderKey) {
        let removed = self
            .entries
            .remove_if(&key.0, |_, entry| entry.accepted_seq() == 0);
        debug_assert!(
            removed.is_some(),
            "rolled back an entry that was not pending"
        );
    }

    /// Inserts a durable entry during recovery. Returns false if the key was already there.
    pub fn insert_durable(
        &self,
        key: OrderKey,
        fingerprint: ContentFingerprint,
        order: AcceptedOrder,
    ) -> bool {
        match self.entries.entry(key.0) {
            Entry::Vacant(vacant) => {
                vacant.insert(durable_entry(fingerprint, order));
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    /// The durable entry of an order; `None` if unknown or not yet durable.
    pub fn get(&self, key: OrderKey) -> Option<OrderEntry> {
        let entry = *self.entries.get(&key.0)?;
        (entry.accepted_seq() != 0).then_some(entry)
    }

    /// Publishes the state a durable record moved the order to. Only the owning shard (or
    /// recovery) calls this, after the record is durable.
    pub fn set_state(&self, key: OrderKey, state: OrderState) {
        let mut entry = self
            .entries
            .get_mut(&key.0)
            .expect("state change of a known order");
        debug_assert!(entry.accepted_seq() != 0);
        entry.set_state(state);
    }

    /// One unit fewer for the order (a restocked exchange gave one back); never below 0.
    pub fn take_one_unit(&self, key: OrderKey) {
        let mut entry = self
            .entries
            .get_mut(&key.0)
            .expect("unit change of a known order");
        entry.qty = entry.qty.saturating_sub(1);
    }

    /// Inserts an entry from a checkpoint (start-up, before any shard runs).
    pub fn restore(&self, key: OrderKey, entry: OrderEntry) -> bool {
        self.entries.insert(key.0, entry).is_none()
    }

    /// Every durable entry with its key (a checkpoint, while the shards are paused).
    pub fn snapshot(&self) -> Vec<(OrderKey, OrderEntry)> {
        self.entries
            .iter()
            .filter(|item| item.value().accepted_seq() != 0)
            .map(|item| (OrderKey(*item.key()), *item.value()))
            .collect()
    }

    /// The accepted seqs and keys of the durable orders held for review with an accepted
    /// seq above `after_seq`, oldest first, at most `limit` (and whether more are left). A
    /// scan of the whole index, reading one entry at a time: for `GET /v1/reviews`, an
    /// operator's page, never the order path.
    pub fn held_after(&self, after_seq: u64, limit: usize) -> (Vec<(u64, OrderKey)>, bool) {
        let mut held: Vec<(u64, OrderKey)> = self
            .entries
            .iter()
            .filter(|item| {
                let entry = item.value();
                entry.accepted_seq() > after_seq && entry.state().status.is_held()
            })
            .map(|item| (item.value().accepted_seq(), OrderKey(*item.key())))
            .collect();
        held.sort_unstable_by_key(|(seq, _)| *seq);
        let more = held.len() > limit;
        held.truncate(limit);
        (held, more)
    }

    /// True if the key is known (durable or pending).
    pub fn contains(&self, key: OrderKey) -> bool {
        self.entries.contains_key(&key.0)
    }

    /// Reads what the index says about an order without changing anything: lets the HTTP
    /// task answer a retry of a durable order (or a reuse of its id) without a shard trip.
    pub fn lookup(&self, key: OrderKey, fingerprint: ContentFingerprint) -> DedupCheck {
        match self.entries.get(&key.0) {
            None => DedupCheck::New,
            Some(entry) => check(&entry, fingerprint),
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
        self.entries.capacity() * 8 / 7 * (std::mem::size_of::<(u64, OrderEntry)>() + 1)
    }
}

fn check(entry: &OrderEntry, fingerprint: ContentFingerprint) -> DedupCheck {
    if entry.fingerprint() != fingerprint.0 {
        return DedupCheck::Conflict;
    }
    let seq = entry.accepted_seq();
    DedupCheck::Retry {
        seq: (seq != 0).then_some(seq),
    }
}

const _: () = assert!(std::mem::size_of::<OrderEntry>() == 32);

impl Default for OrderIndex {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn accepted(seq: u64) -> AcceptedOrder {
        AcceptedOrder {
            seq,
            status: OrderStatus::PendingPayment,
            purchase_key: PurchaseKey(77),
            slot_index: 3,
            qty: 2,
        }
    }

    #[test]
    fn state_packs_and_unpacks_every_field_at_its_extremes() {
        let index = OrderIndex::new();
        let key = OrderKey(9);
        index.insert_durable(key, ContentFingerprint(1), accepted(5));
        let first = index.get(key).unwrap();
        assert_eq!(first.accepted_seq(), 5);
        assert_eq!(first.state().last_seq, 5);
        assert_eq!(first.state().records, 1);
        assert_eq!(first.state().last_action, None);
        assert_eq!((first.slot_index, first.qty), (3, 2));
        for status in OrderStatus::ALL {
            for action in Action::ALL.map(Some).into_iter().chain([None]) {
                for (reminded, released) in [(false, true), (true, false), (true, true)] {
                    let state = OrderState {
                        status,
                        last_seq: SEQ_MAX,
                        last_action: action,
                        records: limits::RECORDS_PER_ORDER_MAX,
                        reminded,
                        released,
                    };
                    index.set_state(key, state);
                    let entry = index.get(key).unwrap();
                    assert_eq!(entry.state(), state);
                    assert_eq!(OrderEntry::from_words(entry.to_words()), Some(entry));
                    assert_eq!(entry.accepted_seq(), 5);
                    assert_eq!(entry.purchase_key, PurchaseKey(77));
                }
            }
        }
    }

    #[test]
    fn a_pending_order_is_not_visible_to_get() {
        let index = OrderIndex::new();
        index.check_or_insert(OrderKey(1), ContentFingerprint(1));
        assert_eq!(index.get(OrderKey(1)), None);
        index.commit_accepted(OrderKey(1), accepted(3));
        assert_eq!(index.get(OrderKey(1)).unwrap().accepted_seq(), 3);
    }

    #[test]
    fn an_order_is_new_then_a_pending_retry_then_a_durable_retry() {
        let index = OrderIndex::new();
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
        index.commit_accepted(key, accepted(1234));
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
        let index = OrderIndex::new();
        index.check_or_insert(OrderKey(1), ContentFingerprint(1));
        index.remove_pending(OrderKey(1));
        assert!(!index.contains(OrderKey(1)));
        assert!(index.insert_durable(OrderKey(2), ContentFingerprint(1), accepted(9)));
        assert!(!index.insert_durable(OrderKey(2), ContentFingerprint(1), accepted(9)));
    }

    #[test]
    fn the_largest_seq_and_fingerprint_round_trip() {
        let index = OrderIndex::new();
        let fp = ContentFingerprint((1 << FINGERPRINT_BITS) - 1);
        index.check_or_insert(OrderKey(5), fp);
        index.commit_accepted(OrderKey(5), accepted(SEQ_MAX));
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
            let index = OrderIndex::new();
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
                        _ => { index.commit_accepted(OrderKey(key), accepted(next_seq)); model.get_mut(&key).unwrap().1 = next_seq; next_seq += 1; }
                    }
                }
            }
            prop_assert_eq!(index.len(), model.len());
        }
    }
}
