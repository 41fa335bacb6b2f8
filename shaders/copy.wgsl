// copy.wgsl: a plain copy, the speed of light on an adapter. Benchmarks report each
// memory-bound kernel against it: it reads and writes the same bytes as softmax with nothing
// else, through the same row plumbing (teams, windows, vec4 lanes).
//
//   copy_rows: y[i, j] = x[i, j]
//
// Bindings (group 0), windowed by rows:
//   1 x  read        array<V>  N x C
//   2 y  read_write  array<V>  N x C
// Dispatch: a team of p.tpr threads per row (common.wgsl).
// Rust side: Kernel::CopyRows; GpuContext::copy.

@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read_write> y: array<V>;

@compute @workgroup_size(WG)
fn copy_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let l = lane(wid, nwg, lid);
    let start = row_start(l);
    for (var i = l.t; i < row_vectors(l); i += p.tpr) {
        y[start + i] = x[start + i];
    }
}
