//! The linear cross-entropy on the device: the loss of `z = H W^T + b` and its gradients without
//! ever holding the `N x V` logits (the GPU side of [`crate::cpu::vocab`], which is its
//! reference).
//!
//! The vocabulary is cut into blocks of `B` classes, `B` sized so that one block of products
//! (`N x B` floats, the workspace) stays within [`WORKSPACE_BYTES`] and one block of `W` within
//! one binding. Per block, the forward pass computes the products `H W_blk^T` (`matmul_nt`)
//! and merges them into per-row statistics (`linear_block_stats`: the running maximum, sum of
//! exponentials, label logit and smoothing sum, with the bias and the soft cap applied as the
//! block is read); the loss comes from the statistics (`linear_loss_rows`, then the same sums
//! as every loss). The backward pass recomputes each block's products, turns them into the
//! gradient of the logits in place from the merged statistics (`linear_block_grad`), and
//! accumulates `dH += G W_blk` (`matmul_nn`), writes `dW_blk = G^T H` and `db_blk = G^T 1`
//! (`matmul_tn`). Every sum has a fixed order and no atomics: two runs give the same bits.
//!
//! A shard of `W` (rows `first_class..`) gives statistics that merge with its neighbours'
//! ([`GpuContext::merge_shard_stats`], or on the host, [`crate::cpu::vocab::ShardStats::merge`])
//! and gradients from the merged statistics: the vocabulary split over several contexts gives
//! the unsharded answer.

use std::ops::Range;

use ndarray::Array1;

use crate::cpu::vocab::ShardStats;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::buffers::{GpuLabels, GpuMatrix, GpuVector};
use crate::gpu::matmul::{Form, Gemm, TextureSet};
use crate::gpu::ops::{GpuLoss, PerRow};
use crate::gpu::params::LinearArgs;
use crate::gpu::record::{At, Recorder};
use crate::gpu::shaders::{Kernel, MM_TILE};
use crate::loss::LinearCrossEntropyOptions;

// Flags of `LinearArgs::flags`. Keep in sync with HAS_BIAS, WEIGHTED and FIRST in
// shaders/linear.wgsl.
const LINEAR_HAS_BIAS: u32 = 1;
const LINEAR_WEIGHTED: u32 = 2;
const LINEAR_FIRST: u32 = 4;

/// The most bytes one block of products may take: the op's workspace beyond its inputs and
/// outputs, whatever `V` (at least 64 classes a block, so past 262,144 rows it grows with `N`).
pub const WORKSPACE_BYTES: u64 = 64 << 20;

/// A vocabulary shard on the device: rows `first_class..first_class + classifier.rows()` of
/// `W` (`V_shard x D`) and of the bias, of a vocabulary of `labels.classes()` classes.
#[derive(Clone, Copy, Debug)]
pub struct GpuShard<'a> {
    /// The shard's rows of `W`.
    pub classifier: &'a GpuMatrix,
    /// The shard's part of the bias, one value per row of `classifier`.
    pub bias: Option<&'a GpuVector>,
    /// The vocabulary index of the shard's first class.
    pub first_class: usize,
}

/// Per-row statistics of a shard's (soft-capped) logits on the device, as
/// [`ShardStats`] holds them on the host; they merge over adjacent shards.
#[derive(Debug)]
pub struct GpuShardStats {
    /// Each row's largest logit.
    pub max: GpuVector,
    /// `sum_j exp(z_j - max)`.
    pub sumexp: GpuVector,
    /// The label's logit where the classes hold it, else 0.
    pub label_logit: GpuVector,
    /// `sum_j w_j (max - z_j)`.
    pub smooth: GpuVector,
    weight: f32,
    classes: Range<usize>,
}

impl GpuShardStats {
    /// `sum_j w_j` over the classes the statistics cover.
    pub fn weight(&self) -> f32 {
        self.weight
    }

    /// The classes the statistics cover.
    pub fn classes(&self) -> Range<usize> {
        self.classes.clone()
    }

    fn vectors(&self) -> [&GpuVector; 4] {
        [&self.max, &self.sumexp, &self.label_logit, &self.smooth]
    }
}

