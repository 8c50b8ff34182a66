//! How far and how broadly each ViT block attends, per head: the mean
//! attention distance (Dosovitskiy et al. 2021, arXiv:2010.11929, Fig. 7:
//! the pixel distance between a patch and the patches it attends to,
//! weighted by the attention) and the attention entropy (nats). Queries are
//! the patch tokens; the distance is over patch keys (weights renormalised
//! without the CLS token), the entropy over every key.

use candle_core::Device;
use sslab_shared::api::Evaluation;

use crate::data::ImageSet;
use crate::model::vit::Vit;

/// Sums over the queries seen so far, per head.
pub struct AttentionStats {
    heads: usize,
    /// Patch-centre distances in pixels, (L, L).
    distance: Vec<f64>,
    patches: usize,
    distance_sum: Vec<f64>,
    entropy_sum: Vec<f64>,
    queries: usize,
}

impl AttentionStats {
    /// A `side` × `side` grid of `patch`-pixel patches.
    pub fn new(heads: usize, side: usize, patch: usize) -> Self {
        let patches = side * side;
        let mut distance = vec![0.0; patches * patches];
        for i in 0..patches {
            for j in 0..patches {
                let (dy, dx) = (
                    (i / side) as f64 - (j / side) as f64,
                    (i % side) as f64 - (j % side) as f64,
                );
                distance[i * patches + j] = patch as f64 * (dy * dy + dx * dx).sqrt();
            }
        }
        AttentionStats {
            heads,
            distance,
            patches,
            distance_sum: vec![0.0; heads],
            entropy_sum: vec![0.0; heads],
            queries: 0,
        }
    }

    /// Adds a batch of probabilities, row-major (B, heads, 1 + L, 1 + L).
    pub fn add(&mut self, probs: &[f32]) {
        let n = self.patches + 1;
        for (k, map) in probs.chunks_exact(n * n).enumerate() {
            let head = k % self.heads;
            for q in 1..n {
                let row = &map[q * n..(q + 1) * n];
                let dists = &self.distance[(q - 1) * self.patches..q * self.patches];
                let (mut weighted, mut mass, mut entropy) = (0.0, 0.0, 0.0);
                for (&a, &d) in row[1..].iter().zip(dists) {
                    weighted += a as f64 * d;
                    mass += a as f64;
                }
                for &a in row {
                    if a > 0.0 {
                        entropy -= a as f64 * (a as f64).ln();
                    }
                }
                if mass > 0.0 {
                    self.distance_sum[head] += weighted / mass;
                }
                self.entropy_sum[head] += entropy;
            }
            if head == 0 {
                self.queries += n - 1;
            }
        }
    }

    fn mean(&self, sums: &[f64]) -> Vec<f64> {
        sums.iter()
            .map(|s| s / self.queries.max(1) as f64)
            .collect()
    }

    /// Per head, in pixels.
    pub fn mean_distance(&self) -> Vec<f64> {
        self.mean(&self.distance_sum)
    }

    /// Per head, in nats; ln(1 + L) is uniform attention.
    pub fn entropy(&self) -> Vec<f64> {
        self.mean(&self.entropy_sum)
    }
}

