//! Q4_1 weights loaded as Q4_0 plus per-block offsets: the same numbers, in a layout that
//! llama.cpp's CPU back-end multiplies in batches.
//!
//! A Q4_1 block holds 32 weights as a scale `d`, a minimum `m` and 4-bit codes `q`:
//! `w = d·q + m`. Read with the same `d` and codes as Q4_0 (`w0 = d·(q − 8)`), every weight of
//! the block is off by one constant, `m + 8d`. So a Q4_1 matrix `W` (n_out × n_in) is exactly
//! `W0 + B·A`: `W0` the Q4_0 reading, `A` (n_in/32 × n_in) sums each 32-wide block of the
//! input, `B` (n_out × n_in/32) holds the blocks' offsets. `B·A` has the shape of a LoRA
//! adapter of rank n_in/32 with alpha 0 (llama.cpp then scales it by exactly 1), so the
//! derived pair of files loads through llama.cpp's ordinary model and adapter loaders.
//!
//! Why bother: llama.cpp multiplies a batch of Q4_1 rows one dot product at a time, while it
//! repacks Q4_0 into interleaved rows with batched kernels (AVX2, Arm dotprod). On 2 cores
//! with the default model, 8 candidates decoding side by side cost 2.2–3.1 s instead of
//! 3.3–4.2 s (`bench parallel`), and prompt evaluation runs ~2.5× faster; one sequence
//! decodes 6–11% slower, the price of the adapter's two small products per matrix.
//!
//! Fused attention input: where the architecture reads a fused `attn_qkv` tensor (llama),
//! the Q, K and V matrices of a layer are written as one, so a layer has one adapter pair
//! (and one product) for them instead of three.
//!
//! The derived files are written once per source file into a cache directory and reused;
//! any failure to derive them falls back to loading the file as it is.
//!
//! A LoRA adapter on top (a distilled student) cannot be a second adapter: llama-cpp-2 sets
//! one per context. [`super::adapter`] folds it into the offsets (ranks concatenated, still
//! alpha 0), one file per adapter content beside the pair; the base is shared.

use std::{
    ffi::{CStr, CString},
    hash::Hasher,
    path::{Path, PathBuf},
};

use llama_cpp_sys_2 as sys;

/// Version of the derived layout; part of the cache key, so a change rewrites the files.
pub const SPLIT_LAYOUT_VERSION: u32 = 2;
/// Weights per Q4_0 / Q4_1 block.
const BLOCK: usize = 32;
/// Bytes of a Q4_1 block: f16 scale, f16 minimum, 16 bytes of codes.
const Q4_1_BYTES: usize = 20;
/// Bytes of a Q4_0 block: f16 scale, 16 bytes of codes.
const Q4_0_BYTES: usize = 18;

/// Errors of deriving the split files. The caller logs them and loads the file as it is.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// ggml's GGUF reader refused the file.
    #[error("{0} is not a readable GGUF file")]
    Unreadable(PathBuf),
    /// The file uses something this transform does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// Reading the source or writing the cache failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// ggml's GGUF writer failed.
    #[error("could not write {0}")]
    Write(PathBuf),
}

/// The two derived files: the Q4_0 reading of the model, and the offsets as a LoRA adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFiles {
    /// The model with every Q4_1 matrix rewritten as Q4_0 (same scales and codes).
    pub base: PathBuf,
    /// The per-block offsets, as a LoRA adapter of the base.
    pub offsets: PathBuf,
}

/// Whether this build and CPU have the batched Q4_0 kernels that make the split pay: x86 with
/// AVX2, or Arm with dot-product instructions, and no GPU back-end (GPU kernels handle Q4_1
/// batches well, and the adapter would only add work there).
pub fn pays_here(gpu_offload: bool) -> bool {
    if gpu_offload {
        return false;
    }
    // What the running ggml CPU code was compiled with (in the portable build: the variant
    // loaded for this CPU).
    super::cpu::backend()
        .is_some_and(|cpu| cpu.has("AVX2") || (cpu.has("NEON") && cpu.has("DOTPROD")))
}

/// The default cache of derived files: `$SMALL_AGENT_HOME/cache/split`.
pub fn default_cache_dir() -> Option<PathBuf> {
    small_agent_models::Store::from_env()
        .ok()
        .map(|s| s.home().join("cache").join("split"))
}

