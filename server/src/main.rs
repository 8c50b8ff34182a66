//! `sslab`: the platform's server, worker and command line.

mod archive;
mod artifacts;
mod audit_job;
mod auth;
mod cka_job;
mod cli;
mod csv;
mod datasets;
mod decoder_job;
mod demos;
mod export_job;
mod http;
mod recipes;
mod store;
mod study;
mod sweep;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sslab",
    version,
    about = "Self-supervised vision research platform"
)]
struct Cli {
    /// Where the SQLite file, artifacts and imported data live.
    #[arg(
        long,
        global = true,
        env = "SSLAB_DATA_DIR",
        default_value = "./sslab-data"
    )]
    data_dir: PathBuf,
    /// Overrides the database (sqlite://… or postgres://…).
    #[arg(long, global = true, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// `text` for people, `json` (one object a line) for log collectors.
    #[arg(long, global = true, env = "SSLAB_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and dashboard with an in-process worker.
    Serve {
        #[arg(long, env = "SSLAB_ADDR", default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// The built dashboard (frontend/dist).
        #[arg(long, env = "SSLAB_STATIC_DIR", default_value = "frontend/dist")]
        static_dir: PathBuf,
        /// In-process workers; 0 leaves training to remote workers.
        #[arg(long, env = "SSLAB_WORKERS", default_value_t = 1)]
        workers: usize,
        /// Milliseconds a worker keeps a job without a heartbeat.
        #[arg(long, env = "SSLAB_LEASE_MS", default_value_t = 30_000, hide = true)]
        lease_ms: i64,
        /// Sweeps that expand to more runs are refused.
        #[arg(long, env = "SSLAB_MAX_SWEEP_RUNS", default_value_t = sslab_shared::sweep::DEFAULT_MAX_RUNS)]
        max_sweep_runs: usize,
        /// Bytes one uploaded data set archive may weigh.
        #[arg(long, env = "SSLAB_MAX_UPLOAD_BYTES", default_value_t = datasets::Limits::default().max_upload)]
        max_upload_bytes: u64,
        /// Bytes one archive may unpack to (a zip bomb stops here).
        #[arg(long, env = "SSLAB_MAX_UNPACKED_BYTES", default_value_t = datasets::Limits::default().max_unpacked)]
        max_unpacked_bytes: u64,
        /// A folder whose data team admins may register or name in specs
        /// over the API (repeatable); without one, only uploads and
        /// `sslab data import` register data.
        #[arg(long = "data-root", env = "SSLAB_DATA_ROOTS", value_delimiter = ',')]
        data_roots: Vec<PathBuf>,
        /// An origin (`https://host:port`) whose scripts may call the API
        /// with a token (repeatable); none: cross-origin calls are refused.
        #[arg(
            long = "cors-origin",
            env = "SSLAB_CORS_ORIGINS",
            value_delimiter = ','
        )]
        cors_origins: Vec<String>,
        /// Requests per second one token or session may make, sustained
        /// (worker tokens are not limited); 0 turns the limit off.
        #[arg(long, env = "SSLAB_RATE_LIMIT", default_value_t = 50)]
        rate_limit: u32,
        /// Requests one token or session may make at once above the rate.
        #[arg(long, env = "SSLAB_RATE_BURST", default_value_t = 200)]
        rate_burst: u32,
        /// Send the session cookie without `Secure`: only for plain HTTP on
        /// a trusted network, reached by another name than localhost.
        #[arg(long, env = "SSLAB_INSECURE_COOKIES")]
        insecure_cookies: bool,
        /// A reverse proxy's address (repeatable): its `X-Forwarded-For`
        /// names the client that the sign-in back-off counts.
        #[arg(
            long = "trusted-proxy",
            env = "SSLAB_TRUSTED_PROXIES",
            value_delimiter = ','
        )]
        trusted_proxies: Vec<std::net::IpAddr>,
        /// MiB a published demo bundle may weigh.
        #[arg(long, env = "SSLAB_MAX_DEMO_MIB", default_value_t = sslab_engine::export::DEFAULT_MAX_BYTES >> 20)]
        max_demo_mib: u64,
        /// Where checkpoints, audit images and bundles are kept:
        /// `file:///path` (default: DATA_DIR/artifacts) or
        /// `s3://bucket/prefix` (AWS_* environment variables; AWS_ENDPOINT
        /// for another S3-compatible server), with DATA_DIR/artifacts as
        /// its cache.
        #[arg(long, env = "SSLAB_ARTIFACTS")]
        artifacts: Option<String>,
    },
    /// Train runs for a server on another machine: claims its queued runs
    /// over the API with a worker token (no database or storage access),
    /// reports metrics, logs and checkpoints, and resumes runs whose worker
    /// died from their last stored checkpoint.
    Worker {
        /// The server, e.g. `http://10.0.0.5:8080`.
        #[arg(long, env = "SSLAB_SERVER")]
        server: String,
        /// A worker token (`sslab admin create-token --scope worker`).
        #[arg(long, env = "SSLAB_WORKER_TOKEN", hide_env_values = true)]
        token: String,
        /// `cpu`, or GPUs: `cuda:0,cuda:1` (one slot each).
        #[arg(
            long,
            env = "SSLAB_DEVICE",
            default_value = "cpu",
            value_delimiter = ','
        )]
        device: Vec<String>,
        /// Runs at once; default: one per listed device.
        #[arg(long, env = "SSLAB_SLOTS")]
        slots: Option<usize>,
        /// Where runs being trained keep their checkpoints; default:
        /// DATA_DIR/worker.
        #[arg(long, env = "SSLAB_WORK_DIR")]
        work_dir: Option<PathBuf>,
        /// Milliseconds an idle slot waits before asking for work again.
        #[arg(long, default_value_t = 2000, hide = true)]
        poll_ms: u64,
    },
    /// Teams, users and tokens: `create-team`, `create-user`,
    /// `create-token`, `list-tokens`, `revoke-token`.
    Admin {
        #[command(subcommand)]
        command: cli::admin::AdminCommand,
    },
    /// The data set registry of this data folder: `import`, `list`.
    Data {
        #[command(subcommand)]
        command: cli::data::DataCommand,
    },
    /// Train one run locally from a recipe (TOML, or JSON by extension):
    /// `sslab train RECIPE` or `sslab train --spec RECIPE`.
    Train {
        #[arg(
            value_name = "RECIPE",
            required_unless_present = "spec",
            conflicts_with = "spec"
        )]
        recipe: Option<PathBuf>,
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Where the run's files go; runs/<the recipe's name> when not given.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the stopped run in OUT from its last end-of-epoch
        /// checkpoint, exactly as if it had not stopped.
        #[arg(long)]
        resume: bool,
    },
    /// Run every point of a sweep locally, one subfolder per run, and
    /// write DIR/summary.csv (one row per run and layer).
    Sweep {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Sweeps that expand to more runs are refused.
        #[arg(long, default_value_t = sslab_shared::sweep::DEFAULT_MAX_RUNS)]
        max_runs: usize,
    },
    /// Evaluate a finished `sslab train` folder again: another plan, or other data.
    Eval {
        /// The folder `sslab train --out` wrote.
        #[arg(long)]
        run: PathBuf,
        /// The plan in TOML: `[eval]` (probes, layers, …) and `[eval.data]` for other data.
        #[arg(long)]
        spec: PathBuf,
        /// Where to write the rows; default `RUN/evaluations-<spec name>.json`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A study on this machine: its sweeps, audits and CKA comparisons, then
    /// DIR/report.json, DIR/report.md and DIR/charts/ with each finding's
    /// verdict against the paper's claim (recipes/studies/).
    Study {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Run the study's [micro] size: every part in seconds, to check the
        /// study end to end (its figures mean nothing).
        #[arg(long)]
        micro: bool,
    },
    /// A déjà vu memorization audit on this machine: trains the target on A
    /// and the reference on B, attacks background crops, and writes
    /// DIR/audit.json and DIR/examples.csv.
    Audit {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// How alike two finished runs' representations are, layer by layer
    /// (CKA), on the same held-out images; writes OUT/cka.json.
    Cka {
        /// A folder `sslab train` wrote (the matrix's rows).
        #[arg(long)]
        a: PathBuf,
        /// Another (or the same) run folder (the columns).
        #[arg(long)]
        b: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// A data spec in TOML (a recipe's `[data]` keys); default: the runs'
        /// own data, which must be the same. Its test split is compared on.
        #[arg(long)]
        data: Option<PathBuf>,
        /// The first run's layers, comma-separated; default: all.
        #[arg(long)]
        layers_a: Option<String>,
        #[arg(long)]
        layers_b: Option<String>,
        /// Minibatch CKA (unbiased HSIC) over batches of N images.
        #[arg(long)]
        minibatch: Option<usize>,
    },
    /// Trains a conditional generator (RCDM or infusion) on a finished run's
    /// representation and writes OUT/samples.png, OUT/interpolation.png and
    /// OUT/decoder.json (loss, conditioning accuracy, sample diversity).
    /// Ctrl-C keeps its state in OUT/state for `--resume`.
    Decode {
        /// A folder `sslab train` wrote.
        #[arg(long)]
        run: PathBuf,
        /// A decoder spec in TOML (`recipes/infusion-tiny.toml`).
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Carry on an interrupted decoder from its state in OUT/state.
        #[arg(long)]
        resume: bool,
    },
    /// A demo bundle for the browser demo from a finished audit's or run's
    /// folder: encoders, their embeddings of a public set, thumbnails and
    /// demo images, named with sizes and hashes in OUT/manifest.json.
    Export {
        /// A folder `sslab audit` wrote.
        #[arg(long, conflicts_with = "run")]
        audit: Option<PathBuf>,
        /// A folder `sslab train` wrote.
        #[arg(long)]
        run: Option<PathBuf>,
        /// A new or empty folder.
        #[arg(long)]
        out: PathBuf,
        /// A run's public set: a data spec in TOML (a recipe's `[data]`
        /// keys); default: the run's held-out split.
        #[arg(long)]
        public: Option<PathBuf>,
        /// A run's layer to embed at; default `backbone`.
        #[arg(long)]
        layer: Option<String>,
        /// Weights as f16 (half the size).
        #[arg(long)]
        f16: bool,
        /// Refuse bundles larger than this many MiB.
        #[arg(long, default_value_t = 64)]
        max_mib: u64,
    },
    /// Create or update the database schema, then exit.
    Migrate,
    /// Every API path this build serves, one a line (the tests walk them).
    Routes,
}

fn database_url(cli: &Cli) -> anyhow::Result<String> {
    if let Some(url) = &cli.database_url {
        return Ok(url.clone());
    }
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("cannot create the data folder {}", cli.data_dir.display()))?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        cli.data_dir.join("sslab.db").display()
    ))
}

