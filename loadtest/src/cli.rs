//! The command line: what a capacity planner types, turned into [`RunSettings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::driver::{DrivePlan, LoadModel};
use crate::duration::parse_duration;
use crate::report::SloThresholds;
use crate::scenario::{self, CONNECTIONS_MAX, Model, Scenario};
use crate::schedule::OpenSchedule;

const LONG_ABOUT: &str = "\
stampede-load drives a Stampede engine (or, for comparison, a bare HTTP server or Redis) with
flash-sale traffic from a scenario, reports latency percentiles per outcome, and audits the
engine's stock and journal after the run.

LOAD MODELS
  open    Requests arrive on a fixed schedule at --rate per second, whether or not earlier
          ones have been answered: the way buyers arrive at a sale. Each request has an
          intended send time; its latency is measured from that time. A free connection
          takes the next due request; if every connection is busy, requests wait and that
          wait counts. Use it to ask \"at 20 000 orders/s, what do buyers see?\".
  closed  --connections clients each send a request, wait for the answer, and send the next
          one at once. Throughput is whatever the server sustains; latency is from the
          actual send. Use it to find the maximum throughput.

COORDINATED OMISSION
  A closed-model tool stops sending while the server stalls, so the stall shows up in a
  handful of slow requests instead of in every request that buyers would have sent during
  it: the percentiles look far better than what buyers saw. The open model avoids this by
  measuring from the intended send time (as wrk2 does). The report shows both figures for
  open runs: 'all answered (corrected)' from the schedule, and 'service time (uncorrected)'
  from the actual send. A large gap between them means the server (or the generator: see
  'generator send lag') fell behind.

RUN SHAPE
  --ramp-up grows the rate (open) or the number of busy connections (closed) linearly
  from zero. --warmup is run first and left out of the results. --duration is measured
  after it. Requests still in flight at the end are waited for (up to --timeout).

SETUP AND AUDIT (target engine)
  The scenario's SKUs are created with PUT /v1/skus/{sku}, named PREFIX-RUNID-N so that
  each run starts with fresh stock. This needs the admin token: --admin-token,
  --admin-token-file, $STAMPEDE_ADMIN_TOKEN, or ./data/admin.token, in that order. After
  the run the audit reads every SKU and the journal written during the run and checks
  that no SKU was oversold, that stock adds up, that every order answered 201 is
  journaled exactly once with the same seq, and that nothing was journaled twice.

EXIT CODES
  0  audit passed (or skipped) and every SLO given held
  1  an SLO failed (--slo-p99-ms, --slo-error-rate, ...)
  2  the audit failed
  3  usage or setup error (bad arguments or scenario, target unreachable, token refused)";

const EXAMPLES: &str = "\
EXAMPLES
  # List the bundled scenarios
  stampede-load --list-scenarios

  # The opening bell: 1000 units, a 5000-request burst, then 10 000 req/s
  stampede-load --scenario hot-sku --admin-token-file ./data/admin.token

  # A catalogue sale at a fixed 20 000 req/s for 60 s after 10 s of warm-up, with SLOs
  stampede-load -s catalogue-sale --model open --rate 20000 -c 256 -d 60s --warmup 10s \\
      --slo-p99-ms 50 --slo-error-rate 0.001 --json run.json --html run.html

  # Maximum throughput with 64 busy connections
  stampede-load -s throughput --model closed -c 64 -d 30s

  # Your own scenario file against another engine
  stampede-load -s ./my-sale.toml --url http://10.0.0.5:8080 --admin-token \"$TOKEN\"

  # A sale day over two nodes: lifecycles, a consumer group, the lifecycle audit
  stampede-load -s sale-day --url http://10.0.0.5:8080 --url http://10.0.0.6:8080 \\
      --admin-token-file admin.token --consumer-token-file consumer.token -d 60s --html day.html

  # The same traffic against Redis running the flash-sale Lua script
  stampede-load -s throughput --target redis --redis 127.0.0.1:6379";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A Stampede engine: SKUs set up through the admin API, audited afterwards.
    Engine,
    /// An HTTP server without admin API or journal (examples/bare_server): no setup, no audit.
    Bare,
    /// Redis with the flash-sale Lua script (SET NX dedup, stock check, DECRBY, XADD).
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// Fixed arrival rate (--rate); latency from each request's intended send time.
    Open,
    /// --connections clients sending back to back; latency from the actual send.
    Closed,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// Flash-sale load generator for Stampede: open and closed load, scenarios, audit.
