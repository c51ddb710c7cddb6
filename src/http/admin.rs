//! Operators' and workers' endpoints: `PUT/GET /v1/skus/{sku}` (the PUT needs the admin
//! bearer token), `GET /v1/skus`, and `GET /v1/journal` (NDJSON pages of durable records).
//! `POST /v1/skus:bulk` lives in [`crate::http::bulk`] and shares the rules here.

use std::sync::Arc;

use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, HeaderMap};
use serde::Deserialize;

use crate::engine::{Engine, PauseError, PutSkuError};
use crate::http::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::limits;
use crate::order;
use crate::shard::SkuUpdate;

/// Checks `Authorization: Bearer <admin token>` in constant time. The token is never logged.
pub fn authorize(engine: &Engine, headers: &HeaderMap) -> Result<(), ApiError> {
    check_bearer(headers, "admin token", |token| {
        engine.admin_token_matches(token)
    })
}

/// Checks `Authorization: Bearer` with the consumer token or the admin token (committing or
/// deleting a consumer group), in constant time. The token is never logged.
pub fn authorize_consumer(engine: &Engine, headers: &HeaderMap) -> Result<(), ApiError> {
    check_bearer(headers, "consumer or admin token", |token| {
        engine.consumer_token_matches(token)
    })
}

/// The one bearer check of every guarded route: 401 `unauthorized` (with
/// `WWW-Authenticate: Bearer`) unless `matches` accepts the presented token.
fn check_bearer(
    headers: &HeaderMap,
    what: &str,
    matches: impl FnOnce(&str) -> bool,
) -> Result<(), ApiError> {
    // The scheme is case-insensitive (RFC 9110); the token is compared exactly.
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if matches(token) => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("wrong {what}"),
        )),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("missing Authorization: Bearer <{what}>"),
        )),
    }
}

pub fn get_sku(engine: &Engine, sku: &str) -> HttpResponse {
    match engine.sku_view(sku) {
        Some(view) => reply::json(StatusCode::OK, &view),
        None => ApiError::new(ErrorCode::UnknownSku, format!("no sku {sku:?}")).into_response(),
    }
}

/// `GET /v1/skus?after=NAME&limit=N`: SKUs by name, a page at a time (default 1000, at most
/// `limits::JOURNAL_PAGE_MAX`); `next_after` names the last one when more may follow.
pub fn list_skus(engine: &Engine, query: Option<&str>) -> HttpResponse {
    let (after, limit) = match parse_sku_page_query(query) {
        Ok(page) => page,
        Err(error) => return error.into_response(),
    };
    let page = engine.sku_page(&after, limit);
    let next_after = (page.len() == limit).then(|| page.last().map(|view| view.sku.clone()));
    reply::json(
        StatusCode::OK,
        &serde_json::json!({ "skus": page, "next_after": next_after.flatten() }),
    )
}

/// `after` and `limit` of `GET /v1/skus` (default 1000, at most `JOURNAL_PAGE_MAX`).
pub fn parse_sku_page_query(query: Option<&str>) -> Result<(String, usize), ApiError> {
    let mut after = "";
    let mut limit = 1000usize;
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "after" => after = value,
            "limit" => match value.parse::<usize>() {
                Ok(n) if n >= 1 => limit = n.min(limits::JOURNAL_PAGE_MAX),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        format!("bad limit {value:?}"),
                    ));
                }
            },
            _ => {}
        }
    }
    Ok((after.to_owned(), limit))
}

#[derive(Deserialize)]
struct SkuBody {
    stock: Option<serde_json::Number>,
    per_user_limit: Option<serde_json::Number>,
    max_per_order: Option<serde_json::Number>,
    payment_timeout_s: Option<serde_json::Number>,
}

/// An optional integer field: 400 when not an integer, 422 when outside `min..=max`.
fn integer_field(
    value: Option<serde_json::Number>,
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    let Some(number) = value else { return Ok(None) };
    let out_of_range = || {
        ApiError::new(
            ErrorCode::Invalid,
            format!("{name} must be {min}..={max}, got {number}"),
        )
    };
    if let Some(value) = number.as_u64() {
        if (min..=max).contains(&value) {
            Ok(Some(value))
        } else {
            Err(out_of_range())
        }
    } else if number.as_i64().is_some() || crate::http::orders::is_integer_beyond_64_bits(&number) {
        Err(out_of_range())
    } else {
        Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("{name} must be an integer, got {number}"),
        ))
    }
}

/// Decodes a SKU PUT body into an update (pure; unit-tested).
pub fn decode_sku_update(body: &[u8]) -> Result<SkuUpdate, ApiError> {
    crate::http::orders::require_json_object(body)?;
    let parsed: SkuBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("body is not a valid sku update: {e}"),
        )
    })?;
    let narrow = |value: Option<u64>| value.map(|v| v as u32);
    Ok(SkuUpdate {
        stock: integer_field(parsed.stock, "stock", 0, limits::STOCK_MAX)?,
        per_user_limit: narrow(integer_field(
            parsed.per_user_limit,
            "per_user_limit",
            0,
            u64::from(limits::PER_ORDER_MAX),
        )?),
        max_per_order: narrow(integer_field(
            parsed.max_per_order,
            "max_per_order",
            1,
            u64::from(limits::PER_ORDER_MAX),
        )?),
        payment_timeout_s: narrow(integer_field(
            parsed.payment_timeout_s,
            "payment_timeout_s",
            1,
            u64::from(limits::PAYMENT_TIMEOUT_S_MAX),
        )?),
    })
}

