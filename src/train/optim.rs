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

    /// One update with learning rate `lr`, the gradients scaled by `grad_scale` (the clipping
    /// coefficient; 1 leaves them alone). Parameters without a gradient are left alone. Weight decay
    /// applies to matrices only (not to norms or biases), as nanoGPT does.
    ///
    /// One fused pass per parameter over its value, gradient and moments (instead of a dozen tensor
    /// ops, each allocating a tensor the size of the parameter); the arithmetic is the same, in the
    /// same order.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
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
            let decay = if var.rank() >= 2 {
                1.0 - lr * p.weight_decay
            } else {
                1.0
            };
            let k = Coefficients {
                beta1: p.beta1 as f32,
                one_minus_beta1: (1.0 - p.beta1) as f32,
                beta2: p.beta2 as f32,
                one_minus_beta2: (1.0 - p.beta2) as f32,
                bc1: bc1 as f32,
                bc2: bc2 as f32,
                eps: p.eps as f32,
                decay: decay as f32,
                lr: lr as f32,
                grad_scale: (grad_scale < 1.0).then_some(grad_scale as f32),
            };
            if !var.device().is_cpu() {
                // On a GPU the same arithmetic as tensor ops, where the values lie.
                let (new_p, new_m, new_v) = update_tensors(var.as_tensor(), g, m, v, &k)?;
                (*m, *v) = (new_m, new_v);
                var.set(&new_p)?;
                continue;
            }
            let shape = var.shape().clone();
            let (new_p, new_m, new_v) = with_f32(var.as_tensor(), |param| {
                with_f32(g, |grad| {
                    with_f32(m, |mm| with_f32(v, |vv| update(param, grad, mm, vv, &k)))
                })
            })????;
            let device = var.device().clone();
            *m = Tensor::from_vec(new_m, &shape, &device)?;
            *v = Tensor::from_vec(new_v, &shape, &device)?;
            var.set(&Tensor::from_vec(new_p, &shape, &device)?)?;
        }
        Ok(())
    }
}

/// The scalars of one AdamW update, as f32 (what the tensor ops used).
struct Coefficients {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc1: f32,
    bc2: f32,
    eps: f32,
    decay: f32,
    lr: f32,
    /// Clipping coefficient, when the gradient is clipped.
    grad_scale: Option<f32>,
}

/// New (parameter, m, v) from the old ones, in parallel chunks.
fn update(
    param: &[f32],
    grad: &[f32],
    m: &[f32],
    v: &[f32],
    k: &Coefficients,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    let n = param.len();
    let (mut np, mut nm, mut nv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    np.par_chunks_mut(CHUNK)
        .zip(nm.par_chunks_mut(CHUNK))
        .zip(nv.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((np, nm), nv))| {
            let at = c * CHUNK;
            for j in 0..np.len() {
                let (Some(&p), Some(&g), Some(&m0), Some(&v0)) = (
                    param.get(at + j),
                    grad.get(at + j),
                    m.get(at + j),
                    v.get(at + j),
                ) else {
                    continue;
                };
                let g = k.grad_scale.map_or(g, |s| g * s);
                let m1 = m0 * k.beta1 + g * k.one_minus_beta1;
                let v1 = v0 * k.beta2 + (g * g) * k.one_minus_beta2;
                let update = (m1 / k.bc1) / ((v1 / k.bc2).sqrt() + k.eps);
                if let (Some(a), Some(b), Some(c)) = (np.get_mut(j), nm.get_mut(j), nv.get_mut(j)) {
                    *a = p * k.decay - update * k.lr;
                    *b = m1;
                    *c = v1;
                }
            }
        });
    (np, nm, nv)
}

/// [`update`] as tensor ops (one tensor the size of the parameter each), for parameters off the
/// CPU.
fn update_tensors(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &Coefficients,
) -> Result<(Tensor, Tensor, Tensor)> {
    let grad = match k.grad_scale {
        Some(s) => (grad * f64::from(s))?,
        None => grad.clone(),
    };
    let m1 = ((m * f64::from(k.beta1))? + (&grad * f64::from(k.one_minus_beta1))?)?;
    let v1 = ((v * f64::from(k.beta2))? + (grad.sqr()? * f64::from(k.one_minus_beta2))?)?;
    let denominator = ((&v1 / f64::from(k.bc2))?.sqrt()? + f64::from(k.eps))?;
    let update = ((&m1 / f64::from(k.bc1))? / denominator)?;
    let p1 = ((param * f64::from(k.decay))? - (update * f64::from(k.lr))?)?;
    Ok((p1, m1, v1))
}

/// Runs `f` on the f32 values of `t` in row-major order: borrowed from the tensor's storage when
/// it is contiguous f32 on the CPU (the storage stays read-locked meanwhile), copied otherwise.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.dtype() == candle_core::DType::F32 && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage {
            let start = layout.start_offset();
            if let Some(s) = data.get(start..start + t.elem_count()) {
                return Ok(f(s));
            }
        }
    }
    let copy: Vec<f32> = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    Ok(f(&copy))
}

