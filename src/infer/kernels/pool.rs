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
//!
//! Whether helpers pay off is measured, not assumed. For every region shape (its item count,
//! which identifies a matmul shape in practice) the pool compares each parallel region's wall
//! time with what the caller alone would have needed (its own time per item × the items). When
//! the helpers stop paying off — a busy machine preempts them mid-item, or the region is too
//! small to share — that shape runs on the caller alone for a while (64 regions, doubling on
//! every failed probe up to 8192), then is probed in parallel again. Prefill's large regions keep
//! both cores while decode's tiny ones on a loaded machine fall back to one: the thread count that
//! is actually fastest, per region, without a setting. `RRM_POOL_ADAPT=0` turns it off (for
//! measuring what it buys).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

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
    /// Claims and runs items until none are left; returns how many this thread ran. A
    /// panicking item still counts as done (so nobody waits forever); its payload is kept for
    /// the caller.
    fn work(&self) -> usize {
        let mut ran = 0;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return ran;
            }
            ran += 1;
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
    /// Serializes regions from different callers (the engine thread is the only hot caller),
    /// and holds what the pool has measured about each region shape.
    call: Mutex<Adapt>,
    /// Regions run in parallel / on the caller alone because helpers did not pay off.
    parallel_regions: AtomicUsize,
    solo_regions: AtomicUsize,
}

