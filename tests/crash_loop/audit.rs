//! The audit after each restart: the run's figures, reading the journal (the fold reads on
//! from where it left off), the oldest record kept and the lagging group, the wait for
//! retention, the comparison of what was read before with what is there now, and the audit's
//! order of checks (`Auditor::audit`). The checks against the engine's views and the clients'
//! answers are in `checks`.
//!
//! Every request of the audit is bounded by `AUDIT_TIMEOUT`; one that fails fails the run.

use super::*;

/// Figures of the whole run.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) kills: u64,
    pub(crate) stops: u64,
    pub(crate) killed_while_stopped: u64,
    pub(crate) restarts: u64,
    pub(crate) torn_tails: u64,
    pub(crate) audits: u64,
    pub(crate) orders_read_back: u64,
    pub(crate) retries_after_restart: u64,
    pub(crate) doubt_journaled: u64,
    pub(crate) doubt_not_journaled: u64,
    pub(crate) actions_verified: u64,
    pub(crate) offsets_verified: u64,
    pub(crate) records_compared: u64,
    pub(crate) phase_timeouts: u64,
    /// Kills while the engine recovered (after its spawn, before `/readyz` said 200 to the
    /// harness), by where they landed: before the listening line, while `/readyz` said 503,
    /// and after `/readyz` said 200 (the drawn moment came after recovery).
    pub(crate) recovery_kills_before_listening: u64,
    pub(crate) recovery_kills_not_ready: u64,
    pub(crate) recovery_kills_after_ready: u64,
    /// How long the last start took, spawn to `/readyz` 200 (recovery kills draw their
    /// moment from it).
    pub(crate) last_start: Duration,
    /// From the engine's log, every incarnation: checkpoints written, starts from a
    /// checkpoint, segments deleted by retention, retention passes that failed.
    pub(crate) checkpoints: u64,
    pub(crate) checkpoint_starts: u64,
    pub(crate) segments_deleted: u64,
    pub(crate) retention_failures: u64,
    /// Orders whose exchange records were counted against the answers, summed over audits.
    pub(crate) exchanges_verified: u64,
    /// Checks that the records after the lagging group's offset are still there.
    pub(crate) lag_checks: u64,
    /// The oldest record still kept, as last seen.
    pub(crate) first_kept: u64,
    /// The engine's WARN and ERROR lines, by text with digits masked (every incarnation).
    pub(crate) log_lines: BTreeMap<String, u64>,
    pub(crate) violations: u64,
    /// Power cuts (`Settings::power_cut`), and what they undid, summed.
    pub(crate) power_cuts: u64,
    pub(crate) power_cut: CutReport,
}

impl Figures {
    pub(crate) fn note_cut(&mut self, cut: &CutReport) {
        self.power_cuts += 1;
        self.power_cut.files_cut += cut.files_cut;
        self.power_cut.bytes_dropped += cut.bytes_dropped;
        self.power_cut.torn_writes += cut.torn_writes;
        self.power_cut.names_undone += cut.names_undone;
    }
}

pub(crate) struct Auditor {
    pub(crate) seed: u64,
    pub(crate) http: reqwest::Client,
    pub(crate) fold: Fold,
    pub(crate) figures: Figures,
    /// The engine runs with checkpoints and retention.
    pub(crate) retention: bool,
    /// The lagging group's offset, as last committed (every commit is answered: the engine
    /// is quiet then).
    pub(crate) lag: u64,
    /// The journal's last seq at the previous audit: the lagging group's next offset.
    pub(crate) lag_next: u64,
    /// The fsync policy of a power-cut run (`None`: SIGKILLs only).
    pub(crate) policy: Option<&'static str>,
    /// The journal's end after the last cycle's cuts: durable from then on.
    pub(crate) durable_end: u64,
    /// After a cut, the end of the journal that survived it (offsets must be at or below).
    pub(crate) journal_end: Option<u64>,
    pub(crate) losses: Losses,
}

