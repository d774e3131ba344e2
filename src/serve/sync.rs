//! The one kind of lock the web app uses, and the rule that makes a deadlock a test failure
//! instead of a hung server.
//!
//! **The rule.** Every piece of shared state in `serve` sits in a [`Guarded`], reached only
//! through [`Guarded::with`]: the caller passes a closure, the lock is held for that closure and
//! no longer, and no guard is ever handed out. Nothing inside a closure may `.await` (the closure
//! is not async, so the compiler refuses it). Each `Guarded` has a **rank**; while a thread holds
//! locks, it may only take one of a strictly higher rank. Taking the same lock again (re-entry,
//! which deadlocks a `std::sync::Mutex` on itself) or a lower-ranked one (the order two threads
//! could take in opposite directions) **panics at once, naming both call sites**, in every build.
//! A panicking handler is a 500 (or a dropped connection), never a server that stops answering.
//!
//! The ranks, outermost first ([`rank`]): the queue's reload lock, a labeler's write lock, the
//! queue itself, then the leaf locks (sessions, jobs, questions, trees, the report, the reward
//! model), which never nest in each other. Work that is not O(1) — store reads, ranking, model
//! calls — happens outside every lock, on data copied out (cheap `Arc` clones) inside one.

use std::cell::RefCell;
use std::panic::Location;
use std::sync::Mutex;

/// Lock ranks: a thread holding a lock of rank `r` may only take locks of rank `> r`.
pub mod rank {
    /// Serializes reloads of the queue (held across a whole store read).
    pub const RELOAD: u8 = 10;
    /// One labeler's answers, checked and stored one at a time.
    pub const WRITES: u8 = 20;
    /// The queue's in-memory state.
    pub const QUEUE: u8 = 30;
    /// Locks that never hold another: sessions, jobs, questions, trees, report, scorer.
    pub const LEAF: u8 = 40;
}

struct Held {
    lock: usize,
    name: &'static str,
    rank: u8,
    at: &'static Location<'static>,
}

thread_local! {
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
}

/// Shared state behind a mutex that can only be used through a closure (see the module docs).
pub struct Guarded<T> {
    name: &'static str,
    rank: u8,
    inner: Mutex<T>,
}

/// Pops this thread's record of a held lock, also when the closure panics.
struct Release(usize);

impl Drop for Release {
    fn drop(&mut self) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|x| x.lock == self.0) {
                h.remove(i);
            }
        });
    }
}

impl<T> Guarded<T> {
    pub const fn new(name: &'static str, rank: u8, value: T) -> Guarded<T> {
        Guarded { name, rank, inner: Mutex::new(value) }
    }

    /// Runs `f` with the lock held. Panics, naming both places, when this thread already holds
    /// this lock or one of the same or a higher rank. A poisoned lock (a holder panicked) is
    /// recovered: the data is plain and every closure leaves it consistent before it can panic.
    #[track_caller]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let here = Location::caller();
        let me = self as *const Self as usize;
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(other) = h.iter().find(|x| x.rank >= self.rank) {
                let what = if other.lock == me { "again (re-entry)" } else { "out of order" };
                let message = format!(
                    "lock `{}` (rank {}) taken {what} at {here} while `{}` (rank {}) is held \
                     since {}: this would deadlock (see src/serve/sync.rs)",
                    self.name, self.rank, other.name, other.rank, other.at
                );
                drop(h);
                panic!("{message}");
            }
            h.push(Held { lock: me, name: self.name, rank: self.rank, at: here });
        });
        let _release = Release(me);
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl<T: Default> Default for Guarded<T> {
    fn default() -> Guarded<T> {
        Guarded::new(std::any::type_name::<T>(), rank::LEAF, T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_message(r: std::thread::Result<()>) -> String {
        let e = r.expect_err("it should panic");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn reentry_panics_with_both_call_sites_instead_of_deadlocking() {
        let g = Guarded::new("queue", rank::QUEUE, 1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            g.with(|_| g.with(|v| *v += 1));
        }));
        let message = panic_message(r);
        assert!(message.contains("`queue`") && message.contains("re-entry"), "{message}");
        let places = message.matches(&format!("sync.rs:{}:", line!() - 4)).count();
        assert_eq!(places, 2, "both places named: {message}");
        // The lock is free again, and this thread holds nothing.
        assert_eq!(g.with(|v| *v), 1);
        HELD.with(|h| assert!(h.borrow().is_empty()));
    }

    #[test]
    fn locks_nest_only_in_rank_order() {
        let outer = Guarded::new("writes", rank::WRITES, ());
        let inner = Guarded::new("queue", rank::QUEUE, 0);
        let leaf = Guarded::new("jobs", rank::LEAF, 0);
        let leaf2 = Guarded::new("trees", rank::LEAF, 0);
        outer.with(|_| inner.with(|q| leaf.with(|j| *j = *q + 1)));
        assert_eq!(leaf.with(|j| *j), 1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.with(|_| outer.with(|_| ()));
        }));
        assert!(panic_message(r).contains("out of order"));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            leaf.with(|_| leaf2.with(|_| ()));
        }));
        assert!(panic_message(r).contains("`trees`"));
        // Other threads are not affected by what this one holds.
        inner.with(|_| {
            std::thread::scope(|s| {
                s.spawn(|| leaf.with(|j| *j += 1));
            })
        });
        assert_eq!(leaf.with(|j| *j), 2);
    }
}
