//! The control channel: how an operator's `quern retry|cancel|prune|pause|resume|unpark` reaches
//! a database that a running process holds open for writing.
//!
//! redb lets one process write a file at a time, so a command from another process cannot open
//! it to write. Instead, a store opened for writing serves a Unix socket beside the database,
//! `<file>.control` ([`socket_path`]), and applies the requests it receives itself, through its
//! own [`Store`](crate::Store) API: the executor of that process sees the change at once.
//!
//! - Protocol: one request per connection, one reply, then the server closes. Each message is
//!   framed as a 4-byte big-endian length and that many bytes: a version byte
//!   ([`PROTOCOL_VERSION`]) and the [`Request`] or [`Reply`] encoded with postcard. A request
//!   is at most [`MAX_REQUEST`] bytes.
//! - Security: the socket is made mode 0600, and the server checks each connection's peer
//!   credentials: only the owner of the database file may send commands; anyone else gets
//!   [`Reply::Refused`] and nothing happens.
//! - Lifecycle: the server stops, and removes its socket, when the store closes. A socket left
//!   by a killed process is replaced at the next writable open. See
//!   [`StoreBuilder::control_channel`](crate::StoreBuilder::control_channel).
//!
//! [`send`] is the client: it connects, sends one request and returns the reply.

mod apply;
#[doc(hidden)]
pub use apply::{Change, age, list};
#[cfg(unix)]
mod server;
#[cfg(unix)]
mod socket;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::JobId;

pub(crate) use self::apply::apply;
#[cfg(unix)]
pub(crate) use self::server::{Server, remove_stale};

/// The version of the protocol: the first byte of every message's body.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest request body the server reads, in bytes: 64 KiB (about 10,000 job ids).
pub const MAX_REQUEST: usize = 64 * 1024;

/// The largest reply body the client reads, in bytes: 1 MiB.
pub const MAX_REPLY: usize = 1024 * 1024;

/// How long the client waits for a reply: the request may be a long prune.
#[cfg(unix)]
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// What an operator asks of the process that holds a database.
///
/// New variants are added at the end, so that an older server decodes the ones it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Retry these failed jobs (see [`Store::retry`](crate::Store::retry)). Every job is
    /// checked first, and none is retried when one is unknown or not failed (or its unique key
    /// is held); then each is retried in a commit of its own. This is not one transaction: a
    /// job the worker changes between the check and its retry (a scheduled retry coming due)
    /// stops the request there, with the jobs before it retried and those after it left, and
    /// the reply ([`Reply::Failed`]) names both.
    Retry {
        /// The jobs.
        jobs: Vec<JobId>,
    },
    /// Retry every failed job of a queue: as [`Request::Retry`] with the ids of the jobs of
    /// the queue that are failed when the request is applied.
    RetryFailed {
        /// The queue.
        queue: String,
    },
    /// Cancel these jobs (see [`Store::cancel`](crate::Store::cancel)). Every job is checked
    /// first, and none is cancelled when one is unknown or finished; then each is cancelled in
    /// a commit of its own. This is not one transaction: a job that finishes between the check
    /// and its cancel stops the request there, with the jobs before it cancelled and those
    /// after it left, and the reply ([`Reply::Failed`]) names both.
    Cancel {
        /// The jobs.
        jobs: Vec<JobId>,
    },
    /// Delete finished jobs older than an age (see [`Store::prune`](crate::Store::prune)).
    Prune {
        /// The age.
        older_than: Duration,
    },
    /// Pause a queue (see [`Store::pause`](crate::Store::pause)).
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue (see [`Store::resume`](crate::Store::resume)).
    Resume {
        /// The queue.
        queue: String,
    },
    /// End the park of a queue, or of one of its concurrency keys (see
    /// [`Store::unpark`](crate::Store::unpark)).
    Unpark {
        /// The queue.
        queue: String,
        /// The concurrency key, or `None` for the queue itself.
        key: Option<String>,
    },
}

/// The server's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// Done: what was done ("retried 3 job(s), now pending: 1, 2, 5").
    Done(String),
    /// Refused, and nothing was changed: why (an unknown job, a job in a state the request
    /// does not take, a caller who does not own the file, a malformed request).
    Refused(String),
    /// Failed partway or for a storage failure: what was done and what was not.
    Failed(String),
}

impl Reply {
    /// The message, whatever the outcome.
    pub fn message(&self) -> &str {
        match self {
            Reply::Done(m) | Reply::Refused(m) | Reply::Failed(m) => m,
        }
    }
}

/// Why a message of the control protocol could not be decoded or sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The body is empty: no version byte.
    #[error("empty message")]
    Empty,
    /// The body is of another version of the protocol.
    #[error("protocol version {found}, this build speaks version {supported}")]
    Version {
        /// The version byte received.
        found: u8,
        /// [`PROTOCOL_VERSION`].
        supported: u8,
    },
    /// The body does not decode as a message of this version.
    #[error("malformed message")]
    Malformed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Bytes follow the message in its body.
    #[error("{extra} byte(s) after the message")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// The body is over the limit.
    #[error("message of {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Encodes a request's body: the version byte, then the request.
