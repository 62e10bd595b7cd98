//! Reading a file whose writer stopped without closing it (killed, crashed), without writing
//! a byte of it.
//!
//! redb opens such a file read-only only while a writer is live: without one, the file needs
//! the repair of a writable open (its allocator state is rebuilt from the trees and committed,
//! its header rewritten), and a read-only open refuses it. A [`Snapshot`] runs that writable
//! open over an [`Overlay`]: the file's bytes, opened read-only, under an in-memory copy of every
//! range redb writes. redb repairs the file as it would on disk, but the repair's writes, its
//! `set_len` and its syncs stay in memory; reads then see the jobs as the dead writer committed
//! them last, its claims still in progress.
//!
//! # Cost
//!
//! The open costs what a worker's start costs on such a file: the repair reads every page of
//! the trees (and verifies their checksums). The overlay holds only the blocks redb writes,
//! never the file, since the repair only reads the trees: it writes the header, the pages its
//! one repair commit touches in the system tree (the path to the freed-page tables it empties),
//! and, as the database closes, the allocator state redb records, about one bit per page of the
//! file (the regions' bitmaps). So the overlay grows with the file's pages by a factor of
//! about 1/32768 and with the depth of the system tree, not with the jobs read.
//!
//! # A writer that starts while a snapshot reads
//!
//! A snapshot takes no lock on the file: the locks redb takes for its writable open are held
//! in memory by the overlay (no other handle opens it), so a worker starting on the file
//! while `quern stats` reads it never fails for it. That worker then repairs the file and
//! writes it, and may reuse pages the snapshot reads. Holding the shared locks of redb's own
//! readers instead would need the byte offsets of redb's private locking protocol, and would
//! name a transaction the writer never knew: the one the snapshot's repair committed in memory.
//!
//! So every read (and the open) is checked after it ran: the file's length and its first
//! block, which holds redb's header, must be as they were when the snapshot opened the file.
//! That holds while no writer has overwritten a page the snapshot reads. A writer's open
//! rebuilds its allocator from the same trees the snapshot reads, so its repair commit writes
//! only pages outside them, then the header with a new transaction id. A page of those trees is
//! freed only by a later commit, and reused only by one after that, each writing the header
//! with a greater transaction id (a durable commit; quern makes no other). A read after which
//! the length or first block differ is refused with [`Error::Changed`], whatever it read: torn
//! reads are never shown as data. The reads after it are refused too; the file is then a live
//! writer's, and a new read-only open reads it beside that writer.
//!
//! What the check cannot do: a read runs before it is checked, and redb verifies no checksum
//! on an ordinary read. A read that meets a page a writer reused (after its open and two more
//! commits, so a long read, such as a `dump` of a large file while a busy worker starts) may
//! parse it as anything: a redb panic is caught and reported, but a length that asks for
//! gigabytes is an allocation failure, which aborts the process. Only the reading process:
//! the file and the writer are not touched. Holding a lock that keeps writers out would close
//! this, at the cost of a worker's start failing while an operator reads; the snapshot is
//! for reading a crashed worker's file before it is restarted, and the window is small.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use redb::{BackendError, ConcurrencyMode, Database};

use crate::error::{Error, Result, StorageError};

/// The overlay's unit: redb's page size, so that a page write fills one block.
const BLOCK: u64 = 4096;

/// How much of the file's start is compared to find that a writer opened it: the first block,
/// which holds redb's header (the magic number, the god byte with the recovery flag, the
/// layout, and the two commit slots with their transaction ids: 320 bytes in redb 4). Bytes
/// after the header in it are compared too: only a writer changes those, so a difference
/// there is a writer as surely.
const COMPARED: u64 = BLOCK;

/// A database file whose writer stopped without closing it, opened and repaired in memory:
/// reads see what its writer committed last, and the file keeps every byte.
pub(crate) struct Snapshot {
    db: Database,
    overlay: Arc<Overlay>,
}

impl Snapshot {
    /// Opens `file` (the database at `path`) through an overlay, repairing it in memory; with
    /// `verify`, redb checks every page's checksum too (its integrity check, in memory).
    /// `guard` runs redb's open, turning its errors and panics into quern's (the opener's
    /// `guarded_open`).
    ///
    /// # Errors
    /// Those of `guard`; [`Error::Changed`] when a writer opened the file while this open read
    /// it, whatever the open returned.
    pub(crate) fn open(
        path: &Path,
        file: File,
        cache_size: usize,
        verify: bool,
        guard: impl FnOnce(
            &dyn Fn() -> std::result::Result<Database, redb::DatabaseError>,
        ) -> Result<Database>,
    ) -> Result<Snapshot> {
        let overlay = Arc::new(Overlay::new(file).map_err(|e| Error::Open {
            path: path.to_path_buf(),
            source: StorageError::new(redb::Error::Io(e)),
        })?);
        let opened = guard(&|| {
            redb::Builder::new()
                // The snapshot's own locks, held in memory (see the module's doc).
                .set_concurrency_mode(ConcurrencyMode::ExclusiveWriter)
                .set_cache_size(cache_size)
                .set_check_integrity_on_open(verify)
                .create_with_backend(OverlayBackend(overlay.clone()))
        });
        // Checked whether or not the open succeeded: a repair that read a page a writer was
        // rewriting may have failed for it.
        overlay.refuse_if_changed(path)?;
        Ok(Snapshot {
            db: opened?,
            overlay,
        })
    }

