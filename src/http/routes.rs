//! Routing: a request's path and method to its handler ([`dispatch`]), with the admission and
//! engine checks each route group makes before it reads a body.
//!
//! [`dispatch`] is the route table; it names one handler per route, grouped below as
//! operations (`/metrics`, `/healthz`, `/readyz`), orders, SKUs, the journal and consumer
//! groups. The precedence of checks within a route is the handler's, in this order where a
//! route makes them: the path (an unknown action is 404), the engine (503 while recovering or
//! draining), admission (503/429), authorization (401/403), then the body (413/408/400).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Method, Request, StatusCode};

use super::admission::{self, RetryAfter};
use super::reply::{self, ApiError, ErrorCode, HttpResponse};
use super::{
    AppState, admin, bulk, cluster, console, events, journal, lifecycle, orders, read_body, review,
};
use crate::engine::Engine;
use crate::limits::{self, JOURNAL_READERS_MAX};
use crate::metrics::{ActionResult, OrderOutcomeLabel, Route, ShedReason};
use crate::order::Action;

/// The metrics series a request belongs to, from its path segments.
fn route_label(segments: &[&str], method: &Method) -> Route {
    match (segments, method) {
        (["v1", "orders"], &Method::POST) => Route::CreateOrder,
        (["v1", "orders", _, _], &Method::POST) => Route::OrderAction,
        (["v1", "orders", _], &Method::GET) => Route::GetOrder,
        (["v1", "skus", ..] | ["v1", "skus:bulk"], _) => Route::Skus,
        (["v1", "journal"], _) => Route::Journal,
        (["v1", "consumers", ..], _) => Route::Consumers,
        (["v1", "reviews"] | ["v1", "review", ..], _) => Route::Other,
        (["healthz" | "readyz"], _) => Route::Health,
        (["metrics"], _) => Route::Metrics,
        _ => Route::Other,
    }
}

pub(super) async fn route(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    peer: IpAddr,
) -> HttpResponse {
    // From here on `peer` is the client: the forwarded one when a trusted proxy sent it.
    let peer = state.trusted_proxies.client(peer, request.headers());
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
    parts: &Parts,
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
    let body = match read_body(&parts.headers, body, state).await {
        Ok(body) => body,
        Err(error) => return refused(error),
    };
    let cluster = state.cluster().map(|cluster| &**cluster);
    if let Some(cluster) = cluster
        && let Some(response) = cluster::forward_order(cluster, parts, &body, peer).await
    {
        return (response, OrderOutcomeLabel::Forwarded);
    }
    let per_user = state.admission.per_user.as_ref();
    orders::create_order(engine, cluster, &body, per_user, Some(peer)).await
}

