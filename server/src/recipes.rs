//! The shipped recipes, embedded at build time, each parsed as the spec it
//! is (run, sweep, audit or decoder), and the shipped studies.

use sslab_shared::RunSpec;
use sslab_shared::api::Recipe;
use sslab_shared::audit::AuditSpec;
use sslab_shared::decoder::DecoderSpec;
use sslab_shared::sweep::SweepSpec;

include!(concat!(env!("OUT_DIR"), "/recipes.rs"));

/// `toml` as a run, sweep, audit or decoder spec, in JSON; the run's error when it
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
            } else if let Ok(s) = DecoderSpec::from_toml(toml) {
                Ok(("decoder", json(serde_json::to_value(s))?))
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

/// Every shipped recipe that parses, by name, then the shipped studies
/// (`recipes/studies/`, kind `study`). One that does not parse is left out
/// (the tests below keep that from shipping).
pub fn all() -> Vec<Recipe> {
    let recipes = RECIPES
        .iter()
        .filter_map(|(name, toml)| Some((name, toml, parse(toml).ok()?)));
    let studies = STUDIES.iter().filter_map(|(name, toml)| {
        let spec = sslab_shared::study::StudySpec::from_toml(toml).ok()?;
        Some((name, toml, ("study", serde_json::to_value(spec).ok()?)))
    });
    recipes
        .chain(studies)
        .map(|(name, toml, (kind, spec))| Recipe {
            name: name.to_string(),
            kind: kind.into(),
            description: description(toml),
            toml: toml.to_string(),
            spec,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_study_parses_at_both_sizes() {
        assert!(STUDIES.len() >= 12, "{} studies", STUDIES.len());
        for (name, toml) in STUDIES {
            let spec = sslab_shared::study::StudySpec::from_toml(toml)
                .unwrap_or_else(|e| panic!("recipes/studies/{name}.toml: {e}"));
            assert!(spec.micro.is_some(), "{name} has no [micro] size");
            let micro = spec
                .micro()
                .unwrap_or_else(|e| panic!("recipes/studies/{name}.toml: {e}"));
            assert!(micro.part_count() <= spec.part_count(), "{name}");
            let gpu = STUDIES.iter().any(|(n, _)| *n == format!("{name}-gpu"));
            assert!(name.ends_with("-gpu") || gpu, "{name} has no -gpu variant");
        }
    }

    #[test]
    fn every_shipped_recipe_parses() {
        for (name, toml) in RECIPES {
            parse(toml).unwrap_or_else(|e| panic!("recipes/{name}.toml: {e}"));
        }
        let all = all();
        assert_eq!(all.len(), RECIPES.len() + STUDIES.len());
        let kind = |n: &str| all.iter().find(|r| r.name == n).unwrap().kind.clone();
        assert_eq!(kind("simclr-tiny"), "run");
        assert_eq!(kind("sweep-projector-tiny"), "sweep");
        assert_eq!(kind("dejavu-tiny"), "audit");
        assert_eq!(kind("guillotine"), "study");
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
