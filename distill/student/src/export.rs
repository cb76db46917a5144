//! Exports of a trained student, for llama.cpp (the runtime's engine) and for PyTorch/PEFT.
//!
//! - [`merge`]: the base GGUF with the trained weights folded in, as a complete GGUF model:
//!   every metadata key of the base carried over (architecture, tokenizer, chat template,
//!   everything; only `general.file_type` is rewritten and `general.alignment` dropped, the
//!   writer aligning to 32), each matrix `W + (alpha/rank)·A·B` (or the full weights)
//!   converted back to GGUF's layout: rows `[out, in]` (the transpose of the student's
//!   `[in, out]`) and, for llama, q/k rows back in llama.cpp's permuted order
//!   ([`crate::gguf::adjacent_from_halves`]). F32 and F16 are written directly by
//!   candle-core's GGUF writer (GGUF v2, which llama.cpp loads; vectors stay F32, as
//!   llama.cpp's converter writes them); Q8_0, Q4_0, Q4_1 and Q4_K_M are that F16 file
//!   quantised by llama.cpp's own quantiser (`llama_model_quantize`), so the quantisation
//!   (and its per-tensor type choices) is exactly llama.cpp's.
//! - [`write_llama_adapter`]: a LoRA adapter GGUF that llama.cpp applies at load
//!   (`general.type` = `adapter`, `adapter.type` = `lora`, `adapter.lora.alpha`), tensors
//!   `blk.N.attn_q.weight.lora_a` (ggml `ne = [in, rank]`, read as rows `[rank, in]` = `Aᵀ`)
//!   and `.lora_b` (`ne = [rank, out]`, rows `[out, rank]` = `Bᵀ`, q/k rows permuted back).
//!   llama.cpp scales the product by `alpha / rank` with rank = `lora_b`'s `ne[0]`, as the
//!   student does.
//! - [`write_peft`] / [`read_peft`]: PEFT's layout (`adapter_model.safetensors` +
//!   `adapter_config.json`; tensors `base_model.model.model.layers.N.self_attn.q_proj.lora_A
//!   .weight` `[rank, in]` and `.lora_B.weight` `[out, rank]`, Hugging Face's q/k order, which
//!   is the student's: no permutation).
//!
//! A base with a fused `attn_qkv` matrix is refused where q, k or v would change (the split
//! of such files is the runtime's, never a training base).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use serde::{Deserialize, Serialize};

use crate::adapter::{self, parse_target, qk_heads, LoraAdapter, LoraPair, StudentWeights};
use crate::config::{Arch, StudentConfig};
use crate::error::{Result, StudentError};
use crate::gguf::{adjacent_from_halves, GgufFile, QkLayout};

/// The tensor type of an exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    /// Every tensor F32.
    F32,
    /// Matrices F16, vectors F32.
    F16,
    /// llama.cpp's Q8_0 (from the F16 export).
    Q8_0,
    /// llama.cpp's Q4_0.
    Q4_0,
    /// llama.cpp's Q4_1 (the runtime's default model type).
    Q4_1,
    /// llama.cpp's Q4_K_M mix.
    Q4KM,
}

impl ExportType {
    /// Every type, in the order `--help` lists them.
    pub const ALL: [ExportType; 6] = [
        Self::F16,
        Self::F32,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q4KM,
    ];

    /// The name on the command line (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q4KM => "q4_k_m",
        }
    }

    /// llama.cpp's `llama_ftype` of a quantised type; `None` for the two written directly.
    fn llama_ftype(self) -> Option<llama_cpp_sys_2::llama_ftype> {
        use llama_cpp_sys_2 as sys;
        match self {
            Self::F32 | Self::F16 => None,
            Self::Q8_0 => Some(sys::LLAMA_FTYPE_MOSTLY_Q8_0),
            Self::Q4_0 => Some(sys::LLAMA_FTYPE_MOSTLY_Q4_0),
            Self::Q4_1 => Some(sys::LLAMA_FTYPE_MOSTLY_Q4_1),
            Self::Q4KM => Some(sys::LLAMA_FTYPE_MOSTLY_Q4_K_M),
        }
    }
}

impl std::fmt::Display for ExportType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExportType {
    type Err = String;