///
/// # Errors
/// [`ProtocolError::TooLarge`] when it is over [`MAX_REQUEST`] (too many job ids for one
/// request).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, ProtocolError> {
    encode(request, MAX_REQUEST)
}

/// Decodes a request's body, as the server does: any bytes give a request or an error, never
/// a panic.
///
/// # Errors
/// [`ProtocolError`]: empty, another version, malformed, or with bytes after the request.
pub fn decode_request(body: &[u8]) -> Result<Request, ProtocolError> {
    decode(body, MAX_REQUEST)
}

/// Encodes a reply's body: the version byte, then the reply. A message too long for
/// [`MAX_REPLY`] is cut.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    encode(reply, MAX_REPLY).unwrap_or_else(|_| {
        let cut = |m: &str| {
            let mut end = (MAX_REPLY / 2).min(m.len());
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            format!("{} (cut)", &m[..end])
        };
        let short = match reply {
            Reply::Done(m) => Reply::Done(cut(m)),
            Reply::Refused(m) => Reply::Refused(cut(m)),
            Reply::Failed(m) => Reply::Failed(cut(m)),
        };
        // Half the limit, and its framing: it fits.
        encode(&short, usize::MAX).unwrap_or_default()
    })
}

/// Decodes a reply's body.
///
/// # Errors
/// As [`decode_request`].
pub fn decode_reply(body: &[u8]) -> Result<Reply, ProtocolError> {
    decode(body, MAX_REPLY)
}

fn encode<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut body = vec![PROTOCOL_VERSION];
    body = postcard::to_extend(message, body).map_err(|e| ProtocolError::Malformed(e.into()))?;
    if body.len() > max {
        return Err(ProtocolError::TooLarge {
            len: body.len(),
            max,
        });
    }
    Ok(body)
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8], max: usize) -> Result<T, ProtocolError> {
    if body.len() > max {
        return Err(ProtocolError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let (&version, rest) = body.split_first().ok_or(ProtocolError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let (message, extra) =
        postcard::take_from_bytes(rest).map_err(|e| ProtocolError::Malformed(e.into()))?;
    if !extra.is_empty() {
        return Err(ProtocolError::Trailing { extra: extra.len() });
    }
    Ok(message)
}

/// Writes one framed message: its length (4 bytes, big-endian), then its body.
pub(crate) fn write_frame(to: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    to.write_all(&frame)?;
    to.flush()
}

/// Reads one framed message of at most `max` bytes; a longer one is refused before its body
/// is read.
pub(crate) fn read_frame(from: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0; 4];
    from.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            ProtocolError::TooLarge { len, max },
        ));
    }
    let mut body = vec![0; len];
    from.read_exact(&mut body)?;
    Ok(body)
}

/// The control socket of the database at `db`: `<file>.control` beside the file, once
/// symbolic links are followed to it (`jobs.redb` -> `jobs.redb.control`).
///
/// # Errors
/// An I/O error reading a symbolic link on the way.
pub fn socket_path(db: impl AsRef<Path>) -> io::Result<PathBuf> {
    let file = crate::store::resolve(db.as_ref())?;
    let mut name = file
        .file_name()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", file.display()),
            )
        })?
        .to_os_string();
    name.push(".control");
    Ok(file.with_file_name(name))
}

/// Sends `request` to the process that holds the database at `db` open for writing, and
/// returns its reply. Blocks until the reply comes (a long prune takes its time), at most
/// 5 minutes.
///
/// The server must be the owner of the database file: the socket file's owner is checked
/// before connecting, and the connected peer's credentials after, and the request is not sent
/// to anyone else (another user may have bound the socket's path while no worker runs).
///
/// # Errors
/// [`Error::NoControlChannel`] when no process serves the database's control channel (none
/// holds it, or its holder turned the channel off); [`Error::InvalidInput`] for a request over
/// [`MAX_REQUEST`]; [`Error::Control`] when the channel failed (no permission to connect, a
/// server that is not the file's owner, the server went away, a reply that does not decode,
/// or none within the 5 minutes: the request may then still be applied, if the worker reaches
/// it before it sees that this caller gave up).
#[cfg(unix)]
pub fn send(db: impl AsRef<Path>, request: &Request) -> Result<Reply> {
    let db = db.as_ref();
    let body =
        encode_request(request).map_err(|e| Error::invalid("control request", e.to_string()))?;
    let failed = |source: io::Error| Error::Control {
        path: db.to_path_buf(),
        source: std::sync::Arc::new(source),
    };
    let no_channel = || Error::NoControlChannel {
        path: db.to_path_buf(),
    };
    let place = socket::Place::of(db).map_err(failed)?;
    let owner = place.owner().map_err(failed)?;
    let check = |server: u32| match foreign_server(server, owner, &place.shown, db) {
        Some(why) => Err(failed(io::Error::new(io::ErrorKind::PermissionDenied, why))),
        None => Ok(()),
    };
    match place.socket_owner() {
        Ok(server) => check(server)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_channel()),
        Err(e) => return Err(failed(e)),
    }
    let mut conn = match place.connect() {
        Ok(conn) => conn,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(no_channel());
        }
        Err(e) => return Err(failed(e)),
    };
    // The socket's owner may not be who listens on it: the kernel says who does.
    check(socket::peer_uid(&conn).map_err(failed)?)?;
    conn.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(failed)?;
    conn.set_write_timeout(Some(REPLY_TIMEOUT))
        .map_err(failed)?;
    // A server that refuses the caller answers without reading the request, and closes: the
    // write may then fail, but the reply is there to read.
    let sent = write_frame(&mut conn, &body);
    let reply = match (read_frame(&mut conn, MAX_REPLY), sent) {
        (Ok(reply), _) => reply,
        (Err(e), _) | (_, Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(failed(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no reply within {} s (the process may be busy with a long request); this \
                     request may still be applied if the process reaches it before it sees \
                     that this command gave up: check before sending it again",
                    REPLY_TIMEOUT.as_secs()
                ),
            )));
        }
        (Err(_), Err(e)) | (Err(e), Ok(())) => return Err(failed(e)),
    };
    decode_reply(&reply).map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Why the client does not send to a control socket served (or owned) by uid `server` when
