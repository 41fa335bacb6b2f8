//! The register-tiled matrix product (`shaders/matmul.wgsl`): `A B` and `A^T B`, the two products of
//! softmax-regression training.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::buffers::GpuMatrix;
use crate::gpu::dispatch::Geometry;
use crate::gpu::params::MatmulParams;
use crate::gpu::record::{At, Dispatch};
use crate::gpu::shaders::{Kernel, MM_TILE, Width};

/// One product `C = alpha op(A) B + beta C` over buffers, where op(A) is `A` (`transposed_a`
/// false, A is `m x k`) or `A^T` (A is `k x m`); B is `k x n`, C is `m x n`. Each operand
/// starts at row `first_row` of its buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm<'b> {
    pub a: At<'b>,
    pub b: At<'b>,
    pub c: At<'b>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transposed_a: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl GpuContext {
    /// The dispatches of one product. `A B` is cut into windows of A's and C's rows, `A^T B`
    /// into windows of the inner dimension (the rows of A and B), accumulated into C; the
    /// operand not windowed must fit one binding.
    pub(crate) fn plan_matmul(&self, op: &'static str, g: &Gemm<'_>) -> Result<Vec<Dispatch>> {
        let kernel = if g.transposed_a {
            Kernel::MatmulTn
        } else {
            Kernel::MatmulNn
        };
        // Vec4 loads need every row that is read in quads (op(A)'s along the inner dimension
        // for A B, A's along M for A^T B, and B's) to be a whole number of vec4s; bases of such
        // rows always are (see `Geometry::slice`). An empty inner dimension binds 4 bytes,
        // less than one vec4.
        let a_row = if g.transposed_a { g.m } else { g.k };
        let width = if g.k > 0 && a_row.is_multiple_of(4) && g.n.is_multiple_of(4) {
            Width::Vec4
        } else {
            Width::Scalar
        };
        let pipeline = self.pipeline(kernel, width)?;
        let geometry = self.geometry;
        let max_groups = geometry.max_groups_per_dim as usize;
        let [tile_m, tile_n] = MM_TILE.map(|t| t as usize);
        let groups_x = g.n.div_ceil(tile_n);
        if g.m == 0 || g.n == 0 {
            return Ok(Vec::new());
        }
        if groups_x > max_groups {
            return Err(too_many_groups(op, g.n, groups_x, max_groups));
        }
        let mut out = Vec::new();
        if g.transposed_a {
            let (c_binding, c_base) = whole(op, geometry, &g.c, g.m, g.n, "the product")?;
            let groups_y = g.m.div_ceil(tile_m);
            if groups_y > max_groups {
                return Err(too_many_groups(op, g.m, groups_y, max_groups));
            }
            let mut windows = geometry.windows(op, g.k, g.m.max(g.n))?;
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
                };
                out.push(self.dispatch(
                    kernel,
                    &pipeline,
                    bytemuck::bytes_of(&params),
                    vec![a_binding, b_binding, c_binding.clone()],
                    [groups_x as u32, groups_y as u32, 1],
                ));
            }
        } else {
            let (b_binding, b_base) = whole(op, geometry, &g.b, g.k, g.n, "the right-hand matrix")?;
            let rows_per_dispatch = max_groups * tile_m;
            for window in geometry.windows(op, g.m, g.k.max(g.n))? {
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
                    };
                    out.push(self.dispatch(
                        kernel,
                        &pipeline,
                        bytemuck::bytes_of(&params),
                        vec![a_binding, b_binding.clone(), c_binding],
                        [groups_x as u32, part.len().div_ceil(tile_m) as u32, 1],
                    ));
                    start = part.end;
                }
            }
        }
        Ok(out)
    }

    /// `a b`: the product of an `m x k` and a `k x n` matrix, as ndarray's `a.dot(&b)`.
    ///
    /// # Errors
    /// [`Error::Shape`] when the inner dimensions differ; [`Error::TooLarge`] when the result
    /// exceeds the device, or `b` exceeds one binding (`a` and the result are cut into row
    /// windows, `b` is not).
    pub fn matmul(&self, a: &GpuMatrix, b: &GpuMatrix) -> Result<GpuMatrix> {
        const OP: &str = "matmul";
        if a.cols() != b.rows() {
            return Err(Error::shape(
                OP,
                format!("b with {} rows (the columns of a)", a.cols()),
                format!("{} x {}", b.rows(), b.cols()),
            ));
        }
        self.product(OP, a, b, a.rows(), a.cols(), false)
    }

    /// `a^T b` for `a` of `k x m` and `b` of `k x n`, reading `a` transposed in place (no copy):
    /// the gradient `X^T (Z - I_y)` of softmax regression.
    ///
    /// # Errors
    /// [`Error::Shape`] when the row counts differ; [`Error::TooLarge`] when the `m x n`
    /// result exceeds one binding (`a` and `b` are cut into windows of rows).
    pub fn matmul_tn(&self, a: &GpuMatrix, b: &GpuMatrix) -> Result<GpuMatrix> {
        const OP: &str = "matmul_tn";
        if a.rows() != b.rows() {
            return Err(Error::shape(
                OP,
                format!("b with {} rows (the rows of a)", a.rows()),
                format!("{} x {}", b.rows(), b.cols()),
            ));
        }
        self.product(OP, a, b, a.cols(), a.rows(), true)
    }

    fn product(
        &self,
        op: &'static str,
        a: &GpuMatrix,
        b: &GpuMatrix,
        m: usize,
        k: usize,
        transposed_a: bool,
    ) -> Result<GpuMatrix> {
        self.check_owned(op, &[a.owner, b.owner])?;
        let n = b.cols();
        self.record(op, |rec| {
            let c = self.new_matrix(op, m, n)?;
            let plan = self.plan_matmul(
                op,
                &Gemm {
                    a: (&a.buffer).into(),
                    b: (&b.buffer).into(),
                    c: (&c.buffer).into(),
                    m,
                    n,
                    k,
                    transposed_a,
                    alpha: 1.0,
                    beta: 0.0,
                },
            )?;
            rec.run(&plan);
            Ok(c)
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
    let (offset, size, base) = geometry.slice(&rows, cols);
    (binding(at.buffer, offset, size), base)
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
    let range = at.first_row..at.first_row + rows;
    let (offset, size, base) = geometry.slice(&range, cols);
    if size > geometry.max_binding {
        return Err(Error::TooLarge {
            op,
            what: format!("{what}, {rows} x {cols}, bound whole by the matmul"),
            bytes: size,
            limit: geometry.max_binding,
        });
    }
    Ok((binding(at.buffer, offset, size), base))
}

fn too_many_groups(op: &'static str, len: usize, groups: usize, max: usize) -> Error {
    Error::TooLarge {
        op,
        what: format!("a matmul dimension of {len} ({groups} tiles)"),
        bytes: groups as u64,
        limit: max as u64,
    }
}
