// backward.wgsl: gradients that flow back through softmax, log-softmax and the logistic loss.
//
//   softmax_backward:     dx[i, j] = p[i, j] * (dy[i, j] - sum_k dy[i, k] p[i, k])
//                         (dy times the Jacobian diag(p) - p p^T; seeds 001 and 003)
//   log_softmax_backward: dx[i, j] = dy[i, j] - exp(lp[i, j]) * sum_k dy[i, k]
//   logistic_residual:    r[i] = sigmoid(z[i]) - y[i], in place over a batch's logits (the
//                         logistic-regression step, src/gpu/logistic.rs; seed 002)
//   bce_with_logits:      per element e of z, t (F.binary_cross_entropy_with_logits), with
//                         weight w, positive weight pw and c = 1 + (pw - 1) t:
//                         loss[e] = w ((1 - t) z + c softplus(-z))
//                         g[e]    = w ((1 - t) sigmoid(z) - pw t sigmoid(-z)) * p.a.scale
//                         (p.a.scale: the reduction's scale; sum_tree adds the scaled terms)
//
// Bindings (group 0), windowed by rows:
//   softmax_backward, log_softmax_backward
//                      1 a         read        array<V>    N x C probabilities (or log-probs)
//                      2 dy        read        array<V>    N x C upstream gradient
//                      3 dx        read_write  array<V>    N x C result
//   bce_with_logits    1 a         read        array<S>    logits z, flat
//   (and _weighted)    2 dy        read        array<S>    targets t, flat
//                      3 bce_cols  read        array<f32>  bound whole: K weights, then K
//                                                          positive weights (BCE_COLS)
//                      4 bce_loss  read_write  array<V>    per-element loss, flat, f32
//                      5 bce_grad  read_write  array<S>    gradient, flat
//   bce_with_logits_weighted, also:
//                      6 bce_w     read        array<V>    weights, flat, f32 (BCE_FULL)
//                      7 bce_pw    read        array<V>    positive weights, flat, f32
//                                                          (BCE_FULL; the weights' buffer
//                                                          again where only they are full)
//   logistic_residual  1 a         read        array<V>    N x 1 targets y (W = 1)
//                      2 resid     read_write  array<f32>  one per row: z in, sigmoid(z) - y out
//   p.a of bce_with_logits: the weight's and the positive weight's modes (BCE_ONE: 1; BCE_COLS:
//   one per column of a K-column matrix, from bce_cols; BCE_FULL: one per element), K, and the
//   column of the window's first element.
// Dispatch: logistic_residual: one thread per row (p.tpr = 1).
// softmax_backward and log_softmax_backward: a team of p.tpr threads per row
// (common.wgsl). bce_with_logits: one thread per vector, no loop over elements (each "row" of
// the dispatch is one V, p.tpr = 1): the host cuts the flat array into windows of one dispatch
// each, vec4s first and the last len % 4 elements at W = 1, with groups folded into y. Each of
// its matrices has its own base (row_at): f16 and f32 windows start at different places.
// Rust side: Kernel::{SoftmaxBackward, LogSoftmaxBackward, BceWithLogits,
// BceWithLogitsWeighted, LogisticResidual};
// cpu::{softmax_backward, log_softmax_backward, bce_with_logits_nd, bce_with_logits_nd_grad}.


// RowParams.a; BackwardArgs in src/gpu/params.rs (read by bce_with_logits only).
struct Args {
    weight_mode: u32,      // BCE_ONE, BCE_FULL or BCE_COLS
    pos_weight_mode: u32,  // the same for the positive weight
    scale: f32,            // the reduction's scale
    k_cols: u32,           // K, along which a per-column weight runs
    first_col: u32,        // the column (mod K) of the window's first element
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> dy: array<S>;
@group(0) @binding(3) var<storage, read_write> dx: array<S>;
@group(0) @binding(2) var<storage, read_write> resid: array<f32>;
@group(0) @binding(3) var<storage, read> bce_cols: array<f32>;
@group(0) @binding(4) var<storage, read_write> bce_loss: array<V>;
@group(0) @binding(5) var<storage, read_write> bce_grad: array<S>;
@group(0) @binding(6) var<storage, read> bce_w: array<V>;
@group(0) @binding(7) var<storage, read> bce_pw: array<V>;

// Modes of a BCE weight. Keep in sync with BCE_ONE, BCE_COLS, BCE_FULL in src/gpu/ops.rs.
const BCE_ONE: u32 = 0u;
const BCE_COLS: u32 = 1u;
const BCE_FULL: u32 = 2u;

@compute @workgroup_size(WG)
fn softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let dy_start = row_at(1u, l);
    let dx_start = row_at(2u, l);
    var acc = splat(0.0);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        acc += V(a[start + i]) * V(dy[dy_start + i]);
    }
    let dot = splat(team_sum(lid, hsum(acc)));
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        dx[dx_start + i] = S(V(a[start + i]) * (V(dy[dy_start + i]) - dot));
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
    let dy_start = row_at(1u, l);
    let dx_start = row_at(2u, l);
    var acc = splat(0.0);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        acc += V(dy[dy_start + i]);
    }
    let total = splat(team_sum(lid, hsum(acc)));
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        dx[dx_start + i] = S(V(dy[dy_start + i]) - exp(V(a[start + i])) * total);
    }
}

