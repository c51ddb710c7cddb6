//! Power cuts: what the journal held at a kill (read from the files, page cache included),
//! where it ends after a cut (the engine's own recovery scan on a copy), and what the model
//! makes of a loss.
//!
//! The rules for records a cut took (`Auditor::after_cut`):
//! - under every policy: what survived a cut survives every later cut (it is durable), and a
//!   cut takes nothing before the newest segment at the kill (rotation syncs the closed one);
//! - `always`: the model is left as it is; the strict audit must hold (nothing acknowledged
//!   may be lost);
//! - `interval` and `none`: each acknowledged order, action (every answer that stood for the
//!   record, replays included) and restock whose record lies beyond the surviving end was
//!   acknowledged after the last restart and within the policy's window (`interval`: at most
//!   `FSYNC_INTERVAL_MS` + `LOSS_SLACK` of engine time before the kill, a SIGSTOP pause not
//!   counted; `none`: its seq is in the segment that was current at the kill); it then becomes
//!   uncertain, as if its answer had been lost (the order may or may not be journaled, at most
//!   once; a restock's SKU may show any stock of this cycle or the one before), and the fold
//!   and the clients' reads forget what lay beyond the surviving end.

use super::*;

/// `journal.fsync_interval_ms` of the `interval` runs (the engine's default, set explicitly).
pub(crate) const FSYNC_INTERVAL_MS: u64 = 100;
/// How much longer than the interval an acknowledged record may stay unsynced: the sync
/// thread's wake-up, the `fdatasync` itself under load, and the client's side of the answer.
pub(crate) const LOSS_SLACK: Duration = Duration::from_millis(400);

/// The journal as the files held it at a SIGKILL (the page cache: before the cut), from the
/// last seq known durable on: what a cut may take.
#[derive(Debug, Default)]
pub(crate) struct AtKill {
    pub(crate) at: Option<Instant>,
    /// When the engine was SIGSTOPped in the phase, and until when (its sync thread did not
    /// run then).
    pub(crate) paused: Option<(Instant, Instant)>,
    /// The first seq of the newest segment file.
    pub(crate) newest_first: u64,
    /// Every record after the last durable seq, by seq, as `GET /v1/journal` shows it.
    pub(crate) records: BTreeMap<u64, Value>,
}

impl AtKill {
    /// Engine time from `acked` to the kill: the SIGSTOP pause does not count.
    pub(crate) fn age(&self, acked: Instant) -> Duration {
        let Some(at) = self.at else {
            return Duration::ZERO;
        };
        let mut age = at.saturating_duration_since(acked);
        if let Some((from, to)) = self.paused {
            let (from, to) = (from.max(acked), to.min(at));
            age = age.saturating_sub(to.saturating_duration_since(from));
        }
        age
    }
}

/// The segments of `dir` that may hold a record after `after`, oldest first.
pub(crate) fn tail_segments(dir: &std::path::Path, after: u64) -> Vec<(u64, std::path::PathBuf)> {
    let segments = stampede::journal::list_segments(dir).expect("list journal segments");
    let start = segments
        .iter()
        .rposition(|(first, _)| *first <= after + 1)
        .unwrap_or(0);
    segments[start..].to_vec()
}

/// The journal's records after `after`, read from its files as they are now (valid frames,
/// in order, up to the first that is not), and the first seq of the newest segment.
pub(crate) fn journal_after(dir: &std::path::Path, after: u64) -> (u64, BTreeMap<u64, Value>) {
    use stampede::journal::record::{self, FrameCheck, SEGMENT_HEADER_BYTES};
    let segments = tail_segments(dir, after);
    let newest_first = segments.last().map_or(0, |(first, _)| *first);
    let mut records = BTreeMap::new();
    for (_, path) in segments {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        // Frames are 8-aligned in the file; an aligned buffer keeps their payloads so.
        let mut buffer = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        buffer.extend_from_slice(&bytes);
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset < buffer.len() {
            let FrameCheck::Valid {
                seq,
                payload,
                next_offset,
            } = record::check_frame(&buffer, offset)
            else {
                break;
            };
            if seq > after
                && let Ok(archived) = record::access_record(payload)
            {
                records.insert(seq, archived.to_json(seq));
            }
            offset = next_offset;
        }
    }
    (newest_first, records)
}

