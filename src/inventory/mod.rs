//! Stock and the hot-path tables: the memory-mapped slot file, the shared idempotency index,
//! per-shard purchase counts, and the fixed-width keys they are indexed by.

pub mod dedup;
pub mod keys;
pub mod purchases;
pub mod slots;

pub use dedup::{DedupCheck, DedupIndex};
pub use keys::{ContentFingerprint, KeyHasher, OrderKey, PurchaseKey};
pub use purchases::PurchaseCounts;
pub use slots::{Inventory, Slot, SlotValues};
