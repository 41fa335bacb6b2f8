//! `softmax-ce train`: softmax regression by the seed's SGD, on the bundled digits, MNIST IDX
//! files or `.npy` arrays; one row (or JSON object) per epoch.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use softmax_ce::data::{self, Dataset, TrainTest};
use softmax_ce::logistic::LogisticRegression;
use softmax_ce::train::{EpochMetrics, SoftmaxRegression, TrainOptions};
use softmax_ce::{DEFAULT_IGNORE_INDEX, DType, Device, DeviceKind, Labels};

use super::output::Outputs;
use super::{DeviceArg, open_device};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A directory of standard MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz). Default: the
    /// bundled 10,000 digits (8,000 train, 2,000 test).
    #[arg(long, conflicts_with_all = ["train_x", "train_y"])]
    mnist_dir: Option<PathBuf>,
    /// Training features, N x D (.npy, float32 or float64).
    #[arg(long, requires = "train_y")]
    train_x: Option<PathBuf>,
    /// Training labels, N integers (.npy, any integer dtype).
    #[arg(long, requires = "train_x")]
    train_y: Option<PathBuf>,
    /// Test features (.npy).
    #[arg(long, requires_all = ["test_y", "train_x"])]
    test_x: Option<PathBuf>,
    /// Test labels (.npy).
    #[arg(long, requires = "test_x")]
    test_y: Option<PathBuf>,
    /// Number of classes of .npy labels (default: the largest label + 1).
    #[arg(long, allow_negative_numbers = true)]
    classes: Option<usize>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    epochs: usize,
    /// SGD step size.
    // Negative numbers parse as values so that validation, not the parser, explains them.
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    lr: f32,
    /// Rows per SGD batch; the last partial batch of an epoch is dropped, as in the seed.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    batch: usize,
    /// Append a constant-1 feature (a per-class bias); off by default, as in the seed.
    #[arg(long)]
    bias: bool,
    /// L2 regularisation strength (off by default).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    l2: f32,
    /// Shuffle the training rows every epoch with this seed (default: fixed order, as the seed).
    #[arg(long, allow_negative_numbers = true)]
    shuffle: Option<u64>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// One JSON object per epoch per line on stdout, and nothing else there.
    #[arg(long)]
    json: bool,
    /// Write the trained theta (features x classes, float32 .npy; features x 1 with --loss bce).
    #[arg(long)]
    save_theta: Option<PathBuf>,
    /// Draw the training (and test) loss and error per epoch into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// softmax: softmax regression over the classes; bce: logistic regression (sigmoid and
    /// binary cross-entropy, seed 002) on 0/1 labels, one weight column.
    #[arg(long, value_enum, default_value = "softmax")]
    loss: LossArg,
    /// The precision the training and test rows are held in: f16 rounds every feature to
    /// float16 once (half the device memory and bandwidth; theta and every sum stay float32,
    /// on either device). Softmax regression only.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
}

/// The precision `train` holds its data in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DtypeArg {
    /// float32, as read.
    F32,
    /// float16, rounded once.
    F16,
}

impl From<DtypeArg> for DType {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
        }
    }
}

/// The model `train` fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LossArg {
    /// Softmax regression with the cross-entropy loss.
    Softmax,
    /// Logistic regression with the binary cross-entropy loss.
    Bce,
}

fn labels(set: &Dataset) -> Result<Labels> {
    Ok(Labels::new(
        set.y.iter().map(|&v| i64::from(v)),
        set.classes,
        DEFAULT_IGNORE_INDEX,
    )?)
}

fn load(args: &TrainArgs) -> Result<TrainTest> {
    if let Some(dir) = &args.mnist_dir {
        return Ok(data::mnist_dir(dir)?);
    }
    match (&args.train_x, &args.train_y) {
        (Some(x), Some(y)) => {
            let test = args.test_x.as_deref().zip(args.test_y.as_deref());
            Ok(data::from_npy(x, y, test, args.classes)?)
        }
        _ => {
            if args.classes.is_some() {
                bail!("--classes applies to .npy data (--train-x/--train-y)");
            }
            Ok(data::digits()?)
        }
    }
}