/// The route table: each (path, method) a handler serves; anything else is 405 (a known
/// path, with `Allow`) or 404.
async fn dispatch(state: &Arc<AppState>, request: Request<Incoming>, peer: IpAddr) -> HttpResponse {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let method = &parts.method;
    let (segments, segment_count) = path_segments(path);
    match (&segments[..segment_count], method) {
        // Operations.
        (["metrics"], &Method::GET) => scrape_metrics(state),
        (["healthz"], &Method::GET) => {
            reply::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (["readyz"], &Method::GET) => readyz(state),
        // The event console.
        (["console"], &Method::GET) => console::page(),
        (["v1", "events"], &Method::GET) => get_events(state, &parts),
        // Orders.
        (["v1", "orders"], &Method::POST) => {
            let (response, outcome) = post_order(state, &parts, body, peer).await;
            if let Some(metrics) = &state.metrics {
                metrics.count_order(outcome);
            }
            response
        }
        (["v1", "orders", order_id], &Method::GET) => match state.engine() {
            Some(engine) => {
                let local = lifecycle::get_order(engine, order_id).await;
                match state.cluster() {
                    Some(cluster) => cluster::ask_peers(cluster, &parts, Bytes::new(), local).await,
                    None => local,
                }
            }
            None => recovering(),
        },
        (["v1", "orders", order_id, action], &Method::POST) => {
            post_action(state, &parts, body, peer, order_id, action).await
        }
        // SKUs.
        (["v1", "skus:bulk"], &Method::POST) => post_skus_bulk(state, &parts, body).await,
        (["v1", "skus"], &Method::GET) => match state.cluster() {
            Some(cluster) => cluster::list_skus(cluster, parts.uri.query()).await,
            None => with_engine(state, |engine| admin::list_skus(engine, parts.uri.query())),
        },
        (["v1", "skus", sku], &Method::GET) => match state.cluster() {
            Some(cluster) => cluster::get_sku(cluster, sku).await,
            None => with_engine(state, |engine| admin::get_sku(engine, sku)),
        },
        (["v1", "skus", sku], &Method::PUT) => put_sku(state, &parts, body, sku).await,
        (["v1", "skus", sku, verb @ ("pause" | "resume")], &Method::POST) => {
            pause_sku(state, &parts, sku, *verb == "pause").await
        }
        // The journal and consumer groups.
        (["v1", "journal"], &Method::GET) => get_journal(state, &parts).await,
        (["v1", "consumers", group, "offset"], &Method::GET) => match state.engine() {
            Some(engine) => journal::get_offset(engine.clone(), group).await,
            None => recovering(),
        },
        (["v1", "consumers", group, "offset"], &Method::PUT) => {
            put_offset(state, &parts, body, group).await
        }
        (["v1", "consumers", group], &Method::DELETE) => delete_group(state, &parts, group).await,
        // Order review.
        (["v1", "reviews"], &Method::GET) => {
            let query = parts.uri.query();
            with_admin(state, &parts, |engine| review::list_held(engine, query)).await
        }
        (["v1", "review", "rules"], &Method::GET) => {
            with_admin(
                state,
                &parts,
                |engine| async move { review::get_rules(engine) },
            )
            .await
        }
        (["v1", "review", "rules"], &Method::PUT) => put_review_rules(state, &parts, body).await,
        (segments, _) => not_routed(segments, method, path),
    }
}

// ---- order review -------------------------------------------------------------------------

/// Runs an admin read (`GET /v1/reviews`, `GET /v1/review/rules`) once the engine is up and
/// the admin token checks.
async fn with_admin<'a, F, Fut>(state: &'a AppState, parts: &Parts, handler: F) -> HttpResponse
where
    F: FnOnce(&'a Arc<Engine>) -> Fut,
    Fut: std::future::Future<Output = HttpResponse>,
{
    let Some(engine) = state.engine() else {
        return recovering();
    };
    if let Err(error) = admin::authorize(engine, &parts.headers) {
        return error.into_response();
    }
    handler(engine).await
}

/// `PUT /v1/review/rules`: the engine, the admin token, then the body.
async fn put_review_rules(state: &AppState, parts: &Parts, body: Incoming) -> HttpResponse {
    let engine = match admitting_engine(state) {
        Ok(engine) => engine,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = admin::authorize(engine, &parts.headers) {
        return error.into_response();
    }
    match read_body(&parts.headers, body, state).await {
        Ok(body) => {
            let local = review::put_rules(engine, &body).await;
            match state.cluster() {
                Some(cluster) => cluster::broadcast(cluster, parts, body, local).await,
                None => local,
            }
        }
        Err(error) => error.into_response(),
    }
}

// ---- operations ---------------------------------------------------------------------------

/// `GET /metrics`: the gauges set at scrape time, then the HTTP and engine registries.
fn scrape_metrics(state: &AppState) -> HttpResponse {
    let Some(metrics) = &state.metrics else {
        return ApiError::new(
            ErrorCode::NotFound,
            "metrics are disabled (metrics.enabled)",
        )
        .into_response();
    };
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
            metrics
                .rate_untracked
                .with_label_values(&[limit])
                .set(limiter.untracked.load(Ordering::Relaxed) as i64);
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

/// `GET /readyz`: 200 once recovered, 503 with the reason while not ready.
fn readyz(state: &AppState) -> HttpResponse {
    match state.not_ready_reason() {
        None => reply::json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Some(reason) => reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": reason}),
        ),
    }
}

/// `GET /v1/events`: the console's snapshots, with the admin token.
fn get_events(state: &Arc<AppState>, parts: &Parts) -> HttpResponse {
    let Some(engine) = state.engine() else {
        return recovering();
    };
    if state.draining.load(Ordering::Acquire) {
        return ApiError::new(ErrorCode::Unavailable, "draining; send to another instance")
            .into_response();
    }
    if let Err(error) = admin::authorize(engine, &parts.headers) {
        return error.into_response();
    }
    events::subscribe(state)
}

// ---- orders -------------------------------------------------------------------------------

/// `POST /v1/orders/{id}/{action}`: the action's name, the engine, admission, then the body;
/// counted by action and result.
async fn post_action(
    state: &AppState,
    parts: &Parts,
    body: Incoming,
    peer: IpAddr,
    order_id: &str,
    action: &str,
) -> HttpResponse {
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
    // Approve and reject are a reviewer's (order review): the admin token first.
    if action.needs_admin()
        && let Err(error) = admin::authorize(engine, &parts.headers)
    {
        return error.into_response();
    }
    let _in_flight = match admit(state, engine, peer, Work::Action) {
        Ok(slot) => slot,
        Err((error, reason)) => {
            if let Some(metrics) = &state.metrics {
                metrics.count_shed(reason);
            }
            return error.into_response();
        }
    };
    let body = match read_body(&parts.headers, body, state).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let mut response =
        lifecycle::order_action(engine, order_id, action, &parts.headers, &body).await;
    if let Some(cluster) = state.cluster() {
        response = cluster::ask_peers(cluster, parts, body, response).await;
    }
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

// ---- SKUs ---------------------------------------------------------------------------------

/// `POST /v1/skus:bulk`: the engine, the admin token, then the (larger) body.
async fn post_skus_bulk(state: &AppState, parts: &Parts, body: Incoming) -> HttpResponse {
    let engine = match admitting_engine(state) {
        Ok(engine) => engine,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = admin::authorize(engine, &parts.headers) {
        return error.into_response();
    }
    match bulk::read_body(&parts.headers, body, state).await {
        Ok(body) => {
            let cluster = state.cluster().map(|cluster| &**cluster);
            bulk::load(engine, cluster, &parts.headers, &body).await
        }
        Err(error) => error.into_response(),
    }
}

/// `PUT /v1/skus/{sku}`: the engine, the admin token, then the body.
async fn put_sku(state: &AppState, parts: &Parts, body: Incoming, sku: &str) -> HttpResponse {
    let engine = match admitting_engine(state) {
        Ok(engine) => engine,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = admin::authorize(engine, &parts.headers) {
        return error.into_response();
    }
    match read_body(&parts.headers, body, state).await {
        Ok(body) => match state.cluster() {
            Some(cluster) => cluster::put_sku(cluster, sku, &body).await,
            None => admin::put_sku(engine, sku, &body).await,
        },
        Err(error) => error.into_response(),
    }
}

/// `POST /v1/skus/{sku}/pause` and `/resume`: the engine, then the admin token (no body).
async fn pause_sku(state: &AppState, parts: &Parts, sku: &str, paused: bool) -> HttpResponse {
    let engine = match admitting_engine(state) {
        Ok(engine) => engine,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = admin::authorize(engine, &parts.headers) {
        return error.into_response();
    }
    let local = admin::pause_sku(engine, sku, paused).await;
    match state.cluster() {
        Some(cluster) => cluster::broadcast(cluster, parts, Bytes::new(), local).await,
        None => local,
    }
}

// ---- the journal and consumer groups ------------------------------------------------------

/// `GET /v1/journal`: a page (bounded by the concurrent readers) or, with `follow=true`, a
/// stream (bounded by the followers, refused with 410 before the oldest kept record).
async fn get_journal(state: &AppState, parts: &Parts) -> HttpResponse {
    let Some(engine) = state.engine() else {
        return recovering();
    };
    let query = match admin::parse_journal_query(parts.uri.query()) {
        Ok(query) => query,
        Err(error) => return error.into_response(),
    };
    if !query.follow {
        // Each page read runs on the blocking pool: a bound on how many run at once keeps
        // readers from starving the engine.
        let Ok(_reader) = state.journal_readers.try_acquire() else {
            return ApiError::new(
                ErrorCode::Overloaded,
                format!("{JOURNAL_READERS_MAX} journal reads are running; retry"),
            )
            .into_response();
        };
        return journal::read_page(engine, &query).await;
    }
    let Ok(permit) = state.followers.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::Overloaded,
            format!("{} followers are streaming; retry", limits::FOLLOWERS_MAX),
        )
        .into_response();
    };
    // A stream that would start before the oldest kept record is refused now, while a
    // status can still say so (410), not cut short after a 200.
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

/// `PUT /v1/consumers/{group}/offset`: the consumer token before the body (an anonymous
/// client moves no group and creates none).
async fn put_offset(state: &AppState, parts: &Parts, body: Incoming, group: &str) -> HttpResponse {
    let Some(engine) = state.engine() else {
        return recovering();
    };
    if let Err(error) = admin::authorize_consumer(engine, &parts.headers) {
        return error.into_response();
    }
    match read_body(&parts.headers, body, state).await {
        Ok(body) => journal::put_offset(engine.clone(), group, &body).await,
        Err(error) => error.into_response(),
    }
}

/// `DELETE /v1/consumers/{group}`: with the consumer token.
async fn delete_group(state: &AppState, parts: &Parts, group: &str) -> HttpResponse {
    let Some(engine) = state.engine() else {
        return recovering();
    };
    if let Err(error) = admin::authorize_consumer(engine, &parts.headers) {
        return error.into_response();
    }
    journal::delete_group(engine.clone(), group).await
}

// ---- no route -----------------------------------------------------------------------------

/// 405 with `Allow` for a routed path asked with another method, else 404.
fn not_routed(segments: &[&str], method: &Method, path: &str) -> HttpResponse {
    match allowed_methods(segments) {
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
    }
}

/// The methods a routed path supports (its `Allow` header), or `None` for a path no route
/// serves. Kept beside the dispatch table above, which it mirrors.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["healthz" | "readyz" | "metrics" | "console"] | ["v1", "events"] => "GET",
        ["v1", "orders"] | ["v1", "skus:bulk"] | ["v1", "orders", _, _] => "POST",
        ["v1", "orders", _] | ["v1", "skus"] | ["v1", "journal"] | ["v1", "reviews"] => "GET",
        ["v1", "review", "rules"] => "GET, PUT",
        ["v1", "skus", _, "pause" | "resume"] => "POST",
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
