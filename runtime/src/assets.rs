//! Where the runtime's installed assets are: the default model, the Python interpreters and
//! the default knowledge shard, all under `$SMALL_AGENT_HOME`.
use std::{path::PathBuf, sync::Arc};

use small_agent_models::{Catalog, Store, DEFAULT_LLM};
use small_agent_sandbox::{Flavour, PythonBackend, PythonRuntimeFiles};

/// Name of the default shard under `$SMALL_AGENT_HOME/shards/`.
pub const DEFAULT_SHARD: &str = "wiki-summaries-en";
/// The corpus asset the default shard is built from.
pub const DEFAULT_SHARD_ASSET: &str = "wiki-summaries-en";

/// Pure-Python wheels the lite interpreter imports from when they are installed
/// (`small-agent models fetch lite-sympy lite-mpmath`); the full one has them compiled in.
pub const LITE_SITE_PACKAGES: &[&str] = &["lite-sympy", "lite-mpmath"];

/// Errors of locating or loading an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The manifest layer failed (unknown asset, no home directory, fetch failure).
    #[error(transparent)]
    Models(#[from] small_agent_models::Error),
    /// An asset is not installed; the message says which command installs it.
    #[error("{what} is not installed: {fix}")]
    NotInstalled {
        /// What is missing.
        what: String,
        /// The command that installs it.
        fix: String,
    },
    /// The interpreter could not be loaded.
    #[error(transparent)]
    Sandbox(#[from] small_agent_sandbox::SandboxError),
}

/// Path of the fetched default model.
pub fn default_model_path() -> Result<PathBuf, AssetError> {
    let catalog = Catalog::builtin()?;
    Ok(Store::from_env()?.primary_path(catalog.require(DEFAULT_LLM)?))
}

/// A built-in distilled student, ready to run on the default model: its adapter (written
/// into the cache from the binary on first use) and its prompt.
#[derive(Debug, Clone)]
pub struct InstalledStudent {
    /// The student's name (`models/students/<name>.toml`).
    pub name: String,
    /// The adapter GGUF in the cache.
    pub adapter: PathBuf,
    /// The prompt template it was trained with.
    pub template: crate::agent::PromptTemplate,
    /// The template's TOML text, for records.
    pub prompt_text: String,
    /// Where the template came from (`models/prompts/<file>`), for records.
    pub prompt_name: String,
}

/// The built-in student marked as the default (what `ask`, `eval` and `serve` run unless
/// told otherwise), installed into the cache; `None` when this build marks none.
pub fn default_student() -> Result<Option<InstalledStudent>, AssetError> {
    small_agent_models::Student::default_student()?
        .map(install)
        .transpose()
}

/// The built-in student called `name` (`--student NAME`), installed into the cache.
pub fn student(name: &str) -> Result<InstalledStudent, AssetError> {
    install(small_agent_models::Student::named(name)?)
}

/// The student a command runs: the one named (`--student NAME`), else none when `bare` (the
/// command chose the base, another model or an adapter), else the default student if any.
pub fn chosen_student(
    name: Option<&str>,
    bare: bool,
) -> Result<Option<InstalledStudent>, AssetError> {
    match name {
        Some(name) => student(name).map(Some),
        None if bare => Ok(None),
        None => default_student(),
    }
}

/// Checks the student against the default model and writes its adapter into the cache. A
/// student trained on another base than the default model is an error (a stale build).
fn install(student: small_agent_models::Student) -> Result<InstalledStudent, AssetError> {
    let m = &student.manifest;
    if m.base != DEFAULT_LLM {
        return Err(small_agent_models::Error::StudentInvalid {
            name: m.name.clone(),
            reason: format!(
                "it was trained on {}, the default model is {DEFAULT_LLM}",
                m.base
            ),
        }
        .into());
    }
    let prompt_name = format!("models/prompts/{}", m.prompt);
    let template =
        crate::agent::PromptTemplate::parse(&prompt_name, student.prompt_text).map_err(|e| {
            small_agent_models::Error::StudentInvalid {
                name: m.name.clone(),
                reason: e.to_string(),
            }
        })?;
    let adapter = Store::from_env()?.install_student(&student)?;
    Ok(InstalledStudent {
        name: m.name.clone(),
        adapter,
        template,
        prompt_text: student.prompt_text.to_owned(),
        prompt_name,
    })
}

/// Directory of the default knowledge shard.
pub fn default_shard_dir() -> Result<PathBuf, AssetError> {
    Ok(Store::from_env()?.home().join("shards").join(DEFAULT_SHARD))
}

/// Directory of the default knowledge shard, once it is built.
pub fn built_default_shard_dir() -> Result<PathBuf, AssetError> {
    let d = default_shard_dir()?;
    if !d.exists() {
        return Err(AssetError::NotInstalled {
            what: format!("the default knowledge shard {}", d.display()),
            fix: "run scripts/setup.sh or `small-agent index build --default`, or name another \
                  shard directory (--index DIR; shard_path in the C ABI)"
                .into(),
        });
    }
    Ok(d)
}

/// Loads an interpreter back-end from the verified assets; the compiled module is cached
/// under `$SMALL_AGENT_HOME/cache/wasm` (the first load of the full flavour compiles it,
/// ~80 s; later loads deserialize it in milliseconds).
pub fn python_backend(flavour: Flavour) -> Result<Arc<dyn PythonBackend>, AssetError> {
    let catalog = Catalog::builtin()?;
    let store = Store::from_env()?;
    let (asset, wasm_name) = match flavour {
        Flavour::Full => ("python-wasm-full", "python-snapshot.wasm"),
        Flavour::Lite => ("python-wasm-lite", "python-3.12.0.wasm"),
    };
    let m = catalog.require(asset)?;
    if !store.is_installed(m) {
        return Err(AssetError::NotInstalled {
            what: format!("the {} Python interpreter", flavour.as_str()),
            fix: format!("run `small-agent models fetch {asset}`"),
        });
    }
    let wasm_sha256 = m
        .files
        .iter()
        .find(|f| f.installed_name() == wasm_name)
        .map(|f| f.sha256.clone());
    let files = PythonRuntimeFiles {
        flavour,
        wasm: store.file_path(m, wasm_name),
        // Verified by the store: saves hashing the module at every start.
        wasm_sha256,
        stdlib_zip: (flavour == Flavour::Full).then(|| store.file_path(m, "python-stdlib.zip")),
        site_packages: match flavour {
            Flavour::Full => vec![],
            Flavour::Lite => {
                let mut site = Vec::new();
                for name in LITE_SITE_PACKAGES {
                    let w = catalog.require(name)?;
                    if store.is_installed(w) {
                        site.push(store.primary_path(w));
                    } else {
                        tracing::info!(
                            asset = name,
                            "not installed: the lite interpreter runs without it"
                        );
                    }
                }
                site
            }
        },
    };
    let cache = store.home().join("cache").join("wasm");
    let t = std::time::Instant::now();
    let backend = small_agent_sandbox::load_backend(&files, Some(&cache))?;
    tracing::info!(
        flavour = flavour.as_str(),
        ms = t.elapsed().as_millis() as u64,
        source = ?backend.load_report().module_source,
        "python back-end loaded"
    );
    Ok(backend)
}
