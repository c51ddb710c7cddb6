//! The load itself: connection tasks, the open and closed models, ramp-up, warm-up, the end.
//!
//! Timeline of a run (offsets from its start instant, taken once every connection is open):
//!
//! ```text
//!   0 ─── ramp_up ──▶             rate (open) or busy connections (closed) grow linearly
//!   0 ─── warmup ───▶ measured ─────────────▶ warmup + duration: no new request is sent
//!                                              in-flight requests finish (or time out)
//! ```
//!
//! Open model: a free connection takes the next request index from a shared counter, sleeps
//! until that index's intended time ([`crate::schedule`]), sends, and records latency from the
//! intended time. Requests due before the end that no connection could send by 100 ms after
//! it are counted as `unsent`; they count as errors, since that load was offered and not served.
//!
//! The timer fires on 1 ms ticks, so a connection wakes up to a tick early and sends at
//! once; a request sent early is measured from its actual send, one sent late from its
//! intended time. The send lag (how late sends were) is reported so the generator's own
//! lateness is visible; the part of it after a connection was free (or after the intended
//! time, when one was free before it) is the generator's own lag: its timer, its CPU. The
//! rest is a wait for a free connection, which is the target's doing when every connection
//! is busy with it. (A generator too starved to read its answers also delays the moment a
//! connection is free, so the split can only err towards blaming the target.)
//!
//! Closed model: each connection sends its next request as soon as the previous answer is
//! complete; latency is from the actual send.
//!
//! A request is in the measured window when its intended (open) or actual (closed) send time
//! is at or after the warm-up. Every answer, warm-up included, goes to the audit's order log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::audit::{Created, OrderLog};
use crate::outcome::OutcomeClass;
use crate::recorder::{Recorder, RecorderShards, Sample, Timeline};
use crate::schedule::{OpenSchedule, closed_start_offset};
use crate::target::{Answered, Connection, RequestContext, SendError, Target};
use crate::workload::{Workload, WorkloadPlan};

/// Pause after a failed connect in the closed model, so a dead target is not spun on.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Open model: a request due before the end is still sent this long after it, so that timer
/// jitter on the last request is not counted as load the target could not take.
const END_GRACE: Duration = Duration::from_millis(100);
/// Resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);
/// Connections opened at once before the start.
const CONNECT_PARALLELISM: usize = 64;
/// Recorders the connection tasks share (see [`RecorderShards`]): well above the runtime
/// threads of any machine this runs on, so a task rarely waits for a recorder's lock.
const RECORDER_SHARDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadModel {
    Open(OpenSchedule),
    Closed,
}

#[derive(Debug, Clone)]
pub struct DrivePlan {
    pub model: LoadModel,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub ramp_up: Duration,
    /// Longest wait for one answer; past it the request is a transport error ("timeout").
    pub timeout: Duration,
}

impl DrivePlan {
    /// Warm-up plus measured duration: when sending stops.
    pub fn run_length(&self) -> Duration {
        self.warmup + self.duration
    }
}

/// What the shared state of a run exposes to the progress line.
#[derive(Debug)]
pub struct LiveView {
    pub timeline: Mutex<Timeline>,
    pub started: Mutex<Option<Instant>>,
    /// Requests sent and answered (or failed) so far; their difference is in flight.
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    /// Answers of an error class so far (429/503, other, transport).
    pub errors: AtomicU64,
}

