// reduce.wgsl: the row reductions that open the staged softmax and loss.
//
//   row_max:    m[i] = max_j x[i, j]
//   row_sumexp: s[i] = sum_j exp(x[i, j] - m[i]), or 0 when m[i] = -inf (an all -inf row), so
//               that the pair (m, s) of two column chunks merges exactly.
//
// Bindings (group 0), windowed by rows as common.wgsl describes:
//   row_max     1 x      read        array<S>    N x C matrix
//               2 m_out  read_write  array<f32>  one per row
//   row_sumexp  1 x      read        array<S>    N x C matrix
//               2 m      read        array<f32>  one per row
//               3 s_out  read_write  array<f32>  one per row
// Dispatch: a team of p.tpr threads per row (common.wgsl).
// Rust side: Kernel::{RowMax, RowSumexp} in src/gpu/shaders.rs; cpu::{row_max, row_sumexp}.


// No arguments (RowParams.a; NoArgs in src/gpu/params.rs).
struct Args {
    unused: array<vec4<u32>, 2>,
}

@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read_write> m_out: array<f32>;
@group(0) @binding(2) var<storage, read> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> s_out: array<f32>;

@compute @workgroup_size(WG)
fn row_max(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    // Seeded with the row's own first vector rather than a sentinel: WGSL has no -inf literal,
    // and an all -inf row must reduce to -inf.
    var acc = V(x[start]);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        acc = max(acc, V(x[start + i]));
    }
    let row_m = team_max(lid, hmax(acc));
    if l.live && l.t == 0u {
        m_out[p.vec_base + l.row] = row_m;
    }
}

@compute @workgroup_size(WG)
fn row_sumexp(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let row_m = m[p.vec_base + safe_row(l)];
    // exp(-inf - 0) = 0 for every entry of an all -inf row, where exp(-inf - -inf) would be NaN.
    let shift = select(row_m, 0.0, row_m < -F32_MAX);
    var acc = splat(0.0);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        acc += exp(V(x[start + i]) - shift);
    }
    let s = team_sum(lid, hsum(acc));
    if l.live && l.t == 0u {
        s_out[p.vec_base + l.row] = s;
    }
}
