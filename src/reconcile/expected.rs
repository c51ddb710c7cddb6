//! The expected stock file: CSV `sku,stock` (with or without a header naming the columns;
//! extra columns ignored) or the bulk-load NDJSON, read up to its size bound.

use std::path::Path;

use crate::limits;
use crate::limits::RECONCILE_EXPECTED_BYTES_MAX;
use crate::order::{self};

use super::{Expected, ReconcileError};

pub(super) fn read_expected(path: &Path) -> Result<Expected, ReconcileError> {
    let fail = |reason: String| ReconcileError::Expected {
        path: path.to_owned(),
        reason,
    };
    let length = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if length > RECONCILE_EXPECTED_BYTES_MAX {
        return Err(fail(format!(
            "{length} bytes; at most {RECONCILE_EXPECTED_BYTES_MAX} are read"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse_expected(&text).map_err(fail)
}

/// Parses the expected stock (pure; unit-tested). A SKU named twice keeps its last line.
pub fn parse_expected(text: &str) -> Result<Expected, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let ndjson = text.trim_start().starts_with('{');
    let mut expected = Expected::new();
    // Without a header: sku in the first column, stock in the second.
    let mut columns = (0usize, Some(1usize));
    let mut first = true;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (sku, stock) = if ndjson {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("line {number}: not JSON: {e}"))?;
            let sku = value["sku"]
                .as_str()
                .ok_or_else(|| format!("line {number}: no sku"))?
                .to_owned();
            let stock = match &value["stock"] {
                serde_json::Value::Null => None,
                stock => Some(
                    stock
                        .as_u64()
                        .ok_or_else(|| format!("line {number}: stock {stock} is not a count"))?,
                ),
            };
            (sku, stock)
        } else {
            let fields: Vec<&str> = line.split(',').map(crate::http::bulk::csv_field).collect();
            if std::mem::take(&mut first) && fields[0].eq_ignore_ascii_case("sku") {
                let stock = fields
                    .iter()
                    .position(|name| name.eq_ignore_ascii_case("stock"))
                    .ok_or_else(|| format!("line {number}: the header has no stock column"))?;
                columns = (0, Some(stock));
                continue;
            }
            let sku = fields
                .get(columns.0)
                .copied()
                .unwrap_or_default()
                .to_owned();
            let stock = match columns.1.and_then(|at| fields.get(at)).copied() {
                None | Some("") => None,
                Some(text) => Some(text.parse::<u64>().map_err(|_| {
                    format!("line {number}: stock {text:?} is not a count of units")
                })?),
            };
            (sku, stock)
        };
        order::validate_id("sku", &sku, limits::SKU_BYTES_MAX)
            .map_err(|detail| format!("line {number}: {detail}"))?;
        expected.insert(sku, stock);
    }
    Ok(expected)
}
