//! One short run against the real engine, started in this process on a loopback port with a
//! temporary data directory: a closed-model scenario that mixes every kind of request, then
//! the audit, which must pass. About two seconds of load.

use std::sync::Arc;

use clap::Parser;
use stampede::config::{Config, Overrides};
use stampede::engine::Engine;
use stampede::http::{self, AppState};
use stampede_load::cli::Args;
use stampede_load::report::{exit, html, text};

const ADMIN_TOKEN: &str = "end-to-end-admin-token-0123456789";

/// Small stock on the popular SKUs so they sell out mid-run; a per-user limit that the
/// abusers hit; retries, conflicts and double clicks so every outcome class shows up.
const SCENARIO: &str = r#"
name = "end-to-end-mix"
description = "every kind of request against a few SKUs, some of which sell out"

[[skus]]
prefix = "HOT"
count = 2
stock = 150
per_user_limit = 1
max_per_order = 1

[[skus]]
prefix = "TAIL"
count = 20
stock = 100000
per_user_limit = 2
max_per_order = 2

[traffic]
users = 50000
sku_zipf_exponent = 1.0
qty_max = 2
retry_rate = 0.10
conflict_rate = 0.05
duplicate_click_rate = 0.10
abuser_share = 0.10
abusers = 5

[traffic.payment]
prepaid = 0.7
cod = 0.3
"#;

struct RunningEngine {
    url: String,
    engine: Arc<Engine>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

/// Starts the engine as `stampede serve` does (see src/main.rs), on 127.0.0.1:0.
async fn start_engine(data_dir: &std::path::Path) -> RunningEngine {
    let overrides = Overrides {
        config_file: None,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir.to_path_buf()),
    };
    let config = Config::load_with_env(&overrides, |name| match name {
        "STAMPEDE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        "STAMPEDE_JOURNAL_FSYNC" => Some("none".into()),
        "STAMPEDE_SHARDS" => Some("2".into()),
        _ => None,
    })
    .expect("test config is valid");
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(AppState::new(
        config.http.body_bytes_max,
        std::time::Duration::from_millis(config.http.body_read_timeout_ms),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let start_config = config.clone();
    let (engine, _report) = tokio::task::spawn_blocking(move || Engine::start(&start_config))
        .await
        .unwrap()
        .expect("engine starts");
    engine
        .seed_catalogue(&config)
        .await
        .expect("catalogue seeds");
    state.set_engine(engine.clone());
    RunningEngine {
        url,
        engine,
        stop,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_run_against_the_real_engine_passes_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_engine(&dir.path().join("data")).await;
    let scenario_path = dir.path().join("mix.toml");
    std::fs::write(&scenario_path, SCENARIO).unwrap();

    let args = Args::try_parse_from([
        "stampede-load",
        "--scenario",
        scenario_path.to_str().unwrap(),
        "--url",
        &running.url,
        "--admin-token",
        ADMIN_TOKEN,
        "--model",
        "closed",
        "--connections",
        "16",
        "--warmup",
        "500ms",
        "--duration",
        "1500ms",
        "--ramp-up",
        "200ms",
        "--quiet",
        "--seed",
        "7",
        "--slo-error-rate",
        "0.01",
    ])
    .unwrap();
    let settings = args.settings_with_env(&|_| None).unwrap();
    let started = std::time::Instant::now();
    let summary = stampede_load::run::run(settings)
        .await
        .expect("run completes");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    let report = text::render(&summary);
    let audit = summary
        .audit
        .as_ref()
        .expect("the engine target is audited");
    assert!(audit.passed, "{report}");
    assert_eq!(summary.exit_code, exit::OK, "{report}");
    assert_eq!(audit.checks.len(), 7);
    assert!(audit.orders_created_seen > 0 && audit.orders_journaled >= audit.orders_created_seen);

    // Every kind of request met its expected answer at least once.
    let count = |key: &str| {
        summary
            .classes
            .iter()
            .find(|c| c.class == key)
            .unwrap()
            .count
    };
    assert!(count("created_201") > 0, "{report}");
    assert!(count("replayed_200") > 0, "{report}");
    assert!(count("refused_409") > 0, "{report}");
    assert!(count("unprocessable_422") > 0, "{report}");
    assert_eq!(count("transport_error"), 0, "{report}");
    for code in ["sold_out", "purchase_limit", "idempotency_conflict"] {
        assert!(summary.details.contains_key(code), "no {code}: {report}");
    }
    assert!(summary.totals.warmup > 0 && summary.totals.measured > 0);
    assert!(summary.timeline.len() >= 2);
    assert!(summary.answered.is_some());

    // The files a planner keeps.
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["audit"]["passed"], true);
    assert!(json["classes"][0]["latency"]["p99_us"].as_u64().is_some());
    let page = html::render_html(&summary);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(page.matches("<svg").count(), 3);
    // Self-contained: no script, stylesheet, image or font is fetched from anywhere.
    for fetch in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!page.contains(fetch), "the report contains {fetch}");
    }
    let without_own_names = page
        .replace(&running.url, "")
        .replace("http://www.w3.org/2000/svg", "");
    assert!(
        !without_own_names.contains("http"),
        "the report names another address"
    );

    let _ = running.stop.send(());
    let _ = running.server.await;
    let engine = running.engine;
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap()
        .expect("journal syncs at shutdown");
}
