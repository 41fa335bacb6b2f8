// matmul.wgsl: the register-tiled matrix product, for the softmax-regression forward pass
// X theta and its gradient X^T (Z - I_y).
//
//   matmul_nn: C = alpha * A B   + beta * C    A: M x K, B: K x N, C: M x N
//   matmul_tn: C = alpha * A^T B + beta * C    A: K x M (read transposed by indexing, never
//                                              copied), B: K x N, C: M x N
//   matmul_nt: C = alpha * A B^T + beta * C    A: M x K, B: N x K (a classifier's rows, as
//                                              nn.Linear stores them), C: M x N
//
// All row-major; A and B stored as f32 or (the f16 variant) f16, C always f32, so that the
// windows of A^T B accumulate in f32 (the host narrows an f16 product once, at the end). beta = 0 overwrites C without reading it (it may hold garbage or NaN), so
// the same kernel computes a fresh product and an SGD update theta = theta - lr/B X^T G.
//
// Each thread owns an 8 x 8 block of C (MM_BLOCK) in registers and walks the whole K dimension
// reading its operands straight from storage: per step of k it takes 8 values of op(A) and two
// quads (4 consecutive columns) of B, then does 64 multiply-adds (a rank-1 update). There is
// no workgroup memory: caches do that job on GPUs, and on lavapipe, where every storage or
// workgroup access is a loop over the SIMD lanes, fewer and wider accesses are the whole game.
// A and B are `array<S>`, read as V: at W = 4 (every row length involved a multiple of 4, chosen by
// src/gpu/matmul.rs) one access moves four floats, at W = 1 four accesses make a quad.
// Rows and columns past the edge of C read the last row or column instead (never stored), so
// every shape works with no branch in the loop.
//
// Bindings (group 0):
//   0 q  uniform                MatmulParams
//   1 a  read        array<S>   A, from element q.a_base (a multiple of W)
//   2 b  read        array<S>   B, from element q.b_base (a multiple of W)
//   3 c  read_write  array<f32> C, from element q.c_base, f32 in either variant
// Dispatch: ceil(N / (MM_BLOCK MM_TX)) x ceil(M / (MM_BLOCK MM_TY)) workgroups of MM_TX x MM_TY;
// past the workgroups of one dimension, further dispatches of the column tiles from q.tile_x0.
// matmul_nt walks K along the rows of both A and B, W at a time: each step is 64 dot products
// of one V of a row of A with one V of a row of B.
// Rust side: Kernel::{MatmulNn, MatmulTn, MatmulNt}; src/gpu/matmul.rs; the reference is
// ndarray's dot.

@group(0) @binding(0) var<uniform> q: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// Oct, Block and store_block come from matmul_common.wgsl, written out for 8 x 8.
const_assert MM_BLOCK == 8u;

// acc + x y^T for a column x of op(A) and a row y of B.
fn rank1(acc: Block, x: Oct, y: Oct) -> Block {
    return Block(
        axpy(acc.r0, x.lo.x, y),
        axpy(acc.r1, x.lo.y, y),
        axpy(acc.r2, x.lo.z, y),
        axpy(acc.r3, x.lo.w, y),
        axpy(acc.r4, x.hi.x, y),
        axpy(acc.r5, x.hi.y, y),
        axpy(acc.r6, x.hi.z, y),
        axpy(acc.r7, x.hi.w, y),
    );
}

fn axpy(row: Oct, x: f32, y: Oct) -> Oct {
    return Oct(row.lo + x * y.lo, row.hi + x * y.hi);
}

