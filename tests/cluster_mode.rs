//! Cluster mode, black-box: three real `stampede` nodes sharing stock through a real Redis
//! Cluster (3 masters + 3 replicas, `appendfsync always`) on loopback, against the contract's
//! "Cluster mode" section.
//!
//! Each test starts its own Redis Cluster and nodes and stops them all (the harnesses' `Drop`
//! kills every process they started), sends a bounded number of orders, and waits only with
//! deadlines.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::redis_cluster::{RedisCluster, require_redis};
use common::{ADMIN_TOKEN, Opts, Server, order};
use serde_json::{Value, json};

const SKU: &str = "HOT";

/// Three nodes `n1..n3` on fixed loopback ports (the membership names them), over one Redis
/// Cluster.
struct Cluster {
    redis: RedisCluster,
    nodes: Vec<Server>,
    ports: Vec<u16>,
    membership: String,
    lease_units: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

fn node_env(
    membership: &str,
    redis: &RedisCluster,
    id: &str,
    port: u16,
    lease: u64,
) -> Vec<(String, String)> {
    [
        ("STAMPEDE_LISTEN", format!("127.0.0.1:{port}")),
        ("STAMPEDE_CLUSTER_ENABLED", "true".to_owned()),
        ("STAMPEDE_CLUSTER_NODE_ID", id.to_owned()),
        ("STAMPEDE_CLUSTER_NODES", membership.to_owned()),
        ("STAMPEDE_CLUSTER_REDIS", redis.seeds().join(",")),
        ("STAMPEDE_CLUSTER_LEASE_UNITS", lease.to_string()),
        ("STAMPEDE_CLUSTER_IDLE_RETURN_S", "30".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

impl Cluster {
    async fn start(lease_units: u64) -> Cluster {
        let redis = RedisCluster::start();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let membership = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("n{}=127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let env = node_env(
                &membership,
                &redis,
                &format!("n{}", i + 1),
                *port,
                lease_units,
            );
            nodes.push(
                Server::start(Opts {
                    env,
                    ..Opts::default()
                })
                .await,
            );
        }
        Cluster {
            redis,
            nodes,
            ports,
            membership,
            lease_units,
        }
    }

    /// The node whose id is `id` (`n1` is index 0).
    fn node(&self, id: &str) -> &Server {
        &self.nodes[id[1..].parse::<usize>().unwrap() - 1]
    }

    async fn put_sku(&self, node: usize, body: Value) {
        let reply = self.nodes[node].api().put_sku(SKU, &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }

    async fn sku(&self, node: usize) -> Value {
        let reply = self.nodes[node].get(&format!("/v1/skus/{SKU}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json
    }

    /// `stampede cluster <args>` with this cluster's config for node `id`.
    fn cli(&self, id: &str, args: &[&str]) -> std::process::Output {
        let port = self.ports[id[1..].parse::<usize>().unwrap() - 1];
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stampede"));
        command.arg("cluster").args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STAMPEDE_") {
                command.env_remove(name);
            }
        }
        for (name, value) in node_env(&self.membership, &self.redis, id, port, self.lease_units) {
            command.env(name, value);
        }
        command
            .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NO_COLOR", "1");
        let output = command.output().expect("run stampede cluster");
        assert!(
            output.status.success(),
            "stampede cluster {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Every entry of the cluster's stream: `(node, seq, type, order_id, record)`.
    fn stream(&self) -> Vec<(String, u64, String, String, Value)> {
        let port = self.redis.master_of_key("{stampede}:journal");
        let text = self.redis.redis_cli(
            port,
            &["--no-raw", "xrange", "{stampede}:journal", "-", "+"],
        );
        parse_xrange(&text)
    }
}

/// Builds a binary of the workspace into this test's own target dir and profile (`args` for
/// `cargo build`), and returns its path (`path` below the profile's folder).
fn build_binary(args: &[&str], path: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("profile dir");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("build")
        .args(args)
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("target dir"),
        );
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    assert!(
        build.status().expect("cargo build").success(),
        "cargo build {args:?}"
    );
    profile_dir.join(path)
}

/// Runs `examples/stream_worker` as consumer group `group` until the stream is idle; its
/// ready lines.
fn run_stream_worker(cluster: &Cluster, group: &str) -> Vec<Value> {
    let worker = build_binary(
        &["-p", "stampede", "--example", "stream_worker"],
        "examples/stream_worker",
    );
    let output = std::process::Command::new(worker)
        .args([
            "--redis",
            &cluster.redis.seeds().join(","),
            "--group",
            group,
            "--idle-exit-ms",
            "1500",
        ])
        .output()
        .expect("run the stream worker");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// `redis-cli --no-raw XRANGE` output: entries of quoted field/value pairs.
fn parse_xrange(text: &str) -> Vec<(String, u64, String, String, Value)> {
    let values: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let start = line.find('"')?;
            let quoted = &line[start..];
            // redis-cli's quoting escapes `"` and `\\` as JSON does (the records hold no other
            // escaped bytes), so a quoted value parses as a JSON string.
            serde_json::from_str::<String>(quoted).ok()
        })
        .collect();
    // Each entry: id, then node, n, seq, s, type, t, order_id, o, record, r.
    values
        .chunks(11)
        .filter(|entry| entry.len() == 11)
        .map(|entry| {
            let field = |name: &str| {
                let at = entry.iter().position(|v| v == name).expect("field present");
                entry[at + 1].clone()
            };
            (
                field("node"),
                field("seq").parse().unwrap(),
                field("type"),
                field("order_id"),
                serde_json::from_str(&field("record")).unwrap(),
            )
        })
        .collect()
}

/// Sends one order per buyer, round-robin over the nodes (like a load balancer), `parallel`
/// at a time; returns each buyer's answer `(node asked, status, body)`.
async fn buy(
    cluster: &Cluster,
    buyers: std::ops::Range<usize>,
    nodes: &[usize],
    parallel: usize,
) -> Vec<(usize, u16, Value)> {
    let mut answers = Vec::new();
    let buyers: Vec<usize> = buyers.collect();
    for chunk in buyers.chunks(parallel) {
        let mut tasks = Vec::new();
        for &buyer in chunk {
            let node = nodes[buyer % nodes.len()];
            let api = cluster.nodes[node].api();
            tasks.push(tokio::spawn(async move {
                let body = order(
                    &format!("o{buyer}"),
                    &format!("u{buyer}"),
                    SKU,
                    1,
                    "prepaid",
                );
                let reply = api.post_order(&body).await;
                (node, reply.status.as_u16(), reply.json)
            }));
        }
        for task in tasks {
            answers.push(task.await.unwrap());
        }
    }
    answers
}

fn accepted(answers: &[(usize, u16, Value)]) -> Vec<&Value> {
    answers
        .iter()
        .filter(|(_, status, _)| *status == 201)
        .map(|(_, _, body)| body)
        .collect()
}

/// Polls `check` every 100 ms until it returns `Ok` or `within` passes (then panics with the
/// last reason).
async fn eventually<T>(within: Duration, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(reason) if Instant::now() > deadline => panic!("not within {within:?}: {reason}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sell_exactly_the_stock_once_each_and_publish_one_stream() {
    if !require_redis() {
        return;
    }
    let cluster = Cluster::start(4).await;
    let stock = 40;
    cluster
        .put_sku(
            1,
            json!({"stock": stock, "per_user_limit": 1, "max_per_order": 1}),
        )
        .await;
    // The contract: every node serves a SKU within 2 s of the 200.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let answers = buy(&cluster, 0..160, &[0, 1, 2], 24).await;
    let sold = accepted(&answers);
    assert_eq!(sold.len(), stock, "exactly the stock is accepted");
    for (_, status, body) in &answers {
        assert!(
            *status == 201 || (*status == 409 && body["error"] == "sold_out"),
            "{status} {body}"
        );
    }
    let mut per_node: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for body in &sold {
        per_node
            .entry(body["node"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["seq"].as_u64().unwrap());
    }
    assert_eq!(per_node.len(), 3, "every node sold some: {per_node:?}");

    // Every 201 is in its node's journal at its seq.
    for body in &sold {
        let node = cluster.node(body["node"].as_str().unwrap());
        let seq = body["seq"].as_u64().unwrap();
        let page = node
            .get(&format!("/v1/journal?from={}&limit=1", seq - 1))
            .await;
        let record: Value = serde_json::from_str(page.text.lines().next().unwrap()).unwrap();
        assert_eq!(record["seq"], seq);
        assert_eq!(record["type"], "accepted");
        assert_eq!(record["order_id"], body["order_id"]);
    }

    // A retry on another node replays the original body; other content is 422; the
    // per-user limit holds across nodes.
    let first = sold[0];
    let (id, user) = (
        first["order_id"].as_str().unwrap(),
        first["order_id"].as_str().unwrap().replacen('o', "u", 1),
    );
    for node in &cluster.nodes {
        let reply = node
            .api()
            .post_order(&order(id, &user, SKU, 1, "prepaid"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(&reply.json, first);
        assert_eq!(reply.header("idempotent-replayed"), Some("true"));
        let other = node
            .api()
            .post_order(&order(id, &user, SKU, 1, "cod"))
            .await;
        other.assert_error(422, "idempotency_conflict");
        // The order itself, from any node.
        let shown = node.api().order(id).await;
        assert_eq!(shown["order_id"], first["order_id"]);
    }

    // A buyer's per_user_limit holds across the nodes (a SKU with stock left).
    let reply = cluster.nodes[0]
        .api()
        .put_sku("LIMITED", &json!({"stock": 10, "per_user_limit": 1}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_buy = cluster.nodes[1]
        .api()
        .post_order(&order("l-1", "buyer-l", "LIMITED", 1, "cod"))
        .await;
    assert_eq!(first_buy.status, 201, "{}", first_buy.text);
    for (index, node) in cluster.nodes.iter().enumerate() {
        let again = node
            .api()
            .post_order(&order(
                &format!("l-2-{index}"),
                "buyer-l",
                "LIMITED",
                1,
                "cod",
            ))
            .await;
        again.assert_error(409, "purchase_limit");
    }

    // The global figures, on every node, once the cluster has been quiet for 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in 0..3 {
        let sku = cluster.sku(node).await;
        assert_eq!(sku["stock_total"], stock);
        assert_eq!(sku["available"], 0, "{sku}");
        assert_eq!(sku["reserved"], stock, "{sku}");
        assert_eq!(sku["sold"], 0, "{sku}");
    }

    // One stream: every durable record of every node once, in each node's journal order.
    let entries = eventually(Duration::from_secs(5), async || {
        let entries = cluster.stream();
        let accepted = entries
            .iter()
            .filter(|e| e.2 == "accepted" && e.4["sku"] == SKU)
            .count();
        if accepted == stock {
            Ok(entries)
        } else {
            Err(format!("{accepted} accepted entries"))
        }
    })
    .await;
    let mut seen = BTreeSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for (node, seq, kind, order_id, record) in &entries {
        assert!(
            seen.insert((node.clone(), *seq)),
            "({node}, {seq}) twice in the stream"
        );
        let previous = last.insert(node.clone(), *seq).unwrap_or(0);
        assert_eq!(
            *seq,
            previous + 1,
            "node {node}'s records in journal order, none missing"
        );
        assert_eq!(record["seq"], *seq);
        assert_eq!(record["type"], kind.as_str());
        assert_eq!(record["order_id"].as_str().unwrap_or(""), order_id);
    }
    for body in &sold {
        let key = (
            body["node"].as_str().unwrap().to_owned(),
            body["seq"].as_u64().unwrap(),
        );
        assert!(seen.contains(&key), "{key:?} is in the stream");
    }

    // Warehouse workers read that one stream with a consumer group: three orders paid
    // through any node come out ready, once, with the node that holds them.
    let paid: Vec<&Value> = sold.iter().take(3).copied().collect();
    for (index, body) in paid.iter().enumerate() {
        let id = body["order_id"].as_str().unwrap();
        let shown = cluster.nodes[index].api().act(id, "pay", None).await;
        assert_eq!(shown["status"], "paid");
    }
    eventually(Duration::from_secs(5), async || {
        let pays = cluster.stream().iter().filter(|e| e.2 == "pay").count();
        if pays == 3 {
            Ok(())
        } else {
            Err(format!("{pays} pay entries"))
        }
    })
    .await;
    let lines = run_stream_worker(&cluster, "picking");
    // (`l-1`, the cash-on-delivery order of the per-user-limit check, is ready too.)
    assert!(
        lines
            .iter()
            .any(|line| line["order_id"] == "l-1" && line["ready_by"] == "accepted")
    );
    let mut ready: Vec<(String, String)> = lines
        .iter()
        .filter(|line| line["sku"] == SKU)
        .map(|line| {
            (
                line["order_id"].as_str().unwrap().to_owned(),
                line["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ready.sort();
    let mut expected: Vec<(String, String)> = paid
        .iter()
        .map(|b| {
            (
                b["order_id"].as_str().unwrap().to_owned(),
                b["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(ready, expected);
    assert!(
        run_stream_worker(&cluster, "picking").is_empty(),
        "acknowledged entries are not read again"
    );

    // A pause sent to one node holds on every node; a resume sent to another lifts it.
    let pause = cluster.nodes[1]
        .send(
            cluster.nodes[1]
                .client()
                .post(cluster.nodes[1].url("/v1/skus/LIMITED/pause"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(pause.status, 200, "{}", pause.text);
    for (index, node) in cluster.nodes.iter().enumerate() {
        let refused = node
            .api()
            .post_order(&order(
                &format!("p-{index}"),
                &format!("pauser-{index}"),
                "LIMITED",
                1,
                "cod",
            ))
            .await;
        refused.assert_error(409, "paused");
    }
    let resume = cluster.nodes[2]
        .send(
            cluster.nodes[2]
                .client()
                .post(cluster.nodes[2].url("/v1/skus/LIMITED/resume"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(resume.status, 200, "{}", resume.text);
    let after_resume = cluster.nodes[0]
        .api()
        .post_order(&order("p-after", "pauser-after", "LIMITED", 1, "cod"))
        .await;
    assert_eq!(after_resume.status, 201, "{}", after_resume.text);

    // The operator's view agrees.
    let status = cluster.cli("n1", &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.lines()
            .any(|line| line.starts_with(SKU) && line.contains(&stock.to_string())),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_resumes_its_share_and_reclaim_returns_the_units_of_one_that_stays_down() {
    if !require_redis() {
        return;
    }
    let mut cluster = Cluster::start(5).await;
    let stock = 30;
    cluster
        .put_sku(0, json!({"stock": stock, "max_per_order": 1}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let first = buy(&cluster, 0..12, &[0, 1, 2], 12).await;
    let mut total = accepted(&first).len();
    // n1 dies mid-sale; its buyers get 503 with Retry-After from the others, never a sale.
    cluster.nodes[0].kill9();
    let during = buy(&cluster, 100..130, &[1, 2], 10).await;
    for (_, status, body) in &during {
        if *status == 503 {
            assert_eq!(body["error"], "unavailable");
        }
    }
    total += accepted(&during).len();
    assert!(total <= stock, "{total} accepted of {stock}");
    cluster.nodes[0].restart().await;
    let after = buy(&cluster, 200..300, &[0, 1, 2], 20).await;
    total += accepted(&after).len();
    assert_eq!(
        total,
        stock,
        "after the restart and more demand, exactly the stock is sold:\n{}\n{:?}",
        String::from_utf8_lossy(&cluster.cli("n1", &["status"]).stdout),
        after
            .iter()
            .map(|(node, status, body)| format!("{node} {status} {}", body["error"]))
            .collect::<Vec<_>>()
    );

    // A second SKU: n2 holds a share, dies, and is reclaimed while down.
    let other = "COLD";
    let reply = cluster.nodes[0]
        .api()
        .put_sku(other, &json!({"stock": 20, "max_per_order": 1}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sold_by = |answers: &[(usize, u16, Value)], counts: &mut BTreeMap<String, usize>| {
        for body in accepted(answers) {
            *counts
                .entry(body["node"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    };
    let mut counts = BTreeMap::new();
    let early = cold_buy(&cluster, other, 0..9, &[0, 1, 2]).await;
    sold_by(&early, &mut counts);
    let n2_sold = counts.get("n2").copied().unwrap_or(0);
    cluster.nodes[1].kill9();
    // The bound on stock a dead node strands: at most one block unsold.
    let status = String::from_utf8_lossy(&cluster.cli("n1", &["status"]).stdout).into_owned();
    let stranded = node_figures(&status, other, "n2");
    assert!(
        stranded.0 - stranded.1 - stranded.2 <= cluster.lease_units,
        "n2 holds {stranded:?} (share, reserved, sold) of {other}: more than a block unsold\n{status}"
    );
    let reclaimed = cluster.cli(
        "n2",
        &[
            "reclaim",
            "--data-dir",
            cluster.nodes[1].data_dir().to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&reclaimed.stdout);
    assert!(text.contains(other), "{text}");
    // The other nodes learn that the pool has units again within one sync round.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rest = cold_buy(&cluster, other, 100..200, &[0, 2]).await;
    sold_by(&rest, &mut counts);
    let total: usize = counts.values().sum();
    assert_eq!(
        total,
        20,
        "exactly the stock, the reclaimed units sold by the others: {counts:?}\nreclaim:\n{text}\nstatus:\n{}",
        String::from_utf8_lossy(&cluster.cli("n1", &["status"]).stdout)
    );
    cluster.nodes[1].restart().await;
    let late = cold_buy(&cluster, other, 300..330, &[0, 1, 2]).await;
    assert!(
        accepted(&late).is_empty(),
        "nothing is left to sell after the reclaim"
    );
    let sku = eventually(Duration::from_secs(5), async || {
        let reply = cluster.nodes[1].get(&format!("/v1/skus/{other}")).await;
        if reply.json["sold"] == 20 {
            Ok(reply.json)
        } else {
            Err(reply.text)
        }
    })
    .await;
    assert_eq!(sku["available"], 0);
    assert_eq!(
        counts.get("n2").copied().unwrap_or(0),
        n2_sold,
        "n2 sold nothing more after its reclaim"
    );
}

/// `(share, reserved, sold)` of `node` for `sku` in `stampede cluster status` output.
fn node_figures(status: &str, sku: &str, node: &str) -> (u64, u64, u64) {
    let mut in_sku = false;
    for line in status.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(|c: char| !c.is_whitespace()) {
            in_sku = fields.first() == Some(&sku);
        } else if in_sku && fields.first() == Some(&node) {
            let number = |i: usize| fields[i].parse::<u64>().unwrap_or(0);
            return (number(1), number(3), number(4));
        }
    }
    panic!("no line for {node} under {sku} in\n{status}");
}

/// Cash-on-delivery orders of `sku`, one buyer at a time, round-robin over `nodes`.
async fn cold_buy(
    cluster: &Cluster,
    sku: &str,
    buyers: std::ops::Range<usize>,
    nodes: &[usize],
) -> Vec<(usize, u16, Value)> {
    let mut answers = Vec::new();
    for buyer in buyers {
        let node = nodes[buyer % nodes.len()];
        let reply = cluster.nodes[node]
            .api()
            .post_order(&order(
                &format!("c{buyer}"),
                &format!("u{buyer}"),
                sku,
                1,
                "cod",
            ))
            .await;
        answers.push((node, reply.status.as_u16(), reply.json));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_master_killed_mid_sale_never_oversells() {
    if !require_redis() {
        return;
    }
    let cluster = Cluster::start(3).await;
    let stock = 60;
    cluster
        .put_sku(2, json!({"stock": stock, "max_per_order": 1}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = buy(&cluster, 0..45, &[0, 1, 2], 15).await;
    let master = cluster
        .redis
        .master_of_key(&format!("stampede:sku:{{{SKU}}}"));
    cluster.redis.kill_master(master);
    let during = buy(&cluster, 100..145, &[0, 1, 2], 15).await;
    cluster.redis.wait_failover(master);
    // A grant counts only once a replica confirms it: the promoted replica has none until
    // the old master comes back (as its replica), so the operators' restart is part of the
    // sale going on.
    cluster.redis.restart(master);
    let after = buy(&cluster, 200..400, &[0, 1, 2], 20).await;
    let total = accepted(&before).len() + accepted(&during).len() + accepted(&after).len();
    assert!(total <= stock, "{total} accepted of {stock}: oversold");
    for (_, status, body) in before.iter().chain(&during).chain(&after) {
        assert!(matches!(status, 201 | 409 | 503), "{status} {body}");
    }
    assert!(
        !accepted(&after).is_empty(),
        "the sale goes on after the failover"
    );
}

/// A small seeded generator (xorshift64*), so a failing crash loop can be replayed.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One buyer's order, retried with the same id (so idempotently) on the next node, as a load
/// balancer would, while the answer says to come back or the node does not answer:
/// `Some((node, seq))` once it is accepted, `None` when sold out or still unsure after the
/// retries.
async fn buy_with_retries(
    apis: Vec<common::Api>,
    first: usize,
    id: String,
    user: String,
) -> Option<(String, u64)> {
    for attempt in 0..10 {
        let api = &apis[(first + attempt) % apis.len()];
        let body = order(&id, &user, SKU, 1, "cod");
        if let Ok(reply) = common::post_order_with(&api.client, &api.base_url, &body).await {
            match reply.status.as_u16() {
                200 | 201 => {
                    let node = reply.json["node"].as_str().unwrap().to_owned();
                    return Some((node, reply.json["seq"].as_u64().unwrap()));
                }
                409 => return None,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// Crash loop: bursts of buyers while a node or a Redis master is SIGKILLed at a seeded
/// moment, then everything is brought back and the sale is finished. The audit: never more
/// than the stock accepted, every acceptance in its node's journal at its seq and once in the
/// stream, and, with all back, exactly the stock sold. `STAMPEDE_CLUSTER_CRASH_ROUNDS` (default
/// 4) and `STAMPEDE_CLUSTER_CRASH_SEED` make it longer or replay a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_of_nodes_and_redis_masters_never_oversells_nor_loses_an_acceptance() {
    if !require_redis() {
        return;
    }
    let rounds: u64 = std::env::var("STAMPEDE_CLUSTER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("STAMPEDE_CLUSTER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("crash loop: {rounds} rounds, seed {seed}");
    let mut random = Seeded(seed | 1);
    let mut cluster = Cluster::start(3).await;
    let stock = 30 * rounds + 20;
    cluster
        .put_sku(0, json!({"stock": stock, "max_per_order": 1}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut accepted: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut next_buyer = 0u64;
    for round in 0..rounds {
        let mut buyers = Vec::new();
        for _ in 0..30 {
            let first = random.below(3) as usize;
            let apis: Vec<common::Api> = cluster.nodes.iter().map(Server::api).collect();
            let id = format!("k{next_buyer}");
            let user = format!("u{next_buyer}");
            next_buyer += 1;
            buyers.push(tokio::spawn(async move {
                let answer = buy_with_retries(apis, first, id.clone(), user).await;
                (id, answer)
            }));
        }
        tokio::time::sleep(Duration::from_millis(random.below(300))).await;
        let victim = random.below(4);
        if victim < 3 {
            eprintln!("round {round}: SIGKILL node n{}", victim + 1);
            cluster.nodes[victim as usize].kill9();
            tokio::time::sleep(Duration::from_millis(random.below(500))).await;
            cluster.nodes[victim as usize].restart().await;
        } else {
            let master = cluster.redis.masters()[random.below(3) as usize];
            eprintln!("round {round}: SIGKILL redis master {master}");
            cluster.redis.kill_master(master);
            cluster.redis.wait_failover(master);
            cluster.redis.restart(master);
        }
        for buyer in buyers {
            let (id, answer) = buyer.await.unwrap();
            if let Some(place) = answer {
                assert!(accepted.insert(id.clone(), place).is_none(), "{id} twice");
            }
        }
        assert!(
            accepted.len() as u64 <= stock,
            "round {round}: {} accepted of {stock}",
            accepted.len()
        );
    }
    // Everything is back: the rest of the stock sells, and no more. (An order whose answers
    // were all lost — a forward that timed out, a buyer out of retries — may still be in a
    // journal: the journals are the truth, the answers a subset of them.)
    for _ in 0..6 {
        let answers = buy(
            &cluster,
            next_buyer as usize..next_buyer as usize + 60,
            &[0, 1, 2],
            20,
        )
        .await;
        next_buyer += 60;
        for body in crate::accepted(&answers) {
            let place = (
                body["node"].as_str().unwrap().to_owned(),
                body["seq"].as_u64().unwrap(),
            );
            accepted.insert(body["order_id"].as_str().unwrap().to_owned(), place);
        }
        if answers.iter().all(|(_, status, _)| *status == 409) {
            break;
        }
    }
    let mut journaled: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        let page = node.get("/v1/journal?from=0&limit=100000").await;
        for line in page.text.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            if record["type"] == "accepted" && record["sku"] == SKU {
                let place = (format!("n{}", index + 1), record["seq"].as_u64().unwrap());
                let id = record["order_id"].as_str().unwrap().to_owned();
                assert!(
                    journaled.insert(id.clone(), place).is_none(),
                    "{id} in two journals"
                );
            }
        }
    }
    assert_eq!(
        journaled.len() as u64,
        stock,
        "with every node and master back, exactly the stock is sold"
    );
    for (id, place) in &accepted {
        assert_eq!(
            journaled.get(id),
            Some(place),
            "{id}: answered {place:?}, journaled {:?}",
            journaled.get(id)
        );
    }
    let accepted = journaled;
    let streamed = eventually(Duration::from_secs(10), async || {
        let entries = cluster.stream();
        let found: BTreeSet<(String, u64)> = entries
            .iter()
            .filter(|e| e.2 == "accepted" && e.4["sku"] == SKU)
            .map(|e| (e.0.clone(), e.1))
            .collect();
        let pairs: Vec<(String, u64)> = entries.iter().map(|e| (e.0.clone(), e.1)).collect();
        let distinct: BTreeSet<_> = pairs.iter().collect();
        if distinct.len() != pairs.len() {
            return Err("an entry is in the stream twice".to_owned());
        }
        if found.len() as u64 == stock {
            Ok(found)
        } else {
            Err(format!("{} of {stock} in the stream", found.len()))
        }
    })
    .await;
    for place in accepted.values() {
        assert!(streamed.contains(place), "{place:?} in the stream");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // (The final buyers paid in advance: their units are reserved.)
    let sku = cluster.sku(0).await;
    let taken = sku["sold"].as_u64().unwrap() + sku["reserved"].as_u64().unwrap();
    assert_eq!(taken, stock, "{sku}");
    assert_eq!(sku["available"], 0, "{sku}");
}

/// `stampede-load`'s sale-day scenario, with every node's URL like a load balancer's pool: the
/// whole order life over three nodes, audited across every node's journal and the global
/// stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_drives_the_cluster_and_its_audit_passes() {
    if !require_redis() {
        return;
    }
    let cluster = Cluster::start(20).await;
    let load = build_binary(
        &["-p", "stampede-load", "--bin", "stampede-load"],
        "stampede-load",
    );
    let mut command = std::process::Command::new(load);
    command.args([
        "-s",
        "sale-day",
        "-d",
        "3s",
        "-c",
        "6",
        "--payment-timeout-s",
        "2",
    ]);
    for port in &cluster.ports {
        command.args(["--url", &format!("http://127.0.0.1:{port}")]);
    }
    command
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--consumer-token", common::CONSUMER_TOKEN]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run stampede-load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("audit: PASSED"),
        "{}\n{text}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