/// The gradients of a linear cross-entropy on the device.
#[derive(Debug)]
pub struct GpuLinearGrads {
    /// `dL/dH`, `N x D` (a shard's part: the shards' parts add up to it).
    pub hidden: GpuMatrix,
    /// `dL/dW`, `V x D` (the shard's rows).
    pub classifier: GpuMatrix,
    /// `dL/db`, where there is a bias.
    pub bias: Option<GpuVector>,
}

/// What the kernels of one shard bind besides the statistics: its class weights (the shard's,
/// and the vocabulary's), the block width, and the per-block bias and weight buffers.
struct Setup {
    n: usize,
    d: usize,
    classes: usize,
    block: usize,
    /// The vocabulary's class weights (1 float where there are none).
    vocab_weights: wgpu::Buffer,
    /// The shard's class weights, where there are weights.
    shard_weights: Option<wgpu::Buffer>,
    /// The summed weight of the shard's classes before each block, and of the whole shard.
    before: Vec<f64>,
    total_weight: f64,
    flags: u32,
}

impl GpuContext {
    /// The linear cross-entropy of `H` (`N x D`) against the classifier `W` (`V x D`, as
    /// `nn.Linear.weight`) and optional bias (`V`), with every option of
    /// [`LinearCrossEntropyOptions`], and, `with_grad`, the gradients of the loss: the values of
    /// [`cpu::vocab::linear_cross_entropy`](crate::cpu::vocab::linear_cross_entropy) without
    /// the `N x V` logits (see the module docs of `gpu::linear` for the blocks).
    ///
    /// ```no_run
    /// use ndarray::array;
    /// use softmax_ce::{GpuContext, Labels, LinearCrossEntropyOptions};
    /// let gpu = GpuContext::new()?;
    /// let h = gpu.upload(array![[1.0f32, 0.0], [0.0, 2.0]].view())?;
    /// let w = gpu.upload(array![[1.0f32, 0.0], [0.0, 1.0], [0.0, 0.0]].view())?;
    /// let y = gpu.upload_labels(&Labels::new([0, 2], 3, -100)?)?;
    /// let opts = LinearCrossEntropyOptions::default();
    /// let (loss, grads) = gpu.linear_cross_entropy(&h, &w, None, &y, &opts, true)?;
    /// let loss = gpu.download_loss(&loss)?;
    /// let dw = gpu.download(&grads.unwrap().classifier)?;
    /// # Ok::<(), softmax_ce::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when `W`'s columns are not `H`'s, the bias is not one per row of `W`
    /// or the labels not one per row of `H`; [`Error::InvalidArgument`] for f16 inputs, bad
    /// options, labels of another vocabulary than `W`'s rows, or arrays of another context;
    /// [`Error::TooLarge`] where one row of `W` exceeds a binding.
    pub fn linear_cross_entropy(
        &self,
        h: &GpuMatrix,
        w: &GpuMatrix,
        bias: Option<&GpuVector>,
        labels: &GpuLabels,
        opts: &LinearCrossEntropyOptions,
        with_grad: bool,
    ) -> Result<(GpuLoss, Option<GpuLinearGrads>)> {
        const OP: &str = "linear_cross_entropy";
        if w.rows() != labels.classes() {
            return Err(Error::invalid(
                OP,
                format!(
                    "a classifier of {} rows for labels of {} classes: W holds one row per class (a shard: linear_shard_stats)",
                    w.rows(),
                    labels.classes()
                ),
            ));
        }
        let shard = GpuShard {
            classifier: w,
            bias,
            first_class: 0,
        };
        let stats = self.linear_shard_stats(h, &shard, labels, opts)?;
        let loss = self.linear_loss_from_stats(&stats, labels, opts)?;
        let grads = if with_grad {
            Some(self.linear_shard_grads(h, &shard, labels, opts, &stats)?)
        } else {
            None
        };
        Ok((loss, grads))
    }

