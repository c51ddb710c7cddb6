//! The **fsync** check: [`FSYNC_SAMPLES`] timed `fdatasync`s in a probe file in the journal
//! directory, judged against the configured fsync policy ([`judge_fsync`]).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Check, FSYNC_BLOCK_BYTES, FSYNC_P99_FAIL, FSYNC_P99_WARN, FSYNC_SAMPLES, Verdict};
use crate::config::{Config, FsyncPolicy};
use crate::data_dir::journal_dir;

/// The fsync probe's file name (see `DIR_PROBE` in the module above).
const FSYNC_PROBE: &str = ".preflight-fsync.probe";

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

pub(super) fn fsync_check(config: &Config) -> Check {
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
