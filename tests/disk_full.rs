//! Black-box: the journal's file system fills up, and then has room again.
//!
//! The real binary runs with its data directory on a small tmpfs this test mounts (4 MiB),
//! next to a ballast file the test wrote first. Orders with large addresses fill the disk
//! until the journal's group write fails with ENOSPC: from then on orders are answered 503
//! `unavailable` and `/readyz` 503 `journal_unwritable`. The ballast is deleted; without a
//! restart, `/readyz` turns 200 and orders are accepted again. Finally the server is killed
//! and restarted: every order answered 201 is in the journal with its seq, and no order
//! answered 503 is.
//!
//! Three more cases, from adversarial testing:
//! - a start without room for the inventory slot file (a first start on a nearly full disk,
//!   or a restart with a larger `inventory.skus_max`) exits 3 with a message naming the
//!   file, not SIGBUS (exit 135, no message) when the map's first page cannot be backed;
//! - a checkpoint that fails for lack of room leaves no temporary file behind;
//! - with retention on, a retention pass on the full disk takes no checkpoint (it would
//!   take the room the journal waits for) and leaves no temporary file, and admission
//!   resumes once room is freed.
//!
//! Mounting needs root (or CAP_SYS_ADMIN). Where `mount` fails the test says why and skips.
//! The tmpfs is unmounted when the test ends, however it ends (a drop guard).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "disk-full-admin-token-32-chars!!";
const SKU: &str = "DISK-1";
const TMPFS_SIZE: &str = "4m";
const BALLAST_BYTES: usize = 1024 * 1024;
/// Concurrent clients while filling the disk (so group commits carry several orders).
const CLIENTS: usize = 8;
/// Bound on the orders sent to fill the disk (4 MiB / ~1.1 KiB per record is ~3 600).
const FILL_ORDERS_MAX: usize = 20_000;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const RESUME_TIMEOUT: Duration = Duration::from_secs(15);

/// A tmpfs mounted for the test; unmounted on drop.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn mount(path: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        for attempt in 0..20 {
            let status = Command::new("umount").arg(&self.path).status();
            if status.is_ok_and(|s| s.success()) {
                return;
            }
            // A process that was just killed may still hold a file open for a moment.
            std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
        }
        let lazy = Command::new("umount").arg("-l").arg(&self.path).status();
        eprintln!(
            "umount {} failed; lazy unmount: {lazy:?}",
            self.path.display()
        );
    }
}

/// `stampede serve` on `data_dir`, run until it exits (it must, within [`START_TIMEOUT`]):
/// its exit code (`None`: killed by a signal) and its output.
fn serve_until_exit(data_dir: &Path, config: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stampede"));
    command
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STAMPEDE_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .env("NO_COLOR", "1")
        .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stampede");
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stampede kept running without room for its inventory file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    (status.code(), output)
}

fn write_config(path: &Path, skus_max: u32, journal: &str) {
    std::fs::write(
        path,
        format!(
            "[inventory]\nskus_max = {skus_max}\norders_expected = 1000\n\n{journal}\n\
             [[catalogue]]\nsku = \"{SKU}\"\nstock = 1000000\nmax_per_order = 1\n"
        ),
    )
    .unwrap();
}

/// Mounts a tmpfs of `size` under a new temporary root, or says why not (the test skips).
fn mount_tmpfs(size: &str) -> Option<(tempfile::TempDir, TmpfsMount)> {
    let root = tempfile::Builder::new()
        .prefix("stampede-disk-full-")
        .tempdir()
        .unwrap();
    match TmpfsMount::mount(&root.path().join("tmpfs"), size) {
        Ok(mount) => Some((root, mount)),
        Err(reason) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs for the disk-full test ({reason}); needs root or CAP_SYS_ADMIN"
            );
            None
        }
    }
}

/// Temporary checkpoint files (`.<seq>.ckpt.tmp`) in `dir`.
fn temporary_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with('.') && name.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// An `inventory.skus_max` whose slot file (128 bytes a slot: 8 MiB) exceeds the tmpfs.
const SKUS_PAST_THE_DISK: u32 = 65_536;

