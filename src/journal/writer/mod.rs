//! The journal writer: assigns sequence numbers, appends frames to the current segment, and
//! makes them as durable as the fsync policy promises, with group commit.
//!
//! Shards call [`Journal::append`] (a short critical section: take the next `seq` range,
//! seal the frames, copy them to the pending buffer) and then [`Journal::commit`]. The first
//! committer that finds no write in progress becomes the leader: it takes *everything*
//! pending, from every shard, writes it with one `write` and (policy `always`) one
//! `fdatasync`, then wakes the others. So N shards waiting on the disk cost one fsync, not N.
//!
//! The file I/O goes through [`crate::journal::storage`] (the real file system by default;
//! a simulated disk that loses power in tests).
//!
//! Layout: this file owns the [`Journal`] handle, append, the group commit and the failure
//! rules below; `state.rs` what the handle shares (with the lock order); `segment_writer.rs`
//! the segment appended to (rotation, preallocation step, probe, cut back); `background.rs`
//! the interval sync, the preallocator and the disk-full retry thread; `tests/` a file per
//! concern.
//!
//! Invariants:
//! - `seq` is assigned under the state lock and frames enter the pending buffer in `seq`
//!   order, so the file holds strictly increasing sequence numbers with no gap.
//! - `durable_seq` only moves forward, and only after the bytes up to it are written (and
//!   synced, for `always`).
//! - Memory never runs ahead of disk silently: a failed group's commits fail, and the shards
//!   roll back what they had decided for it.
//!
//! Two kinds of write failure:
//! - **The disk is full** (ENOSPC or EDQUOT from the group's `write`, or from creating the
//!   next segment), and the writer could cut the file back to its last good length: memory
//!   and disk agree, nothing of the group is on disk. The journal *stops*: the group's and
//!   every pending commit fail, appends are refused, [`Journal::is_stopped`] is true (admission
//!   answers 503). A `journal-retry` thread tries every [`RETRY_INTERVAL`] to write (and cut
//!   off again) as many zeros as the failed group past the end of the file; once that
//!   succeeds, and every committer of a discarded range has been told, the seqs of the
//!   discarded records are handed out again and admission resumes by itself.
//! - **Anything else** fails the journal for good ([`Journal::is_failed`]): an `fdatasync`
//!   error above all. After a failed `fdatasync` the kernel may have dropped the dirty pages
//!   and cleared the error, so whether the group's bytes are on disk is unknowable and a retry
//!   would "succeed" over lost data; the writer cuts the group off where it can, every pending
//!   and later commit fails, and nothing is acknowledged again until a restart recovers from
//!   what is on disk. Likewise a write error other than no-room, a truncation that fails, a
//!   failed background sync (interval thread, preallocator) or a panic.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::config::FsyncPolicy;
use crate::journal::record::{self, ArchivedRecord, FrameBatch};
use crate::journal::recovery::JournalTail;
use crate::journal::storage::{FsStorage, Storage};
use crate::limits;

mod background;
mod segment_writer;
mod state;
#[cfg(test)]
mod tests;

pub use background::RETRY_INTERVAL;
use segment_writer::SegmentWriter;
use state::{GroupFailure, PendingState, Shared, Stopped};

/// The least room the retry asks for (more when the failed group was larger).
const RETRY_PROBE_BYTES_MIN: u64 = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
#[error("journal unavailable: {0}")]
pub struct JournalError(pub Arc<str>);

/// Counters for operators and benchmarks.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub writes: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos_total: AtomicU64,
    /// Each fdatasync's duration, when metrics are on (the engine sets it at start-up).
    pub fsync_seconds: std::sync::OnceLock<prometheus::Histogram>,
}

impl JournalStats {
    fn record_fsync(&self, elapsed: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos_total
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if let Some(histogram) = self.fsync_seconds.get() {
            histogram.observe(elapsed.as_secs_f64());
        }
    }
}

/// The append side of the journal. Cheap to clone; all clones write the same files.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

