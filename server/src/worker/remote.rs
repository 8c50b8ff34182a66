//! `sslab worker`: a worker on another machine. It holds a worker token
//! and nothing else — no database, no storage credentials — and does
//! everything through `/api/v1/worker/…`: registers (the server refuses
//! another sslab version), claims runs, and reports on them through
//! `RemoteHost`. Calls are retried with back-off while the server is away.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use sslab_shared::api::{Evaluation, RunStatus};
use sslab_shared::spec::{DataSpec, RegisteredData, RunSpec};
use sslab_shared::worker::{
    ClaimAnswer, ClaimRequest, HeartbeatAnswer, LEASE_HEADER, LogBatch, LogLine, MetricBatch,
    Registration, RunEnd, RunRelease, RunStart, StoredFile, WorkerInfo,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::host::{Host, Report, RunJob};
use crate::store::{JobKind, Lease};

/// How long one call keeps retrying before it reports failure: under the
/// lease, so that a worker that gives up still has its lease to hand back.
const RETRY_FOR: Duration = Duration::from_secs(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

pub struct Options {
    /// The server's address, e.g. `https://sslab.example.org`.
    pub server: String,
    pub token: String,
    /// `cpu`, or GPUs: one slot each unless `slots` says otherwise.
    pub devices: Vec<String>,
    pub slots: Option<usize>,
    /// Checkpoints being trained, and cached data.
    pub work_dir: PathBuf,
    /// How often an idle slot asks for work.
    pub poll: Duration,
}

/// The API as one worker slot sees it.
#[derive(Clone)]
pub struct RemoteHost {
    client: reqwest::Client,
    api: String,
    token: String,
    worker: String,
    host: String,
    device: String,
    pub(super) work_dir: PathBuf,
}

/// Why a call did not succeed.
pub(super) enum Failure {
    /// 409: the lease is not (or no longer) this worker's; what the server said.
    Conflict(String),
    Other(anyhow::Error),
}

impl RemoteHost {
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Sends the request `build` makes until it gets an answer that is not
    /// a network error, a 5xx or a 429, for up to `RETRY_FOR`.
    pub(super) async fn call(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        call(&self.client, &self.token, what, build).await
    }

    fn run_path(&self, lease: &Lease, tail: &str) -> String {
        self.url(&format!("/worker/runs/{}/{tail}", lease.id))
    }

    /// A POST on a held run: `Ok(false)` on 409.
    async fn report(&self, lease: &Lease, tail: &str, body: &impl serde::Serialize) -> Report {
        let url = self.run_path(lease, tail);
        let body = serde_json::to_vec(body)?;
        let token = lease.token.clone();
        match self
            .call(tail, |c| {
                c.post(&url)
                    .header(LEASE_HEADER, &token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(Failure::Conflict(_)) => Ok(false),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.work_dir.join("runs").join(id)
    }

    async fn upload(&self, lease: &Lease, file: &Path, name: &str, query: &str) -> Report {
        let path = format!("/worker/runs/{}/files/{name}{query}", lease.id);
        self.upload_to(&path, &lease.token, file, name).await
    }

    /// PUTs `file` to `path` under the lease `token`, checked against the
    /// hash the server answers; `Ok(false)` on 409.
    pub(super) async fn upload_to(
        &self,
        path: &str,
        token: &str,
        file: &Path,
        name: &str,
    ) -> Report {
        let url = self.url(path);
        let expected = sha256_file(file).await?;
        let token = token.to_string();
        let mut attempt_error = None;
        for _ in 0..3 {
            let body = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = body.metadata().await?.len();
            let stream = tokio_util::io::ReaderStream::new(body);
            let req = self
                .client
                .put(&url)
                .bearer_auth(&self.token)
                .header(LEASE_HEADER, &token)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream));
            // A streamed body cannot be replayed by `call`: retried here.
            match answer(req.send().await, name).await {
                Ok(resp) => {
                    let stored: StoredFile = resp.json().await?;
                    if stored.sha256 != expected {
                        bail!(
                            "the server stored {name} with SHA-256 {}, not {expected}",
                            stored.sha256
                        );
                    }
                    return Ok(true);
                }
                Err(Failure::Conflict(_)) => return Ok(false),
                Err(Failure::Other(e)) => {
                    tracing::warn!(file = name, error = %e, "upload failed; retrying");
                    attempt_error = Some(e);
                    tokio::time::sleep(MAX_BACKOFF).await;
                }
            }
        }
        Err(attempt_error.unwrap_or_else(|| anyhow!("uploading {name} failed")))
    }

    /// Fetches a stored file into `to`, checked against its hash.
    pub(super) async fn download(
        &self,
        path: &str,
        lease: &str,
        file: &StoredFile,
        to: &Path,
    ) -> anyhow::Result<()> {
        if to.is_file() && sha256_file(to).await.ok().as_deref() == Some(file.sha256.as_str()) {
            return Ok(());
        }
        let url = self.url(path);
        let resp = self
            .call(&file.name, |c| c.get(&url).header(LEASE_HEADER, lease))
            .await
            .map_err(|f| match f {
                Failure::Conflict(_) => anyhow!("the run was taken from this worker"),
                Failure::Other(e) => e,
            })?;
        let part = to.with_extension("part");
        let mut out = tokio::fs::File::create(&part)
            .await
            .with_context(|| format!("creating {}", part.display()))?;
        let mut hash = Sha256::new();
        let mut stream = resp.bytes_stream();
        use futures_util::StreamExt;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("downloading {}", file.name))?;
            hash.update(&chunk);
            out.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", part.display()))?;
        }
        out.flush().await?;
        drop(out);
        let got = hex(&hash.finalize());
        if got != file.sha256 {
            let _ = tokio::fs::remove_file(&part).await;
            bail!(
                "the stored {} does not match its hash (SHA-256 {got}, expected {})",
                file.name,
                file.sha256
            );
        }
        tokio::fs::rename(&part, to).await?;
        Ok(())
    }
}

/// Where a held job's reports go, and its lease.
pub(super) struct JobPath<'a> {
    pub(super) path: String,
    pub(super) lease: &'a str,
}

