//! SSL methods, one per file, behind one trait.

pub mod barlow;
pub mod byol;
pub mod dino;
pub mod ema;
pub mod mae;
pub mod mocov3;
pub mod msn;
pub mod prototypes;
pub mod simclr;
pub mod simmim;
pub mod simsiam;
pub mod swav;
pub mod vicreg;

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use sslab_shared::ValidSpec;
use sslab_shared::spec::{MethodSpec, SettingsCheck};

use crate::model::Encoder;

/// What a method returns for one batch.
pub struct StepLoss {
    /// The scalar to minimise.
    pub loss: Tensor,
    /// Backbone output for the first view, (N, D): what the online probe
    /// reads. Methods that mask patches give the masked view's (no extra pass).
    pub features: Tensor,
}

/// Where training stands at a step: schedules and masks read it.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// 0-based optimiser step.
    pub step: usize,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    /// The run's seed.
    pub seed: u64,
}

impl StepInfo {
    /// A generator for this step's random choices (masks), one per `tag`.
    pub fn rng(&self, tag: u64) -> sslab_shared::rng::Rng {
        sslab_shared::rng::Rng::derive(self.seed, &[tag, self.step as u64])
    }
}

/// Named tensors a method keeps besides the trained weights.
pub type State = HashMap<String, Tensor>;

/// An SSL objective: views in, loss out, plus a hook for momentum updates.
pub trait Method: Send {
    /// Full-size views per image (the first of them get the per-view
    /// settings of view 0 and 1); local views follow them.
    fn global_views(&self) -> usize {
        2
    }

    /// `views[v]` holds view `v` of every image, image `i` at row `i`: the
    /// global views, then the local ones (smaller).
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        at: &StepInfo,
    ) -> candle_core::Result<StepLoss>;

    /// Weights held still at this step: their gradients are dropped before
    /// the optimiser sees them (DINO's last layer, SwAV's prototypes, in
    /// the first epoch).
    fn frozen(&self, _at: &StepInfo) -> Vec<Tensor> {
        Vec::new()
    }

    /// Called after every optimiser step (EMA teachers update here).
    fn after_step(&mut self, _at: &StepInfo) -> candle_core::Result<()> {
        Ok(())
    }

    /// What a resumed run needs besides the weights and the optimiser:
    /// EMA targets, DINO's centre.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn load_state(&mut self, _state: &State) -> crate::Result<()> {
        Ok(())
    }
}

pub(super) fn state_tensor(state: &State, name: &str) -> crate::Result<Tensor> {
    state.get(name).cloned().ok_or_else(|| {
        crate::EngineError::Data(format!("the checkpoint's method state has no `{name}`"))
    })
}

/// Builds a registered method from the run's spec and the method's own
/// settings as written in it.
pub type BuildFn = fn(
    &ValidSpec,
    &serde_json::Map<String, serde_json::Value>,
    &VarMap,
    &Device,
) -> crate::Result<Box<dyn Method>>;

/// A method added without touching sslab's crates: a file that implements
/// [`Method`], and this, handed to [`register`] once before specs that name
/// the method are read.
pub struct Registration {
    pub name: &'static str,
    /// Checks the settings when a spec is validated; errors name `method.<field>`.
    pub check: SettingsCheck,
    pub build: BuildFn,
}

static REGISTERED: RwLock<BTreeMap<&'static str, BuildFn>> = RwLock::new(BTreeMap::new());

/// Adds a method: specs may name it from now on, and [`build`] builds it.
pub fn register(method: Registration) -> crate::Result<()> {
    sslab_shared::spec::register_method(method.name, method.check)
        .map_err(crate::EngineError::Data)?;
    REGISTERED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(method.name, method.build);
    Ok(())
}

