//! The engine's view: `GET /v1/skus` page by page, through the shared API client.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use crate::api_client::{Client, Endpoint, Failure};

use crate::limits;
use crate::limits::{RECONCILE_PAGE_BYTES_MAX, RECONCILE_TRIES};

use super::{Counts, ReconcileError, View};

/// SKUs asked for per `GET /v1/skus` page (the server's cap).
const PAGE_SKUS: usize = limits::JOURNAL_PAGE_MAX;

pub(super) async fn fetch_engine(endpoint: &Endpoint) -> Result<View, ReconcileError> {
    #[derive(serde::Deserialize)]
    struct Page {
        skus: Vec<PageSku>,
        next_after: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct PageSku {
        sku: String,
        stock_total: u64,
        available: u64,
        reserved: u64,
        sold: u64,
    }
    let mut client = Client::new(endpoint.clone(), None, RECONCILE_PAGE_BYTES_MAX);
    let mut view = View::new();
    let mut after = String::new();
    // More pages than the largest catalogue needs means the server does not page on.
    for _ in 0..=(limits::SKUS_MAX as usize / PAGE_SKUS + 1) {
        let path = if after.is_empty() {
            format!("/v1/skus?limit={PAGE_SKUS}")
        } else {
            // SKU names are `[A-Za-z0-9_.:-]`: safe in a query as they are.
            format!("/v1/skus?limit={PAGE_SKUS}&after={after}")
        };
        let body = get_with_retries(&mut client, &path).await?;
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| ReconcileError::Http(format!("GET {path}: unexpected answer: {e}")))?;
        for sku in page.skus {
            view.insert(
                sku.sku,
                Counts {
                    stock_total: sku.stock_total,
                    available: sku.available,
                    reserved: sku.reserved,
                    sold: sku.sold,
                },
            );
        }
        match page.next_after {
            Some(next) if next > after => after = next,
            Some(next) => {
                return Err(ReconcileError::Http(format!(
                    "GET {path}: next_after {next:?} does not move past {after:?}"
                )));
            }
            None => return Ok(view),
        }
    }
    Err(ReconcileError::Http(
        "GET /v1/skus: the pages do not end".into(),
    ))
}

/// `GET path` until a `200`: a transient failure (connection, timeout, 429, 503) is tried
/// again after half a second, [`RECONCILE_TRIES`] tries in all.
pub(super) async fn get_with_retries(
    client: &mut Client,
    path: &str,
) -> Result<Bytes, ReconcileError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match client.ok(Method::GET, path, Bytes::new()).await {
            Ok(body) => return Ok(body),
            Err(Failure::Transient(message)) if tries >= RECONCILE_TRIES => {
                return Err(ReconcileError::Http(message));
            }
            Err(Failure::Transient(_)) => {}
            Err(Failure::Fatal(message)) => return Err(ReconcileError::Http(message)),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
