//! The fuzz targets of `fuzz/` run on stable, in the default test suite: the same target
//! functions (this file includes `fuzz/src/lib.rs` as a module) fed with
//! - every seed (`fuzz/seeds/<target>/`, regenerated from real bodies and frames with
//!   `STAMPEDE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_short seeds`) and every saved
//!   crash or finding (`fuzz/regressions/<target>/`);
//! - proptest inputs: real bodies and frames mutated byte-wise, structured JSON bodies,
//!   records re-framed with a correct CRC around a mutated payload, recovery scripts, and
//!   plain arbitrary bytes.
//!
//! Bounded for CI: 12,000 proptest cases in all (1,500 per body property, 2,000 reframed
//! records, 1,000 for each other property), ~2.5 s in a debug build on 2 cores.
//! `PROPTEST_CASES=N` sets every property's case count (`scripts/fuzz.sh` raises it when
//! cargo-fuzz is not there). The invariants and allocation bounds each target checks are
//! listed in `fuzz/src/lib.rs` and `fuzz/README.md`; this binary installs the counting
//! allocator they measure with.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use stampede::order::Action;

use targets::alloc::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// `PROPTEST_CASES` when set, else this property's default.
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 2048,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/fuzz_short.proptest-regressions",
            ),
        )),
        ..ProptestConfig::default()
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

const TARGETS: [&str; 4] = ["order_body", "action_body", "journal_record", "recovery"];

/// A stable file name for a seed: FNV-1a of its bytes.
fn seed_name(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("seed-{hash:016x}")
}

#[test]
fn the_counting_allocator_is_installed() {
    assert!(targets::alloc::installed());
}

#[test]
fn seeds_and_saved_regressions_pass_every_target() {
    let write = std::env::var_os("STAMPEDE_WRITE_FUZZ_SEEDS").is_some_and(|v| v != "0");
    let mut count = 0;
    for (target, bytes) in targets::seeds() {
        if write {
            let dir = fuzz_dir().join("seeds").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(seed_name(&bytes)), &bytes).unwrap();
        }
        targets::target_by_name(target).unwrap()(&bytes);
        count += 1;
    }
    for target in TARGETS {
        let run = targets::target_by_name(target).unwrap();
        for kind in ["seeds", "regressions"] {
            for path in targets::files_in(&fuzz_dir().join(kind).join(target)) {
                let bytes = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&bytes));
                assert!(outcome.is_ok(), "{} fails", path.display());
                count += 1;
            }
        }
    }
    assert!(count >= 40, "only {count} seeds");
}