    /// `f16`, `f32`, `q8_0`, `q4_0`, `q4_1` or `q4_k_m` (case-insensitive).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
                format!("unknown type {s:?}: one of {}", names.join(", "))
            })
    }
}

/// What is folded into the base by [`merge`].
#[derive(Debug, Clone, Copy)]
pub enum Trained<'a> {
    /// Nothing: the base itself, re-typed.
    Base,
    /// A LoRA adapter.
    Lora(&'a LoraAdapter),
    /// Full weights (they replace the base's).
    Full(&'a StudentWeights),
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportReport {
    /// The file (or PEFT directory) written.
    pub out: PathBuf,
    /// The base model.
    pub base: PathBuf,
    /// What was written: `f16` … `q4_k_m`, `adapter` or `peft`.
    pub kind: String,
    /// Tensors written.
    pub tensors: usize,
    /// Tensors that differ from the base's (merged or replaced; adapter pairs for adapters).
    pub changed: usize,
    /// Size of the output in bytes.
    pub bytes: u64,
}

/// Writes `base` with `trained` folded in to `out` as `ty` (see the module docs). The file
/// appears under its name only when complete. `threads` is llama.cpp's quantiser's.
pub fn merge(
    base: &Path,
    trained: Trained<'_>,
    out: &Path,
    ty: ExportType,
    threads: i32,
) -> Result<ExportReport> {
    let mut file = GgufFile::open(base)?;
    let config = file.config(QkLayout::HuggingFace)?;
    if let Trained::Lora(a) = trained {
        check_adapter_fits(a, &file, &config)?;
    }
    let matrix_type = match ty {
        ExportType::F32 => GgmlDType::F32,
        _ => GgmlDType::F16,
    };
    let names: Vec<String> = file.tensor_names().into_iter().map(str::to_owned).collect();
    if let Trained::Full(w) = trained {
        if let Some(extra) = w.tensors.keys().find(|k| !names.contains(k)) {
            return Err(StudentError::InvalidInput(format!(
                "the full weights hold {extra}, which the base {} has no tensor for",
                base.display()
            )));
        }
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut changed = 0;
    for name in &names {
        let (mut values, shape) = file.read_f32(name)?;
        match trained {
            Trained::Base => {}
            Trained::Lora(a) => {
                let base_name = name.strip_suffix(".weight").unwrap_or(name);
                if let Some(pair) = a.layers.get(base_name) {
                    let delta =
                        gguf_rows(&config, base_name, pair.delta_rows(a.scale()), pair.d_input);
                    values.iter_mut().zip(&delta).for_each(|(w, d)| *w += d);
                    changed += 1;
                }
            }
            Trained::Full(w) => {
                let Some((student_shape, student_values)) = w.tensors.get(name) else {
                    return Err(StudentError::InvalidInput(format!(
                        "the full weights lack {name}"
                    )));
                };
                values = gguf_layout(&config, name, student_shape, student_values, &shape)?;
                changed += 1;
            }
        }
        let ty = if shape.len() >= 2 {
            matrix_type
        } else {
            GgmlDType::F32
        };
        let q = to_qtensor(values, &shape, ty).map_err(|reason| StudentError::Write {
            path: out.into(),
            reason: format!("tensor {name}: {reason}"),
        })?;
        tensors.push((name.clone(), q));
    }
    let file_type = if matrix_type == GgmlDType::F32 { 0 } else { 1 };
    let metadata = carried_metadata(&file, file_type);
    drop(file);
    match ty.llama_ftype() {
        None => write_gguf(out, &metadata, &tensors)?,
        Some(ftype) => {
            let f16 = TempPath(adapter::temp_path(&out.with_extension("f16.gguf")));
            write_gguf(&f16.0, &metadata, &tensors)?;
            drop(tensors);
            quantize(&f16.0, out, ftype, threads)?;
        }
    }
    Ok(ExportReport {
        out: out.into(),
        base: base.into(),
        kind: ty.name().into(),
        tensors: names.len(),
        changed,
        bytes: file_size(out),
    })
}

/// Writes `adapter` as a LoRA adapter GGUF of `base` that llama.cpp applies at load (see the
/// module docs).
pub fn write_llama_adapter(base: &Path, adapter: &LoraAdapter, out: &Path) -> Result<ExportReport> {
    let file = GgufFile::open(base)?;
    let config = file.config(QkLayout::HuggingFace)?;
    check_adapter_fits(adapter, &file, &config)?;
    if adapter.layers.is_empty() {
        return Err(StudentError::InvalidInput(
            "the adapter adapts no projection".into(),
        ));
    }
    let r = adapter.rank;
    // llama.cpp reads alpha 0 as "scale 1": a zero alpha (a zero product) is written as
    // zero B factors instead.
    let b_factor = if adapter.alpha == 0.0 { 0.0 } else { 1.0 };
    let mut tensors = Vec::with_capacity(2 * adapter.layers.len());
    for (name, p) in &adapter.layers {
        let a_rows = transpose(&p.a, p.d_input, r);
        let mut b_rows = transpose(&p.b, r, p.d_output);
        b_rows.iter_mut().for_each(|x| *x *= b_factor);
        let b_rows = gguf_rows(&config, name, b_rows, r);
        let q = |values: Vec<f32>, shape: [usize; 2]| {
            to_qtensor(values, &shape, GgmlDType::F32).map_err(|reason| StudentError::Write {
                path: out.into(),
                reason: format!("{name}: {reason}"),
            })
        };
        tensors.push((format!("{name}.weight.lora_a"), q(a_rows, [r, p.d_input])?));
        tensors.push((format!("{name}.weight.lora_b"), q(b_rows, [p.d_output, r])?));
    }
    let metadata = vec![
        (
            "general.architecture".to_owned(),
            Value::String(config.arch.gguf_name().into()),
        ),
        ("general.type".to_owned(), Value::String("adapter".into())),
        (
            "general.name".to_owned(),
            Value::String("small-agent LoRA adapter".into()),
        ),
        ("adapter.type".to_owned(), Value::String("lora".into())),
        ("adapter.lora.alpha".to_owned(), Value::F32(adapter.alpha)),
    ];
    write_gguf(out, &metadata, &tensors)?;
    Ok(ExportReport {
        out: out.into(),
        base: base.into(),
        kind: "adapter".into(),
        tensors: tensors.len(),
        changed: adapter.layers.len(),
        bytes: file_size(out),
    })
}

/// Reads a LoRA adapter GGUF (ours, or one converted by llama.cpp's `convert_lora_to_gguf.py`
/// from F32/F16 tensors) of `base` back into the student's layout.
pub fn read_llama_adapter(base: &Path, path: &Path) -> Result<LoraAdapter> {
    let config = GgufFile::open(base)?.config(QkLayout::HuggingFace)?;
    let mut file = GgufFile::open(path)?;
    let corrupt = |reason: String| StudentError::CorruptGguf {
        path: path.into(),
        reason,
    };
    if file.str_value("general.type")? != Some("adapter")
        || file.str_value("adapter.type")? != Some("lora")
    {
        return Err(corrupt(
            "not a LoRA adapter (general.type / adapter.type)".into(),
        ));
    }
    let arch = file.str_value("general.architecture")?.unwrap_or_default();
    if arch != config.arch.gguf_name() {
        return Err(StudentError::InvalidInput(format!(
            "{} is an adapter of a {arch:?} model, {} is {:?}",
            path.display(),
            base.display(),
            config.arch.gguf_name()
        )));
    }
    let alpha = file.f32_value("adapter.lora.alpha")?.unwrap_or(0.0);
    let names: Vec<String> = file
        .tensor_names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".weight.lora_a").map(str::to_owned))
        .collect();
    let mut layers = BTreeMap::new();
    let mut rank = 0;
    for name in names {
        let (a_rows, a_shape) = file.read_f32(&format!("{name}.weight.lora_a"))?;
        let (b_rows, b_shape) = file.read_f32(&format!("{name}.weight.lora_b"))?;
        let (&[r, d_input], &[d_output, r_b]) = (a_shape.as_slice(), b_shape.as_slice()) else {
            return Err(corrupt(format!(
                "{name}: factors of shapes {a_shape:?} and {b_shape:?}"
            )));
        };
        if r != r_b || (rank != 0 && r != rank) {
            return Err(corrupt(format!(
                "{name}: ranks {r} and {r_b} (others {rank})"
            )));
        }
        rank = r;
        let b_rows = student_rows(&config, &name, b_rows, r);
        layers.insert(
            name,
            LoraPair {
                a: transpose(&a_rows, r, d_input),
                b: transpose(&b_rows, d_output, r),
                d_input,
                d_output,
            },
        );
    }
    if layers.is_empty() {
        return Err(corrupt("no .lora_a / .lora_b tensors".into()));
    }
    // Alpha 0 means "scale 1" to llama.cpp: alpha = rank gives the student the same scale.
    let alpha = if alpha == 0.0 { rank as f32 } else { alpha };
    let adapter = LoraAdapter {
        rank,
        alpha,
        layers,
    };
    adapter.check().map_err(corrupt)?;
    Ok(adapter)
}

// --- PEFT ---

/// File names of PEFT's layout.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's configuration file.
pub const PEFT_CONFIG: &str = "adapter_config.json";

/// The fields of `adapter_config.json` this crate writes and reads (PEFT ignores none of
/// them and adds defaults for the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// `"LORA"`.
    pub peft_type: String,
    /// `"CAUSAL_LM"`.
    pub task_type: String,
    /// Rank.
    pub r: usize,
    /// LoRA's alpha.
    pub lora_alpha: f32,
    /// Dropout used in training.
    #[serde(default)]
    pub lora_dropout: f32,
    /// Hugging Face module names adapted (`q_proj`, …).
    pub target_modules: Vec<String>,
    /// `"none"`.
    #[serde(default = "bias_none")]
    pub bias: String,
    /// The base model's name or path, informational.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Whether the adapter is for inference (PEFT's flag).
    #[serde(default)]
    pub inference_mode: bool,
    /// Per-layer rank overrides: refused when non-empty (one rank per adapter here).
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    /// Per-layer alpha overrides: refused when non-empty.
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
    /// rsLoRA's `alpha / sqrt(r)` scaling: refused when true.
    #[serde(default)]
    pub use_rslora: bool,
}

