//! The SSL method and its hyper-parameters: one settings type per method,
//! each with its defaults and its own checks.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::*;
use crate::error::SpecError;

/// The SSL method and its hyper-parameters, tagged by `name`: one of the
/// built-in methods, or one added at run time with [`register_method`].
// `remote = "Self"` derives the built-ins' serde as inherent functions; the
// trait impls below add the registered methods around them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "name", rename_all = "snake_case")]
pub enum MethodSpec {
    Simclr(SimclrSpec),
    Vicreg(VicregSpec),
    Barlow(BarlowSpec),
    Byol(ByolSpec),
    Mocov3(Mocov3Spec),
    Simsiam(SimsiamSpec),
    Dino(DinoSpec),
    Swav(SwavSpec),
    Msn(MsnSpec),
    Pmsn(PmsnSpec),
    Mae(MaeSpec),
    Simmim(SimmimSpec),
    #[serde(skip)]
    Registered(RegisteredMethod),
}

/// A method added with [`register_method`]: its name and its settings as
/// written, which the method itself reads (and its check has checked).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegisteredMethod {
    pub name: String,
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// Checks a registered method's settings; errors name `method.<field>`.
pub type SettingsCheck = fn(&Map<String, Value>) -> Result<(), SpecError>;

static REGISTERED: RwLock<BTreeMap<String, SettingsCheck>> = RwLock::new(BTreeMap::new());

/// Lets specs name a method this crate does not know, with the check of its
/// settings. The engine's `method::register` calls it beside its builder.
/// A built-in name cannot be taken.
pub fn register_method(name: &str, settings_check: SettingsCheck) -> Result<(), String> {
    if MethodSpec::NAMES.contains(&name) {
        return Err(format!("`{name}` is a built-in method"));
    }
    REGISTERED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), settings_check);
    Ok(())
}

fn registered_check(name: &str) -> Option<SettingsCheck> {
    let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    registered.get(name).copied()
}

impl Serialize for MethodSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MethodSpec::Registered(m) => m.serialize(s),
            builtin => MethodSpec::serialize(builtin, s),
        }
    }
}

impl<'de> Deserialize<'de> for MethodSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MethodVisitor)
    }
}

/// Reads `name` first-hand, so that an unknown one is reported at
/// `method.name`; the rest goes to the named method's settings.
struct MethodVisitor;

impl<'de> Visitor<'de> for MethodVisitor {
    type Value = MethodSpec;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a method: its `name` and its settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MethodSpec, A::Error> {
        let mut name = None;
        let mut settings = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "name" {
                name = Some(map.next_value_seed(KnownName)?);
            } else {
                settings.insert(key, map.next_value()?);
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        if registered_check(&name).is_some() {
            return Ok(MethodSpec::Registered(RegisteredMethod { name, settings }));
        }
        settings.insert("name".into(), Value::String(name));
        MethodSpec::deserialize(Value::Object(settings)).map_err(de::Error::custom)
    }
}

/// A method name that is built in or registered.
struct KnownName;

impl<'de> DeserializeSeed<'de> for KnownName {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let name = String::deserialize(d)?;
        if MethodSpec::NAMES.contains(&name.as_str()) || registered_check(&name).is_some() {
            return Ok(name);
        }
        let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
        let all: Vec<String> = (MethodSpec::NAMES.iter().map(|n| n.to_string()))
            .chain(registered.keys().cloned())
            .map(|n| format!("`{n}`"))
            .collect();
        Err(de::Error::custom(format!(
            "unknown variant `{name}`, expected one of {}",
            all.join(", ")
        )))
    }
}

/// SimCLR (arXiv:2002.05709): NT-Xent over two augmented views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimclrSpec {
    /// Softmax temperature; 0.5 at CIFAR scale, 0.1–0.2 on ImageNet.
    pub temperature: f64,
    /// `all`: every other view in the batch is a negative (NT-Xent);
    /// `single`: each positive pair meets one negative only (arXiv:2303.01986).
    pub negatives: Negatives,
}

impl Default for SimclrSpec {
    fn default() -> Self {
        SimclrSpec {
            temperature: 0.5,
            negatives: Negatives::All,
        }
    }
}

