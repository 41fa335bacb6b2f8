//! Binary cross-entropy with logits of any shape, with `weight` and `pos_weight`: the reference
//! against the definition, hand values and finite differences; the GPU against the reference
//! on shapes around the vector and workgroup sizes, with adversarial logits, in every
//! configuration.

mod common;

use common::*;
use ndarray::{Array, ArrayD, IxDyn, array};
use rand::Rng;
use softmax_ce::{BceOptions, Device, Error, Reduction, cpu};

/// The definition, in f64: `-w (pw t log sigmoid(z) + (1 - t) log(1 - sigmoid(z)))`, fine for
/// moderate logits.
fn by_definition(z: f64, t: f64, w: f64, pw: f64) -> f64 {
    let s = 1.0 / (1.0 + (-z).exp());
    -w * (pw * t * s.ln() + (1.0 - t) * (1.0 - s).ln())
}

/// Its derivative by the brief's formula: `w ((pw t + 1 - t) sigmoid(z) - pw t)`.
fn grad_by_formula(z: f64, t: f64, w: f64, pw: f64) -> f64 {
    let s = 1.0 / (1.0 + (-z).exp());
    w * ((pw * t + 1.0 - t) * s - pw * t)
}

fn dyn_of(shape: &[usize], seed: u64, f: impl Fn(f32) -> f32) -> ArrayD<f32> {
    let mut r = rng(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| f(r.random_range(-1.0f32..1.0)))
}

/// A 1-D vector of logits with 0/1 targets (logistic regression), a positive weight and
/// per-element weights, against numbers worked out by hand.
#[test]
fn bce_nd_hand_values() {
    let z = array![0.0f32, 2.0, -1.0];
    let t = array![1.0f32, 0.0, 0.5];
    let opts = BceOptions::default()
        .reduction(Reduction::None)
        .weight(array![2.0f32, 1.0, 0.5])
        .pos_weight(array![3.0f32]);
    let loss = cpu::bce_with_logits_nd(z.view().into_dyn(), t.view().into_dyn(), &opts).unwrap();
    let ln2 = std::f64::consts::LN_2;
    let e = std::f64::consts::E;
    // z = 0, t = 1: w pw ln 2 = 6 ln 2.
    // z = 2, t = 0: softplus(2) = ln(1 + e^2).
    // z = -1, t = 1/2, c = 1 + 2 / 2 = 2: w ((1 - t) z + c softplus(1)) = (-1/2 + 2 ln(1 + e)) / 2.
    let want = [
        6.0 * ln2,
        (1.0 + e * e).ln(),
        0.5 * (-0.5 + 2.0 * (1.0 + e).ln()),
    ];
    for (i, w) in want.iter().enumerate() {
        assert!(
            (loss[[i]] as f64 - w).abs() < 1e-6,
            "{i}: {} vs {w}",
            loss[[i]]
        );
    }
    let grad = cpu::bce_with_logits_nd_grad(
        z.view().into_dyn(),
        t.view().into_dyn(),
        &opts.clone().reduction(Reduction::Sum),
    )
    .unwrap();
    // z = 0, t = 1: w (pw sigmoid(0) - pw) = 2 (3/2 - 3) = -3; z = 2, t = 0: sigmoid(2).
    let s = |z: f64| 1.0 / (1.0 + (-z).exp());
    let want = [-3.0, s(2.0), 0.5 * (2.0 * s(-1.0) - 1.5)];
    for (i, w) in want.iter().enumerate() {
        assert!(
            (grad[[i]] as f64 - w).abs() < 1e-6,
            "{i}: {} vs {w}",
            grad[[i]]
        );
    }
    let mean = cpu::bce_with_logits_nd(
        z.view().into_dyn(),
        t.view().into_dyn(),
        &opts.clone().reduction(Reduction::Mean),
    )
    .unwrap();
    assert_eq!(mean.ndim(), 0);
    assert!((mean[[]] - loss.sum() / 3.0).abs() < 1e-6);
}

