//! A PEFT LoRA adapter (what TRL's trainers save) loaded into a [`TrainableLlama`]'s own
//! adapters, so training can start from it or a measurement can run on exactly its weights
//! (the TRL parity test). The inverse of `infer::hf::export_peft`; merging into a GGUF for
//! inference is `infer::hf::merge_adapter`.

use candle_core::DType;

use super::model::TrainableLlama;
use super::LmError;
use crate::infer::hf::{self, Adapter, Family};
use crate::infer::llama::Arch;

/// Sets the model's adapters from `adapter`: `A` as it is, `B` with its rows in the GGUF's order
/// (llama's Q and K rows are permuted) and rescaled so that `scale·B·A` is the adapter's own
/// product when its scale (alpha / rank, or rsLoRA's alpha / √rank) differs from the model's.
/// Every adapted projection must carry an adapter of the same rank in the model; projections
/// the adapter leaves out keep theirs. Returns how many projections were set.
pub fn load_peft_adapter(model: &TrainableLlama, adapter: &Adapter) -> Result<usize, LmError> {
    // Only llama's GGUF layout permutes Q and K rows (llama.cpp's converter does it for llama
    // alone); every other family keeps Hugging Face's order.
    let family = if model.config.arch == Arch::Llama { Family::Llama } else { Family::Qwen2 };
    let invalid = |message: String| {
        LmError::Invalid(format!("PEFT adapter {}: {message}", adapter.dir.display()))
    };
    let mut set = 0;
    for (name, (a, b, scale)) in &adapter.pairs {
        let hf_name = hf::hf_name(name).unwrap_or_else(|| name.clone());
        let proj = name.strip_suffix(".weight").unwrap_or(name);
        let Some(lora) = model.lora(proj) else {
            return Err(invalid(format!(
                "`{hf_name}` has an adapter, the model has none there (train with LoRA on \
                 every projection the adapter targets)"
            )));
        };
        let (want_a, want_b) = (lora.a.dims().to_vec(), lora.b.dims().to_vec());
        if a.dims() != want_a.as_slice() || b.dims() != want_b.as_slice() {
            return Err(invalid(format!(
                "`{hf_name}`: A {:?} and B {:?}, the model's adapter has A {want_a:?} and B \
                 {want_b:?} (rank or shape differ)",
                a.dims(),
                b.dims()
            )));
        }
        let module = proj.rsplit('.').next().unwrap_or("");
        let b =
            match hf::permuted_heads(family, module, model.config.n_head, model.config.n_kv_head) {
                Some(heads) => hf::permute_rows(b, heads)?,
                None => b.clone(),
            };
        let b = if (scale - lora.scale).abs() > 1e-12 * scale.abs().max(1.0) {
            (b * (scale / lora.scale))?
        } else {
            b
        };
        let dtype: DType = lora.a.dtype();
        let device = lora.a.device().clone();
        lora.a.set(&a.to_dtype(dtype)?.to_device(&device)?)?;
        lora.b.set(&b.to_dtype(dtype)?.to_device(&device)?)?;
        set += 1;
    }
    Ok(set)
}
