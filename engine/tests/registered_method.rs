//! A method that no file of sslab names: alignment and uniformity on the
//! hypersphere (Wang & Isola 2020, arXiv:2005.10242), added through
//! `method::register` alone, named in a spec, checked and trained.

use candle_core::{D, Device, Tensor};
use candle_nn::VarMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use sslab_engine::method::{
    self, Method, Registration, StepInfo, StepLoss, l2_normalize, two_view_forward,
};
use sslab_engine::model::Encoder;
use sslab_engine::train::{self, Control, Observer, Outcome, StepMetrics};
use sslab_shared::{RunSpec, SpecError, ValidSpec};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AlignUniformSpec {
    /// t of the uniformity term log E[exp(−t‖zᵢ − zⱼ‖²)]; 2 in the paper.
    t: f64,
    /// Weight of the uniformity term.
    uniformity: f64,
}

impl Default for AlignUniformSpec {
    fn default() -> Self {
        AlignUniformSpec {
            t: 2.0,
            uniformity: 1.0,
        }
    }
}

fn settings(map: &Map<String, Value>) -> Result<AlignUniformSpec, SpecError> {
    let s: AlignUniformSpec = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|e| SpecError::new("method", e.to_string()))?;
    if !(s.t > 0.0 && s.t <= 10.0) {
        return Err(SpecError::new(
            "method.t",
            format!("must be in (0, 10], got {}", s.t),
        ));
    }
    Ok(s)
}

struct AlignUniform(AlignUniformSpec);

/// log of the mean of exp(−t‖zᵢ − zⱼ‖²) over every pair of rows, z on the sphere.
fn uniformity(z: &Tensor, t: f64) -> candle_core::Result<Tensor> {
    let sq = (2.0 - (z.matmul(&z.t()?)? * 2.0)?)?;
    (sq * -t)?.exp()?.mean_all()?.log()
}

impl Method for AlignUniform {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let (z1, z2, features) = two_view_forward(encoder, views)?;
        let (z1, z2) = (l2_normalize(&z1)?, l2_normalize(&z2)?);
        let align = (&z1 - &z2)?.sqr()?.sum(D::Minus1)?.mean_all()?;
        let spread = ((uniformity(&z1, self.0.t)? + uniformity(&z2, self.0.t)?)? * 0.5)?;
        Ok(StepLoss {
            loss: (align + (spread * self.0.uniformity)?)?,
            features,
        })
    }
}

fn build(
    _spec: &ValidSpec,
    map: &Map<String, Value>,
    _varmap: &VarMap,
    _device: &Device,
) -> sslab_engine::Result<Box<dyn Method>> {
    Ok(Box::new(AlignUniform(settings(map)?)))
}

const SPEC: &str = r#"
name = "align-uniform"
seed = 3
[data]
source = "scenes"
classes = 3
train_images = 96
test_images = 30
[method]
name = "align_uniform"
t = 2.0
[backbone]
kind = "tiny_cnn"
width = 8
[projector]
dims = "32-16"
[optimizer]
batch_size = 16
lr = 0.003
[schedule]
epochs = 2
warmup_epochs = 0.5
[eval]
probes = ["knn"]
knn_k = 5
"#;

struct Losses(Vec<f64>);

impl Observer for Losses {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        self.0.push(m.loss);
        Control::Continue
    }
}

#[test]
fn a_method_registered_alone_is_named_checked_and_trained() {
    let unknown = RunSpec::from_toml(SPEC).unwrap_err();
    assert_eq!(unknown.field, "method.name");
    assert!(unknown.message.contains("unknown variant `align_uniform`"));

    method::register(Registration {
        name: "align_uniform",
        check: |map| settings(map).map(|_| ()),
        build,
    })
    .unwrap();
    assert!(
        method::register(Registration {
            name: "simclr",
            check: |_| Ok(()),
            build,
        })
        .is_err(),
        "a built-in name cannot be taken"
    );

    let bad = RunSpec::from_toml(&SPEC.replace("t = 2.0", "t = 0.0")).unwrap_err();
    assert_eq!(
        (bad.field.as_str(), bad.message.as_str()),
        ("method.t", "must be in (0, 10], got 0")
    );
    let typo = RunSpec::from_toml(&SPEC.replace("t = 2.0", "tt = 2.0")).unwrap_err();
    assert!(typo.message.contains("unknown field `tt`"), "{typo}");

    let spec = RunSpec::from_toml(SPEC).unwrap();
    // Written back and read again, as a stored run is.
    assert_eq!(
        RunSpec::from_json(&serde_json::to_string(&spec).unwrap()).unwrap(),
        spec
    );
    let spec = spec.into_valid().unwrap();
    let splits = sslab_engine::data::load(&spec.data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut losses = Losses(Vec::new());
    let outcome = train::train(
        &spec,
        &splits,
        &Device::Cpu,
        &dir.path().join("checkpoint.safetensors"),
        &mut losses,
    )
    .unwrap();
    let Outcome::Finished { evaluations, .. } = outcome else {
        panic!("the run stopped early")
    };
    assert_eq!(losses.0.len(), 12, "96 images in batches of 16, two epochs");
    assert!(losses.0.iter().all(|l| l.is_finite()), "{:?}", losses.0);
    // Alignment is at least 0 and uniformity at least −4t: the loss is bounded below by −8.
    assert!(losses.0.iter().all(|&l| l > -8.0), "{:?}", losses.0);
    assert!(
        evaluations
            .iter()
            .any(|e| e.layer == "proj.1" && e.probe == "knn" && e.metric == "top1"),
        "{evaluations:?}"
    );
}
