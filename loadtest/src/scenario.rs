//! Scenarios: TOML files that say which SKUs a run creates and what its buyers do.
//!
//! The bundled ones live in `loadtest/scenarios/` and are compiled in, so `--scenario
//! hot-sku` works from any folder; any other path is read from disk. Every field is checked
//! here, before a request is sent, and each error names the file and the field:
//!
//! ```toml
//! name = "hot-sku"
//! [load]                      # defaults for the command line's --model, --rate, ...
//! model = "open"              # "open" (arrival rate) or "closed" (busy connections)
//! rate = 10000                # open model: requests per second after the ramp-up
//! connections = 128
//! duration = "10s"            # measured time, after the warm-up
//! warmup = "0s"               # excluded from the results
//! ramp_up = "0s"              # rate (open) or connections (closed) grow linearly
//! burst = 5000                # open model: requests all due at t = 0
//! [[skus]]                    # SKUs created through the admin API, per run
//! prefix = "HOT"              # name = PREFIX-RUNID-INDEX
//! count = 1
//! stock = 1000
//! per_user_limit = 1          # 0 = no limit
//! max_per_order = 1
//! [traffic]
//! users = 1000000             # distinct buyers, drawn uniformly
//! sku_zipf_exponent = 0.0     # SKU choice: 0 = uniform, ~1 = a few SKUs take most orders
//! qty_max = 1                 # qty drawn from 1..=min(qty_max, the SKU's max_per_order)
//! retry_rate = 0.0            # share of requests that resend an earlier order unchanged
//! conflict_rate = 0.0         # share that reuse an accepted order_id with other content
//! duplicate_click_rate = 0.0  # share of new orders sent twice at once on two connections
//! abuser_share = 0.0          # share of new orders placed by one of `abusers` accounts
//! abusers = 0
//! [traffic.payment]           # relative weights
//! prepaid = 1.0
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::parse_duration;

/// The scenarios shipped in `loadtest/scenarios/`, by name.
pub const BUNDLED: &[(&str, &str)] = &[
    ("hot-sku", include_str!("../scenarios/hot-sku.toml")),
    (
        "catalogue-sale",
        include_str!("../scenarios/catalogue-sale.toml"),
    ),
    ("retries", include_str!("../scenarios/retries.toml")),
    (
        "duplicate-clicks",
        include_str!("../scenarios/duplicate-clicks.toml"),
    ),
    (
        "limit-abusers",
        include_str!("../scenarios/limit-abusers.toml"),
    ),
    ("throughput", include_str!("../scenarios/throughput.toml")),
];

/// Most SKUs one scenario may create: the engine's default `inventory.skus_max`.
pub const SKUS_MAX: u64 = 65_536;
/// Longest run id: with a prefix of `PREFIX_BYTES_MAX` and a 5-digit index, a SKU name
/// stays within the engine's 32 bytes.
pub const RUN_ID_BYTES_MAX: usize = 10;
pub const PREFIX_BYTES_MAX: usize = 12;
/// Most connections: the engine's own connection limit (`http::CONNECTIONS_MAX`).
pub const CONNECTIONS_MAX: usize = 10_000;
/// Most distinct buyers (ids stay short).
pub const USERS_MAX: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, thiserror::Error)]
#[error("scenario {origin}: {message}")]
pub struct ScenarioError {
    pub origin: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    Open,
    Closed,
}

/// A scenario as written in its file (durations still text), then checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    load: LoadFile,
    skus: Vec<SkuGroup>,
    #[serde(default)]
    traffic: Traffic,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadFile {
    model: Option<Model>,
    rate: Option<f64>,
    connections: Option<usize>,
    duration: Option<String>,
    warmup: Option<String>,
    ramp_up: Option<String>,
    burst: Option<u64>,
}

/// Load settings a scenario proposes; the command line overrides each one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadDefaults {
    pub model: Option<Model>,
    pub rate: Option<f64>,
    pub connections: Option<usize>,
    pub duration: Option<Duration>,
    pub warmup: Option<Duration>,
    pub ramp_up: Option<Duration>,
    pub burst: Option<u64>,
}

