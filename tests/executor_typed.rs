//! Typed jobs: a handler spawned with `spawn_typed` gets each payload decoded once into its
//! type; a payload that does not decode fails for good at its first attempt, with the error.

mod common;

use std::sync::Arc;

use parking_lot::Mutex;
use quern::{Executor, Idle, JobState, NewJob, Outcome};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Upload {
    path: String,
    version: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_handler_gets_each_payload_decoded() {
    let env = common::Env::new();
    let sent: Vec<Upload> = (0..5)
        .map(|i| Upload {
            path: format!("photos/{i}.jpg"),
            version: i * 10,
        })
        .collect();
    for u in &sent {
        env.enqueue(NewJob::json("uploads", u).unwrap());
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    Executor::builder(env.store.clone())
        .queue("uploads")
        .concurrency(1)
        .spawn_typed(move |upload: Upload, _ctx| {
            g.lock().push(upload);
            async { Outcome::Success }
        })
        .unwrap()
        .run_until_idle(Idle::Now)
        .await
        .unwrap();
    let mut got = got.lock().clone();
    got.sort_by_key(|u| u.version);
    assert_eq!(got, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_fails_for_good_at_its_first_attempt() {
    let env = common::Env::new();
    let id = env.enqueue(NewJob::new("uploads", "not json").max_attempts(25));
    let called = Arc::new(Mutex::new(0));
    let c = called.clone();
    Executor::builder(env.store.clone())
        .queue("uploads")
        .spawn_typed(move |_: Upload, _ctx| {
            *c.lock() += 1;
            async { Outcome::Success }
        })
        .unwrap()
        .run_until_idle(Idle::Now)
        .await
        .unwrap();
    assert_eq!(
        *called.lock(),
        0,
        "the handler never sees an undecodable payload"
    );
    let job = env.job(id);
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
    assert_eq!(job.next_attempt_at, None, "no retry: it would never decode");
    let error = job.last_error.unwrap();
    assert!(
        error.starts_with("the payload does not decode as ") && error.contains("Upload"),
        "{error}"
    );
}
