//! `stampede stock reconcile`: before (or after) an event, compares the stock the operator
//! expects with what the engine holds and with what its journal says, and prints the
//! differences as a table.
//!
//! Three views of each SKU:
//! - **expected**: the operator's file, CSV `sku,stock` (an optional header line naming the
//!   columns; the bulk-load CSV `sku,stock,per_user_limit,...` works too, extra columns are
//!   ignored) or the bulk-load NDJSON. An empty `stock` names the SKU without checking it.
//! - **engine** (`--url`): `stock_total`, `available`, `reserved`, `sold` from a running
//!   engine's `GET /v1/skus`, paged with `after`/`next_after`.
//! - **journal** (`--data-dir`): folded from the journal files ([`JournalReader`](crate::journal::JournalReader),
//!   [`ReadLimit::Written`](crate::journal::ReadLimit::Written); the engine may run or not): each SKU's `stock_total` is its last
//!   `sku` record's; `reserved`/`sold` follow the orders with the engine's own rules
//!   ([`transition`](crate::order::transition) on each action): an accepted prepaid/escrow order holds its `qty`
//!   reserved, a cod order sold; `pay` moves reserved → sold; `cancel`, `refund`, `expired`
//!   and a restocked `return` give the units back; `exchange` takes one sold unit of the
//!   record's `sku`.
//!
//! What is compared: expected `stock` with `stock_total` (engine and/or journal), the
//! engine's four figures with the journal's, and SKUs missing on any side. With `--data-dir`
//! alone there is no engine view (the engine may not be running) and the report says so;
//! with `--url` alone there is no journal view; with both, all three. With neither, the
//! journal of `./data` is read (as `stampede tail` does).
//!
//! **Records in flight.** A live engine decides orders before their records are written, and
//! keeps deciding while this runs, so the two views can differ by the records of a moment.
//! The engine is read first, then the journal to its end; when they differ the engine is read
//! again and the journal read on from where it stopped, and that second comparison is the
//! one reported (the report says it re-read). On a quiet engine the second read agrees; a
//! difference that stays on an engine under load may still be records in flight.
//!
//! Exit codes: 0 when everything compared matches, 1 when there are differences (the table
//! names each), 2 for usage and I/O errors (unreadable file, engine unreachable, journal
//! damaged or shortened by retention).
//!
//! Where things are: this file runs the command, compares the views and prints the table;
//! `expected.rs` reads the operator's file, `engine_view.rs` pages the engine's SKUs,
//! `journal_view.rs` folds the journal; `tests.rs` the unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::PathBuf;

use crate::api_client::Endpoint;

mod engine_view;
mod expected;
mod journal_view;

use engine_view::fetch_engine;
pub use expected::parse_expected;
use expected::read_expected;
use journal_view::JournalFold;

/// What `stampede stock reconcile` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The operator's expected stock.
    pub expected: PathBuf,
    /// A running engine to read the engine view from.
    pub url: Option<Endpoint>,
    /// The data directory whose journal gives the journal view.
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("expected stock file {path}: {reason}")]
    Expected { path: PathBuf, reason: String },
    #[error("{0}")]
    Http(String),
    #[error("journal: {0}")]
    Journal(String),
    #[error("cannot start: {0}")]
    Start(io::Error),
    #[error("cannot write the report: {0}")]
    Output(io::Error),
}

/// One SKU's stock figures (engine or journal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub stock_total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

/// SKU → expected stock (`None`: named, stock not checked).
pub type Expected = BTreeMap<String, Option<u64>>;
/// SKU → figures.
pub type View = BTreeMap<String, Counts>;

