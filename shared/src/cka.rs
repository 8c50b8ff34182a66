//! CKA comparisons of two runs' layers: what `sslab cka` writes and the
//! CKA jobs of the API store.

use serde::{Deserialize, Serialize};

use crate::api::RunStatus;
use crate::spec::DataSpec;

/// One side of a comparison: the run and the layers compared, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CkaSide {
    /// The run's folder (`sslab cka`) or id (the API).
    pub run: String,
    pub name: String,
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CkaSettings {
    /// `linear` or `minibatch`.
    pub kind: String,
    pub batch: Option<usize>,
    /// The split of `data` compared on.
    pub split: String,
    pub images: usize,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: DataSpec,
}

impl CkaSettings {
    /// Linear CKA, or minibatch CKA over batches of `batch`, on the test
    /// split of `data` (`images` of them): how both `sslab cka` and CKA jobs compare.
    pub fn on_test_split(batch: Option<usize>, images: usize, data: DataSpec) -> Self {
        CkaSettings {
            kind: if batch.is_some() {
                "minibatch"
            } else {
                "linear"
            }
            .into(),
            batch,
            split: "test".into(),
            images,
            data,
        }
    }
}

/// The layer × layer matrix (rows: `a`'s layers) with what produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CkaResult {
    pub a: CkaSide,
    pub b: CkaSide,
    pub matrix: Vec<Vec<f64>>,
    pub settings: CkaSettings,
}

/// One merge of the family's dendrogram (average linkage on 1 − CKA).
/// Clusters are numbered as in SciPy's `linkage`: the runs are `0..n`, the
/// cluster made by merge `k` is `n + k`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CkaMerge {
    pub left: usize,
    pub right: usize,
    /// The mean 1 − CKA between the two clusters' runs.
    pub distance: f64,
    /// Runs in the merged cluster.
    pub size: usize,
}

/// Several runs compared at one layer each: the run × run matrix (in the
/// request's order), and the dendrogram that groups similar runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CkaFamily {
    /// Each run with the one layer compared.
    pub runs: Vec<CkaSide>,
    pub matrix: Vec<Vec<f64>>,
    /// The runs in the dendrogram's leaf order: similar runs side by side.
    pub order: Vec<usize>,
    pub merges: Vec<CkaMerge>,
    pub settings: CkaSettings,
}

/// `POST /cka`: two finished runs of the team (or one against itself),
/// layer by layer; or, with `runs`, a family of runs at one layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct CkaRequest {
    /// The first run (not with `runs`).
    pub a: String,
    /// Default: `a` itself.
    pub b: Option<String>,
    /// Layer names; default: all of the run's.
    pub layers_a: Option<Vec<String>>,
    pub layers_b: Option<Vec<String>>,
    /// Minibatch CKA over batches of this many images (at least 4).
    pub minibatch: Option<usize>,
    /// The images to compare on; default: the runs' own data (which must
    /// be the same). Its test split is used.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub data: Option<DataSpec>,
    /// A family: 2 to 16 runs compared pairwise at `layer` (instead of `a`
    /// and `b`).
    pub runs: Option<Vec<String>>,
    /// The family's layer; default: `backbone`, the representation.
    pub layer: Option<String>,
}

/// The most runs in one family.
pub const FAMILY_MAX: usize = 16;

/// A CKA job and, once it has succeeded, its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CkaJob {
    pub id: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub request: CkaRequest,
    pub result: Option<CkaResult>,
    /// A family job's result, once it has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<CkaFamily>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub created_by: Option<String>,
}