impl Auditor {
    /// Counts the WARN and ERROR lines of the incarnation that just ended; a panic in the
    /// engine is a violation whatever the clients saw.
    pub(crate) fn scan_log(&mut self, server: &Server) -> Vec<String> {
        let mut wrong = Vec::new();
        for line in server.lines() {
            if line.contains("panicked") {
                wrong.push(format!("the engine panicked: {line}"));
            }
            let figures = &mut self.figures;
            for (text, count) in [
                ("checkpoint written", &mut figures.checkpoints),
                ("starting from a checkpoint", &mut figures.checkpoint_starts),
                (
                    "retention deleted a journal segment",
                    &mut figures.segments_deleted,
                ),
                ("retention pass failed", &mut figures.retention_failures),
            ] {
                *count += u64::from(line.contains(text));
            }
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                let masked: String = line
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                let text = masked
                    .split_once(" WARN ")
                    .or_else(|| masked.split_once(" ERROR "))
                    .map_or(masked.as_str(), |(_, rest)| rest);
                *self.figures.log_lines.entry(text.to_string()).or_default() += 1;
            }
        }
        wrong
    }

    pub(crate) fn fail(&self, message: String) -> ! {
        panic!(
            "crash_loop failed (seed {seed}; replay with CRASH_LOOP_SEED={seed}): {message}",
            seed = self.seed
        );
    }

    pub(crate) async fn get(&self, base: &str, path: &str) -> Answer {
        match send(self.http.get(format!("{base}{path}"))).await {
            Ok(answer) => answer,
            Err(class) => self.fail(format!("audit GET {path}: {class}")),
        }
    }

    /// `GET /v1/journal` pages from `from` to the end.
    pub(crate) async fn read_journal(&self, base: &str, from: u64) -> Vec<Value> {
        let mut records = Vec::new();
        let mut from = from;
        loop {
            let page = self
                .get(base, &format!("/v1/journal?from={from}&limit=2000"))
                .await;
            if page.status == 410 {
                self.fail(format!(
                    "GET /v1/journal?from={from}: {}; the lagging group's offset is {}: \
                     retention deleted records a consumer group still needed",
                    page.text, self.lag
                ));
            }
            if page.status != 200 {
                self.fail(format!(
                    "GET /v1/journal?from={from}: {} {}",
                    page.status, page.text
                ));
            }
            let mut count = 0;
            for line in page.text.lines().filter(|l| !l.trim().is_empty()) {
                let record: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| self.fail(format!("journal line {line:?}: {e}")));
                from = record["seq"].as_u64().unwrap_or(from);
                records.push(record);
                count += 1;
            }
            if count < 2000 {
                return records;
            }
        }
    }

    /// Folds what the journal gained since the last read.
    pub(crate) async fn pull(&mut self, base: &str) {
        for record in self.read_journal(base, self.fold.last_seq()).await {
            self.fold.apply(record);
        }
    }

    /// The seq of the oldest record the journal still has (a page from 0 answers 410 naming
    /// it once retention deleted the first segment). The lagging group's records must all
    /// be there: the oldest kept is at most its offset + 1.
    pub(crate) async fn first_kept(&mut self, base: &str) -> Result<u64, String> {
        let page = self.get(base, "/v1/journal?from=0&limit=1").await;
        let first = match (page.status, page.code()) {
            (200, _) => 1,
            (410, "gone") => page.json["detail"]
                .as_str()
                .and_then(|d| d.split("the oldest kept is ").nth(1))
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok())
                .ok_or_else(|| format!("410 without the oldest kept seq: {}", page.text))?,
            _ => {
                return Err(format!(
                    "GET /v1/journal?from=0: {} {}",
                    page.status, page.text
                ));
            }
        };
        if first > 1 && !self.retention {
            return Err(format!(
                "records before seq {first} are gone and retention is off: {}",
                page.text
            ));
        }
        if first > self.lag + 1 {
            return Err(format!(
                "the oldest record kept is seq {first}; the lagging group (offset {}) needs \
                 every record after its offset",
                self.lag
            ));
        }
        if first < self.figures.first_kept {
            return Err(format!(
                "the oldest record kept is seq {first}; seq {} was the oldest before",
                self.figures.first_kept
            ));
        }
        self.figures.first_kept = first;
        Ok(first)
    }

    /// The records after the lagging group's offset are there (200, from its next seq).
    pub(crate) async fn check_lag_group(&mut self, base: &str) -> Vec<String> {
        let mut wrong = Vec::new();
        let answer = self
            .get(base, &format!("/v1/consumers/{LAG_GROUP}/offset"))
            .await;
        if answer.status != 200 || answer.json["seq"] != self.lag {
            wrong.push(format!(
                "{LAG_GROUP} was committed at {}; the engine says {} {}",
                self.lag, answer.status, answer.text
            ));
        }
        let page = self
            .get(base, &format!("/v1/journal?from={}&limit=1", self.lag))
            .await;
        let first = page.text.lines().next().and_then(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|r| r["seq"].as_u64())
        });
        self.figures.lag_checks += 1;
        if page.status != 200 || (self.lag < self.fold.last_seq() && first != Some(self.lag + 1)) {
            wrong.push(format!(
                "the records after {LAG_GROUP}'s offset {} are not all there: {} {}",
                self.lag, page.status, page.text
            ));
        }
        wrong
    }

    /// Commits the lagging group's offset (answered: the engine is quiet).
    pub(crate) async fn commit_lag(&mut self, base: &str, model: &Mutex<Model>, seq: u64) {
        let answer = send(
            self.http
                .put(format!("{base}/v1/consumers/{LAG_GROUP}/offset"))
                .bearer_auth(common::CONSUMER_TOKEN)
                .json(&json!({"seq": seq})),
        )
        .await
        .unwrap_or_else(|class| self.fail(format!("commit of {LAG_GROUP}: {class}")));
        if answer.status != 200 || answer.json["seq"] != seq {
            self.fail(format!(
                "commit of {LAG_GROUP} at {seq}: {} {}",
                answer.status, answer.text
            ));
        }
        self.lag = seq;
        let mut model = model.lock().unwrap();
        model.lag_floor = seq;
        model.max_seq_seen = model.max_seq_seen.max(self.fold.last_seq());
    }

    /// Waits (at most `RETENTION_WAIT`) until retention deleted every closed segment that
    /// was more than a second old and wholly at or before the lagging group's offset when
    /// the wait began.
    pub(crate) async fn await_retention(
        &mut self,
        server: &Server,
        model: &Mutex<Model>,
    ) -> Vec<String> {
        let started = Instant::now();
        // Every group's offset holds the records after it: the clients' groups too.
        let floor = model
            .lock()
            .unwrap()
            .groups
            .iter()
            .filter_map(|group| group.certain)
            .fold(self.lag, u64::min);
        let segments: Vec<(u64, std::time::SystemTime)> = server
            .segments()
            .iter()
            .filter_map(|path| {
                let first = path.file_stem()?.to_str()?.parse().ok()?;
                let modified = std::fs::metadata(path).ok()?.modified().ok()?;
                Some((first, modified))
            })
            .collect();
        let now = std::time::SystemTime::now();
        // The first seq of the segment after the last deletable one.
        let due = segments
            .windows(2)
            .take_while(|pair| {
                let old = now
                    .duration_since(pair[0].1)
                    .is_ok_and(|age| age >= Duration::from_secs(1));
                old && pair[1].0 - 1 <= floor
            })
            .last()
            .map(|pair| pair[1].0);
        let Some(due) = due else {
            return Vec::new();
        };
        loop {
            match self.first_kept(&server.base_url).await {
                Ok(first) if first >= due => return Vec::new(),
                Ok(_) => {}
                Err(problem) => return vec![problem],
            }
            if started.elapsed() >= RETENTION_WAIT {
                return vec![format!(
                    "retention kept the segments before seq {due} for {RETENTION_WAIT:?} \
                     (passes every second; the oldest kept is seq {}, every group is at or \
                     past {floor})",
                    self.figures.first_kept
                )];
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything read before is still there, unchanged (`full`: the whole journal, else the
    /// last 200 records), as far as retention kept it (`first_kept` on).
    pub(crate) async fn compare_prefix(
        &mut self,
        base: &str,
        full: bool,
        first_kept: u64,
    ) -> Vec<String> {
        let known = self.fold.last_seq();
        let from = if full { 0 } else { known.saturating_sub(200) };
        let from = from.max(first_kept - 1).min(known);
        let again = self.read_journal(base, from).await;
        let mut wrong = Vec::new();
        if (again.len() as u64) < known - from {
            wrong.push(format!(
                "the journal ends at seq {} after the restart; {known} records were read before",
                from + again.len() as u64
            ));
        }
        for (offset, record) in again.iter().enumerate() {
            let seq = from + offset as u64 + 1;
            if seq > known {
                break;
            }
            self.figures.records_compared += 1;
            if *record != self.fold.records[seq as usize - 1] {
                wrong.push(format!(
                    "journal seq {seq} changed across a restart: was {}, now {record}",
                    self.fold.records[seq as usize - 1]
                ));
                if wrong.len() > 5 {
                    break;
                }
            }
        }
        wrong
    }
}

impl Auditor {
    /// The audit after a restart (or at the end, `full`).
    pub(crate) async fn audit(
        &mut self,
        server: &Server,
        model: &Mutex<Model>,
        rng: &mut Rng,
        full: bool,
    ) -> Vec<String> {
        self.figures.audits += 1;
        let base = server.base_url.clone();
        let full_compare = full || self.figures.audits % 10 == 1 || self.fold.last_seq() < 3000;
        let mut wrong = Vec::new();
        let first_kept = self.first_kept(&base).await.unwrap_or_else(|problem| {
            wrong.push(problem);
            self.figures.first_kept
        });
        wrong.extend(self.check_lag_group(&base).await);
        wrong.extend(self.compare_prefix(&base, full_compare, first_kept).await);
        self.pull(&base).await;
        wrong.extend(self.check_skus(&base).await);

        // Orders to read back: those the clients touched, those the journal changed, a
        // sample of the rest (all at the end).
        let ids: Vec<String> = {
            let model = model.lock().unwrap();
            let mut ids: HashSet<String> = model
                .touched
                .iter()
                .map(|&i| model.orders[i].id.clone())
                .collect();
            ids.extend(std::mem::take(&mut self.fold.changed));
            if full {
                ids.extend(model.orders.iter().map(|o| o.id.clone()));
            } else if !model.orders.is_empty() {
                for _ in 0..20 {
                    let index = rng.below(model.orders.len() as u64) as usize;
                    ids.insert(model.orders[index].id.clone());
                }
            }
            let mut ids: Vec<String> = ids.into_iter().collect();
            ids.sort();
            ids
        };
        wrong.extend(self.check_orders(&base, ids).await);
        // Timers may have moved the journal during the reads above.
        self.pull(&base).await;
        let retries = {
            let mut model = model.lock().unwrap();
            wrong.extend(self.check_model(&mut model));
            let mut picked: Vec<usize> = std::mem::take(&mut model.acked_recently);
            if full {
                picked = (0..model.orders.len()).collect();
            } else if !model.orders.is_empty() {
                for _ in 0..10 {
                    picked.push(rng.below(model.orders.len() as u64) as usize);
                }
            }
            picked.sort_unstable();
            picked.dedup();
            model.touched.clear();
            picked
                .into_iter()
                .filter_map(|index| {
                    let order = &model.orders[index];
                    order.seq.map(|seq| {
                        (
                            order.id.clone(),
                            order.body.clone(),
                            order.expected_replay(seq),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        wrong.extend(self.check_retries(&base, retries).await);
        wrong.extend(self.check_offsets(&base, model).await);
        // The lagging group moves to where the previous audit ended: the records after it
        // (read by this audit) must stay until the next one; those before it may go.
        // Never past the journal's end: records an earlier audit read may be gone (a cut
        // within the policy's window, or a sabotage); the fold judges whether their loss was
        // allowed, and the engine would refuse a commit past its end.
        let lag = self.lag_next.max(self.lag).min(self.fold.last_seq());
        if lag >= self.lag {
            self.commit_lag(&base, model, lag).await;
        }
        self.lag_next = self.fold.last_seq();
        wrong.extend(std::mem::take(&mut self.fold.violations));
        let mut model = model.lock().unwrap();
        wrong.extend(std::mem::take(&mut model.violations));
        wrong
    }
}
