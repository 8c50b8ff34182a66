//! Request and response bodies of the REST API (`/api/v1`).

use serde::{Deserialize, Serialize};

use serde_json::{Map, Value};

use crate::spec::RunSpec;
use crate::sweep::SweepSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No more changes will come.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// A run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Run {
    pub id: String,
    pub name: String,
    pub status: RunStatus,
    pub method: String,
    pub backbone: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: RunSpec,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Why the run failed, in words.
    pub error: Option<String>,
    pub step: i64,
    pub total_steps: i64,
    pub epoch: i64,
    pub last_loss: Option<f64>,
    /// kNN top-1 at the backbone, once evaluated.
    pub knn_backbone: Option<f64>,
    pub cancel_requested: bool,
    /// The sweep the run belongs to, if any.
    #[serde(default)]
    pub sweep_id: Option<String>,
    /// The team that owns it.
    #[serde(default)]
    pub team: String,
    /// The user who launched it (its id); none for runs from before teams.
    #[serde(default)]
    pub created_by: Option<String>,
    /// The project it belongs to, within its team.
    #[serde(default = "crate::project::default_project")]
    pub project: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Markdown.
    #[serde(default)]
    pub note: String,
    /// Hidden from lists unless asked for.
    #[serde(default)]
    pub archived: bool,
}

/// One optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricPoint {
    pub step: i64,
    pub epoch: i64,
    pub loss: f64,
    pub lr: f64,
    pub images_per_sec: f64,
    /// Fraction of the step spent waiting for augmented data (absent in
    /// runs recorded before it was measured).
    #[serde(default)]
    pub data_wait: Option<f64>,
    /// Online linear probe accuracy on the step's batch, when the plan has one.
    #[serde(default)]
    pub online_probe_acc: Option<f64>,
}

/// What the machine did at one moment of a run's training, as its worker
/// sampled it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SystemSample {
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The last step done then.
    pub step: i64,
    /// The worker process's CPU time over the last interval, in percent of
    /// one core (200 is two cores busy).
    pub cpu_percent: f64,
    /// The worker process's resident memory.
    pub rss_bytes: i64,
    /// The GPU's utilisation in percent, on CUDA.
    #[serde(default)]
    pub gpu_util: Option<f64>,
    /// Memory in use on the GPU, on CUDA.
    #[serde(default)]
    pub gpu_memory_bytes: Option<i64>,
}

/// One reading of the memorization monitor (`eval.memorization`): top-1 of
/// the background-crop attack on the canaries (trained on) and on the
/// held-out images (never trained on), over all of them and over each
/// set's most confident 20 %.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemorizationPoint {
    /// Epochs done when the attack ran.
    pub epoch: i64,
    pub step: i64,
    pub canary_top1: f64,
    pub heldout_top1: f64,
    /// `canary_top1 - heldout_top1`.
    pub dejavu_gap: f64,
    /// The same gap over each set's most confident 20 %.
    pub dejavu_gap_confident: f64,
    pub canaries: i64,
    pub heldout: i64,
}

/// One evaluation result: a probe at a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Evaluation {
    /// `backbone`, `proj.0`, `proj.1`, …
    pub layer: String,
    /// `knn`, …
    pub probe: String,
    /// `top1`, …
    pub metric: String,
    pub value: f64,
    /// The probe's settings, e.g. `{"k": 20, "temperature": 0.07}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub settings: serde_json::Value,
    /// The re-evaluation job that produced the row; none for the evaluation
    /// at the end of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Body of `POST /runs/{id}/evaluate`: evaluate a finished run again with
/// another plan — other probes, layers or data (`eval.data`, transfer) —
/// without retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationRequest {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub eval: crate::spec::EvalSpec,
}

impl EvaluationRequest {
    /// Parses JSON (API) or TOML (CLI); errors name the field. `layers` are
    /// the model's, to check the plan against.
    pub fn parse(
        text: &str,
        toml_format: bool,
        layers: &[String],
    ) -> Result<Self, crate::SpecError> {
        let req: EvaluationRequest = if toml_format {
            crate::error::from_toml(text)?
        } else {
            crate::error::from_json(text)?
        };
        req.eval.validate(layers)?;
        Ok(req)
    }

    /// As `parse` reads it with `toml_format`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// A re-evaluation job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationJob {
    pub id: String,
    pub run_id: String,
    pub status: RunStatus,
    pub request: EvaluationRequest,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
}