/// The most allocation-hungry inputs known, at many sizes: error messages that quote a
/// string of DEL bytes (each written `\u{7f}` by `{:?}`), and a record whose address is a
/// long array of zeros (each `0,` becomes a 32-byte `Value`). They must stay inside the
/// bounds of `targets::bounds`, and make the bounds meaningful (a factor far above what
/// they reach would check nothing).
#[test]
fn worst_known_inputs_stay_in_bounds() {
    let mut worst_total = 0f64;
    for n in (1..4000)
        .step_by(7)
        .chain([170, 341, 682, 1365, 2184, 2730])
    {
        let del = "\u{7f}".repeat(n);
        for body in [
            format!(r#"{{"qty":"{del}"}}"#),
            format!(r#"{{"order_id":"a","user_id":"b","sku":"c","qty":1,"payment":"{del}"}}"#),
        ] {
            targets::order_body(body.as_bytes());
            let (_, stats) =
                targets::alloc::measure(|| stampede::http::orders::decode_order(body.as_bytes()));
            worst_total = worst_total.max(stats.total_bytes as f64 / body.len() as f64);
        }
        targets::decode_action_checked(
            Action::Exchange,
            format!(r#"{{"sku":"{del}"}}"#).as_bytes(),
        );
        targets::decode_action_checked(
            Action::Cancel,
            format!(r#"{{"restock":"{del}"}}"#).as_bytes(),
        );
    }
    assert!(
        worst_total > 30.0,
        "the decode bound is loose: worst {worst_total:.1} N"
    );
    // A record whose address is `{"a":[0,0,...]}`, as large as a payload may be.
    for zeros in [10, 100, 500, 1000, 1900] {
        let address = format!(r#"{{"a":[{}0]}}"#, "0,".repeat(zeros));
        let record = stampede::journal::Record {
            at_ms: 1,
            event: stampede::journal::Event::Accepted(stampede::journal::OrderAccepted {
                order_id: "o".into(),
                user_id: "u".into(),
                sku: "s".into(),
                qty: 1,
                payment: stampede::order::Payment::Cod,
                address: Some(address),
            }),
        };
        let mut input = vec![0u8];
        input.extend_from_slice(&targets::sealed_frames(&[record], 1));
        targets::journal_record(&input);
    }
}

// ---------------------------------------------------------------------------------------
// Mutation of real inputs
// ---------------------------------------------------------------------------------------

/// Tokens a JSON-aware mutation inserts (libFuzzer finds these itself, slowly).
const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\\",
    "\\u",
    "\\ud800",
    "\\u0000",
    "null",
    "true",
    "-",
    "0",
    "1e999",
    "-0",
    "18446744073709551616",
    "4294967296",
    "\"qty\":",
    "\"address\":",
    "\"payment\":",
    "\"reason\":",
    "\"sku\":",
    "\"restock\":",
    "\u{7f}",
    "\u{e9}",
    "\u{1F600}",
    "\u{0}",
    " ",
    "\n",
];

/// One byte-level mutation: (kind, position, value).
type Mutation = (u8, u16, u8);

fn mutate(base: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(kind, at, value) in mutations {
        let at = usize::from(at) % (bytes.len() + 1);
        match kind % 8 {
            0 if at < bytes.len() => bytes[at] ^= 1 << (value % 8),
            1 if at < bytes.len() => bytes[at] = value,
            2 => bytes.insert(at, value),
            3 if at < bytes.len() => {
                bytes.remove(at);
            }
            4 => {
                let token = TOKENS[usize::from(value) % TOKENS.len()].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            5 => {
                // Duplicate a range (repeated fields, long strings).
                let len = usize::from(value).min(bytes.len() - at);
                let copy = bytes[at..at + len].to_vec();
                bytes.splice(at..at, copy);
            }
            6 => bytes.truncate(at),
            _ if at < bytes.len() => {
                // Delete a range.
                let len = usize::from(value % 16).min(bytes.len() - at);
                bytes.drain(at..at + len);
            }
            _ => {}
        }
    }
    bytes
}

fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 0..max)
}

fn seeds_of(target: &str) -> Vec<Vec<u8>> {
    targets::seeds()
        .into_iter()
        .filter(|(name, _)| *name == target)
        .map(|(_, bytes)| bytes)
        .collect()
}

/// The body bytes fed to decode_action too, as the actions that read a body.
fn actions_on(body: &[u8]) {
    for action in [
        Action::Modify,
        Action::Exchange,
        Action::Return,
        Action::Cancel,
    ] {
        targets::decode_action_checked(action, body);
    }
}

// ---------------------------------------------------------------------------------------
// Structured JSON bodies
// ---------------------------------------------------------------------------------------

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_.:-]{1,70}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        2 => "[ -~\u{7f}\u{e9}\u{1F600}\u{0}-\u{1f}]{0,80}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        1 => "[ -~]{0,40}".prop_map(|s| format!("\"{s}\"")),
        1 => Just("\"\\ud800\"".to_owned()),
    ]
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[1-9][0-9]{19,40}",
        "-?[0-9]{1,4}\\.[0-9]{1,4}([eE][+-]?[0-9]{1,4})?",
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("-0".to_owned()),
        Just("1e999".to_owned()),
    ]
}

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec((json_string(), inner), 0..5).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// An order-shaped object: each field present or not, with a value of the right kind more
/// often than not, unknown fields, repeats, and whitespace.
fn order_like_body() -> impl Strategy<Value = String> {
    let field = |name: &'static str, good: BoxedStrategy<String>| {
        proptest::option::weighted(
            0.85,
            prop_oneof![4 => good, 1 => json_value()].prop_map(move |v| format!("\"{name}\":{v}")),
        )
    };
    let id = json_string().boxed();
    let qty = json_number().boxed();
    let payment = prop_oneof![
        Just("\"prepaid\"".to_owned()),
        Just("\"escrow\"".to_owned()),
        Just("\"cod\"".to_owned()),
        json_string(),
    ]
    .boxed();
    let address = prop_oneof![
        json_value(),
        (0usize..1100).prop_map(|n| format!("{{\"street\":\"{}\"}}", "y".repeat(n))),
    ]
    .boxed();
    let reason = json_string().boxed();
    let restock = prop_oneof![Just("true".to_owned()), Just("false".to_owned())].boxed();
    (
        (
            field("order_id", id.clone()),
            field("user_id", id.clone()),
            field("sku", id),
            field("qty", qty),
            field("payment", payment),
            field("address", address),
        ),
        (
            field("reason", reason),
            field("restock", restock),
            proptest::collection::vec((json_string(), json_value()), 0..3),
            any::<bool>(),
            "[ \n\t]{0,2}",
        ),
    )
        .prop_map(|(known, (reason, restock, extra, repeat, space))| {
            let (a, b, c, d, e, f) = known;
            let mut fields: Vec<String> = [a, b, c, d, e, f, reason, restock]
                .into_iter()
                .flatten()
                .collect();
            fields.extend(extra.into_iter().map(|(k, v)| format!("{k}:{v}")));
            if repeat && let Some(first) = fields.first().cloned() {
                fields.push(first);
            }
            format!("{space}{{{}}}{space}", fields.join(&format!(",{space}")))
        })
}

