//! The fast CPU path against the CPU reference, over the same shapes and adversarial values as
//! the GPU, with the same tolerances.

mod common;

use common::*;
use ndarray::{ArrayView2, s};
use softmax_ce::cpu::{self, fast};
use softmax_ce::{CrossEntropyOptions, Labels, Reduction};

/// Widths around the 8-lane chunks and the 512-element summation blocks, and a wide row.
const COLS: &[usize] = &[
    1, 2, 7, 8, 9, 15, 16, 17, 511, 512, 513, 1000, 1025, 100_003,
];

fn for_each_case(mut check: impl FnMut(ArrayView2<f32>, &str)) {
    for &cols in COLS {
        for &rows in &[1usize, 3, 19] {
            let seed = (rows * 31 + cols) as u64;
            let plain = logits(rows, cols, 8.0, seed);
            check(plain.view(), &format!("{rows}x{cols} plain"));
            let adv = adversarial(rows.max(9), cols, seed);
            check(adv.view(), &format!("{rows}x{cols} adversarial"));
        }
    }
}

#[test]
fn softmax_matches_the_reference() {
    for_each_case(|x, case| {
        let got = fast::softmax(x).unwrap();
        let want = cpu::softmax(x).unwrap();
        assert_close(got.view(), want.view(), PROB_ABS, PROB_REL, case);
    });
}

#[test]
fn log_softmax_matches_the_reference() {
    for_each_case(|x, case| {
        let got = fast::log_softmax(x).unwrap();
        let want = cpu::log_softmax(x).unwrap();
        assert_close(got.view(), want.view(), LOG_ABS, LOG_REL, case);
    });
}

#[test]
fn cross_entropy_with_grad_matches_the_reference() {
    for_each_case(|x, case| {
        let labels = labels(x.nrows(), x.ncols(), 4, x.len() as u64);
        for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            let opts = CrossEntropyOptions::default().reduction(reduction);
            let (loss, grad) = fast::cross_entropy_with_grad(x, &labels, &opts).unwrap();
            let want = cpu::cross_entropy(x, &labels, &opts).unwrap().into_array();
            let (abs, rel) = match reduction {
                Reduction::None => (LOG_ABS, LOG_REL),
                _ => (LOSS_ABS, LOSS_REL),
            };
            let case = format!("{case} {reduction}");
            assert_close(loss.into_array().view(), want.view(), abs, rel, &case);
            let want = cpu::cross_entropy_grad(x, &labels, &opts).unwrap();
            let scale = match reduction {
                Reduction::Mean => 1.0 / labels.active_count().max(1) as f32,
                _ => 1.0,
            };
            assert_close(
                grad.view(),
                want.view(),
                GRAD_ABS_PER_SCALE * scale,
                PROB_REL,
                &format!("{case} grad"),
            );
        }
    });
}

/// Views that are not in standard layout (a transpose, a strided slice) work too.
#[test]
fn non_contiguous_inputs_match() {
    let x = logits(40, 30, 4.0, 5);
    let t = x.t();
    assert_close(
        fast::softmax(t).unwrap().view(),
        cpu::softmax(t).unwrap().view(),
        PROB_ABS,
        PROB_REL,
        "transpose",
    );
    let strided = x.slice(s![..;3, ..;2]);
    assert_close(
        fast::log_softmax(strided).unwrap().view(),
        cpu::log_softmax(strided).unwrap().view(),
        LOG_ABS,
        LOG_REL,
        "strided",
    );
}

#[test]
fn bad_input_is_an_error() {
    let empty = ndarray::Array2::<f32>::zeros((3, 0));
    assert!(fast::softmax(empty.view()).is_err());
    let x = logits(3, 4, 1.0, 1);
    let wrong = Labels::new([0, 1], 4, -100).unwrap();
    let err = fast::cross_entropy_with_grad(x.view(), &wrong, &CrossEntropyOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("cross_entropy_with_grad"), "{err}");
}

/// The `_into` forms write every element of a reused output (garbage before, the allocating
/// form's bits after, call after call, into a row-padded view too) and refuse an output of
/// another shape or with rows that are not contiguous.
#[test]
fn into_forms_overwrite_a_reused_output() {
    let x = adversarial(19, 513, 5);
    let y = labels(19, 513, 4, 6);
    let opts = CrossEntropyOptions::default();
    let (want_loss, want_grad) = fast::cross_entropy_with_grad(x.view(), &y, &opts).unwrap();
    let want_p = fast::softmax(x.view()).unwrap();
    let want_lp = fast::log_softmax(x.view()).unwrap();
    let same = |got: ArrayView2<f32>, want: ArrayView2<f32>, case: &str| {
        assert_close(got, want, 0.0, 0.0, case);
    };
    // Rows 520 floats apart: a view into a padded buffer, contiguous along each row.
    let mut buffer = ndarray::Array2::from_elem((19, 520), f32::NAN);
    for round in 0..2 {
        let mut out = buffer.slice_mut(s![.., ..513]);
        let loss = fast::cross_entropy_with_grad_into(x.view(), &y, &opts, out.view_mut()).unwrap();
        assert_eq!(
            format!("{loss:?}"),
            format!("{want_loss:?}"),
            "round {round}"
        );
        same(out.view(), want_grad.view(), "gradient into");
        fast::softmax_into(x.view(), out.view_mut()).unwrap();
        same(out.view(), want_p.view(), "softmax into");
        fast::log_softmax_into(x.view(), out.view_mut()).unwrap();
        same(out.view(), want_lp.view(), "log-softmax into");
    }
    assert!(
        buffer.slice(s![.., 513..]).iter().all(|v| v.is_nan()),
        "wrote past the rows"
    );

    let mut wrong = ndarray::Array2::<f32>::zeros((19, 512));
    let e = fast::softmax_into(x.view(), wrong.view_mut())
        .unwrap_err()
        .to_string();
    assert!(e.contains("(19, 513)"), "{e}");
    let mut transposed = ndarray::Array2::<f32>::zeros((513, 19));
    let e = fast::cross_entropy_with_grad_into(
        x.view(),
        &y,
        &opts,
        transposed.view_mut().reversed_axes(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not contiguous"), "{e}");
}
