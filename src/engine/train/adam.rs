//! Adam with L2 weight decay (the update of `torch.optim.Adam`, which scvi-tools uses), written
//! here rather than taken from libtorch so that:
//! - on the CPU one fused pass per parameter does the whole update (libtorch's C++ Adam runs about
//!   ten tensor operations per parameter, a large share of a small model's step);
//! - its moments are checkpointed with the weights, so `--resume` continues the same optimiser.
//!
//! Gradients come from `Tensor::run_backward` (fresh tensors, no zeroing between steps).

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::model::stored::{from_file, to_file};

pub struct Adam {
    pub lr: f64,
    /// Steps over which the step size rises linearly to `lr` (0: from the first step).
    pub warmup: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Steps taken (bias correction).
    pub step: i64,
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Off the CPU: every parameter, first and second moment are views into one buffer each
    /// (`flatten`), so that a step is a dozen tensor operations instead of a dozen per parameter
    /// (on a GPU each costs a launch; at 2,000 genes, batch 1,024, they were a third of a step).
    flat: Option<Flat>,
}

struct Flat {
    params: Tensor,
    m: Tensor,
    v: Tensor,
}

impl Adam {
    /// Over the trainable variables of `vs`, in name order.
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64, eps: f64) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<_>, Vec<_>) = vars.into_iter().unzip();
        let zeros = |p: &Tensor| p.zeros_like().detach();
        let on_cpu = params.iter().all(|p| p.device() == Device::Cpu);
        let mut adam = Adam {
            lr,
            warmup: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps,
            weight_decay,
            step: 0,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
            names,
            params,
            flat: None,
        };
        if !on_cpu {
            adam.flatten();
        }
        adam
    }

    /// Puts the parameters and both moments into one buffer each (the parameters keep their
    /// values and stay the model's variables: their data becomes views of the buffer).
    pub(crate) fn flatten(&mut self) {
        if self.params.is_empty() || self.params.iter().any(|p| p.kind() != Kind::Float) {
            return;
        }
        let total: i64 = self.params.iter().map(|p| p.numel() as i64).sum();
        let dev = self.params[0].device();
        let buffer = || Tensor::zeros([total], (Kind::Float, dev));
        let (params, m, v) = (buffer(), buffer(), buffer());
        tch::no_grad(|| {
            let mut off = 0;
            for i in 0..self.params.len() {
                let (n, shape) = (self.params[i].numel() as i64, self.params[i].size());
                let view = |b: &Tensor, from: &Tensor| {
                    let t = b.narrow(0, off, n).view(shape.as_slice());
                    let mut dst = t.shallow_clone();
                    dst.copy_(from);
                    t
                };
                let p = view(&params, &self.params[i]);
                self.params[i].set_data(&p);
                self.m[i] = view(&m, &self.m[i]);
                self.v[i] = view(&v, &self.v[i]);
                off += n;
            }
        });
        self.flat = Some(Flat { params, m, v });
    }

    /// The parameters, in the order `step` expects their gradients.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// One update; `grads[i]` belongs to `params()[i]`, an undefined one leaves it untouched.
    pub fn step(&mut self, grads: &[Tensor]) {
        assert_eq!(grads.len(), self.params.len(), "one gradient per parameter");
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        let ramp = if self.warmup > 0 {
            (self.step as f64 / self.warmup as f64).min(1.0)
        } else {
            1.0
        };
        let step_size = self.lr * ramp / bc1;
        let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
        if let Some(f) = &mut self.flat {
            if grads.iter().all(Tensor::defined) {
                tch::no_grad(|| {
                    let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1]).to_kind(Kind::Float)).collect();
                    let g = Tensor::cat(&flat, 0);
                    let g = if self.weight_decay != 0.0 {
                        g + &f.params * self.weight_decay
                    } else {
                        g
                    };
                    let _ = f.m.g_mul_scalar_(self.beta1).g_add_(&(&g * (1.0 - self.beta1)));
                    let _ = f.v.g_mul_scalar_(self.beta2).g_add_(&(&g * &g * (1.0 - self.beta2)));
                    let denom = f.v.sqrt() * inv_sqrt_bc2 + self.eps;
                    let _ = f.params.g_sub_(&(&f.m / denom * step_size));
                });
                return;
            }
        }
        tch::no_grad(|| {
            for (i, g) in grads.iter().enumerate() {
                if !g.defined() {
                    continue;
                }
                let p = &self.params[i];
                let fast = p.device() == Device::Cpu
                    && p.kind() == Kind::Float
                    && g.kind() == Kind::Float
                    && p.is_contiguous()
                    && self.m[i].is_contiguous()
                    && self.v[i].is_contiguous();
                if fast {
                    let g = g.contiguous();
                    let n = p.numel();
                    assert_eq!(g.numel(), n, "gradient of {} has the wrong size", self.names[i]);
                    // SAFETY: four distinct contiguous f32 CPU tensors of n elements each, alive for
                    // the duration of the loop; nothing else touches them meanwhile (no_grad, one thread).
                    let (p, g, m, v) = unsafe {
                        (
                            std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n),
                            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
                            std::slice::from_raw_parts_mut(self.m[i].data_ptr() as *mut f32, n),
                            std::slice::from_raw_parts_mut(self.v[i].data_ptr() as *mut f32, n),
                        )
                    };
                    let h = Hyper {
                        beta1: self.beta1 as f32,
                        beta2: self.beta2 as f32,
                        eps: self.eps as f32,
                        weight_decay: self.weight_decay as f32,
                        step_size: step_size as f32,
                        inv_sqrt_bc2: inv_sqrt_bc2 as f32,
                    };
                    if n >= 1 << 20 && tch::get_num_threads() > 1 {
                        // A whole-transcriptome layer (millions of weights): two halves side by side.
                        let k = n / 2;
                        let (p0, p1) = p.split_at_mut(k);
                        let (g0, g1) = g.split_at(k);
                        let (m0, m1) = m.split_at_mut(k);
                        let (v0, v1) = v.split_at_mut(k);
                        std::thread::scope(|s| {
                            s.spawn(|| update(p1, g1, m1, v1, h));
                            update(p0, g0, m0, v0, h);
                        });
                    } else {
                        update(p, g, m, v, h);
                    }
                } else {
                    // Any device: the same update as tensor operations.
                    let g = if self.weight_decay != 0.0 {
                        g + p * self.weight_decay
                    } else {
                        g.shallow_clone()
                    };
                    let m = &mut self.m[i];
                    let _ = m.g_mul_scalar_(self.beta1).g_add_(&(&g * (1.0 - self.beta1)));
                    let v = &mut self.v[i];
                    let _ = v.g_mul_scalar_(self.beta2).g_add_(&(&g * &g * (1.0 - self.beta2)));
                    let denom = self.v[i].sqrt() * inv_sqrt_bc2 + self.eps;
                    let mut p = p.shallow_clone();
                    let _ = p.g_sub_(&(&self.m[i] / denom * step_size));
                }
            }
        });
    }

    /// A copy of the moments and step count (`m.NAME`, `v.NAME`, `step`), to be written with
    /// `write_atomic` and read back by `load`.
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (i, n) in self.names.iter().enumerate() {
            for (prefix, t) in [("m", &self.m[i]), ("v", &self.v[i])] {
                let (name, t) = to_file(n, t);
                named.push((format!("{prefix}.{name}"), t));
            }
        }
        named.push(("step".into(), Tensor::from_slice(&[self.step])));
        named
    }

    /// Restores a written `snapshot` of the same model.
    pub fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let named: std::collections::HashMap<String, Tensor> =
            crate::model::stored::read_safetensors(path)?.into_iter().collect();
        let get = |k: &str| {
            named
                .get(k)
                .ok_or_else(|| anyhow::anyhow!("{}: no `{k}` in the optimiser state", path.display()))
        };
        let step = get("step")?;
        self.step = step.int64_value(&[0]);
        tch::no_grad(|| -> anyhow::Result<()> {
            for (i, n) in self.names.iter().enumerate() {
                for (mom, prefix) in [(&mut self.m[i], "m"), (&mut self.v[i], "v")] {
                    let t = from_file(&named, path, &format!("{prefix}.{n}"), mom)?;
                    mom.copy_(&t);
                }
            }
            Ok(())
        })
    }
}

