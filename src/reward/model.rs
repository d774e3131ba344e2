//! The reward heads: a small MLP over encoder features, one ensemble of `K` heads per tree
//! height (or one shared ensemble with a learned height embedding), as plain candle tensors.
//!
//! Tensor names in the checkpoint: `{scope}.k{member}.{w1,b1,w2,b2}` where scope is `h{height}`
//! or `shared`, and `shared.k{member}.height_emb` for the shared height embedding. A hybrid head
//! ([`super::hybrid`]) adds `{scope}.k{member}.grounding`, the weights of the grounding features,
//! which are then the last [`super::hybrid::FEATURES`] columns of every feature row.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};

/// Heights above this share the last row of the height embedding.
pub const MAX_HEIGHTS: usize = 16;
/// Width of the height embedding in shared mode.
pub const HEIGHT_EMB: usize = 8;

/// One MLP head: features (+ height embedding) → hidden (ReLU) → scalar.
#[derive(Debug, Clone)]
pub struct Head {
    pub w1: Var,
    pub b1: Var,
    pub w2: Var,
    pub b2: Var,
    /// Shared mode only.
    pub height_emb: Option<Var>,
    /// Hybrid heads only: `w` of `wᵀ·g`, `(FEATURES,)`; the rows end in the grounding features.
    pub grounding: Option<Var>,
}

impl Head {
    /// A freshly initialized head (uniform ±1/√fan_in, as torch's Linear), seeded.
    pub fn init(
        input_dim: usize,
        hidden: usize,
        shared: bool,
        seed: u64,
        device: &Device,
    ) -> candle_core::Result<Head> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let in_dim = input_dim + if shared { HEIGHT_EMB } else { 0 };
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let w1 = Tensor::from_vec(uniform(hidden * in_dim, in_dim), (hidden, in_dim), device)?;
        let b1 = Tensor::from_vec(uniform(hidden, in_dim), hidden, device)?;
        let w2 = Tensor::from_vec(uniform(hidden, hidden), (1, hidden), device)?;
        let b2 = Tensor::from_vec(uniform(1, hidden), 1, device)?;
        let height_emb = if shared {
            let e: Vec<f32> =
                (0..MAX_HEIGHTS * HEIGHT_EMB).map(|_| rng.random_range(-0.1..0.1)).collect();
            Some(Var::from_tensor(&Tensor::from_vec(e, (MAX_HEIGHTS, HEIGHT_EMB), device)?)?)
        } else {
            None
        };
        Ok(Head {
            w1: Var::from_tensor(&w1)?,
            b1: Var::from_tensor(&b1)?,
            w2: Var::from_tensor(&w2)?,
            b2: Var::from_tensor(&b2)?,
            height_emb,
            grounding: None,
        })
    }

    /// This head made hybrid at its step 0: the grounding weights `w` added and the output
    /// layer zeroed, so it scores exactly `wᵀ·g` until training moves it.
    pub fn into_hybrid(mut self, w: &[f32]) -> candle_core::Result<Head> {
        let device = self.w2.as_tensor().device().clone();
        self.w2 = Var::from_tensor(&self.w2.as_tensor().zeros_like()?)?;
        self.b2 = Var::from_tensor(&self.b2.as_tensor().zeros_like()?)?;
        self.grounding = Some(Var::from_tensor(&Tensor::from_slice(w, w.len(), &device)?)?);
        Ok(self)
    }

    pub fn vars(&self) -> Vec<Var> {
        let mut v = vec![self.w1.clone(), self.b1.clone(), self.w2.clone(), self.b2.clone()];
        v.extend(self.height_emb.clone());
        v.extend(self.grounding.clone());
        v
    }

    /// Scores of `x` (n × feature_dim, + the grounding features for a hybrid head) at
    /// `heights` (n, u32; shared mode only): n scalars.
    pub fn forward(&self, x: &Tensor, heights: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (x, grounded) = match &self.grounding {
            Some(w) => {
                let g = w.as_tensor().dim(0)?;
                let d = x.dim(1)?.checked_sub(g).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "a hybrid head needs {g} grounding features after the encoder's, the \
                         rows have {} columns",
                        x.dim(1).unwrap_or(0)
                    ))
                })?;
                let part = x.narrow(1, d, g)?.matmul(&w.as_tensor().unsqueeze(1)?)?;
                (x.narrow(1, 0, d)?, Some(part.squeeze(D::Minus1)?))
            }
            None => (x.clone(), None),
        };
        let x = match (&self.height_emb, heights) {
            (Some(emb), Some(h)) => {
                let rows = emb.as_tensor().index_select(h, 0)?;
                Tensor::cat(&[&x, &rows], 1)?
            }
            _ => x,
        };
        let h = x.matmul(&self.w1.as_tensor().t()?)?.broadcast_add(self.b1.as_tensor())?.relu()?;
        let out = h.matmul(&self.w2.as_tensor().t()?)?.broadcast_add(self.b2.as_tensor())?;
        let out = out.squeeze(D::Minus1)?;
        match grounded {
            Some(g) => out + g,
            None => Ok(out),
        }
    }

    fn tensors(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        out.insert(format!("{prefix}.w1"), self.w1.as_tensor().clone());
        out.insert(format!("{prefix}.b1"), self.b1.as_tensor().clone());
        out.insert(format!("{prefix}.w2"), self.w2.as_tensor().clone());
        out.insert(format!("{prefix}.b2"), self.b2.as_tensor().clone());
        if let Some(e) = &self.height_emb {
            out.insert(format!("{prefix}.height_emb"), e.as_tensor().clone());
        }
        if let Some(g) = &self.grounding {
            out.insert(format!("{prefix}.grounding"), g.as_tensor().clone());
        }
    }

    fn from_tensors(
        prefix: &str,
        map: &HashMap<String, Tensor>,
        shared: bool,
    ) -> Result<Head, String> {
        let get = |name: &str| -> Result<Var, String> {
            let key = format!("{prefix}.{name}");
            let t = map.get(&key).ok_or_else(|| format!("missing tensor {key}"))?;
            let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
            Var::from_tensor(&t).map_err(|e| e.to_string())
        };
        Ok(Head {
            w1: get("w1")?,
            b1: get("b1")?,
            w2: get("w2")?,
            b2: get("b2")?,
            height_emb: if shared { Some(get("height_emb")?) } else { None },
            grounding: if map.contains_key(&format!("{prefix}.grounding")) {
                Some(get("grounding")?)
            } else {
                None
            },
        })
    }
}