/// the database file `db` is owned by uid `owner`; `None` when they are the same.
#[cfg(unix)]
fn foreign_server(server: u32, owner: u32, socket: &Path, db: &Path) -> Option<String> {
    (server != owner).then(|| {
        format!(
            "{} is served by uid {server}, not the owner of {} (uid {owner}): not sending",
            socket.display(),
            db.display()
        )
    })
}

/// Sends `request` to the process that holds the database at `db`: there is no control channel
/// on this system.
///
/// # Errors
/// Always [`Error::NoControlChannel`].
#[cfg(not(unix))]
pub fn send(db: impl AsRef<Path>, request: &Request) -> Result<Reply> {
    let _ = request;
    Err(Error::NoControlChannel {
        path: db.as_ref().to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips() {
        let requests = [
            Request::Retry {
                jobs: vec![JobId(1), JobId(u64::MAX)],
            },
            Request::RetryFailed {
                queue: "sync".into(),
            },
            Request::Cancel { jobs: vec![] },
            Request::Prune {
                older_than: Duration::from_millis(1_500),
            },
            Request::Pause { queue: "q".into() },
            Request::Resume { queue: "q".into() },
            Request::Unpark {
                queue: "q".into(),
                key: Some("acct".into()),
            },
        ];
        for request in requests {
            let body = encode_request(&request).unwrap();
            assert_eq!(body[0], PROTOCOL_VERSION);
            assert_eq!(decode_request(&body).unwrap(), request);
        }
        let reply = Reply::Refused("no".into());
        assert_eq!(decode_reply(&encode_reply(&reply)).unwrap(), reply);
    }

    #[test]
    fn bad_bodies_are_errors_naming_what_is_wrong() {
        assert!(matches!(decode_request(&[]), Err(ProtocolError::Empty)));
        assert!(matches!(
            decode_request(&[2, 0]),
            Err(ProtocolError::Version { found: 2, .. })
        ));
        assert!(matches!(
            decode_request(&[PROTOCOL_VERSION, 200]),
            Err(ProtocolError::Malformed(_))
        ));
        let mut body = encode_request(&Request::Pause { queue: "q".into() }).unwrap();
        body.push(0);
        assert!(matches!(
            decode_request(&body),
            Err(ProtocolError::Trailing { extra: 1 })
        ));
        assert!(matches!(
            decode_request(&vec![PROTOCOL_VERSION; MAX_REQUEST + 1]),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_request_over_the_limit_is_refused_when_encoded() {
        let jobs = (0..20_000).map(|i| JobId(u64::MAX - i)).collect();
        assert!(matches!(
            encode_request(&Request::Cancel { jobs }),
            Err(ProtocolError::TooLarge {
                max: MAX_REQUEST,
                ..
            })
        ));
    }

    #[test]
    fn a_frame_longer_than_allowed_is_refused_before_its_body_is_read() {
        let mut input: &[u8] = &[0, 1, 0, 0, 1, 2, 3];
        let e = read_frame(&mut input, 1024).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(input, [1, 2, 3], "the body was not read");
    }

    #[cfg(unix)]
    #[test]
    fn a_server_of_another_uid_than_the_files_owner_is_not_sent_to() {
        let socket = Path::new("/tmp/jobs.redb.control");
        let db = Path::new("/tmp/jobs.redb");
        assert_eq!(
            foreign_server(65534, 1000, socket, db).as_deref(),
            Some(
                "/tmp/jobs.redb.control is served by uid 65534, not the owner of /tmp/jobs.redb \
                 (uid 1000): not sending"
            )
        );
        assert_eq!(
            foreign_server(0, 1000, socket, db).as_deref(),
            Some(
                "/tmp/jobs.redb.control is served by uid 0, not the owner of /tmp/jobs.redb \
                 (uid 1000): not sending"
            ),
            "root is not the owner either"
        );
        assert_eq!(foreign_server(1000, 1000, socket, db), None);
    }
}
