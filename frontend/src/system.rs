//! How the machine and the input pipeline did while a run trained: the
//! worker's CPU and memory (and the GPU's, on CUDA) over time, and images/s
//! and the data-wait fraction over steps.

use leptos::prelude::*;
use sslab_shared::api::{MetricPoint, SystemSample};

use crate::plot::{Plot, PlotSpec, Series};

/// One chart of one line, its y scale from zero (to `y_max` when given),
/// shown once the line has points. The data is a signal so that a live run
/// keeps the reader's zoom, scale and smoothing as points arrive.
fn line_chart(
    id: &'static str,
    title: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    y_max: Option<f64>,
    points: impl Fn() -> Vec<(f64, f64)> + Send + Sync + 'static,
) -> impl IntoView {
    let spec = Signal::derive(move || PlotSpec {
        id: id.into(),
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        series: vec![Series::new(title, points())],
        y_from_zero: true,
        y_max,
        smoothing: Some(0.0),
        height: 200,
        ..PlotSpec::default()
    });
    let empty = Memo::new(move |_| spec.with(|s| s.series[0].points.is_empty()));
    move || (!empty.get()).then(|| view! { <Plot spec=spec/> })
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The worker's samples of the run, charted; a line when there are none.
#[component]
pub fn SystemCharts(samples: ReadSignal<Vec<SystemSample>>) -> impl IntoView {
    // Seconds since the first sample, and one of its values.
    let over_time = move |value: fn(&SystemSample) -> Option<f64>| {
        move || {
            samples.with(|v| {
                let start = v.first().map(|s| s.at).unwrap_or(0);
                v.iter()
                    .filter_map(|s| Some(((s.at - start) as f64 / 1000.0, value(s)?)))
                    .collect()
            })
        }
    };
    let summary = move || {
        samples.with(|v| {
            if v.is_empty() {
                return view! { <p class="meta" id="system-none">"No system samples: the worker samples every two seconds while the run trains."</p> }.into_any();
            }
            let peak = v.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
            let mean_cpu = v.iter().map(|s| s.cpu_percent).sum::<f64>() / v.len() as f64;
            view! {
                <p class="meta" id="system-summary">{format!(
                    "{} samples · CPU {mean_cpu:.0}% of one core on average · peak memory {:.0} MiB",
                    v.len(), mib(peak)
                )}</p>
            }
            .into_any()
        })
    };
    view! {
        {summary}
        {line_chart("cpu-chart", "CPU", "seconds", "% of one core", None, over_time(|s| Some(s.cpu_percent)))}
        {line_chart("memory-chart", "Memory", "seconds", "MiB", None, over_time(|s| Some(mib(s.rss_bytes))))}
        {line_chart("gpu-chart", "GPU utilisation", "seconds", "%", Some(100.0), over_time(|s| s.gpu_util))}
        {line_chart("gpu-memory-chart", "GPU memory", "seconds", "MiB", None,
            over_time(|s| s.gpu_memory_bytes.map(mib)))}
    }
}

/// Images per second and the fraction of step time spent waiting for data,
/// against step.
#[component]
pub fn ThroughputCharts(points: ReadSignal<Vec<MetricPoint>>) -> impl IntoView {
    let by_step = move |value: fn(&MetricPoint) -> Option<f64>| {
        move || {
            points.with(|p| {
                p.iter()
                    .filter_map(|m| Some((m.step as f64, value(m)?)))
                    .collect()
            })
        }
    };
    view! {
        {line_chart("throughput-chart", "Throughput", "step", "images/s", None, by_step(|m| Some(m.images_per_sec)))}
        {line_chart("data-wait-chart", "Waiting for data", "step", "% of step time", Some(100.0),
            by_step(|m| m.data_wait.map(|w| 100.0 * w)))}
    }
}
