//! The lite flavour's parked template on disk.
//!
//! Booting the template (`_start` up to the park) costs ~70 ms, once per process. After a
//! boot, the template's state is written next to the compiled module: the memory size, the
//! 4 KiB pages that differ from a fresh instance's memory, the parked stack pointer, the
//! driver's park report and the guest's monotonic time at the park. A later process restores
//! that into a fresh instance instead of booting, and the park report is checked against the
//! restored memory exactly as after a boot (`Park::read`).
//!
//! A file is used only when its key (module, rewrite, wasmtime, boot program, preopens, crate
//! and format versions) is the one wanted and its checksum holds: a stale, truncated or
//! corrupt file is ignored and overwritten by the next boot. What a restored template shares
//! with the process that booted it, and every process restored from the same file: the
//! interpreter's hash-randomisation secret (`PYTHONHASHSEED` state, drawn once at interpreter
//! start). That only makes `hash()` of str/bytes the same across those processes, as it
//! already is across the sessions of one process. The `random` module's state is reseeded
//! from the host's WASI random source when each session is configured (`boot` in driver.py).
//!
//! Layout: `MAGIC`, a u32 header length, the header (JSON), the page indices (u32 each), the
//! pages, and the sha256 of everything before it. All integers are little-endian.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Version of the file layout and of what a snapshot holds; part of the key.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// File-name extension of template snapshots in the cache directory.
pub const SNAPSHOT_EXTENSION: &str = "snap";
/// Granularity of the stored pages (independent of the host's page size).
const PAGE: usize = 4096;
/// wasm's page size: a memory's size is always a multiple of it.
const WASM_PAGE: usize = 65536;
const MAGIC: &[u8; 8] = b"SALITE\x00\x01";
const CHECKSUM: usize = 32;

/// Why a snapshot file was not used or not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// Reading, writing or renaming the file failed.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Truncated, corrupt, or not a snapshot at all.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// A valid file made for another module, boot program or version.
    #[error("the snapshot was made for another interpreter, boot program or version")]
    Stale,
    /// The restored memory does not hold a parked interpreter as the header says.
    #[error("the restored template is not usable: {0}")]
    Invalid(String),
    /// Instantiating or setting up the fresh instance failed.
    #[error(transparent)]
    Sandbox(#[from] crate::SandboxError),
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io {
        context,
        path,
        source,
    }
}

/// What a snapshot is valid for, hashed into its file name and header.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotKey {
    hash: String,
    module_sha: String,
}

impl SnapshotKey {
    /// `module_sha`: the .wasm's sha256, and `patch_tag` the versioned load-time rewrite: with
    /// both, the exact module bytes instantiated. `boot`: the `-c` program; `env`: the guest's
    /// environment; `guest_dirs`: the preopens, in order (wasi-libc keeps their table in linear
    /// memory, so a restore needs the same ones).
    pub(crate) fn new(
        module_sha: &str,
        patch_tag: &str,
        boot: &str,
        env: &[(&str, &str)],
        guest_dirs: &[&str],
    ) -> Self {
        let module_sha = module_sha.to_ascii_lowercase();
        let key = serde_json::json!({
            "format": SNAPSHOT_FORMAT,
            "module_sha256": module_sha,
            "patch": patch_tag,
            "wasmtime": crate::WASMTIME_VERSION,
            "crate": env!("CARGO_PKG_VERSION"),
            "boot_sha256": hex::encode(Sha256::digest(boot.as_bytes())),
            "env": env,
            "guest_dirs": guest_dirs,
        });
        let hash = hex::encode(Sha256::digest(key.to_string().as_bytes()));
        SnapshotKey { hash, module_sha }
    }

    /// The snapshot's path in `dir`.
    pub(crate) fn path_in(&self, dir: &Path) -> PathBuf {
        let m = &self.module_sha[..16.min(self.module_sha.len())];
        dir.join(format!(
            "lite-template-{m}-{}.{SNAPSHOT_EXTENSION}",
            &self.hash[..16]
        ))
    }
}

/// The header: everything but the pages.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    key: String,
    memory_size: u64,
    sp: i32,
    /// The guest's monotonic clock when the snapshot was taken.
    boot_elapsed_ns: u64,
    page_size: u32,
    pages: u32,
    /// The driver's park report, re-validated against the restored memory.
    park: Map<String, Value>,
}

