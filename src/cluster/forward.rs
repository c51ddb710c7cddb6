//! Requests that another node must answer: a new order whose buyer another node owns, and a
//! question about an order this node does not hold. One pooled keep-alive HTTP/1 client for
//! every peer; a forwarded request carries [`FORWARDED_BY`], so the peer answers it itself
//! and never forwards it again.
//!
//! When a peer cannot answer (refused, reset, past [`limits::FORWARD_TIMEOUT`]) the caller
//! gets [`ForwardError`], which HTTP answers 503 `unavailable` with `Retry-After`: the order
//! is never decided elsewhere, so a buyer is never sold to twice (a retry is idempotent).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::ClusterNode;
use crate::http::reply::{HttpResponse, ResponseBody};
use crate::limits;

/// Set on a request one node sends another; its value is the sender's node id.
pub const FORWARDED_BY: &str = "x-stampede-forwarded-by";

/// Headers a forwarded request keeps: what the peer's handler reads.
const KEPT_REQUEST_HEADERS: [&str; 5] = [
    "content-type",
    "authorization",
    "idempotency-key",
    "x-forwarded-for",
    "forwarded",
];

/// Largest answer read back from a peer (an order's history is the largest, a few hundred
/// KiB at most).
const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("node {node} ({address}) did not answer: {reason}")]
pub struct ForwardError {
    pub node: String,
    pub address: String,
    pub reason: String,
}

pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    me: String,
}

impl Forwarder {
    pub fn new(me: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(limits::FORWARD_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(limits::FORWARD_IDLE_PER_NODE)
            .build(connector);
        Self {
            client,
            me: me.to_owned(),
        }
    }

    /// Sends the request to `node` and returns its answer as this node's answer.
    pub async fn forward(
        &self,
        node: &ClusterNode,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<HttpResponse, ForwardError> {
        let fail = |reason: String| ForwardError {
            node: node.id.clone(),
            address: node.address.clone(),
            reason,
        };
        let uri = format!("http://{}{}", node.address, path_and_query);
        let mut request = Request::builder().method(method.clone()).uri(uri);
        for name in KEPT_REQUEST_HEADERS {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value);
            }
        }
        let request = request
            .header(FORWARDED_BY, self.me.as_str())
            .body(Full::new(body))
            .map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            Ok::<_, ForwardError>((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(limits::FORWARD_TIMEOUT, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {:?}", limits::FORWARD_TIMEOUT)))??;
        let mut response = hyper::Response::new(ResponseBody::Full(Full::new(bytes)));
        *response.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if is_end_to_end(name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        Ok(response)
    }
}

/// Headers that describe the answer itself, not the peer's connection (RFC 9110 §7.6.1).
fn is_end_to_end(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "date"
    )
}

/// Whether a request came from another node.
pub fn forwarded_by(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(FORWARDED_BY)
        .and_then(|value: &HeaderValue| value.to_str().ok())
}

/// Whether a peer's answer says it does not hold the order (so another node may).
pub fn is_unknown_order(response: &HttpResponse) -> bool {
    response.status() == StatusCode::NOT_FOUND
}
