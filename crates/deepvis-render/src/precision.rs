//! Which arithmetic a run computes in: bf16 where the CPU has AVX512-BF16 and bf16 keeps this
//! model's values, float32 otherwise. Both front ends choose through [`choose_precision`], so
//! the CLI and the Python package agree, and the manifest says which one made the images.

use deepvis_engine::{bf16_supported, set_precision, Precision, Tensor};
use deepvis_models::Model;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{model_normalization, normalize, RenderError};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// bf16 where [`choose_precision`]'s check holds, float32 otherwise.
    Auto,
    F32,
    Bf16,
}

impl PrecisionChoice {
    /// "auto", "f32"/"fp32"/"float32" or "bf16"/"bfloat16".
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(PrecisionChoice::Auto),
            other => Precision::parse(other).map(|p| match p {
                Precision::F32 => PrecisionChoice::F32,
                Precision::Bf16 => PrecisionChoice::Bf16,
            }),
        }
    }
}

/// The precision in effect after [`choose_precision`], and what the user should be told.
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    pub precision: Precision,
    /// The check's relative error, where it ran.
    pub bf16_error: Option<f32>,
    /// One line for the user where the choice is not what they might expect.
    pub note: Option<String>,
}

/// Largest relative L2 difference between the model's bf16 and float32 outputs at which `auto`
/// takes bf16. bf16 rounds each convolution's inputs to 8 significant bits, and the rounding
/// adds up along the network: measured on the whole-model output (the logits), the bundled
/// EfficientNet-Lite0 differs by 1.9 %, and the zoo's architectures with random weights by
/// 0.2–4.4 % (MobileNetV2 the most, VGG16 1.6 %, ResNet50 0.4 %), while the images bf16
/// optimizes score within 1 % of float32's. What this catches is bf16 breaking down, errors of
/// order one (cancelling sums of large values), not that drift.
pub const BF16_TOLERANCE: f32 = 0.1;

/// Sets the process-wide precision for `choice` and returns what was chosen. `Auto` runs one
/// forward pass of a fixed, smooth test image through the whole model in each precision and
/// keeps bf16 when their outputs differ by at most [`BF16_TOLERANCE`] (relative L2); where
/// they differ more, or the check cannot run, it computes in float32 with a note. `Bf16` on a
/// CPU without AVX512-BF16 falls back to float32 with a note; `Auto` then says nothing.
pub fn choose_precision(model: &Model, choice: PrecisionChoice) -> Result<Chosen, RenderError> {
    let f32_only = |note: Option<String>| -> Result<Chosen, RenderError> {
        set_precision(Precision::F32)?;
        Ok(Chosen {
            precision: Precision::F32,
            bf16_error: None,
            note,
        })
    };
    match choice {
        PrecisionChoice::F32 => f32_only(None),
        PrecisionChoice::Bf16 => match set_precision(Precision::Bf16) {
            Ok(()) => Ok(Chosen {
                precision: Precision::Bf16,
                bf16_error: None,
                note: None,
            }),
            Err(e) => f32_only(Some(format!("note: {e}; computing in float32"))),
        },
        PrecisionChoice::Auto if !bf16_supported() => f32_only(None),
        PrecisionChoice::Auto => {
            // A model the check cannot run (say, an ONNX graph fixed to another input size
            // than it declares) still renders, in float32.
            let error = match bf16_error(model) {
                Ok(e) => e,
                Err(e) => {
                    return f32_only(Some(format!(
                        "note: bf16 could not be checked on this model ({e}); computing in float32"
                    )))
                }
            };
            if error.is_finite() && error <= BF16_TOLERANCE {
                set_precision(Precision::Bf16)?;
                Ok(Chosen {
                    precision: Precision::Bf16,
                    bf16_error: Some(error),
                    note: None,
                })
            } else {
                let mut c = f32_only(Some(format!(
                    "note: this model's bf16 output differs from float32 by {:.1} % (more than {:.0} %); computing in float32",
                    100.0 * error,
                    100.0 * BF16_TOLERANCE
                )))?;
                c.bf16_error = Some(error);
                Ok(c)
            }
        }
    }
}

/// Relative L2 difference between the model's last output in bf16 and in float32, on a smooth
/// random image at the model's native size. Leaves the precision at float32.
pub fn bf16_error(model: &Model) -> Result<f32, RenderError> {
    let (h, w) = model.info.native_size;
    let c = model.info.channels;
    let image = Tensor::new(vec![1, c, h, w], test_image(c, h, w))?;
    let x = normalize(&image, &model_normalization(model)?);
    let last = model.graph.last();
    // Forward only: nothing is kept for a gradient.
    let run = |p: Precision| -> Result<Vec<f32>, RenderError> {
        set_precision(p)?;
        deepvis_engine::on_pool(|| Ok(model.graph.infer(x.clone(), last)?.data().to_vec()))
    };
    let outputs = run(Precision::F32).and_then(|r| Ok((r, run(Precision::Bf16)?)));
    // Float32 again whatever happened, so a failed check leaves no bf16 behind.
    set_precision(Precision::F32)?;
    let (reference, reduced) = outputs?;
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in reference.iter().zip(&reduced) {
        diff += ((a - b) as f64).powi(2);
        norm += (*a as f64).powi(2);
    }
    Ok(if norm > 0.0 {
        (diff / norm).sqrt() as f32
    } else if diff == 0.0 {
        0.0
    } else {
        f32::INFINITY
    })
}

/// A few random low-frequency waves per channel in [0.1, 0.9]: structure at several scales,
/// like a photograph's, where a flat or noise image would leave most units idle or saturated.
fn test_image(c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(0xB16B_00B5);
    let mut out = vec![0.0f32; c * h * w];
    for plane in out.chunks_mut(h * w) {
        let waves: Vec<[f32; 4]> = (0..6)
            .map(|_| {
                [
                    rng.gen_range(0.5f32..8.0) * std::f32::consts::TAU / h as f32,
                    rng.gen_range(0.5f32..8.0) * std::f32::consts::TAU / w as f32,
                    rng.gen_range(0.0f32..std::f32::consts::TAU),
                    rng.gen_range(0.3f32..1.0),
                ]
            })
            .collect();
        let total: f32 = waves.iter().map(|v| v[3]).sum();
        for y in 0..h {
            for x in 0..w {
                let s: f32 = waves
                    .iter()
                    .map(|[fy, fx, ph, a]| a * (fy * y as f32 + fx * x as f32 + ph).sin())
                    .sum();
                plane[y * w + x] = 0.5 + 0.4 * s / total;
            }
        }
    }
    out
}
