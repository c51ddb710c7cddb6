//! Crash loop: the real binary (`fsync = "always"` unless a power-cut run sets another; 64
//! KiB journal segments, so segments rotate under load) under concurrent load from several
//! client tasks, SIGKILLed at seeded random moments (sometimes SIGSTOPped first for a short
//! pause, then SIGCONTed or killed while stopped), restarted on the same data directory, and audited after every restart and
//! at the end against the clients' log of answers and the journal. In about a third of the
//! cycles the restart is itself killed, once or twice, at a seeded moment between 0 and 1.3
//! times the last start's duration (spawn to `/readyz` 200) after the spawn: mostly while it
//! recovers (before its listening line, or while `/readyz` says 503), sometimes just after.
//! The start after that must pass the full audit.
//!
//! The load: new orders on a few hot SKUs with small stock and a `per_user_limit` (so
//! `sold_out` and `purchase_limit` refusals happen) and on one SKU whose payment timer is 2 s
//! (so `payment_reminder` and `expired` records happen, across restarts too), retries of
//! earlier orders (same body), retries with different content (must be 422
//! `idempotency_conflict`), `pay`/`cancel` on orders it created and now and then any other
//! action (refusals, replays), walks of orders along their life (payment, `verify` … `ship`,
//! sometimes `deliver` and `complete`, then up to two `exchange`s), exchanges on shipped,
//! delivered and completed orders (`{"sku": X}`, one unit of another run SKU: the hot ones run
//! out, so `sold_out` happens), restocks (`PUT /v1/skus/{sku}`) and consumer offset commits at
//! seqs it read from `GET /v1/journal`. Admission control's refusals (`overloaded`, 429 or
//! 503) are allowed everywhere and must decide nothing.
//!
//! Every answer is judged when it arrives (a wrong answer is a violation, a lost one makes
//! the request *uncertain*), and each audit checks:
//! 1. every order answered 201 (or 200 replayed) is in the journal exactly once with that
//!    seq, and every journaled order was sent by a client and was either acknowledged or had
//!    a lost answer (nothing is taken while the client was told it was not);
//! 2. no order id is journaled twice; the journal is contiguous, and every record read before
//!    a kill (by an audit or a client) is still there, unchanged, after it (with retention:
//!    those retention kept);
//! 3. for every SKU, at every point of the journal sold + reserved ≤ stock_total, and the
//!    engine's `GET /v1/skus/{sku}` equals the journal's fold (stock_total, available,
//!    reserved, sold, settings) with available + reserved + sold = stock_total; an exchange
//!    record sells one unit of the SKU it names and leaves the order's own SKU and the buyer's
//!    purchase count alone;
//! 4. per (user, SKU), the units held (accepted, not given back) never pass `per_user_limit`
//!    at any point of the journal;
//! 5. every action answered 200 has its record in the journal, every action record is a move
//!    the order's state allows (with the right `status` and `prev_seq`; only an exchange names
//!    a `sku`), and `GET /v1/orders/{id}` shows the status, history and exchange SKUs the
//!    journal's records say; exchanges repeat, so they are counted: per order and SKU, the
//!    exchange records are at least the exchanges answered 200 and at most those plus the
//!    ones whose answer was lost (journaled exactly when answered 200, refusals take nothing);
//! 6. every consumer group's offset is ≤ the journal's last seq and is the last committed
//!    value (or one whose commit was uncertain); every restock answered 200 is journaled;
//! 7. retries after a restart of orders answered 201 get 200, `Idempotent-Replayed: true`,
//!    and the original body (seq included);
//! 8. the lagging group (`crash-loop-lag`, committed by each audit where the previous audit's
//!    reading ended) is where it was committed, every record after its offset is served, and
//!    the oldest record kept is at most its offset + 1 (with retention off: seq 1); a start
//!    with checkpoint files on disk starts from one.
//!
//! An uncertain order may or may not be in the journal, but at most once; the audit after the
//! next restart resolves it from the journal, and retries resolve it for the engine.
//!
//! **Checkpoints and retention** run in their own test (fewer kills, longer phases), because
//! they change what can be checked: the engine keeps only the segments some group or the last
//! checkpoint still needs (`retain_s = 1`, a pass every second, a checkpoint before deleting),
//! so old records answer 410 and old orders show `history_complete: false`. The audit reads
//! the journal once, in order, and keeps what it read (the fold); it reads on from where it
//! left off, and the lagging group pins everything it has not read yet, so a 410 for any of
//! it (or for a page a client reads, always from the lagging offset on) is a violation. Order
//! views are compared on the records kept (those left out must be older than the oldest kept;
//! without the acceptance `user_id` and `payment` are null). Most phases are held open 0.6 to
//! 2.5 s so that passes run under load (past 1500 operations the clients are paced to one per
//! 3 to 10 ms each); at the end the lagging group moves to the journal's end and retention
//! must delete every segment that was closed for a second and that no group needs within 6 s,
//! before the last audits (one after a graceful restart from the checkpoint). The default run
//! keeps retention off, so its audits still compare the whole journal from seq 1.
//!
//! **Power cuts** (`Settings::power_cut`, one test per fsync policy, each without and with
//! checkpoints and retention): the engine runs with its test-only power-cut trace
//! (`stampede::durable`), and after every SIGKILL (during starts too) every file of its data
//! directory is cut back to a state a power cut could leave (`common::power_cut`). Before the
//! cut the loop reads what the journal files held (page cache included); after it, the
//! engine's own recovery scan gives the surviving end. With `always` the full audit must hold
//! after every cut. With `interval` and `none` an acknowledged record the cut took must lie in
//! the policy's window, and becomes uncertain (`power_cuts` states the rules). Under every
//! policy the engine starts after every cut, and everything else above still holds; a
//! consumer group's offset is at or below the surviving end, and no start clamps one.
//!
//! Default `cargo test`: 25 kills, 10 with retention, and 10 power cuts in each of the six
//! power-cut runs. Long runs: `CRASH_LOOP_KILLS=500 cargo test --release --test crash_loop
//! -- --nocapture` (the retention test then makes a third as many;
//! `CRASH_LOOP_RETENTION_KILLS` sets its own) or `scripts/crash_loop.sh [KILLS] [SEED]`;
//! power cuts: `POWER_CUT_KILLS=200 cargo test --release --test crash_loop power_cut --
//! --nocapture` or `scripts/power_cut.sh [CUTS] [POLICY] [SEED]`. `CRASH_LOOP_SEED` replays a
//! run's decisions (operations, kill and pause moments, pause lengths, kills during starts,
//! what each cut keeps); thread timing still varies between runs. The seed is printed at the
//! start and in every failure. `CRASH_LOOP_VERBOSE=1` prints one line per kill. The summary
//! (with `--nocapture`) gives kills (during starts too, by where they landed), pauses,
//! orders, exchanges, checkpoints written, starts from one and segments deleted (counted from
//! the engine's log), answers by class, the journal's records and segments, what the audits
//! compared, and for power cuts what the cuts undid and what they took.
//!
//! The modules: `model` (what the clients were told), `judge` (answers judged as they come),
//! `clients` (the load), `fold` (the journal folded with the engine's rules), `audit` and
//! `checks` (the audit after each restart), `power_cuts` (what a cut took), `run` (the plan
//! and the loop), `report` (the summary), `unit_tests` (the checker checks itself).
//!
//! Every wait is bounded (client requests 1 s, audit requests 10 s, a load phase 20 s, the
//! clients' return after a kill 10 s, a restart the harness's 15 s, a start to be killed its
//! drawn moment plus a 250 ms probe, the wait for retention 6 s); everything runs on
//! loopback; the engine is killed when the `Server` drops, a panic included.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod checks;
mod clients;
mod fold;
mod judge;
mod model;
mod power_cuts;
mod report;
mod run;
mod unit_tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::power_cut::{CutReport, CutRng, PowerCut};
use common::{Opts, Server};
use serde_json::{Value, json};

