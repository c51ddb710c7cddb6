//! The plan and the loop: the settings of a run, each cycle's seeded plan (kill moment, a
//! SIGSTOP pause, kills during the next start), the kill during a start, and `run` itself:
//! start, load phases, kills (and power cuts), restarts, audits, and the end (final retries,
//! retention, a graceful restart, the last audit).
//!
//! Every wait is bounded (see the crate doc); the engine is killed when the `Server` drops.

use super::*;

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) kills: u64,
    pub(crate) seed: u64,
    /// `CRASH_LOOP_VERBOSE=1`: one line per cycle.
    pub(crate) verbose: bool,
    /// Self-test only: after this kill, cut the journal back before the last record the
    /// previous audit read (a lost tail, as a broken engine would leave it); with power
    /// cuts, after the cut, before the newest order acknowledged before the last restart
    /// (durable: no policy may lose it).
    pub(crate) sabotage_after_kill: Option<u64>,
    /// Run the engine with checkpoints and retention (`retain_s = 1`, a pass every second),
    /// and load phases long enough for passes to run.
    pub(crate) retention: bool,
    /// Power cuts: the engine runs with this fsync policy and its power-cut trace on, and
    /// after every SIGKILL its files are cut back to what a power cut could leave
    /// (`common::power_cut`) before the restart.
    pub(crate) power_cut: Option<&'static str>,
}

impl Settings {
    pub(crate) fn from_env() -> Self {
        let number = |name: &str| {
            std::env::var(name).ok().map(|text| {
                text.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("{name}={text:?}: {e}"))
            })
        };
        let seed = number("CRASH_LOOP_SEED").unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        Settings {
            kills: number("CRASH_LOOP_KILLS").unwrap_or(DEFAULT_KILLS),
            seed,
            verbose: number("CRASH_LOOP_VERBOSE").is_some_and(|v| v > 0),
            sabotage_after_kill: None,
            retention: false,
            power_cut: None,
        }
    }

    /// The run with checkpoints and retention: `CRASH_LOOP_RETENTION_KILLS` kills, else
    /// `CRASH_LOOP_KILLS` / 3, else `DEFAULT_RETENTION_KILLS` (its phases are longer).
    pub(crate) fn retention_from_env() -> Self {
        let mut settings = Settings::from_env();
        settings.retention = true;
        settings.kills = match std::env::var("CRASH_LOOP_RETENTION_KILLS") {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("CRASH_LOOP_RETENTION_KILLS={text:?}: {e}")),
            Err(_) if std::env::var("CRASH_LOOP_KILLS").is_ok() => (settings.kills / 3).max(1),
            Err(_) => DEFAULT_RETENTION_KILLS,
        };
        settings
    }
}

/// Prints the seed when the run panics, whatever panicked (the harness included).
pub(crate) struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash_loop: FAILED with seed {seed}; replay with CRASH_LOOP_SEED={seed}",
                seed = self.0
            );
        }
    }
}

/// How one cycle ends: after `kill_after` client operations (and, with retention, not
/// before `min_phase` has passed), SIGKILL; with a pause, SIGSTOP after `stop_at` operations
/// for `pause`, then (unless killed while stopped) SIGCONT and `after_cont` more operations
/// before the kill. Then one start per entry of `recovery_kills`, each SIGKILLed that many
/// thousandths of the last start's duration (spawn to `/readyz` 200) after its spawn, before
/// the start that must pass the audit.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) kill_after: u64,
    pub(crate) stop: Option<(u64, Duration, bool, u64)>,
    pub(crate) min_phase: Duration,
    pub(crate) recovery_kills: Vec<u64>,
}

impl Plan {
    pub(crate) fn draw(rng: &mut Rng, retention: bool) -> Plan {
        // Now and then at once: the clients' first requests meet the kill, and so do the
        // payment timers that recovery found overdue and fires on each shard's first turn.
        let kill_after = if rng.percent(6) {
            0
        } else {
            rng.range(10, 120)
        };
        let stop = (kill_after > 0 && rng.percent(35)).then(|| {
            (
                rng.range(1, kill_after),
                Duration::from_millis(rng.range(50, 1500)),
                rng.percent(30),
                rng.range(0, 25),
            )
        });
        // Retention passes run every second of an engine's life: most phases outlast one.
        let min_phase = if retention && rng.percent(70) {
            Duration::from_millis(rng.range(600, 2500))
        } else {
            Duration::ZERO
        };
        // Up to 1.3 times the last start: most land in recovery, some just after it.
        let mut recovery_kills = Vec::new();
        if rng.percent(35) {
            recovery_kills.push(rng.range(0, 1300));
            if rng.percent(25) {
                recovery_kills.push(rng.range(0, 1300));
            }
        }
        Plan {
            kill_after,
            stop,
            min_phase,
            recovery_kills,
        }
    }
}

