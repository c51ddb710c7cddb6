//! The writer on a [`SimulatedDisk`]: power cuts at every kind of point (in a group write,
//! between the write and its fdatasync, in a rotation, in a preallocation) and flipped bits,
//! each followed by the real recovery scan. Seeded, so every failure reproduces; bounded in
//! time.

use super::sim::*;
use super::*;
// The simulated-disk workloads' orders, not the real-file tests'.
use super::sim::order;

#[test]
fn power_cuts_never_lose_an_acknowledged_record() {
    const SEEDS: u64 = 60;
    const GROUPS: usize = 60;
    let mut verdicts: BTreeMap<String, [u32; 3]> = BTreeMap::new();
    let mut cases = 0;
    for seed in 1..=SEEDS {
        for preallocate in [false, true] {
            // The same seed does the same operations: count them, then cut anywhere.
            let dry = SimulatedDisk::new();
            let full = run_workload(&dry, seed, GROUPS, preallocate);
            assert_eq!(full.acked as usize, full.appended.len());
            let ops = dry.ops();
            assert!(ops > 100, "{ops} operations");
            let mut rng = Rng(seed * 7919 + preallocate as u64);
            for (mode_index, mode) in MODES.into_iter().enumerate() {
                for _ in 0..3 {
                    let cut = rng.next_u64() % (ops + 1);
                    let disk = SimulatedDisk::new();
                    disk.cut_power_at(cut);
                    let run = run_workload(&disk, seed, GROUPS, preallocate);
                    assert_eq!(
                        run.appended[..],
                        full.appended[..run.appended.len()],
                        "deterministic"
                    );
                    let label = format!(
                        "seed {seed}, preallocate {preallocate}, {mode:?}, cut at op {cut} of {ops}"
                    );
                    // Appended groups tear at their end only; out-of-order persistence of
                    // overwritten room (preallocation) or a file system that may commit
                    // a size over lost data can leave a bad frame before a good one.
                    let allow_damage = matches!(
                        mode,
                        CutMode::RandomSubset {
                            size_after_data: false
                        }
                    ) || (preallocate
                        && matches!(mode, CutMode::RandomSubset { .. }));
                    let image = disk.crash_image(mode, seed ^ cut ^ mode_index as u64);
                    let verdict = check_image(&image, &run, allow_damage, &label);
                    let slot = match verdict {
                        Verdict::Recovered { truncated: false } => 0,
                        Verdict::Recovered { truncated: true } => 1,
                        Verdict::Refused => 2,
                    };
                    verdicts
                        .entry(format!("preallocate={preallocate} {mode:?}"))
                        .or_default()[slot] += 1;
                    cases += 1;
                }
            }
        }
    }
    println!("{cases} power cuts: [clean, torn tail truncated, refused as damage]");
    for (case, counts) in &verdicts {
        println!("  {case}: {counts:?}");
    }
    // The documented case: with preallocated room, an overwriting group's sectors can
    // land out of order, and recovery refuses rather than guess (nothing acknowledged
    // was in that group).
    let prealloc_subset: u32 = verdicts
        .iter()
        .filter(|(case, _)| case.starts_with("preallocate=true RandomSubset"))
        .map(|(_, counts)| counts[2])
        .sum();
    assert!(prealloc_subset > 0, "{verdicts:?}");
    // And cuts really tear groups.
    let torn: u32 = verdicts.values().map(|counts| counts[1]).sum();
    assert!(torn > 20, "{verdicts:?}");
}

