use super::*;
use crate::checkpoint;
use crate::config::Overrides;
use crate::data_dir::journal_dir;
use crate::journal::segment::{list_segments, segment_file_name};
use crate::journal::{Event, FrameBatch, Record};
use crate::journal::{Journal, recover};
use crate::limits;

fn config_for(dir: &Path, toml_text: &str) -> Config {
    let file = dir.join("event.toml");
    fs::write(&file, toml_text).unwrap();
    let overrides = Overrides {
        config_file: Some(file),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.join("data")),
    };
    Config::load_with_env(&overrides, |_| None).unwrap()
}

fn sku_record(n: u32) -> Record {
    Record {
        at_ms: 1_700_000_000_000,
        event: Event::Sku(crate::journal::SkuChanged {
            sku: format!("SKU-{n}"),
            slot_index: n,
            stock_total: 10,
            per_user_limit: 0,
            max_per_order: 1,
            payment_timeout_s: 900,
        }),
    }
}

/// Appends `count` records through the engine's own writer (policy `none`).
fn write_journal(data_dir: &Path, count: u32) {
    let dir = journal_dir(data_dir);
    fs::create_dir_all(&dir).unwrap();
    let report = recover(&dir, &mut |_, _| Ok(())).unwrap();
    let journal = Journal::open(
        &dir,
        FsyncPolicy::None,
        limits::SEGMENT_BYTES_DEFAULT,
        report.tail,
    )
    .unwrap();
    for n in 0..count {
        let mut batch = FrameBatch::default();
        batch.push(&sku_record(n)).unwrap();
        let range = journal.append(&batch).unwrap();
        journal.commit(range.last).unwrap();
    }
    journal.close().unwrap();
}

#[test]
fn journal_bytes_per_order_is_measured_from_the_encoder() {
    let bytes = journal_bytes_per_order();
    // 12 frames, each a 16-byte header, a payload and padding to 8.
    assert_eq!(bytes % 8, 0);
    assert!(
        (12 * 64..12 * 1024).contains(&bytes),
        "{bytes} bytes for 12 records"
    );
    assert_eq!(bytes, journal_bytes_per_order(), "deterministic");
}

#[test]
fn quantiles_are_nearest_rank() {
    let samples = FsyncSamples::new((1..=200).rev().map(Duration::from_micros).collect());
    assert_eq!(samples.median(), Duration::from_micros(100));
    assert_eq!(samples.p99(), Duration::from_micros(198));
    assert_eq!(samples.max(), Duration::from_micros(200));
    let one = FsyncSamples::new(vec![Duration::from_micros(7)]);
    assert_eq!(one.p99(), Duration::from_micros(7));
}

#[test]
fn fsync_bounds_follow_the_policy() {
    let ms = Duration::from_millis;
    assert_eq!(
        judge_fsync(FsyncPolicy::Always, 100, ms(1)).0,
        Verdict::Pass
    );
    assert_eq!(
        judge_fsync(FsyncPolicy::Always, 100, ms(6)).0,
        Verdict::Warn
    );
    assert_eq!(
        judge_fsync(FsyncPolicy::Always, 100, ms(21)).0,
        Verdict::Fail
    );
    assert_eq!(
        judge_fsync(FsyncPolicy::Interval, 100, ms(21)).0,
        Verdict::Pass
    );
    assert_eq!(
        judge_fsync(FsyncPolicy::Interval, 10, ms(21)).0,
        Verdict::Warn
    );
    assert_eq!(
        judge_fsync(FsyncPolicy::None, 100, ms(900)).0,
        Verdict::Pass
    );
}

#[test]
fn open_files_need_the_connections_and_a_margin() {
    let need = OPEN_FILES_NEEDED;
    assert_eq!(judge_open_files(need, need).0, Verdict::Pass);
    let (verdict, detail) = judge_open_files(1024, need);
    assert_eq!(verdict, Verdict::Fail);
    assert!(detail.contains(&format!("ulimit -n {need}")), "{detail}");
    let (verdict, detail) = judge_open_files(1024, 4096);
    assert_eq!(verdict, Verdict::Fail);
    assert!(detail.contains("hard limit is below"), "{detail}");
}

#[test]
fn disk_need_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(
        dir.path(),
        "[journal]\npreallocate = true\n[inventory]\norders_expected = 1000\nskus_max = 64\n",
    );
    let need = disk_need(&config);
    assert_eq!(need.journal, 1000 * need.journal_bytes_per_order * 2);
    assert_eq!(need.checkpoints, 1000 * 40 * 3);
    assert_eq!(need.inventory_map, 128 + 64 * 128);
    assert_eq!(need.preallocated, limits::PREALLOCATE_AHEAD_BYTES);
    assert_eq!(
        need.total,
        need.journal + need.checkpoints + need.inventory_map + need.preallocated
    );
}

