//! Reading the journal back: a sequential cursor over one segment, the recovery scan that
//! validates every frame at start-up, and the range read behind `GET /v1/journal`.
//!
//! Recovery rules (the promise operators rely on):
//! - every frame must check (length, CRC32C), decode (rkyv validation) and carry exactly the
//!   next `seq`; the first segment may start above 1, later ones must continue without a gap;
//! - a bad frame in the *last* segment with no valid frame anywhere after it is a torn tail
//!   (a write cut short by a crash): it is truncated with a warning and start-up goes on;
//! - any other bad frame is damage in the middle of the journal: start-up is refused with
//!   the file and byte offset, because skipping it would silently lose acknowledged orders.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use crate::journal::record::{
    self, ArchivedRecord, FRAME_ALIGN, FrameCheck, SEGMENT_HEADER_BYTES, access_record, check_frame,
};
use crate::journal::writer::{JournalTail, parse_segment_file_name};
use crate::limits;

/// Bytes read from a segment at a time. Large enough to amortise the syscall over hundreds
/// of records, small enough that many concurrent readers stay cheap.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// The journal's segment files, in seq order.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// One step of a [`SegmentCursor`].
#[derive(Debug)]
pub enum CursorStep<'a> {
    Frame {
        seq: u64,
        offset: u64,
        record: Result<&'a ArchivedRecord, String>,
    },
    End,
    /// Bytes at `offset` are not a whole, valid frame.
    Bad {
        offset: u64,
        reason: String,
        torn: bool,
    },
}

/// Reads the frames of one segment in order through an aligned buffer, so payloads are
/// validated and accessed in place (zero-copy).
pub struct SegmentCursor {
    file: File,
    file_len: u64,
    buf: AlignedVec<16>,
    /// File offset of `buf[0]`; always 8-aligned, so frame alignment carries over.
    buf_offset: u64,
    pos: usize,
    pub first_seq: u64,
}

