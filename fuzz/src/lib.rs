//! The fuzz targets of Stampede's decoders and of the journal's recovery scan, and the
//! invariants each one checks. One file, two drivers:
//!
//! - `fuzz/fuzz_targets/*.rs` (cargo-fuzz, libFuzzer, nightly) call these functions with
//!   libFuzzer's inputs;
//! - `tests/fuzz_short.rs` (stable, in `cargo test`) includes this file as a module
//!   (`#[path = "../fuzz/src/lib.rs"]`) and calls the same functions with proptest-generated
//!   and mutated inputs, plus every file of `fuzz/seeds/` and `fuzz/regressions/`.
//!
//! So this file may use only what both drivers have: `stampede` and its dependencies
//! (`crc32c`, `rkyv`, `serde_json`) and `tempfile`. No libFuzzer, no proptest.
//!
//! Every target panics when an invariant fails (that is the crash libFuzzer reports and the
//! failure proptest shrinks). The invariants and the allocation bounds are listed on each
//! target and in `fuzz/README.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stampede::engine::NewOrder;
use stampede::http::orders::decode_order;
use stampede::http::reply::ErrorCode;
use stampede::journal::record::{
    self, ArchivedRecord, Event, FRAME_ALIGN, FRAME_HEADER_BYTES, FrameBatch, FrameCheck,
    OrderAccepted, OrderAction, Record, SEGMENT_HEADER_BYTES, SkuChanged, access_record,
    check_frame, seal_frames,
};
use stampede::journal::{RecoveryError, recover, segment_file_name};
use stampede::limits;
use stampede::order::{Action, OrderStatus, Payment};

/// A global allocator that counts, per thread, what is allocated while a [`alloc::measure`]
/// runs on that thread. The binary that runs the targets installs it:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: alloc::CountingAlloc = alloc::CountingAlloc;
/// ```
pub mod alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// [`System`] plus per-thread counters (const-initialised thread locals without
    /// destructors: touching them never allocates).
    pub struct CountingAlloc;

    thread_local! {
        static ACTIVE: Cell<bool> = const { Cell::new(false) };
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
        static TOTAL: Cell<usize> = const { Cell::new(0) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    fn on_alloc(size: usize) {
        let _ = ACTIVE.try_with(|active| {
            if active.get() {
                let live = LIVE.get() + size as isize;
                LIVE.set(live);
                PEAK.set(PEAK.get().max(live));
                TOTAL.set(TOTAL.get() + size);
                COUNT.set(COUNT.get() + 1);
            }
        });
    }

    fn on_free(size: usize) {
        let _ = ACTIVE.try_with(|active| {
            if active.get() {
                LIVE.set(LIVE.get() - size as isize);
            }
        });
    }

    // SAFETY: every method forwards to `System` with the caller's arguments unchanged and
    // returns what `System` returned; the counting touches only thread-local `Cell`s.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
            let ptr = unsafe { System.alloc(layout) };
            if !ptr.is_null() {
                on_alloc(layout.size());
            }
            ptr
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
            let ptr = unsafe { System.alloc_zeroed(layout) };
            if !ptr.is_null() {
                on_alloc(layout.size());
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            on_free(layout.size());
            // SAFETY: forwarded as is; `ptr` came from this allocator, i.e. from `System`.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::realloc`'s contract.
            let new = unsafe { System.realloc(ptr, layout, new_size) };
            if !new.is_null() {
                // Counted as a new block of `new_size` (what a growing Vec really costs).
                on_free(layout.size());
                on_alloc(new_size);
            }
            new
        }
    }

    /// What one [`measure`] saw on its thread.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct AllocStats {
        /// Sum of the sizes of every allocation (a realloc counts its new size).
        pub total_bytes: usize,
        /// Most bytes allocated during the call and not yet freed, at any moment.
        pub peak_live_bytes: usize,
        pub allocations: usize,
    }

    /// Runs `f` and reports what it allocated on this thread (zeros when [`CountingAlloc`]
    /// is not the global allocator: check [`installed`]).
    pub fn measure<R>(f: impl FnOnce() -> R) -> (R, AllocStats) {
        /// Stops counting however `f` ends (a panic included: proptest goes on shrinking).
        struct Stop;
        impl Drop for Stop {
            fn drop(&mut self) {
                ACTIVE.set(false);
            }
        }
        assert!(!ACTIVE.get(), "alloc::measure does not nest");
        LIVE.set(0);
        PEAK.set(0);
        TOTAL.set(0);
        COUNT.set(0);
        ACTIVE.set(true);
        let stop = Stop;
        let result = f();
        drop(stop);
        let stats = AllocStats {
            total_bytes: TOTAL.get(),
            peak_live_bytes: PEAK.get().max(0) as usize,
            allocations: COUNT.get(),
        };
        (result, stats)
    }

    /// Runs `f` uncounted inside a [`measure`] (the caller's own bookkeeping). What `f`
    /// allocates must outlive the measurement, or its free is counted against it.
    pub fn uncounted<R>(f: impl FnOnce() -> R) -> R {
        let was = ACTIVE.replace(false);
        let result = f();
        ACTIVE.set(was);
        result
    }

    /// True when [`CountingAlloc`] is the global allocator of this binary.
    pub fn installed() -> bool {
        let (_, stats) = measure(|| std::hint::black_box(Box::new([0u8; 64])));
        stats.total_bytes >= 64
    }
}

/// The allocation bounds the targets assert (see `fuzz/README.md`).
pub mod bounds {
    /// `decode_order` / `decode_action` on a body of N bytes: total bytes allocated (every
    /// allocation and realloc, summed) stays within `DECODE_TOTAL_PER_BYTE * N +
    /// DECODE_CONST`, and the peak of live bytes within `DECODE_PEAK_PER_BYTE * N +
    /// DECODE_CONST`. The factor is dominated by error messages that quote the input:
    /// `{:?}` writes a byte as up to 6 characters (`\u{7f}`), serde_json's message and the
    /// decoder's message around it each hold such a copy, and a `String` that grows by
    /// doubling allocates up to ~4 times its length in all. Worst seen: a `qty` string of
    /// 2,184 DEL bytes, 47.5 N total and 18 N peak (`worst_known_inputs_stay_in_bounds` in
    /// `tests/fuzz_short.rs`).
    pub const DECODE_TOTAL_PER_BYTE: usize = 64;
    pub const DECODE_PEAK_PER_BYTE: usize = 32;
    pub const DECODE_CONST: usize = 4096;

