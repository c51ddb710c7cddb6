//! `stampede`: command line → config → runtime → run. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use stampede::api_client;
use stampede::config::{Config, Overrides};
use stampede::engine::Engine;
use stampede::http::{self, AppState};
use stampede::preflight;
use stampede::reconcile;
use stampede::tail;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stampede: the flash-sale order ingestion engine.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: HTTP API, shards, journal. Stops cleanly on SIGTERM or SIGINT.
    Serve {
        /// TOML file laid over the embedded config/default.toml.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Socket address to listen on (default 127.0.0.1:8080; port 0 picks a free one).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Folder for the journal, the inventory map and the tokens (default ./data).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// The big-event readiness check: config, data dir, lock, fsync, disk room, open files,
    /// listen port; then prepares the journal's room. Exits 0 only when ready (1: a check
    /// failed, 2: invalid config).
    Preflight {
        /// TOML file laid over the embedded config/default.toml (as for serve).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Socket address the engine will listen on.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Only check: write no journal room and no inventory map.
        #[arg(long)]
        no_prepare: bool,
        /// Print the report as one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print journal records as NDJSON, one a line, oldest first (the JSON of GET /v1/journal).
    Tail {
        /// The engine's data directory, read directly, engine running or not (default ./data).
        #[arg(long, value_name = "DIR", conflicts_with = "url")]
        data_dir: Option<PathBuf>,
        /// Read from a running engine over HTTP instead, e.g. http://127.0.0.1:8080.
        #[arg(long, value_name = "URL", value_parser = api_client::parse_url)]
        url: Option<api_client::Endpoint>,
        /// Print the records after this seq (when the group has no offset yet).
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from: u64,
        /// Keep waiting for new records until SIGINT/SIGTERM or stdout closes.
        #[arg(long)]
        follow: bool,
        /// Resume after this consumer group's offset, and commit it as lines are delivered.
        #[arg(long, value_name = "NAME", value_parser = tail::parse_group)]
        group: Option<String>,
        /// Print only records of these types (repeat it, or separate them with commas).
        #[arg(long = "type", value_name = "TYPE", value_delimiter = ',', value_parser = tail::parse_type)]
        types: Vec<String>,
        /// With --url and --group: the engine's consumer token (or its admin token), sent with
        /// each commit.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "STAMPEDE_CONSUMER_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// Read the token from this file instead (it wins over --token and the env), e.g. the
        /// engine's <DIR>/consumer.token.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Inventory tools for operators.
    Stock {
        #[command(subcommand)]
        command: StockCommand,
    },
}

#[derive(Subcommand)]
enum StockCommand {
    /// Compare the stock you expect (CSV sku,stock) with the engine's (--url) and the
    /// journal's (--data-dir; default ./data when neither is given) and print the
    /// differences. Exit 0: all match; 1: differences; 2: usage or I/O error.
    Reconcile {
        /// CSV `sku,stock` (optional header; the bulk-load CSV or NDJSON works too).
        #[arg(long, value_name = "FILE")]
        expected: PathBuf,
        /// A running engine to compare with, e.g. http://127.0.0.1:8080.
        #[arg(long, value_name = "URL", value_parser = api_client::parse_url)]
        url: Option<api_client::Endpoint>,
        /// The engine's data directory, whose journal is read directly (engine running or not).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => serve_command(Overrides {
            config_file: config,
            listen,
            data_dir,
        }),
        Command::Preflight {
            config,
            listen,
            data_dir,
            no_prepare,
            json,
        } => preflight_command(
            Overrides {
                config_file: config,
                listen,
                data_dir,
            },
            !no_prepare,
            json,
        ),
        Command::Tail {
            data_dir,
            url,
            from,
            follow,
            group,
            types,
            token,
            token_file,
        } => {
            let token = match read_token(token, token_file) {
                Ok(token) => token,
                Err(code) => return code,
            };
            let source = match url {
                Some(endpoint) => tail::Source::Url(endpoint),
                None => tail::Source::DataDir(data_dir.unwrap_or_else(|| PathBuf::from("data"))),
            };
            tail_command(tail::Options {
                source,
                from,
                follow,
                group,
                types,
                token,
            })
        }
        Command::Stock {
            command:
                StockCommand::Reconcile {
                    expected,
                    url,
                    data_dir,
                },
        } => reconcile_command(reconcile::Options {
            expected,
            url,
            data_dir,
        }),
    }
}

