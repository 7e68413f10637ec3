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
