//! The matrix products `A B` and `A^T B`, the two products of softmax-regression training: the
//! register-tiled kernel over storage buffers (`shaders/matmul.wgsl`), and on CPU adapters with
//! subgroups of 8 the kernel over operands packed into textures (`shaders/matmul_tex.wgsl`).

use std::ops::Range;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::buffers::GpuMatrix;
use crate::gpu::dispatch::{FIXED_TRIPS, Geometry};
use crate::gpu::ops::check_disjoint;
use crate::gpu::params::{MatmulParams, PackParams};
use crate::gpu::record::{At, Dispatch, GpuPlan};
use crate::gpu::shaders::{Kernel, MM_TILE, MT_TILE, PACK_TX, Width};

/// Which product a [`Gemm`] computes, C being `m x n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// `A B`: A is `m x k`, B is `k x n`.
    Nn,
    /// `A^T B`: A is `k x m` (read transposed, never copied), B is `k x n`.
    Tn,
    /// `A B^T`: A is `m x k`, B is `n x k` (a classifier's rows, as `nn.Linear` holds them).
    Nt,
}

/// One product `C = alpha op(A) op(B) + beta C` over buffers, of the [`Form`] `form`. Each
/// operand starts at row `first_row` of its buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm<'b> {
    pub a: At<'b>,
    pub b: At<'b>,
    pub c: At<'b>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub form: Form,
    pub alpha: f32,
    pub beta: f32,
    /// Where the texture matmul finds its packed operands' textures: plans replayed in order
    /// (a trainer's batches) share one set instead of holding a set each. `None` makes new ones.
    pub textures: Option<&'b TextureSet>,
}

/// Packed-operand textures shared by plans that run one after another (never two at once: the
/// products of one plan take different ones, by role), keyed by role and size.
#[derive(Debug, Default)]
pub(crate) struct TextureSet {
    made: std::sync::Mutex<Vec<(TexRole, [usize; 2], PackedTexture)>>,
}

/// Which operand of which product a packed texture holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TexRole {
    /// `A` of `A B`.
    PlainA,
    /// `B` of `A B`.
    PlainB,
    /// `A^T`, packed transposed, of `A^T B`.
    TransposedA,
    /// `B` of `A^T B`.
    TransposedB,
    /// `A` of `A B^T`.
    NtA,
    /// `B^T`, packed transposed, of `A B^T`.
    TransposedBNt,
}

impl TextureSet {
    /// The set's texture for `role` at `size`, made on first use.
    fn get(&self, gpu: &GpuContext, role: TexRole, size: [usize; 2]) -> PackedTexture {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, t)) = made.iter().find(|(r, s, _)| (*r, *s) == (role, size)) {
            return t.clone();
        }
        let t = gpu.packed_texture(size);
        made.push((role, size, t.clone()));
        t
    }
}

/// A matrix to pack into an `rgba32float` texture ([`GpuContext::plan_pack`]): `rows x cols`
/// of `src`, or with `transposed` the transpose of `src`'s `cols x rows`, a texel per 4
/// consecutive elements of a row, in panels of `panel_rows` rows side by side (see `pack` in
/// `shaders/matmul_tex.wgsl`).
pub(crate) struct Packing<'a> {
    pub src: At<'a>,
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
    pub texture: &'a PackedTexture,
    pub panel_rows: usize,
}

/// An `rgba32float` texture a matrix is packed into, and the view the kernels bind.
#[derive(Clone, Debug)]
pub(crate) struct PackedTexture {
    pub texture: wgpu::Texture,
    pub view: wgpu::TextureView,
}