#[derive(Debug, Parser)]
#[command(
    name = "stampede-load",
    version,
    // A flag given twice takes its last value, so scripts can append overrides.
    args_override_self = true,
    long_about = LONG_ABOUT,
    after_long_help = EXAMPLES,
    after_help = "Use --help for the load models, coordinated omission, exit codes and examples."
)]
pub struct Args {
    /// Scenario: a bundled name (see --list-scenarios) or the path of a TOML file.
    #[arg(
        short,
        long,
        value_name = "NAME|FILE",
        required_unless_present = "list_scenarios"
    )]
    pub scenario: Option<String>,

    /// Print the bundled scenarios and exit.
    #[arg(long)]
    pub list_scenarios: bool,

    /// What to load.
    #[arg(long, value_enum, default_value = "engine", help_heading = "Target")]
    pub target: TargetKind,

    /// Root URL of the engine or bare server. `--scenario sale-day` takes it several times
    /// (nodes behind a load balancer): requests go round robin over them.
    #[arg(long, default_value = "http://127.0.0.1:8080", help_heading = "Target")]
    pub url: Vec<String>,

    /// Address of the Redis server (with --target redis).
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:6379",
        help_heading = "Target"
    )]
    pub redis: String,

    /// The engine's admin token (for creating the scenario's SKUs).
    #[arg(long, value_name = "TOKEN", help_heading = "Target")]
    pub admin_token: Option<String>,

    /// File holding the admin token, such as DATA_DIR/admin.token of the engine.
    #[arg(long, value_name = "FILE", help_heading = "Target")]
    pub admin_token_file: Option<PathBuf>,

    /// The consumer token for `--scenario sale-day`'s journal consumer group (default:
    /// --consumer-token-file, $STAMPEDE_CONSUMER_TOKEN, ./data/consumer.token, else the admin
    /// token, which the engine also accepts for commits).
    #[arg(long, value_name = "TOKEN", help_heading = "Target")]
    pub consumer_token: Option<String>,

    /// File holding the consumer token, such as DATA_DIR/consumer.token of the engine.
    #[arg(long, value_name = "FILE", help_heading = "Target")]
    pub consumer_token_file: Option<PathBuf>,

    /// `--scenario sale-day`: the SKUs' payment timeout in seconds (orders left unpaid
    /// expire after it; the audit waits for them).
    #[arg(long, value_name = "S", default_value = "5", help_heading = "Load")]
    pub payment_timeout_s: u32,

    /// Load model (default: the scenario's, else closed).
    #[arg(long, value_enum, help_heading = "Load")]
    pub model: Option<ModelArg>,

    /// Open model: target arrival rate in requests per second.
    #[arg(long, value_name = "PER_S", help_heading = "Load")]
    pub rate: Option<f64>,

    /// Keep-alive connections (default: the scenario's, else 64). In the open model each
    /// connection has one request in flight, so rate × latency must stay below this.
    #[arg(short, long, help_heading = "Load")]
    pub connections: Option<usize>,

    /// Measured duration, after the warm-up (e.g. 30s, 2m; default: the scenario's, else 10s).
    #[arg(short, long, value_parser = duration_arg, help_heading = "Load")]
    pub duration: Option<Duration>,

    /// Run this long first and leave it out of the results (default: the scenario's, else 0).
    #[arg(long, value_parser = duration_arg, help_heading = "Load")]
    pub warmup: Option<Duration>,

    /// Grow the rate (open) or busy connections (closed) linearly over this time.
    #[arg(long, value_parser = duration_arg, help_heading = "Load")]
    pub ramp_up: Option<Duration>,

    /// Open model: requests all due at t = 0, before the steady rate (the opening bell).
    #[arg(long, help_heading = "Load")]
    pub burst: Option<u64>,

    /// Longest wait for one answer; a request past it is a transport error.
    #[arg(long, value_parser = duration_arg, default_value = "10s", help_heading = "Load")]
    pub timeout: Duration,

    /// Worker threads of the generator (default: one per core). 1 runs everything on one
    /// thread, like wrk -t1.
    #[arg(long, help_heading = "Load")]
    pub threads: Option<usize>,

    /// Seed of the traffic mix (default: random, printed in the JSON summary).
    #[arg(long, help_heading = "Load")]
    pub seed: Option<u64>,

    /// Run id: part of every order id and SKU name (default: random; 1-10 of a-z 0-9).
    #[arg(long, help_heading = "Load")]
    pub run_id: Option<String>,

    /// Write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE", help_heading = "Results")]
    pub json: Option<PathBuf>,

    /// Write a self-contained HTML report with charts to FILE.
    #[arg(long, value_name = "FILE", help_heading = "Results")]
    pub html: Option<PathBuf>,

    /// No progress line on stderr (it is also off when stderr is not a terminal).
    #[arg(short, long, help_heading = "Results")]
    pub quiet: bool,

    /// Skip the end-of-run audit.
    #[arg(long, help_heading = "Results")]
    pub no_audit: bool,

    /// How long the audit waits for answered orders to appear in the journal (they appear
    /// once durable; with fsync = "interval" that is up to one interval later).
    #[arg(long, value_parser = duration_arg, default_value = "10s", help_heading = "Results")]
    pub audit_wait: Duration,

    /// SLO: p50 latency of answered requests at most this many milliseconds.
    #[arg(long, value_name = "MS", help_heading = "SLO (exit 1 when one fails)")]
    pub slo_p50_ms: Option<f64>,

    /// SLO: p99 latency of answered requests at most this many milliseconds.
    #[arg(long, value_name = "MS", help_heading = "SLO (exit 1 when one fails)")]
    pub slo_p99_ms: Option<f64>,

    /// SLO: p99.9 latency of answered requests at most this many milliseconds.
    #[arg(long, value_name = "MS", help_heading = "SLO (exit 1 when one fails)")]
    pub slo_p999_ms: Option<f64>,

    /// SLO: share of errors (429/503, other HTTP errors, transport errors, requests due but
    /// never sent) at most this fraction, e.g. 0.001.
    #[arg(
        long,
        value_name = "FRACTION",
        help_heading = "SLO (exit 1 when one fails)"
    )]
    pub slo_error_rate: Option<f64>,

    /// SLO: measured goodput (non-error answers: 201, 200 replay, 409, 422) at least this many
    /// per second.
    #[arg(
        long,
        value_name = "PER_S",
        help_heading = "SLO (exit 1 when one fails)"
    )]
    pub slo_min_throughput: Option<f64>,
}

