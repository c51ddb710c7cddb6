//! Black-box tests of `stampede preflight` (`shared/spec/http-api.md`, the `stampede preflight`
//! row): the real binary on temporary data directories, loopback only. Every run is bounded
//! by [`RUN_TIMEOUT`]; engines started here are stopped when their test ends.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Opts, Server, order, run_to_exit, segment_frames};
use serde_json::Value;

/// Bound on one preflight run (its fsync probe is 200 fdatasyncs).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Every check, in the order the report lists them.
const CHECKS: [&str; 9] = [
    "config",
    "data_dir",
    "lock",
    "fsync",
    "disk",
    "open_files",
    "listen",
    "journal_room",
    "inventory_map",
];

/// A small event, so the disk check passes on any test machine, and `fsync = "interval"`, so
/// the fsync latency bound (which only fails with `always`) cannot make a slow CI disk flaky.
const SMALL_EVENT: &str =
    "[journal]\nfsync = \"interval\"\n[inventory]\norders_expected = 1000\nskus_max = 1024\n";

/// File descriptors the engine needs: the connection bound plus preflight's margin.
const OPEN_FILES_NEEDED: u64 = 10_000 + 1024;

/// Raises this process's soft open-files limit (children inherit it) as far as the hard limit
/// allows toward what preflight asks for; returns whether the check can pass here.
fn raise_open_files() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (limit.rlim_cur as u64, limit.rlim_max as u64);
    if soft < OPEN_FILES_NEEDED {
        limit.rlim_cur = OPEN_FILES_NEEDED.min(hard) as libc::rlim_t;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is
        // always permitted.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }
    hard >= OPEN_FILES_NEEDED
}

/// One preflight run: its exit code and its `--json` report.
struct Run {
    code: i32,
    report: Value,
    output: String,
}

impl Run {
    fn check(&self, name: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .expect("checks is an array")
            .iter()
            .find(|check| check["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {}", self.output))
    }

    fn result(&self, name: &str) -> &str {
        self.check(name)["result"].as_str().expect("result")
    }

    fn detail(&self, name: &str) -> &str {
        self.check(name)["detail"].as_str().expect("detail")
    }

    fn names(&self) -> Vec<&str> {
        self.report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .map(|check| check["check"].as_str().expect("name"))
            .collect()
    }

    fn failed(&self) -> Vec<&str> {
        self.names()
            .into_iter()
            .filter(|name| self.result(name) == "fail")
            .collect()
    }

    /// Exit 1 with exactly these checks failed (plus `open_files` where this machine's hard
    /// limit cannot meet it).
    #[track_caller]
    fn assert_fails_only(&self, expected: &[&str]) {
        assert_eq!(self.code, 1, "{}", self.output);
        let failed: Vec<&str> = self
            .failed()
            .into_iter()
            .filter(|name| *name != "open_files" || raise_open_files())
            .collect();
        assert_eq!(failed, expected, "{}", self.output);
    }
}

/// Runs `stampede preflight --json ARGS` with `STAMPEDE_*` cleared plus `env`.
fn preflight(args: &[&OsStr], env: &[(&str, &str)]) -> Run {
    raise_open_files();
    let mut all: Vec<&OsStr> = vec![OsStr::new("preflight"), OsStr::new("--json")];
    all.extend_from_slice(args);
    let (status, output) = run_to_exit(&all, env, RUN_TIMEOUT);
    let status = status.unwrap_or_else(|| panic!("preflight did not exit in time:\n{output}"));
    let code = status.code().expect("exited, not killed");
    let json_line = output
        .lines()
        .find_map(|line| line.strip_prefix("[out] "))
        .unwrap_or_else(|| panic!("no report on stdout:\n{output}"));
    let report: Value = serde_json::from_str(json_line)
        .unwrap_or_else(|error| panic!("report is not JSON ({error}):\n{output}"));
    assert_eq!(report["exit_code"], code, "{output}");
    Run {
        code,
        report,
        output,
    }
}

/// A temporary directory with a config file (`event.toml`) holding `toml_text` in it.
fn event_dir(toml_text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("stampede-preflight-")
        .tempdir()
        .expect("tempdir");
    let config = dir.path().join("event.toml");
    std::fs::write(&config, toml_text).expect("write config");
    (dir, config)
}