impl GpuContext {
    /// The dispatches of one product: through the texture kernel where the context has it and
    /// the shape fits ([`plan_texture_matmul`](Self::plan_texture_matmul)), else through
    /// `matmul.wgsl`, where `A B` is cut into windows of A's and C's rows, `A^T B`
    /// into windows of the inner dimension (the rows of A and B), accumulated into C; the
    /// operand not windowed must fit one binding.
    pub(crate) fn plan_matmul(&self, op: &'static str, g: &Gemm<'_>) -> Result<Vec<Dispatch>> {
        if let Some(plan) = self.plan_texture_matmul(g)? {
            return Ok(plan);
        }
        let kernel = match g.form {
            Form::Nn => Kernel::MatmulNn,
            Form::Tn => Kernel::MatmulTn,
            Form::Nt => Kernel::MatmulNt,
        };
        // Vec4 loads need every row that is read in quads (op(A)'s along the inner dimension
        // for A B, A's along M for A^T B, and B's) to be a whole number of vec4s; bases of such
        // rows always are (see `Geometry::slice`). An empty inner dimension binds 4 bytes,
        // less than one vec4.
        let (a_row, b_row) = match g.form {
            Form::Nn => (g.k, g.n),
            Form::Tn => (g.m, g.n),
            Form::Nt => (g.k, g.k),
        };
        let width = if g.k > 0 && a_row.is_multiple_of(4) && b_row.is_multiple_of(4) {
            Width::Vec4
        } else {
            Width::Scalar
        };
        // A and B share one precision (plan_product checks; the trainer widens f16 rows); C is
        // f32, so that windows accumulate in f32.
        let dtype = g.a.dtype;
        if g.b.dtype != dtype || g.c.dtype != DType::F32 {
            return Err(Error::invalid(
                op,
                format!(
                    "a product of {} and {} into {}: its operands share one precision and its output is f32",
                    g.a.dtype, g.b.dtype, g.c.dtype
                ),
            ));
        }
        let pipeline = self.pipeline_of(kernel, width, dtype)?;
        let geometry = self.geometry;
        let words = |elems: usize| crate::gpu::buffers::words(elems, dtype);
        let max_groups = geometry.max_groups_per_dim as usize;
        let [tile_m, tile_n] = MM_TILE.map(|t| t as usize);
        let groups_x = g.n.div_ceil(tile_n);
        if g.m == 0 || g.n == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        // The dispatches of one part of the product: its column tiles past one dimension's
        // workgroups go to further dispatches (`tile_x0`).
        let mut dispatch =
            |params: MatmulParams, bindings: [wgpu::BindingResource<'_>; 3], groups_y: usize| {
                for x0 in (0..groups_x).step_by(max_groups) {
                    let params = MatmulParams {
                        tile_x0: x0 as u32,
                        ..params
                    };
                    out.push(self.dispatch(
                        kernel,
                        &pipeline,
                        bytemuck::bytes_of(&params),
                        bindings.to_vec(),
                        [(groups_x - x0).min(max_groups) as u32, groups_y as u32, 1],
                    ));
                }
            };
        if g.form == Form::Tn {
            let (c_binding, c_base) = whole(op, geometry, &g.c, g.m, g.n, "the product")?;
            let groups_y = g.m.div_ceil(tile_m);
            if groups_y > max_groups {
                return Err(too_many_groups(op, g.m, groups_y, max_groups));
            }
            // Each thread walks its window of the inner dimension once: windows within the
            // loop budget, each adding its share to C.
            let steps = geometry.loop_budget.saturating_sub(FIXED_TRIPS).max(1) as usize;
            let mut windows: Vec<_> = geometry
                .windows(op, g.k, words(g.m.max(g.n)))?
                .into_iter()
                .flat_map(|w| {
                    (w.start..w.end)
                        .step_by(steps)
                        .map(move |s| s..(s + steps).min(w.end))
                })
                .collect();
            if windows.is_empty() {
                // An empty inner dimension still writes C = beta C.
                windows.push(0..0);
            }
            for (i, window) in windows.iter().enumerate() {
                let (a_binding, a_base) = windowed(geometry, &g.a, window, g.m);
                let (b_binding, b_base) = windowed(geometry, &g.b, window, g.n);
                let params = MatmulParams {
                    m: g.m as u32,
                    n: g.n as u32,
                    k: window.len() as u32,
                    a_base,
                    b_base,
                    c_base,
                    alpha: g.alpha,
                    // Later windows add their share to what the first one wrote.
                    beta: if i == 0 { g.beta } else { 1.0 },
                    tile_x0: 0,
                    pad: [0; 3],
                };
                dispatch(params, [a_binding, b_binding, c_binding.clone()], groups_y);
            }
        } else {
            // The inner dimension is a row of A, walked whole by each thread, W at a time.
            geometry.check_trips(
                op,
                (g.k / width.lanes()) as u64 + FIXED_TRIPS,
                &format!("an inner dimension of {}", g.k),
            )?;
            let (b_rows, b_cols) = if g.form == Form::Nt {
                (g.n, g.k)
            } else {
                (g.k, g.n)
            };
            let (b_binding, b_base) =
                whole(op, geometry, &g.b, b_rows, b_cols, "the right-hand matrix")?;
            let rows_per_dispatch = max_groups * tile_m;
            for window in geometry.windows(op, g.m, words(g.k.max(g.n)))? {
                let mut start = window.start;
                while start < window.end {
                    let part = start..window.end.min(start + rows_per_dispatch);
                    let (a_binding, a_base) = windowed(geometry, &g.a, &part, g.k);
                    let (c_binding, c_base) = windowed(geometry, &g.c, &part, g.n);
                    let params = MatmulParams {
                        m: part.len() as u32,
                        n: g.n as u32,
                        k: g.k as u32,
                        a_base,
                        b_base,
                        c_base,
                        alpha: g.alpha,
                        beta: g.beta,
                        tile_x0: 0,
                        pad: [0; 3],
                    };
                    dispatch(
                        params,
                        [a_binding, b_binding.clone(), c_binding],
                        part.len().div_ceil(tile_m),
                    );
                    start = part.end;
                }
            }
        }
        Ok(out)
    }