// Four consecutive elements of a row of `len` elements starting at element `start` of A (or
// B), from column `col`; a quad past the row's end reads its last columns instead. At W = 4,
// `start`, `col` and `len` are multiples of 4. The branch on the constant W is resolved at
// compile time; `vec4<f32>(...)` and `lane_of` type-check at either width, so the branch not
// taken still compiles.
fn a_quad(start: u32, col: u32, len: u32) -> vec4<f32> {
    if W == 4u {
        return vec4<f32>(V(a[(start + min(col, len - 4u)) / 4u]));
    }
    let last = start + len - 1u;
    let i = start + col;
    return vec4<f32>(
        lane_of(V(a[min(i, last)]), 0u),
        lane_of(V(a[min(i + 1u, last)]), 0u),
        lane_of(V(a[min(i + 2u, last)]), 0u),
        lane_of(V(a[min(i + 3u, last)]), 0u),
    );
}

fn b_quad(start: u32, col: u32, len: u32) -> vec4<f32> {
    if W == 4u {
        return vec4<f32>(V(b[(start + min(col, len - 4u)) / 4u]));
    }
    let last = start + len - 1u;
    let i = start + col;
    return vec4<f32>(
        lane_of(V(b[min(i, last)]), 0u),
        lane_of(V(b[min(i + 1u, last)]), 0u),
        lane_of(V(b[min(i + 2u, last)]), 0u),
        lane_of(V(b[min(i + 3u, last)]), 0u),
    );
}

// Columns `col .. col + 8` of row `k` of B.
fn b_oct(k: u32, col: u32) -> Oct {
    let start = q.b_base + k * q.n;
    return Oct(b_quad(start, col, q.n), b_quad(start, col + 4u, q.n));
}

// The first row and first column of this thread's block of C.
fn origin(wid: vec3<u32>, lid: vec3<u32>) -> vec2<u32> {
    return vec2<u32>(wid.y * MM_TY + lid.y, (q.tile_x0 + wid.x) * MM_TX + lid.x) * MM_BLOCK;
}

// Eight rows of A, W consecutive elements of each.
struct Rows {
    v0: V,
    v1: V,
    v2: V,
    v3: V,
    v4: V,
    v5: V,
    v6: V,
    v7: V,
}

// Lane `i` of each of the rows: a column of op(A).
fn column(r: Rows, i: u32) -> Oct {
    return Oct(
        vec4<f32>(lane_of(r.v0, i), lane_of(r.v1, i), lane_of(r.v2, i), lane_of(r.v3, i)),
        vec4<f32>(lane_of(r.v4, i), lane_of(r.v5, i), lane_of(r.v6, i), lane_of(r.v7, i)),
    );
}

@compute @workgroup_size(MM_TX, MM_TY)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = origin(wid, lid);
    // The first vector of each of the block's rows of A; rows past M repeat row M - 1.
    let last = q.m - 1u;
    let stride = q.k / W;
    let r0 = (q.a_base + min(o.x, last) * q.k) / W;
    let r1 = (q.a_base + min(o.x + 1u, last) * q.k) / W;
    let r2 = (q.a_base + min(o.x + 2u, last) * q.k) / W;
    let r3 = (q.a_base + min(o.x + 3u, last) * q.k) / W;
    let r4 = (q.a_base + min(o.x + 4u, last) * q.k) / W;
    let r5 = (q.a_base + min(o.x + 5u, last) * q.k) / W;
    let r6 = (q.a_base + min(o.x + 6u, last) * q.k) / W;
    let r7 = (q.a_base + min(o.x + 7u, last) * q.k) / W;
    var acc: Block;
    // W steps of k at a time: one V of each row of A holds them all.
    for (var v = 0u; v < stride; v++) {
        let rows = Rows(
            V(a[r0 + v]), V(a[r1 + v]), V(a[r2 + v]), V(a[r3 + v]),
            V(a[r4 + v]), V(a[r5 + v]), V(a[r6 + v]), V(a[r7 + v]),
        );
        let k = v * W;
        acc = rank1(acc, column(rows, 0u), b_oct(k, o.y));
        if W == 4u {
            acc = rank1(acc, column(rows, 1u), b_oct(k + 1u, o.y));
            acc = rank1(acc, column(rows, 2u), b_oct(k + 2u, o.y));
            acc = rank1(acc, column(rows, 3u), b_oct(k + 3u, o.y));
        }
    }
    store_block(o.x, o.y, acc);
}

