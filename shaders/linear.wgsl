// linear.wgsl: the linear cross-entropy blocked over the vocabulary (src/gpu/linear.rs). The
// host computes a block of products prod = H W_blk^T (matmul_nt) for the block's classes
// c0 .. c0 + p.cols; these kernels turn it into logits z = cap(prod + bias) (cap(v) =
// c tanh(v / c), or v), and never hold more than one block:
//
//   linear_block_stats: merges the block into each row's running statistics, which after the
//                       last block are the row's over the shard's classes (cpu::vocab::ShardStats):
//                       m = max_j z_j, s = sum_j exp(z_j - m), the label's logit (0 where the
//                       shard does not hold it), and t = sum_j w_j (m - z_j) (label smoothing's
//                       sum). Two passes over the block row: its maximum, then s and t against
//                       the merged maximum; what came before is rescaled to it (s exp(m_old - m),
//                       t + W_before (m - m_old), W_before the summed weights of the classes
//                       before the block).
//   linear_merge_stats: the same merge of statistics b (classes of summed weight p.a.weight_b)
//                       into a (p.a.weight), per row: adjacent shards' statistics into their
//                       union's.
//   linear_loss_rows:   row i's loss from the whole vocabulary's statistics, as
//                       cross_entropy_fused writes it: (1 - e) w_y ((m - z_y) + log s)
//                       + e / C (t + W log s), over den[0], plus S lse^2 over den[DEN_Z]; an
//                       ignored row's is ignored_loss, an invalid label's NaN.
//   linear_block_grad:  in place over prod, the gradient of the reduced loss with respect to the
//                       raw logits prod + bias: (a (p - onehot) + b (W p - w_j) + c p) cap'(v),
//                       p = exp((z - m) - log s) from the merged statistics, a = (1 - e) w_y /
//                       den[0], b = e / C / den[0], c = 2 S lse / den[DEN_Z]; 0 for ignored rows,
//                       NaN for invalid labels.
//
// Bindings (group 0), windowed by rows:
//   linear_block_stats  1 prod     read        array<V>    N x B block of products
//                       2 bias     read        array<V>    the block's B biases, bound whole
//                       3 cw       read        array<V>    the block's B class weights, whole
//                       4 y        read        array<u32>  one label word per row
//                       5 s_m      read_write  array<f32>  one per row: m
//                       6 s_s      read_write  array<f32>  s
//                       7 s_y      read_write  array<f32>  the label's logit
//                       8 s_t      read_write  array<f32>  t
//   linear_merge_stats  1-4 st_m, st_s, st_y, st_t  read_write  array<f32>  a, merged in place
//                       5-8 b_m, b_s, b_y, b_t      read        array<f32>  b
//   linear_loss_rows    1 cw_all   read        array<f32>  the C class weights, whole
//                       2 y_loss; 3-6 l_m, l_s, l_y, l_t read (the statistics)
//                       7 loss_out read_write; 8 den read, whole
//   linear_block_grad   1 g        read_write  array<V>    N x B: products in, gradient out
//                       2 bias, 3 cw (as in linear_block_stats), 4 y
//                       5 g_m, 6 g_s  read      array<f32>  m and s of the whole vocabulary
//                       7 g_den read, whole; 8 g_cw read, whole: the C class weights
// Dispatch: linear_block_stats and linear_block_grad a team of p.tpr threads per row
// (common.wgsl, p.cols = B); linear_merge_stats and linear_loss_rows one thread per row
// (p.cols = C for the loss, whose labels are decoded against it).
// Rust side: Kernel::{LinearBlockStats, LinearMergeStats, LinearLossRows, LinearBlockGrad};
// cpu::vocab, which computes the same in f64.


// RowParams.a; LinearArgs in src/gpu/params.rs.
struct Args {
    class0: u32,     // stats, grad: the vocabulary index of the block's first class
    flags: u32,      // HAS_BIAS | WEIGHTED | FIRST
    classes: u32,    // C, the vocabulary (stats and grad decode labels against it)
    cap: f32,        // the soft cap c; 0 for none
    smoothing: f32,  // e
    z_loss: f32,     // S
    weight: f32,     // stats: W_before; merge: a's summed weight; loss, grad: the vocabulary's
    weight_b: f32,   // merge: b's summed weight
}

// Keep in sync with LINEAR_* in src/gpu/linear.rs.
const HAS_BIAS: u32 = 1u;
const WEIGHTED: u32 = 2u;
const FIRST: u32 = 4u;

