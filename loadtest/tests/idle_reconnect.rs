//! Keep-alive connections that the server closes while idle (the engine closes one after 10 s
//! without a request) must not show up as failed requests: a request that finds its
//! connection closed before any byte of it went out is sent on a new connection. A request
//! that had started to go out when the connection failed stays a transport error.
//!
//! Two tiny loopback servers, driven as the bare target: one closes a connection idle for
//! 100 ms (hyper's `header_read_timeout`, as the engine does), the other answers the first
//! request of each connection and drops the connection on reading the second. About 3 s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use stampede_load::cli::{Args, TargetSpec};
use stampede_load::driver::{DriveResult, LiveView, drive};
use stampede_load::outcome::OutcomeClass;
use stampede_load::target::{Target, http::Endpoint};
use stampede_load::workload::WorkloadPlan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CREATED: &[u8] = br#"{"order_id":"o","status":"pending_payment","seq":1}"#;

async fn created(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(CREATED)));
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// A server that closes a keep-alive connection idle for 100 ms.
async fn idle_closing_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(100))
                    .serve_connection(TokioIo::new(stream), service_fn(created))
                    .await;
            });
        }
    });
    url
}

/// Reads one request (headers and a `content-length` body); false at end of stream.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buffer.len() >= end + 4 + length {
                return true;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server that answers the first request of a connection and, on reading the second, drops
/// the connection without answering: that request went out, and its fate is unknown.
async fn dropping_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if !read_request(&mut stream).await {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    CREATED.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(CREATED).await;
                let _ = read_request(&mut stream).await;
                // Dropped here: the second request is never answered.
            });
        }
    });
    url
}

async fn run_bare(url: &str, model_args: &[&str]) -> DriveResult {
    let mut argv = vec![
        "stampede-load",
        "--scenario",
        "throughput",
        "--target",
        "bare",
        "--url",
        url,
        "--connections",
        "1",
        "--duration",
        "1500ms",
        "--warmup",
        "0s",
        "--ramp-up",
        "0s",
        "--timeout",
        "2s",
        "--seed",
        "7",
        "--quiet",
    ];
    argv.extend_from_slice(model_args);
    let settings = Args::try_parse_from(argv)
        .unwrap()
        .settings_with_env(&|_| None)
        .unwrap();
    let TargetSpec::Bare { url } = &settings.target else {
        panic!("--target bare gives a bare target");
    };
    let target = Target::Bare(Endpoint::resolve(url).await.unwrap());
    let workload = Arc::new(
        WorkloadPlan::new(
            settings.run_id.clone(),
            settings.scenario.sku_specs(&settings.run_id),
            settings.scenario.traffic.clone(),
            settings.seed,
        )
        .unwrap(),
    );
    drive(
        settings.drive.clone(),
        workload,
        target,
        Arc::new(LiveView::new()),
    )
    .await
    .expect("the run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_while_idle_is_reopened_not_counted_as_an_error() {
    let url = idle_closing_server().await;
    // One request every 250 ms on one connection: each finds it idle for longer than 100 ms.
    let result = run_bare(&url, &["--model", "open", "--rate", "4"]).await;
    let created = result.recorder.count(OutcomeClass::Created);
    let failed = result.recorder.count(OutcomeClass::TransportError);
    assert_eq!(failed, 0, "details {:?}", result.recorder.details());
    assert!(created >= 5, "{created} created");
    assert!(
        result.reconnects >= 3,
        "{} reconnects for {created} requests",
        result.reconnects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_went_out_and_got_no_answer_stays_a_transport_error() {
    let url = dropping_server().await;
    let result = run_bare(&url, &["--model", "open", "--rate", "10"]).await;
    let created = result.recorder.count(OutcomeClass::Created);
    let failed = result.recorder.count(OutcomeClass::TransportError);
    // Every other request is the second on its connection and is dropped unanswered.
    assert!(
        created >= 5 && failed >= 5,
        "{created} created, {failed} failed"
    );
    assert_eq!(result.reconnects, 0);
}