    /// `check_frame` + `access_record` + `to_json` over a buffer whose frames' payloads
    /// add up to P bytes: total bytes allocated within `RECORD_TOTAL_PER_BYTE * P +
    /// RECORD_CONST` (a payload is at most `RECORD_PAYLOAD_BYTES_MAX`; `to_json` copies its
    /// strings, which a crafted archive may alias, and parses the address into a
    /// `serde_json::Value`, up to ~32 bytes per input byte for `[0,0,...]`).
    pub const RECORD_TOTAL_PER_BYTE: usize = 96;
    pub const RECORD_CONST: usize = 8192;

    /// `journal/cursor.rs`'s `READ_CHUNK_BYTES` (not public there; keep in step).
    pub const READ_CHUNK_BYTES: usize = 256 * 1024;

    /// `recover`: peak of live bytes within `2 * READ_CHUNK_BYTES + RECOVERY_CONST`, whatever
    /// the segments' sizes: the cursor's buffer (at most one chunk) and one more chunk for
    /// `rest_is_zero` or `valid_frame_after` (which reads the rest of the last segment a
    /// chunk at a time since finding 3 was fixed).
    pub const RECOVERY_CONST: usize = 64 * 1024;
}

/// Reads fuzz input as a stream of numbers; past the end every read is 0 (so every input,
/// however short, is a valid script).
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let byte = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        byte
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `max` bytes of the input (fewer at its end).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + max).min(self.data.len());
        self.pos = end.max(self.pos);
        &self.data[start..end]
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }
}

/// `STAMPEDE_FUZZ_DEBUG=1`: print what each call allocated and how each recovery ended.
fn debug() -> bool {
    std::env::var_os("STAMPEDE_FUZZ_DEBUG").is_some()
}

fn assert_alloc_within(what: &str, value: usize, per_byte: usize, n: usize, constant: usize) {
    let bound = per_byte.saturating_mul(n).saturating_add(constant);
    if debug() {
        eprintln!("ALLOC {what}: {value} bytes for {n} input bytes");
    }
    assert!(
        value <= bound,
        "{what}: {value} bytes allocated for an input of {n} bytes, bound {per_byte}*N + {constant} = {bound}"
    );
}

// ---------------------------------------------------------------------------------------
// (a) Order and action bodies
// ---------------------------------------------------------------------------------------

/// Target `order_body`: `decode_order` on arbitrary bytes.
///
/// Invariants: no panic; an error is 400 `bad_request` or 422 `invalid` and nothing else; an
/// accepted order satisfies every documented limit (ids, qty >= 1, address a JSON object of
/// at most `ADDRESS_BYTES_MAX` bytes) and decodes to itself again after re-encoding; the
/// allocation bounds of [`bounds`] hold.
pub fn order_body(data: &[u8]) {
    let (result, stats) = alloc::measure(|| decode_order(data));
    assert_alloc_within(
        "decode_order total",
        stats.total_bytes,
        bounds::DECODE_TOTAL_PER_BYTE,
        data.len(),
        bounds::DECODE_CONST,
    );
    assert_alloc_within(
        "decode_order peak",
        stats.peak_live_bytes,
        bounds::DECODE_PEAK_PER_BYTE,
        data.len(),
        bounds::DECODE_CONST,
    );
    match result {
        Ok(order) => check_valid_order(&order),
        Err(error) => assert!(
            matches!(error.code, ErrorCode::BadRequest | ErrorCode::Invalid),
            "decode_order answered {:?}: {}",
            error.code,
            error.detail
        ),
    }
}

/// An accepted address: at most `ADDRESS_BYTES_MAX` bytes of JSON object text.
///
/// Checked against the JSON grammar (`RawValue`), not against `serde_json::Value`: the
/// decoder accepts numbers beyond f64's range (`{"n":1e999}`) and unpaired `\u` surrogate
/// escapes, which `Value` refuses, so `to_json` renders such an address as a string, not
/// an object. That is finding 1 of
/// `fuzz/README.md`, reproduced by an ignored test in `tests/fuzz_short.rs`; set
/// `STAMPEDE_FUZZ_STRICT_ADDRESS=1` to fuzz with the strict check.
fn check_address(address: &str) {
    assert!(address.len() <= limits::ADDRESS_BYTES_MAX);
    assert!(
        address.starts_with('{'),
        "accepted a non-object address {address:?}"
    );
    serde_json::from_str::<&serde_json::value::RawValue>(address)
        .expect("an accepted address is JSON");
    if std::env::var_os("STAMPEDE_FUZZ_STRICT_ADDRESS").is_some_and(|v| v != "0") {
        let value: serde_json::Value =
            serde_json::from_str(address).expect("an accepted address parses as a Value");
        assert!(value.is_object());
    }
}

fn check_valid_order(order: &NewOrder) {
    for (field, value, max) in [
        ("order_id", &order.order_id, limits::ORDER_ID_BYTES_MAX),
        ("user_id", &order.user_id, limits::ORDER_ID_BYTES_MAX),
        ("sku", &order.sku, limits::SKU_BYTES_MAX),
    ] {
        assert!(
            stampede::order::validate_id(field, value, max).is_ok(),
            "accepted an invalid {field} {value:?}"
        );
    }
    assert!(order.qty >= 1, "accepted qty 0");
    if let Some(address) = &order.address {
        check_address(address);
    }
    // Re-encoded, the order decodes to itself (the address is kept as given).
    let mut body = format!(
        r#"{{"order_id":{},"user_id":{},"sku":{},"qty":{},"payment":"{}""#,
        serde_json::to_string(&order.order_id).unwrap(),
        serde_json::to_string(&order.user_id).unwrap(),
        serde_json::to_string(&order.sku).unwrap(),
        order.qty,
        order.payment.as_str()
    );
    if let Some(address) = &order.address {
        body.push_str(",\"address\":");
        body.push_str(address);
    }
    body.push('}');
    let again = decode_order(body.as_bytes()).expect("a re-encoded valid order decodes");
    assert_eq!(&again, order, "re-encoded order decodes differently");
}