@group(0) @binding(1) var<storage, read> prod: array<V>;
@group(0) @binding(1) var<storage, read_write> g: array<V>;
@group(0) @binding(1) var<storage, read_write> st_m: array<f32>;
@group(0) @binding(1) var<storage, read> cw_all: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<V>;
@group(0) @binding(2) var<storage, read_write> st_s: array<f32>;
@group(0) @binding(2) var<storage, read> y_loss: array<u32>;
@group(0) @binding(3) var<storage, read> cw: array<V>;
@group(0) @binding(3) var<storage, read_write> st_y: array<f32>;
@group(0) @binding(3) var<storage, read> l_m: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<u32>;
@group(0) @binding(4) var<storage, read_write> st_t: array<f32>;
@group(0) @binding(4) var<storage, read> l_s: array<f32>;
@group(0) @binding(5) var<storage, read_write> s_m: array<f32>;
@group(0) @binding(5) var<storage, read> b_m: array<f32>;
@group(0) @binding(5) var<storage, read> l_y: array<f32>;
@group(0) @binding(5) var<storage, read> g_m: array<f32>;
@group(0) @binding(6) var<storage, read_write> s_s: array<f32>;
@group(0) @binding(6) var<storage, read> b_s: array<f32>;
@group(0) @binding(6) var<storage, read> l_t: array<f32>;
@group(0) @binding(6) var<storage, read> g_s: array<f32>;
@group(0) @binding(7) var<storage, read_write> s_y: array<f32>;
@group(0) @binding(7) var<storage, read> b_y: array<f32>;
@group(0) @binding(7) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(7) var<storage, read> g_den: array<f32>;
@group(0) @binding(8) var<storage, read_write> s_t: array<f32>;
@group(0) @binding(8) var<storage, read> b_t: array<f32>;
@group(0) @binding(8) var<storage, read> den: array<f32>;
@group(0) @binding(8) var<storage, read> g_cw: array<f32>;

// The class a label word names in a vocabulary of `classes`: IGNORED, INVALID (outside it), or
// the class (label_class of common.wgsl decodes against p.cols, here a block's width).
fn vocab_class(label: u32, classes: u32) -> u32 {
    if p.ignores != 0u && label == p.ignore {
        return IGNORED;
    }
    return select(INVALID, label, label < classes);
}

// The block's logits at vector i of the row starting at `start`: before the cap (the
// backward pass needs them) and after.
struct Logits {
    raw: V,
    z: V,
}

fn logits_at(v: V, i: u32) -> Logits {
    var raw = v;
    if (p.a.flags & HAS_BIAS) != 0u {
        raw += bias[i];
    }
    var z = raw;
    if p.a.cap > 0.0 {
        z = splat(p.a.cap) * tanh(raw / splat(p.a.cap));
    }
    return Logits(raw, z);
}

fn weights_at(i: u32) -> V {
    if (p.a.flags & WEIGHTED) != 0u {
        return cw[i];
    }
    return splat(1.0);
}

// w (m - m_old): the smoothing sum of classes of summed weight w moved from maximum m_old to m;
// nothing where the maximum did not move or nothing weighs (not 0 * inf from an all -inf part).
fn shifted(w: f32, m_old: f32, m: f32) -> f32 {
    return select(w * (m - m_old), 0.0, m_old == m || w == 0.0);
}

@compute @workgroup_size(WG)
fn linear_block_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let i = p.vec_base + safe_row(l);
    let first = (p.a.flags & FIRST) != 0u;
    // Seeded with the row's first vector: WGSL has no -inf literal.
    var acc = logits_at(prod[start], 0u).z;
    for (var k = l.t; k < row_vectors(l); k += p.tpr) {
        acc = max(acc, logits_at(prod[start + k], k).z);
    }
    let m_blk = team_max(lid, hmax(acc));
    let m_old = select(s_m[i], m_blk, first);
    let m = max(m_old, m_blk);
    // An all -inf row so far: exponentials against 0 (0 each), and no smoothing sum yet.
    let shift = select(m, 0.0, m < -F32_MAX);
    let smoothing = p.a.smoothing > 0.0 && m >= -F32_MAX;
    var s_acc = splat(0.0);
    var t_acc = splat(0.0);
    for (var k = l.t; k < row_vectors(l); k += p.tpr) {
        let z = logits_at(prod[start + k], k).z;
        s_acc += exp(z - splat(shift));
        if smoothing {
            t_acc += weights_at(k) * (splat(m) - z);
        }
    }
    let s_blk = team_sum(lid, hsum(s_acc));
    let t_blk = team_sum(lid, hsum(t_acc));
    if !l.live || l.t != 0u {
        return;
    }
    let cls = vocab_class(y[i], p.a.classes);
    let known = cls != IGNORED && cls != INVALID;
    let inside = known && cls >= p.a.class0 && cls - p.a.class0 < p.cols;
    var label = select(s_y[i], 0.0, first);
    if inside {
        let j = cls - p.a.class0;
        label = lane_of(logits_at(prod[start + j / W], j / W).z, j % W);
    }
    if first {
        s_s[i] = s_blk;
        s_t[i] = t_blk;
    } else {
        s_s[i] = rescale(s_s[i], m_old, m) + s_blk;
        s_t[i] = s_t[i] + shifted(p.a.weight, m_old, m) + t_blk;
    }
    s_m[i] = m;
    s_y[i] = label;
}

