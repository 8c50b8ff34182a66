use std::path::Path;

use candle_core::Device;
use sslab_shared::audit::AuditSpec;

use super::bundle::{self, Demo};
use super::*;
use crate::dejavu::{AuditObserver, Model};
use crate::train::{Control, StepMetrics};

struct Quiet;

impl AuditObserver for Quiet {
    fn on_step(&mut self, _: Model, _: &StepMetrics) -> Control {
        Control::Continue
    }
}

/// The tiny audit recipe on a smaller pool.
fn audit_spec() -> AuditSpec {
    let mut spec = AuditSpec::from_toml(include_str!("../../../recipes/dejavu-tiny.toml")).unwrap();
    let sslab_shared::spec::DataSpec::Scenes(s) = &mut spec.run.data else {
        panic!("the tiny audit uses the built-in scenes")
    };
    s.train_images = 400;
    s.test_images = 40;
    spec.split.per_class = 8;
    spec.snapshots = vec![];
    spec
}

/// A freshly initialised encoder saved as a checkpoint (seeded from `seed`).
fn checkpoint(spec: &RunSpec, seed: u64, path: &Path) {
    let mut spec = spec.clone();
    spec.seed = seed;
    let (_, varmap) = model::build(&spec.into_valid().unwrap(), &Device::Cpu).unwrap();
    varmap.save(path).unwrap();
}

fn audit_bundle(dir: &Path, opts: &Options) -> (AuditReport, Result<Manifest>) {
    let spec = audit_spec();
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    checkpoint(&spec.run, 1, &a);
    checkpoint(&spec.run, 2, &b);
    let report = crate::dejavu::run_trained(&spec, &a, &b, &Device::Cpu, &mut Quiet).unwrap();
    let manifest = export_audit(&report, &a, &b, opts, &dir.join("bundle"));
    (report, manifest)
}

/// The bundle answers each attacked crop as the audit did: the same
/// nearest public image and the same top label (the index is stored in
/// f16, so a near tie may flip; nearly all must agree).
#[test]
fn an_audit_bundle_answers_its_crops_as_the_audit_did() {
    let dir = tempfile::tempdir().unwrap();
    let (report, manifest) = audit_bundle(dir.path(), &Options::default());
    let manifest = manifest.unwrap();
    assert_eq!(manifest.models.len(), 2);
    assert_eq!(manifest.kind, DemoKind::Audit);
    assert_eq!(manifest.images.len(), 24.min(report.examples.len()));
    // Memorized images first.
    let verdicts: Vec<_> = manifest
        .images
        .iter()
        .map(|i| i.verdict.clone().unwrap())
        .collect();
    let first_other = verdicts
        .iter()
        .position(|v| v != "memorized")
        .unwrap_or(verdicts.len());
    assert!(
        verdicts[first_other..].iter().all(|v| v != "memorized"),
        "{verdicts:?}"
    );

    let (manifest, mut files) = bundle::read_dir(&dir.path().join("bundle")).unwrap();
    let images: Vec<(String, Vec<u8>)> = manifest
        .images
        .iter()
        .map(|i| (i.file.clone(), files[&i.file].clone()))
        .collect();
    let demo = Demo::open(manifest.clone(), &mut files).unwrap();
    let (mut agree, mut total) = (0, 0);
    for (img, (_, png)) in manifest.images.iter().zip(&images) {
        let rgb = image::load_from_memory(png).unwrap().to_rgb8().into_raw();
        let answer = demo.predict(&rgb, img.crop).unwrap();
        let pool_index: usize = img.file["images/".len()..img.file.len() - 4]
            .parse()
            .unwrap();
        let example = report
            .examples
            .iter()
            .find(|e| e.image == pool_index)
            .unwrap();
        let target = img.target.unwrap();
        for (m, guess) in [(target, &example.target), (1 - target, &example.reference)] {
            total += 1;
            let got = &answer.models[m];
            let shares: f64 = got.top.iter().map(|t| t.share).sum();
            assert!(shares > 0.0 && shares <= 1.0 + 1e-9);
            if got.top[0].label == guess.top5[0] {
                agree += 1;
            }
        }
    }
    assert!(
        agree * 10 >= total * 9,
        "{agree} of {total} answers agree with the audit"
    );
}