/// Ready: exit 0, or, where this machine's hard open-files limit is too low for the engine,
/// exit 1 with only that check failed.
#[track_caller]
fn assert_ready(run: &Run) {
    if raise_open_files() {
        assert_eq!(run.code, 0, "{}", run.output);
        assert_eq!(run.report["ready"], true);
    } else {
        eprintln!("hard RLIMIT_NOFILE below {OPEN_FILES_NEEDED}: open_files must fail here");
        assert_eq!(run.code, 1, "{}", run.output);
        assert_eq!(run.failed(), ["open_files"], "{}", run.output);
    }
}

fn args<'a>(config: &'a Path, data_dir: &'a Path, listen: &'a str) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
        OsStr::new("--listen"),
        OsStr::new(listen),
    ]
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_fresh_data_dir_is_ready_and_every_check_is_listed() {
    let (dir, config) = event_dir(SMALL_EVENT);
    let data_dir = dir.path().join("data");
    let run = preflight(&args(&config, &data_dir, "127.0.0.1:0"), &[]);
    assert_eq!(run.names(), CHECKS, "{}", run.output);
    assert_ready(&run);
    // Where open_files cannot pass, nothing is prepared: the last two rows are skipped.
    let prepared = run.code == 0;
    for name in CHECKS {
        let result = run.result(name);
        let expected_skip = !prepared && (name == "journal_room" || name == "inventory_map");
        assert!(
            result == "pass" || result == "warn" || name == "open_files" || expected_skip,
            "{name}: {result}\n{}",
            run.output
        );
        assert!(!run.detail(name).is_empty());
    }
    // The config row names the effective values; the measured ones are numbers.
    let config_values = &run.check("config")["values"];
    assert_eq!(config_values["fsync"], "interval");
    assert_eq!(config_values["orders_expected"], 1000);
    assert_eq!(config_values["skus_max"], 1024);
    assert!(run.check("fsync")["values"]["p99_us"].is_u64());
    let disk = &run.check("disk")["values"];
    assert!(disk["need_bytes"].as_u64().unwrap() <= disk["have_bytes"].as_u64().unwrap());
    // The data dir was created, the probes removed, the inventory map made at its size.
    assert!(data_dir.is_dir());
    assert!(!data_dir.join(".preflight.probe").exists());
    assert!(
        !data_dir
            .join("journal")
            .join(".preflight-fsync.probe")
            .exists()
    );
    if prepared {
        assert_eq!(
            std::fs::metadata(data_dir.join("inventory.slots"))
                .unwrap()
                .len(),
            128 + 1024 * 128
        );
    }
    // Preallocation is off by default: nothing in the journal.
    assert_eq!(
        std::fs::read_dir(data_dir.join("journal")).unwrap().count(),
        0
    );

    // The table says the same, and exits the same.
    let table_args = args(&config, &data_dir, "127.0.0.1:0");
    let mut all: Vec<&OsStr> = vec![OsStr::new("preflight")];
    all.extend_from_slice(&table_args);
    let (status, output) = run_to_exit(&all, &[], RUN_TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(run.code), "{output}");
    for name in CHECKS {
        assert!(
            output
                .lines()
                .any(|line| line.starts_with(&format!("[out] {name} "))),
            "{name} row missing:\n{output}"
        );
    }
    if run.code == 0 {
        assert!(output.contains("READY: every check passed"), "{output}");
    }
}

#[test]
fn no_prepare_checks_without_writing_the_journal_or_the_map() {
    let (dir, config) = event_dir(
        "[journal]\nfsync = \"interval\"\npreallocate = true\n[inventory]\norders_expected = 1000\n",
    );
    let data_dir = dir.path().join("data");
    let mut all = args(&config, &data_dir, "127.0.0.1:0");
    all.push(OsStr::new("--no-prepare"));
    let run = preflight(&all, &[]);
    assert_ready(&run);
    assert_eq!(run.result("journal_room"), "skip", "{}", run.output);
    assert_eq!(run.result("inventory_map"), "skip", "{}", run.output);
    assert!(!data_dir.join("inventory.slots").exists());
    assert_eq!(
        std::fs::read_dir(data_dir.join("journal")).unwrap().count(),
        0
    );
}

