use std::time::Duration;

use quern::{Executor, Idle, NewJob, Outcome, Store};

#[tokio::main]
async fn main() -> Result<(), quern::Error> {
    let store = Store::open("sync.redb")?;

    // Producers enqueue; a unique key coalesces work that is already waiting.
    let id = store
        .enqueue(NewJob::new("uploads", "photos/cat.jpg").unique_key("cat.jpg"))?
        .id();

    // An executor runs the queue with a fixed number of workers.
    let handle = Executor::builder(store.clone())
        .queue("uploads")
        .concurrency(4)
        .spawn(|ctx| async move {
            match upload(ctx.payload()).await {
                Ok(()) => Outcome::Success,
                Err(NotReady) => Outcome::Snooze(Duration::from_secs(60)), // attempt given back
            }
        })?;

    // Sync what is pending, then stop: returns once every due job's outcome is committed.
    // (A long-running worker keeps the handle: `handle.run_until_signal(grace)` stops it on
    // Ctrl-C or SIGTERM.)
    handle.run_until_idle(Idle::Now).await?;
    println!("job {id}: {:?}", store.get(id)?.map(|j| j.state));
    store.close(); // the file is closed when this returns: the program may exit
    Ok(())
}

struct NotReady;

async fn upload(file: &[u8]) -> Result<(), NotReady> {
    println!("uploading {}", String::from_utf8_lossy(file));
    Ok(())
}
