//! Déjà vu audits: the list with a form that starts one, and an audit's
//! page: progress, the target-versus-reference curves, the four-way counts,
//! the per-class gaps, a gallery of the most memorized images with their
//! crop and nearest public neighbours, and what each model draws from the
//! crops when the audit asked for reconstructions.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use leptos_router::hooks::use_params_map;
use sslab_shared::api::{Audit, RunStatus};
use sslab_shared::audit::{AuditReport, AuditSpec, Example, Reconstruction, SnapshotReport};

use super::{every_two_seconds, status_class, time_text};
use crate::api;
use crate::chart::{ChartFrame, Outline};
use crate::confirm::DeleteButton;
use crate::labels::{Labels, LabelsEditor, ListFilter, ListFilterBar, label_chips};

/// Matches the server's gallery size.
const GALLERY: usize = 12;

fn progress_text(a: &Audit) -> String {
    match a.status {
        RunStatus::Running if a.total_steps > 0 => {
            let (doing, which) = match a.stage.as_str() {
                "target" => ("training", "target (A)"),
                "decoder-a" => ("training the decoder of", "target (A)"),
                "decoder-b" => ("training the decoder of", "reference (B)"),
                _ => ("training", "reference (B)"),
            };
            format!("{doing} the {which}: step {} of {}", a.step, a.total_steps)
        }
        RunStatus::Running => "preparing the split".into(),
        s => s.as_str().into(),
    }
}

/// A small audit of the built-in scenes, to edit before starting.
fn starter_spec() -> String {
    let mut spec = AuditSpec::default();
    spec.name = "scenes-audit".into();
    spec.run.backbone.kind = sslab_shared::spec::BackboneKind::TinyCnn;
    spec.run.backbone.width = 16;
    spec.run.projector.dims = "128-64".parse().expect("widths");
    spec.run.optimizer.batch_size = 32;
    spec.run.schedule.epochs = 20;
    spec.split.per_class = 20;
    spec.attack.k = 20;
    // Backgrounds of their own, as in recipes/dejavu-tiny.toml: something to
    // memorize.
    if let sslab_shared::spec::DataSpec::Scenes(scenes) = &mut spec.run.data {
        scenes.background_signature = 0.5;
    }
    serde_json::to_string_pretty(&spec).unwrap_or_default()
}

