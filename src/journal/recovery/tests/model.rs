//! Recovery against a model: arbitrary records, written in two sessions, come back exactly.

use proptest::prelude::*;

use super::*;

fn arb_record() -> impl Strategy<Value = Record> {
    let accepted = (
        "[A-Za-z0-9_.:-]{1,64}",
        "[A-Za-z0-9_.:-]{1,64}",
        "[A-Za-z0-9_.:-]{1,32}",
        1u32..1_000_000,
        prop_oneof![
            Just(Payment::Prepaid),
            Just(Payment::Escrow),
            Just(Payment::Cod)
        ],
        proptest::option::of("[ -~]{0,1000}"),
    )
        .prop_map(|(order_id, user_id, sku, qty, payment, address)| {
            Event::Accepted(OrderAccepted {
                order_id,
                user_id,
                sku,
                qty,
                payment,
                address,
            })
        });
    let sku = (
        "[A-Za-z0-9_.:-]{1,32}",
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(sku, slot_index, stock_total, per_user_limit, max_per_order, timeout)| {
                Event::Sku(SkuChanged {
                    sku,
                    slot_index,
                    stock_total,
                    per_user_limit,
                    max_per_order,
                    payment_timeout_s: timeout,
                })
            },
        );
    // `to_json` formats `at_ms` as RFC 3339, which ends with the year 9999.
    (
        0u64..253_402_300_800_000,
        prop_oneof![3 => accepted, 1 => sku],
    )
        .prop_map(|(at_ms, event)| Record { at_ms, event })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn recovery_returns_exactly_what_was_written(
        batches in proptest::collection::vec(
            proptest::collection::vec(arb_record(), 1..8), 1..40),
        reopen_at in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Written in two sessions with a recovery between them, over small segments.
        let split = reopen_at.index(batches.len() + 1);
        write_batches(dir.path(), new_tail(), &batches[..split], limits::SEGMENT_BYTES_MIN);
        let (report, _) = recover_ok(dir.path());
        prop_assert!(report.truncated.is_none());
        write_batches(dir.path(), report.tail, &batches[split..], limits::SEGMENT_BYTES_MIN);

        let written: Vec<Record> = batches.concat();
        let (report, records) = try_recover(dir.path()).unwrap();
        prop_assert!(report.truncated.is_none());
        prop_assert_eq!(report.records, written.len() as u64);
        prop_assert_eq!(report.tail.next_seq, written.len() as u64 + 1);
        prop_assert_eq!(records.len(), written.len());
        for (index, ((seq, record), expected)) in records.iter().zip(&written).enumerate() {
            prop_assert_eq!(*seq, index as u64 + 1);
            prop_assert_eq!(record, expected);
        }
        // The JSON view agrees as well, record by record, through a reader.
        let mut json = Vec::new();
        let mut reader = JournalReader::open(dir.path(), 0, ReadLimit::Written);
        while let Some((seq, record)) = reader.next_record().unwrap() {
            json.push(record.to_json(seq));
        }
        prop_assert_eq!(json.len(), written.len());
        for (index, value) in json.iter().enumerate() {
            prop_assert_eq!(&value["seq"], &serde_json::json!(index + 1));
            prop_assert_eq!(&value["at_ms"], &serde_json::json!(written[index].at_ms));
        }
    }
}
