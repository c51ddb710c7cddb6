//! Torn tails: a write cut short at the end of the last segment is truncated, never replayed; zeros after the last frame are room.

use super::*;

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
