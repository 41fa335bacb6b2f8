// probe.wgsl: measures the driver's loop limit, once per context (src/gpu/context.rs).
//
//   loop_limit: count[0] = the iterations a loop of n[0] trips actually ran.
//
// Mesa's llvmpipe (lavapipe, and its GL driver) guards against infinite loops with one counter
// per invocation, shared by every loop of the shader, nested iterations included: past 65,535
// iterations in all, each loop leaves after one more trip, silently. A kernel whose thread loops
// longer computes a wrong number with no error. The host plans every dispatch so that no thread
// loops more than the measured count (Geometry::loop_budget), splitting work or returning an
// error where it cannot.
//
// Bindings (group 0): 0 n read array<u32> (the trips to ask for, from storage so that no
//                     compiler folds the loop away); 1 count read_write array<u32>.
// Dispatch: one workgroup of one invocation.

@group(0) @binding(0) var<storage, read> n: array<u32>;
@group(0) @binding(1) var<storage, read_write> count: array<u32>;

@compute @workgroup_size(1)
fn loop_limit() {
    var c = 0u;
    for (var i = 0u; i < n[0]; i++) {
        c += 1u;
    }
    count[0] = c;
}
