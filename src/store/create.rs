//! Creating a database file atomically: either the file does not exist, or it is a whole,
//! empty quern database. A new database is built under a temporary name beside the target,
//! synced, and then linked into place, and the directory synced; a crash at any moment leaves
//! at most a temporary file, which the next creation beside it removes.
//!
//! A file that a crash left half-created (empty, or zeros without a database header, as redb
//! leaves one when it is killed while it creates a file) is replaced the same way. Nothing
//! else is ever deleted or overwritten: a file with any other content is left to redb, which
//! opens it or refuses it.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What is at the target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file.
    Missing,
    /// An empty file, or one of zeros: a creation a crash cut short.
    HalfCreated,
    /// Something else: a database, or a file for redb to refuse.
    Other,
}

/// The largest half-created file recognised: redb's first allocation (73,728 bytes here), with
/// room to spare. A larger file of zeros is not touched.
const HALF_CREATED_MAX: u64 = 1024 * 1024;

/// What is at `path`. Errors only when the file cannot be looked at (permissions, a symlink
/// loop, not a regular file).
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
    Ok(if bytes.iter().all(|&b| b == 0) {
        Found::HalfCreated
    } else {
        Found::Other
    })
}

/// Puts a new database at `path`, where there is none, or a half-created one to `replace`:
/// `build` writes the database at the temporary path it is given and closes it. Returns
/// `false` when another process created one first (then it is left as it is).
pub(crate) fn create(
    path: &Path,
    replace: bool,
    build: impl FnOnce(&Path) -> crate::error::Result<()>,
) -> crate::error::Result<bool> {
    let io_error = |e: io::Error| crate::error::Error::Open {
        path: path.to_path_buf(),
        source: crate::error::StorageError::new(redb::Error::Io(e)),
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
    let temp = dir.join(temp_name(&name, std::process::id()));
    let made = build(&temp).and_then(|()| {
        File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io_error)
    });
    if let Err(e) = made {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    let placed = if replace {
        // The half-created file is replaced whole.
        fs::rename(&temp, path).map(|()| true)
    } else {
        // Linked, which never replaces: a database another process put there meanwhile stays.
        match fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // A file system without hard links: renamed, as the target is still missing.
            Err(_) if !path.exists() => fs::rename(&temp, path).map(|()| true),
            Err(e) => Err(e),
        }
    };
    let _ = fs::remove_file(&temp);
    let placed = placed.map_err(io_error)?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error)?;
    Ok(placed)
}

/// A temporary name for a database being created as `name` by process `pid`, unique within
/// the process.
fn temp_name(name: &str, pid: u32) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.quern-new-{pid}-{n}")
}

/// Removes the temporary files that creations of `path` left beside it when their process died
/// (a crash during creation leaves one). Only where the system lists its processes in `/proc`.
pub(crate) fn remove_stale(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
        return;
    };
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return;
    }
    let prefix = format!(".{name}.quern-new-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}
