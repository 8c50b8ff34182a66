//! MSN (Assran et al. 2022, arXiv:2204.07141; facebookresearch/msn) and PMSN
//! (arXiv:2210.07277). Anchor views have a fraction of their patches dropped
//! before the ViT; their softmax over cosine similarities to K learnable
//! prototypes (temperature τ) matches the sharpened assignment p^(1/T) of an
//! unmasked view through the EMA target. A regulariser keeps the batch-mean
//! prediction p̄ close to a prior π: KL(p̄‖π), uniform π for MSN (the
//! me-max term up to a constant), π_k ∝ k^(−power) for PMSN. We use
//! KL(p̄‖π) as stable-pretraining does (lightly computes KL(π‖p̄)). As in
//! the authors' configuration, MSN's targets are balanced over the
//! prototypes by a few Sinkhorn-Knopp iterations (PMSN's are not: a
//! uniform balance would work against its prior).

use candle_core::{D, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::ValidSpec;
use sslab_shared::spec::MsnSpec;

use super::ema::EmaTarget;
use super::prototypes::Prototypes;
use super::{Method, StepInfo, StepLoss};
use crate::model::Encoder;

pub struct Msn {
    prototypes: Prototypes,
    target: EmaTarget,
    /// log π, (1, K).
    log_prior: Tensor,
    weighing: MsnLoss,
    mask_ratio: f64,
}

/// π_k ∝ k^(−power), k = 1…K; power 0 is uniform.
pub fn power_law_prior(k: usize, power: f64) -> Vec<f64> {
    let raw: Vec<f64> = (1..=k).map(|i| (i as f64).powf(-power)).collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|p| p / total).collect()
}

impl Msn {
    pub fn new(
        spec: &ValidSpec,
        settings: &MsnSpec,
        power: f64,
        online: &VarMap,
        device: &Device,
    ) -> crate::Result<Self> {
        let MsnSpec {
            prototypes: k,
            temperature,
            sharpen,
            me_max_weight,
            mask_ratio,
            ema_base,
            sinkhorn_iterations,
        } = *settings;
        let vb = VarBuilder::from_varmap(online, candle_core::DType::F32, device);
        let prototypes = Prototypes::new(k, spec.embedding_dim(), vb.pp("prototypes"))?;
        crate::model::seed_weights_under(online, "prototypes.", spec.seed ^ 0x3517)?;
        let log_prior: Vec<f32> = power_law_prior(k, power)
            .iter()
            .map(|p| p.ln() as f32)
            .collect();
        Ok(Msn {
            prototypes,
            target: EmaTarget::new(spec, online, device, ema_base)?,
            log_prior: Tensor::from_vec(log_prior, (1, k), device)?,
            weighing: MsnLoss {
                temperature,
                sharpen,
                weight: me_max_weight,
                sinkhorn_iterations,
            },
            mask_ratio,
        })
    }
}

/// How the MSN/PMSN loss is weighed: anchor temperature τ, sharpening T,
/// regulariser weight λ, Sinkhorn-Knopp iterations on the targets (0: none).
#[derive(Clone, Copy)]
pub struct MsnLoss {
    pub temperature: f64,
    pub sharpen: f64,
    pub weight: f64,
    pub sinkhorn_iterations: usize,
}

/// The MSN/PMSN loss. `anchor`: (V·N, K) cosine scores of V anchor views,
/// view-major; `target`: (N, K) scores of the target view (no gradient).
/// H(p⁺, p) averaged over anchors + λ·KL(p̄‖π); p⁺ = p^(1/T) normalised,
/// which is softmax(s/(τT)), then balanced when Sinkhorn is on.
pub fn msn_loss(
    anchor: &Tensor,
    target: &Tensor,
    log_prior: &Tensor,
    how: MsnLoss,
) -> candle_core::Result<Tensor> {
    let n = target.dim(0)?;
    let views = anchor.dim(0)? / n;
    let log_p = candle_nn::ops::log_softmax(&(anchor / how.temperature)?, D::Minus1)?;
    let targets = {
        let log_sharp = candle_nn::ops::log_softmax(
            &(target.detach() / (how.temperature * how.sharpen))?,
            D::Minus1,
        )?;
        let sharp = if how.sinkhorn_iterations > 0 {
            super::swav::balance(&log_sharp, how.sinkhorn_iterations)?
        } else {
            log_sharp.exp()?
        };
        Tensor::cat(&vec![&sharp; views], 0)?
    };
    let ce = (targets * &log_p)?.sum(D::Minus1)?.mean_all()?.neg()?;
    let mean_p = log_p.exp()?.mean_keepdim(0)?;
    let kl = (&mean_p * (mean_p.log()?.broadcast_sub(log_prior))?)?.sum_all()?;
    ce + (kl * how.weight)?
}

/// For each image, the sorted indices of `keep` of its `patches` patches,
/// drawn without replacement.
pub fn random_keep(
    images: usize,
    patches: usize,
    keep: usize,
    rng: &mut sslab_shared::rng::Rng,
) -> Vec<Vec<usize>> {
    (0..images)
        .map(|_| {
            let mut all: Vec<usize> = (0..patches).collect();
            rng.shuffle(&mut all);
            let mut kept = all[..keep].to_vec();
            kept.sort_unstable();
            kept
        })
        .collect()
}

/// Patches kept when `ratio` of `patches` are dropped: at least one, and at
/// least one dropped (validation asks for 4 patches or more).
pub fn kept_count(patches: usize, ratio: f64) -> usize {
    let dropped = ((patches as f64 * ratio).round() as usize).clamp(1, patches - 1);
    patches - dropped
}

impl Method for Msn {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let vit = encoder
            .backbone
            .vit()
            .expect("validation admits MSN on a ViT only");
        let n = views[0].dim(0)?;
        let target = self
            .prototypes
            .cosine_detached(&self.target.forward(&views[0])?)?;
        let mut rng = at.rng(0x3A5C);
        let mut scores = Vec::new();
        let mut features = None;
        // Anchors: the second global view, then the local views, each masked.
        for (i, view) in views[1..].iter().enumerate() {
            let side = view.dim(3)? / vit.patch_size();
            let keep = random_keep(
                n,
                side * side,
                kept_count(side * side, self.mask_ratio),
                &mut rng,
            );
            let anchor = vit
                .forward_kept(&view.to_dtype(encoder.compute())?, &keep, true)?
                .to_dtype(candle_core::DType::F32)?;
            let layers = encoder.layers_from(anchor, true)?;
            if i == 0 {
                features = Some(layers[0].clone());
            }
            scores.push(self.prototypes.cosine(layers.last().expect("backbone"))?);
        }
        let loss = msn_loss(
            &Tensor::cat(&scores, 0)?,
            &target,
            &self.log_prior,
            self.weighing,
        )?;
        Ok(StepLoss {
            loss,
            features: features.expect("MSN reads at least two views"),
        })
    }

    fn after_step(&mut self, at: &StepInfo) -> candle_core::Result<()> {
        self.target.update(at)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.target.state()
    }

    fn load_state(&mut self, state: &super::State) -> crate::Result<()> {
        self.target.load_state(state)
    }
}
