//! A fulfilment worker: the picking and shipping side of a warehouse, built only on the
//! engine's public HTTP API (`docs/API.md`). It demonstrates how a consumer group tails the
//! journal, turns records into work, and stays correct when it is killed at any moment.
//!
//! What it does: it reads the journal as consumer group `--group` (default `picking`), after
//! the group's committed offset. An order is *ready* for the warehouse when it is paid (a
//! `pay` record) or confirmed at acceptance (an `accepted` record with payment `cod`); a
//! `cancel`, `refund` or `expired` record takes it out of the wave it is waiting in. Ready
//! orders form waves of `--wave-size` orders (default 20), or fewer once the first has waited
//! `--wave-ms` (default 2000). For each wave it writes, into `--out`, a pick list grouped by
//! SKU and a packing slip per order, as printable HTML with a plain-text twin, and then moves
//! each order through `verify`, `print`, `pick`, `check`, `pack`, `weigh`, `ship`.
//!
//! Run it beside an engine:
//!
//! ```sh
//! cargo run --release -- serve                        # the engine, on 127.0.0.1:8080
//! cargo run --release --example fulfilment_worker -- --url http://127.0.0.1:8080 --out ./warehouse
//! ```
//!
//! It follows the journal's `follow=true` stream until Ctrl-C/SIGTERM; with `--once` it reads
//! pages of what is there, ships it and exits 0. `RUST_LOG=fulfilment_worker=debug` logs every
//! stage.
//!
//! **At-least-once, made harmless.** The committed offset never passes the ready record
//! (`accepted`/`pay`) of an order that is not yet shipped or dropped: it is the last seq read
//! while no order waits, else the first waiting order's seq minus one, and it is committed
//! only between waves. A worker killed anywhere therefore reads every unfinished order again
//! on restart, and nothing else is kept between runs: an order accepted before the offset and
//! paid after it is found by its `pay` record, and its details are read back with
//! `GET /v1/orders/{id}`. Reprocessing is harmless: the worker reads the order's status
//! before acting and runs only the stages still to do; a retry of the stage it just ran is
//! answered as a replay (`Idempotent-Replayed: true`) and journals nothing; a 409 is judged
//! by reading the order again (done meanwhile, or cancelled/refunded: dropped, not a
//! failure). Documents are named from the wave's first seq and the order id and written by
//! rename, so a rerun rewrites the same files. Run one worker per group.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

/// The fulfilment stages, in the order the engine allows them.
const STAGES: [&str; 7] = ["verify", "print", "pick", "check", "pack", "weigh", "ship"];
/// Records asked for per journal page (`--once`).
const PAGE_RECORDS: usize = 1000;
/// While following, the offset is committed at most this often between waves.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The engine sends a keep-alive newline every 10 s; this much silence means a dead stream.
const STREAM_SILENCE_MAX: Duration = Duration::from_secs(35);
/// Bounded backoff on 429/503 and connection errors: 0.1 s doubling to 5 s, 12 tries (~40 s).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const RETRIES: u32 = 12;

#[derive(Parser, Debug)]
#[command(about = "Example fulfilment worker: waves, pick lists, packing slips, shipping")]
struct Args {
    /// The engine, `http://HOST:PORT`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Folder for the pick lists and packing slips.
    #[arg(long, default_value = "./warehouse")]
    out: PathBuf,
    /// Consumer group whose offset is resumed from and committed.
    #[arg(long, default_value = "picking")]
    group: String,
    /// A wave closes at this many orders...
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    wave_size: u32,
    /// ... or this many milliseconds after its first order arrived (following only).
    #[arg(long, default_value_t = 2000)]
    wave_ms: u64,
    /// Process what the journal holds now, then exit 0 (waves close by size and at the end).
    #[arg(long)]
    once: bool,
}

// ---- HTTP: hyper's HTTP/1 client over a tokio TcpStream ----------------------------------

type Sender = http1::SendRequest<Full<Bytes>>;

struct Reply {
    status: StatusCode,
    replayed: bool,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn describe(&self) -> String {
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body).trim()
        )
    }
}

