//! HTTP/1.1 keep-alive connections (hyper's low-level client: one connection per task, no
//! pool), the order request, and the engine's admin and journal calls used by setup and audit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::{ADMIN_TIMEOUT, Answered, SendError};
use crate::audit::{JournalScan, SkuState};
use crate::outcome::OutcomeClass;
use crate::scenario::SkuSpec;

/// Largest answer body read (the engine's are well under a kilobyte; a journal page of 10 000
/// records is a few MiB).
const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Answers of 429 or 503 (shed: nothing was done) retried after their `Retry-After` by the
/// admin and read calls, before the call fails.
const SHED_RETRIES: u32 = 4;
/// Longest and shortest wait before such a retry, whatever `Retry-After` says (1 s without it).
const SHED_WAIT_MAX: Duration = Duration::from_secs(10);
const SHED_WAIT_MIN: Duration = Duration::from_millis(50);
/// Concurrent connections for setup (SKU creation) and for reading SKU figures in the audit.
const ADMIN_CONNECTIONS: usize = 8;

/// An `http://host:port` target, resolved once.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    host: HeaderValue,
}

impl Endpoint {
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL (expected http://HOST:PORT)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("{url}: scheme {other} is not supported; use http://"),
            None => bail!("{url}: no scheme; use http://HOST:PORT"),
        }
        if !matches!(uri.path(), "" | "/") {
            bail!("{url}: give the server's root URL, without a path");
        }
        let authority = uri.authority().ok_or_else(|| anyhow!("{url}: no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", authority.host()))?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str()).context("host header")?,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host.to_str().unwrap_or("?"))
    }
}

/// A complete HTTP answer.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub replayed: bool,
    /// The `Retry-After` header, in seconds, when it has one.
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

/// One HTTP/1.1 connection; requests go one at a time, as a browser's would.
#[derive(Debug)]
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(endpoint: &Endpoint) -> std::io::Result<Self> {
        let stream = TcpStream::connect(endpoint.addr).await?;
        stream.set_nodelay(true)?;
        // Headers and the small body flattened into one buffer: one write per request.
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        // The connection future does the socket I/O; it ends when `sender` is dropped or the
        // server closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// Sends `request` and reads the whole answer. [`SendError::NotSent`] when the connection
    /// turned out to be closed before any byte of the request was written (hyper hands the
    /// request back then); [`SendError::Failed`] once it had started going out.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<HttpAnswer, SendError> {
        self.sender
            .ready()
            .await
            .map_err(|_| SendError::NotSent("closed"))?;
        let response = self
            .sender
            .try_send_request(request)
            .await
            .map_err(|mut error| {
                if error.take_message().is_some() {
                    SendError::NotSent("closed")
                } else if error.error().is_canceled() {
                    SendError::Failed("closed")
                } else {
                    SendError::Failed("io")
                }
            })?;
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok());
        let body = http_body_util::Limited::new(response.into_body(), BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|_| SendError::Failed("body"))?
            .to_bytes();
        Ok(HttpAnswer {
            status,
            replayed,
            retry_after,
            body,
        })
    }

    /// `POST /v1/orders` with `body`, classified. Built field by field: this is the hot path.
    pub async fn post_order(
        &mut self,
        endpoint: &Endpoint,
        body: String,
    ) -> Result<Answered, SendError> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = hyper::Uri::from_static("/v1/orders");
        let headers = request.headers_mut();
        headers.insert(HOST, endpoint.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let answer = self.send(request).await?;
        Ok(classify(&answer))
    }
}

/// The `policy` label of the first `*fsync_policy{...}` sample with a non-zero value.
fn fsync_policy_in_metrics(text: &str) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, rest) = line.split_once('{')?;
            if !name.ends_with("fsync_policy") {
                return None;
            }
            let (labels, value) = rest.split_once('}')?;
            if value.trim().parse::<f64>().ok()? == 0.0 {
                return None;
            }
            let start = labels.find("policy=\"")? + "policy=\"".len();
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_owned())
        })
}

