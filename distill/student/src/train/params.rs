//! The trainable parameters of a run, by name: the LoRA factors of every adapted projection,
//! or every weight of the model. Names are GGUF tensor names (`blk.3.attn_q.lora_a`,
//! `blk.3.attn_q.weight`, `token_embd.weight`), values in the student's layout (see
//! [`crate::gguf`]): checkpoints store them as they are.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};

use super::config::{LoraConfig, Mode};
use super::data::{SplitMix64, STREAM_INIT};
use crate::model::{Linear, LowRank, Student};

/// A mutable reference to one trainable parameter of either rank.
pub(crate) enum Slot<'a> {
    /// Norm scales and biases.
    Vector(&'a mut Param<Tensor<1>>),
    /// Matrices.
    Matrix(&'a mut Param<Tensor<2>>),
}

impl Slot<'_> {
    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            Slot::Vector(p) => p.shape().dims::<1>().to_vec(),
            Slot::Matrix(p) => p.shape().dims::<2>().to_vec(),
        }
    }
}

/// Puts a fresh LoRA adapter on every projection of every block: `A` uniform in
/// `±1/√d_input` (PEFT's Kaiming-uniform bound with `a = √5`), `B` zero, so the adapted model
/// starts as the base. Seeded: the same seed gives the same adapters. Then freezes the base
/// (only the adapters require gradients) — call before [`Module::train`].
pub fn attach_fresh_lora(model: Student, lora: &LoraConfig, seed: u64) -> Student {
    let device = model.device();
    let mut model = model.no_grad();
    let mut rng = SplitMix64::new(seed, STREAM_INIT);
    for block in &mut model.blocks {
        for (_, layer) in block.projections_mut() {
            let (d_in, d_out) = (layer.d_input(), layer.d_output());
            let bound = 1.0 / (d_in as f32).sqrt();
            let a: Vec<f32> = (0..d_in * lora.rank)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect();
            let a = Tensor::<2>::from_data(TensorData::new(a, [d_in, lora.rank]), &device);
            let b = Tensor::<2>::zeros([lora.rank, d_out], &device);
            set_adapter(layer, a, b, lora);
        }
    }
    model
}

/// Puts an adapter with the given factors on `layer`.
pub(crate) fn set_adapter(layer: &mut Linear, a: Tensor<2>, b: Tensor<2>, lora: &LoraConfig) {
    let mut adapter = LowRank::new(a, b, lora.scale());
    adapter.dropout = lora.dropout;
    layer.adapter = Some(adapter);
}

/// The trainable parameters of `model` in `mode`, in a fixed order, by name.
pub(crate) fn slots(model: &mut Student, mode: Mode) -> Vec<(String, Slot<'_>)> {
    let mut out = Vec::new();
    match mode {
        Mode::Lora => {
            for (n, block) in model.blocks.iter_mut().enumerate() {
                for (name, layer) in block.projections_mut() {
                    if let Some(adapter) = &mut layer.adapter {
                        out.push((
                            format!("blk.{n}.{name}.lora_a"),
                            Slot::Matrix(&mut adapter.a),
                        ));
                        out.push((
                            format!("blk.{n}.{name}.lora_b"),
                            Slot::Matrix(&mut adapter.b),
                        ));
                    }
                }
            }
        }
        Mode::Full => {
            out.push((
                "token_embd.weight".to_owned(),
                Slot::Matrix(&mut model.embed),
            ));
            for (n, block) in model.blocks.iter_mut().enumerate() {
                let ([attn_norm, ffn_norm], projections) = block.parts_mut();
                out.push((
                    format!("blk.{n}.attn_norm.weight"),
                    Slot::Vector(&mut attn_norm.weight),
                ));
                out.push((
                    format!("blk.{n}.ffn_norm.weight"),
                    Slot::Vector(&mut ffn_norm.weight),
                ));
                for (name, layer) in projections {
                    out.push((
                        format!("blk.{n}.{name}.weight"),
                        Slot::Matrix(&mut layer.weight),
                    ));
                    if let Some(bias) = &mut layer.bias {
                        out.push((format!("blk.{n}.{name}.bias"), Slot::Vector(bias)));
                    }
                }
            }
            out.push((
                "output_norm.weight".to_owned(),
                Slot::Vector(&mut model.norm.weight),
            ));
            if let Some(output) = &mut model.output {
                out.push(("output.weight".to_owned(), Slot::Matrix(&mut output.weight)));
            }
        }
    }
    out
}

/// Number of trainable values in `model` for `mode`.
pub fn trainable_count(model: &mut Student, mode: Mode) -> usize {
    slots(model, mode)
        .iter()
        .map(|(_, s)| s.shape().iter().product::<usize>())
        .sum()
}
