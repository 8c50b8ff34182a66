//! The evaluation plan: every requested probe at every requested layer
//! (backbone and each projector layer — guillotine regularization,
//! arXiv:2206.13378), fitted on the training split, scored on the test split.

use candle_core::{Device, Tensor};
use sslab_shared::api::Evaluation;
use sslab_shared::spec::{EvalSpec, ProbeKind};

use crate::augment;
use crate::data::{ImageSet, Splits};
use crate::model::Encoder;
use crate::probe::{attention, knn, linear, rankme};

/// Row-major `len × dim` embeddings.
#[derive(Debug, Clone)]
pub struct Features {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Scales every row to unit L2 norm (zero rows stay zero).
    pub fn normalized(&self) -> Features {
        let mut data = self.data.clone();
        for row in data.chunks_mut(self.dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                row.iter_mut().for_each(|x| *x /= n);
            }
        }
        Features {
            dim: self.dim,
            data,
        }
    }
}

/// Embeds every image of `set` (un-augmented) at every layer of the encoder.
pub fn embed_layers(
    encoder: &Encoder,
    set: &ImageSet,
    device: &Device,
) -> candle_core::Result<Vec<Features>> {
    embed_with(set, device, |x| encoder.forward_layers(x, false))
}

/// `embed_layers` at every CKA tap: the backbone's blocks, then the layers.
pub fn embed_taps(
    encoder: &Encoder,
    set: &ImageSet,
    device: &Device,
) -> candle_core::Result<Vec<Features>> {
    embed_with(set, device, |x| encoder.forward_taps(x))
}

