//! Black-box test of `examples/fulfilment_worker.rs`: the real engine binary (through the
//! harness) and the real example binary, on loopback. It checks that the worker ships every
//! ready order once with the full stage history, leaves cancelled and refunded orders alone,
//! prints pick lists and packing slips with the right totals, and that a worker killed with
//! SIGKILL at any point and run again neither loses an order nor journals a stage twice.
//!
//! The example is built with `cargo build --example fulfilment_worker` (once per run of this
//! test binary) and run from the target directory. Every wait is bounded.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use common::{Opts, Server, order};
use reqwest::StatusCode;
use serde_json::json;

const STAGES: [&str; 7] = ["verify", "print", "pick", "check", "pack", "weigh", "ship"];
/// Bound on building the example (the build may wait for the target directory's lock).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on a worker run that ends by itself, and on waiting for its log lines.
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

/// The example binary, built on first use.
fn worker_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // This test runs from <target>/<profile>/deps/; the example lands in
        // <target>/<profile>/examples/.
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("profile dir");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "stampede", "--example", "fulfilment_worker"])
            .env(
                "CARGO_TARGET_DIR",
                profile_dir.parent().expect("target dir"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            command.arg("--release");
        }
        let mut child = command.spawn().expect("spawn cargo build");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let status = wait_child(&mut child, BUILD_TIMEOUT);
        let output = reader.join().unwrap_or_default();
        assert!(
            status.is_some_and(|status| status.success()),
            "cargo build --example fulfilment_worker: {status:?}\n{output}"
        );
        let binary = profile_dir.join("examples").join("fulfilment_worker");
        assert!(binary.exists(), "no example binary at {}", binary.display());
        binary
    })
}

/// Runs a blocking wait without stalling the test's runtime: the harness's pooled
/// connections keep being driven (a stalled runtime hands them out after the server closed
/// them).
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(wait)
}

/// Waits for a child to exit, at most `timeout`; kills it (and returns `None`) after that.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One run of the worker; its stderr (the log) is kept and its lines arrive on a channel.
struct Worker {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn spawn(server: &Server, out: &Path, args: &[&str]) -> Worker {
        let mut child = Command::new(worker_binary())
            .arg("--url")
            .arg(&server.base_url)
            .arg("--out")
            .arg(out)
            .args(args)
            .env("STAMPEDE_CONSUMER_TOKEN", &server.consumer_token)
            .env("RUST_LOG", "info,fulfilment_worker=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fulfilment_worker");
        let stderr = child.stderr.take().expect("stderr piped");
        let (sender, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = sender.send(line);
            }
        });
        Worker {
            child: Some(child),
            lines,
            log,
        }
    }

    fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the exit; panics (with the log) when it does not come in time.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        blocking(|| wait_child(&mut child, timeout))
            .unwrap_or_else(|| panic!("worker did not exit within {timeout:?}\n{}", self.output()))
    }

    /// Waits until the log has `count` lines containing `needle`: true, or false when the
    /// worker's stderr closed (it exited) first. Panics after `timeout`.
    fn wait_lines(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        while seen < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match blocking(|| self.lines.recv_timeout(left)) {
                Ok(line) if line.contains(needle) => seen += 1,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{seen} of {count} {needle:?} lines\n{}", self.output())
                }
            }
        }
        true
    }

    /// Panics (with the log) when a worker that should still run has exited.
    fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            panic!("worker exited early with {status}\n{}", self.output());
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- worker log ---\n{}\n--- end ---", self.output());
        }
    }
}

/// Runs the worker with `--once` to completion and asserts it exited 0.
fn run_once(server: &Server, out: &Path, args: &[&str]) {
    let mut worker = Worker::spawn(server, out, &[&["--once"], args].concat());
    let status = worker.wait(WORKER_TIMEOUT);
    assert!(
        status.success(),
        "worker exited {status}\n{}",
        worker.output()
    );
}

/// A ready order: what its documents must say.
#[derive(Debug, Clone, PartialEq)]
struct Ready {
    user: String,
    sku: String,
    qty: u64,
}

