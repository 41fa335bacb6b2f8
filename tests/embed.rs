//! softmax-ce inside an application's own GPU work: a context shared between threads and
//! clones, and downloads that do not block.

mod common;

use common::*;
use softmax_ce::{GpuContext, cpu};

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