/// The first and last seq given to one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl Journal {
    /// Opens the journal for appending after recovery has validated (and trimmed) its tail.
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
        segment_bytes_max: u64,
        tail: JournalTail,
    ) -> io::Result<Self> {
        Self::open_with(Arc::new(FsStorage), dir, policy, segment_bytes_max, tail)
    }

    /// [`Journal::open`] over another [`Storage`] (a simulated disk in tests).
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        policy: FsyncPolicy,
        segment_bytes_max: u64,
        tail: JournalTail,
    ) -> io::Result<Self> {
        let segment = match tail.segment {
            Some((path, first_seq, len)) => SegmentWriter::open(
                storage,
                dir,
                path,
                first_seq,
                len,
                segment_bytes_max,
                policy,
            )?,
            None => SegmentWriter::create(storage, dir, tail.next_seq, segment_bytes_max, policy)
                .map_err(|failure| failure.error)?,
        };
        let durable = tail.next_seq - 1;
        let shared = Arc::new(Shared {
            state: Mutex::new(PendingState {
                pending: Vec::with_capacity(1 << 20),
                spare: Vec::with_capacity(1 << 20),
                pending_lasts: Vec::with_capacity(1024),
                spare_lasts: Vec::with_capacity(1024),
                next_seq: tail.next_seq,
                written_seq: durable,
                synced_seq: durable,
                flushing: false,
                failure: None,
                stopped: None,
                retry_running: false,
            }),
            flushed: Condvar::new(),
            segment: Mutex::new(segment),
            policy,
            durable_seq: AtomicU64::new(durable),
            write_started_ms: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stats: JournalStats::default(),
            stop_background_lock: Mutex::new(false),
            stop_background_wake: Condvar::new(),
            retry_thread: Mutex::new(None),
            index: tail.index.clone(),
            dir: dir.to_owned(),
            durable_watch: tokio::sync::watch::Sender::new(durable),
        });
        Ok(Self { shared })
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.shared.policy
    }

    /// Highest seq a reader may see: synced for `always`, written for the other policies.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// Reads one durable record by its seq (the order history's random reads): `visit` sees
    /// the validated archive in place. `Ok(false)` for a seq not durable or not in the journal.
    pub fn read_with(&self, seq: u64, visit: &mut dyn FnMut(&ArchivedRecord)) -> io::Result<bool> {
        if seq == 0 || seq > self.durable_seq() {
            return Ok(false);
        }
        self.shared.index.read(&self.shared.dir, seq, visit)
    }

    /// Blocks until a record past `after` is durable, the journal fails, or `timeout`
    /// passes; returns the durable watermark then. For followers on threads.
    pub fn wait_durable_past(&self, after: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        while self.durable_seq() <= after && state.failure.is_none() {
            if self
                .shared
                .flushed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                break;
            }
        }
        self.durable_seq()
    }

    /// Where a reader should start to reach `seq` quickly (see [`crate::journal::SeqIndex`]).
    pub fn start_for(&self, seq: u64) -> Option<(u64, u64)> {
        self.shared.index.start_for(seq)
    }

    /// The durable watermark as a watch channel, for async followers.
    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.durable_watch.subscribe()
    }

    /// True while the journal admits nothing: it failed for good ([`Journal::is_failed`]), or
    /// the disk is full and it stopped until a write succeeds again. Admission answers 503
    /// and `/readyz` says `journal_unwritable` while this holds.
    pub fn is_stopped(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire) || self.shared.stopped.load(Ordering::Acquire)
    }

    /// True once an I/O error (a failed `fdatasync` above all), a failed background sync or
    /// a panic stopped the journal until a restart.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// Gives the frames of `batch` their sequence numbers and queues them for writing.
    /// Nothing is durable until [`Journal::commit`] returns `Ok` for `range.last`. Every
    /// range appended must be committed (its last seq, or any of its seqs): after a stop
    /// for a full disk, the discarded seqs are handed out again only once each range's
    /// committer has been told its commit failed.
    pub fn append(&self, batch: &FrameBatch) -> Result<SeqRange, JournalError> {
        assert!(!batch.is_empty(), "append of an empty batch");
        let mut state = self.shared.state.lock();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        if let Some(stopped) = &state.stopped {
            return Err(stopped.error.clone());
        }
        let first = state.next_seq;
        let start = state.pending.len();
        state.pending.extend_from_slice(batch.as_bytes());
        let sealed = record::seal_frames(&mut state.pending[start..], first);
        assert_eq!(
            sealed,
            batch.len() as u64,
            "sealed frame count differs from the batch"
        );
        let last = first + sealed - 1;
        state.next_seq = last + 1;
        state.pending_lasts.push(last);
        Ok(SeqRange { first, last })
    }

    /// Returns once every record up to `seq` is as durable as the policy promises, writing
    /// (and syncing) as the group-commit leader when no other committer is doing so.
    pub fn commit(&self, seq: u64) -> Result<(), JournalError> {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        loop {
            if let Some(outcome) = commit_outcome(shared.policy, &mut state, seq) {
                return outcome;
            }
            if state.flushing {
                shared.flushed.wait(&mut state);
                continue;
            }
            assert!(
                seq < state.next_seq,
                "commit of seq {seq} that was never appended"
            );
            state = self.lead_group(state);
        }
    }

    /// The group-commit leader's turn: takes everything pending right now, from every shard,
    /// writes it (and syncs it, policy `always`) outside the state lock, and records how that
    /// went for every committer waiting on it. Returns with the state lock held again.
    fn lead_group<'a>(
        &'a self,
        mut state: MutexGuard<'a, PendingState>,
    ) -> MutexGuard<'a, PendingState> {
        let shared = &*self.shared;
        state.flushing = true;
        let spare = std::mem::take(&mut state.spare);
        let group = std::mem::replace(&mut state.pending, spare);
        let spare_lasts = std::mem::take(&mut state.spare_lasts);
        let group_lasts = std::mem::replace(&mut state.pending_lasts, spare_lasts);
        let group_first = state.written_seq + 1;
        let group_last = state.next_seq - 1;
        drop(state);

        // A panic while writing must not leave `flushing` set (every committer would wait
        // forever): it becomes an I/O failure, which fails the journal.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.write_group(&group, group_first, group_last)
        }))
        .unwrap_or_else(|_| {
            Err(GroupFailure::fatal(io::Error::other(
                "journal writer panicked",
            )))
        });

        let mut state = shared.state.lock();
        state.flushing = false;
        let group_len = group.len() as u64;
        let mut group = group;
        group.clear();
        state.spare = group;
        let mut group_lasts = group_lasts;
        let mut spawn_retry = false;
        match result {
            Ok(()) => {
                state.written_seq = group_last;
                if shared.policy == FsyncPolicy::Always {
                    state.synced_seq = group_last;
                }
                shared.durable_seq.store(group_last, Ordering::Release);
                shared.durable_watch.send_replace(group_last);
            }
            Err(GroupFailure {
                error,
                resumable: true,
            }) if state.failure.is_none() => {
                tracing::error!(%error, first_seq = group_first, last_seq = group_last,
                    "journal write failed for lack of room; admission stops until a \
                     write succeeds");
                let discarded = Discarded {
                    first: group_first,
                    lasts: &mut group_lasts,
                    bytes: group_len,
                };
                spawn_retry = self.stop_for_room(&mut state, &error, discarded);
            }
            Err(GroupFailure { error, .. }) => {
                tracing::error!(%error, first_seq = group_first, last_seq = group_last,
                    "journal write failed; admission stops until restart");
                self.fail_for_good(&mut state, &error);
            }
        }
        group_lasts.clear();
        state.spare_lasts = group_lasts;
        shared.flushed.notify_all();
        if spawn_retry {
            drop(state);
            self.spawn_retry();
            state = shared.state.lock();
        }
        state
    }

    /// The rule for a group that failed for lack of room with nothing of it left on disk:
    /// the group and everything appended behind it are discarded, the journal stops, and
    /// each discarded range waits for its committer to be told. True when the caller must
    /// start the retry thread.
    fn stop_for_room(
        &self,
        state: &mut PendingState,
        error: &io::Error,
        discarded: Discarded<'_>,
    ) -> bool {
        discarded.lasts.append(&mut state.pending_lasts);
        let mut first = discarded.first;
        let unanswered = discarded
            .lasts
            .iter()
            .map(|&last| {
                let range = (first, last);
                first = last + 1;
                range
            })
            .collect();
        state.pending.clear();
        state.stopped = Some(Stopped {
            error: JournalError(
                format!("{error}; admission resumes once the journal can be written").into(),
            ),
            unanswered,
            probe_bytes: discarded
                .bytes
                .clamp(RETRY_PROBE_BYTES_MIN, limits::PREALLOCATE_CHUNK_BYTES),
        });
        self.shared.stopped.store(true, Ordering::Release);
        let spawn_retry = !state.retry_running;
        state.retry_running = true;
        spawn_retry
    }

    /// The rule for any other failed group: the journal fails for good, and everything
    /// pending is dropped (its commits fail).
    fn fail_for_good(&self, state: &mut PendingState, error: &io::Error) {
        if state.failure.is_none() {
            state.failure = Some(JournalError(error.to_string().into()));
        }
        state.pending.clear();
        state.pending_lasts.clear();
        self.shared.failed.store(true, Ordering::Release);
    }

    fn write_group(&self, group: &[u8], first_seq: u64, last_seq: u64) -> Result<(), GroupFailure> {
        let shared = &*self.shared;
        shared
            .write_started_ms
            .store(monotonic_ms(), Ordering::Release);
        let result = self.write_and_sync(group, first_seq, last_seq);
        shared.write_started_ms.store(0, Ordering::Release);
        result
    }

    /// How long the current group write (with its fsync) has been running, if one is. A disk
    /// that hangs shows here long before anything fails: `/readyz` reports it.
    pub fn write_stalled_for(&self) -> Option<Duration> {
        self.write_stalled_at(monotonic_ms())
    }

    fn write_stalled_at(&self, now_ms: u64) -> Option<Duration> {
        let started = self.shared.write_started_ms.load(Ordering::Acquire);
        (started != 0).then(|| Duration::from_millis(now_ms.saturating_sub(started)))
    }

    fn write_and_sync(
        &self,
        group: &[u8],
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), GroupFailure> {
        let shared = &*self.shared;
        let mut segment = shared.segment.lock();
        let offset = segment.append(group, first_seq)?;
        shared
            .index
            .note_group(group, first_seq, last_seq, segment.first_seq, offset);
        shared.stats.writes.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .bytes
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        shared
            .stats
            .records
            .fetch_add(last_seq - first_seq + 1, Ordering::Relaxed);
        if shared.policy == FsyncPolicy::Always {
            let started = Instant::now();
            if let Err(error) = segment.file.sync_data() {
                // After a failed fdatasync the kernel may have dropped the dirty pages: the
                // bytes can neither be trusted nor retried. Cut them off and fail for good.
                segment.cut_back(group.len() as u64);
                return Err(GroupFailure::fatal(error));
            }
            shared.stats.record_fsync(started.elapsed());
        }
        Ok(())
    }

    /// Highest seq known to be on stable storage (equal to [`Journal::durable_seq`] with
    /// `always`; behind it with `interval` and `none` until the next sync).
    pub fn synced_seq(&self) -> u64 {
        self.shared.state.lock().synced_seq
    }

    /// Makes every record up to `seq` durable on disk whatever the policy: a sync when
    /// [`Journal::synced_seq`] is below it. A checkpoint and a consumer offset must never
    /// stand for records a power cut could take back.
    pub fn sync_through(&self, seq: u64) -> Result<(), JournalError> {
        if self.synced_seq() >= seq {
            return Ok(());
        }
        self.sync_now()?;
        let synced = self.synced_seq();
        if synced < seq {
            return Err(JournalError(
                format!("seq {seq} is not written yet (synced through {synced})").into(),
            ));
        }
        Ok(())
    }

    /// Syncs everything written so far (policy `interval` calls this on a timer; shutdown
    /// calls it for every policy, a checkpoint or a consumer offset commit through
    /// [`Journal::sync_through`]). Runs the fdatasync outside the segment lock, so appends
    /// are not blocked behind it. Rotation synced every closed segment and the new one's
    /// name, so syncing the current file makes the whole journal durable.
    pub fn sync_now(&self) -> Result<(), JournalError> {
        let shared = &*self.shared;
        let (file, written) = {
            // Holding the segment lock while reading `written_seq` pairs the file with a
            // watermark that is entirely inside it (rotation syncs the old file, under every
            // policy).
            let segment = shared.segment.lock();
            let written = shared.state.lock().written_seq;
            (segment.file.clone(), written)
        };
        let started = Instant::now();
        if let Err(error) = file.sync_data() {
            let reason = format!("fdatasync failed: {error}");
            self.poison(reason.clone());
            return Err(JournalError(reason.into()));
        }
        shared.stats.record_fsync(started.elapsed());
        let mut state = shared.state.lock();
        state.synced_seq = state.synced_seq.max(written);
        Ok(())
    }

    /// Fails the journal for good: every pending and later commit fails, admission stops
    /// until a restart. For failures found outside a commit (a background fdatasync, a shard
    /// that died).
    pub fn poison(&self, reason: String) {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.failure.is_none() {
            tracing::error!(%reason, "journal failed; admission stops until restart");
            state.failure = Some(JournalError(reason.into()));
        }
        shared.failed.store(true, Ordering::Release);
        shared.flushed.notify_all();
    }

    /// Stops the background threads (interval sync, retry) and syncs whatever is written,
    /// for shutdown. A journal stopped by a full disk closes cleanly: what it wrote is whole.
    pub fn close(&self) -> Result<(), JournalError> {
        *self.shared.stop_background_lock.lock() = true;
        self.shared.stop_background_wake.notify_all();
        let retry = self.shared.retry_thread.lock().take();
        if let Some(retry) = retry {
            let _ = retry.join();
        }
        if let Some(failure) = self.shared.state.lock().failure.clone() {
            return Err(failure);
        }
        self.sync_now()
    }
}

