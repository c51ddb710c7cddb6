//! A real Redis Cluster on loopback for the cluster-mode tests: six `redis-server` processes
//! (3 masters, 3 replicas) started by `scripts/redis_cluster.sh` in a temporary directory.
//!
//! A [`RedisCluster`] owns those processes and that directory: it knows every pid it started
//! (and every pid a restart started), and its `Drop` SIGKILLs them all and waits for them to
//! be gone before the directory is removed, so a failing or panicking test never leaves a
//! server behind. When the test is panicking, `Drop` then prints the end of every node's log.
//! Processes are told apart through `/proc` (Linux), so a reused pid is never signalled.
//!
//! Everything stays on 127.0.0.1: the nodes bind loopback only, on a block of six free ports
//! picked by bind-testing them (and their cluster bus ports, port + 10000). Every wait is
//! bounded in time (at most 30 s, polling with short sleeps), and so is every `redis-cli` or
//! script call, so a hung server fails a test instead of hanging the suite.
//!
//! The node settings (see the script) make a failover quick: a killed master's replica
//! takes over 2 to 3 s after the SIGKILL. Every node fsyncs each write (`appendfsync
//! always`), but replication is asynchronous: what a master acknowledged and its replica had
//! not received yet is lost by a failover, unless the client waited for it (`WAIT 1 ms`).
//!
//! Tests start with [`require_redis`]: where Redis is not installed it fails the test with a
//! clear message, unless `STAMPEDE_SKIP_REDIS_TESTS=1` says to skip such tests.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The number of nodes: 3 masters, each with one replica.
pub const NODES: u16 = 6;
/// The environment variable that turns a missing Redis into a skipped test.
pub const SKIP_ENV: &str = "STAMPEDE_SKIP_REDIS_TESTS";
/// How long `start` may take as a whole (it takes about 2.5 s).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the script may wait for the created cluster to be healthy (inside
/// [`START_TIMEOUT`], which also covers starting the six processes).
const SCRIPT_HEALTH_TIMEOUT_S: &str = "20";
/// How long a failover may take after a master's SIGKILL (it takes about 2 s with a 1 s
/// node timeout).
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted node may take to rejoin the cluster.
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `redis-cli` call may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGKILL'd process may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two looks at the cluster while waiting for it.
const POLL: Duration = Duration::from_millis(50);
/// How many blocks of ports `start` tries when another process takes a port between the
/// bind test and the server's bind.
const START_ATTEMPTS: usize = 4;

/// Base ports are drawn from [PORT_LOW, PORT_HIGH), so the cluster bus ports (+10000) stay
/// below 32768, where Linux's ephemeral range starts: the kernel does not hand these ports
/// to outgoing connections in the window between the bind test and the servers' binds.
const PORT_LOW: u16 = 15000;
const PORT_HIGH: u16 = 22000;
/// Blocks are 10 ports apart, so two clusters never overlap.
const PORT_STRIDE: u16 = 10;

/// Whether `redis-server` and `redis-cli` can be run (found on PATH).
pub fn available() -> bool {
    RedisCluster::available()
}

/// Call first in every test that needs a Redis Cluster. Returns true when Redis is installed.
/// When it is not: returns false (after printing that the test is skipped) if
/// `STAMPEDE_SKIP_REDIS_TESTS=1`, so the test can return early, and panics otherwise, so a
/// machine without Redis does not pass the cluster tests silently.
pub fn require_redis() -> bool {
    if RedisCluster::available() {
        return true;
    }
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!(
            "skipped: redis-server or redis-cli not found on PATH, and {SKIP_ENV}=1 says to skip \
             the Redis Cluster tests"
        );
        return false;
    }
    panic!(
        "this test needs a real Redis Cluster, but redis-server or redis-cli is not on PATH: \
         install Redis 7 (Debian/Ubuntu: apt-get install redis-server; macOS: brew install \
         redis), or set {SKIP_ENV}=1 to skip the Redis Cluster tests"
    );
}

