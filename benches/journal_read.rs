//! The journal's read side: how fast a consumer gets through the journal, against the disk
//! read of the same files.
//!
//! Setup (once, outside the timing): a journal of [`RECORDS`] records written with
//! [`Journal`] + [`FrameBatch`] (fsync `none`, default 64 MiB segments) in a temporary data
//! directory: one SKU record, then accepted orders as a sale writes them (order and user ids
//! of ~15 bytes, a ~100-byte address, 70% prepaid, 30% cash on delivery; ~216 bytes a frame,
//! ~43 MB in all). Every benchmark reads the whole journal once per iteration, from the page
//! cache (the files were just written; nothing evicts them on a machine with free RAM), so
//! this measures the readers' CPU cost, not the device. Throughput is in records (elements)
//! and in bytes of segment files (headers and padding included), the same figures for every
//! benchmark, so the ratio of two medians is the ratio of their speeds.
//!
//! - `raw_read`: `read(2)` of every segment file into one 1 MiB buffer, summing one byte of
//!   each read so nothing is elided. The floor: what any reader pays to get the bytes.
//! - `reader`: [`JournalReader`] with [`ReadLimit::Written`] (as `stampede tail --data-dir`
//!   and a fulfilment worker in another process use it): framing, CRC32C, rkyv validation,
//!   zero-copy access to each record, touching `at_ms` and the order's `qty`.
//! - `reader_to_json`: the same plus [`ArchivedRecord::to_json`] and its serialisation into
//!   a 64 KiB buffer (emptied when full) for each record: what `stampede tail` pays per line.
//! - `frames_crc` and `frames_crc_access`: where the reader's time goes. The segment files
//!   are in memory (read once into an aligned buffer, outside the timing) and walked with
//!   [`check_frame`] (framing and CRC32C of each frame), then the same plus [`access_record`]
//!   (rkyv validation, zero-copy) touching the same fields as `reader`. `raw_read` +
//!   `frames_crc_access` is what a reader with no other overhead would cost.
//! - `http_pages`: an in-process engine ([`Engine::start`] on the directory, recovering it,
//!   and the real HTTP server on 127.0.0.1:0) and one keep-alive hyper connection reading
//!   `GET /v1/journal?from=..&limit=10000` pages to the end (the page path of a consumer over
//!   HTTP: durable-bounded reader, `to_json`, the response, the client's receive).
//!
//! The directory is `std::env::temp_dir()`, or `$STAMPEDE_BENCH_DIR` when set.
//!
//! Run: `cargo bench --bench journal_read` (about 90 s after the build; pass a filter
//! such as `reader` to run a part).

use std::fs::File;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use stampede::config::{Config, FsyncPolicy, Overrides};
use stampede::engine::Engine;
use stampede::http::{self, AppState};
use stampede::journal::record::{ArchivedEvent, FrameCheck, access_record, check_frame};
use stampede::journal::{
    Event, FrameBatch, Journal, JournalReader, JournalTail, OrderAccepted, ReadLimit, Record,
    SkuChanged,
};
use stampede::limits::SEGMENT_BYTES_DEFAULT;
use stampede::order::Payment;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records in the journal: one SKU record and the accepted orders.
const RECORDS: u64 = 200_000;
const SKU: &str = "SKU-PS5-SLIM-DE";
const ADDRESS: &str = r#"{"name":"Ada Lovelace","street":"12 Example Road","city":"Oslo","postcode":"0150","country":"NO"}"#;
const BATCH: u64 = 256;
const PAGE: usize = 10_000;

