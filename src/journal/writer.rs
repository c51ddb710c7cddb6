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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::config::FsyncPolicy;
use crate::journal::index::SeqIndex;
use crate::journal::record::{self, ArchivedRecord, FrameBatch, SEGMENT_HEADER_BYTES};
use crate::journal::recovery::JournalTail;
use crate::journal::segment::{self, create_segment};
use crate::journal::storage::{FsStorage, SegmentFile, Storage, is_out_of_space};
use crate::limits;

/// How often a journal stopped by a full disk tries to write again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

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

struct PendingState {
    /// Sealed frames not yet handed to a leader, in seq order.
    pending: Vec<u8>,
    /// A reusable buffer, swapped with `pending` by the leader to avoid allocating.
    spare: Vec<u8>,
    /// The last seq of each appended range in `pending`, in order (a stop must tell each
    /// range's committer before its seqs are handed out again).
    pending_lasts: Vec<u64>,
    spare_lasts: Vec<u64>,
    next_seq: u64,
    /// Highest seq whose frame is written to the file (page cache).
    written_seq: u64,
    /// Highest seq known to be on stable storage.
    synced_seq: u64,
    /// True while a leader is writing; others wait on `flushed`.
    flushing: bool,
    /// Set for good: nothing is written again before a restart.
    failure: Option<JournalError>,
    /// Set while the disk is full; cleared by the retry thread.
    stopped: Option<Stopped>,
    /// True while a `journal-retry` thread is running (or about to).
    retry_running: bool,
}

/// A journal stopped by a full disk.
struct Stopped {
    error: JournalError,
    /// The appended ranges `(first, last)` whose records were discarded and whose committer
    /// has not been told yet. Their seqs are handed out again only once this is empty, so a
    /// late `commit` can never mistake someone else's record for its own.
    unanswered: Vec<(u64, u64)>,
    /// Bytes of room the retry asks for.
    probe_bytes: u64,
}

/// Why a group could not be written.
#[derive(Debug)]
struct GroupFailure {
    error: io::Error,
    /// No room, and nothing of the group is left on disk: the journal may resume.
    resumable: bool,
}

impl GroupFailure {
    fn fatal(error: io::Error) -> Self {
        Self {
            error,
            resumable: false,
        }
    }
}

struct SegmentWriter {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    file: Arc<dyn SegmentFile>,
    path: PathBuf,
    /// The seq of the segment's first frame (its name).
    first_seq: u64,
    /// Logical end: where the next frame goes. Everything before it is frames.
    len: u64,
    /// Physical size: `[len, allocated_len)` is zeros written ahead by the preallocator.
    allocated_len: u64,
    segment_bytes_max: u64,
    policy: FsyncPolicy,
}

struct Shared {
    state: Mutex<PendingState>,
    flushed: Condvar,
    segment: Mutex<SegmentWriter>,
    policy: FsyncPolicy,
    /// Mirror of the durable watermark for lock-free readers.
    durable_seq: AtomicU64,
    /// `monotonic_ms()` when the running group write began; 0 when none is running.
    write_started_ms: AtomicU64,
    /// Mirror of `state.failure.is_some()`.
    failed: AtomicBool,
    /// Mirror of `state.stopped.is_some()`.
    stopped: AtomicBool,
    stats: JournalStats,
    /// Tells the background threads (interval sync, preallocator, retry) to finish, and
    /// wakes them.
    stop_background_lock: Mutex<bool>,
    stop_background_wake: Condvar,
    retry_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    index: Arc<SeqIndex>,
    dir: PathBuf,
    /// The durable watermark for async followers (`GET /v1/journal?follow=true`).
    durable_watch: tokio::sync::watch::Sender<u64>,
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
            Some((path, first_seq, len)) => {
                let file = storage.open_existing(&path)?;
                // Recovery ends the segment at its last frame; zeros after it are room a
                // preallocator wrote before the restart.
                let allocated_len = file.size()?.max(len);
                SegmentWriter {
                    storage,
                    dir: dir.to_owned(),
                    file,
                    path,
                    first_seq,
                    len,
                    allocated_len,
                    segment_bytes_max,
                    policy,
                }
            }
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

    /// Where a reader should start to reach `seq` quickly (see [`SeqIndex`]).
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
            // Durability first: a record that reached the promised durability is acknowledged
            // even if a later write has failed since (its bytes are on disk and readers see
            // them; rolling it back would make memory disagree with the journal).
            let done = match shared.policy {
                FsyncPolicy::Always => state.synced_seq >= seq,
                FsyncPolicy::Interval | FsyncPolicy::None => state.written_seq >= seq,
            };
            if done {
                return Ok(());
            }
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            if let Some(stopped) = &mut state.stopped {
                // Nothing is appended while stopped, so every seq not yet written was
                // discarded: this committer's range is one of them. It is told now.
                if let Some(index) = stopped
                    .unanswered
                    .iter()
                    .position(|&(first, last)| (first..=last).contains(&seq))
                {
                    stopped.unanswered.swap_remove(index);
                }
                return Err(stopped.error.clone());
            }
            if state.flushing {
                shared.flushed.wait(&mut state);
                continue;
            }
            assert!(
                seq < state.next_seq,
                "commit of seq {seq} that was never appended"
            );
            // Become the leader for everything pending right now.
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

