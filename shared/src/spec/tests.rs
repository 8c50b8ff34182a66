use super::*;

#[test]
fn the_memorization_monitor_needs_boxes_and_counts_its_heldout_images() {
    let spec = RunSpec::from_toml(
        "[data]\nsource = \"scenes\"\nclasses = 4\ntrain_images = 200\n\
         [optimizer]\nbatch_size = 20\n[schedule]\nepochs = 3\n\
         [eval.memorization]\nevery = 2\ncanaries_per_class = 5\n",
    )
    .unwrap();
    let m = spec.eval.memorization.clone().unwrap();
    assert_eq!((m.every, m.k), (2, 20));
    // 200 less 4 × 5 held out: 9 batches of 20 per epoch.
    assert_eq!(spec.total_steps(), 27);
    let err = RunSpec::from_toml(
        "[data]\nsource = \"cifar10\"\npath = \"/d\"\n[eval.memorization]\nevery = 1\n",
    )
    .unwrap_err();
    assert_eq!(err.field, "eval.memorization");
    assert!(err.message.contains("cifar10 has none"), "{}", err.message);
    let err = RunSpec::from_toml("[eval.memorization]\ncanaries_per_class = 0\n").unwrap_err();
    assert_eq!(err.field, "eval.memorization.canaries_per_class");
}

#[test]
fn bf16_trains_every_backbone() {
    let spec = RunSpec::from_toml("[optimizer]\nprecision = \"bf16\"\n").unwrap();
    assert_eq!(spec.optimizer.precision, Precision::Bf16);
    let vit = RunSpec::from_toml(
        "[backbone]\nkind = \"vit\"\nwidth = 48\nheads = 3\n[optimizer]\nprecision = \"bf16\"\n",
    )
    .unwrap();
    assert_eq!(vit.optimizer.precision, Precision::Bf16);
    let err = RunSpec::from_toml("[optimizer]\nprecision = \"fp8\"\n").unwrap_err();
    assert_eq!(err.field, "optimizer.precision");
}

