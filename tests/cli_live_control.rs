//! The `quern` utility acting on a database this process holds open for writing, through the
//! store's control channel: retry, cancel, pause, resume, unpark and prune reach the running
//! store; other users, malformed and oversized requests are refused and change nothing; the
//! socket's lifecycle (long paths, removal at close, a stale socket replaced).

#![cfg(unix)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quern::control::{self, Reply, Request};
use quern::{Clock, JobId, JobState, ManualClock, NewJob, Store, Timestamp};
use utility::{quern, s, stderr, stdout};

mod utility;

/// A store held open for writing by this process, on a file of its own.
fn held(dir: &Path) -> (PathBuf, Store) {
    let path = dir.join("q.redb");
    let store = Store::open(&path).unwrap();
    (path, store)
}

/// A job that failed for good.
fn failed(store: &Store, queue: &str) -> JobId {
    let id = store
        .enqueue(NewJob::new(queue, "sync").max_attempts(1))
        .unwrap()
        .id();
    let claimed = store.claim(queue, 1).unwrap().pop().unwrap();
    assert_eq!(claimed.job.id, id);
    store.fail(claimed.lease, "remote said 500").unwrap();
    assert_eq!(store.get(id).unwrap().unwrap().state, JobState::Failed);
    id
}

fn state(store: &Store, id: JobId) -> JobState {
    store.get(id).unwrap().unwrap().state
}

/// Sends raw bytes to the socket and returns the reply, decoded.
fn raw_request(path: &Path, bytes: &[u8]) -> Reply {
    let mut conn = UnixStream::connect(control::socket_path(path).unwrap()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer and close before reading all of an oversized request.
    let _ = conn.write_all(bytes);
    // What was sent is all there is: the server sees its end.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut len = [0; 4];
    conn.read_exact(&mut len).unwrap();
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut body).unwrap();
    control::decode_reply(&body).unwrap()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

#[test]
fn retry_of_a_failed_job_on_a_held_file_makes_it_pending_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let a = failed(&store, "sync");
    let b = failed(&store, "sync");

    let out = quern(&["retry", s(&path), &a.to_string(), &b.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("retried 2 job(s), now pending: {a}, {b}")
    );
    assert_eq!(state(&store, a), JobState::Pending);
    assert_eq!(state(&store, b), JobState::Pending);
    // It runs again: the holder claims it.
    let again = store.claim("sync", 2).unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|c| c.job.manual_retries == 1));
}

