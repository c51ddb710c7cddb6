//! Checkpoints: the engine's replay state at one journal `seq`, so that recovery applies only
//! the records after it (it still reads and checks every frame of the segments kept, to
//! find the journal's end and fill the seq index), and retention can delete the segments
//! before it.
//!
//! A checkpoint holds exactly what replaying the journal up to its `seq` would build: every
//! SKU's slot (name, settings, stock figures), every order's 32-byte index entry with its
//! key, and the payment timer (with the order id) of every order still awaiting payment. The
//! buyers' purchase counts are not stored: they are the sum of the quantities of the orders
//! that have not given their units back, rebuilt from the entries at load. Version 2 adds
//! the idempotency keys bound to order actions (order key, key hash, the action's seq, its
//! fingerprint; see [`crate::inventory::idempotency`]). Version 3 adds each timer's kind
//! (payment, review, auto-completion: [`crate::shard::TimerKind`]) and the order-review
//! rules in force (`None`: no `review_rules` record yet, the config's apply). Version 4 adds
//! the slots of the SKUs whose new orders an operator paused.
//!
//! Order keys are keyed SipHash values, so a checkpoint is only meaningful with the hash keys
//! it was written with: those live in `<data_dir>/hash.keys`, created once per data dir.
//!
//! ```text
//! <data_dir>/checkpoints/<seq:020>.ckpt
//!   magic "STMPCKP4" | payload_len u64 LE | crc32c u32 LE | 4 zero bytes | rkyv payload
//! ```
//!
//! A version-1 file (magic "STMPCKP1", no key table) still loads, with no keys: it was
//! written by an engine that journaled no keyed action, so the records up to its seq bind
//! none. A version-2 file ("STMPCKP2") loads with every timer a payment timer and no review
//! rules: its engine had no others. A version-3 file ("STMPCKP3") loads with no paused SKU,
//! for the same reason. Any other magic is not a checkpoint, and recovery skips it for an older one or the
//! journal.
//!
//! Written to a temporary name, fdatasynced, renamed, and the directory synced: a crash
//! leaves the previous checkpoints intact. A write that fails removes its temporary file
//! (a full disk must get its room back), and the engine writes one only where the file
//! system has room for it [`crate::limits::CHECKPOINT_ROOM_FACTOR`] times over. Loading tries the newest first and falls back to
//! an older one if the newest does not check (and says so).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::durable;
use crate::inventory::{ActionFingerprint, BoundKey, IdempotencyKeyHash, OrderKey};

const MAGIC: [u8; 8] = *b"STMPCKP4";
/// The third format: [`CheckpointV3`].
const MAGIC_V3: [u8; 8] = *b"STMPCKP3";
/// The second format: [`CheckpointV2`].
const MAGIC_V2: [u8; 8] = *b"STMPCKP2";
/// The first format: [`CheckpointV1`].
const MAGIC_V1: [u8; 8] = *b"STMPCKP1";
const HEADER_BYTES: usize = 24;
/// Checkpoints kept on disk: the newest and one before it, in case the newest is damaged.
pub const CHECKPOINTS_KEPT: usize = 2;

/// One SKU's slot as the checkpoint saw it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SkuState {
    pub name: String,
    pub slot_index: u32,
    pub stock_total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub per_user_limit: u32,
    pub max_per_order: u32,
    pub payment_timeout_s: u32,
}

/// One order's index entry ([`crate::inventory::OrderEntry::to_words`]) and key.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OrderState {
    pub key: u64,
    pub words: [u64; 4],
}

/// A payment timer of an order awaiting payment (versions 1 and 2), read only.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TimerStateV2 {
    pub key: u64,
    pub due_ms: u64,
    pub deadline_ms: u64,
    pub order_id: String,
}

/// A timer of an order that waits: for payment, a reviewer, or the buyer's completion.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TimerState {
    pub key: u64,
    pub due_ms: u64,
    pub deadline_ms: u64,
    pub order_id: String,
    /// [`crate::shard::TimerKind`] as its discriminant.
    pub kind: u8,
    /// [`crate::shard::PaymentTimer::epoch`].
    pub epoch: u32,
}

impl From<TimerStateV2> for TimerState {
    fn from(old: TimerStateV2) -> Self {
        TimerState {
            key: old.key,
            due_ms: old.due_ms,
            deadline_ms: old.deadline_ms,
            order_id: old.order_id,
            kind: 0,
            epoch: 0,
        }
    }
}

