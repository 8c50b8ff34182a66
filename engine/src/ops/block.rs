//! A ViT's pre-norm transformer block, y = x + proj(attn(qkv(LN₁(x)))),
//! then y + fc2(GELU(fc1(LN₂(y)))), as one op each way on the CPU. As a
//! chain of ops it is nine gradient nodes, and candle's backward gives
//! every input of every node, the twelve weights included, a zero-filled
//! gradient and an add. Here the block is one node whose only input is x;
//! its weights' gradients go straight to [`super::backward`]. It runs the
//! chain's own kernels in the chain's order, so its values and gradients
//! are the chain's bit for bit.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{attention, f32_slice, fused, gelu, grads, layer_norm, linear, output, with_values};

const CHUNK: usize = 1 << 15;

/// A block's weights: each layer's weight, then its bias.
pub struct BlockWeights<'a> {
    pub norm1: [&'a Tensor; 2],
    pub qkv: [&'a Tensor; 2],
    pub proj: [&'a Tensor; 2],
    pub norm2: [&'a Tensor; 2],
    pub fc1: [&'a Tensor; 2],
    pub fc2: [&'a Tensor; 2],
}

impl BlockWeights<'_> {
    /// In the op's order.
    fn all(&self) -> [&Tensor; 12] {
        let [a, b, c, d, e, f] = [
            self.norm1, self.qkv, self.proj, self.norm2, self.fc1, self.fc2,
        ];
        [
            a[0], a[1], b[0], b[1], c[0], c[1], d[0], d[1], e[0], e[1], f[0], f[1],
        ]
    }
}

/// The block's output for tokens `x` (B, N, D), or `None` where the op does
/// not take them and the caller runs the chain: not f32 on the CPU, a
/// strided weight, or weights whose gradients could not be handed over
/// ([`grads::can_hand_over`]).
pub fn transformer_block(
    x: &Tensor,
    weights: &BlockWeights,
    heads: usize,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    let all = weights.all();
    let mut tensors = all.to_vec();
    tensors.push(x);
    if !fused(&tensors)
        || all.iter().any(|w| !w.is_contiguous())
        || !grads::can_hand_over(&[x], &all)
    {
        return Ok(None);
    }
    check(x, weights, heads)?;
    let op = Block {
        weights: all.map(|w| w.clone()),
        heads,
        eps: eps as f32,
        keep: x.track_op(),
        saved: Mutex::new(None),
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

/// That the weights fit tokens of x's width and each other.
fn check(x: &Tensor, w: &BlockWeights, heads: usize) -> candle_core::Result<()> {
    let d = x.dim(D::Minus1)?;
    let hidden = w.fc1[1].elem_count();
    let want: [(&str, &Tensor, Vec<usize>); 12] = [
        ("norm1 weight", w.norm1[0], vec![d]),
        ("norm1 bias", w.norm1[1], vec![d]),
        ("qkv weight", w.qkv[0], vec![3 * d, d]),
        ("qkv bias", w.qkv[1], vec![3 * d]),
        ("proj weight", w.proj[0], vec![d, d]),
        ("proj bias", w.proj[1], vec![d]),
        ("norm2 weight", w.norm2[0], vec![d]),
        ("norm2 bias", w.norm2[1], vec![d]),
        ("fc1 weight", w.fc1[0], vec![hidden, d]),
        ("fc1 bias", w.fc1[1], vec![hidden]),
        ("fc2 weight", w.fc2[0], vec![d, hidden]),
        ("fc2 bias", w.fc2[1], vec![d]),
    ];
    for (name, t, dims) in want {
        if t.dims() != dims {
            candle_core::bail!(
                "a transformer block on {d}-wide tokens needs its {name} of shape {dims:?}, not {:?}",
                t.dims()
            );
        }
    }
    if heads == 0 || d % heads != 0 {
        candle_core::bail!("a transformer block of width {d} cannot have {heads} heads");
    }
    Ok(())
}

/// `dst += src`, split over the threads.
fn add_to(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                *d += s;
            }
        });
}

/// What the backward reads: every layer's input, and fc1's output before
/// the GELU.
struct Saved {
    h1: Vec<f32>,
    qkv: Vec<f32>,
    a: Vec<f32>,
    y: Vec<f32>,
    h2: Vec<f32>,
    u: Vec<f32>,
    act: Vec<f32>,
}

struct Block {
    weights: [Tensor; 12],
    heads: usize,
    eps: f32,
    /// Whether a backward can follow (x is in candle's graph).
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

impl CustomOp1 for Block {
    fn name(&self) -> &'static str {
        "sslab-transformer-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (b, n, d) = l.shape().dims3()?;
        let weights: Vec<&Tensor> = self.weights.iter().collect();
        with_values(&weights, |w| {
            let h1 = layer_norm::values(x, w[0], w[1], self.eps);
            let qkv = linear::affine_values(&h1, w[2], w[3]);
            let a = attention::values(&qkv, (b, n), self.heads, d);
            let mut y = linear::affine_values(&a, w[4], w[5]);
            add_to(&mut y, x);
            let h2 = layer_norm::values(&y, w[6], w[7], self.eps);
            let u = linear::affine_values(&h2, w[8], w[9]);
            let act = gelu::values(&u);
            let mut out = linear::affine_values(&act, w[10], w[11]);
            add_to(&mut out, &y);
            if self.keep {
                let saved = Saved {
                    h1,
                    qkv,
                    a,
                    y,
                    h2,
                    u,
                    act,
                };
                *self.saved.lock().expect("transformer block lock") = Some(saved);
            }
            Ok((CpuStorage::F32(out), l.shape().clone()))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let saved = self.saved.lock().expect("transformer block lock");
        let Some(s) = saved.as_ref() else {
            candle_core::bail!("transformer block: a backward without its forward on the CPU");
        };
        let grad = grad.contiguous()?;
        let (b, n, d) = x.dims3()?;
        let m = b * n;
        let hidden = self.weights[9].elem_count();
        // SAFETY: each layer's gradients overwrite all of their buffers.
        let mut dw: [Vec<f32>; 12] =
            std::array::from_fn(|i| unsafe { output(self.weights[i].elem_count()) });
        let [
            n1w,
            n1b,
            qkvw,
            qkvb,
            projw,
            projb,
            n2w,
            n2b,
            fc1w,
            fc1b,
            fc2w,
            fc2b,
        ] = &mut dw;
        let mut tensors = vec![x, &grad];
        tensors.extend(&self.weights);
        let dx = with_values(&tensors, |t| {
            let (x, dout, w) = (t[0], t[1], &t[2..]);
            // SAFETY: every buffer below is overwritten by the gradient
            // that fills it before it is read.
            let (mut dact, mut dh, mut dy, mut dx) = unsafe {
                (
                    output(m * hidden),
                    output(m * d),
                    output(m * d),
                    output(m * d),
                )
            };
            // The MLP: out = y + fc2(GELU(fc1(LN₂(y)))).
            linear::gradients(&s.act, w[10], dout, Some(&mut dact), fc2w, fc2b);
            gelu::grad_in_place(&mut dact, &s.u);
            linear::gradients(&s.h2, w[8], &dact, Some(&mut dh), fc1w, fc1b);
            layer_norm::gradients(&s.y, w[6], &dh, self.eps, Some(dout), &mut dy, n2w, n2b);
            // The attention: y = x + proj(attn(qkv(LN₁(x)))).
            linear::gradients(&s.a, w[4], &dy, Some(&mut dh), projw, projb);
            let dqkv = attention::gradients(&s.qkv, &dh, (b, n), self.heads, d);
            linear::gradients(&s.h1, w[2], &dqkv, Some(&mut dh), qkvw, qkvb);
            layer_norm::gradients(x, w[0], &dh, self.eps, Some(&dy), &mut dx, n1w, n1b);
            Ok(dx)
        })?;
        for (weight, grad) in self.weights.iter().zip(dw) {
            if weight.track_op() {
                grads::hand_over(weight, Tensor::from_vec(grad, weight.shape(), x.device())?)?;
            }
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::ops::tests::random;

    /// Twelve weights for a block of width `d` with an MLP `hidden` wide,
    /// norms away from 1 and 0.
    fn weights(d: usize, hidden: usize, seed: u64) -> Vec<Var> {
        let dims: [&[usize]; 12] = [
            &[d],
            &[d],
            &[3 * d, d],
            &[3 * d],
            &[d, d],
            &[d],
            &[d],
            &[d],
            &[hidden, d],
            &[hidden],
            &[d, hidden],
            &[d],
        ];
        dims.iter()
            .enumerate()
            .map(|(i, dims)| {
                let scale = if dims.len() == 2 { 0.2 } else { 0.5 };
                let t = random(dims, seed + i as u64).affine(scale, 0.0).unwrap();
                let t = if dims.len() == 1 && i % 2 == 0 && i != 10 {
                    t.affine(1.0, 1.0).unwrap()
                } else {
                    t
                };
                Var::from_tensor(&t).unwrap()
            })
            .collect()
    }

    fn block_weights(w: &[Var]) -> BlockWeights<'_> {
        let t = |i: usize| w[i].as_tensor();
        BlockWeights {
            norm1: [t(0), t(1)],
            qkv: [t(2), t(3)],
            proj: [t(4), t(5)],
            norm2: [t(6), t(7)],
            fc1: [t(8), t(9)],
            fc2: [t(10), t(11)],
        }
    }

    /// The block as the chain of the engine's per-layer ops.
    fn chain(x: &Tensor, w: &[Var], heads: usize) -> Tensor {
        let t = |i: usize| w[i].as_tensor();
        let h = crate::ops::layer_norm(x, t(0), t(1), 1e-6).unwrap();
        let qkv = crate::ops::linear(&h, t(2), Some(t(3))).unwrap();
        let a = crate::ops::attention(&qkv, heads).unwrap();
        let y = (x + crate::ops::linear(&a, t(4), Some(t(5))).unwrap()).unwrap();
        let h = crate::ops::layer_norm(&y, t(6), t(7), 1e-6).unwrap();
        let u = crate::ops::linear_gelu(&h, t(8), t(9)).unwrap();
        (&y + crate::ops::linear(&u, t(10), Some(t(11))).unwrap()).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// Two blocks with the same weights, one after the other: values and
    /// the gradients of x and of every weight (summed over both uses) are
    /// the chain's to the bit, at an unthreaded and a threaded size.
    #[test]
    fn matches_the_chain_of_ops_bit_for_bit() {
        for (b, n, d, heads, seed) in [(3, 17, 24, 3, 1), (4, 37, 96, 6, 40)] {
            let x = Var::from_tensor(&random(&[b, n, d], seed)).unwrap();
            let w = weights(d, 4 * d, seed + 1);
            let loss_weights = random(&[b, n, d], seed + 20);
            let fused = |x: &Tensor| {
                transformer_block(x, &block_weights(&w), heads, 1e-6)
                    .unwrap()
                    .expect("the op takes f32 CPU tensors")
            };
            let ours = fused(&fused(&x));
            let theirs = chain(&chain(&x, &w, heads), &w, heads);
            assert_eq!(bits(&ours), bits(&theirs), "values");
            let backward = |y: &Tensor| {
                crate::ops::backward(&(y * &loss_weights).unwrap().sum_all().unwrap()).unwrap()
            };
            let (g1, g2) = (backward(&ours), backward(&theirs));
            assert_eq!(bits(g1.get(&x).unwrap()), bits(g2.get(&x).unwrap()), "dx");
            for (i, v) in w.iter().enumerate() {
                let (a, b) = (g1.get(v), g2.get(v));
                let a = a.unwrap_or_else(|| panic!("no gradient for weight {i}"));
                assert_eq!(bits(a), bits(b.unwrap()), "weight {i}'s gradient");
            }
        }
    }

    /// candle's own backward would drop the weights' gradients: it fails
    /// and says what to call instead.
    #[test]
    fn tensor_backward_names_the_engines() {
        let x = Var::from_tensor(&random(&[2, 5, 12], 1)).unwrap();
        let w = weights(12, 48, 2);
        let y = transformer_block(&x, &block_weights(&w), 2, 1e-6)
            .unwrap()
            .unwrap();
        let err = y.sum_all().unwrap().backward().unwrap_err().to_string();
        assert!(err.contains("ops::backward"), "{err}");
    }

    /// Tokens that do not train under weights that do: the chain's turn.
    #[test]
    fn leaves_untrained_tokens_under_trained_weights_to_the_chain() {
        let w = weights(12, 48, 2);
        let x = random(&[2, 5, 12], 1);
        assert!(
            transformer_block(&x, &block_weights(&w), 2, 1e-6)
                .unwrap()
                .is_none()
        );
    }

    /// A weight given as a view of a variable: its gradient could not be
    /// handed to the variable, so the chain runs, and the variable trains.
    #[test]
    fn leaves_a_weight_that_is_a_view_to_the_chain() {
        let x = Var::from_tensor(&random(&[2, 5, 12], 1)).unwrap();
        let w = weights(12, 48, 2);
        let flat = Var::from_tensor(&w[2].flatten_all().unwrap()).unwrap();
        let view = flat.reshape((36, 12)).unwrap();
        let mut weights = block_weights(&w);
        weights.qkv[0] = &view;
        assert!(transformer_block(&x, &weights, 2, 1e-6).unwrap().is_none());
    }

    #[test]
    fn names_a_weight_of_the_wrong_shape() {
        let x = Var::from_tensor(&random(&[2, 5, 12], 1)).unwrap();
        let mut w = weights(12, 48, 2);
        w[4] = Var::from_tensor(&random(&[12, 10], 3)).unwrap();
        let err = transformer_block(&x, &block_weights(&w), 2, 1e-6)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("proj weight") && err.contains("[12, 10]"),
            "{err}"
        );
    }
}
