//! The largest matrices: larger than one storage binding (128 MiB on lavapipe and by wgpu's
//! default), so every op runs in row windows, against the CPU reference.

mod common;

use common::*;
use softmax_ce::{CrossEntropyOptions, cpu};

/// 1024 x 131072 f32 logits: 512 MiB, four times the binding limit.
#[test]
fn softmax_and_cross_entropy_on_512_mib_of_logits() {
    let gpu = require_gpu!();
    let (rows, cols) = (1024, 131_072);
    let x = logits(rows, cols, 8.0, 42);
    let labels = labels(rows, cols, 10, 42);
    let gx = gpu.upload(x.view()).unwrap();

    let p = gpu.download(&gpu.softmax(&gx).unwrap()).unwrap();
    assert_close(
        p.view(),
        cpu::softmax(x.view()).unwrap().view(),
        PROB_ABS,
        PROB_REL,
        "softmax",
    );
    drop(p);

    let gy = gpu.upload_labels(&labels).unwrap();
    let opts = CrossEntropyOptions::default();
    let (loss, grad) = gpu.cross_entropy_with_grad(&gx, &gy, &opts).unwrap();
    let got = gpu.download_loss(&loss).unwrap().scalar().unwrap();
    let want = cpu::cross_entropy(x.view(), &labels, &opts)
        .unwrap()
        .scalar()
        .unwrap();
    assert_close_scalar(got, want, LOSS_ABS, LOSS_REL, "cross-entropy");
    let got = gpu.download(&grad).unwrap();
    let want = cpu::cross_entropy_grad(x.view(), &labels, &opts).unwrap();
    let abs = GRAD_ABS_PER_SCALE / labels.active_count() as f32;
    assert_close(got.view(), want.view(), abs, PROB_REL, "gradient");
}