/// Where the orders go, with what setup needs.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    Engine { url: String, admin_token: String },
    Bare { url: String },
    Redis { addr: String },
}

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub scenario: Scenario,
    pub target: TargetSpec,
    pub drive: DrivePlan,
    pub burst: u64,
    pub seed: u64,
    pub run_id: String,
    pub audit: bool,
    pub audit_wait: Duration,
    pub slo: SloThresholds,
    pub progress: bool,
}

/// Where the admin token comes from, first found wins.
fn admin_token(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let from_file = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|error| {
                format!(
                    "cannot read the admin token file {}: {error}",
                    path.display()
                )
            })
    };
    let token = if let Some(token) = &args.admin_token {
        token.trim().to_owned()
    } else if let Some(path) = &args.admin_token_file {
        from_file(path)?
    } else if let Some(token) = env("STAMPEDE_ADMIN_TOKEN") {
        token.trim().to_owned()
    } else if std::path::Path::new("data/admin.token").exists() {
        from_file(std::path::Path::new("data/admin.token"))?
    } else {
        return Err(
            "the engine target needs the admin token to create the scenario's SKUs: \
             pass --admin-token or --admin-token-file (the engine writes <data-dir>/admin.token), \
             or set STAMPEDE_ADMIN_TOKEN"
                .into(),
        );
    };
    if token.is_empty() {
        return Err("the admin token is empty".into());
    }
    Ok(token)
}

impl Args {
    /// Resolves the scenario and every default; errors are usage errors (exit 3).
    pub fn into_settings(self) -> Result<RunSettings, String> {
        self.settings_with_env(&|name| std::env::var(name).ok())
    }

