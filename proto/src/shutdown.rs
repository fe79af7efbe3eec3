//! The one signal helper of every long-running `huatuo` command (`agent`, `master`, `dev`): SIGINT or
//! SIGTERM become a future that resolves once, or a `watch` flag that turns true. It lives here because the
//! agent and the master both depend on `proto` and on nothing else in common.
//!
//! Both install their handlers before they return (inside a tokio runtime), so a signal that arrives
//! right after the call is never missed and never falls back to the default action (kill).

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Install SIGINT and SIGTERM handlers now; the future resolves at the first of either.
pub fn on_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// A flag that turns true at the first SIGINT or SIGTERM (for loops that watch a `watch` receiver). The
/// task that waits for the signal ends with the runtime.
pub fn stop_flag() -> std::io::Result<tokio::sync::watch::Receiver<bool>> {
    let signalled = on_signal()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signalled.await;
        tx.send_replace(true);
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real SIGTERM sent to this process resolves the future and flips the flag (the handlers replace the
    /// default action, so the test process survives). Bounded waits, no sleeps.
    #[tokio::test]
    async fn sigterm_resolves_the_future_and_flips_the_flag() {
        let signalled = on_signal().expect("handlers");
        let mut flag = stop_flag().expect("flag");
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success());
        let bound = std::time::Duration::from_secs(10);
        tokio::time::timeout(bound, signalled).await.expect("the signal future resolved in time");
        tokio::time::timeout(bound, flag.wait_for(|s| *s))
            .await
            .expect("the flag turned true in time")
            .expect("sender alive");
    }
}
