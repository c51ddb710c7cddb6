//! A disk that can lose power, for tests (`cfg(test)`): it stands in for the real file
//! system behind the writer's [`crate::journal::storage`] seam.
//!
//! It keeps, per file, the bytes that are durable (as of the last successful sync) and the
//! writes since, can run out of space (ENOSPC or EDQUOT, with short writes as a real file
//! system makes them) or fail an `fdatasync` (EIO), cuts power at a chosen operation, and
//! then builds the image a reboot would find: unsynced writes dropped, a prefix of them kept
//! torn at a 512-byte sector boundary, or a random subset of their sectors kept (out-of-order
//! persistence). The image is written to a real directory for the real recovery scan.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::journal::storage::{SegmentFile, Storage};

/// Sector size: a write torn by a power cut keeps or loses whole sectors.
pub const SECTOR: u64 = 512;

/// A disk for tests: see the module docs. Cheap to clone; clones share the disk.
///
/// Paths are kept as given; [`CrashImage::materialise`] writes each file under its file
/// name, so one simulated directory maps to one real one.
#[derive(Clone, Default)]
pub struct SimulatedDisk {
    state: Arc<Mutex<DiskState>>,
}

impl std::fmt::Debug for SimulatedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("SimulatedDisk")
            .field("files", &state.files.keys().collect::<Vec<_>>())
            .field("ops", &state.ops)
            .field("powered", &!state.power_off)
            .finish()
    }
}

#[derive(Default)]
struct DiskState {
    files: BTreeMap<PathBuf, SimFile>,
    /// Operations that changed (or tried to change) the disk, counted from 0.
    ops: u64,
    /// The operation at which power is lost: it and every later one fail.
    cut_at: Option<u64>,
    power_off: bool,
    /// Bytes all files may hold together; a write past it is short and fails.
    capacity: Option<u64>,
    /// `ENOSPC` (default) or `EDQUOT`: what running out of room reports.
    full_errno: Option<i32>,
    /// The next this many syncs fail with EIO (and persist nothing).
    failing_syncs: u32,
}

#[derive(Default, Clone)]
struct SimFile {
    /// What stable storage holds: the content as of the last successful sync.
    durable: Vec<u8>,
    /// What a read would see now (the page cache).
    current: Vec<u8>,
    /// Changes since the last successful sync, in the order they were made.
    unsynced: Vec<Change>,
    /// False until the directory is synced after the file's creation.
    name_durable: bool,
}

#[derive(Clone, Debug)]
enum Change {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// What survives of the writes since the last sync when power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing after the last successful sync.
    LoseUnsynced,
    /// The unsynced changes in order, cut after a random number of sectors (a write
    /// torn at a 512-byte boundary), the size following the data.
    TornPrefix,
    /// A random subset of the unsynced sectors (out-of-order persistence). With
    /// `size_after_data` the file's size never covers a sector that was lost (a file
    /// system that commits a new size after the data it covers, like ext4's ordered
    /// mode): only overwrites inside the file land out of order. Without it, any
    /// subset, the size reaching the farthest sector kept, holes read as zeros.
    RandomSubset { size_after_data: bool },
}

/// What a reboot finds: each file's bytes, and how many of them were synced.
#[derive(Debug, Clone)]
pub struct CrashImage {
    pub files: BTreeMap<PathBuf, ImageFile>,
}

#[derive(Debug, Clone)]
pub struct ImageFile {
    pub bytes: Vec<u8>,
    /// The length of the file's durable content before the cut.
    pub synced_len: u64,
}

