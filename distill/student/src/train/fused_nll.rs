//! The loss head's negative log-likelihood on the CPU as one operation with its own backward
//! pass.
//!
//! `log_softmax(logits).gather(targets)` from burn's operations makes about ten passes over
//! the `[positions, vocab]` logits (49,152 wide for SmolLM2; 201 MB at 1,024 positions), each
//! into a fresh buffer, with libm's scalar `expf`, and keeps the log-probabilities for the
//! backward pass. Here the forward pass reads each row twice (its maximum, then the sum of
//! exponentials) and keeps only each row's log-sum-exp; the backward pass writes
//! `g · (softmax − onehot)` in one pass over the logits the product already holds. Rows run in
//! parallel on rayon's pool.
//!
//! A burn backend extension for `flex` and autodiff over `flex`; [`super::loss`] uses burn's
//! operations on other devices. The tests compare the value and the gradient with those.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use crate::fused_attention::exp_in_place;

/// Exponentials computed per chunk of a row (on the stack, in the L1 cache).
const CHUNK: usize = 1024;

/// The negative log-likelihood as a burn backend extension (for `flex` and autodiff over it).
#[backend_extension(Flex, Autodiff)]
pub trait FusedNll: Backend {
    /// `Σ_r −log softmax(logits[r])[targets[r]]` for `logits: [rows, vocab]`, as `[1]`.
    fn fused_nll(logits: FloatTensor<Self>, targets: Vec<u32>) -> FloatTensor<Self>;
}

/// [`FusedNll`] on a tensor of the CPU device (plain or autodiff): the summed negative
/// log-likelihood of `targets` (one per row of `logits: [rows, vocab]`), as `[1]`.
pub fn fused_nll(logits: Tensor<2>, targets: Vec<u32>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as FusedNll>::fused_nll(
        logits.into_dispatch(),
        targets,
    ))
}

impl FusedNll for Flex {
    fn fused_nll(logits: FlexTensor, targets: Vec<u32>) -> FlexTensor {
        forward(&logits.to_contiguous(), &targets).0
    }
}

/// What the backward pass needs.
#[derive(Debug, Clone)]
struct Saved {
    logits: FlexTensor,
    targets: Vec<u32>,
    lse: Vec<f32>,
}

#[derive(Debug)]
struct NllBackward;

impl Backward<Flex, 1> for NllBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            grads.register::<Flex>(node.id, backward(&ops.state, &grad));
        }
    }
}

impl<C: CheckpointStrategy> FusedNll for Autodiff<Flex, C> {
    fn fused_nll(logits: FloatTensor<Self>, targets: Vec<u32>) -> FloatTensor<Self> {
        let prep = NllBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful();
        let logits = logits.primitive().to_contiguous();
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, lse) = forward(&logits, &targets);
                prep.finish(
                    Saved {
                        logits,
                        targets,
                        lse,
                    },
                    out,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&logits, &targets).0),
        }
    }
}

fn rows_of<'a>(logits: &'a FlexTensor, targets: &[u32]) -> (&'a [f32], usize) {
    let shape = logits.layout().shape();
    assert_eq!(shape.num_dims(), 2, "the loss takes [rows, vocab] logits");
    assert_eq!(logits.dtype(), DType::F32, "the loss computes in f32");
    let (rows, vocab) = (shape[0], shape[1]);
    assert_eq!(rows, targets.len(), "one target per row of logits");
    assert!(
        targets.iter().all(|&t| (t as usize) < vocab),
        "a target is outside the vocabulary of {vocab}"
    );
    let data = logits
        .as_slice::<f32>()
        .expect("the logits are made contiguous first");
    (data, vocab)
}

/// The summed loss `[1]` and each row's log-sum-exp.
fn forward(logits: &FlexTensor, targets: &[u32]) -> (FlexTensor, Vec<f32>) {
    let (data, vocab) = rows_of(logits, targets);
    let lse: Vec<f32> = data
        .par_chunks(vocab)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut scratch = [0.0f32; CHUNK];
            let mut total = 0.0f32;
            for part in row.chunks(CHUNK) {
                let s = &mut scratch[..part.len()];
                for (x, y) in s.iter_mut().zip(part) {
                    *x = y - max;
                }
                exp_in_place(s);
                total += s.iter().sum::<f32>();
            }
            max + total.ln()
        })
        .collect();
    let nll: f64 = lse
        .iter()
        .zip(targets)
        .enumerate()
        .map(|(r, (l, &t))| f64::from(l - data[r * vocab + t as usize]))
        .sum();
    let out = FlexTensor::from_data(TensorData::new(vec![nll as f32], Shape::new([1])));
    (out, lse)
}

/// `g · (softmax(logits) − onehot(targets))`, `[rows, vocab]`.
fn backward(s: &Saved, grad: &FlexTensor) -> FlexTensor {
    let (data, vocab) = rows_of(&s.logits, &s.targets);
    let g = grad.to_contiguous().as_slice::<f32>().expect("contiguous")[0];
    let mut out = vec![0.0f32; data.len()];
    out.par_chunks_mut(vocab)
        .zip(data.par_chunks(vocab))
        .enumerate()
        .for_each(|(r, (dst, row))| {
            let l = s.lse[r];
            for (x, y) in dst.iter_mut().zip(row) {
                *x = y - l;
            }
            exp_in_place(dst);
            for x in dst.iter_mut() {
                *x *= g;
            }
            dst[s.targets[r] as usize] -= g;
        });
    let rows = data.len() / vocab;
    FlexTensor::from_data(TensorData::new(out, Shape::new([rows, vocab])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Distribution, Int};

    fn burn_nll(logits: Tensor<2>, targets: &[u32]) -> Tensor<1> {
        let device = logits.device();
        let ids: Vec<i64> = targets.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [targets.len(), 1]), &device);
        log_softmax(logits, 1).gather(1, ids).sum().neg()
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn value_and_gradient_match_burns_log_softmax() {
        for &(rows, vocab) in &[(1, 7), (5, 3000), (33, 2049)] {
            let device = Device::flex().autodiff();
            device.seed(rows as u64);
            let logits =
                Tensor::<2>::random([rows, vocab], Distribution::Normal(0.0, 3.0), &device)
                    .require_grad();
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % vocab) as u32).collect();
            // A weight after the loss, so the upstream gradient is not 1.
            let ours = fused_nll(logits.clone(), targets.clone()).mul_scalar(0.37);
            let theirs = burn_nll(logits.clone(), &targets).mul_scalar(0.37);
            let (a, b) = (
                ours.clone().into_scalar::<f32>(),
                theirs.clone().into_scalar::<f32>(),
            );
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{rows}×{vocab}: {a} vs {b}"
            );
            let ga = values(logits.grad(&ours.backward()).unwrap());
            let gb = values(logits.grad(&theirs.backward()).unwrap());
            let diff = ga
                .iter()
                .zip(&gb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-6, "{rows}×{vocab}: gradients differ by {diff}");
        }
    }

    #[test]
    fn without_autodiff_it_is_the_same_value() {
        let device = Device::flex();
        device.seed(3);
        let logits = Tensor::<2>::random([4, 500], Distribution::Normal(0.0, 1.0), &device);
        let targets = vec![0, 499, 17, 250];
        let a = fused_nll(logits.clone(), targets.clone()).into_scalar::<f32>();
        let b = burn_nll(logits, &targets).into_scalar::<f32>();
        assert!((a - b).abs() < 1e-5 * b.abs());
    }
}
