//! What the web app's benchmarks share: latency percentiles and the machine they ran on.

#![allow(dead_code)]

use std::collections::HashSet;
use std::time::Duration;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "  {name:<22} n={:<5} p50 {:>9}  p95 {:>9}  p99 {:>9}  max {:>9}",
        v.len(),
        ms(percentile(&v, 0.50)),
        ms(percentile(&v, 0.95)),
        ms(percentile(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default())
    );
}

pub fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let flags: HashSet<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "avx512f", "avx512_vnni", "amx_tile"]
        .into_iter()
        .filter(|f| flags.contains(f))
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{model} ({}), {cores} cores, load average {}",
        simd.join(" "),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}
