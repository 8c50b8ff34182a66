//! End to end in headless Chromium: open the dashboard, launch a run through
//! the form, watch the live chart grow, read the kNN table, and load the
//! browser inference module with the run's own weights.

use crate::common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn launch_watch_and_read_a_run_in_chromium() {
    if !e2e_required() {
        eprintln!(
            "skipped: set SSLAB_E2E=1 with a built dashboard in SSLAB_STATIC_DIR (cargo xtask test does)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    // A member with a password, who signs in through the form.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sslab"));
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args([
            "admin",
            "create-user",
            "rita",
            "--team",
            "default",
            "--password-stdin",
        ])
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"rita's password\n").unwrap();
    assert!(child.wait().unwrap().success());
    let browser = Browser::start().await;

    // Signed out, the dashboard sends the visitor to the sign-in form.
    browser.goto(&format!("{}/", server.base)).await;
    browser.wait_find("#signin-form").await;
    browser.set_field("#signin-name", "rita").await;
    browser.set_field("#signin-password", "not it").await;
    browser.click("#signin-submit").await;
    browser.wait_find("#signin-error").await;
    browser
        .set_field("#signin-password", "rita's password")
        .await;
    browser.click("#signin-submit").await;
    browser.wait_find("#signed-in-as").await;
    browser.wait_find(".empty").await;
    browser.click("#new-run").await;
    for (field, value) in [
        ("#f-name", "browser-run"),
        ("#f-data-classes", "3"),
        ("#f-data-train_images", "120"),
        ("#f-data-test_images", "30"),
        ("#f-backbone-width", "8"),
        ("#f-projector-dims", "32-16"),
        ("#f-optimizer-batch_size", "16"),
        ("#f-schedule-epochs", "12"),
        ("#f-eval-memorization-every", "6"),
    ] {
        browser.set_field(field, value).await;
    }
    // The form refuses a bad value before it is sent…
    browser.set_field("#f-optimizer-lr", "-1").await;
    browser.click("#launch").await;
    let err = browser.wait_find("#form-error").await;
    let text = browser
        .cmd(
            reqwest::Method::GET,
            &format!("/element/{err}/text"),
            Value::Null,
        )
        .await;
    assert!(text.as_str().unwrap().contains("optimizer.lr"), "{text}");
    // …and launches a good one.
    browser.set_field("#f-optimizer-lr", "0.003").await;
    browser.click("#launch").await;
    browser.wait_find("#loss-chart").await;

    // The chart grows while the run trains.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = browser
            .script(
                "return Number(document.querySelector('#loss-chart').getAttribute('data-points'))",
            )
            .await;
        let n = n.as_i64().unwrap_or(0);
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        if browser.find("#probe-table").await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish; chart points seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let final_points = browser
        .script("return Number(document.querySelector('#loss-chart').getAttribute('data-points'))")
        .await;
    assert_eq!(
        final_points.as_i64(),
        Some(60),
        "12 epochs × 5 steps: 120 images less the monitor's 3 × 10 held out"
    );
    let live: Vec<&i64> = seen.iter().filter(|&&n| n > 0 && n < 60).collect();
    assert!(
        !live.is_empty(),
        "the chart never showed a partial run: {seen:?}"
    );

    // The loss chart reads out the point under the mouse, switches to a log
    // scale and zooms to a dragged span; a double-click resets the zoom.
    let mouse = |kind: &str, at: f64| {
        format!(
            "const a = document.querySelector('#loss-chart .plot-area'), r = a.getBoundingClientRect(); \
             a.dispatchEvent(new MouseEvent('{kind}', {{bubbles: true, clientX: r.left + {at} * r.width, clientY: r.top + r.height / 2}}));"
        )
    };
    browser.script(&mouse("mousemove", 0.5)).await;
    let readout = wait_script(
        &browser,
        "const t = document.querySelector('#loss-chart .plot-readout').textContent; return t.startsWith('step') ? t : null",
        10,
    )
    .await;
    assert!(readout.as_str().unwrap().contains("loss "), "{readout}");
    browser.click("#loss-chart .plot-log").await;
    wait_script(
        &browser,
        "return document.querySelector('#loss-chart').dataset.log === 'true'",
        10,
    )
    .await;
    let full = browser
        .script("return document.querySelector('#loss-chart').dataset.xRange")
        .await;
    browser.script(&mouse("mousedown", 0.4)).await;
    browser.script(&mouse("mousemove", 0.7)).await;
    browser.script(&mouse("mouseup", 0.7)).await;
    let zoomed = wait_script(
        &browser,
        "const r = document.querySelector('#loss-chart').dataset.xRange.split(',').map(Number); \
         return r[0] > 0 && r[1] < 60 ? r : null",
        10,
    )
    .await;
    assert!(zoomed[1].as_f64() > zoomed[0].as_f64(), "{zoomed}");
    browser.script(&mouse("dblclick", 0.5)).await;
    wait_script(
        &browser,
        &format!("return document.querySelector('#loss-chart').dataset.xRange === {full}"),
        10,
    )
    .await;

    // The layer × probe table: one row per layer, kNN first.
    let header = browser.script(
        "return Array.from(document.querySelectorAll('#probe-table thead th')).map(c => c.textContent)",
    ).await;
    let header: Vec<&str> = header
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(&header[..3], ["Layer", "knn", "linear"], "{header:?}");
    assert_eq!(header.last(), Some(&"RankMe"));
    let rows = browser.script(
        "return Array.from(document.querySelectorAll('#probe-table tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))",
    ).await;
    let rows = rows.as_array().unwrap();
    let layers: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(layers, ["backbone", "proj.0", "proj.1"]);
    for r in rows {
        for cell in &r.as_array().unwrap()[1..header.len() - 1] {
            let v: f64 = cell.as_str().unwrap().parse().unwrap();
            assert!((0.0..=1.0).contains(&v), "{r}");
        }
    }
    // The guillotine chart: one line per accuracy probe, each through every layer.
    let lines = browser.script(
        "return Array.from(document.querySelectorAll('#guillotine-chart polyline')).map(p => p.getAttribute('points').trim().split(' ').length)",
    ).await;
    let lines: Vec<i64> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .collect();
    assert_eq!(lines.len(), header.len() - 2, "every column but RankMe");
    assert!(lines.iter().all(|&n| n == 3), "{lines:?}");
    // The memorization monitor's readings after epochs 6 and 12.
    let readings = wait_script(
        &browser,
        r#"const c = document.querySelector('#memorization-chart');
           return c && c.getAttribute('data-points') === '2' ? document.querySelector('#dejavu-gap').textContent : null"#,
        30,
    )
    .await;
    assert!(
        readings.as_str().unwrap().starts_with("dejavu_gap ")
            && readings.as_str().unwrap().ends_with("after epoch 12"),
        "{readings}"
    );
    let rows = browser
        .script("return document.querySelectorAll('#memorization-table tbody tr').length")
        .await;
    assert_eq!(rows, json!(2));
    let online = browser
        .script("return document.querySelector('#step-line').textContent")
        .await;
    assert!(
        online.as_str().unwrap().contains("online probe"),
        "{online}"
    );
    let status = browser
        .script("return document.querySelector('#run-status').textContent")
        .await;
    assert_eq!(status.as_str(), Some("succeeded"));
    let by = wait_script(
        &browser,
        "const b = document.querySelector('#launched-by'); return b && b.textContent ? b.textContent : null",
        30,
    )
    .await;
    assert_eq!(by.as_str(), Some(" · launched by rita"));
    browser
        .screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-page.png"))
        .await;

    // The browser inference module loads and embeds with this run's weights.
    let result = browser.script_async(r#"
        const done = arguments[arguments.length - 1];
        (async () => {
            const id = location.pathname.split('/').pop();
            const m = await import('/wasm-infer/sslab_wasm_infer.js');
            await m.default();
            const run = await (await fetch('/api/v1/runs/' + id)).json();
            const weights = new Uint8Array(await (await fetch('/api/v1/runs/' + id + '/checkpoint')).arrayBuffer());
            const e = new m.Embedder(JSON.stringify(run.spec), weights);
            const px = new Uint8Array(40 * 40 * 4).map((_, i) => (i * 37) % 256);
            const v = e.embed(px, 40, 40, 0);
            done({ version: m.version(), len: v.length, finite: Array.from(v).every(Number.isFinite), layers: e.layers() });
        })().catch(err => done({ error: String(err) }));
    "#).await;
    assert!(result.get("error").is_none(), "{result}");
    assert_eq!(result["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(result["len"], 32, "tiny CNN width 8 → 32-d backbone");
    assert_eq!(result["finite"], true);
    assert_eq!(result["layers"], json!(["backbone", "proj.0", "proj.1"]));

    // Signed out, neither the run's page nor its API answers.
    let run_url = browser.script("return location.href").await;
    let run_url = run_url.as_str().unwrap().to_string();
    // The run's log, and the Workers page with the server's own worker.
    let log = wait_script(
        &browser,
        "const p = document.querySelector('#run-log pre'); \
         return p && p.textContent.includes('succeeded') && p.textContent",
        20,
    )
    .await;
    assert!(log.as_str().unwrap().contains("attempt 1 of run"), "{log}");
    browser.goto(&format!("{}/workers", server.base)).await;
    let table = wait_script(
        &browser,
        "const t = document.querySelector('#workers-table'); \
         return t && t.textContent.includes('in-process') && t.textContent",
        20,
    )
    .await;
    assert!(
        table.as_str().unwrap().contains(env!("CARGO_PKG_VERSION")),
        "{table}"
    );

    // A ViT's run page charts its attention against depth, per head.
    let mut vit = tiny_spec(1);
    vit["name"] = json!("tiny-vit");
    vit["backbone"] = json!({"kind": "vit", "width": 32, "depth": 2, "heads": 2, "patch_size": 8});
    vit["eval"]["probes"] = json!(["knn", "attention"]);
    let client = server.client();
    let run = create(&client, &server, &vit).await;
    assert_succeeded(&wait_terminal(&client, &server, &run.id).await);
    browser
        .goto(&format!("{}/runs/{}", server.base, run.id))
        .await;
    let charts = wait_script(
        &browser,
        "const d = document.querySelector('#attention-distance'), e = document.querySelector('#attention-entropy'); \
         return d && e && [d.dataset.points, d.dataset.lines, e.dataset.points, e.querySelectorAll('.head-line').length, \
                           document.querySelector('#probe-table').textContent.includes('blocks.')]",
        30,
    )
    .await;
    assert_eq!(charts, json!(["2", "2", "2", 2, false]));

    // Rita tags her run, finds it by the tag, annotates it, and deletes it
    // after the confirmation.
    browser.goto(&run_url).await;
    browser.wait_find("#tag-input").await;
    browser.set_field("#tag-input", "baseline").await;
    browser.click("#tag-add").await;
    browser.wait_find("#labels .tag[data-tag='baseline']").await;
    browser.click("#note-edit").await;
    browser.wait_find("#note-input").await;
    browser
        .set_field(
            "#note-input",
            "# First try\n\n<script>window.pwned = 1</script>\n\n**lr** 0.003",
        )
        .await;
    browser.click("#note-save").await;
    let note = wait_script(
        &browser,
        "const n = document.querySelector('#note h1');          return n && [n.textContent, document.querySelectorAll('#note script').length,                       document.querySelector('#note strong').textContent, String(window.pwned)]",
        20,
    )
    .await;
    assert_eq!(note, json!(["First try", 0, "lr", "undefined"]));
    // The finished run's page charts what its worker sampled while it ran,
    // and its throughput per step.
    let system = wait_script(
        &browser,
        "const c = document.querySelector('#cpu-chart'), m = document.querySelector('#memory-chart'), \
               t = document.querySelector('#throughput-chart'); \
         return c && m && t ? [Number(c.dataset.points) > 0, Number(m.dataset.points) > 0, Number(t.dataset.points), \
                               document.querySelector('#system-summary').textContent.includes('peak memory'), \
                               !!document.querySelector('#gpu-chart')] : null",
        20,
    )
    .await;
    let got = system.as_array().unwrap();
    assert_eq!(got[0..2], [json!(true), json!(true)], "{system}");
    assert!(got[2].as_u64().unwrap() >= 2, "{system}");
    assert_eq!(
        got[3..5],
        [json!(true), json!(false)],
        "no GPU here: {system}"
    );

    // Its files, with sizes and links; and a re-evaluation with another
    // plan, refused first for a probe that does not exist.
    let files = wait_script(
        &browser,
        "const rows = document.querySelectorAll('#run-files tbody tr'); \
         return rows.length ? Array.from(rows).map(r => [r.dataset.file.split(/[.-]/).slice(1).join('.'), \
                Number(r.cells[1].dataset.bytes) > 0, r.querySelector('a').getAttribute('href').startsWith('/api/v1/runs/')]) : null",
        20,
    )
    .await;
    let files = files.as_array().unwrap();
    assert_eq!(files.len(), 6, "{files:?}");
    assert_eq!(files[0], json!(["safetensors", true, true]), "{files:?}");
    browser.click("#reevaluate summary").await;
    browser
        .set_field("#eval-plan", "[eval]\nprobes = [\"nope\"]")
        .await;
    browser.click("#eval-submit").await;
    let refused = wait_script(
        &browser,
        "const e = document.querySelector('#eval-error'); return e && e.textContent",
        20,
    )
    .await;
    assert!(refused.as_str().unwrap().contains("probes"), "{refused}");
    browser
        .set_field(
            "#eval-plan",
            "[eval]\nprobes = [\"knn\"]\nlayers = [\"backbone\"]",
        )
        .await;
    browser.click("#eval-submit").await;
    let job = wait_script(
        &browser,
        "const j = document.querySelector('.evaluation-job[data-status=succeeded] table.probe-table'); \
         return j && [j.id.startsWith('probe-table-'), j.querySelectorAll('tbody tr').length, !document.querySelector('#eval-error')]",
        60,
    )
    .await;
    assert_eq!(job, json!([true, 1, true]));

    // The header's search box finds it by the start of its tag.
    let run_id = run_url.rsplit('/').next().unwrap().to_string();
    browser.goto(&format!("{}/sweeps", server.base)).await;
    browser.set_field("#search-input", "BASEL").await;
    let hit = format!("#search-results a[data-id='{run_id}']");
    browser.wait_find(&hit).await;
    browser.click(&hit).await;
    let opened = wait_script(
        &browser,
        &format!("return location.pathname === '/runs/{run_id}' && !document.querySelector('#search-results')"),
        20,
    )
    .await;
    assert_eq!(opened, json!(true));
    browser
        .set_field("#search-input", "no-such-thing-anywhere")
        .await;
    browser.wait_find("#search-none").await;
    browser
        .goto(&format!("{}/runs?tag=baseline", server.base))
        .await;
    let listed = wait_script(
        &browser,
        "const rows = document.querySelectorAll('#runs-table tbody tr');          return rows.length ? Array.from(rows).map(r => r.cells[1].textContent) : null",
        20,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        listed[0].as_str().unwrap().starts_with("browser-run"),
        "{listed}"
    );
    browser.goto(&run_url).await;
    browser.wait_find("#delete-run").await;
    browser.click("#delete-run").await;
    browser.wait_find("#delete-run-confirm").await;
    browser.click("#delete-run-yes").await;
    let gone = wait_script(
        &browser,
        "return location.pathname === '/runs' && !!document.querySelector('#runs-table, .empty')",
        20,
    )
    .await;
    assert_eq!(gone, json!(true));
    let status = client
        .get(server.url(&format!("/runs/{run_id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    assert!(!dir.path().join("artifacts/runs").join(run_id).exists());
    browser.click("#sign-out").await;
    browser.wait_find("#signin-form").await;
    browser.goto(&run_url).await;
    browser.wait_find("#signin-form").await;
    assert!(browser.find("#loss-chart").await.is_none());
    let status = browser
        .script_async(
            r#"const done = arguments[arguments.length - 1];
               fetch('/api/v1/runs?page_size=1').then(r => done(r.status), e => done(String(e)));"#,
        )
        .await;
    assert_eq!(status, json!(401));
}

/// A team's day in projects: one made on the Projects page, a run launched
/// into it from a shipped recipe with typed hyper-parameters and a subset,
/// found by project (the URL keeps the filter), tagged in bulk, cloned,
/// annotated, moved, and deleted in bulk after the confirmation; the empty
/// project is deleted last.
#[tokio::test(flavor = "multi_thread")]
async fn projects_recipes_and_bulk_actions_in_chromium() {
    if !e2e_required() {
        eprintln!("skipped: set SSLAB_E2E=1 (cargo xtask test does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let browser = Browser::start().await;
    browser.sign_in_with_link(&server).await;
    let text = |css: &'static str| {
        let browser = &browser;
        async move {
            wait_script(
                browser,
                &format!("const e = document.querySelector(\"{css}\"); return e && e.textContent"),
                30,
            )
            .await
            .as_str()
            .unwrap()
            .to_string()
        }
    };

    browser.goto(&format!("{}/projects", server.base)).await;
    browser.set_field("#project-name", "bad name").await;
    browser.click("#project-create").await;
    assert!(text("#project-error").await.contains("letters, digits"));
    browser.set_field("#project-name", "width").await;
    browser
        .set_field("#project-description", "last-block width")
        .await;
    browser.click("#project-create").await;
    browser
        .wait_find("#projects-table tr[data-project='width']")
        .await;

    browser
        .goto(&format!("{}/runs/new?project=width", server.base))
        .await;
    browser.choose("#f-recipe", "simclr-tiny").await;
    let filled = wait_script(
        &browser,
        "const n = document.querySelector('#f-name'), t = document.querySelector('#f-method-temperature'); \
         return n && t && n.value === 'simclr-tiny' \
           ? [t.value, document.querySelector('#f-method-negatives').value, document.querySelector('#f-project').value] : null",
        30,
    )
    .await;
    assert_eq!(filled, json!(["0.2", "all", "width"]));
    browser.set_field("#f-method-temperature", "warm").await;
    let refused = wait_script(
        &browser,
        "const l = document.querySelector('#f-method-temperature').closest('label'); \
         return l.classList.contains('invalid') && l.querySelector('.help').textContent",
        10,
    )
    .await;
    assert!(refused.as_str().unwrap().contains("`warm`"), "{refused}");
    browser.set_field("#f-method-temperature", "0.3").await;
    for (field, value) in [
        ("#f-name", "wide-run"),
        ("#f-data-classes", "3"),
        ("#f-data-train_images", "120"),
        ("#f-data-test_images", "30"),
        ("#f-backbone-width", "8"),
        ("#f-projector-dims", "32-16"),
        ("#f-optimizer-batch_size", "16"),
        ("#f-schedule-epochs", "2"),
    ] {
        browser.set_field(field, value).await;
    }
    browser.choose("#f-subset-kind", "per_class").await;
    browser.set_field("#f-subset-per_class", "30").await;
    browser.click("#launch").await;
    browser.wait_find("#loss-chart").await;
    let path = browser.script("return location.pathname").await;
    let run_id = path
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let run = get_run(&client, &server, &run_id).await;
    assert_eq!(run.project, "width");
    assert_eq!(run.name, "wide-run");
    let spec = serde_json::to_value(&run.spec).unwrap();
    assert_eq!(
        spec["method"],
        json!({"name": "simclr", "temperature": 0.3, "negatives": "all"})
    );
    assert_eq!(
        spec["subset"],
        json!({"kind": "per_class", "per_class": 30, "seed": 0})
    );

    // Found by its project; the address keeps the filter.
    browser.goto(&format!("{}/runs", server.base)).await;
    browser.choose("#filter-project", "width").await;
    let listed = wait_script(
        &browser,
        "const rows = document.querySelectorAll('#runs-table tbody tr'); \
         return location.search === '?project=width' && rows.length === 1 ? rows[0].cells[1].textContent : null",
        30,
    )
    .await;
    assert!(listed.as_str().unwrap().starts_with("wide-run"), "{listed}");

    // Tagged in bulk, then found by the tag.
    browser.click(&format!(".pick[data-run='{run_id}']")).await;
    browser.set_field("#bulk-tag", "wide").await;
    browser.click("#bulk-tag-add").await;
    assert_eq!(text("#bulk-result").await, "1 of 1 tagged");
    assert_eq!(get_run(&client, &server, &run_id).await.tags, ["wide"]);
    browser
        .goto(&format!("{}/runs?tag=wide", server.base))
        .await;
    browser
        .wait_find(&format!(".pick[data-run='{run_id}']"))
        .await;

    // Cloned from its page: the form holds its settings, in its project.
    let done = wait_terminal(&client, &server, &run_id).await;
    assert_succeeded(&done);
    browser
        .goto(&format!("{}/runs/{run_id}", server.base))
        .await;
    browser.click("#clone-run").await;
    let clone = wait_script(
        &browser,
        "const n = document.querySelector('#f-name'); \
         return document.querySelector('#cloned-from') && n && n.value === 'wide-run-copy' \
           ? [document.querySelector('#f-method-temperature').value, document.querySelector('#f-project').value, \
              document.querySelector('#f-subset-per_class').value] : null",
        30,
    )
    .await;
    assert_eq!(clone, json!(["0.3", "width", "30"]));

    // Annotated and moved from its page.
    browser
        .goto(&format!("{}/runs/{run_id}", server.base))
        .await;
    browser.click("#note-edit").await;
    browser.set_field("#note-input", "Width **32**").await;
    browser.click("#note-save").await;
    assert_eq!(text("#note strong").await, "32");
    browser.choose("#move-project", "default").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_run(&client, &server, &run_id).await.project != "default" {
        assert!(Instant::now() < deadline, "the run was not moved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleted in bulk after the confirmation; then the empty project.
    browser
        .goto(&format!("{}/runs?project=default", server.base))
        .await;
    browser.click(&format!(".pick[data-run='{run_id}']")).await;
    browser.click("#bulk-delete").await;
    browser.wait_find("#bulk-delete-confirm").await;
    browser.click("#bulk-delete-yes").await;
    assert_eq!(text("#bulk-result").await, "1 of 1 deleted");
    let status = client
        .get(server.url(&format!("/runs/{run_id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    assert!(!dir.path().join("artifacts/runs").join(&run_id).exists());
    browser.goto(&format!("{}/projects", server.base)).await;
    browser.click("#delete-project-width").await;
    browser.click("#delete-project-width-yes").await;
    let gone = wait_script(
        &browser,
        "return document.querySelector('#projects-table') && !document.querySelector(\"tr[data-project='width']\")",
        20,
    )
    .await;
    assert_eq!(gone, json!(true));
}

/// Polls a script until it returns something other than null/false.
async fn wait_script(browser: &Browser, js: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = browser.script(js).await;
        if !(v.is_null() || v == json!(false)) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for `{js}`");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// From a run's page to a 3-value projector-dimension sweep: one point per
/// value and per layer on the chart, the table sorts, two runs compare.
#[tokio::test(flavor = "multi_thread")]
async fn sweep_from_a_run_page_in_chromium() {
    if !e2e_required() {
        eprintln!("skipped: set SSLAB_E2E=1 (cargo xtask test does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let run = create(&client, &server, &tiny_spec(1)).await;
    assert_succeeded(&wait_terminal(&client, &server, &run.id).await);
    let browser = Browser::start().await;
    browser.sign_in_with_link(&server).await;

    // A token made on the Tokens page works for a script until it is revoked there.
    browser.goto(&format!("{}/tokens", server.base)).await;
    browser.set_field("#token-name", "notebook").await;
    browser.click("#token-form button[type=submit]").await;
    let secret = wait_script(
        &browser,
        "const s = document.querySelector('#token-secret'); return s ? s.textContent : null",
        30,
    )
    .await;
    let script_client = common::client_with(secret.as_str().unwrap());
    let runs_url = server.url("/runs");
    assert_eq!(
        script_client.get(&runs_url).send().await.unwrap().status(),
        200
    );
    browser.click("#tokens-table button.revoke").await;
    wait_script(
        &browser,
        "return document.querySelectorAll('#tokens-table button.revoke').length < 2 || null",
        30,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while script_client.get(&runs_url).send().await.unwrap().status() != 401 {
        assert!(Instant::now() < deadline, "the revoked token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An admin adds a member; a new user gets a one-time sign-in link.
    browser.goto(&format!("{}/members", server.base)).await;
    browser.set_field("#member-name", "newbie").await;
    browser.click("#member-form button[type=submit]").await;
    let status = wait_script(
        &browser,
        "const s = document.querySelector('#member-status'); return s ? s.textContent : null",
        30,
    )
    .await;
    assert!(
        status.as_str().unwrap().contains("/signin?code=sslab_"),
        "{status}"
    );
    let members = wait_script(
        &browser,
        "return document.querySelectorAll('#members-table tbody tr').length === 2 || null",
        30,
    )
    .await;
    assert_eq!(members, json!(true));

    browser
        .goto(&format!("{}/runs/{}", server.base, run.id))
        .await;
    browser.click("#sweep-projector_dim").await;
    // The preset fills the form from the run: widths around its own 16.
    let values = wait_script(
        &browser,
        "const v = document.querySelector('#sweep-values'); return v && v.value ? v.value : null",
        30,
    )
    .await;
    assert_eq!(values, json!("32-8, 32-16, 32-32, 32-64"));
    browser
        .set_field("#sweep-values", "32-8, 32-16, 32-32")
        .await;
    browser.set_field("#sweep-seeds", "3").await;
    let count = browser
        .script("return document.querySelector('#sweep-count').textContent")
        .await;
    assert_eq!(count, json!("3 runs"));
    browser.click("#launch-sweep").await;

    // Every run finishes; the chart has a point per value and per layer.
    let per_layer = wait_script(
        &browser,
        r#"const c = document.querySelector('#sweep-chart-projector-dims');
           if (!c || c.getAttribute('data-points') !== '9') return null;
           const out = {};
           c.querySelectorAll('.chart-data tbody tr').forEach(r => out[r.dataset.series] = (out[r.dataset.series] || 0) + 1);
           return [out, c.dataset.lines, c.querySelectorAll('svg polyline').length > 0];"#,
        240,
    )
    .await;
    assert_eq!(
        per_layer,
        json!([{"backbone": 3, "proj.0": 3, "proj.1": 3}, "3", true])
    );
    let labels = browser
        .script("return Array.from(document.querySelectorAll('#sweep-chart-projector-dims .chart-data tbody tr')).filter(r => r.dataset.series === 'backbone').map(r => r.dataset.x)")
        .await;
    assert_eq!(labels, json!(["32-8", "32-16", "32-32"]));
    wait_script(
        &browser,
        "return document.querySelector('#sweep-counts').textContent.includes('3 succeeded')",
        30,
    )
    .await;
    let lines = browser
        .script("return document.querySelector('#parallel-coords').getAttribute('data-runs')")
        .await;
    assert_eq!(lines, json!("3"));

    // The table sorts by the kNN accuracy at the backbone.
    let column = browser
        .script("return Array.from(document.querySelectorAll('#sweep-table th')).findIndex(th => th.textContent.startsWith('knn @ backbone'))")
        .await;
    let column = column.as_i64().unwrap();
    assert!(column > 0, "no kNN column");
    browser
        .click(&format!("#sweep-table th[data-column='{column}']"))
        .await;
    let sorted = browser
        .script(&format!(
            "return Array.from(document.querySelectorAll('#sweep-table tbody tr')).map(r => Number(r.cells[{column}].textContent))"
        ))
        .await;
    let sorted: Vec<f64> = sorted
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(sorted.len(), 3);
    assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "{sorted:?}");
    browser
        .screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep-page.png"))
        .await;

    // Pick two of the sweep's runs from the filtered list and compare them.
    let sweep_id = browser
        .script("return location.pathname.split('/').pop()")
        .await;
    browser
        .goto(&format!(
            "{}/?sweep={}",
            server.base,
            sweep_id.as_str().unwrap()
        ))
        .await;
    wait_script(
        &browser,
        "return document.querySelectorAll('#runs-table tbody tr').length === 3",
        30,
    )
    .await;
    browser
        .click("#runs-table tbody tr:nth-child(1) input.pick")
        .await;
    browser
        .click("#runs-table tbody tr:nth-child(2) input.pick")
        .await;
    browser
        .click("#runs-table tbody tr:nth-child(3) input.pick")
        .await;
    browser.click("#compare-selected").await;
    browser.wait_find("#compare-probes").await;
    let diff = wait_script(
        &browser,
        "const t = document.querySelector('#spec-diff'); return t ? Array.from(t.querySelectorAll('tbody td:first-child')).map(c => c.textContent) : null",
        30,
    )
    .await;
    assert_eq!(diff, json!(["projector.dims"]));
    let curves = browser
        .script("return document.querySelector('#compare-loss').getAttribute('data-lines')")
        .await;
    assert_eq!(curves, json!("3"));
    let probe_curves = browser
        .script("return Array.from(document.querySelectorAll('#compare-probe-chart polyline')).map(p => p.getAttribute('points').trim().split(' ').length)")
        .await;
    assert_eq!(
        probe_curves,
        json!([3, 3, 3]),
        "one kNN curve per run through every layer"
    );
    // The CKA of the two runs, layer by layer, as a heatmap with values.
    browser.click("#cka-start").await;
    let cells = wait_script(
        &browser,
        "const m = document.querySelector('#cka-heatmap'); \
         return m ? Array.from(m.querySelectorAll('.cka-cell')).map(c => Number(c.dataset.value)) : null",
        90,
    )
    .await;
    let cells: Vec<f64> = serde_json::from_value(cells).unwrap();
    assert_eq!(
        cells.len(),
        36,
        "3 blocks and 3 layers on each side: {cells:?}"
    );
    assert!(
        cells.iter().all(|v| (-0.05..=1.0 + 1e-9).contains(v)),
        "{cells:?}"
    );
    let hover = browser
        .script("return document.querySelector('#cka-heatmap .cka-cell title').textContent")
        .await;
    assert!(
        hover.as_str().unwrap().starts_with("block0 × block0: "),
        "{hover}"
    );
    // The family of the three runs: a 3 × 3 matrix in dendrogram order,
    // ones on the diagonal, and the dendrogram's two merges drawn.
    browser.click("#cka-family-start").await;
    let family = wait_script(
        &browser,
        "const m = document.querySelector('#cka-family'); \
         return m ? {cells: Array.from(m.querySelectorAll('.cka-cell')).map(c => [c.dataset.row, c.dataset.col, Number(c.dataset.value)]), \
                     order: m.dataset.order, links: m.querySelectorAll('.dendrogram-link').length, \
                     rows: Array.from(m.querySelectorAll('.family-row')).map(t => t.textContent)} : null",
        90,
    )
    .await;
    let cells = family["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 9, "{family}");
    assert_eq!(family["links"], json!(2), "{family}");
    let order: Vec<&str> = family["order"].as_str().unwrap().split(',').collect();
    assert_eq!(order.len(), 3);
    for (k, c) in cells.iter().enumerate() {
        let (row, col, v) = (
            c[0].as_str().unwrap(),
            c[1].as_str().unwrap(),
            c[2].as_f64().unwrap(),
        );
        assert_eq!((row, col), (order[k / 3], order[k % 3]), "{family}");
        assert!((-0.05..=1.0 + 1e-9).contains(&v), "{family}");
        if row == col {
            assert!((v - 1.0).abs() < 1e-3, "{family}");
        }
    }
    assert_eq!(family["rows"].as_array().unwrap().len(), 3);

    // The CKA jobs read the sweep's runs: deleting the sweep is refused on
    // its page, by name, and nothing goes.
    let sweep_id = sweep_id.as_str().unwrap();
    browser
        .goto(&format!("{}/sweeps/{sweep_id}", server.base))
        .await;
    browser.click("#delete-sweep").await;
    browser.wait_find("#delete-sweep-confirm").await;
    browser.click("#delete-sweep-yes").await;
    let refused = wait_script(
        &browser,
        "const e = document.querySelector('#delete-sweep-error'); return e ? e.textContent : null",
        20,
    )
    .await;
    assert!(refused.as_str().unwrap().contains("CKA job"), "{refused}");
    let still: Value = get_json(&client, server.url(&format!("/sweeps/{sweep_id}"))).await;
    assert_eq!(still["id"], json!(sweep_id));
}

/// An image-folder archive uploaded through the Data sets page is listed
/// with its splits and a thumbnail sheet that loads; a file that is not an
/// archive is refused on the page.
#[tokio::test(flavor = "multi_thread")]
async fn upload_a_data_set_in_chromium() {
    if !e2e_required() {
        eprintln!("skipped: set SSLAB_E2E=1 (cargo xtask test does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None);
    let archive = dir.path().join("pets.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (c, colour) in [("cat", [200u8, 40, 40]), ("dog", [40, 200, 40])] {
        for i in 0..10u32 {
            let img = image::RgbImage::from_fn(24, 24, |x, y| {
                if (x * y + i) % 7 == 0 {
                    image::Rgb([0, 0, 0])
                } else {
                    image::Rgb(colour)
                }
            });
            let path = dir.path().join(format!("{c}-{i}.png"));
            img.save(&path).unwrap();
            tar.append_path_with_name(&path, format!("pets/{c}/{i}.png"))
                .unwrap();
        }
    }
    tar.finish().unwrap();
    let not_archive = dir.path().join("notes.zip");
    std::fs::write(&not_archive, "plain text").unwrap();

    let browser = Browser::start().await;
    browser.sign_in_with_link(&server).await;
    browser.goto(&format!("{}/datasets", server.base)).await;
    browser.set_field("#upload-name", "web-pets").await;
    browser.set_field("#upload-size", "16").await;
    browser.choose_file("#upload-file", &archive).await;
    browser.click("#upload-submit").await;
    let loaded = wait_script(
        &browser,
        "const i = document.querySelector('#dataset-web-pets img.samples'); \
         return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null",
        60,
    )
    .await;
    assert_eq!(loaded, json!([256, 64]));
    let row = browser
        .script("return document.querySelector('#dataset-web-pets').textContent")
        .await;
    let row = row.as_str().unwrap_or_default();
    assert!(row.contains("train 16") && row.contains("test 4"), "{row}");
    assert!(row.contains("2 classes: cat, dog"), "{row}");

    browser.set_field("#upload-name", "broken").await;
    browser.choose_file("#upload-file", &not_archive).await;
    browser.click("#upload-submit").await;
    let status = wait_script(
        &browser,
        "const s = document.querySelector('#upload-status.error'); return s ? s.textContent : null",
        30,
    )
    .await;
    assert!(
        status
            .as_str()
            .unwrap_or_default()
            .contains("not a tar, tar.gz or zip"),
        "{status}"
    );
    let listed: Vec<Value> = get_json(&server.client(), server.url("/datasets")).await;
    assert_eq!(listed.len(), 1);

    // Nothing was made from it: it goes, after the confirmation.
    browser.click("#delete-dataset-web-pets").await;
    browser.click("#delete-dataset-web-pets-yes").await;
    wait_script(
        &browser,
        "return !document.querySelector('#dataset-web-pets') && !!document.querySelector('.empty')",
        20,
    )
    .await;
    let listed: Vec<Value> = get_json(&server.client(), server.url("/datasets")).await;
    assert!(listed.is_empty());

    // The API reference lists every operation of the OpenAPI document.
    browser.goto(&format!("{}/api", server.base)).await;
    browser.wait_find("#api-table").await;
    let rows = browser
        .script("return document.querySelectorAll('#api-table tr.api-op').length")
        .await;
    let doc: Value = get_json(&server.client(), server.url("/openapi.json")).await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(rows.as_u64(), Some(operations as u64));
    assert!(operations > 40);
}

/// An audit started through the API renders on its page: the curves of
/// both snapshots, the four-way table, and a gallery whose images and crop
/// boxes load.
#[tokio::test(flavor = "multi_thread")]
async fn an_audit_page_in_chromium() {
    if !e2e_required() {
        eprintln!("skipped: set SSLAB_E2E=1 (cargo xtask test does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let spec = json!({
        "name": "page-audit", "snapshots": [1], "split": {"per_class": 6}, "attack": {"k": 10},
        "run": {"seed": 3,
                "data": {"source": "scenes", "classes": 3, "train_images": 90, "test_images": 30},
                "backbone": {"kind": "tiny_cnn", "width": 8}, "projector": {"dims": "32-16"},
                "optimizer": {"batch_size": 12}, "schedule": {"epochs": 2}},
        "reconstruct": common::tiny_reconstruct()
    });
    let resp = client
        .post(server.url("/audits"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let audit: Value = resp.json().await.unwrap();
    let id = audit["id"].as_str().unwrap().to_string();

    let browser = Browser::start().await;
    browser.sign_in_with_link(&server).await;
    browser.goto(&format!("{}/audits/{id}", server.base)).await;
    // Two snapshots × 11 fractions × two models.
    wait_script(
        &browser,
        "const c = document.querySelector('#audit-curve'); return c && c.dataset.points === '44'",
        180,
    )
    .await;
    let lines = browser
        .script("return document.querySelectorAll('#audit-curve polyline').length")
        .await;
    assert_eq!(lines, json!(4));
    let counted = browser
        .script("return Array.from(document.querySelectorAll('#audit-four-way td:nth-child(2)')).reduce((s, td) => s + Number(td.textContent), 0)")
        .await;
    let split = browser
        .script("return document.querySelector('#audit-split').textContent")
        .await;
    assert!(
        split.as_str().unwrap_or_default().starts_with("A-only 18"),
        "{split}"
    );
    assert!(counted.as_u64().unwrap_or(0) > 0, "{counted}");
    let loaded = wait_script(
        &browser,
        "const imgs = Array.from(document.querySelectorAll('#audit-gallery img')); \
         return imgs.length > 1 && imgs.every(i => i.complete && i.naturalWidth === 32) ? imgs.length : null",
        30,
    )
    .await;
    assert!(loaded.as_u64().unwrap_or(0) >= 2, "{loaded}");
    let boxes = browser
        .script("return document.querySelectorAll('#audit-gallery svg.crop rect').length")
        .await;
    assert!(boxes.as_u64().unwrap_or(0) >= 1, "{boxes}");
    // The drawings from the crops: the grid (3 rows of 32 px) and its figures.
    let grid = wait_script(
        &browser,
        "const i = document.querySelector('#audit-reconstruction'); \
         return i && i.complete && i.naturalHeight > 0 ? i.naturalHeight : null",
        30,
    )
    .await;
    assert_eq!(grid, json!(96));
    let figures = browser
        .script("return document.querySelector('#audit-reconstruction-figures').textContent")
        .await;
    assert!(
        figures.as_str().unwrap_or_default().contains("chance0.333"),
        "{figures}"
    );
    browser.goto(&format!("{}/audits", server.base)).await;
    let row = wait_script(
        &browser,
        "const t = document.querySelector('#audits-table'); return t ? t.textContent : null",
        30,
    )
    .await;
    assert!(
        row.as_str().unwrap_or_default().contains("page-audit"),
        "{row}"
    );

    // Deleted from its page, after the confirmation: rows and images go.
    browser.goto(&format!("{}/audits/{id}", server.base)).await;
    browser.click("#delete-audit").await;
    browser.click("#delete-audit-yes").await;
    let back = wait_script(
        &browser,
        "return location.pathname === '/audits' ? location.pathname : null",
        20,
    )
    .await;
    assert_eq!(back, json!("/audits"));
    let gone = client
        .get(server.url(&format!("/audits/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    assert!(!dir.path().join("artifacts/audits").join(&id).exists());
}

/// A run's spec for the demo tests: three classes of 32 px scenes, one epoch.
fn demo_spec(backbone: Value) -> Value {
    let mut spec = tiny_spec(1);
    spec["backbone"] = backbone;
    spec
}

/// Crops the parity check compares, `[x0, y0, x1, y1)` in pixels.
const CROPS: [[u32; 4]; 3] = [[0, 0, 32, 32], [2, 3, 20, 17], [10, 12, 31, 30]];

/// The page's worker answers like the native engine: the same embedding
/// (relative error under 1e-4) and the same k-NN answer, for a tiny CNN, a
/// ResNet-18 and a ViT bundle.
async fn worker_matches_native(
    browser: &Browser,
    server: &Server,
    slug: &str,
    bundle: &std::path::Path,
) {
    use sslab_engine::export::bundle::{Demo, read_dir};
    let (manifest, mut files) = read_dir(bundle).unwrap();
    let image = manifest.images[0].file.clone();
    let rgb =
        sslab_engine::data::folder::decode_bytes(&files[&image], manifest.input_size).unwrap();
    let native = Demo::open(manifest.clone(), &mut files).unwrap();

    browser.goto(&format!("{}/demo/{slug}", server.base)).await;
    let js = format!(
        r#"const done = arguments[arguments.length - 1];
        (async () => {{
            const d = window.sslabDemo;
            await d.ready;
            await d.call('bundleImage', {{ path: {image:?} }});
            const out = [];
            for (const rect of {crops}) {{
                const e = await d.call('embed', {{ rect }});
                const p = await d.call('predict', {{ rect }});
                out.push({{ embedding: e.embedding, answer: p.answer }});
            }}
            done(out);
        }})().catch(err => done({{ error: String(err) }}));"#,
        crops = serde_json::to_string(&CROPS).unwrap()
    );
    let got = browser.script_async(&js).await;
    assert!(got.get("error").is_none(), "{slug}: {got}");
    for (i, rect) in CROPS.iter().enumerate() {
        let want = native.embed(&rgb, *rect).unwrap().concat();
        let have: Vec<f32> = serde_json::from_value(got[i]["embedding"].clone()).unwrap();
        assert_eq!(have.len(), want.len(), "{slug}");
        let diff: f64 = have
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        let rel = (diff / norm).sqrt();
        assert!(rel < 1e-4, "{slug} crop {rect:?}: relative error {rel:e}");
        let answer = native.predict(&rgb, *rect).unwrap();
        let page: sslab_shared::demo::Answer =
            serde_json::from_value(got[i]["answer"].clone()).unwrap();
        for (m, (a, b)) in answer.models.iter().zip(&page.models).enumerate() {
            assert_eq!(
                a.top[0].label, b.top[0].label,
                "{slug} model {m} crop {rect:?}"
            );
            assert_eq!(a.neighbours, b.neighbours, "{slug} model {m} crop {rect:?}");
        }
    }
}

/// Publishing, the public page signed out, live answers as the crop box
/// moves, uploads, bad input, unpublishing; and parity with the native
/// engine for three architectures.
#[tokio::test(flavor = "multi_thread")]
async fn a_public_demo_in_chromium() {
    if !e2e_required() {
        eprintln!("skipped: set SSLAB_E2E=1 (cargo xtask test does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A 2 MiB cap: the ResNet-18's f32 weights are over it, its f16 ones not.
    let server = Server::start_with(
        &dir.path().join("server"),
        None,
        &[("SSLAB_MAX_DEMO_MIB", "2")],
    );
    let admin = server.client();
    let work = dir.path();
    // Trained long enough that crops of one image land near different neighbours.
    let mut cnn_spec = demo_spec(json!({"kind": "tiny_cnn", "width": 16}));
    cnn_spec["schedule"]["epochs"] = json!(8);
    let cnn = export_run(work, "cnn", &cnn_spec, &[]);
    let resnet_spec = demo_spec(json!({"kind": "resnet18", "width": 16}));
    let resnet_f32 = export_run(work, "resnet", &resnet_spec, &[]);
    let resp = publish(&admin, &server, tar_dir(&resnet_f32)).await;
    assert_eq!(resp.status(), 413);
    let msg = resp.text().await.unwrap();
    assert!(msg.contains("over this server's cap of 2.0 MiB"), "{msg}");
    let resnet = work.join("resnet-f16");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sslab"))
        .args(["export", "--f16", "--run"])
        .arg(work.join("resnet"))
        .arg("--out")
        .arg(&resnet)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vit = export_run(
        work,
        "vit",
        &demo_spec(json!({"kind": "vit", "width": 96, "depth": 4, "heads": 3, "patch_size": 4})),
        &["--f16", "--layer", "proj.1"],
    );

    // Damaged bundles are refused, naming the file, and nothing is published.
    let broken = work.join("broken");
    for sub in ["", "images"] {
        std::fs::create_dir_all(broken.join(sub)).unwrap();
        for entry in std::fs::read_dir(cnn.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), broken.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    let mut f16 = std::fs::read(cnn.join("model-0.f16")).unwrap();
    f16[7] ^= 0x40;
    std::fs::write(broken.join("model-0.f16"), &f16).unwrap();
    let resp = publish(&admin, &server, tar_dir(&broken)).await;
    assert_eq!(resp.status(), 422);
    let msg = resp.text().await.unwrap();
    assert!(
        msg.contains("`model-0.f16` does not match its hash"),
        "{msg}"
    );
    let resp = publish(&admin, &server, b"not a tar archive at all".to_vec()).await;
    assert_eq!(resp.status(), 422);
    let none: Vec<Value> = get_json(&admin, server.url("/demos")).await;
    assert!(none.is_empty(), "{none:?}");

    let mut slugs = Vec::new();
    for bundle in [&cnn, &resnet, &vit] {
        let resp = publish(&admin, &server, tar_dir(bundle)).await;
        assert_eq!(resp.status(), 201);
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let demo: Value = resp.json().await.unwrap();
        assert_eq!(
            location,
            format!("/demo/{}", demo["slug"].as_str().unwrap())
        );
        slugs.push(demo["slug"].as_str().unwrap().to_string());
    }
    let listed: Vec<Value> = get_json(&admin, server.url("/demos")).await;
    assert_eq!(listed.len(), 3);

    // An audit on the server, exported by a job and published from it.
    let audit_spec = json!({"name": "web-audit", "snapshots": [1], "split": {"per_class": 6}, "attack": {"k": 10},
        "run": {"seed": 3, "data": {"source": "scenes", "classes": 3, "train_images": 90, "test_images": 30},
                "backbone": {"kind": "tiny_cnn", "width": 8}, "projector": {"dims": "32-16"},
                "optimizer": {"batch_size": 12}, "schedule": {"epochs": 2}}});
    let audit = post_json(&admin, server.url("/audits"), &audit_spec).await;
    let audit_id = audit["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{audit}"))
        .to_string();
    let early = admin
        .post(server.url(&format!("/audits/{audit_id}/export")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    // Queued or running: nothing to export yet (it may finish first on a fast machine).
    assert!(
        [201, 409].contains(&early.status().as_u16()),
        "{:?}",
        early.text().await
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let a: Value = get_json(&admin, server.url(&format!("/audits/{audit_id}"))).await;
        if a["status"] == "succeeded" {
            break;
        }
        assert!(a["status"] == "queued" || a["status"] == "running", "{a}");
        assert!(Instant::now() < deadline, "the audit did not finish: {a}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let job = post_json(
        &admin,
        server.url(&format!("/audits/{audit_id}/export")),
        &json!({"f16": true}),
    )
    .await;
    let job_id = job["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{job}"))
        .to_string();
    let job = loop {
        let j: Value = get_json(&admin, server.url(&format!("/exports/{job_id}"))).await;
        if j["status"] != "queued" && j["status"] != "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "the export did not finish: {j}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["bytes"].as_u64().unwrap() > 0);
    let resp = admin
        .post(server.url("/demos"))
        .json(&json!({"export": job_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let audit_demo: Value = resp.json().await.unwrap();
    assert_eq!(audit_demo["kind"], "audit");
    assert_eq!(audit_demo["models"], 2);

    // Signed out: this browser never signed in.
    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "{}/demo/{}",
            server.base,
            audit_demo["slug"].as_str().unwrap()
        ))
        .await;
    wait_script(
        &browser,
        "const s = window.sslabDemo && window.sslabDemo.state; return s && s.answered > 0",
        60,
    )
    .await;
    let heads = browser
        .script("return Array.from(document.querySelectorAll('#answers h3')).map(h => h.firstChild.textContent.trim())")
        .await;
    let mut heads: Vec<String> = serde_json::from_value(heads).unwrap();
    heads.sort();
    assert_eq!(heads, vec!["Reference", "Target"]);
    let verdict = browser
        .script("return document.querySelector('#verdict').textContent")
        .await;
    assert!(
        verdict
            .as_str()
            .unwrap()
            .starts_with("The audit's verdict for this image: "),
        "{verdict}"
    );
    let link = browser
        .script("return document.querySelector('#report-link').getAttribute('href')")
        .await;
    assert_eq!(link, json!(format!("/audits/{audit_id}")));

    for (slug, bundle) in slugs.iter().zip([&cnn, &resnet, &vit]) {
        worker_matches_native(&browser, &server, slug, bundle).await;
    }

    // The page: answers appear, and change as the crop box moves.
    browser
        .goto(&format!("{}/demo/{}", server.base, slugs[0]))
        .await;
    let first = wait_script(
        &browser,
        "const s = window.sslabDemo && window.sslabDemo.state; \
         return s && s.answered > 0 ? JSON.stringify([s.rect, s.answer]) : null",
        60,
    )
    .await;
    let title = browser
        .script("return document.querySelector('#demo-title').textContent")
        .await;
    assert_eq!(title, json!("tiny"));
    let top = browser
        .script("return document.querySelector('#answer-0').dataset.top")
        .await;
    assert!(!top.as_str().unwrap().is_empty(), "{top}");
    let answered = browser
        .script("return window.sslabDemo.state.answered")
        .await;
    // Drag the box by its middle with the mouse, then draw a new one.
    let area = browser.wait_find("#crop-area").await;
    let cropbox = browser.wait_find("#crop-box").await;
    browser.drag(&cropbox, (0, 0), (-60, -60)).await;
    browser.drag(&area, (-120, -120), (90, 70)).await;
    let moved = wait_script(
        &browser,
        &format!(
            "const s = window.sslabDemo.state; \
             return s.answered > {answered} && !s.busy ? JSON.stringify([s.rect, s.answer]) : null"
        ),
        30,
    )
    .await;
    let (before, after): (Value, Value) = (
        serde_json::from_str(first.as_str().unwrap()).unwrap(),
        serde_json::from_str(moved.as_str().unwrap()).unwrap(),
    );
    assert_ne!(before[0], after[0], "the crop did not move");
    assert_ne!(
        before[1], after[1],
        "the answer did not change from {} to {}",
        before[0], after[0]
    );
    browser.click("#reveal").await;
    let truth = browser
        .script("return document.querySelector('#truth').textContent")
        .await;
    assert!(
        truth.as_str().unwrap().starts_with("The object: "),
        "{truth}"
    );

    // The visitor's own image, and a file that is not one.
    let own = work.join("own.png");
    std::fs::write(&own, png([30, 160, 220], 1)).unwrap();
    let answered = browser
        .script("return window.sslabDemo.state.answered")
        .await;
    browser.choose_file("#upload", &own).await;
    wait_script(
        &browser,
        &format!("return window.sslabDemo.state.answered > {answered} && window.sslabDemo.state.image.upload === true"),
        30,
    )
    .await;
    let fake = work.join("fake.png");
    std::fs::write(&fake, "plain text").unwrap();
    browser.choose_file("#upload", &fake).await;
    let error = wait_script(
        &browser,
        "const e = document.querySelector('#demo-error'); return e.hidden ? null : e.textContent",
        30,
    )
    .await;
    assert!(error.as_str().unwrap().contains("not an image"), "{error}");

    // A phone-sized screen: nothing wider than the screen.
    browser
        .cmd(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": 390, "height": 844}),
        )
        .await;
    let fits = browser
        .script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    assert_eq!(fits, json!(true));
    browser
        .screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-page.png"))
        .await;

    // Served compressed, with the right types; bundle files by hash, cached for good.
    let anonymous = reqwest::Client::new();
    let wasm = anonymous
        .get(format!(
            "{}/wasm-infer/sslab_wasm_infer_bg.wasm",
            server.base
        ))
        .header("accept-encoding", "br, gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(wasm.headers()["content-type"], "application/wasm");
    assert_eq!(wasm.headers()["content-encoding"], "br");
    let manifest: Value = get_json(
        &anonymous,
        server.url(&format!("/public/demos/{}", slugs[0])),
    )
    .await;
    let file = anonymous
        .get(server.url(&format!(
            "/public/demos/{}/files/{}",
            slugs[0],
            manifest["files"][0]["sha256"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(
        file.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    // Unknown and unpublished slugs are 404s, page and files alike.
    let page = anonymous
        .get(format!("{}/demo/no-such-demo", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    let resp = admin
        .delete(server.url(&format!("/demos/{}", slugs[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    for path in [
        format!("/demo/{}", slugs[0]),
        format!("/api/v1/public/demos/{}", slugs[0]),
    ] {
        let resp = anonymous
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    browser
        .goto(&format!("{}/demo/{}", server.base, slugs[0]))
        .await;
    browser.wait_find("#no-demo").await;
}

/// A study started through the API renders on its page once its runs end:
/// the findings table with verdicts, charts that load, the parts linked to
/// their runs; the Studies page lists it beside the shipped studies.
#[tokio::test(flavor = "multi_thread")]
async fn a_study_page_in_chromium() {
    if !e2e_required() {
        eprintln!("skipped: set SSLAB_E2E=1 (cargo xtask test does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let study = json!({
        "name": "page-study", "paper": "arXiv:2206.13378", "question": "Is the backbone better?",
        "claim": "about 20 points",
        "sweeps": {"main": {"seeds": [1, 2], "base": tiny_spec(1)}},
        "findings": [{"name": "backbone beats projector", "claim": "+20 points", "expect": "positive",
            "of": {"part": "sweeps.main", "layer": "backbone", "metric": "knn.top1"},
            "minus": {"part": "sweeps.main", "layer": "proj.1", "metric": "knn.top1"}}],
    });
    let created = post_json(&client, server.url("/studies"), &study).await;
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();

    let browser = Browser::start().await;
    browser.sign_in_with_link(&server).await;
    browser.goto(&format!("{}/studies/{id}", server.base)).await;
    let verdict = wait_script(
        &browser,
        "const s = document.querySelector('section.finding'); \
         return s && s.dataset.verdict !== 'no data' ? s.dataset.verdict : null",
        180,
    )
    .await;
    assert!(
        ["agrees", "disagrees", "inconclusive"].contains(&verdict.as_str().unwrap_or_default()),
        "{verdict}"
    );
    let progress = wait_script(
        &browser,
        "const p = document.querySelector('#study-progress'); \
         return p && p.textContent.startsWith('2 of 2 done') ? p.textContent : null",
        60,
    )
    .await;
    assert!(progress.is_string());
    let table = browser
        .script("return document.querySelector('#findings').textContent")
        .await;
    assert!(
        table
            .as_str()
            .unwrap_or_default()
            .contains("backbone beats projector"),
        "{table}"
    );
    let chart = wait_script(
        &browser,
        "const i = document.querySelector('img.finding-chart'); \
         return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null",
        30,
    )
    .await;
    assert_eq!(chart, json!(520));
    let links = browser
        .script("return Array.from(document.querySelectorAll('#study-parts a')).map(a => a.getAttribute('href'))")
        .await;
    let links = links.as_array().cloned().unwrap_or_default();
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(
        links
            .iter()
            .all(|l| l.as_str().unwrap_or_default().starts_with("/runs/"))
    );

    browser.goto(&format!("{}/studies", server.base)).await;
    let listed = wait_script(
        &browser,
        "const t = document.querySelector('#studies-table'); return t ? t.textContent : null",
        30,
    )
    .await;
    assert!(
        listed.as_str().unwrap_or_default().contains("page-study"),
        "{listed}"
    );
    let shipped = wait_script(
        &browser,
        "const b = document.querySelectorAll('#shipped-studies button.start-micro'); \
         return b.length >= 6 ? Array.from(b).map(x => x.dataset.study) : null",
        30,
    )
    .await;
    assert!(
        shipped
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "guillotine"),
        "{shipped}"
    );
}

/// A run's decoders on its page: a finished one shows its numbers and its
/// grids (loaded), and the form queues another that the page follows and
/// cancels.
#[tokio::test(flavor = "multi_thread")]
async fn a_decoder_on_the_run_page_in_chromium() {
    if !e2e_required() {
        eprintln!("skipped: set SSLAB_E2E=1 (cargo xtask test does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let run = create(&client, &server, &tiny_spec(1)).await;
    assert_succeeded(&wait_terminal(&client, &server, &run.id).await);
    let small = json!({
        "layers": ["backbone", "proj.1"], "image_size": 16, "held_out_per_class": 2,
        "steps": 10, "batch": 8, "samples": 2,
        "infusion": {"steps": 3, "channels": 8, "blocks": 1}
    });
    let job = post_json(
        &client,
        server.url(&format!("/runs/{}/decoders", run.id)),
        &small,
    )
    .await;
    let id = job["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{job}"))
        .to_string();
    let done = common::wait_job(&client, server.url(&format!("/decoders/{id}")), 120).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let browser = Browser::start().await;
    browser.sign_in_with_link(&server).await;
    browser
        .goto(&format!("{}/runs/{}", server.base, run.id))
        .await;
    let width = wait_script(
        &browser,
        "const i = document.querySelector('.decoder[data-status=succeeded] img.decoder-samples'); \
         return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null",
        60,
    )
    .await;
    assert_eq!(width, json!(32 + 2 * (6 + 2 * 32)));
    let rows = browser
        .script("return Array.from(document.querySelectorAll('.decoder-report tr[data-layer]')).map(r => r.dataset.layer)")
        .await;
    assert_eq!(rows, json!(["backbone", "proj.1"]));

    browser.set_field("#decoder-steps", "100000").await;
    browser.click("#decoder-submit").await;
    let started = wait_script(
        &browser,
        "const d = document.querySelectorAll('.decoder'); \
         return d.length == 2 && d[0].dataset.status != 'succeeded' ? d[0].dataset.decoder : null",
        30,
    )
    .await;
    let started = started.as_str().unwrap().to_string();
    browser.click(".decoder .decoder-cancel").await;
    let job = common::wait_job(&client, server.url(&format!("/decoders/{started}")), 60).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let shown = wait_script(
        &browser,
        "const d = document.querySelector('.decoder'); \
         return d && d.dataset.status == 'cancelled' ? d.dataset.status : null",
        30,
    )
    .await;
    assert_eq!(shown, json!("cancelled"));
}
