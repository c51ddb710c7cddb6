//! Power cuts for the real binary: after a SIGKILL, cut every file of the engine's data
//! directory back to a state a power cut could have left, from the engine's power-cut trace
//! (`stampede::durable`, turned on by [`PowerCut::env`]).
//!
//! The rules, per file (tracked by identity across renames):
//! - data reaches the disk only through a completed sync: the writes and size changes made
//!   before the last completed `sync-begin` of the file are kept; of those after it, a
//!   seeded prefix is kept (none, some, all), the last kept write torn at a 512-byte sector
//!   (a sector is written whole or not at all), and the rest undone. An undone write becomes
//!   zeros, which is what the engine wrote over (journal frames land on zeros or past the
//!   end; every other file is written once, fresh) and the size shrinks back;
//! - names reach the disk only through a completed sync of their directory: of a
//!   directory's creations, renames, removals and `mkdir`s after its last completed sync, a
//!   seeded prefix is kept (metadata journals commit in order) and the rest undone, newest
//!   first: a created file disappears, a renamed one gets its old name back and the file it
//!   had replaced returns, a removed one returns, a created folder disappears with all in it.
//!
//! Files the trace never mentions (the inventory map, rebuilt at every start; `LOCK`) are left
//! as they are. After a cut the trace starts afresh with the surviving files listed as
//! durable (`exists PATH SIZE`), for the next incarnation.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const SECTOR: u64 = 512;

/// One engine's trace and what a cut did.
pub struct PowerCut {
    dir: tempfile::TempDir,
    cuts: u64,
}

/// What one cut changed.
#[derive(Debug, Default, Clone)]
pub struct CutReport {
    /// Files whose unsynced data was dropped (wholly or in part).
    pub files_cut: u64,
    /// Bytes of unsynced writes undone.
    pub bytes_dropped: u64,
    /// Unsynced writes kept torn at a sector.
    pub torn_writes: u64,
    /// Directory changes undone (creations, renames, removals, folders).
    pub names_undone: u64,
}

#[derive(Debug, Clone)]
enum Change {
    Write { at: usize, offset: u64, len: u64 },
    SetLen { at: usize, len: u64 },
}

#[derive(Debug, Default)]
struct Identity {
    /// Where the file is now (at the kill), if anywhere.
    path: Option<PathBuf>,
    /// Size known durable when the trace began (`exists`), else 0 (created in the trace).
    base_len: u64,
    changes: Vec<Change>,
    /// The index of the last completed sync's `sync-begin` (a truncation's line counts as
    /// one: everything before it is durable).
    synced_at: Option<usize>,
}

#[derive(Debug, Clone)]
enum Name {
    Create {
        path: PathBuf,
        identity: usize,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
    Remove {
        path: PathBuf,
        backup: Option<PathBuf>,
    },
    Mkdir {
        path: PathBuf,
    },
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A small seeded generator (splitmix64), so that a cut is replayable from the loop's seed.
pub struct CutRng(pub u64);

impl CutRng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == 0 { 0 } else { self.next() % (max + 1) }
    }

    /// How many of `n` unsynced changes survive: none, all, or some, a third each.
    fn survivors(&mut self, n: usize) -> usize {
        match self.next() % 3 {
            0 => 0,
            1 => n,
            _ => self.upto(n as u64) as usize,
        }
    }
}

impl Default for PowerCut {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerCut {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stampede-power-cut")
            .tempdir()
            .expect("create the trace's tempdir");
        fs::write(dir.path().join("trace"), b"").expect("create the trace");
        Self { dir, cuts: 0 }
    }

    fn trace(&self) -> PathBuf {
        self.dir.path().join("trace")
    }

    fn backups(&self) -> PathBuf {
        self.dir.path().join("trace.d")
    }

