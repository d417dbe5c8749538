//! What comes out of trained runs: `eval`'s results, `report`'s paper tables, `compare`'s check against
//! an expected table, and `plot`'s figures.

pub mod compare;
pub mod eval;
pub mod plot;
pub mod report;
