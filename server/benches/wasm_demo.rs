//! `cargo xtask bench wasm`: the browser demo's speed in headless Chromium.
//! For a tiny CNN, a ResNet-18 and a ViT-Tiny (32 px) bundle: milliseconds
//! per crop in the page's worker (embed + k-NN, and embed alone), the
//! native engine on the same crop, the bundle's size, and the time from
//! navigation to the first prediction; then the same encoders exported to
//! ONNX (`bench/reference/onnx_export.py`) and run by onnxruntime-web's wasm
//! backend on the same input, one thread each, with the difference between
//! the two embeddings. The last line is
//! `wasm_ratio_vs_onnxruntime_web=<theirs / ours>` for the ResNet-18 (ours:
//! embed + k-NN; theirs: the forward pass alone).
//!
//! Needs `SSLAB_STATIC_DIR` (the built dashboard) and `SSLAB_ORT_DIR` (the
//! onnxruntime-web npm package's `dist`), which xtask provides.

#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::browser::Browser;
use common::{Server, export_run, publish, tar_dir, tiny_spec};
use serde_json::{Value, json};
use sslab_engine::export::bundle::{Demo, read_dir};

/// Predictions timed per model, after the warm-up.
const REPEATS: usize = 30;
const WARMUP: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spec(backbone: Value) -> Value {
    let mut s = tiny_spec(1);
    s["backbone"] = backbone;
    s["data"]["train_images"] = json!(64);
    s["data"]["test_images"] = json!(256);
    s["optimizer"]["batch_size"] = json!(32);
    s
}

struct Figures {
    name: &'static str,
    wasm_ms: f64,
    wasm_embed_ms: f64,
    native_ms: f64,
    ort_ms: f64,
    mib: f64,
    first_ms: f64,
    rel_err: f64,
}