/// The method a spec names. Methods with parameters of their own (a
/// predictor) add them to `varmap`, so the optimiser trains them and the
/// checkpoint keeps them.
pub fn build(spec: &ValidSpec, varmap: &VarMap, device: &Device) -> crate::Result<Box<dyn Method>> {
    Ok(match &spec.method {
        MethodSpec::Simclr(m) => Box::new(simclr::SimClr::new(m.temperature, m.negatives)),
        MethodSpec::Vicreg(m) => Box::new(vicreg::Vicreg {
            invariance: m.invariance,
            variance: m.variance,
            covariance: m.covariance,
        }),
        MethodSpec::Barlow(m) => Box::new(barlow::Barlow {
            lambda_offdiag: m.lambda_offdiag,
        }),
        MethodSpec::Byol(m) => Box::new(byol::Byol::new(spec, varmap, device, m.ema_base)?),
        MethodSpec::Mocov3(m) => Box::new(mocov3::MocoV3::new(
            spec,
            varmap,
            device,
            m.temperature,
            m.ema_base,
        )?),
        MethodSpec::Simsiam(_) => Box::new(simsiam::SimSiam::new(spec, varmap, device)?),
        MethodSpec::Dino(m) => Box::new(dino::Dino::new(spec, m, varmap, device)?),
        MethodSpec::Swav(m) => Box::new(swav::Swav::new(spec, m, varmap, device)?),
        MethodSpec::Msn(m) => Box::new(msn::Msn::new(spec, m, 0.0, varmap, device)?),
        MethodSpec::Pmsn(m) => Box::new(msn::Msn::new(spec, &m.msn(), m.power, varmap, device)?),
        MethodSpec::Mae(m) => Box::new(mae::Mae::new(spec, m, varmap, device)?),
        MethodSpec::Simmim(m) => Box::new(simmim::SimMim::new(spec, m, varmap, device)?),
        MethodSpec::Registered(m) => {
            let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
            let build = registered.get(m.name.as_str()).ok_or_else(|| {
                crate::EngineError::Data(format!(
                    "no method `{}` is registered with the engine",
                    m.name
                ))
            })?;
            build(spec, &m.settings, varmap, device)?
        }
    })
}

/// Each row scaled to unit L2 norm. `t`: (N, d).
pub fn l2_normalize(t: &Tensor) -> candle_core::Result<Tensor> {
    t.broadcast_div(&(t.sqr()?.sum_keepdim(candle_core::D::Minus1)? + 1e-12)?.sqrt()?)
}

/// Both views through the encoder in one pass (BatchNorm sees the 2N images
/// together): the last layer's output per view, and the first view's
/// backbone features for the online probe.
pub fn two_view_forward(
    encoder: &Encoder,
    views: &[Tensor],
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let n = views[0].dim(0)?;
    let layers = encoder.forward_layers(&Tensor::cat(&[&views[0], &views[1]], 0)?, true)?;
    let z = layers.last().expect("the backbone is always a layer");
    Ok((
        z.narrow(0, 0, n)?,
        z.narrow(0, n, n)?,
        layers[0].narrow(0, 0, n)?,
    ))
}

/// Every loss against PyTorch on fixed inputs (values and gradients, from
/// `bench/reference/losses.py`), and against central finite differences.
#[cfg(test)]
mod reference_tests {
    use candle_core::{Device, Var};

    use super::*;

    /// (z1, z2, prototypes) → loss.
    type LossFn = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