/// The global L2 norm of the gradients, and the clipping coefficient to scale them by so it is at
/// most `max_norm` (1 when no clipping is needed), as `torch.nn.utils.clip_grad_norm_` computes.
pub fn grad_norm(grads: &GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<(f64, f64)> {
    let mut total = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += with_f32(g, |g| {
                g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()
            })?;
        }
    }
    let norm = total.sqrt();
    let scale = max_norm / (norm + 1e-6);
    Ok((
        norm,
        if max_norm > 0.0 && scale < 1.0 {
            scale
        } else {
            1.0
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The fused update equals AdamW written as tensor operations (torch.optim.AdamW's formula),
    /// with and without clipping, for a matrix (decayed) and a vector (not decayed).
    #[test]
    fn fused_step_equals_the_tensor_formula() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (33, 70), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 70, &dev).unwrap()).unwrap();
        let vars = vec![("w".to_owned(), w.clone()), ("b".to_owned(), b.clone())];
        let mut opt = AdamW::new(vars.clone(), AdamWParams::default()).unwrap();
        let p = AdamWParams::default();
        let mut want: Vec<(Tensor, Tensor, Tensor)> = vars
            .iter()
            .map(|(_, v)| {
                (
                    v.as_tensor().copy().unwrap(),
                    v.zeros_like().unwrap(),
                    v.zeros_like().unwrap(),
                )
            })
            .collect();
        for (step, (lr, scale)) in [(1e-2, 1.0), (3e-3, 0.25), (1e-3, 1.0)]
            .into_iter()
            .enumerate()
        {
            let loss = ((w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()
                + b.as_tensor().sin().unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let t = (step + 1) as i32;
            for ((_, var), (param, m, v)) in vars.iter().zip(want.iter_mut()) {
                let g = grads.get(var.as_tensor()).unwrap();
                let g = if scale < 1.0 {
                    (g * scale).unwrap()
                } else {
                    g.clone()
                };
                *m = ((&*m * p.beta1).unwrap() + (&g * (1.0 - p.beta1)).unwrap()).unwrap();
                *v = ((&*v * p.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - p.beta2)).unwrap())
                    .unwrap();
                let m_hat = (&*m / (1.0 - p.beta1.powi(t))).unwrap();
                let v_hat = (&*v / (1.0 - p.beta2.powi(t))).unwrap();
                let update = (m_hat / (v_hat.sqrt().unwrap() + p.eps).unwrap()).unwrap();
                let decay = if var.rank() >= 2 {
                    1.0 - lr * p.weight_decay
                } else {
                    1.0
                };
                *param = ((&*param * decay).unwrap() - (update * lr).unwrap()).unwrap();
            }
            opt.step(&grads, lr, scale).unwrap();
            for ((_, var), (param, _, _)) in vars.iter().zip(&want) {
                let diff = (var.as_tensor() - param)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "step {step}");
            }
        }
    }

    /// The update a GPU runs (tensor ops) equals the CPU's fused pass, clipped or not.
    #[test]
    fn the_tensor_update_equals_the_fused_one() {
        let dev = Device::Cpu;
        let draw = |seed: f32| {
            (Tensor::randn(0f32, 1.0, 517, &dev).unwrap() * f64::from(seed))
                .unwrap()
                .abs()
                .unwrap()
        };
        let (param, grad, m) = (draw(1.0), (draw(2.0) - 1.0).unwrap(), draw(0.1));
        let v = draw(0.01);
        for grad_scale in [None, Some(0.3f32)] {
            let k = Coefficients {
                beta1: 0.9,
                one_minus_beta1: 0.1,
                beta2: 0.95,
                one_minus_beta2: 0.05,
                bc1: 0.271,
                bc2: 0.142_625,
                eps: 1e-8,
                decay: 0.999,
                lr: 3e-3,
                grad_scale,
            };
            let values = |t: &Tensor| t.to_vec1::<f32>().unwrap();
            let fused = update(
                &values(&param),
                &values(&grad),
                &values(&m),
                &values(&v),
                &k,
            );
            let tensors = update_tensors(&param, &grad, &m, &v, &k).unwrap();
            for (want, got) in [
                (&fused.0, &tensors.0),
                (&fused.1, &tensors.1),
                (&fused.2, &tensors.2),
            ] {
                for (a, b) in want.iter().zip(values(got)) {
                    assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} against {b}");
                }
            }
        }
    }

    #[test]
    fn the_clip_coefficient_brings_the_norm_to_the_limit() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[3f32, 4.0], &dev).unwrap()).unwrap();
        let vars = vec![("w".to_owned(), w.clone())];
        let grads = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5)
            .unwrap()
            .backward()
            .unwrap();
        let (norm, scale) = grad_norm(&grads, &vars, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((scale - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(grad_norm(&grads, &vars, 10.0).unwrap().1, 1.0);
    }
}
