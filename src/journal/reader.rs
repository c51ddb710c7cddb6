//! The consumer's reader: every record after a given `seq`, in order, zero-copy, and new ones
//! as they arrive. This is the public Rust API for fulfilment workers; `stampede tail` and
//! `GET /v1/journal` are built on it.
//!
//! ```no_run
//! use std::time::Duration;
//! use stampede::journal::{JournalReader, ReadLimit};
//!
//! let mut reader = JournalReader::open("data/journal".as_ref(), 0, ReadLimit::Written);
//! loop {
//!     while let Some((seq, record)) = reader.next_record()? {
//!         // `record` is the validated rkyv archive, read in place (see `journal::record`).
//!         println!("{seq} {}", record.type_name());
//!     }
//!     reader.wait(Duration::from_secs(1)); // sleeps until more may be there
//! }
//! # Ok::<(), stampede::journal::ReadError>(())
//! ```
//!
//! What a reader promises:
//! - records come in `seq` order, each exactly once, with no gap: a missing seq is an error
//!   ([`ReadError::Gap`]), never skipped;
//! - with [`ReadLimit::Durable`] (in the engine's process) it never returns a record before
//!   it is as durable as the fsync policy promises, so it sees exactly the acknowledged
//!   records; with [`ReadLimit::Written`] (another process reading the files) it returns
//!   what is written, which with `fsync = "always"` may run a group commit's fdatasync ahead
//!   of the acknowledgement (a process crash keeps those bytes; only a power cut can drop
//!   them, and then the engine never acknowledged them);
//! - a frame that is cut short or does not check at the end of the last segment is "not yet",
//!   not the end of data forever: a write in progress, or a torn tail that the engine's next
//!   start truncates and writes over. The reader parks before it and reads it again on the
//!   next call. A bad frame followed by a segment that does not continue the seq is damage
//!   ([`ReadError::Damaged`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::journal::cursor::{CursorStep, Peek, SegmentCursor};
use crate::journal::record::ArchivedRecord;
use crate::journal::segment::{list_segments, segment_file_name};
use crate::journal::writer::Journal;

/// How often a reader of another process's files looks for new records when caught up.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How far a reader may read.
#[derive(Clone)]
pub enum ReadLimit {
    /// Up to the engine's durable watermark (in the engine's process).
    Durable(Journal),
    /// Whatever valid frames the files hold (any process, engine running or not).
    Written,
    /// Up to this seq and no further (a fixed range of the journal).
    UpTo(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("journal read failed: {0}")]
    Io(#[from] io::Error),
    #[error("journal gap: expected seq {expected}, found {found} in {path}")]
    Gap {
        expected: u64,
        found: u64,
        path: PathBuf,
    },
    #[error("journal damaged in {path} at byte {offset}: {reason}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "records before seq {first_available} are no longer kept (retention); asked for {wanted}"
    )]
    Deleted { wanted: u64, first_available: u64 },
}

/// A cursor over the journal for one consumer.
pub struct JournalReader {
    dir: PathBuf,
    limit: ReadLimit,
    next_seq: u64,
    cursor: Option<Open>,
    /// Where to reopen after the reader caught up: segment and offset of the next frame.
    parked: Option<(u64, u64)>,
}

struct Open {
    cursor: SegmentCursor,
    first_seq: u64,
    path: PathBuf,
}

impl JournalReader {
    /// A reader of the journal in `dir` (`<data_dir>/journal`) that returns the records with
    /// `seq > after_seq` first.
    pub fn open(dir: &Path, after_seq: u64, limit: ReadLimit) -> Self {
        Self {
            dir: dir.to_owned(),
            limit,
            next_seq: after_seq.saturating_add(1),
            cursor: None,
            parked: None,
        }
    }

