//! Length bucketing: batches cut from inputs sorted by length hold rows of similar length, so padding
//! each batch to its longest row (what the encoder does) wastes little. Real data mixes one-line and
//! page-long inputs; in file order nearly every batch pads to its longest, close to `max_length`.
//!
//! Bytes of UTF-8 text stand in for tokens: the order only has to group similar lengths, and counting bytes
//! costs nothing where tokenizing twice would not. Results always go back to the input order.

use crate::data::PairRecord;

/// Indices of `records` from shortest to longest (the prompt with its longer response), ties in input
/// order, so the order is the same on every run.
pub fn pair_order(records: &[PairRecord]) -> Vec<usize> {
    order_by(records.len(), |i| {
        let r = &records[i];
        r.prompt.len() + r.chosen.len().max(r.rejected.len())
    })
}

/// Indices of `(prompt, response)` inputs from shortest to longest, ties in input order.
pub fn input_order(inputs: &[(&str, &str)]) -> Vec<usize> {
    order_by(inputs.len(), |i| inputs[i].0.len() + inputs[i].1.len())
}

/// Indices of texts from shortest to longest, ties in input order.
pub fn text_order(texts: &[&str]) -> Vec<usize> {
    order_by(texts.len(), |i| texts[i].len())
}

/// Indices of items with these lengths, shortest first, ties in input order.
pub fn length_order(lengths: &[usize]) -> Vec<usize> {
    order_by(lengths.len(), |i| lengths[i])
}

fn order_by(n: usize, length: impl Fn(usize) -> usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| length(i)); // stable
    order
}

/// `values[k]` belongs to input `order[k]`: the values in input order. A value missing for any input
/// is an error, never a default in its place.
pub fn restore<T: Clone + Default>(values: &[T], order: &[usize]) -> candle_core::Result<Vec<T>> {
    if values.len() != order.len() {
        candle_core::bail!("{} results for {} inputs", values.len(), order.len());
    }
    let mut out = vec![T::default(); order.len()];
    for (value, &i) in values.iter().zip(order) {
        out[i] = value.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_stably_and_restores_the_input_order() {
        let inputs = [("a", "bbbb"), ("", "c"), ("dd", "ee"), ("f", "g"), ("hhh", "i")];
        let order = input_order(&inputs);
        assert_eq!(order, vec![1, 3, 2, 4, 0], "lengths 5, 1, 4, 2, 4: ties keep input order");
        let sorted: Vec<usize> = order.iter().map(|&i| inputs[i].0.len() + inputs[i].1.len()).collect();
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        let values: Vec<String> = order.iter().map(|&i| format!("value of {i}")).collect();
        let back = restore(&values, &order).unwrap();
        assert_eq!(back, (0..5).map(|i| format!("value of {i}")).collect::<Vec<_>>());
        assert!(restore(&values[..4], &order).is_err(), "a missing result is an error");
    }

    #[test]
    fn a_pair_is_as_long_as_its_longer_response() {
        let record = |prompt: &str, chosen: &str, rejected: &str| PairRecord {
            prompt: prompt.into(),
            chosen: chosen.into(),
            rejected: rejected.into(),
            id: String::new(),
            domain: String::new(),
            aspects: None,
            task: None,
        };
        let records = [record("pp", "c", "rrrrrr"), record("p", "cc", "r"), record("", "c", "")];
        assert_eq!(pair_order(&records), vec![2, 1, 0]);
    }
}
