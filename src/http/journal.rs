//! The fulfilment workers' side: `GET /v1/journal` (a page, or `follow=true` streaming),
//! `PUT/GET /v1/consumers/{group}/offset` and `DELETE /v1/consumers/{group}`.
//!
//! Committing and deleting a group need the consumer or the admin token (checked by the
//! router before the body is read, [`crate::http::admin::authorize_consumer`]); reading an
//! offset does not. A committed offset is never ahead of what the journal holds on stable
//! storage ([`Engine::commit_offset`]).
//!
//! Both journal modes read through a [`JournalReader`] bounded by the durable watermark, so a
//! client only ever sees acknowledged records. A follower is a task that reads a chunk on the
//! blocking pool, sends it into a channel of `FOLLOW_QUEUE_CHUNKS` chunks and waits on the
//! journal's commit signal when caught up; a slow client fills the channel and the task
//! waits, so its memory here stays bounded. It sends a newline every `FOLLOW_KEEPALIVE_S`
//! when idle (proxies keep the connection; NDJSON readers skip blank lines) and ends when the
//! client goes away or the server drains.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use crate::engine::{CommitOffsetError, Engine};
use crate::http::admin::JournalQuery;
use crate::http::reply::{self, ApiError, ErrorCode, HttpResponse};
use crate::journal::consumers::validate_group;
use crate::journal::{JournalReader, ReadError, ReadLimit};
use crate::limits;

const NDJSON: &str = "application/x-ndjson";

/// Reads up to `limit` records (and at most about `max_bytes` of NDJSON) from `reader` into
/// one chunk. Blocking file reads: run it on the blocking pool.
fn read_chunk(
    reader: &mut JournalReader,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<u8>, usize), ReadError> {
    let mut body = Vec::with_capacity(max_bytes.min(limit.saturating_mul(200)).min(1 << 20));
    let mut count = 0;
    while count < limit && body.len() < max_bytes {
        let Some((seq, record)) = reader.next_record()? else {
            break;
        };
        serde_json::to_writer(&mut body, &record.to_json(seq)).expect("json to a vec");
        body.push(b'\n');
        count += 1;
    }
    Ok((body, count))
}

fn read_error(error: ReadError) -> HttpResponse {
    match error {
        ReadError::Deleted {
            wanted,
            first_available,
        } => gone(wanted, first_available),
        other => read_failed(other),
    }
}

/// 410 `gone`: records from `wanted` on were deleted by retention.
pub fn gone(wanted: u64, first_available: u64) -> HttpResponse {
    ApiError::new(
        ErrorCode::Gone,
        format!(
            "records from seq {wanted} on were deleted by retention; the oldest kept is \
             {first_available} (page on with from={})",
            first_available - 1
        ),
    )
    .into_response()
}

fn read_failed(error: impl std::fmt::Display) -> HttpResponse {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("journal read failed: {error}"),
    )
    .into_response()
}

/// One page of durable records with `seq > from`, as NDJSON.
pub async fn read_page(engine: &Engine, query: &JournalQuery) -> HttpResponse {
    let mut reader = JournalReader::open(
        engine.journal_dir(),
        query.from,
        ReadLimit::Durable(engine.journal().clone()),
    );
    let limit = query.limit;
    let page =
        tokio::task::spawn_blocking(move || read_chunk(&mut reader, limit, usize::MAX)).await;
    match page {
        Ok(Ok((body, _))) => reply::raw(StatusCode::OK, NDJSON, Bytes::from(body)),
        Ok(Err(error)) => read_error(error),
        Err(error) => read_failed(error),
    }
}

