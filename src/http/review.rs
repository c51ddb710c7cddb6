//! Order review's endpoints (all with the admin token): `GET`/`PUT /v1/review/rules` and
//! `GET /v1/reviews?after=ORDER_ID&limit=N`. Approve and reject are order actions
//! ([`crate::http::lifecycle`]); the rules themselves are [`crate::order::review`]'s.

use std::sync::Arc;

use hyper::StatusCode;
use serde::Deserialize;

use crate::engine::{Engine, ReviewRulesError};
use crate::http::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::journal::ReviewRulesChanged;
use crate::limits;

/// The body of `PUT /v1/review/rules`: the `[review]` table's keys, each rule off when 0 or
/// absent (the whole set is replaced). Unknown fields are ignored, as everywhere.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RulesBody {
    address_buyers_max: u32,
    client_orders_per_min: u32,
    qty_at_least: u32,
    review_users: Vec<String>,
    deny_users: Vec<String>,
}

fn rules_json(rules: &ReviewRulesChanged) -> serde_json::Value {
    serde_json::json!({
        "address_buyers_max": rules.address_buyers_max,
        "client_orders_per_min": rules.client_orders_per_min,
        "qty_at_least": rules.qty_at_least,
        "review_users": rules.review_users,
        "deny_users": rules.deny_users,
    })
}

/// `GET /v1/review/rules`.
pub fn get_rules(engine: &Engine) -> HttpResponse {
    reply::json(StatusCode::OK, &rules_json(&engine.review_rules()))
}

/// `PUT /v1/review/rules`: 200 with the rules once their record is durable.
pub async fn put_rules(engine: &Arc<Engine>, body: &[u8]) -> HttpResponse {
    let body: RulesBody = match serde_json::from_slice(body) {
        Ok(body) => body,
        Err(error) => {
            return ApiError::new(ErrorCode::BadRequest, format!("bad rules body: {error}"))
                .into_response();
        }
    };
    let rules = ReviewRulesChanged {
        address_buyers_max: body.address_buyers_max,
        client_orders_per_min: body.client_orders_per_min,
        qty_at_least: body.qty_at_least,
        review_users: body.review_users,
        deny_users: body.deny_users,
    };
    let engine = engine.clone();
    let applied = tokio::task::spawn_blocking(move || {
        engine
            .put_review_rules(rules.clone())
            .map(|_| rules_json(&rules))
    })
    .await;
    match applied {
        Ok(Ok(rules)) => reply::json(StatusCode::OK, &rules),
        Ok(Err(ReviewRulesError::Invalid(detail))) => {
            ApiError::new(ErrorCode::Invalid, detail).into_response()
        }
        Ok(Err(ReviewRulesError::Unavailable(detail))) => {
            ApiError::new(ErrorCode::Unavailable, detail).into_response()
        }
        Err(error) => {
            ApiError::new(ErrorCode::Unavailable, format!("rules task: {error}")).into_response()
        }
    }
}

/// `GET /v1/reviews?after=ORDER_ID&limit=N`: held orders, oldest first.
pub async fn list_held(engine: &Arc<Engine>, query: Option<&str>) -> HttpResponse {
    let mut after: Option<String> = None;
    let mut limit = limits::JOURNAL_PAGE_DEFAULT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "after" if !value.is_empty() => after = Some(value.to_owned()),
            "after" => {}
            "limit" => match value.parse::<usize>() {
                Ok(0) => {
                    return ApiError::new(ErrorCode::Invalid, "limit must be at least 1")
                        .into_response();
                }
                Ok(n) => limit = n.min(limits::REVIEW_PAGE_MAX),
                Err(_) => {
                    return ApiError::new(ErrorCode::BadRequest, format!("bad limit {value:?}"))
                        .into_response();
                }
            },
            _ => {}
        }
    }
    let engine = engine.clone();
    let page =
        tokio::task::spawn_blocking(move || engine.held_orders(after.as_deref(), limit)).await;
    match page {
        Ok(Ok(Some(page))) => reply::json(
            StatusCode::OK,
            &serde_json::json!({"orders": page.orders, "next_after": page.next_after}),
        ),
        Ok(Ok(None)) => ApiError::new(
            ErrorCode::UnknownOrder,
            "after names no order this engine knows",
        )
        .into_response(),
        Ok(Err(error)) => ApiError::new(
            ErrorCode::Unavailable,
            format!("journal read failed: {error}"),
        )
        .into_response(),
        Err(error) => {
            ApiError::new(ErrorCode::Unavailable, format!("reviews task: {error}")).into_response()
        }
    }
}
