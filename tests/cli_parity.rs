//! `eval bce-with-logits` on logits of any shape with `--weight` and `--pos-weight`, and `eval
//! cross-entropy` on N-d logits `(N, C, d1, ..., dk)` and on one unbatched row, on both devices:
//! outputs in PyTorch's shapes, equal to the library's reference.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{devices, fails_with, ok, run};
use common::*;
use ndarray::{ArrayD, IxDyn, array};
use rand::Rng;
use softmax_ce::{BceOptions, CrossEntropyOptions, Reduction, cpu, npy};

fn scratch(name: &str) -> PathBuf {
    common::cli::scratch(&format!("parity_{name}"))
}

fn random(shape: &[usize], seed: u64, f: impl Fn(f32) -> f32) -> ArrayD<f32> {
    let mut r = rng(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| f(r.random_range(-1.0f32..1.0)))
}

fn write(dir: &Path, name: &str, a: &ArrayD<f32>) -> String {
    let path = dir.join(name);
    npy::write_f32(&path, a.view()).unwrap();
    path.to_str().unwrap().to_string()
}

/// Integer labels of any shape, as int64 or uint8.
fn write_labels(dir: &Path, name: &str, y: &ArrayD<i64>, as_u8: bool) -> String {
    use npyz::WriterBuilder;
    let path = dir.join(name);
    let shape: Vec<u64> = y.shape().iter().map(|&d| d as u64).collect();
    let file = std::fs::File::create(&path).unwrap();
    if as_u8 {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(file)
            .begin_nd()
            .unwrap();
        w.extend(y.iter().map(|&v| v as u8)).unwrap();
        w.finish().unwrap();
    } else {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(file)
            .begin_nd()
            .unwrap();
        w.extend(y.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    path.to_str().unwrap().to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A 1-D vector of logits with 0/1 targets (logistic regression), and a 3-D array with
/// broadcast weights, on both devices and every reduction.
#[test]
fn eval_bce_any_shape_with_weights() {
    let dir = scratch("bce");
    let cases: Vec<(Vec<usize>, Vec<usize>, Vec<usize>)> = vec![
        // (logits, weight, pos_weight)
        (vec![37], vec![37], vec![1]),
        (vec![2, 3, 5], vec![2, 1, 1], vec![5]),
        (vec![4, 6], vec![], vec![6]),
    ];
    for (i, (shape, w_shape, pw_shape)) in cases.iter().enumerate() {
        let z = random(shape, i as u64, |v| 6.0 * v);
        let t = random(shape, 10 + i as u64, |v| if v > 0.0 { 1.0 } else { 0.0 });
        let w = random(w_shape, 20 + i as u64, |v| 1.0 + v / 2.0);
        let pw = random(pw_shape, 30 + i as u64, |v| 2.0 + v);
        let (zs, ts) = (write(&dir, "z.npy", &z), write(&dir, "t.npy", &t));
        let (ws, pws) = (write(&dir, "w.npy", &w), write(&dir, "pw.npy", &pw));
        for device in devices() {
            for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                let case = format!("{shape:?} {device} {reduction}");
                let (out, grad_out) = (dir.join("l.npy"), dir.join("g.npy"));
                ok(&args(&[
                    "eval",
                    "bce-with-logits",
                    "--logits",
                    &zs,
                    "--targets",
                    &ts,
                    "--weight",
                    &ws,
                    "--pos-weight",
                    &pws,
                    "--reduction",
                    reduction.as_str(),
                    "--out",
                    out.to_str().unwrap(),
                    "--grad-out",
                    grad_out.to_str().unwrap(),
                    "--device",
                    device,
                ]));
                let opts = BceOptions::default()
                    .reduction(reduction)
                    .weight(w.clone())
                    .pos_weight(pw.clone());
                let want = cpu::bce_with_logits_nd(z.view(), t.view(), &opts).unwrap();
                let got = npy::read_f32(&out).unwrap();
                assert_eq!(got.shape(), want.shape(), "{case}");
                assert_close(got.view(), want.view(), 1e-5, 2e-5, &case);
                let want = cpu::bce_with_logits_nd_grad(z.view(), t.view(), &opts).unwrap();
                let got = npy::read_f32(&grad_out).unwrap();
                assert_eq!(got.shape(), shape.as_slice(), "{case} grad");
                assert_close(got.view(), want.view(), 1e-6, 2e-5, &format!("{case} grad"));
            }
        }
    }
}

#[test]
fn eval_bce_bad_weights_are_one_line_errors() {
    let dir = scratch("bce_bad");
    let z = write(&dir, "z.npy", &random(&[3, 4], 1, |v| v));
    let w = write(&dir, "w.npy", &random(&[3], 2, |v| v));
    let bad = write(&dir, "bad.npy", &array![1.0f32, f32::INFINITY].into_dyn());
    let t = write(&dir, "t.npy", &random(&[4, 3], 3, |v| v));
    let base = |extra: &[&str]| {
        let mut a = args(&[
            "eval",
            "bce-with-logits",
            "--logits",
            &z,
            "--out",
            dir.join("o.npy").to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        a.extend(args(extra));
        a
    };
    fails_with(
        &base(&["--targets", &z, "--weight", &w]),
        &["bce_with_logits", "weight of shape [3]", "[3, 4]"],
    );
    fails_with(
        &base(&["--targets", &z, "--pos-weight", &bad]),
        &["bce_with_logits", "pos_weight inf at index [1]"],
    );
    fails_with(
        &base(&["--targets", &t]),
        &["bce_with_logits", "[3, 4]", "[4, 3]"],
    );
}

/// Per-pixel cross-entropy: logits (N, C, H, W) and labels (N, H, W) of two integer dtypes,
/// with every option, through both devices; `none` has the labels' shape and the gradient the
/// logits'.
#[test]
fn eval_cross_entropy_nd() {
    let dir = scratch("ce_nd");
    let shape = [2, 5, 3, 4];
    let x = random(&shape, 1, |v| 4.0 * v);
    let mut r = rng(2);
    let y = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |_| {
        if r.random_bool(0.2) {
            255
        } else {
            r.random_range(0..5)
        }
    });
    let w = random(&[5], 3, |v| 1.0 + v / 2.0);
    let (xs, ws) = (write(&dir, "x.npy", &x), write(&dir, "w.npy", &w));
    for (as_u8, ys) in [
        (false, write_labels(&dir, "y64.npy", &y, false)),
        (true, write_labels(&dir, "y8.npy", &y, true)),
    ] {
        for device in devices() {
            for reduction in [Reduction::None, Reduction::Mean] {
                let case = format!("u8={as_u8} {device} {reduction}");
                let (out, grad_out) = (dir.join("l.npy"), dir.join("g.npy"));
                ok(&args(&[
                    "eval",
                    "cross-entropy",
                    "--logits",
                    &xs,
                    "--labels",
                    &ys,
                    "--weight",
                    &ws,
                    "--ignore-index",
                    "255",
                    "--label-smoothing",
                    "0.1",
                    "--z-loss",
                    "0.001",
                    "--reduction",
                    reduction.as_str(),
                    "--out",
                    out.to_str().unwrap(),
                    "--grad-out",
                    grad_out.to_str().unwrap(),
                    "--device",
                    device,
                ]));
                let opts = CrossEntropyOptions::default()
                    .reduction(reduction)
                    .weight(w.clone().into_dimensionality().unwrap())
                    .label_smoothing(0.1)
                    .z_loss(1e-3);
                let want = cpu::cross_entropy_nd(x.view(), y.view(), 255, &opts).unwrap();
                let got = npy::read_f32(&out).unwrap();
                assert_eq!(got.shape(), want.shape(), "{case}");
                assert_close(got.view(), want.view(), LOG_ABS, 1e-4, &case);
                let want = cpu::cross_entropy_nd_grad(x.view(), y.view(), 255, &opts).unwrap();
                let got = npy::read_f32(&grad_out).unwrap();
                assert_eq!(got.shape(), &shape, "{case} grad");
                assert_close(got.view(), want.view(), 1e-6, 1e-4, &format!("{case} grad"));
            }
        }
    }
    // Probability targets of the logits' shape.
    let mut t = x.mapv(f32::exp);
    let sums = t.sum_axis(ndarray::Axis(1)).insert_axis(ndarray::Axis(1));
    t /= &sums;
    let ts = write(&dir, "t.npy", &t);
    for device in devices() {
        let out = dir.join("soft.npy");
        ok(&args(&[
            "eval",
            "cross-entropy",
            "--logits",
            &xs,
            "--targets",
            &ts,
            "--reduction",
            "none",
            "--out",
            out.to_str().unwrap(),
            "--device",
            device,
        ]));
        let opts = CrossEntropyOptions::default().reduction(Reduction::None);
        let want = cpu::cross_entropy_soft_nd(x.view(), t.view(), &opts).unwrap();
        let got = npy::read_f32(&out).unwrap();
        assert_eq!(got.shape(), &[2, 3, 4]);
        assert_close(
            got.view(),
            want.view(),
            LOG_ABS,
            1e-4,
            &format!("soft {device}"),
        );
    }
    // Labels of the wrong shape: one line naming both shapes.
    let wrong = write_labels(&dir, "wrong.npy", &ArrayD::zeros(IxDyn(&[2, 4, 3])), false);
    fails_with(
        &args(&[
            "eval",
            "cross-entropy",
            "--logits",
            &xs,
            "--labels",
            &wrong,
            "--out",
            dir.join("o.npy").to_str().unwrap(),
            "--device",
            "cpu",
        ]),
        &["cross_entropy", "[2, 3, 4]", "[2, 4, 3]"],
    );
}

/// One unbatched row of C logits with a 0-d label, as PyTorch accepts: a 0-d loss even for
/// `none`, and a gradient of shape (C,).
#[test]
fn eval_cross_entropy_one_row() {
    let dir = scratch("ce_row");
    let x = array![1.0f32, 2.0, 0.5].into_dyn();
    let xs = write(&dir, "x.npy", &x);
    let ys = write_labels(&dir, "y.npy", &ndarray::arr0(1i64).into_dyn(), false);
    for device in devices() {
        let (out, grad_out) = (dir.join("l.npy"), dir.join("g.npy"));
        ok(&args(&[
            "eval",
            "cross-entropy",
            "--logits",
            &xs,
            "--labels",
            &ys,
            "--reduction",
            "none",
            "--out",
            out.to_str().unwrap(),
            "--grad-out",
            grad_out.to_str().unwrap(),
            "--device",
            device,
        ]));
        let got = npy::read_f32(&out).unwrap();
        assert_eq!(got.ndim(), 0, "{device}");
        let lse = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
        assert!((got[[]] as f64 - (lse - 2.0)).abs() < 1e-5, "{device}");
        let g = npy::read_f32(&grad_out).unwrap();
        assert_eq!(g.shape(), &[3], "{device}");
        assert!(
            (g[[1]] as f64 - ((2.0 - lse).exp() - 1.0)).abs() < 1e-5,
            "{device}"
        );
    }
}

/// `train --loss bce`: logistic regression on 0/1 labels from .npy files, the same numbers on
/// both devices and as the library's, JSON per epoch, weights saved as a column.
#[test]
fn train_logistic_regression() {
    use softmax_ce::logistic::LogisticRegression;
    use softmax_ce::train::TrainOptions;
    let dir = scratch("train_bce");
    let x = random(&[60, 4], 1, |v| v);
    let y: ArrayD<i64> = x
        .map_axis(ndarray::Axis(1), |r| i64::from(r[0] - r[2] > 0.0))
        .into_dyn();
    let tx = random(&[15, 4], 2, |v| v);
    let ty: ArrayD<i64> = tx
        .map_axis(ndarray::Axis(1), |r| i64::from(r[0] - r[2] > 0.0))
        .into_dyn();
    let (xs, ys) = (
        write(&dir, "x.npy", &x),
        write_labels(&dir, "y.npy", &y, true),
    );
    let (txs, tys) = (
        write(&dir, "tx.npy", &tx),
        write_labels(&dir, "ty.npy", &ty, false),
    );
    let x2: ndarray::Array2<f32> = x.clone().into_dimensionality().unwrap();
    let yf = y
        .mapv(|v| v as f32)
        .into_dimensionality::<ndarray::Ix1>()
        .unwrap();
    let opts = TrainOptions::default().lr(0.5).batch(8).bias(true);
    let mut want =
        LogisticRegression::new(&softmax_ce::Device::Cpu, (x2.view(), yf.view()), None, opts)
            .unwrap();
    let want: Vec<f32> = (0..3)
        .map(|_| want.fit_epoch().unwrap().train_loss)
        .collect();
    for device in devices() {
        let theta = dir.join(format!("w-{device}.npy"));
        let out = run(&args(&[
            "train",
            "--loss",
            "bce",
            "--train-x",
            &xs,
            "--train-y",
            &ys,
            "--test-x",
            &txs,
            "--test-y",
            &tys,
            "--epochs",
            "3",
            "--lr",
            "0.5",
            "--batch",
            "8",
            "--bias",
            "--json",
            "--device",
            device,
            "--save-theta",
            theta.to_str().unwrap(),
        ]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let losses: Vec<f32> = stdout
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(v["test_err"].is_number(), "{l}");
                v["train_loss"].as_f64().unwrap() as f32
            })
            .collect();
        assert_eq!(losses.len(), 3, "{stdout}");
        for (g, w) in losses.iter().zip(&want) {
            assert_close_scalar(*g, *w, 1e-5, 1e-4, device);
        }
        assert_eq!(npy::read_f32(&theta).unwrap().shape(), &[5, 1]);
    }
    let bad = write_labels(&dir, "bad.npy", &y.mapv(|v| v * 2), false);
    fails_with(
        &args(&[
            "train",
            "--loss",
            "bce",
            "--train-x",
            &xs,
            "--train-y",
            &bad,
            "--device",
            "cpu",
        ]),
        &["0/1 labels", "label 2"],
    );
}

/// float16 `eval` beyond 2-D logits and for the backward passes, on both devices: N-d logits
/// `(N, C, d1, d2)` give a float32 loss and a float16 gradient of the logits' shape, the backward
/// passes a float16 result, each the CPU reference's own f16 result (the GPU within one f16
/// step); inputs of two precisions are an error naming both.
#[test]
fn eval_runs_float16_nd_cross_entropy_and_backward_passes() {
    use softmax_ce::f16;
    use softmax_ce::npy::{NpyArray, read_array, write_f16};
    let dir = scratch("f16_nd");
    let half = |path: &Path| match read_array(path).unwrap() {
        NpyArray::F16(a) => a.mapv(f16::to_f32),
        NpyArray::F32(_) => panic!("{path:?} is float32, not float16"),
    };
    let write16 = |name: &str, a: &ArrayD<f16>| {
        let path = dir.join(name);
        write_f16(&path, a.view()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let x = random(&[2, 5, 3, 4], 31, |v| v * 8.0).mapv(f16::from_f32);
    let xs = write16("x.npy", &x);
    let y = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
        let k = i[0] * 12 + i[1] * 4 + i[2];
        if k % 7 == 3 { -100 } else { (k % 5) as i64 }
    });
    let ys = write_labels(&dir, "y.npy", &y, false);
    let opts = CrossEntropyOptions::default().label_smoothing(0.1);
    let want_loss = cpu::cross_entropy_nd(x.view(), y.view(), -100, &opts).unwrap();
    let want_grad = cpu::cross_entropy_nd_grad(x.view(), y.view(), -100, &opts)
        .unwrap()
        .mapv(f16::to_f32);
    let p = cpu::softmax(
        random(&[6, 37], 32, |v| v * 4.0)
            .into_dimensionality()
            .unwrap()
            .view(),
    )
    .unwrap()
    .mapv(f16::from_f32);
    let lp = p.mapv(|v| f16::from_f32(v.to_f32().ln()));
    let dy = random(&[6, 37], 33, |v| v).mapv(f16::from_f32);
    let dy2 = dy.clone().into_dimensionality().unwrap();
    let (ps, lps, dys) = (
        write16("p.npy", &p.clone().into_dyn()),
        write16("lp.npy", &lp.clone().into_dyn()),
        write16("dy.npy", &dy),
    );
    let backward = [
        (
            "softmax-backward",
            "--probs",
            &ps,
            cpu::softmax_backward(p.view(), dy2.view()),
        ),
        (
            "log-softmax-backward",
            "--log-probs",
            &lps,
            cpu::log_softmax_backward(lp.view(), dy2.view()),
        ),
    ];
    for device in devices() {
        let (out, grad_out) = (dir.join("l.npy"), dir.join("g.npy"));
        ok(&args(&[
            "eval",
            "cross-entropy",
            "--logits",
            &xs,
            "--labels",
            &ys,
            "--label-smoothing",
            "0.1",
            "--out",
            out.to_str().unwrap(),
            "--grad-out",
            grad_out.to_str().unwrap(),
            "--device",
            device,
        ]));
        let got = npy::read_f32(&out).unwrap();
        assert_eq!(got.ndim(), 0, "{device}: a mean is 0-d");
        assert_close_scalar(got[[]], want_loss[[]], LOSS_ABS, LOSS_REL, device);
        let got = half(&grad_out);
        assert_eq!(got.shape(), x.shape(), "{device}");
        assert_close(
            got.view(),
            want_grad.view(),
            1.2e-7,
            2e-3,
            &format!("nd gradient on {device}"),
        );
        for (op, flag, input, want) in &backward {
            ok(&args(&[
                "eval",
                op,
                flag,
                input,
                "--upstream",
                &dys,
                "--out",
                out.to_str().unwrap(),
                "--device",
                device,
            ]));
            let want = want.as_ref().unwrap().mapv(f16::to_f32).into_dyn();
            assert_close(
                half(&out).view(),
                want.view(),
                1.2e-7,
                2e-3,
                &format!("{op} on {device}"),
            );
        }
    }
    let dy32 = write(&dir, "dy32.npy", &random(&[6, 37], 34, |v| v));
    let never = dir.join("never.npy");
    fails_with(
        &args(&[
            "eval",
            "softmax-backward",
            "--probs",
            &ps,
            "--upstream",
            &dy32,
            "--out",
            never.to_str().unwrap(),
        ]),
        &["--upstream: float32 upstream gradients for float16 inputs (--probs)"],
    );
    assert!(!never.exists(), "a failed command wrote its output");
}

/// `eval linear-cross-entropy` on both devices, in one vocabulary shard or three (on the GPU,
/// three contexts): the loss and the three gradients equal the library's reference.
#[test]
fn eval_linear_cross_entropy_matches_the_reference_in_any_number_of_shards() {
    use softmax_ce::{Labels, LinearCrossEntropyOptions};
    let dir = scratch("linear_ce");
    let (n, d, v) = (11, 6, 29);
    let h = random(&[n, d], 41, |x| x);
    let w = random(&[v, d], 42, |x| x);
    let b = random(&[v], 43, |x| x / 2.0);
    let cw = random(&[v], 44, |x| x.abs() + 0.5);
    let y = ArrayD::from_shape_fn(IxDyn(&[n]), |i| {
        if i[0] == 4 {
            -100
        } else {
            (i[0] * 7 % v) as i64
        }
    });
    let (hs, ws, bs, cws) = (
        write(&dir, "h.npy", &h),
        write(&dir, "w.npy", &w),
        write(&dir, "b.npy", &b),
        write(&dir, "cw.npy", &cw),
    );
    let ys = write_labels(&dir, "y.npy", &y, false);
    let h2 = h.clone().into_dimensionality().unwrap();
    let w2 = w.clone().into_dimensionality().unwrap();
    let b1 = b.clone().into_dimensionality().unwrap();
    let labels = Labels::new(y.iter().copied(), v, -100).unwrap();
    let loss_opts = CrossEntropyOptions::default()
        .label_smoothing(0.1)
        .z_loss(0.01)
        .weight(cw.clone().into_dimensionality().unwrap());
    let opts = LinearCrossEntropyOptions::default()
        .loss(loss_opts)
        .softcap(3.0);
    let want = cpu::linear_cross_entropy(h2.view(), w2.view(), Some(b1.view()), &labels, &opts)
        .unwrap()
        .scalar()
        .unwrap();
    let grads =
        cpu::linear_cross_entropy_grad(h2.view(), w2.view(), Some(b1.view()), &labels, &opts)
            .unwrap();
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();
    for (device, shards) in devices().into_iter().flat_map(|d| [(d, "1"), (d, "3")]) {
        ok(&args(&[
            "eval",
            "linear-cross-entropy",
            "--device",
            device,
            "--hidden",
            &hs,
            "--classifier",
            &ws,
            "--bias",
            &bs,
            "--labels",
            &ys,
            "--class-weight",
            &cws,
            "--label-smoothing",
            "0.1",
            "--z-loss",
            "0.01",
            "--softcap",
            "3",
            "--vocab-shards",
            shards,
            "--out",
            &out("l.npy"),
            "--grad-hidden",
            &out("dh.npy"),
            "--grad-classifier",
            &out("dw.npy"),
            "--grad-bias",
            &out("db.npy"),
        ]));
        let case = format!("{device}, {shards} shard(s)");
        let loss = npy::read_f32(Path::new(&out("l.npy"))).unwrap();
        assert_eq!(loss.ndim(), 0, "{case}: a mean is 0-d");
        assert_close_scalar(loss[[]], want, LOSS_ABS, LOSS_REL, &case);
        for (file, want) in [
            ("dh.npy", grads.hidden.view().into_dyn()),
            ("dw.npy", grads.classifier.view().into_dyn()),
            ("db.npy", grads.bias.as_ref().unwrap().view().into_dyn()),
        ] {
            let got = npy::read_f32(Path::new(&out(file))).unwrap();
            assert_close(got.view(), want, 1e-5, 2e-4, &format!("{case}: {file}"));
        }
    }
    let never = out("never.npy");
    let wide = write(&dir, "wide.npy", &random(&[v, d + 1], 45, |x| x));
    fails_with(
        &args(&[
            "eval",
            "linear-cross-entropy",
            "--hidden",
            &hs,
            "--classifier",
            &wide,
            "--labels",
            &ys,
            "--out",
            &never,
        ]),
        &["a classifier of 6 columns"],
    );
    let short_bias = write(&dir, "short_bias.npy", &random(&[v - 1], 46, |x| x));
    fails_with(
        &args(&[
            "eval",
            "linear-cross-entropy",
            "--hidden",
            &hs,
            "--classifier",
            &ws,
            "--bias",
            &short_bias,
            "--labels",
            &ys,
            "--out",
            &never,
        ]),
        &["--bias: 28 values for a classifier of 29 rows"],
    );
    assert!(
        !Path::new(&never).exists(),
        "a failed command wrote its output"
    );
}