// log(1 + x) for x in [0, 1], accurate where 1 + x rounds (Goldberg's correction): a confident
// right answer's tiny loss is kept instead of rounded to 0.
fn log1p_small(x: V) -> V {
    let u = splat(1.0) + x;
    return select(log(u) * (x / (u - splat(1.0))), x, u == splat(1.0));
}

// The per-column BCE weights at `offset` of bce_cols for the W elements of vector `v`.
fn bce_cols_at(offset: u32, v: u32) -> V {
    let k_cols = p.a.k_cols;
    let first = p.a.first_col + v * W;
    var out = splat(0.0);
    for (var k = 0u; k < W; k++) {
        out += onehot(v, v * W + k) * bce_cols[offset + (first + k) % k_cols];
    }
    return out;
}

// A weight of mode BCE_ONE or BCE_COLS (K weights from `offset` of bce_cols) for vector `v`.
fn bce_weight(mode: u32, offset: u32, v: u32) -> V {
    if mode == BCE_COLS {
        return bce_cols_at(offset, v);
    }
    return splat(1.0);
}

// Writes the loss and the gradient of the lane's vector under weight w and positive weight pw.
// Matrices 0 to 3 are z, t, the loss and the gradient (row_at, common.wgsl).
fn bce_store(l: Lane, w: V, pw: V) {
    let z = V(a[row_at(0u, l)]);
    let t = V(dy[row_at(1u, l)]);
    // Never exp of a positive number: stable for any z.
    let e = exp(-abs(z));
    let pos = z >= splat(0.0);
    // softplus(-z) = max(-z, 0) + log1p(e): the loss is (1 - t) z + c log1p(e) for z >= 0 and
    // pw t (-z) + c log1p(e) below, one product per sign and no difference of large numbers.
    // A zero coefficient times an infinite logit is 0, its limit (PyTorch gives NaN).
    let coef = select(pw * t, splat(1.0) - t, pos);
    let linear = select(coef * abs(z), splat(0.0), coef == splat(0.0));
    let c = splat(1.0) + (pw - splat(1.0)) * t;
    bce_loss[row_at(2u, l)] = w * (linear + c * log1p_small(e));
    // sigmoid(z) and sigmoid(-z) from the same e, neither as 1 minus the other.
    let s_pos = select(e, splat(1.0), pos) / (splat(1.0) + e);
    let s_neg = select(splat(1.0), e, pos) / (splat(1.0) + e);
    bce_grad[row_at(3u, l)] = S(w * ((splat(1.0) - t) * s_pos - pw * t * s_neg) * p.a.scale);
}

@compute @workgroup_size(WG)
fn bce_with_logits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let w = bce_weight(p.a.weight_mode, 0u, l.row);
    bce_store(l, w, bce_weight(p.a.pos_weight_mode, p.a.k_cols, l.row));
}

@compute @workgroup_size(WG)
fn bce_with_logits_weighted(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    // Matrices 4 and 5: the per-element weights, read where their mode is BCE_FULL.
    var w = bce_weight(p.a.weight_mode, 0u, l.row);
    if p.a.weight_mode == BCE_FULL {
        w = bce_w[row_at(4u, l)];
    }
    var pw = bce_weight(p.a.pos_weight_mode, p.a.k_cols, l.row);
    if p.a.pos_weight_mode == BCE_FULL {
        pw = bce_pw[row_at(5u, l)];
    }
    bce_store(l, w, pw);
}

@compute @workgroup_size(WG)
fn logistic_residual(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let i = p.vec_base + l.row;
    let z = resid[i];
    // sigmoid(z) with no exp of a positive number.
    let e = exp(-abs(z));
    let sigmoid = select(e, 1.0, z >= 0.0) / (1.0 + e);
    resid[i] = sigmoid - lane_of(V(a[row_start(l)]), 0u);
}
