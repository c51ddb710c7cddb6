//! `GET /v1/orders/{id}` and `POST /v1/orders/{id}/{action}`: an order's life after it was
//! accepted. The action is decoded here; the order's shard decides it ([`crate::shard`]);
//! the answer is the order as `GET` shows it, read back from the journal.
//!
//! Error precedence, first match wins: 404 `not_found` (no such action), 413 `too_large`,
//! 400 `bad_request` (body not a JSON object, wrong types), 422 `invalid` (reason too long,
//! `modify` without an address, `exchange` without a valid sku, a parcel's `carrier` or
//! `tracking_no` alone or out of 1..=64 bytes), 404 `unknown_order`,
//! 404 `unknown_sku` (exchange), 409 `invalid_transition`, 409 `sold_out` (exchange), then
//! 200. A bad `Idempotency-Key` header is a 422 `invalid` of the body's rank, after the body's
//! own, and 422 `idempotency_conflict` (the key bound to another action or body) comes
//! where `invalid_transition` would.
//!
//! Retries: an action with an `Idempotency-Key` is a retry exactly when the order's shard
//! has that key bound (per order) to a journaled action with the same fingerprint (name and
//! decoded body); it is answered 200 with `Idempotent-Replayed: true` and the order as it
//! was right after that action, read from the journal as of the action's seq, even after
//! later actions and restarts. Without a key, a repeat of the order's latest action (a
//! client retry of `pay`, `ship`, ...) is answered the same way with the order as it is now;
//! `modify`, `reship` and `exchange` may legitimately repeat, so without a key each of those
//! is new work.

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::{ActionError, ActionRequest, Engine};
use crate::http::orders::require_json_object;
use crate::http::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::limits;
use crate::order::{self, Action, OrderStatus};
use crate::shard::ActionOutcome;

#[derive(Deserialize)]
struct ActionBody {
    reason: Option<String>,
    address: Option<Box<RawValue>>,
    restock: Option<bool>,
    sku: Option<String>,
    carrier: Option<String>,
    tracking_no: Option<String>,
}

/// The parcel of a `ship`, `reship` or `exchange`: both fields or neither, 1..=64 bytes of
/// printable text each. Other actions ignore them, as unknown fields are ignored.
fn decode_shipment(
    action: Action,
    carrier: Option<String>,
    tracking_no: Option<String>,
) -> Result<Option<crate::shard::Shipment>, ApiError> {
    if !matches!(action, Action::Ship | Action::Reship | Action::Exchange) {
        return Ok(None);
    }
    let invalid = |detail: String| ApiError::new(ErrorCode::Invalid, detail);
    let (carrier, tracking_no) = match (carrier, tracking_no) {
        (None, None) => return Ok(None),
        (Some(carrier), Some(tracking_no)) => (carrier, tracking_no),
        (_, _) => {
            return Err(invalid(
                "carrier and tracking_no go together: give both or neither".into(),
            ));
        }
    };
    for (field, value) in [("carrier", &carrier), ("tracking_no", &tracking_no)] {
        if value.is_empty()
            || value.len() > limits::SHIPMENT_FIELD_BYTES_MAX
            || value.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "{field} must be 1..={} bytes of printable text",
                limits::SHIPMENT_FIELD_BYTES_MAX
            )));
        }
    }
    Ok(Some(crate::shard::Shipment {
        carrier,
        tracking_no,
    }))
}

/// Decodes an action's optional body (no engine state; unit-tested alone).
pub fn decode_action(
    order_id: &str,
    action: Action,
    body: &[u8],
) -> Result<ActionRequest, ApiError> {
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody {
            reason: None,
            address: None,
            restock: None,
            sku: None,
            carrier: None,
            tracking_no: None,
        }
    } else {
        require_json_object(body)?;
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("body is not a valid action: {e}"),
            )
        })?
    };
    let invalid = |detail: String| ApiError::new(ErrorCode::Invalid, detail);
    if let Some(reason) = &parsed.reason
        && reason.len() > limits::REASON_BYTES_MAX
    {
        return Err(invalid(format!(
            "reason is {} bytes, at most {} allowed",
            reason.len(),
            limits::REASON_BYTES_MAX
        )));
    }
    let address = match (action, parsed.address) {
        (Action::Modify, None) => {
            return Err(invalid("modify needs an address object".into()));
        }
        (Action::Modify, Some(raw)) => Some(crate::http::orders::decode_address(&raw)?),
        // Other actions ignore an address, as unknown fields are ignored.
        (_, _) => None,
    };
    let exchange_sku = match (action, parsed.sku) {
        (Action::Exchange, None) => {
            return Err(invalid("exchange needs the sku to send instead".into()));
        }
        (Action::Exchange, Some(sku)) => {
            order::validate_id("sku", &sku, limits::SKU_BYTES_MAX).map_err(invalid)?;
            Some(sku)
        }
        (_, _) => None,
    };
    let shipment = decode_shipment(action, parsed.carrier, parsed.tracking_no)?;
    Ok(ActionRequest {
        order_id: order_id.to_owned(),
        action,
        reason: parsed.reason,
        address,
        restock: action.takes_restock() && parsed.restock.unwrap_or(false),
        exchange_sku,
        // The header's, set by the caller (it is checked after the body).
        idempotency_key: None,
        shipment,
    })
}

