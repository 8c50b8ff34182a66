//! Launch a sweep from a run (`?from=<run id>`) or from the defaults, with a
//! preset (`?preset=projector_dim|last_block_width|epochs`) whose value
//! list can be edited before launch.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::{use_navigate, use_query_map};
use serde_json::Value;
use sslab_shared::RunSpec;
use sslab_shared::api::{Run, Sweep};
use sslab_shared::sweep::{Preset, SweepAxis, SweepSpec, canonical_path, value_label};

use crate::api::{self, ApiFailure};

/// The values typed for an axis: strings where the base holds a string
/// (projector dims), else numbers; `default` is the field's own default.
fn parse_values(text: &str, path: &str, base: &RunSpec) -> Result<Vec<Value>, String> {
    let doc = serde_json::to_value(base).unwrap_or_default();
    let current = canonical_path(path)
        .split('.')
        .try_fold(&doc, |v, key| v.as_object()?.get(key))
        .cloned();
    let wants_text = matches!(current, Some(Value::String(_)));
    let values: Vec<Value> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if wants_text {
                Value::from(t)
            } else if t == "default" || t == "null" {
                Value::Null
            } else {
                serde_json::from_str(t).unwrap_or_else(|_| Value::from(t))
            }
        })
        .collect();
    if values.is_empty() {
        return Err("give one or more values, separated by commas".into());
    }
    Ok(values)
}

fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .map_err(|_| format!("`{t}` is not a seed (a whole number ≥ 0)"))
        })
        .collect()
}

fn join(values: &[Value]) -> String {
    values
        .iter()
        .map(value_label)
        .collect::<Vec<_>>()
        .join(", ")
}

#[component]
pub fn NewSweepPage() -> impl IntoView {
    let query = use_query_map();
    let from = query.with_untracked(|q| q.get("from"));
    let preset = RwSignal::new(
        query
            .with_untracked(|q| q.get("preset"))
            .and_then(|p| Preset::parse(&p))
            .unwrap_or(Preset::ProjectorDim),
    );
    let base = RwSignal::new(None::<RunSpec>);
    let base_label = RwSignal::new(String::from("the default run spec"));
    let name = RwSignal::new(String::new());
    let path = RwSignal::new(String::new());
    let values = RwSignal::new(String::new());
    let seeds = RwSignal::new(String::new());
    let project = RwSignal::new(
        query
            .with_untracked(|q| q.get("project"))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| sslab_shared::project::DEFAULT_PROJECT.to_string()),
    );
    let (failure, set_failure) = signal(None::<ApiFailure>);
    let (busy, set_busy) = signal(false);

    // Fill the form from a preset around the base.
    let apply = move |p: Preset| {
        if let Some(b) = base.get_untracked() {
            let s = p.sweep(&b);
            preset.set(p);
            name.set(s.name.clone());
            path.set(s.axes[0].path.clone());
            values.set(join(&s.axes[0].values));
            seeds.set(
                s.seeds
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    };
    match from.clone() {
        Some(run_id) => spawn_local(async move {
            match api::get::<Run>(&format!("/runs/{run_id}")).await {
                Ok(run) => {
                    base_label.set(format!("run {} ({})", run.name, run.id));
                    base.set(Some(run.spec));
                    project.set(run.project);
                    apply(preset.get_untracked());
                }
                Err(e) => set_failure.set(Some(e)),
            }
        }),
        None => {
            base.set(Some(RunSpec::default()));
            apply(preset.get_untracked());
        }
    }

    let build = move || -> Result<SweepSpec, String> {
        let b = base.get().ok_or("the base run is still loading")?;
        let p = path.get();
        let axis = SweepAxis {
            path: p.trim().to_string(),
            values: parse_values(&values.get(), &p, &b)?,
            min: None,
            max: None,
            log: false,
            integer: false,
        };
        Ok(SweepSpec {
            name: name.get(),
            seeds: parse_seeds(&seeds.get())?,
            axes: vec![axis],
            base: b,
            ..SweepSpec::default()
        })
    };
    let count = move || match build() {
        Ok(s) => format!("{} runs", s.run_count()),
        Err(e) => e,
    };
    let navigate = use_navigate();
    let launch = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let spec = match build() {
            Ok(s) => s,
            Err(e) => {
                set_failure.set(Some(ApiFailure {
                    message: e,
                    field: None,
                }));
                return;
            }
        };
        set_busy.set(true);
        let navigate = navigate.clone();
        let url = format!(
            "/sweeps?project={}",
            api::query_value(&project.get_untracked())
        );
        spawn_local(async move {
            match api::post::<Sweep>(&url, Some(&spec)).await {
                Ok(sweep) => navigate(&format!("/sweeps/{}", sweep.id), Default::default()),
                Err(e) => {
                    set_failure.set(Some(e));
                    set_busy.set(false);
                }
            }
        });
    };
    view! {
        <h1>"New sweep"</h1>
        <p class="meta" id="sweep-base">{move || format!("Every run starts from {}; only the swept field and the seed change.", base_label.get())}</p>
        <div class="bar presets">
            {Preset::ALL.into_iter().map(|p| view! {
                <button type="button" id=format!("preset-{}", p.name())
                    class:secondary=move || preset.get() != p
                    on:click=move |_| apply(p)>{p.title()}</button>
            }).collect_view()}
        </div>
        <form on:submit=launch>
            <fieldset>
                <legend>"Sweep"</legend>
                <label class="field"><span class="name">"Name"</span>
                    <input id="sweep-name" prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev))/>
                    <span class="help">"Prefixed to every run's name."</span>
                </label>
                <label class="field"><span class="name">"Project"</span>
                    <crate::projects::ProjectSelect id="sweep-project" value=project/>
                    <span class="help">"The sweep and its runs go here."</span>
                </label>
                <label class="field"><span class="name">"Field"</span>
                    <input id="sweep-path" prop:value=move || path.get() on:input=move |ev| path.set(event_target_value(&ev))/>
                    <span class="help">"Dotted path in the run spec: projector.dims, backbone.last_block_width, schedule.epochs, method.temperature, optimizer.lr …"</span>
                </label>
                <label class="field"><span class="name">"Values"</span>
                    <input id="sweep-values" prop:value=move || values.get() on:input=move |ev| values.set(event_target_value(&ev))/>
                    <span class="help">"Separated by commas; one run per value and seed."</span>
                </label>
                <label class="field"><span class="name">"Seeds"</span>
                    <input id="sweep-seeds" prop:value=move || seeds.get() on:input=move |ev| seeds.set(event_target_value(&ev))/>
                    <span class="help">"Each value runs once per seed; the charts show mean ± std."</span>
                </label>
            </fieldset>
            <p class="meta" id="sweep-count">{count}</p>
            {move || failure.get().map(|f| view! {
                <p class="error" id="sweep-error">
                    {f.field.map(|x| format!("{x}: ")).unwrap_or_default()}{f.message}
                </p>
            })}
            <button type="submit" id="launch-sweep" disabled=move || busy.get()>"Launch sweep"</button>
        </form>
    }
}
