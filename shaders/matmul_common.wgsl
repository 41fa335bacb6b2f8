// matmul_common.wgsl: what both matrix-product families share (matmul.wgsl, matmul_tex.wgsl):
// the params block, the 8 x 8 block of C each thread keeps in registers, and its store.
// Each family declares `q: MatmulParams` (binding 0) and `c: array<f32>` (the output).

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
    tile_x0: u32,  // the first column tile of this dispatch (matmul.wgsl)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// Eight consecutive values: a row of the block, or a column of op(A) beside it.
struct Oct {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The block is named registers, never an array: lavapipe keeps an array indexed in a loop in
// memory, and there every access is a loop over the lanes.
struct Block {
    r0: Oct,
    r1: Oct,
    r2: Oct,
    r3: Oct,
    r4: Oct,
    r5: Oct,
    r6: Oct,
    r7: Oct,
}

// Writes the part of the block with its first element at (row, col) that lies inside C:
// C = alpha acc + beta C, where beta = 0 never reads C (it may hold garbage or NaN).
fn store_block(row: u32, col: u32, acc: Block) {
    store_row(row, col, acc.r0);
    store_row(row + 1u, col, acc.r1);
    store_row(row + 2u, col, acc.r2);
    store_row(row + 3u, col, acc.r3);
    store_row(row + 4u, col, acc.r4);
    store_row(row + 5u, col, acc.r5);
    store_row(row + 6u, col, acc.r6);
    store_row(row + 7u, col, acc.r7);
}

fn store_row(row: u32, col: u32, v: Oct) {
    if row >= q.m {
        return;
    }
    for (var j = 0u; j < 8u; j++) {
        if col + j < q.n {
            let index = q.c_base + row * q.n + col + j;
            var out = q.alpha * select(v.hi[j % 4u], v.lo[j % 4u], j < 4u);
            if q.beta != 0.0 {
                out += q.beta * c[index];
            }
            c[index] = out;
        }
    }
}
