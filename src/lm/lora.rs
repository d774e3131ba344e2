//! LoRA adapters (Hu et al. 2021): a frozen projection `W` gains a trainable low-rank update,
//! `y = x·Wᵀ + (alpha / rank) · (x·Aᵀ)·Bᵀ`, with `A` (rank × in) drawn like PEFT's default
//! (Kaiming-uniform, bound `1/√in`) and `B` (out × rank) zero, so training starts exactly at
//! the base model. Merging adds `(alpha / rank) · B·A` to `W`.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, Var};

use super::cpu::{f32_slice, matmul, Write};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A projection of a transformer block that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] =
        [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The projection's name in GGUF tensor names (`blk.N.<name>.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// Parses a comma-separated list: `q,k,v,o,gate,up,down`, or `all`, `attn` (q,k,v,o),
    /// `mlp` (gate,up,down); Hugging Face names (`q_proj`, `gate_proj`, …) work too.
    pub fn parse_list(s: &str) -> Result<Vec<Target>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let part = part.to_ascii_lowercase();
            let part = part.strip_suffix("_proj").unwrap_or(&part);
            let add: &[Target] = match part {
                "all" => &Target::ALL,
                "attn" => &[Target::Q, Target::K, Target::V, Target::O],
                "mlp" => &[Target::Gate, Target::Up, Target::Down],
                "q" => &[Target::Q],
                "k" => &[Target::K],
                "v" => &[Target::V],
                "o" => &[Target::O],
                "gate" => &[Target::Gate],
                "up" => &[Target::Up],
                "down" => &[Target::Down],
                other => {
                    return Err(format!(
                        "unknown LoRA target `{other}` (q, k, v, o, gate, up, down, attn, mlp, all)"
                    ))
                }
            };
            out.extend_from_slice(add);
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no LoRA target given".into());
        }
        Ok(out)
    }
}

/// Shape of the adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<Target>,
    /// Seeds the random `A` matrices.
    pub seed: u64,
    /// Adapters only in the top this-many blocks (`None`: every block). The blocks below then
    /// run forward only: no backward pass, no activations kept for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_layers: Option<usize>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, targets: Target::ALL.to_vec(), seed: 0, top_layers: None }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("LoRA rank must be at least 1".into());
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(format!("LoRA alpha must be a positive number (got {})", self.alpha));
        }
        if self.targets.is_empty() {
            return Err("no LoRA target given".into());
        }
        if self.top_layers == Some(0) {
            return Err("LoRA top layers must be at least 1 (leave it out for every block)".into());
        }
        Ok(())
    }

    /// Whether block `i` of `n_layer` carries adapters.
    pub fn adapts_block(&self, i: usize, n_layer: usize) -> bool {
        self.top_layers.is_none_or(|top| i + top >= n_layer)
    }
}

/// One adapter: `A` (rank × in) and `B` (out × rank).
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
}

impl Lora {
    /// A fresh adapter for an `out × inp` projection; `A` from `rng`, `B` zero.
    pub fn new(
        inp: usize,
        out: usize,
        config: &LoraConfig,
        dtype: DType,
        device: &Device,
        rng: &mut rand::rngs::StdRng,
    ) -> candle_core::Result<Lora> {
        let bound = 1.0 / (inp as f32).sqrt();
        let data: Vec<f32> =
            (0..config.rank * inp).map(|_| rng.random_range(-bound..bound)).collect();
        let a = Tensor::from_vec(data, (config.rank, inp), device)?.to_dtype(dtype)?;
        Ok(Lora {
            a: Var::from_tensor(&a)?,
            b: Var::zeros((out, config.rank), dtype, device)?,
            scale: config.scale(),
        })
    }

    /// The adapter's contribution for rows `x` (N × in): `scale · (x·Aᵀ)·Bᵀ`, in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = self.a.dtype();
        let xl = if x.dtype() == dtype { x.clone() } else { x.to_dtype(dtype)? };
        let y = xl.matmul(&self.a.as_tensor().t()?)?.matmul(&self.b.as_tensor().t()?)?;
        (y * self.scale)?.to_dtype(x.dtype())
    }

    /// `scale · B·A` (out × in), to add to the frozen weight.
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale
    }
}

/// `x·Wᵀ + scale·(x·Aᵀ)·Bᵀ` for a frozen `W` (out × in) and rows `x` (N × in), as one op when
/// everything is f32 on the CPU ([`fuses`]). Out of candle's ops, each projection would keep
/// three more `(N, out)` tensors in the autograd graph (the base product, the adapter's product
/// and its scaled copy, all inputs of later ops): for SmolLM2's seven projections that is
/// ~15.5 k floats per token per block. The op keeps only its inputs and output, and its
/// backward gives `x`, `A` and `B` their gradients (none for `W`).
pub fn frozen_linear(x: &Tensor, w: &Tensor, lora: &Lora) -> candle_core::Result<Tensor> {
    let (n, inp) = x.dims2()?;
    let (out, inp_w) = w.dims2()?;
    let (rank, inp_a) = lora.a.dims2()?;
    if inp != inp_w || inp != inp_a || lora.b.dims2()? != (out, rank) {
        candle_core::bail!(
            "LoRA projection: x {:?}, W {:?}, A {:?} and B {:?} do not fit together",
            x.dims(),
            w.dims(),
            lora.a.dims(),
            lora.b.dims()
        );
    }
    let op = FrozenLinear { w: w.contiguous()?, scale: lora.scale as f32, n, inp, out, rank };
    x.contiguous()?.apply_op3(
        &lora.a.as_tensor().contiguous()?,
        &lora.b.as_tensor().contiguous()?,
        op,
    )
}

