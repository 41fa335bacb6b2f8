//! The `softmax-ce` binary: the `eval` contract on both devices, and one-line errors with a
//! non-zero exit on bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::cli::{bin, devices, ok, run, scratch};
use common::*;
use ndarray::{Array1, ArrayD, IxDyn};
use softmax_ce::{CrossEntropyOptions, Labels, Reduction, cpu, npy};

/// The command fails with one line on stderr mentioning `needle`.
fn fails_with(args: &[&str], needle: &str) {
    common::cli::fails_with(args, &[needle]);
}

fn write_labels_i64(path: &Path, ys: &[i64]) {
    // npy::write_f32 writes floats only; labels go through npyz directly.
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[ys.len() as u64])
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(ys.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn write_labels_u8(path: &Path, ys: &[u8]) {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[ys.len() as u64])
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(ys.iter().copied()).unwrap();
    w.finish().unwrap();
}

#[test]
fn eval_row_ops_match_the_library() {
    let dir = scratch("eval_row_ops");
    let x = adversarial(23, 37, 5);
    let xp = dir.join("x.npy");
    npy::write_f32(&xp, x.view().into_dyn()).unwrap();
    let out = dir.join("out.npy");
    let (o, xs) = (out.to_str().unwrap(), xp.to_str().unwrap());
    for device in devices() {
        ok(&[
            "eval", "softmax", "--logits", xs, "--out", o, "--device", device,
        ]);
        let got = npy::read_matrix(&out, "out").unwrap();
        assert_close(
            got.view(),
            cpu::softmax(x.view()).unwrap().view(),
            PROB_ABS,
            PROB_REL,
            device,
        );
        ok(&[
            "eval",
            "log-softmax",
            "--logits",
            xs,
            "--out",
            o,
            "--device",
            device,
        ]);
        let got = npy::read_matrix(&out, "out").unwrap();
        assert_close(
            got.view(),
            cpu::log_softmax(x.view()).unwrap().view(),
            LOG_ABS,
            LOG_REL,
            device,
        );
        ok(&[
            "eval",
            "logsumexp",
            "--logits",
            xs,
            "--out",
            o,
            "--device",
            device,
        ]);
        let got = npy::read_vector(&out, "out").unwrap();
        assert_close(
            got.view(),
            cpu::logsumexp(x.view()).unwrap().view(),
            LOG_ABS,
            LOG_REL,
            device,
        );
    }
}

#[test]
fn eval_cross_entropy_shapes_and_gradients() {
    let dir = scratch("eval_ce");
    let x = logits(9, 4, 3.0, 8);
    let xp = dir.join("x.npy");
    npy::write_f32(&xp, x.view().into_dyn()).unwrap();
    let ys: Vec<i64> = vec![0, 3, -1, 2, 1, -1, 0, 0, 3];
    let yp = dir.join("y.npy");
    write_labels_i64(&yp, &ys);
    let labels = Labels::new(ys.iter().copied(), 4, -1).unwrap();
    let (lp, gp) = (dir.join("loss.npy"), dir.join("grad.npy"));
    for device in devices() {
        for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            ok(&[
                "eval",
                "cross-entropy",
                "--logits",
                xp.to_str().unwrap(),
                "--labels",
                yp.to_str().unwrap(),
                "--ignore-index",
                "-1",
                "--reduction",
                reduction.as_str(),
                "--out",
                lp.to_str().unwrap(),
                "--grad-out",
                gp.to_str().unwrap(),
                "--device",
                device,
            ]);
            let loss = npy::read_f32(&lp).unwrap();
            let opts = CrossEntropyOptions::default().reduction(reduction);
            let want = cpu::cross_entropy(x.view(), &labels, &opts)
                .unwrap()
                .into_array();
            // none: shape (N,); mean and sum: a 0-d array.
            assert_eq!(loss.shape(), want.shape(), "{device} {reduction}");
            assert_close(loss.view(), want.view(), LOSS_ABS, LOSS_REL, device);
            let grad = npy::read_matrix(&gp, "grad").unwrap();
            let want = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
            assert_close(grad.view(), want.view(), 1e-7, PROB_REL, device);
        }
    }
}

