//! Durable file operations: every change the engine makes to a file's name or contents in
//! its data directory that a power cut could undo goes through this module, and so does the
//! test-only trace of what reached stable storage.
//!
//! A power cut keeps a file's data only up to its last completed `fsync`/`fdatasync`, and a
//! directory's entries (creations, renames, removals) only up to the last completed `fsync`
//! of the directory. The operations here pair each change with the syncs that make it
//! durable, in the order that keeps the previous state intact until the new one is whole:
//!
//! - [`write_file_atomically`]: a temporary file in the same directory, written, synced,
//!   renamed over the target, and the directory synced. A crash leaves the old contents or
//!   the new ones, never a torn file; a failed write removes its temporary file at once (it
//!   would hold disk room an operator just freed).
//! - [`create_dir_all`]: each directory it creates is made durable in its parent, so a
//!   folder's files cannot outlive the folder's own entry.
//! - [`remove_file`], [`sync_dir`], [`truncate`]: the journal's retention and recovery.
//! - The journal writer's segment files go through [`crate::journal::storage::FsStorage`],
//!   which reports its creations, writes and syncs here.
//!
//! # The power-cut trace (tests only)
//!
//! A `kill -9` keeps the page cache, so it cannot show what a power cut does to the files.
//! With `STAMPEDE_TEST_POWER_CUT_TRACE=<file>` in the environment (refused unless
//! `STAMPEDE_TEST_MODE=1` is set too; the engine logs a warning that it must not serve a
//! sale), every operation above appends one line to `<file>`, and a file that a rename
//! replaces or a removal deletes is first hard-linked into `<file>.d/` so that a test can
//! put it back. After a SIGKILL, the test reads the trace and cuts every file back to a state
//! a power cut could leave (`tests/common/power_cut.rs`). The lines, one event each:
//!
//! ```text
//! create PATH                   a new or truncated file (nothing of it durable yet)
//! write PATH OFFSET LEN         bytes written (durable once a sync of PATH begun after it ends)
//! sync-begin ID PATH            an fsync/fdatasync of PATH starts
//! sync-end ID                   ... and succeeded
//! rename FROM TO BACKUP|-       FROM now named TO; BACKUP holds what TO was before
//! remove PATH BACKUP            PATH removed; BACKUP holds it
//! mkdir PATH                    a directory created
//! setlen PATH LEN               cut or extended to LEN bytes (durable with the next sync)
//! truncate PATH LEN             cut to LEN bytes and synced
//! ```
//!
//! Each line is written with one `write(2)` on an `O_APPEND` file after the operation
//! returns (`sync-begin`, `rename` and `remove` before, with what undoing them needs), so a
//! SIGKILL loses no line of an operation that completed. The trace costs one relaxed atomic
//! load per operation when off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the trace file.
pub const TRACE_ENV: &str = "STAMPEDE_TEST_POWER_CUT_TRACE";
/// The flag without which the trace is refused.
pub const TEST_MODE_ENV: &str = "STAMPEDE_TEST_MODE";

struct Trace {
    file: parking_lot::Mutex<File>,
    backups: PathBuf,
    next_id: AtomicU64,
}

static TRACE: OnceLock<Option<Trace>> = OnceLock::new();

fn trace() -> Option<&'static Trace> {
    TRACE.get().and_then(Option::as_ref)
}

/// Turns the power-cut trace on when the environment asks for it (see the module doc).
/// Returns the trace file when it is on. Call once at start-up, before any file is written.
pub fn init_trace_from_env() -> io::Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os(TRACE_ENV).map(PathBuf::from) else {
        let _ = TRACE.set(None);
        return Ok(None);
    };
    if std::env::var(TEST_MODE_ENV).as_deref() != Ok("1") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{TRACE_ENV} is a test-only mode and needs {TEST_MODE_ENV}=1"),
        ));
    }
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut backups = path.clone().into_os_string();
    backups.push(".d");
    let backups = PathBuf::from(backups);
    fs::create_dir_all(&backups)?;
    let trace = Trace {
        file: parking_lot::Mutex::new(file),
        backups,
        // Unique across the engine's restarts on one trace file: the process id, high bits.
        next_id: AtomicU64::new(u64::from(std::process::id()) << 32),
    };
    let _ = TRACE.set(Some(trace));
    Ok(Some(path))
}

fn note(line: std::fmt::Arguments<'_>) {
    if let Some(trace) = trace() {
        let text = format!("{line}\n");
        let mut file = trace.file.lock();
        // The trace is the test's oracle: a line it cannot write would make the test's cut
        // wrong without saying so.
        file.write_all(text.as_bytes())
            .expect("power-cut trace is writable");
    }
}

