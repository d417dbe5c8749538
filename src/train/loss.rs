//! The pairwise (Bradley–Terry) loss of reward modelling: `-log σ(r_chosen − r_rejected)`, averaged.

use candle_core::{Result, Tensor};

/// Mean of `-log σ(chosen − rejected)`, written as the stable `softplus(−d) = relu(−d) + log(1 + e^{−|d|})`.
pub fn pairwise_loss(chosen: &Tensor, rejected: &Tensor) -> Result<Tensor> {
    let neg = (rejected - chosen)?;
    let softplus = (neg.relu()? + ((neg.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    softplus.mean_all()
}

/// Share of pairs with `chosen > rejected` (a tie counts as wrong), and the count.
pub fn pairwise_correct(chosen: &[f32], rejected: &[f32]) -> usize {
    chosen.iter().zip(rejected).filter(|(c, r)| c > r).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_formula_and_is_stable() {
        let c = Tensor::new(&[2.0f32, -1.0, 0.0, 100.0, -100.0], &Device::Cpu).unwrap();
        let r = Tensor::new(&[1.0f32, 1.0, 0.0, -100.0, 100.0], &Device::Cpu).unwrap();
        let got = pairwise_loss(&c, &r).unwrap().to_scalar::<f32>().unwrap();
        let want: f64 = [1.0f64, -2.0, 0.0, 200.0, -200.0].iter().map(|d| (1.0 + (-d).exp()).ln()).sum::<f64>() / 5.0;
        assert!((got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        assert_eq!(pairwise_correct(&[1.0, 0.0, 2.0], &[0.0, 0.0, 3.0]), 1);
    }
}