/// Target `action_body`: `decode_action` on arbitrary bytes; the first byte picks the action
/// (all 18, the timer's two included), the rest is the body.
///
/// Invariants: no panic; an error is 400 or 422; a decoded action keeps the documented
/// shape (`reason` at most `REASON_BYTES_MAX`, an address only for `modify` and then a JSON
/// object of at most `ADDRESS_BYTES_MAX`, an exchange sku only for `exchange` and then a
/// valid id, `restock` only for `return`); the allocation bounds of [`bounds`] hold.
pub fn action_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let action = Action::ALL[usize::from(selector) % Action::ALL.len()];
    decode_action_checked(action, body);
}

/// `decode_action` of `body` for `action`, with the invariants of [`action_body`].
pub fn decode_action_checked(action: Action, body: &[u8]) {
    let (result, stats) =
        alloc::measure(|| stampede::http::lifecycle::decode_action("order-1", action, body));
    assert_alloc_within(
        "decode_action total",
        stats.total_bytes,
        bounds::DECODE_TOTAL_PER_BYTE,
        body.len(),
        bounds::DECODE_CONST,
    );
    assert_alloc_within(
        "decode_action peak",
        stats.peak_live_bytes,
        bounds::DECODE_PEAK_PER_BYTE,
        body.len(),
        bounds::DECODE_CONST,
    );
    match result {
        Ok(request) => {
            assert_eq!(request.action, action);
            assert_eq!(request.order_id, "order-1");
            if let Some(reason) = &request.reason {
                assert!(reason.len() <= limits::REASON_BYTES_MAX);
            }
            match (&request.address, action) {
                (Some(address), Action::Modify) => check_address(address),
                (None, Action::Modify) => panic!("modify accepted without an address"),
                (Some(_), other) => panic!("{other:?} kept an address"),
                (None, _) => {}
            }
            match (&request.exchange_sku, action) {
                (Some(sku), Action::Exchange) => {
                    assert!(stampede::order::validate_id("sku", sku, limits::SKU_BYTES_MAX).is_ok())
                }
                (None, Action::Exchange) => panic!("exchange accepted without a sku"),
                (Some(_), other) => panic!("{other:?} kept an exchange sku"),
                (None, _) => {}
            }
            assert!(!request.restock || action.takes_restock());
            if let Some(shipment) = &request.shipment {
                assert!(matches!(
                    action,
                    Action::Ship | Action::Reship | Action::Exchange
                ));
                for field in [&shipment.carrier, &shipment.tracking_no] {
                    assert!((1..=limits::SHIPMENT_FIELD_BYTES_MAX).contains(&field.len()));
                }
            }
        }
        Err(error) => assert!(
            matches!(error.code, ErrorCode::BadRequest | ErrorCode::Invalid),
            "decode_action answered {:?}: {}",
            error.code,
            error.detail
        ),
    }
}

// ---------------------------------------------------------------------------------------
// (b) Journal records
// ---------------------------------------------------------------------------------------

/// CRC32C of a frame as the format defines it: over the length bytes, then the seq and the
/// payload. Computed here independently of `record.rs`.
pub fn frame_crc(frame: &[u8], payload_len: usize) -> u32 {
    let crc = crc32c::crc32c(&frame[..4]);
    crc32c::crc32c_append(crc, &frame[8..FRAME_HEADER_BYTES + payload_len])
}

/// A whole frame (header, payload, zero padding) around `payload`, with a correct CRC.
/// Unlike `seal_frames`, it takes any payload length (even 0 or too long).
pub fn frame_around(payload: &[u8], seq: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len() + FRAME_ALIGN);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().next_multiple_of(FRAME_ALIGN), 0);
    let crc = frame_crc(&frame, payload.len());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut out = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    out.extend_from_slice(bytes);
    out
}

/// Target `journal_record`: `check_frame` + `access_record` + `to_json` on arbitrary bytes.
/// The first byte picks how the rest is used:
/// - 0: raw journal bytes (CRCs as they come), walked frame by frame from offset 0, and
///   `check_frame` at every offset;
/// - 1: the rest is one payload, framed with a correct CRC (so rkyv validation and
///   `to_json` see arbitrary payloads);
/// - 2: as 1, with the frame 1..7 bytes off 8-alignment in the buffer;
/// - 3: the rest cut into several payloads (lengths from the input), each framed, walked.
///
/// Invariants: no panic; `check_frame` says `Valid` only when the CRC (computed here
/// independently) matches, and always for a frame built right; a payload that validates
/// deserializes, and its `to_json` equals that of the record re-encoded by `FrameBatch`
/// (the zero-copy view and the owned record agree); the allocation bound of [`bounds`]
/// holds for `check_frame` + `access_record` + `to_json`.
pub fn journal_record(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8() % 4;
    match mode {
        0 => {
            let bytes = aligned(input.rest());
            walk_frames(&bytes, 0);
            for offset in 0..=bytes.len() + 1 {
                if let FrameCheck::Valid { payload, .. } = check_frame(&bytes, offset) {
                    check_payload(payload, 0);
                }
            }
        }
        1 | 2 => {
            let seq = u64::from(input.u32());
            let misalign = if mode == 2 {
                1 + usize::from(input.u8() % 7)
            } else {
                0
            };
            let payload = input.rest();
            let mut bytes = vec![0xA5; misalign];
            bytes.extend_from_slice(&frame_around(payload, seq));
            let bytes = aligned(&bytes);
            let check = check_frame(&bytes, misalign);
            let in_range = (1..=limits::RECORD_PAYLOAD_BYTES_MAX).contains(&payload.len());
            match check {
                FrameCheck::Valid {
                    seq: got,
                    payload: got_payload,
                    next_offset,
                } => {
                    assert!(in_range, "a frame of {} bytes checked", payload.len());
                    assert_eq!(got, seq);
                    assert_eq!(got_payload, payload);
                    assert!(next_offset <= bytes.len());
                    check_payload(got_payload, seq);
                }
                // `check_frame` pads to the buffer's 8-aligned offsets: a frame placed off
                // alignment (mode 2) may lack the padding it expects. Any aligned one checks.
                FrameCheck::Incomplete { .. } if misalign != 0 => {}
                other => assert!(!in_range, "a well-built frame did not check: {other:?}"),
            }
        }
        _ => {
            let mut bytes = Vec::new();
            let mut seq = u64::from(input.u16());
            while !input.is_empty() {
                let len = usize::from(input.u16()) % (limits::RECORD_PAYLOAD_BYTES_MAX + 64);
                bytes.extend_from_slice(&frame_around(input.bytes(len), seq));
                seq += 1;
            }
            walk_frames(&aligned(&bytes), 0);
        }
    }
}

