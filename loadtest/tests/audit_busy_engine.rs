//! The audit against an engine that other clients keep busy: a fake engine whose journal gains
//! a record of another client's SKU on every read, and whose SKU reads and journal reads are
//! shed (429/503 with `Retry-After: 0`) now and then. The audit's inputs must still be
//! gathered: other clients' records do not make this run's figures move, and a shed read is
//! retried. An engine that sheds every read fails the audit's reads with a clear message.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use stampede_load::scenario::SkuSpec;
use stampede_load::target::http::{AdminClient, Endpoint, gather_audit_inputs};
use tokio::net::TcpListener;

const RUN: &str = "busy1";
const SKU: &str = "S-busy1-0";

#[derive(Default)]
struct Fake {
    /// Requests seen; every third one is shed.
    requests: AtomicU64,
    /// Records in the journal: another client's order is added on every journal read.
    records: AtomicU64,
    /// Shed everything.
    always_shed: bool,
}

fn response(status: u16, body: String, retry_after: bool) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    if retry_after {
        builder = builder.header("retry-after", "0");
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

async fn handle(
    fake: Arc<Fake>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let uri = request.uri().clone();
    let _ = request.into_body().collect().await;
    let n = fake.requests.fetch_add(1, Ordering::SeqCst);
    if fake.always_shed || n % 3 == 1 {
        let status = if n % 2 == 0 { 429 } else { 503 };
        let body = r#"{"error":"overloaded","detail":"busy"}"#.to_owned();
        return Ok(response(status, body, true));
    }
    if uri.path() == "/v1/journal" {
        // Another client accepts an order on its own SKU whenever the reader has caught up,
        // so every scan of the journal finds something new.
        let total = fake.records.load(Ordering::SeqCst);
        let from: u64 = uri
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("from=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if from >= total {
            fake.records.fetch_add(1, Ordering::SeqCst);
        }
        let mut body = String::new();
        for seq in from + 1..=total {
            body.push_str(&format!(
                r#"{{"seq":{seq},"type":"accepted","order_id":"other-{seq}","sku":"OTHER","qty":1}}"#
            ));
            body.push('\n');
        }
        return Ok(response(200, body, false));
    }
    let body = format!(r#"{{"sku":"{SKU}","stock_total":3,"available":3,"reserved":0,"sold":0}}"#);
    Ok(response(200, body, false))
}

async fn start(always_shed: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = Arc::new(Fake {
        always_shed,
        ..Fake::default()
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(fake.clone(), request));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

fn skus() -> Vec<SkuSpec> {
    vec![SkuSpec {
        name: SKU.into(),
        stock: 3,
        per_user_limit: 0,
        max_per_order: 1,
        payment_timeout_s: 900,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_and_shed_reads_do_not_fail_the_audit_reads() {
    let url = start(false).await;
    let endpoint = Endpoint::resolve(&url).await.unwrap();
    let mut admin = AdminClient::new(endpoint, Some("token")).unwrap();
    let (scan, states) =
        gather_audit_inputs(&mut admin, RUN, &skus(), 0, 0, Duration::from_secs(5))
            .await
            .expect("the audit's inputs are gathered");
    assert!(scan.records > 0);
    assert_eq!(scan.run_records, 0);
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].as_ref().map(|s| s.available), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_sheds_every_read_fails_them_with_a_clear_message() {
    let url = start(true).await;
    let endpoint = Endpoint::resolve(&url).await.unwrap();
    let mut admin = AdminClient::new(endpoint, Some("token")).unwrap();
    let error = admin.read_sku(SKU).await.unwrap_err().to_string();
    assert!(
        error.contains("5 times") && error.contains("Retry-After"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_whose_skus_exist_is_refused() {
    let url = start(false).await;
    let endpoint = Endpoint::resolve(&url).await.unwrap();
    let mut admin = AdminClient::new(endpoint, Some("token")).unwrap();
    let error = admin
        .check_run_id_unused(RUN, &skus())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("pick another --run-id"), "{error}");
}