    /// The product through `matmul_tex.wgsl`: pack op(A) and B into textures, then one dispatch.
    /// `None` where the context has no texture matmul ([`Config::texture_kernels`]) or the
    /// shape does not fit it (a texture side over the device's limit, an operand over one
    /// binding, an empty inner dimension); `matmul.wgsl` takes those.
    ///
    /// [`Config::texture_kernels`]: crate::gpu::shaders::Config::texture_kernels
    fn plan_texture_matmul(&self, g: &Gemm<'_>) -> Result<Option<Vec<Dispatch>>> {
        // The textures are rgba32float: f16 operands take matmul.wgsl.
        let f16 = g.a.dtype != DType::F32;
        if !self.config.texture_kernels || f16 || g.k == 0 || g.m == 0 || g.n == 0 {
            return Ok(None);
        }
        let tile = MT_TILE as usize;
        let steps = g.k.div_ceil(4);
        if steps as u64 + FIXED_TRIPS > self.geometry.loop_budget {
            return Ok(None);
        }
        // One dispatch for the product and one per operand's pack (the transposed pack in one
        // window of rows): each within the workgroups of a dispatch dimension.
        let max = self.geometry.max_groups_per_dim as usize;
        let pack = |cols: usize| cols.div_ceil(4 * PACK_TX as usize);
        let too_many = [
            g.n.div_ceil(tile),
            g.m.div_ceil(tile),
            pack(g.k.max(g.m).max(g.n)),
        ]
        .into_iter()
        .any(|groups| groups > max)
            || (g.form != Form::Nn && pack(g.k) > max);
        if too_many {
            return Ok(None);
        }
        // Texels, width x height: op(A) a row per row, B four columns to a texel; both padded
        // to whole tiles and whole steps of 4 along k, the padding zero.
        let a_size = [steps, g.m.div_ceil(tile) * tile];
        let b_size = [g.n.div_ceil(tile) * tile / 4, 4 * steps];
        let max_side = self.limits().max_texture_dimension_2d as usize;
        if a_size.iter().chain(&b_size).any(|&side| side > max_side) {
            return Ok(None);
        }
        let geometry = self.geometry;
        let Some(c) = bound(geometry, &g.c, g.m, g.n) else {
            return Ok(None);
        };
        let (a_rows, a_cols) = if g.form == Form::Tn {
            (g.k, g.m)
        } else {
            (g.m, g.k)
        };
        let (b_rows, b_cols) = if g.form == Form::Nt {
            (g.n, g.k)
        } else {
            (g.k, g.n)
        };
        let fits = |at: &At<'_>, rows, cols| bound(geometry, at, rows, cols).is_some();
        if !fits(&g.a, a_rows, a_cols) || !fits(&g.b, b_rows, b_cols) {
            return Ok(None);
        }
        let texture = |role, size| match g.textures {
            None => self.packed_texture(size),
            Some(set) => set.get(self, role, size),
        };
        // Each operand of each kind of product has its own texture, so that the two products
        // of a training step never share one even at equal sizes.
        let (a_role, b_role) = match g.form {
            Form::Nn => (TexRole::PlainA, TexRole::PlainB),
            Form::Tn => (TexRole::TransposedA, TexRole::TransposedB),
            Form::Nt => (TexRole::NtA, TexRole::TransposedBNt),
        };
        let a_tex = texture(a_role, a_size);
        let b_tex = texture(b_role, b_size);
        let product = self.pipeline(Kernel::MatmulTex, Width::Scalar)?;
        let params = MatmulParams {
            m: g.m as u32,
            n: g.n as u32,
            k: g.k as u32,
            a_base: 0,
            b_base: 0,
            c_base: c.1,
            alpha: g.alpha,
            beta: g.beta,
            tile_x0: 0,
            pad: [0; 3],
        };
        let mut plan = self.plan_pack(
            "matmul",
            &Packing {
                src: g.a,
                rows: g.m,
                cols: g.k,
                transposed: (g.form == Form::Tn),
                texture: &a_tex,
                panel_rows: a_size[1],
            },
        )?;
        plan.extend(self.plan_pack(
            "matmul",
            &Packing {
                src: g.b,
                rows: g.k,
                cols: g.n,
                // B^T's rows are W's: packed transposed, as A^T's are.
                transposed: g.form == Form::Nt,
                texture: &b_tex,
                panel_rows: b_size[1],
            },
        )?);
        plan.push(self.dispatch(
            Kernel::MatmulTex,
            &product,
            bytemuck::bytes_of(&params),
            vec![
                wgpu::BindingResource::TextureView(&a_tex.view),
                wgpu::BindingResource::TextureView(&b_tex.view),
                c.0,
            ],
            [g.n.div_ceil(tile) as u32, g.m.div_ceil(tile) as u32, 1],
        ));
        Ok(Some(plan))
    }

