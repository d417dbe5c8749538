//! Preference data: the pair record every method trains on, one converter per source format, the
//! train/test split and the `prepare` pipeline that ties them together; the domains of a prepared
//! folder and their pairs; and the length ordering that batches pairs of similar length. Nothing here
//! knows a model.

pub mod anthropic;
pub mod convert;
pub mod dahoas;
pub mod domains;
pub mod error;
pub mod hellaswag;
pub mod lines;
pub mod oasst;
pub mod order;
pub mod prepare;
pub mod record;
pub mod shp;
pub mod split;
pub mod task;

pub use error::RecordError;
pub use record::{read_pairs, PairRecord};

/// The five domains of the paper, in its table order.
pub const DOMAINS: [&str; 5] = ["anthropic", "shp", "hellaswag", "dahoas", "oasst"];
