//! Reading the journal back: a sequential cursor over one segment (which the consumers'
//! [`crate::journal::JournalReader`] is built on) and the recovery scan that validates every
//! frame at start-up.
//!
//! Recovery rules (the promise operators rely on):
//! - every frame must check (length, CRC32C), decode (rkyv validation) and carry exactly the
//!   next `seq`; the first segment may start above 1, later ones must continue without a gap;
//! - a bad frame in the *last* segment with no valid frame anywhere after it, that looks torn
//!   (cut short by the end of the file, a length out of range, or a sector of it reading as
//!   zeros: see [`SegmentCursor::bad_frame_is_whole`]), is a torn tail (a write cut short by
//!   a crash): it is truncated with a warning and start-up goes on;
//! - any other bad frame is damage in the middle of the journal, or a whole frame whose bits
//!   changed after it was written: start-up is refused with the file and byte offset,
//!   because skipping it would silently lose acknowledged orders.

use std::fs::File;
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

/// The most bytes one frame takes, padding included: a frame starting anywhere in a chunk
/// is whole in a read that reaches this far past the chunk's end.
const FRAME_BYTES_MAX: usize =
    (record::FRAME_HEADER_BYTES + limits::RECORD_PAYLOAD_BYTES_MAX).next_multiple_of(FRAME_ALIGN);

/// The unit a write tears in: a disk writes a 512-byte sector whole or not at all (the
/// simulated disk of the power-loss tests does the same), and a write cut short by a killed
/// process stops at a page boundary, a multiple of it.
const SECTOR_BYTES: u64 = 512;

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

/// What [`SegmentCursor::peek`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    Frame { seq: u64 },
    End,
    Bad { torn: bool },
}

enum FrameHere {
    Frame {
        seq: u64,
        payload_start: usize,
        payload_end: usize,
        next_pos: usize,
    },
    End,
    Bad {
        reason: String,
        torn: bool,
    },
}

/// Why a segment's 16-byte header does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The file is shorter than a header: a crash between creating the file and writing
    /// its header.
    Short { file_len: u64 },
    /// The file holds nothing but zeros: its size reached the disk but the header's bytes
    /// did not (a power cut between the creation and its `fsync`).
    Zeroed { file_len: u64 },
    /// Bytes that are not a segment header: damage, or a foreign file.
    BadMagic,
}

impl HeaderProblem {
    /// True when the segment was being created and never synced: nothing in it was ever
    /// acknowledged, so as the last segment it may be removed.
    pub fn is_torn_creation(&self) -> bool {
        matches!(self, Self::Short { .. } | Self::Zeroed { .. })
    }
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short { file_len } => write!(f, "segment header is torn ({file_len} bytes)"),
            Self::Zeroed { file_len } => {
                write!(f, "segment header is torn (all {file_len} bytes are zeros)")
            }
            Self::BadMagic => f.write_str("not a journal segment (bad magic)"),
        }
    }
}

/// True when every byte of `file` from the header's end to `file_len` is zero (read a chunk
/// at a time, so a large preallocated segment costs no more memory than a small one).
fn all_zeros_after(file: &File, file_len: u64) -> io::Result<bool> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    while offset < file_len {
        let len = chunk.len().min((file_len - offset) as usize);
        file.read_exact_at(&mut chunk[..len], offset)?;
        if chunk[..len].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        offset += len as u64;
    }
    Ok(true)
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
    /// The frame [`SegmentCursor::peek`] checked at `pos`, so that the `step` after it does
    /// not compute the CRC a second time. Cleared whenever `pos` or the buffer changes.
    peeked: Option<PeekedFrame>,
}

#[derive(Debug, Clone, Copy)]
struct PeekedFrame {
    pos: usize,
    seq: u64,
    payload_start: usize,
    payload_end: usize,
    next_pos: usize,
}

