//! The backward-pass ops of the reward classifier (`Backend::col2im`,
//! `avg_pool_backward`, activation derivatives, `mul_assign`) on the CPU backend:
//! each gradient op is checked as the adjoint of its forward op, ⟨f(x), y⟩ = ⟨x, fᵀ(y)⟩,
//! and bad shapes are errors.

use diffsteer::backend::cpu::CpuBackend;
use diffsteer::backend::{Activation, Backend, Conv2dGeometry};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::tensor::Tensor;
use diffsteer::Error;

fn random(b: &CpuBackend, shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    b.tensor(shape, normal_vec(seed, NoiseStream::Custom(1 << 57), n))
        .expect("tensor")
}

fn dot(b: &CpuBackend, x: &Tensor, y: &Tensor) -> f64 {
    let (x, y) = (b.to_host(x).expect("x"), b.to_host(y).expect("y"));
    x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum()
}

fn assert_adjoint(lhs: f64, rhs: f64, what: &str) {
    let err = (lhs - rhs).abs() / lhs.abs().max(rhs.abs());
    assert!(err < 1e-5, "{what}: ⟨f(x), y⟩ = {lhs}, ⟨x, fᵀ(y)⟩ = {rhs}");
}

#[test]
fn col2im_is_the_adjoint_of_the_convolution_for_every_geometry() {
    let b = CpuBackend::new();
    let geometries = [
        (3, Conv2dGeometry::symmetric(1, 1)),
        (3, Conv2dGeometry::symmetric(2, 1)),
        (2, Conv2dGeometry::symmetric(2, 0)),
        (
            3,
            Conv2dGeometry {
                stride: 2,
                pad_top: 0,
                pad_bottom: 1,
                pad_left: 1,
                pad_right: 0,
            },
        ),
    ];
    for (case, (k, g)) in geometries.into_iter().enumerate() {
        let (n, h, w, cin, cout) = (2, 9, 7, 3, 4);
        let x = random(&b, &[n, h, w, cin], 10 + case as u64);
        let weight = random(&b, &[k, k, cin, cout], 20 + case as u64);
        let y = b.conv2d(&x, &weight, None, &g).expect("conv");
        let dy = random(&b, y.shape(), 30 + case as u64);
        // Patch gradients: dy · Wᵀ with W as the [k·k·c_in, c_out] matrix.
        let w_host = b.to_host(&weight).expect("w");
        let patch = k * k * cin;
        let mut w_t = vec![0f32; patch * cout];
        for r in 0..patch {
            for c in 0..cout {
                w_t[c * patch + r] = w_host[r * cout + c];
            }
        }
        let w_t = b.tensor(&[cout, patch], w_t).expect("wt");
        let rows = y.len() / cout;
        let dy_rows = b
            .tensor(&[rows, cout], b.to_host(&dy).expect("dy"))
            .expect("rows");
        let dpatches = b.linear(&dy_rows, &w_t, None).expect("dpatches");
        let dx = b
            .col2im(&dpatches, [n, h, w, cin], (k, k), &g)
            .expect("col2im");
        assert_adjoint(
            dot(&b, &y, &dy),
            dot(&b, &x, &dx),
            &format!("col2im case {case}"),
        );
    }
}

#[test]
fn avg_pool_backward_is_the_adjoint_of_avg_pool() {
    let b = CpuBackend::new();
    for (case, (h, w, k)) in [(8, 8, 2), (9, 7, 2), (10, 11, 3)].into_iter().enumerate() {
        let x = random(&b, &[3, h, w, 5], 40 + case as u64);
        let y = b.avg_pool(&x, k).expect("pool");
        assert_eq!(y.shape(), &[3, h / k, w / k, 5]);
        let dy = random(&b, y.shape(), 50 + case as u64);
        let dx = b.avg_pool_backward(&dy, k, h, w).expect("backward");
        assert_eq!(dx.shape(), x.shape());
        assert_adjoint(
            dot(&b, &y, &dy),
            dot(&b, &x, &dx),
            &format!("pool case {case}"),
        );
    }
}

