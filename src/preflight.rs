//! `stampede preflight`: the big-event readiness check. Run it on the machine, with the
//! configuration, that will run the engine, before the engine starts; it prints one row per
//! check (what was measured against what is needed) and exits 0 only when every check
//! passed (warnings allowed), 1 when one failed, 2 when the configuration itself is invalid.
//!
//! The checks, in order (a check that cannot run because an earlier one failed is `skip`):
//!
//! 1. **config**: loaded exactly as `serve` loads it (embedded default < `--config` file <
//!    flags < `STAMPEDE_*`), with the effective values that matter printed.
//! 2. **data_dir**: exists or can be created, and a probe file can be created, written,
//!    fdatasynced and removed in it.
//! 3. **lock**: `<data_dir>/LOCK` is not held by a running engine. Preflight is for *before*
//!    the event, so a held lock is a failure. Preflight takes the lock itself while it writes
//!    in the data directory (the fsync probe and the preparation, a few seconds at most) and
//!    releases it before it prints; an engine started in that window refuses with "locked".
//! 4. **fsync**: [`FSYNC_SAMPLES`] 4 KiB writes, each followed by `fdatasync`, in a probe
//!    file in the journal directory (appending, or overwriting synced zeros when the engine
//!    will preallocate, as the engine will write). Any error fails. With `fsync = "always"`
//!    every acknowledgement waits for a group commit's fdatasync, so a p99 above
//!    [`FSYNC_P99_FAIL`] fails and one above [`FSYNC_P99_WARN`] warns; with `"interval"` a p99
//!    above the interval warns (the loss window stretches); with `"none"` it is reported.
//! 5. **disk**: free bytes (for unprivileged users) on the data directory's filesystem
//!    against what the event needs ([`DiskNeed`]): the journal of `inventory.orders_expected`
//!    orders, each a realistic acceptance and its [`LIFE_ACTIONS`] measured with the record
//!    encoder, times [`DISK_SAFETY_FACTOR`]; checkpoints; the inventory map; the room the
//!    preallocator keeps ahead.
//! 6. **open_files**: the soft `RLIMIT_NOFILE` against the connection bound plus
//!    [`OPEN_FILES_MARGIN`]. The engine does not raise its own limit, so a soft limit below
//!    that fails even when the hard limit would allow it; the detail says how to raise it.
//! 7. **listen**: the configured address can be bound (it is released at once).
//! 8. **journal_room** and **inventory_map**, only when nothing failed and without
//!    `--no-prepare`: see [`prepare_journal_room`] and [`prepare_inventory`].

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::checkpoint;
use crate::config::{Config, FsyncPolicy, Overrides};
use crate::data_dir::journal_dir;
use crate::durable;
use crate::inventory::Inventory;
use crate::inventory::slots::SLOT_BYTES;
use crate::journal::cursor::{CursorStep, SegmentCursor};
use crate::journal::record::SEGMENT_HEADER_BYTES;
use crate::journal::segment::{create_segment, list_segments, segment_file_name, write_zeros};
use crate::journal::storage::{FsStorage, Storage};
use crate::journal::{Event, FrameBatch, OrderAccepted, OrderAction, Record};
use crate::limits;
use crate::limits::CONNECTIONS_MAX;
use crate::order::{Action, Payment, transition};

/// `fdatasync`s timed by the fsync check: enough for a meaningful p99 (the second-worst
/// sample), few enough to take well under a second on a healthy disk.
pub const FSYNC_SAMPLES: usize = 200;
/// Bytes written before each timed `fdatasync`: one page, a small group commit.
pub const FSYNC_BLOCK_BYTES: usize = 4096;
/// With `fsync = "always"`, a p99 `fdatasync` above this warns: ~30 times a local NVMe
/// drive's (~160 µs with preallocation, BENCHMARKS.md), typical of network block storage.
/// Every order's latency includes a group commit.
pub const FSYNC_P99_WARN: Duration = Duration::from_millis(5);
/// With `fsync = "always"`, a p99 `fdatasync` above this fails: every acknowledgement waits
/// for one, so the p99 order latency would be at least this, and one shard's batch
/// (`shard.batch_max` orders) could commit at most 50 times a second.
pub const FSYNC_P99_FAIL: Duration = Duration::from_millis(20);
/// The journal room asked for is this many times the expected orders' journal: retries,
/// after-sales records (modify, return, exchange), sold-out SKUs' admin changes, and the
/// orders beyond the forecast all land there too.
pub const DISK_SAFETY_FACTOR: u64 = 2;
/// File descriptors the engine may hold beside its connections (`CONNECTIONS_MAX`): the
/// listener, stdio, `LOCK` and the runtime's own (~16); the journal segment and the
/// duplicates its fdatasync and preallocator threads use (3); `GET /v1/journal` page readers
/// (8) and followers (64), each with a segment open; order-history reads, each a segment
/// opened on the blocking pool (up to its 512 threads); checkpoint, consumer-offset and
/// retention files (a few). That is ~610; the margin rounds up so a burst never meets EMFILE.
pub const OPEN_FILES_MARGIN: u64 = 1024;

