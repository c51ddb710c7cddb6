//! `stampede tail`: the journal as NDJSON on stdout, for fulfilment workers, scripts and
//! operators.
//!
//! It owns the command's whole run: where the records come from, which are printed, when a
//! consumer group's offset is committed, and how it stops.
//!
//! - **Sources.** `--data-dir DIR` reads `<DIR>/journal` directly with a [`JournalReader`]
//!   ([`ReadLimit::Written`]), while the engine runs or not. `--url http://HOST:PORT` reads
//!   over HTTP: pages of `GET /v1/journal?from=&limit=`, or with `--follow` the `follow=true`
//!   stream (blank keep-alive lines skipped; when the stream ends or falls silent it
//!   reconnects after the last seq handled, with a bounded backoff).
//! - **Output.** One line per record, oldest first, `seq` strictly increasing by one (a gap is
//!   an error, never skipped): exactly the JSON that `GET /v1/journal` serves
//!   (`ArchivedRecord::to_json`). `--type` keeps some record types; a record filtered out
//!   still counts as handled.
//! - **Stopping.** Without `--follow` it ends once caught up. With it, it waits for new
//!   records (the reader's poll, or the stream) until SIGINT/SIGTERM or until stdout's reader
//!   goes away (a write fails with EPIPE, or an idle check sees the pipe closed); either way
//!   it exits 0 after its last commit. A second signal exits at once (130), uncommitted.
//!
//! **At-least-once.** With `--group NAME` it starts after the group's committed offset (else
//! after `--from`) and commits, as it goes, only seqs whose lines were written *and flushed*
//! to stdout (and the filtered-out records between them): every [`TAIL_COMMIT_INTERVAL`] or every
//! [`TAIL_COMMIT_RECORDS`] records, whichever comes first, and once more on exit. A consumer that
//! dies between a flush and the commit sees those records again on its next run; it never
//! skips one. The offset is never ahead of the journal, also after a power cut: only seqs read
//! from it are committed, and `--data-dir`, which reads what is written (perhaps not yet
//! synced under `fsync = "interval"`/`"none"`), fdatasyncs the segments those records are in
//! before it commits. `--data-dir` commits through [`ConsumerOffsets`] (the files the
//! engine's `PUT /v1/consumers/{group}/offset` writes), `--url` through that endpoint, with
//! the consumer token (`--token`, env `STAMPEDE_CONSUMER_TOKEN`, or `--token-file`, e.g. the
//! engine's `<data-dir>/consumer.token`) as `Authorization: Bearer`.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use hyper::header::HeaderValue;
use tokio::sync::watch;

use crate::api_client::{Client, Endpoint, Failure};
use crate::journal::consumers::validate_group;
use crate::journal::{ConsumerOffsets, JournalReader, ReadError, ReadLimit};
use crate::limits::{
    CLIENT_RETRIES_FOLLOW, CLIENT_RETRIES_ONCE, CLIENT_RETRY_FIRST, CLIENT_RETRY_WAIT_MAX,
    FOLLOW_LINE_BYTES_MAX, FOLLOW_SILENCE_MAX, TAIL_COMMIT_INTERVAL, TAIL_COMMIT_RECORDS,
    TAIL_IDLE_CHECK, TAIL_PAGE_RECORDS,
};
use crate::order::Action;

/// Where the records come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The engine's data directory (the journal is `<dir>/journal`).
    DataDir(PathBuf),
    /// A running engine's HTTP API.
    Url(Endpoint),
}

/// What `stampede tail` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    /// Print records with `seq > from` (when the group has no offset yet).
    pub from: u64,
    /// Keep waiting for new records.
    pub follow: bool,
    /// Resume from, and commit, this consumer group's offset.
    pub group: Option<String>,
    /// Record types to print; empty prints all.
    pub types: Vec<String>,
    /// `--url` with `--group`: the bearer token sent with each commit (the consumer token or
    /// the admin token).
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("no journal at {0} (is it the engine's data directory?)")]
    NoJournal(PathBuf),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("consumer group offsets in {dir}: {error}")]
    Offsets { dir: PathBuf, error: io::Error },
    #[error("journal gap: expected seq {expected}, the server sent {found}")]
    Gap { expected: u64, found: u64 },
    #[error("{0}")]
    Http(String),
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
    #[error("cannot start: {0}")]
    Start(io::Error),
}

/// Parses `--group`: the contract's id alphabet, 1..=64 bytes.
pub fn parse_group(text: &str) -> Result<String, String> {
    validate_group(text).map(|()| text.to_owned())
}