/// Labels of a narrow dtype and float64 logits are accepted and converted.
#[test]
fn eval_accepts_uint8_labels_and_float64_logits() {
    let dir = scratch("eval_dtypes");
    let x = logits(5, 3, 2.0, 1);
    let xp = dir.join("x64.npy");
    {
        use npyz::WriterBuilder;
        let f = std::fs::File::create(&xp).unwrap();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[5, 3])
            .writer(f)
            .begin_nd()
            .unwrap();
        w.extend(x.iter().map(|&v| v as f64)).unwrap();
        w.finish().unwrap();
    }
    let yp = dir.join("y8.npy");
    write_labels_u8(&yp, &[0, 1, 2, 1, 0]);
    let lp = dir.join("loss.npy");
    ok(&[
        "eval",
        "cross-entropy",
        "--logits",
        xp.to_str().unwrap(),
        "--labels",
        yp.to_str().unwrap(),
        "--out",
        lp.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let labels = Labels::new([0, 1, 2, 1, 0], 3, -100).unwrap();
    let want = cpu::cross_entropy(x.view(), &labels, &CrossEntropyOptions::default()).unwrap();
    let got = npy::read_f32(&lp).unwrap();
    assert_eq!(got, ArrayD::from_elem(IxDyn(&[]), want.scalar().unwrap()));
}

#[test]
fn bad_input_is_one_line_and_a_non_zero_exit() {
    let dir = scratch("eval_errors");
    let x = logits(4, 3, 1.0, 1);
    let xp = dir.join("x.npy");
    npy::write_f32(&xp, x.view().into_dyn()).unwrap();
    let (xs, out) = (xp.to_str().unwrap(), dir.join("o.npy"));
    let o = out.to_str().unwrap();

    fails_with(
        &[
            "eval",
            "softmax",
            "--logits",
            "/nonexistent/x.npy",
            "--out",
            o,
        ],
        "/nonexistent/x.npy",
    );

    let garbage = dir.join("garbage.npy");
    std::fs::write(&garbage, b"this is not numpy").unwrap();
    fails_with(
        &[
            "eval",
            "softmax",
            "--logits",
            garbage.to_str().unwrap(),
            "--out",
            o,
        ],
        "not a readable .npy",
    );

    let vector = dir.join("v.npy");
    npy::write_f32(&vector, Array1::<f32>::zeros(3).view().into_dyn()).unwrap();
    fails_with(
        &[
            "eval",
            "softmax",
            "--logits",
            vector.to_str().unwrap(),
            "--out",
            o,
        ],
        "2-D",
    );

    let ints = dir.join("ints.npy");
    write_labels_i64(&ints, &[1, 2, 3]);
    fails_with(
        &[
            "eval",
            "softmax",
            "--logits",
            ints.to_str().unwrap(),
            "--out",
            o,
        ],
        "is not float16, float32 or float64",
    );

    let labels = dir.join("y.npy");
    write_labels_i64(&labels, &[0, 1, 7, 2]);
    let ys = labels.to_str().unwrap();
    fails_with(
        &[
            "eval",
            "cross-entropy",
            "--logits",
            xs,
            "--labels",
            ys,
            "--out",
            o,
        ],
        "label 7 at row 2",
    );

    write_labels_i64(&labels, &[0, 1]);
    fails_with(
        &[
            "eval",
            "cross-entropy",
            "--logits",
            xs,
            "--labels",
            ys,
            "--out",
            o,
            "--device",
            "cpu",
        ],
        "4 labels",
    );

    let floats = vector.to_str().unwrap();
    fails_with(
        &[
            "eval",
            "cross-entropy",
            "--logits",
            xs,
            "--labels",
            floats,
            "--out",
            o,
        ],
        "integer dtype",
    );
    fails_with(
        &[
            "eval",
            "cross-entropy",
            "--logits",
            xs,
            "--labels",
            xs,
            "--out",
            o,
        ],
        "1-D integer array",
    );

    let zero = dir.join("zero.npy");
    npy::write_f32(
        &zero,
        ndarray::Array2::<f32>::zeros((3, 0)).view().into_dyn(),
    )
    .unwrap();
    fails_with(
        &[
            "eval",
            "softmax",
            "--logits",
            zero.to_str().unwrap(),
            "--out",
            o,
            "--device",
            "cpu",
        ],
        "class dimension",
    );

    fails_with(
        &[
            "eval",
            "softmax",
            "--logits",
            xs,
            "--out",
            "/nonexistent/dir/o.npy",
            "--device",
            "cpu",
        ],
        "/nonexistent/dir/o.npy",
    );
}

/// `--device gpu` on a machine with no adapter says how to get one (simulated by limiting wgpu
/// to a backend this platform does not have).
#[test]
fn gpu_without_an_adapter_says_how_to_get_one() {
    let dir = scratch("eval_no_gpu");
    let xp = dir.join("x.npy");
    npy::write_f32(&xp, logits(2, 2, 1.0, 1).view().into_dyn()).unwrap();
    let out = bin()
        .args(["eval", "softmax", "--logits", xp.to_str().unwrap(), "--out"])
        .arg(dir.join("o.npy"))
        .args(["--device", "gpu"])
        .env("WGPU_BACKEND", "dx12")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
    // Without --device the CPU takes over, and says so.
    let out = bin()
        .args(["eval", "softmax", "--logits", xp.to_str().unwrap(), "--out"])
        .arg(dir.join("o.npy"))
        .env("WGPU_BACKEND", "dx12")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("using cpu"));
}

#[test]
fn info_names_the_chosen_adapter() {
    let out = run(&["info"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("adapters seen by wgpu"), "{stdout}");
    if let Some(gpu) = gpu() {
        assert!(
            stdout.contains(&format!("chosen: {}", gpu.adapter_info().name)),
            "{stdout}"
        );
        assert!(
            stdout.contains("max_storage_buffer_binding_size"),
            "{stdout}"
        );
        let kernel = if gpu.texture_kernels() {
            "matmul kernel: matmul_tex.wgsl"
        } else {
            "matmul kernel: matmul.wgsl"
        };
        assert!(stdout.contains(kernel), "{stdout}");
    }
}

/// `train --json`: one JSON object per epoch with the documented keys, nothing else on stdout;
/// both devices print the same losses.
#[test]
fn train_prints_one_json_object_per_epoch() {
    let dir = scratch("train_json");
    let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
    let xs = logits(300, 12, 1.0, 4);
    npy::write_f32(&x, xs.view().into_dyn()).unwrap();
    let ys: Vec<i64> = (0..300).map(|i| i % 3).collect();
    write_labels_i64(&y, &ys);
    let mut losses = Vec::new();
    for device in devices() {
        let theta = dir.join(format!("theta-{device}.npy"));
        let out = run(&[
            "train",
            "--train-x",
            x.to_str().unwrap(),
            "--train-y",
            y.to_str().unwrap(),
            "--epochs",
            "2",
            "--batch",
            "50",
            "--json",
            "--device",
            device,
            "--save-theta",
            theta.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line["epoch"], i + 1);
            for key in ["train_loss", "train_err", "seconds"] {
                assert!(line[key].is_number(), "{key} in {line}");
            }
            assert!(
                line["test_loss"].is_null() && line["test_err"].is_null(),
                "{line}"
            );
        }
        losses.push(lines[1]["train_loss"].as_f64().unwrap());
        let theta = npy::read_matrix(&theta, "theta").unwrap();
        assert_eq!(theta.dim(), (12, 3));
    }
    assert!(
        losses.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-5),
        "{losses:?}"
    );
}

