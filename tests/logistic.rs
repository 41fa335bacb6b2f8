//! Logistic-regression training (seed 002): an epoch against the seed's formulas in float64,
//! the GPU against the CPU over shapes around the vector and tile sizes, and bad input.

mod common;

use common::*;
use ndarray::{Array1, Array2, s};
use softmax_ce::logistic::LogisticRegression;
use softmax_ce::train::TrainOptions;
use softmax_ce::{Device, DeviceKind, Error};

/// Separable-ish data: the label is whether a fixed direction's projection plus noise is
/// positive.
fn data(rows: usize, features: usize, seed: u64) -> (Array2<f32>, Array1<f32>) {
    let x = logits(rows, features, 1.0, seed);
    let noise = logits(rows, 1, 0.3, seed + 1);
    let y = Array1::from_shape_fn(rows, |i| {
        let proj: f32 = x
            .row(i)
            .iter()
            .enumerate()
            .map(|(j, v)| v * (j as f32 - 1.5))
            .sum();
        if proj + noise[[i, 0]] > 0.0 { 1.0 } else { 0.0 }
    });
    (x, y)
}

/// `epochs` of the seed's step in f64: `w -= lr/B X_b^T (sigmoid(X_b w) - y_b)`, the last
/// partial batch dropped, a column of ones appended for the bias.
fn seed_epochs(
    x: &Array2<f32>,
    y: &Array1<f32>,
    lr: f64,
    batch: usize,
    bias: bool,
    epochs: usize,
) -> Vec<f64> {
    let d = x.ncols() + usize::from(bias);
    let row = |i: usize| -> Vec<f64> {
        let mut r: Vec<f64> = x.row(i).iter().map(|&v| v as f64).collect();
        if bias {
            r.push(1.0);
        }
        r
    };
    let mut w = vec![0.0f64; d];
    for _ in 0..epochs {
        for b in 0..x.nrows() / batch {
            let mut grad = vec![0.0f64; d];
            for i in b * batch..(b + 1) * batch {
                let xi = row(i);
                let z: f64 = xi.iter().zip(&w).map(|(a, b)| a * b).sum();
                let p = 1.0 / (1.0 + (-z).exp());
                for (g, &xv) in grad.iter_mut().zip(&xi) {
                    *g += (p - y[i] as f64) * xv;
                }
            }
            for (w, g) in w.iter_mut().zip(&grad) {
                *w -= lr * g / batch as f64;
            }
        }
    }
    w
}

/// Mean binary cross-entropy and error of `w` on `(x, y)`, in f64.
fn seed_metrics(x: &Array2<f32>, y: &Array1<f32>, w: &[f64], bias: bool) -> (f64, f64) {
    let (mut loss, mut wrong) = (0.0, 0.0);
    for i in 0..x.nrows() {
        let mut z: f64 = x.row(i).iter().zip(w).map(|(&a, b)| a as f64 * b).sum();
        if bias {
            z += w[w.len() - 1];
        }
        let p = 1.0 / (1.0 + (-z).exp());
        let t = y[i] as f64;
        loss -= t * p.ln() + (1.0 - t) * (1.0 - p).ln();
        wrong += f64::from(u8::from((z > 0.0) != (t > 0.5)));
    }
    (loss / x.nrows() as f64, wrong / x.nrows() as f64)
}

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    if gpu().is_some() {
        out.push(Device::select(Some(DeviceKind::Gpu)).unwrap().0);
    }
    out
}

