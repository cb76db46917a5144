//! Causal grouped-query attention on the CPU as one operation with its own backward pass.
//!
//! Built from burn's tensor operations (see [`crate::attention`]), attention is a dozen
//! operations over score-sized matrices per layer, each a fresh buffer, with libm's scalar
//! `expf`, and the backward pass keeps one score-sized matrix per layer (570 MB for the 30
//! layers of SmolLM2-135M at 1,024 tokens). Here the forward pass goes through the queries in
//! tiles of [`QUERY_TILE`] rows: one product with the visible keys, a softmax in place with a
//! vectorisable exponential, one product with the values. It keeps only the output and each
//! row's log-sum-exp; the backward pass recomputes a tile's probabilities from them (the
//! standard recomputation of memory-efficient attention) and forms the three gradients with
//! five products per tile. The products are the `gemm` crate's, the one burn's `flex`
//! back-end uses; tiles (forward) and heads (backward) run in parallel on rayon's pool.
//!
//! The operation is a burn backend extension for `flex` and autodiff over `flex`; other
//! devices (the GPU) keep [`crate::attention::blocked_causal_attention`]. The tests compare
//! values and gradients with that function.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Shape, Tensor};
use rayon::prelude::*;

/// Query rows per tile: a tile's scores (`QUERY_TILE × keys` floats, 256 KB at 1,024 keys)
/// stay in the L2 cache between the products and the softmax.
pub const QUERY_TILE: usize = 64;

/// Attention as a burn backend extension (implemented for `flex` and autodiff over it).
#[backend_extension(Flex, Autodiff)]
pub trait FusedCausalAttention: Backend {
    /// `softmax(q·kᵀ·scale + causal)·v` for `q: [batch, heads, seq, dim]`,
    /// `k, v: [batch, kv_heads, seq, dim]`; query head `h` reads key/value head
    /// `h / (heads / kv_heads)`.
    fn fused_causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
}

/// [`FusedCausalAttention`] on tensors of the CPU device (plain or autodiff): `q: [batch,
/// heads, seq, dim]`, `k, v: [batch, kv_heads, seq, dim]`, returns `[batch, heads, seq, dim]`.
pub fn fused_causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedCausalAttention>::fused_causal_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale as f32,
    ))
}

impl FusedCausalAttention for Flex {
    fn fused_causal_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        scale: f32,
    ) -> FlexTensor {
        forward(&q, &k, &v, scale).0
    }
}

/// What the backward pass needs: the inputs (contiguous), the output and each row's
/// log-sum-exp.
#[derive(Debug, Clone)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Vec<f32>,
    scale: f32,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (dq, dk, dv) = backward(&ops.state, &grad);
        let [pq, pk, pv] = ops.parents;
        for (parent, g) in [(pq, dq), (pk, dk), (pv, dv)] {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

impl<C: CheckpointStrategy> FusedCausalAttention for Autodiff<Flex, C> {
    fn fused_causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let prep = AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let (qc, kc, vc) = (
            q.primitive().to_contiguous(),
            k.primitive().to_contiguous(),
            v.primitive().to_contiguous(),
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, lse) = forward(&qc, &kc, &vc, scale);
                let saved = Saved {
                    q: qc,
                    k: kc,
                    v: vc,
                    out: out.clone(),
                    lse,
                    scale,
                };
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&qc, &kc, &vc, scale).0),
        }
    }
}

/// The shape of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    dim: usize,
}

impl Dims {
    fn of(q: &FlexTensor, k: &FlexTensor) -> Self {
        let qs = q.layout().shape();
        let ks = k.layout().shape();
        assert!(
            qs.num_dims() == 4 && ks.num_dims() == 4,
            "attention takes [batch, heads, seq, dim] tensors"
        );
        let d = Self {
            batch: qs[0],
            heads: qs[1],
            kv_heads: ks[1],
            seq: qs[2],
            dim: qs[3],
        };
        assert!(
            d.kv_heads > 0
                && d.heads.is_multiple_of(d.kv_heads)
                && ks[0] == d.batch
                && ks[2] == d.seq
                && ks[3] == d.dim,
            "attention shapes disagree: q {qs:?}, k {ks:?}"
        );
        d
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Offset of query head `bh` (`batch · heads + head`)'s key/value head.
    fn kv_offset(&self, bh: usize) -> usize {
        let (b, h) = (bh / self.heads, bh % self.heads);
        (b * self.kv_heads + h / self.group()) * self.seq * self.dim
    }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    assert_eq!(t.dtype(), DType::F32, "fused attention computes in f32");
    t.as_slice::<f32>()
        .expect("fused attention's inputs are made contiguous first")
}

fn tensor(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(
        data,
        Shape::from(shape.to_vec()),
    ))
}