    /// The statistics of one shard's logits for every row of `H`
    /// ([`cpu::vocab::shard_stats`](crate::cpu::vocab::shard_stats) on the device).
    ///
    /// # Errors
    /// Those of [`linear_cross_entropy`](Self::linear_cross_entropy), and
    /// [`Error::InvalidArgument`] for a shard that is empty or ends past the vocabulary.
    pub fn linear_shard_stats(
        &self,
        h: &GpuMatrix,
        shard: &GpuShard<'_>,
        labels: &GpuLabels,
        opts: &LinearCrossEntropyOptions,
    ) -> Result<GpuShardStats> {
        const OP: &str = "linear_cross_entropy";
        let setup = self.linear_setup(OP, h, shard, labels, opts)?;
        let n = setup.n;
        let stats = GpuShardStats {
            max: self.new_vector(OP, n)?,
            sumexp: self.new_vector(OP, n)?,
            label_logit: self.new_vector(OP, n)?,
            smooth: self.new_vector(OP, n)?,
            weight: setup.total_weight as f32,
            classes: shard.first_class..shard.first_class + shard.classifier.rows(),
        };
        let plan = self.build_plan(OP, |rec| {
            self.linear_blocks(rec, OP, h, shard, &setup, |rec, block| {
                let (v0, len) = (block.classes.start, block.classes.len());
                let flags = setup.flags | if block.first { LINEAR_FIRST } else { 0 };
                let [m, s, l, t] = stats.vectors().map(GpuVector::at);
                rec.rows_labelled(
                    Kernel::LinearBlockStats,
                    n,
                    len,
                    &[
                        block.prod,
                        block.bias,
                        block.weights,
                        labels.at(),
                        m,
                        s,
                        l,
                        t,
                    ],
                    LinearArgs {
                        class0: (shard.first_class + v0) as u32,
                        flags,
                        classes: setup.classes as u32,
                        cap: opts.softcap.unwrap_or(0.0),
                        smoothing: opts.loss.label_smoothing,
                        weight: setup.before[v0 / setup.block] as f32,
                        ..LinearArgs::default()
                    },
                    labels,
                )
            })
        })?;
        self.run_plan(plan)?;
        Ok(stats)
    }

    /// The statistics of the union of two adjacent shards' statistics (in either order), on
    /// the device: [`ShardStats::merge`]'s operator.
    ///
    /// # Errors
    /// [`Error::Shape`] for statistics of different row counts; [`Error::InvalidArgument`] for
    /// classes that are not adjacent, or statistics of another context.
    pub fn merge_shard_stats(&self, a: &GpuShardStats, b: &GpuShardStats) -> Result<GpuShardStats> {
        const OP: &str = "merge_shard_stats";
        let n = a.max.len();
        if b.max.len() != n {
            return Err(Error::shape(
                OP,
                format!("statistics of {n} rows"),
                format!("{} rows", b.max.len()),
            ));
        }
        let classes = if a.classes.end == b.classes.start {
            a.classes.start..b.classes.end
        } else if b.classes.end == a.classes.start {
            b.classes.start..a.classes.end
        } else {
            return Err(Error::invalid(
                OP,
                format!(
                    "statistics of classes {:?} and {:?}: only adjacent shards merge, each class once",
                    a.classes, b.classes
                ),
            ));
        };
        let owners: Vec<u64> = a
            .vectors()
            .iter()
            .chain(&b.vectors())
            .map(|v| v.owner)
            .collect();
        self.check_owned(OP, &owners)?;
        let out = GpuShardStats {
            max: self.new_vector(OP, n)?,
            sumexp: self.new_vector(OP, n)?,
            label_logit: self.new_vector(OP, n)?,
            smooth: self.new_vector(OP, n)?,
            weight: a.weight + b.weight,
            classes,
        };
        let plan = self.build_plan(OP, |rec| {
            let bytes = 4 * n as u64;
            for (from, to) in a.vectors().into_iter().zip(out.vectors()) {
                rec.copy(from.at(), &to.buffer, to.offset(), bytes);
            }
            let [m, s, l, t] = out.vectors().map(GpuVector::at);
            let [bm, bs, bl, bt] = b.vectors().map(GpuVector::at);
            rec.rows(
                Kernel::LinearMergeStats,
                n,
                1,
                &[m, s, l, t, bm, bs, bl, bt],
                LinearArgs {
                    weight: a.weight,
                    weight_b: b.weight,
                    ..LinearArgs::default()
                },
            )
        })?;
        self.run_plan(plan)?;
        Ok(out)
    }

