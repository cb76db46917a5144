//! A LoRA adapter GGUF (llama.cpp's format, e.g. a distilled student from
//! `small-agent-distill export --adapter`) applied to every context of a model.
//!
//! The adapter is checked against the model file before anything loads (names, shapes,
//! architecture), so a misfit is an error of its own instead of llama.cpp's null pointer.
//!
//! A split model ([`split`]) already applies its offsets as an adapter, and llama-cpp-2 sets
//! one adapter per context (`llama_set_adapters_lora` with one entry replaces the others; the
//! raw context is private). So the student is folded into the offsets by concatenating ranks:
//! for `W0 + B_off·A_off` and the student's `s·B_s·A_s` (`s = alpha / rank`),
//! `A' = [A_off; A_s]`, `B' = [B_off | s·B_s]`, whose product is the sum. Where the split
//! fused Q, K and V into `attn_qkv`, the student's q/k/v pairs share its input and sit in
//! their row blocks: `A' = [A_off; A_q; A_k; A_v]`, `B' = [B_off | blockdiag(s·B_q, s·B_k,
//! s·B_v)]` (both files keep GGUF's row order, q/k permuted alike, so rows map one to one).
//! A matrix without offsets (not Q4_1) gets the student's pair alone, scaled. The fold keeps
//! alpha 0 (scale 1) and f32 factors, so its numbers are the two adapters' up to rounding.
//! It is written once per (split, adapter content) beside the split's files.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use llama_cpp_sys_2 as sys;

use super::split::{self, Fnv, GgufFile, OutTensor, SplitError, SplitFiles, TensorInfo};
use super::{EngineError, Result};

/// Version of the folded layout; part of the fold's file name.
const FOLD_VERSION: u32 = 1;

/// What [`check`] learnt about an adapter that fits.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Checked {
    /// It adapts the output matrix (or the embeddings it may be tied to): logits must then
    /// come from llama.cpp's graph, not the own output product.
    pub(super) touches_output: bool,
}

/// Refuses an adapter that is missing, is no LoRA adapter GGUF, or names a tensor the model
/// lacks or has in another shape.
pub(super) fn check(adapter: &Path, model: &Path) -> Result<Checked> {
    if !adapter.is_file() {
        return Err(EngineError::AdapterNotFound(adapter.into()));
    }
    let misfit = |reason: String| EngineError::AdapterMismatch {
        adapter: adapter.into(),
        model: model.into(),
        reason,
    };
    let file = GgufFile::open(adapter)
        .map_err(|_| misfit("it is not a GGUF file (ggml's reader refused it)".into()))?;
    if file.string("general.type").as_deref() != Some("adapter")
        || file.string("adapter.type").as_deref() != Some("lora")
    {
        return Err(misfit(
            "it is not a LoRA adapter GGUF (general.type / adapter.type are not adapter / lora)"
                .into(),
        ));
    }
    // A model ggml cannot read fails in the loader with its own message.
    let Ok(model_file) = GgufFile::open(model) else {
        return Ok(Checked::default());
    };
    let (arch, model_arch) = (
        file.string("general.architecture").unwrap_or_default(),
        model_file
            .string("general.architecture")
            .unwrap_or_default(),
    );
    if arch != model_arch {
        return Err(misfit(format!(
            "it adapts a {arch:?} model, the model is {model_arch:?}"
        )));
    }
    let weights: HashMap<String, [i64; 4]> = model_file
        .tensors()
        .into_iter()
        .map(|t| (t.name, t.ne))
        .collect();
    let tensors = file.tensors();
    let pairs = pairs(&tensors).map_err(misfit)?;
    if pairs.is_empty() {
        return Err(misfit("it holds no .lora_a / .lora_b tensors".into()));
    }
    let mut checked = Checked::default();
    for (name, (a, b)) in &pairs {
        let w = weights
            .get(name)
            .ok_or_else(|| misfit(format!("the model has no tensor {name}")))?;
        let flat = |ne: &[i64; 4]| ne[2] == 1 && ne[3] == 1;
        // llama.cpp's rule: the embeddings' pair is flipped (see `llm_build_inp_embd`).
        let fits = if name == "token_embd.weight" {
            w[0] == b.ne[1] && w[1] == a.ne[1]
        } else {
            w[0] == a.ne[0] && w[1] == b.ne[1] && a.ne[1] == b.ne[0]
        };
        if !(flat(&a.ne) && flat(&b.ne) && flat(w) && fits) {
            return Err(misfit(format!(
                "its pair for {name} has lora_a {:?} and lora_b {:?} (ggml ne), the model's \
                 matrix is {:?}",
                &a.ne[..2],
                &b.ne[..2],
                &w[..2]
            )));
        }
        if !(readable(a.ggml_type) && readable(b.ggml_type)) {
            return Err(misfit(format!(
                "its pair for {name} is of a tensor type ggml cannot convert to f32"
            )));
        }
        checked.touches_output |= name == "output.weight" || name == "token_embd.weight";
    }
    Ok(checked)
}

