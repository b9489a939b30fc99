//! Products of small matrices whose right operand is already laid out for the
//! microkernel (row-major, a whole number of 8-wide vectors per row): the 36 point
//! products of a Winograd chunk. A general GEMM library packs both operands on every
//! call, which costs more than the product itself at these sizes (a few rows, 16 to
//! 128 columns); here the left operand is read in place through broadcasts and
//! the right one streams from L1. Measured alone on one core of the development
//! machine (m 56–784, k 32–128, n 32–64): about 110 GFLOP/s with AVX-512 and 107
//! with AVX2.

use super::matmul::{matmul, MatRef};

/// `dst[i·dst_stride + j] = Σ_p a[i·a_stride + p] · b[p·b_stride + j]` for
/// `i < m`, `j < n`, with `k` terms.
///
/// # Panics
/// If an operand does not fit its slice (a bug in the caller, which sizes them).
#[allow(clippy::too_many_arguments)]
pub fn small_matmul(
    dst: &mut [f32],
    dst_stride: usize,
    a: &[f32],
    a_stride: usize,
    b: &[f32],
    b_stride: usize,
    m: usize,
    k: usize,
    n: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_stride + n <= dst.len()
            && (m - 1) * a_stride + k <= a.len()
            && (k == 0 || (k - 1) * b_stride + n <= b.len()),
        "small_matmul: operand does not fit its slice"
    );
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(2 * LANES) && k > 0 && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present; the bounds were checked above.
        unsafe { avx512::product(dst, dst_stride, a, a_stride, b, b_stride, m, k, n) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(LANES)
        && k > 0
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
    {
        // SAFETY: AVX2 and FMA are present; the bounds were checked above.
        unsafe { avx2::product(dst, dst_stride, a, a_stride, b, b_stride, m, k, n) };
        return;
    }
    let lhs = MatRef {
        data: a,
        rows: m,
        cols: k,
        row_stride: a_stride,
        col_stride: 1,
    };
    let rhs = MatRef {
        data: b,
        rows: k,
        cols: n,
        row_stride: b_stride,
        col_stride: 1,
    };
    matmul(dst, dst_stride, lhs, rhs, 1.0, false);
}

const LANES: usize = 8;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::kernel::{product_with, Vector};

    pub struct Avx2;

    impl Vector for Avx2 {
        type V = __m256;
        const WIDTH: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m256 {
            _mm256_broadcast_ss(&*p)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
    }

    /// 6 rows × 2 vectors = 12 accumulators of the 16 registers, leaving room for
    /// the two right-operand vectors and a broadcast.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn product(
        dst: &mut [f32],
        dst_stride: usize,
        a: &[f32],
        a_stride: usize,
        b: &[f32],
        b_stride: usize,
        m: usize,
        k: usize,
        n: usize,
    ) {
        product_with::<Avx2, 6>(dst, dst_stride, a, a_stride, b, b_stride, m, k, n)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::kernel::{product_with, Vector};

    pub struct Avx512;

    impl Vector for Avx512 {
        type V = __m512;
        const WIDTH: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m512 {
            _mm512_set1_ps(*p)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
    }

    /// 8 rows × 2 vectors = 16 accumulators of the 32 registers, so each broadcast
    /// feeds two FMAs and each loaded row of `b` eight.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn product(
        dst: &mut [f32],
        dst_stride: usize,
        a: &[f32],
        a_stride: usize,
        b: &[f32],
        b_stride: usize,
        m: usize,
        k: usize,
        n: usize,
    ) {
        product_with::<Avx512, 8>(dst, dst_stride, a, a_stride, b, b_stride, m, k, n)
    }
}

/// The register-tiled product, written once over a vector type; each instruction
/// set instantiates it inside a function compiled for that set.
#[cfg(target_arch = "x86_64")]
mod kernel {
    /// The few vector operations the microkernel needs.
    pub trait Vector {
        type V: Copy;
        /// Floats per vector.
        const WIDTH: usize;
        unsafe fn zero() -> Self::V;
        unsafe fn load(p: *const f32) -> Self::V;
        /// One float broadcast to every lane.
        unsafe fn splat(p: *const f32) -> Self::V;
        /// `a·b + c`.
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        unsafe fn store(p: *mut f32, v: Self::V);
    }

