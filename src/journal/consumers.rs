//! Consumer groups: the durable position of each group of fulfilment workers in the journal,
//! the `seq` of the last record the group has processed (it resumes after it).
//!
//! One small file per group, `<data_dir>/consumers/<group>.offset`, holding the seq as decimal
//! text. A commit writes a temporary file, fdatasyncs it, renames it over the old one and
//! syncs the directory, so a crash leaves the old offset or the new one, never a torn one.
//! The engine (`PUT /v1/consumers/{group}/offset`) and `stampede tail --data-dir --group`
//! write the same files; each commit is atomic, the last one wins.
//!
//! Invariant: an offset is never ahead of what the journal holds on stable storage, also
//! after a power cut. The engine refuses a commit past its durable watermark and, under
//! `fsync = "interval"` or `"none"`, syncs the journal up to the seq before it writes the
//! offset; `tail --data-dir` commits only seqs it has read from the files, after syncing the
//! segments they are in. As a last guard, the engine's start clamps an offset above the
//! recovered journal's end down to it ([`ConsumerOffsets::clamp_to`]).
//!
//! A group exists while its file does: `DELETE /v1/consumers/{group}` removes it (and syncs
//! the directory), so retention no longer keeps records for it. A commit racing a delete of
//! the same group may bring it back; the last one wins, as for two commits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::durable;
use crate::limits;
use crate::order::validate_id;

/// Folder of the offset files inside the data directory.
pub fn consumers_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("consumers")
}

/// Checks a group name: the id alphabet of the contract, 1..=64 bytes, not starting with a
/// dot (it names a file; `.` and `..` and hidden names are refused).
pub fn validate_group(group: &str) -> Result<(), String> {
    validate_id("group", group, limits::ORDER_ID_BYTES_MAX)?;
    if group.starts_with('.') {
        return Err(format!("group {group:?} must not start with a dot"));
    }
    Ok(())
}

/// The offset files of one data directory.
#[derive(Debug, Clone)]
pub struct ConsumerOffsets {
    dir: PathBuf,
}

impl ConsumerOffsets {
    /// Opens (creating if needed) `<data_dir>/consumers`, and removes the temporary files of
    /// commits a crash interrupted (older than a minute: a live writer's is seconds old).
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = consumers_dir(data_dir);
        durable::create_dir_all(&dir)?;
        let stale = std::time::Duration::from_secs(60);
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let is_temporary = name.to_str().is_some_and(durable::is_temporary_name);
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age >= stale);
            if is_temporary && old {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    fn path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.offset"))
    }

    /// The group's committed offset; `None` if it never committed.
    pub fn get(&self, group: &str) -> io::Result<Option<u64>> {
        validate_group(group).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        match fs::read_to_string(self.path(group)) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("offset file of group {group} holds {text:?}, not a seq"),
                )
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Every group with its offset, by name.
    pub fn list(&self) -> io::Result<Vec<(String, u64)>> {
        let mut groups = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(group) = name.to_str().and_then(|n| n.strip_suffix(".offset")) else {
                continue;
            };
            if validate_group(group).is_err() {
                continue;
            }
            if let Some(seq) = self.get(group)? {
                groups.push((group.to_owned(), seq));
            }
        }
        groups.sort();
        Ok(groups)
    }

    /// Commits the group's offset durably (see the module doc). The caller has made sure that
    /// the journal holds `seq` on stable storage. Refuses a new group past
    /// `CONSUMER_GROUPS_MAX`.
    pub fn commit(&self, group: &str, seq: u64) -> io::Result<()> {
        validate_group(group).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let path = self.path(group);
        if !path.exists() && self.list()?.len() >= limits::CONSUMER_GROUPS_MAX {
            return Err(io::Error::new(
                io::ErrorKind::QuotaExceeded,
                format!(
                    "{} consumer groups exist, the most allowed",
                    limits::CONSUMER_GROUPS_MAX
                ),
            ));
        }
        // The engine and a `tail --data-dir` may commit the same group at once: each writes
        // its own uniquely named temporary file and renames it whole; a failed commit (a full
        // disk) removes its temporary file at once.
        durable::write_file_atomically(&path, format!("{seq}\n").as_bytes(), 0o644)?;
        Ok(())
    }

    /// Forgets a group: removes its offset file and syncs the directory, so that neither a
    /// restart nor retention sees it again. `Ok(false)` if the group had no offset.
    pub fn delete(&self, group: &str) -> io::Result<bool> {
        validate_group(group).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let path = self.path(group);
        if !path.exists() {
            return Ok(false);
        }
        match durable::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        }
        durable::sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Lowers every offset above `last_seq` (the recovered journal's last record) to it,
    /// durably, and returns each group lowered with its old offset. Such an offset is left by
    /// a power cut that took records the group had committed past (or by a hand edit): the
    /// seqs after the journal's end are handed out again to new records, which the group
    /// must not skip.
    pub fn clamp_to(&self, last_seq: u64) -> io::Result<Vec<(String, u64)>> {
        let mut lowered = Vec::new();
        for (group, seq) in self.list()? {
            if seq > last_seq {
                self.commit(&group, last_seq)?;
                lowered.push((group, seq));
            }
        }
        Ok(lowered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_commit_read_back_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = ConsumerOffsets::open(dir.path()).unwrap();
        assert_eq!(offsets.get("picking").unwrap(), None);
        offsets.commit("picking", 42).unwrap();
        offsets.commit("packing", 7).unwrap();
        offsets.commit("picking", 43).unwrap();
        let reopened = ConsumerOffsets::open(dir.path()).unwrap();
        assert_eq!(reopened.get("picking").unwrap(), Some(43));
        assert_eq!(
            reopened.list().unwrap(),
            vec![("packing".to_owned(), 7), ("picking".to_owned(), 43)]
        );
        assert!(offsets.commit("../etc", 1).is_err());
        assert!(offsets.get("a/b").is_err());
    }

    #[test]
    fn a_deleted_group_is_gone_and_a_clamp_lowers_only_offsets_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = ConsumerOffsets::open(dir.path()).unwrap();
        offsets.commit("picking", 40).unwrap();
        offsets.commit("audit", 90).unwrap();
        offsets.commit("packing", 120).unwrap();
        assert!(offsets.delete("picking").unwrap());
        assert!(!offsets.delete("picking").unwrap(), "deleted twice");
        assert!(offsets.delete("../x").is_err());
        assert_eq!(offsets.get("picking").unwrap(), None);
        assert_eq!(
            offsets.clamp_to(100).unwrap(),
            vec![("packing".to_owned(), 120)]
        );
        let reopened = ConsumerOffsets::open(dir.path()).unwrap();
        assert_eq!(
            reopened.list().unwrap(),
            vec![("audit".to_owned(), 90), ("packing".to_owned(), 100)]
        );
        assert!(reopened.clamp_to(100).unwrap().is_empty());
    }

    /// A commit that fails after creating its temporary file removes it at once.
    #[test]
    fn a_failed_commit_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = ConsumerOffsets::open(dir.path()).unwrap();
        // The rename fails: the group's offset path is a non-empty directory.
        let blocker = consumers_dir(dir.path()).join("stuck.offset");
        fs::create_dir_all(blocker.join("inside")).unwrap();
        assert!(offsets.commit("stuck", 5).is_err());
        let left: Vec<_> = fs::read_dir(consumers_dir(dir.path()))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