#[test]
fn an_unwritable_data_dir_fails_the_data_dir_check() {
    let (dir, config) = event_dir(SMALL_EVENT);
    // A path through a regular file can be neither created nor written, root or not.
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let through_file = file.join("data");
    let run = preflight(&args(&config, &through_file, "127.0.0.1:0"), &[]);
    run.assert_fails_only(&["data_dir"]);
    assert!(
        run.detail("data_dir")
            .contains("cannot be created or opened"),
        "{}",
        run.output
    );
    for name in ["lock", "fsync", "journal_room", "inventory_map"] {
        assert_eq!(run.result(name), "skip", "{name}\n{}", run.output);
    }
    // The disk check still runs, on the filesystem the directory would be on.
    assert_eq!(run.result("disk"), "pass", "{}", run.output);

    // A directory without write permission (permission bits do not stop root).
    if is_root() {
        eprintln!("running as root: the chmod 0555 case is not checkable, skipped");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let run = preflight(&args(&config, &read_only, "127.0.0.1:0"), &[]);
    let inside = read_only.join("data");
    let run_inside = preflight(&args(&config, &inside, "127.0.0.1:0"), &[]);
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o755)).unwrap();
    run.assert_fails_only(&["data_dir"]);
    assert!(
        run.detail("data_dir").contains("not writable"),
        "{}",
        run.output
    );
    run_inside.assert_fails_only(&["data_dir"]);
}

