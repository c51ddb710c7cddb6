//! Black-box harness: runs the real `stampede` binary on loopback with its own data directory
//! and talks to it over real HTTP.
//!
//! Every wait here is bounded, so a hung server fails a test instead of hanging the suite.
//! When a test panics while a [`Server`] is alive, its `Drop` prints the server's output
//! (stdout and stderr, every incarnation) before killing it.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

pub mod in_process;
pub mod order_table;
pub mod power_cut;
pub mod redis_cluster;
pub mod requests;
pub mod stalling_disk;

#[allow(unused_imports)] // each test binary uses some of them
pub use requests::{Api, metric, metric_value, order, post_order_with};

/// The admin token every server gets unless a test says otherwise (32 characters).
pub const ADMIN_TOKEN: &str = "black-box-admin-token-32-chars!!";
const _: () = assert!(ADMIN_TOKEN.len() == 32);
/// The consumer token every server gets unless a test says otherwise.
pub const CONSUMER_TOKEN: &str = "black-box-consumer-token-for-workers";

/// How long a start may take: the `listening` line, then `/readyz` answering 200.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a SIGTERM'd server may take to drain and exit (the server's own drain bound is
/// 10 s).
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request timeout of the harness's HTTP clients.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `STAMPEDE_JOURNAL_FSYNC`: `always`, `interval` or `none`; `None` keeps the default.
    pub fsync: Option<&'static str>,
    /// `STAMPEDE_SHARDS`; `None` keeps the default (one per core).
    pub shards: Option<usize>,
    /// `STAMPEDE_ADMIN_TOKEN`; `None` leaves it unset (the engine generates one).
    pub admin_token: Option<String>,
    /// `STAMPEDE_CONSUMER_TOKEN`; `None` leaves it unset (the engine generates one).
    pub consumer_token: Option<String>,
    /// Written to `<tempdir>/stampede.toml` and passed with `--config`.
    pub config_toml: Option<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            fsync: None,
            shards: Some(2),
            admin_token: Some(ADMIN_TOKEN.to_string()),
            consumer_token: Some(CONSUMER_TOKEN.to_string()),
            config_toml: None,
            env: Vec::new(),
        }
    }
}

impl Opts {
    pub fn fsync(mut self, policy: &'static str) -> Self {
        self.fsync = Some(policy);
        self
    }

    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }
}

/// Why a start did not reach `/readyz` 200.
#[derive(Debug)]
pub struct StartFailure {
    /// The exit status, when the process exited (it is killed on a timeout).
    pub status: Option<ExitStatus>,
    pub reason: String,
    /// The output of this incarnation.
    pub output: String,
}

/// An HTTP answer, with the body kept as text and (when it parses) as JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Asserts the contract's error shape, `{"error": code, "detail": string}` (no other
    /// keys), the status and the code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status} {code}, got {} {}",
            self.status,
            self.text
        );
        let object = self
            .json
            .as_object()
            .unwrap_or_else(|| panic!("error body is not a JSON object: {:?}", self.text));
        assert_eq!(
            object.get("error").and_then(Value::as_str),
            Some(code),
            "error code in {}",
            self.text
        );
        let detail = object.get("detail").and_then(Value::as_str);
        assert!(
            detail.is_some_and(|detail| !detail.is_empty()),
            "detail must be a non-empty string: {}",
            self.text
        );
        assert_eq!(object.len(), 2, "error body has extra keys: {}", self.text);
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "error content-type: {:?}",
            self.header("content-type")
        );
    }
}

/// A running (or stopped, between `kill9`/`terminate` and `restart`) `stampede serve`.
pub struct Server {
    child: Option<Child>,
    pub base_url: String,
    pub addr: String,
    pub admin_token: String,
    /// The consumer token the server was given (empty when it generated one).
    pub consumer_token: String,
    opts: Opts,
    dir: tempfile::TempDir,
    /// Every output line of every incarnation, stderr and stdout interleaved.
    log: Arc<Mutex<Vec<String>>>,
    /// Index in `log` where the current incarnation's lines begin.
    log_start: usize,
    /// Signalled (by dropping) when a pipe reader thread reaches EOF.
    readers_done: Vec<mpsc::Receiver<()>>,
    client: reqwest::Client,
}

/// A fresh HTTP client (its own connection pool) that ignores proxy settings.
pub fn new_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("build reqwest client")
}

/// Removes ANSI colour escapes (the server's log may be coloured).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    listening: Option<tokio::sync::oneshot::Sender<String>>,
) -> mpsc::Receiver<()> {
    let (done_sender, done) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _done = done_sender;
        let mut listening = listening;
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end());
            if let Some(address) = line.strip_prefix("stampede listening on http://")
                && let Some(sender) = listening.take()
            {
                let _ = sender.send(address.trim().to_string());
            }
            log.lock().unwrap().push(format!("[{prefix}] {line}"));
        }
    });
    done
}

