//! Owned background tasks: every task the API layer starts (watch streams, the proposer and its entries in
//! flight, the leader duties, the ticket dispatcher) runs in a [`TaskGroup`], a `tokio::task::JoinSet` with
//! a stop signal. Stopping a group tells its tasks to end, waits for them up to a limit, and aborts (and
//! counts) whatever is left, so shutdown is bounded and nothing runs on unowned.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::lock;

/// What shutdown left behind: tasks of each group still running at its limit (aborted). All zero is a
/// clean stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    pub watchers: usize,
    pub duties: usize,
}

impl ShutdownReport {
    pub fn clean(&self) -> bool {
        *self == ShutdownReport::default()
    }
}

/// A named set of owned tasks with one stop signal.
pub struct TaskGroup {
    name: &'static str,
    set: Mutex<JoinSet<()>>,
    stop: watch::Sender<bool>,
}

impl TaskGroup {
    pub fn new(name: &'static str) -> TaskGroup {
        TaskGroup { name, set: Mutex::new(JoinSet::new()), stop: watch::channel(false).0 }
    }

    /// Run `task` in this group. Finished tasks are reaped first, so the set holds only live ones. After
    /// the group was told to stop, nothing new starts (the task is dropped unrun).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.is_stopping() {
            return;
        }
        let mut set = lock(&self.set);
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    /// Resolves when the group is told to stop (at once if it already was). Tasks select on this.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            // An error means the group is gone: stop as well.
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        let mut set = lock(&self.set);
        while set.try_join_next().is_some() {}
        set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tell every task to stop and wait for them up to `limit`; abort the rest. Returns how many had to be
    /// aborted (0 for a clean stop).
    pub async fn shutdown(&self, limit: Duration) -> usize {
        self.stop.send_replace(true);
        let mut set = std::mem::take(&mut *lock(&self.set));
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(Err(e))) if e.is_panic() => {
                    tracing::error!(group = self.name, error = %e, "a task panicked");
                }
                Ok(Some(_)) => {}
                Ok(None) => return 0,
                Err(_) => {
                    let left = set.len();
                    tracing::warn!(
                        group = self.name,
                        left,
                        ?limit,
                        "tasks still running at the limit; aborted"
                    );
                    set.shutdown().await;
                    return left;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_that_listen_stop_cleanly_and_others_are_aborted_at_the_limit() {
        let g = TaskGroup::new("test");
        for _ in 0..3 {
            let stop = g.stopped();
            g.spawn(stop);
        }
        g.spawn(async {});
        assert!(
            tests_wait(|| g.len() == 3).await,
            "finished tasks are reaped, live ones counted: {}",
            g.len()
        );
        assert_eq!(g.shutdown(Duration::from_secs(5)).await, 0, "listening tasks stop by themselves");
        assert!(g.is_empty());
        g.spawn(std::future::pending());
        assert!(g.is_empty(), "nothing starts after the stop");

        let deaf = TaskGroup::new("deaf");
        deaf.spawn(std::future::pending());
        deaf.spawn(std::future::pending());
        let stop = deaf.stopped();
        deaf.spawn(stop);
        assert_eq!(deaf.shutdown(Duration::from_millis(100)).await, 2, "the two deaf tasks hit the limit");
        assert!(deaf.is_empty());
    }

    /// Poll a condition for up to 5 s (a finished task is reaped once the runtime has run it).
    async fn tests_wait(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}
