//! Half precision: every op with an `f16` kernel held to the CPU reference on `f16` data, in
//! every kernel configuration, on rows around every workgroup and vector size, with the
//! adversarial rows an `f16` can hold; wrapped `f16` buffers; the error where the device has
//! no `SHADER_F16`.

mod common;

use common::*;
use ndarray::{Array1, Array2, ArrayView2};
use rand::Rng;
use softmax_ce::{CrossEntropyOptions, DType, Element, GpuContext, Reduction, cpu, f16};

/// Widths around the vector width (4), the subgroup (8, 32), the workgroups (32 to 256) and a
/// long row.
const WIDTHS: [usize; 18] = [
    1, 2, 3, 4, 5, 7, 8, 31, 33, 63, 64, 65, 127, 128, 129, 257, 1000, 1025,
];
const ROWS: [usize; 2] = [1, 37];

/// An `f16` output against the reference's value rounded once to `f16`: the kernels compute in
/// `f32` and round once, so they may land one `f16` step (2^-10 relative) from the reference,
/// never more; 2^-24 absolute is the subnormal step.
const HALF_REL: f32 = 2.0 * 9.8e-4;
const HALF_ABS: f32 = 2.0 * 6.0e-8;

/// Rows an `f16` can hold that break naive softmax: `+-6e4` (near `f16::MAX` = 65504), all
/// `f16::MAX`, `-inf` entries, all `-inf` (NaN softmax), equal rows, one dominant entry,
/// `+inf` (NaN), and plain values. Row `i` is case `i % 9`.
fn adversarial_f16(rows: usize, cols: usize, seed: u64) -> Array2<f16> {
    let mut r = rng(seed);
    let x = Array2::from_shape_fn((rows, cols), |(i, j)| {
        let v: f32 = r.random_range(-3.0..3.0);
        match i % 9 {
            0 => v * 2e4,
            1 => 65504.0,
            2 => {
                if v > 0.0 {
                    6e4
                } else {
                    -6e4
                }
            }
            3 => {
                if j == cols / 2 {
                    0.5
                } else if v > 0.0 {
                    f32::NEG_INFINITY
                } else {
                    v
                }
            }
            4 => f32::NEG_INFINITY,
            5 => 7.0,
            6 => {
                if j == cols - 1 {
                    6e4
                } else {
                    -6e4
                }
            }
            7 if j == 0 => f32::INFINITY,
            _ => v,
        }
    });
    x.mapv(f16::from_f32)
}

fn widen(x: ArrayView2<f16>) -> Array2<f32> {
    x.mapv(f16::to_f32)
}

/// An `f16` output against the CPU reference's own `f16` result (computed in f64, rounded
/// once): the kernel computes in f32 and rounds once, at most one `f16` step away.
fn check_matrix(gpu: &GpuContext, got: &softmax_ce::GpuMatrix, want: Array2<f16>, case: &str) {
    assert_eq!(got.dtype(), DType::F16, "{case}: output precision");
    let half = gpu.download_f16(got).unwrap();
    let widened = gpu.download(got).unwrap();
    let exact = format!("{case}: download widens exactly");
    assert_close(widen(half.view()).view(), widened.view(), 0.0, 0.0, &exact);
    assert_close(
        widened.view(),
        widen(want.view()).view(),
        HALF_ABS,
        HALF_REL,
        case,
    );
}

#[test]
fn softmax_log_softmax_and_logsumexp_of_f16_match_the_reference() {
    require_gpu!();
    for (name, gpu) in configs() {
        for rows in ROWS {
            for cols in WIDTHS {
                let x = adversarial_f16(rows, cols, cols as u64);
                let on = gpu.upload_f16(x.view()).unwrap();
                assert_eq!(on.dtype(), DType::F16);
                let case = format!("{name} {rows}x{cols}");
                check_matrix(
                    gpu,
                    &gpu.softmax(&on).unwrap(),
                    cpu::softmax(x.view()).unwrap(),
                    &format!("{case} softmax"),
                );
                check_matrix(
                    gpu,
                    &gpu.log_softmax(&on).unwrap(),
                    cpu::log_softmax(x.view()).unwrap(),
                    &format!("{case} log_softmax"),
                );
                // Log-sum-exp is f32, from the same (exactly widened) values.
                assert_close(
                    gpu.download_vector(&gpu.logsumexp(&on).unwrap())
                        .unwrap()
                        .view(),
                    cpu::logsumexp(x.view()).unwrap().view(),
                    LOSS_ABS,
                    LOSS_REL,
                    &format!("{case} logsumexp"),
                );
            }
        }
    }
}