/// Walks the frames of `bytes` from `offset` as a segment cursor would.
fn walk_frames(bytes: &[u8], mut offset: usize) {
    loop {
        let (check, stats) = alloc::measure(|| check_frame(bytes, offset));
        // Only a `Corrupt` reason is ever allocated: a short message.
        assert!(
            stats.total_bytes <= 256,
            "check_frame allocated {} bytes",
            stats.total_bytes
        );
        match check {
            FrameCheck::Valid {
                seq,
                payload,
                next_offset,
            } => {
                let stored = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap());
                assert_eq!(
                    stored,
                    frame_crc(&bytes[offset..], payload.len()),
                    "check_frame accepted a frame whose CRC does not match at {offset}"
                );
                assert!(next_offset > offset && next_offset % FRAME_ALIGN == offset % FRAME_ALIGN);
                check_payload(payload, seq);
                offset = next_offset;
            }
            FrameCheck::End => {
                assert_eq!(offset, bytes.len());
                return;
            }
            FrameCheck::Incomplete { needed } => {
                assert!(
                    offset + needed > bytes.len(),
                    "incomplete, yet {needed} bytes are there"
                );
                return;
            }
            FrameCheck::Corrupt { .. } => return,
        }
    }
}

/// Validates a checked payload, renders it, and compares with the owned round trip.
fn check_payload(payload: &[u8], seq: u64) {
    let (json, stats) = alloc::measure(|| {
        access_record(payload).ok().map(|archived| {
            let _ = archived.type_name();
            archived.to_json(seq)
        })
    });
    assert_alloc_within(
        "access_record + to_json total",
        stats.total_bytes,
        bounds::RECORD_TOTAL_PER_BYTE,
        payload.len(),
        bounds::RECORD_CONST,
    );
    let Some(json) = json else {
        return;
    };
    let archived = access_record(payload).expect("validated once, validates again");
    let owned: Record = rkyv::deserialize::<Record, rkyv::rancor::Error>(archived)
        .expect("a validated archive deserializes");
    // rkyv checks alignment at the payload's address: `decode_record` (which copies into
    // an aligned buffer) agrees only for a payload that is aligned, as every frame's is.
    if (payload.as_ptr() as usize) % FRAME_ALIGN == 0 {
        assert_eq!(
            record::decode_record(payload).expect("decode_record agrees with access_record"),
            owned
        );
    }
    serde_json::to_string(&json).expect("to_json serializes");
    // The record written again by the engine's encoder reads back as the same JSON. A crafted
    // archive may alias its strings and so re-encode larger than the limit: then skip.
    let mut batch = FrameBatch::default();
    if batch.push(&owned).is_err() {
        return;
    }
    let mut frames = batch.as_bytes().to_vec();
    seal_frames(&mut frames, seq);
    let frames = aligned(&frames);
    let FrameCheck::Valid { payload: again, .. } = check_frame(&frames, 0) else {
        panic!("a re-encoded record does not check");
    };
    let again = access_record(again).expect("a re-encoded record validates");
    assert_eq!(again.to_json(seq), json, "zero-copy and owned views differ");
}

// ---------------------------------------------------------------------------------------
// (c) The recovery scan
// ---------------------------------------------------------------------------------------

