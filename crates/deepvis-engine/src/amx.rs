//! Intel AMX tiles for the bf16 GEMM. One `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a
//! 32 × 16 one into a 16 × 16 f32 tile: 8,192 multiply-adds, 256 times a `vdpbf16ps`, and
//! one issues every 16 cycles. On the 2-core development machine (a Xeon with AMX) a tight
//! loop of them runs at 3.8 TFLOP/s per core, against about 0.2 for float32 FMAs, so where the
//! CPU has AMX the convolution GEMMs stop being the bulk of a bf16 step.
//!
//! Rust's AMX intrinsics are unstable, so the handful of instructions are inline assembly. The
//! tile registers are named in the templates (the compiler never allocates them): C tiles are
//! tmm0–tmm3 (row tile r, column tile v at 2r + v), row tiles of A tmm4–tmm5, column tiles of
//! B tmm6–tmm7. Linux grants a process the tile state only on request (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`); without the grant the first tile instruction would fault.

/// Whether the bf16 GEMM runs on AMX tiles: the CPU has AMX-TILE and AMX-BF16 (and the
/// AVX512-BF16 that packing uses), Linux granted the tile state, and the environment variable
/// `DEEPVIS_AMX` is not `0` (which keeps the AVX512-BF16 kernels, e.g. to compare the two).
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("DEEPVIS_AMX").map_or(true, |v| v.trim() != "0")
            && crate::bf16_supported()
            && detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it fails cleanly on kernels without
    // AMX support (before 5.16) and then tiles are not used.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
fn detect() -> bool {
    false
}

/// The tile configuration of this thread while alive: all eight tiles 16 rows × 64 bytes.
/// Dropping it releases the tile state, so that a thread that no longer multiplies does not
/// carry 8 KB of tile registers through every context switch.
pub(crate) struct Tiles(());

#[cfg(target_arch = "x86_64")]
impl Tiles {
    /// # Safety
    /// `enabled()` must be true. No other `Tiles` may be alive on this thread.
    pub unsafe fn configure() -> Tiles {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1; // palette 1
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64; // bytes per row
            cfg.0[48 + t] = 16; // rows
        }
        std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        Tiles(())
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `configure`, which only runs where AMX is enabled.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A 16 × 16 f32 tile of the result: its first element and the byte stride between its rows.
#[derive(Clone, Copy)]
pub(crate) struct CTile {
    pub ptr: *mut f32,
    pub stride: usize,
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_load {
    ($tmm:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tileloadd ", $tmm, ", [{p} + {s}*1]"),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, readonly)
        )
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! for_c_tile {
    ($index:expr, $mac:ident $(, $arg:expr)*) => {
        match $index {
            0 => $mac!("tmm0" $(, $arg)*),
            1 => $mac!("tmm1" $(, $arg)*),
            2 => $mac!("tmm2" $(, $arg)*),
            _ => $mac!("tmm3" $(, $arg)*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_zero {
    ($tmm:literal) => {
        std::arch::asm!(concat!("tilezero ", $tmm), options(nostack, nomem))
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_store {
    ($tmm:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], ", $tmm),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack)
        )
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! dot {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!("tdpbf16ps ", $c, ", ", $a, ", ", $b),
            options(nostack, nomem)
        )
    };
}

/// c[r][v] (+)= Σ over `groups` groups g of A_r[g] · B_v[g], for RA row tiles and NB column
/// tiles (1 or 2 each). Row tile r's group g is the 16 × 16-pair block at `a[r] + 256 g` (rows
/// 64 bytes apart); column tile v's group g starts at `b[v] + 16 g · ldb` with its pair rows
/// `ldb` u32 apart. With `load`, the tiles of `c` hold values to add to.
///
/// # Safety
/// A `Tiles` must be alive on this thread; every pointer must address the whole tiles read or
/// written.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn block<const RA: usize, const NB: usize>(
    groups: usize,
    a: [*const u32; RA],
    b: [*const u32; NB],
    ldb: usize,
    c: [[CTile; NB]; RA],
    load: bool,
) {
    for (r, row) in c.iter().enumerate() {
        for (v, t) in row.iter().enumerate() {
            if load {
                for_c_tile!(2 * r + v, tile_load, t.ptr, t.stride);
            } else {
                for_c_tile!(2 * r + v, tile_zero);
            }
        }
    }
    let b_stride = ldb * 4;
    for g in 0..groups {
        // Each load just before the first product that needs it, so that loads overlap the
        // products already issued (measured 2.7 against 1.0 TFLOP/s with all loads first).
        tile_load!("tmm4", a[0].add(256 * g), 64usize);
        tile_load!("tmm6", b[0].add(16 * g * ldb), b_stride);
        dot!("tmm0", "tmm4", "tmm6");
        if NB == 2 {
            tile_load!("tmm7", b[NB - 1].add(16 * g * ldb), b_stride);
            dot!("tmm1", "tmm4", "tmm7");
        }
        if RA == 2 {
            tile_load!("tmm5", a[RA - 1].add(256 * g), 64usize);
            dot!("tmm2", "tmm5", "tmm6");
            if NB == 2 {
                dot!("tmm3", "tmm5", "tmm7");
            }
        }
    }
    for (r, row) in c.iter().enumerate() {
        for (v, t) in row.iter().enumerate() {
            for_c_tile!(2 * r + v, tile_store, t.ptr, t.stride);
        }
    }
}
