//! CPU kernels for the llama forward pass, chosen at run time.
//!
//! Every x86-64 CPU gets vector kernels whatever flags the binary was built with (users install
//! with `cargo install`, which builds without `target-cpu=native`): each kernel is compiled for
//! its instruction set with `#[target_feature]` and picked once, at run time, by [`level`].
//!
//! - [`gemm`]: prefill. Weights are kept as f16 in panels of 16 output columns, the prompt rows
//!   are f32, accumulation is f32 — a blocked GEMM in which each weight panel is reused across
//!   all prompt rows (AVX2+FMA+F16C 6x16 and AVX-512 12x32 micro-kernels).
//! - [`pool`]: the threads, a pool whose caller never waits for a thread that has not started.
//!
//! `RRM_CPU_KERNELS=scalar|avx2|avx512` forces a level (for measuring the AVX2 path on an
//! AVX-512 machine, or for tests); a level the CPU lacks falls back to the best it has.

pub mod gemm;
pub mod ops;
pub mod pool;
pub mod q8;

use std::sync::OnceLock;

/// An instruction-set level the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust: any CPU; the reference the vector kernels are tested against.
    Scalar,
    /// AVX2 + FMA + F16C (every x86-64 CPU since ~2013-2015, e.g. AMD EPYC before Zen 4).
    Avx2,
    /// AVX-512 F/BW/VL with VNNI (Ice Lake and later Xeons, AMD Zen 4 and later).
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The best level this CPU supports.
    pub fn detect() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                return Level::Avx512;
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                return Level::Avx2;
            }
        }
        Level::Scalar
    }

    /// Parses `RRM_CPU_KERNELS`'s value.
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Level::Scalar),
            "avx2" => Some(Level::Avx2),
            "avx512" => Some(Level::Avx512),
            _ => None,
        }
    }
}

/// The level the kernels use: the best the CPU has, or `RRM_CPU_KERNELS` when it names one the
/// CPU supports (an unknown or unsupported value is ignored with a warning).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = Level::detect();
        match std::env::var("RRM_CPU_KERNELS") {
            Ok(v) if !v.trim().is_empty() && v.trim() != "auto" => match Level::parse(&v) {
                Some(l) if l <= best => l,
                Some(l) => {
                    tracing::warn!(
                        "RRM_CPU_KERNELS={v}: this CPU lacks {}, using {}",
                        l.name(),
                        best.name()
                    );
                    best
                }
                None => {
                    tracing::warn!(
                        "RRM_CPU_KERNELS={v} is not one of scalar, avx2, avx512; using {}",
                        best.name()
                    );
                    best
                }
            },
            _ => best,
        }
    })
}
