//! Overload, black-box: the real binary on loopback, driven by a small keep-alive HTTP/1.1
//! client written for it (raw sockets, one prebuilt request per order, no per-request
//! allocation beyond the id), first closed-loop to measure this machine's capacity, then open
//! (fixed arrival rate) at 3× that rate, then well under it again.
//!
//! Printed for RELIABILITY.md: capacity, offered and answered rates, shed share, admitted
//! p50/p99 (service time, from the actual send) and corrected p99 (from the intended send),
//! unloaded p99, the server's peak RSS, recovery latency. About 13 s on 2 cores;
//! `OVERLOAD_LONG=1` runs each phase six times longer (about 70 s). `scripts/overload.sh` is
//! the longer run with `stampede-load` against a release build, with its HTML/JSON reports.
//!
//! The client and the server share the machine's cores, so the capacity is that of this
//! machine with this client, and the 3× phase asks for more than the server can answer:
//! what it cannot take waits in the client (reported as "due but never sent", the backlog a
//! real crowd would keep in its own connections) or is shed by the server.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Opts, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SKU: &str = "OVER-1";
/// Longest wait for one answer: past it the server is hung (a transport error).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The client: one keep-alive connection, one request at a time.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Answer {
    status: u16,
    /// `Retry-After` in seconds, when present and a number.
    retry_after: Option<u64>,
}

struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|window| window == b"\r\n\r\n")
}

impl Connection {
    async fn open(addr: &str) -> std::io::Result<Connection> {
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its whole answer.
    async fn send(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(request))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s"))?
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        self.stream.write_all(request).await?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find_head_end(&self.buffer) {
                let head = std::str::from_utf8(&self.buffer[..end])
                    .map_err(|_| std::io::Error::other("head is not UTF-8"))?;
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|code| code.parse::<u16>().ok())
                    .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
                let mut length = 0usize;
                let mut retry_after = None;
                for line in head.split("\r\n").skip(1) {
                    let Some((name, value)) = line.split_once(':') else {
                        continue;
                    };
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    } else if name.eq_ignore_ascii_case("retry-after") {
                        retry_after = value.trim().parse().ok();
                    }
                }
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    let read = self.stream.read(&mut chunk).await?;
                    if read == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buffer.extend_from_slice(&chunk[..read]);
                }
                self.buffer.drain(..total);
                return Ok(Answer {
                    status,
                    retry_after,
                });
            }
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// `POST /v1/orders` of a new order from a new buyer (cash on delivery: sold at once, no
/// payment timer).
fn order_request(tag: &str, index: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"order_id":"{tag}-{index}","user_id":"{tag}u{index}","sku":"{SKU}","qty":1,"payment":"cod"}}"#
    );
    format!(
        "POST /v1/orders HTTP/1.1\r\nHost: stampede\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Phases: closed (capacity) and open (fixed arrival rate), with what they saw.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Tally {
    /// Answers by status.
    statuses: BTreeMap<u16, u64>,
    /// Service time (actual send to answer) of 201s, µs.
    created_us: Vec<u64>,
    /// Intended send to answer of 201s (open model only), µs.
    created_corrected_us: Vec<u64>,
    /// Service time of 429/503, µs.
    shed_us: Vec<u64>,
    /// 429/503 without a `Retry-After` of 1..=60 s.
    shed_without_retry_after: u64,
    transport_errors: Vec<String>,
    reconnects: u64,
    /// Answers with a status other than 201/429/503.
    unexpected: Vec<u16>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.created_us.extend(other.created_us);
        self.created_corrected_us.extend(other.created_corrected_us);
        self.shed_us.extend(other.shed_us);
        self.shed_without_retry_after += other.shed_without_retry_after;
        self.transport_errors.extend(other.transport_errors);
        self.reconnects += other.reconnects;
        self.unexpected.extend(other.unexpected);
    }

    fn record(&mut self, answer: Answer, service: Duration, corrected: Option<Duration>) {
        *self.statuses.entry(answer.status).or_default() += 1;
        match answer.status {
            201 => {
                self.created_us.push(service.as_micros() as u64);
                if let Some(corrected) = corrected {
                    self.created_corrected_us.push(corrected.as_micros() as u64);
                }
            }
            429 | 503 => {
                self.shed_us.push(service.as_micros() as u64);
                if !answer
                    .retry_after
                    .is_some_and(|seconds| (1..=60).contains(&seconds))
                {
                    self.shed_without_retry_after += 1;
                }
            }
            other => self.unexpected.push(other),
        }
    }

    fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    fn created(&self) -> u64 {
        self.statuses.get(&201).copied().unwrap_or(0)
    }

    fn shed(&self) -> u64 {
        self.statuses.get(&429).copied().unwrap_or(0)
            + self.statuses.get(&503).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Phase {
    tally: Tally,
    elapsed: Duration,
    /// Open model: requests whose intended time fell in the phase.
    due: u64,
    /// Open model: of those, sent by a connection.
    sent: u64,
    /// Peak `VmRSS` of the server during the phase, KiB.
    peak_rss_kib: u64,
}

/// The `q`-quantile (0..=1) of `samples` (sorted here), in ms.
fn percentile_ms(samples: &mut [u64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1] as f64 / 1000.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the server's RSS every 50 ms until `stop`; returns the peak.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = rss_kib(pid);
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak.max(rss_kib(pid))
    })
}

