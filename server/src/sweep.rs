//! What a sweep's runs add up to: per-axis aggregates (mean ± std over the
//! runs that succeeded) and the one-row-per-run-and-layer CSV. The API and
//! `sslab sweep` share it.

use std::collections::BTreeMap;

use serde_json::Value;
use sslab_shared::api::{AxisAggregate, RunStatus, StatusCounts, SweepRun};
use sslab_shared::sweep::value_label;

/// Aggregates over succeeded runs, and the counts of the runs left out.
pub fn aggregate(axes: &[String], runs: &[SweepRun]) -> (Vec<AxisAggregate>, StatusCounts) {
    let mut excluded = StatusCounts::default();
    for r in runs.iter().filter(|r| r.status != RunStatus::Succeeded) {
        excluded.add(r.status, 1);
    }
    let ok: Vec<&SweepRun> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .collect();
    let mut out = Vec::new();
    for axis in axes {
        // Axis values in first-seen order (the expansion order), then the
        // values of each (layer, probe, metric).
        let mut values: Vec<Value> = Vec::new();
        let mut groups: BTreeMap<(usize, String, String, String), Vec<f64>> = BTreeMap::new();
        for r in &ok {
            let Some(v) = r.values.get(axis) else {
                continue;
            };
            let vi = match values.iter().position(|x| x == v) {
                Some(i) => i,
                None => {
                    values.push(v.clone());
                    values.len() - 1
                }
            };
            for e in &r.evaluations {
                groups
                    .entry((vi, e.layer.clone(), e.probe.clone(), e.metric.clone()))
                    .or_default()
                    .push(e.value);
            }
        }
        for ((vi, layer, probe, metric), xs) in groups {
            let (mean, std) = mean_std(&xs);
            out.push(AxisAggregate {
                axis: axis.clone(),
                value: values[vi].clone(),
                layer,
                probe,
                metric,
                mean,
                std,
                n: xs.len() as i64,
            });
        }
    }
    (out, excluded)
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One row per run and layer: the run, its status, the axis values, the
/// seed, then one column per `probe.metric`. Runs without evaluations
/// (failed, unfinished) get one row with empty results.
pub fn summary_csv(axes: &[String], runs: &[SweepRun]) -> String {
    let mut columns: Vec<(String, String)> = runs
        .iter()
        .flat_map(|r| &r.evaluations)
        .map(|e| (e.probe.clone(), e.metric.clone()))
        .collect();
    columns.sort();
    columns.dedup();
    let mut out = String::from("run_id,name,status");
    for a in axes {
        out.push(',');
        out.push_str(&crate::csv::field(a));
    }
    out.push_str(",seed,layer");
    for (p, m) in &columns {
        out.push_str(&format!(",{}", crate::csv::field(&format!("{p}.{m}"))));
    }
    out.push('\n');
    for r in runs {
        let mut layers: Vec<&str> = Vec::new();
        for e in &r.evaluations {
            if !layers.contains(&e.layer.as_str()) {
                layers.push(&e.layer);
            }
        }
        let mut prefix = format!(
            "{},{},{}",
            crate::csv::field(&r.id),
            crate::csv::field(&r.name),
            r.status.as_str()
        );
        for a in axes {
            let v = r.values.get(a).map(value_label).unwrap_or_default();
            prefix.push_str(&format!(",{}", crate::csv::field(&v)));
        }
        prefix.push_str(&format!(",{}", r.seed));
        if layers.is_empty() {
            out.push_str(&prefix);
            out.push(',');
            out.push_str(&",".repeat(columns.len()));
            out.push('\n');
        }
        for layer in layers {
            out.push_str(&format!("{prefix},{}", crate::csv::field(layer)));
            for (p, m) in &columns {
                out.push(',');
                if let Some(e) = r
                    .evaluations
                    .iter()
                    .find(|e| e.layer == layer && &e.probe == p && &e.metric == m)
                {
                    out.push_str(&e.value.to_string());
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sslab_shared::api::Evaluation;

    fn run(id: &str, status: RunStatus, dims: &str, seed: u64, knn: &[(&str, f64)]) -> SweepRun {
        SweepRun {
            id: id.into(),
            name: format!("s: dims={dims} seed={seed}"),
            status,
            seed,
            values: [("projector.dims".to_string(), json!(dims))]
                .into_iter()
                .collect(),
            last_loss: None,
            error: None,
            evaluations: knn
                .iter()
                .map(|(layer, v)| Evaluation {
                    layer: layer.to_string(),
                    probe: "knn".into(),
                    metric: "top1".into(),
                    value: *v,
                    settings: Value::Null,
                    job_id: None,
                })
                .collect(),
        }
    }

    #[test]
    fn aggregates_over_seeds_and_leaves_out_failures() {
        let axes = vec!["projector.dims".to_string()];
        let runs = vec![
            run(
                "a",
                RunStatus::Succeeded,
                "8-4",
                0,
                &[("backbone", 0.5), ("proj.0", 0.4)],
            ),
            run(
                "b",
                RunStatus::Succeeded,
                "8-4",
                1,
                &[("backbone", 0.7), ("proj.0", 0.6)],
            ),
            run("c", RunStatus::Succeeded, "8-16", 0, &[("backbone", 0.9)]),
            // Failed runs may carry partial rows; they must not count.
            run("d", RunStatus::Failed, "8-16", 1, &[("backbone", 0.1)]),
            run("e", RunStatus::Running, "8-16", 2, &[]),
        ];
        let (agg, excluded) = aggregate(&axes, &runs);
        assert_eq!(excluded.failed, 1);
        assert_eq!(excluded.running, 1);
        assert_eq!(agg.len(), 3);
        let bb = &agg[0];
        assert_eq!(
            (bb.value.clone(), bb.layer.as_str()),
            (json!("8-4"), "backbone")
        );
        assert!((bb.mean - 0.6).abs() < 1e-12);
        // Sample std of {0.5, 0.7}.
        assert!((bb.std - 0.1414213562373095).abs() < 1e-12);
        assert_eq!(bb.n, 2);
        let wide = agg.iter().find(|a| a.value == json!("8-16")).unwrap();
        assert_eq!((wide.mean, wide.std, wide.n), (0.9, 0.0, 1));
    }

    #[test]
    fn csv_has_a_row_per_run_and_layer() {
        let axes = vec!["projector.dims".to_string()];
        let runs = vec![
            run(
                "a",
                RunStatus::Succeeded,
                "8-4",
                0,
                &[("backbone", 0.5), ("proj.0", 0.25)],
            ),
            run("d", RunStatus::Failed, "8-16", 1, &[]),
        ];
        let csv = summary_csv(&axes, &runs);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "run_id,name,status,projector.dims,seed,layer,knn.top1"
        );
        assert_eq!(
            lines[1],
            "a,s: dims=8-4 seed=0,succeeded,8-4,0,backbone,0.5"
        );
        assert_eq!(lines[2], "a,s: dims=8-4 seed=0,succeeded,8-4,0,proj.0,0.25");
        assert_eq!(lines[3], "d,s: dims=8-16 seed=1,failed,8-16,1,,");
        assert_eq!(lines.len(), 4);
    }
}
