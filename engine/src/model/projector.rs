//! The MLP projector of SimCLR-style methods: Linear (+BN) + ReLU for every
//! hidden layer, a plain Linear last.

use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;

use super::dense::{Dense, dense};
use crate::ops::BatchNorm;

struct Layer {
    linear: Dense,
    bn: Option<BatchNorm>,
    last: bool,
}

pub struct Projector {
    layers: Vec<Layer>,
}

impl Projector {
    pub fn new(
        input: usize,
        dims: &[usize],
        bn: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let mut layers = Vec::new();
        let mut din = input;
        for (i, &d) in dims.iter().enumerate() {
            let last = i + 1 == dims.len();
            let vb = vb.pp(i.to_string());
            layers.push(Layer {
                linear: dense(din, d, vb.pp("linear"))?,
                bn: if bn && !last {
                    Some(BatchNorm::new(d, 1e-5, vb.pp("bn"))?)
                } else {
                    None
                },
                last,
            });
            din = d;
        }
        Ok(Projector { layers })
    }

    /// Output of every layer (after its activation).
    pub fn forward_layers(&self, x: &Tensor, train: bool) -> candle_core::Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.layers.len());
        let mut h = x.clone();
        for l in &self.layers {
            h = h.apply(&l.linear)?;
            h = match (&l.bn, l.last) {
                (Some(bn), false) => bn.forward_relu(&h, train)?,
                (Some(bn), true) => h.apply_t(bn, train)?,
                (None, false) => h.relu()?,
                (None, true) => h,
            };
            out.push(h.clone());
        }
        Ok(out)
    }
}

impl ModuleT for Projector {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(self
            .forward_layers(x, train)?
            .pop()
            .unwrap_or_else(|| x.clone()))
    }
}