fn main() -> std::process::ExitCode {
    // SAFETY: no other thread has started yet: the runtime starts below.
    unsafe { sslab_engine::prepare_process() };
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
    // Every command that trains or embeds runs on this device; `sslab
    // worker` reads the same variable as its list of devices, one per slot.
    if !matches!(cli.command, Command::Worker { .. })
        && let Some(name) = std::env::var("SSLAB_DEVICE")
            .ok()
            .filter(|n| !n.trim().is_empty())
        && let Err(e) = sslab_engine::choose_device(&name)
    {
        eprintln!("error: SSLAB_DEVICE: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Command::Serve {
            addr,
            static_dir,
            workers,
            lease_ms,
            max_sweep_runs,
            max_upload_bytes,
            max_unpacked_bytes,
            data_roots,
            cors_origins,
            rate_limit,
            rate_burst,
            insecure_cookies,
            trusted_proxies,
            max_demo_mib,
            artifacts,
        } => {
            worker::set_lease_ms(*lease_ms);
            let limits = datasets::Limits {
                max_upload: *max_upload_bytes,
                max_unpacked: *max_unpacked_bytes,
                ..Default::default()
            };
            let options = ServeOptions {
                addr: *addr,
                static_dir,
                workers: *workers,
                max_sweep_runs: *max_sweep_runs,
                limits,
                data_roots,
                cors_origins,
                rate: (*rate_limit, *rate_burst),
                secure_cookies: !*insecure_cookies,
                trusted_proxies,
                max_demo_mib: *max_demo_mib,
                artifacts: artifacts.as_deref(),
            };
            serve(&cli, options).await
        }
        Command::Worker {
            server,
            token,
            device,
            slots,
            work_dir,
            poll_ms,
        } => {
            let options = worker::remote::Options {
                server: server.clone(),
                token: token.clone(),
                devices: device.clone(),
                slots: *slots,
                work_dir: work_dir
                    .clone()
                    .unwrap_or_else(|| cli.data_dir.join("worker")),
                poll: std::time::Duration::from_millis(*poll_ms),
            };
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("stopping: runs in progress go back to the queue");
                let _ = stop.send(true);
            });
            worker::remote::run(options, stopped).await
        }
        Command::Admin { command } => {
            async {
                let store = store::Store::connect(&database_url(&cli)?)
                    .await
                    .context("opening the database")?;
                cli::admin::run(command, &store).await
            }
            .await
        }
        Command::Data { command } => cli::data::run(command, || registry(&cli)).await,
        Command::Train {
            recipe,
            spec,
            out,
            resume,
        } => {
            let spec = recipe
                .as_ref()
                .or(spec.as_ref())
                .expect("clap asks for one");
            cli::train::run(spec, out.as_deref(), *resume, || registry(&cli)).await
        }
        Command::Sweep {
            spec,
            out,
            max_runs,
        } => cli::sweep::run(spec, out, *max_runs).await,
        Command::Eval { run, spec, out } => {
            cli::train::evaluate(run, spec, out.as_deref(), || registry(&cli)).await
        }
        Command::Audit { spec, out } => cli::audit::run(spec, out).await,
        Command::Study { spec, out, micro } => cli::study::run(spec, out, *micro).await,
        Command::Cka {
            a,
            b,
            out,
            data,
            layers_a,
            layers_b,
            minibatch,
        } => {
            let request = cli::cka::Request {
                a,
                b,
                out,
                data: data.as_deref(),
                layers_a: layers_a.as_deref(),
                layers_b: layers_b.as_deref(),
                minibatch: *minibatch,
            };
            cli::cka::run(request, || registry(&cli)).await
        }
        Command::Decode {
            run,
            spec,
            out,
            resume,
        } => cli::decode::run(run, spec, out, *resume, || registry(&cli)).await,
        Command::Export {
            audit,
            run,
            out,
            public,
            layer,
            f16,
            max_mib,
        } => {
            let request = cli::export::Request {
                audit: audit.as_deref(),
                run: run.as_deref(),
                out,
                public: public.as_deref(),
                layer: layer.as_deref(),
                f16: *f16,
                max_mib: *max_mib,
            };
            cli::export::run(request, || registry(&cli)).await
        }
        Command::Routes => {
            async {
                let state = bare_state(&cli).await?;
                for path in http::api_paths(&http::app(state, None)) {
                    println!("{path}");
                }
                Ok(())
            }
            .await
        }
        Command::Migrate => {
            async {
                store::Store::connect(&database_url(&cli)?).await?;
                eprintln!("database is up to date");
                Ok(())
            }
            .await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A state on an empty in-memory database: enough to build the router.
async fn bare_state(cli: &Cli) -> anyhow::Result<http::AppState> {
    let store = store::Store::connect("sqlite::memory:").await?;
    Ok(http::AppState {
        store: store.clone(),
        artifacts: artifacts::Artifacts::new(&cli.data_dir),
        queued: Arc::new(tokio::sync::Notify::new()),
        max_sweep_runs: 1,
        datasets: datasets::Registry::new(store, &cli.data_dir, datasets::Limits::default()),
        data_roots: Arc::new(Vec::new()),
        cors_origins: Arc::new(Vec::new()),
        backoff: auth::Backoff::default(),
        rate_limit: None,
        metrics: http::Metrics::new(),
        secure_cookies: true,
        trusted_proxies: Arc::new(Vec::new()),
        max_demo_bytes: 0,
    })
}

/// The registry of the data folder, for commands that need it.
async fn registry(cli: &Cli) -> anyhow::Result<datasets::Registry> {
    let store = store::Store::connect(&database_url(cli)?)
        .await
        .context("opening the database")?;
    Ok(datasets::Registry::new(
        store,
        &cli.data_dir,
        datasets::Limits::default(),
    ))
}

struct ServeOptions<'a> {
    addr: SocketAddr,
    static_dir: &'a Path,
    workers: usize,
    max_sweep_runs: usize,
    limits: datasets::Limits,
    data_roots: &'a [PathBuf],
    cors_origins: &'a [String],
    /// Requests per second and burst per token.
    rate: (u32, u32),
    secure_cookies: bool,
    trusted_proxies: &'a [std::net::IpAddr],
    max_demo_mib: u64,
    artifacts: Option<&'a str>,
}

