//! The linear cross-entropy on the GPU (`gpu::linear`) against the CPU reference: ragged shapes,
//! every option, all-ignored batches, large logits, masked classes, blocks and bindings cut
//! small by lowered limits (W past one binding, many blocks, folded workgroups), shards over
//! two contexts, and its errors.

mod common;

use common::linear::{assert_grads_close, option_cases};
use common::*;
use ndarray::{Array1, Array2, array, s};
use softmax_ce::gpu::{GpuLinearGrads, GpuShard};
use softmax_ce::{
    CrossEntropyOptions, GpuContext, GpuOptions, Labels, LinearCrossEntropyOptions, cpu,
};

/// The GPU's f32 products and sums: twice the CPU blocked path's tolerance (relative 2e-4 of
/// each entry, 2e-5 of the largest), as f32 accumulations over D and over the classes allow.
const GPU_TOL: (f32, f32) = (2e-4, 2e-5);

/// The gradients on the host.
fn download_grads(gpu: &GpuContext, g: &GpuLinearGrads) -> cpu::LinearGrads {
    cpu::LinearGrads {
        hidden: gpu.download(&g.hidden).unwrap(),
        classifier: gpu.download(&g.classifier).unwrap(),
        bias: g.bias.as_ref().map(|b| gpu.download_vector(b).unwrap()),
    }
}

fn check_case(
    gpu: &GpuContext,
    (h, w, b): (&Array2<f32>, &Array2<f32>, Option<&Array1<f32>>),
    y: &Labels,
    opts: &LinearCrossEntropyOptions,
    case: &str,
) {
    let (gh, gw) = (gpu.upload(h.view()).unwrap(), gpu.upload(w.view()).unwrap());
    let gb = b.map(|b| gpu.upload_vector(b.view()).unwrap());
    let gy = gpu.upload_labels(y).unwrap();
    let (loss, grads) = gpu
        .linear_cross_entropy(&gh, &gw, gb.as_ref(), &gy, opts, true)
        .unwrap();
    let bv = b.map(|b| b.view());
    let want = cpu::linear_cross_entropy(h.view(), w.view(), bv, y, opts).unwrap();
    assert_loss(gpu.download_loss(&loss).unwrap(), want, case);
    let want = cpu::linear_cross_entropy_grad(h.view(), w.view(), bv, y, opts).unwrap();
    assert_grads_close(&download_grads(gpu, &grads.unwrap()), &want, GPU_TOL, case);
}

/// Ragged shapes (1x1x1; N, D and V that are no multiple of any tile, vector or block) with
/// every option, on both GPU configurations.
#[test]
fn gpu_linear_cross_entropy_matches_the_reference() {
    for (name, gpu) in both_kernels() {
        for (n, d, v) in [(1, 1, 1), (37, 19, 1001), (9, 8, 68), (70, 12, 300)] {
            let h = logits(n, d, 1.0, 11);
            let w = logits(v, d, 1.0, 12);
            let b = logits(1, v, 1.0, 13).row(0).to_owned();
            let y = labels(n, v, 5, 14);
            for (case, opts) in option_cases(v) {
                let case = format!("{name} {n}x{d}x{v}, {case}");
                check_case(gpu, (&h, &w, Some(&b)), &y, &opts, &case);
            }
            let case = format!("{name} {n}x{d}x{v}, no bias");
            check_case(
                gpu,
                (&h, &w, None),
                &y,
                &LinearCrossEntropyOptions::default(),
                &case,
            );
        }
    }
}

/// Blocks and bindings cut small: 2 KiB bindings hold 4 rows of W of 127 floats, so the
/// vocabulary runs in blocks of 4 classes (W past one binding many times over), the products
/// and the row kernels in windows, and 3 workgroups a dimension fold every dispatch.
#[test]
fn lowered_limits_cut_the_vocabulary_into_many_blocks() {
    require_gpu!();
    let gpu = GpuContext::with_options(
        &GpuOptions::default()
            .max_binding_bytes(2048)
            .max_workgroups_per_dimension(3),
    )
    .unwrap();
    let (n, d, v) = (29, 127, 203);
    let h = logits(n, d, 0.3, 31);
    let w = logits(v, d, 0.3, 32);
    let b = logits(1, v, 1.0, 33).row(0).to_owned();
    let y = labels(n, v, 6, 34);
    for (case, opts) in option_cases(v).into_iter().step_by(3) {
        check_case(
            &gpu,
            (&h, &w, Some(&b)),
            &y,
            &opts,
            &format!("2 KiB bindings, {case}"),
        );
    }
}

