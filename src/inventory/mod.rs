//! Stock and the hot-path tables: the memory-mapped slot file, the shared order index (idempotency and order state),
//! per-shard purchase counts and idempotency-key tables, and the fixed-width keys they are
//! indexed by.

pub mod idempotency;
pub mod keys;
pub mod order_index;
pub mod purchases;
pub mod slots;

pub use idempotency::{BoundKey, IdempotencyKeys, KeyCheck};
pub use keys::{
    ActionContent, ActionFingerprint, ContentFingerprint, IdempotencyKeyHash, KeyHasher, OrderKey,
    PurchaseKey,
};
pub use order_index::{AcceptedOrder, DedupCheck, OrderEntry, OrderIndex, OrderState};
pub use purchases::PurchaseCounts;
pub use slots::{Inventory, Slot, SlotValues};
