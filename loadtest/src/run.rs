//! One run from start to verdict: set up the target, drive the load, audit, summarize.

use std::sync::Arc;

use anyhow::Context;

use crate::audit::{AuditReport, audit};
use crate::cli::{RunSettings, TargetSpec};
use crate::driver::{LiveView, LoadModel, drive};
use crate::progress::Progress;
use crate::report::{RunInfo, Summary, summarize};
use crate::scenario::Model;
use crate::target::{Target, http, redis};
use crate::workload::WorkloadPlan;

/// Runs `settings` to a summary. An `Err` is a setup failure (exit 3): nothing was measured.
pub async fn run(settings: RunSettings) -> anyhow::Result<Summary> {
    let skus = settings.scenario.sku_specs(&settings.run_id);

    // 1. Setup: the target's own SKUs, named for this run.
    let mut admin = None;
    let mut journal_from = 0;
    let mut target_fsync = None;
    let target = match &settings.target {
        TargetSpec::Engine { url, admin_token } => {
            let endpoint = http::Endpoint::resolve(url).await?;
            let mut client = http::AdminClient::new(endpoint.clone(), Some(admin_token))?;
            client.check_ready().await?;
            target_fsync = client.fsync_policy().await;
            journal_from = client
                .journal_head()
                .await
                .context("cannot read the journal's head")?;
            client.check_run_id_unused(&settings.run_id, &skus).await?;
            http::create_skus(&client, &skus)
                .await
                .context("creating the scenario's SKUs")?;
            admin = Some(client);
            Target::Engine(endpoint)
        }
        TargetSpec::Bare { url } => Target::Bare(http::Endpoint::resolve(url).await?),
        TargetSpec::Redis { addr } => {
            let addr = tokio::net::lookup_host(addr.as_str())
                .await
                .with_context(|| format!("cannot resolve {addr}"))?
                .next()
                .with_context(|| format!("{addr} resolves to no address"))?;
            Target::Redis(redis::setup(addr, &settings.run_id, &skus).await?)
        }
    };

    // 2. Load.
    let workload = Arc::new(
        WorkloadPlan::new(
            settings.run_id.clone(),
            skus.clone(),
            settings.scenario.traffic.clone(),
            settings.seed,
        )
        .map_err(anyhow::Error::msg)?,
    );
    let live = Arc::new(LiveView::new());
    let progress = Progress::start(settings.progress, &settings.drive, live.clone());
    let result = drive(settings.drive.clone(), workload, target.clone(), live).await;
    if let Some(progress) = progress {
        progress.finish().await;
    }
    let result = result?;

    // 3. Audit.
    let seq_needed = result
        .log
        .created
        .iter()
        .map(|c| c.seq)
        .chain(result.log.replayed.iter().map(|r| r.1))
        .max()
        .unwrap_or(0);
    let (audit_report, skipped) = if !settings.audit {
        (None, Some("--no-audit".to_owned()))
    } else {
        match (&target, admin.as_mut()) {
            (Target::Engine(_), Some(admin)) => {
                let gathered = http::gather_audit_inputs(
                    admin,
                    &settings.run_id,
                    &skus,
                    journal_from,
                    seq_needed,
                    settings.audit_wait,
                )
                .await;
                (
                    Some(audit_or_unreadable(&settings, &skus, gathered, &result.log)),
                    None,
                )
            }
            (Target::Redis(redis_target), _) => {
                let gathered =
                    redis::gather_audit_inputs(redis_target, &settings.run_id, &skus).await;
                (
                    Some(audit_or_unreadable(&settings, &skus, gathered, &result.log)),
                    None,
                )
            }
            _ => (
                None,
                Some("the bare target keeps no stock and no journal".to_owned()),
            ),
        }
    };

    // 4. Summary.
    let drive = &settings.drive;
    let info = RunInfo {
        tool: "stampede-load",
        version: env!("CARGO_PKG_VERSION"),
        run_id: settings.run_id.clone(),
        scenario: settings.scenario.name.clone(),
        scenario_description: settings.scenario.description.clone(),
        target: target.kind(),
        target_address: target.address(),
        model: match drive.model {
            LoadModel::Open(_) => Model::Open,
            LoadModel::Closed => Model::Closed,
        },
        rate_per_s: match drive.model {
            LoadModel::Open(schedule) => Some(schedule.rate_per_s()),
            LoadModel::Closed => None,
        },
        burst: settings.burst,
        connections: drive.connections,
        duration_s: drive.duration.as_secs_f64(),
        warmup_s: drive.warmup.as_secs_f64(),
        ramp_up_s: drive.ramp_up.as_secs_f64(),
        timeout_s: drive.timeout.as_secs_f64(),
        seed: settings.seed,
        sku_count: skus.len(),
        started_unix_ms: result.started_unix_ms,
        host: host_name(),
        target_fsync,
    };
    Ok(summarize(
        info,
        &result,
        audit_report,
        skipped,
        &settings.slo,
    ))
}

/// This machine's name, for the report (empty when the kernel does not say).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

fn audit_or_unreadable(
    settings: &RunSettings,
    skus: &[crate::scenario::SkuSpec],
    gathered: anyhow::Result<(
        crate::audit::JournalScan,
        Vec<Option<crate::audit::SkuState>>,
    )>,
    log: &crate::audit::OrderLog,
) -> AuditReport {
    match gathered {
        Ok((scan, states)) => audit(&settings.run_id, skus, &states, &scan, log),
        Err(error) => AuditReport::unreadable(format!("{error:#}")),
    }
}
