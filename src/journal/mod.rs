//! The append-only, checksummed journal: the single source of truth. Memory (stock, order index,
//! purchase counts) is rebuilt from it at start-up, and fulfilment workers tail it.
//!
//! # Layers
//!
//! The files form a one-way chain: each imports only the ones above it in this table, never
//! one below (tests excepted: they write their journals through the writer and read them
//! through the reader, whatever layer they test).
//!
//! | file | what it owns |
//! | --- | --- |
//! | [`record`] | the on-disk format (segment header, frames, rkyv records) and the consumer-facing schema |
//! | [`storage`] | the writer's file I/O seam: [`storage::Storage`], [`storage::SegmentFile`], the real [`storage::FsStorage`] |
//! | [`segment`] | segment files: naming, listing in seq order, creation (header, fsync, directory sync), zeros as room |
//! | [`cursor`] | reading one segment frame by frame (zero-copy), the header check, the torn-frame rules |
//! | [`index`] | the sparse seq → file position map behind reads of one record |
//! | [`recovery`] | the start-up scan: replay, truncate a torn tail, refuse damage; where the writer continues ([`JournalTail`]) |
//! | [`writer`] | sequence numbers, group commit under the fsync policy, rotation, preallocation, the failure rules |
//! | [`reader`] | the consumer's reader (records after a seq, zero-copy, follow), bounded by the writer's durable watermark |
//! | [`consumers`] | consumer groups' durable offsets (uses none of the layers above) |
//!
//! The index sits above the cursor because it reads a record through one; recovery above the
//! index because it fills it while it scans; the writer above recovery because it opens where
//! recovery ended; the reader above the writer because an in-process reader waits on the
//! writer's durable watermark.
//!
//! Test-only: `sim_disk` (a disk that loses power, behind the storage seam) and `fixtures`
//! (journals written and read through the real layers, shared by the tests of several).

pub mod consumers;
pub mod cursor;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod index;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod segment;
#[cfg(test)]
pub mod sim_disk;
pub mod storage;
pub mod writer;

pub use consumers::ConsumerOffsets;
pub use index::SeqIndex;
pub use reader::{JournalReader, ReadError, ReadLimit};
pub use record::{
    ArchivedRecord, Event, FrameBatch, HeldOrder, KeyedOrderAction, OrderAccepted, OrderAction,
    Record, ReviewRulesChanged, ShipmentAction, SkuChanged, SkuPaused,
};
pub use recovery::{JournalTail, RecoveryError, RecoveryReport, recover};
pub use segment::{list_segments, parse_segment_file_name, segment_file_name};
pub use writer::{Journal, JournalError, SeqRange};
