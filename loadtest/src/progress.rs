//! The live progress line on stderr: phase, the last complete second's throughput and p99,
//! errors so far. Drawn by indicatif; hidden when stderr is not a terminal or with --quiet.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::driver::{DrivePlan, LiveView};
use crate::duration::format_micros;

const REFRESH: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts the line when `wanted` and stderr is a terminal.
    pub fn start(wanted: bool, plan: &DrivePlan, live: Arc<LiveView>) -> Option<Self> {
        if !wanted || !std::io::stderr().is_terminal() {
            return None;
        }
        let run_ms = plan.run_length().as_millis() as u64;
        let bar = ProgressBar::with_draw_target(Some(run_ms), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {bar:24} {msg}")
                .expect("template is valid")
                .progress_chars("=> "),
        );
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let plan = plan.clone();
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = ticker.tick() => shown.tick(),
                    _ = &mut stopped => break,
                }
                let started = *live.started.lock().unwrap_or_else(|p| p.into_inner());
                let Some(started) = started else {
                    shown.set_message("connecting...");
                    continue;
                };
                let elapsed = Instant::now().saturating_duration_since(started);
                shown.set_position((elapsed.as_millis() as u64).min(run_ms));
                shown.set_message(line(&plan, &live, elapsed));
            }
        });
        Some(Self { bar, stop, task })
    }

    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.bar.finish_and_clear();
    }
}

fn line(plan: &DrivePlan, live: &LiveView, elapsed: Duration) -> String {
    let phase = if elapsed >= plan.run_length() {
        "finishing"
    } else if elapsed < plan.ramp_up {
        "ramp-up"
    } else if elapsed < plan.warmup {
        "warm-up"
    } else {
        "measuring"
    };
    let sent = live.sent.load(Ordering::Relaxed);
    let completed = live.completed.load(Ordering::Relaxed);
    let errors = live.errors.load(Ordering::Relaxed);
    // Throughput and p99 of the last second every task has handed over: two back from now.
    let recent = {
        let timeline = live.timeline.lock().unwrap_or_else(|p| p.into_inner());
        match (elapsed.as_secs() as usize)
            .checked_sub(2)
            .and_then(|s| timeline.seconds().get(s))
        {
            Some(bucket) => format!(
                "{} req/s, p99 {}",
                bucket.total(),
                format_micros(bucket.latency.value_at_quantile(0.99))
            ),
            None => "-".into(),
        }
    };
    format!(
        "{phase} {:>5.1}s | {recent} | {completed} done, {errors} errors, {} in flight",
        elapsed.as_secs_f64(),
        sent.saturating_sub(completed)
    )
}
