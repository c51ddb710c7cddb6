//! Journals for tests (`cfg(test)`), written through the real writer and read through the
//! real reader: the helpers that the tests of several layers share (the recovery scan's, the
//! reader's and the writer's). Test-only, so it may use every layer.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::FsyncPolicy;
use crate::journal::reader::{JournalReader, ReadLimit};
use crate::journal::record::{ArchivedRecord, Event, FrameBatch, OrderAccepted, Record};
use crate::journal::recovery::JournalTail;
use crate::journal::segment::list_segments;
use crate::journal::sim_disk::SECTOR;
use crate::journal::writer::Journal;
use crate::limits;
use crate::order::Payment;

pub(crate) fn order(n: usize, address_bytes: usize) -> Record {
    let address =
        (address_bytes > 0).then(|| format!(r#"{{"street":"{}"}}"#, "y".repeat(address_bytes)));
    Record {
        at_ms: 1_700_000_000_000 + n as u64,
        event: Event::Accepted(OrderAccepted {
            order_id: format!("order-{n}"),
            user_id: format!("user-{}", n % 17),
            sku: "SKU-9".into(),
            qty: 1 + (n % 3) as u32,
            payment: [Payment::Prepaid, Payment::Escrow, Payment::Cod][n % 3],
            address,
        }),
    }
}

/// Where a new journal starts.
pub(crate) fn new_tail() -> JournalTail {
    JournalTail::empty()
}

pub(crate) fn batch_of(records: &[Record]) -> FrameBatch {
    let mut batch = FrameBatch::default();
    for record in records {
        batch.push(record).expect("record encodes");
    }
    batch
}

/// Appends `batches` through a journal (policy `none`, so no fsync), starting at `tail`.
pub(crate) fn write_batches(
    dir: &Path,
    tail: JournalTail,
    batches: &[Vec<Record>],
    segment_max: u64,
) {
    let journal = Journal::open(dir, FsyncPolicy::None, segment_max, tail).unwrap();
    for records in batches {
        let mut batch = FrameBatch::default();
        for record in records {
            batch.push(record).unwrap();
        }
        let range = journal.append(&batch).unwrap();
        journal.commit(range.last).unwrap();
    }
    journal.close().unwrap();
}

/// A fresh journal of `count` orders in batches of up to 5; returns what was written.
pub(crate) fn write_orders(
    dir: &Path,
    count: usize,
    address_bytes: usize,
    segment_max: u64,
) -> Vec<Record> {
    let records: Vec<Record> = (0..count).map(|n| order(n, address_bytes)).collect();
    let batches: Vec<Vec<Record>> = records
        .chunks(5)
        .enumerate()
        .flat_map(|(i, chunk)| {
            // Vary the batch sizes: 5, then 2 + 3, ...
            if i % 2 == 1 && chunk.len() > 2 {
                vec![chunk[..2].to_vec(), chunk[2..].to_vec()]
            } else {
                vec![chunk.to_vec()]
            }
        })
        .collect();
    write_batches(dir, new_tail(), &batches, segment_max);
    records
}

pub(crate) fn to_owned_record(record: &ArchivedRecord) -> Record {
    rkyv::deserialize::<Record, rkyv::rancor::Error>(record).unwrap()
}

pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

pub(crate) fn append_bytes(path: &Path, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, file_len(path)).unwrap();
}

pub(crate) fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A journal of several small segments; returns the records and the segments.
pub(crate) fn multi_segment_journal(dir: &Path) -> (Vec<Record>, Vec<(u64, PathBuf)>) {
    let written = write_orders(dir, 600, 300, limits::SEGMENT_BYTES_MIN);
    let segments = list_segments(dir).unwrap();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    (written, segments)
}

/// Records with `after < seq <= max`, at most `limit`, through the consumers' reader.
pub(crate) fn read_seqs(dir: &Path, after: u64, max: u64, limit: usize) -> Vec<(u64, Record)> {
    let mut reader = JournalReader::open(dir, after, ReadLimit::UpTo(max));
    let mut seen = Vec::new();
    while seen.len() < limit {
        let Some((seq, record)) = reader.next_record().unwrap() else {
            break;
        };
        seen.push((seq, to_owned_record(record)));
    }
    seen
}

/// The torn-write rule of the cursor (`SegmentCursor::bad_frame_is_whole`), restated for the
/// tests over a whole file's bytes and in the simulated disk's sectors (sector by sector,
/// each clipped to the frame), so that a test's expectation does not merely call the code
/// under test: a
/// bad frame at `start` with no valid frame after it is a torn tail when its length is out
/// of range, it does not fit in the file with its padding, or a sector it overlaps holds
/// only zeros within its header and payload.
pub(crate) fn looks_torn(bytes: &[u8], start: usize) -> bool {
    let Some(header) = bytes.get(start..start + 16) else {
        return true;
    };
    let payload_len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    if payload_len == 0 || payload_len > limits::RECORD_PAYLOAD_BYTES_MAX {
        return true;
    }
    let checked_end = start + 16 + payload_len;
    if checked_end.next_multiple_of(8) > bytes.len() {
        return true;
    }
    let sector = SECTOR as usize;
    (start / sector..=(checked_end - 1) / sector).any(|index| {
        let from = (index * sector).max(start);
        let to = ((index + 1) * sector).min(checked_end);
        bytes[from..to].iter().all(|byte| *byte == 0)
    })
}
