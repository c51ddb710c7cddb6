//! Black-box tests of what operators rely on during the sale: `GET /metrics` (strictly parsed
//! Prometheus text format, figures that move exactly with the traffic), the Grafana dashboard
//! naming only exported metrics, admission control shedding with 429 and `Retry-After`, and
//! the logs (JSON lines, nothing per order, a bad level refused at start).
//!
//! The real binary on loopback, one data directory per server; every wait is bounded.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Opts, Reply, Server, new_client, order, post_order_with};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format, version 0.0.4.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// Label pairs, in the order a line gives them (or sorted, as a series' identity).
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    /// The label pairs in the order the line gave them.
    labels: Labels,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }

    /// The label set without `le`, sorted (a histogram series' identity).
    fn series_key(&self) -> Labels {
        let mut key: Vec<_> = self
            .labels
            .iter()
            .filter(|(name, _)| name != "le")
            .cloned()
            .collect();
        key.sort();
        key
    }
}

/// One scrape, parsed.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, Kind>,
    helps: HashMap<String, String>,
    samples: Vec<Sample>,
    /// The family of each sample (same index as `samples`).
    families_of_samples: Vec<String>,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A sample value: Go float syntax as the format allows it (`NaN`, `+Inf`, `-Inf`, or a
/// decimal with an optional exponent).
fn parse_value(token: &str) -> Option<f64> {
    match token {
        "NaN" => return Some(f64::NAN),
        "+Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let bytes = token.as_bytes();
    let mut i = 0;
    if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
        i += 1;
    }
    let digits_before = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    i += digits_before;
    let mut digits_after = 0;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        digits_after = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        i += digits_after;
    }
    if digits_before + digits_after == 0 {
        return None;
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        let exponent = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if exponent == 0 {
            return None;
        }
        i += exponent;
    }
    if i != bytes.len() {
        return None;
    }
    token.parse().ok()
}

/// A HELP docstring: only `\\` and `\n` are escapes.
fn check_help_escapes(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in HELP")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `{name="value",...}` starting at `rest` (just after the `{`); returns the labels and what
/// follows the `}`.
fn parse_labels(mut rest: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated label set")?;
        let name = &rest[..name_len];
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        if labels.iter().any(|(existing, _)| existing == name) {
            return Err(format!("label {name:?} given twice"));
        }
        rest = rest[name_len..]
            .strip_prefix("=\"")
            .ok_or_else(|| format!("label {name:?} is not followed by =\""))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {name:?}")),
                Some((at, '"')) => break at,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!("bad escape in label {name:?}: {other:?}"));
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("label {name:?} is followed by neither , nor }}"));
        }
    }
}