    /// The dispatches that pack a matrix into a texture (see [`Packing`]). A matrix over one
    /// binding is packed in row windows; a transposed one must fit one binding.
    pub(crate) fn plan_pack(&self, op: &'static str, p: &Packing<'_>) -> Result<Vec<Dispatch>> {
        let (src, rows, cols, transposed) = (&p.src, p.rows, p.cols, p.transposed);
        // Whole f32 rows of a multiple of 256 bytes in one panel are a plain buffer-to-texture
        // copy, no kernel (wgpu's alignment for such copies; 64 floats). f16 rows are widened
        // by the kernel.
        let dtype = src.dtype;
        let row_bytes = cols as u64 * 4;
        let f32_rows = dtype == DType::F32;
        if f32_rows && !transposed && rows <= p.panel_rows && row_bytes.is_multiple_of(256) {
            let size = wgpu::Extent3d {
                width: (cols / 4) as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            };
            return Ok(vec![Dispatch::copy_to_texture(
                src.buffer,
                src.offset + src.first_row as u64 * row_bytes,
                row_bytes as u32,
                &p.texture.texture,
                size,
            )]);
        }
        // Vec4 loads where the source's rows are whole vec4s; their bases then are too.
        let source_row = if transposed { rows } else { cols };
        let kernel = if transposed {
            Kernel::PackTransposed
        } else {
            Kernel::Pack
        };
        let pipeline = self.pipeline_of(kernel, Width::for_cols(source_row), dtype)?;
        let windows = if transposed {
            std::iter::once(0..rows).collect()
        } else {
            // Windows that fit one binding, cut again where their rows would need more
            // workgroups along y than a dispatch may have.
            let most = self.geometry.max_groups_per_dim as usize * 4 * PACK_TX as usize;
            self.geometry
                .windows(op, rows, crate::gpu::buffers::words(cols, dtype))?
                .into_iter()
                .flat_map(|w| {
                    (w.start..w.end)
                        .step_by(most)
                        .map(move |s| s..w.end.min(s + most))
                })
                .collect::<Vec<_>>()
        };
        let mut plan = Vec::with_capacity(windows.len());
        for window in windows {
            let (binding, base) = if transposed {
                whole(op, self.geometry, src, cols, rows, "a transposed operand")?
            } else {
                windowed(self.geometry, src, &window, cols)
            };
            let params = PackParams {
                rows: window.len() as u32,
                cols: cols as u32,
                base,
                first_row: window.start as u32,
                panel_rows: p.panel_rows as u32,
                pad: [0; 3],
            };
            let tx = PACK_TX as usize;
            let groups = [cols.div_ceil(4 * tx), window.len().div_ceil(4 * tx), 1];
            plan.push(self.dispatch(
                kernel,
                &pipeline,
                bytemuck::bytes_of(&params),
                vec![binding, wgpu::BindingResource::TextureView(&p.texture.view)],
                groups.map(|n| n as u32),
            ));
        }
        Ok(plan)
    }