/// Where heads live: per height, or one shared set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Height(u32),
    Shared,
}

impl Scope {
    pub fn name(self) -> String {
        match self {
            Scope::Height(h) => format!("h{h}"),
            Scope::Shared => "shared".into(),
        }
    }
}

/// The ensembles of a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Heads {
    pub by_scope: BTreeMap<Scope, Vec<Head>>,
}

impl Heads {
    /// The ensemble for `height`: the shared one, that height's, or the nearest trained height's.
    pub fn for_height(&self, height: u32) -> Option<(Scope, &[Head])> {
        if let Some(h) = self.by_scope.get(&Scope::Shared) {
            return Some((Scope::Shared, h));
        }
        self.by_scope
            .iter()
            .filter_map(|(s, h)| match s {
                Scope::Height(x) => Some((*x, s, h)),
                Scope::Shared => None,
            })
            .min_by_key(|(x, _, _)| (x.abs_diff(height), *x))
            .map(|(_, s, h)| (*s, h.as_slice()))
    }

    /// Per-member scores (K × n) of rows `x` at `height`.
    pub fn scores(
        &self,
        x: &Tensor,
        height: u32,
    ) -> Result<Option<Vec<Vec<f32>>>, candle_core::Error> {
        let Some((scope, heads)) = self.for_height(height) else { return Ok(None) };
        let n = x.dim(0)?;
        let heights = match scope {
            Scope::Shared => Some(height_tensor(&vec![height; n], x.device())?),
            Scope::Height(_) => None,
        };
        let mut out = Vec::with_capacity(heads.len());
        for head in heads {
            out.push(head.forward(x, heights.as_ref())?.to_vec1::<f32>()?);
        }
        Ok(Some(out))
    }

