//! The recovery scan: every frame of every segment validated at start-up, each record handed
//! to the caller to rebuild memory, a torn tail truncated, and where the writer continues
//! ([`JournalTail`]) returned.
//!
//! Recovery rules (the promise operators rely on):
//! - every frame must check (length, CRC32C), decode (rkyv validation) and carry exactly the
//!   next `seq`; the first segment may start above 1, later ones must continue without a gap;
//! - a bad frame in the *last* segment with no valid frame anywhere after it, that looks torn
//!   (cut short by the end of the file, a length out of range, or a sector of it reading as
//!   zeros: see [`SegmentCursor::bad_frame_is_whole`]), is a torn tail (a write cut short by
//!   a crash): it is truncated with a warning and start-up goes on;
//! - zeros from a bad frame to the end of any segment are room the preallocator wrote ahead
//!   of the writer: the clean end of the data, kept;
//! - a last segment whose header never became durable (shorter than a header, or all zeros)
//!   is a creation cut short: nothing in it was acknowledged, it is removed;
//! - any other bad frame is damage in the middle of the journal, or a whole frame whose bits
//!   changed after it was written: start-up is refused with the file and byte offset,
//!   because skipping it would silently lose acknowledged orders.
//!
//! Owns: [`recover`], [`RecoveryReport`], [`RecoveryError`] and [`JournalTail`]. Invariant:
//! a refused recovery changes no file; the only changes are the truncation of a torn tail
//! and the removal of a torn last segment, both through [`crate::durable`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::journal::cursor::{CursorStep, SegmentCursor};
use crate::journal::index::SeqIndex;
use crate::journal::record::ArchivedRecord;
use crate::journal::segment::list_segments;

/// Where a recovered journal ends: the writer continues there.
#[derive(Debug, Clone)]
pub struct JournalTail {
    /// The segment to append to, with its first seq and valid length; `None` for a new journal.
    pub segment: Option<(PathBuf, u64, u64)>,
    /// The seq the next record gets.
    pub next_seq: u64,
    /// Where the recovered frames lie; the writer goes on adding to it.
    pub index: Arc<SeqIndex>,
}

