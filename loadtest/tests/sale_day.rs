//! The sale-day scenario against two real engines, each started in this process on a
//! loopback port with its own temporary data directory: a few seconds of order lifecycles
//! round robin over both, a consumer group on each journal, then the lifecycle audit (with
//! the short payment timeout's expiries), which must pass.

use std::sync::Arc;

use clap::Parser;
use stampede::config::{Config, Overrides};
use stampede::engine::Engine;
use stampede::http::{self, AppState};
use stampede_load::cli::Args;
use stampede_load::{saleday, scalpers};

const ADMIN_TOKEN: &str = "sale-day-admin-token-0123456789";
const CONSUMER_TOKEN: &str = "sale-day-consumer-token-0123456789";

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
        "STAMPEDE_CONSUMER_TOKEN" => Some(CONSUMER_TOKEN.into()),
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
async fn a_sale_day_over_two_engines_passes_the_lifecycle_audit() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_engine(&dir.path().join("a")).await;
    let second = start_engine(&dir.path().join("b")).await;
    let args = Args::try_parse_from([
        "stampede-load",
        "--scenario",
        "sale-day",
        "--url",
        &first.url,
        "--url",
        &second.url,
        "--admin-token",
        ADMIN_TOKEN,
        "--consumer-token",
        CONSUMER_TOKEN,
        "--connections",
        "8",
        "--duration",
        "2s",
        "--payment-timeout-s",
        "1",
        "--seed",
        "11",
    ])
    .unwrap();
    assert!(args.is_sale_day());
    let settings = args.sale_day_settings(&|_| None).unwrap();
    let summary = saleday::run(settings).await.expect("run completes");
    let report = saleday::render_text(&summary);
    assert!(summary.audit_passed, "{report}");
    assert_eq!(summary.exit_code, 0, "{report}");
    assert_eq!(summary.consumers.len(), 2, "{report}");
    assert!(summary.consumers.iter().all(|c| c.commits > 0), "{report}");
    let count = |class: &str| {
        summary
            .classes
            .iter()
            .find(|c| c.class == class)
            .map_or(0, |c| c.count)
    };
    for class in [
        "new_order",
        "pay",
        "cancel",
        "journal_page",
        "offset_commit",
    ] {
        assert!(count(class) > 0, "no {class}: {report}");
    }
    let expired = summary.orders_by_expected_status.get("expired").copied();
    assert!(expired.unwrap_or(0) > 0, "{report}");
    let page = saleday::render_html(&summary);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    for class in ["new_order", "pay", "offset_commit"] {
        assert!(
            page.contains(&format!("<td>{class}</td>")),
            "no row for {class}"
        );
    }
    // Self-contained: nothing is fetched from anywhere.
    for fetch in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!page.contains(fetch), "the report contains {fetch}");
    }
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["audit_passed"], true);

    for running in [first, second] {
        let _ = running.stop.send(());
        let _ = running.server.await;
        let engine = running.engine;
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .unwrap()
            .expect("journal syncs at shutdown");
    }
}

/// The scalpers scenario against an engine: one with order review has its rules checked; one
/// without it is reported as such and the run neither crashes nor fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scalpers_scenario_reports_an_engine_with_or_without_review() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_engine(&dir.path().join("data")).await;
    let args = Args::try_parse_from([
        "stampede-load",
        "--scenario",
        "scalpers",
        "--url",
        &running.url,
        "--admin-token",
        ADMIN_TOKEN,
    ])
    .unwrap();
    assert!(args.is_scalpers());
    let settings = args.scalpers_settings(&|_| None).unwrap();
    let summary = scalpers::run(settings).await.expect("run completes");
    let report = scalpers::render_text(&summary);
    if summary.review_supported {
        assert!(summary.passed, "{report}");
        assert_eq!(summary.checks.len(), 3, "{report}");
    } else {
        assert!(summary.checks.is_empty(), "{report}");
        assert!(summary.review_note.contains("no order review"), "{report}");
    }
    assert_eq!(summary.exit_code, 0, "{report}");
    assert_eq!(summary.answers.len(), 4, "{report}");
    assert!(scalpers::render_html(&summary).starts_with("<!DOCTYPE html>"));

    let _ = running.stop.send(());
    let _ = running.server.await;
    let engine = running.engine;
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap()
        .expect("journal syncs at shutdown");
}