fn bench_dir() -> PathBuf {
    std::env::var_os("STAMPEDE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// The journal on disk, removed when dropped.
struct Fixture {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    journal_dir: PathBuf,
    segments: Vec<PathBuf>,
    bytes: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn write_journal() -> Fixture {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temporary data directory");
    let data_dir = dir.path().join("data");
    let journal_dir = data_dir.join("journal");
    std::fs::create_dir_all(&journal_dir).expect("journal directory");
    let journal = Journal::open(
        &journal_dir,
        FsyncPolicy::None,
        SEGMENT_BYTES_DEFAULT,
        JournalTail {
            segment: None,
            next_seq: 1,
            index: Default::default(),
        },
    )
    .expect("open journal");
    // Deadlines in the future, so that the engine of `http_pages` expires nothing at start.
    let start_ms = now_ms();
    let mut frames = FrameBatch::with_capacity(BATCH as usize * 320);
    frames
        .push(&Record {
            at_ms: start_ms,
            event: Event::Sku(SkuChanged {
                sku: SKU.into(),
                slot_index: 0,
                stock_total: 1_000_000,
                per_user_limit: 0,
                max_per_order: 10,
                payment_timeout_s: 900,
            }),
        })
        .expect("sku record encodes");
    for n in 1..RECORDS {
        let record = Record {
            at_ms: start_ms + n / 100,
            event: Event::Accepted(OrderAccepted {
                order_id: format!("ord-{n:010}"),
                user_id: format!("user-{:010}", n * 7919 % 1_000_003),
                sku: SKU.into(),
                qty: 1 + (n % 2) as u32,
                payment: if n % 10 < 7 {
                    Payment::Prepaid
                } else {
                    Payment::Cod
                },
                address: Some(ADDRESS.into()),
            }),
        };
        frames.push(&record).expect("record encodes");
        if frames.len() as u64 == BATCH {
            let range = journal.append(&frames).expect("append");
            journal.commit(range.last).expect("commit");
            frames = FrameBatch::with_capacity(BATCH as usize * 320);
        }
    }
    if !frames.is_empty() {
        let range = journal.append(&frames).expect("append");
        journal.commit(range.last).expect("commit");
    }
    assert_eq!(journal.durable_seq(), RECORDS);
    journal.close().expect("close journal");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&journal_dir)
        .expect("list journal")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    segments.sort();
    let bytes = segments
        .iter()
        .map(|path| path.metadata().expect("segment").len())
        .sum();
    Fixture {
        _dir: dir,
        data_dir,
        journal_dir,
        segments,
        bytes,
    }
}

fn raw_read(segments: &[PathBuf], buf: &mut [u8]) -> u64 {
    let mut sum = 0u64;
    let mut total = 0u64;
    for path in segments {
        let mut file = File::open(path).expect("open segment");
        loop {
            let read = file.read(buf).expect("read segment");
            if read == 0 {
                break;
            }
            sum = sum.wrapping_add(u64::from(buf[read - 1]));
            total += read as u64;
        }
    }
    black_box(sum);
    total
}

/// Reads every record zero-copy; returns the count.
fn read_records(journal_dir: &Path) -> u64 {
    let mut reader = JournalReader::open(journal_dir, 0, ReadLimit::Written);
    let mut count = 0u64;
    let mut touched = 0u64;
    while let Some((seq, record)) = reader.next_record().expect("read") {
        touched = touched.wrapping_add(record.at_ms.to_native() ^ seq);
        if let ArchivedEvent::Accepted(order) = &record.event {
            touched = touched.wrapping_add(u64::from(order.qty.to_native()));
        }
        count += 1;
    }
    black_box(touched);
    count
}

/// The segment files in memory, each in a buffer aligned as the files' frames are.
fn load_segments(segments: &[PathBuf]) -> Vec<rkyv::util::AlignedVec<16>> {
    segments
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).expect("read segment");
            let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
            aligned.extend_from_slice(&bytes);
            aligned
        })
        .collect()
}

/// Walks every frame of in-memory segments: framing and CRC, and with `access` the rkyv
/// validation and the fields `read_records` touches. Returns the count.
fn walk_frames(segments: &[rkyv::util::AlignedVec<16>], access: bool) -> u64 {
    let mut count = 0u64;
    let mut touched = 0u64;
    for bytes in segments {
        let mut offset = 16; // the segment header
        loop {
            match check_frame(bytes, offset) {
                FrameCheck::Valid {
                    seq,
                    payload,
                    next_offset,
                } => {
                    if access {
                        let record = access_record(payload).expect("record validates");
                        touched = touched.wrapping_add(record.at_ms.to_native() ^ seq);
                        if let ArchivedEvent::Accepted(order) = &record.event {
                            touched = touched.wrapping_add(u64::from(order.qty.to_native()));
                        }
                    } else {
                        touched = touched.wrapping_add(seq ^ payload.len() as u64);
                    }
                    count += 1;
                    offset = next_offset;
                }
                FrameCheck::End => break,
                other => panic!("frame at {offset}: {other:?}"),
            }
        }
    }
    black_box(touched);
    count
}

/// Reads every record and serialises it as its NDJSON line; returns the count.
fn read_records_to_json(journal_dir: &Path, out: &mut Vec<u8>) -> u64 {
    let mut reader = JournalReader::open(journal_dir, 0, ReadLimit::Written);
    let mut count = 0u64;
    let mut written = 0usize;
    while let Some((seq, record)) = reader.next_record().expect("read") {
        if out.len() >= 64 * 1024 {
            written += out.len();
            black_box(&out[..]);
            out.clear();
        }
        serde_json::to_writer(&mut *out, &record.to_json(seq)).expect("json");
        out.push(b'\n');
        count += 1;
    }
    black_box(written + out.len());
    out.clear();
    count
}

