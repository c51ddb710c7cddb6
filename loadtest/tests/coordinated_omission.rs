//! Coordinated omission, measured: a tiny HTTP server on a loopback port answers every order
//! at once, except that from 1.0 s to 1.3 s after the first request of a run it holds every
//! answer until the window ends (a stall of S = 300 ms). The generator drives it as the bare
//! target (`--target bare`).
//!
//! Open model at R = 1000 req/s with more connections than R·S: about R·S = 300 requests are
//! due during the stall and each waits until its end, so their corrected latencies fall
//! linearly from S to 0. The test computes that distribution independently, wrk2-style
//! (request k is due at t_k = k/R; its latency is the stall's end minus t_k if t_k falls
//! inside the stall, else about nothing) and compares the generator's percentiles with it.
//!
//! Closed model with 8 connections against the same server: each connection sends one request
//! into the stall and then waits, so the stall shows in 8 samples among many thousands and the
//! p99 hides it. That contrast is what the open model exists for.
//!
//! The run goes through the library exactly as `stampede-load --target bare` does (settings
//! from the command line, then `run::run`'s bare path: resolve, workload, `driver::drive`), so
//! the test can read the merged histogram itself; the percentiles are computed with
//! `report::Percentiles::of`, which is what the JSON summary's `answered` holds.
//!
//! About 6 seconds (3 s open, 3 s closed), loopback only; about 9 when a CPU-starved open run
//! has to be made again (see below). The figures are printed (`-- --nocapture`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use stampede_load::cli::{Args, TargetSpec};
use stampede_load::driver::{DriveResult, LiveView, drive};
use stampede_load::outcome::OutcomeClass;
use stampede_load::report::Percentiles;
use stampede_load::target::{Target, http::Endpoint};
use stampede_load::workload::WorkloadPlan;

/// The stall: from this long after the first request of a run...
const STALL_START: Duration = Duration::from_millis(1000);
/// ...for this long (S).
const STALL: Duration = Duration::from_millis(300);
/// Open model: R.
const RATE_PER_S: u64 = 1000;
/// Well above R·S = 300 requests in flight during the stall, so the generator never queues.
const OPEN_CONNECTIONS: usize = 400;
const CLOSED_CONNECTIONS: usize = 8;
const DURATION: &str = "3s";
const DURATION_S: u64 = 3;
/// Answers with a corrected latency of S/2 or more: ideally R·S/2 = 150.
const SLOW_ACCEPTED: std::ops::RangeInclusive<u64> = 90..=260;
/// The corrected maximum: ideally S, in microseconds.
const MAX_ACCEPTED_US: std::ops::RangeInclusive<u64> = 200_000..=600_000;

// ----------------------------------------------------------------------------------------
// The stalling server.

/// What the server shares with the test: when the current run's first request came, and how
/// many requests it held in the stall.
#[derive(Debug, Default)]
struct StallState {
    epoch: Mutex<Option<Instant>>,
    held: AtomicU64,
    served: AtomicU64,
}

impl StallState {
    /// Re-arms the stall for the next run: its window counts from that run's first request.
    fn rearm(&self) {
        *self.epoch.lock().unwrap() = None;
        self.held.store(0, Ordering::SeqCst);
        self.served.store(0, Ordering::SeqCst);
    }
}

struct StallingServer {
    url: String,
    state: Arc<StallState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StallingServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(
    state: Arc<StallState>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole order, as a real server would, before deciding anything.
    let _ = request.into_body().collect().await;
    let now = Instant::now();
    let epoch = *state.epoch.lock().unwrap().get_or_insert(now);
    let stall_from = epoch + STALL_START;
    let stall_until = stall_from + STALL;
    if (stall_from..stall_until).contains(&now) {
        state.held.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep_until(stall_until.into()).await;
    }
    state.served.fetch_add(1, Ordering::SeqCst);
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"order_id":"o","status":"pending_payment","seq":1}"#,
    )));
    *response.status_mut() = StatusCode::CREATED;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Starts the server on 127.0.0.1:0 on its own thread and runtime, so that its timing does not
/// depend on the generator's worker threads. Dropping it stops it.
fn start_server() -> StallingServer {
    let state = Arc::new(StallState::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, address) = std::sync::mpsc::channel();
    let server_state = state.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            bound.send(listener.local_addr().unwrap()).unwrap();
            let accept = async {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let state = server_state.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| handle(state.clone(), request));
                        let _ = http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stopped => {}
            }
        });
        // Dropping the runtime here cancels the connection tasks still open.
    });
    let address = address.recv().unwrap();
    StallingServer {
        url: format!("http://{address}"),
        state,
        stop: Some(stop),
        thread: Some(thread),
    }
}

// ----------------------------------------------------------------------------------------
// The generator, as `stampede-load --target bare` runs it.

