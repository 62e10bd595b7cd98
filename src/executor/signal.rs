//! Stopping on a signal: Ctrl-C (SIGINT) in a terminal, SIGTERM from a service manager
//! (systemd, Docker, Kubernetes), so that the common `main` is a few lines:
//!
//! ```no_run
//! # async fn main_() -> quern::Result<()> {
//! use std::time::Duration;
//! use quern::{Executor, Outcome, Store};
//!
//! let store = Store::open("sync.redb")?;
//! Executor::builder(store.clone())
//!     .spawn(|_job| async { Outcome::Success })?
//!     .run_until_signal(Duration::from_secs(30))
//!     .await?;
//! store.close(); // the file is closed when this returns
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::ExecutorHandle;
use crate::error::{Error, Result};

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM: a service manager stopping the process (Unix only).
    Terminate,
}

/// Waits until the process gets SIGINT (Ctrl-C) or SIGTERM; on systems without SIGTERM, Ctrl-C
/// only. For a program with several executors: wait for this, then shut each down.
///
/// # Errors
/// [`Error::Signal`] when the process cannot listen for them.
pub async fn wait_for_signal() -> Result<Signal> {
    let failed = |e: std::io::Error| Error::Signal {
        source: Arc::new(e),
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(failed)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(failed)?;
        tokio::select! {
            _ = terminate.recv() => Ok(Signal::Terminate),
            _ = interrupt.recv() => Ok(Signal::Interrupt),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(failed)?;
        Ok(Signal::Interrupt)
    }
}

impl ExecutorHandle {
    /// Runs until the process gets SIGINT (Ctrl-C) or SIGTERM, then shuts the executor down
    /// gracefully ([`ExecutorHandle::shutdown`] with `grace`): running jobs get `grace` to
    /// finish, the rest are given back with their attempts. Then call [`Store::close`] on the
    /// last handle, and the program may exit with the file closed cleanly.
    ///
    /// [`Store::close`]: crate::Store::close
    ///
    /// # Errors
    /// [`Error::Signal`] when the process cannot listen for signals (the executor is shut down
    /// all the same); as [`ExecutorHandle::shutdown`].
    pub async fn run_until_signal(self, grace: Duration) -> Result<Signal> {
        let signal = wait_for_signal().await;
        match &signal {
            Ok(s) => tracing::info!(signal = ?s, "stopping on a signal"),
            Err(e) => tracing::error!(error = %e, "cannot listen for signals: stopping"),
        }
        let stopped = self.shutdown(grace).await;
        let signal = signal?;
        stopped.map(|()| signal)
    }
}
