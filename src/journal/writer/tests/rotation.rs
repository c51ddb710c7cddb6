//! Rotation: small segments rotate without splitting a record, and a reopened journal continues the seq.

use super::*;

/// Walks a segment file's frames; panics on anything but whole valid frames.
fn frames_of(path: &Path) -> (u64, Vec<u64>) {
    let bytes = std::fs::read(path).unwrap();
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let first_seq = parse_segment_header(&aligned).expect("segment header");
    let mut seqs = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    loop {
        match check_frame(&aligned, offset) {
            FrameCheck::Valid {
                seq, next_offset, ..
            } => {
                assert_eq!(next_offset % record::FRAME_ALIGN, 0);
                seqs.push(seq);
                offset = next_offset;
            }
            FrameCheck::End => break,
            other => panic!("{}: at byte {offset}: {other:?}", path.display()),
        }
    }
    (first_seq, seqs)
}

#[test]
fn small_segments_rotate_without_splitting_records_and_reopen_continues_the_seq() {
    let dir = tempfile::tempdir().unwrap();
    let segment_max = limits::SEGMENT_BYTES_MIN;
    let journal = Journal::open(dir.path(), FsyncPolicy::None, segment_max, new_tail()).unwrap();
    let mut written = Vec::new();
    let mut rng = 7u64;
    while written.len() < 1500 {
        let size = (1 + next_rand(&mut rng) % 8) as usize;
        let records: Vec<_> = (written.len()..written.len() + size)
            .map(|n| order(0, n, (n * 37) % 300))
            .collect();
        let range = journal.append(&batch_of(&records)).unwrap();
        assert_eq!(range.first, written.len() as u64 + 1);
        journal.commit(range.last).unwrap();
        written.extend(records);
    }
    journal.close().unwrap();
    drop(journal);

    let segments = list_segments(dir.path()).unwrap();
    assert!(
        segments.len() >= 4,
        "expected several segments, got {}",
        segments.len()
    );
    let mut expected_first = 1;
    for (index, (name_seq, path)) in segments.iter().enumerate() {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, segment_file_name(*name_seq));
        let (header_seq, seqs) = frames_of(path);
        assert_eq!(header_seq, *name_seq, "{name}: header and name agree");
        assert_eq!(
            *name_seq, expected_first,
            "{name} is named after its first seq"
        );
        assert!(!seqs.is_empty(), "{name} holds records");
        for (i, seq) in seqs.iter().enumerate() {
            assert_eq!(*seq, name_seq + i as u64, "{name}: frame {i}");
        }
        expected_first = name_seq + seqs.len() as u64;
        let len = std::fs::metadata(path).unwrap().len();
        if index + 1 < segments.len() {
            // Groups are far smaller than a segment, so rotation keeps each file under
            // its target.
            assert!(len <= segment_max, "{name} is {len} bytes");
        }
    }
    assert_eq!(expected_first, written.len() as u64 + 1);

    let (report, records) = recover_all(dir.path());
    assert_eq!(report.segments, segments.len());
    assert_eq!(records.len(), written.len());
    for (index, ((seq, record), expected)) in records.iter().zip(&written).enumerate() {
        assert_eq!(*seq, index as u64 + 1);
        assert_eq!(record, expected);
    }
    let tail = report.tail.clone();
    let (tail_path, tail_first, tail_len) = tail.segment.clone().unwrap();
    assert_eq!(tail_path, segments.last().unwrap().1);
    assert_eq!(tail_first, segments.last().unwrap().0);
    assert_eq!(tail_len, std::fs::metadata(&tail_path).unwrap().len());
    assert_eq!(tail.next_seq, written.len() as u64 + 1);

    // Reopen where recovery left off: the seq continues, into the same segment and on
    // into new ones.
    let journal = Journal::open(dir.path(), FsyncPolicy::Always, segment_max, tail).unwrap();
    assert_eq!(journal.durable_seq(), written.len() as u64);
    let first_new = written.len();
    while written.len() < first_new + 300 {
        let records: Vec<_> = (written.len()..written.len() + 50)
            .map(|n| order(1, n, 250))
            .collect();
        let range = journal.append(&batch_of(&records)).unwrap();
        assert_eq!(range.first, written.len() as u64 + 1);
        journal.commit(range.last).unwrap();
        assert_eq!(journal.durable_seq(), range.last);
        written.extend(records);
    }
    journal.close().unwrap();
    drop(journal);
    assert!(list_segments(dir.path()).unwrap().len() > segments.len());
    let (report, records) = recover_all(dir.path());
    assert!(report.truncated.is_none());
    assert_eq!(report.tail.next_seq, written.len() as u64 + 1);
    let got: Vec<Record> = records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, written);
}
