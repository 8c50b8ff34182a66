//! Centred kernel alignment between two representations of the same images
//! (Kornblith et al. 2019, arXiv:1905.00414): linear CKA on all features,
//! ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X and Y; and minibatch
//! CKA (Nguyen et al. 2021, arXiv:2010.15327), the unbiased HSIC of each
//! batch's linear Gram matrices summed over batches, for sets too large to
//! hold at once. Sums run in f64.

use std::path::Path;

use candle_core::Device;
use sslab_shared::RunSpec;
use sslab_shared::cka::CkaMerge;
use sslab_shared::spec::DataSpec;

use crate::EngineError;
use crate::eval::Features;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CkaError {
    #[error("the two representations cover {0} and {1} images; CKA compares the same images")]
    Rows(usize, usize),
    /// Which side (0: first, 1: second) has no variance: a collapsed layer.
    #[error("the {} representation has zero variance (a collapsed layer?)", if *.0 == 0 { "first" } else { "second" })]
    Constant(usize),
    #[error("minibatch CKA needs batches of at least 4 images, got {0}")]
    Batch(usize),
}

/// Columns minus their means, in f64.
fn centred(f: &Features) -> Vec<f64> {
    let (n, d) = (f.len(), f.dim);
    let mut mean = vec![0.0f64; d];
    for i in 0..n {
        for (m, &v) in mean.iter_mut().zip(f.row(i)) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let mut out = Vec::with_capacity(n * d);
    for i in 0..n {
        out.extend(f.row(i).iter().zip(&mean).map(|(&v, m)| f64::from(v) - m));
    }
    out
}

/// ‖AᵀB‖²_F for row-major `n × da` and `n × db`.
fn cross_norm2(a: &[f64], da: usize, b: &[f64], db: usize) -> f64 {
    let n = a.len() / da.max(1);
    let mut c = vec![0.0f64; da * db];
    for i in 0..n {
        let (ra, rb) = (&a[i * da..(i + 1) * da], &b[i * db..(i + 1) * db]);
        for (p, &x) in ra.iter().enumerate() {
            if x == 0.0 {
                continue;
            }
            let row = &mut c[p * db..(p + 1) * db];
            for (cq, &y) in row.iter_mut().zip(rb) {
                *cq += x * y;
            }
        }
    }
    c.iter().map(|v| v * v).sum()
}

fn check_rows(x: &Features, y: &Features) -> Result<(), CkaError> {
    if x.len() != y.len() {
        return Err(CkaError::Rows(x.len(), y.len()));
    }
    Ok(())
}

/// Linear CKA of two representations of the same images, in [0, 1].
pub fn linear(x: &Features, y: &Features) -> Result<f64, CkaError> {
    check_rows(x, y)?;
    let (cx, cy) = (centred(x), centred(y));
    let xx = cross_norm2(&cx, x.dim, &cx, x.dim).sqrt();
    let yy = cross_norm2(&cy, y.dim, &cy, y.dim).sqrt();
    if xx <= f64::EPSILON {
        return Err(CkaError::Constant(0));
    }
    if yy <= f64::EPSILON {
        return Err(CkaError::Constant(1));
    }
    Ok(cross_norm2(&cx, x.dim, &cy, y.dim) / (xx * yy))
}

/// The linear Gram matrix `X Xᵀ` of rows `start..end`, diagonal zeroed.
fn gram(f: &Features, start: usize, end: usize) -> Vec<f64> {
    let b = end - start;
    let mut k = vec![0.0f64; b * b];
    for i in 0..b {
        for j in (i + 1)..b {
            let v: f64 = f
                .row(start + i)
                .iter()
                .zip(f.row(start + j))
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum();
            k[i * b + j] = v;
            k[j * b + i] = v;
        }
    }
    k
}

/// Unbiased HSIC (Song et al. 2012) of two `n × n` Gram matrices with zero
/// diagonals.
fn hsic1(k: &[f64], l: &[f64], n: usize) -> f64 {
    let nf = n as f64;
    let trace: f64 = k.iter().zip(l).map(|(a, b)| a * b).sum();
    let (sk, sl): (f64, f64) = (k.iter().sum(), l.iter().sum());
    let mut kl1 = 0.0;
    for i in 0..n {
        let ki: f64 = k[i * n..(i + 1) * n].iter().sum();
        let li: f64 = l[i * n..(i + 1) * n].iter().sum();
        kl1 += ki * li;
    }
    (trace + sk * sl / ((nf - 1.0) * (nf - 2.0)) - 2.0 * kl1 / (nf - 2.0)) / (nf * (nf - 3.0))
}

/// Minibatch CKA: batches of `batch` images in order (a last batch under 4
/// images is left out).
pub fn minibatch(x: &Features, y: &Features, batch: usize) -> Result<f64, CkaError> {
    check_rows(x, y)?;
    if batch < 4 {
        return Err(CkaError::Batch(batch));
    }
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for start in (0..x.len()).step_by(batch) {
        let end = (start + batch).min(x.len());
        if end - start < 4 {
            break;
        }
        let (k, l) = (gram(x, start, end), gram(y, start, end));
        let n = end - start;
        xy += hsic1(&k, &l, n);
        xx += hsic1(&k, &k, n);
        yy += hsic1(&l, &l, n);
    }
    if xx <= f64::EPSILON {
        return Err(CkaError::Constant(0));
    }
    if yy <= f64::EPSILON {
        return Err(CkaError::Constant(1));
    }
    Ok(xy / (xx * yy).sqrt())
}

/// CKA of every layer of `a` against every layer of `b` (rows: `a`'s
/// layers), linear or, with `batch`, minibatch. An error names the pair.
pub fn matrix(
    a: &[Features],
    b: &[Features],
    batch: Option<usize>,
) -> Result<Vec<Vec<f64>>, (usize, usize, CkaError)> {
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            b.iter()
                .enumerate()
                .map(|(j, y)| {
                    match batch {
                        Some(n) => minibatch(x, y, n),
                        None => linear(x, y),
                    }
                    .map_err(|e| (i, j, e))
                })
                .collect()
        })
        .collect()
}

