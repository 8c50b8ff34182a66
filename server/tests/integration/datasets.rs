//! Data sets through the API of a real server: an image-folder archive is
//! uploaded, registered and trained on; bad archives are refused by name
//! and leave nothing behind.

use crate::common;

use std::io::Write;
use std::path::Path;

use common::{Server, assert_succeeded, fresh_postgres_database, wait_terminal};
use serde_json::{Value, json};
use sslab_shared::api::Run;
use sslab_shared::dataset::Dataset;

/// Small enough that a 9 MB bomb and a 3 MB body are refused.
const LIMITS: [(&str, &str); 2] = [
    ("SSLAB_MAX_UPLOAD_BYTES", "3000000"),
    ("SSLAB_MAX_UNPACKED_BYTES", "4000000"),
];

fn tar_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names: `set_path` would refuse the hostile ones.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Three classes of 20 images, plus a file that is not an image.
fn pet_files() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (c, colour) in [
        ("cat", [200, 40, 40]),
        ("dog", [40, 200, 40]),
        ("fox", [40, 40, 200]),
    ] {
        for i in 0..20 {
            out.push((format!("pets/{c}/{i:02}.png"), common::png(colour, i)));
        }
    }
    out.push(("pets/readme.txt".into(), b"three classes".to_vec()));
    out
}

async fn upload(server: &Server, query: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = server
        .client()
        .post(server.url(&format!("/datasets/upload?{query}")))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Nothing but registered data sets' folders and an empty scratch folder.
fn assert_clean(data_dir: &Path, registered: &[Dataset]) {
    let root = data_dir.join("datasets");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".incoming")
        .collect();
    names.sort();
    let mut ids: Vec<String> = registered.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    assert_eq!(names, ids);
    let scratch: Vec<_> = std::fs::read_dir(root.join(".incoming")).unwrap().collect();
    assert!(scratch.is_empty(), "left behind: {scratch:?}");
}