/// Every broadcast shape of both weights, on a 3-D array, against the definition.
#[test]
fn bce_nd_broadcasts_like_numpy() {
    let shape = [2, 3, 4];
    let z = dyn_of(&shape, 1, |v| 4.0 * v);
    let t = dyn_of(&shape, 2, |v| if v > 0.3 { 1.0 } else { (v + 1.0) / 3.0 });
    for (w_shape, pw_shape) in [
        (vec![], vec![4]),
        (vec![4], vec![1, 1, 4]),
        (vec![3, 1], vec![4]),
        (vec![2, 1, 1], vec![3, 4]),
        (vec![2, 3, 4], vec![2, 3, 4]),
        (vec![1], vec![]),
    ] {
        let w = dyn_of(&w_shape, 3, |v| 1.5 + v);
        let pw = dyn_of(&pw_shape, 4, |v| 2.0 + v);
        let opts = BceOptions::default()
            .reduction(Reduction::None)
            .weight(w.clone())
            .pos_weight(pw.clone());
        let got = cpu::bce_with_logits_nd(z.view(), t.view(), &opts).unwrap();
        let grad = cpu::bce_with_logits_nd_grad(z.view(), t.view(), &opts).unwrap();
        let wb = w.broadcast(IxDyn(&shape)).unwrap();
        let pwb = pw.broadcast(IxDyn(&shape)).unwrap();
        for (idx, &zv) in z.indexed_iter() {
            let args = (zv as f64, t[&idx] as f64, wb[&idx] as f64, pwb[&idx] as f64);
            let want = by_definition(args.0, args.1, args.2, args.3);
            let case = format!("w {w_shape:?} pw {pw_shape:?} at {idx:?}");
            assert!(
                (got[&idx] as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                "{case}"
            );
            let want = grad_by_formula(args.0, args.1, args.2, args.3);
            assert!((grad[&idx] as f64 - want).abs() < 1e-6, "{case} grad");
        }
    }
}

/// The gradient of every reduction, with both weights, is the derivative of the loss. An
/// element's loss depends on its own logit only, so the difference is taken of that element's
/// `none` loss, which keeps it far from the f32 rounding of a total.
#[test]
fn bce_nd_gradient_matches_finite_differences() {
    let shape = [3, 5];
    let z = dyn_of(&shape, 5, |v| 3.0 * v);
    let t = dyn_of(&shape, 6, |v| (v + 1.0) / 2.0);
    let base = BceOptions::default()
        .weight(dyn_of(&[3, 1], 7, |v| 1.0 + v / 2.0))
        .pos_weight(dyn_of(&[5], 8, |v| 2.0 + v));
    let none = base.clone().reduction(Reduction::None);
    for (reduction, scale) in [(Reduction::Mean, 1.0 / 15.0), (Reduction::Sum, 1.0)] {
        let opts = base.clone().reduction(reduction);
        let got = cpu::bce_with_logits_nd_grad(z.view(), t.view(), &opts).unwrap();
        let h = 1e-2f32;
        for (idx, _) in z.indexed_iter() {
            let at = |d: f32| {
                let mut zz = z.clone();
                zz[&idx] += d;
                cpu::bce_with_logits_nd(zz.view(), t.view(), &none).unwrap()[&idx] as f64
            };
            let want = scale * (at(h) - at(-h)) / (2.0 * h as f64);
            let g = got[&idx] as f64;
            assert!(
                (g - want).abs() < 1e-3 * want.abs() + 1e-5,
                "{reduction} {idx:?}: {g} vs {want}"
            );
        }
    }
}

/// Huge and infinite logits give finite, correct losses (the limit where PyTorch's `0 * inf`
/// gives NaN), and NaN only from NaN.
#[test]
fn bce_nd_is_stable_at_extreme_logits() {
    let inf = f32::INFINITY;
    let z = array![
        1e4f32,
        -1e4,
        1e30,
        -1e30,
        inf,
        -inf,
        -inf,
        inf,
        1e4,
        f32::NAN
    ];
    let t = array![1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.25, 1.0];
    let opts = BceOptions::default()
        .reduction(Reduction::None)
        .pos_weight(array![2.0f32]);
    let loss = cpu::bce_with_logits_nd(z.view().into_dyn(), t.view().into_dyn(), &opts).unwrap();
    let grad =
        cpu::bce_with_logits_nd_grad(z.view().into_dyn(), t.view().into_dyn(), &opts).unwrap();
    let want_loss = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, inf, inf, 0.75e4, f32::NAN];
    let want_grad = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 1.0, 0.75, f32::NAN];
    for i in 0..z.len() {
        let same = |a: f32, b: f32| (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() < 1e-30;
        assert!(
            same(loss[[i]], want_loss[i]),
            "loss at z = {}: {}",
            z[i],
            loss[[i]]
        );
        assert!(
            same(grad[[i]], want_grad[i]),
            "grad at z = {}: {}",
            z[i],
            grad[[i]]
        );
    }
}

