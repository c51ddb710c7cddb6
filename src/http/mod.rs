//! The HTTP edge: the accept loop (connection bound, header-read timeout, graceful drain), the
//! body cap, and routing to the handlers. Handlers never block a tokio worker: the order path
//! awaits a oneshot from its shard, file reads run on the blocking pool.

pub mod admin;
pub mod admission;
pub mod bulk;
pub mod journal;
pub mod lifecycle;
pub mod orders;
pub mod queue_delay;
pub mod reply;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
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
use crate::metrics::{ActionResult, HttpMetrics, OrderOutcomeLabel, Route, ShedReason};
use crate::order::Action;
use admission::{Admission, RetryAfter};
use reply::{ApiError, ErrorCode, HttpResponse};

/// What every request handler shares. The engine appears once recovery is done.
pub struct AppState {
    engine: OnceLock<Arc<Engine>>,
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
}

impl AppState {
    pub fn new(body_bytes_max: usize, body_read_timeout: Duration) -> Self {
        Self {
            engine: OnceLock::new(),
            metrics: None,
            admission: Admission::unlimited(),
            draining: AtomicBool::new(false),
            body_bytes_max,
            body_read_timeout,
            journal_readers: Semaphore::new(JOURNAL_READERS_MAX),
            followers: Arc::new(Semaphore::new(limits::FOLLOWERS_MAX)),
            stopping: tokio::sync::watch::Sender::new(false),
        }
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
            async move { Ok::<_, Infallible>(route(&state, request, peer.ip()).await) }
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

/// The metrics series a request belongs to, from its path segments.
fn route_label(segments: &[&str], method: &Method) -> Route {
    match (segments, method) {
        (["v1", "orders"], &Method::POST) => Route::CreateOrder,
        (["v1", "orders", _, _], &Method::POST) => Route::OrderAction,
        (["v1", "orders", _], &Method::GET) => Route::GetOrder,
        (["v1", "skus", ..] | ["v1", "skus:bulk"], _) => Route::Skus,
        (["v1", "journal"], _) => Route::Journal,
        (["v1", "consumers", ..], _) => Route::Consumers,
        (["healthz" | "readyz"], _) => Route::Health,
        (["metrics"], _) => Route::Metrics,
        _ => Route::Other,
    }
}

async fn route(state: &AppState, request: Request<Incoming>, peer: IpAddr) -> HttpResponse {
    let Some(metrics) = &state.metrics else {
        return dispatch(state, request, peer).await;
    };
    let started = Instant::now();
    let segments = path_segments(request.uri().path());
    let label = route_label(&segments.0[..segments.1], request.method());
    let response = dispatch(state, request, peer).await;
    metrics.observe_request(label, started.elapsed());
    response
}

/// The first path segments (at most four are routed; a longer path fills the array and
/// matches nothing), and how many there are.
fn path_segments(path: &str) -> ([&str; 5], usize) {
    let mut segments = [""; 5];
    let mut segment_count = 0;
    for segment in path.trim_start_matches('/').split('/') {
        if segment_count == segments.len() {
            break;
        }
        segments[segment_count] = segment;
        segment_count += 1;
    }
    (segments, segment_count)
}

/// What a request asks of the engine, for the queue-delay gate (actions are spared longer).
#[derive(Debug, Clone, Copy)]
enum Work {
    NewOrder,
    Action,
}

/// Admission for an order or an action (see [`admission`]): the queue-delay gate, an
/// in-flight slot held until the answer, and the client's rate limit. `Err` is the 503 or
/// 429 to send and why (not counted here: the caller counts it with the request's outcome).
fn admit<'a>(
    state: &'a AppState,
    engine: &Engine,
    peer: IpAddr,
    work: Work,
) -> Result<admission::InFlightGuard<'a>, (ApiError, ShedReason)> {
    if let Some(gate) = &state.admission.queue_delay {
        let admitted = match work {
            Work::NewOrder => gate.admit_order(),
            Work::Action => gate.admit_action(),
        };
        if let Err(RetryAfter(seconds)) = admitted {
            let error = ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "requests are waiting {} ms for this server (target {} ms); {:.0}% of new \
                     orders are refused until it catches up",
                    gate.delay().as_millis(),
                    gate.target().as_millis(),
                    gate.probability() * 100.0
                ),
            )
            .service_unavailable()
            .retry_after(seconds);
            return Err((error, ShedReason::QueueDelay));
        }
    }
    let Some(slot) = state.admission.in_flight.enter() else {
        let waiting = state.admission.in_flight.current();
        let error = ApiError::new(
            ErrorCode::Overloaded,
            format!("{waiting} requests in flight, the most this server takes; retry"),
        )
        .retry_after(engine.retry_after_s(None, waiting));
        return Err((error, ShedReason::InFlight));
    };
    if let Some(limiter) = &state.admission.per_client
        && let Err(RetryAfter(seconds)) = limiter.check(peer)
    {
        let error = ApiError::new(
            ErrorCode::Overloaded,
            format!("client {peer} is over its requests-per-second limit"),
        )
        .retry_after(seconds);
        return Err((error, ShedReason::ClientRate));
    }
    Ok(slot)
}

