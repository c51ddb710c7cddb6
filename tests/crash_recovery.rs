//! Black-box durability tests: SIGKILL and SIGTERM of the real binary, and damage done to
//! its journal files between runs (torn tails, flipped bits).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Opts, Reply, Server, new_client, order, post_order_with, segment_frames};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// What a client learned about one order it sent.
#[derive(Debug)]
enum Outcome {
    /// 201: the order is durable (as the policy says) and must survive.
    Acked(Reply),
    /// A definite refusal (409, 503 ...): nothing was taken, it must not be in the journal.
    Refused(Reply),
    /// No answer (the server died or closed the connection): either way is fine.
    InDoubt(String),
}

struct Sent {
    id: String,
    body: Value,
    outcome: Outcome,
}

/// Sends `tasks * per_task` orders from `tasks` concurrent clients over `skus`; once `after`
/// orders are acknowledged, `signal` is sent to the server (once). Returns every order's fate.
async fn fire_orders(
    server: &Server,
    skus: &[&str],
    tasks: usize,
    per_task: usize,
    after: usize,
    signal: libc::c_int,
) -> Vec<Sent> {
    let pid = server.pid().expect("server running") as libc::pid_t;
    let acked = Arc::new(AtomicUsize::new(0));
    let signalled = Arc::new(AtomicUsize::new(0));
    let skus: Arc<Vec<String>> = Arc::new(skus.iter().map(|s| s.to_string()).collect());
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (base_url, acked, signalled, skus) = (
            server.base_url.clone(),
            acked.clone(),
            signalled.clone(),
            skus.clone(),
        );
        handles.push(tokio::spawn(async move {
            let client = new_client();
            let mut sent = Vec::new();
            for n in 0..per_task {
                let id = format!("t{task}-n{n}");
                let sku = &skus[(task + n) % skus.len()];
                let payment = ["prepaid", "escrow", "cod"][(task * 7 + n) % 3];
                let qty = 1 + (n % 3) as u32;
                let body = order(&id, &format!("user-{task}"), sku, qty, payment);
                let outcome = match post_order_with(&client, &base_url, &body).await {
                    Ok(reply) if reply.status == StatusCode::CREATED => {
                        if acked.fetch_add(1, Ordering::SeqCst) + 1 >= after
                            && signalled.fetch_add(1, Ordering::SeqCst) == 0
                        {
                            // SAFETY: kill(2) on the server's pid; no memory is involved.
                            unsafe {
                                libc::kill(pid, signal);
                            }
                        }
                        Outcome::Acked(reply)
                    }
                    Ok(reply) => Outcome::Refused(reply),
                    Err(error) => Outcome::InDoubt(error.to_string()),
                };
                sent.push(Sent { id, body, outcome });
            }
            sent
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("order task"));
    }
    all
}

/// After a restart: the journal is contiguous from seq 1, holds every acknowledged order with
/// its seq, no refused one, and nothing that was never sent; every SKU's counts are what its
/// journaled orders took; every acknowledged order replays. Returns the journaled orders.
async fn check_recovered(
    server: &Server,
    sent: &[Sent],
    skus: &[(&str, u64)],
) -> HashMap<String, Value> {
    let journal = server.journal().await;
    let seqs: Vec<u64> = journal.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "journal seqs are 1..=N without a gap");
    let journaled = server.accepted_orders().await;

    let by_id: HashMap<&str, &Sent> = sent.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut acked = 0;
    for s in sent {
        match &s.outcome {
            Outcome::Acked(reply) => {
                acked += 1;
                let record = journaled
                    .get(&s.id)
                    .unwrap_or_else(|| panic!("acknowledged order {} lost: {}", s.id, reply.text));
                assert_eq!(record["seq"], reply.json["seq"], "seq of {}", s.id);
                for field in ["user_id", "sku", "qty", "payment"] {
                    assert_eq!(record[field], s.body[field], "{field} of {}", s.id);
                }
            }
            Outcome::Refused(reply) => {
                assert!(
                    !journaled.contains_key(&s.id),
                    "refused order {} ({} {}) is in the journal",
                    s.id,
                    reply.status,
                    reply.text
                );
            }
            Outcome::InDoubt(_) => {}
        }
    }
    for id in journaled.keys() {
        assert!(
            by_id.contains_key(id.as_str()),
            "journal has an order never sent: {id}"
        );
    }
    let in_doubt: Vec<&str> = sent
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::InDoubt(error) => Some(error.as_str()),
            _ => None,
        })
        .collect();
    eprintln!(
        "recovered: {} sent, {acked} acknowledged, {} refused, {} in doubt (e.g. {:?}), {} journaled",
        sent.len(),
        sent.iter()
            .filter(|s| matches!(s.outcome, Outcome::Refused(_)))
            .count(),
        in_doubt.len(),
        in_doubt.first(),
        journaled.len()
    );

    for &(sku, stock) in skus {
        let (mut reserved, mut sold) = (0u64, 0u64);
        for record in journaled.values().filter(|r| r["sku"] == sku) {
            let qty = record["qty"].as_u64().unwrap();
            if record["payment"] == "cod" {
                sold += qty;
            } else {
                reserved += qty;
            }
        }
        let view = server.sku(sku).await;
        assert_eq!(view["stock_total"], stock, "{view}");
        assert_eq!(view["reserved"], reserved, "reserved of {sku}: {view}");
        assert_eq!(view["sold"], sold, "sold of {sku}: {view}");
    }

    // Every dedup entry survived: each acknowledged order replays with its seq.
    for s in sent {
        if let Outcome::Acked(original) = &s.outcome {
            let replay = server.post_order(&s.body).await;
            assert_eq!(
                replay.status,
                StatusCode::OK,
                "replay of {}: {}",
                s.id,
                replay.text
            );
            assert_eq!(replay.header("idempotent-replayed"), Some("true"));
            assert_eq!(replay.json, original.json, "replay body of {}", s.id);
        }
    }
    journaled
}