/// `follow=true`: records with `seq > from` as they become durable, until the client leaves
/// or `stopping` turns true. `permit` (one of `FOLLOWERS_MAX`) is held for the stream's life.
pub fn follow(
    engine: Arc<Engine>,
    from: u64,
    mut stopping: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> HttpResponse {
    let (chunks, body) = mpsc::channel::<Bytes>(limits::FOLLOW_QUEUE_CHUNKS);
    tokio::spawn(async move {
        let _permit = permit;
        let mut durable = engine.journal().durable_watch();
        let keepalive = Duration::from_secs(limits::FOLLOW_KEEPALIVE_S);
        let mut reader = Some(JournalReader::open(
            engine.journal_dir(),
            from,
            ReadLimit::Durable(engine.journal().clone()),
        ));
        loop {
            if *stopping.borrow() {
                break;
            }
            // Marked seen before reading: a commit from here on wakes the wait below.
            durable.borrow_and_update();
            // Read what is durable now, a chunk at a time, off the async workers.
            let mut taken = reader.take().expect("reader is put back after each read");
            let read = tokio::task::spawn_blocking(move || {
                let chunk = read_chunk(&mut taken, usize::MAX, limits::FOLLOW_CHUNK_BYTES);
                (taken, chunk)
            })
            .await;
            let Ok((taken, chunk)) = read else { break };
            reader = Some(taken);
            match chunk {
                Ok((bytes, count)) if count > 0 => {
                    // Waits here while the client's queue is full: backpressure.
                    if chunks.send(Bytes::from(bytes)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "journal follower stops");
                    break;
                }
            }
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { break },
                _ = stopping.changed() => {}
                () = tokio::time::sleep(keepalive) => {
                    if chunks.send(Bytes::from_static(b"\n")).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    reply::stream(StatusCode::OK, NDJSON, body)
}

#[derive(serde::Serialize)]
struct OffsetView<'a> {
    group: &'a str,
    seq: u64,
    durable_seq: u64,
    /// Durable records after the group's offset: what it has still to process.
    lag: u64,
}

fn offset_view(engine: &Engine, group: &str, seq: u64) -> HttpResponse {
    let durable_seq = engine.journal().durable_seq();
    reply::json(
        StatusCode::OK,
        &OffsetView {
            group,
            seq,
            durable_seq,
            lag: durable_seq.saturating_sub(seq),
        },
    )
}

fn offsets_failed(error: std::io::Error) -> HttpResponse {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("consumer offsets unavailable: {error}"),
    )
    .into_response()
}

/// `GET /v1/consumers/{group}/offset`.
pub async fn get_offset(engine: Arc<Engine>, group: &str) -> HttpResponse {
    if let Err(detail) = validate_group(group) {
        return ApiError::new(ErrorCode::Invalid, detail).into_response();
    }
    let reader = engine.clone();
    let name = group.to_owned();
    match tokio::task::spawn_blocking(move || reader.group_offset(&name)).await {
        Ok(Ok(Some(seq))) => offset_view(&engine, group, seq),
        Ok(Ok(None)) => ApiError::new(
            ErrorCode::UnknownGroup,
            format!("group {group:?} has committed no offset"),
        )
        .into_response(),
        Ok(Err(error)) => offsets_failed(error),
        Err(error) => offsets_failed(std::io::Error::other(error.to_string())),
    }
}

/// `PUT /v1/consumers/{group}/offset` with `{"seq": N}`.
pub async fn put_offset(engine: Arc<Engine>, group: &str, body: &[u8]) -> HttpResponse {
    #[derive(serde::Deserialize)]
    struct OffsetBody {
        seq: Option<serde_json::Number>,
    }
    if let Err(detail) = validate_group(group) {
        return ApiError::new(ErrorCode::Invalid, detail).into_response();
    }
    if let Err(error) = crate::http::orders::require_json_object(body) {
        return error.into_response();
    }
    let parsed: OffsetBody = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            return ApiError::new(
                ErrorCode::BadRequest,
                format!("body is not an offset: {error}"),
            )
            .into_response();
        }
    };
    let Some(number) = parsed.seq else {
        return ApiError::new(ErrorCode::BadRequest, "missing field seq").into_response();
    };
    let Some(seq) = number.as_u64() else {
        let code = if number.is_i64() || crate::http::orders::is_integer_beyond_64_bits(&number) {
            ErrorCode::Invalid
        } else {
            ErrorCode::BadRequest
        };
        return ApiError::new(
            code,
            format!("seq must be a non-negative integer, got {number}"),
        )
        .into_response();
    };
    let writer = engine.clone();
    let name = group.to_owned();
    // The commit may fdatasync the journal first (policies `interval`, `none`): off the
    // async workers.
    match tokio::task::spawn_blocking(move || writer.commit_offset(&name, seq)).await {
        Ok(Ok(())) => offset_view(&engine, group, seq),
        // An offset ahead of the journal would make the group skip records it never saw.
        Ok(Err(CommitOffsetError::AheadOfJournal { durable_seq })) => ApiError::new(
            ErrorCode::Invalid,
            format!("seq {seq} is past the journal's last durable record {durable_seq}"),
        )
        .into_response(),
        Ok(Err(CommitOffsetError::TooManyGroups(detail))) => {
            ApiError::new(ErrorCode::Invalid, detail).into_response()
        }
        Ok(Err(CommitOffsetError::Io(error))) => offsets_failed(error),
        Err(error) => offsets_failed(std::io::Error::other(error.to_string())),
    }
}

/// `DELETE /v1/consumers/{group}`: forgets the group (200 `{"group","deleted":true}`);
/// retention stops keeping records for it. 404 `unknown_group` if it has no offset.
pub async fn delete_group(engine: Arc<Engine>, group: &str) -> HttpResponse {
    if let Err(detail) = validate_group(group) {
        return ApiError::new(ErrorCode::Invalid, detail).into_response();
    }
    let name = group.to_owned();
    match tokio::task::spawn_blocking(move || engine.delete_group(&name)).await {
        Ok(Ok(true)) => reply::json(
            StatusCode::OK,
            &serde_json::json!({ "group": group, "deleted": true }),
        ),
        Ok(Ok(false)) => ApiError::new(
            ErrorCode::UnknownGroup,
            format!("group {group:?} has committed no offset"),
        )
        .into_response(),
        Ok(Err(error)) => offsets_failed(error),
        Err(error) => offsets_failed(std::io::Error::other(error.to_string())),
    }
}