/// `POST /v1/orders` from admission to answer, with what became of it (every answer is
/// counted, whichever step gave it).
async fn post_order(
    state: &AppState,
    parts: &hyper::http::request::Parts,
    body: Incoming,
    peer: IpAddr,
) -> (HttpResponse, OrderOutcomeLabel) {
    let refused = |error: ApiError| {
        let outcome = OrderOutcomeLabel::Refused(error.code);
        (error.into_response(), outcome)
    };
    let engine = match admitting_engine(state) {
        Ok(engine) => engine,
        Err(error) => return refused(error),
    };
    let _in_flight = match admit(state, engine, peer, Work::NewOrder) {
        Ok(slot) => slot,
        Err((error, reason)) => return (error.into_response(), OrderOutcomeLabel::Shed(reason)),
    };
    match read_body(&parts.headers, body, state).await {
        Ok(body) => {
            let per_user = state.admission.per_user.as_ref();
            orders::create_order(engine, &body, per_user).await
        }
        Err(error) => refused(error),
    }
}

async fn dispatch(state: &AppState, request: Request<Incoming>, peer: IpAddr) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let method = &parts.method;
    let (segments, segment_count) = path_segments(path);
    match (&segments[..segment_count], method) {
        (["metrics"], &Method::GET) => match &state.metrics {
            Some(metrics) => {
                metrics
                    .in_flight
                    .set(state.admission.in_flight.current() as i64);
                if let Some(gate) = &state.admission.queue_delay {
                    metrics.queue_delay.set(gate.delay().as_secs_f64());
                    metrics.shed_probability.set(gate.probability());
                }
                for (limit, limiter) in [
                    ("client", &state.admission.per_client),
                    ("user", &state.admission.per_user),
                ] {
                    if let Some(limiter) = limiter {
                        metrics.rate_untracked.with_label_values(&[limit]).set(
                            limiter.untracked.load(std::sync::atomic::Ordering::Relaxed) as i64,
                        );
                    }
                }
                let mut registries = vec![&metrics.registry];
                let engine_metrics = state.engine().and_then(|engine| engine.scrape_metrics());
                if let Some(engine_registry) = &engine_metrics {
                    registries.push(engine_registry);
                }
                reply::raw(
                    StatusCode::OK,
                    crate::metrics::CONTENT_TYPE,
                    Bytes::from(crate::metrics::render(&registries)),
                )
            }
            None => ApiError::new(
                ErrorCode::NotFound,
                "metrics are disabled (metrics.enabled)",
            )
            .into_response(),
        },
        (["healthz"], &Method::GET) => {
            reply::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (["readyz"], &Method::GET) => match state.not_ready_reason() {
            None => reply::json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
            Some(reason) => reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": reason}),
            ),
        },
        (["v1", "orders"], &Method::POST) => {
            let (response, outcome) = post_order(state, &parts, body, peer).await;
            if let Some(metrics) = &state.metrics {
                metrics.count_order(outcome);
            }
            response
        }
        (["v1", "orders", order_id], &Method::GET) => match state.engine() {
            Some(engine) => lifecycle::get_order(engine, order_id).await,
            None => recovering(),
        },
        (["v1", "orders", order_id, action], &Method::POST) => {
            let Some(action) = Action::parse_client(action) else {
                return ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "no action {action:?}; one of {}",
                        Action::ALL
                            .iter()
                            .filter(|a| a.is_client_action())
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .into_response();
            };
            let engine = match admitting_engine(state) {
                Ok(engine) => engine,
                Err(error) => return error.into_response(),
            };
            let _in_flight = match admit(state, engine, peer, Work::Action) {
                Ok(slot) => slot,
                Err((error, reason)) => {
                    if let Some(metrics) = &state.metrics {
                        metrics.count_shed(reason);
                    }
                    return error.into_response();
                }
            };
            match read_body(&parts.headers, body, state).await {
                Ok(body) => {
                    let response =
                        lifecycle::order_action(engine, order_id, action, &parts.headers, &body)
                            .await;
                    if let Some(metrics) = &state.metrics {
                        let result = if response.status() != StatusCode::OK {
                            ActionResult::Refused
                        } else if response.headers().contains_key("idempotent-replayed") {
                            ActionResult::Replayed
                        } else {
                            ActionResult::Done
                        };
                        metrics.count_action(action, result);
                    }
                    response
                }
                Err(error) => error.into_response(),
            }
        }
        (["v1", "skus:bulk"], &Method::POST) => {
            let engine = match admitting_engine(state) {
                Ok(engine) => engine,
                Err(error) => return error.into_response(),
            };
            if let Err(error) = admin::authorize(engine, &parts.headers) {
                return error.into_response();
            }
            match bulk::read_body(&parts.headers, body, state).await {
                Ok(body) => bulk::load(engine, &parts.headers, &body).await,
                Err(error) => error.into_response(),
            }
        }
        (["v1", "skus"], &Method::GET) => {
            with_engine(state, |engine| admin::list_skus(engine, parts.uri.query()))
        }
        (["v1", "skus", sku], &Method::GET) => {
            with_engine(state, |engine| admin::get_sku(engine, sku))
        }
        (["v1", "skus", sku], &Method::PUT) => {
            let engine = match admitting_engine(state) {
                Ok(engine) => engine,
                Err(error) => return error.into_response(),
            };
            if let Err(error) = admin::authorize(engine, &parts.headers) {
                return error.into_response();
            }
            match read_body(&parts.headers, body, state).await {
                Ok(body) => admin::put_sku(engine, sku, &body).await,
                Err(error) => error.into_response(),
            }
        }
        (["v1", "journal"], &Method::GET) => {
            let Some(engine) = state.engine() else {
                return recovering();
            };
            match admin::parse_journal_query(parts.uri.query()) {
                Ok(query) if query.follow => {
                    let Ok(permit) = state.followers.clone().try_acquire_owned() else {
                        return ApiError::new(
                            ErrorCode::Overloaded,
                            format!("{} followers are streaming; retry", limits::FOLLOWERS_MAX),
                        )
                        .into_response();
                    };
                    // A stream that would start before the oldest kept record is refused now,
                    // while a status can still say so (410), not cut short after a 200.
                    match engine.first_retained_seq() {
                        Ok(first) if query.from.saturating_add(1) < first => {
                            return journal::gone(query.from.saturating_add(1), first);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            return ApiError::new(
                                ErrorCode::Unavailable,
                                format!("journal read failed: {error}"),
                            )
                            .into_response();
                        }
                    }
                    journal::follow(
                        engine.clone(),
                        query.from,
                        state.stopping.subscribe(),
                        permit,
                    )
                }
                Ok(query) => {
                    // Each page read runs on the blocking pool: a bound on how many run at
                    // once keeps readers from starving the engine.
                    let Ok(_reader) = state.journal_readers.try_acquire() else {
                        return ApiError::new(
                            ErrorCode::Overloaded,
                            format!("{JOURNAL_READERS_MAX} journal reads are running; retry"),
                        )
                        .into_response();
                    };
                    journal::read_page(engine, &query).await
                }
                Err(error) => error.into_response(),
            }
        }
        (["v1", "consumers", group, "offset"], &Method::GET) => match state.engine() {
            Some(engine) => journal::get_offset(engine.clone(), group).await,
            None => recovering(),
        },
        (["v1", "consumers", group, "offset"], &Method::PUT) => {
            let Some(engine) = state.engine() else {
                return recovering();
            };
            // Before the body: an anonymous client moves no group and creates none.
            if let Err(error) = admin::authorize_consumer(engine, &parts.headers) {
                return error.into_response();
            }
            match read_body(&parts.headers, body, state).await {
                Ok(body) => journal::put_offset(engine.clone(), group, &body).await,
                Err(error) => error.into_response(),
            }
        }
        (["v1", "consumers", group], &Method::DELETE) => {
            let Some(engine) = state.engine() else {
                return recovering();
            };
            if let Err(error) = admin::authorize_consumer(engine, &parts.headers) {
                return error.into_response();
            }
            journal::delete_group(engine.clone(), group).await
        }
        (segments, _) => match allowed_methods(segments) {
            Some(allow) => {
                let mut response = ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    format!("{method} is not allowed on {path}; allowed: {allow}"),
                )
                .into_response();
                // RFC 9110 §15.5.6: a 405 names the methods the resource supports.
                response
                    .headers_mut()
                    .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
                response
            }
            None => ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}"))
                .into_response(),
        },
    }
}

/// The methods a routed path supports (its `Allow` header), or `None` for a path no route
/// serves. Kept beside the dispatch table above, which it mirrors.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["healthz" | "readyz" | "metrics"] => "GET",
        ["v1", "orders"] | ["v1", "skus:bulk"] | ["v1", "orders", _, _] => "POST",
        ["v1", "orders", _] | ["v1", "skus"] | ["v1", "journal"] => "GET",
        ["v1", "skus", _] | ["v1", "consumers", _, "offset"] => "GET, PUT",
        ["v1", "consumers", _] => "DELETE",
        _ => return None,
    })
}

fn recovering() -> HttpResponse {
    ApiError::new(
        ErrorCode::Unavailable,
        "recovering the journal; see /readyz",
    )
    .into_response()
}

/// The engine, if it may take new work: recovered and not draining.
fn admitting_engine(state: &AppState) -> Result<&Arc<Engine>, ApiError> {
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "draining; send to another instance",
        ));
    }
    state.engine().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "recovering the journal; see /readyz",
        )
    })
}

fn with_engine(state: &AppState, handler: impl FnOnce(&Engine) -> HttpResponse) -> HttpResponse {
    match state.engine() {
        Some(engine) => handler(engine),
        None => recovering(),
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
