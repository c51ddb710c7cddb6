//! Tests of the writer, a file per concern: [`group_commit`] (order, gap-free seqs, shared
//! fsyncs, the durable watermark), [`rotation`], [`preallocation`], [`power_loss`] (power cuts
//! and flipped bits on a simulated disk, then the real recovery scan), [`disk_full`] (stop and
//! resume) and [`fatal_errors`] (failures that stop the journal for good). [`sim`] holds the
//! simulated-disk workloads they share; here, the helpers of the tests on real files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::journal::fixtures::{batch_of, looks_torn, new_tail, next_rand, to_owned_record};
use crate::journal::record::{
    Event, FRAME_HEADER_BYTES, FrameCheck, OrderAccepted, Record, SEGMENT_HEADER_BYTES, SkuChanged,
    check_frame, parse_segment_header,
};
use crate::journal::recovery::{RecoveryError, RecoveryReport, recover};
use crate::journal::segment::{list_segments, parse_segment_file_name, segment_file_name};
use crate::journal::sim_disk::{CrashImage, CutMode, Rng, SimulatedDisk};
use crate::order::Payment;

mod disk_full;
mod fatal_errors;
mod group_commit;
mod power_loss;
mod preallocation;
mod rotation;
mod sim;

fn order(thread: usize, n: usize, address_bytes: usize) -> Record {
    let address =
        (address_bytes > 0).then(|| format!(r#"{{"street":"{}"}}"#, "x".repeat(address_bytes)));
    Record {
        at_ms: 1_700_000_000_000 + n as u64,
        event: Event::Accepted(OrderAccepted {
            order_id: format!("t{thread}-{n}"),
            user_id: format!("user-{thread}"),
            sku: "SKU-1".into(),
            qty: 1 + (n % 5) as u32,
            payment: [Payment::Prepaid, Payment::Escrow, Payment::Cod][n % 3],
            address,
        }),
    }
}

fn sku(n: usize) -> Record {
    Record {
        at_ms: 1_700_000_000_000,
        event: Event::Sku(SkuChanged {
            sku: format!("SKU-{n}"),
            slot_index: n as u32,
            stock_total: 1000,
            per_user_limit: 2,
            max_per_order: 2,
            payment_timeout_s: 900,
        }),
    }
}

/// Recovers `dir` and returns the report and every record, in the order recovery saw them.
fn recover_all(dir: &Path) -> (RecoveryReport, Vec<(u64, Record)>) {
    let mut records = Vec::new();
    let report = recover(dir, &mut |seq, record| {
        records.push((seq, to_owned_record(record)));
        Ok(())
    })
    .expect("recovery succeeds");
    (report, records)
}