impl SimclrSpec {
    fn validate(&self) -> Result<(), SpecError> {
        temperature("method.temperature", self.temperature)
    }
}

/// Which negatives SimCLR contrasts each positive pair with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Negatives {
    #[default]
    All,
    Single,
}

/// VICReg (Bardes et al. 2022, arXiv:2105.04906): invariance, variance and
/// covariance terms on the projector output of the two views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VicregSpec {
    /// λ, weight of the mean squared distance between the views.
    pub invariance: f64,
    /// μ, weight of the hinge on each dimension's standard deviation.
    pub variance: f64,
    /// ν, weight of the squared off-diagonal covariances.
    pub covariance: f64,
}

impl Default for VicregSpec {
    fn default() -> Self {
        VicregSpec {
            invariance: 25.0,
            variance: 25.0,
            covariance: 1.0,
        }
    }
}

impl VicregSpec {
    fn validate(&self) -> Result<(), SpecError> {
        weight("method.invariance", self.invariance)?;
        weight("method.variance", self.variance)?;
        weight("method.covariance", self.covariance)
    }
}

/// Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): the
/// cross-correlation of the two views pushed to the identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BarlowSpec {
    /// Weight of the off-diagonal terms; 5e-3 in the paper (or 1/d).
    pub lambda_offdiag: f64,
}

impl Default for BarlowSpec {
    fn default() -> Self {
        BarlowSpec {
            lambda_offdiag: 5e-3,
        }
    }
}

impl BarlowSpec {
    fn validate(&self) -> Result<(), SpecError> {
        weight("method.lambda_offdiag", self.lambda_offdiag)
    }
}

/// BYOL (Grill et al. 2020, arXiv:2006.07733): a predictor on the online
/// branch regresses an EMA target's projection of the other view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ByolSpec {
    /// Predictor widths, e.g. "512-128"; the last must equal the
    /// projector's output. Empty: one hidden layer as wide as the
    /// projector's first.
    pub predictor: String,
    /// EMA rate at the start; it rises to 1 along a cosine. 0.99 at
    /// CIFAR scale, 0.996 on ImageNet.
    pub ema_base: f64,
}

impl Default for ByolSpec {
    fn default() -> Self {
        ByolSpec {
            predictor: String::new(),
            ema_base: 0.99,
        }
    }
}

impl ByolSpec {
    fn validate(&self) -> Result<(), SpecError> {
        ema(self.ema_base)
    }
}

/// MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057): InfoNCE between the
/// online predictor and a momentum encoder's projection of the other view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mocov3Spec {
    /// InfoNCE temperature; 0.2 in the paper.
    pub temperature: f64,
    /// Predictor widths, as for BYOL.
    pub predictor: String,
    /// Momentum of the key encoder at the start, rising to 1 along a cosine.
    pub ema_base: f64,
}

impl Default for Mocov3Spec {
    fn default() -> Self {
        Mocov3Spec {
            temperature: 0.2,
            predictor: String::new(),
            ema_base: 0.99,
        }
    }
}

impl Mocov3Spec {
    fn validate(&self) -> Result<(), SpecError> {
        temperature("method.temperature", self.temperature)?;
        ema(self.ema_base)
    }
}

/// SimSiam (Chen & He 2021, arXiv:2011.10566): BYOL without the EMA
/// target, the stop-gradient alone prevents collapse.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimsiamSpec {
    /// Predictor widths; empty: a bottleneck of a quarter of the
    /// projector's output, then back to it.
    pub predictor: String,
}

/// DINO (Caron et al. 2021, arXiv:2104.14294): the student's softmax over
/// prototypes matches an EMA teacher's centred, sharpened one, across
/// global and local crops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DinoSpec {
    /// Output dimension K of the head (65536 on ImageNet, 4096 at CIFAR scale).
    pub prototypes: usize,
    /// τ_s; 0.1.
    pub student_temperature: f64,
    /// τ_t after its warm-up; 0.04–0.07.
    pub teacher_temperature: f64,
    /// τ_t at the start, rising linearly to `teacher_temperature`.
    pub warmup_teacher_temperature: f64,
    /// Length of that warm-up in epochs (30 in the paper); cut to the run's length.
    pub warmup_teacher_epochs: f64,
    /// Momentum of the running centre of the teacher's outputs; 0.9.
    pub center_momentum: f64,
    /// Teacher EMA rate at the start, rising to 1 along a cosine; 0.996.
    pub ema_base: f64,
    /// Epochs at the start during which the last layer (the prototypes)
    /// does not move, which the paper finds steadies the start; 1.
    pub freeze_last_layer_epochs: f64,
}