impl RemoteHost {
    /// Points every registered data set among `reads` at this worker's copy.
    pub(super) async fn fetch_data<'a>(
        &self,
        job: &JobPath<'_>,
        reads: impl IntoIterator<Item = Option<&'a mut DataSpec>>,
    ) -> anyhow::Result<()> {
        for d in reads.into_iter().flatten() {
            if let DataSpec::Dataset {
                name,
                registered: Some(r),
            } = d
            {
                **r = self.dataset(job, name, r).await?;
            }
        }
        Ok(())
    }

    /// This worker's copy of a registered data set: a cached one that still
    /// hashes as registered, else a fresh one fetched by content hash. The
    /// training checks the hash again, so a fresh copy is not read twice.
    async fn dataset(
        &self,
        job: &JobPath<'_>,
        name: &str,
        registered: &RegisteredData,
    ) -> anyhow::Result<RegisteredData> {
        let hex = registered.hash.trim_start_matches("sha256:").to_string();
        let root = self.work_dir.join("datasets");
        let cache = root.join(&hex);
        let mut copy = registered.clone();
        if !copy
            .data
            .set_server_path(cache.to_string_lossy().into_owned())
        {
            bail!("data set `{name}` names no folder to fetch");
        }
        if cache.is_dir() {
            let check = DataSpec::Dataset {
                name: name.to_string(),
                registered: Some(Box::new(copy.clone())),
            };
            match tokio::task::spawn_blocking(move || sslab_engine::data::load(&check)).await? {
                Ok(_) => return Ok(copy),
                Err(e) => {
                    tracing::warn!(data = name, error = %e, "the cached copy no longer matches; fetching it again");
                    tokio::fs::remove_dir_all(&cache).await?;
                }
            }
        }
        tokio::fs::create_dir_all(&root)
            .await
            .with_context(|| format!("creating {}", root.display()))?;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (archive, unpacked) = (
            root.join(format!(".{hex}-{tag}.tar")),
            root.join(format!(".{hex}-{tag}")),
        );
        let fetched = async {
            let url = self.url(&format!("{}/data/{hex}", job.path));
            let token = job.lease.to_string();
            let resp = self
                .call(&format!("data set `{name}`"), |c| {
                    c.get(&url).header(LEASE_HEADER, &token)
                })
                .await
                .map_err(|f| match f {
                    Failure::Conflict(_) => anyhow!("the run was taken from this worker"),
                    Failure::Other(e) => e,
                })?;
            let mut out = tokio::fs::File::create(&archive)
                .await
                .with_context(|| format!("creating {}", archive.display()))?;
            let mut stream = resp.bytes_stream();
            use futures_util::StreamExt;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.with_context(|| format!("downloading data set `{name}`"))?;
                out.write_all(&chunk)
                    .await
                    .with_context(|| format!("writing {}", archive.display()))?;
            }
            out.flush().await?;
            drop(out);
            tokio::fs::create_dir_all(&unpacked).await?;
            let (from, to) = (archive.clone(), unpacked.clone());
            tokio::task::spawn_blocking(move || {
                let limits = crate::archive::Limits {
                    max_bytes: u64::MAX,
                    max_entries: usize::MAX,
                };
                crate::archive::unpack(&from, &to, limits, &|_| Ok(()))
            })
            .await?
            .with_context(|| format!("unpacking data set `{name}`"))?;
            // Another slot may have fetched it meanwhile: then theirs is kept.
            if let Err(e) = tokio::fs::rename(&unpacked, &cache).await {
                if !cache.is_dir() {
                    return Err(anyhow::Error::new(e).context("storing the fetched data set"));
                }
                let _ = tokio::fs::remove_dir_all(&unpacked).await;
            }
            anyhow::Ok(())
        }
        .await;
        let _ = tokio::fs::remove_file(&archive).await;
        if fetched.is_err() {
            let _ = tokio::fs::remove_dir_all(&unpacked).await;
        }
        fetched?;
        Ok(copy)
    }
}