#[test]
fn damaged_bundles_and_bad_crops_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let spec: RunSpec =
        RunSpec::from_toml(include_str!("../../../recipes/simclr-tiny.toml")).unwrap();
    let mut spec = spec;
    let sslab_shared::spec::DataSpec::Scenes(s) = &mut spec.data else {
        panic!("scenes")
    };
    s.train_images = 100;
    s.test_images = 30;
    let ckpt = dir.path().join("c.safetensors");
    checkpoint(&spec, 3, &ckpt);
    let out = dir.path().join("bundle");
    let opts = Options {
        f16: true,
        images: 7,
        ..Options::default()
    };
    let manifest = export_run(&spec, &ckpt, None, "backbone", &opts, &out).unwrap();
    assert_eq!((manifest.kind, manifest.images.len()), (DemoKind::Run, 7));
    assert_eq!(manifest.public.count, 30);
    assert_eq!(manifest.models[0].dtype, "f16");
    // Five classes round-robin: the first five images are one of each.
    let mut first: Vec<u32> = manifest.images[..5].iter().map(|i| i.label).collect();
    first.sort();
    assert_eq!(first, vec![0, 1, 2, 3, 4]);

    let (m, files) = bundle::read_dir(&out).unwrap();
    let open = |m: Manifest, edit: &dyn Fn(&mut HashMap<String, Vec<u8>>)| {
        let mut f = files.clone();
        edit(&mut f);
        Demo::open(m, &mut f).err().map(|e| e.to_string())
    };
    let emb = m.models[0].embeddings.clone();
    let err = open(m.clone(), &|f| f.get_mut(&emb).unwrap()[3] ^= 1).unwrap();
    assert!(err.contains("does not match its hash"), "{err}");
    let err = open(m.clone(), &|f| f.get_mut(&emb).unwrap().truncate(10)).unwrap();
    assert!(err.contains("is 10 bytes; the manifest says"), "{err}");
    let err = open(m.clone(), &|f| {
        f.remove(&emb);
    })
    .unwrap();
    assert!(err.contains("has no `model-0.f16`"), "{err}");
    let mut newer = m.clone();
    newer.version = 2;
    let err = open(newer, &|_| {}).unwrap();
    assert!(err.contains("version 2"), "{err}");
    let mut escaping = m.clone();
    escaping.files[0].path = "../x".into();
    assert!(
        open(escaping, &|_| {})
            .unwrap()
            .contains("not a plain relative file name")
    );

    let demo = Demo::open(m.clone(), &mut files.clone()).unwrap();
    let rgb = vec![128u8; 32 * 32 * 3];
    let a = demo.predict(&rgb, [0, 0, 16, 16]).unwrap();
    assert_eq!(a.models.len(), 1);
    assert!(!a.models[0].neighbours.is_empty());
    let err = demo.predict(&rgb, [5, 5, 5, 9]).unwrap_err().to_string();
    assert!(err.contains("no area"), "{err}");
    let err = demo.predict(&rgb, [0, 0, 33, 8]).unwrap_err().to_string();
    assert!(err.contains("reaches outside the 32×32 image"), "{err}");
    let err = demo
        .predict(&rgb[..100], [0, 0, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected a 32×32 RGB image"), "{err}");

    // Over the cap: refused with the sizes, and nothing is left behind.
    let capped = dir.path().join("capped");
    let err = export_run(
        &spec,
        &ckpt,
        None,
        "backbone",
        &Options {
            max_bytes: 10_000,
            ..Options::default()
        },
        &capped,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("over the cap of 0.0 MiB") && err.contains("model-0.safetensors"),
        "{err}"
    );
    assert!(!capped.exists());
    // A folder with something in it is not exported into.
    let err = export_run(&spec, &ckpt, None, "backbone", &opts, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not empty"), "{err}");
}

/// A visitor's upload: any size is cut to the models' square; a file that
/// is not an image, or one too large to decode safely, is refused by name.
#[test]
fn uploads_are_squared_or_refused_by_name() {
    let encode = |w: u32, h: u32| {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let decode = crate::data::folder::decode_bytes;
    assert_eq!(decode(&encode(64, 40), 32).unwrap().len(), 32 * 32 * 3);
    // Exactly the models' size: the pixels as they are.
    let exact = decode(&encode(32, 32), 32).unwrap();
    assert_eq!(&exact[..6], &[0, 0, 7, 1, 0, 7]);
    let err = decode(b"plain text, not pixels", 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an image"), "{err}");
    let err = decode(&encode(9000, 2), 32).unwrap_err().to_string();
    assert!(err.contains("too large"), "{err}");
    let mut cut = encode(64, 64);
    cut.truncate(cut.len() / 2);
    let err = decode(&cut, 32).unwrap_err().to_string();
    assert!(err.contains("not a readable image"), "{err}");
}
