// backward.wgsl: gradients that flow back through softmax, log-softmax and the logistic loss.
//
//   softmax_backward:     dx[i, j] = p[i, j] * (dy[i, j] - sum_k dy[i, k] p[i, k])
//                         (dy times the Jacobian diag(p) - p p^T; seeds 001 and 003)
//   log_softmax_backward: dx[i, j] = dy[i, j] - exp(lp[i, j]) * sum_k dy[i, k]
//   bce_with_logits:      loss[i, j] = max(z, 0) - z t + log(1 + exp(-|z|)),
//                         g[i, j] = (sigmoid(z) - t) * p.f0 (p.f0: the reduction's scale)
//
// Bindings (group 0), windowed by rows:
//   softmax_backward, log_softmax_backward
//                      1 a     read        array<V>  N x C probabilities (or log-probabilities)
//                      2 dy    read        array<V>  N x C upstream gradient
//                      3 dx    read_write  array<V>  N x C result
//   bce_with_logits    1 a     read        array<V>  N x C logits z
//                      2 dy    read        array<V>  N x C targets t
//                      3 dx    read_write  array<V>  N x C per-element loss
//                      4 g     read_write  array<V>  N x C gradient
// Dispatch: a team of p.tpr threads per row (common.wgsl).
// Rust side: Kernel::{SoftmaxBackward, LogSoftmaxBackward, BceWithLogits};
// cpu::{softmax_backward, log_softmax_backward, bce_with_logits, bce_with_logits_grad}.

@group(0) @binding(1) var<storage, read> a: array<V>;
@group(0) @binding(2) var<storage, read> dy: array<V>;
@group(0) @binding(3) var<storage, read_write> dx: array<V>;
@group(0) @binding(4) var<storage, read_write> g: array<V>;

@compute @workgroup_size(WG)
fn softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    var acc = splat(0.0);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        acc += a[start + i] * dy[start + i];
    }
    let dot = splat(team_sum(lid, hsum(acc)));
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        dx[start + i] = a[start + i] * (dy[start + i] - dot);
    }
}

@compute @workgroup_size(WG)
fn log_softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    var acc = splat(0.0);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        acc += dy[start + i];
    }
    let total = splat(team_sum(lid, hsum(acc)));
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        dx[start + i] = dy[start + i] - exp(a[start + i]) * total;
    }
}

@compute @workgroup_size(WG)
fn bce_with_logits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        let z = a[start + i];
        let t = dy[start + i];
        // Never exp of a positive number: stable for any z.
        let e = exp(-abs(z));
        // max(z, 0) - z t as one product per sign, not a difference of two large numbers.
        let linear = select(-z * t, z * (splat(1.0) - t), z >= splat(0.0));
        dx[start + i] = linear + log(splat(1.0) + e);
        // sigmoid(z) from the same e: 1 / (1 + e) for z >= 0, e / (1 + e) below.
        let sigmoid = select(e, splat(1.0), z >= splat(0.0)) / (splat(1.0) + e);
        g[start + i] = (sigmoid - t) * p.f0;
    }
}
