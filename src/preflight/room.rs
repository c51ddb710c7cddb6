//! The preparation checks, run only when every other check passed and without `--no-prepare`:
//! **journal_room** ([`prepare_journal_room`]: synced zeros ahead of the journal's writer) and
//! **inventory_map** ([`prepare_inventory`]: the inventory file made and mapped whole).

use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::{Check, Verdict, human_bytes};
use crate::checkpoint;
use crate::config::{Config, FsyncPolicy};
use crate::data_dir::journal_dir;
use crate::durable;
use crate::inventory::Inventory;
use crate::inventory::slots::SLOT_BYTES;
use crate::journal::cursor::{CursorStep, SegmentCursor};
use crate::journal::record::SEGMENT_HEADER_BYTES;
use crate::journal::segment::{create_segment, list_segments, segment_file_name, write_zeros};
use crate::journal::storage::{FsStorage, Storage};
use crate::limits;

/// Pages of the inventory map are touched at this stride (the smallest page size).
const PAGE_BYTES: usize = 4096;

/// What [`prepare_journal_room`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalRoom {
    /// A new journal: its first segment, header and `room` bytes of synced zeros.
    Created { path: PathBuf, room: u64 },
    /// Zeros appended after the last segment's end; `room` is what now lies after its last
    /// frame.
    Extended {
        path: PathBuf,
        added: u64,
        room: u64,
    },
    /// The last segment already had the room (zeros after its last frame).
    Enough { path: PathBuf, room: u64 },
    /// The last segment is at its target size: the engine opens the next one at its first
    /// commit.
    SegmentFull { path: PathBuf },
    /// Left alone, for the engine's recovery to judge (the reason says what was found).
    Untouched { reason: String },
}

/// Writes the room the preallocator would keep ahead of the writer (`PREALLOCATE_AHEAD_BYTES`
/// of synced zeros, capped at the segment's target size) before the engine starts, so its
/// first group commits already overwrite allocated blocks.
///
/// Safe by the journal's recovery rules: zeros after the last frame of a segment are room,
/// not damage and not a torn tail (`journal::recovery`), and the writer continues at the last
/// frame's end over them (`Journal::open`). So this only ever writes zeros *after* the last
/// segment's last frame, or, for a journal with no segment at all (and no checkpoint), the
/// very segment the engine would create first (`<1:020>.seg`, its header, synced with its
/// directory, through `journal::segment::create_segment` as the writer does). It never creates a later segment (the
/// engine's rotation creates those with `create_new`), and leaves a last segment that does
/// not end cleanly (a torn tail, a record that does not decode) untouched. The caller holds
/// the data directory's lock.
pub fn prepare_journal_room(data_dir: &Path, segment_bytes_max: u64) -> io::Result<JournalRoom> {
    let dir = journal_dir(data_dir);
    fs::create_dir_all(&dir)?;
    let ahead = limits::PREALLOCATE_AHEAD_BYTES;
    let segments = list_segments(&dir)?;
    let Some((_, path)) = segments.last() else {
        if !checkpoint::list(&checkpoint::checkpoints_dir(data_dir))?.is_empty() {
            return Ok(JournalRoom::Untouched {
                reason: "the journal has no segment but checkpoints exist: the engine will \
                         refuse to start until the journal is restored"
                    .into(),
            });
        }
        // The segment the engine would create first, as it creates it (header, fsync,
        // directory sync); a creation that fails half way leaves no file behind.
        let (path, file) = create_segment(&FsStorage, &dir, 1).map_err(|failure| {
            if !failure.nothing_left {
                let _ = durable::remove_file(&dir.join(segment_file_name(1)));
            }
            failure.error
        })?;
        let end = SEGMENT_HEADER_BYTES as u64;
        let target = (end + ahead).min(segment_bytes_max);
        let written = (|| -> io::Result<()> {
            write_zeros(&*file, end, target)?;
            file.sync_data()?;
            durable::sync_dir(data_dir)
        })();
        if let Err(error) = written {
            drop(file);
            let _ = durable::remove_file(&path);
            return Err(error);
        }
        return Ok(JournalRoom::Created {
            path,
            room: target - end,
        });
    };
    let mut cursor = match SegmentCursor::open(path)? {
        Ok(cursor) => cursor,
        Err(reason) => {
            return Ok(JournalRoom::Untouched {
                reason: format!("{}: {reason}", path.display()),
            });
        }
    };
    // Where the last frame ends: the writer's logical end.
    let end = loop {
        let (offset, problem) = match cursor.step()? {
            CursorStep::Frame { record: Ok(_), .. } => continue,
            CursorStep::Frame {
                offset,
                record: Err(reason),
                ..
            } => (offset, Some(reason)),
            CursorStep::End => (0, None),
            CursorStep::Bad { offset, reason, .. } => (offset, Some(reason)),
        };
        match problem {
            None => break cursor.offset(),
            Some(_) if cursor.rest_is_zero(offset)? => break offset,
            Some(reason) => {
                return Ok(JournalRoom::Untouched {
                    reason: format!(
                        "{} does not end cleanly at byte {offset} ({reason}); left for the \
                         engine's recovery (a torn tail is cut, damage stops the start)",
                        path.display()
                    ),
                });
            }
        }
    };
    let file_len = fs::metadata(path)?.len();
    if end >= segment_bytes_max {
        return Ok(JournalRoom::SegmentFull { path: path.clone() });
    }
    let target = (end + ahead).min(segment_bytes_max);
    if file_len >= target {
        return Ok(JournalRoom::Enough {
            path: path.clone(),
            room: file_len - end,
        });
    }
    let file = FsStorage.open_existing(path)?;
    // From the file's end on: everything before it is frames or zeros, and stays as it is.
    write_zeros(&*file, file_len, target)?;
    file.sync_data()?;
    Ok(JournalRoom::Extended {
        path: path.clone(),
        added: target - file_len,
        room: target - end,
    })
}

