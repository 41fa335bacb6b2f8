// subgroup_shuffle.wgsl: the in-subgroup stage of the team reductions (common.wgsl) with subgroup
// shuffles: a butterfly over lane distances 1, 2, 4, ... below min(tpr, SG), after which every
// lane holds the reduction of its aligned chunk of min(tpr, SG) threads.
//
// SG is the adapter's smallest subgroup size (AdapterInfo::subgroup_min_size), so lanes lid and
// lid ^ k share a subgroup for every k < SG whatever size the driver picks, given that a 1-D
// workgroup's invocations fill subgroups in order, as every Vulkan, Metal and D3D12 driver does
// (the tests compare this path with subgroup_none.wgsl on every shape). naga takes subgroup
// builtins without WGSL's `enable subgroups;` (which it does not parse yet); wgpu checks that
// the device has Features::SUBGROUP.

fn lanes_max(v: f32) -> f32 {
    var r = v;
    for (var k = 1u; k < min(p.tpr, SG); k <<= 1u) {
        r = max(r, subgroupShuffleXor(r, k));
    }
    return r;
}

fn lanes_sum(v: f32) -> f32 {
    var r = v;
    for (var k = 1u; k < min(p.tpr, SG); k <<= 1u) {
        r += subgroupShuffleXor(r, k);
    }
    return r;
}

// The online-softmax pairs (m, s) of the chunk, merged (merge_pair, common.wgsl).
fn lanes_merge(ms: vec2<f32>) -> vec2<f32> {
    var r = ms;
    for (var k = 1u; k < min(p.tpr, SG); k <<= 1u) {
        r = merge_pair(r, subgroupShuffleXor(r, k));
    }
    return r;
}
