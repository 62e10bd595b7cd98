//! Where a database's control socket is, how to reach it when its path is longer than a socket
//! address allows, and the system calls std does not wrap: peer credentials and `poll`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A database's control socket: its directory (held open), its name, and the address it is
/// bound and connected at.
pub(crate) struct Place {
    /// The socket's path as people read it (`/data/jobs.redb.control`), for messages.
    pub shown: PathBuf,
    /// The path the system calls use: `shown`, or, when that is longer than a socket address
    /// allows (108 bytes on Linux), the same file reached through the directory held open
    /// (`/proc/self/fd/N/jobs.redb.control`).
    pub addr: PathBuf,
    /// The database file, reached as `addr` is: its owner is who may send commands.
    pub db: PathBuf,
    /// The directory, open for as long as `addr` may name it through `/proc/self/fd`.
    _dir: File,
}

impl Place {
    /// The control socket of the database at `db` (see [`super::socket_path`]).
    pub(crate) fn of(db: &Path) -> io::Result<Place> {
        let shown = super::socket_path(db)?;
        let file = crate::store::resolve(db)?;
        let dir_path = match shown.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = File::open(&dir_path)?;
        let (addr, db) = if fits(&shown) {
            (shown.clone(), file)
        } else {
            through(&dir, &shown, &file)
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
}

/// Whether `path` fits in a socket address.
fn fits(path: &Path) -> bool {
    SocketAddr::from_pathname(path).is_ok()
}

/// The socket and the database file reached through their open directory: a short path
/// whatever the directory's.
#[cfg(target_os = "linux")]
fn through(dir: &File, socket: &Path, db: &Path) -> (PathBuf, PathBuf) {
    let base = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let at = |p: &Path| {
        p.file_name()
            .map_or_else(|| p.to_path_buf(), |n| base.join(n))
    };
    (at(socket), at(db))
}

/// Elsewhere there is no such path: the long one is kept, and refused by [`Place::of`].
#[cfg(not(target_os = "linux"))]
fn through(_dir: &File, socket: &Path, db: &Path) -> (PathBuf, PathBuf) {
    (socket.to_path_buf(), db.to_path_buf())
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
    let mut fds = [
        libc::pollfd {
            fd: first,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: second,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd, and its length is passed.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            return Ok(Ready {
                first: fds[0].revents != 0,
                second: fds[1].revents != 0,
            });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
