//! softmax-ce inside an application's own GPU work: a context shared between threads and
//! clones, and downloads that do not block.

mod common;

use common::*;
use softmax_ce::{CrossEntropyOptions, GpuContext, Loss, Reduction, cpu};

#[test]
fn a_context_is_send_sync_and_cheap_to_clone() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<GpuContext>();
}

#[test]
fn clones_and_threads_share_one_device_and_its_arrays() {
    // A context of this test's own: the shared one's counter moves with the other tests.
    require_gpu!();
    let gpu = &GpuContext::new().unwrap();
    let x = adversarial(37, 129, 5);
    let on = gpu.upload(x.view()).unwrap();
    let readbacks = gpu.readbacks();
    let clone = gpu.clone();
    // An array made by one is an array of the other, and work runs on the same queue.
    let p = std::thread::spawn(move || {
        let p = clone.softmax(&on).unwrap();
        clone.download(&p).unwrap()
    })
    .join()
    .unwrap();
    let right = cpu::softmax(x.view()).unwrap();
    assert_close(
        p.view(),
        right.view(),
        1e-6,
        1e-5,
        "softmax on a clone, in a thread",
    );
    // The clone's readback counts on the original.
    assert_eq!(gpu.readbacks(), readbacks + 1);
}

#[test]
fn async_downloads_resolve_once_the_device_is_polled() {
    let gpu = require_gpu!();
    let x = adversarial(65, 1000, 9);
    let on = gpu.upload(x.view()).unwrap();
    let p = gpu.softmax(&on).unwrap();
    let lse = gpu.logsumexp(&on).unwrap();
    let matrix = gpu.download_async(&p);
    let vector = gpu.download_vector_async(&lse);
    // What an application's frame loop does: poll the device, then collect the futures.
    gpu.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
    let (matrix, vector) = pollster::block_on(async { (matrix.await, vector.await) });
    let (blocking, blocking_vector) = (
        gpu.download(&p).unwrap(),
        gpu.download_vector(&lse).unwrap(),
    );
    assert_close(
        matrix.unwrap().view(),
        blocking.view(),
        0.0,
        0.0,
        "async matrix",
    );
    assert_close(
        vector.unwrap().view(),
        blocking_vector.view(),
        0.0,
        0.0,
        "async vector",
    );
    // An empty array needs no mapping at all.
    let empty = gpu
        .upload(ndarray::Array2::<f32>::zeros((0, 3)).view())
        .unwrap();
    let got = pollster::block_on(gpu.download_async(&empty)).unwrap();
    assert_eq!(got.dim(), (0, 3));
}

#[test]
fn async_downloads_of_another_contexts_array_are_errors() {
    let gpu = require_gpu!();
    let other = GpuContext::new().unwrap();
    let on = other.upload(logits(2, 3, 1.0, 1).view()).unwrap();
    let got = pollster::block_on(gpu.download_async(&on));
    assert!(got.is_err(), "{got:?}");
}

