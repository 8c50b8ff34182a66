//! What a worker and the server say to each other over `/api/v1/worker/…`,
//! and the workers the dashboard lists. A remote worker holds only a worker
//! token: it registers, claims runs, and reports on each claimed run with
//! the claim's lease in the `Sslab-Lease` header.

use serde::{Deserialize, Serialize};

use crate::api::{Evaluation, EvaluationRequest, MemorizationPoint, MetricPoint, Run, RunStatus};
use crate::audit::{AuditReport, AuditSpec};
use crate::cka::{CkaFamily, CkaRequest, CkaResult};
use crate::decoder::{DecoderReport, DecoderSpec};
use crate::spec::RunSpec;

/// The header every report on a claimed job carries.
pub const LEASE_HEADER: &str = "sslab-lease";

/// A worker introduces itself; the server refuses another sslab version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub host: String,
    /// `cpu`, or the GPUs it trains on: `cuda:0,cuda:1`.
    pub device: String,
    /// Jobs it runs at once.
    pub slots: u32,
    /// Its sslab version; must equal the server's.
    pub version: String,
    /// What it can run beyond the plain CPU: `cuda`.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// A worker as the server knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerInfo {
    pub id: String,
    /// The team it serves; none for a site-wide worker.
    pub team: Option<String>,
    pub host: String,
    pub device: String,
    pub slots: u32,
    pub version: String,
    pub capabilities: Vec<String>,
    /// `remote`, or `in-process` for the server's own.
    pub kind: String,
    pub registered_at: i64,
    pub last_seen: i64,
    /// Told to take no new job; it stops once its jobs end.
    pub draining: bool,
    /// The runs it holds now.
    pub current: Vec<String>,
    /// The other jobs it holds now: re-evaluations, audits and CKA jobs.
    #[serde(default)]
    pub jobs: Vec<HeldJob>,
}

/// A job other than a run that a worker holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeldJob {
    /// `evaluation`, `audit`, `cka` or `decoder`.
    pub kind: String,
    pub id: String,
    /// The run a re-evaluation evaluates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// `POST /worker/claim`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub worker: String,
}

/// A claimed run, a claimed re-evaluation when no run waits, or neither;
/// `drain` tells the worker to stop claiming.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimAnswer {
    pub job: Option<ClaimedRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<ClaimedEvaluation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<ClaimedAudit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cka: Option<ClaimedCka>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<ClaimedDecoder>,
    pub drain: bool,
}

/// A claimed decoder job; reports go to `/worker/decoders/{id}/…` with
/// `lease` in the `Sslab-Lease` header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedDecoder {
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: DecoderSpec,
    /// The run whose representation conditions it: its spec and data.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub run: Run,
    /// The run's final weights: `GET /worker/decoders/{id}/checkpoint`.
    pub checkpoint: StoredFile,
    pub lease: String,
    pub lease_ms: i64,
}

/// Where a claimed decoder job is: `POST /worker/decoders/{id}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DecoderProgress {
    /// Steps done over every layer's decoder.
    pub step: i64,
    /// The last training loss; none before the first step.
    pub loss: Option<f64>,
}

/// A decoder job's end, with its report when it succeeded (its grids are
/// uploaded before, to `…/files/{file}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DecoderEnd {
    pub status: RunStatus,
    pub error: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub report: Option<DecoderReport>,
}

/// The files a decoder job keeps: its two grids.
pub const DECODER_FILES: [&str; 2] = ["samples.png", "interpolation.png"];

/// A claimed CKA job; reports go to `/worker/cka/{id}/…` with `lease` in
/// the `Sslab-Lease` header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedCka {
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub request: CkaRequest,
    /// The runs it compares: the family, or `a` and `b`.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub runs: Vec<Run>,
    /// Their final weights, in the same order:
    /// `GET /worker/cka/{id}/checkpoints/{run}`.
    pub checkpoints: Vec<StoredFile>,
    pub lease: String,
    pub lease_ms: i64,
}

/// A CKA job's end, with a pair's or a family's result when it succeeded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CkaEnd {
    pub status: RunStatus,
    pub error: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub pair: Option<CkaResult>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub family: Option<CkaFamily>,
}

/// A claimed déjà vu audit; reports go to `/worker/audits/{id}/…` with
/// `lease` in the `Sslab-Lease` header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedAudit {
    pub id: String,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: AuditSpec,
    pub lease: String,
    pub lease_ms: i64,
    /// For an audit of two finished runs: their final weights,
    /// `GET /worker/audits/{id}/checkpoints/target` and `…/reference`.
    pub target: Option<StoredFile>,
    pub reference: Option<StoredFile>,
}

/// Where a claimed audit is: `POST /worker/audits/{id}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditProgress {
    /// `target`, `reference` (the model in training), `decoder-a`,
    /// `decoder-b` (a reconstruction decoder in training), or empty before
    /// training starts.
    pub stage: String,
    pub step: i64,
    pub total_steps: i64,
}