    /// An `rgba32float` texture of `[width, height]` texels for a packed operand, written by
    /// packing and read by the texture kernels. Dispatches bound to it keep it alive.
    pub(crate) fn packed_texture(&self, [width, height]: [usize; 2]) -> PackedTexture {
        self.count_allocations(1);
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("packed operand"),
            size: wgpu::Extent3d {
                width: width as u32,
                height: height as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        PackedTexture { texture, view }
    }

    /// `a b`: the product of an `m x k` and a `k x n` matrix, as ndarray's `a.dot(&b)`. `f16`
    /// operands give an `f16` product, accumulated in `f32` (a workspace of `m x n` floats)
    /// and rounded once.
    ///
    /// # Errors
    /// [`Error::Shape`] when the inner dimensions differ; [`Error::TooLarge`] when the result
    /// exceeds the device, or `b` exceeds one binding (`a` and the result are cut into row
    /// windows, `b` is not); [`Error::InvalidArgument`] for operands of two precisions;
    /// [`Error::MissingFeature`] for `f16` on a device without `SHADER_F16`.
    pub fn matmul(&self, a: &GpuMatrix, b: &GpuMatrix) -> Result<GpuMatrix> {
        self.product("matmul", a, b, false)
    }

    /// `a^T b` for `a` of `k x m` and `b` of `k x n`, reading `a` transposed in place (no copy):
    /// the gradient `X^T (Z - I_y)` of softmax regression.
    ///
    /// # Errors
    /// [`Error::Shape`] when the row counts differ; [`Error::TooLarge`] when the `m x n`
    /// result exceeds one binding (`a` and `b` are cut into windows of rows, whose partial
    /// products add up in `f32`, `f16` operands too); those of [`matmul`](Self::matmul) for
    /// precisions.
    pub fn matmul_tn(&self, a: &GpuMatrix, b: &GpuMatrix) -> Result<GpuMatrix> {
        self.product("matmul_tn", a, b, true)
    }

    /// The plan of [`matmul`](Self::matmul) into `out` (`m x n`), recorded as often as
    /// needed without allocating.
    ///
    /// # Errors
    /// Those of [`matmul`](Self::matmul), and [`Error::Shape`] or [`Error::InvalidArgument`]
    /// for an output of the wrong shape or sharing a buffer with an input.
    pub fn plan_matmul_into(
        &self,
        a: &GpuMatrix,
        b: &GpuMatrix,
        out: &GpuMatrix,
    ) -> Result<GpuPlan> {
        let mk = product_dims("matmul", a, b, false)?;
        self.plan_product("matmul", (a, b, out), mk, false)
    }

    /// The plan of [`matmul_tn`](Self::matmul_tn) into `out` (`m x n`), with the errors of
    /// [`plan_matmul_into`](Self::plan_matmul_into).
    pub fn plan_matmul_tn_into(
        &self,
        a: &GpuMatrix,
        b: &GpuMatrix,
        out: &GpuMatrix,
    ) -> Result<GpuPlan> {
        let mk = product_dims("matmul_tn", a, b, true)?;
        self.plan_product("matmul_tn", (a, b, out), mk, true)
    }

    /// A new `m x n` output and the product's plan into it, submitted.
    fn product(
        &self,
        op: &'static str,
        a: &GpuMatrix,
        b: &GpuMatrix,
        transposed_a: bool,
    ) -> Result<GpuMatrix> {
        let (m, k) = product_dims(op, a, b, transposed_a)?;
        let c = self.new_matrix_of(op, m, b.cols(), a.dtype())?;
        self.run_plan(self.plan_product(op, (a, b, &c), (m, k), transposed_a)?)?;
        Ok(c)
    }

    /// The one description of a product `c = op(a) b`: checks, then the kernels.
    fn plan_product(
        &self,
        op: &'static str,
        (a, b, c): (&GpuMatrix, &GpuMatrix, &GpuMatrix),
        (m, k): (usize, usize),
        transposed_a: bool,
    ) -> Result<GpuPlan> {
        self.check_owned(op, &[a.owner, b.owner, c.owner])?;
        for x in [a, b, c] {
            x.check_contiguous(op)?;
        }
        for (x, what) in [(b, "b"), (c, "the output")] {
            if x.dtype() != a.dtype() {
                return Err(Error::invalid(
                    op,
                    format!("{what} of {}, a's precision, not {}", a.dtype(), x.dtype()),
                ));
            }
        }
        if a.dtype() == DType::F16 {
            self.check_shader_f16(op, "an f16 matrix")?;
        }
        let n = b.cols();
        if c.dim() != (m, n) {
            return Err(Error::shape(
                op,
                format!("an output of shape {:?}", (m, n)),
                format!("{:?}", c.dim()),
            ));
        }
        check_disjoint(
            op,
            &[("a", a.at(), a.byte_len()), ("b", b.at(), b.byte_len())],
            &[("the output", c.at(), c.byte_len())],
        )?;
        self.build_plan(op, |rec| {
            // An f16 product accumulates in an f32 workspace (every window of A^T B adding to
            // it), then is rounded once into C.
            let wide = match c.dtype() {
                DType::F32 => None,
                DType::F16 => Some(self.new_matrix(op, m, n)?),
            };
            let out = wide.as_ref().unwrap_or(c);
            // Each operand bound from its own offset: wrapped matrices need not start at 0.
            let plan = self.plan_matmul(
                op,
                &Gemm {
                    a: a.flat_at(0),
                    b: b.flat_at(0),
                    c: out.flat_at(0),
                    m,
                    n,
                    k,
                    form: if transposed_a { Form::Tn } else { Form::Nn },
                    alpha: 1.0,
                    beta: 0.0,
                    textures: None,
                },
            )?;
            rec.run(&plan);
            if let Some(wide) = &wide {
                rec.rows(
                    Kernel::NarrowRows,
                    m,
                    n,
                    &[wide.at(), c.at()],
                    crate::gpu::params::NoArgs::default(),
                )?;
            }
            Ok(())
        })
    }
}

fn binding(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: wgpu::BufferSize::new(size),
    })
}

