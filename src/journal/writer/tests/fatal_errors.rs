//! Failures that stop the journal for good: a failed fdatasync, a write error other than no room.

use super::sim::*;
use super::*;
// The simulated-disk workloads' orders, not the real-file tests'.
use super::sim::order;

#[test]
fn a_failed_fdatasync_fails_the_journal_for_good() {
    let disk = SimulatedDisk::new();
    let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
    let first: Vec<Record> = (0..3).map(|n| order(n, 50)).collect();
    commit_one(&journal, &first).unwrap();
    let len = journal.shared.segment.lock().len;
    disk.fail_next_syncs(1);
    let error = commit_one(&journal, &[order(10, 50)]).unwrap_err();
    assert!(error.to_string().contains("Input/output error"), "{error}");
    assert!(journal.is_failed() && journal.is_stopped());
    // The group was cut off; no retry brings the journal back.
    assert_eq!(disk.contents(&disk.paths()[0]).unwrap().len() as u64, len);
    std::thread::sleep(RETRY_INTERVAL * 2);
    assert!(journal.is_failed());
    assert!(journal.append(&batch_of(&[order(11, 0)])).is_err());
    assert!(journal.close().is_err());
    assert_eq!(recovered_now(&disk, FsyncPolicy::Always), first);
}

#[test]
fn a_write_error_other_than_no_room_fails_the_journal_for_good() {
    let disk = SimulatedDisk::new();
    let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
    commit_one(&journal, &[order(1, 0)]).unwrap();
    // The power going is an EIO on the write: not a full disk.
    disk.cut_power_at(disk.ops());
    assert!(commit_one(&journal, &[order(2, 0)]).is_err());
    assert!(journal.is_failed());
}
