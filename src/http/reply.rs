//! Building responses: JSON bodies, the contract's error codes, and the headers that go with
//! them (`Retry-After` on shedding, `Idempotent-Replayed` on replays).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::limits;

pub type HttpResponse = Response<Full<Bytes>>;

/// The contract's error codes, each with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Invalid,
    TooLarge,
    UnknownSku,
    UnknownOrder,
    SoldOut,
    PurchaseLimit,
    IdempotencyConflict,
    StockConflict,
    /// The order's state does not allow the action (409).
    InvalidTransition,
    Unauthorized,
    /// Shed by admission control (429, `Retry-After`).
    Overloaded,
    /// Journal cannot be written, engine recovering or draining (503).
    Unavailable,
    NotFound,
    MethodNotAllowed,
    /// The body did not arrive within `http.body_read_timeout_ms` (408).
    RequestTimeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::UnknownSku => "unknown_sku",
            Self::UnknownOrder => "unknown_order",
            Self::SoldOut => "sold_out",
            Self::PurchaseLimit => "purchase_limit",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::StockConflict => "stock_conflict",
            Self::InvalidTransition => "invalid_transition",
            Self::Unauthorized => "unauthorized",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Invalid | Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownSku | Self::UnknownOrder | Self::NotFound => StatusCode::NOT_FOUND,
            Self::SoldOut | Self::PurchaseLimit | Self::StockConflict | Self::InvalidTransition => {
                StatusCode::CONFLICT
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// An error on its way to becoming a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }

    pub fn into_response(self) -> HttpResponse {
        #[derive(serde::Serialize)]
        struct ErrorBody<'a> {
            error: &'static str,
            detail: &'a str,
        }
        let body = ErrorBody {
            error: self.code.as_str(),
            detail: &self.detail,
        };
        let mut response = json(self.code.status(), &body);
        match self.code {
            ErrorCode::Overloaded | ErrorCode::Unavailable => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(limits::RETRY_AFTER_S));
            }
            ErrorCode::Unauthorized => {
                response
                    .headers_mut()
                    .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON response from anything serializable.
pub fn json(status: StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response with a raw body and content type.
pub fn raw(status: StatusCode, content_type: &'static str, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
