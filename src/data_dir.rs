//! The data directory: what lives where, and the files that are the engine's own (the
//! lock, the hash keys, the tokens). The journal, checkpoints and consumer offsets have their
//! own modules for their formats; their folders are named here.
//!
//! ```text
//! <data_dir>/
//!   LOCK                      flock, held by the running engine (one engine per journal)
//!   journal/<first_seq>.seg   the journal's segments: the source of truth
//!   checkpoints/<seq>.ckpt    the state at a seq (recovery starts from the newest)
//!   consumers/<group>.offset  each consumer group's committed offset
//!   inventory.slots           the memory-mapped stock slots, rebuilt at every start
//!   hash.keys                 the order-key hash keys (0600; checkpoints need them)
//!   admin.token               the generated admin token (0600), when none is configured
//!   consumer.token            the generated consumer token (0600), likewise
//! ```
//!
//! Every file here is written through [`crate::durable`]: whole or not at all, and made
//! durable (file and directory entry) before the engine relies on it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::durable;
use crate::inventory::KeyHasher;
use crate::limits;

pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

pub(crate) fn lock_data_dir(data_dir: &Path) -> Result<File, DataDirError> {
    match try_lock_data_dir(data_dir) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(DataDirError::Locked(data_dir.to_owned())),
        Err(source) => Err(DataDirError::Io {
            path: data_dir.join("LOCK"),
            source,
        }),
    }
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("data directory {0} is locked by another running engine (only one may use a journal)")]
    Locked(PathBuf),
    #[error("hash keys file {path}: {reason}")]
    HashKeys { path: PathBuf, reason: String },
    #[error("token file {path}: {source}")]
    Token { path: PathBuf, source: io::Error },
}

/// Takes `<data_dir>/LOCK` (flock, exclusive, non-blocking) for as long as the returned file
/// stays open: `Ok(None)` when another process holds it (an engine, or a preflight for a
/// moment). The engine holds it while it runs; preflight takes it to tell whether one does.
pub fn try_lock_data_dir(data_dir: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("LOCK"))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if locked != 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(file))
}

/// The order-key hash keys of this data directory: random, drawn when the directory is first
/// used and kept in `<data_dir>/hash.keys` (mode 0600), because checkpoints store order keys.
/// Secret like the admin token: knowing them, a client could aim key collisions.
pub(crate) fn load_or_create_hash_keys(data_dir: &Path) -> Result<KeyHasher, DataDirError> {
    let path = data_dir.join("hash.keys");
    let fail = |reason: String| DataDirError::HashKeys {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut words = text.split_whitespace().map(|w| u64::from_str_radix(w, 16));
            match (words.next(), words.next(), words.next()) {
                (Some(Ok(k0)), Some(Ok(k1)), None) => Ok(KeyHasher::with_keys(k0, k1)),
                _ => Err(fail("expected two 64-bit hex keys".into())),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if !checkpoint::list(&checkpoint::checkpoints_dir(data_dir))
                .map_err(|e| fail(e.to_string()))?
                .is_empty()
            {
                return Err(fail(
                    "missing, but checkpoints exist that need it; restore it or remove the \
                     checkpoints (recovery then replays the whole journal, if it is complete)"
                        .into(),
                ));
            }
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| fail(e.to_string()))?;
            let k0 = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            let k1 = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
            durable::write_file_atomically(
                &path,
                format!("{k0:016x} {k1:016x}\n").as_bytes(),
                0o600,
            )
            .map_err(|e| fail(e.to_string()))?;
            Ok(KeyHasher::with_keys(k0, k1))
        }
        Err(error) => Err(fail(error.to_string())),
    }
}

/// A bearer token (the admin token, the consumer token): the configured one (file or env),
/// else `<data_dir>/<file_name>`, made with a random value and mode 0600 on first start and
/// reused on later starts. Returns the token and the file it created.
pub(crate) fn resolve_token(
    configured: Option<&str>,
    data_dir: &Path,
    file_name: &str,
) -> Result<(String, Option<PathBuf>), DataDirError> {
    if let Some(token) = configured {
        return Ok((token.to_owned(), None));
    }
    let path = data_dir.join(file_name);
    let token_err = |source| DataDirError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(token_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "token file is empty",
                )));
            }
            // Keep the secret private even if someone loosened the mode.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(token_err)?;
            Ok((token, None))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut bytes = [0u8; limits::GENERATED_TOKEN_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| token_err(io::Error::other(e.to_string())))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Durable (file and directory entry) before anyone is told the token: a power
            // cut must not make the engine draw another one.
            durable::write_file_atomically(&path, format!("{token}\n").as_bytes(), 0o600)
                .map_err(token_err)?;
            Ok((token, Some(path)))
        }
        Err(error) => Err(token_err(error)),
    }
}

/// Constant-time comparison of a presented bearer token with an expected one: the time
/// depends on the lengths only, never on where the first difference is.
pub(crate) fn token_matches(expected: &str, presented: &str) -> bool {
    let expected = expected.as_bytes();
    let presented = presented.as_bytes();
    let mut difference = expected.len() ^ presented.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ presented.get(index).copied().unwrap_or(0));
    }
    difference == 0
}
