//! Training checkpoints on disk: a LoRA adapter ([`LoraAdapter`], `adapter.safetensors`) and
//! full weights ([`StudentWeights`], `weights.safetensors`), both in the student's own layout.
//!
//! # The adapter
//!
//! One [`LoraPair`] per adapted projection, keyed by the GGUF tensor's base name without
//! `.weight` (`blk.3.attn_q`, `blk.3.ffn_down`; [`ADAPTED_PROJECTIONS`] lists the projections).
//! `a` is `[d_input, rank]` and `b` `[rank, d_output]`, row-major, and the layer computes
//! `x·W + (alpha/rank)·(x·A)·B` with `W: [d_input, d_output]` (the transpose of GGUF's
//! rows): exactly [`crate::model::LowRank`]. The output dimension of `attn_q` / `attn_k` is
//! in Hugging Face's order (llama.cpp's q/k rows un-permuted, see [`crate::gguf`]), which is
//! PEFT's order too; a student loaded with [`crate::QkLayout::Gguf`] is converted on the way
//! in and out.
//!
//! File: safetensors, tensors `NAME.lora_a` `[d_input, rank]` and `NAME.lora_b`
//! `[rank, d_output]` in F32; metadata `rank` and `alpha` (required), `format` =
//! [`ADAPTER_FORMAT`], `version`, `qk_layout` = `hugging-face` (checked where present, so
//! the trainer's files, which carry `rank`, `alpha` and `step`, read as well). Written to a temporary file and renamed, so a
//! crash never leaves half a checkpoint under the final name; a damaged file reads as
//! [`StudentError::CorruptCheckpoint`].
//!
//! # Full weights
//!
//! Every tensor of the student under its GGUF name (`token_embd.weight`,
//! `blk.N.attn_q.weight`, `.bias`, norms, `output.weight` when untied), in the student's
//! layout: projections `[d_input, d_output]`, q/k outputs in Hugging Face's order.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::{Arch, RopeStyle, StudentConfig};
use crate::error::{Result, StudentError};
use crate::gguf::{adjacent_from_halves, halves_from_adjacent};
use crate::model::{tensor_to_vec, Linear, LowRank, Student, ADAPTED_PROJECTIONS};
use crate::train::data::SplitMix64;

/// `format` metadata of an adapter file.
pub const ADAPTER_FORMAT: &str = "small-agent-lora";
/// `format` metadata of a full-weights file.
pub const WEIGHTS_FORMAT: &str = "small-agent-weights";
/// Version of both layouts.
pub const CHECKPOINT_VERSION: u32 = 1;
/// `qk_layout` metadata: q/k output rows in Hugging Face's order.
const QK_HF: &str = "hugging-face";

/// The two factors of one adapted projection.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// `A`, `[d_input, rank]` row-major.
    pub a: Vec<f32>,
    /// `B`, `[rank, d_output]` row-major.
    pub b: Vec<f32>,
    /// Input width of the projection.
    pub d_input: usize,
    /// Output width of the projection.
    pub d_output: usize,
}

impl LoraPair {
    /// The rank implied by `a`'s length.
    pub fn rank(&self) -> usize {
        self.a.len().checked_div(self.d_input).unwrap_or(0)
    }

    /// `scale·(A·B)ᵀ`: the change of the projection's rows, `[d_output, d_input]` row-major
    /// (GGUF's and PyTorch's orientation).
    pub fn delta_rows(&self, scale: f32) -> Vec<f32> {
        let r = self.rank();
        let mut out = vec![0.0f32; self.d_output * self.d_input];
        // out[o][i] = Σ_k A[i][k]·B[k][o]; accumulated in f64 so that the merge adds the
        // product as exactly as f32 can hold it.
        let mut acc = vec![0.0f64; self.d_input];
        for o in 0..self.d_output {
            acc.iter_mut().for_each(|x| *x = 0.0);
            for k in 0..r {
                let bko = f64::from(self.b[k * self.d_output + o]);
                if bko == 0.0 {
                    continue;
                }
                for (i, x) in acc.iter_mut().enumerate() {
                    *x += f64::from(self.a[i * r + k]) * bko;
                }
            }
            let row = &mut out[o * self.d_input..(o + 1) * self.d_input];
            for (dst, x) in row.iter_mut().zip(&acc) {
                *dst = (*x * f64::from(scale)) as f32;
            }
        }
        out
    }
}

