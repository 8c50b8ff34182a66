use serde::{Deserialize, Serialize};

/// A spec that cannot run: which field, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecError {
    /// Dotted path, e.g. `optimizer.lr`; empty when the document itself is malformed.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SpecError {}