#[test]
fn a_start_without_room_for_the_inventory_file_exits_3_naming_it() {
    let Some((root, mount)) = mount_tmpfs(TMPFS_SIZE) else {
        return;
    };
    let config = root.path().join("stampede.toml");
    let expect_refused = |data_dir: &Path, case: &str| {
        let (code, output) = serve_until_exit(data_dir, &config);
        assert_eq!(code, Some(3), "{case}: exit code (135 is SIGBUS)\n{output}");
        assert!(
            output.contains("inventory file") && output.contains("inventory.slots"),
            "{case}: the message names the inventory file\n{output}"
        );
        assert!(
            output.contains("No space left on device"),
            "{case}: the message says the disk is full\n{output}"
        );
    };
    // A first start: the slot file does not fit.
    write_config(&config, SKUS_PAST_THE_DISK, "");
    expect_refused(&mount.path.join("first"), "first start");
    // A restart with a larger `skus_max`: the engine ran with 16 slots, then asks for more
    // than the disk has.
    let data_dir = mount.path.join("grown");
    write_config(&config, 16, "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut engine = runtime.block_on(Engine::start(&data_dir, &config));
    engine.kill();
    drop(engine);
    write_config(&config, SKUS_PAST_THE_DISK, "");
    expect_refused(&data_dir, "restart with a larger skus_max");
    drop(mount);
}

#[test]
fn a_checkpoint_that_fails_for_lack_of_room_leaves_no_temporary_file() {
    use stampede::checkpoint::{self, Checkpoint, OrderState};
    let Some((_root, mount)) = mount_tmpfs("1m") else {
        return;
    };
    let dir = mount.path.join("checkpoints");
    // ~2 MiB of order entries: more than the file system holds.
    let big = Checkpoint {
        seq: 7,
        created_ms: 0,
        skus: Vec::new(),
        orders: (0..50_000)
            .map(|key| OrderState {
                key,
                words: [key; 4],
            })
            .collect(),
        timers: Vec::new(),
        idempotency_keys: Vec::new(),
        review_rules: None,
        paused_slots: Vec::new(),
    };
    let error = checkpoint::write(&dir, &big).expect_err("a checkpoint larger than the disk");
    assert!(
        stampede::journal::storage::is_out_of_space(&error),
        "{error}"
    );
    assert_eq!(temporary_files(&dir), Vec::<String>::new(), "left behind");
    // The room came back: a file of most of the disk fits.
    std::fs::write(mount.path.join("fits"), vec![1u8; 900 * 1024]).expect("room is back");
    std::fs::remove_file(mount.path.join("fits")).unwrap();
    // With too little room for it twice over, the engine's write takes none at all.
    let error = checkpoint::write_if_room(&dir, &big).expect_err("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
    assert_eq!(temporary_files(&dir), Vec::<String>::new());
    drop(mount);
}

/// The `stampede serve` process.
struct Engine {
    child: Option<Child>,
    base_url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Engine {
    async fn start(data_dir: &Path, config: &Path) -> Engine {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stampede"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(config);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STAMPEDE_") {
                command.env_remove(name);
            }
        }
        command
            .env("NO_COLOR", "1")
            .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STAMPEDE_JOURNAL_FSYNC", "always")
            .env("STAMPEDE_SHARDS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn stampede");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        spawn_reader(child.stdout.take().unwrap(), log.clone(), Some(address_tx));
        spawn_reader(child.stderr.take().unwrap(), log.clone(), None);
        let mut engine = Engine {
            child: Some(child),
            base_url: String::new(),
            log,
        };
        let address = address_rx
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|_| panic!("no listening line\n{}", engine.output()));
        engine.base_url = format!("http://{address}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (status, _) = engine.get("/readyz").await;
            if status == 200 {
                return engine;
            }
            assert!(Instant::now() < deadline, "not ready\n{}", engine.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = client()
            .get(format!("{}{path}", self.base_url))
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(error) => (0, Value::String(error.to_string())),
        }
    }

    /// Every `accepted` record of the journal: order id → seq.
    async fn journaled_orders(&self) -> HashMap<String, u64> {
        let mut orders = HashMap::new();
        let mut from = 0u64;
        let mut expected_seq = 1;
        loop {
            let response = client()
                .get(format!(
                    "{}/v1/journal?from={from}&limit=500",
                    self.base_url
                ))
                .send()
                .await
                .expect("GET /v1/journal");
            assert_eq!(response.status().as_u16(), 200);
            let text = response.text().await.unwrap();
            let mut last = None;
            for line in text.lines().filter(|line| !line.is_empty()) {
                let record: Value = serde_json::from_str(line).unwrap();
                let seq = record["seq"].as_u64().unwrap();
                assert_eq!(seq, expected_seq, "the journal is gap-free");
                expected_seq += 1;
                if record["type"] == "accepted" {
                    let id = record["order_id"].as_str().unwrap().to_owned();
                    assert!(
                        orders.insert(id.clone(), seq).is_none(),
                        "{id} journaled twice"
                    );
                }
                last = Some(seq);
            }
            match last {
                Some(seq) => from = seq,
                None => return orders,
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- stampede output ---\n{}\n--- end ---", self.output());
        }
    }
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
    address: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("stampede listening on http://")
                && let Some(sender) = &address
            {
                let _ = sender.send(rest.trim().to_owned());
            }
            log.lock().unwrap().push(line);
        }
    });
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What one order got: 201 with its seq, or 503 `unavailable`. Anything else fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted(u64),
    Unavailable,
}