fn power_is_off() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl SimulatedDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Operations counted so far (writes, syncs, truncations, creations, ...).
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Power is lost at operation `op` (0-based): it and everything after fail with EIO.
    /// A write at the cut is in flight: it may persist in part.
    pub fn cut_power_at(&self, op: u64) {
        let mut state = self.state.lock();
        state.cut_at = Some(op);
        if state.ops >= op {
            state.power_off = true;
        }
    }

    pub fn is_powered(&self) -> bool {
        !self.state.lock().power_off
    }

    /// Limits what all files may hold together (`None`: unlimited). Running past it
    /// fails with ENOSPC, after a short write of what fits.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity = bytes;
    }

    /// Reports a full disk as EDQUOT (quota) instead of ENOSPC.
    pub fn report_full_as(&self, errno: i32) {
        self.state.lock().full_errno = Some(errno);
    }

    /// Bytes the files hold now.
    pub fn used(&self) -> u64 {
        self.state.lock().used()
    }

    /// The next `count` syncs fail with EIO, persisting nothing.
    pub fn fail_next_syncs(&self, count: u32) {
        self.state.lock().failing_syncs = count;
    }

    /// What a read of `path` would see now.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.state.lock().files.get(path).map(|f| f.current.clone())
    }

    /// The durable length of `path` (as of its last sync).
    pub fn synced_len(&self, path: &Path) -> Option<u64> {
        self.state
            .lock()
            .files
            .get(path)
            .map(|f| f.durable.len() as u64)
    }

    /// Paths of the files that exist now.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.lock().files.keys().cloned().collect()
    }

    /// Puts the files of a real directory on the disk under `sim_dir`, durable, as a
    /// reboot would find them.
    pub fn load_dir(&self, from: &Path, sim_dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let bytes = std::fs::read(entry.path())?;
            state.files.insert(
                sim_dir.join(entry.file_name()),
                SimFile {
                    durable: bytes.clone(),
                    current: bytes,
                    unsynced: Vec::new(),
                    name_durable: true,
                },
            );
        }
        Ok(())
    }

    /// What a process crash (not a power cut) leaves: everything written, synced or not.
    pub fn written_image(&self) -> CrashImage {
        let state = self.state.lock();
        let files = state
            .files
            .iter()
            .map(|(path, file)| {
                let image = ImageFile {
                    bytes: file.current.clone(),
                    synced_len: file.durable.len() as u64,
                };
                (path.clone(), image)
            })
            .collect();
        CrashImage { files }
    }

    /// The image a reboot finds after the power was cut (or now, if it was not), for
    /// `mode`; `seed` drives the random choices, so a failure reproduces.
    pub fn crash_image(&self, mode: CutMode, seed: u64) -> CrashImage {
        let state = self.state.lock();
        let mut rng = Rng(seed | 1);
        let mut files = BTreeMap::new();
        for (path, file) in &state.files {
            if !file.name_durable {
                // A name never synced may or may not be in the directory.
                if mode == CutMode::LoseUnsynced || rng.next_u64() % 2 == 0 {
                    continue;
                }
            }
            let mut bytes = file.durable.clone();
            let pieces = pieces(&file.unsynced);
            match mode {
                CutMode::LoseUnsynced => {}
                CutMode::TornPrefix => {
                    let keep = (rng.next_u64() % (pieces.len() as u64 + 1)) as usize;
                    for piece in &pieces[..keep] {
                        piece.apply(&mut bytes);
                    }
                }
                CutMode::RandomSubset { size_after_data } => {
                    let mut extending_lost = false;
                    for piece in &pieces {
                        let keep = rng.next_u64() % 2 == 0;
                        match piece {
                            Change::Write {
                                offset,
                                bytes: data,
                            } if size_after_data
                                && offset + data.len() as u64 > bytes.len() as u64 =>
                            {
                                // Extends the file: the size covers it only if every
                                // extending sector before it made it too.
                                if keep && !extending_lost {
                                    piece.apply(&mut bytes);
                                } else {
                                    extending_lost = true;
                                }
                            }
                            _ if keep => piece.apply(&mut bytes),
                            _ => {}
                        }
                    }
                }
            }
            files.insert(
                path.clone(),
                ImageFile {
                    bytes,
                    synced_len: file.durable.len() as u64,
                },
            );
        }
        CrashImage { files }
    }
}

impl CrashImage {
    /// Flips one bit of a file in the image (a bad sector, a cosmic ray).
    pub fn flip_bit(&mut self, path: &Path, offset: u64, bit: u8) {
        let file = self.files.get_mut(path).expect("file in image");
        file.bytes[offset as usize] ^= 1 << bit;
    }

    /// Writes every file of the image into `into`, under its file name.
    pub fn materialise(&self, into: &Path) -> io::Result<()> {
        for (path, file) in &self.files {
            let name = path.file_name().expect("a file name");
            std::fs::write(into.join(name), &file.bytes)?;
        }
        Ok(())
    }
}

/// Splits unsynced changes into what can persist on its own: writes into sector pieces
/// (a write never tears inside a sector), truncations whole.
fn pieces(changes: &[Change]) -> Vec<Change> {
    let mut out = Vec::new();
    for change in changes {
        match change {
            Change::Write { offset, bytes } => {
                let mut at = *offset;
                let end = offset + bytes.len() as u64;
                while at < end {
                    let piece_end = ((at / SECTOR) + 1) * SECTOR;
                    let piece_end = piece_end.min(end);
                    out.push(Change::Write {
                        offset: at,
                        bytes: bytes[(at - offset) as usize..(piece_end - offset) as usize]
                            .to_vec(),
                    });
                    at = piece_end;
                }
            }
            Change::SetLen(len) => out.push(Change::SetLen(*len)),
        }
    }
    out
}

