//! bfloat16 GEMM for CPUs with AVX512-BF16: inputs rounded to bf16 (round to nearest even),
//! products accumulated in f32, f32 output. `_mm512_dpbf16_ps` does 32 multiply-adds per
//! instruction, twice an f32 FMA, which is what lets the big convolution GEMMs beat PyTorch's
//! float32 by more than Winograd alone does. Where the CPU also has AMX, the same packed
//! operands (in tile layout for the left matrix) go to `amx.rs`'s tile kernel instead:
//! `DEEPVIS_AMX=0` keeps the AVX512-BF16 kernels.
//!
//! Layouts: the left matrix (weights, fixed for a run) is converted and packed once into panels
//! of `MR` rows; the right matrix (activations) is converted and packed per call into panels of
//! `NR` columns. In both, the unit is a k-pair: one u32 holds the bf16 of k = 2p in its low half
//! and k = 2p + 1 in its high half, the operand layout of `vdpbf16ps`.

use crate::gemm::{Epilogue, MatMut, MatRef};
use crate::simd::lanes;
use crate::EngineError;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Rows per packed panel of the left matrix.
const MR: usize = 16;
/// Columns per packed panel of the right matrix (three 16-lane vectors).
const NR: usize = 48;
/// k-pairs per cache block: a 48-column panel of that depth (24 KB) stays in L1 while every
/// row panel of the left matrix streams past it.
const KC: usize = 128;
/// How many k-pairs (cache lines of a packed panel) ahead the kernel prefetches the weights.
const A_PREFETCH: usize = 64;
/// k-pairs per AMX tile product (a 64-byte tile row of u32 pairs); KC is a multiple of it.
const AMX_PAIRS: usize = 16;
/// k-pairs per cache block for AMX, whose products are 16 times faster: the result tiles are
/// read and written once per block, so deeper blocks; a 32-column slice of a block (64 KB)
/// still mostly stays in L1 while the row panels (up to 1 MB at 512 rows) stream from L2.
const KC_AMX: usize = 256;

/// The cache block depth of a layout.
fn block_pairs(amx: bool) -> usize {
    if amx {
        KC_AMX
    } else {
        KC
    }
}

type AlignedU32 = crate::aligned::Aligned<u32>;

/// k-pairs of a packed matrix of depth `k`: padded to whole tiles for AMX.
fn pairs(k: usize, amx: bool) -> usize {
    if amx {
        k.div_ceil(2 * AMX_PAIRS) * AMX_PAIRS
    } else {
        k.div_ceil(2)
    }
}

/// Arithmetic precision of the convolution GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// float32 throughout (the default).
    F32,
    /// Convolution GEMM inputs rounded to bfloat16 (8 significant bits), accumulated in float32:
    /// about twice the GEMM throughput, relative errors near 1e-2 of a layer's largest value.
    /// Needs AVX512-BF16.
    Bf16,
}

impl Precision {
    /// Parses "f32"/"fp32"/"float32" or "bf16"/"bfloat16".
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(Precision::F32),
            "bf16" | "bfloat16" => Some(Precision::Bf16),
            _ => None,
        }
    }

    /// "f32" or "bf16": how `parse`, the flags and the manifest spell it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    fn code(self) -> u8 {
        match self {
            Precision::F32 => 0,
            Precision::Bf16 => 1,
        }
    }
}

const UNSET: u8 = u8::MAX;
static PRECISION: AtomicU8 = AtomicU8::new(UNSET);

/// Whether this CPU runs the bf16 GEMM (AVX512-BF16 with AVX512F/BW/VL).
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: OnceLock<bool> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            is_x86_feature_detected!("avx512bf16")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sets the process-wide precision of the convolution GEMMs.
pub fn set_precision(p: Precision) -> Result<(), EngineError> {
    if p == Precision::Bf16 && !bf16_supported() {
        return Err(EngineError::Unsupported(
            "this CPU lacks AVX512-BF16; use --precision f32".into(),
        ));
    }
    PRECISION.store(p.code(), Ordering::Relaxed);
    Ok(())
}

/// The precision in effect: set by `set_precision`, else by the environment variable
/// `DEEPVIS_PRECISION` (f32 | bf16; bf16 is ignored with a warning on CPUs without it), else f32.
pub fn precision() -> Precision {
    let code = PRECISION.load(Ordering::Relaxed);
    if code != UNSET {
        return if code == 1 {
            Precision::Bf16
        } else {
            Precision::F32
        };
    }
    let wanted = std::env::var("DEEPVIS_PRECISION")
        .ok()
        .and_then(|v| Precision::parse(&v))
        .unwrap_or(Precision::F32);
    let p = if wanted == Precision::Bf16 && !bf16_supported() {
        eprintln!("deepvis: DEEPVIS_PRECISION=bf16 ignored: this CPU lacks AVX512-BF16");
        Precision::F32
    } else {
        wanted
    };
    // A concurrent set_precision wins over the environment.
    let _ = PRECISION.compare_exchange(UNSET, p.code(), Ordering::Relaxed, Ordering::Relaxed);
    precision()
}

