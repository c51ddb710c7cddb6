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
use crate::journal::record::{self, FrameBatch, SEGMENT_HEADER_BYTES};

/// Where a recovered journal ends: the writer continues there.
#[derive(Debug, Clone)]
pub struct JournalTail {
    /// The segment to append to, with its first seq and valid length; `None` for a new journal.
    pub segment: Option<(PathBuf, u64, u64)>,
    /// The seq the next record gets.
    pub next_seq: u64,
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
    len: u64,
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
    poisoned: AtomicBool,
    stats: JournalStats,
    stop_interval_sync: AtomicBool,
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
            Some((path, _first_seq, len)) => {
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                SegmentWriter {
                    dir: dir.to_owned(),
                    file,
                    path,
                    len,
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
            poisoned: AtomicBool::new(false),
            stats: JournalStats::default(),
            stop_interval_sync: AtomicBool::new(false),
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
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            let done = match shared.policy {
                FsyncPolicy::Always => state.synced_seq >= seq,
                FsyncPolicy::Interval | FsyncPolicy::None => state.written_seq >= seq,
            };
            if done {
                return Ok(());
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

            let result = self.write_group(&group, group_first, group_last);

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
        let mut segment = shared.segment.lock();
        segment.append(group, first_seq)?;
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
            shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .fsync_nanos_total
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
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
            let mut state = shared.state.lock();
            let failure = JournalError(format!("fdatasync failed: {error}").into());
            state.failure = Some(failure.clone());
            shared.poisoned.store(true, Ordering::Release);
            shared.flushed.notify_all();
            return Err(failure);
        }
        shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .fsync_nanos_total
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
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
                while !journal.shared.stop_interval_sync.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    if journal.sync_now().is_err() {
                        return;
                    }
                }
            })
            .expect("spawn journal-sync thread");
        Some(handle)
    }

    /// Stops the interval thread (if any) and syncs whatever is written, for shutdown.
    pub fn close(&self) -> Result<(), JournalError> {
        self.shared
            .stop_interval_sync
            .store(true, Ordering::Release);
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
            len: SEGMENT_HEADER_BYTES as u64,
            segment_bytes_max,
            policy,
        })
    }

    /// Writes one group at the end of the current segment, starting a new segment first when
    /// the group would carry this one past its target size. A group never spans two files.
    fn append(&mut self, group: &[u8], first_seq: u64) -> io::Result<()> {
        let len_after = self.len + group.len() as u64;
        if self.len > SEGMENT_HEADER_BYTES as u64 && len_after > self.segment_bytes_max {
            self.rotate(first_seq)?;
        }
        if let Err(error) = self.file.write_all_at(group, self.len) {
            // A partial write leaves a torn tail; cut it so the file ends on a frame boundary.
            let _ = self.file.set_len(self.len);
            return Err(error);
        }
        self.len += group.len() as u64;
        Ok(())
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
    }
}

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
