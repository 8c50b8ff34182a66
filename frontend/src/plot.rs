//! Line charts drawn by the `plotters` library: axes with ticks and labels,
//! many series overlaid with a legend, a log y scale, smoothing, a hover
//! read-out, and zoom by dragging across the x axis (double-click resets).

use leptos::prelude::*;
use plotters::prelude::*;

use crate::probes::COLOURS;

/// One line: its legend name and (x, y) points, sorted by x; `spread`,
/// when not empty, is ± one standard deviation per point (error bars).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub spread: Vec<f64>,
}

impl Series {
    pub fn new(name: impl Into<String>, mut points: Vec<(f64, f64)>) -> Self {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Series {
            name: name.into(),
            points,
            spread: Vec::new(),
        }
    }
}

/// What to draw.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotSpec {
    /// The DOM id of the chart's box; the browser tests select on it.
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// When set, x is an index into these labels (a sweep's values).
    pub categories: Option<Vec<String>>,
    /// The x range shown when not zoomed; the data's extent when `None`.
    pub x_span: Option<(f64, f64)>,
    /// Start the linear y axis at zero (utilisation, memory).
    pub y_from_zero: bool,
    /// A fixed top of the y axis (100 for percentages).
    pub y_max: Option<f64>,
    /// The default smoothing weight; `None` offers no smoothing.
    pub smoothing: Option<f64>,
    /// Dots at each point (sparse series).
    pub marks: bool,
    pub width: u32,
    pub height: u32,
}

impl Default for PlotSpec {
    fn default() -> Self {
        PlotSpec {
            id: String::new(),
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: Vec::new(),
            categories: None,
            x_span: None,
            y_from_zero: false,
            y_max: None,
            smoothing: None,
            marks: false,
            width: 640,
            height: 240,
        }
    }
}

impl PlotSpec {
    fn point_count(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }
}

/// How the reader has set the chart up.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ViewState {
    pub log_y: bool,
    /// Exponential moving-average weight in [0, 1).
    pub smoothing: f64,
    pub zoom: Option<(f64, f64)>,
}

/// Where the plot area landed in the SVG, for mapping the mouse to data.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Frame {
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
    pub x_lo: f64,
    pub x_hi: f64,
}

impl Frame {
    /// The data x under an SVG x pixel, clamped to the plot area.
    pub fn data_x(&self, px: f64) -> f64 {
        let t = ((px - self.left) / (self.right - self.left).max(1.0)).clamp(0.0, 1.0);
        self.x_lo + t * (self.x_hi - self.x_lo)
    }
}

/// A debiased exponential moving average (TensorBoard's smoothing): the
/// first points are not pulled towards zero.
pub fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    if weight <= 0.0 {
        return points.to_vec();
    }
    let mut last = 0.0;
    let mut n = 0;
    points
        .iter()
        .map(|&(x, y)| {
            if !y.is_finite() {
                return (x, y);
            }
            n += 1;
            last = last * weight + (1.0 - weight) * y;
            (x, last / (1.0 - weight.powi(n)))
        })
        .collect()
}

/// The index of the point nearest to `x` (points sorted by x).
pub fn nearest(points: &[(f64, f64)], x: f64) -> Option<usize> {
    if points.is_empty() {
        return None;
    }
    let i = points.partition_point(|p| p.0 < x);
    if i == 0 {
        return Some(0);
    }
    if i == points.len() {
        return Some(i - 1);
    }
    Some(if x - points[i - 1].0 <= points[i].0 - x {
        i - 1
    } else {
        i
    })
}

/// A number short enough for a tick or a read-out, without trailing zeros.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.2e}");
    }
    let text = if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    };
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A tick's label: values within rounding error of zero read as zero.
fn tick(v: f64, span: f64) -> String {
    if v.abs() < span.abs() * 1e-9 {
        "0".into()
    } else {
        short(v)
    }
}

