//! The llama-family decoder in burn: token embedding, `n_layers` pre-norm blocks (RMSNorm →
//! grouped-query attention with RoPE → residual, RMSNorm → SwiGLU MLP → residual), a final
//! RMSNorm and the output head (the embedding matrix itself when tied).
//!
//! Only the forward pass lives here; the weights come from [`crate::gguf`] (or any other
//! source through the public fields), and a training loop can sit beside it: every
//! projection is a [`Linear`], which may carry a [`LowRank`] adapter added as `s·(x·A)·B`
//! beside the frozen `x·W` (the matrix `W + s·A·B` is never formed, so a backward pass
//! through a frozen `W` needs only its product with the output gradient, not its own
//! gradient).
//!
//! Shapes: activations are `[batch, seq, hidden]`; a batch holds sequences of one length,
//! each attending causally to itself from position 0.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Bool, Device, Distribution, Int, Shape, Tensor, TensorData};

use crate::attention::{
    blocked_causal_attention, burn_grouped_attention, AttentionKernel, CausalBlocks,
    ATTENTION_BLOCK,
};
use crate::config::{RopeStyle, StudentConfig};
use crate::error::{Result, StudentError};
use crate::fused_attention::fused_causal_attention;
use crate::fused_swiglu::fused_swiglu;
use crate::train::data::SplitMix64;

/// A low-rank adapter of one [`Linear`]: adds `scale · (drop(x)·A)·B`, `A: [d_input, rank]`,
/// `B: [rank, d_output]`, where `drop` is dropout while training (LoRA's, on the adapter's
/// input only) and the identity otherwise.
#[derive(Module, Debug)]
pub struct LowRank {
    /// Down projection `A`, `[d_input, rank]`.
    pub a: Param<Tensor<2>>,
    /// Up projection `B`, `[rank, d_output]`.
    pub b: Param<Tensor<2>>,
    /// The factor in front of the product (`alpha / rank` in LoRA's terms).
    #[module(skip)]
    pub scale: f32,
    /// Probability of zeroing an input element while training.
    #[module(skip)]
    pub dropout: f64,
    /// Whether dropout applies (set by [`Student::set_training`]).
    #[module(skip)]
    pub training: bool,
}

impl LowRank {
    /// An adapter from its two factors, without dropout.
    pub fn new(a: Tensor<2>, b: Tensor<2>, scale: f32) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale,
            dropout: 0.0,
            training: false,
        }
    }

    /// Rank of the product.
    pub fn rank(&self) -> usize {
        self.a.shape().dims::<2>()[1]
    }

    /// `scale · (drop(x)·A)·B`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_dropped(self.drop(x))
    }

    /// `drop(x)`: LoRA's dropout while training, the identity otherwise.
    pub fn drop<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if !(self.training && self.dropout > 0.0) {
            return x;
        }
        // Inverted dropout: kept elements are scaled up so the expectation is unchanged.
        // The mask is boolean, so the backward pass keeps one byte per element for it
        // where a float mask (`x · keep`) would keep four.
        let dropped = dropout_mask(x.shape(), self.dropout, &x.device());
        x.mask_fill(dropped, 0.0)
            .mul_scalar(1.0 / (1.0 - self.dropout))
    }

    /// `scale · (x·A)·B` of an input already through [`LowRank::drop`].
    pub fn forward_dropped<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let down = linear(x, self.a.val(), None);
        linear(down, self.b.val(), None).mul_scalar(self.scale)
    }
}

