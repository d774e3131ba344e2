//! Tests of the Hugging Face conversion on tiny random models (logits round trips through the
//! trainer live in `tests/hf_roundtrip.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use super::*;
use crate::infer::testing::{tiny_gguf, TinyOptions};
use crate::infer::tokenizer::GgufTokenizer;

fn tiny(dir: &Path, arch: &'static str, tied: bool) -> PathBuf {
    let path = dir.join(format!("tiny-{arch}-{tied}.gguf"));
    let o = TinyOptions { arch, tied, ..TinyOptions::default() };
    tiny_gguf(&path, 7, &o).unwrap();
    path
}

/// Every tensor of a GGUF file, dequantized.
fn gguf_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut f = std::fs::File::open(path).unwrap();
    let c = Content::read(&mut f).unwrap();
    let mut names: Vec<String> = c.tensor_infos.keys().cloned().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = c.tensor(&mut f, &n, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
            (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn parts_tensors(parts: &GgufParts) -> BTreeMap<String, Vec<f32>> {
    parts
        .tensors
        .iter()
        .map(|(n, q)| {
            let t = q.dequantize(&Device::Cpu).unwrap();
            (n.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn gguf_metadata(path: &Path) -> HashMap<String, Value> {
    let mut f = std::fs::File::open(path).unwrap();
    Content::read(&mut f).unwrap().metadata
}

fn md_map(parts: &GgufParts) -> HashMap<String, Value> {
    parts.metadata.iter().cloned().collect()
}

fn export(dir: &Path, gguf: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    export_hf(gguf, &out, HfDType::F32).unwrap();
    out
}

#[test]
fn names_map_both_ways() {
    for (hf, g) in [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.layers.3.self_attn.q_proj.bias", "blk.3.attn_q.bias"),
        ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
        ("model.layers.12.post_attention_layernorm.weight", "blk.12.ffn_norm.weight"),
    ] {
        assert_eq!(gguf_name(hf).as_deref(), Some(g));
        assert_eq!(hf_name(g).as_deref(), Some(hf));
    }
    assert_eq!(
        gguf_name("layers.1.self_attn.o_proj.weight").as_deref(),
        Some("blk.1.attn_output.weight")
    );
    assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    assert_eq!(gguf_name("score.weight"), None);
}

#[test]
fn permute_is_llama_cpp_interleaving_and_unpermute_inverts_it() {
    // 2 heads of dimension 4, one column: rows [h0: 0 1 2 3, h1: 4 5 6 7].
    let t = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap().reshape((8, 1)).unwrap();
    let p = permute_rows(&t, 2).unwrap();
    let rows: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
    // Inside a head, pairs (i, i + d/2) become neighbours.
    assert_eq!(rows, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    let back = unpermute_rows(&p, 2).unwrap();
    assert_eq!(
        back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        (0..8).map(|x| x as f32).collect::<Vec<_>>()
    );
    // 1-D biases too.
    let b = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap();
    assert_eq!(unpermute_rows(&permute_rows(&b, 2).unwrap(), 2).unwrap().dims(), &[8]);
}

#[test]
fn export_then_convert_gives_back_every_tensor_and_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, tied) in [("llama", true), ("llama", false), ("qwen2", false), ("qwen2", true)] {
        let gguf = tiny(dir.path(), arch, tied);
        let hf = export(dir.path(), &gguf, &format!("{arch}-{tied}"));
        let config = read_json(&hf.join(CONFIG_FILE)).unwrap();
        assert_eq!(config["model_type"], arch);
        assert_eq!(config["tie_word_embeddings"], tied);
        let parts = convert_folder(&hf).unwrap();
        let (want, got) = (gguf_tensors(&gguf), parts_tensors(&parts));
        assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "{arch}");
        for (name, w) in &want {
            assert_eq!(w, &got[name], "{arch} tied={tied}: {name}");
        }
        assert_eq!(parts.tensors[0].0, "token_embd.weight");
        // The exported safetensors hold Hugging Face's (un-permuted) Q for llama.
        let st = import::read_safetensors(&hf.join(WEIGHTS_FILE)).unwrap();
        let q: Vec<f32> = st
            .iter()
            .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
            .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
            .unwrap();
        let gguf_q = &want["blk.0.attn_q.weight"];
        assert_eq!(&q == gguf_q, arch == "qwen2", "{arch}: Q permuted only for llama");
        let md = md_map(&parts);
        let orig = gguf_metadata(&gguf);
        for key in [
            "general.architecture".to_string(),
            format!("{arch}.block_count"),
            format!("{arch}.attention.head_count_kv"),
            format!("{arch}.embedding_length"),
            "tokenizer.ggml.bos_token_id".into(),
            "tokenizer.ggml.eos_token_id".into(),
            "tokenizer.chat_template".into(),
            "tokenizer.ggml.pre".into(),
        ] {
            assert_eq!(format!("{:?}", md.get(&key)), format!("{:?}", orig.get(&key)), "{key}");
        }
    }
}

#[test]
fn tokenizer_round_trips_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), "llama", true);
    let hf = export(dir.path(), &gguf, "hf");
    let original = GgufTokenizer::from_metadata(&gguf_metadata(&gguf)).unwrap();
    let saved = tokenizers::Tokenizer::from_file(hf.join(TOKENIZER_FILE)).unwrap();
    let parts = convert_folder(&hf).unwrap();
    let converted = GgufTokenizer::from_metadata(&md_map(&parts)).unwrap();
    for text in [
        "the heat in the tin",
        "<|im_start|>user\nHi there 12345!<|im_end|>\n<|im_start|>assistant\n",
        "  spaces\tand\n\nnewlines, café 🙂 <|endoftext|>",
    ] {
        let want = original.encode(text).unwrap();
        let hf_ids = saved.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(hf_ids, want, "tokenizer.json: {text:?}");
        assert_eq!(converted.encode(text).unwrap(), want, "converted: {text:?}");
    }
    // Special tokens are one id each, and control-typed after the round trip.
    assert_eq!(original.encode("<|im_start|>").unwrap(), vec![1]);
    let md = md_map(&parts);
    let types = md["tokenizer.ggml.token_type"].to_vec().unwrap();
    assert!(matches!(types[1], Value::I32(3)) && matches!(types[10], Value::I32(1)));
    let tc = read_json(&hf.join(TOKENIZER_CONFIG_FILE)).unwrap();
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert!(tc["chat_template"].as_str().unwrap().contains("im_start"));
}

/// Splits `hf`'s model.safetensors into two shards with an index, as transformers saves large
/// models.
fn shard(hf: &Path) {
    let tensors = import::read_safetensors(&hf.join(WEIGHTS_FILE)).unwrap();
    let half = tensors.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, chunk) in [&tensors[..half], &tensors[half..]].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let m: HashMap<String, Tensor> = chunk.iter().cloned().collect();
        candle_core::safetensors::save(&m, hf.join(&file)).unwrap();
        for (n, _) in chunk.iter() {
            map.insert(n.clone(), serde_json::json!(file));
        }
    }
    std::fs::remove_file(hf.join(WEIGHTS_FILE)).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(hf.join(INDEX_FILE), index.to_string()).unwrap();
}