// ---------------------------------------------------------------------------------------
// Journal records
// ---------------------------------------------------------------------------------------

/// A payload of a real record (one of the six shapes), as `journal_record`'s mode 1 input
/// would carry it, then mutated: the target frames it with a correct CRC, so the mutation
/// reaches rkyv's validation and `to_json`.
fn reframed_record_input() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        0u64..1 << 41,
        0usize..1000,
        mutations(6),
        1u8..3,
    )
        .prop_map(|(kind, seq, size, mutations, mode)| {
            let record = targets::sample_record(kind, seq, size);
            let frames = targets::sealed_frames(&[record], seq);
            let len = u32::from_le_bytes(frames[..4].try_into().unwrap()) as usize;
            let payload = mutate(&frames[16..16 + len], &mutations);
            let mut input = vec![mode];
            input.extend_from_slice(&(seq as u32).to_le_bytes());
            if mode == 2 {
                input.push(kind);
            }
            input.extend_from_slice(&payload);
            input
        })
}

/// Several real frames (CRCs as written), then mutated as raw journal bytes (mode 0).
fn raw_frames_input() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((any::<u8>(), 0usize..600), 1..5),
        1u64..1 << 40,
        mutations(4),
    )
        .prop_map(|(shapes, first_seq, mutations)| {
            let records: Vec<_> = shapes
                .iter()
                .enumerate()
                .map(|(i, (kind, size))| targets::sample_record(*kind, first_seq + i as u64, *size))
                .collect();
            let mut input = vec![0u8];
            input.extend_from_slice(&mutate(
                &targets::sealed_frames(&records, first_seq),
                &mutations,
            ));
            input
        })
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn order_bodies_mutated_from_real_ones(
        seed in any::<proptest::sample::Index>(),
        mutations in mutations(8),
    ) {
        let seeds = seeds_of("order_body");
        let body = mutate(seeds[seed.index(seeds.len())].as_slice(), &mutations);
        targets::order_body(&body);
        actions_on(&body);
    }

    #[test]
    fn order_bodies_structured(body in order_like_body()) {
        targets::order_body(body.as_bytes());
        actions_on(body.as_bytes());
    }

    #[test]
    fn action_bodies_mutated_from_real_ones(
        seed in any::<proptest::sample::Index>(),
        mutations in mutations(8),
    ) {
        let seeds = seeds_of("action_body");
        targets::action_body(&mutate(seeds[seed.index(seeds.len())].as_slice(), &mutations));
    }

    #[test]
    fn bodies_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        targets::order_body(&bytes);
        targets::action_body(&bytes);
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn records_reframed_around_mutated_payloads(input in reframed_record_input()) {
        targets::journal_record(&input);
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn raw_frames_mutated(input in raw_frames_input()) {
        targets::journal_record(&input);
    }

    #[test]
    fn records_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        targets::journal_record(&bytes);
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn recovery_of_scripted_journals(
        header in proptest::collection::vec(any::<u8>(), targets::SCRIPT_HEADER_BYTES),
        ops in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), targets::SCRIPT_OP_BYTES), 0..5),
    ) {
        let mut script = header;
        script.extend(ops.concat());
        targets::recovery(&script);
    }

    #[test]
    fn recovery_of_mutated_seed_scripts(
        seed in any::<proptest::sample::Index>(),
        mutations in mutations(6),
    ) {
        let seeds = seeds_of("recovery");
        targets::recovery(&mutate(seeds[seed.index(seeds.len())].as_slice(), &mutations));
    }
}

// ---------------------------------------------------------------------------------------
// Findings: reproducers of what the fuzz targets found, ignored until fixed (run them with
// `cargo test --test fuzz_short -- --ignored`). Each one asserts the behaviour the code
// documents; see `fuzz/README.md`, "Findings".
// ---------------------------------------------------------------------------------------