/// The `Idempotency-Key` header, if sent: exactly one, 1..=64 bytes of the id characters
/// (422 `invalid` otherwise).
pub fn decode_idempotency_key(headers: &hyper::HeaderMap) -> Result<Option<String>, ApiError> {
    let invalid = |detail: String| ApiError::new(ErrorCode::Invalid, detail);
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("Idempotency-Key is given more than once".into()));
    }
    let key = value
        .to_str()
        .map_err(|_| invalid("Idempotency-Key is not ASCII text".into()))?;
    order::validate_id("Idempotency-Key", key, limits::IDEMPOTENCY_KEY_BYTES_MAX)
        .map_err(invalid)?;
    Ok(Some(key.to_owned()))
}

fn unknown_order(order_id: &str) -> HttpResponse {
    ApiError::new(ErrorCode::UnknownOrder, format!("no order {order_id:?}")).into_response()
}

/// `GET /v1/orders/{id}`.
pub async fn get_order(engine: &std::sync::Arc<Engine>, order_id: &str) -> HttpResponse {
    if order::validate_path_id("order_id", order_id, limits::ORDER_ID_BYTES_MAX).is_err() {
        return unknown_order(order_id);
    }
    view_response(engine, order_id, false, None).await
}

/// The order as `GET` shows it, read off the async runtime (it reads journal files).
/// `as_of`: the order as it was right after that record, which left it in that status (a
/// keyed retry's original answer; the status holds even where retention deleted the record).
async fn view_response(
    engine: &std::sync::Arc<Engine>,
    order_id: &str,
    replayed: bool,
    as_of: Option<(u64, OrderStatus)>,
) -> HttpResponse {
    let reader = engine.clone();
    let id = order_id.to_owned();
    let view = tokio::task::spawn_blocking(move || {
        reader.order_view_as_of(&id, as_of.map_or(u64::MAX, |(seq, _)| seq))
    })
    .await;
    match view {
        Ok(Ok(Some(mut view))) => {
            if let Some((_, status)) = as_of {
                view.status = status.as_str();
            }
            let mut response = reply::json(StatusCode::OK, &view);
            if replayed {
                response.headers_mut().insert(
                    "idempotent-replayed",
                    hyper::header::HeaderValue::from_static("true"),
                );
            }
            response
        }
        Ok(Ok(None)) => unknown_order(order_id),
        Ok(Err(error)) => {
            tracing::error!(%error, order_id, "cannot read an order's history");
            ApiError::new(
                ErrorCode::Unavailable,
                format!("cannot read the order's history: {error}"),
            )
            .into_response()
        }
        Err(error) => {
            ApiError::new(ErrorCode::Unavailable, format!("reader failed: {error}")).into_response()
        }
    }
}

