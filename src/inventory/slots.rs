//! The memory-mapped inventory: one fixed 128-byte slot per SKU in `<data_dir>/inventory.slots`.
//! This is the only module with `unsafe`.
//!
//! ```text
//! inventory.slots
//!   header (128 bytes): magic "STMPINV1", format u32 = 1, slot_bytes u32 = 128, slots_max u32
//!   Slot[slots_max], field order is the format (little-endian atomics):
//!     version u64            seqlock: odd while the owning shard updates the slot
//!     stock_total, available, reserved, sold              u64
//!     per_user_limit, max_per_order, payment_timeout_s, sku_len   u32
//!     sku [u8; 32]           the name, zero padded; sku_len == 0 marks a free slot
//!     paused u32             1 while an operator has paused new orders (outside the seqlock:
//!                            one flag, read on its own)
//!     padding to 128 bytes   (two cache lines: neighbouring shards never share a line)
//! ```
//!
//! Ownership: each slot has exactly one writer, the shard that owns the SKU, so updates need
//! no read-modify-write atomics, only a seqlock so that readers on other threads (HTTP
//! `GET /v1/skus`, the sold-out fast path, other processes mapping the file) see a consistent
//! `available + reserved + sold = stock_total`. The journal, not this file, is the source of
//! truth: the file is rebuilt from the journal at every start, and is the live, lock-free view
//! of stock that everything else reads.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use memmap2::MmapMut;

use crate::limits;
use crate::order::Payment;

const MAGIC: [u8; 8] = *b"STMPINV1";
const FORMAT: u32 = 1;
const HEADER_BYTES: usize = 128;
pub const SLOT_BYTES: usize = 128;

#[repr(C)]
pub struct Slot {
    version: AtomicU64,
    stock_total: AtomicU64,
    available: AtomicU64,
    reserved: AtomicU64,
    sold: AtomicU64,
    per_user_limit: AtomicU32,
    max_per_order: AtomicU32,
    payment_timeout_s: AtomicU32,
    sku_len: AtomicU32,
    sku: [AtomicU64; 4],
    paused: AtomicU32,
    _padding_u32: u32,
    _padding: [u64; 4],
}

const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_BYTES);
const _: () = assert!(limits::SKU_BYTES_MAX <= 32);

/// A consistent copy of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotValues {
    pub stock_total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub per_user_limit: u32,
    pub max_per_order: u32,
    pub payment_timeout_s: u32,
}

impl SlotValues {
    /// The conservation invariant of the contract.
    pub fn is_balanced(&self) -> bool {
        self.available + self.reserved + self.sold == self.stock_total
    }

    /// Takes `qty` units for a new order: reserved while it awaits payment, sold when it is
    /// confirmed at once (cash on delivery). The caller has checked `available >= qty`.
    pub fn take(&mut self, qty: u64, payment: Payment) {
        self.take_into(qty, payment.initial_status().holds_reserved());
    }

    /// Undoes [`SlotValues::take`] (a batch that failed to become durable).
    pub fn untake(&mut self, qty: u64, payment: Payment) {
        self.give_back(qty, payment.initial_status().holds_reserved());
    }

    /// Moves `qty` units from `available` to `reserved` (or `sold`).
    pub fn take_into(&mut self, qty: u64, reserved: bool) {
        assert!(
            self.available >= qty,
            "stock would go negative: {self:?} - {qty}"
        );
        self.available -= qty;
        if reserved {
            self.reserved += qty;
        } else {
            self.sold += qty;
        }
    }

    /// Moves `qty` units from `reserved` (or `sold`) back to `available`: a cancellation,
    /// refund, expiry or restocked return, or the undo of a take.
    pub fn give_back(&mut self, qty: u64, from_reserved: bool) {
        if from_reserved {
            self.reserved = self.reserved.checked_sub(qty).expect("reserved underflow");
        } else {
            self.sold = self.sold.checked_sub(qty).expect("sold underflow");
        }
        self.available += qty;
    }

    /// Payment: `qty` units move from `reserved` to `sold`.
    pub fn settle_reserved(&mut self, qty: u64) {
        self.reserved = self.reserved.checked_sub(qty).expect("reserved underflow");
        self.sold += qty;
    }

    /// Undoes [`SlotValues::settle_reserved`].
    pub fn unsettle_reserved(&mut self, qty: u64) {
        self.sold = self.sold.checked_sub(qty).expect("sold underflow");
        self.reserved += qty;
    }
}

impl Slot {
    /// Reads a consistent snapshot (seqlock reader: retries while a write is in progress).
    pub fn read(&self) -> SlotValues {
        loop {
            let before = self.version.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let values = self.load_relaxed();
            fence(Ordering::Acquire);
            if self.version.load(Ordering::Relaxed) == before {
                return values;
            }
        }
    }