/// bf16 bits of `x`, rounded to nearest even, with subnormals flushed to zero as
/// `vcvtneps2bf16` does, so that scalar and vector packing agree bit for bit.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline(always)]
pub(crate) fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// A left-hand matrix [m × k] converted to bf16 and packed: element (i, k) is in panel i / MR,
/// pair k / 2, lane i % MR; rows and the odd k beyond the matrix are zero.
///
/// For the AMX kernel (`amx`), the pairs are padded with zeros to a multiple of `AMX_PAIRS` and
/// each group of `AMX_PAIRS` pairs of a panel is a 16 × 16 block stored row by row (row i holds
/// its pairs): the operand layout of `tdpbf16ps`'s left tile.
pub(crate) struct PackedA {
    data: AlignedU32,
    m: usize,
    k: usize,
    amx: bool,
}

impl PackedA {
    /// Packs for the fastest kernel this CPU has.
    ///
    /// # Safety
    /// `a` with its strides must address a valid [m × k] matrix.
    pub unsafe fn new(m: usize, k: usize, a: MatRef) -> Self {
        PackedA::with_layout(m, k, a, crate::amx::enabled())
    }

    /// Packs for the AMX kernel if `amx` and the CPU has it (else for the others).
    ///
    /// # Safety
    /// As `new`.
    pub unsafe fn with_layout(m: usize, k: usize, a: MatRef, amx: bool) -> Self {
        // Tile instructions fault unless `enabled()` asked Linux for the tile state.
        let amx = amx && crate::amx::enabled();
        let kp = pairs(k, amx);
        let panels = m.div_ceil(MR);
        let mut storage = AlignedU32::zeros(panels * kp * MR);
        let data = &mut storage[..];
        let at = |i: usize, kk: usize| *a.ptr.offset(i as isize * a.rs + kk as isize * a.cs);
        for pi in 0..panels {
            for r in 0..MR.min(m - pi * MR) {
                let i = pi * MR + r;
                for p in 0..k.div_ceil(2) {
                    let hi = if 2 * p + 1 < k { at(i, 2 * p + 1) } else { 0.0 };
                    let value = at(i, 2 * p);
                    let idx = if amx {
                        let g = p / AMX_PAIRS * AMX_PAIRS;
                        a_index(panels, kp, pi, g, true) + r * AMX_PAIRS + (p - g)
                    } else {
                        a_index(panels, kp, pi, p, false) + r
                    };
                    data[idx] = pair(value, hi);
                }
            }
        }
        PackedA {
            data: storage,
            m,
            k,
            amx,
        }
    }

    /// Packs the row-major [rows × cols] matrix at `ptr`, or with `transpose` its transpose
    /// ([cols × rows]): how weight matrices are used forward and backward.
    ///
    /// # Safety
    /// `ptr` must address `rows · cols` valid floats.
    pub unsafe fn row_major(ptr: *const f32, rows: usize, cols: usize, transpose: bool) -> Self {
        if transpose {
            PackedA::new(
                cols,
                rows,
                MatRef {
                    ptr,
                    rs: 1,
                    cs: cols as isize,
                },
            )
        } else {
            PackedA::new(
                rows,
                cols,
                MatRef {
                    ptr,
                    rs: cols as isize,
                    cs: 1,
                },
            )
        }
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Where pair `p` of panel `pi` starts in a packed left matrix of `panels` panels and `kp`
/// pairs: KC-pair blocks outermost, then panels, then pairs. `compute` walks every panel of a
/// block in turn, so it reads the weights as one contiguous stream (which the prefetches in
/// the kernel run ahead of) instead of a jump from one panel to the next every KC pairs.
#[inline(always)]
fn a_index(panels: usize, kp: usize, pi: usize, p: usize, amx: bool) -> usize {
    let block = block_pairs(amx);
    let kb = p / block * block;
    let kc = block.min(kp - kb);
    kb * panels * MR + (pi * kc + (p - kb)) * MR
}

thread_local! {
    static PACKED_B: RefCell<AlignedU32> = RefCell::new(AlignedU32::default());
}

/// Runs `f` with this thread's packing buffer for the right-hand matrix.
fn with_packed_b<R>(f: impl FnOnce(&mut AlignedU32) -> R) -> R {
    PACKED_B.with(|c| match c.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut AlignedU32::default()),
    })
}