impl JournalTail {
    /// A journal with no segment yet: the writer creates the first, and its first record
    /// gets seq 1.
    pub fn empty() -> Self {
        Self {
            segment: None,
            next_seq: 1,
            index: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("journal damaged in {path} at byte {offset}: {reason}; refusing to start")]
    Damage {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("journal record seq {seq} in {path} at byte {offset} cannot be applied: {reason}")]
    Apply {
        path: PathBuf,
        offset: u64,
        seq: u64,
        reason: String,
    },
    #[error("journal I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What the recovery scan found.
#[derive(Debug)]
pub struct RecoveryReport {
    pub tail: JournalTail,
    pub records: u64,
    pub segments: usize,
    /// `(file, offset, bytes dropped)` when a torn tail was truncated.
    pub truncated: Option<(PathBuf, u64, u64)>,
}

/// What the scan does with each valid record (see [`recover`]).
type Apply<'a> = dyn FnMut(u64, &ArchivedRecord) -> Result<(), String> + 'a;

/// Scans every segment of `dir` in order, hands each valid record to `apply`, truncates a
/// torn tail, and returns where the writer continues. See the module doc for the rules.
pub fn recover(
    dir: &Path,
    apply: &mut dyn FnMut(u64, &ArchivedRecord) -> Result<(), String>,
) -> Result<RecoveryReport, RecoveryError> {
    let segments = list_segments(dir).map_err(io_err(dir))?;
    let mut report = RecoveryReport {
        tail: JournalTail::empty(),
        records: 0,
        segments: segments.len(),
        truncated: None,
    };
    let mut expected_seq: Option<u64> = None;
    for (index, (name_seq, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let Some(mut cursor) = open_segment(dir, path, *name_seq, is_last, &mut report)? else {
            break;
        };
        if let Some(expected) = expected_seq
            && expected != *name_seq
        {
            return Err(damage(
                path,
                0,
                format!("gap: expected seq {expected}, segment starts at {name_seq}"),
            ));
        }
        let segment = Segment {
            path,
            first_seq: *name_seq,
            is_last,
        };
        let seq_next = replay_segment(&mut cursor, &segment, apply, &mut report)?;
        expected_seq = Some(seq_next);
        report.tail.segment = Some((path.clone(), *name_seq, cursor.offset()));
        report.tail.next_seq = seq_next;
    }
    #[cfg(debug_assertions)]
    if let Some((path, _, len)) = &report.tail.segment {
        // The cursor's offset is where the writer continues; past it there may only be the
        // preallocator's zeros.
        let file_len = std::fs::metadata(path).map_err(io_err(path))?.len();
        debug_assert!(file_len >= *len);
    }
    Ok(report)
}

/// The segment being scanned.
struct Segment<'a> {
    path: &'a Path,
    /// The seq its name says its first frame carries.
    first_seq: u64,
    is_last: bool,
}

/// Opens a segment and checks its header against its name. `None` when it is the last
/// segment and its creation was cut short: it is removed, and the scan ends before it.
fn open_segment(
    dir: &Path,
    path: &Path,
    name_seq: u64,
    is_last: bool,
    report: &mut RecoveryReport,
) -> Result<Option<SegmentCursor>, RecoveryError> {
    let cursor = match SegmentCursor::open(path).map_err(io_err(path))? {
        Ok(cursor) => cursor,
        Err(problem) if is_last && problem.is_torn_creation() => {
            // A crash while creating the segment: nothing in it was ever acknowledged.
            tracing::warn!(path = %path.display(), "removing a segment with a torn header");
            crate::durable::remove_file(path).map_err(io_err(path))?;
            crate::durable::sync_dir(dir).map_err(io_err(dir))?;
            report.truncated = Some((path.to_owned(), 0, 0));
            return Ok(None);
        }
        Err(problem) => return Err(damage(path, 0, problem.to_string())),
    };
    if cursor.first_seq != name_seq {
        return Err(damage(
            path,
            0,
            format!("header says first seq {}", cursor.first_seq),
        ));
    }
    Ok(Some(cursor))
}

/// Hands every valid frame of one segment to `apply`, in order, until its data ends (the
/// end of the file, preallocated zeros, or a torn tail, truncated). Returns the seq the
/// next segment must start with.
fn replay_segment(
    cursor: &mut SegmentCursor,
    segment: &Segment<'_>,
    apply: &mut Apply<'_>,
    report: &mut RecoveryReport,
) -> Result<u64, RecoveryError> {
    let path = segment.path;
    let mut seq_next = segment.first_seq;
    loop {
        match cursor.step().map_err(io_err(path))? {
            CursorStep::Frame {
                seq,
                offset,
                record,
            } => {
                if seq != seq_next {
                    return Err(damage(
                        path,
                        offset,
                        format!("expected seq {seq_next}, found {seq}"),
                    ));
                }
                let record = record.map_err(|reason| damage(path, offset, reason))?;
                apply(seq, record).map_err(|reason| RecoveryError::Apply {
                    path: path.to_owned(),
                    offset,
                    seq,
                    reason,
                })?;
                report.tail.index.note(seq, segment.first_seq, offset);
                report.records += 1;
                seq_next += 1;
            }
            CursorStep::End => return Ok(seq_next),
            CursorStep::Bad {
                offset,
                reason,
                torn,
            } => {
                end_at_bad_frame(cursor, segment, offset, &reason, torn, report)?;
                return Ok(seq_next);
            }
        }
    }
}

/// Judges the bad frame at `offset` by the rules of the module doc: `Ok` when the data
/// ends there (preallocated zeros follow, or a torn tail, which is truncated), damage
/// otherwise.
fn end_at_bad_frame(
    cursor: &SegmentCursor,
    segment: &Segment<'_>,
    offset: u64,
    reason: &str,
    torn: bool,
    report: &mut RecoveryReport,
) -> Result<(), RecoveryError> {
    let path = segment.path;
    // Zeros to the end of the file are room the preallocator wrote ahead of the writer: the
    // clean end of the data, not damage and not a torn tail.
    if cursor.rest_is_zero(offset).map_err(io_err(path))? {
        return Ok(());
    }
    if !segment.is_last {
        return Err(damage(path, offset, reason.to_owned()));
    }
    if let Some(valid) = cursor.valid_frame_after(offset).map_err(io_err(path))? {
        return Err(damage(
            path,
            offset,
            format!("{reason}; a valid frame follows at byte {valid}"),
        ));
    }
    // Nothing valid follows, but a frame that was written whole is not a torn write:
    // cutting it off would drop an acknowledged record silently.
    if cursor.bad_frame_is_whole(offset).map_err(io_err(path))? {
        return Err(damage(
            path,
            offset,
            format!(
                "{reason}; the frame is whole (no sector of it reads as zeros), so not a write \
                 torn by a crash"
            ),
        ));
    }
    let file_len = std::fs::metadata(path).map_err(io_err(path))?.len();
    tracing::warn!(path = %path.display(), offset, dropped_bytes = file_len - offset,
        torn, %reason, "truncating torn journal tail");
    crate::durable::truncate(path, offset).map_err(io_err(path))?;
    report.truncated = Some((path.to_owned(), offset, file_len - offset));
    Ok(())
}

fn damage(path: &Path, offset: u64, reason: String) -> RecoveryError {
    RecoveryError::Damage {
        path: path.to_owned(),
        offset,
        reason,
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError {
    let path = path.to_owned();
    move |source| RecoveryError::Io { path, source }
}

#[cfg(test)]
mod tests;
