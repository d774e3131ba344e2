//! Training checkpoints that survive a kill at any moment.
//!
//! A checkpoint is a folder `ckpt-<step>` in the run folder holding `weights.safetensors` (the
//! trainable tensors), `optim.safetensors` (the optimizer's moments) and `state.json` (the
//! trainer's own state, and the blake3 of both tensor files). It is written under a temporary
//! name, every file synced, then renamed into place: a folder named `ckpt-<step>` is always
//! complete. The newest one is the latest; older ones beyond `keep` are deleted after the new
//! one is in place. Loading checks the hashes, so a damaged checkpoint is an error naming it,
//! never a silently different model.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{io_err, LmError};

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIM_FILE: &str = "optim.safetensors";
pub const STATE_FILE: &str = "state.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    step: usize,
    weights_blake3: String,
    optim_blake3: String,
    state: serde_json::Value,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub step: usize,
    pub weights: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
    /// The trainer's state as saved.
    pub state: serde_json::Value,
}

fn ckpt_err(path: &Path, reason: impl std::fmt::Display) -> LmError {
    LmError::Checkpoint { path: path.to_path_buf(), reason: reason.to_string() }
}

fn hash_file(path: &Path) -> Result<String, LmError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

fn sync(path: &Path) -> Result<(), LmError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| io_err(path, e))
}

fn write_tensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<String, LmError> {
    let cpu: HashMap<String, Tensor> = map
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&cpu, path).map_err(|e| ckpt_err(path, e))?;
    sync(path)?;
    hash_file(path)
}

/// The complete checkpoints in `run_dir`, oldest first, as (step, folder).
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("ckpt-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Writes checkpoint `step` atomically, then keeps only the newest `keep` (at least 1).
pub fn save(
    run_dir: &Path,
    step: usize,
    weights: &HashMap<String, Tensor>,
    optim: &HashMap<String, Tensor>,
    state: &serde_json::Value,
    keep: usize,
) -> Result<PathBuf, LmError> {
    std::fs::create_dir_all(run_dir).map_err(|e| io_err(run_dir, e))?;
    let tmp = run_dir.join(format!(".ckpt-{step}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let weights_blake3 = write_tensors(weights, &tmp.join(WEIGHTS_FILE))?;
    let optim_blake3 = write_tensors(optim, &tmp.join(OPTIM_FILE))?;
    let file =
        StateFile { format: FORMAT, step, weights_blake3, optim_blake3, state: state.clone() };
    let state_path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(&file).map_err(|e| ckpt_err(&state_path, e))?;
    std::fs::write(&state_path, json).map_err(|e| io_err(&state_path, e))?;
    sync(&state_path)?;
    let dest = run_dir.join(format!("ckpt-{step:08}"));
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| io_err(&dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
    let _ = File::open(run_dir).and_then(|d| d.sync_all());
    let all = list(run_dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dest)
}

/// Loads one checkpoint folder, checking its files against their recorded hashes.
pub fn load(path: &Path) -> Result<Loaded, LmError> {
    let state_path = path.join(STATE_FILE);
    let text = std::fs::read(&state_path).map_err(|e| io_err(&state_path, e))?;
    let file: StateFile = serde_json::from_slice(&text).map_err(|e| ckpt_err(&state_path, e))?;
    if file.format != FORMAT {
        return Err(ckpt_err(&state_path, format!("unknown format {}", file.format)));
    }
    let read = |name: &str, want: &str| -> Result<HashMap<String, Tensor>, LmError> {
        let p = path.join(name);
        let bytes = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
        if blake3::hash(&bytes).to_hex().as_str() != want {
            return Err(ckpt_err(&p, "does not match its recorded hash (damaged)"));
        }
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| ckpt_err(&p, e))
    };
    let weights = read(WEIGHTS_FILE, &file.weights_blake3)?;
    let optim = read(OPTIM_FILE, &file.optim_blake3)?;
    Ok(Loaded { path: path.to_path_buf(), step: file.step, weights, optim, state: file.state })
}

/// The newest checkpoint of `run_dir`, if any; leftover temporary folders are removed.
pub fn load_latest(run_dir: &Path) -> Result<Option<Loaded>, LmError> {
    if let Ok(entries) = std::fs::read_dir(run_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".ckpt-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    match list(run_dir).pop() {
        Some((_, path)) => load(&path).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_keeps_the_newest_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let t = |x: f32| Tensor::new(&[x, x + 1.0], &Device::Cpu).unwrap();
        let mut w = HashMap::new();
        for step in [10, 20, 30] {
            w.insert("a".to_string(), t(step as f32));
            let o = HashMap::from([("a.m".to_string(), t(0.5))]);
            save(dir.path(), step, &w, &o, &serde_json::json!({"epoch": step}), 2).unwrap();
        }
        // A half-written one (as after a kill) is ignored and cleaned up.
        std::fs::create_dir_all(dir.path().join(".ckpt-40.tmp-1")).unwrap();
        let steps: Vec<usize> = list(dir.path()).iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![20, 30]);
        let got = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(got.step, 30);
        assert_eq!(got.state["epoch"], 30);
        assert_eq!(got.weights["a"].to_vec1::<f32>().unwrap(), vec![30.0, 31.0]);
        assert!(!dir.path().join(".ckpt-40.tmp-1").exists());
        // Damage is detected.
        std::fs::write(got.path.join(WEIGHTS_FILE), b"junk").unwrap();
        let err = load_latest(dir.path()).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains(WEIGHTS_FILE), "{err}");
        assert!(load_latest(&dir.path().join("none")).unwrap().is_none());
    }
}