/// A running six-node Redis Cluster on loopback; see the module documentation.
pub struct RedisCluster {
    dir: TempDir,
    ports: Vec<u16>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The pid of every node this handle started and has not killed, by port.
    running: BTreeMap<u16, u32>,
    /// For each master killed by `kill_master`: the first slot of each range it served, so
    /// `wait_failover` can tell when another node serves them.
    killed_slots: BTreeMap<u16, Vec<u16>>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    /// Such as `myself,master`, `slave`, `master,fail`, `master,fail?`.
    pub flags: Vec<String>,
    /// The id of its master for a replica, `-` for a master.
    pub master_id: String,
    /// The slot ranges it serves (inclusive); migrating and importing entries are left out.
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Whether the node that answered thinks this node failed (or may have: `fail?`).
    pub fn is_failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

impl RedisCluster {
    /// Whether `redis-server` and `redis-cli` can be run (found on PATH).
    pub fn available() -> bool {
        ["redis-server", "redis-cli"].iter().all(|tool| {
            let mut command = Command::new(tool);
            command.arg("--version");
            matches!(run_bounded(command, CLI_TIMEOUT), Ok(out) if out.success)
        })
    }

    /// Starts a fresh cluster on free loopback ports and returns once it is healthy: every
    /// node sees all six nodes and all slots served, and every master has an online replica.
    /// Panics (with the script's output and the nodes' logs) when it cannot.
    pub fn start() -> RedisCluster {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let Some(base) = free_port_block() else {
                failures.push("no free block of ports found".to_string());
                continue;
            };
            let dir = tempfile::Builder::new()
                .prefix("stampede-redis-cluster-")
                .tempdir()
                .expect("create the Redis Cluster's temporary directory");
            let cluster = RedisCluster {
                dir,
                ports: (base..base + NODES).collect(),
                state: Mutex::new(State::default()),
            };
            // The handle exists before the script runs, so whatever the script leaves
            // running on a failure is killed by its Drop.
            let dir_arg = cluster.dir().to_string_lossy().into_owned();
            match cluster.script(&["start", &dir_arg, &base.to_string()], START_TIMEOUT) {
                Ok(_) => {
                    let mut state = cluster.state();
                    for &port in &cluster.ports {
                        let pid = read_pid(cluster.dir(), port).unwrap_or_else(|| {
                            panic!("the script started node {port} but left no pidfile")
                        });
                        state.running.insert(port, pid);
                    }
                    drop(state);
                    return cluster;
                }
                // Another process took one of the ports after the bind test: try another
                // block (this handle's Drop kills what this attempt started).
                Err(why) if why.contains("Address already in use") || cluster.logs_say_in_use() => {
                    failures.push(format!("ports {base}..{}: {why}", base + NODES - 1));
                }
                Err(why) => panic!("starting a Redis Cluster on ports {base}.. failed: {why}"),
            }
        }
        panic!(
            "starting a Redis Cluster failed {START_ATTEMPTS} times:\n{}",
            failures.join("\n")
        );
    }

