// train_tex.wgsl: the fused training step and evaluation of train.wgsl, for CPU adapters
// (Config::texture_kernels). Assembled after train.wgsl (whose helpers and bindings it uses) as
// its own family, compiled only where the texture kernels run: it needs subgroup operations,
// which train.wgsl must not, so that training works on adapters without them.
//
// The same two dispatches as step_forward and step_update, with x
// read from a texture (texel (q, r) of a panel holds features 4q .. 4q + 4 of a row; see
// StepParams) and theta or G shared across each subgroup: every lane loads a different class
// quad of them and `subgroupBroadcast` hands it to the others, where the kernels above make
// every lane gather the same values. On lavapipe a texel costs about what one float costs from
// a storage buffer, and a broadcast is a register shuffle. Subgroups hold exactly MT_LANES = 8
// lanes here; lane j of a load round holds class quad j % 4 of the (j / 4)-th row it loads.
//
//   step_forward_tex:  as step_forward; lane j of workgroup w takes batch rows
//                      32 w + j + 8 i, i = 0..4, in four sets of logits.
//   step_update_tex:   as step_update; lane j of workgroup w takes features 4 q .. 4 q + 4,
//                      q = 8 w + j, walking the batch two rows per step.
//   loss_err_tex:      loss_err_fused over a whole data set (sp.batch rows from row 0), rows
//                      as step_forward_tex; workgroups folded over x and y.
//
// Bindings (group 0), bound whole:
//   step_forward_tex  0 sp       uniform     StepParams
//                     1 xt       read        texture_storage_2d<rgba32float>: the data set
//                     2 y        read        array<u32>  one label per data-set row
//                     3 g_out    read_write  array<f32>  B x C
//                     4 theta_u  uniform     features x C, row-major, as vec4s
//   step_update_tex   0 sp, 1 xt as step_forward_tex; 2 g_u uniform B x C; 3 theta read_write
//   loss_err_tex      0 sp, 1 xt, 2 y, 4 theta_u as step_forward_tex; 3 loss_out and
//                     5 err_fused read_write array<f32>, one per row
// Dispatch: ceil(B / 32) (forward, loss) or ceil(quads / 8) (update) workgroups of MT_LANES.
// Rust side: Kernel::{StepForwardTex, StepUpdateTex, LossErrTex}; src/gpu/train.rs.

// Keep in sync with StepParams in src/gpu/params.rs.
struct StepParams {
    batch: u32,       // rows in the batch, B
    features: u32,
    classes: u32,     // C, at most STEP_CLASSES
    first_row: u32,   // the batch's first row in the data set
    panel_shift: u32, // log2 of the data-set rows per panel of the texture (panels side by
                      // side): a shift, where a division would be a scalar loop per lane
    quads: u32,       // texels per row: ceil(features / 4), zero-padded
    scale: f32,       // forward: the gradient's scale; update: -lr / B
    decay: f32,       // update: 1 - lr l2
}

@group(0) @binding(0) var<uniform> sp: StepParams;
@group(0) @binding(1) var xt: texture_storage_2d<rgba32float, read>;

const_assert MT_LANES == 8u;

// Features 4q .. 4q + 4 of data-set row r.
fn x_quad(r: u32, q: u32) -> vec4<f32> {
    let panel = r >> sp.panel_shift;
    return textureLoad(xt, vec2(panel * sp.quads + q, r & ((1u << sp.panel_shift) - 1u)));
}

// Class quad `g` (classes 4g .. 4g + 4) of row `k` of a row-major matrix of C columns held
// in a uniform array of vec4s, with every index clamped to `last`: quads past C read whatever
// follows (they are computed and never used), but never past the matrix.
fn theta_quad(k: u32, g: u32, last: u32) -> vec4<f32> {
    let i = k * sp.classes + 4u * g;
    return vec4(theta_at(min(i, last)), theta_at(min(i + 1u, last)), theta_at(min(i + 2u, last)),
                theta_at(min(i + 3u, last)));
}

fn theta_at(i: u32) -> f32 {
    return theta_u[i / 4u][i % 4u];
}

fn g_at(i: u32) -> f32 {
    return g_u[i / 4u][i % 4u];
}

// The class quads of one row of theta or G, as broadcast from the lanes of a load round
// (lanes 0-3, or lanes 4-7, from `v`).
fn lanes_lo(v: vec4<f32>) -> Classes {
    return Classes(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u),
                   subgroupBroadcast(v, 3u));
}

fn lanes_hi(v: vec4<f32>) -> Classes {
    return Classes(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u),
                   subgroupBroadcast(v, 7u));
}

// acc + x.x t0 + x.y t1 + x.z t2 + x.w t3 over the class quads in use.
fn madd4(acc: Classes, x: vec4<f32>, t0: Classes, t1: Classes, t2: Classes, t3: Classes,
         quads: u32) -> Classes {
    var c = acc;
    c.q0 += x.x * t0.q0 + x.y * t1.q0 + x.z * t2.q0 + x.w * t3.q0;
    if quads > 1u {
        c.q1 += x.x * t0.q1 + x.y * t1.q1 + x.z * t2.q1 + x.w * t3.q1;
    }
    if quads > 2u {
        c.q2 += x.x * t0.q2 + x.y * t1.q2 + x.z * t2.q2 + x.w * t3.q2;
    }
    if quads > 3u {
        c.q3 += x.x * t0.q3 + x.y * t1.q3 + x.z * t2.q3 + x.w * t3.q3;
    }
    return c;
}

// The logits of four rows, z0 .. z3.
struct Logits4 {
    z0: Classes,
    z1: Classes,
    z2: Classes,
    z3: Classes,
}