fn readers(c: &mut Criterion) {
    let fixture = write_journal();
    println!(
        "journal_read: {RECORDS} records, {} bytes in {} segment(s), {:.0} bytes a record",
        fixture.bytes,
        fixture.segments.len(),
        fixture.bytes as f64 / RECORDS as f64
    );
    let mut group = c.benchmark_group("journal_read");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::ElementsAndBytes {
        elements: RECORDS,
        bytes: fixture.bytes,
    });

    let mut buf = vec![0u8; 1 << 20];
    group.bench_function("raw_read", |b| {
        b.iter(|| assert_eq!(raw_read(&fixture.segments, &mut buf), fixture.bytes));
    });
    group.bench_function("reader", |b| {
        b.iter(|| assert_eq!(read_records(&fixture.journal_dir), RECORDS));
    });
    let in_memory = load_segments(&fixture.segments);
    group.bench_function("frames_crc", |b| {
        b.iter(|| assert_eq!(walk_frames(&in_memory, false), RECORDS));
    });
    group.bench_function("frames_crc_access", |b| {
        b.iter(|| assert_eq!(walk_frames(&in_memory, true), RECORDS));
    });
    drop(in_memory);
    let mut out = Vec::with_capacity(128 * 1024);
    group.bench_function("reader_to_json", |b| {
        b.iter(|| {
            assert_eq!(
                read_records_to_json(&fixture.journal_dir, &mut out),
                RECORDS
            )
        });
    });
    http_pages(&mut group, &fixture);
    group.finish();
}

/// Starts the engine on the fixture's data directory and the HTTP server on loopback.
fn start_server(
    runtime: &tokio::runtime::Runtime,
    data_dir: &Path,
) -> (
    Arc<Engine>,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let overrides = Overrides {
        config_file: None,
        listen: Some("127.0.0.1:0".parse().expect("address")),
        data_dir: Some(data_dir.to_path_buf()),
    };
    let config = Config::load_with_env(&overrides, |name| match name {
        "STAMPEDE_ADMIN_TOKEN" => Some("journal-read-bench-admin-token-0123".into()),
        "STAMPEDE_JOURNAL_FSYNC" => Some("none".into()),
        "STAMPEDE_SHARDS" => Some("2".into()),
        _ => None,
    })
    .expect("bench config is valid");
    let (engine, report) = Engine::start(&config).expect("engine recovers the journal");
    assert_eq!(report.records_replayed, RECORDS);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let state = Arc::new(AppState::new(
            config.http.body_bytes_max,
            Duration::from_millis(config.http.body_read_timeout_ms),
        ));
        state.set_engine(engine.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(http::serve(listener, state, async {
            let _ = stopped.await;
        }));
        (engine, address, stop, server)
    })
}

/// Reads `GET /v1/journal` pages from 0 to the end over one connection; returns the records.
async fn read_pages(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> u64 {
    let mut from = 0u64;
    let mut count = 0u64;
    loop {
        let request = Request::get(format!("/v1/journal?from={from}&limit={PAGE}"))
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .expect("request");
        sender.ready().await.expect("connection ready");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), hyper::StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        if body.is_empty() {
            return count;
        }
        let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
        count += lines;
        // Page on after the last line's `"seq":N` (keys are sorted; `"prev_seq"` does not
        // match with the leading quote).
        let last = body[..body.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        let line = &body[last..];
        let key = b"\"seq\":";
        let at = line
            .windows(key.len())
            .position(|w| w == key)
            .expect("seq in the last line")
            + key.len();
        let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        from = std::str::from_utf8(&line[at..at + digits])
            .expect("ascii")
            .parse()
            .expect("seq");
    }
}

fn http_pages(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    fixture: &Fixture,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (engine, address, stop, server) = start_server(&runtime, &fixture.data_dir);
    let host = address.to_string();
    let mut sender = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender
    });
    group.bench_function("http_pages", |b| {
        b.iter(|| {
            let count = runtime.block_on(read_pages(&mut sender, &host));
            assert_eq!(count, RECORDS);
        });
    });
    drop(sender);
    let _ = stop.send(());
    runtime.block_on(async {
        let _ = server.await;
    });
    engine.shutdown().expect("engine stops");
}

criterion_group!(benches, readers);
criterion_main!(benches);
