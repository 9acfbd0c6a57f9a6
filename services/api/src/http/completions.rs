//! Upload completions: once an upload's bytes are staged, moving them into
//! place and publishing the event run as a task of their own, so a client
//! that goes away (its request's future dropped) cuts neither: no blob is
//! left in place without its event being published or, when publishing
//! fails without an Idempotency-Key, removed. Shutdown waits for them, up to
//! its deadline.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The upload completions running; clones share the count.
#[derive(Debug, Clone)]
pub struct Completions {
    running: Arc<watch::Sender<usize>>,
}

impl Default for Completions {
    fn default() -> Self {
        Completions {
            running: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Completions {
    /// Runs `work` as a task of its own, counted until it ends (or is
    /// dropped with the runtime).
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let running = Running::start(self.running.clone());
        tokio::spawn(async move {
            let _running = running;
            work.await
        })
    }

    /// How many are running.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// Resolves once none is running.
    pub async fn idle(&self) {
        let mut rx = self.running.subscribe();
        // The sender lives in `self`: this cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One running completion.
struct Running(Arc<watch::Sender<usize>>);

impl Running {
    fn start(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Running(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn idle_waits_for_every_running_completion() {
        let c = Completions::default();
        c.idle().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let task = c.spawn(async move { rx.await.unwrap() + 1 });
        assert_eq!(c.running(), 1);
        assert!(c.idle().now_or_never().is_none(), "one is running");
        tx.send(41).unwrap();
        assert_eq!(task.await.unwrap(), 42);
        c.idle().await;
        assert_eq!(c.running(), 0);

        // Aborted, it is no longer counted either.
        let task = c.spawn(std::future::pending::<()>());
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        c.idle().await;
    }
}