/// Whether `device` is burn's `flex` CPU device (plain or autodiff), where the fused
/// operations (`fused_attention`, `fused_swiglu`, the loss's `fused_nll`) run.
pub(crate) fn on_cpu(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// A mask of `shape` that is true with probability `p` per element. Its seed is drawn from
/// the device's random generator (so `Device::seed` makes it reproducible), its bits from a
/// SplitMix64 stream on the host: burn's own `random` (ChaCha, one float per element, then a
/// comparison) took 5% of a training step's time.
fn dropout_mask<const D: usize>(shape: Shape, p: f64, device: &Device) -> Tensor<D, Bool> {
    let seed_bits = Tensor::<1>::random([2], Distribution::Uniform(0.0, 1.0), device)
        .into_data()
        .iter::<f32>()
        .fold(0u64, |acc, x| {
            (acc << 24) ^ u64::from((x * 16_777_216.0) as u32)
        });
    let mut rng = SplitMix64::new(seed_bits, 0xd70b);
    // An element is dropped when its 32 random bits fall below p · 2^32.
    let threshold = (p * 4_294_967_296.0) as u64;
    let n = shape.num_elements();
    let mut mask = Vec::with_capacity(n + 1);
    while mask.len() < n {
        let bits = rng.next_u64();
        mask.push((bits & 0xffff_ffff) < threshold);
        mask.push((bits >> 32) < threshold);
    }
    mask.truncate(n);
    Tensor::from_data(TensorData::new(mask, shape), device)
}

/// A projection `x·W (+ b)` with `W: [d_input, d_output]` (burn's orientation: the
/// transpose of GGUF's and PyTorch's `[out, in]` rows), and an optional [`LowRank`] adapter.
#[derive(Module, Debug)]
pub struct Linear {
    /// `W`, `[d_input, d_output]`.
    pub weight: Param<Tensor<2>>,
    /// `b`, `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Added to the output when present.
    pub adapter: Option<LowRank>,
}

impl Linear {
    /// A projection without adapter.
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            adapter: None,
        }
    }

    /// Input width.
    pub fn d_input(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// Output width.
    pub fn d_output(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }

    /// `x·W + b (+ adapter(x))` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dropped = self.adapter.as_ref().map(|a| a.drop(x.clone()));
        self.forward_shared(x, dropped)
    }

    /// `x·W + b (+ adapter(x))` where the adapter's input has been through its dropout
    /// already (`dropped`), shared with the other projections of the same `x`.
    fn forward_shared<const D: usize>(
        &self,
        x: Tensor<D>,
        dropped: Option<Tensor<D>>,
    ) -> Tensor<D> {
        let bias = self.bias.as_ref().map(Param::val);
        let frozen = linear(x, self.weight.val(), bias);
        match (&self.adapter, dropped) {
            (Some(adapter), Some(dropped)) => frozen + adapter.forward_dropped(dropped),
            _ => frozen,
        }
    }
}

/// The projections of one input (q, k, v; gate, up), their adapters fed one dropout draw
/// of it: each distinct dropped copy is kept for the backward pass, so one draw per input
/// instead of one per projection saves two (attention) and one (MLP) `[seq, hidden]`
/// matrices per block. PEFT draws per projection; with dropout 0.05 the difference is in
/// which elements are dropped together, not in how many.
fn project_shared<const D: usize, const N: usize>(
    layers: [&Linear; N],
    x: Tensor<D>,
) -> [Tensor<D>; N] {
    let dropped = layers
        .iter()
        .find_map(|l| l.adapter.as_ref())
        .map(|a| a.drop(x.clone()));
    layers.map(|l| l.forward_shared(x.clone(), l.adapter.as_ref().and(dropped.clone())))
}

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `w`, `[hidden]`.
    pub weight: Param<Tensor<1>>,
    /// `eps`.
    #[module(skip)]
    pub eps: f32,
}

