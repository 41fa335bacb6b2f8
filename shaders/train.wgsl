// train.wgsl: the row kernels of softmax-regression training, for the small class counts of a
// classifier (one thread walks a whole row, so a batch step costs one dispatch here).
//
//   softmax_grad_rows: g[i, j] = (softmax(g[i])_j - [j == y[i]]) * p.f0, in place over the
//                      logits; 0 for rows with y = IGNORED. The SGD step's Z - I_y, scaled.
//   loss_err_rows:     loss[i] = logsumexp(x[i]) - x[i, y[i]];
//                      err[i]  = 1 if the first maximum of x[i] (numpy's argmax) is not at
//                      y[i], else 0. Both 0 for rows with y = IGNORED.
//
// Bindings (group 0), windowed by rows:
//   softmax_grad_rows  1 y         read        array<u32>  one label per row, or IGNORED
//                      2 g         read_write  array<f32>  N x C: logits in, gradient out
//   loss_err_rows      1 x         read        array<f32>  N x C logits
//                      2 y         read        array<u32>  (as above)
//                      3 loss_out  read_write  array<f32>  one per row
//                      4 err_out   read_write  array<f32>  one per row
// Dispatch: one thread per row (p.tpr = 1), always scalar (W = 1).
// Rust side: Kernel::{SoftmaxGradRows, LossErrRows}; src/gpu/train.rs; src/train.rs on the CPU.

@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> err_out: array<f32>;

@compute @workgroup_size(WG)
fn softmax_grad_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let start = row_start(l);
    let label = labels[p.vec_base + l.row];
    if label == IGNORED {
        for (var j = 0u; j < p.cols; j++) {
            g[start + j] = 0.0;
        }
        return;
    }
    var m = g[start];
    for (var j = 1u; j < p.cols; j++) {
        m = max(m, g[start + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        s += exp(g[start + j] - m);
    }
    let scale = p.f0 / s;
    for (var j = 0u; j < p.cols; j++) {
        g[start + j] = exp(g[start + j] - m) * scale - select(0.0, p.f0, j == label);
    }
}

@compute @workgroup_size(WG)
fn loss_err_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let i = p.vec_base + l.row;
    let label = y[i];
    if label == IGNORED {
        loss_out[i] = 0.0;
        err_out[i] = 0.0;
        return;
    }
    let start = row_start(l);
    var m = x[start];
    var arg = 0u;
    for (var j = 1u; j < p.cols; j++) {
        // Strictly greater: the first of equal maxima wins, as numpy's argmax.
        if x[start + j] > m {
            m = x[start + j];
            arg = j;
        }
    }
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        s += exp(x[start + j] - m);
    }
    loss_out[i] = (m - x[start + label]) + log(s);
    err_out[i] = select(0.0, 1.0, arg != label);
}