/// Finding 1: a journal whose seqs come within `index::STRIDE` (64) of `u64::MAX` makes
/// `recover` panic ("attempt to add with overflow" in `SeqIndex::note`, `seq >= last.seq +
/// STRIDE`; past it `seq_next += 1` in `recover` overflows at `u64::MAX`) instead of
/// returning `Ok` or `Damage`. The release profile keeps overflow checks, so start-up
/// panics there too. Found by the `recovery` target with `STAMPEDE_FUZZ_HUGE_SEQS=1`
/// (minimal script: header `[199, 248, 142, 7, 0, 0, 0, 0, 0, 0]`, no ops: an unmutated
/// journal of 7 records from seq `u64::MAX - 60`).
#[test]
fn finding_1_recovery_of_seqs_near_u64_max_does_not_panic() {
    let first_seq = u64::MAX - 60;
    let records: Vec<_> = (0..7)
        .map(|i| targets::sample_record(i, first_seq + u64::from(i), 10))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = stampede::journal::record::segment_header(first_seq).to_vec();
    bytes.extend_from_slice(&targets::sealed_frames(&records, first_seq));
    std::fs::write(
        dir.path()
            .join(stampede::journal::segment_file_name(first_seq)),
        bytes,
    )
    .unwrap();
    let outcome = std::panic::catch_unwind(|| {
        stampede::journal::recover(dir.path(), &mut |_, _| Ok(())).map(|report| report.records)
    });
    match outcome {
        Ok(Ok(_)) | Ok(Err(stampede::journal::RecoveryError::Damage { .. })) => {}
        Ok(Err(other)) => panic!("recover failed with {other}"),
        Err(_) => panic!("recover panicked on a journal with seqs near u64::MAX"),
    }
}

/// Finding 2 (fixed): serde_json's `RawValue` follows the JSON grammar but neither bounds
/// numbers (`{"n":1e999}`) nor checks `\u` surrogate pairs (`{"s":"\ud90d\ud083"}`), so
/// such an address was accepted and later rendered as a JSON string instead of an object
/// (found with `STAMPEDE_FUZZ_STRICT_ADDRESS=1`: the number by proptest, the surrogate by
/// libFuzzer's `order_body` in 656k executions). The decoders now parse the address as a
/// JSON object and refuse anything else with 400 before it is stored.
#[test]
fn finding_2_an_address_that_is_not_a_json_object_value_is_refused() {
    use stampede::http::reply::ErrorCode;
    for address in [r#"{"n":1e999}"#, r#"{"s":"\ud90d\ud083"}"#] {
        let body =
            format!(r#"{{"order_id":"o-1","user_id":"u","sku":"S","qty":1,"address":{address}}}"#);
        let error = stampede::http::orders::decode_order(body.as_bytes()).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest, "{address}: {error:?}");
        let modify = format!(r#"{{"address":{address}}}"#);
        let error = stampede::http::lifecycle::decode_action(
            "o-1",
            stampede::order::Action::Modify,
            modify.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest, "{address}: {error:?}");
    }
}

/// Finding 3 (fixed): a bad frame in the last segment followed by non-zero bytes made
/// `SegmentCursor::valid_frame_after` read the whole rest of the segment into one buffer (up
/// to `segment_bytes`: 64 MiB by default, 1 GiB at most) to look for a valid frame, where
/// the cursor itself reads `READ_CHUNK_BYTES` (256 KiB) at a time: a start-up memory spike
/// of a segment's size, not a crash. It now reads a chunk of candidate starts at a time
/// (each read reaching one largest frame further), so this asserts the chunk-sized bound.
#[test]
fn finding_3_recovery_memory_is_bounded_by_its_read_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..4)
        .map(|i| targets::sample_record(i, 1 + u64::from(i), 100))
        .collect();
    let mut bytes = stampede::journal::record::segment_header(1).to_vec();
    bytes.extend_from_slice(&targets::sealed_frames(&records, 1));
    // A torn write: a frame header that does not check, then 4 MiB of non-zero bytes that
    // hold no frame.
    bytes.extend_from_slice(&[0xEE; 4 * 1024 * 1024]);
    std::fs::write(
        dir.path().join(stampede::journal::segment_file_name(1)),
        bytes,
    )
    .unwrap();
    let (result, stats) =
        targets::alloc::measure(|| stampede::journal::recover(dir.path(), &mut |_, _| Ok(())));
    let report = result.expect("a torn tail is truncated");
    assert_eq!(report.records, 4);
    let bound = 2 * targets::bounds::READ_CHUNK_BYTES + targets::bounds::RECOVERY_CONST;
    assert!(
        stats.peak_live_bytes <= bound,
        "recovery held {} bytes at once, bound {bound}",
        stats.peak_live_bytes
    );
}