/// Runs the command, writing the report to `out`. `Ok(true)` when everything matches.
pub fn run(options: &Options, out: &mut dyn Write) -> Result<bool, ReconcileError> {
    let expected = read_expected(&options.expected)?;
    let data_dir = match (&options.url, &options.data_dir) {
        (None, None) => Some(PathBuf::from("data")),
        (_, dir) => dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReconcileError::Start)?;
    let fetch = |endpoint: &Endpoint| runtime.block_on(fetch_engine(endpoint));
    // The engine first, then the journal to at least where the engine was (see the module
    // doc on records in flight).
    let mut engine = options.url.as_ref().map(fetch).transpose()?;
    let mut journal = data_dir
        .as_deref()
        .map(|dir| {
            let mut fold = JournalFold::open(dir)?;
            fold.read_on()?;
            Ok::<_, ReconcileError>(fold)
        })
        .transpose()?;
    let mut rows = compare(
        &expected,
        engine.as_ref(),
        journal.as_ref().map(|fold| &fold.folded.view),
    );
    let mut reread = false;
    if let (Some(endpoint), Some(fold)) = (&options.url, journal.as_mut())
        && rows.iter().any(|row| row.engine_vs_journal)
    {
        reread = true;
        engine = Some(fetch(endpoint)?);
        fold.read_on()?;
        rows = compare(&expected, engine.as_ref(), Some(&fold.folded.view));
    }

    let write = |out: &mut dyn Write| -> io::Result<()> {
        writeln!(
            out,
            "expected: {} ({} SKUs)",
            options.expected.display(),
            expected.len()
        )?;
        match (&options.url, &engine) {
            (Some(endpoint), Some(view)) => writeln!(
                out,
                "engine:   http://{} ({} SKUs)",
                endpoint.connect_address(),
                view.len()
            )?,
            _ => writeln!(
                out,
                "engine:   not compared (no --url; the engine need not be running): the \
                 expected stock is compared with the journal only"
            )?,
        }
        match (&data_dir, &journal) {
            (Some(dir), Some(fold)) => writeln!(
                out,
                "journal:  {} ({} SKUs, {} orders, records up to seq {})",
                dir.join("journal").display(),
                fold.folded.view.len(),
                fold.folded.orders.len(),
                fold.reader.next_seq() - 1
            )?,
            _ => writeln!(
                out,
                "journal:  not compared (no --data-dir): the expected stock is compared with \
                 the engine only"
            )?,
        }
        if reread {
            writeln!(
                out,
                "note:     the engine and the journal differed at the first read; both were \
                 read again and this is the second comparison (differences that stay on a \
                 busy engine may be records in flight)"
            )?;
        }
        writeln!(out)?;
        if rows.is_empty() {
            writeln!(
                out,
                "all {} SKUs match",
                sku_count(&expected, &engine, &journal)
            )?;
        } else {
            write_table(out, &rows)?;
            writeln!(out)?;
            let skus: BTreeSet<&str> = rows.iter().map(|row| row.sku.as_str()).collect();
            writeln!(out, "{} differences in {} SKUs", rows.len(), skus.len())?;
        }
        out.flush()
    };
    write(out).map_err(ReconcileError::Output)?;
    Ok(rows.is_empty())
}

fn sku_count(expected: &Expected, engine: &Option<View>, journal: &Option<JournalFold>) -> usize {
    let mut names: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    names.extend(
        engine
            .iter()
            .flat_map(|view| view.keys().map(String::as_str)),
    );
    names.extend(
        journal
            .iter()
            .flat_map(|fold| fold.folded.view.keys().map(String::as_str)),
    );
    names.len()
}

/// The journal's figures with `available` filled in (what is neither reserved nor sold).
fn with_available(view: &View) -> View {
    view.iter()
        .map(|(name, counts)| {
            let mut counts = *counts;
            counts.available = counts
                .stock_total
                .saturating_sub(counts.reserved + counts.sold);
            (name.clone(), counts)
        })
        .collect()
}

// ---- the comparison -----------------------------------------------------------------------

/// Picks one figure of a SKU's counts.
type Figure = fn(&Counts) -> u64;

/// One difference: a SKU, what differs, and each view's value (`None`: not compared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub sku: String,
    /// `missing`, `stock_total`, `available`, `reserved` or `sold`.
    pub check: &'static str,
    pub expected: Option<String>,
    pub engine: Option<String>,
    pub journal: Option<String>,
    /// The engine and the journal disagree in this row (worth reading both again).
    pub engine_vs_journal: bool,
}