    const CASES: [(&str, LossFn); 16] = [
        ("simclr_t05", |a, b, _| simclr::nt_xent(a, b, 0.5)),
        ("vicreg", |a, b, _| {
            vicreg::vicreg_loss(a, b, 25.0, 25.0, 1.0)
        }),
        ("vicreg_10_25_2", |a, b, _| {
            vicreg::vicreg_loss(a, b, 10.0, 25.0, 2.0)
        }),
        ("barlow", |a, b, _| barlow::barlow_loss(a, b, 5e-3)),
        ("byol", |a, b, _| byol::regression_loss(a, b)),
        ("simsiam", |a, b, _| simsiam::negative_cosine(a, b)),
        ("mocov3_t02", |a, b, _| mocov3::contrastive_loss(a, b, 0.2)),
        ("simclr_single_t05", |a, b, _| {
            simclr::single_negative(a, b, 0.5)
        }),
        ("dino", |a, b, p| {
            let cos = |z: &Tensor| prototypes::cosine_scores(z, p);
            let k = p.dim(0)?;
            let center: Vec<f64> = (0..k).map(|i| 0.05 * i as f64).collect();
            let center = Tensor::from_vec(center, (1, k), a.device())?;
            dino::dino_loss(
                &[cos(a)?, cos(b)?],
                &[cos(b)?, cos(&b.sqr()?)?],
                &center,
                0.1,
                0.04,
            )
        }),
        ("swav", |a, b, p| {
            let cos = |z: &Tensor| prototypes::cosine_scores(z, p);
            let codes = [
                swav::sinkhorn(&cos(b)?, 0.05, 3)?,
                swav::sinkhorn(&cos(&b.sqr()?)?, 0.05, 3)?,
            ];
            prototypes::cross_view_loss(&[(cos(a)? / 0.1)?, (cos(b)? / 0.1)?], &codes)
        }),
        ("msn", |a, b, p| msn_case(a, b, p, 0.0, 0)),
        ("msn_sinkhorn", |a, b, p| msn_case(a, b, p, 0.0, 3)),
        ("pmsn_025", |a, b, p| msn_case(a, b, p, 0.25, 0)),
        ("mae", |a, b, _| {
            mae::mae_loss(&a.unsqueeze(0)?, &b.unsqueeze(0)?, false)
        }),
        ("mae_norm_pix", |a, b, _| {
            mae::mae_loss(&a.unsqueeze(0)?, &b.unsqueeze(0)?, true)
        }),
        ("simmim", |a, b, _| {
            let mask = Tensor::new(&[1f64, 0., 1., 1., 0., 0., 1., 0.], a.device())?;
            simmim::simmim_loss(
                &a.unsqueeze(0)?,
                &b.unsqueeze(0)?,
                &mask.reshape((1, 8, 1))?,
            )
        }),
    ];

    /// Two anchor views [a, a²] against the target b.
    fn msn_case(
        a: &Tensor,
        b: &Tensor,
        p: &Tensor,
        power: f64,
        sinkhorn_iterations: usize,
    ) -> candle_core::Result<Tensor> {
        let cos = |z: &Tensor| prototypes::cosine_scores(z, p);
        let k = p.dim(0)?;
        let log_prior: Vec<f64> = msn::power_law_prior(k, power)
            .iter()
            .map(|v| v.ln())
            .collect();
        let log_prior = Tensor::from_vec(log_prior, (1, k), a.device())?;
        let anchor = Tensor::cat(&[cos(a)?, cos(&a.sqr()?)?], 0)?;
        let how = msn::MsnLoss {
            temperature: 0.1,
            sharpen: 0.25,
            weight: 1.0,
            sinkhorn_iterations,
        };
        msn::msn_loss(&anchor, &cos(b)?, &log_prior, how)
    }

    fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor {
        let (n, d) = (rows.len(), rows[0].len());
        Tensor::from_vec(rows.concat(), (n, d), &Device::Cpu).unwrap()
    }

