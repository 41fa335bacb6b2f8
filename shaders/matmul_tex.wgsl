// matmul_tex.wgsl: the matrix product for CPU adapters (lavapipe), with its operands packed into
// textures and op(A) shared across each subgroup: the same C = alpha op(A) B + beta C as
// matmul.wgsl, about 5x faster there (BENCHMARKS.md, side by side).
//
//   pack:       t[y, x] = (L[y, 4x], L[y, 4x + 1], L[y, 4x + 2], L[y, 4x + 3]), 0 past L's
//               last column, where L (rows x cols) is the matrix starting at element pq.base
//               of src, L[i, j] = src[base + i cols + j]. pack_transposed: the same for
//               L[i, j] = src[base + j rows + i] (src holds L^T, cols x rows). op(A) and B are
//               packed into an `a` and a `b` texture this way, a texel per 4 consecutive
//               elements of a row; each thread writes a column of 4 texels. Texels past L are
//               not written (wgpu zeroes new textures). A matrix taller than a texture is
//               packed in panels of pq.panel_rows rows, panel p's texels at
//               x + p ceil(cols / 4), and in windows of rows (pq.first_row), one dispatch per
//               window (the training data in src/gpu/train.rs).
//   matmul_tex: C = alpha * A B + beta * C from the packed A (M x K) and B (K x N); C is
//               row-major in storage, from element q.c_base. beta = 0 never reads C.
//
// Why textures: on lavapipe (Mesa 22) every storage-buffer or workgroup-memory load inside a
// loop compiles to a loop over the SIMD lanes with a bounds check and a branch per element,
// while a storage-texture load is a branchless gather of whole texels; a texel of 4 floats
// costs about what one float costs from a storage buffer (BENCHMARKS.md has the measurements).
// Why subgroups: the 8 lanes of a subgroup are the 8 SIMD lanes of one register, so
// `subgroupBroadcast` with a constant lane is an extract and a splat (after a scan of the
// lane mask), far cheaper than 8 lanes each loading the same value. The lanes of a subgroup
// cover 64 consecutive columns (8 each) of the same 8 rows: lane r loads 4 steps of k of row
// r of op(A), and the broadcasts hand every lane all 8 rows, so op(A) costs one texel per lane
// per 4 steps of k and B two texels per step, for 256 multiply-adds.
//
// This kernel is chosen only where the host knows subgroups hold exactly MT_LANES invocations,
// consecutive in local_invocation_index (a CPU adapter with subgroups of 8: see
// `Config::texture_kernels`); everything else runs matmul.wgsl.
//
// Bindings (group 0):
//   pack, pack_transposed
//               0 pq   uniform          PackParams
//               1 src  read             array<V>    L or L^T, from element pq.base (a
//                                       multiple of W)
//               2 t    write            texture_storage_2d<rgba32float>: panels of
//                                       ceil(cols/4) texels side by side; texels past L keep
//                                       the zeros wgpu initialises textures with
//   matmul_tex  0 q    uniform          MatmulParams (matmul_common.wgsl; a_base, b_base unused)
//               1 a    read             texture_storage_2d<rgba32float>: op(A), ceil(K/4)
//                                       texels x M rows, padded to MT_TILE rows
//               2 b    read             texture_storage_2d<rgba32float>: B, MT_TILE/4
//                                       texels per tile of columns x 4 ceil(K/4) rows
//               3 c    read_write       array<f32>  C, from element q.c_base
// Dispatch: pack, pack_transposed: ceil(ceil(cols/4) / PACK_TX) x ceil(rows / (4 PACK_TX))
// workgroups of PACK_TX x PACK_TX, one thread per 4 texels of a column, one dispatch per
// window of rows; matmul_tex: ceil(N / MT_TILE) x ceil(M / MT_TILE) workgroups of MT_TILE.
// Rust side: Kernel::{Pack, PackTransposed, MatmulTex}; src/gpu/matmul.rs.

