//! `POST /v1/orders`: decode and validate the body, apply the buyer's rate limit, and map
//! the engine's outcome ([`Engine::place_order`], which owns every decision about the order:
//! the fast paths, routing, the shard's verdict) to the contract's status codes.
//!
//! Error precedence, first match wins: 503/429 overloaded (admission, before the body is
//! read), 413 too_large (body cap), 400 bad_request (not JSON, wrong types, missing fields),
//! 422 invalid (ids, qty, payment, address out of range), 404 unknown_sku, 429 for the
//! buyer's rate limit, a durable replay (200) or 422 idempotency_conflict from the order
//! index, 503 unavailable while the journal cannot be written, then the shard's verdict (or
//! the same checks on the fast path): 422 invalid (`qty > max_per_order`), 409 sold_out,
//! 409 purchase_limit, 201 accepted.

use crate::cluster::Cluster;
use crate::engine::{Engine, NewOrder};
use crate::http::admission::{RateLimiter, RetryAfter};
use crate::http::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::limits;
use crate::metrics::{OrderOutcomeLabel, ShedReason};
use crate::order::OrderOutcome;
use crate::order::{self, OrderStatus, Payment};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The wire shape. Every field is optional here so that a missing field is reported by name
/// as 400 rather than as serde's generic message; unknown fields are ignored (contract).
#[derive(Deserialize)]
struct OrderBody {
    order_id: Option<String>,
    user_id: Option<String>,
    sku: Option<String>,
    qty: Option<serde_json::Number>,
    payment: Option<String>,
    address: Option<Box<RawValue>>,
}

/// An integer literal too large for i64/u64, which serde_json hands over as a float: a
/// well-formed integer out of range (422), not a wrong type (400).
pub fn is_integer_beyond_64_bits(number: &serde_json::Number) -> bool {
    number
        .as_f64()
        .is_some_and(|value| value.fract() == 0.0 && value.abs() >= 9.2e18)
}

/// serde's derived decoders also accept a struct written as a JSON array of its fields; the
/// contract's bodies are objects, so anything else is refused before decoding.
pub fn require_json_object(body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::BadRequest,
            "body must be a JSON object",
        )),
    }
}

/// An `address` field (of an order, or of a `modify`) as the text to store: a JSON object of
/// at most `ADDRESS_BYTES_MAX` bytes, 400 when it is not an object, 422 when too long.
pub fn decode_address(raw: &RawValue) -> Result<String, ApiError> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "address must be a JSON object",
        ));
    }
    if text.len() > limits::ADDRESS_BYTES_MAX {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "address is {} bytes, at most {} allowed",
                text.len(),
                limits::ADDRESS_BYTES_MAX
            ),
        ));
    }
    validate_address_json(text)?;
    Ok(text.to_owned())
}

/// The address is stored as the exact text given and shown back as a JSON object, so it must
/// parse as one: the raw-value check accepts the JSON grammar only, which lets through
/// numbers out of range (`1e999`) and unpaired surrogate escapes (`"\ud800"`).
fn validate_address_json(text: &str) -> Result<(), ApiError> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(ApiError::new(
            ErrorCode::BadRequest,
            "address must be a JSON object",
        )),
        Err(error) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("address is not valid JSON: {error}"),
        )),
    }
}

/// Decodes and validates an order body (no engine state involved; unit-tested alone).
pub fn decode_order(body: &[u8]) -> Result<NewOrder, ApiError> {
    require_json_object(body)?;
    let parsed: OrderBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("body is not a valid order: {e}"),
        )
    })?;
    let missing =
        |field: &str| ApiError::new(ErrorCode::BadRequest, format!("missing field {field}"));
    let order_id = parsed.order_id.ok_or_else(|| missing("order_id"))?;
    let user_id = parsed.user_id.ok_or_else(|| missing("user_id"))?;
    let sku = parsed.sku.ok_or_else(|| missing("sku"))?;
    let qty = parsed.qty.ok_or_else(|| missing("qty"))?;

    let invalid = |detail: String| ApiError::new(ErrorCode::Invalid, detail);
    order::validate_path_id("order_id", &order_id, limits::ORDER_ID_BYTES_MAX).map_err(invalid)?;
    order::validate_path_id("user_id", &user_id, limits::ORDER_ID_BYTES_MAX).map_err(invalid)?;
    order::validate_id("sku", &sku, limits::SKU_BYTES_MAX).map_err(invalid)?;
    // One wording for every integer out of range (0, negative, too large), so a client
    // reads the same rule whatever it sent.
    let out_of_range =
        |got: &dyn std::fmt::Display| invalid(format!("qty must be 1..=max_per_order, got {got}"));
    let qty = if let Some(qty) = qty.as_u64() {
        match u32::try_from(qty) {
            Ok(qty) if qty >= 1 => qty,
            _ => return Err(out_of_range(&qty)),
        }
    } else if qty.as_i64().is_some() || is_integer_beyond_64_bits(&qty) {
        return Err(out_of_range(&qty));
    } else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("qty must be an integer, got {qty}"),
        ));
    };
    let payment = match parsed.payment.as_deref() {
        None => Payment::Prepaid,
        Some(text) => Payment::parse(text).ok_or_else(|| {
            invalid(format!(
                "payment must be prepaid, escrow or cod, got {text:?}"
            ))
        })?,
    };
    let address = match parsed.address {
        None => None,
        Some(raw) => Some(decode_address(&raw)?),
    };
    Ok(NewOrder {
        order_id,
        user_id,
        sku,
        qty,
        payment,
        address,
    })
}