    /// The loss from the statistics of the whole vocabulary (one shard's, or the merge of
    /// every shard's), reduced as every cross-entropy is
    /// ([`cpu::vocab::loss_from_stats`](crate::cpu::vocab::loss_from_stats) on the device).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for statistics that do not cover the labels' vocabulary, or
    /// bad options; [`Error::Shape`] for labels that are not one per row.
    pub fn linear_loss_from_stats(
        &self,
        stats: &GpuShardStats,
        labels: &GpuLabels,
        opts: &LinearCrossEntropyOptions,
    ) -> Result<GpuLoss> {
        const OP: &str = "linear_cross_entropy";
        let classes = labels.classes();
        check_whole(OP, stats, classes)?;
        let n = stats.max.len();
        labels.check_fits(OP, n, classes)?;
        opts.validate(OP, classes)?;
        let owners: Vec<u64> = stats.vectors().iter().map(|v| v.owner).collect();
        self.check_owned(OP, &owners)?;
        self.check_owned(OP, &[labels.owner])?;
        let o = &opts.loss;
        let vocab_weights = self.storage_init(
            "linear class weights",
            bytemuck::cast_slice(&o.weight.as_ref().map_or(vec![1.0], |w| w.to_vec())),
        );
        let total: f64 = (0..classes).map(|j| o.w(j)).sum();
        self.new_loss(OP, n, o.reduction, |loss| {
            self.build_plan(OP, |rec| {
                let weights = o
                    .weight
                    .as_ref()
                    .map(|w| (w.as_slice().unwrap_or(&[]), &vocab_weights));
                let weights = match (&o.weight, weights) {
                    (Some(_), Some((s, b))) if !s.is_empty() => Some((s, b)),
                    _ => None,
                };
                let den = self.denominators(rec, OP, labels, weights, o.reduction)?;
                let per_row = PerRow::new(self, OP, n, o.reduction)?;
                let [m, s, l, t] = stats.vectors().map(GpuVector::at);
                rec.rows_labelled(
                    Kernel::LinearLossRows,
                    n,
                    1,
                    &[
                        At::from(&vocab_weights),
                        labels.at(),
                        m,
                        s,
                        l,
                        t,
                        per_row.at(loss),
                        At::from(&den),
                    ],
                    LinearArgs {
                        flags: if o.weight.is_some() {
                            LINEAR_WEIGHTED
                        } else {
                            0
                        },
                        classes: classes as u32,
                        smoothing: o.label_smoothing,
                        z_loss: o.z_loss,
                        weight: total as f32,
                        ..LinearArgs::default()
                    },
                    labels,
                )?;
                per_row.reduce(rec, self, OP, loss)
            })
        })
    }