/// The records of a realistic order life after its acceptance (a prepaid order that is paid
/// after a reminder and goes through every fulfilment stage): 11 action records.
pub const LIFE_ACTIONS: [Action; 11] = [
    Action::PaymentReminder,
    Action::Pay,
    Action::Verify,
    Action::Print,
    Action::Pick,
    Action::Check,
    Action::Pack,
    Action::Weigh,
    Action::Ship,
    Action::Deliver,
    Action::Complete,
];
/// Realistic field sizes for the journal estimate: a UUID order id, a user id as shops
/// issue them, a structured SKU, and a full postal address as JSON (~190 bytes).
const SAMPLE_ORDER_ID: &str = "3f2b8c1e-9a47-4d2b-b6c5-7e1f0a9d4c21";
const SAMPLE_USER_ID: &str = "user-7f3a9c2e4b1d8f60a5e2";
const SAMPLE_SKU: &str = "SNKR-AIR-42-BLK";
const SAMPLE_ADDRESS: &str = r#"{"name":"Maria Fernanda Oliveira","line1":"Rua das Laranjeiras 1234, apto 56","line2":"Bloco B","city":"Sao Paulo","postcode":"22240-003","country":"BR","phone":"+55 11 91234-5678"}"#;

/// Probe file names: neither is a segment name (`<20 digits>.seg`), so nothing the engine
/// or a reader lists ever takes them for journal data; both are removed after use.
const DIR_PROBE: &str = ".preflight.probe";
const FSYNC_PROBE: &str = ".preflight-fsync.probe";
/// Pages of the inventory map are touched at this stride (the smallest page size).
const PAGE_BYTES: usize = 4096;

/// What `stampede preflight` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config`, `--listen`, `--data-dir`, as `serve` takes them.
    pub overrides: Overrides,
    /// Prepare the journal room and the inventory map when every check passed.
    pub prepare: bool,
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Ready, but worth a look (the detail says why).
    Warn,
    Fail,
    /// Not run: an earlier check failed, or `--no-prepare`.
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// Stable name: `config`, `data_dir`, `lock`, `fsync`, `disk`, `open_files`, `listen`,
    /// `journal_room`, `inventory_map`.
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was measured against what is needed, for a person.
    pub detail: String,
    /// The same figures as numbers, for automation (`--json`).
    pub values: Map<String, Value>,
}

impl Check {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict,
            detail: detail.into(),
            values: Map::new(),
        }
    }

    fn with(mut self, values: Value) -> Self {
        if let Value::Object(values) = values {
            self.values = values;
        }
        self
    }
}

/// Every check's row, in order.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The configuration did not load: nothing else could be checked.
    pub config_invalid: bool,
}

/// Every check's name, in the order they run and print.
pub const CHECK_NAMES: [&str; 9] = [
    "config",
    "data_dir",
    "lock",
    "fsync",
    "disk",
    "open_files",
    "listen",
    "journal_room",
    "inventory_map",
];

impl Report {
    /// 2 when the configuration is invalid, 1 when a check failed, 0 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.config_invalid {
            2
        } else if self.failed().next().is_some() {
            1
        } else {
            0
        }
    }

    pub fn ready(&self) -> bool {
        self.exit_code() == 0
    }

    fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.verdict == Verdict::Fail)
    }

    /// The table: one row per check, then the verdict.
    pub fn to_table(&self) -> String {
        let name_width = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .max("CHECK".len());
        let mut out = format!("{:name_width$}  RESULT  DETAIL\n", "CHECK");
        for check in &self.checks {
            out.push_str(&format!(
                "{:name_width$}  {:6}  {}\n",
                check.name,
                check.verdict.as_str(),
                check.detail
            ));
        }
        let warnings = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Warn)
            .count();
        let failed: Vec<&str> = self.failed().map(|c| c.name).collect();
        out.push('\n');
        if self.config_invalid {
            out.push_str("NOT READY: the configuration is invalid\n");
        } else if failed.is_empty() {
            out.push_str(&format!(
                "READY: every check passed ({warnings} warning{})\n",
                if warnings == 1 { "" } else { "s" }
            ));
        } else {
            out.push_str(&format!(
                "NOT READY: {} failed: {}\n",
                if failed.len() == 1 {
                    "1 check"
                } else {
                    "checks"
                },
                failed.join(", ")
            ));
        }
        out
    }

    /// The same report as one JSON object: `ready`, `exit_code` and `checks` (each `check`,
    /// `result`, `detail`, `values`).
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|check| {
                json!({
                    "check": check.name,
                    "result": check.verdict.as_str(),
                    "detail": check.detail,
                    "values": check.values,
                })
            })
            .collect();
        json!({
            "ready": self.ready(),
            "exit_code": self.exit_code(),
            "checks": checks,
        })
    }
}

