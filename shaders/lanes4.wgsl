// lanes4.wgsl: matrix elements moved four at a time (W = 4), for rows whose length is a multiple
// of 4: a vec4 access costs little more than a scalar one on every adapter, and on lavapipe,
// which scalarises each access, a quarter as many. lanes1.wgsl is the scalar twin.

alias V = vec4<f32>;

fn splat(v: f32) -> V {
    return V(v);
}

fn hsum(v: V) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

fn hmax(v: V) -> f32 {
    return max(max(v.x, v.y), max(v.z, v.w));
}

fn lane_of(v: V, k: u32) -> f32 {
    return v[k];
}

fn onehot(i: u32, y: u32) -> V {
    return select(V(0.0), V(1.0), vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(y));
}