/// Packs columns [0, n) of the [k × n] matrix `b` into NR-column panels of k-pairs: zero beyond
/// k (up to `pairs(k, amx)`) and beyond n up to the end of n's last 16-column vector (what the
/// kernels read).
unsafe fn pack_b(k: usize, n: usize, b: MatRef, out: &mut AlignedU32, simd: bool, amx: bool) {
    let kp = pairs(k, amx);
    let panels = n.div_ceil(NR);
    #[cfg(target_arch = "x86_64")]
    if (simd || amx) && b.cs == 1 {
        // Every 16-column vector that holds a column below n is written whole (zeros past n);
        // the vectors past those are never read (kernels take cols.div_ceil(16) of them), so
        // the buffer is not cleared first: that memset was 1 % of a 224-px bf16 step.
        out.resize(panels * kp * NR);
        return pack_b_avx512(k, kp, n, b, &mut out[..]);
    }
    out.resize(0);
    out.resize(panels * kp * NR);
    let out = &mut out[..];
    let _ = simd;
    let at = |kk: usize, j: usize| *b.ptr.offset(kk as isize * b.rs + j as isize * b.cs);
    for jp in 0..panels {
        for p in 0..k.div_ceil(2) {
            let dst = &mut out[(jp * kp + p) * NR..][..NR];
            for (l, d) in dst.iter_mut().enumerate() {
                let j = jp * NR + l;
                if j >= n {
                    break;
                }
                let hi = if 2 * p + 1 < k { at(2 * p + 1, j) } else { 0.0 };
                *d = pair(at(2 * p, j), hi);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
unsafe fn pack_b_avx512(k: usize, kp: usize, n: usize, b: MatRef, out: &mut [u32]) {
    use std::arch::x86_64::*;
    let panels = n.div_ceil(NR);
    // Lane j of a pair row is bf16(row 2p)[j] | bf16(row 2p + 1)[j] << 16: one conversion of
    // both rows (`vcvtne2ps2bf16` puts row 2p's halves below row 2p + 1's), then one word
    // permutation interleaves them.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    // Pair rows outermost: each input row is read once, front to back, where walking a column
    // strip down all k rows touched a new cache line per load (im2col matrices of deep layers
    // are thousands of rows; a fifth of a bf16 im2col step was those loads).
    for p in 0..kp {
        let row = |kk: usize| b.ptr.offset(kk as isize * b.rs);
        let (lo_row, hi_row) = (2 * p < k, 2 * p + 1 < k);
        for jp in 0..panels {
            for v in 0..NR / 16 {
                let j0 = jp * NR + v * 16;
                if j0 >= n {
                    break;
                }
                let dst = out.as_mut_ptr().add((jp * kp + p) * NR + v * 16);
                if !lo_row {
                    _mm512_storeu_epi32(dst as *mut i32, _mm512_setzero_si512());
                    continue;
                }
                let mask: __mmask16 = lanes(n - j0);
                let lo = _mm512_maskz_loadu_ps(mask, row(2 * p).add(j0));
                let hi = if hi_row {
                    _mm512_maskz_loadu_ps(mask, row(2 * p + 1).add(j0))
                } else {
                    _mm512_setzero_ps()
                };
                let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_epi32(dst as *mut i32, _mm512_permutexvar_epi16(interleave, both));
            }
        }
    }
}

/// c[rows × cols] (+)= the product of an R-row slice of a packed panel (stride MR per pair) and
/// an NV-vector slice of a packed column panel (stride NR per pair), over `kc` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512<const R: usize, const NV: usize>(
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // The weights stream from memory (deep layers at small sizes: 16 to 64 columns meet
        // each 512 KB matrix once); the hardware prefetcher alone kept them to 12 GB/s.
        _mm_prefetch::<_MM_HINT_T0>(a.add(MR * A_PREFETCH) as *const i8);
        let bv: [__m512bh; NV] = std::array::from_fn(|v| {
            std::mem::transmute::<__m512i, __m512bh>(
                _mm512_loadu_epi32(b.add(16 * v) as *const i32),
            )
        });
        for (i, row) in acc.iter_mut().enumerate() {
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(i) as i32));
            for v in 0..NV {
                row[v] = _mm512_dpbf16_ps(row[v], av, bv[v]);
            }
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    for (i, row) in acc.iter().enumerate() {
        if i >= rows {
            break;
        }
        for (v, val) in row.iter().enumerate() {
            let j0 = 16 * v;
            if j0 >= cols {
                break;
            }
            let mask: __mmask16 = lanes(cols - j0);
            let dst = c.add(i * ldc + j0);
            let mut val = *val;
            if load_c {
                val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, dst));
            }
            _mm512_mask_storeu_ps(dst, mask, val);
        }
    }
}