/// Loads the configuration as `serve` does and runs every check.
pub fn run(options: &Options) -> Report {
    match Config::load(&options.overrides) {
        Ok(config) => run_with_config(&config, options.prepare),
        Err(error) => {
            let mut checks = vec![Check::new("config", Verdict::Fail, error.to_string())];
            checks.extend(CHECK_NAMES[1..].iter().map(|name| {
                Check::new(name, Verdict::Skip, "not run: the configuration is invalid")
            }));
            Report {
                checks,
                config_invalid: true,
            }
        }
    }
}

/// Runs every check against a loaded configuration.
pub fn run_with_config(config: &Config, prepare: bool) -> Report {
    let mut checks = vec![config_check(config)];
    let data_dir = &config.data_dir;

    let dir_check = data_dir_check(data_dir);
    let dir_ok = dir_check.verdict != Verdict::Fail;
    checks.push(dir_check);

    // Held from here until the report is complete: nothing preflight writes in the data
    // directory can meet an engine starting at the same moment.
    let mut lock_guard: Option<File> = None;
    let writes_skipped = if dir_ok {
        let (check, guard) = lock_check(data_dir);
        let reason = match check.verdict {
            Verdict::Fail => Some("not run: preflight does not write beside a running engine"),
            _ => None,
        };
        checks.push(check);
        lock_guard = guard;
        reason
    } else {
        checks.push(Check::new(
            "lock",
            Verdict::Skip,
            "not run: the data directory is not usable",
        ));
        Some("not run: the data directory is not usable")
    };

    checks.push(match writes_skipped {
        None => fsync_check(config),
        Some(reason) => Check::new("fsync", Verdict::Skip, reason),
    });
    checks.push(disk_check(config));
    checks.push(open_files_check());
    checks.push(listen_check(config));

    let failed = checks.iter().any(|c| c.verdict == Verdict::Fail);
    if !prepare {
        for name in ["journal_room", "inventory_map"] {
            checks.push(Check::new(
                name,
                Verdict::Skip,
                "not prepared: --no-prepare",
            ));
        }
    } else if failed || lock_guard.is_none() {
        for name in ["journal_room", "inventory_map"] {
            checks.push(Check::new(
                name,
                Verdict::Skip,
                "not prepared: a check above failed",
            ));
        }
    } else {
        checks.push(journal_room_check(config));
        checks.push(inventory_map_check(config));
    }
    drop(lock_guard);
    Report {
        checks,
        config_invalid: false,
    }
}

fn config_check(config: &Config) -> Check {
    let shards = match config.shards {
        Some(shards) => shards.to_string(),
        None => format!("{} (one per core)", config.shard_count()),
    };
    let j = &config.journal;
    let fsync = fsync_name(j.fsync);
    Check::new(
        "config",
        Verdict::Pass,
        format!(
            "listen {}, data_dir {}, fsync {fsync}, journal.preallocate {}, shards {shards}, \
             orders_expected {}, skus_max {}",
            config.listen,
            config.data_dir.display(),
            j.preallocate,
            config.inventory.orders_expected,
            config.inventory.skus_max,
        ),
    )
    .with(json!({
        "listen": config.listen.to_string(),
        "data_dir": config.data_dir.display().to_string(),
        "fsync": fsync,
        "preallocate": j.preallocate,
        "shards": config.shard_count(),
        "shards_configured": config.shards,
        "orders_expected": config.inventory.orders_expected,
        "skus_max": config.inventory.skus_max,
        "segment_bytes_max": j.segment_bytes_max,
    }))
}

fn fsync_name(policy: FsyncPolicy) -> &'static str {
    match policy {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Interval => "interval",
        FsyncPolicy::None => "none",
    }
}

