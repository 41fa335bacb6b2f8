// train.wgsl: the kernels of softmax-regression training.
//
//   softmax_grad_rows: g[i, j] = (softmax(g[i])_j - [j == y[i]]) * p.a.scale, in place over the
//                      logits; 0 for rows with y = IGNORED. The SGD step's Z - I_y, scaled.
//   loss_err_rows:     loss[i] = logsumexp(z[i]) - z[i, y[i]] for logits z;
//                      err[i]  = 1 if the first maximum of z[i] (numpy's argmax) is not at
//                      y[i], else 0. Both 0 for rows with y = IGNORED.
//
// Bindings (group 0), windowed by rows:
//   softmax_grad_rows  1 y         read        array<u32>  one label per row, or IGNORED
//                      2 g         read_write  array<f32>  N x C: logits in, gradient out
//   loss_err_rows      1 logits    read        array<f32>  N x C logits
//                      2 y         read        array<u32>  (as above)
//                      3 loss_out  read_write  array<f32>  one per row
//                      4 err_out   read_write  array<f32>  one per row
// Dispatch: a team of p.tpr threads per row, as the other row kernels (a thread walking a whole
// row of many classes would run past lavapipe's loop limit), always scalar (W = 1).
// Rust side (row kernels): Kernel::{SoftmaxGradRows, LossErrRows}.
//
// The fused batch step, for models whose theta (features x C, C <= STEP_CLASSES) and whose batch
// gradient (B x C) each fit one uniform binding of STEP_UNIFORM vec4s. Every thread reads the
// same element of theta or G at the same time: from a uniform binding that is one broadcast
// (a constant-cache hit on a GPU, one scalar load for all SIMD lanes on lavapipe), where a
// storage load would be repeated per lane. A batch step is then two dispatches:
//
//   step_forward:  g[b, j] = (softmax(x[b] theta)_j - [j == y[b]]) * p.a.scale, from the logits
//                  computed in registers (the matmul, softmax and one-hot subtract in one pass);
//                  0 for rows with y = IGNORED.
//   step_update:   theta[k, j] = p.a.decay * theta[k, j] + p.a.scale * sum_b x[b, k] g[b, j]:
//                  one thread per feature k, the SGD update theta - lr/B X^T G (p.a.scale = -lr/B,
//                  p.a.decay = 1 - lr l2).
//   loss_err_fused: loss_err_rows of the logits x[i] theta, computed in registers.
//
// Bindings (group 0):
//   step_forward    1 x        read        array<S>    B x features, windowed by rows (the
//                                                      data: f32, or f16 in the f16 variant)
//                   2 y        read        array<u32>  one label per row
//                   3 g_out    read_write  array<f32>  B x C, bound whole (one window)
//                   4 theta_u  uniform     features x C, row-major, as vec4s
//   step_update     1 xb       read        array<S>    the batch's rows, from element p.base[0].x
//                   2 g_u      uniform     B x C, row-major, as vec4s
//                   3 theta    read_write  array<f32>  features x C
//   loss_err_fused  1 x, 2 y, 3 loss_out as loss_err_rows; 4 theta_u as step_forward;
//                   5 err_fused  read_write  array<f32>  one per row (loss_err_rows' err_out)
// Params: p.a.classes = C in every step kernel; step_update: p.rows = features, p.cols = B.
// Dispatch: one thread per row (batch row, feature, or data row), p.tpr = 1, scalar (W = 1).
// Rust side: Kernel::{SoftmaxGradRows, LossErrRows, StepForward, StepUpdate, LossErrFused};
// src/gpu/train.rs; src/train.rs on the CPU.


// RowParams.a; TrainArgs in src/gpu/params.rs.
struct Args {
    classes: u32,  // C: columns of theta and of the logits
    scale: f32,    // the gradient's scale; step_update: -lr / B
    decay: f32,    // step_update: 1 - lr l2
    pad0: u32,
    pad1: u32,
    pad2: u32,
    pad3: u32,
    pad4: u32,
}

