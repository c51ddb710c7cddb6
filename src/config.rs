//! Configuration: the embedded `config/default.toml`, overlaid by the operator's file, then by
//! command-line flags, then by `STAMPEDE_*` environment variables (the contract's order).
//! Everything is validated once here, at start-up, so the data path never re-checks a knob.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits;

/// The default configuration, compiled into the binary so that `stampede serve` runs with no
/// files around it. `config/default.toml` documents every key with its unit.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// When an accepted order counts as durable, and so when it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Acknowledge after `fdatasync` of the batch (group commit): survives power loss.
    Always,
    /// Acknowledge after `write`; a background thread runs `fdatasync` every
    /// `journal.fsync_interval_ms`. Survives a process crash; power loss may cost that window.
    Interval,
    /// Acknowledge after `write`; the OS flushes when it likes. Survives a process crash only.
    None,
}

impl FsyncPolicy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "always" => Some(Self::Always),
            "interval" => Some(Self::Interval),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    pub fsync: FsyncPolicy,
    pub preallocate: bool,
    pub fsync_interval_ms: u64,
    pub segment_bytes_max: u64,
    /// Seconds a closed segment is kept at least; 0 keeps the whole journal.
    pub retain_s: u64,
    /// Seconds between retention passes (checkpoint, then delete what is not needed).
    pub retention_check_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub body_bytes_max: usize,
    pub body_read_timeout_ms: u64,
    /// Load balancers whose `X-Forwarded-For` / `Forwarded` name the client (addresses or
    /// CIDR networks); from any other peer the headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub queue_capacity: usize,
    pub batch_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    pub skus_max: u32,
    pub orders_expected: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Queueing delay (runtime scheduling delay or shard backlog) past which a share of new
    /// work is shed, ms; 0 = off.
    pub queue_delay_target_ms: u64,
    /// Order and action requests admitted and not yet answered, across the server.
    pub in_flight_max: usize,
    /// Requests per second per client address; 0 = no limit.
    pub client_rate_per_s: u32,
    /// Orders per second per `user_id`; 0 = no limit.
    pub user_orders_per_s: u32,
    /// Keys (addresses, buyers) the rate limits track at once.
    pub rate_table_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// SKUs whose stock is exported; empty means the `sku_top` busiest.
    pub skus: Vec<String>,
    pub sku_top: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines with colours when stderr is a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `warn`, `stampede=debug,info`, ...
    pub level: String,
}

/// One SKU of the catalogue that the engine creates at start-up if the journal has no such
/// SKU yet. Once a SKU exists, the journal (and so the admin API) owns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueSku {
    pub sku: String,
    pub stock: u64,
    #[serde(default)]
    pub per_user_limit: u32,
    #[serde(default = "default_max_per_order")]
    pub max_per_order: u32,
    #[serde(default = "default_payment_timeout_s")]
    pub payment_timeout_s: u32,
}

pub fn default_max_per_order() -> u32 {
    10
}
pub fn default_payment_timeout_s() -> u32 {
    900
}

/// The `[review]` table: the order-review rules an engine starts with (a journaled `PUT
/// /v1/review/rules` replaces them, also across restarts) and the review timeout.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Hold an order whose address already has this many other buyers (0: off).
    pub address_buyers_max: u32,
    /// Hold a client's orders past this many in the last minute (0: off).
    pub client_orders_per_min: u32,
    /// Hold an order of at least this many units (0: off).
    pub qty_at_least: u32,
    pub review_users: Vec<String>,
    /// Refused outright with 403 `denied`.
    pub deny_users: Vec<String>,
    /// Seconds a held order waits for a reviewer before the engine rejects it (0: forever).
    pub timeout_s: u32,
}

impl ReviewConfig {
    pub fn rules(&self) -> crate::journal::ReviewRulesChanged {
        crate::journal::ReviewRulesChanged {
            address_buyers_max: self.address_buyers_max,
            client_orders_per_min: self.client_orders_per_min,
            qty_at_least: self.qty_at_least,
            review_users: self.review_users.clone(),
            deny_users: self.deny_users.clone(),
        }
    }
}

