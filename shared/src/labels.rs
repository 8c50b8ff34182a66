//! What a team writes on its runs, sweeps and audits to find them again: tags, a note, the
//! archived flag, and the checks both the API and the dashboard apply.

use serde::{Deserialize, Serialize};

/// The most tags on one run.
pub const TAGS_MAX: usize = 32;
/// The longest tag, in characters.
pub const TAG_LEN_MAX: usize = 40;
/// The longest note, in characters.
pub const NOTE_MAX: usize = 20_000;

/// `PATCH` of a run, sweep or audit: each field given replaces the stored one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct LabelUpdate {
    pub name: Option<String>,
    /// The whole set of tags (duplicates are dropped, order kept).
    pub tags: Option<Vec<String>>,
    /// Markdown; shown with raw HTML and script links made inert.
    pub note: Option<String>,
    pub archived: Option<bool>,
    /// Moves it (a sweep with its runs) to this project of its team.
    pub project: Option<String>,
}

/// What `GET /search` finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SearchKind {
    Run,
    Sweep,
    Audit,
    Dataset,
}

impl SearchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchKind::Run => "run",
            SearchKind::Sweep => "sweep",
            SearchKind::Audit => "audit",
            SearchKind::Dataset => "dataset",
        }
    }

    /// Its page in the dashboard.
    pub fn page(self, id: &str) -> String {
        match self {
            SearchKind::Run => format!("/runs/{id}"),
            SearchKind::Sweep => format!("/sweeps/{id}"),
            SearchKind::Audit => format!("/audits/{id}"),
            SearchKind::Dataset => format!("/datasets#dataset-{id}"),
        }
    }
}

/// One thing `GET /search` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    pub kind: SearchKind,
    /// The id; for a data set its name, which its API paths use.
    pub id: String,
    pub name: String,
    /// Of a run or an audit.
    pub status: Option<crate::api::RunStatus>,
    pub tags: Vec<String>,
    pub archived: bool,
    pub created_at: i64,
    /// What matched: `id` (its start), `name` (a part) or `tag` (its start).
    pub matched: String,
}

/// A tag as stored (trimmed), or why it cannot be one. Letters, digits and
/// `- _ . : / +` only, so that a tag reads the same in a URL, a filter box
/// and a CSV.
pub fn check_tag(tag: &str) -> Result<String, String> {
    let t = tag.trim();
    if t.is_empty() {
        return Err("a tag cannot be empty".into());
    }
    if t.chars().count() > TAG_LEN_MAX {
        return Err(format!(
            "tag `{}…` is longer than {TAG_LEN_MAX} characters",
            t.chars().take(16).collect::<String>()
        ));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_alphanumeric() || "-_.:/+".contains(*c)))
    {
        return Err(format!(
            "tag `{t}` has `{}`; use letters, digits and - _ . : / + only",
            c.escape_default()
        ));
    }
    Ok(t.to_string())
}

/// The tags as stored: each checked, duplicates dropped, at most `TAGS_MAX`.
pub fn check_tags(tags: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t = check_tag(t)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.len() > TAGS_MAX {
        return Err(format!(
            "{} tags; a run takes at most {TAGS_MAX}",
            out.len()
        ));
    }
    Ok(out)
}

pub fn check_note(note: &str) -> Result<(), String> {
    let n = note.chars().count();
    if n > NOTE_MAX {
        return Err(format!("the note has {n} characters; at most {NOTE_MAX}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_trimmed_deduplicated_and_bounded() {
        let tags = check_tags(&[" baseline ".into(), "lr:0.3".into(), "baseline".into()]).unwrap();
        assert_eq!(tags, vec!["baseline", "lr:0.3"]);
        assert!(check_tag("").unwrap_err().contains("empty"));
        assert!(check_tag("<script>").unwrap_err().contains("`<`"));
        assert!(check_tag("a b").unwrap_err().contains("letters, digits"));
        assert!(check_tag(&"x".repeat(41)).unwrap_err().contains("40"));
        assert_eq!(check_tag("größe/β").unwrap(), "größe/β");
        let many: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        assert!(check_tags(&many).unwrap_err().contains("1000 tags"));
        assert!(check_note(&"n".repeat(NOTE_MAX + 1)).is_err());
        assert!(check_note("# fine").is_ok());
    }
}
