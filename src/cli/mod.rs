//! One module per subcommand; `main.rs` only parses and dispatches.

pub mod eval;
pub mod eval_router;
pub mod label_aspects;
pub mod model;
pub mod prepare;
pub mod report;
pub mod score;
pub mod serve;
pub mod train;

use anyhow::{bail, Result};
use candle_core::Device;

/// `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Ok(Device::new_cuda(n)?),
            None => bail!("unknown device `{other}`: expected cpu, cuda or cuda:N"),
        },
    }
}
