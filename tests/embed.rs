//! softmax-ce inside an application's own GPU work: a context shared between threads and
//! clones, and downloads that do not block.

mod common;

use common::*;
use softmax_ce::{CrossEntropyOptions, GpuContext, LabelType, Loss, Reduction, cpu};

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
fn the_async_route_of_a_web_page_gives_the_blocking_results() {
    // What a browser calls (web/src/lib.rs), on this adapter: the context, a loss and a
    // model's epochs and weights, each without a blocking wait.
    require_gpu!();
    let gpu =
        pollster::block_on(GpuContext::new_async(&softmax_ce::GpuOptions::default())).unwrap();
    let x = logits(37, 129, 3.0, 11);
    let labels = labels(37, 129, 4, 2);
    let opts = CrossEntropyOptions::default().label_smoothing(0.1);
    let (on, y) = (
        gpu.upload(x.view()).unwrap(),
        gpu.upload_labels(&labels).unwrap(),
    );
    for reduction in [Reduction::Mean, Reduction::None] {
        let opts = opts.clone().reduction(reduction);
        let loss = gpu.cross_entropy(&on, &y, &opts).unwrap();
        let got = drive(&gpu, gpu.download_loss_async(&loss)).unwrap();
        assert_eq!(got, gpu.download_loss(&loss).unwrap(), "{reduction:?}");
    }

    let (rows, features, classes) = (300, 12, 3);
    let data = logits(rows, features, 1.0, 3);
    let y =
        softmax_ce::Labels::new((0..rows).map(|r| (r % classes) as i64), classes, -100).unwrap();
    let train = softmax_ce::train::TrainOptions::default().bias(true);
    let model = |gpu| {
        softmax_ce::train::SoftmaxRegression::new(gpu, (data.view(), &y), None, train.clone())
            .unwrap()
    };
    let (mut blocking, mut pending) = (model(&gpu), model(&gpu));
    for _ in 0..2 {
        let want = blocking.fit_epoch().unwrap();
        let got = drive(&gpu, pending.fit_epoch_async()).unwrap();
        assert_eq!(
            (got.epoch, got.train_loss, got.train_err),
            (want.epoch, want.train_loss, want.train_err)
        );
    }
    let theta = drive(&gpu, pending.theta_async()).unwrap();
    assert_eq!(theta, blocking.theta().unwrap());
}

/// Runs `work` to its end as an application's frame loop would: poll the future, and while it
/// waits, poll the device (which is when a native backend delivers mappings).
fn drive<F: Future>(gpu: &GpuContext, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = work.as_mut().poll(&mut cx) {
            return v;
        }
        gpu.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
    }
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

