//! The `scalpers` scenario, written against the contract's "Order review" section: address
//! rings, client bursts behind `X-Forwarded-For`, deny-listed users, and ordinary buyers beside
//! them, then checks that review held (or refused) what the rules say.
//!
//! Setup reads the engine's rules (`GET /v1/review/rules`), sets the scenario's own (`PUT`,
//! admin) and puts the old ones back at the end. An engine without order review (the `PUT`
//! answers 404 or 405) is reported as such: the traffic still runs, the review checks are
//! skipped, and the run does not fail for it.
//!
//! The traffic is a fixed number of orders (not a duration), so every expectation is exact:
//!
//! | group | orders | expected |
//! |---|---|---|
//! | [`RINGS`] rings of [`RING_MEMBERS`] buyers, one address per ring (spelled with other case, spaces, punctuation) | one each, in turn | the first [`ADDRESS_BUYERS_MAX`] not held for `address_shared`, the rest held with it |
//! | [`BURST_CLIENTS`] clients (`X-Forwarded-For`) | [`BURST_ORDERS`] each, back to back, distinct buyers | past [`CLIENT_ORDERS_PER_MIN`], held with `client_burst` where the engine trusts this peer's forwarded-for (reported, not required) |
//! | [`DENIED_USERS`] deny-listed users | [`DENIED_ORDERS`] each | 403 `denied`, nothing taken |
//! | [`ORDINARY`] ordinary buyers, own address and client | one each | never held for `address_shared` |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::saleday::Check;
use crate::scenario::SkuSpec;
use crate::target::http::{AdminClient, Connection, Endpoint, HttpAnswer, admin_request};

pub const NAME: &str = "scalpers";
pub const DESCRIPTION: &str = "order review: address rings, client bursts behind \
     X-Forwarded-For, deny-listed users (403), held orders; tolerates an engine without review";

pub const RINGS: usize = 4;
pub const RING_MEMBERS: usize = 8;
pub const ADDRESS_BUYERS_MAX: usize = 3;
pub const BURST_CLIENTS: usize = 3;
pub const BURST_ORDERS: usize = 30;
pub const CLIENT_ORDERS_PER_MIN: usize = 20;
pub const DENIED_USERS: usize = 3;
pub const DENIED_ORDERS: usize = 4;
pub const ORDINARY: usize = 40;

#[derive(Debug, Clone)]
pub struct ScalpersSettings {
    pub url: String,
    pub admin_token: String,
    pub run_id: String,
    pub timeout: Duration,
}

/// Which group an order belongs to, and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Ring number, member number.
    Ring(usize, usize),
    /// Client number, order number.
    Burst(usize, usize),
    Denied,
    Ordinary,
}

/// One order's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub order_id: String,
    pub group: Group,
    pub status: u16,
    pub error: Option<String>,
    pub order_status: Option<String>,
    pub review: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalpersSummary {
    pub tool: &'static str,
    pub scenario: &'static str,
    pub run_id: String,
    pub url: String,
    /// False when the engine has no order review (`PUT /v1/review/rules` was 404 or 405).
    pub review_supported: bool,
    pub review_note: String,
    /// Per group: answers by "status[/error or order status]".
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub exit_code: u8,
}

fn rules_body(run_id: &str) -> String {
    let deny: Vec<String> = (0..DENIED_USERS)
        .map(|i| format!("\"{run_id}-deny{i}\""))
        .collect();
    format!(
        r#"{{"address_buyers_max":{ADDRESS_BUYERS_MAX},"client_orders_per_min":{CLIENT_ORDERS_PER_MIN},"deny_users":[{}]}}"#,
        deny.join(",")
    )
}

