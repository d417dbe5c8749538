//! What each kind of stage depends on, as the settings in its resume key: built from the experiment's
//! config now, and from the whole config rmroute 0.1.0 recorded in its stages and checkpoints (a
//! stage's overrides applied to that config's top-level fields), so a run that release started can
//! resume. The data a stage trains on is the key's fingerprint; how it was chosen (`max_pairs`, drawn
//! with the seed) is a setting too.

use anyhow::Result;
use serde_json::{json, Value};

use super::config::{ModelSettings, TrainConfig};
use super::method::Method;
use crate::backbone::PromptTruncation;
use crate::train::classification::Balance;
use crate::train::config::TrainerConfig;
use crate::train::optim::AdamWConfig;

fn legacy(config: &Value) -> Result<TrainConfig> {
    crate::io::from_value(config)
}

/// A reward model trained as a stage (RODOS's and ARLISS's per domain, DMoERM's experts).
pub fn reward_model(
    model: &ModelSettings,
    trainer: &TrainerConfig,
    adamw: &AdamWConfig,
    max_pairs: Option<usize>,
) -> Value {
    json!({ "model": model, "trainer": trainer, "optimizer": adamw, "max_pairs": max_pairs })
}

pub fn legacy_reward_model(config: &Value) -> Result<Value> {
    let c = legacy(config)?;
    Ok(reward_model(&c.model(), &c.trainer(), &c.adamw(), c.max_pairs))
}

/// A run of one stage (Baseline, BaseLoRA, MoRE): the whole experiment but its paths and device.
pub fn whole_run(cfg: &TrainConfig) -> Value {
    json!({
        "method": cfg.method, "model": cfg.model(), "trainer": cfg.trainer(), "optimizer": cfg.adamw(), "more": cfg.more,
        "max_pairs": cfg.max_pairs,
    })
}

pub fn legacy_whole_run(config: &Value) -> Result<Value> {
    Ok(whole_run(&legacy(config)?))
}

/// A router over `domains`: what a reward model's stage depends on ([`reward_model`]), and how it
/// balances the domains, cuts long prompts, and whether it is an adapter.
pub fn router(
    trained: Value,
    balance: Balance,
    prompt_truncation: PromptTruncation,
    adapter: bool,
    domains: &[String],
) -> Value {
    let mut settings = trained;
    settings["balance"] = json!(balance);
    settings["prompt_truncation"] = json!(prompt_truncation);
    settings["adapter"] = json!(adapter);
    settings["domains"] = json!(domains);
    settings
}

/// rmroute 0.1.0's routers had no truncation of their own: a prompt kept the end its pairs'
/// `truncation` implied.
pub fn legacy_router(config: &Value) -> Result<Value> {
    let c = legacy(config)?;
    let balance = c.router().map(|r| r.balance).unwrap_or_default();
    let prompts_cut = PromptTruncation::following(c.truncation);
    let trained = reward_model(&c.model(), &c.trainer(), &c.adamw(), c.max_pairs);
    Ok(router(trained, balance, prompts_cut, c.method == Method::Arliss, &c.domains))
}

/// DMoERM's stage 1: a task's reward model, whole or through a LoRA adapter merged in (`phase1`).
pub fn dmoerm_phase1(
    model: &ModelSettings,
    trainer: &TrainerConfig,
    adamw: &AdamWConfig,
    phase1: &Value,
    max_pairs: Option<usize>,
) -> Value {
    json!({ "model": model, "trainer": trainer, "optimizer": adamw, "phase1": phase1, "max_pairs": max_pairs })
}

pub fn legacy_dmoerm_phase1(config: &Value) -> Result<Value> {
    let c = legacy(config)?;
    let phase1 = json!(c.dmoerm.as_ref().map(|d| d.phase1).unwrap_or_default());
    Ok(dmoerm_phase1(&c.model(), &c.trainer(), &c.adamw(), &phase1, c.max_pairs))
}

/// DMoERM's stage 3: the aggregator over experts of `experts`' settings, on features cut as the
/// length and truncation say.
pub fn dmoerm_aggregator(cfg: &TrainConfig, trainer: &TrainerConfig, experts: &[Value]) -> Value {
    json!({
        "trainer": trainer, "optimizer": cfg.adamw(), "max_length": cfg.max_length, "truncation": cfg.truncation,
        "experts": experts, "max_pairs": cfg.max_pairs,
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