/// The 2-D API is the N-d one's 2-D, unweighted case; a 0-d logit and empty arrays work.
#[test]
fn bce_nd_agrees_with_the_2d_api_and_edge_shapes() {
    let z = logits(4, 6, 5.0, 9);
    let t = logits(4, 6, 0.5, 10).mapv(|v| v + 0.5);
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let opts = BceOptions::default().reduction(reduction);
        let nd = cpu::bce_with_logits_nd(z.view().into_dyn(), t.view().into_dyn(), &opts).unwrap();
        let old = cpu::bce_with_logits(z.view(), t.view(), reduction)
            .unwrap()
            .into_array();
        assert_eq!(nd, old, "{reduction}");
    }
    let z0 = ndarray::arr0(0.0f32).into_dyn();
    let t0 = ndarray::arr0(1.0f32).into_dyn();
    let l = cpu::bce_with_logits_nd(z0.view(), t0.view(), &BceOptions::default()).unwrap();
    assert!((l[[]] - std::f32::consts::LN_2).abs() < 1e-7);
    let empty = ArrayD::<f32>::zeros(IxDyn(&[3, 0]));
    let mean = cpu::bce_with_logits_nd(empty.view(), empty.view(), &BceOptions::default()).unwrap();
    assert!(
        mean[[]].is_nan(),
        "a mean over nothing is NaN, as in PyTorch"
    );
    let none = BceOptions::default().reduction(Reduction::None);
    assert_eq!(
        cpu::bce_with_logits_nd(empty.view(), empty.view(), &none)
            .unwrap()
            .shape(),
        &[3, 0]
    );
}

/// Bad shapes and values are errors naming the op and the shapes or values.
#[test]
fn bce_nd_bad_inputs_are_errors() {
    let z = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    let t = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
    let devices: Vec<Device> = std::iter::once(Device::Cpu)
        .chain(gpu().map(|_| Device::select(Some(softmax_ce::DeviceKind::Gpu)).unwrap().0))
        .collect();
    for device in &devices {
        let err = device
            .bce_with_logits_nd_with_grad(z.view(), t.view(), &BceOptions::default())
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "bce_with_logits",
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("[2, 3]") && msg.contains("[3, 2]"), "{msg}");

        let opts = BceOptions::default().weight(array![1.0f32, 2.0]);
        let err = device
            .bce_with_logits_nd_with_grad(z.view(), z.view(), &opts)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "bce_with_logits",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("weight") && msg.contains("[2]") && msg.contains("[2, 3]"),
            "{msg}"
        );

        let opts = BceOptions::default().pos_weight(array![1.0f32, f32::NAN, 1.0]);
        let err = device
            .bce_with_logits_nd_with_grad(z.view(), z.view(), &opts)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    op: "bce_with_logits",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("pos_weight NaN at index [1]"), "{msg}");
    }
    // On the device, a weight matrix must be 1 x K or R x K.
    if let Some(gpu) = gpu() {
        let z = gpu.upload(logits(3, 4, 1.0, 1).view()).unwrap();
        let w = gpu.upload(logits(3, 1, 1.0, 2).view()).unwrap();
        let err = gpu
            .bce_with_logits_weighted_with_grad(&z, &z, Some(&w), None, Reduction::Mean)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "bce_with_logits",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("(3, 1)") && msg.contains("(1, 4)"), "{msg}");
    }
}

/// Logits drawn from the adversarial rows (+-1e4, 1e30, -inf, +inf, equal rows), targets 0, 1
/// or fractional.
fn inputs(shape: &[usize], seed: u64) -> (ArrayD<f32>, ArrayD<f32>) {
    let n: usize = shape.iter().product();
    let flat = adversarial(n.max(1), 1, seed);
    let mut r = rng(seed + 7);
    let z = Array::from_iter(flat.iter().copied().take(n))
        .into_shape_with_order(IxDyn(shape))
        .unwrap();
    let t = ArrayD::from_shape_fn(IxDyn(shape), |_| match r.random_range(0..3) {
        0 => 0.0,
        1 => 1.0,
        _ => r.random_range(0.0f32..1.0),
    });
    (z, t)
}