/// A GGUF file opened by ggml's reader, with its tensors' shapes in a metadata context.
pub(super) struct GgufFile {
    gguf: *mut sys::gguf_context,
    meta: *mut sys::ggml_context,
}

impl GgufFile {
    pub(super) fn open(path: &Path) -> Result<Self, SplitError> {
        let c = c_path(path)?;
        let mut meta: *mut sys::ggml_context = std::ptr::null_mut();
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: &mut meta,
        };
        // SAFETY: `c` is a valid C string; on success ggml owns both returned contexts, which
        // `Drop` frees.
        let gguf = unsafe { sys::gguf_init_from_file(c.as_ptr(), params) };
        if gguf.is_null() || meta.is_null() {
            return Err(SplitError::Unreadable(path.into()));
        }
        Ok(Self { gguf, meta })
    }

    pub(super) fn string(&self, key: &str) -> Option<String> {
        let k = CString::new(key).ok()?;
        // SAFETY: valid context and key; the id is checked before the value is read.
        unsafe {
            let id = sys::gguf_find_key(self.gguf, k.as_ptr());
            if id < 0 || sys::gguf_get_kv_type(self.gguf, id) != sys::GGUF_TYPE_STRING {
                return None;
            }
            Some(
                CStr::from_ptr(sys::gguf_get_val_str(self.gguf, id))
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    }

    pub(super) fn f32(&self, key: &str) -> Option<f32> {
        let k = CString::new(key).ok()?;
        // SAFETY: valid context and key; the id and type are checked before the value is read.
        unsafe {
            let id = sys::gguf_find_key(self.gguf, k.as_ptr());
            (id >= 0 && sys::gguf_get_kv_type(self.gguf, id) == sys::GGUF_TYPE_FLOAT32)
                .then(|| sys::gguf_get_val_f32(self.gguf, id))
        }
    }

    /// Name, type, shape and byte range (from the start of the file) of every tensor.
    pub(super) fn tensors(&self) -> Vec<TensorInfo> {
        // SAFETY: ids below `gguf_get_n_tensors`; names are NUL-terminated strings owned by
        // the context; the metadata context holds a tensor of every name.
        unsafe {
            let data = sys::gguf_get_data_offset(self.gguf);
            (0..sys::gguf_get_n_tensors(self.gguf))
                .map(|i| {
                    let name_ptr = sys::gguf_get_tensor_name(self.gguf, i);
                    let t = sys::ggml_get_tensor(self.meta, name_ptr);
                    TensorInfo {
                        name: CStr::from_ptr(name_ptr).to_string_lossy().into_owned(),
                        ggml_type: sys::gguf_get_tensor_type(self.gguf, i),
                        ne: if t.is_null() { [0; 4] } else { (*t).ne },
                        meta: t,
                        start: data + sys::gguf_get_tensor_offset(self.gguf, i),
                        len: sys::gguf_get_tensor_size(self.gguf, i),
                    }
                })
                .collect()
        }
    }
}

impl Drop for GgufFile {
    fn drop(&mut self) {
        // SAFETY: both were returned by `gguf_init_from_file` and are freed once.
        unsafe {
            sys::gguf_free(self.gguf);
            sys::ggml_free(self.meta);
        }
    }
}

pub(super) struct TensorInfo {
    pub(super) name: String,
    pub(super) ggml_type: sys::ggml_type,
    pub(super) ne: [i64; 4],
    meta: *mut sys::ggml_tensor,
    /// Byte range in the file.
    pub(super) start: usize,
    pub(super) len: usize,
}

impl TensorInfo {
    fn is_q4_1_matrix(&self) -> bool {
        self.ggml_type == sys::GGML_TYPE_Q4_1
            && self.ne[2] == 1
            && self.ne[3] == 1
            && (self.ne[0] as usize).is_multiple_of(BLOCK)
    }
}

/// The model's output matrix when it is Q8_0: a reader of its bytes, its width (n_embd) and
/// rows (n_vocab). The matrix is `output.weight`, or `token_embd.weight` where the model ties
/// the two. `None` for any other type or an unreadable file.
pub(crate) fn open_q8_0_output(path: &Path) -> Option<(impl std::io::Read, usize, usize)> {
    use std::io::{Read, Seek, SeekFrom};
    let file = GgufFile::open(path).ok()?;
    let tensors = file.tensors();
    let t = output_matrix(&tensors)?;
    if t.ggml_type != sys::GGML_TYPE_Q8_0 || t.ne[2] != 1 || t.ne[3] != 1 {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(t.start as u64)).ok()?;
    Some((
        std::io::BufReader::new(f).take(t.len as u64),
        t.ne[0] as usize,
        t.ne[1] as usize,
    ))
}

/// The output matrix: `output.weight`, or `token_embd.weight` where the model ties the two.
fn output_matrix(tensors: &[TensorInfo]) -> Option<&TensorInfo> {
    tensors
        .iter()
        .find(|t| t.name == "output.weight")
        .or_else(|| tensors.iter().find(|t| t.name == "token_embd.weight"))
}

/// Hands back the resident pages of `path`'s output matrix wherever this process maps the
/// file (llama.cpp maps model files read-only and reads every page in at load). The
/// mapping stays: a page touched later is read again from the page cache. Returns the bytes
/// released; 0 where nothing is mapped, on error, or off Linux.
pub(crate) fn release_output_pages(path: &Path) -> usize {
    let Some((start, len)) = GgufFile::open(path)
        .ok()
        .and_then(|file| output_matrix(&file.tensors()).map(|t| (t.start, t.len)))
    else {
        return 0;
    };
    release_mapped_range(path, start, start + len)
}

/// [`release_output_pages`] for the byte range `first..last` of the file.
#[cfg(target_os = "linux")]
fn release_mapped_range(path: &Path, first: usize, last: usize) -> usize {
    let (Ok(file), Ok(maps)) = (
        std::fs::canonicalize(path),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return 0;
    };
    let Some(file) = file.to_str() else {
        return 0;
    };
    // SAFETY: no arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut released = 0;
    // Lines: `start-end perms offset dev inode path`.
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(offset), Some(_), Some(_), Some(name)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        // Only read-only mappings: a written page would be lost.
        if name.trim_start() != file || perms.as_bytes().get(1) != Some(&b'-') {
            continue;
        }
        let parse = |h: &str| usize::from_str_radix(h, 16).ok();
        let Some((Some(lo), Some(hi))) = range.split_once('-').map(|(a, b)| (parse(a), parse(b)))
        else {
            continue;
        };
        let Some(offset) = parse(offset) else {
            continue;
        };
        // The part of the range inside this mapping, whole pages only.
        let from = first.max(offset).next_multiple_of(page);
        let to = last.min(offset + (hi - lo)) / page * page;
        if to <= from {
            continue;
        }
        // SAFETY: the pages lie inside a read-only mapping of an unchanged file; dropping
        // them loses nothing, the next access reads them again.
        if unsafe {
            libc::madvise(
                (lo + (from - offset)) as *mut libc::c_void,
                to - from,
                libc::MADV_DONTNEED,
            )
        } == 0
        {
            released += to - from;
        }
    }
    released
}