/// 429 and 503 (shed, recovering, draining): worth another try.
fn busy(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// After the `tries`-th failure in a row of one call: waits 0.1 s doubling up to 5 s, or
/// gives up after [`RETRIES`].
async fn back_off(tries: &mut u32, what: &str, problem: String) -> anyhow::Result<()> {
    *tries += 1;
    ensure!(
        *tries < RETRIES,
        "{what}: {problem} (gave up after {RETRIES} tries)"
    );
    let delay = (RETRY_FIRST * 2u32.pow(*tries - 1)).min(RETRY_MAX);
    warn!(%problem, ?delay, "{what}: retrying");
    sleep(delay).await;
    Ok(())
}

/// One kept-alive connection for requests; each follow stream gets a connection of its own.
struct Api {
    /// `host:port`, connected to and sent as `Host`.
    authority: String,
    idle: Option<Sender>,
}

impl Api {
    async fn connect(&self) -> Result<Sender, String> {
        let connect = tokio::net::TcpStream::connect(&self.authority);
        let stream = match timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(format!("connect to {}: {error}", self.authority)),
            Err(_) => return Err(format!("connect to {}: timed out", self.authority)),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("handshake: {error}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request and waits for the answer's head; `Err` is a transport failure.
    async fn send(
        &self,
        sender: &mut Sender,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, String> {
        let body = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a valid request");
        let head = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        match timeout(REQUEST_TIMEOUT, head).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(format!("{method} {path}: {error}")),
            Err(_) => Err(format!(
                "{method} {path}: no answer within {REQUEST_TIMEOUT:?}"
            )),
        }
    }

    /// One try on the kept-alive connection (or a new one); `Err` is a transport failure.
    async fn try_call(
        &mut self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let mut sender = match self.idle.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        let response = self.send(&mut sender, method, path, body).await?;
        let status = response.status();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let body = match timeout(REQUEST_TIMEOUT, response.into_body().collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(error)) => return Err(format!("{method} {path}: {error}")),
            Err(_) => return Err(format!("{method} {path}: body not read in time")),
        };
        self.idle = Some(sender);
        Ok(Reply {
            status,
            replayed,
            body,
        })
    }

    /// A whole answer; connection errors, 429 and 503 are retried by [`back_off`]. Retrying
    /// an action is safe: a repeat of the order's latest action is a replay.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut tries = 0;
        loop {
            let problem = match self.try_call(&method, path, body).await {
                Ok(reply) if !busy(reply.status) => return Ok(reply),
                Ok(reply) => reply.describe(),
                Err(problem) => problem,
            };
            back_off(&mut tries, &format!("{method} {path}"), problem).await?;
        }
    }

    /// `GET /v1/journal?follow=true` on a fresh connection: the body, read as it comes.
    async fn follow(&self, from: u64) -> anyhow::Result<Incoming> {
        let path = format!("/v1/journal?from={from}&follow=true");
        let mut tries = 0;
        loop {
            let opened = match self.connect().await {
                Ok(mut sender) => self.send(&mut sender, &Method::GET, &path, None).await,
                Err(problem) => Err(problem),
            };
            let problem = match opened {
                Ok(response) if response.status() == StatusCode::OK => {
                    return Ok(response.into_body());
                }
                Ok(response) if busy(response.status()) => response.status().to_string(),
                Ok(response) => {
                    let status = response.status();
                    let body = response.into_body().collect().await.map(|b| b.to_bytes());
                    bail!(
                        "GET {path}: {status} {}",
                        String::from_utf8_lossy(&body.unwrap_or_default())
                    );
                }
                Err(problem) => problem,
            };
            back_off(&mut tries, &format!("GET {path}"), problem).await?;
        }
    }
}

// ---- The journal, as this worker sees it -------------------------------------------------

/// The fields of a journal line that decide readiness; everything else is read back later.
#[derive(Deserialize)]
struct Record {
    seq: u64,
    #[serde(rename = "type")]
    kind: String,
    order_id: Option<String>,
    payment: Option<String>,
}

/// The open wave: ready orders by the seq of their ready record, and the position read.
#[derive(Default)]
struct Waiting {
    by_seq: BTreeMap<u64, String>,
    seq_of: HashMap<String, u64>,
    /// When the open wave got its first order.
    since: Option<Instant>,
    /// The last record handled.
    last_seq: u64,
}

impl Waiting {
    fn handle(&mut self, line: &[u8]) -> anyhow::Result<()> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(()); // a keep-alive
        }
        let record: Record = serde_json::from_slice(line)
            .with_context(|| format!("not a journal record: {}", String::from_utf8_lossy(line)))?;
        if record.seq <= self.last_seq {
            return Ok(()); // already handled (a reconnect's overlap)
        }
        self.last_seq = record.seq;
        let Some(id) = record.order_id else {
            return Ok(());
        };
        match record.kind.as_str() {
            "pay" => self.add(record.seq, id),
            "accepted" if record.payment.as_deref() == Some("cod") => self.add(record.seq, id),
            "cancel" | "refund" | "expired" => {
                if let Some(seq) = self.seq_of.remove(&id) {
                    self.by_seq.remove(&seq);
                    info!(order_id = %id, record = %record.kind, "no longer ready: left its wave");
                    if self.by_seq.is_empty() {
                        self.since = None;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn add(&mut self, seq: u64, id: String) {
        if self.seq_of.contains_key(&id) {
            return;
        }
        self.seq_of.insert(id.clone(), seq);
        self.by_seq.insert(seq, id);
        self.since.get_or_insert_with(Instant::now);
    }

    fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// The highest offset that skips no waiting order.
    fn safe_offset(&self) -> u64 {
        self.by_seq
            .keys()
            .next()
            .map_or(self.last_seq, |first| first - 1)
    }

    /// Takes the oldest `size` orders as a wave.
    fn close(&mut self, size: usize) -> Vec<(u64, String)> {
        let mut wave = Vec::with_capacity(size.min(self.len()));
        while wave.len() < size {
            let Some((seq, id)) = self.by_seq.pop_first() else {
                break;
            };
            self.seq_of.remove(&id);
            wave.push((seq, id));
        }
        self.since = (!self.by_seq.is_empty()).then(Instant::now);
        wave
    }
}

/// An order as `GET /v1/orders/{id}` shows it (the fields a warehouse needs).
#[derive(Deserialize, Clone)]
struct Order {
    order_id: String,
    user_id: String,
    sku: String,
    qty: u64,
    payment: String,
    status: String,
    #[serde(default)]
    address: Option<Value>,
}

/// Where an order stands: the index in [`STAGES`] of its next stage (7: shipped or later),
/// or `None` when it left the warehouse's hands (cancelled, refunded, expired).
fn next_stage(status: &str) -> anyhow::Result<Option<usize>> {
    Ok(Some(match status {
        "paid" | "confirmed" => 0,
        "verified" => 1,
        "printed" => 2,
        "picked" => 3,
        "checked" => 4,
        "packed" => 5,
        "weighed" => 6,
        "shipped" | "delivered" | "completed" | "returned" => 7,
        "cancelled" | "refunded" | "expired" => return Ok(None),
        other => bail!("an order in state {other:?} is not ready for the warehouse"),
    }))
}

struct Item {
    order: Order,
    next: usize,
    dropped: bool,
}

// ---- The worker ----------------------------------------------------------------------------

struct Worker {
    api: Api,
    args: Args,
    waiting: Waiting,
    committed: Option<u64>,
    last_commit: Instant,
}

impl Worker {
    async fn get_order(&mut self, id: &str) -> anyhow::Result<Order> {
        let reply = self
            .api
            .call(Method::GET, &format!("/v1/orders/{id}"), None)
            .await?;
        ensure!(
            reply.status == StatusCode::OK,
            "GET order {id}: {}",
            reply.describe()
        );
        serde_json::from_slice(&reply.body)
            .with_context(|| format!("order {id}: {}", reply.describe()))
    }

    async fn commit(&mut self) -> anyhow::Result<()> {
        let seq = self.waiting.safe_offset();
        self.last_commit = Instant::now();
        if self.committed.map_or(seq == 0, |done| done >= seq) {
            return Ok(());
        }
        let path = format!("/v1/consumers/{}/offset", self.args.group);
        let reply = self
            .api
            .call(Method::PUT, &path, Some(&json!({ "seq": seq })))
            .await?;
        ensure!(
            reply.status == StatusCode::OK,
            "PUT {path}: {}",
            reply.describe()
        );
        debug!(seq, "offset committed");
        self.committed = Some(seq);
        Ok(())
    }

    /// Ships the oldest waiting orders as one wave, then commits.
    async fn run_wave(&mut self) -> anyhow::Result<()> {
        let wave = self.waiting.close(self.args.wave_size as usize);
        let Some(&(first, _)) = wave.first() else {
            return Ok(());
        };
        let mut items = Vec::with_capacity(wave.len());
        for (_, id) in &wave {
            let order = self.get_order(id).await?;
            match next_stage(&order.status)? {
                Some(next) => items.push(Item {
                    order,
                    next,
                    dropped: false,
                }),
                None => {
                    info!(order_id = %id, status = %order.status, wave = first, "dropped from the wave")
                }
            }
        }
        let documents: Vec<&Order> = items.iter().map(|item| &item.order).collect();
        if !documents.is_empty() {
            write_documents(&self.args.out, first, &documents)?;
        }
        let reason = json!({ "reason": format!("wave {first}") });
        for (stage, action) in STAGES.iter().enumerate() {
            for item in items
                .iter_mut()
                .filter(|item| !item.dropped && item.next == stage)
            {
                let id = item.order.order_id.clone();
                let path = format!("/v1/orders/{id}/{action}");
                let reply = self.api.call(Method::POST, &path, Some(&reason)).await?;
                let status = match reply.status {
                    StatusCode::OK => reply.json()["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    // Done meanwhile (a stage after a `modify` is not a replay), or cancelled.
                    StatusCode::CONFLICT => self.get_order(&id).await?.status,
                    _ => bail!("POST {path}: {}", reply.describe()),
                };
                match next_stage(&status)? {
                    None => {
                        info!(order_id = %id, %status, wave = first, stage = action, "dropped from the wave");
                        item.dropped = true;
                    }
                    Some(next) if next > stage => {
                        item.next = next;
                        let how = if reply.replayed { "replayed" } else { "marked" };
                        debug!(order_id = %id, stage = action, "{how}");
                    }
                    Some(_) => bail!("POST {path}: {} (order is {status})", reply.describe()),
                }
            }
        }
        let shipped = items.iter().filter(|item| !item.dropped).count();
        info!(
            wave = first,
            orders = wave.len(),
            shipped,
            dropped = wave.len() - shipped,
            "wave done"
        );
        self.commit().await
    }

    /// `--once`: pages until the journal has nothing more, closing the last wave at the end.
    async fn run_once(&mut self) -> anyhow::Result<()> {
        loop {
            let path = format!(
                "/v1/journal?from={}&limit={PAGE_RECORDS}",
                self.waiting.last_seq
            );
            let reply = self.api.call(Method::GET, &path, None).await?;
            ensure!(
                reply.status == StatusCode::OK,
                "GET {path}: {}",
                reply.describe()
            );
            let before = self.waiting.last_seq;
            for line in reply.body.split(|&byte| byte == b'\n') {
                self.waiting.handle(line)?;
                if self.waiting.len() >= self.args.wave_size as usize {
                    self.run_wave().await?;
                }
            }
            if self.waiting.last_seq == before {
                if self.waiting.len() == 0 {
                    return self.commit().await;
                }
                self.run_wave().await?; // then page on over the stages it journaled
            }
        }
    }

    /// Follows the stream until SIGINT/SIGTERM; a stream that ends or falls silent is reopened
    /// after the last seq handled.
    async fn run_follow(&mut self) -> anyhow::Result<()> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let wave_ms = Duration::from_millis(self.args.wave_ms);
        'stream: loop {
            let mut body = self.api.follow(self.waiting.last_seq).await?;
            let mut partial: Vec<u8> = Vec::new();
            loop {
                let wave_at = self.waiting.since.map(|since| since + wave_ms);
                let commit_due = self.waiting.safe_offset() > self.committed.unwrap_or(0);
                tokio::select! {
                    frame = timeout(STREAM_SILENCE_MAX, body.frame()) => {
                        let data = match frame {
                            Ok(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
                            Ok(Some(Err(error))) => { warn!(%error, "stream broke; reopening"); continue 'stream }
                            Ok(None) => { warn!("stream ended; reopening"); continue 'stream }
                            Err(_) => { warn!("stream silent; reopening"); continue 'stream }
                        };
                        partial.extend_from_slice(&data);
                        let Some(end) = partial.iter().rposition(|&byte| byte == b'\n') else { continue };
                        let lines: Vec<u8> = partial.drain(..=end).collect();
                        for line in lines.split(|&byte| byte == b'\n') {
                            self.waiting.handle(line)?;
                            if self.waiting.len() >= self.args.wave_size as usize {
                                self.run_wave().await?;
                            }
                        }
                    }
                    () = sleep_until(wave_at.unwrap_or_else(Instant::now)), if wave_at.is_some() => {
                        self.run_wave().await?;
                    }
                    () = sleep_until(self.last_commit + COMMIT_EVERY), if commit_due => {
                        self.commit().await?;
                    }
                    _ = interrupt.recv() => break 'stream,
                    _ = terminate.recv() => break 'stream,
                }
            }
        }
        info!("stopping; orders still waiting are read again on the next run");
        self.commit().await
    }
}

// ---- Documents -----------------------------------------------------------------------------

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font:14px/1.4 sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #444;padding:4px 10px;text-align:left;vertical-align:top}}\
         @media print{{body{{margin:0}}}}</style></head>\n<body><h1>{title}</h1>\n{body}</body></html>\n"
    )
}

/// A wave's pick list (by SKU, then order) and a packing slip per order, HTML and text. The
/// text has no timestamp: a rerun of the wave writes the same bytes.
fn write_documents(out: &Path, wave: u64, orders: &[&Order]) -> anyhow::Result<()> {
    let mut by_sku: BTreeMap<&str, Vec<&Order>> = BTreeMap::new();
    for order in orders {
        by_sku.entry(&order.sku).or_default().push(order);
    }
    let units: u64 = orders.iter().map(|order| order.qty).sum();
    let summary = format!("{} orders, {units} units", orders.len());
    let mut text = format!("PICK LIST  wave {wave}\n{summary}\n\n");
    let mut rows = String::from("<tr><th>SKU</th><th>Total</th><th>Orders</th></tr>\n");
    for (sku, lines) in &by_sku {
        let total: u64 = lines.iter().map(|order| order.qty).sum();
        let _ = writeln!(text, "{sku:<32} total {total}");
        let mut cell = String::new();
        for order in lines {
            let _ = writeln!(text, "    {:<40} qty {}", order.order_id, order.qty);
            let _ = write!(
                cell,
                "{} &times; {}<br>",
                escape(&order.order_id),
                order.qty
            );
        }
        let _ = writeln!(
            rows,
            "<tr><td>{}</td><td>{total}</td><td>{cell}</td></tr>",
            escape(sku)
        );
    }
    let stem = format!("wave-{wave:012}");
    let html = html_page(
        &format!("Pick list, wave {wave}"),
        &format!("<p>{summary}</p>\n<table>{rows}</table>\n"),
    );
    write_atomic(&out.join(format!("{stem}-picklist.txt")), &text)?;
    write_atomic(&out.join(format!("{stem}-picklist.html")), &html)?;

    for order in orders {
        let mut fields = vec![
            ("order", order.order_id.clone()),
            ("user", order.user_id.clone()),
            ("sku", order.sku.clone()),
            ("qty", order.qty.to_string()),
            ("payment", order.payment.clone()),
        ];
        // The latest address (after any `modify`), a line per field as the engine keeps it.
        match &order.address {
            Some(Value::Object(address)) => fields.extend(address.iter().map(|(key, value)| {
                let value = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                ("address", format!("{key}: {value}"))
            })),
            Some(Value::Null) | None => {}
            Some(other) => fields.push(("address", other.to_string())),
        }
        let mut text = format!("PACKING SLIP  wave {wave}\n");
        let mut rows = String::new();
        for (label, value) in &fields {
            let _ = writeln!(text, "{label:<10}{value}");
            let _ = writeln!(rows, "<tr><th>{label}</th><td>{}</td></tr>", escape(value));
        }
        let title = format!(
            "Packing slip, order {} (wave {wave})",
            escape(&order.order_id)
        );
        let stem = format!("{stem}-slip-{}", order.order_id);
        write_atomic(&out.join(format!("{stem}.txt")), &text)?;
        write_atomic(
            &out.join(format!("{stem}.html")),
            &html_page(&title, &format!("<table>{rows}</table>\n")),
        )?;
    }
    Ok(())
}

/// Writes `path` whole or not at all: a temporary file, synced, renamed over it. A file that
/// already holds these bytes (a rerun) is left alone.
fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(());
    }
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .context("a file name")?;
    let temp = path.with_file_name(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().with_context(|| format!("write {}", path.display()))
}

// ---- main ----------------------------------------------------------------------------------

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let authority = (args.url.strip_prefix("http://"))
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|authority| authority.contains(':') && !authority.contains('/'))
        .with_context(|| format!("--url {:?}: expected http://HOST:PORT", args.url))?;
    let mut api = Api {
        authority: authority.to_owned(),
        idle: None,
    };
    let path = format!("/v1/consumers/{}/offset", args.group);
    let reply = api.call(Method::GET, &path, None).await?;
    let committed = match reply.status {
        StatusCode::OK => Some(reply.json()["seq"].as_u64().context("offset without seq")?),
        StatusCode::NOT_FOUND if reply.json()["error"] == "unknown_group" => None,
        _ => bail!("GET {path}: {}", reply.describe()),
    };
    info!(group = %args.group, offset = ?committed, once = args.once, "starting");
    let mut worker = Worker {
        api,
        waiting: Waiting {
            last_seq: committed.unwrap_or(0),
            ..Waiting::default()
        },
        args,
        committed,
        last_commit: Instant::now(),
    };
    if worker.args.once {
        worker.run_once().await
    } else {
        worker.run_follow().await
    }?;
    info!(offset = ?worker.committed, "done");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