@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read> y: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> err_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> g_out: array<f32>;
@group(0) @binding(4) var<uniform> theta_u: array<vec4<f32>, STEP_UNIFORM>;
@group(0) @binding(5) var<storage, read_write> err_fused: array<f32>;
@group(0) @binding(1) var<storage, read> xb: array<S>;
@group(0) @binding(2) var<uniform> g_u: array<vec4<f32>, STEP_UNIFORM>;
@group(0) @binding(3) var<storage, read_write> theta: array<f32>;

@compute @workgroup_size(WG)
fn softmax_grad_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Every lane runs to the end, dead ones on the last row: the team reductions hold barriers.
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let label = labels[p.vec_base + safe_row(l)];
    // Seeded from the thread's own share: another thread's element may be rewritten in place
    // by the last pass while a slower thread still reads it (no barrier within a subgroup).
    var m = g[start + min(l.t, p.cols - 1u)];
    for (var j = l.t; j < row_vectors(l); j += p.tpr) {
        m = max(m, g[start + j]);
    }
    m = team_max(lid, m);
    var s = 0.0;
    for (var j = l.t; j < row_vectors(l); j += p.tpr) {
        s += exp(g[start + j] - m);
    }
    s = team_sum(lid, s);
    let scale = p.a.scale / s;
    let ignored = label == IGNORED;
    for (var j = l.t; j < row_vectors(l); j += p.tpr) {
        let v = exp(g[start + j] - m) * scale - select(0.0, p.a.scale, j == label);
        // Nothing of an ignored row's logits reaches its gradient, not even a NaN.
        g[start + j] = select(v, 0.0, ignored);
    }
}

var<workgroup> arg_scratch: array<u32, WG>;

// The smallest `v` over the team of this lane's row; the contract of team_max.
fn team_min_u32(lid: u32, v: u32) -> u32 {
    arg_scratch[lid] = v;
    workgroupBarrier();
    let t = lid % p.tpr;
    for (var k = p.tpr / 2u; k > 0u; k >>= 1u) {
        if t < k {
            arg_scratch[lid] = min(arg_scratch[lid], arg_scratch[lid + k]);
        }
        workgroupBarrier();
    }
    let r = arg_scratch[lid - t];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn loss_err_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let i = p.vec_base + safe_row(l);
    let label = y[i];
    // Seeded with class 0, which every thread may claim: its index is below any other.
    var m = logits[start];
    var arg = 0u;
    for (var j = l.t; j < row_vectors(l); j += p.tpr) {
        // Strictly greater: the first of equal maxima wins, as numpy's argmax.
        if logits[start + j] > m {
            m = logits[start + j];
            arg = j;
        }
    }
    let row_m = team_max(lid, m);
    // A NaN seed (class 0) never compares equal: it claims class 0, as numpy's argmax and
    // the CPU trainer do.
    let first = team_min_u32(lid, select(0xffffffffu, arg, m == row_m || m != m));
    var s = 0.0;
    for (var j = l.t; j < row_vectors(l); j += p.tpr) {
        s += exp(logits[start + j] - row_m);
    }
    s = team_sum(lid, s);
    if !l.live || l.t != 0u {
        return;
    }
    if label == IGNORED {
        loss_out[i] = 0.0;
        err_out[i] = 0.0;
        return;
    }
    loss_out[i] = (row_m - logits[start + label]) + log(s);
    err_out[i] = select(0.0, 1.0, first != label);
}

// The fused kernels keep a row's logits (or a feature's gradient) in four named vec4s, classes
// 0-15: an array indexed in a loop would live in memory on lavapipe. Lanes past the last class
// accumulate whatever follows in theta or G and are never read.
struct Classes {
    q0: vec4<f32>,
    q1: vec4<f32>,
    q2: vec4<f32>,
    q3: vec4<f32>,
}

fn class_of(c: Classes, j: u32) -> f32 {
    switch j / 4u {
        case 0u: { return c.q0[j % 4u]; }
        case 1u: { return c.q1[j % 4u]; }
        case 2u: { return c.q2[j % 4u]; }
        default: { return c.q3[j % 4u]; }
    }
}

// Four consecutive elements of a row-major matrix held in a uniform array of vec4s.
fn theta4(i: u32) -> vec4<f32> {
    return vec4(theta_u[i / 4u][i % 4u], theta_u[(i + 1u) / 4u][(i + 1u) % 4u],
                theta_u[(i + 2u) / 4u][(i + 2u) % 4u], theta_u[(i + 3u) / 4u][(i + 3u) % 4u]);
}

