//! The shipped recipes, embedded at build time, each parsed as the spec it
//! is (run, sweep or audit).

use sslab_shared::RunSpec;
use sslab_shared::api::Recipe;
use sslab_shared::audit::AuditSpec;
use sslab_shared::sweep::SweepSpec;

include!(concat!(env!("OUT_DIR"), "/recipes.rs"));

/// `toml` as a run, sweep or audit spec, in JSON; the run's error when it
/// is none of them.
fn parse(toml: &str) -> Result<(&'static str, serde_json::Value), String> {
    let json = |v: serde_json::Result<serde_json::Value>| v.map_err(|e| e.to_string());
    match RunSpec::from_toml(toml) {
        Ok(s) => Ok(("run", json(serde_json::to_value(s))?)),
        Err(run_error) => {
            if let Ok(s) = SweepSpec::from_toml(toml) {
                Ok(("sweep", json(serde_json::to_value(s))?))
            } else if let Ok(s) = AuditSpec::from_toml(toml) {
                Ok(("audit", json(serde_json::to_value(s))?))
            } else {
                Err(run_error.to_string())
            }
        }
    }
}

/// The opening `#` lines, without their marks.
fn description(toml: &str) -> String {
    toml.lines()
        .map_while(|l| l.strip_prefix('#'))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every shipped recipe that parses, by name. One that does not is left
/// out (the test below keeps that from shipping).
pub fn all() -> Vec<Recipe> {
    RECIPES
        .iter()
        .filter_map(|(name, toml)| {
            let (kind, spec) = parse(toml).ok()?;
            Some(Recipe {
                name: name.to_string(),
                kind: kind.into(),
                description: description(toml),
                toml: toml.to_string(),
                spec,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_recipe_parses() {
        for (name, toml) in RECIPES {
            parse(toml).unwrap_or_else(|e| panic!("recipes/{name}.toml: {e}"));
        }
        let all = all();
        assert_eq!(all.len(), RECIPES.len());
        let kind = |n: &str| all.iter().find(|r| r.name == n).unwrap().kind.clone();
        assert_eq!(kind("simclr-tiny"), "run");
        assert_eq!(kind("sweep-projector-tiny"), "sweep");
        assert_eq!(kind("dejavu-tiny"), "audit");
        let simclr = all.iter().find(|r| r.name == "simclr-tiny").unwrap();
        assert!(
            simclr
                .description
                .starts_with("SimCLR on the built-in scenes"),
            "{}",
            simclr.description
        );
    }
}
