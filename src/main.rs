//! `stampede`: command line → config → runtime → run. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use stampede::config::{Config, Overrides};
use stampede::engine::Engine;
use stampede::http::{self, AppState};

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
        /// Folder for the journal, the inventory map and the admin token (default ./data).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let overrides = Overrides {
                config_file: config,
                listen,
                data_dir,
            };
            let config = match Config::load(&overrides) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("stampede: {error}");
                    return ExitCode::from(2);
                }
            };
            init_tracing();
            run_serve(config)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STAMPEDE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("stampede: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let address = listener.local_addr().expect("bound socket has an address");
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("stampede listening on http://{address}");
    let state = Arc::new(AppState::new(config.http.body_bytes_max));
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, state.clone(), async {
        let _ = stop_receiver.await;
    }));

    let config = Arc::new(config);
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
            tracing::info!(records = report.records_replayed, segments = report.segments,
                skus = report.skus, orders = report.orders, shards = engine.shard_count(),
                fsync = ?config.journal.fsync, "recovered");
            engine
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "start-up failed");
            eprintln!("stampede: {error}");
            return ExitCode::from(3);
        }
        Err(error) => {
            eprintln!("stampede: start-up panicked: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = engine.seed_catalogue(&config).await {
        eprintln!("stampede: {error}");
        return ExitCode::from(3);
    }
    state.set_engine(engine.clone());
    tracing::info!(%address, "ready");

    wait_for_signal().await;
    tracing::info!("signal received: draining");
    state.start_draining();
    let _ = stop_sender.send(());
    let _ = server.await;
    let shutdown = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    match shutdown {
        Ok(Ok(())) => {
            tracing::info!("journal synced; bye");
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