use audit::*;
use clients::*;
use fold::*;
use judge::*;
use model::*;
use power_cuts::*;
use report::*;
use run::*;

/// Kills in the default `cargo test` run.
const DEFAULT_KILLS: u64 = 25;
/// Kills in the default run with checkpoints and retention (its phases are longer).
const DEFAULT_RETENTION_KILLS: u64 = 10;
/// Power cuts in each default power-cut run (one per fsync policy, with and without
/// checkpoints and retention).
const DEFAULT_POWER_CUTS: u64 = 10;
/// Concurrent client tasks.
const CLIENTS: usize = 6;
/// Timeout of the clients' requests: a request to a stopped engine gives up after this.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Timeout of the audit's requests (the engine is quiet then).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one load phase may wait for its kill moment.
const PHASE_MAX: Duration = Duration::from_secs(20);
/// Longest the clients may take to notice a kill and return.
const JOIN_MAX: Duration = Duration::from_secs(10);
/// Operations a phase held open for retention passes runs at full speed (the load under
/// which a pass meets the most requests); past them the clients are paced, so that the
/// optimized build's clients' log stays small.
const HELD_OPEN_OPS: u64 = 1500;
/// Longest the end of a run with retention waits for retention to delete what no group
/// needs (a pass runs every second).
const RETENTION_WAIT: Duration = Duration::from_secs(6);
/// Consumer groups the clients commit for.
const GROUPS: usize = 4;
/// The group the audit commits for, one audit behind: retention must keep every record
/// after its offset.
const LAG_GROUP: &str = "crash-loop-lag";
/// Users a cycle draws from; the window slides by `USER_STEP` each cycle, so old users sit at
/// their limits and new ones keep buying.
const USER_WINDOW: u64 = 30;
const USER_STEP: u64 = 2;

#[derive(Debug)]
struct SkuSpec {
    name: &'static str,
    stock: u64,
    per_user_limit: u64,
    max_per_order: u64,
    payment_timeout_s: u64,
    /// Relative share of new orders.
    weight: u64,
}

impl SkuSpec {
    /// Pending orders of this SKU may expire during the run.
    fn has_timer(&self) -> bool {
        self.payment_timeout_s < 60
    }
}