/// Places a ready order (cod, or prepaid/escrow and paid unless `pay` is false) and records
/// it in `ready`.
async fn place_ready(
    server: &Server,
    ready: &mut BTreeMap<String, Ready>,
    id: &str,
    sku: &str,
    qty: u64,
    payment: &str,
    pay: bool,
) {
    let user = format!("user-{id}");
    server
        .place(&order(id, &user, sku, qty as u32, payment))
        .await;
    if payment != "cod" && pay {
        server.act(id, "pay", None).await;
    }
    ready.insert(
        id.to_owned(),
        Ready {
            user,
            sku: sku.to_owned(),
            qty,
        },
    );
}

/// Records per order and type, from the whole journal.
async fn records_by_order(server: &Server) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for record in server.journal().await {
        if let Some(id) = record["order_id"].as_str() {
            let kind = record["type"].as_str().expect("type").to_owned();
            *counts.entry((id.to_owned(), kind)).or_default() += 1;
        }
    }
    counts
}

async fn last_seq(server: &Server) -> u64 {
    let journal = server.journal().await;
    journal
        .last()
        .and_then(|r| r["seq"].as_u64())
        .expect("a journal")
}

async fn group_offset(server: &Server, group: &str) -> Option<u64> {
    let reply = server.get_offset(group).await;
    match reply.status {
        StatusCode::OK => reply.json["seq"].as_u64(),
        StatusCode::NOT_FOUND => None,
        other => panic!("offset of {group}: {other} {}", reply.text),
    }
}

/// Every ready order is shipped with each stage in its history once and in order, and its
/// journal holds each stage record once; every other order has no stage at all and the
/// status given.
async fn assert_shipped_once(
    server: &Server,
    ready: &BTreeMap<String, Ready>,
    untouched: &[(&str, &str)],
) {
    let counts = records_by_order(server).await;
    for id in ready.keys() {
        let view = server.get_order(id).await;
        assert_eq!(view.json["status"], "shipped", "{id}: {}", view.text);
        let stages: Vec<&str> = view.json["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|item| item["event"].as_str())
            .filter(|event| STAGES.contains(event))
            .collect();
        assert_eq!(stages, STAGES, "{id}: {}", view.text);
        for stage in STAGES {
            let count = counts.get(&(id.clone(), stage.to_owned())).copied();
            assert_eq!(count, Some(1), "{id}: {stage} journaled {count:?} times");
        }
    }
    for (id, status) in untouched {
        let view = server.get_order(id).await;
        assert_eq!(view.json["status"], *status, "{id}: {}", view.text);
        for stage in STAGES {
            let key = ((*id).to_owned(), stage.to_owned());
            assert!(!counts.contains_key(&key), "{id} was {stage}ed");
        }
    }
}

/// The pick lists' text twins: order id → (sku, qty, file); panics when an order is on two
/// lists or a SKU's total is not the sum of its lines.
fn pick_lists(out: &Path) -> HashMap<String, (String, u64, String)> {
    let mut picks = HashMap::new();
    for entry in std::fs::read_dir(out).expect("read out dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with("-picklist.txt") {
            continue;
        }
        assert!(
            path.with_extension("html").exists(),
            "no HTML twin of {name}"
        );
        let text = std::fs::read_to_string(&path).expect("read pick list");
        let mut sku: Option<(String, u64, u64)> = None; // name, total, sum of lines
        let check = |sku: &Option<(String, u64, u64)>| {
            if let Some((name, total, sum)) = sku {
                assert_eq!(total, sum, "{name} in {text}");
            }
        };
        for line in text.lines().skip(3) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [id, "qty", qty] = words[..] {
                let qty: u64 = qty.parse().expect("qty");
                let (sku_name, _, sum) = sku.as_mut().expect("an order line under a SKU");
                *sum += qty;
                let previous = picks.insert(id.to_owned(), (sku_name.clone(), qty, name.clone()));
                assert!(
                    previous.is_none(),
                    "{id} on two pick lists: {previous:?}, {name}"
                );
            } else if let [sku_name, "total", total] = words[..] {
                check(&sku);
                sku = Some((sku_name.to_owned(), total.parse().expect("total"), 0));
            } else {
                panic!("unexpected pick list line {line:?} in {name}");
            }
        }
        check(&sku);
    }
    picks
}