/// Rows `window` (relative to `at.first_row`) of a buffer with `cols`-element rows: its binding
/// and the window's first element inside it.
fn windowed<'b>(
    geometry: Geometry,
    at: &At<'b>,
    window: &Range<usize>,
    cols: usize,
) -> (wgpu::BindingResource<'b>, u32) {
    let rows = at.first_row + window.start..at.first_row + window.end;
    let (offset, size, base) = slice(geometry, at, &rows, cols);
    (binding(at.buffer, offset, size), base)
}

/// `rows x cols` of `at` in one binding, with the first element's index inside it; `None` when
/// they exceed one binding.
fn bound<'b>(
    geometry: Geometry,
    at: &At<'b>,
    rows: usize,
    cols: usize,
) -> Option<(wgpu::BindingResource<'b>, u32)> {
    let range = at.first_row..at.first_row + rows;
    let (offset, size, base) = slice(geometry, at, &range, cols);
    (size <= geometry.max_binding).then(|| (binding(at.buffer, offset, size), base))
}

/// Where `rows` of `at`'s contiguous `cols`-element rows are bound, in its precision: `(offset,
/// size, index of the first element inside the binding)`.
fn slice(geometry: Geometry, at: &At<'_>, rows: &Range<usize>, cols: usize) -> (u64, u64, u32) {
    geometry.slice_rows(at.offset, rows, (cols, cols), at.dtype.size() as u64)
}

/// The operand bound whole across every window of a product.
fn whole<'b>(
    op: &'static str,
    geometry: Geometry,
    at: &At<'b>,
    rows: usize,
    cols: usize,
    what: &str,
) -> Result<(wgpu::BindingResource<'b>, u32)> {
    bound(geometry, at, rows, cols).ok_or_else(|| Error::TooLarge {
        op,
        what: format!("{what}, {rows} x {cols}, bound whole by the matmul"),
        bytes: slice(geometry, at, &(at.first_row..at.first_row + rows), cols).1,
        limit: geometry.max_binding,
    })
}

fn too_many_groups(op: &'static str, len: usize, groups: usize, max: usize) -> Error {
    Error::TooManyWorkgroups {
        op,
        what: format!(
            "a dimension of {len} in tiles of {}, along one dispatch dimension",
            MM_TILE[0]
        ),
        groups: groups as u64,
        limit: max as u64,
    }
}

/// `(m, k)` of the product `op(a) b` (`op(a)` is `a^T` where `transposed_a`), or the shape error
/// naming the mismatched dimension.
fn product_dims(
    op: &'static str,
    a: &GpuMatrix,
    b: &GpuMatrix,
    transposed_a: bool,
) -> Result<(usize, usize)> {
    let (m, k) = if transposed_a {
        (a.cols(), a.rows())
    } else {
        a.dim()
    };
    if k != b.rows() {
        let what = if transposed_a {
            "the rows of a"
        } else {
            "the columns of a"
        };
        return Err(Error::shape(
            op,
            format!("b with {k} rows ({what})"),
            format!("{} x {}", b.rows(), b.cols()),
        ));
    }
    Ok((m, k))
}