impl Server {
    /// Starts a server in a new temporary directory; panics (with its output) unless it
    /// becomes ready within [`START_TIMEOUT`].
    pub async fn start(opts: Opts) -> Server {
        let mut server = Self::new(opts);
        if let Err(failure) = server.try_spawn_ready().await {
            panic!(
                "server did not start: {} (status {:?})\n--- server output ---\n{}",
                failure.reason, failure.status, failure.output
            );
        }
        server
    }

    /// Spawns a server in a new temporary directory and returns as soon as it printed its
    /// listening line, without waiting for `/readyz` (recovery may still be running).
    pub async fn start_listening(opts: Opts) -> Server {
        let mut server = Self::new(opts);
        if let Err(failure) = server.try_spawn_listening().await {
            panic!(
                "server did not listen: {} (status {:?})\n--- server output ---\n{}",
                failure.reason, failure.status, failure.output
            );
        }
        server
    }

    fn new(opts: Opts) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("stampede-blackbox-")
            .tempdir()
            .expect("create tempdir");
        let admin_token = opts.admin_token.clone().unwrap_or_default();
        let consumer_token = opts.consumer_token.clone().unwrap_or_default();
        let server = Server {
            child: None,
            base_url: String::new(),
            addr: String::new(),
            admin_token,
            consumer_token,
            opts,
            dir,
            log: Arc::new(Mutex::new(Vec::new())),
            log_start: 0,
            readers_done: Vec::new(),
            client: new_client(),
        };
        if let Some(toml) = &server.opts.config_toml {
            std::fs::write(server.config_path(), toml).expect("write config file");
        }
        server
    }

    /// Starts the server again on the same data directory (after `kill9` or `terminate`);
    /// panics unless it becomes ready.
    pub async fn restart(&mut self) {
        if let Err(failure) = self.try_restart().await {
            panic!(
                "server did not restart: {} (status {:?})\n--- server output ---\n{}",
                failure.reason, failure.status, failure.output
            );
        }
    }

    /// Starts the server again on the same data directory and reports whether it became
    /// ready; a server that does not is killed (when still running) and reaped.
    pub async fn try_restart(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "restart of a server still running");
        self.try_spawn_ready().await
    }

    /// Starts the server again on the same data directory and returns as soon as it printed
    /// its listening line, without waiting for `/readyz` (recovery may still be running).
    /// Cancelling the wait leaves the process running: `kill9` ends it.
    pub async fn try_restart_listening(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "restart of a server still running");
        self.try_spawn_listening().await
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.data_dir().join("journal")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("stampede.toml")
    }

    /// The journal's segment files, in order.
    pub fn segments(&self) -> Vec<PathBuf> {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(self.journal_dir())
            .expect("read journal dir")
            .map(|entry| entry.expect("dir entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
            .collect();
        segments.sort();
        segments
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    async fn try_spawn_ready(&mut self) -> Result<(), StartFailure> {
        self.try_spawn_listening().await?;
        self.wait_ready(Instant::now() + START_TIMEOUT).await
    }

    /// Spawns the process and waits for its listening line.
    async fn try_spawn_listening(&mut self) -> Result<(), StartFailure> {
        self.log_start = self.log.lock().unwrap().len();
        let mut command = Command::new(env!("CARGO_BIN_EXE_stampede"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir());
        if self.opts.config_toml.is_some() {
            command.arg("--config").arg(self.config_path());
        }
        // Only what this harness sets may steer the server.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STAMPEDE_") {
                command.env_remove(name);
            }
        }
        command.env("NO_COLOR", "1");
        if let Some(token) = &self.opts.admin_token {
            command.env("STAMPEDE_ADMIN_TOKEN", token);
        }
        if let Some(token) = &self.opts.consumer_token {
            command.env("STAMPEDE_CONSUMER_TOKEN", token);
        }
        if let Some(fsync) = self.opts.fsync {
            command.env("STAMPEDE_JOURNAL_FSYNC", fsync);
        }
        if let Some(shards) = self.opts.shards {
            command.env("STAMPEDE_SHARDS", shards.to_string());
        }
        for (name, value) in &self.opts.env {
            command.env(name, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn stampede");
        let (listening_sender, listening) = tokio::sync::oneshot::channel();
        self.readers_done = vec![
            spawn_reader(
                child.stdout.take().expect("stdout piped"),
                "out",
                self.log.clone(),
                Some(listening_sender),
            ),
            spawn_reader(
                child.stderr.take().expect("stderr piped"),
                "err",
                self.log.clone(),
                None,
            ),
        ];
        self.child = Some(child);

        let address = match tokio::time::timeout(START_TIMEOUT, listening).await {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => return Err(self.start_failed("stdout closed before the listening line")),
            Err(_) => return Err(self.start_failed("no listening line in time")),
        };
        self.addr = address.clone();
        self.base_url = format!("http://{address}");
        Ok(())
    }

    /// Polls `/readyz` until 200; fails when the process exits or `deadline` passes.
    pub async fn wait_ready(&mut self, deadline: Instant) -> Result<(), StartFailure> {
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("probe client");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                self.wait_readers();
                return Err(StartFailure {
                    status: Some(status),
                    reason: format!("exited with {status} before /readyz said 200"),
                    output: self.output(),
                });
            }
            if let Ok(response) = probe.get(self.url("/readyz")).send().await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.start_failed("/readyz did not say 200 in time"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ends a failed start: the process exited or is killed, and is reaped either way.
    fn start_failed(&mut self, reason: &str) -> StartFailure {
        // A process that closed stdout may be exiting right now: give it a moment.
        let mut status = None;
        if let Some(child) = self.child.as_mut() {
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if let Ok(Some(exited)) = child.try_wait() {
                    status = Some(exited);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if status.is_none() {
                let _ = child.kill();
                status = child.wait().ok();
            }
        }
        self.child = None;
        self.wait_readers();
        StartFailure {
            status,
            reason: reason.to_string(),
            output: self.output(),
        }
    }

    /// Waits (bounded) until both pipe readers saw EOF, so the log holds every line.
    fn wait_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for done in self.readers_done.drain(..) {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = done.recv_timeout(left);
        }
    }

    /// The output lines of the current (or last) incarnation.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap()[self.log_start..].to_vec()
    }

    /// The output of the current (or last) incarnation, one string.
    pub fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// The output of every incarnation.
    pub fn all_output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGKILL now without reaping (usable while requests are in flight).
    pub fn send_sigkill(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }

    /// Sends SIGTERM now without waiting.
    pub fn send_sigterm(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_readers();
    }

    /// SIGTERM, then wait up to [`TERMINATE_TIMEOUT`] for the exit; returns its status.
    /// Panics (after a SIGKILL) when the server does not exit in time.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.send_sigterm();
        let status = self.wait_exit(TERMINATE_TIMEOUT).await;
        match status {
            Some(status) => status,
            None => {
                self.kill9();
                panic!(
                    "server did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM\n{}",
                    self.output()
                );
            }
        }
    }

    /// Waits for the process to exit by itself; `None` when it did not in time.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.wait_readers();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// The harness's shared client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.wait_readers();
            eprintln!(
                "--- stampede output ({}) ---\n{}\n--- end of stampede output ---",
                self.dir.path().display(),
                self.all_output()
            );
        }
    }
}