/// Rows `blocks.I.attn` × (`mean_distance`, `entropy`), averaged over the
/// heads (each head's value in the settings), on every image of `set`.
pub fn attention_rows(
    vit: &Vit,
    set: &ImageSet,
    device: &Device,
) -> candle_core::Result<Vec<Evaluation>> {
    let (patch, heads) = (vit.patch_size(), vit.heads());
    let side = set.size / patch;
    let mut stats: Vec<AttentionStats> = Vec::new();
    crate::eval::each_batch(set, device, |x| {
        for (i, probs) in vit.attention_maps(x)?.iter().enumerate() {
            if stats.len() <= i {
                stats.push(AttentionStats::new(heads, side, patch));
            }
            stats[i].add(&probs.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    })?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut rows = Vec::new();
    for (i, s) in stats.iter().enumerate() {
        let (distance, entropy) = (s.mean_distance(), s.entropy());
        let common = |per_head: &[f64], unit: &str| {
            serde_json::json!({
                "per_head": per_head, "unit": unit, "patch": patch, "image_size": set.size,
                "uniform_entropy": ((side * side + 1) as f64).ln(), "split": "test", "n": set.len(),
            })
        };
        for (metric, values, unit) in [
            ("mean_distance", &distance, "pixels"),
            ("entropy", &entropy, "nats"),
        ] {
            rows.push(Evaluation {
                layer: format!("blocks.{i}.attn"),
                probe: "attention".into(),
                metric: metric.into(),
                value: mean(values),
                settings: common(values, unit),
                job_id: None,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One head on a 2 × 2 grid of 4 px patches: 5 tokens, CLS first.
    fn map(rows: [[f32; 5]; 5]) -> Vec<f32> {
        rows.iter().flatten().copied().collect()
    }

    #[test]
    fn attending_to_oneself_is_near_and_certain() {
        let mut eye = [[0.0; 5]; 5];
        (0..5).for_each(|i| eye[i][i] = 1.0);
        let mut s = AttentionStats::new(1, 2, 4);
        s.add(&map(eye));
        assert_eq!(s.mean_distance(), vec![0.0]);
        assert_eq!(s.entropy(), vec![0.0]);
    }

    #[test]
    fn uniform_attention_reaches_the_mean_distance_and_ln_n() {
        let mut s = AttentionStats::new(1, 2, 4);
        s.add(&map([[0.2; 5]; 5]));
        // From any corner: itself, two neighbours at 4 px, the far corner at 4√2.
        let want = (0.0 + 4.0 + 4.0 + 4.0 * 2f64.sqrt()) / 4.0;
        assert!((s.mean_distance()[0] - want).abs() < 1e-6);
        assert!((s.entropy()[0] - 5f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn heads_are_kept_apart_and_cls_weight_is_left_out_of_the_distance() {
        // Head 0: every patch looks half at CLS, half at its right/left
        // neighbour (4 px). Head 1: at itself.
        let mut h0 = [[0.0; 5]; 5];
        h0[0][0] = 1.0;
        for (q, k) in [(1, 2), (2, 1), (3, 4), (4, 3)] {
            h0[q][0] = 0.5;
            h0[q][k] = 0.5;
        }
        let mut h1 = [[0.0; 5]; 5];
        (0..5).for_each(|i| h1[i][i] = 1.0);
        let mut s = AttentionStats::new(2, 2, 4);
        let mut batch = map(h0);
        batch.extend(map(h1));
        s.add(&batch);
        s.add(&batch);
        assert_eq!(s.mean_distance(), vec![4.0, 0.0]);
        let e = s.entropy();
        assert!((e[0] - 2f64.ln()).abs() < 1e-6 && e[1] == 0.0, "{e:?}");
    }

    #[test]
    fn a_vit_gives_two_bounded_rows_per_block() {
        use candle_core::DType;
        use candle_nn::{VarBuilder, VarMap};

        use crate::model::vit::VitShape;

        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let shape = VitShape {
            image_size: 16,
            patch: 4,
            width: 24,
            depth: 3,
            heads: 2,
            conv_stem: false,
            out_dim: None,
        };
        let vit = Vit::new(&shape, vb).unwrap();
        let n = 5;
        let set = ImageSet {
            size: 16,
            pixels: (0..n * 16 * 16 * 3).map(|i| (i * 37 % 251) as u8).collect(),
            labels: vec![0; n],
            boxes: Vec::new(),
            class_names: vec!["a".into()],
        };
        let x = candle_core::Tensor::zeros((2, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let maps = vit.attention_maps(&x).unwrap();
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].dims(), &[2, 2, 17, 17]);
        let sums = maps[2]
            .sum(3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");

        let rows = attention_rows(&vit, &set, &Device::Cpu).unwrap();
        let names: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.layer.clone(), r.metric.clone()))
            .collect();
        assert_eq!(names.len(), 6);
        assert_eq!(names[4], ("blocks.2.attn".into(), "mean_distance".into()));
        let far = 4.0 * (18f64).sqrt();
        for r in &rows {
            let top = if r.metric == "entropy" {
                17f64.ln()
            } else {
                far
            };
            assert!(r.value > 0.0 && r.value <= top + 1e-9, "{r:?}");
            assert_eq!(r.settings["per_head"].as_array().unwrap().len(), 2);
        }
    }
}
