//! The journal writer: assigns sequence numbers, appends frames to the current segment, and
//! makes them as durable as the fsync policy promises, with group commit.
//!
//! Shards call [`Journal::append`] (a short critical section: take the next `seq` range,
//! seal the frames, copy them to the pending buffer) and then [`Journal::commit`]. The first
//! committer that finds no write in progress becomes the leader: it takes *everything*
//! pending, from every shard, writes it with one `write` and (policy `always`) one
//! `fdatasync`, then wakes the others. So N shards waiting on the disk cost one fsync, not N.
//!
//! Invariants:
//! - `seq` is assigned under the state lock and frames enter the pending buffer in `seq`
//!   order, so the file holds strictly increasing sequence numbers with no gap.
//! - `durable_seq` only moves forward, and only after the bytes up to it are written (and
//!   synced, for `always`).
//! - After an I/O error the journal is poisoned: every pending and later commit fails, the
//!   file is cut back to its last good length where possible, and nothing is acknowledged
//!   again until a restart recovers from disk. Memory never runs ahead of disk silently:
//!   the shards roll back what they had decided for the failed batch.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::config::FsyncPolicy;
use crate::journal::index::SeqIndex;
use crate::journal::record::{self, ArchivedRecord, FrameBatch, Record, SEGMENT_HEADER_BYTES};
use crate::limits;

/// Where a recovered journal ends: the writer continues there.
#[derive(Debug, Clone)]
pub struct JournalTail {
    /// The segment to append to, with its first seq and valid length; `None` for a new journal.
    pub segment: Option<(PathBuf, u64, u64)>,
    /// The seq the next record gets.
    pub next_seq: u64,
    /// Where the recovered frames lie; the writer goes on adding to it.
    pub index: Arc<SeqIndex>,
}

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
    next_seq: u64,
    /// Highest seq whose frame is written to the file (page cache).
    written_seq: u64,
    /// Highest seq known to be on stable storage.
    synced_seq: u64,
    /// True while a leader is writing; others wait on `flushed`.
    flushing: bool,
    failure: Option<JournalError>,
}

struct SegmentWriter {
    dir: PathBuf,
    file: File,
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
    poisoned: AtomicBool,
    stats: JournalStats,
    /// Tells the background threads (interval sync, preallocator) to finish, and wakes them.
    stop_background_lock: Mutex<bool>,
    stop_background_wake: Condvar,
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
        let segment = match tail.segment {
            Some((path, first_seq, len)) => {
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                // Recovery ends the segment at its last frame; zeros after it are room a
                // preallocator wrote before the restart.
                let allocated_len = file.metadata()?.len().max(len);
                SegmentWriter {
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
            None => SegmentWriter::create(dir, tail.next_seq, segment_bytes_max, policy)?,
        };
        let durable = tail.next_seq - 1;
        let shared = Arc::new(Shared {
            state: Mutex::new(PendingState {
                pending: Vec::with_capacity(1 << 20),
                spare: Vec::with_capacity(1 << 20),
                next_seq: tail.next_seq,
                written_seq: durable,
                synced_seq: durable,
                flushing: false,
                failure: None,
            }),
            flushed: Condvar::new(),
            segment: Mutex::new(segment),
            policy,
            durable_seq: AtomicU64::new(durable),
            write_started_ms: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            stats: JournalStats::default(),
            stop_background_lock: Mutex::new(false),
            stop_background_wake: Condvar::new(),
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

    /// Reads one durable record by its seq (the order history's random reads). `Ok(None)`
    /// for a seq that is not durable or not in the journal.
    pub fn read_owned(&self, seq: u64) -> io::Result<Option<Record>> {
        if seq == 0 || seq > self.durable_seq() {
            return Ok(None);
        }
        self.shared.index.read_owned(&self.shared.dir, seq)
    }

    /// [`Journal::read_owned`] without the copy: `visit` sees the validated archive.
    pub fn read_with(&self, seq: u64, visit: &mut dyn FnMut(&ArchivedRecord)) -> io::Result<bool> {
        if seq == 0 || seq > self.durable_seq() {
            return Ok(false);
        }
        self.shared.index.read(&self.shared.dir, seq, visit)
    }

    /// Blocks until a record past `after` is durable, the journal stops, or `timeout`
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

    /// True once an I/O error stopped the journal; admission answers 503 from then on.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// Gives the frames of `batch` their sequence numbers and queues them for writing.
    /// Nothing is durable until [`Journal::commit`] returns `Ok` for `range.last`.
    pub fn append(&self, batch: &FrameBatch) -> Result<SeqRange, JournalError> {
        assert!(!batch.is_empty(), "append of an empty batch");
        let mut state = self.shared.state.lock();
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
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
        state.next_seq = first + sealed;
        Ok(SeqRange {
            first,
            last: first + sealed - 1,
        })
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
            let group_first = state.written_seq + 1;
            let group_last = state.next_seq - 1;
            drop(state);

            // A panic while writing must not leave `flushing` set (every committer would wait
            // forever): it becomes an I/O failure, which poisons the journal.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.write_group(&group, group_first, group_last)
            }))
            .unwrap_or_else(|_| Err(io::Error::other("journal writer panicked")));

            state = shared.state.lock();
            state.flushing = false;
            let mut group = group;
            group.clear();
            state.spare = group;
            match result {
                Ok(()) => {
                    state.written_seq = group_last;
                    if shared.policy == FsyncPolicy::Always {
                        state.synced_seq = group_last;
                    }
                    shared.durable_seq.store(group_last, Ordering::Release);
                    shared.durable_watch.send_replace(group_last);
                }
                Err(error) => {
                    tracing::error!(%error, first_seq = group_first, last_seq = group_last,
                        "journal write failed; admission stops until restart");
                    state.failure = Some(JournalError(error.to_string().into()));
                    state.pending.clear();
                    shared.poisoned.store(true, Ordering::Release);
                }
            }
            shared.flushed.notify_all();
        }
    }

