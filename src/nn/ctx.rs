//! The forward context every layer reads: training or evaluation, the seeded dropout stream, and which
//! LoRA adapters are active (one for the batch, or one per row, with the runs of rows that share one
//! worked out once per batch).

use std::cell::RefCell;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ops::dropout::DropoutMask;

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

/// Consecutive batch rows that share an adapter (or none): a layer applies each run's adapter once.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub start: usize,
    pub len: usize,
    pub adapter: Option<String>,
}

/// The runs of a per-row adapter list, in order.
fn runs_of(names: &[Option<String>]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < names.len() {
        let len = names[start..].iter().take_while(|n| *n == &names[start]).count();
        runs.push(Run { start, len, adapter: names[start].clone() });
        start += len;
    }
    runs
}

/// State a forward pass needs besides the inputs.
pub struct Ctx {
    pub train: bool,
    adapters: Adapters,
    /// With per-row adapters, their runs (computed once per batch, read by every layer).
    runs: Vec<Run>,
    /// Seeded host RNG for dropout masks (`Device::Cpu.set_seed` fails in candle 0.11.1).
    rng: RefCell<StdRng>,
}

impl Ctx {
    /// Evaluation: no dropout.
    pub fn eval() -> Self {
        Self { train: false, adapters: Adapters::None, runs: vec![], rng: RefCell::new(StdRng::seed_from_u64(0)) }
    }

    /// Training: dropout active, masks drawn from `seed`.
    pub fn train(seed: u64) -> Self {
        Self { train: true, adapters: Adapters::None, runs: vec![], rng: RefCell::new(StdRng::seed_from_u64(seed)) }
    }

    pub fn with_adapters(mut self, adapters: Adapters) -> Self {
        self.runs = match &adapters {
            Adapters::PerRow(names) => runs_of(names),
            Adapters::None | Adapters::One(_) => vec![],
        };
        self.adapters = adapters;
        self
    }

    /// The adapters of this pass.
    pub fn adapters(&self) -> &Adapters {
        &self.adapters
    }

    /// With per-row adapters, the runs of rows that share one (empty otherwise).
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The same kind of pass, drawing from a copy of this pass's dropout stream, with other adapters;
    /// hand the stream back with [`Ctx::set_rng_state`] when done.
    pub fn fork(&self, adapters: Adapters) -> Self {
        let fork =
            Self { train: self.train, adapters: Adapters::None, runs: vec![], rng: RefCell::new(self.rng_state()) };
        fork.with_adapters(adapters)
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
        (0..n).map(|_| super::params::standard_normal(&mut *rng) as f32).collect()
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
        DropoutMask::from_draws(&self.dropout_draws(x.elem_count()), p).apply(x)
    }
}
