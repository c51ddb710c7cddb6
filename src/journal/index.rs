//! A sparse map from `seq` to where its frame lies (segment and byte offset), so one record
//! can be read back without scanning its segment from the start: `GET /v1/orders/{id}`
//! follows an order's history chain this way.
//!
//! One point every [`STRIDE`] records (and the first frame of every segment): 24 bytes per
//! 64 records, ~0.4 bytes per record in RAM. Reading a record costs one positioned read of
//! at most the frames between two points. Recovery fills the index while it scans; the
//! writer adds points as it writes groups. Points are only ever appended, in seq order.

use std::io;
use std::path::Path;

use parking_lot::RwLock;

use crate::journal::record::ArchivedRecord;
use crate::journal::scan::{CursorStep, SegmentCursor};
use crate::journal::writer::segment_file_name;

/// Records between two index points: bounds the frames skipped to reach one record.
pub const STRIDE: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    seq: u64,
    segment_first_seq: u64,
    offset: u64,
}

#[derive(Debug, Default)]
pub struct SeqIndex {
    points: RwLock<Vec<Point>>,
}

impl SeqIndex {
    /// Notes that the frame of `seq` starts at `offset` of the segment that begins with
    /// `segment_first_seq`. Called for frames in increasing seq order; keeps one in
    /// [`STRIDE`], and the first of each segment.
    pub fn note(&self, seq: u64, segment_first_seq: u64, offset: u64) {
        let wanted = |points: &[Point]| match points.last() {
            None => true,
            Some(last) => {
                last.segment_first_seq != segment_first_seq
                    || seq >= last.seq.saturating_add(STRIDE)
            }
        };
        if !wanted(&self.points.read()) {
            return;
        }
        let mut points = self.points.write();
        if wanted(&points) && points.last().is_none_or(|last| last.seq < seq) {
            points.push(Point {
                seq,
                segment_first_seq,
                offset,
            });
        }
    }

    /// The closest point at or before `seq`: (segment first seq, offset, seq there).
    fn locate(&self, seq: u64) -> Option<Point> {
        let points = self.points.read();
        let after = points.partition_point(|point| point.seq <= seq);
        after.checked_sub(1).map(|index| points[index])
    }

    /// Where to start reading to reach `seq`: (segment first seq, offset of a frame at or
    /// before it in that segment).
    pub fn start_for(&self, seq: u64) -> Option<(u64, u64)> {
        self.locate(seq)
            .map(|point| (point.segment_first_seq, point.offset))
    }

    pub fn points(&self) -> usize {
        self.points.read().len()
    }

    /// Reads the record of `seq` from the segments in `dir` and hands it to `visit`
    /// (zero-copy, validated). The caller guarantees `seq` is durable. `Ok(false)` when the
    /// record is not in the journal (below its first segment, or past its end).
    pub fn read(
        &self,
        dir: &Path,
        seq: u64,
        visit: &mut dyn FnMut(&ArchivedRecord),
    ) -> io::Result<bool> {
        let Some(point) = self.locate(seq) else {
            return Ok(false);
        };
        let path = dir.join(segment_file_name(point.segment_first_seq));
        let mut cursor = match SegmentCursor::open_at(&path, point.offset)? {
            Ok(cursor) => cursor,
            Err(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
        };
        loop {
            match cursor.step()? {
                CursorStep::Frame {
                    seq: found, record, ..
                } if found == seq => {
                    let record =
                        record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    visit(record);
                    return Ok(true);
                }
                CursorStep::Frame { seq: found, .. } if found < seq => {}
                CursorStep::Frame { .. } | CursorStep::End | CursorStep::Bad { .. } => {
                    return Ok(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_point_per_stride_and_every_segment_start() {
        let index = SeqIndex::default();
        for seq in 1..=200 {
            index.note(seq, 1, seq * 100);
        }
        // 1, 65, 129, 193
        assert_eq!(index.points(), 4);
        index.note(201, 201, 16);
        assert_eq!(index.points(), 5);
        assert_eq!(index.locate(64).unwrap().seq, 1);
        assert_eq!(index.locate(65).unwrap().seq, 65);
        assert_eq!(index.locate(200).unwrap().seq, 193);
        assert_eq!(index.locate(500).unwrap().segment_first_seq, 201);
        assert!(SeqIndex::default().locate(5).is_none());
        // A point for a seq already covered is ignored.
        index.note(150, 1, 0);
        assert_eq!(index.points(), 5);
    }
}