/// The adapter's `.lora_a` / `.lora_b` tensors by the weight they adapt. Norm vectors are
/// skipped, as llama.cpp does; anything else is refused, as llama.cpp would.
fn pairs(
    tensors: &[TensorInfo],
) -> std::result::Result<BTreeMap<String, (&TensorInfo, &TensorInfo)>, String> {
    let mut halves: BTreeMap<&str, [Option<&TensorInfo>; 2]> = BTreeMap::new();
    for t in tensors {
        if let Some(w) = t.name.strip_suffix(".lora_a") {
            halves.entry(w).or_default()[0] = Some(t);
        } else if let Some(w) = t.name.strip_suffix(".lora_b") {
            halves.entry(w).or_default()[1] = Some(t);
        } else if !t.name.ends_with("_norm.weight") {
            return Err(format!("its tensor {} is no .lora_a / .lora_b", t.name));
        }
    }
    halves
        .into_iter()
        .map(|(w, h)| match h {
            [Some(a), Some(b)] => Ok((w.to_owned(), (a, b))),
            _ => Err(format!("its pair for {w} lacks lora_a or lora_b")),
        })
        .collect()
}

fn readable(t: sys::ggml_type) -> bool {
    // SAFETY: the traits table covers every type id below GGML_TYPE_COUNT.
    t == sys::GGML_TYPE_F32
        || (t < sys::GGML_TYPE_COUNT
            && unsafe { (*sys::ggml_get_type_traits(t)).to_float.is_some() })
}

/// The tensor's values as f32 (row-major, `ne[0]` per row).
fn read_f32(bytes: &[u8], t: &TensorInfo) -> std::result::Result<Vec<f32>, SplitError> {
    let n = t.ne.iter().product::<i64>() as usize;
    let data = bytes
        .get(t.start..t.start + t.len)
        .ok_or_else(|| SplitError::Unsupported(format!("tensor {} past the end", t.name)))?;
    if t.ggml_type == sys::GGML_TYPE_F32 {
        if data.len() != 4 * n {
            return Err(SplitError::Unsupported(format!("tensor {}: size", t.name)));
        }
        return Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    if !readable(t.ggml_type) {
        return Err(SplitError::Unsupported(format!("tensor {}: type", t.name)));
    }
    let mut out = vec![0f32; n];
    // SAFETY: `data` holds the tensor's `n` values in its type (its size from the GGUF
    // header, checked against ggml's row size); `to_float` writes `n` floats.
    unsafe {
        let rows = (n as i64) / t.ne[0].max(1);
        if sys::ggml_row_size(t.ggml_type, t.ne[0]) * rows as usize != data.len() {
            return Err(SplitError::Unsupported(format!("tensor {}: size", t.name)));
        }
        let to_float = (*sys::ggml_get_type_traits(t.ggml_type))
            .to_float
            .expect("checked by readable");
        to_float(data.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    Ok(out)
}

/// A key of the adapter's bytes (FNV-1a over 64-bit words, with the length): a rewritten
/// adapter never finds the fold of its former content.
fn content_key(adapter: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(adapter)?;
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(&(bytes.len() as u64).to_le_bytes());
    h.write(&FOLD_VERSION.to_le_bytes());
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h.0 = (h.0 ^ w).wrapping_mul(0x0100_0000_01b3);
    }
    h.write(words.remainder());
    Ok(format!("{:016x}", h.finish()))
}

/// Where [`fold`] writes the split's offsets with `adapter` folded in: beside the split's
/// files, named by the adapter's content.
pub fn fold_path(files: &SplitFiles, adapter: &Path) -> std::io::Result<PathBuf> {
    let dir = files.offsets.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!("offsets+{}.gguf", content_key(adapter)?)))
}

