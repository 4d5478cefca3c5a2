//! Start and graceful stop, shared by every role.
//!
//! A role is a set of components started in order and stopped in reverse. On SIGINT or
//! SIGTERM the process reports itself not ready, lets in-flight HTTP requests finish (up to
//! `shutdown.grace_period_seconds`), then stops each component, which flushes and fsyncs
//! what it holds, and exits 0. A second signal during that stop exits at once (code 130)
//! for an operator who really means it.

use async_trait::async_trait;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Exit code after a second signal cut the graceful stop short (128 + SIGINT).
pub const EXIT_FORCED: i32 = 130;

/// A long-running piece of a role (the bus, the gateway, an ingest worker…).
#[async_trait]
pub trait Component: Send {
    fn name(&self) -> &'static str;

    /// Finishes accepted work, makes it durable, and releases resources.
    async fn stop(self: Box<Self>) -> anyhow::Result<()>;
}

/// SIGINT and SIGTERM, caught from the moment this is created (so a signal during start-up
/// is not the default instant death but a graceful stop once start-up finished).
#[derive(Debug)]
pub struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the next SIGINT or SIGTERM; returns the signal's name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Stops components in reverse start order. Every component is stopped even if an earlier
/// one fails; the first error is returned. A second signal ends the process immediately.
pub async fn stop_all(
    components: Vec<Box<dyn Component>>,
    signals: &mut ShutdownSignals,
) -> anyhow::Result<()> {
    let stopping = async {
        let mut first_error = None;
        for component in components.into_iter().rev() {
            let name = component.name();
            tracing::info!(component = name, "stopping");
            if let Err(error) = component.stop().await {
                tracing::error!(
                    component = name,
                    error = format!("{error:#}"),
                    "stop failed"
                );
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    };
    tokio::select! {
        result = stopping => result,
        signal = signals.recv() => {
            tracing::warn!(signal, "second signal during shutdown: exiting without finishing");
            std::process::exit(EXIT_FORCED);
        }
    }
}