/// The MNIST files `--mnist-dir` may read, each plain or gzipped: inputs no output may replace.
fn mnist_files(dir: &Path) -> Vec<PathBuf> {
    [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    .iter()
    .flat_map(|name| [dir.join(name), dir.join(format!("{name}.gz"))])
    .collect()
}

/// Refuses a model whose theta could not be allocated, before the library tries and aborts.
fn check_theta_fits(features: usize, classes: usize) -> Result<()> {
    let bytes = features
        .checked_mul(classes)
        .and_then(|n| n.checked_mul(4))
        .and_then(|n| u64::try_from(n).ok());
    match (bytes, data::physical_memory()) {
        (None, _) => bail!("theta of {features} x {classes} floats is too large to allocate"),
        (Some(b), Some(memory)) if b > memory => bail!(
            "theta of {features} x {classes} floats needs {b} bytes, more than this machine's \
             {memory} bytes of memory"
        ),
        _ => Ok(()),
    }
}

/// Trains and prints one row per epoch; `--save-theta` is checked before the data is read.
pub fn run(args: TrainArgs) -> Result<()> {
    let mnist = args
        .mnist_dir
        .as_deref()
        .map(mnist_files)
        .unwrap_or_default();
    let mut inputs: Vec<(&str, Option<&Path>)> = vec![
        ("--train-x", args.train_x.as_deref()),
        ("--train-y", args.train_y.as_deref()),
        ("--test-x", args.test_x.as_deref()),
        ("--test-y", args.test_y.as_deref()),
    ];
    inputs.extend(mnist.iter().map(|p| ("--mnist-dir", Some(p.as_path()))));
    // Before the data is read or an epoch run: a bad --save-theta fails at once.
    let mut outputs = Outputs::prepare(
        &inputs,
        &[
            ("--save-theta", args.save_theta.as_deref()),
            ("--plot", args.plot.as_deref()),
        ],
    )?;

    let data = load(&args)?;
    let (train, test) = (&data.train, data.test.as_ref());
    note!(
        "softmax-ce: data: {} ({} train{}, {} features, {} classes)",
        data.source,
        train.x.nrows(),
        test.map_or(String::new(), |t| format!(", {} test", t.x.nrows())),
        train.x.ncols(),
        train.classes
    );
    check_theta_fits(train.x.ncols() + usize::from(args.bias), train.classes)?;
    let device = open_device(args.device)?;
    let opts = TrainOptions::default()
        .lr(args.lr)
        .batch(args.batch)
        .bias(args.bias)
        .l2(args.l2)
        .shuffle(args.shuffle)
        .dtype(args.dtype.into());
    if args.loss == LossArg::Bce {
        return run_logistic(&args, &data, &device, opts, outputs);
    }
    let train_y = labels(train)?;
    let test_y = test.map(labels).transpose()?;
    let test_set = test.zip(test_y.as_ref()).map(|(t, y)| (t.x.view(), y));
    let mut model = SoftmaxRegression::new(&device, (train.x.view(), &train_y), test_set, opts)?;

    if !args.json {
        outln!("| epoch | train loss | train err | test loss | test err | seconds |")?;
        outln!("|------:|-----------:|----------:|----------:|---------:|--------:|")?;
    }
    let bar = ProgressBar::new(model.batches_per_epoch() as u64).with_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} batches")
            .context("the progress bar's template")?
            .progress_chars("=> "),
    );
    let mut history = Vec::new();
    for epoch in 1..=args.epochs {
        bar.reset();
        bar.set_prefix(epoch.to_string());
        let m = model.fit_epoch_with_progress(|done, _| bar.set_position(done as u64))?;
        bar.suspend(|| print_epoch(&m, &device, args.json))?;
        history.push(m);
    }
    bar.finish_and_clear();

    if args.save_theta.is_some() {
        let theta = model.theta()?;
        outputs.write("--save-theta", theta.view().into_dyn())?;
    }
    let title = format!("softmax regression, {}, {device}", data.source);
    finish(outputs, &args, &history, &title)
}

/// Writes the plot, if asked for, and commits every output together.
fn finish(
    mut outputs: Outputs,
    args: &TrainArgs,
    history: &[EpochMetrics],
    title: &str,
) -> Result<()> {
    if args.plot.is_some() {
        outputs.write_text("--plot", &super::plot::train_svg(history, title)?)?;
    }
    outputs.commit()?;
    if let Some(path) = &args.save_theta {
        note!("softmax-ce: theta written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        note!("softmax-ce: plot written to {}", path.display());
    }
    Ok(())
}

/// `--loss bce`: logistic regression on 0/1 labels, printed like softmax regression; the
/// weights go to `--save-theta` as a `features x 1` column.
fn run_logistic(
    args: &TrainArgs,
    data: &TrainTest,
    device: &Device,
    opts: TrainOptions,
    mut outputs: Outputs,
) -> Result<()> {
    let targets = |set: &Dataset| -> Result<ndarray::Array1<f32>> {
        if let Some((i, &v)) = set.y.iter().enumerate().find(|(_, v)| **v > 1) {
            bail!("--loss bce needs 0/1 labels; label {v} at row {i}");
        }
        Ok(set.y.mapv(|v| v as f32))
    };
    let train_y = targets(&data.train)?;
    let test = data
        .test
        .as_ref()
        .map(|t| Ok::<_, anyhow::Error>((t, targets(t)?)))
        .transpose()?;
    let test_set = test.as_ref().map(|(t, y)| (t.x.view(), y.view()));
    let mut model = LogisticRegression::new(
        device,
        (data.train.x.view(), train_y.view()),
        test_set,
        opts,
    )?;
    if !args.json {
        outln!("| epoch | train loss | train err | test loss | test err | seconds |")?;
        outln!("|------:|-----------:|----------:|----------:|---------:|--------:|")?;
    }
    let mut history = Vec::new();
    for _ in 0..args.epochs {
        let m = model.fit_epoch()?;
        print_epoch(&m, device, args.json)?;
        history.push(m);
    }
    if args.save_theta.is_some() {
        let w = model.weights()?.insert_axis(ndarray::Axis(1));
        outputs.write("--save-theta", w.view().into_dyn())?;
    }
    let title = format!("logistic regression, {}, {device}", data.source);
    finish(outputs, args, &history, &title)
}

fn print_epoch(m: &EpochMetrics, device: &Device, json: bool) -> Result<()> {
    if json {
        let line = serde_json::json!({
            "epoch": m.epoch,
            "train_loss": m.train_loss,
            "train_err": m.train_err,
            "test_loss": m.test_loss,
            "test_err": m.test_err,
            "seconds": m.seconds,
            "device": match device.kind() {
                DeviceKind::Cpu => "cpu",
                DeviceKind::Gpu => "gpu",
            },
        });
        outln!("{line}")?;
    } else {
        let opt = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:.5}"));
        outln!(
            "| {:>5} | {:>10.5} | {:>9.5} | {:>9} | {:>8} | {:>7.3} |",
            m.epoch,
            m.train_loss,
            m.train_err,
            opt(m.test_loss),
            opt(m.test_err),
            m.seconds
        )?;
    }
    Ok(())
}
