//! The segment files of a journal directory: their names, their listing, and the creation
//! of a new one. Every path that creates a segment (the writer's first segment and each
//! rotation, preflight's preparation of a new journal) goes through [`create_segment`].
//!
//! Owns: the name `<first_seq:020>.seg` ([`segment_file_name`], [`parse_segment_file_name`]);
//! the listing in seq order ([`list_segments`]); the creation with its header, `fsync` and
//! directory sync, through the [`Storage`] seam (the real file system traces each step for
//! the power-cut tests, [`crate::durable`]); and the zeros written ahead of the data as
//! preallocated room ([`write_zeros`]).
//!
//! Invariants:
//! - names sort in seq order, and a segment is named after the seq of its first frame;
//! - once [`create_segment`] returns, the new segment's header and its directory entry are
//!   durable, so a record in it may be acknowledged (recovery could otherwise miss the whole
//!   segment: a gap in the middle, which it refuses);
//! - a creation that fails before the header was written removes the file again where it
//!   can ([`CreateError::nothing_left`]), so a later try can create it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::journal::record;
use crate::journal::storage::{SegmentFile, Storage};
use crate::limits;

/// `<first_seq:020>.seg`: names sort in seq order.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Parses a segment file name back to its first seq.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The journal's segment files, in seq order.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first_seq) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// Why [`create_segment`] failed.
#[derive(Debug)]
pub struct CreateError {
    /// The failed operation's error, as the storage reported it.
    pub error: io::Error,
    /// True when nothing of the new segment is left in the directory (it was never created,
    /// or it was removed again after its header could not be written): creating it later
    /// can succeed. False once the header is written but its sync failed.
    pub nothing_left: bool,
}

/// Creates the segment whose first frame will carry `first_seq` in `dir` (failing if it
/// exists), writes its header, and makes the header and the directory entry durable
/// (`fsync` of the file, then of the directory). Returns its path and the open file.
pub fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    first_seq: u64,
) -> Result<(PathBuf, Arc<dyn SegmentFile>), CreateError> {
    let path = dir.join(segment_file_name(first_seq));
    let file = storage.create_new(&path).map_err(|error| CreateError {
        error,
        nothing_left: true,
    })?;
    if let Err(error) = file.write_all_at(&record::segment_header(first_seq), 0) {
        // Nothing is in the new file: remove it, so that the next try can create it.
        let removed = storage.remove_file(&path);
        if let Err(remove_error) = &removed {
            tracing::error!(error = %remove_error, path = %path.display(),
                "cannot remove a segment whose header could not be written");
        }
        return Err(CreateError {
            error,
            nothing_left: removed.is_ok(),
        });
    }
    let synced = file.sync_all().and_then(|()| storage.sync_dir(dir));
    synced.map_err(|error| CreateError {
        error,
        nothing_left: false,
    })?;
    Ok((path, file))
}

/// Zeros for preallocated room, one chunk's worth.
static ZEROS: [u8; limits::PREALLOCATE_CHUNK_BYTES as usize] =
    [0; limits::PREALLOCATE_CHUNK_BYTES as usize];

/// Writes zeros over `[from, to)` of `file`, a preallocation chunk per write. Zeros after a
/// segment's last frame are room to recovery, never damage and never a torn tail.
pub fn write_zeros(file: &dyn SegmentFile, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let len = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..len as usize], at)?;
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_in_seq_order_and_parse_back() {
        let names: Vec<String> = [1u64, 9, 10, 100, u64::MAX]
            .iter()
            .map(|seq| segment_file_name(*seq))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        for (name, seq) in names.iter().zip([1u64, 9, 10, 100, u64::MAX]) {
            assert_eq!(parse_segment_file_name(name), Some(seq));
        }
        for other in [
            "1.seg",
            "00000000000000000001.bak",
            "0000000000000000000x.seg",
        ] {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
    }
}