fn bias_none() -> String {
    "none".into()
}

/// GGUF target → Hugging Face module (path below `layers.N.`).
const HF_MODULES: [(&str, &str); 7] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];
const PEFT_PREFIX: &str = "base_model.model.model.layers.";

/// Writes `adapter` in PEFT's layout into the directory `dir` (created if absent): both files
/// through temporary names. `base_name` goes to `base_model_name_or_path`.
pub fn write_peft(
    adapter: &LoraAdapter,
    dir: &Path,
    base_name: Option<&str>,
    dropout: f32,
) -> Result<ExportReport> {
    adapter.check().map_err(StudentError::InvalidInput)?;
    std::fs::create_dir_all(dir).map_err(|e| StudentError::Write {
        path: dir.into(),
        reason: e.to_string(),
    })?;
    let r = adapter.rank;
    let mut tensors = Vec::with_capacity(2 * adapter.layers.len());
    let mut used = Vec::new();
    for (name, p) in &adapter.layers {
        let (n, target) = parse_target(name).expect("checked");
        let module = HF_MODULES
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, m)| *m)
            .expect("every target has a module");
        if !used.contains(&target) {
            used.push(target);
        }
        let stem = format!("{PEFT_PREFIX}{n}.{module}");
        tensors.push((
            format!("{stem}.lora_A.weight"),
            vec![r, p.d_input],
            transpose(&p.a, p.d_input, r),
        ));
        tensors.push((
            format!("{stem}.lora_B.weight"),
            vec![p.d_output, r],
            transpose(&p.b, r, p.d_output),
        ));
    }
    // Listed in the model's order (q, k, v, o, gate, up, down), as PEFT users write them.
    let modules: Vec<String> = HF_MODULES
        .iter()
        .filter(|(t, _)| used.contains(t))
        .map(|(_, m)| m.rsplit('.').next().unwrap_or(m).to_owned())
        .collect();
    let config = PeftConfig {
        peft_type: "LORA".into(),
        task_type: "CAUSAL_LM".into(),
        r,
        lora_alpha: adapter.alpha,
        lora_dropout: dropout,
        target_modules: modules,
        bias: bias_none(),
        base_model_name_or_path: base_name.map(str::to_owned),
        inference_mode: true,
        rank_pattern: HashMap::new(),
        alpha_pattern: HashMap::new(),
        use_rslora: false,
    };
    let weights = dir.join(PEFT_WEIGHTS);
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    adapter::write_f32_safetensors(&weights, &tensors, metadata)?;
    let config_path = dir.join(PEFT_CONFIG);
    let json = serde_json::to_string_pretty(&config).map_err(|e| StudentError::Write {
        path: config_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&config_path, json.as_bytes())?;
    Ok(ExportReport {
        out: dir.into(),
        base: base_name.map(PathBuf::from).unwrap_or_default(),
        kind: "peft".into(),
        tensors: tensors.len(),
        changed: adapter.layers.len(),
        bytes: file_size(&weights) + file_size(&config_path),
    })
}

