// fused.wgsl: the default path. Each kernel reads a row once to get its statistics, keeping a
// running maximum m and sum s of exp(x - m) (online softmax, Milakov & Gimelshein 2018), merges
// the (m, s) pairs of the threads sharing the row, then (where it writes a matrix) reads the row
// a second time to write the result once. The staged kernels (reduce.wgsl and after) compute the
// same with one pass per stage.
//
//   softmax_fused:            out[i, j] = exp(x[i, j] - m) / s, or with p.a.log = 1 the
//                             log-softmax (x[i, j] - m) - log(s)
//   logsumexp_fused:          lse[i] = m + log(s), or m when m is infinite (torch.logsumexp)
//   cross_entropy_loss_fused: loss[i] = ((m - x[i, y[i]]) + log(s)) / den[0], 0 for an
//                             ignored row (NaN where den[0] = 0: a mean over no rows)
//   cross_entropy_fused:      the loss with every option, and its gradient (cpu::cross_entropy
//                             and cpu::cross_entropy_grad give the formulas); 0 for ignored rows.
//                             The cross-entropy terms are divided by den[0], the z-loss terms by
//                             den[DEN_Z]: a mean's denominators, or 1 (GpuContext::denominators);
//                             p.a holds the smoothing, the z-loss strength, the sum of the class
//                             weights, and whether to multiply row i by up[i].
//   Labels are decoded by label_class (common.wgsl): a label out of range gives its row a NaN
//   loss and gradient.
//   cross_entropy_soft:       against probability targets t: per row sum_j w_j t'_j (lse - x_j)
//                             + S lse^2 with t' = (1 - e) t + e / C, and its gradient
//                             (sum_k w_k t'_k + 2 S lse) p_j - w_j t'_j, both times p.a.scale (the
//                             reduction's scale).
//
// An all -inf row has m = -inf and s = 0: softmax and the loss are NaN (as in PyTorch), and
// logsumexp is -inf. A row holding +inf or NaN gives NaN. Ignored rows never reach an output.
//
// Bindings (group 0), windowed by rows:
//   softmax_fused             1 x         read        array<V>    N x C
//                             2 out       read_write  array<V>    N x C
//   logsumexp_fused           1 x         (as above)
//                             2 lse_out   read_write  array<f32>  one per row
//   cross_entropy_loss_fused  1 x         (as above)
//                             2 y         read        array<u32>  one label word per row
//                             3 loss_out  read_write  array<f32>  one per row
//                             4 den_loss  read        array<f32>  denominators, bound whole
//   cross_entropy_fused       1 x, 2 y, 3 loss_out (as above)
//                             4 g         read_write  array<V>    N x C gradient
//                             5 w         read        array<V>    C class weights, bound whole
//                             6 up        read        array<f32>  per-row upstream gradient
//                             7 den       read        array<f32>  denominators, bound whole
//   cross_entropy_soft        1 x; 2 soft read array<V> N x C targets; 3 loss_out; 4 g; 5 w
// Dispatch: a team of p.tpr threads per row (common.wgsl).
// Rust side: Kernel::{SoftmaxFused, LogsumexpFused, CrossEntropyLossFused, CrossEntropyFused};
// GpuContext::{softmax, log_softmax, logsumexp, cross_entropy, cross_entropy_with_grad}.