#[test]
fn subsets_parse_round_trip_and_name_bad_fields() {
    let spec =
        RunSpec::from_toml("[subset]\nkind = \"power_law\"\nimages = 300\npower = 1.0\n").unwrap();
    assert_eq!(
        spec.subset,
        Some(SubsetSpec::PowerLaw {
            images: 300,
            power: 1.0,
            seed: 0
        })
    );
    assert_eq!(RunSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    // The default scenes (2000 images, batch 128): about 300 images, two
    // steps an epoch, not fifteen.
    assert_eq!(spec.total_steps(), 2 * spec.schedule.epochs);
    let err = RunSpec::from_toml("[subset]\nkind = \"per_class\"\nper_class = 0\n").unwrap_err();
    assert_eq!(err.field, "subset.per_class");
    let err = RunSpec::from_toml("[subset]\nkind = \"power_law\"\nimages = 9\npower = -1.0\n")
        .unwrap_err();
    assert_eq!(err.field, "subset.power");
    assert!(RunSpec::from_toml("[subset]\nkind = \"per_class\"\nper_clas = 3\n").is_err());
}

#[test]
fn default_spec_is_valid_and_round_trips() {
    let spec = RunSpec::default();
    spec.validate().unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(RunSpec::from_json(&json).unwrap(), spec);
    assert_eq!(RunSpec::from_toml(&spec.to_toml()).unwrap(), spec);
}

#[test]
fn unknown_field_is_named() {
    let err = RunSpec::from_json(r#"{"optimizer": {"lr": 0.1, "lrr": 2}}"#).unwrap_err();
    assert_eq!(err.field, "optimizer.lrr");
    assert!(err.message.contains("lrr"), "{}", err.message);
}

#[test]
fn wrong_type_is_named() {
    let err = RunSpec::from_json(r#"{"schedule": {"epochs": "ten"}}"#).unwrap_err();
    assert_eq!(err.field, "schedule.epochs");
}

#[test]
fn impossible_values_are_named() {
    let err =
        RunSpec::from_json(r#"{"method": {"name": "simclr", "temperature": 0}}"#).unwrap_err();
    assert_eq!(err.field, "method.temperature");
    let err = RunSpec::from_json(r#"{"projector": {"dims": "128-x"}}"#).unwrap_err();
    assert_eq!(err.field, "projector.dims");
    assert!(err.message.contains("`x`"));
    let err = RunSpec::from_toml("[optimizer]\nbatch_size = 1\n").unwrap_err();
    assert_eq!(err.field, "optimizer.batch_size");
    let err = RunSpec::from_json(r#"{"data": {"source": "scenes", "background_signature": 1.5}}"#)
        .unwrap_err();
    assert_eq!(err.field, "data.background_signature");
    assert!(err.message.contains("[0, 1]"), "{}", err.message);
}

#[test]
fn file_sources_parse_and_check_their_fields() {
    let spec = RunSpec::from_toml("[data]\nsource = \"cifar100\"\npath = \"/d\"\ncoarse = true\n")
        .unwrap();
    assert_eq!(
        spec.data,
        DataSpec::Cifar100 {
            path: "/d".into(),
            coarse: true
        }
    );
    assert_eq!(spec.data.image_size(), 32);
    let folder =
        RunSpec::from_toml("[data]\nsource = \"folder\"\npath = \"/imgs\"\nimage_size = 64\n")
            .unwrap();
    assert_eq!(folder.data.image_size(), 64);
    for (text, field) in [
        ("[data]\nsource = \"idx\"\npath = \"\"\n", "data.path"),
        (
            "[data]\nsource = \"folder\"\npath = \"/x\"\nimage_size = 4\n",
            "data.image_size",
        ),
        (
            "[data]\nsource = \"folder\"\npath = \"/x\"\ntest_fraction = 1.0\n",
            "data.test_fraction",
        ),
        ("[data]\nsource = \"stl10\"\n", "data"),
    ] {
        let err = RunSpec::from_toml(text).unwrap_err();
        assert!(err.field.starts_with(field), "{text}: {err}");
    }
}

#[test]
fn every_method_parses_with_defaults_and_checks_its_knobs() {
    for name in MethodSpec::NAMES {
        let m = MethodSpec::from_name(name).unwrap();
        assert_eq!(m.name(), name);
        let mut spec = RunSpec {
            method: m,
            ..RunSpec::default()
        };
        spec.fit_model_to_method();
        spec.validate().unwrap();
    }
    let cases = [
        (
            r#"{"name": "vicreg", "variance": -1}"#,
            "method.variance",
            "[0, 10000]",
        ),
        (
            r#"{"name": "barlow", "lambda_offdiag": 1e9}"#,
            "method.lambda_offdiag",
            "[0, 10000]",
        ),
        (
            r#"{"name": "byol", "ema_base": 1.0}"#,
            "method.ema_base",
            "[0, 1)",
        ),
        (
            r#"{"name": "byol", "predictor": "256-64"}"#,
            "method.predictor",
            "output width 128",
        ),
        (
            r#"{"name": "simsiam", "predictor": "32-x"}"#,
            "method.predictor",
            "`x`",
        ),
        (
            r#"{"name": "vicreg", "temperature": 0.5}"#,
            "method",
            "unknown field `temperature`",
        ),
        (
            r#"{"name": "dino3"}"#,
            "method.name",
            "unknown variant `dino3`",
        ),
        (
            r#"{"name": "dino", "student_temperature": 0}"#,
            "method.student_temperature",
            "(0, 10]",
        ),
        (
            r#"{"name": "swav", "prototypes": 1}"#,
            "method.prototypes",
            "between 2 and 65536",
        ),
        (
            r#"{"name": "swav", "queue_size": 100}"#,
            "method.queue_size",
            "batch size 128",
        ),
        (
            r#"{"name": "swav", "queue_size": 512, "queue_starts_epoch": -1}"#,
            "method.queue_starts_epoch",
            "between 0 and the run's",
        ),
        (
            r#"{"name": "simclr", "negatives": "two"}"#,
            "method",
            "unknown variant `two`",
        ),
    ];
    for (method, field, words) in cases {
        let err = RunSpec::from_json(&format!(r#"{{"method": {method}}}"#)).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(words), "{err}");
    }
    // The predictor follows the projector: "256-128" → hidden 256, out 128.
    let byol = MethodSpec::from_name("byol").unwrap();
    assert_eq!(
        byol.predictor_dims(Some(256), 128),
        Some(Ok(vec![256, 128]))
    );
    let simsiam = MethodSpec::from_name("simsiam").unwrap();
    assert_eq!(simsiam.predictor_dims(None, 128), Some(Ok(vec![32, 128])));
    assert_eq!(MethodSpec::default().predictor_dims(None, 128), None);
}

#[test]
fn combinations_that_cannot_train_are_named() {
    let cases = [
        (
            r#"{"method": {"name": "msn"}, "backbone": {"kind": "resnet18"}}"#,
            "backbone.kind",
            "needs a ViT",
        ),
        (
            r#"{"method": {"name": "mae"}, "backbone": {"kind": "vit", "width": 48, "heads": 3, "patch_size": 5}, "projector": {"dims": ""}}"#,
            "backbone.patch_size",
            "divide the image size 32",
        ),
        (
            r#"{"method": {"name": "mae"}, "backbone": {"kind": "vit", "width": 48, "patch_size": 32}, "projector": {"dims": ""}}"#,
            "backbone.patch_size",
            "at least 2×2",
        ),
        (
            r#"{"backbone": {"kind": "vit", "width": 48, "patch_size": 8}, "eval": {"data": {"source": "folder", "path": "/d", "image_size": 28}}}"#,
            "eval.data",
            "28 px",
        ),
        (
            r#"{"backbone": {"kind": "vit", "width": 48, "patch_size": 3, "conv_stem": true}, "data": {"source": "folder", "path": "/d", "image_size": 48}}"#,
            "backbone.patch_size",
            "power of two from 2 up, got 3",
        ),
        (
            r#"{"backbone": {"kind": "vit", "width": 48, "patch_size": 1, "conv_stem": true}}"#,
            "backbone.patch_size",
            "got 1",
        ),
        (
            r#"{"method": {"name": "simmim"}, "backbone": {"kind": "vit", "width": 48, "conv_stem": true}, "projector": {"dims": ""}}"#,
            "backbone.conv_stem",
            "simmim reconstructs",
        ),
        (
            r#"{"backbone": {"kind": "resnet18", "conv_stem": true}}"#,
            "backbone.conv_stem",
            "not resnet18",
        ),
        (
            r#"{"backbone": {"kind": "vit", "width": 50, "heads": 3}}"#,
            "backbone.heads",
            "divide the width 50",
        ),
        (
            r#"{"method": {"name": "mae"}, "backbone": {"kind": "vit", "width": 48}}"#,
            "projector.dims",
            "trains no projector",
        ),
        (
            r#"{"method": {"name": "msn", "mask_ratio": 1.0}, "backbone": {"kind": "vit", "width": 48}}"#,
            "method.mask_ratio",
            "(0, 1)",
        ),
        (
            r#"{"method": {"name": "pmsn", "sinkhorn_iterations": 101}, "backbone": {"kind": "vit", "width": 48}}"#,
            "method.sinkhorn_iterations",
            "between 0 and 100, got 101",
        ),
        (
            r#"{"augment": {"local_views": 4}}"#,
            "augment.local_views",
            "only dino, swav, msn and pmsn",
        ),
        (
            r#"{"method": {"name": "dino"}, "backbone": {"kind": "vit", "width": 48, "patch_size": 8}, "augment": {"local_views": 2, "local_size": 12}}"#,
            "augment.local_size",
            "patch size 8",
        ),
        (
            r#"{"projector": {"dims": "128-x"}}"#,
            "projector.dims",
            "`x`",
        ),
        (
            r#"{"method": {"name": "simclr", "temperature": 0}}"#,
            "method.temperature",
            "(0, 10]",
        ),
        (
            r#"{"optimizer": {"weight_decay_end": 2}}"#,
            "optimizer.weight_decay_end",
            "[0, 1]",
        ),
    ];
    for (text, field, words) in cases {
        let err = RunSpec::from_json(text).unwrap_err();
        assert_eq!(err.field, field, "{text}: {err}");
        assert!(err.message.contains(words), "{text}: {err}");
    }
    // Picking a method that masks patches brings a ViT and drops the projector.
    let mut spec = RunSpec {
        method: MethodSpec::from_name("simmim").unwrap(),
        ..RunSpec::default()
    };
    assert!(spec.validate().is_err());
    spec.fit_model_to_method();
    assert_eq!(spec.backbone.kind, BackboneKind::Vit);
    assert_eq!(spec.layer_names(), ["backbone"]);
    spec.validate().unwrap();
}

/// Every method has a CIFAR-scale recipe and a `-tiny` one, and every
/// recipe parses and validates as it is.
#[test]
fn every_recipe_is_a_valid_spec() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    for name in MethodSpec::NAMES {
        for file in [format!("{name}.toml"), format!("{name}-tiny.toml")] {
            let text = std::fs::read_to_string(dir.join(&file))
                .unwrap_or_else(|e| panic!("recipes/{file}: {e}"));
            let spec = RunSpec::from_toml(&text).unwrap_or_else(|e| panic!("recipes/{file}: {e}"));
            assert_eq!(spec.method.name(), name, "recipes/{file}");
            assert_eq!(spec.name, file.trim_end_matches(".toml"));
        }
    }
}

#[test]
fn toml_errors_name_the_field() {
    let err = RunSpec::from_toml("[data]\nsource = \"scenes\"\nclasess = 3\n").unwrap_err();
    assert!(err.field.starts_with("data"), "{}", err.field);
    assert!(err.message.contains("clasess"));
}

#[test]
fn eval_plan_is_checked_against_the_model() {
    let mut spec = RunSpec::default();
    spec.eval.layers = vec!["proj.7".into()];
    let err = spec.validate().unwrap_err();
    assert_eq!(err.field, "eval.layers");
    assert!(
        err.message.contains("backbone, proj.0, proj.1"),
        "{}",
        err.message
    );
    let err = RunSpec::from_json(r#"{"eval": {"probes": ["knn", "svm"]}}"#).unwrap_err();
    assert_eq!(err.field, "eval.probes[1]");
    spec.eval.layers = vec!["proj.1".into()];
    assert_eq!(spec.eval.probed_layers(&spec.layer_names()), ["proj.1"]);
}

#[test]
fn layer_names_follow_the_projector() {
    let mut spec = RunSpec::default();
    spec.projector.dims = "64-32-16".parse().unwrap();
    assert_eq!(
        spec.layer_names(),
        ["backbone", "proj.0", "proj.1", "proj.2"]
    );
    spec.projector.dims = Dims::default();
    assert_eq!(spec.layer_names(), ["backbone"]);
}