/// The `[orders]` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// Seconds after `deliver` that the engine completes an order the buyer did not (0: off).
    pub auto_complete_s: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Bearer token for committing and deleting consumer groups (the admin token works too).
    #[serde(default)]
    pub consumer_token: Option<String>,
    /// Absent means one shard per core.
    #[serde(default)]
    pub shards: Option<usize>,
    pub journal: JournalConfig,
    pub http: HttpConfig,
    pub shard: ShardConfig,
    pub inventory: InventoryConfig,
    pub admission: AdmissionConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    #[serde(default)]
    pub review: ReviewConfig,
    #[serde(default)]
    pub orders: OrdersConfig,
    #[serde(default)]
    pub catalogue: Vec<CatalogueSku>,
}

/// What the command line may override; `None` keeps the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}={value:?} is not a valid {expected}")]
    Env {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Environment overrides: variable, TOML path, and whether the value is a string or a number.
const ENV_OVERRIDES: &[(&str, &[&str], EnvKind)] = &[
    ("STAMPEDE_LISTEN", &["listen"], EnvKind::Text),
    ("STAMPEDE_DATA_DIR", &["data_dir"], EnvKind::Text),
    ("STAMPEDE_ADMIN_TOKEN", &["admin_token"], EnvKind::Text),
    (
        "STAMPEDE_CONSUMER_TOKEN",
        &["consumer_token"],
        EnvKind::Text,
    ),
    ("STAMPEDE_SHARDS", &["shards"], EnvKind::Integer),
    (
        "STAMPEDE_JOURNAL_FSYNC",
        &["journal", "fsync"],
        EnvKind::Text,
    ),
    (
        "STAMPEDE_JOURNAL_FSYNC_INTERVAL_MS",
        &["journal", "fsync_interval_ms"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_JOURNAL_SEGMENT_BYTES_MAX",
        &["journal", "segment_bytes_max"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_JOURNAL_PREALLOCATE",
        &["journal", "preallocate"],
        EnvKind::Boolean,
    ),
    (
        "STAMPEDE_JOURNAL_RETAIN_S",
        &["journal", "retain_s"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_JOURNAL_RETENTION_CHECK_S",
        &["journal", "retention_check_s"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_ADMISSION_QUEUE_DELAY_TARGET_MS",
        &["admission", "queue_delay_target_ms"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_ADMISSION_IN_FLIGHT_MAX",
        &["admission", "in_flight_max"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_ADMISSION_CLIENT_RATE_PER_S",
        &["admission", "client_rate_per_s"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_ADMISSION_USER_ORDERS_PER_S",
        &["admission", "user_orders_per_s"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_METRICS_ENABLED",
        &["metrics", "enabled"],
        EnvKind::Boolean,
    ),
    ("STAMPEDE_LOG_FORMAT", &["log", "format"], EnvKind::Text),
    ("STAMPEDE_LOG_LEVEL", &["log", "level"], EnvKind::Text),
    (
        "STAMPEDE_HTTP_BODY_BYTES_MAX",
        &["http", "body_bytes_max"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_HTTP_BODY_READ_TIMEOUT_MS",
        &["http", "body_read_timeout_ms"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_SHARD_QUEUE_CAPACITY",
        &["shard", "queue_capacity"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_REVIEW_TIMEOUT_S",
        &["review", "timeout_s"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_ORDERS_AUTO_COMPLETE_S",
        &["orders", "auto_complete_s"],
        EnvKind::Integer,
    ),
    (
        "STAMPEDE_SHARD_BATCH_MAX",
        &["shard", "batch_max"],
        EnvKind::Integer,
    ),
];

#[derive(Clone, Copy)]
enum EnvKind {
    Text,
    Integer,
    Boolean,
}

impl Config {
    /// Builds the configuration from the embedded default, the file named in `overrides`, the
    /// flags, and the process environment, in that order of precedence (last wins).
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(overrides, |name| std::env::var(name).ok())
    }

    /// As [`Config::load`], with the environment given as a function (tests use this).
    pub fn load_with_env(
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table = parse_table(DEFAULT_TOML, Path::new("<embedded config/default.toml>"))?;
        if let Some(path) = &overrides.config_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            merge(&mut table, parse_table(&text, path)?);
        }
        if let Some(listen) = overrides.listen {
            table.insert("listen".into(), toml::Value::String(listen.to_string()));
        }
        if let Some(dir) = &overrides.data_dir {
            table.insert(
                "data_dir".into(),
                toml::Value::String(dir.display().to_string()),
            );
        }
        for &(name, path, kind) in ENV_OVERRIDES {
            let Some(value) = env(name) else { continue };
            let value = match kind {
                EnvKind::Text => toml::Value::String(value),
                EnvKind::Integer => match value.trim().parse::<i64>() {
                    Ok(number) => toml::Value::Integer(number),
                    Err(_) => {
                        return Err(ConfigError::Env {
                            name,
                            value,
                            expected: "integer",
                        });
                    }
                },
                EnvKind::Boolean => match value.trim() {
                    "true" | "1" => toml::Value::Boolean(true),
                    "false" | "0" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError::Env {
                            name,
                            value,
                            expected: "boolean",
                        });
                    }
                },
            };
            set_path(&mut table, path, value);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The number of shards in force: the configured one, or one per core.
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// Every bound on the loaded values, checked in this order; the first one broken is the
    /// error.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if let Some(shards) = self.shards
            && !(1..=limits::SHARDS_MAX).contains(&shards)
        {
            return fail(format!(
                "shards must be 1..={}, got {shards}",
                limits::SHARDS_MAX
            ));
        }
        self.validate_journal()?;
        self.validate_admission()?;
        self.validate_observability()?;
        self.validate_http()?;
        self.validate_shard()?;
        self.validate_tokens()?;
        self.validate_review()?;
        Ok(())
    }

    /// The `[review]` and `[orders]` tables (each rule and list within its bound) and
    /// `http.trusted_proxies`.
    fn validate_review(&self) -> Result<(), ConfigError> {
        if self.http.trusted_proxies.len() > limits::TRUSTED_PROXIES_MAX {
            return Err(ConfigError::Invalid(format!(
                "http.trusted_proxies holds at most {} entries",
                limits::TRUSTED_PROXIES_MAX
            )));
        }
        for entry in &self.http.trusted_proxies {
            crate::http::forwarded::TrustedNet::parse(entry).map_err(|reason| {
                ConfigError::Invalid(format!("http.trusted_proxies: {reason}"))
            })?;
        }
        crate::order::review::validate_rules(&self.review.rules())
            .map_err(|reason| ConfigError::Invalid(format!("review: {reason}")))?;
        if self.review.timeout_s > limits::REVIEW_TIMEOUT_S_MAX {
            return Err(ConfigError::Invalid(format!(
                "review.timeout_s must be at most {}",
                limits::REVIEW_TIMEOUT_S_MAX
            )));
        }
        if self.orders.auto_complete_s > limits::AUTO_COMPLETE_S_MAX {
            return Err(ConfigError::Invalid(format!(
                "orders.auto_complete_s must be at most {}",
                limits::AUTO_COMPLETE_S_MAX
            )));
        }
        Ok(())
    }

    /// The `[journal]` table: segment size, fsync interval, retention check.
    fn validate_journal(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        let j = &self.journal;
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&j.segment_bytes_max) {
            return fail(format!(
                "journal.segment_bytes_max must be {}..={} bytes, got {}",
                limits::SEGMENT_BYTES_MIN,
                limits::SEGMENT_BYTES_MAX,
                j.segment_bytes_max
            ));
        }
        if j.fsync == FsyncPolicy::Interval && !(1..=60_000).contains(&j.fsync_interval_ms) {
            return fail(format!(
                "journal.fsync_interval_ms must be 1..=60000, got {}",
                j.fsync_interval_ms
            ));
        }
        if !(1..=86_400).contains(&j.retention_check_s) {
            return fail(format!(
                "journal.retention_check_s must be 1..=86400, got {}",
                j.retention_check_s
            ));
        }
        Ok(())
    }

    /// The `[admission]` table: queue-delay target, in-flight bound, rate-table size.
    fn validate_admission(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        let a = &self.admission;
        if a.queue_delay_target_ms > limits::QUEUE_DELAY_TARGET_MS_MAX {
            return fail(format!(
                "admission.queue_delay_target_ms must be 0..={} (0 = off), got {}",
                limits::QUEUE_DELAY_TARGET_MS_MAX,
                a.queue_delay_target_ms
            ));
        }
        if !(1..=limits::IN_FLIGHT_MAX).contains(&a.in_flight_max) {
            return fail(format!(
                "admission.in_flight_max must be 1..={}, got {}",
                limits::IN_FLIGHT_MAX,
                a.in_flight_max
            ));
        }
        if !(1..=limits::RATE_TABLE_MAX).contains(&a.rate_table_max) {
            return fail(format!(
                "admission.rate_table_max must be 1..={}, got {}",
                limits::RATE_TABLE_MAX,
                a.rate_table_max
            ));
        }
        Ok(())
    }

    /// `[metrics]` SKU series and `[log]` level.
    fn validate_observability(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if self.metrics.sku_top > limits::METRICS_SKUS_MAX
            || self.metrics.skus.len() > limits::METRICS_SKUS_MAX
        {
            return fail(format!(
                "metrics.sku_top and metrics.skus are bounded by {} SKUs (series cardinality)",
                limits::METRICS_SKUS_MAX
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return fail(format!(
                "log.level {:?} is not a valid filter (try \"info\" or \"stampede=debug,info\")",
                self.log.level
            ));
        }
        Ok(())
    }

    /// The `[http]` table: body read timeout and size.
    fn validate_http(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if !(100..=60_000).contains(&self.http.body_read_timeout_ms) {
            return fail(format!(
                "http.body_read_timeout_ms must be 100..=60000, got {}",
                self.http.body_read_timeout_ms
            ));
        }
        if !(1024..=limits::BODY_BYTES_MAX).contains(&self.http.body_bytes_max) {
            return fail(format!(
                "http.body_bytes_max must be 1024..={}, got {}",
                limits::BODY_BYTES_MAX,
                self.http.body_bytes_max
            ));
        }
        Ok(())
    }

    /// The `[shard]` queue and batch, and the `[inventory]` bounds.
    fn validate_shard(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if !(1..=limits::SHARD_QUEUE_MAX).contains(&self.shard.queue_capacity) {
            return fail(format!(
                "shard.queue_capacity must be 1..={}, got {}",
                limits::SHARD_QUEUE_MAX,
                self.shard.queue_capacity
            ));
        }
        if !(1..=limits::SHARD_BATCH_MAX).contains(&self.shard.batch_max) {
            return fail(format!(
                "shard.batch_max must be 1..={}, got {}",
                limits::SHARD_BATCH_MAX,
                self.shard.batch_max
            ));
        }
        if self.inventory.orders_expected > limits::ORDERS_EXPECTED_MAX {
            return fail(format!(
                "inventory.orders_expected must be at most {}, got {}",
                limits::ORDERS_EXPECTED_MAX,
                self.inventory.orders_expected
            ));
        }
        if !(1..=limits::SKUS_MAX).contains(&self.inventory.skus_max) {
            return fail(format!(
                "inventory.skus_max must be 1..={}, got {}",
                limits::SKUS_MAX,
                self.inventory.skus_max
            ));
        }
        Ok(())
    }

    /// The admin and consumer tokens, and every `[[catalogue]]` SKU's settings.
    fn validate_tokens(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if let Some(token) = &self.admin_token
            && token.trim().is_empty()
        {
            return fail("admin_token must not be empty".into());
        }
        if let Some(token) = &self.consumer_token
            && token.trim().is_empty()
        {
            return fail("consumer_token must not be empty".into());
        }
        for item in &self.catalogue {
            crate::order::validate_sku_settings(
                &item.sku,
                item.stock,
                item.per_user_limit,
                item.max_per_order,
                item.payment_timeout_s,
            )
            .map_err(|detail| ConfigError::Invalid(format!("catalogue: {detail}")))?;
        }
        Ok(())
    }
}

fn parse_table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// Overlays `top` on `base`: tables merge key by key, anything else (arrays included)
/// replaces, so an operator's `[[catalogue]]` replaces the demo catalogue entirely.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(top_table)) => {
                merge(base_table, top_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = path
        .split_last()
        .expect("env override paths are never empty");
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        current = entry.as_table_mut().expect("made a table just above");
    }
    current.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests;