/// `count` SKUs with the same settings, named `PREFIX-RUNID-INDEX`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkuGroup {
    pub prefix: String,
    #[serde(default = "one")]
    pub count: u64,
    pub stock: u64,
    #[serde(default)]
    pub per_user_limit: u32,
    #[serde(default = "one_u32")]
    pub max_per_order: u32,
    /// Long by default, so that no order of the run expires while it is audited.
    #[serde(default = "day_s")]
    pub payment_timeout_s: u32,
}

fn one() -> u64 {
    1
}
fn one_u32() -> u32 {
    1
}
fn day_s() -> u32 {
    86_400
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    pub users: u64,
    pub sku_zipf_exponent: f64,
    pub qty_max: u32,
    pub retry_rate: f64,
    pub conflict_rate: f64,
    pub duplicate_click_rate: f64,
    pub abuser_share: f64,
    pub abusers: u64,
    pub payment: PaymentMix,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            users: 100_000,
            sku_zipf_exponent: 0.0,
            qty_max: 1,
            retry_rate: 0.0,
            conflict_rate: 0.0,
            duplicate_click_rate: 0.0,
            abuser_share: 0.0,
            abusers: 0,
            payment: PaymentMix::default(),
        }
    }
}

/// Relative weights of the payment types.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentMix {
    pub prepaid: f64,
    pub escrow: f64,
    pub cod: f64,
}

impl Default for PaymentMix {
    fn default() -> Self {
        Self {
            prepaid: 1.0,
            escrow: 0.0,
            cod: 0.0,
        }
    }
}

/// One SKU of a run, with its final name.
#[derive(Debug, Clone, PartialEq)]
pub struct SkuSpec {
    pub name: String,
    pub stock: u64,
    pub per_user_limit: u32,
    pub max_per_order: u32,
    pub payment_timeout_s: u32,
}

/// A checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub load: LoadDefaults,
    pub skus: Vec<SkuGroup>,
    pub traffic: Traffic,
}