    fn load_relaxed(&self) -> SlotValues {
        SlotValues {
            stock_total: self.stock_total.load(Ordering::Relaxed),
            available: self.available.load(Ordering::Relaxed),
            reserved: self.reserved.load(Ordering::Relaxed),
            sold: self.sold.load(Ordering::Relaxed),
            per_user_limit: self.per_user_limit.load(Ordering::Relaxed),
            max_per_order: self.max_per_order.load(Ordering::Relaxed),
            payment_timeout_s: self.payment_timeout_s.load(Ordering::Relaxed),
        }
    }

    /// Units available right now: one atomic load, for the sold-out fast path.
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Acquire)
    }

    /// The SKU's `max_per_order`, for the fast path (a single field needs no seqlock).
    pub fn max_per_order(&self) -> u32 {
        self.max_per_order.load(Ordering::Acquire)
    }

    /// Whether new orders for this SKU are paused (one atomic load).
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire) != 0
    }

    /// Pauses or resumes new orders. Only the owning shard (once the record is durable) and
    /// recovery call this.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(u32::from(paused), Ordering::Release);
    }

    /// Updates the slot. Only the owning shard (the single writer) may call this; the new
    /// values must balance, which is asserted before anything is published.
    pub fn write(&self, values: SlotValues) {
        assert!(values.is_balanced(), "unbalanced stock slot: {values:?}");
        let version = self.version.load(Ordering::Relaxed);
        debug_assert_eq!(version & 1, 0, "two writers on one slot");
        self.version.store(version + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.stock_total
            .store(values.stock_total, Ordering::Relaxed);
        self.reserved.store(values.reserved, Ordering::Relaxed);
        self.sold.store(values.sold, Ordering::Relaxed);
        self.per_user_limit
            .store(values.per_user_limit, Ordering::Relaxed);
        self.max_per_order
            .store(values.max_per_order, Ordering::Relaxed);
        self.payment_timeout_s
            .store(values.payment_timeout_s, Ordering::Relaxed);
        // `available` last, with Release: a fast-path reader that sees the new value also
        // sees everything the shard did before it (the order-index entry of the order included).
        self.available.store(values.available, Ordering::Release);
        self.version.store(version + 2, Ordering::Release);
    }

    /// The writer's own view: it is the only writer, so plain loads are current.
    pub fn values(&self) -> SlotValues {
        self.load_relaxed()
    }

    pub fn sku_name(&self) -> Option<String> {
        let len = self.sku_len.load(Ordering::Acquire) as usize;
        if len == 0 || len > 32 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(&self.sku) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        String::from_utf8(bytes[..len].to_vec()).ok()
    }

    fn set_sku_name(&self, name: &str) {
        let mut bytes = [0u8; 32];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        for (chunk, word) in bytes.chunks_exact(8).zip(&self.sku) {
            word.store(
                u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        self.sku_len.store(name.len() as u32, Ordering::Release);
    }
}

/// The mapped slot file.
pub struct Inventory {
    map: MmapMut,
    slots_max: u32,
}

/// Gives the file its length with every block allocated (`posix_fallocate`). The map is
/// written through memory: a page the file system cannot back when it is first touched
/// kills the process with SIGBUS (on a full disk, before any message), so the room is
/// claimed here, where a full disk is an ENOSPC error the caller can report.
fn reserve_blocks(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "slot file too large"))?;
    // SAFETY: the descriptor is open (borrowed from `file`) for the whole call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        // A file system without fallocate: fall back to a sparse length (the old way).
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len as u64),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