/// Output `[batch, heads, seq, dim]` and the log-sum-exp of every query row.
fn forward(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, scale: f32) -> (FlexTensor, Vec<f32>) {
    let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
    let d = Dims::of(&q, &k);
    let (qs, ks, vs) = (f32s(&q), f32s(&k), f32s(&v));
    let (seq, dim) = (d.seq, d.dim);
    let mut out = vec![0.0f32; d.batch * d.heads * seq * dim];
    let mut lse = vec![0.0f32; d.batch * d.heads * seq];
    // One task per (head, tile of query rows): each writes its own rows of `out` and `lse`.
    // Tiles are split within each head, so a partial last tile never spans two heads.
    out.par_chunks_mut(seq * dim)
        .zip(lse.par_chunks_mut(seq))
        .enumerate()
        .for_each(|(bh, (o, l))| {
            o.par_chunks_mut(QUERY_TILE * dim)
                .zip(l.par_chunks_mut(QUERY_TILE))
                .enumerate()
                .for_each(|(tile, (o, l))| {
                    forward_tile(qs, ks, vs, d, scale, bh, tile * QUERY_TILE, o, l);
                });
        });
    (tensor(out, [d.batch, d.heads, seq, dim]), lse)
}

/// Rows `[r0, r0 + rows)` of head `bh` (`rows` from the length of `lse`).
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: Dims,
    scale: f32,
    bh: usize,
    r0: usize,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (seq, dim) = (d.seq, d.dim);
    let rows = lse.len();
    let keys = r0 + rows;
    let q = Operand::new(&q[(bh * seq + r0) * dim..][..rows * dim], rows, dim);
    let k = Operand::new(&k[d.kv_offset(bh)..][..keys * dim], keys, dim);
    let v = Operand::new(&v[d.kv_offset(bh)..][..keys * dim], keys, dim);
    let mut scores = vec![0.0f32; rows * keys];
    product(&mut scores, q, k.t(), scale, false);
    for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
        let visible = r0 + i + 1;
        let (seen, unseen) = row.split_at_mut(visible);
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in seen.iter_mut() {
            *x -= max;
        }
        exp_in_place(seen);
        let total: f32 = seen.iter().sum();
        let inv = 1.0 / total;
        for x in seen.iter_mut() {
            *x *= inv;
        }
        unseen.fill(0.0);
        lse[i] = max + total.ln();
    }
    product(out, Operand::new(&scores, rows, keys), v, 1.0, false);
}

/// Gradients of q, k and v from the output's gradient.
fn backward(s: &Saved, grad: &FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
    let grad = grad.to_contiguous();
    let d = Dims::of(&s.q, &s.k);
    let (seq, dim) = (d.seq, d.dim);
    let (q, k, v, o, g) = (
        f32s(&s.q),
        f32s(&s.k),
        f32s(&s.v),
        f32s(&s.out),
        f32s(&grad),
    );
    let head = seq * dim;
    let mut dq = vec![0.0f32; d.batch * d.heads * head];
    // Key and value gradients per query head, summed over each group afterwards.
    let mut dk_heads = vec![0.0f32; d.batch * d.heads * head];
    let mut dv_heads = vec![0.0f32; d.batch * d.heads * head];
    dq.par_chunks_mut(head)
        .zip(dk_heads.par_chunks_mut(head))
        .zip(dv_heads.par_chunks_mut(head))
        .enumerate()
        .for_each(|(bh, ((dq, dk), dv))| {
            backward_head(q, k, v, o, g, &s.lse, d, s.scale, bh, dq, dk, dv);
        });
    let group = d.group();
    let reduce = |per_head: Vec<f32>| {
        if group == 1 {
            return per_head;
        }
        let mut out = vec![0.0f32; d.batch * d.kv_heads * head];
        for (kv, dst) in out.chunks_exact_mut(head).enumerate() {
            let (b, kvh) = (kv / d.kv_heads, kv % d.kv_heads);
            for member in 0..group {
                let h = b * d.heads + kvh * group + member;
                for (x, y) in dst.iter_mut().zip(&per_head[h * head..][..head]) {
                    *x += y;
                }
            }
        }
        out
    };
    let kv_shape = [d.batch, d.kv_heads, seq, dim];
    (
        tensor(dq, [d.batch, d.heads, seq, dim]),
        tensor(reduce(dk_heads), kv_shape),
        tensor(reduce(dv_heads), kv_shape),
    )
}