/// A parked template's state, as taken from it or read from a file.
pub(crate) struct TemplateState<'a> {
    pub memory_size: usize,
    pub sp: i32,
    pub park: Map<String, Value>,
    pub boot_elapsed: Duration,
    /// Indices (in `PAGE`s) of the stored pages, ascending.
    pages: Vec<u32>,
    /// The stored pages, in the order of `pages`.
    data: &'a [u8],
}

impl TemplateState<'_> {
    /// Writes the stored pages over `dst` (a fresh instance's memory, grown to `memory_size`).
    pub(crate) fn apply(&self, dst: &mut [u8]) -> Result<(), SnapshotError> {
        if dst.len() != self.memory_size {
            return Err(SnapshotError::Invalid(format!(
                "memory is {} bytes, the snapshot's {}",
                dst.len(),
                self.memory_size
            )));
        }
        for (&i, page) in self.pages.iter().zip(self.data.chunks_exact(PAGE)) {
            let at = i as usize * PAGE;
            dst[at..at + PAGE].copy_from_slice(page);
        }
        Ok(())
    }
}

/// Parses and checks a snapshot file's bytes: magic, checksum, format, key, and that every
/// page lies inside the memory it describes. `max_memory` bounds the size it may claim.
pub(crate) fn parse<'a>(
    bytes: &'a [u8],
    key: &SnapshotKey,
    max_memory: usize,
) -> Result<TemplateState<'a>, SnapshotError> {
    let corrupt = |m: &str| SnapshotError::Corrupt(m.to_string());
    if bytes.len() < MAGIC.len() + 4 + CHECKSUM || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("no snapshot header"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if Sha256::digest(body).as_slice() != sum {
        return Err(corrupt("checksum mismatch (truncated or modified)"));
    }
    let rest = &body[MAGIC.len()..];
    let hlen = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    if hlen > rest.len() {
        return Err(corrupt("header longer than the file"));
    }
    let (head, rest) = rest.split_at(hlen);
    let h: Header =
        serde_json::from_slice(head).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if h.format != SNAPSHOT_FORMAT || h.key != key.hash {
        return Err(SnapshotError::Stale);
    }
    let memory_size = usize::try_from(h.memory_size).map_err(|_| corrupt("memory size"))?;
    if h.page_size as usize != PAGE
        || memory_size == 0
        || !memory_size.is_multiple_of(WASM_PAGE)
        || memory_size > max_memory
    {
        return Err(corrupt("memory or page size out of range"));
    }
    let n = h.pages as usize;
    if rest.len() != n * 4 + n * PAGE {
        return Err(corrupt("page count does not match the file's length"));
    }
    let (idx, data) = rest.split_at(n * 4);
    let pages: Vec<u32> = idx
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let in_order = pages.windows(2).all(|w| w[0] < w[1]);
    let inside = pages
        .last()
        .is_none_or(|&l| (l as usize + 1) * PAGE <= memory_size);
    if !in_order || !inside {
        return Err(corrupt("page index out of order or outside memory"));
    }
    Ok(TemplateState {
        memory_size,
        sp: h.sp,
        park: h.park,
        boot_elapsed: Duration::from_nanos(h.boot_elapsed_ns),
        pages,
        data,
    })
}

/// The `PAGE`s of `mem` that differ from `fresh` (a fresh instance's memory, zeros past its
/// end). On Linux only the pages the template wrote (pagemap) are compared: the rest are the
/// module's image, as in `fresh`.
pub(crate) fn changed_pages(mem: &[u8], fresh: &[u8]) -> Vec<u32> {
    let written = crate::fork_copy::written_pages(mem);
    let zero = [0u8; PAGE];
    (0..mem.len() / PAGE)
        .filter(|&i| match &written {
            Some((host_page, w)) => w.get(i * PAGE / host_page).copied().unwrap_or(true),
            None => true,
        })
        .filter(|&i| {
            let r = i * PAGE..(i + 1) * PAGE;
            mem[r.clone()] != *fresh.get(r).unwrap_or(&zero)
        })
        .map(|i| i as u32)
        .collect()
}

/// Temp-file names unique within the process, for templates saved concurrently.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The parts of a template that `write` stores.
pub(crate) struct Template<'a> {
    pub mem: &'a [u8],
    pub pages: &'a [u32],
    pub sp: i32,
    pub park: &'a Map<String, Value>,
    pub boot_elapsed: Duration,
}

