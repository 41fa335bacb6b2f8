// common.wgsl: the plumbing every row kernel shares: its params block, where an invocation
// works, and reductions over the threads that share a row. Prepended to each row family by
// src/gpu/shaders.rs.
//
// Layout of a row dispatch: `p.tpr` threads ("a team") share one row, WG / p.tpr rows per
// workgroup, groups folded over x and y (src/gpu/dispatch.rs). A team reads its row in vectors
// of W elements, thread t taking vectors t, t + tpr, t + 2 tpr, ...

// Keep in sync with RowParams in src/gpu/params.rs.
struct RowParams {
    rows: u32,      // rows in this window
    cols: u32,      // elements per row
    tpr: u32,       // threads per row: a power of two dividing WG
    vec_base: u32,  // index of the window's first row in each per-row binding
    ignore: u32,    // the label word of an ignored row, where ignores = 1 (label_class)
    ignores: u32,   // 1 where some label word means "ignored", 0 where none does
    nan: f32,       // always NaN (WGSL has no NaN literal)
    pad: u32,       // padding of the header to 32 bytes, as RowParams
    // The family's own arguments: `struct Args`, declared by each family file (32 bytes).
    a: Args,
    // Matrix k (the k-th matrix binding of the kernel, from 0): the index (in V units) of the
    // window's first row inside its binding, and its row stride in V units, at [k / 4][k % 4].
    base: array<vec4<u32>, 2>,
    stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: RowParams;

// An invocation's row within the window, its index in the row's team, and whether the row
// exists (the last workgroup may run past the end).
struct Lane {
    row: u32,
    t: u32,
    live: bool,
}

fn lane(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Lane {
    let group = wid.x + wid.y * nwg.x;
    let row = group * (WG / p.tpr) + lid / p.tpr;
    return Lane(row, lid % p.tpr, row < p.rows);
}

// The row a lane may safely index: dead lanes read the last row and discard what they read.
fn safe_row(l: Lane) -> u32 {
    return min(l.row, p.rows - 1u);
}

// Index (in V units) of the first vector of the lane's row in the kernel's matrix binding k
// (counted from 0 among its matrix bindings): each matrix has its own offset and row stride.
fn row_at(k: u32, l: Lane) -> u32 {
    return p.base[k / 4u][k % 4u] + safe_row(l) * p.stride[k / 4u][k % 4u];
}

// row_at for the kernel's first matrix binding.
fn row_start(l: Lane) -> u32 {
    return row_at(0u, l);
}

// Vectors the lane must visit: none for a dead lane, so it only joins the barriers.
fn row_vectors(l: Lane) -> u32 {
    return select(0u, p.cols / W, l.live);
}

// The class a label word names: the word itself, IGNORED for the ignore index, or INVALID
// for a word outside [0, p.cols) (a negative i32 reads as a u32 past every class count the
// host allows). Labels an application wrote on the device were never validated by the host:
// a row with an INVALID class gets NaN, never a number.
fn label_class(label: u32) -> u32 {
    if p.ignores != 0u && label == p.ignore {
        return IGNORED;
    }
    return select(INVALID, label, label < p.cols);
}

// What an ignored row adds to a loss divided by d: 0, except where d is 0, a mean over no
// rows, which is NaN (0 / 0 in PyTorch) whether or not any row is left to say so.
fn ignored_loss(d: f32) -> f32 {
    return select(0.0, p.nan, d == 0.0);
}

// s, a sum of exp(x - m_old), re-expressed as a sum of exp(x - m_new), for m_new >= m_old. Equal
// maxima leave s alone, which also covers two -inf maxima, where m_old - m_new would be NaN.
fn rescale(s: f32, m_old: f32, m_new: f32) -> f32 {
    return select(s * exp(m_old - m_new), s, m_old == m_new);
}

// The (m, s) pair of two parts of a row, merged: the online-softmax operator.
fn merge_pair(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, rescale(a.y, a.x, m) + rescale(b.y, b.x, m));
}

var<workgroup> scratch: array<f32, WG>;

// Team reductions run in two stages. Within a subgroup, lanes_max / lanes_sum (subgroup_*.wgsl)
// combine each aligned chunk of min(tpr, SG) threads with shuffles, no barrier; SG is 1 where
// the adapter has no subgroups, and that stage does nothing. Past SG threads, the chunks meet in
// workgroup memory, one barrier per halving.

// The maximum of `v` over the team of this lane's row. Every invocation of the workgroup must
// call it, since it holds barriers and shuffles.
fn team_max(lid: u32, v: f32) -> f32 {
    let part = lanes_max(v);
    if p.tpr <= SG {
        return part;
    }
    scratch[lid] = part;
    workgroupBarrier();
    let t = lid % p.tpr;
    for (var k = p.tpr / 2u; k >= SG; k >>= 1u) {
        if t < k {
            scratch[lid] = max(scratch[lid], scratch[lid + k]);
        }
        workgroupBarrier();
    }
    let r = scratch[lid - t];
    // The next reduction overwrites scratch; nobody may still be reading it.
    workgroupBarrier();
    return r;
}

// The sum of `v` over the team of this lane's row; the same contract as team_max.
fn team_sum(lid: u32, v: f32) -> f32 {
    let part = lanes_sum(v);
    if p.tpr <= SG {
        return part;
    }
    scratch[lid] = part;
    workgroupBarrier();
    let t = lid % p.tpr;
    for (var k = p.tpr / 2u; k >= SG; k >>= 1u) {
        if t < k {
            scratch[lid] = scratch[lid] + scratch[lid + k];
        }
        workgroupBarrier();
    }
    let r = scratch[lid - t];
    workgroupBarrier();
    return r;
}