/// The gradients of one query head: its queries' (`dq`) and its share of its key/value
/// head's (`dk`, `dv`).
#[allow(clippy::too_many_arguments)]
fn backward_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    g: &[f32],
    lse: &[f32],
    d: Dims,
    scale: f32,
    bh: usize,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (seq, dim) = (d.seq, d.dim);
    let q = &q[bh * seq * dim..][..seq * dim];
    let o = &o[bh * seq * dim..][..seq * dim];
    let g = &g[bh * seq * dim..][..seq * dim];
    let lse = &lse[bh * seq..][..seq];
    let k = &k[d.kv_offset(bh)..][..seq * dim];
    let v = &v[d.kv_offset(bh)..][..seq * dim];
    let mut p = vec![0.0f32; QUERY_TILE * seq];
    let mut dp = vec![0.0f32; QUERY_TILE * seq];
    for r0 in (0..seq).step_by(QUERY_TILE) {
        let r1 = (r0 + QUERY_TILE).min(seq);
        let (rows, keys) = (r1 - r0, r1);
        let (p, dp) = (&mut p[..rows * keys], &mut dp[..rows * keys]);
        let q_tile = Operand::new(&q[r0 * dim..r1 * dim], rows, dim);
        let g_tile = Operand::new(&g[r0 * dim..r1 * dim], rows, dim);
        let k_seen = Operand::new(&k[..keys * dim], keys, dim);
        let v_seen = Operand::new(&v[..keys * dim], keys, dim);
        // p = exp(scale · q · kᵀ − lse) on the visible keys, 0 after them.
        product(p, q_tile, k_seen.t(), scale, false);
        for (i, row) in p.chunks_exact_mut(keys).enumerate() {
            let visible = r0 + i + 1;
            let (seen, unseen) = row.split_at_mut(visible);
            let l = lse[r0 + i];
            for x in seen.iter_mut() {
                *x -= l;
            }
            exp_in_place(seen);
            unseen.fill(0.0);
        }
        product(
            &mut dv[..keys * dim],
            Operand::new(p, rows, keys).t(),
            g_tile,
            1.0,
            true,
        );
        product(dp, g_tile, v_seen.t(), 1.0, false);
        // ds = p ∘ (dp − rowsum(g ∘ o)), written over p.
        for i in 0..rows {
            let delta: f32 = g[(r0 + i) * dim..][..dim]
                .iter()
                .zip(&o[(r0 + i) * dim..][..dim])
                .map(|(a, b)| a * b)
                .sum();
            for (x, y) in p[i * keys..][..keys]
                .iter_mut()
                .zip(&dp[i * keys..][..keys])
            {
                *x *= y - delta;
            }
        }
        let ds = Operand::new(p, rows, keys);
        product(&mut dq[r0 * dim..r1 * dim], ds, k_seen, scale, false);
        product(&mut dk[..keys * dim], ds.t(), q_tile, scale, true);
    }
}

/// A matrix [`product`] reads: `rows × cols` elements of a slice in row-major order, or (after
/// [`Operand::t`]) its transpose, read through strides without a copy.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> Operand<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "a {rows}×{cols} operand of {} elements",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The transpose.
    fn t(self) -> Self {
        Self {
            transposed: !self.transposed,
            ..self
        }
    }

    /// `(rows, columns)` as the product sees them.
    fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// `(row stride, column stride)` as the product sees them.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `dst = beta · a · b`, or `dst += beta · a · b` when `accumulate`; `dst` is row-major with