/// Reads a whole response; panics on a transport error.
pub async fn read_reply(response: reqwest::Result<reqwest::Response>) -> Reply {
    let response = response.unwrap_or_else(|error| panic!("request failed: {error:?}"));
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("read response body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}

/// The frames of a segment file: `(offset, total frame bytes incl. padding, payload_len,
/// seq)`. Stops at the first frame that does not fit the file.
pub fn segment_frames(bytes: &[u8]) -> Vec<(usize, usize, usize, u64)> {
    const HEADER: usize = 16;
    assert!(bytes.len() >= HEADER, "segment shorter than its header");
    assert_eq!(&bytes[..8], b"STMPJRN1", "segment magic");
    let mut frames = Vec::new();
    let mut offset = HEADER;
    while offset + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().unwrap());
        let end = offset + 16 + len;
        if len == 0 || end > bytes.len() {
            break;
        }
        let total = (16 + len).next_multiple_of(8);
        frames.push((offset, total, len, seq));
        offset += total;
    }
    frames
}

/// Runs `stampede` with `args` (and `STAMPEDE_*` cleared, plus `env`) until it exits by
/// itself, at most `timeout`; returns its status (`None`: it was killed at the timeout) and
/// its output.
pub fn run_to_exit(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Option<ExitStatus>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stampede"));
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STAMPEDE_") {
            command.env_remove(name);
        }
    }
    command.env("NO_COLOR", "1");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stampede");
    let log = Arc::new(Mutex::new(Vec::new()));
    let done = [
        spawn_reader(child.stdout.take().unwrap(), "out", log.clone(), None),
        spawn_reader(child.stderr.take().unwrap(), "err", log.clone(), None),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for done in done {
        let _ = done.recv_timeout(Duration::from_secs(5));
    }
    let output = log.lock().unwrap().join("\n");
    (status, output)
}
