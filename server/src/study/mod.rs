//! Studies: the report of a study computed from its stored results, its
//! charts, and the files `sslab study` writes (`report.json`, `report.md`,
//! `charts/finding-N.png`).

pub mod advance;
pub mod chart;
pub mod report;

use std::path::Path;

use anyhow::Context;
use sslab_shared::study::StudyReport;

fn figure(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:+.4}"))
}

/// The report as Markdown; charts are linked as `charts/finding-N.png`.
pub fn markdown(r: &StudyReport) -> String {
    let mut md = format!("# Study: {}\n\n", r.study);
    if !r.paper.is_empty() {
        md.push_str(&format!("Paper: {}\n\n", r.paper));
    }
    if !r.question.is_empty() {
        md.push_str(&format!("**Question.** {}\n\n", r.question));
    }
    if !r.claim.is_empty() {
        md.push_str(&format!("**The paper's claim.** {}\n\n", r.claim));
    }
    md.push_str(
        "| finding | paper's claim | ours | std | seeds | agrees? |\n|---|---|---|---|---|---|\n",
    );
    for f in &r.findings {
        let agrees = match f.agrees {
            Some(true) => "yes".to_string(),
            Some(false) => format!("no ({})", f.verdict),
            None => "no data".to_string(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            f.name,
            f.claim,
            figure(f.ours),
            f.std.map_or("–".into(), |s| format!("{s:.4}")),
            f.n,
            agrees
        ));
    }
    for (i, f) in r.findings.iter().enumerate() {
        md.push_str(&format!(
            "\n## {}\n\n{}\n\n![{}](charts/finding-{}.png)\n\n{}\n",
            f.name,
            f.claim,
            f.name,
            i + 1,
            f.detail
        ));
        if !f.series.is_empty() {
            let head = if f.axis.is_empty() { "figure" } else { &f.axis };
            md.push_str(&format!(
                "\n| {head} | mean | std | n |\n|---|---|---|---|\n"
            ));
            for p in &f.series {
                md.push_str(&format!(
                    "| {} | {:.4} | {:.4} | {} |\n",
                    p.label, p.mean, p.std, p.n
                ));
            }
        }
    }
    if !r.problems.is_empty() {
        md.push_str("\n## Problems\n\n");
        for p in &r.problems {
            md.push_str(&format!("- {p}\n"));
        }
    }
    md.push_str("\n## Parts\n\n| kind | part | name | status | seed |\n|---|---|---|---|---|\n");
    for i in &r.runs {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            i.kind,
            i.part,
            i.name,
            i.status.as_str(),
            i.seed
        ));
    }
    md
}

/// Writes `report.json`, `report.md` and one chart per finding into `dir`.
pub fn write_report(dir: &Path, r: &StudyReport) -> anyhow::Result<()> {
    let charts = dir.join("charts");
    std::fs::create_dir_all(&charts)
        .with_context(|| format!("cannot create {}", charts.display()))?;
    for (i, f) in r.findings.iter().enumerate() {
        let path = charts.join(format!("finding-{}.png", i + 1));
        std::fs::write(&path, chart::png(f))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    let md = dir.join("report.md");
    std::fs::write(&md, markdown(r)).with_context(|| format!("cannot write {}", md.display()))
}
