/// Frames as the engine wrote them before order actions existed (an `accepted` and a
/// `sku` record, seq and CRC not yet sealed). Journals written then must stay readable,
/// and these records must still encode to the same bytes.
const GOLDEN_ACCEPTED: &str = "480000000000000000000000000000007b2263697479223a224f736c6f227d00f93e601aa2010000000000007534322d31ffffff753432ffffffffff534b552d31ffffff0200000001000000010000008f000000c0ffffff";
const GOLDEN_SKU: &str = "3800000000000000000000000000000007000000000000000100000000000000534b552d31ffffff0300000000000000e80300000000000002000000020000008403000000000000";
/// An order action as the engine wrote it before idempotency keys existed (a `modify`
/// after `ship`, with a reason and an address): unkeyed actions keep these bytes.
const GOLDEN_ACTION: &str = "900000000000000000000000000000007b2263697479223a2242657267656e227d000000000000007534322d31ffffff02090000000000002900000000000000010000006d6f766564ffffff0100000091000000c0ffffff01000000000000000000000000000000483f601aa201000002000000b4ffffff00000000000000000000000000000000000000000000000000000000000000000000000000000000";

fn golden_action() -> OrderAction {
    OrderAction {
        order_id: "u42-1".into(),
        action: Action::Modify,
        status: OrderStatus::Shipped,
        prev_seq: 41,
        reason: Some("moved".into()),
        address: Some(r#"{"city":"Bergen"}"#.into()),
        redirect: true,
        restock: false,
        exchange_sku: None,
    }
}

fn golden_records() -> [Record; 3] {
    [
        Record {
            at_ms: 1_795_738_844_921,
            event: Event::Accepted(OrderAccepted {
                order_id: "u42-1".into(),
                user_id: "u42".into(),
                sku: "SKU-1".into(),
                qty: 2,
                payment: Payment::Escrow,
                address: Some(r#"{"city":"Oslo"}"#.into()),
            }),
        },
        Record {
            at_ms: 7,
            event: Event::Sku(SkuChanged {
                sku: "SKU-1".into(),
                slot_index: 3,
                stock_total: 1000,
                per_user_limit: 2,
                max_per_order: 2,
                payment_timeout_s: 900,
            }),
        },
        Record {
            at_ms: 1_795_738_845_000,
            event: Event::Action(Box::new(golden_action())),
        },
    ]
}

#[test]
fn records_of_the_first_format_still_read_and_encode_the_same() {
    let goldens = [GOLDEN_ACCEPTED, GOLDEN_SKU, GOLDEN_ACTION];
    for (hex, record) in goldens.iter().zip(golden_records()) {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut batch = FrameBatch::default();
        batch.push(&record).unwrap();
        assert_eq!(batch.as_bytes(), &bytes[..], "{record:?} encodes as before");
        let len = read_u32(&bytes, 0) as usize;
        let mut payload = rkyv::util::AlignedVec::<16>::new();
        payload.extend_from_slice(&bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]);
        let archived = access_record(&payload).expect("old record validates");
        let back: Record = rkyv::deserialize::<Record, rancor::Error>(archived).unwrap();
        assert_eq!(back, record);
    }
    assert_eq!(std::mem::size_of::<ArchivedRecord>(), 56);
}

/// A keyed action: its own variant (the next discriminant), the action and key boxed
/// behind one relative pointer, so the archived `Event` keeps its size and every older
/// record its bytes. The bytes are pinned too: journals written now must stay readable.
const GOLDEN_KEYED_ACTION: &str = "a00000000000000000000000000000007b2263697479223a2242657267656e227d72657472792d3766336100000000007534322d31ffffff02090000000000002900000000000000010000006d6f766564ffffff0100000091000000b8ffffff010000000000000000000000000000008a000000b1ffffff483f601aa201000003000000acffffff00000000000000000000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn keyed_actions_are_a_new_variant_and_keep_their_bytes() {
    let record = Record {
        at_ms: 1_795_738_845_000,
        event: Event::KeyedAction(Box::new(KeyedOrderAction {
            action: golden_action(),
            idempotency_key: "retry-7f3a".into(),
        })),
    };
    let mut batch = FrameBatch::default();
    batch.push(&record).unwrap();
    let hex: String = batch
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, GOLDEN_KEYED_ACTION, "a keyed action encodes as pinned");
    let payload = aligned(&batch.as_bytes()[FRAME_HEADER_BYTES..]);
    let len = read_u32(batch.as_bytes(), 0) as usize;
    let archived = access_record(&payload[..len]).expect("keyed record validates");
    assert_eq!(archived.type_name(), "modify");
    assert_eq!(archived.event.idempotency_key(), Some("retry-7f3a"));
    assert_eq!(
        archived
            .event
            .order_action()
            .map(|a| a.prev_seq.to_native()),
        Some(41)
    );
    let json = archived.to_json(42);
    assert_eq!(json["idempotency_key"], "retry-7f3a");
    assert_eq!(json["order_id"], "u42-1");
    assert_eq!(json["address"]["city"], "Bergen");
    assert_eq!(decode_record(&payload[..len]).unwrap(), record);
    // The unkeyed action of the same content shows no key.
    let mut plain = FrameBatch::default();
    plain
        .push(&Record {
            at_ms: 1,
            event: Event::Action(Box::new(golden_action())),
        })
        .unwrap();
    let payload = aligned(&plain.as_bytes()[FRAME_HEADER_BYTES..]);
    let len = read_u32(plain.as_bytes(), 0) as usize;
    let archived = access_record(&payload[..len]).unwrap();
    assert_eq!(archived.event.idempotency_key(), None);
    assert!(archived.to_json(1).get("idempotency_key").is_none());
    assert_eq!(std::mem::size_of::<ArchivedRecord>(), 56);
}

