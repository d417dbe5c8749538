//! Length bucketing: batches cut from inputs sorted by length hold rows of similar length, so padding
//! each batch to its longest row (what the encoder does) wastes little. Real data mixes one-line and
//! page-long inputs; in file order nearly every batch pads to its longest, close to `max_length`.
//!
//! Bytes of UTF-8 text stand in for tokens: the order only has to group similar lengths, and counting bytes
//! costs nothing where tokenizing twice would not. Results always go back to the input order.

use super::PairRecord;

/// A pair's length for ordering: bytes of the prompt with its longer response.
pub fn pair_length(record: &PairRecord) -> usize {
    record.prompt.len() + record.chosen.len().max(record.rejected.len())
}

/// Indices of `records` from shortest to longest ([`pair_length`]), ties in input order, so the order is
/// the same on every run.
pub fn pair_order(records: &[PairRecord]) -> Vec<usize> {
    order_by(records.len(), |i| pair_length(&records[i]))
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

/// Training batches that hold similar lengths and stay seeded: the epoch's shuffled `order` is cut into
/// windows of `window` batches; each window is sorted by length and cut into batches of `batch`; the
/// window's batches are then shuffled by `seed`, so steps do not run from short to long. The result is
/// a permutation of `order`.
pub fn training_order(
    order: &[usize],
    length: impl Fn(usize) -> usize,
    batch: usize,
    window: usize,
    seed: u64,
) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(order.len());
    for part in order.chunks(batch * window.max(1)) {
        let mut sorted = part.to_vec();
        sorted.sort_by_key(|&i| length(i)); // stable: ties keep the shuffled order
        let mut batches: Vec<&[usize]> = sorted.chunks(batch).collect();
        // A short batch (the epoch's end) stays last, so the loop's batches are these batches.
        let short = batches.pop_if(|b| b.len() < batch);
        batches.shuffle(&mut rng);
        out.extend(batches.into_iter().chain(short).flatten());
    }
    out
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

    #[test]
    fn training_order_groups_lengths_within_windows_and_is_seeded() {
        let lengths: Vec<usize> = (0..40).map(|i| (i * 37) % 101).collect();
        let order: Vec<usize> = (0..40).rev().collect();
        let bucketed = training_order(&order, |i| lengths[i], 4, 5, 7);
        let mut sorted = bucketed.clone();
        sorted.sort();
        assert_eq!(sorted, (0..40).collect::<Vec<_>>(), "not a permutation");
        // Each window (20 examples) holds the same examples as before, in batches of similar length.
        for (window, before) in bucketed.chunks(20).zip(order.chunks(20)) {
            let (mut a, mut b) = (window.to_vec(), before.to_vec());
            a.sort();
            b.sort();
            assert_eq!(a, b);
            let spread = |batch: &[usize]| {
                let l: Vec<usize> = batch.iter().map(|&i| lengths[i]).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            };
            let total: usize = window.chunks(4).map(spread).sum();
            let unsorted: usize = before.chunks(4).map(spread).sum();
            assert!(total < unsorted / 2, "batches spread {total} against {unsorted} unsorted");
        }
        assert_eq!(bucketed, training_order(&order, |i| lengths[i], 4, 5, 7), "not reproducible");
        assert_ne!(bucketed, training_order(&order, |i| lengths[i], 4, 5, 8), "the seed changes nothing");
        // Batches are not laid out shortest first.
        let firsts: Vec<usize> = bucketed[..20].chunks(4).map(|b| lengths[b[0]]).collect();
        assert!(firsts.windows(2).any(|w| w[0] > w[1]), "{firsts:?}");
    }
}
