// lanes1.wgsl: matrix elements moved one f32 at a time (W = 1), for rows whose length is not a
// multiple of 4. lanes4.wgsl is its vec4 twin; a kernel written against `V` and these helpers
// compiles at either width. Prepended after the prelude by src/gpu/shaders.rs.

alias V = f32;

fn splat(v: f32) -> V {
    return v;
}

// The sum and the maximum of the lanes of `v`.
fn hsum(v: V) -> f32 {
    return v;
}

fn hmax(v: V) -> f32 {
    return v;
}

// Lane `k` of `v`.
fn lane_of(v: V, k: u32) -> f32 {
    return v;
}

// 1 in the lane of vector `i` that holds column `y`, 0 in the others.
fn onehot(i: u32, y: u32) -> V {
    return select(0.0, 1.0, i == y);
}
