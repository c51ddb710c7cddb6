//! A real file system under the journal writer whose `fdatasync` sleeps while a switch is
//! on: a slow or hung disk under a real engine (`Engine::start_with`), for the tests of what
//! the engine does while its journal cannot keep up.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stampede::journal::storage::{FsStorage, SegmentFile, Storage};

/// The storage to start the engine with; `stalling` turns the slow syncs on and off.
pub struct StallingDisk {
    pub stalling: Arc<AtomicBool>,
    /// How long each `fdatasync` sleeps while `stalling` is set.
    pub stall: Duration,
}

impl StallingDisk {
    pub fn new(stall: Duration) -> Self {
        Self {
            stalling: Arc::new(AtomicBool::new(false)),
            stall,
        }
    }

    fn wrap(&self, file: Arc<dyn SegmentFile>) -> Arc<dyn SegmentFile> {
        Arc::new(StallingFile {
            file,
            stalling: self.stalling.clone(),
            stall: self.stall,
        })
    }
}

struct StallingFile {
    file: Arc<dyn SegmentFile>,
    stalling: Arc<AtomicBool>,
    stall: Duration,
}

impl SegmentFile for StallingFile {
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if self.stalling.load(Ordering::Relaxed) {
            std::thread::sleep(self.stall);
        }
        self.file.sync_data()
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.file.size()
    }
}

impl Storage for StallingDisk {
    fn create_new(&self, path: &Path) -> std::io::Result<Arc<dyn SegmentFile>> {
        Ok(self.wrap(FsStorage.create_new(path)?))
    }
    fn open_existing(&self, path: &Path) -> std::io::Result<Arc<dyn SegmentFile>> {
        Ok(self.wrap(FsStorage.open_existing(path)?))
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        FsStorage.sync_dir(dir)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        FsStorage.remove_file(path)
    }
}
