//! The new-run form: every `RunSpec` field as its own typed input, started
//! from the defaults, a shipped recipe (`?recipe=`) or another run (`?from=`),
//! launched into a project (`?project=`).

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::{use_navigate, use_query_map};
use serde_json::{Map, Value};
use sslab_shared::RunSpec;
use sslab_shared::api::{Recipe, Run};
use sslab_shared::spec::{
    BackboneKind, DataSpec, DejavuPart, KnnMetric, MemorizationMonitor, MethodSpec, OptimizerKind,
    Precision, ProbeKind, ScenesSpec, Stem, SubsetSpec, help,
};

use crate::api::{self, ApiFailure};
use crate::typed_fields::ObjectFields;

type Getter = fn(&RunSpec) -> String;
type Setter = fn(&mut RunSpec, &str) -> Result<(), String>;

/// The scenes settings; other sources show the defaults.
fn scenes(s: &RunSpec) -> ScenesSpec {
    match &s.data {
        DataSpec::Scenes(x) => x.clone(),
        _ => ScenesSpec::default(),
    }
}

/// Editing a scenes field makes the source the built-in scenes.
fn scenes_mut(s: &mut RunSpec) -> &mut ScenesSpec {
    if !matches!(s.data, DataSpec::Scenes(_)) {
        s.data = DataSpec::Scenes(ScenesSpec::default());
    }
    match &mut s.data {
        DataSpec::Scenes(x) => x,
        _ => unreachable!("set just above"),
    }
}

/// The folder of a file-based source.
fn data_path(s: &RunSpec) -> String {
    match &s.data {
        DataSpec::Cifar10 { path }
        | DataSpec::Cifar100 { path, .. }
        | DataSpec::Idx { path }
        | DataSpec::Stl10 { path, .. }
        | DataSpec::Folder { path, .. } => path.clone(),
        DataSpec::Dataset { name, .. } => name.clone(),
        DataSpec::Scenes(_) => String::new(),
    }
}

fn set_source(s: &mut RunSpec, source: &str, path: String) -> Result<(), String> {
    s.data = match source {
        "scenes" => DataSpec::Scenes(scenes(s)),
        "cifar10" => DataSpec::Cifar10 { path },
        "cifar100" => DataSpec::Cifar100 {
            path,
            coarse: false,
        },
        "idx" => DataSpec::Idx { path },
        "stl10" => DataSpec::Stl10 {
            path,
            unlabeled: false,
        },
        "dataset" => DataSpec::Dataset {
            name: path,
            registered: None,
        },
        "folder" => DataSpec::Folder {
            path,
            image_size: 32,
            test_fraction: 0.2,
            seed: 0,
        },
        other => return Err(format!("unknown source `{other}`")),
    };
    Ok(())
}

/// A comma-separated list; empty text is an empty list.
fn list<T>(text: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(item)
        .collect()
}

fn num<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number of the right kind", text.trim()))
}

/// Two numbers, one per view or a (min, max) range.
fn pair(text: &str) -> Result<[f64; 2], String> {
    let v: Vec<f64> = list(text, num)?;
    match v.as_slice() {
        [a, b] => Ok([*a, *b]),
        _ => Err("give two numbers separated by a comma".into()),
    }
}

fn pair_text(p: [f64; 2]) -> String {
    format!("{}, {}", p[0], p[1])
}

/// The input's DOM id for a dotted field path: `optimizer.lr` → `f-optimizer-lr`.
fn input_id(field: &str) -> String {
    format!("f-{}", field.replace('.', "-"))
}