/// One run of a comparison: a name for messages, its spec and final
/// weights, and the indices of the layers compared (into
/// `RunSpec::cka_layer_names`: the backbone's blocks, then the layers).
pub struct Run<'a> {
    pub label: &'a str,
    pub spec: &'a RunSpec,
    pub checkpoint: &'a Path,
    pub layers: &'a [usize],
}

/// A run's features at its chosen layers on `set`, checked against the
/// image size it was trained on.
fn run_features(
    run: &Run,
    set: &crate::data::ImageSet,
    device: &Device,
) -> crate::Result<Vec<Features>> {
    let size = run.spec.data.image_size();
    if size != 0 && size != set.size {
        return Err(EngineError::Data(format!(
            "{} was trained on {size} px images; these are {} px",
            run.label, set.size
        )));
    }
    let spec = run.spec.clone().into_valid()?;
    let encoder = crate::train::load_encoder(&spec, run.checkpoint, device)?;
    let all = crate::eval::embed_taps(&encoder, set, device)?;
    Ok(run.layers.iter().map(|&i| all[i].clone()).collect())
}

fn layer_name(run: &Run, k: usize) -> String {
    run.spec.cka_layer_names()[run.layers[k]].clone()
}

/// CKA of `a`'s layers against `b`'s on the test split of `data`: the
/// matrix and how many images it covers. Errors name the run and layer.
pub fn compare_runs(
    a: &Run,
    b: &Run,
    data: &DataSpec,
    batch: Option<usize>,
    device: &Device,
) -> crate::Result<(Vec<Vec<f64>>, usize)> {
    let splits = crate::data::load(data)?;
    let (fa, fb) = (
        run_features(a, &splits.test, device)?,
        run_features(b, &splits.test, device)?,
    );
    let matrix = matrix(&fa, &fb, batch).map_err(|(i, j, e)| {
        EngineError::Data(format!(
            "{} layer `{}` against {} layer `{}`: {e}",
            a.label,
            layer_name(a, i),
            b.label,
            layer_name(b, j)
        ))
    })?;
    Ok((matrix, splits.test.len()))
}

/// A family: every run against every other at its one layer (`layers[0]`)
/// on the test split of `data`. The run × run matrix and the image count.
pub fn family(
    runs: &[Run],
    data: &DataSpec,
    batch: Option<usize>,
    device: &Device,
) -> crate::Result<(Vec<Vec<f64>>, usize)> {
    let splits = crate::data::load(data)?;
    let features = runs
        .iter()
        .map(|r| Ok(run_features(r, &splits.test, device)?.remove(0)))
        .collect::<crate::Result<Vec<_>>>()?;
    let matrix = matrix(&features, &features, batch).map_err(|(i, j, e)| {
        EngineError::Data(format!(
            "{} layer `{}` against {} layer `{}`: {e}",
            runs[i].label,
            layer_name(&runs[i], 0),
            runs[j].label,
            layer_name(&runs[j], 0)
        ))
    })?;
    Ok((matrix, splits.test.len()))
}

