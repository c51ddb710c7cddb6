//! What the [`Journal`] handle shares between the committers, the group-commit leader and
//! the background threads: the pending frames and watermarks under the state lock, the
//! segment under its own lock, and lock-free mirrors for readers.
//!
//! Invariants:
//! - lock order: the segment lock may be held while the state lock is taken (a sync pairs
//!   the file with the watermark written into it), never the other way round; the leader
//!   drops the state lock before it takes the segment lock to write;
//! - `synced_seq <= written_seq < next_seq`; `written_seq` and `synced_seq` only grow, and
//!   `next_seq` goes back only when a journal stopped by a full disk resumes (to
//!   `written_seq + 1`, handing the discarded seqs out again);
//! - `failed` and `stopped` mirror `failure.is_some()` and `stopped.is_some()`, set under
//!   the state lock.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Condvar, Mutex};

use super::segment_writer::SegmentWriter;
use super::{JournalError, JournalStats};
use crate::config::FsyncPolicy;
use crate::journal::index::SeqIndex;

pub(super) struct PendingState {
    /// Sealed frames not yet handed to a leader, in seq order.
    pub(super) pending: Vec<u8>,
    /// A reusable buffer, swapped with `pending` by the leader to avoid allocating.
    pub(super) spare: Vec<u8>,
    /// The last seq of each appended range in `pending`, in order (a stop must tell each
    /// range's committer before its seqs are handed out again).
    pub(super) pending_lasts: Vec<u64>,
    pub(super) spare_lasts: Vec<u64>,
    pub(super) next_seq: u64,
    /// Highest seq whose frame is written to the file (page cache).
    pub(super) written_seq: u64,
    /// Highest seq known to be on stable storage.
    pub(super) synced_seq: u64,
    /// True while a leader is writing; others wait on `flushed`.
    pub(super) flushing: bool,
    /// Set for good: nothing is written again before a restart.
    pub(super) failure: Option<JournalError>,
    /// Set while the disk is full; cleared by the retry thread.
    pub(super) stopped: Option<Stopped>,
    /// True while a `journal-retry` thread is running (or about to).
    pub(super) retry_running: bool,
}

/// A journal stopped by a full disk.
pub(super) struct Stopped {
    pub(super) error: JournalError,
    /// The appended ranges `(first, last)` whose records were discarded and whose committer
    /// has not been told yet. Their seqs are handed out again only once this is empty, so a
    /// late `commit` can never mistake someone else's record for its own.
    pub(super) unanswered: Vec<(u64, u64)>,
    /// Bytes of room the retry asks for.
    pub(super) probe_bytes: u64,
}

/// Why a group could not be written.
#[derive(Debug)]
pub(super) struct GroupFailure {
    pub(super) error: io::Error,
    /// No room, and nothing of the group is left on disk: the journal may resume.
    pub(super) resumable: bool,
}

impl GroupFailure {
    pub(super) fn fatal(error: io::Error) -> Self {
        Self {
            error,
            resumable: false,
        }
    }
}

pub(super) struct Shared {
    pub(super) state: Mutex<PendingState>,
    pub(super) flushed: Condvar,
    pub(super) segment: Mutex<SegmentWriter>,
    pub(super) policy: FsyncPolicy,
    /// Mirror of the durable watermark for lock-free readers.
    pub(super) durable_seq: AtomicU64,
    /// `monotonic_ms()` when the running group write began; 0 when none is running.
    pub(super) write_started_ms: AtomicU64,
    /// Mirror of `state.failure.is_some()`.
    pub(super) failed: AtomicBool,
    /// Mirror of `state.stopped.is_some()`.
    pub(super) stopped: AtomicBool,
    pub(super) stats: JournalStats,
    /// Tells the background threads (interval sync, preallocator, retry) to finish, and
    /// wakes them.
    pub(super) stop_background_lock: Mutex<bool>,
    pub(super) stop_background_wake: Condvar,
    pub(super) retry_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(super) index: Arc<SeqIndex>,
    pub(super) dir: PathBuf,
    /// The durable watermark for async followers (`GET /v1/journal?follow=true`).
    pub(super) durable_watch: tokio::sync::watch::Sender<u64>,
}