/// 3 workgroups a dimension: blocks of at most 3 tiles of classes (192), so a vocabulary of
/// 1000 runs in six blocks, as one past 65,535 tiles would on a real device.
#[test]
fn a_vocabulary_past_the_workgroups_of_a_dimension_runs_in_blocks() {
    require_gpu!();
    let gpu =
        GpuContext::with_options(&GpuOptions::default().max_workgroups_per_dimension(3)).unwrap();
    let (n, d, v) = (5, 6, 1000);
    let h = logits(n, d, 1.0, 81);
    let w = logits(v, d, 1.0, 82);
    let b = logits(1, v, 1.0, 83).row(0).to_owned();
    let y = labels(n, v, 3, 84);
    for (case, opts) in option_cases(v).into_iter().step_by(5) {
        check_case(
            &gpu,
            (&h, &w, Some(&b)),
            &y,
            &opts,
            &format!("3 groups, {case}"),
        );
    }
}

/// Every row ignored: a mean is NaN, a sum 0, and every gradient 0; large logits keep their
/// probabilities exact (exp((z - m) - ln s) from the statistics); masked classes (-inf bias)
/// add nothing, or +inf with smoothing, as in the reference.
#[test]
fn edge_cases_match_the_reference() {
    for (name, gpu) in both_kernels() {
        let h = logits(6, 5, 1.0, 41);
        let w = logits(40, 5, 1.0, 42);
        let ignored = Labels::new([-100i64; 6], 40, -100).unwrap();
        for (case, opts) in option_cases(40) {
            check_case(
                gpu,
                (&h, &w, None),
                &ignored,
                &opts,
                &format!("{name} all ignored, {case}"),
            );
        }
        let (hl, wl) = (logits(9, 4, 30.0, 61), logits(300, 4, 30.0, 62));
        let y = labels(9, 300, 4, 63);
        for (case, opts) in option_cases(300) {
            check_case(
                gpu,
                (&hl, &wl, None),
                &y,
                &opts,
                &format!("{name} logits near 1e3, {case}"),
            );
        }
        let h1 = array![[0.0f32]];
        let w1 = array![[1.0f32], [1.0], [1.0], [1.0]];
        let b1 = array![f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, 0.0];
        let y1 = Labels::new([2], 4, -100).unwrap();
        for smoothing in [0.0, 0.1] {
            let opts = LinearCrossEntropyOptions::default()
                .loss(CrossEntropyOptions::default().label_smoothing(smoothing));
            let (gh, gw) = (
                gpu.upload(h1.view()).unwrap(),
                gpu.upload(w1.view()).unwrap(),
            );
            let gb = gpu.upload_vector(b1.view()).unwrap();
            let gy = gpu.upload_labels(&y1).unwrap();
            let (loss, _) = gpu
                .linear_cross_entropy(&gh, &gw, Some(&gb), &gy, &opts, false)
                .unwrap();
            let want = cpu::linear_cross_entropy(h1.view(), w1.view(), Some(b1.view()), &y1, &opts)
                .unwrap();
            assert_loss(
                gpu.download_loss(&loss).unwrap(),
                want,
                &format!("{name} masked, smoothing {smoothing}"),
            );
        }
    }
}