fn g4(i: u32) -> vec4<f32> {
    return vec4(g_u[i / 4u][i % 4u], g_u[(i + 1u) / 4u][(i + 1u) % 4u],
                g_u[(i + 2u) / 4u][(i + 2u) % 4u], g_u[(i + 3u) / 4u][(i + 3u) % 4u]);
}

// x[row] theta for the row starting at element `start` of x, p.a.classes classes.
// Dead lanes call this on the last row and discard the result: returning before the loop
// would make it divergent.
fn row_logits(start: u32) -> Classes {
    let classes = p.a.classes;
    var c = Classes(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
    for (var k = 0u; k < p.cols; k++) {
        let v = V(x[start + k]);
        let base = k * classes;
        c.q0 += v * theta4(base);
        if classes > 4u {
            c.q1 += v * theta4(base + 4u);
        }
        if classes > 8u {
            c.q2 += v * theta4(base + 8u);
        }
        if classes > 12u {
            c.q3 += v * theta4(base + 12u);
        }
    }
    return c;
}

// The largest logit and the first class holding it (numpy's argmax: strictly greater wins).
fn arg_max(z: Classes, classes: u32) -> vec2<f32> {
    var m = z.q0.x;
    var arg = 0u;
    for (var j = 1u; j < classes; j++) {
        let v = class_of(z, j);
        if v > m {
            m = v;
            arg = j;
        }
    }
    return vec2(m, f32(arg));
}

@compute @workgroup_size(WG)
fn step_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let classes = p.a.classes;
    let z = row_logits(row_start(l));
    if !l.live {
        return;
    }
    write_gradient(l.row, y[p.vec_base + l.row], z, classes, p.a.scale);
}

// Row `row` of the batch gradient: (softmax(z) - onehot(label)) * scale, or zeros for an
// ignored row.
fn write_gradient(row: u32, label: u32, z: Classes, classes: u32, scale: f32) {
    let out = row * classes;
    if label == IGNORED {
        for (var j = 0u; j < classes; j++) {
            g_out[out + j] = 0.0;
        }
        return;
    }
    let m = arg_max(z, classes).x;
    var s = 0.0;
    for (var j = 0u; j < classes; j++) {
        s += exp(class_of(z, j) - m);
    }
    let f = scale / s;
    for (var j = 0u; j < classes; j++) {
        g_out[out + j] = exp(class_of(z, j) - m) * f - select(0.0, scale, j == label);
    }
}

@compute @workgroup_size(WG)
fn step_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let classes = p.a.classes;
    let features = p.rows;
    let k = safe_row(l);
    var c = Classes(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
    for (var b = 0u; b < p.cols; b++) {
        let v = V(xb[p.base[0].x + b * features + k]);
        let base = b * classes;
        c.q0 += v * g4(base);
        if classes > 4u {
            c.q1 += v * g4(base + 4u);
        }
        if classes > 8u {
            c.q2 += v * g4(base + 8u);
        }
        if classes > 12u {
            c.q3 += v * g4(base + 12u);
        }
    }
    if !l.live {
        return;
    }
    for (var j = 0u; j < classes; j++) {
        let i = k * classes + j;
        theta[i] = p.a.decay * theta[i] + p.a.scale * class_of(c, j);
    }
}

@compute @workgroup_size(WG)
fn loss_err_fused(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let classes = p.a.classes;
    let z = row_logits(row_start(l));
    if !l.live {
        return;
    }
    write_loss_err(p.vec_base + l.row, z, classes);
}

// Row i's loss and error from its logits z (zeros for an ignored row).
fn write_loss_err(i: u32, z: Classes, classes: u32) {
    let label = y[i];
    if label == IGNORED {
        loss_out[i] = 0.0;
        err_fused[i] = 0.0;
        return;
    }
    let best = arg_max(z, classes);
    var s = 0.0;
    for (var j = 0u; j < classes; j++) {
        s += exp(class_of(z, j) - best.x);
    }
    loss_out[i] = (best.x - class_of(z, label)) + log(s);
    err_fused[i] = select(0.0, 1.0, u32(best.y) != label);
}