/// Reads a PEFT LoRA directory (`adapter_model.safetensors` in F32, F16 or BF16, and
/// `adapter_config.json`) into the student's layout. Damaged or foreign files are
/// [`StudentError::CorruptCheckpoint`]; PEFT features the student does not compute (rsLoRA,
/// per-layer ranks, DoRA's magnitudes, biases) are refused.
pub fn read_peft(dir: &Path) -> Result<LoraAdapter> {
    let config_path = dir.join(PEFT_CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|source| StudentError::Io {
        path: config_path.clone(),
        source,
    })?;
    let config: PeftConfig =
        serde_json::from_str(&text).map_err(|e| adapter::corrupt(&config_path, e.to_string()))?;
    let unsupported = |what: &str| {
        StudentError::InvalidInput(format!(
            "{}: {what} is not supported (plain LoRA with one rank and alpha)",
            config_path.display()
        ))
    };
    if config.peft_type != "LORA" {
        return Err(unsupported(&format!("peft_type {:?}", config.peft_type)));
    }
    if config.use_rslora {
        return Err(unsupported("use_rslora"));
    }
    if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
        return Err(unsupported("rank_pattern / alpha_pattern"));
    }
    let weights = dir.join(PEFT_WEIGHTS);
    let bytes = adapter::read_file(&weights)?;
    let corrupt = |reason: String| adapter::corrupt(&weights, reason);
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let r = config.r;
    // Per projection: A and B in the student's layout as they turn up, d_input, d_output.
    type Halves = (Option<Vec<f32>>, Option<Vec<f32>>, usize, usize);
    let mut halves: BTreeMap<String, Halves> = BTreeMap::new();
    for (name, view) in file.tensors() {
        let Some(rest) = name.strip_prefix(PEFT_PREFIX) else {
            return Err(corrupt(format!("tensor {name} is not under {PEFT_PREFIX}")));
        };
        let (n, rest) = rest
            .split_once('.')
            .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)))
            .ok_or_else(|| corrupt(format!("tensor {name}: no layer number")))?;
        let (module, is_a) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, true)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, false)
        } else {
            return Err(unsupported(&format!("tensor {name}")));
        };
        let target = HF_MODULES
            .iter()
            .find(|(_, m)| *m == module)
            .map(|(t, _)| *t)
            .ok_or_else(|| unsupported(&format!("module {module}")))?;
        let shape = view.shape();
        let values = float_values(&view).map_err(|e| corrupt(format!("tensor {name}: {e}")))?;
        let slot = halves
            .entry(format!("blk.{n}.{target}"))
            .or_insert((None, None, 0, 0));
        match (is_a, shape) {
            (true, &[rows, d_input]) if rows == r => {
                slot.0 = Some(transpose(&values, r, d_input));
                slot.2 = d_input;
            }
            (false, &[d_output, cols]) if cols == r => {
                slot.1 = Some(transpose(&values, d_output, r));
                slot.3 = d_output;
            }
            _ => {
                return Err(corrupt(format!(
                    "tensor {name} of shape {shape:?} for rank {r}"
                )))
            }
        }
    }
    let mut layers = BTreeMap::new();
    for (name, (a, b, d_input, d_output)) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(corrupt(format!("{name} lacks one of its two factors")));
        };
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
    if layers.is_empty() {
        return Err(corrupt("no LoRA tensors".into()));
    }
    let adapter = LoraAdapter {
        rank: r,
        alpha: config.lora_alpha,
        layers,
    };
    adapter.check().map_err(corrupt)?;
    Ok(adapter)
}

