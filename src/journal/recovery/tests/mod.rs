//! Tests of the recovery scan, a file per concern: [`torn_tail`] (what is cut off),
//! [`damage`] (what is refused, and where), [`headers`] (segment headers and names), and
//! [`model`] (recovery returns exactly what was written). Here: the helpers they share.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::config::FsyncPolicy;
use crate::journal::cursor::{FRAME_BYTES_MAX, READ_CHUNK_BYTES};
use crate::journal::fixtures::*;
use crate::journal::reader::{JournalReader, ReadLimit};
use crate::journal::record::{
    self, Event, FRAME_ALIGN, FrameBatch, FrameCheck, OrderAccepted, Record, SEGMENT_HEADER_BYTES,
    SkuChanged, check_frame,
};
use crate::journal::segment::segment_file_name;
use crate::journal::writer::Journal;
use crate::limits;
use crate::order::Payment;

mod damage;
mod headers;
mod model;
mod torn_tail;

fn try_recover(dir: &Path) -> Result<(RecoveryReport, Vec<(u64, Record)>), RecoveryError> {
    let mut records = Vec::new();
    let report = recover(dir, &mut |seq, record| {
        records.push((seq, to_owned_record(record)));
        Ok(())
    })?;
    Ok((report, records))
}

fn recover_ok(dir: &Path) -> (RecoveryReport, Vec<Record>) {
    let (report, records) = try_recover(dir).expect("recovery succeeds");
    for (index, (seq, _)) in records.iter().enumerate() {
        assert_eq!(
            *seq,
            records[0].0 + index as u64,
            "recovered seqs are gap-free"
        );
    }
    (report, records.into_iter().map(|(_, r)| r).collect())
}

/// Recovery must refuse with `Damage` at exactly this file and offset.
fn assert_damage(dir: &Path, want_path: &Path, want_offset: u64) -> String {
    match try_recover(dir) {
        Err(error @ RecoveryError::Damage { .. }) => {
            let message = error.to_string();
            let RecoveryError::Damage { path, offset, .. } = error else {
                unreachable!()
            };
            assert_eq!(path, want_path, "{message}");
            assert_eq!(offset, want_offset, "{message}");
            assert!(message.contains(&want_path.display().to_string()));
            assert!(message.contains(&format!("at byte {want_offset}")));
            message
        }
        Err(other) => panic!("expected damage, got {other}"),
        Ok((report, _)) => panic!(
            "expected damage at {}:{want_offset}, recovery succeeded: {report:?}",
            want_path.display()
        ),
    }
}

/// `(offset, seq)` of every frame of a segment, read through the cursor.
fn frame_offsets(path: &Path) -> Vec<(u64, u64)> {
    let mut cursor = SegmentCursor::open(path).unwrap().unwrap();
    let mut frames = Vec::new();
    loop {
        match cursor.step().unwrap() {
            CursorStep::Frame {
                seq,
                offset,
                record,
            } => {
                record.unwrap();
                assert_eq!(offset % FRAME_ALIGN as u64, 0);
                frames.push((offset, seq));
            }
            CursorStep::End => return frames,
            CursorStep::Bad { offset, reason, .. } => {
                panic!("{}: bad frame at {offset}: {reason}", path.display())
            }
        }
    }
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

fn in_copy(copy: &tempfile::TempDir, original: &Path) -> PathBuf {
    copy.path().join(original.file_name().unwrap())
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset).unwrap();
}

/// Overwrites `[from, to)` of a file with zeros: sectors of a write that never landed.
fn zero_range(path: &Path, from: u64, to: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![0u8; (to - from) as usize], from)
        .unwrap();
}