/// An idempotency key bound to an order action ([`crate::inventory::BoundKey`]).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeyState {
    pub order: u64,
    pub key: u64,
    pub seq: u64,
    pub fingerprint: u64,
    /// The [`crate::order::OrderStatus`] the action left.
    pub status: u8,
}

impl KeyState {
    pub fn of(bound: &BoundKey) -> Self {
        KeyState {
            order: bound.order.0,
            key: bound.key.0,
            seq: bound.seq,
            fingerprint: bound.fingerprint.0,
            status: bound.status as u8,
        }
    }

    /// The binding back; `None` when the status is not one this engine knows.
    pub fn to_bound(&self) -> Option<BoundKey> {
        Some(BoundKey {
            order: OrderKey(self.order),
            key: IdempotencyKeyHash(self.key),
            seq: self.seq,
            fingerprint: ActionFingerprint(self.fingerprint),
            status: crate::order::OrderStatus::from_u8(self.status)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Checkpoint {
    /// The state is what the journal's records `1..=seq` build.
    pub seq: u64,
    pub created_ms: u64,
    pub skus: Vec<SkuState>,
    pub orders: Vec<OrderState>,
    pub timers: Vec<TimerState>,
    pub idempotency_keys: Vec<KeyState>,
    /// The order-review rules of the latest `review_rules` record up to `seq`, if any.
    pub review_rules: Option<crate::journal::ReviewRulesChanged>,
    /// The slots of the SKUs whose new orders are paused.
    pub paused_slots: Vec<u32>,
}

/// The version-3 payload (before pauses), read only.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CheckpointV3 {
    pub seq: u64,
    pub created_ms: u64,
    pub skus: Vec<SkuState>,
    pub orders: Vec<OrderState>,
    pub timers: Vec<TimerState>,
    pub idempotency_keys: Vec<KeyState>,
    pub review_rules: Option<crate::journal::ReviewRulesChanged>,
}

impl From<CheckpointV3> for Checkpoint {
    fn from(old: CheckpointV3) -> Self {
        Checkpoint {
            seq: old.seq,
            created_ms: old.created_ms,
            skus: old.skus,
            orders: old.orders,
            timers: old.timers,
            idempotency_keys: old.idempotency_keys,
            review_rules: old.review_rules,
            paused_slots: Vec::new(),
        }
    }
}

/// The version-2 payload (before timer kinds and review rules), read only.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CheckpointV2 {
    pub seq: u64,
    pub created_ms: u64,
    pub skus: Vec<SkuState>,
    pub orders: Vec<OrderState>,
    pub timers: Vec<TimerStateV2>,
    pub idempotency_keys: Vec<KeyState>,
}

/// The version-1 payload (before idempotency keys), read only.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CheckpointV1 {
    pub seq: u64,
    pub created_ms: u64,
    pub skus: Vec<SkuState>,
    pub orders: Vec<OrderState>,
    pub timers: Vec<TimerStateV2>,
}

impl From<CheckpointV2> for Checkpoint {
    fn from(old: CheckpointV2) -> Self {
        Checkpoint {
            seq: old.seq,
            created_ms: old.created_ms,
            skus: old.skus,
            orders: old.orders,
            timers: old.timers.into_iter().map(TimerState::from).collect(),
            idempotency_keys: old.idempotency_keys,
            review_rules: None,
            paused_slots: Vec::new(),
        }
    }
}

impl From<CheckpointV1> for Checkpoint {
    fn from(old: CheckpointV1) -> Self {
        Checkpoint::from(CheckpointV2 {
            seq: old.seq,
            created_ms: old.created_ms,
            skus: old.skus,
            orders: old.orders,
            timers: old.timers,
            idempotency_keys: Vec::new(),
        })
    }
}

/// Folder of the checkpoint files inside the data directory.
pub fn checkpoints_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.ckpt")
}

/// The checkpoints in `dir`, newest first.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(seq): Option<u64> = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".ckpt"))
                    .filter(|n| n.len() == 20)
                    .and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                found.push((seq, entry.path()));
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    found.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    Ok(found)
}

/// Writes `checkpoint` durably into `dir` and removes all but the newest
/// [`CHECKPOINTS_KEPT`]. Returns its path. A write that fails (a full disk above all) removes
/// its temporary file before it returns, so a failed checkpoint gives back the room it took.
pub fn write(dir: &Path, checkpoint: &Checkpoint) -> io::Result<PathBuf> {
    write_checked(dir, checkpoint, 0)
}