// Keep in sync with PackParams in src/gpu/params.rs.
struct PackParams {
    rows: u32,        // rows of L in this window
    cols: u32,
    base: u32,        // L's (or L^T's, for pack_transposed) first element in the src binding
    first_row: u32,   // the window's first row in the whole matrix
    panel_rows: u32,  // rows per panel of the texture; panels sit side by side
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> pq: PackParams;
@group(0) @binding(1) var<storage, read> src: array<S>;
@group(0) @binding(2) var t: texture_storage_2d<rgba32float, write>;

@group(0) @binding(0) var<uniform> q: MatmulParams;
@group(0) @binding(1) var a: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var b: texture_storage_2d<rgba32float, read>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const_assert MT_LANES == 8u;
const_assert MT_TILE == MT_LANES * MT_LANES;

// Elements j .. j + 4 of row i of the source S (L, or L^T when transposed), zero past its
// edges. Loads are clamped into S and the zeros selected, so that no load sits in a branch
// (on lavapipe a branch makes every load inside it test the lanes' mask). At W = 4 the row
// length is a multiple of 4 (the host compiles `pack` at W = 4 only then), so a quad is one
// load and lies wholly inside or wholly outside a row.
fn source_quad(i: u32, j: u32, transposed: bool) -> vec4<f32> {
    let rows = select(pq.rows, pq.cols, transposed);
    let cols = select(pq.cols, pq.rows, transposed);
    let start = pq.base + min(i, rows - 1u) * cols;
    if W == 4u {
        let v = vec4<f32>(V(src[(start + min(j, cols - 4u)) / 4u]));
        return select(vec4(0.0), v, i < rows && j < cols);
    }
    let last = cols - 1u;
    let inside = vec4(i < rows) & (vec4(j) + vec4(0u, 1u, 2u, 3u) < vec4(cols));
    let v = vec4(
        lane_of(V(src[start + min(j, last)]), 0u),
        lane_of(V(src[start + min(j + 1u, last)]), 0u),
        lane_of(V(src[start + min(j + 2u, last)]), 0u),
        lane_of(V(src[start + min(j + 3u, last)]), 0u),
    );
    return select(vec4(0.0), v, inside);
}

// Writes texel x of row i of L (a row of the window) where its panel puts it. Threads past
// the row's last texel write nothing: their texel would land in the next panel.
fn put(x: u32, i: u32, v: vec4<f32>) {
    let texels = (pq.cols + 3u) / 4u;
    if i >= pq.rows || x >= texels {
        return;
    }
    let r = pq.first_row + i;
    let panel = r / pq.panel_rows;
    textureStore(t, vec2(panel * texels + x, r - panel * pq.panel_rows), v);
}

// Texels x of rows 4y .. 4y + 4 of L: a 4 x 4 block. Two entry points rather than a flag, so
// that neither branches (on lavapipe every load inside a branch tests the lanes' mask).
@compute @workgroup_size(PACK_TX, PACK_TX)
fn pack(@builtin(global_invocation_id) g: vec3<u32>) {
    let col = 4u * g.x;
    let row = 4u * g.y;
    put(g.x, row, source_quad(row, col, false));
    put(g.x, row + 1u, source_quad(row + 1u, col, false));
    put(g.x, row + 2u, source_quad(row + 2u, col, false));
    put(g.x, row + 3u, source_quad(row + 3u, col, false));
}

// Rows col .. col + 4 of L^T hold columns col .. col + 4 of L: transpose the 4 x 4 block.
@compute @workgroup_size(PACK_TX, PACK_TX)
fn pack_transposed(@builtin(global_invocation_id) g: vec3<u32>) {
    let col = 4u * g.x;
    let row = 4u * g.y;
    let c0 = source_quad(col, row, true);
    let c1 = source_quad(col + 1u, row, true);
    let c2 = source_quad(col + 2u, row, true);
    let c3 = source_quad(col + 3u, row, true);
    put(g.x, row, vec4(c0.x, c1.x, c2.x, c3.x));
    put(g.x, row + 1u, vec4(c0.y, c1.y, c2.y, c3.y));
    put(g.x, row + 2u, vec4(c0.z, c1.z, c2.z, c3.z));
    put(g.x, row + 3u, vec4(c0.w, c1.w, c2.w, c3.w));
}

// Four consecutive rows k .. k + 4 of B, 8 columns each: what one step of 4 multiplies.
struct Rows4 {
    k0: Oct,
    k1: Oct,
    k2: Oct,
    k3: Oct,
}

// acc + sum over 4 steps of k of x[k] * y.k: one row of the block.
fn step4(acc: Oct, x: vec4<f32>, y: Rows4) -> Oct {
    return Oct(
        acc.lo + x.x * y.k0.lo + x.y * y.k1.lo + x.z * y.k2.lo + x.w * y.k3.lo,
        acc.hi + x.x * y.k0.hi + x.y * y.k1.hi + x.z * y.k2.hi + x.w * y.k3.hi,
    );
}

// Columns quad * 4 .. quad * 4 + 8 of row k of B.
fn b_oct(quad: u32, k: u32) -> Oct {
    return Oct(textureLoad(b, vec2(quad, k)), textureLoad(b, vec2(quad + 1u, k)));
}

@compute @workgroup_size(MT_TILE)
fn matmul_tex(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    // Subgroup li / MT_LANES of the workgroup takes 8 rows; its lanes 64 columns, 8 each.
    let row0 = wid.y * MT_TILE + (li / MT_LANES) * MT_LANES;
    let quad = (wid.x * MT_TILE + lane * MT_LANES) / 4u;
    var acc: Block;
    let steps = (q.k + 3u) / 4u;
    for (var s = 0u; s < steps; s++) {
        let x = textureLoad(a, vec2(s, row0 + lane));
        let k = 4u * s;
        let y = Rows4(b_oct(quad, k), b_oct(quad, k + 1u), b_oct(quad, k + 2u), b_oct(quad, k + 3u));
        acc.r0 = step4(acc.r0, subgroupBroadcast(x, 0u), y);
        acc.r1 = step4(acc.r1, subgroupBroadcast(x, 1u), y);
        acc.r2 = step4(acc.r2, subgroupBroadcast(x, 2u), y);
        acc.r3 = step4(acc.r3, subgroupBroadcast(x, 3u), y);
        acc.r4 = step4(acc.r4, subgroupBroadcast(x, 4u), y);
        acc.r5 = step4(acc.r5, subgroupBroadcast(x, 5u), y);
        acc.r6 = step4(acc.r6, subgroupBroadcast(x, 6u), y);
        acc.r7 = step4(acc.r7, subgroupBroadcast(x, 7u), y);
    }
    store_block(row0, quad * 4u, acc);
}
