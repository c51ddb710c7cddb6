//! Units bought per (user, SKU), for `per_user_limit`. Owned by one shard (the SKU's), so a
//! plain table with no locks.
//!
//! Memory per entry: a packed 12-byte (key, units) bucket plus one control byte in a
//! hashbrown table at most 7/8 full: 15 to 30 bytes per (user, SKU) pair. Counts are kept for
//! every SKU, limited or not, so that a limit set in the middle of a sale counts what each
//! user already bought.

use hashbrown::HashTable;

use crate::inventory::keys::PurchaseKey;

#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct PurchaseEntry {
    key: u64,
    units: u32,
}

const _: () = assert!(std::mem::size_of::<PurchaseEntry>() == 12);

#[derive(Default)]
pub struct PurchaseCounts {
    table: HashTable<PurchaseEntry>,
}

impl PurchaseCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table sized for `pairs` (user, SKU) pairs without rehashing.
    pub fn with_capacity(pairs: usize) -> Self {
        Self {
            table: HashTable::with_capacity(pairs),
        }
    }

    /// Units this user has bought of this SKU (orders not cancelled).
    pub fn units(&self, key: PurchaseKey) -> u32 {
        self.table
            .find(key.0, |entry| { entry.key } == key.0)
            .map_or(0, |entry| entry.units)
    }

    /// Adds `units` to the pair's count.
    pub fn add(&mut self, key: PurchaseKey, units: u32) {
        match self.table.find_mut(key.0, |entry| { entry.key } == key.0) {
            Some(entry) => {
                entry.units = entry
                    .units
                    .checked_add(units)
                    .expect("purchase count overflow");
            }
            None => {
                self.table
                    .insert_unique(key.0, PurchaseEntry { key: key.0, units }, |entry| {
                        entry.key
                    });
            }
        }
    }

    /// Takes `units` back (a rolled-back batch; later: cancellation). Drops empty entries.
    pub fn subtract(&mut self, key: PurchaseKey, units: u32) {
        let Ok(entry) = self.table.find_entry(key.0, |entry| { entry.key } == key.0) else {
            panic!("subtracting units that were never added");
        };
        let left = entry
            .get()
            .units
            .checked_sub(units)
            .expect("purchase count underflow");
        if left == 0 {
            entry.remove();
        } else {
            let mut entry = entry;
            entry.get_mut().units = left;
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes held in buckets (capacity based).
    pub fn allocated_bytes(&self) -> usize {
        self.table.capacity() * 8 / 7 * (std::mem::size_of::<PurchaseEntry>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn counts_add_up_and_empty_pairs_disappear() {
        let mut counts = PurchaseCounts::new();
        counts.add(PurchaseKey(1), 2);
        counts.add(PurchaseKey(1), 1);
        counts.add(PurchaseKey(2), 1);
        assert_eq!(counts.units(PurchaseKey(1)), 3);
        counts.subtract(PurchaseKey(1), 3);
        assert_eq!(counts.units(PurchaseKey(1)), 0);
        assert_eq!(counts.len(), 1);
    }

    proptest! {
        #[test]
        fn counts_match_a_model(ops in proptest::collection::vec((0u64..32, 1u32..5, any::<bool>()), 1..300)) {
            let mut counts = PurchaseCounts::new();
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (key, units, add) in ops {
                let have = model.get(&key).copied().unwrap_or(0);
                if add || have < units {
                    counts.add(PurchaseKey(key), units);
                    *model.entry(key).or_default() += units;
                } else {
                    counts.subtract(PurchaseKey(key), units);
                    *model.get_mut(&key).unwrap() -= units;
                    if model[&key] == 0 { model.remove(&key); }
                }
                prop_assert_eq!(counts.units(PurchaseKey(key)), model.get(&key).copied().unwrap_or(0));
            }
            prop_assert_eq!(counts.len(), model.len());
        }
    }
}
