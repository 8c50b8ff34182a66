//! The frame the hand-drawn charts share (probes by layer, curves of the
//! audit), and the training loss drawn by `plot`.

use leptos::prelude::*;
use sslab_shared::api::MetricPoint;

use crate::plot::{Plot, PlotSpec, Series};

/// How a chart outlines its plot area.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum Outline {
    /// A box around the plot area; labels in the `label` style, drawn over
    /// the marks.
    #[default]
    Boxed,
    /// Bottom and left axis lines; plain labels, drawn under the marks; the
    /// SVG keeps its natural size.
    Axes,
    /// Nothing: the marks draw their own axes.
    Bare,
}

/// An `svg.chart` with a `width` × `height` viewBox, the plot area's
/// outline, tick labels and titles; the marks are the children. Positions
/// are in viewBox units: each chart keeps its own scales.
#[component]
pub fn ChartFrame(
    /// The DOM id; the browser tests select on it.
    #[prop(into)]
    id: String,
    /// Classes besides `chart`.
    #[prop(optional)]
    class: &'static str,
    /// The viewBox's size.
    width: f64,
    height: f64,
    /// The margin around the plot area.
    pad: f64,
    /// Room kept right of the plot area for a legend.
    #[prop(optional)]
    legend: f64,
    /// How the plot area is outlined; a box unless given.
    #[prop(optional)]
    outline: Outline,
    /// `data-points`, read by the browser tests.
    #[prop(optional, into)]
    data_points: MaybeProp<usize>,
    /// `data-lines`.
    #[prop(optional, into)]
    data_lines: MaybeProp<usize>,
    /// `data-runs`.
    #[prop(optional, into)]
    data_runs: MaybeProp<usize>,
    /// `data-layers`.
    #[prop(optional, into)]
    data_layers: MaybeProp<usize>,
    /// Labels left of the plot area: (y, text).
    #[prop(optional)]
    y_ticks: Vec<(f64, String)>,
    /// Labels under the plot area: (x, text).
    #[prop(optional)]
    x_ticks: Vec<(f64, String)>,
    /// Above the plot area: what the y axis shows.
    #[prop(optional, into)]
    title: Option<TextProp>,
    /// How far the title's baseline sits above the plot area.
    #[prop(default = 8.0)]
    title_gap: f64,
    /// What the x axis shows.
    #[prop(optional, into)]
    x_label: Option<TextProp>,
    /// The plotted marks.
    children: Children,
) -> impl IntoView {
    let axes = outline == Outline::Axes;
    let class = if class.is_empty() {
        "chart".to_string()
    } else {
        format!("chart {class}")
    };
    let frame = match outline {
        Outline::Boxed => view! {
            <rect x=pad y=pad width=width - 2.0 * pad - legend height=height - 2.0 * pad class="frame"/>
        }
        .into_any(),
        Outline::Axes => view! {
            <line class="axis" x1=pad y1=height - pad x2=width - pad y2=height - pad/>
            <line class="axis" x1=pad y1=pad x2=pad y2=height - pad/>
        }
        .into_any(),
        Outline::Bare => ().into_any(),
    };
    let labels = if axes {
        view! {
            {x_label.map(|l| view! { <text x=width / 2.0 y=height - 6.0 text-anchor="middle">{move || l.get()}</text> })}
            {title.map(|t| view! { <text x="4" y=pad - title_gap>{move || t.get()}</text> })}
        }
        .into_any()
    } else {
        view! {
            {title.map(|t| view! { <text x=pad y=pad - title_gap class="label">{move || t.get()}</text> })}
            {x_label.map(|l| view! { <text x=width - pad y=height - 10.0 class="label" text-anchor="end">{move || l.get()}</text> })}
        }
        .into_any()
    };
    let (under, over) = if axes {
        (Some(labels), None)
    } else {
        (None, Some(labels))
    };
    view! {
        <svg id=id class=class viewBox=format!("0 0 {width} {height}")
            width=axes.then_some(width) height=axes.then_some(height)
            data-points=move || data_points.get() data-lines=move || data_lines.get()
            data-runs=move || data_runs.get() data-layers=move || data_layers.get()>
            {frame}
            {y_ticks.into_iter().map(|(y, text)| view! {
                <text x=pad - 6.0 y=y + 4.0 class="label" text-anchor="end">{text}</text>
            }).collect_view()}
            {x_ticks.into_iter().map(|(x, text)| view! {
                <text x=x y=height - pad + 16.0 class="label" text-anchor="middle">{text}</text>
            }).collect_view()}
            {under}
            {children()}
            {over}
        </svg>
    }
}

/// Ticks of an accuracy axis (0, 0.5, 1) and of a layer axis (one per
/// layer, by name), for the charts that plot accuracy against depth.
pub fn accuracy_by_layer_ticks(
    layers: &[String],
    x: impl Fn(usize) -> f64,
    y: impl Fn(f64) -> f64,
) -> (Vec<(f64, String)>, Vec<(f64, String)>) {
    let y_ticks = [0.0, 0.5, 1.0]
        .into_iter()
        .map(|v| (y(v), format!("{v:.1}")))
        .collect();
    let x_ticks = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (x(i), l.clone()))
        .collect();
    (y_ticks, x_ticks)
}

/// Loss against step; the x axis spans the whole run so progress shows.
#[component]
pub fn LossChart(
    /// Metrics received so far, oldest first.
    points: ReadSignal<Vec<MetricPoint>>,
    /// Steps in the whole run.
    #[prop(into)]
    total_steps: Signal<i64>,
) -> impl IntoView {
    let spec = Signal::derive(move || {
        points.with(|pts| {
            let (lo, hi) = pts
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(p.loss), hi.max(p.loss))
                });
            let title = if pts.is_empty() {
                "loss: waiting for the first step".to_string()
            } else {
                format!("loss {hi:.3} … {lo:.3}")
            };
            PlotSpec {
                id: "loss-chart".into(),
                title,
                x_label: "step".into(),
                y_label: "loss".into(),
                series: vec![Series::new(
                    "loss",
                    pts.iter().map(|p| (p.step as f64, p.loss)).collect(),
                )],
                x_span: Some((0.0, total_steps.get().max(1) as f64)),
                smoothing: Some(0.0),
                ..PlotSpec::default()
            }
        })
    });
    view! { <Plot spec=spec/> }
}