/// W split over two contexts at a ragged class: each computes its shard's statistics, the
/// host merges them, each computes its gradients from the merged statistics; the loss and the
/// gradients are the unsharded ones. The device's own merge gives the same statistics.
#[test]
fn shards_over_two_contexts_give_the_unsharded_result() {
    let gpu = require_gpu!();
    let other = GpuContext::new().unwrap();
    let (n, d, v) = (23, 10, 517);
    let h = logits(n, d, 1.5, 51);
    let w = logits(v, d, 1.5, 52);
    let b = logits(1, v, 1.0, 53).row(0).to_owned();
    let y = labels(n, v, 4, 54);
    let cut = 200;
    for (case, opts) in option_cases(v).into_iter().step_by(2) {
        let on = |g: &GpuContext, r: std::ops::Range<usize>| {
            (
                g.upload(h.view()).unwrap(),
                g.upload(w.slice(s![r.clone(), ..])).unwrap(),
                g.upload_vector(b.slice(s![r])).unwrap(),
                g.upload_labels(&y).unwrap(),
            )
        };
        let (h0, w0, b0, y0) = on(gpu, 0..cut);
        let (h1, w1, b1, y1) = on(&other, cut..v);
        let shard0 = GpuShard {
            classifier: &w0,
            bias: Some(&b0),
            first_class: 0,
        };
        let shard1 = GpuShard {
            classifier: &w1,
            bias: Some(&b1),
            first_class: cut,
        };
        let s0 = gpu.linear_shard_stats(&h0, &shard0, &y0, &opts).unwrap();
        let s1 = other.linear_shard_stats(&h1, &shard1, &y1, &opts).unwrap();
        let merged = gpu
            .download_shard_stats(&s0)
            .unwrap()
            .merge(&other.download_shard_stats(&s1).unwrap())
            .unwrap();
        let (m0, m1) = (
            gpu.upload_shard_stats(&merged).unwrap(),
            other.upload_shard_stats(&merged).unwrap(),
        );
        let loss = gpu.linear_loss_from_stats(&m0, &y0, &opts).unwrap();
        let want =
            cpu::linear_cross_entropy(h.view(), w.view(), Some(b.view()), &y, &opts).unwrap();
        assert_loss(
            gpu.download_loss(&loss).unwrap(),
            want,
            &format!("two contexts, {case}"),
        );
        let g0 = gpu
            .linear_shard_grads(&h0, &shard0, &y0, &opts, &m0)
            .unwrap();
        let g1 = other
            .linear_shard_grads(&h1, &shard1, &y1, &opts, &m1)
            .unwrap();
        let want =
            cpu::linear_cross_entropy_grad(h.view(), w.view(), Some(b.view()), &y, &opts).unwrap();
        let dh = gpu.download(&g0.hidden).unwrap() + other.download(&g1.hidden).unwrap();
        let mut dw = gpu.download(&g0.classifier).unwrap();
        dw.append(
            ndarray::Axis(0),
            other.download(&g1.classifier).unwrap().view(),
        )
        .unwrap();
        let mut db = gpu
            .download_vector(g0.bias.as_ref().unwrap())
            .unwrap()
            .to_vec();
        db.extend(other.download_vector(g1.bias.as_ref().unwrap()).unwrap());
        let got = cpu::LinearGrads {
            hidden: dh,
            classifier: dw,
            bias: Some(Array1::from(db)),
        };
        assert_grads_close(&got, &want, GPU_TOL, &case);

        // The device's merge of two shards on one context, in either order.
        let (h2, w2, b2, _) = on(gpu, cut..v);
        let shard2 = GpuShard {
            classifier: &w2,
            bias: Some(&b2),
            first_class: cut,
        };
        let s2 = gpu.linear_shard_stats(&h2, &shard2, &y0, &opts).unwrap();
        for on_device in [
            gpu.merge_shard_stats(&s0, &s2).unwrap(),
            gpu.merge_shard_stats(&s2, &s0).unwrap(),
        ] {
            let got = gpu.download_shard_stats(&on_device).unwrap();
            assert_eq!(got.classes, 0..v);
            for (g, w, what) in [
                (&got.max, &merged.max, "max"),
                (&got.sumexp, &merged.sumexp, "sumexp"),
                (&got.label_logit, &merged.label_logit, "label logit"),
                (&got.smooth, &merged.smooth, "smooth"),
            ] {
                assert_close(
                    g.view(),
                    w.view(),
                    1e-5,
                    1e-5,
                    &format!("{case}: device merge {what}"),
                );
            }
        }
    }
}