/// The seqs of a group discarded for lack of room: its first seq, the last seq of each
/// appended range in it (those appended behind it are added), and its size.
struct Discarded<'a> {
    first: u64,
    lasts: &'a mut Vec<u64>,
    bytes: u64,
}

/// What a commit of `seq` returns now, if it need not wait or lead: `Ok` once `seq` is as
/// durable as `policy` promises, the journal's error once it failed or stopped.
fn commit_outcome(
    policy: FsyncPolicy,
    state: &mut PendingState,
    seq: u64,
) -> Option<Result<(), JournalError>> {
    // Durability first: a record that reached the promised durability is acknowledged even
    // if a later write has failed since (its bytes are on disk and readers see them; rolling
    // it back would make memory disagree with the journal).
    let done = match policy {
        FsyncPolicy::Always => state.synced_seq >= seq,
        FsyncPolicy::Interval | FsyncPolicy::None => state.written_seq >= seq,
    };
    if done {
        return Some(Ok(()));
    }
    if let Some(failure) = &state.failure {
        return Some(Err(failure.clone()));
    }
    if let Some(stopped) = &mut state.stopped {
        // Nothing is appended while stopped, so every seq not yet written was discarded:
        // this committer's range is one of them. It is told now.
        if let Some(index) = stopped
            .unanswered
            .iter()
            .position(|&(first, last)| (first..=last).contains(&seq))
        {
            stopped.unanswered.swap_remove(index);
        }
        return Some(Err(stopped.error.clone()));
    }
    None
}

/// Milliseconds on a monotonic clock (immune to wall-clock jumps), never 0.
fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
