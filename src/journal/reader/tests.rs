//! Tests of the consumers' reader: order, following, torn tails as "not yet", gaps, and
//! the window a page reads (across segments, up to its limit, under a live writer).

use super::*;
use crate::config::FsyncPolicy;
use crate::journal::fixtures::{append_bytes, multi_segment_journal, new_tail, order, read_seqs};
use crate::journal::record::{self, Event, FrameBatch, OrderAccepted, Record};
use crate::journal::recovery::JournalTail;
use crate::limits;
use crate::order::Payment;

fn record(n: u64) -> Record {
    Record {
        at_ms: n,
        event: Event::Accepted(OrderAccepted {
            order_id: format!("o{n}"),
            user_id: "u".into(),
            sku: "S".into(),
            qty: 1,
            payment: Payment::Cod,
            address: None,
        }),
    }
}

fn append(journal: &Journal, from: u64, count: u64) {
    let mut batch = FrameBatch::default();
    for n in from..from + count {
        batch.push(&record(n)).unwrap();
    }
    let range = journal.append(&batch).unwrap();
    journal.commit(range.last).unwrap();
}

fn open_journal(dir: &Path, segment_bytes: u64) -> Journal {
    let tail = JournalTail {
        segment: None,
        next_seq: 1,
        index: Default::default(),
    };
    Journal::open(dir, FsyncPolicy::None, segment_bytes, tail).unwrap()
}

fn drain(reader: &mut JournalReader) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some((seq, record)) = reader.next_record().unwrap() {
        assert_eq!(record.at_ms.to_native(), seq, "record {seq} is its own");
        seqs.push(seq);
    }
    seqs
}

#[test]
fn reads_every_record_in_order_across_segments_and_follows_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path(), crate::limits::SEGMENT_BYTES_MIN);
    for batch in 0..40 {
        append(&journal, 1 + batch * 100, 100);
    }
    assert!(list_segments(dir.path()).unwrap().len() > 3);
    for limit in [ReadLimit::Written, ReadLimit::Durable(journal.clone())] {
        let mut reader = JournalReader::open(dir.path(), 0, limit.clone());
        let seqs = drain(&mut reader);
        assert!(seqs.len() >= 4000, "{} records read", seqs.len());
        assert!(seqs.iter().enumerate().all(|(n, seq)| *seq == n as u64 + 1));
        assert_eq!(seqs.last(), Some(&journal.durable_seq()));
        // Caught up: nothing, then new records appear.
        assert!(reader.next_record().unwrap().is_none());
        let next = reader.next_seq();
        append(&journal, next, 3);
        assert!(reader.wait(Duration::from_secs(1)));
        assert_eq!(drain(&mut reader), vec![next, next + 1, next + 2]);
        // From the middle.
        let mut middle = JournalReader::open(dir.path(), 2500, limit);
        assert_eq!(drain(&mut middle).first(), Some(&2501));
    }
}

#[test]
fn a_durable_reader_waits_for_the_commit_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path(), crate::limits::SEGMENT_BYTES_DEFAULT);
    append(&journal, 1, 1);
    let mut reader = JournalReader::open(dir.path(), 1, ReadLimit::Durable(journal.clone()));
    assert!(!reader.wait(Duration::from_millis(20)));
    let writer = {
        let journal = journal.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            append(&journal, 2, 1);
        })
    };
    let started = std::time::Instant::now();
    assert!(reader.wait(Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(drain(&mut reader), vec![2]);
    writer.join().unwrap();
}

#[test]
fn a_torn_tail_is_not_yet_and_is_read_once_completed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path(), crate::limits::SEGMENT_BYTES_DEFAULT);
    append(&journal, 1, 5);
    let (_, path) = list_segments(dir.path()).unwrap().pop().unwrap();
    let full = std::fs::read(&path).unwrap();
    // Cut the last frame in half, as a crash mid-write leaves it.
    let mut cut_at = full.len() - 1;
    while full[cut_at] == 0 {
        cut_at -= 1;
    }
    std::fs::write(&path, &full[..cut_at - 20]).unwrap();
    let mut reader = JournalReader::open(dir.path(), 0, ReadLimit::Written);
    assert_eq!(drain(&mut reader), vec![1, 2, 3, 4]);
    assert!(reader.next_record().unwrap().is_none());
    // The writer (after the engine restarts) writes the frame again: the reader goes on.
    std::fs::write(&path, &full).unwrap();
    assert_eq!(drain(&mut reader), vec![5]);
}

#[test]
fn a_missing_segment_is_a_gap_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path(), crate::limits::SEGMENT_BYTES_MIN);
    for batch in 0..30 {
        append(&journal, 1 + batch * 100, 100);
    }
    let segments = list_segments(dir.path()).unwrap();
    std::fs::remove_file(&segments[1].1).unwrap();
    let mut reader = JournalReader::open(dir.path(), 0, ReadLimit::Written);
    let error = loop {
        match reader.next_record() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a gap must not look like the end"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(error, ReadError::Damaged { .. } | ReadError::Gap { .. }),
        "{error}"
    );
    // Asking for records before the first segment says they are gone.
    std::fs::remove_file(&segments[0].1).unwrap();
    let mut reader = JournalReader::open(dir.path(), 5, ReadLimit::Written);
    assert!(matches!(
        reader.next_record(),
        Err(ReadError::Deleted { .. })
    ));
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
    // The writer syncs at every rotation, which on a slow disk leaves the reader
    // idle for a while: bound the test by time, not by a count of (possibly empty)
    // reads, and give the core back while nothing new is durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while after < total as u64 {
        let durable = journal.durable_seq();
        let page = read_seqs(dir.path(), after, durable, 50);
        assert_eq!(page.len() as u64, (durable - after).min(50));
        for (index, (seq, record)) in page.iter().enumerate() {
            assert_eq!(*seq, after + 1 + index as u64);
            assert_eq!(record, &order(*seq as usize - 1, 200));
        }
        match page.last() {
            Some((seq, _)) => after = *seq,
            None => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reader never caught up"
        );
    }
    writer.join().unwrap();
    journal.close().unwrap();
}