const SKUS: [SkuSpec; 4] = [
    SkuSpec {
        name: "CL-HOT-1",
        stock: 24,
        per_user_limit: 2,
        max_per_order: 2,
        payment_timeout_s: 86_400,
        weight: 3,
    },
    SkuSpec {
        name: "CL-HOT-2",
        stock: 12,
        per_user_limit: 1,
        max_per_order: 1,
        payment_timeout_s: 86_400,
        weight: 3,
    },
    SkuSpec {
        name: "CL-TIMER",
        stock: 20,
        per_user_limit: 2,
        max_per_order: 2,
        payment_timeout_s: 2,
        weight: 2,
    },
    SkuSpec {
        name: "CL-ROOMY",
        stock: 100_000,
        per_user_limit: 4,
        max_per_order: 3,
        payment_timeout_s: 86_400,
        weight: 4,
    },
];

const PENDING: &str = "pending_payment";

/// SplitMix64: small, seedable, good enough to pick operations and moments.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        rng.next_u64();
        rng
    }

    /// An independent stream for (`a`, `b`), e.g. (cycle, task).
    fn derive(seed: u64, a: u64, b: u64) -> Self {
        Rng::new(
            seed ^ a.wrapping_mul(0xA076_1D64_78BD_642F) ^ b.wrapping_mul(0xE703_7ED1_A0B4_28DB),
        )
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_under_load_keeps_every_answer_true() {
    run(Settings::from_env()).await;
}

/// The same with checkpoints and retention: recovery starts from a checkpoint, and what the
/// audits have read may be deleted, but nothing a consumer group still needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_with_checkpoints_and_retention_keeps_every_answer_true() {
    run(Settings::retention_from_env()).await;
}

/// Power cuts: after every SIGKILL the data directory is cut back to what a power cut could
/// leave (`common::power_cut`). `POWER_CUT_KILLS` sets the number of cuts of each such test
/// (default `DEFAULT_POWER_CUTS`).
fn power_cut_settings(policy: &'static str, retention: bool) -> Settings {
    let mut settings = Settings::from_env();
    settings.power_cut = Some(policy);
    settings.retention = retention;
    settings.kills = std::env::var("POWER_CUT_KILLS")
        .ok()
        .map_or(DEFAULT_POWER_CUTS, |text| {
            text.trim().parse().expect("POWER_CUT_KILLS")
        });
    settings
}

/// With `fsync = "always"` the full audit must pass after every cut: nothing acknowledged is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_always_lose_nothing_acknowledged() {
    run(power_cut_settings("always", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_always_and_retention_lose_nothing_acknowledged() {
    run(power_cut_settings("always", true)).await;
}

/// With `fsync = "interval"` a cut may take what was acknowledged in the last interval (and
/// the slack), nothing older; the audit makes each such loss uncertain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_interval_lose_only_the_last_interval() {
    run(power_cut_settings("interval", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_interval_and_retention_lose_only_the_last_interval() {
    run(power_cut_settings("interval", true)).await;
}

/// With `fsync = "none"` a cut may take the current segment's unsynced tail, nothing in a
/// closed segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_none_lose_only_the_current_segment() {
    run(power_cut_settings("none", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_fsync_none_and_retention_lose_only_the_current_segment() {
    run(power_cut_settings("none", true)).await;
}

/// Runs `settings` (which must fail) on its own thread and runtime, so that the run's panic
/// (and the server's drop) happen there; returns the failure's message.
fn failing_run(settings: Settings) -> String {
    let failure = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(settings));
    })
    .join()
    .expect_err("a sabotaged run must fail");
    failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default()
}

/// The relaxed audit is not vacuous: with `interval` (losses allowed in the window) and with
/// `always`, a journal that lost an order acknowledged before the last restart (cut back
/// behind the engine's back after a power cut) fails the run.
#[test]
fn the_power_cut_audit_catches_a_lost_durable_order() {
    for policy in ["interval", "always"] {
        let mut settings = power_cut_settings(policy, false);
        settings.kills = 4;
        settings.seed = 11;
        settings.sabotage_after_kill = Some(3);
        let message = failing_run(settings);
        assert!(
            message.contains("violation(s) after kill 3") && message.contains("seed 11"),
            "{policy}: {message}"
        );
        let named = if policy == "always" {
            message.contains("is not in the journal") || message.contains("the journal ends at")
        } else {
            message.contains("had survived an earlier cut")
                && message.contains("is not in the journal")
        };
        assert!(named, "{policy}: the loss is named: {message}");
    }
}

/// The audit is not vacuous: a journal that lost records it had served (cut back behind the
/// engine's back between a kill and the restart) fails the run, naming what was lost.
#[test]
fn the_audit_catches_a_journal_that_lost_its_tail() {
    let settings = Settings {
        kills: 4,
        seed: 7,
        verbose: false,
        sabotage_after_kill: Some(3),
        retention: false,
        power_cut: None,
    };
    let message = failing_run(settings);
    assert!(
        message.contains("violation(s) after kill 3") && message.contains("seed 7"),
        "{message}"
    );
    assert!(
        message.contains("changed across a restart") || message.contains("the journal ends at"),
        "the lost records are named: {message}"
    );
}
