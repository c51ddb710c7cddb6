//! The HTTP edge in cluster mode ([`crate::cluster`]): what a node answers itself, what it
//! forwards, and the SKU endpoints that speak for the whole cluster.
//!
//! - `POST /v1/orders`: the node that owns the buyer decides; another node forwards the
//!   body there and returns its answer (503 `unavailable` with `Retry-After` when the owner
//!   cannot answer: never decided elsewhere).
//! - `GET /v1/orders/{id}` and actions: answered here when this node holds the order, else
//!   asked of every other node at once (only the node that holds it acts; the others answer
//!   404 and change nothing).
//! - `PUT/GET /v1/skus/{sku}`, `GET /v1/skus`, `POST /v1/skus:bulk`: the global stock.
//!
//! - `POST /v1/skus/{sku}/pause|resume` and `PUT /v1/review/rules`: a node's own journaled
//!   settings, applied here and then sent to every other node, so any node may take them.
//!
//! A request that another node sent ([`forward::FORWARDED_BY`]) is always answered here and
//! never forwarded again, so no request travels more than one hop.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::http::request::Parts;

use super::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::cluster::Cluster;
use crate::cluster::forward::{self, ForwardError};
use crate::cluster::store::GlobalSkuUpdate;
use crate::engine::{PutSkuError, SkuView};
use crate::limits;
use crate::order;
use crate::shard::SkuUpdate;

/// Whether this request came from another node (and so must be answered here).
pub fn is_forwarded(parts: &Parts) -> bool {
    forward::forwarded_by(&parts.headers).is_some()
}

fn unreachable_peer(error: &ForwardError) -> HttpResponse {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("{error}; nothing was decided, retry"),
    )
    .retry_after(limits::RETRY_AFTER_S)
    .into_response()
}

/// `POST /v1/orders` on a node that does not own the buyer: the owner's answer. `None`
/// when this node decides (it owns the buyer, or the body does not decode: the local
/// decoder gives the same 400/422 as any node would).
pub async fn forward_order(
    cluster: &Cluster,
    parts: &Parts,
    body: &Bytes,
    client: std::net::IpAddr,
) -> Option<HttpResponse> {
    let order = super::orders::decode_order(body).ok()?;
    let owner = cluster.membership().owner_of(&order.user_id);
    if owner.id == cluster.node_id() {
        return None;
    }
    if let Some(sender) = forward::forwarded_by(&parts.headers) {
        // Nodes disagree on the membership: deciding here could accept what the owner
        // accepts too.
        return Some(
            ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "node {sender} forwarded an order of a buyer that node {} owns by this \
                     node's cluster.nodes: the nodes' membership lists differ",
                    owner.id
                ),
            )
            .into_response(),
        );
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/v1/orders", |p| p.as_str());
    Some(
        match cluster
            .forwarder()
            .forward(
                owner,
                &parts.method,
                path,
                &client_headers(parts, client),
                body.clone(),
            )
            .await
        {
            Ok(response) => response,
            Err(error) => unreachable_peer(&error),
        },
    )
}

/// The request's headers with the buyer's address (as this node resolved it, trusted proxies
/// applied) as the only forwarded-for: the owner's order review sees the buyer, not this
/// node, when it lists the nodes in `http.trusted_proxies`.
fn client_headers(parts: &Parts, client: std::net::IpAddr) -> hyper::HeaderMap {
    let mut headers = parts.headers.clone();
    headers.remove("forwarded");
    if let Ok(value) = hyper::header::HeaderValue::from_str(&client.to_string()) {
        headers.insert("x-forwarded-for", value);
    }
    headers
}

/// An order request this node answered 404 (`local`): asked of every other node at once;
/// the answer of the node that holds it, else `local`. 503 when some node could not answer
/// and none holds it.
pub async fn ask_peers(
    cluster: &Cluster,
    parts: &Parts,
    body: Bytes,
    local: HttpResponse,
) -> HttpResponse {
    if is_forwarded(parts) || !forward::is_unknown_order(&local) {
        return local;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let asks = cluster.membership().peers().map(|peer| {
        cluster
            .forwarder()
            .forward(peer, &parts.method, path, &parts.headers, body.clone())
    });
    let mut unreachable = None;
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(response) if !forward::is_unknown_order(&response) => return response,
            Ok(_) => {}
            Err(error) => unreachable = Some(error),
        }
    }
    match unreachable {
        Some(error) => unreachable_peer(&error),
        None => local,
    }
}