#[test]
fn a_sharded_checkpoint_converts_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), "qwen2", false);
    let single = export(dir.path(), &gguf, "single");
    let sharded = export(dir.path(), &gguf, "sharded");
    shard(&sharded);
    assert!(is_causal_lm_dir(&sharded));
    let a = convert_folder(&single).unwrap();
    let b = convert_folder(&sharded).unwrap();
    assert_eq!(parts_tensors(&a), parts_tensors(&b));
    // Through the cache: written once, read back the second time.
    let models = dir.path().join("models");
    let path = cached_conversion(&sharded, &models).unwrap();
    assert_eq!(gguf_tensors(&path), gguf_tensors(&gguf));
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert_eq!(cached_conversion(&sharded, &models).unwrap(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), modified);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
    // A missing shard is named.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let err = convert_folder(&sharded).unwrap_err();
    assert!(matches!(err, HfError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("model-00002-of-00002.safetensors"), "{err}");
}

/// A random PEFT adapter on `targets` of every block of `base_hf`, written into `out`.
fn random_adapter(base_hf: &Path, out: &Path, targets: &[&str], r: usize, rslora: bool) {
    let config = read_json(&base_hf.join(CONFIG_FILE)).unwrap();
    let layers = config["num_hidden_layers"].as_u64().unwrap() as usize;
    let st = import::read_safetensors(&base_hf.join(WEIGHTS_FILE)).unwrap();
    let shapes: HashMap<String, Vec<usize>> =
        st.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
    let mut tensors = HashMap::new();
    for i in 0..layers {
        for t in targets {
            let module =
                if ["gate_proj", "up_proj", "down_proj"].contains(t) { "mlp" } else { "self_attn" };
            let name = format!("model.layers.{i}.{module}.{t}");
            let dims = &shapes[&format!("{name}.weight")];
            let a = Tensor::randn(0f32, 0.3, (r, dims[1]), &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 0.3, (dims[0], r), &Device::Cpu).unwrap();
            tensors.insert(format!("base_model.model.{name}.lora_A.weight"), a);
            tensors.insert(format!("base_model.model.{name}.lora_B.weight"), b);
        }
    }
    std::fs::create_dir_all(out).unwrap();
    candle_core::safetensors::save(&tensors, out.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let cfg = serde_json::json!({
        "peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": targets,
        "use_rslora": rslora, "fan_in_fan_out": false,
        "base_model_name_or_path": base_hf.to_string_lossy(),
    });
    std::fs::write(out.join(ADAPTER_CONFIG_FILE), cfg.to_string()).unwrap();
}

#[test]
fn an_adapter_merged_into_the_gguf_equals_merging_it_in_hugging_face_layout() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, rslora) in [("llama", false), ("qwen2", true)] {
        let gguf = tiny(dir.path(), arch, true);
        let base = export(dir.path(), &gguf, &format!("base-{arch}"));
        let adapter_dir = dir.path().join(format!("adapter-{arch}"));
        random_adapter(
            &base,
            &adapter_dir,
            &["q_proj", "k_proj", "v_proj", "down_proj"],
            4,
            rslora,
        );
        // Through the GGUF: B's rows permuted like the weight's.
        let models = dir.path().join("models");
        let converted = cached_conversion(&base, &models).unwrap();
        let merged = cached_merge(&converted, &adapter_dir, &models).unwrap();
        // By hand in Hugging Face layout: W += scale·B·A, then converted.
        let manual = dir.path().join(format!("manual-{arch}"));
        std::fs::create_dir_all(&manual).unwrap();
        for f in [CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, GENERATION_CONFIG_FILE] {
            std::fs::copy(base.join(f), manual.join(f)).unwrap();
        }
        let adapter = import::read_safetensors(&adapter_dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
        let adapter: HashMap<String, Tensor> = adapter.into_iter().collect();
        let scale = if rslora { 16.0 / 2.0 } else { 16.0 / 4.0 };
        let weights: HashMap<String, Tensor> = import::read_safetensors(&base.join(WEIGHTS_FILE))
            .unwrap()
            .into_iter()
            .map(|(n, w)| {
                let module = n.strip_suffix(".weight").unwrap_or(&n);
                let a = adapter.get(&format!("base_model.model.{module}.lora_A.weight"));
                let b = adapter.get(&format!("base_model.model.{module}.lora_B.weight"));
                let w = match (a, b) {
                    (Some(a), Some(b)) => (w + (b.matmul(a).unwrap() * scale).unwrap()).unwrap(),
                    _ => w,
                };
                (n, w)
            })
            .collect();
        candle_core::safetensors::save(&weights, manual.join(WEIGHTS_FILE)).unwrap();
        let want = parts_tensors(&convert_folder(&manual).unwrap());
        let got = gguf_tensors(&merged);
        let mut worst = 0f32;
        for (name, w) in &want {
            let g = &got[name];
            worst = w.iter().zip(g).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
        }
        assert!(worst < 1e-5, "{arch}: merged weights differ by {worst}");
        assert_ne!(gguf_tensors(&converted)["blk.0.attn_q.weight"], got["blk.0.attn_q.weight"]);
    }
}

