//! The segment the writer appends to: one group at a time at its logical end, a new
//! segment when a group would carry this one past its target size, zeros written ahead as
//! preallocated room, and the probes and cuts that the failure rules need.
//!
//! Owns: [`SegmentWriter`] (append, rotate, preallocate step, probe, cut back). The group
//! commit ([`super::Journal::commit`]) calls it under the segment lock; so does the
//! preallocator thread ([`super::background`]).
//!
//! Invariants:
//! - everything before `len` is whole frames; `[len, allocated_len)` is zeros the
//!   preallocator wrote, which recovery treats as room;
//! - a group never spans two files, and after a failed write the file is cut back to `len`
//!   (a frame boundary), so memory and disk agree;
//! - zeros are written only at or after `len`, under the segment lock, so they never
//!   overwrite a frame;
//! - a closed segment is synced once at rotation, under every policy, so that a sync of the
//!   current file makes the whole journal durable.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::GroupFailure;
use crate::config::FsyncPolicy;
use crate::journal::record::SEGMENT_HEADER_BYTES;
use crate::journal::segment::{self, create_segment};
use crate::journal::storage::{SegmentFile, Storage, is_out_of_space};
use crate::limits;

pub(super) struct SegmentWriter {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    pub(super) file: Arc<dyn SegmentFile>,
    pub(super) path: PathBuf,
    /// The seq of the segment's first frame (its name).
    pub(super) first_seq: u64,
    /// Logical end: where the next frame goes. Everything before it is frames.
    pub(super) len: u64,
    /// Physical size: `[len, allocated_len)` is zeros written ahead by the preallocator.
    allocated_len: u64,
    segment_bytes_max: u64,
    policy: FsyncPolicy,
}

impl SegmentWriter {
    /// Opens the segment recovery ended in, to append after its last frame at `len`.
    pub(super) fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        path: PathBuf,
        first_seq: u64,
        len: u64,
        segment_bytes_max: u64,
        policy: FsyncPolicy,
    ) -> io::Result<Self> {
        let file = storage.open_existing(&path)?;
        // Recovery ends the segment at its last frame; zeros after it are room a
        // preallocator wrote before the restart.
        let allocated_len = file.size()?.max(len);
        Ok(Self {
            storage,
            dir: dir.to_owned(),
            file,
            path,
            first_seq,
            len,
            allocated_len,
            segment_bytes_max,
            policy,
        })
    }

    /// Creates the segment whose first frame is `first_seq` (the journal's first, or the
    /// next one at a rotation).
    pub(super) fn create(
        storage: Arc<dyn Storage>,
        dir: &Path,
        first_seq: u64,
        segment_bytes_max: u64,
        policy: FsyncPolicy,
    ) -> Result<Self, GroupFailure> {
        // The new file's header and its directory entry are durable before any record in
        // it is acknowledged, under every policy (see `create_segment`).
        let (path, file) = create_segment(&*storage, dir, first_seq).map_err(|failure| {
            GroupFailure {
                // No room (no inode left is no room too), and nothing of the new file is
                // left: the next try may create it.
                resumable: failure.nothing_left && is_out_of_space(&failure.error),
                error: failure.error,
            }
        })?;
        Ok(Self {
            storage,
            dir: dir.to_owned(),
            file,
            path,
            first_seq,
            len: SEGMENT_HEADER_BYTES as u64,
            allocated_len: SEGMENT_HEADER_BYTES as u64,
            segment_bytes_max,
            policy,
        })
    }

    /// Writes one group at the end of the current segment, starting a new segment first when
    /// the group would carry this one past its target size. A group never spans two files.
    /// Returns the offset the group starts at.
    pub(super) fn append(&mut self, group: &[u8], first_seq: u64) -> Result<u64, GroupFailure> {
        let len_after = self.len + group.len() as u64;
        if self.len > SEGMENT_HEADER_BYTES as u64 && len_after > self.segment_bytes_max {
            self.rotate(first_seq)?;
        }
        if let Err(error) = self.file.write_all_at(group, self.len) {
            // A partial write leaves a torn tail; cut it so the file ends on a frame boundary.
            // Only then do memory and disk agree, which a resumed journal relies on.
            let cut = self.file.set_len(self.len);
            self.allocated_len = self.len;
            if let Err(cut_error) = &cut {
                tracing::error!(error = %cut_error, path = %self.path.display(),
                    "cannot truncate a failed group write");
            }
            return Err(GroupFailure {
                resumable: is_out_of_space(&error) && cut.is_ok(),
                error,
            });
        }
        let offset = self.len;
        self.len += group.len() as u64;
        self.allocated_len = self.allocated_len.max(self.len);
        Ok(offset)
    }

    /// Writes the next chunk of zeros ahead of the logical end, if the room ahead is below
    /// `PREALLOCATE_AHEAD_BYTES`, and returns the file to sync them with (outside the
    /// lock). Zeros are written only beyond `len`, under the segment lock, so they can
    /// never overwrite a frame. Capped at the segment's target size.
    pub(super) fn preallocate_step(&mut self) -> io::Result<Option<Arc<dyn SegmentFile>>> {
        let target = (self.len + limits::PREALLOCATE_AHEAD_BYTES).min(self.segment_bytes_max);
        let start = self.allocated_len.max(self.len);
        if start >= target {
            return Ok(None);
        }
        let end = (start + limits::PREALLOCATE_CHUNK_BYTES).min(target);
        segment::write_zeros(&*self.file, start, end)?;
        self.allocated_len = end;
        Ok(Some(self.file.clone()))
    }

    /// The retry's test for room: writes `bytes` zeros past the file's physical end (at most
    /// one preallocation chunk), then cuts them off again. Zeros after the last frame are
    /// the clean end of the data to recovery, so a crash in between harms nothing.
    pub(super) fn probe(&mut self, bytes: u64) -> io::Result<()> {
        let end = self.allocated_len.max(self.len);
        let bytes = bytes.min(limits::PREALLOCATE_CHUNK_BYTES);
        let written = segment::write_zeros(&*self.file, end, end + bytes);
        self.file.set_len(end)?;
        written
    }

    pub(super) fn rotate(&mut self, first_seq: u64) -> Result<(), GroupFailure> {
        // Every policy, `none` too: a closed segment is synced once, so that a sync of the
        // current file ([`Journal::sync_now`]) makes the whole journal durable, and a power
        // cut under `none` loses at most the current segment's unsynced tail.
        self.file.sync_data().map_err(GroupFailure::fatal)?;
        let next = Self::create(
            self.storage.clone(),
            &self.dir,
            first_seq,
            self.segment_bytes_max,
            self.policy,
        )?;
        tracing::info!(closed = %self.path.display(), opened = %next.path.display(), "journal segment rotated");
        *self = next;
        Ok(())
    }

    /// Best effort: drops the last `bytes` appended after they failed to sync.
    pub(super) fn cut_back(&mut self, bytes: u64) {
        let good = self.len - bytes;
        if let Err(error) = self.file.set_len(good) {
            tracing::error!(%error, path = %self.path.display(), "cannot truncate unsynced tail");
        }
        self.len = good;
        self.allocated_len = good;
    }
}