impl Scenario {
    /// A bundled scenario by name, or else a TOML file at that path.
    pub fn resolve(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((name, text)) = BUNDLED.iter().find(|(name, _)| *name == name_or_path) {
            return Self::parse(text, &format!("{name} (bundled)"));
        }
        let path = Path::new(name_or_path);
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(error) => Err(ScenarioError {
                origin: name_or_path.into(),
                message: format!(
                    "not a bundled scenario ({}) and cannot read it as a file: {error}",
                    bundled_names().join(", ")
                ),
            }),
        }
    }

    /// Parses and checks scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let fail = |message: String| ScenarioError {
            origin: origin.into(),
            message,
        };
        let file: ScenarioFile =
            toml::from_str(text).map_err(|error| fail(error.to_string().trim_end().into()))?;
        let duration = |field: &str, value: &Option<String>| -> Result<_, ScenarioError> {
            value
                .as_deref()
                .map(|text| parse_duration(text).map_err(|e| fail(format!("load.{field}: {e}"))))
                .transpose()
        };
        let load = LoadDefaults {
            model: file.load.model,
            rate: file.load.rate,
            connections: file.load.connections,
            duration: duration("duration", &file.load.duration)?,
            warmup: duration("warmup", &file.load.warmup)?,
            ramp_up: duration("ramp_up", &file.load.ramp_up)?,
            burst: file.load.burst,
        };
        let scenario = Scenario {
            name: file.name,
            description: file.description,
            load,
            skus: file.skus,
            traffic: file.traffic,
        };
        scenario.check().map_err(fail)?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if let Some(rate) = self.load.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("load.rate must be a positive number, got {rate}"));
        }
        if let Some(connections) = self.load.connections
            && !(1..=CONNECTIONS_MAX).contains(&connections)
        {
            return Err(format!(
                "load.connections must be 1..={CONNECTIONS_MAX}, got {connections}"
            ));
        }
        if self.load.duration == Some(Duration::ZERO) {
            return Err("load.duration must be longer than zero".into());
        }
        if self.skus.is_empty() {
            return Err("at least one [[skus]] group is needed".into());
        }
        let mut total: u64 = 0;
        for (index, group) in self.skus.iter().enumerate() {
            let at = |message: String| format!("skus[{index}] ({}): {message}", group.prefix);
            if group.prefix.is_empty() || group.prefix.len() > PREFIX_BYTES_MAX {
                return Err(at(format!("prefix must be 1..={PREFIX_BYTES_MAX} bytes")));
            }
            if group.count == 0 {
                return Err(at("count must be at least 1".into()));
            }
            total = total.saturating_add(group.count);
            if self.skus[..index].iter().any(|g| g.prefix == group.prefix) {
                return Err(at("prefix is used by an earlier group".into()));
            }
            // The longest name this group will produce, checked by the engine's own rules.
            let longest = sku_name(
                &group.prefix,
                &"x".repeat(RUN_ID_BYTES_MAX),
                group.count - 1,
            );
            stampede::order::validate_sku_settings(
                &longest,
                group.stock,
                group.per_user_limit,
                group.max_per_order,
                group.payment_timeout_s,
            )
            .map_err(at)?;
        }
        if total > SKUS_MAX {
            return Err(format!(
                "the groups add up to {total} SKUs; at most {SKUS_MAX}"
            ));
        }
        let traffic = &self.traffic;
        if !(1..=USERS_MAX).contains(&traffic.users) {
            return Err(format!(
                "traffic.users must be 1..={USERS_MAX}, got {}",
                traffic.users
            ));
        }
        if !(traffic.sku_zipf_exponent.is_finite() && traffic.sku_zipf_exponent >= 0.0) {
            return Err(format!(
                "traffic.sku_zipf_exponent must be >= 0, got {}",
                traffic.sku_zipf_exponent
            ));
        }
        if traffic.qty_max == 0 {
            return Err("traffic.qty_max must be at least 1".into());
        }
        for (field, value) in [
            ("retry_rate", traffic.retry_rate),
            ("conflict_rate", traffic.conflict_rate),
            ("duplicate_click_rate", traffic.duplicate_click_rate),
            ("abuser_share", traffic.abuser_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!(
                    "traffic.{field} is a share of requests: 0.0..=1.0, got {value}"
                ));
            }
        }
        let resend = traffic.retry_rate + traffic.conflict_rate + traffic.duplicate_click_rate;
        if resend > 1.0 {
            return Err(format!(
                "traffic.retry_rate + conflict_rate + duplicate_click_rate is {resend}; at most 1.0"
            ));
        }
        if traffic.abuser_share > 0.0 && traffic.abusers == 0 {
            return Err("traffic.abuser_share is set but traffic.abusers is 0".into());
        }
        if traffic.abusers > USERS_MAX {
            return Err(format!("traffic.abusers must be at most {USERS_MAX}"));
        }
        let payment = &traffic.payment;
        let weights = [payment.prepaid, payment.escrow, payment.cod];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
            || weights.iter().sum::<f64>() <= 0.0
        {
            return Err("traffic.payment weights must be >= 0 and at least one of them > 0".into());
        }
        Ok(())
    }

    /// Every SKU of the run, in rank order (the first is the Zipf sampler's most popular).
    pub fn sku_specs(&self, run_id: &str) -> Vec<SkuSpec> {
        self.skus
            .iter()
            .flat_map(|group| {
                (0..group.count).map(move |index| SkuSpec {
                    name: sku_name(&group.prefix, run_id, index),
                    stock: group.stock,
                    per_user_limit: group.per_user_limit,
                    max_per_order: group.max_per_order,
                    payment_timeout_s: group.payment_timeout_s,
                })
            })
            .collect()
    }

    pub fn sku_count(&self) -> u64 {
        self.skus.iter().map(|g| g.count).sum()
    }
}

pub fn sku_name(prefix: &str, run_id: &str, index: u64) -> String {
    format!("{prefix}-{run_id}-{index}")
}

pub fn bundled_names() -> Vec<&'static str> {
    BUNDLED.iter().map(|(name, _)| *name).collect()
}