/// `kernel_avx512` for 1 to 4 columns (`C`), with the rows in the lanes instead: one
/// `vdpbf16ps` per k-pair and column takes a whole line of the packed panel (16 rows) against
/// one broadcast pair of the column. The column-vector kernel would spend 16 instructions per
/// pair on a vector of mostly padding: the last of 49 tiles (VGG16's 28-px layers) cost as much
/// as 16. Four chains per column hide the instruction's latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn few_columns_avx512<const C: usize>(
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    const CHAINS: usize = 4;
    let mut acc = [[_mm512_setzero_ps(); CHAINS]; C];
    // (A macro rather than a closure, which might be compiled without this function's target
    // features and call every intrinsic.)
    macro_rules! step {
        ($p:expr, $u:expr) => {{
            let p = $p;
            _mm_prefetch::<_MM_HINT_T0>(a.add(MR * (p + A_PREFETCH)) as *const i8);
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_epi32(
                a.add(MR * p) as *const i32
            ));
            for (j, col) in acc.iter_mut().enumerate() {
                let bv = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *b.add(NR * p + j) as i32,
                ));
                col[$u] = _mm512_dpbf16_ps(col[$u], av, bv);
            }
        }};
    }
    let mut p = 0;
    while p + CHAINS <= kc {
        for u in 0..CHAINS {
            step!(p + u, u);
        }
        p += CHAINS;
    }
    while p < kc {
        step!(p, 0);
        p += 1;
    }
    let mask: __mmask16 = lanes(rows);
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(ldc as i32),
    );
    for (j, col) in acc.iter().enumerate() {
        let mut sum = _mm512_add_ps(_mm512_add_ps(col[0], col[1]), _mm512_add_ps(col[2], col[3]));
        let dst = c.add(j);
        if load_c {
            let old = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, dst);
            sum = _mm512_add_ps(sum, old);
        }
        _mm512_mask_i32scatter_ps::<4>(dst, mask, offsets, sum);
    }
}

/// The same computation as `kernel_avx512`, in scalar code that does what `vdpbf16ps` does per
/// lane: the odd product is added first, then the even one, each rounded to f32.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_scalar(
    r: usize,
    nv: usize,
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: MatMut,
    rows: usize,
    cols: usize,
    load_c: bool,
) {
    let lanes = 16 * nv;
    let mut acc = vec![0f32; r * lanes];
    for p in 0..kc {
        for i in 0..r {
            let av = *a.add(p * MR + i);
            let (a0, a1) = (from_bf16(av as u16), from_bf16((av >> 16) as u16));
            for j in 0..lanes {
                let bv = *b.add(p * NR + j);
                let (b0, b1) = (from_bf16(bv as u16), from_bf16((bv >> 16) as u16));
                let s = &mut acc[i * lanes + j];
                *s += a1 * b1;
                *s += a0 * b0;
            }
        }
    }
    for i in 0..rows.min(r) {
        for j in 0..cols.min(lanes) {
            let dst = c.ptr.offset(i as isize * c.rs + j as isize * c.cs);
            let v = acc[i * lanes + j];
            *dst = if load_c { *dst + v } else { v };
        }
    }
}

/// Multiplies row panels `panels` of `a` with the packed columns `bp` (n of them) into `c`
/// (whose first column is column 0 of `bp`).
#[allow(clippy::too_many_arguments)]
unsafe fn compute(
    a: &PackedA,
    panels: std::ops::Range<usize>,
    bp: &[u32],
    n: usize,
    c: MatMut,
    accumulate: bool,
    simd: bool,
    epi: Epilogue,
) {
    let kp = a.k.div_ceil(2);
    let vector = simd && c.cs == 1;
    for kb in (0..kp).step_by(KC) {
        let kc = KC.min(kp - kb);
        let load_c = accumulate || kb > 0;
        for jp in 0..n.div_ceil(NR) {
            let cols = NR.min(n - jp * NR);
            let bptr = bp.as_ptr().add((jp * kp + kb) * NR);
            for pi in panels.clone() {
                let apanel = a
                    .data
                    .as_ptr()
                    .add(a_index(a.m.div_ceil(MR), kp, pi, kb, false));
                let i0 = pi * MR;
                let at = |i: usize| MatMut {
                    ptr: c.ptr.offset(i as isize * c.rs + (jp * NR) as isize * c.cs),
                    ..c
                };
                // (Up to 8 columns measured no better: the scatter of the results weighs on
                // short depths, 32 pairs at VGG16's 64-channel layers.)
                #[cfg(target_arch = "x86_64")]
                if vector && cols <= 4 {
                    let rows = (a.m - i0).min(MR);
                    let (ldc, dst) = (c.rs as usize, at(i0).ptr);
                    match cols {
                        1 => few_columns_avx512::<1>(kc, apanel, bptr, dst, ldc, rows, load_c),
                        2 => few_columns_avx512::<2>(kc, apanel, bptr, dst, ldc, rows, load_c),
                        3 => few_columns_avx512::<3>(kc, apanel, bptr, dst, ldc, rows, load_c),
                        _ => few_columns_avx512::<4>(kc, apanel, bptr, dst, ldc, rows, load_c),
                    }
                    continue;
                }
                // A single vector of columns: all 16 rows at once. Wider: 8 rows by up to three
                // vectors (24 accumulators), so either way enough independent chains hide the
                // instruction's latency.
                let halves: &[(usize, usize)] = if cols <= 16 {
                    &[(0, 16)]
                } else {
                    &[(0, 8), (8, 8)]
                };
                for &(r0, r) in halves {
                    if i0 + r0 >= a.m {
                        break;
                    }
                    let rows = (a.m - i0 - r0).min(r);
                    let dst = at(i0 + r0);
                    let ap = apanel.add(r0);
                    #[cfg(target_arch = "x86_64")]
                    if vector {
                        let ldc = c.rs as usize;
                        match (cols.div_ceil(16), r) {
                            (1, _) => kernel_avx512::<16, 1>(
                                kc, ap, bptr, dst.ptr, ldc, rows, cols, load_c,
                            ),
                            (2, _) => kernel_avx512::<8, 2>(
                                kc, ap, bptr, dst.ptr, ldc, rows, cols, load_c,
                            ),
                            _ => kernel_avx512::<8, 3>(
                                kc, ap, bptr, dst.ptr, ldc, rows, cols, load_c,
                            ),
                        }
                        continue;
                    }
                    let _ = vector;
                    kernel_scalar(r, cols.div_ceil(16), kc, ap, bptr, dst, rows, cols, load_c);
                }
            }
            if kb + kc == kp {
                epilogue_panels(&epi, a, &panels, c, jp * NR, cols);
            }
        }
    }
}

