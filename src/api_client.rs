//! The engine's HTTP API as a client sees it, for the commands that talk to a running
//! engine (`stampede tail --url`, `stampede stock reconcile --url`).
//!
//! - [`Endpoint`]: an `http://HOST[:PORT]` root parsed from `--url` ([`parse_url`]).
//! - [`Client`]: one kept-alive connection (hyper's low-level HTTP/1 client) for whole
//!   answers, plus a fresh connection per streamed body. Each connection attempt is bounded by
//!   [`CLIENT_CONNECT_TIMEOUT`], each exchange by [`CLIENT_REQUEST_TIMEOUT`], each whole body
//!   by the `body_max` the caller gives.
//! - [`Failure`]: whether a failed call is worth another try. Connection failures, timeouts,
//!   429 and 503 are [`Failure::Transient`]; every other non-200 answer is
//!   [`Failure::Fatal`]. How often and how long to wait between tries is the caller's policy
//!   (tail's backoff, reconcile's fixed tries); the bounds are in [`crate::limits`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::limits::{CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT};

/// An `http://host[:port]` engine address (plain HTTP; the port defaults to 80).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`, as given to connect (resolved at each connection).
    connect: String,
    host: HeaderValue,
}

impl Endpoint {
    /// `host:port`, as given to connect.
    pub fn connect_address(&self) -> &str {
        &self.connect
    }

    /// The `Host` header for requests to it.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host
    }
}

/// Parses `--url`: `http://HOST[:PORT]`, optionally with a trailing `/`, nothing more.
pub fn parse_url(text: &str) -> Result<Endpoint, String> {
    let uri: hyper::Uri = text
        .parse()
        .map_err(|_| format!("{text:?} is not a URL (expected http://HOST:PORT)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(format!("scheme {other} is not supported; use http://")),
        None => return Err(format!("{text:?} has no scheme; use http://HOST:PORT")),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{text:?}: give the engine's root URL, without a path"
        ));
    }
    let authority = uri
        .authority()
        .filter(|authority| !authority.host().is_empty())
        .ok_or_else(|| format!("{text:?} names no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    Ok(Endpoint {
        connect: format!("{}:{port}", authority.host()),
        host: HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{text:?}: bad host"))?,
    })
}
/// Why an HTTP call failed: worth another try (connection, timeout, 429/503), or not.
pub enum Failure {
    Transient(String),
    Fatal(String),
}

/// A keep-alive connection to the engine for pages and commits (hyper's low-level client),
/// plus fresh connections for follow streams.
pub struct Client {
    endpoint: Endpoint,
    /// Sent as `Authorization: Bearer` with commits.
    token: Option<HeaderValue>,
    /// The most bytes read of one whole answer's body ([`Client::call`]).
    body_max: usize,
    idle: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client for `endpoint`; `token` (a whole `Authorization` value, `Bearer ...`) is sent
    /// with `PUT`s only; answers' bodies over `body_max` bytes are a failure.
    pub fn new(endpoint: Endpoint, token: Option<HeaderValue>, body_max: usize) -> Self {
        Self {
            endpoint,
            token,
            body_max,
            idle: None,
        }
    }

    /// The engine this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, Failure> {
        let address = &self.endpoint.connect;
        let stream = match tokio::time::timeout(
            CLIENT_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(Failure::Transient(format!(
                    "cannot connect to {address}: {error}"
                )));
            }
            Err(_) => {
                return Err(Failure::Transient(format!(
                    "cannot connect to {address}: no answer within {CLIENT_CONNECT_TIMEOUT:?}"
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|error| {
                    Failure::Transient(format!("HTTP handshake with {address}: {error}"))
                })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn request(&self, method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
        // Only what needs it carries the secret.
        let authorization = (method == Method::PUT)
            .then_some(self.token.as_ref())
            .flatten();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.host.clone());
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(token) = authorization {
            request = request.header(AUTHORIZATION, token.clone());
        }
        request.body(Full::new(body)).expect("a valid request")
    }

    /// A whole answer: status and body. On a kept-alive connection that fails (the server
    /// closed it while idle) it tries once more on a fresh one.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let what = format!("{method} {path}");
        loop {
            let (mut sender, reused) = match self.idle.take() {
                Some(sender) if !sender.is_closed() => (sender, true),
                _ => (self.connect().await?, false),
            };
            let request = self.request(method.clone(), path, body.clone());
            let exchange = async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = Limited::new(response.into_body(), self.body_max)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            };
            match tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(answer)) => {
                    self.idle = Some(sender);
                    return Ok(answer);
                }
                Ok(Err(_)) if reused => continue,
                Ok(Err(error)) => return Err(Failure::Transient(format!("{what}: {error}"))),
                Err(_) => {
                    return Err(Failure::Transient(format!(
                        "{what}: no answer within {CLIENT_REQUEST_TIMEOUT:?}"
                    )));
                }
            }
        }
    }

    /// Opens `GET path` on a connection of its own, for a body read as it comes.
    pub async fn open_stream(&self, path: &str) -> Result<Incoming, Failure> {
        let mut sender = self.connect().await?;
        let request = self.request(Method::GET, path, Bytes::new());
        let response = tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, async {
            sender.ready().await?;
            sender.send_request(request).await
        })
        .await
        .map_err(|_| Failure::Transient(format!("GET {path}: no answer in time")))?
        .map_err(|error| Failure::Transient(format!("GET {path}: {error}")))?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response.into_body());
        }
        let body = tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        Err(refused("GET", path, status, &body))
    }

    /// A `200` answer's body; any other status is [`refused`].
    pub async fn ok(&mut self, method: Method, path: &str, body: Bytes) -> Result<Bytes, Failure> {
        let (status, body) = self.call(method.clone(), path, body).await?;
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(refused(method.as_str(), path, status, &body))
        }
    }

    /// The group's committed offset; `None` when it never committed (404 `unknown_group`).
    pub async fn group_offset(&mut self, group: &str) -> Result<Option<u64>, Failure> {
        let path = format!("/v1/consumers/{group}/offset");
        let (status, body) = self.call(Method::GET, &path, Bytes::new()).await?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match status {
            StatusCode::OK => json["seq"].as_u64().map(Some).ok_or_else(|| {
                Failure::Fatal(format!(
                    "GET {path}: no seq in {}",
                    String::from_utf8_lossy(&body)
                ))
            }),
            StatusCode::NOT_FOUND if json["error"] == "unknown_group" => Ok(None),
            _ => Err(refused("GET", &path, status, &body)),
        }
    }

    pub async fn commit(&mut self, group: &str, seq: u64) -> Result<(), Failure> {
        let path = format!("/v1/consumers/{group}/offset");
        let body = Bytes::from(serde_json::json!({ "seq": seq }).to_string());
        self.ok(Method::PUT, &path, body).await.map(drop)
    }
}

/// A non-200 answer: 429 and 503 (shed, recovering, draining) are worth another try.
pub fn refused(method: &str, path: &str, status: StatusCode, body: &[u8]) -> Failure {
    let message = format!(
        "{method} {path}: {status}: {}",
        String::from_utf8_lossy(body).trim()
    );
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        Failure::Transient(message)
    } else {
        Failure::Fatal(message)
    }
}

#[cfg(test)]
mod tests;