@compute @workgroup_size(WG)
fn linear_merge_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let i = p.vec_base + l.row;
    let ma = st_m[i];
    let mb = b_m[i];
    let m = max(ma, mb);
    st_m[i] = m;
    st_s[i] = rescale(st_s[i], ma, m) + rescale(b_s[i], mb, m);
    st_y[i] = st_y[i] + b_y[i];
    st_t[i] = st_t[i] + shifted(p.a.weight, ma, m) + b_t[i] + shifted(p.a.weight_b, mb, m);
}

@compute @workgroup_size(WG)
fn linear_loss_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let i = p.vec_base + l.row;
    let cls = vocab_class(y_loss[i], p.a.classes);
    let d_ce = den[0];
    if cls == IGNORED {
        loss_out[i] = ignored_loss(d_ce);
        return;
    }
    if cls == INVALID {
        loss_out[i] = p.nan;
        return;
    }
    let eps = p.a.smoothing;
    let m = l_m[i];
    let log_s = log(l_s[i]);
    let w_y = select(1.0, cw_all[cls], (p.a.flags & WEIGHTED) != 0u);
    // m - z_y first: exact when they are close.
    var ce = (1.0 - eps) * w_y * ((m - l_y[i]) + log_s);
    if eps > 0.0 {
        ce += eps / f32(p.a.classes) * (l_t[i] + p.a.weight * log_s);
    }
    var z = 0.0;
    if p.a.z_loss > 0.0 {
        z = p.a.z_loss * (m + log_s) * (m + log_s);
    }
    loss_out[i] = ce / d_ce + z / den[DEN_Z];
}

@compute @workgroup_size(WG)
fn linear_block_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let i = p.vec_base + safe_row(l);
    let cls = vocab_class(y[i], p.a.classes);
    let ignored = cls == IGNORED;
    let invalid = cls == INVALID;
    let eps = p.a.smoothing;
    let m = g_m[i];
    let log_s = log(g_s[i]);
    let d_ce = g_den[0];
    let known = !ignored && !invalid;
    // The label's weight, from the vocabulary's (the block may not hold the label).
    let w_y = select(1.0, g_cw[min(cls, p.a.classes - 1u)], known && (p.a.flags & WEIGHTED) != 0u);
    let inside = known && cls >= p.a.class0 && cls - p.a.class0 < p.cols;
    let j_y = select(0u, cls - p.a.class0, inside);
    let a = (1.0 - eps) * w_y / d_ce;
    let b = eps / f32(p.a.classes) / d_ce;
    let c = 2.0 * p.a.z_loss * (m + log_s) / g_den[DEN_Z];
    for (var k = l.t; k < row_vectors(l); k += p.tpr) {
        let lg = logits_at(g[start + k], k);
        let prob = exp((lg.z - splat(m)) - splat(log_s));
        var grad = (prob - onehot(k, select(INVALID, j_y, inside))) * a;
        if eps > 0.0 {
            grad += (splat(p.a.weight) * prob - weights_at(k)) * b;
        }
        if p.a.z_loss > 0.0 {
            grad += prob * c;
        }
        if p.a.cap > 0.0 {
            let t = lg.z / splat(p.a.cap);
            grad *= splat(1.0) - t * t;
        }
        // select, not a multiply by 0: an ignored row's logits may hold NaN or inf.
        g[start + k] = select(select(grad, splat(0.0), ignored), splat(p.nan), invalid);
    }
}