impl Exposition {
    fn parse(text: &str) -> Result<Exposition, String> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the exposition does not end with a newline".into());
        }
        let mut out = Exposition::default();
        // Each family's lines form one group: once another family starts, it is closed.
        let mut current: Option<String> = None;
        let mut closed: HashSet<String> = HashSet::new();
        let mut has_samples: HashSet<String> = HashSet::new();
        let mut series_seen: HashSet<(String, Labels)> = HashSet::new();
        fn enter(
            family: &str,
            current: &mut Option<String>,
            closed: &mut HashSet<String>,
        ) -> Result<(), String> {
            if current.as_deref() == Some(family) {
                return Ok(());
            }
            if let Some(previous) = current.take() {
                closed.insert(previous);
            }
            if closed.contains(family) {
                return Err(format!("family {family} appears in two separate groups"));
            }
            *current = Some(family.to_string());
            Ok(())
        }
        for (index, line) in text.split_terminator('\n').enumerate() {
            let at = |message: String| format!("line {}: {message}: {line:?}", index + 1);
            if line.contains('\r') {
                return Err(at("carriage return".into()));
            }
            if line.trim().is_empty() {
                continue; // the format ignores empty lines
            }
            if let Some(comment) = line.strip_prefix('#') {
                let Some(comment) = comment.strip_prefix(' ') else {
                    continue; // a plain comment
                };
                let mut parts = comment.splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                if keyword != "HELP" && keyword != "TYPE" {
                    continue; // a plain comment
                }
                let name = parts.next().unwrap_or_default();
                if !is_metric_name(name) {
                    return Err(at(format!("invalid metric name {name:?} in {keyword}")));
                }
                let rest = parts.next().unwrap_or_default();
                enter(name, &mut current, &mut closed).map_err(&at)?;
                if keyword == "HELP" {
                    let help = check_help_escapes(rest).map_err(&at)?;
                    if out.helps.insert(name.to_string(), help).is_some() {
                        return Err(at(format!("second HELP for {name}")));
                    }
                } else {
                    let kind = match rest {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "summary" => Kind::Summary,
                        "untyped" => Kind::Untyped,
                        other => return Err(at(format!("unknown type {other:?}"))),
                    };
                    if has_samples.contains(name) {
                        return Err(at(format!("TYPE of {name} after its samples")));
                    }
                    if out.types.insert(name.to_string(), kind).is_some() {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                }
                continue;
            }
            // A sample: name [{labels}] value [timestamp]
            let name_len = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(line.len());
            let name = &line[..name_len];
            if !is_metric_name(name) {
                return Err(at(format!("invalid metric name {name:?}")));
            }
            let mut rest = &line[name_len..];
            let mut labels = Vec::new();
            if let Some(after) = rest.strip_prefix('{') {
                let (parsed, after) = parse_labels(after).map_err(&at)?;
                labels = parsed;
                rest = after;
            }
            if !rest.starts_with([' ', '\t']) {
                return Err(at("no blank between the series and its value".into()));
            }
            let mut tokens = rest.split([' ', '\t']).filter(|token| !token.is_empty());
            let value_token = tokens.next().ok_or_else(|| at("no value".into()))?;
            let value = parse_value(value_token)
                .ok_or_else(|| at(format!("invalid value {value_token:?}")))?;
            if let Some(timestamp) = tokens.next()
                && timestamp.parse::<i64>().is_err()
            {
                return Err(at(format!("invalid timestamp {timestamp:?}")));
            }
            if let Some(extra) = tokens.next() {
                return Err(at(format!("trailing {extra:?}")));
            }
            let (family, kind) = out.family_of(name).map_err(&at)?;
            enter(&family, &mut current, &mut closed).map_err(&at)?;
            has_samples.insert(family.clone());
            let has_le = labels.iter().any(|(label, _)| label == "le");
            match kind {
                Kind::Counter if value.is_nan() || value < 0.0 => {
                    return Err(at("a counter below zero".into()));
                }
                Kind::Histogram if name.ends_with("_bucket") && !has_le => {
                    return Err(at("a bucket without le".into()));
                }
                Kind::Histogram if !name.ends_with("_bucket") && has_le => {
                    return Err(at("le on a _sum or _count".into()));
                }
                Kind::Histogram | Kind::Summary
                    if name.ends_with("_count") && (value < 0.0 || value.fract() != 0.0) =>
                {
                    return Err(at("a _count that is not a whole number".into()));
                }
                Kind::Summary
                    if name == family && !labels.iter().any(|(label, _)| label == "quantile") =>
                {
                    return Err(at("a summary quantile without a quantile label".into()));
                }
                _ => {}
            }
            let mut key = labels.clone();
            key.sort();
            if !series_seen.insert((name.to_string(), key)) {
                return Err(at("the same series twice".into()));
            }
            out.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
            out.families_of_samples.push(family);
        }
        out.check_histograms()?;
        Ok(out)
    }

    /// The family a sample name belongs to, whose TYPE line came before it.
    fn family_of(&self, name: &str) -> Result<(String, Kind), String> {
        if let Some(&kind) = self.types.get(name) {
            if kind == Kind::Histogram {
                return Err(format!("histogram {name} has a sample without a suffix"));
            }
            return Ok((name.to_string(), kind));
        }
        for (suffix, kinds) in [
            ("_bucket", &[Kind::Histogram][..]),
            ("_sum", &[Kind::Histogram, Kind::Summary][..]),
            ("_count", &[Kind::Histogram, Kind::Summary][..]),
        ] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(kind) = self.types.get(base)
                && kinds.contains(kind)
            {
                return Ok((base.to_string(), *kind));
            }
        }
        Err(format!("sample {name} has no TYPE line before it"))
    }

    /// Buckets in increasing `le`, cumulative, ending at `+Inf`, which equals `_count`; each
    /// series has a `_sum` and a `_count`.
    fn check_histograms(&self) -> Result<(), String> {
        for (family, kind) in &self.types {
            if *kind != Kind::Histogram {
                continue;
            }
            let bucket_name = format!("{family}_bucket");
            let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            let mut counts = BTreeMap::new();
            let mut sums = BTreeMap::new();
            for sample in &self.samples {
                if sample.name == bucket_name {
                    let le_text = sample.label("le").unwrap_or_default();
                    let le = parse_value(le_text)
                        .filter(|le| !le.is_nan())
                        .ok_or_else(|| format!("{family}: bad le {le_text:?}"))?;
                    buckets
                        .entry(sample.series_key())
                        .or_default()
                        .push((le, sample.value));
                } else if sample.name == format!("{family}_count") {
                    counts.insert(sample.series_key(), sample.value);
                } else if sample.name == format!("{family}_sum") {
                    sums.insert(sample.series_key(), sample.value);
                }
            }
            for (series, list) in &buckets {
                for pair in list.windows(2) {
                    if pair[1].0 <= pair[0].0 {
                        return Err(format!("{family}{series:?}: le not increasing: {list:?}"));
                    }
                    if pair[1].1 < pair[0].1 {
                        return Err(format!(
                            "{family}{series:?}: buckets not cumulative: {list:?}"
                        ));
                    }
                }
                let &(last_le, last_count) = list.last().expect("a series has a bucket");
                if last_le != f64::INFINITY {
                    return Err(format!("{family}{series:?}: last bucket is not +Inf"));
                }
                match counts.get(series) {
                    Some(&count) if count == last_count => {}
                    other => {
                        return Err(format!(
                            "{family}{series:?}: _count {other:?} is not the +Inf bucket {last_count}"
                        ));
                    }
                }
                if !sums.contains_key(series) {
                    return Err(format!("{family}{series:?}: no _sum"));
                }
            }
            for series in counts.keys().chain(sums.keys()) {
                if !buckets.contains_key(series) {
                    return Err(format!(
                        "{family}{series:?}: _count or _sum without buckets"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The value of the series with exactly these labels, if exported.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name
                    && sample.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(label, value)| sample.label(label) == Some(value))
            })
            .map(|sample| sample.value)
    }

    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} is not exported"))
    }

    /// The sum over every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels
                        .iter()
                        .all(|(label, value)| sample.label(label) == Some(value))
            })
            .map(|sample| sample.value)
            .sum()
    }

    /// Families with a TYPE line and at least one sample.
    fn exported_families(&self) -> HashSet<&str> {
        self.families_of_samples
            .iter()
            .map(String::as_str)
            .collect()
    }
}

