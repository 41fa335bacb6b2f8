//! Bad input on the GPU path: always an `Err` naming the op and the values, never a panic.

mod common;

use common::*;
use ndarray::{Array1, Array2};
use softmax_ce::{CrossEntropyOptions, Error, GpuContext, GpuOptions, Labels};

#[test]
fn mismatched_labels_are_a_shape_error() {
    let gpu = require_gpu!();
    let x = gpu.upload(logits(4, 3, 1.0, 1).view()).unwrap();
    let opts = CrossEntropyOptions::default();
    let too_few = gpu
        .upload_labels(&Labels::new([0, 1, 2], 3, -100).unwrap())
        .unwrap();
    let err = gpu.cross_entropy(&x, &too_few, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "cross_entropy",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("4 labels over 3 classes"), "{err}");
    let other_classes = gpu
        .upload_labels(&Labels::new([0, 1, 2, 3], 5, -100).unwrap())
        .unwrap();
    let err = gpu
        .cross_entropy_with_grad(&x, &other_classes, &opts)
        .unwrap_err();
    assert!(err.to_string().contains("over 5 classes"), "{err}");
    let staged = gpu.staged();
    let m = gpu.upload_vector(Array1::zeros(2).view()).unwrap();
    let err = staged.row_sumexp(&x, &m).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "row_sumexp",
                ..
            }
        ),
        "{err}"
    );
    let err = staged.softmax_normalise(&x, &m, &m).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Shape {
                op: "softmax_normalise",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn zero_classes_is_an_error_on_every_op() {
    let gpu = require_gpu!();
    let x = gpu.upload(Array2::<f32>::zeros((3, 0)).view()).unwrap();
    for result in [
        gpu.softmax(&x).map(|_| ()),
        gpu.log_softmax(&x).map(|_| ()),
        gpu.logsumexp(&x).map(|_| ()),
        gpu.staged().row_max(&x).map(|_| ()),
    ] {
        assert!(matches!(result, Err(Error::Empty { .. })), "{result:?}");
    }
}

/// A row that cannot fit one binding cannot be split; the error says so with the sizes.
#[test]
fn a_row_larger_than_a_binding_is_too_large() {
    if gpu().is_none() {
        return;
    }
    let small = GpuContext::with_options(&GpuOptions::default().max_binding_bytes(4096)).unwrap();
    let err = small.upload(logits(2, 2000, 1.0, 1).view()).unwrap_err();
    assert!(matches!(err, Error::TooLarge { op: "upload", .. }), "{err}");
    assert!(err.to_string().contains("8000 bytes"), "{err}");
    // One row just under the cap still works, in one-row windows.
    let fits = (4096 - 64) / 4;
    let x = logits(5, fits, 3.0, 2);
    let p = small
        .download(&small.softmax(&small.upload(x.view()).unwrap()).unwrap())
        .unwrap();
    let want = softmax_ce::cpu::softmax(x.view()).unwrap();
    assert_close(
        p.view(),
        want.view(),
        PROB_ABS,
        PROB_REL,
        "row at the binding limit",
    );
}

/// A matrix larger than the device's largest buffer is refused before anything is allocated
/// (the view below is a broadcast: it occupies 4 bytes on the host).
#[test]
fn a_matrix_over_the_buffer_limit_is_too_large() {
    let gpu = require_gpu!();
    let max = gpu.limits().max_buffer_size;
    let cols = 1 << 16;
    let rows = (max / 4 / cols as u64 + 1) as usize;
    let one = Array2::<f32>::zeros((1, 1));
    let huge = one.broadcast((rows, cols)).unwrap();
    let err = gpu.upload(huge).unwrap_err();
    assert!(matches!(err, Error::TooLarge { op: "upload", .. }), "{err}");
    assert!(err.to_string().contains(&max.to_string()), "{err}");
}

/// An empty matrix of a width whose byte count would wrap a u64 is refused, not allocated as
/// a 0-byte buffer that later kernels would index.
#[test]
fn an_empty_matrix_of_huge_width_is_too_large() {
    let gpu = require_gpu!();
    for cols in [1usize << 40, 1 << 62] {
        let empty = Array2::<f32>::zeros((0, cols));
        let err = gpu.upload(empty.view()).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{cols}: {err}");
    }
}

#[test]
fn lowered_limits_below_what_the_plans_need_are_refused() {
    if gpu().is_none() {
        return;
    }
    for opts in [
        GpuOptions::default().max_loop_iterations(255),
        GpuOptions::default().max_workgroups_per_dimension(0),
    ] {
        let err = GpuContext::with_options(&opts).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{opts:?}: {err}"
        );
    }
    let gpu = GpuContext::with_options(&GpuOptions::default().max_loop_iterations(256)).unwrap();
    assert_eq!(gpu.loop_budget(), 256);
}

#[test]
fn an_unknown_adapter_name_lists_what_exists() {
    let err = GpuContext::with_options(&GpuOptions::default().adapter("no-such-adapter-xyz"))
        .unwrap_err();
    assert!(matches!(err, Error::AdapterNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-adapter-xyz"), "{err}");
}

/// On a machine with no adapter (simulated by searching a backend native builds never have),
/// the error says how to get one.
#[test]
fn no_adapter_says_how_to_get_one() {
    let opts = GpuOptions::default().backends(wgpu::Backends::BROWSER_WEBGPU);
    let err = GpuContext::with_options(&opts).unwrap_err();
    assert!(matches!(err, Error::NoAdapter { .. }), "{err}");
    assert!(err.to_string().contains("mesa-vulkan-drivers"), "{err}");
}

#[test]
fn a_bad_workgroup_size_is_refused() {
    if gpu().is_none() {
        return;
    }
    let err = GpuContext::with_options(&GpuOptions::default().row_workgroup_size(48)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

/// A matrix from one context used on another would abort inside wgpu; it is refused first.
#[test]
fn arrays_from_another_context_are_refused() {
    let gpu = require_gpu!();
    let other = GpuContext::new().unwrap();
    let x = other.upload(logits(3, 8, 1.0, 1).view()).unwrap();
    let err = gpu.softmax(&x).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { op: "softmax", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("another GpuContext"), "{err}");
}