#[test]
fn cross_entropy_of_f16_logits_matches_the_reference_with_every_option() {
    require_gpu!();
    for (name, gpu) in configs() {
        for rows in ROWS {
            for cols in WIDTHS {
                // Rows of finite logits: an adversarial row with -inf or +inf makes every mean
                // NaN, which the f32 tests already cover; here the f16 values are the point.
                let x = adversarial_f16(rows, cols, 3 + cols as u64).mapv(|v| {
                    if v.is_finite() {
                        v
                    } else {
                        f16::from_f32(-1.5)
                    }
                });
                let on = gpu.upload_f16(x.view()).unwrap();
                let y = labels(rows, cols, 3, cols as u64);
                let gy = gpu.upload_labels(&y).unwrap();
                let w = Array1::from_shape_fn(cols, |j| 0.5 + (j % 5) as f32 * 0.25);
                for opts in [
                    CrossEntropyOptions::default(),
                    CrossEntropyOptions::default().reduction(Reduction::None),
                    CrossEntropyOptions::default()
                        .reduction(Reduction::Sum)
                        .weight(w.clone())
                        .label_smoothing(0.1)
                        .z_loss(1e-4),
                ] {
                    let case = format!("{name} {rows}x{cols} {:?}", opts.reduction);
                    let (loss, grad) = gpu.cross_entropy_with_grad(&on, &gy, &opts).unwrap();
                    let want = cpu::cross_entropy(x.view(), &y, &opts).unwrap();
                    assert_loss(gpu.download_loss(&loss).unwrap(), want.clone(), &case);
                    check_matrix(
                        gpu,
                        &grad,
                        cpu::cross_entropy_grad(x.view(), &y, &opts).unwrap(),
                        &format!("{case} gradient"),
                    );
                    let loss = gpu.cross_entropy(&on, &gy, &opts).unwrap();
                    assert_loss(gpu.download_loss(&loss).unwrap(), want, &case);
                }
                // The per-row upstream form.
                let none = CrossEntropyOptions::default().reduction(Reduction::None);
                let up = Array1::from_shape_fn(rows, |i| 0.5 - i as f32 / 16.0);
                let g_up = gpu.upload_vector(up.view()).unwrap();
                let (_, grad) = gpu
                    .cross_entropy_with_grad_upstream(&on, &gy, &none, &g_up)
                    .unwrap();
                check_matrix(
                    gpu,
                    &grad,
                    cpu::cross_entropy_grad_upstream(x.view(), &y, &none, up.view()).unwrap(),
                    &format!("{name} {rows}x{cols} upstream gradient"),
                );
            }
        }
    }
}

#[test]
fn soft_targets_and_backward_passes_of_f16_match_the_reference() {
    require_gpu!();
    for (name, gpu) in configs() {
        for rows in ROWS {
            for cols in WIDTHS {
                let case = format!("{name} {rows}x{cols}");
                let x = logits(rows, cols, 4.0, cols as u64).mapv(f16::from_f32);
                let on = gpu.upload_f16(x.view()).unwrap();
                // Probability targets, rounded to f16 (the reference gets the same values).
                let t = cpu::softmax(logits(rows, cols, 2.0, 7).view())
                    .unwrap()
                    .mapv(f16::from_f32);
                let opts = CrossEntropyOptions::default().label_smoothing(0.05);
                let (loss, grad) = gpu
                    .cross_entropy_soft_with_grad(&on, &gpu.upload_f16(t.view()).unwrap(), &opts)
                    .unwrap();
                assert_loss(
                    gpu.download_loss(&loss).unwrap(),
                    cpu::cross_entropy_soft(x.view(), t.view(), &opts).unwrap(),
                    &format!("{case} soft"),
                );
                check_matrix(
                    gpu,
                    &grad,
                    cpu::cross_entropy_soft_grad(x.view(), t.view(), &opts).unwrap(),
                    &format!("{case} soft gradient"),
                );
                // Backward passes: probabilities and upstream gradients in f16.
                let p = cpu::softmax(x.view()).unwrap();
                let lp = cpu::log_softmax(x.view()).unwrap();
                let dy = logits(rows, cols, 1.0, 99).mapv(f16::from_f32);
                let dyf = widen(dy.view());
                let g_dy = gpu.upload_f16(dy.view()).unwrap();
                check_matrix(
                    gpu,
                    &gpu.softmax_backward(&gpu.upload_f16(p.view()).unwrap(), &g_dy)
                        .unwrap(),
                    cpu::softmax_backward(p.view(), dy.view()).unwrap(),
                    &format!("{case} softmax_backward"),
                );
                let want = cpu::log_softmax_backward(lp.view(), dy.view()).unwrap();
                let got = gpu
                    .log_softmax_backward(&gpu.upload_f16(lp.view()).unwrap(), &g_dy)
                    .unwrap();
                // dy - exp(lp) * sum(dy): a difference, whose f16 rounding is relative to its
                // terms, not to the result (cancellation); one f16 step of sum(dy) is the bound.
                let scale = dyf
                    .rows()
                    .into_iter()
                    .map(|r| r.sum().abs())
                    .fold(1.0, f32::max);
                assert_close(
                    gpu.download(&got).unwrap().view(),
                    widen(want.view()).view(),
                    HALF_REL * scale,
                    HALF_REL,
                    &format!("{case} log_softmax_backward"),
                );
            }
        }
    }
}

