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

/// `POST /cka`: two finished runs of the team (or one against itself).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct CkaRequest {
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
}

/// A CKA job and, once it has succeeded, its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CkaJob {
    pub id: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub request: CkaRequest,
    pub result: Option<CkaResult>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub created_by: Option<String>,
}