/// A request for the admin and read API (also the sale-day scenario's actions and journal
/// reads, which are not on the order hot path).
pub fn admin_request(
    endpoint: &Endpoint,
    token: Option<&HeaderValue>,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, endpoint.host.clone());
    if !body.is_empty() {
        request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, token.clone());
    }
    request
        .body(Full::new(body))
        .with_context(|| format!("cannot build a request for {path}"))
}

#[derive(Deserialize)]
struct AcceptedBody {
    seq: u64,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: &'a str,
}

/// The contract's error codes, as static strings for the per-code counts.
const ERROR_CODES: &[&str] = &[
    "sold_out",
    "purchase_limit",
    "idempotency_conflict",
    "invalid",
    "unknown_sku",
    "bad_request",
    "too_large",
    "overloaded",
    "unavailable",
    "unauthorized",
    "not_found",
    "method_not_allowed",
];

/// Maps an order answer to its class, `seq` and error code.
pub fn classify(answer: &HttpAnswer) -> Answered {
    let class = OutcomeClass::of_status(answer.status);
    match class {
        OutcomeClass::Created | OutcomeClass::Replayed => {
            let seq = serde_json::from_slice::<AcceptedBody>(&answer.body)
                .ok()
                .map(|b| b.seq);
            Answered {
                class,
                seq,
                detail: match (seq, class == OutcomeClass::Replayed && !answer.replayed) {
                    (None, _) => Some("no_seq_in_body"),
                    (_, true) => Some("replay_header_missing"),
                    _ => None,
                },
            }
        }
        _ => {
            let detail = serde_json::from_slice::<ErrorBody<'_>>(&answer.body)
                .ok()
                .and_then(|body| ERROR_CODES.iter().copied().find(|code| *code == body.error))
                .unwrap_or("unrecognised_error_body");
            Answered {
                class,
                seq: None,
                detail: Some(detail),
            }
        }
    }
}

/// The engine's admin and read API, for setup and audit (not on the load path).
#[derive(Debug)]
pub struct AdminClient {
    endpoint: Endpoint,
    token: Option<HeaderValue>,
    connection: Option<Connection>,
}

impl AdminClient {
    pub fn new(endpoint: Endpoint, token: Option<&str>) -> anyhow::Result<Self> {
        let token = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .context("the admin token has characters a header cannot carry")?;
        Ok(Self {
            endpoint,
            token,
            connection: None,
        })
    }

    fn clone_fresh(&self) -> Self {
        Self {
            endpoint: self.endpoint.clone(),
            token: self.token.clone(),
            connection: None,
        }
    }

