//! `POST /v1/skus:bulk`: many SKU changes in one request, for loading an event's catalogue.
//!
//! The body is NDJSON (`application/x-ndjson`: one `{"sku", "stock", "per_user_limit",
//! "max_per_order", "payment_timeout_s"}` object a line, the fields of `PUT /v1/skus/{sku}`)
//! or CSV (`text/csv`: `sku,stock,per_user_limit,max_per_order[,payment_timeout_s]`, with an
//! optional header line naming the columns, in any order). With another or no content type
//! the first non-blank byte decides: `{` is NDJSON, anything else CSV.
//!
//! Each line is decoded and validated on its own with the PUT's rules and error codes
//! ([`admin::decode_sku_update`]); the valid ones go to [`Engine::put_skus`], which journals
//! each shard's share in one append + commit. A line is applied whole or refused whole, and
//! the answer (200) reports every line: `loaded` with the SKU as `GET` shows it after that
//! line, or `refused` with the error code and detail. Blank lines are skipped; line numbers
//! are the body's own (1-based), so an operator can find a refused line in the file. A SKU
//! named on several lines gets each change in order: the last one wins, and each line's
//! `sku_after` is the SKU after that line.
//!
//! Bounds: the body is read with its own cap, [`limits::BULK_BODY_BYTES_MAX`] (not
//! `http.body_bytes_max`), and may hold at most [`limits::BULK_LINES_MAX`] SKU lines; past
//! either the answer is 413 `too_large` and nothing is applied.

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap};
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, SkuView};
use crate::http::AppState;
use crate::http::admin;
use crate::http::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::limits;
use crate::order;
use crate::shard::SkuUpdate;

/// How the body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

/// The format a body is in: its declared content type, else what its first byte says.
pub fn format_of(content_type: Option<&str>, body: &[u8]) -> Format {
    let media_type = content_type
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    match media_type.as_deref() {
        Some("application/x-ndjson" | "application/ndjson" | "application/jsonl") => Format::Ndjson,
        Some("text/csv") => Format::Csv,
        _ => match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
            Some(b'{') => Format::Ndjson,
            _ => Format::Csv,
        },
    }
}

/// A CSV column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Sku,
    Stock,
    PerUserLimit,
    MaxPerOrder,
    PaymentTimeoutS,
}

impl Column {
    /// The columns of a CSV body without a header, in this order.
    const DEFAULT_ORDER: [Column; 5] = [
        Self::Sku,
        Self::Stock,
        Self::PerUserLimit,
        Self::MaxPerOrder,
        Self::PaymentTimeoutS,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Sku => "sku",
            Self::Stock => "stock",
            Self::PerUserLimit => "per_user_limit",
            Self::MaxPerOrder => "max_per_order",
            Self::PaymentTimeoutS => "payment_timeout_s",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::DEFAULT_ORDER
            .into_iter()
            .find(|column| column.name().eq_ignore_ascii_case(name))
    }
}

/// One SKU line of a body, decoded: the change, or why it is refused.
#[derive(Debug)]
pub struct BulkLine {
    /// The line's number in the body, from 1.
    pub line: usize,
    /// The SKU the line names, when it names one (also for most refused lines).
    pub sku: Option<String>,
    pub change: Result<SkuUpdate, ApiError>,
}

/// Splits and decodes a whole body (pure; unit-tested). The only whole-body error is 413 for
/// more than [`limits::BULK_LINES_MAX`] SKU lines; everything else is a refused line.
pub fn parse_body(format: Format, body: &[u8]) -> Result<Vec<BulkLine>, ApiError> {
    let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    let mut columns: Option<Vec<Column>> = None;
    let mut first_line = true;
    let mut lines = Vec::new();
    for (index, raw) in body.split(|byte| *byte == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if std::mem::take(&mut first_line)
            && format == Format::Csv
            && let Some(header) = csv_header(raw)
        {
            columns = Some(header?);
            continue;
        }
        if lines.len() == limits::BULK_LINES_MAX {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "more than {} sku lines in one bulk body (line {number}); split the file",
                    limits::BULK_LINES_MAX
                ),
            ));
        }
        let decoded = match format {
            Format::Ndjson => decode_ndjson_line(raw),
            Format::Csv => {
                decode_csv_line(raw, columns.as_deref().unwrap_or(&Column::DEFAULT_ORDER))
            }
        };
        lines.push(match decoded {
            Ok((sku, update)) => BulkLine {
                line: number,
                sku: Some(sku),
                change: Ok(update),
            },
            Err((sku, error)) => BulkLine {
                line: number,
                sku,
                change: Err(error),
            },
        });
    }
    Ok(lines)
}