/// `POST /v1/orders/{id}/{action}` for a body that fit the size cap.
pub async fn order_action(
    engine: &std::sync::Arc<Engine>,
    order_id: &str,
    action: Action,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> HttpResponse {
    let mut request = match decode_action(order_id, action, body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    request.idempotency_key = match decode_idempotency_key(headers) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    if order::validate_path_id("order_id", order_id, limits::ORDER_ID_BYTES_MAX).is_err() {
        return unknown_order(order_id);
    }
    if engine.journal().is_stopped() {
        return ApiError::new(
            ErrorCode::Unavailable,
            "journal cannot be written; admission stopped",
        )
        .into_response();
    }
    let sku = request.exchange_sku.clone();
    match engine.order_action(request).await {
        Ok(ActionOutcome::Done { .. }) => view_response(engine, order_id, false, None).await,
        Ok(ActionOutcome::Replayed { seq, status }) => {
            let as_of = seq.map(|seq| (seq, status));
            view_response(engine, order_id, true, as_of).await
        }
        Ok(ActionOutcome::IdempotencyConflict) => ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!("the Idempotency-Key was used on order {order_id} for another action or body"),
        )
        .into_response(),
        Ok(ActionOutcome::Refused { status }) => ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "order {order_id} is {}; {} is not allowed from it",
                status.as_str(),
                action.as_str()
            ),
        )
        .into_response(),
        Ok(ActionOutcome::TooManyRecords { status }) => ApiError::new(
            ErrorCode::InvalidTransition,
            format!(
                "order {order_id} is {}; {} is not allowed from it: the order has {} records, \
                 the most repeated actions may use (its remaining steps are still allowed)",
                status.as_str(),
                action.as_str(),
                limits::RECORDS_PER_ORDER_MAX - limits::LIFE_RECORDS_RESERVED
            ),
        )
        .into_response(),
        Ok(ActionOutcome::UnknownOrder) => unknown_order(order_id),
        Ok(ActionOutcome::Unavailable { reason }) => {
            ApiError::new(ErrorCode::Unavailable, reason).into_response()
        }
        Err(ActionError::UnknownSku(sku)) => {
            ApiError::new(ErrorCode::UnknownSku, format!("no sku {sku:?}")).into_response()
        }
        // The engine answers the second as the first; both mean no unit was left.
        Err(ActionError::SoldOut { available })
        | Ok(ActionOutcome::ExchangeSoldOut { available }) => ApiError::new(
            ErrorCode::SoldOut,
            format!(
                "no unit of {} left for the exchange ({available} available)",
                sku.unwrap_or_default()
            ),
        )
        .into_response(),
        Err(ActionError::Overloaded) => {
            ApiError::new(ErrorCode::Overloaded, "shard queue is full; retry shortly")
                .retry_after(engine.retry_after_s(None, engine.queued()))
                .into_response()
        }
        Err(ActionError::Stopped) => {
            ApiError::new(ErrorCode::Unavailable, "engine is stopping").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_one_header_of_1_to_64_id_characters() {
        let decode = |values: &[&[u8]]| {
            let mut headers = hyper::HeaderMap::new();
            for value in values {
                headers.append(
                    "idempotency-key",
                    hyper::header::HeaderValue::from_bytes(value).unwrap(),
                );
            }
            decode_idempotency_key(&headers)
        };
        assert_eq!(decode(&[]).unwrap(), None);
        assert_eq!(
            decode(&[b"k-1.a:b_C"]).unwrap().as_deref(),
            Some("k-1.a:b_C")
        );
        let longest = "x".repeat(64);
        assert!(decode(&[longest.as_bytes()]).unwrap().is_some());
        let too_long = "x".repeat(65);
        let bad: [&[u8]; 5] = [b"", b"a b", b"a/b", "é".as_bytes(), too_long.as_bytes()];
        for bad in bad {
            assert_eq!(
                decode(&[bad]).unwrap_err().code,
                ErrorCode::Invalid,
                "{bad:?}"
            );
        }
        assert_eq!(decode(&[b"a", b"b"]).unwrap_err().code, ErrorCode::Invalid);
    }

    #[test]
    fn bodies_decode_per_action() {
        let empty = decode_action("o1", Action::Pay, b"").unwrap();
        assert_eq!(empty.reason, None);
        let reason = decode_action("o1", Action::Cancel, br#"{"reason":"changed mind"}"#).unwrap();
        assert_eq!(reason.reason.as_deref(), Some("changed mind"));
        let modify =
            decode_action("o1", Action::Modify, br#"{"address":{"city":"Oslo"}}"#).unwrap();
        assert_eq!(modify.address.as_deref(), Some(r#"{"city":"Oslo"}"#));
        let ret = decode_action("o1", Action::Return, br#"{"restock":true}"#).unwrap();
        assert!(ret.restock);
        let not_return = decode_action("o1", Action::Refund, br#"{"restock":true}"#).unwrap();
        assert!(!not_return.restock);
        let exchange = decode_action("o1", Action::Exchange, br#"{"sku":"SKU-2"}"#).unwrap();
        assert_eq!(exchange.exchange_sku.as_deref(), Some("SKU-2"));
    }

    #[test]
    fn bad_bodies_are_refused_with_the_right_code() {
        let code = |action, body: &[u8]| decode_action("o1", action, body).unwrap_err().code;
        assert_eq!(code(Action::Modify, b""), ErrorCode::Invalid);
        assert_eq!(
            code(Action::Modify, br#"{"address":"x"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(Action::Exchange, b"{}"), ErrorCode::Invalid);
        assert_eq!(
            code(Action::Exchange, br#"{"sku":"a b"}"#),
            ErrorCode::Invalid
        );
        assert_eq!(code(Action::Pay, b"[1]"), ErrorCode::BadRequest);
        assert_eq!(code(Action::Pay, b"not json"), ErrorCode::BadRequest);
        assert_eq!(
            code(Action::Return, br#"{"restock":"yes"}"#),
            ErrorCode::BadRequest
        );
        let long = format!(
            r#"{{"reason":"{}"}}"#,
            "x".repeat(limits::REASON_BYTES_MAX + 1)
        );
        assert_eq!(code(Action::Cancel, long.as_bytes()), ErrorCode::Invalid);
        let address = format!(r#"{{"address":{{"a":"{}"}}}}"#, "x".repeat(1100));
        assert_eq!(code(Action::Modify, address.as_bytes()), ErrorCode::Invalid);
    }
}