    /// One admin or read call; an answer of 429 or 503 (the engine shed it, nothing was done)
    /// is retried after its `Retry-After`, up to [`SHED_RETRIES`] times, so that an engine busy
    /// with other clients does not fail a setup or an audit.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<HttpAnswer> {
        let mut retries = 0;
        loop {
            let answer = self.call_once(method.clone(), path, body.clone()).await?;
            if !matches!(answer.status, 429 | 503) {
                return Ok(answer);
            }
            if retries == SHED_RETRIES {
                bail!(
                    "{method} {path} answered {} {} {} times in a row, retried after its \
                     Retry-After each time; the engine is overloaded or unavailable: try again \
                     when it is less busy",
                    answer.status,
                    String::from_utf8_lossy(&answer.body).trim(),
                    retries + 1
                );
            }
            retries += 1;
            let wait = answer
                .retry_after
                .map_or(Duration::from_secs(1), Duration::from_secs)
                .clamp(SHED_WAIT_MIN, SHED_WAIT_MAX);
            tokio::time::sleep(wait).await;
        }
    }

    async fn call_once(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<HttpAnswer> {
        // One retry on a fresh connection: a keep-alive connection may have been closed by the
        // server while idle.
        for attempt in 0..2 {
            if self.connection.is_none() {
                let connection =
                    tokio::time::timeout(ADMIN_TIMEOUT, Connection::open(&self.endpoint))
                        .await
                        .map_err(|_| anyhow!("connecting to {} timed out", self.endpoint.url()))?
                        .with_context(|| format!("cannot connect to {}", self.endpoint.url()))?;
                self.connection = Some(connection);
            }
            let request = admin_request(
                &self.endpoint,
                self.token.as_ref(),
                method.clone(),
                path,
                body.clone(),
            )?;
            let connection = self.connection.as_mut().expect("connected above");
            let sent = tokio::time::timeout(ADMIN_TIMEOUT, connection.send(request)).await;
            match sent {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(_)) if attempt == 0 => self.connection = None,
                Ok(Err(what)) => bail!("{method} {path} failed: {}", what.what()),
                Err(_) => bail!("{method} {path} timed out after {ADMIN_TIMEOUT:?}"),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Fails unless `GET /readyz` answers 200.
    pub async fn check_ready(&mut self) -> anyhow::Result<()> {
        // Not retried: a 503 here means "not ready", which is the answer sought.
        let answer = self.call_once(Method::GET, "/readyz", Bytes::new()).await?;
        if answer.status != 200 {
            bail!(
                "{} is not ready: /readyz answered {} {}",
                self.endpoint.url(),
                answer.status,
                String::from_utf8_lossy(&answer.body).trim()
            );
        }
        Ok(())
    }

    /// The journal's fsync policy when `GET /metrics` names it: a sample of any metric whose
    /// name ends in `fsync_policy`, labelled `policy="..."` (for example
    /// `stampede_journal_fsync_policy{policy="always"} 1`). `None` when the engine does not
    /// export one; the report then says "not reported".
    pub async fn fsync_policy(&mut self) -> Option<String> {
        let answer = self
            .call_once(Method::GET, "/metrics", Bytes::new())
            .await
            .ok()?;
        (answer.status == 200)
            .then(|| fsync_policy_in_metrics(&String::from_utf8_lossy(&answer.body)))
            .flatten()
    }

    /// The highest journal `seq` now, found with `GET /v1/journal?from=X&limit=1` probes
    /// (about 2·log2(seq) requests), so the audit reads only what the run wrote.
    pub async fn journal_head(&mut self) -> anyhow::Result<u64> {
        // Invariant: the head is >= low, and (once high is known) no record has seq > high.
        // Double the probe until nothing lies beyond it, then bisect; every hit moves low up
        // to a seq that exists.
        let mut low = 0u64;
        let mut high: Option<u64> = None;
        loop {
            let probe = match high {
                None => low.saturating_mul(2),
                Some(high) if low >= high => return Ok(low),
                Some(high) => low + (high - low) / 2,
            };
            match self.first_seq_after(probe).await? {
                Some(seq) if seq > probe => low = seq,
                Some(seq) => bail!("GET /v1/journal?from={probe} answered seq {seq}"),
                None => high = Some(probe),
            }
        }
    }

    async fn first_seq_after(&mut self, from: u64) -> anyhow::Result<Option<u64>> {
        let answer = self
            .call(
                Method::GET,
                &format!("/v1/journal?from={from}&limit=1"),
                Bytes::new(),
            )
            .await?;
        if answer.status != 200 {
            bail!("GET /v1/journal answered {}", answer.status);
        }
        let text = std::str::from_utf8(&answer.body).context("journal is not UTF-8")?;
        match text.lines().find(|line| !line.trim().is_empty()) {
            None => Ok(None),
            Some(line) => {
                #[derive(Deserialize)]
                struct Seq {
                    seq: u64,
                }
                let seq: Seq = serde_json::from_str(line)
                    .with_context(|| format!("unreadable journal line {line:?}"))?;
                Ok(Some(seq.seq))
            }
        }
    }

    pub async fn put_sku(&mut self, sku: &SkuSpec) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "stock": sku.stock,
            "per_user_limit": sku.per_user_limit,
            "max_per_order": sku.max_per_order,
            "payment_timeout_s": sku.payment_timeout_s,
        });
        let answer = self
            .call(
                Method::PUT,
                &format!("/v1/skus/{}", sku.name),
                Bytes::from(body.to_string()),
            )
            .await?;
        match answer.status {
            200 | 201 => Ok(()),
            401 => bail!(
                "the engine refused the admin token (401): pass the engine's token with \
                 --admin-token or --admin-token-file (it writes one to <data-dir>/admin.token)"
            ),
            status => bail!(
                "PUT /v1/skus/{} answered {status}: {}",
                sku.name,
                String::from_utf8_lossy(&answer.body).trim()
            ),
        }
    }

    /// Fails unless the run's SKUs are new to the engine (`GET /v1/skus/{sku}` answers 404):
    /// a run id used before would mix two runs' orders and stock in one audit.
    pub async fn check_run_id_unused(
        &mut self,
        run_id: &str,
        skus: &[SkuSpec],
    ) -> anyhow::Result<()> {
        let Some(sku) = skus.first() else {
            return Ok(());
        };
        let answer = self
            .call(Method::GET, &format!("/v1/skus/{}", sku.name), Bytes::new())
            .await?;
        match answer.status {
            404 => Ok(()),
            200 => bail!(
                "run id {run_id:?} was used before on this engine (SKU {} exists): pick another \
                 --run-id",
                sku.name
            ),
            status => bail!(
                "GET /v1/skus/{} answered {status}: {}",
                sku.name,
                String::from_utf8_lossy(&answer.body).trim()
            ),
        }
    }

    pub async fn read_sku(&mut self, name: &str) -> anyhow::Result<SkuState> {
        let answer = self
            .call(Method::GET, &format!("/v1/skus/{name}"), Bytes::new())
            .await?;
        if answer.status != 200 {
            bail!("GET /v1/skus/{name} answered {}", answer.status);
        }
        serde_json::from_slice(&answer.body)
            .with_context(|| format!("GET /v1/skus/{name}: unreadable body"))
    }

    /// Feeds journal records after `scan.last_seq` (or `from` for a fresh scan) to `scan`
    /// until a page comes back empty. Returns the number of records read.
    pub async fn scan_journal(&mut self, from: u64, scan: &mut JournalScan) -> anyhow::Result<u64> {
        let page_max = stampede::limits::JOURNAL_PAGE_MAX;
        let mut read = 0;
        loop {
            let after = if scan.records == 0 {
                from
            } else {
                scan.last_seq
            };
            let answer = self
                .call(
                    Method::GET,
                    &format!("/v1/journal?from={after}&limit={page_max}"),
                    Bytes::new(),
                )
                .await?;
            if answer.status != 200 {
                bail!(
                    "GET /v1/journal answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body).trim()
                );
            }
            let text = std::str::from_utf8(&answer.body).context("journal is not UTF-8")?;
            let mut page = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                scan.add_line(line).map_err(|e| anyhow!(e))?;
                page += 1;
            }
            read += page;
            if page == 0 {
                return Ok(read);
            }
        }
    }
}