impl Host for RemoteHost {
    fn describe(&self) -> String {
        format!("worker {} on {} ({})", self.worker, self.host, self.device)
    }

    async fn data(&self, job: &RunJob) -> anyhow::Result<RunSpec> {
        let mut spec = job.spec.clone();
        let at = JobPath {
            path: format!("/worker/runs/{}", job.id),
            lease: &job.lease.token,
        };
        self.fetch_data(&at, [Some(&mut spec.data), spec.eval.data.as_mut()])
            .await?;
        Ok(spec)
    }

    async fn prepare(&self, job: &RunJob) -> anyhow::Result<PathBuf> {
        let dir = self.run_dir(&job.id);
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        // Local files this claim does not list are an older attempt's.
        let mut entries = tokio::fs::read_dir(&dir).await?;
        while let Some(e) = entries.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if !job.files.iter().any(|f| f.name == name) {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
        for file in &job.files {
            let path = format!("/worker/runs/{}/files/{}", job.id, file.name);
            self.download(&path, &job.lease.token, file, &dir.join(&file.name))
                .await?;
        }
        Ok(dir.join("checkpoint.safetensors"))
    }

    async fn start(&self, lease: &Lease, epochs: usize) -> Report {
        self.report(
            lease,
            "start",
            &RunStart {
                resumed_epochs: epochs as u32,
            },
        )
        .await
    }

    async fn heartbeat(&self, lease: &Lease) -> anyhow::Result<Option<bool>> {
        let url = self.run_path(lease, "heartbeat");
        match self
            .call("heartbeat", |c| {
                c.post(&url).header(LEASE_HEADER, &lease.token)
            })
            .await
        {
            Ok(resp) => Ok(Some(resp.json::<HeartbeatAnswer>().await?.cancel)),
            Err(Failure::Conflict(_)) => Ok(None),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn metrics(&self, lease: &Lease, batch: &MetricBatch) -> Report {
        self.report(lease, "metrics", batch).await
    }

    async fn log(&self, lease: &Lease, lines: &[LogLine]) -> Report {
        let batch = LogBatch {
            lines: lines.to_vec(),
        };
        self.report(lease, "logs", &batch).await
    }

    /// The training state first, then the weights that name it: a crash
    /// between the two leaves the older, matching pair in the store.
    async fn store_checkpoint(&self, lease: &Lease, checkpoint: &Path, epochs: usize) -> Report {
        let state = sslab_engine::train::state_path(checkpoint, epochs);
        let state_name = state
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !self.upload(lease, &state, &state_name, "").await? {
            return Ok(false);
        }
        self.upload(
            lease,
            checkpoint,
            "checkpoint.safetensors",
            &format!("?epochs={epochs}"),
        )
        .await
    }

    async fn finish(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        evaluations: &[Evaluation],
    ) -> Report {
        let end = RunEnd {
            status,
            error: error.map(str::to_string),
            evaluations: evaluations.to_vec(),
        };
        self.report(lease, "end", &end).await
    }

    async fn release(&self, lease: &Lease, why: &str) {
        let body = RunRelease {
            reason: why.to_string(),
        };
        if let Err(e) = self.report(lease, "release", &body).await {
            tracing::error!(run = %lease.id, error = %e, "could not hand the run back; its lease will expire");
        }
    }

    async fn done(&self, job: &RunJob) {
        let _ = tokio::fs::remove_dir_all(self.run_dir(&job.id)).await;
    }
}

/// See `RemoteHost::call`.
async fn call(
    client: &reqwest::Client,
    token: &str,
    what: &str,
    build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, Failure> {
    let started = tokio::time::Instant::now();
    let mut wait = FIRST_BACKOFF;
    loop {
        let sent = build(client).bearer_auth(token).send().await;
        let retry = match &sent {
            Err(_) => true,
            Ok(r) => r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS,
        };
        if !retry || started.elapsed() + wait > RETRY_FOR {
            return answer(sent, what).await;
        }
        tracing::debug!(what, "the server did not answer; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

/// A response's meaning: success, a lease conflict, or an error naming
/// what the server said.
async fn answer(
    sent: reqwest::Result<reqwest::Response>,
    what: &str,
) -> Result<reqwest::Response, Failure> {
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure::Other(
                anyhow::Error::new(e).context(format!("{what}: the server cannot be reached")),
            ));
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let said = error_message(&resp.text().await.unwrap_or_default());
    if status == StatusCode::CONFLICT {
        return Err(Failure::Conflict(said));
    }
    Err(Failure::Other(anyhow!(
        "{what}: the server answered {status}: {said}"
    )))
}

async fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex(&hash.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's name, for the Workers page.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Registers, then runs `slots` claim loops until drained or stopped (a
/// run in progress at a stop is handed back).
pub async fn run(opts: Options, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut devices = Vec::new();
    for name in &opts.devices {
        let device = sslab_engine::device_named(name).map_err(|e| anyhow!("--device: {e}"))?;
        devices.push((name.clone(), device));
    }
    if devices.is_empty() {
        devices.push(("cpu".to_string(), candle_core::Device::Cpu));
    }
    let slots = opts.slots.unwrap_or(devices.len()).max(1);
    let capabilities = if devices.iter().any(|(_, d)| d.is_cuda()) {
        vec!["cuda".to_string()]
    } else {
        Vec::new()
    };
    let api = format!("{}/api/v1", opts.server.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let host = host_name();
    let registration = Registration {
        host: host.clone(),
        device: opts.devices.join(","),
        slots: slots as u32,
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities,
    };
    let register_url = format!("{api}/worker/register");
    // A server that is not up yet is waited for.
    let info: WorkerInfo = loop {
        match call(&client, &opts.token, "registering", |c| {
            c.post(&register_url).json(&registration)
        })
        .await
        {
            Ok(resp) => break resp.json().await?,
            Err(Failure::Conflict(why)) => bail!("the server refused this worker: {why}"),
            Err(Failure::Other(e)) => {
                let text = format!("{e:#}");
                if text.contains("cannot be reached") {
                    tracing::warn!(server = %opts.server, "the server cannot be reached; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(MAX_BACKOFF) => continue,
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                bail!("registering with {}: {text}", opts.server);
            }
        }
    };
    tokio::fs::create_dir_all(&opts.work_dir)
        .await
        .with_context(|| format!("creating the work folder {}", opts.work_dir.display()))?;
    let work_dir = opts.work_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        super::remote_decoder::prune_stale_states(&work_dir, std::time::SystemTime::now())
    })
    .await;
    // Tests and scripts read this line.
    println!("sslab worker {} serving {}", info.id, opts.server);
    tracing::info!(worker = %info.id, slots, "worker registered");
    let mut tasks = Vec::new();
    for slot in 0..slots {
        let (name, device) = devices[slot % devices.len()].clone();
        let host = RemoteHost {
            client: client.clone(),
            api: api.clone(),
            token: opts.token.clone(),
            worker: info.id.clone(),
            host: host.clone(),
            device: name,
            work_dir: opts.work_dir.clone(),
        };
        let shutdown = shutdown.clone();
        let poll = opts.poll;
        tasks.push(tokio::spawn(slot_loop(host, device, poll, shutdown)));
    }
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!(worker = %info.id, "worker stopped");
    Ok(())
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

async fn slot_loop(
    host: RemoteHost,
    device: candle_core::Device,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let claim_url = host.url("/worker/claim");
    let request = ClaimRequest {
        worker: host.worker.clone(),
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let answer = match host
            .call("claiming", |c| c.post(&claim_url).json(&request))
            .await
        {
            Ok(resp) => resp.json::<ClaimAnswer>().await.map_err(anyhow::Error::new),
            Err(Failure::Conflict(why)) => Err(anyhow!("claiming: {why}")),
            Err(Failure::Other(e)) => Err(e),
        };
        match answer {
            Ok(ClaimAnswer {
                job: Some(claimed), ..
            }) => {
                let job = RunJob {
                    lease: Lease {
                        kind: JobKind::Run,
                        id: claimed.id.clone(),
                        token: claimed.lease,
                        attempt: claimed.attempt,
                    },
                    id: claimed.id,
                    name: claimed.name,
                    spec: claimed.spec,
                    files: claimed.files,
                    heartbeat: super::heartbeat_every(claimed.lease_ms),
                };
                super::run_job::execute(&host, job, device.clone(), &mut shutdown).await;
            }
            Ok(ClaimAnswer {
                evaluation: Some(claimed),
                ..
            }) => super::remote_jobs::evaluate(&host, claimed, device.clone()).await,
            Ok(ClaimAnswer {
                audit: Some(claimed),
                ..
            }) => super::remote_jobs::audit(&host, claimed, device.clone(), &mut shutdown).await,
            Ok(ClaimAnswer {
                cka: Some(claimed), ..
            }) => super::remote_jobs::compare(&host, claimed, device.clone()).await,
            Ok(ClaimAnswer {
                decoder: Some(claimed),
                ..
            }) => {
                super::remote_decoder::decode(&host, claimed, device.clone(), &mut shutdown).await
            }
            Ok(ClaimAnswer { drain: true, .. }) => {
                tracing::info!(worker = %host.worker, "drained: no new work");
                return;
            }
            Ok(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming failed");
                tokio::select! {
                    _ = tokio::time::sleep(MAX_BACKOFF) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}