fn data_dir_check(dir: &Path) -> Check {
    let fail = |detail: String| Check::new("data_dir", Verdict::Fail, detail);
    let created = match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => false,
        Ok(_) => return fail(format!("{} exists but is not a directory", dir.display())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if let Err(error) = fs::create_dir_all(dir) {
                return fail(format!(
                    "{} cannot be created or opened: {error}",
                    dir.display()
                ));
            }
            true
        }
        Err(error) => {
            return fail(format!(
                "{} cannot be created or opened: {error}",
                dir.display()
            ));
        }
    };
    let probe = dir.join(DIR_PROBE);
    let written = (|| -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)?;
        file.write_all_at(&[0x5A; 4096], 0)?;
        file.sync_data()
    })();
    let removed = fs::remove_file(&probe);
    if let Err(error) = written.and(removed) {
        return fail(format!(
            "{} is not writable: a probe file could not be created, written, fdatasynced \
             and removed: {error}",
            dir.display()
        ));
    }
    let shown = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    Check::new(
        "data_dir",
        Verdict::Pass,
        format!(
            "{} {}; writable (probe created, written, fdatasynced, removed)",
            shown.display(),
            if created { "created" } else { "exists" }
        ),
    )
    .with(json!({ "path": shown.display().to_string(), "created": created }))
}

/// Takes `<data_dir>/LOCK` as the engine does; the lock is held until the file is dropped.
fn lock_check(data_dir: &Path) -> (Check, Option<File>) {
    let path = data_dir.join("LOCK");
    let fail = |detail: String| (Check::new("lock", Verdict::Fail, detail), None);
    let file = match crate::data_dir::try_lock_data_dir(data_dir) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return fail(format!(
                "engine running: {} is locked (by a running engine, or for a moment by another \
                 preflight); preflight is for before the event: stop that engine, or point \
                 --data-dir at the event's directory",
                path.display()
            ));
        }
        Err(error) => return fail(format!("{}: {error}", path.display())),
    };
    (
        Check::new(
            "lock",
            Verdict::Pass,
            format!("{} is free: no engine is running here", path.display()),
        ),
        Some(file),
    )
}

/// The fsync latencies measured, sorted.
#[derive(Debug, Clone)]
pub struct FsyncSamples {
    sorted: Vec<Duration>,
}

impl FsyncSamples {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "no fsync samples");
        samples.sort_unstable();
        Self { sorted: samples }
    }

    /// The `q` quantile (nearest rank): the smallest sample with at least `q` of them at or
    /// below it.
    pub fn quantile(&self, q: f64) -> Duration {
        let rank = (q * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    pub fn max(&self) -> Duration {
        *self.sorted.last().expect("not empty")
    }
}

/// Times `FSYNC_SAMPLES` fdatasyncs of 4 KiB writes in a probe file in `dir`, appending (as
/// the engine writes without preallocation) or overwriting synced zeros (as it writes with
/// it). The probe is removed whatever happens.
pub fn measure_fsync(dir: &Path, overwrite: bool) -> io::Result<FsyncSamples> {
    let path = dir.join(FSYNC_PROBE);
    let measured = (|| -> io::Result<FsyncSamples> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        if overwrite {
            file.write_all_at(&vec![0; FSYNC_SAMPLES * FSYNC_BLOCK_BYTES], 0)?;
            file.sync_all()?;
        }
        let block = [0xA5u8; FSYNC_BLOCK_BYTES];
        let mut samples = Vec::with_capacity(FSYNC_SAMPLES);
        for index in 0..FSYNC_SAMPLES {
            file.write_all_at(&block, (index * FSYNC_BLOCK_BYTES) as u64)?;
            let started = Instant::now();
            file.sync_data()?;
            samples.push(started.elapsed());
        }
        Ok(FsyncSamples::new(samples))
    })();
    let removed = fs::remove_file(&path);
    let samples = measured?;
    removed?;
    Ok(samples)
}

/// The fsync check's verdict for a measured p99 under the configured policy.
pub fn judge_fsync(policy: FsyncPolicy, interval_ms: u64, p99: Duration) -> (Verdict, String) {
    let p99_us = p99.as_micros();
    match policy {
        FsyncPolicy::Always if p99 > FSYNC_P99_FAIL => (
            Verdict::Fail,
            format!(
                "p99 {p99_us} us > {} ms: with fsync = always every acknowledgement waits for \
                 one; use a faster disk for the journal",
                FSYNC_P99_FAIL.as_millis()
            ),
        ),
        FsyncPolicy::Always if p99 > FSYNC_P99_WARN => (
            Verdict::Warn,
            format!(
                "p99 {p99_us} us > {} ms (fails above {} ms): every acknowledgement waits for one",
                FSYNC_P99_WARN.as_millis(),
                FSYNC_P99_FAIL.as_millis()
            ),
        ),
        FsyncPolicy::Always => (
            Verdict::Pass,
            format!(
                "p99 {p99_us} us <= {} ms (fsync = always: every acknowledgement waits for one)",
                FSYNC_P99_WARN.as_millis()
            ),
        ),
        FsyncPolicy::Interval if p99 > Duration::from_millis(interval_ms) => (
            Verdict::Warn,
            format!(
                "p99 {p99_us} us > journal.fsync_interval_ms {interval_ms}: syncs fall behind \
                 the interval, so a power cut may lose more than it says"
            ),
        ),
        FsyncPolicy::Interval => (
            Verdict::Pass,
            format!("p99 {p99_us} us <= journal.fsync_interval_ms {interval_ms}"),
        ),
        FsyncPolicy::None => (
            Verdict::Pass,
            "fsync = none: no acknowledgement waits for one (reported only)".to_string(),
        ),
    }
}