    pub fn settings_with_env(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RunSettings, String> {
        let name = self.scenario.as_deref().ok_or("--scenario is required")?;
        let url = self.single_url()?;
        let scenario = Scenario::resolve(name).map_err(|e| e.to_string())?;
        let defaults = &scenario.load;
        let model = match self.model {
            Some(ModelArg::Open) => Model::Open,
            Some(ModelArg::Closed) => Model::Closed,
            None => defaults.model.unwrap_or(Model::Closed),
        };
        let connections = self.connections.or(defaults.connections).unwrap_or(64);
        if !(1..=CONNECTIONS_MAX).contains(&connections) {
            return Err(format!(
                "--connections must be 1..={CONNECTIONS_MAX}, got {connections}"
            ));
        }
        let duration = self
            .duration
            .or(defaults.duration)
            .unwrap_or(Duration::from_secs(10));
        if duration.is_zero() {
            return Err("--duration must be longer than zero".into());
        }
        let warmup = self.warmup.or(defaults.warmup).unwrap_or(Duration::ZERO);
        let ramp_up = self.ramp_up.or(defaults.ramp_up).unwrap_or(Duration::ZERO);
        let burst = self.burst.or(defaults.burst).unwrap_or(0);
        if self.timeout.is_zero() {
            return Err("--timeout must be longer than zero".into());
        }
        let load_model = match model {
            Model::Open => {
                let rate = self.rate.or(defaults.rate).ok_or(
                    "the open model needs a rate: pass --rate (requests per second) or set load.rate in the scenario",
                )?;
                LoadModel::Open(OpenSchedule::new(rate, ramp_up, burst)?)
            }
            Model::Closed => {
                if self.rate.is_some() {
                    return Err("--rate applies to the open model; add --model open".into());
                }
                LoadModel::Closed
            }
        };
        if self.threads == Some(0) {
            return Err("--threads must be at least 1".into());
        }
        let run_id = self.run_id.clone().unwrap_or_else(random_run_id);
        scenario::check_run_id(&run_id)?;
        let target = match self.target {
            TargetKind::Engine => TargetSpec::Engine {
                url: url.clone(),
                admin_token: admin_token(&self, env)?,
            },
            TargetKind::Bare => TargetSpec::Bare { url: url.clone() },
            TargetKind::Redis => TargetSpec::Redis {
                addr: self.redis.clone(),
            },
        };
        for (flag, value) in [
            ("--slo-p50-ms", self.slo_p50_ms),
            ("--slo-p99-ms", self.slo_p99_ms),
            ("--slo-p999-ms", self.slo_p999_ms),
            ("--slo-min-throughput", self.slo_min_throughput),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(format!("{flag} must be a number >= 0"));
            }
        }
        if self
            .slo_error_rate
            .is_some_and(|v| !(0.0..=1.0).contains(&v))
        {
            return Err("--slo-error-rate is a fraction: 0.0..=1.0 (e.g. 0.001)".into());
        }
        Ok(RunSettings {
            scenario,
            target,
            drive: DrivePlan {
                model: load_model,
                connections,
                duration,
                warmup,
                ramp_up,
                timeout: self.timeout,
            },
            burst: if model == Model::Open { burst } else { 0 },
            seed: self.seed.unwrap_or_else(rand::random),
            run_id,
            audit: !self.no_audit,
            audit_wait: self.audit_wait,
            slo: SloThresholds {
                p50_ms: self.slo_p50_ms,
                p99_ms: self.slo_p99_ms,
                p999_ms: self.slo_p999_ms,
                error_rate: self.slo_error_rate,
                min_throughput: self.slo_min_throughput,
            },
            progress: !self.quiet,
        })
    }
}