/// Where a kill during a start landed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Landed {
    BeforeListening,
    NotReady,
    AfterReady,
}

/// Starts the engine on its data directory and SIGKILLs it `delay` after the spawn, whatever
/// it is doing then: starting up, recovering (`/readyz` 503) or, when recovery was quicker,
/// running. Fails the run when the start fails by itself.
pub(crate) async fn kill_during_start(
    auditor: &Auditor,
    server: &mut Server,
    delay: Duration,
) -> Landed {
    let spawned = Instant::now();
    match tokio::time::timeout(delay, server.try_restart_listening()).await {
        Err(_) => {
            // The listening line had not come: the port was not open yet.
            server.kill9();
            return Landed::BeforeListening;
        }
        Ok(Err(failure)) => auditor.fail(format!(
            "a start (to be killed during recovery) failed: {} (status {:?})\n{}",
            failure.reason, failure.status, failure.output
        )),
        Ok(Ok(())) => {}
    }
    let probe = http_client(Duration::from_millis(250));
    let mut landed = Landed::NotReady;
    loop {
        if let Some(status) = server.wait_exit(Duration::ZERO).await {
            auditor.fail(format!(
                "the engine exited by itself during recovery: {status}\n{}",
                server.output()
            ));
        }
        if spawned.elapsed() >= delay {
            break;
        }
        if landed == Landed::NotReady {
            let ready = send(probe.get(server.url("/readyz")))
                .await
                .is_ok_and(|answer| answer.status == 200);
            if ready {
                landed = Landed::AfterReady;
            }
        }
        let left = delay.saturating_sub(spawned.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(2))).await;
    }
    server.send_sigkill();
    server.kill9();
    landed
}

/// The first violations, one a line, each cut to a readable length (records with 1 KiB
/// addresses are long).
pub(crate) fn listing(wrong: &[String]) -> String {
    const LINE_MAX: usize = 700;
    wrong
        .iter()
        .take(30)
        .map(|line| match line.char_indices().nth(LINE_MAX) {
            Some((cut, _)) => format!("{} ...", &line[..cut]),
            None => line.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The checkpoint files in the data directory.
pub(crate) fn checkpoint_files(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir().join("checkpoints")).map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".ckpt"))
            .count()
    })
}

/// A start with checkpoints on disk starts from one (and says so).
pub(crate) fn started_from_checkpoint(server: &Server, checkpoints: usize) -> Vec<String> {
    let said = server.output().contains("starting from a checkpoint");
    if checkpoints > 0 && !said {
        vec![format!(
            "{checkpoints} checkpoint(s) on disk, and the start did not start from one"
        )]
    } else {
        Vec::new()
    }
}

/// Removes the record `seq` and everything after it from the journal files.
pub(crate) fn cut_journal_at(server: &Server, seq: u64) {
    let mut cut = false;
    for segment in server.segments() {
        if cut {
            std::fs::remove_file(&segment).expect("remove segment");
            continue;
        }
        let bytes = std::fs::read(&segment).expect("read segment");
        if let Some(&(offset, ..)) = common::segment_frames(&bytes)
            .iter()
            .find(|&&(.., frame_seq)| frame_seq == seq)
        {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .expect("open segment");
            file.set_len(offset as u64).expect("cut segment");
            cut = true;
        }
    }
    assert!(cut, "no frame with seq {seq}");
}

