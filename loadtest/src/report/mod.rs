//! Results: the [`Summary`] of a run (what the JSON file holds), SLO verdicts, the exit code,
//! and its renderings: a text table on stdout, JSON, and a self-contained HTML page.

pub mod html;
pub mod svg;
pub mod text;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::audit::AuditReport;
use crate::driver::DriveResult;
use crate::outcome::{CLASS_COUNT, OutcomeClass};
use crate::scenario::Model;

/// Exit codes of `stampede-load`.
pub mod exit {
    /// The audit held and every SLO given held.
    pub const OK: u8 = 0;
    /// An SLO given on the command line failed.
    pub const SLO_FAILED: u8 = 1;
    /// The audit found a broken invariant (or could not read what it needed).
    pub const AUDIT_FAILED: u8 = 2;
    /// Bad arguments or scenario, or the run could not be set up (target down, token refused).
    pub const USAGE: u8 = 3;
}

/// Highest percentile point of the curves (99.999%).
const CURVE_NINES_MAX: f64 = 5.0;
/// The report warns that the generator fell behind when its send lag at a percentile is at
/// least this share of the corrected latency at the same percentile: past it, the tail is
/// as much the generator's lateness as the target's answer.
pub const SEND_LAG_WARN_SHARE: f64 = 0.25;
/// ...and at least this long, so that a sub-millisecond tail is not flagged for timer
/// jitter (the timer's resolution is 1 ms).
pub const SEND_LAG_WARN_MIN_US: u64 = 2_000;

/// SLO thresholds from the command line; `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SloThresholds {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub min_throughput: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub tool: &'static str,
    pub version: &'static str,
    pub run_id: String,
    pub scenario: String,
    pub scenario_description: String,
    pub target: &'static str,
    pub target_address: String,
    pub model: Model,
    /// Open model: the steady arrival rate, requests per second.
    pub rate_per_s: Option<f64>,
    pub burst: u64,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub ramp_up_s: f64,
    pub timeout_s: f64,
    pub seed: u64,
    pub sku_count: usize,
    pub started_unix_ms: u64,
    /// The machine the generator ran on.
    pub host: String,
    /// The target's journal fsync policy, where the target reports it (`GET /metrics`).
    pub target_fsync: Option<String>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassSummary {
    pub class: &'static str,
    pub label: &'static str,
    pub count: u64,
    /// Share of the measured requests.
    pub share: f64,
    pub per_second: f64,
    pub latency: Option<Percentiles>,
}

/// Counts per outcome class, named as in the JSON summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub created_201: u64,
    pub replayed_200: u64,
    pub refused_409: u64,
    pub unprocessable_422: u64,
    pub shed_429_503: u64,
    pub other_error: u64,
    pub transport_error: u64,
}

impl ClassCounts {
    pub fn from_array(counts: &[u64; CLASS_COUNT]) -> Self {
        Self {
            created_201: counts[0],
            replayed_200: counts[1],
            refused_409: counts[2],
            unprocessable_422: counts[3],
            shed_429_503: counts[4],
            other_error: counts[5],
            transport_error: counts[6],
        }
    }

    pub fn get(&self, class: OutcomeClass) -> u64 {
        match class {
            OutcomeClass::Created => self.created_201,
            OutcomeClass::Replayed => self.replayed_200,
            OutcomeClass::Refused => self.refused_409,
            OutcomeClass::Unprocessable => self.unprocessable_422,
            OutcomeClass::Shed => self.shed_429_503,
            OutcomeClass::OtherError => self.other_error,
            OutcomeClass::TransportError => self.transport_error,
        }
    }
}