#[cfg(not(target_os = "linux"))]
fn release_mapped_range(_path: &Path, _first: usize, _last: usize) -> usize {
    0
}

fn c_path(path: &Path) -> Result<CString, SplitError> {
    path.to_str()
        .and_then(|s| CString::new(s).ok())
        .ok_or_else(|| SplitError::Unsupported(format!("path {} is not UTF-8", path.display())))
}

/// Rewrites rows of Q4_1 blocks as Q4_0 blocks (appended to `base`) and their offsets
/// `m + 8d` as f16 bit patterns (appended to `offsets`, one per block, row-major).
fn split_blocks(q4_1: &[u8], base: &mut Vec<u8>, offsets: &mut Vec<u16>) {
    debug_assert_eq!(q4_1.len() % Q4_1_BYTES, 0);
    for b in q4_1.chunks_exact(Q4_1_BYTES) {
        let d = u16::from_le_bytes([b[0], b[1]]);
        let m = u16::from_le_bytes([b[2], b[3]]);
        // SAFETY: pure conversions.
        let offset = unsafe {
            sys::ggml_fp32_to_fp16(sys::ggml_fp16_to_fp32(m) + 8.0 * sys::ggml_fp16_to_fp32(d))
        };
        base.extend_from_slice(&b[0..2]);
        base.extend_from_slice(&b[4..Q4_1_BYTES]);
        offsets.push(offset);
    }
}