async fn post_order(client: &reqwest::Client, base_url: &str, id: &str) -> Answer {
    let body = json!({
        "order_id": id,
        "user_id": format!("user-{id}"),
        "sku": SKU,
        "qty": 1,
        "payment": "cod",
        // ~1 KiB: the address may be up to 1024 bytes of JSON.
        "address": {"street": "s".repeat(960), "city": "Oslo"},
    });
    let reply = common::post_order_with(client, base_url, &body)
        .await
        .unwrap_or_else(|e| panic!("POST {id}: {e}"));
    let (status, text, value) = (reply.status.as_u16(), &reply.text, &reply.json);
    match status {
        201 => Answer::Accepted(value["seq"].as_u64().expect("seq")),
        503 => {
            assert_eq!(value["error"], "unavailable", "{id}: {text}");
            assert!(
                reply.headers.contains_key("retry-after"),
                "{id}: 503 without Retry-After"
            );
            Answer::Unavailable
        }
        other => panic!("{id}: unexpected {other} {text}"),
    }
}

/// Sends orders from [`CLIENTS`] concurrent clients until the first 503 (each client then
/// finishes the order it has in flight). Returns every order's answer.
async fn fill_until_unavailable(base_url: &str) -> Vec<(String, Answer)> {
    let full = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..CLIENTS {
        let (full, base_url) = (full.clone(), base_url.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut answers = Vec::new();
            for n in 0..FILL_ORDERS_MAX / CLIENTS {
                if full.load(Ordering::Acquire) {
                    break;
                }
                let id = format!("fill-{task}-{n}");
                let answer = post_order(&client, &base_url, &id).await;
                if answer == Answer::Unavailable {
                    full.store(true, Ordering::Release);
                }
                answers.push((id, answer));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_stops_admission_and_it_resumes_without_a_restart_when_room_returns() {
    let root = tempfile::Builder::new()
        .prefix("stampede-disk-full-")
        .tempdir()
        .unwrap();
    let mount_point = root.path().join("tmpfs");
    let mount = match TmpfsMount::mount(&mount_point, TMPFS_SIZE) {
        Ok(mount) => mount,
        Err(reason) => {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs for the disk-full test ({reason}); needs root or CAP_SYS_ADMIN"
            );
            return;
        }
    };
    let data_dir = mount.path.join("data");
    let ballast = mount.path.join("ballast");
    std::fs::write(&ballast, vec![0x5Au8; BALLAST_BYTES]).unwrap();
    let config = root.path().join("stampede.toml");
    std::fs::write(
        &config,
        format!(
            "[inventory]\nskus_max = 16\norders_expected = 1000\n\n\
             [[catalogue]]\nsku = \"{SKU}\"\nstock = 1000000\nmax_per_order = 1\n"
        ),
    )
    .unwrap();

    let mut engine = Engine::start(&data_dir, &config).await;

    // Fill the disk.
    let mut answers = fill_until_unavailable(&engine.base_url).await;
    let accepted_before = answers
        .iter()
        .filter(|(_, a)| matches!(a, Answer::Accepted(_)))
        .count();
    assert!(
        answers.iter().any(|(_, a)| *a == Answer::Unavailable),
        "{} orders and the disk never filled",
        answers.len()
    );
    assert!(accepted_before > 1000, "only {accepted_before} orders fit");
    // Admission is stopped, and says why; reads still work.
    let (status, body) = engine.get("/readyz").await;
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("journal_unwritable")),
        "{body}"
    );
    assert_eq!(engine.get("/healthz").await.0, 200);
    assert_eq!(engine.get(&format!("/v1/skus/{SKU}")).await.0, 200);
    let client = client();
    for n in 0..5 {
        let id = format!("while-full-{n}");
        let answer = post_order(&client, &engine.base_url, &id).await;
        assert_eq!(answer, Answer::Unavailable, "{id}");
        answers.push((id, answer));
    }
    // It stays stopped while the disk stays full (the retry runs every 500 ms).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(engine.get("/readyz").await.0, 503);

    // Room returns: admission resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + RESUME_TIMEOUT;
    loop {
        let (status, body) = engine.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert_eq!(body["status"], "journal_unwritable");
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} {body} after room returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_seq_before = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Answer::Accepted(seq) => Some(*seq),
            Answer::Unavailable => None,
        })
        .max()
        .unwrap();
    for n in 0..50 {
        let id = format!("after-{n}");
        let answer = post_order(&client, &engine.base_url, &id).await;
        let Answer::Accepted(seq) = answer else {
            panic!("{id} refused after room returned")
        };
        assert!(seq > last_seq_before);
        answers.push((id, answer));
    }

    let log = engine.output();
    assert!(log.contains("lack of room"), "the stop is logged:\n{log}");
    assert!(
        log.contains("admission resumes"),
        "the resume is logged:\n{log}"
    );

    // Killed and restarted: exactly the acknowledged orders are in the journal.
    engine.kill();
    let engine = Engine::start(&data_dir, &config).await;
    let journaled = engine.journaled_orders().await;
    let mut accepted = 0;
    let mut refused = 0;
    for (id, answer) in &answers {
        match answer {
            Answer::Accepted(seq) => {
                assert_eq!(
                    journaled.get(id),
                    Some(seq),
                    "acknowledged {id} lost or moved"
                );
                accepted += 1;
            }
            Answer::Unavailable => {
                assert!(
                    !journaled.contains_key(id),
                    "{id} was answered 503 but is journaled"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(
        journaled.len(),
        accepted,
        "nothing but the acknowledged orders"
    );
    let (status, sku) = engine.get(&format!("/v1/skus/{SKU}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sku["stock_total"].as_u64().unwrap() - sku["available"].as_u64().unwrap(),
        accepted as u64,
        "stock taken is exactly the acknowledged orders: {sku}"
    );
    eprintln!(
        "disk full after {accepted_before} orders; {refused} answered 503; {accepted} acknowledged in all, all journaled"
    );
    drop(engine);
    drop(mount);
}

/// Retention passes: the first comes this long after the start, when the disk is full.
const RETENTION_CHECK_S: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_on_a_full_disk_takes_no_checkpoint_and_admission_resumes_when_room_returns() {
    let Some((root, mount)) = mount_tmpfs(TMPFS_SIZE) else {
        return;
    };
    let data_dir = mount.path.join("data");
    let ballast = mount.path.join("ballast");
    std::fs::write(&ballast, vec![0x5Au8; BALLAST_BYTES]).unwrap();
    let config = root.path().join("stampede.toml");
    // Small segments, all old enough to delete by the first pass: that pass needs a new
    // checkpoint to delete any.
    write_config(
        &config,
        16,
        &format!(
            "[journal]\nretain_s = 1\nretention_check_s = {RETENTION_CHECK_S}\n\
             segment_bytes_max = 65536\n"
        ),
    );
    let started = Instant::now();
    let engine = Engine::start(&data_dir, &config).await;
    let answers = fill_until_unavailable(&engine.base_url).await;
    assert!(answers.iter().any(|(_, a)| *a == Answer::Unavailable));
    assert!(
        started.elapsed() < Duration::from_secs(RETENTION_CHECK_S - 1),
        "the disk filled only after {:?}: too late for this test's first retention pass",
        started.elapsed()
    );
    // The first retention pass runs on the full disk.
    tokio::time::sleep_until(
        (started + Duration::from_millis(RETENTION_CHECK_S * 1000 + 1500)).into(),
    )
    .await;
    let checkpoints = data_dir.join("checkpoints");
    assert_eq!(
        temporary_files(&checkpoints),
        Vec::<String>::new(),
        "a checkpoint file left on the full disk\n{}",
        engine.output()
    );
    assert_eq!(engine.get("/readyz").await.0, 503);
    assert!(
        engine.output().contains("retention takes no checkpoint"),
        "the skipped checkpoint is logged\n{}",
        engine.output()
    );

    // Room returns: admission resumes by itself and stays up.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + RESUME_TIMEOUT;
    while engine.get("/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz still 503 after room returned\n{}",
            engine.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = client();
    for n in 0..50 {
        let id = format!("after-{n}");
        let answer = post_order(&client, &engine.base_url, &id).await;
        assert!(
            matches!(answer, Answer::Accepted(_)),
            "{id} refused after room returned\n{}",
            engine.output()
        );
    }
    assert_eq!(temporary_files(&checkpoints), Vec::<String>::new());
    drop(engine);
    drop(mount);
}
