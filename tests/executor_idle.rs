//! Run until idle: `ExecutorHandle::idle` returns once the queue has nothing left to do, after
//! the last outcome is committed and not before; `Idle::Within` also runs the retries and
//! scheduled jobs that come due within its bound. Waits are on events, with timeouts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quern::{Backoff, Executor, ExecutorHandle, Filter, Idle, JobState, NewJob, Outcome, Store};

use common::WAIT;

fn states(store: &Store) -> Vec<JobState> {
    store
        .list(&Filter::default().queue("q"))
        .unwrap()
        .into_iter()
        .map(|j| j.state)
        .collect()
}

/// `idle` within the tests' time limit.
async fn idle(handle: &ExecutorHandle, until: Idle) -> quern::Result<()> {
    tokio::time::timeout(WAIT, handle.idle(until))
        .await
        .expect("the executor became idle in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_returns_once_every_job_s_outcome_is_committed() {
    let env = common::Env::new();
    for i in 0..200 {
        env.enqueue(NewJob::new("q", format!("{i}")));
    }
    let handle = Executor::builder(env.store.clone())
        .queue("q")
        .concurrency(4)
        .spawn(|_ctx| async {
            tokio::task::yield_now().await;
            Outcome::Success
        })
        .unwrap();
    idle(&handle, Idle::Now).await.unwrap();
    // Read at once: no settle may still be on its way to the database.
    assert!(
        states(&env.store).iter().all(|s| *s == JobState::Succeeded),
        "every job succeeded when idle returned"
    );
    assert_eq!(handle.metrics().succeeded, 200);
    handle.shutdown(common::secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_before_the_wait_runs_before_it_returns() {
    let env = common::Env::new();
    let handle = Executor::builder(env.store.clone())
        .queue("q")
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap();
    idle(&handle, Idle::Now).await.unwrap();
    // The executor was idle; a verdict from before this enqueue must not answer the next wait.
    for round in 0..20 {
        let id = env.enqueue(NewJob::new("q", format!("{round}")));
        idle(&handle, Idle::Now).await.unwrap();
        assert_eq!(env.job(id).state, JobState::Succeeded, "round {round}");
    }
    handle.shutdown(common::secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_now_leaves_a_retry_for_later_and_within_waits_for_it() {
    // Real time, with retries 50 ms apart: `Within` must wait for them to come due.
    let dir = tempfile::tempdir().unwrap();
    let store = common::mode(Store::builder().backoff(Backoff::fixed(Duration::from_millis(50))))
        .open(common::db(&dir))
        .unwrap();
    store
        .enqueue(NewJob::new("q", "flaky").max_attempts(5))
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let handle = Executor::builder(store.clone())
        .queue("q")
        .spawn(move |_ctx| {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    Outcome::Retry(format!("attempt {n} failed"))
                } else {
                    Outcome::Success
                }
            }
        })
        .unwrap();
    idle(&handle, Idle::Now).await.unwrap();
    assert!(
        runs.load(Ordering::SeqCst) < 3,
        "Idle::Now does not wait out a backoff"
    );
    assert_ne!(states(&store), [JobState::Succeeded]);

    idle(&handle, Idle::Within(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(states(&store), [JobState::Succeeded]);
    handle.shutdown(common::secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_does_not_wait_for_a_job_due_past_its_bound() {
    let env = common::Env::new();
    env.enqueue(NewJob::new("q", "tomorrow").delay(Duration::from_secs(86_400)));
    let handle = Executor::builder(env.store.clone())
        .queue("q")
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap();
    idle(&handle, Idle::Within(Duration::from_secs(3_600)))
        .await
        .unwrap();
    assert_eq!(states(&env.store), [JobState::Pending]);
    handle.shutdown(common::secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_idle_runs_the_work_then_stops() {
    let env = common::Env::new();
    for i in 0..10 {
        env.enqueue(NewJob::new("q", format!("{i}")));
    }
    Executor::builder(env.store.clone())
        .queue("q")
        .spawn(|_ctx| async { Outcome::Success })
        .unwrap()
        .run_until_idle(Idle::Now)
        .await
        .unwrap();
    assert!(states(&env.store).iter().all(|s| *s == JobState::Succeeded));
}

/// The child of the test below: fills the disk until a commit fails (the store refuses writes
/// from then on), then waits for its executor to be idle, and prints what the wait returned.
fn idle_on_a_failing_store(db: &std::path::Path) {
    let store = Store::open(db).expect("the file is created below the limit");
    let mut batch = 0usize;
    while store
        .enqueue_batch((0..100).map(|i| NewJob::new("fill", vec![b'x'; 400 + i + batch % 7])))
        .is_ok()
    {
        batch += 1;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(async {
        let handle = Executor::builder(store.clone())
            .queue("fill")
            .poll_interval(Duration::from_millis(20))
            .spawn(|_ctx| async { Outcome::Success })
            .unwrap();
        let got = tokio::time::timeout(WAIT, handle.idle(Idle::Now)).await;
        drop(handle);
        got
    });
    match got {
        Ok(Err(e)) => println!("\nidle error: {e}"),
        Ok(Ok(())) => println!("\nidle ok"),
        Err(_) => println!("\nidle timed out"),
    }
}

#[test]
fn idle_gives_the_error_when_claim_cycles_keep_failing_instead_of_waiting_for_ever() {
    if let Ok(db) = std::env::var("QUERN_IDLE_FAILING_CHILD") {
        idle_on_a_failing_store(std::path::Path::new(&db));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("full.redb");
    let test = "idle_gives_the_error_when_claim_cycles_keep_failing_instead_of_waiting_for_ever";
    // A file size limit (SIGXFSZ ignored, so writes past it fail as on a full disk).
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2048; exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("QUERN_IDLE_FAILING_CHILD", &db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\nidle error: "), "{stdout}");
}

#[test]
fn the_readme_s_first_example_is_examples_quickstart_word_for_word() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/quickstart.rs")).unwrap();
    let block = readme
        .split("```rust,no_run\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n").next())
        .expect("the README has a rust block");
    assert_eq!(block, example, "README and examples/quickstart.rs differ");
}

/// Several queues: one executor each, sharing one store (its writer's group commits), each
/// keeping its own concurrency bound. (`docs/performance.md` measures this pattern against one
/// executor with as many workers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_of_several_queues_share_a_store_each_within_its_own_concurrency() {
    use std::sync::atomic::AtomicUsize;
    let env = common::Env::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut handles = Vec::new();
    let mut counts = Vec::new();
    for (queue, bound) in [("a", 2usize), ("b", 3)] {
        for i in 0..10 {
            env.enqueue(NewJob::new(queue, format!("{i}")));
        }
        // Running now, and the most ever running at once.
        let count = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let (c, g) = (count.clone(), gate.clone());
        handles.push(
            Executor::builder(env.store.clone())
                .queue(queue)
                .concurrency(bound)
                .spawn(move |_ctx| {
                    let (c, g) = (c.clone(), g.clone());
                    async move {
                        let now = c.0.fetch_add(1, Ordering::SeqCst) + 1;
                        c.1.fetch_max(now, Ordering::SeqCst);
                        g.acquire().await.unwrap().forget();
                        c.0.fetch_sub(1, Ordering::SeqCst);
                        Outcome::Success
                    }
                })
                .unwrap(),
        );
        counts.push((bound, count));
    }
    common::until(
        &env.store,
        "each queue to run as many jobs as it may",
        || {
            counts
                .iter()
                .all(|(bound, c)| c.0.load(Ordering::SeqCst) == *bound)
        },
    )
    .await;
    gate.add_permits(20);
    for h in handles {
        h.run_until_idle(Idle::Now).await.unwrap();
    }
    for (bound, c) in &counts {
        assert_eq!(
            c.1.load(Ordering::SeqCst),
            *bound,
            "never more than its bound"
        );
    }
    let done = env.store.stats().unwrap();
    assert_eq!(done.queue("a").unwrap().succeeded, 10);
    assert_eq!(done.queue("b").unwrap().succeeded, 10);
}
