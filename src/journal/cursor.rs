//! Reading one segment back: a sequential cursor over its frames, zero-copy (the consumers'
//! [`crate::journal::JournalReader`], the seq index's random reads and the recovery scan are
//! built on it), and the rules that tell a torn write from damage.
//!
//! Owns: [`SegmentCursor`] and its steps ([`CursorStep`], [`Peek`]); the header check
//! ([`HeaderProblem`]); the frame rules that [`crate::journal::recovery`] applies to a bad
//! frame: zeros to the end of the file are preallocated room
//! ([`SegmentCursor::rest_is_zero`]), a valid frame after a bad one makes it damage
//! ([`SegmentCursor::valid_frame_after`]), and a bad frame is a torn write only when it looks
//! torn: cut short by the end of the file, a length out of range, or a sector of it reading
//! as zeros ([`SegmentCursor::bad_frame_is_whole`]).
//!
//! Invariants: the cursor's buffer always starts at an 8-aligned file offset, so a payload
//! is validated and accessed in place; it holds at most one read chunk (plus one frame) of a
//! segment whatever the segment's size; it only reads files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rkyv::util::AlignedVec;

use crate::journal::record::{
    self, ArchivedRecord, FRAME_ALIGN, FrameCheck, SEGMENT_HEADER_BYTES, access_record, check_frame,
};
use crate::limits;

/// Bytes read from a segment at a time. Large enough to amortise the syscall over hundreds
/// of records, small enough that many concurrent readers stay cheap.
pub(crate) const READ_CHUNK_BYTES: usize = 256 * 1024;

/// The most bytes one frame takes, padding included: a frame starting anywhere in a chunk
/// is whole in a read that reaches this far past the chunk's end.
pub(crate) const FRAME_BYTES_MAX: usize =
    (record::FRAME_HEADER_BYTES + limits::RECORD_PAYLOAD_BYTES_MAX).next_multiple_of(FRAME_ALIGN);

/// The unit a write tears in: a disk writes a 512-byte sector whole or not at all (the
/// simulated disk of the power-loss tests does the same), and a write cut short by a killed
/// process stops at a page boundary, a multiple of it.
const SECTOR_BYTES: u64 = 512;

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

/// Why [`SegmentCursor::open_at`] cannot start at an offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenAtProblem {
    /// The segment's header does not check.
    #[error("{0}")]
    Header(HeaderProblem),
    /// The offset is before the first frame or not 8-aligned: no frame can start there.
    #[error("offset {offset} is not a frame boundary")]
    NotFrameBoundary { offset: u64 },
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
    pub fn open_at(path: &Path, offset: u64) -> io::Result<Result<Self, OpenAtProblem>> {
        let mut cursor = match Self::open(path)? {
            Ok(cursor) => cursor,
            Err(problem) => return Ok(Err(OpenAtProblem::Header(problem))),
        };
        if offset < SEGMENT_HEADER_BYTES as u64 || offset % FRAME_ALIGN as u64 != 0 {
            return Ok(Err(OpenAtProblem::NotFrameBoundary { offset }));
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

const _: () = assert!(READ_CHUNK_BYTES >= limits::RECORD_PAYLOAD_BYTES_MAX * 4);
