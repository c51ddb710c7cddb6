//! The report: one [`Check`] row per check, each with its [`Verdict`], in [`CHECK_NAMES`]
//! order, printed as a table or JSON, and the command's exit code.

use serde_json::{Map, Value, json};

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Ready, but worth a look (the detail says why).
    Warn,
    Fail,
    /// Not run: an earlier check failed, or `--no-prepare`.
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// Stable name: `config`, `data_dir`, `lock`, `fsync`, `disk`, `open_files`, `listen`,
    /// `journal_room`, `inventory_map`.
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was measured against what is needed, for a person.
    pub detail: String,
    /// The same figures as numbers, for automation (`--json`).
    pub values: Map<String, Value>,
}

impl Check {
    pub(super) fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict,
            detail: detail.into(),
            values: Map::new(),
        }
    }

    pub(super) fn with(mut self, values: Value) -> Self {
        if let Value::Object(values) = values {
            self.values = values;
        }
        self
    }
}

/// Every check's row, in order.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The configuration did not load: nothing else could be checked.
    pub config_invalid: bool,
}

/// Every check's name, in the order they run and print.
pub const CHECK_NAMES: [&str; 9] = [
    "config",
    "data_dir",
    "lock",
    "fsync",
    "disk",
    "open_files",
    "listen",
    "journal_room",
    "inventory_map",
];

impl Report {
    /// 2 when the configuration is invalid, 1 when a check failed, 0 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.config_invalid {
            2
        } else if self.failed().next().is_some() {
            1
        } else {
            0
        }
    }

    pub fn ready(&self) -> bool {
        self.exit_code() == 0
    }

    fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.verdict == Verdict::Fail)
    }

    /// The table: one row per check, then the verdict.
    pub fn to_table(&self) -> String {
        let name_width = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .max("CHECK".len());
        let mut out = format!("{:name_width$}  RESULT  DETAIL\n", "CHECK");
        for check in &self.checks {
            out.push_str(&format!(
                "{:name_width$}  {:6}  {}\n",
                check.name,
                check.verdict.as_str(),
                check.detail
            ));
        }
        let warnings = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Warn)
            .count();
        let failed: Vec<&str> = self.failed().map(|c| c.name).collect();
        out.push('\n');
        if self.config_invalid {
            out.push_str("NOT READY: the configuration is invalid\n");
        } else if failed.is_empty() {
            out.push_str(&format!(
                "READY: every check passed ({warnings} warning{})\n",
                if warnings == 1 { "" } else { "s" }
            ));
        } else {
            out.push_str(&format!(
                "NOT READY: {} failed: {}\n",
                if failed.len() == 1 {
                    "1 check"
                } else {
                    "checks"
                },
                failed.join(", ")
            ));
        }
        out
    }

    /// The same report as one JSON object: `ready`, `exit_code` and `checks` (each `check`,
    /// `result`, `detail`, `values`).
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|check| {
                json!({
                    "check": check.name,
                    "result": check.verdict.as_str(),
                    "detail": check.detail,
                    "values": check.values,
                })
            })
            .collect();
        json!({
            "ready": self.ready(),
            "exit_code": self.exit_code(),
            "checks": checks,
        })
    }
}