/// The staged kernels on the same adversarial f16 rows: the statistics in f32, the normalised
/// matrices in f16, rounded once. The staged gradient is the f16 softmax minus the one-hot, so
/// its label entries carry the probability's own rounding (2^-12 absolute) where the fused
/// kernel rounds p - 1 once: that is the one wider bound here.
#[test]
fn staged_kernels_on_f16_match_the_reference() {
    require_gpu!();
    const P_ROUNDING: f32 = 1.0 / 2048.0;
    for (name, gpu) in configs() {
        let staged = gpu.staged();
        for rows in ROWS {
            for cols in WIDTHS {
                let case = format!("{name} staged {rows}x{cols}");
                let x = adversarial_f16(rows, cols, 11 + cols as u64);
                let on = gpu.upload_f16(x.view()).unwrap();
                let m = staged.row_max(&on).unwrap();
                let want_m = cpu::row_max(x.view()).unwrap();
                assert_close(
                    gpu.download_vector(&m).unwrap().view(),
                    want_m.view(),
                    0.0,
                    0.0,
                    &format!("{case} row_max"),
                );
                let s = staged.row_sumexp(&on, &m).unwrap();
                assert_close(
                    gpu.download_vector(&s).unwrap().view(),
                    cpu::row_sumexp(x.view(), want_m.view()).unwrap().view(),
                    LOSS_ABS,
                    LOSS_REL,
                    &format!("{case} row_sumexp"),
                );
                let p = staged.softmax_normalise(&on, &m, &s).unwrap();
                check_matrix(
                    gpu,
                    &p,
                    cpu::softmax(x.view()).unwrap(),
                    &format!("{case} softmax_normalise"),
                );
                check_matrix(
                    gpu,
                    &staged.softmax(&on).unwrap(),
                    cpu::softmax(x.view()).unwrap(),
                    &format!("{case} softmax"),
                );
                check_matrix(
                    gpu,
                    &staged.log_softmax(&on).unwrap(),
                    cpu::log_softmax(x.view()).unwrap(),
                    &format!("{case} log_softmax"),
                );
                assert_close(
                    gpu.download_vector(&staged.logsumexp(&on).unwrap())
                        .unwrap()
                        .view(),
                    cpu::logsumexp(x.view()).unwrap().view(),
                    LOSS_ABS,
                    LOSS_REL,
                    &format!("{case} logsumexp"),
                );
                // Finite rows for the losses, as in the fused test above.
                let x = x.mapv(|v| {
                    if v.is_finite() {
                        v
                    } else {
                        f16::from_f32(-1.5)
                    }
                });
                let on = gpu.upload_f16(x.view()).unwrap();
                let y = labels(rows, cols, 3, cols as u64);
                let gy = gpu.upload_labels(&y).unwrap();
                for reduction in [Reduction::Mean, Reduction::None] {
                    let opts = CrossEntropyOptions::default().reduction(reduction);
                    let case = format!("{case} {reduction:?}");
                    let (loss, grad) = staged.cross_entropy_with_grad(&on, &gy, &opts).unwrap();
                    assert_loss(
                        gpu.download_loss(&loss).unwrap(),
                        cpu::cross_entropy(x.view(), &y, &opts).unwrap(),
                        &case,
                    );
                    assert_eq!(grad.dtype(), DType::F16, "{case}: gradient precision");
                    let want = cpu::cross_entropy_grad(x.view(), &y, &opts).unwrap();
                    let scale = if reduction == Reduction::Mean {
                        1.0 / (y.active_count().max(1) as f32)
                    } else {
                        1.0
                    };
                    assert_close(
                        gpu.download(&grad).unwrap().view(),
                        widen(want.view()).view(),
                        P_ROUNDING * scale + HALF_ABS,
                        HALF_REL,
                        &format!("{case} gradient"),
                    );
                }
                // one_hot_subtract in place over f16 probabilities, against the same rounding.
                let p16 = cpu::softmax(x.view()).unwrap();
                let grad = staged
                    .one_hot_subtract(gpu.upload_f16(p16.view()).unwrap(), &gy, 0.5)
                    .unwrap();
                let want = cpu::one_hot_subtract(p16.view(), &y, 0.5).unwrap();
                check_matrix(gpu, &grad, want, &format!("{case} one_hot_subtract"));
            }
        }
    }
}