use super::*;
use proptest::prelude::*;

fn accepted(order_id: &str, qty: u32, address: Option<&str>) -> Record {
    Record {
        at_ms: 1_700_000_000_123,
        event: Event::Accepted(OrderAccepted {
            order_id: order_id.into(),
            user_id: "u42".into(),
            sku: "SKU-1".into(),
            qty,
            payment: Payment::Escrow,
            address: address.map(str::to_owned),
        }),
    }
}

/// Copies bytes into an 8-aligned buffer, as a segment read or map provides.
fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut out = rkyv::util::AlignedVec::<16>::new();
    out.extend_from_slice(bytes);
    out
}

#[test]
fn frames_round_trip_with_consecutive_seqs() {
    let mut batch = FrameBatch::default();
    batch.push(&accepted("a", 1, None)).unwrap();
    batch
        .push(&accepted("b", 2, Some(r#"{"city":"Oslo"}"#)))
        .unwrap();
    let mut bytes = batch.as_bytes().to_vec();
    assert_eq!(seal_frames(&mut bytes, 41), 2);
    let bytes = aligned(&bytes);

    let FrameCheck::Valid {
        seq,
        payload,
        next_offset,
    } = check_frame(&bytes, 0)
    else {
        panic!("first frame")
    };
    assert_eq!(seq, 41);
    assert_eq!(next_offset % FRAME_ALIGN, 0);
    assert_eq!(access_record(payload).unwrap().type_name(), "accepted");
    assert_eq!(decode_record(payload).unwrap(), accepted("a", 1, None));

    let FrameCheck::Valid {
        seq,
        payload,
        next_offset,
    } = check_frame(&bytes, next_offset)
    else {
        panic!("second frame")
    };
    assert_eq!(seq, 42);
    let json = access_record(payload).unwrap().to_json(seq);
    assert_eq!(json["address"]["city"], "Oslo");
    assert_eq!(json["payment"], "escrow");
    assert_eq!(json["qty"], 2);
    assert_eq!(json["at"], "2023-11-14T22:13:20.123Z");
    assert_eq!(check_frame(&bytes, next_offset), FrameCheck::End);
}

#[test]
fn every_flipped_bit_of_a_frame_is_detected() {
    let mut batch = FrameBatch::default();
    batch.push(&accepted("bitflip", 3, None)).unwrap();
    let mut sealed = batch.as_bytes().to_vec();
    seal_frames(&mut sealed, 7);
    let payload_end = FRAME_HEADER_BYTES + read_u32(&sealed, 0) as usize;
    for bit in 0..payload_end * 8 {
        let mut damaged = sealed.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let damaged = aligned(&damaged);
        assert!(
            !matches!(check_frame(&damaged, 0), FrameCheck::Valid { .. }),
            "bit {bit} flipped unnoticed"
        );
    }
}

#[test]
fn a_truncated_frame_is_incomplete_not_valid() {
    let mut batch = FrameBatch::default();
    batch.push(&accepted("torn", 1, None)).unwrap();
    let mut sealed = batch.as_bytes().to_vec();
    seal_frames(&mut sealed, 1);
    // Every cut short of the padded frame end, padding included, is incomplete.
    for cut in 1..sealed.len() {
        let torn = aligned(&sealed[..cut]);
        assert!(
            matches!(check_frame(&torn, 0), FrameCheck::Incomplete { .. }),
            "cut {cut}"
        );
    }
}

#[test]
fn oversized_records_are_refused_and_leave_the_batch_unchanged() {
    let mut batch = FrameBatch::default();
    batch.push(&accepted("ok", 1, None)).unwrap();
    let before = batch.as_bytes().to_vec();
    let huge = "x".repeat(limits::RECORD_PAYLOAD_BYTES_MAX);
    assert!(matches!(
        batch.push(&accepted("big", 1, Some(&huge))),
        Err(EncodeError::TooLarge(_))
    ));
    assert_eq!(batch.as_bytes(), &before[..]);
    assert_eq!(batch.len(), 1);
}

#[test]
fn segment_header_round_trips_and_rejects_foreign_files() {
    assert_eq!(parse_segment_header(&segment_header(99)), Some(99));
    assert_eq!(parse_segment_header(b"NOTAJOURNALFILE!"), None);
    assert_eq!(parse_segment_header(b"short"), None);
}

proptest! {
    #[test]
    fn any_record_round_trips(
        order_id in "[A-Za-z0-9_.:-]{1,64}",
        user_id in "[A-Za-z0-9_.:-]{1,64}",
        sku in "[A-Za-z0-9_.:-]{1,32}",
        qty in 1u32..1_000_000,
        payment in prop_oneof![Just(Payment::Prepaid), Just(Payment::Escrow), Just(Payment::Cod)],
        address in proptest::option::of("[ -~]{0,200}"),
        at_ms in any::<u64>(),
        seq in 1u64..(1 << 40),
    ) {
        let record = Record { at_ms, event: Event::Accepted(OrderAccepted {
            order_id, user_id, sku, qty, payment, address,
        })};
        let mut batch = FrameBatch::default();
        batch.push(&record).unwrap();
        let mut bytes = batch.as_bytes().to_vec();
        seal_frames(&mut bytes, seq);
        let bytes = aligned(&bytes);
        let FrameCheck::Valid { seq: read_seq, payload, .. } = check_frame(&bytes, 0) else {
            panic!("frame did not check");
        };
        prop_assert_eq!(read_seq, seq);
        prop_assert_eq!(decode_record(payload).unwrap(), record);
    }

    #[test]
    fn check_frame_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let bytes = aligned(&bytes);
        let _ = check_frame(&bytes, 0);
    }

    #[test]
    fn any_timestamp_renders_without_panicking(at_ms in any::<u64>()) {
        let mut batch = FrameBatch::default();
        batch.push(&Record { at_ms, event: Event::Sku(SkuChanged {
            sku: "S".into(), slot_index: 0, stock_total: 1, per_user_limit: 0,
            max_per_order: 1, payment_timeout_s: 1,
        })}).unwrap();
        let mut bytes = batch.as_bytes().to_vec();
        seal_frames(&mut bytes, 1);
        let bytes = aligned(&bytes);
        let FrameCheck::Valid { payload, .. } = check_frame(&bytes, 0) else { panic!() };
        let json = access_record(payload).unwrap().to_json(1);
        prop_assert_eq!(json["at_ms"].as_u64(), Some(at_ms));
    }
}

#[test]
fn a_pause_record_is_a_pause_or_a_resume_of_its_sku_and_belongs_to_no_order() {
    for (paused, type_name) in [(true, "pause"), (false, "resume")] {
        let record = Record {
            at_ms: 1_000,
            event: Event::SkuPause(Box::new(SkuPaused {
                sku: "SKU-9".into(),
                slot_index: 4,
                paused,
            })),
        };
        let mut batch = FrameBatch::default();
        batch.push(&record).unwrap();
        let len = read_u32(batch.as_bytes(), 0) as usize;
        let payload = aligned(&batch.as_bytes()[FRAME_HEADER_BYTES..]);
        assert_eq!(decode_record(&payload[..len]).unwrap(), record);
        let archived = access_record(&payload[..len]).expect("the record validates");
        assert_eq!(archived.type_name(), type_name);
        assert!(archived.event.order_action().is_none());
        let json = archived.to_json(7);
        assert_eq!(json["type"], type_name);
        assert_eq!(json["sku"], "SKU-9");
        assert_eq!(json["paused"], paused);
        assert!(json["order_id"].is_null(), "{json}");
    }
}
