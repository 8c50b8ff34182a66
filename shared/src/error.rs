use serde::de::DeserializeOwned;
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

/// Where deserialisation stopped, as a dotted path; empty for the root.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

/// Parses JSON into `T`; a failure names the field it stopped at.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de)
        .map_err(|e| SpecError::new(field_path(e.path()), e.into_inner().to_string()))
}

/// Parses TOML into `T`; a failure names the field it stopped at.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| SpecError::new("", e.message().to_string()))?;
    serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| SpecError::new(field_path(e.path()), e.inner().message().to_string()))
}

/// Converts a JSON value into `T`; a failure names the field.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| SpecError::new(field_path(e.path()), e.into_inner().to_string()))
}
