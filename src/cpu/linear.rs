//! The linear cross-entropy on the CPU: the loss of a classifier layer `z = H W^T + b` over `V`
//! classes, and its gradients with respect to `H`, `W` and `b`. This is the oracle: it
//! materialises the `N x V` logits (rounded once to `f32`, as a framework holding them would),
//! runs them through [`cross_entropy`](super::cross_entropy) and
//! [`cross_entropy_grad`](super::cross_entropy_grad), and takes the products in `f64`.
//!
//! With soft-capping `c`, the loss sees `z' = c tanh(z / c)`, and the chain rule multiplies the
//! gradient of each logit by `dz'/dz = 1 - tanh^2(z / c)`.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::labels::Labels;
use crate::loss::{LinearCrossEntropyOptions, Loss};

/// The gradients of the reduced linear cross-entropy (for reduction `none`, of the sum of the
/// per-row losses).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGrads {
    /// `dL/dH`, `N x D`.
    pub hidden: Array2<f32>,
    /// `dL/dW`, `V x D`.
    pub classifier: Array2<f32>,
    /// `dL/db`, `V`, where there is a bias.
    pub bias: Option<Array1<f32>>,
}

/// Fails unless `W` (`V x D`) has as many columns as `H` (`N x D`) has: the hidden size.
pub(super) fn check_hidden_size(
    op: &'static str,
    h: ArrayView2<f32>,
    w: ArrayView2<f32>,
) -> Result<()> {
    if h.ncols() != w.ncols() {
        return Err(Error::shape(
            op,
            format!(
                "a classifier of {} columns (the hidden size of H, {} x {})",
                h.ncols(),
                h.nrows(),
                h.ncols()
            ),
            format!("{} x {}", w.nrows(), w.ncols()),
        ));
    }
    Ok(())
}

/// Checks the shapes of `H` (`N x D`), `W` (`V x D`, the layout of `nn.Linear.weight`), the
/// bias (`V`) and the labels (`N` rows of `V` classes) and the options.
fn check(
    op: &'static str,
    h: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    labels: Option<&Labels>,
    opts: &LinearCrossEntropyOptions,
) -> Result<()> {
    check_hidden_size(op, h, w)?;
    if w.nrows() == 0 {
        return Err(Error::Empty {
            op,
            what: "the class dimension (the rows of W)",
        });
    }
    if let Some(b) = bias
        && b.len() != w.nrows()
    {
        return Err(Error::shape(
            op,
            format!("a bias of {} values (one per row of W)", w.nrows()),
            format!("{}", b.len()),
        ));
    }
    if let Some(labels) = labels {
        labels.check_fits(op, h.nrows(), w.nrows())?;
    }
    opts.validate(op, w.nrows())
}

/// `H W^T + b` in `f64`, before soft-capping.
fn raw_logits(
    h: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
) -> Array2<f64> {
    let mut z = h.mapv(f64::from).dot(&w.mapv(f64::from).t());
    if let Some(b) = bias {
        z += &b.mapv(f64::from);
    }
    z
}

/// `c tanh(z / c)` where capped, else `z`.
fn cap(z: f64, softcap: Option<f32>) -> f64 {
    match softcap {
        Some(c) => f64::from(c) * (z / f64::from(c)).tanh(),
        None => z,
    }
}

/// The logits the loss sees: `H W^T + b`, soft-capped, rounded once to `f32` (`N x V`).
///
/// # Errors
/// [`Error::Shape`] when `W`'s columns are not `H`'s or the bias is not one per row of `W`,
/// [`Error::Empty`] for no classes, the errors of the options otherwise.
pub fn linear_logits(
    h: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    softcap: Option<f32>,
) -> Result<Array2<f32>> {
    const OP: &str = "linear_logits";
    let opts = LinearCrossEntropyOptions {
        softcap,
        ..Default::default()
    };
    check(OP, h, w, bias, None, &opts)?;
    Ok(raw_logits(h, w, bias).mapv(|z| cap(z, softcap) as f32))
}

/// The linear cross-entropy: [`cross_entropy`](super::cross_entropy) with every option of
/// `opts.loss` over the logits `c tanh((H W^T + b) / c)` (or `H W^T + b` without a softcap), as
/// `F.cross_entropy(F.linear(H, W, b), y, ...)` in PyTorch, or Liger-Kernel's fused linear
/// cross-entropy.
///
/// ```
/// use ndarray::array;
/// use softmax_ce::{cpu, Labels, LinearCrossEntropyOptions};
/// // Two tokens, a hidden size of 2, three classes.
/// let h = array![[1.0f32, 0.0], [0.0, 2.0]];
/// let w = array![[1.0f32, 0.0], [0.0, 1.0], [0.0, 0.0]];
/// let y = Labels::new([0, 2], 3, -100)?;
/// let loss = cpu::linear_cross_entropy(h.view(), w.view(), None, &y, &Default::default())?;
/// // Token 0's logits are (1, 0, 0), token 1's (0, 2, 0).
/// let lse0 = (1f64.exp() + 2.0).ln();
/// let lse1 = (2f64.exp() + 2.0).ln();
/// let want = ((lse0 - 1.0) + lse1) / 2.0;
/// assert!((loss.scalar().unwrap() as f64 - want).abs() < 1e-6);
/// # Ok::<(), softmax_ce::Error>(())
/// ```
///
/// # Errors
/// Those of [`linear_logits`], and of the labels against the rows of `H` and of `W`.
pub fn linear_cross_entropy(
    h: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
) -> Result<Loss> {
    const OP: &str = "linear_cross_entropy";
    check(OP, h, w, bias, Some(labels), opts)?;
    let z = raw_logits(h, w, bias).mapv(|z| cap(z, opts.softcap) as f32);
    super::cross_entropy(z.view(), labels, &opts.loss)
}

/// The gradients of [`linear_cross_entropy`] with respect to `H`, `W` and the bias: with `G`
/// the gradient of the loss with respect to the capped logits ([`cross_entropy_grad`]) and
/// `D = G * (1 - tanh^2(z / c))` (or `G` without a softcap), `dH = D W`, `dW = D^T H` and
/// `db = sum over rows of D`. Ignored rows add nothing to any of them.
///
/// [`cross_entropy_grad`]: super::cross_entropy_grad
pub fn linear_cross_entropy_grad(
    h: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ArrayView1<f32>>,
    labels: &Labels,
    opts: &LinearCrossEntropyOptions,
) -> Result<LinearGrads> {
    const OP: &str = "linear_cross_entropy_grad";
    check(OP, h, w, bias, Some(labels), opts)?;
    let raw = raw_logits(h, w, bias);
    let z = raw.mapv(|z| cap(z, opts.softcap) as f32);
    let g = super::cross_entropy_grad(z.view(), labels, &opts.loss)?;
    let mut d = g.mapv(f64::from);
    if let Some(c) = opts.softcap {
        let c = f64::from(c);
        d.zip_mut_with(&raw, |d, &z| {
            let t = (z / c).tanh();
            *d *= 1.0 - t * t;
        });
    }
    let hidden = d.dot(&w.mapv(f64::from)).mapv(|v| v as f32);
    let classifier = d.t().dot(&h.mapv(f64::from)).mapv(|v| v as f32);
    let bias = bias.map(|_| d.sum_axis(Axis(0)).mapv(|v| v as f32));
    Ok(LinearGrads {
        hidden,
        classifier,
        bias,
    })
}
