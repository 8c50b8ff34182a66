//! How the machine and the input pipeline did while a run trained: the
//! worker's CPU and memory (and the GPU's, on CUDA) over time, and images/s
//! and the data-wait fraction over steps.

use leptos::prelude::*;
use sslab_shared::api::{MetricPoint, SystemSample};

use crate::chart::ChartFrame;

const W: f64 = 640.0;
const H: f64 = 180.0;
const PAD: f64 = 40.0;

/// One line of a chart: its legend text, CSS class and (x, y) points.
#[derive(Clone)]
struct Series {
    label: String,
    class: &'static str,
    points: Vec<(f64, f64)>,
}

/// A value with a unit, short.
fn short(v: f64, unit: &str) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// Lines sharing one x and one y scale (from 0 up to the largest value, or
/// `y_max`), with ticks at both ends of each axis.
fn lines(
    id: &'static str,
    title: String,
    x_label: &'static str,
    unit: &'static str,
    y_max: Option<f64>,
    series: Vec<Series>,
) -> impl IntoView + use<> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let x_span = if x_hi > x_lo { x_hi - x_lo } else { 1.0 };
    let top = y_max
        .unwrap_or_else(|| all().map(|p| p.1).fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    let x = move |v: f64| PAD + (v - x_lo) / x_span * (W - 2.0 * PAD);
    let y = move |v: f64| H - PAD - (v / top).clamp(0.0, 1.0) * (H - 2.0 * PAD);
    let count = all().count();
    let y_ticks = vec![(y(0.0), short(0.0, unit)), (y(top), short(top, unit))];
    let x_ticks = if count == 0 {
        vec![]
    } else {
        vec![(x(x_lo), short(x_lo, "")), (x(x_hi), short(x_hi, ""))]
    };
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            view! {
                <text x=W - PAD y=PAD - 8.0 - 14.0 * i as f64 text-anchor="end" class=format!("legend {}", s.class)>
                    {s.label.clone()}
                </text>
            }
        })
        .collect_view();
    let marks = series
        .into_iter()
        .map(|s| {
            let pts = s
                .points
                .iter()
                .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
                .collect::<Vec<_>>()
                .join(" ");
            // A single sample shows as a dot.
            let dots = (s.points.len() == 1).then(|| {
                let (a, b) = s.points[0];
                view! { <circle cx=x(a) cy=y(b) r="3" class=s.class/> }
            });
            view! { <polyline class=format!("series {}", s.class) points=pts/> {dots} }
        })
        .collect_view();
    view! {
        <ChartFrame id=id width=W height=H pad=PAD data_points=count
            y_ticks=y_ticks x_ticks=x_ticks title=title x_label=x_label>
            {legend}
            {marks}
        </ChartFrame>
    }
}

/// The worker's samples of the run, charted; a line when there are none.
#[component]
pub fn SystemCharts(samples: ReadSignal<Vec<SystemSample>>) -> impl IntoView {
    move || {
        let v = samples.get();
        let Some(start) = v.first().map(|s| s.at) else {
            return view! { <p class="meta" id="system-none">"No system samples: the worker samples every two seconds while the run trains."</p> }.into_any();
        };
        let t = |s: &SystemSample| (s.at - start) as f64 / 1000.0;
        let cpu = Series {
            label: "CPU, % of one core".into(),
            class: "s0",
            points: v.iter().map(|s| (t(s), s.cpu_percent)).collect(),
        };
        let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
        let memory = Series {
            label: "resident memory".into(),
            class: "s1",
            points: v.iter().map(|s| (t(s), mib(s.rss_bytes))).collect(),
        };
        let gpu: Vec<_> = v.iter().filter_map(|s| Some((t(s), s.gpu_util?))).collect();
        let gpu_memory: Vec<_> = v
            .iter()
            .filter_map(|s| Some((t(s), mib(s.gpu_memory_bytes?))))
            .collect();
        let peak = v.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
        let mean_cpu = v.iter().map(|s| s.cpu_percent).sum::<f64>() / v.len() as f64;
        view! {
            <p class="meta" id="system-summary">{format!(
                "{} samples · CPU {mean_cpu:.0}% of one core on average · peak memory {:.0} MiB",
                v.len(), mib(peak)
            )}</p>
            {lines("cpu-chart", "CPU".into(), "seconds", "%", None, vec![cpu])}
            {lines("memory-chart", "Memory".into(), "seconds", " MiB", None, vec![memory])}
            {(!gpu.is_empty()).then(|| lines("gpu-chart", "GPU utilisation".into(), "seconds", "%", Some(100.0),
                vec![Series { label: "GPU".into(), class: "s2", points: gpu }]))}
            {(!gpu_memory.is_empty()).then(|| lines("gpu-memory-chart", "GPU memory".into(), "seconds", " MiB", None,
                vec![Series { label: "GPU memory".into(), class: "s3", points: gpu_memory }]))}
        }
        .into_any()
    }
}

/// Images per second and the fraction of step time spent waiting for data,
/// against step.
#[component]
pub fn ThroughputCharts(points: ReadSignal<Vec<MetricPoint>>) -> impl IntoView {
    move || {
        let p = points.get();
        if p.is_empty() {
            return ().into_any();
        }
        let speed = Series {
            label: "images/s".into(),
            class: "s0",
            points: p.iter().map(|m| (m.step as f64, m.images_per_sec)).collect(),
        };
        let wait: Vec<_> = p
            .iter()
            .filter_map(|m| Some((m.step as f64, 100.0 * m.data_wait?)))
            .collect();
        view! {
            {lines("throughput-chart", "Throughput".into(), "step", "/s", None, vec![speed])}
            {(!wait.is_empty()).then(|| lines("data-wait-chart", "Waiting for data".into(), "step", "%", Some(100.0),
                vec![Series { label: "% of step time".into(), class: "s1", points: wait }]))}
        }
        .into_any()
    }
}
