//! Softmax-regression training: the GPU path against the CPU path, epoch by epoch, and bad
//! options as errors.

mod common;

use common::*;
use ndarray::{Array2, s};
use softmax_ce::train::{Backend, EpochMetrics, SoftmaxRegression, TrainOptions};
use softmax_ce::{Device, Error, GpuContext, Labels};

/// `rows` points in `features` dimensions around one random centre per class, with labels
/// cycling through the classes.
fn blobs(rows: usize, features: usize, classes: usize, seed: u64) -> (Array2<f32>, Labels) {
    let centres = logits(classes, features, 1.0, seed);
    let noise = logits(rows, features, 0.8, seed + 1);
    let ys: Vec<i64> = (0..rows)
        .map(|i| ((i * 7 + i / 3) % classes) as i64)
        .collect();
    let mut x = noise;
    for (mut row, &y) in x.rows_mut().into_iter().zip(&ys) {
        row += &centres.row(y as usize);
    }
    (x, Labels::new(ys, classes, -100).unwrap())
}

/// Losses agree to float32 rounding accumulated over the epochs; an error rate may differ by
/// a row or two whose two largest logits are within rounding of each other.
fn assert_same_epoch(gpu: &EpochMetrics, cpu: &EpochMetrics, rows: (usize, usize), case: &str) {
    let close = |a: f32, b: f32, what: &str| {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{case} epoch {}: {what} gpu {a} cpu {b}",
            cpu.epoch
        );
    };
    close(gpu.train_loss, cpu.train_loss, "train loss");
    let rows_apart = |a: f32, b: f32, n: usize| ((a - b).abs() * n as f32).round() as usize;
    assert!(
        rows_apart(gpu.train_err, cpu.train_err, rows.0) <= 2,
        "{case} epoch {}: train error gpu {} cpu {}",
        cpu.epoch,
        gpu.train_err,
        cpu.train_err
    );
    match (gpu.test_loss, cpu.test_loss, gpu.test_err, cpu.test_err) {
        (Some(gl), Some(cl), Some(ge), Some(ce)) => {
            close(gl, cl, "test loss");
            assert!(
                rows_apart(ge, ce, rows.1) <= 2,
                "{case}: test error {ge} vs {ce}"
            );
        }
        (None, None, None, None) => {}
        other => panic!("{case}: test metrics present on one device only: {other:?}"),
    }
}

fn train_both(gpu: &GpuContext, opts: TrainOptions, epochs: usize, case: &str) {
    let (x, y) = blobs(1000, 40, 7, 3);
    let (xt, yt) = blobs(300, 40, 7, 3);
    let train = (x.view(), &y);
    let test = Some((xt.view(), &yt));
    let mut on_gpu = SoftmaxRegression::new(gpu, train, test, opts.clone()).unwrap();
    let mut on_cpu = SoftmaxRegression::new(&Device::Cpu, train, test, opts).unwrap();
    for _ in 0..epochs {
        let g = on_gpu.fit_epoch().unwrap();
        let c = on_cpu.fit_epoch().unwrap();
        assert_same_epoch(&g, &c, (1000, 300), case);
    }
    let (tg, tc) = (on_gpu.theta().unwrap(), on_cpu.theta().unwrap());
    assert_close(tg.view(), tc.view(), 1e-4, 1e-3, &format!("{case}: theta"));
    // Predictions and evaluation agree too.
    assert_eq!(
        on_gpu.predict(xt.view()).unwrap(),
        on_cpu.predict(xt.view()).unwrap()
    );
    let (gl, ge) = on_gpu.evaluate(xt.view(), &yt).unwrap();
    let (cl, ce) = on_cpu.evaluate(xt.view(), &yt).unwrap();
    assert!(
        (gl - cl).abs() < 1e-4 && (ge - ce).abs() < 0.01,
        "{case}: evaluate"
    );
}

/// The CPU, and the shared GPU context when there is one.
fn backends() -> Vec<Backend<'static>> {
    let mut all = vec![Backend::Cpu];
    all.extend(common::gpu().map(Backend::Gpu));
    all
}