#[derive(serde::Serialize)]
struct OrderReply<'a> {
    order_id: &'a str,
    status: &'static str,
    seq: u64,
    /// The review rules that held the order (order review); absent when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<Vec<&'static str>>,
    /// Cluster mode: the node whose journal holds the order (`seq` is its position there).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
}

fn order_reply(
    order_id: &str,
    status: OrderStatus,
    seq: u64,
    replayed: bool,
    node: Option<&str>,
) -> HttpResponse {
    order_reply_held(order_id, status, seq, replayed, None, node)
}

fn order_reply_held(
    order_id: &str,
    status: OrderStatus,
    seq: u64,
    replayed: bool,
    review: Option<Vec<&'static str>>,
    node: Option<&str>,
) -> HttpResponse {
    let code = if replayed {
        hyper::StatusCode::OK
    } else {
        hyper::StatusCode::CREATED
    };
    let mut response = reply::json(
        code,
        &OrderReply {
            order_id,
            status: status.as_str(),
            seq,
            review,
            node,
        },
    );
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            hyper::header::HeaderValue::from_static("true"),
        );
    }
    response
}

/// Runs the order path for a body that fit the size cap; also says what became of the order
/// (the `outcome` label of `stampede_orders_total`).
pub async fn create_order(
    engine: &Engine,
    cluster: Option<&Cluster>,
    body: &[u8],
    per_user: Option<&RateLimiter>,
    client: Option<std::net::IpAddr>,
) -> (HttpResponse, OrderOutcomeLabel) {
    match decide_order(engine, cluster, body, per_user, client).await {
        Ok(response) => {
            let outcome = if response.status() == hyper::StatusCode::CREATED {
                OrderOutcomeLabel::Accepted
            } else {
                OrderOutcomeLabel::Replayed
            };
            (response, outcome)
        }
        Err((error, shed)) => {
            let outcome = match shed {
                Some(reason) => OrderOutcomeLabel::Shed(reason),
                None => OrderOutcomeLabel::Refused(error.code),
            };
            (error.into_response(), outcome)
        }
    }
}

async fn decide_order(
    engine: &Engine,
    cluster: Option<&Cluster>,
    body: &[u8],
    per_user: Option<&RateLimiter>,
    client: Option<std::net::IpAddr>,
) -> Result<HttpResponse, (ApiError, Option<ShedReason>)> {
    let order = decode_order(body).map_err(|error| (error, None))?;
    if let Some(limiter) = per_user
        && let Err(RetryAfter(seconds)) = limiter.check(order.user_id.as_str())
    {
        let error = ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "user {:?} is over its orders-per-second limit",
                order.user_id
            ),
        )
        .retry_after(seconds);
        return Err((error, Some(ShedReason::UserRate)));
    }
    decide_decoded(engine, cluster, order, client)
        .await
        .map_err(|error| {
            let shed = (error.code == ErrorCode::Overloaded).then_some(ShedReason::ShardQueueFull);
            (error, shed)
        })
}

