//! Where a model's parameters come from: a state dict checked key by key, or seeded random
//! values (for benchmarks and tests, where speed does not depend on the weights).

use crate::ModelError;
use deepvis_weights::StateDict;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

pub(crate) enum Params {
    /// Tensors are moved out of the dict as the architecture takes them (no copy of a
    /// half-gigabyte VGG checkpoint); what is left at the end was not expected.
    Dict {
        dict: StateDict,
        ignored: BTreeSet<String>,
        origin: String,
    },
    Random(ChaCha8Rng),
}

impl Params {
    pub fn from_dict(dict: StateDict, origin: &str) -> Self {
        Params::Dict {
            dict,
            ignored: BTreeSet::new(),
            origin: origin.to_string(),
        }
    }

    pub fn random(seed: u64) -> Self {
        Params::Random(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Whether any parameter under `prefix` is present (random parameters always are).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        match self {
            Params::Dict { dict, .. } => dict.keys().any(|k| k.starts_with(prefix)),
            Params::Random(_) => true,
        }
    }

    /// The tensor `key` with exactly `shape`. `fan_in` scales random values (He init) and the
    /// kind picks sensible random values for batch-norm statistics.
    pub fn take(&mut self, key: &str, shape: &[usize], kind: Kind) -> Result<Vec<f32>, ModelError> {
        match self {
            Params::Dict { dict, origin, .. } => {
                let t = dict.get(key).ok_or_else(|| ModelError::MissingKey {
                    key: key.into(),
                    origin: origin.clone(),
                })?;
                if t.shape != shape {
                    return Err(ModelError::ShapeMismatch {
                        key: key.into(),
                        expected: shape.to_vec(),
                        found: t.shape.clone(),
                        origin: origin.clone(),
                    });
                }
                if !t.dtype.is_float() {
                    return Err(ModelError::DType {
                        key: key.into(),
                        found: t.dtype.name().into(),
                        origin: origin.clone(),
                    });
                }
                Ok(dict.remove(key).map(|t| t.data).unwrap_or_default())
            }
            Params::Random(rng) => {
                let n: usize = shape.iter().product();
                Ok(match kind {
                    Kind::Weight { fan_in } => {
                        let bound = (6.0 / fan_in as f32).sqrt();
                        (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
                    }
                    Kind::Bias => (0..n).map(|_| rng.gen_range(-0.05..0.05)).collect(),
                    Kind::Scale => (0..n).map(|_| rng.gen_range(0.8..1.2)).collect(),
                    Kind::Mean => (0..n).map(|_| rng.gen_range(-0.1..0.1)).collect(),
                    Kind::Variance => (0..n).map(|_| rng.gen_range(0.5..1.5)).collect(),
                })
            }
        }
    }

    /// Marks `key` as known without reading it (e.g. BatchNorm's `num_batches_tracked`).
    pub fn ignore(&mut self, key: &str) {
        if let Params::Dict { ignored, .. } = self {
            ignored.insert(key.to_string());
        }
    }

    /// Fails on the first key of the dict that the architecture did not use.
    pub fn finish(self) -> Result<(), ModelError> {
        if let Params::Dict {
            dict,
            ignored,
            origin,
        } = self
        {
            if let Some(key) = dict.keys().find(|k| !ignored.contains(*k)) {
                return Err(ModelError::UnexpectedKey {
                    key: key.to_string(),
                    origin,
                });
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Weight { fan_in: usize },
    Bias,
    Scale,
    Mean,
    Variance,
}
