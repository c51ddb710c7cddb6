//! Judging answers when they arrive, against what the client knows: a wrong answer is a
//! violation, a lost one makes the request uncertain (`doubt`).
//!
//! Owns the rules of what an answer may say given the order's candidate states; the journal
//! is not consulted here (the audit does that).

use super::*;

/// Judges the answer to `POST /v1/orders` with the order's own body.
pub(crate) fn judge_order_answer(
    model: &mut Model,
    index: usize,
    answer: Result<Answer, String>,
    op: &str,
) {
    model.touched.insert(index);
    let answer = match answer {
        Err(class) => {
            model.count(format!("{op} error {class}"));
            let order = &mut model.orders[index];
            order.busy = false;
            order.lost += 1;
            if order.seq.is_none() {
                // Accepted or not, nobody knows; a stopped engine may still decide it.
                order.doubt = true;
                order.known = None;
                order.last = None;
            }
            return;
        }
        Ok(answer) => answer,
    };
    model.count(format!("{op} {}", answer.class()));
    let order = &mut model.orders[index];
    order.busy = false;
    let id = order.id.clone();
    let mut wrong = None;
    match (answer.status, answer.code()) {
        (201, _) => {
            let seq = answer.json["seq"].as_u64();
            if let Some(earlier) = order.seq {
                wrong = Some(format!(
                    "order {id} answered 201 again ({}), it had seq {earlier}",
                    answer.text
                ));
            } else if answer.replayed
                || seq.is_none_or(|seq| answer.json != order.expected_replay(seq))
            {
                wrong = Some(format!("201 body of {id}: {}", answer.text));
            } else {
                order.seq = seq;
                order.acked_at = Some((model.cycle, Instant::now()));
                if !order.doubt {
                    order.known = Some(initial_status(order.payment).to_string());
                    order.last = Some("accepted");
                }
            }
            if let Some(seq) = seq {
                model.max_seq_seen = model.max_seq_seen.max(seq);
                model.acked_recently.push(index);
            }
        }
        (200, _) => {
            let seq = answer.json["seq"].as_u64();
            match (order.seq, seq) {
                _ if !answer.replayed => {
                    wrong = Some(format!("200 for {id} without Idempotent-Replayed"));
                }
                (_, None) => wrong = Some(format!("200 replay of {id}: {}", answer.text)),
                (Some(known), Some(seq)) => {
                    if answer.json != order.expected_replay(known) {
                        wrong = Some(format!(
                            "replay of {id} (seq {known}) answered {} (seq {seq})",
                            answer.text
                        ));
                    }
                }
                (None, Some(seq)) if order.doubt => {
                    if answer.json == order.expected_replay(seq) {
                        // An attempt whose answer was lost was accepted: resolved.
                        order.seq = Some(seq);
                        order.acked_at = Some((model.cycle, Instant::now()));
                        model.acked_recently.push(index);
                    } else {
                        wrong = Some(format!("200 replay of {id}: {}", answer.text));
                    }
                }
                (None, Some(_)) => {
                    wrong = Some(format!(
                        "order {id} replayed ({}) though it was never accepted: every answer \
                         since the last audit was a refusal",
                        answer.text
                    ));
                }
            }
        }
        (409, "sold_out" | "purchase_limit") => {
            if let Some(seq) = order.seq {
                wrong = Some(format!(
                    "retry of durable order {id} (seq {seq}) refused: {}",
                    answer.text
                ));
            }
        }
        _ if answer.shed() => {}
        _ => {
            wrong = Some(format!(
                "order {id} ({}): unexpected {} {}",
                order.body, answer.status, answer.text
            ));
        }
    }
    if let Some(message) = wrong {
        model.violation(message);
    }
}

/// The status named by an `invalid_transition` detail: "order o1 is paid; ship is not ...".
pub(crate) fn refused_status<'a>(detail: &'a str, id: &str) -> Option<&'a str> {
    detail
        .strip_prefix(&format!("order {id} is "))?
        .split(';')
        .next()
}