#[component]
pub fn AuditsPage() -> impl IntoView {
    let (tick, set_tick) = signal(0u32);
    every_two_seconds(move || set_tick.update(|t| *t += 1));
    let filter = ListFilter::from_url();
    let audits = LocalResource::new(move || {
        tick.track();
        let url = format!("/audits?{}", filter.query().trim_start_matches('&'));
        async move { api::get::<Vec<Audit>>(&url).await }
    });
    let (text, set_text) = signal(starter_spec());
    let (error, set_error) = signal(None::<String>);
    let navigate = leptos_router::hooks::use_navigate();
    let start = move |_| {
        let body = text.get_untracked();
        let navigate = navigate.clone();
        // Into the project the list shows.
        let url = match filter.project.get_untracked() {
            p if p.is_empty() => "/audits".to_string(),
            p => format!("/audits?project={}", api::query_value(&p)),
        };
        spawn_local(async move {
            let spec: Result<serde_json::Value, _> = serde_json::from_str(&body);
            let result = match spec {
                Ok(v) => api::post::<Audit>(&url, Some(&v)).await,
                Err(e) => Err(api::ApiFailure {
                    message: format!("not JSON: {e}"),
                    field: None,
                }),
            };
            match result {
                Ok(a) => navigate(&format!("/audits/{}", a.id), Default::default()),
                Err(e) => set_error.set(Some(match e.field {
                    Some(f) => format!("{f}: {}", e.message),
                    None => e.message,
                })),
            }
        });
    };
    view! {
        <div class="bar"><h1>"Audits"</h1></div>
        <p class="hint">"A déjà vu audit trains the same spec on two disjoint sets A and B, then guesses each training image's object from a crop of its background alone: what the model trained on the image (target) guesses beyond what the other (reference) does is memorized."</p>
        <details class="new-audit">
            <summary>"New audit"</summary>
            <textarea id="audit-spec" rows="16" prop:value=text
                on:input=move |ev| set_text.set(event_target_value(&ev))></textarea>
            <button id="start-audit" on:click=start>{move || match filter.project.get() {
                p if p.is_empty() => "Start audit".to_string(),
                p => format!("Start audit in {p}"),
            }}</button>
            {move || error.get().map(|e| view! { <p class="error" id="audit-error">{e}</p> })}
        </details>
        <ListFilterBar filter=filter/>
        <Transition fallback=|| view! { <p>"Loading audits…"</p> }>
            {move || audits.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(list) if list.is_empty() => view! { <p class="empty">"No audits yet."</p> }.into_any(),
                Ok(list) => view! {
                    <table id="audits-table">
                        <thead><tr><th>"Audit"</th><th>"Status"</th><th>"Progress"</th><th>"Created"</th></tr></thead>
                        <tbody>
                            {list.into_iter().map(|a| {
                                let progress = progress_text(&a);
                                view! {
                                    <tr data-audit=a.id.clone()>
                                        <td><A href=format!("/audits/{}", a.id)>{a.name.clone()}</A>
                                            " "{label_chips(&a.tags, a.archived)}</td>
                                        <td><span class=status_class(a.status)>{a.status.as_str()}</span></td>
                                        <td>{progress}</td>
                                        <td>{time_text(a.created_at)}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
    }
}

#[component]
pub fn AuditPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").unwrap_or_default();
    let (audit, set_audit) = signal(None::<Audit>);
    let (report, set_report) = signal(None::<AuditReport>);
    let (error, set_error) = signal(None::<String>);
    let poll = move || {
        let id = id();
        spawn_local(async move {
            if report.get_untracked().is_some() {
                return;
            }
            match api::get::<Audit>(&format!("/audits/{id}")).await {
                Ok(a) => {
                    let done = a.status == RunStatus::Succeeded;
                    set_audit.set(Some(a));
                    if done {
                        match api::get::<AuditReport>(&format!("/audits/{id}/report")).await {
                            Ok(r) => set_report.set(Some(r)),
                            Err(e) => set_error.set(Some(e.message)),
                        }
                    }
                }
                Err(e) => set_error.set(Some(e.message)),
            }
        });
    };
    poll();
    every_two_seconds(poll);
    let has_audit = Memo::new(move |_| audit.with(Option::is_some));
    view! {
        {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
        {move || audit.get().map(|a| view! {
            <div class="bar">
                <h1>{a.name.clone()}</h1>
                <span class=status_class(a.status) id="audit-status">{a.status.as_str()}</span>
                {a.status.is_terminal().then(|| view! {
                    <DeleteButton id="delete-audit".to_string() path=format!("/audits/{}", a.id)
                        what="this audit, its report and images".to_string()
                        after="/audits".to_string()/>
                })}
            </div>
            <p id="audit-progress">{progress_text(&a)}</p>
            {a.error.clone().map(|e| view! { <p class="error">{e}</p> })}
        })}
        {move || has_audit.get().then(|| view! {
            <LabelsEditor path=format!("/audits/{}", id()) list="/audits"
                current=Signal::derive(move || audit.with(|a| a.as_ref()
                    .map(|a| Labels::new(&a.project, &a.tags, &a.note, a.archived)).unwrap_or_default()))
                on_saved=Callback::new(move |a: Audit| set_audit.set(Some(a)))/>
        })}
        {move || report.get().map(|r| {
            let id = id();
            view! { <Report report=r id=id/> }
        })}
    }
}

#[component]
fn Report(report: AuditReport, id: String) -> impl IntoView {
    let s = &report.split;
    let last = report.snapshots.last().cloned();
    let skipped = s
        .skipped
        .iter()
        .map(|(why, n)| format!("{n} × {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    let gallery: Vec<Example> = report.memorized(GALLERY).into_iter().cloned().collect();
    let side = report.spec.run.data.image_size().max(1);
    let names = report.class_names.clone();
    view! {
        <section>
            <h2>"Split"</h2>
            <p id="audit-split">{format!(
                "A-only {} (attacked {}), B-only {} (attacked {}), shared {}, public {}",
                s.a_only, s.attacked_a, s.b_only, s.attacked_b, s.shared, s.public
            )}</p>
            {(!skipped.is_empty()).then(|| view! { <p>"Not attacked: "{skipped}</p> })}
            {s.warnings.iter().map(|w| view! { <p class="warning">{w.clone()}</p> }).collect_view()}
            <a class="button" href=format!("/api/v1/audits/{id}/examples.csv")>"Per-image rows (CSV)"</a>
            " "
            <a class="button" href=format!("/api/v1/audits/{id}/report")>"Report (JSON)"</a>
        </section>
        <section>
            <h2>"Accuracy of the most confident guesses"</h2>
            <p class="hint">"Top-1 from the background crop alone, over the most confident fraction of each model's guesses. The target trained on the image; the reference did not — the gap is memorization."</p>
            <CurveChart snapshots=report.snapshots.clone()/>
            <table id="audit-snapshots">
                <thead><tr><th>"Epoch"</th><th>"Target top-1"</th><th>"Reference top-1"</th>
                    <th>"Most confident 20 %"</th><th>"Full-image kNN"</th></tr></thead>
                <tbody>
                    {report.snapshots.iter().map(|snap| {
                        let at = |f: f64| snap.curve.iter().find(|p| (p.fraction - f).abs() < 1e-9).cloned();
                        let (all, top) = (at(1.0), at(0.2));
                        view! { <tr>
                            <td>{snap.epoch}</td>
                            <td>{all.as_ref().map(|p| format!("{:.3}", p.target_top1))}</td>
                            <td>{all.as_ref().map(|p| format!("{:.3}", p.reference_top1))}</td>
                            <td>{top.map(|p| format!("{:.3} vs {:.3}", p.target_top1, p.reference_top1))}</td>
                            <td>{format!("{:.3} / {:.3}", snap.knn_target, snap.knn_reference)}</td>
                        </tr> }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
        {last.map(|snap| view! {
            <section>
                <h2>"Every attacked image, at epoch "{snap.epoch}</h2>
                <table id="audit-four-way"><tbody>
                    <tr><th>"memorized"</th><td>{snap.four_way.memorized}</td><td>"only the target guesses it"</td></tr>
                    <tr><th>"correlated"</th><td>{snap.four_way.correlated}</td><td>"both guess it: the background tells"</td></tr>
                    <tr><th>"forgotten"</th><td>{snap.four_way.forgotten}</td><td>"only the reference guesses it"</td></tr>
                    <tr><th>"unassociated"</th><td>{snap.four_way.unassociated}</td><td>"neither"</td></tr>
                </tbody></table>
                <h2>"By class"</h2>
                <table id="audit-classes">
                    <thead><tr><th>"Class"</th><th>"Images"</th><th>"Target"</th><th>"Reference"</th><th>"Gap"</th></tr></thead>
                    <tbody>
                        {snap.per_class.iter().map(|c| view! { <tr>
                            <td>{c.name.clone()}</td><td>{c.images}</td>
                            <td>{format!("{:.3}", c.target_top1)}</td>
                            <td>{format!("{:.3}", c.reference_top1)}</td>
                            <td>{format!("{:+.3}", c.target_top1 - c.reference_top1)}</td>
                        </tr> }).collect_view()}
                    </tbody>
                </table>
            </section>
        })}
        <section>
            <h2>"Most memorized"</h2>
            {if gallery.is_empty() {
                view! { <p class="empty">"No image was guessed by the target alone."</p> }.into_any()
            } else {
                view! {
                    <div class="gallery" id="audit-gallery">
                        {gallery.into_iter().map(|e| view! { <GalleryItem example=e id=id.clone() names=names.clone() side=side/> }).collect_view()}
                    </div>
                }.into_any()
            }}
        </section>
        {report.reconstruction.clone().map(|r| view! { <Reconstructions r=r id=id.clone() names=names.clone()/> })}
    }
}

/// What each model draws from a crop alone: the grid and how often the
/// drawings show the true class.
#[component]
fn Reconstructions(r: Reconstruction, id: String, names: Vec<String>) -> impl IntoView {
    let pair = |t: Option<f64>, f: Option<f64>| match (t, f) {
        (Some(t), Some(f)) => format!("{t:.3} vs {f:.3} ({:+.3})", t - f),
        _ => "no memorized image".into(),
    };
    let rows = r
        .rows
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let class = names
                .get(x.label as usize)
                .cloned()
                .unwrap_or_else(|| x.label.to_string());
            view! { <li>{format!("row {}: image {} · {class} · set {} · {}", i + 1, x.image, x.set, x.outcome)}</li> }
        })
        .collect_view();
    view! {
        <section>
            <h2>"Drawn from the crop alone"</h2>
            <p class="hint">{format!(
                "A {} decoder per model learnt the {} public images from the {} representation ({} dimensions); each attacked image's background crop was then drawn by the model that trained on the image (target) and by the other (reference). A drawing's class is read by both models' full-image kNN on the public set.",
                r.kind.as_str(), r.public_images, r.layer, r.dim
            )}</p>
            <table id="audit-reconstruction-figures"><tbody>
                <tr><th>"Drawings showing the true class, target vs reference"</th>
                    <td>{pair(Some(r.target_top1), Some(r.reference_top1))}</td></tr>
                <tr><th>"… on the memorized images"</th>
                    <td>{pair(r.memorized_target_top1, r.memorized_reference_top1)}</td></tr>
                <tr><th>"Drawn by the target from the whole image (control)"</th>
                    <td>{format!("{:.3}", r.whole_image_top1)}</td></tr>
                <tr><th>"chance"</th><td>{format!("{:.3}", r.chance)}</td></tr>
            </tbody></table>
            <p class="legend">"Each row: the crop, the image, the target's drawings, then the reference's."</p>
            <img id="audit-reconstruction" class="reconstruction" src=format!("/api/v1/audits/{id}/reconstruction.png")
                alt="drawings of the attacked images from their crops"/>
            <ol class="hint">{rows}</ol>
        </section>
    }
}

/// One memorized image: the crop drawn on it, both guesses, the target's
/// nearest public images.
#[component]
fn GalleryItem(example: Example, id: String, names: Vec<String>, side: usize) -> impl IntoView {
    let name = |c: Option<&u32>| {
        c.map(|&c| {
            names
                .get(c as usize)
                .cloned()
                .unwrap_or_else(|| c.to_string())
        })
        .unwrap_or_else(|| "—".into())
    };
    let [x0, y0, x1, y1] = example.crop;
    let src = |i: usize| format!("/api/v1/audits/{id}/images/{i}.png");
    view! {
        <figure class="memorized" data-image=example.image.to_string()>
            <div class="framed">
                <img class="audited" src=src(example.image) alt=format!("image {}", example.image)/>
                // The crop in the image's own pixels; the box scales with it.
                <svg class="crop" viewBox=format!("0 0 {side} {side}") preserveAspectRatio="none">
                    <rect x=x0.to_string() y=y0.to_string() width=(x1 - x0).to_string() height=(y1 - y0).to_string()/>
                </svg>
            </div>
            <figcaption>
                {format!("{} · set {}", name(Some(&example.label)), example.set)}<br/>
                {format!("target: {} · reference: {}", name(example.target.top5.first()), name(example.reference.top5.first()))}
            </figcaption>
            <div class="neighbours">
                {example.target.neighbours.iter().map(|&n| view! { <img class="neighbour" src=src(n) alt="public neighbour"/> }).collect_view()}
            </div>
        </figure>
    }
}

/// Target and reference top-1 against the confident fraction, one pair of
/// lines per snapshot (the latest darkest).
#[component]
fn CurveChart(snapshots: Vec<SnapshotReport>) -> impl IntoView {
    let (w, h, pad) = (520.0, 260.0, 36.0);
    let top = snapshots
        .iter()
        .flat_map(|s| {
            s.curve
                .iter()
                .flat_map(|p| [p.target_top1, p.reference_top1])
        })
        .fold(0.1f64, f64::max)
        .min(1.0);
    let x = move |f: f64| pad + f * (w - 2.0 * pad);
    let y = move |v: f64| h - pad - v / top * (h - 2.0 * pad);
    let n = snapshots.len();
    let points: usize = snapshots.iter().map(|s| s.curve.len() * 2).sum();
    let lines = snapshots
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let opacity = 0.35 + 0.65 * (k + 1) as f64 / n as f64;
            let path = |f: fn(&sslab_shared::audit::CurvePoint) -> f64| {
                s.curve
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", x(p.fraction), y(f(p))))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            view! {
                <g class="snapshot" data-epoch=s.epoch.to_string() opacity=opacity.to_string()>
                    <polyline class="target" points=path(|p| p.target_top1)/>
                    <polyline class="reference" points=path(|p| p.reference_top1)/>
                </g>
            }
        })
        .collect_view();
    view! {
        <ChartFrame id="audit-curve" width=w height=h pad=pad outline=Outline::Axes
            data_points=points x_label="most confident fraction"
            title=format!("top-1 (axis to {top:.2})") title_gap=10.0>
            {lines}
        </ChartFrame>
        <p class="legend"><span class="swatch target"></span>"target "<span class="swatch reference"></span>"reference (darker: later epoch)"</p>
    }
}
