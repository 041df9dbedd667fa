//! AdamW with decoupled weight decay (Loshchilov & Hutter 2019), as `torch.optim.AdamW` computes it,
//! with moments we can save and restore (candle-nn's keeps them private), and global-norm clipping.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Hyper-parameters; `torch.optim.AdamW` names.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// The optimizer: one (m, v) pair per parameter, in the order of `vars`.
#[derive(Debug)]
pub struct AdamW {
    pub vars: Vec<(String, Var)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Steps taken (bias correction).
    pub t: usize,
    pub params: AdamWParams,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            m,
            v,
            t: 0,
            params,
        })
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    /// Weight decay applies to matrices only (not to norms or biases), as nanoGPT does.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let (Some(m), Some(v)) = (self.m.get_mut(i), self.v.get_mut(i)) else {
                continue;
            };
            *m = ((&*m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            *v = ((&*v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&*m / bc1)?;
            let v_hat = (&*v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let decay = if var.rank() >= 2 {
                1.0 - lr * p.weight_decay
            } else {
                1.0
            };
            let next = ((var.as_tensor() * decay)? - (update * lr)?)?;
            var.set(&next)?;
        }
        Ok(())
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = total.sqrt();
    // torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), applied when below 1.
    let scale = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && scale < 1.0 {
        for (_, var) in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}
