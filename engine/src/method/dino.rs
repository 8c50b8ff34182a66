//! DINO (Caron et al. 2021, arXiv:2104.14294; facebookresearch/dino): the
//! student's softmax over K prototypes, at temperature τ_s, matches the EMA
//! teacher's centred and sharpened softmax (τ_t, warmed up from a lower
//! value) of the other global crops; local crops go through the student only.

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::ValidSpec;
use sslab_shared::spec::DinoSpec;

use super::ema::EmaTarget;
use super::prototypes::{Prototypes, cross_view_loss, scores_per_view};
use super::{Method, StepInfo, StepLoss};
use crate::model::Encoder;

pub struct Dino {
    prototypes: Prototypes,
    target: EmaTarget,
    target_prototypes: Prototypes,
    /// (1, K) running mean of the teacher's outputs.
    center: Tensor,
    /// This step's teacher batch mean, folded into the centre after the step.
    batch_center: Option<Tensor>,
    student_temperature: f64,
    teacher_temperature: f64,
    warmup_teacher_temperature: f64,
    warmup_teacher_epochs: f64,
    center_momentum: f64,
    epochs: usize,
    freeze_epochs: f64,
}

impl Dino {
    pub fn new(
        spec: &ValidSpec,
        settings: &DinoSpec,
        online: &VarMap,
        device: &Device,
    ) -> crate::Result<Self> {
        let DinoSpec {
            prototypes,
            student_temperature,
            teacher_temperature,
            warmup_teacher_temperature,
            warmup_teacher_epochs,
            center_momentum,
            ema_base,
            freeze_last_layer_epochs,
        } = *settings;
        let d = spec.embedding_dim();
        let vb = VarBuilder::from_varmap(online, candle_core::DType::F32, device);
        let online_prototypes = Prototypes::new(prototypes, d, vb.pp("prototypes"))?;
        crate::model::seed_weights_under(online, "prototypes.", spec.seed ^ 0xD1A0)?;
        let target = EmaTarget::new(spec, online, device, ema_base)?;
        let target_prototypes =
            Prototypes::new(prototypes, d, target.var_builder(device).pp("prototypes"))?;
        target.sync()?;
        Ok(Dino {
            prototypes: online_prototypes,
            target,
            target_prototypes,
            center: Tensor::zeros((1, prototypes), candle_core::DType::F32, device)?,
            batch_center: None,
            student_temperature,
            teacher_temperature,
            warmup_teacher_temperature,
            warmup_teacher_epochs,
            center_momentum,
            epochs: spec.schedule.epochs,
            freeze_epochs: freeze_last_layer_epochs,
        })
    }

    /// τ_t at a step: linear from the warm-up value over the warm-up epochs
    /// (cut to the run's length), then constant.
    pub fn teacher_temperature(&self, at: &StepInfo) -> f64 {
        let warmup = self.warmup_teacher_epochs.min(self.epochs as f64) * at.steps_per_epoch as f64;
        if (at.step as f64) < warmup {
            let t = at.step as f64 / warmup;
            self.warmup_teacher_temperature
                + t * (self.teacher_temperature - self.warmup_teacher_temperature)
        } else {
            self.teacher_temperature
        }
    }
}

/// DINO's loss: teacher probabilities softmax((t − c)/τ_t) of each global
/// view against the student's log-softmax(s/τ_s) of every other view.
/// `student`: cosine scores per view, (N, K) each; `teacher`: the global
/// views' teacher scores; `center`: (1, K).
pub fn dino_loss(
    student: &[Tensor],
    teacher: &[Tensor],
    center: &Tensor,
    student_temperature: f64,
    teacher_temperature: f64,
) -> candle_core::Result<Tensor> {
    let targets = teacher
        .iter()
        .map(|t| {
            let centred = (t.detach().broadcast_sub(center)? / teacher_temperature)?;
            candle_nn::ops::softmax(&centred, candle_core::D::Minus1)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let logits = student
        .iter()
        .map(|s| s / student_temperature)
        .collect::<candle_core::Result<Vec<_>>>()?;
    cross_view_loss(&logits, &targets)
}

impl Method for Dino {
    fn frozen(&self, at: &StepInfo) -> Vec<Tensor> {
        if (at.step as f64) < self.freeze_epochs * at.steps_per_epoch as f64 {
            vec![self.prototypes.weight().clone()]
        } else {
            Vec::new()
        }
    }

    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let n = views[0].dim(0)?;
        let (student, features, _) = scores_per_view(encoder, &self.prototypes, views)?;
        let globals = Tensor::cat(&[&views[0], &views[1]], 0)?;
        let t = self
            .target_prototypes
            .cosine(&self.target.forward(&globals)?)?
            .detach();
        let teacher = [t.narrow(0, 0, n)?, t.narrow(0, n, n)?];
        let loss = dino_loss(
            &student,
            &teacher,
            &self.center,
            self.student_temperature,
            self.teacher_temperature(at),
        )?;
        self.batch_center = Some(t.mean_keepdim(0)?);
        Ok(StepLoss { loss, features })
    }

    fn after_step(&mut self, at: &StepInfo) -> candle_core::Result<()> {
        if let Some(batch) = self.batch_center.take() {
            let m = self.center_momentum;
            self.center = ((&self.center * m)? + (batch * (1.0 - m))?)?;
        }
        self.target.update(at)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.target.state();
        out.push(("dino.center".into(), self.center.clone()));
        out
    }

    fn load_state(&mut self, state: &super::State) -> crate::Result<()> {
        self.target.load_state(state)?;
        self.center = super::state_tensor(state, "dino.center")?;
        Ok(())
    }
}