    /// The directory holding the nodes' data, pidfiles and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// All six ports, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.clone()
    }

    /// The seed addresses for a cluster client: `127.0.0.1:PORT` for all six nodes.
    pub fn seeds(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The ports of the nodes this handle has running (not killed).
    pub fn running(&self) -> Vec<u16> {
        self.state().running.keys().copied().collect()
    }

    /// The masters serving slots, as a running node sees them, leaving out those it thinks
    /// failed (so right after a master's SIGKILL the dead one is still listed until the
    /// node timeout passes). Sorted.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .nodes(self.any_running())
            .into_iter()
            .filter(|n| n.is_master() && !n.is_failed() && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// The replica of `master` that a running node knows and does not think failed.
    pub fn replica_of(&self, master: u16) -> Option<u16> {
        let nodes = self.nodes(self.any_running());
        let id = nodes.iter().find(|n| n.port == master)?.id.clone();
        nodes
            .iter()
            .find(|n| n.master_id == id && !n.is_failed())
            .map(|n| n.port)
    }

    /// `CLUSTER NODES` as `port` sees it.
    pub fn nodes(&self, port: u16) -> Vec<NodeLine> {
        parse_cluster_nodes(&self.redis_cli(port, &["cluster", "nodes"]))
    }

    /// The hash slot of `key` (hash tags included), as Redis computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        let reply = self.redis_cli(self.any_running(), &["cluster", "keyslot", key]);
        reply
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key:?} answered {reply:?}"))
    }

    /// The port of the master serving `slot`, as a running node sees it.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let port = self.any_running();
        self.nodes(port)
            .iter()
            .find(|n| n.is_master() && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("node {port} knows no master serving slot {slot}"))
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.keyslot(key))
    }

    /// SIGKILLs the node on `port` (master or replica) and waits until the process is gone.
    pub fn kill(&self, port: u16) {
        let pid =
            self.state().running.remove(&port).unwrap_or_else(|| {
                panic!("node {port} is not running (or not one of this cluster's)")
            });
        // Checked so that a pid reused after the node died on its own is never signalled.
        assert!(
            alive(pid, port),
            "node {port} (pid {pid}) had already exited; see its log:\n{}",
            self.log_tail(port, 30)
        );
        sigkill(pid);
        let deadline = Instant::now() + KILL_TIMEOUT;
        while alive(pid, port) {
            assert!(
                Instant::now() < deadline,
                "node {port} (pid {pid}) still runs {KILL_TIMEOUT:?} after its SIGKILL"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the master on `port` (panics when it serves no slots), remembering which
    /// slots it served for [`wait_failover`](Self::wait_failover).
    pub fn kill_master(&self, port: u16) {
        let asked = self.any_running_except(port).unwrap_or(port);
        let slots: Vec<u16> = self
            .nodes(asked)
            .iter()
            .find(|n| n.port == port && n.is_master())
            .map(|n| n.slots.iter().map(|&(lo, _)| lo).collect())
            .unwrap_or_default();
        assert!(
            !slots.is_empty(),
            "kill_master({port}): node {asked} does not see {port} as a master serving slots"
        );
        self.kill(port);
        self.state().killed_slots.insert(port, slots);
    }

    /// After [`kill_master`](Self::kill_master)`(old_port)`: waits until every running node
    /// sees one new master serving the slots `old_port` served, that node says it is a
    /// master, and `cluster_state` is ok on every running node. Returns the new master's
    /// port. Panics after [`FAILOVER_TIMEOUT`].
    pub fn wait_failover(&self, old_port: u16) -> u16 {
        let slots = self
            .state()
            .killed_slots
            .get(&old_port)
            .cloned()
            .unwrap_or_else(|| panic!("wait_failover({old_port}) without kill_master({old_port})"));
        self.wait_until(
            FAILOVER_TIMEOUT,
            &format!("the failover of master {old_port}"),
            || {
                let running = self.running();
                let mut new_master = None;
                for &port in &running {
                    let state = self.cluster_state(port)?;
                    if state != "ok" {
                        return Err(format!("node {port}: cluster_state {state}"));
                    }
                    let nodes =
                        parse_cluster_nodes(&self.try_redis_cli(port, &["cluster", "nodes"])?);
                    for &slot in &slots {
                        let owner = nodes.iter().find(|n| n.is_master() && n.serves(slot));
                        match owner.map(|n| n.port) {
                            Some(owner) if owner == old_port => {
                                return Err(format!(
                                    "node {port}: slot {slot} still served by {old_port}"
                                ));
                            }
                            Some(owner) if new_master.is_none_or(|m| m == owner) => {
                                new_master = Some(owner);
                            }
                            Some(owner) => {
                                return Err(format!(
                                    "node {port}: slot {slot} served by {owner}, not {new_master:?}"
                                ));
                            }
                            None => {
                                return Err(format!("node {port}: no master serves slot {slot}"));
                            }
                        }
                    }
                }
                let new_master = new_master.ok_or("no running node to ask")?;
                if !running.contains(&new_master) {
                    return Err(format!("the slots' new owner {new_master} is not running"));
                }
                let role = self.role(new_master)?;
                if role != "master" {
                    return Err(format!(
                        "node {new_master} serves the slots but says it is a {role}"
                    ));
                }
                Ok(new_master)
            },
        )
    }

    /// Starts the killed node on `port` again from its data and waits until it has rejoined:
    /// `cluster_state` ok on it, no running node thinks it failed, and its role is what the
    /// others expect: a replica with its link up (a failed-over master comes back as the
    /// replica of its successor), or a master when the others still see it serving slots
    /// (it was restarted before a failover). Panics after [`REJOIN_TIMEOUT`].
    pub fn restart(&self, port: u16) {
        assert!(
            self.ports.contains(&port),
            "restart({port}): not a port of this cluster"
        );
        assert!(
            !self.state().running.contains_key(&port),
            "restart({port}): node is running"
        );
        let dir_arg = self.dir().to_string_lossy().into_owned();
        if let Err(why) = self.script(&["start-node", &dir_arg, &port.to_string()], START_TIMEOUT) {
            panic!("restarting node {port} failed: {why}");
        }
        let pid = read_pid(self.dir(), port)
            .unwrap_or_else(|| panic!("node {port} was restarted but left no pidfile"));
        {
            let mut state = self.state();
            state.running.insert(port, pid);
            state.killed_slots.remove(&port);
        }
        self.wait_until(REJOIN_TIMEOUT, &format!("node {port} to rejoin"), || {
            let state = self.cluster_state(port)?;
            if state != "ok" {
                return Err(format!("node {port}: cluster_state {state}"));
            }
            let mut others_see_slots = false;
            for other in self.running().into_iter().filter(|&p| p != port) {
                let nodes = parse_cluster_nodes(&self.try_redis_cli(other, &["cluster", "nodes"])?);
                let line = nodes
                    .iter()
                    .find(|n| n.port == port)
                    .ok_or_else(|| format!("node {other} does not know {port}"))?;
                if line.is_failed() {
                    return Err(format!("node {other} still flags {port} {:?}", line.flags));
                }
                others_see_slots |= !line.slots.is_empty();
            }
            let replication = self.try_redis_cli(port, &["info", "replication"])?;
            let role = info_field(&replication, "role").unwrap_or_default();
            match (others_see_slots, role.as_str()) {
                (true, "master") => Ok(()),
                (false, "slave")
                    if info_field(&replication, "master_link_status").as_deref() == Some("up") =>
                {
                    Ok(())
                }
                (false, "slave") => Err(format!("replica {port}: link to its master not up yet")),
                (true, role) => Err(format!("node {port} serves slots but says it is a {role}")),
                (false, role) => Err(format!(
                    "node {port} serves no slots but says it is a {role}"
                )),
            }
        });
    }

    /// Waits until `cluster_state` is ok on every running node and none of them thinks a
    /// running node failed. Panics after [`FAILOVER_TIMEOUT`].
    pub fn wait_cluster_ok(&self) {
        self.wait_until(
            FAILOVER_TIMEOUT,
            "cluster_state ok on every running node",
            || {
                let running = self.running();
                for &port in &running {
                    let state = self.cluster_state(port)?;
                    if state != "ok" {
                        return Err(format!("node {port}: cluster_state {state}"));
                    }
                    let nodes =
                        parse_cluster_nodes(&self.try_redis_cli(port, &["cluster", "nodes"])?);
                    if let Some(n) = nodes
                        .iter()
                        .find(|n| running.contains(&n.port) && n.is_failed())
                    {
                        return Err(format!(
                            "node {port} flags running node {} {:?}",
                            n.port, n.flags
                        ));
                    }
                }
                Ok(())
            },
        );
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` (bounded by [`CLI_TIMEOUT`]) and returns
    /// what it printed, less the final newline. `args` may start with redis-cli options (such
    /// as `-c` to follow redirections). An error reply is returned as text (redis-cli exits 0
    /// on those when its output is not a terminal); a failure to connect panics.
    pub fn redis_cli(&self, port: u16, args: &[&str]) -> String {
        self.try_redis_cli(port, args)
            .unwrap_or_else(|why| panic!("redis-cli -p {port} {}: {why}", args.join(" ")))
    }

    /// [`redis_cli`](Self::redis_cli) that returns why it failed instead of panicking.
    pub fn try_redis_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args);
        let out = run_bounded(command, CLI_TIMEOUT)?;
        if !out.success {
            return Err(format!("exit status {}: {}", out.status, out.stderr.trim()));
        }
        let mut text = out.stdout;
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, port: u16, lines: usize) -> String {
        let log =
            fs::read_to_string(self.dir().join(format!("redis-{port}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test thread that panicked while holding the lock left the state consistent
        // (every change is a single insert or remove).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn any_running(&self) -> u16 {
        *self
            .state()
            .running
            .keys()
            .next()
            .expect("no node of the cluster is running")
    }

    fn any_running_except(&self, port: u16) -> Option<u16> {
        self.state().running.keys().copied().find(|&p| p != port)
    }

    fn cluster_state(&self, port: u16) -> Result<String, String> {
        let info = self.try_redis_cli(port, &["cluster", "info"])?;
        info_field(&info, "cluster_state")
            .ok_or_else(|| format!("node {port}: CLUSTER INFO: {info}"))
    }

    fn role(&self, port: u16) -> Result<String, String> {
        let reply = self.try_redis_cli(port, &["role"])?;
        Ok(reply.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Polls `check` every [`POLL`] until it returns `Ok`, for at most `timeout`; then panics
    /// with the last reason it gave.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match check() {
                Ok(value) => return value,
                Err(why) if Instant::now() >= deadline => {
                    panic!("waited {timeout:?} for {what}; last: {why}")
                }
                Err(_) => thread::sleep(POLL),
            }
        }
    }

    fn script(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/redis_cluster.sh");
        let mut command = Command::new("bash");
        command
            .arg(&path)
            .args(args)
            .env("REDIS_CLUSTER_TIMEOUT", SCRIPT_HEALTH_TIMEOUT_S);
        let out = run_bounded(command, timeout)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(format!(
                "{} {} exited with {}:\n{}{}",
                path.display(),
                args.join(" "),
                out.status,
                out.stdout,
                out.stderr
            ))
        }
    }

    fn logs_say_in_use(&self) -> bool {
        self.ports.iter().any(|&port| {
            fs::read_to_string(self.dir().join(format!("redis-{port}.log")))
                .is_ok_and(|log| log.contains("Address already in use"))
        })
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Killing comes first and printing after, with write errors ignored: a panic here
        // (stderr closed) while the test is already panicking would abort the process and
        // leave the servers running.
        // The tracked pids, and whatever a pidfile names that is still that node's server
        // (a start that failed half-way, or timed out before its pids were read).
        let mut pids: BTreeMap<u16, u32> = self.state().running.clone();
        for &port in &self.ports {
            if let Some(pid) = read_pid(self.dir(), port) {
                pids.entry(port).or_insert(pid);
            }
        }
        pids.retain(|&port, &mut pid| alive(pid, port));
        for &pid in pids.values() {
            sigkill(pid);
        }
        // Waited for, so the ports are free and nothing writes into the directory while
        // it is being removed.
        let deadline = Instant::now() + KILL_TIMEOUT;
        while pids.iter().any(|(&port, &pid)| alive(pid, port)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let mut stderr = std::io::stderr().lock();
        for (&port, &pid) in &pids {
            if alive(pid, port) {
                let _ = writeln!(
                    stderr,
                    "Redis node {port} (pid {pid}) still runs {KILL_TIMEOUT:?} after SIGKILL"
                );
            }
        }
        if thread::panicking() {
            for &port in &self.ports {
                let tail = self.log_tail(port, 30);
                let _ = writeln!(stderr, "--- end of Redis node {port}'s log:\n{tail}");
            }
        }
    }
}

/// Parses `CLUSTER NODES`: `id ip:port@cport[,hostname] flags master ping pong epoch link
/// slot...`.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let port = address.rsplit(':').next()?.parse().ok()?;
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => s.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_string(),
                port,
                flags: fields[2].split(',').map(str::to_string).collect(),
                master_id: fields[3].to_string(),
                slots,
            })
        })
        .collect()
}