impl LiveView {
    pub fn new() -> Self {
        Self {
            timeline: Mutex::new(Timeline::default()),
            started: Mutex::new(None),
            sent: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

impl Default for LiveView {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
pub struct DriveResult {
    pub recorder: Recorder,
    pub timeline: Timeline,
    pub log: OrderLog,
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Open model: requests due before the end that were never sent (all connections busy).
    pub unsent: u64,
    /// Open model: of `unsent`, those due inside the measured window.
    pub unsent_measured: u64,
    /// Keep-alive connections found closed by the server before a request went out on them
    /// (idle timeout), replaced by a new connection that carried the request.
    pub reconnects: u64,
    /// From the start instant to the last answer.
    pub elapsed: Duration,
    pub started_unix_ms: u64,
}

struct Shared {
    plan: DrivePlan,
    workload: Arc<WorkloadPlan>,
    target: Target,
    start: Instant,
    next_index: AtomicU64,
    live: Arc<LiveView>,
    recorders: RecorderShards,
}

struct TaskResult {
    log: OrderLog,
    sent: u64,
    reconnects: u64,
}

/// Opens every connection, runs the plan, and returns the merged results.
pub async fn drive(
    plan: DrivePlan,
    workload: Arc<WorkloadPlan>,
    target: Target,
    live: Arc<LiveView>,
) -> anyhow::Result<DriveResult> {
    let connections = open_connections(&target, plan.connections).await?;
    // A short lead so the first requests are not late by the time it takes to spawn tasks.
    let start = Instant::now() + Duration::from_millis(20);
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64 + 20)
        .unwrap_or(0);
    *live.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(start);
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        workload,
        target,
        start,
        next_index: AtomicU64::new(0),
        live: live.clone(),
        recorders: RecorderShards::new(RECORDER_SHARDS.min(plan.connections)),
    });
    let mut tasks = JoinSet::new();
    for (index, connection) in connections.into_iter().enumerate() {
        let shared = shared.clone();
        tasks.spawn(connection_task(index, Some(connection), shared));
    }
    let mut log = OrderLog::default();
    let mut sent = 0;
    let mut reconnects = 0;
    while let Some(done) = tasks.join_next().await {
        let result = done.context("a connection task panicked")?;
        log.merge(result.log);
        sent += result.sent;
        reconnects += result.reconnects;
    }
    let elapsed = start.elapsed();
    let shared = Arc::into_inner(shared).context("a connection task outlived the run")?;
    let recorder: Recorder = shared.recorders.finish(&live.timeline);
    let (unsent, unsent_measured) = match plan.model {
        LoadModel::Open(schedule) => {
            let due = schedule.due_before(plan.run_length());
            let due_in_warmup = schedule.due_before(plan.warmup);
            let unsent = due.saturating_sub(sent);
            (unsent, unsent.min(due - due_in_warmup))
        }
        LoadModel::Closed => (0, 0),
    };
    let timeline = std::mem::take(&mut *live.timeline.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(DriveResult {
        recorder,
        timeline,
        log,
        sent,
        unsent,
        unsent_measured,
        reconnects,
        elapsed,
        started_unix_ms,
    })
}

async fn open_connections(target: &Target, count: usize) -> anyhow::Result<Vec<Connection>> {
    let mut connections = Vec::with_capacity(count);
    while connections.len() < count {
        let batch = (count - connections.len()).min(CONNECT_PARALLELISM);
        let mut opening = JoinSet::new();
        for _ in 0..batch {
            let target = target.clone();
            opening.spawn(async move { target.connect().await });
        }
        while let Some(opened) = opening.join_next().await {
            let connection = opened
                .context("connect task panicked")?
                .with_context(|| format!("cannot connect to {}", target.address()))?;
            connections.push(connection);
        }
    }
    Ok(connections)
}

async fn connection_task(
    index: usize,
    mut connection: Option<Connection>,
    shared: Arc<Shared>,
) -> TaskResult {
    let workload_plan = shared.workload.clone();
    let task_id = u32::try_from(index).expect("connections are bounded");
    let mut workload = Workload::new(&workload_plan, task_id);
    let mut context = RequestContext {
        run_id: &workload_plan.run_id,
        skus: &workload_plan.skus,
        target: &shared.target,
        scratch: String::with_capacity(256),
    };
    let mut result = TaskResult {
        log: OrderLog::default(),
        sent: 0,
        reconnects: 0,
    };
    let plan = &shared.plan;
    let end = shared.start + plan.run_length();
    let measured_from = shared.start + plan.warmup;
    match plan.model {
        LoadModel::Open(schedule) => loop {
            let request_index = shared.next_index.fetch_add(1, Ordering::Relaxed);
            // A connection takes an index when it is free: taken after its intended time,
            // the request waited for a connection (every one busy with the target).
            let taken_at = Instant::now();
            let intended_offset = schedule.intended_offset(request_index);
            if intended_offset >= plan.run_length() {
                break;
            }
            let intended = shared.start + intended_offset;
            // tokio's timer fires on 1 ms ticks at or after the deadline; aiming a tick early
            // keeps the send within about 1 ms before its time instead of 1 ms after it.
            let wake = intended.checked_sub(TIMER_TICK).unwrap_or(intended);
            if wake > Instant::now() {
                tokio::time::sleep_until(wake.into()).await;
            }
            let sent_at = Instant::now();
            if sent_at >= end + END_GRACE {
                // Due before the end, but every connection was busy until well after it.
                break;
            }
            let (answered, done) = exchange(
                &mut connection,
                &shared,
                &mut workload,
                &mut context,
                &mut result,
            )
            .await;
            shared.recorders.record(
                index,
                &Sample {
                    class: answered.class,
                    // From the intended time, or the actual send when that was early.
                    latency: done - intended.min(sent_at),
                    service: Some(done - sent_at),
                    send_lag: Some(sent_at.saturating_duration_since(intended)),
                    own_lag: Some(sent_at.saturating_duration_since(intended.max(taken_at))),
                    // A connection free in time: from the send. One that was busy when the
                    // request was due: from the intended time.
                    without_own_lag: Some(if taken_at > intended {
                        done - intended
                    } else {
                        done - sent_at
                    }),
                    completed_at: done - shared.start,
                    measured: intended >= measured_from,
                    detail: answered.detail,
                },
                &shared.live.timeline,
            );
        },
        LoadModel::Closed => {
            let first = shared.start + closed_start_offset(index, plan.connections, plan.ramp_up);
            tokio::time::sleep_until(first.into()).await;
            loop {
                let sent_at = Instant::now();
                if sent_at >= end {
                    break;
                }
                let (answered, done) = exchange(
                    &mut connection,
                    &shared,
                    &mut workload,
                    &mut context,
                    &mut result,
                )
                .await;
                shared.recorders.record(
                    index,
                    &Sample {
                        class: answered.class,
                        latency: done - sent_at,
                        service: None,
                        send_lag: None,
                        own_lag: None,
                        without_own_lag: None,
                        completed_at: done - shared.start,
                        measured: sent_at >= measured_from,
                        detail: answered.detail,
                    },
                    &shared.live.timeline,
                );
                if answered.detail == Some("connect") {
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                }
            }
        }
    }
    result
}

/// One request of either model: the workload's next order, sent and answered, counted, fed
/// back to the workload and noted for the audit. Returns the answer and when it arrived.
async fn exchange(
    connection: &mut Option<Connection>,
    shared: &Shared,
    workload: &mut Workload<'_>,
    context: &mut RequestContext<'_>,
    result: &mut TaskResult,
) -> (Answered, Instant) {
    let request = workload.next_request();
    let answered = send(
        connection,
        shared,
        &request,
        context,
        &mut result.reconnects,
    )
    .await;
    let done = Instant::now();
    result.sent += 1;
    workload.answered(&request, answered.class);
    note_for_audit(&mut result.log, &request, &answered);
    (answered, done)
}

/// Sends one request on the task's connection, reconnecting first if it was lost.
///
/// A keep-alive connection the server closed while it sat idle (the engine closes one after
/// 10 s) is only found out when the next request is sent. When no byte of the request had
/// left, it goes out again on a new connection (counted in `reconnects`); a request that had
/// started to go out stays a transport error, since it may have been processed.
async fn send(
    connection: &mut Option<Connection>,
    shared: &Shared,
    request: &crate::workload::OrderRequest,
    context: &mut RequestContext<'_>,
    reconnects: &mut u64,
) -> Answered {
    shared.live.sent.fetch_add(1, Ordering::Relaxed);
    let attempt = tokio::time::timeout(shared.plan.timeout, async {
        loop {
            let fresh = connection.is_none();
            if fresh {
                *connection = Some(shared.target.connect().await.map_err(|_| "connect")?);
            }
            let sent = connection
                .as_mut()
                .expect("connected above")
                .order(request, context)
                .await;
            match sent {
                // Not on a connection just opened: that one is not stale, the target is.
                Err(SendError::NotSent(_)) if !fresh => {
                    *connection = None;
                    *reconnects += 1;
                }
                other => return other.map_err(SendError::what),
            }
        }
    })
    .await;
    shared.live.completed.fetch_add(1, Ordering::Relaxed);
    let answered = match attempt {
        Ok(Ok(answered)) => answered,
        Ok(Err(what)) => {
            *connection = None;
            Answered::transport(what)
        }
        Err(_) => {
            // The request may still be processed; the connection is in an unknown state.
            *connection = None;
            Answered::transport("timeout")
        }
    };
    if answered.class.is_error() {
        shared.live.errors.fetch_add(1, Ordering::Relaxed);
    }
    answered
}

fn note_for_audit(
    log: &mut OrderLog,
    request: &crate::workload::OrderRequest,
    answered: &Answered,
) {
    match (answered.class, answered.seq) {
        (OutcomeClass::Created, Some(seq)) => log.created.push(Created {
            key: request.key,
            seq,
            sku_index: request.sku_index,
            qty: request.qty,
        }),
        (OutcomeClass::Replayed, Some(seq)) => log.replayed.push((request.key, seq)),
        (OutcomeClass::TransportError, _) => log.uncertain.push(request.key),
        _ => {}
    }
}