pub(crate) fn signal(server: &Server, signal: libc::c_int) {
    if let Some(pid) = server.pid() {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// Waits until `ops` reaches `target` (or the phase's deadline passes: `false`).
pub(crate) async fn wait_ops(ops: &AtomicU64, target: u64, deadline: Instant) -> bool {
    while ops.load(Ordering::SeqCst) < target {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

pub(crate) async fn run(settings: Settings) {
    let seed = settings.seed;
    let _seed_guard = SeedOnPanic(seed);
    eprintln!(
        "crash_loop: seed {seed} kills {} (replay with CRASH_LOOP_SEED={seed})",
        settings.kills
    );
    let started = Instant::now();
    let mut rng = Rng::derive(seed, u64::MAX, 0);
    let mut env = vec![(
        "STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX".to_string(),
        "65536".to_string(),
    )];
    if settings.retention {
        // A pass every second deletes the closed segments older than a second that every
        // group is past, after a checkpoint covering them.
        env.push(("STAMPEDE_JOURNAL_RETAIN_S".to_string(), "1".to_string()));
        env.push((
            "STAMPEDE_JOURNAL_RETENTION_CHECK_S".to_string(),
            "1".to_string(),
        ));
    }
    let mut power_cut = settings.power_cut.map(|_| PowerCut::new());
    let mut cut_rng = CutRng(seed ^ 0x5eed_c0de);
    if let Some(cut) = &power_cut {
        env.extend(cut.env());
    }
    if settings.power_cut == Some("interval") {
        env.push((
            "STAMPEDE_JOURNAL_FSYNC_INTERVAL_MS".to_string(),
            FSYNC_INTERVAL_MS.to_string(),
        ));
    }
    let opts = Opts {
        env,
        ..Opts::default()
            .fsync(settings.power_cut.unwrap_or("always"))
            .shards(2)
    };
    let first_start = Instant::now();
    let mut server = Server::start(opts).await;
    for spec in &SKUS {
        let reply = server
            .put_sku(
                spec.name,
                &json!({"stock": spec.stock, "per_user_limit": spec.per_user_limit,
                    "max_per_order": spec.max_per_order, "payment_timeout_s": spec.payment_timeout_s}),
            )
            .await;
        assert_eq!(reply.status, 200, "PUT {}: {}", spec.name, reply.text);
    }
    let model = Arc::new(Mutex::new(Model {
        seed,
        groups: (0..GROUPS).map(|_| Register::default()).collect(),
        stock: SKUS
            .iter()
            .map(|s| Register {
                certain: Some(s.stock),
                base: Some(s.stock),
                sent_max: s.stock,
                ..Register::default()
            })
            .collect(),
        retention: settings.retention,
        ..Model::default()
    }));
    let mut auditor = Auditor {
        seed,
        http: http_client(AUDIT_TIMEOUT),
        fold: Fold::default(),
        figures: Figures {
            last_start: first_start.elapsed(),
            first_kept: 1,
            ..Figures::default()
        },
        retention: settings.retention,
        lag: 0,
        lag_next: 0,
        policy: settings.power_cut,
        durable_end: 0,
        journal_end: None,
        losses: Losses::default(),
    };
    auditor.pull(&server.base_url).await;
    // From the start a group is at 0, so nothing is deleted before the audit has read it.
    // With power cuts, at the SKUs' records: a commit syncs the journal first, so the setup
    // (which no client's answer stands for) is durable before the first cut.
    let start_lag = if settings.power_cut.is_some() {
        auditor.fold.last_seq()
    } else {
        0
    };
    auditor
        .commit_lag(&server.base_url, &model, start_lag)
        .await;

    for cycle in 0..settings.kills {
        model.lock().unwrap().cycle = cycle;
        let plan = Plan::draw(&mut rng, settings.retention);
        let stop = Arc::new(AtomicBool::new(false));
        let pace = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for task in 0..CLIENTS as u64 {
            let client = Client {
                task,
                cycle,
                base: server.base_url.clone(),
                token: server.admin_token.clone(),
                http: http_client(CLIENT_TIMEOUT),
                model: model.clone(),
                rng: Rng::derive(seed, cycle, task),
                made: 0,
            };
            tasks.push(tokio::spawn(client.run(
                stop.clone(),
                pace.clone(),
                ops.clone(),
            )));
        }

        let deadline = Instant::now() + PHASE_MAX;
        let mut in_time = true;
        let mut at_kill = AtKill::default();
        if let Some((stop_at, pause, kill_while_stopped, after_cont)) = plan.stop {
            in_time &= wait_ops(&ops, stop_at, deadline).await;
            signal(&server, libc::SIGSTOP);
            let stopped = Instant::now();
            auditor.figures.stops += 1;
            tokio::time::sleep(pause).await;
            // Killed while stopped: the pause lasts to the kill (`AtKill::age` clips it).
            at_kill.paused = Some((stopped, Instant::now() + JOIN_MAX));
            if kill_while_stopped {
                auditor.figures.killed_while_stopped += 1;
            } else {
                at_kill.paused = Some((stopped, Instant::now()));
                signal(&server, libc::SIGCONT);
                let target = ops.load(Ordering::SeqCst) + after_cont;
                in_time &= wait_ops(&ops, target, deadline).await;
            }
        } else {
            in_time &= wait_ops(&ops, plan.kill_after, deadline).await;
        }
        if !plan
            .stop
            .is_some_and(|(.., killed_while_stopped, _)| killed_while_stopped)
        {
            let phase_end = (deadline - PHASE_MAX + plan.min_phase).min(deadline);
            while Instant::now() < phase_end {
                if ops.load(Ordering::SeqCst) >= plan.kill_after + HELD_OPEN_OPS {
                    pace.store(true, Ordering::SeqCst);
                }
                let left = phase_end.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(5))).await;
            }
        }
        if !in_time {
            auditor.figures.phase_timeouts += 1;
        }
        server.send_sigkill();
        stop.store(true, Ordering::SeqCst);
        let killed_at = Instant::now();
        at_kill.at = Some(killed_at);
        auditor.figures.kills += 1;
        for task in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout(JOIN_MAX, task).await {
                Ok(joined) => joined.expect("client task"),
                Err(_) => {
                    abort.abort();
                    auditor.fail(format!("a client did not return within {JOIN_MAX:?}"));
                }
            }
        }
        server.kill9();
        let mut survived = None;
        if let Some(cut) = &mut power_cut {
            // What the files held at the kill, from the last durable seq on: what the cut
            // may take.
            let journal = server.journal_dir();
            (at_kill.newest_first, at_kill.records) = journal_after(&journal, auditor.durable_end);
            auditor
                .figures
                .note_cut(&cut.cut(&server.data_dir(), &mut cut_rng));
        }
        let mut engine_wrong = auditor.scan_log(&server);
        if settings.sabotage_after_kill == Some(cycle + 1) {
            // With power cuts: the newest order acknowledged before the last restart, which
            // survived a cut (durable); without: the last record the previous audit read.
            let seq = if power_cut.is_some() {
                let model = model.lock().unwrap();
                model
                    .orders
                    .iter()
                    .filter(|o| o.acked_at.is_some_and(|(c, _)| c < cycle))
                    .filter_map(|o| o.seq)
                    .filter(|&seq| seq <= auditor.durable_end)
                    .max()
                    .expect("an order acknowledged before the last restart")
            } else {
                auditor.fold.last_seq()
            };
            cut_journal_at(&server, seq);
        }
        if power_cut.is_some() {
            match surviving_end(&server.journal_dir(), auditor.durable_end) {
                Ok(end) => survived = Some(end),
                Err(problem) => engine_wrong.push(problem),
            }
        }
        for &thousandths in &plan.recovery_kills {
            let delay = auditor
                .figures
                .last_start
                .mul_f64(thousandths as f64 / 1000.0);
            match kill_during_start(&auditor, &mut server, delay).await {
                Landed::BeforeListening => auditor.figures.recovery_kills_before_listening += 1,
                Landed::NotReady => auditor.figures.recovery_kills_not_ready += 1,
                Landed::AfterReady => auditor.figures.recovery_kills_after_ready += 1,
            }
            if let Some(cut) = &mut power_cut {
                auditor
                    .figures
                    .note_cut(&cut.cut(&server.data_dir(), &mut cut_rng));
            }
            engine_wrong.extend(auditor.scan_log(&server));
        }
        // The starts killed after the first cut were cut too: the journal's end the start
        // below recovers to.
        let mut end_final = survived;
        if let Some(first) = survived
            && !plan.recovery_kills.is_empty()
        {
            end_final = None;
            match surviving_end(&server.journal_dir(), auditor.durable_end) {
                Ok(end) if end < first => engine_wrong.push(format!(
                    "the journal ended at seq {first} after the cut and at seq {end} after \
                     the starts killed since (their cuts must keep what the first left)"
                )),
                Ok(end) => end_final = Some(end),
                Err(problem) => engine_wrong.push(problem),
            }
        }
        let checkpoints = checkpoint_files(&server);
        let restarted = Instant::now();
        let restart = server.try_restart().await;
        auditor.figures.last_start = restarted.elapsed();
        if let Err(failure) = restart {
            auditor.fail(format!(
                "restart after kill {} failed: {} (status {:?})\n{}",
                cycle + 1,
                failure.reason,
                failure.status,
                failure.output
            ));
        }
        auditor.figures.restarts += 1;
        if server.output().contains("torn") {
            auditor.figures.torn_tails += 1;
        }
        let mut wrong = engine_wrong;
        wrong.extend(started_from_checkpoint(&server, checkpoints));
        if let Some(survived) = survived {
            wrong.extend(auditor.after_cut(&model, &at_kill, survived));
            auditor.journal_end = end_final;
            auditor.durable_end = end_final.unwrap_or(survived);
            if server
                .output()
                .contains("consumer group offset was past the journal's end")
            {
                wrong.push(
                    "the start lowered a consumer group's offset to the journal's end: an \
                     offset was committed ahead of the synced journal"
                        .to_string(),
                );
            }
        }
        wrong.extend(auditor.audit(&server, &model, &mut rng, false).await);
        auditor.journal_end = None;
        auditor.figures.violations += wrong.len() as u64;
        if !wrong.is_empty() {
            report(&auditor, &model, &server, started, settings.kills);
            auditor.fail(format!(
                "{} violation(s) after kill {} (plan {plan:?}):\n  {}",
                wrong.len(),
                cycle + 1,
                listing(&wrong)
            ));
        }
        if settings.verbose {
            eprintln!(
                "crash_loop: kill {} plan {plan:?}: {} client operations, journal at seq {}, \
                 {} segments, restart + audit {:.0} ms",
                cycle + 1,
                ops.load(Ordering::SeqCst),
                auditor.fold.last_seq(),
                server.segments().len(),
                killed_at.elapsed().as_secs_f64() * 1000.0
            );
        }
        if (cycle + 1) % 25 == 0 {
            eprintln!(
                "crash_loop: progress {} kills, {} orders, journal at seq {}, {:.1}s",
                cycle + 1,
                model.lock().unwrap().orders.len(),
                auditor.fold.last_seq(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    // The end: resolve every order still unanswered by retrying it, audit everything, stop
    // gracefully, restart, and audit everything once more.
    let unresolved: Vec<(usize, Value)> = {
        let model = model.lock().unwrap();
        model
            .orders
            .iter()
            .enumerate()
            .filter(|(_, o)| o.seq.is_none() && o.lost > 0)
            .map(|(i, o)| (i, o.body.clone()))
            .collect()
    };
    for (index, body) in unresolved {
        let answer = send(
            auditor
                .http
                .post(format!("{}/v1/orders", server.base_url))
                .json(&body),
        )
        .await;
        let mut model = model.lock().unwrap();
        judge_order_answer(&mut model, index, answer, "order.final_retry");
    }
    let mut wrong = auditor.audit(&server, &model, &mut rng, true).await;
    if settings.retention {
        // Retention deletes what no group needs: with the lagging group at the end of the
        // journal, every closed segment older than a second goes within a few passes, and
        // the audits after it (one after a graceful restart from the checkpoint) see the
        // orders whose first records are gone.
        let last = auditor.fold.last_seq();
        auditor.commit_lag(&server.base_url, &model, last).await;
        wrong.extend(auditor.await_retention(&server, &model).await);
        wrong.extend(auditor.audit(&server, &model, &mut rng, true).await);
    }
    auditor.figures.violations += wrong.len() as u64;
    if !wrong.is_empty() {
        report(&auditor, &model, &server, started, settings.kills);
        auditor.fail(format!(
            "{} violation(s) at the end:\n  {}",
            wrong.len(),
            listing(&wrong)
        ));
    }
    let status = server.terminate().await;
    if status.code() != Some(0) {
        auditor.fail(format!("SIGTERM at the end: exit {status}"));
    }
    let mut wrong = auditor.scan_log(&server);
    let checkpoints = checkpoint_files(&server);
    server.restart().await;
    auditor.figures.restarts += 1;
    wrong.extend(started_from_checkpoint(&server, checkpoints));
    wrong.extend(auditor.audit(&server, &model, &mut rng, true).await);
    wrong.extend(auditor.scan_log(&server));
    auditor.figures.violations += wrong.len() as u64;
    report(&auditor, &model, &server, started, settings.kills);
    if !wrong.is_empty() {
        auditor.fail(format!(
            "{} violation(s) after the final graceful restart:\n  {}",
            wrong.len(),
            listing(&wrong)
        ));
    }
}