type LineResult = Result<(String, SkuUpdate), (Option<String>, ApiError)>;

fn decode_ndjson_line(raw: &[u8]) -> LineResult {
    #[derive(Deserialize)]
    struct Named {
        sku: Option<serde_json::Value>,
    }
    crate::http::orders::require_json_object(raw)
        .map_err(|_| (None, bad_request("line is not a JSON object")))?;
    let named: Named = serde_json::from_slice(raw)
        .map_err(|e| (None, bad_request(format!("line is not valid JSON: {e}"))))?;
    let sku = match named.sku {
        Some(serde_json::Value::String(sku)) => sku,
        Some(other) => {
            return Err((
                None,
                bad_request(format!("sku must be a string, got {other}")),
            ));
        }
        None => return Err((None, bad_request("missing sku"))),
    };
    if let Err(detail) = order::validate_id("sku", &sku, limits::SKU_BYTES_MAX) {
        return Err((Some(sku), ApiError::new(ErrorCode::Invalid, detail)));
    }
    match admin::decode_sku_update(raw) {
        Ok(update) => Ok((sku, update)),
        Err(error) => Err((Some(sku), error)),
    }
}

/// A CSV field: trimmed, and without the double quotes a spreadsheet may put around it.
/// One CSV field, trimmed, without its surrounding quotes (no embedded commas or quotes:
/// SKU names and numbers need none). `stampede stock reconcile` reads its files with it too.
pub fn csv_field(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .map_or(text, str::trim)
}

/// `Some` when the line is a header: its first field is `sku` and every field names a
/// column. A header that names a column twice is a whole-body 400.
fn csv_header(raw: &[u8]) -> Option<Result<Vec<Column>, ApiError>> {
    let text = std::str::from_utf8(raw).ok()?;
    let names: Vec<&str> = text.split(',').map(csv_field).collect();
    if !names[0].eq_ignore_ascii_case("sku") {
        return None;
    }
    let columns: Vec<Column> = names
        .iter()
        .map(|name| Column::parse(name))
        .collect::<Option<_>>()?;
    for (index, column) in columns.iter().enumerate() {
        if columns[..index].contains(column) {
            return Some(Err(bad_request(format!(
                "the CSV header names {} twice",
                column.name()
            ))));
        }
    }
    Some(Ok(columns))
}

fn decode_csv_line(raw: &[u8], columns: &[Column]) -> LineResult {
    let text = std::str::from_utf8(raw).map_err(|_| (None, bad_request("line is not UTF-8")))?;
    let fields: Vec<&str> = text.split(',').map(csv_field).collect();
    // Trailing empty fields (`SKU-1,5,,,,`) are what spreadsheets write; more data is not.
    if fields[columns.len().min(fields.len())..]
        .iter()
        .any(|field| !field.is_empty())
    {
        let names: Vec<&str> = columns.iter().map(|column| column.name()).collect();
        return Err((
            None,
            bad_request(format!(
                "{} fields; the columns are {}",
                fields.len(),
                names.join(",")
            )),
        ));
    }
    let field = |wanted: Column| {
        columns
            .iter()
            .position(|column| *column == wanted)
            .and_then(|position| fields.get(position).copied())
            .filter(|field| !field.is_empty())
    };
    let Some(sku) = field(Column::Sku) else {
        return Err((None, bad_request("missing sku")));
    };
    let sku = sku.to_owned();
    if let Err(detail) = order::validate_id("sku", &sku, limits::SKU_BYTES_MAX) {
        return Err((Some(sku), ApiError::new(ErrorCode::Invalid, detail)));
    }
    // The line becomes the JSON object a PUT would carry, so the rules are the PUT's own.
    let mut object = serde_json::Map::new();
    for column in &Column::DEFAULT_ORDER[1..] {
        let Some(text) = field(*column) else {
            continue; // empty or absent: keep the value, like an omitted JSON field
        };
        let number = if let Ok(value) = text.parse::<u64>() {
            serde_json::Number::from(value)
        } else if let Ok(value) = text.parse::<i64>() {
            serde_json::Number::from(value)
        } else if let Ok(number) = serde_json::from_str::<serde_json::Number>(text) {
            number
        } else {
            return Err((
                Some(sku),
                bad_request(format!(
                    "{} must be an integer, got {text:?}",
                    column.name()
                )),
            ));
        };
        object.insert(column.name().to_owned(), serde_json::Value::Number(number));
    }
    let json = serde_json::to_vec(&object).expect("a map of numbers serializes");
    match admin::decode_sku_update(&json) {
        Ok(update) => Ok((sku, update)),
        Err(error) => Err((Some(sku), error)),
    }
}