/// Suffix of the file beside each fold that names its adapter (for the sweep).
const ADAPTER_MARKER: &str = "adapter";

/// The split's offsets adapter with the LoRA adapter `adapter` (checked by [`check`] against
/// `src`, the model the split was derived from) folded in (see the module docs); written on
/// first use, reused after. Other folds of the same adapter path (its former contents) and
/// folds of adapters that are gone are removed.
pub fn fold(files: &SplitFiles, src: &Path, adapter: &Path) -> Result<PathBuf, SplitError> {
    let out = fold_path(files, adapter)?;
    if out.is_file() {
        return Ok(out);
    }
    let t = std::time::Instant::now();
    write_fold(files, src, adapter, &out)?;
    let source = std::fs::canonicalize(adapter)?;
    std::fs::write(
        out.with_extension(ADAPTER_MARKER),
        source.to_string_lossy().as_bytes(),
    )?;
    remove_stale_folds(&out, &source);
    tracing::info!(
        adapter = %adapter.display(),
        out = %out.display(),
        ms = t.elapsed().as_millis() as u64,
        "folded the LoRA adapter into the split's offsets"
    );
    Ok(out)
}

fn remove_stale_folds(current: &Path, source: &Path) {
    let (Some(dir), Some(name)) = (current.parent(), current.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let is_fold = path.file_name().is_some_and(|n| {
            n != name
                && n.to_string_lossy().starts_with("offsets+")
                && path.extension().is_some_and(|x| x == "gguf")
        });
        if !is_fold {
            continue;
        }
        let marker = path.with_extension(ADAPTER_MARKER);
        let stale = match std::fs::read_to_string(&marker) {
            Ok(s) => Path::new(&s) == source || !Path::new(&s).exists(),
            // A fold being written (its marker follows it) is left alone.
            Err(_) => false,
        };
        if stale {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&marker);
            tracing::info!(fold = %path.display(), "removed a stale adapter fold");
        }
    }
}

/// One student pair placed in an output matrix: its rows start at `row0`.
struct Part {
    row0: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    n_in: usize,
    rows: usize,
    /// The pair's own shapes (ggml ne), written as they are when the pair stands alone.
    ne: [[i64; 2]; 2],
}

