//! The contract's error codes (`{"error": "<code>", "detail": ...}`), each with its HTTP
//! status: the vocabulary the HTTP layer answers with and the metrics count by. Below both,
//! so that neither depends on the other.

use hyper::StatusCode;

/// The contract's error codes, each with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Invalid,
    TooLarge,
    UnknownSku,
    UnknownOrder,
    /// A consumer group that never committed an offset (404).
    UnknownGroup,
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
    /// Journal records asked for were deleted by retention (410).
    Gone,
    /// The buyer is on the order-review deny list (403).
    Denied,
    /// New orders for the SKU are paused by an operator (409).
    Paused,
}

impl ErrorCode {
    /// The codes `POST /v1/orders` can refuse with (its row of the contract's table, plus
    /// the body timeout): the only ones `stampede_orders_total` exports.
    pub const ORDER_REFUSALS: [ErrorCode; 12] = [
        Self::BadRequest,
        Self::Invalid,
        Self::TooLarge,
        Self::UnknownSku,
        Self::SoldOut,
        Self::PurchaseLimit,
        Self::IdempotencyConflict,
        Self::Overloaded,
        Self::Unavailable,
        Self::RequestTimeout,
        Self::Denied,
        Self::Paused,
    ];

    /// Every code, for per-code metrics.
    pub const ALL: [ErrorCode; 20] = [
        Self::BadRequest,
        Self::Invalid,
        Self::TooLarge,
        Self::UnknownSku,
        Self::UnknownOrder,
        Self::UnknownGroup,
        Self::SoldOut,
        Self::PurchaseLimit,
        Self::IdempotencyConflict,
        Self::StockConflict,
        Self::InvalidTransition,
        Self::Unauthorized,
        Self::Overloaded,
        Self::Unavailable,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::Gone,
        Self::Denied,
        Self::Paused,
    ];

    /// The code's position in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::UnknownSku => "unknown_sku",
            Self::UnknownOrder => "unknown_order",
            Self::UnknownGroup => "unknown_group",
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
            Self::Gone => "gone",
            Self::Denied => "denied",
            Self::Paused => "paused",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Invalid | Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownSku | Self::UnknownOrder | Self::UnknownGroup | Self::NotFound => {
                StatusCode::NOT_FOUND
            }
            Self::SoldOut
            | Self::PurchaseLimit
            | Self::StockConflict
            | Self::InvalidTransition
            | Self::Paused => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Gone => StatusCode::GONE,
            Self::Denied => StatusCode::FORBIDDEN,
        }
    }
}