/// Every record `type` the journal has: `accepted`, `sku`, and each action's name.
pub fn record_types() -> impl Iterator<Item = &'static str> {
    ["accepted", "sku"]
        .into_iter()
        .chain(Action::ALL.into_iter().map(Action::as_str))
}

/// Parses one `--type` value (a typo is refused rather than silently matching nothing).
pub fn parse_type(text: &str) -> Result<String, String> {
    if record_types().any(|known| known == text) {
        Ok(text.to_owned())
    } else {
        let known: Vec<&str> = record_types().collect();
        Err(format!(
            "unknown record type {text:?}; one of {}",
            known.join(", ")
        ))
    }
}

/// Runs `stampede tail` to its end: Ok when it caught up (without `--follow`), was stopped by
/// a signal, or lost its reader on stdout, each after its last commit.
pub fn run(options: Options) -> Result<(), TailError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(TailError::Start)?;
    let stop = {
        let _context = runtime.enter();
        watch_signals().map_err(TailError::Start)?
    };
    match &options.source {
        Source::DataDir(dir) => tail_files(dir, &options, &stop),
        Source::Url(endpoint) => runtime.block_on(tail_http(endpoint.clone(), &options, stop)),
    }
}

/// Turns true at the first SIGTERM or SIGINT; a second one exits at once.
fn watch_signals() -> io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        sender.send_replace(true);
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        // Nothing more is committed: the next run re-reads from the last commit.
        std::process::exit(130);
    });
    Ok(receiver)
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// True when stdout is a pipe or socket whose reading end is gone (a follower that prints
/// nothing for a while would otherwise notice only at its next write).
fn stdout_closed() -> bool {
    let mut poll = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd that lives on this stack frame for the whole call; a
    // timeout of 0 never blocks.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// The lines on their way to stdout, and the positions the commits follow.
struct Delivery {
    out: io::BufWriter<io::Stdout>,
    types: Vec<String>,
    /// The last seq handled: its line written to the buffer, or filtered out.
    position: u64,
    /// The last seq whose line, and every line before it, reached stdout.
    flushed: u64,
    /// The group's committed offset (or the start, when it has none yet).
    committed: u64,
    last_commit: Instant,
    /// Commits happen (`--group` given).
    grouped: bool,
    /// Stdout's reader is gone.
    closed: bool,
}

impl Delivery {
    fn new(start: u64, options: &Options) -> Self {
        Self {
            out: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            types: options.types.clone(),
            position: start,
            flushed: start,
            committed: start,
            last_commit: Instant::now(),
            grouped: options.group.is_some(),
            closed: false,
        }
    }

    fn keeps(&self, type_name: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|kept| kept == type_name)
    }

    /// Handles record `seq`: writes its line (`write` writes the JSON, without the newline)
    /// when its type is kept.
    fn handle(
        &mut self,
        seq: u64,
        type_name: &str,
        write: impl FnOnce(&mut io::BufWriter<io::Stdout>) -> io::Result<()>,
    ) -> Result<(), TailError> {
        if self.closed {
            return Ok(());
        }
        if self.keeps(type_name) {
            let written = write(&mut self.out).and_then(|()| self.out.write_all(b"\n"));
            if let Err(error) = written {
                return self.failed(error);
            }
        }
        self.position = seq;
        Ok(())
    }

    /// Pushes every written line to stdout; only then are they committable.
    fn flush(&mut self) -> Result<(), TailError> {
        if self.closed {
            return Ok(());
        }
        match self.out.flush() {
            Ok(()) => {
                self.flushed = self.position;
                Ok(())
            }
            Err(error) => self.failed(error),
        }
    }

    fn failed(&mut self, error: io::Error) -> Result<(), TailError> {
        if error.kind() == io::ErrorKind::BrokenPipe {
            self.closed = true;
            Ok(())
        } else {
            Err(TailError::Stdout(error))
        }
    }

    /// The seq to commit now, if a commit is due (after flushing).
    fn commit_due(&mut self) -> Result<Option<u64>, TailError> {
        let handled = self.position.saturating_sub(self.committed);
        if !self.grouped
            || handled == 0
            || (handled < TAIL_COMMIT_RECORDS && self.last_commit.elapsed() < TAIL_COMMIT_INTERVAL)
        {
            return Ok(None);
        }
        self.flush()?;
        Ok(self.final_commit())
    }

    /// The seq to commit on the way out: what reached stdout, if not committed yet.
    fn final_commit(&self) -> Option<u64> {
        (self.grouped && self.flushed > self.committed).then_some(self.flushed)
    }

    /// A commit of `seq` succeeded (`Some`), or failed and is retried after the interval.
    fn commit_done(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.committed = seq;
        }
        self.last_commit = Instant::now();
    }
}

