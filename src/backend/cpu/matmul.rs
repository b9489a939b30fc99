//! A bounds-checked front to the `gemm` crate's SIMD kernels for strided f32
//! matrices. Every other CPU op that multiplies matrices goes through here.

use super::shared_out::SharedOut;

/// A strided read-only matrix: element (i, j) is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same memory.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst ← (accumulate ? dst : 0) + scale · lhs · rhs`, where `dst` is row-major
/// with `dst_row_stride` (≥ rhs.cols). Runs on the calling thread: callers split
/// work across rayon tasks themselves, which keeps results independent of the
/// thread count.
///
/// # Panics
/// If the shapes disagree or a matrix does not fit its slice; callers check shapes
/// and return errors before getting here, so a panic is a bug in this crate.
pub fn matmul(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: MatRef,
    rhs: MatRef,
    scale: f32,
    accumulate: bool,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul: inner dimensions differ");
    assert!(
        lhs.fits() && rhs.fits(),
        "matmul: operand does not fit its slice"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * dst_row_stride + n <= dst.len(),
        "matmul: destination does not fit its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: all three matrices were checked to lie inside their slices above, and
    // `dst` is borrowed mutably so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// [`matmul`] into a tile of a buffer that concurrent tasks share: rows `0..lhs.rows`
/// and columns `0..rhs.cols` of the row-major matrix that starts at element `offset`
/// of `out` with row stride `row_stride`.
///
/// # Safety
/// No other task may read or write this tile while the call runs (tasks writing
/// disjoint tiles of one buffer are fine). Bounds are checked here.
///
/// # Panics
/// As [`matmul`], and if the tile does not fit `out`.
pub(crate) unsafe fn matmul_tile(
    out: SharedOut,
    offset: usize,
    row_stride: usize,
    lhs: MatRef,
    rhs: MatRef,
    scale: f32,
    accumulate: bool,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul_tile: inner dimensions differ");
    assert!(
        lhs.fits() && rhs.fits(),
        "matmul_tile: operand does not fit its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= row_stride && offset + (m - 1) * row_stride + n <= out.len(),
        "matmul_tile: tile does not fit its buffer"
    );
    // SAFETY: the tile lies inside `out` (checked above); the caller guarantees
    // that nothing else touches it meanwhile, and `lhs`/`rhs` are shared borrows,
    // so they cannot be the buffer being written.
    unsafe {
        let dst = out.ptr().add(offset);
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    std::ptr::write_bytes(dst.add(i * row_stride), 0, n);
                }
            }
            return;
        }
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef, b: MatRef) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0f64;
                for p in 0..a.cols {
                    s += a.data[i * a.row_stride + p * a.col_stride] as f64
                        * b.data[p * b.row_stride + j * b.col_stride] as f64;
                }
                out[i * b.cols + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_products_match_a_naive_loop() {
        let a: Vec<f32> = (0..7 * 5)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
            .collect();
        let b: Vec<f32> = (0..5 * 9)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5)
            .collect();
        let am = MatRef::row_major(&a, 7, 5);
        let bm = MatRef::row_major(&b, 5, 9);
        let mut out = vec![0f32; 7 * 9];
        matmul(&mut out, 9, am, bm, 1.0, false);
        assert_eq!(out, naive(am, bm));

        // (bᵀ)ᵀ through a transposed view of a 9×5 copy.
        let mut bt = vec![0f32; 45];
        for i in 0..5 {
            for j in 0..9 {
                bt[j * 5 + i] = b[i * 9 + j];
            }
        }
        let btm = MatRef::row_major(&bt, 9, 5).t();
        let mut out2 = vec![1f32; 7 * 9];
        matmul(&mut out2, 9, am, btm, 2.0, true);
        let expected: Vec<f32> = naive(am, bm).iter().map(|v| 1.0 + 2.0 * v).collect();
        assert_eq!(out2, expected);
    }
}