/// A LoRA adapter of the student: every adapted projection's factors, one rank and alpha.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// Rank of every pair.
    pub rank: usize,
    /// LoRA's alpha: the product is scaled by `alpha / rank`.
    pub alpha: f32,
    /// The pairs by projection name (`blk.3.attn_q`).
    pub layers: BTreeMap<String, LoraPair>,
}

impl LoraAdapter {
    /// `alpha / rank`, the factor in front of every product.
    pub fn scale(&self) -> f32 {
        if self.rank == 0 {
            0.0
        } else {
            self.alpha / self.rank as f32
        }
    }

    /// Checks names, ranks and lengths; the reason is a sentence.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.rank == 0 {
            return Err("rank 0".into());
        }
        if !self.alpha.is_finite() {
            return Err(format!("alpha {} is not finite", self.alpha));
        }
        for (name, p) in &self.layers {
            if parse_target(name).is_none() {
                return Err(format!(
                    "{name} is not blk.N.<{}>",
                    ADAPTED_PROJECTIONS.join("|")
                ));
            }
            if p.d_input == 0 || p.d_output == 0 {
                return Err(format!("{name}: a zero width"));
            }
            if p.a.len() != p.d_input * self.rank || p.b.len() != self.rank * p.d_output {
                return Err(format!(
                    "{name}: A has {} values and B {}, [{}, {r}] and [{r}, {}] need {} and {}",
                    p.a.len(),
                    p.b.len(),
                    p.d_input,
                    p.d_output,
                    p.d_input * self.rank,
                    self.rank * p.d_output,
                    r = self.rank
                ));
            }
            if p.a.iter().chain(&p.b).any(|x| !x.is_finite()) {
                return Err(format!("{name}: a value is not finite"));
            }
        }
        Ok(())
    }

    /// A random adapter of `rank` on every [`ADAPTED_PROJECTIONS`] projection of a model of
    /// `config`: normal draws of standard deviation `std` in both factors (unlike LoRA's
    /// initialisation, `B` is not zero, so the adapter changes the model). For tests and
    /// benchmarks; the seed fixes it on every machine.
    pub fn random(config: &StudentConfig, rank: usize, alpha: f32, std: f32, seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        let mut layers = BTreeMap::new();
        for n in 0..config.n_layers {
            for target in ADAPTED_PROJECTIONS {
                let (d_input, d_output) = target_shape(config, target);
                layers.insert(
                    format!("blk.{n}.{target}"),
                    LoraPair {
                        a: normal(&mut rng, d_input * rank, std),
                        b: normal(&mut rng, rank * d_output, std),
                        d_input,
                        d_output,
                    },
                );
            }
        }
        Self {
            rank,
            alpha,
            layers,
        }
    }

    /// Writes the adapter as safetensors (see the module docs), through a temporary file.
    pub fn write_safetensors(&self, path: &Path) -> Result<()> {
        self.check().map_err(StudentError::InvalidInput)?;
        let mut tensors = Vec::with_capacity(2 * self.layers.len());
        for (name, p) in &self.layers {
            tensors.push((format!("{name}.lora_a"), vec![p.d_input, self.rank], &p.a));
            tensors.push((format!("{name}.lora_b"), vec![self.rank, p.d_output], &p.b));
        }
        let metadata = HashMap::from([
            ("format".to_owned(), ADAPTER_FORMAT.to_owned()),
            ("version".to_owned(), CHECKPOINT_VERSION.to_string()),
            ("rank".to_owned(), self.rank.to_string()),
            ("alpha".to_owned(), self.alpha.to_string()),
            ("qk_layout".to_owned(), QK_HF.to_owned()),
        ]);
        write_f32_safetensors(path, &tensors, metadata)
    }

    /// Reads an adapter written by [`LoraAdapter::write_safetensors`]; anything else, or a
    /// damaged file, is [`StudentError::CorruptCheckpoint`].
    pub fn read_safetensors(path: &Path) -> Result<Self> {
        let bytes = read_file(path)?;
        let bad = |reason: String| corrupt(path, reason);
        let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = file_metadata(&bytes, path)?;
        expect_format(&meta, ADAPTER_FORMAT, path)?;
        let rank: usize = meta_value(&meta, "rank", path)?;
        let alpha: f32 = meta_value(&meta, "alpha", path)?;
        let mut halves: BTreeMap<String, (Option<F32Tensor>, Option<F32Tensor>)> = BTreeMap::new();
        for (name, view) in file.tensors() {
            let (base, is_a) = if let Some(base) = name.strip_suffix(".lora_a") {
                (base, true)
            } else if let Some(base) = name.strip_suffix(".lora_b") {
                (base, false)
            } else {
                return Err(bad(format!("tensor {name} is neither .lora_a nor .lora_b")));
            };
            let t = f32_tensor(&name, &view, 2, path)?;
            let slot = halves.entry(base.to_owned()).or_default();
            if is_a {
                slot.0 = Some(t);
            } else {
                slot.1 = Some(t);
            }
        }
        let mut layers = BTreeMap::new();
        for (name, pair) in halves {
            let (Some(a), Some(b)) = pair else {
                return Err(bad(format!("{name} lacks one of its two factors")));
            };
            if a.shape[1] != rank || b.shape[0] != rank {
                return Err(bad(format!(
                    "{name}: factors {:?} and {:?} for rank {rank}",
                    a.shape, b.shape
                )));
            }
            layers.insert(
                name,
                LoraPair {
                    d_input: a.shape[0],
                    d_output: b.shape[1],
                    a: a.values,
                    b: b.values,
                },
            );
        }
        let adapter = Self {
            rank,
            alpha,
            layers,
        };
        adapter.check().map_err(bad)?;
        Ok(adapter)
    }

    /// The adapters on a model's projections, `None` when it carries none. Where the
    /// adapters' scales differ, each is folded into its `B` and alpha is the rank (scale 1).
    pub fn from_student(student: &Student) -> Option<Self> {
        let found: Vec<(String, &LowRank)> = target_linears(student)
            .into_iter()
            .filter_map(|(name, linear)| linear.adapter.as_ref().map(|a| (name, a)))
            .collect();
        let rank = found.first()?.1.a.shape().dims::<2>()[1];
        let uniform = found.iter().all(|(_, a)| a.scale == found[0].1.scale);
        let scale = if uniform { found[0].1.scale } else { 1.0 };
        let gguf_rows = has_gguf_qk_rows(&student.config);
        let mut layers = BTreeMap::new();
        for (name, low) in found {
            let [d_input, r] = low.a.shape().dims::<2>();
            let [_, d_output] = low.b.shape().dims::<2>();
            let a = tensor_to_vec(low.a.val()).ok()?;
            let mut b = tensor_to_vec(low.b.val()).ok()?;
            if !uniform {
                b.iter_mut().for_each(|x| *x *= low.scale);
            }
            if gguf_rows {
                if let Some(heads) = qk_heads(&student.config, &name) {
                    b = permute_columns(&b, r, heads, student.config.head_dim, true);
                }
            }
            layers.insert(
                name,
                LoraPair {
                    a,
                    b,
                    d_input,
                    d_output,
                },
            );
        }
        Some(Self {
            rank,
            alpha: scale * rank as f32,
            layers,
        })
    }

    /// Puts the adapter on the matching projections of `student` as [`LowRank`]s on
    /// `device` (replacing adapters there; projections it does not name are left alone).
    /// Every name must exist and every shape match.
    pub fn attach(&self, student: &mut Student, device: &Device) -> Result<()> {
        self.check().map_err(StudentError::InvalidInput)?;
        let config = student.config.clone();
        let gguf_rows = has_gguf_qk_rows(&config);
        // All checked before any is attached: a refused adapter leaves the model as it was.
        for (name, p) in &self.layers {
            let linear = target_linear(student, name).ok_or_else(|| {
                StudentError::InvalidInput(format!(
                    "the adapter's {name} has no projection in this {}-block model",
                    config.n_layers
                ))
            })?;
            if (linear.d_input(), linear.d_output()) != (p.d_input, p.d_output) {
                return Err(StudentError::InvalidInput(format!(
                    "the adapter's {name} is [{}, {}], the model's projection [{}, {}]: \
                     an adapter of another base model?",
                    p.d_input,
                    p.d_output,
                    linear.d_input(),
                    linear.d_output()
                )));
            }
        }
        let scale = self.scale();
        for (name, p) in &self.layers {
            let b = match qk_heads(&config, name) {
                Some(heads) if gguf_rows => {
                    permute_columns(&p.b, self.rank, heads, config.head_dim, false)
                }
                _ => p.b.clone(),
            };
            let a = Tensor::from_data(TensorData::new(p.a.clone(), [p.d_input, self.rank]), device);
            let b = Tensor::from_data(TensorData::new(b, [self.rank, p.d_output]), device);
            let linear = target_linear_mut(student, name).expect("checked above");
            linear.adapter = Some(LowRank::new(a, b, scale));
        }
        Ok(())
    }
}