/// The option sets run on every shape: none, each weight alone in its usual shape, a
/// per-sample weight (expanded on the host), and both.
fn option_sets(shape: &[usize], seed: u64) -> Vec<(String, BceOptions)> {
    // (K,), or () for 0-d logits, to which a (1,) weight does not broadcast.
    let k: Vec<usize> = shape.last().map(|&k| vec![k]).unwrap_or_default();
    let mut per_sample = shape.to_vec();
    if let Some(last) = per_sample.last_mut() {
        *last = 1;
    }
    let per_class = dyn_of(&k, seed, |v| 2.0 + 1.5 * v);
    let sample = dyn_of(&per_sample, seed + 1, |v| 1.0 + v / 2.0);
    let mut out = Vec::new();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let base = BceOptions::default().reduction(reduction);
        out.push((format!("{reduction}"), base.clone()));
        out.push((
            format!("{reduction} pw(K)"),
            base.clone().pos_weight(per_class.clone()),
        ));
        out.push((
            format!("{reduction} w(K)"),
            base.clone().weight(per_class.clone()),
        ));
        out.push((
            format!("{reduction} w(..,1) pw(K)"),
            base.clone()
                .weight(sample.clone())
                .pos_weight(per_class.clone()),
        ));
        out.push((
            format!("{reduction} w(K) pw(..,1)"),
            base.weight(per_class.clone()).pos_weight(sample.clone()),
        ));
    }
    out
}

fn compare(gpu: &softmax_ce::GpuContext, name: &str, shape: &[usize], seed: u64) {
    let (z, t) = inputs(shape, seed);
    for (opt_name, opts) in option_sets(shape, seed) {
        let case = format!("{name} {shape:?} {opt_name}");
        let (loss, grad) = gpu
            .bce_with_logits_nd_with_grad(z.view(), t.view(), &opts)
            .unwrap();
        let want = cpu::bce_with_logits_nd(z.view(), t.view(), &opts).unwrap();
        assert_close(
            loss.view(),
            want.view(),
            1e-5,
            2e-5,
            &format!("{case} loss"),
        );
        let want = cpu::bce_with_logits_nd_grad(z.view(), t.view(), &opts).unwrap();
        // w ((1 - t) sigmoid(z) - pw t sigmoid(-z)) cancels: a few ulp of its terms (w, pw < 4),
        // times the reduction's scale.
        let scale = match opts.reduction {
            Reduction::Mean => 1.0 / z.len().max(1) as f32,
            _ => 1.0,
        };
        assert_close(
            grad.view(),
            want.view(),
            2e-6 * scale,
            2e-5,
            &format!("{case} grad"),
        );
    }
}

/// Shapes around the vector width and the workgroup sizes, 1-D to 3-D, ragged and empty, in
/// every configuration (4 KiB bindings included, so that the flat array runs in many windows
/// and wide rows take the per-element paths).
#[test]
fn bce_nd_gpu_matches_cpu() {
    let shapes: Vec<Vec<usize>> = vec![
        vec![],
        vec![1],
        vec![3],
        vec![4],
        vec![5],
        vec![63],
        vec![64],
        vec![65],
        vec![255],
        vec![257],
        vec![1500],
        vec![0],
        vec![3, 0],
        vec![2, 3],
        vec![7, 5],
        vec![4, 64],
        vec![3, 65],
        vec![65, 3],
        vec![3, 600],
        // Many windows at 4 KiB, each starting at another column, with a scalar tail.
        vec![150, 7],
        vec![3, 100, 5],
        vec![2, 3, 5],
        vec![2, 1, 7],
    ];
    for (name, gpu) in configs() {
        for (i, shape) in shapes.iter().enumerate() {
            compare(gpu, name, shape, i as u64);
        }
    }
}

/// One vector of a million logits (logistic regression on a large batch): many windows of
/// vec4s and a scalar tail, on the default context.
#[test]
fn bce_nd_gpu_large_vector() {
    let gpu = require_gpu!();
    let n = (1 << 20) + 3;
    let z = dyn_of(&[n], 11, |v| 20.0 * v);
    let t = dyn_of(&[n], 12, |v| if v > 0.0 { 1.0 } else { 0.0 });
    let opts = BceOptions::default().pos_weight(array![2.5f32]);
    let (loss, grad) = gpu
        .bce_with_logits_nd_with_grad(z.view(), t.view(), &opts)
        .unwrap();
    let want = cpu::bce_with_logits_nd(z.view(), t.view(), &opts).unwrap();
    assert_close(loss.view(), want.view(), LOSS_ABS, LOSS_REL, "loss");
    let want = cpu::bce_with_logits_nd_grad(z.view(), t.view(), &opts).unwrap();
    assert_close(grad.view(), want.view(), 1e-12, 2e-5, "grad");
}