@compute @workgroup_size(MM_TX, MM_TY)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = origin(wid, lid);
    var acc: Block;
    // Row k of A holds column k of op(A).
    for (var k = 0u; k < q.k; k++) {
        let start = q.a_base + k * q.m;
        let x = Oct(a_quad(start, o.x, q.m), a_quad(start, o.x + 4u, q.m));
        acc = rank1(acc, x, b_oct(k, o.y));
    }
    store_block(o.x, o.y, acc);
}

// acc_row + (x . y_c) for c = 0..8: one row of the block, from one V of a row of A and one V of
// each of the eight rows of B.
fn dots(acc: Oct, x: V, y: Rows) -> Oct {
    return Oct(
        acc.lo + vec4<f32>(hsum(x * y.v0), hsum(x * y.v1), hsum(x * y.v2), hsum(x * y.v3)),
        acc.hi + vec4<f32>(hsum(x * y.v4), hsum(x * y.v5), hsum(x * y.v6), hsum(x * y.v7)),
    );
}

@compute @workgroup_size(MM_TX, MM_TY)
fn matmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let o = origin(wid, lid);
    // The first vector of each of the block's rows of A and of B (rows of C and columns of C);
    // rows past M or N repeat the last one.
    let last_a = q.m - 1u;
    let last_b = q.n - 1u;
    let stride = q.k / W;
    let a0 = (q.a_base + min(o.x, last_a) * q.k) / W;
    let a1 = (q.a_base + min(o.x + 1u, last_a) * q.k) / W;
    let a2 = (q.a_base + min(o.x + 2u, last_a) * q.k) / W;
    let a3 = (q.a_base + min(o.x + 3u, last_a) * q.k) / W;
    let a4 = (q.a_base + min(o.x + 4u, last_a) * q.k) / W;
    let a5 = (q.a_base + min(o.x + 5u, last_a) * q.k) / W;
    let a6 = (q.a_base + min(o.x + 6u, last_a) * q.k) / W;
    let a7 = (q.a_base + min(o.x + 7u, last_a) * q.k) / W;
    let b0 = (q.b_base + min(o.y, last_b) * q.k) / W;
    let b1 = (q.b_base + min(o.y + 1u, last_b) * q.k) / W;
    let b2 = (q.b_base + min(o.y + 2u, last_b) * q.k) / W;
    let b3 = (q.b_base + min(o.y + 3u, last_b) * q.k) / W;
    let b4 = (q.b_base + min(o.y + 4u, last_b) * q.k) / W;
    let b5 = (q.b_base + min(o.y + 5u, last_b) * q.k) / W;
    let b6 = (q.b_base + min(o.y + 6u, last_b) * q.k) / W;
    let b7 = (q.b_base + min(o.y + 7u, last_b) * q.k) / W;
    var acc: Block;
    for (var v = 0u; v < stride; v++) {
        let y = Rows(
            V(b[b0 + v]), V(b[b1 + v]), V(b[b2 + v]), V(b[b3 + v]),
            V(b[b4 + v]), V(b[b5 + v]), V(b[b6 + v]), V(b[b7 + v]),
        );
        acc.r0 = dots(acc.r0, V(a[a0 + v]), y);
        acc.r1 = dots(acc.r1, V(a[a1 + v]), y);
        acc.r2 = dots(acc.r2, V(a[a2 + v]), y);
        acc.r3 = dots(acc.r3, V(a[a3 + v]), y);
        acc.r4 = dots(acc.r4, V(a[a4 + v]), y);
        acc.r5 = dots(acc.r5, V(a[a5 + v]), y);
        acc.r6 = dots(acc.r6, V(a[a6 + v]), y);
        acc.r7 = dots(acc.r7, V(a[a7 + v]), y);
    }
    store_block(o.x, o.y, acc);
}
