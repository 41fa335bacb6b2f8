//! Shared by the test binaries: one GPU context per binary, input builders, comparisons.
#![allow(dead_code, clippy::print_stderr)]

pub mod cli;
pub mod linear;

use std::sync::OnceLock;

use ndarray::{Array1, Array2, ArrayView, Dimension};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use softmax_ce::{GpuContext, GpuOptions, Labels};

/// Set to anything but `0` to make a missing adapter fail the GPU tests instead of skipping
/// them; set to `hardware` to also fail on a software adapter (lavapipe).
pub const REQUIRE_GPU: &str = "SOFTMAX_CE_REQUIRE_GPU";

fn context(opts: GpuOptions) -> Option<GpuContext> {
    let required = std::env::var(REQUIRE_GPU).unwrap_or_default();
    let test = std::thread::current().name().unwrap_or("?").to_string();
    match GpuContext::with_options(&opts) {
        Ok(gpu) => {
            if required == "hardware" && gpu.is_software() {
                panic!(
                    "{REQUIRE_GPU}=hardware but the adapter is software: {}",
                    gpu.adapter_info().name
                );
            }
            eprintln!(
                "GPU tests run on {} ({:?}, {:?})",
                gpu.adapter_info().name,
                gpu.adapter_info().backend,
                gpu.adapter_info().device_type
            );
            Some(gpu)
        }
        Err(e) if !required.is_empty() && required != "0" => {
            let seen: Vec<String> = softmax_ce::gpu::enumerate_adapters()
                .iter()
                .map(|a| format!("{} ({:?})", a.info.name, a.info.backend))
                .collect();
            panic!("{REQUIRE_GPU} is set but there is no GPU context: {e}; adapters: {seen:?}")
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: no wgpu adapter ({e})");
            None
        }
    }
}

/// The binary's shared context with default options, or `None` (after a SKIPPED line).
pub fn gpu() -> Option<&'static GpuContext> {
    static GPU: OnceLock<Option<GpuContext>> = OnceLock::new();
    GPU.get_or_init(|| context(GpuOptions::default())).as_ref()
}

/// Contexts covering the kernel configurations: the adapter's default, each other row
/// workgroup size a device may get, and bindings capped at 4 KiB so that even small matrices
/// run in many row windows.
pub fn configs() -> Vec<(&'static str, &'static GpuContext)> {
    static ALL: OnceLock<Vec<(&'static str, GpuContext)>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let variants = [
            ("default", GpuOptions::default()),
            ("wg32", GpuOptions::default().row_workgroup_size(32)),
            ("wg256", GpuOptions::default().row_workgroup_size(256)),
            ("windows", GpuOptions::default().max_binding_bytes(4096)),
            // Every reduction in workgroup memory, where the default shuffles within subgroups.
            ("no-subgroups", GpuOptions::default().subgroups(false)),
        ];
        variants
            .into_iter()
            .filter_map(|(name, opts)| context(opts).map(|g| (name, g)))
            .collect()
    });
    all.iter().map(|(n, g)| (*n, g)).collect()
}

/// The default context and the one without subgroups: on a CPU adapter with subgroups of 8
/// (lavapipe) the first runs the texture kernels (`GpuContext::texture_kernels`) and the
/// second the storage-buffer ones, so that a test over both holds both to the reference.
pub fn both_kernels() -> Vec<(&'static str, &'static GpuContext)> {
    configs()
        .into_iter()
        .filter(|(name, _)| ["default", "no-subgroups"].contains(name))
        .collect()
}