            state = shared.state.lock();
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
                    // The group and everything appended behind it are discarded.
                    group_lasts.append(&mut state.pending_lasts);
                    let mut first = group_first;
                    let unanswered = group_lasts
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
                            format!("{error}; admission resumes once the journal can be written")
                                .into(),
                        ),
                        unanswered,
                        probe_bytes: group_len
                            .clamp(RETRY_PROBE_BYTES_MIN, limits::PREALLOCATE_CHUNK_BYTES),
                    });
                    shared.stopped.store(true, Ordering::Release);
                    spawn_retry = !state.retry_running;
                    state.retry_running = true;
                }
                Err(GroupFailure { error, .. }) => {
                    tracing::error!(%error, first_seq = group_first, last_seq = group_last,
                        "journal write failed; admission stops until restart");
                    if state.failure.is_none() {
                        state.failure = Some(JournalError(error.to_string().into()));
                    }
                    state.pending.clear();
                    state.pending_lasts.clear();
                    shared.failed.store(true, Ordering::Release);
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
        }
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
    fn spawn_retry(&self) {
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

impl SegmentWriter {
    fn create(
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
    fn append(&mut self, group: &[u8], first_seq: u64) -> Result<u64, GroupFailure> {
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
    fn preallocate_step(&mut self) -> io::Result<Option<Arc<dyn SegmentFile>>> {
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
    fn probe(&mut self, bytes: u64) -> io::Result<()> {
        let end = self.allocated_len.max(self.len);
        let bytes = bytes.min(limits::PREALLOCATE_CHUNK_BYTES);
        let written = segment::write_zeros(&*self.file, end, end + bytes);
        self.file.set_len(end)?;
        written
    }

    fn rotate(&mut self, first_seq: u64) -> Result<(), GroupFailure> {
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
    fn cut_back(&mut self, bytes: u64) {
        let good = self.len - bytes;
        if let Err(error) = self.file.set_len(good) {
            tracing::error!(%error, path = %self.path.display(), "cannot truncate unsynced tail");
        }
        self.len = good;
        self.allocated_len = good;
    }
}

/// Milliseconds on a monotonic clock (immune to wall-clock jumps), never 0.
fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// How often the preallocator looks at the room ahead when there is enough.
const PREALLOCATE_POLL: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::journal::record::{
        ArchivedRecord, Event, FrameCheck, OrderAccepted, Record, SkuChanged, check_frame,
        parse_segment_header,
    };
    use crate::journal::recovery::{RecoveryReport, recover};
    use crate::journal::segment::{list_segments, segment_file_name};
    use crate::limits;
    use crate::order::Payment;

    fn order(thread: usize, n: usize, address_bytes: usize) -> Record {
        let address =
            (address_bytes > 0).then(|| format!(r#"{{"street":"{}"}}"#, "x".repeat(address_bytes)));
        Record {
            at_ms: 1_700_000_000_000 + n as u64,
            event: Event::Accepted(OrderAccepted {
                order_id: format!("t{thread}-{n}"),
                user_id: format!("user-{thread}"),
                sku: "SKU-1".into(),
                qty: 1 + (n % 5) as u32,
                payment: [Payment::Prepaid, Payment::Escrow, Payment::Cod][n % 3],
                address,
            }),
        }
    }

    fn sku(n: usize) -> Record {
        Record {
            at_ms: 1_700_000_000_000,
            event: Event::Sku(SkuChanged {
                sku: format!("SKU-{n}"),
                slot_index: n as u32,
                stock_total: 1000,
                per_user_limit: 2,
                max_per_order: 2,
                payment_timeout_s: 900,
            }),
        }
    }

    fn batch_of(records: &[Record]) -> FrameBatch {
        let mut batch = FrameBatch::default();
        for record in records {
            batch.push(record).expect("record encodes");
        }
        batch
    }

    fn new_tail() -> JournalTail {
        JournalTail {
            segment: None,
            next_seq: 1,
            index: Default::default(),
        }
    }

    fn to_owned_record(record: &ArchivedRecord) -> Record {
        rkyv::deserialize::<Record, rkyv::rancor::Error>(record).expect("record deserializes")
    }

    /// Recovers `dir` and returns the report and every record, in the order recovery saw them.
    fn recover_all(dir: &Path) -> (RecoveryReport, Vec<(u64, Record)>) {
        let mut records = Vec::new();
        let report = recover(dir, &mut |seq, record| {
            records.push((seq, to_owned_record(record)));
            Ok(())
        })
        .expect("recovery succeeds");
        (report, records)
    }

    /// Tiny deterministic generator, so failures reproduce.
    fn next_rand(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn concurrent_appends_land_in_order(policy: FsyncPolicy) {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 500;
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(
            dir.path(),
            policy,
            limits::SEGMENT_BYTES_DEFAULT,
            new_tail(),
        )
        .unwrap();

        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (thread as u64 + 1);
                    let mut ranges = Vec::new();
                    let mut n = 0;
                    while n < PER_THREAD {
                        let size = (1 + next_rand(&mut rng) % 8) as usize;
                        let size = size.min(PER_THREAD - n);
                        let records: Vec<_> = (n..n + size).map(|i| order(thread, i, 0)).collect();
                        let range = journal.append(&batch_of(&records)).unwrap();
                        assert_eq!(range.last - range.first + 1, size as u64);
                        journal.commit(range.last).unwrap();
                        assert!(journal.durable_seq() >= range.last);
                        ranges.push((range, n));
                        n += size;
                    }
                    ranges
                })
            })
            .collect();
        let per_thread: Vec<Vec<(SeqRange, usize)>> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();

        let total = (THREADS * PER_THREAD) as u64;
        let commits: usize = per_thread.iter().map(Vec::len).sum();
        assert_eq!(journal.durable_seq(), total);
        let stats = journal.stats();
        assert_eq!(stats.records.load(Ordering::Relaxed), total);
        let writes = stats.writes.load(Ordering::Relaxed);
        let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
        assert!(
            writes <= commits as u64,
            "{writes} writes for {commits} commits"
        );
        match policy {
            FsyncPolicy::Always => {
                // One fsync per group, and a group carries one commit or more.
                assert_eq!(fsyncs, writes);
                assert!(fsyncs <= commits as u64);
                println!(
                    "group commit: {fsyncs} fsyncs for {commits} commits ({:.2} commits per fsync)",
                    commits as f64 / fsyncs.max(1) as f64
                );
            }
            _ => assert_eq!(fsyncs, 0),
        }

        // Every seq in 1..=total was handed out exactly once, and each thread's ranges rise.
        let mut seen = HashSet::new();
        let mut owner = vec![(usize::MAX, usize::MAX); total as usize + 1];
        for (thread, ranges) in per_thread.iter().enumerate() {
            let mut previous_last = 0;
            for (range, first_n) in ranges {
                assert!(
                    range.first > previous_last,
                    "thread {thread} went backwards"
                );
                previous_last = range.last;
                for seq in range.first..=range.last {
                    assert!(seen.insert(seq), "seq {seq} handed out twice");
                    owner[seq as usize] = (thread, first_n + (seq - range.first) as usize);
                }
            }
        }
        assert_eq!(seen.len() as u64, total);
        assert!(seen.iter().all(|seq| (1..=total).contains(seq)));

        journal.close().unwrap();
        let (report, records) = recover_all(dir.path());
        assert_eq!(report.records, total);
        assert_eq!(report.tail.next_seq, total + 1);
        assert!(report.truncated.is_none());
        let mut next_of_thread = [0usize; THREADS];
        for (index, (seq, record)) in records.iter().enumerate() {
            assert_eq!(*seq, index as u64 + 1, "seqs are gap-free and increasing");
            let (thread, n) = owner[*seq as usize];
            assert_eq!(n, next_of_thread[thread], "thread {thread} out of order");
            next_of_thread[thread] += 1;
            assert_eq!(record, &order(thread, n, 0), "seq {seq}");
        }
        assert_eq!(next_of_thread, [PER_THREAD; THREADS]);
    }

    #[test]
    fn concurrent_appends_with_fsync_always_are_gap_free_ordered_and_share_fsyncs() {
        concurrent_appends_land_in_order(FsyncPolicy::Always);
    }

    #[test]
    fn concurrent_appends_with_fsync_none_are_gap_free_ordered_and_recovered() {
        concurrent_appends_land_in_order(FsyncPolicy::None);
    }

    /// Walks a segment file's frames; panics on anything but whole valid frames.
    fn frames_of(path: &Path) -> (u64, Vec<u64>) {
        let bytes = std::fs::read(path).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let first_seq = parse_segment_header(&aligned).expect("segment header");
        let mut seqs = Vec::new();
        let mut offset = SEGMENT_HEADER_BYTES;
        loop {
            match check_frame(&aligned, offset) {
                FrameCheck::Valid {
                    seq, next_offset, ..
                } => {
                    assert_eq!(next_offset % record::FRAME_ALIGN, 0);
                    seqs.push(seq);
                    offset = next_offset;
                }
                FrameCheck::End => break,
                other => panic!("{}: at byte {offset}: {other:?}", path.display()),
            }
        }
        (first_seq, seqs)
    }

    #[test]
    fn small_segments_rotate_without_splitting_records_and_reopen_continues_the_seq() {
        let dir = tempfile::tempdir().unwrap();
        let segment_max = limits::SEGMENT_BYTES_MIN;
        let journal =
            Journal::open(dir.path(), FsyncPolicy::None, segment_max, new_tail()).unwrap();
        let mut written = Vec::new();
        let mut rng = 7u64;
        while written.len() < 1500 {
            let size = (1 + next_rand(&mut rng) % 8) as usize;
            let records: Vec<_> = (written.len()..written.len() + size)
                .map(|n| order(0, n, (n * 37) % 300))
                .collect();
            let range = journal.append(&batch_of(&records)).unwrap();
            assert_eq!(range.first, written.len() as u64 + 1);
            journal.commit(range.last).unwrap();
            written.extend(records);
        }
        journal.close().unwrap();
        drop(journal);

        let segments = list_segments(dir.path()).unwrap();
        assert!(
            segments.len() >= 4,
            "expected several segments, got {}",
            segments.len()
        );
        let mut expected_first = 1;
        for (index, (name_seq, path)) in segments.iter().enumerate() {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(name, segment_file_name(*name_seq));
            let (header_seq, seqs) = frames_of(path);
            assert_eq!(header_seq, *name_seq, "{name}: header and name agree");
            assert_eq!(
                *name_seq, expected_first,
                "{name} is named after its first seq"
            );
            assert!(!seqs.is_empty(), "{name} holds records");
            for (i, seq) in seqs.iter().enumerate() {
                assert_eq!(*seq, name_seq + i as u64, "{name}: frame {i}");
            }
            expected_first = name_seq + seqs.len() as u64;
            let len = std::fs::metadata(path).unwrap().len();
            if index + 1 < segments.len() {
                // Groups are far smaller than a segment, so rotation keeps each file under
                // its target.
                assert!(len <= segment_max, "{name} is {len} bytes");
            }
        }
        assert_eq!(expected_first, written.len() as u64 + 1);

        let (report, records) = recover_all(dir.path());
        assert_eq!(report.segments, segments.len());
        assert_eq!(records.len(), written.len());
        for (index, ((seq, record), expected)) in records.iter().zip(&written).enumerate() {
            assert_eq!(*seq, index as u64 + 1);
            assert_eq!(record, expected);
        }
        let tail = report.tail.clone();
        let (tail_path, tail_first, tail_len) = tail.segment.clone().unwrap();
        assert_eq!(tail_path, segments.last().unwrap().1);
        assert_eq!(tail_first, segments.last().unwrap().0);
        assert_eq!(tail_len, std::fs::metadata(&tail_path).unwrap().len());
        assert_eq!(tail.next_seq, written.len() as u64 + 1);

        // Reopen where recovery left off: the seq continues, into the same segment and on
        // into new ones.
        let journal = Journal::open(dir.path(), FsyncPolicy::Always, segment_max, tail).unwrap();
        assert_eq!(journal.durable_seq(), written.len() as u64);
        let first_new = written.len();
        while written.len() < first_new + 300 {
            let records: Vec<_> = (written.len()..written.len() + 50)
                .map(|n| order(1, n, 250))
                .collect();
            let range = journal.append(&batch_of(&records)).unwrap();
            assert_eq!(range.first, written.len() as u64 + 1);
            journal.commit(range.last).unwrap();
            assert_eq!(journal.durable_seq(), range.last);
            written.extend(records);
        }
        journal.close().unwrap();
        drop(journal);
        assert!(list_segments(dir.path()).unwrap().len() > segments.len());
        let (report, records) = recover_all(dir.path());
        assert!(report.truncated.is_none());
        assert_eq!(report.tail.next_seq, written.len() as u64 + 1);
        let got: Vec<Record> = records.into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, written);
    }

    #[test]
    fn the_preallocator_keeps_synced_zeros_ahead_that_recovery_treats_as_room() {
        let dir = tempfile::tempdir().unwrap();
        let segment_bytes_max = 4 * limits::PREALLOCATE_AHEAD_BYTES;
        let journal = Journal::open(
            dir.path(),
            FsyncPolicy::Always,
            segment_bytes_max,
            new_tail(),
        )
        .unwrap();
        let preallocator = journal
            .spawn_preallocator()
            .expect("policy always preallocates");
        let mut written = Vec::new();
        for n in 0..200 {
            let records = vec![order(0, n, 16), order(1, n, 0)];
            let range = journal.append(&batch_of(&records)).unwrap();
            journal.commit(range.last).unwrap();
            written.extend(records);
        }
        // The room ahead reaches its target within a bounded wait.
        let path = dir.path().join(segment_file_name(1));
        let logical_len = journal.shared.segment.lock().len;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len()
            < logical_len + limits::PREALLOCATE_AHEAD_BYTES
        {
            assert!(
                std::time::Instant::now() < deadline,
                "preallocation did not catch up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        journal.close().unwrap();
        preallocator.join().unwrap();

        let (report, records) = recover_all(dir.path());
        assert!(
            report.truncated.is_none(),
            "zeros ahead are not a torn tail"
        );
        assert_eq!(report.tail.segment.as_ref().unwrap().2, logical_len);
        let records: Vec<Record> = records.into_iter().map(|(_, record)| record).collect();
        assert_eq!(records, written);

        // Reopened, the writer writes over the zeros from the logical end.
        let journal = Journal::open(
            dir.path(),
            FsyncPolicy::Always,
            segment_bytes_max,
            report.tail,
        )
        .unwrap();
        let range = journal.append(&batch_of(&[sku(7)])).unwrap();
        journal.commit(range.last).unwrap();
        let (report, records) = recover_all(dir.path());
        assert!(report.truncated.is_none());
        assert_eq!(records.len(), written.len() + 1);
        assert_eq!(records.last().unwrap().1, sku(7));
    }

    #[test]
    fn no_stall_is_reported_between_group_writes() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(
            dir.path(),
            FsyncPolicy::Always,
            limits::SEGMENT_BYTES_DEFAULT,
            new_tail(),
        )
        .unwrap();
        assert_eq!(journal.write_stalled_for(), None);
        let range = journal.append(&batch_of(&[sku(1)])).unwrap();
        journal.commit(range.last).unwrap();
        assert_eq!(
            journal.write_stalled_for(),
            None,
            "the finished write cleared its mark"
        );
        // While a write runs, the mark holds its start: 3 s later it reports 3 s.
        journal
            .shared
            .write_started_ms
            .store(1_000, Ordering::Release);
        assert_eq!(
            journal.write_stalled_at(4_000),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn the_preallocator_never_runs_for_fsync_none() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(
            dir.path(),
            FsyncPolicy::None,
            limits::SEGMENT_BYTES_DEFAULT,
            new_tail(),
        )
        .unwrap();
        assert!(journal.spawn_preallocator().is_none());
    }

    #[test]
    fn durable_seq_only_moves_forward_and_equals_the_last_committed_seq() {
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::Interval,
            FsyncPolicy::None,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let journal = Journal::open(
                dir.path(),
                policy,
                limits::SEGMENT_BYTES_DEFAULT,
                new_tail(),
            )
            .unwrap();
            assert_eq!(journal.durable_seq(), 0);

            // One committer: durable_seq is exactly the last committed seq, and an append
            // alone does not move it.
            let mut last = 0;
            for n in 0..40 {
                let records: Vec<_> = (0..1 + n % 4).map(|i| order(0, n * 10 + i, 0)).collect();
                let range = journal.append(&batch_of(&records)).unwrap();
                assert_eq!(
                    journal.durable_seq(),
                    last,
                    "{policy:?}: append is not durable"
                );
                journal.commit(range.last).unwrap();
                assert_eq!(journal.durable_seq(), range.last, "{policy:?}");
                // A repeated commit of a durable seq changes nothing.
                journal.commit(range.first).unwrap();
                assert_eq!(journal.durable_seq(), range.last, "{policy:?}");
                last = range.last;
            }

            // Several committers and an observer: the watermark never goes back.
            let stop = Arc::new(AtomicBool::new(false));
            let observer = {
                let journal = journal.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut previous = journal.durable_seq();
                    let mut observations = 0u64;
                    loop {
                        let stopping = stop.load(Ordering::Acquire);
                        let now = journal.durable_seq();
                        assert!(now >= previous, "durable_seq went from {previous} to {now}");
                        previous = now;
                        observations += 1;
                        if stopping {
                            break;
                        }
                    }
                    observations
                })
            };
            let writers: Vec<_> = (0..3)
                .map(|thread| {
                    let journal = journal.clone();
                    std::thread::spawn(move || {
                        for n in 0..60 {
                            let range = journal.append(&batch_of(&[order(thread, n, 0)])).unwrap();
                            journal.commit(range.last).unwrap();
                            assert!(journal.durable_seq() >= range.last);
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            stop.store(true, Ordering::Release);
            assert!(observer.join().unwrap() > 0);
            assert_eq!(journal.durable_seq(), last + 180, "{policy:?}");
            journal.close().unwrap();
            drop(journal);

            // Reopened after recovery, the watermark starts at the last recovered seq.
            let (report, _) = recover_all(dir.path());
            let journal = Journal::open(
                dir.path(),
                policy,
                limits::SEGMENT_BYTES_DEFAULT,
                report.tail,
            )
            .unwrap();
            assert_eq!(journal.durable_seq(), last + 180);
            let range = journal.append(&batch_of(&[sku(1)])).unwrap();
            assert_eq!(range.first, last + 181);
            journal.commit(range.last).unwrap();
            assert_eq!(journal.durable_seq(), last + 181);
        }
    }
}

/// The writer on a [`SimulatedDisk`]: power cuts at every kind of point (in a group write,
/// between the write and its fdatasync, in a rotation, in a preallocation), full disks and
/// failed fdatasyncs, each followed by the real recovery scan. Seeded, so every failure
/// reproduces; bounded in time.
#[cfg(test)]
mod power_loss_tests {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::journal::cursor::looks_torn;
    use crate::journal::record::{
        Event, FRAME_HEADER_BYTES, FrameCheck, OrderAccepted, Record, check_frame,
    };
    use crate::journal::recovery::{RecoveryError, recover};
    use crate::journal::segment::{list_segments, parse_segment_file_name};
    use crate::journal::sim_disk::{CrashImage, CutMode, Rng, SimulatedDisk};
    use crate::order::Payment;

    const MODES: [CutMode; 4] = [
        CutMode::LoseUnsynced,
        CutMode::TornPrefix,
        CutMode::RandomSubset {
            size_after_data: true,
        },
        CutMode::RandomSubset {
            size_after_data: false,
        },
    ];

    fn sim_dir() -> PathBuf {
        PathBuf::from("/simulated/journal")
    }

    fn name_of(path: &Path) -> String {
        path.file_name().unwrap().to_str().unwrap().to_owned()
    }

    fn order(tag: u64, address_bytes: usize) -> Record {
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

    fn batch_of(records: &[Record]) -> FrameBatch {
        let mut batch = FrameBatch::default();
        for record in records {
            batch.push(record).unwrap();
        }
        batch
    }

    fn new_tail() -> JournalTail {
        JournalTail {
            segment: None,
            next_seq: 1,
            index: Default::default(),
        }
    }

    fn open_on(disk: &SimulatedDisk, policy: FsyncPolicy) -> io::Result<Journal> {
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
    struct Run {
        /// Every record the journal took, by seq - 1 (acknowledged or not).
        appended: Vec<Record>,
        /// The highest seq whose commit returned `Ok`.
        acked: u64,
        /// Per segment file name: where its acknowledged frames end.
        acked_end: HashMap<String, u64>,
    }

    /// One thread, policy `always`, small segments: groups of 1 to 3 appended batches of 1 to
    /// 6 records (addresses up to 900 bytes, so frames cross sectors), each batch committed;
    /// with `preallocate`, synced zeros are written ahead between groups as the
    /// preallocator does. Stops at the first error (the power is off).
    fn run_workload(disk: &SimulatedDisk, seed: u64, groups: usize, preallocate: bool) -> Run {
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
    enum Verdict {
        Recovered { truncated: bool },
        Refused,
    }

    /// Recovers the image with the real scan and checks the promise: every acknowledged
    /// record is back, in order, gap-free, nothing but what was appended, only a torn tail
    /// of the last segment truncated; a refusal (where `allow_damage`) names a file and an
    /// offset past its acknowledged frames.
    fn check_image(image: &CrashImage, run: &Run, allow_damage: bool, label: &str) -> Verdict {
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
    fn acked_frames(image: &CrashImage, run: &Run) -> Vec<(PathBuf, u64, u64, u64)> {
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
                let reads_as_torn = !followed
                    && is_last
                    && looks_torn(&flipped.files[&path].bytes, offset as usize);
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

    /// Appends and commits one batch; the seq range on success.
    fn commit_one(journal: &Journal, records: &[Record]) -> Result<SeqRange, JournalError> {
        let range = journal.append(&batch_of(records))?;
        journal.commit(range.last)?;
        Ok(range)
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} did not happen in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn segment_bytes(disk: &SimulatedDisk) -> Vec<(String, Vec<u8>)> {
        disk.paths()
            .into_iter()
            .map(|path| (name_of(&path), disk.contents(&path).unwrap()))
            .collect()
    }

    /// Recovers what the disk would hold after a power cut now (for `always`: what was
    /// synced), or after a process crash (for the other policies: everything written), and
    /// returns the records.
    fn recovered_now(disk: &SimulatedDisk, policy: FsyncPolicy) -> Vec<Record> {
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

    #[test]
    fn a_full_disk_stops_the_journal_until_a_write_succeeds_then_it_resumes_gap_free() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let disk = SimulatedDisk::new();
            disk.report_full_as(errno);
            disk.set_capacity(Some(20_000));
            let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
            let mut acked = Vec::new();
            let mut tag = 0;
            let error = loop {
                let records: Vec<Record> = (0..3)
                    .map(|_| {
                        tag += 1;
                        order(tag, 700)
                    })
                    .collect();
                match commit_one(&journal, &records) {
                    Ok(range) => {
                        assert_eq!(range.first, acked.len() as u64 + 1);
                        acked.extend(records);
                    }
                    Err(error) => break error,
                }
            };
            assert!(!acked.is_empty());
            assert!(
                error
                    .to_string()
                    .contains(&io::Error::from_raw_os_error(errno).to_string()),
                "{error}"
            );
            assert!(journal.is_stopped() && !journal.is_failed());
            assert_eq!(journal.durable_seq(), acked.len() as u64);
            // Memory and disk agree: the short write was cut off, the file ends at the last
            // acknowledged frame.
            let segment_len = journal.shared.segment.lock().len;
            let files = segment_bytes(&disk);
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].1.len() as u64, segment_len);
            assert_eq!(recovered_now(&disk, FsyncPolicy::Always), acked);
            // Stopped: appends are refused at once, with the same reason.
            let refused = journal.append(&batch_of(&[order(999_999, 0)])).unwrap_err();
            assert_eq!(refused.to_string(), error.to_string());
            // Still full after a few retries.
            std::thread::sleep(RETRY_INTERVAL * 3);
            assert!(journal.is_stopped());

            // Room comes back: the retry finds it and admission resumes by itself.
            disk.set_capacity(None);
            wait_until("resume", || !journal.is_stopped());
            assert!(!journal.is_failed());
            let more: Vec<Record> = (0..4).map(|n| order(500_000 + n, 100)).collect();
            let range = commit_one(&journal, &more).unwrap();
            assert_eq!(
                range.first,
                acked.len() as u64 + 1,
                "the discarded seqs are reused"
            );
            acked.extend(more);
            journal.close().unwrap();
            assert_eq!(recovered_now(&disk, FsyncPolicy::Always), acked);
        }
    }

    #[test]
    fn a_full_disk_while_creating_the_next_segment_stops_and_resumes_without_a_stray_file() {
        let disk = SimulatedDisk::new();
        let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
        let mut acked = Vec::new();
        let mut tag = 0;
        // Fill the first segment until the next group would rotate.
        loop {
            let len = journal.shared.segment.lock().len;
            if len + 2_000 > limits::SEGMENT_BYTES_MIN {
                break;
            }
            tag += 1;
            let record = order(tag, 500);
            commit_one(&journal, std::slice::from_ref(&record)).unwrap();
            acked.push(record);
        }
        // Room for 5 bytes: the new segment's header is cut short.
        disk.set_capacity(Some(disk.used() + 5));
        let big: Vec<Record> = (0..3).map(|n| order(900_000 + n, 900)).collect();
        let error = commit_one(&journal, &big).unwrap_err();
        assert!(journal.is_stopped() && !journal.is_failed(), "{error}");
        assert_eq!(disk.paths().len(), 1, "the half-created segment is removed");
        disk.set_capacity(None);
        wait_until("resume", || !journal.is_stopped());
        let range = commit_one(&journal, &big).unwrap();
        assert_eq!(range.first, acked.len() as u64 + 1);
        acked.extend(big);
        assert_eq!(disk.paths().len(), 2, "rotated");
        journal.close().unwrap();
        assert_eq!(recovered_now(&disk, FsyncPolicy::Always), acked);
    }

    #[test]
    fn a_stopped_journal_hands_out_discarded_seqs_again_only_after_every_committer_was_told() {
        let disk = SimulatedDisk::new();
        let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
        commit_one(&journal, &[order(1, 0)]).unwrap();
        disk.set_capacity(Some(disk.used() + 100));
        // A shard appended and has not committed yet when another's group fails.
        let late = journal.append(&batch_of(&[order(2, 300)])).unwrap();
        let early = journal.append(&batch_of(&[order(3, 300)])).unwrap();
        assert!(journal.commit(early.last).is_err());
        assert!(journal.is_stopped());
        disk.set_capacity(None);
        // Room is back, but seq `late.first` may not be handed out again while its
        // committer could still take someone else's record for its own.
        std::thread::sleep(RETRY_INTERVAL * 3);
        assert!(
            journal.is_stopped(),
            "resumed before every committer was told"
        );
        assert!(journal.commit(late.last).is_err(), "the late commit fails");
        wait_until("resume", || !journal.is_stopped());
        let range = commit_one(&journal, &[order(4, 0)]).unwrap();
        assert_eq!(range.first, late.first);
        // A repeated commit of a seq that is durable now succeeds (it is someone's record).
        journal.commit(range.last).unwrap();
        journal.close().unwrap();
        assert_eq!(
            recovered_now(&disk, FsyncPolicy::Always),
            [order(1, 0), order(4, 0)]
        );
    }

    #[test]
    fn a_failed_fdatasync_fails_the_journal_for_good() {
        let disk = SimulatedDisk::new();
        let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
        let first: Vec<Record> = (0..3).map(|n| order(n, 50)).collect();
        commit_one(&journal, &first).unwrap();
        let len = journal.shared.segment.lock().len;
        disk.fail_next_syncs(1);
        let error = commit_one(&journal, &[order(10, 50)]).unwrap_err();
        assert!(error.to_string().contains("Input/output error"), "{error}");
        assert!(journal.is_failed() && journal.is_stopped());
        // The group was cut off; no retry brings the journal back.
        assert_eq!(disk.contents(&disk.paths()[0]).unwrap().len() as u64, len);
        std::thread::sleep(RETRY_INTERVAL * 2);
        assert!(journal.is_failed());
        assert!(journal.append(&batch_of(&[order(11, 0)])).is_err());
        assert!(journal.close().is_err());
        assert_eq!(recovered_now(&disk, FsyncPolicy::Always), first);
    }

    #[test]
    fn a_write_error_other_than_no_room_fails_the_journal_for_good() {
        let disk = SimulatedDisk::new();
        let journal = open_on(&disk, FsyncPolicy::Always).unwrap();
        commit_one(&journal, &[order(1, 0)]).unwrap();
        // The power going is an EIO on the write: not a full disk.
        disk.cut_power_at(disk.ops());
        assert!(commit_one(&journal, &[order(2, 0)]).is_err());
        assert!(journal.is_failed());
    }

    #[test]
    fn concurrent_committers_through_a_full_disk_lose_nothing_acknowledged_and_keep_nothing_refused()
     {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 150;
        for policy in [FsyncPolicy::Always, FsyncPolicy::None] {
            let disk = SimulatedDisk::new();
            disk.set_capacity(Some(60_000));
            let journal = open_on(&disk, policy).unwrap();
            let threads: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let journal = journal.clone();
                    std::thread::spawn(move || {
                        let mut acked = Vec::new();
                        let mut refused = Vec::new();
                        let mut attempt = 0;
                        let mut done = 0;
                        while done < PER_THREAD {
                            attempt += 1;
                            // A new order id per attempt, as a client's retry after a 503
                            // would be decided afresh.
                            let records: Vec<Record> = (0..1 + attempt % 3)
                                .map(|i| order(thread * 10_000_000 + attempt * 10 + i, 300))
                                .collect();
                            match commit_one(&journal, &records) {
                                Ok(range) => {
                                    acked.push((range, records));
                                    done += 1;
                                }
                                Err(_) => {
                                    refused.extend(records);
                                    std::thread::sleep(Duration::from_millis(2));
                                }
                            }
                        }
                        (acked, refused)
                    })
                })
                .collect();
            // Let them run into the full disk, then give room back.
            wait_until("the journal to stop", || journal.is_stopped());
            std::thread::sleep(RETRY_INTERVAL * 2);
            disk.set_capacity(None);
            let mut acked = Vec::new();
            let mut refused = Vec::new();
            for thread in threads {
                let (thread_acked, thread_refused) = thread.join().unwrap();
                acked.extend(thread_acked);
                refused.extend(thread_refused);
            }
            assert!(!refused.is_empty(), "{policy:?}: the disk did fill");
            assert!(!journal.is_stopped() && !journal.is_failed());
            journal.close().unwrap();
            let recovered = recovered_now(&disk, policy);
            let total: usize = acked.iter().map(|(_, records)| records.len()).sum();
            assert_eq!(
                recovered.len(),
                total,
                "{policy:?}: exactly the acknowledged records"
            );
            for (range, records) in &acked {
                for (i, record) in records.iter().enumerate() {
                    let seq = range.first + i as u64;
                    assert_eq!(
                        &recovered[seq as usize - 1],
                        record,
                        "{policy:?}: seq {seq}"
                    );
                }
            }
            let ids: HashSet<String> = recovered
                .iter()
                .map(|r| match &r.event {
                    Event::Accepted(o) => o.order_id.clone(),
                    _ => unreachable!(),
                })
                .collect();
            for record in &refused {
                let Event::Accepted(o) = &record.event else {
                    unreachable!()
                };
                assert!(
                    !ids.contains(&o.order_id),
                    "{policy:?}: refused {} is on disk",
                    o.order_id
                );
            }
        }
    }
}
