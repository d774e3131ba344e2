//! A thread pool whose caller never waits for a thread that has not started.
//!
//! A parallel region is `n` independent items. The caller publishes the region, wakes the
//! helpers, and then claims items itself from a shared cursor, like every helper that wakes
//! in time. The region is over when every *claimed* item is done: a helper that the OS has not
//! scheduled yet claims nothing and is not waited for, and one preempted mid-item delays the
//! region by that item only. On a quiet machine all threads share the work; on a busy one the
//! region degrades towards the caller doing everything alone, never below it. (A barrier pool,
//! where the caller waits for every worker to check in at every matmul, was measured ~10x
//! slower with two threads than with one on a loaded machine.)
//!
//! Helpers spin briefly after a region (the next one usually follows within microseconds),
//! yielding the CPU as they do, then park.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

/// One parallel region. The closure pointer is only called for a claimed item, and an item
/// can only be claimed while the region is incomplete, i.e. while the caller (who owns the
/// closure) is still inside [`Pool::run`].
struct Region {
    func: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// The first panic of an item, re-raised on the caller once every item is done.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

// SAFETY: `func` points to a `Sync` closure that outlives every call made through it (see
// `Region`); the rest is atomics.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Claims and runs items until none are left. A panicking item still counts as done (so
    /// nobody waits forever); its payload is kept for the caller.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: item `i` is claimed and not done, so the caller is still waiting in
            // `Pool::run` and the closure is alive.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                (*self.func)(i)
            }));
            if let Err(payload) = run {
                if let Ok(mut p) = self.panic.lock() {
                    p.get_or_insert(payload);
                }
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    /// Bumped when a region is published.
    generation: AtomicUsize,
    region: Mutex<Option<Arc<Region>>>,
    /// Per helper: parked (needs an unpark to see the next region).
    parked: Vec<AtomicBool>,
    stop: AtomicBool,
}

/// The pool: `threads() - 1` helpers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
    /// Serializes regions from different callers (the engine thread is the only hot caller).
    call: Mutex<()>,
}

/// Spins (with `yield_now`) a helper makes after a region before parking.
const HELPER_SPINS: usize = 2_000;

impl Pool {
    /// A pool of `threads` threads in all (the caller counts as one).
    pub fn new(threads: usize) -> Self {
        let helpers_n = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            region: Mutex::new(None),
            parked: (0..helpers_n).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        let mut helpers = Vec::with_capacity(helpers_n);
        for id in 0..helpers_n {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("rrm-kernel-{id}"))
                .spawn(move || helper_loop(&shared, id));
            match spawned {
                Ok(handle) => helpers.push(handle.thread().clone()),
                // Fewer helpers: the caller does their share. Never an error.
                Err(_) => break,
            }
        }
        Self { shared, helpers, call: Mutex::new(()) }
    }

    /// The process-wide pool, sized by `CANDLE_NUM_THREADS` (which `--threads` sets), else
    /// `RAYON_NUM_THREADS`, else the number of CPUs this process may use.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(default_threads()))
    }

    /// Threads working on a region, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(i)` for every `i` in `0..n`, each exactly once, on the caller and the helpers
    /// that wake in time. Returns when all items are done. Nested calls (from inside an item)
    /// run inline.
    pub fn run<F: Fn(usize) + Sync>(&self, n: usize, f: F) {
        if n == 0 {
            return;
        }
        if n == 1 || self.helpers.is_empty() || IN_REGION.with(|c| c.get()) {
            (0..n).for_each(f);
            return;
        }
        let _serial = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let func: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: only the lifetime is erased; see `Region` for why every call through the
        // pointer happens while `f` is alive (this function does not return before `done == n`).
        let func: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(func) };
        let region = Arc::new(Region {
            func,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        if let Ok(mut slot) = self.shared.region.lock() {
            *slot = Some(region.clone());
        }
        self.shared.generation.fetch_add(1, Ordering::Release);
        for (parked, t) in self.shared.parked.iter().zip(&self.helpers) {
            if parked.load(Ordering::Acquire) {
                t.unpark();
            }
        }
        IN_REGION.with(|c| c.set(true));
        region.work();
        IN_REGION.with(|c| c.set(false));
        // Only items a helper claimed can be outstanding.
        let mut spins = 0u32;
        while region.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Ok(mut slot) = self.shared.region.lock() {
            *slot = None;
        }
        let payload = region.panic.lock().ok().and_then(|mut p| p.take());
        if let Some(payload) = payload {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for t in &self.helpers {
            t.unpark();
        }
    }
}

thread_local! {
    static IN_REGION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn helper_loop(shared: &Shared, id: usize) {
    IN_REGION.with(|c| c.set(true));
    let mut seen = shared.generation.load(Ordering::Acquire);
    loop {
        // Wait for a new region: spin a little (yielding), then park.
        let mut spins = 0;
        loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            spins += 1;
            if spins < HELPER_SPINS {
                if spins % 16 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            } else {
                shared.parked[id].store(true, Ordering::Release);
                // Re-check after announcing: a region published before the flag was seen
                // would otherwise not unpark us.
                if shared.generation.load(Ordering::Acquire) == seen
                    && !shared.stop.load(Ordering::Acquire)
                {
                    std::thread::park();
                }
                shared.parked[id].store(false, Ordering::Release);
                spins = 0;
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let region = shared.region.lock().ok().and_then(|r| r.clone());
        if let Some(region) = region {
            region.work();
        }
    }
}

/// Threads for the kernels: `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the CPUs
/// this process may run on.
pub fn default_threads() -> usize {
    ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok().filter(|&n| n > 0))
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once() {
        let pool = Pool::new(3);
        for n in [0usize, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n = {n}");
        }
    }

    #[test]
    fn nested_regions_run_inline() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, |_| {
            pool.run(5, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn a_single_thread_pool_runs_on_the_caller() {
        let pool = Pool::new(1);
        let me = std::thread::current().id();
        pool.run(10, |_| assert_eq!(std::thread::current().id(), me));
    }
}
