//! Damage: a bad frame that is not a torn tail is refused with its file and byte offset.

use super::*;

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
