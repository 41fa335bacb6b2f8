// loss.wgsl: the log-sum-exp loss, from the row statistics of reduce.wgsl.
//
//   logsumexp_rows:     lse[i]  = m[i] + log(s[i]), or m[i] when m[i] is infinite
//                                 (torch.logsumexp)
//   cross_entropy_rows: loss[i] = (m[i] - x[i, y[i]]) + log(s[i]), 0 when y[i] = IGNORED
//   sum_rows:           total[0] += p.f0 * sum_i v[i]  (the host zeroes total first; each
//                                 row window adds its share)
//
// Bindings (group 0), windowed by rows:
//   logsumexp_rows      1 m          read        array<f32>  one per row
//                       2 s          read        array<f32>  one per row
//                       3 lse_out    read_write  array<f32>  one per row
//   cross_entropy_rows  1 x          read        array<V>    N x C logits
//                       2 m          (as above)
//                       3 s          (as above)
//                       4 y          read        array<u32>  one label per row, or IGNORED
//                       5 loss_out   read_write  array<f32>  one per row
//   sum_rows            1 v          read        array<f32>  one per row
//                       2 total_out  read_write  array<f32>  bound whole; element 0
// Dispatch: logsumexp_rows and cross_entropy_rows run one thread per row (p.tpr = 1); sum_rows
// runs one workgroup per window with the whole workgroup as one team (p.tpr = WG).
// Rust side: Kernel::{LogsumexpRows, CrossEntropyRows, SumRows}; cpu::{logsumexp, cross_entropy}.

@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(1) var<storage, read> m_rows: array<f32>;
@group(0) @binding(2) var<storage, read> m: array<f32>;
@group(0) @binding(2) var<storage, read> s_rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> total_out: array<f32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<u32>;
@group(0) @binding(5) var<storage, read_write> loss_out: array<f32>;

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
    let label = y[i];
    if label == IGNORED {
        // Nothing of an ignored row is read, so no NaN or inf in it can reach the loss.
        loss_out[i] = 0.0;
        return;
    }
    let x_y = lane_of(x[row_start(l) + label / W], label % W);
    // m - x_y first: exact when they are close, where (m + log s) - x_y would lose the log.
    loss_out[i] = (m[i] - x_y) + log(s[i]);
}

@compute @workgroup_size(WG)
fn sum_rows(@builtin(local_invocation_index) lid: u32) {
    // Compensated (Kahan) per thread, so a mean over millions of rows keeps f32 precision; the
    // compensation is dropped once the sum is infinite, where it would turn inf into NaN.
    var sum = 0.0;
    var c = 0.0;
    for (var i = lid; i < p.rows; i += WG) {
        let term = v[p.vec_base + i] - c;
        let t = sum + term;
        c = select((t - sum) - term, 0.0, abs(t) > F32_MAX);
        sum = t;
    }
    let total = team_sum(lid, sum) * p.f0;
    if lid == 0u {
        total_out[0] += total;
    }
}