impl Args {
    fn single_url(&self) -> Result<String, String> {
        match self.url.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err("--url is required".into()),
            _ => Err(format!(
                "several --url are taken by --scenario {} only",
                crate::saleday::NAME
            )),
        }
    }

    /// True when the run is the sale-day scenario (its own driver and audit).
    pub fn is_sale_day(&self) -> bool {
        self.scenario.as_deref() == Some(crate::saleday::NAME)
    }

    /// True when the run is the scalpers scenario (order review).
    pub fn is_scalpers(&self) -> bool {
        self.scenario.as_deref() == Some(crate::scalpers::NAME)
    }

    /// The scalpers scenario's settings (one URL, the admin token).
    pub fn scalpers_settings(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::scalpers::ScalpersSettings, String> {
        if self.target != TargetKind::Engine {
            return Err("--scenario scalpers drives an engine only (--target engine)".into());
        }
        let run_id = self.run_id.clone().unwrap_or_else(random_run_id);
        scenario::check_run_id(&run_id)?;
        Ok(crate::scalpers::ScalpersSettings {
            url: self.single_url()?,
            admin_token: admin_token(self, env)?,
            run_id,
            timeout: self.timeout,
        })
    }

    /// The sale-day scenario's settings; errors are usage errors (exit 3).
    pub fn sale_day_settings(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::saleday::SaleDaySettings, String> {
        if self.target != TargetKind::Engine {
            return Err("--scenario sale-day drives engines only (--target engine)".into());
        }
        if self.model == Some(ModelArg::Open) || self.rate.is_some() {
            return Err("--scenario sale-day runs closed: buyers act one after another".into());
        }
        if self.warmup.is_some() || self.ramp_up.is_some() || self.burst.is_some() {
            return Err(
                "--scenario sale-day measures its whole run: --warmup, --ramp-up and --burst \
                 do not apply"
                    .into(),
            );
        }
        let connections = self.connections.unwrap_or(32);
        if !(1..=CONNECTIONS_MAX).contains(&connections) {
            return Err(format!(
                "--connections must be 1..={CONNECTIONS_MAX}, got {connections}"
            ));
        }
        let duration = self.duration.unwrap_or(Duration::from_secs(60));
        if duration.is_zero() {
            return Err("--duration must be longer than zero".into());
        }
        if !(1..=3600).contains(&self.payment_timeout_s) {
            return Err("--payment-timeout-s must be 1..=3600".into());
        }
        let run_id = self.run_id.clone().unwrap_or_else(random_run_id);
        scenario::check_run_id(&run_id)?;
        let admin_token = admin_token(self, env)?;
        let from_file = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|error| format!("cannot read {}: {error}", path.display()))
        };
        let consumer_token = if let Some(token) = &self.consumer_token {
            token.trim().to_owned()
        } else if let Some(path) = &self.consumer_token_file {
            from_file(path)?
        } else if let Some(token) = env("STAMPEDE_CONSUMER_TOKEN") {
            token.trim().to_owned()
        } else if std::path::Path::new("data/consumer.token").exists() {
            from_file(std::path::Path::new("data/consumer.token"))?
        } else {
            admin_token.clone()
        };
        if self.url.is_empty() {
            return Err("--url is required".into());
        }
        Ok(crate::saleday::SaleDaySettings {
            urls: self.url.clone(),
            admin_token,
            consumer_token,
            run_id,
            seed: self.seed.unwrap_or_else(rand::random),
            duration,
            connections,
            timeout: self.timeout,
            payment_timeout_s: self.payment_timeout_s,
            hot_stock: 2_000,
            catalogue_skus: 200,
            catalogue_stock: 100_000,
            audit_wait: self.audit_wait,
        })
    }
}