/// Full weights of a student (see the module docs), by GGUF name.
#[derive(Debug, Clone, PartialEq)]
pub struct StudentWeights {
    /// Tensors: shape (slowest dimension first) and row-major values.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Writes every tensor of `student` (adapters excluded: see [`LoraAdapter::from_student`])
/// to a safetensors file, through a temporary file.
pub fn write_student_weights(student: &Student, path: &Path) -> Result<()> {
    let weights = StudentWeights::of(student)?;
    let tensors: Vec<(String, Vec<usize>, &Vec<f32>)> = weights
        .tensors
        .iter()
        .map(|(name, (shape, values))| (name.clone(), shape.clone(), values))
        .collect();
    let metadata = HashMap::from([
        ("format".to_owned(), WEIGHTS_FORMAT.to_owned()),
        ("version".to_owned(), CHECKPOINT_VERSION.to_string()),
        (
            "arch".to_owned(),
            student.config.arch.gguf_name().to_owned(),
        ),
        ("qk_layout".to_owned(), QK_HF.to_owned()),
    ]);
    write_f32_safetensors(path, &tensors, metadata)
}

/// Reads a file of [`write_student_weights`]; anything else, or a damaged file, is
/// [`StudentError::CorruptCheckpoint`].
pub fn read_student_weights(path: &Path) -> Result<StudentWeights> {
    let bytes = read_file(path)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e.to_string()))?;
    let meta = file_metadata(&bytes, path)?;
    expect_format(&meta, WEIGHTS_FORMAT, path)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let t = f32_tensor(&name, &view, view.shape().len(), path)?;
        tensors.insert(name, (t.shape, t.values));
    }
    Ok(StudentWeights { tensors })
}