#[test]
fn too_little_disk_for_the_expected_orders_fails_the_disk_check() {
    // The most orders the config allows: hundreds of GiB of journal, more than a test
    // machine has free.
    let (dir, config) = event_dir(SMALL_EVENT);
    std::fs::write(
        &config,
        "[journal]\nfsync = \"interval\"\n[inventory]\norders_expected = 100000000\n",
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let run = preflight(&args(&config, &data_dir, "127.0.0.1:0"), &[]);
    let values = &run.check("disk")["values"];
    let need = values["need_bytes"].as_u64().unwrap();
    let have = values["have_bytes"].as_u64().unwrap();
    // The need comes from the encoder: 12 records an order, framed, times the factor 2.
    let per_order = values["journal_bytes_per_order"].as_u64().unwrap();
    assert_eq!(values["records_per_order"], 12);
    assert!((12 * 64..12 * 1024).contains(&per_order), "{per_order}");
    assert!(need > 100_000_000 * per_order * 2);
    if need <= have {
        eprintln!("this filesystem has {have} bytes free, more than {need}: not checkable here");
        return;
    }
    run.assert_fails_only(&["disk"]);
    assert!(run.detail("disk").starts_with("need "), "{}", run.output);
    for name in ["journal_room", "inventory_map"] {
        assert_eq!(run.result(name), "skip", "{name}\n{}", run.output);
    }
    assert!(!data_dir.join("inventory.slots").exists());
}

#[test]
fn a_port_in_use_fails_the_listen_check() {
    let (dir, config) = event_dir(SMALL_EVENT);
    let data_dir = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().unwrap().to_string();
    let run = preflight(&args(&config, &data_dir, &address), &[]);
    run.assert_fails_only(&["listen"]);
    assert!(run.detail("listen").contains(&address), "{}", run.output);
    // Nothing prepared when a check failed.
    assert_eq!(run.result("inventory_map"), "skip");
    drop(taken);
}

#[test]
fn an_invalid_config_exits_2() {
    let (dir, config) = event_dir(SMALL_EVENT);
    let data_dir = dir.path().join("data");

    std::fs::write(&config, "shards = 0\n").unwrap();
    let run = preflight(&args(&config, &data_dir, "127.0.0.1:0"), &[]);
    assert_eq!(run.code, 2, "{}", run.output);
    assert_eq!(run.result("config"), "fail");
    assert!(run.detail("config").contains("shards"), "{}", run.output);
    assert_eq!(run.names(), CHECKS);
    assert!(
        CHECKS[1..].iter().all(|name| run.result(name) == "skip"),
        "{}",
        run.output
    );
    assert!(
        !data_dir.exists(),
        "nothing is touched with an invalid config"
    );

    std::fs::write(&config, "[journal]\nfsycn = \"none\"\n").unwrap();
    let run = preflight(&args(&config, &data_dir, "127.0.0.1:0"), &[]);
    assert_eq!(run.code, 2, "{}", run.output);
    assert!(run.detail("config").contains("fsycn"), "{}", run.output);

    // The environment is read as serve reads it.
    std::fs::write(&config, SMALL_EVENT).unwrap();
    let run = preflight(
        &args(&config, &data_dir, "127.0.0.1:0"),
        &[("STAMPEDE_JOURNAL_FSYNC", "sometimes")],
    );
    assert_eq!(run.code, 2, "{}", run.output);
    assert!(run.detail("config").contains("fsync"), "{}", run.output);

    let missing = dir.path().join("missing.toml");
    let run = preflight(&args(&missing, &data_dir, "127.0.0.1:0"), &[]);
    assert_eq!(run.code, 2, "{}", run.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_fails_the_lock_check_and_is_left_alone() {
    let server = Server::start(Opts::default()).await;
    let config = server.dir().join("no-extra.toml");
    std::fs::write(&config, SMALL_EVENT).unwrap();
    let data_dir = server.data_dir();
    let journal_before: Vec<PathBuf> = server.segments();
    let run = tokio::task::spawn_blocking({
        let config = config.clone();
        let data_dir = data_dir.clone();
        move || preflight(&args(&config, &data_dir, "127.0.0.1:0"), &[])
    })
    .await
    .unwrap();
    run.assert_fails_only(&["lock"]);
    assert!(
        run.detail("lock").contains("engine running"),
        "{}",
        run.output
    );
    for name in ["fsync", "journal_room", "inventory_map"] {
        assert_eq!(run.result(name), "skip", "{name}\n{}", run.output);
    }
    // The engine still holds its lock and takes orders; no probe was left in its journal.
    assert_eq!(server.segments(), journal_before);
    assert!(
        !data_dir
            .join("journal")
            .join(".preflight-fsync.probe")
            .exists()
    );
    let reply = server
        .post_order(&order("pf-1", "u-pf", "SKU-1", 1, "prepaid"))
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prepared_journal_is_the_one_the_engine_starts_on() {
    let opts = Opts {
        config_toml: Some(
            "[journal]\npreallocate = true\n[inventory]\norders_expected = 1000\n".into(),
        ),
        ..Opts::default()
    };
    let mut server = Server::start(opts).await;
    server.terminate().await;
    // A fresh data dir, prepared by preflight with the engine's own config.
    let data_dir = server.data_dir();
    std::fs::remove_dir_all(&data_dir).unwrap();
    let config = server.dir().join("stampede.toml");
    let prepare = {
        let (config, data_dir) = (config.clone(), data_dir.clone());
        move || preflight(&args(&config, &data_dir, "127.0.0.1:0"), &[])
    };
    let run = tokio::task::spawn_blocking(prepare.clone()).await.unwrap();
    let failed: Vec<&str> = run
        .failed()
        .into_iter()
        .filter(|name| *name != "fsync" && *name != "open_files")
        .collect();
    assert!(failed.is_empty(), "{}", run.output);
    if run.code != 0 {
        eprintln!("preflight not ready here (slow fsync or low nofile): nothing prepared");
        return;
    }
    assert!(
        run.detail("journal_room").starts_with("created "),
        "{}",
        run.output
    );
    let first = data_dir.join("journal").join("00000000000000000001.seg");
    let room = 8 * 1024 * 1024;
    assert_eq!(std::fs::metadata(&first).unwrap().len(), 16 + room);

    // The engine starts on it, writes its first records from byte 16 on, and keeps the room.
    server.restart().await;
    let reply = server
        .post_order(&order("pf-2", "u-pf", "SKU-1", 1, "prepaid"))
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text);
    server.terminate().await;
    assert_eq!(server.segments(), std::slice::from_ref(&first));
    let bytes = std::fs::read(&first).unwrap();
    assert!(bytes.len() as u64 >= 16 + room);
    let frames = segment_frames(&bytes);
    assert_eq!(frames.first().map(|f| (f.0, f.3)), Some((16, 1)));
    let seqs: Vec<u64> = frames.iter().map(|f| f.3).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() >= 2, "the catalogue and the order");

    // Preflight again on the used journal: zeros after the last frame only, and the engine
    // recovers every record.
    let run = tokio::task::spawn_blocking(prepare).await.unwrap();
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(run.result("journal_room"), "pass", "{}", run.output);
    let after = std::fs::read(&first).unwrap();
    let end = frames.last().map(|f| f.0 + f.1).unwrap();
    assert_eq!(&after[..end], &bytes[..end], "frames untouched");
    assert!(after[end..].iter().all(|b| *b == 0));
    server.restart().await;
    let order_view = server.get("/v1/orders/pf-2").await;
    assert_eq!(order_view.status.as_u16(), 200, "{}", order_view.text);
    server.terminate().await;
}
