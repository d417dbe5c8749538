//! What `score`, `eval` and `serve` score with: a loaded run or checkpoint of any method, behind one
//! trait each method implements ([`Scores`]); routed methods also expose their router
//! ([`DomainRouter`]).

use std::any::Any;
use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::accuracy::DomainResult;
use super::manifest::RunMeta;
use crate::backbone::{PairEncoder, Truncation};
use crate::data::domains::TestSets;

/// Rewards, and for a routed scorer the domain each input was routed to.
pub struct Scored {
    pub rewards: Vec<f32>,
    pub domains: Option<Vec<String>>,
}

/// A loaded model that scores `(prompt, response)` rows.
pub trait Scores: Send + Any {
    /// The tokenizer with the length limit and truncation inputs are encoded with.
    fn tokens(&self) -> &PairEncoder;

    /// Rewards for `pairs` in batches of `batch_size` (shortest first where the method batches by
    /// length), in input order; a routed method also says where each row went.
    fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Scored>;

    /// Rewards when every input is known to come from `domain` (the oracle a router is measured
    /// against); a model without a router ignores the domain.
    fn score_as(&self, pairs: &[(&str, &str)], _domain: &str, batch_size: usize) -> Result<Vec<f32>> {
        Ok(self.score(pairs, batch_size)?.rewards)
    }

    /// The router of a routed method.
    fn router(&self) -> Option<&dyn DomainRouter> {
        None
    }

    /// What `eval` reports of this method beyond accuracy (MoRE's expert shares, DMoERM's stages,
    /// ARLISS's switching timings), on the test sets.
    fn evaluate_more(&mut self, _sets: &TestSets, _run: Option<&RunMeta>) -> Result<MethodResults> {
        Ok(MethodResults::default())
    }

    /// The parameters the forward pass uses, when no manifest says.
    fn parameter_count(&self) -> Option<usize> {
        None
    }

    fn as_any(&self) -> &dyn Any;

    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A routed method's router: it picks, per prompt, the domain whose reward part scores the pair.
pub trait DomainRouter {
    /// The router's labels, in order; each has a reward part.
    fn domains(&self) -> &[String];

    /// The domain index the router picks for each prompt.
    fn route(&self, prompts: &[&str], batch_size: usize) -> Result<Vec<usize>>;

    /// Scores each row with the reward part of its domain.
    fn score_in(&self, pairs: &[(&str, &str)], domains: &[String], batch_size: usize) -> Result<Vec<f32>>;

    /// Rewards with the router's choices, and the domain each pair was routed to. Each distinct prompt
    /// is routed once (a pair's two responses share their prompt).
    fn score_routed(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Scored> {
        let mut distinct: Vec<&str> = pairs.iter().map(|(p, _)| *p).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let picked = self.route(&distinct, batch_size)?;
        let domains: Vec<String> = pairs
            .iter()
            .map(|(p, _)| distinct.binary_search(p).map(|i| self.domains()[picked[i]].clone()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("a prompt lost while routing"))?;
        Ok(Scored { rewards: self.score_in(pairs, &domains, batch_size)?, domains: Some(domains) })
    }
}

/// What a method reports besides accuracy; each is absent for methods that have none.
#[derive(Debug, Clone, Default)]
pub struct MethodResults {
    pub experts: Option<ExpertShares>,
    pub tasks: Option<BTreeMap<String, TaskResults>>,
    pub switching: Option<Vec<SwitchingTiming>>,
}

/// Where MoRE's gate sends each domain: `shares[domain][e]` is the mean gate weight of expert `e` over
/// the domain's test inputs (chosen and rejected responses), each row summing to 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpertShares {
    pub experts: usize,
    pub shares: BTreeMap<String, Vec<f64>>,
}

/// DMoERM: one task's inner model on the task's test pairs (the true task, no routing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResults {
    /// The task had no aspect labels: its stage-1 reward model alone is its reward (a single expert).
    pub single_expert: bool,
    /// The stage-1 reward model alone, on the overall preference.
    pub phase1: DomainResult,
    /// Each capability point's expert, with its own head.
    pub experts: BTreeMap<String, ExpertResult>,
    /// The aggregator over the experts, on the overall preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<DomainResult>,
    /// Aspects the task's pairs carry that got no expert (under `dmoerm.min_aspect_pairs`), with their
    /// labelled stage-1 pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_expert: BTreeMap<String, usize>,
}

/// One capability expert: on its own point (the test pairs labelled on it, turned to its preference;
/// none when no test pair is), and on the overall preference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpertResult {
    pub point: Option<DomainResult>,
    pub overall: DomainResult,
}

/// How ARLISS applies its reward adapters to a batch whose rows come from several domains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Switching {
    /// One forward pass of the base with a reward adapter per row.
    #[default]
    OnePass,
    /// As the paper did: activate one domain's adapter, score its rows, switch to the next.
    Sequential,
}

impl Switching {
    pub fn name(self) -> &'static str {
        match self {
            Switching::OnePass => "one_pass",
            Switching::Sequential => "sequential",
        }
    }
}

/// ARLISS: routed scoring of mixed-domain batches (routing included) with one way of switching adapters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchingTiming {
    pub mode: Switching,
    /// Mean seconds to score one input from each domain together (the paper's Table 6 step).
    pub seconds_per_step: f64,
    /// Pairs per second, 32 pairs of mixed domains at a time.
    pub pairs_per_second: f64,
}

/// A loaded scorer and, for an rmroute run, its manifest.
pub struct Scorer {
    pub model: Box<dyn Scores>,
    /// The run's description, when the directory is an rmroute run.
    pub run: Option<RunMeta>,
}

impl Scorer {
    /// The method's own scorer, for callers that need its internals (tests, timing).
    pub fn downcast_ref<T: Scores>(&self) -> Option<&T> {
        self.model.as_any().downcast_ref::<T>()
    }

    /// The method's own scorer, to change how it scores (ARLISS's switching).
    pub fn downcast_mut<T: Scores>(&mut self) -> Option<&mut T> {
        self.model.as_any_mut().downcast_mut::<T>()
    }

    pub fn tokens(&self) -> &PairEncoder {
        self.model.tokens()
    }

    /// Longest input in tokens.
    pub fn max_length(&self) -> usize {
        self.tokens().max_length
    }

    /// How longer inputs are cut.
    pub fn truncation(&self) -> Truncation {
        self.tokens().truncation
    }

    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Scored> {
        self.model.score(pairs, batch_size)
    }

    pub fn score_as(&self, pairs: &[(&str, &str)], domain: &str, batch_size: usize) -> Result<Vec<f32>> {
        self.model.score_as(pairs, domain, batch_size)
    }

    pub fn router(&self) -> Option<&dyn DomainRouter> {
        self.model.router()
    }

    /// Whether a router picks the reward part of each input.
    pub fn is_routed(&self) -> bool {
        self.router().is_some()
    }
}

/// What the caller of [`super::load`] may override.
#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// An adapter name under `DIR/adapters/`, or the directory of a PEFT adapter.
    pub adapter: Option<String>,
    /// Longest input; default: the run's `max_length`, else the model's position limit.
    pub max_length: Option<usize>,
    /// Default: the run's strategy, else `longest_first` (transformers' default).
    pub truncation: Option<Truncation>,
    /// ARLISS: how reward adapters are applied to a mixed batch (default one pass).
    pub switching: Option<Switching>,
}
