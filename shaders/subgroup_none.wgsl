// subgroup_none.wgsl: the in-subgroup stage of the team reductions (common.wgsl) on an adapter
// without subgroup operations, or with them turned off (GpuOptions::subgroups): SG = 1, so each
// lane is its own chunk and the workgroup-memory stage does all the work. subgroup_shuffle.wgsl
// is its twin. Prepended after the lanes file by src/gpu/shaders.rs.

fn lanes_max(v: f32) -> f32 {
    return v;
}

fn lanes_sum(v: f32) -> f32 {
    return v;
}

fn lanes_merge(ms: vec2<f32>) -> vec2<f32> {
    return ms;
}