/// Asserts the documents: each ready order on exactly one pick list with its SKU and qty,
/// one packing slip (text and HTML) naming it, nothing for other orders, no temp files.
fn assert_documents(out: &Path, ready: &BTreeMap<String, Ready>) {
    let picks = pick_lists(out);
    let picked: BTreeMap<String, (String, u64)> = picks
        .iter()
        .map(|(id, (sku, qty, _))| (id.clone(), (sku.clone(), *qty)))
        .collect();
    let expected: BTreeMap<String, (String, u64)> = ready
        .iter()
        .map(|(id, r)| (id.clone(), (r.sku.clone(), r.qty)))
        .collect();
    assert_eq!(picked, expected, "pick lists");
    let names: Vec<String> = std::fs::read_dir(out)
        .expect("read out dir")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|name| !name.ends_with(".tmp")),
        "temp files left: {names:?}"
    );
    let slips: Vec<&String> = names.iter().filter(|n| n.contains("-slip-")).collect();
    assert_eq!(slips.len(), 2 * ready.len(), "slips: {slips:?}");
    for (id, order) in ready {
        let (_, _, pick_list) = &picks[id];
        let wave = pick_list.strip_suffix("-picklist.txt").unwrap();
        let slip = out.join(format!("{wave}-slip-{id}.txt"));
        let text = std::fs::read_to_string(&slip)
            .unwrap_or_else(|e| panic!("slip of {id} ({}): {e}", slip.display()));
        for (label, value) in [
            ("order", id.as_str()),
            ("user", &order.user),
            ("sku", &order.sku),
            ("qty", &order.qty.to_string()),
        ] {
            assert!(
                text.lines()
                    .any(|line| line.split_whitespace().eq([label, value])),
                "{label} {value} in {text}"
            );
        }
        let html = std::fs::read_to_string(slip.with_extension("html")).expect("HTML slip");
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains(id.as_str()));
    }
}