fn fsync_check(config: &Config) -> Check {
    let dir = journal_dir(&config.data_dir);
    let overwrite = config.journal.preallocate && config.journal.fsync != FsyncPolicy::None;
    let samples = fs::create_dir_all(&dir).and_then(|()| measure_fsync(&dir, overwrite));
    let samples = match samples {
        Ok(samples) => samples,
        Err(error) => {
            return Check::new(
                "fsync",
                Verdict::Fail,
                format!("fdatasync probe in {} failed: {error}", dir.display()),
            );
        }
    };
    let (verdict, judgement) = judge_fsync(
        config.journal.fsync,
        config.journal.fsync_interval_ms,
        samples.p99(),
    );
    Check::new(
        "fsync",
        verdict,
        format!(
            "{FSYNC_SAMPLES} x ({} KiB write + fdatasync{}): median {} us, p99 {} us, max {} us; \
             {judgement}",
            FSYNC_BLOCK_BYTES / 1024,
            if overwrite {
                ", over synced zeros"
            } else {
                ", appending"
            },
            samples.median().as_micros(),
            samples.p99().as_micros(),
            samples.max().as_micros(),
        ),
    )
    .with(json!({
        "samples": FSYNC_SAMPLES,
        "median_us": samples.median().as_micros() as u64,
        "p99_us": samples.p99().as_micros() as u64,
        "max_us": samples.max().as_micros() as u64,
        "warn_p99_us": FSYNC_P99_WARN.as_micros() as u64,
        "fail_p99_us": FSYNC_P99_FAIL.as_micros() as u64,
        "overwrite": overwrite,
    }))
}

/// The journal bytes one order takes over its life, framed and aligned as on disk: an
/// acceptance at realistic field sizes and the [`LIFE_ACTIONS`] records after it, encoded
/// with the engine's own [`FrameBatch`].
pub fn journal_bytes_per_order() -> u64 {
    let at_ms = 1_750_000_000_000;
    let mut batch = FrameBatch::default();
    batch
        .push(&Record {
            at_ms,
            event: Event::Accepted(OrderAccepted {
                order_id: SAMPLE_ORDER_ID.into(),
                user_id: SAMPLE_USER_ID.into(),
                sku: SAMPLE_SKU.into(),
                qty: 1,
                payment: Payment::Prepaid,
                address: Some(SAMPLE_ADDRESS.into()),
            }),
        })
        .expect("the sample acceptance encodes");
    let mut status = Payment::Prepaid.initial_status();
    // Each action links to the record before it; the value's size does not vary.
    for (prev_seq, action) in (1_000_000_000..).zip(LIFE_ACTIONS) {
        status = transition(status, action, false)
            .expect("the sample life is a valid path")
            .to;
        batch
            .push(&Record {
                at_ms,
                event: Event::Action(Box::new(OrderAction {
                    order_id: SAMPLE_ORDER_ID.into(),
                    action,
                    status,
                    prev_seq,
                    reason: None,
                    address: None,
                    redirect: false,
                    restock: false,
                    exchange_sku: None,
                })),
            })
            .expect("the sample action encodes");
    }
    batch.as_bytes().len() as u64
}

/// The disk room the event needs, in bytes, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskNeed {
    pub journal_bytes_per_order: u64,
    /// `orders_expected` × per order × [`DISK_SAFETY_FACTOR`].
    pub journal: u64,
    /// The checkpoints retention may keep (plus the one being written): one order entry
    /// each per order.
    pub checkpoints: u64,
    pub inventory_map: u64,
    /// The synced zeros the preallocator keeps ahead of the writer (when on).
    pub preallocated: u64,
    pub total: u64,
}

pub fn disk_need(config: &Config) -> DiskNeed {
    let orders = config.inventory.orders_expected as u64;
    let journal_bytes_per_order = journal_bytes_per_order();
    let journal = orders * journal_bytes_per_order * DISK_SAFETY_FACTOR;
    let checkpoint_bytes_per_order = std::mem::size_of::<checkpoint::ArchivedOrderState>() as u64;
    let checkpoints =
        orders * checkpoint_bytes_per_order * (checkpoint::CHECKPOINTS_KEPT as u64 + 1);
    let inventory_map = Inventory::file_bytes(config.inventory.skus_max);
    let preallocated = if config.journal.preallocate && config.journal.fsync != FsyncPolicy::None {
        limits::PREALLOCATE_AHEAD_BYTES
    } else {
        0
    };
    DiskNeed {
        journal_bytes_per_order,
        journal,
        checkpoints,
        inventory_map,
        preallocated,
        total: journal + checkpoints + inventory_map + preallocated,
    }
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and `stat` points
    // to writable memory of the struct's size, which statvfs fills on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 or u64).
    #[allow(clippy::unnecessary_cast)]
    let bytes = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    Ok(bytes)
}