/// The last seq that survived a cut, by the engine's own recovery scan, run on a copy of
/// the segments that may hold a record after `after` (the scan cuts a torn tail off).
pub(crate) fn surviving_end(dir: &std::path::Path, after: u64) -> Result<u64, String> {
    let copy = tempfile::Builder::new()
        .prefix("stampede-survived")
        .tempdir()
        .map_err(|e| e.to_string())?;
    for (_, path) in tail_segments(dir, after) {
        let name = path.file_name().expect("segment file name");
        std::fs::copy(&path, copy.path().join(name)).map_err(|e| e.to_string())?;
    }
    let report = stampede::journal::recover(copy.path(), &mut |_, _| Ok(()))
        .map_err(|e| format!("the recovery scan refuses the cut journal: {e}"))?;
    Ok(report.tail.next_seq - 1)
}

/// Losses a power cut caused, over the whole run.
#[derive(Debug, Default)]
pub(crate) struct Losses {
    /// Cuts that took at least one record, and the records they took.
    pub(crate) cuts_with_loss: u64,
    pub(crate) records: u64,
    /// Acknowledged operations whose records a cut took (each within its window).
    pub(crate) orders: u64,
    pub(crate) actions: u64,
    pub(crate) restocks: u64,
    /// Records the audit or the clients had read that a cut took (the fold rewound).
    pub(crate) forgotten: u64,
    /// The largest engine time from an acknowledgement to the kill that took its record.
    pub(crate) max_age: Duration,
    /// The largest number of records one cut took.
    pub(crate) max_records: u64,
}

