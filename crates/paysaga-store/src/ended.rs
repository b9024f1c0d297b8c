//! In-process fan-out of "saga X may have ended" to the callers awaiting X
//! ([`crate::Store::watch_end`]). No SQL here: each store feeds it from where it learns of an
//! end (PostgreSQL: its one shared LISTEN connection; SQLite: its own commits).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

/// The sagas someone in this process awaits, each with a signal, and the state of the
/// connection that hears their ends.
#[derive(Debug)]
pub(crate) struct EndSignals {
    /// Per awaited saga: its signal and how many watches share it.
    waiters: Mutex<HashMap<Uuid, (watch::Sender<()>, usize)>>,
    /// `None` while nothing listens (the waiters rely on their polling fallback); a new
    /// number each time listening (re)starts: an end notified meanwhile may have been lost,
    /// so every waiter reads its saga again.
    listening: watch::Sender<Option<u64>>,
}

impl EndSignals {
    /// Signals with `listening` as the initial state (`Some` where ends are heard in-process
    /// and nothing can be lost).
    pub(crate) fn new(listening: Option<u64>) -> Arc<EndSignals> {
        Arc::new(EndSignals {
            waiters: Mutex::new(HashMap::new()),
            listening: watch::Sender::new(listening),
        })
    }

    /// Begins awaiting `id`: a signal sent after this call is seen by the subscription.
    pub(crate) fn subscribe(self: &Arc<Self>, id: Uuid) -> Subscription {
        let ended = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = waiters
                .entry(id)
                .or_insert_with(|| (watch::Sender::new(()), 0));
            entry.1 += 1;
            entry.0.subscribe()
        };
        Subscription {
            signals: self.clone(),
            id,
            ended,
            listening: self.listening.subscribe(),
        }
    }

    /// Saga `id` may have ended: wakes its waiters in this process (none: a map look-up).
    pub(crate) fn signal(&self, id: Uuid) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((sender, _)) = waiters.get(&id) {
            sender.send_replace(());
        }
    }

    /// Whether ends are heard now (`Some(generation)`), see [`EndSignals::listening`].
    pub(crate) fn set_listening(&self, state: Option<u64>) {
        self.listening.send_replace(state);
    }

    /// How many sagas are awaited in this process.
    #[cfg(test)]
    pub(crate) fn awaited(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One caller's subscription to one saga's end; unsubscribes when dropped.
#[derive(Debug)]
pub(crate) struct Subscription {
    signals: Arc<EndSignals>,
    id: Uuid,
    ended: watch::Receiver<()>,
    listening: watch::Receiver<Option<u64>>,
}

impl Subscription {
    /// Waits at most `within` until ends are heard; `false` if they are not (yet).
    pub(crate) async fn heard_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.listening.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Returns when the saga may have ended or an end may have been missed (listening
    /// stopped or restarted). Pending forever otherwise.
    pub(crate) async fn changed(&mut self) {
        tokio::select! {
            r = self.ended.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            r = self.listening.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiters = self
            .signals
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = waiters.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiters.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_signal_wakes_only_the_waiters_of_its_saga_and_the_map_empties_after_them() {
        let signals = EndSignals::new(Some(1));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut wa = signals.subscribe(a);
        let mut wa2 = signals.subscribe(a);
        let mut wb = signals.subscribe(b);
        assert!(wa.heard_within(Duration::from_millis(10)).await);
        signals.signal(a);
        tokio::time::timeout(Duration::from_secs(1), wa.changed())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), wa2.changed())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wb.changed())
                .await
                .is_err(),
            "b was woken by a's end"
        );
        // A restarted listener wakes everyone (an end may have been lost).
        signals.set_listening(Some(2));
        tokio::time::timeout(Duration::from_secs(1), wb.changed())
            .await
            .unwrap();
        assert_eq!(signals.awaited(), 2);
        drop((wa, wa2));
        assert_eq!(signals.awaited(), 1);
        drop(wb);
        assert_eq!(signals.awaited(), 0);
    }
}