/// `path`, or its nearest ancestor that exists (the filesystem the directory will be on).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    while !current.exists() {
        if !current.pop() {
            return PathBuf::from("/");
        }
    }
    current
}

fn disk_check(config: &Config) -> Check {
    let need = disk_need(config);
    let on = existing_ancestor(&config.data_dir);
    let have = match free_bytes(&on) {
        Ok(have) => have,
        Err(error) => {
            return Check::new(
                "disk",
                Verdict::Fail,
                format!("statvfs {}: {error}", on.display()),
            );
        }
    };
    let verdict = if have >= need.total {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let mut detail = format!(
        "need {} vs have {} free on {}: journal {} ({} orders x {} B per order x {}), \
         checkpoints {}, inventory map {}",
        human_bytes(need.total),
        human_bytes(have),
        on.display(),
        human_bytes(need.journal),
        config.inventory.orders_expected,
        need.journal_bytes_per_order,
        DISK_SAFETY_FACTOR,
        human_bytes(need.checkpoints),
        human_bytes(need.inventory_map),
    );
    if need.preallocated > 0 {
        detail.push_str(&format!(
            ", preallocated room {}",
            human_bytes(need.preallocated)
        ));
    }
    Check::new("disk", verdict, detail).with(json!({
        "need_bytes": need.total,
        "have_bytes": have,
        "path": on.display().to_string(),
        "journal_bytes": need.journal,
        "journal_bytes_per_order": need.journal_bytes_per_order,
        "records_per_order": 1 + LIFE_ACTIONS.len(),
        "safety_factor": DISK_SAFETY_FACTOR,
        "checkpoint_bytes": need.checkpoints,
        "inventory_map_bytes": need.inventory_map,
        "preallocated_bytes": need.preallocated,
    }))
}

/// The soft and hard `RLIMIT_NOFILE` of this process (`u64::MAX` for unlimited).
pub fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit that getrlimit fills.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field type differs between platforms.
    #[allow(clippy::unnecessary_cast)]
    Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// File descriptors the engine needs at most: its connections and [`OPEN_FILES_MARGIN`].
pub const OPEN_FILES_NEEDED: u64 = CONNECTIONS_MAX as u64 + OPEN_FILES_MARGIN;

/// The open-files verdict for a soft and hard limit.
pub fn judge_open_files(soft: u64, hard: u64) -> (Verdict, String) {
    let need = OPEN_FILES_NEEDED;
    let limits_text = format!(
        "soft limit {}, hard limit {} vs need {need} ({CONNECTIONS_MAX} connections + \
         {OPEN_FILES_MARGIN} for the listener, journal segments, readers and followers, \
         checkpoints and the runtime)",
        limit_text(soft),
        limit_text(hard)
    );
    if soft >= need {
        (Verdict::Pass, limits_text)
    } else if hard >= need {
        (
            Verdict::Fail,
            format!(
                "{limits_text}; the engine does not raise it itself: run `ulimit -n {need}` in \
                 the shell that starts it (or LimitNOFILE={need} in its systemd unit)"
            ),
        )
    } else {
        (
            Verdict::Fail,
            format!(
                "{limits_text}; the hard limit is below too: raise it (nofile in \
                 /etc/security/limits.conf, or LimitNOFILE={need} in the systemd unit), \
                 then `ulimit -n {need}`"
            ),
        )
    }
}

fn limit_text(limit: u64) -> String {
    // The constant's type differs between platforms.
    #[allow(clippy::unnecessary_cast)]
    let infinity = libc::RLIM_INFINITY as u64;
    if limit == infinity {
        "unlimited".to_string()
    } else {
        limit.to_string()
    }
}

fn open_files_check() -> Check {
    match open_files_limit() {
        Ok((soft, hard)) => {
            let (verdict, detail) = judge_open_files(soft, hard);
            Check::new("open_files", verdict, detail).with(json!({
                "soft": soft,
                "hard": hard,
                "need": OPEN_FILES_NEEDED,
                "connections_max": CONNECTIONS_MAX,
                "margin": OPEN_FILES_MARGIN,
            }))
        }
        Err(error) => Check::new(
            "open_files",
            Verdict::Fail,
            format!("getrlimit(RLIMIT_NOFILE): {error}"),
        ),
    }
}

fn listen_check(config: &Config) -> Check {
    let address = config.listen;
    // The same bind the engine does (std and tokio both set SO_REUSEADDR), released at once.
    match std::net::TcpListener::bind(address) {
        Ok(listener) => {
            drop(listener);
            let detail = if address.port() == 0 {
                format!("{address} can be bound (port 0: the engine picks a free port)")
            } else {
                format!("{address} is free (bound and released)")
            };
            Check::new("listen", Verdict::Pass, detail)
                .with(json!({ "address": address.to_string() }))
        }
        Err(error) => Check::new(
            "listen",
            Verdict::Fail,
            format!("cannot bind {address}: {error}"),
        )
        .with(json!({ "address": address.to_string(), "error": error.to_string() })),
    }
}

/// What [`prepare_journal_room`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalRoom {
    /// A new journal: its first segment, header and `room` bytes of synced zeros.
    Created { path: PathBuf, room: u64 },
    /// Zeros appended after the last segment's end; `room` is what now lies after its last
    /// frame.
    Extended {
        path: PathBuf,
        added: u64,
        room: u64,
    },
    /// The last segment already had the room (zeros after its last frame).
    Enough { path: PathBuf, room: u64 },
    /// The last segment is at its target size: the engine opens the next one at its first
    /// commit.
    SegmentFull { path: PathBuf },
    /// Left alone, for the engine's recovery to judge (the reason says what was found).
    Untouched { reason: String },
}