/// Binary cross-entropy of f16 logits and targets: the losses (per element or reduced) in f32,
/// the gradient in f16, with no weights, per-column weights (read from one buffer), and
/// per-element weights (the weighted kernel), on lengths around every vector size. Each matrix
/// has its own base in the kernel: f16 windows start at half the bytes of f32 ones.
#[test]
fn bce_of_f16_matches_the_reference() {
    require_gpu!();
    for (name, gpu) in configs() {
        for rows in ROWS {
            for cols in WIDTHS {
                let z = adversarial_f16(rows, cols, 21 + cols as u64)
                    .mapv(|v| if v.is_nan() { f16::from_f32(3.0) } else { v });
                let mut r = rng(cols as u64);
                let t = Array2::from_shape_fn((rows, cols), |(i, j)| match (i + j) % 5 {
                    0 => 0.0,
                    1 => 1.0,
                    _ => r.random_range(0.0..1.0f32),
                })
                .mapv(f16::from_f32);
                let w_col = Array2::from_shape_fn((1, cols), |(_, j)| 0.5 + (j % 3) as f32 * 0.75);
                let pw_col = Array2::from_shape_fn((1, cols), |(_, j)| 2.0 - (j % 4) as f32 * 0.5);
                let w_full = Array2::from_shape_fn((rows, cols), |(i, j)| {
                    0.25 + ((i * 7 + j) % 5) as f32 * 0.5
                });
                let (gz, gt) = (
                    gpu.upload_f16(z.view()).unwrap(),
                    gpu.upload_f16(t.view()).unwrap(),
                );
                // A configuration with 4 KiB bindings holds no f32 row of 1025 (the f16 logits
                // fit): the f32 weights and losses are refused there.
                let uploads = (
                    gpu.upload(w_col.view()),
                    gpu.upload(pw_col.view()),
                    gpu.upload(w_full.view()),
                );
                let weighted = match &uploads {
                    (Ok(a), Ok(b), Ok(c)) => Some((a, b, c)),
                    _ => {
                        assert!(cols * 4 > 4000, "{name}: f32 rows of {cols} fit");
                        // Nor an f32 row of losses: an error saying so, never a wrong number.
                        let e = gpu
                            .bce_with_logits_with_grad(&gz, &gt, Reduction::Sum)
                            .unwrap_err();
                        assert!(matches!(e, softmax_ce::Error::TooLarge { .. }), "{e}");
                        continue;
                    }
                };
                type Weighting<'a> = (
                    &'a str,
                    Option<&'a softmax_ce::GpuMatrix>,
                    Option<&'a softmax_ce::GpuMatrix>,
                    Option<&'a Array2<f32>>,
                );
                let mut weightings: Vec<Weighting<'_>> = vec![("unweighted", None, None, None)];
                if let Some((gw_col, gpw_col, gw_full)) = weighted {
                    weightings.push(("per-column", Some(gw_col), Some(gpw_col), Some(&w_col)));
                    weightings.push(("full weight", Some(gw_full), Some(gpw_col), Some(&w_full)));
                }
                for (weighting, gw, gpw, w) in weightings {
                    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                        let case = format!("{name} {rows}x{cols} bce {weighting} {reduction:?}");
                        let mut opts = softmax_ce::BceOptions::default().reduction(reduction);
                        if let Some(w) = w {
                            opts = opts.weight(w.clone());
                        }
                        if gpw.is_some() {
                            opts = opts.pos_weight(pw_col.clone());
                        }
                        let (loss, grad) = gpu
                            .bce_with_logits_weighted_with_grad(&gz, &gt, gw, gpw, reduction)
                            .unwrap();
                        let (zd, td) = (z.view().into_dyn(), t.view().into_dyn());
                        let want = cpu::bce_with_logits_nd(zd.clone(), td.clone(), &opts).unwrap();
                        let got = gpu.download_bce(&loss).unwrap().into_array();
                        assert_close(got.view(), want.view(), LOSS_ABS, LOSS_REL, &case);
                        let want_grad = cpu::bce_with_logits_nd_grad(zd, td, &opts)
                            .unwrap()
                            .into_dimensionality()
                            .unwrap();
                        // The kernel's f32 arithmetic: a few f32 steps of the largest term
                        // (weights up to 2.25 and 2), scaled, before the one f16 rounding.
                        let scale = if reduction == Reduction::Mean {
                            1.0 / (rows * cols) as f32
                        } else {
                            1.0
                        };
                        assert_eq!(grad.dtype(), DType::F16, "{case}: gradient precision");
                        assert_close(
                            gpu.download(&grad).unwrap().view(),
                            widen(want_grad.view()).view(),
                            HALF_ABS + 32.0 * f32::EPSILON * scale,
                            HALF_REL,
                            &format!("{case} gradient"),
                        );
                    }
                }
            }
        }
    }
}