/// One second of the run (completions in that second).
#[derive(Debug, Clone, Serialize)]
pub struct SecondSummary {
    pub second: u64,
    pub warmup: bool,
    pub total: u64,
    pub counts: ClassCounts,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CurvePoint {
    pub percentile: f64,
    pub latency_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Requests in the measured window.
    pub measured: u64,
    pub warmup: u64,
    /// Open model: due in the measured window but never sent (every connection was busy).
    pub unsent: u64,
    pub elapsed_s: f64,
    /// Measured requests per second of measured duration, errors included.
    pub throughput_per_s: f64,
    /// Measured requests that got a non-error answer (201, 200 replay, 409, 422).
    pub goodput: u64,
    /// `goodput` per second of measured duration: what `--slo-min-throughput` gates.
    pub goodput_per_s: f64,
    /// Keep-alive connections found closed by the server (idle timeout) before a request went
    /// out on them, replaced by a new one that carried the request (warm-up included).
    pub reconnects: u64,
    pub created_per_s: f64,
    /// (429/503 + other + transport errors + unsent) / (measured + unsent).
    pub error_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SloCheck {
    pub name: &'static str,
    pub threshold: f64,
    pub actual: Option<f64>,
    pub unit: &'static str,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SloReport {
    pub passed: bool,
    pub checks: Vec<SloCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: RunInfo,
    pub totals: Totals,
    pub classes: Vec<ClassSummary>,
    /// Every answered request: from the intended send time in the open model (corrected for
    /// coordinated omission), from the actual send in the closed model.
    pub answered: Option<Percentiles>,
    /// Open model: the same requests from their actual send (what an uncorrected tool shows).
    pub service_time: Option<Percentiles>,
    /// Open model: how late the generator sent requests.
    pub send_lag: Option<Percentiles>,
    /// Open model: the part of the send lag after a connection was free: the generator's own
    /// lateness (its timer, its CPU), without the wait for a connection the target kept busy.
    pub own_send_lag: Option<Percentiles>,
    /// Open model: the answered requests' latency without the generator's own lag, as a tool
    /// that stamps a request when its rate limiter wakes counts it (for comparing with oha).
    pub without_own_lag: Option<Percentiles>,
    /// What makes the figures less than they seem: the generator fell behind its schedule
    /// (its send lag is a large part of the tail), or left due requests unsent.
    pub warnings: Vec<String>,
    /// Error codes and transport failures, measured window.
    pub details: BTreeMap<String, u64>,
    pub timeline: Vec<SecondSummary>,
    pub percentile_curve: Vec<CurvePoint>,
    pub service_curve: Vec<CurvePoint>,
    pub class_curves: BTreeMap<&'static str, Vec<CurvePoint>>,
    pub audit: Option<AuditReport>,
    /// Why there is no audit (target without a journal, or --no-audit).
    pub audit_skipped: Option<String>,
    pub slo: SloReport,
    pub verdict: &'static str,
    pub exit_code: u8,
}

fn curve(histogram: &Histogram<u64>) -> Vec<CurvePoint> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let nines_max = (histogram.len() as f64).log10().clamp(1.0, CURVE_NINES_MAX);
    let mut points = Vec::new();
    let mut last_nines = -1.0;
    for value in histogram.iter_quantiles(4) {
        let quantile = value.quantile_iterated_to();
        let nines = if quantile >= 1.0 {
            nines_max
        } else {
            (-(1.0 - quantile).log10()).min(nines_max)
        };
        if nines - last_nines < 0.01 && quantile < 1.0 {
            continue;
        }
        last_nines = nines;
        points.push(CurvePoint {
            percentile: quantile * 100.0,
            latency_us: value.value_iterated_to(),
        });
        if nines >= nines_max {
            break;
        }
    }
    points
}

/// The warnings about the generator itself: its own send lag (after a connection was free)
/// that is a large part of the corrected tail (at p99 or p99.9), and requests due in the
/// measured window that were never sent.
pub fn generator_warnings(
    answered: Option<Percentiles>,
    send_lag: Option<Percentiles>,
    unsent_measured: u64,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let (Some(answered), Some(lag)) = (answered, send_lag) {
        for (name, corrected, late) in [
            ("p99", answered.p99_us, lag.p99_us),
            ("p99.9", answered.p999_us, lag.p999_us),
        ] {
            if late >= SEND_LAG_WARN_MIN_US && late as f64 >= SEND_LAG_WARN_SHARE * corrected as f64
            {
                warnings.push(format!(
                    "the generator fell behind its schedule: its own send lag {name} {} is {:.0}% of the corrected {name} {}; that part of the tail is the generator's, not the target's (too few CPU cores for generator and target, too few connections, or a busy machine)",
                    crate::duration::format_micros(late),
                    100.0 * late as f64 / corrected.max(1) as f64,
                    crate::duration::format_micros(corrected),
                ));
                break;
            }
        }
    }
    if unsent_measured > 0 {
        warnings.push(format!(
            "{unsent_measured} requests due in the measured window were never sent (every connection busy to the end): give more connections"
        ));
    }
    warnings
}

/// Builds the summary of a finished run and decides the exit code.
pub fn summarize(
    run: RunInfo,
    result: &DriveResult,
    audit: Option<AuditReport>,
    audit_skipped: Option<String>,
    slo: &SloThresholds,
) -> Summary {
    let recorder = &result.recorder;
    let measured = recorder.measured_total();
    let duration_s = run.duration_s.max(f64::EPSILON);
    let classes: Vec<ClassSummary> = OutcomeClass::ALL
        .into_iter()
        .map(|class| {
            let count = recorder.count(class);
            ClassSummary {
                class: class.key(),
                label: class.label(),
                count,
                share: if measured == 0 {
                    0.0
                } else {
                    count as f64 / measured as f64
                },
                per_second: count as f64 / duration_s,
                latency: recorder.class_histogram(class).and_then(Percentiles::of),
            }
        })
        .collect();
    let errors: u64 = OutcomeClass::ALL
        .into_iter()
        .filter(|c| c.is_error())
        .map(|c| recorder.count(c))
        .sum::<u64>()
        + result.unsent_measured;
    let offered = measured + result.unsent_measured;
    let goodput: u64 = OutcomeClass::ALL
        .into_iter()
        .filter(|c| c.is_answered() && !c.is_error())
        .map(|c| recorder.count(c))
        .sum();
    let totals = Totals {
        sent: result.sent,
        measured,
        warmup: recorder.warmup_total(),
        unsent: result.unsent_measured,
        elapsed_s: result.elapsed.as_secs_f64(),
        throughput_per_s: measured as f64 / duration_s,
        goodput,
        goodput_per_s: goodput as f64 / duration_s,
        reconnects: result.reconnects,
        created_per_s: recorder.count(OutcomeClass::Created) as f64 / duration_s,
        error_rate: if offered == 0 {
            0.0
        } else {
            errors as f64 / offered as f64
        },
    };
    let answered_histogram = recorder.answered_histogram();
    let answered = Percentiles::of(&answered_histogram);
    let warmup_seconds = run.warmup_s;
    let timeline = result
        .timeline
        .seconds()
        .iter()
        .enumerate()
        .map(|(second, bucket)| SecondSummary {
            second: second as u64,
            warmup: (second as f64) < warmup_seconds,
            total: bucket.total(),
            counts: ClassCounts::from_array(&bucket.counts),
            p50_us: bucket.latency.value_at_quantile(0.5),
            p99_us: bucket.latency.value_at_quantile(0.99),
            max_us: bucket.latency.max(),
        })
        .collect();
    let class_curves = OutcomeClass::ALL
        .into_iter()
        .filter_map(|class| {
            recorder
                .class_histogram(class)
                .map(|h| (class.key(), curve(h)))
        })
        .collect();

    let mut checks = Vec::new();
    let latency_ms = |pick: fn(&Percentiles) -> u64| answered.map(|p| pick(&p) as f64 / 1e3);
    if let Some(threshold) = slo.p50_ms {
        let actual = latency_ms(|p| p.p50_us);
        checks.push(SloCheck {
            name: "p50_latency",
            threshold,
            actual,
            unit: "ms",
            passed: actual.is_some_and(|a| a <= threshold),
        });
    }
    if let Some(threshold) = slo.p99_ms {
        let actual = latency_ms(|p| p.p99_us);
        checks.push(SloCheck {
            name: "p99_latency",
            threshold,
            actual,
            unit: "ms",
            passed: actual.is_some_and(|a| a <= threshold),
        });
    }
    if let Some(threshold) = slo.p999_ms {
        let actual = latency_ms(|p| p.p999_us);
        checks.push(SloCheck {
            name: "p99.9_latency",
            threshold,
            actual,
            unit: "ms",
            passed: actual.is_some_and(|a| a <= threshold),
        });
    }
    if let Some(threshold) = slo.error_rate {
        checks.push(SloCheck {
            name: "error_rate",
            threshold,
            actual: Some(totals.error_rate),
            unit: "fraction",
            passed: offered > 0 && totals.error_rate <= threshold,
        });
    }
    if let Some(threshold) = slo.min_throughput {
        // Errors are not throughput a buyer can use: the floor is on goodput.
        checks.push(SloCheck {
            name: "goodput",
            threshold,
            actual: Some(totals.goodput_per_s),
            unit: "req/s",
            passed: totals.goodput_per_s >= threshold,
        });
    }
    let slo_report = SloReport {
        passed: checks.iter().all(|c| c.passed),
        checks,
    };
    let (verdict, exit_code) = match (&audit, slo_report.passed) {
        (Some(audit), _) if !audit.passed => ("audit_failed", exit::AUDIT_FAILED),
        (_, false) => ("slo_failed", exit::SLO_FAILED),
        _ => ("pass", exit::OK),
    };
    Summary {
        totals,
        classes,
        answered,
        service_time: recorder.service_histogram().and_then(Percentiles::of),
        send_lag: recorder.send_lag_histogram().and_then(Percentiles::of),
        own_send_lag: recorder.own_lag_histogram().and_then(Percentiles::of),
        without_own_lag: recorder
            .without_own_lag_histogram()
            .and_then(Percentiles::of),
        warnings: generator_warnings(
            answered,
            recorder.own_lag_histogram().and_then(Percentiles::of),
            result.unsent_measured,
        ),
        details: recorder.details().clone(),
        timeline,
        percentile_curve: curve(&answered_histogram),
        service_curve: recorder.service_histogram().map(curve).unwrap_or_default(),
        class_curves,
        audit,
        audit_skipped,
        slo: slo_report,
        verdict,
        exit_code,
        run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditCheck, OrderLog};
    use crate::recorder::{Recorder, Sample, Timeline, new_histogram};
    use std::sync::Mutex;
    use std::time::Duration;

    fn percentiles(p99_us: u64, p999_us: u64) -> Percentiles {
        Percentiles {
            count: 1000,
            mean_us: 1.0,
            p50_us: 1,
            p90_us: 1,
            p99_us,
            p999_us,
            max_us: p999_us,
        }
    }

    #[test]
    fn a_send_lag_that_is_a_large_part_of_the_tail_is_warned_about() {
        // The case that went unflagged: p99 114 ms with a send lag p99 of 113 ms.
        let warned = generator_warnings(
            Some(percentiles(114_000, 120_000)),
            Some(percentiles(113_000, 118_000)),
            0,
        );
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("own send lag p99 "), "{warned:?}");
        // A generator on time: no warning, also for a sub-millisecond tail with some jitter.
        assert!(
            generator_warnings(
                Some(percentiles(50_000, 90_000)),
                Some(percentiles(1_000, 3_000)),
                0
            )
            .is_empty()
        );
        assert!(
            generator_warnings(
                Some(percentiles(900, 1_500)),
                Some(percentiles(800, 1_400)),
                0
            )
            .is_empty()
        );
        // Only the p99.9 lags.
        let warned = generator_warnings(
            Some(percentiles(3_000, 40_000)),
            Some(percentiles(500, 30_000)),
            7,
        );
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[0].contains("p99.9"), "{warned:?}");
        assert!(warned[1].starts_with("7 requests"), "{warned:?}");
    }

    fn info() -> RunInfo {
        RunInfo {
            tool: "stampede-load",
            version: "0",
            run_id: "r".into(),
            scenario: "s".into(),
            scenario_description: String::new(),
            target: "engine",
            target_address: "http://127.0.0.1:1".into(),
            model: Model::Closed,
            rate_per_s: None,
            burst: 0,
            connections: 1,
            duration_s: 10.0,
            warmup_s: 0.0,
            ramp_up_s: 0.0,
            timeout_s: 10.0,
            seed: 1,
            sku_count: 1,
            started_unix_ms: 0,
            host: "h".into(),
            target_fsync: None,
        }
    }

    /// 980 answers at 1 ms, 20 at 100 ms, and `errors` shed requests at 1 ms.
    fn result(errors: u64) -> DriveResult {
        let timeline = Mutex::new(Timeline::default());
        let mut recorder = Recorder::new();
        let mut record = |class, ms| {
            recorder.record(
                &Sample {
                    class,
                    latency: Duration::from_millis(ms),
                    service: None,
                    send_lag: None,
                    own_lag: None,
                    without_own_lag: None,
                    completed_at: Duration::ZERO,
                    measured: true,
                    detail: None,
                },
                &timeline,
            )
        };
        (0..980).for_each(|_| record(OutcomeClass::Created, 1));
        (0..20).for_each(|_| record(OutcomeClass::Created, 100));
        (0..errors).for_each(|_| record(OutcomeClass::Shed, 1));
        recorder.flush(&timeline);
        DriveResult {
            recorder,
            timeline: timeline.into_inner().unwrap(),
            log: OrderLog::default(),
            sent: 1000 + errors,
            unsent: 0,
            unsent_measured: 0,
            reconnects: 0,
            elapsed: Duration::from_secs(10),
            started_unix_ms: 0,
        }
    }

    fn audit(passed: bool) -> AuditReport {
        AuditReport {
            passed,
            checks: vec![AuditCheck {
                name: "stock_conserved",
                passed,
                detail: String::new(),
                violation_count: u64::from(!passed),
                violations: Vec::new(),
            }],
            journal_records: 0,
            orders_journaled: 0,
            orders_created_seen: 0,
            orders_answer_lost: 0,
        }
    }

    #[test]
    fn slos_hold_or_fail_on_the_measured_figures() {
        let slo = SloThresholds {
            p50_ms: Some(2.0),
            p99_ms: Some(5.0),
            error_rate: Some(0.01),
            min_throughput: Some(50.0),
            ..SloThresholds::default()
        };
        let summary = summarize(info(), &result(0), Some(audit(true)), None, &slo);
        let failed: Vec<_> = summary
            .slo
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        // p99 of 1000 answers with 20 at 100 ms is 100 ms: over 5 ms.
        assert_eq!(failed, vec!["p99_latency"]);
        assert_eq!(
            (summary.verdict, summary.exit_code),
            ("slo_failed", exit::SLO_FAILED)
        );
        assert!((summary.totals.throughput_per_s - 100.0).abs() < 1e-9);

        let loose = SloThresholds {
            p99_ms: Some(200.0),
            error_rate: Some(0.01),
            ..SloThresholds::default()
        };
        let summary = summarize(info(), &result(0), Some(audit(true)), None, &loose);
        assert_eq!(summary.exit_code, exit::OK);
        let summary = summarize(info(), &result(20), Some(audit(true)), None, &loose);
        assert!((summary.totals.error_rate - 20.0 / 1020.0).abs() < 1e-12);
        assert_eq!(summary.exit_code, exit::SLO_FAILED);
    }

    #[test]
    fn the_throughput_floor_is_on_goodput_not_on_errors() {
        let slo = SloThresholds {
            min_throughput: Some(120.0),
            ..SloThresholds::default()
        };
        // 1000 answers and 500 shed in 10 s: 150 req/s sent and answered, 100 of them useful.
        let summary = summarize(info(), &result(500), Some(audit(true)), None, &slo);
        assert!((summary.totals.throughput_per_s - 150.0).abs() < 1e-9);
        assert!((summary.totals.goodput_per_s - 100.0).abs() < 1e-9);
        assert_eq!(summary.totals.goodput, 1000);
        assert_eq!(summary.slo.checks[0].name, "goodput");
        assert_eq!(summary.exit_code, exit::SLO_FAILED);
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["totals"]["goodput"], 1000);
        assert!(json["totals"]["throughput_per_s"].as_f64().is_some());
        assert!(text::render(&summary).contains("goodput 100 req/s"));
        assert!(html::render_html(&summary).contains("goodput"));
        let slo = SloThresholds {
            min_throughput: Some(100.0),
            ..SloThresholds::default()
        };
        let summary = summarize(info(), &result(500), Some(audit(true)), None, &slo);
        assert_eq!(summary.exit_code, exit::OK);
    }

    #[test]
    fn a_failed_audit_outranks_a_failed_slo() {
        let slo = SloThresholds {
            p99_ms: Some(0.001),
            ..SloThresholds::default()
        };
        let summary = summarize(info(), &result(0), Some(audit(false)), None, &slo);
        assert_eq!(
            (summary.verdict, summary.exit_code),
            ("audit_failed", exit::AUDIT_FAILED)
        );
        let summary = summarize(
            info(),
            &result(0),
            None,
            Some("--no-audit".into()),
            &SloThresholds::default(),
        );
        assert_eq!(summary.exit_code, exit::OK);
    }

    #[test]
    fn the_text_and_html_reports_show_the_verdict() {
        let summary = summarize(
            info(),
            &result(3),
            Some(audit(false)),
            None,
            &SloThresholds::default(),
        );
        let text = text::render(&summary);
        assert!(
            text.contains("audit: FAILED") && text.contains("exit 2"),
            "{text}"
        );
        assert!(text.contains("429/503 shed"), "{text}");
        let page = html::render_html(&summary);
        assert!(page.contains("audit_failed (exit 2)"));
        assert_eq!(page.matches("<svg").count(), 3);
    }

    #[test]
    fn the_percentile_curve_rises_and_ends_at_the_max() {
        let mut histogram = new_histogram(3);
        for value in 1..=100_000u64 {
            histogram.record(value).unwrap();
        }
        let points = curve(&histogram);
        assert!(points.len() > 10 && points.len() < 400, "{}", points.len());
        assert!(
            points
                .windows(2)
                .all(|w| w[0].latency_us <= w[1].latency_us)
        );
        assert!(
            points
                .windows(2)
                .all(|w| w[0].percentile <= w[1].percentile)
        );
        let last = points.last().unwrap();
        assert!(last.percentile >= 99.99, "{last:?}");
    }
}
