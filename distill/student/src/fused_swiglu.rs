//! The MLP's gate, `silu(gate) · up`, on the CPU as one operation with its own backward pass.
//!
//! From burn's operations it is a sigmoid, two products and their backward passes: five
//! passes over `[seq, ffn]` matrices (1,536 wide for SmolLM2) in fresh buffers, libm's scalar
//! `expf`, and three such matrices kept per layer. Here the forward pass is one pass that
//! keeps only its two inputs, and the backward pass one pass that recomputes the sigmoid.
//! Chunks run in parallel on rayon's pool.
//!
//! A burn backend extension for `flex` and autodiff over `flex`; [`crate::model`] uses burn's
//! operations on other devices. The tests compare values and gradients with those.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::fused_attention::exp_in_place;

/// Elements per parallel task (and per stack scratch of exponentials).
const CHUNK: usize = 4096;

/// `silu(gate) · up` as a burn backend extension (for `flex` and autodiff over it).
#[backend_extension(Flex, Autodiff)]
pub trait FusedSwiglu: Backend {
    /// `silu(gate) · up` element-wise; both of one shape.
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// [`FusedSwiglu`] on tensors of the CPU device (plain or autodiff).
pub fn fused_swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedSwiglu>::fused_swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

impl FusedSwiglu for Flex {
    fn fused_swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        forward(&gate.to_contiguous(), &up.to_contiguous())
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (gate, up) = &ops.state;
        let (d_gate, d_up) = backward(gate, up, &grad.to_contiguous());
        let [pg, pu] = ops.parents;
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, d_gate);
        }
        if let Some(node) = pu {
            grads.register::<Flex>(node.id, d_up);
        }
    }
}

impl<C: CheckpointStrategy> FusedSwiglu for Autodiff<Flex, C> {
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = SwigluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful();
        let (gate, up) = (
            gate.primitive().to_contiguous(),
            up.primitive().to_contiguous(),
        );
        let out = forward(&gate, &up);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((gate, up), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    assert_eq!(t.dtype(), DType::F32, "the fused MLP gate computes in f32");
    t.as_slice::<f32>().expect("made contiguous first")
}

fn like(t: &FlexTensor, data: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, t.layout().shape().clone()))
}

/// `σ(x)` of each element of `xs` into `out` (same length, at most [`CHUNK`]).
fn sigmoid_into(xs: &[f32], out: &mut [f32]) {
    for (s, x) in out.iter_mut().zip(xs) {
        *s = -x;
    }
    exp_in_place(out);
    for s in out.iter_mut() {
        *s = 1.0 / (1.0 + *s);
    }
}

fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    assert_eq!(
        gate.layout().shape(),
        up.layout().shape(),
        "gate and up differ in shape"
    );
    let (g, u) = (f32s(gate), f32s(up));
    let mut out = vec![0.0f32; g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            let mut sig = [0.0f32; CHUNK];
            let sig = &mut sig[..g.len()];
            sigmoid_into(g, sig);
            for (((o, g), u), s) in o.iter_mut().zip(g).zip(u).zip(sig.iter()) {
                *o = g * s * u;
            }
        });
    like(gate, out)
}

/// Gradients of gate and up: `grad · up · σ(g)·(1 + g·(1 − σ(g)))` and `grad · silu(g)`.
fn backward(gate: &FlexTensor, up: &FlexTensor, grad: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let (g, u, d) = (f32s(gate), f32s(up), f32s(grad));
    let mut d_gate = vec![0.0f32; g.len()];
    let mut d_up = vec![0.0f32; g.len()];
    d_gate
        .par_chunks_mut(CHUNK)
        .zip(d_up.par_chunks_mut(CHUNK))
        .zip(
            g.par_chunks(CHUNK)
                .zip(u.par_chunks(CHUNK))
                .zip(d.par_chunks(CHUNK)),
        )
        .for_each(|((dg, du), ((g, u), d))| {
            let mut sig = [0.0f32; CHUNK];
            let sig = &mut sig[..g.len()];
            sigmoid_into(g, sig);
            for i in 0..g.len() {
                let s = sig[i];
                du[i] = d[i] * g[i] * s;
                dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
    (like(gate, d_gate), like(gate, d_up))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution};

    fn values(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn values_and_gradients_match_burns_silu_product() {
        // Odd sizes: chunks end mid-row and the last one is partial.
        for shape in [[1, 3, 5], [2, 37, 300]] {
            let device = Device::flex().autodiff();
            device.seed(11);
            let gate =
                Tensor::<3>::random(shape, Distribution::Normal(0.0, 4.0), &device).require_grad();
            let up =
                Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
            let w = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let ours = fused_swiglu(gate.clone(), up.clone());
            let theirs = silu(gate.clone()) * up.clone();
            assert!(
                max_diff(
                    &values(ours.clone().inner()),
                    &values(theirs.clone().inner())
                ) < 1e-5
            );
            let ga = (ours * w.clone()).sum().backward();
            let gb = (theirs * w).sum().backward();
            for (name, t) in [("gate", &gate), ("up", &up)] {
                let diff = max_diff(&values(t.grad(&ga).unwrap()), &values(t.grad(&gb).unwrap()));
                assert!(
                    diff < 1e-5,
                    "{name} gradients differ by {diff} at {shape:?}"
                );
            }
        }
    }
}