/// `epi` over the rows of row panels `panels` and columns j0 .. j0 + cols of `c`, which the
/// last cache block has just written.
unsafe fn epilogue_panels(
    epi: &Epilogue,
    a: &PackedA,
    panels: &std::ops::Range<usize>,
    c: MatMut,
    j0: usize,
    cols: usize,
) {
    let (r0, r1) = (panels.start * MR, a.m.min(panels.end * MR));
    let block = MatMut {
        ptr: c.ptr.offset(r0 as isize * c.rs + j0 as isize * c.cs),
        ..c
    };
    epi.apply(block, r0, r1 - r0, cols);
}

/// `compute` on AMX tiles (`a` packed for them): 2 × 2 tiles of 16 × 16 at a time, so each
/// tile loaded feeds two products. Result tiles that the matrix covers whole are read and
/// written in place; the ragged ones at the edges go through a scratch tile.
#[cfg(target_arch = "x86_64")]
unsafe fn compute_amx(
    a: &PackedA,
    panels: std::ops::Range<usize>,
    bp: &[u32],
    n: usize,
    c: MatMut,
    accumulate: bool,
    epi: Epilogue,
) {
    use crate::amx::{self, CTile};
    let kp = pairs(a.k, true);
    let all = a.m.div_ceil(MR);
    let _tiles = amx::Tiles::configure();
    let mut scratch = [[[0f32; 256]; 2]; 2];
    // Over several cache blocks, the result tiles are reloaded and stored once per block. In
    // the output's rows (n floats apart, rarely a multiple of 16) every tile row straddles two
    // cache lines, which costs six times an aligned one: so they accumulate in an aligned
    // buffer instead and reach the output once at the end.
    let rows_here = (panels.end - panels.start) * MR;
    let ld = n.div_ceil(16) * 16
        + if n.div_ceil(16).is_multiple_of(64) {
            16
        } else {
            0
        };
    let mut acc_buf = AlignedU32::default();
    let acc = (kp > KC_AMX).then(|| {
        acc_buf = AMX_ACC.take();
        acc_buf.resize(rows_here * ld);
        acc_buf.as_mut_ptr() as *mut f32
    });
    for kb in (0..kp).step_by(KC_AMX) {
        let kc = KC_AMX.min(kp - kb);
        // The first block starts from zero, or from the output's values when accumulating
        // into it directly (the accumulator adds them at the end).
        let load = kb > 0 || (accumulate && acc.is_none());
        for jp in 0..n.div_ceil(NR) {
            let vectors = (NR.min(n - jp * NR)).div_ceil(16);
            let bpanel = bp.as_ptr().add((jp * kp + kb) * NR);
            // Column tiles outer: their slice of the block stays in L1 while the row panels
            // stream past from L2.
            let mut v0 = 0;
            while v0 < vectors {
                let nb = if v0 + 1 < vectors { 2 } else { 1 };
                let mut pi = panels.start;
                while pi < panels.end {
                    let ra = if pi + 1 < panels.end { 2 } else { 1 };
                    // Where each result tile lives, and its extent inside the matrix.
                    let mut tiles = [[CTile {
                        ptr: std::ptr::null_mut(),
                        stride: 64,
                    }; 2]; 2];
                    let mut ragged = [[None; 2]; 2];
                    for r in 0..ra {
                        let i0 = (pi + r) * MR;
                        let rows = MR.min(a.m - i0);
                        for v in 0..nb {
                            let j0 = jp * NR + (v0 + v) * 16;
                            if let Some(acc) = acc {
                                tiles[r][v] = CTile {
                                    ptr: acc.add((i0 - panels.start * MR) * ld + j0),
                                    stride: ld * 4,
                                };
                                continue;
                            }
                            let cols = 16.min(n - j0);
                            let origin = c.ptr.offset(i0 as isize * c.rs + j0 as isize * c.cs);
                            if rows == 16 && cols == 16 && c.cs == 1 {
                                tiles[r][v] = CTile {
                                    ptr: origin,
                                    stride: c.rs as usize * 4,
                                };
                                continue;
                            }
                            let s = &mut scratch[r][v];
                            ragged_tile(s, origin, c.rs, c.cs, rows, cols, load, false);
                            tiles[r][v].ptr = s.as_mut_ptr();
                            ragged[r][v] = Some((origin, rows, cols));
                        }
                    }
                    let a_tile = |r: usize| a.data.as_ptr().add(a_index(all, kp, pi + r, kb, true));
                    let b_tile = |v: usize| bpanel.add((v0 + v) * 16);
                    let groups = kc / AMX_PAIRS;
                    let t = |r: usize, v: usize| tiles[r][v];
                    match (ra, nb) {
                        (2, 2) => amx::block::<2, 2>(
                            groups,
                            [a_tile(0), a_tile(1)],
                            [b_tile(0), b_tile(1)],
                            NR,
                            [[t(0, 0), t(0, 1)], [t(1, 0), t(1, 1)]],
                            load,
                        ),
                        (2, _) => amx::block::<2, 1>(
                            groups,
                            [a_tile(0), a_tile(1)],
                            [b_tile(0)],
                            NR,
                            [[t(0, 0)], [t(1, 0)]],
                            load,
                        ),
                        (_, 2) => amx::block::<1, 2>(
                            groups,
                            [a_tile(0)],
                            [b_tile(0), b_tile(1)],
                            NR,
                            [[t(0, 0), t(0, 1)]],
                            load,
                        ),
                        _ => amx::block::<1, 1>(
                            groups,
                            [a_tile(0)],
                            [b_tile(0)],
                            NR,
                            [[t(0, 0)]],
                            load,
                        ),
                    }
                    for r in 0..ra {
                        for v in 0..nb {
                            if let Some((origin, rows, cols)) = ragged[r][v] {
                                let s = &mut scratch[r][v];
                                ragged_tile(s, origin, c.rs, c.cs, rows, cols, true, true);
                            }
                        }
                    }
                    pi += ra;
                }
                v0 += nb;
            }
            if acc.is_none() && kb + kc == kp {
                epilogue_panels(&epi, a, &panels, c, jp * NR, NR.min(n - jp * NR));
            }
        }
    }
    if let Some(acc) = acc {
        let rows = a.m.min(panels.end * MR) - panels.start * MR;
        let origin = c.ptr.offset((panels.start * MR) as isize * c.rs);
        for i in 0..rows {
            let from = acc.add(i * ld);
            let row = origin.offset(i as isize * c.rs);
            add_row(from, row, c.cs, n, accumulate);
            epi.apply(MatMut { ptr: row, ..c }, panels.start * MR + i, 1, n);
        }
        AMX_ACC.set(acc_buf);
    }
}

