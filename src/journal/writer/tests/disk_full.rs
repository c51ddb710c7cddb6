//! A full disk stops the journal (nothing of the failed group stays on disk) until a probe finds room; the discarded seqs are handed out again only after every committer was told.

use super::sim::*;
use super::*;
// The simulated-disk workloads' orders, not the real-file tests'.
use super::sim::order;

#[test]
fn a_full_disk_stops_the_journal_until_a_write_succeeds_then_it_resumes_gap_free() {
    for errno in [libc::ENOSPC, libc::EDQUOT] {
        let disk = SimulatedDisk::new();
        disk.report_full_as(errno);
        disk.set_capacity(Some(20_000));
        let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
        let mut acked = Vec::new();
        let mut tag = 0;
        let error = loop {
            let records: Vec<Record> = (0..3)
                .map(|_| {
                    tag += 1;
                    order(tag, 700)
                })
                .collect();
            match commit_one(&journal, &records) {
                Ok(range) => {
                    assert_eq!(range.first, acked.len() as u64 + 1);
                    acked.extend(records);
                }
                Err(error) => break error,
            }
        };
        assert!(!acked.is_empty());
        assert!(
            error
                .to_string()
                .contains(&io::Error::from_raw_os_error(errno).to_string()),
            "{error}"
        );
        assert!(journal.is_stopped() && !journal.is_failed());
        assert_eq!(journal.durable_seq(), acked.len() as u64);
        // Memory and disk agree: the short write was cut off, the file ends at the last
        // acknowledged frame.
        let segment_len = journal.shared.segment.lock().len;
        let files = segment_bytes(&disk);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1.len() as u64, segment_len);
        assert_eq!(recovered_now(&disk, FsyncPolicy::Always), acked);
        // Stopped: appends are refused at once, with the same reason.
        let refused = journal.append(&batch_of(&[order(999_999, 0)])).unwrap_err();
        assert_eq!(refused.to_string(), error.to_string());
        // Still full after a few retries.
        std::thread::sleep(RETRY_INTERVAL * 3);
        assert!(journal.is_stopped());

        // Room comes back: the retry finds it and admission resumes by itself.
        disk.set_capacity(None);
        wait_until("resume", || !journal.is_stopped());
        assert!(!journal.is_failed());
        let more: Vec<Record> = (0..4).map(|n| order(500_000 + n, 100)).collect();
        let range = commit_one(&journal, &more).unwrap();
        assert_eq!(
            range.first,
            acked.len() as u64 + 1,
            "the discarded seqs are reused"
        );
        acked.extend(more);
        journal.close().unwrap();
        assert_eq!(recovered_now(&disk, FsyncPolicy::Always), acked);
    }
}

#[test]
fn a_full_disk_while_creating_the_next_segment_stops_and_resumes_without_a_stray_file() {
    let disk = SimulatedDisk::new();
    let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
    let mut acked = Vec::new();
    let mut tag = 0;
    // Fill the first segment until the next group would rotate.
    loop {
        let len = journal.shared.segment.lock().len;
        if len + 2_000 > limits::SEGMENT_BYTES_MIN {
            break;
        }
        tag += 1;
        let record = order(tag, 500);
        commit_one(&journal, std::slice::from_ref(&record)).unwrap();
        acked.push(record);
    }
    // Room for 5 bytes: the new segment's header is cut short.
    disk.set_capacity(Some(disk.used() + 5));
    let big: Vec<Record> = (0..3).map(|n| order(900_000 + n, 900)).collect();
    let error = commit_one(&journal, &big).unwrap_err();
    assert!(journal.is_stopped() && !journal.is_failed(), "{error}");
    assert_eq!(disk.paths().len(), 1, "the half-created segment is removed");
    disk.set_capacity(None);
    wait_until("resume", || !journal.is_stopped());
    let range = commit_one(&journal, &big).unwrap();
    assert_eq!(range.first, acked.len() as u64 + 1);
    acked.extend(big);
    assert_eq!(disk.paths().len(), 2, "rotated");
    journal.close().unwrap();
    assert_eq!(recovered_now(&disk, FsyncPolicy::Always), acked);
}

