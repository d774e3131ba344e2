//! Optimization: AdamW, gradient accumulation, clipping by global norm, and the learning-rate
//! schedule (linear warm-up, then cosine decay).
//!
//! [`AdamW`] applies exactly candle-nn's update (decoupled weight decay, bias-corrected
//! moments; a test checks the two agree) but keeps its moments where a checkpoint can save and
//! restore them: candle-nn's `AdamW` holds them privately, so a resumed run would restart them
//! from zero. It also implements `candle_nn::Optimizer`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
pub use candle_nn::ParamsAdamW;
use serde::{Deserialize, Serialize};

/// AdamW over named variables, with saveable state.
#[derive(Debug)]
pub struct AdamW {
    params: ParamsAdamW,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: ParamsAdamW) -> candle_core::Result<AdamW> {
        let m = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<_>>()?;
        let v = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<_>>()?;
        Ok(AdamW { params, vars, m, v, step: 0 })
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    pub fn params(&self) -> &ParamsAdamW {
        &self.params
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// One update with `grads[i]` the gradient of `vars()[i]` (`None`: no update of that one).
    pub fn step_with(&mut self, grads: &[Option<Tensor>]) -> candle_core::Result<()> {
        if grads.len() != self.vars.len() {
            candle_core::bail!("{} gradients for {} variables", grads.len(), self.vars.len());
        }
        self.step += 1;
        let p = &self.params;
        let scale_m = 1.0 / (1.0 - p.beta1.powi(self.step as i32));
        let scale_v = 1.0 / (1.0 - p.beta2.powi(self.step as i32));
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let theta = &self.vars[i].1;
            let g = g.to_dtype(theta.dtype())?;
            let m = ((&self.m[i] * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&m * scale_m)?;
            let v_hat = (&v * scale_v)?;
            let decayed = (theta.as_tensor() * (1.0 - p.lr * p.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            theta.set(&(decayed - (update * p.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments by `<name>.m` / `<name>.v`, for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("{name}.m"), self.m[i].clone());
            out.insert(format!("{name}.v"), self.v[i].clone());
        }
        out
    }

    /// Restores moments and the step count saved by [`AdamW::state_tensors`].
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: usize,
    ) -> Result<(), String> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (suffix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{name}.{suffix}");
                let t = tensors.get(&key).ok_or_else(|| format!("no optimizer tensor `{key}`"))?;
                if t.dims() != var.dims() {
                    return Err(format!("optimizer tensor `{key}` has the wrong shape"));
                }
                *slot = t
                    .to_dtype(var.dtype())
                    .and_then(|t| t.to_device(var.device()))
                    .map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

impl candle_nn::Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, config: ParamsAdamW) -> candle_core::Result<Self> {
        let named = vars.into_iter().enumerate().map(|(i, v)| (format!("var{i}"), v)).collect();
        AdamW::new(named, config)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let g: Vec<Option<Tensor>> =
            self.vars.iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()).collect();
        self.step_with(&g)
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

/// Sums gradients over micro-batches.
#[derive(Debug)]
pub struct Accumulator {
    grads: Vec<Option<Tensor>>,
    /// Micro-batches added since the last reset.
    pub micro: usize,
}

impl Accumulator {
    pub fn new(n_vars: usize) -> Accumulator {
        Accumulator { grads: vec![None; n_vars], micro: 0 }
    }

    /// Adds the gradients of one backward pass (`scale` times them).
    pub fn add(
        &mut self,
        vars: &[(String, Var)],
        store: &GradStore,
        scale: f64,
    ) -> candle_core::Result<()> {
        for (i, (_, v)) in vars.iter().enumerate() {
            if let Some(g) = store.get(v.as_tensor()) {
                let g = (g * scale)?;
                self.grads[i] = Some(match self.grads[i].take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        self.micro += 1;
        Ok(())
    }

    /// Scales the gradients so their global L2 norm is at most `max_norm` (when > 0). Returns
    /// the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> candle_core::Result<f64> {
        let mut sq = 0f64;
        for g in self.grads.iter().flatten() {
            sq += g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let s = max_norm / (norm + 1e-6);
            for g in self.grads.iter_mut().flatten() {
                *g = (&*g * s)?;
            }
        }
        Ok(norm)
    }

    /// The summed gradients, leaving the accumulator empty.
    pub fn take(&mut self) -> Vec<Option<Tensor>> {
        self.micro = 0;
        let n = self.grads.len();
        std::mem::replace(&mut self.grads, vec![None; n])
    }
}

/// Linear warm-up to `peak`, then cosine decay to `peak · min_ratio` at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub min_ratio: f64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if self.warmup > 0 && step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup.min(step)) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer as _;

    #[test]
    fn adamw_matches_candle_nn_and_resumes() {
        let dev = Device::Cpu;
        let init = Tensor::new(&[[0.5f32, -1.0, 2.0], [0.1, 0.2, -0.3]], &dev).unwrap();
        let params = ParamsAdamW { lr: 0.05, weight_decay: 0.1, ..Default::default() };
        let (ours_v, theirs_v) =
            (Var::from_tensor(&init).unwrap(), Var::from_tensor(&init).unwrap());
        let mut ours = AdamW::new(vec![("w".into(), ours_v.clone())], params.clone()).unwrap();
        let mut theirs = candle_nn::AdamW::new(vec![theirs_v.clone()], params.clone()).unwrap();
        // A resumed copy: state saved after 2 steps, restored into a fresh optimizer.
        let resumed_v = Var::from_tensor(&init).unwrap();
        let mut resumed = None;
        for step in 0..5 {
            let loss = |v: &Var| (v.as_tensor().sqr().unwrap().sum_all().unwrap() * 3.0).unwrap();
            ours.step(&loss(&ours_v).backward().unwrap()).unwrap();
            theirs.step(&loss(&theirs_v).backward().unwrap()).unwrap();
            if step == 1 {
                resumed_v.set(ours_v.as_tensor()).unwrap();
                let mut r =
                    AdamW::new(vec![("w".into(), resumed_v.clone())], params.clone()).unwrap();
                r.load_state(&ours.state_tensors(), ours.steps()).unwrap();
                resumed = Some(r);
            } else if let Some(r) = resumed.as_mut() {
                r.step(&loss(&resumed_v).backward().unwrap()).unwrap();
            }
        }
        let diff = |a: &Var, b: &Var| {
            (a.as_tensor() - b.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&ours_v, &theirs_v) < 1e-6);
        assert!(diff(&ours_v, &resumed_v) < 1e-6);
        assert!(diff(&ours_v, &Var::from_tensor(&init).unwrap()) > 0.1);
    }

    #[test]
    fn accumulation_and_clipping() {
        let dev = Device::Cpu;
        let v = Var::ones(4, DType::F32, &dev).unwrap();
        let vars = vec![("v".to_string(), v.clone())];
        let mut acc = Accumulator::new(1);
        for _ in 0..2 {
            let loss = (v.as_tensor() * 3.0).unwrap().sum_all().unwrap();
            acc.add(&vars, &loss.backward().unwrap(), 0.5).unwrap();
        }
        // Each gradient is 3 per element; two halves sum to 3; norm = 3·√4 = 6.
        let norm = acc.clip(1.5).unwrap();
        assert!((norm - 6.0).abs() < 1e-5);
        let g = acc.take();
        let g = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| (x - 0.75).abs() < 1e-4), "{g:?}");
        assert_eq!(acc.micro, 0);
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = Schedule { peak: 1.0, warmup: 4, total: 14, min_ratio: 0.1 };
        assert!((s.lr(0) - 0.25).abs() < 1e-9);
        assert!((s.lr(3) - 1.0).abs() < 1e-9);
        assert!((s.lr(4) - 1.0).abs() < 1e-9);
        assert!((s.lr(9) - 0.55).abs() < 1e-9);
        assert!((s.lr(14) - 0.1).abs() < 1e-9);
        assert!((s.lr(100) - 0.1).abs() < 1e-9);
    }
}
