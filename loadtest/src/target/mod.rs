//! The systems a run can load, behind one enum so a connection task is the same code for all:
//!
//! | target | what it is | setup | audit |
//! |--------|-----------|-------|-------|
//! | `engine` | a Stampede engine | SKUs via the admin API | stock figures + journal |
//! | `bare` | `examples/bare_server`: HTTP and JSON only | none | none |
//! | `redis` | Redis running the flash-sale Lua script | SKU stock keys | stock keys + stream |

pub mod http;
pub mod redis;

use std::time::Duration;

use crate::outcome::OutcomeClass;
use crate::scenario::SkuSpec;
use crate::workload::OrderRequest;

/// How one order request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub class: OutcomeClass,
    /// The journal position of a 201 or a 200 replay.
    pub seq: Option<u64>,
    /// The error code (`sold_out`, ...), or for transport errors what failed.
    pub detail: Option<&'static str>,
}

impl Answered {
    pub fn transport(detail: &'static str) -> Self {
        Self {
            class: OutcomeClass::TransportError,
            seq: None,
            detail: Some(detail),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection was found closed before any byte of this request was written (a
    /// keep-alive connection the server closed while idle): the request never reached the
    /// server and may be sent again on a new connection.
    NotSent(&'static str),
    /// The request started going out and then failed: it may or may not have been processed.
    Failed(&'static str),
}

impl SendError {
    /// What failed, for the per-code counts.
    pub fn what(self) -> &'static str {
        match self {
            SendError::NotSent(what) | SendError::Failed(what) => what,
        }
    }
}

/// Where the orders go.
#[derive(Debug, Clone)]
pub enum Target {
    Engine(http::Endpoint),
    Bare(http::Endpoint),
    Redis(redis::RedisTarget),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Engine(_) => "engine",
            Target::Bare(_) => "bare",
            Target::Redis(_) => "redis",
        }
    }

    pub fn address(&self) -> String {
        match self {
            Target::Engine(endpoint) | Target::Bare(endpoint) => endpoint.url(),
            Target::Redis(redis) => format!("redis://{}", redis.addr),
        }
    }

    pub async fn connect(&self) -> std::io::Result<Connection> {
        Ok(match self {
            Target::Engine(endpoint) | Target::Bare(endpoint) => {
                Connection::Http(http::Connection::open(endpoint).await?)
            }
            Target::Redis(redis) => {
                Connection::Redis(redis::RespConnection::open(redis.addr).await?)
            }
        })
    }
}

/// One keep-alive connection to the target.
#[derive(Debug)]
pub enum Connection {
    Http(http::Connection),
    Redis(redis::RespConnection),
}

/// What a connection needs to write a request: the run's names and a reusable buffer.
#[derive(Debug)]
pub struct RequestContext<'a> {
    pub run_id: &'a str,
    pub skus: &'a [SkuSpec],
    pub target: &'a Target,
    pub scratch: String,
}

impl Connection {
    /// Sends one order and reads the whole answer. An `Err` means the connection is unusable
    /// (the caller drops it and reconnects); [`SendError::NotSent`] says the request did not
    /// leave, so it may be sent again on a new connection.
    pub async fn order(
        &mut self,
        request: &OrderRequest,
        context: &mut RequestContext<'_>,
    ) -> Result<Answered, SendError> {
        match (self, context.target) {
            (Connection::Http(connection), Target::Engine(endpoint) | Target::Bare(endpoint)) => {
                request.write_json(context.run_id, context.skus, &mut context.scratch);
                connection
                    .post_order(endpoint, std::mem::take(&mut context.scratch))
                    .await
            }
            (Connection::Redis(connection), Target::Redis(redis)) => connection
                .order(redis, request, context)
                .await
                .map_err(SendError::Failed),
            _ => unreachable!("a connection is opened by its own target"),
        }
    }
}

/// Longest time setup and audit requests may take each.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