/// `f16` products: A, B and C in f16, accumulated in f32. Within one f16 rounding of the exact
/// product (computed in f64 from the same f16 values), plus the f32 accumulation's bound
/// `(k + 1) u sum_l |a_il b_lj|` (tests/matmul.rs) before that rounding.
fn assert_product_f16(
    gpu: &GpuContext,
    got: &softmax_ce::GpuMatrix,
    a: ArrayView2<f16>,
    b: ArrayView2<f16>,
    case: &str,
) {
    assert_eq!(got.dtype(), DType::F16, "{case}: output precision");
    let (a, b) = (a.mapv(|v| v.to_f64()), b.mapv(|v| v.to_f64()));
    let want = a.dot(&b);
    let scale = a.mapv(f64::abs).dot(&b.mapv(f64::abs));
    let k = a.ncols() as f64;
    let got = gpu.download(got).unwrap();
    assert_eq!(got.dim(), want.dim(), "{case}: shape");
    let mut bad = Vec::new();
    for ((idx, &g), (&w, &s)) in got.indexed_iter().zip(want.iter().zip(scale.iter())) {
        let rounded = f64::from(f16::from_f64(w).to_f32());
        let bound = f64::from(HALF_REL) * rounded.abs()
            + (k + 1.0) * 0.5 * f64::from(f32::EPSILON) * s
            + f64::from(HALF_ABS);
        if !((f64::from(g) - rounded).abs() <= bound || f64::from(g) == rounded) {
            bad.push(format!(
                "{idx:?}: got {g:e}, want {rounded:e}, bound {bound:e}"
            ));
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

/// Both products on f16 operands around the kernel's quads, blocks and tiles, at both load
/// widths, with values up to 6e4 whose products overflow f16. The configurations differ for the
/// product only in whether the texture kernel runs, which is f32 only and never chosen for f16:
/// both contexts that differ there run it.
#[test]
fn products_of_f16_match_the_reference() {
    require_gpu!();
    const SIZES: [usize; 9] = [1, 3, 4, 5, 8, 9, 63, 64, 65];
    for (name, gpu) in both_kernels() {
        for m in SIZES {
            for n in SIZES {
                for k in [1, 3, 4, 5, 33, 100] {
                    let seed = (m * 10_007 + n * 101 + k) as u64;
                    let a = logits(m, k, 2.0, seed).mapv(f16::from_f32);
                    let b = logits(k, n, 2.0, seed + 1).mapv(f16::from_f32);
                    let (ga, gb) = (
                        gpu.upload_f16(a.view()).unwrap(),
                        gpu.upload_f16(b.view()).unwrap(),
                    );
                    let case = format!("{name} f16 {m}x{k}x{n}");
                    assert_product_f16(
                        gpu,
                        &gpu.matmul(&ga, &gb).unwrap(),
                        a.view(),
                        b.view(),
                        &format!("{case} nn"),
                    );
                    let at = a.t().as_standard_layout().into_owned();
                    let gat = gpu.upload_f16(at.view()).unwrap();
                    assert_product_f16(
                        gpu,
                        &gpu.matmul_tn(&gat, &gb).unwrap(),
                        a.view(),
                        b.view(),
                        &format!("{case} tn"),
                    );
                }
            }
        }
        // Large values: products past f16::MAX are infinite, as the reference rounds them.
        let a = Array2::from_shape_fn((9, 5), |(i, j)| if (i + j) % 3 == 0 { 6e4 } else { -0.5 })
            .mapv(f16::from_f32);
        let b = Array2::from_shape_fn((5, 7), |(i, j)| if (i * j) % 2 == 0 { 2.0 } else { 1e-3 })
            .mapv(f16::from_f32);
        let (ga, gb) = (
            gpu.upload_f16(a.view()).unwrap(),
            gpu.upload_f16(b.view()).unwrap(),
        );
        assert_product_f16(
            gpu,
            &gpu.matmul(&ga, &gb).unwrap(),
            a.view(),
            b.view(),
            &format!("{name} f16 overflow"),
        );
    }
}

/// An application's own `f16` logits at an aligned offset, rows padded, with a plan recorded
/// into its encoder: half the bytes of f32, the same answers.
#[test]
fn wrapped_f16_buffers_at_offsets_and_strides() {
    let gpu = require_gpu!();
    let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
    for (rows, cols, stride) in [(5, 7, 9), (9, 12, 16), (3, 1, 1), (4, 1000, 1000)] {
        let x = adversarial_f16(rows, cols, 5);
        let mut padded = Array2::from_elem((rows, stride), f16::NAN);
        padded.slice_mut(ndarray::s![.., ..cols]).assign(&x);
        let bytes: Vec<u8> = bytemuck::cast_slice(padded.as_slice().unwrap()).to_vec();
        let size = (align + bytes.len() as u64).next_multiple_of(4);
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("application f16"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut upload = bytes.clone();
        upload.resize(upload.len().next_multiple_of(4), 0);
        gpu.queue().write_buffer(&buffer, align, &upload);
        let on = gpu
            .wrap_matrix_as(&buffer, align, (rows, cols), stride, DType::F16)
            .unwrap();
        assert_eq!(on.byte_len(), 2 * ((rows - 1) * stride + cols) as u64);
        let case = format!("wrapped {rows}x{cols} stride {stride}");
        let out = gpu
            .upload_f16(Array2::<f16>::zeros((rows, cols)).view())
            .unwrap();
        let plan = gpu.plan_softmax(&on, &out).unwrap();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        plan.record(&mut encoder);
        gpu.queue().submit([encoder.finish()]);
        check_matrix(gpu, &out, cpu::softmax(x.view()).unwrap(), &case);
        let back = widen(gpu.download_f16(&on).unwrap().view());
        let case = format!("{case}: the input reads back as written");
        assert_close(back.view(), widen(x.view()).view(), 0.0, 0.0, &case);
    }
}

/// Ops without an f16 kernel, mixed precisions, and narrowing downloads are errors that say so.
#[test]
fn f16_where_it_does_not_run_is_an_error() {
    let gpu = require_gpu!();
    let x = gpu
        .upload_f16(logits(4, 8, 1.0, 1).mapv(f16::from_f32).view())
        .unwrap();
    let x32 = gpu.upload(logits(4, 8, 1.0, 1).view()).unwrap();
    let e = gpu.matmul_tn(&x, &x32).unwrap_err().to_string();
    assert!(
        e.contains("matmul_tn: b of f16, a's precision, not f32"),
        "{e}"
    );
    let e = gpu
        .bce_with_logits_with_grad(&x, &x32, Reduction::Sum)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("targets of f16, the input's precision, not f32"),
        "{e}"
    );
    let w16 = gpu
        .upload_f16(Array2::from_elem((1, 8), f16::ONE).view())
        .unwrap();
    let e = gpu
        .bce_with_logits_weighted_with_grad(&x, &x, Some(&w16), None, Reduction::Sum)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("weights are f32 whatever the logits' precision): a 1 x 8 matrix of f16"),
        "{e}"
    );
    let per_element = softmax_ce::gpu::GpuBceLoss::PerElement(
        gpu.upload_f16(Array2::from_elem((4, 8), f16::ZERO).view())
            .unwrap(),
    );
    let grad = gpu
        .upload_f16(Array2::from_elem((4, 8), f16::ZERO).view())
        .unwrap();
    let e = gpu
        .plan_bce_with_logits((&x, &x, None, None), Reduction::None, &per_element, &grad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the per-element loss (losses are f32): a 4 x 8 matrix of f16"),
        "{e}"
    );
    let e = gpu.softmax_backward(&x, &x32).unwrap_err().to_string();
    assert!(e.contains("of f16, the input's precision, not f32"), "{e}");
    let out32 = gpu.upload(Array2::<f32>::zeros((4, 8)).view()).unwrap();
    let e = gpu.plan_softmax(&x, &out32).unwrap_err().to_string();
    assert!(e.contains("of f16, the input's precision, not f32"), "{e}");
    let e = gpu.download_f16(&x32).unwrap_err().to_string();
    assert!(e.contains("a matrix of f32"), "{e}");
}

/// A device made without `SHADER_F16` (as on wgpu's GL backend) refuses f16 matrices with an
/// error naming the feature, and still runs f32.
#[test]
fn a_device_without_shader_f16_says_so() {
    require_gpu!();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let gpu = GpuContext::from_device(device, queue).unwrap();
    let x = logits(3, 5, 1.0, 2);
    let half = gpu.upload_f16(x.mapv(f16::from_f32).view()).unwrap();
    let e = gpu.softmax(&half).unwrap_err();
    assert!(
        matches!(
            e,
            softmax_ce::Error::MissingFeature {
                feature: "SHADER_F16",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("needs the device feature SHADER_F16"),
        "{e}"
    );
    // Every op that takes f16, and f16 training data, say the same.
    let missing = |e: softmax_ce::Error, case: &str| {
        assert!(
            matches!(
                e,
                softmax_ce::Error::MissingFeature {
                    feature: "SHADER_F16",
                    ..
                }
            ),
            "{case}: {e}"
        );
    };
    missing(
        gpu.matmul(
            &half,
            &gpu.upload_f16(x.t().mapv(f16::from_f32).view()).unwrap(),
        )
        .unwrap_err(),
        "matmul",
    );
    missing(
        gpu.bce_with_logits_with_grad(&half, &half, Reduction::Mean)
            .unwrap_err(),
        "bce",
    );
    missing(gpu.staged().softmax(&half).unwrap_err(), "staged softmax");
    let y = softmax_ce::Labels::new([0, 1, 2], 5, -100).unwrap();
    let opts = softmax_ce::train::TrainOptions::default()
        .batch(1)
        .dtype(DType::F16);
    missing(
        softmax_ce::train::SoftmaxRegression::new(&gpu, (x.view(), &y), None, opts).unwrap_err(),
        "training",
    );
    let p = gpu.softmax(&gpu.upload(x.view()).unwrap()).unwrap();
    assert_close(
        gpu.download(&p).unwrap().view(),
        cpu::softmax(x.view()).unwrap().view(),
        PROB_ABS,
        PROB_REL,
        "f32 without SHADER_F16",
    );
}

/// The conversions the tests lean on: f16 widens exactly, and the reference's rounding is once.
#[test]
fn f16_widening_is_exact() {
    for bits in (0u16..=u16::MAX).step_by(97) {
        let h = f16::from_bits(bits);
        let w = <f16 as Element>::to_f64(h);
        if h.is_nan() {
            assert!(w.is_nan());
        } else {
            assert_eq!(<f16 as Element>::from_f64(w), h);
        }
    }
    let _: fn(ArrayView2<f16>) -> Array2<f32> = widen;
}

/// f16 rows across the limits tests/limits.rs holds f32 to, lowered so that small data reach
/// them: 3 workgroups per dimension (dispatches fold into y) and 16 KiB bindings (windows split
/// the rows, cut in 4-byte words: two f16 a word, odd rows straddling words), a matrix of
/// exactly one binding and one row past it; and an odd-length wrapped f16 view ending at its
/// buffer's last byte, which the binding's whole last word would overrun: refused, while one
/// more pair of bytes makes it fit.
#[test]
fn f16_rows_fold_and_window_past_lowered_limits() {
    require_gpu!();
    let gpu = GpuContext::with_options(
        &softmax_ce::GpuOptions::default()
            .max_workgroups_per_dimension(3)
            .max_binding_bytes(1 << 14),
    )
    .unwrap();
    if !gpu.device().features().contains(wgpu::Features::SHADER_F16) {
        eprintln!("SKIPPED f16_rows_fold_and_window_past_lowered_limits: no SHADER_F16");
        return;
    }
    let opts = CrossEntropyOptions::default().label_smoothing(0.1);
    // 1024 x 8 f16 is 16 KiB: exactly one binding.
    for (rows, cols) in [(1, 5), (575, 5), (576, 7), (1024, 8), (1025, 8), (1500, 13)] {
        let case = format!("{rows}x{cols} f16, 3 groups a dimension, 16 KiB bindings");
        let x = adversarial_f16(rows, cols, (rows * cols) as u64);
        let y = labels(rows, cols, 4, rows as u64);
        let gx = gpu.upload_f16(x.view()).unwrap();
        let p = gpu.softmax(&gx).unwrap();
        check_matrix(&gpu, &p, cpu::softmax(x.view()).unwrap(), &case);
        let (loss, grad) = gpu
            .cross_entropy_with_grad(&gx, &gpu.upload_labels(&y).unwrap(), &opts)
            .unwrap();
        let want = cpu::cross_entropy(x.view(), &y, &opts).unwrap();
        assert_loss(gpu.download_loss(&loss).unwrap(), want, &case);
        let want = cpu::cross_entropy_grad(x.view(), &y, &opts).unwrap();
        check_matrix(&gpu, &grad, want, &format!("{case}: gradient"));
        // BCE cuts the flat f16 logits and the f32 losses into windows of their own widths.
        let t = x.mapv(|v| f16::from_f32(if v.to_f32() > 0.0 { 1.0 } else { 0.25 }));
        let pw = Array2::from_shape_fn((1, cols), |(_, j)| 1.0 + j as f32 * 0.5);
        let (gt, gpw) = (
            gpu.upload_f16(t.view()).unwrap(),
            gpu.upload(pw.view()).unwrap(),
        );
        for reduction in [Reduction::None, Reduction::Sum] {
            let bce = softmax_ce::BceOptions::default()
                .reduction(reduction)
                .pos_weight(pw.clone());
            let (loss, grad) = gpu
                .bce_with_logits_weighted_with_grad(&gx, &gt, None, Some(&gpw), reduction)
                .unwrap();
            let (xd, td) = (x.view().into_dyn(), t.view().into_dyn());
            let want = cpu::bce_with_logits_nd(xd.clone(), td.clone(), &bce).unwrap();
            let got = gpu.download_bce(&loss).unwrap().into_array();
            let what = format!("{case}: bce {reduction:?}");
            assert_close(got.view(), want.view(), LOSS_ABS, LOSS_REL, &what);
            let want = cpu::bce_with_logits_nd_grad(xd, td, &bce).unwrap();
            check_matrix(&gpu, &grad, want.into_dimensionality().unwrap(), &what);
        }
        // Products: A B cut into dispatches of 3 x 64 rows and windows of A's rows; A^T B into
        // windows of the inner dimension, accumulated.
        let a = logits(rows, cols, 1.0, 5).mapv(f16::from_f32);
        let b = logits(cols, 9, 1.0, 6).mapv(f16::from_f32);
        let b_rows = logits(rows, 9, 1.0, 7).mapv(f16::from_f32);
        let (ga, gb, gb_rows) = (
            gpu.upload_f16(a.view()).unwrap(),
            gpu.upload_f16(b.view()).unwrap(),
            gpu.upload_f16(b_rows.view()).unwrap(),
        );
        let nn = gpu.matmul(&ga, &gb).unwrap();
        assert_product_f16(&gpu, &nn, a.view(), b.view(), &format!("{case}: nn"));
        let tn = gpu.matmul_tn(&ga, &gb_rows).unwrap();
        let at = a.t().as_standard_layout().into_owned();
        assert_product_f16(&gpu, &tn, at.view(), b_rows.view(), &format!("{case}: tn"));
    }

    // A^T B over an inner dimension cut into windows: a partial sum past f16's range (the
    // first window's 255 * 255 * ~585) that the later windows cancel. Accumulated in f32
    // and rounded once, the product is the reference's; rounded per window it would be inf.
    let k = 1500;
    let a = Array2::from_shape_fn((k, 3), |(i, j)| {
        if i < k / 2 {
            255.0
        } else {
            -255.0 + 0.125 * j as f32
        }
    })
    .mapv(f16::from_f32);
    let b = Array2::from_shape_fn((k, 2), |_| 255.0).mapv(f16::from_f32);
    let tn = gpu
        .matmul_tn(
            &gpu.upload_f16(a.view()).unwrap(),
            &gpu.upload_f16(b.view()).unwrap(),
        )
        .unwrap();
    let at = a.t().as_standard_layout().into_owned();
    assert_product_f16(
        &gpu,
        &tn,
        at.view(),
        b.view(),
        "windows of A^T B cancelling past f16's range",
    );
    let got = gpu.download(&tn).unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "{got}");

    let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
    let buffer = |size: u64| {
        gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("application f16"),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    // 5 f16 are 10 bytes, bound as 3 words: 12.
    let tight = buffer(align + 10);
    let e = gpu
        .wrap_matrix_as(&tight, align, (1, 5), 5, DType::F16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("(12 bytes) runs past the end"), "{e}");
    let fits = buffer(align + 12);
    assert!(
        gpu.wrap_matrix_as(&fits, align, (1, 5), 5, DType::F16)
            .is_ok()
    );
}

/// Every copy of an f16 matrix moves its halves untouched (the bits of every value the
/// adversarial rows hold, infinities included), at widths around the vector width, odd ones
/// straddling 4-byte words; the buffer copy, which moves whole words, refuses an odd count.
#[test]
fn f16_copies_move_the_halves_untouched() {
    use softmax_ce::gpu::CopyKernel;
    let gpu = require_gpu!();
    for cols in [1, 3, 4, 5, 8, 1000, 1025] {
        for rows in [1, 37] {
            let x = adversarial_f16(rows, cols, (rows + cols) as u64);
            let gx = gpu.upload_f16(x.view()).unwrap();
            for kernel in CopyKernel::ALL {
                let case = format!("{rows}x{cols} f16, {}", kernel.name());
                if kernel == CopyKernel::Buffer && (rows * cols) % 2 == 1 {
                    let e = gpu.copy_with(&gx, kernel).unwrap_err().to_string();
                    assert!(e.contains("moves whole 4-byte words"), "{case}: {e}");
                    continue;
                }
                let y = gpu.copy_with(&gx, kernel).unwrap();
                assert_eq!(y.dtype(), DType::F16, "{case}");
                let got = gpu.download_f16(&y).unwrap();
                let bits = |a: &Array2<f16>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&x), "{case}");
            }
        }
    }
}