/// A deterministic record of one of six shapes, `size` sizing its longest string.
pub fn sample_record(kind: u8, n: u64, size: usize) -> Record {
    let size = size.min(1000);
    let order_id = format!("order-{n}");
    let at_ms = 1_700_000_000_000 + n % (1 << 40);
    let action = |action: Action, status: OrderStatus| OrderAction {
        order_id: order_id.clone(),
        action,
        status,
        prev_seq: n.saturating_sub(1),
        reason: None,
        address: None,
        redirect: false,
        restock: false,
        exchange_sku: None,
    };
    let event = match kind % 6 {
        0 => Event::Accepted(OrderAccepted {
            order_id: order_id.clone(),
            user_id: format!("user-{}", n % 17),
            sku: "SKU-9".into(),
            qty: 1 + (n % 3) as u32,
            payment: [Payment::Prepaid, Payment::Escrow, Payment::Cod][(n % 3) as usize],
            address: (size > 0).then(|| format!(r#"{{"street":"{}"}}"#, "y".repeat(size))),
        }),
        1 => Event::Sku(SkuChanged {
            sku: format!("SKU-{}", n % 50),
            slot_index: (n % 50) as u32,
            stock_total: 1000 + n % 1_000_000,
            per_user_limit: 2,
            max_per_order: 10,
            payment_timeout_s: 900,
        }),
        2 => Event::Action(Box::new(OrderAction {
            reason: Some("r".repeat(size.min(limits::REASON_BYTES_MAX))),
            ..action(Action::Cancel, OrderStatus::Cancelled)
        })),
        3 => Event::Action(Box::new(OrderAction {
            address: Some(format!(r#"{{"city":"{}"}}"#, "c".repeat(size))),
            redirect: n % 2 == 0,
            ..action(Action::Modify, OrderStatus::Shipped)
        })),
        4 => Event::Action(Box::new(OrderAction {
            exchange_sku: Some("SKU-X".into()),
            ..action(Action::Exchange, OrderStatus::Delivered)
        })),
        _ => Event::Action(Box::new(OrderAction {
            restock: true,
            ..action(Action::Return, OrderStatus::Returned)
        })),
    };
    Record { at_ms, event }
}

/// Sealed frames of `records`, seqs from `first_seq` on.
pub fn sealed_frames(records: &[Record], first_seq: u64) -> Vec<u8> {
    let mut batch = FrameBatch::default();
    for record in records {
        batch.push(record).expect("sample records encode");
    }
    let mut bytes = batch.as_bytes().to_vec();
    seal_frames(&mut bytes, first_seq);
    bytes
}

/// When false (the default), the recovery target keeps seqs below `limits::SEQ_MAX` + 40
/// (a renamed segment or a fresh frame may be named a little past the last seq): a journal whose seqs come within 64 of `u64::MAX` makes `recover`
/// panic on arithmetic overflow (see `fuzz/README.md`, "Findings", and the ignored
/// reproducer in `tests/fuzz_short.rs`). Set `STAMPEDE_FUZZ_HUGE_SEQS=1` to fuzz them too.
fn huge_seqs_allowed() -> bool {
    std::env::var_os("STAMPEDE_FUZZ_HUGE_SEQS").is_some_and(|v| v != "0")
}

/// One journal directory's files, by name.
pub type JournalFiles = BTreeMap<String, Vec<u8>>;

/// Bytes of a recovery script's header: class, seq (u16), records, shape seed, segments,
/// three cut points, zeros.
pub const SCRIPT_HEADER_BYTES: usize = 10;
/// Bytes of one mutation of a recovery script: op, file, a (u16), b (u16), c, d.
pub const SCRIPT_OP_BYTES: usize = 8;

/// A small deterministic generator (splitmix64) for what a script only seeds.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Builds a journal directory's files from a fuzz script; also returns whether any mutation
/// was applied. The script is a fixed header ([`SCRIPT_HEADER_BYTES`]) then up to 16
/// mutations of [`SCRIPT_OP_BYTES`] each, so every op keeps its meaning when the bytes
/// around it change:
///
/// ```text
/// header: class  seq:u16  records  shape_seed  segments  cut1 cut2 cut3  zeros
///   class % 8: 6 = seqs just below SEQ_MAX, 7 = near u64::MAX (only with
///   STAMPEDE_FUZZ_HUGE_SEQS=1), else 1 + seq % 4096
///   records % 40 sample records (shapes and sizes from shape_seed), in 1 + segments % 4
///   segments cut by cut1..3; zeros & 0x80: (zeros & 0x7f) * 64 zero bytes after the last
/// op: op  file  a:u16  b:u16  c  d      (see `mutate`)
/// ```
pub fn journal_from_script(data: &[u8]) -> (JournalFiles, bool) {
    let mut input = Input::new(data);
    let header = input.bytes(SCRIPT_HEADER_BYTES);
    let byte = |i: usize| header.get(i).copied().unwrap_or(0);
    let seq_bits = u16::from_le_bytes([byte(1), byte(2)]);
    let first_seq = match byte(0) % 8 {
        6 => limits::SEQ_MAX - u64::from(seq_bits),
        // Frames end below u64::MAX (`seal_frames` steps past the last seq).
        7 if huge_seqs_allowed() => u64::MAX - 60 - u64::from(seq_bits % 200),
        _ => 1 + u64::from(seq_bits % 4096),
    };
    let n_records = usize::from(byte(3) % 40);
    let mut mix = Mix(u64::from(byte(4)));
    let records: Vec<Record> = (0..n_records)
        .map(|i| {
            let shape = mix.next();
            let size = (shape >> 8) as usize % 3 * (shape >> 16) as usize % 400;
            sample_record(shape as u8, first_seq.wrapping_add(i as u64), size)
        })
        .collect();
    // Segments: every one but the last holds at least one record (the writer rotates only
    // after writing, and two empty segments would share a name).
    let wanted_segments = 1 + usize::from(byte(5) % 4);
    let mut counts = Vec::new();
    let mut left = n_records;
    for cut in 0..3 {
        if counts.len() + 1 >= wanted_segments || left <= 1 {
            break;
        }
        let count = 1 + usize::from(byte(6 + cut)) % (left - 1);
        counts.push(count);
        left -= count;
    }
    counts.push(left);
    let mut files = JournalFiles::new();
    let mut seq = first_seq;
    let mut index = 0;
    let mut last_name = String::new();
    for count in counts {
        let mut bytes = record::segment_header(seq).to_vec();
        bytes.extend_from_slice(&sealed_frames(&records[index..index + count], seq));
        last_name = segment_file_name(seq);
        files.insert(last_name.clone(), bytes);
        index += count;
        seq = seq.wrapping_add(count as u64);
    }
    // The preallocator's zeros after the last segment's data.
    let zeros = byte(9);
    if zeros & 0x80 != 0 {
        let last = files.get_mut(&last_name).unwrap();
        last.resize(last.len() + usize::from(zeros & 0x7f) * 64, 0);
    }
    let mut mutated = false;
    for _ in 0..16 {
        if input.is_empty() {
            break;
        }
        let op = input.bytes(SCRIPT_OP_BYTES);
        let mut padded = [0u8; SCRIPT_OP_BYTES];
        padded[..op.len()].copy_from_slice(op);
        mutated |= mutate(&mut files, padded, seq);
    }
    (files, mutated)
}

/// One mutation of the journal's files (`op`: op, file, a:u16, b:u16, c, d); false when it
/// changed nothing of the journal. Positions (`a`) fall in a file's frames (past its
/// header) unless the op byte's top bit is set.
fn mutate(files: &mut JournalFiles, op: [u8; SCRIPT_OP_BYTES], next_seq: u64) -> bool {
    let [kind, file_pick, a0, a1, b0, b1, c, d] = op;
    let a = usize::from(u16::from_le_bytes([a0, a1]));
    let b = usize::from(u16::from_le_bytes([b0, b1]));
    let names: Vec<String> = files.keys().cloned().collect();
    if names.is_empty() {
        return false;
    }
    let name = names[usize::from(file_pick) % names.len()].clone();
    let in_header = kind & 0x80 != 0;
    // A position in `0..=len` (`0..len` when `inside`): past the header unless asked.
    let position = |len: usize, inside: bool| {
        let end = if inside { len.saturating_sub(1) } else { len };
        let from = if in_header {
            0
        } else {
            SEGMENT_HEADER_BYTES.min(end)
        };
        from + a % (end - from + 1)
    };
    let file = files.get_mut(&name).unwrap();
    match kind % 13 {
        0 => {
            // Flip one bit.
            if file.is_empty() {
                return false;
            }
            let at = position(file.len(), true);
            file[at] ^= 1 << (c % 8);
        }
        1 => {
            // Overwrite one byte.
            if file.is_empty() {
                return false;
            }
            let at = position(file.len(), true);
            file[at] = c;
        }
        2 => {
            // Cut the file short (a torn write, or lost data).
            let at = position(file.len(), false);
            file.truncate(at);
        }
        3 => {
            // Garbage appended.
            let mut mix = Mix(u64::from(d));
            let garbage: Vec<u8> = (0..usize::from(c % 64)).map(|_| mix.next() as u8).collect();
            file.extend_from_slice(&garbage);
        }
        4 => {
            // Zeros appended (preallocation).
            file.resize(file.len() + usize::from(c) * 8, 0);
        }
        5 => {
            // A range zeroed (lost pages).
            let at = position(file.len(), false);
            let len = (b % 4096).min(file.len() - at);
            file[at..at + len].fill(0);
        }
        6 => {
            // A range removed (frames after it move off alignment).
            let at = position(file.len(), false);
            let len = usize::from(c).min(file.len() - at);
            file.drain(at..at + len);
        }
        7 => {
            // A range copied from another file (or this one) over this one: stale frames.
            let other = names[usize::from(d) % names.len()].clone();
            let source = if other == name {
                file.clone()
            } else {
                files[&other].clone()
            };
            let file = files.get_mut(&name).unwrap();
            let from = (b % (source.len() + 1))
                .next_multiple_of(FRAME_ALIGN)
                .min(source.len());
            let len = (usize::from(c) * 16).min(source.len() - from);
            let to = position(file.len(), false);
            if file.len() < to + len {
                file.resize(to + len, 0);
            }
            file[to..to + len].copy_from_slice(&source[from..from + len]);
        }
        8 => {
            // A segment lost.
            files.remove(&name);
        }
        9 => {
            // A segment renamed (its header still says the old seq).
            let seq = next_seq.saturating_sub(u64::from(c));
            let bytes = files.remove(&name).unwrap();
            files.insert(segment_file_name(seq), bytes);
        }
        10 => {
            // A frame with a correct CRC, of a sample record, at the end (at whatever
            // alignment the file's length gives).
            let seq = next_seq
                .saturating_add(u64::from(c % 4))
                .saturating_sub(2)
                .min(u64::MAX - 1);
            let frame = sealed_frames(&[sample_record(d, seq, b % 400)], seq);
            file.extend_from_slice(&frame);
        }
        11 => {
            // A new segment whose header is torn (a crash while rotating).
            let len = usize::from(c) % SEGMENT_HEADER_BYTES;
            files.insert(
                segment_file_name(next_seq),
                record::segment_header(next_seq)[..len].to_vec(),
            );
        }
        _ => {
            // A file that is not a segment: ignored by the scan.
            files.insert(format!("notes-{c}.txt"), b"not a segment".to_vec());
            return false;
        }
    }
    true
}

/// `(offset, seq, record)` of every frame in `bytes` at an 8-aligned offset (from the
/// segment header on) whose CRC matches and whose padding is there, checked here without
/// `check_frame`; `record` is `None` when the payload does not validate.
pub fn independent_valid_frames(bytes: &[u8], from: usize) -> Vec<(usize, u64, Option<Record>)> {
    let mut frames = Vec::new();
    let mut offset = from.next_multiple_of(FRAME_ALIGN).max(SEGMENT_HEADER_BYTES);
    while offset + FRAME_HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let end = offset + FRAME_HEADER_BYTES + len;
        if (1..=limits::RECORD_PAYLOAD_BYTES_MAX).contains(&len)
            && end.next_multiple_of(FRAME_ALIGN) <= bytes.len()
            && u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap())
                == frame_crc(&bytes[offset..], len)
        {
            let seq = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().unwrap());
            let record = record::decode_record(&bytes[offset + FRAME_HEADER_BYTES..end]).ok();
            frames.push((offset, seq, record));
        }
        offset += FRAME_ALIGN;
    }
    frames
}

fn parse_segment_name(name: &str) -> Option<u64> {
    stampede::journal::parse_segment_file_name(name)
}

/// A scratch directory for one recovery run: in `/dev/shm` where there is one (the scan
/// fsyncs what it truncates), else the system's temp directory.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("stampede-fuzz-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("stampede-fuzz-")
        .tempdir()
        .expect("temp dir")
}