impl RmsNorm {
    /// A norm with the given scale.
    pub fn new(weight: Tensor<1>, eps: f32) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalises `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let inv = x
            .clone()
            .square()
            .mean_dim(2)
            .add_scalar(self.eps)
            .sqrt()
            .recip();
        x * inv * self.weight.val().unsqueeze::<3>()
    }
}

/// Grouped-query self-attention with RoPE on q and k.
#[derive(Module, Debug)]
pub struct Attention {
    /// Queries: `[hidden, n_heads·head_dim]`.
    pub q: Linear,
    /// Keys: `[hidden, n_kv_heads·head_dim]`.
    pub k: Linear,
    /// Values: `[hidden, n_kv_heads·head_dim]`.
    pub v: Linear,
    /// Output: `[n_heads·head_dim, hidden]`.
    pub o: Linear,
    /// Query heads.
    #[module(skip)]
    pub n_heads: usize,
    /// Key/value heads; query head `h` reads key/value head `h / (n_heads / n_kv_heads)`.
    #[module(skip)]
    pub n_kv_heads: usize,
    /// Width of one head.
    #[module(skip)]
    pub head_dim: usize,
}

impl Attention {
    fn forward(&self, x: Tensor<3>, positions: &Positions) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let heads =
            |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let rope = &positions.rope;
        let [q, k, v] = project_shared([&self.q, &self.k, &self.v], x);
        let q = rope.apply(heads(q, self.n_heads));
        let k = rope.apply(heads(k, self.n_kv_heads));
        let v = heads(v, self.n_kv_heads);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = match &positions.causal {
            Causal::Fused => fused_causal_attention(q, k, v, scale),
            Causal::Blocked(masks) => blocked_causal_attention(q, k, v, scale, masks),
            Causal::Burn => burn_grouped_attention(q, k, v, scale),
        };
        let out = out
            .swap_dims(1, 2)
            .reshape([batch, seq, self.n_heads * self.head_dim]);
        self.o.forward(out)
    }
}

/// The SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[hidden, ffn]`.
    pub gate: Linear,
    /// `[hidden, ffn]`.
    pub up: Linear,
    /// `[ffn, hidden]`.
    pub down: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [gate, up] = project_shared([&self.gate, &self.up], x);
        let gated = if on_cpu(&gate.device()) {
            fused_swiglu(gate, up)
        } else {
            silu(gate) * up
        };
        self.down.forward(gated)
    }
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention (`attn_norm`).
    pub attn_norm: RmsNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm before the MLP (`ffn_norm`).
    pub ffn_norm: RmsNorm,
    /// The MLP.
    pub mlp: Mlp,
}

/// The seven projections of a block that LoRA adapts, by their GGUF tensor names (without
/// `blk.N.` and `.weight`), in a fixed order.
pub const ADAPTED_PROJECTIONS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

impl Block {
    /// The projections named in [`ADAPTED_PROJECTIONS`], in that order.
    pub fn projections(&self) -> [(&'static str, &Linear); 7] {
        let n = ADAPTED_PROJECTIONS;
        [
            (n[0], &self.attn.q),
            (n[1], &self.attn.k),
            (n[2], &self.attn.v),
            (n[3], &self.attn.o),
            (n[4], &self.mlp.gate),
            (n[5], &self.mlp.up),
            (n[6], &self.mlp.down),
        ]
    }

    /// The projections named in [`ADAPTED_PROJECTIONS`], in that order, mutably.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        self.parts_mut().1
    }

    /// The two norms (`attn_norm`, `ffn_norm`) and the projections, mutably at once.
    pub fn parts_mut(&mut self) -> ([&mut RmsNorm; 2], [(&'static str, &mut Linear); 7]) {
        let Block {
            attn_norm,
            attn,
            ffn_norm,
            mlp,
        } = self;
        let n = ADAPTED_PROJECTIONS;
        (
            [attn_norm, ffn_norm],
            [
                (n[0], &mut attn.q),
                (n[1], &mut attn.k),
                (n[2], &mut attn.v),
                (n[3], &mut attn.o),
                (n[4], &mut mlp.gate),
                (n[5], &mut mlp.up),
                (n[6], &mut mlp.down),
            ],
        )
    }

    fn forward(&self, x: Tensor<3>, positions: &Positions) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.attn_norm.forward(x), positions);
        x.clone() + self.mlp.forward(self.ffn_norm.forward(x))
    }
}