impl Inventory {
    /// Creates (or resets) the slot file with room for `slots_max` SKUs and maps it. The file
    /// is rebuilt from the journal at every start, so old contents are discarded.
    pub fn create(path: &Path, slots_max: u32) -> io::Result<Self> {
        assert!((1..=limits::SKUS_MAX).contains(&slots_max));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let len = HEADER_BYTES + slots_max as usize * SLOT_BYTES;
        reserve_blocks(&file, len as u64).map_err(|error| {
            // Nothing of the file is worth keeping (it is rebuilt at every start); give
            // back whatever blocks the failed reservation took.
            let _ = file.set_len(0);
            io::Error::new(
                error.kind(),
                format!("cannot reserve {len} bytes for {slots_max} SKU slots: {error}"),
            )
        })?;
        // SAFETY: the file was just created or truncated by this process, which holds the
        // data directory's exclusive lock, so no other writer changes its length while the
        // map lives. Every byte pattern of the mapped slots is a valid `Slot` (plain atomics),
        // and all access after this goes through atomics.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        map[..8].copy_from_slice(&MAGIC);
        map[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        map[12..16].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
        map[16..20].copy_from_slice(&slots_max.to_le_bytes());
        // Pre-touch every page before any shard runs (the header wrote the first), so that
        // no SKU creation or order during the sale takes a page fault to allocate its slot's
        // page: ~2k pages for the default 65 536 SKUs, a millisecond at start-up. The file
        // was just truncated, so every byte past the header is already 0, and its blocks
        // are reserved, so no touch can find the disk full.
        for page in (4096..len).step_by(4096) {
            map[page] = 0;
        }
        Ok(Self { map, slots_max })
    }

    /// The slot file's size with room for `slots_max` SKUs (header included), in bytes.
    pub const fn file_bytes(slots_max: u32) -> u64 {
        (HEADER_BYTES + slots_max as usize * SLOT_BYTES) as u64
    }

    pub fn slots_max(&self) -> u32 {
        self.slots_max
    }

    /// The slot at `index`. Panics on an index the engine never handed out.
    pub fn slot(&self, index: u32) -> &Slot {
        assert!(index < self.slots_max, "slot index {index} out of range");
        let offset = HEADER_BYTES + index as usize * SLOT_BYTES;
        // SAFETY: `offset..offset + SLOT_BYTES` is inside the map (checked above); the map is
        // page-aligned and HEADER_BYTES and SLOT_BYTES are multiples of 8, so the pointer is
        // aligned for `Slot`; every bit pattern is a valid `Slot`; the reference cannot
        // outlive `self.map` because it borrows `self`.
        unsafe { &*(self.map.as_ptr().add(offset) as *const Slot) }
    }

    /// Claims a free slot for a new SKU and gives it its settings. Single writer: the shard
    /// that will own the SKU.
    pub fn init_slot(&self, index: u32, sku: &str, values: SlotValues) {
        let slot = self.slot(index);
        assert!(slot.sku_name().is_none(), "slot {index} already in use");
        assert!(!sku.is_empty() && sku.len() <= limits::SKU_BYTES_MAX);
        slot.write(values);
        slot.set_sku_name(sku);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(total: u64, available: u64, reserved: u64, sold: u64) -> SlotValues {
        SlotValues {
            stock_total: total,
            available,
            reserved,
            sold,
            max_per_order: 10,
            payment_timeout_s: 900,
            ..Default::default()
        }
    }

    #[test]
    fn slots_persist_their_values_in_the_mapped_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.slots");
        let inventory = Inventory::create(&path, 16).unwrap();
        inventory.init_slot(3, "SKU-3", values(10, 10, 0, 0));
        inventory.slot(3).write(values(10, 7, 2, 1));
        assert_eq!(inventory.slot(3).read(), values(10, 7, 2, 1));
        assert_eq!(inventory.slot(3).sku_name().as_deref(), Some("SKU-3"));
        assert_eq!(inventory.slot(4).sku_name(), None);
        drop(inventory);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"STMPINV1");
        assert_eq!(bytes.len(), HEADER_BYTES + 16 * SLOT_BYTES);
        let available_offset = HEADER_BYTES + 3 * SLOT_BYTES + 16;
        assert_eq!(
            u64::from_le_bytes(
                bytes[available_offset..available_offset + 8]
                    .try_into()
                    .unwrap()
            ),
            7
        );
    }

    #[test]
    #[should_panic(expected = "unbalanced")]
    fn an_unbalanced_write_is_refused_before_it_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = Inventory::create(&dir.path().join("inv"), 4).unwrap();
        inventory.slot(0).write(values(10, 10, 1, 0));
    }

    #[test]
    fn concurrent_readers_always_see_a_balanced_slot() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = Inventory::create(&dir.path().join("inv"), 4).unwrap();
        inventory.init_slot(0, "HOT", values(1_000_000, 1_000_000, 0, 0));
        std::thread::scope(|scope| {
            let slot = inventory.slot(0);
            let reader = scope.spawn(move || {
                let mut reads = 0u64;
                loop {
                    let seen = slot.read();
                    assert!(seen.is_balanced(), "torn read {seen:?}");
                    reads += 1;
                    if seen.available == 0 {
                        return reads;
                    }
                }
            });
            let mut current = slot.values();
            while current.available > 0 {
                current.available -= 1;
                if current.available % 2 == 0 {
                    current.sold += 1
                } else {
                    current.reserved += 1
                }
                slot.write(current);
            }
            assert!(reader.join().unwrap() > 0);
        });
    }
}