/// Checks a run id: it becomes part of every order id and SKU name.
pub fn check_run_id(run_id: &str) -> Result<(), String> {
    if run_id.is_empty()
        || run_id.len() > RUN_ID_BYTES_MAX
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "run id {run_id:?} must be 1..={RUN_ID_BYTES_MAX} characters of a-z 0-9"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "t"
        [[skus]]
        prefix = "T"
        stock = 10
    "#;

    fn error_of(text: &str) -> String {
        Scenario::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn every_bundled_scenario_parses() {
        for (name, text) in BUNDLED {
            let scenario = Scenario::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&scenario.name, name);
            assert!(
                !scenario.description.is_empty(),
                "{name} has no description"
            );
        }
    }

    #[test]
    fn a_minimal_scenario_gets_the_documented_defaults() {
        let scenario = Scenario::parse(MINIMAL, "minimal").unwrap();
        assert_eq!(scenario.load, LoadDefaults::default());
        assert_eq!(scenario.traffic, Traffic::default());
        let skus = scenario.sku_specs("abc");
        assert_eq!(skus.len(), 1);
        assert_eq!(skus[0].name, "T-abc-0");
        assert_eq!(skus[0].max_per_order, 1);
        assert_eq!(skus[0].payment_timeout_s, 86_400);
    }

    #[test]
    fn durations_and_models_are_read() {
        let scenario = Scenario::parse(
            r#"
            name = "t"
            [load]
            model = "closed"
            duration = "2s"
            warmup = "500ms"
            [[skus]]
            prefix = "A"
            count = 3
            stock = 5
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(scenario.load.model, Some(Model::Closed));
        assert_eq!(scenario.load.duration, Some(Duration::from_secs(2)));
        assert_eq!(scenario.load.warmup, Some(Duration::from_millis(500)));
        assert_eq!(scenario.sku_count(), 3);
    }

    #[test]
    fn toml_syntax_errors_name_the_file_and_line() {
        let error = error_of("name = \"t\"\n[[skus]\n");
        assert!(error.starts_with("scenario test.toml:"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let error = error_of(&format!("{MINIMAL}\n[traffic]\nretry_ratio = 0.1\n"));
        assert!(error.contains("retry_ratio"), "{error}");
    }

    #[test]
    fn missing_required_fields_are_named() {
        let error = error_of("name = \"t\"\n[[skus]]\nprefix = \"A\"\n");
        assert!(error.contains("stock"), "{error}");
        let error = error_of("name = \"t\"\n");
        assert!(error.contains("skus"), "{error}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_field_and_value() {
        let error = error_of(&format!("{MINIMAL}\n[traffic]\nretry_rate = 1.5\n"));
        assert!(
            error.contains("traffic.retry_rate") && error.contains("1.5"),
            "{error}"
        );
        let error = error_of(&format!(
            "{MINIMAL}\n[traffic]\nretry_rate = 0.6\nconflict_rate = 0.6\n"
        ));
        assert!(error.contains("at most 1.0"), "{error}");
        let error = error_of(&format!("{MINIMAL}\n[traffic]\nabuser_share = 0.2\n"));
        assert!(error.contains("traffic.abusers"), "{error}");
        let error = error_of(&format!("{MINIMAL}\n[load]\nduration = \"ten\"\n"));
        assert!(error.contains("load.duration"), "{error}");
        let error = error_of(&format!("{MINIMAL}\n[load]\nrate = -5\n"));
        assert!(error.contains("load.rate"), "{error}");
    }

    #[test]
    fn sku_settings_are_checked_by_the_engines_rules() {
        let error = error_of("name = \"t\"\n[[skus]]\nprefix = \"A B\"\nstock = 1\n");
        assert!(
            error.contains("skus[0]") && error.contains("only A-Z"),
            "{error}"
        );
        let error =
            error_of("name = \"t\"\n[[skus]]\nprefix = \"A\"\nstock = 1\nmax_per_order = 0\n");
        assert!(error.contains("max_per_order"), "{error}");
        let error = error_of(
            "name = \"t\"\n[[skus]]\nprefix = \"A\"\nstock = 1\n[[skus]]\nprefix = \"A\"\nstock = 2\n",
        );
        assert!(error.contains("earlier group"), "{error}");
        let error = error_of("name = \"t\"\n[[skus]]\nprefix = \"A\"\ncount = 70000\nstock = 1\n");
        assert!(error.contains("at most 65536"), "{error}");
    }

    #[test]
    fn unknown_names_list_the_bundled_scenarios() {
        let error = Scenario::resolve("no-such-scenario")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("hot-sku") && error.contains("catalogue-sale"),
            "{error}"
        );
    }

    #[test]
    fn run_ids_are_short_lowercase_alphanumerics() {
        assert!(check_run_id("r8k2x").is_ok());
        assert!(check_run_id("").is_err());
        assert!(check_run_id("UPPER").is_err());
        assert!(check_run_id("waytoolongforanid").is_err());
    }
}