/// [`write()`], unless the file system has less free room than `room_factor` times the
/// checkpoint's size: then nothing is written and the error is `StorageFull`. The engine
/// asks for [`crate::limits::CHECKPOINT_ROOM_FACTOR`]: a checkpoint must never take the
/// journal's last room, since the journal's records are the data and a checkpoint only a
/// shortcut.
pub fn write_if_room(dir: &Path, checkpoint: &Checkpoint) -> io::Result<PathBuf> {
    write_checked(dir, checkpoint, crate::limits::CHECKPOINT_ROOM_FACTOR)
}

fn write_checked(dir: &Path, checkpoint: &Checkpoint, room_factor: u64) -> io::Result<PathBuf> {
    durable::create_dir_all(dir)?;
    // A crash during an earlier write leaves its temporary file (as large as a checkpoint):
    // checkpoints are written one at a time, so any left now is such a leftover.
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if durable::is_temporary_name(&name) {
            fs::remove_file(dir.join(&*name))?;
        }
    }
    let payload = rkyv::to_bytes::<rancor::Error>(checkpoint)
        .map_err(|e| io::Error::other(format!("checkpoint does not serialize: {e}")))?;
    let file_bytes = (HEADER_BYTES + payload.len()) as u64;
    if room_factor > 0 {
        let free = free_bytes(dir)?;
        if free < file_bytes.saturating_mul(room_factor) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{} has {free} bytes free, too little for a checkpoint of {file_bytes} \
                     bytes (room for {room_factor} is asked); not written",
                    dir.display()
                ),
            ));
        }
    }
    let mut bytes = Vec::with_capacity(file_bytes as usize);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&[0u8; 4]);
    bytes.extend_from_slice(&payload);
    drop(payload);
    let path = dir.join(file_name(checkpoint.seq));
    // Left behind, a partial temporary file would hold the room the write ran out of (or
    // the room an operator freed since) until the next checkpoint, and a journal stopped
    // for lack of room could not resume: a failed write removes it at once.
    durable::write_file_atomically(&path, &bytes, 0o644)?;
    let mut removed = false;
    for (_, old) in list(dir)?.into_iter().skip(CHECKPOINTS_KEPT) {
        durable::remove_file(&old)?;
        removed = true;
    }
    if removed {
        durable::sync_dir(dir)?;
    }
    Ok(path)
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
    // SAFETY: `statvfs` is a plain-data struct, for which all zeros is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is a
    // valid, exclusive place for `statvfs` to fill in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    let (available, fragment) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(available.saturating_mul(fragment))
}

/// Reads and checks one checkpoint file.
pub fn read(path: &Path) -> Result<Checkpoint, String> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut header = [0u8; HEADER_BYTES];
    if file_len < HEADER_BYTES as u64
        || file.read_exact(&mut header).is_err()
        || ![MAGIC, MAGIC_V3, MAGIC_V2, MAGIC_V1]
            .contains(&header[..8].try_into().expect("8 bytes"))
    {
        return Err("not a checkpoint (bad magic or too short)".into());
    }
    let len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    if file_len - HEADER_BYTES as u64 != len {
        return Err(format!(
            "payload is {} bytes, the header says {len}",
            file_len - HEADER_BYTES as u64
        ));
    }
    // Read straight into aligned memory (the archive is read in place, then deserialized).
    let mut payload = AlignedVec::<16>::with_capacity(len as usize);
    payload.resize(len as usize, 0);
    file.read_exact(&mut payload).map_err(|e| e.to_string())?;
    if crc32c::crc32c(&payload) != crc {
        return Err("checksum does not match".into());
    }
    if header[..8] == MAGIC_V1 {
        return rkyv::from_bytes::<CheckpointV1, rancor::Error>(&payload)
            .map(Checkpoint::from)
            .map_err(|e| format!("does not decode (version 1): {e}"));
    }
    if header[..8] == MAGIC_V3 {
        return rkyv::from_bytes::<CheckpointV3, rancor::Error>(&payload)
            .map(Checkpoint::from)
            .map_err(|e| format!("does not decode (version 3): {e}"));
    }
    if header[..8] == MAGIC_V2 {
        return rkyv::from_bytes::<CheckpointV2, rancor::Error>(&payload)
            .map(Checkpoint::from)
            .map_err(|e| format!("does not decode (version 2): {e}"));
    }
    rkyv::from_bytes::<Checkpoint, rancor::Error>(&payload)
        .map_err(|e| format!("does not decode: {e}"))
}