/// The native engine on image 0's crop: (embed + k-NN ms, the embedding
/// of the whole image, the normalised whole image for ONNX).
fn native(bundle: &Path) -> (f64, Vec<f32>, Vec<f32>, [u32; 4]) {
    let (manifest, mut files) = read_dir(bundle).unwrap();
    let first = &manifest.images[0];
    let s = manifest.input_size;
    let rgb = sslab_engine::data::folder::decode_bytes(&files[&first.file], s).unwrap();
    let demo = Demo::open(manifest.clone(), &mut files).unwrap();
    let crop = first.crop;
    let mut times = Vec::new();
    for i in 0..WARMUP + REPEATS {
        let t = Instant::now();
        demo.predict(&rgb, crop).unwrap();
        if i >= WARMUP {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let whole = demo
        .embed(&rgb, [0, 0, s as u32, s as u32])
        .unwrap()
        .concat();
    let mut input = vec![0f32; 3 * s * s];
    for c in 0..3 {
        for p in 0..s * s {
            input[c * s * s + p] =
                (rgb[p * 3 + c] as f32 / 255.0 - manifest.mean[c]) / manifest.std[c];
        }
    }
    (median(times), whole, input, crop)
}

/// The page's worker: first prediction after navigation, then timed calls.
async fn in_browser(browser: &Browser, url: &str, crop: [u32; 4]) -> (f64, f64, f64) {
    browser.goto(url).await;
    let js = format!(
        r#"const done = arguments[arguments.length - 1];
        (async () => {{
            const d = window.sslabDemo;
            await d.ready;
            while (d.state.firstAnswerMs === null) await new Promise(r => setTimeout(r, 20));
            const first = d.state.firstAnswerMs;
            const rect = {crop:?};
            const p = [], e = [];
            for (let i = 0; i < {n}; i++) {{
                const a = await d.call('predict', {{ rect }});
                const b = await d.call('embed', {{ rect }});
                if (i >= {w}) {{ p.push(a.ms); e.push(b.ms); }}
            }}
            done({{ first, p, e }});
        }})().catch(err => done({{ error: String(err) }}));"#,
        n = WARMUP + REPEATS,
        w = WARMUP,
    );
    let out = browser.script_async(&js).await;
    assert!(out.get("error").is_none(), "{out}");
    let list = |k: &str| -> Vec<f64> { serde_json::from_value(out[k].clone()).unwrap() };
    (
        out["first"].as_f64().unwrap(),
        median(list("p")),
        median(list("e")),
    )
}

/// onnxruntime-web (wasm backend, one thread) on `input`: median ms and
/// the output.
async fn in_ort(
    browser: &Browser,
    base: &str,
    model: &str,
    input: &[f32],
    s: usize,
) -> (f64, Vec<f32>) {
    browser.goto(&format!("{base}/ort.html")).await;
    let js = format!(
        r#"const done = arguments[arguments.length - 1];
        (async () => {{
            ort.env.wasm.numThreads = 1;
            ort.env.wasm.wasmPaths = '/dist/';
            const session = await ort.InferenceSession.create('/{model}', {{ executionProviders: ['wasm'] }});
            const x = new ort.Tensor('float32', new Float32Array({input}), [1, 3, {s}, {s}]);
            const times = [];
            let y;
            for (let i = 0; i < {n}; i++) {{
                const t = performance.now();
                y = (await session.run({{ x }})).y;
                if (i >= {w}) times.push(performance.now() - t);
            }}
            done({{ times, y: Array.from(y.data) }});
        }})().catch(err => done({{ error: String(err) }}));"#,
        input = serde_json::to_string(input).unwrap(),
        n = WARMUP + REPEATS,
        w = WARMUP,
    );
    let out = browser.script_async(&js).await;
    assert!(out.get("error").is_none(), "{model}: {out}");
    let times: Vec<f64> = serde_json::from_value(out["times"].clone()).unwrap();
    (
        median(times),
        serde_json::from_value(out["y"].clone()).unwrap(),
    )
}

/// Serves `dir` (onnxruntime-web's files and the ONNX models) on a port of
/// its own, with the MIME types module scripts need.
async fn serve_dir(dir: PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let ort_dist =
        PathBuf::from(std::env::var("SSLAB_ORT_DIR").expect("SSLAB_ORT_DIR (xtask sets it)"));
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let server = Server::start_with(&work.join("server"), None, &[("SSLAB_MAX_DEMO_MIB", "256")]);
    let admin = server.client();
    let ort_root = work.join("ort");
    std::fs::create_dir_all(&ort_root).unwrap();
    std::os::unix::fs::symlink(&ort_dist, ort_root.join("dist")).unwrap();
    let script = ["ort.wasm.min.js", "ort.min.js"]
        .into_iter()
        .find(|f| ort_dist.join(f).is_file())
        .expect("onnxruntime-web's dist has ort.wasm.min.js or ort.min.js");
    std::fs::write(
        ort_root.join("ort.html"),
        format!("<!doctype html><meta charset=utf-8><script src=\"/dist/{script}\"></script>"),
    )
    .unwrap();
    let ort_base = serve_dir(ort_root.clone()).await;
    let browser = Browser::start().await;

    let models: [(&'static str, Value); 3] = [
        ("tiny_cnn", json!({"kind": "tiny_cnn", "width": 16})),
        ("resnet18", json!({"kind": "resnet18", "width": 64})),
        (
            "vit_tiny",
            json!({"kind": "vit", "width": 192, "depth": 12, "heads": 3, "patch_size": 4}),
        ),
    ];
    let mut all = Vec::new();
    for (name, backbone) in models {
        eprintln!("bench: training and exporting {name}");
        let bundle = export_run(work, name, &spec(backbone), &[]);
        let manifest = read_dir(&bundle).unwrap().0;
        let resp = publish(&admin, &server, tar_dir(&bundle)).await;
        assert_eq!(resp.status(), 201, "{name}");
        let demo: Value = resp.json().await.unwrap();
        let (native_ms, whole, input, crop) = native(&bundle);
        let url = format!("{}/demo/{}", server.base, demo["slug"].as_str().unwrap());
        let (first_ms, wasm_ms, wasm_embed_ms) = in_browser(&browser, &url, crop).await;

        let onnx = format!("{name}.onnx");
        let out = std::process::Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/reference/onnx_export.py"))
            .arg(&bundle)
            .arg(ort_root.join(&onnx))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = manifest.input_size;
        let (ort_ms, y) = in_ort(&browser, &ort_base, &onnx, &input, s).await;
        assert_eq!(y.len(), whole.len(), "{name}: ONNX output size");
        let diff: f64 = y
            .iter()
            .zip(&whole)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let norm: f64 = whole.iter().map(|b| (*b as f64).powi(2)).sum();
        all.push(Figures {
            name,
            wasm_ms,
            wasm_embed_ms,
            native_ms,
            ort_ms,
            mib: manifest.total_bytes() as f64 / (1 << 20) as f64,
            first_ms,
            rel_err: (diff / norm).sqrt(),
        });
    }
    println!(
        "{:<9} {:>12} {:>12} {:>10} {:>10} {:>9} {:>14} {:>10}",
        "model", "wasm ms", "wasm embed", "native ms", "ort ms", "MiB", "first pred ms", "ort diff"
    );
    for f in &all {
        println!(
            "{:<9} {:>12.2} {:>12.2} {:>10.2} {:>10.2} {:>9.1} {:>14.0} {:>10.1e}",
            f.name, f.wasm_ms, f.wasm_embed_ms, f.native_ms, f.ort_ms, f.mib, f.first_ms, f.rel_err
        );
    }
    for f in &all {
        let n = f.name;
        println!("wasm_{n}_ms={:.3}", f.wasm_ms);
        println!("wasm_{n}_embed_ms={:.3}", f.wasm_embed_ms);
        println!("native_{n}_ms={:.3}", f.native_ms);
        println!("onnxruntime_web_{n}_ms={:.3}", f.ort_ms);
        println!("bundle_{n}_mib={:.2}", f.mib);
        println!("first_prediction_{n}_ms={:.0}", f.first_ms);
        println!("onnx_{n}_relative_difference={:.2e}", f.rel_err);
    }
    let resnet = all.iter().find(|f| f.name == "resnet18").unwrap();
    println!(
        "wasm_ratio_vs_onnxruntime_web={:.3}",
        resnet.ort_ms / resnet.wasm_ms
    );
}
