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
    /// [`formula`] values: reproducible from Python without shipping weight files.
    Formula(u64),
    /// Zeros, counting how many values were taken: an architecture's size without the cost of
    /// generating its values (zeroed allocations are not touched).
    Count(u64),
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

    /// Whether any parameter under `prefix` is present (generated parameters always are).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        match self {
            Params::Dict { dict, .. } => dict.keys().any(|k| k.starts_with(prefix)),
            Params::Random(_) | Params::Formula(_) | Params::Count(_) => true,
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
            Params::Formula(seed) => Ok(formula(*seed, key, shape.iter().product(), kind)),
            Params::Count(count) => {
                let n: usize = shape.iter().product();
                *count += n as u64;
                Ok(vec![0.0; n])
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

/// Parameter `key` of `n` elements as [`crate::WeightsFrom::Formula`] defines it, in f32
/// arithmetic throughout so that numpy reproduces it bit for bit (`scripts/zoo_fixtures.py`):
///
/// ```text
/// h    = fnv1a64(utf-8 bytes of key)
/// u_i  = splitmix64(h ^ seed·0x9E3779B97F4A7C15 ^ i)          (u64, wrapping)
/// v_i  = (u_i >> 40) / 2^24 · 2 − 1                            (in [−1, 1), exact in f32)
/// weight (conv, linear; fan_in = in/groups·kh·kw)  v · sqrt(6 / fan_in)
/// bias (conv, linear, batch norm)                  0.05 · v
/// batch-norm weight                                1 + 0.2 · v
/// running_mean                                     0.1 · v
/// running_var                                      1 + 0.5 · v
/// ```
pub(crate) fn formula(seed: u64, key: &str, n: usize, kind: Kind) -> Vec<f32> {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let base = h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let (scale, offset) = match kind {
        Kind::Weight { fan_in } => ((6.0 / fan_in as f32).sqrt(), 0.0),
        Kind::Bias => (0.05, 0.0),
        Kind::Scale => (0.2, 1.0),
        Kind::Mean => (0.1, 0.0),
        Kind::Variance => (0.5, 1.0),
    };
    (0..n as u64)
        .map(|i| {
            let v = (splitmix64(base ^ i) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            offset + scale * v
        })
        .collect()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Weight { fan_in: usize },
    Bias,
    Scale,
    Mean,
    Variance,
}