/// An application's buffer: `floats` zeros, usable as storage and copied in and out.
fn app_buffer(gpu: &GpuContext, bytes: u64) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("application buffer"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

fn write(gpu: &GpuContext, buffer: &wgpu::Buffer, offset: u64, x: &ndarray::Array2<f32>) {
    let data = x.as_standard_layout();
    gpu.queue().write_buffer(
        buffer,
        offset,
        bytemuck::cast_slice(data.as_slice().unwrap()),
    );
}

/// `x` laid out in rows `stride` apart, the padding `pad`.
fn padded(x: &ndarray::Array2<f32>, stride: usize, pad: f32) -> ndarray::Array2<f32> {
    let mut out = ndarray::Array2::from_elem((x.nrows(), stride), pad);
    out.slice_mut(ndarray::s![.., ..x.ncols()]).assign(x);
    out
}

/// Wrapped arrays at an aligned offset that is not a multiple of the row (rows of 10 floats,
/// 40 bytes, from byte 256), with rows end to end and with rows padded (a stride larger than
/// the row, odd and a multiple of 4), the outputs in a second buffer with a stride of their
/// own, in every kernel configuration: the windowed one runs each op in many windows, each
/// bound from the array's offset. The inputs' padding is NaN, so a read of it would show, and
/// the outputs' padding must come back untouched.
#[test]
fn ops_read_and_write_wrapped_buffers_at_offsets_and_strides() {
    require_gpu!();
    for (name, gpu) in configs() {
        for (rows, cols) in [(37, 10), (5, 1000), (130, 4)] {
            for (pad_in, pad_out) in [(0, 0), (3, 4), (4, 1)] {
                wrapped_case(name, gpu, rows, cols, cols + pad_in, cols + pad_out);
            }
        }
    }
}

fn wrapped_case(name: &str, gpu: &GpuContext, rows: usize, cols: usize, si: usize, so: usize) {
    let x = adversarial(rows, cols, 21);
    let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
    let in_bytes = (rows * si * 4) as u64;
    let out_bytes = (rows * so * 4) as u64;
    let out_at = 512u64.next_multiple_of(align);
    let loss_at = (out_at + out_bytes).next_multiple_of(align.max(256));
    let buffer = app_buffer(gpu, 256 + in_bytes);
    let outputs = app_buffer(gpu, loss_at + 4 * rows as u64 + 256);
    write(gpu, &buffer, 256, &padded(&x, si, f32::NAN));
    const SENTINEL: f32 = 7.25;
    let reset = || write(gpu, &outputs, out_at, &padded(&x, so, SENTINEL));
    let xw = gpu
        .wrap_matrix_strided(&buffer, 256, rows, cols, si)
        .unwrap();
    let out = gpu
        .wrap_matrix_strided(&outputs, out_at, rows, cols, so)
        .unwrap();
    let case = format!("{name} {rows}x{cols} strides {si}/{so}");
    // The outputs' padding, read back as the whole strided block.
    let padding_untouched = |what: &str| {
        let whole = gpu
            .download(&gpu.wrap_matrix(&outputs, out_at, rows, so).unwrap())
            .unwrap();
        let pads = whole.slice(ndarray::s![.., cols..]);
        assert!(
            pads.iter().all(|&v| v == SENTINEL),
            "{what} {case}: wrote into the padding"
        );
    };

    reset();
    gpu.submit(&gpu.plan_softmax(&xw, &out).unwrap()).unwrap();
    let want = cpu::softmax(x.view()).unwrap();
    assert_close(
        gpu.download(&out).unwrap().view(),
        want.view(),
        PROB_ABS,
        PROB_REL,
        &format!("softmax {case}"),
    );
    padding_untouched("softmax");

    let lse = gpu.wrap_vector(&outputs, loss_at, rows).unwrap();
    gpu.submit(&gpu.plan_logsumexp(&xw, &lse).unwrap()).unwrap();
    let want = cpu::logsumexp(x.view()).unwrap();
    assert_close(
        gpu.download_vector(&lse).unwrap().view(),
        want.view(),
        LOG_ABS,
        LOG_REL,
        &format!("logsumexp {case}"),
    );

    let y = labels(rows, cols, 3, 4);
    let on_y = gpu.upload_labels(&y).unwrap();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let opts = CrossEntropyOptions::default()
            .reduction(reduction)
            .label_smoothing(0.05);
        let len = if reduction == Reduction::None {
            rows
        } else {
            1
        };
        let loss = gpu.wrap_vector(&outputs, loss_at, len).unwrap();
        reset();
        let plan = gpu
            .plan_cross_entropy(&xw, &on_y, &opts, &loss, Some(&out))
            .unwrap();
        gpu.submit(&plan).unwrap();
        let want = cpu::cross_entropy(x.view(), &y, &opts).unwrap();
        let got = gpu.download_vector(&loss).unwrap();
        match want {
            Loss::PerRow(v) => assert_close(got.view(), v.view(), LOSS_ABS, LOSS_REL, &case),
            Loss::Reduced(v) => assert_close_scalar(got[0], v, LOSS_ABS, LOSS_REL, &case),
        }
        let want = cpu::cross_entropy_grad(x.view(), &y, &opts).unwrap();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(
            gpu.download(&out).unwrap().view(),
            want.view(),
            GRAD_ABS_PER_SCALE * scale.max(1.0),
            1e-5,
            &format!("gradient {reduction:?} {case}"),
        );
        padding_untouched("cross-entropy");
    }
    // The backward pass over two strided inputs.
    let dy = logits(rows, cols, 1.0, 5);
    let dy_buf = app_buffer(gpu, in_bytes.max(4));
    write(gpu, &dy_buf, 0, &padded(&dy, si, f32::NAN));
    let dyw = gpu.wrap_matrix_strided(&dy_buf, 0, rows, cols, si).unwrap();
    reset();
    let p = gpu.download(&gpu.softmax(&xw).unwrap()).unwrap();
    write(gpu, &buffer, 256, &padded(&p, si, f32::NAN));
    gpu.submit(&gpu.plan_softmax_backward(&xw, &dyw, &out).unwrap())
        .unwrap();
    let want = cpu::softmax_backward(p.view(), dy.view()).unwrap();
    assert_close(
        gpu.download(&out).unwrap().view(),
        want.view(),
        1e-6,
        1e-5,
        &format!("softmax_backward {case}"),
    );
    padding_untouched("softmax_backward");
    // Ops that read a matrix as one flat run refuse padded rows.
    if si != cols {
        let e = gpu.matmul_tn(&xw, &out).map(drop).unwrap_err().to_string();
        assert!(e.contains("needs rows end to end"), "{e}");
    }
}