impl Change {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Change::Write {
                offset,
                bytes: data,
            } => {
                let offset = *offset as usize;
                let end = offset + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[offset..end].copy_from_slice(data);
            }
            Change::SetLen(len) => bytes.resize(*len as usize, 0),
        }
    }
}

impl DiskState {
    fn used(&self) -> u64 {
        self.files.values().map(|f| f.current.len() as u64).sum()
    }

    /// Counts one operation; `Err` when the power is (now) off. `Ok(false)` means this
    /// very operation is the one the power is cut at (a write persists in flight).
    fn begin(&mut self) -> io::Result<bool> {
        if self.power_off {
            return Err(power_is_off());
        }
        let op = self.ops;
        self.ops += 1;
        if self.cut_at.is_some_and(|cut| op >= cut) {
            self.power_off = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn full(&self) -> io::Error {
        io::Error::from_raw_os_error(self.full_errno.unwrap_or(libc::ENOSPC))
    }

    fn file(&mut self, path: &Path) -> io::Result<&mut SimFile> {
        self.files
            .get_mut(path)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}

struct SimHandle {
    disk: SimulatedDisk,
    path: PathBuf,
}

impl SegmentFile for SimHandle {
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        let powered = state.begin()?;
        let room = state.capacity.map(|capacity| {
            let others = state.used()
                - state
                    .files
                    .get(&self.path)
                    .map_or(0, |f| f.current.len() as u64);
            capacity.saturating_sub(others)
        });
        let file = state.file(&self.path)?;
        let end = offset + bytes.len() as u64;
        // A file system writes what fits, then reports the disk full.
        let fits = match room {
            Some(room) if end > room.max(file.current.len() as u64) => {
                (room.max(file.current.len() as u64)).saturating_sub(offset) as usize
            }
            _ => bytes.len(),
        };
        let fits = fits.min(bytes.len());
        if fits > 0 {
            let change = Change::Write {
                offset,
                bytes: bytes[..fits].to_vec(),
            };
            change.apply(&mut file.current);
            file.unsynced.push(change);
        }
        if !powered {
            return Err(power_is_off());
        }
        if fits < bytes.len() {
            return Err(state.full());
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        if !state.begin()? {
            return Err(power_is_off());
        }
        if state.failing_syncs > 0 {
            state.failing_syncs -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let file = state.file(&self.path)?;
        file.durable = file.current.clone();
        file.unsynced.clear();
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        // Metadata other than the size (kept by `sync_data` too) is not modelled.
        self.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        if !state.begin()? {
            return Err(power_is_off());
        }
        let used = state.used();
        let capacity = state.capacity;
        let full = state.full();
        let file = state.file(&self.path)?;
        let growth = len.saturating_sub(file.current.len() as u64);
        if capacity.is_some_and(|capacity| used + growth > capacity) {
            return Err(full);
        }
        let change = Change::SetLen(len);
        change.apply(&mut file.current);
        file.unsynced.push(change);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let mut state = self.disk.state.lock();
        Ok(state.file(&self.path)?.current.len() as u64)
    }
}

impl Storage for SimulatedDisk {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let mut state = self.state.lock();
        if !state.begin()? {
            return Err(power_is_off());
        }
        if state.files.contains_key(path) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        state.files.insert(path.to_owned(), SimFile::default());
        Ok(Arc::new(SimHandle {
            disk: self.clone(),
            path: path.to_owned(),
        }))
    }

    fn open_existing(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let mut state = self.state.lock();
        state.file(path)?;
        Ok(Arc::new(SimHandle {
            disk: self.clone(),
            path: path.to_owned(),
        }))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if !state.begin()? {
            return Err(power_is_off());
        }
        for (path, file) in state.files.iter_mut() {
            if path.parent() == Some(dir) {
                file.name_durable = true;
            }
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if !state.begin()? {
            return Err(power_is_off());
        }
        // Modelled as immediate and durable: the writer only removes a segment it just
        // failed to create, with nothing acknowledged in it.
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}

/// xorshift64: tiny, deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/sim")
    }

    #[test]
    fn synced_bytes_survive_every_cut_and_unsynced_ones_tear_at_sectors() {
        let disk = SimulatedDisk::new();
        let path = dir().join("a");
        let file = disk.create_new(&path).unwrap();
        disk.sync_dir(&dir()).unwrap();
        file.write_all_at(&[1u8; 1000], 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(&[2u8; 2000], 1000).unwrap();
        assert_eq!(disk.synced_len(&path), Some(1000));
        assert_eq!(disk.contents(&path).unwrap().len(), 3000);

        let lost = disk.crash_image(CutMode::LoseUnsynced, 1);
        assert_eq!(lost.files[&path].bytes, vec![1u8; 1000]);
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let torn = disk.crash_image(CutMode::TornPrefix, seed);
            let bytes = &torn.files[&path].bytes;
            assert!(bytes[..1000].iter().all(|b| *b == 1), "synced bytes kept");
            assert!(bytes[1000..].iter().all(|b| *b == 2));
            // 1000..1024 is the first piece (to the sector boundary), then whole sectors.
            let len = bytes.len() as u64;
            assert!(len == 1000 || len == 3000 || len % SECTOR == 0, "len {len}");
            lengths.insert(len);

            let subset = disk.crash_image(
                CutMode::RandomSubset {
                    size_after_data: false,
                },
                seed,
            );
            let bytes = &subset.files[&path].bytes;
            assert!(bytes[..1000].iter().all(|b| *b == 1));
            assert!(bytes[1000..].iter().all(|b| *b == 2 || *b == 0));
        }
        assert!(lengths.len() > 3, "{lengths:?}");
    }

    #[test]
    fn out_of_order_overwrites_and_ordered_size() {
        let disk = SimulatedDisk::new();
        let path = dir().join("a");
        let file = disk.create_new(&path).unwrap();
        disk.sync_dir(&dir()).unwrap();
        file.write_all_at(&[0u8; 4096], 0).unwrap();
        file.sync_data().unwrap();
        // Overwrite the synced zeros, then append past them.
        file.write_all_at(&[7u8; 4096], 0).unwrap();
        file.write_all_at(&[9u8; 2048], 4096).unwrap();
        let mut holes_inside = 0;
        for seed in 0..200 {
            let image = disk.crash_image(
                CutMode::RandomSubset {
                    size_after_data: true,
                },
                seed,
            );
            let bytes = &image.files[&path].bytes;
            assert!(bytes.len() >= 4096);
            // Past the old size the data is a prefix: no hole is covered by the size.
            assert!(bytes[4096..].iter().all(|b| *b == 9), "seed {seed}");
            let sectors: Vec<bool> = bytes[..4096]
                .chunks(SECTOR as usize)
                .map(|s| s[0] == 7)
                .collect();
            if sectors.windows(2).any(|w| !w[0] && w[1]) {
                holes_inside += 1;
            }
        }
        assert!(holes_inside > 0, "overwrites land out of order");
    }

    #[test]
    fn a_full_disk_writes_what_fits_then_reports_enospc() {
        let disk = SimulatedDisk::new();
        disk.set_capacity(Some(1500));
        let file = disk.create_new(&dir().join("a")).unwrap();
        file.write_all_at(&[1u8; 1000], 0).unwrap();
        let error = file.write_all_at(&[2u8; 1000], 1000).unwrap_err();
        assert!(crate::journal::storage::is_out_of_space(&error));
        assert_eq!(file.size().unwrap(), 1500, "a short write");
        file.set_len(1000).unwrap();
        assert!(file.set_len(2000).is_err());
        disk.report_full_as(libc::EDQUOT);
        let error = file.write_all_at(&[3u8; 1000], 1000).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EDQUOT));
        assert!(crate::journal::storage::is_out_of_space(&error));
        disk.set_capacity(None);
        file.write_all_at(&[3u8; 1000], 1000).unwrap();
        // Overwrites need no room.
        disk.set_capacity(Some(0));
        file.write_all_at(&[4u8; 2000], 0).unwrap();
    }

    #[test]
    fn power_cut_fails_the_cut_operation_and_everything_after() {
        let disk = SimulatedDisk::new();
        let path = dir().join("a");
        let file = disk.create_new(&path).unwrap();
        disk.sync_dir(&dir()).unwrap();
        disk.cut_power_at(disk.ops() + 1);
        file.write_all_at(&[1u8; 100], 0).unwrap();
        assert!(
            file.write_all_at(&[2u8; 100], 100).is_err(),
            "the cut write fails"
        );
        assert!(!disk.is_powered());
        assert!(file.sync_data().is_err());
        assert!(disk.create_new(&dir().join("b")).is_err());
        let image = disk.crash_image(CutMode::TornPrefix, 3);
        assert!(image.files[&path].bytes.len() <= 200);
        assert_eq!(image.files[&path].synced_len, 0);
        // A file whose name was never synced may vanish.
        let disk = SimulatedDisk::new();
        disk.create_new(&dir().join("c")).unwrap();
        assert!(disk.crash_image(CutMode::LoseUnsynced, 1).files.is_empty());
    }
}
