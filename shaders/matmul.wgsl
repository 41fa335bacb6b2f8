// matmul.wgsl: the tiled matrix product, for the softmax-regression forward pass X theta and
// its gradient X^T (Z - I_y).
//
//   matmul_nn: C = alpha * A B   + beta * C    A: M x K, B: K x N, C: M x N
//   matmul_tn: C = alpha * A^T B + beta * C    A: K x M (read transposed by indexing, never
//                                              copied), B: K x N, C: M x N
//
// All row-major f32. beta = 0 overwrites C without reading it (it may hold garbage or NaN), so
// the same kernel computes a fresh product and an SGD update theta = theta - lr/B X^T G.
//
// Each workgroup computes one BM x BN tile of C: MM_TY x MM_TX threads, each owning a TM x TN
// block of accumulators in registers (a 4 x 4 block: 16 multiply-adds for every two vec4 loads
// from workgroup memory). The K dimension is walked in steps of MM_BK: the workgroup stages a
// BM x MM_BK slice of op(A) and an MM_BK x BN slice of B in workgroup memory, stored k-major so
// that a thread's four rows (or four columns) are one vec4. Elements outside the matrices load
// as 0, so every shape works, tile-aligned or not.
//
// Bindings (group 0):
//   0 q  uniform                MatmulParams
//   1 a  read        array<f32> A, from element q.a_base
//   2 b  read        array<f32> B, from element q.b_base
//   3 c  read_write  array<f32> C, from element q.c_base
// Dispatch: ceil(N / BN) x ceil(M / BM) workgroups of MM_TX x MM_TY threads.
// Rust side: Kernel::{MatmulNn, MatmulTn}; src/gpu/matmul.rs; the reference is ndarray's dot.

// Keep in sync with MatmulParams in src/gpu/params.rs.
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    a_base: u32,
    b_base: u32,
    c_base: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> q: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TM: u32 = 4u;
const TN: u32 = 4u;
const BM: u32 = MM_TY * TM;
const BN: u32 = MM_TX * TN;
const THREADS: u32 = MM_TX * MM_TY;

// a_tile[kk * BM / 4 + i] holds op(A) rows 4i .. 4i + 3 of the tile at depth kk.
var<workgroup> a_tile: array<vec4<f32>, MM_BK * BM / 4u>;
// b_tile[kk * BN / 4 + j] holds B columns 4j .. 4j + 3 of the tile at depth kk.
var<workgroup> b_tile: array<vec4<f32>, MM_BK * BN / 4u>;

fn matmul(wid: vec3<u32>, lid: vec3<u32>, a_transposed: bool) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let flat = lid.y * MM_TX + lid.x;
    // Four named accumulators, not an array: an array indexed in a loop may live in memory.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < q.k; k0 += MM_BK) {
        for (var e = flat; e < BM * MM_BK; e += THREADS) {
            // Consecutive threads read consecutive addresses of A in either layout.
            var row: u32;
            var kk: u32;
            var index: u32;
            if a_transposed {
                kk = e / BM;
                row = e % BM;
                index = (k0 + kk) * q.m + m0 + row;
            } else {
                row = e / MM_BK;
                kk = e % MM_BK;
                index = (m0 + row) * q.k + k0 + kk;
            }
            let inside = m0 + row < q.m && k0 + kk < q.k;
            a_tile[kk * (BM / 4u) + row / 4u][row % 4u] = select(0.0, a[q.a_base + select(0u, index, inside)], inside);
        }
        for (var e = flat; e < MM_BK * BN; e += THREADS) {
            let kk = e / BN;
            let col = e % BN;
            let inside = k0 + kk < q.k && n0 + col < q.n;
            let index = (k0 + kk) * q.n + n0 + col;
            b_tile[kk * (BN / 4u) + col / 4u][col % 4u] = select(0.0, b[q.b_base + select(0u, index, inside)], inside);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < MM_BK; kk++) {
            let av = a_tile[kk * (BM / 4u) + lid.y];
            let bv = b_tile[kk * (BN / 4u) + lid.x];
            acc0 += av.x * bv;
            acc1 += av.y * bv;
            acc2 += av.z * bv;
            acc3 += av.w * bv;
        }
        // The next step overwrites the tiles; everyone must be done reading them.
        workgroupBarrier();
    }

    let row = m0 + lid.y * TM;
    let col = n0 + lid.x * TN;
    store(row, col, acc0);
    store(row + 1u, col, acc1);
    store(row + 2u, col, acc2);
    store(row + 3u, col, acc3);
}

// Writes the part of one row of four results that lies inside C.
fn store(row: u32, col: u32, v: vec4<f32>) {
    if row >= q.m {
        return;
    }
    for (var j = 0u; j < TN; j++) {
        if col + j < q.n {
            let index = q.c_base + row * q.n + col + j;
            var out = q.alpha * v[j];
            if q.beta != 0.0 {
                out += q.beta * c[index];
            }
            c[index] = out;
        }
    }
}

@compute @workgroup_size(MM_TX, MM_TY)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    matmul(wid, lid, false);
}

@compute @workgroup_size(MM_TX, MM_TY)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    matmul(wid, lid, true);
}