    /// Runs `read` on the snapshot's database, then checks that no writer opened the file
    /// meanwhile: if one did, the read is [`Error::Changed`] whatever it returned. `read` must
    /// not unwind (the caller guards redb's panics, as `guarded_read` does), or the check is
    /// skipped.
    pub(crate) fn checked<R>(
        &self,
        path: &Path,
        read: impl FnOnce(&Database) -> Result<R>,
    ) -> Result<R> {
        let read = read(&self.db);
        self.overlay.refuse_if_changed(path)?;
        read
    }

    /// [`Error::Changed`] when the file is not as the snapshot found it: a writer opened it.
    pub(crate) fn refuse_if_changed(&self, path: &Path) -> Result<()> {
        self.overlay.refuse_if_changed(path)
    }

    /// The bytes the overlay holds: what redb wrote, in whole blocks.
    pub(crate) fn overlay_bytes(&self) -> u64 {
        self.overlay.state.lock().blocks.len() as u64 * BLOCK
    }
}

/// The file's bytes, read-only, under the blocks redb wrote: the storage of a [`Snapshot`].
struct Overlay {
    state: Mutex<State>,
    /// The file's length when it was opened.
    len_at_open: u64,
    /// The file's first [`COMPARED`] bytes when it was opened.
    start_at_open: Vec<u8>,
}

struct State {
    file: File,
    /// The length redb sees.
    len: u64,
    /// Bytes of the file at or past this offset read as zeros: redb shrank the storage below
    /// it (and may have grown it since). The file's length at first.
    file_end: u64,
    /// The blocks redb wrote, by index, each whole.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Overlay {
    fn new(file: File) -> io::Result<Overlay> {
        let len = file.metadata()?.len();
        let mut state = State {
            file,
            len,
            file_end: len,
            blocks: BTreeMap::new(),
        };
        let start_at_open = state.read_file(0, COMPARED.min(len))?;
        Ok(Overlay {
            state: Mutex::new(state),
            len_at_open: len,
            start_at_open,
        })
    }

    /// Whether the file is as it was when opened: its length and its first block.
    fn unchanged(&self) -> io::Result<bool> {
        let mut state = self.state.lock();
        let len = state.file.metadata()?.len();
        if len != self.len_at_open {
            return Ok(false);
        }
        let start = state.read_file(0, self.start_at_open.len() as u64)?;
        Ok(start == self.start_at_open)
    }

    /// [`Error::Changed`] when the file is not as it was when opened.
    fn refuse_if_changed(&self, path: &Path) -> Result<()> {
        match self.unchanged() {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Changed {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(Error::storage(
                "checking that no writer opened the file while it was read",
                redb::Error::Io(e),
            )
            .in_file(path)),
        }
    }
}

impl State {
    /// `n` bytes of the file itself at `offset`.
    fn read_file(&mut self, offset: u64, n: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; usize::try_from(n).map_err(io::Error::other)?];
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Fills `out` with the bytes redb sees from `offset`, outside the blocks it wrote: the
    /// file's, or zeros past where redb shrank it.
    fn read_below(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset + out.len() as u64;
        let from_file = end.min(self.file_end).saturating_sub(offset);
        // At most `out.len()`.
        let (file_part, zeros) = out.split_at_mut(from_file as usize);
        if !file_part.is_empty() {
            self.file.seek(SeekFrom::Start(offset))?;
            self.file.read_exact(file_part)?;
        }
        zeros.fill(0);
        Ok(())
    }

    fn read(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} past the end ({})",
                        out.len(),
                        self.len
                    ),
                )
            })?;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let in_block = at - block * BLOCK;
            let n = (BLOCK - in_block).min(end - at);
            let dst_start = usize::try_from(at - offset).map_err(io::Error::other)?;
            let dst = &mut out[dst_start..dst_start + n as usize];
            match self.blocks.get(&block) {
                Some(b) => dst.copy_from_slice(&b[in_block as usize..(in_block + n) as usize]),
                None => self.read_below(at, dst)?,
            }
            at += n;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::other("write past the largest offset"))?;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let in_block = at - block * BLOCK;
            let n = (BLOCK - in_block).min(end - at);
            if !self.blocks.contains_key(&block) {
                let mut whole = vec![0; BLOCK as usize].into_boxed_slice();
                // What the block held: its bytes within the storage's length; zeros past it.
                let within = self.len.saturating_sub(block * BLOCK).min(BLOCK);
                self.read_below(block * BLOCK, &mut whole[..within as usize])?;
                self.blocks.insert(block, whole);
            }
            let src_start = (at - offset) as usize;
            if let Some(b) = self.blocks.get_mut(&block) {
                b[in_block as usize..(in_block + n) as usize]
                    .copy_from_slice(&data[src_start..src_start + n as usize]);
            }
            at += n;
        }
        self.len = self.len.max(end);
        Ok(())
    }

    fn set_len(&mut self, len: u64) {
        if len < self.len {
            // The bytes cut off read as zeros if the storage grows again.
            self.file_end = self.file_end.min(len);
            let first_gone = len.div_ceil(BLOCK);
            self.blocks.retain(|&b, _| b < first_gone);
            if let Some(b) = self.blocks.get_mut(&(len / BLOCK)) {
                b[(len % BLOCK) as usize..].fill(0);
            }
        }
        self.len = len;
    }
}

