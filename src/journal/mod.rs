//! The append-only, checksummed journal: the single source of truth. Memory (stock, order index,
//! purchase counts) is rebuilt from it at start-up, and fulfilment workers tail it.
//!
//! - [`record`]: the on-disk format (frames, rkyv records) and the consumer-facing schema.
//! - [`writer`]: sequence numbers, segments, group commit under the fsync policy.
//! - [`scan`]: the segment cursor and the recovery scan.
//! - [`storage`]: the writer's file I/O seam (the real file system; a simulated disk in tests).
//! - [`index`]: the sparse seq → file position map behind reads of one record.
//! - [`reader`]: the consumer's reader (records after a seq, zero-copy, follow).
//! - [`consumers`]: consumer groups' durable offsets.

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
    ArchivedRecord, Event, FrameBatch, OrderAccepted, OrderAction, Record, SkuChanged,
};
pub use recovery::{JournalTail, RecoveryError, RecoveryReport, recover};
pub use segment::{list_segments, parse_segment_file_name, segment_file_name};
pub use writer::{Journal, JournalError, SeqRange};