async fn serve(cli: &Cli, options: ServeOptions<'_>) -> anyhow::Result<()> {
    let ServeOptions {
        addr,
        static_dir,
        workers,
        max_sweep_runs,
        limits,
        data_roots,
        cors_origins,
        rate,
        secure_cookies,
        trusted_proxies,
        max_demo_mib,
        artifacts,
    } = options;
    let artifacts = artifacts::Artifacts::open(&cli.data_dir, artifacts)?;
    tracing::info!(artifacts = %artifacts.location(), "artifact store");
    let cors_origins = cors_origins
        .iter()
        .map(|o| {
            axum::http::HeaderValue::from_str(o.trim_end_matches('/'))
                .with_context(|| format!("--cors-origin `{o}` is not a usable origin"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Resolved once: a root that is a link counts as where it points.
    let data_roots = data_roots
        .iter()
        .map(|r| {
            std::fs::canonicalize(r)
                .with_context(|| format!("--data-root {} cannot be opened", r.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let url = database_url(cli)?;
    let store = store::Store::connect(&url)
        .await
        .context("opening the database")?;
    // An embedded SQLite server is its database's only server: what its own
    // workers left running when it last stopped is orphaned. Remote workers'
    // leases, and everything on a shared database, wait to expire.
    let embedded = store.dialect() == store::Dialect::Sqlite && workers > 0;
    let recovered = store.recover_orphans(embedded).await?;
    if recovered > 0 {
        tracing::warn!(
            runs = recovered,
            "re-queued runs interrupted by an earlier stop"
        );
    }
    let state = http::AppState {
        store: store.clone(),
        artifacts: artifacts.clone(),
        queued: Arc::new(tokio::sync::Notify::new()),
        max_sweep_runs,
        datasets: datasets::Registry::new(store.clone(), &cli.data_dir, limits)
            .keeping_in(&artifacts),
        data_roots: Arc::new(data_roots),
        cors_origins: Arc::new(cors_origins),
        backoff: auth::Backoff::default(),
        rate_limit: auth::limiter(rate.0, rate.1),
        metrics: http::Metrics::new(),
        secure_cookies,
        trusted_proxies: Arc::new(trusted_proxies.to_vec()),
        max_demo_bytes: max_demo_mib << 20,
    };
    if let Some(limiter) = state.rate_limit.clone() {
        // Forget tokens that have been quiet, now and then.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
    }
    {
        // A study's CKA comparisons are queued once the runs they compare end.
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3));
            loop {
                tick.tick().await;
                match study::advance::advance(&state.store, None).await {
                    Ok(true) => state.wake_workers(),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not queue the studies' comparisons")
                    }
                }
            }
        });
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut worker_tasks = Vec::new();
    // In-process workers of earlier starts are gone; a server beside this
    // one on a shared database keeps its own fresh.
    store
        .forget_workers("in-process", store::now_ms() - 2 * worker::lease_ms())
        .await?;
    let capabilities = worker::Worker::local_capabilities();
    for i in 0..workers {
        let id = format!(
            "{}{}-{i}-{}",
            store::LOCAL_PREFIX,
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let registration = sslab_shared::worker::Registration {
            host: "this server".into(),
            device: worker::device_name(&sslab_engine::default_device()),
            slots: 1,
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: capabilities.clone(),
        };
        store
            .register_worker(&id, None, &registration, "in-process")
            .await?;
        let w = worker::Worker {
            id,
            capabilities: capabilities.clone(),
            store: store.clone(),
            artifacts: state.artifacts.clone(),
            queued: state.queued.clone(),
        };
        worker_tasks.push(tokio::spawn(w.run(shutdown_rx.clone())));
    }
    // Leases of remote or crashed workers expire; check now and then.
    let reaper_store = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(
            worker::lease_ms() as u64 / 2,
        ));
        loop {
            tick.tick().await;
            if let Err(e) = reaper_store.recover_orphans(false).await {
                tracing::warn!(error = %e, "checking for expired leases failed");
            }
            // A remote worker not heard from in a day is off the list.
            let day = 24 * 3600 * 1000;
            if let Err(e) = reaper_store
                .forget_workers("remote", store::now_ms() - day)
                .await
            {
                tracing::warn!(error = %e, "forgetting silent workers failed");
            }
        }
    });

    if !static_dir.join("index.html").is_file() {
        tracing::warn!(
            "no built dashboard at {}; serving the API only",
            static_dir.display()
        );
    }
    let app = http::app(state, Some(static_dir.to_path_buf()));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // Links name an address a browser can open: not 0.0.0.0.
    let reachable = if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    };
    cli::admin::bootstrap(&store, &format!("http://{reachable}")).await?;
    // Tests and scripts read this line to find an ephemeral port.
    println!("sslab listening on http://{local}");
    tracing::info!(%local, database = %redact(&url), "serving");
    // The peer address feeds the sign-in back-off.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    })
    .await?;
    for t in worker_tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Hides a password in a database URL before logging it.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