/// `GET /metrics`, asserting 200, the 0.0.4 content type, and that it parses.
async fn scrape(server: &Server) -> Exposition {
    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK, "/metrics: {}", reply.text);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content-type {content_type:?}"
    );
    let parsed = Exposition::parse(&reply.text).unwrap_or_else(|error| {
        panic!("/metrics is not valid text format: {error}\n{}", reply.text)
    });
    for family in parsed.exported_families() {
        if family.starts_with("stampede_") {
            assert!(
                parsed
                    .helps
                    .get(family)
                    .is_some_and(|help| !help.is_empty()),
                "{family} has no HELP"
            );
        }
    }
    parsed
}

#[test]
fn the_parser_refuses_what_the_format_does_not_allow() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5e-3\nh_count 2\n\
                # TYPE g gauge\ng NaN\ng{s=\"1\"} -Inf 1700000000000\n";
    let parsed = Exposition::parse(good).unwrap();
    assert_eq!(parsed.value("a_total", &[("x", "q\"\\\n")]), 3.0);
    assert_eq!(parsed.value("h_count", &[]), 2.0);
    assert!(parsed.value("g", &[]).is_nan());
    for bad in [
        "a 1\n",                                                          // no TYPE
        "# TYPE a gauge\na 1",                                            // no final newline
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",                               // bad escape
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",                         // label twice
        "# TYPE a gauge\na{__x=\"1\"} 1\n",                               // reserved label
        "# TYPE a gauge\na{1x=\"1\"} 1\n",                                // label name
        "# TYPE a gauge\na{x=1} 1\n",                                     // unquoted
        "# TYPE a gauge\na inf\n",                                        // not Go syntax
        "# TYPE a gauge\na 1 2 3\n",                                      // trailing token
        "# TYPE a gauge\na 1x\n",                                         // value
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",                          // TYPE twice
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n",       // split group
        "# TYPE a gauge\na 1\na 2\n",                                     // same series
        "# TYPE a counter\na -1\n",                                       // negative counter
        "# TYPE a wat\na 1\n",                                            // unknown type
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", // count != +Inf
        "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // no _sum
        "# TYPE h histogram\nh 1\n",                                // bare histogram sample
        "# TYPE a gauge\na{x=\"1\"}1\n",                            // no blank
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// A shed answer: 429 `overloaded` whose `Retry-After` is a whole number of seconds, 1..=60.
#[track_caller]
fn assert_shed(reply: &Reply) -> u64 {
    reply.assert_error(429, "overloaded");
    let text = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {}", reply.text));
    assert!(
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
        "Retry-After {text:?} is not delta-seconds"
    );
    let seconds: u64 = text.parse().unwrap();
    assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
    seconds
}

/// The stderr lines of the server's current incarnation.
fn stderr_lines(server: &Server) -> Vec<String> {
    server
        .lines()
        .into_iter()
        .filter_map(|line| line.strip_prefix("[err] ").map(str::to_string))
        .collect()
}

fn last_seq(records: &[Value]) -> u64 {
    records
        .last()
        .and_then(|record| record["seq"].as_u64())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// 1. /metrics parses and moves exactly with the traffic.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_exactly_with_the_traffic() {
    const N: usize = 10; // accepted orders (the whole stock)
    const SOLD_OUT: usize = 3;
    const GROUP: &str = "ops-test";
    let server = Server::start(Opts::default().fsync("always")).await;
    server.create_sku("MET-1", N as u64, 0, 1).await;
    let journal_before = server.journal().await;
    let before = scrape(&server).await;

    let mut seqs = Vec::new();
    for n in 0..N {
        let reply = server
            .post_order(&order(
                &format!("m-{n}"),
                &format!("mu-{n}"),
                "MET-1",
                1,
                "prepaid",
            ))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        seqs.push(reply.json["seq"].as_u64().expect("seq"));
    }
    for n in 0..SOLD_OUT {
        server
            .post_order(&order(
                &format!("so-{n}"),
                &format!("su-{n}"),
                "MET-1",
                1,
                "prepaid",
            ))
            .await
            .assert_error(409, "sold_out");
    }
    let replay = server
        .post_order(&order("m-0", "mu-0", "MET-1", 1, "prepaid"))
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let paid = server.post_action("m-1", "pay", None).await;
    assert_eq!(paid.status, StatusCode::OK, "pay: {}", paid.text);
    // A retry of the latest action is answered from what was journaled: counted apart.
    let paid_again = server.post_action("m-1", "pay", None).await;
    assert_eq!(paid_again.header("idempotent-replayed"), Some("true"));
    let committed_seq = seqs[2];
    let commit = server.commit_offset(GROUP, committed_seq).await;
    assert_eq!(commit.status, StatusCode::OK, "offset: {}", commit.text);

    let journal = server.journal().await;
    let after = scrape(&server).await;
    let journal_again = server.journal().await;
    assert_eq!(
        last_seq(&journal),
        last_seq(&journal_again),
        "nothing was written around the scrape"
    );

    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let orders = "stampede_orders_total";
    assert_eq!(delta(orders, &[("outcome", "accepted")]), N as f64);
    assert_eq!(delta(orders, &[("outcome", "sold_out")]), SOLD_OUT as f64);
    assert_eq!(delta(orders, &[("outcome", "replayed")]), 1.0);
    assert_eq!(delta(orders, &[("outcome", "overloaded")]), 0.0);
    assert_eq!(
        delta(
            "stampede_order_actions_total",
            &[("action", "pay"), ("result", "done")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "stampede_order_actions_total",
            &[("action", "pay"), ("result", "replayed")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "stampede_order_actions_total",
            &[("action", "pay"), ("result", "refused")]
        ),
        0.0
    );
    // Only the outcomes an order can have are exported.
    let outcomes: HashSet<&str> = after
        .samples
        .iter()
        .filter(|sample| sample.name == orders)
        .filter_map(|sample| sample.label("outcome"))
        .collect();
    for never in [
        "unknown_order",
        "invalid_transition",
        "stock_conflict",
        "gone",
        "not_found",
    ] {
        assert!(!outcomes.contains(never), "{never} in {outcomes:?}");
    }
    assert!(outcomes.contains("purchase_limit"), "{outcomes:?}");
    assert_eq!(
        delta(
            "stampede_request_duration_seconds_count",
            &[("route", "create_order")]
        ),
        (N + SOLD_OUT + 1) as f64,
        "every POST /v1/orders is timed once"
    );
    assert_eq!(
        delta(
            "stampede_request_duration_seconds_count",
            &[("route", "order_action")]
        ),
        2.0
    );
    assert!(
        delta(
            "stampede_request_duration_seconds_sum",
            &[("route", "create_order")]
        ) > 0.0
    );
    for reason in [
        "shard_queue_full",
        "in_flight",
        "client_rate",
        "user_rate",
        "queue_delay",
    ] {
        assert_eq!(
            after.value("stampede_shed_total", &[("reason", reason)]),
            0.0
        );
    }

    // Stock per state, as GET /v1/skus/{sku} shows it.
    let view = server.sku("MET-1").await;
    assert_eq!(view["sold"], 1, "{view}");
    assert_eq!(view["reserved"], N as u64 - 1, "{view}");
    for (state, field) in [
        ("sold", "sold"),
        ("reserved", "reserved"),
        ("available", "available"),
        ("total", "stock_total"),
    ] {
        assert_eq!(
            after.value("stampede_sku_units", &[("sku", "MET-1"), ("state", state)]),
            view[field].as_u64().unwrap() as f64,
            "stampede_sku_units{{state={state}}} vs {view}"
        );
    }

    // The journal's figures.
    let durable = after.value("stampede_journal_durable_seq", &[]);
    assert_eq!(
        durable,
        last_seq(&journal) as f64,
        "durable seq is the journal's last"
    );
    assert_eq!(
        delta("stampede_journal_written_records", &[]),
        (journal.len() - journal_before.len()) as f64,
        "records written since the first scrape = records the journal gained"
    );
    assert_eq!(
        after.value("stampede_orders_indexed", &[]),
        N as f64,
        "orders in the index"
    );
    assert_eq!(
        after.value("stampede_consumer_offset", &[("group", GROUP)]),
        committed_seq as f64
    );
    assert_eq!(
        after.value("stampede_consumer_lag_records", &[("group", GROUP)]),
        durable - committed_seq as f64,
        "lag = durable - offset"
    );
    assert!(after.sum("stampede_shard_batch_size_count", &[]) > 0.0);
    assert!(
        after.sum("stampede_shard_batch_size_sum", &[])
            - before.sum("stampede_shard_batch_size_sum", &[])
            >= (N + 1) as f64,
        "each accepted order and the pay were decided in some batch"
    );
    let fsyncs = after.value("stampede_journal_fsync_duration_seconds_count", &[]);
    assert!(fsyncs > 0.0, "fsync = always syncs");
    assert!(delta("stampede_journal_fsync_duration_seconds_count", &[]) > 0.0);
    assert!(after.value("stampede_journal_fsyncs", &[]) > 0.0);
    assert!(after.value("stampede_journal_written_bytes", &[]) > 0.0);
    assert!(
        after.value("stampede_http_connections", &[]) >= 1.0,
        "the scrape's own connection is open"
    );
    // One timer per prepaid order; the paid order's timer may stay held until it is due
    // (timers are dropped lazily), so N - 1 or N.
    let timers = after.sum("stampede_payment_timers", &[]);
    assert!(
        timers == (N - 1) as f64 || timers == N as f64,
        "payment timers {timers}, expected {} or {N}",
        N - 1
    );
    assert_eq!(after.sum("stampede_shard_queue_depth", &[]), 0.0);
}

/// `stampede_in_flight_requests` is "order and action requests admitted and not yet
/// answered": with no request open it must read 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_reads_zero_once_every_request_is_answered() {
    let server = Server::start(Opts::default().fsync("none")).await;
    server.create_sku("IDLE-1", 10, 0, 1).await;
    for n in 0..3 {
        let reply = server
            .post_order(&order(&format!("idle-{n}"), "iu", "IDLE-1", 1, "cod"))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.value("stampede_in_flight_requests", &[]),
        0.0,
        "every order was answered, none is in flight"
    );
}

/// `stampede_orders_total` is "POST /v1/orders answered, by outcome (accepted, replayed, or
/// the error code)": every answered order post is counted once, whichever gate answered it,
/// as `stampede_request_duration_seconds{route="create_order"}` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_order_post_is_counted_by_outcome() {
    let server = Server::start(Opts {
        env: env(&[("STAMPEDE_ADMISSION_CLIENT_RATE_PER_S", "3")]),
        ..Opts::default().fsync("none")
    })
    .await;
    server.create_sku("COUNT-1", 10, 0, 1).await;
    let before = scrape(&server).await;
    let created = server
        .post_order(&order("count-1", "cu", "COUNT-1", 1, "cod"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    server
        .post_order_raw(vec![b' '; 17_000])
        .await
        .assert_error(413, "too_large");
    server
        .post_order_raw("not json")
        .await
        .assert_error(400, "bad_request");
    // The client's fourth request within a second: shed at the client-rate gate.
    assert_shed(
        &server
            .post_order(&order("count-2", "cu2", "COUNT-1", 1, "cod"))
            .await,
    );
    let after = scrape(&server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        delta(
            "stampede_request_duration_seconds_count",
            &[("route", "create_order")]
        ),
        4.0
    );
    let outcomes: Vec<(String, f64)> = after
        .samples
        .iter()
        .filter(|sample| sample.name == "stampede_orders_total")
        .map(|sample| {
            let outcome = sample.label("outcome").unwrap_or_default();
            (
                outcome.to_string(),
                sample.value - before.value("stampede_orders_total", &[("outcome", outcome)]),
            )
        })
        .filter(|(_, moved)| *moved != 0.0)
        .collect();
    let expected: Vec<(String, f64)> = [
        ("accepted", 1.0),
        ("bad_request", 1.0),
        ("too_large", 1.0),
        ("overloaded", 1.0),
    ]
    .iter()
    .map(|(outcome, moved)| (outcome.to_string(), *moved))
    .collect();
    let sorted = |mut list: Vec<(String, f64)>| {
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    };
    assert_eq!(
        sorted(outcomes),
        sorted(expected),
        "stampede_orders_total by outcome after 201, 413, 400 and a client-rate 429"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The Grafana dashboard queries only exported metrics.
// ---------------------------------------------------------------------------------------------

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "expr"
                    && let Some(expr) = value.as_str()
                {
                    out.push(expr.to_string());
                }
                collect_exprs(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// Metric names with `prefix` in a PromQL expression, histogram suffixes stripped to the
/// family.
fn metric_families_in(expr: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while let Some(found) = expr[at..].find(prefix) {
        let start = at + found;
        let preceded_by_ident = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let len = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(expr.len() - start);
        if !preceded_by_ident {
            let name = &expr[start..start + len];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.push(family.to_string());
        }
        at = start + len.max(1);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ops/grafana/stampede-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    let mut wanted: Vec<(String, String)> = Vec::new();
    for expr in &exprs {
        for family in metric_families_in(expr, "stampede_") {
            wanted.push((family, expr.clone()));
        }
        #[cfg(target_os = "linux")]
        for family in metric_families_in(expr, "process_") {
            wanted.push((family, expr.clone()));
        }
    }
    assert!(
        wanted.len() >= 10,
        "too few metric names found in the dashboard: {wanted:?}"
    );

    // Some traffic, so every family has series: an order, a sold-out, an action, a consumer
    // group.
    let server = Server::start(Opts::default()).await;
    server.create_sku("DASH-1", 1, 0, 1).await;
    let reply = server
        .post_order(&order("d-1", "du", "DASH-1", 1, "prepaid"))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    server
        .post_order(&order("d-2", "du2", "DASH-1", 1, "prepaid"))
        .await
        .assert_error(409, "sold_out");
    assert_eq!(
        server.post_action("d-1", "pay", None).await.status,
        StatusCode::OK
    );
    let seq = reply.json["seq"].as_u64().unwrap();
    assert_eq!(
        server.commit_offset("dash", seq).await.status,
        StatusCode::OK
    );
    let metrics = scrape(&server).await;
    let exported = metrics.exported_families();
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(family, _)| !exported.contains(family.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:#?}\nexported: {exported:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Metrics off.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_disabled_answers_404_and_orders_still_work() {
    let server = Server::start(Opts {
        env: env(&[("STAMPEDE_METRICS_ENABLED", "false")]),
        ..Opts::default()
    })
    .await;
    server.get("/metrics").await.assert_error(404, "not_found");
    server.create_sku("OFF-1", 5, 0, 1).await;
    let reply = server
        .post_order(&order("off-1", "ou", "OFF-1", 1, "prepaid"))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let paid = server.post_action("off-1", "pay", None).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    let view = server.sku("OFF-1").await;
    assert_eq!(view["sold"], 1, "{view}");
    server.get("/metrics").await.assert_error(404, "not_found");
}

// ---------------------------------------------------------------------------------------------
// 4. Shedding: 429 with Retry-After.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_shard_mailbox_sheds_exactly_what_it_counts_and_recovers() {
    const FLOOD: usize = 400;
    const CLIENTS: usize = 8;
    let server = Server::start(Opts {
        env: env(&[
            ("STAMPEDE_SHARD_QUEUE_CAPACITY", "1"),
            ("STAMPEDE_SHARD_BATCH_MAX", "1"),
            // The mailbox's bound is under test; the queue-delay gate would answer 503.
            ("STAMPEDE_ADMISSION_QUEUE_DELAY_TARGET_MS", "0"),
        ]),
        ..Opts::default().shards(1).fsync("always")
    })
    .await;
    server.create_sku("FLOOD-1", 100_000, 0, 1).await;
    let before = scrape(&server).await;
    let clients: Vec<reqwest::Client> = (0..CLIENTS).map(|_| new_client()).collect();
    let mut created: HashSet<String> = HashSet::new();
    let mut shed: Vec<Value> = Vec::new();
    // One flood nearly always sheds; a few more rounds keep a lucky scheduler from failing
    // the test.
    for round in 0..3 {
        let mut tasks = Vec::with_capacity(FLOOD);
        for n in 0..FLOOD {
            let client = clients[n % CLIENTS].clone();
            let base_url = server.base_url.clone();
            let body = order(
                &format!("fl{round}-{n}"),
                &format!("fu{n}"),
                "FLOOD-1",
                1,
                "prepaid",
            );
            tasks.push(tokio::spawn(async move {
                let reply = post_order_with(&client, &base_url, &body).await;
                (body, reply)
            }));
        }
        let replies = tokio::time::timeout(Duration::from_secs(30), async {
            let mut replies = Vec::with_capacity(FLOOD);
            for task in tasks {
                replies.push(task.await.expect("flood task"));
            }
            replies
        })
        .await
        .expect("the flood is answered within 30 s");
        for (body, reply) in replies {
            let id = body["order_id"].as_str().unwrap().to_string();
            let reply = reply.unwrap_or_else(|e| panic!("{id}: transport error {e}"));
            match reply.status.as_u16() {
                201 => {
                    created.insert(id);
                }
                429 => {
                    assert_shed(&reply);
                    shed.push(body);
                }
                _ => panic!("{id}: unexpected {} {}", reply.status, reply.text),
            }
        }
        if !shed.is_empty() {
            break;
        }
    }
    eprintln!("{} created, {} shed", created.len(), shed.len());
    assert!(
        !shed.is_empty(),
        "a one-slot mailbox under a flood must shed"
    );
    assert!(!created.is_empty(), "some orders get through");

    // The load is gone: the next order is taken at once.
    let started = Instant::now();
    let next = server
        .post_order(&order("after-flood", "fa", "FLOOD-1", 1, "prepaid"))
        .await;
    assert_eq!(next.status, StatusCode::CREATED, "{}", next.text);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    created.insert("after-flood".to_string());

    // Nothing was taken for a shed order.
    let view = server.sku("FLOOD-1").await;
    assert_eq!(
        view["sold"].as_u64().unwrap() + view["reserved"].as_u64().unwrap(),
        created.len() as u64,
        "{view}"
    );
    let after = scrape(&server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        delta("stampede_shed_total", &[("reason", "shard_queue_full")]),
        shed.len() as f64,
        "every 429 is counted as shard_queue_full, nothing else is"
    );
    for reason in ["in_flight", "client_rate", "user_rate"] {
        assert_eq!(delta("stampede_shed_total", &[("reason", reason)]), 0.0);
    }
    assert_eq!(
        delta("stampede_orders_total", &[("outcome", "overloaded")]),
        shed.len() as f64
    );
    assert_eq!(
        delta("stampede_orders_total", &[("outcome", "accepted")]),
        created.len() as f64
    );
    assert_eq!(after.sum("stampede_shard_queue_depth", &[]), 0.0);
    // A shed order took not even its id: its retry is created.
    let retry = server.post_order(&shed[0]).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
}

/// Reads one HTTP/1.1 response's head from a raw socket (bounded).
async fn read_response_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut buffer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !buffer.windows(4).any(|window| window == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(left, stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(read > 0, "connection closed before a response: {buffer:?}");
        buffer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&buffer).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_bound_sheds_while_a_request_holds_the_only_slot() {
    let server = Server::start(Opts {
        env: env(&[("STAMPEDE_ADMISSION_IN_FLIGHT_MAX", "1")]),
        ..Opts::default()
    })
    .await;
    server.create_sku("FLIGHT-1", 10, 0, 1).await;
    let before = scrape(&server).await;

    // An order whose body is half sent holds the slot (taken before the body is read).
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&server.addr),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    let body = order("held-1", "hu", "FLIGHT-1", 1, "prepaid").to_string();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    let (first_half, second_half) = body.as_bytes().split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(first_half).await.expect("half a body");
    // Wait (bounded) until the server has admitted it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if scrape(&server)
            .await
            .value("stampede_in_flight_requests", &[])
            == 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the half-sent order was not admitted within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let refused = server
        .post_order(&order("second-1", "su", "FLIGHT-1", 1, "prepaid"))
        .await;
    assert_shed(&refused);
    let during = scrape(&server).await;
    assert_eq!(
        during.value("stampede_shed_total", &[("reason", "in_flight")])
            - before.value("stampede_shed_total", &[("reason", "in_flight")]),
        1.0
    );
    assert_eq!(
        during.value("stampede_shed_total", &[("reason", "shard_queue_full")]),
        0.0
    );

    // The held order completes.
    stream
        .write_all(second_half)
        .await
        .expect("rest of the body");
    let response = read_response_head(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    drop(stream);

    // The slot is free again: the refused order goes through now (it took nothing).
    let retry = server
        .post_order(&order("second-1", "su", "FLIGHT-1", 1, "prepaid"))
        .await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(server.sku("FLIGHT-1").await["reserved"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_order_rate_is_told_when_to_come_back() {
    let server = Server::start(Opts {
        env: env(&[("STAMPEDE_ADMISSION_USER_ORDERS_PER_S", "2")]),
        ..Opts::default().fsync("none")
    })
    .await;
    server.create_sku("RATE-1", 100, 0, 1).await;
    let before = scrape(&server).await;
    let started = Instant::now();
    for n in 0..2 {
        let reply = server
            .post_order(&order(&format!("bot-{n}"), "bot", "RATE-1", 1, "prepaid"))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let third = server
        .post_order(&order("bot-2", "bot", "RATE-1", 1, "prepaid"))
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(450),
        "three orders took {elapsed:?}: too slow to test a 2/s limit"
    );
    let retry_after = assert_shed(&third);
    assert!(
        retry_after <= 2,
        "a 2/s bucket has a token within a second, Retry-After {retry_after}"
    );
    // Another buyer is not limited.
    let other = server
        .post_order(&order("human-0", "human", "RATE-1", 1, "prepaid"))
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
    let after = scrape(&server).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        delta("stampede_shed_total", &[("reason", "user_rate")]),
        1.0
    );
    assert_eq!(
        delta("stampede_shed_total", &[("reason", "client_rate")]),
        0.0
    );
    assert_eq!(
        delta("stampede_orders_total", &[("outcome", "overloaded")]),
        1.0
    );
    // After Retry-After the buyer may order again; the refused order took nothing.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = server
        .post_order(&order("bot-2", "bot", "RATE-1", 1, "prepaid"))
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(server.sku("RATE-1").await["reserved"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_over_its_request_rate_is_shed() {
    let server = Server::start(Opts {
        env: env(&[("STAMPEDE_ADMISSION_CLIENT_RATE_PER_S", "3")]),
        ..Opts::default().fsync("none")
    })
    .await;
    server.create_sku("ADDR-1", 100, 0, 1).await;
    let before = scrape(&server).await;
    let started = Instant::now();
    for n in 0..3 {
        let reply = server
            .post_order(&order(
                &format!("addr-{n}"),
                &format!("au{n}"),
                "ADDR-1",
                1,
                "cod",
            ))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let fourth = server
        .post_order(&order("addr-3", "au3", "ADDR-1", 1, "cod"))
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(300),
        "four orders took {elapsed:?}: too slow to test a 3/s limit"
    );
    assert_shed(&fourth);
    // Reads are not rate limited.
    assert_eq!(server.sku("ADDR-1").await["sold"], 3);
    let after = scrape(&server).await;
    assert_eq!(
        after.value("stampede_shed_total", &[("reason", "client_rate")])
            - before.value("stampede_shed_total", &[("reason", "client_rate")]),
        1.0
    );
    assert_eq!(
        after.value("stampede_shed_total", &[("reason", "user_rate")]),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Logs.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_and_nothing_is_logged_per_order() {
    const ORDERS: usize = 200;
    const CLIENTS: usize = 4;
    let mut server = Server::start(Opts {
        env: env(&[("STAMPEDE_LOG_FORMAT", "json")]),
        ..Opts::default()
    })
    .await;
    server.create_sku("LOG-1", 1_000, 0, 1).await;
    let lines_before = stderr_lines(&server).len();
    let mut tasks = Vec::new();
    for task in 0..CLIENTS {
        let base_url = server.base_url.clone();
        tasks.push(tokio::spawn(async move {
            let client = new_client();
            for n in 0..ORDERS / CLIENTS {
                let id = format!("log{task}-{n}");
                let reply =
                    post_order_with(&client, &base_url, &order(&id, &id, "LOG-1", 1, "cod"))
                        .await
                        .unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(reply.status, StatusCode::CREATED, "{id}: {}", reply.text);
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(30), async {
        for task in tasks {
            task.await.expect("order task");
        }
    })
    .await
    .expect("200 orders within 30 s");
    assert_eq!(server.sku("LOG-1").await["sold"], ORDERS as u64);
    // Anything logged for the orders would be on stderr by now; give the pipe a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = stderr_lines(&server);
    assert_eq!(
        during.len(),
        lines_before,
        "orders were logged at the default level: {:#?}",
        &during[lines_before..]
    );

    let status = server.terminate().await;
    assert!(status.success(), "exit {status}\n{}", server.output());
    let lines = stderr_lines(&server);
    let mut messages = Vec::new();
    for line in &lines {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line:?}"));
        assert!(object.is_object(), "not an object: {line}");
        let level = object["level"].as_str().unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "level {level:?} in {line}"
        );
        let message = object["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message in {line}"));
        messages.push(message.to_string());
    }
    for expected in ["recovered", "ready", "journal synced; bye"] {
        assert!(
            messages.iter().any(|message| message == expected),
            "no {expected:?} log line in {messages:?}"
        );
    }
}

#[test]
fn an_invalid_log_level_stops_serve_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    for (name, value) in [
        ("STAMPEDE_LOG_LEVEL", "stampede=loud"),
        ("STAMPEDE_LOG_LEVEL", "info,["),
        ("STAMPEDE_LOG_FORMAT", "xml"),
    ] {
        let (status, output) = common::run_to_exit(
            &[
                "serve".as_ref(),
                "--listen".as_ref(),
                "127.0.0.1:0".as_ref(),
                "--data-dir".as_ref(),
                data_dir.as_os_str(),
            ],
            &[(name, value)],
            Duration::from_secs(10),
        );
        let status = status.unwrap_or_else(|| panic!("{name}={value}: still running\n{output}"));
        assert_eq!(status.code(), Some(2), "{name}={value}: {status}\n{output}");
        assert!(
            output.contains(value) && output.contains("log."),
            "{name}={value}: the message names the key and the value: {output}"
        );
        assert!(
            !output.contains("listening"),
            "{name}={value}: refused before listening: {output}"
        );
    }
    assert!(
        !data_dir.exists(),
        "nothing was created for a refused config"
    );
}