/// Opens `count` connections (all before the phase starts).
async fn open_connections(addr: &str, count: usize) -> Vec<Connection> {
    let mut connections = Vec::with_capacity(count);
    for index in 0..count {
        connections.push(
            Connection::open(addr)
                .await
                .unwrap_or_else(|error| panic!("connection {index} of {count}: {error}")),
        );
        if index % 32 == 31 {
            // The listen backlog is 128: let the accept loop keep up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    connections
}

/// Sends one request on `connection`, reopening it once if it was closed before the send
/// (counted); returns the answer or the transport error.
async fn send_counted(
    connection: &mut Connection,
    addr: &str,
    request: &[u8],
    tally: &mut Tally,
) -> Option<Answer> {
    match connection.send(request).await {
        Ok(answer) => Some(answer),
        Err(error) => {
            tally.transport_errors.push(error.to_string());
            tally.reconnects += 1;
            if let Ok(fresh) = Connection::open(addr).await {
                *connection = fresh;
            }
            None
        }
    }
}

/// Closed model: `connections` send back to back for `duration`.
async fn closed_phase(
    server: &Server,
    tag: &'static str,
    connections: usize,
    duration: Duration,
) -> Phase {
    let addr = server.addr.clone();
    let pool = open_connections(&addr, connections).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(server.pid().expect("pid"), stop.clone());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut connection in pool {
        let next = next.clone();
        let addr = addr.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let request = order_request(tag, index);
                let sent_at = Instant::now();
                if let Some(answer) =
                    send_counted(&mut connection, &addr, &request, &mut tally).await
                {
                    tally.record(answer, sent_at.elapsed(), None);
                }
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done.expect("connection task"));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak_rss_kib = rss.await.expect("rss sampler");
    let sent = next.load(Ordering::Relaxed);
    Phase {
        tally,
        elapsed,
        due: sent,
        sent,
        peak_rss_kib,
    }
}

/// Open model: request k is due at `k / rate` after the start; a free connection takes the
/// next due request and sends it at once (or waits for its time). Latency is recorded from
/// the actual send (service time) and from the intended time (corrected).
async fn open_phase(
    server: &Server,
    tag: &'static str,
    connections: usize,
    rate_per_s: f64,
    duration: Duration,
) -> Phase {
    let addr = server.addr.clone();
    let pool = open_connections(&addr, connections).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(server.pid().expect("pid"), stop.clone());
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let due_total = (rate_per_s * duration.as_secs_f64()).floor() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for mut connection in pool {
        let next = next.clone();
        let sent = sent.clone();
        let addr = addr.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= due_total {
                    break;
                }
                let due = started + Duration::from_secs_f64(index as f64 / rate_per_s);
                // A request whose time passed long ago with no free connection stays unsent
                // when the phase is over (100 ms of grace): the crowd's own backlog.
                if Instant::now() > started + duration + Duration::from_millis(100) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let request = order_request(tag, index);
                let sent_at = Instant::now();
                sent.fetch_add(1, Ordering::Relaxed);
                if let Some(answer) =
                    send_counted(&mut connection, &addr, &request, &mut tally).await
                {
                    let now = Instant::now();
                    let corrected = now.saturating_duration_since(due.min(sent_at));
                    tally.record(answer, now - sent_at, Some(corrected));
                }
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done.expect("connection task"));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak_rss_kib = rss.await.expect("rss sampler");
    Phase {
        tally,
        elapsed,
        due: due_total,
        sent: sent.load(Ordering::Relaxed),
        peak_rss_kib,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Capacity (closed, 64 connections), unloaded latency (open at a tenth of it, 8
/// connections), 3× overload (open, 256 connections: four times the concurrency that
/// saturated the server, so the server, not only the client, holds more than it can do), then
/// a tenth again. The engine runs its default configuration (`fsync = "always"`, admission
/// defaults, 2 shards, one hot SKU).
///
/// Every property is checked and all violations are reported together (with the figures):
/// - no request goes unanswered for 5 s and no connection is reset or closed by the server
///   (no hang, no connection storm: the client opens its connections once);
/// - every overload answer is 201, or 429/503 with `Retry-After` 1..=60 s (the shed share is
///   reported, not judged: see the comment at the checks);
/// - the server keeps creating orders at ≥ 50% of the measured capacity (no collapse);
/// - the admitted (201) requests' p99 service time under overload is ≤ max(10 × the
///   unloaded p99, 50 ms);
/// - the server's peak RSS stays under 512 MiB;
/// - right after the overload a new request is answered 201 within 100 ms, and the next
///   seconds at a tenth of capacity are all 201 with p50 ≤ 2× unloaded p50 + 2 ms and p99 ≤
///   3× unloaded p99 + 25 ms (p99 of a few thousand samples on a shared 2-core machine is
///   noisy).
///
/// Knobs for exploring (not for CI): `OVERLOAD_CAPACITY_CONNECTIONS`, `OVERLOAD_CONNECTIONS`,
/// `OVERLOAD_IN_FLIGHT_MAX` (sets `STAMPEDE_ADMISSION_IN_FLIGHT_MAX`).
/// `OVERLOAD_TARGET_MS` sets the queue-delay gate's target (the engine's default otherwise).
/// This test asserts latency figures, so it is a measurement run (`--ignored`), not part of
/// the default suite; `tests/queue_delay.rs` is the functional check of shedding that runs
/// by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "asserts latency figures: a measurement run for RELIABILITY.md (the default suite has the functional test)"]
async fn three_times_capacity_is_answered_or_shed_and_recovers_at_once() {
    let long = std::env::var("OVERLOAD_LONG").is_ok_and(|value| value == "1");
    let scale = if long { 6 } else { 1 };
    let capacity_connections: usize = env_or("OVERLOAD_CAPACITY_CONNECTIONS", 64);
    let overload_connections: usize = env_or("OVERLOAD_CONNECTIONS", 256);
    // The engine's default configuration, unless `OVERLOAD_TARGET_MS` sets the queue-delay
    // gate's target (a low one makes it shed here: RELIABILITY.md has both runs).
    let mut env = Vec::new();
    if let Ok(target_ms) = std::env::var("OVERLOAD_TARGET_MS") {
        env.push((
            "STAMPEDE_ADMISSION_QUEUE_DELAY_TARGET_MS".to_string(),
            target_ms,
        ));
    }
    if let Ok(in_flight) = std::env::var("OVERLOAD_IN_FLIGHT_MAX") {
        env.push(("STAMPEDE_ADMISSION_IN_FLIGHT_MAX".to_string(), in_flight));
    }
    const RSS_BOUND_KIB: u64 = 512 * 1024;
    let test_started = Instant::now();
    let server = Server::start(Opts {
        env,
        ..Opts::default()
    })
    .await;
    server.create_sku(SKU, 1 << 40, 0, 1).await;
    let pid = server.pid().expect("pid");
    let idle_rss = rss_kib(pid);

    // Warm-up, then capacity.
    let _ = closed_phase(
        &server,
        "warm",
        capacity_connections,
        Duration::from_millis(500),
    )
    .await;
    let capacity_phase = closed_phase(
        &server,
        "cap",
        capacity_connections,
        Duration::from_millis(2500) * scale,
    )
    .await;
    let capacity = capacity_phase.tally.created() as f64 / capacity_phase.elapsed.as_secs_f64();
    assert!(
        capacity > 50.0,
        "capacity {capacity:.0}/s: the server barely answers"
    );

    // Unloaded: a tenth of capacity.
    let light_rate = (capacity / 10.0).max(50.0);
    let mut unloaded = open_phase(
        &server,
        "calm",
        8,
        light_rate,
        Duration::from_secs(2) * scale,
    )
    .await;
    let unloaded_p50 = percentile_ms(&mut unloaded.tally.created_us, 0.50);
    let unloaded_p99 = percentile_ms(&mut unloaded.tally.created_us, 0.99);

    // 3× capacity.
    let offered = 3.0 * capacity;
    let mut overload = open_phase(
        &server,
        "storm",
        overload_connections,
        offered,
        Duration::from_secs(5) * scale,
    )
    .await;

    // Back under capacity: the first request on a fresh connection, then a tenth again.
    let mut first = Connection::open(&server.addr)
        .await
        .expect("connect after the overload");
    let asked = Instant::now();
    let first_answer = first
        .send(&order_request("first", 0))
        .await
        .expect("the first request after the overload is answered");
    let first_latency = asked.elapsed();
    let mut recovery = open_phase(
        &server,
        "after",
        8,
        light_rate,
        Duration::from_secs(2) * scale,
    )
    .await;
    let recovery_p50 = percentile_ms(&mut recovery.tally.created_us, 0.50);
    let recovery_p99 = percentile_ms(&mut recovery.tally.created_us, 0.99);

    // Figures.
    let over = &mut overload.tally;
    let answered = over.answered();
    let shed = over.shed();
    let created_rate = over.created() as f64 / overload.elapsed.as_secs_f64();
    let answered_rate = answered as f64 / overload.elapsed.as_secs_f64();
    let shed_share = if answered == 0 {
        0.0
    } else {
        shed as f64 / answered as f64
    };
    let admitted_p50 = percentile_ms(&mut over.created_us, 0.50);
    let admitted_p99 = percentile_ms(&mut over.created_us, 0.99);
    let admitted_max = percentile_ms(&mut over.created_us, 1.0);
    let corrected_p99 = percentile_ms(&mut over.created_corrected_us, 0.99);
    let shed_p99 = percentile_ms(&mut over.shed_us, 0.99);
    let p99_bound_ms = (10.0 * unloaded_p99).max(50.0);
    let peak_rss = [
        capacity_phase.peak_rss_kib,
        unloaded.peak_rss_kib,
        overload.peak_rss_kib,
        recovery.peak_rss_kib,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    println!(
        "overload figures (debug build of the engine and of this client, on {} cores{}):\n\
         capacity (closed, {capacity_connections} connections, {:.1} s): {capacity:.0} orders/s\n\
         unloaded ({light_rate:.0}/s open, 8 connections): p50 {unloaded_p50:.2} ms, p99 {unloaded_p99:.2} ms\n\
         overload: offered {offered:.0}/s open for {:.1} s on {overload_connections} connections; \
         due {}, sent {} ({} due but never sent: the backlog left in the crowd)\n\
         overload answers: {answered} ({answered_rate:.0}/s), 201 {} ({created_rate:.0}/s = {:.0}% of capacity), \
         shed 429/503 {shed} ({:.1}%), statuses {:?}\n\
         admitted (201) service time: p50 {admitted_p50:.2} ms, p99 {admitted_p99:.2} ms, max {admitted_max:.2} ms \
         (bound {p99_bound_ms:.1} ms = max(10 x unloaded p99, 50 ms); {overload_connections}/capacity = {:.1} ms); \
         corrected (from the intended time) p99 {corrected_p99:.0} ms; shed p99 {shed_p99:.2} ms\n\
         server RSS: idle {} MiB, peak {} MiB (bound {} MiB)\n\
         after: first request {} in {first_latency:?}; {:.0}/s for {:.1} s: {:?}, p50 {recovery_p50:.2} ms, p99 {recovery_p99:.2} ms\n\
         test time {:.1} s",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if long { ", OVERLOAD_LONG" } else { "" },
        capacity_phase.elapsed.as_secs_f64(),
        overload.elapsed.as_secs_f64(),
        overload.due,
        overload.sent,
        overload.due.saturating_sub(overload.sent),
        over.created(),
        created_rate / capacity * 100.0,
        shed_share * 100.0,
        over.statuses,
        overload_connections as f64 / capacity * 1000.0,
        idle_rss / 1024,
        peak_rss / 1024,
        RSS_BOUND_KIB / 1024,
        first_answer.status,
        light_rate,
        recovery.elapsed.as_secs_f64(),
        recovery.tally.statuses,
        test_started.elapsed().as_secs_f64(),
    );

    // Verdicts: every property is checked and every violation reported together.
    let mut failures = Vec::new();
    for (name, phase) in [
        ("capacity", &capacity_phase),
        ("unloaded", &unloaded),
        ("overload", &overload),
        ("recovery", &recovery),
    ] {
        if !phase.tally.transport_errors.is_empty() {
            failures.push(format!(
                "{name}: {} transport errors (no answer in 5 s, or a reset), first {:?}",
                phase.tally.transport_errors.len(),
                phase.tally.transport_errors.first()
            ));
        }
        if phase.tally.reconnects > 0 {
            failures.push(format!(
                "{name}: the server closed {} keep-alive connections (a reconnect storm)",
                phase.tally.reconnects
            ));
        }
    }
    if !overload.tally.unexpected.is_empty() {
        failures.push(format!(
            "overload answers other than 201/429/503: {:?}",
            overload.tally.statuses
        ));
    }
    if overload.tally.shed_without_retry_after > 0 {
        failures.push(format!(
            "{} 429/503 answers without a Retry-After of 1..=60 s",
            overload.tally.shed_without_retry_after
        ));
    }
    // Whether anything is shed is not judged here: the queue-delay gate sheds what the
    // engine's own queue calls for, and with one request per connection the excess of this
    // test waits in the client (RELIABILITY.md, Overload). `tests/queue_delay.rs` checks the
    // gate's shedding where the engine's queue does stand.
    // The closed loop that measures capacity saturates the server by design, so the gate may
    // shed there; under capacity nothing may be refused.
    for (name, phase) in [("unloaded", &unloaded), ("recovery", &recovery)] {
        if phase.tally.answered() != phase.tally.created() {
            failures.push(format!(
                "{name} (at or under capacity): answers other than 201: {:?}",
                phase.tally.statuses
            ));
        }
    }
    if created_rate < 0.5 * capacity {
        failures.push(format!(
            "overloaded, the server created {created_rate:.0} orders/s, under half its \
             capacity {capacity:.0}/s (goodput collapse; {:.0}% of its answers were shed)",
            shed_share * 100.0
        ));
    }
    if admitted_p99 > p99_bound_ms {
        failures.push(format!(
            "admitted (201) p99 under overload {admitted_p99:.1} ms, over the bound \
             {p99_bound_ms:.1} ms = max(10 x unloaded p99 {unloaded_p99:.2} ms, 50 ms)"
        ));
    }
    if peak_rss > RSS_BOUND_KIB {
        failures.push(format!(
            "server RSS peaked at {} MiB (bound {} MiB)",
            peak_rss / 1024,
            RSS_BOUND_KIB / 1024
        ));
    }
    if first_answer.status != 201 || first_latency > Duration::from_millis(100) {
        failures.push(format!(
            "the first request after the overload: {} in {first_latency:?} (expected 201 \
             within 100 ms)",
            first_answer.status
        ));
    }
    if recovery_p50 > 2.0 * unloaded_p50 + 2.0 || recovery_p99 > 3.0 * unloaded_p99 + 25.0 {
        failures.push(format!(
            "after the overload p50 {recovery_p50:.2} ms / p99 {recovery_p99:.2} ms; \
             unloaded p50 {unloaded_p50:.2} ms / p99 {unloaded_p99:.2} ms (bounds: p50 <= \
             2x + 2 ms, p99 <= 3x + 25 ms)"
        ));
    }
    assert!(
        failures.is_empty(),
        "overload: {} propert{} violated:\n- {}",
        failures.len(),
        if failures.len() == 1 { "y" } else { "ies" },
        failures.join("\n- ")
    );
}
