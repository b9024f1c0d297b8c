//! Group commit: the step commits that wait while the database is busy go to it together, as
//! one statement.
//!
//! A committer queues its commit and, if fewer than [`LEADERS`] statements are in flight,
//! leads: it takes everything queued (at most [`MOST`]) and runs it as one statement, hands
//! each committer its own result, and leads again until its own commit has its answer. A
//! committer that cannot lead waits for its answer or for a leader to step down (then it tries
//! to lead). Nothing waits for a batch to fill: one commit alone goes at once, and commits
//! group only while [`LEADERS`] statements are already running, so a single saga's latency is
//! unchanged while a busy worker pays the per-statement cost (parse, executor start-up,
//! round trip, WAL flush) once for many sagas.
//!
//! No SQL here: the store passes the function that runs a batch (see `commit_group` in
//! `postgres.rs`). A committer whose leader was dropped mid-statement gets `None` and commits
//! alone; each commit carries its token, so a retry never writes twice.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

/// Statements in flight at once per store (worker process). Measured with `paysaga-bench
/// --only throughput` (docs/PERFORMANCE.md): while sqlx's pool pinged every connection given
/// back to it, 1, 2, 4 and 8 gave 2,801, 3,000, 2,495 and 1,944 steps/s (2 workers x 16);
/// since the hot path keeps its connections (no ping), 1, 2 and 3 gave 9,619 and 9,454,
/// 8,576 and 8,253, 7,267 and 7,121 steps/s, and 1 against 2 gave 13,691 against 11,442 with
/// 4 workers x 32 and the same with 1 worker x 16 (6,916 and 6,681 against 6,751 and 6,658).
/// One statement at a time lets the most commits queue behind it and group.
pub(super) const LEADERS: usize = 1;

/// The most commits in one statement.
pub(super) const MOST: usize = 64;

/// One queued commit and where its answer goes.
struct Pending<T, O> {
    item: Arc<T>,
    reply: oneshot::Sender<O>,
}

/// The commits of one store waiting for a statement, and the statements in flight.
pub(super) struct Group<T, O> {
    queue: Mutex<VecDeque<Pending<T, O>>>,
    leaders: AtomicUsize,
    /// Signalled when a leader steps down while commits are queued.
    freed: Notify,
    statements: AtomicU64,
    commits: AtomicU64,
}

impl<T, O> std::fmt::Debug for Group<T, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("leaders", &self.leaders.load(Ordering::Relaxed))
            .field("statements", &self.statements.load(Ordering::Relaxed))
            .field("commits", &self.commits.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T, O> Default for Group<T, O> {
    fn default() -> Self {
        Group {
            queue: Mutex::new(VecDeque::new()),
            leaders: AtomicUsize::new(0),
            freed: Notify::new(),
            statements: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        }
    }
}

/// A leader's seat, given back however the leader ends, including when its future is dropped
/// mid-statement; a waiting committer is told if commits are still queued. (Always telling
/// would wake the leader that just stepped down, which would take the seat again, find
/// nothing and step down, in a loop.)
struct Seat<'a, T, O>(&'a Group<T, O>);

impl<T, O> Drop for Seat<'_, T, O> {
    fn drop(&mut self) {
        self.0.leaders.fetch_sub(1, Ordering::SeqCst);
        let queued = !self
            .0
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if queued {
            self.0.freed.notify_one();
        }
    }
}

impl<T, O> Group<T, O> {
    /// Statements run and commits they carried, since the store was opened.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        (
            self.statements.load(Ordering::Relaxed),
            self.commits.load(Ordering::Relaxed),
        )
    }

    fn seat(&self) -> Option<Seat<'_, T, O>> {
        if self.leaders.fetch_add(1, Ordering::SeqCst) < LEADERS {
            Some(Seat(self))
        } else {
            self.leaders.fetch_sub(1, Ordering::SeqCst);
            None
        }
    }

    fn take(&self) -> Vec<Pending<T, O>> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = queue.len().min(MOST);
        queue.drain(..n).collect()
    }

    /// Commits `item` with whatever else is queued, through `run` (which gets the batch in
    /// queue order and returns one outcome per item, in the same order). `None`: the leader
    /// that held the item was dropped before answering; the caller commits it alone.
    pub(super) async fn submit<F, Fut>(&self, item: Arc<T>, run: F) -> Option<O>
    where
        F: Fn(Vec<Arc<T>>) -> Fut,
        Fut: Future<Output = Vec<O>>,
    {
        let (reply, mut answer) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Pending { item, reply });
        loop {
            if let Some(_seat) = self.seat() {
                loop {
                    let batch = self.take();
                    if batch.is_empty() {
                        break;
                    }
                    let (items, replies): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|p| (p.item, p.reply)).unzip();
                    self.statements.fetch_add(1, Ordering::Relaxed);
                    self.commits
                        .fetch_add(items.len() as u64, Ordering::Relaxed);
                    let outcomes = run(items).await;
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                    match answer.try_recv() {
                        Ok(o) => return Some(o),
                        Err(oneshot::error::TryRecvError::Closed) => return None,
                        Err(oneshot::error::TryRecvError::Empty) => {}
                    }
                }
            }
            // Our commit is in another leader's statement, or every seat is taken: wait for
            // the answer, or for a seat to free (then lead whatever is still queued).
            tokio::select! {
                o = &mut answer => return o.ok(),
                _ = self.freed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Many committers at once, a slow "statement": every one gets its own outcome, no
    /// statement carries more than [`MOST`], and the queue is drained into fewer statements
    /// than commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_committer_gets_its_own_outcome_and_busy_commits_group() {
        let group: Arc<Group<u32, u32>> = Arc::new(Group::default());
        let widest = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..500u32)
            .map(|n| {
                let group = group.clone();
                let widest = widest.clone();
                tokio::spawn(async move {
                    group
                        .submit(Arc::new(n), |items| {
                            let widest = widest.clone();
                            async move {
                                widest.fetch_max(items.len(), Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                items.iter().map(|i| **i * 10).collect()
                            }
                        })
                        .await
                })
            })
            .collect();
        for (n, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Some(n as u32 * 10));
        }
        let (statements, commits) = group.counts();
        assert_eq!(commits, 500);
        assert!(statements < 500, "{statements} statements for 500 commits");
        assert!(widest.load(Ordering::SeqCst) <= MOST);
        assert_eq!(group.leaders.load(Ordering::SeqCst), 0);
    }

    /// A leader dropped mid-statement: the committers of its batch get `None` (they commit
    /// alone), and its seat is given back.
    #[tokio::test]
    async fn a_dropped_leader_frees_its_seat_and_its_batch_commits_alone() {
        let group: Arc<Group<u32, u32>> = Arc::new(Group::default());
        let started = Arc::new(Notify::new());
        let leader = {
            let group = group.clone();
            let started = started.clone();
            tokio::spawn(async move {
                group
                    .submit(Arc::new(1), |_| {
                        let started = started.clone();
                        async move {
                            started.notify_one();
                            std::future::pending::<Vec<u32>>().await
                        }
                    })
                    .await
            })
        };
        started.notified().await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        assert_eq!(group.leaders.load(Ordering::SeqCst), 0);
        // The next committer leads and is answered.
        let o = group
            .submit(Arc::new(2), |items| async move {
                items.iter().map(|i| **i).collect()
            })
            .await;
        assert_eq!(o, Some(2));
    }
}
