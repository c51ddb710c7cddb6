//! Group commit: concurrent appends land in order, gap-free, sharing fsyncs; the durable watermark only moves forward; a write in progress shows as a stall.

use super::*;

fn concurrent_appends_land_in_order(policy: FsyncPolicy) {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(
        dir.path(),
        policy,
        limits::SEGMENT_BYTES_DEFAULT,
        new_tail(),
    )
    .unwrap();

    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (thread as u64 + 1);
                let mut ranges = Vec::new();
                let mut n = 0;
                while n < PER_THREAD {
                    let size = (1 + next_rand(&mut rng) % 8) as usize;
                    let size = size.min(PER_THREAD - n);
                    let records: Vec<_> = (n..n + size).map(|i| order(thread, i, 0)).collect();
                    let range = journal.append(&batch_of(&records)).unwrap();
                    assert_eq!(range.last - range.first + 1, size as u64);
                    journal.commit(range.last).unwrap();
                    assert!(journal.durable_seq() >= range.last);
                    ranges.push((range, n));
                    n += size;
                }
                ranges
            })
        })
        .collect();
    let per_thread: Vec<Vec<(SeqRange, usize)>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();

    let total = (THREADS * PER_THREAD) as u64;
    let commits: usize = per_thread.iter().map(Vec::len).sum();
    assert_eq!(journal.durable_seq(), total);
    let stats = journal.stats();
    assert_eq!(stats.records.load(Ordering::Relaxed), total);
    let writes = stats.writes.load(Ordering::Relaxed);
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
    assert!(
        writes <= commits as u64,
        "{writes} writes for {commits} commits"
    );
    match policy {
        FsyncPolicy::Always => {
            // One fsync per group, and a group carries one commit or more.
            assert_eq!(fsyncs, writes);
            assert!(fsyncs <= commits as u64);
            println!(
                "group commit: {fsyncs} fsyncs for {commits} commits ({:.2} commits per fsync)",
                commits as f64 / fsyncs.max(1) as f64
            );
        }
        _ => assert_eq!(fsyncs, 0),
    }

    // Every seq in 1..=total was handed out exactly once, and each thread's ranges rise.
    let mut seen = HashSet::new();
    let mut owner = vec![(usize::MAX, usize::MAX); total as usize + 1];
    for (thread, ranges) in per_thread.iter().enumerate() {
        let mut previous_last = 0;
        for (range, first_n) in ranges {
            assert!(
                range.first > previous_last,
                "thread {thread} went backwards"
            );
            previous_last = range.last;
            for seq in range.first..=range.last {
                assert!(seen.insert(seq), "seq {seq} handed out twice");
                owner[seq as usize] = (thread, first_n + (seq - range.first) as usize);
            }
        }
    }
    assert_eq!(seen.len() as u64, total);
    assert!(seen.iter().all(|seq| (1..=total).contains(seq)));

    journal.close().unwrap();
    let (report, records) = recover_all(dir.path());
    assert_eq!(report.records, total);
    assert_eq!(report.tail.next_seq, total + 1);
    assert!(report.truncated.is_none());
    let mut next_of_thread = [0usize; THREADS];
    for (index, (seq, record)) in records.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1, "seqs are gap-free and increasing");
        let (thread, n) = owner[*seq as usize];
        assert_eq!(n, next_of_thread[thread], "thread {thread} out of order");
        next_of_thread[thread] += 1;
        assert_eq!(record, &order(thread, n, 0), "seq {seq}");
    }
    assert_eq!(next_of_thread, [PER_THREAD; THREADS]);
}

#[test]
fn concurrent_appends_with_fsync_always_are_gap_free_ordered_and_share_fsyncs() {
    concurrent_appends_land_in_order(FsyncPolicy::Always);
}

#[test]
fn concurrent_appends_with_fsync_none_are_gap_free_ordered_and_recovered() {
    concurrent_appends_land_in_order(FsyncPolicy::None);
}

#[test]
fn durable_seq_only_moves_forward_and_equals_the_last_committed_seq() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::None,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(
            dir.path(),
            policy,
            limits::SEGMENT_BYTES_DEFAULT,
            new_tail(),
        )
        .unwrap();
        assert_eq!(journal.durable_seq(), 0);

        // One committer: durable_seq is exactly the last committed seq, and an append
        // alone does not move it.
        let mut last = 0;
        for n in 0..40 {
            let records: Vec<_> = (0..1 + n % 4).map(|i| order(0, n * 10 + i, 0)).collect();
            let range = journal.append(&batch_of(&records)).unwrap();
            assert_eq!(
                journal.durable_seq(),
                last,
                "{policy:?}: append is not durable"
            );
            journal.commit(range.last).unwrap();
            assert_eq!(journal.durable_seq(), range.last, "{policy:?}");
            // A repeated commit of a durable seq changes nothing.
            journal.commit(range.first).unwrap();
            assert_eq!(journal.durable_seq(), range.last, "{policy:?}");
            last = range.last;
        }

        // Several committers and an observer: the watermark never goes back.
        let stop = Arc::new(AtomicBool::new(false));
        let observer = {
            let journal = journal.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut previous = journal.durable_seq();
                let mut observations = 0u64;
                loop {
                    let stopping = stop.load(Ordering::Acquire);
                    let now = journal.durable_seq();
                    assert!(now >= previous, "durable_seq went from {previous} to {now}");
                    previous = now;
                    observations += 1;
                    if stopping {
                        break;
                    }
                }
                observations
            })
        };
        let writers: Vec<_> = (0..3)
            .map(|thread| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for n in 0..60 {
                        let range = journal.append(&batch_of(&[order(thread, n, 0)])).unwrap();
                        journal.commit(range.last).unwrap();
                        assert!(journal.durable_seq() >= range.last);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        stop.store(true, Ordering::Release);
        assert!(observer.join().unwrap() > 0);
        assert_eq!(journal.durable_seq(), last + 180, "{policy:?}");
        journal.close().unwrap();
        drop(journal);

        // Reopened after recovery, the watermark starts at the last recovered seq.
        let (report, _) = recover_all(dir.path());
        let journal = Journal::open(
            dir.path(),
            policy,
            limits::SEGMENT_BYTES_DEFAULT,
            report.tail,
        )
        .unwrap();
        assert_eq!(journal.durable_seq(), last + 180);
        let range = journal.append(&batch_of(&[sku(1)])).unwrap();
        assert_eq!(range.first, last + 181);
        journal.commit(range.last).unwrap();
        assert_eq!(journal.durable_seq(), last + 181);
    }
}

#[test]
fn no_stall_is_reported_between_group_writes() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(
        dir.path(),
        FsyncPolicy::Always,
        limits::SEGMENT_BYTES_DEFAULT,
        new_tail(),
    )
    .unwrap();
    assert_eq!(journal.write_stalled_for(), None);
    let range = journal.append(&batch_of(&[sku(1)])).unwrap();
    journal.commit(range.last).unwrap();
    assert_eq!(
        journal.write_stalled_for(),
        None,
        "the finished write cleared its mark"
    );
    // While a write runs, the mark holds its start: 3 s later it reports 3 s.
    journal
        .shared
        .write_started_ms
        .store(1_000, Ordering::Release);
    assert_eq!(
        journal.write_stalled_at(4_000),
        Some(Duration::from_secs(3))
    );
}
