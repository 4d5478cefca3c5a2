use thiserror::Error;

/// Everything the model can refuse. Messages name the offending value so they can be sent
/// back to a client as they are.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("invalid label name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName { name: String },
    #[error("invalid metric name {name:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName { name: String },
    #[error("duplicate label name {name:?}")]
    DuplicateLabel { name: String },
    #[error("label {name:?} has an empty value")]
    EmptyLabelValue { name: String },
    #[error("labels are not sorted: {first:?} comes before {second:?}")]
    UnsortedLabels { first: String, second: String },
    #[error("invalid native histogram: {reason}")]
    InvalidHistogram { reason: String },
    #[error(
        "invalid tenant id {id:?}: use 1-150 characters from letters, digits and !-_.*'() (not \".\" or \"..\")"
    )]
    InvalidTenant { id: String },
    #[error("cannot encode record: {reason}")]
    Encode { reason: String },
    #[error("cannot decode record: {reason}")]
    Decode { reason: String },
}