/// Two runs give the same bits: no atomics, every sum in a fixed order.
#[test]
fn two_runs_give_the_same_bits() {
    let gpu = require_gpu!();
    let (h, w) = (logits(33, 17, 1.0, 71), logits(700, 17, 1.0, 72));
    let y = labels(33, 700, 5, 73);
    let opts = LinearCrossEntropyOptions::default()
        .loss(
            CrossEntropyOptions::default()
                .label_smoothing(0.1)
                .z_loss(1e-4),
        )
        .softcap(5.0);
    let (gh, gw, gy) = (
        gpu.upload(h.view()).unwrap(),
        gpu.upload(w.view()).unwrap(),
        gpu.upload_labels(&y).unwrap(),
    );
    let run = || {
        let (loss, g) = gpu
            .linear_cross_entropy(&gh, &gw, None, &gy, &opts, true)
            .unwrap();
        let g = g.unwrap();
        (
            gpu.download_loss(&loss).unwrap(),
            gpu.download(&g.hidden).unwrap(),
            gpu.download(&g.classifier).unwrap(),
        )
    };
    let (a, b) = (run(), run());
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
}

/// Bad inputs are errors naming the op and the values.
#[test]
fn bad_inputs_are_errors() {
    let gpu = require_gpu!();
    let h = gpu.upload(logits(4, 3, 1.0, 1).view()).unwrap();
    let w = gpu.upload(logits(5, 3, 1.0, 2).view()).unwrap();
    let w_narrow = gpu.upload(logits(5, 2, 1.0, 2).view()).unwrap();
    let y = gpu
        .upload_labels(&Labels::new([0, 1, 2, 4], 5, -100).unwrap())
        .unwrap();
    let y6 = gpu
        .upload_labels(&Labels::new([0, 1, 2, 4], 6, -100).unwrap())
        .unwrap();
    let opts = LinearCrossEntropyOptions::default();
    fn err<T: std::fmt::Debug>(r: softmax_ce::Result<T>) -> String {
        r.unwrap_err().to_string()
    }
    let e = err(gpu.linear_cross_entropy(&h, &w_narrow, None, &y, &opts, false));
    assert!(
        e.contains("linear_cross_entropy") && e.contains("a classifier of 3 columns"),
        "{e}"
    );
    let e = err(gpu.linear_cross_entropy(&h, &w, None, &y6, &opts, false));
    assert!(
        e.contains("a classifier of 5 rows for labels of 6 classes"),
        "{e}"
    );
    let short = gpu.upload_vector(Array1::zeros(4).view()).unwrap();
    let e = err(gpu.linear_cross_entropy(&h, &w, Some(&short), &y, &opts, false));
    assert!(e.contains("a bias of 5 values"), "{e}");
    let e = err(gpu.linear_cross_entropy(
        &h,
        &w,
        None,
        &y,
        &LinearCrossEntropyOptions::default().softcap(-1.0),
        false,
    ));
    assert!(e.contains("softcap -1"), "{e}");
    let shard = GpuShard {
        classifier: &w,
        bias: None,
        first_class: 3,
    };
    let e = err(gpu.linear_shard_stats(&h, &shard, &y, &opts));
    assert!(
        e.contains("a shard of classes 3..8 of a vocabulary of 5"),
        "{e}"
    );
    let part = GpuShard {
        classifier: &w,
        bias: None,
        first_class: 0,
    };
    let stats = gpu.linear_shard_stats(&h, &part, &y6, &opts).unwrap();
    let e = err(gpu.linear_loss_from_stats(&stats, &y6, &opts));
    assert!(
        e.contains("statistics of classes 0..5 of a vocabulary of 6"),
        "{e}"
    );
    let e = err(gpu.merge_shard_stats(&stats, &stats));
    assert!(e.contains("only adjacent shards merge"), "{e}");
}
