//! Segment headers and names: foreign files, bad magic, a last segment whose creation was cut short.

use super::*;

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
