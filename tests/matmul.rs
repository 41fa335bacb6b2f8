//! Both matmul kernels against ndarray's `dot`, on shapes around their blocks (8 x 8 outputs
//! per thread, 64 x 64 per workgroup, quads of 4 columns, K in steps of 4 where rows allow vec4
//! loads or the texture kernel packs), ragged shapes at both load widths, long inner
//! dimensions, row windows, and the texture kernel's limits. The default context on lavapipe
//! runs the texture kernel (`matmul_tex.wgsl`); the `no-subgroups` one runs `matmul.wgsl`.

mod common;

use common::*;
use ndarray::{Array2, ArrayView2};
use softmax_ce::{Error, GpuContext};

/// Sizes around a quad (4), a thread's block (8), a workgroup's tile (64) and two tiles: every
/// multiple of 4 here takes the vec4 loads, every other size the scalar ones.
const AROUND_TILE: &[usize] = &[1, 3, 4, 5, 7, 8, 9, 33, 63, 64, 65, 129];
/// Inner dimensions: one step, scalar steps either side of one vec4 step, and longer ones.
const INNER: &[usize] = &[1, 3, 4, 5, 32, 33, 100];

/// The rigorous error bound of an f32 dot product of length `k`, in any summation order, with
/// or without fused multiply-adds: `(k + 1) u sum_l |a_il b_lj|`, with `u = eps / 2` the unit
/// roundoff (Higham, Accuracy and Stability, 3.1). A wrong element misses it by far.
fn assert_product(got: ArrayView2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, case: &str) {
    let want = a.mapv(f64::from).dot(&b.mapv(f64::from));
    let scale = a
        .mapv(|v| f64::from(v.abs()))
        .dot(&b.mapv(|v| f64::from(v.abs())));
    let k = a.ncols().max(1) as f64;
    assert_eq!(got.dim(), want.dim(), "{case}: shape");
    let mut bad = Vec::new();
    for ((idx, &g), (&w, &s)) in got.indexed_iter().zip(want.iter().zip(scale.iter())) {
        let bound = (k + 1.0) * 0.5 * f64::from(f32::EPSILON) * s;
        if (f64::from(g) - w).abs() > bound {
            bad.push(format!("{idx:?}: got {g:e}, want {w:e}, bound {bound:e}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{case}: {} of {} differ; first: {}",
        bad.len(),
        got.len(),
        bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    );
}

fn nn(gpu: &GpuContext, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
    let (da, db) = (gpu.upload(a.view()).unwrap(), gpu.upload(b.view()).unwrap());
    gpu.download(&gpu.matmul(&da, &db).unwrap()).unwrap()
}

fn tn(gpu: &GpuContext, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
    let (da, db) = (gpu.upload(a.view()).unwrap(), gpu.upload(b.view()).unwrap());
    gpu.download(&gpu.matmul_tn(&da, &db).unwrap()).unwrap()
}

#[test]
fn products_around_the_tile_match_ndarray() {
    for (name, gpu) in both_kernels() {
        products_around_the_tile(name, gpu);
    }
}

fn products_around_the_tile(name: &str, gpu: &GpuContext) {
    for &m in AROUND_TILE {
        for &n in AROUND_TILE {
            for &k in INNER {
                let seed = (m * 10_007 + n * 101 + k) as u64;
                let a = logits(m, k, 1.0, seed);
                let b = logits(k, n, 1.0, seed + 1);
                assert_product(
                    nn(gpu, &a, &b).view(),
                    a.view(),
                    b.view(),
                    &format!("{name} nn {m}x{k}x{n}"),
                );
                // A^T B with A stored k x m.
                let at = a.t().as_standard_layout().into_owned();
                assert_product(
                    tn(gpu, &at, &b).view(),
                    a.view(),
                    b.view(),
                    &format!("{name} tn {m}x{k}x{n}"),
                );
            }
        }
    }
}

/// The shapes of softmax-regression training on MNIST: a long inner dimension and few
/// outputs (784 x 100 times 100 x 10), and the forward product (100 x 784 times 784 x 10).
#[test]
fn training_shapes_match_ndarray() {
    let gpu = require_gpu!();
    let x = logits(100, 784, 1.0, 1);
    let theta = logits(784, 10, 0.1, 2);
    let g = logits(100, 10, 1.0, 3);
    assert_product(
        nn(gpu, &x, &theta).view(),
        x.view(),
        theta.view(),
        "X theta",
    );
    let xt = x.t().as_standard_layout().into_owned();
    assert_product(tn(gpu, &x, &g).view(), xt.view(), g.view(), "X^T G");
    // Inner dimension far longer than the outer ones.
    let a = logits(3, 20_000, 1.0, 4);
    let b = logits(20_000, 5, 1.0, 5);
    assert_product(nn(gpu, &a, &b).view(), a.view(), b.view(), "3x20000x5");
}

/// On a software adapter with subgroups of 8 the default context runs the texture kernel, so
/// that the tests above hold it to ndarray (and not the buffer kernel twice).
#[test]
fn lavapipe_runs_the_texture_kernel() {
    let gpu = require_gpu!();
    let info = gpu.adapter_info();
    let eight = info.subgroup_min_size == 8
        && info.subgroup_max_size == 8
        && gpu.device().features().contains(wgpu::Features::SUBGROUP);
    assert_eq!(
        gpu.texture_kernels(),
        gpu.is_software() && eight,
        "{info:?}"
    );
    for (name, gpu) in configs() {
        if name == "no-subgroups" {
            assert!(!gpu.texture_kernels());
        }
    }
}

/// Products whose packed operands reach the device's largest texture side, and one past it
/// (which runs the buffer kernel instead): op(A) is `m` texels high, B `n / 4` texels wide.
#[test]
fn products_at_the_texture_limit_match_ndarray() {
    let gpu = require_gpu!();
    let side = gpu.limits().max_texture_dimension_2d as usize;
    for m in [side, side + 1] {
        let a = logits(m, 5, 1.0, 20);
        let b = logits(5, 9, 1.0, 21);
        assert_product(
            nn(gpu, &a, &b).view(),
            a.view(),
            b.view(),
            &format!("{m}x5x9"),
        );
        let at = a.t().as_standard_layout().into_owned();
        assert_product(
            tn(gpu, &at, &b).view(),
            a.view(),
            b.view(),
            &format!("tn {m}x5x9"),
        );
    }
    for n in [4 * side, 4 * side + 1] {
        let a = logits(3, 6, 1.0, 22);
        let b = logits(6, n, 1.0, 23);
        assert_product(
            nn(gpu, &a, &b).view(),
            a.view(),
            b.view(),
            &format!("3x6x{n}"),
        );
    }
    // The inner dimension: B is 4 ceil(k / 4) texels high.
    for k in [side, side + 1] {
        let a = logits(2, k, 1.0, 24);
        let b = logits(k, 3, 1.0, 25);
        assert_product(
            nn(gpu, &a, &b).view(),
            a.view(),
            b.view(),
            &format!("2x{k}x3"),
        );
    }
}

/// Rows of a multiple of 64 floats (256 bytes) are packed by a buffer-to-texture copy
/// instead of the pack kernel: A at k = 192, B at n = 256, and both kinds side by side.
#[test]
fn products_with_copied_operands_match_ndarray() {
    for (name, gpu) in both_kernels() {
        for (m, k, n) in [(128, 192, 256), (70, 64, 9), (33, 20, 64), (64, 128, 128)] {
            let a = logits(m, k, 1.0, (m + k + n) as u64);
            let b = logits(k, n, 1.0, (m * k + n) as u64);
            let case = format!("{name} {m}x{k}x{n}");
            assert_product(nn(gpu, &a, &b).view(), a.view(), b.view(), &case);
            let at = a.t().as_standard_layout().into_owned();
            let case = format!("{name} tn {m}x{k}x{n}");
            assert_product(tn(gpu, &at, &b).view(), a.view(), b.view(), &case);
        }
    }
}

#[test]
fn a_square_product_matches_ndarray() {
    for (name, gpu) in both_kernels() {
        let a = logits(257, 300, 2.0, 6);
        let b = logits(300, 129, 2.0, 7);
        let case = format!("{name} 257x300x129");
        assert_product(nn(gpu, &a, &b).view(), a.view(), b.view(), &case);
    }
}

/// Products cut into row windows: `A B` windows A's and C's rows, `A^T B` windows the inner
/// dimension and accumulates, under 4 KiB bindings; at both load widths.
#[test]
fn windowed_products_match_ndarray() {
    for (name, gpu) in configs() {
        for (k, n) in [(7, 9), (8, 12)] {
            let a = logits(300, k, 1.0, 8);
            let b = logits(k, n, 1.0, 9);
            assert_product(
                nn(gpu, &a, &b).view(),
                a.view(),
                b.view(),
                &format!("{name} nn 300x{k}x{n}"),
            );
        }
        for (m, n) in [(13, 6), (12, 8)] {
            let x = logits(500, m, 1.0, 10);
            let g = logits(500, n, 1.0, 11);
            let xt = x.t().as_standard_layout().into_owned();
            assert_product(
                tn(gpu, &x, &g).view(),
                xt.view(),
                g.view(),
                &format!("{name} tn {m}x500x{n}"),
            );
        }
    }
}

#[test]
fn empty_inner_dimension_gives_zeros() {
    let gpu = require_gpu!();
    let a = Array2::<f32>::zeros((5, 0));
    let b = Array2::<f32>::zeros((0, 3));
    assert_eq!(nn(gpu, &a, &b), Array2::<f32>::zeros((5, 3)));
    let at = Array2::<f32>::zeros((0, 5));
    assert_eq!(tn(gpu, &at, &b), Array2::<f32>::zeros((5, 3)));
}

#[test]
fn products_keep_infinities_and_nan() {
    let gpu = require_gpu!();
    let a = ndarray::array![[1.0f32, 2.0], [f32::INFINITY, 0.0], [f32::NAN, 1.0]];
    let b = ndarray::array![[1.0f32, 0.0], [0.0, 1.0]];
    let c = nn(gpu, &a, &b);
    assert_eq!(c[[0, 0]], 1.0);
    assert_eq!(c[[1, 0]], f32::INFINITY);
    assert!(c[[1, 1]].is_nan(), "inf * 0 is NaN, as in ndarray");
    assert!(c[[2, 0]].is_nan());

    // The same through the vec4 loads, with the specials in the last quad of a row.
    let mut a = Array2::<f32>::zeros((3, 8));
    a[[0, 7]] = f32::INFINITY;
    a[[1, 4]] = f32::NAN;
    a[[2, 0]] = 1.0;
    let b = Array2::<f32>::eye(8);
    let c = nn(gpu, &a, &b);
    assert_eq!(c[[0, 7]], f32::INFINITY);
    assert!(c[[0, 0]].is_nan(), "inf * 0 is NaN, as in ndarray");
    assert!(c.row(1).iter().all(|v| v.is_nan()));
    assert_eq!(c.row(2), b.row(0));
}

#[test]
fn mismatched_shapes_are_errors() {
    let gpu = require_gpu!();
    let a = gpu.upload(logits(4, 3, 1.0, 1).view()).unwrap();
    let b = gpu.upload(logits(4, 2, 1.0, 2).view()).unwrap();
    let err = gpu.matmul(&a, &b).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "matmul", .. }), "{err}");
    assert!(err.to_string().contains("3 rows"), "{err}");
    let c = gpu.upload(logits(5, 2, 1.0, 3).view()).unwrap();
    let err = gpu.matmul_tn(&a, &c).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "matmul_tn",
                ..
            }
        ),
        "{err}"
    );
}

/// The operand that is bound whole must fit one binding; with 4 KiB bindings a 32 x 64
/// right-hand matrix (8 KiB) does not.
#[test]
fn an_operand_over_one_binding_is_too_large() {
    let Some((_, gpu)) = configs().into_iter().find(|(n, _)| *n == "windows") else {
        return;
    };
    let a = gpu.upload(logits(2, 32, 1.0, 1).view()).unwrap();
    let b = gpu.upload(logits(32, 64, 1.0, 2).view()).unwrap();
    let err = gpu.matmul(&a, &b).unwrap_err();
    assert!(matches!(err, Error::TooLarge { op: "matmul", .. }), "{err}");
}