/// How many regions of each kind a pool has run (see [`Pool::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub parallel: usize,
    /// Run on the caller alone because, for their shape, helpers were measured not to pay off.
    pub solo: usize,
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
        Self {
            shared,
            helpers,
            call: Mutex::new(Adapt::new(true)),
            parallel_regions: AtomicUsize::new(0),
            solo_regions: AtomicUsize::new(0),
        }
    }

    /// Turns the per-shape measurement off (every region uses every thread) or on.
    pub fn set_adaptive(&self, on: bool) {
        let mut adapt = self.call.lock().unwrap_or_else(|e| e.into_inner());
        *adapt = Adapt::new(on);
    }

    /// Whether the pool measures per shape whether helpers pay off (off: `RRM_POOL_ADAPT=0`).
    pub fn adaptive(&self) -> bool {
        self.call.lock().unwrap_or_else(|e| e.into_inner()).on
    }

    /// Regions run so far, in parallel and on the caller alone.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            parallel: self.parallel_regions.load(Ordering::Relaxed),
            solo: self.solo_regions.load(Ordering::Relaxed),
        }
    }

    /// The process-wide pool, sized by `CANDLE_NUM_THREADS` (which `--threads` sets), else
    /// `RAYON_NUM_THREADS`, else the number of CPUs this process may use.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let pool = Pool::new(default_threads());
            if std::env::var("RRM_POOL_ADAPT").is_ok_and(|v| v.trim() == "0") {
                pool.set_adaptive(false);
            }
            pool
        })
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
        let mut adapt = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let shape = adapt.slot(n);
        if shape.solo() {
            let inline = InRegion::enter();
            (0..n).for_each(&f);
            drop(inline);
            shape.ran_solo();
            self.solo_regions.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let start = Instant::now();
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
        let inline = InRegion::enter();
        let own_items = region.work();
        let own_time = start.elapsed();
        drop(inline);
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
        shape.ran_parallel(start.elapsed(), own_time, own_items, n);
        self.parallel_regions.fetch_add(1, Ordering::Relaxed);
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

/// While alive, this thread is inside a region (nested regions run inline); cleared on drop,
/// also when an item panics.
struct InRegion;

impl InRegion {
    fn enter() -> Self {
        IN_REGION.with(|c| c.set(true));
        InRegion
    }
}

impl Drop for InRegion {
    fn drop(&mut self) {
        IN_REGION.with(|c| c.set(false));
    }
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

/// Region shapes the pool keeps measurements for (a model has a handful of matmul shapes).
const SLOTS: usize = 32;
/// Parallel regions of one shape measured before deciding.
const SAMPLES: u32 = 16;
/// Helpers pay off when a parallel region takes at most this share of the caller-alone time.
const PAYOFF: f64 = 0.9;
/// Regions a shape runs on the caller alone after helpers did not pay off: the first time, and
/// at most (doubling on every probe that fails again).
const BACKOFF_MIN: u32 = 64;
const BACKOFF_MAX: u32 = 8192;

/// What the pool has measured, per region shape.
struct Adapt {
    on: bool,
    slots: [Slot; SLOTS],
}

impl Adapt {
    fn new(on: bool) -> Self {
        Self { on, slots: [Slot::default(); SLOTS] }
    }

    /// The slot of regions of `n` items (a new one replaces whatever shape hashed there).
    fn slot(&mut self, n: usize) -> &mut Slot {
        let on = self.on;
        let slot = &mut self.slots[n % SLOTS];
        if slot.n != n || !on {
            *slot = Slot { n, backoff: BACKOFF_MIN, ..Slot::default() };
        }
        slot
    }
}

/// One region shape: parallel (measuring) or on the caller alone for `solo_left` regions.
#[derive(Clone, Copy, Default, Debug)]
struct Slot {
    n: usize,
    /// Parallel regions measured since the last decision, and the sum of log(parallel time /
    /// caller-alone estimate) over them.
    samples: u32,
    log_ratio_sum: f64,
    solo_left: u32,
    /// The next solo stretch.
    backoff: u32,
}

impl Slot {
    fn solo(&self) -> bool {
        self.solo_left > 0
    }

    fn ran_solo(&mut self) {
        self.solo_left = self.solo_left.saturating_sub(1);
    }

    /// A parallel region took `took`; the caller ran `own_items` of its `n` items in
    /// `own_time`. Decides, every [`SAMPLES`] regions, whether helpers pay off for this shape.
    fn ran_parallel(&mut self, took: Duration, own_time: Duration, own_items: usize, n: usize) {
        if own_items == 0 || own_time.is_zero() {
            // The helpers took everything before the caller got one: they clearly help.
            self.log_ratio_sum += (1.0 / n.max(2) as f64).ln();
        } else {
            let alone = own_time.as_secs_f64() / own_items as f64 * n as f64;
            self.log_ratio_sum += (took.as_secs_f64().max(1e-9) / alone).ln();
        }
        self.samples += 1;
        if self.samples < SAMPLES {
            return;
        }
        let mean = self.log_ratio_sum / self.samples as f64;
        self.samples = 0;
        self.log_ratio_sum = 0.0;
        if mean > PAYOFF.ln() {
            self.solo_left = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        } else {
            self.backoff = BACKOFF_MIN;
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

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    #[test]
    fn a_shape_whose_helpers_do_not_pay_off_runs_alone_then_is_probed_again() {
        let mut slot = Slot { n: 8, backoff: BACKOFF_MIN, ..Slot::default() };
        // Helpers halve the time: stays parallel.
        for _ in 0..3 * SAMPLES {
            slot.ran_parallel(ms(0.5), ms(0.5), 4, 8);
            assert!(!slot.solo());
        }
        // A preempted helper makes every region slower than the caller alone would be.
        for _ in 0..SAMPLES {
            slot.ran_parallel(ms(3.0), ms(0.5), 7, 8);
        }
        assert_eq!(slot.solo_left, BACKOFF_MIN);
        for _ in 0..BACKOFF_MIN {
            assert!(slot.solo());
            slot.ran_solo();
        }
        assert!(!slot.solo(), "probed again after the back-off");
        // Still bad: the next stretch is twice as long, up to the cap.
        for _ in 0..SAMPLES {
            slot.ran_parallel(ms(3.0), ms(0.5), 7, 8);
        }
        assert_eq!(slot.solo_left, 2 * BACKOFF_MIN);
        slot.solo_left = 0;
        // Good again: back to parallel and the back-off resets.
        for _ in 0..SAMPLES {
            slot.ran_parallel(ms(0.5), ms(0.5), 4, 8);
        }
        assert!(!slot.solo());
        assert_eq!(slot.backoff, BACKOFF_MIN);
        // Helpers that took every item count as paying off.
        for _ in 0..SAMPLES {
            slot.ran_parallel(ms(0.5), Duration::ZERO, 0, 8);
        }
        assert!(!slot.solo());
    }

    #[test]
    fn straggling_helpers_send_a_shape_to_the_caller_alone() {
        let pool = Pool::new(2);
        let caller = std::thread::current().id();
        let busy = |d: Duration| {
            let t = Instant::now();
            while t.elapsed() < d {
                std::hint::spin_loop();
            }
        };
        for _ in 0..200 {
            pool.run(4, |_| {
                if std::thread::current().id() == caller {
                    busy(Duration::from_micros(50));
                } else {
                    // A helper that the OS preempts mid-item.
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
        let stats = pool.stats();
        assert_eq!(stats.parallel + stats.solo, 200);
        assert!(stats.solo >= 100, "{stats:?}");
        // Turned off, every region is parallel.
        assert!(pool.adaptive());
        pool.set_adaptive(false);
        assert!(!pool.adaptive());
        pool.run(4, |_| {});
        assert_eq!(pool.stats().solo, stats.solo);
    }

    #[test]
    fn a_single_thread_pool_runs_on_the_caller() {
        let pool = Pool::new(1);
        let me = std::thread::current().id();
        pool.run(10, |_| assert_eq!(std::thread::current().id(), me));
    }
}