/// The ring's address, spelled differently by each member (the engine compares it after
/// normalising case, spaces and punctuation).
fn ring_address(ring: usize, member: usize) -> String {
    let line = match member % 3 {
        0 => format!("12 Harbour Road, Unit {ring}"),
        1 => format!("12  HARBOUR road unit {ring}"),
        _ => format!("12 harbour Road. Unit {ring}."),
    };
    format!(r#"{{"name":"buyer {member}","line1":"{line}","city":"Port"}}"#)
}

#[derive(Deserialize)]
struct OrderAnswer {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    review: Vec<String>,
    #[serde(default)]
    error: Option<String>,
}

struct Sender {
    endpoint: Endpoint,
    connection: Option<Connection>,
    timeout: Duration,
}

impl Sender {
    async fn post(&mut self, body: String, forwarded_for: &str) -> Option<HttpAnswer> {
        for _attempt in 0..2 {
            if self.connection.is_none() {
                let opened =
                    tokio::time::timeout(self.timeout, Connection::open(&self.endpoint)).await;
                self.connection = Some(opened.ok()?.ok()?);
            }
            let mut request = admin_request(
                &self.endpoint,
                None,
                Method::POST,
                "/v1/orders",
                Bytes::from(body.clone()),
            )
            .ok()?;
            request.headers_mut().insert(
                "x-forwarded-for",
                HeaderValue::from_str(forwarded_for).ok()?,
            );
            let connection = self.connection.as_mut()?;
            match tokio::time::timeout(self.timeout, connection.send(request)).await {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(crate::target::SendError::NotSent(_))) => self.connection = None,
                _ => {
                    self.connection = None;
                    return None;
                }
            }
        }
        None
    }

    async fn place(
        &mut self,
        order_id: String,
        user: &str,
        sku: &str,
        address: &str,
        forwarded_for: &str,
        group: Group,
    ) -> Placed {
        let body = format!(
            r#"{{"order_id":"{order_id}","user_id":"{user}","sku":"{sku}","qty":1,"payment":"prepaid","address":{address}}}"#
        );
        let answer = self.post(body, forwarded_for).await;
        let (status, parsed) = match &answer {
            Some(answer) => (
                answer.status,
                serde_json::from_slice::<OrderAnswer>(&answer.body).ok(),
            ),
            None => (0, None),
        };
        Placed {
            order_id,
            group,
            status,
            error: parsed.as_ref().and_then(|p| p.error.clone()),
            order_status: parsed.as_ref().and_then(|p| p.status.clone()),
            review: parsed.map(|p| p.review).unwrap_or_default(),
        }
    }
}

fn held_for(placed: &Placed, rule: &str) -> bool {
    placed.status == 201
        && placed.order_status.as_deref() == Some("held")
        && placed.review.iter().any(|r| r == rule)
}

/// The review checks from the answers (only meaningful where the engine has review).
pub fn review_checks(placed: &[Placed]) -> (Vec<Check>, String) {
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    for p in placed.iter().filter(|p| p.group == Group::Denied) {
        if p.status != 403 || p.error.as_deref() != Some("denied") {
            problems.push(format!(
                "{}: answered {} {:?}, expected 403 denied",
                p.order_id, p.status, p.error
            ));
        }
    }
    checks.push(check("deny_listed_users_refused", &problems, "403 denied"));

    let mut problems = Vec::new();
    for p in placed {
        if let Group::Ring(_, member) = p.group {
            let held = held_for(p, "address_shared");
            if member >= ADDRESS_BUYERS_MAX && !held {
                problems.push(format!(
                    "{} (ring member {member}): not held for address_shared (answered {} {:?})",
                    p.order_id, p.status, p.order_status
                ));
            }
            if member < ADDRESS_BUYERS_MAX && held {
                problems.push(format!(
                    "{} (ring member {member}): held for address_shared too early",
                    p.order_id
                ));
            }
        }
    }
    checks.push(check(
        "address_rings_held",
        &problems,
        "each ring's buyers past the limit held with address_shared, the first ones not",
    ));

    let mut problems = Vec::new();
    for p in placed {
        if p.status == 201 && p.order_status.as_deref() == Some("held") && p.review.is_empty() {
            problems.push(format!("{}: held without a review rule", p.order_id));
        }
        if p.group == Group::Ordinary && held_for(p, "address_shared") {
            problems.push(format!(
                "{}: an ordinary buyer held for its address",
                p.order_id
            ));
        }
    }
    checks.push(check(
        "held_orders_name_their_rules",
        &problems,
        "held orders carry status held and their rules; ordinary buyers are not held for an address",
    ));

    // Client bursts: only reported, since whether this peer's X-Forwarded-For is trusted is
    // the engine's configuration.
    let late: Vec<&Placed> = placed
        .iter()
        .filter(|p| matches!(p.group, Group::Burst(_, n) if n >= CLIENT_ORDERS_PER_MIN))
        .collect();
    let held = late.iter().filter(|p| held_for(p, "client_burst")).count();
    let note = format!(
        "client bursts: {held} of {} orders past {CLIENT_ORDERS_PER_MIN}/min from one \
         forwarded-for client held with client_burst{}",
        late.len(),
        if held == 0 {
            " (none: the engine does not trust this peer's X-Forwarded-For, or counts the peer)"
        } else {
            ""
        }
    );
    (checks, note)
}

