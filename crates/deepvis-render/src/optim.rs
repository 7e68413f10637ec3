//! Optimizers. Both ascend: they move the parameters along the objective's gradient.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// The seed method's step: per image, `p ← p + lr · g / rms(g)`.
    Normalized { lr: f32 },
    /// Adam (Kingma & Ba) on the negated objective; Lucent's default is lr 0.05.
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
    },
}

impl OptimizerKind {
    /// Adam with the usual betas and epsilon.
    pub fn adam(lr: f32) -> OptimizerKind {
        OptimizerKind::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimizerKind::Normalized { lr } => write!(f, "normalized ascent (lr {lr})"),
            OptimizerKind::Adam { lr, .. } => write!(f, "Adam (lr {lr})"),
        }
    }
}

/// An optimizer with its state.
pub struct Optimizer {
    kind: OptimizerKind,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind) -> Optimizer {
        Optimizer {
            kind,
            m: Vec::new(),
            v: Vec::new(),
            t: 0,
        }
    }

    /// Forgets the moment estimates (after the parameters change meaning, e.g. a new octave).
    pub fn reset(&mut self) {
        self.m.clear();
        self.v.clear();
        self.t = 0;
    }

    /// One ascent step on `params` given the objective's gradient `grad`; images hold
    /// `per_image` parameters each.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], per_image: usize) {
        match self.kind {
            OptimizerKind::Normalized { lr } => {
                for (xi, gi) in params.chunks_mut(per_image).zip(grad.chunks(per_image)) {
                    let ms: f64 = gi.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>()
                        / per_image as f64;
                    let scale = lr / (ms.sqrt() as f32 + 1e-8);
                    for (a, b) in xi.iter_mut().zip(gi) {
                        *a += scale * b;
                    }
                }
            }
            OptimizerKind::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                if self.m.len() != params.len() {
                    self.m = vec![0.0; params.len()];
                    self.v = vec![0.0; params.len()];
                    self.t = 0;
                }
                self.t += 1;
                let c1 = 1.0 - beta1.powi(self.t);
                let c2 = 1.0 - beta2.powi(self.t);
                for ((p, g), (m, v)) in params
                    .iter_mut()
                    .zip(grad)
                    .zip(self.m.iter_mut().zip(self.v.iter_mut()))
                {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *p += lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                }
            }
        }
    }
}
