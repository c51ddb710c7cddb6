//! `POST /v1/orders`: decode and validate the body, compute the order's fixed-width keys,
//! answer sold-out on the fast path, otherwise hand the order to its shard and await the
//! outcome.
//!
//! Error precedence, first match wins: 503/429 overloaded (admission, before the body is
//! read), 413 too_large (body cap), 400 bad_request (not JSON, wrong types, missing fields),
//! 422 invalid (ids, qty, payment, address out of range), 404 unknown_sku, 429 for the
//! buyer's rate limit, a durable replay (200) or 422 idempotency_conflict from the order
//! index, 503 unavailable while the journal cannot be written, then the shard's verdict (or
//! the same checks on the fast path): 422 invalid (`qty > max_per_order`), 409 sold_out,
//! 409 purchase_limit, 201 accepted.

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::engine::{Engine, SubmitError};
use crate::http::admission::{RateLimiter, RetryAfter};
use crate::http::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::inventory::DedupCheck;
use crate::journal::OrderAccepted;
use crate::limits;
use crate::metrics::ShedReason;
use crate::order::{self, OrderStatus, Payment};
use crate::shard::{OrderCommand, OrderOutcome};

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

/// A decoded order that passed every check that needs no engine state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    pub order_id: String,
    pub user_id: String,
    pub sku: String,
    pub qty: u32,
    pub payment: Payment,
    pub address: Option<String>,
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
pub fn decode_order(body: &[u8]) -> Result<ValidOrder, ApiError> {
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
    Ok(ValidOrder {
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
}

fn order_reply(order_id: &str, status: OrderStatus, seq: u64, replayed: bool) -> HttpResponse {
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
    body: &[u8],
    per_user: Option<&RateLimiter>,
) -> (HttpResponse, OrderOutcomeLabel) {
    match decide_order(engine, body, per_user).await {
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
    body: &[u8],
    per_user: Option<&RateLimiter>,
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
    decide_decoded(engine, order).await.map_err(|error| {
        let shed = (error.code == ErrorCode::Overloaded).then_some(ShedReason::ShardQueueFull);
        (error, shed)
    })
}

async fn decide_decoded(engine: &Engine, order: ValidOrder) -> Result<HttpResponse, ApiError> {
    let Some(slot_index) = engine.slot_of(&order.sku) else {
        return Err(ApiError::new(
            ErrorCode::UnknownSku,
            format!("no sku {:?}", order.sku),
        ));
    };
    let keys = &engine.keys;
    let key = keys.order_key(&order.order_id);
    let fingerprint = keys.content_fingerprint(
        &order.user_id,
        &order.sku,
        order.qty,
        order.payment,
        order.address.as_deref(),
    );
    // A retry of a durable order (or a reuse of its id) is answered here, with no shard trip:
    // it needs no write, so it is served even when the journal has stopped admission or the
    // shard's mailbox is full. A pending original is the shard's to answer.
    let known = match engine.orders.lookup(key, fingerprint) {
        DedupCheck::New => false,
        DedupCheck::Retry { seq: Some(seq) } => {
            let status = order.payment.initial_status();
            return Ok(order_reply(&order.order_id, status, seq, true));
        }
        DedupCheck::Conflict => return Err(idempotency_conflict(&order.order_id)),
        DedupCheck::Retry { seq: None } => true,
    };
    if engine.journal.is_stopped() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "journal cannot be written; admission stopped",
        ));
    }
    // Fast path: an order that cannot succeed is answered here, without a trip through the
    // shard, unless it may be a retry of an order that got in (the shard answers that one).
    // Same precedence as the shard: max_per_order, then stock.
    let slot = engine.inventory.slot(slot_index);
    let (available, max_per_order) = (slot.available(), slot.max_per_order());
    let qty = u64::from(order.qty);
    let refusable = qty > u64::from(max_per_order) || available < qty;
    // The index was read before the stock: an original still in the mailbox then may have
    // taken the last unit since. The shard inserts an order's index entry before it
    // publishes the stock (`available` is stored with Release, read with Acquire), so a stock
    // read that saw the take sees the entry now: look again before refusing what may be a
    // retry of an order that got in.
    let known = known
        || (refusable
            && match engine.orders.lookup(key, fingerprint) {
                DedupCheck::New => false,
                DedupCheck::Retry { seq: Some(seq) } => {
                    let status = order.payment.initial_status();
                    return Ok(order_reply(&order.order_id, status, seq, true));
                }
                DedupCheck::Conflict => return Err(idempotency_conflict(&order.order_id)),
                DedupCheck::Retry { seq: None } => true,
            });
    if refusable && !known {
        if qty > u64::from(max_per_order) {
            return Err(qty_over_max(order.qty, max_per_order));
        }
        return Err(sold_out(&order.sku, order.qty, available));
    }
    let purchase_key = keys.purchase_key(&order.user_id, &order.sku);
    let (reply_sender, reply_receiver) = oneshot::channel();
    let ValidOrder {
        order_id,
        user_id,
        sku,
        qty,
        payment,
        address,
    } = order;
    // The id is needed for the reply body after the strings moved into the record.
    let order_id_for_reply = order_id.clone();
    let command = OrderCommand {
        order: OrderAccepted {
            order_id,
            user_id,
            sku,
            qty,
            payment,
            address,
        },
        slot_index,
        key,
        fingerprint,
        purchase_key,
        reply: reply_sender,
    };
    match engine.submit_order(command) {
        Ok(()) => {}
        Err(SubmitError::Overloaded) => {
            let shard = crate::shard::shard_of(slot_index, engine.shard_count());
            return Err(
                ApiError::new(ErrorCode::Overloaded, "shard queue is full; retry shortly")
                    .retry_after(engine.retry_after_s(Some(shard), 0)),
            );
        }
        Err(SubmitError::Stopped) => {
            return Err(ApiError::new(ErrorCode::Unavailable, "engine is stopping"));
        }
    }
    let Ok(outcome) = reply_receiver.await else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "shard stopped before answering",
        ));
    };
    let order_id = order_id_for_reply;
    match outcome {
        OrderOutcome::Accepted { seq, status } => Ok(order_reply(&order_id, status, seq, false)),
        OrderOutcome::Replayed { seq, status } => Ok(order_reply(&order_id, status, seq, true)),
        OrderOutcome::SoldOut { available } => {
            let sku = engine_sku_name(engine, slot_index);
            Err(sold_out(&sku, qty, available))
        }
        OrderOutcome::PurchaseLimit { limit, bought } => Err(ApiError::new(
            ErrorCode::PurchaseLimit,
            format!("per_user_limit is {limit}; this user has {bought} and asked for {qty} more"),
        )),
        OrderOutcome::IdempotencyConflict => Err(idempotency_conflict(&order_id)),
        OrderOutcome::QtyOverMax { max_per_order } => Err(qty_over_max(qty, max_per_order)),
        OrderOutcome::Unavailable { reason } => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("nothing was taken: {reason}"),
        )),
    }
}

fn engine_sku_name(engine: &Engine, slot_index: u32) -> String {
    engine
        .inventory
        .slot(slot_index)
        .sku_name()
        .unwrap_or_default()
}

fn idempotency_conflict(order_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyConflict,
        format!("order_id {order_id:?} was already used with different content"),
    )
}

fn qty_over_max(qty: u32, max_per_order: u32) -> ApiError {
    ApiError::new(
        ErrorCode::Invalid,
        format!("qty {qty} is more than max_per_order {max_per_order}"),
    )
}

fn sold_out(sku: &str, qty: u32, available: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SoldOut,
        format!("{sku} has {available} units left, {qty} asked"),
    )
}

/// What became of one `POST /v1/orders`, for `stampede_orders_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcomeLabel {
    Accepted,
    Replayed,
    /// Answered with this error code (sold out, limit, conflict, invalid, ...).
    Refused(ErrorCode),
    /// Shed by admission control (`overloaded`: 503 from the queue-delay gate, 429 from the
    /// other gates), and why.
    Shed(ShedReason),
}

impl OrderOutcomeLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Replayed => "replayed",
            Self::Refused(code) => code.as_str(),
            Self::Shed(_) => ErrorCode::Overloaded.as_str(),
        }
    }
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
