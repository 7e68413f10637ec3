//! A thin, typed wrapper over `gemm::gemm` for row/column-strided f32 matrices.

use crate::layers::{bias_act_row, Clamp};

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

/// What a GEMM does to its result rows once they are final, while the block is still in
/// cache: a convolution's bias (one per row) and ReLU or ReLU6. A separate pass over the output costs
/// a trip through memory, as much as a batch norm's (ResNet50's 1×1 convolutions with a
/// batch norm folded in: 0.35 ms for the GEMM, 0.2 more for the bias pass at 256 × 56²).
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Indexed by the row of the whole matrix.
    pub bias: Option<&'a [f32]>,
    pub clamp: Clamp,
}

impl Epilogue<'_> {
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        clamp: Clamp::None,
    };

    pub fn is_none(&self) -> bool {
        self.bias.is_none() && self.clamp == Clamp::None
    }

    /// v + bias[row], then the clamp, over `rows` × `cols` of `c`, whose first row is row
    /// `row0` of the matrix. The same operations as `layers::bias_act`, so results do not
    /// depend on where the bias was added.
    ///
    /// # Safety
    /// `c` must address a valid rows × cols matrix that nobody else writes during the call.
    pub unsafe fn apply(&self, c: MatMut, row0: usize, rows: usize, cols: usize) {
        if self.is_none() {
            return;
        }
        for i in 0..rows {
            let b = self.bias.map_or(0.0, |b| b[row0 + i]);
            let row = c.ptr.offset(i as isize * c.rs);
            if c.cs == 1 {
                bias_act_row(std::slice::from_raw_parts_mut(row, cols), b, self.clamp);
                continue;
            }
            for j in 0..cols {
                bias_act_row(
                    std::slice::from_mut(&mut *row.offset(j as isize * c.cs)),
                    b,
                    self.clamp,
                );
            }
        }
    }
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
    epi: Epilogue,
) {
    let threads = rayon::current_num_threads();
    // Below this a thread hand-off costs more than it saves.
    const MIN_MACS: usize = 1 << 17;
    if threads == 1 || m * n * k < MIN_MACS || m == 0 || n == 0 {
        matmul(m, n, k, dst, accumulate, lhs, rhs, gemm::Parallelism::None);
        epi.apply(dst, 0, m, n);
        return;
    }
    #[derive(Clone, Copy)]
    struct Shared<'a>(MatMut, MatRef, MatRef, Epilogue<'a>);
    // SAFETY: each block below writes its own rows or columns of dst.
    unsafe impl Send for Shared<'_> {}
    unsafe impl Sync for Shared<'_> {}
    let s = Shared(dst, lhs, rhs, epi);
    // Twice the thread count: an uneven finish (a core taken by another process) costs less.
    let parts = 2 * threads;
    if n >= 32 * parts {
        let chunk = n.div_ceil(parts).next_multiple_of(16);
        use rayon::prelude::*;
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|b| {
            let Shared(dst, lhs, rhs, epi) = { s };
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
            epi.apply(dst, 0, m, w);
        });
    } else {
        let chunk = m.div_ceil(parts).next_multiple_of(8);
        use rayon::prelude::*;
        (0..m.div_ceil(chunk)).into_par_iter().for_each(|b| {
            let Shared(dst, lhs, rhs, epi) = { s };
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
            epi.apply(dst, i0, h, n);
        });
    }
}