/// Writes the room the preallocator would keep ahead of the writer (`PREALLOCATE_AHEAD_BYTES`
/// of synced zeros, capped at the segment's target size) before the engine starts, so its
/// first group commits already overwrite allocated blocks.
///
/// Safe by the journal's recovery rules: zeros after the last frame of a segment are room,
/// not damage and not a torn tail (`journal::recovery`), and the writer continues at the last
/// frame's end over them (`Journal::open`). So this only ever writes zeros *after* the last
/// segment's last frame, or, for a journal with no segment at all (and no checkpoint), the
/// very segment the engine would create first (`<1:020>.seg`, its header, synced with its
/// directory, through `journal::segment::create_segment` as the writer does). It never creates a later segment (the
/// engine's rotation creates those with `create_new`), and leaves a last segment that does
/// not end cleanly (a torn tail, a record that does not decode) untouched. The caller holds
/// the data directory's lock.
pub fn prepare_journal_room(data_dir: &Path, segment_bytes_max: u64) -> io::Result<JournalRoom> {
    let dir = journal_dir(data_dir);
    fs::create_dir_all(&dir)?;
    let ahead = limits::PREALLOCATE_AHEAD_BYTES;
    let segments = list_segments(&dir)?;
    let Some((_, path)) = segments.last() else {
        if !checkpoint::list(&checkpoint::checkpoints_dir(data_dir))?.is_empty() {
            return Ok(JournalRoom::Untouched {
                reason: "the journal has no segment but checkpoints exist: the engine will \
                         refuse to start until the journal is restored"
                    .into(),
            });
        }
        // The segment the engine would create first, as it creates it (header, fsync,
        // directory sync); a creation that fails half way leaves no file behind.
        let (path, file) = create_segment(&FsStorage, &dir, 1).map_err(|failure| {
            if !failure.nothing_left {
                let _ = durable::remove_file(&dir.join(segment_file_name(1)));
            }
            failure.error
        })?;
        let end = SEGMENT_HEADER_BYTES as u64;
        let target = (end + ahead).min(segment_bytes_max);
        let written = (|| -> io::Result<()> {
            write_zeros(&*file, end, target)?;
            file.sync_data()?;
            durable::sync_dir(data_dir)
        })();
        if let Err(error) = written {
            drop(file);
            let _ = durable::remove_file(&path);
            return Err(error);
        }
        return Ok(JournalRoom::Created {
            path,
            room: target - end,
        });
    };
    let mut cursor = match SegmentCursor::open(path)? {
        Ok(cursor) => cursor,
        Err(reason) => {
            return Ok(JournalRoom::Untouched {
                reason: format!("{}: {reason}", path.display()),
            });
        }
    };
    // Where the last frame ends: the writer's logical end.
    let end = loop {
        let (offset, problem) = match cursor.step()? {
            CursorStep::Frame { record: Ok(_), .. } => continue,
            CursorStep::Frame {
                offset,
                record: Err(reason),
                ..
            } => (offset, Some(reason)),
            CursorStep::End => (0, None),
            CursorStep::Bad { offset, reason, .. } => (offset, Some(reason)),
        };
        match problem {
            None => break cursor.offset(),
            Some(_) if cursor.rest_is_zero(offset)? => break offset,
            Some(reason) => {
                return Ok(JournalRoom::Untouched {
                    reason: format!(
                        "{} does not end cleanly at byte {offset} ({reason}); left for the \
                         engine's recovery (a torn tail is cut, damage stops the start)",
                        path.display()
                    ),
                });
            }
        }
    };
    let file_len = fs::metadata(path)?.len();
    if end >= segment_bytes_max {
        return Ok(JournalRoom::SegmentFull { path: path.clone() });
    }
    let target = (end + ahead).min(segment_bytes_max);
    if file_len >= target {
        return Ok(JournalRoom::Enough {
            path: path.clone(),
            room: file_len - end,
        });
    }
    let file = FsStorage.open_existing(path)?;
    // From the file's end on: everything before it is frames or zeros, and stays as it is.
    write_zeros(&*file, file_len, target)?;
    file.sync_data()?;
    Ok(JournalRoom::Extended {
        path: path.clone(),
        added: target - file_len,
        room: target - end,
    })
}