/// One file a run's page offers for download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunFile {
    /// The name it downloads as.
    pub name: String,
    /// What it holds.
    pub description: String,
    pub bytes: u64,
    /// Its address, from the site's root.
    pub url: String,
}

/// A page of a list; pass `next_page_token` back as `page_token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_spec`, `not_found`.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Names of the server-sent events on `GET /runs/{id}/events`.
pub mod events {
    /// Data: a `MetricPoint`.
    pub const METRIC: &str = "metric";
    /// Data: the whole `Run`, sent on every status change.
    pub const STATUS: &str = "status";
    /// Data: `Vec<Evaluation>`, once the run has them.
    pub const EVALUATIONS: &str = "evaluations";
}

/// How many runs are in each state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl StatusCounts {
    pub fn add(&mut self, status: RunStatus, n: i64) {
        match status {
            RunStatus::Queued => self.queued += n,
            RunStatus::Running => self.running += n,
            RunStatus::Succeeded => self.succeeded += n,
            RunStatus::Failed => self.failed += n,
            RunStatus::Cancelled => self.cancelled += n,
        }
    }

    pub fn total(&self) -> i64 {
        self.queued + self.running + self.succeeded + self.failed + self.cancelled
    }

    /// Every run has ended.
    pub fn is_done(&self) -> bool {
        self.queued == 0 && self.running == 0
    }
}

/// A sweep as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sweep {
    pub id: String,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: SweepSpec,
    pub created_at: i64,
    pub run_count: i64,
    pub counts: StatusCounts,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub created_by: Option<String>,
    /// The project it belongs to, within its team.
    #[serde(default = "crate::project::default_project")]
    pub project: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Markdown.
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub archived: bool,
}

/// One run of a sweep with its point and its end-of-training evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepRun {
    pub id: String,
    pub name: String,
    pub status: RunStatus,
    pub seed: u64,
    /// Axis path → value.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub values: Map<String, Value>,
    pub last_loss: Option<f64>,
    pub error: Option<String>,
    pub evaluations: Vec<Evaluation>,
}

/// One metric at one layer for one value of one axis, over every
/// succeeded run with that value (seeds and the other axes pooled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AxisAggregate {
    pub axis: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: Value,
    pub layer: String,
    pub probe: String,
    pub metric: String,
    pub mean: f64,
    /// Sample standard deviation; 0 with one run.
    pub std: f64,
    pub n: i64,
}

/// `GET /sweeps/{id}/summary`: everything the sweep page draws, in one response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SweepSummary {
    pub sweep: Sweep,
    /// The swept paths, in the spec's order (seed excluded).
    pub axes: Vec<String>,
    pub runs: Vec<SweepRun>,
    pub aggregates: Vec<AxisAggregate>,
    /// Runs left out of the aggregates: failed, cancelled, or not finished.
    pub excluded: StatusCounts,
}

/// A field whose value differs between compared runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpecDifference {
    pub path: String,
    /// One per run, in the order of `Comparison::runs`.
    pub values: Vec<Value>,
}

/// `GET /compare?runs=a,b,…`: runs side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Comparison {
    pub runs: Vec<Run>,
    /// Loss curves, one per run, thinned to at most `max_points`.
    pub metrics: Vec<Vec<MetricPoint>>,
    pub evaluations: Vec<Vec<Evaluation>>,
    pub spec_diff: Vec<SpecDifference>,
}

/// A déjà vu audit as the API shows it; its report comes from
/// `GET /audits/{id}/report` once it has succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Audit {
    pub id: String,
    pub name: String,
    pub status: RunStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: crate::audit::AuditSpec,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// What it is doing: `target` (training on A), `reference` (on B),
    /// `decoder-a` or `decoder-b` (a reconstruction decoder of model A or B).
    pub stage: String,
    /// Steps of the model (or decoder) being trained, and its length.
    pub step: i64,
    pub total_steps: i64,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub created_by: Option<String>,
    /// The project it belongs to, within its team.
    #[serde(default = "crate::project::default_project")]
    pub project: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Markdown.
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub archived: bool,
}

/// A shipped recipe (`recipes/*.toml`) or study (`recipes/studies/*.toml`),
/// as `GET /recipes` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Recipe {
    /// The file's name without `.toml`.
    pub name: String,
    /// `run`, `sweep`, `audit` or `study`: what `spec` is.
    pub kind: String,
    /// The file's opening comment.
    pub description: String,
    /// The file as written.
    pub toml: String,
    /// The spec it parses to, as `POST /runs`, `/sweeps`, `/audits` or
    /// `/studies` takes it.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: serde_json::Value,
}