/// Every image of `set` (un-augmented) through `f`, in batches.
pub(crate) fn each_batch(
    set: &ImageSet,
    device: &Device,
    mut f: impl FnMut(&Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let s = set.size;
    let per = 3 * s * s;
    let batch = 256;
    for start in (0..set.len()).step_by(batch) {
        let end = (start + batch).min(set.len());
        let mut buf = vec![0.0f32; (end - start) * per];
        for (k, i) in (start..end).enumerate() {
            augment::plain(set, i, &mut buf[k * per..(k + 1) * per]);
        }
        f(&Tensor::from_vec(buf, (end - start, 3, s, s), device)?)?;
    }
    Ok(())
}

/// Every image of `set` through `forward`, in batches; one `Features` per
/// output.
fn embed_with(
    set: &ImageSet,
    device: &Device,
    forward: impl Fn(&Tensor) -> candle_core::Result<Vec<Tensor>>,
) -> candle_core::Result<Vec<Features>> {
    let mut layers: Vec<Features> = Vec::new();
    each_batch(set, device, |x| {
        let outs = forward(x)?;
        if layers.is_empty() {
            layers = outs
                .iter()
                .map(|o| {
                    Ok(Features {
                        dim: o.dim(1)?,
                        data: Vec::new(),
                    })
                })
                .collect::<candle_core::Result<_>>()?;
        }
        for (f, o) in layers.iter_mut().zip(outs) {
            f.data.extend(o.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    })?;
    Ok(layers)
}

fn row(
    layer: &str,
    probe: ProbeKind,
    metric: impl Into<String>,
    value: f64,
    settings: serde_json::Value,
) -> Evaluation {
    Evaluation {
        layer: layer.into(),
        probe: probe.name().into(),
        metric: metric.into(),
        value,
        settings,
        job_id: None,
    }
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Runs every probe of the plan at one layer's features.
fn probe_layer(
    layer: &str,
    train: &Features,
    test: &Features,
    splits: &Splits,
    spec: &EvalSpec,
    seed: u64,
) -> candle_core::Result<Vec<Evaluation>> {
    let (ytr, yte) = (&splits.train.labels, &splits.test.labels);
    let classes = splits.train.classes();
    let mut out = Vec::new();
    for probe in &spec.probes {
        match probe {
            ProbeKind::Knn => {
                let k = spec.knn_k.min(train.len());
                let v = knn::knn_accuracy(
                    train,
                    ytr,
                    test,
                    yte,
                    classes,
                    k,
                    spec.knn_temperature,
                    spec.knn_metric,
                );
                let settings = serde_json::json!({"k": k, "temperature": spec.knn_temperature, "metric": spec.knn_metric});
                out.push(row(layer, *probe, "top1", v, settings));
            }
            ProbeKind::Linear => {
                let r = linear::linear_probe(
                    train,
                    ytr,
                    test,
                    yte,
                    classes,
                    &spec.linear_l2,
                    spec.linear_val_fraction,
                    spec.linear_steps,
                    seed,
                )?;
                let settings = serde_json::json!({
                    "l2": r.l2, "val_top1": r.val_accuracy, "val_fraction": spec.linear_val_fraction,
                    "steps": spec.linear_steps, "standardized": true,
                });
                out.push(row(layer, *probe, "top1", r.test_accuracy, settings));
            }
            ProbeKind::Lowshot => {
                let (std_train, others) = linear::standardize(train, &[test]);
                let settings: Vec<(String, Option<usize>, Option<f64>)> = spec
                    .lowshot_shots
                    .iter()
                    .map(|&k| (format!("top1_{k}shot"), Some(k), None))
                    .chain(
                        spec.lowshot_fractions
                            .iter()
                            .map(|&f| (format!("top1_{}pct", f * 100.0), None, Some(f))),
                    )
                    .collect();
                for (metric, shots, fraction) in settings {
                    let mut values = Vec::new();
                    for draw in 0..spec.lowshot_draws {
                        let idx = linear::lowshot_subset(
                            ytr,
                            classes,
                            shots,
                            fraction,
                            seed ^ (0x5107 + draw as u64),
                        );
                        let x = linear::select(&std_train, &idx);
                        let y: Vec<u32> = idx.iter().map(|&i| ytr[i]).collect();
                        let model = linear::Classifier::fit(
                            &x,
                            &y,
                            classes,
                            spec.lowshot_l2,
                            spec.linear_steps,
                        )?;
                        values.push(model.accuracy(&others[0], yte)?);
                    }
                    let (mean, std) = mean_std(&values);
                    let s = serde_json::json!({
                        "shots_per_class": shots, "fraction": fraction, "draws": spec.lowshot_draws,
                        "std": std, "values": values, "l2": spec.lowshot_l2,
                    });
                    out.push(row(layer, *probe, metric, mean, s));
                }
            }
            ProbeKind::Rankme => {
                let v = rankme::rankme(test);
                let s = serde_json::json!({"split": "test", "n": test.len(), "dim": test.dim});
                out.push(row(layer, *probe, "rank", v, s));
            }
            // Per block, not per layer: see `evaluate`.
            ProbeKind::Attention => {}
        }
    }
    Ok(out)
}

/// Runs the plan: one row per (layer, probe, metric), layers in depth
/// order, then a ViT's attention rows per block.
pub fn evaluate(
    encoder: &Encoder,
    splits: &Splits,
    spec: &EvalSpec,
    seed: u64,
    device: &Device,
) -> crate::Result<Vec<Evaluation>> {
    spec.validate(encoder.layer_names())?;
    let train = embed_layers(encoder, &splits.train, device)?;
    let test = embed_layers(encoder, &splits.test, device)?;
    let wanted = spec.probed_layers(encoder.layer_names());
    let mut rows = Vec::new();
    for (name, (tr, te)) in encoder.layer_names().iter().zip(train.iter().zip(&test)) {
        if wanted.contains(name) {
            rows.extend(probe_layer(name, tr, te, splits, spec, seed)?);
        }
    }
    if let (true, Some(vit)) = (
        spec.probes.contains(&ProbeKind::Attention),
        encoder.backbone.vit(),
    ) {
        rows.extend(attention::attention_rows(vit, &splits.test, device)?);
    }
    Ok(rows)
}

/// The plan on a finished run's weights: reads the plan's data (the run's
/// own when it names none), loads the encoder `spec` describes from
/// `checkpoint`, and probes it. What the server's re-evaluation jobs and
/// `sslab eval` both do.
pub fn evaluate_checkpoint(
    spec: &sslab_shared::ValidSpec,
    checkpoint: &std::path::Path,
    plan: &EvalSpec,
    device: &Device,
) -> crate::Result<Vec<Evaluation>> {
    let _release = crate::ReleaseMemoryAtEnd;
    let splits = crate::data::load(plan.data.as_ref().unwrap_or(&spec.data))?;
    let encoder = crate::train::load_encoder(spec, checkpoint, device)?;
    evaluate(&encoder, &splits, plan, spec.seed, device)
}