/// The device API takes weights as 1 x K or R x K matrices; both give the reference's numbers.
#[test]
fn bce_weighted_device_api() {
    let gpu = require_gpu!();
    let (rows, cols) = (9, 6);
    let z = logits(rows, cols, 6.0, 13);
    let t = logits(rows, cols, 0.5, 14).mapv(|v| v + 0.5);
    let w_col = logits(1, cols, 0.5, 15).mapv(|v| v + 1.0);
    let pw_full = logits(rows, cols, 0.5, 16).mapv(|v| v + 2.0);
    let (gz, gt) = (gpu.upload(z.view()).unwrap(), gpu.upload(t.view()).unwrap());
    let (gw, gpw) = (
        gpu.upload(w_col.view()).unwrap(),
        gpu.upload(pw_full.view()).unwrap(),
    );
    let (loss, grad) = gpu
        .bce_with_logits_weighted_with_grad(&gz, &gt, Some(&gw), Some(&gpw), Reduction::Sum)
        .unwrap();
    let opts = BceOptions::default()
        .reduction(Reduction::Sum)
        .weight(w_col.clone())
        .pos_weight(pw_full.clone());
    let want = cpu::bce_with_logits_nd(z.view().into_dyn(), t.view().into_dyn(), &opts).unwrap();
    let got = gpu.download_bce(&loss).unwrap().into_array();
    assert_close(got.view(), want.view(), LOSS_ABS, LOSS_REL, "sum");
    let want =
        cpu::bce_with_logits_nd_grad(z.view().into_dyn(), t.view().into_dyn(), &opts).unwrap();
    assert_close(
        gpu.download(&grad).unwrap().into_dyn().view(),
        want.view(),
        1e-7,
        2e-5,
        "grad",
    );
}

/// A vector of 2^24 + 5 logits: more vec4s than 65,535 workgroups of one dispatch hold, so the
/// groups fold into y, and a scalar tail. Per element (`none`), so that only this kernel is
/// under test.
#[test]
fn bce_nd_gpu_vector_past_the_group_limit() {
    let gpu = require_gpu!();
    let n = (1 << 24) + 5;
    let z = ndarray::Array1::from_shape_fn(n, |i| ((i % 2001) as f32 - 1000.0) / 50.0).into_dyn();
    let t = ndarray::Array1::from_shape_fn(n, |i| f32::from(u8::from(i % 3 == 0))).into_dyn();
    let opts = BceOptions::default()
        .reduction(Reduction::None)
        .pos_weight(array![1.5f32]);
    let (loss, grad) = gpu
        .bce_with_logits_nd_with_grad(z.view(), t.view(), &opts)
        .unwrap();
    let want = cpu::bce_with_logits_nd(z.view(), t.view(), &opts).unwrap();
    assert_close(loss.view(), want.view(), 1e-5, 2e-5, "loss");
    drop(want);
    let want = cpu::bce_with_logits_nd_grad(z.view(), t.view(), &opts).unwrap();
    assert_close(grad.view(), want.view(), 2e-6, 2e-5, "grad");
}

/// The mean of 2^24 + 5 losses: the reduction must not loop over the values past lavapipe's
/// 65,535-iteration limit (before the tree sum it gave 0.092 for 5.89 there).
#[test]
fn bce_nd_gpu_mean_past_the_loop_limit() {
    let gpu = require_gpu!();
    let n = (1 << 24) + 5;
    let z = ndarray::Array1::from_shape_fn(n, |i| ((i % 2001) as f32 - 1000.0) / 50.0).into_dyn();
    let t = ndarray::Array1::from_shape_fn(n, |i| f32::from(u8::from(i % 3 == 0))).into_dyn();
    let opts = BceOptions::default();
    let (loss, _) = gpu
        .bce_with_logits_nd_with_grad(z.view(), t.view(), &opts)
        .unwrap();
    let want = cpu::bce_with_logits_nd(z.view(), t.view(), &opts).unwrap();
    assert_close(loss.view(), want.view(), LOSS_ABS, LOSS_REL, "mean");
}