/// Compares the views (pure; unit-tested); `None` for a view not read. Rows by SKU name.
pub fn compare(expected: &Expected, engine: Option<&View>, journal: Option<&View>) -> Vec<Row> {
    let journal = journal.map(with_available);
    let journal = journal.as_ref();
    let mut names: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    names.extend(
        engine
            .iter()
            .flat_map(|view| view.keys().map(String::as_str)),
    );
    names.extend(
        journal
            .iter()
            .flat_map(|view| view.keys().map(String::as_str)),
    );
    let mut rows = Vec::new();
    for name in names {
        let wanted = expected.get(name);
        let in_engine = engine.map(|view| view.get(name));
        let in_journal = journal.map(|view| view.get(name));
        let shown = |side: Option<Option<&Counts>>, pick: fn(&Counts) -> u64| {
            side.map(|counts| counts.map_or_else(|| "missing".to_owned(), |c| pick(c).to_string()))
        };
        let expected_shown = |field: bool| {
            Some(match wanted {
                None => "missing".to_owned(),
                Some(Some(stock)) if field => stock.to_string(),
                Some(_) => "-".to_owned(),
            })
        };
        let present = [
            Some(wanted.is_some()),
            in_engine.map(|c| c.is_some()),
            in_journal.map(|c| c.is_some()),
        ];
        let sides: Vec<bool> = present.into_iter().flatten().collect();
        if sides.iter().any(|p| *p) && sides.iter().any(|p| !*p) {
            rows.push(Row {
                sku: name.to_owned(),
                check: "missing",
                expected: expected_shown(true),
                engine: shown(in_engine, |c| c.stock_total),
                journal: shown(in_journal, |c| c.stock_total),
                engine_vs_journal: match (in_engine, in_journal) {
                    (Some(Some(e)), Some(Some(j))) => e.stock_total != j.stock_total,
                    (Some(e), Some(j)) => e.is_some() != j.is_some(),
                    _ => false,
                },
            });
        } else {
            let mut totals: Vec<u64> = Vec::new();
            if let Some(Some(stock)) = wanted {
                totals.push(*stock);
            }
            totals.extend(in_engine.flatten().map(|c| c.stock_total));
            totals.extend(in_journal.flatten().map(|c| c.stock_total));
            if totals.windows(2).any(|pair| pair[0] != pair[1]) {
                rows.push(Row {
                    sku: name.to_owned(),
                    check: "stock_total",
                    expected: expected_shown(true),
                    engine: shown(in_engine, |c| c.stock_total),
                    journal: shown(in_journal, |c| c.stock_total),
                    engine_vs_journal: matches!(
                        (in_engine, in_journal),
                        (Some(Some(e)), Some(Some(j))) if e.stock_total != j.stock_total
                    ),
                });
            }
        }
        if let (Some(Some(e)), Some(Some(j))) = (in_engine, in_journal) {
            let figures: [(&'static str, Figure); 3] = [
                ("available", |c| c.available),
                ("reserved", |c| c.reserved),
                ("sold", |c| c.sold),
            ];
            for (check, pick) in figures {
                if pick(e) != pick(j) {
                    rows.push(Row {
                        sku: name.to_owned(),
                        check,
                        expected: Some("-".to_owned()),
                        engine: Some(pick(e).to_string()),
                        journal: Some(pick(j).to_string()),
                        engine_vs_journal: true,
                    });
                }
            }
        }
    }
    rows
}

fn write_table(out: &mut dyn Write, rows: &[Row]) -> io::Result<()> {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|row| {
            let shown = |value: &Option<String>| value.clone().unwrap_or_else(|| "n/a".into());
            [
                row.sku.clone(),
                row.check.to_owned(),
                shown(&row.expected),
                shown(&row.engine),
                shown(&row.journal),
            ]
        })
        .collect();
    let header = ["SKU", "DIFFERS", "EXPECTED", "ENGINE", "JOURNAL"];
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |out: &mut dyn Write, cells: [&str; 5]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(out, header)?;
    for row in &cells {
        line(out, [&row[0], &row[1], &row[2], &row[3], &row[4]])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