impl StudentWeights {
    /// The weights of `student`, in its layout (q/k outputs in Hugging Face's order).
    pub fn of(student: &Student) -> Result<Self> {
        let c = &student.config;
        let hf = |name: &str, t: Vec<f32>, inp: usize| -> Vec<f32> {
            // `t` is [inp, out]; the q/k outputs are its columns.
            match qk_heads(c, name) {
                Some(heads) if has_gguf_qk_rows(c) => {
                    permute_columns(&t, inp, heads, c.head_dim, true)
                }
                _ => t,
            }
        };
        let mut tensors = BTreeMap::new();
        let mut put = |name: String, shape: Vec<usize>, values: Vec<f32>| {
            tensors.insert(name, (shape, values));
        };
        put(
            "token_embd.weight".into(),
            vec![c.vocab_size, c.hidden_size],
            tensor_to_vec(student.embed.val())?,
        );
        for (name, linear) in target_linears(student) {
            let (inp, out) = (linear.d_input(), linear.d_output());
            let w = hf(&name, tensor_to_vec(linear.weight.val())?, inp);
            put(format!("{name}.weight"), vec![inp, out], w);
            if let Some(bias) = &linear.bias {
                let b = hf(&name, tensor_to_vec(bias.val())?, 1);
                put(format!("{name}.bias"), vec![out], b);
            }
        }
        for (n, block) in student.blocks.iter().enumerate() {
            put(
                format!("blk.{n}.attn_norm.weight"),
                vec![c.hidden_size],
                tensor_to_vec(block.attn_norm.weight.val())?,
            );
            put(
                format!("blk.{n}.ffn_norm.weight"),
                vec![c.hidden_size],
                tensor_to_vec(block.ffn_norm.weight.val())?,
            );
        }
        put(
            "output_norm.weight".into(),
            vec![c.hidden_size],
            tensor_to_vec(student.norm.weight.val())?,
        );
        if let Some(output) = &student.output {
            put(
                "output.weight".into(),
                vec![c.hidden_size, c.vocab_size],
                tensor_to_vec(output.weight.val())?,
            );
        }
        Ok(Self { tensors })
    }

