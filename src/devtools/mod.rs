//! Stand-ins for the parties Spillway talks to, for tests, benchmarks and the README demo: the
//! [`reference_installation`] (the installation side of the contract in docs/INSTALLATIONS.md)
//! and [`fake_github`] (GitHub's secret-scanning side: published keys and signed alerts).
//!
//! Neither is part of the service: `spillway serve` never depends on this module, and both tools
//! are unauthenticated where their purpose is to be driven by a test. Bind them to loopback.
//!
//! [`process`] launches the real `spillway` binary for the integration tests and the end-to-end
//! benches alike; [`archives`] builds the zips, tarballs and gzip data the decoding tests scan.
//!
//! This module owns what the tools share: binding an address (port 0 works, so tests get free
//! ports), serving until told to stop, and waiting for SIGINT/SIGTERM.

pub mod archives;
pub mod fake_github;
pub mod process;
pub mod reference_installation;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;

/// How long a stopping tool waits for in-flight requests (an injected timeout may hang far longer).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A router served on a bound address.
pub struct Served {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Binds `listen` and serves `app` on it in a background task.
    pub async fn bind(listen: &str, app: Router) -> anyhow::Result<Served> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Served { addr, stop, task })
    }

    /// Stops accepting, lets in-flight requests finish for a short grace period, then drops them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// SIGINT and SIGTERM, listened for from [`StopSignals::install`] on: install them before
/// announcing an address, or a caller that stops the process as soon as it reads the address kills
/// it before it can shut down cleanly.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first of them.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
