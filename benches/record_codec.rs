//! The journal record codec, one accepted order at a time.
//!
//! What it measures, per record:
//! - `encode`: [`FrameBatch::push`] of one accepted-order [`Record`] (rkyv serialisation into
//!   the frame layout), reusing one batch that is cleared between iterations, as a shard
//!   reuses its batch buffer. This runs on the shard thread for every accepted order.
//! - `seal`: [`seal_frames`] of that one frame (seq + CRC32C over length, seq and payload).
//!   This runs inside the journal's state lock in [`stampede::journal::Journal::append`], so
//!   its cost bounds how long one shard holds up the others.
//! - `check_access`: [`check_frame`] + [`access_record`], the zero-copy validated read that
//!   recovery, `GET /v1/journal` and fulfilment tailers do for every frame.
//! - `decode`: [`decode_record`], the owned decode (tests and tools), for comparison with the
//!   zero-copy read.
//!
//! The allocator is mimalloc, as in the `stampede` binary, so `encode` and `decode` pay what
//! production pays for their allocations.
//!
//! Each runs for an order without an address and for one with a typical ~100-byte address,
//! since the address is the only field that changes the record size much. Throughput is in
//! records (elements).
//!
//! Run: `cargo bench --bench record_codec` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick run).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use stampede::journal::record::{
    FrameCheck, access_record, check_frame, decode_record, seal_frames,
};
use stampede::journal::{Event, FrameBatch, OrderAccepted, Record};
use stampede::order::Payment;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADDRESS: &str = r#"{"name":"Ada Lovelace","street":"12 Example Road","city":"Oslo","postcode":"0150","country":"NO"}"#;

fn accepted(address: Option<&str>) -> Record {
    Record {
        at_ms: 1_700_000_000_123,
        event: Event::Accepted(OrderAccepted {
            order_id: "ord-2024-11-11-000000042".into(),
            user_id: "user-00000042".into(),
            sku: "SKU-PS5-SLIM-DE".into(),
            qty: 1,
            payment: Payment::Prepaid,
            address: address.map(str::to_owned),
        }),
    }
}

/// One sealed frame in an 8-aligned buffer, as a segment read or map provides it.
fn sealed_frame(record: &Record) -> AlignedVec<16> {
    let mut batch = FrameBatch::default();
    batch.push(record).expect("record encodes");
    let mut bytes = batch.as_bytes().to_vec();
    assert_eq!(seal_frames(&mut bytes, 42), 1);
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    aligned
}

fn record_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_codec");
    group.throughput(Throughput::Elements(1));
    for (label, address) in [("no_address", None), ("with_address", Some(ADDRESS))] {
        let record = accepted(address);
        let frame = sealed_frame(&record);
        let frame_bytes = frame.len();

        group.bench_function(BenchmarkId::new("encode", label), |b| {
            let mut batch = FrameBatch::with_capacity(4096);
            b.iter(|| {
                batch.clear();
                batch.push(black_box(&record)).expect("record encodes");
                black_box(batch.as_bytes().len())
            });
        });

        group.bench_function(BenchmarkId::new("seal", label), |b| {
            let mut bytes = frame.to_vec();
            let mut seq = 1u64;
            b.iter(|| {
                seq += 1;
                black_box(seal_frames(black_box(&mut bytes), seq))
            });
        });

        group.bench_function(BenchmarkId::new("check_access", label), |b| {
            b.iter(|| {
                let FrameCheck::Valid { seq, payload, .. } = check_frame(black_box(&frame), 0)
                else {
                    panic!("frame does not check");
                };
                let archived = access_record(payload).expect("payload validates");
                black_box((seq, archived.at_ms.to_native()))
            });
        });

        group.bench_function(BenchmarkId::new("decode", label), |b| {
            let FrameCheck::Valid { payload, .. } = check_frame(&frame, 0) else {
                panic!("frame does not check");
            };
            b.iter(|| decode_record(black_box(payload)).expect("payload decodes"));
        });

        eprintln!("record_codec/{label}: one sealed frame is {frame_bytes} bytes");
    }
    group.finish();
}

criterion_group!(benches, record_codec);
criterion_main!(benches);
