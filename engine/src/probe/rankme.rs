//! RankMe (Garrido et al. 2023, arXiv:2210.02885): the effective rank
//! exp(H(p)), p = σ / ‖σ‖₁ + ε, of the singular values σ of an embedding
//! matrix. A label-free signal of representation quality.

use crate::eval::Features;

/// Eigenvalues of a symmetric matrix (row-major, n×n) by cyclic Jacobi sweeps.
fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let total: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-22 * total.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

/// Singular values of the `len × dim` matrix, through the smaller Gram matrix.
pub fn singular_values(f: &Features) -> Vec<f64> {
    let (n, d) = (f.len(), f.dim);
    let gram = if d <= n {
        let mut g = vec![0f64; d * d];
        for r in 0..n {
            let row = f.row(r);
            for i in 0..d {
                let ri = row[i] as f64;
                for j in i..d {
                    g[i * d + j] += ri * row[j] as f64;
                }
            }
        }
        for i in 0..d {
            for j in 0..i {
                g[i * d + j] = g[j * d + i];
            }
        }
        (g, d)
    } else {
        let mut g = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let v: f64 = f
                    .row(i)
                    .iter()
                    .zip(f.row(j))
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                g[i * n + j] = v;
                g[j * n + i] = v;
            }
        }
        (g, n)
    };
    let mut s: Vec<f64> = symmetric_eigenvalues(gram.0, gram.1)
        .into_iter()
        .map(|e| e.max(0.0).sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

pub fn rankme(f: &Features) -> f64 {
    const EPS: f64 = 1e-7;
    let s = singular_values(f);
    let total: f64 = s.iter().sum::<f64>();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = s.iter().map(|x| x / total + EPS).map(|p| -p * p.ln()).sum();
    entropy.exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sslab_shared::rng::Rng;

    /// A random `n × d` matrix of rank `r` with equal singular values has RankMe ≈ r.
    fn low_rank(n: usize, d: usize, r: usize, seed: u64) -> Features {
        let mut rng = Rng::new(seed);
        // Orthonormal rows by Gram–Schmidt on random vectors.
        let mut basis: Vec<Vec<f64>> = Vec::new();
        while basis.len() < r {
            let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            for b in &basis {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            basis.push(v.iter().map(|x| x / norm).collect());
        }
        // Rows: cycle through the basis, so each direction carries the same energy.
        let data = (0..n)
            .flat_map(|i| basis[i % r].iter().map(|&x| x as f32).collect::<Vec<_>>())
            .collect();
        Features { dim: d, data }
    }

    #[test]
    fn rank_of_known_matrices() {
        for r in [1, 3, 8] {
            let got = rankme(&low_rank(40, 16, r, r as u64));
            assert!((got - r as f64).abs() < 0.05, "rank {r}: {got}");
        }
        // Wide matrix goes through the n×n Gram.
        let got = rankme(&low_rank(6, 30, 3, 9));
        assert!((got - 3.0).abs() < 0.05, "{got}");
        assert_eq!(
            rankme(&Features {
                dim: 3,
                data: vec![0.0; 12]
            }),
            0.0
        );
    }

    #[test]
    fn singular_values_of_a_diagonal_matrix() {
        let f = Features {
            dim: 3,
            data: vec![3.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.5],
        };
        let s = singular_values(&f);
        for (a, b) in s.iter().zip([3.0, 2.0, 0.5]) {
            assert!((a - b).abs() < 1e-9, "{s:?}");
        }
    }
}
