//! The collectors' output type, shared with the cluster agent through the scrape crate.

pub use scrape::families::{Families, Family};
