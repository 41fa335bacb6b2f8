// softmax.wgsl: the staged exp/normalise step, from the row statistics of reduce.wgsl.
//
//   softmax_normalise:     out[i, j] = exp(x[i, j] - m[i]) / s[i]
//   log_softmax_normalise: out[i, j] = (x[i, j] - m[i]) - log(s[i])
//
// m is the raw row maximum, so a row containing +inf, or all -inf, gives NaN as in PyTorch.
//
// Bindings (group 0), windowed by rows:
//   1 x    read        array<S>    N x C matrix (S: f32 or f16, computed in f32)
//   2 m    read        array<f32>  one per row (row_max)
//   3 s    read        array<f32>  one per row (row_sumexp)
//   4 out  read_write  array<S>    N x C matrix, in x's precision
// Dispatch: a team of p.tpr threads per row (common.wgsl).
// Rust side: Kernel::{SoftmaxNormalise, LogSoftmaxNormalise}; cpu::{softmax, log_softmax}.


// No arguments (RowParams.a; NoArgs in src/gpu/params.rs).
struct Args {
    unused: array<vec4<u32>, 2>,
}

@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read> m: array<f32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<S>;

@compute @workgroup_size(WG)
fn softmax_normalise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let out_start = row_at(1u, l);
    let row_m = m[p.vec_base + safe_row(l)];
    let inv = 1.0 / s[p.vec_base + safe_row(l)];
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        out[out_start + i] = S(exp(V(x[start + i]) - row_m) * inv);
    }
}

@compute @workgroup_size(WG)
fn log_softmax_normalise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let out_start = row_at(1u, l);
    let row_m = m[p.vec_base + safe_row(l)];
    let log_s = log(s[p.vec_base + safe_row(l)]);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        // x - m first: it is exact for nearby values, where x - (m + log s) would round.
        out[out_start + i] = S((V(x[start + i]) - row_m) - log_s);
    }
}
