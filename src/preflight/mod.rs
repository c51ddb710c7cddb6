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
//!
//! Where things are: this file runs the checks in order ([`run_with_config`]) and holds the
//! small ones (config, data_dir, lock, open_files, listen) and the thresholds; `fsync.rs`,
//! `disk.rs` and `room.rs` (journal_room, inventory_map) hold the larger checks, `report.rs`
//! the rows, their verdicts and the exit code; `tests.rs` the unit tests.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::config::{Config, FsyncPolicy, Overrides};
use crate::limits::CONNECTIONS_MAX;
use crate::order::Action;

mod disk;
mod fsync;
mod report;
mod room;

use disk::disk_check;
use fsync::fsync_check;
use room::{inventory_map_check, journal_room_check};

pub use disk::{DiskNeed, disk_need, free_bytes, journal_bytes_per_order};
pub use fsync::{FsyncSamples, judge_fsync, measure_fsync};
pub use report::{CHECK_NAMES, Check, Report, Verdict};
pub use room::{JournalRoom, prepare_inventory, prepare_journal_room};

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

/// Probe file names: neither is a segment name (`<20 digits>.seg`), so nothing the engine
/// or a reader lists ever takes them for journal data; both (this and
/// [`fsync`]'s) are removed after use.
const DIR_PROBE: &str = ".preflight.probe";

/// What `stampede preflight` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config`, `--listen`, `--data-dir`, as `serve` takes them.
    pub overrides: Overrides,
    /// Prepare the journal room and the inventory map when every check passed.
    pub prepare: bool,
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