/// An audit's end, with its report when it succeeded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditEnd {
    pub status: RunStatus,
    pub error: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub report: Option<AuditReport>,
}

/// Whether `path` names a file an audit keeps: its two models' weights,
/// `examples.csv`, `reconstruction.png`, or a gallery image `images/N.png`.
pub fn is_audit_file(path: &str) -> bool {
    match path {
        "target-a.safetensors"
        | "reference-b.safetensors"
        | "examples.csv"
        | "reconstruction.png" => true,
        _ => path
            .strip_prefix("images/")
            .and_then(|f| f.strip_suffix(".png"))
            .is_some_and(|n| {
                !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit())
            }),
    }
}

/// A claimed re-evaluation of a finished run's final weights; reports go
/// to `/worker/evaluations/{id}/…` with `lease` in the `Sslab-Lease` header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedEvaluation {
    pub id: String,
    pub run_id: String,
    /// The run's spec: its model and data.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: RunSpec,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub request: EvaluationRequest,
    pub lease: String,
    pub lease_ms: i64,
    /// The weights to evaluate: `GET /worker/evaluations/{id}/checkpoint`.
    pub checkpoint: StoredFile,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedRun {
    pub id: String,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: RunSpec,
    /// The lease every report on this run must carry.
    pub lease: String,
    /// 1 for the first claim of the run.
    pub attempt: i64,
    /// The lease lapses this long after the last heartbeat.
    pub lease_ms: i64,
    /// The run's files in the artifact store (an earlier attempt's
    /// checkpoint), to resume from.
    pub files: Vec<StoredFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The answer to a heartbeat on a held lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAnswer {
    pub cancel: bool,
}

/// The run starts, from scratch or after `resumed_epochs` epochs: what an
/// earlier attempt stored after that is dropped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunStart {
    pub resumed_epochs: u32,
}

/// Steps are numbered: a batch sent again stores nothing twice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MetricBatch {
    pub points: Vec<MetricPoint>,
    /// The run's length once the data is read.
    pub total_steps: Option<i64>,
    #[serde(default)]
    pub memorization: Vec<MemorizationPoint>,
    /// The machine's readings since the last batch.
    #[serde(default)]
    pub system: Vec<crate::api::SystemSample>,
}

/// Lines numbered per attempt: a batch sent again stores nothing twice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    pub seq: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    pub text: String,
}

/// A run's log as the run page shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunLogLine {
    pub attempt: i64,
    pub seq: i64,
    pub at: i64,
    pub text: String,
}

/// How a claimed run ended. The evaluations of a finished run come with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunEnd {
    pub status: RunStatus,
    pub error: Option<String>,
    #[serde(default)]
    pub evaluations: Vec<Evaluation>,
}

/// A worker hands a run back (it is stopping): queued again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunRelease {
    pub reason: String,
}

/// Whether a file name is one a run may store: its checkpoint and the
/// training state beside it.
pub fn is_run_file(name: &str) -> bool {
    if name == "checkpoint.safetensors" {
        return true;
    }
    name.strip_prefix("checkpoint.state-")
        .and_then(|rest| rest.strip_suffix(".safetensors"))
        .is_some_and(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checkpoints_are_run_files() {
        assert!(is_run_file("checkpoint.safetensors"));
        assert!(is_run_file("checkpoint.state-12.safetensors"));
        for bad in [
            "../checkpoint.safetensors",
            "checkpoint.state-.safetensors",
            "checkpoint.state-1a.safetensors",
            "run.json",
            "checkpoint.state-1.safetensors/x",
        ] {
            assert!(!is_run_file(bad), "{bad}");
        }
    }

    #[test]
    fn audit_files_are_named_plainly() {
        for good in [
            "target-a.safetensors",
            "reference-b.safetensors",
            "examples.csv",
            "reconstruction.png",
            "images/0.png",
            "images/123.png",
        ] {
            assert!(is_audit_file(good), "{good}");
        }
        for bad in [
            "images/../x.png",
            "images/.png",
            "images/a.png",
            "images/1.png/x",
            "../examples.csv",
            "run.json",
            "images/1234567890.png",
            "images/reconstruction.png",
        ] {
            assert!(!is_audit_file(bad), "{bad}");
        }
    }

    #[test]
    fn a_claim_answer_round_trips() {
        let answer = ClaimAnswer {
            job: None,
            evaluation: None,
            audit: None,
            cka: None,
            decoder: None,
            drain: true,
        };
        let text = serde_json::to_string(&answer).unwrap();
        // A worker that claims no re-evaluation reads the answer it did.
        assert_eq!(text, r#"{"job":null,"drain":true}"#);
        assert_eq!(serde_json::from_str::<ClaimAnswer>(&text).unwrap(), answer);
    }
}