fn snapshot(out: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(out)
        .expect("read out dir")
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read document"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_ships_ready_orders_and_prints_their_documents() {
    blocking(worker_binary);
    let server = Server::start(Opts::default()).await;
    server.create_sku("PICK-A", 1000, 0, 5).await;
    server.create_sku("PICK-B", 1000, 0, 5).await;
    let mut ready = BTreeMap::new();
    for i in 0..28u64 {
        let id = format!("w-{i:02}");
        let sku = if i % 2 == 0 { "PICK-A" } else { "PICK-B" };
        let payment = ["cod", "prepaid", "escrow", "prepaid"][i as usize % 4];
        place_ready(&server, &mut ready, &id, sku, 1 + i % 3, payment, true).await;
    }
    // An address, changed after payment: the slip shows the latest one.
    let mut with_address = order("w-addr", "user-w-addr", "PICK-B", 2, "prepaid");
    with_address["address"] = json!({"city": "Oslo", "street": "Storgata 1"});
    server.place(&with_address).await;
    server.act("w-addr", "pay", None).await;
    let modify = json!({"address": {"city": "Bergen", "street": "Bryggen 7"}});
    let reply = server.post_action("w-addr", "modify", Some(&modify)).await;
    assert_eq!(reply.status, StatusCode::OK);
    ready.insert(
        "w-addr".into(),
        Ready {
            user: "user-w-addr".into(),
            sku: "PICK-B".into(),
            qty: 2,
        },
    );
    // Never ready, or no longer: cancelled before payment, cod cancelled, paid then
    // refunded, never paid.
    server
        .place(&order("x-cancel", "ux", "PICK-A", 1, "prepaid"))
        .await;
    server.act("x-cancel", "cancel", None).await;
    server
        .place(&order("x-codcancel", "ux", "PICK-A", 1, "cod"))
        .await;
    server.act("x-codcancel", "cancel", None).await;
    server
        .place(&order("x-refund", "ux", "PICK-B", 1, "prepaid"))
        .await;
    server.act("x-refund", "pay", None).await;
    server.act("x-refund", "refund", None).await;
    server
        .place(&order("x-unpaid", "ux", "PICK-B", 1, "prepaid"))
        .await;
    // Order review: a held cod order is ready once approved, never while held or rejected.
    let api = server.api();
    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(&api.admin_token);
    let rules = admin(api.client.put(api.url("/v1/review/rules")))
        .json(&json!({"review_users": ["held-user"]}));
    assert_eq!(api.send(rules).await.status, StatusCode::OK);
    for id in ["h-approved", "h-held", "h-rejected"] {
        let reply = server
            .place(&order(id, "held-user", "PICK-A", 1, "cod"))
            .await;
        assert_eq!(reply["status"], "held");
    }
    for (id, action) in [("h-approved", "approve"), ("h-rejected", "reject")] {
        let path = format!("/v1/orders/{id}/{action}");
        let reply = api.send(admin(api.client.post(api.url(&path)))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    ready.insert(
        "h-approved".into(),
        Ready {
            user: "held-user".into(),
            sku: "PICK-A".into(),
            qty: 1,
        },
    );
    let untouched = [
        ("x-cancel", "cancelled"),
        ("x-codcancel", "cancelled"),
        ("x-refund", "refunded"),
        ("x-unpaid", "pending_payment"),
        ("h-held", "held"),
        ("h-rejected", "rejected"),
    ];

    let out = tempfile::tempdir().expect("out dir");
    let started = Instant::now();
    run_once(&server, out.path(), &[]);
    eprintln!(
        "worker --once shipped {} orders in {:?}",
        ready.len(),
        started.elapsed()
    );

    assert_shipped_once(&server, &ready, &untouched).await;
    assert_documents(out.path(), &ready);
    // 30 ready orders in waves of 20: two pick lists, totals per SKU as ordered.
    let picks = pick_lists(out.path());
    let files: HashSet<&String> = picks.values().map(|(_, _, file)| file).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let mut units: BTreeMap<&str, u64> = BTreeMap::new();
    for order in ready.values() {
        *units.entry(&order.sku).or_default() += order.qty;
    }
    let mut listed: BTreeMap<&str, u64> = BTreeMap::new();
    for (sku, qty, _) in picks.values() {
        *listed.entry(sku).or_default() += qty;
    }
    assert_eq!(listed, units);
    let (_, _, file) = &picks["w-addr"];
    let slip = file.replace("-picklist.txt", "-slip-w-addr.txt");
    let slip = std::fs::read_to_string(out.path().join(slip)).expect("slip");
    assert!(
        slip.contains("city: Bergen") && !slip.contains("Oslo"),
        "{slip}"
    );
    // The parcel on the slip is the one journaled with the order's ship.
    let shipment = server.order("w-addr").await["shipment"].clone();
    assert_eq!(shipment["carrier"], "stampede-post", "{shipment}");
    let tracking = shipment["tracking_no"].as_str().expect("a tracking number");
    assert!(slip.contains(&format!("tracking  {tracking}")), "{slip}");
    assert!(slip.contains("carrier   stampede-post"), "{slip}");

    let end = last_seq(&server).await;
    assert_eq!(group_offset(&server, "picking").await, Some(end));

    // A second run finds nothing to do: no record, the same files.
    let before = snapshot(out.path());
    run_once(&server, out.path(), &[]);
    assert_eq!(last_seq(&server).await, end, "a rerun journaled something");
    assert_eq!(
        snapshot(out.path()),
        before,
        "a rerun changed the documents"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_resumes_without_losing_or_repeating_an_order() {
    blocking(worker_binary);
    let server = Server::start(Opts::default()).await;
    server.create_sku("KILL-A", 1000, 0, 5).await;
    server.create_sku("KILL-B", 1000, 0, 5).await;
    let mut ready = BTreeMap::new();
    // Accepted first and paid only after the worker has committed past their acceptance.
    let mut late = BTreeMap::new();
    for i in 0..4u64 {
        let id = format!("late-{i}");
        place_ready(
            &server,
            &mut late,
            &id,
            "KILL-B",
            1 + i % 2,
            "prepaid",
            false,
        )
        .await;
    }
    server
        .place(&order("late-cancel", "ul", "KILL-A", 1, "prepaid"))
        .await;
    for i in 0..45u64 {
        let id = format!("k-{i:02}");
        let sku = if i % 3 == 0 { "KILL-A" } else { "KILL-B" };
        let payment = if i % 2 == 0 { "cod" } else { "prepaid" };
        place_ready(&server, &mut ready, &id, sku, 1 + i % 4, payment, true).await;
    }
    let out = tempfile::tempdir().expect("out dir");
    let args = ["--once", "--wave-size", "3"];
    let started = Instant::now();

    // First run: killed in its second wave (a wave is 3 orders x 7 stages), so the first
    // wave's commit is behind it.
    let mut first = Worker::spawn(&server, out.path(), &args);
    assert!(
        first.wait_lines("marked", 30, WORKER_TIMEOUT),
        "{}",
        first.output()
    );
    first.kill9();
    let offset = group_offset(&server, "picking")
        .await
        .expect("a commit after wave 1");
    let accepted = server.accepted_orders().await;
    let late_seq = accepted["late-cancel"]["seq"].as_u64().unwrap();
    assert!(
        offset > late_seq,
        "offset {offset} not past the late orders ({late_seq})"
    );
    for id in late.keys() {
        server.act(id, "pay", None).await;
    }
    server.act("late-cancel", "cancel", None).await;
    ready.extend(late);

    // More runs, each killed somewhere else (mid-wave, or between a wave and its commit).
    for kill_at in [17, 41, 64] {
        let mut worker = Worker::spawn(&server, out.path(), &args);
        if worker.wait_lines("marked", kill_at, WORKER_TIMEOUT) {
            worker.kill9();
        } else {
            let status = worker.wait(WORKER_TIMEOUT);
            assert!(status.success(), "{}", worker.output());
        }
    }
    run_once(&server, out.path(), &args[1..]);
    eprintln!("4 killed runs and a last one in {:?}", started.elapsed());

    assert_shipped_once(&server, &ready, &[("late-cancel", "cancelled")]).await;
    assert_documents(out.path(), &ready);
    let end = last_seq(&server).await;
    assert_eq!(group_offset(&server, "picking").await, Some(end));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_ships_orders_as_they_come_and_commits_on_sigterm() {
    blocking(worker_binary);
    let server = Server::start(Opts::default()).await;
    server.create_sku("FOLLOW-A", 1000, 0, 5).await;
    let out = tempfile::tempdir().expect("out dir");
    let mut worker = Worker::spawn(
        &server,
        out.path(),
        &["--group", "packers", "--wave-size", "4", "--wave-ms", "300"],
    );
    assert!(
        worker.wait_lines("starting", 1, WORKER_TIMEOUT),
        "{}",
        worker.output()
    );
    let mut ready = BTreeMap::new();
    for i in 0..10u64 {
        let payment = if i % 2 == 0 { "cod" } else { "prepaid" };
        let id = format!("f-{i}");
        place_ready(
            &server,
            &mut ready,
            &id,
            "FOLLOW-A",
            1 + i % 2,
            payment,
            true,
        )
        .await;
    }
    server
        .place(&order("f-cancel", "uf", "FOLLOW-A", 1, "cod"))
        .await;
    server.act("f-cancel", "cancel", None).await;

    // 10 orders in waves of 4: the last 2 go out when their wave's 300 ms are up.
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in ready.keys() {
        loop {
            let view = server.get_order(id).await;
            if view.json["status"] == "shipped" {
                break;
            }
            worker.assert_running();
            assert!(Instant::now() < deadline, "{id} not shipped: {}", view.text);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Idle, it commits everything it read, its own stage records included.
    let end = last_seq(&server).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_offset(&server, "packers").await != Some(end) {
        worker.assert_running();
        assert!(Instant::now() < deadline, "offset never reached {end}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.signal(libc::SIGTERM);
    let status = worker.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", worker.output());
    assert_shipped_once(&server, &ready, &[("f-cancel", "cancelled")]).await;
    assert_documents(out.path(), &ready);
    assert_eq!(group_offset(&server, "picking").await, None);
}