/// `b`'s column count. Single-threaded: the callers are rayon tasks already.
fn product(dst: &mut [f32], a: Operand, b: Operand, beta: f32, accumulate: bool) {
    let ((m, k), (k_b, n)) = (a.shape(), b.shape());
    assert_eq!(k, k_b, "product of {m}×{k} and {k_b}×{n}");
    assert!(
        dst.len() >= m * n,
        "a {m}×{n} product into {} elements",
        dst.len()
    );
    let ((a_rs, a_cs), (b_rs, b_cs)) = (a.strides(), b.strides());
    // SAFETY: the asserts above and in `Operand::new` keep every element the strides reach
    // inside `dst`, `a.data` and `b.data`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `e^x` of every element, in place: `x = n·ln2 + r`, `e^r` by its degree-6 Taylor
/// polynomial on `|r| ≤ ln2/2` (relative error ~1e-7, like libm's `expf`), `2^n` built in
/// the exponent bits. Written branch-free so the loop vectorises. Inputs are clamped to
/// [−87.3, 88.3], where `2^n` is a normal f32: the softmax only passes numbers ≤ 0, and
/// below −87.3 it gets ~1e-38 instead of a subnormal or 0.
pub(crate) fn exp_in_place(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    for x in xs.iter_mut() {
        let a = x.clamp(-87.3, 88.3);
        let n = (a * LOG2E + ROUND) - ROUND;
        let r = a - n * LN2_HI - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
        *x = two_n * p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{blocked_causal_attention, CausalBlocks};
    use crate::model::max_abs_diff;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn the_exponential_matches_libm() {
        let mut xs: Vec<f32> = (-8700..=8830).map(|i| i as f32 / 100.0).collect();
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        exp_in_place(&mut xs);
        for (got, want) in xs.iter().zip(&want) {
            if *want > 1e-37 {
                assert!((got - want).abs() <= 4e-7 * want, "{got} vs {want}");
            }
        }
    }

    fn random(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
        device.seed(seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    /// Values and q/k/v gradients against the blocked attention built from burn's operations,
    /// for several lengths (whole and partial tiles), group sizes and a batch of 2.
    #[test]
    fn values_and_gradients_match_the_blocked_attention() {
        for &(batch, heads, kv_heads, seq, dim) in &[
            (1, 4, 2, 64, 8),
            (1, 3, 1, 100, 16),
            (2, 2, 2, 130, 8),
            (1, 6, 2, 257, 32),
        ] {
            let device = Device::flex().autodiff();
            let q = random([batch, heads, seq, dim], 1, &device).require_grad();
            let k = random([batch, kv_heads, seq, dim], 2, &device).require_grad();
            let v = random([batch, kv_heads, seq, dim], 3, &device).require_grad();
            let w = random([batch, heads, seq, dim], 4, &device);
            let scale = 1.0 / (dim as f64).sqrt();

            let fused = fused_causal_attention(q.clone(), k.clone(), v.clone(), scale);
            let fused_grads = (fused.clone() * w.clone()).sum().backward();
            let masks = CausalBlocks::new(seq, heads / kv_heads, 48, &device);
            let reference =
                blocked_causal_attention(q.clone(), k.clone(), v.clone(), scale, &masks);
            let reference_grads = (reference.clone() * w).sum().backward();

            let what = format!("b{batch} h{heads}/{kv_heads} seq {seq} dim {dim}");
            assert!(
                max_abs_diff(fused.inner(), reference.inner()) < 1e-5,
                "values, {what}"
            );
            for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
                let a = t.grad(&fused_grads).unwrap();
                let b = t.grad(&reference_grads).unwrap();
                let diff = max_abs_diff(a, b);
                assert!(diff < 1e-4, "grad {name} differs by {diff}, {what}");
            }
        }
    }

    #[test]
    fn without_autodiff_it_is_the_same_function() {
        let device = Device::flex();
        let q = random([1, 4, 70, 16], 5, &device);
        let k = random([1, 2, 70, 16], 6, &device);
        let v = random([1, 2, 70, 16], 7, &device);
        let fused = fused_causal_attention(q.clone(), k.clone(), v.clone(), 0.25);
        let masks = CausalBlocks::new(70, 2, 32, &device);
        let reference = blocked_causal_attention(q, k, v, 0.25, &masks);
        assert!(max_abs_diff(fused, reference) < 1e-5);
    }
}