pub(super) fn journal_room_check(config: &Config) -> Check {
    let j = &config.journal;
    if !j.preallocate {
        return Check::new(
            "journal_room",
            Verdict::Pass,
            "nothing to prepare: journal.preallocate is off, so the engine grows each segment \
             as it writes (each group commit's fdatasync also commits the new size; \
             config/default.toml explains the trade)",
        );
    }
    if j.fsync == FsyncPolicy::None {
        return Check::new(
            "journal_room",
            Verdict::Pass,
            "nothing to prepare: with fsync = none the engine keeps no room ahead",
        );
    }
    let started = Instant::now();
    let done = prepare_journal_room(&config.data_dir, j.segment_bytes_max);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match done {
        Ok(JournalRoom::Created { path, room }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "created {} with {} of synced zeros ahead in {ms:.1} ms",
                path.display(),
                human_bytes(room)
            ),
        )
        .with(json!({ "path": path.display().to_string(), "room_bytes": room, "ms": ms })),
        Ok(JournalRoom::Extended { path, added, room }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "{}: {} of synced zeros written after its last frame in {ms:.1} ms ({} ahead)",
                path.display(),
                human_bytes(added),
                human_bytes(room)
            ),
        )
        .with(json!({
            "path": path.display().to_string(),
            "added_bytes": added,
            "room_bytes": room,
            "ms": ms,
        })),
        Ok(JournalRoom::Enough { path, room }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "{} already has {} of zeros after its last frame",
                path.display(),
                human_bytes(room)
            ),
        )
        .with(json!({ "path": path.display().to_string(), "room_bytes": room })),
        Ok(JournalRoom::SegmentFull { path }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "{} is at journal.segment_bytes_max: the engine opens the next segment at its \
                 first commit and preallocates there",
                path.display()
            ),
        ),
        Ok(JournalRoom::Untouched { reason }) => Check::new(
            "journal_room",
            Verdict::Warn,
            format!("not prepared: {reason}"),
        ),
        Err(error) => Check::new(
            "journal_room",
            Verdict::Fail,
            format!("preallocating journal room failed: {error}"),
        ),
    }
}

/// Creates `<data_dir>/inventory.slots` at its configured size with the engine's own
/// [`Inventory::create`] (which reserves its blocks and pre-touches every page, as at every
/// engine start) and reads the map back, proving the file can be made and mapped whole on
/// this filesystem. Returns the file's size. The engine re-creates the file at each start (it is
/// rebuilt from the journal) and pre-touches it there, before any shard runs.
pub fn prepare_inventory(data_dir: &Path, skus_max: u32) -> io::Result<u64> {
    let inventory = Inventory::create(&data_dir.join("inventory.slots"), skus_max)?;
    let stride = (PAGE_BYTES / SLOT_BYTES) as u32;
    let mut index = 0;
    while index < skus_max {
        std::hint::black_box(inventory.slot(index).read());
        index += stride;
    }
    std::hint::black_box(inventory.slot(skus_max - 1).read());
    Ok(Inventory::file_bytes(skus_max))
}

pub(super) fn inventory_map_check(config: &Config) -> Check {
    let started = Instant::now();
    let done = prepare_inventory(&config.data_dir, config.inventory.skus_max);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match done {
        Ok(bytes) => Check::new(
            "inventory_map",
            Verdict::Pass,
            format!(
                "inventory.slots created at {} ({} slots) and every page touched in {ms:.1} ms \
                 (the engine re-creates and pre-touches it the same way at each start)",
                human_bytes(bytes),
                config.inventory.skus_max
            ),
        )
        .with(json!({ "bytes": bytes, "slots": config.inventory.skus_max, "ms": ms })),
        Err(error) => Check::new(
            "inventory_map",
            Verdict::Fail,
            format!("inventory.slots could not be created and mapped: {error}"),
        ),
    }
}
