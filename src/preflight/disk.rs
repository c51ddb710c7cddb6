//! The **disk** check: the room the event needs ([`DiskNeed`]: the journal of the expected
//! orders at realistic sizes, checkpoints, the inventory map, the preallocated room) against
//! the free bytes on the data directory's filesystem.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Check, DISK_SAFETY_FACTOR, LIFE_ACTIONS, Verdict, human_bytes};
use crate::checkpoint;
use crate::config::{Config, FsyncPolicy};
use crate::inventory::Inventory;
use crate::journal::{Event, FrameBatch, OrderAccepted, OrderAction, Record};
use crate::limits;
use crate::order::{Payment, transition};

/// Realistic field sizes for the journal estimate: a UUID order id, a user id as shops
/// issue them, a structured SKU, and a full postal address as JSON (~190 bytes).
const SAMPLE_ORDER_ID: &str = "3f2b8c1e-9a47-4d2b-b6c5-7e1f0a9d4c21";
const SAMPLE_USER_ID: &str = "user-7f3a9c2e4b1d8f60a5e2";
const SAMPLE_SKU: &str = "SNKR-AIR-42-BLK";
const SAMPLE_ADDRESS: &str = r#"{"name":"Maria Fernanda Oliveira","line1":"Rua das Laranjeiras 1234, apto 56","line2":"Bloco B","city":"Sao Paulo","postcode":"22240-003","country":"BR","phone":"+55 11 91234-5678"}"#;

/// The journal bytes one order takes over its life, framed and aligned as on disk: an
/// acceptance at realistic field sizes and the [`LIFE_ACTIONS`] records after it, encoded
/// with the engine's own [`FrameBatch`].
pub fn journal_bytes_per_order() -> u64 {
    let at_ms = 1_750_000_000_000;
    let mut batch = FrameBatch::default();
    batch
        .push(&Record {
            at_ms,
            event: Event::Accepted(OrderAccepted {
                order_id: SAMPLE_ORDER_ID.into(),
                user_id: SAMPLE_USER_ID.into(),
                sku: SAMPLE_SKU.into(),
                qty: 1,
                payment: Payment::Prepaid,
                address: Some(SAMPLE_ADDRESS.into()),
            }),
        })
        .expect("the sample acceptance encodes");
    let mut status = Payment::Prepaid.initial_status();
    // Each action links to the record before it; the value's size does not vary.
    for (prev_seq, action) in (1_000_000_000..).zip(LIFE_ACTIONS) {
        status = transition(status, action, false)
            .expect("the sample life is a valid path")
            .to;
        batch
            .push(&Record {
                at_ms,
                event: Event::Action(Box::new(OrderAction {
                    order_id: SAMPLE_ORDER_ID.into(),
                    action,
                    status,
                    prev_seq,
                    reason: None,
                    address: None,
                    redirect: false,
                    restock: false,
                    exchange_sku: None,
                })),
            })
            .expect("the sample action encodes");
    }
    batch.as_bytes().len() as u64
}

/// The disk room the event needs, in bytes, part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskNeed {
    pub journal_bytes_per_order: u64,
    /// `orders_expected` × per order × [`DISK_SAFETY_FACTOR`].
    pub journal: u64,
    /// The checkpoints retention may keep (plus the one being written): one order entry
    /// each per order.
    pub checkpoints: u64,
    pub inventory_map: u64,
    /// The synced zeros the preallocator keeps ahead of the writer (when on).
    pub preallocated: u64,
    pub total: u64,
}

pub fn disk_need(config: &Config) -> DiskNeed {
    let orders = config.inventory.orders_expected as u64;
    let journal_bytes_per_order = journal_bytes_per_order();
    let journal = orders * journal_bytes_per_order * DISK_SAFETY_FACTOR;
    let checkpoint_bytes_per_order = std::mem::size_of::<checkpoint::ArchivedOrderState>() as u64;
    let checkpoints =
        orders * checkpoint_bytes_per_order * (checkpoint::CHECKPOINTS_KEPT as u64 + 1);
    let inventory_map = Inventory::file_bytes(config.inventory.skus_max);
    let preallocated = if config.journal.preallocate && config.journal.fsync != FsyncPolicy::None {
        limits::PREALLOCATE_AHEAD_BYTES
    } else {
        0
    };
    DiskNeed {
        journal_bytes_per_order,
        journal,
        checkpoints,
        inventory_map,
        preallocated,
        total: journal + checkpoints + inventory_map + preallocated,
    }
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and `stat` points
    // to writable memory of the struct's size, which statvfs fills on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 or u64).
    #[allow(clippy::unnecessary_cast)]
    let bytes = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    Ok(bytes)
}

/// `path`, or its nearest ancestor that exists (the filesystem the directory will be on).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut current = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    while !current.exists() {
        if !current.pop() {
            return PathBuf::from("/");
        }
    }
    current
}

pub(super) fn disk_check(config: &Config) -> Check {
    let need = disk_need(config);
    let on = existing_ancestor(&config.data_dir);
    let have = match free_bytes(&on) {
        Ok(have) => have,
        Err(error) => {
            return Check::new(
                "disk",
                Verdict::Fail,
                format!("statvfs {}: {error}", on.display()),
            );
        }
    };
    let verdict = if have >= need.total {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let mut detail = format!(
        "need {} vs have {} free on {}: journal {} ({} orders x {} B per order x {}), \
         checkpoints {}, inventory map {}",
        human_bytes(need.total),
        human_bytes(have),
        on.display(),
        human_bytes(need.journal),
        config.inventory.orders_expected,
        need.journal_bytes_per_order,
        DISK_SAFETY_FACTOR,
        human_bytes(need.checkpoints),
        human_bytes(need.inventory_map),
    );
    if need.preallocated > 0 {
        detail.push_str(&format!(
            ", preallocated room {}",
            human_bytes(need.preallocated)
        ));
    }
    Check::new("disk", verdict, detail).with(json!({
        "need_bytes": need.total,
        "have_bytes": have,
        "path": on.display().to_string(),
        "journal_bytes": need.journal,
        "journal_bytes_per_order": need.journal_bytes_per_order,
        "records_per_order": 1 + LIFE_ACTIONS.len(),
        "safety_factor": DISK_SAFETY_FACTOR,
        "checkpoint_bytes": need.checkpoints,
        "inventory_map_bytes": need.inventory_map,
        "preallocated_bytes": need.preallocated,
    }))
}