#[derive(Clone, Copy)]
struct Hyper {
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
}

crate::kernels::avx2_dispatch! {
    /// The fused update over one parameter (written as plain loops the compiler vectorises).
    fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: Hyper) = update_body;
}

#[inline(always)]
fn update_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: Hyper) {
    let (a1, a2) = (1.0 - h.beta1, 1.0 - h.beta2);
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g + h.weight_decay * *p;
        *m = h.beta1 * *m + a1 * g;
        *v = h.beta2 * *v + a2 * g * g;
        *p -= h.step_size * *m / (v.sqrt() * h.inv_sqrt_bc2 + h.eps);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::stored::write_atomic;
    use tch::nn::OptimizerConfig;

    /// The fused CPU loop, the tensor-op path (what CUDA runs) and libtorch's own Adam take the
    /// same steps.
    #[test]
    fn matches_libtorch_adam_on_both_paths() {
        let _rng = crate::TORCH_RNG_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let make = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let root = vs.root();
            let _ = root.var("a", &[7, 5], nn::Init::Const(0.0));
            let _ = root.var("b", &[5], nn::Init::Const(0.0));
            vs
        };
        let (vs_ref, vs_fast, vs_ops) = (make(), make(), make());
        let init: Vec<Tensor> = vec![
            Tensor::randn([7, 5], tch::kind::FLOAT_CPU),
            Tensor::randn([5], tch::kind::FLOAT_CPU),
        ];
        for vs in [&vs_ref, &vs_fast, &vs_ops] {
            let mut names: Vec<_> = vs.variables().into_iter().collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            tch::no_grad(|| {
                for ((_, mut t), i) in names.into_iter().zip(&init) {
                    t.copy_(i);
                }
            });
        }
        let mut reference = nn::Adam {
            wd: 1e-2,
            eps: 0.01,
            ..Default::default()
        }
        .build(&vs_ref, 1e-1)
        .unwrap();
        let mut fast = Adam::new(&vs_fast, 1e-1, 1e-2, 0.01);
        let mut ops = Adam::new(&vs_ops, 1e-1, 1e-2, 0.01);
        let loss = |vs: &nn::VarStore, target: &Tensor| {
            let v: std::collections::HashMap<_, _> = vs.variables().into_iter().collect();
            ((&v["a"].matmul(&v["b"].unsqueeze(1)).squeeze() - target).square()).sum(Kind::Float)
        };
        for k in 0..20 {
            let target = Tensor::randn([7], tch::kind::FLOAT_CPU);
            reference.backward_step(&loss(&vs_ref, &target));
            let grads = Tensor::run_backward(&[loss(&vs_fast, &target)], fast.params(), false, false);
            fast.step(&grads);
            // Double gradients take the tensor-op path.
            let grads = Tensor::run_backward(&[loss(&vs_ops, &target)], ops.params(), false, false);
            let grads: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Double)).collect();
            ops.step(&grads);
            for (name, t) in vs_ref.variables() {
                let f = &vs_fast.variables()[&name];
                let o = &vs_ops.variables()[&name];
                let d1 = f64::try_from((&t - f).abs().max()).unwrap();
                let d2 = f64::try_from((&t - o).abs().max()).unwrap();
                assert!(d1 < 1e-5 && d2 < 1e-5, "step {k} {name}: fused {d1}, ops {d2}");
            }
        }
        // One buffer for all parameters (what a GPU runs) takes the same steps, its variables stay
        // the model's, and its moments round-trip through a file.
        let vs_flat = make();
        for (name, mut t) in vs_flat.variables() {
            tch::no_grad(|| t.copy_(&vs_fast.variables()[&name]));
        }
        let vs_ops2 = make();
        for (name, mut t) in vs_ops2.variables() {
            tch::no_grad(|| t.copy_(&vs_fast.variables()[&name]));
        }
        let mut flat = Adam::new(&vs_flat, 1e-1, 1e-2, 0.01);
        flat.flatten();
        assert!(flat.flat.is_some());
        let mut ops2 = Adam::new(&vs_ops2, 1e-1, 1e-2, 0.01);
        for k in 0..10 {
            let target = Tensor::randn([7], tch::kind::FLOAT_CPU);
            let g = Tensor::run_backward(&[loss(&vs_flat, &target)], flat.params(), false, false);
            flat.step(&g);
            let g = Tensor::run_backward(&[loss(&vs_ops2, &target)], ops2.params(), false, false);
            ops2.step(&g.iter().map(|g| g.to_kind(Kind::Double)).collect::<Vec<_>>());
            for (name, t) in vs_ops2.variables() {
                let d = f64::try_from((&t - &vs_flat.variables()[&name]).abs().max()).unwrap();
                assert!(d < 1e-6, "step {k} {name}: one buffer {d}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&flat.snapshot(), &dir.path().join("flat.safetensors")).unwrap();
        let mut again = Adam::new(&vs_flat, 1e-1, 1e-2, 0.01);
        again.flatten();
        again.load(&dir.path().join("flat.safetensors")).unwrap();
        assert!(again.flat.as_ref().unwrap().v.equal(&flat.flat.as_ref().unwrap().v));

        // A layer large enough for the two-thread update takes the same step as the tensor ops.
        let big = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = vs.root().var("w", &[1024, 1100], nn::Init::Const(0.5));
            vs
        };
        let (vs_a, vs_b) = (big(), big());
        let mut a = Adam::new(&vs_a, 1e-2, 1e-3, 0.01);
        let mut b = Adam::new(&vs_b, 1e-2, 1e-3, 0.01);
        let target = Tensor::randn([1024, 1100], tch::kind::FLOAT_CPU);
        for _ in 0..3 {
            let l = |vs: &nn::VarStore| (&vs.variables()["w"] - &target).square().sum(Kind::Float);
            a.step(&Tensor::run_backward(&[l(&vs_a)], a.params(), false, false));
            let g = Tensor::run_backward(&[l(&vs_b)], b.params(), false, false);
            b.step(&g.iter().map(|g| g.to_kind(Kind::Double)).collect::<Vec<_>>());
        }
        let d = f64::try_from((&vs_a.variables()["w"] - &vs_b.variables()["w"]).abs().max()).unwrap();
        assert!(d < 1e-5, "two-thread update differs by {d}");
        // And the moments round-trip through a file.
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&fast.snapshot(), &dir.path().join("adam.safetensors")).unwrap();
        let mut again = Adam::new(&vs_fast, 1e-1, 1e-2, 0.01);
        again.load(&dir.path().join("adam.safetensors")).unwrap();
        assert_eq!(again.step, 20);
        for (a, b) in again.v.iter().zip(&fast.v) {
            assert!(a.equal(b));
        }
    }

    #[test]
    fn warm_up_scales_the_first_steps_step_size() {
        // Adam's first step moves each weight by about lr (sign of its gradient); with a warm-up of
        // four steps it moves it by a quarter of that, and from step four on by the full step.
        let moved = |warmup: i64, steps: usize| {
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = vs.root().var("w", &[8], nn::Init::Const(0.0));
            let mut opt = Adam::new(&vs, 1e-2, 0.0, 1e-12);
            opt.warmup = warmup;
            let mut last = 0.0;
            for _ in 0..steps {
                let before = vs.variables()["w"].copy();
                let l = (&vs.variables()["w"] - 100.0).square().sum(Kind::Float);
                opt.step(&Tensor::run_backward(&[l], opt.params(), false, false));
                last = f64::try_from((&vs.variables()["w"] - before).abs().max()).unwrap();
            }
            last
        };
        assert!((moved(0, 1) - 1e-2).abs() < 1e-6, "{}", moved(0, 1));
        assert!((moved(4, 1) - 2.5e-3).abs() < 1e-6, "{}", moved(4, 1));
        assert!((moved(4, 2) - 5e-3).abs() < 1e-5, "{}", moved(4, 2));
        assert!(
            (moved(4, 6) - moved(0, 6)).abs() < 1e-4,
            "{} {}",
            moved(4, 6),
            moved(0, 6)
        );
    }
}
