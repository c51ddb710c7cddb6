//! Black-box tests of `stampede tail` (`shared/spec/http-api.md`, the `stampede tail` row and
//! the Journal section): the real binary, against a real engine on loopback, reading the
//! engine's files (`--data-dir`) and its HTTP API (`--url`).
//!
//! Every wait is bounded; every `tail` process is killed and reaped when its test ends.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{Opts, Server, new_client, order, post_order_with};
use reqwest::StatusCode;
use serde_json::Value;

/// Bound on a `tail` run that ends by itself, and on any wait for a line or an exit.
const TAIL_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon a follower must print a record posted while it waits.
const FOLLOW_PROMPT: Duration = Duration::from_secs(5);

/// The two ways to point `tail` at an engine.
#[derive(Debug, Clone, Copy)]
enum Mode {
    DataDir,
    Url,
}

const MODES: [Mode; 2] = [Mode::DataDir, Mode::Url];

fn source_args(server: &Server, mode: Mode) -> Vec<String> {
    match mode {
        Mode::DataDir => vec!["--data-dir".into(), server.data_dir().display().to_string()],
        // The token lets `--group` commit; without a group it is not used.
        Mode::Url => vec![
            "--url".into(),
            server.base_url.clone(),
            "--token".into(),
            server.consumer_token.clone(),
        ],
    }
}

fn tail_command(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stampede"));
    command.arg("tail").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STAMPEDE_") {
            command.env_remove(name);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A `stampede tail` that runs by itself; stdout lines arrive on a channel.
struct Tail {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    started: Instant,
}

impl Tail {
    /// Starts `tail` with `args`; its stdout is read line by line, and closed after
    /// `read_at_most` lines when given (its reader goes away).
    fn spawn(args: &[String], read_at_most: Option<usize>) -> Tail {
        let mut child = tail_command(args).spawn().expect("spawn stampede tail");
        let stdout = child.stdout.take().expect("stdout piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut read = 0;
            while read_at_most.is_none_or(|most| read < most) {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                read += 1;
                if sender.send(line).is_err() {
                    break;
                }
            }
            // Dropping the reader closes the pipe.
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Tail {
            child: Some(child),
            lines,
            stderr,
            started: Instant::now(),
        }
    }

    /// The next `count` lines, each within `timeout`; panics (with stderr) otherwise.
    fn take(&mut self, count: usize, timeout: Duration) -> Vec<String> {
        (0..count)
            .map(|n| {
                self.lines.recv_timeout(timeout).unwrap_or_else(|error| {
                    panic!(
                        "tail printed {n} of {count} lines ({error}); stderr: {}",
                        self.stderr()
                    )
                })
            })
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Waits for the exit; panics (after a SIGKILL) when it does not come in time.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "tail did not exit within {timeout:?}; stderr: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every line printed after the exit (the reader thread ends at EOF).
    fn rest(&self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            rest.push(line);
        }
        rest
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a `tail` run that ends by itself printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn assert_ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "tail failed: {}; stderr: {}",
            self.status,
            self.stderr
        );
        self
    }

    fn records(&self) -> Vec<Value> {
        parse_lines(&self.stdout)
    }
}

/// Runs `tail` (without `--follow`) to its exit, bounded by [`TAIL_TIMEOUT`].
fn tail_once(args: &[String]) -> Run {
    let mut tail = Tail::spawn(args, None);
    let status = tail.wait_exit(TAIL_TIMEOUT);
    let stdout = tail.rest().concat();
    // The stderr thread ends at EOF, right after the exit.
    let until = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&tail.stderr) > 1 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    Run {
        status,
        stdout,
        stderr: tail.stderr(),
    }
}

fn args(server: &Server, mode: Mode, more: &[&str]) -> Vec<String> {
    let mut args = source_args(server, mode);
    args.extend(more.iter().map(|arg| arg.to_string()));
    args
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("tail line {line:?}: {e}"))
        })
        .collect()
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|record| record["seq"].as_u64().expect("seq"))
        .collect()
}

