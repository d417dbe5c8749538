//! Small building blocks shared by every model: the forward context (train/eval, seeded dropout, which
//! LoRA adapters are active), a LayerNorm with a backward pass, and gelu.
//!
//! NOTE: candle 0.11.1's fused `LayerNorm` and `softmax_last_dim` pass no gradient (STYLE.md §8): the
//! layer norm here is rmroute's own fused op with its backward (`crate::layer_norm`), as are the
//! attention softmax (`crate::attention_softmax`) and GELU (`crate::gelu`).

use std::cell::RefCell;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which LoRA adapters a forward pass uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Adapters {
    /// The base weights alone.
    #[default]
    None,
    /// One adapter for the whole batch.
    One(String),
    /// One adapter (or none) per batch row, applied in a single pass.
    PerRow(Vec<Option<String>>),
}

impl Adapters {
    /// The adapters of the inputs at `rows` (indices into the inputs these adapters were given for):
    /// a per-row list follows its rows when a batch is cut from them in another order.
    /// A per-row list must name one adapter (or none) for each of `rows` inputs.
    pub fn check_rows(&self, rows: usize) -> Result<()> {
        match self {
            Adapters::PerRow(names) if names.len() != rows => {
                candle_core::bail!("{} per-row adapters for {rows} inputs", names.len())
            }
            _ => Ok(()),
        }
    }

    /// An index past a per-row list is an error, never a row without its adapter.
    pub fn of_rows(&self, rows: &[usize]) -> Result<Adapters> {
        match self {
            Adapters::PerRow(names) => rows
                .iter()
                .map(|&i| {
                    names.get(i).cloned().ok_or_else(|| {
                        candle_core::Error::Msg(format!("{} per-row adapters for input {}", names.len(), i + 1))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Adapters::PerRow),
            other => Ok(other.clone()),
        }
    }
}

/// State a forward pass needs besides the inputs.
pub struct Ctx {
    pub train: bool,
    pub adapters: Adapters,
    /// Seeded host RNG for dropout masks (`Device::Cpu.set_seed` fails in candle 0.11.1).
    rng: RefCell<StdRng>,
}

impl Ctx {
    /// Evaluation: no dropout.
    pub fn eval() -> Self {
        Self { train: false, adapters: Adapters::None, rng: RefCell::new(StdRng::seed_from_u64(0)) }
    }

    /// Training: dropout active, masks drawn from `seed`.
    pub fn train(seed: u64) -> Self {
        Self { train: true, adapters: Adapters::None, rng: RefCell::new(StdRng::seed_from_u64(seed)) }
    }

    pub fn with_adapters(mut self, adapters: Adapters) -> Self {
        self.adapters = adapters;
        self
    }

    /// The same kind of pass, drawing from a copy of this pass's dropout stream, with other adapters;
    /// hand the stream back with [`Ctx::set_rng_state`] when done.
    pub fn fork(&self, adapters: Adapters) -> Self {
        Self { train: self.train, adapters, rng: RefCell::new(self.rng_state()) }
    }

    /// The RNG's state, for checkpoints.
    pub fn rng_state(&self) -> StdRng {
        self.rng.borrow().clone()
    }

    pub fn set_rng_state(&self, rng: StdRng) {
        *self.rng.borrow_mut() = rng;
    }

    /// `n` standard normal draws from the pass's seeded RNG (the noise of noisy top-k gating).
    pub fn standard_normal(&self, n: usize) -> Vec<f32> {
        let mut rng = self.rng.borrow_mut();
        (0..n).map(|_| crate::backbone::params::standard_normal(&mut *rng) as f32).collect()
    }

    /// `n` raw 32-bit draws for a dropout mask, from the pass's seeded RNG (fused ops draw here too, so
    /// a seeded run's masks do not depend on which ops are fused).
    pub fn dropout_draws(&self, n: usize) -> Vec<u32> {
        let mut draws = vec![0u32; n];
        self.rng.borrow_mut().fill(&mut draws[..]);
        draws
    }

    /// Inverted dropout with probability `p`, active only in training.
    pub fn dropout(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(x.clone());
        }
        crate::dropout::DropoutMask::from_draws(&self.dropout_draws(x.elem_count()), p).apply(x)
    }
}

/// LayerNorm over the last dimension, with a gradient (`crate::layer_norm`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self::new(
            vb.get_with_hints(size, "weight", candle_nn::init::ONE)?,
            vb.get_with_hints(size, "bias", candle_nn::init::ZERO)?,
            eps,
        ))
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A plain linear layer `x·Wᵀ + b` for layers that never take LoRA (heads, poolers).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` and `bias`; missing ones (a fresh head) are initialised as transformers does:
    /// normal(0, `init_std`) weights, zero bias.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, init_std: f64) -> Result<Self> {
        let weight =
            vb.get_with_hints((out_dim, in_dim), "weight", candle_nn::Init::Randn { mean: 0.0, stdev: init_std })?;
        let bias = vb.get_with_hints(out_dim, "bias", candle_nn::init::ZERO)?;
        Ok(Self { weight, bias: Some(bias) })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }
}

/// `x·Wᵀ + b` for inputs of any rank: leading dimensions are flattened into one 2-D matmul, which is
/// both the fastest CPU path and the cheapest backward (no broadcast weight to reduce).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let rows = x.elem_count() / in_dim.max(1);
    let x = x.reshape((rows, in_dim))?;
    let y = match bias {
        Some(bias) => crate::linear::linear_2d(&x, weight, bias)?,
        None => x.matmul(&weight.t()?)?,
    };
    let mut out_dims = dims;
    let last = out_dims.len() - 1;
    out_dims[last] = weight.dim(0)?;
    y.reshape(out_dims)
}

/// The activations of Hugging Face configs that our encoders accept.
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    match name {
        "gelu" => crate::gelu::gelu_erf(x),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu(),
        "relu" => x.relu(),
        "tanh" => x.tanh(),
        other => candle_core::bail!("unsupported activation `{other}` (expected gelu, gelu_new, relu or tanh)"),
    }
}