#[test]
fn retry_of_a_queues_failed_jobs_on_a_held_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let a = failed(&store, "sync");
    let other = failed(&store, "mail");
    let out = quern(&["retry", s(&path), "--queue", "sync", "--state", "failed"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(state(&store, a), JobState::Pending);
    assert_eq!(state(&store, other), JobState::Failed);
}

#[test]
fn a_retry_naming_an_unknown_or_pending_job_changes_nothing_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let a = failed(&store, "sync");
    let pending = store.enqueue(NewJob::new("sync", "p")).unwrap().id();
    let out = quern(&[
        "retry",
        s(&path),
        &a.to_string(),
        &pending.to_string(),
        "777",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("nothing retried"), "{err}");
    assert!(err.contains("job 777 not found"), "{err}");
    assert!(err.contains(&format!("job {pending} is pending")), "{err}");
    assert_eq!(state(&store, a), JobState::Failed);

    // The server checks on its own too: the same request sent straight to it.
    let reply = control::send(
        &path,
        &Request::Retry {
            jobs: vec![a, JobId(777)],
        },
    )
    .unwrap();
    assert!(
        matches!(&reply, Reply::Refused(m) if m.contains("job 777 not found")),
        "{reply:?}"
    );
    assert_eq!(state(&store, a), JobState::Failed);
}

#[test]
fn cancel_on_a_held_file_cancels_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let id = store.enqueue(NewJob::new("sync", "x")).unwrap().id();
    let out = quern(&["cancel", s(&path), &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("cancelled 1 job(s): {id}"));
    let job = store.get(id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some("cancelled"));
}

#[test]
fn pause_on_a_held_file_stops_claims_until_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let out = quern(&["pause", s(&path), "sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let controls = store.controls().unwrap();
    assert!(
        controls
            .iter()
            .any(|c| c.queue == "sync" && c.key.is_none() && c.paused),
        "{controls:?}"
    );
    let id = store.enqueue(NewJob::new("sync", "x")).unwrap().id();
    assert!(store.claim("sync", 1).unwrap().is_empty(), "paused");

    let out = quern(&["resume", s(&path), "sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let claimed = store.claim("sync", 1).unwrap();
    assert_eq!(claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(), [id]);
}

#[test]
fn unpark_on_a_held_file_ends_a_park() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let clock = ManualClock::new(Timestamp(1_704_067_200_000));
    let store = Store::builder()
        .clock(Arc::new(clock.clone()))
        .open(&path)
        .unwrap();
    store
        .park(
            "sync",
            Some("acct-1"),
            clock.now().after(Duration::from_secs(3600)),
            "rate limited",
        )
        .unwrap();
    let id = store
        .enqueue(NewJob::new("sync", "x").concurrency_key("acct-1"))
        .unwrap()
        .id();
    assert!(store.claim("sync", 1).unwrap().is_empty(), "parked");
    let out = quern(&["unpark", s(&path), "sync", "--key", "acct-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let claimed = store.claim("sync", 1).unwrap();
    assert_eq!(claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(), [id]);
}

#[test]
fn pause_resume_and_unpark_work_on_a_file_no_process_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    Store::open(&path).unwrap().close();
    let out = quern(&["pause", s(&path), "sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reader = Store::open_read_only(&path).unwrap();
    assert!(reader.controls().unwrap().iter().any(|c| c.paused));
    drop(reader);
    for args in [["resume", s(&path), "sync"], ["unpark", s(&path), "sync"]] {
        let out = quern(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    let reader = Store::open_read_only(&path).unwrap();
    assert!(reader.controls().unwrap().is_empty());
}

#[test]
fn prune_on_a_held_file_deletes_old_finished_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let clock = ManualClock::new(Timestamp(1_704_067_200_000));
    let store = Store::builder()
        .clock(Arc::new(clock.clone()))
        .open(&path)
        .unwrap();
    let id = failed(&store, "sync");
    clock.advance(Duration::from_secs(2 * 86_400));
    let out = quern(&["prune", s(&path), "--older-than", "1d"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "pruned 1 finished job(s) older than 1d0h"
    );
    assert!(store.get(id).unwrap().is_none());
}

#[test]
fn a_holder_without_a_channel_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let store = Store::builder().control_channel(false).open(&path).unwrap();
    let id = failed(&store, "sync");
    assert!(!control::socket_path(&path).unwrap().exists());
    let out = quern(&["retry", s(&path), &id.to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("serves no control channel"), "{err}");
    assert_eq!(state(&store, id), JobState::Failed);
}

#[test]
fn malformed_and_oversized_requests_get_an_error_and_the_store_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let id = failed(&store, "sync");

    // Not postcard of a request.
    let reply = raw_request(
        &path,
        &framed(&[control::PROTOCOL_VERSION, 0xff, 0xff, 0xff]),
    );
    assert!(
        matches!(&reply, Reply::Refused(m) if m.starts_with("bad control request")),
        "{reply:?}"
    );
    // Another version.
    let reply = raw_request(&path, &framed(&[99, 0]));
    assert!(
        matches!(&reply, Reply::Refused(m) if m.contains("protocol version 99")),
        "{reply:?}"
    );
    // A request that ends early.
    let reply = raw_request(&path, &[0, 0, 0, 10, control::PROTOCOL_VERSION]);
    assert!(
        matches!(&reply, Reply::Refused(m) if m.contains("ended early")),
        "{reply:?}"
    );
    // Over the limit: refused before the body is read.
    let mut big = framed(&vec![0; control::MAX_REQUEST + 1]);
    big.truncate(4 + 1024);
    let reply = raw_request(&path, &big);
    assert!(
        matches!(&reply, Reply::Refused(m) if m.contains("over the limit")),
        "{reply:?}"
    );
    assert_eq!(state(&store, id), JobState::Failed);

    // The store and the channel go on.
    let other = store.enqueue(NewJob::new("sync", "x")).unwrap().id();
    assert_eq!(
        control::send(&path, &Request::Retry { jobs: vec![id] }).unwrap(),
        Reply::Done(format!("retried 1 job(s), now pending: {id}"))
    );
    let mut claimed: Vec<JobId> = store
        .claim("sync", 2)
        .unwrap()
        .into_iter()
        .map(|c| c.job.id)
        .collect();
    claimed.sort();
    assert_eq!(claimed, [id, other]);
}

#[test]
fn a_database_path_longer_than_a_socket_address_works() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir
        .path()
        .join("a-directory-with-a-rather-long-name-for-the-test")
        .join("and-another-one-nested-inside-it-to-pass-the-limit");
    std::fs::create_dir_all(&deep).unwrap();
    let (path, store) = held(&deep);
    let socket = control::socket_path(&path).unwrap();
    assert!(socket.as_os_str().len() > 108, "{}", socket.display());
    assert!(socket.exists(), "the socket is made at its long path");
    let id = failed(&store, "sync");
    let out = quern(&["retry", s(&path), &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(state(&store, id), JobState::Pending);
    drop(store);
    assert!(!socket.exists(), "removed at close");
}

#[test]
fn the_socket_is_the_owners_alone_and_goes_when_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let socket = control::socket_path(&path).unwrap();
    assert_eq!(socket, dir.path().join("q.redb.control"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let clone = store.clone();
    drop(store);
    assert!(socket.exists(), "a clone still holds the store");
    clone.close();
    assert!(!socket.exists(), "removed when the store closed");
    assert!(matches!(
        control::send(&path, &Request::Pause { queue: "q".into() }),
        Err(quern::Error::NoControlChannel { .. })
    ));
    // Read-only opens never serve.
    let reader = Store::open_read_only(&path).unwrap();
    assert!(!socket.exists());
    drop(reader);
}

#[test]
fn a_stale_socket_is_replaced_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    Store::open(&path).unwrap().close();
    let socket = control::socket_path(&path).unwrap();
    // What a killed process leaves: a socket file nobody listens on.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    assert!(matches!(
        control::send(&path, &Request::Pause { queue: "q".into() }),
        Err(quern::Error::NoControlChannel { .. })
    ));
    let store = Store::open(&path).unwrap();
    assert_eq!(
        control::send(&path, &Request::Pause { queue: "q".into() }).unwrap(),
        Reply::Done("paused queue \"q\": none of its jobs start until it is resumed".into())
    );
    assert!(store.controls().unwrap().iter().any(|c| c.paused));
    drop(store);

    // Turned off, the channel is not served, and a stale socket is still cleared.
    drop(UnixListener::bind(&socket).unwrap());
    let store = Store::builder().control_channel(false).open(&path).unwrap();
    assert!(!socket.exists());
    drop(store);
}

/// Runs `quern` as uid and gid 65534 (nobody); `None` when that user cannot run the binary
/// (a build directory it cannot enter).
fn quern_as_nobody(args: &[&str]) -> Option<std::process::Output> {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .ok()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn a_caller_who_does_not_own_the_file_is_refused_and_nothing_changes() {
    if !is_root() {
        eprintln!("skipped: changing owners and uids needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    let id = failed(&store, "sync");
    // The file now belongs to another user: this process (root) is no longer its owner.
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let request = Request::Retry { jobs: vec![id] };
    let reply = raw_request(&path, &framed(&control::encode_request(&request).unwrap()));
    assert_eq!(
        reply,
        Reply::Refused(format!(
            "refused: only the owner of {} (uid 65534) may control it",
            path.display()
        ))
    );
    // The utility does not even send: the server (root) is not the file's owner either.
    let out = quern(&["retry", s(&path), &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is served by uid 0, not the owner of"),
        "{err}"
    );
    assert_eq!(state(&store, id), JobState::Failed);

    // Back to root's, and a user who is not root cannot reach the socket at all (mode 0600).
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(dir.path(), mode).unwrap();
    // The file is writable by all, so that the command gets as far as the socket.
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o666);
    std::fs::set_permissions(&path, mode).unwrap();
    match quern_as_nobody(&["retry", s(&path), &id.to_string()]) {
        Some(out) => {
            assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
            let err = stderr(&out);
            assert!(
                err.contains("control channel") && err.contains("ermission denied"),
                "the socket (mode 0600) turns the caller away: {err}"
            );
        }
        None => eprintln!(
            "part skipped: user 65534 cannot run {}",
            env!("CARGO_BIN_EXE_quern")
        ),
    }
    assert_eq!(state(&store, id), JobState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_retried_through_the_channel_runs_again_in_the_running_executor() {
    use quern::{Executor, Outcome};
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = held(dir.path());
    // Each run reports its job and attempt chain; the first run fails for good.
    let (runs_tx, mut runs) = tokio::sync::mpsc::unbounded_channel();
    let handle = Executor::builder(store.clone())
        .queue("sync")
        .spawn(move |ctx| {
            let runs_tx = runs_tx.clone();
            async move {
                let retried = ctx.job().manual_retries;
                let _ = runs_tx.send((ctx.job().id, retried));
                if retried == 0 {
                    Outcome::discard("remote said 500")
                } else {
                    Outcome::Success
                }
            }
        })
        .unwrap();
    let id = store
        .enqueue(NewJob::new("sync", "photos/1.jpg"))
        .unwrap()
        .id();
    let next_run = async |runs: &mut tokio::sync::mpsc::UnboundedReceiver<(JobId, u32)>| {
        tokio::time::timeout(Duration::from_secs(20), runs.recv())
            .await
            .expect("a run within 20 s")
            .expect("the executor is running")
    };
    assert_eq!(next_run(&mut runs).await, (id, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = store.generation();
        if state(&store, id) == JobState::Failed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never failed"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), store.changed(seen)).await;
    }

    let db = path.clone();
    let out = tokio::task::spawn_blocking(move || quern(&["retry", s(&db), &id.to_string()]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The executor of the holding process runs it again, with no poll interval to wait out.
    assert_eq!(next_run(&mut runs).await, (id, 1));
    handle.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!(state(&store, id), JobState::Succeeded);
}

/// Another user binds the control socket's path while no worker serves it (in a shared
/// directory such as /tmp): the utility sends it nothing, and does not print its answer.
#[test]
fn a_control_socket_served_by_another_user_than_the_files_owner_is_not_sent_to() {
    if !is_root() {
        eprintln!("skipped: changing owners needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    // Held for writing with no channel, so that the utility turns to the socket; the file is
    // another user's (65534), and the impostor (this process, root) binds its socket path.
    let store = Store::builder().control_channel(false).open(&path).unwrap();
    let id = failed(&store, "sync");
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let socket = control::socket_path(&path).unwrap();
    let impostor = UnixListener::bind(&socket).unwrap();
    impostor.set_nonblocking(true).unwrap();

    // The socket file is not the owner's: checked before connecting.
    let out = quern(&["retry", s(&path), &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{} is served by uid 0, not the owner of {} (uid 65534): not sending",
            socket.display(),
            path.display()
        )),
        "{err}"
    );
    assert!(!stdout(&out).contains("Done"), "{}", stdout(&out));
    assert_eq!(
        impostor.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the utility did not connect"
    );

    // The socket file made the owner's: the server's credentials still say uid 0.
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
    impostor.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = impostor.accept().unwrap();
        let mut received = Vec::new();
        conn.read_to_end(&mut received).unwrap();
        // Whatever it was sent, the impostor says it is done.
        let reply = control::encode_reply(&Reply::Done("retried (fake)".into()));
        let _ = conn.write_all(&framed(&reply));
        received
    });
    let out = quern(&["retry", s(&path), &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{} is served by uid 0, not the owner of {} (uid 65534): not sending",
            socket.display(),
            path.display()
        )),
        "{err}"
    );
    assert!(!stdout(&out).contains("fake"), "{}", stdout(&out));
    assert!(
        server.join().unwrap().is_empty(),
        "the impostor received nothing"
    );
    assert_eq!(state(&store, id), JobState::Failed);
}

/// A store opened with a relative path, in a process that then changes directory: its channel
/// still checks the right file's owner, and its socket is removed at close. Run in a child (this
/// test binary again), since the working directory is the whole process's.
#[test]
fn a_store_opened_by_a_relative_path_keeps_its_channel_after_a_change_of_directory() {
    const CHILD: &str = "QUERN_TEST_RELATIVE_CHILD_DIR";
    if let Some(dir) = std::env::var_os(CHILD) {
        let dir = PathBuf::from(dir);
        std::env::set_current_dir(&dir).unwrap();
        let store = Store::open("q.redb").unwrap();
        std::env::set_current_dir("/").unwrap();
        let path = dir.join("q.redb");
        let reply = control::send(&path, &Request::Pause { queue: "q".into() }).unwrap();
        assert!(matches!(reply, Reply::Done(_)), "{reply:?}");
        assert!(store.controls().unwrap().iter().any(|c| c.paused));
        drop(store);
        assert!(
            !dir.join("q.redb.control").exists(),
            "the socket is removed at close"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_store_opened_by_a_relative_path_keeps_its_channel_after_a_change_of_directory",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let report = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("1 passed"),
        "the child ran the test: {report}"
    );
}