/// The journal as one `GET /v1/journal` page serves it, byte for byte.
async fn journal_text(server: &Server) -> String {
    let reply = server.get("/v1/journal?from=0&limit=10000").await;
    assert_eq!(reply.status, StatusCode::OK, "journal page: {}", reply.text);
    reply.text
}

/// Posts `count` orders (ids `{prefix}-{n}`, one user each) and returns their seqs.
async fn post_orders(server: &Server, prefix: &str, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        let reply = server
            .post_order(&order(&id, &format!("user-{id}"), "SKU-3", 1, "cod"))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "order {id}: {}",
            reply.text
        );
        seqs.push(reply.json["seq"].as_u64().expect("seq"));
    }
    seqs
}

/// A journal with orders and actions: accepted records, `pay` and `cancel` (the `pay` of `o1`
/// with an `Idempotency-Key`).
async fn busy_server() -> Server {
    let server = Server::start(Opts::default()).await;
    for n in 0..6 {
        let id = format!("o{n}");
        let reply = server
            .post_order(&order(&id, &format!("u{n}"), "SKU-1", 1, "prepaid"))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    for (id, action) in [("o0", "pay"), ("o1", "pay"), ("o2", "cancel")] {
        let reply = if id == "o1" {
            server.post_action_keyed(id, action, b"pay-o1", None).await
        } else {
            server.post_action(id, action, None).await
        };
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{action} {id}: {}",
            reply.text
        );
    }
    server
}

