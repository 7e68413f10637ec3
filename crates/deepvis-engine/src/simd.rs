//! Run-time choice of the vector instruction set for the engine's own kernels.
//!
//! The element-wise kernels, pools, depthwise convolution and Winograd transforms are plain
//! loops written once and compiled three times: for AVX-512, for AVX2 + FMA, and for the
//! portable baseline target. Which one runs is decided here, from what the CPU reports,
//! capped by `DEEPVIS_SIMD` or [`set_max_simd`] — so that tests can force the AVX2 and
//! portable paths on a machine that has AVX-512 and check them against the references.
//! (The `gemm` crate makes the same choice for its own GEMM kernels, and the bf16 GEMM is
//! chosen by `Precision`, on its own CPU check.)

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Instruction sets, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// The compilation target's baseline (SSE2 on x86-64): runs anywhere.
    Portable,
    /// AVX2 and FMA: 8 lanes.
    Avx2,
    /// AVX-512 F/VL/DQ/BW and FMA: 16 lanes.
    Avx512,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<SimdLevel> {
        [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .find(|l| l.name() == name)
    }
}

/// What the CPU supports.
pub fn detected_simd() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = is_x86_feature_detected!("fma");
            if fma
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bw")
            {
                return SimdLevel::Avx512;
            }
            if fma && is_x86_feature_detected!("avx2") {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Portable
    })
}

/// 0: not set yet (read `DEEPVIS_SIMD` on first use); otherwise 1 + the cap.
static CAP: AtomicU8 = AtomicU8::new(0);

fn encode(l: SimdLevel) -> u8 {
    1 + l as u8
}

fn decode(v: u8) -> SimdLevel {
    match v {
        1 => SimdLevel::Portable,
        2 => SimdLevel::Avx2,
        _ => SimdLevel::Avx512,
    }
}

/// Caps the instruction set the engine's kernels use (the CPU's own limit still applies).
pub fn set_max_simd(level: SimdLevel) {
    CAP.store(encode(level), Ordering::Relaxed);
}

/// The instruction set the engine's kernels use now.
pub fn simd_level() -> SimdLevel {
    let mut cap = CAP.load(Ordering::Relaxed);
    if cap == 0 {
        let level = match std::env::var("DEEPVIS_SIMD") {
            Ok(v) => SimdLevel::from_name(v.trim()).unwrap_or_else(|| {
                eprintln!("deepvis: DEEPVIS_SIMD={v} ignored: use avx512, avx2 or portable");
                SimdLevel::Avx512
            }),
            Err(_) => SimdLevel::Avx512,
        };
        cap = encode(level);
        // Another thread or `set_max_simd` may have set it first; theirs stands.
        let _ = CAP.compare_exchange(0, cap, Ordering::Relaxed, Ordering::Relaxed);
        cap = CAP.load(Ordering::Relaxed);
    }
    decode(cap).min(detected_simd())
}

/// `fn $name(args) -> ret` that runs `$generic(args)` compiled for the level [`simd_level`]
/// picks: the body is written once, as loops the compiler vectorizes for each instruction set.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident = $generic:ident ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$m])*
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn narrow($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                match $crate::simd::simd_level() {
                    // SAFETY: simd_level() never exceeds what the CPU reports.
                    $crate::simd::SimdLevel::Avx512 => return unsafe { wide($($arg),*) },
                    $crate::simd::SimdLevel::Avx2 => return unsafe { narrow($($arg),*) },
                    $crate::simd::SimdLevel::Portable => {}
                }
            }
            $generic($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// The first `count` of 16 lanes (all 16 from 16 on), as an AVX-512 mask (`__mmask16`): what
/// masked loads and stores take for the ragged end of a row.
#[inline(always)]
pub(crate) fn lanes(count: usize) -> u16 {
    if count >= 16 {
        0xffff
    } else {
        (1u16 << count) - 1
    }
}

/// Asks for the cache line holding `p` ahead of its use (a hint: never faults, may be
/// dropped; `p` need not point inside an allocation).
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault; SSE is baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