/// `import-adapter`: a PEFT directory → a llama.cpp LoRA adapter GGUF of `base`.
pub fn import_peft(peft_dir: &Path, base: &Path, out: &Path) -> Result<ExportReport> {
    let adapter = read_peft(peft_dir)?;
    write_llama_adapter(base, &adapter, out)
}

fn float_values(
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<Vec<f32>, String> {
    use safetensors::tensor::Dtype;
    let data = view.data();
    let two = |f: fn([u8; 2]) -> f32| data.chunks_exact(2).map(|c| f([c[0], c[1]])).collect();
    match view.dtype() {
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        Dtype::F16 => Ok(two(|b| half_to_f32(u16::from_le_bytes(b)))),
        Dtype::BF16 => Ok(two(|b| {
            f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
        })),
        other => Err(format!("type {other:?}, F32, F16 or BF16 expected")),
    }
}

/// IEEE half → f32 (subnormals included).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

// --- shared pieces ---

/// Refuses an adapter whose projections the base does not have, or has in another shape.
fn check_adapter_fits(a: &LoraAdapter, file: &GgufFile, config: &StudentConfig) -> Result<()> {
    a.check().map_err(StudentError::InvalidInput)?;
    for (name, p) in &a.layers {
        let (n, target) = parse_target(name).expect("checked");
        if n >= config.n_layers {
            return Err(StudentError::InvalidInput(format!(
                "the adapter's {name} is past the base's {} blocks",
                config.n_layers
            )));
        }
        let weight = format!("{name}.weight");
        if !file.has_tensor(&weight) {
            let fused = file.has_tensor(&format!("blk.{n}.attn_qkv.weight"));
            return Err(if fused && target.starts_with("attn_") {
                StudentError::UnsupportedGguf {
                    path: file.path().into(),
                    what: "a fused attn_qkv matrix under an adapter".into(),
                    supported: "separate attn_q, attn_k, attn_v",
                }
            } else {
                StudentError::InvalidInput(format!("the base has no tensor {weight}"))
            });
        }
        let shape = file.tensor_shape(&weight).unwrap_or_default();
        if shape != [p.d_output, p.d_input] {
            return Err(StudentError::InvalidInput(format!(
                "the adapter's {name} is [in {}, out {}], the base's {weight} {shape:?} \
                 ([out, in]): an adapter of another base model?",
                p.d_input, p.d_output
            )));
        }
    }
    Ok(())
}

/// Rows `[out, cols]` of projection `name` in the student's (Hugging Face's) q/k order →
/// GGUF's order (llama's q/k rows permuted; anything else as it is).
fn gguf_rows(config: &StudentConfig, name: &str, rows: Vec<f32>, cols: usize) -> Vec<f32> {
    match qk_heads(config, name) {
        Some(heads) if config.arch == Arch::Llama => {
            adjacent_from_halves(&rows, heads, config.head_dim, cols)
        }
        _ => rows,
    }
}

/// The inverse of [`gguf_rows`].
fn student_rows(config: &StudentConfig, name: &str, rows: Vec<f32>, cols: usize) -> Vec<f32> {
    match qk_heads(config, name) {
        Some(heads) if config.arch == Arch::Llama => {
            crate::gguf::halves_from_adjacent(&rows, heads, config.head_dim, cols)
        }
        _ => rows,
    }
}

/// A full-weights tensor (student layout) in GGUF's layout, checked against the base's shape.
fn gguf_layout(
    config: &StudentConfig,
    name: &str,
    shape: &[usize],
    values: &[f32],
    gguf_shape: &[usize],
) -> Result<Vec<f32>> {
    let mismatch = || {
        StudentError::InvalidInput(format!(
            "the full weights' {name} is {shape:?}, the base's {gguf_shape:?} (GGUF rows): \
             weights of another base model?"
        ))
    };
    let base = name.rsplit_once('.').map_or(name, |(b, _)| b);
    let is_projection = parse_target(base).is_some() || name == "output.weight";
    let out = if is_projection && name.ends_with(".weight") {
        let &[inp, outp] = shape else {
            return Err(mismatch());
        };
        gguf_rows(config, base, transpose(values, inp, outp), inp)
    } else if is_projection {
        // A bias: its entries follow the output rows.
        gguf_rows(config, base, values.to_vec(), 1)
    } else {
        values.to_vec()
    };
    let reversed: Vec<usize> = if is_projection && name.ends_with(".weight") {
        shape.iter().rev().copied().collect()
    } else {
        shape.to_vec()
    };
    if reversed != gguf_shape || out.len() != gguf_shape.iter().product::<usize>() {
        return Err(mismatch());
    }
    Ok(out)
}

/// `[rows, cols]` row-major → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn to_qtensor(
    values: Vec<f32>,
    shape: &[usize],
    ty: GgmlDType,
) -> std::result::Result<QTensor, String> {
    let cpu = candle_core::Device::Cpu;
    candle_core::Tensor::from_vec(values, shape, &cpu)
        .and_then(|t| QTensor::quantize(&t, ty))
        .map_err(|e| e.to_string())
}