/// Judges the answer to `POST /v1/orders/{id}/{action}` (`sku`: an exchange's SKU).
pub(crate) fn judge_action_answer(
    model: &mut Model,
    index: usize,
    action: &'static str,
    sku: Option<&'static str>,
    answer: Result<Answer, String>,
) {
    model.touched.insert(index);
    let answer = match answer {
        Err(class) => {
            model.count(format!("action.{action} error {class}"));
            let order = &mut model.orders[index];
            order.busy = false;
            order.lost += 1;
            order.doubt = true;
            order.known = None;
            order.last = None;
            if let Some(sku) = sku {
                order.exchanges.push((sku, false));
            }
            return;
        }
        Ok(answer) => answer,
    };
    model.count(format!("action.{action} {}", answer.class()));
    let order = &mut model.orders[index];
    order.busy = false;
    let id = order.id.clone();
    let candidates = order.candidates();
    let last = order.last_known();
    let mut wrong = None;
    match (answer.status, answer.code()) {
        (200, _) => {
            let target = target(action);
            let allowed = candidates.iter().any(|&from| {
                if answer.replayed {
                    may_replay(from, action, last)
                } else {
                    transition(from, action).is_some()
                }
            });
            let history = answer.json["history"].as_array();
            // With retention the history may start after the acceptance, or (a replay of an
            // old action) hold nothing at all.
            let complete = answer.json["history_complete"] != false;
            let newest_gone = !complete && history.is_none_or(|h| h.is_empty());
            let newest = history.and_then(|h| h.last());
            let last_event = newest.map(|e| e["event"].clone());
            let first_seq = history
                .and_then(|h| h.first())
                .and_then(|e| e["seq"].as_u64());
            // An exchange's record names its SKU; nothing else happens to a shipped order
            // while its client waits, so the newest record is this exchange.
            let exchange_seen = sku.is_none_or(|sku| {
                newest.is_some_and(|e| e["event"] == "exchange" && e["sku"] == sku)
                    && !answer.replayed
            });
            // A replay's newest record may be gone (retention).
            let newest_known = !(order.doubt || answer.replayed && newest_gone);
            if !allowed
                || answer.json["order_id"] != id.as_str()
                || (!order.doubt && answer.json["status"] != target)
                || (newest_known && last_event != Some(json!(action)))
                || !exchange_seen
                || (complete && order.seq.is_some_and(|seq| first_seq != Some(seq)))
            {
                wrong = Some(format!(
                    "{action} of {id} (could be {candidates:?}, latest {last:?}, replayed {}) \
                     answered 200 {}",
                    answer.replayed, answer.text
                ));
                // Judge what follows as after a lost answer.
                order.doubt = true;
                order.known = None;
                order.last = None;
                if let Some(sku) = sku {
                    order.exchanges.push((sku, false));
                }
            } else {
                if !order.doubt {
                    order.known = Some(target.to_string());
                    order.last = Some(action);
                }
                if let Some(sku) = sku {
                    order.exchanges.push((sku, true));
                }
                // The record's seq: the newest of the history, or (a replay) the latest
                // record of this action.
                let seq = if answer.replayed {
                    history.and_then(|h| h.iter().rev().find(|e| e["event"] == action))
                } else {
                    newest
                }
                .and_then(|e| e["seq"].as_u64());
                let cycle = model.cycle;
                model.actions_done.push(ActionAck {
                    index,
                    action,
                    sku,
                    seq,
                    cycle,
                    at: Instant::now(),
                });
            }
        }
        (409, "invalid_transition") => {
            let detail = answer.json["detail"].as_str().unwrap_or("");
            match refused_status(detail, &id).map(status_static) {
                Some(from) if candidates.contains(&from) && may_refuse(from, action, last) => {
                    if !order.doubt && order.known.as_deref() != Some(from) {
                        // The payment timer moved it (pending to expired).
                        order.known = Some(from.to_string());
                        order.last = None;
                    }
                }
                _ => {
                    wrong = Some(format!(
                        "{action} of {id} (could be {candidates:?}, latest {last:?}) refused: {}",
                        answer.text
                    ));
                }
            }
        }
        // The state is judged before the stock: only an order that may take an exchange
        // hears that its SKU has no unit left.
        (409, "sold_out")
            if sku.is_some()
                && candidates
                    .iter()
                    .any(|&from| transition(from, action).is_some()) => {}
        (404, "unknown_order") => {
            if let Some(seq) = order.seq {
                wrong = Some(format!(
                    "{action} of {id} (accepted at seq {seq}): 404 {}",
                    answer.text
                ));
            }
        }
        _ if answer.shed() => {}
        _ => {
            wrong = Some(format!(
                "{action} of {id} (could be {candidates:?}): unexpected {} {}",
                answer.status, answer.text
            ));
            // Nothing is known of what it did: judge what follows as after a lost answer.
            order.doubt = true;
            order.known = None;
            order.last = None;
            if let Some(sku) = sku {
                order.exchanges.push((sku, false));
            }
        }
    }
    if let Some(message) = wrong {
        model.violation(message);
    }
}