/// Creates every SKU of the run over a few connections.
pub async fn create_skus(admin: &AdminClient, skus: &[SkuSpec]) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = skus.len().div_ceil(ADMIN_CONNECTIONS).max(1);
    for part in skus.chunks(chunk) {
        let mut client = admin.clone_fresh();
        let part = part.to_vec();
        tasks.spawn(async move {
            for sku in &part {
                client.put_sku(sku).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("setup task panicked")??;
    }
    Ok(())
}

/// Reads the stock figures of every SKU (`None` where one could not be read).
pub async fn read_skus(admin: &AdminClient, skus: &[SkuSpec]) -> Vec<Option<SkuState>> {
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = skus.len().div_ceil(ADMIN_CONNECTIONS).max(1);
    for (part_index, part) in skus.chunks(chunk).enumerate() {
        let mut client = admin.clone_fresh();
        let names: Vec<String> = part.iter().map(|s| s.name.clone()).collect();
        tasks.spawn(async move {
            let mut states = Vec::with_capacity(names.len());
            for name in &names {
                states.push(client.read_sku(name).await.ok());
            }
            (part_index, states)
        });
    }
    let mut parts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(part) = done {
            parts.push(part);
        }
    }
    parts.sort_by_key(|(index, _)| *index);
    let mut states: Vec<Option<SkuState>> = parts.into_iter().flat_map(|(_, s)| s).collect();
    states.resize(skus.len(), None);
    states
}

/// Gathers the audit's inputs from the engine: the journal from `from` on, until it holds
/// `seq_needed` (records are served once durable, which with `fsync = "interval"` may lag
/// the answers), and the SKU figures, re-read until the journal stops growing so that the two
/// describe the same moment even if a timed-out request landed late.
pub async fn gather_audit_inputs(
    admin: &mut AdminClient,
    run_id: &str,
    skus: &[SkuSpec],
    from: u64,
    seq_needed: u64,
    wait_max: Duration,
) -> anyhow::Result<(JournalScan, Vec<Option<SkuState>>)> {
    let deadline = Instant::now() + wait_max;
    let mut scan = JournalScan::new(run_id, skus);
    admin.scan_journal(from, &mut scan).await?;
    while scan.last_seq < seq_needed {
        if Instant::now() >= deadline {
            bail!(
                "the journal ends at seq {} after waiting {wait_max:?}, but an answer carried seq {seq_needed}",
                scan.last_seq
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        admin.scan_journal(from, &mut scan).await?;
    }
    // Only this run's records matter: other clients may keep the journal growing on their own
    // SKUs without changing anything the audit compares.
    for _ in 0..5 {
        let before = scan.run_records;
        let states = read_skus(admin, skus).await;
        admin.scan_journal(from, &mut scan).await?;
        if scan.run_records == before {
            return Ok((scan, states));
        }
    }
    bail!(
        "the journal's records of this run's SKUs and orders kept growing while the audit read \
         them: is another client writing to this run's SKUs?"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fsync_policy_is_read_from_a_labelled_metric() {
        let metrics = "# HELP x\nstampede_orders_total{outcome=\"created\"} 5\n\
            stampede_journal_fsync_policy{policy=\"none\"} 0\n\
            stampede_journal_fsync_policy{policy=\"always\"} 1\n";
        assert_eq!(fsync_policy_in_metrics(metrics).as_deref(), Some("always"));
        assert_eq!(fsync_policy_in_metrics("stampede_journal_fsyncs 3\n"), None);
    }

    fn answer(status: u16, replayed: bool, body: &str) -> HttpAnswer {
        HttpAnswer {
            status,
            replayed,
            retry_after: None,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn answers_are_classified_with_their_seq_or_error_code() {
        let created = classify(&answer(
            201,
            false,
            r#"{"order_id":"a","status":"pending_payment","seq":42}"#,
        ));
        assert_eq!(
            (created.class, created.seq, created.detail),
            (OutcomeClass::Created, Some(42), None)
        );
        let replay = classify(&answer(
            200,
            true,
            r#"{"order_id":"a","status":"pending_payment","seq":42}"#,
        ));
        assert_eq!(
            (replay.class, replay.seq),
            (OutcomeClass::Replayed, Some(42))
        );
        let sold_out = classify(&answer(409, false, r#"{"error":"sold_out","detail":"x"}"#));
        assert_eq!(
            (sold_out.class, sold_out.detail),
            (OutcomeClass::Refused, Some("sold_out"))
        );
        let shed = classify(&answer(
            429,
            false,
            r#"{"error":"overloaded","detail":"x"}"#,
        ));
        assert_eq!(
            (shed.class, shed.detail),
            (OutcomeClass::Shed, Some("overloaded"))
        );
        let odd = classify(&answer(500, false, "boom"));
        assert_eq!(
            (odd.class, odd.detail),
            (OutcomeClass::OtherError, Some("unrecognised_error_body"))
        );
    }

    #[test]
    fn a_replay_without_its_header_is_flagged() {
        let replay = classify(&answer(200, false, r#"{"seq":1}"#));
        assert_eq!(replay.detail, Some("replay_header_missing"));
    }
}