/// An order whose answer was lost is either in the journal (a retry replays it) or not (a
/// retry creates it): a retry must agree with the journal.
async fn retry_in_doubt(server: &Server, sent: &[Sent], journaled: &HashMap<String, Value>) {
    for s in sent {
        if let Outcome::InDoubt(_) = s.outcome {
            let retry = server.post_order(&s.body).await;
            match journaled.get(&s.id) {
                Some(record) => {
                    assert_eq!(retry.status, StatusCode::OK, "{}: {}", s.id, retry.text);
                    assert_eq!(retry.json["seq"], record["seq"], "{}", s.id);
                }
                None => assert!(
                    retry.status == StatusCode::CREATED || retry.status == StatusCode::CONFLICT,
                    "{}: {} {}",
                    s.id,
                    retry.status,
                    retry.text
                ),
            }
        }
    }
}

async fn sigkill_keeps_every_acknowledged_order(fsync: &'static str) {
    let skus = [
        ("KILL-A", 1000),
        ("KILL-B", 1000),
        ("KILL-C", 1000),
        ("KILL-S", 20),
    ];
    let mut server = Server::start(Opts::default().fsync(fsync).shards(3)).await;
    for (sku, stock) in skus {
        server.create_sku(sku, stock, 0, 3).await;
    }
    let names: Vec<&str> = skus.iter().map(|(sku, _)| *sku).collect();
    let sent = fire_orders(&server, &names, 16, 13, 90, libc::SIGKILL).await;
    server.kill9();
    assert!(
        sent.iter().any(|s| matches!(s.outcome, Outcome::Acked(_))),
        "some orders were acknowledged before the kill"
    );
    for s in &sent {
        if let Outcome::Refused(reply) = &s.outcome {
            reply.assert_error(409, "sold_out");
        }
    }

    server.restart().await;
    let journaled = check_recovered(&server, &sent, &skus).await;
    retry_in_doubt(&server, &sent, &journaled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_fsync_always_keeps_every_acknowledged_order() {
    sigkill_keeps_every_acknowledged_order("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_fsync_interval_keeps_every_acknowledged_order() {
    sigkill_keeps_every_acknowledged_order("interval").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_fsync_none_keeps_every_acknowledged_order() {
    sigkill_keeps_every_acknowledged_order("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_exits_zero_and_loses_nothing() {
    let skus = [("TERM-A", 1000), ("TERM-B", 1000)];
    let mut server = Server::start(Opts::default()).await;
    for (sku, stock) in skus {
        server.create_sku(sku, stock, 0, 3).await;
    }
    let names: Vec<&str> = skus.iter().map(|(sku, _)| *sku).collect();
    let sent = fire_orders(&server, &names, 8, 15, 40, libc::SIGTERM).await;
    let status = server
        .wait_exit(common::TERMINATE_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", server.output()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    for s in &sent {
        if let Outcome::Refused(reply) = &s.outcome {
            // While draining, new orders are turned away with 503; nothing else is expected.
            reply.assert_error(503, "unavailable");
        }
    }
    let acked = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Acked(_)))
        .count();
    assert!(acked >= 40, "{acked} acknowledged before SIGTERM");

    server.restart().await;
    let journaled = check_recovered(&server, &sent, &skus).await;
    // A graceful drain answers every order it took: nothing is journaled unanswered.
    for s in &sent {
        if let Outcome::InDoubt(error) = &s.outcome {
            assert!(
                !journaled.contains_key(&s.id),
                "order {} was journaled but its client got no answer: {error}",
                s.id
            );
        }
    }
    retry_in_doubt(&server, &sent, &journaled).await;

    // A plain SIGTERM on an idle server: exit 0 promptly.
    let started = Instant::now();
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle drain took {:?}",
        started.elapsed()
    );
}

/// Starts a server, creates `sku`, posts `count` prepaid orders one by one, stops it with
/// SIGTERM, and returns it with the journal and the orders' 201 bodies.
async fn server_with_orders(sku: &str, count: usize) -> (Server, Vec<Value>, Vec<(Value, Reply)>) {
    let mut server = Server::start(Opts::default().shards(1)).await;
    server.create_sku(sku, 100, 0, 1).await;
    let mut orders = Vec::new();
    for n in 0..count {
        let body = order(&format!("{sku}-o{n}"), &format!("u{n}"), sku, 1, "prepaid");
        let reply = server.post_order(&body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        orders.push((body, reply));
    }
    let journal = server.journal().await;
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(server.segments().len(), 1, "one segment expected");
    (server, journal, orders)
}

fn output_mentions_truncation(server: &Server) -> bool {
    let output = server.output().to_lowercase();
    output.contains("truncat") && output.contains("torn")
}

/// Where the last whole frame of a segment ends (zeros after it are preallocated room).
fn logical_end(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let frames = segment_frames(&bytes);
    let end = frames
        .last()
        .map_or(16, |&(offset, total, _, _)| offset + total);
    assert!(
        bytes[end..].iter().all(|byte| *byte == 0),
        "only zeros may follow the last frame"
    );
    end as u64
}

fn append(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open segment");
    file.write_all(bytes).expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_record_is_cut_off_at_restart() {
    let (mut server, journal, orders) = server_with_orders("TAIL-G", 8).await;
    let segment = server.segments().pop().unwrap();
    let clean_len = logical_end(&segment);

    // Zeros after the last record are room the journal preallocated ahead of its writer:
    // kept, not reported as a torn tail, and written over later.
    append(&segment, &[0; 4096]);
    server.restart().await;
    assert!(
        !output_mentions_truncation(&server),
        "zeros are not a torn tail:\n{}",
        server.output()
    );
    assert_eq!(logical_end(&segment), clean_len);
    assert_eq!(
        server.journal().await,
        journal,
        "every record is still there"
    );
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");

    // Short garbage (less than a frame header), a header with an impossible length, and
    // garbage after a run of zeros (a write that tore inside preallocated room).
    let mut after_zeros = vec![0; 4096];
    after_zeros.extend_from_slice(&[0xA5; 7]);
    let garbage: [Vec<u8>; 3] = [vec![0xA5; 13], vec![0xA5; 40], after_zeros];
    for bytes in garbage {
        append(&segment, &bytes);
        server.restart().await;
        assert!(
            output_mentions_truncation(&server),
            "start-up output should mention the truncated torn tail:\n{}",
            server.output()
        );
        assert_eq!(
            logical_end(&segment),
            clean_len,
            "the tail is cut back to the last whole record"
        );
        assert_eq!(
            server.journal().await,
            journal,
            "every record is still there"
        );
        assert_eq!(server.sku("TAIL-G").await["reserved"], orders.len());
        let status = server.terminate().await;
        assert_eq!(status.code(), Some(0), "{status}");
    }

    // A crash while a new segment was being created leaves a file with a torn header:
    // it is removed and the journal goes on in the segment before it.
    let torn_segment = server
        .journal_dir()
        .join(format!("{:020}.seg", journal.len() + 1));
    std::fs::write(&torn_segment, b"STMPJRN").unwrap();
    server.restart().await;
    assert!(
        output_mentions_truncation(&server),
        "start-up output should mention the torn segment:\n{}",
        server.output()
    );
    assert!(!torn_segment.exists(), "the torn segment is removed");
    assert_eq!(server.journal().await, journal);
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");

    // After all that the journal takes new records where it left off.
    server.restart().await;
    for (body, reply) in &orders {
        let replay = server.post_order(body).await;
        assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
        assert_eq!(replay.json, reply.json);
    }
    let next = server
        .post_order(&order("TAIL-G-new", "u-new", "TAIL-G", 1, "prepaid"))
        .await;
    assert_eq!(next.status, StatusCode::CREATED, "{}", next.text);
    assert_eq!(next.json["seq"], journal.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_record_cut_in_half_is_dropped_and_the_others_survive() {
    let (mut server, journal, orders) = server_with_orders("TAIL-C", 8).await;
    let segment = server.segments().pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let frames = segment_frames(&bytes);
    assert_eq!(
        frames.len(),
        journal.len(),
        "frames in the file = journal records"
    );
    let &(offset, total, payload_len, seq) = frames.last().unwrap();
    assert_eq!(
        offset + total,
        logical_end(&segment) as usize,
        "clean stop ends on a frame boundary, followed only by preallocated zeros"
    );
    assert_eq!(seq, journal.len() as u64);

    // Cut the last record in the middle of its payload.
    let cut = offset + (16 + payload_len) / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    server.restart().await;
    assert!(
        output_mentions_truncation(&server),
        "start-up output should mention the truncated torn tail:\n{}",
        server.output()
    );
    assert_eq!(logical_end(&segment), offset as u64);
    let after = server.journal().await;
    assert_eq!(
        after,
        journal[..journal.len() - 1],
        "all records but the cut one"
    );
    assert_eq!(server.sku("TAIL-C").await["reserved"], orders.len() - 1);

    // The cut order is gone: posting it again creates it, at the seq it had.
    let (last_body, last_reply) = orders.last().unwrap();
    let again = server.post_order(last_body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.json["seq"], last_reply.json["seq"]);
    // Every other order still replays.
    for (body, reply) in &orders[..orders.len() - 1] {
        let replay = server.post_order(body).await;
        assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
        assert_eq!(replay.json, reply.json);
    }

    // A tail torn inside a frame header is cut the same way.
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");
    let bytes = std::fs::read(&segment).unwrap();
    let &(offset, ..) = segment_frames(&bytes).last().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(offset as u64 + 5)
        .unwrap();
    server.restart().await;
    assert!(output_mentions_truncation(&server), "{}", server.output());
    assert_eq!(server.journal().await, journal[..journal.len() - 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_inside_the_journal_refuses_to_start_and_names_the_place() {
    let (mut server, journal, orders) = server_with_orders("FLIP-1", 10).await;
    let segment = server.segments().pop().unwrap();
    let original = std::fs::read(&segment).unwrap();
    let frames = segment_frames(&original);
    // An early order: the journal starts with the demo catalogue's and our SKU records.
    let index = journal
        .iter()
        .position(|r| r["type"] == "accepted")
        .expect("an order")
        + 1;
    assert!(
        index + 3 < frames.len(),
        "the damaged record is not near the tail"
    );
    let (offset, _, payload_len, _) = frames[index];
    let mut damaged = original.clone();
    damaged[offset + 16 + payload_len / 2] ^= 0x5A;
    std::fs::write(&segment, &damaged).unwrap();

    let started = Instant::now();
    let failure = server
        .try_restart()
        .await
        .expect_err("a journal damaged in the middle must not start");
    let status = failure.status.expect("the server exited by itself");
    assert!(!status.success(), "non-zero exit expected: {status}");
    assert!(status.code().is_some(), "an exit, not a signal: {status}");
    assert!(
        failure.reason.contains("exited"),
        "it must exit by itself, not hang: {}",
        failure.reason
    );
    assert!(started.elapsed() < common::START_TIMEOUT);
    let file_name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        failure.output.contains(file_name),
        "the output names the segment {file_name}:\n{}",
        failure.output
    );
    assert!(
        failure.output.contains(&format!("byte {offset}")),
        "the output names the byte offset {offset}:\n{}",
        failure.output
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        damaged,
        "a refused start must not modify the journal"
    );

    // Repaired, the journal starts again with everything in it.
    std::fs::write(&segment, &original).unwrap();
    server.restart().await;
    assert_eq!(server.journal().await, journal);
    for (body, reply) in &orders {
        let replay = server.post_order(body).await;
        assert_eq!(replay.json, reply.json, "{}", replay.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_journal_of_several_segments_recovers_and_refuses_damage_in_an_early_one() {
    let opts = Opts {
        env: vec![(
            "STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX".to_string(),
            "65536".to_string(),
        )],
        ..Opts::default().fsync("none")
    };
    let mut server = Server::start(opts).await;
    server.create_sku("SEG-1", 10_000, 0, 1).await;
    // ~1 KiB records, so 64 KiB segments fill after ~60 orders.
    let address = json!({"line": "s".repeat(900)});
    let mut tasks = Vec::new();
    for task in 0..4 {
        let (base_url, address) = (server.base_url.clone(), address.clone());
        tasks.push(tokio::spawn(async move {
            let client = new_client();
            let mut acked = Vec::new();
            for n in 0..50 {
                let body = json!({"order_id": format!("s{task}-{n}"), "user_id": "u",
                    "sku": "SEG-1", "qty": 1, "address": address});
                let reply = post_order_with(&client, &base_url, &body).await.unwrap();
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
                acked.push((body, reply));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    server.kill9();
    let segments = server.segments();
    assert!(
        segments.len() >= 3,
        "expected several segments, got {segments:?}"
    );

    server.restart().await;
    let journal = server.journal().await;
    let seqs: Vec<u64> = journal.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let journaled = server.accepted_orders().await;
    assert_eq!(journaled.len(), acked.len());
    for (body, reply) in &acked {
        let id = body["order_id"].as_str().unwrap();
        assert_eq!(journaled[id]["seq"], reply.json["seq"]);
        assert_eq!(journaled[id]["address"], address);
    }
    assert_eq!(server.sku("SEG-1").await["reserved"], acked.len());
    for (body, reply) in &acked {
        let replay = server.post_order(body).await;
        assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
        assert_eq!(replay.json, reply.json);
    }
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");

    // Damage the last record of the first segment: not a torn tail, because later
    // segments follow. Start-up must refuse and name that file and offset.
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let &(offset, _, payload_len, _) = segment_frames(&bytes).last().unwrap();
    bytes[offset + 16 + payload_len / 2] ^= 0x01;
    std::fs::write(first, &bytes).unwrap();
    let failure = server
        .try_restart()
        .await
        .expect_err("damage in an early segment must not start");
    assert!(failure.status.is_some_and(|s| !s.success()), "{failure:?}");
    let name = first.file_name().unwrap().to_str().unwrap();
    assert!(failure.output.contains(name), "{}", failure.output);
    assert!(
        failure.output.contains(&format!("byte {offset}")),
        "{}",
        failure.output
    );
    let ids: HashSet<&str> = journaled.keys().map(String::as_str).collect();
    assert_eq!(ids.len(), acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_settings_and_sold_out_survive_restarts() {
    let mut server = Server::start(Opts::default()).await;
    server.create_sku("LIM-R", 3, 1, 1).await;
    for (id, user, payment) in [
        ("lr-1", "u1", "cod"),
        ("lr-2", "u2", "prepaid"),
        ("lr-3", "u3", "escrow"),
    ] {
        let reply = server
            .post_order(&order(id, user, "LIM-R", 1, payment))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    server.kill9();
    server.restart().await;
    let view = server.sku("LIM-R").await;
    assert_eq!(
        (
            view["sold"].as_u64(),
            view["reserved"].as_u64(),
            view["available"].as_u64()
        ),
        (Some(1), Some(2), Some(0)),
        "{view}"
    );
    assert_eq!(view["per_user_limit"], 1, "{view}");
    server
        .post_order(&order("lr-4", "u4", "LIM-R", 1, "prepaid"))
        .await
        .assert_error(409, "sold_out");

    // New settings are journaled too.
    let changed = server
        .put_sku(
            "LIM-R",
            &json!({"stock": 10, "per_user_limit": 2, "max_per_order": 2}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.json["available"], 7, "{}", changed.text);
    server.kill9();
    server.restart().await;
    let view = server.sku("LIM-R").await;
    for (field, value) in [
        ("stock_total", 10),
        ("available", 7),
        ("per_user_limit", 2),
        ("max_per_order", 2),
    ] {
        assert_eq!(view[field], value, "{field} in {view}");
    }
    // u1 already has one unit: the purchase count was rebuilt from the journal.
    server
        .post_order(&order("lr-5", "u1", "LIM-R", 2, "prepaid"))
        .await
        .assert_error(409, "purchase_limit");
    let one_more = server
        .post_order(&order("lr-6", "u1", "LIM-R", 1, "prepaid"))
        .await;
    assert_eq!(one_more.status, StatusCode::CREATED, "{}", one_more.text);
    server
        .post_order(&order("lr-7", "u1", "LIM-R", 1, "prepaid"))
        .await
        .assert_error(409, "purchase_limit");
    server
        .post_order(&order("lr-8", "u5", "LIM-R", 3, "prepaid"))
        .await
        .assert_error(422, "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_upload_still_exits_zero_within_the_drain_bound() {
    use tokio::io::AsyncWriteExt;
    let mut server = Server::start(Opts::default()).await;
    server.create_sku("STALL-1", 10, 0, 1).await;
    let done = server
        .post_order(&order("stall-ok", "u1", "STALL-1", 1, "prepaid"))
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.text);

    // A client that sends its headers and part of its body, then stalls.
    let mut stalled = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let body = order("stall-never", "u2", "STALL-1", 1, "prepaid").to_string();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", server.output());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "drain took {:?}",
        started.elapsed()
    );
    drop(stalled);

    server.restart().await;
    let orders = server.accepted_orders().await;
    assert_eq!(
        orders.len(),
        1,
        "only the finished order: {:?}",
        orders.keys()
    );
    assert!(orders.contains_key("stall-ok"));
}

/// A SIGTERM while the engine is still starting (recovery, catalogue) is a clean exit 0, not
/// the default disposition that kills the process: the handlers are installed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_exits_zero() {
    use std::os::unix::process::ExitStatusExt;
    let mut server = Server::start_listening(Opts::default()).await;
    server.send_sigterm();
    let status = server
        .wait_exit(common::TERMINATE_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", server.output()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM during start-up: {status} (signal {:?})",
        status.signal()
    );
    server.restart().await;
}