/// `train --dtype f16`: the rows rounded to float16 once, the same losses on both devices, a
/// little off the float32 run's (the data were not all float16); a value past float16's range
/// is one error line.
#[test]
fn train_holds_its_data_in_f16_on_request() {
    let dir = scratch("train_f16");
    let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
    let xs = logits(300, 12, 1.0, 4);
    npy::write_f32(&x, xs.view().into_dyn()).unwrap();
    let ys: Vec<i64> = (0..300).map(|i| i % 3).collect();
    write_labels_i64(&y, &ys);
    let loss = |device: &str, dtype: &str| -> f64 {
        let out = run(&[
            "train",
            "--train-x",
            s(&x),
            "--train-y",
            s(&y),
            "--epochs",
            "2",
            "--batch",
            "50",
            "--json",
            "--device",
            device,
            "--dtype",
            dtype,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        last["train_loss"].as_f64().unwrap()
    };
    let f32_loss = loss("cpu", "f32");
    let halves: Vec<f64> = devices().iter().map(|d| loss(d, "f16")).collect();
    assert!(
        halves.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-5),
        "{halves:?}"
    );
    assert!(
        halves[0] != f32_loss && (halves[0] - f32_loss).abs() < 1e-2,
        "{halves:?} {f32_loss}"
    );

    let mut big = xs.clone();
    big[[5, 3]] = 1e5;
    let x_big = dir.join("x_big.npy");
    npy::write_f32(&x_big, big.view().into_dyn()).unwrap();
    fails_with(
        &[
            "train",
            "--train-x",
            s(&x_big),
            "--train-y",
            s(&y),
            "--dtype",
            "f16",
            "--device",
            "cpu",
        ],
        "holds 100000 at row 5, column 3: past f16's range (65504)",
    );
}

#[test]
fn train_rejects_bad_options_in_one_line() {
    let dir = scratch("train_bad");
    fails_with(
        &["train", "--epochs", "1", "--batch", "0", "--device", "cpu"],
        "batch 0",
    );
    fails_with(
        &[
            "train",
            "--mnist-dir",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        "train-images-idx3-ubyte",
    );
    fails_with(&["train", "--classes", "3", "--device", "cpu"], "--classes");
}

/// The JSON lines of a small `bench --json` on `device`, which must succeed.
fn small_bench(device: &str) -> Vec<serde_json::Value> {
    let out = run(&[
        "bench", "--json", "--device", device, "--shapes", "8x16", "--matmul", "4x5x6", "--linear",
        "4x3x10", "--epoch", "200x4x3", "--reps", "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `bench --quick --json`: an adapter object first, then rows with the documented keys.
#[test]
fn bench_json_keeps_its_keys() {
    let lines = small_bench("cpu");
    assert_eq!(lines[0]["op"], "adapter");
    let ops: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l["op"].as_str().unwrap())
        .collect();
    for op in [
        "softmax",
        "log_softmax",
        "cross_entropy_fwd_bwd",
        "matmul",
        "train_epoch",
    ] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    for line in &lines[1..] {
        for key in ["shape", "path", "median_ms", "min_ms", "max_ms"] {
            assert!(!line[key].is_null(), "{key} in {line}");
        }
    }
    let matmul = lines.iter().find(|l| l["op"] == "matmul").unwrap();
    assert_eq!(matmul["shape"], "4x5x6");
    assert!(matmul["gflops"].is_number());
    // The CPU's yardstick, its memcpy of the same bytes, and every CPU row of the shape held
    // to it.
    let copy = lines
        .iter()
        .find(|l| l["op"] == "copy" && l["path"] == "cpu")
        .expect("a CPU copy row");
    assert!(
        ["memcpy", "memcpy_per_thread"].contains(&copy["kernel"].as_str().unwrap()),
        "{copy}"
    );
    assert_eq!(copy["copy_ratio"], 1.0);
    for line in lines.iter().filter(|l| l["shape"] == "8x16") {
        assert!(line["copy_ratio"].is_number(), "{line}");
    }
    // The linear cross-entropy, blocked and materialised, each with the memory it holds.
    for path in ["cpu_vocab", "cpu_materialised"] {
        let row = lines
            .iter()
            .find(|l| l["op"] == "linear_cross_entropy_fwd_bwd" && l["path"] == path)
            .unwrap_or_else(|| panic!("no linear cross-entropy row on {path}"));
        assert_eq!(row["shape"], "4x3x10");
        assert!(row["peak_bytes"].as_u64().unwrap() > 0, "{row}");
    }
}

/// `bench --plot` and `train --plot` draw SVG pictures of their tables; a plot that cannot be
/// written fails the command before any work and leaves nothing behind.
#[test]
fn bench_and_train_draw_their_plots() {
    let dir = scratch("plots");
    let (bench_svg, train_svg) = (dir.join("bench.svg"), dir.join("train.svg"));
    ok(&[
        "bench",
        "--device",
        "cpu",
        "--shapes",
        "8x16",
        "--matmul",
        "4x5x6",
        "--linear",
        "4x3x10",
        "--epoch",
        "200x4x3",
        "--reps",
        "1",
        "--plot",
        s(&bench_svg),
    ]);
    let svg = std::fs::read_to_string(&bench_svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    for text in [
        "softmax 8x16",
        "cross_entropy_fwd_bwd 8x16",
        "matmul 4x5x6",
        "train_epoch 200x4x3",
        "linear_cross_entropy_fwd_bwd 4x3x10",
        "cpu_fast",
        "cpu_reference",
        "cpu copy of the bytes",
        "GB/s",
        "GFLOP/s",
    ] {
        assert!(svg.contains(text), "{text} missing from the bench plot");
    }
    ok(&[
        "train",
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--plot",
        s(&train_svg),
    ]);
    let svg = std::fs::read_to_string(&train_svg).unwrap();
    for text in [
        "train loss",
        "test loss",
        "train error",
        "test error",
        "epoch",
    ] {
        assert!(svg.contains(text), "{text} missing from the training plot");
    }
    let nowhere = dir.join("missing").join("p.svg");
    fails_with(
        &[
            "train",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--plot",
            s(&nowhere),
        ],
        "--plot",
    );
    fails_with(
        &["bench", "--device", "cpu", "--quick", "--plot", s(&nowhere)],
        "--plot",
    );
    assert!(!nowhere.exists());
}

/// On the GPU, `copy` is the fastest of the adapter's copies, named by its `kernel`, and the
/// row plumbing's copy is its own row; every GPU row is held to the fastest.
#[test]
fn bench_copy_rows_name_their_kernels() {
    if softmax_ce::GpuContext::new().is_err() && std::env::var("SOFTMAX_CE_REQUIRE_GPU").is_err() {
        eprintln!("SKIPPED: no adapter");
        return;
    }
    let lines = small_bench("gpu");
    let row = |path: &str| {
        lines
            .iter()
            .find(|l| l["op"] == "copy" && l["path"] == path)
            .unwrap_or_else(|| panic!("no copy row on path {path}"))
    };
    let fastest = row("gpu");
    assert!(
        ["copy_rows", "copy_flat", "copy_buffer_to_buffer"]
            .contains(&fastest["kernel"].as_str().unwrap()),
        "{fastest}"
    );
    assert_eq!(fastest["copy_ratio"], 1.0);
    assert_eq!(row("gpu_rows")["kernel"], "copy_rows");
    assert!(row("gpu_rows")["copy_ratio"].as_f64().unwrap() >= 1.0);
}

/// The backward ops and the logistic loss through `eval`, on every device, against the library's
/// CPU reference.
#[test]
fn eval_backward_and_bce() {
    let dir = scratch("eval_backward");
    let p = |n: &str| dir.join(n);
    let x = logits(6, 9, 3.0, 12);
    let dy = logits(6, 9, 1.0, 13);
    let probs = cpu::softmax(x.view()).unwrap();
    let log_probs = cpu::log_softmax(x.view()).unwrap();
    let targets = logits(6, 9, 0.5, 14).mapv(|v| v + 0.5);
    npy::write_f32(&p("p.npy"), probs.view().into_dyn()).unwrap();
    npy::write_f32(&p("lp.npy"), log_probs.view().into_dyn()).unwrap();
    npy::write_f32(&p("dy.npy"), dy.view().into_dyn()).unwrap();
    npy::write_f32(&p("x.npy"), x.view().into_dyn()).unwrap();
    npy::write_f32(&p("t.npy"), targets.view().into_dyn()).unwrap();
    let s = |path: &Path| path.to_str().unwrap().to_string();
    for device in devices() {
        let out = p(&format!("dx-{device}.npy"));
        ok(&[
            "eval",
            "softmax-backward",
            "--probs",
            &s(&p("p.npy")),
            "--upstream",
            &s(&p("dy.npy")),
            "--out",
            &s(&out),
            "--device",
            device,
        ]);
        let want = cpu::softmax_backward(probs.view(), dy.view()).unwrap();
        assert_close(
            npy::read_matrix(&out, "dx").unwrap().view(),
            want.view(),
            1e-6,
            1e-4,
            device,
        );

        ok(&[
            "eval",
            "log-softmax-backward",
            "--log-probs",
            &s(&p("lp.npy")),
            "--upstream",
            &s(&p("dy.npy")),
            "--out",
            &s(&out),
            "--device",
            device,
        ]);
        let want = cpu::log_softmax_backward(log_probs.view(), dy.view()).unwrap();
        assert_close(
            npy::read_matrix(&out, "dx").unwrap().view(),
            want.view(),
            1e-5,
            1e-4,
            device,
        );

        let (loss, grad) = (p(&format!("l-{device}.npy")), p(&format!("g-{device}.npy")));
        ok(&[
            "eval",
            "bce-with-logits",
            "--logits",
            &s(&p("x.npy")),
            "--targets",
            &s(&p("t.npy")),
            "--out",
            &s(&loss),
            "--grad-out",
            &s(&grad),
            "--device",
            device,
        ]);
        let got = npy::read_f32(&loss).unwrap();
        assert_eq!(got.ndim(), 0, "mean is a 0-d array");
        let want = cpu::bce_with_logits(x.view(), targets.view(), Reduction::Mean)
            .unwrap()
            .into_array();
        assert_close(got.view(), want.view(), 1e-6, 1e-5, device);
        let want = cpu::bce_with_logits_grad(x.view(), targets.view(), Reduction::Mean).unwrap();
        assert_close(
            npy::read_matrix(&grad, "g").unwrap().view(),
            want.view(),
            1e-7,
            1e-5,
            device,
        );
    }
    npy::write_f32(&p("narrow.npy"), logits(6, 4, 1.0, 1).view().into_dyn()).unwrap();
    fails_with(
        &[
            "eval",
            "softmax-backward",
            "--probs",
            &s(&p("p.npy")),
            "--upstream",
            &s(&p("narrow.npy")),
            "--out",
            &s(&p("o.npy")),
            "--device",
            "cpu",
        ],
        "softmax_backward",
    );
}

/// The loss-family options through `eval`: every bad value is one line naming it.
#[test]
fn eval_cross_entropy_options_reject_bad_values() {
    let dir = scratch("eval_options");
    let p = |n: &str| dir.join(n);
    let s = |path: &Path| path.to_str().unwrap().to_string();
    npy::write_f32(&p("x.npy"), logits(4, 3, 1.0, 1).view().into_dyn()).unwrap();
    npy::write_f32(&p("w2.npy"), ndarray::array![1.0f32, 2.0].view().into_dyn()).unwrap();
    npy::write_f32(&p("t.npy"), logits(4, 5, 1.0, 2).view().into_dyn()).unwrap();
    write_labels_i64(&p("y.npy"), &[0, 1, 2, 0]);
    let base = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "eval",
            "cross-entropy",
            "--logits",
            &s(&p("x.npy")),
            "--out",
            &s(&p("o.npy")),
            "--device",
            "cpu",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run_with = |extra: &[&str], needle: &str| {
        let args = base(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&refs, needle);
    };
    run_with(
        &["--labels", &s(&p("y.npy")), "--label-smoothing", "2"],
        "label smoothing 2",
    );
    run_with(
        &["--labels", &s(&p("y.npy")), "--weight", &s(&p("w2.npy"))],
        "3 class weights",
    );
    run_with(
        &["--labels", &s(&p("y.npy")), "--z-loss", "-1"],
        "z-loss strength -1",
    );
    run_with(&["--targets", &s(&p("t.npy"))], "targets of shape");
    // Labels and targets together are refused by the parser.
    let args = base(&["--labels", &s(&p("y.npy")), "--targets", &s(&p("t.npy"))]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
}

// === Issue 12: failure guarantees (atomic outputs, pipes, crafted input) ===

/// The one error line of a failed command (exit 1 or 2, never a panic or an abort).
fn error_line(args: &[&str]) -> String {
    error_line_of(&run(args), args)
}

fn error_line_of(out: &Output, args: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: status {:?}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("softmax-ce: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: want one error line:\n{stderr}");
    errors[0].to_string()
}

fn write_f64(path: &Path, shape: &[u64], values: &[f64]) {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(file)
        .begin_nd()
        .unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// A version-1 `.npy` file with `header` as its dictionary, then `data`.
fn write_npy_raw(path: &Path, header: &str, data: &[u8]) {
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// Every file in `dir` with its contents.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn float64_past_float32_is_an_error_naming_row_and_column() {
    let dir = scratch("f64_overflow");
    let xp = dir.join("x64.npy");
    let o = dir.join("o.npy");
    write_f64(&xp, &[1, 3], &[1e300, 0.0, -1.0]);
    let err = error_line(&[
        "eval",
        "softmax",
        "--logits",
        s(&xp),
        "--out",
        s(&o),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("x64.npy") && err.contains("row 0, column 0") && err.contains("1e300"),
        "{err}"
    );
    assert!(!o.exists());

    // -inf masks stay legal in float64 input.
    write_f64(&xp, &[2, 3], &[f64::NEG_INFINITY, 0.0, -1.0, 1.0, 2.0, 3.0]);
    ok(&[
        "eval",
        "softmax",
        "--logits",
        s(&xp),
        "--out",
        s(&o),
        "--device",
        "cpu",
    ]);
    let p = npy::read_matrix(&o, "p").unwrap();
    assert_eq!(p[[0, 0]], 0.0);
    assert!(p.iter().all(|v| v.is_finite()), "{p}");

    // Targets and class weights go through the same reader.
    let x = dir.join("x.npy");
    npy::write_f32(&x, logits(2, 3, 1.0, 3).view().into_dyn()).unwrap();
    let t = dir.join("t64.npy");
    write_f64(&t, &[2, 3], &[0.5, 0.5, 0.0, 0.0, 0.0, -1e39]);
    let err = error_line(&[
        "eval",
        "cross-entropy",
        "--logits",
        s(&x),
        "--targets",
        s(&t),
        "--out",
        s(&o),
    ]);
    assert!(
        err.contains("--targets") && err.contains("row 1, column 2"),
        "{err}"
    );
    let y = dir.join("y.npy");
    write_labels_i64(&y, &[0, 2]);
    let w = dir.join("w64.npy");
    write_f64(&w, &[3], &[1.0, 1e300, 1.0]);
    let err = error_line(&[
        "eval",
        "cross-entropy",
        "--logits",
        s(&x),
        "--labels",
        s(&y),
        "--weight",
        s(&w),
        "--out",
        s(&o),
    ]);
    assert!(err.contains("--weight") && err.contains("index 1"), "{err}");
}

#[test]
fn a_failing_command_replaces_none_of_its_outputs() {
    let dir = scratch("atomic_outputs");
    let x = dir.join("x.npy");
    npy::write_f32(&x, logits(4, 3, 1.0, 5).view().into_dyn()).unwrap();
    let y = dir.join("y.npy");
    write_labels_i64(&y, &[0, 1, 2, 1]);
    let bad_y = dir.join("bad_y.npy");
    write_labels_i64(&bad_y, &[0, 1, 7, 1]);
    let (loss, grad) = (dir.join("loss.npy"), dir.join("grad.npy"));
    std::fs::write(&loss, b"the old loss").unwrap();
    std::fs::write(&grad, b"the old gradient").unwrap();
    let before = snapshot(&dir);
    let ce = |labels: &Path, out: &str, grad_out: &str| {
        error_line(&[
            "eval",
            "cross-entropy",
            "--logits",
            s(&x),
            "--labels",
            s(labels),
            "--out",
            out,
            "--grad-out",
            grad_out,
            "--device",
            "cpu",
        ])
    };

    // --out fails after --grad-out was written: the gradient's old file stays.
    let err = ce(&y, "/dev/full", s(&grad));
    assert!(
        err.contains("--out") && err.contains("No space left"),
        "{err}"
    );
    assert_eq!(snapshot(&dir), before);
    // And the other way round.
    let err = ce(&y, s(&loss), "/dev/full");
    assert!(err.contains("--grad-out"), "{err}");
    assert_eq!(snapshot(&dir), before);
    // Bad input, found after the outputs were prepared.
    let err = ce(&bad_y, s(&loss), s(&grad));
    assert!(err.contains("label 7"), "{err}");
    assert_eq!(snapshot(&dir), before);
    // The same for a one-output op and for bce.
    let err = error_line(&[
        "eval",
        "softmax",
        "--logits",
        s(&y),
        "--out",
        s(&loss),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("dtype int64"), "{err}");
    let err = error_line(&[
        "eval",
        "bce-with-logits",
        "--logits",
        s(&x),
        "--targets",
        s(&x),
        "--out",
        s(&loss),
        "--grad-out",
        "/dev/full",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("--grad-out"), "{err}");
    assert_eq!(snapshot(&dir), before);

    // Success replaces both, and leaves no temporary behind.
    ok(&[
        "eval",
        "cross-entropy",
        "--logits",
        s(&x),
        "--labels",
        s(&y),
        "--out",
        s(&loss),
        "--grad-out",
        s(&grad),
        "--device",
        "cpu",
    ]);
    let after = snapshot(&dir);
    assert_eq!(after.len(), before.len(), "{:?}", after.keys());
    assert_eq!(npy::read_matrix(&grad, "grad").unwrap().dim(), (4, 3));
    assert_eq!(npy::read_f32(&loss).unwrap().ndim(), 0);
}

/// A write that fails part way (here at a 4 KiB file-size limit) used to leave a truncated
/// file where the old one was.
#[cfg(unix)]
#[test]
fn a_write_failing_part_way_leaves_the_old_file() {
    use std::os::unix::process::CommandExt;
    let dir = scratch("partial_write");
    let x = dir.join("x.npy");
    npy::write_f32(&x, logits(64, 64, 1.0, 6).view().into_dyn()).unwrap();
    let out = dir.join("out.npy");
    std::fs::write(&out, b"precious").unwrap();
    let before = snapshot(&dir);
    let mut cmd = bin();
    cmd.args([
        "eval",
        "softmax",
        "--logits",
        s(&x),
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]);
    // SAFETY: setrlimit and signal are async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let result = cmd.output().unwrap();
    let err = error_line_of(&result, &["eval", "softmax"]);
    assert!(err.contains("--out") && err.contains("too large"), "{err}");
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn an_output_that_is_an_input_or_another_output_is_refused() {
    let dir = scratch("same_file");
    let x = dir.join("x.npy");
    npy::write_f32(&x, logits(4, 3, 1.0, 7).view().into_dyn()).unwrap();
    let y = dir.join("y.npy");
    write_labels_i64(&y, &[0, 1, 2, 1]);
    let link = dir.join("hard.npy");
    std::fs::hard_link(&x, &link).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&x, dir.join("sym.npy")).unwrap();
    let before = snapshot(&dir);
    let other_spelling = dir.join(".").join("x.npy");
    let mut spellings = vec![x.clone(), other_spelling, link.clone()];
    #[cfg(unix)]
    spellings.push(dir.join("sym.npy"));
    for out in &spellings {
        let err = error_line(&["eval", "softmax", "--logits", s(&x), "--out", s(out)]);
        assert!(err.contains("--out") && err.contains("--logits"), "{err}");
    }
    let o = dir.join("o.npy");
    let err = error_line(&[
        "eval",
        "cross-entropy",
        "--logits",
        s(&x),
        "--labels",
        s(&y),
        "--out",
        s(&o),
        "--grad-out",
        s(&o),
    ]);
    assert!(err.contains("--grad-out") && err.contains("--out"), "{err}");
    let err = error_line(&[
        "eval",
        "cross-entropy",
        "--logits",
        s(&x),
        "--labels",
        s(&y),
        "--out",
        s(&y),
    ]);
    assert!(err.contains("--labels"), "{err}");
    let err = error_line(&[
        "train",
        "--train-x",
        s(&x),
        "--train-y",
        s(&y),
        "--save-theta",
        s(&link),
    ]);
    assert!(
        err.contains("--save-theta") && err.contains("--train-x"),
        "{err}"
    );
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn save_theta_is_checked_before_training_and_written_whole() {
    let dir = scratch("save_theta");
    let missing = dir.join("missing").join("theta.npy");
    let out = run(&[
        "train",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--save-theta",
        s(&missing),
    ]);
    let err = error_line_of(&out, &["train"]);
    assert!(err.contains("missing/theta.npy"), "{err}");
    // Refused before the data was read, let alone trained on.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("softmax-ce: data:"), "{stderr}");
    assert!(out.stdout.is_empty());

    let theta = dir.join("theta.npy");
    ok(&[
        "train",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--json",
        "--save-theta",
        s(&theta),
    ]);
    assert_eq!(npy::read_matrix(&theta, "theta").unwrap().dim(), (784, 10));
    assert_eq!(snapshot(&dir).len(), 1);
}

/// The write end of a pipe whose read end is already closed.
#[cfg(unix)]
fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly_with_status_141() {
    let cases: [&[&str]; 5] = [
        &["info"],
        &["train", "--json", "--epochs", "2", "--device", "cpu"],
        &["train", "--epochs", "1", "--device", "cpu"],
        &[
            "bench", "--json", "--device", "cpu", "--shapes", "8x16", "--matmul", "4x5x6",
            "--linear", "4x3x10", "--epoch", "200x8x3", "--reps", "1",
        ],
        &["--help"],
    ];
    for args in cases {
        let out = bin().args(args).stdout(closed_pipe()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("softmax-ce: error"), "{args:?}: {stderr}");
    }
    // A pipe closed after the first line, as `head -1` does.
    let mut child = bin()
        .args(["train", "--json", "--epochs", "50", "--device", "cpu"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.starts_with("{\"device\""), "{first}");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_is_one_error_line() {
    let cases: [&[&str]; 3] = [
        &["info"],
        &["train", "--json", "--epochs", "1", "--device", "cpu"],
        &[
            "bench", "--device", "cpu", "--shapes", "8x16", "--matmul", "4x5x6", "--linear",
            "4x3x10", "--epoch", "200x8x3", "--reps", "1",
        ],
    ];
    for args in cases {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = bin().args(args).stdout(full).output().unwrap();
        let err = error_line_of(&out, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            err.contains("standard output") && err.contains("No space left"),
            "{err}"
        );
    }
}

#[test]
fn crafted_npy_files_are_short_one_line_errors() {
    let dir = scratch("crafted_npy");
    let p = dir.join("c.npy");
    let o = dir.join("o.npy");
    let softmax = |path: &Path| {
        error_line(&[
            "eval",
            "softmax",
            "--logits",
            s(path),
            "--out",
            s(&o),
            "--device",
            "cpu",
        ])
    };
    // 27 bytes whose version-2 header claims 0xFFFFFFF0 bytes.
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes.resize(27, b' ');
    std::fs::write(&p, &bytes).unwrap();
    let err = softmax(&p);
    assert!(err.contains("4294967280") && err.contains("10000"), "{err}");

    // A malformed header is quoted, briefly.
    let junk = "z".repeat(9000);
    write_npy_raw(&p, &format!("{{'descr': '<f4', {junk}"), &[]);
    let err = softmax(&p);
    assert!(
        err.len() < 300 && err.contains("not a readable .npy"),
        "{err}"
    );

    // A shape that promises more than the file holds, before allocating it.
    write_npy_raw(
        &p,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
        &[0; 8],
    );
    let err = softmax(&p);
    assert!(
        err.contains("too large") || err.contains("data bytes"),
        "{err}"
    );

    // Dtypes by numpy's names.
    for (descr, name) in [("<i8", "int64"), ("|u1", "uint8")] {
        write_npy_raw(
            &p,
            &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1, 2), }}"),
            &[0; 16],
        );
        let err = softmax(&p);
        assert!(err.contains(&format!("dtype {name} ")), "{err}");
    }

    // The OS error is said once.
    let err = softmax(&dir.join("absent.npy"));
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn a_crafted_idx_header_is_an_error() {
    let dir = scratch("crafted_idx");
    // 16 bytes claiming 2^31 x 2^31 x 4 images: the product wrapped to 0 and panicked.
    let mut images = vec![0, 0, 8, 3];
    for d in [1u32 << 31, 1 << 31, 4] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 1, 3],
    )
    .unwrap();
    let err = error_line(&["train", "--mnist-dir", s(&dir), "--device", "cpu"]);
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("2^64"),
        "{err}"
    );
}

#[test]
fn bench_sizes_past_memory_are_one_line_errors() {
    for (flag, value) in [
        ("--shapes", "4294967297x1"),
        ("--shapes", "4294967296x4294967296"),
        ("--matmul", "100000x100000x100000"),
        ("--epoch", "1000000000x1000x1000"),
        ("--linear", "100000x100000x100000"),
        ("--shapes", "1x99999999999999999999"),
    ] {
        let err = error_line(&["bench", "--device", "cpu", flag, value]);
        assert!(err.contains(flag) && err.contains(value), "{err}");
    }
}

#[test]
fn arguments_fail_in_one_line_and_negative_numbers_reach_validation() {
    let err = error_line(&["train", "--epochs", "1", "--device", "cpu", "--l2", "-1"]);
    assert!(err.contains("L2 strength -1"), "{err}");
    // `--lr -0.5` parses as `--lr=-0.5` does.
    let losses = |lr: &[&str]| {
        let mut args = vec!["train", "--json", "--epochs", "1", "--device", "cpu"];
        args.extend_from_slice(lr);
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        v["train_loss"].as_f64().unwrap()
    };
    assert_eq!(losses(&["--lr", "-0.5"]), losses(&["--lr=-0.5"]));
    let err = error_line(&["train", "--batch", "-1"]);
    assert!(err.contains("'-1'") && err.contains("--batch"), "{err}");
    let err = error_line(&["eval", "softmax", "--bogus"]);
    assert!(err.contains("--bogus"), "{err}");
}

/// A bench shape past the adapter's largest buffer is refused before the CPU paths run it.
#[test]
fn bench_sizes_past_the_adapters_buffers_are_refused_first() {
    let Some(gpu) = gpu() else { return };
    let limit = gpu.limits().max_buffer_size;
    // The smallest square whose float32 array is over the limit.
    let n = ((limit / 4) as f64).sqrt() as u64 + 1;
    let fits_memory = softmax_ce::data::physical_memory().is_some_and(|m| n * n * 12 < m);
    if !fits_memory {
        eprintln!("SKIPPED: a {n}x{n} bench case would not fit this machine's memory");
        return;
    }
    let shape = format!("{n}x{n}");
    let err = error_line(&["bench", "--device", "gpu", "--shapes", &shape]);
    assert!(
        err.contains(&shape) && err.contains("largest buffer"),
        "{err}"
    );
}

/// `eval` on float16 logits, on both devices: softmax and log-softmax written in float16,
/// log-sum-exp and the loss in float32, the gradient in float16, each the CPU reference's own
/// f16 result (the GPU within one f16 step); float16 soft targets with float16 logits; a
/// float32 target for float16 logits is an error (N-d float16 logits: tests/cli_parity.rs).
#[test]
fn eval_runs_float16_logits_on_both_devices() {
    use softmax_ce::npy::{NpyArray, read_array, write_f16, write_f32};
    use softmax_ce::{CrossEntropyOptions, Labels, Loss, cpu, f16};
    let dir = scratch("eval_f16");
    let x = logits(9, 13, 6.0, 4).mapv(f16::from_f32);
    let xs = dir.join("x16.npy");
    write_f16(&xs, x.view().into_dyn()).unwrap();
    let y: Vec<i64> = (0..9)
        .map(|i| if i == 4 { -100 } else { (i * 5) % 13 })
        .collect();
    let ys = dir.join("y.npy");
    write_labels_i64(&ys, &y);
    let labels = Labels::new(y.clone(), 13, -100).unwrap();
    let half = |path: &std::path::Path| match read_array(path).unwrap() {
        NpyArray::F16(a) => a.into_dimensionality::<ndarray::Ix2>().unwrap(),
        NpyArray::F32(_) => panic!("{path:?} is float32, not float16"),
    };
    let single = |path: &std::path::Path| match read_array(path).unwrap() {
        NpyArray::F32(a) => a,
        NpyArray::F16(_) => panic!("{path:?} is float16, not float32"),
    };
    let near = |got: &ndarray::Array2<f16>, want: &ndarray::Array2<f16>, case: &str| {
        assert_close(
            got.mapv(f16::to_f32).view(),
            want.mapv(f16::to_f32).view(),
            1.2e-7,
            2e-3,
            case,
        )
    };
    for device in devices() {
        let out = dir.join(format!("p_{device}.npy"));
        for (op, want) in [
            ("softmax", cpu::softmax(x.view()).unwrap()),
            ("log-softmax", cpu::log_softmax(x.view()).unwrap()),
        ] {
            ok(&[
                "eval",
                op,
                "--logits",
                s(&xs),
                "--out",
                s(&out),
                "--device",
                device,
            ]);
            near(&half(&out), &want, &format!("{op} on {device}"));
        }
        ok(&[
            "eval",
            "logsumexp",
            "--logits",
            s(&xs),
            "--out",
            s(&out),
            "--device",
            device,
        ]);
        assert_close(
            single(&out)
                .into_dimensionality::<ndarray::Ix1>()
                .unwrap()
                .view(),
            cpu::logsumexp(x.view()).unwrap().view(),
            LOSS_ABS,
            LOSS_REL,
            &format!("logsumexp on {device}"),
        );
        let (loss, grad) = (dir.join("loss.npy"), dir.join("grad.npy"));
        ok(&[
            "eval",
            "cross-entropy",
            "--logits",
            s(&xs),
            "--labels",
            s(&ys),
            "--label-smoothing",
            "0.1",
            "--out",
            s(&loss),
            "--grad-out",
            s(&grad),
            "--device",
            device,
        ]);
        let opts = CrossEntropyOptions::default().label_smoothing(0.1);
        let Loss::Reduced(want) = cpu::cross_entropy(x.view(), &labels, &opts).unwrap() else {
            unreachable!()
        };
        let got = single(&loss);
        assert_eq!(got.ndim(), 0, "a mean is 0-d");
        assert_close_scalar(
            got.sum(),
            want,
            LOSS_ABS,
            LOSS_REL,
            &format!("loss on {device}"),
        );
        let want = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
        near(&half(&grad), &want, &format!("gradient on {device}"));
        // Soft targets in float16, like the logits.
        let t = cpu::softmax(logits(9, 13, 1.0, 8).view())
            .unwrap()
            .mapv(f16::from_f32);
        let ts = dir.join("t16.npy");
        write_f16(&ts, t.view().into_dyn()).unwrap();
        ok(&[
            "eval",
            "cross-entropy",
            "--logits",
            s(&xs),
            "--targets",
            s(&ts),
            "--out",
            s(&loss),
            "--grad-out",
            s(&grad),
            "--device",
            device,
        ]);
        let opts = CrossEntropyOptions::default();
        let want = cpu::cross_entropy_soft_grad(x.view(), t.view(), &opts).unwrap();
        near(&half(&grad), &want, &format!("soft gradient on {device}"));
    }
    // A float32 target for float16 logits.
    let t32 = dir.join("t32.npy");
    write_f32(
        &t32,
        ndarray::Array2::<f32>::zeros((9, 13)).view().into_dyn(),
    )
    .unwrap();
    let loss = dir.join("never.npy");
    fails_with(
        &[
            "eval",
            "cross-entropy",
            "--logits",
            s(&xs),
            "--targets",
            s(&t32),
            "--out",
            s(&loss),
        ],
        "--targets: float32 targets for float16 logits",
    );
    assert!(!loss.exists(), "a failed command wrote its output");
}
