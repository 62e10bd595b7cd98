//! Creating a database file atomically: either the file does not exist, or it is a whole,
//! empty quern database. A new database is built under a temporary name beside it, synced,
//! and then linked into place, and the directory synced; a crash at any moment leaves at most
//! a temporary file, which the next creation removes.
//!
//! A file that a crash left half-created (empty, zeros, or redb's header without its magic
//! number and nothing after it, as redb leaves one when it is killed while it creates a file)
//! is replaced the same way, keeping its permissions (and its owner where the process may set
//! it). Nothing else is ever deleted or overwritten: a file with any other content is left to
//! redb, which opens it or refuses it. A symbolic link is followed: the file it names is
//! created or replaced, and the link stays.
//!
//! Creators serialise on an exclusive lock of the directory, and look at the file again once
//! they hold it: two processes that both found a file missing or half-created never both put a
//! database there (the second would replace the first's, which may already hold acknowledged
//! jobs). While a creator holds the lock, every temporary file of the database's name belongs
//! to a creator that died: it is removed.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result, StorageError};

/// What is at the target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file.
    Missing,
    /// A creation a crash cut short: empty, zeros, or a header with no magic number and
    /// nothing after it.
    HalfCreated,
    /// Something else: a database, or a file for redb to refuse.
    Other,
}

/// The largest half-created file recognised: redb's first allocation (73,728 bytes here), with
/// room to spare. A larger file is not touched.
const HALF_CREATED_MAX: u64 = 1024 * 1024;

/// redb writes its header in the first page and its magic number last: a file whose first
/// bytes are zero was never a whole database.
const MAGIC_LEN: usize = 9;
const HEADER_PAGE: usize = 4096;

/// What is at `path` (a symbolic link followed). Errors only when the file cannot be looked at
/// (permissions, a symlink loop, not a regular file).
pub(crate) fn inspect(path: &Path) -> io::Result<Found> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > HALF_CREATED_MAX {
        return Ok(Found::Other);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)?
        .take(HALF_CREATED_MAX)
        .read_to_end(&mut bytes)?;
    let no_magic = bytes.iter().take(MAGIC_LEN).all(|&b| b == 0);
    let nothing_after_header = bytes.iter().skip(HEADER_PAGE).all(|&b| b == 0);
    Ok(if no_magic && nothing_after_header {
        Found::HalfCreated
    } else {
        Found::Other
    })
}

/// The file `path` names: its symbolic links followed, also a dangling one (whose target is
/// what gets created).
pub(crate) fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

/// Makes sure a database is at `path` (resolved, see [`resolve`]) where [`inspect`] found none,
/// or a half-created one: `build` writes a new, empty database at the temporary path it is
/// given and closes it. Returns whether this call put it there (`false`: another creator did
/// first, or the file is no longer missing or half-created).
pub(crate) fn create(path: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<bool> {
    let io_error = |e: io::Error| Error::Open {
        path: path.to_path_buf(),
        source: StorageError::new(redb::Error::Io(e)),
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io_error(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?
        .to_string_lossy()
        .into_owned();
    // Held until this creation is in place: released when the handle drops. Where a directory
    // cannot be opened or locked (not on Unix), creators go unserialised: a missing file is
    // still only ever linked into place, never replaced.
    let lock = File::open(&dir).and_then(|d| d.lock().map(|()| d)).ok();
    if lock.is_some() {
        remove_temporaries(&dir, &name);
    }
    let found = inspect(path).map_err(io_error)?;
    if found == Found::Other {
        return Ok(false);
    }
    let temp = dir.join(temp_name(&name));
    let made = build(&temp)
        .map_err(|e| e.in_file(path))
        .and_then(|()| keep_permissions(path, &temp, found).map_err(io_error))
        .and_then(|()| {
            File::open(&temp)
                .and_then(|f| f.sync_all())
                .map_err(io_error)
        });
    if let Err(e) = made {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    let placed = match found {
        // The half-created file is replaced whole (by one creator only, where they serialise).
        Found::HalfCreated if lock.is_none() => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a half-created file is replaced only where creators can lock its directory",
        )),
        Found::HalfCreated => fs::rename(&temp, path),
        // Linked, which never replaces what another process put there meanwhile.
        _ => match fs::hard_link(&temp, path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(&temp);
                return Ok(false);
            }
            // A file system without hard links: renamed, which is safe while the creators
            // hold the directory's lock and the target was still missing under it.
            Err(_) if lock.is_some() => fs::rename(&temp, path),
            other => other,
        },
    };
    let _ = fs::remove_file(&temp);
    placed.map_err(io_error)?;
    // Some file systems cannot sync a directory (EINVAL): the file is in place either way.
    if let Some(dir) = &lock
        && let Err(e) = dir.sync_all()
        && e.kind() != io::ErrorKind::InvalidInput
    {
        return Err(io_error(e));
    }
    Ok(true)
}

/// Gives the new database the permissions (and, where this process may, the owner) of the
/// half-created file it replaces, so that a file made ready by hand (`install -m 660 -o app`)
/// keeps them.
fn keep_permissions(path: &Path, temp: &Path, found: Found) -> io::Result<()> {
    if found != Found::HalfCreated {
        return Ok(());
    }
    let meta = fs::metadata(path)?;
    fs::set_permissions(temp, meta.permissions())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // Only a privileged process may give a file away: otherwise it stays this process's.
        let _ = std::os::unix::fs::chown(temp, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(())
}

/// A temporary name for a database being created as `name`: unique within the process, and
/// across processes by the process id.
fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.quern-new-{}-{n}", std::process::id())
}

/// Removes what creations of the database at `path` (resolved) that died left beside it, when
/// no creation holds the directory's lock; otherwise leaves them to that creation.
pub(crate) fn tidy(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(lock) = File::open(dir) else {
        return;
    };
    if lock.try_lock().is_ok() {
        remove_temporaries(dir, &name.to_string_lossy());
    }
}

/// Removes the temporary files of creations of `name` in `dir`. Called with the directory's
/// lock held, when no creation is under way: each is what a creation that died left.
fn remove_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.quern-new-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}