fn read_dir_files(dir: &Path) -> JournalFiles {
    let mut files = JournalFiles::new();
    for entry in std::fs::read_dir(dir).expect("read journal dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().into_string().expect("utf-8 name");
        files.insert(name, std::fs::read(entry.path()).expect("read file"));
    }
    files
}

/// What one `recover` returned, with the records it applied.
type Recovered = (
    Result<stampede::journal::RecoveryReport, RecoveryError>,
    Vec<(u64, Record)>,
    alloc::AllocStats,
);

fn run_recover(dir: &Path) -> Recovered {
    let mut applied = Vec::new();
    let (result, stats) = alloc::measure(|| {
        recover(dir, &mut |seq, archived: &ArchivedRecord| {
            alloc::uncounted(|| {
                let record = rkyv::deserialize::<Record, rkyv::rancor::Error>(archived)
                    .expect("an applied record deserializes");
                applied.push((seq, record));
            });
            Ok(())
        })
    });
    (result, applied, stats)
}

/// Target `recovery`: `recover` on a journal directory built from the input: valid frames
/// of sample records in 1-4 segments, then up to 16 mutations (bit flips, overwrites,
/// truncations, garbage or zeros appended, ranges zeroed, removed or copied from elsewhere,
/// segments lost or renamed, fresh valid frames appended, a torn new segment, a foreign
/// file). See [`journal_from_script`].
///
/// Invariants:
/// 1. no panic; the result is `Ok` or `Err(Damage)` (never `Io`, never `Apply`);
/// 2. every applied record is the record of a frame found in one of the files, at an
///    8-aligned offset, whose CRC (computed here, not by `check_frame`) matches and whose
///    seq is the one applied: no record whose CRC fails is ever replayed;
/// 3. applied seqs are consecutive from the first segment's seq;
/// 4. `Damage` names a file of the directory at an 8-aligned offset within it, and the
///    directory is left exactly as it was;
/// 5. `Ok`: the report counts the applied records and continues at the next seq; every file
///    is as it was except at most one, the last segment, which was truncated at a frame
///    boundary (its bytes before that unchanged) or, with a torn header, removed; the cut
///    bytes are a torn tail: not all zeros and holding no CRC-valid frame; the writer's
///    position has only zeros after it; the files hold no CRC-valid frame that was not
///    applied;
/// 6. `Ok`: recovering again changes nothing and applies the same records;
/// 7. an unmutated journal recovers every record with nothing truncated;
/// 8. peak live bytes within `2 * READ_CHUNK_BYTES + RECOVERY_CONST`, whatever the segments' sizes.
pub fn recovery(data: &[u8]) {
    let (files, mutated) = journal_from_script(data);
    let dir = scratch_dir();
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).expect("write segment");
    }
    let before = read_dir_files(dir.path());
    let (result, applied, stats) = run_recover(dir.path());
    let after = read_dir_files(dir.path());
    if debug() {
        let kind = match &result {
            Ok(r) if r.truncated.is_some() => "ok-truncated",
            Ok(_) => "ok",
            Err(RecoveryError::Damage { reason, .. }) => {
                eprintln!("DAMAGE {reason}");
                "damage"
            }
            Err(_) => "other",
        };
        eprintln!(
            "RECOVERY {kind} mutated={mutated} applied={} peak={} segs={}",
            applied.len(),
            stats.peak_live_bytes,
            files.len()
        );
    }

    let segments: Vec<(u64, &String)> = before
        .keys()
        .filter_map(|name| parse_segment_name(name).map(|seq| (seq, name)))
        .collect();
    let largest = segments
        .iter()
        .map(|(_, name)| before[*name].len())
        .max()
        .unwrap_or(0);
    let peak_bound = 2 * bounds::READ_CHUNK_BYTES + bounds::RECOVERY_CONST;
    assert!(
        stats.peak_live_bytes <= peak_bound,
        "recover: peak {} live bytes, bound {peak_bound} (largest segment {largest})",
        stats.peak_live_bytes
    );

    // 2. Every applied record stands on a CRC-valid frame with its seq.
    let valid: Vec<(u64, Option<Record>)> = segments
        .iter()
        .flat_map(|(_, name)| independent_valid_frames(&before[*name], 0))
        .map(|(_, seq, record)| (seq, record))
        .collect();
    for (seq, record) in &applied {
        assert!(
            valid
                .iter()
                .any(|(s, r)| s == seq && r.as_ref() == Some(record)),
            "seq {seq} was replayed without a CRC-valid frame holding it"
        );
    }
    // 3. Consecutive, from the first segment's seq.
    if let Some((first, _)) = applied.first() {
        assert_eq!(Some(*first), segments.first().map(|(seq, _)| *seq));
        for (index, (seq, _)) in applied.iter().enumerate() {
            assert_eq!(*seq, first + index as u64, "applied seqs have a gap");
        }
    }

    match result {
        Err(RecoveryError::Damage { path, offset, .. }) => {
            // 4.
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(before.contains_key(name), "damage in unknown file {name}");
            assert!(offset <= before[name].len() as u64);
            assert_eq!(
                offset % FRAME_ALIGN as u64,
                0,
                "damage offset not a frame boundary"
            );
            assert!(
                after == before,
                "recovery changed files and then refused to start"
            );
        }
        Err(other) => panic!("recover failed other than with Damage: {other}"),
        Ok(report) => {
            // 5.
            assert_eq!(report.records, applied.len() as u64);
            let last_segment = segments.last().map(|(seq, name)| (*seq, (*name).clone()));
            let expected_next = match (applied.last(), &report.tail.segment) {
                (Some((seq, _)), _) => seq + 1,
                (None, Some((_, first_seq, _))) => *first_seq,
                (None, None) => 1,
            };
            assert_eq!(report.tail.next_seq, expected_next);
            let mut changed: Vec<&String> = before
                .keys()
                .filter(|name| after.get(*name) != Some(&before[*name]))
                .collect();
            changed.extend(after.keys().filter(|name| !before.contains_key(*name)));
            match &report.truncated {
                None => assert!(changed.is_empty(), "files changed without a truncation"),
                Some((path, offset, dropped)) => {
                    assert!(mutated, "an unmutated journal was truncated");
                    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                    assert_eq!(
                        Some(&name),
                        last_segment.as_ref().map(|(_, name)| name),
                        "truncated a segment that is not the last"
                    );
                    assert!(changed.iter().all(|changed| **changed == name));
                    let old = &before[&name];
                    let offset = *offset as usize;
                    match after.get(&name) {
                        None => {
                            // A torn creation: shorter than a header, or nothing but zeros
                            // (its size reached the disk, its header did not).
                            assert!(
                                old.len() < SEGMENT_HEADER_BYTES || old.iter().all(|b| *b == 0),
                                "removed a whole segment"
                            );
                            assert_eq!((offset, *dropped), (0, 0));
                        }
                        Some(new) => {
                            assert_eq!(new.len(), offset);
                            assert_eq!(&old[..offset], &new[..]);
                            assert_eq!(*dropped as usize, old.len() - offset);
                            assert_eq!(offset % FRAME_ALIGN, 0);
                            let cut = &old[offset..];
                            assert!(cut.iter().any(|b| *b != 0), "truncated zeros");
                            assert!(
                                independent_valid_frames(old, offset).is_empty(),
                                "truncated a tail that holds a CRC-valid frame"
                            );
                        }
                    }
                }
            }
            if let Some((path, first_seq, len)) = &report.tail.segment {
                let name = path.file_name().unwrap().to_str().unwrap();
                assert_eq!(parse_segment_name(name), Some(*first_seq));
                let bytes = &after[name];
                assert!(*len as usize <= bytes.len());
                assert!(
                    bytes[*len as usize..].iter().all(|b| *b == 0),
                    "the writer would continue before non-zero bytes"
                );
            }
            let still_valid = after
                .iter()
                .filter(|(name, _)| parse_segment_name(name).is_some())
                .map(|(_, bytes)| independent_valid_frames(bytes, 0).len())
                .sum::<usize>();
            assert_eq!(
                still_valid,
                applied.len(),
                "a CRC-valid frame of the journal was not applied"
            );
            // 6.
            let (again, applied_again, _) = run_recover(dir.path());
            let again = again.expect("a recovered journal recovers again");
            assert!(again.truncated.is_none(), "second recovery truncated again");
            assert_eq!(
                applied_again, applied,
                "second recovery applied other records"
            );
            assert_eq!(read_dir_files(dir.path()), after);
            // 7.
            if !mutated {
                assert!(report.truncated.is_none());
            }
        }
    }
    if !mutated {
        assert!(
            matches!(
                run_recover(dir.path()).0,
                Ok(ref report) if report.truncated.is_none()
            ),
            "an unmutated journal did not recover"
        );
        let count: usize = files
            .values()
            .map(|b| independent_valid_frames(b, 0).len())
            .sum();
        assert_eq!(applied.len(), count, "an unmutated journal lost records");
    }
}

