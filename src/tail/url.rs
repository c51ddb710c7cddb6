//! `--url`: pages of `GET /v1/journal`, or with `--follow` its stream, through the shared
//! [`Client`]; transient failures waited out by a bounded [`Backoff`]; the group's offset
//! committed with `PUT /v1/consumers/{group}/offset`.

use std::borrow::Cow;
use std::io::Write;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use hyper::header::HeaderValue;
use tokio::sync::watch;

use crate::api_client::{Client, Endpoint, Failure};
use crate::limits::{
    CLIENT_RETRIES_FOLLOW, CLIENT_RETRIES_ONCE, CLIENT_RETRY_FIRST, CLIENT_RETRY_WAIT_MAX,
    FOLLOW_LINE_BYTES_MAX, FOLLOW_SILENCE_MAX, TAIL_IDLE_CHECK, TAIL_PAGE_RECORDS,
};

use super::{Delivery, Options, TailError, stdout_closed, stopped};

/// Consecutive transient failures, each waited out a little longer, up to a bound.
struct Backoff {
    failures: u32,
    limit: u32,
}

impl Backoff {
    /// After a failure: Ok(true) once the wait is over, Ok(false) when a signal came during
    /// it, an error when there were too many in a row.
    async fn wait(
        &mut self,
        failure: Failure,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, TailError> {
        let message = match failure {
            Failure::Fatal(message) => return Err(TailError::Http(message)),
            Failure::Transient(message) => message,
        };
        self.failures += 1;
        if self.failures > self.limit {
            return Err(TailError::Http(format!(
                "{message} (giving up after {} tries)",
                self.limit
            )));
        }
        let delay = CLIENT_RETRY_FIRST
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(CLIENT_RETRY_WAIT_MAX);
        eprintln!("stampede tail: {message}; retrying in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(true),
            _ = stop.wait_for(|stopped| *stopped) => Ok(false),
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The fields of a served line that tail needs; the line itself is printed as it came.
#[derive(serde::Deserialize)]
struct LineHead<'a> {
    seq: u64,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// One NDJSON line from the engine (blank lines are keep-alives).
fn take_line(delivery: &mut Delivery, line: &[u8]) -> Result<(), TailError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let head: LineHead = serde_json::from_slice(line).map_err(|error| {
        TailError::Http(format!(
            "the engine sent a line that is not a journal record ({error}): {}",
            String::from_utf8_lossy(line)
        ))
    })?;
    let expected = delivery.position + 1;
    if head.seq != expected {
        return Err(TailError::Gap {
            expected,
            found: head.seq,
        });
    }
    delivery.handle(head.seq, &head.kind, |out| out.write_all(line))
}

/// The commit side of an HTTP run: due commits as it goes (a failure that may pass is
/// reported and tried again after the interval).
async fn commit_if_due(
    client: &mut Client,
    delivery: &mut Delivery,
    group: Option<&str>,
) -> Result<(), TailError> {
    let (Some(group), Some(seq)) = (group, delivery.commit_due()?) else {
        return Ok(());
    };
    match client.commit(group, seq).await {
        Ok(()) => delivery.commit_done(Some(seq)),
        Err(Failure::Transient(message)) => {
            eprintln!("stampede tail: commit of seq {seq} failed: {message}; trying again");
            delivery.commit_done(None);
        }
        Err(Failure::Fatal(message)) => return Err(TailError::Http(message)),
    }
    Ok(())
}

pub(super) async fn tail_http(
    endpoint: Endpoint,
    options: &Options,
    mut stop: watch::Receiver<bool>,
) -> Result<(), TailError> {
    let token = match (&options.group, &options.token) {
        (Some(_), None) => {
            return Err(TailError::Http(
                "--group with --url commits the group's offset, which needs the engine's \
                 consumer token: --token, STAMPEDE_CONSUMER_TOKEN or --token-file (the engine \
                 writes it to <data-dir>/consumer.token unless configured)"
                    .into(),
            ));
        }
        (Some(_), Some(token)) => Some(
            HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| TailError::Http("the token is not a valid header value".into()))?,
        ),
        (None, _) => None,
    };
    // Pages are whole answers of at most `TAIL_PAGE_RECORDS` records: no byte cap of their own.
    let mut client = Client::new(endpoint, token, usize::MAX);
    let mut backoff = Backoff {
        failures: 0,
        limit: if options.follow {
            CLIENT_RETRIES_FOLLOW
        } else {
            CLIENT_RETRIES_ONCE
        },
    };
    let group = options.group.as_deref();
    let mut committed = None;
    if let Some(group) = group {
        loop {
            match client.group_offset(group).await {
                Ok(offset) => {
                    committed = offset;
                    break;
                }
                Err(failure) => {
                    if !backoff.wait(failure, &mut stop).await? {
                        return Ok(());
                    }
                }
            }
        }
        backoff.reset();
    }
    let mut delivery = Delivery::new(committed.unwrap_or(options.from), options);
    let result = if options.follow {
        follow_http(&mut client, &mut delivery, &mut backoff, group, &mut stop).await
    } else {
        page_http(&mut client, &mut delivery, &mut backoff, group, &mut stop).await
    };
    let finish = async {
        delivery.flush()?;
        if let (Some(group), Some(seq)) = (group, delivery.final_commit()) {
            client.commit(group, seq).await.map_err(|failure| {
                let (Failure::Transient(message) | Failure::Fatal(message)) = failure;
                TailError::Http(format!(
                    "last commit (seq {seq}) failed: {message}; the next run re-reads from \
                     the group's previous offset"
                ))
            })?;
        }
        Ok(())
    };
    let finish = finish.await;
    result.and(finish)
}

/// Without `--follow`: pages until one comes back empty.
async fn page_http(
    client: &mut Client,
    delivery: &mut Delivery,
    backoff: &mut Backoff,
    group: Option<&str>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), TailError> {
    loop {
        if stopped(stop) || delivery.closed {
            return Ok(());
        }
        let path = format!(
            "/v1/journal?from={}&limit={TAIL_PAGE_RECORDS}",
            delivery.position
        );
        let page = match client.ok(Method::GET, &path, Bytes::new()).await {
            Ok(page) => page,
            Err(failure) => {
                if !backoff.wait(failure, stop).await? {
                    return Ok(());
                }
                continue;
            }
        };
        backoff.reset();
        let before = delivery.position;
        for line in page.split(|byte| *byte == b'\n') {
            take_line(delivery, line)?;
            if delivery.closed {
                return Ok(());
            }
            commit_if_due(client, delivery, group).await?;
        }
        if delivery.position == before {
            return Ok(()); // caught up
        }
    }
}

/// With `--follow`: the `follow=true` stream, reopened after the last seq handled when it
/// ends, fails or falls silent.
async fn follow_http(
    client: &mut Client,
    delivery: &mut Delivery,
    backoff: &mut Backoff,
    group: Option<&str>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), TailError> {
    loop {
        if stopped(stop) || delivery.closed {
            return Ok(());
        }
        let path = format!("/v1/journal?from={}&follow=true", delivery.position);
        let mut body = match client.open_stream(&path).await {
            Ok(body) => body,
            Err(failure) => {
                if !backoff.wait(failure, stop).await? {
                    return Ok(());
                }
                continue;
            }
        };
        let mut pending: Vec<u8> = Vec::new();
        let mut last_byte = Instant::now();
        let mut check = tokio::time::interval(TAIL_IDLE_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
                _ = check.tick() => {
                    if stdout_closed() {
                        return Ok(());
                    }
                    commit_if_due(client, delivery, group).await?;
                    if last_byte.elapsed() >= FOLLOW_SILENCE_MAX {
                        break format!("sent nothing for {FOLLOW_SILENCE_MAX:?}");
                    }
                }
                frame = body.frame() => match frame {
                    None => break "ended".to_owned(),
                    Some(Err(error)) => break format!("failed: {error}"),
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else { continue };
                        last_byte = Instant::now();
                        backoff.reset();
                        pending.extend_from_slice(&data);
                        let mut start = 0;
                        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
                            take_line(delivery, &pending[start..start + end])?;
                            start += end + 1;
                            if delivery.closed {
                                return Ok(());
                            }
                            commit_if_due(client, delivery, group).await?;
                        }
                        pending.drain(..start);
                        if pending.len() > FOLLOW_LINE_BYTES_MAX {
                            return Err(TailError::Http(format!(
                                "the engine sent a line longer than {FOLLOW_LINE_BYTES_MAX} bytes"
                            )));
                        }
                        delivery.flush()?;
                        if delivery.closed {
                            return Ok(());
                        }
                    }
                },
            }
        };
        // Partial line: dropped; the new stream starts after the last whole record.
        let failure = Failure::Transient(format!("the journal stream {ended}"));
        if !backoff.wait(failure, stop).await? {
            return Ok(());
        }
    }
}