async fn datasets_api(server: &Server) {
    let client = server.client();
    let (status, body) = upload(
        server,
        "name=pets&format=folder&image_size=16",
        tar_of(&pet_files()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let pets: Dataset = serde_json::from_value(body).unwrap();
    assert_eq!(pets.classes, ["cat", "dog", "fox"]);
    assert_eq!(pets.images("train") + pets.images("test"), 60);
    assert_eq!(
        pets.splits[0].per_class.iter().sum::<usize>(),
        pets.images("train")
    );
    assert_eq!(pets.image_size, 16);
    assert!(pets.hash.starts_with("sha256:"), "{}", pets.hash);
    assert_eq!(pets.skipped, ["pets/readme.txt: not a PNG or JPEG image"]);

    let listed: Vec<Dataset> = common::get_json(&client, server.url("/datasets")).await;
    assert_eq!(listed, std::slice::from_ref(&pets));
    let sheet = client
        .get(server.url("/datasets/pets/samples.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(sheet.headers()["content-type"], "image/png");
    let sheet = image::load_from_memory(&sheet.bytes().await.unwrap()).unwrap();
    assert_eq!((sheet.width(), sheet.height()), (8 * 32, 3 * 32));

    // The same name again, whatever the files.
    let (status, body) = upload(server, "name=pets&format=folder", tar_of(&pet_files())).await;
    assert_eq!(status, 409, "{body}");

    // Each bad archive is refused with the entry and the reason.
    let mut cat_only = pet_files();
    cat_only.retain(|(n, _)| !n.starts_with("pets/dog/"));
    cat_only.push(("pets/dog/notes.txt".into(), b"no images".to_vec()));
    let mut corrupt = pet_files();
    corrupt[3].1.truncate(40);
    let mut boxes = pet_files();
    boxes.push((
        "pets/boxes.csv".into(),
        b"cat/00.png,1,1,5,5\ncat/99.png,1,1,5,5\n".to_vec(),
    ));
    let bomb = {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("pets/cat/big.png", opts).unwrap();
        z.write_all(&vec![0u8; 9 << 20]).unwrap();
        z.finish().unwrap().into_inner()
    };
    let full = tar_of(&pet_files());
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "traversal",
            tar_of(&[("../evil.png".into(), common::png([1, 2, 3], 0))]),
            &["../evil.png", "outside"],
        ),
        ("bomb", bomb, &["pets/cat/big.png", "zip bomb"]),
        ("truncated", full[..full.len() / 2].to_vec(), &["truncated"]),
        (
            "empty class",
            tar_of(&cat_only),
            &["pets/dog", "no PNG or JPEG images"],
        ),
        (
            "corrupt image",
            tar_of(&corrupt),
            &["pets/cat/03.png", "not a readable image"],
        ),
        (
            "missing boxed image",
            tar_of(&boxes),
            &["boxes.csv", "line 2", "cat/99.png"],
        ),
        (
            "not an archive",
            b"hello".to_vec(),
            &["not a tar, tar.gz or zip"],
        ),
    ];
    for (what, bytes, words) in cases {
        let (status, body) = upload(server, "name=bad&format=folder&image_size=16", bytes).await;
        assert_eq!(status, 422, "{what}: {body}");
        let m = message(&body);
        for w in words {
            assert!(m.contains(w), "{what}: `{w}` missing from {m}");
        }
        assert!(!m.contains(".incoming"), "{what}: scratch path in {m}");
    }
    let (status, body) = upload(server, "name=big&format=folder", vec![0u8; 3_100_000]).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = upload(server, "name=bad&format=tiff", tar_of(&pet_files())).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("query")),
        "{body}"
    );
    let (status, body) = upload(server, "name=..&format=folder", tar_of(&pet_files())).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("name")),
        "{body}"
    );
    let listed: Vec<Dataset> = common::get_json(&client, server.url("/datasets")).await;
    assert_eq!(listed.len(), 1);
    assert_clean(&server.data_dir, &listed);

    // A run on the uploaded data, through the API.
    let mut spec = common::tiny_spec(2);
    spec["data"] = json!({"source": "dataset", "name": "pets"});
    let run = common::create(&client, server, &spec).await;
    let done = wait_terminal(&client, server, &run.id).await;
    assert_succeeded(&done);
    let recorded = &done.spec.data;
    let stored: Run = common::get_run(&client, server, &run.id).await;
    assert_eq!(&stored.spec.data, recorded);
    let text = serde_json::to_value(recorded).unwrap();
    assert_eq!(text["registered"]["hash"], json!(pets.hash));
    assert_eq!(text["registered"]["data"]["image_size"], json!(16));
    let evals: Vec<Value> = common::get_json(
        &client,
        server.url(&format!("/runs/{}/evaluations", run.id)),
    )
    .await;
    assert!(!evals.is_empty());

    // A sweep axis cannot point a registered name at another folder, even
    // when the base spec brings what the name stood for: every run's name
    // is looked up again.
    let mut base = spec.clone();
    base["data"]["registered"] =
        json!({"hash": "sha256:0", "data": {"source": "folder", "path": "/tmp", "image_size": 16}});
    let resp = client
        .post(server.url("/sweeps"))
        .json(&json!({"base": base, "axes": [{"path": "data.registered.data.path", "values": ["/etc"]}]}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let runs: Value = common::get_json(&client, server.url("/runs?page_size=500")).await;
    assert!(!runs.to_string().contains("\"/etc\""), "{body}");
    if let Some(id) = body["id"].as_str() {
        client
            .post(server.url(&format!("/sweeps/{id}/cancel")))
            .send()
            .await
            .unwrap();
    }

    spec["data"] = json!({"source": "dataset", "name": "nope"});
    let resp = client
        .post(server.url("/runs"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["field"], "data.name", "{body}");

    // Files already on the server are registered where they are.
    let folder = server.data_dir.join("server-side");
    for (name, bytes) in pet_files() {
        let path = folder.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let import = |name: &str, path: &Path| {
        client
            .post(server.url("/datasets"))
            .json(&json!({"name": name, "format": "folder", "path": path, "image_size": 16}))
            .send()
    };
    let resp = import("pets-copy", &folder.join("pets")).await.unwrap();
    assert_eq!(resp.status(), 201);
    let copy: Dataset = resp.json().await.unwrap();
    // The same images give the same hash, wherever they came from.
    assert_eq!(copy.hash, pets.hash);
    let resp = import("ghost", &folder.join("missing")).await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["field"], "path", "{body}");
    // Outside the --data-root folders, directly, through `..` or a link: 403,
    // and nothing about that folder is told.
    let outside = server.data_dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("link-out")).unwrap();
    for path in [
        outside.clone(),
        folder.join("..").join("outside"),
        folder.join("link-out"),
        std::path::PathBuf::from("/etc"),
    ] {
        let resp = import("escape", &path).await.unwrap();
        assert_eq!(resp.status(), 403, "{}", path.display());
    }
    let listed: Vec<Dataset> = common::get_json(&client, server.url("/datasets")).await;
    assert!(listed.iter().all(|d| d.name != "escape"));

    // A data set a run was made from stays; one nothing uses goes, with
    // its files.
    let delete = |name: &str| {
        client
            .delete(server.url(&format!("/datasets/{name}")))
            .send()
    };
    let resp = delete("pets").await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert!(
        message(&body).contains(&format!("run `{}`", run.id)),
        "{body}"
    );
    assert_eq!(delete("pets-copy").await.unwrap().status(), 204);
    assert_eq!(delete("pets-copy").await.unwrap().status(), 404);
    let listed: Vec<Dataset> = common::get_json(&client, server.url("/datasets")).await;
    assert_eq!(
        listed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["pets"]
    );
    assert_clean(&server.data_dir, &listed);
}

/// A server with small limits that reads data folders under `DIR/server-side`.
fn start(dir: &Path, url: Option<&str>) -> Server {
    let root = dir.join("server-side");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.to_string_lossy().into_owned();
    let mut env = LIMITS.to_vec();
    env.push(("SSLAB_DATA_ROOTS", &root));
    Server::start_with(dir, url, &env)
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), None);
    datasets_api(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_datasets() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Some(&url));
    datasets_api(&server).await;
}