#[test]
fn gpu_epochs_match_cpu_epochs() {
    let gpu = require_gpu!();
    train_both(gpu, TrainOptions::default().lr(0.5).batch(50), 4, "plain");
}

#[test]
fn bias_l2_and_shuffle_match_cpu() {
    let gpu = require_gpu!();
    let opts = TrainOptions::default()
        .lr(0.3)
        .batch(64) // 1000 rows: the last partial batch is dropped
        .bias(true)
        .l2(0.01)
        .shuffle(Some(7));
    train_both(gpu, opts, 3, "bias+l2+shuffle");
}

/// Every kernel configuration, including 4 KiB bindings that cut each batch into row windows.
#[test]
fn every_configuration_trains_alike() {
    for (name, gpu) in configs() {
        let (x, y) = blobs(200, 9, 3, 11);
        let opts = TrainOptions::default().lr(0.5).batch(20);
        let mut on_gpu = SoftmaxRegression::new(gpu, (x.view(), &y), None, opts.clone()).unwrap();
        let mut on_cpu = SoftmaxRegression::new(&Device::Cpu, (x.view(), &y), None, opts).unwrap();
        for _ in 0..3 {
            let (g, c) = (on_gpu.fit_epoch().unwrap(), on_cpu.fit_epoch().unwrap());
            assert_same_epoch(&g, &c, (200, 0), name);
        }
    }
}

/// The fused two-dispatch step at every class count around its vec4 groups and its limit of
/// 16, and the three-dispatch step past it (17 and 20 classes, and a theta over the 64 KiB
/// uniform binding; seven dispatches where its products pack textures), all against the CPU,
/// on the texture kernels and the storage-buffer ones.
#[test]
fn both_step_paths_match_cpu_at_every_class_count() {
    for (name, gpu) in both_kernels() {
        step_paths_match_cpu(name, gpu);
    }
}

fn step_paths_match_cpu(name: &str, gpu: &GpuContext) {
    let cases = [
        (1, 5, 2),
        (2, 5, 2),
        (3, 6, 2),
        (4, 7, 2),
        (5, 3, 2),
        (8, 9, 2),
        (9, 4, 2),
        (12, 13, 2),
        (13, 2, 2),
        (16, 11, 2),
        (17, 6, 3),
        (20, 5, 3),
        (15, 1100, 3), // 16,500 floats of theta: over one uniform binding
    ];
    for (classes, features, dispatches) in cases {
        let case = format!("{name}: {classes} classes, {features} features");
        let (x, y) = blobs(230, features, classes, classes as u64);
        let (xt, yt) = blobs(70, features, classes, 99);
        let opts = TrainOptions::default()
            .lr(0.4)
            .batch(23)
            .bias(features % 2 == 0);
        let train = (x.view(), &y);
        let test = Some((xt.view(), &yt));
        let mut on_gpu = SoftmaxRegression::new(gpu, train, test, opts.clone()).unwrap();
        let mut on_cpu = SoftmaxRegression::new(&Device::Cpu, train, test, opts).unwrap();
        // The three-dispatch step's products each pack their operands first on the texture
        // kernel (two more dispatches per product).
        let dispatches = match dispatches {
            3 if gpu.texture_kernels() => 7,
            d => d,
        };
        assert_eq!(on_gpu.dispatches_per_step(), Some(dispatches), "{case}");
        assert_eq!(on_cpu.dispatches_per_step(), None);
        for _ in 0..2 {
            let (g, c) = (on_gpu.fit_epoch().unwrap(), on_cpu.fit_epoch().unwrap());
            assert_same_epoch(&g, &c, (230, 70), &case);
        }
        let (tg, tc) = (on_gpu.theta().unwrap(), on_cpu.theta().unwrap());
        assert_close(tg.view(), tc.view(), 1e-4, 1e-3, &format!("{case}: theta"));
    }
}

