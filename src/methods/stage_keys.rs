//! What each kind of stage depends on, as the settings in its resume key: built from the experiment's
//! config now, and from the whole config rmroute 0.1.0 recorded in its stages and checkpoints (a
//! stage's overrides applied to that config's top-level fields), so a run that release started can
//! resume. The data a stage trains on is the key's fingerprint, not its settings.

use anyhow::Result;
use serde_json::{json, Value};

use super::config::{ModelSettings, TrainConfig};
use super::method::Method;
use crate::train::classification::Balance;
use crate::train::config::TrainerConfig;
use crate::train::optim::AdamWConfig;

fn legacy(config: &Value) -> Result<TrainConfig> {
    crate::io::from_value(config)
}

/// A reward model trained as a stage (RODOS's and ARLISS's per domain, DMoERM's experts).
pub fn reward_model(model: &ModelSettings, trainer: &TrainerConfig, adamw: &AdamWConfig) -> Value {
    json!({ "model": model, "trainer": trainer, "optimizer": adamw })
}

pub fn legacy_reward_model(config: &Value) -> Result<Value> {
    let c = legacy(config)?;
    Ok(reward_model(&c.model(), &c.trainer(), &c.adamw()))
}

/// A run of one stage (Baseline, BaseLoRA, MoRE): the whole experiment but its paths and device.
pub fn whole_run(cfg: &TrainConfig) -> Value {
    json!({ "method": cfg.method, "model": cfg.model(), "trainer": cfg.trainer(), "optimizer": cfg.adamw(), "more": cfg.more })
}

pub fn legacy_whole_run(config: &Value) -> Result<Value> {
    Ok(whole_run(&legacy(config)?))
}

/// A router over `domains`.
pub fn router(
    model: &ModelSettings,
    trainer: &TrainerConfig,
    adamw: &AdamWConfig,
    balance: Balance,
    adapter: bool,
    domains: &[String],
) -> Value {
    json!({
        "model": model, "trainer": trainer, "optimizer": adamw, "balance": balance, "adapter": adapter,
        "domains": domains,
    })
}

pub fn legacy_router(config: &Value) -> Result<Value> {
    let c = legacy(config)?;
    let balance = c.router().map(|r| r.balance).unwrap_or_default();
    Ok(router(&c.model(), &c.trainer(), &c.adamw(), balance, c.method == Method::Arliss, &c.domains))
}

/// DMoERM's stage 1: a task's reward model, whole or through a LoRA adapter merged in (`phase1`).
pub fn dmoerm_phase1(model: &ModelSettings, trainer: &TrainerConfig, adamw: &AdamWConfig, phase1: &Value) -> Value {
    json!({ "model": model, "trainer": trainer, "optimizer": adamw, "phase1": phase1 })
}

pub fn legacy_dmoerm_phase1(config: &Value) -> Result<Value> {
    let c = legacy(config)?;
    let phase1 = json!(c.dmoerm.as_ref().map(|d| d.phase1).unwrap_or_default());
    Ok(dmoerm_phase1(&c.model(), &c.trainer(), &c.adamw(), &phase1))
}

/// DMoERM's stage 3: the aggregator over experts of `experts`' settings, on features cut as the
/// length and truncation say.
pub fn dmoerm_aggregator(cfg: &TrainConfig, trainer: &TrainerConfig, experts: &[Value]) -> Value {
    json!({
        "trainer": trainer, "optimizer": cfg.adamw(), "max_length": cfg.max_length, "truncation": cfg.truncation,
        "experts": experts,
    })
}

/// The experts' settings are not in rmroute 0.1.0's aggregator record: the rest is compared.
pub fn legacy_dmoerm_aggregator(config: &Value) -> Result<Value> {
    let c = legacy(config)?;
    let mut settings = dmoerm_aggregator(&c, &c.trainer(), &[]);
    if let Some(fields) = settings.as_object_mut() {
        fields.remove("experts");
    }
    Ok(settings)
}
