// copy.wgsl: plain copies, the speed of light on an adapter. Benchmarks report each
// memory-bound kernel against the fastest copy of the same bytes the adapter runs
// (GpuContext::copy_with; the bench's `copy` row names it).
//
//   copy_rows: y[i, j] = x[i, j], through the row plumbing (teams, windows, vec4 lanes): a
//              strided loop per thread, as the row kernels walk their rows
//   copy_flat: y[i] = x[i] for one vec4 (or one float) per invocation and no loop: the matrix
//              is planned as rows of one vector, a thread each
//   widen_rows: wide[i, j] = f32(x[i, j]), exact: the f16 training rows a batch's products
//              read in f32 (src/gpu/train.rs)
//   narrow_rows: y[i, j] = S(wide_in[i, j]), rounded once: an f16 product, accumulated in f32
//              (src/gpu/matmul.rs)
//
// Bindings (group 0), windowed by rows:
//   1 x     read        array<S>  N x C
//   2 y     read_write  array<S>  N x C (copy_rows, copy_flat)
//   2 wide  read_write  array<V>  N x C, f32 (widen_rows)
//   narrow_rows: 1 wide_in read array<V> N x C, f32; 2 y as above
// Dispatch: copy_rows and widen_rows a team of p.tpr threads per row (common.wgsl); copy_flat
// one thread per row of W elements (p.tpr = 1).
// Rust side: Kernel::{CopyRows, CopyFlat, WidenRows, NarrowRows}; GpuContext::copy, GpuContext::copy_with.


// No arguments (RowParams.a; NoArgs in src/gpu/params.rs).
struct Args {
    unused: array<vec4<u32>, 2>,
}

// In the storage type S: an f16 copy moves its halves untouched, never through f32.
@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read_write> y: array<S>;
@group(0) @binding(2) var<storage, read_write> wide: array<V>;
@group(0) @binding(1) var<storage, read> wide_in: array<V>;

@compute @workgroup_size(WG)
fn copy_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let y_start = row_at(1u, l);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        y[y_start + i] = x[start + i];
    }
}

@compute @workgroup_size(WG)
fn copy_flat(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    if l.live {
        y[row_at(1u, l)] = x[row_start(l)];
    }
}

@compute @workgroup_size(WG)
fn widen_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let wide_start = row_at(1u, l);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        wide[wide_start + i] = V(x[start + i]);
    }
}

@compute @workgroup_size(WG)
fn narrow_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    let y_start = row_at(1u, l);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        y[y_start + i] = S(wide_in[start + i]);
    }
}
