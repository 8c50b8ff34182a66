//! CSV exports that the API and the command line both write.

use sslab_shared::api::{Evaluation, MetricPoint};
use sslab_shared::audit::AuditReport;

/// One CSV cell: quoted when it holds a comma, a quote or a line break.
pub fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// One row per (job, layer, probe, metric) of a run.
pub fn evaluations(run_id: &str, rows: &[Evaluation]) -> String {
    let mut out = String::from("run_id,job_id,layer,probe,metric,value,settings\n");
    for e in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            field(run_id),
            field(e.job_id.as_deref().unwrap_or("")),
            field(&e.layer),
            field(&e.probe),
            field(&e.metric),
            e.value,
            field(&e.settings.to_string()),
        ));
    }
    out
}

/// One row per step of a run; missing readings are empty cells.
pub fn metrics(points: &[MetricPoint]) -> String {
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = String::from("step,epoch,loss,lr,images_per_sec,data_wait,online_probe_acc\n");
    for m in points {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            m.step,
            m.epoch,
            m.loss,
            m.lr,
            m.images_per_sec,
            opt(m.data_wait),
            opt(m.online_probe_acc),
        ));
    }
    out
}

/// One row per attacked image: its crop, both models' guesses, the outcome.
pub fn examples(report: &AuditReport) -> String {
    let name = |c: u32| {
        report
            .class_names
            .get(c as usize)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    let mut text = String::from(
        "image,set,label,class,crop_x0,crop_y0,crop_x1,crop_y1,target_top1,target_top5,target_confidence,target_neighbours,reference_top1,reference_top5,reference_confidence,reference_neighbours,outcome\n",
    );
    for e in &report.examples {
        let top1 = |g: &sslab_shared::audit::Guess| {
            g.top5.first().map_or(String::new(), |&c| c.to_string())
        };
        let c = e.crop;
        text += &format!(
            "{},{},{},{},{},{},{},{},{},{},{:.6},{},{},{},{:.6},{},{}\n",
            e.image,
            e.set,
            e.label,
            field(&name(e.label)),
            c[0],
            c[1],
            c[2],
            c[3],
            top1(&e.target),
            spaced(&e.target.top5),
            e.target.confidence,
            spaced(&e.target.neighbours),
            top1(&e.reference),
            spaced(&e.reference.top5),
            e.reference.confidence,
            spaced(&e.reference.neighbours),
            e.outcome()
        );
    }
    text
}

/// Values separated by spaces, one CSV cell.
fn spaced<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