/// Six characters of a-z 0-9.
pub fn random_run_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut value: u64 = rand::random();
    (0..6)
        .map(|_| {
            let c = ALPHABET[(value % 36) as usize] as char;
            value /= 36;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunSettings, String> {
        let mut full = vec!["stampede-load"];
        full.extend_from_slice(args);
        Args::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .settings_with_env(&|_| None)
    }

    #[test]
    fn the_scenario_proposes_and_the_command_line_decides() {
        let settings = parse(&["-s", "hot-sku", "--admin-token", "t0123456789abcdef"]).unwrap();
        assert_eq!(settings.drive.connections, 128);
        assert!(matches!(settings.drive.model, LoadModel::Open(s) if s.rate_per_s() == 10_000.0));
        assert_eq!(settings.burst, 5000);
        let settings = parse(&[
            "-s",
            "hot-sku",
            "--admin-token",
            "x",
            "--model",
            "closed",
            "-c",
            "8",
            "-d",
            "3s",
        ])
        .unwrap();
        assert_eq!(settings.drive.model, LoadModel::Closed);
        assert_eq!(settings.drive.connections, 8);
        assert_eq!(settings.drive.duration, Duration::from_secs(3));
        assert_eq!(settings.burst, 0);
    }

    #[test]
    fn several_urls_are_for_the_sale_day_and_its_consumer_token_falls_back() {
        let error = parse(&[
            "-s",
            "throughput",
            "--url",
            "http://a:1",
            "--url",
            "http://b:1",
            "--admin-token",
            "x",
        ])
        .unwrap_err();
        assert!(error.contains("sale-day"), "{error}");
        let args = Args::try_parse_from([
            "stampede-load",
            "-s",
            "sale-day",
            "--url",
            "http://a:1",
            "--url",
            "http://b:1",
            "--admin-token",
            "adm",
        ])
        .unwrap();
        assert!(args.is_sale_day());
        let settings = args.sale_day_settings(&|_| None).unwrap();
        assert_eq!(settings.urls, ["http://a:1", "http://b:1"]);
        assert_eq!(settings.consumer_token, "adm");
        let env = |name: &str| (name == "STAMPEDE_CONSUMER_TOKEN").then(|| "cons".to_owned());
        assert_eq!(args.sale_day_settings(&env).unwrap().consumer_token, "cons");
        let open = Args::try_parse_from([
            "stampede-load",
            "-s",
            "sale-day",
            "--model",
            "open",
            "--admin-token",
            "adm",
        ])
        .unwrap();
        assert!(open.sale_day_settings(&|_| None).is_err());
    }

    #[test]
    fn usage_errors_say_what_to_do() {
        let error =
            parse(&["-s", "throughput", "--model", "open", "--admin-token", "x"]).unwrap_err();
        assert!(error.contains("--rate"), "{error}");
        let error = parse(&["-s", "throughput", "--rate", "5", "--admin-token", "x"]).unwrap_err();
        assert!(error.contains("--model open"), "{error}");
        let error = parse(&["-s", "throughput"]).unwrap_err();
        assert!(error.contains("admin token"), "{error}");
        for extreme in [
            ["--rate", "1e-300", "--burst", "0"],
            ["--rate", "1e300", "--burst", "0"],
            ["--rate", "10", "--burst", "18446744073709551615"],
        ] {
            let mut argv = vec!["-s", "throughput", "--model", "open", "--target", "bare"];
            argv.extend_from_slice(&extreme);
            let error = parse(&argv).unwrap_err();
            assert!(error.contains("out of range"), "{extreme:?}: {error}");
        }
        let error = parse(&[
            "-s",
            "throughput",
            "--target",
            "bare",
            "--slo-error-rate",
            "5",
        ])
        .unwrap_err();
        assert!(error.contains("fraction"), "{error}");
        let error =
            parse(&["-s", "throughput", "--target", "bare", "--run-id", "BAD"]).unwrap_err();
        assert!(error.contains("run id"), "{error}");
    }

    #[test]
    fn the_admin_token_comes_from_the_flag_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, "from-file\n").unwrap();
        let args = |extra: &[&str]| {
            let mut full = vec!["stampede-load", "-s", "throughput"];
            full.extend_from_slice(extra);
            Args::try_parse_from(full).unwrap()
        };
        let env = |name: &str| (name == "STAMPEDE_ADMIN_TOKEN").then(|| "from-env".to_owned());
        let token = |settings: RunSettings| match settings.target {
            TargetSpec::Engine { admin_token, .. } => admin_token,
            other => panic!("{other:?}"),
        };
        let path = file.to_str().unwrap();
        assert_eq!(
            token(
                args(&["--admin-token", "flag"])
                    .settings_with_env(&env)
                    .unwrap()
            ),
            "flag"
        );
        assert_eq!(
            token(
                args(&["--admin-token-file", path])
                    .settings_with_env(&env)
                    .unwrap()
            ),
            "from-file"
        );
        assert_eq!(
            token(args(&[]).settings_with_env(&env).unwrap()),
            "from-env"
        );
    }

    #[test]
    fn the_help_teaches_the_models_and_coordinated_omission() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for needle in [
            "open",
            "closed",
            "COORDINATED OMISSION",
            "EXAMPLES",
            "EXIT CODES",
            "--slo-p99-ms",
        ] {
            assert!(help.contains(needle), "help lacks {needle}");
        }
    }

    #[test]
    fn run_ids_are_valid() {
        for _ in 0..100 {
            assert!(scenario::check_run_id(&random_run_id()).is_ok());
        }
    }
}