/// The whole decoder.
#[derive(Module, Debug)]
pub struct Student {
    /// Token embedding, `[vocab, hidden]` (one row per token).
    pub embed: Param<Tensor<2>>,
    /// The decoder blocks, in order.
    pub blocks: Vec<Block>,
    /// Final norm (`output_norm`).
    pub norm: RmsNorm,
    /// Untied output head `[hidden, vocab]`; `None`: the logits are `h·embedᵀ`.
    pub output: Option<Linear>,
    /// The shape and constants.
    #[module(skip)]
    pub config: StudentConfig,
    /// How attention is computed (the same function either way).
    #[module(skip)]
    pub attention: AttentionKernel,
}

impl Student {
    /// Turns adapter dropout on (training) or off (evaluation, inference).
    pub fn set_training(&mut self, training: bool) {
        for block in &mut self.blocks {
            for (_, layer) in block.projections_mut() {
                if let Some(adapter) = &mut layer.adapter {
                    adapter.training = training;
                }
            }
        }
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.embed.val().device()
    }

    /// Final hidden states (after the last norm), `[batch, seq, hidden]`, of a batch of token
    /// sequences `[batch, seq]` of one length.
    pub fn hidden(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [_, seq] = tokens.dims();
        let positions = Positions::new(&self.config, self.attention, seq, &tokens.device());
        let mut x = embedding(self.embed.val(), tokens);
        for block in &self.blocks {
            x = block.forward(x, &positions);
        }
        self.norm.forward(x)
    }