    /// One shard's part of the gradients, given the statistics of the whole vocabulary
    /// ([`cpu::vocab::shard_grads`](crate::cpu::vocab::shard_grads) on the device): its part of
    /// `dH` (the shards' parts add up to `dH`), and `dW` and `db` for its classes.
    ///
    /// # Errors
    /// Those of [`linear_shard_stats`](Self::linear_shard_stats), and
    /// [`Error::InvalidArgument`] for statistics that do not cover the whole vocabulary or do
    /// not have one value per row of `H`.
    pub fn linear_shard_grads(
        &self,
        h: &GpuMatrix,
        shard: &GpuShard<'_>,
        labels: &GpuLabels,
        opts: &LinearCrossEntropyOptions,
        stats: &GpuShardStats,
    ) -> Result<GpuLinearGrads> {
        const OP: &str = "linear_cross_entropy_grad";
        let setup = self.linear_setup(OP, h, shard, labels, opts)?;
        check_whole(OP, stats, setup.classes)?;
        if stats.max.len() != setup.n {
            return Err(Error::shape(
                OP,
                format!("statistics of {} rows (one per row of H)", setup.n),
                format!("{}", stats.max.len()),
            ));
        }
        let owners: Vec<u64> = stats.vectors().iter().map(|v| v.owner).collect();
        self.check_owned(OP, &owners)?;
        let (n, d) = (setup.n, setup.d);
        let vs = shard.classifier.rows();
        let grads = GpuLinearGrads {
            hidden: self.new_matrix(OP, n, d)?,
            classifier: self.new_matrix(OP, vs, d)?,
            bias: shard.bias.map(|_| self.new_vector(OP, vs)).transpose()?,
        };
        let o = &opts.loss;
        let total: f64 = (0..setup.classes).map(|j| o.w(j)).sum();
        let plan = self.build_plan(OP, |rec| {
            let den = self.denominators(
                rec,
                OP,
                labels,
                o.weight
                    .as_ref()
                    .and_then(|w| w.as_slice())
                    .map(|w| (w, &setup.vocab_weights)),
                o.reduction,
            )?;
            // db = G^T 1: a column of ones, N long.
            let ones = shard
                .bias
                .map(|_| self.storage_init("ones", bytemuck::cast_slice(&vec![1.0f32; n.max(1)])));
            self.linear_blocks(rec, OP, h, shard, &setup, |rec, block| {
                let (v0, len, first) = (block.classes.start, block.classes.len(), block.first);
                let prod = block.prod;
                rec.rows_labelled(
                    Kernel::LinearBlockGrad,
                    n,
                    len,
                    &[
                        prod,
                        block.bias,
                        block.weights,
                        labels.at(),
                        stats.max.at(),
                        stats.sumexp.at(),
                        At::from(&den),
                        At::from(&setup.vocab_weights),
                    ],
                    LinearArgs {
                        class0: (shard.first_class + v0) as u32,
                        flags: setup.flags,
                        classes: setup.classes as u32,
                        cap: opts.softcap.unwrap_or(0.0),
                        smoothing: o.label_smoothing,
                        z_loss: o.z_loss,
                        weight: total as f32,
                        ..LinearArgs::default()
                    },
                    labels,
                )?;
                let w_blk = shard.classifier.at_row(v0);
                let g = At { stride: 0, ..prod };
                // dH (+)= G W_blk: the first block writes, the rest add, in block order.
                rec.push(self.plan_matmul(
                    OP,
                    &Gemm {
                        a: g,
                        b: w_blk,
                        c: grads.hidden.flat_at(0),
                        m: n,
                        n: d,
                        k: len,
                        form: Form::Nn,
                        alpha: 1.0,
                        beta: if first { 0.0 } else { 1.0 },
                        textures: Some(block.textures),
                    },
                )?);
                // dW_blk = G^T H.
                rec.push(self.plan_matmul(
                    OP,
                    &Gemm {
                        a: g,
                        b: h.flat_at(0),
                        c: grads.classifier.at_row(v0),
                        m: len,
                        n: d,
                        k: n,
                        form: Form::Tn,
                        alpha: 1.0,
                        beta: 0.0,
                        textures: Some(block.textures),
                    },
                )?);
                if let (Some(db), Some(ones)) = (&grads.bias, &ones) {
                    rec.push(self.plan_matmul(
                        OP,
                        &Gemm {
                            a: g,
                            b: At::from(ones),
                            c: At {
                                first_row: v0,
                                ..db.at()
                            },
                            m: len,
                            n: 1,
                            k: n,
                            form: Form::Tn,
                            alpha: 1.0,
                            beta: 0.0,
                            textures: Some(block.textures),
                        },
                    )?);
                }
                Ok(())
            })
        })?;
        self.run_plan(plan)?;
        Ok(grads)
    }

    /// Copies statistics computed elsewhere (another context's, downloaded and merged on the
    /// host) to this device.
    ///
    /// # Errors
    /// [`Error::Shape`] when the four vectors differ in length.
    pub fn upload_shard_stats(&self, stats: &ShardStats) -> Result<GpuShardStats> {
        let n = stats.max.len();
        let lens = [
            stats.sumexp.len(),
            stats.label_logit.len(),
            stats.smooth.len(),
        ];
        if lens.iter().any(|&l| l != n) {
            return Err(Error::shape(
                "upload_shard_stats",
                format!("statistics of {n} rows (max, sumexp, label_logit, smooth)"),
                format!("{lens:?}"),
            ));
        }
        Ok(GpuShardStats {
            max: self.upload_vector(stats.max.view())?,
            sumexp: self.upload_vector(stats.sumexp.view())?,
            label_logit: self.upload_vector(stats.label_logit.view())?,
            smooth: self.upload_vector(stats.smooth.view())?,
            weight: stats.weight,
            classes: stats.classes.clone(),
        })
    }