/// A plan recorded between the application's own commands in one encoder: its upload of the
/// logits before, its copy of the result after, one submission. Recording again allocates
/// nothing, and the plan reads the logits of the moment it runs.
#[test]
fn plans_record_into_the_callers_encoder_without_allocating() {
    // A context of this test's own: the shared one's counter moves with the other tests.
    require_gpu!();
    let gpu = &GpuContext::new().unwrap();
    let (rows, cols) = (4, 1000);
    let bytes = (rows * cols * 4) as u64;
    let logits_buf = app_buffer(gpu, bytes);
    let source = app_buffer(gpu, bytes);
    let result = app_buffer(gpu, bytes);
    let x = gpu.wrap_matrix(&logits_buf, 0, rows, cols).unwrap();
    let y_host = labels(rows, cols, 0, 8);
    let y = gpu.upload_labels(&y_host).unwrap();
    let loss = gpu.upload_vector(ndarray::arr1(&[0.0f32]).view()).unwrap();
    let grad = gpu
        .upload(ndarray::Array2::zeros((rows, cols)).view())
        .unwrap();
    let opts = CrossEntropyOptions::default();
    let plan = gpu
        .plan_cross_entropy(&x, &y, &opts, &loss, Some(&grad))
        .unwrap();
    for seed in 0..3 {
        // Downloads allocate their staging buffers: count around the frame alone.
        let before = gpu.allocations();
        let x_host = adversarial(rows, cols, seed);
        write(gpu, &source, 0, &x_host);
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&source, 0, &logits_buf, 0, bytes);
        plan.record(&mut encoder);
        encoder.copy_buffer_to_buffer(grad.buffer(), 0, &result, 0, bytes);
        gpu.queue().submit([encoder.finish()]);
        assert_eq!(gpu.allocations(), before, "recording a plan allocated");
        let got = gpu.download(&gpu.wrap_matrix(&result, 0, rows, cols).unwrap());
        let want = cpu::cross_entropy_grad(x_host.view(), &y_host, &opts).unwrap();
        assert_close(
            got.unwrap().view(),
            want.view(),
            GRAD_ABS_PER_SCALE,
            1e-5,
            &format!("gradient of frame {seed}"),
        );
        let Loss::Reduced(want) = cpu::cross_entropy(x_host.view(), &y_host, &opts).unwrap() else {
            unreachable!()
        };
        let got = gpu.download_vector(&loss).unwrap()[0];
        assert_close_scalar(got, want, LOSS_ABS, LOSS_REL, "loss");
    }
}

/// Every invalid view gets its own error, naming the value.
#[test]
fn invalid_views_are_errors() {
    let gpu = require_gpu!();
    let fine = app_buffer(gpu, 4096);
    let err = |r: softmax_ce::Result<softmax_ce::GpuMatrix>| r.unwrap_err().to_string();

    let no_storage = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    assert!(err(gpu.wrap_matrix(&no_storage, 0, 2, 3)).contains("lacks STORAGE"));
    let e = err(gpu.wrap_matrix(&fine, 4, 2, 3));
    assert!(e.contains("offset 4 is not a multiple of"), "{e}");
    let e = err(gpu.wrap_matrix(&fine, 256, 32, 31));
    assert!(
        e.contains("runs past the end of a buffer of 4096 bytes"),
        "{e}"
    );
    let e = err(gpu.wrap_matrix(&fine, 0, usize::MAX, 2));
    assert!(e.contains("overflow"), "{e}");
    // Exactly to the end is fine.
    gpu.wrap_matrix(&fine, 256, 30, 32).unwrap();

    // An output in its input's buffer, even over other bytes; outputs over each other; a
    // plan's arrays of the wrong shape.
    let x = gpu.wrap_matrix(&fine, 0, 4, 8).unwrap();
    let beside = gpu.wrap_matrix(&fine, 256, 4, 8).unwrap();
    let e = gpu.plan_softmax(&x, &beside).unwrap_err().to_string();
    assert!(
        e.contains("shares a buffer with the input (bytes 0..128)"),
        "{e}"
    );
    let outs = app_buffer(gpu, 4096);
    let y = gpu.upload_labels(&labels(4, 8, 0, 1)).unwrap();
    let (l, g) = (
        gpu.wrap_vector(&outs, 0, 4).unwrap(),
        gpu.wrap_matrix(&outs, 0, 4, 8).unwrap(),
    );
    let none = CrossEntropyOptions::default().reduction(Reduction::None);
    let e = gpu
        .plan_cross_entropy(&x, &y, &none, &l, Some(&g))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the gradient (bytes 0..128) overlaps the loss"),
        "{e}"
    );
    let short = gpu.wrap_matrix(&fine, 256, 3, 8).unwrap();
    let e = gpu.plan_softmax(&x, &short).unwrap_err().to_string();
    assert!(e.contains("(4, 8)"), "{e}");
    let loss = gpu.wrap_vector(&outs, 1024, 4).unwrap();
    let e = gpu
        .plan_cross_entropy(&x, &y, &CrossEntropyOptions::default(), &loss, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a loss of 1 values"), "{e}");

    // A buffer that cannot be copied out cannot be downloaded.
    let storage_only = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let m = gpu.wrap_matrix(&storage_only, 0, 2, 2).unwrap();
    let e = gpu.download(&m).unwrap_err().to_string();
    assert!(e.contains("lacks COPY_SRC"), "{e}");
}

