//! The journal's write side: [`Journal::append`] + [`Journal::commit`] of one shard's batch.
//!
//! This is the last step before an accepted order is answered, and the only one that waits
//! on the disk. What it measures:
//! - `none/{1,16,256}`: policy `none`: append (seq assignment, seal, copy into the pending
//!   buffer under the state lock) and commit (one `pwrite` of the group into the page cache).
//!   The cost of the writer itself, per record, for batches of 1, 16 and 256 records.
//! - `always/{1,16,256}`: policy `always`: the same plus one `fdatasync` per commit. This is
//!   the latency a durable order waits for, and shows how much batching amortises the sync.
//!   It measures the disk under the temporary directory, so few samples are taken.
//! - `group_commit_2_threads/16`: two threads (two shards) append and commit batches of 16
//!   records concurrently under `always`. One iteration is one batch from each thread (32
//!   records). With group commit a leader syncs whatever both shards have pending, so the
//!   run ends by printing the journal's `fsyncs` against the batches committed: fewer
//!   fsyncs than batches means syncs were shared.
//!
//! Each sample opens a new journal (`JournalTail { segment: None, next_seq: 1 }`, default
//! 64 MiB segments, so long runs rotate as production does) in a new temporary directory,
//! outside the timing, and deletes it afterwards, so disk use stays bounded. Records are
//! accepted orders with a ~100-byte address (~300 bytes per frame). Throughput is in records
//! (elements).
//!
//! The directory is `std::env::temp_dir()`, or `$STAMPEDE_BENCH_DIR` when set: point it at
//! the file system the journal will live on, since `always` measures that device (a tmpfs
//! would make `fdatasync` free).
//!
//! Run: `cargo bench --bench journal_append` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick run).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use stampede::config::FsyncPolicy;
use stampede::journal::{Event, FrameBatch, Journal, JournalTail, OrderAccepted, Record};
use stampede::limits::SEGMENT_BYTES_DEFAULT;
use stampede::order::Payment;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADDRESS: &str = r#"{"name":"Ada Lovelace","street":"12 Example Road","city":"Oslo","postcode":"0150","country":"NO"}"#;
const BATCH_SIZES: [usize; 3] = [1, 16, 256];
const GROUP_THREADS: usize = 2;
const GROUP_BATCH: usize = 16;

fn bench_dir() -> PathBuf {
    std::env::var_os("STAMPEDE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A new, empty journal in a new temporary directory (removed when the guard drops).
fn open_journal(policy: FsyncPolicy) -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temporary journal directory");
    let journal = Journal::open(
        dir.path(),
        policy,
        SEGMENT_BYTES_DEFAULT,
        JournalTail {
            segment: None,
            next_seq: 1,
            index: Default::default(),
        },
    )
    .expect("open journal");
    (dir, journal)
}

/// One shard's batch of `records` accepted orders.
fn batch(shard: usize, records: usize) -> FrameBatch {
    let mut frames = FrameBatch::with_capacity(records * 320);
    for n in 0..records {
        let record = Record {
            at_ms: 1_700_000_000_000 + n as u64,
            event: Event::Accepted(OrderAccepted {
                order_id: format!("ord-{shard}-{n:010}"),
                user_id: format!("user-{shard}-{n:010}"),
                sku: "SKU-PS5-SLIM-DE".into(),
                qty: 1,
                payment: Payment::Prepaid,
                address: Some(ADDRESS.into()),
            }),
        };
        frames.push(&record).expect("record encodes");
    }
    frames
}

/// Appends and commits `frames` `iters` times to a fresh journal; returns the time taken.
fn append_commit(policy: FsyncPolicy, frames: &FrameBatch, iters: u64) -> Duration {
    let (_dir, journal) = open_journal(policy);
    let started = Instant::now();
    for _ in 0..iters {
        let range = journal.append(black_box(frames)).expect("append");
        journal.commit(range.last).expect("commit");
    }
    let elapsed = started.elapsed();
    assert_eq!(journal.durable_seq(), iters * frames.len() as u64);
    elapsed
}

fn single_writer(c: &mut Criterion) {
    for (name, policy) in [("none", FsyncPolicy::None), ("always", FsyncPolicy::Always)] {
        let mut group = c.benchmark_group(format!("journal_append/{name}"));
        if policy == FsyncPolicy::Always {
            // Each iteration waits for the disk (milliseconds on many devices).
            group.sample_size(10);
            group.sampling_mode(SamplingMode::Flat);
        }
        for records in BATCH_SIZES {
            let frames = batch(0, records);
            group.throughput(Throughput::Elements(records as u64));
            group.bench_with_input(
                BenchmarkId::from_parameter(records),
                &frames,
                |b, frames| {
                    b.iter_custom(|iters| append_commit(policy, frames, iters));
                },
            );
        }
        group.finish();
    }
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_append/group_commit_2_threads");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements((GROUP_THREADS * GROUP_BATCH) as u64));
    let batches: Vec<Arc<FrameBatch>> = (0..GROUP_THREADS)
        .map(|shard| Arc::new(batch(shard, GROUP_BATCH)))
        .collect();
    let mut committed_batches = 0u64;
    let mut fsyncs = 0u64;
    let mut writes = 0u64;
    group.bench_function(BenchmarkId::from_parameter(GROUP_BATCH), |b| {
        b.iter_custom(|iters| {
            let (_dir, journal) = open_journal(FsyncPolicy::Always);
            let start = Arc::new(Barrier::new(GROUP_THREADS + 1));
            let threads: Vec<_> = batches
                .iter()
                .map(|frames| {
                    let (journal, frames, start) = (journal.clone(), frames.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        for _ in 0..iters {
                            let range = journal.append(&frames).expect("append");
                            journal.commit(range.last).expect("commit");
                        }
                    })
                })
                .collect();
            start.wait();
            let started = Instant::now();
            for thread in threads {
                thread.join().expect("writer thread");
            }
            let elapsed = started.elapsed();
            let stats = journal.stats();
            committed_batches += iters * GROUP_THREADS as u64;
            fsyncs += stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
            writes += stats.writes.load(std::sync::atomic::Ordering::Relaxed);
            elapsed
        });
    });
    group.finish();
    if committed_batches > 0 {
        println!(
            "group commit ({GROUP_THREADS} threads, {GROUP_BATCH} records a batch, fsync always): \
             {committed_batches} batches committed with {writes} writes and {fsyncs} fsyncs \
             ({:.2} batches per fsync)",
            committed_batches as f64 / fsyncs.max(1) as f64
        );
    }
}

criterion_group!(benches, single_writer, group_commit);
criterion_main!(benches);