    /// The statistics on the host, to merge with other contexts' ([`ShardStats::merge`]).
    pub fn download_shard_stats(&self, stats: &GpuShardStats) -> Result<ShardStats> {
        let get = |v: &GpuVector| -> Result<Array1<f32>> { self.download_vector(v) };
        Ok(ShardStats {
            max: get(&stats.max)?,
            sumexp: get(&stats.sumexp)?,
            label_logit: get(&stats.label_logit)?,
            smooth: get(&stats.smooth)?,
            weight: stats.weight,
            classes: stats.classes.clone(),
        })
    }

    /// The device memory the linear cross-entropy of `N x D` hidden states against `V`
    /// classes holds beyond its inputs and outputs: one block of products, the per-row
    /// statistics, and the block's bias and weights. It does not grow with `V` past one block.
    ///
    /// # Errors
    /// [`Error::TooLarge`] where one row of `W` (`D` floats) exceeds a binding.
    pub fn linear_workspace_bytes(&self, n: usize, d: usize, v: usize) -> Result<u64> {
        let block = self.linear_block("linear_cross_entropy", n, d, v.max(1))? as u64;
        let n = n as u64;
        Ok(4 * (n * block + 5 * n + 2 * block))
    }

    /// Classes per block: one binding of W's rows, within [`WORKSPACE_BYTES`] of products and
    /// one dispatch dimension of tiles (`dW_blk = G^T H` has a row of tiles per 64 classes), in
    /// whole tiles where there are more.
    fn linear_block(&self, op: &'static str, n: usize, d: usize, vs: usize) -> Result<usize> {
        let g = self.geometry;
        let row_bytes = 4 * d.max(1) as u64;
        let by_binding = g.max_binding.saturating_sub(g.align) / row_bytes;
        if by_binding == 0 {
            return Err(Error::TooLarge {
                op,
                what: format!("one row of the classifier ({d} floats)"),
                bytes: row_bytes,
                limit: g.max_binding.saturating_sub(g.align),
            });
        }
        let tile = MM_TILE[1] as u64;
        let by_workspace = (WORKSPACE_BYTES / (4 * n.max(1) as u64)).max(tile);
        let by_groups = u64::from(g.max_groups_per_dim) * MM_TILE[0] as u64;
        let mut block = by_binding.min(by_workspace).min(by_groups);
        if block >= tile {
            block -= block % tile;
        }
        Ok((block as usize).min(vs).max(1))
    }

    /// Checks a shard's inputs and options, and sizes its blocks.
    fn linear_setup(
        &self,
        op: &'static str,
        h: &GpuMatrix,
        shard: &GpuShard<'_>,
        labels: &GpuLabels,
        opts: &LinearCrossEntropyOptions,
    ) -> Result<Setup> {
        let w = shard.classifier;
        for (m, what) in [(h, "the hidden states"), (w, "the classifier")] {
            m.check_contiguous(op)?;
            m.check_f32_as(op, what)?;
        }
        let (n, d) = h.dim();
        if w.cols() != d {
            return Err(Error::shape(
                op,
                format!("a classifier of {d} columns (the hidden size of H, {n} x {d})"),
                format!("{} x {}", w.rows(), w.cols()),
            ));
        }
        let classes = labels.classes();
        let vs = w.rows();
        crate::cpu::vocab::check_shard(
            op,
            (shard.first_class, vs),
            shard.bias.map(GpuVector::len),
            classes,
        )?;
        labels.check_fits(op, n, classes)?;
        opts.validate(op, classes)?;
        let mut owners = vec![h.owner, w.owner, labels.owner];
        owners.extend(shard.bias.map(|b| b.owner));
        self.check_owned(op, &owners)?;

        let block = self.linear_block(op, n, d, vs)?;

        let o = &opts.loss;
        let vocab_weights = self.storage_init(
            "linear class weights",
            bytemuck::cast_slice(&o.weight.as_ref().map_or(vec![1.0], |w| w.to_vec())),
        );
        let v0 = shard.first_class;
        let shard_weights = o.weight.as_ref().map(|w| {
            self.storage_init(
                "linear shard weights",
                bytemuck::cast_slice(&w.as_slice().expect("weights are contiguous")[v0..v0 + vs]),
            )
        });
        let mut before = Vec::new();
        let mut sum = 0.0;
        for start in (0..vs).step_by(block) {
            before.push(sum);
            sum += (start..(start + block).min(vs))
                .map(|j| o.w(v0 + j))
                .sum::<f64>();
        }
        let mut flags = 0;
        if shard.bias.is_some() {
            flags |= LINEAR_HAS_BIAS;
        }
        if o.weight.is_some() {
            flags |= LINEAR_WEIGHTED;
        }
        Ok(Setup {
            n,
            d,
            classes,
            block,
            vocab_weights,
            shard_weights,
            before,
            total_weight: sum,
            flags,
        })
    }