thread_local! {
    /// `compute_amx`'s result accumulator (reused: a fresh one would be paged in every call).
    static AMX_ACC: std::cell::Cell<AlignedU32> = std::cell::Cell::new(AlignedU32::default());
}

/// row[j] (+)= from[j] for j < n, row's elements `cs` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_row(from: *const f32, row: *mut f32, cs: isize, n: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    if cs != 1 {
        for j in 0..n {
            let dst = row.offset(j as isize * cs);
            *dst = if accumulate { *dst } else { 0.0 } + *from.add(j);
        }
        return;
    }
    for j0 in (0..n).step_by(16) {
        let mask: __mmask16 = lanes(n - j0);
        let mut v = _mm512_loadu_ps(from.add(j0));
        if accumulate {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, row.add(j0)));
        }
        _mm512_mask_storeu_ps(row.add(j0), mask, v);
    }
}

/// Copies the rows × cols corner of a 16 × 16 tile between the scratch tile `s` and the
/// matrix at `origin` (strides `rs`, `cs`): out to the matrix with `store`, else in (zeros
/// around it, and zeros throughout without `copy`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn ragged_tile(
    s: &mut [f32; 256],
    origin: *mut f32,
    rs: isize,
    cs: isize,
    rows: usize,
    cols: usize,
    copy: bool,
    store: bool,
) {
    use std::arch::x86_64::*;
    if !store {
        s.fill(0.0);
        if !copy {
            return;
        }
    }
    let mask: __mmask16 = lanes(cols);
    for i in 0..rows {
        let row = origin.offset(i as isize * rs);
        let tile_row = s.as_mut_ptr().add(16 * i);
        if cs == 1 {
            if store {
                _mm512_mask_storeu_ps(row, mask, _mm512_loadu_ps(tile_row));
            } else {
                _mm512_storeu_ps(tile_row, _mm512_maskz_loadu_ps(mask, row));
            }
            continue;
        }
        for j in 0..cols {
            let (m, t) = (row.offset(j as isize * cs), tile_row.add(j));
            if store {
                *m = *t;
            } else {
                *t = *m;
            }
        }
    }
}

