//! DMoERM's capability points: the stage names of a task's experts and aggregator, and the pairs
//! labelled on a point, turned to that point's preference.

use crate::data::PairRecord;

/// The stage (and adapter) name of `task`'s expert on `aspect`.
pub fn expert_stage(task: &str, aspect: &str) -> String {
    format!("expert-{task}-{aspect}")
}

/// The stage name of `task`'s aggregator.
pub fn aggregator_stage(task: &str) -> String {
    format!("aggregator-{task}")
}

/// `pair` turned so that `chosen` is the better one on a point labelled `label` (+1 or −1).
fn oriented(pair: &PairRecord, label: i8) -> PairRecord {
    let mut pair = pair.clone();
    if label < 0 {
        std::mem::swap(&mut pair.chosen, &mut pair.rejected);
    }
    pair
}

/// The pairs of `pairs` labelled on `aspect` (+1 or −1; ties and missing labels left out), each turned
/// so that `chosen` is the better one on that point.
pub fn aspect_pairs(pairs: &[PairRecord], aspect: &str) -> Vec<PairRecord> {
    pairs
        .iter()
        .filter_map(|p| p.aspects.as_ref().and_then(|a| a.get(aspect)).filter(|&&l| l != 0).map(|&l| oriented(p, l)))
        .collect()
}