    /// Replaces `student`'s weights by these (parameter ids kept, so an optimizer's state
    /// still matches). Every tensor of the model must be present with its shape.
    pub fn apply(&self, student: &mut Student, device: &Device) -> Result<()> {
        let expected = Self::of(student)?;
        for (name, (shape, _)) in &expected.tensors {
            match self.tensors.get(name) {
                None => {
                    return Err(StudentError::InvalidInput(format!(
                        "the weights lack {name}"
                    )))
                }
                Some((found, _)) if found != shape => {
                    return Err(StudentError::InvalidInput(format!(
                        "{name} is {found:?} in the weights, {shape:?} in the model"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|k| !expected.tensors.contains_key(*k))
        {
            return Err(StudentError::InvalidInput(format!(
                "the weights hold {extra}, which this model has no place for"
            )));
        }
        let config = student.config.clone();
        let values = |name: &str, inp: usize| -> Vec<f32> {
            let v = self.tensors[name].1.clone();
            let base = name.rsplit_once('.').map_or(name, |(b, _)| b);
            match qk_heads(&config, base) {
                Some(heads) if has_gguf_qk_rows(&config) => {
                    permute_columns(&v, inp, heads, config.head_dim, false)
                }
                _ => v,
            }
        };
        set2(&mut student.embed, values("token_embd.weight", 0), device);
        let names: Vec<String> = target_linears(student)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for name in names {
            let linear = target_linear_mut(student, &name).expect("listed above");
            let inp = linear.d_input();
            set2(
                &mut linear.weight,
                values(&format!("{name}.weight"), inp),
                device,
            );
            if let Some(bias) = &mut linear.bias {
                set1(bias, values(&format!("{name}.bias"), 1), device);
            }
        }
        for (n, block) in student.blocks.iter_mut().enumerate() {
            set1(
                &mut block.attn_norm.weight,
                values(&format!("blk.{n}.attn_norm.weight"), 0),
                device,
            );
            set1(
                &mut block.ffn_norm.weight,
                values(&format!("blk.{n}.ffn_norm.weight"), 0),
                device,
            );
        }
        set1(
            &mut student.norm.weight,
            values("output_norm.weight", 0),
            device,
        );
        if let Some(output) = &mut student.output {
            set2(&mut output.weight, values("output.weight", 0), device);
        }
        Ok(())
    }
}

fn set2(param: &mut Param<Tensor<2>>, values: Vec<f32>, device: &Device) {
    let shape = param.shape().dims::<2>();
    let t = Tensor::from_data(TensorData::new(values, shape), device);
    *param = param.clone().map(|_| t);
}

fn set1(param: &mut Param<Tensor<1>>, values: Vec<f32>, device: &Device) {
    let shape = param.shape().dims::<1>();
    let t = Tensor::from_data(TensorData::new(values, shape), device);
    *param = param.clone().map(|_| t);
}

/// `(block, target)` of a name like `blk.3.attn_q`.
pub fn parse_target(name: &str) -> Option<(usize, &str)> {
    let (n, target) = name.strip_prefix("blk.")?.split_once('.')?;
    let n = n.parse().ok()?;
    ADAPTED_PROJECTIONS.contains(&target).then_some((n, target))
}

/// `[d_input, d_output]` of a target projection in a model of `config`.
pub fn target_shape(config: &StudentConfig, target: &str) -> (usize, usize) {
    let (h, q, kv, f) = (
        config.hidden_size,
        config.q_size(),
        config.kv_size(),
        config.ffn_size,
    );
    match target {
        "attn_q" => (h, q),
        "attn_k" | "attn_v" => (h, kv),
        "attn_output" => (q, h),
        "ffn_gate" | "ffn_up" => (h, f),
        _ => (f, h),
    }
}

/// Every target projection of `student` by name, block by block.
pub fn target_linears(student: &Student) -> Vec<(String, &Linear)> {
    let mut out = Vec::with_capacity(student.blocks.len() * ADAPTED_PROJECTIONS.len());
    for (n, block) in student.blocks.iter().enumerate() {
        for (target, linear) in block.projections() {
            out.push((format!("blk.{n}.{target}"), linear));
        }
    }
    out
}

/// The projection named `blk.N.target`.
pub fn target_linear<'s>(student: &'s Student, name: &str) -> Option<&'s Linear> {
    let (n, target) = parse_target(name)?;
    let block = student.blocks.get(n)?;
    block
        .projections()
        .into_iter()
        .find_map(|(t, linear)| (t == target).then_some(linear))
}

/// The projection named `blk.N.target`, mutably.
pub fn target_linear_mut<'s>(student: &'s mut Student, name: &str) -> Option<&'s mut Linear> {
    let (n, target) = parse_target(name)?;
    let block = student.blocks.get_mut(n)?;
    block
        .projections_mut()
        .into_iter()
        .find_map(|(t, linear)| (t == target).then_some(linear))
}

/// Whether the model's q/k outputs are in llama.cpp's stored order (a llama student loaded
/// with [`crate::QkLayout::Gguf`]): then they are not Hugging Face's.
fn has_gguf_qk_rows(config: &StudentConfig) -> bool {
    config.arch == Arch::Llama && config.rope == RopeStyle::Interleaved
}

/// The head count of a q or k projection's output (`None` for other projections).
pub fn qk_heads(config: &StudentConfig, name: &str) -> Option<usize> {
    match parse_target(name)?.1 {
        "attn_q" => Some(config.n_heads),
        "attn_k" => Some(config.n_kv_heads),
        _ => None,
    }
}

/// Moves the columns of a `[rows, heads·head_dim]` matrix between llama.cpp's q/k order and
/// Hugging Face's (`to_halves`: towards Hugging Face's).
pub fn permute_columns(
    m: &[f32],
    rows: usize,
    heads: usize,
    head_dim: usize,
    to_halves: bool,
) -> Vec<f32> {
    let cols = heads * head_dim;
    let mut out = Vec::with_capacity(m.len());
    for r in 0..rows.max(1) {
        let row = &m[r * cols..(r + 1) * cols];
        out.extend(if to_halves {
            halves_from_adjacent(row, heads, head_dim, 1)
        } else {
            adjacent_from_halves(row, heads, head_dim, 1)
        });
    }
    out
}

// --- safetensors I/O shared by both layouts.

/// A tensor as read: shape and values.
struct F32Tensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

pub(crate) fn corrupt(path: &Path, reason: String) -> StudentError {
    StudentError::CorruptCheckpoint {
        path: path.into(),
        reason,
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| StudentError::Io {
        path: path.into(),
        source,
    })
}

pub(crate) fn file_metadata(bytes: &[u8], path: &Path) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Checks the layout keys a file carries. Each is optional (the trainer's own writer puts
/// only `rank`, `alpha` and `step` there; the tensors then decide), but one that is present
/// must be ours.
fn expect_format(meta: &HashMap<String, String>, format: &str, path: &Path) -> Result<()> {
    if let Some(found) = meta.get("format") {
        if found != format {
            return Err(corrupt(
                path,
                format!("its format is {found:?}, not {format:?}"),
            ));
        }
    }
    if meta.contains_key("version") {
        let version: u32 = meta_value(meta, "version", path)?;
        if version != CHECKPOINT_VERSION {
            return Err(corrupt(
                path,
                format!("layout version {version}; this build reads {CHECKPOINT_VERSION}"),
            ));
        }
    }
    match meta.get("qk_layout").map(String::as_str) {
        None | Some(QK_HF) => Ok(()),
        Some(other) => Err(corrupt(
            path,
            format!("q/k layout {other:?}, not {QK_HF:?}"),
        )),
    }
}

fn meta_value<T: std::str::FromStr>(
    meta: &HashMap<String, String>,
    key: &str,
    path: &Path,
) -> Result<T> {
    meta.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(path, format!("metadata {key} is missing or not a number")))
}

fn f32_tensor(name: &str, view: &TensorView<'_>, dims: usize, path: &Path) -> Result<F32Tensor> {
    if view.dtype() != Dtype::F32 || view.shape().len() != dims {
        return Err(corrupt(
            path,
            format!(
                "tensor {name} is {:?} {:?}, F32 of {dims} dimensions expected",
                view.dtype(),
                view.shape()
            ),
        ));
    }
    Ok(F32Tensor {
        shape: view.shape().to_vec(),
        values: view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

/// Writes F32 tensors and string metadata as safetensors to a temporary file beside `path`,
/// synced, then renamed into place.
pub(crate) fn write_f32_safetensors<V: AsRef<[f32]>>(
    path: &Path,
    tensors: &[(String, Vec<usize>, V)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let write_err = |reason: String| StudentError::Write {
        path: path.into(),
        reason,
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.as_ref().iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| write_err(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = temp_path(path);
    let written = safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| write_err(e.to_string()))
        .and_then(|()| sync_and_rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A temporary name beside `path`, unique per process and call.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}-{call}", std::process::id()));
    path.with_file_name(name)
}

/// Syncs `tmp` and renames it to `path`: the final name holds a whole file or none.
pub(crate) fn sync_and_rename(tmp: &Path, path: &Path) -> Result<()> {
    let write_err = |e: std::io::Error| StudentError::Write {
        path: path.into(),
        reason: e.to_string(),
    };
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(write_err)?;
    std::fs::rename(tmp, path).map_err(write_err)
}

/// `n` normal draws of standard deviation `std` (Box–Muller) for [`LoraAdapter::random`].
fn normal(rng: &mut SplitMix64, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u = 1.0 - (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let v = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            (z * f64::from(std)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_rows_is_the_scaled_transposed_product() {
        // A [3, 2], B [2, 4].
        let p = LoraPair {
            a: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            b: vec![1.0, 0.0, -1.0, 2.0, 0.5, 1.0, 0.0, -2.0],
            d_input: 3,
            d_output: 4,
        };
        let d = p.delta_rows(2.0);
        for o in 0..4 {
            for i in 0..3 {
                let ab: f32 = (0..2).map(|k| p.a[i * 2 + k] * p.b[k * 4 + o]).sum();
                assert_eq!(d[o * 3 + i], 2.0 * ab, "o {o} i {i}");
            }
        }
    }

    #[test]
    fn column_permutations_are_inverse() {
        let m: Vec<f32> = (0..3 * 16).map(|x| x as f32).collect();
        let h = permute_columns(&m, 3, 2, 8, true);
        assert_ne!(h, m);
        assert_eq!(permute_columns(&h, 3, 2, 8, false), m);
    }
}