    /// The whole product with register tiles of up to `ROWS` rows × 2 vectors;
    /// `n` is a whole number of vectors. Column panels are outermost: one panel of
    /// `b` (k × 2 vectors) stays in L1/L2 while every row block passes over it,
    /// however wide `b` is.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub unsafe fn product_with<S: Vector, const ROWS: usize>(
        dst: &mut [f32],
        dst_stride: usize,
        a: &[f32],
        a_stride: usize,
        b: &[f32],
        b_stride: usize,
        m: usize,
        k: usize,
        n: usize,
    ) {
        let (dst, a, b) = (dst.as_mut_ptr(), a.as_ptr(), b.as_ptr());
        let mut j = 0;
        while j < n {
            let two = n - j >= 2 * S::WIDTH;
            let mut i = 0;
            while i < m {
                let rows = ROWS.min(m - i);
                let (d, ai, bj) = (dst.add(i * dst_stride + j), a.add(i * a_stride), b.add(j));
                if two {
                    rows_tile::<S, 2>(rows, d, dst_stride, ai, a_stride, bj, b_stride, k);
                } else {
                    rows_tile::<S, 1>(rows, d, dst_stride, ai, a_stride, bj, b_stride, k);
                }
                i += rows;
            }
            j += if two { 2 * S::WIDTH } else { S::WIDTH };
        }
    }

    /// [`tile`] with the row count as a constant.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_tile<S: Vector, const V: usize>(
        rows: usize,
        d: *mut f32,
        dst_stride: usize,
        a: *const f32,
        a_stride: usize,
        b: *const f32,
        b_stride: usize,
        k: usize,
    ) {
        match rows {
            8 => tile::<S, 8, V>(d, dst_stride, a, a_stride, b, b_stride, k),
            7 => tile::<S, 7, V>(d, dst_stride, a, a_stride, b, b_stride, k),
            6 => tile::<S, 6, V>(d, dst_stride, a, a_stride, b, b_stride, k),
            5 => tile::<S, 5, V>(d, dst_stride, a, a_stride, b, b_stride, k),
            4 => tile::<S, 4, V>(d, dst_stride, a, a_stride, b, b_stride, k),
            3 => tile::<S, 3, V>(d, dst_stride, a, a_stride, b, b_stride, k),
            2 => tile::<S, 2, V>(d, dst_stride, a, a_stride, b, b_stride, k),
            _ => tile::<S, 1, V>(d, dst_stride, a, a_stride, b, b_stride, k),
        }
    }

    /// One `R × V` vectors block of the output over all `k` terms.
    #[inline(always)]
    unsafe fn tile<S: Vector, const R: usize, const V: usize>(
        dst: *mut f32,
        dst_stride: usize,
        a: *const f32,
        a_stride: usize,
        b: *const f32,
        b_stride: usize,
        k: usize,
    ) {
        let mut acc = [[S::zero(); V]; R];
        for p in 0..k {
            let mut bv = [S::zero(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = S::load(b.add(p * b_stride + v * S::WIDTH));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::splat(a.add(r * a_stride + p));
                for (x, y) in row.iter_mut().zip(&bv) {
                    *x = S::fmadd(av, *y, *x);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                S::store(dst.add(r * dst_stride + v * S::WIDTH), *x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_for_every_row_and_column_remainder() {
        // (m, k, n, b_stride): b_stride > n is a column panel of a wider matrix.
        for &(m, k, n, b_stride) in &[
            (1, 1, 8, 8),
            (7, 5, 24, 24),
            (13, 32, 40, 40),
            (6, 64, 64, 64),
            (3, 3, 5, 5),
            (11, 17, 16, 16),
            (9, 64, 32, 64),
            (8, 12, 16, 40),
            (5, 7, 5, 13),
        ] {
            let (a_stride, dst_stride) = (k + 3, n + 5);
            let a: Vec<f32> = (0..m * a_stride)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.125)
                .collect();
            let b: Vec<f32> = (0..k * b_stride)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.25)
                .collect();
            let mut dst = vec![f32::NAN; m * dst_stride];
            small_matmul(&mut dst, dst_stride, &a, a_stride, &b, b_stride, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k)
                        .map(|p| a[i * a_stride + p] * b[p * b_stride + j])
                        .sum();
                    let got = dst[i * dst_stride + j];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "({m},{k},{n}) at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