    /// Logits `[batch, seq, vocab]` of hidden states from [`Student::hidden`] (a training
    /// loop may pass only the positions its loss needs).
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [batch, seq, width] = hidden.dims();
        let rows = hidden.reshape([batch * seq, width]);
        let logits = match &self.output {
            Some(output) => output.forward(rows),
            None => rows.matmul(self.embed.val().transpose()),
        };
        logits.reshape([batch, seq, self.config.vocab_size])
    }

    /// Logits `[batch, seq, vocab]` after every position of `tokens` `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.hidden(tokens))
    }

    /// The logits after each token of one sequence, one row of `vocab_size` per position.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() {
            return Err(StudentError::InvalidInput("no tokens".into()));
        }
        let out = self.forward(self.token_tensor(&[tokens])?);
        let flat = tensor_to_vec(out)?;
        Ok(flat
            .chunks(self.config.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// A `[batch, seq]` token tensor on the model's device; every sequence must have the same
    /// length and every token must be in the vocabulary.
    pub fn token_tensor(&self, batch: &[&[u32]]) -> Result<Tensor<2, Int>> {
        let seq = batch.first().map_or(0, |s| s.len());
        if seq == 0 || batch.iter().any(|s| s.len() != seq) {
            return Err(StudentError::InvalidInput(
                "a batch needs sequences of one, non-zero length".into(),
            ));
        }
        let mut ids = Vec::with_capacity(batch.len() * seq);
        for &t in batch.iter().flat_map(|s| s.iter()) {
            if t as usize >= self.config.vocab_size {
                return Err(StudentError::InvalidInput(format!(
                    "token {t} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            ids.push(i64::from(t));
        }
        Ok(Tensor::from_data(
            TensorData::new(ids, [batch.len(), seq]),
            &self.device(),
        ))
    }
}

/// The largest absolute difference between two tensors of one shape (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let (a, b) = (tensor_to_vec(a).unwrap(), tensor_to_vec(b).unwrap());
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Reads a float tensor back as `f32`s, in row-major order.
pub fn tensor_to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| StudentError::InvalidInput(format!("reading a tensor back: {e:?}")))
}

/// What every layer of one forward pass shares about its positions: the rotations and the
/// attention kernel (with the blocked kernel's causal masks).
struct Positions {
    rope: Rope,
    causal: Causal,
}

/// The attention of one forward pass, with what it needs built once for all layers.
enum Causal {
    Fused,
    Blocked(CausalBlocks),
    Burn,
}

impl Positions {
    fn new(config: &StudentConfig, kernel: AttentionKernel, seq: usize, device: &Device) -> Self {
        // The fused kernel is a CPU (`flex`) operation; other devices use the blocked one.
        let causal = match kernel {
            AttentionKernel::Fused if on_cpu(device) => Causal::Fused,
            AttentionKernel::Fused | AttentionKernel::Blocked => {
                Causal::Blocked(CausalBlocks::new(
                    seq,
                    config.n_heads / config.n_kv_heads,
                    ATTENTION_BLOCK,
                    device,
                ))
            }
            AttentionKernel::Burn => Causal::Burn,
        };
        Self {
            rope: Rope::new(config, seq, device),
            causal,
        }
    }
}

/// The cosines and sines of one forward pass's positions, `[1, 1, seq, head_dim / 2]`.
struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
    style: RopeStyle,
}

impl Rope {
    /// Angles `pos · theta^(-2i / head_dim)` for `pos < seq`, computed in f64 and rounded
    /// once (llama.cpp accumulates them in f32; the two agree to ~1e-6 relative).
    fn new(config: &StudentConfig, seq: usize, device: &Device) -> Self {
        let half = config.head_dim / 2;
        let theta = f64::from(config.rope_theta);
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for pos in 0..seq {
            for i in 0..half {
                let angle = pos as f64 * theta.powf(-2.0 * i as f64 / config.head_dim as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [seq, half]), device).unsqueeze::<4>()
        };
        Self {
            cos: table(cos),
            sin: table(sin),
            style: config.rope,
        }
    }

    /// Rotates `[batch, heads, seq, head_dim]`.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, heads, seq, dim] = x.dims();
        let half = dim / 2;
        match self.style {
            RopeStyle::Halves => {
                let first = x.clone().narrow(3, 0, half);
                let second = x.narrow(3, half, half);
                let a = first.clone() * self.cos.clone() - second.clone() * self.sin.clone();
                let b = second * self.cos.clone() + first * self.sin.clone();
                Tensor::cat(vec![a, b], 3)
            }
            RopeStyle::Interleaved => {
                let pairs = x.reshape([batch, heads, seq, half, 2]);
                let even = pairs.clone().narrow(4, 0, 1);
                let odd = pairs.narrow(4, 1, 1);
                let cos = self.cos.clone().unsqueeze_dim::<5>(4);
                let sin = self.sin.clone().unsqueeze_dim::<5>(4);
                let a = even.clone() * cos.clone() - odd.clone() * sin.clone();
                let b = odd * cos + even * sin;
                Tensor::cat(vec![a, b], 4).reshape([batch, heads, seq, dim])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    #[test]
    fn an_adapter_adds_its_low_rank_product_beside_the_frozen_weight() {
        let w = tensor((0..12).map(|x| x as f32 * 0.1 - 0.5).collect(), [3, 4]);
        let x = tensor(vec![1.0, -2.0, 0.5, 0.0, 1.0, 3.0], [2, 3]);
        let a = tensor(vec![0.3, -0.1, 0.2, 0.4, -0.5, 0.6], [3, 2]);
        let b = tensor((0..8).map(|x| x as f32 * 0.05).collect(), [2, 4]);
        let mut layer = Linear::new(w.clone(), None);
        let base = layer.forward(x.clone());
        layer.adapter = Some(LowRank::new(a.clone(), b.zeros_like(), 0.5));
        assert_eq!(max_abs_diff(layer.forward(x.clone()), base), 0.0);
        layer.adapter = Some(LowRank::new(a.clone(), b.clone(), 0.5));
        let merged = Linear::new(w + a.matmul(b).mul_scalar(0.5), None);
        assert!(max_abs_diff(layer.forward(x.clone()), merged.forward(x)) < 1e-5);
    }

    #[test]
    fn projections_of_one_input_share_one_dropout_draw() {
        let w = tensor((0..12).map(|x| x as f32 * 0.1 - 0.5).collect(), [3, 4]);
        let x = tensor((0..24).map(|x| x as f32 * 0.3 - 2.0).collect(), [8, 3]);
        let a = tensor(vec![0.3, -0.1, 0.2, 0.4, -0.5, 0.6], [3, 2]);
        let b = tensor((0..8).map(|x| x as f32 * 0.05 + 0.1).collect(), [2, 4]);
        let layer = || {
            let mut l = Linear::new(w.clone(), None);
            let mut adapter = LowRank::new(a.clone(), b.clone(), 0.5);
            adapter.dropout = 0.5;
            adapter.training = true;
            l.adapter = Some(adapter);
            l
        };
        let (first, second) = (layer(), layer());
        // Equal layers fed one draw give equal outputs...
        let [p, q] = project_shared([&first, &second], x.clone());
        assert_eq!(max_abs_diff(p, q), 0.0);
        // ...where separate draws (each layer's own forward) differ.
        assert!(max_abs_diff(first.forward(x.clone()), second.forward(x.clone())) > 1e-3);
        // Without training, the shared path is the plain one.
        let mut plain = layer();
        plain.adapter.as_mut().unwrap().training = false;
        let [shared] = project_shared([&plain], x.clone());
        assert_eq!(max_abs_diff(shared, plain.forward(x)), 0.0);
    }

    #[test]
    fn dropout_masks_drop_about_p_and_follow_the_device_seed() {
        let device = Device::flex();
        let mask = |seed: u64, p: f64| {
            device.seed(seed);
            dropout_mask::<2>(Shape::new([300, 501]), p, &device)
                .into_data()
                .iter::<bool>()
                .collect::<Vec<_>>()
        };
        let (a, b, c) = (mask(7, 0.05), mask(7, 0.05), mask(8, 0.05));
        assert_eq!(a.len(), 300 * 501);
        assert_eq!(a, b, "one seed, one mask");
        assert_ne!(a, c, "another seed, another mask");
        let dropped = a.iter().filter(|&&d| d).count() as f64 / a.len() as f64;
        // 150,300 draws: the standard deviation of the fraction is ~0.0006.
        assert!((dropped - 0.05).abs() < 0.003, "dropped {dropped}");
        let half = mask(9, 0.5);
        let dropped = half.iter().filter(|&&d| d).count() as f64 / half.len() as f64;
        assert!((dropped - 0.5).abs() < 0.006, "dropped {dropped}");
        assert!(mask(10, 0.0).iter().all(|&d| !d));
    }

    #[test]
    fn the_two_rope_pairings_are_one_rotation_of_permuted_dimensions() {
        let head_dim = 8;
        let config = StudentConfig {
            arch: Arch::Llama,
            vocab_size: 1,
            hidden_size: head_dim,
            n_layers: 1,
            n_heads: 1,
            n_kv_heads: 1,
            head_dim,
            ffn_size: 1,
            rope_theta: 100.0,
            rms_eps: 1e-5,
            context_length: 16,
            tied_embeddings: true,
            qkv_bias: false,
            rope: RopeStyle::Interleaved,
        };
        let seq = 5;
        let values: Vec<f32> = (0..seq * head_dim)
            .map(|v| (v as f32 * 0.37).sin())
            .collect();
        let adjacent = Rope::new(&config, seq, &Device::flex());
        let halves = Rope::new(
            &StudentConfig {
                rope: RopeStyle::Halves,
                ..config.clone()
            },
            seq,
            &Device::flex(),
        );
        // Dimension 2i + j of the adjacent layout is dimension j·4 + i of the halves layout.
        let to_halves = |v: &[f32]| crate::gguf::halves_from_adjacent(v, seq, head_dim, 1);
        let out_adjacent =
            tensor_to_vec(adjacent.apply(tensor(values.clone(), [1, 1, seq, head_dim]))).unwrap();
        let out_halves =
            tensor_to_vec(halves.apply(tensor(to_halves(&values), [1, 1, seq, head_dim]))).unwrap();
        let diff = to_halves(&out_adjacent)
            .iter()
            .zip(&out_halves)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{diff}");
        // Position 0 is not rotated; later ones are.
        assert_eq!(&out_halves[..head_dim], &to_halves(&values)[..head_dim]);
        assert!((out_halves[head_dim] - to_halves(&values)[head_dim]).abs() > 1e-3);
    }
}