/// The [`redb::StorageBackend`] of a [`Snapshot`]: an [`Overlay`] shared with the snapshot,
/// which checks the file through it.
struct OverlayBackend(Arc<Overlay>);

impl std::fmt::Debug for OverlayBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayBackend")
            .field("len_at_open", &self.0.len_at_open)
            .finish_non_exhaustive()
    }
}

impl redb::StorageBackend for OverlayBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.state.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.state.lock().read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.state.lock().set_len(len);
        Ok(())
    }

    /// Nothing to sync: the writes stay in memory, and are dropped with the snapshot.
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.state.lock().write(offset, data)
    }

    // The locks: this backend is opened by one redb handle only, so every lock it asks for is
    // granted, and held by nobody else. None reaches the file (see the module's doc).

    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }

    fn try_lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }

    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn query_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use redb::StorageBackend;

    use super::*;

    /// An overlay over a file of `len` bytes, each its offset mod 251.
    fn overlay(len: u64) -> (tempfile::NamedTempFile, Vec<u8>, OverlayBackend) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        file.write_all(&bytes).unwrap();
        let read_only = File::open(file.path()).unwrap();
        let backend = OverlayBackend(Arc::new(Overlay::new(read_only).unwrap()));
        (file, bytes, backend)
    }

    fn read(backend: &OverlayBackend, offset: u64, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        backend.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn writes_across_blocks_read_back_over_the_file_which_keeps_its_bytes() {
        let (file, bytes, backend) = overlay(3 * BLOCK);
        let data = vec![0xAB; BLOCK as usize + 100];
        backend.write(BLOCK - 50, &data).unwrap();
        let seen = read(&backend, 0, 3 * BLOCK as usize);
        let at = (BLOCK - 50) as usize;
        assert_eq!(seen[..at], bytes[..at]);
        assert_eq!(seen[at..at + data.len()], data[..]);
        assert_eq!(seen[at + data.len()..], bytes[at + data.len()..]);
        assert_eq!(
            backend.0.state.lock().blocks.len(),
            3,
            "the three blocks written"
        );
        assert_eq!(std::fs::read(file.path()).unwrap(), bytes);
        assert!(backend.0.unchanged().unwrap());
    }

    #[test]
    fn a_shrunk_then_grown_storage_reads_zeros_where_it_was_cut() {
        let (_file, bytes, backend) = overlay(2 * BLOCK);
        backend.write(10, &[1, 2, 3]).unwrap();
        backend.set_len(100).unwrap();
        backend.set_len(2 * BLOCK + 10).unwrap();
        assert_eq!(backend.len().unwrap(), 2 * BLOCK + 10);
        let seen = read(&backend, 0, (2 * BLOCK + 10) as usize);
        assert_eq!(seen[..10], bytes[..10]);
        assert_eq!(seen[10..13], [1, 2, 3]);
        assert_eq!(seen[13..100], bytes[13..100]);
        assert!(seen[100..].iter().all(|&b| b == 0), "bytes past the cut");
    }

    #[test]
    fn a_read_past_the_end_fails() {
        let (_file, _, backend) = overlay(BLOCK);
        let mut out = vec![0; 10];
        assert!(backend.read(BLOCK - 5, &mut out).is_err());
        backend.write(BLOCK - 5, &[7; 10]).unwrap();
        backend.read(BLOCK - 5, &mut out).unwrap();
        assert_eq!(out, [7; 10]);
    }

    #[test]
    fn a_change_to_the_files_start_or_length_is_found() {
        let (mut file, _, backend) = overlay(2 * BLOCK);
        assert!(backend.0.unchanged().unwrap());
        file.as_file_mut().set_len(3 * BLOCK).unwrap();
        assert!(!backend.0.unchanged().unwrap(), "a longer file");
        file.as_file_mut().set_len(2 * BLOCK).unwrap();
        assert!(backend.0.unchanged().unwrap());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(file.path())
            .unwrap();
        std::io::Seek::seek(&mut f, SeekFrom::Start(100)).unwrap();
        f.write_all(&[0xFF]).unwrap();
        assert!(!backend.0.unchanged().unwrap(), "a header byte written");
    }
}
