//! Black-box tests of `POST /v1/skus:bulk` and `stampede stock reconcile`: the real binary on
//! loopback, every wait bounded.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::in_process;
use common::{ADMIN_TOKEN, Opts, Reply, Server, order, read_reply, run_to_exit};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Bound on one `stampede stock reconcile` run.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /v1/skus:bulk` with the body, a content type (or none) and a token (or none).
async fn bulk(
    server: &Server,
    body: impl Into<Vec<u8>>,
    content_type: Option<&str>,
    token: Option<&str>,
) -> Reply {
    let mut request = server.client().post(server.url("/v1/skus:bulk"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    read_reply(request.body(body.into()).send().await).await
}

/// A bulk that must answer 200; returns the report.
#[track_caller]
fn report_of(reply: &Reply) -> &Value {
    assert_eq!(reply.status, StatusCode::OK, "bulk: {}", reply.text);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        reply.header("content-type")
    );
    &reply.json
}

/// The report's entry for body line `number`.
#[track_caller]
fn line(report: &Value, number: u64) -> &Value {
    report["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|entry| entry["line"] == number)
        .unwrap_or_else(|| panic!("no line {number} in {report}"))
}

#[track_caller]
fn assert_loaded(report: &Value, number: u64, sku: &str) -> Value {
    let entry = line(report, number);
    assert_eq!(entry["status"], "loaded", "line {number}: {entry}");
    assert_eq!(entry["sku"], sku, "line {number}: {entry}");
    assert_eq!(entry["sku_after"]["sku"], sku, "line {number}: {entry}");
    entry["sku_after"].clone()
}

#[track_caller]
fn assert_refused(report: &Value, number: u64, code: &str) {
    let entry = line(report, number);
    assert_eq!(entry["status"], "refused", "line {number}: {entry}");
    assert_eq!(entry["error"], code, "line {number}: {entry}");
    assert!(
        entry["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "line {number}: {entry}"
    );
    assert!(entry.get("sku_after").is_none(), "line {number}: {entry}");
}

/// Every SKU the engine lists, paging on.
async fn all_skus(server: &Server) -> BTreeMap<String, Value> {
    let mut skus = BTreeMap::new();
    let mut after = String::new();
    for _ in 0..100 {
        let reply = server
            .get(&format!("/v1/skus?limit=1000&after={after}"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        for sku in reply.json["skus"].as_array().expect("skus") {
            skus.insert(sku["sku"].as_str().unwrap().to_owned(), sku.clone());
        }
        match reply.json["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return skus,
        }
    }
    panic!("GET /v1/skus did not stop paging");
}

async fn sku_records(server: &Server) -> usize {
    server
        .journal()
        .await
        .iter()
        .filter(|record| record["type"] == "sku")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_bulk_loads_good_lines_and_refuses_bad_ones_whole() {
    let server = Server::start(Opts::default()).await;
    // An existing SKU with 3 units sold and 2 reserved.
    server.create_sku("HOT", 10, 0, 5).await;
    for (id, qty, payment) in [("o-cod", 3, "cod"), ("o-pre", 2, "prepaid")] {
        let reply = server
            .post_order(&order(id, "u1", "HOT", qty, payment))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let records_before = sku_records(&server).await;

    let body = [
        r#"{"sku":"N-1","stock":5}"#,                    // 1 loaded
        r#"{"sku":"bad sku!","stock":5}"#,               // 2 invalid name
        r#"{"sku":"N-2","stock":-1}"#,                   // 3 negative stock
        r#"{"sku":"HOT","stock":4,"per_user_limit":9}"#, // 4 below 3 + 2
        "this is not json",                              // 5 garbage
        "",                                              // 6 blank: skipped
        r#"{"sku":"N-3","stock":7,"per_user_limit":1,"max_per_order":2,"payment_timeout_s":60}"#, // 7
        r#"{"sku":"HOT","stock":"12"}"#, // 8 wrong type
        r#"{"sku":"HOT","stock":20,"per_user_limit":2}"#, // 9 loaded
        r#"{"sku":"N-1","max_per_order":3}"#, // 10 later line wins
        r#"{"sku":"N-4","stock":5,"max_per_order":0}"#, // 11 half valid
    ]
    .join("\n");
    let reply = bulk(
        &server,
        body,
        Some("application/x-ndjson"),
        Some(ADMIN_TOKEN),
    )
    .await;
    let report = report_of(&reply);
    assert_eq!(report["loaded"], 4, "{report}");
    assert_eq!(report["refused"], 6, "{report}");
    assert_eq!(report["lines"].as_array().unwrap().len(), 10, "{report}");

    let n1_first = assert_loaded(report, 1, "N-1");
    assert_eq!(n1_first["stock_total"], 5, "{n1_first}");
    assert_eq!(
        n1_first["max_per_order"], 10,
        "defaults for a new sku: {n1_first}"
    );
    assert_refused(report, 2, "invalid");
    assert_refused(report, 3, "invalid");
    assert_refused(report, 4, "stock_conflict");
    assert_refused(report, 5, "bad_request");
    let n3 = assert_loaded(report, 7, "N-3");
    assert_eq!(
        (
            n3["stock_total"].clone(),
            n3["per_user_limit"].clone(),
            n3["max_per_order"].clone(),
            n3["payment_timeout_s"].clone()
        ),
        (json!(7), json!(1), json!(2), json!(60)),
        "{n3}"
    );
    assert_refused(report, 8, "bad_request");
    let hot = assert_loaded(report, 9, "HOT");
    assert_eq!(
        (
            hot["stock_total"].clone(),
            hot["available"].clone(),
            hot["reserved"].clone(),
            hot["sold"].clone(),
            hot["per_user_limit"].clone()
        ),
        (json!(20), json!(15), json!(2), json!(3), json!(2)),
        "{hot}"
    );
    let n1 = assert_loaded(report, 10, "N-1");
    assert_eq!(
        (n1["stock_total"].clone(), n1["max_per_order"].clone()),
        (json!(5), json!(3)),
        "{n1}"
    );
    assert_refused(report, 11, "invalid");

    // GET agrees with the report, and nothing of a refused line was applied.
    for (sku, after) in [("N-1", &n1), ("N-3", &n3), ("HOT", &hot)] {
        assert_eq!(&server.sku(sku).await, after, "{sku}");
    }
    for sku in ["N-2", "N-4"] {
        server.get_sku(sku).await.assert_error(404, "unknown_sku");
    }
    // Line 4's per_user_limit 9 was not applied with the refused stock.
    assert_eq!(server.sku("HOT").await["per_user_limit"], 2);
    // One record per loaded line.
    assert_eq!(sku_records(&server).await, records_before + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_bulk_with_and_without_header_and_by_sniffing() {
    let server = Server::start(Opts::default()).await;
    // With a header (columns in another order) and CRLF line ends.
    let body = "sku,stock,max_per_order,per_user_limit,payment_timeout_s\r\n\
                C-1,10,2,1,120\r\n\
                C-2,abc\r\n\
                C-3,-3\r\n\
                C-4,5,,,\r\n";
    let reply = bulk(&server, body, Some("text/csv"), Some(ADMIN_TOKEN)).await;
    let report = report_of(&reply);
    assert_eq!(
        (report["loaded"].clone(), report["refused"].clone()),
        (json!(2), json!(2)),
        "{report}"
    );
    let c1 = assert_loaded(report, 2, "C-1");
    assert_eq!(
        (
            c1["stock_total"].clone(),
            c1["max_per_order"].clone(),
            c1["per_user_limit"].clone(),
            c1["payment_timeout_s"].clone()
        ),
        (json!(10), json!(2), json!(1), json!(120)),
        "{c1}"
    );
    assert_refused(report, 3, "bad_request");
    assert_refused(report, 4, "invalid");
    let c4 = assert_loaded(report, 5, "C-4");
    assert_eq!(
        (c4["stock_total"].clone(), c4["max_per_order"].clone()),
        (json!(5), json!(10)),
        "{c4}"
    );

    // Without a header: sku,stock,per_user_limit,max_per_order[,payment_timeout_s]; empty
    // fields keep the value. No content type: the first byte says CSV.
    let body = "C-1,,,5\nC-5,3,0,1,30\nC-6,1,1,1,900,extra\n";
    let reply = bulk(&server, body, None, Some(ADMIN_TOKEN)).await;
    let report = report_of(&reply);
    assert_eq!(
        (report["loaded"].clone(), report["refused"].clone()),
        (json!(2), json!(1)),
        "{report}"
    );
    let c1 = assert_loaded(report, 1, "C-1");
    assert_eq!(
        (
            c1["stock_total"].clone(),
            c1["max_per_order"].clone(),
            c1["per_user_limit"].clone(),
            c1["payment_timeout_s"].clone()
        ),
        (json!(10), json!(5), json!(1), json!(120)),
        "empty fields keep the values: {c1}"
    );
    assert_loaded(report, 2, "C-5");
    assert_refused(report, 3, "bad_request");
    server.get_sku("C-6").await.assert_error(404, "unknown_sku");

    // NDJSON without a content type is sniffed from its first `{`.
    let reply = bulk(
        &server,
        "\n{\"sku\":\"C-7\",\"stock\":4}\n",
        Some("application/octet-stream"),
        Some(ADMIN_TOKEN),
    )
    .await;
    let report = report_of(&reply);
    assert_loaded(report, 2, "C-7");
    for sku in ["C-1", "C-4", "C-5", "C-7"] {
        let listed = &all_skus(&server).await[sku];
        assert_eq!(&server.sku(sku).await, listed, "{sku}");
    }
    for sku in ["C-2", "C-3"] {
        server.get_sku(sku).await.assert_error(404, "unknown_sku");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_needs_the_admin_token_and_keeps_its_bounds() {
    let server = Server::start(Opts::default()).await;
    let body = "{\"sku\":\"T-1\",\"stock\":5}\n";
    bulk(&server, body, Some("application/x-ndjson"), None)
        .await
        .assert_error(401, "unauthorized");
    bulk(
        &server,
        body,
        Some("application/x-ndjson"),
        Some("wrong-token"),
    )
    .await
    .assert_error(401, "unauthorized");
    server.get_sku("T-1").await.assert_error(404, "unknown_sku");

    // Its own body cap: larger than http.body_bytes_max (16 KiB) is fine...
    let mut big = String::new();
    let mut index = 0;
    while big.len() < 64 * 1024 {
        big.push_str(&format!("B-{index},1\n"));
        index += 1;
    }
    let reply = bulk(&server, big, Some("text/csv"), Some(ADMIN_TOKEN)).await;
    assert_eq!(report_of(&reply)["loaded"], index, "{}", reply.text);
    // ... past 4 MiB is 413, and so are more than 50 000 lines; nothing is applied.
    // (Declared, on a raw connection: the server answers before the body and closes, so a
    // client still writing 4 MiB would see a broken pipe instead of the answer.)
    let head = over_the_cap(&server.addr, 4 * 1024 * 1024 + 1).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("too_large"), "{head}");
    let mut many = String::from("sku,stock\n");
    for index in 0..50_001 {
        many.push_str(&format!("M-{index},1\n"));
    }
    bulk(&server, many, Some("text/csv"), Some(ADMIN_TOKEN))
        .await
        .assert_error(413, "too_large");
    server.get_sku("M-0").await.assert_error(404, "unknown_sku");

    let reply = server
        .send(server.client().get(server.url("/v1/skus:bulk")))
        .await;
    reply.assert_error(405, "method_not_allowed");
}

/// Sends only the head of a bulk POST declaring `length` body bytes; returns what the server
/// answers (bounded wait).
async fn over_the_cap(addr: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/skus:bulk HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: text/csv\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&answer).contains("}") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => panic!(
                "no answer within 10 s: {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The fsync count the server logs when it stops (`fsyncs=N`).
fn logged_fsyncs(output: &str) -> u64 {
    let line = output
        .lines()
        .rev()
        .find(|line| line.contains("fsyncs"))
        .unwrap_or_else(|| panic!("no fsync count in the output:\n{output}"));
    let at = line.find("fsyncs").unwrap() + "fsyncs".len();
    line[at..]
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("fsync count in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_of_2000_skus_is_quick_journaled_together_and_survives_restarts() {
    let mut server = Server::start(Opts::default().shards(4)).await;
    let records_before = sku_records(&server).await;
    let body: String = (0..2000)
        .map(|index| {
            format!(
                "{{\"sku\":\"LOAD-{index:04}\",\"stock\":{},\"per_user_limit\":{},\"max_per_order\":2}}\n",
                100 + index,
                index % 3
            )
        })
        .collect();
    let started = Instant::now();
    let reply = bulk(
        &server,
        body,
        Some("application/x-ndjson"),
        Some(ADMIN_TOKEN),
    )
    .await;
    let took = started.elapsed();
    let report = report_of(&reply);
    assert_eq!(
        (report["loaded"].clone(), report["refused"].clone()),
        (json!(2000), json!(0))
    );
    // One append + commit per shard, not one fsync per line: well under a few seconds even
    // in a debug build on a slow disk (2000 fsyncs alone would take seconds).
    assert!(took < Duration::from_secs(5), "bulk of 2000 took {took:?}");
    assert_eq!(sku_records(&server).await, records_before + 2000);

    let status = server.terminate().await;
    assert!(status.success(), "{status}");
    let fsyncs = logged_fsyncs(&server.output());
    assert!(
        fsyncs < 50,
        "the bulk must not fsync per line: {fsyncs} fsyncs in this run"
    );

    server.restart().await;
    let skus = all_skus(&server).await;
    for index in [0usize, 1, 999, 1999] {
        let sku = &skus[&format!("LOAD-{index:04}")];
        assert_eq!(sku["stock_total"], 100 + index, "{sku}");
        assert_eq!(sku["per_user_limit"], index % 3, "{sku}");
        assert_eq!(sku["max_per_order"], 2, "{sku}");
    }
    assert_eq!(
        skus.keys().filter(|name| name.starts_with("LOAD-")).count(),
        2000
    );

    // A second bulk updates them all and a SIGKILL right after the answer loses nothing.
    let body: String = (0..2000)
        .map(|index| format!("LOAD-{index:04},{}\n", 7 + index))
        .collect();
    let reply = bulk(&server, body, Some("text/csv"), Some(ADMIN_TOKEN)).await;
    assert_eq!(report_of(&reply)["loaded"], 2000);
    server.kill9();
    server.restart().await;
    let skus = all_skus(&server).await;
    for index in 0..2000usize {
        let sku = &skus[&format!("LOAD-{index:04}")];
        assert_eq!(sku["stock_total"], 7 + index, "{sku}");
        assert_eq!(
            sku["per_user_limit"],
            index % 3,
            "kept from the first load: {sku}"
        );
    }
    // New SKUs after a bulk get fresh slots (the catalogue and the slot counter moved on).
    server.create_sku("AFTER-BULK", 3, 0, 1).await;
    assert_eq!(server.sku("LOAD-0000").await["stock_total"], 7);
    assert_eq!(server.sku("AFTER-BULK").await["stock_total"], 3);
}

/// In process: the engine's bulk path runs to its end when its caller is dropped (a client
/// that disconnects mid-bulk), so the catalogue learns every SKU that was journaled, and a
/// restart agrees with it.
#[test]
fn put_skus_runs_to_its_end_when_its_caller_goes_away() {
    use stampede::engine::Engine;
    use stampede::shard::{Clock, SkuUpdate};

    let dir = tempfile::tempdir().unwrap();
    let config = in_process::config(&dir.path().join("data"), &[("STAMPEDE_SHARDS", "3")]);
    let runtime = in_process::runtime(2);
    let update = |stock: u64| SkuUpdate {
        stock: Some(stock),
        ..SkuUpdate::default()
    };
    let (engine, _) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    runtime.block_on(async {
        let items: Vec<(String, SkuUpdate)> = (0..500u64)
            .map(|index| (format!("GONE-{index}"), update(index)))
            .collect();
        // Polled once (which hands the work to its own task), then dropped unanswered.
        let _ = tokio::time::timeout(Duration::ZERO, engine.put_skus(items)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while (0..500).any(|index| engine.slot_of(&format!("GONE-{index}")).is_none()) {
            assert!(Instant::now() < deadline, "the bulk did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Answers come per item, in order; a new SKU named twice is created, then updated.
        let results = engine
            .put_skus(vec![
                ("TWICE".into(), update(4)),
                ("GONE-1".into(), update(9)),
                ("TWICE".into(), update(6)),
            ])
            .await;
        let stocks: Vec<u64> = results
            .iter()
            .map(|result| result.as_ref().unwrap().stock_total)
            .collect();
        assert_eq!(stocks, vec![4, 9, 6]);
        engine.put_sku("AFTER", update(1)).await.unwrap();
    });
    let before: Vec<_> = engine.sku_views();
    assert_eq!(before.len(), 502);
    engine.shutdown().unwrap();
    drop(engine);
    let (engine, _) = Engine::start_with_clock(&config, Clock::system()).unwrap();
    assert_eq!(engine.sku_views(), before);
    assert_eq!(engine.sku_view("GONE-7").unwrap().stock_total, 7);
    assert_eq!(engine.sku_view("TWICE").unwrap().stock_total, 6);
    engine.shutdown().unwrap();
}

// ---- stampede stock reconcile ----------------------------------------------------------

/// A catalogue with orders in every stock state: reserved, sold, paid, cancelled, exchanged,
/// returned with restock.
async fn busy_server() -> Server {
    let server = Server::start(Opts::default()).await;
    let body = "sku,stock\nR-1,50\nR-2,40\nR-3,30\nR-4,20\nR-5,10\n";
    assert_eq!(
        report_of(&bulk(&server, body, Some("text/csv"), Some(ADMIN_TOKEN)).await)["loaded"],
        5
    );
    let orders = [
        ("a", "R-1", 2, "prepaid"),
        ("b", "R-1", 1, "cod"),
        ("c", "R-2", 3, "escrow"),
        ("d", "R-3", 2, "prepaid"),
        ("e", "R-5", 1, "cod"),
        ("f", "R-2", 1, "prepaid"),
    ];
    for (id, sku, qty, payment) in orders {
        let reply = server.post_order(&order(id, "u1", sku, qty, payment)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    server.act("c", "pay", None).await;
    server.act("d", "cancel", None).await;
    for stage in [
        "pay", "verify", "print", "pick", "check", "pack", "weigh", "ship",
    ] {
        server.act("f", stage, None).await;
    }
    server
        .act("f", "exchange", Some(&json!({"sku": "R-4"})))
        .await;
    for stage in ["verify", "print", "pick", "check", "pack", "weigh", "ship"] {
        server.act("e", stage, None).await;
    }
    server
        .act("e", "return", Some(&json!({"restock": true})))
        .await;
    // What the engine now says, for the test's own sanity.
    let r4 = server.sku("R-4").await;
    assert_eq!(
        (r4["sold"].clone(), r4["available"].clone()),
        (json!(1), json!(19)),
        "{r4}"
    );
    server
}

/// The engine's stock as an expected-stock CSV, with `change` applied to the lines.
async fn expected_csv(server: &Server, change: impl Fn(&str, u64) -> Option<String>) -> String {
    let mut csv = String::from("sku,stock\n");
    for (name, sku) in all_skus(server).await {
        if let Some(line) = change(&name, sku["stock_total"].as_u64().unwrap()) {
            csv.push_str(&line);
            csv.push('\n');
        }
    }
    csv
}

fn reconcile(dir: &Path, expected: &str, args: &[&OsStr]) -> (i32, String) {
    let file = dir.join(format!("expected-{}.csv", expected.len()));
    std::fs::write(&file, expected).unwrap();
    let mut all: Vec<&OsStr> = vec![
        "stock".as_ref(),
        "reconcile".as_ref(),
        "--expected".as_ref(),
        file.as_os_str(),
    ];
    all.extend_from_slice(args);
    let (status, output) = run_to_exit(&all, &[], RECONCILE_TIMEOUT);
    let status = status.unwrap_or_else(|| panic!("reconcile did not finish:\n{output}"));
    (status.code().expect("exit code"), output)
}

/// The output line of the difference table that names `sku` and `check`.
fn has_row(output: &str, sku: &str, check: &str) -> bool {
    // Lines of the harness's log read `[out] SKU  CHECK  EXPECTED  ENGINE  JOURNAL`.
    output.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.len() > 2 && words[0] == "[out]" && words[1] == sku && words[2] == check
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_matches_and_names_planted_differences() {
    let mut server = busy_server().await;
    let scratch = tempfile::tempdir().unwrap();
    let url = server.base_url.clone();
    let data_dir = server.data_dir();
    let url_args: Vec<&OsStr> = vec!["--url".as_ref(), url.as_ref()];
    let dir_args: Vec<&OsStr> = vec!["--data-dir".as_ref(), data_dir.as_os_str()];
    let both_args: Vec<&OsStr> = url_args.iter().chain(&dir_args).copied().collect();

    let matching = expected_csv(&server, |name, stock| Some(format!("{name},{stock}"))).await;
    for args in [&url_args, &dir_args, &both_args] {
        let (code, output) = reconcile(scratch.path(), &matching, args);
        assert_eq!(code, 0, "{args:?}:\n{output}");
        assert!(output.contains("match"), "{output}");
    }
    let (_, output) = reconcile(scratch.path(), &matching, &dir_args);
    assert!(output.contains("engine:   not compared"), "{output}");
    let (_, output) = reconcile(scratch.path(), &matching, &url_args);
    assert!(output.contains("journal:  not compared"), "{output}");

    // The bulk-load CSV (more columns, header) is an expected file too.
    let bulk_format = expected_csv(&server, |name, stock| {
        Some(format!("{name},{stock},0,10,900"))
    })
    .await
    .replacen(
        "sku,stock",
        "sku,stock,per_user_limit,max_per_order,payment_timeout_s",
        1,
    );
    let (code, output) = reconcile(scratch.path(), &bulk_format, &both_args);
    assert_eq!(code, 0, "{output}");

    // Planted: R-1 expected 5 more than loaded, R-2 not in the file.
    let planted = expected_csv(&server, |name, stock| match name {
        "R-1" => Some(format!("{name},{}", stock + 5)),
        "R-2" => None,
        _ => Some(format!("{name},{stock}")),
    })
    .await;
    for args in [&url_args, &dir_args, &both_args] {
        let (code, output) = reconcile(scratch.path(), &planted, args);
        assert_eq!(code, 1, "{args:?}:\n{output}");
        assert!(
            has_row(&output, "R-1", "stock_total"),
            "{args:?}:\n{output}"
        );
        assert!(has_row(&output, "R-2", "missing"), "{args:?}:\n{output}");
        assert!(output.contains("2 differences in 2 SKUs"), "{output}");
        for quiet in ["R-3", "R-4", "R-5", "SKU-1"] {
            assert!(
                !has_row(&output, quiet, "stock_total"),
                "{quiet}:\n{output}"
            );
        }
    }
    // A SKU the engine and the journal do not know.
    let (code, output) = reconcile(scratch.path(), &format!("{matching}GHOST,3\n"), &both_args);
    assert_eq!(code, 1, "{output}");
    assert!(has_row(&output, "GHOST", "missing"), "{output}");

    // Usage and I/O errors: exit 2.
    let (code, output) = reconcile(scratch.path(), "sku,stock\nbad sku,1\n", &dir_args);
    assert_eq!(code, 2, "{output}");
    let (code, output) = reconcile(
        scratch.path(),
        &matching,
        &[
            "--data-dir".as_ref(),
            scratch.path().join("nowhere").as_os_str(),
        ],
    );
    assert_eq!(code, 2, "{output}");
    let (status, output) = run_to_exit(
        &[
            "stock".as_ref(),
            "reconcile".as_ref(),
            "--url".as_ref(),
            url.as_ref(),
        ],
        &[],
        RECONCILE_TIMEOUT,
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "no --expected:\n{output}"
    );

    // With the engine stopped, --data-dir still reads the journal; --url cannot connect.
    let status = server.terminate().await;
    assert!(status.success());
    let (code, output) = reconcile(scratch.path(), &matching, &dir_args);
    assert_eq!(code, 0, "{output}");
    let (code, output) = reconcile(scratch.path(), &planted, &dir_args);
    assert_eq!(code, 1, "{output}");
    let (code, output) = reconcile(scratch.path(), &matching, &url_args);
    assert_eq!(code, 2, "{output}");
}
