//! The losses: pairwise (Bradley–Terry) for reward models, `-log σ(r_chosen − r_rejected)` averaged, and
//! (class-weighted) cross-entropy for routers over domains.

use candle_core::{DType, Result, Tensor, D};

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

/// Cross-entropy of `logits (batch, classes)` against `labels`, each row weighted by its class's
/// weight and normalised by the weights' sum (torch's `CrossEntropyLoss(weight=…)`), from ops that
/// all pass gradients (log-softmax written out, the target picked by a one-hot product).
pub fn cross_entropy(logits: &Tensor, labels: &[usize], class_weights: &[f32]) -> Result<Tensor> {
    let (batch, classes) = logits.dims2()?;
    let mut one_hot = vec![0f32; batch * classes];
    let mut weights = Vec::with_capacity(batch);
    for (row, &label) in labels.iter().enumerate() {
        one_hot[row * classes + label] = 1.0;
        weights.push(class_weights.get(label).copied().unwrap_or(1.0));
    }
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_sum)?;
    let one_hot = Tensor::from_vec(one_hot, (batch, classes), logits.device())?.to_dtype(logits.dtype())?;
    let picked = (log_probs * one_hot)?.sum(D::Minus1)?;
    let total: f32 = weights.iter().sum();
    let weights = Tensor::from_vec(weights, batch, logits.device())?.to_dtype(DType::F32)?;
    ((picked * weights)?.sum_all()? / f64::from(total.max(f32::MIN_POSITIVE)))?.neg()
}

/// Rows whose largest logit is at their label.
pub fn classification_correct(predicted: &[usize], labels: &[usize]) -> usize {
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count()
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

    #[test]
    fn cross_entropy_matches_the_formula_with_class_weights() {
        let logits = Tensor::new(&[[2.0f32, 0.5, -1.0], [0.1, 0.2, 0.3]], &Device::Cpu).unwrap();
        let got = cross_entropy(&logits, &[0, 2], &[1.0, 1.0, 3.0]).unwrap().to_scalar::<f32>().unwrap() as f64;
        let nll = |row: [f64; 3], y: usize| {
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            -(row[y].exp() / z).ln()
        };
        let want = (1.0 * nll([2.0, 0.5, -1.0], 0) + 3.0 * nll([0.1, 0.2, 0.3], 2)) / 4.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert_eq!(classification_correct(&[0, 1, 2], &[0, 2, 2]), 2);
    }
}