// RowParams.a; FusedArgs in src/gpu/params.rs.
struct Args {
    log: u32,         // softmax_fused: 1 for the log-softmax
    upstream: u32,    // cross_entropy_fused: 1 to multiply row i by up[i]
    scale: f32,       // cross_entropy_soft: the reduction's scale
    smoothing: f32,   // label smoothing e
    z_loss: f32,      // z-loss strength S
    weight_sum: f32,  // sum of the class weights
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read_write> out: array<S>;
@group(0) @binding(2) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<u32>;
@group(0) @binding(2) var<storage, read> soft: array<S>;
@group(0) @binding(3) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> g: array<S>;
@group(0) @binding(4) var<storage, read> den_loss: array<f32>;
@group(0) @binding(5) var<storage, read> w: array<V>;
@group(0) @binding(6) var<storage, read> up: array<f32>;
@group(0) @binding(7) var<storage, read> den: array<f32>;

var<workgroup> pair_m: array<f32, WG>;
var<workgroup> pair_s: array<f32, WG>;

// The row's (m, s) in one pass, merged over the team. Every invocation of the workgroup must
// call it, since it holds barriers.
//
// With `keep`, the first ROW_CACHE vectors a thread reads are kept in `cache`, so that the
// write pass takes them from there (`cached`) instead of reading storage again: on a CPU
// adapter a private array is far cheaper than a bounds-checked storage load. ROW_CACHE is 1 on
// GPUs, where a large private array would spill (src/gpu/shaders.rs, Config).
fn row_stats(l: Lane, lid: u32, keep: bool, cache: ptr<function, array<V, ROW_CACHE>>) -> vec2<f32> {
    let start = row_start(l);
    // Seeded with an element of the row, not a sentinel (WGSL has no -inf literal); s = 0
    // makes a thread with no vectors of its own a neutral partner in the merge.
    var m = hmax(V(x[start]));
    var s = 0.0;
    var k = 0u;
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        let v = V(x[start + i]);
        if keep && k < ROW_CACHE {
            (*cache)[k] = v;
        }
        k++;
        let mv = hmax(v);
        if mv > m {
            s = s * exp(m - mv);
            m = mv;
        }
        // exp(-inf - -inf) would be NaN; nothing of an all -inf prefix adds to s.
        s += select(hsum(exp(v - splat(m))), 0.0, m < -F32_MAX);
    }