/// Hard-links `path` into the trace's backup folder and returns the link's name, so that a
/// test can undo the rename or removal that is about to replace it. `-` when off or absent.
fn backup(path: &Path) -> String {
    let Some(trace) = trace() else {
        return "-".into();
    };
    let id = trace.next_id.fetch_add(1, Ordering::Relaxed);
    let link = trace.backups.join(id.to_string());
    match fs::hard_link(path, &link) {
        Ok(()) => link.display().to_string(),
        Err(_) => "-".into(),
    }
}

/// Notes a created (or truncated) file.
pub fn note_create(path: &Path) {
    if trace().is_some() {
        note(format_args!("create {}", path.display()));
    }
}

/// Notes bytes written to a file at `offset`.
pub fn note_write(path: &Path, offset: u64, len: u64) {
    if trace().is_some() {
        note(format_args!("write {} {offset} {len}", path.display()));
    }
}

/// Notes a file cut or extended to `len` bytes without a sync (the journal writer cutting off
/// a failed group, or the room probe).
pub fn note_set_len(path: &Path, len: u64) {
    if trace().is_some() {
        note(format_args!("setlen {} {len}", path.display()));
    }
}

/// Runs `sync` (an fsync or fdatasync of `path`) between its trace lines.
pub fn traced_sync(path: &Path, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let Some(trace) = trace() else {
        return sync();
    };
    let id = trace.next_id.fetch_add(1, Ordering::Relaxed);
    note(format_args!("sync-begin {id} {}", path.display()));
    sync()?;
    note(format_args!("sync-end {id}"));
    Ok(())
}

/// `fsync` of a directory: its entries (creations, renames, removals) become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    traced_sync(dir, || File::open(dir)?.sync_all())
}

/// Renames `from` to `to` (same directory); durable once the directory is synced.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    if trace().is_some() {
        let replaced = backup(to);
        note(format_args!(
            "rename {} {} {replaced}",
            from.display(),
            to.display()
        ));
    }
    fs::rename(from, to)
}

/// Removes a file; durable once its directory is synced (the caller syncs it, once for
/// several removals).
pub fn remove_file(path: &Path) -> io::Result<()> {
    if trace().is_some() {
        let kept = backup(path);
        note(format_args!("remove {} {kept}", path.display()));
    }
    fs::remove_file(path)
}

/// Cuts `path` to `len` bytes and syncs it (recovery's cut of a torn tail).
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    traced_sync(path, || file.sync_all())?;
    if trace().is_some() {
        note(format_args!("truncate {} {len}", path.display()));
    }
    Ok(())
}

/// `fs::create_dir_all`, with each directory it creates made durable in its parent.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {
            return Ok(());
        }
        Err(error) => return Err(error),
    }
    if trace().is_some() {
        note(format_args!("mkdir {}", path.display()));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent)
}

/// The temporary name [`write_file_atomically`] writes `path`'s new contents under: hidden,
/// in the same directory (a rename across file systems is not atomic), unique per process
/// and call (two writers of one file each rename their own complete file).
fn temporary_name(path: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let nonce = WRITES.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{nonce}.tmp", std::process::id()))
}

/// True for the temporary files of [`write_file_atomically`] (and the older `.NAME.tmp`
/// form): what a crash in the middle of a write leaves, safe to remove.
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Replaces `path`'s contents with `bytes` so that a crash or power cut at any moment leaves
/// either the old file or the new one, whole: write a temporary file, `fdatasync` it, rename
/// it over `path`, `fsync` the directory. `mode` sets the new file's permission bits (0600
/// for secrets). On failure the temporary file is removed.
pub fn write_file_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temporary = temporary_name(path);
    let result = write_then_rename(&temporary, path, bytes, mode);
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

fn write_then_rename(temporary: &Path, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(temporary)?;
    note_create(temporary);
    file.write_all(bytes)?;
    note_write(temporary, 0, bytes.len() as u64);
    traced_sync(temporary, || file.sync_data())?;
    drop(file);
    rename(temporary, path)?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        write_file_atomically(&path, b"1\n", 0o600).unwrap();
        write_file_atomically(&path, b"22\n", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"22\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("offset")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_atomic_write_removes_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the target is a non-empty directory.
        let path = dir.path().join("target");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_file_atomically(&path, b"data", 0o644).is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["target".to_string()], "{names:?}");
    }

    #[test]
    fn create_dir_all_makes_nested_folders() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b").join("c");
        create_dir_all(&nested).unwrap();
        assert!(nested.is_dir());
        create_dir_all(&nested).unwrap();
    }

    #[test]
    fn temporary_names_are_recognised() {
        let name = temporary_name(Path::new("/x/picking.offset"));
        let name = name.file_name().unwrap().to_str().unwrap();
        assert!(is_temporary_name(name), "{name}");
        assert!(!is_temporary_name("picking.offset"));
    }
}
