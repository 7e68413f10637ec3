//! A thin, typed wrapper over `gemm::gemm` for row/column-strided f32 matrices.

#[derive(Clone, Copy)]
pub(crate) struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

/// dst[m×n] (+)= lhs[m×k] · rhs[k×n].
///
/// # Safety
/// Every pointer with its strides must address a valid matrix of the given size, and `dst` must
/// not alias `lhs` or `rhs` nor be written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.cs,
        dst.rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// `matmul` spread over rayon's threads in column (or else row) blocks, each a single-threaded
/// `gemm` call. `gemm`'s own `Parallelism::Rayon` leaves a core mostly idle on the thin
/// products of 1×1 convolutions (a few hundred channels by a 7×7 to 56×56 plane).
///
/// # Safety
/// As for `matmul`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_split(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
) {
    let threads = rayon::current_num_threads();
    // Below this a thread hand-off costs more than it saves.
    const MIN_MACS: usize = 1 << 17;
    if threads == 1 || m * n * k < MIN_MACS || m == 0 || n == 0 {
        return matmul(m, n, k, dst, accumulate, lhs, rhs, gemm::Parallelism::None);
    }
    #[derive(Clone, Copy)]
    struct Shared(MatMut, MatRef, MatRef);
    // SAFETY: each block below writes its own rows or columns of dst.
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    let s = Shared(dst, lhs, rhs);
    // Twice the thread count: an uneven finish (a core taken by another process) costs less.
    let parts = 2 * threads;
    if n >= 32 * parts {
        let chunk = n.div_ceil(parts).next_multiple_of(16);
        use rayon::prelude::*;
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|b| {
            let Shared(dst, lhs, rhs) = { s };
            let j0 = b * chunk;
            let w = chunk.min(n - j0);
            let dst = MatMut {
                ptr: dst.ptr.offset(j0 as isize * dst.cs),
                ..dst
            };
            let rhs = MatRef {
                ptr: rhs.ptr.offset(j0 as isize * rhs.cs),
                ..rhs
            };
            matmul(m, w, k, dst, accumulate, lhs, rhs, gemm::Parallelism::None);
        });
    } else {
        let chunk = m.div_ceil(parts).next_multiple_of(8);
        use rayon::prelude::*;
        (0..m.div_ceil(chunk)).into_par_iter().for_each(|b| {
            let Shared(dst, lhs, rhs) = { s };
            let i0 = b * chunk;
            let h = chunk.min(m - i0);
            let dst = MatMut {
                ptr: dst.ptr.offset(i0 as isize * dst.rs),
                ..dst
            };
            let lhs = MatRef {
                ptr: lhs.ptr.offset(i0 as isize * lhs.rs),
                ..lhs
            };
            matmul(h, n, k, dst, accumulate, lhs, rhs, gemm::Parallelism::None);
        });
    }
}