fn bad_request(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, detail)
}

/// The answer's body.
#[derive(Debug, Serialize)]
pub struct Report {
    pub loaded: usize,
    pub refused: usize,
    pub lines: Vec<LineReport>,
}

#[derive(Debug, Serialize)]
pub struct LineReport {
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// `loaded` or `refused`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku_after: Option<SkuView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl LineReport {
    fn refused(line: usize, sku: Option<String>, error: ApiError) -> Self {
        Self {
            line,
            sku,
            status: "refused",
            sku_after: None,
            error: Some(error.code.as_str()),
            detail: Some(error.detail),
        }
    }
}

/// Decodes the body, applies its valid lines, and answers 200 with the report.
pub async fn load(
    engine: &Arc<Engine>,
    cluster: Option<&crate::cluster::Cluster>,
    headers: &HeaderMap,
    body: &[u8],
) -> HttpResponse {
    if engine.journal().is_stopped() {
        return ApiError::new(
            ErrorCode::Unavailable,
            "the journal cannot be written; see /readyz",
        )
        .into_response();
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let lines = match parse_body(format_of(content_type, body), body) {
        Ok(lines) => lines,
        Err(error) => return error.into_response(),
    };
    let mut reports = Vec::with_capacity(lines.len());
    let mut changes = Vec::new();
    // For each change, the report it fills in.
    let mut change_reports = Vec::new();
    for line in lines {
        match (line.sku, line.change) {
            (Some(sku), Ok(update)) => {
                change_reports.push(reports.len());
                reports.push(LineReport {
                    line: line.line,
                    sku: Some(sku.clone()),
                    status: "refused",
                    sku_after: None,
                    error: None,
                    detail: None,
                });
                changes.push((sku, update));
            }
            (sku, Err(error)) => reports.push(LineReport::refused(line.line, sku, error)),
            (None, Ok(_)) => unreachable!("a decoded change names its sku"),
        }
    }
    let results: Vec<Result<SkuView, ApiError>> = match cluster {
        _ if changes.is_empty() => Vec::new(),
        None => engine
            .put_skus(changes)
            .await
            .into_iter()
            .map(|result| result.map_err(admin::put_sku_error))
            .collect(),
        // The cluster's catalogue is changed one SKU at a time (each is one script on the
        // SKU's own Redis slot).
        Some(cluster) => {
            let mut results = Vec::with_capacity(changes.len());
            for (sku, update) in &changes {
                results.push(super::cluster::put_global(cluster, sku, update).await);
            }
            results
        }
    };
    for (report_index, result) in change_reports.into_iter().zip(results) {
        let report = &mut reports[report_index];
        match result {
            Ok(view) => {
                report.status = "loaded";
                report.sku_after = Some(view);
            }
            Err(error) => {
                report.error = Some(error.code.as_str());
                report.detail = Some(error.detail);
            }
        }
    }
    let loaded = reports.iter().filter(|r| r.status == "loaded").count();
    let report = Report {
        loaded,
        refused: reports.len() - loaded,
        lines: reports,
    };
    reply::json(StatusCode::OK, &report)
}

/// Reads a bulk body up to [`limits::BULK_BODY_BYTES_MAX`] (413 past it: split the file),
/// within the configured body read timeout (408).
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    crate::http::read_body_up_to(headers, body, state, limits::BULK_BODY_BYTES_MAX).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(lines: &[BulkLine]) -> Vec<(usize, Option<&str>, Result<(), ErrorCode>)> {
        lines
            .iter()
            .map(|line| {
                (
                    line.line,
                    line.sku.as_deref(),
                    line.change.as_ref().map(drop).map_err(|e| e.code),
                )
            })
            .collect()
    }

    #[test]
    fn the_content_type_decides_else_the_first_byte() {
        assert_eq!(
            format_of(Some("text/csv; charset=utf-8"), b"{"),
            Format::Csv
        );
        assert_eq!(
            format_of(Some("application/x-ndjson"), b"a,1"),
            Format::Ndjson
        );
        assert_eq!(
            format_of(Some("application/json"), b"\n  {\"sku\":1}"),
            Format::Ndjson
        );
        assert_eq!(format_of(None, b"sku,stock\nA,1"), Format::Csv);
        assert_eq!(format_of(None, b""), Format::Csv);
    }

    #[test]
    fn ndjson_lines_are_judged_one_by_one() {
        let body = b"{\"sku\":\"A\",\"stock\":5}\r\n\n{\"sku\":\"bad sku\",\"stock\":1}\n\
            {\"sku\":\"B\",\"stock\":-1}\nnot json\n{\"stock\":1}\n{\"sku\":7}\n\
            {\"sku\":\"C\",\"stock\":\"5\"}\n[1,2]\n{\"sku\":\"D\",\"payment_timeout_s\":60,\"x\":1}";
        let lines = parse_body(Format::Ndjson, body).unwrap();
        assert_eq!(
            codes(&lines),
            vec![
                (1, Some("A"), Ok(())),
                (3, Some("bad sku"), Err(ErrorCode::Invalid)),
                (4, Some("B"), Err(ErrorCode::Invalid)),
                (5, None, Err(ErrorCode::BadRequest)),
                (6, None, Err(ErrorCode::BadRequest)),
                (7, None, Err(ErrorCode::BadRequest)),
                (8, Some("C"), Err(ErrorCode::BadRequest)),
                (9, None, Err(ErrorCode::BadRequest)),
                (10, Some("D"), Ok(())),
            ]
        );
        let update = lines[0].change.as_ref().unwrap();
        assert_eq!(update.stock, Some(5));
        assert_eq!(update.max_per_order, None);
        assert_eq!(
            lines[8].change.as_ref().unwrap().payment_timeout_s,
            Some(60)
        );
    }

    #[test]
    fn csv_with_or_without_a_header_keeps_empty_fields() {
        let body = "\u{feff}sku,stock,per_user_limit,max_per_order,payment_timeout_s\n\
            A,5,1,2,60\nB,,,3\n\"C\", 7 \nD,abc\nE,-3\nF,1,1,1,900,9\nG,1,,,,\n,5\nH,99999999999999999999999\nI,1.5";
        let lines = parse_body(Format::Csv, body.as_bytes()).unwrap();
        assert_eq!(
            codes(&lines),
            vec![
                (2, Some("A"), Ok(())),
                (3, Some("B"), Ok(())),
                (4, Some("C"), Ok(())),
                (5, Some("D"), Err(ErrorCode::BadRequest)),
                (6, Some("E"), Err(ErrorCode::Invalid)),
                (7, None, Err(ErrorCode::BadRequest)),
                (8, Some("G"), Ok(())),
                (9, None, Err(ErrorCode::BadRequest)),
                (10, Some("H"), Err(ErrorCode::Invalid)),
                (11, Some("I"), Err(ErrorCode::BadRequest)),
            ]
        );
        let a = lines[0].change.as_ref().unwrap();
        assert_eq!(
            (
                a.stock,
                a.per_user_limit,
                a.max_per_order,
                a.payment_timeout_s
            ),
            (Some(5), Some(1), Some(2), Some(60))
        );
        let b = lines[1].change.as_ref().unwrap();
        assert_eq!((b.stock, b.max_per_order), (None, Some(3)));
        assert_eq!(lines[2].change.as_ref().unwrap().stock, Some(7));
    }

    #[test]
    fn a_header_may_order_the_columns() {
        let lines = parse_body(Format::Csv, b"SKU,max_per_order,stock\nA,2,9\n").unwrap();
        let a = lines[0].change.as_ref().unwrap();
        assert_eq!((a.stock, a.max_per_order), (Some(9), Some(2)));
        // Without a header the default order holds; a first data line is not a header.
        let lines = parse_body(Format::Csv, b"A,2,9\n").unwrap();
        let a = lines[0].change.as_ref().unwrap();
        assert_eq!((a.stock, a.per_user_limit), (Some(2), Some(9)));
        assert_eq!(
            parse_body(Format::Csv, b"sku,stock,stock\nA,1,2")
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn too_many_lines_refuse_the_whole_body() {
        let mut body = String::from("sku,stock\n");
        for index in 0..limits::BULK_LINES_MAX {
            body.push_str(&format!("S{index},1\n\n"));
        }
        assert_eq!(
            parse_body(Format::Csv, body.as_bytes()).unwrap().len(),
            limits::BULK_LINES_MAX
        );
        body.push_str("ONE-MORE,1\n");
        assert_eq!(
            parse_body(Format::Csv, body.as_bytes()).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn a_sku_frame_fits_its_declared_bound() {
        use crate::journal::{Event, FrameBatch, Record, SkuChanged};
        let record = Record {
            at_ms: u64::MAX,
            event: Event::Sku(SkuChanged {
                sku: "S".repeat(limits::SKU_BYTES_MAX),
                slot_index: u32::MAX,
                stock_total: limits::STOCK_MAX,
                per_user_limit: u32::MAX,
                max_per_order: u32::MAX,
                payment_timeout_s: u32::MAX,
            }),
        };
        let mut frames = FrameBatch::default();
        frames.push(&record).unwrap();
        assert!(frames.as_bytes().len() <= limits::SKU_FRAME_BYTES_MAX);
    }
}
