//! The journal writer's file I/O, behind a narrow seam.
//!
//! [`Storage`] and [`SegmentFile`] are exactly what [`crate::journal::writer`] does to the
//! file system, nothing more: create a segment (failing if it exists), open the last one to
//! append to, `pwrite`, `fdatasync`, `fsync`, `ftruncate`, the file's size, sync the
//! directory, and remove a segment whose creation failed half way. Readers and the recovery
//! scan read the files directly; what writes segments goes through the seam: the writer, and
//! `stampede preflight` when it prepares a journal's room ([`crate::journal::segment`]
//! creates a segment for both).
//!
//! [`FsStorage`] is the real implementation over [`std::fs::File`], used by default
//! ([`crate::journal::Journal::open`]): one virtual call in front of each `pwrite` and
//! `fdatasync`, nothing else, so the group commit's cost (one write and one fdatasync per
//! group) is unchanged.
//!
//! In tests, a simulated disk that can lose power (`journal/sim_disk.rs`, `cfg(test)`) stands
//! in for the real one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::durable;

/// One open segment file, as the writer uses it. Every method takes `&self`, so a file can
/// be shared (an `Arc`) with the thread that syncs it outside the writer's lock.
pub trait SegmentFile: Send + Sync {
    /// Writes all of `bytes` at `offset` (`pwrite` until done). On an error some prefix of
    /// `bytes` may have been written.
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data (and its size) on stable storage.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: data and all metadata (a new segment's header).
    fn sync_all(&self) -> io::Result<()>;
    /// `ftruncate`: cuts the file (or extends it with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's size now.
    fn size(&self) -> io::Result<u64>;
}

/// Where the writer's segment files live.
pub trait Storage: Send + Sync {
    /// Creates a new, empty file, read-write; fails if `path` exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Opens an existing file read-write (the segment recovery ended in, to append to).
    fn open_existing(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Makes the directory's entries (a new segment's name) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file (a new segment whose header could not be written).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStorage;

impl Storage for FsStorage {
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        durable::note_create(path);
        Ok(Arc::new(FsSegment::new(file, path)))
    }

    fn open_existing(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(FsSegment::new(file, path)))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        durable::sync_dir(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        durable::remove_file(path)
    }
}

/// A segment file of the real file system, with its path for the power-cut trace
/// ([`crate::durable`]); the trace costs one relaxed load per call when off.
struct FsSegment {
    file: File,
    path: std::path::PathBuf,
}

impl FsSegment {
    fn new(file: File, path: &Path) -> Self {
        Self {
            file,
            path: path.to_owned(),
        }
    }
}

impl SegmentFile for FsSegment {
    #[inline]
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, bytes, offset)?;
        durable::note_write(&self.path, offset, bytes.len() as u64);
        Ok(())
    }

    #[inline]
    fn sync_data(&self) -> io::Result<()> {
        durable::traced_sync(&self.path, || self.file.sync_data())
    }

    fn sync_all(&self) -> io::Result<()> {
        durable::traced_sync(&self.path, || self.file.sync_all())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        durable::note_set_len(&self.path, len);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

/// True for the errors that mean "no room now" (ENOSPC, EDQUOT): a write that failed with
/// one of these wrote nothing the writer cannot cut off again, and may succeed later.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || error.kind() == io::ErrorKind::StorageFull
}
