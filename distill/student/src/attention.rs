//! Causal grouped-query attention for training, computed one block of query rows at a time.
//!
//! burn's `attention` under autodiff is its differentiable fallback: the full `L×L` score
//! matrix of every head is formed, masked with a freshly built `L×L` causal mask, and its
//! softmax kept for the backward pass — although causality makes half of it zeros. Here the
//! queries of positions `[s, e)` meet only the keys `[0, e)`, so the scores (and what the
//! backward pass keeps of them) shrink to `(n+1)/(2n)` of `L²` for `n` blocks; the mask is
//! an additive bias built once per forward pass and shared by every layer; the softmax's
//! division comes after the product with the values, so one matrix of that size is kept
//! per layer instead of two; and each key/value head is read by its whole group of query
//! heads in one product instead of being copied `group` times.
//!
//! The result is the same function (to float rounding) with the same gradients: the tests
//! compare both against burn's fallback.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};

/// Query rows per block. Smaller blocks skip more of the masked triangle but launch more
/// (smaller) products: with `n` blocks the scores are `(n+1)/(2n)` of `L²`, 56% at 1,024
/// tokens with 128 rows, 53% with 64. Only 128 has been measured (`bench train`).
pub const ATTENTION_BLOCK: usize = 128;

/// How the student computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// [`crate::fused_attention::fused_causal_attention`] on the CPU (one operation with its
    /// own backward pass), [`blocked_causal_attention`] on other devices: the default.
    #[default]
    Fused,
    /// [`blocked_causal_attention`] on every device (built from burn's operations); kept as
    /// the baseline `bench train --attention-baseline` measures the fused kernel against.
    Blocked,
    /// [`burn_grouped_attention`] (its autodiff fallback forms the full `L×L` scores); kept
    /// as a second baseline (`bench train --attention-baseline`).
    Burn,
}

/// The additive causal masks of one forward pass: for each block of query rows, a
/// `[1, 1, group·rows, keys]` bias that is 0 where a key is visible and −∞ after the query.
pub struct CausalBlocks {
    blocks: Vec<(usize, usize, Tensor<4>)>,
    group: usize,
}

impl CausalBlocks {
    /// Masks for sequences of `seq` positions, `group` query heads per key/value head, and
    /// blocks of `block` query rows.
    pub fn new(seq: usize, group: usize, block: usize, device: &Device) -> Self {
        let block = block.max(1);
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < seq {
            let end = (start + block).min(seq);
            let rows = end - start;
            let mut bias = Vec::with_capacity(group * rows * end);
            for _ in 0..group {
                for query in start..end {
                    bias.extend(
                        (0..end).map(|key| if key <= query { 0.0 } else { f32::NEG_INFINITY }),
                    );
                }
            }
            let bias = Tensor::<2>::from_data(TensorData::new(bias, [group * rows, end]), device)
                .unsqueeze::<4>();
            blocks.push((start, end, bias));
            start = end;
        }
        Self { blocks, group }
    }
}

/// `softmax(q·kᵀ·scale + causal) · v` for `q: [batch, heads, seq, dim]` and
/// `k, v: [batch, kv_heads, seq, dim]`, where query head `h` reads key/value head
/// `h / group`; returns `[batch, heads, seq, dim]`.
pub fn blocked_causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    masks: &CausalBlocks,
) -> Tensor<4> {
    let [batch, heads, seq, dim] = q.dims();
    let kv_heads = k.dims()[1];
    let group = masks.group;
    debug_assert_eq!(heads, kv_heads * group);
    // Scaling q (seq × dim) is cheaper than scaling the scores (seq × seq).
    let q = q
        .mul_scalar(scale)
        .reshape([batch, kv_heads, group, seq, dim]);
    let mut outs = Vec::with_capacity(masks.blocks.len());
    for (start, end, bias) in &masks.blocks {
        let rows = end - start;
        let q_block =
            q.clone()
                .narrow(3, *start, rows)
                .reshape([batch, kv_heads, group * rows, dim]);
        let keys = k.clone().narrow(2, 0, *end);
        let values = v.clone().narrow(2, 0, *end);
        let scores = q_block.matmul(keys.swap_dims(2, 3)) + bias.clone();
        // softmax(s)·v = (exp(s − max)·v) / Σ exp(s − max): dividing after the product
        // leaves the backward pass one rows × keys matrix to keep (the exponentials, which
        // both the exponential and the product need) instead of two, and divides
        // rows × dim numbers instead of rows × keys. No row is fully masked (key 0 is
        // visible to every query), so the maximum is finite.
        let max = scores.clone().detach().max_dim(3);
        let weights = (scores - max).exp();
        let total = weights.clone().sum_dim(3);
        let out = weights.matmul(values) / total;
        outs.push(out.reshape([batch, kv_heads, group, rows, dim]));
    }
    Tensor::cat(outs, 3).reshape([batch, heads, seq, dim])
}

