//! Request and response bodies of the REST API (`/api/v1`).

use serde::{Deserialize, Serialize};

use crate::spec::RunSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
pub struct Run {
    pub id: String,
    pub name: String,
    pub status: RunStatus,
    pub method: String,
    pub backbone: String,
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
}

/// One optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: i64,
    pub epoch: i64,
    pub loss: f64,
    pub lr: f64,
    pub images_per_sec: f64,
    /// Online linear probe accuracy on the step's batch, when the plan has one.
    #[serde(default)]
    pub online_probe_acc: Option<f64>,
}

/// One evaluation result: a probe at a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
pub struct EvaluationRequest {
    #[serde(default)]
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
        let field = |p: &serde_path_to_error::Path| {
            let t = p.to_string();
            if t == "." { String::new() } else { t }
        };
        let req: EvaluationRequest = if toml_format {
            let table: toml::Table = toml::from_str(text)
                .map_err(|e| crate::SpecError::new("", e.message().to_string()))?;
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                crate::SpecError::new(field(e.path()), e.inner().message().to_string())
            })?
        } else {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| crate::SpecError::new(field(e.path()), e.into_inner().to_string()))?
        };
        req.eval.validate(layers)?;
        Ok(req)
    }
}

/// A re-evaluation job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationJob {
    pub id: String,
    pub run_id: String,
    pub status: RunStatus,
    pub request: EvaluationRequest,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
}

/// A page of a list; pass `next_page_token` back as `page_token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
