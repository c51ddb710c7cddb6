//! The writer's background threads, each stopped by [`Journal::close`]:
//!
//! - `journal-sync` (policy `interval`): an `fdatasync` of what is written, on a timer;
//! - `journal-prealloc` (policies that fsync): synced zeros kept ahead of the writer in the
//!   current segment, so a group commit's `fdatasync` overwrites allocated blocks;
//! - `journal-retry` (only while the disk is full): every [`RETRY_INTERVAL`], a probe for
//!   room; once it succeeds, and every committer of a discarded range has been told, the
//!   discarded seqs are handed out again and admission resumes.
//!
//! Invariants: a failed background `fdatasync` fails the journal for good (it may be the
//! writer's write-back error, see the failure rules in [`super`]); the preallocator writes
//! only under the segment lock and only past the logical end; a stopped journal resumes only
//! from the retry thread, with nothing pending and no leader writing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Journal;
use crate::config::FsyncPolicy;
use crate::journal::storage::is_out_of_space;

/// How often a journal stopped by a full disk tries to write again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// How often the preallocator looks at the room ahead when there is enough.
const PREALLOCATE_POLL: Duration = Duration::from_millis(5);

impl Journal {
    /// Starts the background fdatasync thread of policy `interval`; a no-op otherwise.
    pub fn spawn_interval_sync(&self, interval: Duration) -> Option<std::thread::JoinHandle<()>> {
        if self.shared.policy != FsyncPolicy::Interval {
            return None;
        }
        let journal = self.clone();
        let handle = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || {
                while !journal.wait_for_stop(interval) {
                    if journal.sync_now().is_err() {
                        return;
                    }
                }
            })
            .expect("spawn journal-sync thread");
        Some(handle)
    }

    /// Starts the preallocator for the policies that fsync: a thread that keeps
    /// `PREALLOCATE_AHEAD_BYTES` of synced zeros ahead of the writer in the current segment.
    /// An `fdatasync` that only overwrites existing blocks need not commit a new file size,
    /// which makes the group commit's fsync markedly cheaper (see BENCHMARKS.md). A failure
    /// to write zeros is only logged: the writer appends without room ahead and meets any
    /// real disk problem itself; for lack of room the preallocator tries again every
    /// [`RETRY_INTERVAL`].
    pub fn spawn_preallocator(&self) -> Option<std::thread::JoinHandle<()>> {
        if self.shared.policy == FsyncPolicy::None {
            return None;
        }
        let journal = self.clone();
        let handle = std::thread::Builder::new()
            .name("journal-prealloc".into())
            .spawn(move || {
                let shared = &*journal.shared;
                let mut out_of_room = false;
                loop {
                    let step = shared.segment.lock().preallocate_step();
                    let mut wait = PREALLOCATE_POLL;
                    match step {
                        Ok(Some(file)) => {
                            // Linux reports a write-back error once per open file, to the first
                            // descriptor that syncs: this one shares the writer's open file, so
                            // an error here may be the writer's. Treat it as the writer's.
                            if let Err(error) = file.sync_data() {
                                journal.poison(format!("fdatasync failed: {error}"));
                                return;
                            }
                            out_of_room = false;
                            continue;
                        }
                        Ok(None) => {}
                        Err(error) if is_out_of_space(&error) => {
                            if !out_of_room {
                                tracing::warn!(%error, "journal preallocation paused: no room");
                                out_of_room = true;
                            }
                            wait = RETRY_INTERVAL;
                        }
                        Err(error) => {
                            // The writer appends without room ahead and meets the disk itself.
                            tracing::warn!(%error, "journal preallocation stopped");
                            return;
                        }
                    }
                    if journal.wait_for_stop(wait) {
                        return;
                    }
                }
            })
            .expect("spawn journal-prealloc thread");
        Some(handle)
    }

    /// Starts the `journal-retry` thread of a journal stopped by a full disk.
    pub(super) fn spawn_retry(&self) {
        let journal = self.clone();
        let spawned = std::thread::Builder::new()
            .name("journal-retry".into())
            .spawn(move || {
                while !journal.wait_for_stop(RETRY_INTERVAL) {
                    if journal.try_resume() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                // A previous retry thread has resumed and is finishing: no need to join it.
                *self.shared.retry_thread.lock() = Some(handle);
            }
            Err(error) => self.poison(format!("cannot start the journal retry thread: {error}")),
        }
    }

    /// One retry of a stopped journal: writes (and cuts off) zeros past the end of the file,
    /// and resumes admission if that worked. True when the retry thread is done (resumed, or
    /// the journal failed for good meanwhile).
    fn try_resume(&self) -> bool {
        let shared = &*self.shared;
        let probe_bytes = {
            let state = shared.state.lock();
            if state.failure.is_some() {
                return true;
            }
            let Some(stopped) = &state.stopped else {
                return true;
            };
            if !stopped.unanswered.is_empty() {
                // A committer of a discarded range has not called yet: its seqs may not be
                // handed out again before it is told.
                return false;
            }
            stopped.probe_bytes
        };
        let probe = shared.segment.lock().probe(probe_bytes);
        match probe {
            Ok(()) => {
                let mut state = shared.state.lock();
                if state.failure.is_some() {
                    return true;
                }
                debug_assert!(state.pending.is_empty() && !state.flushing);
                state.stopped = None;
                state.retry_running = false;
                state.next_seq = state.written_seq + 1;
                shared.stopped.store(false, Ordering::Release);
                tracing::info!(
                    next_seq = state.next_seq,
                    "journal writable again; admission resumes"
                );
                true
            }
            Err(error) if is_out_of_space(&error) => false,
            Err(error) => {
                self.poison(format!("journal retry failed: {error}"));
                true
            }
        }
    }

    /// Sleeps up to `timeout`, returning early (true) once `close` has been called.
    fn wait_for_stop(&self, timeout: Duration) -> bool {
        let mut stopped = self.shared.stop_background_lock.lock();
        if !*stopped {
            self.shared
                .stop_background_wake
                .wait_for(&mut stopped, timeout);
        }
        *stopped
    }
}
