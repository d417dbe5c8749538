//! LoRA (Hu et al. 2021) inside a linear layer: `y = x·Wᵀ + b + (alpha/r)·(drop(x)·Aᵀ)·Bᵀ` with a frozen
//! `W` and any number of named adapters `(A, B)`; one adapter for a batch, or one per row in a single
//! pass (ARLISS switches reward adapters per input).
//!
//! Adapters are saved in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors` with
//! `base_model.model.<module path>.lora_A.weight`), so Python PEFT loads what rmroute writes.

use std::collections::BTreeMap;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::bf16::Bf16Linear;
use super::{linear, Adapters, Ctx};

pub use super::lora_config::{LoraConfig, TargetModules};

/// The prefix PEFT puts before module paths in adapter files.
pub const PEFT_PREFIX: &str = "base_model.model";

#[derive(Debug, Clone)]
pub struct Adapter {
    /// `(r, in)`.
    pub a: Tensor,
    /// `(out, r)`.
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
}

impl Adapter {
    /// `scale·B·A`, the adapter's change to the weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }

    /// The adapter's change to a layer's output for input `x`: `scale·(x·Aᵀ)·Bᵀ`, scaled at rank `r`
    /// where it costs least.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        linear(&(linear(x, &self.a, None)? * self.scale)?, &self.b, None)
    }
}

/// A linear layer with a frozen base weight and named LoRA adapters.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// The module path in the Hugging Face model (`deberta.encoder.layer.0.attention.self.query_proj`).
    pub path: String,
    /// `(out, in)`, whatever the checkpoint's layout.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The checkpoint stores the weight as `(in, out)`: GPT-2's `Conv1D`, which PEFT adapts with
    /// `fan_in_fan_out: true` (its `lora_A`/`lora_B` keep the usual shapes).
    pub stored_transposed: bool,
    adapters: BTreeMap<String, Adapter>,
    /// The base layer in bf16, for scoring with `--dtype bf16` (adapters stay f32).
    bf16: Option<Bf16Linear>,
}

impl LoraLinear {
    pub fn new(path: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { path: path.into(), weight, bias, stored_transposed: false, adapters: BTreeMap::new(), bf16: None }
    }