/// One labelled text input bound to a spec field.
fn field(
    spec: RwSignal<RunSpec>,
    path: &'static str,
    label: &'static str,
    help: &'static str,
    get: Getter,
    set: Setter,
) -> impl IntoView {
    let (error, set_error) = signal(None::<String>);
    let initial = spec.with_untracked(get);
    view! {
        <label class="field" class:invalid=move || error.with(|e| e.is_some())>
            <span class="name">{label}</span>
            <input id=input_id(path) name=path value=initial
                on:input=move |ev| {
                    let text = event_target_value(&ev);
                    let mut result = Ok(());
                    spec.update(|s| result = set(s, &text));
                    set_error.set(result.err());
                }/>
            <span class="help">{move || error.get().unwrap_or_else(|| help.to_string())}</span>
        </label>
    }
}

fn select(
    spec: RwSignal<RunSpec>,
    path: &'static str,
    label: &'static str,
    options: &'static [&'static str],
    get: Getter,
    set: Setter,
) -> impl IntoView {
    let initial = spec.with_untracked(get);
    view! {
        <label class="field">
            <span class="name">{label}</span>
            <select id=input_id(path) name=path on:change=move |ev| {
                let v = event_target_value(&ev);
                spec.update(|s| { let _ = set(s, &v); });
            }>
                {options.iter().map(|o| view! { <option value=*o selected={*o == initial}>{*o}</option> }).collect_view()}
            </select>
        </label>
    }
}