/// Evaluation over more rows than one pack dispatch or one loss dispatch covers along y
/// (65,535 workgroups of 32 rows): the packing is cut in two, the loss kernel's workgroups
/// fold into a second dimension.
#[test]
fn evaluation_past_one_dispatch_of_rows_agrees() {
    let gpu = require_gpu!();
    let (x, y) = blobs(300, 1, 2, 11);
    let opts = TrainOptions::default().lr(0.5).batch(50);
    let train = (x.view(), &y);
    let mut on_gpu = SoftmaxRegression::new(gpu, train, None, opts.clone()).unwrap();
    let mut on_cpu = SoftmaxRegression::new(&Device::Cpu, train, None, opts).unwrap();
    on_gpu.fit_epoch().unwrap();
    on_cpu.fit_epoch().unwrap();
    let rows = 65_535 * 32 + 4_000;
    let (xe, ye) = blobs(rows, 1, 2, 12);
    let (gl, ge) = on_gpu.evaluate(xe.view(), &ye).unwrap();
    let (cl, ce) = on_cpu.evaluate(xe.view(), &ye).unwrap();
    assert!(
        (gl - cl).abs() <= 1e-4 * cl.abs().max(1.0),
        "loss gpu {gl} cpu {cl}"
    );
    assert!(
        ((ge - ce).abs() * rows as f32) <= 2.0,
        "error gpu {ge} cpu {ce}"
    );
}

/// Rows of 64 features are 256 bytes, which go into a texture by a copy instead of the pack
/// kernel: the whole data set for the fused step (10 classes), and each batch's rows in the
/// texture matmul of the three-dispatch step (20 classes).
#[test]
fn rows_of_256_bytes_train_alike() {
    for ((name, gpu), classes) in both_kernels().into_iter().flat_map(|c| [(c, 10), (c, 20)]) {
        let name = &format!("{name}, {classes} classes");
        let (x, y) = blobs(230, 64, classes, 5);
        let opts = TrainOptions::default().lr(0.4).batch(23);
        let train = (x.view(), &y);
        let mut on_gpu = SoftmaxRegression::new(gpu, train, None, opts.clone()).unwrap();
        let mut on_cpu = SoftmaxRegression::new(&Device::Cpu, train, None, opts).unwrap();
        for _ in 0..2 {
            let (g, c) = (on_gpu.fit_epoch().unwrap(), on_cpu.fit_epoch().unwrap());
            assert_same_epoch(&g, &c, (230, 0), name);
        }
        let (tg, tc) = (on_gpu.theta().unwrap(), on_cpu.theta().unwrap());
        assert_close(tg.view(), tc.view(), 1e-4, 1e-3, &format!("{name}: theta"));
    }
}

/// More training rows than the tallest texture: the texture kernels' data is packed in
/// panels side by side, and a batch straddles the first panel's end (rows 16,300 to 16,400 on
/// lavapipe's 16,384). Also more rows than a 4 KiB binding on the `windows` context, so the
/// packing runs in windows there.
#[test]
fn data_taller_than_a_texture_trains_alike() {
    for (name, gpu) in configs() {
        let rows = gpu.limits().max_texture_dimension_2d as usize + 116;
        let (x, y) = blobs(rows, 6, 3, 7);
        let opts = TrainOptions::default().lr(0.3).batch(100);
        let train = (x.view(), &y);
        let mut on_gpu = SoftmaxRegression::new(gpu, train, None, opts.clone()).unwrap();
        let mut on_cpu = SoftmaxRegression::new(&Device::Cpu, train, None, opts).unwrap();
        let (g, c) = (on_gpu.fit_epoch().unwrap(), on_cpu.fit_epoch().unwrap());
        assert_same_epoch(&g, &c, (rows, 0), &format!("{name}: {rows} rows"));
        let (tg, tc) = (on_gpu.theta().unwrap(), on_cpu.theta().unwrap());
        assert_close(tg.view(), tc.view(), 1e-4, 1e-3, &format!("{name}: theta"));
    }
}