#[test]
fn a_flipped_bit_in_an_acknowledged_record_is_refused_with_file_and_offset() {
    const SEEDS: u64 = 40;
    let mut refused = 0;
    let mut last_frame_refused = 0;
    let mut length_flips_truncated = 0;
    let mut unsynced = 0;
    for seed in 1..=SEEDS {
        let dry = SimulatedDisk::new();
        run_workload(&dry, seed, 60, false);
        let ops = dry.ops();
        let mut rng = Rng(seed * 104_729);
        let disk = SimulatedDisk::new();
        let cut = ops / 2 + rng.next_u64() % (ops / 2 + 1);
        disk.cut_power_at(cut);
        let run = run_workload(&disk, seed, 60, false);
        let image = disk.crash_image(CutMode::TornPrefix, seed);
        let label = format!("seed {seed}, cut at op {cut}");
        assert!(matches!(
            check_image(&image, &run, false, &label),
            Verdict::Recovered { .. }
        ));
        let frames = acked_frames(&image, &run);
        assert_eq!(frames.len() as u64, run.acked, "{label}");
        let names: Vec<String> = image.files.keys().map(|p| name_of(p)).collect();
        let last_name = names
            .iter()
            .filter(|n| parse_segment_file_name(n).is_some())
            .max()
            .cloned();

        for flip in 0..7 {
            // Six frames at random, then the last acknowledged one.
            let index = if flip < 6 {
                (rng.next_u64() % frames.len() as u64) as usize
            } else {
                frames.len() - 1
            };
            let (path, offset, checked_end, next) = frames[index].clone();
            let byte = offset + rng.next_u64() % (checked_end - offset);
            let bit = (rng.next_u64() % 8) as u8;
            let mut flipped = image.clone();
            flipped.flip_bit(&path, byte, bit);
            let dir = tempfile::tempdir().unwrap();
            flipped.materialise(dir.path()).unwrap();
            let real = dir.path().join(name_of(&path));
            let bytes = &image.files[&path].bytes;
            let followed = (next as usize) < bytes.len()
                && matches!(check_frame(bytes, next as usize), FrameCheck::Valid { .. });
            let is_last = Some(name_of(&path)) == last_name;
            let mut seen = 0u64;
            let result = recover(dir.path(), &mut |seq, _| {
                assert_eq!(seq, seen + 1);
                seen = seq;
                Ok(())
            });
            let where_ = format!("{label}: flip at {}:{byte} bit {bit}", name_of(&path));
            // The one case a flip is not refused: the last frame, nothing valid after it,
            // and the flip made it look torn (see `looks_torn`).
            let reads_as_torn =
                !followed && is_last && looks_torn(&flipped.files[&path].bytes, offset as usize);
            if !reads_as_torn {
                match result {
                    Err(RecoveryError::Damage {
                        path: damaged,
                        offset: at,
                        ..
                    }) => {
                        assert_eq!(damaged, real, "{where_}");
                        assert_eq!(at, offset, "{where_}: names the frame's offset");
                    }
                    other => panic!("{where_}: expected a refusal, got {other:?}"),
                }
                refused += 1;
                if !followed && is_last {
                    last_frame_refused += 1;
                }
            } else {
                // A flip in the length field that puts the frame's end past the end of
                // the file or out of range reads exactly like a frame cut short: cut off
                // (with a warning), never replayed, the one way a flip costs an
                // acknowledged record silently. The frames written here hold no sector
                // of zeros, so no flip elsewhere reads as torn.
                assert!(byte < offset + 4, "{where_}: outside the length field");
                let report = result.unwrap_or_else(|e| panic!("{where_}: {e}"));
                assert_eq!(report.truncated.unwrap().1, offset, "{where_}");
                assert_eq!(seen, frames_before(&frames, &path, offset), "{where_}");
                length_flips_truncated += 1;
            }
        }

        // A flip in what was never synced: never a corrupt record, never a loss.
        if let Some(last) = &last_name {
            let path = sim_dir().join(last);
            let file = &image.files[&path];
            let from = run.acked_end.get(last).copied().unwrap_or(0).max(16);
            if (file.bytes.len() as u64) > from {
                let mut flipped = image.clone();
                let byte = from + rng.next_u64() % (file.bytes.len() as u64 - from);
                flipped.flip_bit(&path, byte, (rng.next_u64() % 8) as u8);
                check_image(&flipped, &run, true, &label);
                unsynced += 1;
            }
        }
    }
    println!(
        "bit flips in acknowledged records: {refused} of {} refused with file and offset \
         ({last_frame_refused} in the journal's last frame with nothing valid after it), \
         {length_flips_truncated} in a last frame's length field cut off as a torn tail; \
         {unsynced} flips in unsynced bytes",
        SEEDS * 7
    );
    assert_eq!(refused + length_flips_truncated, SEEDS * 7);
    assert!(last_frame_refused > 5, "{last_frame_refused}");
}

/// How many acknowledged frames lie before `(path, offset)`.
fn frames_before(frames: &[(PathBuf, u64, u64, u64)], path: &Path, offset: u64) -> u64 {
    let index = frames
        .iter()
        .position(|(p, o, _, _)| p == path && *o == offset)
        .unwrap();
    index as u64
}