/// The x range drawn: the zoom, else the spec's span, else the data's.
fn x_range(spec: &PlotSpec, view: &ViewState) -> (f64, f64) {
    if let Some(z) = view.zoom {
        return z;
    }
    if let Some(cats) = &spec.categories {
        return (-0.5, cats.len().max(1) as f64 - 0.5);
    }
    let (lo, hi) = spec
        .series
        .iter()
        .flat_map(|s| &s.points)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (lo, hi) = match spec.x_span {
        Some((a, b)) => (a.min(lo), b.max(hi)),
        None => (lo, hi),
    };
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

/// A value as the y axis places it: its log10 on a log scale, where only
/// positive values have a place.
fn y_of(v: f64, log: bool) -> Option<f64> {
    match (log, v.is_finite()) {
        (_, false) => None,
        (true, _) if v <= 0.0 => None,
        (true, _) => Some(v.log10()),
        (false, _) => Some(v),
    }
}

/// The y range, in axis units (log10 on a log scale), that holds every
/// shown value (and spread) within `x`.
pub fn y_range(spec: &PlotSpec, shown: &[Vec<(f64, f64)>], x: (f64, f64), log: bool) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for (s, pts) in spec.series.iter().zip(shown) {
        for (i, &(px, py)) in pts.iter().enumerate() {
            if px < x.0 || px > x.1 {
                continue;
            }
            let e = s.spread.get(i).copied().unwrap_or(0.0);
            for v in [py - e, py + e].into_iter().filter_map(|v| y_of(v, log)) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if !log {
        if spec.y_from_zero {
            lo = lo.min(0.0);
        }
        if let Some(top) = spec.y_max {
            hi = hi.max(top);
        }
    }
    let pad = if hi > lo { (hi - lo) * 0.06 } else { 0.5 };
    let keep_lo = !log && spec.y_from_zero && lo >= 0.0;
    let keep_hi = !log && spec.y_max.is_some_and(|t| t >= hi);
    (
        if keep_lo { lo } else { lo - pad },
        if keep_hi { hi } else { hi + pad },
    )
}

fn colour(k: usize) -> RGBColor {
    let hex = COLOURS[k % COLOURS.len()].trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
    RGBColor(byte(0), byte(2), byte(4))
}

/// Draw the chart as an SVG document; returns it and the plot area.
pub fn render(spec: &PlotSpec, view: &ViewState) -> Result<(String, Frame), String> {
    let err = |e: &dyn std::fmt::Display| format!("chart: {e}");
    let shown: Vec<Vec<(f64, f64)>> = spec
        .series
        .iter()
        .map(|s| smooth(&s.points, view.smoothing))
        .collect();
    let x = x_range(spec, view);
    let log = view.log_y;
    let (y_lo, y_hi) = y_range(spec, &shown, x, log);
    let cats = spec.categories.clone().unwrap_or_default();
    let x_format = |v: &f64| -> String {
        if spec.categories.is_some() {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                return cats.get(i as usize).cloned().unwrap_or_default();
            }
            return String::new();
        }
        tick(*v, x.1 - x.0)
    };
    // On a log scale the axis runs over log10 of the values; its ticks
    // read as the values themselves.
    let y_format = |v: &f64| {
        if log {
            short(10f64.powf(*v))
        } else {
            tick(*v, y_hi - y_lo)
        }
    };
    let x_labels = if spec.categories.is_some() {
        cats.len() + 1
    } else {
        8
    };
    // The points inside the x range, in axis units.
    let placed = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter()
            .filter(|p| p.0 >= x.0 && p.0 <= x.1)
            .filter_map(|&(px, py)| Some((px, y_of(py, log)?)))
            .collect()
    };
    let mut svg = String::new();
    let frame;
    {
        let root = SVGBackend::with_string(&mut svg, (spec.width, spec.height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(62)
            .build_cartesian_2d(x.0..x.1, y_lo..y_hi)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(spec.x_label.as_str())
            .y_desc(if log {
                format!("{} (log scale)", spec.y_label)
            } else {
                spec.y_label.clone()
            })
            .x_labels(x_labels)
            .y_labels(6)
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .light_line_style(RGBColor(238, 240, 243))
            .bold_line_style(RGBColor(222, 226, 230))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| err(&e))?;
        for (k, (s, pts)) in spec.series.iter().zip(&shown).enumerate() {
            let c = colour(k);
            if view.smoothing > 0.0 {
                chart
                    .draw_series(LineSeries::new(placed(&s.points), c.mix(0.25)))
                    .map_err(|e| err(&e))?;
            }
            let line = placed(pts);
            chart
                .draw_series(LineSeries::new(line.iter().copied(), c.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(s.name.as_str())
                .legend(move |(a, b)| {
                    PathElement::new(vec![(a, b), (a + 16, b)], c.stroke_width(2))
                });
            if spec.marks || pts.len() == 1 {
                chart
                    .draw_series(line.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(|e| err(&e))?;
            }
            let bars = pts.iter().zip(&s.spread).filter_map(|(&(px, py), &e)| {
                let inside = px >= x.0 && px <= x.1;
                let (lo, mid, hi) = (y_of(py - e, log)?, y_of(py, log)?, y_of(py + e, log)?);
                inside.then(|| ErrorBar::new_vertical(px, lo, mid, hi, c.stroke_width(1), 8))
            });
            chart.draw_series(bars).map_err(|e| err(&e))?;
        }
        if spec.series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.7))
                .border_style(RGBColor(200, 205, 210))
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(|e| err(&e))?;
        }
        let (px, py) = chart.plotting_area().get_pixel_range();
        frame = Frame {
            left: px.start as f64,
            right: px.end as f64,
            top: py.start as f64,
            bottom: py.end as f64,
            x_lo: x.0,
            x_hi: x.1,
        };
        root.present().map_err(|e| err(&e))?;
    }
    Ok((svg, frame))
}

/// The read-out under the mouse: x, then each series' value nearest to it
/// (and its smoothed value when smoothing is on).
pub fn readout(spec: &PlotSpec, x: f64, smoothing: f64) -> String {
    // The x of the nearest point, not of the mouse.
    let x = spec
        .series
        .iter()
        .find_map(|s| nearest(&s.points, x).map(|i| s.points[i].0))
        .unwrap_or(x);
    let x_text = match &spec.categories {
        Some(c) => c
            .get(x.round().max(0.0) as usize)
            .cloned()
            .unwrap_or_default(),
        None => short(x),
    };
    let mut parts = vec![format!("{} {x_text}", spec.x_label)];
    for s in &spec.series {
        let Some(i) = nearest(&s.points, x) else {
            continue;
        };
        let mut text = format!("{} {}", s.name, short(s.points[i].1));
        if let Some(e) = s.spread.get(i) {
            text.push_str(&format!(" ± {}", short(*e)));
        }
        if smoothing > 0.0 {
            let smoothed = smooth(&s.points[..=i], smoothing);
            text.push_str(&format!(" (smoothed {})", short(smoothed[i].1)));
        }
        parts.push(text);
    }
    parts.join(" · ")
}

/// The mouse's x in SVG pixels over the chart's box.
fn mouse_x(
    ev: &leptos::ev::MouseEvent,
    area: NodeRef<leptos::html::Div>,
    width: u32,
) -> Option<f64> {
    let el = area.get_untracked()?;
    let rect = el.get_bounding_client_rect();
    let scale = if rect.width() > 0.0 {
        width as f64 / rect.width()
    } else {
        1.0
    };
    Some((ev.client_x() as f64 - rect.left()) * scale)
}

/// A chart with its controls: log y, smoothing (where offered), reset zoom.
#[component]
pub fn Plot(#[prop(into)] spec: Signal<PlotSpec>) -> impl IntoView {
    let initial = spec.get_untracked();
    let log_y = RwSignal::new(false);
    let smoothing = RwSignal::new(initial.smoothing.unwrap_or(0.0));
    let zoom = RwSignal::new(None::<(f64, f64)>);
    let hover = RwSignal::new(None::<f64>);
    let drag = RwSignal::new(None::<(f64, f64)>);
    let view_state = move || ViewState {
        log_y: log_y.get(),
        smoothing: smoothing.get(),
        zoom: zoom.get(),
    };
    let drawn = Memo::new(move |_| spec.with(|s| render(s, &view_state())));
    let frame = move || drawn.with(|d| d.as_ref().map(|(_, f)| *f).unwrap_or_default());
    let width = initial.width;
    let area = NodeRef::<leptos::html::Div>::new();
    let on_down = move |ev: leptos::ev::MouseEvent| {
        if let Some(px) = mouse_x(&ev, area, width) {
            ev.prevent_default();
            drag.set(Some((px, px)));
        }
    };
    let on_move = move |ev: leptos::ev::MouseEvent| {
        let Some(px) = mouse_x(&ev, area, width) else {
            return;
        };
        hover.set(Some(px));
        if let Some((a, _)) = drag.get_untracked() {
            drag.set(Some((a, px)));
        }
    };
    let on_up = move |ev: leptos::ev::MouseEvent| {
        let Some((a, _)) = drag.get_untracked() else {
            return;
        };
        drag.set(None);
        let b = mouse_x(&ev, area, width).unwrap_or(a);
        if (b - a).abs() > 4.0 {
            let f = frame();
            let (lo, hi) = (f.data_x(a.min(b)), f.data_x(a.max(b)));
            if hi > lo {
                zoom.set(Some((lo, hi)));
            }
        }
    };
    let on_leave = move |_| {
        hover.set(None);
        drag.set(None);
    };
    let text = move || {
        let px = hover.get()?;
        let x = frame().data_x(px);
        spec.with(|s| (s.point_count() > 0).then(|| readout(s, x, smoothing.get())))
    };
    let cursor = move || {
        let f = frame();
        let px = hover.get()?;
        (px >= f.left && px <= f.right).then(|| {
            view! { <div class="plot-cursor" style:left=format!("{px}px") style:top=format!("{}px", f.top)
                style:height=format!("{}px", f.bottom - f.top)></div> }
        })
    };
    let selection = move || {
        let (a, b) = drag.get()?;
        let f = frame();
        Some(
            view! { <div class="plot-select" style:left=format!("{}px", a.min(b)) style:width=format!("{}px", (a - b).abs())
            style:top=format!("{}px", f.top) style:height=format!("{}px", f.bottom - f.top)></div> },
        )
    };
    let id = initial.id.clone();
    let offers_smoothing = initial.smoothing.is_some();
    let data_table = move || {
        spec.with(|s| {
            let cats = s.categories.clone()?;
            let rows = s
                .series
                .iter()
                .flat_map(|ser| {
                    let cats = cats.clone();
                    ser.points.iter().enumerate().map(move |(i, &(x, y))| {
                        let label = cats.get(x.round().max(0.0) as usize).cloned().unwrap_or_default();
                        let spread = ser.spread.get(i).map(|e| short(*e)).unwrap_or_default();
                        view! {
                            <tr data-series=ser.name.clone() data-x=label.clone() data-y=y.to_string()>
                                <td>{ser.name.clone()}</td><td>{label.clone()}</td><td>{short(y)}</td><td>{spread}</td>
                            </tr>
                        }
                    })
                })
                .collect_view();
            Some(view! {
                <details class="chart-data">
                    <summary>"Data"</summary>
                    <table><thead><tr><th>"series"</th><th>{s.x_label.clone()}</th><th>{s.y_label.clone()}</th><th>"±"</th></tr></thead>
                    <tbody>{rows}</tbody></table>
                </details>
            })
        })
    };
    view! {
        <div class="plot" id=id
            data-points=move || spec.with(|s| s.point_count())
            data-lines=move || spec.with(|s| s.series.len())
            data-log=move || log_y.get().to_string()
            data-x-range=move || { let f = frame(); format!("{},{}", f.x_lo, f.x_hi) }>
            <div class="plot-head">
                <span class="plot-title">{move || spec.with(|s| s.title.clone())}</span>
                <label class="plot-control"><input type="checkbox" class="plot-log"
                    prop:checked=move || log_y.get()
                    on:change=move |ev| log_y.set(event_target_checked(&ev))/>" log y"</label>
                {offers_smoothing.then(|| view! {
                    <label class="plot-control">"smoothing "
                        <input type="range" class="plot-smoothing" min="0" max="0.99" step="0.01"
                            prop:value=move || smoothing.get().to_string()
                            on:input=move |ev| smoothing.set(event_target_value(&ev).parse().unwrap_or(0.0))/>
                        <span class="meta">{move || format!(" {:.2}", smoothing.get())}</span>
                    </label>
                })}
                {move || zoom.get().is_some().then(|| view! {
                    <button type="button" class="plot-reset secondary" on:click=move |_| zoom.set(None)>"Reset zoom"</button>
                })}
            </div>
            <div class="plot-area" node_ref=area on:mousedown=on_down on:mousemove=on_move on:mouseup=on_up
                on:mouseleave=on_leave on:dblclick=move |_| zoom.set(None)>
                <div class="plot-svg" inner_html=move || drawn.with(|d| match d {
                    Ok((svg, _)) => svg.clone(),
                    Err(e) => format!("<p class=\"error\">{e}</p>"),
                })></div>
                {cursor}
                {selection}
            </div>
            <div class="plot-readout meta">{move || text().unwrap_or_else(|| "\u{a0}".into())}</div>
            {data_table}
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_debiased_and_off_at_zero() {
        let pts = vec![(0.0, 4.0), (1.0, 4.0), (2.0, 4.0)];
        assert_eq!(smooth(&pts, 0.0), pts);
        // A constant stays constant: no pull towards zero at the start.
        for (_, y) in smooth(&pts, 0.9) {
            assert!((y - 4.0).abs() < 1e-9);
        }
        let s = smooth(&[(0.0, 0.0), (1.0, 10.0)], 0.5);
        // (0.5·0 + 0.5·10) / (1 − 0.25)
        assert!((s[1].1 - 5.0 / 0.75).abs() < 1e-9);
    }

    #[test]
    fn nearest_point_by_x() {
        let pts = vec![(0.0, 1.0), (10.0, 2.0), (20.0, 3.0)];
        assert_eq!(nearest(&pts, -5.0), Some(0));
        assert_eq!(nearest(&pts, 4.0), Some(0));
        assert_eq!(nearest(&pts, 6.0), Some(1));
        assert_eq!(nearest(&pts, 99.0), Some(2));
        assert_eq!(nearest(&[], 1.0), None);
    }

    fn two_lines() -> PlotSpec {
        PlotSpec {
            series: vec![
                Series::new("a", vec![(0.0, 2.0), (1.0, 1.0), (2.0, 0.5)]),
                Series::new("b", vec![(0.0, 3.0), (1.0, -1.0), (2.0, 0.25)]),
            ],
            x_label: "step".into(),
            ..PlotSpec::default()
        }
    }

    #[test]
    fn renders_one_line_per_series_and_a_frame_inside_the_svg() {
        let spec = two_lines();
        let (svg, frame) = render(&spec, &ViewState::default()).unwrap();
        // Each series: its line and its legend mark, in its own colour.
        for c in ["#2457C5", "#C0392B"] {
            assert_eq!(svg.matches(&format!("stroke=\"{c}\"")).count(), 2, "{c}");
        }
        assert!(frame.left > 0.0 && frame.right <= spec.width as f64 && frame.right > frame.left);
        assert_eq!((frame.x_lo, frame.x_hi), (0.0, 2.0));
        // Smoothing adds the faint raw line under each smoothed one.
        let (smoothed, _) = render(
            &spec,
            &ViewState {
                smoothing: 0.5,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(smoothed.matches("stroke=\"#2457C5\"").count(), 3);
    }

    #[test]
    fn log_scale_keeps_positive_values_and_zoom_narrows_x() {
        let spec = two_lines();
        let shown: Vec<_> = spec.series.iter().map(|s| s.points.clone()).collect();
        // In log10 units, from below 0.25 to above 3; -1 has no place.
        let (lo, hi) = y_range(&spec, &shown, (0.0, 2.0), true);
        assert!(
            lo < 0.25f64.log10() && lo > -1.0 && hi > 3f64.log10() && hi < 1.0,
            "{lo} {hi}"
        );
        let view = ViewState {
            log_y: true,
            zoom: Some((0.5, 1.5)),
            ..Default::default()
        };
        let (_, frame) = render(&spec, &view).unwrap();
        assert_eq!((frame.x_lo, frame.x_hi), (0.5, 1.5));
        // A narrow range on a log scale still gets its y ticks.
        let narrow = PlotSpec {
            series: vec![Series::new("loss", vec![(0.0, 3.2), (1.0, 2.4)])],
            ..PlotSpec::default()
        };
        let (svg, _) = render(
            &narrow,
            &ViewState {
                log_y: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(svg.matches("text-anchor=\"end\"").count() >= 3, "{svg}");
        assert_eq!(
            (frame.data_x(frame.left), frame.data_x(frame.right)),
            (0.5, 1.5)
        );
        // Only values inside the zoom decide the y range.
        let (lo, hi) = y_range(&spec, &shown, (0.5, 1.5), false);
        assert!(lo < -1.0 && hi > 1.0 && hi < 2.0);
    }

    #[test]
    fn readout_names_every_series_and_categories() {
        let mut spec = two_lines();
        assert_eq!(readout(&spec, 0.9, 0.0), "step 1 · a 1 · b -1");
        spec.categories = Some(vec!["64".into(), "128".into(), "256".into()]);
        spec.series[0].spread = vec![0.1, 0.2, 0.3];
        assert!(readout(&spec, 2.2, 0.0).starts_with("step 256 · a 0.5 ± 0.3"));
        assert_eq!(
            (short(3.2), short(-0.4), short(1200.0), short(2e-5)),
            ("3.2".into(), "-0.4".into(), "1200".into(), "2.00e-5".into())
        );
        assert_eq!(tick(-5.55e-17, 1.0), "0");
    }
}