/// `stampede serve`: exit 2 for an invalid configuration, else the engine's run.
fn serve_command(overrides: Overrides) -> ExitCode {
    let config = match Config::load(&overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("stampede: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config.log);
    run_serve(config)
}

/// `stampede preflight`: the report on stdout, its verdict as the exit code.
fn preflight_command(overrides: Overrides, prepare: bool, json: bool) -> ExitCode {
    let options = preflight::Options { overrides, prepare };
    let report = preflight::run(&options);
    let text = if json {
        format!("{}\n", report.to_json())
    } else {
        report.to_table()
    };
    // A closed stdout must not turn the verdict into a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    ExitCode::from(report.exit_code())
}

/// `stampede tail`'s token: `--token-file` (trimmed, not empty) wins over `--token` and the
/// environment (a blank one is none). Exit 2 for a file that is empty or unreadable.
fn read_token(
    token: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<Option<String>, ExitCode> {
    match token_file {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
            Ok(_) => {
                eprintln!("stampede tail: token file {} is empty", path.display());
                Err(ExitCode::from(2))
            }
            Err(error) => {
                eprintln!("stampede tail: token file {}: {error}", path.display());
                Err(ExitCode::from(2))
            }
        },
        None => Ok(token.filter(|token| !token.trim().is_empty())),
    }
}

/// `stampede tail`: exit 1 on any error.
fn tail_command(options: tail::Options) -> ExitCode {
    match tail::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stampede tail: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `stampede stock reconcile`: 0 all match, 1 differences, 2 usage or I/O error.
fn reconcile_command(options: reconcile::Options) -> ExitCode {
    match reconcile::run(&options, &mut std::io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("stampede stock reconcile: {error}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr as `log.format` says; `STAMPEDE_LOG` (a filter), when set, wins over
/// `log.level`. Nothing is logged per order at `info`: only start-up, shutdown, failures,
/// segment rotations, checkpoints and retention.
fn init_tracing(log: &stampede::config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STAMPEDE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        stampede::config::LogFormat::Pretty => builder.init(),
        stampede::config::LogFormat::Json => builder.json().init(),
    }
}

fn run_serve(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("stampede: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    // Installed first, so a SIGTERM at any moment after this is a clean stop, never the
    // default action that kills the process mid-start.
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("stampede: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    match stampede::durable::init_trace_from_env() {
        Ok(None) => {}
        Ok(Some(trace)) => tracing::warn!(trace = %trace.display(),
            "test-only power-cut trace is on: every file operation is logged; never run a sale like this"),
        Err(error) => {
            eprintln!("stampede: {error}");
            return ExitCode::FAILURE;
        }
    }
    let listener = match http::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("stampede: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let address = listener.local_addr().expect("bound socket has an address");
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("stampede listening on http://{address}");
    let state = Arc::new(
        AppState::new(
            config.http.body_bytes_max,
            std::time::Duration::from_millis(config.http.body_read_timeout_ms),
        )
        .with_admission(&config.admission)
        .with_trusted_proxies(&config.http.trusted_proxies)
        .with_metrics(config.metrics.enabled),
    );
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, state.clone(), async {
        let _ = stop_receiver.await;
    }));

    let config = Arc::new(config);
    let starting = start_engine(config.clone());
    let engine = tokio::select! {
        started = starting => match started {
            Ok(engine) => engine,
            Err(code) => return code,
        },
        () = signals.recv() => {
            // Nothing was admitted yet. Recovery trims at most a torn tail and seeding writes
            // whole catalogue records; an exit in between leaves at worst a torn tail, which
            // the next start trims. Leaving now loses nothing acknowledged.
            tracing::info!("signal received during start-up; exiting before admitting orders");
            std::process::exit(0);
        }
    };
    state.set_engine(engine.clone());
    tracing::info!(%address, "ready");

    signals.recv().await;
    tracing::info!("signal received: draining");
    state.start_draining();
    let _ = stop_sender.send(());
    let _ = server.await;
    shut_down(engine).await
}

/// After the HTTP server stopped: the engine syncs its journal and stops; the journal's
/// totals are logged.
async fn shut_down(engine: Arc<Engine>) -> ExitCode {
    let journal = engine.journal().clone();
    let shutdown = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    let engine_stats = {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = journal.stats();
        let fsyncs = stats.fsyncs.load(Relaxed);
        let mean_us = stats.fsync_nanos_total.load(Relaxed) / fsyncs.max(1) / 1000;
        (
            stats.records.load(Relaxed),
            stats.writes.load(Relaxed),
            fsyncs,
            mean_us,
        )
    };
    match shutdown {
        Ok(Ok(())) => {
            let stats = engine_stats;
            tracing::info!(
                records = stats.0,
                writes = stats.1,
                fsyncs = stats.2,
                fsync_mean_us = stats.3,
                "journal synced; bye"
            );
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("stampede: journal could not be synced at shutdown: {error}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("stampede: shutdown panicked: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Recovery, shards and the demo catalogue (start-up steps of `Engine::start`).
async fn start_engine(config: Arc<Config>) -> Result<Arc<Engine>, ExitCode> {
    let start = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Engine::start(&config)).await
    };
    let engine = match start {
        Ok(Ok((engine, report))) => {
            if let Some((path, offset, dropped)) = &report.truncated {
                tracing::warn!(path = %path.display(), offset, dropped_bytes = dropped,
                    "journal had a torn tail; truncated");
            }
            if let Some(path) = &report.generated_token_file {
                tracing::info!(path = %path.display(), "generated an admin token (mode 0600)");
            }
            if let Some(path) = &report.generated_consumer_token_file {
                tracing::info!(path = %path.display(), "generated a consumer token (mode 0600)");
            }
            tracing::info!(records = report.records_replayed, checkpoint_seq = ?report.checkpoint_seq,
                segments = report.segments,
                skus = report.skus, orders = report.orders, shards = engine.shard_count(),
                fsync = ?config.journal.fsync, "recovered");
            engine
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "start-up failed");
            eprintln!("stampede: {error}");
            return Err(ExitCode::from(3));
        }
        Err(error) => {
            eprintln!("stampede: start-up panicked: {error}");
            return Err(ExitCode::FAILURE);
        }
    };
    if let Err(error) = engine.seed_catalogue(&config).await {
        eprintln!("stampede: {error}");
        return Err(ExitCode::from(3));
    }
    Ok(engine)
}

/// SIGTERM and SIGINT, the two ways an operator or orchestrator asks for a drain.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
