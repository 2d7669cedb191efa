//! The server's shutdown as one connection or run sees it (tokio's mini-redis `Shutdown` is the
//! model): it begins once for everyone; a run under way may then finish for the grace period
//! (`shutdown_grace_secs`), after which its owner stops it.

use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What [`Shutdown::next`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Shutdown has begun: start nothing new.
    Begun,
    /// The grace period is over: stop what still runs.
    GraceOver,
}

/// One listener's view of the server's shutdown.
pub struct Shutdown {
    begun: watch::Receiver<bool>,
    grace: Duration,
    /// When the grace period ends, once shutdown has begun.
    grace_over: Option<Instant>,
    /// [`Notice::GraceOver`] has been reported.
    over: bool,
}

impl Shutdown {
    /// Listens to `begun` (set once, when shutdown begins), with `grace` for runs under way.
    pub fn new(begun: watch::Receiver<bool>, grace: Duration) -> Self {
        Shutdown {
            begun,
            grace,
            grace_over: None,
            over: false,
        }
    }

    /// Whether shutdown has begun (reported by [`Shutdown::next`] or not yet).
    pub fn is_begun(&self) -> bool {
        self.grace_over.is_some() || *self.begun.borrow()
    }

    /// The next step of the shutdown: [`Notice::Begun`], then [`Notice::GraceOver`] once the
    /// grace period has passed; pending before it begins and after the grace period. Cancel
    /// safe: a step is taken only when this resolves.
    pub async fn next(&mut self) -> Notice {
        match self.grace_over {
            None => {
                if self.begun.wait_for(|b| *b).await.is_err() {
                    // The server's state is gone: nothing will begin.
                    std::future::pending::<()>().await;
                }
                self.grace_over = Some(Instant::now() + self.grace);
                Notice::Begun
            }
            Some(_) if self.over => std::future::pending().await,
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.over = true;
                Notice::GraceOver
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_begins_once_then_its_grace_period_ends_once() {
        let (tx, rx) = watch::channel(false);
        let mut shutdown = Shutdown::new(rx, Duration::from_secs(10));
        assert!(!shutdown.is_begun());
        let early = tokio::time::timeout(Duration::from_secs(60), shutdown.next()).await;
        assert!(early.is_err(), "nothing happens before shutdown begins");
        tx.send_replace(true);
        assert!(shutdown.is_begun());
        let begun_at = Instant::now();
        assert_eq!(shutdown.next().await, Notice::Begun);
        assert_eq!(shutdown.next().await, Notice::GraceOver);
        assert_eq!(begun_at.elapsed(), Duration::from_secs(10));
        let after = tokio::time::timeout(Duration::from_secs(60), shutdown.next()).await;
        assert!(after.is_err(), "the grace period ends once");
    }
}
