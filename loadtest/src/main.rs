//! `stampede-load`: command line → settings → runtime → run → reports → exit code.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use stampede_load::cli::Args;
use stampede_load::report::{exit, html, text};
use stampede_load::scenario::{BUNDLED, Scenario};

// The engine's allocator: the generator allocates a little per request (body, headers), and
// at 100k requests/s the system allocator is a measurable share of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(exit::USAGE),
            };
        }
    };
    if args.list_scenarios {
        for (name, source) in BUNDLED {
            let description = Scenario::parse(source, name)
                .map(|s| s.description)
                .unwrap_or_else(|e| e.to_string());
            println!("{name:<18} {description}");
        }
        println!(
            "{:<18} {}",
            stampede_load::saleday::NAME,
            stampede_load::saleday::DESCRIPTION
        );
        println!(
            "{:<18} {}",
            stampede_load::scalpers::NAME,
            stampede_load::scalpers::DESCRIPTION
        );
        return ExitCode::SUCCESS;
    }
    if args.is_sale_day() {
        return sale_day(&args);
    }
    if args.is_scalpers() {
        return scalpers(&args);
    }
    let threads = args.threads;
    let json_path = args.json.clone();
    let html_path = args.html.clone();
    let settings = match args.into_settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("stampede-load: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    // Opened now, so a bad path fails before the run rather than after it.
    let open = |path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| {
                std::fs::File::create(path)
                    .map_err(|error| format!("cannot write {}: {error}", path.display()))
            })
            .transpose()
    };
    let (json_file, html_file) = match (open(&json_path), open(&html_path)) {
        (Ok(json), Ok(html)) => (json, html),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("stampede-load: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("stampede-load: cannot start the async runtime: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let summary = match runtime.block_on(stampede_load::run::run(settings)) {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("stampede-load: {error:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    print!("{}", text::render(&summary));
    let _ = std::io::stdout().flush();
    // A file that cannot be written is reported, but a failed SLO or audit (exit 1 or 2) is the
    // run's result and outranks it; only a passing run turns into exit 3.
    let mut write_failed = false;
    if let Some(mut file) = json_file {
        let written = serde_json::to_writer_pretty(&mut file, &summary)
            .map_err(std::io::Error::other)
            .and_then(|()| file.write_all(b"\n"));
        if let Err(error) = written {
            eprintln!("stampede-load: cannot write the JSON summary: {error}");
            write_failed = true;
        }
    }
    if let Some(mut file) = html_file
        && let Err(error) = file.write_all(html::render_html(&summary).as_bytes())
    {
        eprintln!("stampede-load: cannot write the HTML report: {error}");
        write_failed = true;
    }
    ExitCode::from(exit_code_after_writes(summary.exit_code, write_failed))
}

/// `--scenario scalpers`: order review, its own reports.
fn scalpers(args: &Args) -> ExitCode {
    let settings = match args.scalpers_settings(&|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("stampede-load: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let Some(runtime) = runtime_for(args) else {
        return ExitCode::from(exit::USAGE);
    };
    let summary = match runtime.block_on(stampede_load::scalpers::run(settings)) {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("stampede-load: {error:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    print!("{}", stampede_load::scalpers::render_text(&summary));
    let _ = std::io::stdout().flush();
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n";
    let html = stampede_load::scalpers::render_html(&summary);
    let write_failed = write_reports(args, &json, &html);
    ExitCode::from(exit_code_after_writes(summary.exit_code, write_failed))
}

/// Writes `--json` and `--html` where asked; true when one could not be written.
fn write_reports(args: &Args, json: &str, html: &str) -> bool {
    let mut failed = false;
    for (path, text) in [(&args.json, json), (&args.html, html)] {
        if let Some(path) = path
            && let Err(error) = std::fs::write(path, text)
        {
            eprintln!("stampede-load: cannot write {}: {error}", path.display());
            failed = true;
        }
    }
    failed
}

fn runtime_for(args: &Args) -> Option<tokio::runtime::Runtime> {
    let mut builder = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = args.threads.filter(|&n| n > 1) {
        builder.worker_threads(n);
    }
    match builder.enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("stampede-load: cannot start the async runtime: {error}");
            None
        }
    }
}

/// `--scenario sale-day`: its own driver, audit and reports.
fn sale_day(args: &Args) -> ExitCode {
    let settings = match args.sale_day_settings(&|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("stampede-load: {error}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let Some(runtime) = runtime_for(args) else {
        return ExitCode::from(exit::USAGE);
    };
    let summary = match runtime.block_on(stampede_load::saleday::run(settings)) {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("stampede-load: {error:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    print!("{}", stampede_load::saleday::render_text(&summary));
    let _ = std::io::stdout().flush();
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n";
    let html = stampede_load::saleday::render_html(&summary);
    let write_failed = write_reports(args, &json, &html);
    ExitCode::from(exit_code_after_writes(summary.exit_code, write_failed))
}

/// The exit code once the report files are written: the run's own failure (1 or 2) is kept
/// when a file could not be written; a pass becomes a usage error (3).
fn exit_code_after_writes(run_exit: u8, write_failed: bool) -> u8 {
    if write_failed && run_exit == exit::OK {
        exit::USAGE
    } else {
        run_exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_a_failed_runs_exit_code() {
        assert_eq!(exit_code_after_writes(exit::OK, false), exit::OK);
        assert_eq!(exit_code_after_writes(exit::OK, true), exit::USAGE);
        assert_eq!(
            exit_code_after_writes(exit::SLO_FAILED, true),
            exit::SLO_FAILED
        );
        assert_eq!(
            exit_code_after_writes(exit::AUDIT_FAILED, true),
            exit::AUDIT_FAILED
        );
    }
}