/// Records `plans`, in order, `times` times into one encoder and submits it, asserting that
/// the recording created nothing on the context (the second and later calls of an op at the
/// same shape must not allocate).
fn record_without_allocating(
    gpu: &GpuContext,
    plans: &[&softmax_ce::GpuPlan],
    times: usize,
    case: &str,
) {
    let before = gpu.allocations();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for _ in 0..times {
        for plan in plans {
            plan.record(&mut encoder);
        }
    }
    gpu.queue().submit([encoder.finish()]);
    assert_eq!(
        gpu.allocations(),
        before,
        "{case}: recording a plan allocated"
    );
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
    let plans: Vec<_> = plans.iter().collect();
    record_without_allocating(gpu, &plans, 2, "backward, soft and sum plans");
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

/// Label words as an application writes them: `i32` (or `u32`, same bits for the
/// non-negative ones) in its buffer from byte `offset`.
fn write_labels(gpu: &GpuContext, buffer: &wgpu::Buffer, offset: u64, words: &[i64]) {
    let bits: Vec<i32> = words.iter().map(|&w| w as i32).collect();
    gpu.queue()
        .write_buffer(buffer, offset, bytemuck::cast_slice(&bits));
}

/// `rows` label words over `classes` classes, every fourth one `ignore` (if not `None`).
fn words(rows: usize, classes: usize, ignore: Option<i64>, seed: u64) -> Vec<i64> {
    let y = labels(rows, classes, 0, seed);
    (0..rows)
        .map(|i| match ignore {
            Some(ignore) if i % 4 == 3 => ignore,
            _ => y.get(i).unwrap() as i64,
        })
        .collect()
}

fn cross_entropy_options(classes: usize) -> Vec<(&'static str, CrossEntropyOptions)> {
    let w = ndarray::Array1::from_shape_fn(classes, |j| 0.25 + (j % 7) as f32 * 0.5);
    let base = CrossEntropyOptions::default();
    vec![
        ("mean", base.clone()),
        ("sum", base.clone().reduction(Reduction::Sum)),
        ("none", base.clone().reduction(Reduction::None)),
        ("weighted mean", base.clone().weight(w.clone())),
        (
            "weighted smoothed z-loss mean",
            base.clone().weight(w).label_smoothing(0.1).z_loss(1e-3),
        ),
    ]
}

/// Labels the application wrote on the device, `u32` and `i32`, at an aligned offset, with an
/// ignore index that is negative and one that is a class: every cross-entropy path decodes
/// them and counts a mean's rows on the device, and agrees with the CPU reference on the same
/// labels validated on the host, in every kernel configuration.
#[test]
fn wrapped_labels_are_decoded_and_counted_on_the_device() {
    require_gpu!();
    for (name, gpu) in configs() {
        let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
        for (rows, cols) in [(37, 10), (5, 1000), (130, 4), (1, 1)] {
            let x_host = logits(rows, cols, 3.0, 4);
            let x = gpu.upload(x_host.view()).unwrap();
            let cases = [
                (LabelType::I32, -100, Some(-100)),
                (LabelType::U32, -100, None),
                (LabelType::I32, 0, Some(0)),
                (LabelType::U32, 0, Some(0)),
            ];
            for (ty, ignore_index, written) in cases {
                let w = words(rows, cols, written, rows as u64);
                let buffer = app_buffer(gpu, align + 4 * rows as u64);
                write_labels(gpu, &buffer, align, &w);
                let y = gpu
                    .wrap_labels(&buffer, align, rows, cols, ty, ignore_index)
                    .unwrap();
                assert_eq!(y.active_count(), None);
                let host = softmax_ce::Labels::new(w.clone(), cols, ignore_index).unwrap();
                for (opt_name, opts) in cross_entropy_options(cols) {
                    let case =
                        format!("{name} {rows}x{cols} {ty:?} ignore {ignore_index} {opt_name}");
                    let want_loss = cpu::cross_entropy(x_host.view(), &host, &opts).unwrap();
                    let want_grad = cpu::cross_entropy_grad(x_host.view(), &host, &opts).unwrap();
                    let (loss, grad) = gpu.cross_entropy_with_grad(&x, &y, &opts).unwrap();
                    assert_loss(gpu.download_loss(&loss).unwrap(), want_loss.clone(), &case);
                    assert_close(
                        gpu.download(&grad).unwrap().view(),
                        want_grad.view(),
                        GRAD_ABS_PER_SCALE,
                        1e-5,
                        &format!("{case}: gradient"),
                    );
                    let loss = gpu.cross_entropy(&x, &y, &opts).unwrap();
                    assert_loss(gpu.download_loss(&loss).unwrap(), want_loss.clone(), &case);
                    if opts.is_plain() {
                        let (loss, grad) =
                            gpu.staged().cross_entropy_with_grad(&x, &y, &opts).unwrap();
                        let case = format!("{case} (staged)");
                        assert_loss(gpu.download_loss(&loss).unwrap(), want_loss, &case);
                        assert_close(
                            gpu.download(&grad).unwrap().view(),
                            want_grad.view(),
                            GRAD_ABS_PER_SCALE,
                            1e-5,
                            &format!("{case}: gradient"),
                        );
                    }
                }
            }
        }
    }
}

/// A label the host never validated and that is out of range (past the classes, or a
/// negative `i32` that is not the ignore index) gives its row a NaN loss and gradient, and a
/// mean or sum over it NaN: never a number. A mean over rows all ignored is NaN with a zero
/// gradient, as in PyTorch.
#[test]
fn out_of_range_device_labels_give_nan_never_a_number() {
    require_gpu!();
    for (name, gpu) in configs() {
        let (rows, cols) = (9, 12);
        let x_host = logits(rows, cols, 3.0, 7);
        let x = gpu.upload(x_host.view()).unwrap();
        for bad in [cols as i64, -5, i32::MAX as i64] {
            let mut w = words(rows, cols, Some(-100), 3);
            w[4] = bad;
            let buffer = app_buffer(gpu, 4 * rows as u64);
            write_labels(gpu, &buffer, 0, &w);
            let y = gpu
                .wrap_labels(&buffer, 0, rows, cols, LabelType::I32, -100)
                .unwrap();
            let mut fixed = w.clone();
            fixed[4] = -100;
            let host = softmax_ce::Labels::new(fixed, cols, -100).unwrap();
            let case = format!("{name}: label {bad} in row 4");
            let none = CrossEntropyOptions::default().reduction(Reduction::None);
            for staged in [false, true] {
                let (loss, grad) = if staged {
                    gpu.staged().cross_entropy_with_grad(&x, &y, &none).unwrap()
                } else {
                    gpu.cross_entropy_with_grad(&x, &y, &none).unwrap()
                };
                let Loss::PerRow(got) = gpu.download_loss(&loss).unwrap() else {
                    unreachable!()
                };
                let Loss::PerRow(want) = cpu::cross_entropy(x_host.view(), &host, &none).unwrap()
                else {
                    unreachable!()
                };
                let grad = gpu.download(&grad).unwrap();
                let want_grad = cpu::cross_entropy_grad(x_host.view(), &host, &none).unwrap();
                for r in 0..rows {
                    if r == 4 {
                        assert!(got[r].is_nan(), "{case} (staged {staged}): loss {}", got[r]);
                        assert!(grad.row(r).iter().all(|g| g.is_nan()), "{case}: gradient");
                    } else {
                        assert_close_scalar(got[r], want[r], LOSS_ABS, LOSS_REL, &case);
                        assert_close(
                            grad.row(r),
                            want_grad.row(r),
                            GRAD_ABS_PER_SCALE,
                            1e-5,
                            &case,
                        );
                    }
                }
            }
            for opts in [
                CrossEntropyOptions::default(),
                CrossEntropyOptions::default().reduction(Reduction::Sum),
                CrossEntropyOptions::default().label_smoothing(0.2),
            ] {
                let loss = gpu.cross_entropy(&x, &y, &opts).unwrap();
                let Loss::Reduced(v) = gpu.download_loss(&loss).unwrap() else {
                    unreachable!()
                };
                assert!(v.is_nan(), "{case} {opts:?}: {v}");
            }
        }
        // Every row ignored.
        let buffer = app_buffer(gpu, 4 * rows as u64);
        write_labels(gpu, &buffer, 0, &vec![-100; rows]);
        let y = gpu
            .wrap_labels(&buffer, 0, rows, cols, LabelType::I32, -100)
            .unwrap();
        for opts in [
            CrossEntropyOptions::default(),
            CrossEntropyOptions::default()
                .z_loss(1e-2)
                .label_smoothing(0.1),
        ] {
            let (loss, grad) = gpu.cross_entropy_with_grad(&x, &y, &opts).unwrap();
            let Loss::Reduced(v) = gpu.download_loss(&loss).unwrap() else {
                unreachable!()
            };
            assert!(v.is_nan(), "{name}: mean over no rows gave {v}");
            assert!(gpu.download(&grad).unwrap().iter().all(|&g| g == 0.0));
            let loss = gpu.cross_entropy(&x, &y, &opts).unwrap();
            let Loss::Reduced(v) = gpu.download_loss(&loss).unwrap() else {
                unreachable!()
            };
            assert!(v.is_nan(), "{name}: mean over no rows gave {v}");
        }
    }
}

/// A plan over wrapped labels replayed after the application rewrote them: each run decodes
/// and counts the labels of its moment (here a different number of ignored rows each frame),
/// with no allocation.
#[test]
fn a_replayed_plan_counts_the_labels_of_each_frame() {
    require_gpu!();
    let gpu = &GpuContext::new().unwrap();
    let (rows, cols) = (64, 33);
    let x_host = logits(rows, cols, 2.0, 11);
    let x = gpu.upload(x_host.view()).unwrap();
    let buffer = app_buffer(gpu, 4 * rows as u64);
    let y = gpu
        .wrap_labels(&buffer, 0, rows, cols, LabelType::U32, 7)
        .unwrap();
    let opts = CrossEntropyOptions::default()
        .weight(ndarray::Array1::from_shape_fn(cols, |j| {
            1.0 + j as f32 / 8.0
        }))
        .z_loss(1e-3);
    let loss = gpu.upload_vector(ndarray::arr1(&[0.0f32]).view()).unwrap();
    let grad = gpu
        .upload(ndarray::Array2::zeros((rows, cols)).view())
        .unwrap();
    let plan = gpu
        .plan_cross_entropy(&x, &y, &opts, &loss, Some(&grad))
        .unwrap();
    for frame in 0..4u64 {
        // Frame f ignores (label 7) about f / 4 of the rows.
        let w: Vec<i64> = words(rows, cols, None, frame)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if (i as u64) % 4 < frame { 7 } else { v })
            .collect();
        write_labels(gpu, &buffer, 0, &w);
        record_without_allocating(gpu, &[&plan], 1, "recording a plan allocated");
        let host = softmax_ce::Labels::new(w, cols, 7).unwrap();
        let case = format!("frame {frame}");
        let Loss::Reduced(want) = cpu::cross_entropy(x_host.view(), &host, &opts).unwrap() else {
            unreachable!()
        };
        assert_close_scalar(
            gpu.download_vector(&loss).unwrap()[0],
            want,
            LOSS_ABS,
            LOSS_REL,
            &case,
        );
        let want_grad = cpu::cross_entropy_grad(x_host.view(), &host, &opts).unwrap();
        assert_close(
            gpu.download(&grad).unwrap().view(),
            want_grad.view(),
            GRAD_ABS_PER_SCALE,
            1e-5,
            &case,
        );
    }
}

