//! The engine's backward: candle's, plus the gradients that ops hand over
//! directly instead of returning them through candle's graph (the
//! transformer block's weights, conv + BatchNorm's kernel, γ and β: as
//! inputs of a node, each would get a zero-filled gradient and an add).

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};

/// Gradients handed over, by the tensor they belong to.
type Handed = HashMap<TensorId, (Tensor, Tensor)>;

thread_local! {
    /// Gradients handed over during [`backward`] on this thread; `None`
    /// outside it.
    static HANDED: RefCell<Option<Handed>> = const { RefCell::new(None) };
}

/// The gradients of `loss` with respect to every tensor it was computed
/// from: `loss.backward()` with what ops handed over added in. Train
/// through this, never `Tensor::backward`, which fails on the ops that
/// hand over.
pub fn backward(loss: &Tensor) -> candle_core::Result<GradStore> {
    /// Puts the outer collection back however candle's backward ends, a
    /// panic included (rayon's threads outlive a caught one).
    struct Outer(Option<Handed>);
    impl Drop for Outer {
        fn drop(&mut self) {
            HANDED.set(self.0.take());
        }
    }
    let outer = Outer(HANDED.replace(Some(HashMap::new())));
    let result = loss.backward();
    let handed = HANDED.take().unwrap_or_default();
    drop(outer);
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

/// Whether an op whose output enters candle's graph through `inputs` may
/// hand over the gradients of `handed`: each of those that trains is a
/// variable itself (a gradient handed to a view of one, or to a tensor
/// computed from one, would arrive after candle's pass and never reach
/// the variable), and when any trains, the output is in the graph at all.
pub(super) fn can_hand_over(inputs: &[&Tensor], handed: &[&Tensor]) -> bool {
    let mut trained = handed.iter().filter(|t| t.track_op()).peekable();
    let any = trained.peek().is_some();
    trained.all(|t| t.is_variable()) && (!any || inputs.iter().any(|t| t.track_op()))
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

#[cfg(test)]
mod tests {
    use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Var};

    use super::*;
    use crate::ops::tests::random;

    /// Doubles its input; its backward panics.
    struct Panics;

    impl CustomOp1 for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let v: Vec<f32> = super::super::f32_slice(s, l)?
                .iter()
                .map(|v| 2.0 * v)
                .collect();
            Ok((CpuStorage::F32(v), l.shape().clone()))
        }

        fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
            panic!("a kernel's bug")
        }
    }

    /// A backward that panics leaves no collection behind on its thread:
    /// a later hand-over outside `backward` still fails instead of going
    /// into a stale one.
    #[test]
    fn a_panicking_backward_leaves_nothing_collecting() {
        let x = Var::from_tensor(&random(&[4], 1)).unwrap();
        let loss = x.apply_op1(Panics).unwrap().sum_all().unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backward(&loss)));
        assert!(caught.is_err());
        let err = hand_over(x.as_tensor(), random(&[4], 2)).unwrap_err();
        assert!(err.to_string().contains("ops::backward"), "{err}");
    }

    /// Views and tensors computed from variables cannot be handed to; nor
    /// can trained weights under an op whose inputs do not train.
    #[test]
    fn hands_over_only_to_variables_in_the_graph() {
        let w = Var::from_tensor(&random(&[2, 3], 1)).unwrap();
        let x = Var::from_tensor(&random(&[3], 2)).unwrap();
        let constant = random(&[3], 3);
        let view = w.as_tensor().reshape(6).unwrap();
        assert!(can_hand_over(&[&x], &[w.as_tensor()]));
        assert!(can_hand_over(&[&constant], &[&constant]));
        assert!(!can_hand_over(&[&x], &[&view]));
        assert!(!can_hand_over(&[&constant], &[w.as_tensor()]));
    }
}