    /// Records, for each block of the shard's classes in order, the products `H W_blk^T` into
    /// the workspace and the block's bias and weights into their buffers, then `each(rec,
    /// block)`.
    fn linear_blocks(
        &self,
        rec: &mut Recorder<'_>,
        op: &'static str,
        h: &GpuMatrix,
        shard: &GpuShard<'_>,
        setup: &Setup,
        mut each: impl FnMut(&mut Recorder<'_>, Block<'_>) -> Result<()>,
    ) -> Result<()> {
        let (n, d, b) = (setup.n, setup.d, setup.block);
        let vs = shard.classifier.rows();
        let prod = self.new_matrix(op, n, b)?;
        // The blocks run in order in one submission: one buffer each serves every block, and
        // one set of textures every product where the products pack their operands.
        let textures = TextureSet::default();
        let block_bias = self.storage("linear block bias", 4 * b as u64);
        let block_weights = self.storage("linear block weights", 4 * b as u64);
        for (i, v0) in (0..vs).step_by(b).enumerate() {
            let len = b.min(vs - v0);
            let bytes = 4 * len as u64;
            if let Some(bias) = shard.bias {
                let from = At {
                    offset: bias.offset() + 4 * v0 as u64,
                    ..bias.at()
                };
                rec.copy(from, &block_bias, 0, bytes);
            }
            if let Some(w) = &setup.shard_weights {
                let from = At {
                    offset: 4 * v0 as u64,
                    ..At::from(w)
                };
                rec.copy(from, &block_weights, 0, bytes);
            }
            let products = At {
                stride: 0,
                dtype: DType::F32,
                ..prod.flat_at(0)
            };
            rec.push(self.plan_matmul(
                op,
                &Gemm {
                    a: h.flat_at(0),
                    b: shard.classifier.at_row(v0),
                    c: products,
                    m: n,
                    n: len,
                    k: d,
                    form: Form::Nt,
                    alpha: 1.0,
                    beta: 0.0,
                    textures: Some(&textures),
                },
            )?);
            let block = Block {
                classes: v0..v0 + len,
                prod: products,
                bias: At::from(&block_bias),
                weights: At::from(&block_weights),
                first: i == 0,
                textures: &textures,
            };
            each(rec, block)?;
        }
        Ok(())
    }
}

/// One block as its kernels bind it: the products (`N x len`), the block's biases and its
/// class weights (each from the start of its own buffer).
#[derive(Clone)]
struct Block<'a> {
    classes: Range<usize>,
    prod: At<'a>,
    bias: At<'a>,
    weights: At<'a>,
    first: bool,
    /// The textures the products pack their operands into, shared by every block.
    textures: &'a TextureSet,
}

/// Fails unless `stats` cover the whole vocabulary of `classes`.
fn check_whole(op: &'static str, stats: &GpuShardStats, classes: usize) -> Result<()> {
    crate::cpu::vocab::check_covers(op, &stats.classes, classes)
}