/// A spec part's settings as a JSON object.
fn object_of(v: &impl serde::Serialize) -> Map<String, Value> {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// `part` with `key` set to `value`, read back as its type: the message
/// says why it cannot be.
fn with_setting<T: serde::Serialize + serde::de::DeserializeOwned>(
    part: &T,
    key: &str,
    value: Value,
) -> Result<T, String> {
    let mut object = object_of(part);
    object.insert(key.to_string(), value);
    serde_json::from_value(Value::Object(object)).map_err(|e| e.to_string())
}

/// The method's name, and its hyper-parameters as typed fields (reset to
/// the method's defaults when the name changes). A method that needs
/// another model (a ViT, no projector) brings it, and `model_rev` redraws
/// the model fields.
#[component]
fn MethodFields(spec: RwSignal<RunSpec>, model_rev: RwSignal<u32>) -> impl IntoView {
    let initial = spec.with_untracked(|s| s.method.clone());
    let method_rev = RwSignal::new(0u32);
    view! {
        <label class="field">
            <span class="name">"Method"</span>
            <select id="f-method-name" name="method.name" on:change=move |ev| {
                if let Some(m) = MethodSpec::from_name(&event_target_value(&ev)) {
                    let mut refit = false;
                    spec.update(|s| {
                        let before = (s.backbone.clone(), s.projector.clone(), s.augment.clone());
                        s.method = m;
                        s.fit_model_to_method();
                        refit = before != (s.backbone.clone(), s.projector.clone(), s.augment.clone());
                    });
                    method_rev.update(|r| *r += 1);
                    if refit {
                        model_rev.update(|r| *r += 1);
                    }
                }
            }>
                {MethodSpec::NAMES.iter().map(|n| view! {
                    <option value=*n selected={*n == initial.name()}>{*n}</option>
                }).collect_view()}
            </select>
        </label>
        {move || {
            method_rev.track();
            let method = spec.with_untracked(|s| s.method.clone());
            let name = method.name().to_string();
            let defaults = MethodSpec::from_name(&name).map(|m| object_of(&m)).unwrap_or_default();
            view! {
                <ObjectFields prefix="method" current=object_of(&method) defaults=defaults skip=&["name"]
                    help=Callback::new(move |key: String| help::method_param(&name, &key))
                    apply=Callback::new(move |(key, value): (String, Value)| {
                        let m = spec.with_untracked(|s| with_setting(&s.method, &key, value))?;
                        spec.update(|s| s.method = m);
                        Ok(())
                    })/>
            }
        }}
    }
}

/// Which part of the training split a run trains on: all of it, so many
/// images per class, a power law over the classes, or one side of a déjà
/// vu partition.
#[component]
fn SubsetFields(spec: RwSignal<RunSpec>) -> impl IntoView {
    let kind = |s: &RunSpec| match &s.subset {
        None => "all",
        Some(SubsetSpec::PerClass { .. }) => "per_class",
        Some(SubsetSpec::PowerLaw { .. }) => "power_law",
        Some(SubsetSpec::Dejavu { .. }) => "dejavu",
    };
    let initial = spec.with_untracked(kind);
    let rev = RwSignal::new(0u32);
    view! {
        <label class="field">
            <span class="name">"Subset"</span>
            <select id="f-subset-kind" name="subset.kind" on:change=move |ev| {
                let subset = match event_target_value(&ev).as_str() {
                    "per_class" => Some(SubsetSpec::PerClass { per_class: 50, seed: 0 }),
                    "power_law" => Some(SubsetSpec::PowerLaw { images: 500, power: 1.0, seed: 0 }),
                    "dejavu" => Some(SubsetSpec::Dejavu { part: DejavuPart::A, per_class: 50, public_per_class: 0, seed: 0 }),
                    _ => None,
                };
                spec.update(|s| s.subset = subset);
                rev.update(|r| *r += 1);
            }>
                {[("all", "all training images"), ("per_class", "per class"), ("power_law", "power law (imbalanced)"), ("dejavu", "déjà vu partition side")]
                    .into_iter()
                    .map(|(v, label)| view! { <option value=v selected={v == initial}>{label}</option> })
                    .collect_view()}
            </select>
            <span class="help">"a deterministic part of the training split"</span>
        </label>
        {move || {
            rev.track();
            spec.with_untracked(|s| s.subset.clone()).map(|subset| view! {
                <ObjectFields prefix="subset" current=object_of(&subset) skip=&["kind"]
                    help=Callback::new(|key: String| help::subset_param(&key))
                    apply=Callback::new(move |(key, value): (String, Value)| {
                        let Some(current) = spec.with_untracked(|s| s.subset.clone()) else {
                            return Err("choose a subset first".to_string());
                        };
                        let next = with_setting(&current, &key, value)?;
                        spec.update(|s| s.subset = Some(next));
                        Ok(())
                    })/>
            })
        }}
    }
}

/// The spec a recipe holds, if it is a run's.
fn recipe_spec(r: &Recipe) -> Result<RunSpec, ApiFailure> {
    if r.kind != "run" {
        return Err(ApiFailure {
            message: format!("recipe `{}` is a {}, not a run", r.name, r.kind),
            field: None,
        });
    }
    RunSpec::from_json(&r.spec.to_string()).map_err(|e| ApiFailure {
        message: e.to_string(),
        field: Some(e.field),
    })
}

#[component]
pub fn NewRunPage() -> impl IntoView {
    let query = use_query_map();
    let asked = |key: &str| query.with_untracked(|q| q.get(key)).unwrap_or_default();
    let spec = RwSignal::new(RunSpec::default());
    let model_rev = RwSignal::new(0u32);
    // Redraws every field after the whole spec is replaced.
    let form_rev = RwSignal::new(0u32);
    let project = RwSignal::new(match asked("project") {
        p if p.is_empty() => sslab_shared::project::DEFAULT_PROJECT.to_string(),
        p => p,
    });
    let recipe = RwSignal::new(asked("recipe"));
    let (origin, set_origin) = signal(None::<(String, String)>);
    let (failure, set_failure) = signal(None::<ApiFailure>);
    let (busy, set_busy) = signal(false);
    let recipes = LocalResource::new(|| api::get::<Vec<Recipe>>("/recipes"));
    let replace = move |next: RunSpec| {
        spec.set(next);
        form_rev.update(|r| *r += 1);
    };
    let start_from = move |name: String| {
        if name.is_empty() {
            set_origin.set(None);
            return replace(RunSpec::default());
        }
        let found = recipes
            .get_untracked()
            .and_then(|r| r.ok())
            .and_then(|all| all.into_iter().find(|r| r.name == name));
        match found.map(|r| recipe_spec(&r)) {
            Some(Ok(next)) => {
                set_failure.set(None);
                replace(next);
            }
            Some(Err(e)) => set_failure.set(Some(e)),
            None => {}
        }
    };
    // `?recipe=` applies once the recipes are in.
    Effect::new(move |done: Option<bool>| {
        if done == Some(true) {
            return true;
        }
        let loaded = recipes.with(|r| r.is_some());
        if loaded && !recipe.get_untracked().is_empty() {
            start_from(recipe.get_untracked());
        }
        loaded
    });
    // `?from=<run id>`: that run's spec, under a new name, in its project.
    let from = asked("from");
    if !from.is_empty() {
        spawn_local(async move {
            match api::get::<Run>(&format!("/runs/{}", api::query_value(&from))).await {
                Ok(run) => {
                    let mut next = run.spec;
                    next.name = format!("{}-copy", run.name);
                    project.set(run.project);
                    set_origin.set(Some((run.id, run.name)));
                    replace(next);
                }
                Err(e) => set_failure.set(Some(e)),
            }
        });
    }
    let navigate = use_navigate();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = spec.get_untracked();
        let project = project.get_untracked();
        let navigate = navigate.clone();
        set_busy.set(true);
        spawn_local(async move {
            match api::create_run(&body, &project).await {
                Ok(run) => navigate(&format!("/runs/{}", run.id), Default::default()),
                Err(e) => {
                    set_failure.set(Some(e));
                    set_busy.set(false);
                }
            }
        });
    };
    view! {
        <h1>"New run"</h1>
        <div class="bar start-from">
            <label class="field">
                <span class="name">"Start from"</span>
                <select id="f-recipe" on:change=move |ev| {
                    let name = event_target_value(&ev);
                    recipe.set(name.clone());
                    start_from(name);
                }>
                    <option value="" selected=move || recipe.get().is_empty()>"the defaults"</option>
                    {move || recipes.get().and_then(|r| r.ok()).unwrap_or_default().into_iter()
                        .filter(|r| r.kind == "run")
                        .map(|r| {
                            let (value, label, this) = (r.name.clone(), r.name.clone(), r.name.clone());
                            view! { <option value=value title=r.description.clone() selected=move || recipe.get() == this>{label}</option> }
                        }).collect_view()}
                </select>
                <span class="help">{move || match origin.get() {
                    Some((id, name)) => view! { "a copy of run " <a id="cloned-from" href=format!("/runs/{id}")>{name}</a> }.into_any(),
                    None => "a shipped recipe (recipes/*.toml) fills every field below".into_any(),
                }}</span>
            </label>
            <label class="field">
                <span class="name">"Project"</span>
                <crate::projects::ProjectSelect id="f-project" value=project/>
            </label>
        </div>
        <form id="new-run-form" on:submit=submit>
          {move || { form_rev.track(); view! {
            <fieldset><legend>"Run"</legend>
                {field(spec, "name", "Name", "shown in lists; empty picks one",
                    |s| s.name.clone(), |s, v| { s.name = v.to_string(); Ok(()) })}
                {field(spec, "seed", "Seed", "data order, augmentations and initial weights",
                    |s| s.seed.to_string(), |s, v| { s.seed = num(v)?; Ok(()) })}
            </fieldset>
            <fieldset><legend>"Data"</legend>
                {select(spec, "data.source", "Source", &["scenes", "dataset", "cifar10", "cifar100", "idx", "stl10", "folder"],
                    |s| s.data.source().to_string(),
                    |s, v| { let p = data_path(s); set_source(s, v, p) })}
                {field(spec, "data.path", "Folder or data set", "a registered data set's name (Data sets page), or a folder on the training machine: CIFAR or STL-10 binary, MNIST IDX, or one sub-folder per class of PNG/JPEG; the scenes fields below are for the built-in source",
                    data_path,
                    |s, v| { let source = s.data.source(); set_source(s, source, v.trim().to_string()) })}
                {field(spec, "data.classes", "Classes", "object classes, 2–16",
                    |s| scenes(s).classes.to_string(), |s, v| { scenes_mut(s).classes = num(v)?; Ok(()) })}
                {field(spec, "data.train_images", "Training images", "SSL training set and kNN memory bank",
                    |s| scenes(s).train_images.to_string(), |s, v| { scenes_mut(s).train_images = num(v)?; Ok(()) })}
                {field(spec, "data.test_images", "Test images", "held out; probes are scored here",
                    |s| scenes(s).test_images.to_string(), |s, v| { scenes_mut(s).test_images = num(v)?; Ok(()) })}
                {select(spec, "data.image_size", "Image size", &["32", "64"],
                    |s| scenes(s).image_size.to_string(), |s, v| { scenes_mut(s).image_size = num(v)?; Ok(()) })}
                {field(spec, "data.background_correlation", "Background–class link", "0 = independent, 1 = one background per class",
                    |s| scenes(s).background_correlation.to_string(), |s, v| { scenes_mut(s).background_correlation = num(v)?; Ok(()) })}
                {field(spec, "data.background_signature", "Background signature", "0–1: a pattern of each image's own on its background, for memorization audits",
                    |s| scenes(s).background_signature.to_string(), |s, v| { scenes_mut(s).background_signature = num(v)?; Ok(()) })}
                {field(spec, "data.seed", "Data seed", "which scenes are drawn",
                    |s| scenes(s).seed.to_string(), |s, v| { scenes_mut(s).seed = num(v)?; Ok(()) })}
                <SubsetFields spec=spec/>
            </fieldset>
            <fieldset><legend>"Method"</legend>
                <MethodFields spec=spec model_rev=model_rev/>
            </fieldset>
            <fieldset><legend>"Backbone and projector"</legend>
              {move || { model_rev.track(); view! {
                {select(spec, "backbone.kind", "Backbone", &["tiny_cnn", "resnet18", "resnet50", "vit"],
                    |s| s.backbone.kind.name().to_string(),
                    |s, v| { s.backbone.kind = match v { "resnet18" => BackboneKind::Resnet18, "resnet50" => BackboneKind::Resnet50, "vit" => BackboneKind::Vit, _ => BackboneKind::TinyCnn }; Ok(()) })}
                {select(spec, "backbone.stem", "ResNet stem", &["cifar", "imagenet"],
                    |s| if s.backbone.stem == Stem::Imagenet { "imagenet".into() } else { "cifar".into() },
                    |s, v| { s.backbone.stem = if v == "imagenet" { Stem::Imagenet } else { Stem::Cifar }; Ok(()) })}
                {field(spec, "backbone.width", "Width", "channels of the first stage (ResNet-18: 64); a ViT's embedding width (ViT-Tiny 192)",
                    |s| s.backbone.width.to_string(), |s, v| { s.backbone.width = num(v)?; Ok(()) })}
                {field(spec, "backbone.patch_size", "ViT patch size", "pixels; must divide the image size (4 for 32 px)",
                    |s| s.backbone.patch_size.to_string(), |s, v| { s.backbone.patch_size = num(v)?; Ok(()) })}
                {select(spec, "backbone.conv_stem", "ViT conv stem", &["false", "true"],
                    |s| s.backbone.conv_stem.to_string(),
                    |s, v| { s.backbone.conv_stem = v == "true"; Ok(()) })}
                {field(spec, "backbone.depth", "ViT depth", "transformer blocks (ViT-Tiny/Small: 12)",
                    |s| s.backbone.depth.to_string(), |s, v| { s.backbone.depth = num(v)?; Ok(()) })}
                {field(spec, "backbone.heads", "ViT heads", "must divide the width (ViT-Tiny 3, ViT-Small 6)",
                    |s| s.backbone.heads.to_string(), |s, v| { s.backbone.heads = num(v)?; Ok(()) })}
                {field(spec, "backbone.last_block_width", "Last-block width", "representation dimension; empty = the architecture's own",
                    |s| s.backbone.last_block_width.map(|w| w.to_string()).unwrap_or_default(),
                    |s, v| { s.backbone.last_block_width = if v.trim().is_empty() { None } else { Some(num(v)?) }; Ok(()) })}
                {field(spec, "projector.dims", "Projector", "layer widths, e.g. 512-512-128; empty = none",
                    |s| s.projector.dims.to_string(), |s, v| v.parse().map(|d| s.projector.dims = d))}
                {select(spec, "projector.batch_norm", "Projector BatchNorm", &["true", "false"],
                    |s| s.projector.batch_norm.to_string(), |s, v| { s.projector.batch_norm = v == "true"; Ok(()) })}
                {field(spec, "augment.local_views", "Local views", "multi-crop for DINO, SwAV, MSN, PMSN; 0 = off",
                    |s| s.augment.local_views.to_string(), |s, v| { s.augment.local_views = num(v)?; Ok(()) })}
                {field(spec, "augment.local_size", "Local view size", "pixels; 0 = half the image",
                    |s| s.augment.local_size.to_string(), |s, v| { s.augment.local_size = num(v)?; Ok(()) })}
              }.into_any() }}
            </fieldset>
            <fieldset><legend>"Augmentations"</legend>
                {field(spec, "augment.crop_min_scale", "Crop min scale", "smallest area kept by the random resized crop",
                    |s| s.augment.crop_min_scale.to_string(), |s, v| { s.augment.crop_min_scale = num(v)?; Ok(()) })}
                {field(spec, "augment.crop_max_scale", "Crop max scale", "largest area kept",
                    |s| s.augment.crop_max_scale.to_string(), |s, v| { s.augment.crop_max_scale = num(v)?; Ok(()) })}
                {field(spec, "augment.flip_prob", "Flip probability", "horizontal flip",
                    |s| s.augment.flip_prob.to_string(), |s, v| { s.augment.flip_prob = num(v)?; Ok(()) })}
                {field(spec, "augment.jitter_prob", "Colour jitter probability", "",
                    |s| s.augment.jitter_prob.to_string(), |s, v| { s.augment.jitter_prob = num(v)?; Ok(()) })}
                {field(spec, "augment.jitter_strength", "Colour jitter strength", "0–1; SimCLR uses 0.5 on CIFAR",
                    |s| s.augment.jitter_strength.to_string(), |s, v| { s.augment.jitter_strength = num(v)?; Ok(()) })}
                {field(spec, "augment.grayscale_prob", "Grayscale probability", "",
                    |s| s.augment.grayscale_prob.to_string(), |s, v| { s.augment.grayscale_prob = num(v)?; Ok(()) })}
                {field(spec, "augment.blur_prob", "Blur probability", "first view, second view; BYOL: 1.0, 0.1",
                    |s| pair_text(s.augment.blur_prob), |s, v| { s.augment.blur_prob = pair(v)?; Ok(()) })}
                {field(spec, "augment.blur_sigma", "Blur σ range", "pixels, min and max",
                    |s| pair_text(s.augment.blur_sigma), |s, v| { s.augment.blur_sigma = pair(v)?; Ok(()) })}
                {field(spec, "augment.solarize_prob", "Solarize probability", "first view, second view; BYOL: 0.0, 0.2",
                    |s| pair_text(s.augment.solarize_prob), |s, v| { s.augment.solarize_prob = pair(v)?; Ok(()) })}
                {field(spec, "augment.noise_std", "Gaussian noise σ", "on [0, 1] pixels, applied last",
                    |s| s.augment.noise_std.to_string(), |s, v| { s.augment.noise_std = num(v)?; Ok(()) })}
            </fieldset>
            <fieldset><legend>"Optimiser and schedule"</legend>
                {select(spec, "optimizer.kind", "Optimiser", &["adamw", "sgd", "lars"],
                    |s| match s.optimizer.kind { OptimizerKind::Sgd => "sgd".into(), OptimizerKind::Lars => "lars".into(), OptimizerKind::Adamw => "adamw".into() },
                    |s, v| { s.optimizer.kind = match v { "sgd" => OptimizerKind::Sgd, "lars" => OptimizerKind::Lars, _ => OptimizerKind::Adamw }; Ok(()) })}
                {field(spec, "optimizer.lr", "Learning rate", "peak, after warm-up",
                    |s| s.optimizer.lr.to_string(), |s, v| { s.optimizer.lr = num(v)?; Ok(()) })}
                {field(spec, "optimizer.weight_decay", "Weight decay", "on weights, never biases or norms",
                    |s| s.optimizer.weight_decay.to_string(), |s, v| { s.optimizer.weight_decay = num(v)?; Ok(()) })}
                {field(spec, "optimizer.weight_decay_end", "Final weight decay", "cosine from the weight decay to this (DINO, MSN: 0.4); empty = constant",
                    |s| s.optimizer.weight_decay_end.map(|w| w.to_string()).unwrap_or_default(),
                    |s, v| { s.optimizer.weight_decay_end = if v.trim().is_empty() { None } else { Some(num(v)?) }; Ok(()) })}
                {field(spec, "optimizer.momentum", "Momentum", "SGD and LARS",
                    |s| s.optimizer.momentum.to_string(), |s, v| { s.optimizer.momentum = num(v)?; Ok(()) })}
                {field(spec, "optimizer.lars_eta", "LARS η", "trust coefficient; 0.02 at CIFAR scale",
                    |s| s.optimizer.lars_eta.to_string(), |s, v| { s.optimizer.lars_eta = num(v)?; Ok(()) })}
                {field(spec, "optimizer.grad_clip", "Gradient clip", "largest global gradient norm; 0 = off",
                    |s| s.optimizer.grad_clip.to_string(), |s, v| { s.optimizer.grad_clip = num(v)?; Ok(()) })}
                {select(spec, "optimizer.precision", "Precision", &["f32", "bf16"],
                    |s| if s.optimizer.precision == Precision::Bf16 { "bf16".into() } else { "f32".into() },
                    |s, v| { s.optimizer.precision = if v == "bf16" { Precision::Bf16 } else { Precision::F32 }; Ok(()) })}
                {field(spec, "optimizer.batch_size", "Batch size", "images per step (two views each)",
                    |s| s.optimizer.batch_size.to_string(), |s, v| { s.optimizer.batch_size = num(v)?; Ok(()) })}
                {field(spec, "schedule.epochs", "Epochs", "",
                    |s| s.schedule.epochs.to_string(), |s, v| { s.schedule.epochs = num(v)?; Ok(()) })}
                {field(spec, "schedule.warmup_epochs", "Warm-up epochs", "linear warm-up, then cosine",
                    |s| s.schedule.warmup_epochs.to_string(), |s, v| { s.schedule.warmup_epochs = num(v)?; Ok(()) })}
                {field(spec, "schedule.final_lr_fraction", "Final LR fraction", "cosine ends at this × peak",
                    |s| s.schedule.final_lr_fraction.to_string(), |s, v| { s.schedule.final_lr_fraction = num(v)?; Ok(()) })}
            </fieldset>
            <fieldset><legend>"Evaluation"</legend>
                {field(spec, "eval.probes", "Probes", "comma-separated: knn, linear, lowshot, rankme, attention (ViTs)",
                    |s| s.eval.probes.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
                    |s, v| { s.eval.probes = list(v, |p| ProbeKind::ALL.into_iter().find(|k| k.name() == p).ok_or_else(|| format!("unknown probe `{p}`")))?; Ok(()) })}
                {field(spec, "eval.layers", "Layers", "comma-separated, e.g. backbone, proj.1; empty = every layer",
                    |s| s.eval.layers.join(", "),
                    |s, v| { s.eval.layers = list(v, |l| Ok(l.to_string()))?; Ok(()) })}
                {field(spec, "eval.knn_k", "kNN k", "neighbours that vote (20 or 200 are usual)",
                    |s| s.eval.knn_k.to_string(), |s, v| { s.eval.knn_k = num(v)?; Ok(()) })}
                {field(spec, "eval.knn_temperature", "kNN temperature", "vote weight exp(sim / T)",
                    |s| s.eval.knn_temperature.to_string(), |s, v| { s.eval.knn_temperature = num(v)?; Ok(()) })}
                {select(spec, "eval.knn_metric", "kNN similarity", &["cosine", "l2"],
                    |s| if s.eval.knn_metric == KnnMetric::L2 { "l2".into() } else { "cosine".into() },
                    |s, v| { s.eval.knn_metric = if v == "l2" { KnnMetric::L2 } else { KnnMetric::Cosine }; Ok(()) })}
                {field(spec, "eval.linear_l2", "Linear probe L2 grid", "strengths tried on the validation split",
                    |s| s.eval.linear_l2.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "),
                    |s, v| { s.eval.linear_l2 = list(v, num)?; Ok(()) })}
                {field(spec, "eval.linear_val_fraction", "Validation fraction", "of the training split, for choosing L2",
                    |s| s.eval.linear_val_fraction.to_string(), |s, v| { s.eval.linear_val_fraction = num(v)?; Ok(()) })}
                {field(spec, "eval.linear_steps", "Probe fit steps", "full-batch optimiser steps per fit",
                    |s| s.eval.linear_steps.to_string(), |s, v| { s.eval.linear_steps = num(v)?; Ok(()) })}
                {field(spec, "eval.lowshot_shots", "Low-shot labels per class", "comma-separated, e.g. 1, 2, 5",
                    |s| s.eval.lowshot_shots.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "),
                    |s, v| { s.eval.lowshot_shots = list(v, num)?; Ok(()) })}
                {field(spec, "eval.lowshot_fractions", "Low-shot label fractions", "comma-separated, e.g. 0.01",
                    |s| s.eval.lowshot_fractions.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "),
                    |s, v| { s.eval.lowshot_fractions = list(v, num)?; Ok(()) })}
                {field(spec, "eval.lowshot_draws", "Low-shot draws", "label draws averaged (spread reported)",
                    |s| s.eval.lowshot_draws.to_string(), |s, v| { s.eval.lowshot_draws = num(v)?; Ok(()) })}
                {field(spec, "eval.lowshot_l2", "Low-shot L2", "",
                    |s| s.eval.lowshot_l2.to_string(), |s, v| { s.eval.lowshot_l2 = num(v)?; Ok(()) })}
                {select(spec, "eval.online_probe", "Online linear probe", &["true", "false"],
                    |s| s.eval.online_probe.to_string(), |s, v| { s.eval.online_probe = v == "true"; Ok(()) })}
                {field(spec, "eval.memorization.every", "Memorization monitor", "every N epochs, the déjà vu gap (needs boxes); empty: off",
                    |s| s.eval.memorization.as_ref().map(|m| m.every.to_string()).unwrap_or_default(),
                    |s, v| {
                        s.eval.memorization = if v.trim().is_empty() {
                            None
                        } else {
                            let every = num(v)?;
                            Some(MemorizationMonitor { every, ..s.eval.memorization.clone().unwrap_or_default() })
                        };
                        Ok(())
                    })}
            </fieldset>
          }.into_any() }}
            {move || failure.get().map(|f| view! {
                <p class="error" id="form-error">{f.message.clone()}</p>
            })}
            <p class="steps">{move || spec.with(|s| format!("{} optimiser steps", s.total_steps()))}</p>
            <button type="submit" id="launch" disabled=move || busy.get()>"Launch run"</button>
        </form>
    }
}
