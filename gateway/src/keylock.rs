//! One lock per key: deliveries sharing a key wait for each other, and no
//! other delivery waits for them.
//!
//! A fixed set of shards would do the first, but not the second: at the
//! bench's full speed (~256 deliveries in flight over 1,024 shards) about
//! one delivery in four would wait for an unrelated delivery's publish.
//! Here a key's lock exists only while a delivery holds it or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};

use tokio::sync::{Mutex, OwnedMutexGuard};

type Slot = Arc<Mutex<()>>;

#[derive(Default)]
pub(crate) struct KeyLocks {
    held: SyncMutex<HashMap<u64, Slot>>,
}

/// Holds a key until dropped.
pub(crate) struct KeyGuard<'a> {
    // Field order matters: the lock is released before the ticket checks
    // whether anyone else still needs the key's slot.
    _guard: OwnedMutexGuard<()>,
    _ticket: Ticket<'a>,
}

/// A claim on a key's slot, from asking for the lock until releasing it,
/// so that a waiter cancelled before it got the lock cleans up too.
struct Ticket<'a> {
    locks: &'a KeyLocks,
    hash: u64,
    slot: Slot,
}

impl KeyLocks {
    /// Waits until no other holder of `hash` (a key's hash) is left.
    pub(crate) async fn lock(&self, hash: u64) -> KeyGuard<'_> {
        let slot = Arc::clone(self.slots().entry(hash).or_default());
        let ticket = Ticket {
            locks: self,
            hash,
            slot,
        };
        let guard = Arc::clone(&ticket.slot).lock_owned().await;
        KeyGuard {
            _guard: guard,
            _ticket: ticket,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.held.lock().expect("key lock map")
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots().len()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.slots();
        // Slots are only cloned under this lock, so two references (the
        // map's and this ticket's) mean nobody holds or awaits the key.
        if Arc::strong_count(&self.slot) == 2 {
            held.remove(&self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    // Plain tests, polled by hand: inside a tokio task, the runtime's
    // co-operative budget would make a free lock answer "pending" after
    // 128 acquisitions.
    fn now<F: std::future::Future>(f: F) -> F::Output {
        f.now_or_never().expect("ready at once")
    }

    #[test]
    fn distinct_keys_never_wait_for_each_other() {
        let locks = KeyLocks::default();
        // More keys than the 1,024 shards this replaced: with any fixed
        // set of locks, two of these would share one and the second wait.
        let guards: Vec<_> = (0..4096u64)
            .map(|k| {
                locks
                    .lock(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    .now_or_never()
                    .expect("an unrelated key's lock is free")
            })
            .collect();
        assert_eq!(locks.len(), 4096);
        drop(guards);
        assert_eq!(locks.len(), 0, "released keys leave nothing behind");
    }

    #[test]
    fn a_key_is_held_until_its_holder_releases_it() {
        let locks = KeyLocks::default();
        let first = now(locks.lock(7));
        let mut second = Box::pin(locks.lock(7));
        assert!((&mut second).now_or_never().is_none(), "same key waits");
        let mut third = Box::pin(locks.lock(7));
        assert!((&mut third).now_or_never().is_none());
        drop(first);
        let second = second.now_or_never().expect("free once released");
        assert!(
            (&mut third).now_or_never().is_none(),
            "one holder at a time"
        );
        drop(second);
        drop(now(third));
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn a_waiter_cancelled_before_its_turn_leaves_nothing_behind() {
        let locks = KeyLocks::default();
        let first = now(locks.lock(7));
        let mut waiting = Box::pin(locks.lock(7));
        assert!((&mut waiting).now_or_never().is_none());
        drop(first);
        // Released while a waiter still counted: the slot had to stay.
        assert_eq!(locks.len(), 1);
        drop(waiting);
        assert_eq!(locks.len(), 0, "the cancelled waiter removed the slot");
        drop(locks.lock(7).now_or_never().expect("free again"));
        assert_eq!(locks.len(), 0);
    }
}