/// The newest checkpoint that checks, if any. A damaged newer one is reported and skipped:
/// the older one plus the journal after it rebuild the same state.
pub fn load_latest(dir: &Path) -> io::Result<Option<(PathBuf, Checkpoint)>> {
    for (_, path) in list(dir)? {
        match read(&path) {
            Ok(checkpoint) => return Ok(Some((path, checkpoint))),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "skipping a damaged checkpoint");
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            created_ms: 1,
            skus: vec![SkuState {
                name: "SKU-1".into(),
                slot_index: 0,
                stock_total: 10,
                available: 7,
                reserved: 2,
                sold: 1,
                per_user_limit: 0,
                max_per_order: 10,
                payment_timeout_s: 900,
            }],
            orders: vec![OrderState {
                key: 42,
                words: [1, 2, 3, 4],
            }],
            timers: vec![TimerState {
                key: 42,
                due_ms: 5,
                deadline_ms: 9,
                order_id: "o1".into(),
                kind: 0,
                epoch: 0,
            }],
            idempotency_keys: vec![KeyState {
                order: 42,
                key: 7,
                seq: 3,
                fingerprint: 11,
                status: 2,
            }],
            review_rules: None,
            paused_slots: vec![3],
        }
    }

    #[test]
    fn a_third_format_checkpoint_loads_with_no_paused_sku() {
        let dir = tempfile::tempdir().unwrap();
        let current = sample(10);
        let old = CheckpointV3 {
            seq: current.seq,
            created_ms: current.created_ms,
            skus: current.skus.clone(),
            orders: current.orders.clone(),
            timers: current.timers.clone(),
            idempotency_keys: current.idempotency_keys.clone(),
            review_rules: current.review_rules.clone(),
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"STMPCKP3");
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&payload);
        fs::write(dir.path().join(file_name(10)), bytes).unwrap();
        let loaded = load_latest(dir.path()).unwrap().unwrap().1;
        assert_eq!(
            loaded,
            Checkpoint {
                paused_slots: Vec::new(),
                ..current
            }
        );
    }

    #[test]
    fn a_first_format_checkpoint_loads_with_no_keys() {
        let dir = tempfile::tempdir().unwrap();
        let current = sample(10);
        let old = CheckpointV1 {
            seq: current.seq,
            created_ms: current.created_ms,
            skus: current.skus.clone(),
            orders: current.orders.clone(),
            timers: current
                .timers
                .iter()
                .map(|timer| TimerStateV2 {
                    key: timer.key,
                    due_ms: timer.due_ms,
                    deadline_ms: timer.deadline_ms,
                    order_id: timer.order_id.clone(),
                })
                .collect(),
        };
        // Laid out as the first format's `write` did.
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"STMPCKP1");
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&payload);
        fs::write(dir.path().join(file_name(10)), bytes).unwrap();
        let loaded = load_latest(dir.path()).unwrap().unwrap().1;
        assert_eq!(
            loaded,
            Checkpoint {
                idempotency_keys: Vec::new(),
                paused_slots: Vec::new(),
                ..current
            }
        );
        // A file of another format is not read as either.
        let foreign = dir.path().join(file_name(11));
        let mut other = fs::read(dir.path().join(file_name(10))).unwrap();
        other[..8].copy_from_slice(b"STMPCKP9");
        fs::write(&foreign, other).unwrap();
        assert!(read(&foreign).unwrap_err().contains("magic"));
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().1.seq, 10);
    }

    #[test]
    fn a_temporary_file_left_by_a_crashed_write_is_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(format!(".{}.tmp", file_name(5)));
        fs::write(&leftover, vec![7u8; 4096]).unwrap();
        write(dir.path(), &sample(10)).unwrap();
        assert!(!leftover.exists());
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().1, sample(10));
        // A file that is not a checkpoint's length says so.
        let bad = dir.path().join(file_name(11));
        fs::write(&bad, b"STMPCKP1").unwrap();
        assert!(read(&bad).unwrap_err().contains("too short"));
    }

    #[test]
    fn the_newest_good_checkpoint_is_loaded_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [10, 20, 30] {
            write(dir.path(), &sample(seq)).unwrap();
        }
        let kept: Vec<u64> = list(dir.path()).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(kept, vec![30, 20]);
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().1, sample(30));
        // Damage the newest: the one before it is used.
        let newest = dir.path().join(file_name(30));
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&newest, bytes).unwrap();
        assert!(read(&newest).unwrap_err().contains("checksum"));
        assert_eq!(load_latest(dir.path()).unwrap().unwrap().1.seq, 20);
        assert!(load_latest(&dir.path().join("none")).unwrap().is_none());
    }
}
