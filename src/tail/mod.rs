//! `stampede tail`: the journal as NDJSON on stdout, for fulfilment workers, scripts and
//! operators.
//!
//! It owns the command's whole run: where the records come from, which are printed, when a
//! consumer group's offset is committed, and how it stops.
//!
//! - **Sources.** `--data-dir DIR` reads `<DIR>/journal` directly with a [`JournalReader`](crate::journal::JournalReader)
//!   ([`ReadLimit::Written`](crate::journal::ReadLimit::Written)), while the engine runs or not. `--url http://HOST:PORT` reads
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
//! before it commits. `--data-dir` commits through [`ConsumerOffsets`](crate::journal::ConsumerOffsets) (the files the
//! engine's `PUT /v1/consumers/{group}/offset` writes), `--url` through that endpoint, with
//! the consumer token (`--token`, env `STAMPEDE_CONSUMER_TOKEN`, or `--token-file`, e.g. the
//! engine's `<data-dir>/consumer.token`) as `Authorization: Bearer`.
//!
//! Where things are: this file parses the options, handles signals and owns `Delivery`
//! (stdout and the commit positions); `files.rs` is the `--data-dir` source, `url.rs` the
//! `--url` one; `tests.rs` the unit tests.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::watch;

use crate::api_client::Endpoint;
use crate::journal::ReadError;
use crate::journal::consumers::validate_group;
use crate::limits::{TAIL_COMMIT_INTERVAL, TAIL_COMMIT_RECORDS};
use crate::order::Action;

mod files;
mod url;

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
        Source::DataDir(dir) => files::tail_files(dir, &options, &stop),
        Source::Url(endpoint) => runtime.block_on(url::tail_http(endpoint.clone(), &options, stop)),
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

#[cfg(test)]
mod tests;