impl Default for DinoSpec {
    fn default() -> Self {
        DinoSpec {
            prototypes: 4096,
            student_temperature: 0.1,
            teacher_temperature: 0.07,
            warmup_teacher_temperature: 0.04,
            warmup_teacher_epochs: 30.0,
            center_momentum: 0.9,
            ema_base: 0.996,
            freeze_last_layer_epochs: 1.0,
        }
    }
}

impl DinoSpec {
    fn validate(&self, run: &RunSpec) -> Result<(), SpecError> {
        prototypes(self.prototypes)?;
        frozen(
            "method.freeze_last_layer_epochs",
            self.freeze_last_layer_epochs,
            run,
        )?;
        temperature("method.student_temperature", self.student_temperature)?;
        temperature("method.teacher_temperature", self.teacher_temperature)?;
        temperature(
            "method.warmup_teacher_temperature",
            self.warmup_teacher_temperature,
        )?;
        let warmup = self.warmup_teacher_epochs;
        if !(warmup >= 0.0 && warmup.is_finite()) {
            return bad(
                "method.warmup_teacher_epochs",
                format!("must be 0 or more, got {warmup}"),
            );
        }
        if !(0.0..1.0).contains(&self.center_momentum) {
            return bad(
                "method.center_momentum",
                format!("must be in [0, 1), got {}", self.center_momentum),
            );
        }
        ema(self.ema_base)
    }
}

/// SwAV (Caron et al. 2020, arXiv:2006.09882): Sinkhorn-Knopp codes over
/// prototypes, each view predicting the other's code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwavSpec {
    /// Number of prototypes; 3000.
    pub prototypes: usize,
    /// Softmax temperature of the predictions; 0.1.
    pub temperature: f64,
    /// Entropic regularisation ε of Sinkhorn-Knopp; 0.05.
    pub epsilon: f64,
    /// Sinkhorn-Knopp iterations; 3.
    pub sinkhorn_iterations: usize,
    /// Epochs at the start during which the prototypes do not move; 1.
    pub freeze_prototypes_epochs: f64,
    /// Features of past batches kept per global view and scored with
    /// each batch before Sinkhorn-Knopp, so that batches far below 256
    /// still get balanced codes; 0 (the default) keeps none, 3840 at
    /// CIFAR scale. At least the batch size.
    pub queue_size: usize,
    /// Epoch from which the queue fills; it takes part once full. 0.
    pub queue_starts_epoch: f64,
}

impl Default for SwavSpec {
    fn default() -> Self {
        SwavSpec {
            prototypes: 3000,
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iterations: 3,
            freeze_prototypes_epochs: 1.0,
            queue_size: 0,
            queue_starts_epoch: 0.0,
        }
    }
}

impl SwavSpec {
    fn validate(&self, run: &RunSpec) -> Result<(), SpecError> {
        prototypes(self.prototypes)?;
        frozen(
            "method.freeze_prototypes_epochs",
            self.freeze_prototypes_epochs,
            run,
        )?;
        frozen("method.queue_starts_epoch", self.queue_starts_epoch, run)?;
        let batch = run.optimizer.batch_size;
        let queue = self.queue_size;
        if queue != 0 && !(batch..=65_536).contains(&queue) {
            return bad(
                "method.queue_size",
                format!(
                    "must be 0 (no queue) or between the batch size {batch} and 65536, got {queue}"
                ),
            );
        }
        temperature("method.temperature", self.temperature)?;
        if !(self.epsilon > 0.0 && self.epsilon <= 10.0) {
            return bad(
                "method.epsilon",
                format!("must be in (0, 10], got {}", self.epsilon),
            );
        }
        if !(1..=100).contains(&self.sinkhorn_iterations) {
            return bad(
                "method.sinkhorn_iterations",
                format!(
                    "must be between 1 and 100, got {}",
                    self.sinkhorn_iterations
                ),
            );
        }
        Ok(())
    }
}