    // Within each chunk of min(tpr, SG) threads by shuffles (lanes_merge), then the chunks
    // in workgroup memory, as team_max and team_sum reduce.
    let part = lanes_merge(vec2<f32>(m, s));
    if p.tpr <= SG {
        return part;
    }
    pair_m[lid] = part.x;
    pair_s[lid] = part.y;
    workgroupBarrier();
    let t = lid % p.tpr;
    for (var k = p.tpr / 2u; k >= SG; k >>= 1u) {
        if t < k {
            let r = merge_pair(
                vec2<f32>(pair_m[lid], pair_s[lid]),
                vec2<f32>(pair_m[lid + k], pair_s[lid + k]),
            );
            pair_m[lid] = r.x;
            pair_s[lid] = r.y;
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(pair_m[lid - t], pair_s[lid - t]);
    // The caller may run another merge; nobody may still be reading these.
    workgroupBarrier();
    return r;
}

// Vector i of the row, the k-th this thread reads: from the cache when row_stats kept it.
fn cached(cache: ptr<function, array<V, ROW_CACHE>>, k: u32, index: u32) -> V {
    if k < ROW_CACHE {
        return (*cache)[k];
    }
    return V(x[index]);
}

@compute @workgroup_size(WG)
fn softmax_fused(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    var cache: array<V, ROW_CACHE>;
    let stats = row_stats(l, lid, true, &cache);
    let m = splat(stats.x);
    let start = row_start(l);
    let out_start = row_at(1u, l);
    var k = 0u;
    if p.a.log == 1u {
        let log_s = splat(log(stats.y));
        for (var i = l.t; i < row_vectors(l); i += p.tpr) {
            // (x - m) first: exact next to the maximum.
            out[out_start + i] = S((cached(&cache, k, start + i) - m) - log_s);
            k++;
        }
    } else {
        let inv = 1.0 / stats.y;
        for (var i = l.t; i < row_vectors(l); i += p.tpr) {
            out[out_start + i] = S(exp(cached(&cache, k, start + i) - m) * inv);
            k++;
        }
    }
}

@compute @workgroup_size(WG)
fn logsumexp_fused(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    var cache: array<V, ROW_CACHE>;
    let stats = row_stats(l, lid, false, &cache);
    if l.live && l.t == 0u {
        lse_out[p.vec_base + l.row] = select(stats.x + log(stats.y), stats.x, abs(stats.x) > F32_MAX);
    }
}

// The loss of row l of class `cls` from its statistics, over the denominator d: (m - x_y)
// first, exact when they are close.
fn row_loss(l: Lane, cls: u32, stats: vec2<f32>, d: f32) -> f32 {
    let safe = min(cls, p.cols - 1u);
    let x_y = lane_of(V(x[row_start(l) + safe / W]), safe % W);
    let loss = select(((stats.x - x_y) + log(stats.y)) / d, ignored_loss(d), cls == IGNORED);
    return select(loss, p.nan, cls == INVALID);
}

@compute @workgroup_size(WG)
fn cross_entropy_loss_fused(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    var cache: array<V, ROW_CACHE>;
    let stats = row_stats(l, lid, false, &cache);
    if l.live && l.t == 0u {
        let i = p.vec_base + l.row;
        loss_out[i] = row_loss(l, label_class(y[i]), stats, den_loss[0]);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_fused(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    var cache: array<V, ROW_CACHE>;
    let stats = row_stats(l, lid, true, &cache);
    let i_row = p.vec_base + safe_row(l);
    let cls = label_class(y[i_row]);
    let ignored = cls == IGNORED;
    let invalid = cls == INVALID;
    let safe = min(cls, p.cols - 1u);
    let d_ce = den[0];
    let d_z = den[DEN_Z];
    let start = row_start(l);
    let g_start = row_at(1u, l);
    let m = stats.x;
    let log_s = log(stats.y);
    let eps = p.a.smoothing;
    let w_y = lane_of(w[safe / W], safe % W);
    let upstream = select(1.0, up[i_row], p.a.upstream != 0u);
    // grad = a (p - onehot) + b (W p - w) + c p: the cross-entropy, smoothing and z-loss terms,
    // then times the upstream value, last, as cpu::cross_entropy_grad_upstream: an infinite
    // upstream value must not meet the terms' opposite signs (inf - inf).
    let a = (1.0 - eps) * w_y / d_ce;
    let b = eps / f32(p.cols) / d_ce;
    let c = 2.0 * p.a.z_loss * (m + log_s) / d_z;
    let inv = 1.0 / stats.y;
    var smoothing = splat(0.0);
    var k = 0u;
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        let v = cached(&cache, k, start + i);
        k++;
        let prob = exp(v - splat(m)) * inv;
        var grad = (prob - onehot(i, cls)) * a;
        if eps > 0.0 {
            let wv = w[i];
            grad += (splat(p.a.weight_sum) * prob - wv) * b;
            // sum_j w_j (m - x_j): the smoothing term, (m - x) first as everywhere.
            smoothing += wv * (splat(m) - v);
        }
        if p.a.z_loss > 0.0 {
            grad += prob * c;
        }
        // select, not a multiply by 0: an ignored row's logits may hold NaN or inf.
        g[g_start + i] = S(select(select(grad * upstream, splat(0.0), ignored), splat(p.nan), invalid));
    }
    let smooth_sum = team_sum(lid, hsum(smoothing));
    if l.live && l.t == 0u && !ignored && !invalid {
        let x_y = lane_of(V(x[start + safe / W]), safe % W);
        var ce = (1.0 - eps) * w_y * ((m - x_y) + log_s);
        if eps > 0.0 {
            ce += eps / f32(p.cols) * (smooth_sum + p.a.weight_sum * log_s);
        }
        var z = 0.0;
        if p.a.z_loss > 0.0 {
            z = p.a.z_loss * (m + log_s) * (m + log_s);
        }
        // Each term carries its reduction's denominator; sum_tree then adds them as they are.
        loss_out[p.vec_base + l.row] = ce / d_ce + z / d_z;
    } else if l.live && l.t == 0u {
        loss_out[p.vec_base + l.row] = select(ignored_loss(d_ce), p.nan, invalid);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_soft(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    var cache: array<V, ROW_CACHE>;
    let stats = row_stats(l, lid, false, &cache);
    let start = row_start(l);
    let t_start = row_at(1u, l);
    let g_start = row_at(2u, l);
    let m = stats.x;
    let log_s = log(stats.y);
    let eps = p.a.smoothing;
    let uniform_part = splat(eps / f32(p.cols));
    // The weighted, smoothed targets' total, and sum_j w_j t'_j (m - x_j) for the loss.
    var total_acc = splat(0.0);
    var loss_acc = splat(0.0);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        let tw = w[i] * (V(soft[t_start + i]) * (1.0 - eps) + uniform_part);
        total_acc += tw;
        loss_acc += tw * (splat(m) - V(x[start + i]));
    }
    let total = team_sum(lid, hsum(total_acc));
    let loss_part = team_sum(lid, hsum(loss_acc));
    let inv = 1.0 / stats.y;
    let z = 2.0 * p.a.z_loss * (m + log_s);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        let tw = w[i] * (V(soft[t_start + i]) * (1.0 - eps) + uniform_part);
        let prob = exp(V(x[start + i]) - splat(m)) * inv;
        g[g_start + i] = S((prob * (total + z) - tw) * p.a.scale);
    }
    if l.live && l.t == 0u {
        let lse = m + log_s;
        loss_out[p.vec_base + l.row] = (loss_part + total * log_s + p.a.z_loss * lse * lse) * p.a.scale;
    }
}
