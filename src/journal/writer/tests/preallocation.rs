//! Preallocation: synced zeros ahead of the writer, room to recovery, written over after a restart; none for `fsync = "none"`.

use super::*;

#[test]
fn the_preallocator_keeps_synced_zeros_ahead_that_recovery_treats_as_room() {
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes_max = 4 * limits::PREALLOCATE_AHEAD_BYTES;
    let journal = Journal::open(
        dir.path(),
        FsyncPolicy::Always,
        segment_bytes_max,
        new_tail(),
    )
    .unwrap();
    let preallocator = journal
        .spawn_preallocator()
        .expect("policy always preallocates");
    let mut written = Vec::new();
    for n in 0..200 {
        let records = vec![order(0, n, 16), order(1, n, 0)];
        let range = journal.append(&batch_of(&records)).unwrap();
        journal.commit(range.last).unwrap();
        written.extend(records);
    }
    // The room ahead reaches its target within a bounded wait.
    let path = dir.path().join(segment_file_name(1));
    let logical_len = journal.shared.segment.lock().len;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().len() < logical_len + limits::PREALLOCATE_AHEAD_BYTES {
        assert!(
            std::time::Instant::now() < deadline,
            "preallocation did not catch up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    journal.close().unwrap();
    preallocator.join().unwrap();

    let (report, records) = recover_all(dir.path());
    assert!(
        report.truncated.is_none(),
        "zeros ahead are not a torn tail"
    );
    assert_eq!(report.tail.segment.as_ref().unwrap().2, logical_len);
    let records: Vec<Record> = records.into_iter().map(|(_, record)| record).collect();
    assert_eq!(records, written);

    // Reopened, the writer writes over the zeros from the logical end.
    let journal = Journal::open(
        dir.path(),
        FsyncPolicy::Always,
        segment_bytes_max,
        report.tail,
    )
    .unwrap();
    let range = journal.append(&batch_of(&[sku(7)])).unwrap();
    journal.commit(range.last).unwrap();
    let (report, records) = recover_all(dir.path());
    assert!(report.truncated.is_none());
    assert_eq!(records.len(), written.len() + 1);
    assert_eq!(records.last().unwrap().1, sku(7));
}

#[test]
fn the_preallocator_never_runs_for_fsync_none() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(
        dir.path(),
        FsyncPolicy::None,
        limits::SEGMENT_BYTES_DEFAULT,
        new_tail(),
    )
    .unwrap();
    assert!(journal.spawn_preallocator().is_none());
}