/// The same function through burn's own `attention`, the key/value heads first copied out
/// to every query head (burn's differentiable fallback, used under autodiff, needs equal
/// head counts).
pub fn burn_grouped_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    let [batch, heads, _, _] = q.dims();
    let [_, kv_heads, seq, dim] = k.dims();
    let group = heads / kv_heads;
    let (k, v) = if group == 1 {
        (k, v)
    } else {
        let widen = |t: Tensor<4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([batch, kv_heads, group, seq, dim])
                .reshape([batch, heads, seq, dim])
        };
        (widen(k), widen(v))
    };
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: true,
    };
    attention(q, k, v, None, None, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;
    use crate::model::tensor_to_vec;
    use burn::tensor::Distribution;

    fn random(shape: [usize; 4], seed: u64) -> Tensor<4> {
        let device = Device::flex();
        burn::tensor::Tensor::<1>::from_data(
            TensorData::new(
                (0..shape.iter().product::<usize>())
                    .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 1009) as f32 / 504.5 - 1.0)
                    .collect::<Vec<f32>>(),
                [shape.iter().product::<usize>()],
            ),
            &device,
        )
        .reshape(shape)
    }

    #[test]
    fn blocks_give_burns_attention_and_its_gradients() {
        let (batch, kv_heads, group, seq, dim) = (2, 2, 3, 11, 4);
        let scale = 1.0 / (dim as f64).sqrt();
        let device = Device::flex();
        // Blocks that divide the sequence, that do not, one block, and one row per block.
        for block in [1, 4, 11, 64] {
            let masks = CausalBlocks::new(seq, group, block, &device);
            let q = random([batch, kv_heads * group, seq, dim], 1)
                .autodiff()
                .require_grad();
            let k = random([batch, kv_heads, seq, dim], 2)
                .autodiff()
                .require_grad();
            let v = random([batch, kv_heads, seq, dim], 3)
                .autodiff()
                .require_grad();
            // A loss that weighs every output element differently, so no gradient cancels.
            let weights = Tensor::<4>::random(
                [batch, kv_heads * group, seq, dim],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            )
            .autodiff();
            let ours = blocked_causal_attention(q.clone(), k.clone(), v.clone(), scale, &masks);
            let theirs = burn_grouped_attention(q.clone(), k.clone(), v.clone(), scale);
            assert!(
                max_abs_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-5,
                "block {block}"
            );
            let grads_ours = (ours * weights.clone()).sum().backward();
            let grads_theirs = (theirs * weights).sum().backward();
            for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
                let a = t.grad(&grads_ours).unwrap();
                let b = t.grad(&grads_theirs).unwrap();
                assert!(max_abs_diff(a, b) < 1e-5, "d{name}, block {block}");
            }
        }
    }

    #[test]
    fn a_query_sees_no_later_key() {
        // v holds each key's position: a query's output is a mean of positions ≤ its own.
        let (seq, dim) = (9, 1);
        let device = Device::flex();
        let masks = CausalBlocks::new(seq, 1, 4, &device);
        let q = Tensor::<4>::zeros([1, 1, seq, dim], &device);
        let k = Tensor::<4>::zeros([1, 1, seq, dim], &device);
        let v = Tensor::<1>::from_data(
            TensorData::new((0..seq).map(|p| p as f32).collect::<Vec<_>>(), [seq]),
            &device,
        )
        .reshape([1, 1, seq, dim]);
        let out = tensor_to_vec(blocked_causal_attention(q, k, v, 1.0, &masks)).unwrap();
        for (pos, value) in out.iter().enumerate() {
            assert!((value - pos as f32 / 2.0).abs() < 1e-5, "{pos}: {value}");
        }
    }
}