/// The group's offset as the engine reports it; `None` for 404 `unknown_group`.
async fn group_offset(server: &Server, group: &str) -> Option<u64> {
    let reply = server.get_offset(group).await;
    match reply.status {
        StatusCode::OK => Some(reply.json["seq"].as_u64().expect("seq")),
        StatusCode::NOT_FOUND => {
            reply.assert_error(404, "unknown_group");
            None
        }
        other => panic!("GET offset of {group}: {other} {}", reply.text),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sources_print_exactly_the_journal_while_the_engine_runs() {
    let server = busy_server().await;
    let expected = journal_text(&server).await;
    assert_eq!(parse_lines(&expected).len(), 3 + 6 + 3, "{expected}");
    for mode in MODES {
        let run = tail_once(&args(&server, mode, &[]));
        run.assert_ok();
        assert_eq!(
            run.stdout, expected,
            "{mode:?}: the same bytes as GET /v1/journal"
        );
        assert_eq!(run.records(), server.journal().await, "{mode:?}");
        // The keyed action's line carries its key; no other line has one.
        let keyed: Vec<Value> = run
            .records()
            .into_iter()
            .filter(|record| record.get("idempotency_key").is_some())
            .collect();
        assert_eq!(keyed.len(), 1, "{mode:?}: {keyed:?}");
        assert_eq!(keyed[0]["type"], "pay", "{mode:?}");
        assert_eq!(keyed[0]["order_id"], "o1", "{mode:?}");
        assert_eq!(keyed[0]["idempotency_key"], "pay-o1", "{mode:?}");
        // --from prints what follows the seq.
        let run = tail_once(&args(&server, mode, &["--from", "7"]));
        let from_seven: Vec<u64> = seqs(&run.assert_ok().records());
        assert_eq!(from_seven, (8..=12).collect::<Vec<_>>(), "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_filters_keep_only_those_records() {
    let server = busy_server().await;
    let journal = server.journal().await;
    let of_types = |types: &[&str]| -> Vec<Value> {
        journal
            .iter()
            .filter(|record| types.iter().any(|t| record["type"] == *t))
            .cloned()
            .collect()
    };
    for mode in MODES {
        let run = tail_once(&args(&server, mode, &["--type", "accepted"]));
        let accepted = run.assert_ok().records();
        assert_eq!(accepted.len(), 6, "{mode:?}: {}", run.stdout);
        assert_eq!(accepted, of_types(&["accepted"]), "{mode:?}");
        // Repeated and comma-separated.
        let run = tail_once(&args(
            &server,
            mode,
            &["--type", "sku", "--type", "pay,cancel"],
        ));
        assert_eq!(
            run.assert_ok().records(),
            of_types(&["sku", "pay", "cancel"]),
            "{mode:?}"
        );
        let run = tail_once(&args(&server, mode, &["--type", "expired"]));
        assert_eq!(run.assert_ok().stdout, "", "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_across_segments_match_and_a_missing_segment_is_a_failure() {
    // Small segments (64 KiB, about 680 records) and more records than one page (1000) of
    // `--url`.
    let mut server = Server::start(Opts {
        env: vec![(
            "STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX".to_string(),
            "65536".to_string(),
        )],
        ..Opts::default().fsync("none")
    })
    .await;
    server.create_sku("BULK", 10_000, 0, 1).await;
    let mut tasks = Vec::new();
    for task in 0..4 {
        let base_url = server.base_url.clone();
        tasks.push(tokio::spawn(async move {
            let client = new_client();
            for n in 0..550 {
                let id = format!("t{task}-{n}");
                let body = order(&id, &format!("u-{id}"), "BULK", 1, "cod");
                let reply = post_order_with(&client, &base_url, &body).await.unwrap();
                assert_eq!(reply.status, StatusCode::CREATED, "{id}: {}", reply.text);
            }
        }));
    }
    for task in tasks {
        task.await.expect("order task");
    }
    let expected = journal_text(&server).await;
    assert!(parse_lines(&expected).len() > 2200);
    for mode in MODES {
        let run = tail_once(&args(&server, mode, &[]));
        assert_eq!(run.assert_ok().stdout, expected, "{mode:?}");
    }
    server.terminate().await;
    let segments = server.segments();
    assert!(segments.len() >= 3, "{segments:?}");
    std::fs::remove_file(&segments[1]).expect("remove a segment");
    let run = tail_once(&args(&server, Mode::DataDir, &[]));
    assert_eq!(run.status.code(), Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("gap") || run.stderr.contains("damaged"),
        "{}",
        run.stderr
    );
    // What came before the hole was printed, in order.
    let printed = seqs(&run.records());
    assert!(
        printed
            .iter()
            .enumerate()
            .all(|(n, seq)| *seq == n as u64 + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_a_new_record_promptly_and_exits_0_on_sigterm() {
    let server = busy_server().await;
    let existing = server.journal().await.len();
    let mut tails: Vec<(Mode, Tail)> = MODES
        .iter()
        .map(|mode| {
            (
                *mode,
                Tail::spawn(&args(&server, *mode, &["--follow"]), None),
            )
        })
        .collect();
    for (_, tail) in &mut tails {
        tail.take(existing, TAIL_TIMEOUT);
    }
    for round in 0..2 {
        let posted = post_orders(&server, &format!("late{round}"), 1).await[0];
        for (mode, tail) in &mut tails {
            let started = Instant::now();
            let line = tail.take(1, FOLLOW_PROMPT).pop().unwrap();
            let record: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(record["seq"], posted, "{mode:?}: {line}");
            assert_eq!(record["type"], "accepted", "{mode:?}: {line}");
            assert!(started.elapsed() < FOLLOW_PROMPT);
        }
    }
    for (_, tail) in &tails {
        tail.signal(libc::SIGTERM);
    }
    for (mode, tail) in &mut tails {
        let status = tail.wait_exit(TAIL_TIMEOUT);
        assert!(status.success(), "{mode:?}: {status}; {}", tail.stderr());
        assert!(tail.rest().is_empty(), "{mode:?}: nothing more");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_exits_0_when_its_reader_goes_away() {
    let server = busy_server().await;
    for mode in MODES {
        // The reader takes one line and closes the pipe; the follower then has nothing new
        // to write, and must notice anyway.
        let mut tail = Tail::spawn(&args(&server, mode, &["--follow"]), Some(1));
        tail.take(1, TAIL_TIMEOUT);
        let status = tail.wait_exit(TAIL_TIMEOUT);
        assert!(status.success(), "{mode:?}: {status}; {}", tail.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_its_commit_and_never_skips() {
    let server = busy_server().await;
    for mode in MODES {
        let group = format!("pickers-{mode:?}").to_lowercase();
        let before = server.journal().await;
        let last = before.last().unwrap()["seq"].as_u64().unwrap();
        assert_eq!(group_offset(&server, &group).await, None);

        // First run: everything, then the offset is the last seq.
        let run = tail_once(&args(&server, mode, &["--group", &group]));
        assert_eq!(run.assert_ok().records(), before, "{mode:?}");
        assert_eq!(group_offset(&server, &group).await, Some(last), "{mode:?}");

        // New orders; the second run prints only those (`--from` is for a new group only).
        let posted = post_orders(&server, &format!("more-{group}"), 3).await;
        let run = tail_once(&args(&server, mode, &["--group", &group, "--from", "0"]));
        assert_eq!(seqs(&run.assert_ok().records()), posted, "{mode:?}");
        assert_eq!(group_offset(&server, &group).await, posted.last().copied());

        // A filtered run still moves the group past the records it skipped.
        let posted = post_orders(&server, &format!("again-{group}"), 2).await;
        let run = tail_once(&args(&server, mode, &["--group", &group, "--type", "sku"]));
        assert_eq!(run.assert_ok().stdout, "", "{mode:?}");
        assert_eq!(group_offset(&server, &group).await, posted.last().copied());
        let run = tail_once(&args(&server, mode, &["--group", &group]));
        assert_eq!(run.assert_ok().stdout, "", "{mode:?}: nothing new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_before_its_commit_sees_the_records_again() {
    let server = busy_server().await;
    for mode in MODES {
        let journal = server.journal().await;
        let group = format!("killed-{mode:?}").to_lowercase();
        // Seen by a follower that dies by SIGKILL before it commits.
        let mut tail = Tail::spawn(&args(&server, mode, &["--follow", "--group", &group]), None);
        let seen = parse_lines(&tail.take(journal.len(), TAIL_TIMEOUT).concat());
        assert_eq!(seen, journal, "{mode:?}");
        tail.signal(libc::SIGKILL);
        let killed_after = tail.started.elapsed();
        tail.wait_exit(TAIL_TIMEOUT);
        let offset = group_offset(&server, &group).await;
        if killed_after < Duration::from_millis(900) {
            // No commit can have happened yet (the first comes after 1 s or 1000 records).
            assert_eq!(offset, None, "{mode:?}: killed after {killed_after:?}");
        }
        // At-least-once: the offset is at most what was printed, and the next run goes on
        // right after it, with no gap.
        let last_seen = seqs(&seen).last().copied().unwrap();
        assert!(offset.is_none_or(|offset| offset <= last_seen), "{mode:?}");
        let run = tail_once(&args(&server, mode, &["--group", &group]));
        let again = run.assert_ok().records();
        let resumed_after = offset.unwrap_or(0);
        let expected: Vec<Value> = journal
            .iter()
            .filter(|record| record["seq"].as_u64().unwrap() > resumed_after)
            .cloned()
            .collect();
        assert_eq!(again, expected, "{mode:?}: resumed after {resumed_after}");
        if offset.is_none() {
            assert_eq!(again, journal, "{mode:?}: every record again");
        }

        // A follower stopped by SIGTERM commits on the way out.
        let mut tail = Tail::spawn(&args(&server, mode, &["--follow", "--group", &group]), None);
        std::thread::sleep(Duration::from_millis(300));
        let posted = post_orders(&server, &format!("k-{group}"), 1).await[0];
        let line = tail.take(1, FOLLOW_PROMPT).pop().unwrap();
        assert!(line.contains(&format!("\"seq\":{posted}")), "{line}");
        tail.signal(libc::SIGTERM);
        assert!(tail.wait_exit(TAIL_TIMEOUT).success(), "{}", tail.stderr());
        assert_eq!(
            group_offset(&server, &group).await,
            Some(posted),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_offset_is_never_ahead_of_the_journal() {
    let server = busy_server().await;
    let last = server.journal().await.last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    for mode in MODES {
        let group = format!("ahead-{mode:?}").to_lowercase();
        // Starting past the end reads nothing, so it commits nothing.
        let run = tail_once(&args(
            &server,
            mode,
            &["--group", &group, "--from", "1000000"],
        ));
        assert_eq!(run.assert_ok().stdout, "", "{mode:?}");
        assert_eq!(group_offset(&server, &group).await, None, "{mode:?}");
        let mut tail = Tail::spawn(
            &args(
                &server,
                mode,
                &["--follow", "--group", &group, "--from", "1000000"],
            ),
            None,
        );
        std::thread::sleep(Duration::from_millis(1500));
        tail.signal(libc::SIGTERM);
        assert!(tail.wait_exit(TAIL_TIMEOUT).success(), "{}", tail.stderr());
        assert_eq!(group_offset(&server, &group).await, None, "{mode:?}");
        assert!(
            !server
                .data_dir()
                .join(format!("consumers/{group}.offset"))
                .exists()
        );
        // A group that read everything sits exactly at the end.
        let run = tail_once(&args(&server, mode, &["--group", &group]));
        run.assert_ok();
        let offset = group_offset(&server, &group).await.expect("committed");
        assert!(offset <= last, "{mode:?}: {offset} > {last}");
        assert_eq!(offset, last, "{mode:?}");
    }
}

/// `--url --group` commits with the consumer token: none given is a failure before anything
/// is read, a wrong one is refused (401) and moves nothing; the engine's generated
/// `<data-dir>/consumer.token` (`--token-file`) and the admin token both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_group_commits_only_with_the_consumer_token() {
    let server = Server::start(Opts {
        consumer_token: None,
        ..Opts::default()
    })
    .await;
    server.create_sku("SKU-3", 1_000, 0, 10).await;
    let seqs = post_orders(&server, "tok", 3).await;
    let last = *seqs.last().unwrap();
    let token_file = server.data_dir().join("consumer.token");
    let url = server.base_url.clone();
    let run_args =
        |args: &[&str]| tail_once(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());

    let run = run_args(&["--url", &url, "--group", "tok-none"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("consumer token"), "{}", run.stderr);
    assert_eq!(
        run.stdout, "",
        "nothing is printed that could not be committed"
    );
    let run = run_args(&["--url", &url, "--group", "tok-none", "--token", "wrong"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert_eq!(group_offset(&server, "tok-none").await, None);

    let file = token_file.display().to_string();
    run_args(&["--url", &url, "--group", "tok-file", "--token-file", &file]).assert_ok();
    assert_eq!(group_offset(&server, "tok-file").await, Some(last));
    let admin = server.admin_token.clone();
    run_args(&["--url", &url, "--group", "tok-admin", "--token", &admin]).assert_ok();
    assert_eq!(group_offset(&server, "tok-admin").await, Some(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let run_args =
        |args: &[&str]| tail_once(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    for (args, why) in [
        (
            vec!["--data-dir", &data_dir, "--url", "http://127.0.0.1:1"],
            "both sources",
        ),
        (vec!["--url", "https://127.0.0.1:1"], "https"),
        (vec!["--url", "http://127.0.0.1:1/v1/journal"], "a path"),
        (
            vec!["--data-dir", &data_dir, "--type", "acepted"],
            "unknown type",
        ),
        (
            vec!["--data-dir", &data_dir, "--group", "../etc"],
            "bad group",
        ),
        (vec!["--data-dir", &data_dir, "--from", "-1"], "bad seq"),
    ] {
        let run = run_args(&args);
        assert_eq!(run.status.code(), Some(2), "{why}: {}", run.stderr);
        assert!(!run.stderr.is_empty(), "{why}");
    }
    // No journal in that directory.
    let run = run_args(&["--data-dir", &data_dir]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("no journal"), "{}", run.stderr);
    // Nothing listens there (a port taken and let go again): a few tries, then 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let run = run_args(&["--url", &url]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(15));
}
