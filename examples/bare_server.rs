//! The HTTP ceiling for benchmarks: a bare hyper server that does only what every order
//! request must do before the engine's own work: accept, parse HTTP/1.1, read the body under
//! the same cap, decode and validate the same JSON with the same decoder, and answer 201
//! with a body of the same shape. No shards, no stock, no journal.
//!
//! `BENCHMARKS.md` compares the engine against this server, measured in the same run, so the
//! ratio says what the engine's pipeline costs on top of HTTP and JSON on this machine.
//!
//! Run: `cargo run --release --example bare_server -- 127.0.0.1:18081`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use stampede::http::orders::decode_order;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn handle(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match Limited::new(request.into_body(), stampede::limits::BODY_BYTES_DEFAULT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                b"{\"error\":\"too_large\"}".to_vec(),
            ));
        }
    };
    let (status, body) = match decode_order(&body) {
        Ok(order) => (
            StatusCode::CREATED,
            serde_json::to_vec(&serde_json::json!({
                "order_id": order.order_id, "status": "pending_payment", "seq": 1
            }))
            .expect("serializes"),
        ),
        Err(error) => (error.code.status(), error.detail.into_bytes()),
    };
    Ok(reply(status, body))
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&address).await?;
        println!("bare server listening on http://{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    })
}