#[test]
fn a_fresh_journal_gets_the_engines_first_segment_which_recovery_reads_as_room() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    fs::create_dir_all(&data_dir).unwrap();
    let room = prepare_journal_room(&data_dir, limits::SEGMENT_BYTES_DEFAULT).unwrap();
    let path = journal_dir(&data_dir).join(segment_file_name(1));
    assert_eq!(
        room,
        JournalRoom::Created {
            path: path.clone(),
            room: limits::PREALLOCATE_AHEAD_BYTES
        }
    );
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        16 + limits::PREALLOCATE_AHEAD_BYTES
    );
    // Recovery: a clean, empty journal whose writer starts right after the header.
    let report = recover(&journal_dir(&data_dir), &mut |_, _| Ok(())).unwrap();
    assert_eq!(report.records, 0);
    assert_eq!(report.truncated, None);
    assert_eq!(report.tail.next_seq, 1);
    assert_eq!(report.tail.segment, Some((path.clone(), 1, 16)));
    // The engine's writer appends there, over the zeros, and the room is kept.
    write_journal(&data_dir, 3);
    let mut seqs = Vec::new();
    let report = recover(&journal_dir(&data_dir), &mut |seq, _| {
        seqs.push(seq);
        Ok(())
    })
    .unwrap();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(report.truncated, None);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        16 + limits::PREALLOCATE_AHEAD_BYTES
    );
    assert_eq!(list_segments(&journal_dir(&data_dir)).unwrap().len(), 1);
}

#[test]
fn an_existing_journal_gets_zeros_after_its_last_frame_only() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    write_journal(&data_dir, 5);
    let path = journal_dir(&data_dir).join(segment_file_name(1));
    let before = fs::read(&path).unwrap();
    let room = prepare_journal_room(&data_dir, limits::SEGMENT_BYTES_DEFAULT).unwrap();
    let JournalRoom::Extended { added, room, .. } = room else {
        panic!("expected Extended, got {room:?}");
    };
    assert_eq!(room, limits::PREALLOCATE_AHEAD_BYTES);
    assert_eq!(added, limits::PREALLOCATE_AHEAD_BYTES);
    let after = fs::read(&path).unwrap();
    assert_eq!(&after[..before.len()], &before[..], "frames untouched");
    assert!(after[before.len()..].iter().all(|b| *b == 0));
    // Again: the room is there already.
    assert!(matches!(
        prepare_journal_room(&data_dir, limits::SEGMENT_BYTES_DEFAULT).unwrap(),
        JournalRoom::Enough { .. }
    ));
    let mut count = 0;
    let report = recover(&journal_dir(&data_dir), &mut |_, _| {
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!((count, report.tail.next_seq), (5, 6));
    assert_eq!(report.truncated, None);
    assert_eq!(report.tail.segment.unwrap().2, before.len() as u64);
}

#[test]
fn a_segment_that_does_not_end_cleanly_is_left_for_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    write_journal(&data_dir, 2);
    let path = journal_dir(&data_dir).join(segment_file_name(1));
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0xA5; 5]);
    fs::write(&path, &bytes).unwrap();
    let room = prepare_journal_room(&data_dir, limits::SEGMENT_BYTES_DEFAULT).unwrap();
    assert!(matches!(room, JournalRoom::Untouched { .. }), "{room:?}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "nothing written");
}

#[test]
fn no_segment_is_created_beside_orphaned_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let checkpoints = checkpoint::checkpoints_dir(&data_dir);
    fs::create_dir_all(&checkpoints).unwrap();
    checkpoint::write(
        &checkpoints,
        &checkpoint::Checkpoint {
            seq: 9,
            created_ms: 0,
            skus: Vec::new(),
            orders: Vec::new(),
            timers: Vec::new(),
            idempotency_keys: Vec::new(),
            review_rules: None,
            paused_slots: Vec::new(),
        },
    )
    .unwrap();
    let room = prepare_journal_room(&data_dir, limits::SEGMENT_BYTES_DEFAULT).unwrap();
    assert!(matches!(room, JournalRoom::Untouched { .. }), "{room:?}");
    assert!(list_segments(&journal_dir(&data_dir)).unwrap().is_empty());
}

#[test]
fn the_inventory_map_is_made_at_its_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    for skus in [1, 31, 32, 33, 1000] {
        let bytes = prepare_inventory(dir.path(), skus).unwrap();
        assert_eq!(bytes, 128 + skus as u64 * 128);
        assert_eq!(
            fs::metadata(dir.path().join("inventory.slots"))
                .unwrap()
                .len(),
            bytes
        );
    }
}

#[test]
fn human_bytes_reads_well() {
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(8 * 1024 * 1024), "8.0 MiB");
}
