use super::*;

fn counts(stock_total: u64, available: u64, reserved: u64, sold: u64) -> Counts {
    Counts {
        stock_total,
        available,
        reserved,
        sold,
    }
}

#[test]
fn expected_files_are_csv_with_or_without_header_or_ndjson() {
    let plain = parse_expected("A,5\n\nB, 7 ,1,1\r\nC,\n").unwrap();
    assert_eq!(
        plain,
        Expected::from([
            ("A".into(), Some(5)),
            ("B".into(), Some(7)),
            ("C".into(), None)
        ])
    );
    let header = parse_expected("\u{feff}SKU,max_per_order,stock\n\"A\",2,9\nA,2,10\n").unwrap();
    assert_eq!(header, Expected::from([("A".into(), Some(10))]));
    let ndjson = parse_expected("{\"sku\":\"A\",\"stock\":3}\n{\"sku\":\"B\"}\n").unwrap();
    assert_eq!(
        ndjson,
        Expected::from([("A".into(), Some(3)), ("B".into(), None)])
    );
    assert!(parse_expected("A,-1\n").unwrap_err().contains("line 1"));
    assert!(
        parse_expected("A,1\nbad sku,1\n")
            .unwrap_err()
            .contains("line 2")
    );
    assert!(parse_expected("sku,units\nA,1\n").is_err());
}

#[test]
fn matching_views_give_no_rows() {
    let expected = Expected::from([("A".into(), Some(10)), ("B".into(), None)]);
    let engine = View::from([
        ("A".into(), counts(10, 7, 2, 1)),
        ("B".into(), counts(4, 4, 0, 0)),
    ]);
    // The journal's `available` is derived.
    let journal = View::from([
        ("A".into(), counts(10, 0, 2, 1)),
        ("B".into(), counts(4, 0, 0, 0)),
    ]);
    assert!(compare(&expected, Some(&engine), Some(&journal)).is_empty());
    assert!(compare(&expected, None, Some(&journal)).is_empty());
    assert!(compare(&expected, Some(&engine), None).is_empty());
}

#[test]
fn differences_name_the_sku_and_the_figure() {
    let expected = Expected::from([("A".into(), Some(12)), ("GONE".into(), Some(1))]);
    let engine = View::from([
        ("A".into(), counts(10, 7, 2, 1)),
        ("NEW".into(), counts(4, 4, 0, 0)),
    ]);
    let journal = View::from([
        ("A".into(), counts(10, 0, 3, 1)),
        ("NEW".into(), counts(4, 0, 0, 0)),
    ]);
    let rows = compare(&expected, Some(&engine), Some(&journal));
    let summary: Vec<(&str, &str, bool)> = rows
        .iter()
        .map(|row| (row.sku.as_str(), row.check, row.engine_vs_journal))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("A", "stock_total", false),
            ("A", "available", true),
            ("A", "reserved", true),
            ("GONE", "missing", false),
            ("NEW", "missing", false),
        ]
    );
    assert_eq!(rows[0].expected.as_deref(), Some("12"));
    assert_eq!(rows[3].engine.as_deref(), Some("missing"));
    assert_eq!(rows[4].expected.as_deref(), Some("missing"));
    // Without an engine view, its column is not compared.
    let rows = compare(&expected, None, Some(&journal));
    assert!(rows.iter().all(|row| row.engine.is_none()));
    assert_eq!(rows.len(), 3);
}

#[test]
fn the_table_lines_up() {
    let rows = compare(
        &Expected::from([("A".into(), Some(1))]),
        Some(&View::from([("A".into(), counts(2, 2, 0, 0))])),
        None,
    );
    let mut out = Vec::new();
    write_table(&mut out, &rows).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "SKU  DIFFERS      EXPECTED  ENGINE  JOURNAL\nA    stock_total  1         2       n/a\n"
    );
}
