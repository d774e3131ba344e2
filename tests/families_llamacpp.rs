//! Logits and token ids of the qwen3 and gemma3 families against llama.cpp.
//!
//! Runs only when `RRM_LLAMACPP_PYTHON` names a python that can `import llama_cpp`
//! (llama-cpp-python in a throwaway environment; for a source tree also set `PYTHONPATH` to it
//! and `LLAMA_CPP_LIB_PATH` to the folder with `libllama.so`); otherwise every test prints that
//! it skipped and why. It runs `scripts/llamacpp/dump.py` on:
//! - tiny random qwen3 and gemma3 GGUFs (F32 weights) written by `infer::testing`;
//! - the real Gemma 3 270M (`gemma3-270m`) when it is in the model cache (`rrm models pull
//!   gemma3-270m`; `RRM_MODELS` or the default folder), nothing is downloaded here.
//!
//! Logits are compared at every position, through both of rrm's CPU paths: prompt rows
//! (f16 GEMM) and decoded rows (8-bit matmul). Tolerance: per position, the largest absolute
//! difference of the logits taken about their row's mean (a constant shift of a row changes no
//! probability; the real model's first positions after BOS show one of about 3 logits) at most
//! `TOL_*` times that position's logit range in llama.cpp (max − min), and the same top-1
//! token, except where llama.cpp's two best logits are within that tolerance of each other (a
//! near tie that rounding may flip). The raw largest difference is printed too.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use rrm::infer::fetch;
use rrm::infer::llama::LlamaModel;
use rrm::infer::testing::{tiny_gguf, TinyOptions};

/// Tiny F32 models: relative to the logit range.
const TOL_TINY: f32 = 2e-2;
/// The real Q4_K_M model: rrm requantizes to Q8_0 / f16, llama.cpp runs the file's types.
const TOL_REAL: f32 = 5e-2;

fn python() -> Option<PathBuf> {
    match std::env::var_os("RRM_LLAMACPP_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!(
                "SKIPPED: RRM_LLAMACPP_PYTHON is not set (a python with llama-cpp-python; see \
                 tests/families_llamacpp.rs and docs/models.md)"
            );
            None
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llamacpp/dump.py")
}

fn run_script(py: &Path, args: &[&std::ffi::OsStr]) {
    let out = Command::new(py).arg(script()).args(args).output().expect("running python");
    assert!(
        out.status.success(),
        "dump.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn llamacpp_logits(py: &Path, model: &Path, ids: &[u32], dir: &Path) -> Vec<Vec<f32>> {
    let input = dir.join("ids.json");
    std::fs::write(&input, serde_json::to_string(ids).unwrap()).unwrap();
    let out = dir.join("ref");
    run_script(py, &["logits".as_ref(), model.as_os_str(), input.as_os_str(), out.as_os_str()]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    let vocab = meta["vocab"].as_u64().unwrap() as usize;
    let bytes = std::fs::read(out.with_extension("f32")).unwrap();
    let flat: Vec<f32> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(flat.len(), ids.len() * vocab);
    flat.chunks_exact(vocab).map(|r| r.to_vec()).collect()
}

/// rrm's logits after every position, one token per step: as prompt rows (the whole sequence
/// declared the prompt) or as decoded rows (only the first token is the prompt).
fn rrm_logits(model: &LlamaModel, ids: &[u32], prompt: bool) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(ids.len()).unwrap();
    cache.set_prompt_len(if prompt { ids.len() } else { 1 });
    ids.iter()
        .map(|&t| {
            model.forward(&mut [(&[t][..], &mut cache)]).unwrap().to_vec2::<f32>().unwrap()[0]
                .clone()
        })
        .collect()
}

struct Agreement {
    /// Largest |ours − llama.cpp| over all positions and tokens.
    max_abs: f32,
    /// Largest per-position max |diff| / logit range, each row taken about its mean (a
    /// constant shift of a row changes no probability).
    max_rel: f32,
    top1_same: usize,
    /// Positions where the top-1 differs but llama.cpp's two best are a near tie.
    near_ties: usize,
    positions: usize,
}

fn mean(r: &[f32]) -> f32 {
    r.iter().map(|&x| x as f64).sum::<f64>() as f32 / r.len().max(1) as f32
}

fn argmax(r: &[f32]) -> usize {
    r.iter().enumerate().fold(0, |b, (i, &x)| if x > r[b] { i } else { b })
}

fn compare(ours: &[Vec<f32>], theirs: &[Vec<f32>], tol: f32) -> Agreement {
    let mut a =
        Agreement { max_abs: 0.0, max_rel: 0.0, top1_same: 0, near_ties: 0, positions: ours.len() };
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.len(), t.len(), "vocabulary sizes differ");
        let range =
            t.iter().copied().fold(f32::MIN, f32::max) - t.iter().copied().fold(f32::MAX, f32::min);
        let d = o.iter().zip(t).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        a.max_abs = a.max_abs.max(d);
        // A shift of a whole row changes no probability: compare the rows about their means.
        let (mo, mt) = (mean(o), mean(t));
        let dc = o.iter().zip(t).map(|(x, y)| ((x - mo) - (y - mt)).abs()).fold(0f32, f32::max);
        a.max_rel = a.max_rel.max(dc / range.max(1e-6));
        let (bo, bt) = (argmax(o), argmax(t));
        if bo == bt {
            a.top1_same += 1;
        } else if t[bt] - t[bo] <= tol * range {
            a.near_ties += 1;
        }
    }
    a
}

