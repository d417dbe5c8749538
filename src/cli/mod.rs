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

/// A count flag's value, where 0 makes no sense (`--batch-size 0` would score nothing, or loop):
/// clap's error then names the flag and the value.
pub fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value: T = text.parse().map_err(|e: T::Err| e.to_string())?;
    if value < T::from(1) {
        return Err("must be at least 1".into());
    }
    Ok(value)
}

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