async fn run_bare(url: &str, model_args: &[&str]) -> DriveResult {
    let mut argv = vec![
        "stampede-load",
        "--scenario",
        "throughput",
        "--target",
        "bare",
        "--url",
        url,
        "--duration",
        DURATION,
        "--warmup",
        "0s",
        "--ramp-up",
        "0s",
        "--timeout",
        "5s",
        "--seed",
        "7",
        "--quiet",
    ];
    argv.extend_from_slice(model_args);
    let settings = Args::try_parse_from(argv)
        .unwrap()
        .settings_with_env(&|_| None)
        .unwrap();
    // run::run's bare path: no setup, no audit.
    let TargetSpec::Bare { url } = &settings.target else {
        panic!("--target bare gives a bare target");
    };
    let target = Target::Bare(Endpoint::resolve(url).await.unwrap());
    let workload = Arc::new(
        WorkloadPlan::new(
            settings.run_id.clone(),
            settings.scenario.sku_specs(&settings.run_id),
            settings.scenario.traffic.clone(),
            settings.seed,
        )
        .unwrap(),
    );
    drive(
        settings.drive.clone(),
        workload,
        target,
        Arc::new(LiveView::new()),
    )
    .await
    .expect("the run completes")
}

// ----------------------------------------------------------------------------------------
// The independent, wrk2-style expectation.

/// Corrected latency of every request the open run is due to send: request k is due at
/// t_k = k/R; one due inside the stall completes when the stall ends, any other at once.
fn expected_latencies() -> Vec<Duration> {
    let stall_end = STALL_START + STALL;
    let mut latencies: Vec<Duration> = (0..RATE_PER_S * DURATION_S)
        .map(|k| {
            let due = Duration::from_secs_f64(k as f64 / RATE_PER_S as f64);
            if (STALL_START..stall_end).contains(&due) {
                stall_end - due
            } else {
                Duration::ZERO
            }
        })
        .collect();
    latencies.sort();
    latencies
}

/// The value at `quantile` the way HdrHistogram reports it: the smallest value that at least
/// `quantile` of the samples do not exceed.
fn quantile(sorted: &[Duration], quantile: f64) -> Duration {
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1e3
}

/// Within ±35% or ±40 ms of the expectation, whichever is larger.
fn agrees(measured_us: u64, expected: Duration) -> bool {
    let expected_us = expected.as_micros() as f64;
    let tolerance = (expected_us * 0.35).max(40_000.0);
    (measured_us as f64 - expected_us).abs() <= tolerance
}

