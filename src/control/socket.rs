//! Where a database's control socket is, how to reach it when its path is longer than a socket
//! address allows, and the system calls std does not wrap: peer credentials and `poll`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A database's control socket: its name, and the address it is bound and connected at (through
/// its directory, held open, when its path is long).
pub(crate) struct Place {
    /// The socket's path as people read it (`/data/jobs.redb.control`), for messages: absolute,
    /// so that it names the same file after the process changes its working directory.
    pub shown: PathBuf,
    /// The path the system calls use: `shown`, or, when that is longer than a socket address
    /// allows (108 bytes on Linux), the same file reached through the directory held open
    /// (`/proc/self/fd/N/jobs.redb.control`).
    pub addr: PathBuf,
    /// The database file, reached as `addr` is: its owner is who may send commands.
    pub db: PathBuf,
    /// The directory, open for as long as `addr` names it through `/proc/self/fd`; `None`
    /// when `addr` is a plain path (the directory need not then be readable).
    _dir: Option<File>,
}

impl Place {
    /// The control socket of the database at `db` (see [`super::socket_path`]). A relative
    /// `db` is taken from the current directory now: the place stays the same when the process
    /// changes directory later.
    pub(crate) fn of(db: &Path) -> io::Result<Place> {
        let db = std::path::absolute(db)?;
        let shown = super::socket_path(&db)?;
        let file = crate::store::resolve(&db)?;
        let (addr, db, dir) = if fits(&shown) {
            (shown.clone(), file, None)
        } else {
            let dir_path = match shown.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("/"),
            };
            through(&dir_path, &shown, &file)?
        };
        if !fits(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the control socket {} cannot be reached: its name is longer than a socket \
                     address allows",
                    shown.display()
                ),
            ));
        }
        Ok(Place {
            shown,
            addr,
            db,
            _dir: dir,
        })
    }

    /// Connects to the socket.
    pub(crate) fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.addr)
    }

    /// Binds a new socket, mode 0600.
    pub(crate) fn bind(&self) -> io::Result<UnixListener> {
        let listener = UnixListener::bind(&self.addr)?;
        // The socket is made with the process's umask: narrowed at once. Who connects in
        // between is still checked by peer credentials, the check that counts.
        std::fs::set_permissions(
            &self.addr,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        Ok(listener)
    }

    /// The identity (device, inode) of what is at the socket's path now.
    pub(crate) fn identity(&self) -> io::Result<(u64, u64)> {
        let meta = std::fs::symlink_metadata(&self.addr)?;
        Ok((meta.dev(), meta.ino()))
    }

    /// The uid that owns the database file.
    pub(crate) fn owner(&self) -> io::Result<u32> {
        Ok(std::fs::metadata(&self.db)?.uid())
    }

    /// The uid that owns what is at the socket's path (not following a symbolic link).
    pub(crate) fn socket_owner(&self) -> io::Result<u32> {
        Ok(std::fs::symlink_metadata(&self.addr)?.uid())
    }
}

/// Whether `path` fits in a socket address.
fn fits(path: &Path) -> bool {
    SocketAddr::from_pathname(path).is_ok()
}

/// The socket and the database file reached through their directory, held open (returned):
/// a short path whatever the directory's. The directory is opened as a path only (`O_PATH`),
/// which needs no read permission on it (a `0711` directory).
#[cfg(target_os = "linux")]
fn through(dir: &Path, socket: &Path, db: &Path) -> io::Result<(PathBuf, PathBuf, Option<File>)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let at = |p: &Path| {
        p.file_name()
            .map_or_else(|| p.to_path_buf(), |n| base.join(n))
    };
    Ok((at(socket), at(db), Some(dir)))
}

/// Elsewhere there is no such path: the long one is kept, and refused by [`Place::of`].
#[cfg(not(target_os = "linux"))]
fn through(_dir: &Path, socket: &Path, db: &Path) -> io::Result<(PathBuf, PathBuf, Option<File>)> {
    Ok((socket.to_path_buf(), db.to_path_buf(), None))
}

/// The uid of the process at the other end of `conn`, as the kernel recorded it at connect.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_uid(conn: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes, and `len` is `cred`'s size, as
    // SO_PEERCRED requires; the fd is open for as long as `conn` is borrowed.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The uid of the process at the other end of `conn`, as the kernel recorded it at connect.
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
))]
pub(crate) fn peer_uid(conn: &UnixStream) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: both out-pointers are valid for writes; the fd is open while `conn` is borrowed.
    let rc = unsafe { libc::getpeereid(conn.as_raw_fd(), &raw mut uid, &raw mut gid) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid)
}