// ---------------------------------------------------------------------------------------
// Seeds: real bodies and frames
// ---------------------------------------------------------------------------------------

/// The seed corpus, per target: real order and action bodies (the contract's examples and
/// the unit tests' edge cases), real frames written by `FrameBatch`, and recovery scripts.
/// `tests/fuzz_short.rs` writes them to `fuzz/seeds/<target>/` with
/// `STAMPEDE_WRITE_FUZZ_SEEDS=1` and feeds them to the targets on every run.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let long_address = format!(r#"{{"x":"{}"}}"#, "y".repeat(1100));
    let bodies: Vec<String> = vec![
        r#"{"order_id":"u42-1","user_id":"u42","sku":"SKU-1","qty":2,"payment":"cod","address":{"city": "Oslo"},"extra":1}"#.into(),
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":1}"#.into(),
        r#"{"order_id":"o-7","user_id":"alice","sku":"TSHIRT-M","qty":1,"payment":"escrow","address":{"name":"Alice","street":"1 Main St","city":"Oslo","zip":"0150","country":"NO"}}"#.into(),
        r#"{"order_id":"o-8","user_id":"bob","sku":"TSHIRT-M","qty":3,"payment":"prepaid"}"#.into(),
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":1000000000000000000000000}"#.into(),
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":-1}"#.into(),
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":1.5}"#.into(),
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":"1"}"#.into(),
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":1,"address":"x"}"#.into(),
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":1} trailing"#.into(),
        r#"{"order_id":"a b","user_id":"b","sku":"c","qty":1,"payment":"card"}"#.into(),
        r#"["a","b","c",1,"prepaid",null]"#.into(),
        format!(r#"{{"order_id":"a","user_id":"b","sku":"c","qty":1,"address":{long_address}}}"#),
        r#"{"order_id":"\u00e9\ud83d\ude00","user_id":"b","sku":"c","qty":1,"payment":"\u007f\u0001"}"#.into(),
        // Accepted, but rendered as a string by `to_json` (finding 2).
        r#"{"order_id":"a","user_id":"b","sku":"c","qty":1,"address":{"n":1e999,"s":"\ud90d\ud083"}}"#.into(),
        "not json".into(),
        String::new(),
    ];
    for body in &bodies {
        seeds.push(("order_body", body.clone().into_bytes()));
    }
    let action_bodies = [
        (Action::Pay, ""),
        (Action::Cancel, r#"{"reason":"changed my mind"}"#),
        (Action::Modify, r#"{"address":{"city":"Bergen"}}"#),
        (Action::Modify, r#"{"address":"Bergen"}"#),
        (Action::Return, r#"{"reason":"too small","restock":true}"#),
        (Action::Exchange, r#"{"sku":"TSHIRT-L","reason":"size"}"#),
        (Action::Exchange, r#"{"sku":"bad sku"}"#),
        (Action::Ship, "  \n"),
        (Action::Refund, r#"[1]"#),
    ];
    for (action, body) in action_bodies {
        let mut bytes = vec![action as u8];
        bytes.extend_from_slice(body.as_bytes());
        seeds.push(("action_body", bytes));
    }
    // Real frames: each shape alone (raw mode 0), as a payload (mode 1), and a few together.
    let mut all = Vec::new();
    for kind in 0..6u8 {
        let record = sample_record(kind, 40 + u64::from(kind), usize::from(kind) * 37);
        let frames = sealed_frames(std::slice::from_ref(&record), 40 + u64::from(kind));
        let mut raw = vec![0u8];
        raw.extend_from_slice(&frames);
        seeds.push(("journal_record", raw));
        let len = u32::from_le_bytes(frames[..4].try_into().unwrap()) as usize;
        let mut payload = vec![1u8];
        payload.extend_from_slice(&(40 + u32::from(kind)).to_le_bytes());
        payload.extend_from_slice(&frames[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]);
        seeds.push(("journal_record", payload));
        all.push(record);
    }
    let mut several = vec![0u8];
    several.extend_from_slice(&sealed_frames(&all, 1));
    seeds.push(("journal_record", several));
    // Recovery scripts: a header, then ops (see `journal_from_script`).
    let header = |class: u8, seq: u16, records: u8, shape: u8, segments: u8, zeros: u8| {
        let [lo, hi] = seq.to_le_bytes();
        vec![class, lo, hi, records, shape, segments, 3, 5, 7, zeros]
    };
    let op = |kind: u8, file: u8, a: u16, b: u16, c: u8, d: u8| {
        let [a0, a1] = a.to_le_bytes();
        let [b0, b1] = b.to_le_bytes();
        [kind, file, a0, a1, b0, b1, c, d]
    };
    let scripts: Vec<Vec<u8>> = vec![
        // clean journals: one segment, three segments with preallocated zeros, empty
        header(0, 0, 8, 1, 0, 0),
        header(0, 41, 20, 2, 2, 0x84),
        header(0, 0, 0, 0, 0, 0),
        [header(0, 0, 6, 3, 0, 0), op(2, 0, 500, 0, 0, 0).to_vec()].concat(),
        [header(0, 7, 12, 4, 2, 0), op(0, 1, 100, 0, 3, 0).to_vec()].concat(),
        [
            header(0, 7, 12, 4, 2, 0x81),
            op(0, 2, 300, 0, 6, 0).to_vec(),
        ]
        .concat(),
        [
            header(0, 1, 5, 5, 0, 0x90),
            op(3, 0, 0, 0, 40, 9).to_vec(),
            op(10, 0, 0, 0, 2, 1).to_vec(),
        ]
        .concat(),
        [header(0, 1, 4, 6, 1, 0), op(11, 0, 0, 0, 7, 0).to_vec()].concat(),
        [header(0, 1, 9, 7, 2, 0), op(7, 2, 64, 16, 20, 0).to_vec()].concat(),
        [header(0, 1, 9, 8, 2, 0), op(8, 1, 0, 0, 0, 0).to_vec()].concat(),
        [header(0, 1, 9, 9, 1, 0), op(5, 1, 200, 3000, 0, 0).to_vec()].concat(),
        header(6, 9, 6, 10, 1, 0),
    ];
    for script in scripts {
        seeds.push(("recovery", script));
    }
    seeds
}

/// The four targets by name, for drivers that feed a file to its target.
pub fn target_by_name(name: &str) -> Option<fn(&[u8])> {
    match name {
        "order_body" => Some(order_body),
        "action_body" => Some(action_body),
        "journal_record" => Some(journal_record),
        "recovery" => Some(recovery),
        _ => None,
    }
}

/// Every file under `dir` (not recursive), sorted by name.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_file())
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
}
