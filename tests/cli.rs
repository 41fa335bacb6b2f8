//! The `softmax-ce` binary: the `eval` contract on both devices, and one-line errors with a
//! non-zero exit on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use ndarray::{Array1, ArrayD, IxDyn};
use softmax_ce::{CrossEntropyOptions, Labels, Reduction, cpu, npy};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softmax-ce"))
}

/// A fresh directory per test under the target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command fails with one line on stderr (after any adapter noise) mentioning `needle`.
fn fails_with(args: &[&str], needle: &str) {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("softmax-ce: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?}: want one error line, got:\n{stderr}"
    );
    assert!(
        errors[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        errors[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn devices() -> Vec<&'static str> {
    if gpu().is_some() {
        vec!["cpu", "gpu"]
    } else {
        vec!["cpu"]
    }
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
        "not float32 or float64",
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

/// `bench --quick --json`: an adapter object first, then rows with the documented keys.
#[test]
fn bench_json_keeps_its_keys() {
    let out = run(&[
        "bench", "--json", "--device", "cpu", "--shapes", "8x16", "--matmul", "4x5x6", "--epoch",
        "200x4x3", "--reps", "1",
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