/// The seed's first step by hand: theta = 0 gives uniform probabilities, so
/// theta = -lr/B X^T (1/k - I_y).
#[test]
fn the_first_step_is_the_seed_formula() {
    let x = ndarray::array![[1.0f32, 2.0], [3.0, -1.0]];
    let y = Labels::new([0, 1], 2, -100).unwrap();
    let opts = TrainOptions::default().lr(0.5).batch(2);
    let z_minus_i = ndarray::array![[-0.5f32, 0.5], [0.5, -0.5]];
    let want = x.t().dot(&z_minus_i) * (-0.5 / 2.0);
    for device in backends() {
        let mut model = SoftmaxRegression::new(device, (x.view(), &y), None, opts.clone()).unwrap();
        model.fit_epoch().unwrap();
        assert_close(
            model.theta().unwrap().view(),
            want.view(),
            1e-7,
            1e-6,
            &format!("{device:?}"),
        );
    }
}

#[test]
fn progress_reports_every_batch_on_the_cpu_and_reaches_the_end_on_the_gpu() {
    let (x, y) = blobs(1000, 5, 3, 1);
    let opts = TrainOptions::default().batch(7);
    for device in backends() {
        let mut model = SoftmaxRegression::new(device, (x.view(), &y), None, opts.clone()).unwrap();
        assert_eq!(model.batches_per_epoch(), 142);
        let mut seen = Vec::new();
        model
            .fit_epoch_with_progress(|done, total| seen.push((done, total)))
            .unwrap();
        assert_eq!(seen.last(), Some(&(142, 142)), "{device:?}");
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "{device:?}: {seen:?}"
        );
        assert_eq!(model.epochs(), 1);
    }
}

#[test]
fn bad_options_and_data_are_errors() {
    let (x, y) = blobs(10, 3, 2, 1);
    let train = (x.view(), &y);
    let new =
        |opts: TrainOptions| SoftmaxRegression::new(&Device::Cpu, train, None, opts).unwrap_err();

    let err = new(TrainOptions::default().batch(0));
    assert!(err.to_string().contains("batch 0"), "{err}");
    let err = new(TrainOptions::default().batch(11));
    assert!(
        err.to_string().contains("batch 11") && err.to_string().contains("10"),
        "{err}"
    );
    let err = new(TrainOptions::default().batch(5).lr(f32::NAN));
    assert!(err.to_string().contains("learning rate NaN"), "{err}");
    let err = new(TrainOptions::default().batch(5).l2(-1.0));
    assert!(err.to_string().contains("L2 strength -1"), "{err}");

    let short = y.slice(0..9).unwrap();
    let err = SoftmaxRegression::new(
        &Device::Cpu,
        (x.view(), &short),
        None,
        TrainOptions::default().batch(5),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape { op: "train", .. }), "{err}");

    let wide = Array2::<f32>::zeros((4, 5));
    let yt = Labels::new([0, 1, 0, 1], 2, -100).unwrap();
    let err = SoftmaxRegression::new(
        &Device::Cpu,
        train,
        Some((wide.view(), &yt)),
        TrainOptions::default().batch(5),
    )
    .unwrap_err();
    assert!(err.to_string().contains("features"), "{err}");

    let three = Labels::new([0, 1, 2, 1], 3, -100).unwrap();
    let narrow = x.slice(s![..4, ..]);
    let err = SoftmaxRegression::new(
        &Device::Cpu,
        train,
        Some((narrow, &three)),
        TrainOptions::default().batch(5),
    )
    .unwrap_err();
    assert!(err.to_string().contains("classes"), "{err}");

    let ignored = Labels::new([0, -100, 1, 0, 1, 0, 1, 0, 1, 0], 2, -100).unwrap();
    let err = SoftmaxRegression::new(
        &Device::Cpu,
        (x.view(), &ignored),
        None,
        TrainOptions::default().batch(5),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ignored"), "{err}");

    let model = SoftmaxRegression::new(&Device::Cpu, train, None, TrainOptions::default().batch(5))
        .unwrap();
    let err = model.predict(wide.view()).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "predict", .. }), "{err}");
}