/// A setting each node journals for itself (a SKU's pause, the review rules), applied here
/// with `local` as the answer: sent on to every other node when it succeeded here. 503 naming
/// the nodes that did not take it (the change is idempotent: the operator repeats it).
pub async fn broadcast(
    cluster: &Cluster,
    parts: &Parts,
    body: Bytes,
    local: HttpResponse,
) -> HttpResponse {
    if is_forwarded(parts) || local.status() != StatusCode::OK {
        return local;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let peers: Vec<_> = cluster.membership().peers().collect();
    let sends = peers.iter().map(|peer| {
        cluster
            .forwarder()
            .forward(peer, &parts.method, path, &parts.headers, body.clone())
    });
    let mut missing = Vec::new();
    for (peer, answer) in peers
        .iter()
        .zip(futures_util::future::join_all(sends).await)
    {
        match answer {
            Ok(response) if response.status() == StatusCode::OK => {}
            Ok(response) => missing.push(format!("{} ({})", peer.id, response.status())),
            Err(error) => missing.push(format!("{} ({})", peer.id, error.reason)),
        }
    }
    if missing.is_empty() {
        return local;
    }
    ApiError::new(
        ErrorCode::Unavailable,
        format!(
            "applied on {} but not on {}: repeat the request (it is idempotent)",
            cluster.node_id(),
            missing.join(", ")
        ),
    )
    .into_response()
}

fn global_update(update: &SkuUpdate) -> GlobalSkuUpdate {
    GlobalSkuUpdate {
        stock: update.stock,
        per_user_limit: update.per_user_limit,
        max_per_order: update.max_per_order,
        payment_timeout_s: update.payment_timeout_s,
    }
}

fn redis_unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("the cluster's stock cannot be reached: {error}"),
    )
}

/// One SKU change for the whole cluster, as the single engine's answer would be.
pub async fn put_global(
    cluster: &Cluster,
    sku: &str,
    update: &SkuUpdate,
) -> Result<SkuView, ApiError> {
    match cluster
        .shares()
        .put_global(sku, &global_update(update))
        .await
    {
        Ok(Ok(view)) => Ok(view),
        Ok(Err(held)) => Err(super::admin::put_sku_error(PutSkuError::StockConflict {
            committed: held,
        })
        .with_detail(format!(
            "the nodes hold {held} units of {sku} (sold, reserved, or in their shares); the \
             total cannot go below that until idle shares come back"
        ))),
        Err(error) => Err(redis_unavailable(error)),
    }
}

/// `PUT /v1/skus/{sku}` in cluster mode.
pub async fn put_sku(cluster: &Cluster, sku: &str, body: &[u8]) -> HttpResponse {
    if let Err(detail) = order::validate_id("sku", sku, limits::SKU_BYTES_MAX) {
        return ApiError::new(ErrorCode::Invalid, detail).into_response();
    }
    let update = match super::admin::decode_sku_update(body) {
        Ok(update) => update,
        Err(error) => return error.into_response(),
    };
    match put_global(cluster, sku, &update).await {
        Ok(view) => reply::json(StatusCode::OK, &view),
        Err(error) => error.into_response(),
    }
}

/// `GET /v1/skus/{sku}` in cluster mode: the global figures.
pub async fn get_sku(cluster: &Cluster, sku: &str) -> HttpResponse {
    match cluster.shares().global_view(sku).await {
        Ok(Some(view)) => reply::json(StatusCode::OK, &view),
        Ok(None) => ApiError::new(ErrorCode::UnknownSku, format!("no sku {sku:?}")).into_response(),
        Err(error) => redis_unavailable(error).into_response(),
    }
}

/// `GET /v1/skus` in cluster mode: the cluster's catalogue with global figures, by name.
pub async fn list_skus(cluster: &Cluster, query: Option<&str>) -> HttpResponse {
    let (after, limit) = match super::admin::parse_sku_page_query(query) {
        Ok(page) => page,
        Err(error) => return error.into_response(),
    };
    let names = match cluster.store().sku_names().await {
        Ok(names) => names,
        Err(error) => return redis_unavailable(error).into_response(),
    };
    let mut page = Vec::new();
    for name in names
        .iter()
        .filter(|name| name.as_str() > after.as_str())
        .take(limit)
    {
        match cluster.shares().global_view(name).await {
            Ok(Some(view)) => page.push(view),
            Ok(None) => {}
            Err(error) => return redis_unavailable(error).into_response(),
        }
    }
    let next_after = (page.len() == limit).then(|| page.last().map(|view| view.sku.clone()));
    reply::json(
        StatusCode::OK,
        &serde_json::json!({ "skus": page, "next_after": next_after.flatten() }),
    )
}