pub async fn put_sku(engine: &Arc<Engine>, sku: &str, body: &[u8]) -> HttpResponse {
    if let Err(detail) = order::validate_id("sku", sku, limits::SKU_BYTES_MAX) {
        return ApiError::new(ErrorCode::Invalid, detail).into_response();
    }
    let update = match decode_sku_update(body) {
        Ok(update) => update,
        Err(error) => return error.into_response(),
    };
    match engine.put_sku(sku, update).await {
        Ok(view) => reply::json(StatusCode::OK, &view),
        Err(error) => put_sku_error(error).into_response(),
    }
}

/// `POST /v1/skus/{sku}/pause` (`paused`) or `/resume`: 200 with the SKU once journaled.
pub async fn pause_sku(engine: &Arc<Engine>, sku: &str, paused: bool) -> HttpResponse {
    match engine.pause_sku(sku, paused).await {
        Ok(view) => reply::json(StatusCode::OK, &view),
        Err(PauseError::UnknownSku) => {
            ApiError::new(ErrorCode::UnknownSku, format!("no sku {sku:?}")).into_response()
        }
        Err(PauseError::Overloaded) => {
            ApiError::new(ErrorCode::Overloaded, "shard queue is full; retry shortly")
                .into_response()
        }
        Err(PauseError::Unavailable(reason)) => {
            ApiError::new(ErrorCode::Unavailable, reason).into_response()
        }
    }
}

/// How a refused SKU change is answered (PUT, and each line of a bulk load).
pub fn put_sku_error(error: PutSkuError) -> ApiError {
    match error {
        PutSkuError::StockConflict { committed } => ApiError::new(
            ErrorCode::StockConflict,
            format!("{committed} units are already sold or reserved; stock cannot go below that"),
        ),
        PutSkuError::CatalogueFull { slots_max } => ApiError::new(
            ErrorCode::Unavailable,
            format!("all {slots_max} inventory slots are in use (inventory.skus_max)"),
        ),
        PutSkuError::Overloaded => {
            ApiError::new(ErrorCode::Overloaded, "shard queue is full; retry shortly")
        }
        PutSkuError::Unavailable(reason) => ApiError::new(ErrorCode::Unavailable, reason),
    }
}

/// The parsed query of `GET /v1/journal`.
#[derive(Debug, PartialEq, Eq)]
pub struct JournalQuery {
    pub from: u64,
    pub limit: usize,
    pub follow: bool,
}

pub fn parse_journal_query(query: Option<&str>) -> Result<JournalQuery, ApiError> {
    let mut parsed = JournalQuery {
        from: 0,
        limit: limits::JOURNAL_PAGE_DEFAULT,
        follow: false,
    };
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("bad query parameter {pair:?}"),
            )
        };
        match name {
            "from" => parsed.from = value.parse().map_err(|_| bad())?,
            "limit" => {
                let limit: usize = value.parse().map_err(|_| bad())?;
                if limit == 0 {
                    return Err(ApiError::new(
                        ErrorCode::Invalid,
                        "limit must be at least 1",
                    ));
                }
                // The server caps a page; the client pages on with the last seq (contract).
                parsed.limit = limit.min(limits::JOURNAL_PAGE_MAX);
            }
            "follow" => parsed.follow = value.parse().map_err(|_| bad())?,
            _ => {} // unknown parameters are ignored, like unknown JSON fields
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_updates_separate_wrong_types_from_out_of_range() {
        let update = decode_sku_update(br#"{"stock":5,"per_user_limit":0}"#).unwrap();
        assert_eq!(update.stock, Some(5));
        assert_eq!(update.per_user_limit, Some(0));
        assert_eq!(update.max_per_order, None);
        let code = |body: &str| decode_sku_update(body.as_bytes()).unwrap_err().code;
        assert_eq!(code(r#"{"stock":-1}"#), ErrorCode::Invalid);
        assert_eq!(code(r#"{"max_per_order":0}"#), ErrorCode::Invalid);
        assert_eq!(code(r#"{"stock":"5"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"stock":1.5}"#), ErrorCode::BadRequest);
        assert_eq!(code("nope"), ErrorCode::BadRequest);
        assert_eq!(code("[5,0,1,900]"), ErrorCode::BadRequest);
    }

    #[test]
    fn journal_queries_default_cap_and_refuse_garbage() {
        assert_eq!(
            parse_journal_query(None).unwrap(),
            JournalQuery {
                from: 0,
                limit: limits::JOURNAL_PAGE_DEFAULT,
                follow: false
            }
        );
        let query = parse_journal_query(Some("from=7&limit=99999999&follow=true")).unwrap();
        assert_eq!(
            query,
            JournalQuery {
                from: 7,
                limit: limits::JOURNAL_PAGE_MAX,
                follow: true
            }
        );
        assert_eq!(
            parse_journal_query(Some("from=x")).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_journal_query(Some("limit=0")).unwrap_err().code,
            ErrorCode::Invalid
        );
    }
}