/// Returns the shared context, or returns from the test after a SKIPPED line.
#[macro_export]
macro_rules! require_gpu {
    () => {
        match common::gpu() {
            Some(gpu) => gpu,
            None => return,
        }
    };
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Logits drawn uniformly from `[-scale, scale)`.
pub fn logits(rows: usize, cols: usize, scale: f32, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    Array2::from_shape_fn((rows, cols), |_| r.random_range(-scale..scale))
}

/// Labels in `[0, classes)`, every `ignore_every`-th row (if non-zero) set to the ignore index.
pub fn labels(rows: usize, classes: usize, ignore_every: usize, seed: u64) -> Labels {
    let mut r = rng(seed ^ 0x5eed);
    let ys: Vec<i64> = (0..rows)
        .map(|i| {
            if ignore_every != 0 && i % ignore_every == ignore_every - 1 {
                -100
            } else {
                r.random_range(0..classes as i64)
            }
        })
        .collect();
    Labels::new(ys, classes, -100).unwrap()
}

/// Rows that break naive softmax: huge and tiny values, -inf entries, all -inf rows, equal
/// rows, one dominant entry, +inf. Row `i` of the result is adversarial case `i % 9`.
pub fn adversarial(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut x = logits(rows, cols, 3.0, seed);
    let mut r = rng(seed + 1);
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        match i % 9 {
            0 => row.mapv_inplace(|v| v * 1e4 / 3.0), // +-1e4
            1 => row.fill(1e30),                      // all equal and huge
            2 => row.mapv_inplace(|v| if v > 0.0 { 1e30 } else { -1e30 }),
            3 => {
                // -inf entries, at least one finite
                for v in row.iter_mut() {
                    if r.random_bool(0.5) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                row[cols / 2] = 0.5;
            }
            4 => row.fill(f32::NEG_INFINITY), // all -inf: NaN softmax
            5 => row.fill(7.0),               // equal row
            6 => {
                row.fill(-1e4); // one dominant entry
                row[cols - 1] = 1e4;
            }
            7 => row[0] = f32::INFINITY, // +inf: NaN as in PyTorch
            _ => {}                      // plain
        }
    }
    x
}

/// Asserts `got` matches `want` elementwise: NaN where NaN, equal infinities, else
/// `approx::relative_eq!` with the given absolute and relative tolerances. The message names the
/// case, the count of mismatches and the first few with their indices.
pub fn assert_close<D: Dimension>(
    got: ArrayView<f32, D>,
    want: ArrayView<f32, D>,
    abs: f32,
    rel: f32,
    case: &str,
) {
    assert_eq!(got.shape(), want.shape(), "{case}: shapes differ");
    let mut bad = Vec::new();
    for ((idx, &g), &w) in got.indexed_iter().zip(want.iter()) {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else {
            g == w || approx::relative_eq!(g, w, epsilon = abs, max_relative = rel)
        };
        if !ok {
            bad.push(format!("{:?}: got {g:e}, want {w:e}", idx));
        }
    }
    assert!(
        bad.is_empty(),
        "{case}: {} of {} elements differ (abs {abs:e}, rel {rel:e}); first: {}",
        bad.len(),
        want.len(),
        bad.iter().take(6).cloned().collect::<Vec<_>>().join("; ")
    );
}

/// A loss against the reference's, per row or reduced, within the loss tolerances.
pub fn assert_loss(got: softmax_ce::Loss, want: softmax_ce::Loss, case: &str) {
    use softmax_ce::Loss;
    match (got, want) {
        (Loss::Reduced(g), Loss::Reduced(w)) => assert_close_scalar(g, w, LOSS_ABS, LOSS_REL, case),
        (Loss::PerRow(g), Loss::PerRow(w)) => {
            assert_close(g.view(), w.view(), LOSS_ABS, LOSS_REL, case)
        }
        (g, w) => panic!("{case}: got {g:?}, want {w:?}"),
    }
}

/// Scalar form of [`assert_close`].
pub fn assert_close_scalar(got: f32, want: f32, abs: f32, rel: f32, case: &str) {
    let g = Array1::from(vec![got]);
    let w = Array1::from(vec![want]);
    assert_close(g.view(), w.view(), abs, rel, case);
}

// Tolerances, each with its reason.

/// Probabilities and gradients: GPU `exp` may be a few ulp off per element (Vulkan allows
/// 3 + 2|x| ulp), and the row sum is accumulated in another order; 1e-5 relative covers both,
/// and 1e-7 absolute covers entries so small that their relative error means nothing.
pub const PROB_ABS: f32 = 1e-7;
pub const PROB_REL: f32 = 1e-5;
/// Gradients `(p - onehot) * scale`: `p - 1` cancels, so the error is a few ulp of 1 (not of the
/// result), times the reduction's scale.
pub const GRAD_ABS_PER_SCALE: f32 = 4.0 * f32::EPSILON;
/// Log-probabilities, log-sum-exp and per-row losses: an absolute error in `log s` of a few ulp
/// of the sum, relative to values that can be near 0.
pub const LOG_ABS: f32 = 2e-5;
pub const LOG_REL: f32 = 1e-5;
/// A reduced loss: per-row errors plus an f32 sum over rows (compensated on the GPU).
pub const LOSS_ABS: f32 = 1e-5;
pub const LOSS_REL: f32 = 2e-5;