/// Writes `t` to `path` atomically: a temp file in the same directory, renamed over it.
pub(crate) fn write(path: &Path, key: &SnapshotKey, t: &Template<'_>) -> Result<(), SnapshotError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let header = Header {
        format: SNAPSHOT_FORMAT,
        key: key.hash.clone(),
        memory_size: t.mem.len() as u64,
        sp: t.sp,
        boot_elapsed_ns: t.boot_elapsed.as_nanos() as u64,
        page_size: PAGE as u32,
        pages: t.pages.len() as u32,
        park: t.park.clone(),
    };
    let head = serde_json::to_vec(&header).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    let tmp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut out = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            sum: Sha256::new(),
        };
        let mut put = |b: &[u8]| out.write_all(b).map_err(io("writing", &tmp));
        put(MAGIC)?;
        put(&(head.len() as u32).to_le_bytes())?;
        put(&head)?;
        for &i in t.pages {
            put(&i.to_le_bytes())?;
        }
        for &i in t.pages {
            let at = i as usize * PAGE;
            put(&t.mem[at..at + PAGE])?;
        }
        let sum = out.sum.finalize();
        out.inner.write_all(&sum).map_err(io("writing", &tmp))?;
        out.inner
            .into_inner()
            .map_err(|e| io("writing", &tmp)(e.into_error()))?;
        std::fs::rename(&tmp, path).map_err(io("renaming", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        prune_superseded(dir, path, key);
    }
    result
}

/// Removes the other snapshots of the same module: written by older builds or settings, none
/// of them can match this build's key again.
pub(crate) fn prune_superseded(dir: &Path, kept: &Path, key: &SnapshotKey) {
    let m = &key.module_sha[..16.min(key.module_sha.len())];
    let prefix = format!("lite-template-{m}-");
    let suffix = format!(".{SNAPSHOT_EXTENSION}");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(&prefix) && name.ends_with(&suffix) && e.path() != kept {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

struct HashingWriter<W> {
    inner: W,
    sum: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SnapshotKey {
        SnapshotKey::new("ab".repeat(32).as_str(), "t", "boot", &[], &["/site/0"])
    }

    #[test]
    fn older_snapshots_of_the_same_module_are_pruned_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let kept = k.path_in(dir.path());
        let m = &k.module_sha[..16];
        let stale = dir
            .path()
            .join(format!("lite-template-{m}-0000.{SNAPSHOT_EXTENSION}"));
        let other = dir.path().join(format!(
            "lite-template-cdcdcdcdcdcdcdcd-0000.{SNAPSHOT_EXTENSION}"
        ));
        for p in [&kept, &stale, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        prune_superseded(dir.path(), &kept, &k);
        assert!(kept.exists() && other.exists() && !stale.exists());
    }

    #[test]
    fn round_trip_and_every_truncation_or_flip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key().path_in(dir.path());
        let mut mem = vec![0u8; 2 * WASM_PAGE];
        mem[5 * PAGE + 3] = 9;
        mem[17 * PAGE] = 1;
        let fresh = vec![0u8; WASM_PAGE];
        let pages = changed_pages(&mem, &fresh);
        assert_eq!(pages, vec![5, 17]);
        let park: Map<String, Value> = serde_json::from_str(r#"{"op":"park","sys":7}"#).unwrap();
        let t = Template {
            mem: &mem,
            pages: &pages,
            sp: 1234,
            park: &park,
            boot_elapsed: Duration::from_millis(70),
        };
        write(&path, &key(), &t).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let s = parse(&bytes, &key(), 1 << 30).unwrap();
        assert_eq!((s.sp, s.memory_size, &s.park), (1234, mem.len(), &park));
        assert_eq!(s.boot_elapsed, Duration::from_millis(70));
        let mut dst = vec![0u8; mem.len()];
        s.apply(&mut dst).unwrap();
        assert_eq!(dst, mem);
        for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(parse(&bytes[..cut], &key(), 1 << 30).is_err(), "cut {cut}");
        }
        for at in [3, 12, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            assert!(parse(&b, &key(), 1 << 30).is_err(), "flip at {at}");
        }
        let other = SnapshotKey::new("ab".repeat(32).as_str(), "t", "boot2", &[], &["/site/0"]);
        assert!(matches!(
            parse(&bytes, &other, 1 << 30),
            Err(SnapshotError::Stale)
        ));
        assert!(parse(&bytes, &key(), WASM_PAGE).is_err());
    }
}