    /// Loads `weight` (and `bias` when `with_bias`) at `vb`'s path.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, with_bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if with_bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self::new(vb.prefix(), weight, bias))
    }

    /// Loads a `Conv1D` layer (GPT-2's `c_attn`, `c_proj`, `c_fc`): `weight` stored `(in, out)`. A frozen
    /// weight is laid out `(out, in)` once; a trainable one (full fine-tuning) stays the variable, read
    /// through a transposed view, so every optimiser step reaches the forward pass.
    pub fn load_conv1d(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let stored = vb.get((in_dim, out_dim), "weight")?;
        let weight = if stored.is_variable() { stored.t()? } else { stored.t()?.contiguous()? };
        let bias = Some(vb.get(out_dim, "bias")?);
        Ok(Self { stored_transposed: true, ..Self::new(vb.prefix(), weight, bias) })
    }

    /// The weight as the checkpoint stores it (`(in, out)` for a `Conv1D`).
    pub fn stored_weight(&self) -> Result<Tensor> {
        if self.stored_transposed {
            self.weight.t()?.contiguous()
        } else {
            Ok(self.weight.clone())
        }
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Adds adapter `name`: `A` and `B` come from `vb` (rooted where PEFT keys start) under
    /// `base_model.model.<path>.lora_{A,B}.weight`; new ones start as PEFT does (A ~ U(±1/√in), B = 0).
    pub fn add_adapter(&mut self, name: &str, config: &LoraConfig, vb: &VarBuilder) -> Result<()> {
        let vb = vb.pp(format!("{PEFT_PREFIX}.{}", self.path));
        let bound = 1.0 / (self.in_dim() as f64).sqrt();
        let a = vb.pp("lora_A").get_with_hints(
            (config.rank, self.in_dim()),
            "weight",
            candle_nn::Init::Uniform { lo: -bound, up: bound },
        )?;
        let b = vb.pp("lora_B").get_with_hints((self.out_dim(), config.rank), "weight", candle_nn::init::ZERO)?;
        let dropout = config.dropout as f32;
        self.adapters.insert(name.to_string(), Adapter { a, b, scale: config.scale(), dropout });
        Ok(())
    }

    pub fn adapter(&self, name: &str) -> Option<&Adapter> {
        self.adapters.get(name)
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &String> {
        self.adapters.keys()
    }

    pub fn remove_adapter(&mut self, name: &str) -> Option<Adapter> {
        self.adapters.remove(name)
    }

    /// The base weight with adapter `name` folded in: `W + (alpha/r)·B·A`.
    pub fn merged_weight(&self, name: &str) -> Result<Tensor> {
        match self.adapters.get(name) {
            Some(adapter) => self.weight.add(&adapter.delta_weight()?),
            None => Ok(self.weight.clone()),
        }
    }

    /// Folds adapter `name` into the base weight and drops it, for export.
    pub fn merge(&mut self, name: &str) -> Result<()> {
        self.weight = self.merged_weight(name)?.detach();
        self.adapters.remove(name);
        if self.bf16.is_some() {
            self.use_bf16()?;
        }
        Ok(())
    }

    /// Scores the base layer in bf16 from now on (see [`super::bf16`]); not for training.
    pub fn use_bf16(&mut self) -> Result<()> {
        self.bf16 = Some(Bf16Linear::new(&self.weight.contiguous()?, self.bias.as_ref())?);
        Ok(())
    }

    pub fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// `x·Wᵀ + b`, in bf16 when [`Self::use_bf16`] was called.
    fn base(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bf16 {
            Some(layer) => layer.forward(x),
            None => linear(x, &self.weight, self.bias.as_ref()),
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        match ctx.adapters() {
            Adapters::None => self.base(x),
            Adapters::One(name) => self.forward_with(x, self.adapters.get(name), ctx),
            Adapters::PerRow(names) => self.forward_per_row(x, names.len(), ctx),
        }
    }

    /// The layer with `adapter` (or none) on every row of `x`.
    fn forward_with(&self, x: &Tensor, adapter: Option<&Adapter>, ctx: &Ctx) -> Result<Tensor> {
        let base = self.base(x)?;
        match adapter {
            Some(adapter) => base + adapter.delta(&ctx.dropout(x, adapter.dropout)?)?,
            None => Ok(base),
        }
    }

    /// Each batch row with its own adapter: the base layer runs on the whole batch as one matrix
    /// product; then each run of consecutive rows with the same adapter (the context's runs, worked out
    /// once per batch) goes through that adapter's `A` and `B` together (callers group rows by adapter,
    /// so a batch of any mix costs about what one adapter costs), and the runs' changes are joined back
    /// in order. Rows with no adapter (or one this layer lacks) get none.
    fn forward_per_row(&self, x: &Tensor, rows: usize, ctx: &Ctx) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        if rows != batch {
            candle_core::bail!("{rows} adapter names for a batch of {batch}");
        }
        let runs = ctx.runs();
        if let [only] = runs {
            return self.forward_with(x, only.adapter.as_deref().and_then(|n| self.adapters.get(n)), ctx);
        }
        let base = self.base(x)?;
        let mut deltas = Vec::new();
        for run in runs {
            let (start, len) = (run.start, run.len);
            deltas.push(match run.adapter.as_deref().and_then(|n| self.adapters.get(n)) {
                Some(adapter) => adapter.delta(&ctx.dropout(&x.narrow(0, start, len)?, adapter.dropout)?)?,
                None => Tensor::zeros((len, seq, self.out_dim()), x.dtype(), x.device())?,
            });
        }
        base + Tensor::cat(&deltas, 0)?
    }
}

impl Module for LoraLinear {
    /// The base layer alone (no adapter, evaluation).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.base(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::params::ParamStore;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.random::<f32>() - 0.5).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
    }

    fn config(rank: usize, alpha: f64) -> LoraConfig {
        LoraConfig { rank, alpha, dropout: 0.0, target_modules: TargetModules::names(&["q"]) }
    }

    /// A layer with adapters whose A and B are random (B = 0 at init would hide mistakes).
    fn layer_with(adapters: &[(&str, usize, f64, u64)]) -> LoraLinear {
        let mut layer = LoraLinear::new("enc.q", rand(&[6, 5], 1), Some(rand(&[6], 2)));
        for &(name, rank, alpha, seed) in adapters {
            let mut t = HashMap::new();
            t.insert(format!("{PEFT_PREFIX}.enc.q.lora_A.weight"), rand(&[rank, 5], seed));
            t.insert(format!("{PEFT_PREFIX}.enc.q.lora_B.weight"), rand(&[6, rank], seed + 100));
            let store = ParamStore::from_tensors(t, name, false);
            layer.add_adapter(name, &config(rank, alpha), &store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        }
        layer
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn forward_equals_explicit_weight_plus_scaled_ba() {
        let layer = layer_with(&[("x", 3, 12.0, 7)]);
        let x = rand(&[2, 4, 5], 9);
        let adapter = layer.adapter("x").unwrap();
        // W + (alpha/r)·B·A written out element by element.
        let (w, a, b) = (
            layer.weight.to_vec2::<f32>().unwrap(),
            adapter.a.to_vec2::<f32>().unwrap(),
            adapter.b.to_vec2::<f32>().unwrap(),
        );
        let mut merged = vec![0f32; 30];
        for o in 0..6 {
            for i in 0..5 {
                let ba: f32 = (0..3).map(|k| b[o][k] * a[k][i]).sum();
                merged[o * 5 + i] = w[o][i] + (12.0 / 3.0) * ba;
            }
        }
        let merged = Tensor::from_vec(merged, (6, 5), &Device::Cpu).unwrap();
        let expected =
            x.broadcast_matmul(&merged.t().unwrap()).unwrap().broadcast_add(layer.bias.as_ref().unwrap()).unwrap();
        let got = layer.forward(&x, &Ctx::eval().with_adapters(Adapters::One("x".into()))).unwrap();
        assert!(max_diff(&got, &expected) < 1e-5);
        // and the adapter really changes the output
        assert!(max_diff(&got, &Module::forward(&layer, &x).unwrap()) > 1e-2);
    }

    #[test]
    fn fresh_adapter_starts_at_the_base_output() {
        let mut layer = layer_with(&[]);
        let store = ParamStore::trainable(HashMap::new(), "new", 3);
        layer.add_adapter("new", &config(4, 8.0), &store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let x = rand(&[1, 3, 5], 4);
        let with = layer.forward(&x, &Ctx::eval().with_adapters(Adapters::One("new".into()))).unwrap();
        assert_eq!(max_diff(&with, &Module::forward(&layer, &x).unwrap()), 0.0);
        assert_eq!(store.vars().len(), 2, "A and B are trainable variables");
    }

    #[test]
    fn per_row_adapters_equal_running_each_row_alone() {
        let layer = layer_with(&[("a", 2, 4.0, 11), ("b", 5, 20.0, 21)]);
        let x = rand(&[4, 3, 5], 5);
        let names = vec![Some("b".to_string()), None, Some("a".to_string()), Some("b".to_string())];
        let mixed = layer.forward(&x, &Ctx::eval().with_adapters(Adapters::PerRow(names.clone()))).unwrap();
        for (row, name) in names.iter().enumerate() {
            let adapters = name.clone().map(Adapters::One).unwrap_or_default();
            let alone = layer.forward(&x.narrow(0, row, 1).unwrap(), &Ctx::eval().with_adapters(adapters)).unwrap();
            assert!(max_diff(&mixed.narrow(0, row, 1).unwrap(), &alone) < 1e-5, "row {row}");
        }
    }

    #[test]
    fn merged_equals_unmerged() {
        let mut layer = layer_with(&[("x", 3, 6.0, 31)]);
        let x = rand(&[2, 3, 5], 6);
        let unmerged = layer.forward(&x, &Ctx::eval().with_adapters(Adapters::One("x".into()))).unwrap();
        layer.merge("x").unwrap();
        assert!(layer.adapter("x").is_none());
        let merged = layer.forward(&x, &Ctx::eval()).unwrap();
        assert!(max_diff(&merged, &unmerged) < 1e-5);
    }

    #[test]
    fn targets_match_peft_suffix_rule_and_whole_path_patterns() {
        let mut c = LoraConfig {
            rank: 1,
            alpha: 1.0,
            dropout: 0.0,
            target_modules: TargetModules::names(&["query_proj", "dense"]),
        };
        assert!(c.targets("deberta.encoder.layer.0.attention.self.query_proj"));
        assert!(c.targets("deberta.encoder.layer.0.attention.output.dense"));
        assert!(c.targets("pooler.dense"), "PEFT's suffix rule catches the pooler too");
        assert!(!c.targets("deberta.encoder.layer.0.attention.self.value_proj"));
        assert!(!c.targets("deberta.encoder.layer.0.attention.self.xquery_proj"));
        let adapted = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.output.dense"];
        c.target_modules = TargetModules::exactly(&adapted);
        assert!(adapted.iter().all(|p| c.targets(p)));
        for other in
            ["bert.pooler.dense", "bert.encoder.layer.0.attention.self.key", "x.bert.encoder.layer.0.output.dense"]
        {
            assert!(!c.targets(other), "{other}");
        }
        c.target_modules = TargetModules::Pattern(r".*\.layer\.\d+\.attention\.self\.(query|value)".into());
        assert!(c.targets("bert.encoder.layer.3.attention.self.value"));
        assert!(!c.targets("bert.encoder.layer.3.attention.self.key"));
    }

    #[test]
    fn zero_rank_and_bad_patterns_are_refused() {
        let mut c = config(0, 8.0);
        assert!(c.validate().unwrap_err().contains("`r`"));
        c.rank = 2;
        assert!(c.validate().is_ok());
        c.target_modules = TargetModules::Pattern("(".into());
        assert!(c.validate().unwrap_err().contains("regular expression"));
    }
}