/// Three epochs on the first 2,000 bundled training digits, evaluated on the 2,000 test digits,
/// on the GPU and the CPU. The seed's numpy code (scripts/seed_train.py, same slice, lr 0.2,
/// batch 100) ends at test loss 0.5741972 and test error 0.134 (268 digits): both devices must
/// land there (to float32 rounding, and within two digits). The error must also be below 0.2:
/// chance is 0.9, and a gradient with the wrong sign, label or scale stays near chance or
/// diverges, while 0.2 leaves room above the 0.134 the algorithm reaches.
#[test]
fn bundled_digits_train_like_the_seed_on_both_devices() {
    let data = softmax_ce::data::digits().unwrap();
    let labels = |set: &softmax_ce::data::Dataset, rows: std::ops::Range<usize>| {
        Labels::new(
            set.y.slice(s![rows]).iter().map(|&v| i64::from(v)),
            set.classes,
            -100,
        )
        .unwrap()
    };
    let test = data.test.as_ref().unwrap();
    let (x, y) = (
        data.train.x.slice(s![..2000, ..]),
        labels(&data.train, 0..2000),
    );
    let (xt, yt) = (test.x.view(), labels(test, 0..test.x.nrows()));
    for backend in backends() {
        let opts = TrainOptions::default().lr(0.2).batch(100);
        let mut model = SoftmaxRegression::new(backend, (x, &y), Some((xt, &yt)), opts).unwrap();
        let mut last = None;
        for _ in 0..3 {
            last = Some(model.fit_epoch().unwrap());
        }
        let m = last.unwrap();
        let (loss, err) = (m.test_loss.unwrap(), m.test_err.unwrap());
        assert!(
            (loss - 0.574_197_2).abs() < 1e-4,
            "{backend:?}: test loss {loss}"
        );
        assert!(
            (err * 2000.0 - 268.0).abs() <= 2.0,
            "{backend:?}: test error {err}"
        );
        assert!(err < 0.2, "{backend:?}: test error {err}");
    }
}

/// An epoch of SGD reads nothing back from the device; its evaluation reads back once.
#[test]
fn an_epoch_reads_back_only_its_metrics() {
    let shared = require_gpu!();
    // A context of its own: the shared one counts the other tests' readbacks too.
    let gpu = &GpuContext::from_device(shared.device().clone(), shared.queue().clone()).unwrap();
    let (x, y) = blobs(1000, 20, 4, 5);
    let (xt, yt) = blobs(200, 20, 4, 6);
    let opts = TrainOptions::default().batch(10); // 100 batches, two submissions
    let mut model =
        SoftmaxRegression::new(gpu, (x.view(), &y), Some((xt.view(), &yt)), opts).unwrap();
    let before = gpu.readbacks();
    model.sgd_epoch().unwrap();
    assert_eq!(gpu.readbacks(), before, "the SGD steps read back");
    model.fit_epoch().unwrap();
    assert_eq!(
        gpu.readbacks(),
        before + 1,
        "an epoch with metrics reads back once"
    );
}

/// The CPU epoch cuts each batch into a fixed number of parts that run in parallel: one thread
/// or several, odd batches (parts of unequal length) or not, the same bits.
#[test]
fn cpu_epochs_give_the_same_bits_on_any_number_of_threads() {
    let (x, y) = blobs(700, 37, 10, 9);
    for batch in [1, 7, 100] {
        let opts = TrainOptions::default().batch(batch).l2(0.01);
        let thetas: Vec<Array2<f32>> = [1, 2, 3]
            .iter()
            .map(|&threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let mut model =
                        SoftmaxRegression::new(&Device::Cpu, (x.view(), &y), None, opts.clone())
                            .unwrap();
                    model.fit_epoch().unwrap();
                    model.fit_epoch().unwrap();
                    model.theta().unwrap()
                })
            })
            .collect();
        for t in &thetas[1..] {
            assert_eq!(t, &thetas[0], "batch {batch}");
        }
    }
}