fn check(name: &str, model: &Path, ids: &[u32], tol: f32, py: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let theirs = llamacpp_logits(py, model, ids, dir.path());
    let m = LlamaModel::load(model, &Device::Cpu).unwrap().model;
    for (path, prompt) in [("prompt rows", true), ("decoded rows", false)] {
        let ours = rrm_logits(&m, ids, prompt);
        let a = compare(&ours, &theirs, tol);
        println!(
            "{name}, {path}: {} positions, max |diff| {:.4}, max |diff about the row means| / \
             logit range {:.4} (tolerance {tol}), top-1 same {}/{} (+{} near ties)",
            a.positions, a.max_abs, a.max_rel, a.top1_same, a.positions, a.near_ties
        );
        assert!(a.max_rel <= tol, "{name} {path}: {:.4} > {tol}", a.max_rel);
        assert_eq!(a.top1_same + a.near_ties, a.positions, "{name} {path}: top-1 differs");
    }
}

fn tiny_families() -> Vec<(&'static str, TinyOptions)> {
    vec![
        ("tiny qwen3", TinyOptions { arch: "qwen3", head_dim: Some(32), ..Default::default() }),
        (
            "tiny gemma3",
            TinyOptions {
                arch: "gemma3",
                n_layer: 6,
                head_dim: Some(32),
                sliding_window: Some(8),
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn tiny_models_match_llamacpp_logits() {
    let Some(py) = python() else { return };
    for (name, o) in tiny_families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_gguf(&path, 21, &o).unwrap();
        // Longer than the gemma3 window (8), so local and global layers differ.
        let ids: Vec<u32> = (0..40u32).map(|i| 7 + (i * 37) % 250).collect();
        check(name, &path, &ids, TOL_TINY, &py);
    }
}

fn cached_gemma3() -> Option<PathBuf> {
    let dir = fetch::models_dir(None);
    let model = fetch::registry_model("gemma3-270m")?;
    if !fetch::is_present(model, &dir) {
        eprintln!(
            "SKIPPED (real model): gemma3-270m is not in {} (rrm models pull gemma3-270m)",
            dir.display()
        );
        return None;
    }
    Some(fetch::model_folder(model, &dir).join(model.files[0].name))
}

const PROBES: &[&str] = &[
    "Hello world",
    " leading space",
    "  two leading spaces and trailing  ",
    "line one\nline two\n\nline four",
    "Café naïve résumé — “quotes” … 東京 🙂",
    "<start_of_turn>user\nSummarize this.<end_of_turn>\n<start_of_turn>model\n",
    "Numbers 1234567 and 3.14159, tabs\tand\ttabs",
    "The quick brown fox jumps over the lazy dog.",
    "ALL CAPS and MiXeD cAsE words",
    "\n\n\nthree newlines then text   ",
    "emoji 🤖🦀 and a combining e\u{301}",
    "<div>html</div> <0x0A> literal",
];

#[test]
fn real_gemma3_matches_llamacpp() {
    let Some(py) = python() else { return };
    let Some(path) = cached_gemma3() else { return };
    let loaded = LlamaModel::load(&path, &Device::Cpu).unwrap();
    // Token ids of the probes.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.json");
    std::fs::write(&input, serde_json::to_string(PROBES).unwrap()).unwrap();
    let out = dir.path().join("ids.json");
    run_script(&py, &["tokenize".as_ref(), path.as_os_str(), input.as_os_str(), out.as_os_str()]);
    let theirs: Vec<Vec<u32>> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let mut same = 0;
    for (text, want) in PROBES.iter().zip(&theirs) {
        let ours = loaded.tokenizer.encode(text).unwrap();
        if &ours == want {
            same += 1;
        } else {
            println!("tokenizer differs on {text:?}: rrm {ours:?}, llama.cpp {want:?}");
        }
    }
    println!("gemma3-270m tokenizer: {same}/{} probe strings give llama.cpp's ids", PROBES.len());
    assert_eq!(same, PROBES.len());
    // Logits over a chat-formatted prompt (BOS first, as llama.cpp adds it).
    let text = loaded
        .tokenizer
        .render_chat(&[rrm::infer::ChatMessage::user(
            "Summarize: Alice was beginning to get very tired of sitting by her sister on the \
             bank, and of having nothing to do.",
        )])
        .unwrap();
    let ids = loaded.tokenizer.encode(&text).unwrap();
    drop(loaded);
    check("gemma3-270m", &path, &ids, TOL_REAL, &py);
}

/// Any other GGUFs named in `RRM_LLAMACPP_GGUFS` (paths separated by `:`), e.g. a model
/// rewritten with F32 weights, which takes the weight types out of the comparison.
#[test]
fn listed_ggufs_match_llamacpp() {
    let Some(py) = python() else { return };
    let Some(list) = std::env::var_os("RRM_LLAMACPP_GGUFS").filter(|l| !l.is_empty()) else {
        eprintln!("SKIPPED (listed models): RRM_LLAMACPP_GGUFS is not set");
        return;
    };
    for path in std::env::split_paths(&list) {
        let loaded = LlamaModel::load(&path, &Device::Cpu).unwrap();
        let text = loaded
            .tokenizer
            .render_chat(&[rrm::infer::ChatMessage::user(
                "Summarize: Alice was beginning to get very tired of sitting by her sister on \
                 the bank, and of having nothing to do.",
            )])
            .unwrap();
        let ids = loaded.tokenizer.encode(&text).unwrap();
        drop(loaded);
        check(&path.display().to_string(), &path, &ids, TOL_REAL, &py);
    }
}