#[test]
fn a_stopped_journal_hands_out_discarded_seqs_again_only_after_every_committer_was_told() {
    let disk = SimulatedDisk::new();
    let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
    commit_one(&journal, &[order(1, 0)]).unwrap();
    disk.set_capacity(Some(disk.used() + 100));
    // A shard appended and has not committed yet when another's group fails.
    let late = journal.append(&batch_of(&[order(2, 300)])).unwrap();
    let early = journal.append(&batch_of(&[order(3, 300)])).unwrap();
    assert!(journal.commit(early.last).is_err());
    assert!(journal.is_stopped());
    disk.set_capacity(None);
    // Room is back, but seq `late.first` may not be handed out again while its
    // committer could still take someone else's record for its own.
    std::thread::sleep(RETRY_INTERVAL * 3);
    assert!(
        journal.is_stopped(),
        "resumed before every committer was told"
    );
    assert!(journal.commit(late.last).is_err(), "the late commit fails");
    wait_until("resume", || !journal.is_stopped());
    let range = commit_one(&journal, &[order(4, 0)]).unwrap();
    assert_eq!(range.first, late.first);
    // A repeated commit of a seq that is durable now succeeds (it is someone's record).
    journal.commit(range.last).unwrap();
    journal.close().unwrap();
    assert_eq!(
        recovered_now(&disk, FsyncPolicy::Always),
        [order(1, 0), order(4, 0)]
    );
}

#[test]
fn concurrent_committers_through_a_full_disk_lose_nothing_acknowledged_and_keep_nothing_refused() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 150;
    for policy in [FsyncPolicy::Always, FsyncPolicy::None] {
        let disk = SimulatedDisk::new();
        disk.set_capacity(Some(60_000));
        let journal = open_on(&disk, policy).unwrap();
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut refused = Vec::new();
                    let mut attempt = 0;
                    let mut done = 0;
                    while done < PER_THREAD {
                        attempt += 1;
                        // A new order id per attempt, as a client's retry after a 503
                        // would be decided afresh.
                        let records: Vec<Record> = (0..1 + attempt % 3)
                            .map(|i| order(thread * 10_000_000 + attempt * 10 + i, 300))
                            .collect();
                        match commit_one(&journal, &records) {
                            Ok(range) => {
                                acked.push((range, records));
                                done += 1;
                            }
                            Err(_) => {
                                refused.extend(records);
                                std::thread::sleep(Duration::from_millis(2));
                            }
                        }
                    }
                    (acked, refused)
                })
            })
            .collect();
        // Let them run into the full disk, then give room back.
        wait_until("the journal to stop", || journal.is_stopped());
        std::thread::sleep(RETRY_INTERVAL * 2);
        disk.set_capacity(None);
        let mut acked = Vec::new();
        let mut refused = Vec::new();
        for thread in threads {
            let (thread_acked, thread_refused) = thread.join().unwrap();
            acked.extend(thread_acked);
            refused.extend(thread_refused);
        }
        assert!(!refused.is_empty(), "{policy:?}: the disk did fill");
        assert!(!journal.is_stopped() && !journal.is_failed());
        journal.close().unwrap();
        let recovered = recovered_now(&disk, policy);
        let total: usize = acked.iter().map(|(_, records)| records.len()).sum();
        assert_eq!(
            recovered.len(),
            total,
            "{policy:?}: exactly the acknowledged records"
        );
        for (range, records) in &acked {
            for (i, record) in records.iter().enumerate() {
                let seq = range.first + i as u64;
                assert_eq!(
                    &recovered[seq as usize - 1],
                    record,
                    "{policy:?}: seq {seq}"
                );
            }
        }
        let ids: HashSet<String> = recovered
            .iter()
            .map(|r| match &r.event {
                Event::Accepted(o) => o.order_id.clone(),
                _ => unreachable!(),
            })
            .collect();
        for record in &refused {
            let Event::Accepted(o) = &record.event else {
                unreachable!()
            };
            assert!(
                !ids.contains(&o.order_id),
                "{policy:?}: refused {} is on disk",
                o.order_id
            );
        }
    }
}
