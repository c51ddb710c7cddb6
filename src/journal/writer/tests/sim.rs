//! The writer on a [`SimulatedDisk`]: the workloads, images and checks that the power-loss,
//! disk-full and fatal-error tests share.

use super::*;

pub(super) const MODES: [CutMode; 4] = [
    CutMode::LoseUnsynced,
    CutMode::TornPrefix,
    CutMode::RandomSubset {
        size_after_data: true,
    },
    CutMode::RandomSubset {
        size_after_data: false,
    },
];

pub(super) fn sim_dir() -> PathBuf {
    PathBuf::from("/simulated/journal")
}

pub(super) fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_str().unwrap().to_owned()
}

pub(super) fn order(tag: u64, address_bytes: usize) -> Record {
    let address =
        (address_bytes > 0).then(|| format!(r#"{{"street":"{}"}}"#, "z".repeat(address_bytes)));
    Record {
        at_ms: 1_700_000_000_000 + tag,
        event: Event::Accepted(OrderAccepted {
            order_id: format!("o-{tag}"),
            user_id: format!("u-{}", tag % 13),
            sku: "SKU-P".into(),
            qty: 1 + (tag % 4) as u32,
            payment: [Payment::Prepaid, Payment::Escrow, Payment::Cod][tag as usize % 3],
            address,
        }),
    }
}

pub(super) fn open_on(disk: &SimulatedDisk, policy: FsyncPolicy) -> io::Result<Journal> {
    Journal::open_with(
        Arc::new(disk.clone()),
        &sim_dir(),
        policy,
        limits::SEGMENT_BYTES_MIN,
        new_tail(),
    )
}

/// What a workload did before the power went.
#[derive(Default, Debug)]
pub(super) struct Run {
    /// Every record the journal took, by seq - 1 (acknowledged or not).
    pub(super) appended: Vec<Record>,
    /// The highest seq whose commit returned `Ok`.
    pub(super) acked: u64,
    /// Per segment file name: where its acknowledged frames end.
    pub(super) acked_end: HashMap<String, u64>,
}

/// One thread, policy `always`, small segments: groups of 1 to 3 appended batches of 1 to
/// 6 records (addresses up to 900 bytes, so frames cross sectors), each batch committed;
/// with `preallocate`, synced zeros are written ahead between groups as the
/// preallocator does. Stops at the first error (the power is off).
pub(super) fn run_workload(
    disk: &SimulatedDisk,
    seed: u64,
    groups: usize,
    preallocate: bool,
) -> Run {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut run = Run::default();
    let Ok(journal) = open_on(disk, FsyncPolicy::Always) else {
        return run;
    };
    let mut tag = seed * 1_000_000;
    'groups: for _ in 0..groups {
        if preallocate && rng.next_u64() % 3 == 0 {
            let step = journal.shared.segment.lock().preallocate_step();
            match step {
                Ok(Some(file)) => {
                    if file.sync_data().is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let mut ranges = Vec::new();
        for _ in 0..1 + rng.next_u64() % 3 {
            let records: Vec<Record> = (0..1 + rng.next_u64() % 6)
                .map(|_| {
                    tag += 1;
                    order(tag, (rng.next_u64() % 900) as usize)
                })
                .collect();
            match journal.append(&batch_of(&records)) {
                Ok(range) => {
                    assert_eq!(range.first, run.appended.len() as u64 + 1);
                    run.appended.extend(records);
                    ranges.push(range);
                }
                Err(_) => break 'groups,
            }
        }
        for range in ranges {
            if journal.commit(range.last).is_err() {
                break 'groups;
            }
            run.acked = range.last;
        }
        let segment = journal.shared.segment.lock();
        run.acked_end.insert(name_of(&segment.path), segment.len);
    }
    run
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Recovered { truncated: bool },
    Refused,
}

/// Recovers the image with the real scan and checks the promise: every acknowledged
/// record is back, in order, gap-free, nothing but what was appended, only a torn tail
/// of the last segment truncated; a refusal (where `allow_damage`) names a file and an
/// offset past its acknowledged frames.
pub(super) fn check_image(
    image: &CrashImage,
    run: &Run,
    allow_damage: bool,
    label: &str,
) -> Verdict {
    let dir = tempfile::tempdir().unwrap();
    image.materialise(dir.path()).unwrap();
    let segments = list_segments(dir.path()).unwrap();
    let last_name = segments.last().map(|(_, path)| name_of(path));
    let mut records = Vec::new();
    let result = recover(dir.path(), &mut |seq, record| {
        let owned = rkyv::deserialize::<Record, rkyv::rancor::Error>(record).unwrap();
        records.push((seq, owned));
        Ok(())
    });
    match result {
        Ok(report) => {
            assert!(
                records.len() as u64 >= run.acked,
                "{label}: acknowledged records lost: {} recovered, {} acknowledged",
                records.len(),
                run.acked
            );
            assert!(records.len() <= run.appended.len(), "{label}");
            for (index, (seq, record)) in records.iter().enumerate() {
                assert_eq!(*seq, index as u64 + 1, "{label}: gap-free, in order");
                assert_eq!(record, &run.appended[index], "{label}: seq {seq}");
            }
            if let Some((path, offset, _)) = &report.truncated {
                assert_eq!(
                    Some(name_of(path)),
                    last_name,
                    "{label}: only the last segment is truncated"
                );
                let acked_end = run.acked_end.get(&name_of(path)).copied().unwrap_or(0);
                assert!(
                    *offset >= acked_end,
                    "{label}: truncated at {offset}, inside acknowledged frames (to {acked_end})"
                );
            }
            Verdict::Recovered {
                truncated: report.truncated.is_some(),
            }
        }
        Err(error @ RecoveryError::Damage { .. }) => {
            let message = error.to_string();
            let RecoveryError::Damage { path, offset, .. } = error else {
                unreachable!()
            };
            assert!(allow_damage, "{label}: recovery refused: {message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(&format!("at byte {offset}")), "{message}");
            let acked_end = run.acked_end.get(&name_of(&path)).copied().unwrap_or(0);
            assert!(
                offset >= acked_end,
                "{label}: damage reported inside acknowledged frames: {message}"
            );
            Verdict::Refused
        }
        Err(other) => panic!("{label}: recovery failed: {other}"),
    }
}

/// Acknowledged frames of an image: `(file, offset, checked end, next frame offset)`.
pub(super) fn acked_frames(image: &CrashImage, run: &Run) -> Vec<(PathBuf, u64, u64, u64)> {
    let mut frames = Vec::new();
    for (path, file) in &image.files {
        let Some(&end) = run.acked_end.get(&name_of(path)) else {
            continue;
        };
        let mut offset = SEGMENT_HEADER_BYTES;
        while (offset as u64) < end {
            match check_frame(&file.bytes, offset) {
                FrameCheck::Valid {
                    payload,
                    next_offset,
                    ..
                } => {
                    let checked_end = offset + FRAME_HEADER_BYTES + payload.len();
                    frames.push((
                        path.clone(),
                        offset as u64,
                        checked_end as u64,
                        next_offset as u64,
                    ));
                    offset = next_offset;
                }
                other => panic!("acknowledged frame at {offset} is bad: {other:?}"),
            }
        }
    }
    frames
}

/// Appends and commits one batch; the seq range on success.
pub(super) fn commit_one(journal: &Journal, records: &[Record]) -> Result<SeqRange, JournalError> {
    let range = journal.append(&batch_of(records))?;
    journal.commit(range.last)?;
    Ok(range)
}

pub(super) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen in 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(super) fn segment_bytes(disk: &SimulatedDisk) -> Vec<(String, Vec<u8>)> {
    disk.paths()
        .into_iter()
        .map(|path| (name_of(&path), disk.contents(&path).unwrap()))
        .collect()
}

/// Recovers what the disk would hold after a power cut now (for `always`: what was
/// synced), or after a process crash (for the other policies: everything written), and
/// returns the records.
pub(super) fn recovered_now(disk: &SimulatedDisk, policy: FsyncPolicy) -> Vec<Record> {
    let dir = tempfile::tempdir().unwrap();
    let image = match policy {
        FsyncPolicy::Always => disk.crash_image(CutMode::LoseUnsynced, 1),
        FsyncPolicy::Interval | FsyncPolicy::None => disk.written_image(),
    };
    image.materialise(dir.path()).unwrap();
    let mut records = Vec::new();
    let report = recover(dir.path(), &mut |seq, record| {
        assert_eq!(seq, records.len() as u64 + 1);
        records.push(rkyv::deserialize::<Record, rkyv::rancor::Error>(record).unwrap());
        Ok(())
    })
    .unwrap();
    assert!(report.truncated.is_none(), "{report:?}");
    records
}