    /// The seq the next record will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn beyond_limit(&self) -> bool {
        match &self.limit {
            ReadLimit::Durable(journal) => self.next_seq > journal.durable_seq(),
            ReadLimit::Written => false,
            ReadLimit::UpTo(last) => self.next_seq > *last,
        }
    }

    /// The next record, or `None` when there is none yet (call [`JournalReader::wait`], then
    /// again). The record is borrowed from the reader's buffer: zero-copy and validated.
    pub fn next_record(&mut self) -> Result<Option<(u64, &ArchivedRecord)>, ReadError> {
        loop {
            if self.beyond_limit() {
                return Ok(None);
            }
            if self.cursor.is_none() && !self.open_cursor()? {
                return Ok(None);
            }
            let open = self.cursor.as_mut().expect("opened above");
            match open.cursor.peek()? {
                Peek::Frame { seq } if seq < self.next_seq => open.cursor.skip()?,
                Peek::Frame { seq } if seq == self.next_seq => break,
                Peek::Frame { seq } => {
                    return Err(ReadError::Gap {
                        expected: self.next_seq,
                        found: seq,
                        path: open.path.clone(),
                    });
                }
                Peek::End => {
                    let offset = open.cursor.offset();
                    if open.cursor.refresh_len()? > offset {
                        continue;
                    }
                    if self.next_segment()? {
                        continue;
                    }
                    let open = self.cursor.as_mut().expect("still open");
                    if let Some(later) = later_segment(&self.dir, open.first_seq)? {
                        // The writer creates a segment only after its last write to the one
                        // before: with a later segment there, this one is complete once its
                        // length is read again.
                        if open.cursor.refresh_len()? > offset {
                            continue;
                        }
                        return Err(ReadError::Gap {
                            expected: self.next_seq,
                            found: later,
                            path: self.dir.join(segment_file_name(later)),
                        });
                    }
                    self.park();
                    return Ok(None);
                }
                Peek::Bad { torn } => {
                    // Zeros the preallocator wrote, a write in progress, a torn tail, or
                    // damage: only a following segment can tell.
                    if !self.next_segment()? {
                        let open = self.cursor.as_ref().expect("still open");
                        if !torn && later_segment(&self.dir, open.first_seq)?.is_some() {
                            return Err(self.damaged("bad frame before a later segment"));
                        }
                        self.park();
                        return Ok(None);
                    }
                }
            }
        }
        let open = self.cursor.as_mut().expect("opened above");
        let path = &open.path;
        match open.cursor.step()? {
            CursorStep::Frame {
                seq,
                offset,
                record,
            } => {
                let record = record.map_err(|reason| ReadError::Damaged {
                    path: path.clone(),
                    offset,
                    reason,
                })?;
                self.next_seq = seq + 1;
                Ok(Some((seq, record)))
            }
            CursorStep::End | CursorStep::Bad { .. } => {
                unreachable!("peek saw a frame at this offset")
            }
        }
    }

    /// Blocks until more records may be there or `timeout` passes (no busy-spinning:
    /// in-process readers wait on the journal's commit signal, file readers poll every
    /// [`FILE_POLL_INTERVAL`]). Returns true when it is worth calling `next_record` again.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        match &self.limit {
            ReadLimit::Durable(journal) => {
                journal.wait_durable_past(self.next_seq - 1, timeout) >= self.next_seq
            }
            ReadLimit::Written => {
                std::thread::sleep(timeout.min(FILE_POLL_INTERVAL));
                true
            }
            ReadLimit::UpTo(last) => {
                if self.next_seq <= *last {
                    std::thread::sleep(timeout.min(FILE_POLL_INTERVAL));
                }
                self.next_seq <= *last
            }
        }
    }

    fn damaged(&self, reason: &str) -> ReadError {
        let open = self.cursor.as_ref().expect("open");
        ReadError::Damaged {
            path: open.path.clone(),
            offset: open.cursor.offset(),
            reason: reason.to_owned(),
        }
    }

    /// Remembers where to read again and lets the file go (the buffer may hold stale bytes
    /// of a frame being written).
    fn park(&mut self) {
        if let Some(open) = self.cursor.take() {
            self.parked = Some((open.first_seq, open.cursor.offset()));
        }
    }

    fn open_cursor(&mut self) -> Result<bool, ReadError> {
        if let Some((first_seq, offset)) = self.parked.take() {
            let path = self.dir.join(segment_file_name(first_seq));
            match SegmentCursor::open_at(&path, offset)? {
                Ok(cursor) => {
                    self.cursor = Some(Open {
                        cursor,
                        first_seq,
                        path,
                    });
                    return Ok(true);
                }
                Err(problem) => {
                    return Err(ReadError::Damaged {
                        path,
                        offset,
                        reason: problem.to_string(),
                    });
                }
            }
        }
        let segments = list_segments(&self.dir)?;
        if let ReadLimit::Durable(journal) = &self.limit
            && let Some((first_seq, offset)) = journal.start_for(self.next_seq)
            && segments.iter().any(|(first, _)| *first == first_seq)
        {
            // In the engine's process the seq index knows a frame at most 64 records before
            // the one wanted: start there instead of at the segment's head.
            self.parked = Some((first_seq, offset));
            return self.open_cursor();
        }
        let Some(first) = segments.first() else {
            return Ok(false);
        };
        if first.0 > self.next_seq {
            return Err(ReadError::Deleted {
                wanted: self.next_seq,
                first_available: first.0,
            });
        }
        let index = segments
            .iter()
            .rposition(|(first_seq, _)| *first_seq <= self.next_seq)
            .unwrap_or(0);
        let (first_seq, path) = segments[index].clone();
        self.open_segment(first_seq, path)
    }

    fn open_segment(&mut self, first_seq: u64, path: PathBuf) -> Result<bool, ReadError> {
        match SegmentCursor::open(&path)? {
            Ok(cursor) => {
                self.cursor = Some(Open {
                    cursor,
                    first_seq,
                    path,
                });
                Ok(true)
            }
            // A segment the writer is creating right now: its header is not written yet.
            Err(_) if first_seq >= self.next_seq => Ok(false),
            Err(problem) => Err(ReadError::Damaged {
                path,
                offset: 0,
                reason: problem.to_string(),
            }),
        }
    }

    /// Moves to the segment that starts at `next_seq`, if there is one.
    fn next_segment(&mut self) -> Result<bool, ReadError> {
        let path = self.dir.join(segment_file_name(self.next_seq));
        let current = self.cursor.as_ref().map(|open| open.first_seq);
        if current == Some(self.next_seq) || !path.exists() {
            return Ok(false);
        }
        let parked = self.cursor.take();
        if self.open_segment(self.next_seq, path)? {
            Ok(true)
        } else {
            self.cursor = parked;
            Ok(false)
        }
    }
}

/// The first seq of the earliest segment after the one starting at `current_first`.
fn later_segment(dir: &Path, current_first: u64) -> Result<Option<u64>, ReadError> {
    Ok(list_segments(dir)?
        .iter()
        .map(|(first_seq, _)| *first_seq)
        .find(|first_seq| *first_seq > current_first))
}

#[cfg(test)]
mod tests;
