//! f32 matrix products through the `matrixmultiply` crate (blocked, packed,
//! AVX-512/AVX2+FMA micro-kernels picked at run time; single-threaded here: the
//! program runs one forward pass per core instead).

/// `y[t][n] = sum_k x[t*xs + xo + k] * w[n*ws + wo + k]` for t < rows, n < out, k < inner.
/// I.e. `y = X[:, xo..xo+inner] · W[:, wo..wo+inner]ᵀ` with row strides `xs`, `ws`;
/// `y` is dense `[rows x out]` and is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn matmul_xwt(
    x: &[f32],
    rows: usize,
    xs: usize,
    xo: usize,
    w: &[f32],
    out: usize,
    ws: usize,
    wo: usize,
    inner: usize,
    y: &mut [f32],
) {
    assert!(rows == 0 || (rows - 1) * xs + xo + inner <= x.len());
    assert!(out == 0 || (out - 1) * ws + wo + inner <= w.len());
    assert!(y.len() >= rows * out);
    if rows == 0 || out == 0 {
        return;
    }
    // SAFETY: bounds checked above; matrixmultiply reads A (m x k) with strides
    // (rsa, csa), B (k x n) with (rsb, csb) and writes C (m x n) with (rsc, csc).
    unsafe {
        matrixmultiply::sgemm(
            rows,
            inner,
            out,
            1.0,
            x.as_ptr().add(xo),
            xs as isize,
            1,
            w.as_ptr().add(wo),
            1,
            ws as isize,
            0.0,
            y.as_mut_ptr(),
            out as isize,
            1,
        );
    }
}

/// `y = A · B` for dense row-major A `[m x k]` (row stride `as_`), B `[k x n]`
/// (row stride `bs`), y `[m x n]` dense.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ab(a: &[f32], m: usize, as_: usize, b: &[f32], bs: usize, k: usize, n: usize, y: &mut [f32], ys: usize) {
    assert!(m == 0 || (m - 1) * as_ + k <= a.len());
    assert!(k == 0 || (k - 1) * bs + n <= b.len());
    assert!(m == 0 || (m - 1) * ys + n <= y.len());
    if m == 0 || n == 0 {
        return;
    }
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            as_ as isize,
            1,
            b.as_ptr(),
            bs as isize,
            1,
            0.0,
            y.as_mut_ptr(),
            ys as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xwt_matches_naive() {
        let (rows, inner, out) = (5, 7, 3);
        let xs = 10;
        let ws = 9;
        let x: Vec<f32> = (0..rows * xs).map(|i| (i % 13) as f32 - 6.0).collect();
        let w: Vec<f32> = (0..out * ws).map(|i| (i % 7) as f32 * 0.5).collect();
        let mut y = vec![0f32; rows * out];
        matmul_xwt(&x, rows, xs, 2, &w, out, ws, 1, inner, &mut y);
        for t in 0..rows {
            for n in 0..out {
                let r: f32 = (0..inner).map(|k| x[t * xs + 2 + k] * w[n * ws + 1 + k]).sum();
                assert_eq!(y[t * out + n], r);
            }
        }
    }
}