#[test]
fn activation_derivatives_and_products_are_exact() {
    let b = CpuBackend::new();
    let values = vec![-2.0f32, -0.5, 0.0, 0.25, 3.0];
    let mut relu = b.tensor(&[5], values.clone()).expect("t");
    let d = b
        .activation_assign(&mut relu, Activation::Relu, true)
        .expect("relu")
        .expect("derivative");
    assert_eq!(b.to_host(&relu).expect("h"), vec![0.0, 0.0, 0.0, 0.25, 3.0]);
    assert_eq!(b.to_host(&d).expect("h"), vec![0.0, 0.0, 0.0, 1.0, 1.0]);
    let mut silu = b.tensor(&[5], values.clone()).expect("t");
    let d = b
        .activation_assign(&mut silu, Activation::Silu, true)
        .expect("silu")
        .expect("derivative");
    for ((&x, y), dv) in values
        .iter()
        .zip(b.to_host(&silu).expect("h"))
        .zip(b.to_host(&d).expect("h"))
    {
        let s = 1.0 / (1.0 + (-(x as f64)).exp());
        assert!((y as f64 - x as f64 * s).abs() < 1e-6, "silu({x})");
        assert!(
            (dv as f64 - s * (1.0 + x as f64 * (1.0 - s))).abs() < 1e-6,
            "silu'({x})"
        );
    }
    let none = b
        .activation_assign(&mut silu, Activation::Silu, false)
        .expect("silu");
    assert!(none.is_none());
    let mut x = b.tensor(&[5], values.clone()).expect("t");
    let y = b.tensor(&[5], vec![2.0, 2.0, 5.0, -4.0, 0.5]).expect("t");
    b.mul_assign(&mut x, &y).expect("mul");
    assert_eq!(b.to_host(&x).expect("h"), vec![-4.0, -1.0, 0.0, -1.0, 1.5]);
}

#[test]
fn bad_shapes_are_errors() {
    let b = CpuBackend::new();
    let x = random(&b, &[2, 5, 5, 3], 1);
    let mut y = random(&b, &[2, 5, 5, 4], 2);
    let patches = random(&b, &[50, 27], 3);
    let input = [2, 5, 5, 3];
    // (the call, the op the error must name, what its message must say)
    let cases: Vec<(Result<(), Error>, &str, &str)> = vec![
        (
            b.avg_pool(&x, 6).map(|_| ()),
            "avg_pool",
            "a 6×6 window does not fit a 5×5 map",
        ),
        (
            b.avg_pool(&x, 0).map(|_| ()),
            "avg_pool",
            "a 0×0 window does not fit a 5×5 map",
        ),
        (
            b.avg_pool(&patches, 2).map(|_| ()),
            "avg_pool",
            "expected a 4-D NHWC tensor, got shape [50, 27]",
        ),
        (
            b.avg_pool_backward(&x, 2, 5, 5).map(|_| ()),
            "avg_pool_backward",
            "a 2×2 pooling of 5×5 gives 2×2, the gradient is 5×5",
        ),
        (
            b.col2im(&x, input, (3, 3), &Conv2dGeometry::symmetric(1, 1))
                .map(|_| ()),
            "col2im",
            "patch gradients of shape [2, 5, 5, 3]; an input of [2, 5, 5, 3] needs [50, 27]",
        ),
        // Padding 9 makes a 21 × 21 output: 2·21·21 = 882 patch rows, not 50.
        (
            b.col2im(&patches, input, (3, 3), &Conv2dGeometry::symmetric(1, 9))
                .map(|_| ()),
            "col2im",
            "needs [882, 27]",
        ),
        (
            b.col2im(&patches, input, (7, 7), &Conv2dGeometry::symmetric(1, 0))
                .map(|_| ()),
            "col2im",
            "a 7×7 kernel",
        ),
        (
            b.col2im(&patches, input, (3, 3), &Conv2dGeometry::symmetric(0, 1))
                .map(|_| ()),
            "col2im",
            "does not fit a 5×5 input",
        ),
        (
            b.mul_assign(&mut y, &x),
            "mul",
            "[2, 5, 5, 4] vs [2, 5, 5, 3]",
        ),
    ];
    for (i, (result, want_op, want_message)) in cases.into_iter().enumerate() {
        match result {
            Err(Error::Shape { op, message }) => {
                assert_eq!(op, want_op, "case {i}: {message}");
                assert!(
                    message.contains(want_message),
                    "case {i} ({op}): {message:?} does not say {want_message:?}"
                );
            }
            Err(other) => panic!("case {i}: expected a shape error from {want_op}, got {other}"),
            Ok(()) => panic!("case {i}: {want_op} accepted a bad shape"),
        }
    }
    // The right shapes pass: 2·5·5 output pixels of 3·3·3 patch entries.
    let dx = b
        .col2im(&patches, input, (3, 3), &Conv2dGeometry::symmetric(1, 1))
        .expect("valid col2im");
    assert_eq!(dx.shape(), input);
}
