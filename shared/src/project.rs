//! Projects: named groups of a team's runs, sweeps and audits.

use serde::{Deserialize, Serialize};

/// Every team has this project; whatever names none belongs to it.
pub const DEFAULT_PROJECT: &str = "default";
/// The longest project name, in characters.
pub const PROJECT_NAME_MAX: usize = 40;
/// The longest description, in characters.
pub const PROJECT_DESCRIPTION_MAX: usize = 2_000;

pub fn default_project() -> String {
    DEFAULT_PROJECT.to_string()
}

/// A project as the API shows it, with what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Project {
    pub name: String,
    pub description: String,
    /// Milliseconds since the Unix epoch; 0 for the `default` project.
    pub created_at: i64,
    pub created_by: Option<String>,
    pub runs: i64,
    pub sweeps: i64,
    pub audits: i64,
}

/// `POST /projects`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A project name as stored (trimmed), or why it cannot be one: letters,
/// digits and `- _ .`, so that it reads the same in a URL and a path.
pub fn check_project_name(name: &str) -> Result<String, String> {
    let n = name.trim();
    if n.is_empty() {
        return Err("a project name cannot be empty".into());
    }
    if n.chars().count() > PROJECT_NAME_MAX {
        return Err(format!(
            "project name `{}…` is longer than {PROJECT_NAME_MAX} characters",
            n.chars().take(16).collect::<String>()
        ));
    }
    if let Some(c) = n
        .chars()
        .find(|c| !(c.is_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(format!(
            "project name `{n}` has `{}`; use letters, digits and - _ . only",
            c.escape_default()
        ));
    }
    Ok(n.to_string())
}

pub fn check_project_description(text: &str) -> Result<(), String> {
    let n = text.chars().count();
    if n > PROJECT_DESCRIPTION_MAX {
        return Err(format!(
            "the description has {n} characters; at most {PROJECT_DESCRIPTION_MAX}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(check_project_name(" vit-width ").unwrap(), "vit-width");
        assert!(check_project_name("").unwrap_err().contains("empty"));
        assert!(check_project_name("a/b").unwrap_err().contains("`/`"));
        assert!(check_project_name("<b>").unwrap_err().contains("`<`"));
        assert!(
            check_project_name(&"p".repeat(41))
                .unwrap_err()
                .contains("40")
        );
        assert!(check_project_description(&"d".repeat(2001)).is_err());
    }
}