fn check(name: &'static str, problems: &[String], ok: &str) -> Check {
    Check {
        name,
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            ok.to_owned()
        } else {
            format!(
                "{} problem(s): {}",
                problems.len(),
                problems[..problems.len().min(5)].join("; ")
            )
        },
    }
}

pub async fn run(settings: ScalpersSettings) -> anyhow::Result<ScalpersSummary> {
    let endpoint = Endpoint::resolve(&settings.url).await?;
    let mut admin = AdminClient::new(endpoint.clone(), Some(&settings.admin_token))?;
    admin.check_ready().await?;
    let sku = SkuSpec {
        name: format!("SCALP-{}-0", settings.run_id),
        stock: 100_000,
        per_user_limit: 0,
        max_per_order: 5,
        payment_timeout_s: 86_400,
    };
    admin
        .check_run_id_unused(&settings.run_id, std::slice::from_ref(&sku))
        .await?;
    admin
        .put_sku(&sku)
        .await
        .context("creating the scalpers SKU")?;

    let before = admin
        .call(Method::GET, "/v1/review/rules", Bytes::new())
        .await?;
    let set = admin
        .call(
            Method::PUT,
            "/v1/review/rules",
            Bytes::from(rules_body(&settings.run_id)),
        )
        .await?;
    let (review_supported, mut review_note) = match set.status {
        200 | 204 => (true, String::new()),
        404 | 405 => (
            false,
            format!(
                "the engine has no order review (PUT /v1/review/rules answered {}): review \
                 checks skipped",
                set.status
            ),
        ),
        401 => bail!("the engine refused the admin token for PUT /v1/review/rules (401)"),
        status => bail!(
            "PUT /v1/review/rules answered {status}: {}",
            String::from_utf8_lossy(&set.body).trim()
        ),
    };

    let run_id = settings.run_id.clone();
    let mut sender = Sender {
        endpoint: endpoint.clone(),
        connection: None,
        timeout: settings.timeout,
    };
    let mut placed = Vec::new();
    // One sender, in order: a ring's members arrive one after another, so "already used by
    // this many other buyers" is exact.
    for ring in 0..RINGS {
        for member in 0..RING_MEMBERS {
            placed.push(
                sender
                    .place(
                        format!("{run_id}-r{ring}-{member}"),
                        &format!("{run_id}-ring{ring}-{member}"),
                        &sku.name,
                        &ring_address(ring, member),
                        &format!("203.0.113.{}", 1 + ring * RING_MEMBERS + member),
                        Group::Ring(ring, member),
                    )
                    .await,
            );
        }
    }
    for client in 0..BURST_CLIENTS {
        for n in 0..BURST_ORDERS {
            placed.push(
                sender
                    .place(
                        format!("{run_id}-b{client}-{n}"),
                        &format!("{run_id}-burst{client}-{n}"),
                        &sku.name,
                        &format!(r#"{{"line1":"{n} Burst Lane {client}"}}"#),
                        &format!("198.51.100.{}", 1 + client),
                        Group::Burst(client, n),
                    )
                    .await,
            );
        }
    }
    for user in 0..DENIED_USERS {
        for n in 0..DENIED_ORDERS {
            placed.push(
                sender
                    .place(
                        format!("{run_id}-d{user}-{n}"),
                        &format!("{run_id}-deny{user}"),
                        &sku.name,
                        &format!(r#"{{"line1":"{user} Deny Street {n}"}}"#),
                        &format!("192.0.2.{}", 1 + user),
                        Group::Denied,
                    )
                    .await,
            );
        }
    }
    for n in 0..ORDINARY {
        placed.push(
            sender
                .place(
                    format!("{run_id}-o{n}"),
                    &format!("{run_id}-buyer{n}"),
                    &sku.name,
                    &format!(r#"{{"line1":"{n} Ordinary Avenue"}}"#),
                    &format!("10.{}.{}.1", n / 200, n % 200),
                    Group::Ordinary,
                )
                .await,
        );
    }

    if review_supported && before.status == 200 {
        let restored = admin
            .call(Method::PUT, "/v1/review/rules", before.body.clone())
            .await;
        if !restored.is_ok_and(|a| a.status == 200 || a.status == 204) {
            review_note.push_str("; the engine's earlier rules could not be put back");
        }
    }

    let mut answers: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for p in &placed {
        let group = match p.group {
            Group::Ring(..) => "address_ring",
            Group::Burst(..) => "client_burst",
            Group::Denied => "deny_listed",
            Group::Ordinary => "ordinary",
        };
        let answer = match (&p.error, &p.order_status) {
            (Some(error), _) => format!("{} {error}", p.status),
            (None, Some(status)) if !p.review.is_empty() => {
                format!("{} {status} [{}]", p.status, p.review.join(","))
            }
            (None, Some(status)) => format!("{} {status}", p.status),
            (None, None) => p.status.to_string(),
        };
        *answers
            .entry(group.to_owned())
            .or_default()
            .entry(answer)
            .or_default() += 1;
    }
    let checks = if review_supported {
        let (checks, note) = review_checks(&placed);
        review_note = note;
        checks
    } else {
        Vec::new()
    };
    let passed = checks.iter().all(|c| c.passed);
    Ok(ScalpersSummary {
        tool: "stampede-load",
        scenario: NAME,
        run_id: settings.run_id,
        url: settings.url,
        review_supported,
        review_note,
        answers,
        checks,
        passed,
        exit_code: if passed {
            crate::report::exit::OK
        } else {
            crate::report::exit::AUDIT_FAILED
        },
    })
}

pub fn render_text(summary: &ScalpersSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stampede-load scalpers  run {}  {}",
        summary.run_id, summary.url
    );
    let _ = writeln!(out, "review: {}", summary.review_note);
    for (group, answers) in &summary.answers {
        let list: Vec<String> = answers.iter().map(|(a, c)| format!("{a}: {c}")).collect();
        let _ = writeln!(out, "  {group:<14} {}", list.join(", "));
    }
    if summary.review_supported {
        let _ = writeln!(
            out,
            "review checks: {}",
            if summary.passed { "PASSED" } else { "FAILED" }
        );
        for check in &summary.checks {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if check.passed { "ok" } else { "FAIL" },
                check.name,
                check.detail
            );
        }
    }
    out
}

pub fn render_html(summary: &ScalpersSummary) -> String {
    let text = render_text(summary)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>stampede-load scalpers\
         </title></head><body><h1>scalpers</h1><pre>{text}</pre></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(group: Group, status: u16, order_status: Option<&str>, review: &[&str]) -> Placed {
        Placed {
            order_id: format!("{group:?}"),
            group,
            status,
            error: (status == 403).then(|| "denied".to_owned()),
            order_status: order_status.map(str::to_owned),
            review: review.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn review_answers_are_judged_by_the_contracts_rules() {
        let mut good: Vec<Placed> = (0..RING_MEMBERS)
            .map(|m| {
                if m >= ADDRESS_BUYERS_MAX {
                    placed(Group::Ring(0, m), 201, Some("held"), &["address_shared"])
                } else {
                    placed(Group::Ring(0, m), 201, Some("pending_payment"), &[])
                }
            })
            .collect();
        good.push(placed(Group::Denied, 403, None, &[]));
        good.push(placed(Group::Ordinary, 201, Some("pending_payment"), &[]));
        good.push(placed(
            Group::Burst(0, CLIENT_ORDERS_PER_MIN),
            201,
            Some("held"),
            &["client_burst"],
        ));
        let (checks, note) = review_checks(&good);
        assert!(checks.iter().all(|c| c.passed), "{checks:?}");
        assert!(note.contains("1 of 1"), "{note}");

        // A deny-listed user let through, a ring member past the limit not held, a held
        // order without its rule.
        let bad = vec![
            placed(Group::Denied, 201, Some("pending_payment"), &[]),
            placed(
                Group::Ring(1, ADDRESS_BUYERS_MAX),
                201,
                Some("pending_payment"),
                &[],
            ),
            placed(Group::Ordinary, 201, Some("held"), &[]),
        ];
        let (checks, note) = review_checks(&bad);
        assert!(checks.iter().all(|c| !c.passed), "{checks:?}");
        assert!(note.contains("none"), "{note}");
    }

    #[test]
    fn a_rings_address_is_spelled_three_ways() {
        let spellings: std::collections::HashSet<String> =
            (0..3).map(|m| ring_address(2, m)).collect();
        assert_eq!(spellings.len(), 3);
        for m in 0..3 {
            let value: serde_json::Value = serde_json::from_str(&ring_address(2, m)).unwrap();
            assert!(
                value["line1"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains("harbour")
            );
        }
        let rules: serde_json::Value = serde_json::from_str(&rules_body("r1")).unwrap();
        assert_eq!(rules["deny_users"][0], "r1-deny0");
    }
}