impl Auditor {
    /// After a cut (and every cut of the starts killed after it), before the audit: checks
    /// that what survived an earlier cut is still there; with a policy that may lose
    /// acknowledged records (`interval`, `none`), checks that each acknowledged record the
    /// cut took is within the policy's window and makes it uncertain, and rewinds the fold
    /// to the surviving end. `survived`: the journal's end after the first cut. With
    /// `always` the model is left as it is: the strict audit must hold.
    pub(crate) fn after_cut(
        &mut self,
        model: &Mutex<Model>,
        kill: &AtKill,
        survived: u64,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        if survived < self.durable_end {
            wrong.push(format!(
                "the journal ends at seq {survived} after a cut; seq {} had survived an \
                 earlier cut (the files were durable then)",
                self.durable_end
            ));
        }
        let lost: Vec<(u64, Value)> = kill
            .records
            .range(survived + 1..)
            .map(|(seq, record)| (*seq, record.clone()))
            .collect();
        if !lost.is_empty() {
            self.losses.cuts_with_loss += 1;
            self.losses.records += lost.len() as u64;
            self.losses.max_records = self.losses.max_records.max(lost.len() as u64);
        }
        // Rotation syncs the closed segment under every policy: only the current one's
        // unsynced tail can go.
        if !lost.is_empty() && survived + 1 < kill.newest_first {
            wrong.push(format!(
                "a cut took seq {} on, before the newest segment (from seq {}): rotation \
                 syncs every closed segment",
                survived + 1,
                kill.newest_first
            ));
        }
        if self.policy == Some("always") || self.policy.is_none() {
            return wrong;
        }
        if self.fold.last_seq() > survived {
            self.losses.forgotten += self.fold.last_seq() - survived;
            self.fold.rewind(survived);
        }
        self.lag_next = self.lag_next.min(survived);
        let mut model = model.lock().unwrap();
        let cycle = model.cycle;
        let before = model.seen.len();
        model.seen.retain(|&seq, _| seq <= survived);
        self.losses.forgotten += (before - model.seen.len()) as u64;
        model.max_seq_seen = model.max_seq_seen.min(survived);
        let by_id: HashMap<String, usize> = model
            .orders
            .iter()
            .enumerate()
            .map(|(index, order)| (order.id.clone(), index))
            .collect();
        let policy = self.policy.unwrap_or("");
        // Whether an acknowledgement (`acked`, in `acked_cycle`) of the record `seq` may be
        // lost by this cut.
        let mut within = |what: String, seq: u64, acked_cycle: u64, acked: Instant| {
            let age = kill.age(acked);
            self.losses.max_age = self.losses.max_age.max(age);
            let window = Duration::from_millis(FSYNC_INTERVAL_MS) + LOSS_SLACK;
            if acked_cycle != cycle {
                Some(format!(
                    "{what} (seq {seq}) was acknowledged in cycle {acked_cycle}, before the \
                     last restart (whose cut left it durable), and a cut took it"
                ))
            } else if policy == "interval" && age > window {
                Some(format!(
                    "{what} (seq {seq}) was acknowledged {age:?} before the kill and a cut \
                     took it: fsync interval promises at most {FSYNC_INTERVAL_MS} ms (+ \
                     {LOSS_SLACK:?} slack)"
                ))
            } else if policy == "none" && seq < kill.newest_first {
                Some(format!(
                    "{what} (seq {seq}) was in a closed segment (the newest began at seq {}) \
                     and a cut took it",
                    kill.newest_first
                ))
            } else {
                None
            }
        };
        for (seq, record) in lost {
            let kind = type_static(record["type"].as_str().unwrap_or(""));
            if record["type"] == "sku" {
                let name = record["sku"].as_str().unwrap_or("");
                let stock = record["stock_total"].as_u64().unwrap_or(0);
                let Some(sku) = SKUS.iter().position(|spec| spec.name == name) else {
                    continue;
                };
                if let Some(at) = model
                    .restocks_done
                    .iter()
                    .position(|&(s, v, _)| s == sku && v == stock)
                {
                    let (_, _, (acked_cycle, acked)) = model.restocks_done.remove(at);
                    self.losses.restocks += 1;
                    wrong.extend(within(
                        format!("restock of {name} to {stock}"),
                        seq,
                        acked_cycle,
                        acked,
                    ));
                }
                // The stock is now any value of this cycle, or the one before it.
                let register = &mut model.stock[sku];
                let earlier: Vec<u64> = register
                    .base
                    .into_iter()
                    .chain(register.acked.clone())
                    .collect();
                register.maybe.extend(earlier);
                continue;
            }
            let id = record["order_id"].as_str().unwrap_or("");
            let Some(&index) = by_id.get(id) else {
                continue;
            };
            model.touched.insert(index);
            let order = &mut model.orders[index];
            order.doubt = true;
            order.known = None;
            order.last = None;
            if kind == "accepted" {
                if order.seq == Some(seq) {
                    if let Some((acked_cycle, acked)) = order.acked_at.take() {
                        self.losses.orders += 1;
                        wrong.extend(within(format!("order {id}"), seq, acked_cycle, acked));
                    }
                    order.seq = None;
                }
                // Uncertain, as after a lost answer: the final retries resolve it.
                order.lost += 1;
                continue;
            }
            // Every answer that stood for this record (a replay repeats the first's seq).
            let (taken, kept): (Vec<ActionAck>, Vec<ActionAck>) =
                std::mem::take(&mut model.actions_done)
                    .into_iter()
                    .partition(|ack| ack.index == index && ack.seq == Some(seq));
            model.actions_done = kept;
            if !taken.is_empty() {
                self.losses.actions += 1;
            }
            for ack in taken {
                wrong.extend(within(
                    format!("{} of {id}", ack.action),
                    seq,
                    ack.cycle,
                    ack.at,
                ));
                if let Some(sku) = ack.sku {
                    let order = &mut model.orders[index];
                    if let Some(exchange) = order
                        .exchanges
                        .iter_mut()
                        .rev()
                        .find(|(s, certain)| *s == sku && *certain)
                    {
                        exchange.1 = false;
                    }
                }
            }
        }
        wrong
    }
}