/// No way to learn the peer: every caller is refused.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
)))]
pub(crate) fn peer_uid(_conn: &UnixStream) -> io::Result<u32> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "peer credentials are not available on this system",
    ))
}

/// Which of two descriptors is readable (or closed at the other end).
pub(crate) struct Ready {
    pub first: bool,
    pub second: bool,
}

/// Blocks until `first` or `second` is readable, or its peer hung up.
pub(crate) fn wait_readable(first: RawFd, second: RawFd) -> io::Result<Ready> {
    let mut fds = [pollfd(first, libc::POLLIN), pollfd(second, libc::POLLIN)];
    poll(&mut fds, -1)?;
    Ok(Ready {
        first: fds[0].revents != 0,
        second: fds[1].revents != 0,
    })
}

/// Waits at most `timeout` for `fd` to be readable (or its peer to hang up): whether it is.
pub(crate) fn wait_readable_for(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut fds = [pollfd(fd, libc::POLLIN)];
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    poll(&mut fds, ms)?;
    Ok(fds[0].revents != 0)
}

/// Whether the peer of the connected socket `fd` has hung up: closed its end, or shut it down
/// both ways, so that it can no longer take a reply. Does not wait. A peer that only shut down
/// its writing (having sent all it had) still reads, and has not hung up.
pub(crate) fn hung_up(fd: RawFd) -> io::Result<bool> {
    // POLLHUP and POLLERR are reported whatever the events asked.
    let mut fds = [pollfd(fd, 0)];
    poll(&mut fds, 0)?;
    Ok(fds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `poll`, again when interrupted by a signal (the timeout then starts over); the number of
/// descriptors with events.
fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    loop {
        // SAFETY: `fds` is a valid, writable array of `n` pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) };
        if let Ok(ready) = usize::try_from(rc) {
            return Ok(ready);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_relative_database_path_is_made_absolute_when_the_place_is_made() {
        let cwd = std::env::current_dir().unwrap();
        let place = Place::of(Path::new("quern-relative-test.redb")).unwrap();
        assert_eq!(place.shown, cwd.join("quern-relative-test.redb.control"));
        assert_eq!(place.addr, place.shown, "a short path is used as it is");
        assert_eq!(place.db, cwd.join("quern-relative-test.redb"));
        assert!(place._dir.is_none());
    }

    #[test]
    fn symbolic_links_to_the_file_are_followed_as_before() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real/q.redb", dir.path().join("link.redb")).unwrap();
        let place = Place::of(&dir.path().join("link.redb")).unwrap();
        assert_eq!(place.shown, dir.path().join("real/q.redb.control"));
        assert_eq!(place.db, dir.path().join("real/q.redb"));
    }

    #[test]
    fn a_short_path_in_a_directory_without_read_permission_does_not_open_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let unreadable = dir.path().join("d");
        std::fs::create_dir(&unreadable).unwrap();
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o711)).unwrap();
        let place = Place::of(&unreadable.join("q.redb")).unwrap();
        assert!(
            place._dir.is_none(),
            "only a long path needs the directory open"
        );
        assert_eq!(place.addr, unreadable.join("q.redb.control"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_long_path_reaches_its_directory_through_a_descriptor_that_needs_no_read_permission() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        while deep.as_os_str().len() < 120 {
            deep.push("a-directory-with-a-long-name");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o711)).unwrap();
        let place = Place::of(&deep.join("q.redb")).unwrap();
        let dir_fd = place._dir.as_ref().map(AsRawFd::as_raw_fd).unwrap();
        assert_eq!(
            place.addr,
            PathBuf::from(format!("/proc/self/fd/{dir_fd}/q.redb.control"))
        );
        // The descriptor is a path only (O_PATH): it names the directory.
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{dir_fd}")).unwrap(),
            deep
        );
        let _listener = place.bind().unwrap();
        assert!(deep.join("q.redb.control").exists());
    }

    #[test]
    fn a_hang_up_is_seen_without_waiting_but_a_half_close_is_not_one() {
        let (client, server) = UnixStream::pair().unwrap();
        assert!(!hung_up(server.as_raw_fd()).unwrap());
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(
            !hung_up(server.as_raw_fd()).unwrap(),
            "a caller that sent all it had still reads the reply"
        );
        drop(client);
        assert!(hung_up(server.as_raw_fd()).unwrap());
    }

    #[test]
    fn a_bounded_wait_ends_at_its_timeout_or_when_the_peer_closes() {
        let (wake, woken) = UnixStream::pair().unwrap();
        assert!(!wait_readable_for(woken.as_raw_fd(), Duration::from_millis(10)).unwrap());
        wake.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(wait_readable_for(woken.as_raw_fd(), Duration::from_secs(60)).unwrap());
    }
}