/// Average-linkage clustering of runs on 1 − CKA: the merges in order
/// (SciPy's numbering) and the leaves in dendrogram order, so that a
/// sorted matrix shows the families as blocks. Ties merge the lowest ids.
pub fn average_linkage(similarity: &[Vec<f64>]) -> (Vec<CkaMerge>, Vec<usize>) {
    let n = similarity.len();
    let dist = |i: usize, j: usize| 1.0 - (similarity[i][j] + similarity[j][i]) / 2.0;
    // (cluster id, its runs), the runs listed in leaf order.
    let mut active: Vec<(usize, Vec<usize>)> = (0..n).map(|i| (i, vec![i])).collect();
    let mut merges = Vec::new();
    while active.len() > 1 {
        let mut best = (f64::INFINITY, 0, 1);
        for x in 0..active.len() {
            for y in x + 1..active.len() {
                let (p, q) = (&active[x].1, &active[y].1);
                let sum: f64 = p
                    .iter()
                    .flat_map(|&i| q.iter().map(move |&j| dist(i, j)))
                    .sum();
                let d = sum / (p.len() * q.len()) as f64;
                if d < best.0 {
                    best = (d, x, y);
                }
            }
        }
        let (d, x, y) = best;
        let (right_id, right) = active.remove(y);
        let (left_id, mut left) = active.remove(x);
        left.extend(right);
        merges.push(CkaMerge {
            left: left_id,
            right: right_id,
            distance: d,
            size: left.len(),
        });
        active.push((n + merges.len() - 1, left));
    }
    let order = active.pop().map(|(_, runs)| runs).unwrap_or_default();
    (merges, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic inputs that `bench/reference/cka.py` builds the same way.
    fn inputs(n: usize) -> (Features, Features) {
        let (dx, dy) = (7, 5);
        let x: Vec<f32> = (0..n * dx)
            .map(|k| {
                let (i, j) = ((k / dx) as f64, (k % dx) as f64);
                ((0.37 * i + 1.3 * j).sin() + 0.5 * (0.11 * i * (j + 1.0)).cos()) as f32
            })
            .collect();
        let y: Vec<f32> = (0..n * dy)
            .map(|k| {
                let (i, j) = ((k / dy) as f64, (k % dy) as f64);
                let row = &x[(i as usize) * dx..(i as usize + 1) * dx];
                let lin: f64 = row
                    .iter()
                    .enumerate()
                    .map(|(p, &v)| f64::from(v) * ((p as f64 + 1.0) * (j + 2.0)).sin())
                    .sum();
                (lin.tanh() + 0.3 * (0.05 * i + j).sin()) as f32
            })
            .collect();
        (Features { dim: dx, data: x }, Features { dim: dy, data: y })
    }

    fn gaussian(n: usize, d: usize, seed: u64) -> Features {
        let mut rng = sslab_shared::rng::Rng::new(seed);
        Features {
            dim: d,
            data: (0..n * d).map(|_| rng.normal() as f32).collect(),
        }
    }

    /// `x` times a random orthogonal matrix (Gram–Schmidt of a Gaussian one).
    fn rotated(x: &Features, seed: u64) -> Features {
        let d = x.dim;
        let g = gaussian(d, d, seed);
        let mut q: Vec<Vec<f64>> = Vec::new();
        for r in 0..d {
            let mut v: Vec<f64> = g.row(r).iter().map(|&v| f64::from(v)).collect();
            for u in &q {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.iter_mut().for_each(|a| *a /= norm);
            q.push(v);
        }
        let data = (0..x.len())
            .flat_map(|i| {
                let row: Vec<f64> = x.row(i).iter().map(|&v| f64::from(v)).collect();
                let q = &q;
                (0..d).map(move |c| (0..d).map(|k| row[k] * q[k][c]).sum::<f64>() as f32)
            })
            .collect();
        Features { dim: d, data }
    }

    #[test]
    fn invariant_to_rotation_and_scale() {
        let x = gaussian(300, 16, 1);
        assert!((linear(&x, &rotated(&x, 2)).unwrap() - 1.0).abs() < 1e-6);
        let scaled = Features {
            dim: x.dim,
            data: x.data.iter().map(|v| v * 3.5).collect(),
        };
        assert!((linear(&x, &scaled).unwrap() - 1.0).abs() < 1e-9);
        assert!((minibatch(&x, &rotated(&x, 3), 100).unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn independent_gaussians_are_far_apart() {
        let (x, y) = (gaussian(2000, 32, 4), gaussian(2000, 32, 5));
        let c = linear(&x, &y).unwrap();
        assert!(c < 0.05, "{c}");
        let m = minibatch(&x, &y, 500).unwrap();
        assert!(m.abs() < 0.05, "{m}");
    }

    #[test]
    fn minibatch_agrees_with_full_cka() {
        let x = gaussian(2000, 16, 6);
        // Related but not equal: half of x's columns, plus noise.
        let noise = gaussian(2000, 8, 7);
        let y = Features {
            dim: 8,
            data: (0..2000)
                .flat_map(|i| (0..8).map(move |j| (i, j)))
                .map(|(i, j)| x.row(i)[j] + 0.5 * noise.row(i)[j])
                .collect(),
        };
        let full = linear(&x, &y).unwrap();
        // One batch of everything is the unbiased estimate on all of it;
        // batches of 500 estimate the same quantity.
        let whole = minibatch(&x, &y, 2000).unwrap();
        let batched = minibatch(&x, &y, 500).unwrap();
        assert!((whole - full).abs() < 0.02, "{whole} vs {full}");
        assert!((batched - whole).abs() < 0.02, "{batched} vs {whole}");
    }

    #[test]
    fn matches_the_reference_numbers() {
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("testdata/cka.json")).unwrap();
        let n = reference["n"].as_u64().unwrap() as usize;
        let (x, y) = inputs(n);
        let want = |k: &str| reference[k].as_f64().unwrap();
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-6 * want.abs().max(1e-3);
        let got = linear(&x, &y).unwrap();
        assert!(close(got, want("linear")), "{got} vs {}", want("linear"));
        let batch = reference["batch"].as_u64().unwrap() as usize;
        let got = minibatch(&x, &y, batch).unwrap();
        assert!(
            close(got, want("minibatch")),
            "{got} vs {}",
            want("minibatch")
        );
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let x = gaussian(100, 4, 8);
        let flat = Features {
            dim: 4,
            data: vec![0.25; 400],
        };
        assert_eq!(linear(&x, &flat), Err(CkaError::Constant(1)));
        assert_eq!(minibatch(&flat, &x, 50), Err(CkaError::Constant(0)));
        assert_eq!(
            linear(&x, &gaussian(99, 4, 9)),
            Err(CkaError::Rows(100, 99))
        );
        assert_eq!(minibatch(&x, &x, 3), Err(CkaError::Batch(3)));
        let m = matrix(&[x.clone()], &[x.clone(), flat], None).unwrap_err();
        assert_eq!((m.0, m.1), (0, 1));
    }

    #[test]
    fn average_linkage_groups_the_closest_runs() {
        // Runs 0 and 2 are near twins, 1 and 3 a looser pair, 4 stands apart.
        let s = vec![
            vec![1.0, 0.3, 0.95, 0.35, 0.1],
            vec![0.3, 1.0, 0.25, 0.8, 0.1],
            vec![0.95, 0.25, 1.0, 0.3, 0.1],
            vec![0.35, 0.8, 0.3, 1.0, 0.2],
            vec![0.1, 0.1, 0.1, 0.2, 1.0],
        ];
        let (merges, order) = average_linkage(&s);
        let pairs: Vec<(usize, usize, usize)> =
            merges.iter().map(|m| (m.left, m.right, m.size)).collect();
        assert_eq!(pairs, vec![(0, 2, 2), (1, 3, 2), (5, 6, 4), (4, 7, 5)]);
        let d: Vec<f64> = merges.iter().map(|m| m.distance).collect();
        assert!((d[0] - 0.05).abs() < 1e-12 && (d[1] - 0.2).abs() < 1e-12);
        // {0,2} against {1,3}: 1 − mean(0.3, 0.35, 0.25, 0.3).
        assert!((d[2] - 0.7).abs() < 1e-12, "{d:?}");
        assert!((d[3] - 0.875).abs() < 1e-12, "{d:?}");
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(order, vec![4, 0, 2, 1, 3]);
        assert_eq!(average_linkage(&[vec![1.0]]), (vec![], vec![0]));
    }
}