fn journal_room_check(config: &Config) -> Check {
    let j = &config.journal;
    if !j.preallocate {
        return Check::new(
            "journal_room",
            Verdict::Pass,
            "nothing to prepare: journal.preallocate is off, so the engine grows each segment \
             as it writes (each group commit's fdatasync also commits the new size; \
             config/default.toml explains the trade)",
        );
    }
    if j.fsync == FsyncPolicy::None {
        return Check::new(
            "journal_room",
            Verdict::Pass,
            "nothing to prepare: with fsync = none the engine keeps no room ahead",
        );
    }
    let started = Instant::now();
    let done = prepare_journal_room(&config.data_dir, j.segment_bytes_max);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match done {
        Ok(JournalRoom::Created { path, room }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "created {} with {} of synced zeros ahead in {ms:.1} ms",
                path.display(),
                human_bytes(room)
            ),
        )
        .with(json!({ "path": path.display().to_string(), "room_bytes": room, "ms": ms })),
        Ok(JournalRoom::Extended { path, added, room }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "{}: {} of synced zeros written after its last frame in {ms:.1} ms ({} ahead)",
                path.display(),
                human_bytes(added),
                human_bytes(room)
            ),
        )
        .with(json!({
            "path": path.display().to_string(),
            "added_bytes": added,
            "room_bytes": room,
            "ms": ms,
        })),
        Ok(JournalRoom::Enough { path, room }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "{} already has {} of zeros after its last frame",
                path.display(),
                human_bytes(room)
            ),
        )
        .with(json!({ "path": path.display().to_string(), "room_bytes": room })),
        Ok(JournalRoom::SegmentFull { path }) => Check::new(
            "journal_room",
            Verdict::Pass,
            format!(
                "{} is at journal.segment_bytes_max: the engine opens the next segment at its \
                 first commit and preallocates there",
                path.display()
            ),
        ),
        Ok(JournalRoom::Untouched { reason }) => Check::new(
            "journal_room",
            Verdict::Warn,
            format!("not prepared: {reason}"),
        ),
        Err(error) => Check::new(
            "journal_room",
            Verdict::Fail,
            format!("preallocating journal room failed: {error}"),
        ),
    }
}

/// Creates `<data_dir>/inventory.slots` at its configured size with the engine's own
/// [`Inventory::create`] (which reserves its blocks and pre-touches every page, as at every
/// engine start) and reads the map back, proving the file can be made and mapped whole on
/// this filesystem. Returns the file's size. The engine re-creates the file at each start (it is
/// rebuilt from the journal) and pre-touches it there, before any shard runs.
pub fn prepare_inventory(data_dir: &Path, skus_max: u32) -> io::Result<u64> {
    let inventory = Inventory::create(&data_dir.join("inventory.slots"), skus_max)?;
    let stride = (PAGE_BYTES / SLOT_BYTES) as u32;
    let mut index = 0;
    while index < skus_max {
        std::hint::black_box(inventory.slot(index).read());
        index += stride;
    }
    std::hint::black_box(inventory.slot(skus_max - 1).read());
    Ok(Inventory::file_bytes(skus_max))
}

fn inventory_map_check(config: &Config) -> Check {
    let started = Instant::now();
    let done = prepare_inventory(&config.data_dir, config.inventory.skus_max);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match done {
        Ok(bytes) => Check::new(
            "inventory_map",
            Verdict::Pass,
            format!(
                "inventory.slots created at {} ({} slots) and every page touched in {ms:.1} ms \
                 (the engine re-creates and pre-touches it the same way at each start)",
                human_bytes(bytes),
                config.inventory.skus_max
            ),
        )
        .with(json!({ "bytes": bytes, "slots": config.inventory.skus_max, "ms": ms })),
        Err(error) => Check::new(
            "inventory_map",
            Verdict::Fail,
            format!("inventory.slots could not be created and mapped: {error}"),
        ),
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests;
