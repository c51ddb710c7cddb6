//! `--data-dir`: the journal files read directly, the group's offset committed through
//! [`ConsumerOffsets`] after the segments holding the delivered records are synced.

use std::io;
use std::path::Path;
use std::time::Instant;

use tokio::sync::watch;

use crate::journal::{ConsumerOffsets, JournalReader, ReadError, ReadLimit};
use crate::limits::TAIL_IDLE_CHECK;

use super::{Delivery, Options, TailError, stdout_closed, stopped};

pub(super) fn tail_files(
    data_dir: &Path,
    options: &Options,
    stop: &watch::Receiver<bool>,
) -> Result<(), TailError> {
    let journal_dir = data_dir.join("journal");
    if !journal_dir.is_dir() {
        return Err(TailError::NoJournal(journal_dir));
    }
    let offsets_failed = |error| TailError::Offsets {
        dir: crate::journal::consumers::consumers_dir(data_dir),
        error,
    };
    let group = match &options.group {
        Some(name) => {
            let offsets = ConsumerOffsets::open(data_dir).map_err(offsets_failed)?;
            let committed = offsets.get(name).map_err(offsets_failed)?;
            Some((offsets, name.as_str(), committed))
        }
        None => None,
    };
    let start = group
        .as_ref()
        .and_then(|(_, _, committed)| *committed)
        .unwrap_or(options.from);
    // The seqs up to here are on disk: synced by this run, or committed before it.
    let synced_through = std::cell::Cell::new(start);
    let commit = |seq: u64| match &group {
        Some((offsets, name, _)) => {
            sync_segments(&journal_dir, synced_through.get(), seq).map_err(|error| {
                TailError::Read(ReadError::Io(io::Error::new(
                    error.kind(),
                    format!("cannot sync the journal before a commit: {error}"),
                )))
            })?;
            synced_through.set(synced_through.get().max(seq));
            offsets.commit(name, seq).map_err(offsets_failed)
        }
        None => Ok(()),
    };
    let mut delivery = Delivery::new(start, options);
    let mut reader = JournalReader::open(&journal_dir, start, ReadLimit::Written);
    let mut last_check = Instant::now();
    let result = loop {
        if stopped(stop) || delivery.closed {
            break Ok(());
        }
        match reader.next_record() {
            Ok(Some((seq, record))) => {
                delivery.handle(seq, record.type_name(), |out| {
                    serde_json::to_writer(out, &record.to_json(seq)).map_err(io::Error::from)
                })?;
                if let Some(seq) = delivery.commit_due()? {
                    commit(seq)?;
                    delivery.commit_done(Some(seq));
                }
            }
            Ok(None) => {
                // Caught up: what is written goes out now, for a follower to see at once.
                delivery.flush()?;
                if let Some(seq) = delivery.commit_due()? {
                    commit(seq)?;
                    delivery.commit_done(Some(seq));
                }
                if !options.follow {
                    break Ok(());
                }
                if last_check.elapsed() >= TAIL_IDLE_CHECK {
                    last_check = Instant::now();
                    if stdout_closed() {
                        break Ok(());
                    }
                }
                reader.wait(TAIL_IDLE_CHECK);
            }
            Err(error) => break Err(TailError::Read(error)),
        }
    };
    // What reached stdout before the end (or the damage) was delivered: commit it.
    let finish = delivery
        .flush()
        .and_then(|()| match delivery.final_commit() {
            Some(seq) => commit(seq),
            None => Ok(()),
        });
    result.and(finish)
}

/// Puts the records in `(after, through]` on stable storage: fdatasyncs each segment that
/// holds some of them, and the directory (under `fsync = "none"` the engine syncs neither on
/// rotation). The engine's own syncs make this cheap when it already did (no dirty pages).
/// A segment deleted meanwhile by retention needs nothing.
fn sync_segments(journal_dir: &Path, after: u64, through: u64) -> io::Result<()> {
    if through <= after {
        return Ok(());
    }
    let segments = crate::journal::list_segments(journal_dir)?;
    for (index, (first, path)) in segments.iter().enumerate() {
        let last = segments
            .get(index + 1)
            .map_or(u64::MAX, |(next_first, _)| next_first - 1);
        if *first > through || last <= after {
            continue;
        }
        match std::fs::File::open(path) {
            Ok(file) => file.sync_data()?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    std::fs::File::open(journal_dir)?.sync_all()
}
