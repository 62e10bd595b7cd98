//! The server of a store's control channel: one thread that accepts a connection at a time,
//! checks who is calling, reads one request, has the store apply it, and answers.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::socket::{self, Place};
use super::{MAX_REQUEST, Reply, Request, decode_request, encode_reply, read_frame, write_frame};

/// How long a caller may take to send its request, and to take the reply: a caller that
/// connects and stays silent holds the channel no longer.
const CALLER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server waits after an accept failed (out of descriptors: `EMFILE`) before it
/// polls again, rather than spin on a caller it cannot take. A stop still ends the wait.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What applies a request: the store, reached through a weak handle.
pub(crate) type Handler = Box<dyn Fn(Request) -> Reply + Send>;

/// A running control server. Dropping it stops the thread and removes the socket.
pub(crate) struct Server {
    place: Arc<Place>,
    /// The socket as bound: removed at the end only if it is still this one.
    identity: Option<(u64, u64)>,
    /// Shut down to wake the thread and stop it.
    wake: UnixStream,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the server and its thread share.
struct Shared {
    stopping: AtomicBool,
    /// The connection being served, shut down by a stop so that a silent caller does not hold
    /// the store's close for its timeout.
    current: Mutex<Option<UnixStream>>,
}

impl Server {
    /// Serves the control channel of the database at `db`, which this process holds open for
    /// writing: that lock proves no live server owns a socket left at the path, which is
    /// replaced.
    ///
    /// # Errors
    /// The socket cannot be made (a directory without write permission, a path too long, a
    /// file that is not a socket in the way), or the thread cannot start.
    pub(crate) fn start(db: &Path, handler: Handler) -> io::Result<Server> {
        let place = Arc::new(Place::of(db)?);
        remove_stale_at(&place)?;
        let listener = place.bind()?;
        let identity = place.identity().ok();
        let (wake, woken) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            current: Mutex::new(None),
        });
        let thread = {
            let shared = shared.clone();
            let place = place.clone();
            std::thread::Builder::new()
                .name("quern-control".into())
                .spawn(move || serve(&listener, &woken, &place, &shared, &handler))?
        };
        tracing::info!(socket = %place.shown.display(), "serving the control channel");
        Ok(Server {
            place,
            identity,
            wake,
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The thread drops the store itself when a request held its last handle: it then
        // answers that request, and ends on its own once this returns.
        let own_thread = self
            .thread
            .as_ref()
            .is_some_and(|t| t.thread().id() == std::thread::current().id());
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(conn) = self.shared.current.lock().take()
            && !own_thread
        {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let _ = self.wake.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take()
            && !own_thread
            && thread.join().is_err()
        {
            tracing::error!("the control channel's thread panicked");
        }
        // Removed while the database is still held: no other server can own it yet.
        if self.identity.is_some()
            && self.place.identity().ok() == self.identity
            && let Err(e) = std::fs::remove_file(&self.place.addr)
        {
            tracing::warn!(
                socket = %self.place.shown.display(),
                error = %e,
                "could not remove the control socket"
            );
        }
        tracing::debug!(socket = %self.place.shown.display(), "control channel stopped");
    }
}

/// Removes a control socket left at the database's socket path by a process that died: called
/// with the database held for writing, so no live server owns it. Used when the channel is off,
/// so that a caller learns there is none rather than meeting a dead socket.
pub(crate) fn remove_stale(db: &Path) -> io::Result<()> {
    remove_stale_at(&Place::of(db)?)
}

fn remove_stale_at(place: &Place) -> io::Result<()> {
    match std::fs::symlink_metadata(&place.addr) {
        Ok(meta) if meta.file_type().is_socket() => {
            tracing::info!(socket = %place.shown.display(), "replacing a stale control socket");
            std::fs::remove_file(&place.addr)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} is in the way of the control socket and is not one",
                place.shown.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The thread: accepts and serves connections one at a time until woken to stop.
fn serve(
    listener: &UnixListener,
    woken: &UnixStream,
    place: &Place,
    shared: &Shared,
    handler: &Handler,
) {
    loop {
        let ready = match socket::wait_readable(listener.as_raw_fd(), woken.as_raw_fd()) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "control channel stopped: waiting for callers failed");
                return;
            }
        };
        if ready.second || shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if !ready.first {
            continue;
        }
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "control channel: accepting a caller failed");
                // The caller stays in the backlog, so the listener polls readable at once:
                // wait, or until stopped.
                match socket::wait_readable_for(woken.as_raw_fd(), ACCEPT_BACKOFF) {
                    Ok(false) => continue,
                    Ok(true) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "control channel stopped: waiting failed");
                        return;
                    }
                }
            }
        };
        {
            let mut current = shared.current.lock();
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            *current = conn.try_clone().ok();
        }
        serve_one(conn, place, handler);
        shared.current.lock().take();
    }
}

