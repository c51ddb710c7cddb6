//! The HTTP edge: the accept loop (connection bound, header-read timeout, graceful drain), the
//! body cap, and routing to the handlers. Handlers never block a tokio worker: the order path
//! awaits a oneshot from its shard, file reads run on the blocking pool. The route table and
//! the checks before each handler are in `routes.rs`.

pub mod admin;
pub mod admission;
pub mod bulk;
pub mod cluster;
pub mod console;
pub mod events;
pub mod forwarded;
pub mod journal;
pub mod lifecycle;
pub mod orders;
pub mod queue_delay;
pub mod reply;
pub mod review;
mod routes;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::limits;
use crate::limits::{
    CONNECTIONS_MAX, HEAD_BUFFER_BYTES, HEADER_READ_TIMEOUT, JOURNAL_READERS_MAX, JOURNAL_STALL,
    LISTEN_BACKLOG,
};
use crate::metrics::HttpMetrics;
use admission::Admission;
use reply::{ApiError, ErrorCode};

/// What every request handler shares. The engine appears once recovery is done.
pub struct AppState {
    engine: OnceLock<Arc<Engine>>,
    /// This node's part in a cluster, installed with the engine when `cluster.enabled`.
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// `None` when `metrics.enabled` is false: then nothing is counted.
    metrics: Option<HttpMetrics>,
    /// In-flight bound and rate limits for orders and actions.
    admission: Admission,
    draining: AtomicBool,
    body_bytes_max: usize,
    body_read_timeout: Duration,
    journal_readers: Semaphore,
    /// Open `follow=true` streams (`FOLLOWERS_MAX`).
    followers: Arc<Semaphore>,
    /// Turns true when draining starts: followers end their streams.
    stopping: tokio::sync::watch::Sender<bool>,
    /// `http.trusted_proxies`: whose forwarded-for headers name the client.
    trusted_proxies: forwarded::TrustedProxies,
    /// The event console's snapshots (`GET /v1/events`).
    pub events: events::EventHub,
}

impl AppState {
    pub fn new(body_bytes_max: usize, body_read_timeout: Duration) -> Self {
        Self {
            engine: OnceLock::new(),
            cluster: OnceLock::new(),
            metrics: None,
            admission: Admission::unlimited(),
            draining: AtomicBool::new(false),
            body_bytes_max,
            body_read_timeout,
            journal_readers: Semaphore::new(JOURNAL_READERS_MAX),
            followers: Arc::new(Semaphore::new(limits::FOLLOWERS_MAX)),
            stopping: tokio::sync::watch::Sender::new(false),
            trusted_proxies: forwarded::TrustedProxies::default(),
            events: events::EventHub::new(),
        }
    }

    /// Honours `X-Forwarded-For` / `Forwarded` from these proxies (validated config
    /// entries; one that does not parse is skipped).
    pub fn with_trusted_proxies(mut self, entries: &[String]) -> Self {
        let nets = entries
            .iter()
            .filter_map(|entry| forwarded::TrustedNet::parse(entry).ok())
            .collect();
        self.trusted_proxies = forwarded::TrustedProxies::new(nets);
        self
    }

    /// Applies the configured admission control (the default: in-flight bound only).
    pub fn with_admission(mut self, config: &crate::config::AdmissionConfig) -> Self {
        self.admission = Admission::new(config);
        self
    }

    /// Counts requests for `GET /metrics` (off unless asked for).
    pub fn with_metrics(mut self, enabled: bool) -> Self {
        self.metrics = enabled.then(HttpMetrics::new);
        self
    }

    /// Installs the engine after recovery: from now on `/readyz` can answer 200.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        if self.engine.set(engine).is_err() {
            panic!("engine installed twice");
        }
    }

    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// Installs cluster mode; call before [`AppState::set_engine`], so that no request is
    /// ever decided as a single engine's.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        if self.cluster.set(cluster).is_err() {
            panic!("cluster installed twice");
        }
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Turns true when draining starts (background loops stop on it).
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.stopping.send_replace(true);
    }

    fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Some("draining");
        }
        match self.engine.get() {
            None => Some("recovering"),
            Some(engine) if engine.journal().is_stopped() => Some("journal_unwritable"),
            Some(engine)
                if engine
                    .journal()
                    .write_stalled_for()
                    .is_some_and(|d| d >= JOURNAL_STALL) =>
            {
                Some("journal_stalled")
            }
            Some(_) => None,
        }
    }
}

/// Binds the listening socket with a backlog of `LISTEN_BACKLOG` (the default of 128 overflows
/// when a load balancer opens connections in a burst; the kernel then retries them a second
/// later) and `SO_REUSEADDR` (a restart may bind while old connections are in TIME_WAIT).
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves connections from `listener` until `shutdown` resolves, then stops accepting, lets
/// open requests finish (up to the drain timeout) and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HEAD_BUFFER_BYTES)
        .keep_alive(true);
    tokio::pin!(shutdown);
    if let Some(gate) = state.admission.queue_delay.clone() {
        let probe_state = state.clone();
        let stopping = state.stopping.subscribe();
        tokio::spawn(async move {
            gate.run_probe(
                || match probe_state.engine() {
                    Some(engine) => engine.mailbox_wait(),
                    None => Duration::ZERO,
                },
                stopping,
            )
            .await;
        });
    }
    let metrics_connections = state.metrics.as_ref().map(|m| m.connections.clone());
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(routes::route(&state, request, peer.ip()).await) }
        });
        let open = metrics_connections.clone();
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        if let Some(open) = &open {
            open.inc();
        }
        tokio::spawn(async move {
            let _ = connection.await;
            if let Some(open) = open {
                open.dec();
            }
            drop(permit);
        });
    }
    state.start_draining();
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_millis(limits::DRAIN_TIMEOUT_MS)) => {
            tracing::warn!("drain timeout: no longer waiting for open connections; what they send now is answered 503");
        }
    }
}

/// Reads a body up to `http.body_bytes_max`; 413 for more (by header at once, else while
/// reading), 408 past the body read timeout.
async fn read_body(
    headers: &hyper::HeaderMap,
    body: Incoming,
    state: &AppState,
) -> Result<Bytes, ApiError> {
    read_body_up_to(headers, body, state, state.body_bytes_max).await
}

/// [`read_body`] with another cap (a bulk load's).
pub(crate) async fn read_body_up_to(
    headers: &hyper::HeaderMap,
    body: Incoming,
    state: &AppState,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("body is over the {limit} byte limit"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let reading =
        tokio::time::timeout(state.body_read_timeout, Limited::new(body, limit).collect());
    let Ok(read) = reading.await else {
        return Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "body not received within {} ms",
                state.body_read_timeout.as_millis()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("cannot read body: {error}"),
        )),
    }
}
