// grad.wgsl: the one-hot-subtract gradient of the cross-entropy.
//
//   one_hot_subtract: g[i, j] = (g[i, j] - [j == y[i]]) * p.f0, in place over the
//                     probabilities (softmax_normalise's output); 0 for rows with y = IGNORED.
//
// p.f0 is the reduction's scale: 1 / (rows not ignored) for a mean, 1 for a sum.
//
// Bindings (group 0), windowed by rows:
//   1 y  read        array<u32>  one label per row, or IGNORED
//   2 g  read_write  array<V>    N x C: probabilities in, gradient out
// Dispatch: a team of p.tpr threads per row (common.wgsl).
// Rust side: Kernel::OneHotSubtract; cpu::one_hot_subtract.

@group(0) @binding(1) var<storage, read> y: array<u32>;
@group(0) @binding(2) var<storage, read_write> g: array<V>;

@compute @workgroup_size(WG)
fn one_hot_subtract(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let label = y[p.vec_base + safe_row(l)];
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        // select, not a multiply by 0: an ignored row's probabilities may be NaN.
        g[start + i] = select((g[start + i] - onehot(i, label)) * p.f0, splat(0.0), label == IGNORED);
    }
}