/// Whether [`frozen_linear`] runs as one op for these tensors (f32 on the CPU).
pub fn fuses(x: &Tensor, w: &Tensor, lora: &Lora) -> bool {
    x.device().is_cpu()
        && [x.dtype(), w.dtype(), lora.a.dtype(), lora.b.dtype()].iter().all(|&d| d == DType::F32)
}

struct FrozenLinear {
    w: Tensor,
    scale: f32,
    n: usize,
    inp: usize,
    out: usize,
    rank: usize,
}

impl CustomOp3 for FrozenLinear {
    fn name(&self) -> &'static str {
        "lora-frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let slice = |s, l, what| f32_slice(s, l, "LoRA projection", what);
        let (x, a, b) = (slice(s1, l1, "x")?, slice(s2, l2, "A")?, slice(s3, l3, "B")?);
        let (storage, layout) = self.w.storage_and_layout();
        let Storage::Cpu(ws) = &*storage else {
            candle_core::bail!("LoRA projection: W is not on the CPU");
        };
        let w = slice(ws, layout, "W")?;
        let (n, inp, out, r) = (self.n, self.inp, self.out, self.rank);
        let set = Write { parallel: true, ..Write::SET };
        let mut y = vec![0f32; n * out];
        // y = x · Wᵀ
        matmul((n, out, inp), &mut y, out, x, (inp, 1), w, (1, inp), set);
        // t = x · Aᵀ; y += scale · t · Bᵀ
        let mut t = vec![0f32; n * r];
        matmul((n, r, inp), &mut t, r, x, (inp, 1), a, (1, inp), set);
        let add = Write { accumulate: true, beta: self.scale, parallel: true };
        matmul((n, out, r), &mut y, out, &t, (r, 1), b, (1, r), add);
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = self.scale as f64;
        let (x, a, b, grad) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let gb = (grad.matmul(&b)? * s)?; // (N, r): the gradient at x·Aᵀ
        let dx = (grad.matmul(&self.w)? + gb.matmul(&a)?)?;
        let da = gb.t()?.matmul(&x)?;
        let t = x.matmul(&a.t()?)?;
        let db = (grad.t()?.matmul(&t)? * s)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// The RNG adapters draw from.
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let mut r = rng(seed);
        let data: Vec<f32> = (0..shape.0 * shape.1).map(|_| r.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// The one-op projection against candle's ops (`frozen_matmul` plus the adapter's
    /// `forward`): output and the gradients of `x`, `A` and `B`.
    #[test]
    fn frozen_linear_equals_the_composed_ops() {
        let (n, inp, out, rank) = (37, 48, 72, 4);
        let x = Var::from_tensor(&random((n, inp), 1)).unwrap();
        let w = random((out, inp), 2);
        let lora = Lora {
            a: Var::from_tensor(&random((rank, inp), 3)).unwrap(),
            b: Var::from_tensor(&random((out, rank), 4)).unwrap(),
            scale: 2.0,
        };
        assert!(fuses(x.as_tensor(), &w, &lora));
        let fused = frozen_linear(x.as_tensor(), &w, &lora).unwrap();
        let plain = (super::super::model::frozen_matmul(x.as_tensor(), &w).unwrap()
            + lora.forward(x.as_tensor()).unwrap())
        .unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&fused, &plain) < 1e-4, "output differs by {}", diff(&fused, &plain));
        let weights = random((n, out), 5);
        let gf = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("A", &lora.a), ("B", &lora.b)] {
            let (a, b) = (gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
            assert!(diff(a, b) < 1e-3, "d{name} differs by {}", diff(a, b));
        }
        assert!(gf.get(&w).is_none(), "no gradient for the frozen weight");
        // Shapes that do not fit are an error, not a panic.
        let err = frozen_linear(&random((n, inp + 1), 6), &w, &lora).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse_list("q_proj, v").unwrap(), vec![Target::Q, Target::V]);
        assert_eq!(Target::parse_list("all").unwrap().len(), 7);
        assert_eq!(Target::parse_list("mlp,q").unwrap().len(), 4);
        assert!(Target::parse_list("wq").unwrap_err().contains("wq"));
        assert!(Target::parse_list(" ,").is_err());
    }

    #[test]
    fn a_fresh_adapter_adds_nothing() {
        let cfg = LoraConfig::default();
        let l = Lora::new(16, 12, &cfg, DType::F32, &Device::Cpu, &mut rng(1)).unwrap();
        let x = Tensor::ones((3, 16), DType::F32, &Device::Cpu).unwrap();
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dims(), &[3, 12]);
        assert_eq!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(l.delta().unwrap().dims(), &[12, 16]);
    }
}