// ---- --data-dir ---------------------------------------------------------------------------

fn tail_files(
    data_dir: &Path,
    options: &Options,
    stop: &watch::Receiver<bool>,
) -> Result<(), TailError> {
    let journal_dir = data_dir.join("journal");
    if !journal_dir.is_dir() {
        return Err(TailError::NoJournal(journal_dir));
    }
    let offsets_failed = |error| TailError::Offsets {
        dir: crate::journal::consumers::consumers_dir(data_dir),
        error,
    };
    let group = match &options.group {
        Some(name) => {
            let offsets = ConsumerOffsets::open(data_dir).map_err(offsets_failed)?;
            let committed = offsets.get(name).map_err(offsets_failed)?;
            Some((offsets, name.as_str(), committed))
        }
        None => None,
    };
    let start = group
        .as_ref()
        .and_then(|(_, _, committed)| *committed)
        .unwrap_or(options.from);
    // The seqs up to here are on disk: synced by this run, or committed before it.
    let synced_through = std::cell::Cell::new(start);
    let commit = |seq: u64| match &group {
        Some((offsets, name, _)) => {
            sync_segments(&journal_dir, synced_through.get(), seq).map_err(|error| {
                TailError::Read(ReadError::Io(io::Error::new(
                    error.kind(),
                    format!("cannot sync the journal before a commit: {error}"),
                )))
            })?;
            synced_through.set(synced_through.get().max(seq));
            offsets.commit(name, seq).map_err(offsets_failed)
        }
        None => Ok(()),
    };
    let mut delivery = Delivery::new(start, options);
    let mut reader = JournalReader::open(&journal_dir, start, ReadLimit::Written);
    let mut last_check = Instant::now();
    let result = loop {
        if stopped(stop) || delivery.closed {
            break Ok(());
        }
        match reader.next_record() {
            Ok(Some((seq, record))) => {
                delivery.handle(seq, record.type_name(), |out| {
                    serde_json::to_writer(out, &record.to_json(seq)).map_err(io::Error::from)
                })?;
                if let Some(seq) = delivery.commit_due()? {
                    commit(seq)?;
                    delivery.commit_done(Some(seq));
                }
            }
            Ok(None) => {
                // Caught up: what is written goes out now, for a follower to see at once.
                delivery.flush()?;
                if let Some(seq) = delivery.commit_due()? {
                    commit(seq)?;
                    delivery.commit_done(Some(seq));
                }
                if !options.follow {
                    break Ok(());
                }
                if last_check.elapsed() >= TAIL_IDLE_CHECK {
                    last_check = Instant::now();
                    if stdout_closed() {
                        break Ok(());
                    }
                }
                reader.wait(TAIL_IDLE_CHECK);
            }
            Err(error) => break Err(TailError::Read(error)),
        }
    };
    // What reached stdout before the end (or the damage) was delivered: commit it.
    let finish = delivery
        .flush()
        .and_then(|()| match delivery.final_commit() {
            Some(seq) => commit(seq),
            None => Ok(()),
        });
    result.and(finish)
}

/// Puts the records in `(after, through]` on stable storage: fdatasyncs each segment that
/// holds some of them, and the directory (under `fsync = "none"` the engine syncs neither on
/// rotation). The engine's own syncs make this cheap when it already did (no dirty pages).
/// A segment deleted meanwhile by retention needs nothing.
fn sync_segments(journal_dir: &Path, after: u64, through: u64) -> io::Result<()> {
    if through <= after {
        return Ok(());
    }
    let segments = crate::journal::list_segments(journal_dir)?;
    for (index, (first, path)) in segments.iter().enumerate() {
        let last = segments
            .get(index + 1)
            .map_or(u64::MAX, |(next_first, _)| next_first - 1);
        if *first > through || last <= after {
            continue;
        }
        match std::fs::File::open(path) {
            Ok(file) => file.sync_data()?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    std::fs::File::open(journal_dir)?.sync_all()
}

// ---- --url --------------------------------------------------------------------------------

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

async fn tail_http(
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

#[cfg(test)]
mod tests;