    /// The environment that turns the engine's trace on.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("STAMPEDE_TEST_MODE".into(), "1".into()),
            (
                "STAMPEDE_TEST_POWER_CUT_TRACE".into(),
                self.trace().display().to_string(),
            ),
        ]
    }

    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// Cuts the files under `data_dir` back to what a power cut at the moment of the last
    /// SIGKILL could leave, and starts the trace afresh. The engine must be dead.
    pub fn cut(&mut self, data_dir: &Path, rng: &mut CutRng) -> CutReport {
        let text = fs::read_to_string(self.trace()).expect("read the power-cut trace");
        let mut report = CutReport::default();
        let mut identities: Vec<Identity> = Vec::new();
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        let mut names: Vec<(usize, PathBuf, Name)> = Vec::new(); // (index, dir, change)
        let mut dir_synced: HashMap<PathBuf, usize> = HashMap::new();
        let mut syncs: HashMap<String, (usize, PathBuf)> = HashMap::new();
        let mut dirs_known: std::collections::HashSet<PathBuf> = Default::default();
        for (at, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split(' ').collect();
            let path = |n: usize| PathBuf::from(words[n]);
            let number = |n: usize| words[n].parse::<u64>().expect("number in trace");
            match words[0] {
                "exists" => {
                    identities.push(Identity {
                        path: Some(path(1)),
                        base_len: number(2),
                        ..Identity::default()
                    });
                    by_path.insert(path(1), identities.len() - 1);
                }
                "create" => {
                    identities.push(Identity {
                        path: Some(path(1)),
                        ..Identity::default()
                    });
                    let identity = identities.len() - 1;
                    by_path.insert(path(1), identity);
                    names.push((
                        at,
                        parent(&path(1)),
                        Name::Create {
                            path: path(1),
                            identity,
                        },
                    ));
                }
                "write" => {
                    if let Some(&identity) = by_path.get(&path(1)) {
                        identities[identity].changes.push(Change::Write {
                            at,
                            offset: number(2),
                            len: number(3),
                        });
                    }
                }
                "setlen" => {
                    if let Some(&identity) = by_path.get(&path(1)) {
                        identities[identity]
                            .changes
                            .push(Change::SetLen { at, len: number(2) });
                    }
                }
                "truncate" => {
                    // Cut and synced (recovery's cut of a torn tail): a size change in its
                    // place among the file's changes, durable with everything before it.
                    // (Applied after all the durable changes instead, it would cut off the
                    // records written after it, synced or not.)
                    if let Some(&identity) = by_path.get(&path(1)) {
                        let identity = &mut identities[identity];
                        identity.changes.push(Change::SetLen { at, len: number(2) });
                        identity.synced_at =
                            Some(identity.synced_at.map_or(at + 1, |s| s.max(at + 1)));
                    }
                }
                "sync-begin" => {
                    syncs.insert(words[1].to_string(), (at, path(2)));
                }
                "sync-end" => {
                    let (begun, synced) = syncs.remove(words[1]).expect("sync-end after begin");
                    if synced.is_dir() || dirs_known.contains(&synced) {
                        let entry = dir_synced.entry(synced).or_insert(begun);
                        *entry = (*entry).max(begun);
                    } else if let Some(&identity) = by_path.get(&synced) {
                        let entry = &mut identities[identity].synced_at;
                        *entry = Some(entry.map_or(begun, |e| e.max(begun)));
                    }
                }
                "rename" => {
                    let (from, to) = (path(1), path(2));
                    let replaced = (words[3] != "-").then(|| path(3));
                    if let Some(old) = by_path.remove(&to) {
                        identities[old].path = replaced.clone();
                        if let Some(backup) = &replaced {
                            by_path.insert(backup.clone(), old);
                        }
                    }
                    if let Some(moved) = by_path.remove(&from) {
                        identities[moved].path = Some(to.clone());
                        by_path.insert(to.clone(), moved);
                    }
                    names.push((at, parent(&to), Name::Rename { from, to, replaced }));
                }
                "remove" => {
                    let backup = (words[2] != "-").then(|| path(2));
                    if let Some(gone) = by_path.remove(&path(1)) {
                        identities[gone].path = backup.clone();
                        if let Some(backup) = &backup {
                            by_path.insert(backup.clone(), gone);
                        }
                    }
                    names.push((
                        at,
                        parent(&path(1)),
                        Name::Remove {
                            path: path(1),
                            backup,
                        },
                    ));
                }
                "mkdir" => {
                    dirs_known.insert(path(1));
                    names.push((at, parent(&path(1)), Name::Mkdir { path: path(1) }));
                }
                other => panic!("unknown power-cut trace line {other:?}: {line}"),
            }
        }

        // 1. Each file's surviving contents, read where the file is now.
        let mut contents: Vec<Option<Vec<u8>>> = Vec::with_capacity(identities.len());
        for identity in &identities {
            let Some(path) = &identity.path else {
                contents.push(None);
                continue;
            };
            if identity.changes.is_empty() {
                // Written through no traced operation since the trace began (the inventory
                // map, `LOCK`, or a file only renamed): as it is.
                contents.push(None);
                continue;
            }
            let Ok(mut bytes) = fs::read(path) else {
                contents.push(None);
                continue;
            };
            let synced_at = identity.synced_at;
            let durable = |at: usize| synced_at.is_some_and(|s| at < s);
            let mut len = identity.base_len;
            let mut unsynced = Vec::new();
            for change in &identity.changes {
                let at = match change {
                    Change::Write { at, .. } | Change::SetLen { at, .. } => *at,
                };
                if durable(at) {
                    len = apply_len(len, change);
                } else {
                    unsynced.push(change.clone());
                }
            }
            let keep = rng.survivors(unsynced.len());
            let before = bytes.len() as u64;
            for (index, change) in unsynced.iter().enumerate() {
                if index < keep {
                    let torn = index + 1 == keep && rng.upto(1) == 0;
                    if let (
                        true,
                        Change::Write {
                            offset, len: wlen, ..
                        },
                    ) = (torn, change)
                    {
                        let end = offset + wlen;
                        let tear = (offset + rng.upto(*wlen)) / SECTOR * SECTOR;
                        let tear = tear.max(*offset);
                        zero(&mut bytes, tear, end);
                        len = len.max(tear);
                        report.torn_writes += 1;
                    } else {
                        len = apply_len(len, change);
                    }
                } else if let Change::Write {
                    offset, len: wlen, ..
                } = change
                {
                    zero(&mut bytes, *offset, offset + wlen);
                    report.bytes_dropped += *wlen;
                }
            }
            bytes.resize(len as usize, 0);
            if keep < unsynced.len() || before != len {
                report.files_cut += 1;
            }
            contents.push(Some(bytes));
        }

        // 2. Undo the directory changes a power cut could lose, newest first.
        let mut undone = Vec::new();
        let mut per_dir: HashMap<PathBuf, Vec<usize>> = HashMap::new();
        for (index, (at, dir, _)) in names.iter().enumerate() {
            if dir_synced.get(dir).is_none_or(|&synced| *at > synced) {
                per_dir.entry(dir.clone()).or_default().push(index);
            }
        }
        let mut dirs: Vec<_> = per_dir.into_iter().collect();
        dirs.sort();
        for (_, pending) in dirs {
            let keep = rng.survivors(pending.len());
            undone.extend(pending[keep..].iter().copied());
        }
        undone.sort_unstable();
        for &index in undone.iter().rev() {
            report.names_undone += 1;
            match &names[index].2 {
                Name::Create { path, identity } => {
                    let _ = fs::remove_file(path);
                    identities[*identity].path = None;
                    by_path.remove(path);
                }
                Name::Rename { from, to, replaced } => {
                    let _ = fs::rename(to, from);
                    if let Some(moved) = by_path.remove(to) {
                        identities[moved].path = Some(from.clone());
                        by_path.insert(from.clone(), moved);
                    }
                    if let Some(backup) = replaced {
                        let _ = fs::rename(backup, to);
                        if let Some(old) = by_path.remove(backup) {
                            identities[old].path = Some(to.clone());
                            by_path.insert(to.clone(), old);
                        }
                    }
                }
                Name::Remove { path, backup } => {
                    if let Some(backup) = backup {
                        let _ = fs::rename(backup, path);
                        if let Some(back) = by_path.remove(backup) {
                            identities[back].path = Some(path.clone());
                            by_path.insert(path.clone(), back);
                        }
                    }
                }
                Name::Mkdir { path } => {
                    let _ = fs::remove_dir_all(path);
                    for identity in &mut identities {
                        if identity.path.as_ref().is_some_and(|p| p.starts_with(path)) {
                            identity.path = None;
                        }
                    }
                }
            }
        }

        // 3. Write the surviving contents where each file now is.
        for (identity, bytes) in identities.iter().zip(contents) {
            if let (Some(path), Some(bytes)) = (&identity.path, bytes)
                && path.starts_with(data_dir)
                && path.exists()
            {
                fs::write(path, bytes).expect("write a cut file");
            }
        }

        // 4. A fresh trace: what survived is durable now.
        let _ = fs::remove_dir_all(self.backups());
        let mut manifest = fs::File::create(self.trace()).expect("reset the trace");
        for file in files_under(data_dir) {
            let len = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            writeln!(manifest, "exists {} {len}", file.display()).unwrap();
        }
        self.cuts += 1;
        report
    }
}

fn apply_len(len: u64, change: &Change) -> u64 {
    match change {
        Change::Write {
            offset, len: wlen, ..
        } => len.max(offset + wlen),
        Change::SetLen { len: set, .. } => *set,
    }
}

fn zero(bytes: &mut [u8], from: u64, to: u64) {
    let end = (to as usize).min(bytes.len());
    let start = (from as usize).min(end);
    bytes[start..end].fill(0);
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}
