//! One file per method: how it trains, reading like the paper's section for it.

pub mod arliss;
pub mod baseline;
pub mod dmoerm;
pub mod more;
pub mod rodos;
pub mod routed;
pub mod router;
