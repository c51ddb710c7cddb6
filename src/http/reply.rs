//! Building responses: JSON bodies, the contract's error codes, and the headers that go with
//! them (`Retry-After` on shedding, `Idempotent-Replayed` on replays).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::limits;

pub type HttpResponse = Response<ResponseBody>;

/// A whole body, or a stream of chunks from a bounded channel (`GET /v1/journal?follow=true`):
/// the producer waits when the channel is full, so a slow reader holds at most the channel's
/// chunks in this process's memory, never more.
pub enum ResponseBody {
    Full(Full<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(full) => std::pin::Pin::new(full).poll_frame(cx),
            Self::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(full) => full.is_end_stream(),
            Self::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Full(full) => full.size_hint(),
            Self::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// A streaming response: chunks sent into the returned channel's sender go out as they come
/// (chunked transfer encoding); dropping the sender ends the body.
pub fn stream(
    status: StatusCode,
    content_type: &'static str,
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
) -> HttpResponse {
    let mut response = Response::new(ResponseBody::Stream(chunks));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Why a request may not go on: come back after this many seconds (the `Retry-After`
/// header of a 429 or 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u32);

pub use crate::error_code::ErrorCode;

/// An error on its way to becoming a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    /// `Retry-After` seconds for a shed answer; `RETRY_AFTER_S` when not computed.
    pub retry_after_s: Option<u32>,
    /// 503 instead of the code's own status (an `overloaded` shed for the whole server,
    /// rather than for one client or one queue).
    pub service_unavailable: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_s: None,
            service_unavailable: false,
        }
    }

    /// Answers 503 rather than the code's own status: the whole server is over its load, so
    /// a load balancer should try another instance (`overloaded` from the queue-delay gate).
    pub fn service_unavailable(mut self) -> Self {
        self.service_unavailable = true;
        self
    }

    /// Replaces the human text (the code stays).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Sets the `Retry-After` this answer carries (shed answers compute it from the backlog).
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
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
        let status = if self.service_unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            self.code.status()
        };
        let mut response = json(status, &body);
        match self.code {
            ErrorCode::Overloaded | ErrorCode::Unavailable => {
                let seconds = self.retry_after_s.unwrap_or(limits::RETRY_AFTER_S);
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
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
    let mut response = Response::new(ResponseBody::Full(Full::new(Bytes::from(bytes))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response with a raw body and content type.
pub fn raw(status: StatusCode, content_type: &'static str, body: Bytes) -> HttpResponse {
    let mut response = Response::new(ResponseBody::Full(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
