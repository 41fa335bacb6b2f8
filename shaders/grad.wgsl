// grad.wgsl: the one-hot-subtract gradient of the cross-entropy.
//
//   one_hot_subtract: g[i, j] = (g[i, j] - [j == y[i]]) * p.a.scale / den[0], in place over the
//                     probabilities (softmax_normalise's output); 0 for an ignored row, NaN
//                     for a label out of range (label_class, common.wgsl).
//
// p.a.scale / den[0] is the reduction's scale: den[0] the rows not ignored for a mean (counted by the
// host, or on the device), p.a.scale a scale of the caller's.
//
// Bindings (group 0), windowed by rows:
//   1 y    read        array<u32>  one label word per row
//   2 g    read_write  array<S>    N x C: probabilities in, gradient out (f32 or f16: in f16
//                                   the probabilities were rounded once already, so the label's
//                                   entry p - 1 carries p's rounding, up to 2^-12 absolute)
//   3 den  read        array<f32>  the denominator, bound whole
// Dispatch: a team of p.tpr threads per row (common.wgsl).
// Rust side: Kernel::OneHotSubtract; cpu::one_hot_subtract.


// RowParams.a; GradArgs in src/gpu/params.rs.
struct Args {
    scale: f32,  // the gradient's scale, over den[0]
    pad0: u32,
    pad1: u32,
    pad2: u32,
    pad3: u32,
    pad4: u32,
    pad5: u32,
    pad6: u32,
}

@group(0) @binding(1) var<storage, read> y: array<u32>;
@group(0) @binding(2) var<storage, read_write> g: array<S>;
@group(0) @binding(3) var<storage, read> den: array<f32>;

@compute @workgroup_size(WG)
fn one_hot_subtract(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let cls = label_class(y[p.vec_base + safe_row(l)]);
    let scale = p.a.scale / den[0];
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        // select, not a multiply by 0: an ignored row's probabilities may be NaN.
        let grad = select((V(g[start + i]) - onehot(i, cls)) * scale, splat(0.0), cls == IGNORED);
        g[start + i] = S(select(grad, splat(p.nan), cls == INVALID));
    }
}