fn write_fold(
    files: &SplitFiles,
    src: &Path,
    adapter: &Path,
    out: &Path,
) -> Result<(), SplitError> {
    let unsupported = |m: String| SplitError::Unsupported(m);
    let offsets = GgufFile::open(&files.offsets)?;
    let off_tensors = offsets.tensors();
    let off_bytes = std::fs::read(&files.offsets)?;
    let off_pairs = pairs(&off_tensors).map_err(unsupported)?;
    let student = GgufFile::open(adapter)?;
    let st_tensors = student.tensors();
    let st_bytes = std::fs::read(adapter)?;
    let st_pairs = pairs(&st_tensors).map_err(unsupported)?;
    let model = GgufFile::open(src)?;
    let rows_of: HashMap<String, usize> = model
        .tensors()
        .into_iter()
        .map(|t| (t.name, t.ne[1] as usize))
        .collect();
    let arch = offsets
        .string("general.architecture")
        .ok_or_else(|| unsupported("the offsets have no architecture".into()))?;
    let alpha = student.f32("adapter.lora.alpha").unwrap_or(0.0);

    let mut groups: BTreeMap<String, Vec<Part>> = BTreeMap::new();
    for (name, (a, b)) in &st_pairs {
        let (target, row0) = if off_pairs.contains_key(name) {
            if name == "token_embd.weight" {
                // Its pair is flipped (llama.cpp); no split writes such offsets that load.
                return Err(unsupported("offsets on the embeddings".into()));
            }
            (name.clone(), 0)
        } else {
            match fused_row(name, &off_pairs, &rows_of) {
                Some(placed) => placed,
                None => (name.clone(), 0),
            }
        };
        let rank = b.ne[0] as usize;
        // llama.cpp's scale of a pair: alpha / rank, or 1 where alpha is 0.
        let scale = if alpha == 0.0 {
            1.0
        } else {
            alpha / rank as f32
        };
        let mut bv = read_f32(&st_bytes, b)?;
        bv.iter_mut().for_each(|x| *x *= scale);
        groups.entry(target).or_default().push(Part {
            row0,
            a: read_f32(&st_bytes, a)?,
            b: bv,
            rank,
            n_in: a.ne[0] as usize,
            rows: b.ne[1] as usize,
            ne: [[a.ne[0], a.ne[1]], [b.ne[0], b.ne[1]]],
        });
    }

    let mut tensors = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        off_pairs.keys().chain(groups.keys()).collect();
    for w in names {
        let f32_tensor = |suffix: &str, ne: [i64; 2], v: &[f32]| OutTensor {
            name: format!("{w}.{suffix}"),
            ggml_type: sys::GGML_TYPE_F32,
            ne,
            like: None,
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        match (off_pairs.get(w), groups.get(w)) {
            // Offsets alone: as they are.
            (Some((a, b)), None) => {
                for (t, suffix) in [(a, "lora_a"), (b, "lora_b")] {
                    tensors.push(OutTensor {
                        name: format!("{w}.{suffix}"),
                        ggml_type: t.ggml_type,
                        ne: [t.ne[0], t.ne[1]],
                        like: None,
                        data: off_bytes[t.start..t.start + t.len].to_vec(),
                    });
                }
            }
            // The student's pair alone (a matrix the split left as it was).
            (None, Some(parts)) => {
                let [p] = parts.as_slice() else {
                    return Err(unsupported(format!("{w}: several pairs without offsets")));
                };
                tensors.push(f32_tensor("lora_a", p.ne[0], &p.a));
                tensors.push(f32_tensor("lora_b", p.ne[1], &p.b));
            }
            (Some((a_off, b_off)), Some(parts)) => {
                let (n_in, r0, n_out) = (
                    a_off.ne[0] as usize,
                    a_off.ne[1] as usize,
                    b_off.ne[1] as usize,
                );
                let rank: usize = r0 + parts.iter().map(|p| p.rank).sum::<usize>();
                let mut a = read_f32(&off_bytes, a_off)?;
                let b0 = read_f32(&off_bytes, b_off)?;
                let mut b = vec![0f32; n_out * rank];
                for i in 0..n_out {
                    b[i * rank..i * rank + r0].copy_from_slice(&b0[i * r0..(i + 1) * r0]);
                }
                let mut col = r0;
                for p in parts {
                    if p.n_in != n_in || p.row0 + p.rows > n_out {
                        return Err(unsupported(format!("{w}: a pair of another shape")));
                    }
                    a.extend_from_slice(&p.a);
                    for i in 0..p.rows {
                        let dst = (p.row0 + i) * rank + col;
                        b[dst..dst + p.rank].copy_from_slice(&p.b[i * p.rank..(i + 1) * p.rank]);
                    }
                    col += p.rank;
                }
                tensors.push(f32_tensor("lora_a", [n_in as i64, rank as i64], &a));
                tensors.push(f32_tensor("lora_b", [rank as i64, n_out as i64], &b));
            }
            (None, None) => unreachable!("a name of either map"),
        }
    }
    split::write_gguf(out, None, &tensors, Some(&arch))
}

/// Where the split fused `blk.N.attn_{q,k,v}.weight` into `blk.N.attn_qkv.weight` (the
/// model has no such tensor, the offsets have): that matrix and the first row of the part
/// (Q's rows, then K's, then V's, as the split writes them).
fn fused_row(
    name: &str,
    off_pairs: &BTreeMap<String, (&TensorInfo, &TensorInfo)>,
    rows_of: &HashMap<String, usize>,
) -> Option<(String, usize)> {
    let (stem, part) = name.strip_suffix(".weight")?.rsplit_once(".attn_")?;
    let qkv = format!("{stem}.attn_qkv.weight");
    if !off_pairs.contains_key(&qkv) || rows_of.contains_key(&qkv) {
        return None;
    }
    let rows = |p: &str| rows_of.get(&format!("{stem}.attn_{p}.weight")).copied();
    let row0 = match part {
        "q" => 0,
        "k" => rows("q")?,
        "v" => rows("q")? + rows("k")?,
        _ => return None,
    };
    Some((qkv, row0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    fn tensor(name: &str, ty: sys::ggml_type, ne: [i64; 2], v: &[f32]) -> OutTensor {
        let data = if ty == sys::GGML_TYPE_F16 {
            // SAFETY: pure conversion.
            v.iter()
                .flat_map(|&x| unsafe { sys::ggml_fp32_to_fp16(x) }.to_le_bytes())
                .collect()
        } else {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
        OutTensor {
            name: name.into(),
            ggml_type: ty,
            ne,
            like: None,
            data,
        }
    }

    /// `B·A` of a pair as rows `[n_out][n_in]` (A: `rank` rows of `n_in`, B: `n_out` rows of
    /// `rank`).
    fn product(a: &[f32], b: &[f32], rank: usize, n_in: usize) -> Vec<f32> {
        let n_out = b.len() / rank;
        let mut d = vec![0f32; n_out * n_in];
        for o in 0..n_out {
            for k in 0..rank {
                for i in 0..n_in {
                    d[o * n_in + i] += b[o * rank + k] * a[k * n_in + i];
                }
            }
        }
        d
    }

    /// The fold's product is the offsets' plus the student's scaled one: concatenated where
    /// both adapt a matrix, in Q's and V's row blocks of a fused `attn_qkv` (K left out), the
    /// student's alone where there are no offsets; offsets without a student pair are copied.
    #[test]
    fn the_fold_adds_the_products_of_both_adapters() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let (n_in, r0, r) = (64usize, 2usize, 3usize);
        let (f16, f32) = (sys::GGML_TYPE_F16, sys::GGML_TYPE_F32);
        let zeros = |rows: i64| vec![0f32; n_in * rows as usize];
        let src: Vec<OutTensor> = [
            ("attn_q", 8),
            ("attn_k", 4),
            ("attn_v", 4),
            ("ffn_up", 6),
            ("ffn_gate", 6),
            ("attn_output", 5),
        ]
        .into_iter()
        .map(|(t, rows)| {
            tensor(
                &format!("blk.0.{t}.weight"),
                f32,
                [n_in as i64, rows],
                &zeros(rows),
            )
        })
        .collect();
        split::write_gguf(&p("src.gguf"), None, &src, None).unwrap();
        let mut off = Vec::new();
        for (t, rows, seed) in [("attn_qkv", 16, 1), ("ffn_up", 6, 2), ("attn_output", 5, 3)] {
            let w = format!("blk.0.{t}.weight");
            off.push(tensor(
                &format!("{w}.lora_a"),
                f16,
                [n_in as i64, r0 as i64],
                &values(n_in * r0, seed),
            ));
            off.push(tensor(
                &format!("{w}.lora_b"),
                f16,
                [r0 as i64, rows],
                &values(rows as usize * r0, seed + 10),
            ));
        }
        split::write_gguf(&p("offsets.gguf"), None, &off, Some("llama")).unwrap();
        let mut st = Vec::new();
        for (t, rows, seed) in [
            ("attn_q", 8, 4),
            ("attn_v", 4, 5),
            ("ffn_up", 6, 6),
            ("ffn_gate", 6, 7),
        ] {
            let w = format!("blk.0.{t}.weight");
            st.push(tensor(
                &format!("{w}.lora_a"),
                f32,
                [n_in as i64, r as i64],
                &values(n_in * r, seed),
            ));
            st.push(tensor(
                &format!("{w}.lora_b"),
                f32,
                [r as i64, rows],
                &values(rows as usize * r, seed + 10),
            ));
        }
        split::write_gguf(&p("student.gguf"), None, &st, Some("llama")).unwrap();
        // write_gguf gives adapters alpha 0 (scale 1); the e2e test covers alpha / rank.
        let files = SplitFiles {
            base: p("base.gguf"),
            offsets: p("offsets.gguf"),
        };
        let folded = fold(&files, &p("src.gguf"), &p("student.gguf")).unwrap();
        assert_eq!(folded, fold_path(&files, &p("student.gguf")).unwrap());

        let read = |path: &Path| {
            let f = GgufFile::open(path).unwrap();
            let bytes = std::fs::read(path).unwrap();
            f.tensors()
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        (t.ggml_type, t.ne, read_f32(&bytes, t).unwrap()),
                    )
                })
                .collect::<HashMap<_, _>>()
        };
        let (o, s, fo) = (
            read(&p("offsets.gguf")),
            read(&p("student.gguf")),
            read(&folded),
        );
        let pair = |m: &HashMap<String, (sys::ggml_type, [i64; 4], Vec<f32>)>, w: &str| {
            let (a, b) = (&m[&format!("{w}.lora_a")], &m[&format!("{w}.lora_b")]);
            product(&a.2, &b.2, a.1[1] as usize, n_in)
        };
        let close = |x: &[f32], y: &[f32]| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).all(|(a, b)| (a - b).abs() < 1e-4)
        };
        // attn_qkv: offsets everywhere, Q's student product in rows 0..8, none in K's rows
        // 8..12, V's in rows 12..16.
        let mut want = pair(&o, "blk.0.attn_qkv.weight");
        for (part, row0) in [("attn_q", 0), ("attn_v", 12)] {
            let d = pair(&s, &format!("blk.0.{part}.weight"));
            for (i, x) in d.iter().enumerate() {
                want[row0 * n_in + i] += x;
            }
        }
        assert!(close(&pair(&fo, "blk.0.attn_qkv.weight"), &want));
        assert_eq!(fo["blk.0.attn_qkv.weight.lora_a"].1[1] as usize, r0 + 2 * r);
        let up: Vec<f32> = pair(&o, "blk.0.ffn_up.weight")
            .iter()
            .zip(pair(&s, "blk.0.ffn_up.weight"))
            .map(|(a, b)| a + b)
            .collect();
        assert!(close(&pair(&fo, "blk.0.ffn_up.weight"), &up));
        assert!(close(
            &pair(&fo, "blk.0.ffn_gate.weight"),
            &pair(&s, "blk.0.ffn_gate.weight")
        ));
        assert_eq!(fo["blk.0.attn_output.weight.lora_b"].0, f16);
        assert_eq!(
            fo["blk.0.attn_output.weight.lora_b"].2,
            o["blk.0.attn_output.weight.lora_b"].2
        );
        assert!(!fo.contains_key("blk.0.attn_q.weight.lora_a"));
    }
}