impl SegmentCursor {
    /// Opens a segment and checks its header. `Err(Bad)` style problems are returned as the
    /// reason string in `Ok(Err(..))` so the caller can name the file.
    pub fn open(path: &Path) -> io::Result<Result<Self, String>> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        if file_len < SEGMENT_HEADER_BYTES as u64 {
            return Ok(Err(format!("segment header is torn ({file_len} bytes)")));
        }
        file.read_exact_at(&mut header, 0)?;
        let Some(first_seq) = record::parse_segment_header(&header) else {
            return Ok(Err("not a journal segment (bad magic)".into()));
        };
        Ok(Ok(Self {
            file,
            file_len,
            buf: AlignedVec::new(),
            buf_offset: SEGMENT_HEADER_BYTES as u64,
            pos: 0,
            first_seq,
        }))
    }

    /// Limits the cursor to the first `len` bytes of the file (the durable part).
    pub fn limit_len(&mut self, len: u64) {
        self.file_len = self.file_len.min(len);
    }

    /// The file offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.buf_offset + self.pos as u64
    }

    fn refill(&mut self, needed: usize) -> io::Result<()> {
        let start = self.offset();
        let want = needed.max(READ_CHUNK_BYTES) as u64;
        let len = want.min(self.file_len - start) as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        self.file.read_exact_at(&mut self.buf, start)?;
        self.buf_offset = start;
        self.pos = 0;
        Ok(())
    }

    /// The next frame, the end of data, or what is wrong at the current offset.
    pub fn step(&mut self) -> io::Result<CursorStep<'_>> {
        let (seq, payload_start, payload_end, next_pos) = loop {
            match check_frame(&self.buf, self.pos) {
                FrameCheck::Valid {
                    seq,
                    payload,
                    next_offset,
                } => {
                    let start = payload.as_ptr() as usize - self.buf.as_ptr() as usize;
                    break (seq, start, start + payload.len(), next_offset);
                }
                FrameCheck::End | FrameCheck::Incomplete { .. }
                    if self.buf_offset + (self.buf.len() as u64) < self.file_len =>
                {
                    let needed = match check_frame(&self.buf, self.pos) {
                        FrameCheck::Incomplete { needed } => needed,
                        _ => record::FRAME_HEADER_BYTES,
                    };
                    self.refill(needed)?;
                }
                FrameCheck::End => return Ok(CursorStep::End),
                FrameCheck::Incomplete { needed } => {
                    return Ok(CursorStep::Bad {
                        offset: self.offset(),
                        reason: format!("frame of {needed} bytes cut short by the end of the file"),
                        torn: true,
                    });
                }
                FrameCheck::Corrupt { reason } => {
                    return Ok(CursorStep::Bad {
                        offset: self.offset(),
                        reason,
                        torn: false,
                    });
                }
            }
        };
        let offset = self.offset();
        self.pos = next_pos;
        let payload = &self.buf[payload_start..payload_end];
        let record = access_record(payload).map_err(|e| format!("record does not decode: {e}"));
        Ok(CursorStep::Frame {
            seq,
            offset,
            record,
        })
    }

    /// True when a valid frame starts anywhere after `offset` in this segment: then a bad
    /// frame at `offset` is damage, not a torn tail.
    pub fn valid_frame_after(&self, offset: u64) -> io::Result<Option<u64>> {
        let start = offset + FRAME_ALIGN as u64;
        if start >= self.file_len {
            return Ok(None);
        }
        let mut rest = AlignedVec::<16>::new();
        rest.resize((self.file_len - start) as usize, 0);
        self.file.read_exact_at(&mut rest, start)?;
        let mut candidate = 0;
        while candidate + record::FRAME_HEADER_BYTES <= rest.len() {
            if let FrameCheck::Valid { .. } = check_frame(&rest, candidate) {
                return Ok(Some(start + candidate as u64));
            }
            candidate += FRAME_ALIGN;
        }
        Ok(None)
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

/// Scans every segment of `dir` in order, hands each valid record to `apply`, truncates a
/// torn tail, and returns where the writer continues. See the module doc for the rules.
pub fn recover(
    dir: &Path,
    apply: &mut dyn FnMut(u64, &ArchivedRecord) -> Result<(), String>,
) -> Result<RecoveryReport, RecoveryError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RecoveryError::Io { path, source }
    };
    let segments = list_segments(dir).map_err(io_err(dir))?;
    let mut report = RecoveryReport {
        tail: JournalTail {
            segment: None,
            next_seq: 1,
        },
        records: 0,
        segments: segments.len(),
        truncated: None,
    };
    let mut expected_seq: Option<u64> = None;
    for (index, (name_seq, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let damage = |offset: u64, reason: String| RecoveryError::Damage {
            path: path.clone(),
            offset,
            reason,
        };
        let mut cursor = match SegmentCursor::open(path).map_err(io_err(path))? {
            Ok(cursor) => cursor,
            Err(reason) if is_last && reason.starts_with("segment header is torn") => {
                // A crash while creating the segment: nothing in it was ever acknowledged.
                tracing::warn!(path = %path.display(), "removing a segment with a torn header");
                std::fs::remove_file(path).map_err(io_err(path))?;
                report.truncated = Some((path.clone(), 0, 0));
                break;
            }
            Err(reason) => return Err(damage(0, reason)),
        };
        if cursor.first_seq != *name_seq {
            return Err(damage(
                0,
                format!("header says first seq {}", cursor.first_seq),
            ));
        }
        let mut seq_next = match expected_seq {
            Some(expected) if expected != *name_seq => {
                return Err(damage(
                    0,
                    format!("gap: expected seq {expected}, segment starts at {name_seq}"),
                ));
            }
            _ => *name_seq,
        };
        loop {
            match cursor.step().map_err(io_err(path))? {
                CursorStep::Frame {
                    seq,
                    offset,
                    record,
                } => {
                    if seq != seq_next {
                        return Err(damage(
                            offset,
                            format!("expected seq {seq_next}, found {seq}"),
                        ));
                    }
                    let record = record.map_err(|reason| damage(offset, reason))?;
                    apply(seq, record).map_err(|reason| RecoveryError::Apply {
                        path: path.clone(),
                        offset,
                        seq,
                        reason,
                    })?;
                    report.records += 1;
                    seq_next += 1;
                }
                CursorStep::End => break,
                CursorStep::Bad {
                    offset,
                    reason,
                    torn,
                } => {
                    if !is_last {
                        return Err(damage(offset, reason));
                    }
                    if let Some(valid) = cursor.valid_frame_after(offset).map_err(io_err(path))? {
                        return Err(damage(
                            offset,
                            format!("{reason}; a valid frame follows at byte {valid}"),
                        ));
                    }
                    let file_len = std::fs::metadata(path).map_err(io_err(path))?.len();
                    tracing::warn!(path = %path.display(), offset, dropped_bytes = file_len - offset,
                        torn, %reason, "truncating torn journal tail");
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err(path))?;
                    file.set_len(offset).map_err(io_err(path))?;
                    file.sync_all().map_err(io_err(path))?;
                    report.truncated = Some((path.clone(), offset, file_len - offset));
                    break;
                }
            }
        }
        expected_seq = Some(seq_next);
        report.tail = JournalTail {
            segment: Some((path.clone(), *name_seq, cursor.offset())),
            next_seq: seq_next,
        };
    }
    if let Some((path, _, len)) = &report.tail.segment {
        // The cursor's offset is where the writer continues; the file must end there.
        let file_len = std::fs::metadata(path).map_err(io_err(path))?.len();
        debug_assert_eq!(file_len, *len);
    }
    Ok(report)
}

/// Reads records with `after_seq < seq <= max_seq`, at most `limit`, oldest first, handing
/// each to `visit` zero-copy. Used by `GET /v1/journal`; `max_seq` is the durable watermark,
/// so a frame being written concurrently is never read.
pub fn read_range(
    dir: &Path,
    after_seq: u64,
    max_seq: u64,
    limit: usize,
    visit: &mut dyn FnMut(u64, &ArchivedRecord),
) -> io::Result<usize> {
    let segments = list_segments(dir)?;
    let start_index = segments
        .iter()
        .rposition(|(first, _)| *first <= after_seq + 1)
        .unwrap_or(0);
    let mut delivered = 0;
    for (_, path) in &segments[start_index..] {
        if delivered >= limit {
            break;
        }
        let mut cursor = match SegmentCursor::open(path)? {
            Ok(cursor) => cursor,
            Err(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
        };
        if cursor.first_seq > max_seq {
            break;
        }
        loop {
            match cursor.step()? {
                CursorStep::Frame { seq, record, .. } => {
                    if seq > max_seq {
                        return Ok(delivered);
                    }
                    if seq <= after_seq {
                        continue;
                    }
                    let record =
                        record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    visit(seq, record);
                    delivered += 1;
                    if delivered >= limit {
                        return Ok(delivered);
                    }
                }
                CursorStep::End => break,
                // Past the durable watermark a frame may be half written; stop there.
                CursorStep::Bad { .. } => return Ok(delivered),
            }
        }
    }
    Ok(delivered)
}

const _: () = assert!(READ_CHUNK_BYTES >= limits::RECORD_PAYLOAD_BYTES_MAX * 4);