fn at_or_above(histogram: &Histogram<u64>, threshold: Duration) -> u64 {
    histogram.count_between(threshold.as_micros() as u64, histogram.max().max(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_model_shows_a_server_stall_that_the_closed_model_hides() {
    let began = Instant::now();
    let server = start_server();

    let expected = expected_latencies();
    let expected_slow = expected.iter().filter(|l| **l >= STALL / 2).count();
    let expected_p50 = quantile(&expected, 0.5);
    let expected_p99 = quantile(&expected, 0.99);
    let expected_p999 = quantile(&expected, 0.999);
    let expected_max = *expected.last().unwrap();

    // 1. Open model, R = 1000/s.
    //
    // The wrk2-style expectation assumes that answers are taken the moment the stall ends and
    // that the generator keeps its schedule. Here the generator shares two cores with the
    // server and (under `cargo test`) is unoptimized: taking the ~300 answers released at once
    // keeps it busy for 50-100 ms, which shows as send lag on the requests due meanwhile and
    // stretches the stall's tail. If the stall's shape is off *and* the generator's own send
    // lag says it fell a third of the stall behind (a starved CPU, not the server), the run
    // says nothing about the correction and is made again (up to three runs). If the last one
    // is still starved, the shape is checked only as far as a late generator leaves it: the
    // stall is visible (at least the expected number of slow answers, the longest about S),
    // while the exact tail is not held against it.
    let rate = RATE_PER_S.to_string();
    let connections = OPEN_CONNECTIONS.to_string();
    let mut attempts = 0;
    const ATTEMPTS_MAX: u32 = 3;
    let (open, open_held, open_served, corrected, slow, send_lag, starved_out) = loop {
        attempts += 1;
        server.state.rearm();
        let open = run_bare(
            &server.url,
            &[
                "--model",
                "open",
                "--rate",
                &rate,
                "--connections",
                &connections,
            ],
        )
        .await;
        let held = server.state.held.load(Ordering::SeqCst);
        let served = server.state.served.load(Ordering::SeqCst);
        let histogram = open.recorder.answered_histogram();
        let corrected = Percentiles::of(&histogram).expect("answers were recorded");
        let slow = at_or_above(&histogram, STALL / 2);
        let send_lag = open
            .recorder
            .send_lag_histogram()
            .and_then(Percentiles::of)
            .expect("open runs record send lag");
        let shape_ok = SLOW_ACCEPTED.contains(&slow)
            && MAX_ACCEPTED_US.contains(&corrected.max_us)
            && agrees(corrected.p99_us, expected_p99)
            && agrees(corrected.p999_us, expected_p999);
        let starved = send_lag.max_us >= (STALL / 3).as_micros() as u64;
        if shape_ok || !starved || attempts == ATTEMPTS_MAX {
            let starved_out = !shape_ok && starved;
            break (open, held, served, corrected, slow, send_lag, starved_out);
        }
        println!(
            "attempt {attempts}: {slow} answers >= S/2, p99 {:.1} ms, max {:.1} ms, but the \
             generator sent up to {:.1} ms late (CPU starved): running the open model again",
            ms(corrected.p99_us),
            ms(corrected.max_us),
            ms(send_lag.max_us)
        );
    };
    let service = open
        .recorder
        .service_histogram()
        .and_then(Percentiles::of)
        .expect("open runs record service time");

    // 2. Closed model, 8 connections, same server (stall re-armed), same duration.
    server.state.rearm();
    let closed_connections = CLOSED_CONNECTIONS.to_string();
    let closed = run_bare(
        &server.url,
        &["--model", "closed", "--connections", &closed_connections],
    )
    .await;
    let closed_held = server.state.held.load(Ordering::SeqCst);
    let closed_histogram = closed.recorder.answered_histogram();
    let closed_latency = Percentiles::of(&closed_histogram).expect("answers were recorded");
    let closed_slow = at_or_above(&closed_histogram, STALL / 2);
    drop(server);
    let elapsed = began.elapsed();

    let figures = format!(
        "open (R = {RATE_PER_S}/s, {OPEN_CONNECTIONS} connections, attempt {attempts}): {} answered, \
         {} held by the server ({open_served} served), {} sent, {} unsent\n\
         \x20 corrected   p50 {:.3} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms  >= S/2: {slow}\n\
         \x20 expected    p50 {:.3} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms  >= S/2: {expected_slow}\n\
         \x20 uncorrected p50 {:.3} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms\n\
         \x20 send lag    p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n\
         closed ({CLOSED_CONNECTIONS} connections): {} answered, {closed_held} held by the server\n\
         \x20 latency     p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.1} ms  >= S/2: {closed_slow}\n\
         elapsed {:.2} s",
        corrected.count,
        open_held,
        open.sent,
        open.unsent,
        ms(corrected.p50_us),
        ms(corrected.p99_us),
        ms(corrected.p999_us),
        ms(corrected.max_us),
        expected_p50.as_secs_f64() * 1e3,
        expected_p99.as_secs_f64() * 1e3,
        expected_p999.as_secs_f64() * 1e3,
        expected_max.as_secs_f64() * 1e3,
        ms(service.p50_us),
        ms(service.p99_us),
        ms(service.p999_us),
        ms(service.max_us),
        ms(send_lag.p50_us),
        ms(send_lag.p99_us),
        ms(send_lag.max_us),
        closed_latency.count,
        ms(closed_latency.p50_us),
        ms(closed_latency.p99_us),
        ms(closed_latency.p999_us),
        ms(closed_latency.max_us),
        elapsed.as_secs_f64(),
    );
    println!("{figures}");

    // The open run was what it was meant to be: every request due was sent, answered 201, and
    // about R·S of them reached the server inside the stall.
    let due = RATE_PER_S * DURATION_S;
    assert_eq!(open.unsent, 0, "{figures}");
    assert_eq!(open.sent, due, "{figures}");
    assert_eq!(open.recorder.count(OutcomeClass::Created), due, "{figures}");
    assert_eq!(corrected.count, due, "{figures}");
    assert!((250..=350).contains(&open_held), "{figures}");
    assert_eq!(
        closed.recorder.count(OutcomeClass::TransportError),
        0,
        "{figures}"
    );

    // The stall is in the corrected distribution: about R·S/2 = 150 requests waited S/2 or
    // more, and the longest wait was about S.
    if starved_out {
        // A generator that sent up to `send_lag.max` late stretches the stall's tail by as
        // much: the stall must still show, no less than expected.
        println!(
            "the generator was CPU-starved in all {ATTEMPTS_MAX} runs: checking the stall's \
             presence only"
        );
        assert!(slow >= *SLOW_ACCEPTED.start(), "{figures}");
        assert!(
            corrected.max_us >= *MAX_ACCEPTED_US.start()
                && corrected.max_us <= MAX_ACCEPTED_US.end() + send_lag.max_us,
            "{figures}"
        );
    } else {
        assert!(SLOW_ACCEPTED.contains(&slow), "{figures}");
        assert!(MAX_ACCEPTED_US.contains(&corrected.max_us), "{figures}");
        // And its tail agrees with the wrk2-style computation.
        assert!(agrees(corrected.p99_us, expected_p99), "p99: {figures}");
        assert!(agrees(corrected.p999_us, expected_p999), "p99.9: {figures}");
    }
    // Half the requests are untouched by the stall: the median is a plain loopback answer.
    assert!(corrected.p50_us < 20_000, "p50: {figures}");

    // The closed model saw the same stall in one request per connection and hides it.
    assert!(closed_held <= CLOSED_CONNECTIONS as u64, "{figures}");
    assert!(closed_slow <= CLOSED_CONNECTIONS as u64, "{figures}");
    assert!(
        closed_latency.max_us >= (STALL / 2).as_micros() as u64,
        "the closed run should still meet the stall: {figures}"
    );
    assert!(
        closed_latency.p99_us * 2 < corrected.p99_us,
        "coordinated omission should hide the stall from the closed model's p99: {figures}"
    );
}