/// Serves one caller: one request, one reply. A request whose caller hung up before it is
/// applied (it gave up waiting behind a long one, and told its user the request failed) is
/// dropped, not applied.
fn serve_one(mut conn: UnixStream, place: &Place, handler: &Handler) {
    let reply = match receive(&mut conn, place) {
        Ok(request) => {
            match socket::hung_up(conn.as_raw_fd()) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(?request, "control request dropped: its caller hung up");
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        ?request,
                        error = %e,
                        "control request dropped: its connection could not be checked"
                    );
                    return;
                }
            }
            tracing::info!(?request, "control request");
            // A panic is the store's bug, not the caller's: it is answered, and the channel
            // goes on.
            catch_unwind(AssertUnwindSafe(|| handler(request))).unwrap_or_else(|_| {
                tracing::error!("a control request panicked");
                Reply::Failed("internal error: the request panicked in the holding process".into())
            })
        }
        Err(refused) => {
            tracing::warn!(reason = %refused.message(), "control request refused");
            refused
        }
    };
    if let Err(e) = write_frame(&mut conn, &encode_reply(&reply)) {
        tracing::warn!(error = %e, "control channel: the caller did not take its reply");
    }
}

/// The caller's request, once its credentials are checked; the refusal to send otherwise.
fn receive(conn: &mut UnixStream, place: &Place) -> Result<Request, Reply> {
    let broken = |e: io::Error| Reply::Refused(format!("bad control request: {e}"));
    let peer = socket::peer_uid(conn).map_err(|e| {
        Reply::Refused(format!(
            "refused: the caller's credentials could not be read: {e}"
        ))
    })?;
    let owner = place.owner().map_err(|e| {
        Reply::Failed(format!(
            "the owner of {} could not be read: {e}",
            place.shown.display()
        ))
    })?;
    if let Some(refusal) = refusal(peer, owner, &place.shown) {
        return Err(Reply::Refused(refusal));
    }
    conn.set_read_timeout(Some(CALLER_TIMEOUT))
        .map_err(broken)?;
    conn.set_write_timeout(Some(CALLER_TIMEOUT))
        .map_err(broken)?;
    let body = read_frame(conn, MAX_REQUEST).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Reply::Refused(format!(
            "bad control request: none came within {} s",
            CALLER_TIMEOUT.as_secs()
        )),
        io::ErrorKind::UnexpectedEof => {
            Reply::Refused("bad control request: it ended early".to_owned())
        }
        _ => broken(e),
    })?;
    decode_request(&body).map_err(|e| {
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push_str(&format!(": {c}"));
            cause = c.source();
        }
        Reply::Refused(format!("bad control request: {why}"))
    })
}

/// Why a caller of uid `peer` may not control the database of the socket `socket`, owned by
/// uid `owner`; `None` when it may: only the owner may.
pub(crate) fn refusal(peer: u32, owner: u32, socket: &Path) -> Option<String> {
    (peer != owner).then(|| {
        let db = socket.with_extension("");
        format!(
            "refused: only the owner of {} (uid {owner}) may control it",
            db.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_of_another_uid_is_refused_naming_the_file_and_its_owner() {
        let socket = Path::new("/data/jobs.redb.control");
        assert_eq!(
            refusal(65534, 1000, socket).as_deref(),
            Some("refused: only the owner of /data/jobs.redb (uid 1000) may control it")
        );
        assert_eq!(
            refusal(0, 1000, socket).as_deref(),
            Some("refused: only the owner of /data/jobs.redb (uid 1000) may control it"),
            "root is not the owner either"
        );
        assert_eq!(refusal(1000, 1000, socket), None);
    }

    /// A place for a database file this process owns, and a handler that counts the requests
    /// it applies.
    fn place_and_counter() -> (
        tempfile::TempDir,
        Place,
        Arc<std::sync::atomic::AtomicUsize>,
        Handler,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.redb");
        std::fs::write(&db, b"").unwrap();
        let place = Place::of(&db).unwrap();
        let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = applied.clone();
        let handler: Handler = Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Reply::Done("paused".into())
        });
        (dir, place, applied, handler)
    }

    fn pause_request() -> Vec<u8> {
        let body = super::super::encode_request(&Request::Pause { queue: "q".into() }).unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn a_request_whose_caller_hung_up_before_it_was_served_is_not_applied() {
        let (_dir, place, applied, handler) = place_and_counter();
        let (mut client, server) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut client, &pause_request()).unwrap();
        // The caller gave up (its timeout) while the request waited its turn.
        drop(client);
        serve_one(server, &place, &handler);
        assert_eq!(applied.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_caller_that_shut_down_only_its_writing_is_served_and_answered() {
        let (_dir, place, applied, handler) = place_and_counter();
        let (mut client, server) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut client, &pause_request()).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        serve_one(server, &place, &handler);
        assert_eq!(applied.load(Ordering::SeqCst), 1);
        let reply = read_frame(&mut client, super::super::MAX_REPLY).unwrap();
        assert_eq!(
            super::super::decode_reply(&reply).unwrap(),
            Reply::Done("paused".into())
        );
    }
}