/// `f16` training data: every feature rounded to f16 once, held and read as f16 on the device
/// (the fused step's kernels, the texture packing, and the three-dispatch step's widening
/// into f32), and every sum in f32. The device computes exactly what it computes on the
/// rounded values in f32, so the two give the same bits; the CPU trains on the same rounded
/// values. Both step paths, shuffled rewrites of the f16 rows, and an evaluation in two chunks
/// of widened rows.
#[test]
fn f16_data_trains_as_f32_on_the_rounded_values() {
    use softmax_ce::DType;
    for (name, gpu) in both_kernels() {
        if !gpu.device().features().contains(wgpu::Features::SHADER_F16) {
            eprintln!("SKIPPED f16 training on {name}: no SHADER_F16");
            continue;
        }
        // (classes, features, training rows, dispatches per step on the storage kernels)
        for (classes, features, rows, dispatches) in [
            (3, 9, 230, 2),
            (16, 11, 230, 2),
            (17, 6, 230, 4),
            (20, 5, 4500, 4),
        ] {
            let case =
                format!("{name}: f16 data, {classes} classes, {features} features, {rows} rows");
            let (x, y) = blobs(rows, features, classes, classes as u64);
            let (xt, yt) = blobs(70, features, classes, 5);
            let rounded = |x: &Array2<f32>| x.mapv(|v| softmax_ce::f16::from_f32(v).to_f32());
            assert_ne!(rounded(&x), x, "{case}: the data are not all f16 already");
            let opts = TrainOptions::default()
                .lr(0.4)
                .batch(23)
                .bias(true)
                .shuffle(Some(classes as u64));
            let half = opts.clone().dtype(DType::F16);
            let (xr, xtr) = (rounded(&x), rounded(&xt));
            let mut on_half =
                SoftmaxRegression::new(gpu, (x.view(), &y), Some((xt.view(), &yt)), half.clone())
                    .unwrap();
            let mut on_rounded =
                SoftmaxRegression::new(gpu, (xr.view(), &y), Some((xtr.view(), &yt)), opts)
                    .unwrap();
            let mut on_cpu =
                SoftmaxRegression::new(&Device::Cpu, (x.view(), &y), Some((xt.view(), &yt)), half)
                    .unwrap();
            // One more dispatch per batch where the products widen the f16 rows first (then,
            // on the texture kernels, pack their operands as for f32).
            let want = match dispatches {
                4 if gpu.texture_kernels() => 8,
                d => d,
            };
            assert_eq!(on_half.dispatches_per_step(), Some(want), "{case}");
            for _ in 0..2 {
                let h = on_half.fit_epoch().unwrap();
                let r = on_rounded.fit_epoch().unwrap();
                let c = on_cpu.fit_epoch().unwrap();
                let bits = |m: &EpochMetrics| {
                    [
                        m.train_loss,
                        m.train_err,
                        m.test_loss.unwrap(),
                        m.test_err.unwrap(),
                    ]
                    .map(f32::to_bits)
                };
                assert_eq!(
                    bits(&h),
                    bits(&r),
                    "{case}: f16 rows against their f32 values"
                );
                assert_same_epoch(&h, &c, (rows, 70), &case);
            }
            assert_eq!(
                on_half.theta().unwrap(),
                on_rounded.theta().unwrap(),
                "{case}: theta"
            );
            let (th, tc) = (on_half.theta().unwrap(), on_cpu.theta().unwrap());
            assert_close(
                th.view(),
                tc.view(),
                1e-4,
                1e-3,
                &format!("{case}: theta on the CPU"),
            );
        }
    }
}

/// A feature that does not fit f16 is an error naming it, on either device; the logistic
/// trainer refuses f16.
#[test]
fn f16_data_out_of_range_is_an_error() {
    use softmax_ce::DType;
    let (mut x, y) = blobs(40, 3, 2, 1);
    x[[7, 2]] = 7e4;
    let opts = TrainOptions::default().batch(10).dtype(DType::F16);
    for backend in backends() {
        let e = SoftmaxRegression::new(backend, (x.view(), &y), None, opts.clone()).unwrap_err();
        assert!(
            e.to_string().contains(
                "the training set holds 70000 at row 7, column 2: past f16's range (65504)"
            ),
            "{e}"
        );
    }
    let targets = ndarray::Array1::from_shape_fn(40, |i| (i % 2) as f32);
    let e = softmax_ce::logistic::LogisticRegression::new(
        &Device::Cpu,
        (x.view(), targets.view()),
        None,
        opts,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the logistic trainer holds its data in f32"),
        "{e}"
    );
}
