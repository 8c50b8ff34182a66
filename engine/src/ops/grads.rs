//! The engine's backward: candle's, plus the gradients that ops hand over
//! directly instead of returning them through candle's graph (the
//! transformer block's weights: as inputs of its node, each would get a
//! zero-filled gradient and an add).

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};

thread_local! {
    /// Gradients handed over during [`backward`] on this thread, by the
    /// tensor they belong to; `None` outside it.
    static HANDED: RefCell<Option<HashMap<TensorId, (Tensor, Tensor)>>> =
        const { RefCell::new(None) };
}

/// The gradients of `loss` with respect to every tensor it was computed
/// from: `loss.backward()` with what ops handed over added in. Train
/// through this, never `Tensor::backward`, which fails on the ops that
/// hand over.
pub fn backward(loss: &Tensor) -> candle_core::Result<GradStore> {
    let outer = HANDED.replace(Some(HashMap::new()));
    let result = loss.backward();
    let handed = HANDED.replace(outer).unwrap_or_default();
    let mut grads = result?;
    for (tensor, grad) in handed.into_values() {
        let sum = match grads.remove(&tensor) {
            Some(g) => (g + grad)?,
            None => grad,
        };
        grads.insert(&tensor, sum);
    }
    Ok(grads)
}

/// Adds `grad` to `tensor`'s gradient in the running [`backward`], in the
/// order the uses are reached (candle's order, so sums are the same).
pub(super) fn hand_over(tensor: &Tensor, grad: Tensor) -> candle_core::Result<()> {
    HANDED.with_borrow_mut(|handed| {
        let Some(handed) = handed else {
            candle_core::bail!(
                "this graph holds sslab's fused ops, whose weights' gradients only \
                 sslab_engine::ops::backward collects: call it instead of Tensor::backward"
            );
        };
        match handed.entry(tensor.id()) {
            Entry::Occupied(mut e) => {
                let sum = (&e.get().1 + &grad)?;
                e.get_mut().1 = sum;
            }
            Entry::Vacant(e) => {
                e.insert((tensor.clone(), grad));
            }
        }
        Ok(())
    })
}