/// Maps the engine's outcome to the contract's answer. The reply needs the order's id and
/// the error details its SKU and quantity, which the engine takes with the order.
async fn decide_decoded(
    engine: &Engine,
    cluster: Option<&Cluster>,
    order: NewOrder,
    client: Option<std::net::IpAddr>,
) -> Result<HttpResponse, ApiError> {
    let order_id = order.order_id.clone();
    let sku = order.sku.clone();
    let qty = order.qty;
    let (outcome, node) = match cluster {
        None => (engine.place_order_from(order, client).await, None),
        Some(cluster) => (
            cluster.place_order(order, client).await,
            Some(cluster.node_id()),
        ),
    };
    match outcome {
        OrderOutcome::Held { seq, review } => Ok(order_reply_held(
            &order_id,
            OrderStatus::Held,
            seq,
            false,
            Some(review.names()),
            node,
        )),
        OrderOutcome::Denied => Err(ApiError::new(
            ErrorCode::Denied,
            "this buyer may not order in this sale; nothing was taken",
        )),
        OrderOutcome::Accepted { seq, status } => {
            Ok(order_reply(&order_id, status, seq, false, node))
        }
        OrderOutcome::Replayed { seq, status } => {
            Ok(order_reply(&order_id, status, seq, true, node))
        }
        OrderOutcome::SoldOut { available } => Err(ApiError::new(
            ErrorCode::SoldOut,
            format!("{sku} has {available} units left, {qty} asked"),
        )),
        OrderOutcome::Paused => Err(ApiError::new(
            ErrorCode::Paused,
            format!("new orders for {sku} are paused by an operator; nothing was taken"),
        )),
        OrderOutcome::PurchaseLimit { limit, bought } => Err(ApiError::new(
            ErrorCode::PurchaseLimit,
            format!("per_user_limit is {limit}; this user has {bought} and asked for {qty} more"),
        )),
        OrderOutcome::IdempotencyConflict => Err(idempotency_conflict(&order_id)),
        OrderOutcome::QtyOverMax { max_per_order } => Err(ApiError::new(
            ErrorCode::Invalid,
            format!("qty {qty} is more than max_per_order {max_per_order}"),
        )),
        OrderOutcome::UnknownSku => Err(ApiError::new(
            ErrorCode::UnknownSku,
            format!("no sku {sku:?}"),
        )),
        OrderOutcome::Overloaded { retry_after_s } => Err(ApiError::new(
            ErrorCode::Overloaded,
            "shard queue is full; retry shortly",
        )
        .retry_after(retry_after_s)),
        OrderOutcome::Unavailable { reason } => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("nothing was taken: {reason}"),
        )),
    }
}

fn idempotency_conflict(order_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyConflict,
        format!("order_id {order_id:?} was already used with different content"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(body: &str) -> ErrorCode {
        decode_order(body.as_bytes()).unwrap_err().code
    }

    #[test]
    fn a_full_order_decodes_with_its_address_kept_as_given() {
        let order = decode_order(
            br#"{"order_id":"u42-1","user_id":"u42","sku":"SKU-1","qty":2,"payment":"cod","address":{"city": "Oslo"},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(order.qty, 2);
        assert_eq!(order.payment, Payment::Cod);
        assert_eq!(order.address.as_deref(), Some(r#"{"city": "Oslo"}"#));
        let order = decode_order(br#"{"order_id":"a","user_id":"b","sku":"c","qty":1}"#).unwrap();
        assert_eq!(order.payment, Payment::Prepaid);
        assert_eq!(order.address, None);
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        assert_eq!(code_of("not json"), ErrorCode::BadRequest);
        assert_eq!(code_of("[]"), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"["a","b","c",1,"prepaid",null]"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of(""), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"user_id":"b","sku":"c","qty":1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"order_id":1,"user_id":"b","sku":"c","qty":1}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":"1"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":1.5}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":1,"address":"x"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":1} trailing"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn well_formed_but_out_of_range_bodies_are_invalid() {
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":0}"#),
            ErrorCode::Invalid
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":-1}"#),
            ErrorCode::Invalid
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":1000000000000000000000000}"#),
            ErrorCode::Invalid
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":99999999999}"#),
            ErrorCode::Invalid
        );
        assert_eq!(
            code_of(r#"{"order_id":"","user_id":"b","sku":"c","qty":1}"#),
            ErrorCode::Invalid
        );
        let long = "x".repeat(65);
        assert_eq!(
            code_of(&format!(
                r#"{{"order_id":"{long}","user_id":"b","sku":"c","qty":1}}"#
            )),
            ErrorCode::Invalid
        );
        assert_eq!(
            code_of(r#"{"order_id":"a b","user_id":"b","sku":"c","qty":1}"#),
            ErrorCode::Invalid
        );
        let long_sku = "S".repeat(33);
        assert_eq!(
            code_of(&format!(
                r#"{{"order_id":"a","user_id":"b","sku":"{long_sku}","qty":1}}"#
            )),
            ErrorCode::Invalid
        );
        assert_eq!(
            code_of(r#"{"order_id":"a","user_id":"b","sku":"c","qty":1,"payment":"card"}"#),
            ErrorCode::Invalid
        );
        let big = format!(
            r#"{{"order_id":"a","user_id":"b","sku":"c","qty":1,"address":{{"x":"{}"}}}}"#,
            "y".repeat(1100)
        );
        assert_eq!(code_of(&big), ErrorCode::Invalid);
    }
}