/// MSN (Assran et al. 2022, arXiv:2204.07141): an anchor view with patches
/// dropped matches an EMA target's sharpened prototype assignment of an
/// unmasked view; me-max keeps every prototype in use. ViT only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MsnSpec {
    /// Number of learnable prototypes K; 1024.
    pub prototypes: usize,
    /// Anchor softmax temperature; 0.1.
    pub temperature: f64,
    /// Target sharpening T (p^(1/T)); 0.25.
    pub sharpen: f64,
    /// λ of the mean-entropy maximisation; 1.
    pub me_max_weight: f64,
    /// Fraction of the anchor's patches dropped; 0.15 in the paper, 0.6–0.7 elsewhere.
    pub mask_ratio: f64,
    /// Target EMA rate at the start, rising to 1 along a cosine; 0.996.
    pub ema_base: f64,
    /// Sinkhorn-Knopp iterations that balance the targets over the
    /// prototypes; 3 as the authors' configuration, 0 switches it off.
    pub sinkhorn_iterations: usize,
}

impl Default for MsnSpec {
    fn default() -> Self {
        MsnSpec {
            prototypes: 1024,
            temperature: 0.1,
            sharpen: 0.25,
            me_max_weight: 1.0,
            mask_ratio: 0.15,
            ema_base: 0.996,
            sinkhorn_iterations: 3,
        }
    }
}

impl MsnSpec {
    fn validate(&self) -> Result<(), SpecError> {
        prototypes(self.prototypes)?;
        temperature("method.temperature", self.temperature)?;
        if !(self.sharpen > 0.0 && self.sharpen <= 1.0) {
            return bad(
                "method.sharpen",
                format!("must be in (0, 1], got {}", self.sharpen),
            );
        }
        weight("method.me_max_weight", self.me_max_weight)?;
        mask_ratio(self.mask_ratio)?;
        ema(self.ema_base)?;
        if self.sinkhorn_iterations > 100 {
            return bad(
                "method.sinkhorn_iterations",
                format!(
                    "must be between 0 and 100, got {}",
                    self.sinkhorn_iterations
                ),
            );
        }
        Ok(())
    }
}

/// PMSN (Assran et al. 2022, arXiv:2210.07277): MSN with a power-law prior
/// π_k ∝ k^(−power) in place of the uniform one, regulariser λ·KL(p̄‖π).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PmsnSpec {
    pub prototypes: usize,
    pub temperature: f64,
    pub sharpen: f64,
    /// λ of KL(p̄‖π); 1.
    pub me_max_weight: f64,
    pub mask_ratio: f64,
    pub ema_base: f64,
    /// Exponent τ of the prior; 0.25. 0 is MSN.
    pub power: f64,
    /// As MSN's, but 0 by default: balancing the targets uniformly
    /// works against the power-law prior.
    pub sinkhorn_iterations: usize,
}

impl Default for PmsnSpec {
    fn default() -> Self {
        let msn = MsnSpec::default();
        PmsnSpec {
            prototypes: msn.prototypes,
            temperature: msn.temperature,
            sharpen: msn.sharpen,
            me_max_weight: msn.me_max_weight,
            mask_ratio: msn.mask_ratio,
            ema_base: msn.ema_base,
            power: 0.25,
            sinkhorn_iterations: 0,
        }
    }
}

