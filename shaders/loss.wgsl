// loss.wgsl: the log-sum-exp loss, from the row statistics of reduce.wgsl.
//
//   logsumexp_rows:     lse[i]  = m[i] + log(s[i]), or m[i] when m[i] is infinite
//                                 (torch.logsumexp)
//   cross_entropy_rows: loss[i] = ((m[i] - x[i, y[i]]) + log(s[i])) / den[0], 0 for an
//                                 ignored row (NaN where den[0] = 0: a mean over no rows),
//                                 NaN for a label out of range (label_class, common.wgsl)
//   label_stats:        weight[i] = w[y[i]] (1 unless p.a.weighted = 1) and active[i] = 1 for a
//                                 row not ignored, 0 and 0
//                                 for an ignored row, NaN and NaN for a label out of range:
//                                 summed, the denominators of a mean (class-weighted, and plain
//                                 for the z-loss) for labels the host never read
//   sum_tree:           partial[p.a.first_partial + g] = p.a.scale * sum of values g * B .. (g + 1) * B of
//                                 the window (B = SUM_TERMS * WG = 4 WG), as a fixed tree:
//                                 each thread adds 4 values pairwise, the workgroup's tree adds
//                                 the threads'. The host chains dispatches, partials of one
//                                 level being the values of the next, until one value is left
//                                 (GpuContext::plan_sum): a pairwise sum with no loop over the
//                                 data (Mesa's llvmpipe cuts a loop short after 65,535
//                                 iterations, and its fast-math folds compensated sums away);
//                                 its error grows with the tree's depth, not the count.
//
// Bindings (group 0), windowed by rows:
//   logsumexp_rows      1 m          read        array<f32>  one per row
//                       2 s          read        array<f32>  one per row
//                       3 lse_out    read_write  array<f32>  one per row
//   cross_entropy_rows  1 x          read        array<S>    N x C logits (f32 or f16)
//                       2 m          (as above)
//                       3 s          (as above)
//                       4 y          read        array<u32>  one label word per row
//                       5 loss_out   read_write  array<f32>  one per row
//                       6 den        read        array<f32>  denominators, bound whole
//   label_stats         1 label_of   read        array<u32>  one label word per row
//                       2 class_w    read        array<V>    C class weights, bound whole
//                       3 weight_out read_write  array<f32>  one per row
//                       4 active_out read_write  array<f32>  one per row
//   sum_tree            1 v          read        array<f32>  the values, windowed
//                       2 total_out  read_write  array<f32>  bound whole: the partials
// Dispatch: logsumexp_rows, cross_entropy_rows and label_stats run one thread per row
// (p.tpr = 1); sum_tree
// one workgroup per block of 4 WG values, the whole workgroup one team (p.tpr = WG).
// Rust side: Kernel::{LogsumexpRows, CrossEntropyRows, LabelStats, SumTree};
// cpu::{logsumexp, cross_entropy}.


// RowParams.a; LossArgs in src/gpu/params.rs.
struct Args {
    first_partial: u32,  // sum_tree: where the dispatch's first partial goes
    weighted: u32,       // label_stats: 1 to read class weights, else 1 each
    scale: f32,          // sum_tree: the scale of each partial
    pad0: u32,
    pad1: u32,
    pad2: u32,
    pad3: u32,
    pad4: u32,
}

@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(1) var<storage, read> m_rows: array<f32>;
@group(0) @binding(1) var<storage, read> label_of: array<u32>;
@group(0) @binding(2) var<storage, read> m: array<f32>;
@group(0) @binding(2) var<storage, read> s_rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> total_out: array<f32>;
@group(0) @binding(2) var<storage, read> class_w: array<V>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> weight_out: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<u32>;
@group(0) @binding(4) var<storage, read_write> active_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(6) var<storage, read> den: array<f32>;

@compute @workgroup_size(WG)
fn logsumexp_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let i = p.vec_base + l.row;
    let row_m = m_rows[i];
    lse_out[i] = select(row_m + log(s_rows[i]), row_m, abs(row_m) > F32_MAX);
}

@compute @workgroup_size(WG)
fn cross_entropy_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let i = p.vec_base + l.row;
    let cls = label_class(y[i]);
    if cls == IGNORED {
        // Nothing of an ignored row is read, so no NaN or inf in it can reach the loss.
        loss_out[i] = ignored_loss(den[0]);
        return;
    }
    if cls == INVALID {
        loss_out[i] = p.nan;
        return;
    }
    let x_y = lane_of(V(x[row_start(l) + cls / W]), cls % W);
    // m - x_y first: exact when they are close, where (m + log s) - x_y would lose the log.
    loss_out[i] = ((m[i] - x_y) + log(s[i])) / den[0];
}

@compute @workgroup_size(WG)
fn label_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if !l.live {
        return;
    }
    let i = p.vec_base + l.row;
    let cls = label_class(label_of[i]);
    let safe = min(cls, p.cols - 1u);
    let ignored = cls == IGNORED;
    // Unweighted (p.a.weighted = 0), class_w is a stand-in never read.
    var w_y = 1.0;
    if p.a.weighted != 0u {
        w_y = lane_of(class_w[safe / W], safe % W);
    }
    let weight = select(w_y, 0.0, ignored);
    weight_out[i] = select(weight, p.nan, cls == INVALID);
    active_out[i] = select(select(1.0, 0.0, ignored), p.nan, cls == INVALID);
}

// Value i of the window, 0 past its end (p.rows >= 1: the host never sums an empty window).
fn term(i: u32) -> f32 {
    return select(0.0, v[p.vec_base + min(i, p.rows - 1u)], i < p.rows);
}

@compute @workgroup_size(WG)
fn sum_tree(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + wid.y * nwg.x;
    // Threads read WG apart, so that a workgroup's loads are consecutive at each step.
    let first = group * (4u * WG) + lid;
    let s = (term(first) + term(first + WG)) + (term(first + 2u * WG) + term(first + 3u * WG));
    let total = team_sum(lid, s);
    if lid == 0u && group * (4u * WG) < p.rows {
        total_out[p.a.first_partial + group] = total * p.a.scale;
    }
}
