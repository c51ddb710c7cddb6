//! A sparse map from `seq` to where its frame lies (segment and byte offset), so one record
//! can be read back without scanning its segment from the start: `GET /v1/orders/{id}`
//! follows an order's history chain this way.
//!
//! One point every [`STRIDE`] records (and the first frame of every segment): 24 bytes per
//! 64 records, ~0.4 bytes per record in RAM. Reading a record costs one positioned read of
//! the frames between its point and the next one in that segment (or a read chunk, past the
//! last point). Recovery fills the index while it scans; the
//! writer adds points inside each group it writes (a group holds up to a shard batch from
//! every shard, so one point per group would not keep the stride). Points are only ever appended, in seq order.

use std::io;
use std::path::Path;

use parking_lot::RwLock;

use crate::journal::cursor::{CursorStep, SegmentCursor};
use crate::journal::record::ArchivedRecord;
use crate::journal::segment::segment_file_name;

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

    /// Notes the points a group of frames needs: `group` (frames of this process's own
    /// encoding, seqs `first_seq..=last_seq`) was written at `group_offset` of the segment
    /// that begins with `segment_first_seq`. A group can hold hundreds of records, so a point
    /// only for its first frame would leave far more than [`STRIDE`] records between points;
    /// this walks the frames' length fields (no copy, no decode) only when a point is due.
    pub fn note_group(
        &self,
        group: &[u8],
        first_seq: u64,
        last_seq: u64,
        segment_first_seq: u64,
        group_offset: u64,
    ) {
        let next_due = match self.points.read().last() {
            Some(last) if last.segment_first_seq == segment_first_seq => {
                last.seq.saturating_add(STRIDE)
            }
            _ => first_seq,
        };
        if next_due > last_seq {
            return;
        }
        let mut due = next_due;
        for (seq, offset) in (first_seq..).zip(crate::journal::record::frame_offsets(group)) {
            if seq >= due {
                self.note(seq, segment_first_seq, group_offset + offset as u64);
                due = seq.saturating_add(STRIDE);
            }
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
        let (point, next_point) = {
            let points = self.points.read();
            let after = points.partition_point(|point| point.seq <= seq);
            let Some(at) = after.checked_sub(1) else {
                return Ok(false);
            };
            (points[at], points.get(after).copied())
        };
        let path = dir.join(segment_file_name(point.segment_first_seq));
        let mut cursor = match SegmentCursor::open_at(&path, point.offset)? {
            Ok(cursor) => cursor,
            Err(problem) => return Err(io::Error::new(io::ErrorKind::InvalidData, problem)),
        };
        // Read only the frames up to the next point in this segment: `seq` lies before it.
        if let Some(next) = next_point
            && next.segment_first_seq == point.segment_first_seq
        {
            cursor.limit_len(next.offset);
        }
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

    #[test]
    fn a_large_group_gets_a_point_every_stride_at_its_frames_offsets() {
        use crate::journal::record::{Event, FrameBatch, OrderAccepted, Record, frame_offsets};
        use crate::order::Payment;
        // 300 records of varied sizes in one group, written at offset 4096 of segment 1.
        let mut batch = FrameBatch::with_capacity(1 << 16);
        for n in 0..300u32 {
            let record = Record {
                at_ms: 1,
                event: Event::Accepted(OrderAccepted {
                    order_id: format!("order-{}", "x".repeat((n % 37) as usize)),
                    user_id: "u".into(),
                    sku: "S".into(),
                    qty: 1,
                    payment: Payment::Cod,
                    address: None,
                }),
            };
            batch.push(&record).unwrap();
        }
        let group = batch.as_bytes();
        let offsets: Vec<usize> = frame_offsets(group).collect();
        assert_eq!(offsets.len(), 300);
        let index = SeqIndex::default();
        index.note_group(group, 1, 300, 1, 4096);
        // Points at seqs 1, 65, 129, 193, 257, each at its own frame's offset.
        assert_eq!(index.points(), 5);
        for seq in [1u64, 65, 129, 193, 257] {
            let point = index.locate(seq + 10).unwrap();
            assert_eq!(point.seq, seq);
            assert_eq!(point.offset, 4096 + offsets[(seq - 1) as usize] as u64);
        }
        // The next group continues the stride across groups (first due at 321), and a
        // group that ends before it adds nothing.
        index.note_group(&group[..offsets[10]], 301, 310, 1, 90_000);
        assert_eq!(index.points(), 5);
        index.note_group(group, 311, 610, 1, 100_000);
        assert_eq!(index.locate(330).unwrap().seq, 321);
        assert_eq!(
            index.locate(330).unwrap().offset,
            100_000 + offsets[10] as u64
        );
    }
}