    /// Whether every head is hybrid (`Some(true)`), none is (`Some(false)`), or they are mixed.
    pub fn hybrid(&self) -> Option<bool> {
        let mut kinds = self.by_scope.values().flatten().map(|h| h.grounding.is_some());
        let first = kinds.next().unwrap_or(false);
        kinds.all(|k| k == first).then_some(first)
    }

    pub fn to_tensors(&self) -> HashMap<String, Tensor> {
        let mut map = HashMap::new();
        for (scope, heads) in &self.by_scope {
            for (k, head) in heads.iter().enumerate() {
                head.tensors(&format!("{}.k{k}", scope.name()), &mut map);
            }
        }
        map
    }

    pub fn from_tensors(
        map: &HashMap<String, Tensor>,
        scopes: &[Scope],
        members: usize,
    ) -> Result<Heads, String> {
        let mut by_scope = BTreeMap::new();
        for &scope in scopes {
            let mut heads = Vec::new();
            for k in 0..members {
                heads.push(Head::from_tensors(
                    &format!("{}.k{k}", scope.name()),
                    map,
                    scope == Scope::Shared,
                )?);
            }
            by_scope.insert(scope, heads);
        }
        Ok(Heads { by_scope })
    }
}

/// Heights as an index tensor into the height embedding (clamped to its rows).
pub fn height_tensor(heights: &[u32], device: &Device) -> candle_core::Result<Tensor> {
    let idx: Vec<u32> = heights.iter().map(|&h| h.min(MAX_HEIGHTS as u32 - 1)).collect();
    Tensor::from_vec(idx, heights.len(), device)
}

/// Mean and (population) standard deviation over members, per row.
pub fn mean_std(per_member: &[Vec<f32>]) -> Vec<(f32, f32)> {
    let k = per_member.len().max(1) as f32;
    let n = per_member.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| {
            let mean = per_member.iter().map(|m| m[i]).sum::<f32>() / k;
            let var = per_member.iter().map(|m| (m[i] - mean).powi(2)).sum::<f32>() / k;
            (mean, var.sqrt())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_roundtrip_through_tensors_and_pick_the_nearest_height() {
        let dev = Device::Cpu;
        let x =
            Tensor::from_vec((0..30).map(|i| i as f32 / 30.0).collect::<Vec<_>>(), (3, 10), &dev)
                .unwrap();
        for shared in [false, true] {
            let scopes =
                if shared { vec![Scope::Shared] } else { vec![Scope::Height(0), Scope::Height(2)] };
            let mut heads = Heads::default();
            for (i, &s) in scopes.iter().enumerate() {
                let members =
                    (0..2).map(|k| Head::init(10, 8, shared, (i * 10 + k) as u64, &dev).unwrap());
                heads.by_scope.insert(s, members.collect());
            }
            let back = Heads::from_tensors(&heads.to_tensors(), &scopes, 2).unwrap();
            for h in [0, 1, 2, 7] {
                assert_eq!(heads.scores(&x, h).unwrap(), back.scores(&x, h).unwrap());
            }
            if shared {
                // The height embedding makes heights score differently.
                assert_ne!(heads.scores(&x, 0).unwrap(), heads.scores(&x, 1).unwrap());
            } else {
                assert_eq!(heads.for_height(1).unwrap().0, Scope::Height(0));
                assert_eq!(heads.for_height(7).unwrap().0, Scope::Height(2));
            }
        }
        assert!(Heads::from_tensors(&HashMap::new(), &[Scope::Height(0)], 1).is_err());
    }

    #[test]
    fn mean_and_std_over_members() {
        let ms = mean_std(&[vec![1.0, 0.0], vec![3.0, 0.0]]);
        assert_eq!(ms, vec![(2.0, 1.0), (0.0, 0.0)]);
    }
}