impl PmsnSpec {
    /// The settings PMSN shares with MSN.
    pub fn msn(&self) -> MsnSpec {
        MsnSpec {
            prototypes: self.prototypes,
            temperature: self.temperature,
            sharpen: self.sharpen,
            me_max_weight: self.me_max_weight,
            mask_ratio: self.mask_ratio,
            ema_base: self.ema_base,
            sinkhorn_iterations: self.sinkhorn_iterations,
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        self.msn().validate()?;
        if !(0.0..=10.0).contains(&self.power) {
            return bad(
                "method.power",
                format!("must be in [0, 10], got {}", self.power),
            );
        }
        Ok(())
    }
}

/// MAE (He et al. 2022, arXiv:2111.06377): the ViT encodes the visible
/// patches only; a light decoder fills in mask tokens and regresses the
/// masked patches' pixels. ViT only, no projector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaeSpec {
    /// Fraction of patches masked; 0.75.
    pub mask_ratio: f64,
    /// Decoder width (512 in the paper).
    pub decoder_width: usize,
    /// Decoder blocks (8 in the paper).
    pub decoder_depth: usize,
    /// Decoder attention heads (16 in the paper).
    pub decoder_heads: usize,
    /// Regress each patch's pixels normalised by the patch's own mean and std.
    pub norm_pix_loss: bool,
}

impl Default for MaeSpec {
    fn default() -> Self {
        MaeSpec {
            mask_ratio: 0.75,
            decoder_width: 128,
            decoder_depth: 2,
            decoder_heads: 4,
            norm_pix_loss: true,
        }
    }
}

impl MaeSpec {
    fn validate(&self) -> Result<(), SpecError> {
        mask_ratio(self.mask_ratio)?;
        let (width, depth, heads) = (self.decoder_width, self.decoder_depth, self.decoder_heads);
        if !(1..=4096).contains(&width) {
            return bad(
                "method.decoder_width",
                format!("must be between 1 and 4096, got {width}"),
            );
        }
        if !(1..=32).contains(&depth) {
            return bad(
                "method.decoder_depth",
                format!("must be between 1 and 32, got {depth}"),
            );
        }
        if heads == 0 || width % heads != 0 {
            return bad(
                "method.decoder_heads",
                format!("must divide the decoder width {width}, got {heads}"),
            );
        }
        Ok(())
    }
}

/// SimMIM (Xie et al. 2022, arXiv:2111.09886): masked patches replaced by a
/// learned token at the encoder's input, a linear head regresses their
/// raw pixels with an L1 loss. ViT only, no projector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimmimSpec {
    /// Fraction of patches masked; 0.6.
    pub mask_ratio: f64,
}

impl Default for SimmimSpec {
    fn default() -> Self {
        SimmimSpec { mask_ratio: 0.6 }
    }
}

impl Default for MethodSpec {
    fn default() -> Self {
        MethodSpec::Simclr(SimclrSpec::default())
    }
}

impl MethodSpec {
    pub fn name(&self) -> &str {
        match self {
            MethodSpec::Simclr(_) => "simclr",
            MethodSpec::Vicreg(_) => "vicreg",
            MethodSpec::Barlow(_) => "barlow",
            MethodSpec::Byol(_) => "byol",
            MethodSpec::Mocov3(_) => "mocov3",
            MethodSpec::Simsiam(_) => "simsiam",
            MethodSpec::Dino(_) => "dino",
            MethodSpec::Swav(_) => "swav",
            MethodSpec::Msn(_) => "msn",
            MethodSpec::Pmsn(_) => "pmsn",
            MethodSpec::Mae(_) => "mae",
            MethodSpec::Simmim(_) => "simmim",
            MethodSpec::Registered(m) => &m.name,
        }
    }

    /// Methods that drop or mask patches and so need a ViT.
    pub fn needs_vit(&self) -> bool {
        matches!(
            self,
            MethodSpec::Msn(_) | MethodSpec::Pmsn(_) | MethodSpec::Mae(_) | MethodSpec::Simmim(_)
        )
    }

    /// Methods that reconstruct pixels and train no projector.
    pub fn reconstructs(&self) -> bool {
        matches!(self, MethodSpec::Mae(_) | MethodSpec::Simmim(_))
    }

    /// Methods that read local (multi-crop) views.
    pub fn takes_local_views(&self) -> bool {
        matches!(
            self,
            MethodSpec::Dino(_) | MethodSpec::Swav(_) | MethodSpec::Msn(_) | MethodSpec::Pmsn(_)
        )
    }

    /// The method with its defaults, by name.
    pub fn from_name(name: &str) -> Option<MethodSpec> {
        serde_json::from_value(serde_json::json!({ "name": name })).ok()
    }