/// The base's metadata for the merged file: every key, `general.file_type` set to
/// `file_type` (0 all F32, 1 mostly F16), `general.alignment` dropped (the writer aligns
/// to 32, the default).
fn carried_metadata(file: &GgufFile, file_type: u32) -> Vec<(String, Value)> {
    let mut metadata: Vec<(String, Value)> = file
        .metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| {
            let v = if k == "general.file_type" {
                Value::U32(file_type)
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    if !metadata.iter().any(|(k, _)| k == "general.file_type") {
        metadata.push(("general.file_type".into(), Value::U32(file_type)));
    }
    // The architecture first, as llama.cpp's writers put it; the rest sorted for
    // reproducible files.
    metadata.sort_by(|a, b| {
        (a.0 != "general.architecture", &a.0).cmp(&(b.0 != "general.architecture", &b.0))
    });
    metadata
}

/// Writes a GGUF file with candle-core's writer, to a temporary name renamed into place.
pub(crate) fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let write_err = |reason: String| StudentError::Write {
        path: path.into(),
        reason,
    };
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let tmp = adapter::temp_path(path);
    let written = std::fs::File::create(&tmp)
        .map_err(|e| write_err(e.to_string()))
        .and_then(|f| {
            let mut w = BufWriter::new(f);
            gguf_file::write(&mut w, &meta, &refs).map_err(|e| write_err(e.to_string()))?;
            w.flush().map_err(|e| write_err(e.to_string()))
        })
        .and_then(|()| adapter::sync_and_rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = adapter::temp_path(path);
    let written = std::fs::write(&tmp, bytes)
        .map_err(|e| StudentError::Write {
            path: path.into(),
            reason: e.to_string(),
        })
        .and_then(|()| adapter::sync_and_rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Quantises the GGUF `src` to `dst` with llama.cpp's own quantiser, through a temporary
/// name.
fn quantize(
    src: &Path,
    dst: &Path,
    ftype: llama_cpp_sys_2::llama_ftype,
    threads: i32,
) -> Result<()> {
    // ggml code runs below: the runtime first checks this CPU against the build (and loads
    // the CPU variant of a portable build).
    small_agent::engine::cpu::report()?;
    let write_err = |reason: String| StudentError::Write {
        path: dst.into(),
        reason,
    };
    let tmp = TempPath(adapter::temp_path(dst));
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| write_err(format!("{} holds a NUL byte", p.display())))
    };
    let (c_src, c_tmp) = (c(src)?, c(&tmp.0)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call; the parameters
    // are llama.cpp's defaults with two plain fields changed. `llama_backend_init` may run
    // more than once (it only sets up ggml's timer and tables).
    let status = unsafe {
        llama_cpp_sys_2::llama_backend_init();
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = ftype;
        params.nthread = threads;
        llama_cpp_sys_2::llama_model_quantize(c_src.as_ptr(), c_tmp.as_ptr(), &params)
    };
    if status != 0 {
        return Err(write_err(format!(
            "llama.cpp's quantiser failed (status {status}; RUST_LOG=llama_cpp_2=info shows its log)"
        )));
    }
    adapter::sync_and_rename(&tmp.0, dst)?;
    Ok(())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A path removed on drop if it still exists (temporary files of an export).
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
