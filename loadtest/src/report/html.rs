//! The self-contained HTML report: tables and three inline SVG charts (throughput over time,
//! latency over time, latency by percentile), with a small inline stylesheet. Nothing is
//! loaded from anywhere; the file can be mailed or opened offline.

use std::fmt::Write as _;

use super::svg::{Chart, Scale, Series, escape, render};
use super::{CurvePoint, Percentiles, Summary};
use crate::duration::format_micros;
use crate::outcome::OutcomeClass;
use crate::scenario::Model;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 960px; color: #222; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
.pass { color: #2e7d32; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
.verdict { font-size: 18px; padding: 8px 12px; border-radius: 4px; display: inline-block; }
.verdict.pass { background: #e8f5e9; } .verdict.fail { background: #ffebee; }
svg { background: #fff; border: 1px solid #e5e5e5; margin: 8px 0; }
svg .title { font: 600 14px system-ui, sans-serif; } svg .tick, svg .legend { font: 11px system-ui, sans-serif; fill: #444; }
svg .axis { font: 12px system-ui, sans-serif; fill: #333; } svg .grid { stroke: #eee; } svg .frame { fill: none; stroke: #999; }
svg .shade { fill: #f0f0f0; } svg .shade-label { font: 11px system-ui, sans-serif; fill: #888; } svg .empty { font: 14px sans-serif; fill: #999; }
ul.violations { margin: 2px 0 8px; color: #c62828; } .note { color: #555; font-size: 13px; }
"#;

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0} ms")
    } else if value >= 1.0 {
        format!("{value:.1} ms")
    } else if value >= 0.01 {
        format!("{value:.2} ms")
    } else {
        format!("{:.0} µs", value * 1e3)
    }
}

fn count(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value}")
    }
}

fn percentile_row(out: &mut String, label: &str, count: u64, extra: &str, p: Option<&Percentiles>) {
    let cell = |pick: fn(&Percentiles) -> u64| {
        p.map(|p| format_micros(pick(p)))
            .unwrap_or_else(|| "-".into())
    };
    let _ = write!(
        out,
        "<tr><td>{}</td><td>{count}</td>{extra}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(label),
        cell(|p| p.p50_us),
        cell(|p| p.p90_us),
        cell(|p| p.p99_us),
        cell(|p| p.p999_us),
        cell(|p| p.max_us),
    );
}

/// The x position of a percentile: its number of nines (90% → 1, 99.9% → 3). The maximum
/// (100%) is drawn at the resolution the sample count allows, log10(count).
fn curve_points(curve: &[CurvePoint], count: u64) -> Vec<(f64, f64)> {
    let nines_max = (count.max(10) as f64).log10().min(5.0);
    curve
        .iter()
        .map(|p| {
            let remaining = 1.0 - p.percentile / 100.0;
            let nines = if remaining <= 0.0 {
                nines_max
            } else {
                -remaining.log10()
            };
            (nines.min(nines_max), p.latency_us as f64 / 1e3)
        })
        .collect()
}

pub fn render_html(summary: &Summary) -> String {
    let run = &summary.run;
    let totals = &summary.totals;
    let warmup = (run.warmup_s > 0.0).then(|| (0.0, run.warmup_s, "warm-up (excluded)".to_owned()));
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>stampede-load: {}</title><style>{STYLE}</style></head><body>",
        escape(&run.scenario)
    );
    let _ = write!(
        out,
        "<h1>stampede-load: {}</h1><p class=\"sub\">{}</p>",
        escape(&run.scenario),
        escape(&run.scenario_description)
    );
    let passed = summary.exit_code == 0;
    let _ = write!(
        out,
        "<p class=\"verdict {}\">{} (exit {})</p>",
        if passed { "pass" } else { "fail" },
        escape(summary.verdict),
        summary.exit_code
    );
    for warning in &summary.warnings {
        let _ = write!(
            out,
            "<p class=\"verdict fail\">warning: {}</p>",
            escape(warning)
        );
    }

    // The run.
    let model = match (run.model, run.rate_per_s) {
        (Model::Open, Some(rate)) => format!(
            "open: {rate:.0} req/s target{}",
            if run.burst > 0 {
                format!(", burst of {} at t0", run.burst)
            } else {
                String::new()
            }
        ),
        _ => "closed: each connection sends as soon as it has its answer".into(),
    };
    let _ = write!(out, "<h2>Run</h2><table>");
    for (key, value) in [
        (
            "started",
            crate::duration::format_unix_ms(run.started_unix_ms),
        ),
        ("generator host", run.host.clone()),
        ("target", format!("{} {}", run.target, run.target_address)),
        (
            "target fsync",
            run.target_fsync
                .clone()
                .unwrap_or_else(|| "not reported by the target".into()),
        ),
        ("run id", run.run_id.clone()),
        ("load model", model),
        ("connections", run.connections.to_string()),
        (
            "measured / warm-up / ramp-up",
            format!(
                "{} s / {} s / {} s",
                run.duration_s, run.warmup_s, run.ramp_up_s
            ),
        ),
        ("SKUs", run.sku_count.to_string()),
        ("seed", run.seed.to_string()),
        (
            "requests measured",
            format!("{} (+{} in warm-up)", totals.measured, totals.warmup),
        ),
        (
            "throughput",
            format!(
                "{:.0} req/s ({:.0} created/s)",
                totals.throughput_per_s, totals.created_per_s
            ),
        ),
        (
            "goodput",
            format!(
                "{:.0} req/s (201, 200 replay, 409, 422: answers that are not errors)",
                totals.goodput_per_s
            ),
        ),
        (
            "error rate",
            format!(
                "{:.3}% (429/503, other, transport, unsent)",
                totals.error_rate * 100.0
            ),
        ),
        ("due but never sent", totals.unsent.to_string()),
        ("idle connections reopened", totals.reconnects.to_string()),
    ] {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(key),
            escape(&value)
        );
    }
    out.push_str("</table>");

    // Latency per class.
    let _ = write!(
        out,
        "<h2>Latency by outcome</h2><table><tr><th>outcome</th><th>count</th><th>share</th><th>req/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>"
    );
    for class in summary.classes.iter().filter(|c| c.count > 0) {
        let extra = format!(
            "<td>{:.1}%</td><td>{:.0}</td>",
            class.share * 100.0,
            class.per_second
        );
        percentile_row(
            &mut out,
            class.label,
            class.count,
            &extra,
            class.latency.as_ref(),
        );
    }
    let blank = "<td></td><td></td>";
    if let Some(answered) = &summary.answered {
        let label = if run.model == Model::Open {
            "all answered (from intended send)"
        } else {
            "all answered"
        };
        percentile_row(&mut out, label, answered.count, blank, Some(answered));
    }
    if let Some(service) = &summary.service_time {
        percentile_row(
            &mut out,
            "service time (from actual send)",
            service.count,
            blank,
            Some(service),
        );
    }
    if let Some(lag) = &summary.send_lag {
        percentile_row(&mut out, "generator send lag", lag.count, blank, Some(lag));
    }
    if let Some(latency) = &summary.without_own_lag {
        percentile_row(
            &mut out,
            "corrected without the generator's own lag (as oha -q counts)",
            latency.count,
            blank,
            Some(latency),
        );
    }
    if let Some(lag) = &summary.own_send_lag {
        percentile_row(
            &mut out,
            "generator's own send lag (after a connection was free)",
            lag.count,
            blank,
            Some(lag),
        );
    }
    out.push_str("</table>");
    if run.model == Model::Open {
        out.push_str("<p class=\"note\">Open model: latency is measured from each request's intended send time on the fixed schedule, so time a request spent waiting for a busy connection counts (the correction for coordinated omission). The service time row is the same requests measured from their actual send, as a tool without a schedule reports them.</p>");
    }
    if !summary.details.is_empty() {
        out.push_str("<table><tr><th>code</th><th>count</th></tr>");
        for (code, n) in &summary.details {
            let _ = write!(out, "<tr><td>{}</td><td>{n}</td></tr>", escape(code));
        }
        out.push_str("</table>");
    }

    // Charts.
    out.push_str("<h2>Charts</h2>");
    // Answers that complete after the measured window (the requests in flight when sending
    // stopped) fall in a last, mostly empty second; drawn, it would look like a collapse.
    let end_s = run.warmup_s + run.duration_s;
    let seconds: Vec<_> = summary
        .timeline
        .iter()
        .filter(|s| (s.second as f64) < end_s)
        .cloned()
        .collect();
    let mut throughput_series: Vec<Series> = OutcomeClass::ALL
        .into_iter()
        .filter(|class| seconds.iter().any(|s| s.counts.get(*class) > 0))
        .map(|class| Series {
            name: class.label().into(),
            color: class.color(),
            points: seconds
                .iter()
                .map(|s| (s.second as f64 + 0.5, s.counts.get(class) as f64))
                .collect(),
            dashed: false,
        })
        .collect();
    throughput_series.push(Series {
        name: "all".into(),
        color: "#000000",
        points: seconds
            .iter()
            .map(|s| (s.second as f64 + 0.5, s.total as f64))
            .collect(),
        dashed: true,
    });
    out.push_str(&render(&Chart {
        title: "Throughput over time (answers completed per second)".into(),
        x_label: "seconds since start".into(),
        y_label: "requests / s".into(),
        series: throughput_series,
        y_scale: Scale::Linear,
        x_ticks: None,
        y_format: count,
        shade: warmup.clone(),
    }));
    let answered_seconds: Vec<_> = seconds
        .iter()
        .filter(|s| s.total > s.counts.transport_error)
        .collect();
    let latency_line =
        |name: &str, color: &'static str, pick: fn(&super::SecondSummary) -> u64| Series {
            name: name.into(),
            color,
            points: answered_seconds
                .iter()
                .map(|s| (s.second as f64 + 0.5, pick(s) as f64 / 1e3))
                .collect(),
            dashed: false,
        };
    out.push_str(&render(&Chart {
        title: "Latency over time (answered requests, by second of completion)".into(),
        x_label: "seconds since start".into(),
        y_label: "latency (log scale)".into(),
        series: vec![
            latency_line("p50", "#1565c0", |s| s.p50_us),
            latency_line("p99", "#ef6c00", |s| s.p99_us),
            latency_line("max", "#c62828", |s| s.max_us),
        ],
        y_scale: Scale::Log,
        x_ticks: None,
        y_format: ms,
        shade: warmup,
    }));
    let mut curves = vec![Series {
        name: if run.model == Model::Open {
            "all answered (corrected)".into()
        } else {
            "all answered".into()
        },
        color: "#000000",
        points: curve_points(
            &summary.percentile_curve,
            summary.answered.map_or(0, |p| p.count),
        ),
        dashed: false,
    }];
    if !summary.service_curve.is_empty() {
        curves.push(Series {
            name: "service time (uncorrected)".into(),
            color: "#757575",
            points: curve_points(
                &summary.service_curve,
                summary.service_time.map_or(0, |p| p.count),
            ),
            dashed: true,
        });
    }
    for (class, class_summary) in OutcomeClass::ALL.into_iter().zip(&summary.classes) {
        if let Some(curve) = summary.class_curves.get(class.key())
            && class.is_answered()
            && !curve.is_empty()
        {
            curves.push(Series {
                name: class.label().into(),
                color: class.color(),
                points: curve_points(curve, class_summary.count),
                dashed: false,
            });
        }
    }
    let nines_max = curves
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil() as usize;
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    out.push_str(&render(&Chart {
        title: "Latency by percentile".into(),
        x_label: "percentile".into(),
        y_label: "latency (log scale)".into(),
        series: curves,
        y_scale: Scale::Log,
        x_ticks: Some(
            (0..=nines_max.min(6))
                .map(|n| (n as f64, labels[n].to_owned()))
                .collect(),
        ),
        y_format: ms,
        shade: None,
    }));

    // Audit and SLO.
    out.push_str("<h2>Audit</h2>");
    match (&summary.audit, &summary.audit_skipped) {
        (Some(audit), _) => {
            let _ = write!(
                out,
                "<p class=\"{}\">{}</p><p>{} journal records read; {} orders answered 201, {} journaled, {} answers lost in transport.</p><table><tr><th>check</th><th>result</th><th>detail</th></tr>",
                if audit.passed { "pass" } else { "fail" },
                if audit.passed { "PASSED" } else { "FAILED" },
                audit.journal_records,
                audit.orders_created_seen,
                audit.orders_journaled,
                audit.orders_answer_lost
            );
            for check in &audit.checks {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td class=\"{}\">{}</td><td style=\"text-align:left\">{}",
                    check.name,
                    if check.passed { "pass" } else { "fail" },
                    if check.passed {
                        "ok".to_owned()
                    } else {
                        format!("{} violations", check.violation_count)
                    },
                    escape(&check.detail)
                );
                if !check.violations.is_empty() {
                    out.push_str("<ul class=\"violations\">");
                    for violation in &check.violations {
                        let _ = write!(out, "<li>{}</li>", escape(violation));
                    }
                    out.push_str("</ul>");
                }
                out.push_str("</td></tr>");
            }
            out.push_str("</table>");
        }
        (None, Some(reason)) => {
            let _ = write!(out, "<p>Skipped: {}</p>", escape(reason));
        }
        (None, None) => {}
    }
    out.push_str("<h2>SLO</h2>");
    if summary.slo.checks.is_empty() {
        out.push_str("<p>No SLO thresholds were given (--slo-p99-ms, --slo-error-rate, ...).</p>");
    } else {
        out.push_str(
            "<table><tr><th>objective</th><th>threshold</th><th>actual</th><th>result</th></tr>",
        );
        for check in &summary.slo.checks {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                check.name,
                check.threshold,
                check.unit,
                check
                    .actual
                    .map(|a| format!("{a:.4}"))
                    .unwrap_or_else(|| "no data".into()),
                if check.passed { "pass" } else { "fail" },
                if check.passed { "ok" } else { "FAIL" }
            );
        }
        out.push_str("</table>");
    }

    // Per second.
    out.push_str("<h2>Per second</h2><details><summary>table</summary><table><tr><th>second</th><th>total</th><th>201</th><th>200</th><th>409</th><th>422</th><th>429/503</th><th>other</th><th>transport</th><th>p50</th><th>p99</th><th>max</th></tr>");
    for s in seconds {
        let c = &s.counts;
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.second,
            if s.warmup { " (warm-up)" } else { "" },
            s.total,
            c.created_201,
            c.replayed_200,
            c.refused_409,
            c.unprocessable_422,
            c.shed_429_503,
            c.other_error,
            c.transport_error,
            format_micros(s.p50_us),
            format_micros(s.p99_us),
            format_micros(s.max_us)
        );
    }
    out.push_str("</table></details>");
    let _ = writeln!(
        out,
        "<p class=\"note\">stampede-load {} · started {} (unix ms {}) on {} · {:.1} s elapsed</p></body></html>",
        run.version,
        crate::duration::format_unix_ms(run.started_unix_ms),
        run.started_unix_ms,
        escape(&run.host),
        totals.elapsed_s
    );
    out
}
