//! The summary of a run (printed with `--nocapture`, and before a failure).

use super::*;

pub(crate) fn report(
    auditor: &Auditor,
    model: &Mutex<Model>,
    server: &Server,
    started: Instant,
    kills: u64,
) {
    let model = model.lock().unwrap();
    let figures = &auditor.figures;
    let fold = &auditor.fold;
    let count = |prefix: &str| -> u64 {
        model
            .answers
            .iter()
            .filter(|(class, _)| class.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    };
    let lost_orders = model.orders.iter().filter(|o| o.lost > 0).count();
    let accepted = model.orders.iter().filter(|o| o.seq.is_some()).count();
    let segments = server.segments().len();
    // Offset commits cut short by a kill leave their temporary files behind.
    let consumer_files = std::fs::read_dir(server.data_dir().join("consumers"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let temporaries = consumer_files
        .iter()
        .filter(|name| name.ends_with(".tmp"))
        .count();
    eprintln!("crash_loop: ---- summary ----");
    if figures.power_cuts > 0 {
        let cut = &figures.power_cut;
        eprintln!(
            "crash_loop: power cuts {} (files cut {}, unsynced bytes dropped {}, writes kept \
             torn {}, directory changes undone {})",
            figures.power_cuts, cut.files_cut, cut.bytes_dropped, cut.torn_writes, cut.names_undone
        );
        let losses = &auditor.losses;
        eprintln!(
            "crash_loop: fsync {}: cuts that took records {} ({} records, at most {} in one \
             cut); acknowledged and taken: orders {}, actions {}, restocks {}; records read \
             and then taken {}; largest age of a taken acknowledgement at the kill {:?} \
             (window {}); torn tails repaired {}",
            auditor.policy.unwrap_or("-"),
            losses.cuts_with_loss,
            losses.records,
            losses.max_records,
            losses.orders,
            losses.actions,
            losses.restocks,
            losses.forgotten,
            losses.max_age,
            match auditor.policy {
                Some("interval") => format!("{FSYNC_INTERVAL_MS} ms + {LOSS_SLACK:?}"),
                Some("none") => "the current segment".to_string(),
                _ => "none: nothing acknowledged may be lost".to_string(),
            },
            figures.torn_tails
        );
    }
    eprintln!(
        "crash_loop: seed {} (CRASH_LOOP_SEED={})",
        auditor.seed, auditor.seed
    );
    eprintln!(
        "crash_loop: kills {} of {kills} (SIGSTOP first {}, killed while stopped {}), restarts {}, \
         torn tails repaired at start {}, load phases past their deadline {}",
        figures.kills,
        figures.stops,
        figures.killed_while_stopped,
        figures.restarts,
        figures.torn_tails,
        figures.phase_timeouts
    );
    eprintln!(
        "crash_loop: kills during a start {} (before the listening line {}, while /readyz \
         was not 200 {}, after recovery {})",
        figures.recovery_kills_before_listening
            + figures.recovery_kills_not_ready
            + figures.recovery_kills_after_ready,
        figures.recovery_kills_before_listening,
        figures.recovery_kills_not_ready,
        figures.recovery_kills_after_ready
    );
    eprintln!(
        "crash_loop: retention {}: checkpoints written {}, starts from a checkpoint {}, \
         segments deleted {}, failed passes {}, oldest record kept {}, {LAG_GROUP} at {} \
         (records after it checked {} times)",
        if auditor.retention { "on" } else { "off" },
        figures.checkpoints,
        figures.checkpoint_starts,
        figures.segments_deleted,
        figures.retention_failures,
        figures.first_kept,
        auditor.lag,
        figures.lag_checks
    );
    eprintln!(
        "crash_loop: exchanges: answered 200 {}, sold out {}, refused {}, lost {}; in the \
         journal {}; orders walked {}, exchange tallies checked {}",
        count("action.exchange 200"),
        count("action.exchange 409 sold_out"),
        count("action.exchange 409 invalid_transition"),
        count("action.exchange error"),
        fold.types.get("exchange").copied().unwrap_or(0),
        count("walk"),
        figures.exchanges_verified
    );
    eprintln!(
        "crash_loop: orders placed {}, accepted {accepted} (in the journal {}), with a lost \
         answer {lost_orders} (then found journaled {}, not journaled {})",
        model.orders.len(),
        fold.orders.len(),
        figures.doubt_journaled,
        figures.doubt_not_journaled
    );
    eprintln!(
        "crash_loop: requests: orders {}, retries {}, conflicting retries {}, actions {}, \
         journal pages {}, offset commits {}, restocks {}",
        count("order.new"),
        count("order.retry"),
        count("order.conflict"),
        count("action."),
        count("journal.page"),
        count("offset.commit"),
        count("sku.restock")
    );
    eprintln!("crash_loop: answers by class:");
    for (class, n) in &model.answers {
        eprintln!("crash_loop:   {class:<42} {n}");
    }
    eprintln!(
        "crash_loop: journal: {} records in {segments} segments, by type {:?}",
        fold.last_seq(),
        fold.types
    );
    eprintln!(
        "crash_loop: data dir: consumers/ holds {} files, {temporaries} of them temporary \
         files of offset commits a kill cut short",
        consumer_files.len()
    );
    eprintln!(
        "crash_loop: audits {}: orders read back {}, retries after restart {}, actions verified \
         {}, offsets verified {}, records compared across restarts {}",
        figures.audits,
        figures.orders_read_back,
        figures.retries_after_restart,
        figures.actions_verified,
        figures.offsets_verified,
        figures.records_compared
    );
    let stock: Vec<String> = fold
        .skus
        .iter()
        .filter(|(name, _)| name.starts_with("CL-"))
        .map(|(name, s)| {
            format!(
                "{name} total {} reserved {} sold {}",
                s.stock_total, s.reserved, s.sold
            )
        })
        .collect();
    eprintln!("crash_loop: stock at the end: {}", stock.join("; "));
    eprintln!("crash_loop: engine WARN/ERROR lines (digits masked):");
    for (line, n) in &figures.log_lines {
        eprintln!("crash_loop:   {n:>5} × {line}");
    }
    eprintln!(
        "crash_loop: violations {}; time {:.1}s",
        figures.violations,
        started.elapsed().as_secs_f64()
    );
}
