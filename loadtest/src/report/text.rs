//! The summary as a plain-text table for the terminal (stdout).

use std::fmt::Write as _;

use super::{Percentiles, Summary};
use crate::duration::format_micros;
use crate::scenario::Model;

fn row(
    out: &mut String,
    label: &str,
    count: u64,
    share: Option<f64>,
    rate: Option<f64>,
    p: Option<&Percentiles>,
) {
    let share = share
        .map(|s| format!("{:.1}%", s * 100.0))
        .unwrap_or_default();
    let rate = rate.map(|r| format!("{r:.0}")).unwrap_or_default();
    let cell = |pick: fn(&Percentiles) -> u64| {
        p.map(|p| format_micros(pick(p)))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        out,
        "  {label:<22}{count:>10}{share:>8}{rate:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        cell(|p| p.p50_us),
        cell(|p| p.p90_us),
        cell(|p| p.p99_us),
        cell(|p| p.p999_us),
        cell(|p| p.max_us),
    );
}

pub fn render(summary: &Summary) -> String {
    let run = &summary.run;
    let totals = &summary.totals;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stampede-load {}: scenario {} on {} {} (run {})",
        run.version, run.scenario, run.target, run.target_address, run.run_id
    );
    let model = match (run.model, run.rate_per_s) {
        (Model::Open, Some(rate)) => format!(
            "open model, {rate:.0} req/s{}",
            if run.burst > 0 {
                format!(" after a burst of {}", run.burst)
            } else {
                String::new()
            }
        ),
        _ => "closed model".into(),
    };
    let _ = writeln!(
        out,
        "{model}, {} connections, {}s measured after {}s warm-up, ramp-up {}s, {} SKUs",
        run.connections, run.duration_s, run.warmup_s, run.ramp_up_s, run.sku_count
    );
    let _ = writeln!(
        out,
        "\nrequests: {} measured (+{} warm-up), {:.0} req/s, goodput {:.0} req/s, {:.0} created/s, error rate {:.3}%{}{}",
        totals.measured,
        totals.warmup,
        totals.throughput_per_s,
        totals.goodput_per_s,
        totals.created_per_s,
        totals.error_rate * 100.0,
        if totals.reconnects > 0 {
            format!(
                ", {} idle connections closed by the server and reopened",
                totals.reconnects
            )
        } else {
            String::new()
        },
        if totals.unsent > 0 {
            format!(
                ", {} due but never sent (all connections busy)",
                totals.unsent
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "\n  {:<22}{:>10}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "outcome", "count", "share", "req/s", "p50", "p90", "p99", "p99.9", "max"
    );
    for class in summary.classes.iter().filter(|c| c.count > 0) {
        row(
            &mut out,
            class.label,
            class.count,
            Some(class.share),
            Some(class.per_second),
            class.latency.as_ref(),
        );
    }
    if let Some(answered) = &summary.answered {
        let label = if run.model == Model::Open {
            "all answered (corr.)"
        } else {
            "all answered"
        };
        row(&mut out, label, answered.count, None, None, Some(answered));
    }
    if let Some(service) = &summary.service_time {
        row(
            &mut out,
            "service time (uncorr.)",
            service.count,
            None,
            None,
            Some(service),
        );
    }
    if let Some(lag) = &summary.send_lag {
        row(
            &mut out,
            "generator send lag",
            lag.count,
            None,
            None,
            Some(lag),
        );
    }
    if let Some(latency) = &summary.without_own_lag {
        row(
            &mut out,
            "corr. minus own lag",
            latency.count,
            None,
            None,
            Some(latency),
        );
    }
    if let Some(lag) = &summary.own_send_lag {
        row(
            &mut out,
            "  its own (conn. free)",
            lag.count,
            None,
            None,
            Some(lag),
        );
    }
    if !summary.details.is_empty() {
        let details: Vec<String> = summary
            .details
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "\n  codes: {}", details.join(", "));
    }
    match (&summary.audit, &summary.audit_skipped) {
        (Some(audit), _) => {
            let _ = writeln!(
                out,
                "\naudit: {} ({} journal records read; {} orders answered 201, {} journaled, {} answers lost in transport)",
                if audit.passed { "PASSED" } else { "FAILED" },
                audit.journal_records,
                audit.orders_created_seen,
                audit.orders_journaled,
                audit.orders_answer_lost
            );
            for check in &audit.checks {
                let _ = writeln!(
                    out,
                    "  {} {:<28} {}",
                    if check.passed { "ok  " } else { "FAIL" },
                    check.name,
                    check.detail
                );
                for violation in &check.violations {
                    let _ = writeln!(out, "         - {violation}");
                }
                if check.violation_count > check.violations.len() as u64 {
                    let _ = writeln!(
                        out,
                        "         ... {} violations in all",
                        check.violation_count
                    );
                }
            }
        }
        (None, Some(reason)) => {
            let _ = writeln!(out, "\naudit: skipped ({reason})");
        }
        (None, None) => {}
    }
    if !summary.slo.checks.is_empty() {
        let _ = writeln!(out, "\nSLO:");
        for check in &summary.slo.checks {
            let actual = check
                .actual
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "no data".into());
            let relation = if check.name == "goodput" { ">=" } else { "<=" };
            let _ = writeln!(
                out,
                "  {} {:<14} {actual} {relation} {} {}",
                if check.passed { "ok  " } else { "FAIL" },
                check.name,
                check.threshold,
                check.unit
            );
        }
    }
    for warning in &summary.warnings {
        let _ = writeln!(out, "\nWARNING: {warning}");
    }
    let _ = writeln!(
        out,
        "\nresult: {} (exit {})",
        summary.verdict, summary.exit_code
    );
    out
}