    pub const NAMES: [&'static str; 12] = [
        "simclr", "vicreg", "barlow", "byol", "mocov3", "simsiam", "swav", "dino", "msn", "pmsn",
        "mae", "simmim",
    ];

    /// The predictor's layer widths for a projector output of `out`, or
    /// `None` for methods without a predictor.
    pub fn predictor_dims(
        &self,
        first_hidden: Option<usize>,
        out: usize,
    ) -> Option<Result<Vec<usize>, String>> {
        let (text, default) = match self {
            MethodSpec::Byol(ByolSpec { predictor, .. })
            | MethodSpec::Mocov3(Mocov3Spec { predictor, .. }) => {
                (predictor, vec![first_hidden.unwrap_or(4 * out), out])
            }
            MethodSpec::Simsiam(SimsiamSpec { predictor }) => {
                (predictor, vec![(out / 4).max(1), out])
            }
            _ => return None,
        };
        if text.trim().is_empty() {
            return Some(Ok(default));
        }
        let dims = text.parse::<Dims>().map(|d| d.as_slice().to_vec());
        Some(dims.and_then(|d| match d.last() {
            Some(&last) if last == out => Ok(d),
            Some(&last) => Err(format!(
                "the predictor must end at the projector's output width {out}, not {last}"
            )),
            None => Err("give the predictor's widths, e.g. \"512-128\"".into()),
        }))
    }

    /// The method's own checks; `run` for those that depend on the run's
    /// length or batch.
    pub fn validate(&self, run: &RunSpec) -> Result<(), SpecError> {
        match self {
            MethodSpec::Simclr(m) => m.validate(),
            MethodSpec::Vicreg(m) => m.validate(),
            MethodSpec::Barlow(m) => m.validate(),
            MethodSpec::Byol(m) => m.validate(),
            MethodSpec::Mocov3(m) => m.validate(),
            MethodSpec::Simsiam(_) => Ok(()),
            MethodSpec::Dino(m) => m.validate(run),
            MethodSpec::Swav(m) => m.validate(run),
            MethodSpec::Msn(m) => m.validate(),
            MethodSpec::Pmsn(m) => m.validate(),
            MethodSpec::Mae(m) => m.validate(),
            MethodSpec::Simmim(m) => mask_ratio(m.mask_ratio),
            MethodSpec::Registered(m) => match registered_check(&m.name) {
                Some(settings_check) => settings_check(&m.settings),
                None => bad(
                    "method.name",
                    format!("no method `{}` is registered", m.name),
                ),
            },
        }
    }
}

/// A loss weight.
fn weight(field: &str, v: f64) -> Result<(), SpecError> {
    if (0.0..=1e4).contains(&v) {
        Ok(())
    } else {
        bad(field, format!("must be in [0, 10000], got {v}"))
    }
}

fn temperature(field: &str, t: f64) -> Result<(), SpecError> {
    if t > 0.0 && t <= 10.0 {
        Ok(())
    } else {
        bad(field, format!("must be in (0, 10], got {t}"))
    }
}

fn ema(v: f64) -> Result<(), SpecError> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        bad("method.ema_base", format!("must be in [0, 1), got {v}"))
    }
}

/// Epochs at the start of the run during which something stays still.
fn frozen(field: &str, epochs: f64, run: &RunSpec) -> Result<(), SpecError> {
    let total = run.schedule.epochs;
    if epochs >= 0.0 && epochs <= total as f64 {
        Ok(())
    } else {
        bad(
            field,
            format!("must be between 0 and the run's {total} epochs, got {epochs}"),
        )
    }
}

fn prototypes(k: usize) -> Result<(), SpecError> {
    if (2..=65536).contains(&k) {
        Ok(())
    } else {
        bad(
            "method.prototypes",
            format!("must be between 2 and 65536, got {k}"),
        )
    }
}

fn mask_ratio(r: f64) -> Result<(), SpecError> {
    if r > 0.0 && r < 1.0 {
        Ok(())
    } else {
        bad(
            "method.mask_ratio",
            format!("is the fraction of patches masked, must be in (0, 1), got {r}"),
        )
    }
}