/// The backward passes, the soft-target cross-entropy and the sum as plans into
/// caller-provided outputs, recorded twice (the second recording allocating nothing), against
/// the CPU reference.
#[test]
fn backward_soft_and_sum_plans_write_into_given_outputs() {
    require_gpu!();
    let gpu = &GpuContext::new().unwrap();
    let (rows, cols) = (19, 130);
    let p = cpu::softmax(adversarial(rows, cols, 3).view()).unwrap();
    let dy = logits(rows, cols, 1.0, 4);
    let (on_p, on_dy) = (
        gpu.upload(p.view()).unwrap(),
        gpu.upload(dy.view()).unwrap(),
    );
    let dx = gpu
        .upload(ndarray::Array2::zeros((rows, cols)).view())
        .unwrap();
    let total = gpu.upload_vector(ndarray::arr1(&[0.0f32]).view()).unwrap();
    let v = gpu
        .upload_vector(ndarray::Array1::from_elem(5000, 0.5f32).view())
        .unwrap();
    let soft_x = adversarial(rows, cols, 6);
    let on_soft_x = gpu.upload(soft_x.view()).unwrap();
    let soft_loss = gpu.upload_vector(ndarray::arr1(&[0.0f32]).view()).unwrap();
    let soft_grad = gpu
        .upload(ndarray::Array2::zeros((rows, cols)).view())
        .unwrap();
    let soft_opts = CrossEntropyOptions::default().label_smoothing(0.2);
    let plans = [
        gpu.plan_softmax_backward(&on_p, &on_dy, &dx).unwrap(),
        gpu.plan_sum_into(&v, &total).unwrap(),
        // The probabilities p serve as the targets.
        gpu.plan_cross_entropy_soft(&on_soft_x, &on_p, &soft_opts, &soft_loss, &soft_grad)
            .unwrap(),
    ];
    let before = gpu.allocations();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for _ in 0..2 {
        for plan in &plans {
            plan.record(&mut encoder);
        }
    }
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(gpu.allocations(), before);
    let want = cpu::softmax_backward(p.view(), dy.view()).unwrap();
    assert_close(
        gpu.download(&dx).unwrap().view(),
        want.view(),
        1e-6,
        1e-5,
        "softmax_backward plan",
    );
    assert_eq!(gpu.download_vector(&total).unwrap()[0], 2500.0);
    let want = cpu::cross_entropy_soft(soft_x.view(), p.view(), &soft_opts).unwrap();
    let want_grad = cpu::cross_entropy_soft_grad(soft_x.view(), p.view(), &soft_opts).unwrap();
    assert_close_scalar(
        gpu.download_vector(&soft_loss).unwrap()[0],
        want.scalar().unwrap(),
        LOSS_ABS,
        LOSS_REL,
        "soft loss plan",
    );
    assert_close(
        gpu.download(&soft_grad).unwrap().view(),
        want_grad.view(),
        1e-6,
        1e-5,
        "soft gradient plan",
    );
    let e = gpu.plan_sum_into(&v, &v).unwrap_err().to_string();
    assert!(e.contains("an output of 1 value"), "{e}");
}
