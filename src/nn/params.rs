//! Where model weights come from: checkpoint tensors, frozen or trainable, with seeded initialisation
//! for tensors a checkpoint does not have (a fresh reward head, new LoRA adapters).
//!
//! Trainable tensors are candle `Var`s collected here, so the optimizer sees exactly those; frozen ones
//! stay plain tensors and get no gradient (candle has no requires-grad flag, STYLE.md §8).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A source of named tensors for [`VarBuilder`].
pub struct ParamStore {
    tensors: HashMap<String, Tensor>,
    /// Where the tensors came from, for error messages.
    source: String,
    trainable: bool,
    init_missing: bool,
    rng: Mutex<StdRng>,
    vars: Mutex<Vec<(String, Var)>>,
    /// Every tensor handed out, by the name the model asked for: what the forward pass uses.
    used: Mutex<Vec<(String, Tensor)>>,
    /// Names the checkpoint lacked and that were initialised from the seed.
    initialised: Mutex<Vec<String>>,
}

impl ParamStore {
    /// Tensors from a checkpoint; `trainable` makes each a `Var`; missing names are an error.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: impl Into<String>, trainable: bool) -> Arc<Self> {
        Arc::new(Self {
            tensors,
            source: source.into(),
            trainable,
            init_missing: false,
            rng: Mutex::new(StdRng::seed_from_u64(0)),
            vars: Mutex::new(Vec::new()),
            used: Mutex::new(Vec::new()),
            initialised: Mutex::new(Vec::new()),
        })
    }

    /// Trainable parameters: taken from `tensors` where present, else initialised from `seed`.
    pub fn trainable(tensors: HashMap<String, Tensor>, source: impl Into<String>, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            tensors,
            source: source.into(),
            trainable: true,
            init_missing: true,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            vars: Mutex::new(Vec::new()),
            used: Mutex::new(Vec::new()),
            initialised: Mutex::new(Vec::new()),
        })
    }

    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Shared(self.clone())), dtype, device.clone())
    }

    /// The trainable variables handed out so far, with their full names, in creation order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The tensors handed out so far (variables included, with their current values), by the names
    /// the model asked for. Checkpoint tensors the model never asked for (an MLM head, integer
    /// `position_ids`) are not among them.
    pub fn used(&self) -> Vec<(String, Tensor)> {
        self.used.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Names the checkpoint lacked, initialised from the seed.
    pub fn initialised(&self) -> Vec<String> {
        self.initialised.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn lookup(&self, name: &str) -> Option<&Tensor> {
        if let Some(t) = self.tensors.get(name) {
            return Some(t);
        }
        // Old LayerNorm names (`gamma`/`beta`), as in BERT checkpoints from TensorFlow.
        let old = name.strip_suffix(".weight").map(|p| format!("{p}.gamma"));
        let old = old.or_else(|| name.strip_suffix(".bias").map(|p| format!("{p}.beta")))?;
        self.tensors.get(&old)
    }

    fn init(&self, shape: &Shape, init: Init) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().map_err(|_| candle_core::Error::Msg("parameter RNG poisoned".into()))?;
        let values: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * standard_normal(&mut rng)) as f32).collect(),
            Init::Kaiming { .. } => {
                // Same bound as PyTorch's default for Linear: kaiming_uniform(a=√5) = U(±1/√fan_in).
                let fan_in: usize = shape.dims().iter().skip(1).product::<usize>().max(1);
                let bound = 1.0 / (fan_in as f64).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
            }
        };
        Tensor::from_vec(values, shape, &Device::Cpu)
    }
}

/// A standard normal draw (Box–Muller), so initialisation depends only on our seeded RNG.
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

struct Shared(Arc<ParamStore>);

impl candle_nn::var_builder::SimpleBackend for Shared {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        let store = &self.0;
        let tensor = match store.lookup(name) {
            Some(t) => {
                if t.shape() != &shape {
                    candle_core::bail!(
                        "tensor `{name}` in {} has shape {:?}, the config implies {:?}",
                        store.source,
                        t.dims(),
                        shape.dims()
                    );
                }
                t.clone()
            }
            None if store.init_missing => {
                if let Ok(mut names) = store.initialised.lock() {
                    names.push(name.to_string());
                }
                store.init(&shape, init)?
            }
            None => candle_core::bail!("missing tensor `{name}` in {}", store.source),
        };
        let mut tensor = tensor.to_dtype(dtype)?.to_device(device)?;
        if store.trainable {
            let var = Var::from_tensor(&tensor)?;
            if let Ok(mut vars) = store.vars.lock() {
                vars.push((name.to_string(), var.clone()));
            }
            tensor = var.as_tensor().clone();
        }
        if let Ok(mut used) = store.used.lock() {
            used.push((name.to_string(), tensor.clone()));
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        match self.0.lookup(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(device),
            None => candle_core::bail!("missing tensor `{name}` in {}", self.0.source),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lookup(name).is_some()
    }
}