// x theta for rows row0, row0 + 8, row0 + 16 and row0 + 24 of the sp.batch rows from
// sp.first_row; rows past them read the last (every lane runs the loop, the caller writes
// nothing for them).
fn logits4(row0: u32, lane: u32) -> Logits4 {
    let quads = (sp.classes + 3u) / 4u;
    let last_theta = sp.features * sp.classes - 1u;
    let last = sp.batch - 1u;
    let rows = min(vec4(row0) + vec4(0u, 8u, 16u, 24u), vec4(last)) + sp.first_row;
    let zero = Classes(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
    var z = Logits4(zero, zero, zero, zero);
    for (var q = 0u; q < sp.quads; q++) {
        let k = 4u * q + lane / 4u;
        let t01 = theta_quad(k, lane % 4u, last_theta);
        let t23 = theta_quad(k + 2u, lane % 4u, last_theta);
        let t0 = lanes_lo(t01);
        let t1 = lanes_hi(t01);
        let t2 = lanes_lo(t23);
        let t3 = lanes_hi(t23);
        z.z0 = madd4(z.z0, x_quad(rows.x, q), t0, t1, t2, t3, quads);
        z.z1 = madd4(z.z1, x_quad(rows.y, q), t0, t1, t2, t3, quads);
        z.z2 = madd4(z.z2, x_quad(rows.z, q), t0, t1, t2, t3, quads);
        z.z3 = madd4(z.z3, x_quad(rows.w, q), t0, t1, t2, t3, quads);
    }
    return z;
}

@compute @workgroup_size(MT_LANES)
fn step_forward_tex(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = wid.x * 4u * MT_LANES + lane;
    let z = logits4(row0, lane);
    forward_row(row0, z.z0);
    forward_row(row0 + 8u, z.z1);
    forward_row(row0 + 16u, z.z2);
    forward_row(row0 + 24u, z.z3);
}

fn forward_row(row: u32, z: Classes) {
    if row < sp.batch {
        write_gradient(row, y[sp.first_row + row], z, sp.classes, sp.scale);
    }
}

// loss_err_fused over a data set in a texture: sp.batch is the set's rows, sp.first_row 0.
@compute @workgroup_size(MT_LANES)
fn loss_err_tex(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = (wid.x + wid.y * nwg.x) * 4u * MT_LANES + lane;
    let z = logits4(row0, lane);
    loss_err_row(row0, z.z0);
    loss_err_row(row0 + 8u, z.z1);
    loss_err_row(row0 + 16u, z.z2);
    loss_err_row(row0 + 24u, z.z3);
}

fn loss_err_row(row: u32, z: Classes) {
    if row < sp.batch {
        write_loss_err(row, z, sp.classes);
    }
}

@compute @workgroup_size(MT_LANES)
fn step_update_tex(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let classes = sp.classes;
    let quads = (classes + 3u) / 4u;
    let q_live = wid.x * MT_LANES + lane;
    let q = min(q_live, sp.quads - 1u);
    let last_g = sp.batch * classes - 1u;
    let zero = Classes(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
    var a0 = zero;
    var a1 = zero;
    var a2 = zero;
    var a3 = zero;
    for (var b = 0u; b < sp.batch; b += 2u) {
        // Lanes 0-3 load G's row b, lanes 4-7 row b + 1 (zeros past the batch).
        let gb = b + lane / 4u;
        let i = gb * classes + 4u * (lane % 4u);
        let gq = select(vec4(0.0), vec4(g_at(min(i, last_g)), g_at(min(i + 1u, last_g)),
                        g_at(min(i + 2u, last_g)), g_at(min(i + 3u, last_g))), gb < sp.batch);
        let g0 = lanes_lo(gq);
        let g1 = lanes_hi(gq);
        // Past an odd batch's end the last row again, times the zeros of G.
        let x0 = x_quad(sp.first_row + b, q);
        let x1 = x_quad(sp.first_row + min(b + 1u, sp.batch - 1u), q);
        // Feature 4q + f gathers x[b, 4q + f] G[b] + x[b + 1, 4q + f] G[b + 1].
        a0 = madd2(a0, x0.x, x1.x, g0, g1, quads);
        a1 = madd2(a1, x0.y, x1.y, g0, g1, quads);
        a2 = madd2(a2, x0.z, x1.z, g0, g1, quads);
        a3 = madd2(a3, x0.w, x1.w, g0, g1, quads);
    }
    if q_live >= sp.quads {
        return;
    }
    update_row(4u * q, a0);
    update_row(4u * q + 1u, a1);
    update_row(4u * q + 2u, a2);
    update_row(4u * q + 3u, a3);
}

// acc + u g0 + v g1 over the class quads in use.
fn madd2(acc: Classes, u: f32, v: f32, g0: Classes, g1: Classes, quads: u32) -> Classes {
    var c = acc;
    c.q0 += u * g0.q0 + v * g1.q0;
    if quads > 1u {
        c.q1 += u * g0.q1 + v * g1.q1;
    }
    if quads > 2u {
        c.q2 += u * g0.q2 + v * g1.q2;
    }
    if quads > 3u {
        c.q3 += u * g0.q3 + v * g1.q3;
    }
    return c;
}

// theta[k] = decay theta[k] + scale acc, for a feature k that exists.
fn update_row(k: u32, acc: Classes) {
    if k >= sp.features {
        return;
    }
    for (var j = 0u; j < sp.classes; j++) {
        let i = k * sp.classes + j;
        theta[i] = sp.decay * theta[i] + sp.scale * class_of(acc, j);
    }
}