/// Each invalid label view gets its own error, naming the value.
#[test]
fn invalid_label_views_are_errors() {
    let gpu = require_gpu!();
    let fine = app_buffer(gpu, 1024);
    let err = |r: softmax_ce::Result<softmax_ce::GpuLabels>| r.unwrap_err().to_string();
    let no_storage = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1024,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let e = err(gpu.wrap_labels(&no_storage, 0, 4, 3, LabelType::U32, -100));
    assert!(e.contains("lacks STORAGE"), "{e}");
    let e = err(gpu.wrap_labels(&fine, 12, 4, 3, LabelType::U32, -100));
    assert!(e.contains("offset 12 is not a multiple of"), "{e}");
    let e = err(gpu.wrap_labels(&fine, 256, 193, 3, LabelType::I32, -100));
    assert!(
        e.contains("runs past the end of a buffer of 1024 bytes"),
        "{e}"
    );
    gpu.wrap_labels(&fine, 256, 192, 3, LabelType::I32, -100)
        .unwrap();
    let e = err(gpu.wrap_labels(&fine, 0, 4, 0, LabelType::U32, -100));
    assert!(e.contains("class dimension"), "{e}");
    let e = err(gpu.wrap_labels(&fine, 0, 4, (1 << 31) + 1, LabelType::I32, -100));
    assert!(
        e.contains("2147483649 classes do not fit I32 labels"),
        "{e}"
    );
    // Labels of another shape than the logits.
    let y = gpu
        .wrap_labels(&fine, 0, 4, 3, LabelType::U32, -100)
        .unwrap();
    let x = gpu.upload(logits(5, 3, 1.0, 0).view()).unwrap();
    let e = gpu
        .cross_entropy(&x, &y, &CrossEntropyOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 labels over 3 classes"), "{e}");
}

/// The products over wrapped operands at offsets (each in its own buffer, after a header of
/// the application's), into a wrapped output, through a plan recorded twice: the second
/// recording allocates nothing, and both kernels (texture and storage) agree with ndarray.
#[test]
fn products_read_wrapped_operands_at_offsets_into_given_outputs() {
    require_gpu!();
    // Contexts of this test's own (texture kernels, then storage ones): the shared ones'
    // allocation counters move with the other tests.
    let own = [
        ("default", GpuContext::new().unwrap()),
        (
            "no-subgroups",
            GpuContext::with_options(&softmax_ce::GpuOptions::default().subgroups(false)).unwrap(),
        ),
    ];
    for (name, gpu) in &own {
        let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
        for (m, k, n) in [(37, 19, 10), (64, 100, 8), (5, 3, 129)] {
            for transposed in [false, true] {
                let case = format!("{name} {m}x{k}x{n} transposed {transposed}");
                let a_host = if transposed {
                    logits(k, m, 1.0, 1)
                } else {
                    logits(m, k, 1.0, 1)
                };
                let b_host = logits(k, n, 1.0, 2);
                let wrap = |x: &ndarray::Array2<f32>| {
                    let buffer = app_buffer(gpu, align + 4 * x.len() as u64);
                    write(gpu, &buffer, align, x);
                    (buffer, x.dim())
                };
                let (a_buf, a_dim) = wrap(&a_host);
                let (b_buf, b_dim) = wrap(&b_host);
                let a = gpu.wrap_matrix(&a_buf, align, a_dim.0, a_dim.1).unwrap();
                let b = gpu.wrap_matrix(&b_buf, align, b_dim.0, b_dim.1).unwrap();
                let c_buf = app_buffer(gpu, 2 * align + 4 * (m * n) as u64);
                let c = gpu.wrap_matrix(&c_buf, 2 * align, m, n).unwrap();
                let plan = if transposed {
                    gpu.plan_matmul_tn_into(&a, &b, &c).unwrap()
                } else {
                    gpu.plan_matmul_into(&a, &b, &c).unwrap()
                };
                let want = if transposed {
                    a_host.t().dot(&b_host)
                } else {
                    a_host.dot(&b_host)
                };
                for round in 0..2 {
                    record_without_allocating(gpu, &[&plan], 1, "{case}: recording allocated");
                    assert_close(
                        gpu.download(&c).unwrap().view(),
                        want.view(),
                        1e-5,
                        1e-5,
                        &format!("{case}, round {round}"),
                    );
                }
                // The convenience methods read the same offsets.
                let got = if transposed {
                    gpu.matmul_tn(&a, &b).unwrap()
                } else {
                    gpu.matmul(&a, &b).unwrap()
                };
                assert_close(
                    gpu.download(&got).unwrap().view(),
                    want.view(),
                    1e-5,
                    1e-5,
                    &case,
                );
            }
        }
    }
}

/// The binary cross-entropy as a plan into given outputs, per-column weight and per-element
/// positive weight, every reduction: recorded twice, the second recording allocating nothing,
/// against the CPU reference.
#[test]
fn bce_plans_write_into_given_outputs() {
    use softmax_ce::gpu::GpuBceLoss;
    use softmax_ce::{BceOptions, cpu::BceLoss};
    require_gpu!();
    let gpu = &GpuContext::new().unwrap();
    let (rows, cols) = (13, 7);
    let z_host = logits(rows, cols, 6.0, 3);
    let t_host = logits(rows, cols, 0.5, 4).mapv(|v| v + 0.5);
    let w_host = logits(1, cols, 1.0, 5).mapv(|v| v + 1.5);
    let pw_host = logits(rows, cols, 1.0, 6).mapv(|v| v + 1.5);
    let (z, t) = (
        gpu.upload(z_host.view()).unwrap(),
        gpu.upload(t_host.view()).unwrap(),
    );
    let (w, pw) = (
        gpu.upload(w_host.view()).unwrap(),
        gpu.upload(pw_host.view()).unwrap(),
    );
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let opts = BceOptions::default()
            .reduction(reduction)
            .weight(w_host.clone())
            .pos_weight(pw_host.clone());
        let loss = match reduction {
            Reduction::None => GpuBceLoss::PerElement(
                gpu.upload(ndarray::Array2::<f32>::zeros((rows, cols)).view())
                    .unwrap(),
            ),
            _ => GpuBceLoss::Reduced(gpu.upload_vector(ndarray::arr1(&[0.0f32]).view()).unwrap()),
        };
        let grad = gpu
            .upload(ndarray::Array2::<f32>::zeros((rows, cols)).view())
            .unwrap();
        let plan = gpu
            .plan_bce_with_logits((&z, &t, Some(&w), Some(&pw)), reduction, &loss, &grad)
            .unwrap();
        let want_loss =
            cpu::bce_with_logits_nd(z_host.view().into_dyn(), t_host.view().into_dyn(), &opts)
                .unwrap();
        let want_grad =
            cpu::bce_with_logits_nd_grad(z_host.view().into_dyn(), t_host.view().into_dyn(), &opts)
                .unwrap();
        for round in 0..2 {
            record_without_allocating(gpu, &[&plan], 1, "recording a BCE plan allocated");
            let case = format!("{reduction:?}, round {round}");
            let got = match gpu.download_bce(&loss).unwrap() {
                BceLoss::PerElement(m) => m.into_dyn(),
                BceLoss::Reduced(v) => ndarray::arr0(v).into_dyn(),
            };
            assert_close(got.view(), want_loss.view(), LOSS_ABS, LOSS_REL, &case);
            assert_close(
                gpu.download(&grad).unwrap().into_dyn().view(),
                want_grad.view(),
                1e-6,
                1e-5,
                &format!("{case}: gradient"),
            );
        }
        // A loss of the wrong kind for the reduction is an error.
        let wrong = match reduction {
            Reduction::None => {
                GpuBceLoss::Reduced(gpu.upload_vector(ndarray::arr1(&[0.0f32]).view()).unwrap())
            }
            _ => GpuBceLoss::PerElement(
                gpu.upload(ndarray::Array2::<f32>::zeros((rows, cols)).view())
                    .unwrap(),
            ),
        };
        let e = gpu
            .plan_bce_with_logits((&z, &t, None, None), reduction, &wrong, &grad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes a loss of"), "{e}");
    }
}

#[test]
fn staged_and_copy_plans_write_into_given_outputs_without_allocating() {
    require_gpu!();
    let gpu = &GpuContext::new().unwrap();
    let (rows, cols) = (23, 77);
    let x = adversarial(rows, cols, 11);
    let host_labels = labels(rows, cols, 4, 12);
    let on_x = gpu.upload(x.view()).unwrap();
    let on_labels = gpu.upload_labels(&host_labels).unwrap();
    let zeros = || {
        gpu.upload(ndarray::Array2::zeros((rows, cols)).view())
            .unwrap()
    };
    let vector = |len: usize| {
        gpu.upload_vector(ndarray::Array1::zeros(len).view())
            .unwrap()
    };
    let staged = gpu.staged();
    let (m, s, lse, loss) = (vector(rows), vector(rows), vector(rows), vector(1));
    let (prob, log_prob, fused_prob, grad, copies) = (
        zeros(),
        zeros(),
        zeros(),
        zeros(),
        // At an offset inside the application's buffers: each copy must write from there.
        [(); 3].map(|()| {
            let buffer = app_buffer(gpu, 256 + 4 * (rows * cols) as u64);
            gpu.wrap_matrix(&buffer, 256, rows, cols).unwrap()
        }),
    );
    let opts = CrossEntropyOptions::default();
    let mut plans = vec![
        staged.plan_row_max(&on_x, &m).unwrap(),
        staged.plan_row_sumexp(&on_x, &m, &s).unwrap(),
        staged.plan_softmax_normalise(&on_x, &m, &s, &prob).unwrap(),
        staged
            .plan_log_softmax_normalise(&on_x, &m, &s, &log_prob)
            .unwrap(),
        staged.plan_softmax(&on_x, &fused_prob).unwrap(),
        staged.plan_logsumexp(&on_x, &lse).unwrap(),
        staged
            .plan_cross_entropy(&on_x, &on_labels, &opts, &loss, Some(&grad))
            .unwrap(),
    ];
    for (kernel, out) in softmax_ce::gpu::CopyKernel::ALL.iter().zip(&copies) {
        plans.push(gpu.plan_copy(&on_x, out, *kernel).unwrap());
    }
    // Twice: a replay must give the same outputs (the gradient is written, then subtracted
    // from, in each recording).
    let plans: Vec<_> = plans.iter().collect();
    record_without_allocating(gpu, &plans, 2, "staged and copy plans");

    let want_max = cpu::row_max(x.view()).unwrap();
    assert_close(
        gpu.download_vector(&m).unwrap().view(),
        want_max.view(),
        0.0,
        0.0,
        "row_max plan",
    );
    let want = cpu::softmax(x.view()).unwrap();
    for (got, what) in [
        (&prob, "softmax_normalise plan"),
        (&fused_prob, "staged softmax plan"),
    ] {
        let got = gpu.download(got).unwrap();
        assert_close(got.view(), want.view(), PROB_ABS, PROB_REL, what);
    }
    let want = cpu::log_softmax(x.view()).unwrap();
    let got = gpu.download(&log_prob).unwrap();
    assert_close(
        got.view(),
        want.view(),
        LOG_ABS,
        LOG_REL,
        "log_softmax_normalise plan",
    );
    let want = cpu::logsumexp(x.view()).unwrap();
    let got = gpu.download_vector(&lse).unwrap();
    assert_close(
        got.view(),
        want.view(),
        LOG_ABS,
        LOG_REL,
        "staged logsumexp plan",
    );
    let want = cpu::cross_entropy(x.view(), &host_labels, &opts).unwrap();
    assert_close_scalar(
        gpu.download_vector(&loss).unwrap()[0],
        want.scalar().unwrap(),
        LOSS_ABS,
        LOSS_REL,
        "staged cross-entropy plan",
    );
    let want = cpu::cross_entropy_grad(x.view(), &host_labels, &opts).unwrap();
    let got = gpu.download(&grad).unwrap();
    assert_close(got.view(), want.view(), 1e-6, 1e-5, "staged gradient plan");
    for (kernel, out) in softmax_ce::gpu::CopyKernel::ALL.iter().zip(&copies) {
        let got = gpu.download(out).unwrap();
        assert_close(got.view(), x.view(), 0.0, 0.0, kernel.name());
    }

    // Outputs are checked like every plan's.
    let e = staged.plan_row_max(&on_x, &vector(rows + 1)).unwrap_err();
    assert!(e.to_string().contains("row maxima (one per row)"), "{e}");
    let e = gpu
        .plan_copy(&on_x, &on_x, softmax_ce::gpu::CopyKernel::Flat)
        .unwrap_err();
    assert!(e.to_string().contains("shares a buffer"), "{e}");
    let e = staged.plan_one_hot_subtract(&on_x, &on_labels, 1.0);
    assert!(e.is_ok(), "in place on its own buffer: {e:?}");
    let buffer = app_buffer(gpu, 4 * (rows * (cols + 3)) as u64);
    let strided = gpu
        .wrap_matrix_strided(&buffer, 0, rows, cols, cols + 3)
        .unwrap();
    let e = gpu
        .plan_copy(&on_x, &strided, softmax_ce::gpu::CopyKernel::Buffer)
        .unwrap_err();
    assert!(e.to_string().contains("rows end to end"), "{e}");
    assert!(
        gpu.plan_copy(&on_x, &strided, softmax_ce::gpu::CopyKernel::Rows)
            .is_ok()
    );
}
