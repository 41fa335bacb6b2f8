//! `softmax-ce info`: what wgpu sees, and what we would pick.

use anyhow::Result;
use softmax_ce::GpuContext;
use softmax_ce::gpu::{AdapterReport, enumerate_adapters};

/// Prints the adapters, the chosen one, its limits and features.
pub fn run() -> Result<()> {
    let adapters = enumerate_adapters();
    outln!("adapters seen by wgpu ({}):", adapters.len())?;
    for a in &adapters {
        outln!("  - {}", describe(a))?;
    }
    match GpuContext::new() {
        Ok(gpu) => {
            let info = gpu.adapter_info();
            outln!(
                "chosen: {} ({:?}, {:?})",
                info.name,
                info.backend,
                info.device_type
            )?;
            if gpu.is_software() {
                outln!("  software adapter: timings measure kernel quality, not GPU speed")?;
            }
            match gpu.driver_loop_limit() {
                Some(n) => outln!(
                    "loop limit: {n} iterations per invocation (measured; longer loops are \
                     cut short silently, so every dispatch is planned within it)"
                )?,
                None => outln!("loop limit: none seen (measured)")?,
            }
            outln!(
                "matmul kernel: {} (subgroup sizes {} to {})",
                if gpu.texture_kernels() {
                    "matmul_tex.wgsl (packed textures, subgroup broadcasts)"
                } else {
                    "matmul.wgsl (register-tiled, storage buffers)"
                },
                info.subgroup_min_size,
                info.subgroup_max_size
            )?;
            let l = gpu.limits();
            outln!("limits:")?;
            let rows: [(&str, u64); 9] = [
                ("max_buffer_size", l.max_buffer_size),
                (
                    "max_storage_buffer_binding_size",
                    l.max_storage_buffer_binding_size,
                ),
                (
                    "min_storage_buffer_offset_alignment",
                    l.min_storage_buffer_offset_alignment as u64,
                ),
                (
                    "max_compute_workgroups_per_dimension",
                    l.max_compute_workgroups_per_dimension as u64,
                ),
                (
                    "max_compute_invocations_per_workgroup",
                    l.max_compute_invocations_per_workgroup as u64,
                ),
                (
                    "max_compute_workgroup_size_x",
                    l.max_compute_workgroup_size_x as u64,
                ),
                (
                    "max_compute_workgroup_storage_size",
                    l.max_compute_workgroup_storage_size as u64,
                ),
                (
                    "max_storage_buffers_per_shader_stage",
                    l.max_storage_buffers_per_shader_stage as u64,
                ),
                ("max_bind_groups", l.max_bind_groups as u64),
            ];
            for (name, value) in rows {
                outln!("  {name:<40} {value}")?;
            }
            outln!("features: {:?}", gpu.device().features())
        }
        Err(e) => outln!("chosen: none ({e})"),
    }
}

fn describe(a: &AdapterReport) -> String {
    let i = &a.info;
    let driver = [i.driver.as_str(), i.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} ({:?}, {:?}{}{})",
        i.name,
        i.backend,
        i.device_type,
        if driver.is_empty() {
            String::new()
        } else {
            format!(", {driver}")
        },
        if a.compute {
            ""
        } else {
            ", no compute shaders"
        }
    )
}