    fn value(f: LossFn, z1: &Tensor, z2: &Tensor, p: &Tensor) -> f64 {
        f(z1, z2, p).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn losses_and_gradients_match_pytorch_and_finite_differences() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("testdata/losses.json")).unwrap();
        let z1 = matrix(&data["z1"]);
        let z2 = tensor(&matrix(&data["z2"]));
        let protos = tensor(&matrix(&data["protos"]));
        for (name, f) in CASES {
            let want = data[name]["value"].as_f64().unwrap();
            let want_grad = matrix(&data[name]["grad_z1"]);
            let var = Var::from_tensor(&tensor(&z1)).unwrap();
            let loss = f(var.as_tensor(), &z2, &protos).unwrap();
            let got = loss.to_scalar::<f64>().unwrap();
            assert!(
                (got - want).abs() < 1e-9 * want.abs().max(1.0),
                "{name}: {got} vs PyTorch {want}"
            );
            let grads = loss.backward().unwrap();
            let grad: Vec<Vec<f64>> = grads.get(&var).unwrap().to_vec2().unwrap();
            let h = 1e-6;
            for i in 0..z1.len() {
                for j in 0..z1[0].len() {
                    assert!(
                        (grad[i][j] - want_grad[i][j]).abs() < 1e-8,
                        "{name} ∂/∂z1[{i}][{j}]: {} vs PyTorch {}",
                        grad[i][j],
                        want_grad[i][j]
                    );
                    let mut plus = z1.clone();
                    plus[i][j] += h;
                    let mut minus = z1.clone();
                    minus[i][j] -= h;
                    let fd = (value(f, &tensor(&plus), &z2, &protos)
                        - value(f, &tensor(&minus), &z2, &protos))
                        / (2.0 * h);
                    assert!(
                        (grad[i][j] - fd).abs() < 1e-5 * fd.abs().max(1.0),
                        "{name} ∂/∂z1[{i}][{j}]: autograd {} vs finite difference {fd}",
                        grad[i][j]
                    );
                }
            }
        }
        assert!(data["torch_version"].is_string());
    }

    #[test]
    fn closed_forms() {
        let dev = Device::Cpu;
        // Identical views: no invariance term; BYOL and SimSiam at their floors.
        let z = Tensor::new(
            &[
                [1.0f64, 2.0, 0.0],
                [0.0, 1.0, 3.0],
                [2.0, 0.0, 1.0],
                [1.0, 1.0, 1.0],
            ],
            &dev,
        )
        .unwrap();
        let byol = byol::regression_loss(&z, &z)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(byol.abs() < 1e-12);
        let simsiam = simsiam::negative_cosine(&z, &z)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((simsiam + 1.0).abs() < 1e-12);
        let only_inv = vicreg::vicreg_loss(&z, &(&z + 1.0).unwrap(), 1.0, 0.0, 0.0).unwrap();
        assert!(
            (only_inv.to_scalar::<f64>().unwrap() - 1.0).abs() < 1e-12,
            "MSE of a shift by 1"
        );
        // Barlow: perfectly correlated, decorrelated dimensions give C = I → 0.
        let w = Tensor::new(
            &[[1.0f64, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]],
            &dev,
        )
        .unwrap();
        let b = barlow::barlow_loss(&w, &w, 5e-3)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(b < 1e-4, "{b}");
    }
}

/// Every method trains on tiny data: the loss falls, every trainable
/// parameter gets a finite gradient, the embedding does not collapse.
#[cfg(test)]
mod behaviour_tests {
    use candle_core::DType;
    use sslab_shared::RunSpec;
    use sslab_shared::spec::{DataSpec, ScenesSpec};

    fn valid(spec: &RunSpec) -> sslab_shared::ValidSpec {
        spec.clone().into_valid().unwrap()
    }

    use super::*;
    use crate::optim::Optimizer;

    fn spec(method: &str) -> RunSpec {
        let mut s = RunSpec::default();
        s.method = MethodSpec::from_name(method).unwrap();
        s.data = DataSpec::Scenes(ScenesSpec {
            classes: 4,
            train_images: 64,
            test_images: 16,
            ..ScenesSpec::default()
        });
        s.backbone.width = 8;
        s.projector.dims = "64-32".parse().expect("widths");
        s.optimizer.batch_size = 32;
        s.optimizer.lr = 3e-3;
        s.seed = 4;
        // DINO runs on a ViT here too, so that its local views meet the
        // resized position embeddings; the methods that mask need one.
        if s.method.needs_vit() || method == "dino" {
            s.backbone = sslab_shared::spec::BackboneSpec {
                kind: sslab_shared::spec::BackboneKind::Vit,
                width: 16,
                depth: 2,
                heads: 2,
                patch_size: 8,
                ..Default::default()
            };
        }
        if s.method.takes_local_views() {
            s.augment.local_views = 2;
        }
        match &mut s.method {
            MethodSpec::Dino(m) => m.prototypes = 64,
            MethodSpec::Swav(m) => m.prototypes = 64,
            MethodSpec::Msn(m) => m.prototypes = 64,
            MethodSpec::Pmsn(m) => m.prototypes = 64,
            MethodSpec::Mae(m) => m.decoder_width = 16,
            _ => {}
        }
        s.fit_model_to_method();
        s.validate().unwrap();
        s
    }