#[test]
fn power_cuts_under_concurrent_group_commit_keep_every_acknowledged_record() {
    const THREADS: u64 = 3;
    const BATCHES: u64 = 40;
    let workload = |disk: &SimulatedDisk| {
        let journal = match open_on(disk, FsyncPolicy::Always) {
            Ok(journal) => journal,
            Err(_) => return (HashMap::new(), Vec::new()),
        };
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    let mut appended = Vec::new();
                    let mut acked = Vec::new();
                    for n in 0..BATCHES {
                        let records: Vec<Record> = (0..1 + (n + thread) % 5)
                            .map(|i| {
                                order(thread * 1_000_000 + n * 10 + i, (n * 37 % 500) as usize)
                            })
                            .collect();
                        let Ok(range) = journal.append(&batch_of(&records)) else {
                            break;
                        };
                        appended.push((range, records));
                        if journal.commit(range.last).is_err() {
                            break;
                        }
                        acked.push(range);
                    }
                    (appended, acked)
                })
            })
            .collect();
        let mut by_seq = HashMap::new();
        let mut acked = Vec::new();
        for thread in threads {
            let (appended, thread_acked) = thread.join().unwrap();
            for (range, records) in appended {
                for (i, record) in records.into_iter().enumerate() {
                    assert!(by_seq.insert(range.first + i as u64, record).is_none());
                }
            }
            acked.extend(thread_acked);
        }
        (by_seq, acked)
    };
    let dry = SimulatedDisk::new();
    workload(&dry);
    let ops = dry.ops();
    let mut rng = Rng(0xC0FFEE);
    let mut cases = 0;
    for round in 0..40u64 {
        let disk = SimulatedDisk::new();
        let cut = rng.next_u64() % (ops + 1);
        disk.cut_power_at(cut);
        let (by_seq, acked) = workload(&disk);
        let mode = MODES[(round % 3) as usize];
        let image = disk.crash_image(mode, round);
        let dir = tempfile::tempdir().unwrap();
        image.materialise(dir.path()).unwrap();
        let mut recovered = Vec::new();
        recover(dir.path(), &mut |seq, record| {
            let owned = rkyv::deserialize::<Record, rkyv::rancor::Error>(record).unwrap();
            recovered.push((seq, owned));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("round {round}, {mode:?}, cut {cut}: {e}"));
        for (index, (seq, record)) in recovered.iter().enumerate() {
            assert_eq!(*seq, index as u64 + 1);
            assert_eq!(Some(record), by_seq.get(seq), "round {round}: seq {seq}");
        }
        for range in &acked {
            assert!(
                range.last <= recovered.len() as u64,
                "round {round}, {mode:?}, cut {cut}: acknowledged {range:?} lost"
            );
        }
        cases += 1;
    }
    assert_eq!(cases, 40);
}

/// What a consumer offset commit relies on: after `sync_through(seq)` a power cut keeps
/// every record up to `seq`, under every policy, also across rotations (`none` syncs
/// nothing when it rotates).
#[test]
fn sync_through_puts_the_records_up_to_a_seq_on_disk_before_it_returns() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::None,
    ] {
        let disk = SimulatedDisk::new();
        let journal = open_on(&disk, policy).unwrap();
        let mut tag = 0;
        let mut committed = 0;
        // Past a few rotations (segments of SEGMENT_BYTES_MIN).
        while disk.paths().len() < 4 {
            let records: Vec<Record> = (0..5)
                .map(|_| {
                    tag += 1;
                    order(tag, 700)
                })
                .collect();
            committed = commit_one(&journal, &records).unwrap().last;
        }
        assert_eq!(journal.durable_seq(), committed, "{policy:?}");
        if policy == FsyncPolicy::Always {
            assert_eq!(journal.synced_seq(), committed);
        } else {
            // No interval thread runs here: nothing of the last segment is synced.
            assert!(journal.synced_seq() < committed, "{policy:?}");
            let lost = disk.crash_image(CutMode::LoseUnsynced, 7);
            let dir = tempfile::tempdir().unwrap();
            lost.materialise(dir.path()).unwrap();
            let mut kept = 0;
            let _ = recover(dir.path(), &mut |_, _| {
                kept += 1;
                Ok(())
            });
            assert!(
                kept < committed,
                "{policy:?}: a power cut would lose records"
            );
        }
        let target = committed - 2;
        journal.sync_through(target).unwrap();
        assert!(journal.synced_seq() >= target, "{policy:?}");
        let image = disk.crash_image(CutMode::LoseUnsynced, 11);
        let dir = tempfile::tempdir().unwrap();
        image.materialise(dir.path()).unwrap();
        let mut kept = 0;
        recover(dir.path(), &mut |seq, _| {
            assert_eq!(seq, kept + 1);
            kept += 1;
            Ok(())
        })
        .unwrap();
        assert!(
            kept >= target,
            "{policy:?}: {kept} records kept, {target} synced"
        );
        // Beyond what was written: refused, nothing claimed.
        assert!(journal.sync_through(committed + 1).is_err(), "{policy:?}");
        assert!(journal.synced_seq() <= committed);
        journal.close().unwrap();
    }
}
