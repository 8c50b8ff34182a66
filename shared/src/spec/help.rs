//! One line of help for each setting a form shows as its own field: the
//! methods' hyper-parameters and the subset's settings.

/// Help for hyper-parameter `key` of built-in `method`; `None` for a key
/// the method does not have (a test keeps every built-in key covered).
pub fn method_param(method: &str, key: &str) -> Option<&'static str> {
    Some(match (method, key) {
        ("simclr", "temperature") => "softmax temperature; 0.5 at CIFAR scale, 0.1–0.2 on ImageNet",
        ("simclr", "negatives") => {
            "all: every other view is a negative; single: one negative per pair"
        }
        ("vicreg", "invariance") => "λ, weight of the distance between the views; 25",
        ("vicreg", "variance") => "μ, weight of the hinge on each dimension's std; 25",
        ("vicreg", "covariance") => "ν, weight of the off-diagonal covariances; 1",
        ("barlow", "lambda_offdiag") => "weight of the off-diagonal terms; 5e-3 (or 1/d)",
        ("mocov3", "temperature") => "InfoNCE temperature; 0.2",
        ("swav", "temperature") => "softmax temperature of the predictions; 0.1",
        ("msn" | "pmsn", "temperature") => "anchor softmax temperature; 0.1",
        (_, "predictor") => {
            "predictor widths, e.g. 512-128 (the last equals the projector's output); empty: the method's default"
        }
        (_, "ema_base") => {
            "target EMA rate at the start, rising to 1 along a cosine; 0.99 at CIFAR scale, 0.996 on ImageNet"
        }
        ("dino", "prototypes") => {
            "output dimension K of the head; 4096 at CIFAR scale, 65536 on ImageNet"
        }
        (_, "prototypes") => "number of learnable prototypes",
        ("dino", "student_temperature") => "τ_s; 0.1",
        ("dino", "teacher_temperature") => "τ_t after its warm-up; 0.04–0.07",
        ("dino", "warmup_teacher_temperature") => "τ_t at the start, rising linearly",
        ("dino", "warmup_teacher_epochs") => "length of the τ_t warm-up in epochs; 30",
        ("dino", "center_momentum") => "momentum of the teacher's running centre; 0.9",
        ("dino", "freeze_last_layer_epochs") => "epochs the prototypes stay fixed at the start; 1",
        ("swav", "epsilon") => "entropic regularisation ε of Sinkhorn-Knopp; 0.05",
        ("swav", "sinkhorn_iterations") => "Sinkhorn-Knopp iterations; 3",
        ("swav", "freeze_prototypes_epochs") => "epochs the prototypes stay fixed at the start; 1",
        ("swav", "queue_size") => {
            "past features kept per view for balanced codes at small batch; 0: none, 3840 at CIFAR scale"
        }
        ("swav", "queue_starts_epoch") => "epoch from which the queue fills",
        ("msn" | "pmsn", "sharpen") => "target sharpening T (p^(1/T)); 0.25",
        ("msn", "me_max_weight") => "λ of the mean-entropy maximisation; 1",
        ("pmsn", "me_max_weight") => "λ of KL(p̄‖π) to the power-law prior; 1",
        ("pmsn", "power") => "exponent τ of the prior π_k ∝ k^(−τ); 0.25 (0 is MSN)",
        ("msn", "sinkhorn_iterations") => {
            "Sinkhorn-Knopp iterations balancing the targets; 3, 0 = off"
        }
        ("pmsn", "sinkhorn_iterations") => {
            "Sinkhorn-Knopp iterations; 0, since uniform balancing works against the prior"
        }
        ("msn" | "pmsn", "mask_ratio") => {
            "fraction of the anchor's patches dropped; 0.15 in the paper"
        }
        ("mae", "mask_ratio") => "fraction of patches masked; 0.75",
        ("simmim", "mask_ratio") => "fraction of patches masked; 0.6",
        ("mae", "decoder_width") => "decoder width; 512 in the paper",
        ("mae", "decoder_depth") => "decoder blocks; 8 in the paper",
        ("mae", "decoder_heads") => "decoder attention heads; 16 in the paper",
        ("mae", "norm_pix_loss") => "regress each patch normalised by its own mean and std",
        _ => return None,
    })
}

/// Help for setting `key` of a subset.
pub fn subset_param(key: &str) -> Option<&'static str> {
    Some(match key {
        "per_class" => "images kept of each class (all of a class that has fewer)",
        "images" => "images kept in all, class c getting a share ∝ (1 + c)^(−power)",
        "power" => "imbalance exponent, 0–10; 0 is balanced",
        "seed" => "which images are drawn",
        "part" => "a: the target's side of the déjà vu partition, b: the reference's",
        "public_per_class" => "images per class held out as the audit's public set",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::MethodSpec;

    #[test]
    fn every_built_in_setting_has_help() {
        for name in MethodSpec::NAMES {
            let m = MethodSpec::from_name(name).unwrap();
            let v = serde_json::to_value(&m).unwrap();
            for key in v.as_object().unwrap().keys().filter(|k| *k != "name") {
                assert!(
                    method_param(name, key).is_some(),
                    "{name}.{key} has no help"
                );
            }
        }
        for key in [
            "per_class",
            "images",
            "power",
            "seed",
            "part",
            "public_per_class",
        ] {
            assert!(subset_param(key).is_some(), "{key}");
        }
    }
}