/// A field of an INFO-style reply (`CLUSTER INFO`, `INFO replication`): lines `name:value`.
pub fn info_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.trim_end_matches('\r').split_once(':')?;
        (key == name).then(|| value.trim().to_string())
    })
}

/// The first of up to 20 candidate blocks of six ports whose ports and cluster bus ports
/// can all be bound on 127.0.0.1 now. Candidates start at a random block (so concurrent
/// test processes rarely collide) and step through the range (so the threads of one
/// process never pick the same block).
fn free_port_block() -> Option<u16> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let blocks = usize::from((PORT_HIGH - PORT_LOW) / PORT_STRIDE);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let seed = hasher.finish() as usize;
    (0..20).find_map(|_| {
        let block = seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % blocks;
        let base = PORT_LOW + block as u16 * PORT_STRIDE;
        // All twelve held at once, then released together just before the servers bind.
        let held: Option<Vec<TcpListener>> = (base..base + NODES)
            .flat_map(|port| [port, port + 10000])
            .map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
            .collect();
        held.map(|_| base)
    })
}

fn read_pid(dir: &Path, port: u16) -> Option<u32> {
    fs::read_to_string(dir.join(format!("redis-{port}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is still the (not yet dead) redis-server of `port`: Redis sets its process
/// title to `redis-server 127.0.0.1:PORT [cluster]`, and checking it keeps a reused pid
/// from being taken for (or killed as) a node.
fn alive(pid: u32, port: u16) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name; a zombie (Z) or dead (X) process
    // is gone as far as the cluster is concerned.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("redis-server") && cmdline.contains(&format!(":{port}"))
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a pid just checked to be one of this cluster's redis-servers; no
    // memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

struct Finished {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `command` with its output captured, killing it after `timeout`.
fn run_bounded(mut command: Command, timeout: Duration) -> Result<Finished, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    for (is_stdout, mut pipe) in [
        (
            true,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (false, Box::new(child.stderr.take().unwrap())),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send((is_stdout, String::from_utf8_lossy(&bytes).into_owned()));
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} did not finish within {timeout:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {command:?}: {e}")),
        }
    };
    // Bounded too: a grandchild that kept a pipe open must not hang the caller.
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok((true, text)) => stdout = text,
            Ok((false, text)) => stderr = text,
            Err(_) => break,
        }
    }
    Ok(Finished {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}