/// c[m × n] (+)= a · b, with b [k × n] rounded to bf16 as it is packed. `par` spreads the work
/// over rayon's threads (by columns where there are enough, else by row panels); without it
/// the call stays on this thread.
///
/// # Safety
/// `b` and `c` with their strides must address valid matrices of the given sizes, `c` must not
/// alias `b`, and nobody else may write `c` during the call.
pub(crate) unsafe fn matmul(
    a: &PackedA,
    n: usize,
    b: MatRef,
    c: MatMut,
    accumulate: bool,
    par: bool,
    epi: Epilogue,
) {
    matmul_impl(a, n, b, c, accumulate, par, bf16_supported(), epi)
}

/// `matmul` with the vector kernels switched off or on (`simd` needs `bf16_supported()`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_impl(
    a: &PackedA,
    n: usize,
    b: MatRef,
    c: MatMut,
    accumulate: bool,
    par: bool,
    simd: bool,
    epi: Epilogue,
) {
    if a.m == 0 || n == 0 {
        return;
    }
    // The layout `a` was packed in picks the kernel: an AMX-packed `a` implies AMX is enabled,
    // so the other kernels never see one.
    let amx = a.amx;
    let compute = |a: &PackedA, panels, bp: &[u32], n, c, accumulate| {
        #[cfg(target_arch = "x86_64")]
        if amx {
            return compute_amx(a, panels, bp, n, c, accumulate, epi);
        }
        compute(a, panels, bp, n, c, accumulate, simd, epi)
    };
    let pack_b = |k, n, b, out: &mut AlignedU32| pack_b(k, n, b, out, simd, amx);
    let panels = a.m.div_ceil(MR);
    let threads = rayon::current_num_threads();
    if !par || threads == 1 {
        with_packed_b(|bp| {
            pack_b(a.k, n, b, bp);
            compute(a, 0..panels, &bp[..], n, c, accumulate);
        });
        return;
    }
    #[derive(Clone, Copy)]
    struct Shared<T>(T);
    // SAFETY: tasks read `b` and write disjoint parts of `c` (see the callers' contract).
    unsafe impl<T> Sync for Shared<T> {}
    unsafe impl<T> Send for Shared<T> {}
    let (bs, cs) = (Shared(b), Shared(c));
    if n.div_ceil(NR) >= 2 * threads {
        // Column ranges, each a whole number of panels.
        let chunk = n.div_ceil(NR).div_ceil(2 * threads) * NR;
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
            let (b, c) = (bs, cs);
            let (b, c) = (b.0, c.0);
            let j0 = t * chunk;
            let w = chunk.min(n - j0);
            let b = MatRef {
                ptr: b.ptr.offset(j0 as isize * b.cs),
                ..b
            };
            let c = MatMut {
                ptr: c.ptr.offset(j0 as isize * c.cs),
                ..c
            };
            with_packed_b(|bp| {
                pack_b(a.k, w, b, bp);
                compute(a, 0..panels, &bp[..], w, c, accumulate);
            });
        });
    } else {
        let mut bp = AlignedU32::default();
        pack_b(a.k, n, b, &mut bp);
        let bp = &bp[..];
        let mut per = panels.div_ceil(2 * threads).max(1);
        if amx {
            // An even number of row panels per task, so that the kernel pairs them all.
            per = per.next_multiple_of(2);
        }
        (0..panels.div_ceil(per)).into_par_iter().for_each(|t| {
            let c = cs;
            let p0 = t * per;
            compute(a, p0..(p0 + per).min(panels), bp, n, c.0, accumulate);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_lcg as lcg;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|kk| r(a[i * k + kk]) * r(b[kk * n + j]))
                    .sum::<f64>() as f32;
            }
        }
        c
    }

    /// Largest error of the kernel chosen by `simd` and `amx` against `naive`, relative to the
    /// product's largest element. Where `accumulate` is false, a per-row bias and ReLU are
    /// applied as the epilogue (forward convolutions use it so; they never accumulate).
    fn run(
        m: usize,
        n: usize,
        k: usize,
        simd: bool,
        amx: bool,
        par: bool,
        accumulate: bool,
    ) -> f32 {
        let mut seed = (m * 1000 + n * 10 + k) as u64;
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
        let init: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
        let bias: Vec<f32> = (0..m).map(|_| lcg(&mut seed)).collect();
        let epi = if accumulate {
            Epilogue::NONE
        } else {
            Epilogue {
                bias: Some(&bias),
                clamp: crate::layers::Clamp::Relu,
            }
        };
        let mut c = init.clone();
        unsafe {
            let pa = PackedA::with_layout(
                m,
                k,
                MatRef {
                    ptr: a.as_ptr(),
                    rs: k as isize,
                    cs: 1,
                },
                amx,
            );
            matmul_impl(
                &pa,
                n,
                MatRef {
                    ptr: b.as_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
                MatMut {
                    ptr: c.as_mut_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
                accumulate,
                par,
                simd,
                epi,
            );
        }
        let mut want = naive(m, n, k, &a, &b);
        if accumulate {
            want.iter_mut().zip(&init).for_each(|(w, i)| *w += i);
        } else {
            for (i, row) in want.chunks_mut(n).enumerate() {
                row.iter_mut().for_each(|w| *w = (*w + bias[i]).max(0.0));
            }
            // The ReLU cut some values and kept others, so both sides of it were checked.
            assert!(m * n < 8 || (want.contains(&0.0) && want.iter().any(|&w| w > 0.0)));
        }
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-20);
        c.iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0f32, f32::max)
    }

    const SIZES: [(usize, usize, usize); 13] = [
        (1, 1, 1),
        (24, 56, 100),
        (7, 6, 40),
        (20, 50, 300),
        (16, 51, 130),
        (3, 5, 7),
        (16, 16, 2),
        (17, 33, 31),
        (40, 49, 64),
        (8, 100, 257),
        (70, 16, 300),
        (33, 97, 600),
        (130, 70, 45),
    ];

    #[test]
    fn scalar_kernel_matches_naive_bf16_matmul() {
        for &(m, n, k) in &SIZES {
            for acc in [false, true] {
                let e = run(m, n, k, false, false, false, acc);
                assert!(e < 1e-5, "scalar {m}x{n}x{k} acc={acc}: {e}");
            }
        }
    }

    #[test]
    fn vector_kernel_matches_naive_bf16_matmul() {
        if !bf16_supported() {
            eprintln!("skipped: no AVX512-BF16");
            return;
        }
        for &(m, n, k) in &SIZES {
            for (acc, par) in [(false, false), (true, false), (false, true), (true, true)] {
                let e = run(m, n, k, true, false, par, acc);
                assert!(e < 1e-5, "avx512 {m}x{n}x{k} acc={acc} par={par}: {e}");
            }
        }
    }

    #[test]
    fn amx_kernel_matches_naive_bf16_matmul() {
        if !crate::amx::enabled() {
            eprintln!("skipped: no AMX (or DEEPVIS_AMX=0)");
            return;
        }
        // Beyond SIZES: several KC blocks (k = 600 pairs), ragged tiles on both edges, more
        // than one 48-column panel and odd row-panel counts.
        let extra = [(48, 200, 1500), (31, 145, 5), (64, 64, 4608), (27, 3, 512)];
        for &(m, n, k) in SIZES.iter().chain(&extra) {
            for (acc, par) in [(false, false), (true, false), (false, true), (true, true)] {
                let e = run(m, n, k, true, true, par, acc);
                assert!(e < 1e-5, "amx {m}x{n}x{k} acc={acc} par={par}: {e}");
            }
        }
    }

    #[test]
    fn vector_and_scalar_kernels_agree() {
        if !bf16_supported() {
            return;
        }
        for &(m, n, k) in &SIZES[..6] {
            let mut seed = 99;
            let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
            let out = |simd: bool| {
                let mut c = vec![0f32; m * n];
                unsafe {
                    let pa = PackedA::with_layout(
                        m,
                        k,
                        MatRef {
                            ptr: a.as_ptr(),
                            rs: k as isize,
                            cs: 1,
                        },
                        false,
                    );
                    matmul_impl(
                        &pa,
                        n,
                        MatRef {
                            ptr: b.as_ptr(),
                            rs: n as isize,
                            cs: 1,
                        },
                        MatMut {
                            ptr: c.as_mut_ptr(),
                            rs: n as isize,
                            cs: 1,
                        },
                        false,
                        false,
                        simd,
                        Epilogue::NONE,
                    );
                }
                c
            };
            let (v, s) = (out(true), out(false));
            let scale = s.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (x, y) in v.iter().zip(&s) {
                assert!((x - y).abs() <= 1e-6 * scale, "{m}x{n}x{k}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even one, upwards.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }
}