    fn write_group(&self, group: &[u8], first_seq: u64, last_seq: u64) -> io::Result<()> {
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

    fn write_and_sync(&self, group: &[u8], first_seq: u64, last_seq: u64) -> io::Result<()> {
        let shared = &*self.shared;
        let mut segment = shared.segment.lock();
        let offset = segment.append(group, first_seq)?;
        shared.index.note(first_seq, segment.first_seq, offset);
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
                // bytes can neither be trusted nor retried. Cut them off and poison.
                segment.cut_back(group.len() as u64);
                return Err(error);
            }
            shared.stats.record_fsync(started.elapsed());
        }
        Ok(())
    }

    /// Syncs everything written so far (policy `interval` calls this on a timer; shutdown
    /// calls it for every policy). Runs the fdatasync on a duplicate descriptor so appends
    /// are not blocked behind it.
    pub fn sync_now(&self) -> Result<(), JournalError> {
        let shared = &*self.shared;
        let (file, written) = {
            // Holding the segment lock while reading `written_seq` pairs the descriptor with
            // a watermark that is entirely inside that file (rotation syncs the old file).
            let segment = shared.segment.lock();
            let written = shared.state.lock().written_seq;
            let file = segment
                .file
                .try_clone()
                .map_err(|e| JournalError(format!("cannot duplicate segment fd: {e}").into()))?;
            (file, written)
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
    /// here is only logged: the writer appends without room ahead and meets any real disk
    /// problem itself.
    pub fn spawn_preallocator(&self) -> Option<std::thread::JoinHandle<()>> {
        if self.shared.policy == FsyncPolicy::None {
            return None;
        }
        let journal = self.clone();
        let handle = std::thread::Builder::new()
            .name("journal-prealloc".into())
            .spawn(move || {
                let shared = &*journal.shared;
                loop {
                    let step = shared.segment.lock().preallocate_step();
                    match step {
                        Ok(Some(file)) => {
                            // Linux reports a write-back error once per open file, to the first
                            // descriptor that syncs: this one shares the writer's open file, so
                            // an error here may be the writer's. Treat it as the writer's.
                            if let Err(error) = file.sync_data() {
                                journal.poison(format!("fdatasync failed: {error}"));
                                return;
                            }
                            continue;
                        }
                        Ok(None) => {}
                        Err(error) => {
                            // Writing zeros failed (ENOSPC, say): stop preallocating; the
                            // writer appends without room ahead and meets the disk itself.
                            tracing::warn!(%error, "journal preallocation stopped");
                            return;
                        }
                    }
                    if journal.wait_for_stop(PREALLOCATE_POLL) {
                        return;
                    }
                }
            })
            .expect("spawn journal-prealloc thread");
        Some(handle)
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

    /// Stops the journal for good: every pending and later commit fails, admission stops.
    /// For failures found outside a commit (a background fdatasync, a shard that died).
    pub fn poison(&self, reason: String) {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.failure.is_none() {
            tracing::error!(%reason, "journal poisoned; admission stops until restart");
            state.failure = Some(JournalError(reason.into()));
        }
        shared.poisoned.store(true, Ordering::Release);
        shared.flushed.notify_all();
    }

    /// Stops the interval thread (if any) and syncs whatever is written, for shutdown.
    pub fn close(&self) -> Result<(), JournalError> {
        *self.shared.stop_background_lock.lock() = true;
        self.shared.stop_background_wake.notify_all();
        if self.is_poisoned() {
            return Err(self
                .shared
                .state
                .lock()
                .failure
                .clone()
                .expect("poisoned has failure"));
        }
        self.sync_now()
    }
}

impl SegmentWriter {
    fn create(
        dir: &Path,
        first_seq: u64,
        segment_bytes_max: u64,
        policy: FsyncPolicy,
    ) -> io::Result<Self> {
        let path = dir.join(segment_file_name(first_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all_at(&record::segment_header(first_seq), 0)?;
        if policy != FsyncPolicy::None {
            // The new file's header and its directory entry must be durable before any
            // record in it is acknowledged, or recovery could miss the whole segment.
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(Self {
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
    fn append(&mut self, group: &[u8], first_seq: u64) -> io::Result<u64> {
        let len_after = self.len + group.len() as u64;
        if self.len > SEGMENT_HEADER_BYTES as u64 && len_after > self.segment_bytes_max {
            self.rotate(first_seq)?;
        }
        if let Err(error) = self.file.write_all_at(group, self.len) {
            // A partial write leaves a torn tail; cut it so the file ends on a frame boundary.
            let _ = self.file.set_len(self.len);
            self.allocated_len = self.len;
            return Err(error);
        }
        let offset = self.len;
        self.len += group.len() as u64;
        self.allocated_len = self.allocated_len.max(self.len);
        Ok(offset)
    }

    /// Writes the next chunk of zeros ahead of the logical end, if the room ahead is below
    /// `PREALLOCATE_AHEAD_BYTES`, and returns a descriptor to sync them with (outside the
    /// lock). Zeros are written only beyond `len`, under the segment lock, so they can
    /// never overwrite a frame. Capped at the segment's target size.
    fn preallocate_step(&mut self) -> io::Result<Option<File>> {
        let target = (self.len + limits::PREALLOCATE_AHEAD_BYTES).min(self.segment_bytes_max);
        let start = self.allocated_len.max(self.len);
        if start >= target {
            return Ok(None);
        }
        let end = (start + limits::PREALLOCATE_CHUNK_BYTES).min(target);
        self.file
            .write_all_at(&ZEROS[..(end - start) as usize], start)?;
        self.allocated_len = end;
        Ok(Some(self.file.try_clone()?))
    }

    fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        if self.policy != FsyncPolicy::None {
            self.file.sync_data()?;
        }
        let next = Self::create(&self.dir, first_seq, self.segment_bytes_max, self.policy)?;
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

/// Zeros for the preallocator, one chunk's worth.
static ZEROS: [u8; limits::PREALLOCATE_CHUNK_BYTES as usize] =
    [0; limits::PREALLOCATE_CHUNK_BYTES as usize];

/// How often the preallocator looks at the room ahead when there is enough.
const PREALLOCATE_POLL: Duration = Duration::from_millis(5);

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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::journal::record::{
        ArchivedRecord, Event, FrameCheck, OrderAccepted, Record, SkuChanged, check_frame,
        parse_segment_header,
    };
    use crate::journal::scan::{RecoveryReport, list_segments, recover};
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