impl SegmentCursor {
    /// Opens a segment and checks its header. A header that does not check is returned as a
    /// [`HeaderProblem`] in `Ok(Err(..))` so the caller can name the file and decide whether
    /// it is a torn creation or damage.
    pub fn open(path: &Path) -> io::Result<Result<Self, HeaderProblem>> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        if file_len < SEGMENT_HEADER_BYTES as u64 {
            return Ok(Err(HeaderProblem::Short { file_len }));
        }
        file.read_exact_at(&mut header, 0)?;
        let Some(first_seq) = record::parse_segment_header(&header) else {
            if header.iter().all(|&byte| byte == 0) && all_zeros_after(&file, file_len)? {
                return Ok(Err(HeaderProblem::Zeroed { file_len }));
            }
            return Ok(Err(HeaderProblem::BadMagic));
        };
        Ok(Ok(Self {
            file,
            file_len,
            buf: AlignedVec::new(),
            buf_offset: SEGMENT_HEADER_BYTES as u64,
            pos: 0,
            first_seq,
            peeked: None,
        }))
    }

    /// Opens a segment and positions the cursor at `offset`, which must be where a frame
    /// starts (a [`crate::journal::SeqIndex`] point).
    pub fn open_at(path: &Path, offset: u64) -> io::Result<Result<Self, String>> {
        let mut cursor = match Self::open(path)? {
            Ok(cursor) => cursor,
            Err(problem) => return Ok(Err(problem.to_string())),
        };
        if offset < SEGMENT_HEADER_BYTES as u64 || offset % FRAME_ALIGN as u64 != 0 {
            return Ok(Err(format!("offset {offset} is not a frame boundary")));
        }
        cursor.buf_offset = offset.min(cursor.file_len);
        Ok(Ok(cursor))
    }

    /// Limits the cursor to the first `len` bytes of the file (a read that needs only the
    /// frames before an index point stops there). `len` must be a frame boundary.
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
        self.peeked = None;
        Ok(())
    }

    /// Finds the frame at the current offset (refilling the buffer as needed) without
    /// moving past it.
    fn frame_here(&mut self) -> io::Result<FrameHere> {
        if let Some(peeked) = self.peeked
            && peeked.pos == self.pos
        {
            return Ok(FrameHere::Frame {
                seq: peeked.seq,
                payload_start: peeked.payload_start,
                payload_end: peeked.payload_end,
                next_pos: peeked.next_pos,
            });
        }
        loop {
            match check_frame(&self.buf, self.pos) {
                FrameCheck::Valid {
                    seq,
                    payload,
                    next_offset,
                } => {
                    let start = payload.as_ptr() as usize - self.buf.as_ptr() as usize;
                    return Ok(FrameHere::Frame {
                        seq,
                        payload_start: start,
                        payload_end: start + payload.len(),
                        next_pos: next_offset,
                    });
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
                FrameCheck::End => return Ok(FrameHere::End),
                FrameCheck::Incomplete { needed } => {
                    return Ok(FrameHere::Bad {
                        reason: format!("frame of {needed} bytes cut short by the end of the file"),
                        torn: true,
                    });
                }
                FrameCheck::Corrupt { reason } => {
                    return Ok(FrameHere::Bad {
                        reason,
                        torn: false,
                    });
                }
            }
        }
    }

    /// The next frame, the end of data, or what is wrong at the current offset.
    pub fn step(&mut self) -> io::Result<CursorStep<'_>> {
        let (seq, payload_start, payload_end, next_pos) = match self.frame_here()? {
            FrameHere::Frame {
                seq,
                payload_start,
                payload_end,
                next_pos,
            } => (seq, payload_start, payload_end, next_pos),
            FrameHere::End => return Ok(CursorStep::End),
            FrameHere::Bad { reason, torn } => {
                return Ok(CursorStep::Bad {
                    offset: self.offset(),
                    reason,
                    torn,
                });
            }
        };
        // A refill keeps the frame's start at the current offset.
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

    /// What [`SegmentCursor::step`] would return next, without moving: the frame's seq, the
    /// end of data, or a bad frame (whose offset is [`SegmentCursor::offset`]).
    pub fn peek(&mut self) -> io::Result<Peek> {
        Ok(match self.frame_here()? {
            FrameHere::Frame {
                seq,
                payload_start,
                payload_end,
                next_pos,
            } => {
                self.peeked = Some(PeekedFrame {
                    pos: self.pos,
                    seq,
                    payload_start,
                    payload_end,
                    next_pos,
                });
                Peek::Frame { seq }
            }
            FrameHere::End => Peek::End,
            FrameHere::Bad { torn, .. } => Peek::Bad { torn },
        })
    }

    /// Moves past the frame at the current offset (after [`SegmentCursor::peek`] saw one).
    pub fn skip(&mut self) -> io::Result<()> {
        if let FrameHere::Frame { next_pos, .. } = self.frame_here()? {
            self.pos = next_pos;
        }
        Ok(())
    }

    /// The file's length now: a reader following a live segment sees it grow.
    pub fn refresh_len(&mut self) -> io::Result<u64> {
        self.file_len = self.file.metadata()?.len();
        Ok(self.file_len)
    }

    /// True when every byte from `offset` to the end of the file is zero.
    pub fn rest_is_zero(&self, offset: u64) -> io::Result<bool> {
        let rest = self.file_len.saturating_sub(offset);
        let mut chunk = vec![0u8; rest.min(READ_CHUNK_BYTES as u64) as usize];
        let mut at = offset;
        while at < self.file_len {
            let len = (self.file_len - at).min(READ_CHUNK_BYTES as u64) as usize;
            self.file.read_exact_at(&mut chunk[..len], at)?;
            if chunk[..len].iter().any(|byte| *byte != 0) {
                return Ok(false);
            }
            at += len as u64;
        }
        Ok(true)
    }

    /// True when a valid frame starts anywhere after `offset` in this segment: then a bad
    /// frame at `offset` is damage, not a torn tail.
    ///
    /// Reads `READ_CHUNK_BYTES` of candidate starts at a time, each read reaching
    /// `FRAME_BYTES_MAX` further so that a frame starting near a chunk's end is whole in it:
    /// the memory held is one chunk whatever the segment's size.
    pub fn valid_frame_after(&self, offset: u64) -> io::Result<Option<u64>> {
        const WINDOW_BYTES: u64 = (READ_CHUNK_BYTES + FRAME_BYTES_MAX) as u64;
        let mut at = offset + FRAME_ALIGN as u64;
        // Allocated once at its exact size (the first read is the longest; a growing
        // `AlignedVec` would round it up to a power of two). Only the CRC is checked here,
        // which needs no alignment.
        let mut buf = vec![0u8; self.file_len.saturating_sub(at).min(WINDOW_BYTES) as usize];
        while at < self.file_len {
            let len = (self.file_len - at).min(WINDOW_BYTES);
            let window = &mut buf[..len as usize];
            self.file.read_exact_at(window, at)?;
            let window = &*window;
            let reaches_the_end = at + len == self.file_len;
            // Past the chunk, a candidate's frame may run beyond the window: the next
            // window starts there.
            let candidates_end = if reaches_the_end {
                window.len()
            } else {
                READ_CHUNK_BYTES
            };
            let mut candidate = 0;
            while candidate < candidates_end
                && candidate + record::FRAME_HEADER_BYTES <= window.len()
            {
                if let FrameCheck::Valid { .. } = check_frame(window, candidate) {
                    return Ok(Some(at + candidate as u64));
                }
                candidate += FRAME_ALIGN;
            }
            if reaches_the_end {
                break;
            }
            at += READ_CHUNK_BYTES as u64;
        }
        Ok(None)
    }

    /// True when the bad frame at `offset` was written whole, so that its bad checksum is
    /// damage (bits that changed after the write) and not a write torn by a crash: its length
    /// is in range, the frame (padding included) lies inside the file, and no sector of it
    /// reads as zeros.
    ///
    /// Why that tells them apart: the writer only ever writes over zeros (past the end of the
    /// file, or over the room the preallocator wrote ahead), so a torn write either leaves
    /// the file ending inside the frame (the size follows the data) or leaves the sectors
    /// that never landed reading as zeros (preallocated room, a size committed before the
    /// data, sectors persisted out of order). A frame whose CRC fails because of a tear had
    /// a sector with non-zero bytes that did not land, so that sector reads as zeros.
    ///
    /// Each sector is clipped to the frame's checked bytes (header and payload): the first
    /// sector it overlaps also holds the end of the frame before it, which an earlier write
    /// may have put there for good while this frame's part of the sector was lost; the last
    /// one holds the padding and maybe the next frame, which say nothing about whether this
    /// frame's bytes landed. The clipped first piece always holds the length field (frames
    /// are 8-aligned, so at least 8 bytes of the frame precede a sector boundary), which is
    /// not zero when the length is in range.
    ///
    /// Known limits, both erring towards "torn" (the record is cut off with a warning, never
    /// replayed): a clipped last piece can be as short as one byte, and a payload can hold
    /// zeros of its own there (padding, high bytes of small integers), so a flipped bit
    /// elsewhere in such a frame reads as torn; and a flip in the length field that puts the
    /// frame's end out of range or past the end of the file is exactly what a frame cut
    /// short looks like.
    pub fn bad_frame_is_whole(&self, offset: u64) -> io::Result<bool> {
        let header_end = offset + record::FRAME_HEADER_BYTES as u64;
        if header_end > self.file_len {
            return Ok(false);
        }
        let mut length = [0u8; 4];
        self.file.read_exact_at(&mut length, offset)?;
        let payload_len = u32::from_le_bytes(length) as usize;
        if !(1..=limits::RECORD_PAYLOAD_BYTES_MAX).contains(&payload_len) {
            return Ok(false);
        }
        let checked_end = header_end + payload_len as u64;
        if checked_end.next_multiple_of(FRAME_ALIGN as u64) > self.file_len {
            return Ok(false);
        }
        let mut frame = vec![0u8; (checked_end - offset) as usize];
        self.file.read_exact_at(&mut frame, offset)?;
        let mut piece_start = offset;
        while piece_start < checked_end {
            let piece_end = ((piece_start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(checked_end);
            let piece = &frame[(piece_start - offset) as usize..(piece_end - offset) as usize];
            if piece.iter().all(|byte| *byte == 0) {
                return Ok(false);
            }
            piece_start = piece_end;
        }
        Ok(true)
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
            index: Default::default(),
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
            Err(problem) if is_last && problem.is_torn_creation() => {
                // A crash while creating the segment: nothing in it was ever acknowledged.
                tracing::warn!(path = %path.display(), "removing a segment with a torn header");
                crate::durable::remove_file(path).map_err(io_err(path))?;
                crate::durable::sync_dir(dir).map_err(io_err(dir))?;
                report.truncated = Some((path.clone(), 0, 0));
                break;
            }
            Err(problem) => return Err(damage(0, problem.to_string())),
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
                    report.tail.index.note(seq, *name_seq, offset);
                    report.records += 1;
                    seq_next += 1;
                }
                CursorStep::End => break,
                CursorStep::Bad {
                    offset,
                    reason,
                    torn,
                } => {
                    // Zeros to the end of the file are room the preallocator wrote ahead of
                    // the writer: the clean end of the data, not damage and not a torn tail.
                    if cursor.rest_is_zero(offset).map_err(io_err(path))? {
                        break;
                    }
                    if !is_last {
                        return Err(damage(offset, reason));
                    }
                    if let Some(valid) = cursor.valid_frame_after(offset).map_err(io_err(path))? {
                        return Err(damage(
                            offset,
                            format!("{reason}; a valid frame follows at byte {valid}"),
                        ));
                    }
                    // Nothing valid follows, but a frame that was written whole is not a
                    // torn write: cutting it off would drop an acknowledged record silently.
                    if cursor.bad_frame_is_whole(offset).map_err(io_err(path))? {
                        return Err(damage(
                            offset,
                            format!(
                                "{reason}; the frame is whole (no sector of it reads as zeros), \
                                 so not a write torn by a crash"
                            ),
                        ));
                    }
                    let file_len = std::fs::metadata(path).map_err(io_err(path))?.len();
                    tracing::warn!(path = %path.display(), offset, dropped_bytes = file_len - offset,
                        torn, %reason, "truncating torn journal tail");
                    crate::durable::truncate(path, offset).map_err(io_err(path))?;
                    report.truncated = Some((path.clone(), offset, file_len - offset));
                    break;
                }
            }
        }
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

const _: () = assert!(READ_CHUNK_BYTES >= limits::RECORD_PAYLOAD_BYTES_MAX * 4);

/// The torn-write rule of [`SegmentCursor::bad_frame_is_whole`], restated for the tests over
/// a whole file's bytes and in the simulated disk's sectors (sector by sector, each clipped
/// to the frame), so that a test's expectation does not merely call the code under test: a
/// bad frame at `start` with no valid frame after it is a torn tail when its length is out
/// of range, it does not fit in the file with its padding, or a sector it overlaps holds
/// only zeros within its header and payload.
#[cfg(test)]
pub(crate) fn looks_torn(bytes: &[u8], start: usize) -> bool {
    use crate::journal::sim_disk::SECTOR;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::FsyncPolicy;
    use crate::journal::reader::{JournalReader, ReadLimit};
    use crate::journal::record::{Event, FrameBatch, OrderAccepted, Record, SkuChanged};
    use crate::journal::writer::{Journal, segment_file_name};
    use crate::order::Payment;
    use std::fs::OpenOptions;

    fn order(n: usize, address_bytes: usize) -> Record {
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

    fn new_tail() -> JournalTail {
        JournalTail {
            segment: None,
            next_seq: 1,
            index: Default::default(),
        }
    }

    /// Appends `batches` through a journal (policy `none`, so no fsync), starting at `tail`.
    fn write_batches(dir: &Path, tail: JournalTail, batches: &[Vec<Record>], segment_max: u64) {
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
    fn write_orders(
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

    fn to_owned_record(record: &ArchivedRecord) -> Record {
        rkyv::deserialize::<Record, rkyv::rancor::Error>(record).unwrap()
    }

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

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
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

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(bytes, file_len(path)).unwrap();
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

    fn next_rand(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// A journal of several small segments; returns the records and the segments.
    fn multi_segment_journal(dir: &Path) -> (Vec<Record>, Vec<(u64, PathBuf)>) {
        let written = write_orders(dir, 600, 300, limits::SEGMENT_BYTES_MIN);
        let segments = list_segments(dir).unwrap();
        assert!(segments.len() >= 3, "{} segments", segments.len());
        (written, segments)
    }

    /// The torn-write sweep: the journal cut at every byte offset of its last
    /// `TORN_FRAMES` records, and at each cut one random bit flipped in what is left of
    /// them. Never a panic, never a corrupt record replayed: a cut is truncated back to the
    /// last whole frame; a flip is refused as damage where a valid frame follows it, and
    /// where none does it is refused too when the flipped frame is whole in the file (the
    /// last whole frame before the cut), but cut off as a torn tail when the frame is cut
    /// short itself, or the flip put its length out of range or past the cut.
    #[test]
    fn a_torn_tail_is_truncated_at_every_cut_of_the_last_records_and_flips_are_never_replayed() {
        const RECORDS: usize = 12;
        const TORN_FRAMES: usize = 4;
        let dir = tempfile::tempdir().unwrap();
        let written = write_orders(dir.path(), RECORDS, 40, limits::SEGMENT_BYTES_DEFAULT);
        let (_, segment) = list_segments(dir.path()).unwrap().pop().unwrap();
        let frames = frame_offsets(&segment);
        assert_eq!(frames.len(), RECORDS);
        assert_eq!(frames.last().unwrap().1, RECORDS as u64);
        let full_len = file_len(&segment);
        let bytes = std::fs::read(&segment).unwrap();
        // (start, end of the checked bytes, end with padding) of every frame.
        let spans: Vec<(u64, u64, u64)> = frames
            .iter()
            .enumerate()
            .map(|(index, &(offset, _))| {
                let end = frames.get(index + 1).map_or(full_len, |next| next.0);
                let FrameCheck::Valid { payload, .. } = check_frame(&bytes, offset as usize) else {
                    panic!("frame {index}")
                };
                let checked = offset + (record::FRAME_HEADER_BYTES + payload.len()) as u64;
                (offset, checked, end)
            })
            .collect();
        assert_eq!(spans.last().unwrap().2 % FRAME_ALIGN as u64, 0);
        let sweep_start = spans[RECORDS - TORN_FRAMES].0;
        let mut rng = 0x5EED_F00D_u64;
        let (mut refused, mut whole_refused, mut cut_off) = (0, 0, 0);

        for cut_len in sweep_start..=full_len {
            // Whole frames before the cut survive; recovery ends the file after the last.
            let survivors = spans.iter().filter(|(_, _, end)| *end <= cut_len).count();
            let boundary = if survivors == 0 {
                SEGMENT_HEADER_BYTES as u64
            } else {
                spans[survivors - 1].2
            };
            let cut_copy = |dir: &Path| {
                let copy = copy_dir(dir);
                let path = in_copy(&copy, &segment);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(cut_len)
                    .unwrap();
                (copy, path)
            };

            let (copy, path) = cut_copy(dir.path());
            let (report, records) = recover_ok(copy.path());
            if cut_len == boundary {
                assert!(report.truncated.is_none(), "cut {cut_len}: {report:?}");
            } else {
                assert_eq!(
                    report.truncated,
                    Some((path.clone(), boundary, cut_len - boundary)),
                    "cut at {cut_len}"
                );
            }
            assert_eq!(
                file_len(&path),
                boundary,
                "cut {cut_len}: ends on a frame boundary"
            );
            assert_eq!(records, written[..survivors], "cut {cut_len}");
            assert_eq!(report.records, survivors as u64);
            assert_eq!(report.tail.next_seq, survivors as u64 + 1);
            assert_eq!(report.tail.segment, Some((path.clone(), 1, boundary)));

            // Recovery is idempotent, and the writer continues cleanly where it left off.
            write_batches(
                copy.path(),
                report.tail,
                &[vec![order(100, 0)]],
                limits::SEGMENT_BYTES_DEFAULT,
            );
            let (report, records) = recover_ok(copy.path());
            assert!(report.truncated.is_none());
            assert_eq!(records.len(), survivors + 1);
            assert_eq!(records[..survivors], written[..survivors]);
            assert_eq!(records[survivors], order(100, 0));

            // One flipped bit in what is left of the last records.
            if cut_len == sweep_start {
                continue;
            }
            let byte = sweep_start + next_rand(&mut rng) % (cut_len - sweep_start);
            let bit = (next_rand(&mut rng) % 8) as u8;
            let (copy, path) = cut_copy(dir.path());
            flip_bit(&path, byte, bit);
            let hit = spans
                .iter()
                .position(|(start, _, end)| (*start..*end).contains(&byte))
                .unwrap();
            let (start, checked, end) = spans[hit];
            let label = format!("cut {cut_len}, flip at {byte} bit {bit} (frame {hit})");
            if byte >= checked {
                // Padding is not checked, and no record reads it.
                let (_, records) = recover_ok(copy.path());
                assert_eq!(records, written[..survivors], "{label}");
            } else if end <= cut_len && hit + 1 < survivors {
                // A whole frame follows the flipped one: damage, refused where it is.
                assert_damage(copy.path(), &path, start);
                refused += 1;
            } else if looks_torn(&std::fs::read(&path).unwrap(), start as usize) {
                // The flipped frame is cut short by the cut (or the flip in its length
                // field reads like it): a torn tail.
                let (report, records) = recover_ok(copy.path());
                assert_eq!(
                    report.truncated,
                    Some((path.clone(), start, cut_len - start)),
                    "{label}"
                );
                assert_eq!(records, written[..hit], "{label}");
                cut_off += 1;
            } else {
                // The last whole frame, every sector of it there: a flip, not a tear.
                let message = assert_damage(copy.path(), &path, start);
                assert!(message.contains("the frame is whole"), "{label}: {message}");
                whole_refused += 1;
            }
        }
        assert!(
            refused > 100 && whole_refused > 20 && cut_off > 100,
            "{refused} refused, {whole_refused} refused in the last whole frame, {cut_off} cut off"
        );
    }

    #[test]
    fn zeros_after_the_last_frame_are_preallocated_room_kept_and_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let (written, segments) = multi_segment_journal(dir.path());
        let (first_seq, last) = segments.last().unwrap().clone();
        let good_len = file_len(&last);
        for zeros in [1usize, 7, 8, 16, 64, 4096, 1 << 20] {
            let copy = copy_dir(dir.path());
            let path = in_copy(&copy, &last);
            append_bytes(&path, &vec![0u8; zeros]);
            let (report, records) = recover_ok(copy.path());
            assert!(
                report.truncated.is_none(),
                "{zeros} zeros are not a torn tail"
            );
            assert_eq!(file_len(&path), good_len + zeros as u64, "the room is kept");
            assert_eq!(records, written);
            assert_eq!(
                report.tail.segment,
                Some((path.clone(), first_seq, good_len))
            );
            // The writer continues at the logical end, over the zeros.
            write_batches(
                copy.path(),
                report.tail,
                &[vec![order(300, 0), order(300, 1)]],
                limits::SEGMENT_BYTES_DEFAULT,
            );
            let (_, records) = recover_ok(copy.path());
            assert_eq!(records.len(), written.len() + 2);
            assert_eq!(records[written.len()..], [order(300, 0), order(300, 1)]);
        }
    }

    #[test]
    fn garbage_after_the_last_frame_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (written, segments) = multi_segment_journal(dir.path());
        let last = &segments.last().unwrap().1;
        let good_len = file_len(last);

        let mut rng = 0x1234_5678_9ABC_DEF1u64;
        let mut garbages: Vec<Vec<u8>> = [1usize, 3, 8, 15, 16, 17, 24, 100, 4096, 70_000]
            .iter()
            .map(|&len| (0..len).map(|_| next_rand(&mut rng) as u8).collect())
            .collect();
        // Zeros followed by anything else: a write landed in preallocated room but tore.
        let mut zeros_then_garbage = vec![0u8; 4096];
        zeros_then_garbage.extend_from_slice(&[0xA5; 5]);
        garbages.push(zeros_then_garbage);
        // A plausible frame header whose payload never made it to disk.
        let mut header_only = vec![0u8; 16];
        header_only[..4].copy_from_slice(&200u32.to_le_bytes());
        garbages.push(header_only);

        for garbage in &garbages {
            let copy = copy_dir(dir.path());
            let path = in_copy(&copy, last);
            append_bytes(&path, garbage);
            let (report, records) = recover_ok(copy.path());
            assert_eq!(
                report.truncated,
                Some((path.clone(), good_len, garbage.len() as u64)),
                "{} bytes of garbage",
                garbage.len()
            );
            assert_eq!(file_len(&path), good_len);
            assert_eq!(records, written);
            assert_eq!(report.tail.next_seq, written.len() as u64 + 1);
            assert_eq!(
                report.tail.segment,
                Some((path.clone(), segments.last().unwrap().0, good_len))
            );
        }
    }

    #[test]
    fn a_flipped_bit_followed_by_valid_frames_is_refused_with_path_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        write_orders(dir.path(), 8, 20, limits::SEGMENT_BYTES_DEFAULT);
        let (_, segment) = list_segments(dir.path()).unwrap().pop().unwrap();
        let frames = frame_offsets(&segment);
        let len = file_len(&segment);
        let mut checked = 0;
        for (index, &(offset, _)) in frames.iter().enumerate().take(frames.len() - 1) {
            let frame_end = frames[index + 1].0;
            // Every byte of the frame (a different bit each time) for the first two frames;
            // header bytes and a spread of payload bytes for the others.
            let bytes: Vec<u64> = if index < 2 {
                (offset..frame_end).collect()
            } else {
                (offset..offset + 16)
                    .chain((offset + 16..frame_end).step_by(7))
                    .collect()
            };
            for byte in bytes {
                let bit = (byte % 8) as u8;
                flip_bit(&segment, byte, bit);
                let message = assert_damage(dir.path(), &segment, offset);
                assert!(
                    message.contains("a valid frame follows"),
                    "byte {byte}: {message}"
                );
                assert_eq!(
                    file_len(&segment),
                    len,
                    "a refused recovery changes nothing"
                );
                flip_bit(&segment, byte, bit);
                checked += 1;
            }
        }
        assert!(checked > 300);
        // Restored, it recovers whole.
        let (report, records) = recover_ok(dir.path());
        assert!(report.truncated.is_none());
        assert_eq!(records.len(), 8);

        // The same flip in the very last frame, which ends the file: nothing valid follows,
        // but the frame is whole (a tear would have cut it short or left a sector of zeros),
        // so it is refused all the same.
        let (last_offset, _) = *frames.last().unwrap();
        flip_bit(&segment, last_offset + 20, 3);
        let message = assert_damage(dir.path(), &segment, last_offset);
        assert!(message.contains("the frame is whole"), "{message}");
        assert_eq!(
            file_len(&segment),
            len,
            "a refused recovery changes nothing"
        );
    }

    /// Overwrites `[from, to)` of a file with zeros: sectors of a write that never landed.
    fn zero_range(path: &Path, from: u64, to: u64) {
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&vec![0u8; (to - from) as usize], from)
            .unwrap();
    }

    #[test]
    fn a_bad_last_frame_is_a_torn_tail_only_when_cut_short_or_a_sector_of_it_is_zeros() {
        use crate::journal::sim_disk::SECTOR;
        let dir = tempfile::tempdir().unwrap();
        // One group of four frames of about 2 KB, written in one write as the writer does.
        let written: Vec<Record> = (0..4).map(|n| order(n, 1900)).collect();
        write_batches(
            dir.path(),
            new_tail(),
            std::slice::from_ref(&written),
            limits::SEGMENT_BYTES_DEFAULT,
        );
        let (_, segment) = list_segments(dir.path()).unwrap().pop().unwrap();
        let len = file_len(&segment);
        let bytes = std::fs::read(&segment).unwrap();
        let frames: Vec<(u64, u64)> = frame_offsets(&segment)
            .iter()
            .map(|&(offset, _)| {
                let FrameCheck::Valid { payload, .. } = check_frame(&bytes, offset as usize) else {
                    unreachable!("frame_offsets checked it")
                };
                let checked_end = offset + (record::FRAME_HEADER_BYTES + payload.len()) as u64;
                (offset, checked_end)
            })
            .collect();
        assert_eq!(frames.len(), 4);
        let (before, _) = frames[2];
        let (last, last_checked) = frames[3];
        assert_eq!(last_checked.next_multiple_of(FRAME_ALIGN as u64), len);
        // The sector boundaries inside the last frame's header and payload.
        let boundaries: Vec<u64> = (last / SECTOR + 1..=(last_checked - 1) / SECTOR)
            .map(|sector| sector * SECTOR)
            .collect();
        assert!(boundaries.len() >= 3, "{boundaries:?}");
        let fresh_copy = || {
            let copy = copy_dir(dir.path());
            let path = in_copy(&copy, &segment);
            (copy, path)
        };
        let set_len = |path: &Path, new_len: u64| {
            OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(new_len)
                .unwrap();
        };
        let assert_torn = |copy: &tempfile::TempDir, path: &Path, what: &str| {
            let dropped = file_len(path) - last;
            let (report, records) = recover_ok(copy.path());
            assert_eq!(
                report.truncated,
                Some((path.to_owned(), last, dropped)),
                "{what}"
            );
            assert_eq!(records, written[..3], "{what}");
            assert_eq!(file_len(path), last, "{what}");
        };
        let assert_whole = |copy: &tempfile::TempDir, path: &Path, at: u64, what: &str| {
            let size = file_len(path);
            let message = assert_damage(copy.path(), path, at);
            assert!(message.contains("the frame is whole"), "{what}: {message}");
            assert_eq!(
                file_len(path),
                size,
                "{what}: a refused recovery changes nothing"
            );
        };

        // A flipped bit in the last frame, which ends the file: whole, so damage.
        let (copy, path) = fresh_copy();
        flip_bit(&path, last + 700, 2);
        assert_whole(&copy, &path, last, "flip, end of file");
        // The same followed by the preallocator's zeros.
        append_bytes(&path, &[0u8; 64 * 1024]);
        assert_whole(&copy, &path, last, "flip, then room");

        // A write torn in preallocated room: from a sector boundary on, nothing landed.
        let (copy, path) = fresh_copy();
        append_bytes(&path, &[0u8; 64 * 1024]);
        zero_range(&path, boundaries[1], len);
        assert_torn(&copy, &path, "torn in room");
        // Sectors landed out of order: only one in the middle is missing.
        let (copy, path) = fresh_copy();
        zero_range(&path, boundaries[0], boundaries[1]);
        assert_torn(&copy, &path, "a middle sector lost");
        // Only the frame's last sector is missing: its piece of it is shorter than a sector
        // (what follows in that sector is padding, and the next write), so the rule looks
        // at the frame's own bytes of each sector.
        let (copy, path) = fresh_copy();
        zero_range(&path, *boundaries.last().unwrap(), last_checked);
        assert_torn(&copy, &path, "the last, partial sector lost");
        // A sector's worth of zeros that is not on a sector boundary is no lost sector.
        let (copy, path) = fresh_copy();
        zero_range(&path, boundaries[1] - 256, boundaries[1] + 256);
        assert_whole(&copy, &path, last, "misaligned zeros");

        // The group torn at a sector boundary, the file ending there: the last frame is cut
        // short (torn), the one before it is whole.
        let (copy, path) = fresh_copy();
        set_len(&path, boundaries[1]);
        assert_torn(&copy, &path, "group cut at a sector");
        // The whole frame before the cut one with a flipped bit: damage, not a torn tail.
        let (copy, path) = fresh_copy();
        set_len(&path, boundaries[1]);
        flip_bit(&path, before + 300, 5);
        assert_whole(&copy, &path, before, "flip before the cut frame");
        // The cut followed by preallocated zeros: the rest of the torn frame reads as zeros.
        let (copy, path) = fresh_copy();
        set_len(&path, boundaries[1]);
        set_len(&path, len + 4096);
        assert_torn(&copy, &path, "group cut at a sector, then room");

        // A flip in the length field that makes the frame reach past the end of the file
        // reads exactly like a frame cut short: it is cut off (never replayed). The scan
        // cannot tell these two apart.
        let payload_len =
            u32::from_le_bytes(bytes[last as usize..last as usize + 4].try_into().unwrap());
        let longer_bit = (0..16u64)
            .find(|bit| {
                let flipped = payload_len ^ (1 << bit);
                flipped > payload_len
                    && flipped as usize <= limits::RECORD_PAYLOAD_BYTES_MAX
                    && last + 16 + u64::from(flipped) > len
            })
            .expect("a bit that lengthens the frame");
        let (copy, path) = fresh_copy();
        flip_bit(&path, last + longer_bit / 8, (longer_bit % 8) as u8);
        assert_torn(&copy, &path, "length flipped past the end of the file");
        // Out of range: the same.
        let (copy, path) = fresh_copy();
        flip_bit(&path, last + 3, 7);
        assert_torn(&copy, &path, "length flipped out of range");
        // A flip that shortens it leaves a frame that lies in the file, every sector of it
        // there: damage.
        let top_bit = u64::from(31 - payload_len.leading_zeros());
        let shorter_end = last + 16 + u64::from(payload_len & !(1 << top_bit));
        let shorter_end = shorter_end as usize;
        assert_eq!(
            &bytes[shorter_end - 8..shorter_end],
            b"yyyyyyyy",
            "ends in the address"
        );
        let (copy, path) = fresh_copy();
        flip_bit(&path, last + top_bit / 8, (top_bit % 8) as u8);
        assert_whole(&copy, &path, last, "length flipped shorter");
    }

    #[test]
    fn a_valid_frame_after_a_bad_one_is_found_wherever_it_falls_against_the_read_chunks() {
        let mut frame = FrameBatch::default();
        frame.push(&order(7, 3000)).unwrap();
        let mut frame = frame.as_bytes().to_vec();
        record::seal_frames(&mut frame, 2);
        let frame_len = frame.len() as u64;
        let max = FRAME_BYTES_MAX as u64;
        // A bad frame at the first offset (0xEE: a length out of range), non-zero bytes
        // that hold no frame, then one valid frame. Candidates are read a chunk at a time
        // from the byte after the bad frame's first 8.
        let bad_at = SEGMENT_HEADER_BYTES as u64;
        let first_chunk_end = bad_at + FRAME_ALIGN as u64 + READ_CHUNK_BYTES as u64;
        let second_chunk_end = first_chunk_end + READ_CHUNK_BYTES as u64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(1));
        let mut cases = 0;
        for frame_at in [
            bad_at + 8,
            first_chunk_end - max - 8,
            first_chunk_end - max,
            first_chunk_end - frame_len - 8,
            first_chunk_end - frame_len,
            first_chunk_end - 8,
            first_chunk_end,
            first_chunk_end + 8,
            second_chunk_end - 8,
            second_chunk_end,
        ] {
            // The frame ends the file, a little follows it, or more than a frame does (so
            // that a read stops before the end of the file).
            for trailing in [0, 24, 3 * max] {
                let mut bytes = record::segment_header(1).to_vec();
                bytes.resize(frame_at as usize, 0xEE);
                bytes.extend_from_slice(&frame);
                bytes.resize(bytes.len() + trailing as usize, 0xEE);
                std::fs::write(&path, &bytes).unwrap();
                let label = format!("frame at {frame_at}, {trailing} bytes after it");
                let cursor = SegmentCursor::open(&path).unwrap().unwrap();
                assert_eq!(
                    cursor.valid_frame_after(bad_at).unwrap(),
                    Some(frame_at),
                    "{label}"
                );
                let message = assert_damage(dir.path(), &path, bad_at);
                assert!(
                    message.contains(&format!("a valid frame follows at byte {frame_at}")),
                    "{label}: {message}"
                );
                cases += 1;
            }
        }
        assert_eq!(cases, 30);

        // No valid frame over several chunks: none found, and the tail is torn.
        let mut bytes = record::segment_header(1).to_vec();
        bytes.resize(second_chunk_end as usize + 1000, 0xEE);
        std::fs::write(&path, &bytes).unwrap();
        let cursor = SegmentCursor::open(&path).unwrap().unwrap();
        assert_eq!(cursor.valid_frame_after(bad_at).unwrap(), None);
        let (report, records) = recover_ok(dir.path());
        assert!(records.is_empty());
        assert_eq!(
            report.truncated,
            Some((path.clone(), bad_at, bytes.len() as u64 - bad_at))
        );
    }

    #[test]
    fn damage_in_a_non_last_segment_is_refused_even_in_its_last_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (_, segments) = multi_segment_journal(dir.path());
        let first = &segments[0].1;
        let second = &segments[1].1;
        let first_frames = frame_offsets(first);
        let (last_offset, _) = *first_frames.last().unwrap();

        // A flip in the last frame of the first segment, in its header and in its payload.
        for byte in [
            last_offset,
            last_offset + 5,
            last_offset + 9,
            last_offset + 40,
        ] {
            let copy = copy_dir(dir.path());
            let path = in_copy(&copy, first);
            flip_bit(&path, byte, 1);
            assert_damage(copy.path(), &path, last_offset);
        }
        // A flip in the first frame of a middle segment.
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, second);
        flip_bit(&path, SEGMENT_HEADER_BYTES as u64 + 30, 0);
        assert_damage(copy.path(), &path, SEGMENT_HEADER_BYTES as u64);

        // A non-last segment cut short, or with bytes after its last frame, is damage too.
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, first);
        let len = file_len(&path);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert_damage(copy.path(), &path, last_offset);
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, first);
        append_bytes(&path, &[0xA5u8; 32]);
        assert_damage(copy.path(), &path, len);
        assert_eq!(file_len(&path), len + 32);

        // Zeros after the last frame are the preallocator's room, in any segment: clean.
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, first);
        append_bytes(&path, &[0u8; 4096]);
        let (report, _) = recover_ok(copy.path());
        assert!(report.truncated.is_none());
        assert_eq!(file_len(&path), len + 4096, "preallocated room is kept");
    }

    #[test]
    fn a_gap_in_seqs_between_segments_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (written, segments) = multi_segment_journal(dir.path());

        let copy = copy_dir(dir.path());
        std::fs::remove_file(in_copy(&copy, &segments[1].1)).unwrap();
        let message = assert_damage(copy.path(), &in_copy(&copy, &segments[2].1), 0);
        assert!(message.contains("gap"), "{message}");

        // The newest segment gone too: a gap then, not a silent end.
        if segments.len() >= 4 {
            let copy = copy_dir(dir.path());
            let doomed = &segments[segments.len() - 2].1;
            std::fs::remove_file(in_copy(&copy, doomed)).unwrap();
            let last = in_copy(&copy, &segments.last().unwrap().1);
            assert_damage(copy.path(), &last, 0);
        }

        // A segment whose name disagrees with its header is refused as well.
        let copy = copy_dir(dir.path());
        let (first_seq, path) = &segments[1];
        let renamed = copy.path().join(segment_file_name(first_seq + 1));
        std::fs::rename(in_copy(&copy, path), &renamed).unwrap();
        let message = assert_damage(copy.path(), &renamed, 0);
        assert!(message.contains("header says first seq"), "{message}");

        // A whole, valid frame whose seq skips one is refused where it is, even at the
        // very end of the last segment (it is not a torn write).
        let copy = copy_dir(dir.path());
        let (_, last) = segments.last().unwrap();
        let path = in_copy(&copy, last);
        let end = file_len(&path);
        let mut batch = FrameBatch::default();
        batch.push(&order(0, 0)).unwrap();
        let mut frame = batch.as_bytes().to_vec();
        record::seal_frames(&mut frame, written.len() as u64 + 2);
        append_bytes(&path, &frame);
        let message = assert_damage(copy.path(), &path, end);
        assert!(
            message.contains(&format!("expected seq {}", written.len() + 1)),
            "{message}"
        );
    }

    #[test]
    fn a_foreign_file_with_bad_magic_is_refused_and_other_names_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_orders(dir.path(), 20, 0, limits::SEGMENT_BYTES_DEFAULT);
        let (_, segment) = list_segments(dir.path()).unwrap().pop().unwrap();

        // Files that are not named like segments are none of recovery's business.
        std::fs::write(dir.path().join("README"), b"not a journal").unwrap();
        std::fs::write(dir.path().join("1.seg"), b"too short a name").unwrap();
        std::fs::write(
            dir.path().join(format!("{}.bak", segment_file_name(1))),
            b"x",
        )
        .unwrap();
        let (_, records) = recover_ok(dir.path());
        assert_eq!(records, written);

        // The segment's own magic damaged.
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, &segment);
        flip_bit(&path, 2, 4);
        let message = assert_damage(copy.path(), &path, 0);
        assert!(message.contains("bad magic"), "{message}");

        // A foreign file named like the next segment, with a full header's worth of bytes.
        let copy = copy_dir(dir.path());
        let foreign = copy.path().join(segment_file_name(21));
        std::fs::write(&foreign, b"definitely not a journal segment").unwrap();
        assert_damage(copy.path(), &foreign, 0);
        assert!(foreign.exists(), "a foreign file is never deleted");
    }

    #[test]
    fn a_last_segment_with_a_torn_header_is_removed_and_recovery_continues_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut written, segments) = multi_segment_journal(dir.path());
        let (last_first, last_path) = segments.last().unwrap().clone();
        let last_len = file_len(&last_path);
        let next_seq = written.len() as u64 + 1;

        for torn_len in [0usize, 5, 15] {
            let copy = copy_dir(dir.path());
            let torn = copy.path().join(segment_file_name(next_seq));
            std::fs::write(&torn, &record::segment_header(next_seq)[..torn_len]).unwrap();
            let (report, records) = recover_ok(copy.path());
            assert!(!torn.exists(), "torn segment removed");
            assert_eq!(report.truncated, Some((torn.clone(), 0, 0)));
            assert_eq!(records, written);
            assert_eq!(report.tail.next_seq, next_seq);
            let tail_path = in_copy(&copy, &last_path);
            assert_eq!(report.tail.segment, Some((tail_path, last_first, last_len)));
        }

        // A power cut after the creation reached the disk but before the header's bytes
        // did: a file of zeros (16 bytes, or preallocated larger) is a torn creation too.
        for zeroed_len in [16usize, 4096] {
            let copy = copy_dir(dir.path());
            let zeroed = copy.path().join(segment_file_name(next_seq));
            std::fs::write(&zeroed, vec![0u8; zeroed_len]).unwrap();
            let (report, records) = recover_ok(copy.path());
            assert!(!zeroed.exists(), "zeroed segment removed");
            assert_eq!(report.truncated, Some((zeroed.clone(), 0, 0)));
            assert_eq!(records, written);
            assert_eq!(report.tail.next_seq, next_seq);
        }
        // A zeroed header with something after it is not a creation that never synced.
        {
            let copy = copy_dir(dir.path());
            let zeroed = copy.path().join(segment_file_name(next_seq));
            let mut bytes = vec![0u8; 4096];
            bytes[1000] = 1;
            std::fs::write(&zeroed, bytes).unwrap();
            let message = assert_damage(copy.path(), &zeroed, 0);
            assert!(message.contains("bad magic"), "{message}");
        }

        // The writer continues in the previous segment, and a torn header is harmless to
        // the seq that follows.
        let torn = dir.path().join(segment_file_name(next_seq));
        std::fs::write(&torn, &record::segment_header(next_seq)[..5]).unwrap();
        let (report, _) = recover_ok(dir.path());
        let more: Vec<Record> = (0..300).map(|n| order(10_000 + n, 300)).collect();
        write_batches(
            dir.path(),
            report.tail,
            &more.chunks(4).map(<[Record]>::to_vec).collect::<Vec<_>>(),
            limits::SEGMENT_BYTES_MIN,
        );
        written.extend(more);
        let (report, records) = recover_ok(dir.path());
        assert!(report.truncated.is_none());
        assert_eq!(records, written);

        // A last segment holding only its header (a crash right after rotation) is an
        // empty segment, not damage: the writer continues in it.
        let next_seq = written.len() as u64 + 1;
        let empty_segment = dir.path().join(segment_file_name(next_seq));
        std::fs::write(&empty_segment, record::segment_header(next_seq)).unwrap();
        let (report, records) = recover_ok(dir.path());
        assert_eq!(records, written);
        assert_eq!(
            report.tail.segment,
            Some((empty_segment.clone(), next_seq, SEGMENT_HEADER_BYTES as u64))
        );
        write_batches(
            dir.path(),
            report.tail,
            &[vec![order(20_000, 0)]],
            limits::SEGMENT_BYTES_MIN,
        );
        written.push(order(20_000, 0));
        assert_eq!(frame_offsets(&empty_segment).len(), 1);
        assert_eq!(recover_ok(dir.path()).1, written);

        // A torn header anywhere but last is damage.
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, &segments[0].1);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(5)
            .unwrap();
        let message = assert_damage(copy.path(), &path, 0);
        assert!(message.contains("torn"), "{message}");

        // The only segment torn: a new journal.
        let empty = tempfile::tempdir().unwrap();
        let torn = empty.path().join(segment_file_name(1));
        std::fs::write(&torn, &record::segment_header(1)[..5]).unwrap();
        let (report, records) = recover_ok(empty.path());
        assert!(records.is_empty());
        assert!(!torn.exists());
        assert!(report.tail.segment.is_none());
        assert_eq!(report.tail.next_seq, 1);
    }

    #[test]
    fn frames_straddling_the_read_chunk_recover_and_tear_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(
            dir.path(),
            FsyncPolicy::None,
            limits::SEGMENT_BYTES_DEFAULT,
            new_tail(),
        )
        .unwrap();
        let chunk_end = (SEGMENT_HEADER_BYTES + READ_CHUNK_BYTES) as u64;
        let mut written = Vec::new();
        let mut segment_len = SEGMENT_HEADER_BYTES as u64;
        // One record per batch until a frame crosses the end of the cursor's first read.
        while segment_len <= chunk_end {
            let record = order(written.len(), 333);
            let mut batch = FrameBatch::default();
            batch.push(&record).unwrap();
            segment_len += batch.as_bytes().len() as u64;
            let range = journal.append(&batch).unwrap();
            journal.commit(range.last).unwrap();
            written.push(record);
        }
        journal.close().unwrap();
        drop(journal);
        let (_, segment) = list_segments(dir.path()).unwrap().pop().unwrap();
        assert_eq!(file_len(&segment), segment_len);
        let frames = frame_offsets(&segment);
        assert_eq!(frames.len(), written.len());
        let (straddler, _) = *frames.last().unwrap();
        assert!(straddler < chunk_end && chunk_end < segment_len);
        assert_eq!(recover_ok(dir.path()).1, written);

        // The straddling frame torn at either side of the chunk end.
        for cut_len in [
            straddler + 7,
            chunk_end - 1,
            chunk_end,
            chunk_end + 1,
            segment_len - 1,
        ] {
            let copy = copy_dir(dir.path());
            let path = in_copy(&copy, &segment);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut_len)
                .unwrap();
            let (report, records) = recover_ok(copy.path());
            assert_eq!(
                report.truncated,
                Some((path.clone(), straddler, cut_len - straddler))
            );
            assert_eq!(file_len(&path), straddler);
            assert_eq!(records, written[..written.len() - 1]);
        }

        // Damage in the frame before it, found with the valid frame beyond the chunk.
        let (before, _) = frames[frames.len() - 2];
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, &segment);
        flip_bit(&path, before + 100, 6);
        let message = assert_damage(copy.path(), &path, before);
        assert!(
            message.contains(&format!("a valid frame follows at byte {straddler}")),
            "{message}"
        );
        // And in the straddling frame itself, past the chunk end: the last frame, but whole
        // in the file, so damage too (a tear would have cut it short, as above).
        let copy = copy_dir(dir.path());
        let path = in_copy(&copy, &segment);
        flip_bit(&path, segment_len - 2, 0);
        let message = assert_damage(copy.path(), &path, straddler);
        assert!(message.contains("the frame is whole"), "{message}");
        // A reader crosses the chunk end too.
        let got = read_seqs(dir.path(), 0, written.len() as u64, usize::MAX);
        assert_eq!(got.len(), written.len());
    }

    /// Records with `after < seq <= max`, at most `limit`, through the consumers' reader.
    fn read_seqs(dir: &Path, after: u64, max: u64, limit: usize) -> Vec<(u64, Record)> {
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

    #[test]
    fn a_reader_returns_the_window_across_segment_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let (written, segments) = multi_segment_journal(dir.path());
        let total = written.len() as u64;

        let mut points = vec![0, 1, 2, total - 1, total, total + 3];
        for (first, _) in &segments {
            points.extend([first.saturating_sub(2), first - 1, *first, first + 1]);
        }
        points.retain(|&p| p <= total + 3);
        points.sort_unstable();
        points.dedup();
        let mut cases = 0;
        for &after in &points {
            for &max in &points {
                for limit in [0, 1, 2, 7, 64, usize::MAX] {
                    let got = read_seqs(dir.path(), after, max, limit);
                    let expected: Vec<u64> = (after + 1..=max.min(total)).take(limit).collect();
                    let got_seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
                    assert_eq!(
                        got_seqs, expected,
                        "after {after}, max {max}, limit {limit}"
                    );
                    for (seq, record) in &got {
                        assert_eq!(record, &written[*seq as usize - 1]);
                    }
                    cases += 1;
                }
            }
        }
        assert!(cases > 1000);

        // Paging with the last seq walks the whole journal exactly once.
        let mut after = 0;
        let mut pages = 0;
        loop {
            let page = read_seqs(dir.path(), after, total, 37);
            if page.is_empty() {
                break;
            }
            assert_eq!(page[0].0, after + 1);
            after = page.last().unwrap().0;
            pages += 1;
        }
        assert_eq!(after, total);
        assert_eq!(pages, total.div_ceil(37));

        // A `from` beyond any seq (a client may send any u64) is an empty page.
        assert!(read_seqs(dir.path(), u64::MAX, total, 10).is_empty());
        assert!(read_seqs(dir.path(), u64::MAX - 1, u64::MAX, 10).is_empty());
    }

    #[test]
    fn a_reader_never_reads_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (written, segments) = multi_segment_journal(dir.path());
        let total = written.len() as u64;
        let last = &segments.last().unwrap().1;

        // A frame being written past the watermark: a header whose payload is not there yet,
        // then random bytes. Reads up to the watermark neither see nor trip over it.
        let mut half = vec![0u8; 16];
        half[..4].copy_from_slice(&300u32.to_le_bytes());
        half[8..].copy_from_slice(&(total + 1).to_le_bytes());
        append_bytes(last, &half);
        let seqs: Vec<u64> = read_seqs(dir.path(), 0, total, usize::MAX)
            .iter()
            .map(|(seq, _)| *seq)
            .collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
        assert_eq!(read_seqs(dir.path(), total - 2, total, 100).len(), 2);

        // Valid frames beyond `max_seq` are not delivered either.
        for max in [1, total / 2, segments[1].0, segments[1].0 - 1] {
            let got = read_seqs(dir.path(), 0, max, usize::MAX);
            assert_eq!(got.len() as u64, max);
            assert!(got.iter().all(|(seq, _)| *seq <= max));
        }
        assert!(read_seqs(dir.path(), 0, 0, usize::MAX).is_empty());

        // The writer mid-rotation: the next segment exists but its header is not written
        // yet. Nothing in it is durable, so a read up to the watermark must not touch it.
        let next = dir.path().join(segment_file_name(total + 1));
        for torn_len in [0, 7] {
            std::fs::write(&next, &record::segment_header(total + 1)[..torn_len]).unwrap();
            assert_eq!(
                read_seqs(dir.path(), 0, total, usize::MAX).len() as u64,
                total
            );
            assert_eq!(read_seqs(dir.path(), total - 3, total, usize::MAX).len(), 3);
            assert!(read_seqs(dir.path(), total, total, usize::MAX).is_empty());
        }
    }

    #[test]
    fn a_reader_under_a_concurrent_writer_stops_at_the_durable_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(
            dir.path(),
            FsyncPolicy::None,
            limits::SEGMENT_BYTES_MIN,
            new_tail(),
        )
        .unwrap();
        let total = 1500usize;
        let writer = {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for n in (0..total).step_by(3) {
                    let mut batch = FrameBatch::default();
                    for i in n..n + 3 {
                        batch.push(&order(i, 200)).unwrap();
                    }
                    let range = journal.append(&batch).unwrap();
                    journal.commit(range.last).unwrap();
                }
            })
        };
        let mut after = 0u64;
        let mut reads = 0;
        while after < total as u64 {
            let durable = journal.durable_seq();
            let page = read_seqs(dir.path(), after, durable, 50);
            assert_eq!(page.len() as u64, (durable - after).min(50));
            for (index, (seq, record)) in page.iter().enumerate() {
                assert_eq!(*seq, after + 1 + index as u64);
                assert_eq!(record, &order(*seq as usize - 1, 200));
            }
            if let Some((seq, _)) = page.last() {
                after = *seq;
            }
            reads += 1;
            assert!(reads < 1_000_000, "reader never caught up");
        }
        writer.join().unwrap();
        journal.close().unwrap();
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let accepted = (
            "[A-Za-z0-9_.:-]{1,64}",
            "[A-Za-z0-9_.:-]{1,64}",
            "[A-Za-z0-9_.:-]{1,32}",
            1u32..1_000_000,
            prop_oneof![
                Just(Payment::Prepaid),
                Just(Payment::Escrow),
                Just(Payment::Cod)
            ],
            proptest::option::of("[ -~]{0,1000}"),
        )
            .prop_map(|(order_id, user_id, sku, qty, payment, address)| {
                Event::Accepted(OrderAccepted {
                    order_id,
                    user_id,
                    sku,
                    qty,
                    payment,
                    address,
                })
            });
        let sku = (
            "[A-Za-z0-9_.:-]{1,32}",
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(sku, slot_index, stock_total, per_user_limit, max_per_order, timeout)| {
                    Event::Sku(SkuChanged {
                        sku,
                        slot_index,
                        stock_total,
                        per_user_limit,
                        max_per_order,
                        payment_timeout_s: timeout,
                    })
                },
            );
        // `to_json` formats `at_ms` as RFC 3339, which ends with the year 9999.
        (
            0u64..253_402_300_800_000,
            prop_oneof![3 => accepted, 1 => sku],
        )
            .prop_map(|(at_ms, event)| Record { at_ms, event })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn recovery_returns_exactly_what_was_written(
            batches in proptest::collection::vec(
                proptest::collection::vec(arb_record(), 1..8), 1..40),
            reopen_at in any::<proptest::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            // Written in two sessions with a recovery between them, over small segments.
            let split = reopen_at.index(batches.len() + 1);
            write_batches(dir.path(), new_tail(), &batches[..split], limits::SEGMENT_BYTES_MIN);
            let (report, _) = recover_ok(dir.path());
            prop_assert!(report.truncated.is_none());
            write_batches(dir.path(), report.tail, &batches[split..], limits::SEGMENT_BYTES_MIN);

            let written: Vec<Record> = batches.concat();
            let (report, records) = try_recover(dir.path()).unwrap();
            prop_assert!(report.truncated.is_none());
            prop_assert_eq!(report.records, written.len() as u64);
            prop_assert_eq!(report.tail.next_seq, written.len() as u64 + 1);
            prop_assert_eq!(records.len(), written.len());
            for (index, ((seq, record), expected)) in records.iter().zip(&written).enumerate() {
                prop_assert_eq!(*seq, index as u64 + 1);
                prop_assert_eq!(record, expected);
            }
            // The JSON view agrees as well, record by record, through a reader.
            let mut json = Vec::new();
            let mut reader = JournalReader::open(dir.path(), 0, ReadLimit::Written);
            while let Some((seq, record)) = reader.next_record().unwrap() {
                json.push(record.to_json(seq));
            }
            prop_assert_eq!(json.len(), written.len());
            for (index, value) in json.iter().enumerate() {
                prop_assert_eq!(&value["seq"], &serde_json::json!(index + 1));
                prop_assert_eq!(&value["at_ms"], &serde_json::json!(written[index].at_ms));
            }
        }
    }
}