#[test]
fn bad_input_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny(dir.path(), "llama", true);
    let hf = export(dir.path(), &gguf, "hf");
    let copy = |name: &str| -> PathBuf {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&hf).unwrap().filter_map(|e| e.ok()) {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let edit_config = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = read_json(&d.join(CONFIG_FILE)).unwrap();
        f(&mut c);
        std::fs::write(d.join(CONFIG_FILE), c.to_string()).unwrap();
    };

    let d = copy("no-config");
    std::fs::remove_file(d.join(CONFIG_FILE)).unwrap();
    let err = convert_folder(&d).unwrap_err();
    assert!(
        matches!(err, HfError::Missing { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );

    let d = copy("no-tokenizer");
    std::fs::remove_file(d.join(TOKENIZER_FILE)).unwrap();
    let err = convert_folder(&d).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let d = copy("gemma");
    edit_config(&d, &|c| c["model_type"] = "gemma".into());
    let err = convert_folder(&d).unwrap_err();
    assert!(
        matches!(err, HfError::UnknownModelType { ref model_type, .. } if model_type == "gemma"),
        "{err}"
    );
    assert!(is_causal_lm_dir(&d), "a causal LM of another family must not pass as an encoder");

    let d = copy("shape");
    edit_config(&d, &|c| c["intermediate_size"] = 100.into());
    let err = convert_folder(&d).unwrap_err();
    assert!(matches!(err, HfError::Shape { .. }), "{err}");
    assert!(
        err.to_string().contains("model.safetensors") && err.to_string().contains("mlp"),
        "{err}"
    );

    let d = copy("layers");
    edit_config(&d, &|c| c["num_hidden_layers"] = 3.into());
    let err = convert_folder(&d).unwrap_err();
    assert!(
        matches!(err, HfError::Missing { .. }) && err.to_string().contains("layers.2"),
        "{err}"
    );

    // transformers 5 keeps the RoPE base in `rope_parameters`.
    let d = copy("rope-parameters");
    edit_config(&d, &|c| {
        c.as_object_mut().unwrap().remove("rope_theta");
        c["rope_parameters"] = serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"});
    });
    let md = md_map(&convert_folder(&d).unwrap());
    assert!(matches!(md["llama.rope.freq_base"], Value::F32(x) if x == 500_000.0));
    edit_config(&d, &|c| c["rope_parameters"]["rope_type"] = "yarn".into());
    assert!(matches!(convert_folder(&d).unwrap_err(), HfError::Unsupported { .. }));

    let d = copy("scaling");
    edit_config(&d, &|c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})
    });
    assert!(matches!(convert_folder(&d).unwrap_err(), HfError::Unsupported { .. }));

    let d = copy("garbage");
    std::fs::write(d.join(WEIGHTS_FILE), b"not safetensors").unwrap();
    let err = convert_folder(&d).unwrap_err();
    assert!(
        matches!(err, HfError::Malformed { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    let d = copy("wordpiece");
    let mut t = read_json(&d.join(TOKENIZER_FILE)).unwrap();
    t["model"]["type"] = "WordPiece".into();
    std::fs::write(d.join(TOKENIZER_FILE), t.to_string()).unwrap();
    assert!(matches!(convert_folder(&d).unwrap_err(), HfError::Unsupported { .. }));

    // An adapter for another base: its matrices do not fit.
    let models = dir.path().join("models");
    let base = cached_conversion(&hf, &models).unwrap();
    let other = dir.path().join("other.gguf");
    let o = TinyOptions { hidden: 32, n_head: 2, n_kv_head: 1, ffn: 48, ..TinyOptions::default() };
    tiny_gguf(&other, 3, &o).unwrap();
    let other_hf = export(dir.path(), &other, "other-hf");
    let adapter = dir.path().join("adapter");
    random_adapter(&other_hf, &adapter, &["q_proj"], 2, false);
    let err = cached_merge(&base, &adapter, &models).unwrap_err();
    assert!(matches!(err, HfError::AdapterMismatch { .. }), "{err}");
    assert!(err.to_string().contains("q_proj"), "{err}");

    // DoRA, and an adapter without weights.
    let mut cfg = read_json(&adapter.join(ADAPTER_CONFIG_FILE)).unwrap();
    cfg["use_dora"] = true.into();
    std::fs::write(adapter.join(ADAPTER_CONFIG_FILE), cfg.to_string()).unwrap();
    assert!(matches!(read_adapter(&adapter).unwrap_err(), HfError::Unsupported { .. }));
    std::fs::remove_file(adapter.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let err = cached_merge(&base, &adapter, &models).unwrap_err();
    assert!(err.to_string().contains("adapter_model.safetensors"), "{err}");
}