/// `A` of the offsets: row `j` (of n_in/32) is 1 on input block `j`, 0 elsewhere (f16).
fn block_sum_matrix(n_in: usize) -> Vec<u16> {
    // SAFETY: pure conversion.
    let one = unsafe { sys::ggml_fp32_to_fp16(1.0) };
    let rank = n_in / BLOCK;
    let mut a = vec![0u16; rank * n_in];
    for j in 0..rank {
        a[j * n_in + j * BLOCK..j * n_in + (j + 1) * BLOCK].fill(one);
    }
    a
}

fn cache_key(src: &Path) -> Result<String, SplitError> {
    let meta = std::fs::metadata(src)?;
    let canonical = std::fs::canonicalize(src)?;
    // FNV-1a: stable across Rust versions (the std hasher is not).
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(canonical.to_string_lossy().as_bytes());
    h.write(&meta.len().to_le_bytes());
    if let Ok(t) = meta.modified() {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            h.write(&d.as_nanos().to_le_bytes());
        }
    }
    h.write(&SPLIT_LAYOUT_VERSION.to_le_bytes());
    Ok(format!("{:016x}", h.finish()))
}

pub(super) struct Fnv(pub(super) u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The split files of `src` under `cache_dir`, written on first use (atomically: a reader
/// never sees a half-written file); `None` when `src` has no Q4_1 matrices. A cached pair
/// is returned without parsing `src` at all (the loader parses the base's header anyway).
pub fn derive(src: &Path, cache_dir: &Path) -> Result<Option<SplitFiles>, SplitError> {
    let dir = cache_dir.join(cache_key(src)?);
    let files = SplitFiles {
        base: dir.join("base.gguf"),
        offsets: dir.join("offsets.gguf"),
    };
    let mark = |dir: &Path| -> Result<(), SplitError> {
        let source = std::fs::canonicalize(src)?;
        std::fs::write(dir.join(SOURCE_MARKER), source.to_string_lossy().as_bytes())?;
        remove_stale_derivations(cache_dir, dir, &source);
        Ok(())
    };
    if files.base.is_file() && files.offsets.is_file() {
        // Derived before directories were marked: marked (and swept) once now.
        if !dir.join(SOURCE_MARKER).is_file() {
            mark(&dir)?;
        }
        return Ok(Some(files));
    }
    let file = GgufFile::open(src)?;
    let tensors = file.tensors();
    if !tensors.iter().any(TensorInfo::is_q4_1_matrix) {
        return Ok(None);
    }
    std::fs::create_dir_all(&dir)?;
    // Marked first, so a sweep by another process never takes a directory being written.
    mark(&dir)?;
    let t = std::time::Instant::now();
    if let Err(e) = write_split(src, &file, &tensors, &files) {
        // Leave nothing behind for a file that cannot be split.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    tracing::info!(
        src = %src.display(),
        dir = %dir.display(),
        ms = t.elapsed().as_millis() as u64,
        "derived the Q4_0 + offsets layout of the Q4_1 model"
    );
    Ok(Some(files))
}

/// File in each derived directory naming the source it was derived from.
const SOURCE_MARKER: &str = "source";

/// Removes the directories derived earlier from `source` (an older layout version, or the
/// file as it was before it changed), those whose source is gone, and those without a
/// source marker (written before layouts had one): each holds a full copy of a model that
/// nothing will load again.
fn remove_stale_derivations(cache_dir: &Path, current: &Path, source: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path == current || !path.is_dir() {
            continue;
        }
        let stale = match std::fs::read_to_string(path.join(SOURCE_MARKER)) {
            Ok(s) => Path::new(&s) == source || !Path::new(&s).exists(),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if stale {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(dir = %path.display(), "removed a stale derived model"),
                Err(e) => tracing::debug!(dir = %path.display(), error = %e, "could not remove"),
            }
        }
    }
}

/// One tensor of an output file: its shape comes from `like` (pass-through) or `ne`.
pub(super) struct OutTensor {
    pub(super) name: String,
    pub(super) ggml_type: sys::ggml_type,
    pub(super) ne: [i64; 2],
    pub(super) like: Option<*mut sys::ggml_tensor>,
    pub(super) data: Vec<u8>,
}

fn write_split(
    src: &Path,
    file: &GgufFile,
    tensors: &[TensorInfo],
    files: &SplitFiles,
) -> Result<(), SplitError> {
    let arch = file
        .string("general.architecture")
        .ok_or_else(|| SplitError::Unsupported("no general.architecture".into()))?;
    let bytes = std::fs::read(src)?;
    let slice = |t: &TensorInfo| -> Result<&[u8], SplitError> {
        bytes
            .get(t.start..t.start + t.len)
            .ok_or_else(|| SplitError::Unsupported(format!("tensor {} past the end", t.name)))
    };
    let find = |name: &str| tensors.iter().find(|t| t.name == name);
    // Architectures whose loader reads a fused `attn_qkv` before separate Q, K, V.
    let fuse_qkv = arch == "llama";

    let mut base = Vec::new();
    let mut adapter = Vec::new();
    let mut split_one = |name: String, rows: Vec<&[u8]>, n_in: usize, n_out: usize| {
        let mut q4_0 = Vec::with_capacity(n_out * n_in / BLOCK * Q4_0_BYTES);
        let mut offsets = Vec::with_capacity(n_out * n_in / BLOCK);
        for r in rows {
            split_blocks(r, &mut q4_0, &mut offsets);
        }
        let rank = (n_in / BLOCK) as i64;
        adapter.push(OutTensor {
            name: format!("{name}.lora_a"),
            ggml_type: sys::GGML_TYPE_F16,
            ne: [n_in as i64, rank],
            like: None,
            data: u16_bytes(&block_sum_matrix(n_in)),
        });
        adapter.push(OutTensor {
            name: format!("{name}.lora_b"),
            ggml_type: sys::GGML_TYPE_F16,
            ne: [rank, n_out as i64],
            like: None,
            data: u16_bytes(&offsets),
        });
        OutTensor {
            name,
            ggml_type: sys::GGML_TYPE_Q4_0,
            ne: [n_in as i64, n_out as i64],
            like: None,
            data: q4_0,
        }
    };
    // Layers whose Q, K and V are all Q4_1 over the same input: written as one `attn_qkv`.
    let fused: Vec<&str> = if fuse_qkv {
        tensors
            .iter()
            .filter_map(|q| {
                let stem = q.name.strip_suffix(".attn_q.weight")?;
                let same = |x: Option<&TensorInfo>| {
                    x.is_some_and(|x| x.is_q4_1_matrix() && x.ne[0] == q.ne[0])
                };
                (q.is_q4_1_matrix()
                    && same(find(&format!("{stem}.attn_k.weight")))
                    && same(find(&format!("{stem}.attn_v.weight"))))
                .then_some(stem)
            })
            .collect()
    } else {
        Vec::new()
    };
    for t in tensors {
        if t.meta.is_null() {
            return Err(SplitError::Unsupported(format!(
                "tensor {} has no shape",
                t.name
            )));
        }
        if !t.is_q4_1_matrix() {
            base.push(OutTensor {
                name: t.name.clone(),
                ggml_type: t.ggml_type,
                ne: [0, 0],
                like: Some(t.meta),
                data: slice(t)?.to_vec(),
            });
            continue;
        }
        let n_in = t.ne[0] as usize;
        if let Some((stem, part)) = t.name.rsplit_once(".attn_") {
            if fused.contains(&stem) {
                if part == "q.weight" {
                    let (k, v) = (
                        find(&format!("{stem}.attn_k.weight")).expect("checked above"),
                        find(&format!("{stem}.attn_v.weight")).expect("checked above"),
                    );
                    let n_out = (t.ne[1] + k.ne[1] + v.ne[1]) as usize;
                    let rows = vec![slice(t)?, slice(k)?, slice(v)?];
                    base.push(split_one(
                        format!("{stem}.attn_qkv.weight"),
                        rows,
                        n_in,
                        n_out,
                    ));
                }
                // K and V are part of the fused tensor.
                if ["q.weight", "k.weight", "v.weight"].contains(&part) {
                    continue;
                }
            }
        }
        base.push(split_one(
            t.name.clone(),
            vec![slice(t)?],
            n_in,
            t.ne[1] as usize,
        ));
    }
    if adapter.is_empty() {
        return Err(SplitError::Unsupported("no Q4_1 matrices".into()));
    }

    // The loader maps the file and, once loaded, unmaps what lies before the first and after
    // the last tensor it reads in place. Matrices are copied out (repacked), so they go first
    // and the tensors used in place (embeddings, norms) last: the matrices' pages are then
    // unmapped instead of staying resident beside their copies.
    base.sort_by_key(used_in_place);
    write_gguf(&files.offsets, None, &adapter, Some(&arch))?;
    write_gguf(&files.base, Some(file.gguf), &base, None)?;
    Ok(())
}

/// Whether llama.cpp's CPU back-end reads this tensor in place from the mapped file rather
/// than copying it: vectors (norms, biases) and the embeddings (looked up by row, and the
/// output product where it is tied to them). A guess only orders the file; a wrong one
/// keeps more pages mapped, it changes no result.
fn used_in_place(t: &OutTensor) -> bool {
    let rows = match t.like {
        // SAFETY: `like` points into the source file's metadata context, alive while writing.
        Some(meta) => unsafe { (*meta).ne[1] },
        None => t.ne[1],
    };
    rows <= 1 || t.name.starts_with("token_embd.") || t.name.starts_with("output.")
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes a GGUF file through ggml's writer: key-values copied from `kv_from` (or the LoRA
/// adapter keys for `adapter_arch`), then the tensors. Written to a temporary name and
/// renamed into place.
pub(super) fn write_gguf(
    path: &Path,
    kv_from: Option<*mut sys::gguf_context>,
    tensors: &[OutTensor],
    adapter_arch: Option<&str>,
) -> Result<(), SplitError> {
    // Unique per process and call: two loads may derive the same files at once.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{call}", std::process::id()));
    let c_tmp = c_path(&tmp)?;
    let cstr =
        |s: &str| CString::new(s).map_err(|_| SplitError::Unsupported(format!("name {s:?}")));
    let names = tensors
        .iter()
        .map(|t| cstr(&t.name))
        .collect::<Result<Vec<_>, _>>()?;
    // SAFETY: every pointer handed to ggml lives until the end of this block (`tensors`,
    // `names`, the C strings); both contexts are freed on every path out of it.
    let ok = unsafe {
        let out = sys::gguf_init_empty();
        let ctx = sys::ggml_init(sys::ggml_init_params {
            mem_size: (tensors.len() + 1) * sys::ggml_tensor_overhead(),
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        });
        if out.is_null() || ctx.is_null() {
            return Err(SplitError::Write(path.into()));
        }
        if let Some(src) = kv_from {
            sys::gguf_set_kv(out, src);
        }
        if let Some(arch) = adapter_arch {
            let set = |k: &str, v: &str| -> Result<(), SplitError> {
                let (k, v) = (cstr(k)?, cstr(v)?);
                sys::gguf_set_val_str(out, k.as_ptr(), v.as_ptr());
                Ok(())
            };
            set("general.architecture", arch)?;
            set("general.type", "adapter")?;
            set("adapter.type", "lora")?;
            // Alpha 0: llama.cpp applies the adapter with its scale (1) as it is, not
            // alpha / rank.
            let k = cstr("adapter.lora.alpha")?;
            sys::gguf_set_val_f32(out, k.as_ptr(), 0.0);
        }
        for (t, name) in tensors.iter().zip(&names) {
            let g = match t.like {
                Some(src) => sys::ggml_dup_tensor(ctx, src),
                None => sys::ggml_new_tensor_2d(ctx, t.ggml_type, t.ne[0], t.ne[1]),
            };
            sys::ggml_set_name(g, name.as_ptr());
            if sys::ggml_nbytes(g) != t.data.len() {
                sys::gguf_free(out);
                sys::ggml_free(ctx);
                return Err(SplitError::Unsupported(format!(
                    "tensor {}: {} bytes of data for {} expected",
                    t.name,
                    t.data.len(),
                    sys::ggml_nbytes(g)
                )));
            }
            sys::gguf_add_tensor(out, g);
            sys::gguf_set_tensor_data(out, name.as_ptr(), t.data.as_ptr().cast());
        }
        let ok = sys::gguf_write_to_file(out, c_tmp.as_ptr(), false);
        sys::gguf_free(out);
        sys::ggml_free(ctx);
        ok
    };
    if !ok {
        let _ = std::fs::remove_file(&tmp);
        return Err(SplitError::Write(path.into()));
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16(x: f32) -> u16 {
        unsafe { sys::ggml_fp32_to_fp16(x) }
    }
    fn f32_of(x: u16) -> f32 {
        unsafe { sys::ggml_fp16_to_fp32(x) }
    }

    /// A Q4_1 block of (d, m, codes) dequantises to the same weights as the Q4_0 block plus
    /// the offset, and the block-sum row picks exactly that block.
    #[test]
    fn a_q4_1_block_is_its_q4_0_reading_plus_one_offset() {
        let (d, m) = (f16(0.0123), f16(-0.0917));
        let mut q4_1 = Vec::new();
        for (d, m, seed) in [(d, m, 3u8), (f16(0.5), f16(2.25), 11)] {
            q4_1.extend_from_slice(&d.to_le_bytes());
            q4_1.extend_from_slice(&m.to_le_bytes());
            q4_1.extend((0..16u8).map(|i| i.wrapping_mul(seed).wrapping_add(i >> 1)));
        }
        let (mut base, mut offsets) = (Vec::new(), Vec::new());
        split_blocks(&q4_1, &mut base, &mut offsets);
        assert_eq!(base.len(), 2 * Q4_0_BYTES);
        assert_eq!(offsets.len(), 2);
        for blk in 0..2 {
            let s = &q4_1[blk * Q4_1_BYTES..(blk + 1) * Q4_1_BYTES];
            let b = &base[blk * Q4_0_BYTES..(blk + 1) * Q4_0_BYTES];
            let d = f32_of(u16::from_le_bytes([s[0], s[1]]));
            let m = f32_of(u16::from_le_bytes([s[2], s[3]]));
            let d0 = f32_of(u16::from_le_bytes([b[0], b[1]]));
            for j in 0..BLOCK {
                // ggml's nibble order: element j < 16 is the low nibble of byte j, element
                // j + 16 the high one; the same in both types.
                let code = |bytes: &[u8]| {
                    if j < 16 {
                        bytes[j] & 15
                    } else {
                        bytes[j - 16] >> 4
                    }
                };
                let w = d * f32::from(code(&s[4..])) + m;
                let w0 = d0 * (f32::from(code(&b[2..])) - 8.0);
                let off = f32_of(offsets[blk]);
                // Equal up to the offset's rounding to f16 (relative 2^-11).
                assert!(
                    (w - (w0 + off)).abs() <= off.abs() * 1e-3 + 1e-6,
                    "block {blk} weight {j}: {w} vs {w0} + {off}"
                );
            }
        }
        let a = block_sum_matrix(64);
        let ones: Vec<usize> = (0..64).filter(|&i| f32_of(a[64 + i]) == 1.0).collect();
        assert_eq!(ones, (32..64).collect::<Vec<_>>());
        assert_eq!(a.iter().filter(|&&x| f32_of(x) != 0.0).count(), 64);
    }

    /// Deriving a model removes what was derived from the same file before, derivations of
    /// files that are gone and unmarked (pre-marker) directories; it keeps other models'.
    #[test]
    fn a_new_derivation_removes_the_stale_ones_of_its_source() {
        let cache = tempfile::tempdir().unwrap();
        let dir = |name: &str, source: Option<&str>| {
            let d = cache.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("base.gguf"), b"x").unwrap();
            if let Some(s) = source {
                std::fs::write(d.join(SOURCE_MARKER), s).unwrap();
            }
            d
        };
        let models = tempfile::tempdir().unwrap();
        let (a, b) = (models.path().join("a.gguf"), models.path().join("b.gguf"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        let current = dir("current", Some(a));
        let older = dir("older", Some(a));
        let other = dir("other", Some(b));
        let orphan = dir("orphan", Some("/no/such/model.gguf"));
        let legacy = dir("legacy", None);
        remove_stale_derivations(cache.path(), &current, Path::new(a));
        assert!(current.exists() && other.exists());
        assert!(!older.exists() && !orphan.exists() && !legacy.exists());
    }
}