#[test]
fn epochs_follow_the_seed_formulas_on_both_devices() {
    let (x, y) = data(53, 5, 1);
    let (tx, ty) = data(20, 5, 9);
    for device in devices() {
        for bias in [false, true] {
            let opts = TrainOptions::default().lr(0.5).batch(8).bias(bias);
            let mut model = LogisticRegression::new(
                &device,
                (x.view(), y.view()),
                Some((tx.view(), ty.view())),
                opts,
            )
            .unwrap();
            assert_eq!(model.batches_per_epoch(), 6);
            for epoch in 1..=3 {
                let m = model.fit_epoch().unwrap();
                let want = seed_epochs(&x, &y, 0.5, 8, bias, epoch);
                let got = model.weights().unwrap();
                let case = format!("{device} bias={bias} epoch {epoch}");
                assert_eq!(got.len(), want.len(), "{case}");
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5 * w.abs().max(1.0),
                        "{case}: {got} vs {want:?}"
                    );
                }
                let (loss, err) = seed_metrics(&x, &y, &want, bias);
                assert!(
                    (m.train_loss as f64 - loss).abs() < 1e-5,
                    "{case}: {} vs {loss}",
                    m.train_loss
                );
                assert!(
                    (m.train_err as f64 - err).abs() < 1e-6,
                    "{case}: {} vs {err}",
                    m.train_err
                );
                let (loss, err) = seed_metrics(&tx, &ty, &want, bias);
                assert!(
                    (m.test_loss.unwrap() as f64 - loss).abs() < 1e-5,
                    "{case} test"
                );
                assert!(
                    (m.test_err.unwrap() as f64 - err).abs() < 1e-6,
                    "{case} test"
                );
                assert_eq!(m.epoch, epoch);
            }
        }
    }
}

/// The GPU against the CPU over feature counts around the vector width and the product's
/// tiles, and batches of 1, odd and whole tiles.
#[test]
fn gpu_trains_like_cpu() {
    if gpu().is_none() {
        return;
    }
    let (gpu, _) = Device::select(Some(DeviceKind::Gpu)).unwrap();
    for (features, batch) in [
        (1, 1),
        (3, 7),
        (4, 64),
        (5, 65),
        (63, 10),
        (64, 100),
        (65, 33),
        (257, 50),
    ] {
        let (x, y) = data(300, features, features as u64);
        let opts = TrainOptions::default()
            .lr(0.3)
            .batch(batch)
            .bias(true)
            .l2(1e-3);
        let mut cpu =
            LogisticRegression::new(&Device::Cpu, (x.view(), y.view()), None, opts.clone())
                .unwrap();
        let mut gpu_model =
            LogisticRegression::new(&gpu, (x.view(), y.view()), None, opts).unwrap();
        for epoch in 0..2 {
            let (a, b) = (cpu.fit_epoch().unwrap(), gpu_model.fit_epoch().unwrap());
            let case = format!("{features} features, batch {batch}, epoch {epoch}");
            assert_close_scalar(b.train_loss, a.train_loss, 1e-5, 1e-4, &case);
        }
        let (a, b) = (cpu.weights().unwrap(), gpu_model.weights().unwrap());
        assert_close(
            b.view(),
            a.view(),
            1e-5,
            1e-4,
            &format!("{features} x {batch} weights"),
        );
    }
}

#[test]
fn bad_input_is_an_error() {
    let (x, mut y) = data(10, 3, 1);
    let ok = TrainOptions::default().batch(5);
    let err = LogisticRegression::new(&Device::Cpu, (x.view(), y.slice(s![..9])), None, ok.clone())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "train_logistic",
                ..
            }
        ),
        "{err}"
    );
    let err = LogisticRegression::new(
        &Device::Cpu,
        (x.view(), y.view()),
        None,
        ok.clone().batch(11),
    )
    .unwrap_err();
    assert!(err.to_string().contains("batch 11"), "{err}");
    let err = LogisticRegression::new(
        &Device::Cpu,
        (x.view(), y.view()),
        None,
        ok.clone().shuffle(Some(1)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("shuffl"), "{err}");
    y[4] = 2.0;
    let err = LogisticRegression::new(&Device::Cpu, (x.view(), y.view()), None, ok).unwrap_err();
    assert!(err.to_string().contains("target 2 at row 4"), "{err}");
}