    #[test]
    fn every_method_lowers_its_loss_with_finite_gradients_and_no_collapse() {
        let device = Device::Cpu;
        for name in MethodSpec::NAMES {
            let mut spec = spec(name);
            if name == "byol" {
                // BYOL's usual optimiser: LARS, here with gradient clipping too.
                spec.optimizer.kind = sslab_shared::spec::OptimizerKind::Lars;
                spec.optimizer.lr = 1.0;
                spec.optimizer.grad_clip = 5.0;
            }
            let splits = crate::data::load(&spec.data).unwrap();
            let (encoder, varmap) = crate::model::build(&valid(&spec), &device).unwrap();
            let mut method = build(&valid(&spec), &varmap, &device).unwrap();
            let mut optimizer = Optimizer::new(&spec.optimizer, &varmap).unwrap();
            let idx: Vec<usize> = (0..32).collect();
            let s = spec.data.image_size();
            let mut losses = Vec::new();
            for step in 0..12 {
                // The same two batches again and again: the loss must fall.
                let views = crate::train::batch_tensors(
                    &spec,
                    &splits.train,
                    &idx,
                    step % 2,
                    method.global_views(),
                    &device,
                )
                .unwrap();
                let at = StepInfo {
                    // Masks too repeat with the batches.
                    step: step % 2,
                    total_steps: 12,
                    steps_per_epoch: 1,
                    seed: spec.seed,
                };
                let out = method.loss(&encoder, &views, &at).unwrap();
                let loss = out.loss.to_scalar::<f32>().unwrap();
                assert!(loss.is_finite(), "{name}: loss {loss} at step {step}");
                losses.push(loss);
                let mut grads = crate::ops::backward(&out.loss).unwrap();
                if spec.optimizer.grad_clip > 0.0 {
                    let vars = crate::optim::trainable(&varmap);
                    crate::optim::clip_grad_norm(&mut grads, &vars, spec.optimizer.grad_clip)
                        .unwrap();
                }
                if step == 0 {
                    let data = varmap.data().lock().unwrap();
                    for (var_name, var) in data.iter().filter(|(n, _)| !n.contains("running_")) {
                        let g = grads
                            .get(var)
                            .unwrap_or_else(|| panic!("{name}: no gradient reaches {var_name}"));
                        let g: Vec<f32> = g
                            .flatten_all()
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap()
                            .to_vec1()
                            .unwrap();
                        assert!(
                            g.iter().all(|x| x.is_finite()),
                            "{name}: non-finite gradient in {var_name}"
                        );
                    }
                }
                optimizer.step(&grads).unwrap();
                method.after_step(&at).unwrap();
            }
            let first = (losses[0] + losses[1]) / 2.0;
            let last = (losses[10] + losses[11]) / 2.0;
            assert!(last < first, "{name}: loss did not fall: {losses:?}");
            // Per-dimension spread of the backbone embedding on held-out images.
            let test: Vec<usize> = (0..16).collect();
            let mut pixels = vec![0f32; 16 * 3 * s * s];
            for (k, chunk) in pixels.chunks_mut(3 * s * s).enumerate() {
                crate::augment::plain(&splits.test, test[k], chunk);
            }
            let x = Tensor::from_vec(pixels, (16, 3, s, s), &device).unwrap();
            let h = &encoder.forward_layers(&x, false).unwrap()[0];
            let centred = h.broadcast_sub(&h.mean_keepdim(0).unwrap()).unwrap();
            let std: Vec<f32> = centred
                .sqr()
                .unwrap()
                .mean(0)
                .unwrap()
                .sqrt()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mean_std = std.iter().sum::<f32>() / std.len() as f32;
            assert!(
                mean_std > 1e-3,
                "{name}: the embedding collapsed (mean per-dimension std {mean_std})"
            );
        }
    }
}
